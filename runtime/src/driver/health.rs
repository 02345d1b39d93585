//! What a replica's core loop, its client handle and its background tasks
//! share, and the health task that keeps `/readyz` honest.
//!
//! Both ordering protocols report the same status and readiness, so the
//! flags behind them (applied index, draining, leading, fatal, store error,
//! lease held) live in one type, [`Health`], with one readiness rule
//! ([`ReadyInputs`]) and one way to turn fatal. Only the core loop writes the
//! applied index and the protocol's part of the status; the other flags are
//! written by the task that observes them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dorado_core::ModulePlan;
use dorado_core::decide::{Readiness, ReadyInputs};
use dorado_core::{Index, MemberRecord, StoreError, StoreResult};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, gauge_value};
use crate::node::NodeConfig;
use crate::wire::{Protocol, Role, Status};

/// State shared by a replica's core loop, handle and tasks.
#[derive(Debug)]
pub struct Health {
    /// The replica's configuration (identity, timeouts, trace format).
    pub config: NodeConfig,
    /// Its Prometheus metrics.
    pub metrics: Metrics,
    applied: AtomicU64,
    commit: AtomicU64,
    ready: AtomicBool,
    caught_up: AtomicBool,
    draining: AtomicBool,
    leading: AtomicBool,
    lease_held: AtomicBool,
    /// The group runs this replica's module (see [`Health::set_module_plan`]).
    module_ok: AtomicBool,
    /// Why this replica stopped applying (corrupt entry, unwritable trace, ...).
    fatal: Mutex<Option<String>>,
    /// Asks the lease task to revoke the lease so that another replica leads
    /// (see [`Health::set_fatal`] and [`Health::resign`]).
    resign: tokio::sync::Notify,
    status: Mutex<Status>,
    store_error: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Health {
    /// A replica of `config` running `protocol`, not ready, nothing applied.
    pub fn new(config: NodeConfig, protocol: Protocol) -> Self {
        let status = Status {
            group: config.group.clone(),
            namespace: config.namespace.clone(),
            replica: config.replica.clone(),
            role: Role::Follower,
            leader: None,
            leader_address: None,
            epoch: None,
            applied_index: 0,
            commit_index: 0,
            hash: dorado_core::ChainHash::GENESIS.to_string(),
            module_sha256: config.module_sha256.clone(),
            group_module: config.module_sha256.clone(),
            module_state: crate::wire::ModuleState::Serving,
            ready: false,
            store_error: None,
            snapshot_index: 0,
            protocol,
        };
        Health {
            config,
            metrics: Metrics::new(),
            applied: AtomicU64::new(0),
            commit: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            caught_up: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            leading: AtomicBool::new(false),
            lease_held: AtomicBool::new(false),
            module_ok: AtomicBool::new(true),
            fatal: Mutex::new(None),
            resign: tokio::sync::Notify::new(),
            status: Mutex::new(status),
            store_error: Mutex::new(None),
        }
    }

    /// Highest applied index.
    pub fn applied(&self) -> Index {
        self.applied.load(Ordering::Acquire)
    }

    /// Record what the core loop has applied (only the core loop calls this).
    pub(crate) fn set_applied(&self, applied: Index) {
        self.applied.store(applied, Ordering::Release);
        self.metrics.applied_index.set(gauge_value(applied));
    }

    /// Highest index known to be in the store.
    pub fn commit(&self) -> Index {
        self.commit.load(Ordering::Acquire)
    }

    /// Raise the known committed index.
    pub fn note_commit(&self, index: Index) {
        self.commit.fetch_max(index, Ordering::AcqRel);
    }

    /// Whether `/readyz` says ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Whether the replica has caught up (see [`Readiness`]).
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Set the catch-up flag and re-evaluate readiness.
    pub fn set_caught_up(&self, caught_up: bool) {
        self.caught_up.store(caught_up, Ordering::Release);
        self.update_ready();
    }

    /// True once shutdown began.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Shutdown begins: no new commands, not ready.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.update_ready();
    }

