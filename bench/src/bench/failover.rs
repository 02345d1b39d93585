//! `dorado-bench bench failover`: write unavailability when the leader goes away.
//!
//! For each protocol, one group of N replicas runs for the whole measurement.
//! Each repeat, for each kind (`kill -9`, SIGTERM):
//!
//! 1. wait until every replica is ready and one leads;
//! 2. start a few closed-loop writers spread over all replicas (see
//!    [`super::writer`]: a failed write is retried, same client id and seq,
//!    on the next replica) and let them run for `--steady`;
//! 3. send the signal to the leader and note the instant;
//! 4. wait (bounded by `--timeout`) for the first acknowledgement of a write
//!    whose request was sent after the signal was delivered: the time from
//!    the signal to that acknowledgement is the **write unavailability**;
//! 5. keep the load for `--after`, stop the writers, recreate the stopped
//!    replica (same id, empty working directory) and go on.
//!
//! Requests in flight at the signal that complete later are not counted as
//! "writes resumed": after SIGTERM a draining leader still answers the
//! commands it already had, which says nothing about when a new leader
//! serves. They are reported separately (`first_ack_after_signal_s`), with
//! the longest gap between consecutive acknowledgements.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::cluster::Replicas;
use super::report::{self, FailoverReport, FailoverSample, FailoverSummary};
use super::systems::put_commands;
use super::writer::{WriterConfig, Writers};
use super::{BenchConfig, BenchError, CommonArgs, Env, Report, parse_duration};
use crate::Protocol;

/// How the leader is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum FailoverKind {
    /// SIGKILL: a crash; the lease must expire before another replica leads.
    #[value(name = "kill-9", alias = "kill9")]
    Kill9,
    /// SIGTERM: a graceful stop; the leader drains and resigns.
    Sigterm,
}

impl FailoverKind {
    /// The name used in outputs.
    pub fn name(self) -> &'static str {
        match self {
            FailoverKind::Kill9 => "kill-9",
            FailoverKind::Sigterm => "sigterm",
        }
    }
}

/// `dorado-bench bench failover` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct FailoverArgs {
    /// Measurements per protocol and kind.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
    /// How to stop the leader, comma-separated.
    #[arg(long, value_delimiter = ',', value_enum, default_values_t = [FailoverKind::Kill9, FailoverKind::Sigterm])]
    pub kinds: Vec<FailoverKind>,
    /// Protocols to measure, comma-separated (classic: a view change).
    #[arg(long, value_delimiter = ',', value_enum, default_values_t = [Protocol::Dorado, Protocol::Classic])]
    pub protocols: Vec<Protocol>,
    /// Closed-loop writers during each measurement.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub clients: u32,
    /// Steady load before the leader is stopped, e.g. 1s.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub steady: Duration,
    /// Load kept after writes resumed, e.g. 500ms.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub after: Duration,
    /// Longest wait for writes to resume; beyond, the sample is reported as timed out.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Pause before a writer retries a failed write on the next replica.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    pub retry_pause: Duration,
    /// `--snapshot-every` of the replicas (log entries).
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// Shared flags.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Resolved `dorado-bench bench failover` configuration.
#[derive(Debug, Clone)]
pub(crate) struct FailoverConfig {
    pub base: BenchConfig,
    pub repeat: usize,
    pub kinds: Vec<FailoverKind>,
    pub protocols: Vec<Protocol>,
    pub clients: usize,
    pub steady: Duration,
    pub after: Duration,
    pub timeout: Duration,
    pub retry_pause: Duration,
}

impl FailoverConfig {
    pub(crate) fn from_args(args: &FailoverArgs) -> Result<Self, BenchError> {
        let mut base = BenchConfig::from_common(&args.common)?;
        base.snapshot_every = args.snapshot_every;
        base.clients = vec![args.clients as usize];
        base.duration = args.steady;
        base.warmup = Duration::ZERO;
        base.systems = Vec::new();
        let mut kinds = args.kinds.clone();
        kinds.sort();
        kinds.dedup();
        let mut protocols = args.protocols.clone();
        protocols.dedup();
        if kinds.is_empty() || protocols.is_empty() {
            return Err(BenchError::Config(
                "--kinds and --protocols need at least one value each".into(),
            ));
        }
        if args.common.replicas < 2 {
            return Err(BenchError::Config(
                "failover needs at least 2 replicas (--replicas)".into(),
            ));
        }
        if args.timeout < Duration::from_millis(100) {
            return Err(BenchError::Config("--timeout is too short".into()));
        }
        Ok(FailoverConfig {
            base,
            repeat: args.repeat as usize,
            kinds,
            protocols,
            clients: args.clients as usize,
            steady: args.steady,
            after: args.after,
            timeout: args.timeout,
            retry_pause: args.retry_pause,
        })
    }
}

