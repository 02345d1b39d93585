//! The replica groups under test: `dorado run` child processes, with either
//! protocol (`--protocol dorado` or `--protocol classic --replicas N`).
//!
//! Each replica gets a free port on 127.0.0.1, its own working directory
//! (trace on stdout and log on stderr go to files there) and is killed when
//! its guard drops, so no path out of the benchmark (error, panic, Ctrl-C)
//! leaves processes behind. A normal end sends SIGTERM first so a leader
//! resigns cleanly, which matters when the etcd is not a throwaway one.
//!
//! The failover and recovery measurements also kill one replica (SIGKILL or
//! SIGTERM) and recreate it: same replica id, a fresh working directory and
//! a new port, i.e. a pod rescheduled with empty local state.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dorado::client::{STATUS_TIMEOUT, fetch_status};
use dorado::wire::Status;
use dorado_testkit::process::{ChildGuard, signal_pid};
use dorado_testkit::replica::ReplicaFlags;
use tokio::time::Instant;

use super::machine::Proc;
use super::{BenchError, io_err};
use crate::Protocol;

/// Bound on replicas becoming ready and electing a leader.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Bound on a graceful stop before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How replicas are started.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaSpec {
    pub binary: PathBuf,
    /// Parent of the replicas' working directories (one per group).
    pub dir: PathBuf,
    pub count: usize,
    pub etcd: Vec<String>,
    pub namespace: String,
    pub group: String,
    pub lease_ttl: u64,
    pub snapshot_every: u64,
    pub max_inflight: Option<u64>,
    pub extra: Vec<String>,
    pub protocol: Protocol,
    /// Label of the processes in CPU samples (`replica`, `classic`).
    pub label: String,
    /// Replica ids are this prefix plus 0, 1, 2, ...
    pub name_prefix: String,
}

/// One `dorado run` process.
#[derive(Debug)]
struct Replica {
    name: String,
    addr: SocketAddr,
    dir: PathBuf,
    child: ChildGuard,
    /// How many times this replica id was started.
    generation: u32,
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
        self.child.try_exit().map(|status| status.to_string())
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
        self.child.kill();
    }
}

/// The running group.
#[derive(Debug)]
pub(crate) struct Replicas {
    replicas: Vec<Replica>,
    leader: usize,
    http: reqwest::Client,
    spec: ReplicaSpec,
    module: PathBuf,
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

fn spawn(
    spec: &ReplicaSpec,
    module: &Path,
    name: &str,
    addr: SocketAddr,
    generation: u32,
) -> Result<Replica, BenchError> {
    let dir = if generation <= 1 {
        spec.dir.join(name)
    } else {
        spec.dir.join(format!("{name}.{generation}"))
    };
    std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    let open = |file: &str| {
        let path = dir.join(file);
        std::fs::File::create(&path).map_err(io_err(format!("create {}", path.display())))
    };
    let (stdout, stderr) = (open("stdout")?, open("stderr")?);
    let mut extra = Vec::new();
    if let Some(m) = spec.max_inflight {
        extra.extend(["--max-inflight".to_string(), m.to_string()]);
    }
    if spec.protocol == Protocol::Classic {
        extra.extend(["--protocol", "classic", "--replicas"].map(String::from));
        extra.push(spec.count.to_string());
    }
    extra.extend(spec.extra.iter().cloned());
    let flags = ReplicaFlags {
        group: spec.group.clone(),
        namespace: spec.namespace.clone(),
        replica: name.to_owned(),
        module: module.to_path_buf(),
        etcd: spec.etcd.clone(),
        listen: addr,
        lease_ttl: spec.lease_ttl,
        snapshot_every: spec.snapshot_every,
        extra,
    };
    // Our flags are the whole configuration (the builder clears DORADO_*).
    let mut cmd = flags.command(&spec.binary, &[], "run", &dir, "warn");
    cmd.stdout(stdout).stderr(stderr);
    let child = ChildGuard::spawn(&mut cmd)
        .map_err(io_err(format!("start {} run", spec.binary.display())))?;
    Ok(Replica {
        name: name.to_owned(),
        addr,
        dir,
        child,
        generation,
    })
}

impl Replicas {
    /// Start `spec.count` replicas and wait until all are ready and one leads.
    pub(crate) async fn start(spec: ReplicaSpec) -> Result<Self, BenchError> {
        std::fs::create_dir_all(&spec.dir)
            .map_err(io_err(format!("create {}", spec.dir.display())))?;
        let module = spec.dir.join("kv.wasm");
        std::fs::write(&module, dorado_testkit::examples::KV)
            .map_err(io_err(format!("write {}", module.display())))?;
        let addrs = free_addrs(spec.count)?;
        let mut replicas = Vec::with_capacity(spec.count);
        for (i, addr) in addrs.into_iter().enumerate() {
            let name = format!("{}{i}", spec.name_prefix);
            replicas.push(spawn(&spec, &module, &name, addr, 1)?);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| BenchError::Http(e.to_string()))?;
        let mut group = Replicas {
            replicas,
            leader: 0,
            http,
            spec,
            module,
        };
        group.wait_ready().await?;
        Ok(group)
    }

