//! Results: the JSON shape, the Markdown table and the plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use dorado_testkit::etcd_metrics::EtcdCensus;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::driver::{Measured, Plan};
use super::{HttpClientKind, SystemKind, Target};

/// Flags of the throwaway etcd: the deployed etcd's storage settings
/// (`manifests/base/etcd`), so storage behaves as in production.
pub(crate) const ETCD_FLAGS: [&str; 3] = [
    "--auto-compaction-mode=periodic",
    "--auto-compaction-retention=5m",
    "--quota-backend-bytes=4294967296",
];

/// Quantiles at which the latency CDF is recorded.
const CDF_QUANTILES: [f64; 30] = [
    0.0, 0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75,
    0.8, 0.85, 0.9, 0.925, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
];

/// Everything one `dorado-bench bench` invocation measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// `dorado-bench bench`.
    pub tool: String,
    /// Dorado version.
    pub version: String,
    /// `throughput`, `failover` or `recovery`.
    pub mode: String,
    /// Start time (UTC).
    pub started_utc: String,
    /// End time (UTC).
    pub finished_utc: String,
    /// The parameters every run shares.
    pub parameters: Parameters,
    /// The machine.
    pub machine: Machine,
    /// The etcd measured against.
    pub etcd: EtcdInfo,
    /// One entry per system and client count, in run order (throughput mode).
    pub runs: Vec<RunResult>,
    /// Failover measurements (`dorado-bench bench failover`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverReport>,
    /// Recovery measurements (`dorado-bench bench recovery`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryReport>,
    /// The goals of the DORADO-over-etcd and benchmark issues, evaluated.
    pub goals: Vec<Goal>,
    /// Free-form notes added by whoever records the results.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, String>,
}

/// Parameters of the invocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Parameters {
    /// The command line.
    pub command_line: String,
    /// Client counts.
    pub clients: Vec<usize>,
    /// Bytes per command.
    pub command_size: usize,
    /// Fraction of reads.
    pub read_ratio: f64,
    /// Measured seconds per run.
    pub duration_s: f64,
    /// Warm-up seconds per run.
    pub warmup_s: f64,
    /// Dorado replicas.
    pub replicas: usize,
    /// Systems measured.
    pub systems: Vec<String>,
    /// Key space size.
    pub keys: usize,
    /// `--max-inflight` given to the replicas (`null`: their default).
    pub max_inflight: Option<u64>,
    /// Replica lease TTL.
    pub lease_ttl_s: u64,
    /// Replica snapshot interval.
    pub snapshot_every: u64,
    /// Extra replica flags.
    pub replica_args: Vec<String>,
    /// Which replicas Dorado clients talked to.
    pub target: Target,
    /// HTTP client of the Dorado clients.
    pub http_client: HttpClientKind,
    /// The quick preset.
    pub quick: bool,
    /// Free text.
    pub label: Option<String>,
}

/// The machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// Usable CPUs.
    pub nproc: usize,
    /// CPU model from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Total memory.
    pub memory_bytes: Option<u64>,
    /// Kernel release.
    pub kernel: Option<String>,
    /// 1, 5 and 15 minute load averages when the run started (noise check).
    pub load_average_at_start: Vec<f64>,
}

/// The etcd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcdInfo {
    /// Client URLs.
    pub endpoints: Vec<String>,
    /// Started (and removed) by the benchmark.
    pub managed: bool,
    /// `etcd --version`.
    pub version: Option<String>,
    /// Data directory of a managed etcd.
    pub data_dir: Option<String>,
    /// File system of that directory (`tmpfs` means fsync is free).
    pub data_fs: Option<String>,
    /// Flags of a managed etcd beyond ports and directories.
    pub flags: Vec<String>,
}

/// CPU time one process used during a run's measurement window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessCpu {
    /// `etcd`, `replica r0 (leader)`, `bench`.
    pub process: String,
    /// Process id.
    pub pid: u32,
    /// User + system CPU seconds in the window.
    pub cpu_s: Option<f64>,
    /// `cpu_s` / window length: the cores it kept busy.
    pub cores: Option<f64>,
    /// `cpu_s` per successful operation of the window, in microseconds.
    #[serde(default)]
    pub us_per_op: Option<f64>,
}

/// Write unavailability when the leader goes away, measured repeatedly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverReport {
    /// Closed-loop writers during each measurement.
    pub clients: usize,
    /// Measurements per protocol and kind.
    pub repeat: usize,
    /// Seconds of steady load before the leader is stopped.
    pub steady_s: f64,
    /// Seconds of load kept after writes resumed.
    pub after_s: f64,
    /// Bound on waiting for writes to resume (beyond: reported as timed out).
    pub timeout_s: f64,
    /// Pause of a writer before retrying a failed write on the next replica.
    pub retry_pause_ms: f64,
    /// Replicas' lease TTL (`--lease-ttl`).
    pub lease_ttl_s: u64,
    /// The TTL etcd grants for it (etcd raises TTLs below its minimum); the
    /// `kill -9` goal is this plus 0.5 s.
    pub lease_ttl_granted_s: u64,
    /// How unavailability is measured.
    pub definition: String,
    /// Every measurement, in the order taken.
    pub samples: Vec<FailoverSample>,
    /// Min / median / max per protocol and kind.
    pub summary: Vec<FailoverSummary>,
}

