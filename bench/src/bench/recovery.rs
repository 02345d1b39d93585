//! `dorado-bench bench recovery`: how long a recreated replica takes to catch up,
//! against the length of the group's history.
//!
//! For each protocol and `--snapshot-every` setting, one group of N replicas
//! is started and a history is written through the real client API by many
//! closed-loop writers (exactly-once headers, retried on failure), up to
//! each length of `--history` in turn (10^4, then 10^5 more or less what is
//! missing, ...). After each length, once every replica has applied
//! everything, one follower is killed and recreated: same replica id, an
//! empty working directory, a new port (a rescheduled pod). From the instant
//! its process is spawned, the benchmark polls it and records:
//!
//! - `process_up_s`: its `/healthz` answers (process start, wasm compile);
//! - `caught_up_s`: its `/v1/status` `applied_index` reaches the group's
//!   commit index read before the kill (nothing is written meanwhile);
//! - `ready_s`: caught up and `/readyz` answers 200 — the recovery time.
//!
//! A recovery that takes longer than `--timeout` is reported as `> timeout`
//! and the longer histories of that setting are skipped (they would only
//! take longer).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::cluster::Replicas;
use super::report::{self, RecoveryReport, RecoveryResult};
use super::systems::put_commands;
use super::writer::{WriterConfig, Writers};
use super::{BenchConfig, BenchError, CommonArgs, Env, Report, machine, parse_duration};
use crate::Protocol;

/// How often the recreated replica is polled.
const POLL: Duration = Duration::from_millis(10);

/// Bound on the group applying everything after a load.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);

/// `dorado-bench bench recovery` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RecoveryArgs {
    /// History lengths to measure, in commands, comma-separated (written cumulatively).
    #[arg(long, value_delimiter = ',', default_values_t = [10_000u64, 100_000, 1_000_000], value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub history: Vec<u64>,
    /// `--snapshot-every` settings, comma-separated; one group each (0 = no snapshots).
    #[arg(long, value_delimiter = ',', default_values_t = [10_000u64, 0])]
    pub snapshot_every: Vec<u64>,
    /// Protocols to measure, comma-separated (classic has no snapshots: one group, whole-history replay).
    #[arg(long, value_delimiter = ',', value_enum, default_values_t = [Protocol::Dorado])]
    pub protocols: Vec<Protocol>,
    /// Closed-loop writers that write the history (all start at the leader).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub load_clients: u32,
    /// Longest wait for one recovery; beyond, it is reported as "> TIMEOUT".
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Abort if no write of the history is acknowledged for this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub stall_timeout: Duration,
    /// Shared flags.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Resolved `dorado-bench bench recovery` configuration.
#[derive(Debug, Clone)]
pub(crate) struct RecoveryConfig {
    pub base: BenchConfig,
    pub histories: Vec<u64>,
    pub snapshot_every: Vec<u64>,
    pub protocols: Vec<Protocol>,
    pub load_clients: usize,
    pub timeout: Duration,
    pub stall_timeout: Duration,
}

impl RecoveryConfig {
    pub(crate) fn from_args(args: &RecoveryArgs) -> Result<Self, BenchError> {
        let mut base = BenchConfig::from_common(&args.common)?;
        base.clients = vec![args.load_clients as usize];
        base.systems = Vec::new();
        let mut histories = args.history.clone();
        histories.sort_unstable();
        histories.dedup();
        let mut protocols = args.protocols.clone();
        protocols.dedup();
        if histories.is_empty() || args.snapshot_every.is_empty() || protocols.is_empty() {
            return Err(BenchError::Config(
                "--history, --snapshot-every and --protocols need at least one value each".into(),
            ));
        }
        if args.common.replicas < 2 {
            return Err(BenchError::Config(
                "recovery needs at least 2 replicas (--replicas): one is recreated while another keeps the group".into(),
            ));
        }
        base.snapshot_every = args.snapshot_every[0];
        Ok(RecoveryConfig {
            base,
            histories,
            snapshot_every: args.snapshot_every.clone(),
            protocols,
            load_clients: args.load_clients as usize,
            timeout: args.timeout,
            stall_timeout: args.stall_timeout,
        })
    }
}