    /// True while this replica leads.
    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// Record whether this replica leads (flag and metric).
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Release);
        self.metrics.is_leader.set(i64::from(leading));
    }

    /// Whether this replica holds a lease (is a live member).
    pub fn lease_held(&self) -> bool {
        self.lease_held.load(Ordering::Acquire)
    }

    pub(crate) fn set_lease_held(&self, held: bool) {
        self.lease_held.store(held, Ordering::Release);
        self.update_ready();
    }

    /// What this replica does about its own module (see
    /// `dorado_core::upgrade::plan`): only [`ModulePlan::Serve`] lets it be
    /// ready. Protocols that never call this serve from the start.
    pub fn set_module_plan(&self, plan: ModulePlan) {
        let ok = plan == ModulePlan::Serve;
        let state = crate::wire::ModuleState::from(plan);
        {
            let mut status = lock(&self.status);
            if status.module_state != state {
                if let crate::wire::ModuleState::Waiting(reason) = &state {
                    tracing::warn!("not ready: {reason}");
                }
                status.module_state = state;
            }
        }
        self.module_ok.store(ok, Ordering::Release);
        self.update_ready();
    }

    /// Whether the replica stopped applying for good.
    pub fn is_fatal(&self) -> bool {
        lock(&self.fatal).is_some()
    }

    /// Stop applying for good: not ready, the message in the status, and the
    /// lease task resigns the lease (and takes no new one), so this replica
    /// neither leads nor counts as a live member until restarted. The caller
    /// steps down from whatever leadership its protocol has.
    pub fn set_fatal(&self, msg: String) {
        tracing::error!("{msg}; this replica stops applying until restarted");
        *lock(&self.fatal) = Some(msg);
        self.ready.store(false, Ordering::Release);
        self.metrics.ready.set(0);
        self.resign.notify_one();
    }

    /// Ask the lease task to revoke the lease so another replica leads (the
    /// store names this replica leader although it does not lead).
    pub fn resign(&self) {
        self.resign.notify_one();
    }

    pub(crate) async fn resign_requested(&self) {
        self.resign.notified().await;
    }

    /// Record the outcome of the last store operation that tells whether the
    /// store is reachable.
    pub fn set_store_error(&self, e: Option<&StoreError>) {
        *lock(&self.store_error) = e.map(ToString::to_string);
    }

    fn store_failing(&self) -> bool {
        lock(&self.store_error).is_some()
    }

    /// Re-evaluate readiness ([`ReadyInputs::ready`]).
    pub fn update_ready(&self) {
        let ready = ReadyInputs {
            lease_held: self.lease_held(),
            store_ok: !self.store_failing(),
            fatal: self.is_fatal(),
            caught_up: self.caught_up(),
            draining: self.is_draining(),
            module_ok: self.module_ok.load(Ordering::Acquire),
        }
        .ready();
        self.ready.store(ready, Ordering::Release);
        self.metrics.ready.set(i64::from(ready));
    }

    /// Change the published status (the core loop's view of the protocol).
    pub fn publish(&self, f: impl FnOnce(&mut Status)) {
        let mut s = lock(&self.status);
        f(&mut s);
        s.commit_index = s.commit_index.max(s.applied_index);
        self.metrics.commit_index.set(gauge_value(s.commit_index));
    }

    /// The status report: the published status plus the live flags.
    pub fn status(&self) -> Status {
        let mut s = lock(&self.status).clone();
        s.ready = self.is_ready();
        s.commit_index = s.commit_index.max(self.commit());
        s.store_error = lock(&self.store_error)
            .clone()
            .or_else(|| lock(&self.fatal).clone());
        s
    }

    /// What the lease task publishes under `members/<replica>`.
    pub fn member_record(&self) -> MemberRecord {
        MemberRecord {
            address: self.config.advertise.clone(),
            applied_index: self.applied(),
            hash: lock(&self.status).hash.clone(),
        }
    }
}

/// Reads the store for the health task: the highest index the store holds at
/// or above `from` (the index after what this replica applied).
pub type Probe = Arc<dyn Fn(Index) -> BoxFuture<'static, StoreResult<Option<Index>>> + Send + Sync>;

/// Who decides that a replica has caught up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// The health task, by [`Readiness`]: caught up once the replica applied
    /// what the probe found in the store at the previous check.
    ByProbe,
    /// The protocol's core loop ([`Health::set_caught_up`]); the probe only
    /// tells whether the store answers.
    ByCore,
}

/// How long a health check may take before the store counts as unavailable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Store reachability and catch-up, for `/readyz`, every 250 ms until `stop`.
///
/// With [`CatchUp::ByProbe`], a replica that is not caught up turns ready as
/// soon as it applies what the store held at the last check, not at the next
/// one: a recreated pod would otherwise report ready up to a check period late.
pub async fn health_task(
    health: Arc<Health>,
    probe: Probe,
    catch_up: CatchUp,
    stop: CancellationToken,
) {
    let mut readiness = Readiness::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let goal = match catch_up {
            CatchUp::ByProbe => readiness.goal(),
            CatchUp::ByCore => None,
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = applied_reaches(&health, goal) => {
                readiness.on_applied(health.applied());
                health.set_caught_up(readiness.caught_up());
                continue;
            }
        }
        // Only the entries above what this replica applied are read, so a
        // check costs the store the same whatever the log's length.
        let applied_before = health.applied();
        let result = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(CHECK_TIMEOUT, probe(applied_before + 1)) => r,
        };
        match result {
            Ok(Ok(last)) => {
                health.set_store_error(None);
                if catch_up == CatchUp::ByProbe {
                    health.note_commit(last.unwrap_or(applied_before));
                    readiness.on_check(health.applied(), last);
                    health
                        .caught_up
                        .store(readiness.caught_up(), Ordering::Release);
                }
            }
            Ok(Err(e)) => {
                if !health.store_failing() {
                    tracing::warn!(error = %e, "store check failed");
                }
                health.set_store_error(Some(&e));
            }
            Err(_) => {
                health.set_store_error(Some(&StoreError::Unavailable(format!(
                    "store did not answer within {CHECK_TIMEOUT:?}"
                ))));
            }
        }
        health.update_ready();
    }
}

/// Resolves once the replica has applied `goal`; never without a goal. Polls
/// an atomic (no store access), only while a replica catches up.
async fn applied_reaches(health: &Health, goal: Option<Index>) {
    let Some(goal) = goal else {
        return std::future::pending().await;
    };
    while health.applied() < goal {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
