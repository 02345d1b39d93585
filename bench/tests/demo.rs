//! `dorado-bench demo` as users run it: a process that starts etcd (or the
//! in-process store) and three replicas, crashes the leader, recreates it and
//! checks the group, then exits 0 only if every check passed, leaving no
//! process behind on any path.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dorado-bench");

/// The demos measure takeover times: run them one at a time so they do not
/// compete for the machine's cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn demo(args: &[&str]) -> (Output, String, String, Duration) {
    let start = Instant::now();
    let out = Command::new(BIN)
        .arg("demo")
        .args(args)
        .env_remove("DORADO_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run dorado demo");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out, stdout, stderr, start.elapsed())
}

/// The working directory the demo printed (`  work dir  /tmp/dorado-demo-…`).
fn work_dir(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("work dir"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no work dir line in:\n{stdout}"))
        .to_string()
}

/// The etcd client URL the demo printed, if it ran etcd.
fn etcd_url(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .find(|l| l.trim_start().starts_with("store") && l.contains("etcd"))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("http://")))
        .map(str::to_string)
}

/// Processes whose command line mentions `needle` (the demo's work dir is in
/// every replica's `--module` argument, etcd's URL in its flags).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(format!("{name}: {cmdline}"));
            }
        }
    }
    found
}

/// Nothing the demo started is still running (checked for a little while:
/// a killed process can take a moment to disappear from /proc).
fn assert_no_leftovers(stdout: &str) {
    let mut needles = vec![work_dir(stdout)];
    needles.extend(etcd_url(stdout));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = needles
            .iter()
            .flat_map(|n| processes_mentioning(n))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the demo left processes behind:\n{}",
            left.join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let dir = work_dir(stdout);
    assert!(
        !std::path::Path::new(&dir).exists(),
        "work dir {dir} was not removed"
    );
}

#[test]
fn the_demo_survives_a_leader_crash_and_prints_the_summary() {
    let _serial = serial();
    let (out, stdout, stderr, took) = demo(&[]);
    assert!(
        out.status.success(),
        "demo failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    for expected in [
        "[1/5] started kv-0, kv-1, kv-2",
        "[2/5] 500 commands acknowledged",
        "took over: the first write after the crash was acknowledged",
        "50 more commands acknowledged",
        "caught up in",
        "restored snapshot idx=400",
        "✓ takeover",
        "✓ recovery",
        "✓ no acknowledged write lost: all 551 acknowledged writes",
        "✓ exactly once",
        "✓ same state: all 3 replicas applied index",
        "Summary",
        "commands acknowledged  551",
        "checks passed          5/5",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(!stdout.contains("FAILED"), "{stdout}");
    if dorado_testkit::etcd_process::find_etcd_binary().is_ok() {
        assert!(stdout.contains("[3/5] kill -9 kv-"), "{stdout}");
        assert!(stdout.contains("`dorado run` processes"), "{stdout}");
    } else {
        assert!(stdout.contains("IN-PROCESS memory store"), "{stdout}");
    }
    // Every replica's summary row shows the same hash.
    let summary = stdout.split("\nSummary\n").nth(1).expect("a summary");
    let hashes: Vec<&str> = summary
        .lines()
        .filter(|l| l.trim_start().starts_with("kv-"))
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(hashes.len(), 3, "{stdout}");
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{stdout}");
    assert!(took < Duration::from_secs(60), "the demo took {took:?}");
    assert_no_leftovers(&stdout);
}

#[test]
fn without_etcd_the_demo_runs_in_process_and_says_so() {
    let _serial = serial();
    let (out, stdout, stderr, _) = demo(&[
        "--store",
        "memory",
        "--commands",
        "120",
        "--snapshot-every",
        "50",
    ]);
    assert!(
        out.status.success(),
        "demo failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("IN-PROCESS memory store, not etcd"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(the leader, in-process: its tasks aborted"),
        "{stdout}"
    );
    assert!(stdout.contains("restored snapshot idx=100"), "{stdout}");
    assert!(stdout.contains("checks passed          5/5"), "{stdout}");
    assert_no_leftovers(&stdout);
}

#[test]
fn a_failed_check_makes_the_demo_exit_non_zero_and_say_which() {
    let _serial = serial();
    // No group takes over within a millisecond of losing its leader.
    let (out, stdout, stderr, _) = demo(&["--commands", "20", "--max-takeover-ms", "1"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("✗ FAILED takeover"), "{stdout}");
    assert!(stdout.contains("(bound 0.00 s)"), "{stdout}");
    assert!(stdout.contains("checks passed          4/5"), "{stdout}");
    assert!(
        stderr.contains("error: 1 of 5 checks failed: takeover"),
        "{stderr}"
    );
    assert_no_leftovers(&stdout);
}

#[test]
fn an_interrupted_demo_stops_everything_it_started() {
    let _serial = serial();
    let mut child = Command::new(BIN)
        .args(["demo", "--commands", "100000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dorado demo");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut stdout = String::new();
    // Interrupt while it submits commands: replicas and etcd are all running.
    while !stdout.contains("[1/5]") {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read stdout");
        assert!(n > 0, "demo ended before starting its replicas:\n{stdout}");
        stdout.push_str(&line);
    }
    std::thread::sleep(Duration::from_millis(300));
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -INT failed");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).expect("read stdout");
    stdout.push_str(&rest);
    let out = child.wait_with_output().expect("wait for the demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_no_leftovers(&stdout);
}
