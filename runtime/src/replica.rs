//! What the client API needs from a replica, whatever protocol orders it.
//!
//! Two ordering protocols serve the same API — DORADO (`node.rs`) and the
//! paper's 2016 scheme kept as a baseline (`classic/`) — so that benchmarks
//! compare ordering and nothing else. This trait is that common surface; both
//! implement it with the same [`crate::driver::ReplicaHandle`].

use futures::future::BoxFuture;

use crate::node::{Consistency, QueryError, Status, SubmitError, SubmitReply};
use dorado_core::{Command, Index};

/// A running replica as the HTTP API sees it.
///
/// # Requirements
/// * `submit` answers only once the command is ordered durably in the store
///   **and** applied by this replica (or says why not, distinguishing "never
///   ordered" from "outcome unknown").
/// * `query` with [`Consistency::Linearizable`] sees every command
///   acknowledged before it began.
/// * `wait_applied(i)` resolves `true` once this replica applied index `i`.
pub trait Replica: Send + Sync + 'static {
    /// Order and apply a command.
    fn submit(&self, command: Command) -> BoxFuture<'_, Result<SubmitReply, SubmitError>>;
    /// Order a switch of the group to module `to` (sha256 hex, already in the
    /// store) and answer with the upgrade entry's outcome once applied here.
    fn propose_upgrade(&self, to: String) -> BoxFuture<'_, Result<SubmitReply, SubmitError>>;
    /// Run a read-only query.
    fn query(
        &self,
        query: Vec<u8>,
        consistency: Consistency,
    ) -> BoxFuture<'_, Result<Vec<u8>, QueryError>>;
    /// Wait (bounded) until `index` is applied here.
    fn wait_applied(&self, index: Index) -> BoxFuture<'_, bool>;
    /// The status report.
    fn status(&self) -> Status;
    /// Whether `/readyz` should say ready.
    fn is_ready(&self) -> bool;
    /// True once shutdown began.
    fn is_draining(&self) -> bool;
    /// Prometheus text.
    fn render_metrics(&self) -> String;
    /// This replica's id.
    fn replica_id(&self) -> &str;
    /// Current encoded snapshot with its index.
    fn snapshot(&self) -> BoxFuture<'_, Option<(Index, Vec<u8>)>>;
}
