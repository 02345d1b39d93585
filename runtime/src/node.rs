//! The replica driver: performs what the pure protocol core decides.
//!
//! One task (the *core loop*) owns everything that must change in one order:
//! the state machine, the replicated host state, the learner buffer and, while
//! this replica leads, the [`LeaderEngine`]. Everything else talks to it by
//! message, so there are no locks around the protocol state:
//!
//! ```text
//!  lease task ──(lease, LeaseLost)──┐
//!  election task ──(LeaderView, LeaderReady)──┐
//!  learner task ──(Learned, Restore)── bounded ─┤
//!  append tasks ──(AppendDone)──────────────────┼──► core loop ──► trace writer thread
//!  HTTP handlers ──(Submit, Query, WaitApplied)─┘        │
//!  health task (store reachability, catch-up) ◄─ shared ─┘
//!  read-index task: one store read answers every linearizable query that
//!  arrived before it started (`read_index.rs`)
//! ```
//!
//! Why the learner channel is bounded and the control channel is not: a
//! recovering replica may stream a million entries; the bounded channel gives
//! backpressure to the watch, while control messages (append results, leader
//! changes) must never wait behind that stream or the leader would stall.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use dorado_core::decide::{
    CampaignInputs, KeepAlive, LeaseDecision, LeaseTimer, Orphan, Progress, ProgressAction,
    Readiness, ReadyInputs, Replies, SnapshotPolicy, leader_base, may_campaign, view_ends_term,
};
use dorado_core::engine::LeaderConfig;
use dorado_core::entry::EncodeError;
use dorado_core::{
    Abandoned, AppliedEntry, Command, Entry, Epoch, Index, LeaderAction, LeaderEngine,
    LeaderRecord, Leadership, Learner, LeaseId, MemberRecord, Meta, Outcome, ReplicaState, Route,
    SnapshotData, StateMachine, Store, StoreError, engine::route,
};
use futures::StreamExt;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, gauge_value};
use crate::read_index::ReadIndex;
use crate::trace::{LogFormat, TraceFormatter, TraceWriter};
pub use crate::wire::{Protocol, Role, Status};

/// How a replica runs; everything `dorado run` configures.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Kubernetes namespace of the group (part of the key prefix).
    pub namespace: String,
    /// Group name.
    pub group: String,
    /// This replica's id (the pod name).
    pub replica: String,
    /// `host:port` other replicas and clients use to reach this one.
    pub advertise: String,
    /// Lease time-to-live: how long a dead leader blocks writes at most.
    pub lease_ttl: Duration,
    /// Store a snapshot every this many log entries (0 = never).
    pub snapshot_every: u64,
    /// Sessions idle for this many entries expire (written to `meta` by the first replica).
    pub session_expiry_entries: u64,
    /// Leader batching.
    pub leader: LeaderConfig,
    /// Trace format.
    pub log_format: LogFormat,
    /// sha256 of the loaded module.
    pub module_sha256: String,
    /// ABI version of the loaded module.
    pub abi_version: u32,
    /// How long a linearizable read or a forwarded write waits to catch up.
    pub catch_up_timeout: Duration,
    /// How long a client waits for its command to be applied.
    pub submit_timeout: Duration,
}

impl NodeConfig {
    /// Defaults for everything but identity and module.
    pub fn new(namespace: &str, group: &str, replica: &str, advertise: &str) -> Self {
        NodeConfig {
            namespace: namespace.into(),
            group: group.into(),
            replica: replica.into(),
            advertise: advertise.into(),
            lease_ttl: Duration::from_secs(2),
            snapshot_every: 10_000,
            session_expiry_entries: 1_000_000,
            leader: LeaderConfig::default(),
            log_format: LogFormat::Human,
            module_sha256: String::new(),
            abi_version: 1,
            catch_up_timeout: Duration::from_secs(5),
            submit_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a node could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The group's `meta` names another module: applying would diverge.
    #[error(
        "module mismatch for group {group}: this replica loaded sha256 {ours} but the group was created with sha256 {theirs}; refusing to apply (deploy the group's module or use a new group)"
    )]
    ModuleMismatch {
        /// Group name.
        group: String,
        /// Our module's hash.
        ours: String,
        /// The hash recorded in the group's meta.
        theirs: String,
    },
    /// The group uses another ordering protocol.
    #[error("group {group} was created with protocol {theirs}, this replica runs {ours}")]
    ProtocolMismatch {
        /// Group name.
        group: String,
        /// Ours.
        ours: String,
        /// The group's.
        theirs: String,
    },
    /// A snapshot or log entry in the store could not be decoded or restored.
    #[error("cannot recover state: {0}")]
    Recovery(String),
    /// The store failed in a way retrying cannot fix.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A command's result as the replica that answers saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitReply {
    /// Log index of the batch that carried it.
    pub index: Index,
    /// Reply or deterministic rejection.
    pub outcome: Outcome,
    /// True when this was a retry answered from the session table.
    pub duplicate: bool,
}

/// Why a command got no reply here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Another replica leads; send it there.
    #[error("not the leader; the leader is at {0}")]
    Forward(String),
    /// No leader right now (election in progress).
    #[error("no leader is elected right now; retry shortly")]
    NoLeader,
    /// The command was never ordered; retrying is safe.
    #[error("leadership changed before the command was ordered; retry")]
    NotOrdered,
    /// The command may or may not have been applied.
    #[error(
        "leadership changed while the command was being ordered; it may or may not be applied: retry with the same dorado-client-id and dorado-seq"
    )]
    Unknown,
    /// The replica is shutting down.
    #[error("replica is shutting down")]
    ShuttingDown,
    /// The command did not complete within the submit timeout.
    #[error("timed out after {0:?} waiting for the command to be applied")]
    Timeout(Duration),
    /// The command cannot be encoded as a log entry (e.g. a client id longer
    /// than 255 bytes); it was not appended, and retrying it unchanged fails alike.
    #[error("command refused: {0}")]
    Invalid(EncodeError),
}

