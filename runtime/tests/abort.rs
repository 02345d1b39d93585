//! A replica that has been stopped never writes to the store again.
//!
//! In-process replicas (the simulation, the demo, tests) "crash" by being
//! aborted. If a task the replica spawned outlived it — above all an append
//! or a snapshot write its core loop started — the dead replica would still
//! write: an entry under a leadership it no longer holds, a snapshot that
//! truncates the log, a keep-alive that keeps a dead leader's lease. This test
//! makes a replica lead with an append and a snapshot write held in flight
//! inside the store, stops it in each way a replica stops, then releases the
//! held calls and lets a minute of (paused, virtual) time pass: any store call
//! after the stop instant is a leaked task. The last case leaves the replica
//! running, to show that the held writes do reach the store when nothing
//! stops them (so the other cases could fail).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dorado::node::{self, NodeConfig, RunningNode};
use dorado::store::MemoryStore;
use dorado::trace::TraceWriter;
use dorado_core::{
    AppendOutcome, Command, Epoch, Index, LeaderRecord, Leadership, LeaseId, MemberRecord, Meta,
    Rejection, StateMachine, Store, StoreResult,
};
use futures::stream::BoxStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the recording store saw, and the gates that hold writes in flight.
struct Probe {
    /// Set at the instant the replica counts as stopped.
    sealed: AtomicBool,
    /// Store calls that reached the store after that instant.
    after_seal: Mutex<Vec<&'static str>>,
    appends_open: watch::Sender<bool>,
    snapshots_open: watch::Sender<bool>,
    /// Appends and snapshot writes held at a closed gate right now.
    held_appends: AtomicUsize,
    held_snapshots: AtomicUsize,
}

impl Probe {
    fn new() -> Arc<Self> {
        Arc::new(Probe {
            sealed: AtomicBool::new(false),
            after_seal: Mutex::new(Vec::new()),
            appends_open: watch::channel(true).0,
            snapshots_open: watch::channel(false).0,
            held_appends: AtomicUsize::new(0),
            held_snapshots: AtomicUsize::new(0),
        })
    }

    fn reached(&self, call: &'static str) {
        if self.sealed.load(Ordering::SeqCst) {
            self.after_seal.lock().unwrap().push(call);
        }
    }

    fn seal(&self) {
        self.sealed.store(true, Ordering::SeqCst);
    }

    fn open_gates(&self) {
        self.appends_open.send_replace(true);
        self.snapshots_open.send_replace(true);
    }

    fn after_seal(&self) -> Vec<&'static str> {
        self.after_seal.lock().unwrap().clone()
    }
}

/// Wait at `gate` (counting the wait in `held`) until it opens.
async fn pass(gate: &watch::Sender<bool>, held: &AtomicUsize) {
    let mut open = gate.subscribe();
    held.fetch_add(1, Ordering::SeqCst);
    // Decremented also when the waiting call is dropped (its task stopped).
    struct Leave<'a>(&'a AtomicUsize);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _leave = Leave(held);
    let _ = open.wait_for(|open| *open).await;
}

/// The in-memory store, recording every call that reaches it after the seal;
/// appends and snapshot writes wait at their gates first.
struct Recording {
    inner: MemoryStore,
    probe: Arc<Probe>,
}

