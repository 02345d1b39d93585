//! The DORADO replica driver: performs what the pure protocol core decides.
//!
//! What every protocol's driver shares (applying, the client handle, lease,
//! health, stopping every task) is in [`crate::driver`]; this file holds what
//! is DORADO's own: election, the learner, fenced batched appends and
//! snapshots. One task (the *core loop*) owns everything that must change in
//! one order: the [`Applier`] (state machine, replicated host state, trace),
//! the learner buffer and, while this replica leads, the [`LeaderEngine`].
//! Everything else talks to it by message, so there are no locks around the
//! protocol state:
//!
//! ```text
//!  lease task (driver) ──(LeaseLost)──┐
//!  election task ──(LeaderView, LeaderReady)──┐
//!  learner task ──(Learned, Restore)── bounded ─┤
//!  append tasks ──(AppendDone)──────────────────┼──► core loop ──► trace writer thread
//!  HTTP handlers ──(Request: Submit, Read, Drain)┘        │
//!  health task (driver: store reachability, catch-up) ◄─ Health ─┘
//!  read-index task: one store read answers every linearizable query that
//!  arrived before it started (`read_index.rs`)
//! ```
//!
//! Why the learner channel is bounded and the control channel is not: a
//! recovering replica may stream a million entries; the bounded channel gives
//! backpressure to the watch, while control messages (append results, leader
//! changes) must never wait behind that stream or the leader would stall.
//!
//! Every task, including each append and snapshot write, belongs to the
//! replica's [`TaskSet`]: after a shutdown or an abort this replica never
//! writes to the store again (`tests/abort.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use dorado_core::decide::{
    CampaignInputs, Orphan, Progress, ProgressAction, Replies, SnapshotPolicy, Suspicion,
    SuspicionAction, SuspicionConfig, leader_base, may_campaign, view_ends_term,
};
use dorado_core::engine::LeaderConfig;
use dorado_core::entry::EncodeError;
use dorado_core::upgrade::{ModulePlan, UpgradeMode, UpgradeResult, plan as module_plan};
use dorado_core::{
    Abandoned, AppliedEntry, Command, Entry, Epoch, Index, LeaderAction, LeaderEngine,
    LeaderRecord, Leadership, Learner, LeaseId, Meta, Outcome, Route, SnapshotData, StateMachine,
    Store, StoreError, engine::route,
};
use futures::StreamExt;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::driver::{
    Applier, CatchUp, CoreInputs, CoreLoop, DrainWaiters, Health, Lifecycle, ModuleCatalog, Probe,
    ReadBound, ReplicaHandle, ReplyTo, Spawner, TaskSet, backoff, health_task, lease_task,
    retry_unreachable, run_core, until_stopped,
};
use crate::probe::LeaderProbe;
use crate::read_index::ReadIndex;
use crate::trace::{LogFormat, TraceWriter};
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
    /// How a follower asks whether the leader's process is alive; with one,
    /// it deposes a leader that stopped answering and appending
    /// (`decide::Suspicion`) instead of waiting for its lease. `None`: the
    /// lease alone ends a dead leader's term.
    pub leader_probe: Option<Arc<dyn LeaderProbe>>,
    /// Whether this replica proposes its own module when the group runs
    /// another (see `dorado_core::upgrade::plan`).
    pub upgrade: UpgradeMode,
    /// The modules the state machine can switch to; `None`: it runs only
    /// this replica's module, and every upgrade entry is rejected.
    pub modules: Option<Arc<dyn ModuleCatalog>>,
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
            leader_probe: None,
            upgrade: UpgradeMode::Auto,
            modules: None,
        }
    }
}

