//! `dorado-bench bench failover` and `dorado-bench bench recovery` as processes: tiny
//! configurations end to end (real etcd, real replicas, real signals),
//! checking the shape of their outputs, never their values, and that no
//! child process (etcd, replicas, recreated replicas) outlives the run.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dorado_bench::bench::Report;
use dorado_testkit::procs::{children_of, wait_gone};

const BIN: &str = env!("CARGO_BIN_EXE_dorado-bench");

/// Children every run has for most of its life: etcd and two groups of 3.
/// Recreated replicas come on top, but the last one may live only for the
/// `--after` window, shorter than one sampling round of `/proc` on a busy
/// machine, so they are checked for leftovers when seen, not counted.
const LONG_LIVED_CHILDREN: usize = 1 + 6;

/// Run `dorado <args>` to completion (bounded), collecting every child
/// process it started along the way; returns (success, stderr, children).
fn run_collecting(args: &[&str], timeout: Duration) -> (bool, String, BTreeSet<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("start dorado bench");
    let start = Instant::now();
    let mut kids = BTreeSet::new();
    let status = loop {
        kids.extend(children_of(child.id()));
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            panic!("dorado {args:?} did not finish within {timeout:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    (status.success(), stderr, kids)
}

/// A measured value that must exist and be positive.
fn positive(what: &str, x: Option<f64>) -> f64 {
    let x = x.unwrap_or_else(|| panic!("{what} is missing"));
    assert!(x.is_finite() && x > 0.0, "{what} = {x}");
    x
}

fn assert_common(report: &Report, mode: &str) {
    assert_eq!(report.mode, mode);
    assert_eq!(report.tool, "dorado-bench bench");
    assert!(report.machine.nproc >= 1);
    assert!(report.etcd.managed);
    assert!(report.started_utc.ends_with('Z'));
    assert_eq!(report.parameters.replicas, 3);
    assert!(report.parameters.command_line.contains(mode));
}

/// One finished `dorado-bench bench <mode> <args>` that wrote JSON, Markdown and
/// plots into a temp dir, with the checks every mode shares already made.
struct BenchRun {
    report: Report,
    markdown: String,
    plots: PathBuf,
    kids: BTreeSet<u64>,
    _dir: tempfile::TempDir,
}

fn run_bench(mode: &str, mode_args: &[&str]) -> BenchRun {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join(format!("{mode}.json"));
    let markdown = dir.path().join(format!("{mode}.md"));
    let plots = dir.path().join("plots");
    let mut args = vec!["bench", mode];
    args.extend_from_slice(mode_args);
    args.extend_from_slice(&[
        "--no-progress",
        "--json",
        json.to_str().unwrap(),
        "--markdown",
        markdown.to_str().unwrap(),
        "--plots",
        plots.to_str().unwrap(),
    ]);
    let (ok, stderr, kids) = run_collecting(&args, Duration::from_secs(90));
    assert!(ok, "dorado-bench bench {mode} failed:\n{stderr}");
    assert!(kids.len() >= LONG_LIVED_CHILDREN, "children seen: {kids:?}");
    let report: Report = serde_json::from_slice(&std::fs::read(&json).unwrap())
        .expect("the JSON report parses as a Report");
    assert_common(&report, mode);
    BenchRun {
        report,
        markdown: std::fs::read_to_string(&markdown).unwrap(),
        plots,
        kids,
        _dir: dir,
    }
}

impl BenchRun {
    /// No child process outlives the command.
    fn assert_no_leftovers(&self) {
        let left = wait_gone(
            &self.kids.iter().copied().collect::<Vec<_>>(),
            Duration::from_secs(5),
        );
        assert!(left.is_empty(), "processes left behind: {left:?}");
    }
}

#[test]
fn tiny_failover_measures_both_kinds_for_both_protocols() {
    let run = run_bench(
        "failover",
        &[
            "--repeat",
            "1",
            "--lease-ttl",
            "1",
            "--clients",
            "3",
            "--steady",
            "300ms",
            "--after",
            "100ms",
            "--timeout",
            "15s",
        ],
    );
    let report = &run.report;
    let f = report.failover.as_ref().expect("a failover section");
    assert_eq!(f.repeat, 1);
    assert_eq!(f.lease_ttl_s, 1);
    // etcd raises a 1 s TTL to its minimum.
    assert!(f.lease_ttl_granted_s >= 1, "{f:?}");
    assert_eq!(f.samples.len(), 4, "{:?}", f.samples);
    for protocol in ["dorado", "classic"] {
        for kind in ["kill-9", "sigterm"] {
            let s = f
                .samples
                .iter()
                .find(|s| s.protocol == protocol && s.kind == kind)
                .unwrap_or_else(|| panic!("no sample for {protocol} {kind}"));
            positive("unavailable_s", s.unavailable_s);
            positive("max_ack_gap_s", s.max_ack_gap_s);
            assert!(s.acked_before > 0, "{s:?}");
            assert!(s.acked_after > 0, "{s:?}");
            assert!(!s.stopped.is_empty(), "{s:?}");
            let summary = f
                .summary
                .iter()
                .find(|x| x.protocol == protocol && x.kind == kind)
                .unwrap_or_else(|| panic!("no summary for {protocol} {kind}"));
            assert_eq!(summary.samples, 1);
            positive("min_s", summary.min_s);
            positive("median_s", summary.median_s);
            positive("max_s", summary.max_s);
            if protocol == "dorado" {
                positive("goal_s", summary.goal_s);
                assert!(summary.met.is_some(), "{summary:?}");
            }
        }
    }
    let goals = &report.goals;
    assert_eq!(goals.len(), 2, "one goal per kind for dorado: {goals:?}");

    let md = &run.markdown;
    assert!(md.contains("| protocol | kind | samples |"), "{md}");
    assert!(md.contains("| dorado | kill-9 |"), "{md}");
    assert!(md.contains("| classic | sigterm |"), "{md}");
    assert!(run.plots.join("failover.svg").exists());

    run.assert_no_leftovers();
}

#[test]
fn tiny_recovery_measures_each_history_with_and_without_snapshots() {
    let run = run_bench(
        "recovery",
        &[
            "--history",
            "100,300",
            "--snapshot-every",
            "20,0",
            "--load-clients",
            "8",
            "--timeout",
            "20s",
        ],
    );
    let report = &run.report;
    let r = report.recovery.as_ref().expect("a recovery section");
    assert_eq!(r.histories, [100, 300]);
    assert_eq!(r.snapshot_every, [20, 0]);
    assert_eq!(r.results.len(), 4, "{:?}", r.results);
    for every in [20, 0] {
        for history in [100, 300] {
            let x = r
                .results
                .iter()
                .find(|x| x.snapshot_every == Some(every) && x.history_commands == history)
                .unwrap_or_else(|| panic!("no result for {every} / {history}"));
            assert_eq!(x.protocol, "dorado");
            assert!(!x.timed_out, "{x:?}");
            assert!(!x.skipped, "{x:?}");
            positive("process_up_s", x.process_up_s);
            positive("caught_up_s", x.caught_up_s);
            positive("ready_s", x.ready_s);
            positive("load_s", Some(x.load_s));
            positive("load_ops_s", Some(x.load_ops_s));
            assert!(x.log_entries > 0, "{x:?}");
            let restored = x.snapshot_index;
            if every == 0 {
                assert_eq!(restored, 0, "no snapshots, yet one was restored: {x:?}");
            } else if history == 300 {
                assert!(restored > 0, "a snapshot should have been restored: {x:?}");
            }
        }
    }
    let md = &run.markdown;
    assert!(
        md.contains("| protocol | snapshot every | history (commands) |"),
        "{md}"
    );
    assert_eq!(md.matches("\n| dorado |").count(), 4, "{md}");
    assert!(run.plots.join("recovery.svg").exists());

    run.assert_no_leftovers();
}
