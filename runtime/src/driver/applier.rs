//! Applying ordered entries, the same way for every ordering protocol.
//!
//! Whatever decided the order, replicas must agree on everything that comes
//! after it: the state machine's state, the exactly-once session table, the
//! hash chain and the replay trace line of every entry. [`Applier`] owns all
//! of that (through [`ReplicaState`], the trace writer and the state machine)
//! and serves what only needs the applied state: queries, waits for an index,
//! snapshots. A protocol's core loop feeds it entries in index order and gets
//! each entry's outcomes back to answer its own clients.

use std::collections::BTreeMap;
use std::sync::Arc;

use dorado_core::{AppliedEntry, Entry, Index, Outcome, ReplicaState, SnapshotData, StateMachine};
use tokio::sync::oneshot;

use super::handle::ReadRequest;
use super::health::Health;
use crate::node::QueryError;
use crate::trace::{TraceFormatter, TraceWriter};

/// Trace text is handed to the writer in chunks of about this size.
const TRACE_CHUNK: usize = 64 * 1024;

struct PendingQuery {
    query: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<u8>, QueryError>>,
}

/// The replicated state of one replica and everything that reads it.
///
/// Only a protocol's core loop owns one; it must call [`Applier::apply`] in
/// strictly increasing index order (what the protocol decided) and
/// [`Applier::finish`] after each run of applies.
pub struct Applier<M> {
    state: ReplicaState,
    sm: M,
    trace: TraceWriter,
    fmt: TraceFormatter,
    health: Arc<Health>,
    /// Trace lines of the entries applied since the last `finish`.
    text: String,
    applied_any: bool,
    snapshot_index: Index,
    queries: BTreeMap<Index, Vec<PendingQuery>>,
    applied_waiters: BTreeMap<Index, Vec<oneshot::Sender<()>>>,
}

impl<M> std::fmt::Debug for Applier<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("applied", &self.state.applied)
            .field("snapshot_index", &self.snapshot_index)
            .finish_non_exhaustive()
    }
}

impl<M: StateMachine> Applier<M> {
    /// An empty replica of a group that started with module `genesis`,
    /// whose sessions expire after `session_expiry` entries. `sm` runs this
    /// replica's own module; [`Applier::start_at_genesis`] switches it to
    /// `genesis` when they differ.
    pub fn new(
        session_expiry: u64,
        genesis: String,
        sm: M,
        trace: TraceWriter,
        health: Arc<Health>,
    ) -> Self {
        let fmt = TraceFormatter::new(health.config.log_format);
        Applier {
            state: ReplicaState::new(session_expiry, genesis),
            sm,
            trace,
            fmt,
            health,
            text: String::new(),
            applied_any: false,
            snapshot_index: 0,
            queries: BTreeMap::new(),
            applied_waiters: BTreeMap::new(),
        }
    }

    /// Highest applied index.
    pub fn applied(&self) -> Index {
        self.state.applied
    }

    /// The replicated host state (sessions, hash chain, applied index).
    pub fn state(&self) -> &ReplicaState {
        &self.state
    }

    /// Index of the newest snapshot restored or taken here.
    pub fn snapshot_index(&self) -> Index {
        self.snapshot_index
    }

    /// Whether the next entry may be applied now: not after a fatal error,
    /// and not while the trace consumer is stalled (applying resumes once
    /// its backlog drains; the core loop's tick retries).
    pub fn can_apply(&self) -> bool {
        !self.health.is_fatal() && self.trace.backlog() <= TraceWriter::HIGH_WATER
    }

    /// Apply the entry at `index` (the next one): state machine, sessions,
    /// hash chain, trace line, metrics. `Err` is fatal for the replica (the
    /// caller turns fatal: the entry cannot be applied deterministically).
    pub fn apply(&mut self, index: Index, entry: &Entry) -> Result<AppliedEntry, String> {
        let applied = self
            .state
            .apply(index, entry, &mut self.sm)
            .map_err(|e| e.to_string())?;
        self.applied_any = true;
        self.fmt.entry(&applied, &mut self.text);
        if self.text.len() > TRACE_CHUNK {
            self.trace.write(std::mem::take(&mut self.text));
        }
        let m = &self.health.metrics;
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
        Ok(applied)
    }