/// Why a node could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The group runs a module this replica cannot obtain or run: it is not
    /// in the store, or the state machine cannot switch modules.
    #[error("group {group} runs module {module}, which this replica cannot run: {reason}")]
    ModuleUnavailable {
        /// Group name.
        group: String,
        /// The module the group runs at the recovery point.
        module: String,
        /// Why not.
        reason: String,
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
    /// An upgrade names a module the store does not hold; nothing was
    /// ordered. Store the module first (`dorado upgrade` does).
    #[error(
        "module {0} is not in the store; upload it first (`dorado upgrade --module FILE` does)"
    )]
    UnknownModule(String),
    /// The replica cannot do this at all (e.g. an upgrade under the classic protocol).
    #[error("not supported: {0}")]
    Unsupported(&'static str),
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

/// DORADO's own flags, besides what every protocol shares ([`Health`]).
struct Shared {
    health: Arc<Health>,
    snapshotting: AtomicBool,
    /// No progress for a while although the store is ahead: maybe a gap left by
    /// a leader that died mid-append, which only a new leader fills. Such a
    /// replica may campaign even though it is not caught up.
    stuck: AtomicBool,
    /// The election task won and is reading the log before leading.
    preparing: AtomicBool,
    resubscribe: Notify,
    /// This replica started or stopped leading (see `learner_task`).
    role: Notify,
    /// The index from which this replica's current term applies entries it
    /// read or wrote itself; below it the learner must still deliver
    /// (a snapshot to restore).
    lead_base: std::sync::atomic::AtomicU64,
    /// The newest leadership the leader watch (or a won election) reported.
    view: std::sync::Mutex<Option<Leadership>>,
}

/// What DORADO's own tasks tell the core loop (client requests arrive on a
/// separate channel as [`Request`]s).
enum Msg {
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
    /// The timer of a [`LeaderAction::WakeAt`] of term `epoch` fired.
    Wake {
        epoch: Epoch,
    },
    /// A module fetch from the store ended (`Ok`: it is in the catalog now).
    ModuleFetched {
        sha256: String,
        result: Result<(), String>,
    },
}

enum Learned {
    Entry(Index, Vec<u8>),
    Restore(SnapshotData),
}

/// Handle to a running replica (cheap to clone): the driver's
/// [`ReplicaHandle`], which the classic baseline shares.
pub type Node = ReplicaHandle;

/// A started replica: its handle plus what is needed to stop it. Dropping it
/// stops every task of the replica (see [`crate::driver::TaskSet`]).
pub struct RunningNode<S: Store> {
    /// Handle for the HTTP API.
    pub node: Node,
    /// The store (shared with the tasks).
    pub store: Arc<S>,
    life: Lifecycle<S>,
}

impl<S: Store> std::fmt::Debug for RunningNode<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("node", &self.node)
            .finish()
    }
}

