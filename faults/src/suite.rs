//! Running schedules and summarising them.
//!
//! One schedule: start a world, open the bank's accounts, run the clients
//! while the nemesis performs the plan, heal everything, stop the clients,
//! prove the groups still accept writes, wait until every replica of a group
//! has applied the same index with the same hash, read the final state, and
//! check everything (see [`crate::verify`] and [`crate::checker`]).
//!
//! Every anomaly is printed with the schedule's seed and the command that
//! replays it, and the schedule's files (traces, replica logs, etcd logs,
//! timeline) are kept for inspection.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dorado::wire::Role;
use dorado_testkit::examples::Reply;
use tokio::time::Instant;

use crate::checker::{self, Budget, Completion, KvOp, KvResult, Operation};
use crate::nemesis::{self, FaultStats};
use crate::plan::{BANK, FaultKind, GROUPS, KV, Plan, Profile, REPLICAS, schedule_seed};
use crate::verify::{self, Anomaly, AnomalyKind};
use crate::workload::{self, Recorder, SharedRecorder, WriteOutcome};
use crate::world::{World, lock, poll};

/// Default client time of a schedule in short mode (CI).
pub const SHORT_WORKLOAD: Duration = Duration::from_secs(20);
/// Default client time of a schedule in long mode.
pub const LONG_WORKLOAD: Duration = Duration::from_secs(40);

/// How to run the suite.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    /// Executable with the `replica` subcommand.
    pub replica_bin: PathBuf,
    /// Run exactly these seeds (replay), if set.
    pub seeds: Option<Vec<u64>>,
    /// Base seed for derived schedule seeds.
    pub base_seed: u64,
    /// Stop after this many schedules.
    pub schedules: Option<u64>,
    /// Stop starting schedules after this much time.
    pub time_limit: Option<Duration>,
    /// Schedule profile.
    pub profile: Profile,
    /// Client time per schedule.
    pub workload: Duration,
    /// Stop at the first schedule with an anomaly.
    pub stop_on_anomaly: bool,
    /// Where to keep the files of failed schedules.
    pub keep_dir: PathBuf,
    /// Keep the files of every schedule, not only failed ones.
    pub keep_all: bool,
    /// How to rebuild this binary in a replay command (`cargo run ...`).
    pub replay_prefix: String,
}

impl SuiteConfig {
    /// The command that replays `seed` exactly as this run ran it.
    pub fn replay_command(&self, seed: u64) -> String {
        format!(
            "{} -- --seed {seed} --profile {} --workload-secs {}",
            self.replay_prefix,
            self.profile,
            self.workload.as_secs()
        )
    }
}

impl SuiteConfig {
    /// The same replay through the test harness.
    pub fn test_replay_command(&self, seed: u64) -> String {
        format!(
            "DORADO_FAULTS_SEED={seed} DORADO_FAULTS_PROFILE={} DORADO_FAULTS_WORKLOAD_SECS={} cargo test -p dorado-faults{} --test short -- --nocapture",
            self.profile,
            self.workload.as_secs(),
            if cfg!(feature = "bug-unfenced") {
                " --features bug-unfenced"
            } else {
                ""
            }
        )
    }
}

/// The `cargo run` prefix that rebuilds the suite as this build was built.
pub fn default_replay_prefix() -> String {
    if cfg!(feature = "bug-unfenced") {
        "cargo run -p dorado-faults --features bug-unfenced".into()
    } else {
        "cargo run -p dorado-faults --release".into()
    }
}

/// What was exercised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// kv operations in the checked history (completed).
    pub kv_ok: usize,
    /// kv operations with unknown outcome.
    pub kv_info: usize,
    /// kv writes answered "not applied" and given up.
    pub kv_fail: usize,
    /// kv reads that got no answer (not in the history).
    pub kv_reads_failed: usize,
    /// Bank commands acknowledged.
    pub bank_ok: usize,
    /// Bank commands with unknown outcome or given up.
    pub bank_not_ok: usize,
    /// Bank total reads checked.
    pub bank_reads: usize,
    /// Commands found applied in traces (both groups).
    pub applied: usize,
    /// Acknowledged commands verified in traces.
    pub acked_verified: usize,
    /// Acknowledged commands no trace covers.
    pub acked_unverifiable: usize,
    /// Trace lines read.
    pub trace_lines: usize,
    /// kv keys with no verdict (search budget exceeded).
    pub kv_keys_undecided: usize,
}

