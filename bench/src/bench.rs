//! `dorado-bench bench`: Dorado against raw etcd and the paper's protocol, side by
//! side in one run; plus failover and recovery measurements.
//!
//! Every number Dorado publishes is a ratio measured in one run on one
//! machine, so this tool measures four systems against the *same* etcd, at
//! the *same* concurrency, with the *same* command size, one after the other
//! for each client count:
//!
//! - `etcd-put`: plain etcd puts through `etcd-client` (same key space size,
//!   value = the command's bytes): the rate etcd itself sustains;
//! - `fenced-txn`: one fenced append per operation through [`EtcdStore`],
//!   i.e. exactly the `Txn` a Dorado leader issues per batch
//!   (`If create_revision(leader) == epoch AND create_revision(log/i) == 0
//!   Then put log/i`), without batching: the cost of one ordered entry;
//! - `dorado`: N replicas of the embedded `kv` module, started as child
//!   processes (`dorado run`), driven over the real HTTP client API with
//!   exactly-once headers (one client id per client, seq 1, 2, 3, ...);
//! - `dorado-pipelined`: the same `dorado` group, driven by clients that
//!   share ONE HTTP/2 connection per replica (h2c with prior knowledge,
//!   [`dorado::client::pipelined_http`]): every client's request is a stream
//!   of it, so all commands are in flight on one connection;
//! - `dorado-batched`: the same `dorado` group, driven by clients that share
//!   one [`dorado::client::Client::batched`]: commands submitted while
//!   earlier ones are on their way leave together as one batch request
//!   (`POST /v1/forward`) and come back as one response;
//! - `classic`: N replicas of the same module running the paper's 2016
//!   scheme (`dorado run --protocol classic --replicas N`), same client API,
//!   same driver, same headers.
//!
//! All of them share one closed-loop driver ([`driver::drive`]): each client
//! sends its next operation as soon as the previous one is answered; only
//! operations that complete inside the measurement window (after the
//! warm-up) count. The driver also samples the CPU time of every process
//! (etcd, each replica, the benchmark itself) over that window, so a result
//! says where the time went and whether the client was the bottleneck, and
//! takes a census of etcd's own `/metrics` at the window's edges (gRPC
//! requests by method, streams started, bytes received and sent, etcd's CPU;
//! [`dorado_testkit::etcd_metrics`]), reported per command.
//!
//! Results go to a JSON file (parameters, machine, every run), a Markdown
//! table and SVG/PNG plots (throughput vs clients, latency CDF per client
//! count). Child processes (etcd, replicas) are killed on every path: drop
//! guards on errors and panics, and Ctrl-C / SIGTERM end the run through the
//! same guards.
//!
//! Two subcommands measure what throughput does not show:
//! - `dorado-bench bench failover` ([`failover`]): under a steady closed-loop write
//!   load, `kill -9` or SIGTERM the leader and measure how long writes are
//!   unavailable, repeated;
//! - `dorado-bench bench recovery` ([`recovery`]): write a history of 10^4, 10^5,
//!   10^6 commands (configurable) and time how long a recreated replica
//!   (empty local state) takes to catch up, with and without snapshots.
//!
//! Their results go to the same JSON / Markdown outputs, next to the
//! parameters and the machine.
//!
//! [`EtcdStore`]: dorado::store::EtcdStore

mod cluster;
mod driver;
mod failover;
mod http1;
mod machine;
mod recovery;
mod report;
mod systems;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dorado_core::StoreError;

use dorado_testkit::etcd_process::{EtcdProcess, EtcdProcessError, EtcdProcessOptions};

pub use failover::{FailoverArgs, FailoverKind};
pub use recovery::RecoveryArgs;
pub use report::{
    FailoverReport, FailoverSample, FailoverSummary, Goal, Machine, Parameters, ProcessCpu,
    RecoveryReport, RecoveryResult, Report, RunResult,
};

use crate::Protocol;

