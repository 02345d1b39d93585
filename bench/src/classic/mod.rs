//! `--protocol classic`: the paper authors' 2016 ordering scheme, kept as a
//! baseline.
//!
//! # Why it exists
//! Every benchmark of Dorado should show the fenced, batched DORADO protocol
//! next to the scheme its paper started from (Netto et al., *State machine
//! replication in containers managed by Kubernetes*, JSA 2017; prototype:
//! `hvescovi/learnGo`, `05-replicatedcalc`), on the same etcd, with the same
//! wasm host, client API and replay trace. So this module replaces only the
//! ordering: [`ClassicNode`] implements [`Replica`] exactly like the DORADO
//! [`dorado::node::Node`], applies through the same [`ReplicaState`] (same
//! exactly-once sessions, same hash chain, same trace lines) and differs
//! only in how an index gets its command.
//!
//! # The scheme (what the prototype did, kept)
//! * **One etcd entry per request** carrying its consensus-instance number
//!   and view. A client may call any replica. The leader writes the order
//!   itself (`accept/<instance>/<view>/<leader>`); any other replica first
//!   writes the request with instance 0 (`requests/...`) and the leader,
//!   watching, orders it.
//! * **An acceptance entry written by every replica**: each replica that
//!   sees the leader's order writes its own `accept/<instance>/<view>/<me>`.
//! * **Decided once a majority of the group accepted** the same instance in
//!   the same view; replicas apply decided instances strictly in instance
//!   order (the prototype's executor).
//! * **View change by majority votes** under `elections/` (the prototype's
//!   `/appelections`): a replica that suspects the leader (its lease-bound
//!   member key vanished, or a request waited too long for an order — the
//!   prototype's leader monitor) votes for the next view, others echo, and
//!   the first stored vote of a view that reaches a majority names its leader.
//! * **No compare-and-swap, no batching, no snapshots**: every ordering write
//!   is a plain put (no `Txn` fence), every request is its own instance, and a
//!   replica that starts empty recovers by replaying the whole history.
//!
//! Where the prototype was unsafe (a new leader restarted numbering after its
//! last *executed* instance and could reuse an instance another replica had
//! already executed), this implementation follows the paper's intent with
//! the standard Paxos fix, still without any compare-and-swap: a vote is a
//! promise, and a new leader re-orders what it has seen accepted
//! (`protocol.rs` explains why that is enough). It also makes every replica
//! echo a vote (the prototype's leader did not, which can deadlock a group
//! with one follower down).
//!
//! # What it does not give that DORADO does
//! * **No fencing.** Nothing in etcd stops a deposed or paused leader from
//!   writing orders; the other replicas ignore them (they have moved to a
//!   newer view), so they cost etcd writes, and the old leader's clients
//!   wait until they time out instead of being told at once. Two replicas
//!   may both believe they lead for a while.
//! * **Liveness needs a majority** of `group_size` replicas alive and
//!   registered; DORADO keeps serving while any one replica is alive.
//! * **Safety rests on reading one total order.** Every replica must see
//!   etcd's writes in revision order (etcd's watch guarantees it); DORADO's
//!   fence instead lets etcd refuse a stale write outright.
//! * **No snapshots, no truncation**: recovery time and etcd storage grow with
//!   the whole history (the etcd quota eventually fills: `NOSPACE`), and each
//!   replica remembers every applied request id (so that a request ordered
//!   twice, e.g. re-submitted by a deposed leader, is applied once).
//! * **Fixed membership**: the first `group_size` replica ids to register
//!   form the group for good (use stable ids, e.g. StatefulSet pod names); a
//!   further id is refused rather than allowed to break majorities.
//! * **Throughput**: at least `group_size + 1` etcd writes per request
//!   (request, order, acceptances) and no batching, by design of the scheme.
//! * **Reads**: a linearizable query reads the acceptance keys above what the
//!   replica applied and waits for the decided prefix; there is no leader to
//!   forward to and followers never answer with a leader address.

mod node;
mod protocol;
mod store;
mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dorado_core::{Command, Index, LeaseId, ReplicaState, StateMachine, StoreError};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use protocol::{RequestId, View};
pub use wire::ClassicMeta;

use dorado::metrics::Metrics;
use dorado::node::{Consistency, NodeConfig, QueryError, Role, Status, SubmitError, SubmitReply};
use dorado::replica::Replica;
use dorado::store::EtcdStore;
use dorado::trace::TraceWriter;
use node::{Core, Feed, Msg, Shared};
use store::ClassicStore;

/// The protocol name recorded in the group's meta and status.
pub const PROTOCOL: &str = crate::Protocol::Classic.name();