impl OpCounts {
    fn add(&mut self, o: &OpCounts) {
        self.kv_ok += o.kv_ok;
        self.kv_info += o.kv_info;
        self.kv_fail += o.kv_fail;
        self.kv_reads_failed += o.kv_reads_failed;
        self.bank_ok += o.bank_ok;
        self.bank_not_ok += o.bank_not_ok;
        self.bank_reads += o.bank_reads;
        self.applied += o.applied;
        self.acked_verified += o.acked_verified;
        self.acked_unverifiable += o.acked_unverifiable;
        self.trace_lines += o.trace_lines;
        self.kv_keys_undecided += o.kv_keys_undecided;
    }

    /// Operations whose outcome was checked (kv history + bank commands and reads).
    pub fn checked(&self) -> usize {
        self.kv_ok + self.kv_info + self.kv_fail + self.bank_ok + self.bank_not_ok + self.bank_reads
    }
}

/// The result of one schedule.
#[derive(Debug, Clone)]
pub struct ScheduleReport {
    /// Its seed.
    pub seed: u64,
    /// Faults.
    pub faults: FaultStats,
    /// Operations.
    pub ops: OpCounts,
    /// Protocol anomalies.
    pub anomalies: Vec<Anomaly>,
    /// Problems of the harness (the schedule proves nothing).
    pub harness_errors: Vec<String>,
    /// How long it took.
    pub elapsed: Duration,
    /// Where its files were kept (failures only).
    pub kept: Option<PathBuf>,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Schedules run.
    pub schedules: usize,
    /// Faults, all schedules.
    pub faults: FaultStats,
    /// Operations, all schedules.
    pub ops: OpCounts,
    /// Anomalies by kind.
    pub anomalies: BTreeMap<AnomalyKind, usize>,
    /// Failed schedules: (seed, replay command, first lines of the report).
    pub failures: Vec<(u64, String, String)>,
    /// Schedules the harness could not run properly.
    pub harness_failures: Vec<(u64, String)>,
    /// Whether network namespaces were used.
    pub netns: Result<(), String>,
    /// Wall time.
    pub elapsed: Duration,
}

impl Summary {
    /// Anomalies found, all kinds.
    pub fn anomaly_count(&self) -> usize {
        self.anomalies.values().sum()
    }

    /// True when nothing went wrong.
    pub fn passed(&self) -> bool {
        self.anomaly_count() == 0 && self.harness_failures.is_empty()
    }