/// Connect the group: check `meta` (retrying while the store is unreachable),
/// restore the newest snapshot, and start every task. Cancelling `shutdown`
/// stops every task of the replica (abruptly: no drain, the lease is left to
/// expire); [`RunningNode::shutdown`] is the graceful stop.
pub async fn start<S: Store, M: StateMachine + Send + 'static>(
    store: S,
    sm: M,
    config: NodeConfig,
    trace: TraceWriter,
    shutdown: CancellationToken,
) -> Result<RunningNode<S>, NodeError> {
    let store = Arc::new(store);
    let meta = Meta {
        module_sha256: config.module_sha256.clone(),
        abi_version: config.abi_version,
        protocol: "dorado".into(),
        session_expiry_entries: config.session_expiry_entries,
    };
    let stored = retry_unreachable("init meta", || store.init_meta(&meta)).await?;
    if stored.protocol != meta.protocol {
        return Err(NodeError::ProtocolMismatch {
            group: config.group.clone(),
            ours: meta.protocol,
            theirs: stored.protocol,
        });
    }
    let health = Arc::new(Health::new(config.clone(), Protocol::Dorado));
    // Not ready before the group's module is known to be this replica's.
    health.set_module_plan(ModulePlan::Wait(
        "catching up with the group's history".into(),
    ));
    let genesis = stored.module_sha256.clone();
    let mut applier = Applier::new(
        stored.session_expiry_entries,
        genesis.clone(),
        sm,
        trace,
        health.clone(),
    );

    // Recovery = newest snapshot + tail (the tail arrives through the learner),
    // on the module the group ran at the snapshot (or its first module).
    let newest = retry_unreachable("read snapshots", || store.newest_snapshot()).await?;
    let snapshot = match newest {
        Some((index, bytes)) => Some(
            SnapshotData::decode(&bytes)
                .map_err(|e| NodeError::Recovery(format!("snapshot at index {index}: {e}")))?,
        ),
        None => None,
    };
    let start_module = snapshot
        .as_ref()
        .map_or(genesis.clone(), |s| s.module_sha256.clone());
    if let Some(catalog) = &config.modules
        && !catalog.has(&start_module)
    {
        let fetched = retry_unreachable("read module", || store.get_module(&start_module)).await?;
        let added = match fetched {
            Some(bytes) => catalog.clone().add(start_module.clone(), bytes).await,
            None => Err("it is not in the store (modules/<sha256>); start a replica that has it, or store it with `dorado upgrade --module FILE`".into()),
        };
        added.map_err(|reason| NodeError::ModuleUnavailable {
            group: config.group.clone(),
            module: start_module.clone(),
            reason,
        })?;
    }
    match &snapshot {
        Some(snap) => applier.restore(snap).map_err(NodeError::Recovery)?,
        None => {
            applier.start_at_genesis().map_err(NodeError::Recovery)?;
            false
        }
    };
    let applied = applier.applied();
    health.note_commit(applied);

    let shared = Arc::new(Shared {
        health: health.clone(),
        snapshotting: AtomicBool::new(false),
        stuck: AtomicBool::new(false),
        preparing: AtomicBool::new(false),
        resubscribe: Notify::new(),
        role: Notify::new(),
        lead_base: std::sync::atomic::AtomicU64::new(0),
        view: std::sync::Mutex::new(None),
    });
    let tasks = TaskSet::new(&shutdown);
    let spawner = tasks.spawner();
    let stop = tasks.token();
    let (tx, rx) = mpsc::unbounded_channel();
    let (requests_tx, requests) = mpsc::unbounded_channel();
    let (learned_tx, learned_rx) = mpsc::channel(1024);
    let (lease_tx, lease_rx) = watch::channel(None);
    let read_store = store.clone();
    let read_health = health.clone();
    let (read_index, read_task) = ReadIndex::new(
        Arc::new(move |from| {
            let store = read_store.clone();
            Box::pin(async move { store.last_index(from).await })
        }),
        move || read_health.applied(),
        stop.clone(),
    );
    spawner.spawn(read_task);
    let read_bound: ReadBound = Arc::new(move |_| {
        let read_index = read_index.clone();
        Box::pin(async move { read_index.read().await })
    });
    let node = ReplicaHandle::new(requests_tx, health.clone(), read_bound);

    let core = Core {
        learner: Learner::new(applied),
        applier,
        engine: None,
        waiters: BTreeMap::new(),
        next_token: 0,
        replies: Replies::new(),
        leader_view: None,
        drains: DrainWaiters::default(),
        shared: shared.clone(),
        health: health.clone(),
        store: store.clone(),
        tx: tx.clone(),
        progress: Progress::default(),
        orphan: Orphan::new((config.lease_ttl * 2).max(Duration::from_secs(1))),
        spawner: spawner.clone(),
        fetching: BTreeMap::new(),
        local_rejection: None,
        module_settled: false,
    };
    let inputs = CoreInputs {
        msgs: rx,
        requests,
        learned: learned_rx,
    };
    spawner.spawn(run_core(
        core,
        inputs,
        Duration::from_millis(200),
        stop.clone(),
    ));
    let lost = tx.clone();
    spawner.spawn(lease_task(
        store.clone(),
        health.clone(),
        lease_tx,
        move || {
            let _ = lost.send(Msg::LeaseLost);
        },
        stop.clone(),
    ));
    spawner.spawn(election_task(
        store.clone(),
        shared.clone(),
        tx.clone(),
        lease_rx.clone(),
        stop.clone(),
    ));
    spawner.spawn(learner_task(
        store.clone(),
        shared.clone(),
        learned_tx,
        stop.clone(),
    ));
    if let Some(leader_probe) = config.leader_probe.clone() {
        spawner.spawn(suspicion_task(
            store.clone(),
            shared.clone(),
            leader_probe,
            SuspicionConfig::for_lease(config.lease_ttl),
            stop.clone(),
        ));
    }
    let probe_store = store.clone();
    let probe: Probe = Arc::new(move |from| {
        let store = probe_store.clone();
        Box::pin(async move { store.last_index(from).await })
    });
    spawner.spawn(health_task(health, probe, CatchUp::ByProbe, stop));
    Ok(RunningNode {
        node: node.clone(),
        store: store.clone(),
        life: Lifecycle::new(node, store, lease_rx, tasks),
    })
}

impl<S: Store> RunningNode<S> {
    /// Graceful stop: refuse new commands, let in-flight ones finish (bounded),
    /// stop every task, resign leadership by revoking the lease so another
    /// replica takes over at once, flush the trace ([`Lifecycle::shutdown`]).
    pub async fn shutdown(self, drain_timeout: Duration) {
        self.life.shutdown(drain_timeout).await;
    }

    /// Abrupt stop for tests that simulate a crash in-process: every task is
    /// aborted (appends and snapshot writes in flight included), the lease is
    /// left to expire. Once this returns the replica never touches the store.
    pub async fn abort(self) {
        self.life.abort().await;
    }
}

