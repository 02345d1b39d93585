//! `dorado bench`: Dorado against raw etcd, side by side in one run.
//!
//! Every number Dorado publishes is a ratio measured in one run on one
//! machine, so this tool measures three systems against the *same* etcd, at
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
//!   exactly-once headers (one client id per client, seq 1, 2, 3, ...).
//!
//! All three share one closed-loop driver ([`driver::drive`]): each client
//! sends its next operation as soon as the previous one is answered; only
//! operations that complete inside the measurement window (after the
//! warm-up) count. The driver also samples the CPU time of every process
//! (etcd, each replica, the benchmark itself) over that window, so a result
//! says where the time went and whether the client was the bottleneck.
//!
//! Results go to a JSON file (parameters, machine, every run), a Markdown
//! table and SVG/PNG plots (throughput vs clients, latency CDF per client
//! count). Child processes (etcd, replicas) are killed on every path: drop
//! guards on errors and panics, and Ctrl-C / SIGTERM end the run through the
//! same guards.
//!
//! [`EtcdStore`]: crate::store::EtcdStore

mod cluster;
mod driver;
mod http1;
mod machine;
mod report;
mod systems;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dorado_core::StoreError;

use crate::etcd_process::{EtcdProcess, EtcdProcessError, EtcdProcessOptions};

pub use report::{Goal, Machine, Parameters, ProcessCpu, Report, RunResult};

/// The systems `dorado bench` can measure, in the order they run at each
/// client count. Dorado runs before the fenced-txn ceiling on purpose: at high
/// concurrency that ceiling pushes etcd's request latency to hundreds of
/// milliseconds, enough for the idle group's leases to lapse, and the next
/// Dorado run would then measure an election instead of steady state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum SystemKind {
    /// Plain etcd puts (the etcd ceiling).
    EtcdPut,
    /// Dorado replicas over the HTTP client API.
    Dorado,
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
        }
    }

    /// Every system, in the order they run.
    pub const ALL: [SystemKind; 3] = [
        SystemKind::EtcdPut,
        SystemKind::Dorado,
        SystemKind::FencedTxn,
    ];
}

/// Which replicas the Dorado clients talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Every client talks to the leader.
    Leader,
    /// Clients are spread round-robin over all replicas; followers forward.
    All,
}

/// HTTP client used for the Dorado clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
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

/// `dorado bench` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Closed-loop client counts to measure, comma-separated [default: 1,16,64,256; with --quick: 1,64].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub clients: Option<Vec<u32>>,
    /// Bytes of each command (the whole kv put JSON; the value is padded to fit).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(i64::from(MIN_COMMAND_SIZE)..=i64::from(MAX_COMMAND_SIZE)))]
    pub command_size: u32,
    /// Fraction of operations that are reads (linearizable kv gets; etcd gets).
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    pub read_ratio: f64,
    /// Measured time per run, e.g. 10s, 500ms, 1m [default: 10s; with --quick: 4s].
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Warm-up before each run's measurement [default: 2s; with --quick: 1s].
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// Dorado replicas to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub replicas: u32,
    /// Use this etcd (comma-separated URLs) instead of starting a throwaway single member.
    #[arg(long, value_delimiter = ',')]
    pub etcd: Option<Vec<String>>,
    /// Directory for the throwaway etcd's data (default: the system temp dir;
    /// e.g. /dev/shm puts it on tmpfs, which makes fsync free: label such runs).
    #[arg(long, value_name = "DIR", conflicts_with = "etcd")]
    pub etcd_dir: Option<PathBuf>,
    /// Systems to measure, comma-separated [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub systems: Option<Vec<SystemKind>>,
    /// Number of distinct keys written (same key space for every system).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub keys: u32,
    /// `--max-inflight` passed to the replicas (appends a leader keeps in flight) [default: the replicas' default].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub max_inflight: Option<u64>,
    /// `--lease-ttl` of the replicas, in seconds.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub lease_ttl: u64,
    /// `--snapshot-every` of the replicas (log entries).
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// More flags for every replica (repeat; e.g. --replica-arg=--fuel=1000000).
    #[arg(long, value_name = "FLAG", allow_hyphen_values = true)]
    pub replica_arg: Vec<String>,
    /// Which replicas the Dorado clients talk to.
    #[arg(long, value_enum, default_value_t = Target::Leader)]
    pub target: Target,
    /// HTTP client for the Dorado clients.
    #[arg(long, value_enum, default_value_t = HttpClientKind::Raw)]
    pub http_client: HttpClientKind,
    /// Write the full results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a Markdown table to this file.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Draw plots (SVG and PNG) into this directory.
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
    /// Short comparison (all systems at 1 and 64 clients, short runs; well under a minute).
    #[arg(long)]
    pub quick: bool,
    /// Free text recorded with the results (e.g. "etcd on tmpfs").
    #[arg(long)]
    pub label: Option<String>,
    /// Keep each replica's trace (stdout) and log (stderr) in DIR/r<N>/ instead of a temp dir.
    #[arg(long, value_name = "DIR")]
    pub keep_logs: Option<PathBuf>,
    /// No progress bar (one line per finished run is still printed on stderr).
    #[arg(long)]
    pub no_progress: bool,
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