    /// The human summary.
    pub fn render(&self, cfg: &SuiteConfig) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "=== dorado-faults summary");
        let _ = writeln!(
            s,
            "schedules run:      {} ({} profile, {}s of clients each, {:.1} min in all)",
            self.schedules,
            cfg.profile,
            cfg.workload.as_secs(),
            self.elapsed.as_secs_f64() / 60.0
        );
        let _ = writeln!(
            s,
            "network namespaces: {}",
            match &self.netns {
                Ok(()) => "yes (cut-from-etcd injected)".to_string(),
                Err(e) => format!("no ({e}); cut-from-etcd skipped"),
            }
        );
        let _ = writeln!(s, "faults injected:");
        for k in FaultKind::ALL {
            let n = self.faults.injected.get(&k).copied().unwrap_or(0);
            let skipped = self
                .faults
                .skipped
                .get(&k)
                .map(|(n, why)| format!(", skipped {n} ({why})"))
                .unwrap_or_default();
            let _ = writeln!(s, "  {:<18} {n}{skipped}", k.name());
        }
        let o = &self.ops;
        let _ = writeln!(s, "operations checked: {}", o.checked());
        let _ = writeln!(
            s,
            "  kv history:       {} ok, {} unknown outcome, {} not applied (+{} reads unanswered, not in history){}",
            o.kv_ok,
            o.kv_info,
            o.kv_fail,
            o.kv_reads_failed,
            if o.kv_keys_undecided > 0 {
                format!(
                    "; {} key histories UNDECIDED (search budget)",
                    o.kv_keys_undecided
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            s,
            "  bank:             {} commands acknowledged, {} unknown/given up, {} total reads",
            o.bank_ok, o.bank_not_ok, o.bank_reads
        );
        let _ = writeln!(
            s,
            "  traces:           {} lines, {} commands applied, {} acknowledgements verified, {} not coverable",
            o.trace_lines, o.applied, o.acked_verified, o.acked_unverifiable
        );
        let _ = writeln!(s, "anomalies found:    {}", self.anomaly_count());
        for (k, n) in &self.anomalies {
            let _ = writeln!(s, "  {:<26} {n}", k.name());
        }
        for (seed, replay, first) in &self.failures {
            let _ = writeln!(s, "  FAILED seed {seed}: {first}\n    replay: {replay}");
        }
        if !self.harness_failures.is_empty() {
            let _ = writeln!(s, "harness errors:     {}", self.harness_failures.len());
            for (seed, e) in &self.harness_failures {
                let _ = writeln!(
                    s,
                    "  seed {seed}: {e}\n    replay: {}",
                    cfg.replay_command(*seed)
                );
            }
        }
        s
    }
}

/// Run schedules per `cfg`, printing progress and failures as they happen.
pub async fn run(cfg: &SuiteConfig) -> Summary {
    let started = Instant::now();
    let mut summary = Summary {
        schedules: 0,
        faults: FaultStats::default(),
        ops: OpCounts::default(),
        anomalies: BTreeMap::new(),
        failures: Vec::new(),
        harness_failures: Vec::new(),
        netns: dorado_testkit::netns::available(),
        elapsed: Duration::ZERO,
    };
    println!(
        "dorado-faults: profile {}, {}s of clients per schedule, base seed {}, network namespaces: {}",
        cfg.profile,
        cfg.workload.as_secs(),
        cfg.base_seed,
        match &summary.netns {
            Ok(()) => "yes".to_string(),
            Err(e) => format!("no ({e})"),
        }
    );
    let mut i: u64 = 0;
    loop {
        let seed = match &cfg.seeds {
            Some(seeds) => match seeds.get(i as usize) {
                Some(s) => *s,
                None => break,
            },
            None => {
                if cfg.schedules.is_some_and(|n| i >= n) {
                    break;
                }
                if cfg.time_limit.is_some_and(|t| started.elapsed() >= t) {
                    break;
                }
                if cfg.schedules.is_none() && cfg.time_limit.is_none() && i >= 1 {
                    break;
                }
                schedule_seed(cfg.base_seed, i)
            }
        };
        i += 1;
        let report = run_schedule(cfg, seed).await;
        summary.schedules += 1;
        summary.faults.add(&report.faults);
        summary.ops.add(&report.ops);
        let injected: Vec<String> = report
            .faults
            .injected
            .iter()
            .map(|(k, n)| format!("{k}×{n}"))
            .collect();
        println!(
            "schedule {} seed {seed}: {:.1}s, faults [{}], kv {} ops, bank {} ops, {} anomalies{}",
            summary.schedules,
            report.elapsed.as_secs_f64(),
            injected.join(" "),
            report.ops.kv_ok + report.ops.kv_info + report.ops.kv_fail,
            report.ops.bank_ok + report.ops.bank_not_ok + report.ops.bank_reads,
            report.anomalies.len(),
            if report.harness_errors.is_empty() {
                String::new()
            } else {
                format!(", {} HARNESS ERRORS", report.harness_errors.len())
            }
        );
        for a in &report.anomalies {
            *summary.anomalies.entry(a.kind).or_default() += 1;
        }
        if !report.anomalies.is_empty() {
            let first = report.anomalies[0].to_string();
            let first: String = first
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(300)
                .collect();
            summary
                .failures
                .push((seed, cfg.replay_command(seed), first));
        }
        if !report.harness_errors.is_empty() {
            summary
                .harness_failures
                .push((seed, report.harness_errors.join("; ")));
        }
        if cfg.stop_on_anomaly && !report.anomalies.is_empty() {
            break;
        }
    }
    summary.elapsed = started.elapsed();
    summary
}