/// One failover measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverSample {
    /// `dorado` or `classic`.
    pub protocol: String,
    /// `kill-9` or `sigterm`.
    pub kind: String,
    /// 1, 2, ...
    pub repeat: usize,
    /// The replica id of the stopped leader.
    pub stopped: String,
    /// The replica leading once writes resumed.
    pub new_leader: Option<String>,
    /// Seconds from the signal to the first acknowledgement of a write sent
    /// after it (`null`: writes did not resume within the timeout).
    pub unavailable_s: Option<f64>,
    /// Seconds from the signal to the first acknowledgement received after
    /// it, whenever that write was sent (in-flight writes finishing count).
    pub first_ack_after_signal_s: Option<f64>,
    /// Longest time between consecutive acknowledgements around the event.
    pub max_ack_gap_s: Option<f64>,
    /// How long sending the signal took (SIGTERM is sent by a `kill`
    /// process; the signal instant is taken before it, so this much of
    /// `unavailable_s` may be the signal's own delivery).
    pub signal_delay_ms: f64,
    /// Writes acknowledged before the signal (steady phase).
    pub acked_before: u64,
    /// Writes acknowledged after it.
    pub acked_after: u64,
    /// Failed attempts (each retried on another replica).
    pub errors: u64,
    /// The first failure the writers saw.
    pub first_error: Option<String>,
    /// 1, 5 and 15 minute load averages when the leader was stopped.
    pub load_average: Vec<f64>,
}

/// Statistics of one protocol and kind over its repeats.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverSummary {
    /// `dorado` or `classic`.
    pub protocol: String,
    /// `kill-9` or `sigterm`.
    pub kind: String,
    /// Measurements taken.
    pub samples: usize,
    /// Of which writes did not resume within the timeout.
    pub timed_out: usize,
    /// Smallest unavailability (of those that resumed).
    pub min_s: Option<f64>,
    /// Median.
    pub median_s: Option<f64>,
    /// Largest.
    pub max_s: Option<f64>,
    /// The issue's goal for this kind (Dorado only).
    pub goal_s: Option<f64>,
    /// Whether every measurement met it.
    pub met: Option<bool>,
}

/// Catch-up time of a recreated replica against history length.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveryReport {
    /// History lengths, in commands.
    pub histories: Vec<u64>,
    /// `--snapshot-every` settings measured (one group each; 0 = no snapshots).
    pub snapshot_every: Vec<u64>,
    /// Closed-loop writers used to write the history.
    pub load_clients: usize,
    /// Bound on one recovery (beyond: reported as `> timeout`).
    pub timeout_s: f64,
    /// How recovery is measured.
    pub definition: String,
    /// One entry per protocol, setting and history length.
    pub results: Vec<RecoveryResult>,
}

/// One recovery measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveryResult {
    /// `dorado` or `classic`.
    pub protocol: String,
    /// The group's `--snapshot-every` (0 = no snapshots; `null` for classic, which has none).
    pub snapshot_every: Option<u64>,
    /// Commands in the history.
    pub history_commands: u64,
    /// Log entries (Dorado batches) or instances (classic) in the history:
    /// the group's commit index.
    pub log_entries: u64,
    /// The snapshot the recreated replica restored (0: none).
    pub snapshot_index: u64,
    /// Seconds spent writing this part of the history.
    pub load_s: f64,
    /// Commands per second while writing it.
    pub load_ops_s: f64,
    /// The recreated replica: spawn to first `/healthz` 200.
    pub process_up_s: Option<f64>,
    /// Spawn to `applied_index` >= the group's commit index.
    pub caught_up_s: Option<f64>,
    /// Spawn to caught up and `/readyz` 200 (the recovery time).
    pub ready_s: Option<f64>,
    /// Not ready within the timeout.
    pub timed_out: bool,
    /// Not measured (a shorter history already exceeded the timeout).
    pub skipped: bool,
    /// 1, 5 and 15 minute load averages when the replica was recreated.
    pub load_average: Vec<f64>,
}

/// Leader-side batching during a Dorado run (from its `/metrics`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DoradoStats {
    /// Batches appended during the run (warm-up included).
    pub batches: Option<u64>,
    /// Mean commands per batch.
    pub mean_batch_commands: Option<f64>,
    /// Mean fenced append latency.
    pub mean_append_ms: Option<f64>,
    /// Leader elections during the run (warm-up included); more than 0
    /// means the run measured a failover, not steady state.
    pub leader_changes: Option<u64>,
}

/// One system at one client count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// `etcd-put`, `fenced-txn` or `dorado`.
    pub system: String,
    /// Closed-loop clients.
    pub clients: usize,
    /// Measured seconds.
    pub duration_s: f64,
    /// Warm-up seconds.
    pub warmup_s: f64,
    /// Fraction of reads requested.
    pub read_ratio: f64,
    /// Successful operations in the window.
    pub ops: u64,
    /// Of which reads.
    pub reads: u64,
    /// Failed operations in the window.
    pub errors: u64,
    /// The first failure seen (any time in the run).
    pub first_error: Option<String>,
    /// Successful operations per second.
    pub throughput_ops_s: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Mean latency.
    pub mean_ms: f64,
    /// Largest latency.
    pub max_ms: f64,
    /// CPU of each process during the window.
    pub cpu: Vec<ProcessCpu>,
    /// Batching on the group's leader (`dorado` and `classic` runs; classic
    /// never batches, so its batch is always 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dorado: Option<DoradoStats>,
    /// Latency CDF: `[latency_ms, quantile]` pairs.
    pub cdf: Vec<[f64; 2]>,
    /// What etcd itself did during the window, from its `/metrics` read at
    /// the window's edges: gRPC requests by method, streams started, stream
    /// messages, bytes received and sent, CPU. Totals; [`Self::per_op`]
    /// divides them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_census: Option<EtcdCensus>,
    /// Why there is no census (etcd's `/metrics` could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_census_error: Option<String>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl RunResult {
    pub(crate) fn new(plan: &Plan, mut m: Measured, dorado: Option<DoradoStats>) -> Self {
        for cpu in &mut m.cpu {
            cpu.us_per_op = cpu
                .cpu_s
                .filter(|_| m.ops > 0)
                .map(|s| s * 1e6 / m.ops as f64);
        }
        let (etcd_census, etcd_census_error) = match m.etcd_census {
            Some(Ok(c)) => (Some(c), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        let h: &Histogram<u64> = &m.histogram;
        let q = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                ms(h.value_at_quantile(q))
            }
        };
        let cdf = if h.is_empty() {
            Vec::new()
        } else {
            CDF_QUANTILES
                .iter()
                .map(|&quantile| [ms(h.value_at_quantile(quantile)), quantile])
                .collect()
        };
        RunResult {
            system: plan.system.name().to_owned(),
            clients: plan.clients,
            duration_s: plan.duration.as_secs_f64(),
            warmup_s: plan.warmup.as_secs_f64(),
            read_ratio: plan.read_ratio,
            ops: m.ops,
            reads: m.reads,
            errors: m.errors,
            first_error: m.first_error,
            throughput_ops_s: m.ops as f64 / plan.duration.as_secs_f64(),
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            mean_ms: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
            max_ms: if h.is_empty() { 0.0 } else { ms(h.max()) },
            cpu: m.cpu,
            dorado,
            cdf,
            etcd_census,
            etcd_census_error,
        }
    }

    /// `value` per successful operation of the window.
    pub fn per_op(&self, value: f64) -> Option<f64> {
        (self.ops > 0).then(|| value / self.ops as f64)
    }

    /// Sum of `us_per_op` over the processes whose label starts with
    /// `prefix` and ends with `suffix`.
    fn us_per_op_of(&self, prefix: &str, suffix: &str) -> Option<f64> {
        let matching: Vec<f64> = self
            .cpu
            .iter()
            .filter(|c| c.process.starts_with(prefix) && c.process.ends_with(suffix))
            .filter_map(|c| c.us_per_op)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    fn cores_of(&self, prefix: &str) -> Option<f64> {
        let matching: Vec<f64> = self
            .cpu
            .iter()
            .filter(|c| c.process.starts_with(prefix))
            .filter_map(|c| c.cores)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }
}

