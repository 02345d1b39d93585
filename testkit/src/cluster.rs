//! Real `dorado run` processes against a real etcd (the runtime's tests run
//! the `dorado` binary, the benchmarks' tests `dorado-bench run`).
//!
//! Each replica is a child process of the test with its own working
//! directory, port and log files; dropping the harness kills every process
//! (also when a test fails), and the temp dirs go with it.

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use dorado::wire::{ErrorBody, Status};

use crate::process::ChildGuard;
use crate::replica::ReplicaFlags;

pub use crate::process::{free_port, tail, wait_for, wait_until};

pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("http client")
}

/// One `dorado run` process.
#[derive(Debug)]
pub struct Replica {
    pub name: String,
    pub port: u16,
    pub dir: PathBuf,
    pub child: ChildGuard,
    pub extra: Vec<String>,
}

impl Replica {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Whether the process was started and has not been reaped.
    pub fn is_started(&self) -> bool {
        self.child.is_started()
    }

    /// Send `sig` (`STOP`, `CONT`, `TERM`, ...); panics if it cannot be delivered.
    pub fn signal(&self, sig: &str) {
        if let Err(e) = self.child.signal(sig) {
            panic!("replica {}: {e}", self.name);
        }
    }

    /// `kill -9` and reap.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Wait for the process to exit by itself; returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        self.child.wait_exit(timeout).await.and_then(|s| s.code())
    }
}

/// A group of replicas over one etcd.
#[derive(Debug)]
pub struct Cluster {
    /// The binary whose `run` subcommand starts a replica.
    pub bin: PathBuf,
    pub etcd_urls: Vec<String>,
    pub group: String,
    pub namespace: String,
    pub module: PathBuf,
    pub lease_ttl: u64,
    pub snapshot_every: u64,
    pub replicas: Vec<Replica>,
    pub tmp: tempfile::TempDir,
}

impl Cluster {
    pub fn new(
        bin: impl Into<PathBuf>,
        etcd_urls: Vec<String>,
        module_bytes: &[u8],
        n: usize,
        snapshot_every: u64,
    ) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let module = tmp.path().join("module.wasm");
        std::fs::write(&module, module_bytes).expect("write module");
        let mut c = Cluster {
            bin: bin.into(),
            etcd_urls,
            group: "g".into(),
            namespace: format!("t{}", std::process::id()),
            module,
            lease_ttl: 2,
            snapshot_every,
            replicas: Vec::new(),
            tmp,
        };
        for i in 1..=n {
            let name = format!("r{i}");
            let dir = c.tmp.path().join(&name);
            c.replicas.push(Replica {
                name,
                port: free_port(),
                dir,
                child: ChildGuard::default(),
                extra: Vec::new(),
            });
        }
        c
    }

    pub fn urls(&self) -> Vec<String> {
        self.replicas.iter().map(Replica::url).collect()
    }

    /// Run `dorado <cmd> --etcd … --group … --namespace … <rest>` against
    /// this group (replay, upgrade, …) and return what it did.
    pub fn tool(&self, cmd: &str, rest: &[&str]) -> std::process::Output {
        std::process::Command::new(&self.bin)
            .arg(cmd)
            .args(["--etcd", &self.etcd_urls[0]])
            .args(["--group", &self.group])
            .args(["--namespace", &self.namespace])
            .args(rest)
            .output()
            .unwrap_or_else(|e| panic!("run {} {cmd}: {e}", self.bin.display()))
    }

    /// Start replica `i` with an empty working directory (a fresh pod).
    pub fn start(&mut self, i: usize) {
        let module = self.module.clone();
        self.start_with_module(i, &module);
    }

    pub fn start_with_module(&mut self, i: usize, module: &Path) {
        let r = &mut self.replicas[i];
        let _ = std::fs::remove_dir_all(&r.dir);
        std::fs::create_dir_all(&r.dir).expect("replica dir");
        let out = std::fs::File::create(r.dir.join("stdout")).expect("stdout file");
        let err = std::fs::File::create(r.dir.join("stderr")).expect("stderr file");
        let flags = ReplicaFlags {
            group: self.group.clone(),
            namespace: self.namespace.clone(),
            replica: r.name.clone(),
            module: module.to_path_buf(),
            etcd: self.etcd_urls.clone(),
            listen: r.addr().parse().expect("a socket address"),
            lease_ttl: self.lease_ttl,
            snapshot_every: self.snapshot_every,
            extra: r.extra.clone(),
        };
        let mut cmd = flags.command(&self.bin, &[], "run", &r.dir, "info");
        cmd.stdout(out).stderr(err);
        r.child = ChildGuard::spawn(&mut cmd)
            .unwrap_or_else(|e| panic!("spawn {} run: {e}", self.bin.display()));
    }

    pub fn start_all(&mut self) {
        for i in 0..self.replicas.len() {
            self.start(i);
        }
    }

    /// `GET /v1/status` of replica `i`; `None` if it does not answer 200.
    pub async fn status(&self, i: usize) -> Option<Status> {
        dorado::client::fetch_status(&http(), &self.replicas[i].url(), Duration::from_secs(2))
            .await
            .ok()
    }

    pub async fn ready(&self, i: usize) -> bool {
        http()
            .get(format!("{}/readyz", self.replicas[i].url()))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    }

    pub async fn wait_ready(&self, i: usize) {
        let what = format!(
            "replica {} to be ready (stderr tail: see below)",
            self.replicas[i].name
        );
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if self.ready(i).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}\n{}", tail(&self.replicas[i].stderr(), 20));
    }

    pub async fn wait_all_ready(&self) {
        for i in 0..self.replicas.len() {
            if self.replicas[i].is_started() {
                self.wait_ready(i).await;
            }
        }
    }

    /// Index of the replica whose status says leader.
    pub async fn leader(&self) -> Option<usize> {
        for i in 0..self.replicas.len() {
            if !self.replicas[i].is_started() {
                continue;
            }
            if let Some(s) = self.status(i).await
                && s.is_leader()
            {
                return Some(i);
            }
        }
        None
    }

    pub async fn wait_leader(&self) -> usize {
        wait_for(Duration::from_secs(20), "a leader", move || async move {
            self.leader()
                .await
                .ok_or_else(|| "no replica says leader".to_string())
        })
        .await
    }

    /// Wait until every running replica has applied the same index with the
    /// same hash; returns (index, hash).
    pub async fn wait_converged(&self, timeout: Duration) -> (u64, String) {
        let what = "the replicas to converge: (applied, commit, hash) equal";
        wait_for(timeout, what, move || async move {
            let mut seen = Vec::new();
            for i in (0..self.replicas.len()).filter(|&i| self.replicas[i].is_started()) {
                match self.status(i).await {
                    Some(s) => seen.push((s.applied_index, s.commit_index, s.hash)),
                    None => seen.push((0, u64::MAX, String::new())),
                }
            }
            let first = seen[0].clone();
            if first.0 >= first.1 && seen.iter().all(|s| s.0 == first.0 && s.2 == first.2) {
                Ok((first.0, first.2))
            } else {
                Err(format!("{seen:?}"))
            }
        })
        .await
    }
}