impl Store for Recording {
    async fn init_meta(&self, meta: &Meta) -> StoreResult<Meta> {
        self.probe.reached("init_meta");
        self.inner.init_meta(meta).await
    }
    async fn meta(&self) -> StoreResult<Option<Meta>> {
        self.probe.reached("meta");
        self.inner.meta().await
    }
    async fn grant_lease(&self, ttl: Duration) -> StoreResult<LeaseId> {
        self.probe.reached("grant_lease");
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> StoreResult<()> {
        self.probe.reached("keep_alive");
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> StoreResult<()> {
        self.probe.reached("revoke_lease");
        self.inner.revoke_lease(lease).await
    }
    async fn campaign(&self, lease: LeaseId, leader: &LeaderRecord) -> StoreResult<Option<Epoch>> {
        self.probe.reached("campaign");
        self.inner.campaign(lease, leader).await
    }
    async fn leader(&self) -> StoreResult<Option<Leadership>> {
        self.probe.reached("leader");
        self.inner.leader().await
    }
    async fn depose(&self, epoch: Epoch) -> StoreResult<bool> {
        self.probe.reached("depose");
        self.inner.depose(epoch).await
    }
    fn watch_leader(&self) -> BoxStream<'static, StoreResult<Option<Leadership>>> {
        self.probe.reached("watch_leader");
        self.inner.watch_leader()
    }
    async fn append(&self, epoch: Epoch, index: Index, entry: &[u8]) -> StoreResult<AppendOutcome> {
        pass(&self.probe.appends_open, &self.probe.held_appends).await;
        self.probe.reached("append");
        self.inner.append(epoch, index, entry).await
    }
    async fn read_log(
        &self,
        from: Index,
        to: Index,
        limit: usize,
    ) -> StoreResult<Vec<(Index, Vec<u8>)>> {
        self.probe.reached("read_log");
        self.inner.read_log(from, to, limit).await
    }
    async fn last_index(&self, from: Index) -> StoreResult<Option<Index>> {
        self.probe.reached("last_index");
        self.inner.last_index(from).await
    }
    fn watch_log(&self, from: Index) -> BoxStream<'static, StoreResult<(Index, Vec<u8>)>> {
        self.probe.reached("watch_log");
        self.inner.watch_log(from)
    }
    async fn delete_log_below(&self, below: Index) -> StoreResult<()> {
        self.probe.reached("delete_log_below");
        self.inner.delete_log_below(below).await
    }
    async fn put_snapshot(&self, index: Index, bytes: &[u8]) -> StoreResult<()> {
        pass(&self.probe.snapshots_open, &self.probe.held_snapshots).await;
        self.probe.reached("put_snapshot");
        self.inner.put_snapshot(index, bytes).await
    }
    async fn put_module(&self, sha256: &str, bytes: &[u8]) -> StoreResult<()> {
        self.probe.reached("put_module");
        self.inner.put_module(sha256, bytes).await
    }
    async fn get_module(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>> {
        self.probe.reached("get_module");
        self.inner.get_module(sha256).await
    }
    async fn newest_snapshot_index(&self) -> StoreResult<Option<Index>> {
        self.probe.reached("newest_snapshot_index");
        self.inner.newest_snapshot_index().await
    }
    async fn newest_snapshot(&self) -> StoreResult<Option<(Index, Vec<u8>)>> {
        self.probe.reached("newest_snapshot");
        self.inner.newest_snapshot().await
    }
    async fn delete_snapshots_below(&self, below: Index) -> StoreResult<()> {
        self.probe.reached("delete_snapshots_below");
        self.inner.delete_snapshots_below(below).await
    }
    async fn publish_member(
        &self,
        lease: LeaseId,
        replica: &str,
        record: &MemberRecord,
    ) -> StoreResult<()> {
        self.probe.reached("publish_member");
        self.inner.publish_member(lease, replica, record).await
    }
    async fn members(&self) -> StoreResult<Vec<(String, MemberRecord)>> {
        self.probe.reached("members");
        self.inner.members().await
    }
}

/// A counter: every command adds one.
#[derive(Default)]
struct Counter(u64);

impl StateMachine for Counter {
    fn apply(&mut self, _command: &[u8]) -> Result<Vec<u8>, Rejection> {
        self.0 += 1;
        Ok(self.0.to_le_bytes().to_vec())
    }
    fn query(&mut self, _query: &[u8]) -> Result<Vec<u8>, Rejection> {
        Ok(self.0.to_le_bytes().to_vec())
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, Rejection> {
        Ok(self.0.to_le_bytes().to_vec())
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), Rejection> {
        let bytes: [u8; 8] = snapshot.try_into().unwrap_or_default();
        self.0 = u64::from_le_bytes(bytes);
        Ok(())
    }
}

fn command() -> Command {
    Command {
        client: None,
        payload: b"+1".to_vec(),
    }
}

/// Wait (in virtual time) until `cond` holds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within 30 s"));
}

const SNAPSHOT_EVERY: u64 = 4;

/// A leader whose snapshot write (at index 4) and an append (index 5) are
/// both held inside the store.
async fn leader_with_writes_in_flight(
    shutdown: &CancellationToken,
) -> (RunningNode<Recording>, Arc<Probe>) {
    let probe = Probe::new();
    let store = Recording {
        inner: MemoryStore::new(),
        probe: probe.clone(),
    };
    let mut config = NodeConfig::new("test", "abort", "r0", "127.0.0.1:7070");
    config.snapshot_every = SNAPSHOT_EVERY;
    config.module_sha256 = "counter".into();
    let running = node::start(
        store,
        Counter::default(),
        config,
        TraceWriter::new(std::io::sink()),
        shutdown.clone(),
    )
    .await
    .expect("replica starts");
    let node = running.node.clone();
    until("the replica leads", || node.is_leader()).await;
    for _ in 0..SNAPSHOT_EVERY {
        node.submit(command()).await.expect("command applied");
    }
    until("the snapshot write is held in the store", || {
        probe.held_snapshots.load(Ordering::SeqCst) == 1
    })
    .await;
    probe.appends_open.send_replace(false);
    let client = node.clone();
    tokio::spawn(async move {
        let _ = client.submit(command()).await;
    });
    until("an append is held in the store", || {
        probe.held_appends.load(Ordering::SeqCst) == 1
    })
    .await;
    (running, probe)
}

/// How the replica stops.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// `RunningNode::abort`.
    Abort,
    /// `RunningNode::shutdown`: drain, stop, resign.
    Shutdown,
    /// The shutdown token passed to `node::start` is cancelled; the
    /// `RunningNode` is kept (nothing else stops the replica).
    Token,
    /// The task that owns the `RunningNode` is aborted (drops it).
    DropOwner,
    /// Not stopped at all: the control case.
    Never,
}

