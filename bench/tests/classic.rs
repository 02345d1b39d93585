//! `--protocol classic` (the paper's 2016 scheme) against a real etcd:
//! three in-process replicas of the `kv` example, each with its own wasm
//! instance and trace file, driven through the same `Replica` trait the
//! client API uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dorado::host::{Host, HostConfig, Module};
use dorado::node::{Consistency, NodeConfig, SubmitError};
use dorado::replica::Replica;
use dorado::store::{EtcdStore, EtcdStoreOptions};
use dorado::trace::TraceWriter;
use dorado_bench::classic::{
    ClassicConfig, ClassicError, ClassicNode, RunningClassic, start_classic,
};
use dorado_core::{ClientTag, Command, Outcome};
use dorado_testkit::etcd_process::EtcdProcess;

const GROUP: &str = "calc";

struct Group {
    etcd: EtcdProcess,
    namespace: String,
    module: Module,
    dir: tempfile::TempDir,
    nodes: Vec<Option<RunningClassic>>,
    starts: usize,
}

impl Group {
    async fn new(namespace: &str) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("DORADO_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .try_init();
        let etcd = EtcdProcess::start().await.expect("start etcd");
        let host = Host::new(HostConfig::default()).expect("host");
        let module = host.load(dorado_testkit::examples::KV).expect("kv loads");
        Group {
            etcd,
            namespace: namespace.into(),
            module,
            dir: tempfile::tempdir().expect("tempdir"),
            nodes: Vec::new(),
            starts: 0,
        }
    }

    fn name(i: usize) -> String {
        format!("calc-{i}")
    }

    fn trace_path(&self, i: usize, start: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.{start}.trace", Self::name(i)))
    }

    async fn store(&self) -> EtcdStore {
        EtcdStore::connect(
            &self.etcd.client_urls(),
            &self.namespace,
            GROUP,
            EtcdStoreOptions::default(),
        )
        .await
        .expect("connect etcd")
    }

    async fn try_start(&mut self, i: usize) -> Result<RunningClassic, ClassicError> {
        let name = Self::name(i);
        let mut node = NodeConfig::new(&self.namespace, GROUP, &name, &format!("{name}:7070"));
        node.module_sha256 = self.module.sha256().to_string();
        node.abi_version = self.module.abi_version();
        node.lease_ttl = Duration::from_secs(2);
        node.submit_timeout = Duration::from_secs(20);
        let config = ClassicConfig::new(node, 3);
        self.starts += 1;
        let file = std::fs::File::create(self.trace_path(i, self.starts)).expect("trace file");
        let sm = self.module.instantiate().expect("instantiate kv");
        start_classic(
            self.store().await,
            sm,
            config,
            TraceWriter::new(file),
            Default::default(),
        )
        .await
    }

    /// Start replica `i` with empty state; returns the trace file's number.
    async fn start(&mut self, i: usize) -> usize {
        let running = self.try_start(i).await.expect("classic replica starts");
        if self.nodes.len() <= i {
            self.nodes.resize_with(i + 1, || None);
        }
        self.nodes[i] = Some(running);
        self.starts
    }

    fn node(&self, i: usize) -> ClassicNode {
        self.nodes[i].as_ref().expect("replica running").node()
    }

    fn replica(&self, i: usize) -> Arc<dyn Replica> {
        self.nodes[i].as_ref().expect("replica running").replica()
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect()
    }

    async fn wait_ready(&self) {
        let alive = self.alive();
        wait_until(Duration::from_secs(30), "every replica ready", || {
            alive.iter().all(|i| self.node(*i).is_ready())
        })
        .await;
    }

    /// The replica every live one names as leader of the installed view.
    async fn wait_leader(&self) -> usize {
        let alive = self.alive();
        let mut found = None;
        wait_until(Duration::from_secs(30), "one agreed, live leader", || {
            let statuses: Vec<_> = alive.iter().map(|i| self.node(*i).status()).collect();
            let Some(leader) = statuses[0].leader.clone() else {
                return false;
            };
            let agreed = statuses.iter().all(|s| {
                s.leader.as_deref() == Some(leader.as_str()) && s.epoch == statuses[0].epoch
            });
            let leading = alive
                .iter()
                .find(|i| Self::name(**i) == leader)
                .filter(|i| self.node(**i).is_leader());
            found = leading.copied();
            agreed && found.is_some()
        })
        .await;
        found.expect("leader")
    }

    /// Wait until every live replica applied the same index with the same
    /// hash, at least `min`; returns (index, hash).
    async fn wait_converged(&self, min: u64) -> (u64, String) {
        let alive = self.alive();
        let mut last = (0, String::new());
        wait_until(Duration::from_secs(30), "replicas converge", || {
            let s: Vec<_> = alive.iter().map(|i| self.node(*i).status()).collect();
            last = (s[0].applied_index, s[0].hash.clone());
            s[0].applied_index >= min
                && s.iter()
                    .all(|x| x.applied_index == s[0].applied_index && x.hash == s[0].hash)
        })
        .await;
        last
    }

