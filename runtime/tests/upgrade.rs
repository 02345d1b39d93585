//! Module upgrades ordered through the log, with real processes: `dorado run`
//! replicas and the `dorado upgrade` / `dorado replay` tools against a real
//! etcd started by each test.

use std::collections::BTreeMap;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dorado::wire::ModuleState;
use dorado_testkit::cluster::{Cluster, http, kv_get, kv_put, post, submit_retrying, wait_for};
use dorado_testkit::etcd_process::EtcdProcess;
use dorado_testkit::examples::{KV, KV_MIGRATE_TRAP, KV2, Reply};
use tokio::sync::Mutex;

const BIN: &str = env!("CARGO_BIN_EXE_dorado");

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write_module(c: &Cluster, name: &str, bytes: &[u8]) -> String {
    let path = c.tmp.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_string_lossy().into_owned()
}

fn incr(key: &str) -> String {
    serde_json::json!({"op": "incr", "key": key, "by": 2}).to_string()
}

/// The upgrade lines of a replica's trace: `(index, rest of the line)`.
fn upgrade_lines(trace: &str) -> Vec<(u64, String)> {
    trace
        .lines()
        .filter(|l| l.contains(" upgrade module "))
        .map(|l| {
            let idx = l
                .strip_prefix("idx=")
                .and_then(|r| r.split(' ').next())
                .and_then(|i| i.parse().ok())
                .expect("an index");
            (idx, l.to_owned())
        })
        .collect()
}

/// Wait until every running replica reports `module` as the group's.
async fn wait_group_module(c: &Cluster, module: &str) {
    let what = format!("every replica to report group module {module}");
    wait_for(Duration::from_secs(30), &what, move || async move {
        let mut seen = Vec::new();
        for i in (0..c.replicas.len()).filter(|&i| c.replicas[i].is_started()) {
            seen.push(c.status(i).await.map(|s| s.group_module));
        }
        match seen.iter().all(|m| m.as_deref() == Some(module)) {
            true => Ok(()),
            false => Err(format!("{seen:?}")),
        }
    })
    .await
}

/// A ready 3-replica `kv` group on its own etcd, snapshotting every
/// `snapshot_every` entries (0: never), and the path of `kv2`'s module file.
async fn kv_group_and_kv2(snapshot_every: u64) -> (EtcdProcess, Cluster, String) {
    let etcd = EtcdProcess::start().await.expect("start etcd");
    let mut c = Cluster::new(BIN, etcd.client_urls(), KV, 3, snapshot_every);
    c.start_all();
    c.wait_all_ready().await;
    let kv2 = write_module(&c, "kv2.wasm", KV2);
    (etcd, c, kv2)
}

async fn ok_reply(c: &Cluster, body: &str) -> Reply {
    let r = submit_retrying(
        &c.urls(),
        body,
        "probe",
        next_seq(),
        Duration::from_secs(20),
    )
    .await
    .expect("the command was never answered");
    assert_eq!(r.status, 200, "{}", r.body);
    Reply::parse(r.body.as_bytes()).expect("a kv reply")
}

fn next_seq() -> u64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A client that keeps putting distinct keys (exactly-once tags) until
/// stopped; returns the acknowledged ones.
fn start_writer(
    urls: Vec<String>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<BTreeMap<String, String>> {
    tokio::spawn(async move {
        let mut acked = BTreeMap::new();
        let mut seq = 0u64;
        while !stop.load(Ordering::Acquire) {
            seq += 1;
            let (key, value) = (format!("w{seq}"), format!("v{seq}"));
            if let Some(r) = submit_retrying(
                &urls,
                &kv_put(&key, &value),
                "writer",
                seq,
                Duration::from_secs(30),
            )
            .await
            {
                assert_eq!(r.status, 200, "a put was rejected: {}", r.body);
                acked.insert(key, value);
            }
        }
        acked
    })
}

async fn assert_all_readable(c: &Cluster, acked: &BTreeMap<String, String>) {
    let http = http();
    for (key, value) in acked {
        let r = post(&http, &c.replicas[0].url(), "/v1/query", &kv_get(key), None)
            .await
            .expect("query");
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.body.contains(&format!("\"{value}\"")),
            "acknowledged write {key}={value} is lost: {}",
            r.body
        );
    }
}

