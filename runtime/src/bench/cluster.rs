//! The Dorado replicas under test: `dorado run` child processes.
//!
//! Each replica gets a free port on 127.0.0.1, its own working directory
//! (trace on stdout and log on stderr go to files there) and is killed when
//! its guard drops, so no path out of the benchmark (error, panic, Ctrl-C)
//! leaves processes behind. A normal end sends SIGTERM first so a leader
//! resigns cleanly, which matters when the etcd is not a throwaway one.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use super::machine::Proc;
use super::{BenchError, io_err};

/// Bound on replicas becoming ready and electing a leader.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Bound on a graceful stop before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How replicas are started.
#[derive(Debug)]
pub(crate) struct ReplicaSpec<'a> {
    pub binary: &'a Path,
    pub dir: &'a Path,
    pub count: usize,
    pub etcd: &'a [String],
    pub namespace: &'a str,
    pub group: &'a str,
    pub lease_ttl: u64,
    pub snapshot_every: u64,
    pub max_inflight: Option<u64>,
    pub extra: &'a [String],
}

/// One `dorado run` process.
#[derive(Debug)]
struct Replica {
    name: String,
    addr: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn stderr_path(&self) -> PathBuf {
        self.dir.join("stderr")
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(self.stderr_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status.to_string())
            }
            Ok(None) | Err(_) => None,
        }
    }

    fn exited_error(&self, status: String) -> BenchError {
        BenchError::ReplicaExited {
            name: self.name.clone(),
            status,
            path: self.stderr_path(),
            tail: self.stderr_tail(),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The running group.
#[derive(Debug)]
pub(crate) struct Replicas {
    replicas: Vec<Replica>,
    leader: usize,
    http: reqwest::Client,
}

fn free_addrs(n: usize) -> Result<Vec<SocketAddr>, BenchError> {
    // Hold every listener until all are picked so the ports are distinct.
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err("bind a free port on 127.0.0.1"))?;
    listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err("read a bound port"))
}

