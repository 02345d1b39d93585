//! Real etcd processes for tests, `dorado-bench demo` and benchmarks.
//!
//! Dorado's guarantees are only as good as its use of etcd, so tests run
//! against the real server (Debian's `etcd-server`), never a fake: a single
//! member ([`EtcdProcess`]) or a three-member cluster ([`EtcdCluster`]) on
//! 127.0.0.1. Each instance owns a temporary directory (data and log), picks
//! its own free ports, and kills its processes and removes the directory when
//! dropped, also when a test panics, so tests can run in parallel.
//!
//! Members can be killed (`SIGKILL`), stopped (`SIGTERM`), paused
//! (`SIGSTOP`) and restarted on the same ports and data, which is how the
//! fault suite takes etcd away from a running group and gives it back.
//!
//! Readiness is a real linearizable read through `etcd-client`, polled with
//! a bounded timeout; failures name the member's log file and quote its end.
//!
//! With [`EtcdProcessOptions::tls`] members serve clients over TLS
//! (`https://` URLs), optionally with `--client-cert-auth`; the files can
//! come from [`crate::pki`]. The options may be changed between
//! restarts ([`EtcdCluster::options_mut`]), e.g. to trust another client CA.
//!
//! Ports are picked below the kernel's ephemeral range when possible: the
//! clients of parallel tests take their source ports from that range, and a
//! member restarted on "its" port must not find it taken by someone's
//! outgoing connection.

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};
use tempfile::TempDir;
use tokio::time::Instant;

/// Environment variable naming the etcd binary (default: `etcd` on `PATH`).
pub const ETCD_BIN_ENV: &str = "DORADO_ETCD_BIN";

/// How often a condition is polled while waiting for it.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Attempts at starting with freshly picked ports when one turns out taken.
const PORT_ATTEMPTS: usize = 5;

/// Bound on a graceful stop before `SIGKILL`.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Lines of the log quoted in errors.
const LOG_TAIL_LINES: usize = 15;

/// How etcd processes are started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdProcessOptions {
    /// `--auto-compaction-mode revision --auto-compaction-retention N`: keep
    /// the last N revisions (etcd compacts every 5 minutes in this mode).
    pub auto_compaction_retention: Option<u64>,
    /// `--quota-backend-bytes`: the backend size at which etcd raises the
    /// `NOSPACE` alarm and refuses writes.
    pub quota_backend_bytes: Option<u64>,
    /// `--heartbeat-interval` (etcd default 100 ms).
    pub heartbeat_interval: Duration,
    /// `--election-timeout` (etcd default 1 s). Leases shorter than 1.5
    /// election timeouts are extended by etcd to that minimum.
    pub election_timeout: Duration,
    /// Bound on waiting for a (re)started member to serve.
    pub startup_timeout: Duration,
    /// Where the temporary directory is created (default: the system temp
    /// dir). `/dev/shm` makes fsync free, for tests that do not measure disk.
    pub base_dir: Option<PathBuf>,
    /// Serve clients over TLS (`https://` client URLs).
    pub tls: Option<EtcdServerTls>,
    /// More etcd flags, appended as given.
    pub extra_args: Vec<String>,
}

/// Client-side TLS of an etcd member (`--cert-file`, `--key-file`,
/// `--trusted-ca-file`, `--client-cert-auth`) and what the readiness probe
/// presents to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdServerTls {
    /// Serving certificate (PEM); its SANs must cover 127.0.0.1.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The CAs client certificates must chain to.
    pub trusted_ca: PathBuf,
    /// `--client-cert-auth`: refuse clients without a certificate from `trusted_ca`.
    pub client_cert_auth: bool,
    /// The CA bundle the probe verifies the serving certificate with.
    pub probe_ca: PathBuf,
    /// The client certificate and key the probe presents, if any.
    pub probe_identity: Option<(PathBuf, PathBuf)>,
    /// The host name the probe checks the serving certificate for, when it
    /// does not cover 127.0.0.1 (e.g. a test of a wrong host name).
    pub probe_domain: Option<String>,
}