/// Result of one HTTP command.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub body: String,
    pub index: Option<u64>,
    pub duplicate: bool,
}

impl Resp {
    /// The error body of a non-200 answer.
    pub fn error(&self) -> Option<ErrorBody> {
        (self.status != 200).then(|| ErrorBody::parse(self.body.as_bytes()))
    }
}

pub async fn post(
    http: &reqwest::Client,
    url: &str,
    path: &str,
    body: &str,
    tag: Option<(&str, u64)>,
) -> Result<Resp, String> {
    let mut req = http.post(format!("{url}{path}")).body(body.to_string());
    if let Some((id, seq)) = tag {
        req = req
            .header(dorado::api::CLIENT_ID, id)
            .header(dorado::api::SEQ, seq.to_string());
    }
    let r = req.send().await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let index = r
        .headers()
        .get(dorado::api::INDEX)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let duplicate = r.headers().contains_key(dorado::api::DUPLICATE);
    let body = r.text().await.map_err(|e| e.to_string())?;
    Ok(Resp {
        status,
        body,
        index,
        duplicate,
    })
}

/// Submit with retries across replicas (same client id and seq every time),
/// as a careful client would. Returns the final response.
pub async fn submit_retrying(
    urls: &[String],
    body: &str,
    id: &str,
    seq: u64,
    deadline: Duration,
) -> Option<Resp> {
    let http = http();
    let start = Instant::now();
    let mut i = seq as usize;
    while start.elapsed() < deadline {
        let url = &urls[i % urls.len()];
        i += 1;
        if let Ok(r) = post(&http, url, "/v1/commands", body, Some((id, seq))).await
            && (r.status == 200 || r.status == 422)
        {
            return Some(r);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

pub fn kv_put(key: &str, value: &str) -> String {
    serde_json::json!({"op": "put", "key": key, "value": value}).to_string()
}

pub fn kv_get(key: &str) -> String {
    serde_json::json!({"op": "get", "key": key}).to_string()
}
