//! The classic replica driver: performs what [`Protocol`] decides.
//!
//! Same shape as the DORADO driver (`dorado::node`): one *core* task owns the
//! protocol state, the replicated host state ([`ReplicaState`]) and the state
//! machine; everything else talks to it by message.
//!
//! ```text
//!  feed task (replay, then one watch on classic/) ──bounded──┐
//!  write tasks (one per put, retried) ──(Written)────────────┼──► core ──► trace writer thread
//!  client API (Submit, Query, WaitApplied, Snapshot) ────────┘
//!  lease task (members/<me>), health task ◄── shared flags
//! ```
//!
//! Writes run concurrently, like the prototype's goroutines, with one
//! exception the rules need: a vote is held back until every acceptance
//! this replica has in flight is stored (see `protocol.rs`, "Why this is
//! safe").

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use dorado_core::decide::{KeepAlive, LeaseDecision, LeaseTimer};
use dorado_core::{
    Command, Index, LeaseId, MemberRecord, Outcome, ReplicaState, StateMachine, StoreError,
};
use etcd_client::EventType;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ClassicConfig;
use super::protocol::{Decided, Protocol, Record, RequestId, View};
use super::store::{ClassicStore, key_after};
use super::wire::{self, KeyKind, REPLAY_FAMILIES, prefix_end};
use dorado::metrics::{Metrics, gauge_value};
use dorado::node::{QueryError, Role, Status, SubmitError, SubmitReply};
use dorado::trace::{TraceFormatter, TraceWriter};

/// State the core shares with handles and background tasks.
pub(crate) struct Shared {
    pub config: ClassicConfig,
    pub metrics: Metrics,
    pub applied: AtomicU64,
    pub ready: AtomicBool,
    pub replayed: AtomicBool,
    pub draining: AtomicBool,
    pub leading: AtomicBool,
    pub lease_held: AtomicBool,
    pub fatal: Mutex<Option<String>>,
    pub status: Mutex<Status>,
    pub store_error: Mutex<Option<String>>,
    /// Replicas whose acceptances count, and the majority, for linearizable reads.
    pub roster: RwLock<(Vec<String>, usize)>,
}

impl Shared {
    pub fn set_store_error(&self, e: Option<&StoreError>) {
        if let Ok(mut s) = self.store_error.lock() {
            *s = e.map(ToString::to_string);
        }
    }

    pub fn is_fatal(&self) -> bool {
        self.fatal.lock().map(|f| f.is_some()).unwrap_or(true)
    }

    pub fn update_ready(&self) {
        let store_ok = self
            .store_error
            .lock()
            .map(|e| e.is_none())
            .unwrap_or(false);
        let ready = self.lease_held.load(Ordering::Acquire)
            && store_ok
            && !self.is_fatal()
            && self.replayed.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire);
        self.ready.store(ready, Ordering::Release);
        self.metrics.ready.set(i64::from(ready));
    }
}

/// Requests from handles to the core.
pub(crate) enum Msg {
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
    Snapshot {
        reply: oneshot::Sender<Option<(Index, Vec<u8>)>>,
    },
    Drain {
        reply: oneshot::Sender<()>,
    },
    Written {
        what: Written,
        result: Result<(), StoreError>,
        elapsed: Duration,
    },
}

/// Which write finished.
pub(crate) enum Written {
    Accept {
        instance: Index,
        view: View,
        request: Option<RequestId>,
    },
    Request(RequestId),
    Vote(View),
}

/// What the feed task delivers.
pub(crate) enum Feed {
    Record(i64, Record),
    /// Member keys are about to be re-read from scratch.
    MembersReset,
    /// The whole stored history has been delivered.
    Replayed,
    /// A stored value is not a classic record.
    Corrupt(String),
}

struct PendingQuery {
    query: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<u8>, QueryError>>,
}

