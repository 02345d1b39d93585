//! Replica processes: start (optionally inside a network namespace), `kill -9`,
//! `SIGSTOP`/`SIGCONT`, restart with or without wiping the working directory.
//!
//! Each incarnation writes its trace (stdout, JSON lines) and its log
//! (stderr) to its own files outside the working directory, so that a wipe
//! never loses the evidence the checks read afterwards. A [`ReplicaProc`]
//! kills its process when dropped, on every path.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// How to start one replica.
#[derive(Debug, Clone)]
pub struct ReplicaSpec {
    /// Executable whose `replica` subcommand runs a replica.
    pub bin: PathBuf,
    /// Group name.
    pub group: String,
    /// Namespace of the group's keys.
    pub namespace: String,
    /// Replica id.
    pub name: String,
    /// Guest module path.
    pub module: PathBuf,
    /// etcd URLs as this replica reaches them.
    pub etcd: Vec<String>,
    /// Client API address.
    pub listen: SocketAddr,
    /// Lease TTL in seconds.
    pub lease_ttl: u64,
    /// Snapshot interval in entries (0 = never).
    pub snapshot_every: u64,
    /// Network namespace to run in, if any.
    pub netns: Option<String>,
}

/// One replica and its incarnations.
#[derive(Debug)]
pub struct ReplicaProc {
    /// How it is started.
    pub spec: ReplicaSpec,
    /// Working directory (wiped on a "recreated pod" restart).
    pub workdir: PathBuf,
    /// Where traces and logs of all incarnations go.
    pub logdir: PathBuf,
    /// Incarnations started so far.
    pub incarnations: u32,
    child: Option<Child>,
    /// Stopped with SIGSTOP and not yet continued.
    pub paused: bool,
    /// Cut off from etcd (network namespace route blackholed).
    pub cut: bool,
}

impl ReplicaProc {
    /// A replica that is not running yet.
    pub fn new(spec: ReplicaSpec, workdir: PathBuf, logdir: PathBuf) -> Self {
        ReplicaProc {
            spec,
            workdir,
            logdir,
            incarnations: 0,
            child: None,
            paused: false,
            cut: false,
        }
    }

    /// `http://ip:port` of its client API.
    pub fn url(&self) -> String {
        format!("http://{}", self.spec.listen)
    }

    /// Start a new incarnation (the previous one must be gone).
    pub fn start(&mut self, wipe: bool) -> anyhow::Result<()> {
        self.kill();
        if wipe {
            let _ = std::fs::remove_dir_all(&self.workdir);
        }
        std::fs::create_dir_all(&self.workdir)
            .with_context(|| format!("create {}", self.workdir.display()))?;
        std::fs::create_dir_all(&self.logdir)?;
        self.incarnations += 1;
        let stem = format!("{}.{}", self.spec.name, self.incarnations);
        let out = File::create(self.logdir.join(format!("{stem}.trace")))?;
        let err = File::create(self.logdir.join(format!("{stem}.log")))?;
        let s = &self.spec;
        let mut cmd = match &s.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&s.bin);
                c
            }
            None => Command::new(&s.bin),
        };
        cmd.arg("replica")
            .args(["--group", &s.group, "--namespace", &s.namespace])
            .args(["--replica", &s.name])
            .arg("--module")
            .arg(&s.module)
            .args(["--etcd", &s.etcd.join(",")])
            .args(["--listen", &s.listen.to_string()])
            .args(["--advertise", &s.listen.to_string()])
            .args(["--lease-ttl", &s.lease_ttl.to_string()])
            .args(["--snapshot-every", &s.snapshot_every.to_string()])
            .args(["--log-format", "json"])
            .env("DORADO_LOG", "info")
            .current_dir(&self.workdir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("start replica {}", s.name))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// Whether the current incarnation is alive (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(_)) = c.try_wait()
        {
            self.child = None;
            self.paused = false;
        }
        self.child.is_some()
    }

    /// Process id of the current incarnation.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let status = Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("run kill")?;
        anyhow::ensure!(status.success(), "kill -{sig} {pid} failed");
        Ok(())
    }

    /// `SIGSTOP`.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.signal("STOP")?;
            self.paused = true;
        }
        Ok(())
    }

    /// `SIGCONT`.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        if self.paused {
            self.signal("CONT")?;
            self.paused = false;
        }
        Ok(())
    }

    /// `kill -9` and reap (a crashed pod).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// Trace files of every incarnation, oldest first.
    pub fn trace_files(&self) -> Vec<PathBuf> {
        (1..=self.incarnations)
            .map(|i| self.logdir.join(format!("{}.{i}.trace", self.spec.name)))
            .collect()
    }

    /// Log (stderr) of the latest incarnation.
    pub fn log_file(&self) -> PathBuf {
        self.logdir
            .join(format!("{}.{}.log", self.spec.name, self.incarnations))
    }
}

impl Drop for ReplicaProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `n` lines of a file, for reports.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
