//! `dorado-bench bench` as a process: a tiny configuration end to end (real etcd,
//! real replicas), checking the shape of its outputs, never its numbers, and
//! that no child process outlives it, also when it is interrupted.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dorado_bench::bench::Report;
use dorado_testkit::procs::{children_of, wait_gone};

const BIN: &str = env!("CARGO_BIN_EXE_dorado-bench");

#[test]
fn tiny_bench_writes_json_markdown_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let markdown = dir.path().join("bench.md");
    let plots = dir.path().join("plots");
    let out = Command::new(BIN)
        .args(["bench", "--clients", "1,4", "--duration", "1s"])
        .args(["--warmup", "300ms", "--no-progress", "--read-ratio", "0.2"])
        .arg("--json")
        .arg(&json)
        .arg("--markdown")
        .arg(&markdown)
        .arg("--plots")
        .arg(&plots)
        .stdin(Stdio::null())
        .output()
        .expect("run dorado bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dorado-bench bench failed:\n{stderr}");

    let report: Report = serde_json::from_slice(&std::fs::read(&json).unwrap())
        .expect("the JSON report parses as a Report");
    let params = &report.parameters;
    assert_eq!(params.clients, [1, 4]);
    assert_eq!(params.command_size, 100);
    assert_eq!(params.replicas, 3);
    assert!(params.command_line.contains("bench"));
    assert!(report.machine.nproc >= 1);
    assert!(report.etcd.managed);

    assert_eq!(report.mode, "throughput");
    let runs = &report.runs;
    assert_eq!(runs.len(), 12, "6 systems x 2 client counts: {runs:?}");
    let mut pids = Vec::new();
    for system in [
        "etcd-put",
        "fenced-txn",
        "dorado",
        "dorado-pipelined",
        "dorado-batched",
        "classic",
    ] {
        // Each system must have done real work. Per system, not per run: a
        // single sub-second window can pass without a completion when the
        // machine stalls (an fsync behind other I/O), which says nothing
        // about the tool.
        let ops: u64 = runs
            .iter()
            .filter(|r| r.system == system)
            .map(|r| r.ops)
            .sum();
        assert!(
            ops > 0,
            "no {system} operation succeeded in any run: {runs:?}"
        );
        for clients in [1, 4] {
            let run = runs
                .iter()
                .find(|r| r.system == system && r.clients == clients)
                .unwrap_or_else(|| panic!("no run for {system} at {clients} clients"));
            for (key, value) in [
                ("throughput_ops_s", run.throughput_ops_s),
                ("p50_ms", run.p50_ms),
                ("p90_ms", run.p90_ms),
                ("p99_ms", run.p99_ms),
                ("p999_ms", run.p999_ms),
            ] {
                assert!(value >= 0.0, "{key} of {run:?}");
            }
            let names: Vec<&str> = run.cpu.iter().map(|c| c.process.as_str()).collect();
            assert!(names.contains(&"etcd"), "{names:?}");
            assert!(names.contains(&"bench"), "{names:?}");
            assert_eq!(
                names.iter().filter(|n| n.starts_with("replica ")).count(),
                3,
                "{names:?}"
            );
            assert_eq!(
                names.iter().filter(|n| n.starts_with("classic ")).count(),
                3,
                "{names:?}"
            );
            pids.extend(run.cpu.iter().map(|c| u64::from(c.pid)));
            assert!(!run.cdf.is_empty());
            if system.starts_with("dorado") || system == "classic" {
                assert!(run.dorado.is_some(), "{run:?}");
            }
            // etcd's census of the window (the throwaway etcd serves /metrics).
            assert_eq!(run.etcd_census_error, None, "{run:?}");
            let census = run.etcd_census.as_ref().expect("an etcd census");
            if run.ops > 0 {
                assert!(census.received_bytes > 0.0, "{census:?}");
                assert!(census.cpu_seconds >= 0.0, "{census:?}");
                let writes = match system {
                    "etcd-put" => census.handled("Put") + census.handled("Range"),
                    _ if system.starts_with("dorado") || system == "fenced-txn" => {
                        census.handled("Txn") + census.handled("Range")
                    }
                    _ => 1.0,
                };
                assert!(writes > 0.0, "{system}: {census:?}");
            }
        }
    }

    let md = std::fs::read_to_string(&markdown).unwrap();
    assert!(md.contains("| system | clients | ops/s |"), "{md}");
    assert_eq!(md.matches("\n| dorado |").count(), 4, "two tables: {md}");
    assert_eq!(md.matches("\n| dorado-pipelined |").count(), 4, "{md}");
    assert_eq!(md.matches("\n| dorado-batched |").count(), 4, "{md}");
    assert!(md.contains("etcd Txn/cmd"), "{md}");
    assert_eq!(md.matches("\n| classic |").count(), 4, "{md}");
    for name in ["throughput", "latency-cdf-1", "latency-cdf-4"] {
        let svg = plots.join(format!("{name}.svg"));
        assert!(
            std::fs::read_to_string(&svg).is_ok_and(|s| s.contains("<svg")),
            "{} missing or not an SVG",
            svg.display()
        );
        assert!(Path::new(&plots.join(format!("{name}.png"))).exists());
    }

    // etcd and the replicas were children of the benchmark: all gone.
    pids.sort_unstable();
    pids.dedup();
    let left = wait_gone(&pids, Duration::from_secs(5));
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn interrupted_bench_leaves_no_process_behind() {
    let mut child = Command::new(BIN)
        .args([
            "bench",
            "--clients",
            "2",
            "--duration",
            "60s",
            "--warmup",
            "1s",
        ])
        .arg("--no-progress")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dorado bench");
    // Wait for etcd and the two groups of three replicas (dorado, classic).
    let start = Instant::now();
    let mut kids = Vec::new();
    while start.elapsed() < Duration::from_secs(60) {
        kids = children_of(child.id());
        if kids.len() >= 7 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(kids.len() >= 7, "bench started only {kids:?}");
    std::thread::sleep(Duration::from_millis(500));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("dorado-bench bench did not stop after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    assert!(
        !exit.success(),
        "an interrupted bench must not report success"
    );
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let left = wait_gone(&kids, Duration::from_secs(5));
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn bad_flags_are_refused_without_a_panic() {
    for args in [
        &["bench", "--clients", "0"][..],
        &["bench", "--clients", "x"],
        &["bench", "--duration", "10q"],
        &["bench", "--duration", "-1s"],
        &["bench", "--read-ratio", "1.5"],
        &["bench", "--command-size", "5"],
        &["bench", "--replicas", "0"],
        &["bench", "--systems", "nope"],
        &["bench", "failover", "--repeat", "0"],
        &["bench", "failover", "--kinds", "kill-8"],
        &["bench", "failover", "--clients", "4", "--quick"],
        &["bench", "recovery", "--history", "0"],
        &["bench", "recovery", "--protocols", "paxos"],
        &["bench", "--quick", "recovery"],
        &[
            "bench",
            "--etcd",
            "http://127.0.0.1:1",
            "--etcd-dir",
            "/tmp",
        ],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