impl Replicas {
    /// Start `spec.count` replicas and wait until all are ready and one leads.
    pub(crate) async fn start(spec: ReplicaSpec<'_>) -> Result<Self, BenchError> {
        let module = spec.dir.join("kv.wasm");
        std::fs::write(&module, crate::examples::KV)
            .map_err(io_err(format!("write {}", module.display())))?;
        let addrs = free_addrs(spec.count)?;
        let mut replicas = Vec::with_capacity(spec.count);
        for (i, addr) in addrs.into_iter().enumerate() {
            let name = format!("r{i}");
            let dir = spec.dir.join(&name);
            std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
            let open = |file: &str| {
                let path = dir.join(file);
                std::fs::File::create(&path).map_err(io_err(format!("create {}", path.display())))
            };
            let (stdout, stderr) = (open("stdout")?, open("stderr")?);
            let mut cmd = Command::new(spec.binary);
            cmd.arg("run")
                .args(["--group", spec.group, "--namespace", spec.namespace])
                .args(["--replica", &name])
                .arg("--module")
                .arg(&module)
                .args(["--etcd", &spec.etcd.join(",")])
                .args(["--listen", &addr.to_string()])
                .args(["--advertise", &addr.to_string()])
                .args(["--lease-ttl", &spec.lease_ttl.to_string()])
                .args(["--snapshot-every", &spec.snapshot_every.to_string()]);
            if let Some(m) = spec.max_inflight {
                cmd.args(["--max-inflight", &m.to_string()]);
            }
            cmd.args(spec.extra);
            // Our flags are the whole configuration.
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("DORADO_") {
                    cmd.env_remove(key);
                }
            }
            let child = cmd
                .env("DORADO_LOG", "warn")
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .map_err(io_err(format!("start {} run", spec.binary.display())))?;
            replicas.push(Replica {
                name,
                addr,
                dir,
                child: Some(child),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| BenchError::Http(e.to_string()))?;
        let mut group = Replicas {
            replicas,
            leader: 0,
            http,
        };
        group.wait_ready().await?;
        Ok(group)
    }

    async fn get(&self, i: usize, path: &str) -> Option<(u16, String)> {
        let url = format!("http://{}{path}", self.replicas[i].addr);
        let resp = self.http.get(url).send().await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    }

    /// Wait until every replica is ready and one leads (bounded).
    pub(crate) async fn wait_ready(&mut self) -> Result<(), BenchError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_alive()?;
            let mut waiting = Vec::new();
            for i in 0..self.replicas.len() {
                match self.get(i, "/readyz").await {
                    Some((200, _)) => {}
                    Some((_, why)) => {
                        waiting.push(format!("{}: {}", self.replicas[i].name, why.trim()))
                    }
                    None => waiting.push(format!("{}: no answer", self.replicas[i].name)),
                }
            }
            let mut leader = None;
            if waiting.is_empty() {
                for i in 0..self.replicas.len() {
                    if let Some((200, body)) = self.get(i, "/v1/status").await {
                        let status: serde_json::Value =
                            serde_json::from_str(&body).unwrap_or_default();
                        if status["role"] == "leader" {
                            leader = Some(i);
                        }
                    }
                }
                if leader.is_none() {
                    waiting.push("no replica reports role=leader".into());
                }
            }
            if let Some(l) = leader {
                self.leader = l;
                return Ok(());
            }
            if Instant::now() >= deadline {
                let tails: Vec<String> = self
                    .replicas
                    .iter()
                    .map(|r| format!("--- {} stderr:\n{}", r.name, r.stderr_tail()))
                    .collect();
                return Err(BenchError::NotReady {
                    timeout: READY_TIMEOUT,
                    detail: format!("{}\n{}", waiting.join("; "), tails.join("\n")),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ask the replicas who leads now (leadership can move during a run on an
    /// overloaded machine); keeps the previous answer if nobody claims it.
    pub(crate) async fn refresh_leader(&mut self) {
        for i in 0..self.replicas.len() {
            if let Some((200, body)) = self.get(i, "/v1/status").await {
                let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                if status["role"] == "leader" {
                    self.leader = i;
                    return;
                }
            }
        }
    }

    /// Fail if any replica has exited.
    pub(crate) fn check_alive(&mut self) -> Result<(), BenchError> {
        for r in &mut self.replicas {
            if let Some(status) = r.exited() {
                return Err(r.exited_error(status));
            }
            if r.child.is_none() {
                return Err(r.exited_error("not running".into()));
            }
        }
        Ok(())
    }

    /// The processes to sample, labelled with their role.
    pub(crate) fn procs(&self) -> Vec<Proc> {
        self.replicas
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let pid = r.child.as_ref()?.id();
                let role = if i == self.leader {
                    "leader"
                } else {
                    "follower"
                };
                Some(Proc::new(format!("replica {} ({role})", r.name), pid))
            })
            .collect()
    }

    /// Addresses of all replicas and the index of the leader.
    pub(crate) fn addrs(&self) -> (Vec<SocketAddr>, usize) {
        (self.replicas.iter().map(|r| r.addr).collect(), self.leader)
    }

    /// The leader's counters relevant to batching.
    pub(crate) async fn leader_metrics(&self) -> Option<LeaderMetrics> {
        let (_, text) = self.get(self.leader, "/metrics").await?;
        let value = |name: &str| metric(&text, name);
        Some(LeaderMetrics {
            batches: value("dorado_batch_size_commands_count")?,
            batched_commands: value("dorado_batch_size_commands_sum")?,
            appends: value("dorado_append_latency_seconds_count")?,
            append_seconds: value("dorado_append_latency_seconds_sum")?,
        })
    }

    /// Wait (bounded) until every replica has applied what the leader
    /// committed, so a lagging follower does not spend the next run's CPU.
    pub(crate) async fn settle(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut applied = Vec::new();
            let mut commit = 0;
            for i in 0..self.replicas.len() {
                let Some((200, body)) = self.get(i, "/v1/status").await else {
                    return;
                };
                let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                applied.push(status["applied_index"].as_u64().unwrap_or(0));
                commit = commit.max(status["commit_index"].as_u64().unwrap_or(0));
            }
            if applied.iter().all(|&a| a >= commit) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Leader terms won so far, summed over all replicas (`None` if a replica
    /// does not answer): a change during a run means leadership moved.
    pub(crate) async fn elections(&self) -> Option<u64> {
        let mut total = 0.0;
        for i in 0..self.replicas.len() {
            let (_, text) = self.get(i, "/metrics").await?;
            total += metric(&text, "dorado_elections_won_total")
                .or_else(|| metric(&text, "dorado_elections_won"))?;
        }
        Some(total as u64)
    }

    /// SIGTERM every replica, wait a little, then SIGKILL what remains.
    pub(crate) async fn shutdown(mut self) {
        for r in &self.replicas {
            if let Some(child) = &r.child {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            for r in &mut self.replicas {
                r.exited();
            }
            if self.replicas.iter().all(|r| r.child.is_none()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for r in &mut self.replicas {
            r.kill();
        }
    }
}

/// The value of an unlabelled sample `name` in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Cumulative counters of the leader (`/metrics`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LeaderMetrics {
    pub batches: f64,
    pub batched_commands: f64,
    pub appends: f64,
    pub append_seconds: f64,
}