/// One goal, evaluated on this run's numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Goal {
    /// What is compared.
    pub name: String,
    /// The measured value.
    pub value: f64,
    /// The target.
    pub target: f64,
    /// `>=` or `<=`.
    pub comparison: String,
    /// Whether the target is met.
    pub met: bool,
}

fn find(runs: &[RunResult], system: SystemKind, clients: usize) -> Option<&RunResult> {
    runs.iter()
        .find(|r| r.system == system.name() && r.clients == clients)
}

/// The goals of issues 3, 6 and 15 that this run can evaluate: against raw
/// etcd puts 3× at the most clients and 1.5× at 64 (both Dorado clients),
/// 10× the paper's protocol, and with one client a p50 of at most 1 ms and
/// at most 1.5× the fenced Txn's (issue 15; issue 6 asked 1.7×).
pub(crate) fn goals(runs: &[RunResult]) -> Vec<Goal> {
    let mut out = Vec::new();
    let max_clients = runs
        .iter()
        .filter(|r| r.system == SystemKind::Dorado.name())
        .map(|r| r.clients)
        .max();
    for system in SystemKind::DORADO_CLIENTS {
        let max = runs
            .iter()
            .filter(|r| r.system == system.name())
            .map(|r| r.clients)
            .max();
        let targets = max.map(|c| (c, 3.0)).into_iter().chain([(64, 1.5)]);
        for (c, target) in targets {
            if let Some(d) = find(runs, system, c)
                && let Some(e) = find(runs, SystemKind::EtcdPut, c)
                && e.throughput_ops_s > 0.0
            {
                let value = d.throughput_ops_s / e.throughput_ops_s;
                out.push(Goal {
                    name: format!("{} / etcd-put throughput at {c} clients", system.name()),
                    value,
                    target,
                    comparison: ">=".into(),
                    met: value >= target,
                });
            }
        }
    }
    if let Some(c) = max_clients
        && let Some(d) = find(runs, SystemKind::Dorado, c)
        && let Some(k) = find(runs, SystemKind::Classic, c)
        && k.throughput_ops_s > 0.0
    {
        let value = d.throughput_ops_s / k.throughput_ops_s;
        out.push(Goal {
            name: format!("dorado / classic throughput at {c} clients"),
            value,
            target: 10.0,
            comparison: ">=".into(),
            met: value >= 10.0,
        });
    }
    if let Some(d) = find(runs, SystemKind::Dorado, 1) {
        if d.ops > 0 {
            out.push(Goal {
                name: "dorado p50 latency with 1 client (ms)".into(),
                value: d.p50_ms,
                target: 1.0,
                comparison: "<=".into(),
                met: d.p50_ms <= 1.0,
            });
        }
        if let Some(t) = find(runs, SystemKind::FencedTxn, 1).filter(|t| t.p50_ms > 0.0) {
            let value = d.p50_ms / t.p50_ms;
            out.push(Goal {
                name: "dorado p50 / fenced-txn p50 with 1 client".into(),
                value,
                target: 1.5,
                comparison: "<=".into(),
                met: value <= 1.5,
            });
        }
    }
    out
}