    /// The protocol this group runs.
    pub(crate) fn protocol(&self) -> Protocol {
        self.spec.protocol
    }

    /// Number of replicas.
    pub(crate) fn len(&self) -> usize {
        self.replicas.len()
    }

    /// Replica id of replica `i`.
    pub(crate) fn name(&self, i: usize) -> &str {
        &self.replicas[i].name
    }

    /// The index of the replica that led at the last check.
    pub(crate) fn leader(&self) -> usize {
        self.leader
    }

    /// SIGKILL replica `i` (a crash); returns the instant the signal was sent.
    pub(crate) fn kill9(&mut self, i: usize) -> Instant {
        let at = Instant::now();
        self.replicas[i].kill();
        at
    }

    /// SIGTERM replica `i` (a graceful stop: drain, resign) without waiting
    /// for it to exit. Returns the instants just before and just after the
    /// signal was sent (it is sent by a `kill` child process, so it arrives
    /// somewhere in between).
    pub(crate) fn terminate(&mut self, i: usize) -> Result<(Instant, Instant), BenchError> {
        let r = &mut self.replicas[i];
        let Some(pid) = r.child.pid() else {
            return Err(r.exited_error("not running".into()));
        };
        let before = Instant::now();
        let sent = signal_pid(pid, "TERM");
        let after = Instant::now();
        sent.map_err(|e| BenchError::Io {
            what: format!("kill -TERM {pid}"),
            source: std::io::Error::other(e),
        })?;
        Ok((before, after))
    }

    /// Wait (bounded) until replica `i` has exited, then SIGKILL it if not.
    pub(crate) async fn reap(&mut self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.replicas[i].exited().is_some() || !self.replicas[i].child.is_started() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.replicas[i].kill();
    }

    /// Start replica `i` again after it stopped: same replica id, a fresh
    /// working directory and a new port (a rescheduled pod with empty local
    /// state). Returns the instant the process was spawned. Does not wait.
    pub(crate) fn recreate(&mut self, i: usize) -> Result<Instant, BenchError> {
        self.replicas[i].kill();
        let addr = free_addrs(1)?[0];
        let name = self.replicas[i].name.clone();
        let generation = self.replicas[i].generation + 1;
        let at = Instant::now();
        self.replicas[i] = spawn(&self.spec, &self.module, &name, addr, generation)?;
        Ok(at)
    }

    /// Whether replica `i`'s process has exited (reaps it).
    pub(crate) fn has_exited(&mut self, i: usize) -> Option<BenchError> {
        let r = &mut self.replicas[i];
        r.exited().map(|status| r.exited_error(status))
    }

    /// `/healthz` of replica `i` answers 200.
    pub(crate) async fn healthy(&self, i: usize) -> bool {
        matches!(self.get(i, "/healthz").await, Some((200, _)))
    }

    /// `/readyz` of replica `i` answers 200.
    pub(crate) async fn is_ready(&self, i: usize) -> bool {
        matches!(self.get(i, "/readyz").await, Some((200, _)))
    }

    /// `/v1/status` of replica `i`.
    pub(crate) async fn status(&self, i: usize) -> Option<Status> {
        let url = format!("http://{}", self.replicas[i].addr);
        fetch_status(&self.http, &url, STATUS_TIMEOUT).await.ok()
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
                    if self.status(i).await.is_some_and(|s| s.is_leader()) {
                        leader = Some(i);
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
            if self.status(i).await.is_some_and(|s| s.is_leader()) {
                self.leader = i;
                return;
            }
        }
    }

    /// Fail if any replica has exited.
    pub(crate) fn check_alive(&mut self) -> Result<(), BenchError> {
        for r in &mut self.replicas {
            if let Some(status) = r.exited() {
                return Err(r.exited_error(status));
            }
            if !r.child.is_started() {
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
                let pid = r.child.pid()?;
                let role = if i == self.leader {
                    "leader"
                } else {
                    "follower"
                };
                Some(Proc::new(
                    format!("{} {} ({role})", self.spec.label, r.name),
                    pid,
                ))
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
    /// Returns whether they did.
    pub(crate) async fn settle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut applied = Vec::new();
            let mut commit = 0;
            for i in 0..self.replicas.len() {
                let Some(status) = self.status(i).await else {
                    return false;
                };
                applied.push(status.applied_index);
                commit = commit.max(status.commit_index);
            }
            if applied.iter().all(|&a| a >= commit) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
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
            let _ = r.child.signal("TERM");
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            for r in &mut self.replicas {
                r.exited();
            }
            if self.replicas.iter().all(|r| !r.child.is_started()) {
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