    /// End a run of applies: hand the trace lines to the writer, publish the
    /// applied index, answer the queries and waits it satisfies. `Err` when
    /// the trace can no longer be written, which is fatal (see `trace.rs`).
    pub fn finish(&mut self) -> Result<(), String> {
        self.trace.write(std::mem::take(&mut self.text));
        if std::mem::take(&mut self.applied_any) {
            self.after_apply();
        }
        self.check_trace()
    }

    fn check_trace(&self) -> Result<(), String> {
        match self.trace.error() {
            Some(e) if !self.health.is_fatal() => Err(e.to_string()),
            _ => Ok(()),
        }
    }

    /// Before anything is applied: run the group's first module in its
    /// initial state (a replica whose own module came with a later upgrade
    /// replays the history from the start). `Err` is fatal.
    pub fn start_at_genesis(&mut self) -> Result<(), String> {
        let genesis = self.state.module.clone();
        self.check_can_run(&genesis, "the group started with")?;
        self.sm
            .load(&genesis, None)
            .map_err(|e| format!("starting the group's first module {genesis}: {e}"))
    }

    /// A state machine that cannot switch modules (no module catalog) runs
    /// only this replica's own module.
    fn check_can_run(&self, module: &str, what: &str) -> Result<(), String> {
        let ours = &self.health.config.module_sha256;
        if self.health.config.modules.is_none() && module != ours {
            return Err(format!(
                "{what} module {module} but this replica runs {ours} and cannot switch modules"
            ));
        }
        Ok(())
    }

    /// Replace the state with a snapshot newer than what is applied (a
    /// replica behind the log's truncation point), switching to the module
    /// that took it. `Ok(false)` when the snapshot is not newer; `Err` is
    /// fatal (a module this replica cannot run, or a snapshot the state
    /// machine cannot restore).
    pub fn restore(&mut self, snap: &SnapshotData) -> Result<bool, String> {
        if snap.index <= self.state.applied {
            return Ok(false);
        }
        self.check_can_run(
            &snap.module_sha256,
            &format!("snapshot {} was taken with", snap.index),
        )?;
        self.state = ReplicaState::restore(snap, self.state.session_expiry, &mut self.sm)
            .map_err(|e| format!("restoring snapshot {}: {e}", snap.index))?;
        self.snapshot_index = snap.index;
        let mut line = String::new();
        self.fmt.restored(snap.index, &self.state.hash, &mut line);
        self.trace.write(line);
        tracing::info!(index = snap.index, "restored snapshot");
        self.after_apply();
        self.check_trace()?;
        Ok(true)
    }

    /// The current state as an encoded [`SnapshotData`], to be stored as the
    /// snapshot at `index` (the applied index): recorded as this replica's
    /// newest snapshot.
    pub fn take_snapshot(&mut self) -> Result<(Index, Vec<u8>), String> {
        let bytes = self.encoded_snapshot()?;
        self.snapshot_index = self.state.applied;
        Ok((self.state.applied, bytes))
    }

    fn encoded_snapshot(&mut self) -> Result<Vec<u8>, String> {
        self.state
            .snapshot(&mut self.sm)
            .map_err(|e| e.to_string())
            .and_then(|s| s.encode().map_err(|e| e.to_string()))
    }

    /// Serve a request that needs only the applied state.
    pub fn serve(&mut self, request: ReadRequest) {
        match request {
            ReadRequest::Query {
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
            ReadRequest::WaitApplied { index, reply } => {
                if self.state.applied >= index {
                    let _ = reply.send(());
                } else {
                    self.applied_waiters.entry(index).or_default().push(reply);
                }
            }
            ReadRequest::Snapshot { reply } => {
                let snap = self.encoded_snapshot().ok();
                let _ = reply.send(snap.map(|b| (self.state.applied, b)));
            }
        }
    }

    /// Flush and close the trace (the core loop ends).
    pub fn close(&mut self) {
        self.trace.write(std::mem::take(&mut self.text));
        self.trace.close();
    }

    fn run_query(&mut self, q: &[u8]) -> Result<Vec<u8>, QueryError> {
        self.sm
            .query(q)
            .map_err(|r| QueryError::Rejected(r.to_string()))
    }

    fn after_apply(&mut self) {
        let applied = self.state.applied;
        self.health.set_applied(applied);
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
        let hash = self.state.hash.to_string();
        let snapshot_index = self.snapshot_index;
        self.health.publish(|s| {
            s.applied_index = applied;
            s.hash = hash;
            s.snapshot_index = snapshot_index;
        });
    }
}