    async fn shutdown_all(&mut self) {
        for slot in &mut self.nodes {
            if let Some(r) = slot.take() {
                r.shutdown(Duration::from_secs(2)).await;
            }
        }
    }
}

async fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn put(client: &str, seq: u64, key: &str, value: &str) -> Command {
    Command {
        client: Some(ClientTag {
            id: client.into(),
            seq,
        }),
        payload: serde_json::json!({"op": "put", "key": key, "value": value})
            .to_string()
            .into_bytes(),
    }
}

fn get(key: &str) -> Vec<u8> {
    serde_json::json!({"op": "get", "key": key})
        .to_string()
        .into_bytes()
}

fn command_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" client="))
        .map(str::to_owned)
        .collect()
}

async fn snapshots_equal(g: &Group) {
    let mut snaps = Vec::new();
    for i in g.alive() {
        snaps.push(g.node(i).snapshot().await.expect("snapshot"));
    }
    assert!(
        snaps.iter().all(|s| s == &snaps[0]),
        "snapshots differ between replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_agree_on_the_order_of_concurrent_commands() {
    let mut g = Group::new("agree").await;
    let traces: Vec<usize> = {
        let mut t = Vec::new();
        for i in 0..3 {
            t.push(g.start(i).await);
        }
        t
    };
    g.wait_ready().await;
    g.wait_leader().await;

    // A fourth id cannot join a group of three: majorities would not intersect.
    match g.try_start(3).await {
        Err(ClassicError::GroupFull { group_size: 3, .. }) => {}
        other => panic!("a fourth replica was not refused: {other:?}"),
    }

    let replicas: Vec<Arc<dyn Replica>> = (0..3).map(|i| g.replica(i)).collect();
    let mut clients = Vec::new();
    for c in 0..6u64 {
        let replicas = replicas.clone();
        clients.push(tokio::spawn(async move {
            let mut indexes = Vec::new();
            for seq in 1..=25u64 {
                // Every client talks to every replica: followers write the
                // request unordered, the leader orders it.
                let r = &replicas[((c + seq) % 3) as usize];
                let cmd = put(
                    &format!("client-{c}"),
                    seq,
                    &format!("k{}", seq % 7),
                    &format!("{c}-{seq}"),
                );
                let reply = r
                    .submit(cmd)
                    .await
                    .unwrap_or_else(|e| panic!("client {c} seq {seq}: {e}"));
                assert!(matches!(reply.outcome, Outcome::Reply(_)), "{reply:?}");
                assert!(!reply.duplicate);
                indexes.push(reply.index);
            }
            indexes
        }));
    }
    let mut all = Vec::new();
    for t in clients {
        all.extend(t.await.expect("client task"));
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all.len(),
        150,
        "every command got its own consensus instance"
    );

    let (applied, hash) = g.wait_converged(150).await;
    assert_eq!(hash.len(), 64);
    snapshots_equal(&g).await;

    // A retried command (same client id and seq) is answered from the
    // session table, at any replica, and not applied twice.
    let again = g
        .node(1)
        .submit(put("client-0", 25, "k4", "0-25"))
        .await
        .expect("retry answered");
    assert!(again.duplicate, "{again:?}");

    // Linearizable reads at any replica see the last acknowledged write.
    for i in 0..3 {
        let v = g
            .node(i)
            .query(get("k4"), Consistency::Linearizable)
            .await
            .expect("query");
        assert!(!v.is_empty());
    }
    let status = g.node(0).status();
    assert_eq!(status.protocol, dorado_bench::Protocol::Classic);

    // The scheme's footprint in etcd: one acceptance per replica per
    // instance, one unordered request per command a follower received.
    let store = g.store().await;
    let accepts = store.raw_keys("classic/accept/").await.expect("keys");
    assert!(
        accepts.len() as u64 >= 2 * applied,
        "{} acceptances for {applied} instances",
        accepts.len()
    );
    let requests = store.raw_keys("classic/requests/").await.expect("keys");
    assert!(
        requests.len() >= 50,
        "only {} unordered requests",
        requests.len()
    );
    assert!(
        store.raw_keys("log/").await.expect("keys").is_empty(),
        "classic wrote into the DORADO key space"
    );

    g.shutdown_all().await;
    // Same trace on every replica, line for line (index, client, command,
    // reply, hash chain).
    let lines: Vec<Vec<String>> = (0..3)
        .map(|i| command_lines(&g.trace_path(i, traces[i])))
        .collect();
    assert_eq!(lines[0].len(), 151, "150 commands and the retry");
    assert_eq!(lines[0], lines[1]);
    assert_eq!(lines[0], lines[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_is_replaced_by_a_view_change_and_nothing_acknowledged_is_lost() {
    let mut g = Group::new("failover").await;
    for i in 0..3 {
        g.start(i).await;
    }
    g.wait_ready().await;
    let leader = g.wait_leader().await;
    let view_before = g.node(leader).status().epoch.expect("view");

    for seq in 1..=20u64 {
        let r = g.node((seq % 3) as usize);
        r.submit(put("before", seq, &format!("b{seq}"), "x"))
            .await
            .expect("acknowledged before the crash");
    }

    // Crash the leader: no lease revoke; its member key expires with the TTL.
    let running = g.nodes[leader].take().expect("leader running");
    let crashed = Instant::now();
    running.abort().await;

    // A survivor keeps taking commands; the first waits for the view change.
    let survivor = g.alive()[0];
    let reply = g
        .node(survivor)
        .submit(put("after", 1, "a1", "y"))
        .await
        .expect("a survivor orders commands after the view change");
    let failover = crashed.elapsed();
    assert!(
        failover < Duration::from_secs(10),
        "first write after the crash took {failover:?}"
    );
    let new_leader = g.wait_leader().await;
    assert_ne!(new_leader, leader);
    let status = g.node(new_leader).status();
    assert!(status.epoch.expect("view") > view_before, "{status:?}");
    assert!(reply.index > 20);

    for seq in 2..=20u64 {
        let r = g.node(g.alive()[(seq % 2) as usize]);
        r.submit(put("after", seq, &format!("a{seq}"), "y"))
            .await
            .expect("commands keep flowing in the new view");
    }
    g.wait_converged(40).await;
    snapshots_equal(&g).await;
    for i in g.alive() {
        for seq in [1u64, 10, 20] {
            let v = g
                .node(i)
                .query(get(&format!("b{seq}")), Consistency::Linearizable)
                .await
                .expect("query");
            assert!(
                String::from_utf8_lossy(&v).contains('x'),
                "acknowledged write b{seq} lost at replica {i}: {}",
                String::from_utf8_lossy(&v)
            );
        }
    }

    // The crashed replica comes back empty, replays, and does not lead the
    // view it led before; the group agrees again.
    g.start(leader).await;
    g.wait_ready().await;
    let (_, hash) = g.wait_converged(40).await;
    assert_eq!(g.node(leader).status().hash, hash);
    snapshots_equal(&g).await;
    g.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_recreated_empty_replays_the_whole_history() {
    let mut g = Group::new("recover").await;
    for i in 0..3 {
        g.start(i).await;
    }
    g.wait_ready().await;
    let leader = g.wait_leader().await;
    let follower = (leader + 1) % 3;

    for seq in 1..=60u64 {
        let r = g.node((seq % 3) as usize);
        r.submit(put(
            "hist",
            seq,
            &format!("h{}", seq % 11),
            &seq.to_string(),
        ))
        .await
        .expect("history");
    }
    let (applied, _) = g.wait_converged(60).await;

    // The follower's pod is deleted (graceful) and recreated with no state.
    let running = g.nodes[follower].take().expect("follower running");
    running.shutdown(Duration::from_secs(2)).await;
    // Meanwhile the group goes on with two replicas (still a majority).
    for seq in 61..=70u64 {
        g.node(leader)
            .submit(put("hist", seq, "during", &seq.to_string()))
            .await
            .expect("two of three still decide");
    }
    let restart = g.start(follower).await;
    g.wait_ready().await;
    let (applied_after, hash) = g.wait_converged(applied + 10).await;
    assert_eq!(applied_after, applied + 10);
    assert_eq!(g.node(follower).status().hash, hash);
    snapshots_equal(&g).await;

    // It replayed every instance from the first (no snapshots in this scheme).
    let path = g.trace_path(follower, restart);
    wait_until(Duration::from_secs(5), "the trace to be written", || {
        command_lines(&path).len() as u64 == applied_after
    })
    .await;
    let lines = command_lines(&path);
    assert!(lines[0].starts_with("idx=1.0 "), "{}", lines[0]);

    // And it serves again: its own command and a linearizable read.
    g.node(follower)
        .submit(put("hist", 71, "after", "z"))
        .await
        .expect("recreated replica takes commands");
    let v = g
        .node(follower)
        .query(get("during"), Consistency::Linearizable)
        .await
        .expect("query");
    assert!(
        String::from_utf8_lossy(&v).contains("70"),
        "{}",
        String::from_utf8_lossy(&v)
    );

    // Draining refuses new commands with a clear error.
    let node = g.node(follower);
    let running = g.nodes[follower].take().expect("running");
    let stop = tokio::spawn(running.shutdown(Duration::from_secs(2)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    match node.submit(put("late", 1, "x", "y")).await {
        Err(SubmitError::ShuttingDown) | Ok(_) => {}
        Err(e) => panic!("unexpected error while draining: {e}"),
    }
    stop.await.expect("shutdown");
    g.shutdown_all().await;
}