/// Run the failover measurements and return the report (writes no files).
pub(crate) async fn run(config: FailoverConfig) -> Result<Report, BenchError> {
    let env = Env::new(&config.base).await?;
    let lease_ttl_granted_s = granted_ttl(&env.etcd_urls, config.base.lease_ttl).await?;
    let commands: Arc<Vec<Bytes>> = Arc::new(put_commands(&config.base));
    let mut samples = Vec::new();
    for &protocol in &config.protocols {
        let group = match protocol {
            Protocol::Dorado => "failover",
            Protocol::Classic => "failover-classic",
        };
        note(&format!(
            "starting {} replicas ({})",
            config.base.replicas,
            protocol.name()
        ));
        let spec = env.spec(&config.base, protocol, group, config.base.snapshot_every);
        let mut replicas = Replicas::start(spec).await?;
        for repeat in 1..=config.repeat {
            for &kind in &config.kinds {
                let sample = measure(&config, &env, &mut replicas, &commands, kind, repeat).await?;
                note(&format!(
                    "{:<8} {:<8} #{repeat}: writes resumed after {} (stopped {}, new leader {}, {} errors)",
                    sample.protocol,
                    sample.kind,
                    sample.unavailable_s.map_or_else(
                        || format!("> {:?}", config.timeout),
                        |v| format!("{v:.3} s")
                    ),
                    sample.stopped,
                    sample.new_leader.as_deref().unwrap_or("?"),
                    sample.errors
                ));
                samples.push(sample);
            }
        }
        replicas.shutdown().await;
    }
    let summary = summarize(&samples, &config);
    let failover = FailoverReport {
        clients: config.clients,
        repeat: config.repeat,
        steady_s: config.steady.as_secs_f64(),
        after_s: config.after.as_secs_f64(),
        timeout_s: config.timeout.as_secs_f64(),
        retry_pause_ms: config.retry_pause.as_secs_f64() * 1000.0,
        lease_ttl_s: config.base.lease_ttl,
        lease_ttl_granted_s,
        definition: "time from sending the signal to the leader until the first acknowledgement of a write whose request was sent after the signal was delivered (clients retry failed writes on the other replicas)".into(),
        samples,
        summary,
    };
    let goals = report::failover_goals(&failover);
    let mut report = env.report("failover", &config.base, Vec::new());
    report.parameters.systems = config
        .protocols
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    report.goals = goals;
    report.failover = Some(failover);
    Ok(report)
}

fn note(line: &str) {
    eprintln!("{line}");
}