/// The systems `dorado-bench bench` can measure, in the order they run at each
/// client count. The replica groups run before the fenced-txn ceiling on
/// purpose: at high concurrency that ceiling pushes etcd's request latency to
/// hundreds of milliseconds, enough for an idle group's leases to lapse, and
/// the next group run would then measure an election (a view change for
/// `classic`) instead of steady state. Dorado runs before classic: classic
/// writes `N + 1` etcd entries per request and keeps etcd busier than Dorado
/// at the same concurrency. Before each group run the benchmark also waits
/// until that group is ready with a leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum SystemKind {
    /// Plain etcd puts (the etcd ceiling).
    EtcdPut,
    /// Dorado replicas over the HTTP client API, one request per command
    /// per connection (HTTP/1.1).
    Dorado,
    /// The same Dorado replicas, every client multiplexed over one HTTP/2
    /// connection per replica (h2c, prior knowledge).
    DoradoPipelined,
    /// The same Dorado replicas, every client's commands batched with the
    /// others' into one request per batch (`dorado::client::Client::batched`).
    DoradoBatched,
    /// The paper's protocol (`--protocol classic`) over the same client API.
    Classic,
    /// One fenced append `Txn` per operation (Dorado's append, unbatched).
    FencedTxn,
}

impl SystemKind {
    /// The name used in outputs.
    pub fn name(self) -> &'static str {
        match self {
            SystemKind::EtcdPut => "etcd-put",
            SystemKind::FencedTxn => "fenced-txn",
            SystemKind::Dorado => "dorado",
            SystemKind::DoradoPipelined => "dorado-pipelined",
            SystemKind::DoradoBatched => "dorado-batched",
            SystemKind::Classic => "classic",
        }
    }

    /// Every system, in the order they run.
    pub const ALL: [SystemKind; 6] = [
        SystemKind::EtcdPut,
        SystemKind::Dorado,
        SystemKind::DoradoPipelined,
        SystemKind::DoradoBatched,
        SystemKind::Classic,
        SystemKind::FencedTxn,
    ];

    /// The systems that drive the same Dorado group, one per client transport.
    pub const DORADO_CLIENTS: [SystemKind; 3] = [
        SystemKind::Dorado,
        SystemKind::DoradoPipelined,
        SystemKind::DoradoBatched,
    ];

    /// The replica protocol this system runs, if it is a replica group.
    pub fn protocol(self) -> Option<Protocol> {
        match self {
            SystemKind::Dorado | SystemKind::DoradoPipelined | SystemKind::DoradoBatched => {
                Some(Protocol::Dorado)
            }
            SystemKind::Classic => Some(Protocol::Classic),
            SystemKind::EtcdPut | SystemKind::FencedTxn => None,
        }
    }
}

/// Which replicas the Dorado clients talk to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Every client talks to the leader.
    Leader,
    /// Clients are spread round-robin over all replicas; followers forward.
    All,
}

/// HTTP client used for the Dorado clients.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum HttpClientKind {
    /// A minimal HTTP/1.1 keep-alive client: one connection per closed-loop
    /// client, no pool bookkeeping (the cheapest for the benchmark's CPU).
    Raw,
    /// `reqwest` with one shared keep-alive pool (HTTP/1.1).
    Reqwest,
}

/// Smallest `--command-size`: the JSON of a put with an empty value.
pub const MIN_COMMAND_SIZE: u32 = systems::MIN_COMMAND_SIZE as u32;
/// Largest `--command-size` (a replica's default command limit is 512 KiB).
pub const MAX_COMMAND_SIZE: u32 = 512 * 1024;

/// `dorado-bench bench` flags: a throughput comparison, or a subcommand.
#[derive(Debug, Clone, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Without a subcommand: throughput and latency of etcd-put, dorado, classic and fenced-txn at each client count.\nSubcommands: `dorado-bench bench failover --help` (write unavailability after kill -9 / SIGTERM of the leader), `dorado-bench bench recovery --help` (catch-up time of a recreated replica vs history length)."
)]
pub struct BenchArgs {
    /// Failover or recovery measurements instead of throughput.
    #[command(subcommand)]
    pub mode: Option<BenchMode>,
    /// Throughput flags.
    #[command(flatten)]
    pub throughput: ThroughputArgs,
}

/// What `dorado-bench bench` measures besides throughput.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchMode {
    /// Write unavailability after `kill -9` and SIGTERM of the leader, under a
    /// steady closed-loop write load; repeated, min/median/max per kind.
    Failover(Box<FailoverArgs>),
    /// Time for a recreated replica (empty local state) to catch up, as a
    /// function of history length, with and without snapshots.
    Recovery(Box<RecoveryArgs>),
}