/// Read consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Sees every write acknowledged before the read started.
    Linearizable,
    /// Local state, possibly behind.
    Stale,
}

/// Why a query failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The state machine refused the query.
    #[error("query rejected: {0}")]
    Rejected(String),
    /// The linearizable read could not confirm the committed index.
    #[error("cannot confirm the committed index: {0}")]
    Store(StoreError),
    /// The replica did not catch up in time.
    #[error("replica did not catch up to index {index} within {timeout:?}")]
    Behind {
        /// Index it needed.
        index: Index,
        /// How long it waited.
        timeout: Duration,
    },
    /// The replica is shutting down.
    #[error("replica is shutting down")]
    ShuttingDown,
}

struct Shared {
    config: NodeConfig,
    metrics: Metrics,
    applied: AtomicU64,
    commit: AtomicU64,
    ready: AtomicBool,
    caught_up: AtomicBool,
    draining: AtomicBool,
    leading: AtomicBool,
    snapshotting: AtomicBool,
    /// No progress for a while although the store is ahead: maybe a gap left by
    /// a leader that died mid-append, which only a new leader fills. Such a
    /// replica may campaign even though it is not caught up.
    stuck: AtomicBool,
    /// Why this replica stopped applying (corrupt entry, unwritable trace, ...).
    fatal: Mutex<Option<String>>,
    /// The lease task revokes the lease (leadership passes to another
    /// replica): the core turned fatal (then no lease is taken again), or the
    /// store names this replica leader although it does not lead ([`Orphan`]).
    resign: Notify,
    /// The election task won and is reading the log before leading.
    preparing: AtomicBool,
    status: Mutex<Status>,
    store_error: Mutex<Option<String>>,
    resubscribe: Notify,
}

impl Shared {
    fn set_store_error(&self, e: Option<&StoreError>) {
        if let Ok(mut s) = self.store_error.lock() {
            *s = e.map(ToString::to_string);
        }
    }

    fn update_ready(&self, lease_held: bool) {
        let fatal = self.fatal.lock().map(|f| f.is_some()).unwrap_or(true);
        let store_ok = self
            .store_error
            .lock()
            .map(|e| e.is_none())
            .unwrap_or(false);
        let ready = ReadyInputs {
            lease_held,
            store_ok,
            fatal,
            caught_up: self.caught_up.load(Ordering::Acquire),
            draining: self.draining.load(Ordering::Acquire),
        }
        .ready();
        self.ready.store(ready, Ordering::Release);
        self.metrics.ready.set(i64::from(ready));
    }
}

enum Msg {
    Submit {
        command: Command,
        reply: oneshot::Sender<Result<SubmitReply, SubmitError>>,
    },
    Query {
        query: Vec<u8>,
        min_index: Index,
        reply: oneshot::Sender<Result<Vec<u8>, QueryError>>,
    },
    WaitApplied {
        index: Index,
        reply: oneshot::Sender<()>,
    },
    AppendDone {
        epoch: Epoch,
        index: Index,
        result: Result<dorado_core::AppendOutcome, StoreError>,
        elapsed: Duration,
    },
    LeaderView(Option<Leadership>),
    LeaderReady {
        epoch: Epoch,
        base: Index,
        last: Index,
        entries: Vec<(Index, Vec<u8>)>,
    },
    LeaseLost,
    Drain {
        reply: oneshot::Sender<()>,
    },
    Snapshot {
        reply: oneshot::Sender<Option<(Index, Vec<u8>)>>,
    },
}

enum Learned {
    Entry(Index, Vec<u8>),
    Restore(SnapshotData),
}

/// Handle to a running replica (cheap to clone).
#[derive(Clone)]
pub struct Node {
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
    /// What a linearizable query waits for (see `read_index`).
    read_index: ReadIndex,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("replica", &self.shared.config.replica)
            .finish()
    }
}

impl Node {
    /// Order a command and wait for its outcome (leader only; followers get
    /// [`SubmitError::Forward`]).
    pub async fn submit(&self, command: Command) -> Result<SubmitReply, SubmitError> {
        command.validate().map_err(SubmitError::Invalid)?;
        if self.shared.draining.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Submit { command, reply })
            .map_err(|_| SubmitError::ShuttingDown)?;
        let timeout = self.shared.config.submit_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(SubmitError::ShuttingDown),
            Err(_) => Err(SubmitError::Timeout(timeout)),
        }
    }

    /// Run a read-only query.
    pub async fn query(
        &self,
        query: Vec<u8>,
        consistency: Consistency,
    ) -> Result<Vec<u8>, QueryError> {
        let min_index = match consistency {
            Consistency::Stale => 0,
            Consistency::Linearizable => match self.read_index.read().await {
                Some(index) => index.map_err(QueryError::Store)?,
                None => return Err(QueryError::ShuttingDown),
            },
        };
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Query {
                query,
                min_index,
                reply,
            })
            .map_err(|_| QueryError::ShuttingDown)?;
        let timeout = self.shared.config.catch_up_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(QueryError::ShuttingDown),
            Err(_) => Err(QueryError::Behind {
                index: min_index,
                timeout,
            }),
        }
    }

    /// Wait until this replica has applied `index` (bounded by the catch-up timeout).
    pub async fn wait_applied(&self, index: Index) -> bool {
        if self.applied_index() >= index {
            return true;
        }
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::WaitApplied { index, reply }).is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout(self.shared.config.catch_up_timeout, rx).await,
            Ok(Ok(()))
        )
    }

    /// Current status report.
    pub fn status(&self) -> Status {
        let mut s = self
            .shared
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        s.ready = self.is_ready();
        s.commit_index = s
            .commit_index
            .max(self.shared.commit.load(Ordering::Acquire));
        s.store_error = self
            .shared
            .store_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .or_else(|| self.shared.fatal.lock().ok().and_then(|f| f.clone()));
        s
    }

    /// Whether the replica is caught up and serving.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    /// True while this replica leads.
    pub fn is_leader(&self) -> bool {
        self.shared.leading.load(Ordering::Acquire)
    }

    /// True once shutdown began.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Highest applied index.
    pub fn applied_index(&self) -> Index {
        self.shared.applied.load(Ordering::Acquire)
    }

    /// Prometheus text.
    pub fn render_metrics(&self) -> String {
        self.shared.metrics.render()
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.shared.config.replica
    }

    /// The snapshot of the current state (index, encoded [`SnapshotData`]).
    pub async fn snapshot(&self) -> Option<(Index, Vec<u8>)> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Snapshot { reply }).ok()?;
        rx.await.ok().flatten()
    }
}