fn note(line: &str) {
    eprintln!("{line}");
}

/// Run the recovery measurements and return the report (writes no files).
pub(crate) async fn run(config: RecoveryConfig) -> Result<Report, BenchError> {
    let env = Env::new(&config.base).await?;
    let commands: Arc<Vec<Bytes>> = Arc::new(put_commands(&config.base));
    let mut results = Vec::new();
    for &protocol in &config.protocols {
        // Classic has no snapshots: one group, whatever --snapshot-every says.
        let settings: Vec<Option<u64>> = match protocol {
            Protocol::Dorado => config.snapshot_every.iter().map(|&e| Some(e)).collect(),
            Protocol::Classic => vec![None],
        };
        for snapshot_every in settings {
            let group = match (protocol, snapshot_every) {
                (Protocol::Dorado, Some(e)) => format!("recovery-s{e}"),
                _ => "recovery-classic".to_owned(),
            };
            note(&format!(
                "starting {} replicas ({group})",
                config.base.replicas
            ));
            let spec = env.spec(&config.base, protocol, &group, snapshot_every.unwrap_or(0));
            let mut replicas = Replicas::start(spec).await?;
            let mut written = 0u64;
            let mut exceeded = false;
            for (phase, &history) in config.histories.iter().enumerate() {
                let name = protocol.name();
                if exceeded {
                    results.push(RecoveryResult {
                        protocol: name.into(),
                        snapshot_every,
                        history_commands: history,
                        log_entries: 0,
                        snapshot_index: 0,
                        load_s: 0.0,
                        load_ops_s: 0.0,
                        process_up_s: None,
                        caught_up_s: None,
                        ready_s: None,
                        timed_out: false,
                        skipped: true,
                        load_average: machine::load_average(),
                    });
                    continue;
                }
                replicas.wait_ready().await?;
                let (load_s, load_ops_s) = load(
                    &config,
                    &env,
                    &replicas,
                    &commands,
                    history - written,
                    &format!("{group}-p{phase}"),
                )
                .await?;
                written = history;
                let mut result = recover(&config, &mut replicas).await?;
                result.protocol = name.into();
                result.snapshot_every = snapshot_every;
                result.history_commands = history;
                result.load_s = load_s;
                result.load_ops_s = load_ops_s;
                note(&format!(
                    "{name} snapshot-every {}: history {history} commands ({} entries): recovered in {} (restored snapshot {}, up {}, caught up {})",
                    snapshot_every.map_or_else(|| "-".into(), |e| e.to_string()),
                    result.log_entries,
                    result.ready_s.map_or_else(
                        || format!("> {:?}", config.timeout),
                        |v| format!("{v:.3} s")
                    ),
                    result.snapshot_index,
                    result
                        .process_up_s
                        .map_or_else(|| "-".into(), |v| format!("{v:.3} s")),
                    result
                        .caught_up_s
                        .map_or_else(|| "-".into(), |v| format!("{v:.3} s")),
                ));
                exceeded = result.timed_out;
                results.push(result);
            }
            replicas.shutdown().await;
        }
    }
    let recovery = RecoveryReport {
        histories: config.histories.clone(),
        snapshot_every: config.snapshot_every.clone(),
        load_clients: config.load_clients,
        timeout_s: config.timeout.as_secs_f64(),
        definition: "from spawning the recreated replica's process (empty working directory, same replica id) until its applied_index reaches the group's commit index and /readyz answers 200".into(),
        results,
    };
    let goals = report::recovery_goals(&recovery);
    let mut report = env.report("recovery", &config.base, Vec::new());
    report.parameters.systems = config
        .protocols
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    report.goals = goals;
    report.recovery = Some(recovery);
    Ok(report)
}