/// Flags every `dorado-bench bench` mode shares.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Bytes of each command (the whole kv put JSON; the value is padded to fit).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(i64::from(MIN_COMMAND_SIZE)..=i64::from(MAX_COMMAND_SIZE)))]
    pub command_size: u32,
    /// Replicas per group to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub replicas: u32,
    /// Use this etcd (comma-separated URLs) instead of starting a throwaway single member.
    #[arg(long, value_delimiter = ',')]
    pub etcd: Option<Vec<String>>,
    /// Directory for the throwaway etcd's data (default: the system temp dir;
    /// e.g. /dev/shm puts it on tmpfs, which makes fsync free: label such runs).
    #[arg(long, value_name = "DIR", conflicts_with = "etcd")]
    pub etcd_dir: Option<PathBuf>,
    /// Number of distinct keys written (same key space for every system).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub keys: u32,
    /// `--max-inflight` passed to the replicas (appends a leader keeps in flight) [default: the replicas' default].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub max_inflight: Option<u64>,
    /// `--lease-ttl` of the replicas, in seconds.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub lease_ttl: u64,
    /// More flags for every replica (repeat; e.g. --replica-arg=--fuel=1000000).
    #[arg(long, value_name = "FLAG", allow_hyphen_values = true)]
    pub replica_arg: Vec<String>,
    /// Write the full results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a Markdown table to this file.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Draw plots (SVG and PNG) into this directory.
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
    /// Free text recorded with the results (e.g. "etcd on tmpfs").
    #[arg(long)]
    pub label: Option<String>,
    /// Keep each replica's trace (stdout) and log (stderr) in DIR/<group>/<replica>/ instead of a temp dir.
    #[arg(long, value_name = "DIR")]
    pub keep_logs: Option<PathBuf>,
    /// No progress bar (one line per finished run is still printed on stderr).
    #[arg(long)]
    pub no_progress: bool,
}

/// Flags of the throughput comparison (`dorado-bench bench` without a subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct ThroughputArgs {
    /// Closed-loop client counts to measure, comma-separated [default: 1,16,64,256; with --quick: 1,64].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub clients: Option<Vec<u32>>,
    /// Fraction of operations that are reads (linearizable kv gets; etcd gets).
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    pub read_ratio: f64,
    /// Measured time per run, e.g. 10s, 500ms, 1m [default: 10s; with --quick: 3s].
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Warm-up before each run's measurement [default: 2s; with --quick: 1s].
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// Systems to measure, comma-separated [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub systems: Option<Vec<SystemKind>>,
    /// `--snapshot-every` of the replicas (log entries).
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// Which replicas the Dorado and classic clients talk to.
    #[arg(long, value_enum, default_value_t = Target::Leader)]
    pub target: Target,
    /// HTTP client for the Dorado and classic clients.
    #[arg(long, value_enum, default_value_t = HttpClientKind::Raw)]
    pub http_client: HttpClientKind,
    /// Short comparison (all systems at 1 and 64 clients, short runs; under 90 s).
    #[arg(long)]
    pub quick: bool,
    /// Shared flags.
    #[command(flatten)]
    pub common: CommonArgs,
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number between 0 and 1"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside 0..=1"))
    }
}

