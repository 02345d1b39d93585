//! DORADO over etcd with real processes: three `dorado run` replicas of the
//! `kv` example against a real etcd started by each test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dorado::wire::{ErrorCode, Role};
use dorado_testkit::cluster::{
    self as support, Cluster, http, kv_get, kv_put, post, submit_retrying, wait_until,
};
use dorado_testkit::etcd_process::EtcdProcess;

const BIN: &str = env!("CARGO_BIN_EXE_dorado");
use tokio::sync::Mutex;

async fn etcd() -> EtcdProcess {
    EtcdProcess::start().await.expect("start etcd")
}

async fn snapshot_bytes(url: &str) -> (u64, Vec<u8>) {
    let r = http()
        .get(format!("{url}/v1/snapshot"))
        .send()
        .await
        .expect("snapshot request");
    assert!(r.status().is_success(), "snapshot: {}", r.status());
    let index = r.headers()[dorado::api::INDEX]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (index, r.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_apply_in_the_same_order_everywhere() {
    let etcd = etcd().await;
    let mut c = Cluster::new(BIN, etcd.client_urls(), dorado_testkit::examples::KV, 3, 0);
    c.start_all();
    c.wait_all_ready().await;
    c.wait_leader().await;

    let urls = Arc::new(c.urls());
    let mut clients = Vec::new();
    for client in 0..10u64 {
        let urls = urls.clone();
        clients.push(tokio::spawn(async move {
            for seq in 1..=100u64 {
                let body = kv_put(&format!("k{}", seq % 17), &format!("c{client}-{seq}"));
                let r = submit_retrying(
                    &urls,
                    &body,
                    &format!("client-{client}"),
                    seq,
                    Duration::from_secs(20),
                )
                .await
                .unwrap_or_else(|| panic!("client {client} seq {seq} got no answer"));
                assert_eq!(r.status, 200, "{}", r.body);
            }
        }));
    }
    for t in clients {
        t.await.expect("client task");
    }
    let (applied, hash) = c.wait_converged(Duration::from_secs(20)).await;
    assert!(applied >= 1, "nothing applied");
    assert_eq!(hash.len(), 64);
    let snaps: Vec<_> = futures::future::join_all(urls.iter().map(|u| snapshot_bytes(u))).await;
    assert!(
        snaps.iter().all(|s| s == &snaps[0]),
        "snapshots differ between replicas"
    );
    // 1,000 commands, every one applied exactly once: the trace of each replica has
    // exactly 1,000 command lines.
    for r in &c.replicas {
        let lines = r
            .stdout()
            .lines()
            .filter(|l| l.contains(" client=client-"))
            .count();
        assert_eq!(lines, 1000, "replica {} traced {lines} commands", r.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_fails_over_quickly_and_loses_no_acknowledged_write() {
    let etcd = etcd().await;
    let mut c = Cluster::new(BIN, etcd.client_urls(), dorado_testkit::examples::KV, 3, 0);
    c.start_all();
    c.wait_all_ready().await;
    let leader = c.wait_leader().await;

    let urls = Arc::new(c.urls());
    let acked: Arc<Mutex<BTreeMap<String, (u64, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (urls, acked, stop) = (urls.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                let key = format!("w{w}-{seq}");
                let body = kv_put(&key, "v");
                if let Some(r) = submit_retrying(
                    &urls,
                    &body,
                    &format!("writer-{w}"),
                    seq,
                    Duration::from_secs(15),
                )
                .await
                {
                    assert_eq!(r.status, 200, "{}", r.body);
                    acked.lock().await.insert(key, (seq, r.body));
                }
            }
        }));
    }
    wait_until(
        Duration::from_secs(10),
        "some writes before the crash",
        || async { acked.lock().await.len() >= 50 },
    )
    .await;

    c.replicas[leader].kill();
    let killed_at = Instant::now();
    let survivor = (leader + 1) % 3;
    let before = acked.lock().await.len();
    wait_until(
        Duration::from_secs(10),
        "writes to resume after the leader crash",
        || async { acked.lock().await.len() > before + 5 },
    )
    .await;
    let failover = killed_at.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    // lease-ttl (2 s) + 1 s, plus the writes needed to observe it.
    assert!(
        failover <= Duration::from_secs(3) + Duration::from_millis(500),
        "writes resumed only after {failover:?}"
    );
    let new_leader = c.wait_leader().await;
    assert_ne!(new_leader, leader);

    // Every acknowledged write is present, exactly once (trace count), on every live replica.
    c.wait_converged(Duration::from_secs(20)).await;
    let acked = acked.lock().await.clone();
    let http = http();
    for (key, _) in acked.iter().step_by(7) {
        let r = post(
            &http,
            &c.replicas[survivor].url(),
            "/v1/query",
            &kv_get(key),
            None,
        )
        .await
        .unwrap();
        assert!(
            r.body.contains("\"v\""),
            "acknowledged {key} missing: {}",
            r.body
        );
    }
    let trace = c.replicas[survivor].stdout();
    let mut seen: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for line in trace.lines() {
        if line.contains("(duplicate") {
            continue;
        }
        if let Some(rest) = line.split(" client=").nth(1)
            && let Some((id, seq)) = rest
                .split_whitespace()
                .next()
                .and_then(|t| t.split_once('#'))
        {
            *seen
                .entry((id.to_string(), seq.parse().unwrap()))
                .or_default() += 1;
        }
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "a command was applied twice"
    );
    for (key, (seq, _)) in &acked {
        let w = key.split('-').next().unwrap().trim_start_matches('w');
        assert_eq!(
            seen.get(&(format!("writer-{w}"), *seq)),
            Some(&1),
            "{key} not applied once"
        );
    }

    // A client that retries its last acknowledged seq (what a client does when
    // the answer got lost in the crash) gets the original reply, not a re-application.
    let (key, (seq, reply)) = acked
        .iter()
        .filter(|(k, _)| k.starts_with("w0-"))
        .max_by_key(|(_, (seq, _))| *seq)
        .expect("writer 0 acknowledged something");
    let w = key.split('-').next().unwrap().trim_start_matches('w');
    let r = post(
        &http,
        &c.replicas[survivor].url(),
        "/v1/commands",
        &kv_put(key, "v"),
        Some((&format!("writer-{w}"), *seq)),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.duplicate, "retry was not recognised as a duplicate");
    assert_eq!(&r.body, reply);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_leader_is_fenced_off_and_the_group_stays_consistent() {
    let etcd = etcd().await;
    let mut c = Cluster::new(BIN, etcd.client_urls(), dorado_testkit::examples::KV, 3, 0);
    c.start_all();
    c.wait_all_ready().await;
    let old = c.wait_leader().await;
    let http = http();
    let r = post(
        &http,
        &c.replicas[old].url(),
        "/v1/commands",
        &kv_put("a", "1"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);

    c.replicas[old].signal("STOP");
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    // Another replica takes over while the old leader sleeps past its lease.
    wait_until(
        Duration::from_secs(10),
        "a new leader while the old one is paused",
        || async {
            for &i in &others {
                if let Some(s) = c.status(i).await
                    && s.is_leader()
                {
                    return true;
                }
            }
            false
        },
    )
    .await;
    for n in 0..20 {
        let r = submit_retrying(
            &others
                .iter()
                .map(|i| c.replicas[*i].url())
                .collect::<Vec<_>>(),
            &kv_put("b", &n.to_string()),
            "during-pause",
            n + 1,
            Duration::from_secs(10),
        )
        .await
        .expect("write during pause");
        assert_eq!(r.status, 200);
    }
    // Resume the old leader and immediately hit it with writes: whatever it
    // believes, its fenced appends cannot land.
    c.replicas[old].signal("CONT");
    let mut answered = Vec::new();
    for n in 0..10u64 {
        if let Ok(r) = post(
            &http,
            &c.replicas[old].url(),
            "/v1/commands",
            &kv_put(&format!("late{n}"), "x"),
            Some(("late-client", n + 1)),
        )
        .await
        {
            answered.push((n, r));
        }
    }
    let (applied, _) = c.wait_converged(Duration::from_secs(20)).await;
    assert!(applied >= 21);
    let status = c.status(old).await.unwrap();
    assert_eq!(
        status.role,
        Role::Follower,
        "the resumed leader still claims to lead"
    );
    // Writes it acknowledged went through the new leader (forwarded) and are present once.
    let trace = c.replicas[others[0]].stdout();
    for (n, r) in answered {
        let key = format!("late{n}");
        let count = trace
            .lines()
            .filter(|l| l.contains(&format!("\"key\":\"{key}\"")) && !l.contains("(duplicate"))
            .count();
        if r.status == 200 {
            assert_eq!(count, 1, "{key} acknowledged but applied {count} times");
        } else {
            assert!(count <= 1, "{key} applied {count} times");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recreated_replica_restores_the_snapshot_and_replays_the_tail() {
    let etcd = etcd().await;
    let mut c = Cluster::new(BIN, etcd.client_urls(), dorado_testkit::examples::KV, 3, 50);
    c.start_all();
    c.wait_all_ready().await;
    let leader = c.wait_leader().await;
    let victim = (leader + 1) % 3;
    let http = http();
    let url = c.replicas[leader].url();
    for seq in 1..=230u64 {
        let r = post(
            &http,
            &url,
            "/v1/commands",
            &kv_put(&format!("k{}", seq % 40), &seq.to_string()),
            Some(("loader", seq)),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let (applied, hash) = c.wait_converged(Duration::from_secs(20)).await;
    c.replicas[victim].kill();
    c.start(victim); // empty working directory: a recreated pod
    c.wait_ready(victim).await;
    let (applied2, hash2) = c.wait_converged(Duration::from_secs(20)).await;
    assert_eq!((applied2, &hash2), (applied, &hash));
    let out = c.replicas[victim].stdout();
    assert!(
        out.contains("restored snapshot idx=200"),
        "the recreated replica did not restore the snapshot at 200:\n{}",
        support::tail(&out, 5)
    );
    let replayed = out.lines().filter(|l| l.starts_with("idx=")).count();
    assert_eq!(
        replayed, 30,
        "expected the 30-entry tail to be replayed, trace:\n{out}"
    );
    let r = post(
        &http,
        &c.replicas[victim].url(),
        "/v1/query?consistency=stale",
        &kv_get("k30"),
        None,
    )
    .await
    .unwrap();
    assert!(r.body.contains("\"230\""), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_group_survives_an_etcd_restart_without_losing_acknowledged_commands() {
    let mut etcd = etcd().await;
    let mut c = Cluster::new(
        BIN,
        etcd.client_urls(),
        dorado_testkit::examples::COUNTER,
        3,
        0,
    );
    c.start_all();
    c.wait_all_ready().await;
    c.wait_leader().await;
    let urls = c.urls();
    for seq in 1..=20u64 {
        let r = submit_retrying(
            &urls,
            r#"{"op":"add","n":1}"#,
            "adder",
            seq,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
    }
    etcd.kill().expect("kill etcd");
    wait_until(
        Duration::from_secs(15),
        "replicas to report not ready while etcd is down",
        || async { !c.ready(0).await && !c.ready(1).await && !c.ready(2).await },
    )
    .await;
    etcd.restart().await.expect("restart etcd");
    for seq in 21..=40u64 {
        let r = submit_retrying(
            &urls,
            r#"{"op":"add","n":1}"#,
            "adder",
            seq,
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|| panic!("write {seq} after etcd restart got no answer"));
        assert_eq!(r.status, 200);
    }
    c.wait_converged(Duration::from_secs(20)).await;
    let http = http();
    for u in &urls {
        let r = post(&http, u, "/v1/query", r#"{"op":"get"}"#, None)
            .await
            .unwrap();
        assert!(r.body.contains("40"), "counter lost writes: {}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_are_refused_and_never_reach_the_log() {
    let etcd = etcd().await;
    let mut c = Cluster::new(BIN, etcd.client_urls(), dorado_testkit::examples::KV, 1, 0);
    c.start_all();
    c.wait_all_ready().await;
    c.wait_leader().await;
    let http = http();
    let url = c.replicas[0].url();
    let before = c.status(0).await.unwrap().applied_index;

    let r = post(&http, &url, "/v1/commands", "", None).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error().unwrap().code, ErrorCode::Empty, "{}", r.body);
    let r = http
        .post(format!("{url}/v1/commands"))
        .header("dorado-client-id", "c")
        .header("dorado-seq", "abc")
        .body(kv_put("a", "b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("dorado-seq must be a positive integer")
    );
    let big = "x".repeat(600 * 1024);
    let r = post(&http, &url, "/v1/commands", &big, None).await.unwrap();
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.error().unwrap().code, ErrorCode::TooLarge, "{}", r.body);
    let r = http.get(format!("{url}/v2/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = post(
        &http,
        &url,
        "/v1/query?consistency=weird",
        &kv_get("a"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error().unwrap().code,
        ErrorCode::BadParameter,
        "{}",
        r.body
    );

    let after = c.status(0).await.unwrap().applied_index;
    assert_eq!(before, after, "a refused request reached the log");
    assert!(
        !c.replicas[0].stdout().contains("idx="),
        "a refused request was traced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_with_another_module_in_manual_mode_stays_not_ready_naming_both_hashes() {
    let etcd = etcd().await;
    let mut c = Cluster::new(BIN, etcd.client_urls(), dorado_testkit::examples::KV, 2, 0);
    c.start(0);
    c.wait_ready(0).await;
    let other = c.tmp.path().join("counter.wasm");
    std::fs::write(&other, dorado_testkit::examples::COUNTER).unwrap();
    c.replicas[1].extra = vec!["--upgrade".into(), "manual".into()];
    c.start_with_module(1, &other);
    let kv_sha = sha256_hex(dorado_testkit::examples::KV);
    let counter_sha = sha256_hex(dorado_testkit::examples::COUNTER);
    // It runs (no crash loop), follows the group on kv, and says why it is
    // not ready, naming both modules.
    let deadline = Instant::now() + Duration::from_secs(20);
    let reason = loop {
        // (Before it has caught up it waits too, for that reason.)
        if let Some(dorado::wire::ModuleState::Waiting(r)) =
            c.status(1).await.map(|s| s.module_state)
            && r.contains("manual")
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never said why it waits"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        reason.contains(&kv_sha[..12])
            && reason.contains(&counter_sha[..12])
            && reason.contains("manual"),
        "{reason}"
    );
    assert!(!c.ready(1).await, "a replica with another module is ready");
    let status = c.status(1).await.unwrap();
    assert_eq!(status.group_module, kv_sha);
    assert_eq!(status.module_sha256, counter_sha);
    assert_eq!(
        c.replicas[1].wait_exit(Duration::from_millis(200)).await,
        None,
        "the replica exited"
    );
    // The group never switched.
    assert_eq!(c.status(0).await.unwrap().group_module, kv_sha);
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_submit_query_status_and_replay_work_against_a_group() {
    let etcd = etcd().await;
    let mut c = Cluster::new(BIN, etcd.client_urls(), dorado_testkit::examples::KV, 2, 0);
    c.start_all();
    c.wait_all_ready().await;
    let leader = c.wait_leader().await;
    let follower = 1 - leader;
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .output()
            .expect("run dorado")
    };
    // Through the follower (forwarded), with an explicit session.
    let fol = c.replicas[follower].addr();
    let out = run(&[
        "submit",
        "--endpoint",
        &fol,
        "--client-id",
        "cli",
        "--seq",
        "1",
        &kv_put("x", "1"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = String::from_utf8_lossy(&out.stdout).to_string();
    // Same seq again, different value: the original reply, not applied twice.
    let out = run(&[
        "submit",
        "--endpoint",
        &fol,
        "--client-id",
        "cli",
        "--seq",
        "1",
        &kv_put("x", "2"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), first);
    let out = run(&["query", "--endpoint", &fol, &kv_get("x")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"1\""));
    // A dead endpoint first in the list: the client moves on.
    let dead = format!("127.0.0.1:{}", support::free_port());
    let out = run(&[
        "submit",
        "--endpoint",
        &format!("{dead},{fol}"),
        &kv_put("y", "1"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["status", "--endpoint", &fol]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("role            follower"), "{text}");

    c.wait_converged(Duration::from_secs(10)).await;
    let trace_file = c.tmp.path().join("trace.log");
    std::fs::write(&trace_file, c.replicas[leader].stdout()).unwrap();
    let module = c.module.to_string_lossy().to_string();
    let out = c.tool(
        "replay",
        &["--module", &module, "--trace", trace_file.to_str().unwrap()],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("reference hashes match"), "{text}");
    // Checking another module against the history: counter cannot even
    // take kv's state, so the switch itself would be rejected; nothing is
    // proposed. (A module that differs in its replies is reported at the
    // first differing command: tests/upgrade.rs.)
    let counter = c.tmp.path().join("c.wasm");
    std::fs::write(&counter, dorado_testkit::examples::COUNTER).unwrap();
    let out = c.tool(
        "upgrade",
        &[
            "--module",
            counter.to_str().unwrap(),
            "--verify",
            "--dry-run",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(
            "the switch itself is rejected: trap: guest panicked: corrupt counter snapshot"
        ),
        "{text}"
    );
    let status = c.status(leader).await.expect("status");
    assert_eq!(
        status.group_module,
        sha256_hex(dorado_testkit::examples::KV)
    );
}

/// etcd unreachable when the pod starts (e.g. etcd still scheduling): the
/// replica serves its probes at once, says it is starting (liveness passes,
/// readiness and the API answer 503 `starting`), keeps retrying, and becomes
/// a working replica as soon as etcd appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_started_before_etcd_waits_then_serves() {
    // A port where nothing listens yet; etcd will be reachable there later.
    let port = support::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut c = Cluster::new(BIN, vec![url], dorado_testkit::examples::KV, 1, 0);
    c.start(0);
    let base = c.urls()[0].clone();
    let http = http();
    wait_until(
        Duration::from_secs(20),
        "/healthz to answer while etcd is unreachable",
        || {
            let r = http.get(format!("{base}/healthz")).send();
            async move { r.await.is_ok_and(|r| r.status().is_success()) }
        },
    )
    .await;
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready without etcd");
    let r = post(&http, &base, "/v1/commands", &kv_put("k", "v"), None)
        .await
        .unwrap();
    assert_eq!(
        r.status, 503,
        "commands are refused while starting: {}",
        r.body
    );
    assert_eq!(r.error().unwrap().code, ErrorCode::Starting, "{}", r.body);
    assert!(
        c.replicas[0]
            .wait_exit(Duration::from_millis(1))
            .await
            .is_none(),
        "the replica must keep running and retrying"
    );

    // etcd appears at that address (a real etcd behind a TCP forwarder).
    let etcd = etcd().await;
    let upstream: std::net::SocketAddr = etcd
        .client_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let forwarder = tokio::spawn(async move {
        loop {
            let Ok((mut down, _)) = listener.accept().await else {
                break;
            };
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    c.wait_ready(0).await;
    // Ready means caught up; the election may still be running (clients get
    // 503 no_leader and retry): wait for it instead of racing it.
    c.wait_leader().await;
    let r = post(
        &http,
        &base,
        "/v1/commands",
        &kv_put("k", "v"),
        Some(("late", 1)),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let got = post(&http, &base, "/v1/query", &kv_get("k"), None)
        .await
        .unwrap();
    assert_eq!(got.status, 200, "{}", got.body);
    assert!(got.body.contains("\"v\""), "{}", got.body);
    forwarder.abort();
}