/// Write `count` more commands through the client API; returns the time it
/// took and the rate.
async fn load(
    config: &RecoveryConfig,
    env: &Env,
    replicas: &Replicas,
    commands: &Arc<Vec<Bytes>>,
    count: u64,
    phase: &str,
) -> Result<(f64, f64), BenchError> {
    if count == 0 {
        return Ok((0.0, 0.0));
    }
    let (targets, leader) = replicas.addrs();
    let started = Instant::now();
    let mut writers = Writers::start(WriterConfig {
        targets,
        start_at: Some(leader),
        clients: config
            .load_clients
            .min(usize::try_from(count).unwrap_or(usize::MAX)),
        client_prefix: format!("bench-{}-{phase}", env.run_id),
        commands: commands.clone(),
        limit: Some(count),
        record: false,
        retry_pause: Duration::from_millis(20),
        request_timeout: super::systems::REQUEST_TIMEOUT,
    });
    let mut last_note = Instant::now();
    loop {
        if writers.join(Duration::from_millis(500)).await {
            break;
        }
        let last = writers.last_ack().unwrap_or(started);
        if last.elapsed() > config.stall_timeout {
            let detail = writers.first_error().unwrap_or_else(|| "none".into());
            writers.stop().await;
            return Err(BenchError::Stalled {
                what: format!("writing the history ({phase})"),
                timeout: config.stall_timeout,
                detail,
            });
        }
        if last_note.elapsed() >= Duration::from_secs(10) {
            last_note = Instant::now();
            let done = writers.acked();
            note(&format!(
                "  writing history: {done}/{count} commands, {:.0}/s, {} errors",
                done as f64 / started.elapsed().as_secs_f64().max(1e-3),
                writers.errors()
            ));
        }
    }
    let stats = writers.stop().await;
    let seconds = started.elapsed().as_secs_f64();
    if stats.acked < count {
        return Err(BenchError::Stalled {
            what: format!(
                "writing the history ({phase}): {} of {count} acknowledged",
                stats.acked
            ),
            timeout: started.elapsed(),
            detail: stats.first_error.unwrap_or_else(|| "none".into()),
        });
    }
    Ok((seconds, stats.acked as f64 / seconds.max(1e-3)))
}

/// Kill a follower, recreate it empty and time its catch-up.
async fn recover(
    config: &RecoveryConfig,
    replicas: &mut Replicas,
) -> Result<RecoveryResult, BenchError> {
    if !replicas.settle(SETTLE_TIMEOUT).await {
        note("warning: the replicas had not all applied the history; measuring anyway");
    }
    replicas.refresh_leader().await;
    let leader = replicas.leader();
    let target = replicas
        .status(leader)
        .await
        .ok_or_else(|| {
            BenchError::Replica(format!(
                "leader {} did not answer /v1/status",
                replicas.name(leader)
            ))
        })?
        .commit_index;
    let follower = (0..replicas.len())
        .find(|&i| i != leader)
        .ok_or_else(|| BenchError::Replica("no follower to recreate".into()))?;
    replicas.kill9(follower);
    let load_average = machine::load_average();
    let spawned = replicas.recreate(follower)?;
    let deadline = spawned + config.timeout;
    let (mut up, mut caught, mut ready) = (None, None, None);
    let mut snapshot_index = 0;
    loop {
        if let Some(e) = replicas.has_exited(follower) {
            return Err(e);
        }
        if up.is_none() && replicas.healthy(follower).await {
            up = Some(spawned.elapsed());
        }
        if up.is_some()
            && caught.is_none()
            && let Some(s) = replicas.status(follower).await
            && s.applied_index >= target
        {
            caught = Some(spawned.elapsed());
            snapshot_index = s.snapshot_index;
        }
        if caught.is_some() && replicas.is_ready(follower).await {
            ready = Some(spawned.elapsed());
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let timed_out = ready.is_none();
    if timed_out {
        if let Some(s) = replicas.status(follower).await {
            snapshot_index = s.snapshot_index;
            note(&format!(
                "  not ready after {:?}: applied {} of {target}",
                config.timeout, s.applied_index
            ));
        }
        // It would only slow down what comes next.
        replicas.kill9(follower);
    }
    Ok(RecoveryResult {
        protocol: String::new(),
        snapshot_every: None,
        history_commands: 0,
        log_entries: target,
        snapshot_index,
        load_s: 0.0,
        load_ops_s: 0.0,
        process_up_s: up.map(|d| d.as_secs_f64()),
        caught_up_s: caught.map(|d| d.as_secs_f64()),
        ready_s: ready.map(|d| d.as_secs_f64()),
        timed_out,
        skipped: false,
        load_average,
    })
}
