//! `--protocol classic`: the paper authors' 2016 ordering scheme, kept as a
//! baseline.
//!
//! # Why it exists
//! Every benchmark of Dorado should show the fenced, batched DORADO protocol
//! next to the scheme its paper started from (Netto et al., *State machine
//! replication in containers managed by Kubernetes*, JSA 2017; prototype:
//! `hvescovi/learnGo`, `05-replicatedcalc`), on the same etcd, with the same
//! wasm host, client API and replay trace. So this module replaces only the
//! ordering: it is built from the runtime's driver parts ([`dorado::driver`]),
//! so [`ClassicNode`] *is* the DORADO replica's handle type, applies through
//! the same [`dorado::driver::Applier`] (same exactly-once sessions, same hash
//! chain, same trace lines), keeps its lease, reports readiness and stops its
//! tasks the same way, and differs only in how an index gets its command.
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

use std::sync::{Arc, RwLock};
use std::time::Duration;

use dorado_core::{StateMachine, StoreError};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use protocol::{RequestId, View};
pub use wire::ClassicMeta;

use dorado::driver::{
    Applier, CatchUp, CoreInputs, Health, Lifecycle, Probe, ReadBound, ReplicaHandle, TaskSet,
    health_task, lease_task, retry_unreachable, run_core,
};
use dorado::node::NodeConfig;
use dorado::replica::Replica;
use dorado::store::EtcdStore;
use dorado::trace::TraceWriter;
use node::{Core, Feed, Shared};
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

/// Handle to a running classic replica (cheap to clone): the driver's
/// [`ReplicaHandle`], the same type as DORADO's [`dorado::node::Node`]. Any
/// replica accepts commands; a linearizable query first reads which
/// instances etcd holds decided and waits until they are applied here;
/// `status().epoch` is the view.
pub type ClassicNode = ReplicaHandle;

/// A started classic replica: its handle plus what is needed to stop it.
///
/// Dropping it stops every task of the replica (see [`dorado::driver::TaskSet`]).
#[derive(Debug)]
pub struct RunningClassic {
    life: Lifecycle<ClassicStore>,
}

/// Join the classic group `store` is scoped to: check (or create) its meta,
/// register in its roster, then replay its whole history and follow it.
///
/// `config.node.module_sha256` and `abi_version` must describe `sm`'s module.
/// Cancelling `shutdown` stops every task of the replica (abruptly);
/// [`RunningClassic::shutdown`] is the graceful stop.
pub async fn start_classic<M: StateMachine + Send + 'static>(
    store: EtcdStore,
    sm: M,
    config: ClassicConfig,
    trace: TraceWriter,
    shutdown: CancellationToken,
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
    let stored = retry_unreachable("init meta", || store.init_meta(&meta)).await?;
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
    let roster = retry_unreachable("register", || store.register(&me)).await?;
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
    let health = Arc::new(Health::new(config.node.clone(), crate::Protocol::Classic));
    let shared = Arc::new(Shared {
        health: health.clone(),
        roster: RwLock::new((
            members.iter().map(|r| (*r).to_owned()).collect(),
            stored.group_size / 2 + 1,
        )),
        config: config.clone(),
    });
    // The classic baseline never upgrades: its group runs the module it
    // was created with (checked against `meta` above).
    let applier = Applier::new(
        stored.session_expiry_entries,
        stored.module_sha256.clone(),
        sm,
        trace,
        health.clone(),
    );

    let store = Arc::new(store);
    let tasks = TaskSet::new(&shutdown);
    let spawner = tasks.spawner();
    let stop = tasks.token();
    let (tx, rx) = mpsc::unbounded_channel();
    let (requests_tx, requests) = mpsc::unbounded_channel();
    let (feed_tx, feed_rx) = mpsc::channel::<Feed>(4096);
    let (lease_tx, lease_rx) = watch::channel(None);
    let core = Core::new(
        protocol::Protocol::new(&me, incarnation, stored.group_size),
        applier,
        (*store).clone(),
        shared.clone(),
        tx,
        incarnation,
        spawner.clone(),
    );
    tracing::info!(
        group = %config.node.group,
        replica = %me,
        group_size = stored.group_size,
        "classic replica starting: replaying the whole history"
    );
    let span = tracing::info_span!("classic", replica = %me);
    spawner.spawn(
        run_core(
            core,
            CoreInputs {
                msgs: rx,
                requests,
                learned: feed_rx,
            },
            Duration::from_millis(100),
            stop.clone(),
        )
        .instrument(span.clone()),
    );
    spawner.spawn(
        lease_task(store.clone(), health.clone(), lease_tx, || {}, stop.clone())
            .instrument(span.clone()),
    );
    spawner.spawn(
        node::feed_task((*store).clone(), health.clone(), feed_tx, stop.clone())
            .instrument(span.clone()),
    );
    // etcd reachability; caught up means the history is replayed (the core).
    let probe_store = store.clone();
    let probe: Probe = Arc::new(move |_| {
        let store = probe_store.clone();
        Box::pin(async move { store.ping().await.map(|_| None) })
    });
    spawner.spawn(health_task(health.clone(), probe, CatchUp::ByCore, stop).instrument(span));
    let read_store = store.clone();
    let read_shared = shared.clone();
    let read_bound: ReadBound = Arc::new(move |from| {
        let store = read_store.clone();
        let (roster, majority) = read_shared
            .roster
            .read()
            .map(|r| r.clone())
            .unwrap_or_default();
        Box::pin(async move { Some(store.decided_prefix(from, &roster, majority).await) })
    });
    let node = ReplicaHandle::new(requests_tx, health, read_bound);
    Ok(RunningClassic {
        life: Lifecycle::new(node, store, lease_rx, tasks),
    })
}

impl RunningClassic {
    /// The replica's handle.
    pub fn node(&self) -> ClassicNode {
        self.life.handle().clone()
    }

    /// The handle as the client API takes it.
    pub fn replica(&self) -> Arc<dyn Replica> {
        Arc::new(self.node())
    }

    /// Graceful stop: refuse new commands, let waiting ones finish (bounded),
    /// stop every task, revoke the lease so the others see this replica gone
    /// at once (and change view without waiting for the TTL if it led), flush
    /// the trace.
    pub async fn shutdown(self, drain_timeout: Duration) {
        self.life.shutdown(drain_timeout).await;
    }

    /// Abrupt stop, for tests that simulate a crash in-process: every task
    /// (writes in flight included) is aborted, the lease is left to expire.
    pub async fn abort(self) {
        self.life.abort().await;
    }
}
