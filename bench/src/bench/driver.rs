//! The closed-loop driver shared by every system.
//!
//! A system is a [`Workload`]: per-client state plus one async operation.
//! [`drive`] runs `clients` tasks, each issuing its next operation as soon as
//! the previous one is answered, records the latency of every operation that
//! completes inside the measurement window (after the warm-up) in a per-task
//! HDR histogram (merged at the end, so recording takes no lock), and samples
//! the CPU time of the given processes at the window's edges, and takes a
//! census of etcd's `/metrics` there too (what the window cost etcd).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio::time::Instant;

use dorado_testkit::etcd_metrics::EtcdCensus;

use super::machine::{self, Proc};
use super::report::{ProcessCpu, RunResult};
use super::{BenchError, SystemKind};

/// Largest latency recorded, in microseconds (longer ones are clamped).
const MAX_LATENCY_US: u64 = 60_000_000;

/// How long stragglers may take after the window closes before they are cut off.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed operation, so a broken system is not hammered.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// One operation a client issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Op {
    /// Key index in `0..keys`.
    pub key: usize,
    /// A read (`true`) or a write.
    pub read: bool,
    /// The client's write sequence number (1, 2, 3, ... over its writes).
    pub seq: u64,
}

/// A system under test.
pub(crate) trait Workload: Send + Sync + 'static {
    /// Per-client state (a connection, a client id).
    type Client: Send + 'static;
    /// State of client number `index`.
    fn client(&self, index: usize) -> Self::Client;
    /// Perform one operation; `Err` carries a short description.
    fn call(
        &self,
        client: &mut Self::Client,
        op: Op,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// One run: a system at a concurrency.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub system: SystemKind,
    pub clients: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub read_ratio: f64,
    pub keys: usize,
    /// etcd's client URL, whose `/metrics` the census reads (`None`: no census).
    pub etcd_metrics: Option<String>,
}

/// What the driver measured.
#[derive(Debug)]
pub(crate) struct Measured {
    pub histogram: Histogram<u64>,
    pub ops: u64,
    pub reads: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub cpu: Vec<ProcessCpu>,
    /// What etcd did during the window, or why that is unknown.
    pub etcd_census: Option<Result<EtcdCensus, String>>,
}

/// How long one read of etcd's `/metrics` may take.
const CENSUS_TIMEOUT: Duration = Duration::from_secs(5);

async fn census(http: &reqwest::Client, plan: &Plan) -> Option<Result<EtcdCensus, String>> {
    let url = plan.etcd_metrics.as_deref()?;
    Some(EtcdCensus::fetch(http, url, CENSUS_TIMEOUT).await)
}

struct TaskResult {
    histogram: Histogram<u64>,
    ops: u64,
    reads: u64,
    errors: u64,
    first_error: Option<String>,
}

fn new_histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| BenchError::Config(format!("latency histogram: {e:?}")))
}