/// How a classic replica runs.
#[derive(Debug, Clone)]
pub struct ClassicConfig {
    /// Identity, module, trace format, lease TTL, timeouts: the same fields
    /// as a DORADO replica (`snapshot_every` and `leader` are unused: the
    /// scheme has neither snapshots nor batching).
    pub node: NodeConfig,
    /// Replicas in the group; a majority of them decides and changes views.
    /// Fixed by the group's first replica.
    pub group_size: usize,
    /// How long the leader's member key may be missing (without an observed
    /// lease expiry) before this replica votes for a new view.
    pub suspect_after: Duration,
    /// How long a request received here may wait for an order before this
    /// replica votes for a new view (the prototype waited one second).
    pub order_timeout: Duration,
    /// Bound on every etcd request.
    pub store_timeout: Duration,
}

impl ClassicConfig {
    /// Defaults for everything but the node settings and the group size.
    pub fn new(node: NodeConfig, group_size: usize) -> Self {
        ClassicConfig {
            node,
            group_size,
            suspect_after: Duration::from_millis(500),
            order_timeout: Duration::from_secs(2),
            store_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a classic replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClassicError {
    /// The configuration cannot work.
    #[error("invalid classic configuration: {0}")]
    Config(String),
    /// The group was created with another module.
    #[error(
        "module mismatch for classic group {group}: this replica loaded sha256 {ours} but the group was created with sha256 {theirs}; refusing to apply"
    )]
    ModuleMismatch {
        /// Group name.
        group: String,
        /// Our module's hash.
        ours: String,
        /// The group's.
        theirs: String,
    },
    /// The group was created for another number of replicas.
    #[error(
        "classic group {group} was created for {theirs} replicas but this replica was started with --replicas {ours}; majorities would not intersect"
    )]
    GroupSizeMismatch {
        /// Group name.
        group: String,
        /// Ours.
        ours: usize,
        /// The group's.
        theirs: usize,
    },
    /// The group already has `group_size` other registered replicas.
    #[error(
        "classic group {group} already has its {group_size} replicas ({roster}); replica {replica} is refused (membership is fixed: reuse one of those ids)"
    )]
    GroupFull {
        /// Group name.
        group: String,
        /// This replica.
        replica: String,
        /// The group's size.
        group_size: usize,
        /// The registered replicas, comma separated.
        roster: String,
    },
    /// The group's meta names another protocol.
    #[error("group {group} under classic/ was created with protocol {theirs}")]
    ProtocolMismatch {
        /// Group name.
        group: String,
        /// What the meta says.
        theirs: String,
    },
    /// etcd failed in a way retrying cannot fix.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Handle to a running classic replica (cheap to clone).
#[derive(Clone)]
pub struct ClassicNode {
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
    store: ClassicStore,
}

impl std::fmt::Debug for ClassicNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassicNode")
            .field("replica", &self.shared.config.node.replica)
            .finish()
    }
}

impl ClassicNode {
    /// Order a command through the classic scheme and wait until this
    /// replica applied it. Any replica accepts commands.
    pub async fn submit(&self, command: Command) -> Result<SubmitReply, SubmitError> {
        // What encoding requires (client id length, payload size), checked
        // before the command is proposed, as DORADO's `Node::submit` does.
        command.validate().map_err(SubmitError::Invalid)?;
        if self.shared.draining.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Submit { command, reply })
            .map_err(|_| SubmitError::ShuttingDown)?;
        let timeout = self.shared.config.node.submit_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(SubmitError::ShuttingDown),
            Err(_) => Err(SubmitError::Timeout(timeout)),
        }
    }

    /// Run a read-only query; a linearizable one first reads which
    /// instances etcd holds decided and waits until they are applied here.
    pub async fn query(
        &self,
        query: Vec<u8>,
        consistency: Consistency,
    ) -> Result<Vec<u8>, QueryError> {
        let min_index = match consistency {
            Consistency::Stale => 0,
            Consistency::Linearizable => {
                let (roster, majority) = self
                    .shared
                    .roster
                    .read()
                    .map(|r| r.clone())
                    .unwrap_or_default();
                let from = self.applied_index() + 1;
                self.store
                    .decided_prefix(from, &roster, majority)
                    .await
                    .map_err(QueryError::Store)?
            }
        };
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Query {
                query,
                min_index,
                reply,
            })
            .map_err(|_| QueryError::ShuttingDown)?;
        let timeout = self.shared.config.node.catch_up_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(QueryError::ShuttingDown),
            Err(_) => Err(QueryError::Behind {
                index: min_index,
                timeout,
            }),
        }
    }

    /// Wait (bounded by the catch-up timeout) until `index` is applied here.
    pub async fn wait_applied(&self, index: Index) -> bool {
        if self.applied_index() >= index {
            return true;
        }
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::WaitApplied { index, reply }).is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout(self.shared.config.node.catch_up_timeout, rx).await,
            Ok(Ok(()))
        )
    }

    /// The status report (`protocol` is `classic`, `epoch` is the view).
    pub fn status(&self) -> Status {
        let mut s = self
            .shared
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        s.ready = self.is_ready();
        s.store_error = self
            .shared
            .store_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .or_else(|| self.shared.fatal.lock().ok().and_then(|f| f.clone()));
        s
    }

    /// Whether the history is replayed, etcd answers and the lease is held.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    /// True while this replica leads the installed view.
    pub fn is_leader(&self) -> bool {
        self.shared.leading.load(Ordering::Acquire)
    }

    /// True once shutdown began.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Highest applied instance.
    pub fn applied_index(&self) -> Index {
        self.shared.applied.load(Ordering::Acquire)
    }

    /// Prometheus text.
    pub fn render_metrics(&self) -> String {
        self.shared.metrics.render()
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.shared.config.node.replica
    }

    /// The current state as an encoded snapshot (for comparing replicas;
    /// the scheme never stores snapshots).
    pub async fn snapshot(&self) -> Option<(Index, Vec<u8>)> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Snapshot { reply }).ok()?;
        rx.await.ok().flatten()
    }
}

