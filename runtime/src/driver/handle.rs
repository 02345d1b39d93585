//! The client side of a replica (what the HTTP API calls) and its lifecycle
//! (graceful shutdown, abort), shared by every ordering protocol so that both
//! answer clients, time out, drain and resign the same way.

use std::sync::Arc;
use std::time::Duration;

use dorado_core::{Command, Index, LeaseId, StoreResult};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};

use super::health::Health;
use super::lease::LeaseStore;
use super::tasks::TaskSet;
use crate::node::{Consistency, QueryError, Status, SubmitError, SubmitReply};
use crate::replica::Replica;

/// What a handle asks of the core loop.
#[derive(Debug)]
pub enum Request {
    /// Order `command` (the protocol decides how) and answer once applied here.
    Submit {
        /// The command, already validated.
        command: Command,
        /// Where its outcome goes.
        reply: ReplyTo,
    },
    /// Order a switch of the group to module `to` (sha256 hex) and answer
    /// once the upgrade entry is applied here.
    ProposeUpgrade {
        /// The module's sha256; the module must be in the store.
        to: String,
        /// Where the outcome goes.
        reply: ReplyTo,
    },
    /// Answer once no command of this replica is still being ordered.
    Drain {
        /// Answered (or dropped) then.
        reply: oneshot::Sender<()>,
    },
    /// Served by the [`super::Applier`] alone.
    Read(ReadRequest),
}

/// What only needs the applied state ([`super::Applier::serve`]).
#[derive(Debug)]
pub enum ReadRequest {
    /// A read-only query, once `min_index` is applied.
    Query {
        /// Query bytes.
        query: Vec<u8>,
        /// Answer only once this index is applied.
        min_index: Index,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Vec<u8>, QueryError>>,
    },
    /// Answer once `index` is applied.
    WaitApplied {
        /// The index.
        index: Index,
        /// Answered then.
        reply: oneshot::Sender<()>,
    },
    /// The current state as an encoded snapshot, with its index.
    Snapshot {
        /// Where it goes.
        reply: oneshot::Sender<Option<(Index, Vec<u8>)>>,
    },
}

/// Where the outcome of a submitted command (or upgrade proposal) goes.
pub type ReplyTo = oneshot::Sender<Result<SubmitReply, SubmitError>>;

/// How a protocol finds the index a linearizable read must wait for, given
/// the index after what this replica applied: every write acknowledged before
/// the call is at or below the answer. `None` once the replica stops.
pub type ReadBound =
    Arc<dyn Fn(Index) -> BoxFuture<'static, Option<StoreResult<Index>>> + Send + Sync>;

/// Handle to a running replica of any protocol (cheap to clone).
#[derive(Clone)]
pub struct ReplicaHandle {
    requests: mpsc::UnboundedSender<Request>,
    health: Arc<Health>,
    read_bound: ReadBound,
}

impl std::fmt::Debug for ReplicaHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaHandle")
            .field("replica", &self.health.config.replica)
            .field("protocol", &self.health.status().protocol)
            .finish()
    }
}

impl ReplicaHandle {
    /// A handle whose requests go to the core loop that reads `requests`.
    pub fn new(
        requests: mpsc::UnboundedSender<Request>,
        health: Arc<Health>,
        read_bound: ReadBound,
    ) -> Self {
        ReplicaHandle {
            requests,
            health,
            read_bound,
        }
    }

    /// The state shared with the core loop.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Order a command and wait for its outcome. What encoding requires
    /// (client id length, payload size) is checked before it is proposed.
    pub async fn submit(&self, command: Command) -> Result<SubmitReply, SubmitError> {
        command.validate().map_err(SubmitError::Invalid)?;
        self.ordered(|reply| Request::Submit { command, reply })
            .await
    }

    /// Propose switching the group to module `to` (sha256 hex, already in
    /// the store) and wait for the upgrade entry's outcome, like a command's.
    pub async fn propose_upgrade(&self, to: String) -> Result<SubmitReply, SubmitError> {
        self.ordered(|reply| Request::ProposeUpgrade { to, reply })
            .await
    }