pub(crate) struct Core<M> {
    pub protocol: Protocol,
    pub state: ReplicaState,
    pub sm: M,
    pub store: ClassicStore,
    pub shared: Arc<Shared>,
    pub tx: mpsc::UnboundedSender<Msg>,
    pub trace: TraceWriter,
    pub fmt: TraceFormatter,
    pub incarnation: u64,
    pub cancel: CancellationToken,
    next_counter: u64,
    waiters: HashMap<RequestId, (oneshot::Sender<Result<SubmitReply, SubmitError>>, Instant)>,
    queries: BTreeMap<Index, Vec<PendingQuery>>,
    applied_waiters: BTreeMap<Index, Vec<oneshot::Sender<()>>>,
    drain_waiters: Vec<oneshot::Sender<()>>,
    inflight_accepts: usize,
    held_votes: Vec<Record>,
    seen_view: View,
    view_since: Instant,
    leader_missing_since: Option<Instant>,
    roster_len: usize,
}

impl<M: StateMachine + Send + 'static> Core<M> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        protocol: Protocol,
        state: ReplicaState,
        sm: M,
        store: ClassicStore,
        shared: Arc<Shared>,
        tx: mpsc::UnboundedSender<Msg>,
        trace: TraceWriter,
        incarnation: u64,
        cancel: CancellationToken,
    ) -> Self {
        let fmt = TraceFormatter::new(shared.config.node.log_format);
        Core {
            protocol,
            state,
            sm,
            store,
            shared,
            tx,
            trace,
            fmt,
            incarnation,
            cancel,
            next_counter: 0,
            waiters: HashMap::new(),
            queries: BTreeMap::new(),
            applied_waiters: BTreeMap::new(),
            drain_waiters: Vec::new(),
            inflight_accepts: 0,
            held_votes: Vec::new(),
            seen_view: 0,
            view_since: Instant::now(),
            leader_missing_since: None,
            roster_len: 0,
        }
    }

    pub async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        mut feed: mpsc::Receiver<Feed>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let cancel = self.cancel.clone();
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                msg = rx.recv() => match msg {
                    Some(m) => self.handle(m),
                    None => break,
                },
                item = feed.recv() => match item {
                    Some(item) => {
                        self.feed(item);
                        for _ in 0..256 {
                            match feed.try_recv() {
                                Ok(item) => self.feed(item),
                                Err(_) => break,
                            }
                        }
                        self.after_input();
                    }
                    None => break,
                },
                _ = tick.tick() => self.tick(),
            }
        }
        self.trace.close();
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Submit { command, reply } => {
                if self.shared.draining.load(Ordering::Acquire) {
                    let _ = reply.send(Err(SubmitError::ShuttingDown));
                    return;
                }
                if self.shared.is_fatal() {
                    let _ = reply.send(Err(SubmitError::NotOrdered));
                    return;
                }
                self.next_counter += 1;
                let id = RequestId {
                    origin: self.shared.config.node.replica.clone(),
                    incarnation: self.incarnation,
                    counter: self.next_counter,
                };
                self.waiters.insert(id.clone(), (reply, Instant::now()));
                self.protocol.submit(id, command);
                self.perform();
            }
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
            Msg::Snapshot { reply } => {
                let snap = self
                    .state
                    .snapshot(&mut self.sm, &self.shared.config.node.module_sha256)
                    .ok()
                    .and_then(|s| s.encode().ok());
                let _ = reply.send(snap.map(|b| (self.state.applied, b)));
            }
            Msg::Drain { reply } => {
                self.drain_waiters.push(reply);
                self.check_drained();
            }
            Msg::Written {
                what,
                result,
                elapsed,
            } => self.written(what, result, elapsed),
        }
    }

    fn written(&mut self, what: Written, result: Result<(), StoreError>, elapsed: Duration) {
        if let Err(e) = &result {
            self.shared.metrics.store_errors.inc();
            tracing::error!(error = %e, "etcd refused a classic write for good");
        }
        match what {
            Written::Accept {
                instance,
                view,
                request,
            } => {
                self.inflight_accepts = self.inflight_accepts.saturating_sub(1);
                if self.protocol.leading() && view == self.protocol.view() {
                    self.shared
                        .metrics
                        .append_latency
                        .observe(elapsed.as_secs_f64());
                }
                if result.is_err() {
                    self.protocol.order_failed(instance, view);
                    if let Some(id) = request {
                        self.fail(&id, SubmitError::NotOrdered);
                    }
                }
            }
            Written::Request(id) => {
                if result.is_err() {
                    self.protocol.forget(&id);
                    self.fail(&id, SubmitError::NotOrdered);
                }
            }
            Written::Vote(view) => {
                if result.is_ok() {
                    tracing::info!(view, "voted for a view change");
                }
            }
        }
        self.perform();
    }

    fn fail(&mut self, id: &RequestId, e: SubmitError) {
        if let Some((w, _)) = self.waiters.remove(id) {
            let _ = w.send(Err(e));
        }
    }

    fn feed(&mut self, item: Feed) {
        match item {
            Feed::Record(revision, record) => {
                let leader_gone = matches!(
                    &record,
                    Record::Member { replica, address: None }
                        if self.protocol.leader() == Some(replica.as_str())
                            && *replica != self.shared.config.node.replica
                );
                let roster = matches!(record, Record::Roster { .. });
                self.protocol.ingest(revision, record);
                if roster {
                    self.publish_roster();
                }
                if leader_gone && self.shared.replayed.load(Ordering::Acquire) {
                    tracing::warn!(
                        view = self.protocol.view(),
                        "the leader's lease is gone; voting for a new view"
                    );
                    self.protocol.suspect();
                }
            }
            Feed::MembersReset => self.protocol.reset_members(),
            Feed::Replayed => {
                if !self.shared.replayed.load(Ordering::Acquire) {
                    self.protocol.finish_replay();
                    self.shared.replayed.store(true, Ordering::Release);
                    tracing::info!(
                        applied = self.protocol.applied(),
                        view = self.protocol.view(),
                        "history replayed"
                    );
                    self.shared.update_ready();
                }
            }
            Feed::Corrupt(msg) => self.fatal(msg),
        }
    }

    fn after_input(&mut self) {
        self.apply_ready();
        self.perform();
        self.note_view();
    }

    fn publish_roster(&mut self) {
        let roster = self.protocol.roster();
        if roster.len() != self.roster_len {
            self.roster_len = roster.len();
            if let Ok(mut r) = self.shared.roster.write() {
                *r = (roster, self.protocol.majority());
            }
        }
    }

    fn note_view(&mut self) {
        let view = self.protocol.view();
        if view != self.seen_view {
            self.seen_view = view;
            self.view_since = Instant::now();
            self.leader_missing_since = None;
            let leading = self.protocol.leading();
            self.shared.leading.store(leading, Ordering::Release);
            self.shared.metrics.is_leader.set(i64::from(leading));
            if leading {
                self.shared.metrics.elections_won.inc();
            }
            tracing::info!(
                view,
                leader = self.protocol.leader().unwrap_or("-"),
                leading,
                "view installed"
            );
            self.publish_status();
        }
    }

    /// Start the puts the protocol asked for; votes wait until no
    /// acceptance of this replica is in flight.
    fn perform(&mut self) {
        for record in self.protocol.take_writes() {
            match record {
                Record::Vote { .. } => self.held_votes.push(record),
                other => self.spawn_write(other),
            }
        }
        if self.inflight_accepts == 0 && !self.held_votes.is_empty() {
            for vote in std::mem::take(&mut self.held_votes) {
                self.spawn_write(vote);
            }
        }
    }

    fn spawn_write(&mut self, record: Record) {
        let what = match &record {
            Record::Accept(a) => {
                self.inflight_accepts += 1;
                Written::Accept {
                    instance: a.instance,
                    view: a.view,
                    // Only this replica's own order as leader: if etcd
                    // refuses it for good, the request was never ordered.
                    // A refused acceptance of someone else's order says
                    // nothing about the request's fate.
                    request: match &a.value {
                        super::protocol::Value::Request { id, .. }
                            if self.protocol.leading() && a.view == self.protocol.view() =>
                        {
                            Some(id.clone())
                        }
                        _ => None,
                    },
                }
            }
            Record::Request(p) => Written::Request(p.id.clone()),
            Record::Vote { view, .. } => Written::Vote(*view),
            Record::Roster { .. } | Record::Member { .. } => return,
        };
        let store = self.store.clone();
        let shared = self.shared.clone();
        let tx = self.tx.clone();
        let cancel = self.cancel.clone();
        let task = async move {
            let t0 = Instant::now();
            let address = shared.config.node.advertise.clone();
            let mut attempt = 0u32;
            let result = loop {
                let r = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = store.put(&record, &address) => r,
                };
                match r {
                    Ok(()) => break Ok(()),
                    Err(e @ (StoreError::Unavailable(_) | StoreError::NoSpace(_))) => {
                        // Every classic key is written by one replica with
                        // one value: repeating an unknown-outcome put is safe.
                        shared.set_store_error(Some(&e));
                        shared.metrics.store_errors.inc();
                        if attempt == 0 {
                            tracing::warn!(error = %e, "classic write failed; retrying");
                        }
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(backoff(attempt)) => {}
                        }
                        attempt += 1;
                    }
                    Err(e) => break Err(e),
                }
            };
            let _ = tx.send(Msg::Written {
                what,
                result,
                elapsed: t0.elapsed(),
            });
        };
        tokio::spawn(task.in_current_span());
    }

    fn apply_ready(&mut self) {
        if self.shared.is_fatal() {
            return;
        }
        let mut text = String::new();
        let mut applied_any = false;
        while let Some(d) = self.protocol.pop_decided() {
            let Decided {
                instance,
                request,
                entry,
            } = d;
            let applied = match self.state.apply(instance, &entry, &mut self.sm) {
                Ok(a) => a,
                Err(e) => {
                    self.fatal(e.to_string());
                    return;
                }
            };
            applied_any = true;
            self.fmt.entry(&applied, &mut text);
            let m = &self.shared.metrics;
            m.entries_applied.inc();
            m.commands_applied.inc_by(applied.commands.len() as u64);
            if let Some(c) = applied.commands.first() {
                m.batch_size.observe(1.0);
                if matches!(c.outcome, Outcome::Rejected(_)) {
                    m.commands_rejected.inc();
                }
            }
            if let (Some(id), Some(c)) = (request, applied.commands.first())
                && let Some((w, _)) = self.waiters.remove(&id)
            {
                let _ = w.send(Ok(SubmitReply {
                    index: instance,
                    outcome: c.outcome.clone(),
                    duplicate: c.duplicate,
                }));
            }
            if text.len() > 64 * 1024 {
                self.trace.write(std::mem::take(&mut text));
            }
        }
        self.trace.write(text);
        if applied_any {
            self.after_apply();
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
        self.check_drained();
    }

    fn run_query(&mut self, q: &[u8]) -> Result<Vec<u8>, QueryError> {
        self.sm
            .query(q)
            .map_err(|r| QueryError::Rejected(r.to_string()))
    }

    fn fatal(&mut self, msg: String) {
        tracing::error!("{msg}; this replica stops applying until restarted");
        if let Ok(mut f) = self.shared.fatal.lock() {
            *f = Some(msg);
        }
        self.shared.ready.store(false, Ordering::Release);
    }

    /// Timeouts: the prototype's leader monitor, plus the lease of the
    /// leader's member key.
    fn tick(&mut self) {
        self.waiters.retain(|_, (w, _)| !w.is_closed());
        if self.shared.replayed.load(Ordering::Acquire)
            && !self.shared.draining.load(Ordering::Acquire)
            && !self.shared.is_fatal()
            && let Some(why) = self.suspicion()
        {
            if self.protocol.promised() <= self.protocol.view() {
                tracing::info!(view = self.protocol.view(), why, "suspecting the leader");
            }
            self.protocol.suspect();
            self.perform();
        }
        self.publish_status();
        self.check_drained();
    }

    fn suspicion(&mut self) -> Option<&'static str> {
        let config = &self.shared.config;
        let now = Instant::now();
        let me = config.node.replica.as_str();
        match self.protocol.leader() {
            None => return Some("no view has a leader yet"),
            Some(l) if l == me => {
                if self.protocol.stale_self_leader() {
                    return Some("this replica led the view in a previous life");
                }
            }
            Some(l) => {
                if self.protocol.member_alive(l) {
                    self.leader_missing_since = None;
                } else {
                    let since = *self.leader_missing_since.get_or_insert(now);
                    if now.duration_since(since) >= config.suspect_after {
                        return Some("the leader has no live member key");
                    }
                }
            }
        }
        if now.duration_since(self.view_since) >= config.order_timeout {
            let late = self.waiters.iter().any(|(id, (_, t))| {
                now.duration_since(*t) >= config.order_timeout && !self.protocol.is_ordered(id)
            });
            if late {
                return Some("a request waited too long for an order");
            }
        }
        None
    }

    fn check_drained(&mut self) {
        if self.drain_waiters.is_empty() {
            return;
        }
        if self.waiters.is_empty() {
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
        s.commit_index = self.protocol.highest_decided().max(self.state.applied);
        s.role = if self.protocol.leading() {
            Role::Leader
        } else {
            Role::Follower
        };
        s.leader = self.protocol.leader().map(str::to_owned);
        s.leader_address = self
            .protocol
            .leader()
            .and_then(|l| self.protocol.member_address(l))
            .map(str::to_owned);
        s.epoch = i64::try_from(self.protocol.view()).ok();
        self.shared
            .metrics
            .commit_index
            .set(gauge_value(s.commit_index));
    }
}