/// Run one schedule.
pub async fn run_schedule(cfg: &SuiteConfig, seed: u64) -> ScheduleReport {
    let started = Instant::now();
    let plan = Plan::generate(seed, cfg.profile, cfg.workload);
    let dir = match tempfile::Builder::new()
        .prefix(&format!("dorado-faults-{seed}-"))
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => {
            return ScheduleReport {
                seed,
                faults: FaultStats::default(),
                ops: OpCounts::default(),
                anomalies: Vec::new(),
                harness_errors: vec![format!("cannot create a temp dir: {e}")],
                elapsed: started.elapsed(),
                kept: None,
            };
        }
    };
    let mut report = ScheduleReport {
        seed,
        faults: FaultStats::default(),
        ops: OpCounts::default(),
        anomalies: Vec::new(),
        harness_errors: Vec::new(),
        elapsed: Duration::ZERO,
        kept: None,
    };
    let mut timeline = String::new();
    match World::start(&plan, &cfg.replica_bin, dir.path()).await {
        Err(e) => report
            .harness_errors
            .push(format!("could not start the world: {e:#}")),
        Ok(world) => {
            exercise(&world, &plan, &mut report).await;
            if let Ok(errors) = world.harness_errors.lock() {
                report.harness_errors.extend(errors.iter().cloned());
            }
            if let Ok(t) = world.timeline.lock() {
                for (at, what) in t.iter() {
                    let _ = writeln!(timeline, "{:>9.3}s  {what}", at.as_secs_f64());
                }
            }
            if !report.anomalies.is_empty() || !report.harness_errors.is_empty() || cfg.keep_all {
                let etcd_dir = dir.path().join("etcd-logs");
                let _ = std::fs::create_dir_all(&etcd_dir);
                for (m, log) in world.etcd_logs.iter().enumerate() {
                    let _ = std::fs::copy(log, etcd_dir.join(format!("m{m}.log")));
                }
            }
            drop(world);
        }
    }
    report.elapsed = started.elapsed();
    let failed = !report.anomalies.is_empty() || !report.harness_errors.is_empty();
    if failed || cfg.keep_all {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "schedule seed {seed} ({} profile) {}; replay with:\n  {}",
            cfg.profile,
            if failed { "FAILED" } else { "passed" },
            cfg.replay_command(seed)
        );
        let _ = writeln!(text, "  or: {}", cfg.test_replay_command(seed));
        for a in &report.anomalies {
            let _ = writeln!(text, "ANOMALY {a}");
        }
        for e in &report.harness_errors {
            let _ = writeln!(text, "HARNESS ERROR {e}");
        }
        let _ = writeln!(text, "timeline:\n{timeline}");
        let _ = writeln!(text, "plan: {plan:#?}");
        let _ = std::fs::write(dir.path().join("REPORT.txt"), &text);
        let target = cfg.keep_dir.join(format!("seed-{seed}"));
        let _ = std::fs::create_dir_all(&cfg.keep_dir);
        let kept = dir.keep();
        let kept = match std::fs::rename(&kept, &target) {
            Ok(()) => target,
            Err(_) => kept,
        };
        if failed {
            println!("{}", text.split("timeline:").next().unwrap_or(""));
        }
        println!("files of seed {seed} kept in {}", kept.display());
        report.kept = Some(kept);
    }
    report
}