/// A started replica: its handle plus what is needed to stop it.
pub struct RunningNode<S: Store> {
    /// Handle for the HTTP API.
    pub node: Node,
    /// The store (shared with the tasks).
    pub store: Arc<S>,
    cancel: CancellationToken,
    lease: watch::Receiver<Option<LeaseId>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    core: Option<tokio::task::JoinHandle<()>>,
}

impl<S: Store> std::fmt::Debug for RunningNode<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("node", &self.node)
            .finish()
    }
}

/// Backoff for store retries: fast at first, capped at one second.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << attempt.min(5)).min(1000))
}

/// Connect the group: check `meta` (retrying while the store is unreachable),
/// restore the newest snapshot, and start every task.
pub async fn start<S: Store, M: StateMachine + Send + 'static>(
    store: S,
    mut sm: M,
    config: NodeConfig,
    trace: TraceWriter,
) -> Result<RunningNode<S>, NodeError> {
    let store = Arc::new(store);
    let meta = Meta {
        module_sha256: config.module_sha256.clone(),
        abi_version: config.abi_version,
        protocol: "dorado".into(),
        session_expiry_entries: config.session_expiry_entries,
    };
    let mut attempt = 0;
    let stored = loop {
        match store.init_meta(&meta).await {
            Ok(m) => break m,
            Err(e @ StoreError::Unavailable(_)) | Err(e @ StoreError::NoSpace(_)) => {
                tracing::warn!(error = %e, "store not reachable yet; retrying");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    };
    if stored.module_sha256 != config.module_sha256 {
        return Err(NodeError::ModuleMismatch {
            group: config.group.clone(),
            ours: config.module_sha256.clone(),
            theirs: stored.module_sha256,
        });
    }
    if stored.protocol != meta.protocol {
        return Err(NodeError::ProtocolMismatch {
            group: config.group.clone(),
            ours: meta.protocol,
            theirs: stored.protocol,
        });
    }
    let session_expiry = stored.session_expiry_entries;
    let fmt = TraceFormatter::new(config.log_format);

    // Recovery = newest snapshot + tail (the tail arrives through the learner).
    let mut state = ReplicaState::new(session_expiry);
    let mut snapshot_index = 0;
    let mut attempt = 0;
    let newest = loop {
        match store.newest_snapshot().await {
            Ok(s) => break s,
            Err(e @ StoreError::Unavailable(_)) => {
                tracing::warn!(error = %e, "cannot read snapshots yet; retrying");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    };
    if let Some((index, bytes)) = newest {
        let snap = SnapshotData::decode(&bytes)
            .map_err(|e| NodeError::Recovery(format!("snapshot at index {index}: {e}")))?;
        state = ReplicaState::restore(&snap, session_expiry, &mut sm)
            .map_err(|e| NodeError::Recovery(format!("restoring snapshot {index}: {e}")))?;
        snapshot_index = index;
        let mut line = String::new();
        fmt.restored(index, &state.hash, &mut line);
        trace.write(line);
        tracing::info!(index, "restored snapshot");
    }

    let status = Status {
        group: config.group.clone(),
        namespace: config.namespace.clone(),
        replica: config.replica.clone(),
        role: Role::Follower,
        leader: None,
        leader_address: None,
        epoch: None,
        applied_index: state.applied,
        commit_index: state.applied,
        hash: state.hash.to_string(),
        module_sha256: config.module_sha256.clone(),
        ready: false,
        store_error: None,
        snapshot_index,
        protocol: Protocol::Dorado,
    };
    let shared = Arc::new(Shared {
        metrics: Metrics::new(),
        applied: AtomicU64::new(state.applied),
        commit: AtomicU64::new(state.applied),
        ready: AtomicBool::new(false),
        caught_up: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        leading: AtomicBool::new(false),
        snapshotting: AtomicBool::new(false),
        stuck: AtomicBool::new(false),
        fatal: Mutex::new(None),
        resign: Notify::new(),
        preparing: AtomicBool::new(false),
        status: Mutex::new(status),
        store_error: Mutex::new(None),
        resubscribe: Notify::new(),
        config: config.clone(),
    });
    shared.metrics.applied_index.set(gauge_value(state.applied));

    let cancel = CancellationToken::new();
    let (tx, rx) = mpsc::unbounded_channel();
    let (learned_tx, learned_rx) = mpsc::channel(1024);
    let (lease_tx, lease_rx) = watch::channel(None);
    let read_store = store.clone();
    let read_shared = shared.clone();
    let (read_index, read_task) = ReadIndex::spawn(
        Arc::new(move |from| {
            let store = read_store.clone();
            Box::pin(async move { store.last_index(from).await })
        }),
        move || read_shared.applied.load(Ordering::Acquire),
        cancel.clone(),
    );
    let node = Node {
        tx: tx.clone(),
        shared: shared.clone(),
        read_index,
    };

    let core = Core {
        learner: Learner::new(state.applied),
        state,
        sm,
        engine: None,
        waiters: HashMap::new(),
        next_token: 0,
        replies: Replies::new(),
        queries: BTreeMap::new(),
        applied_waiters: BTreeMap::new(),
        leader_view: None,
        drain_waiters: Vec::new(),
        trace,
        fmt,
        shared: shared.clone(),
        store: store.clone(),
        tx: tx.clone(),
        snapshot_index,
        progress: Progress::default(),
        orphan: Orphan::new((config.lease_ttl * 2).max(Duration::from_secs(1))),
        cancel: cancel.clone(),
    };
    let core = tokio::spawn(core.run(rx, learned_rx, cancel.clone()));
    let tasks = vec![
        tokio::spawn(lease_task(
            store.clone(),
            shared.clone(),
            tx.clone(),
            lease_tx,
            cancel.clone(),
        )),
        tokio::spawn(election_task(
            store.clone(),
            shared.clone(),
            tx.clone(),
            lease_rx.clone(),
            cancel.clone(),
        )),
        tokio::spawn(learner_task(
            store.clone(),
            shared.clone(),
            learned_tx,
            cancel.clone(),
        )),
        tokio::spawn(health_task(
            store.clone(),
            shared.clone(),
            lease_rx.clone(),
            cancel.clone(),
        )),
        read_task,
    ];
    Ok(RunningNode {
        node,
        store,
        cancel,
        lease: lease_rx,
        tasks,
        core: Some(core),
    })
}

impl<S: Store> RunningNode<S> {
    /// Graceful stop: refuse new commands, let in-flight ones finish (bounded),
    /// resign leadership by revoking the lease so another replica takes over at
    /// once, flush the trace.
    pub async fn shutdown(mut self, drain_timeout: Duration) {
        let shared = &self.node.shared;
        shared.draining.store(true, Ordering::Release);
        shared.update_ready(false);
        let (reply, rx) = oneshot::channel();
        if self.node.tx.send(Msg::Drain { reply }).is_ok() {
            let _ = tokio::time::timeout(drain_timeout, rx).await;
        }
        let lease = *self.lease.borrow();
        self.cancel.cancel();
        if let Some(lease) = lease {
            if let Err(e) = self.store.revoke_lease(lease).await {
                tracing::warn!(error = %e, "could not revoke the lease; it will expire by itself");
            } else {
                tracing::info!("lease revoked; leadership (if any) released");
            }
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        if let Some(core) = self.core.take() {
            let _ = core.await;
        }
    }

    /// Abrupt stop for tests that simulate a crash in-process: tasks end, the
    /// lease is left to expire.
    pub async fn abort(mut self) {
        self.cancel.cancel();
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(core) = self.core.take() {
            core.abort();
        }
    }
}

struct PendingQuery {
    query: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<u8>, QueryError>>,
}

struct Core<S: Store, M> {
    state: ReplicaState,
    sm: M,
    learner: Learner,
    engine: Option<LeaderEngine<u64>>,
    waiters: HashMap<u64, oneshot::Sender<Result<SubmitReply, SubmitError>>>,
    next_token: u64,
    /// Which waiting client gets which applied outcome (see [`Replies`]).
    replies: Replies<u64, SubmitReply>,
    queries: BTreeMap<Index, Vec<PendingQuery>>,
    applied_waiters: BTreeMap<Index, Vec<oneshot::Sender<()>>>,
    leader_view: Option<Leadership>,
    drain_waiters: Vec<oneshot::Sender<()>>,
    trace: TraceWriter,
    fmt: TraceFormatter,
    shared: Arc<Shared>,
    store: Arc<S>,
    tx: mpsc::UnboundedSender<Msg>,
    snapshot_index: Index,
    progress: Progress,
    orphan: Orphan,
    /// Stops the append and snapshot tasks this loop spawns: after shutdown or
    /// abort, a replica never writes to the store again.
    cancel: CancellationToken,
}

impl<S: Store, M: StateMachine + Send + 'static> Core<S, M> {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        mut learned: mpsc::Receiver<Learned>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                msg = rx.recv() => match msg {
                    Some(m) => self.handle(m),
                    None => break,
                },
                l = learned.recv() => match l {
                    Some(l) => {
                        self.learn(l);
                        // Drain what is already there before re-polling control messages.
                        for _ in 0..256 {
                            match learned.try_recv() {
                                Ok(l) => self.learn(l),
                                Err(_) => break,
                            }
                        }
                        self.apply_ready();
                    }
                    None => break,
                },
                _ = tick.tick() => self.tick(),
            }
        }
        if let Some(mut e) = self.engine.take() {
            let actions = e.step_down();
            self.perform(actions);
        }
        self.trace.close();
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Submit { command, reply } => self.submit(command, reply),
            Msg::Query {
                query,
                min_index,
                reply,
            } => {
                if self.state.applied >= min_index {
                    let _ = reply.send(self.run_query(&query));
                } else {
                    self.queries
                        .entry(min_index)
                        .or_default()
                        .push(PendingQuery { query, reply });
                }
            }
            Msg::WaitApplied { index, reply } => {
                if self.state.applied >= index {
                    let _ = reply.send(());
                } else {
                    self.applied_waiters.entry(index).or_default().push(reply);
                }
            }
            Msg::AppendDone {
                epoch,
                index,
                result,
                elapsed,
            } => {
                let Some(engine) = self.engine.as_mut() else {
                    return;
                };
                if engine.epoch() != epoch {
                    return;
                }
                self.shared
                    .metrics
                    .append_latency
                    .observe(elapsed.as_secs_f64());
                if let Err(e) = &result {
                    self.shared.metrics.store_errors.inc();
                    tracing::warn!(index, error = %e, "append failed");
                }
                let actions = engine.on_append(index, result);
                self.perform(actions);
                self.apply_ready();
                self.check_drained();
            }
            Msg::LeaderView(view) => {
                if let Some(engine) = &self.engine {
                    if !view_ends_term(engine.epoch(), view.as_ref()) {
                        return; // a late event of a lagging watch
                    }
                    tracing::info!(epoch = engine.epoch(), "a newer leader took over");
                    self.step_down();
                }
                self.leader_view = view;
                self.publish_status();
            }
            Msg::LeaderReady {
                epoch,
                base,
                last,
                entries,
            } => self.become_leader(epoch, base, last, entries),
            Msg::LeaseLost => {
                if self.engine.is_some() {
                    tracing::warn!("lease lost while leading; stepping down");
                    self.step_down();
                }
            }
            Msg::Drain { reply } => {
                self.drain_waiters.push(reply);
                self.check_drained();
            }
            Msg::Snapshot { reply } => {
                let snap = self
                    .state
                    .snapshot(&mut self.sm, &self.shared.config.module_sha256)
                    .ok()
                    .and_then(|s| s.encode().ok());
                let _ = reply.send(snap.map(|b| (self.state.applied, b)));
            }
        }
    }

    fn submit(
        &mut self,
        command: Command,
        reply: oneshot::Sender<Result<SubmitReply, SubmitError>>,
    ) {
        if self.shared.draining.load(Ordering::Acquire) {
            let _ = reply.send(Err(SubmitError::ShuttingDown));
            return;
        }
        let leader = self.leader_view.as_ref().map(|l| &l.leader);
        match route(&self.shared.config.replica, self.engine.is_some(), leader) {
            Route::Forward(addr) => {
                let _ = reply.send(Err(SubmitError::Forward(addr)));
            }
            Route::NoLeader => {
                let _ = reply.send(Err(SubmitError::NoLeader));
            }
            Route::Local => {
                let token = self.next_token;
                self.next_token += 1;
                self.waiters.insert(token, reply);
                if let Some(engine) = self.engine.as_mut() {
                    let actions = engine.submit(token, command);
                    self.perform(actions);
                }
            }
        }
    }

    fn perform(&mut self, actions: Vec<LeaderAction<u64>>) {
        for action in actions {
            match action {
                LeaderAction::Append {
                    index,
                    bytes,
                    retry,
                } => {
                    let Some(engine) = &self.engine else { continue };
                    let epoch = engine.epoch();
                    let store = self.store.clone();
                    let tx = self.tx.clone();
                    let cancel = self.cancel.clone();
                    tokio::spawn(async move {
                        if retry {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        let t0 = Instant::now();
                        let result = tokio::select! {
                            biased;
                            _ = cancel.cancelled() => return,
                            r = store.append(epoch, index, &bytes) => r,
                        };
                        let _ = tx.send(Msg::AppendDone {
                            epoch,
                            index,
                            result,
                            elapsed: t0.elapsed(),
                        });
                    });
                }
                LeaderAction::Committed {
                    index,
                    entry,
                    waiters,
                } => {
                    self.shared.metrics.batch_size.observe(entry.len() as f64);
                    self.shared.commit.fetch_max(index, Ordering::AcqRel);
                    let (answers, offer) =
                        self.replies
                            .on_committed(index, waiters, self.state.applied);
                    self.send_answers(answers);
                    if offer {
                        self.learner.offer(index, entry);
                    }
                }
                LeaderAction::Refuse { token, error } => {
                    if let Some(w) = self.waiters.remove(&token) {
                        let _ = w.send(Err(SubmitError::Invalid(error)));
                    }
                }
                LeaderAction::Abandon { tokens, why } => {
                    let err = match why {
                        Abandoned::NotOrdered => SubmitError::NotOrdered,
                        Abandoned::Unknown => SubmitError::Unknown,
                    };
                    for t in tokens {
                        if let Some(w) = self.waiters.remove(&t) {
                            let _ = w.send(Err(err.clone()));
                        }
                    }
                }
                LeaderAction::StepDown => {
                    tracing::warn!("append fenced: another replica leads now; stepping down");
                    self.engine = None;
                    self.replies.on_step_down();
                    self.shared.leading.store(false, Ordering::Release);
                    self.shared.metrics.is_leader.set(0);
                    self.publish_status();
                }
            }
        }
    }

    fn step_down(&mut self) {
        if let Some(mut e) = self.engine.take() {
            let actions = e.step_down();
            self.perform(actions);
        }
        self.replies.on_step_down();
        self.shared.leading.store(false, Ordering::Release);
        self.shared.metrics.is_leader.set(0);
        self.publish_status();
        self.check_drained();
    }

    fn become_leader(
        &mut self,
        epoch: Epoch,
        base: Index,
        last: Index,
        entries: Vec<(Index, Vec<u8>)>,
    ) {
        // The election task won `epoch`; only a newer leader (not a late
        // watch event) supersedes that. The fence makes leading safe anyway.
        let superseded = view_ends_term(epoch, self.leader_view.as_ref());
        if superseded || self.engine.is_some() || self.shared.draining.load(Ordering::Acquire) {
            return;
        }
        self.leader_view = Some(Leadership {
            leader: LeaderRecord {
                replica: self.shared.config.replica.clone(),
                address: self.shared.config.advertise.clone(),
            },
            epoch,
        });
        let mut present = Vec::with_capacity(entries.len());
        for (index, bytes) in entries {
            match Entry::decode(&bytes) {
                Ok(e) => {
                    present.push(index);
                    self.learner.offer(index, e);
                }
                Err(e) => {
                    self.fatal(format!("log entry {index} is corrupt: {e}"));
                    return;
                }
            }
        }
        present.sort_unstable();
        let from = leader_base(Some(base), self.state.applied);
        let (engine, actions) =
            LeaderEngine::start(epoch, self.shared.config.leader, from, last, &present);
        tracing::info!(epoch, last, gaps = actions.len(), "leading");
        self.engine = Some(engine);
        self.shared.leading.store(true, Ordering::Release);
        self.shared.metrics.is_leader.set(1);
        self.shared.metrics.elections_won.inc();
        self.shared.commit.fetch_max(last, Ordering::AcqRel);
        self.perform(actions);
        self.apply_ready();
        self.publish_status();
    }

    fn learn(&mut self, l: Learned) {
        match l {
            Learned::Entry(index, bytes) => {
                if index < self.learner.next() {
                    return;
                }
                match Entry::decode(&bytes) {
                    Ok(e) => {
                        self.shared.commit.fetch_max(index, Ordering::AcqRel);
                        self.learner.offer(index, e);
                    }
                    Err(e) => self.fatal(format!("log entry {index} is corrupt: {e}")),
                }
            }
            Learned::Restore(snap) => {
                if snap.index <= self.state.applied {
                    return;
                }
                if snap.module_sha256 != self.shared.config.module_sha256 {
                    self.fatal(format!(
                        "snapshot {} was taken with module {} but this replica runs {}",
                        snap.index, snap.module_sha256, self.shared.config.module_sha256
                    ));
                    return;
                }
                match ReplicaState::restore(&snap, self.state.session_expiry, &mut self.sm) {
                    Ok(state) => {
                        self.state = state;
                        self.learner.reset(snap.index);
                        self.snapshot_index = snap.index;
                        let mut line = String::new();
                        self.fmt.restored(snap.index, &self.state.hash, &mut line);
                        self.trace.write(line);
                        self.after_apply();
                        self.check_trace();
                    }
                    Err(e) => self.fatal(format!("restoring snapshot {}: {e}", snap.index)),
                }
            }
        }
    }

    /// Stop applying for good: not ready, the message in the status, and no
    /// longer a leader or a candidate (the lease task resigns the lease so
    /// another replica takes over).
    fn fatal(&mut self, msg: String) {
        tracing::error!("{msg}; this replica stops applying until restarted");
        if let Ok(mut f) = self.shared.fatal.lock() {
            *f = Some(msg);
        }
        self.shared.ready.store(false, Ordering::Release);
        self.shared.metrics.ready.set(0);
        self.shared.resign.notify_one();
        if self.engine.is_some() {
            self.step_down();
        }
    }

    /// A trace that can no longer be written is fatal (see `trace.rs`).
    fn check_trace(&mut self) {
        if let Some(e) = self.trace.error()
            && !self.is_fatal()
        {
            self.fatal(e.to_string());
        }
    }

    fn is_fatal(&self) -> bool {
        self.shared
            .fatal
            .lock()
            .map(|f| f.is_some())
            .unwrap_or(true)
    }

    fn apply_ready(&mut self) {
        if self.is_fatal() {
            return;
        }
        let mut text = String::new();
        let mut applied_any = false;
        // A stalled trace consumer pauses applying (the tick resumes it).
        while self.trace.backlog() <= TraceWriter::HIGH_WATER
            && let Some((index, entry)) = self.learner.pop_ready()
        {
            let applied = match self.state.apply(index, &entry, &mut self.sm) {
                Ok(a) => a,
                Err(e) => {
                    self.fatal(e.to_string());
                    return;
                }
            };
            applied_any = true;
            self.fmt.entry(&applied, &mut text);
            self.record(&applied);
            self.answer(applied);
            if text.len() > 64 * 1024 {
                self.trace.write(std::mem::take(&mut text));
            }
            self.maybe_snapshot(index);
        }
        self.trace.write(text);
        if applied_any {
            self.after_apply();
        }
        self.check_trace();
    }

    fn record(&self, applied: &AppliedEntry) {
        let m = &self.shared.metrics;
        m.entries_applied.inc();
        m.commands_applied.inc_by(applied.commands.len() as u64);
        let rejected = applied
            .commands
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Rejected(_)))
            .count();
        if rejected > 0 {
            m.commands_rejected.inc_by(rejected as u64);
        }
    }

    fn answer(&mut self, applied: AppliedEntry) {
        let index = applied.index;
        let replies = || {
            applied
                .commands
                .iter()
                .map(|c| SubmitReply {
                    index,
                    outcome: c.outcome.clone(),
                    duplicate: c.duplicate,
                })
                .collect::<Vec<_>>()
        };
        let inflight = self.engine.as_ref().is_some_and(|e| e.is_inflight(index));
        let answers = self.replies.on_applied(index, replies, inflight);
        self.send_answers(answers);
    }

    /// Answer clients; `None` is an outcome that cannot be told.
    fn send_answers(&mut self, answers: Vec<(u64, Option<SubmitReply>)>) {
        for (token, reply) in answers {
            if let Some(w) = self.waiters.remove(&token) {
                let _ = w.send(reply.ok_or(SubmitError::Unknown));
            }
        }
    }

    fn after_apply(&mut self) {
        let applied = self.state.applied;
        self.shared.applied.store(applied, Ordering::Release);
        self.shared.metrics.applied_index.set(gauge_value(applied));
        while let Some(entry) = self.queries.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for q in entry.remove() {
                let r = self.run_query(&q.query);
                let _ = q.reply.send(r);
            }
        }
        while let Some(entry) = self.applied_waiters.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for w in entry.remove() {
                let _ = w.send(());
            }
        }
        self.publish_status();
    }

    fn run_query(&mut self, q: &[u8]) -> Result<Vec<u8>, QueryError> {
        self.sm
            .query(q)
            .map_err(|r| QueryError::Rejected(r.to_string()))
    }

    fn maybe_snapshot(&mut self, index: Index) {
        let policy = SnapshotPolicy {
            every: self.shared.config.snapshot_every,
        };
        let in_progress = self.shared.snapshotting.load(Ordering::Acquire);
        if !policy.due(index, self.engine.is_some(), in_progress) {
            return;
        }
        self.shared.snapshotting.store(true, Ordering::Release);
        let snap = match self
            .state
            .snapshot(&mut self.sm, &self.shared.config.module_sha256)
            .map_err(|e| e.to_string())
            .and_then(|s| s.encode().map_err(|e| e.to_string()))
        {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(index, error = %e, "cannot take snapshot");
                self.shared.snapshotting.store(false, Ordering::Release);
                return;
            }
        };
        self.snapshot_index = index;
        let store = self.store.clone();
        let shared = self.shared.clone();
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            let write = async {
                store.put_snapshot(index, &snap).await?;
                store.delete_log_below(index).await?;
                store.delete_snapshots_below(index).await
            };
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                r = write => r,
            };
            match result {
                Ok(()) => {
                    shared.metrics.snapshots_written.inc();
                    tracing::info!(
                        index,
                        bytes = snap.len(),
                        "snapshot stored, log truncated below it"
                    );
                }
                Err(e) => {
                    shared.metrics.store_errors.inc();
                    tracing::warn!(index, error = %e, "snapshot not stored");
                }
            }
            shared.snapshotting.store(false, Ordering::Release);
        });
    }

    fn tick(&mut self) {
        self.apply_ready();
        let next = self.learner.next();
        let gap = self.learner.gap().is_some();
        let commit = self.shared.commit.load(Ordering::Acquire);
        let now = Instant::now().into_std();
        if self.progress.tick(now, next, gap, commit) == ProgressAction::Resubscribe {
            tracing::info!(waiting_for = next, "no progress; re-reading the log");
            self.shared.resubscribe.notify_one();
        }
        self.shared
            .stuck
            .store(self.progress.stuck(), Ordering::Release);
        let me = &self.shared.config.replica;
        let named = self
            .leader_view
            .as_ref()
            .is_some_and(|l| &l.leader.replica == me);
        let leading = self.engine.is_some() || self.shared.preparing.load(Ordering::Acquire);
        if self.orphan.tick(now, named, leading) {
            tracing::warn!("the store names this replica leader but it does not lead; resigning");
            self.shared.resign.notify_one();
        }
        self.check_drained();
    }

    fn check_drained(&mut self) {
        if self.drain_waiters.is_empty() {
            return;
        }
        if self.engine.as_ref().is_none_or(|e| e.is_idle()) && self.replies.is_idle() {
            for w in self.drain_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    fn publish_status(&self) {
        let Ok(mut s) = self.shared.status.lock() else {
            return;
        };
        s.applied_index = self.state.applied;
        s.hash = self.state.hash.to_string();
        s.commit_index = self
            .shared
            .commit
            .load(Ordering::Acquire)
            .max(self.state.applied);
        s.role = if self.engine.is_some() {
            Role::Leader
        } else {
            Role::Follower
        };
        s.leader = self.leader_view.as_ref().map(|l| l.leader.replica.clone());
        s.leader_address = self.leader_view.as_ref().map(|l| l.leader.address.clone());
        s.epoch = self.leader_view.as_ref().map(|l| l.epoch);
        s.snapshot_index = self.snapshot_index;
        self.shared
            .metrics
            .commit_index
            .set(gauge_value(s.commit_index));
    }
}

async fn lease_task<S: Store>(
    store: Arc<S>,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Msg>,
    lease_tx: watch::Sender<Option<LeaseId>>,
    cancel: CancellationToken,
) {
    let ttl = shared.config.lease_ttl;
    let mut attempt = 0;
    'lease: while !cancel.is_cancelled() {
        let lease = tokio::select! {
            _ = cancel.cancelled() => return,
            r = store.grant_lease(ttl) => r,
        };
        let lease = match lease {
            Ok(l) => l,
            Err(e) => {
                shared.set_store_error(Some(&e));
                shared.metrics.store_errors.inc();
                tracing::warn!(error = %e, "cannot get a lease; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                }
                attempt += 1;
                continue;
            }
        };
        attempt = 0;
        let _ = lease_tx.send(Some(lease));
        let mut timer = LeaseTimer::new(ttl, Instant::now().into_std());
        let period = timer.period();
        loop {
            let record = MemberRecord {
                address: shared.config.advertise.clone(),
                applied_index: shared.applied.load(Ordering::Acquire),
                hash: shared
                    .status
                    .lock()
                    .map(|s| s.hash.clone())
                    .unwrap_or_default(),
            };
            // How long the keep-alive may take and what its answer means is
            // `LeaseTimer`'s decision; publishing the member record is best effort.
            let budget = timer.budget(Instant::now().into_std());
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = tokio::time::timeout(budget, store.keep_alive(lease)) => r.unwrap_or_else(|_| Err(StoreError::Unavailable("keep-alive timed out".into()))),
            };
            let outcome = match &result {
                Ok(()) => KeepAlive::Ok,
                Err(StoreError::LeaseExpired(_)) => KeepAlive::Expired,
                Err(e) => {
                    shared.metrics.store_errors.inc();
                    tracing::warn!(error = %e, "lease keep-alive failed");
                    KeepAlive::Failed
                }
            };
            match timer.on_keep_alive(Instant::now().into_std(), outcome) {
                LeaseDecision::Renewed => {
                    let publish = store.publish_member(lease, &shared.config.replica, &record);
                    if let Ok(Err(e)) = tokio::time::timeout(period, publish).await {
                        tracing::debug!(error = %e, "could not publish the member record");
                    }
                }
                LeaseDecision::Retry => {}
                LeaseDecision::Lost => {
                    tracing::warn!("lease lost; getting a new one");
                    break;
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
                _ = shared.resign.notified() => {
                    tracing::warn!("resigning: revoking the lease so another replica leads");
                    let _ = lease_tx.send(None);
                    let _ = tx.send(Msg::LeaseLost);
                    if let Err(e) = store.revoke_lease(lease).await {
                        tracing::warn!(error = %e, "could not revoke the lease; it will expire by itself");
                    }
                    if shared.fatal.lock().map(|f| f.is_some()).unwrap_or(true) {
                        // Never a member again until restarted.
                        return cancel.cancelled().await;
                    }
                    continue 'lease;
                }
            }
        }
        let _ = lease_tx.send(None);
        let _ = tx.send(Msg::LeaseLost);
    }
}

async fn election_task<S: Store>(
    store: Arc<S>,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Msg>,
    mut lease: watch::Receiver<Option<LeaseId>>,
    cancel: CancellationToken,
) {
    let me = LeaderRecord {
        replica: shared.config.replica.clone(),
        address: shared.config.advertise.clone(),
    };
    let mut attempt = 0;
    while !cancel.is_cancelled() {
        let mut stream = store.watch_leader();
        let mut view: Option<Option<Leadership>> = None;
        let mut recheck = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                item = stream.next() => match item {
                    Some(Ok(v)) => {
                        attempt = 0;
                        view = Some(v.clone());
                        let _ = tx.send(Msg::LeaderView(v));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "leader watch failed; re-subscribing");
                        break;
                    }
                    None => break,
                },
                _ = recheck.tick() => {}
                _ = lease.changed() => {}
            }
            let lease_id = *lease.borrow();
            let inputs = CampaignInputs {
                no_leader: matches!(view, Some(None)),
                lease_held: lease_id.is_some(),
                draining: shared.draining.load(Ordering::Acquire),
                fatal: shared.fatal.lock().map(|f| f.is_some()).unwrap_or(true),
                caught_up: shared.caught_up.load(Ordering::Acquire),
                stuck: shared.stuck.load(Ordering::Acquire),
            };
            if !may_campaign(inputs) {
                continue;
            }
            let Some(lease_id) = lease_id else { continue };
            match store.campaign(lease_id, &me).await {
                Ok(Some(epoch)) => {
                    tracing::info!(epoch, "won the election");
                    let leadership = Leadership {
                        leader: me.clone(),
                        epoch,
                    };
                    view = Some(Some(leadership.clone()));
                    let _ = tx.send(Msg::LeaderView(Some(leadership)));
                    shared.preparing.store(true, Ordering::Release);
                    let prepared = prepare_leadership(&*store, &shared).await;
                    shared.preparing.store(false, Ordering::Release);
                    match prepared {
                        Ok((base, last, entries)) => {
                            let _ = tx.send(Msg::LeaderReady {
                                epoch,
                                base,
                                last,
                                entries,
                            });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not read the log after winning; resigning");
                            let _ = store.revoke_lease(lease_id).await;
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "campaign failed"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff(attempt)) => {}
        }
        attempt += 1;
    }
}

/// What a new leader must know before it serves: the log's last index and the
/// entries above what it has applied (so gaps can be filled). Entries at or
/// below the newest snapshot are never gap-filled: they may have been truncated.
async fn prepare_leadership<S: Store>(
    store: &S,
    shared: &Shared,
) -> Result<(Index, Index, Vec<(Index, Vec<u8>)>), StoreError> {
    let snap = store.newest_snapshot_index().await?;
    let base = leader_base(snap, shared.applied.load(Ordering::Acquire));
    let last = store.last_index(base + 1).await?.unwrap_or(base);
    let mut entries = Vec::new();
    let mut from = base + 1;
    while from <= last {
        let chunk = store.read_log(from, last, 1000).await?;
        let Some(&(high, _)) = chunk.last() else {
            break;
        };
        entries.extend(chunk);
        from = high + 1;
    }
    Ok((base, last, entries))
}

async fn learner_task<S: Store>(
    store: Arc<S>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Learned>,
    cancel: CancellationToken,
) {
    let mut attempt = 0;
    while !cancel.is_cancelled() {
        let mut from = shared.applied.load(Ordering::Acquire) + 1;
        // A replica behind the newest snapshot restores it instead of replaying
        // (the entries below it may be gone).
        match store.newest_snapshot_index().await {
            Ok(Some(s)) if s >= from => match store.newest_snapshot().await {
                Ok(Some((index, bytes))) => match SnapshotData::decode(&bytes) {
                    Ok(snap) => {
                        if tx.send(Learned::Restore(snap)).await.is_err() {
                            return;
                        }
                        from = index + 1;
                    }
                    Err(e) => {
                        tracing::error!(index, error = %e, "newest snapshot is corrupt");
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read snapshot");
                    shared.set_store_error(Some(&e));
                }
            },
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read snapshot index");
                shared.set_store_error(Some(&e));
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                }
                attempt += 1;
                continue;
            }
        }
        let mut stream = store.watch_log(from);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = shared.resubscribe.notified() => break,
                item = stream.next() => match item {
                    Some(Ok((index, bytes))) => {
                        attempt = 0;
                        if tx.send(Learned::Entry(index, bytes)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "log watch failed; re-subscribing");
                        shared.set_store_error(Some(&e));
                        break;
                    }
                    None => break,
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff(attempt)) => {}
        }
        attempt += 1;
    }
}