/// The CPU-sample label of the group a run measured.
fn group_label(run: &RunResult) -> &'static str {
    if run.system == SystemKind::Classic.name() {
        "classic "
    } else {
        "replica "
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

fn human_bytes(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// The failover goals: Dorado's worst case against 0.3 s (`kill -9`, whatever
/// the lease TTL) and 0.1 s (SIGTERM).
pub(crate) fn failover_goals(f: &FailoverReport) -> Vec<Goal> {
    f.summary
        .iter()
        .filter_map(|x| {
            let (target, met) = (x.goal_s?, x.met?);
            Some(Goal {
                name: format!(
                    "{} write unavailability after {} of the leader, worst of {} (s)",
                    x.protocol, x.kind, x.samples
                ),
                value: if x.timed_out > 0 {
                    f64::INFINITY
                } else {
                    x.max_s.unwrap_or(f64::INFINITY)
                },
                target,
                comparison: "<=".into(),
                met,
            })
        })
        .collect()
}

/// The recovery goal: 10^6 commands of history recovered within 3 s with snapshots.
pub(crate) fn recovery_goals(r: &RecoveryReport) -> Vec<Goal> {
    r.results
        .iter()
        .filter(|x| {
            x.protocol == "dorado"
                && x.snapshot_every.is_some_and(|e| e > 0)
                && x.history_commands >= 1_000_000
                && !x.skipped
        })
        .map(|x| {
            let value = x.ready_s.unwrap_or(f64::INFINITY);
            Goal {
                name: format!(
                    "dorado recovery of {} commands with snapshots every {} entries (s)",
                    x.history_commands,
                    x.snapshot_every.unwrap_or(0)
                ),
                value,
                target: 3.0,
                comparison: "<=".into(),
                met: value <= 3.0,
            }
        })
        .collect()
}

/// Median of a sorted, non-empty slice.
pub(crate) fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

fn loads(l: &[f64]) -> String {
    l.iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn failover_markdown(s: &mut String, f: &FailoverReport) {
    let _ = writeln!(
        s,
        "- failover: {} closed-loop writers spread over all replicas (a failed write is retried with the same client id and seq on the next replica after {} ms), {} s of steady load before the signal, lease TTL {} s (etcd grants {} s), {} repeat(s), timeout {} s",
        f.clients,
        f.retry_pause_ms,
        f.steady_s,
        f.lease_ttl_s,
        f.lease_ttl_granted_s,
        f.repeat,
        f.timeout_s
    );
    let _ = writeln!(s, "- unavailability: {}", f.definition);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| protocol | kind | samples | timed out | min s | median s | max s | goal s | verdict |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---|");
    for x in &f.summary {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            x.protocol,
            x.kind,
            x.samples,
            x.timed_out,
            secs(x.min_s),
            secs(x.median_s),
            secs(x.max_s),
            x.goal_s.map_or_else(|| "-".into(), |g| format!("{g:.1}")),
            match x.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "-",
            }
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| protocol | kind | # | stopped | new leader | unavailable s | first ack after signal s | max ack gap s | errors | acked before / after | load avg |"
    );
    let _ = writeln!(s, "|---|---|---:|---|---|---:|---:|---:|---:|---:|---|");
    for x in &f.samples {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |",
            x.protocol,
            x.kind,
            x.repeat,
            x.stopped,
            x.new_leader.as_deref().unwrap_or("-"),
            x.unavailable_s
                .map_or_else(|| format!("> {:.0}", f.timeout_s), |v| format!("{v:.3}")),
            secs(x.first_ack_after_signal_s),
            secs(x.max_ack_gap_s),
            x.errors,
            x.acked_before,
            x.acked_after,
            loads(&x.load_average)
        );
    }
}

fn recovery_markdown(s: &mut String, r: &RecoveryReport) {
    let _ = writeln!(
        s,
        "- recovery: history written by {} closed-loop writers over the client API; one follower is then killed and recreated (same id, empty working directory, new port); timeout {} s",
        r.load_clients, r.timeout_s
    );
    let _ = writeln!(s, "- recovery time: {}", r.definition);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| protocol | snapshot every | history (commands) | log entries | restored snapshot | process up s | caught up s | ready s | load ops/s | load avg |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for x in &r.results {
        let ready = if x.skipped {
            format!("skipped (> {:.0})", r.timeout_s)
        } else if x.timed_out {
            format!("> {:.0}", r.timeout_s)
        } else {
            secs(x.ready_s)
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} |",
            x.protocol,
            x.snapshot_every.map_or_else(
                || "none (classic)".into(),
                |e| if e == 0 {
                    "0 (off)".to_string()
                } else {
                    e.to_string()
                }
            ),
            x.history_commands,
            x.log_entries,
            x.snapshot_index,
            secs(x.process_up_s),
            secs(x.caught_up_s),
            ready,
            x.load_ops_s,
            loads(&x.load_average)
        );
    }
}

fn goals_markdown(s: &mut String, goals: &[Goal]) {
    if goals.is_empty() {
        return;
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Goals:");
    let _ = writeln!(s);
    for g in goals {
        let _ = writeln!(
            s,
            "- {}: {:.3} (goal {} {}) -> {}",
            g.name,
            g.value,
            g.comparison,
            g.target,
            if g.met { "met" } else { "MISSED" }
        );
    }
}

/// Per command: CPU µs of each process and etcd's census (requests by
/// method, streams, bytes, its own CPU by its own count).
fn per_command_markdown(s: &mut String, runs: &[RunResult]) {
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| system | clients | CPU µs/cmd etcd | leader | followers | bench | etcd Txn/cmd | Range/cmd | Put/cmd | other RPCs | keep-alive msgs (streams) | watch streams | etcd recv B/cmd | etcd sent B/cmd | etcd CPU µs/cmd (census) |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for run in runs {
        let label = group_label(run);
        let census = run.etcd_census.as_ref();
        let per = |v: Option<f64>, digits: usize| opt(v.and_then(|v| run.per_op(v)), digits);
        let method = |m: &str| census.map(|c| c.handled(m));
        let other = census.map(|c| {
            c.handled
                .iter()
                .filter(|(m, _)| {
                    !matches!(
                        m.as_str(),
                        "Txn" | "Range" | "Put" | "LeaseKeepAlive" | "Watch"
                    )
                })
                .fold(0.0, |sum, (_, v)| sum + v)
        });
        let keep_alive = census.map_or_else(
            || "-".to_string(),
            |c| {
                format!(
                    "{:.0} ({:.0})",
                    c.messages_received("LeaseKeepAlive"),
                    c.started("LeaseKeepAlive")
                )
            },
        );
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            run.system,
            run.clients,
            opt(run.us_per_op_of("etcd", ""), 1),
            opt(run.us_per_op_of(label, "(leader)"), 1),
            opt(run.us_per_op_of(label, "(follower)"), 1),
            opt(run.us_per_op_of("bench", ""), 1),
            per(method("Txn"), 3),
            per(method("Range"), 3),
            per(method("Put"), 3),
            opt(other, 0),
            keep_alive,
            opt(census.map(|c| c.started("Watch")), 0),
            per(census.map(|c| c.received_bytes), 0),
            per(census.map(|c| c.sent_bytes), 0),
            per(census.map(|c| c.cpu_seconds * 1e6), 1),
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Per command: CPU µs are each process's CPU seconds in the window divided by the commands completed in it (\"leader\"/\"followers\": the group measured). The etcd columns are etcd's own `/metrics` read at the window's edges (`grpc_server_handled_total` by method; \"other RPCs\": every other method; keep-alive requests received and `LeaseKeepAlive` streams started; `Watch` streams started; `etcd_network_client_grpc_{{received,sent}}_bytes_total`; `process_cpu_seconds_total`)."
    );
    let missing: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            r.etcd_census_error.as_ref().map(|e| {
                format!(
                    "- {} at {} clients: no etcd census: {e}",
                    r.system, r.clients
                )
            })
        })
        .collect();
    if !missing.is_empty() {
        let _ = writeln!(s);
        for line in missing {
            let _ = writeln!(s, "{line}");
        }
    }
}