/// The part of a schedule that needs a running world.
async fn exercise(world: &World, plan: &Plan, report: &mut ScheduleReport) {
    let recorder: SharedRecorder = Arc::new(Mutex::new(Recorder::default()));
    if let Err(e) = workload::bank_setup(world, plan, &recorder).await {
        report.harness_errors.push(e);
        return;
    }
    world.log("bank accounts opened");
    let stop = AtomicBool::new(false);
    let clients = async {
        let kv = plan.kv_clients.iter().enumerate().map(|(n, c)| {
            workload::kv_client(world, n, c.clone(), plan.kv_keys, &stop, recorder.clone())
        });
        let bank =
            plan.bank_clients.iter().enumerate().map(|(n, seed)| {
                workload::bank_client(world, n, *seed, plan, &stop, recorder.clone())
            });
        futures::future::join(
            futures::future::join_all(kv),
            futures::future::join_all(bank),
        )
        .await;
    };
    let faults_then_heal = async {
        let (stats, ()) =
            futures::future::join(nemesis::run(world, plan), tokio::time::sleep(plan.workload))
                .await;
        world.heal_all().await;
        // Every replica should be ready again soon; wait for all of them at
        // once (a group that cannot recover is reported by the checks below).
        let ready = GROUPS.iter().enumerate().flat_map(|(g, group)| {
            (0..REPLICAS).map(move |i| async move {
                if !world.wait_ready(g, i, Duration::from_secs(60)).await {
                    world.log(format!("{group}-{i} not ready 60s after healing"));
                }
            })
        });
        futures::future::join_all(ready).await;
        world.log("stopping clients");
        stop.store(true, Ordering::Relaxed);
        stats
    };
    let (_, stats) = futures::future::join(clients, faults_then_heal).await;
    report.faults = stats;
    world.log("clients stopped");

    let mut anomalies = Vec::new();
    let mut final_index = [0u64; 2];
    for (g, group) in GROUPS.iter().enumerate() {
        // Liveness: with every fault healed, the group must accept a write.
        let probe = workload::probe(world, g, &recorder).await;
        let probe_index = match probe {
            Ok(i) => i,
            Err(e) => {
                anomalies.push(Anomaly {
                    kind: AnomalyKind::NoLiveness,
                    group: (*group).into(),
                    detail: format!(
                        "after every fault was healed, a write got {e}; statuses: {}",
                        statuses(world, g).await
                    ),
                });
                0
            }
        };
        // Convergence: every replica at the same index with the same hash.
        let converged = poll(Duration::from_secs(60), || async {
            let mut seen = Vec::new();
            for i in 0..REPLICAS {
                let s = world.status(g, i, Duration::from_secs(2)).await?;
                seen.push((s.applied_index, s.commit_index, s.hash));
            }
            let first = seen[0].clone();
            (first.0 >= probe_index
                && first.0 >= first.1
                && seen.iter().all(|s| s.0 == first.0 && s.2 == first.2))
            .then_some(first.0)
        })
        .await;
        match converged {
            Some(index) => final_index[g] = index,
            None => anomalies.push(Anomaly {
                kind: AnomalyKind::NoConvergence,
                group: (*group).into(),
                detail: format!(
                    "replicas did not reach the same applied index and hash within 60s of healing; statuses: {}",
                    statuses(world, g).await
                ),
            }),
        }
    }
    world.log(format!(
        "converged at kv {} bank {}",
        final_index[KV], final_index[BANK]
    ));

    // Final reads.
    final_kv_reads(world, plan, &recorder).await;
    final_bank_check(world, plan, &mut anomalies).await;

    // Let each live replica's trace show its last index (bounded).
    for (g, &index) in final_index.iter().enumerate() {
        for r in &world.groups[g].replicas {
            let file = lock(r).trace_files().last().cloned();
            if let Some(file) = file {
                let _ = poll(Duration::from_secs(5), || async {
                    trace_reaches(&file, index).then_some(())
                })
                .await;
            }
        }
    }

    let recorder = std::mem::take(&mut *recorder.lock().unwrap_or_else(|p| p.into_inner()));
    for a in &recorder.anomalies {
        anomalies.push(Anomaly {
            kind: if a.what == "bank total changed" {
                AnomalyKind::Bank
            } else {
                AnomalyKind::UnexpectedReply
            },
            group: GROUPS[a.group].into(),
            detail: a.detail.clone(),
        });
    }

    // Trace checks.
    let mut ops = OpCounts {
        kv_reads_failed: recorder.kv_reads_failed,
        bank_reads: recorder.bank_reads,
        ..OpCounts::default()
    };
    for (g, &index) in final_index.iter().enumerate() {
        let files: Vec<PathBuf> = world.groups[g]
            .replicas
            .iter()
            .flat_map(|r| lock(r).trace_files())
            .collect();
        let log = verify::read_group(GROUPS[g], &files, &mut anomalies);
        let writes: Vec<&workload::WriteRecord> =
            recorder.writes.iter().filter(|w| w.group == g).collect();
        let counts = verify::check_group(GROUPS[g], &log, &writes, index, &mut anomalies);
        ops.applied += counts.applied;
        ops.acked_verified += counts.acked_verified;
        ops.acked_unverifiable += counts.acked_unverifiable;
        ops.trace_lines += counts.lines;
        if g == BANK {
            for w in writes {
                if w.outcome == WriteOutcome::Definite {
                    ops.bank_ok += 1;
                } else {
                    ops.bank_not_ok += 1;
                }
            }
        }
    }

    // Linearizability of the kv history (CPU-bound: off the async threads).
    let history = recorder.kv_history;
    for op in &history {
        match op.completion {
            Completion::Ok { .. } => ops.kv_ok += 1,
            Completion::Info => ops.kv_info += 1,
            Completion::Fail => ops.kv_fail += 1,
        }
    }
    let verdict = tokio::task::spawn_blocking(move || checker::check(&history, Budget::default()))
        .await
        .unwrap_or_default();
    ops.kv_keys_undecided = verdict.undecided().count();
    for (key, why) in verdict.undecided() {
        world.log(format!("kv key {key}: no linearizability verdict: {why}"));
    }
    for v in verdict.violations() {
        anomalies.push(Anomaly {
            kind: AnomalyKind::NotLinearizable,
            group: GROUPS[KV].into(),
            detail: v.to_string(),
        });
    }
    report.ops = ops;
    report.anomalies = anomalies;
}