/// Parse `10s`, `500ms`, `2m`, `1.5s` or a plain number of seconds; at most one hour.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let v: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 10s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "ms" => v / 1000.0,
        "s" | "sec" => v,
        "m" | "min" => v * 60.0,
        other => return Err(format!("unknown unit {other:?} in {s:?}; use ms, s or m")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("{s:?} is not a duration of zero or more"));
    }
    if seconds > 3600.0 {
        return Err(format!("{s:?} is longer than an hour"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Resolved configuration of one `dorado-bench bench` invocation.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Client counts, in run order.
    pub clients: Vec<usize>,
    /// Bytes per command.
    pub command_size: usize,
    /// Fraction of reads.
    pub read_ratio: f64,
    /// Measured time per run.
    pub duration: Duration,
    /// Warm-up per run.
    pub warmup: Duration,
    /// Dorado replicas.
    pub replicas: usize,
    /// External etcd, or `None` for a throwaway member.
    pub etcd: Option<Vec<String>>,
    /// Data directory base for the throwaway etcd.
    pub etcd_dir: Option<PathBuf>,
    /// Systems, in run order.
    pub systems: Vec<SystemKind>,
    /// Key space size.
    pub keys: usize,
    /// `--max-inflight` for the replicas.
    pub max_inflight: Option<u64>,
    /// `--lease-ttl` for the replicas.
    pub lease_ttl: u64,
    /// `--snapshot-every` for the replicas.
    pub snapshot_every: u64,
    /// Extra replica flags.
    pub replica_args: Vec<String>,
    /// Which replicas Dorado clients talk to.
    pub target: Target,
    /// HTTP client for Dorado clients.
    pub http_client: HttpClientKind,
    /// The `dorado` binary replicas run (default: this executable).
    pub binary: Option<PathBuf>,
    /// Show a progress bar on stderr (when it is a terminal).
    pub progress: bool,
    /// The quick preset was used.
    pub quick: bool,
    /// Free text recorded with the results.
    pub label: Option<String>,
    /// Keep the replicas' module, trace and log files in this directory.
    pub keep_logs: Option<PathBuf>,
}

impl BenchConfig {
    /// Resolve flags and presets.
    pub fn from_args(args: &ThroughputArgs) -> Result<Self, BenchError> {
        let default_clients: &[u32] = if args.quick {
            &[1, 64]
        } else {
            &[1, 16, 64, 256]
        };
        let clients: Vec<usize> = args
            .clients
            .as_deref()
            .unwrap_or(default_clients)
            .iter()
            .map(|&c| c as usize)
            .collect();
        if clients.is_empty() {
            return Err(BenchError::Config(
                "--clients needs at least one count".into(),
            ));
        }
        let duration = args.duration.unwrap_or(if args.quick {
            Duration::from_secs(3)
        } else {
            Duration::from_secs(10)
        });
        if duration < Duration::from_millis(100) {
            return Err(BenchError::Config(format!(
                "--duration {duration:?} is too short to measure (at least 100ms)"
            )));
        }
        let warmup = args.warmup.unwrap_or(if args.quick {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(2)
        });
        let mut systems = args
            .systems
            .clone()
            .unwrap_or_else(|| SystemKind::ALL.to_vec());
        systems.sort();
        systems.dedup();
        let mut config = BenchConfig::from_common(&args.common)?;
        config.clients = clients;
        config.read_ratio = args.read_ratio;
        config.duration = duration;
        config.warmup = warmup;
        config.systems = systems;
        config.snapshot_every = args.snapshot_every;
        config.target = args.target;
        config.http_client = args.http_client;
        config.quick = args.quick;
        Ok(config)
    }

    /// The shared flags, with the throughput-only settings at their defaults.
    pub fn from_common(args: &CommonArgs) -> Result<Self, BenchError> {
        if let Some(urls) = &args.etcd
            && (urls.is_empty() || urls.iter().any(|u| u.trim().is_empty()))
        {
            return Err(BenchError::Config(
                "--etcd needs a comma-separated list of URLs".into(),
            ));
        }
        Ok(BenchConfig {
            clients: vec![1],
            command_size: args.command_size as usize,
            read_ratio: 0.0,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            replicas: args.replicas as usize,
            etcd: args.etcd.clone(),
            etcd_dir: args.etcd_dir.clone(),
            systems: vec![SystemKind::Dorado],
            keys: args.keys as usize,
            max_inflight: args.max_inflight,
            lease_ttl: args.lease_ttl,
            snapshot_every: 10_000,
            replica_args: args.replica_arg.clone(),
            target: Target::Leader,
            http_client: HttpClientKind::Raw,
            binary: None,
            progress: !args.no_progress,
            quick: false,
            label: args.label.clone(),
            keep_logs: args.keep_logs.clone(),
        })
    }
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The flags do not describe a runnable benchmark.
    #[error("invalid benchmark configuration: {0}")]
    Config(String),
    /// The throwaway etcd could not be started.
    #[error(transparent)]
    Etcd(#[from] EtcdProcessError),
    /// An etcd request of the benchmark itself failed.
    #[error("etcd: {0}")]
    EtcdClient(#[from] etcd_client::Error),
    /// A store operation (fenced-txn setup) failed.
    #[error("etcd store: {0}")]
    Store(#[from] StoreError),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A replica process exited.
    #[error("replica {name} exited ({status}); its stderr ({path}) ends with:\n{tail}")]
    ReplicaExited {
        /// Replica id.
        name: String,
        /// Exit status.
        status: String,
        /// Its stderr file.
        path: PathBuf,
        /// The end of its stderr.
        tail: String,
    },
    /// The replicas did not become ready or elect a leader in time.
    #[error("replicas not ready within {timeout:?}: {detail}")]
    NotReady {
        /// How long we waited.
        timeout: Duration,
        /// What was missing, with log excerpts.
        detail: String,
    },
    /// An HTTP client could not be built or a control request failed.
    #[error("http: {0}")]
    Http(String),
    /// Writes stopped being acknowledged (e.g. while loading a history).
    #[error("{what}: no write acknowledged for {timeout:?}; first error: {detail}")]
    Stalled {
        /// What was being done.
        what: String,
        /// How long nothing was acknowledged.
        timeout: Duration,
        /// The first error the writers saw.
        detail: String,
    },
    /// A replica did not do what a measurement needs (e.g. no leader to kill).
    #[error("{0}")]
    Replica(String),
    /// A result file could not be written.
    #[error("cannot write {path}: {reason}")]
    Output {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Ctrl-C or SIGTERM.
    #[error("interrupted; child processes were stopped")]
    Interrupted,
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// `dorado-bench bench`: resolve flags, run, write outputs, print the table.
pub async fn main(args: BenchArgs) -> Result<Report, BenchError> {
    let (common, report) = match &args.mode {
        None => {
            let config = BenchConfig::from_args(&args.throughput)?;
            let common = &args.throughput.common;
            Outputs::from_common(common).check()?;
            (common, interruptible(run(config)).await?)
        }
        Some(BenchMode::Failover(f)) => {
            let config = failover::FailoverConfig::from_args(f)?;
            Outputs::from_common(&f.common).check()?;
            (&f.common, interruptible(failover::run(config)).await?)
        }
        Some(BenchMode::Recovery(r)) => {
            let config = recovery::RecoveryConfig::from_args(r)?;
            Outputs::from_common(&r.common).check()?;
            (&r.common, interruptible(recovery::run(config)).await?)
        }
    };
    Outputs::from_common(common).write(&report)?;
    println!("{}", report::markdown(&report));
    Ok(report)
}

/// Where results go.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// JSON file.
    pub json: Option<PathBuf>,
    /// Markdown file.
    pub markdown: Option<PathBuf>,
    /// Plot directory.
    pub plots: Option<PathBuf>,
}

impl Outputs {
    /// The outputs the flags ask for.
    pub fn from_common(common: &CommonArgs) -> Self {
        Outputs {
            json: common.json.clone(),
            markdown: common.markdown.clone(),
            plots: common.plots.clone(),
        }
    }

    /// Fail early (before a long run) if an output cannot be created.
    pub fn check(&self) -> Result<(), BenchError> {
        for path in [&self.json, &self.markdown].into_iter().flatten() {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
                && !parent.is_dir()
            {
                return Err(BenchError::Output {
                    path: path.clone(),
                    reason: format!("directory {} does not exist", parent.display()),
                });
            }
        }
        if let Some(dir) = &self.plots {
            std::fs::create_dir_all(dir).map_err(|e| BenchError::Output {
                path: dir.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Write every requested output.
    pub fn write(&self, report: &Report) -> Result<(), BenchError> {
        let write = |path: &Path, text: String| {
            std::fs::write(path, text).map_err(|e| BenchError::Output {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        };
        if let Some(path) = &self.json {
            let text = serde_json::to_string_pretty(report).map_err(|e| BenchError::Output {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            write(path, text + "\n")?;
        }
        if let Some(path) = &self.markdown {
            write(path, report::markdown(report))?;
        }
        if let Some(dir) = &self.plots {
            for problem in report::plots(report, dir) {
                // A plot that cannot be drawn (e.g. no fonts for PNG text) is
                // not worth losing the numbers for.
                eprintln!("warning: {problem}");
            }
        }
        Ok(())
    }
}

/// [`run`], ended early (with every child process stopped) by Ctrl-C or SIGTERM.
pub async fn run_interruptible(config: BenchConfig) -> Result<Report, BenchError> {
    interruptible(run(config)).await
}

/// `work`, ended early by Ctrl-C or SIGTERM (dropping it stops every child
/// process through their guards).
async fn interruptible<T>(
    work: impl std::future::Future<Output = Result<T, BenchError>>,
) -> Result<T, BenchError> {
    let interrupted = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    };
    tokio::select! {
        result = work => result,
        () = interrupted => Err(BenchError::Interrupted),
    }
}

/// What every mode sets up first: etcd, a working directory, the binary.
struct Env {
    started: String,
    machine: Machine,
    run_id: String,
    namespace: String,
    etcd_process: Option<EtcdProcess>,
    etcd_urls: Vec<String>,
    etcd_info: report::EtcdInfo,
    workdir: PathBuf,
    binary: PathBuf,
    _tempdir: tempfile::TempDir,
}

impl Env {
    async fn new(config: &BenchConfig) -> Result<Self, BenchError> {
        dorado::ensure_crypto_provider();
        let started = machine::utc_now();
        let machine = machine::describe();
        let run_id = format!("{:08x}", rand::random::<u32>());

        // etcd: the one the user named, or a throwaway member configured like
        // the one Dorado deploys (periodic compaction, sized quota).
        let (etcd_process, etcd_urls) = match &config.etcd {
            Some(urls) => (None, urls.clone()),
            None => {
                let process = EtcdProcess::start_with(EtcdProcessOptions {
                    base_dir: config.etcd_dir.clone(),
                    extra_args: report::ETCD_FLAGS.iter().map(|s| (*s).to_owned()).collect(),
                    ..EtcdProcessOptions::default()
                })
                .await?;
                let urls = process.client_urls();
                (Some(process), urls)
            }
        };
        let etcd_info = report::EtcdInfo {
            endpoints: etcd_urls.clone(),
            managed: etcd_process.is_some(),
            version: machine::etcd_version(),
            data_dir: etcd_process
                .as_ref()
                .map(|p| p.data_dir().display().to_string()),
            data_fs: etcd_process
                .as_ref()
                .and_then(|p| machine::fs_type(&p.data_dir())),
            flags: if etcd_process.is_some() {
                report::ETCD_FLAGS.iter().map(|s| (*s).to_owned()).collect()
            } else {
                Vec::new()
            },
        };
        let namespace = format!("bench-{run_id}");
        let tempdir = tempfile::Builder::new()
            .prefix("dorado-bench-")
            .tempdir()
            .map_err(io_err("create a temp dir"))?;
        let workdir = match &config.keep_logs {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(io_err(format!("create {}", dir.display())))?;
                dir.clone()
            }
            None => tempdir.path().to_owned(),
        };
        let binary = match &config.binary {
            Some(b) => b.clone(),
            None => std::env::current_exe().map_err(io_err("find the dorado executable"))?,
        };
        Ok(Env {
            started,
            machine,
            run_id,
            namespace,
            etcd_process,
            etcd_urls,
            etcd_info,
            workdir,
            binary,
            _tempdir: tempdir,
        })
    }

    /// How to start a group of `config.replicas` replicas running `protocol`.
    fn spec(
        &self,
        config: &BenchConfig,
        protocol: Protocol,
        group: &str,
        snapshot_every: u64,
    ) -> cluster::ReplicaSpec {
        let (label, prefix) = match protocol {
            Protocol::Dorado => ("replica", "r"),
            Protocol::Classic => ("classic", "c"),
        };
        cluster::ReplicaSpec {
            binary: self.binary.clone(),
            dir: self.workdir.join(group),
            count: config.replicas,
            etcd: self.etcd_urls.clone(),
            namespace: self.namespace.clone(),
            group: group.to_owned(),
            lease_ttl: config.lease_ttl,
            snapshot_every,
            max_inflight: config.max_inflight,
            extra: config.replica_args.clone(),
            protocol,
            label: label.to_owned(),
            name_prefix: prefix.to_owned(),
        }
    }

    /// The process id of the throwaway etcd, labelled for CPU samples.
    fn etcd_proc(&self) -> Option<machine::Proc> {
        self.etcd_process
            .as_ref()
            .and_then(EtcdProcess::pid)
            .map(|pid| machine::Proc::new("etcd", pid))
    }

    fn parameters(&self, config: &BenchConfig) -> Parameters {
        Parameters {
            command_line: std::env::args().collect::<Vec<_>>().join(" "),
            clients: config.clients.clone(),
            command_size: config.command_size,
            read_ratio: config.read_ratio,
            duration_s: config.duration.as_secs_f64(),
            warmup_s: config.warmup.as_secs_f64(),
            replicas: config.replicas,
            systems: config.systems.iter().map(|s| s.name().to_owned()).collect(),
            keys: config.keys,
            max_inflight: config.max_inflight,
            lease_ttl_s: config.lease_ttl,
            snapshot_every: config.snapshot_every,
            replica_args: config.replica_args.clone(),
            target: config.target,
            http_client: config.http_client,
            quick: config.quick,
            label: config.label.clone(),
        }
    }

    /// The report around `runs` (and the other modes' sections).
    fn report(self, mode: &str, config: &BenchConfig, runs: Vec<RunResult>) -> Report {
        let parameters = self.parameters(config);
        let goals = report::goals(&runs);
        Report {
            tool: "dorado-bench bench".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            mode: mode.into(),
            started_utc: self.started.clone(),
            finished_utc: machine::utc_now(),
            parameters,
            machine: self.machine.clone(),
            etcd: self.etcd_info.clone(),
            runs,
            failover: None,
            recovery: None,
            goals,
            notes: BTreeMap::new(),
        }
    }
}

/// Run the benchmark described by `config` and return the report (writes no files).
pub async fn run(config: BenchConfig) -> Result<Report, BenchError> {
    let env = Env::new(&config).await?;
    let mut progress = driver::Progress::new(
        config.progress,
        config.clients.len() * config.systems.len(),
        config.warmup + config.duration,
    );
    // One group per replica protocol measured (`dorado` and
    // `dorado-pipelined` share one); all stay up for the whole run (their
    // CPU is sampled in every run, so idle cost is visible).
    let mut groups: Vec<(Protocol, cluster::Replicas)> = Vec::new();
    for &system in &config.systems {
        let Some(protocol) = system.protocol() else {
            continue;
        };
        if groups.iter().any(|(p, _)| *p == protocol) {
            continue;
        }
        progress.note(&format!(
            "starting {} replicas of the kv module ({})",
            config.replicas,
            system.name()
        ));
        let group = match protocol {
            Protocol::Dorado => "kv",
            Protocol::Classic => "kv-classic",
        };
        let spec = env.spec(&config, protocol, group, config.snapshot_every);
        groups.push((protocol, cluster::Replicas::start(spec).await?));
    }

    let workload =
        systems::Setup::new(&config, &env.run_id, &env.etcd_urls, &env.namespace).await?;
    let mut runs = Vec::new();
    for &clients in &config.clients {
        for &system in &config.systems {
            let mut procs = Vec::new();
            procs.extend(env.etcd_proc());
            for (protocol, group) in &mut groups {
                group.check_alive()?;
                if Some(*protocol) == system.protocol() {
                    // A previous run may have overloaded etcd enough to cost
                    // the group its leader: measure steady state, not the
                    // election.
                    group.wait_ready().await?;
                } else {
                    group.refresh_leader().await;
                }
                procs.extend(group.procs());
            }
            procs.push(machine::Proc::new("bench", std::process::id()));
            let plan = driver::Plan {
                system,
                clients,
                warmup: config.warmup,
                duration: config.duration,
                read_ratio: config.read_ratio,
                keys: config.keys,
                // etcd serves /metrics on its client URL; a TLS etcd given
                // with --etcd would need a client certificate: no census.
                etcd_metrics: env
                    .etcd_urls
                    .first()
                    .filter(|u| u.starts_with("http://"))
                    .cloned(),
            };
            let group = groups
                .iter()
                .find(|(protocol, _)| Some(*protocol) == system.protocol())
                .map(|(_, g)| g);
            let result = workload.run(&plan, group, &procs, &mut progress).await?;
            progress.finished(&result);
            runs.push(result);
        }
    }
    progress.done();

    workload.cleanup(config.etcd.is_some()).await;
    for (_, group) in groups {
        group.shutdown().await;
    }
    Ok(env.report("throughput", &config, runs))
}
