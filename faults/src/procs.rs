//! Replica processes: start (optionally inside a network namespace), `kill -9`,
//! `SIGSTOP`/`SIGCONT`, restart with or without wiping the working directory.
//!
//! Each incarnation writes its trace (stdout, JSON lines) and its log
//! (stderr) to its own files outside the working directory, so that a wipe
//! never loses the evidence the checks read afterwards. A [`ReplicaProc`]
//! kills its process when dropped, on every path.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use dorado_testkit::process::ChildGuard;
use dorado_testkit::replica::ReplicaFlags;

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
    child: ChildGuard,
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
            child: ChildGuard::default(),
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
        let flags = ReplicaFlags {
            group: s.group.clone(),
            namespace: s.namespace.clone(),
            replica: s.name.clone(),
            module: s.module.clone(),
            etcd: s.etcd.clone(),
            listen: s.listen,
            lease_ttl: s.lease_ttl,
            snapshot_every: s.snapshot_every,
            extra: [
                "--log-format",
                "json",
                // Several appends in flight: more interleavings for the faults to hit.
                "--max-inflight",
                "4",
            ]
            .map(String::from)
            .to_vec(),
        };
        let prefix: Vec<&str> = match &s.netns {
            Some(ns) => vec!["ip", "netns", "exec", ns],
            None => Vec::new(),
        };
        let mut cmd = flags.command(&s.bin, &prefix, "replica", &self.workdir, "info");
        cmd.stdout(out).stderr(err);
        self.child =
            ChildGuard::spawn(&mut cmd).with_context(|| format!("start replica {}", s.name))?;
        Ok(())
    }

    /// Whether the current incarnation is alive (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Stopped with SIGSTOP and not yet continued.
    pub fn is_paused(&self) -> bool {
        self.child.is_paused()
    }

    /// Process id of the current incarnation.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// `SIGSTOP`.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        Ok(self.child.pause()?)
    }

    /// `SIGCONT`.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        Ok(self.child.resume()?)
    }

    /// `kill -9` and reap (a crashed pod).
    pub fn kill(&mut self) {
        self.child.kill();
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

pub use dorado_testkit::process::tail_file as tail;