impl Default for EtcdProcessOptions {
    fn default() -> Self {
        Self {
            auto_compaction_retention: None,
            quota_backend_bytes: None,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            startup_timeout: Duration::from_secs(30),
            base_dir: None,
            tls: None,
            extra_args: Vec::new(),
        }
    }
}

/// Why an etcd process could not be started or controlled.
#[derive(Debug, thiserror::Error)]
pub enum EtcdProcessError {
    /// No etcd binary.
    #[error(
        "etcd binary not found ({0}); set {ETCD_BIN_ENV} or put `etcd` on PATH (Debian/Ubuntu: apt-get install etcd-server)"
    )]
    NotFound(String),
    /// A file system or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The member exited while starting.
    #[error("etcd member {name} exited while starting ({status}); log {log}:\n{tail}")]
    Exited {
        /// Member name.
        name: String,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// The member runs but does not serve.
    #[error(
        "etcd member {name} did not become healthy within {timeout:?} ({reason}); log {log}:\n{tail}"
    )]
    Unhealthy {
        /// Member name.
        name: String,
        /// How long we waited.
        timeout: Duration,
        /// The last health check failure.
        reason: String,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// A member index out of range.
    #[error("no etcd member {index} (the cluster has {len})")]
    NoSuchMember {
        /// The index asked for.
        index: usize,
        /// Number of members.
        len: usize,
    },
}

type Result<T> = std::result::Result<T, EtcdProcessError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EtcdProcessError {
    let what = what.into();
    move |source| EtcdProcessError::Io { what, source }
}

/// Find the etcd binary: `$DORADO_ETCD_BIN`, else `etcd` on `PATH`.
pub fn find_etcd_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(ETCD_BIN_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(EtcdProcessError::NotFound(format!(
                "{ETCD_BIN_ENV}={} is not a file",
                path.display()
            )))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| EtcdProcessError::NotFound("no `etcd` on PATH".into()))
}

/// One member's fixed identity: name, ports, files.
#[derive(Debug)]
struct Member {
    name: String,
    /// `http` or `https` (client URLs).
    scheme: &'static str,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }

    /// `Some(status)` if the process has exited (reaping it).
    fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            Ok(None) | Err(_) => None,
        }
    }

    fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // Fails only if it already exited; wait reaps it either way.
            let _ = child.kill();
            child
                .wait()
                .map_err(io(format!("wait for etcd member {}", self.name)))?;
        }
        Ok(())
    }

    fn signal(&self, signal: &str) -> Result<()> {
        let Some(child) = &self.child else {
            return Ok(());
        };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(io(format!(
                "run `kill -{signal}` for etcd member {}",
                self.name
            )))?;
        if status.success() {
            Ok(())
        } else {
            Err(EtcdProcessError::Io {
                what: format!("kill -{signal} {} (etcd member {})", child.id(), self.name),
                source: std::io::Error::other(format!("kill exited with {status}")),
            })
        }
    }

    async fn stop(&mut self) -> Result<()> {
        if self.child.is_none() {
            return Ok(());
        }
        // A paused member would never handle SIGTERM.
        self.signal("CONT")?;
        self.signal("TERM")?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return Ok(());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        self.kill()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The end of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(cannot read log: {e})"),
    }
}

/// Pick `n` distinct free ports on 127.0.0.1.
fn pick_ports(n: usize) -> Result<Vec<u16>> {
    let (ephemeral_low, _) = ephemeral_range();
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    let mut tries = 0;
    while ports.len() < n {
        tries += 1;
        // Below the ephemeral range when it leaves room, else let the kernel pick.
        let candidate = if ephemeral_low > 12_000 && tries < 200 {
            rand::random_range(10_000..ephemeral_low)
        } else {
            0
        };
        match TcpListener::bind(("127.0.0.1", candidate)) {
            Ok(listener) => {
                let port = listener
                    .local_addr()
                    .map_err(io("read a bound port"))?
                    .port();
                if !ports.contains(&port) {
                    ports.push(port);
                    held.push(listener);
                }
            }
            Err(e) if candidate == 0 => {
                return Err(EtcdProcessError::Io {
                    what: "bind a free port on 127.0.0.1".into(),
                    source: e,
                });
            }
            Err(_) => {}
        }
    }
    Ok(ports)
}

fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// Ask one member for a linearizable read (which needs a cluster leader).
async fn probe(url: &str, tls: Option<&EtcdServerTls>) -> std::result::Result<(), String> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2))
        .with_require_leader(true);
    if let Some(tls) = tls {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("read {}: {e}", p.display()));
        let mut client_tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.probe_ca)?));
        if let Some((cert, key)) = &tls.probe_identity {
            client_tls =
                client_tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(domain) = &tls.probe_domain {
            client_tls = client_tls.domain_name(domain.clone());
        }
        options = options.with_tls(client_tls);
    }
    let attempt = async {
        let mut client = Client::connect([url], Some(options))
            .await
            .map_err(|e| e.to_string())?;
        client
            .get("/dorado-health", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer from {url} within 3s")),
    }
}

/// An etcd cluster of one or more members on 127.0.0.1.
#[derive(Debug)]
pub struct EtcdCluster {
    bin: PathBuf,
    options: EtcdProcessOptions,
    token: String,
    members: Vec<Member>,
    // Declared last: dropped after the members are killed.
    dir: TempDir,
}

impl EtcdCluster {
    /// Start a cluster of `size` members with default options and wait until
    /// every member serves.
    pub async fn start(size: usize) -> Result<Self> {
        Self::start_with(size, EtcdProcessOptions::default()).await
    }

    /// Start a cluster of `size` (at least 1) members.
    pub async fn start_with(size: usize, options: EtcdProcessOptions) -> Result<Self> {
        let size = size.max(1);
        let bin = find_etcd_binary()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut cluster = Self::prepare(&bin, size, &options)?;
            for i in 0..size {
                cluster.spawn(i)?;
            }
            match cluster.wait_healthy(&(0..size).collect::<Vec<_>>()).await {
                Ok(()) => return Ok(cluster),
                Err(e) if attempt < PORT_ATTEMPTS && port_taken(&e) => {
                    tracing::debug!(error = %e, "etcd port taken; retrying with other ports");
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn prepare(bin: &Path, size: usize, options: &EtcdProcessOptions) -> Result<Self> {
        let base = options.base_dir.clone().unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("dorado-etcd-")
            .tempdir_in(&base)
            .map_err(io(format!("create a temp dir in {}", base.display())))?;
        let ports = pick_ports(2 * size)?;
        let members = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                scheme: if options.tls.is_some() {
                    "https"
                } else {
                    "http"
                },
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log_path: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        Ok(Self {
            bin: bin.to_owned(),
            options: options.clone(),
            token: format!("dorado-{:016x}", rand::random::<u64>()),
            members,
            dir,
        })
    }

    fn member(&self, i: usize) -> Result<&Member> {
        self.members.get(i).ok_or(EtcdProcessError::NoSuchMember {
            index: i,
            len: self.members.len(),
        })
    }

    fn member_mut(&mut self, i: usize) -> Result<&mut Member> {
        let len = self.members.len();
        self.members
            .get_mut(i)
            .ok_or(EtcdProcessError::NoSuchMember { index: i, len })
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let options = &self.options;
        let member = self.member(i)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .arg("--listen-client-urls")
            .arg(member.client_url())
            .arg("--advertise-client-urls")
            .arg(member.client_url())
            .arg("--listen-peer-urls")
            .arg(member.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(member.peer_url())
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            // Ignored once the data dir holds a member (restarts).
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--heartbeat-interval")
            .arg(options.heartbeat_interval.as_millis().max(1).to_string())
            .arg("--election-timeout")
            .arg(options.election_timeout.as_millis().max(1).to_string())
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr");
        if let Some(retention) = options.auto_compaction_retention {
            cmd.arg("--auto-compaction-mode")
                .arg("revision")
                .arg("--auto-compaction-retention")
                .arg(retention.to_string());
        }
        if let Some(quota) = options.quota_backend_bytes {
            cmd.arg("--quota-backend-bytes").arg(quota.to_string());
        }
        if let Some(tls) = &options.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.trusted_ca);
            if tls.client_cert_auth {
                cmd.arg("--client-cert-auth");
            }
        }
        cmd.args(&options.extra_args);
        // Our flags are the whole configuration: inherited ETCD_* variables
        // would conflict with them.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(name);
            }
        }
        if cfg!(target_arch = "aarch64") {
            cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
        }
        let log = open_log(&member.log_path)?;
        let log_err = log
            .try_clone()
            .map_err(io(format!("open {}", member.log_path.display())))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = cmd
            .spawn()
            .map_err(io(format!("start {}", self.bin.display())))?;
        self.member_mut(i)?.child = Some(child);
        Ok(())
    }

