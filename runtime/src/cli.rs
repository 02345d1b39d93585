//! `dorado run` as a library function, so that every binary that runs a
//! replica (the runtime's `dorado`, the benchmarks' `dorado-bench run`) parses
//! the same flags and environment and wires the replica the same way.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::host::{DEFAULT_FUEL_PER_COMMAND, DEFAULT_MEMORY_LIMIT, HostConfig};
use crate::node::NodeConfig;
use crate::probe::HttpProbe;
use crate::runner::{self, RunError, RunOptions, Starter};
use crate::store::{EtcdStore, EtcdStoreOptions, EtcdTlsArgs, EtcdTlsError};
use crate::trace::LogFormat;
use dorado_core::UpgradeMode;

/// How long a follower's probe of the leader may take: a refused connection
/// (a killed leader) fails at once; a peer that is gone from the network, or
/// too busy to answer `/healthz`, is silent after this (and silence deposes
/// only after `SuspicionConfig::silent_window`).
const LEADER_PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// Why `dorado run` could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Neither `--replica`, `DORADO_REPLICA`, `POD_NAME` nor a host name names the replica.
    #[error("no replica id: set --replica, DORADO_REPLICA or POD_NAME")]
    NoReplicaId,
    /// `--memory-mib` overflows a byte count.
    #[error("--memory-mib {0} is too large")]
    MemoryTooLarge(usize),
    /// The client API's address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The `--listen` address.
        address: std::net::SocketAddr,
        /// Why binding failed.
        source: io::Error,
    },
    /// The etcd TLS flags do not fit together or do not fit the endpoints.
    #[error(transparent)]
    EtcdTls(#[from] EtcdTlsError),
    /// The HTTP client that probes the leader could not be built.
    #[error("cannot build the leader probe's HTTP client: {0}")]
    Probe(String),
    /// The replica stopped with an error.
    #[error(transparent)]
    Run(#[from] RunError),
}

/// The flags and `DORADO_*` environment of `dorado run` (what the webhook
/// injects into pods).
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Group name (one replicated state machine).
    #[arg(long, env = "DORADO_GROUP")]
    pub group: String,
    /// Namespace of the group (key prefix in etcd).
    #[arg(long, env = "DORADO_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Replica id [default: $POD_NAME, then the host name].
    #[arg(long, env = "DORADO_REPLICA")]
    pub replica: Option<String>,
    /// The guest module (.wasm).
    #[arg(long, env = "DORADO_MODULE")]
    pub module: PathBuf,
    /// etcd endpoints, comma-separated URLs.
    #[arg(
        long,
        env = "DORADO_ETCD_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    pub etcd: Vec<String>,
    /// TLS towards `https://` etcd endpoints.
    #[command(flatten)]
    pub etcd_tls: EtcdTlsArgs,
    /// Address of the client API.
    #[arg(long, env = "DORADO_LISTEN", default_value = "0.0.0.0:7070")]
    pub listen: std::net::SocketAddr,
    /// host:port other replicas use to reach this one [default: $POD_IP:port, else the listen address].
    #[arg(long, env = "DORADO_ADVERTISE")]
    pub advertise: Option<String>,
    /// Lease time-to-live in seconds: the longest a crashed leader blocks writes.
    #[arg(long, env = "DORADO_LEASE_TTL", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub lease_ttl: u64,
    /// Store a snapshot and truncate the log every this many entries (0 = never).
    #[arg(long, env = "DORADO_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// Trace format on stdout.
    #[arg(long, env = "DORADO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Largest accepted command, in bytes (etcd refuses requests over 1.5 MiB).
    #[arg(long, env = "DORADO_MAX_COMMAND_BYTES", default_value_t = crate::api::DEFAULT_MAX_COMMAND_BYTES, value_parser = parse_command_limit)]
    pub max_command_bytes: usize,
    /// Fuel budget per command.
    #[arg(long, env = "DORADO_FUEL", default_value_t = DEFAULT_FUEL_PER_COMMAND)]
    pub fuel: u64,
    /// Cap on the guest's memory, in MiB.
    #[arg(long, env = "DORADO_MEMORY_MIB", default_value_t = DEFAULT_MEMORY_LIMIT >> 20)]
    pub memory_mib: usize,
    /// Client sessions idle for this many log entries expire (fixed by the group's first replica).
    #[arg(long, env = "DORADO_SESSION_EXPIRY", default_value_t = 1_000_000)]
    pub session_expiry: u64,
    /// Appends the leader keeps in flight at once (1: commands queue behind the
    /// append in flight and leave together; raise it when etcd is far away).
    #[arg(long, env = "DORADO_MAX_INFLIGHT", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub max_inflight: u64,
    /// Longest the leader holds the next batch back, in microseconds, while
    /// the clients it just answered send their next commands (group commit;
    /// never longer than that append took; 0: off). The hold ends as soon as
    /// 90 % of them are back.
    #[arg(long, env = "DORADO_BATCH_LINGER_US", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub batch_linger_us: u64,
    /// Store big batches compressed (log entry format version 2,
    /// docs/entry-format.md). Turn off while any replica of the group still
    /// runs a build that predates version 2 (it refuses such entries), or to
    /// keep a rollback to one possible.
    #[arg(long, env = "DORADO_ENTRY_COMPRESSION", default_value_t = true, action = clap::ArgAction::Set)]
    pub entry_compression: bool,
    /// What a replica started with a module the group does not run does:
    /// `auto` proposes an upgrade to it (the first pod of a rollout does),
    /// `manual` stays not ready until `dorado upgrade` switches the group.
    #[arg(long, env = "DORADO_UPGRADE", value_enum, default_value_t = UpgradeArg::Auto)]
    pub upgrade: UpgradeArg,
}