struct Core<S: Store, M> {
    applier: Applier<M>,
    learner: Learner,
    engine: Option<LeaderEngine<u64>>,
    waiters: BTreeMap<u64, ReplyTo>,
    next_token: u64,
    /// Which waiting client gets which applied outcome (see [`Replies`]).
    replies: Replies<u64, SubmitReply>,
    leader_view: Option<Leadership>,
    drains: DrainWaiters,
    shared: Arc<Shared>,
    health: Arc<Health>,
    store: Arc<S>,
    tx: mpsc::UnboundedSender<Msg>,
    progress: Progress,
    orphan: Orphan,
    /// Where the append and snapshot tasks this loop spawns go: they stop
    /// with the replica, so after shutdown or abort it never writes again.
    spawner: Spawner,
    /// Modules being fetched from the store, with the upgrade proposals
    /// (tokens in `waiters`) that wait for them.
    fetching: BTreeMap<String, Vec<u64>>,
    /// Why the group rejected this replica's own module, if it did.
    local_rejection: Option<String>,
    /// This replica served with its own module once: later upgrades of the
    /// group do not make it not ready (see `dorado_core::upgrade::plan`).
    module_settled: bool,
}

impl<S: Store, M: StateMachine + Send + 'static> CoreLoop for Core<S, M> {
    type Machine = M;
    type Msg = Msg;
    type Learned = Learned;

    fn handle(&mut self, msg: Msg) {
        self.handle_msg(msg);
    }

    fn submit(&mut self, command: Command, reply: ReplyTo) {
        self.submit_all(vec![(command, reply)]);
    }

    fn submit_all(&mut self, commands: Vec<(Command, ReplyTo)>) {
        let mut accepted = Vec::with_capacity(commands.len());
        for (command, reply) in commands {
            if let Some(token) = self.accept_locally(reply) {
                accepted.push((token, command));
            }
        }
        if let Some(engine) = self.engine.as_mut()
            && !accepted.is_empty()
        {
            let actions = engine.submit_all(accepted);
            self.perform(actions);
        }
    }

    fn propose_upgrade(&mut self, to: String, reply: ReplyTo) {
        self.propose(to, reply);
    }

    fn learn(&mut self, item: Learned) {
        self.learn_item(item);
    }

    fn after_learning(&mut self) {
        self.apply_ready();
    }

    fn tick(&mut self) {
        self.on_tick();
    }

    fn is_idle(&self) -> bool {
        self.engine.as_ref().is_none_or(|e| e.is_idle()) && self.replies.is_idle()
    }

    fn applier(&mut self) -> &mut Applier<M> {
        &mut self.applier
    }

    fn drains(&mut self) -> &mut DrainWaiters {
        &mut self.drains
    }

    fn stopping(&mut self) {
        if let Some(mut e) = self.engine.take() {
            let actions = e.step_down();
            self.perform(actions);
        }
    }
}

/// The leader engine of term `epoch`, if the replica still leads in it (a
/// task's result from an earlier term is stale).
fn of_term(engine: &mut Option<LeaderEngine<u64>>, epoch: Epoch) -> Option<&mut LeaderEngine<u64>> {
    engine.as_mut().filter(|e| e.epoch() == epoch)
}