async fn statuses(world: &World, g: usize) -> String {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for i in 0..REPLICAS {
        let s = world.status(g, i, Duration::from_secs(2)).await;
        out.push(match &s {
            Some(s) => format!(
                "{}-{i}: role {} leader {:?} applied {} commit {} hash {} error {:?}",
                GROUPS[g],
                s.role,
                s.leader,
                s.applied_index,
                s.commit_index,
                s.hash.chars().take(12).collect::<String>(),
                s.store_error
            ),
            None => format!("{}-{i}: no status", GROUPS[g]),
        });
        seen.push(s);
    }
    let mut text = out.join("; ");
    // A common shape worth naming: nobody leads and every replica waits at
    // the same index below the commit index, i.e. at a hole in the log.
    let all: Option<Vec<(u64, u64, bool)>> = seen
        .iter()
        .map(|s| {
            let s = s.as_ref()?;
            Some((s.applied_index, s.commit_index, s.leader.is_none()))
        })
        .collect();
    let leaders: Vec<(String, Role)> = seen
        .iter()
        .flatten()
        .map(|s| (s.leader.clone().unwrap_or_default(), s.role))
        .collect();
    if leaders.len() == REPLICAS
        && !leaders[0].0.is_empty()
        && leaders
            .iter()
            .all(|(l, role)| *l == leaders[0].0 && *role != Role::Leader)
    {
        text.push_str(&format!(
            "; DIAGNOSIS: every replica names {} as leader (its lease is alive) but none leads, so every write is answered no_leader",
            leaders[0].0
        ));
    }
    if let Some(all) = all {
        let (applied, commit, _) = all[0];
        if all
            .iter()
            .all(|&(a, c, no_leader)| a == applied && c == commit && no_leader)
            && applied < commit
        {
            text.push_str(&format!(
                "; DIAGNOSIS: no replica leads and all wait at index {} although entries up to {commit} exist: a hole in the log that only a leader can fill, and no replica campaigns",
                applied + 1
            ));
        }
    }
    text
}