    /// Poll until each member in `which` answers a linearizable read.
    async fn wait_healthy(&mut self, which: &[usize]) -> Result<()> {
        let timeout = self.options.startup_timeout;
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<usize> = which.to_vec();
        let mut last_reason = String::from("not probed yet");
        loop {
            let mut still = Vec::new();
            for &i in &pending {
                let member = self.member_mut(i)?;
                if let Some(status) = member.exited() {
                    return Err(EtcdProcessError::Exited {
                        name: member.name.clone(),
                        status: status.to_string(),
                        log: member.log_path.clone(),
                        tail: member.log_tail(),
                    });
                }
                if member.child.is_none() {
                    return Err(EtcdProcessError::Exited {
                        name: member.name.clone(),
                        status: "not running".into(),
                        log: member.log_path.clone(),
                        tail: member.log_tail(),
                    });
                }
                let url = member.client_url();
                if let Err(reason) = probe(&url, self.options.tls.as_ref()).await {
                    last_reason = reason;
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let member = self.member(pending[0])?;
                return Err(EtcdProcessError::Unhealthy {
                    name: member.name.clone(),
                    timeout,
                    reason: last_reason,
                    log: member.log_path.clone(),
                    tail: member.log_tail(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The options members are (re)started with; changes apply from the
    /// next [`Self::restart_member`].
    pub fn options_mut(&mut self) -> &mut EtcdProcessOptions {
        &mut self.options
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Client URLs of all members (`http(s)://127.0.0.1:<port>`).
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Client URL of member `i`.
    pub fn client_url(&self, i: usize) -> Result<String> {
        Ok(self.member(i)?.client_url())
    }

    /// Log file of member `i` (kept across restarts).
    pub fn log_path(&self, i: usize) -> Result<PathBuf> {
        Ok(self.member(i)?.log_path.clone())
    }

    /// The last lines of member `i`'s log.
    pub fn log_tail(&self, i: usize) -> Result<String> {
        Ok(self.member(i)?.log_tail())
    }

    /// Data directory of member `i`.
    pub fn data_dir(&self, i: usize) -> Result<PathBuf> {
        Ok(self.member(i)?.data_dir.clone())
    }

    /// The temporary directory holding all data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process id of member `i`, `None` if it is not running.
    pub fn pid(&self, i: usize) -> Result<Option<u32>> {
        Ok(self.member(i)?.child.as_ref().map(Child::id))
    }

    /// Whether member `i`'s process is alive (reaps it if it exited).
    pub fn is_running(&mut self, i: usize) -> Result<bool> {
        let member = self.member_mut(i)?;
        member.exited();
        Ok(member.child.is_some())
    }

    /// `SIGKILL` member `i` and reap it: a crash.
    pub fn kill_member(&mut self, i: usize) -> Result<()> {
        self.member_mut(i)?.kill()
    }

    /// Stop member `i` gracefully (`SIGTERM`, `SIGKILL` after 10 s).
    pub async fn stop_member(&mut self, i: usize) -> Result<()> {
        self.member_mut(i)?.stop().await
    }

    /// `SIGSTOP` member `i`: it keeps its sockets but answers nothing.
    pub fn pause_member(&mut self, i: usize) -> Result<()> {
        self.member(i)?.signal("STOP")
    }

    /// `SIGCONT` member `i` after [`Self::pause_member`].
    pub fn resume_member(&mut self, i: usize) -> Result<()> {
        self.member(i)?.signal("CONT")
    }

    /// Start member `i` again on the same ports and data (killing it first if
    /// it runs), and wait until it serves.
    pub async fn restart_member(&mut self, i: usize) -> Result<()> {
        self.member_mut(i)?.kill()?;
        let timeout = self.options.startup_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            self.spawn(i)?;
            match self.wait_healthy(&[i]).await {
                // The port may be held for a moment by a socket of the
                // previous incarnation; try again until the deadline.
                Err(e) if port_taken(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
                other => return other,
            }
        }
    }

    /// Kill every member (as if the whole cluster crashed).
    pub fn kill_all(&mut self) -> Result<()> {
        for member in &mut self.members {
            member.kill()?;
        }
        Ok(())
    }
}

fn open_log(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(format!("open {}", path.display())))
}

fn port_taken(e: &EtcdProcessError) -> bool {
    matches!(e, EtcdProcessError::Exited { tail, .. } if tail.contains("address already in use"))
}

/// A single-member etcd for tests, demos and benchmarks; killed and its
/// directory removed on drop.
#[derive(Debug)]
pub struct EtcdProcess {
    cluster: EtcdCluster,
}

impl EtcdProcess {
    /// Start etcd with default options and wait until it serves.
    pub async fn start() -> Result<Self> {
        Self::start_with(EtcdProcessOptions::default()).await
    }

    /// Start etcd with `options` and wait until it serves.
    pub async fn start_with(options: EtcdProcessOptions) -> Result<Self> {
        Ok(Self {
            cluster: EtcdCluster::start_with(1, options).await?,
        })
    }

    /// `http://127.0.0.1:<port>` (`https://` with TLS).
    pub fn client_url(&self) -> String {
        self.cluster.members[0].client_url()
    }

    /// [`Self::client_url`] as a list, the shape store constructors take.
    pub fn client_urls(&self) -> Vec<String> {
        vec![self.client_url()]
    }

    /// The log file (kept across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.cluster.members[0].log_path.clone()
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        self.cluster.members[0].log_tail()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.cluster.members[0].data_dir.clone()
    }

    /// Process id, `None` if not running.
    pub fn pid(&self) -> Option<u32> {
        self.cluster.members[0].child.as_ref().map(Child::id)
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        let member = &mut self.cluster.members[0];
        member.exited();
        member.child.is_some()
    }

    /// `SIGKILL` and reap: a crash.
    pub fn kill(&mut self) -> Result<()> {
        self.cluster.members[0].kill()
    }

    /// Graceful stop: `SIGTERM`, then `SIGKILL` after 10 s.
    pub async fn stop(&mut self) -> Result<()> {
        self.cluster.members[0].stop().await
    }

    /// `SIGSTOP`: etcd keeps its sockets but answers nothing.
    pub fn pause(&mut self) -> Result<()> {
        self.cluster.members[0].signal("STOP")
    }

    /// `SIGCONT` after [`Self::pause`].
    pub fn resume(&mut self) -> Result<()> {
        self.cluster.members[0].signal("CONT")
    }

    /// The options it is (re)started with; changes apply from the next
    /// [`Self::restart`].
    pub fn options_mut(&mut self) -> &mut EtcdProcessOptions {
        self.cluster.options_mut()
    }

    /// Start again on the same port and data (killing it first if it runs)
    /// and wait until it serves.
    pub async fn restart(&mut self) -> Result<()> {
        self.cluster.restart_member(0).await
    }
}