impl<S: Store, M: StateMachine + Send + 'static> Core<S, M> {
    fn handle_msg(&mut self, msg: Msg) {
        match msg {
            Msg::AppendDone {
                epoch,
                index,
                result,
                elapsed,
            } => {
                let Some(engine) = of_term(&mut self.engine, epoch) else {
                    return;
                };
                self.health
                    .metrics
                    .append_latency
                    .observe(elapsed.as_secs_f64());
                if let Err(e) = &result {
                    self.health.metrics.store_errors.inc();
                    tracing::warn!(index, error = %e, "append failed");
                }
                let actions = engine.on_append(index, result, Instant::now().into_std(), elapsed);
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
            Msg::Wake { epoch } => {
                let Some(engine) = of_term(&mut self.engine, epoch) else {
                    return;
                };
                let actions = engine.on_wake(Instant::now().into_std());
                self.perform(actions);
            }
            Msg::ModuleFetched { sha256, result } => self.module_fetched(sha256, result),
        }
    }

    /// Whether this replica orders a client's request itself: if so, its
    /// waiter is registered under the returned token; if not (draining, a
    /// follower, no leader), the client has been answered.
    fn accept_locally(&mut self, reply: ReplyTo) -> Option<u64> {
        if self.health.is_draining() {
            let _ = reply.send(Err(SubmitError::ShuttingDown));
            return None;
        }
        let leader = self.leader_view.as_ref().map(|l| &l.leader);
        let refusal = match route(&self.health.config.replica, self.engine.is_some(), leader) {
            Route::Forward(addr) => SubmitError::Forward(addr),
            Route::NoLeader => SubmitError::NoLeader,
            Route::Local => {
                let token = self.next_token;
                self.next_token += 1;
                self.waiters.insert(token, reply);
                return Some(token);
            }
        };
        let _ = reply.send(Err(refusal));
        None
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
                    // Stopped with the replica, whatever it waits for.
                    self.spawner.spawn_until_stopped(async move {
                        if retry {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        let t0 = Instant::now();
                        let result = store.append(epoch, index, &bytes).await;
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
                    self.health.metrics.batch_size.observe(entry.len() as f64);
                    self.health.note_commit(index);
                    let (answers, offer) =
                        self.replies
                            .on_committed(index, waiters, self.applier.applied());
                    self.send_answers(answers);
                    if offer {
                        self.learner.offer(index, entry);
                    }
                }
                LeaderAction::WakeAt(at) => {
                    let Some(engine) = &self.engine else { continue };
                    let epoch = engine.epoch();
                    let tx = self.tx.clone();
                    self.spawner.spawn_until_stopped(async move {
                        tokio::time::sleep_until(Instant::from_std(at)).await;
                        let _ = tx.send(Msg::Wake { epoch });
                    });
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
                    self.set_leading(false);
                    self.publish_status();
                }
            }
        }
    }

    /// Leading starts or ends: the learner stops or resumes its log watch.
    fn set_leading(&self, leading: bool) {
        self.health.set_leading(leading);
        self.shared.role.notify_one();
    }

    fn step_down(&mut self) {
        if let Some(mut e) = self.engine.take() {
            let actions = e.step_down();
            self.perform(actions);
        }
        self.replies.on_step_down();
        self.set_leading(false);
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
        if superseded || self.engine.is_some() || self.health.is_draining() {
            return;
        }
        self.leader_view = Some(Leadership {
            leader: LeaderRecord {
                replica: self.health.config.replica.clone(),
                address: self.health.config.advertise.clone(),
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
        let from = leader_base(Some(base), self.applier.applied());
        let (engine, actions) =
            LeaderEngine::start(epoch, self.health.config.leader, from, last, &present);
        tracing::info!(epoch, last, gaps = actions.len(), "leading");
        self.engine = Some(engine);
        self.shared.lead_base.store(from, Ordering::Release);
        self.set_leading(true);
        self.health.metrics.elections_won.inc();
        self.health.note_commit(last);
        self.perform(actions);
        self.apply_ready();
        self.publish_status();
    }

    fn learn_item(&mut self, l: Learned) {
        match l {
            Learned::Entry(index, bytes) => {
                if index < self.learner.next() {
                    return;
                }
                match Entry::decode(&bytes) {
                    Ok(e) => {
                        self.health.note_commit(index);
                        self.learner.offer(index, e);
                    }
                    Err(e) => self.fatal(format!("log entry {index} is corrupt: {e}")),
                }
            }
            Learned::Restore(snap) => match self.applier.restore(&snap) {
                Ok(true) => {
                    self.learner.reset(snap.index);
                    self.publish_status();
                }
                Ok(false) => {}
                Err(e) => self.fatal(e),
            },
        }
    }

    /// Stop applying for good: not ready, the message in the status, and no
    /// longer a leader or a candidate (the lease task resigns the lease so
    /// another replica takes over).
    fn fatal(&mut self, msg: String) {
        self.health.set_fatal(msg);
        if self.engine.is_some() {
            self.step_down();
        }
    }

    fn apply_ready(&mut self) {
        while self.applier.can_apply()
            && self.next_module_ready()
            && let Some((index, entry)) = self.learner.pop_ready()
        {
            match self.applier.apply(index, &entry) {
                Ok(applied) => {
                    self.answer(applied);
                    self.maybe_snapshot(index);
                }
                Err(e) => {
                    let _ = self.applier.finish();
                    self.fatal(e);
                    return;
                }
            }
        }
        if let Err(e) = self.applier.finish() {
            self.fatal(e);
        }
        self.update_module_plan();
        self.publish_status();
    }

    fn answer(&mut self, applied: AppliedEntry) {
        let index = applied.index;
        if let Some(u) = &applied.upgrade
            && u.to == self.health.config.module_sha256
        {
            self.local_rejection = match &u.result {
                UpgradeResult::Rejected(reason) => Some(reason.clone()),
                _ => None,
            };
        }
        let replies = || match &applied.upgrade {
            Some(u) => vec![SubmitReply {
                index,
                outcome: crate::wire::UpgradeReply::outcome(index, u),
                duplicate: false,
            }],
            None => applied
                .commands
                .iter()
                .map(|c| SubmitReply {
                    index,
                    outcome: c.outcome.clone(),
                    duplicate: c.duplicate,
                })
                .collect::<Vec<_>>(),
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

    fn maybe_snapshot(&mut self, index: Index) {
        let policy = SnapshotPolicy {
            every: self.health.config.snapshot_every,
        };
        let in_progress = self.shared.snapshotting.load(Ordering::Acquire);
        if !policy.due(index, self.engine.is_some(), in_progress) {
            return;
        }
        self.shared.snapshotting.store(true, Ordering::Release);
        let (index, snap) = match self.applier.take_snapshot() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(index, error = %e, "cannot take snapshot");
                self.shared.snapshotting.store(false, Ordering::Release);
                return;
            }
        };
        let store = self.store.clone();
        let shared = self.shared.clone();
        // Stopped with the replica: a dead leader must not truncate the log.
        let spawned = self.spawner.spawn_until_stopped(async move {
            let write = async {
                store.put_snapshot(index, &snap).await?;
                store.delete_log_below(index).await?;
                store.delete_snapshots_below(index).await
            };
            match write.await {
                Ok(()) => {
                    shared.health.metrics.snapshots_written.inc();
                    tracing::info!(
                        index,
                        bytes = snap.len(),
                        "snapshot stored, log truncated below it"
                    );
                }
                Err(e) => {
                    shared.health.metrics.store_errors.inc();
                    tracing::warn!(index, error = %e, "snapshot not stored");
                }
            }
            shared.snapshotting.store(false, Ordering::Release);
        });
        if !spawned {
            self.shared.snapshotting.store(false, Ordering::Release);
        }
    }

    /// False while the next entry is an upgrade to a module this replica
    /// has not loaded: its fetch is started, and applying resumes when it
    /// ends ([`Msg::ModuleFetched`]). Having the module is a fact about this
    /// process, never part of the upgrade's outcome.
    fn next_module_ready(&mut self) -> bool {
        let Some(Entry::Upgrade { to }) = self.learner.peek_ready() else {
            return true;
        };
        let Some(catalog) = &self.health.config.modules else {
            return true; // cannot switch: the state machine rejects it deterministically
        };
        if catalog.has(to) {
            return true;
        }
        let to = to.clone();
        self.fetch_module(to);
        false
    }

    /// Fetch module `sha256` from the store into the catalog (once at a time).
    fn fetch_module(&mut self, sha256: String) {
        if self.fetching.contains_key(&sha256) {
            return;
        }
        self.fetching.insert(sha256.clone(), Vec::new());
        let Some(catalog) = self.health.config.modules.clone() else {
            return;
        };
        let store = self.store.clone();
        let tx = self.tx.clone();
        self.spawner.spawn_until_stopped(async move {
            let mut attempt = 0u32;
            let result = loop {
                match store.get_module(&sha256).await {
                    Ok(Some(bytes)) => break catalog.clone().add(sha256.clone(), bytes).await,
                    Ok(None) => break Err("it is not in the store (modules/<sha256>)".to_string()),
                    Err(StoreError::Unavailable(_)) => {
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                    }
                    Err(e) => break Err(e.to_string()),
                }
            };
            let _ = tx.send(Msg::ModuleFetched { sha256, result });
        });
    }

    fn module_fetched(&mut self, sha256: String, result: Result<(), String>) {
        let proposals = self.fetching.remove(&sha256).unwrap_or_default();
        match &result {
            Ok(()) => {
                for token in proposals {
                    self.order_upgrade(token, sha256.clone());
                }
                self.apply_ready();
            }
            Err(reason) => {
                tracing::warn!(module = %sha256, %reason, "cannot load module");
                for token in proposals {
                    if let Some(w) = self.waiters.remove(&token) {
                        let _ = w.send(Err(SubmitError::UnknownModule(sha256.clone())));
                    }
                }
                if matches!(self.learner.peek_ready(), Some(Entry::Upgrade { to }) if *to == sha256)
                {
                    self.fatal(format!(
                        "log entry {} upgrades the group to module {sha256}, which this replica cannot load: {reason}",
                        self.learner.next()
                    ));
                }
            }
        }
    }

    /// An upgrade proposal from a client (`POST /v1/upgrade`): ordered by
    /// the leader once the module is known to be in the store.
    fn propose(&mut self, to: String, reply: ReplyTo) {
        if dorado_core::upgrade::sha256_bytes(&to).is_none() {
            let _ = reply.send(Err(SubmitError::Invalid(EncodeError::BadModuleHash(to))));
            return;
        }
        let Some(token) = self.accept_locally(reply) else {
            return;
        };
        let has = self
            .health
            .config
            .modules
            .as_ref()
            .is_none_or(|c| c.has(&to));
        if has {
            self.order_upgrade(token, to);
        } else {
            self.fetch_module(to.clone());
            if let Some(waiting) = self.fetching.get_mut(&to) {
                waiting.push(token);
            }
        }
    }

    /// Hand a proposal whose module is loaded to the leader engine (or
    /// tell its client that leadership ended meanwhile).
    fn order_upgrade(&mut self, token: u64, to: String) {
        match self.engine.as_mut() {
            Some(engine) => {
                let actions = engine.propose_upgrade(token, to);
                self.perform(actions);
            }
            None => {
                if let Some(w) = self.waiters.remove(&token) {
                    let _ = w.send(Err(SubmitError::NotOrdered));
                }
            }
        }
    }

    /// Once caught up: does the group run this replica's module, should it
    /// propose it, or must it wait (see `dorado_core::upgrade::plan`)?
    fn update_module_plan(&mut self) {
        if self.module_settled || !self.health.caught_up() || self.health.is_fatal() {
            return;
        }
        let state = self.applier.state();
        let plan = module_plan(
            &self.health.config.module_sha256,
            &state.module,
            state.previous_module.as_deref(),
            self.health.config.upgrade,
            self.local_rejection.as_deref(),
        );
        if plan == ModulePlan::Serve {
            self.module_settled = true;
        }
        self.health.set_module_plan(plan);
    }

    fn on_tick(&mut self) {
        self.apply_ready();
        let next = self.learner.next();
        let gap = self.learner.gap().is_some();
        let commit = self.health.commit();
        let now = Instant::now().into_std();
        if self.progress.tick(now, next, gap, commit) == ProgressAction::Resubscribe {
            tracing::info!(waiting_for = next, "no progress; re-reading the log");
            self.shared.resubscribe.notify_one();
        }
        self.shared
            .stuck
            .store(self.progress.stuck(), Ordering::Release);
        let me = &self.health.config.replica;
        let named = self
            .leader_view
            .as_ref()
            .is_some_and(|l| &l.leader.replica == me);
        let leading = self.engine.is_some() || self.shared.preparing.load(Ordering::Acquire);
        if self.orphan.tick(now, named, leading) {
            tracing::warn!("the store names this replica leader but it does not lead; resigning");
            self.health.resign();
        }
        self.check_drained();
    }

    fn publish_status(&self) {
        let leading = self.engine.is_some();
        let view = self.leader_view.as_ref();
        let commit = self.health.commit();
        let group_module = &self.applier.state().module;
        self.health.publish(|s| {
            if s.group_module != *group_module {
                s.group_module.clone_from(group_module);
            }
            s.commit_index = commit;
            s.role = Role::of(leading);
            s.leader = view.map(|l| l.leader.replica.clone());
            s.leader_address = view.map(|l| l.leader.address.clone());
            s.epoch = view.map(|l| l.epoch);
        });
    }
}

impl Shared {
    fn set_view(&self, view: Option<Leadership>) {
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = view;
    }

    fn view(&self) -> Option<Leadership> {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Probe the leader this replica follows and depose it when
/// [`Suspicion`] says so (it stopped answering and the log stands still);
/// the election task then sees no leader and campaigns. The fence makes this
/// safe whatever the deposed leader believes.
async fn suspicion_task<S: Store>(
    store: Arc<S>,
    shared: Arc<Shared>,
    probe: Arc<dyn LeaderProbe>,
    cfg: SuspicionConfig,
    stop: CancellationToken,
) {
    let health = &shared.health;
    let me = health.config.replica.clone();
    let mut suspicion = Suspicion::new(cfg);
    let mut seen_commit = health.commit();
    let mut tick = tokio::time::interval(cfg.probe_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let view = shared.view().filter(|l| l.leader.replica != me);
        // A draining or fatal replica would not campaign: it does not depose.
        let eligible = !health.is_draining() && !health.is_fatal();
        let other = view.as_ref().filter(|_| eligible).map(|l| l.epoch);
        suspicion.on_leader(Instant::now().into_std(), other);
        let Some(leader) = view.filter(|_| suspicion.wants_probe()) else {
            continue;
        };
        let Some(outcome) = until_stopped(&stop, probe.probe(&leader.leader)).await else {
            return;
        };
        let commit = health.commit();
        if commit > seen_commit {
            seen_commit = commit;
            suspicion.on_progress();
        }
        let SuspicionAction::Depose(epoch) = suspicion.on_probe(Instant::now().into_std(), outcome)
        else {
            continue;
        };
        match until_stopped(&stop, store.depose(epoch)).await {
            None => return,
            Some(Ok(true)) => tracing::warn!(
                leader = %leader.leader.replica,
                epoch,
                next_window_ms = suspicion.window().as_millis() as u64,
                "deposed the leader: it stopped answering probes and the log stood still"
            ),
            Some(Ok(false)) => {
                tracing::debug!(epoch, "the suspected leader was already gone");
            }
            Some(Err(e)) => tracing::warn!(error = %e, epoch, "could not depose the leader"),
        }
    }
}

async fn election_task<S: Store>(
    store: Arc<S>,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Msg>,
    mut lease: watch::Receiver<Option<LeaseId>>,
    stop: CancellationToken,
) {
    let health = &shared.health;
    let me = LeaderRecord {
        replica: health.config.replica.clone(),
        address: health.config.advertise.clone(),
    };
    let mut attempt = 0;
    while !stop.is_cancelled() {
        let mut stream = store.watch_leader();
        let mut view: Option<Option<Leadership>> = None;
        let mut recheck = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                item = stream.next() => match item {
                    Some(Ok(v)) => {
                        attempt = 0;
                        view = Some(v.clone());
                        shared.set_view(v.clone());
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
                draining: health.is_draining(),
                fatal: health.is_fatal(),
                caught_up: health.caught_up(),
                stuck: shared.stuck.load(Ordering::Acquire),
            };
            if !may_campaign(inputs) {
                continue;
            }
            let Some(lease_id) = lease_id else { continue };
            let Some(campaign) = until_stopped(&stop, store.campaign(lease_id, &me)).await else {
                return;
            };
            match campaign {
                Ok(Some(epoch)) => {
                    tracing::info!(epoch, "won the election");
                    let leadership = Leadership {
                        leader: me.clone(),
                        epoch,
                    };
                    view = Some(Some(leadership.clone()));
                    shared.set_view(Some(leadership.clone()));
                    let _ = tx.send(Msg::LeaderView(Some(leadership)));
                    shared.preparing.store(true, Ordering::Release);
                    let prepared = until_stopped(&stop, prepare_leadership(&*store, health)).await;
                    shared.preparing.store(false, Ordering::Release);
                    match prepared {
                        None => return,
                        Some(Ok((base, last, entries))) => {
                            let _ = tx.send(Msg::LeaderReady {
                                epoch,
                                base,
                                last,
                                entries,
                            });
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "could not read the log after winning; resigning");
                            if until_stopped(&stop, store.revoke_lease(lease_id))
                                .await
                                .is_none()
                            {
                                return;
                            }
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "campaign failed"),
            }
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
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
    health: &Health,
) -> Result<(Index, Index, Vec<(Index, Vec<u8>)>), StoreError> {
    let snap = store.newest_snapshot_index().await?;
    let base = leader_base(snap, health.applied());
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
    stop: CancellationToken,
) {
    let health = &shared.health;
    let mut attempt = 0;
    while !stop.is_cancelled() {
        // A leader learns its own appends from their answers (the engine's
        // `Committed`) and the entries above its base from its election's
        // read; after its election nobody else can append. Once it applied up
        // to that base (restoring a snapshot if it was behind one), the watch
        // would only send every batch back to the replica that wrote it, so
        // the leader stops watching, and resumes from what it applied when
        // its term ends.
        let settled =
            || health.is_leading() && health.applied() >= shared.lead_base.load(Ordering::Acquire);
        if settled() {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = shared.role.notified() => {}
            }
            continue;
        }
        let mut from = health.applied() + 1;
        // A replica behind the newest snapshot restores it instead of replaying
        // (the entries below it may be gone).
        let Some(newest_index) = until_stopped(&stop, store.newest_snapshot_index()).await else {
            return;
        };
        match newest_index {
            Ok(Some(s)) if s >= from => {
                let Some(newest) = until_stopped(&stop, store.newest_snapshot()).await else {
                    return;
                };
                match newest {
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
                        health.set_store_error(Some(&e));
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read snapshot index");
                health.set_store_error(Some(&e));
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                }
                attempt += 1;
                continue;
            }
        }
        let mut stream = store.watch_log(from);
        let mut recheck = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = shared.resubscribe.notified() => break,
                _ = shared.role.notified() => {
                    if settled() {
                        break;
                    }
                }
                _ = recheck.tick() => {
                    if settled() {
                        break;
                    }
                }
                item = stream.next() => match item {
                    Some(Ok((index, bytes))) => {
                        attempt = 0;
                        if tx.send(Learned::Entry(index, bytes)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "log watch failed; re-subscribing");
                        health.set_store_error(Some(&e));
                        break;
                    }
                    None => break,
                }
            }
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff(attempt)) => {}
        }
        attempt += 1;
    }
}