/// `--upgrade` (`dorado.io/upgrade` in a pod template).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UpgradeArg {
    /// Propose this replica's module when the group runs another.
    Auto,
    /// Never propose; wait for `dorado upgrade`.
    Manual,
}

impl From<UpgradeArg> for UpgradeMode {
    fn from(a: UpgradeArg) -> Self {
        match a {
            UpgradeArg::Auto => UpgradeMode::Auto,
            UpgradeArg::Manual => UpgradeMode::Manual,
        }
    }
}

/// `--max-command-bytes`: within what one etcd request can carry.
pub fn parse_command_limit(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if n == 0 || n > 1_400_000 {
        return Err(format!(
            "{n} is outside 1..=1400000 bytes (etcd refuses requests over 1.5 MiB)"
        ));
    }
    Ok(n)
}

/// Structured logs on stderr (stdout carries the replay trace), filtered by `DORADO_LOG`.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DORADO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

/// The kernel's host name (a pod's name in Kubernetes).
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `dorado run`: one replica of `args.group` over etcd until SIGTERM or Ctrl-C,
/// ordered by `starter` (the runtime ships [`crate::runner::Dorado`]).
pub async fn run_replica(args: RunArgs, starter: impl Starter<EtcdStore>) -> Result<(), CliError> {
    init_logging(args.log_format);
    let replica = args
        .replica
        .or_else(|| std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()))
        .or_else(host_name)
        .ok_or(CliError::NoReplicaId)?;
    let advertise = match args.advertise {
        Some(a) => a,
        None => match std::env::var("POD_IP").ok().filter(|s| !s.is_empty()) {
            Some(ip) => format!("{ip}:{}", args.listen.port()),
            None if !args.listen.ip().is_unspecified() => args.listen.to_string(),
            None => format!(
                "{}:{}",
                host_name().unwrap_or_else(|| "127.0.0.1".into()),
                args.listen.port()
            ),
        },
    };
    let mut node = NodeConfig::new(&args.namespace, &args.group, &replica, &advertise);
    node.lease_ttl = Duration::from_secs(args.lease_ttl);
    node.snapshot_every = args.snapshot_every;
    node.log_format = args.log_format;
    node.session_expiry_entries = args.session_expiry;
    node.leader.max_inflight = args.max_inflight as usize;
    node.leader.linger = Duration::from_micros(args.batch_linger_us);
    node.leader.compress_entries = args.entry_compression;
    node.upgrade = args.upgrade.into();
    node.leader.max_batch_bytes = (1024 * 1024).max(args.max_command_bytes + 4096);
    let probe = HttpProbe::new(LEADER_PROBE_TIMEOUT).map_err(|e| CliError::Probe(e.to_string()))?;
    node.leader_probe = Some(Arc::new(probe));
    let memory_limit = args
        .memory_mib
        .checked_mul(1 << 20)
        .ok_or(CliError::MemoryTooLarge(args.memory_mib))?;
    let options = RunOptions {
        node,
        module: args.module,
        host: HostConfig {
            fuel_per_command: args.fuel,
            memory_limit,
            ..HostConfig::default()
        },
        max_command_bytes: args.max_command_bytes,
        drain_timeout: Duration::from_secs(5),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| CliError::Listen {
            address: args.listen,
            source,
        })?;
    let store_options = EtcdStoreOptions {
        tls: args.etcd_tls.resolve(&args.etcd)?,
        ..EtcdStoreOptions::default()
    };
    let (etcd, namespace, group) = (args.etcd, args.namespace, args.group);
    let connect = move || {
        let (etcd, namespace, group) = (etcd.clone(), namespace.clone(), group.clone());
        let options = store_options.clone();
        async move { EtcdStore::connect(&etcd, &namespace, &group, options).await }
    };
    runner::run(
        options,
        listener,
        connect,
        starter,
        runner::shutdown_signal(),
    )
    .await?;
    Ok(())
}