/// Every `writer#seq` applied at most once in a trace that covers the whole
/// history (a replica that replayed it from index 1).
fn assert_applied_at_most_once(trace: &str) {
    let mut seen = BTreeMap::new();
    for line in trace.lines() {
        if let Some(rest) = line.split(" client=writer#").nth(1)
            && !line.contains("(duplicate")
        {
            let seq: u64 = rest.split(' ').next().unwrap().parse().unwrap();
            *seen.entry(seq).or_insert(0) += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "applied more than once: {twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_upgrade_under_load_switches_every_replica_at_one_index() {
    let (_etcd, mut c, kv2) = kv_group_and_kv2(0).await;
    let (v1, v2) = (sha256_hex(KV), sha256_hex(KV2));

    // v2's new operation does not exist yet.
    let before = ok_reply(&c, &incr("n")).await;
    assert!(!before.ok, "incr worked before the upgrade: {before:?}");
    // So the offline check finds the first command v2 answers differently,
    // and proposes nothing.
    let out = c.tool("upgrade", &["--module", &kv2, "--verify", "--dry-run"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("FIRST DIFFERENCE at index")
            && text(&out).contains(r#"new module reply {"ok":true,"value":2}"#),
        "{}",
        text(&out)
    );
    assert_eq!(c.status(0).await.unwrap().group_module, v1);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(c.urls(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The StatefulSet's rollout: the highest ordinal first, each pod
    // replaced by one with the new module; the first proposes the upgrade.
    for i in (0..3).rev() {
        c.replicas[i].signal("TERM");
        c.replicas[i].wait_exit(Duration::from_secs(10)).await;
        c.start_with_module(i, std::path::Path::new(&kv2));
        c.wait_ready(i).await;
        wait_group_module(&c, &v2).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Release);
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > 10,
        "the load was too light: {} writes",
        acked.len()
    );

    c.wait_converged(Duration::from_secs(20)).await;
    // Every replica replayed the whole history (no snapshots): one upgrade
    // line each, at the same index, naming both modules.
    let mut indexes = Vec::new();
    for r in &c.replicas {
        let lines = upgrade_lines(&r.stdout());
        assert_eq!(lines.len(), 1, "{}: {lines:?}", r.name);
        let (idx, line) = &lines[0];
        assert!(line.contains(&format!("{v1} -> {v2} switched")), "{line}");
        indexes.push(*idx);
        assert_applied_at_most_once(&r.stdout());
    }
    assert!(indexes.iter().all(|i| *i == indexes[0]), "{indexes:?}");
    assert_all_readable(&c, &acked).await;
    let after = ok_reply(&c, &incr("n")).await;
    assert!(after.ok, "incr failed after the upgrade: {after:?}");

    // `dorado replay` follows the upgrade (both modules from the store) and
    // reproduces every hash of a replica's trace.
    let (_, hash) = c.wait_converged(Duration::from_secs(20)).await;
    let trace = c.tmp.path().join("trace.log");
    std::fs::write(&trace, c.replicas[0].stdout()).unwrap();
    let out = c.tool("replay", &["--trace", trace.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("reference hashes match"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains(&format!("final hash {hash}")),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_migration_that_traps_is_rejected_everywhere_and_the_group_keeps_v1() {
    let etcd = EtcdProcess::start().await.expect("start etcd");
    let mut c = Cluster::new(BIN, etcd.client_urls(), KV, 3, 0);
    c.start(0);
    c.start(1);
    c.wait_ready(0).await;
    c.wait_ready(1).await;
    let v1 = sha256_hex(KV);
    let trap = write_module(&c, "trap.wasm", KV_MIGRATE_TRAP);
    ok_reply(&c, &kv_put("a", "1")).await;

    // A pod started with the trapping module proposes it (auto mode).
    c.start_with_module(2, std::path::Path::new(&trap));
    let cluster = &c;
    let reason = wait_for(
        Duration::from_secs(30),
        "the trapping module's replica to give up",
        move || async move {
            // (Before it has caught up it waits too, for that reason.)
            match cluster.status(2).await.map(|s| s.module_state) {
                Some(ModuleState::Waiting(r)) if r.contains("rejected") => Ok(r),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(
        reason.contains("rejected") && reason.contains("refuses"),
        "{reason}"
    );
    assert!(
        !c.ready(2).await,
        "a replica whose module was rejected is ready"
    );

    // The explicit command is rejected the same way and says so.
    let out = c.tool("upgrade", &["--module", &trap]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("rejected"), "{}", text(&out));

    c.wait_converged(Duration::from_secs(20)).await;
    for r in &c.replicas {
        let lines = upgrade_lines(&r.stdout());
        assert!(!lines.is_empty(), "{} traced no upgrade", r.name);
        for (_, line) in &lines {
            assert!(line.contains("rejected: trap"), "{}: {line}", r.name);
        }
    }
    for i in 0..3 {
        assert_eq!(c.status(i).await.unwrap().group_module, v1);
    }
    // Still serving v1.
    let reply = ok_reply(&c, &kv_put("b", "2")).await;
    assert!(reply.ok, "{reply:?}");
    assert!(!ok_reply(&c, &incr("n")).await.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_killed_right_after_proposing_an_upgrade_leaves_one_outcome() {
    let (_etcd, mut c, kv2) = kv_group_and_kv2(0).await;
    let v2 = sha256_hex(KV2);
    ok_reply(&c, &kv_put("a", "1")).await;

    // Store v2 without proposing it, then propose it straight to the leader
    // and kill the leader while the proposal is in flight.
    let out = c.tool("upgrade", &["--module", &kv2, "--verify", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    let store = dorado::store::EtcdStore::connect(
        &c.etcd_urls,
        &c.namespace,
        &c.group,
        dorado::store::EtcdStoreOptions::default(),
    )
    .await
    .unwrap();
    dorado_core::Store::put_module(&store, &v2, KV2)
        .await
        .unwrap();
    let leader = c.wait_leader().await;
    let url = c.replicas[leader].url();
    let body = serde_json::json!({ "module": v2 }).to_string();
    let proposal =
        tokio::spawn(async move { post(&http(), &url, "/v1/upgrade", &body, None).await });
    c.replicas[leader].kill();
    let _ = proposal.await;

    // Whatever became of it, asking again settles it exactly once.
    let out = c.tool("upgrade", &["--to", &v2]);
    assert!(out.status.success(), "{}", text(&out));
    c.replicas[leader].extra.clear();
    c.start_with_module(leader, std::path::Path::new(&kv2));
    c.wait_all_ready().await;
    wait_group_module(&c, &v2).await;
    c.wait_converged(Duration::from_secs(20)).await;
    for r in &c.replicas {
        let switched: Vec<_> = upgrade_lines(&r.stdout())
            .into_iter()
            .filter(|(_, l)| l.contains("switched"))
            .collect();
        assert_eq!(switched.len(), 1, "{}: {switched:?}", r.name);
    }
    assert!(ok_reply(&c, &incr("n")).await.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_an_upgrade_an_empty_replica_restores_a_v2_snapshot_and_a_rollback_returns_to_v1() {
    let (_etcd, mut c, kv2) = kv_group_and_kv2(20).await;
    let (v1, v2) = (sha256_hex(KV), sha256_hex(KV2));
    let writes = Arc::new(Mutex::new(BTreeMap::new()));
    for n in 0..30 {
        ok_reply(&c, &kv_put(&format!("k{n}"), "1")).await;
        writes.lock().await.insert(format!("k{n}"), "1".to_string());
    }
    let out = c.tool("upgrade", &["--module", &kv2, "--verify"]);
    assert!(out.status.success(), "{}", text(&out));
    // `already running` when a leadership change cut the first attempt off
    // and `dorado upgrade` proposed it again.
    assert!(
        text(&out).contains("all")
            && (text(&out).contains("switched") || text(&out).contains("already running")),
        "{}",
        text(&out)
    );
    wait_group_module(&c, &v2).await;
    for n in 30..80 {
        ok_reply(&c, &kv_put(&format!("k{n}"), "2")).await;
        writes.lock().await.insert(format!("k{n}"), "2".to_string());
    }
    assert!(ok_reply(&c, &incr("n")).await.ok);
    c.wait_converged(Duration::from_secs(20)).await;

    // A recreated pod with only v2 in its ConfigMap restores a snapshot that
    // v2 took, then replays the tail.
    c.replicas[2].kill();
    c.start_with_module(2, std::path::Path::new(&kv2));
    c.wait_ready(2).await;
    let (_, hash) = c.wait_converged(Duration::from_secs(20)).await;
    let status = c.status(2).await.unwrap();
    assert!(
        status.snapshot_index > 30,
        "restored snapshot {}",
        status.snapshot_index
    );
    assert!(c.replicas[2].stdout().contains("restored snapshot"));
    assert_eq!(status.hash, hash);
    let trace = c.tmp.path().join("trace.log");
    std::fs::write(&trace, c.replicas[2].stdout()).unwrap();
    let out = c.tool("replay", &["--trace", trace.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("reference hashes match"),
        "{}",
        text(&out)
    );
    assert_all_readable(&c, &writes.lock().await.clone()).await;

    // Rollback: an upgrade back to v1's hash (it is in the store).
    let out = c.tool("upgrade", &["--to", &v1]);
    assert!(out.status.success(), "{}", text(&out));
    wait_group_module(&c, &v1).await;
    assert!(
        !ok_reply(&c, &incr("n")).await.ok,
        "incr still works after the rollback"
    );
    assert_all_readable(&c, &writes.lock().await.clone()).await;
}