/// Run `plan` against `workload`, sampling the CPU time of `procs`.
pub(crate) async fn drive<W: Workload>(
    workload: Arc<W>,
    plan: &Plan,
    procs: &[Proc],
    progress: &mut Progress,
) -> Result<Measured, BenchError> {
    let template = new_histogram()?;
    let completed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let from = start + plan.warmup;
    let until = from + plan.duration;
    let mut tasks = JoinSet::new();
    for index in 0..plan.clients {
        let workload = workload.clone();
        let completed = completed.clone();
        let mut histogram = template.clone();
        let (keys, read_ratio) = (plan.keys.max(1), plan.read_ratio);
        let mut client = workload.client(index);
        tasks.spawn(async move {
            let mut rng = SmallRng::seed_from_u64(0x5eed_0000 + index as u64);
            let (mut seq, mut ops, mut reads, mut errors) = (0u64, 0u64, 0u64, 0u64);
            let mut first_error = None;
            loop {
                let begin = Instant::now();
                if begin >= until {
                    break;
                }
                let read = read_ratio > 0.0 && rng.random::<f64>() < read_ratio;
                if !read {
                    seq += 1;
                }
                let op = Op {
                    key: rng.random_range(0..keys),
                    read,
                    seq,
                };
                let result = workload.call(&mut client, op).await;
                let end = Instant::now();
                completed.fetch_add(1, Ordering::Relaxed);
                let counted = end >= from && end <= until;
                match result {
                    Ok(()) if counted => {
                        let us = end.duration_since(begin).as_micros();
                        histogram.saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
                        ops += 1;
                        reads += u64::from(read);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        errors += u64::from(counted);
                        first_error.get_or_insert(e);
                        tokio::time::sleep(ERROR_PAUSE).await;
                    }
                }
            }
            TaskResult {
                histogram,
                ops,
                reads,
                errors,
                first_error,
            }
        });
    }

    // Follow the run on the progress bar; sample CPU and etcd's census at
    // the window's edges.
    let metrics_http = reqwest::Client::new();
    let mut census_before = None;
    let mut before = None;
    let mut last = (Instant::now(), 0u64);
    let tick = Duration::from_millis(250);
    loop {
        let now = Instant::now();
        if before.is_none() && now >= from {
            before = Some((now, machine::sample(procs)));
            census_before = census(&metrics_http, plan).await;
        }
        if now >= until {
            break;
        }
        let next = if before.is_none() {
            from.min(now + tick)
        } else {
            until.min(now + tick)
        };
        tokio::time::sleep_until(next).await;
        let done = completed.load(Ordering::Relaxed);
        let now = Instant::now();
        let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
        last = (now, done);
        progress.tick(plan, now.duration_since(start), now < from, rate);
    }
    let after = machine::sample(procs);
    let census_after = census(&metrics_http, plan).await;
    let etcd_census = match (census_before, census_after) {
        (Some(Ok(b)), Some(Ok(a))) => Some(Ok(a.since(&b))),
        (Some(Err(e)), _) | (_, Some(Err(e))) => Some(Err(e)),
        _ => None,
    };
    let (window_start, before) = before.unwrap_or_else(|| (from, vec![None; procs.len()]));
    // The time between the two CPU samples (the measured window, to a few ms).
    let window = Instant::now()
        .duration_since(window_start)
        .as_secs_f64()
        .max(1e-3);

    let mut histogram = template;
    let (mut ops, mut reads, mut errors) = (0, 0, 0);
    let mut first_error = None;
    let collect = async {
        let mut out = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            if let Ok(r) = joined {
                out.push(r);
            }
        }
        out
    };
    let results = match tokio::time::timeout(DRAIN_GRACE, collect).await {
        Ok(results) => results,
        Err(_) => {
            // Some operation hangs; what finished in the window is in the
            // tasks that already ended, the rest is lost with them.
            first_error.get_or_insert_with(|| {
                format!("some clients had not finished {DRAIN_GRACE:?} after the window closed")
            });
            Vec::new()
        }
    };
    tasks.abort_all();
    for r in results {
        let _ = histogram.add(&r.histogram);
        ops += r.ops;
        reads += r.reads;
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    let cpu = procs
        .iter()
        .zip(before.iter().zip(after.iter()))
        .map(|(p, (b, a))| {
            let cpu_s = match (b, a) {
                (Some(b), Some(a)) => Some((a - b).max(0.0)),
                _ => None,
            };
            ProcessCpu {
                process: p.name.clone(),
                pid: p.pid,
                cpu_s,
                cores: cpu_s.map(|c| c / window),
                // Filled in by `RunResult::new`, which knows the operations.
                us_per_op: None,
            }
        })
        .collect();
    Ok(Measured {
        histogram,
        ops,
        reads,
        errors,
        first_error,
        cpu,
        etcd_census,
    })
}

/// The progress bar on stderr plus one line per finished run.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: ProgressBar,
    per_run: Duration,
    runs_done: usize,
}

impl Progress {
    pub(crate) fn new(enabled: bool, runs: usize, per_run: Duration) -> Self {
        let total = per_run.as_millis() as u64 * runs as u64;
        let bar = if enabled {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{wide_bar}] ETA {eta} {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress {
            bar,
            per_run,
            runs_done: 0,
        }
    }

    /// A line above the bar (or on stderr without one).
    pub(crate) fn note(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    fn tick(&mut self, plan: &Plan, elapsed: Duration, warming: bool, rate: f64) {
        let pos = self.per_run * self.runs_done as u32 + elapsed.min(self.per_run);
        self.bar.set_position(pos.as_millis() as u64);
        self.bar.set_message(format!(
            "{} c={}{} {:.0} ops/s",
            plan.system.name(),
            plan.clients,
            if warming { " (warm-up)" } else { "" },
            rate
        ));
    }

    pub(crate) fn finished(&mut self, r: &RunResult) {
        self.runs_done += 1;
        self.bar
            .set_position((self.per_run * self.runs_done as u32).as_millis() as u64);
        let mut line = format!(
            "{:<10} clients={:<4} {:>9.0} ops/s  p50 {:.3} ms  p99 {:.3} ms",
            r.system, r.clients, r.throughput_ops_s, r.p50_ms, r.p99_ms
        );
        if r.errors > 0 {
            line.push_str(&format!(
                "  errors {} (first: {})",
                r.errors,
                r.first_error.as_deref().unwrap_or("?")
            ));
        }
        if let Some(b) = r.dorado.as_ref().and_then(|d| d.mean_batch_commands) {
            line.push_str(&format!("  batch {b:.1} cmds"));
        }
        if let Some(n) = r
            .dorado
            .as_ref()
            .and_then(|d| d.leader_changes)
            .filter(|&n| n > 0)
        {
            line.push_str(&format!("  LEADER CHANGED {n}x"));
        }
        self.note(&line);
    }

    pub(crate) fn done(&self) {
        self.bar.finish_and_clear();
    }
}