fn trace_reaches(file: &std::path::Path, index: u64) -> bool {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines().rev().take(50).any(|l| {
        verify::parse_line(l).is_some_and(|p| match p {
            verify::TraceLine::Command(i, _, _) | verify::TraceLine::Noop(i, _) => i >= index,
            verify::TraceLine::Restored(i) => i >= index,
        })
    })
}

/// One linearizable read of every key, after everything: the final state.
async fn final_kv_reads(world: &World, plan: &Plan, recorder: &SharedRecorder) {
    for k in 0..plan.kv_keys {
        let key = workload::key(k);
        for i in 0..REPLICAS {
            let invoked = world.now_ns();
            let Ok(resp) = world
                .http
                .post(format!("{}/v1/query", world.groups[KV].urls[i]))
                .timeout(Duration::from_secs(5))
                .body(serde_json::json!({"op": "get", "key": key}).to_string())
                .send()
                .await
            else {
                continue;
            };
            if resp.status().as_u16() != 200 {
                continue;
            }
            let Some(v) = resp.bytes().await.ok().and_then(|b| Reply::parse(&b).ok()) else {
                continue;
            };
            let Ok(value) = workload::value_of(v.value.as_ref()) else {
                continue;
            };
            let at = world.now_ns();
            recorder
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .kv_history
                .push(Operation {
                    client: 1000 + i as u64,
                    key: key.clone(),
                    op: KvOp::Get,
                    invoked,
                    completion: Completion::Ok {
                        at,
                        result: KvResult::Read(value),
                    },
                });
        }
    }
}

/// Every replica's bank: the total is the opening total and the balances
/// (all non-negative integers) add up to it.
async fn final_bank_check(world: &World, plan: &Plan, anomalies: &mut Vec<Anomaly>) {
    let expected = plan.opening_balance * plan.accounts as u64;
    for i in 0..REPLICAS {
        let url = &world.groups[BANK].urls[i];
        let query = |body: String| async move {
            let r = world
                .http
                .post(format!("{url}/v1/query?consistency=stale"))
                .timeout(Duration::from_secs(5))
                .body(body)
                .send()
                .await
                .ok()?;
            Reply::parse(&r.bytes().await.ok()?).ok()
        };
        let Some(total) = query(r#"{"op":"total"}"#.into()).await else {
            continue;
        };
        let mut sum: i128 = 0;
        let mut problems = Vec::new();
        for a in 0..plan.accounts {
            let name = workload::account(a);
            let b = query(serde_json::json!({"op": "balance", "account": name}).to_string()).await;
            match b.as_ref().and_then(|b| b.balance) {
                Some(n) if n >= 0 => sum += i128::from(n),
                Some(n) => problems.push(format!("{name} has a negative balance {n}")),
                None => problems.push(format!("{name}: {b:?}")),
            }
        }
        if total.total != Some(expected) {
            problems.push(format!(
                "total is {} (expected {expected})",
                total.total.map_or("missing".into(), |t| t.to_string())
            ));
        }
        if sum != i128::from(expected) {
            problems.push(format!("balances add up to {sum} (expected {expected})"));
        }
        if !problems.is_empty() {
            anomalies.push(Anomaly {
                kind: AnomalyKind::Bank,
                group: GROUPS[BANK].into(),
                detail: format!(
                    "replica bank-{i} after convergence: {}",
                    problems.join("; ")
                ),
            });
        }
    }
}