impl Replica for ClassicNode {
    fn submit(&self, command: Command) -> BoxFuture<'_, Result<SubmitReply, SubmitError>> {
        Box::pin(ClassicNode::submit(self, command))
    }

    fn query(
        &self,
        query: Vec<u8>,
        consistency: Consistency,
    ) -> BoxFuture<'_, Result<Vec<u8>, QueryError>> {
        Box::pin(ClassicNode::query(self, query, consistency))
    }

    fn wait_applied(&self, index: Index) -> BoxFuture<'_, bool> {
        Box::pin(ClassicNode::wait_applied(self, index))
    }

    fn status(&self) -> Status {
        ClassicNode::status(self)
    }

    fn is_ready(&self) -> bool {
        ClassicNode::is_ready(self)
    }

    fn is_draining(&self) -> bool {
        ClassicNode::is_draining(self)
    }

    fn render_metrics(&self) -> String {
        ClassicNode::render_metrics(self)
    }

    fn replica_id(&self) -> &str {
        ClassicNode::replica(self)
    }

    fn snapshot(&self) -> BoxFuture<'_, Option<(Index, Vec<u8>)>> {
        Box::pin(ClassicNode::snapshot(self))
    }
}

/// A started classic replica: its handle plus what is needed to stop it.
pub struct RunningClassic {
    node: ClassicNode,
    cancel: CancellationToken,
    lease: watch::Receiver<Option<LeaseId>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    core: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for RunningClassic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningClassic")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn backoff(attempt: u32) -> Duration {
    node::backoff(attempt)
}