/// The results as Markdown: context, one table, ratios, goals.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let p = &r.parameters;
    let _ = writeln!(
        s,
        "### dorado-bench bench{}, {}",
        if r.mode == "throughput" {
            String::new()
        } else {
            format!(" {}", r.mode)
        },
        r.started_utc
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "- command: `{}`", p.command_line);
    let _ = writeln!(
        s,
        "- machine: {} CPUs ({}), {} RAM, Linux {}, load average at start {}",
        r.machine.nproc,
        r.machine.cpu_model,
        r.machine
            .memory_bytes
            .map_or_else(|| "?".into(), human_bytes),
        r.machine.kernel.as_deref().unwrap_or("?"),
        r.machine
            .load_average_at_start
            .iter()
            .map(|l| format!("{l:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(
        s,
        "- etcd {}: {}, data on {}{}",
        r.etcd.version.as_deref().unwrap_or("?"),
        if r.etcd.managed {
            "single member started by the benchmark"
        } else {
            "given with --etcd"
        },
        r.etcd.data_fs.as_deref().unwrap_or("?"),
        if r.etcd.data_fs.as_deref() == Some("tmpfs") {
            " (tmpfs: fsync is free, NOT a production setting)"
        } else {
            ""
        }
    );
    if let Some(f) = &r.failover {
        let _ = writeln!(
            s,
            "- {} replicas per group, {}-byte kv puts, {} keys, max-inflight {}",
            p.replicas,
            p.command_size,
            p.keys,
            p.max_inflight
                .map_or_else(|| "default".into(), |m| m.to_string()),
        );
        failover_markdown(&mut s, f);
    }
    if let Some(rec) = &r.recovery {
        let _ = writeln!(
            s,
            "- {} replicas per group, {}-byte kv puts, {} keys, max-inflight {}",
            p.replicas,
            p.command_size,
            p.keys,
            p.max_inflight
                .map_or_else(|| "default".into(), |m| m.to_string()),
        );
        recovery_markdown(&mut s, rec);
    }
    if r.failover.is_some() || r.recovery.is_some() {
        if let Some(label) = &p.label {
            let _ = writeln!(s, "- label: {label}");
        }
        goals_markdown(&mut s, &r.goals);
        return s;
    }
    let _ = writeln!(
        s,
        "- workload: {} replicas, {}-byte kv puts, {:.0}% reads, {} keys, {} s measured after {} s warm-up per run, clients -> {:?}, {:?} HTTP client, max-inflight {}",
        p.replicas,
        p.command_size,
        p.read_ratio * 100.0,
        p.keys,
        p.duration_s,
        p.warmup_s,
        p.target,
        p.http_client,
        p.max_inflight
            .map_or_else(|| "default".into(), |m| m.to_string()),
    );
    if let Some(label) = &p.label {
        let _ = writeln!(s, "- label: {label}");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| system | clients | ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | CPU etcd | CPU leader | CPU followers | CPU bench | batch |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for run in &r.runs {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {} |",
            run.system,
            run.clients,
            run.throughput_ops_s,
            run.p50_ms,
            run.p90_ms,
            run.p99_ms,
            run.p999_ms,
            run.errors,
            opt(run.cores_of("etcd"), 2),
            opt(
                run.cpu
                    .iter()
                    .find(|c| c.process.starts_with(group_label(run))
                        && c.process.ends_with("(leader)"))
                    .and_then(|c| c.cores),
                2
            ),
            opt(
                {
                    let f: Vec<f64> = run
                        .cpu
                        .iter()
                        .filter(|c| {
                            c.process.starts_with(group_label(run))
                                && c.process.ends_with("(follower)")
                        })
                        .filter_map(|c| c.cores)
                        .collect();
                    (!f.is_empty()).then(|| f.iter().sum())
                },
                2
            ),
            opt(run.cores_of("bench"), 2),
            opt(run.dorado.as_ref().and_then(|d| d.mean_batch_commands), 1),
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "CPU columns are cores kept busy during the measured window (CPU seconds / window); \"CPU leader\" and \"CPU followers\" are those of the group measured (classic's for classic rows, Dorado's otherwise; the other group idles meanwhile and its CPU is in the JSON); \"batch\" is the leader's mean commands per appended batch."
    );
    per_command_markdown(&mut s, &r.runs);
    let clients: Vec<usize> = {
        let mut c: Vec<usize> = r.runs.iter().map(|r| r.clients).collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    let mut ratios = Vec::new();
    for &c in &clients {
        let e = find(&r.runs, SystemKind::EtcdPut, c);
        let t = find(&r.runs, SystemKind::FencedTxn, c);
        let k = find(&r.runs, SystemKind::Classic, c);
        for system in SystemKind::DORADO_CLIENTS {
            let Some(d) = find(&r.runs, system, c) else {
                continue;
            };
            let mut parts = Vec::new();
            if let Some(k) = k.filter(|k| k.throughput_ops_s > 0.0) {
                parts.push(format!(
                    "throughput {:.1}x classic",
                    d.throughput_ops_s / k.throughput_ops_s
                ));
            }
            if let Some(e) = e.filter(|e| e.throughput_ops_s > 0.0) {
                parts.push(format!(
                    "throughput {:.2}x etcd-put",
                    d.throughput_ops_s / e.throughput_ops_s
                ));
            }
            if let Some(t) = t.filter(|t| t.throughput_ops_s > 0.0) {
                parts.push(format!(
                    "{:.2}x fenced-txn",
                    d.throughput_ops_s / t.throughput_ops_s
                ));
            }
            if let Some(t) = t.filter(|t| t.p50_ms > 0.0) {
                parts.push(format!("p50 {:.2}x fenced-txn p50", d.p50_ms / t.p50_ms));
            }
            if let Some(e) = e.filter(|e| e.p50_ms > 0.0) {
                parts.push(format!("{:.2}x etcd-put p50", d.p50_ms / e.p50_ms));
            }
            if !parts.is_empty() {
                ratios.push(format!(
                    "- {c} clients: {} {}",
                    system.name(),
                    parts.join(", ")
                ));
            }
        }
    }
    if !ratios.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "Ratios (same run):");
        let _ = writeln!(s);
        for line in ratios {
            let _ = writeln!(s, "{line}");
        }
    }
    goals_markdown(&mut s, &r.goals);
    let moved: Vec<String> = r
        .runs
        .iter()
        .filter_map(|x| {
            let n = x.dorado.as_ref()?.leader_changes.filter(|&n| n > 0)?;
            Some(format!(
                "- {} at {} clients: {n} leader election(s) during the run; it measured a failover, not steady state",
                x.system, x.clients
            ))
        })
        .collect();
    if !moved.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "Leadership moved:");
        let _ = writeln!(s);
        for line in moved {
            let _ = writeln!(s, "{line}");
        }
    }
    let errors: Vec<&RunResult> = r.runs.iter().filter(|x| x.first_error.is_some()).collect();
    if !errors.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "Errors:");
        let _ = writeln!(s);
        for run in errors {
            let _ = writeln!(
                s,
                "- {} at {} clients: {} in the window; first: {}",
                run.system,
                run.clients,
                run.errors,
                run.first_error.as_deref().unwrap_or("")
            );
        }
    }
    s
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn systems_of(r: &Report) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for run in &r.runs {
        if !out.contains(&run.system) {
            out.push(run.system.clone());
        }
    }
    out
}

