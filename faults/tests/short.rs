//! The fault suite as a test.
//!
//! - **Short mode** (the default, run by CI through `cargo test --workspace`):
//!   three schedules with a fixed base seed, 20 s of clients each, every
//!   fault kind at least once per schedule. A few minutes on two cores.
//! - **Long mode**, selected by the environment (never in CI):
//!   `DORADO_FAULTS_SCHEDULES=200` and/or `DORADO_FAULTS_MINUTES=30`
//!   (random base seed unless `DORADO_FAULTS_BASE_SEED` is set, 40 s of
//!   clients per schedule unless `DORADO_FAULTS_WORKLOAD_SECS` is set).
//! - **Replay**: `DORADO_FAULTS_SEED=<seed>[,<seed>...]` runs exactly those
//!   schedules (with the workload length the failure report names).
//!
//! With `--features bug-unfenced` the replicas are built with appends that
//! skip the leader fence, and the test instead asserts that the suite
//! catches that bug.

use std::path::PathBuf;
use std::time::Duration;

use dorado_faults::plan::Profile;
use dorado_faults::suite::{self, SuiteConfig, Summary};

/// Base seed of the short mode: fixed, so CI runs the same schedules.
const SHORT_BASE_SEED: u64 = 20261127;
/// Schedules in short mode.
const SHORT_SCHEDULES: u64 = 3;

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
    )
}

fn config(default_profile: Profile) -> (SuiteConfig, bool) {
    let seeds: Option<Vec<u64>> = std::env::var("DORADO_FAULTS_SEED").ok().map(|s| {
        s.split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("DORADO_FAULTS_SEED: {x:?} is not a number"))
            })
            .collect()
    });
    let schedules: Option<u64> = env("DORADO_FAULTS_SCHEDULES");
    let minutes: Option<f64> = env("DORADO_FAULTS_MINUTES");
    let long = schedules.is_some() || minutes.is_some();
    let short = !long && seeds.is_none();
    let workload = env::<u64>("DORADO_FAULTS_WORKLOAD_SECS")
        .map(Duration::from_secs)
        .unwrap_or(if long {
            suite::LONG_WORKLOAD
        } else {
            suite::SHORT_WORKLOAD
        });
    let cfg = SuiteConfig {
        replica_bin: PathBuf::from(env!("CARGO_BIN_EXE_dorado-faults")),
        seeds,
        base_seed: env("DORADO_FAULTS_BASE_SEED").unwrap_or(if long {
            rand::random()
        } else {
            SHORT_BASE_SEED
        }),
        schedules: schedules.or((!long).then_some(SHORT_SCHEDULES)),
        time_limit: minutes.map(|m| Duration::from_secs_f64(m * 60.0)),
        profile: env("DORADO_FAULTS_PROFILE").unwrap_or(default_profile),
        workload,
        stop_on_anomaly: false,
        keep_dir: std::env::temp_dir().join("dorado-faults-failures"),
        keep_all: std::env::var_os("DORADO_FAULTS_KEEP_ALL").is_some(),
        replay_prefix: suite::default_replay_prefix(),
    };
    (cfg, short)
}

fn run(cfg: &SuiteConfig) -> Summary {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let summary = runtime.block_on(suite::run(cfg));
    println!("{}", summary.render(cfg));
    summary
}

#[cfg(not(feature = "bug-unfenced"))]
#[test]
fn fault_schedules_find_no_anomaly() {
    let (cfg, short) = config(Profile::Standard);
    let summary = run(&cfg);
    assert!(
        summary.harness_failures.is_empty(),
        "the harness could not run some schedules: {:#?}",
        summary.harness_failures
    );
    assert!(
        summary.anomaly_count() == 0,
        "anomalies found (each failure above names its seed and replay command): {:#?}",
        summary.failures
    );
    assert!(
        summary.ops.kv_ok > 100,
        "too few kv operations: {:?}",
        summary.ops
    );
    assert!(
        summary.ops.bank_ok > 50,
        "too few bank operations: {:?}",
        summary.ops
    );
    if short {
        use dorado_faults::plan::FaultKind;
        for kind in FaultKind::ALL {
            if kind == FaultKind::CutFromEtcd && summary.netns.is_err() {
                continue;
            }
            assert!(
                summary.faults.injected.get(&kind).copied().unwrap_or(0) > 0,
                "short mode injected no {kind}: {:?}",
                summary.faults
            );
        }
    }
}

/// The suite must catch appends that skip the leader fence.
#[cfg(feature = "bug-unfenced")]
#[test]
fn the_suite_catches_appends_without_the_fence() {
    let (mut cfg, short) = config(Profile::PauseHeavy);
    if short {
        cfg.schedules = Some(env("DORADO_FAULTS_BUG_SCHEDULES").unwrap_or(6));
        cfg.workload = Duration::from_secs(30);
        cfg.base_seed = SHORT_BASE_SEED;
    }
    cfg.stop_on_anomaly = true;
    let summary = run(&cfg);
    assert!(
        summary.anomaly_count() > 0,
        "{} schedules ran against appends without the fence and found no anomaly",
        summary.schedules
    );
}
