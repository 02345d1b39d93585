//! Old logs stay readable (entry format, `dorado_core::entry`): a group whose
//! etcd key space already holds a log of version-1 (uncompressed) entries is
//! recovered by today's replicas with the hash chain that log gives, and the
//! group then writes compressed (version-2) entries after it. Real etcd, real
//! `dorado run` processes, the `kv` example.
//!
//! The old log is checked-in bytes (`runtime/core/fixtures/entry-v1/`, written
//! by the encoder before version 2 existed), not bytes made by today's code,
//! so the test also proves the stored format did not drift.

use std::time::Duration;

use dorado::host::{Host, HostConfig};
use dorado::store::{EtcdStore, EtcdStoreOptions, format_index};
use dorado_core::{ChainHash, Entry, ReplicaState, Store};
use dorado_testkit::cluster::{Cluster, http, kv_get, kv_put, post, submit_retrying};
use dorado_testkit::etcd_process::EtcdProcess;
use dorado_testkit::examples;

const BIN: &str = env!("CARGO_BIN_EXE_dorado");

/// A log written before entry compression existed: a 120-command batch of
/// 100-byte puts, a no-op, a small mixed batch, a rejected command.
const OLD_LOG: [&[u8]; 4] = [
    include_bytes!("../core/fixtures/entry-v1/1.bin"),
    include_bytes!("../core/fixtures/entry-v1/2.bin"),
    include_bytes!("../core/fixtures/entry-v1/3.bin"),
    include_bytes!("../core/fixtures/entry-v1/4.bin"),
];

/// `dorado run`'s default session expiry (the fixture log is far too short
/// for it to matter, but the state must be built with the same rules).
const SESSION_EXPIRY: u64 = 1_000_000;

/// The hash chain after applying `log` to a fresh `kv` instance, offline:
/// what every replica must report after recovering it.
fn offline_hash(log: &[Vec<u8>]) -> ChainHash {
    let host = Host::new(HostConfig::default()).expect("host");
    let kv_module = host.load(examples::KV).expect("kv loads");
    let mut kv = kv_module.instantiate().expect("kv instantiates");
    let mut state = ReplicaState::new(SESSION_EXPIRY, kv_module.sha256().to_owned());
    for (i, bytes) in log.iter().enumerate() {
        let entry = Entry::decode(bytes).expect("entry decodes");
        state
            .apply(i as u64 + 1, &entry, &mut kv)
            .expect("applies in order");
    }
    state.hash
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_log_of_version_1_entries_is_recovered_then_extended_with_compressed_entries() {
    let etcd = EtcdProcess::start().await.expect("start etcd");
    let mut c = Cluster::new(BIN, etcd.client_urls(), examples::KV, 3, 0);
    let store = EtcdStore::connect(
        &c.etcd_urls,
        &c.namespace,
        &c.group,
        EtcdStoreOptions::default(),
    )
    .await
    .expect("connect to etcd");

    // The old log, as an old leader left it (no replica has run yet).
    for (i, bytes) in OLD_LOG.iter().enumerate() {
        assert_eq!(bytes[..3], *b"DE\x01", "fixture {} is version 1", i + 1);
        store
            .put_raw(&format!("log/{}", format_index(i as u64 + 1)), bytes)
            .await
            .expect("write old entry");
    }
    let old: Vec<Vec<u8>> = OLD_LOG.iter().map(|b| b.to_vec()).collect();
    let expected = offline_hash(&old);

    c.start_all();
    c.wait_all_ready().await;
    let leader = c.wait_leader().await;
    let (applied, hash) = c.wait_converged(Duration::from_secs(30)).await;
    assert_eq!(
        applied, 4,
        "the old log has 4 entries and nothing else was written"
    );
    assert_eq!(
        hash,
        expected.to_string(),
        "hash chain of the recovered old log"
    );
    // The old batch's last put of k00000001 (seq 81) is the state.
    let r = post(
        &http(),
        &c.replicas[leader].url(),
        "/v1/query",
        &kv_get("k00000001"),
        None,
    )
    .await
    .expect("query");
    assert!(r.body.contains("v81-legacy entry"), "{}", r.body);
    // A retry of the old log's last command of `legacy-writer` (seq 121, a
    // delete) is answered from the recovered session table, not applied again.
    let urls = c.urls();
    let retry = submit_retrying(
        &urls,
        &kv_put("k00000002", "changed"),
        "legacy-writer",
        121,
        Duration::from_secs(10),
    )
    .await
    .expect("answer to a retry");
    assert!(
        retry.duplicate && retry.body.contains("deleted"),
        "{retry:?}"
    );

    // New writes: one big compressible command (always its own compressed
    // entry, 700 bytes of version-1 encoding) and concurrent small ones.
    let big = kv_put("big", &"compressible text ".repeat(36));
    let r = submit_retrying(&urls, &big, "new-writer", 1, Duration::from_secs(10))
        .await
        .expect("answer to the big command");
    assert_eq!(r.status, 200, "{}", r.body);
    let writers: Vec<_> = (0..24u64)
        .map(|w| {
            let urls = urls.clone();
            tokio::spawn(async move {
                let body = kv_put(&format!("n{w}"), &format!("value {w} {}", "y".repeat(80)));
                let r = submit_retrying(&urls, &body, &format!("w{w}"), 1, Duration::from_secs(10))
                    .await
                    .unwrap_or_else(|| panic!("writer {w} got no answer"));
                assert_eq!(r.status, 200, "{}", r.body);
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer task");
    }
    let (applied, hash) = c.wait_converged(Duration::from_secs(30)).await;
    assert!(applied >= 6, "applied {applied}");

    // What is stored: the old entries untouched, new ones compressed when big.
    let log: Vec<Vec<u8>> = store
        .read_log(1, applied, 10_000)
        .await
        .expect("read the log")
        .into_iter()
        .enumerate()
        .map(|(i, (index, bytes))| {
            assert_eq!(index, i as u64 + 1);
            bytes
        })
        .collect();
    assert_eq!(log.len() as u64, applied);
    assert_eq!(log[..4], old[..], "the old entries are never rewritten");
    let versions: Vec<u8> = log.iter().map(|b| b[2]).collect();
    assert!(
        versions[4..].contains(&2),
        "no compressed entry among {versions:?}"
    );
    for bytes in &log[4..] {
        let entry = Entry::decode(bytes).expect("new entry decodes");
        assert_eq!(bytes[2] == 2, bytes.len() < entry.uncompressed_len());
    }
    // The whole mixed log, applied offline, gives the replicas' chain.
    assert_eq!(hash, offline_hash(&log).to_string());

    // `dorado replay` reads the mixed log and agrees with every replica.
    let out = c.tool(
        "replay",
        &["--module", c.module.to_str().expect("utf-8 path")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("final hash {hash}")), "{text}");
    assert!(text.contains("reference hashes match"), "{text}");
}