/// Draw `throughput.{svg,png}` and `latency-cdf-<clients>.{svg,png}` into
/// `dir`; returns a description of each plot that could not be drawn.
pub fn plots(r: &Report, dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(rec) = &r.recovery {
        for ext in ["svg", "png"] {
            let path = dir.join(format!("recovery.{ext}"));
            let result = if ext == "svg" {
                recovery_chart(rec, SVGBackend::new(&path, (800, 500)).into_drawing_area())
            } else {
                recovery_chart(
                    rec,
                    BitMapBackend::new(&path, (800, 500)).into_drawing_area(),
                )
            };
            if let Err(e) = result {
                problems.push(format!("plot {}: {e}", path.display()));
            }
        }
    }
    if let Some(f) = &r.failover {
        for ext in ["svg", "png"] {
            let path = dir.join(format!("failover.{ext}"));
            let result = if ext == "svg" {
                failover_chart(f, SVGBackend::new(&path, (800, 500)).into_drawing_area())
            } else {
                failover_chart(f, BitMapBackend::new(&path, (800, 500)).into_drawing_area())
            };
            if let Err(e) = result {
                problems.push(format!("plot {}: {e}", path.display()));
            }
        }
    }
    if r.runs.is_empty() {
        return problems;
    }
    let mut clients: Vec<usize> = r.runs.iter().map(|x| x.clients).collect();
    clients.sort_unstable();
    clients.dedup();
    for ext in ["svg", "png"] {
        let path = dir.join(format!("throughput.{ext}"));
        let result = if ext == "svg" {
            throughput_chart(r, SVGBackend::new(&path, (800, 500)).into_drawing_area())
        } else {
            throughput_chart(r, BitMapBackend::new(&path, (800, 500)).into_drawing_area())
        };
        if let Err(e) = result {
            problems.push(format!("plot {}: {e}", path.display()));
        }
        for &c in &clients {
            let path = dir.join(format!("latency-cdf-{c}.{ext}"));
            let result = if ext == "svg" {
                cdf_chart(r, c, SVGBackend::new(&path, (800, 500)).into_drawing_area())
            } else {
                cdf_chart(
                    r,
                    c,
                    BitMapBackend::new(&path, (800, 500)).into_drawing_area(),
                )
            };
            if let Err(e) = result {
                problems.push(format!("plot {}: {e}", path.display()));
            }
        }
    }
    problems
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

fn throughput_chart<DB: DrawingBackend>(
    r: &Report,
    area: DrawingArea<DB, plotters::coord::Shift>,
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE)?;
    let max_clients = r.runs.iter().map(|x| x.clients).max().unwrap_or(1) as f64;
    let max_tput = r
        .runs
        .iter()
        .map(|x| x.throughput_ops_s)
        .fold(0.0, f64::max)
        .max(1.0);
    let mut chart = ChartBuilder::on(&area)
        .caption(
            format!(
                "Throughput vs closed-loop clients ({}-byte kv puts, {} replicas)",
                r.parameters.command_size, r.parameters.replicas
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (0.8f64..max_clients * 1.25).log_scale(),
            0.0..max_tput * 1.1,
        )?;
    chart
        .configure_mesh()
        .x_desc("clients")
        .y_desc("ops/s")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (i, system) in systems_of(r).iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = r
            .runs
            .iter()
            .filter(|x| &x.system == system)
            .map(|x| (x.clients as f64, x.throughput_ops_s))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(system.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    area.present()?;
    Ok(())
}

fn cdf_chart<DB: DrawingBackend>(
    r: &Report,
    clients: usize,
    area: DrawingArea<DB, plotters::coord::Shift>,
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE)?;
    let runs: Vec<&RunResult> = r
        .runs
        .iter()
        .filter(|x| x.clients == clients && !x.cdf.is_empty())
        .collect();
    let lo = runs
        .iter()
        .flat_map(|x| x.cdf.iter().map(|p| p[0]))
        .fold(f64::INFINITY, f64::min)
        .max(0.001);
    let hi = runs
        .iter()
        .flat_map(|x| x.cdf.iter().map(|p| p[0]))
        .fold(0.0, f64::max)
        .max(lo * 10.0);
    let mut chart = ChartBuilder::on(&area)
        .caption(
            format!("Latency CDF, {clients} closed-loop clients"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("fraction of operations")
        .x_label_formatter(&|v| format!("{v}"))
        .draw()?;
    for (i, system) in systems_of(r).iter().enumerate() {
        let Some(run) = runs.iter().find(|x| &x.system == system) else {
            continue;
        };
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = run.cdf.iter().map(|p| (p[0].max(lo), p[1])).collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(system.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    area.present()?;
    Ok(())
}

/// Recovery time against history length (log-log), one line per setting.
fn recovery_chart<DB: DrawingBackend>(
    r: &RecoveryReport,
    area: DrawingArea<DB, plotters::coord::Shift>,
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE)?;
    let measured: Vec<&RecoveryResult> = r.results.iter().filter(|x| !x.skipped).collect();
    let max_h = measured
        .iter()
        .map(|x| x.history_commands)
        .max()
        .unwrap_or(10) as f64;
    let min_h = measured
        .iter()
        .map(|x| x.history_commands)
        .min()
        .unwrap_or(1) as f64;
    let value = |x: &RecoveryResult| x.ready_s.unwrap_or(r.timeout_s);
    let max_t = measured
        .iter()
        .map(|x| value(x))
        .fold(0.0, f64::max)
        .max(0.01);
    let min_t = measured
        .iter()
        .map(|x| value(x))
        .fold(f64::INFINITY, f64::min)
        .clamp(0.001, max_t);
    let mut chart = ChartBuilder::on(&area)
        .caption(
            "Recovery of a recreated replica vs history length",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (min_h * 0.7..max_h * 1.4).log_scale(),
            (min_t * 0.7..max_t * 1.5).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("history (commands, log scale)")
        .y_desc("seconds to ready (log scale)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    let mut series: Vec<(String, Option<u64>)> = Vec::new();
    for x in &measured {
        let key = (x.protocol.clone(), x.snapshot_every);
        if !series.contains(&key) {
            series.push(key);
        }
    }
    for (i, (protocol, every)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let label = match every {
            Some(0) => format!("{protocol}, no snapshots"),
            Some(e) => format!("{protocol}, snapshot every {e}"),
            None => protocol.clone(),
        };
        let points: Vec<(f64, f64)> = measured
            .iter()
            .filter(|x| &x.protocol == protocol && &x.snapshot_every == every)
            .map(|x| (x.history_commands as f64, value(x)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    area.present()?;
    Ok(())
}

/// Every failover sample, one column per protocol and kind.
fn failover_chart<DB: DrawingBackend>(
    f: &FailoverReport,
    area: DrawingArea<DB, plotters::coord::Shift>,
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE)?;
    let columns: Vec<(String, String)> = f
        .summary
        .iter()
        .map(|x| (x.protocol.clone(), x.kind.clone()))
        .collect();
    let value = |x: &FailoverSample| x.unavailable_s.unwrap_or(f.timeout_s);
    let max_t = f.samples.iter().map(value).fold(0.0, f64::max).max(0.1);
    let mut chart = ChartBuilder::on(&area)
        .caption(
            format!(
                "Write unavailability after stopping the leader (lease TTL {} s)",
                f.lease_ttl_s
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..columns.len() as f64 - 0.5, 0.0..max_t * 1.15)?;
    let names: Vec<String> = columns.iter().map(|(p, k)| format!("{p} {k}")).collect();
    chart
        .configure_mesh()
        .x_labels(columns.len().max(1))
        .x_label_formatter(&|v| {
            let i = v.round();
            if (v - i).abs() < 0.01 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("seconds until a new write is acknowledged")
        .draw()?;
    for (i, (protocol, kind)) in columns.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = f
            .samples
            .iter()
            .filter(|x| &x.protocol == protocol && &x.kind == kind)
            .map(|x| (i as f64, value(x)))
            .collect();
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 5, color.filled())),
        )?;
    }
    area.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's CPU and etcd census come out per command, in the JSON and in
    /// the Markdown's per-command table.
    #[test]
    fn cpu_and_the_etcd_census_are_reported_per_command() {
        let plan = Plan {
            system: SystemKind::DoradoPipelined,
            clients: 64,
            warmup: std::time::Duration::from_secs(1),
            duration: std::time::Duration::from_secs(2),
            read_ratio: 0.0,
            keys: 10,
            etcd_metrics: None,
        };
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        histogram.record(1500).unwrap();
        let mut census = EtcdCensus::default();
        census.handled.insert("Txn".into(), 10.0);
        census.handled.insert("Range".into(), 2.0);
        census.handled.insert("LeaseGrant".into(), 1.0);
        census.started.insert("LeaseKeepAlive".into(), 0.0);
        census
            .messages_received
            .insert("LeaseKeepAlive".into(), 24.0);
        census.received_bytes = 40_000.0;
        census.sent_bytes = 160_000.0;
        census.cpu_seconds = 0.011;
        let cpu = |process: &str, cpu_s: f64| ProcessCpu {
            process: process.into(),
            pid: 1,
            cpu_s: Some(cpu_s),
            cores: Some(cpu_s / 2.0),
            us_per_op: None,
        };
        let measured = Measured {
            histogram,
            ops: 1000,
            reads: 0,
            errors: 0,
            first_error: None,
            cpu: vec![
                cpu("etcd", 0.012),
                cpu("replica r0 (leader)", 0.026),
                cpu("replica r1 (follower)", 0.004),
                cpu("replica r2 (follower)", 0.004),
                cpu("bench", 0.011),
            ],
            etcd_census: Some(Ok(census)),
        };
        let run = RunResult::new(&plan, measured, None);
        assert_eq!(run.cpu[1].us_per_op.map(|v| v.round()), Some(26.0));
        assert_eq!(
            run.per_op(run.etcd_census.as_ref().unwrap().sent_bytes),
            Some(160.0)
        );
        let json = serde_json::to_string(&run).unwrap();
        let back: RunResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back.etcd_census, run.etcd_census);
        let mut s = String::new();
        per_command_markdown(&mut s, std::slice::from_ref(&run));
        let row = s
            .lines()
            .find(|l| l.starts_with("| dorado-pipelined |"))
            .unwrap();
        assert_eq!(
            row,
            "| dorado-pipelined | 64 | 12.0 | 26.0 | 8.0 | 11.0 | 0.010 | 0.002 | 0.000 | 1 | 24 (0) | 0 | 40 | 160 | 11.0 |"
        );
    }

    /// A run of `system` at `clients` with `ops` in 1 s and every latency
    /// `latency_us`.
    fn run_of(system: SystemKind, clients: usize, ops: u64, latency_us: u64) -> RunResult {
        let plan = Plan {
            system,
            clients,
            warmup: std::time::Duration::from_secs(1),
            duration: std::time::Duration::from_secs(1),
            read_ratio: 0.0,
            keys: 10,
            etcd_metrics: None,
        };
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        histogram.record(latency_us).unwrap();
        let measured = Measured {
            histogram,
            ops,
            reads: 0,
            errors: 0,
            first_error: None,
            cpu: Vec::new(),
            etcd_census: None,
        };
        RunResult::new(&plan, measured, None)
    }

    #[test]
    fn goals_are_issue_15s_three_times_at_the_most_clients_and_one_and_a_half_at_64() {
        let runs = [
            run_of(SystemKind::EtcdPut, 1, 1000, 700),
            run_of(SystemKind::FencedTxn, 1, 800, 1000),
            run_of(SystemKind::Dorado, 1, 800, 1400),
            run_of(SystemKind::EtcdPut, 64, 10_000, 5000),
            run_of(SystemKind::Dorado, 64, 16_000, 5000),
            run_of(SystemKind::DoradoPipelined, 64, 14_000, 5000),
            run_of(SystemKind::EtcdPut, 256, 10_000, 5000),
            run_of(SystemKind::Dorado, 256, 31_000, 5000),
            run_of(SystemKind::DoradoPipelined, 256, 29_000, 5000),
        ];
        let verdicts: Vec<(String, f64, bool)> = goals(&runs)
            .into_iter()
            .map(|g| (g.name, (g.value * 100.0).round() / 100.0, g.met))
            .collect();
        let expect = |name: &str, value: f64, met: bool| (name.to_string(), value, met);
        assert_eq!(
            verdicts,
            vec![
                expect("dorado / etcd-put throughput at 256 clients", 3.1, true),
                expect("dorado / etcd-put throughput at 64 clients", 1.6, true),
                expect(
                    "dorado-pipelined / etcd-put throughput at 256 clients",
                    2.9,
                    false
                ),
                expect(
                    "dorado-pipelined / etcd-put throughput at 64 clients",
                    1.4,
                    false
                ),
                expect("dorado p50 latency with 1 client (ms)", 1.4, false),
                expect("dorado p50 / fenced-txn p50 with 1 client", 1.4, true),
            ]
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[2.0]), Some(2.0));
        assert_eq!(median(&[1.0, 2.0, 4.0]), Some(2.0));
        assert_eq!(median(&[1.0, 2.0, 4.0, 8.0]), Some(3.0));
    }

    fn summary(kind: &str, timed_out: usize, max_s: f64, goal_s: f64) -> FailoverSummary {
        FailoverSummary {
            protocol: "dorado".into(),
            kind: kind.into(),
            samples: 3,
            timed_out,
            min_s: Some(max_s / 2.0),
            median_s: Some(max_s / 1.5),
            max_s: Some(max_s),
            goal_s: Some(goal_s),
            met: Some(timed_out == 0 && max_s <= goal_s),
        }
    }

    #[test]
    fn failover_goals_use_the_worst_sample_and_count_timeouts_as_missed() {
        let report = FailoverReport {
            clients: 4,
            repeat: 3,
            steady_s: 1.0,
            after_s: 0.5,
            timeout_s: 30.0,
            retry_pause_ms: 5.0,
            lease_ttl_s: 2,
            lease_ttl_granted_s: 2,
            definition: String::new(),
            samples: Vec::new(),
            summary: vec![
                summary("kill-9", 0, 2.3, 2.5),
                summary("sigterm", 1, 0.05, 0.2),
            ],
        };
        let goals = failover_goals(&report);
        assert_eq!(goals.len(), 2);
        assert!(goals[0].met);
        assert!((goals[0].value - 2.3).abs() < 1e-9);
        assert!(!goals[1].met);
        assert!(goals[1].value.is_infinite());
    }

    #[test]
    fn recovery_goal_needs_a_million_commands_with_snapshots() {
        let result = |every: u64, history: u64, ready: Option<f64>| RecoveryResult {
            protocol: "dorado".into(),
            snapshot_every: Some(every),
            history_commands: history,
            log_entries: history / 30,
            snapshot_index: 0,
            load_s: 1.0,
            load_ops_s: 1.0,
            process_up_s: Some(0.1),
            caught_up_s: ready,
            ready_s: ready,
            timed_out: ready.is_none(),
            skipped: false,
            load_average: Vec::new(),
        };
        let report = RecoveryReport {
            histories: vec![10_000, 1_000_000],
            snapshot_every: vec![10_000, 0],
            load_clients: 256,
            timeout_s: 60.0,
            definition: String::new(),
            results: vec![
                result(10_000, 10_000, Some(0.5)),
                result(10_000, 1_000_000, Some(2.0)),
                result(0, 1_000_000, None),
            ],
        };
        let goals = recovery_goals(&report);
        assert_eq!(goals.len(), 1, "{goals:?}");
        assert!(goals[0].met);
        let md = {
            let mut s = String::new();
            recovery_markdown(&mut s, &report);
            s
        };
        assert!(md.contains("| dorado | 0 (off) | 1000000 |"), "{md}");
        assert!(md.contains("> 60"), "{md}");
    }
}