/// One measurement: steady load, stop the leader, wait for writes to resume.
async fn measure(
    config: &FailoverConfig,
    env: &Env,
    replicas: &mut Replicas,
    commands: &Arc<Vec<Bytes>>,
    kind: FailoverKind,
    repeat: usize,
) -> Result<FailoverSample, BenchError> {
    replicas.check_alive()?;
    replicas.wait_ready().await?;
    replicas.settle(Duration::from_secs(10)).await;
    let leader = replicas.leader();
    let stopped = replicas.name(leader).to_owned();
    let (targets, _) = replicas.addrs();
    let protocol = replicas.protocol().name();
    let writers = Writers::start(WriterConfig {
        targets,
        start_at: None,
        clients: config.clients,
        client_prefix: format!(
            "bench-{}-fo-{protocol}-{}-{repeat}",
            env.run_id,
            kind.name()
        ),
        commands: commands.clone(),
        limit: None,
        record: true,
        retry_pause: config.retry_pause,
        request_timeout: super::systems::REQUEST_TIMEOUT,
    });
    // Steady state first: writes must be flowing before the leader goes.
    let started = Instant::now();
    tokio::time::sleep(config.steady).await;
    if writers.acked() == 0 {
        let detail = writers.first_error().unwrap_or_else(|| "none".into());
        writers.stop().await;
        return Err(BenchError::Stalled {
            what: format!("steady load before stopping the {protocol} leader"),
            timeout: started.elapsed(),
            detail,
        });
    }
    let acked_before = writers.acked();
    let load_average = super::machine::load_average();
    let (signal, signal_done) = match kind {
        FailoverKind::Kill9 => {
            let at = replicas.kill9(leader);
            (at, Instant::now())
        }
        FailoverKind::Sigterm => replicas.terminate(leader)?,
    };
    // "Sent after the signal" means after it was delivered (the `kill`
    // process has returned); durations are measured from before it was sent.
    let resumed = writers
        .first_ack_sent_after(signal_done, config.timeout)
        .await;
    if resumed.is_some() {
        tokio::time::sleep(config.after).await;
    }
    let stats = writers.stop().await;
    let end = Instant::now();
    // Whoever leads now, once the stopped leader has exited.
    replicas.reap(leader, Duration::from_secs(10)).await;
    replicas.refresh_leader().await;
    let new_leader =
        (replicas.leader() != leader).then(|| replicas.name(replicas.leader()).to_owned());
    // Bring the group back to N: recreate the stopped leader, empty.
    replicas.recreate(leader)?;

    let after_signal: Vec<_> = stats.acks.iter().filter(|a| a.acked >= signal).collect();
    let first_any = after_signal.first().map(|a| a.acked.duration_since(signal));
    let window_start = signal.checked_sub(config.steady).unwrap_or(signal);
    let mut max_gap = None::<Duration>;
    let mut previous = None;
    for a in stats.acks.iter().filter(|a| a.acked >= window_start) {
        if let Some(p) = previous {
            let gap = a.acked.duration_since(p);
            max_gap = Some(max_gap.map_or(gap, |m| m.max(gap)));
        }
        previous = Some(a.acked);
    }
    if resumed.is_none() {
        // Writes never resumed: the gap lasted at least until the end.
        let gap = end.duration_since(previous.unwrap_or(signal));
        max_gap = Some(max_gap.map_or(gap, |m| m.max(gap)));
    }
    Ok(FailoverSample {
        protocol: protocol.to_owned(),
        kind: kind.name().to_owned(),
        repeat,
        stopped,
        new_leader,
        unavailable_s: resumed.map(|a| a.acked.duration_since(signal).as_secs_f64()),
        first_ack_after_signal_s: first_any.map(|d| d.as_secs_f64()),
        max_ack_gap_s: max_gap.map(|d| d.as_secs_f64()),
        signal_delay_ms: signal_done.duration_since(signal).as_secs_f64() * 1000.0,
        acked_before,
        acked_after: after_signal.len() as u64,
        errors: stats.errors,
        first_error: stats.first_error,
        load_average,
    })
}

/// The TTL etcd actually grants for `--lease-ttl` (etcd raises TTLs below its
/// minimum, 1.5 election timeouts rounded up: 2 s with default settings).
async fn granted_ttl(etcd: &[String], ttl: u64) -> Result<u64, BenchError> {
    let mut client = etcd_client::Client::connect(etcd, None).await?;
    let lease = client
        .lease_grant(i64::try_from(ttl).unwrap_or(i64::MAX), None)
        .await?;
    let _ = client.lease_revoke(lease.id()).await;
    Ok(u64::try_from(lease.ttl()).unwrap_or(ttl).max(ttl))
}

fn summarize(samples: &[FailoverSample], config: &FailoverConfig) -> Vec<FailoverSummary> {
    let mut out = Vec::new();
    for &protocol in &config.protocols {
        for &kind in &config.kinds {
            let of: Vec<&FailoverSample> = samples
                .iter()
                .filter(|s| s.protocol == protocol.name() && s.kind == kind.name())
                .collect();
            if of.is_empty() {
                continue;
            }
            let mut values: Vec<f64> = of.iter().filter_map(|s| s.unavailable_s).collect();
            values.sort_by(f64::total_cmp);
            let timed_out = of.len() - values.len();
            // Whatever the lease: followers depose a leader that stopped
            // answering (`decide::Suspicion`), so the TTL is only a backstop.
            let goal_s = (protocol == Protocol::Dorado).then_some(match kind {
                FailoverKind::Kill9 => 0.3,
                FailoverKind::Sigterm => 0.1,
            });
            let max_s = values.last().copied();
            out.push(FailoverSummary {
                protocol: protocol.name().to_owned(),
                kind: kind.name().to_owned(),
                samples: of.len(),
                timed_out,
                min_s: values.first().copied(),
                median_s: report::median(&values),
                max_s,
                goal_s,
                met: goal_s.map(|g| timed_out == 0 && max_s.is_some_and(|m| m <= g)),
            });
        }
    }
    out
}