/// Resolved configuration of one `dorado bench` invocation.
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
    pub fn from_args(args: &BenchArgs) -> Result<Self, BenchError> {
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
            Duration::from_secs(4)
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
        if let Some(urls) = &args.etcd
            && (urls.is_empty() || urls.iter().any(|u| u.trim().is_empty()))
        {
            return Err(BenchError::Config(
                "--etcd needs a comma-separated list of URLs".into(),
            ));
        }
        Ok(BenchConfig {
            clients,
            command_size: args.command_size as usize,
            read_ratio: args.read_ratio,
            duration,
            warmup,
            replicas: args.replicas as usize,
            etcd: args.etcd.clone(),
            etcd_dir: args.etcd_dir.clone(),
            systems,
            keys: args.keys as usize,
            max_inflight: args.max_inflight,
            lease_ttl: args.lease_ttl,
            snapshot_every: args.snapshot_every,
            replica_args: args.replica_arg.clone(),
            target: args.target,
            http_client: args.http_client,
            binary: None,
            progress: !args.no_progress,
            quick: args.quick,
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

/// `dorado bench`: resolve flags, run, write outputs, print the table.
pub async fn main(args: BenchArgs) -> Result<Report, BenchError> {
    let config = BenchConfig::from_args(&args)?;
    let outputs = Outputs {
        json: args.json.clone(),
        markdown: args.markdown.clone(),
        plots: args.plots.clone(),
    };
    outputs.check()?;
    let report = run_interruptible(config).await?;
    outputs.write(&report)?;
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
        result = run(config) => result,
        () = interrupted => Err(BenchError::Interrupted),
    }
}

/// Run the benchmark described by `config` and return the report (writes no files).
pub async fn run(config: BenchConfig) -> Result<Report, BenchError> {
    crate::ensure_crypto_provider();
    let started = machine::utc_now();
    let machine = machine::describe();
    let run_id = format!("{:08x}", rand::random::<u32>());

    // etcd: the one the user named, or a throwaway member configured like the
    // one Dorado deploys (periodic compaction, sized quota).
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
            std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
            dir.clone()
        }
        None => tempdir.path().to_owned(),
    };
    let binary = match &config.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(io_err("find the dorado executable"))?,
    };

    let mut progress = driver::Progress::new(
        config.progress,
        config.clients.len() * config.systems.len(),
        config.warmup + config.duration,
    );
    let mut replicas = None;
    if config.systems.contains(&SystemKind::Dorado) {
        progress.note(&format!(
            "starting {} replicas of the kv module",
            config.replicas
        ));
        replicas = Some(
            cluster::Replicas::start(cluster::ReplicaSpec {
                binary: &binary,
                dir: &workdir,
                count: config.replicas,
                etcd: &etcd_urls,
                namespace: &namespace,
                group: "kv",
                lease_ttl: config.lease_ttl,
                snapshot_every: config.snapshot_every,
                max_inflight: config.max_inflight,
                extra: &config.replica_args,
            })
            .await?,
        );
    }

    let workload = systems::Setup::new(&config, &run_id, &etcd_urls, &namespace).await?;
    let mut runs = Vec::new();
    for &clients in &config.clients {
        for &system in &config.systems {
            let mut procs = Vec::new();
            if let Some(pid) = etcd_process.as_ref().and_then(EtcdProcess::pid) {
                procs.push(machine::Proc::new("etcd", pid));
            }
            if let Some(r) = replicas.as_mut() {
                r.check_alive()?;
                if system == SystemKind::Dorado {
                    // A previous run may have overloaded etcd enough to cost
                    // the group its leader: measure steady state, not the
                    // election.
                    r.wait_ready().await?;
                } else {
                    r.refresh_leader().await;
                }
                procs.extend(r.procs());
            }
            procs.push(machine::Proc::new("bench", std::process::id()));
            let plan = driver::Plan {
                system,
                clients,
                warmup: config.warmup,
                duration: config.duration,
                read_ratio: config.read_ratio,
                keys: config.keys,
            };
            let result = workload
                .run(&plan, replicas.as_ref(), &procs, &mut progress)
                .await?;
            progress.finished(&result);
            runs.push(result);
        }
    }
    progress.done();

    workload.cleanup(config.etcd.is_some()).await;
    if let Some(r) = replicas.take() {
        r.shutdown().await;
    }
    drop(etcd_process);

    let parameters = Parameters {
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
    };
    let goals = report::goals(&runs);
    Ok(Report {
        tool: "dorado bench".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_utc: started,
        finished_utc: machine::utc_now(),
        parameters,
        machine,
        etcd: etcd_info,
        runs,
        goals,
        notes: BTreeMap::new(),
    })
}