/// Store reachability and catch-up, for `/readyz`: ready once the replica has
/// applied what the store held at the previous check. A replica that is not
/// caught up turns ready as soon as it applies what the store held at the
/// last check, not at the next one: a recreated pod would otherwise report
/// ready up to a check period late.
async fn health_task<S: Store>(
    store: Arc<S>,
    shared: Arc<Shared>,
    lease: watch::Receiver<Option<LeaseId>>,
    cancel: CancellationToken,
) {
    let mut readiness = Readiness::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let goal = readiness.goal();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            _ = applied_reaches(&shared, goal) => {
                readiness.on_applied(shared.applied.load(Ordering::Acquire));
                shared.caught_up.store(readiness.caught_up(), Ordering::Release);
                shared.update_ready(lease.borrow().is_some());
                continue;
            }
        }
        // Only the entries above what this replica applied are read, so a
        // check costs etcd the same whatever the log's length.
        let applied_before = shared.applied.load(Ordering::Acquire);
        let result =
            tokio::time::timeout(Duration::from_secs(2), store.last_index(applied_before + 1))
                .await;
        match result {
            Ok(Ok(last)) => {
                shared.set_store_error(None);
                shared
                    .commit
                    .fetch_max(last.unwrap_or(applied_before), Ordering::AcqRel);
                let applied = shared.applied.load(Ordering::Acquire);
                readiness.on_check(applied, last);
                shared
                    .caught_up
                    .store(readiness.caught_up(), Ordering::Release);
            }
            Ok(Err(e)) => {
                if !matches!(shared.store_error.lock().ok().as_deref(), Some(Some(_))) {
                    tracing::warn!(error = %e, "store check failed");
                }
                shared.set_store_error(Some(&e));
            }
            Err(_) => {
                shared.set_store_error(Some(&StoreError::Unavailable(
                    "store did not answer within 2s".into(),
                )));
            }
        }
        shared.update_ready(lease.borrow().is_some());
    }
}

/// Resolves once the replica has applied `goal`; never without a goal. Polls
/// an atomic (no store access), only while a replica catches up.
async fn applied_reaches(shared: &Shared, goal: Option<Index>) {
    let Some(goal) = goal else {
        return std::future::pending().await;
    };
    while shared.applied.load(Ordering::Acquire) < goal {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