    /// Send what `request` builds to the core loop and wait, up to the
    /// submit timeout, for the outcome of the entry it orders.
    async fn ordered(
        &self,
        request: impl FnOnce(ReplyTo) -> Request,
    ) -> Result<SubmitReply, SubmitError> {
        if self.health.is_draining() {
            return Err(SubmitError::ShuttingDown);
        }
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(request(reply))
            .map_err(|_| SubmitError::ShuttingDown)?;
        let timeout = self.health.config.submit_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(SubmitError::ShuttingDown),
            Err(_) => Err(SubmitError::Timeout(timeout)),
        }
    }

    /// Run a read-only query; a linearizable one first learns the index it
    /// must wait for from the protocol's [`ReadBound`].
    pub async fn query(
        &self,
        query: Vec<u8>,
        consistency: Consistency,
    ) -> Result<Vec<u8>, QueryError> {
        let min_index = match consistency {
            Consistency::Stale => 0,
            Consistency::Linearizable => match (self.read_bound)(self.applied_index() + 1).await {
                Some(index) => index.map_err(QueryError::Store)?,
                None => return Err(QueryError::ShuttingDown),
            },
        };
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Read(ReadRequest::Query {
                query,
                min_index,
                reply,
            }))
            .map_err(|_| QueryError::ShuttingDown)?;
        let timeout = self.health.config.catch_up_timeout;
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
        if self
            .requests
            .send(Request::Read(ReadRequest::WaitApplied { index, reply }))
            .is_err()
        {
            return false;
        }
        matches!(
            tokio::time::timeout(self.health.config.catch_up_timeout, rx).await,
            Ok(Ok(()))
        )
    }

    /// Current status report.
    pub fn status(&self) -> Status {
        self.health.status()
    }

    /// Whether the replica is caught up and serving.
    pub fn is_ready(&self) -> bool {
        self.health.is_ready()
    }

    /// True while this replica leads.
    pub fn is_leader(&self) -> bool {
        self.health.is_leading()
    }

    /// True once shutdown began.
    pub fn is_draining(&self) -> bool {
        self.health.is_draining()
    }

    /// Highest applied index.
    pub fn applied_index(&self) -> Index {
        self.health.applied()
    }

    /// Prometheus text.
    pub fn render_metrics(&self) -> String {
        self.health.metrics.render()
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.health.config.replica
    }

    /// The current state as an encoded snapshot, with its index.
    pub async fn snapshot(&self) -> Option<(Index, Vec<u8>)> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Read(ReadRequest::Snapshot { reply }))
            .ok()?;
        rx.await.ok().flatten()
    }
}

impl Replica for ReplicaHandle {
    fn submit(&self, command: Command) -> BoxFuture<'_, Result<SubmitReply, SubmitError>> {
        Box::pin(ReplicaHandle::submit(self, command))
    }

    fn propose_upgrade(&self, to: String) -> BoxFuture<'_, Result<SubmitReply, SubmitError>> {
        Box::pin(ReplicaHandle::propose_upgrade(self, to))
    }

    fn query(
        &self,
        query: Vec<u8>,
        consistency: Consistency,
    ) -> BoxFuture<'_, Result<Vec<u8>, QueryError>> {
        Box::pin(ReplicaHandle::query(self, query, consistency))
    }

    fn wait_applied(&self, index: Index) -> BoxFuture<'_, bool> {
        Box::pin(ReplicaHandle::wait_applied(self, index))
    }

    fn status(&self) -> Status {
        ReplicaHandle::status(self)
    }

    fn is_ready(&self) -> bool {
        ReplicaHandle::is_ready(self)
    }

    fn is_draining(&self) -> bool {
        ReplicaHandle::is_draining(self)
    }

    fn render_metrics(&self) -> String {
        ReplicaHandle::render_metrics(self)
    }

    fn replica_id(&self) -> &str {
        ReplicaHandle::replica(self)
    }

    fn snapshot(&self) -> BoxFuture<'_, Option<(Index, Vec<u8>)>> {
        Box::pin(ReplicaHandle::snapshot(self))
    }
}

/// How long tasks get to return by themselves after a graceful shutdown
/// cancelled them, before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A started replica's tasks, lease and handle: how it stops.
///
/// Dropping it aborts every task (see [`TaskSet`]) and leaves the lease to
/// expire, like [`Lifecycle::abort`] without waiting.
pub struct Lifecycle<L> {
    handle: ReplicaHandle,
    lease_store: Arc<L>,
    lease: watch::Receiver<Option<LeaseId>>,
    tasks: TaskSet,
}

impl<L> std::fmt::Debug for Lifecycle<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl<L: LeaseStore> Lifecycle<L> {
    /// Owns `tasks`; `lease` is what the lease task holds, revoked through
    /// `lease_store` on a graceful shutdown.
    pub fn new(
        handle: ReplicaHandle,
        lease_store: Arc<L>,
        lease: watch::Receiver<Option<LeaseId>>,
        tasks: TaskSet,
    ) -> Self {
        Lifecycle {
            handle,
            lease_store,
            lease,
            tasks,
        }
    }

    /// The replica's handle.
    pub fn handle(&self) -> &ReplicaHandle {
        &self.handle
    }

    /// Graceful stop: refuse new commands, let in-flight ones finish (for at
    /// most `drain_timeout`), stop every task, revoke the lease (a leader
    /// thereby resigns and another replica takes over at once; the others
    /// see the member gone), flush the trace. Once this returns nothing of
    /// the replica runs any more.
    pub async fn shutdown(self, drain_timeout: Duration) {
        let health = self.handle.health();
        health.begin_drain();
        let (reply, rx) = oneshot::channel();
        if self.handle.requests.send(Request::Drain { reply }).is_ok() {
            let _ = tokio::time::timeout(drain_timeout, rx).await;
        }
        let lease = *self.lease.borrow();
        // Tasks first: once the lease is revoked, nothing of this replica
        // may still append under it or publish a member record.
        self.tasks.shutdown(STOP_GRACE).await;
        if let Some(lease) = lease {
            match self.lease_store.revoke_lease(lease).await {
                Ok(()) => tracing::info!("lease revoked; leadership (if any) released"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not revoke the lease; it will expire by itself")
                }
            }
        }
    }

    /// Abrupt stop, for tests that simulate a crash in-process: every task
    /// is aborted, the lease is left to expire. Once this returns nothing of
    /// the replica runs any more.
    pub async fn abort(self) {
        self.tasks.abort().await;
    }
}