/// Retry `op` while etcd is unreachable (a state to report, not a crash).
async fn retrying<T, F, Fut>(what: &str, mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(e @ (StoreError::Unavailable(_) | StoreError::NoSpace(_))) => {
                tracing::warn!(error = %e, "{what}: store not reachable yet; retrying");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Join the classic group `store` is scoped to: check (or create) its meta,
/// register in its roster, then replay its whole history and follow it.
///
/// `config.node.module_sha256` and `abi_version` must describe `sm`'s module.
pub async fn start_classic<M: StateMachine + Send + 'static>(
    store: EtcdStore,
    sm: M,
    config: ClassicConfig,
    trace: TraceWriter,
) -> Result<RunningClassic, ClassicError> {
    if config.group_size == 0 {
        return Err(ClassicError::Config(
            "the group size must be at least 1".into(),
        ));
    }
    dorado::store::validate_name("replica", &config.node.replica)?;
    let group = config.node.group.clone();
    let store = ClassicStore::new(store, config.store_timeout);
    let meta = ClassicMeta {
        module_sha256: config.node.module_sha256.clone(),
        abi_version: config.node.abi_version,
        protocol: PROTOCOL.into(),
        session_expiry_entries: config.node.session_expiry_entries,
        group_size: config.group_size,
    };
    let stored = retrying("init meta", || store.init_meta(&meta)).await?;
    if stored.protocol != PROTOCOL {
        return Err(ClassicError::ProtocolMismatch {
            group,
            theirs: stored.protocol,
        });
    }
    if stored.module_sha256 != meta.module_sha256 {
        return Err(ClassicError::ModuleMismatch {
            group,
            ours: meta.module_sha256,
            theirs: stored.module_sha256,
        });
    }
    if stored.group_size != config.group_size {
        return Err(ClassicError::GroupSizeMismatch {
            group,
            ours: config.group_size,
            theirs: stored.group_size,
        });
    }
    let me = config.node.replica.clone();
    let roster = retrying("register", || store.register(&me)).await?;
    let members: Vec<&str> = roster
        .iter()
        .take(stored.group_size)
        .map(|(_, r)| r.as_str())
        .collect();
    if !members.contains(&me.as_str()) {
        return Err(ClassicError::GroupFull {
            group,
            replica: me,
            group_size: stored.group_size,
            roster: members.join(","),
        });
    }

    let incarnation: u64 = rand::random();
    let status = Status {
        group: config.node.group.clone(),
        namespace: config.node.namespace.clone(),
        replica: me.clone(),
        role: Role::Follower,
        leader: None,
        leader_address: None,
        epoch: None,
        applied_index: 0,
        commit_index: 0,
        hash: dorado_core::ChainHash::GENESIS.to_string(),
        module_sha256: config.node.module_sha256.clone(),
        ready: false,
        store_error: None,
        snapshot_index: 0,
        protocol: crate::Protocol::Classic,
    };
    let shared = Arc::new(Shared {
        metrics: Metrics::new(),
        applied: AtomicU64::new(0),
        ready: AtomicBool::new(false),
        replayed: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        leading: AtomicBool::new(false),
        lease_held: AtomicBool::new(false),
        fatal: Mutex::new(None),
        status: Mutex::new(status),
        store_error: Mutex::new(None),
        roster: RwLock::new((
            members.iter().map(|r| (*r).to_owned()).collect(),
            stored.group_size / 2 + 1,
        )),
        config: config.clone(),
    });

    let cancel = CancellationToken::new();
    let (tx, rx) = mpsc::unbounded_channel();
    let (feed_tx, feed_rx) = mpsc::channel::<Feed>(4096);
    let (lease_tx, lease_rx) = watch::channel(None);
    let core = Core::new(
        protocol::Protocol::new(&me, incarnation, stored.group_size),
        ReplicaState::new(stored.session_expiry_entries),
        sm,
        store.clone(),
        shared.clone(),
        tx.clone(),
        trace,
        incarnation,
        cancel.clone(),
    );
    tracing::info!(
        group = %config.node.group,
        replica = %me,
        group_size = stored.group_size,
        "classic replica starting: replaying the whole history"
    );
    let span = tracing::info_span!("classic", replica = %me);
    let core = tokio::spawn(core.run(rx, feed_rx).instrument(span.clone()));
    let tasks = vec![
        tokio::spawn(
            node::lease_task(store.clone(), shared.clone(), lease_tx, cancel.clone())
                .instrument(span.clone()),
        ),
        tokio::spawn(
            node::feed_task(store.clone(), shared.clone(), feed_tx, cancel.clone())
                .instrument(span.clone()),
        ),
        tokio::spawn(
            node::health_task(store.clone(), shared.clone(), cancel.clone()).instrument(span),
        ),
    ];
    Ok(RunningClassic {
        node: ClassicNode { tx, shared, store },
        cancel,
        lease: lease_rx,
        tasks,
        core: Some(core),
    })
}

impl RunningClassic {
    /// The replica's handle.
    pub fn node(&self) -> ClassicNode {
        self.node.clone()
    }

    /// The handle as the client API takes it.
    pub fn replica(&self) -> Arc<dyn Replica> {
        Arc::new(self.node.clone())
    }

    /// Graceful stop: refuse new commands, let waiting ones finish (bounded),
    /// revoke the lease so the others see this replica gone at once (and
    /// change view without waiting for the TTL if it led), flush the trace.
    pub async fn shutdown(mut self, drain_timeout: Duration) {
        let shared = &self.node.shared;
        shared.draining.store(true, Ordering::Release);
        shared.update_ready();
        let (reply, rx) = oneshot::channel();
        if self.node.tx.send(Msg::Drain { reply }).is_ok() {
            let _ = tokio::time::timeout(drain_timeout, rx).await;
        }
        let lease = *self.lease.borrow();
        self.cancel.cancel();
        if let Some(lease) = lease {
            match self.node.store.revoke_lease(lease).await {
                Ok(()) => tracing::info!("lease revoked; member key removed"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not revoke the lease; it will expire by itself");
                }
            }
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        if let Some(core) = self.core.take() {
            let _ = core.await;
        }
    }

    /// Abrupt stop, for tests that simulate a crash in-process: every task
    /// ends, the lease is left to expire.
    pub async fn abort(mut self) {
        self.cancel.cancel();
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(core) = self.core.take() {
            core.abort();
            let _ = core.await;
        }
    }
}