/// Stop the replica as `how` says, then release the held writes and let a
/// minute pass; returns the store calls made after the stop instant.
async fn calls_after_stop(how: Stop) -> Vec<&'static str> {
    let shutdown = CancellationToken::new();
    let (running, probe) = leader_with_writes_in_flight(&shutdown).await;
    let mut kept = None;
    match how {
        Stop::Abort => running.abort().await,
        Stop::Shutdown => running.shutdown(Duration::from_millis(500)).await,
        Stop::Token => {
            shutdown.cancel();
            kept = Some(running);
        }
        Stop::DropOwner => {
            let owner = tokio::spawn(async move {
                let _running = running;
                std::future::pending::<()>().await
            });
            owner.abort();
            assert!(owner.await.unwrap_err().is_cancelled());
        }
        Stop::Never => kept = Some(running),
    }
    probe.seal();
    probe.open_gates();
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(kept);
    probe.after_seal()
}

#[tokio::test(start_paused = true)]
async fn an_aborted_replica_never_writes_again() {
    let calls = calls_after_stop(Stop::Abort).await;
    assert!(calls.is_empty(), "store calls after abort: {calls:?}");
}

#[tokio::test(start_paused = true)]
async fn a_replica_shut_down_gracefully_never_writes_again() {
    let calls = calls_after_stop(Stop::Shutdown).await;
    assert!(calls.is_empty(), "store calls after shutdown: {calls:?}");
}

#[tokio::test(start_paused = true)]
async fn a_replica_whose_shutdown_token_is_cancelled_never_writes_again() {
    let calls = calls_after_stop(Stop::Token).await;
    assert!(
        calls.is_empty(),
        "store calls after the shutdown token was cancelled: {calls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_replica_whose_owner_task_is_aborted_never_writes_again() {
    let calls = calls_after_stop(Stop::DropOwner).await;
    assert!(
        calls.is_empty(),
        "store calls after the owning task was aborted: {calls:?}"
    );
}

/// The control: the same held writes reach the store when the replica is not
/// stopped, so each case above would see them if a task leaked.
#[tokio::test(start_paused = true)]
async fn the_held_writes_reach_the_store_when_nothing_stops_the_replica() {
    let calls = calls_after_stop(Stop::Never).await;
    for write in ["append", "put_snapshot", "delete_log_below", "keep_alive"] {
        assert!(calls.contains(&write), "{write} not seen in {calls:?}");
    }
}