/// Backoff for store retries: fast at first, capped at one second.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << attempt.min(5)).min(1000))
}

/// Replay the whole stored history (every family, all pages at one
/// revision), then follow one watch over the classic prefix. A broken watch
/// resumes after the last revision seen; a compacted one re-reads
/// everything (ingesting a record twice changes nothing).
pub(crate) async fn feed_task(
    store: ClassicStore,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Feed>,
    cancel: CancellationToken,
) {
    let mut resume: Option<i64> = None;
    let mut attempt = 0u32;
    while !cancel.is_cancelled() {
        let from = match resume {
            Some(r) => r,
            None => match replay(&store, &tx).await {
                Ok(Some(r)) => {
                    if tx.send(Feed::Replayed).await.is_err() {
                        return;
                    }
                    r
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the classic history; retrying");
                    shared.set_store_error(Some(&e));
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff(attempt)) => {}
                    }
                    attempt += 1;
                    continue;
                }
            },
        };
        resume = Some(from);
        let mut stream = match store.watch_from(from + 1).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch; retrying");
                shared.set_store_error(Some(&e));
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                }
                attempt += 1;
                continue;
            }
        };
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return,
                m = stream.message() => m,
            };
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    tracing::warn!("watch ended; re-subscribing");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch failed; re-subscribing");
                    break;
                }
            };
            if resp.compact_revision() > 0 {
                tracing::warn!(
                    compacted = resp.compact_revision(),
                    "watch history compacted; re-reading everything"
                );
                resume = None;
                break;
            }
            if resp.canceled() {
                tracing::warn!(
                    reason = resp.cancel_reason(),
                    "watch cancelled; re-subscribing"
                );
                break;
            }
            attempt = 0;
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                resume = Some(resume.unwrap_or(0).max(kv.mod_revision()));
                let item = match event.event_type() {
                    EventType::Put => match wire::decode(store.keys(), kv.key(), kv.value()) {
                        Ok(Some(r)) => Feed::Record(kv.create_revision(), r),
                        Ok(None) => continue,
                        Err(e) => Feed::Corrupt(e.to_string()),
                    },
                    EventType::Delete => match store.keys().parse(kv.key()) {
                        Some(KeyKind::Member(replica)) => Feed::Record(
                            0,
                            Record::Member {
                                replica,
                                address: None,
                            },
                        ),
                        _ => continue,
                    },
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
            if let Some(h) = resp.header() {
                // Nothing under the prefix changed up to here.
                if resume.is_some_and(|r| h.revision() > r) && resp.events().is_empty() {
                    resume = Some(h.revision());
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

/// Read every family at one revision and deliver its records; returns that
/// revision (`None` when the core is gone).
async fn replay(store: &ClassicStore, tx: &mpsc::Sender<Feed>) -> Result<Option<i64>, StoreError> {
    let mut revision = 0;
    for family in REPLAY_FAMILIES {
        let prefix = store.keys().key(family);
        if family == "members/" && tx.send(Feed::MembersReset).await.is_err() {
            return Ok(None);
        }
        let mut start = prefix.clone().into_bytes();
        loop {
            let page = store
                .range(start, prefix_end(&prefix), revision, false)
                .await?;
            // Pin the revision of the first read: a response header carries
            // etcd's current revision, not the one a read was made at, and
            // every family must be read at the revision the watch resumes from.
            if revision == 0 {
                revision = page.revision;
            }
            for kv in &page.kvs {
                let item = match wire::decode(store.keys(), kv.key(), kv.value()) {
                    Ok(Some(r)) => Feed::Record(kv.create_revision(), r),
                    Ok(None) => continue,
                    Err(e) => Feed::Corrupt(e.to_string()),
                };
                if tx.send(item).await.is_err() {
                    return Ok(None);
                }
            }
            match page.kvs.last() {
                Some(last) if page.more => start = key_after(last.key()),
                _ => break,
            }
        }
    }
    Ok(Some(revision))
}

/// Keep `members/<me>` alive under a lease; its disappearance is how the
/// others learn that this replica is gone.
pub(crate) async fn lease_task(
    store: ClassicStore,
    shared: Arc<Shared>,
    lease_tx: watch::Sender<Option<LeaseId>>,
    cancel: CancellationToken,
) {
    let ttl = shared.config.node.lease_ttl;
    let mut attempt = 0;
    while !cancel.is_cancelled() {
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
        // The same renewal timing as DORADO's lease task (`LeaseTimer`): the
        // keep-alive may take what is left of the lease, and the member
        // record is written only after it succeeded, within one period.
        let mut timer = LeaseTimer::new(ttl, tokio::time::Instant::now().into_std());
        let period = timer.period();
        loop {
            let record = MemberRecord {
                address: shared.config.node.advertise.clone(),
                applied_index: shared.applied.load(Ordering::Acquire),
                hash: shared
                    .status
                    .lock()
                    .map(|s| s.hash.clone())
                    .unwrap_or_default(),
            };
            let budget = timer.budget(tokio::time::Instant::now().into_std());
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
            match timer.on_keep_alive(tokio::time::Instant::now().into_std(), outcome) {
                LeaseDecision::Renewed => {
                    shared.lease_held.store(true, Ordering::Release);
                    let put = store.put_member(lease, &shared.config.node.replica, &record);
                    match tokio::time::timeout(period, put).await {
                        Ok(Ok(())) => {}
                        // The member key is how the others see this replica:
                        // a failure is worth a warning, not the lease.
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "could not write the member record")
                        }
                        Err(_) => tracing::warn!("writing the member record timed out"),
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
            }
        }
        shared.lease_held.store(false, Ordering::Release);
        let _ = lease_tx.send(None);
    }
}

/// etcd reachability, for `/readyz` and the status report.
pub(crate) async fn health_task(
    store: ClassicStore,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.ping().await {
            Ok(_) => shared.set_store_error(None),
            Err(e) => {
                if !matches!(shared.store_error.lock().ok().as_deref(), Some(Some(_))) {
                    tracing::warn!(error = %e, "store check failed");
                }
                shared.set_store_error(Some(&e));
            }
        }
        shared.update_ready();
    }
}
