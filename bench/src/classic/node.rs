//! The classic replica driver: performs what [`Protocol`] decides.
//!
//! Same shape as the DORADO driver (`dorado::node`), built from the same
//! parts ([`dorado::driver`]): one *core* task owns the protocol state and the
//! [`Applier`] (state machine, replicated host state, trace); everything else
//! talks to it by message. Only the ordering is this file's own: the feed of
//! stored records, the puts the protocol asks for, the view-change timers.
//! The client handle, the lease and member record, `/readyz` and stopping
//! every task (writes included) are the driver's.
//!
//! ```text
//!  feed task (replay, then one watch on classic/) ──bounded──┐
//!  write tasks (one per put, retried) ──(Written)────────────┼──► core ──► trace writer thread
//!  client API (driver Request: Submit, Read, Drain) ─────────┘
//!  lease task (driver; members/<me>), health task (driver) ◄── Health
//! ```
//!
//! Writes run concurrently, like the prototype's goroutines, with one
//! exception the rules need: a vote is held back until every acceptance
//! this replica has in flight is stored (see `protocol.rs`, "Why this is
//! safe").

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dorado_core::{Command, Index, StateMachine, StoreError};
use etcd_client::EventType;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ClassicConfig;
use super::protocol::{Decided, Protocol, Record, RequestId, View};
use super::store::{ClassicStore, key_after};
use super::wire::{self, KeyKind, REPLAY_FAMILIES, prefix_end};
use dorado::driver::{Applier, CoreLoop, DrainWaiters, Health, Spawner, backoff, until_stopped};
use dorado::node::{SubmitError, SubmitReply};
use dorado::wire::Role;

/// What the classic core shares with the read path, besides [`Health`].
pub(crate) struct Shared {
    pub health: Arc<Health>,
    pub config: ClassicConfig,
    /// Replicas whose acceptances count, and the majority, for linearizable reads.
    pub roster: RwLock<(Vec<String>, usize)>,
}

/// What the classic tasks tell the core (client requests arrive as [`Request`]s).
pub(crate) enum Msg {
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

pub(crate) struct Core<M> {
    protocol: Protocol,
    applier: Applier<M>,
    store: ClassicStore,
    shared: Arc<Shared>,
    health: Arc<Health>,
    tx: mpsc::UnboundedSender<Msg>,
    incarnation: u64,
    /// Where the write tasks go: they stop with the replica.
    spawner: Spawner,
    next_counter: u64,
    waiters: HashMap<RequestId, (oneshot::Sender<Result<SubmitReply, SubmitError>>, Instant)>,
    drains: DrainWaiters,
    inflight_accepts: usize,
    held_votes: Vec<Record>,
    seen_view: View,
    view_since: Instant,
    leader_missing_since: Option<Instant>,
    roster_len: usize,
}

impl<M: StateMachine + Send + 'static> CoreLoop for Core<M> {
    type Machine = M;
    type Msg = Msg;
    type Learned = Feed;

    fn handle(&mut self, msg: Msg) {
        self.handle_msg(msg);
    }

    fn submit(
        &mut self,
        command: Command,
        reply: oneshot::Sender<Result<SubmitReply, SubmitError>>,
    ) {
        if self.health.is_draining() {
            let _ = reply.send(Err(SubmitError::ShuttingDown));
            return;
        }
        if self.health.is_fatal() {
            let _ = reply.send(Err(SubmitError::NotOrdered));
            return;
        }
        self.next_counter += 1;
        let id = RequestId {
            origin: self.health.config.replica.clone(),
            incarnation: self.incarnation,
            counter: self.next_counter,
        };
        self.waiters.insert(id.clone(), (reply, Instant::now()));
        self.protocol.submit(id, command);
        self.perform();
    }

    fn learn(&mut self, item: Feed) {
        self.feed_item(item);
    }

    fn after_learning(&mut self) {
        self.after_input();
    }

    fn tick(&mut self) {
        self.on_tick();
    }

    fn is_idle(&self) -> bool {
        self.waiters.is_empty()
    }

    fn applier(&mut self) -> &mut Applier<M> {
        &mut self.applier
    }

    fn drains(&mut self) -> &mut DrainWaiters {
        &mut self.drains
    }
}

impl<M: StateMachine + Send + 'static> Core<M> {
    pub fn new(
        protocol: Protocol,
        applier: Applier<M>,
        store: ClassicStore,
        shared: Arc<Shared>,
        tx: mpsc::UnboundedSender<Msg>,
        incarnation: u64,
        spawner: Spawner,
    ) -> Self {
        Core {
            protocol,
            applier,
            store,
            health: shared.health.clone(),
            shared,
            tx,
            incarnation,
            spawner,
            next_counter: 0,
            waiters: HashMap::new(),
            drains: DrainWaiters::default(),
            inflight_accepts: 0,
            held_votes: Vec::new(),
            seen_view: 0,
            view_since: Instant::now(),
            leader_missing_since: None,
            roster_len: 0,
        }
    }

    fn handle_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Written {
                what,
                result,
                elapsed,
            } => self.written(what, result, elapsed),
        }
    }

    fn written(&mut self, what: Written, result: Result<(), StoreError>, elapsed: Duration) {
        if let Err(e) = &result {
            self.health.metrics.store_errors.inc();
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
                    self.health
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

    fn feed_item(&mut self, item: Feed) {
        match item {
            Feed::Record(revision, record) => {
                let leader_gone = matches!(
                    &record,
                    Record::Member { replica, address: None }
                        if self.protocol.leader() == Some(replica.as_str())
                            && *replica != self.health.config.replica
                );
                let roster = matches!(record, Record::Roster { .. });
                self.protocol.ingest(revision, record);
                if roster {
                    self.publish_roster();
                }
                if leader_gone && self.health.caught_up() {
                    tracing::warn!(
                        view = self.protocol.view(),
                        "the leader's lease is gone; voting for a new view"
                    );
                    self.protocol.suspect();
                }
            }
            Feed::MembersReset => self.protocol.reset_members(),
            Feed::Replayed => {
                if !self.health.caught_up() {
                    self.protocol.finish_replay();
                    tracing::info!(
                        applied = self.protocol.applied(),
                        view = self.protocol.view(),
                        "history replayed"
                    );
                    // Caught up, as far as `/readyz` is concerned.
                    self.health.set_caught_up(true);
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
            self.health.set_leading(leading);
            if leading {
                self.health.metrics.elections_won.inc();
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
        let health = self.health.clone();
        let tx = self.tx.clone();
        let task = async move {
            let t0 = Instant::now();
            let address = health.config.advertise.clone();
            let mut attempt = 0u32;
            let result = loop {
                match store.put(&record, &address).await {
                    Ok(()) => break Ok(()),
                    Err(e @ (StoreError::Unavailable(_) | StoreError::NoSpace(_))) => {
                        // Every classic key is written by one replica with
                        // one value: repeating an unknown-outcome put is safe.
                        health.set_store_error(Some(&e));
                        health.metrics.store_errors.inc();
                        if attempt == 0 {
                            tracing::warn!(error = %e, "classic write failed; retrying");
                        }
                        tokio::time::sleep(backoff(attempt)).await;
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
        // Stopped with the replica, retries included.
        self.spawner.spawn_until_stopped(task.in_current_span());
    }

    fn apply_ready(&mut self) {
        while self.applier.can_apply()
            && let Some(d) = self.protocol.pop_decided()
        {
            let Decided {
                instance,
                request,
                entry,
            } = d;
            let applied = match self.applier.apply(instance, &entry) {
                Ok(a) => a,
                Err(e) => {
                    let _ = self.applier.finish();
                    self.fatal(e);
                    return;
                }
            };
            // One request per instance: no batching in this scheme.
            self.health.metrics.batch_size.observe(1.0);
            if let (Some(id), Some(c)) = (request, applied.commands.first())
                && let Some((w, _)) = self.waiters.remove(&id)
            {
                let _ = w.send(Ok(SubmitReply {
                    index: instance,
                    outcome: c.outcome.clone(),
                    duplicate: c.duplicate,
                }));
            }
        }
        if let Err(e) = self.applier.finish() {
            self.fatal(e);
        }
        self.publish_status();
        self.check_drained();
    }

    /// Stop applying for good (the driver's [`Health::set_fatal`]: not
    /// ready, and the member lease is resigned, so the others suspect this
    /// replica if it leads).
    fn fatal(&mut self, msg: String) {
        self.health.set_fatal(msg);
    }

    /// Timeouts: the prototype's leader monitor, plus the lease of the
    /// leader's member key.
    fn on_tick(&mut self) {
        // Resumes applying after a stalled trace consumer.
        self.apply_ready();
        self.waiters.retain(|_, (w, _)| !w.is_closed());
        if self.health.caught_up()
            && !self.health.is_draining()
            && !self.health.is_fatal()
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

    fn publish_status(&self) {
        let leading = self.protocol.leading();
        let leader = self.protocol.leader();
        let address = leader.and_then(|l| self.protocol.member_address(l));
        let commit = self.protocol.highest_decided();
        let view = i64::try_from(self.protocol.view()).ok();
        self.health.publish(|s| {
            s.commit_index = commit;
            s.role = Role::of(leading);
            s.leader = leader.map(str::to_owned);
            s.leader_address = address.map(str::to_owned);
            s.epoch = view;
        });
    }
}

/// Replay the whole stored history (every family, all pages at one
/// revision), then follow one watch over the classic prefix. A broken watch
/// resumes after the last revision seen; a compacted one re-reads
/// everything (ingesting a record twice changes nothing).
pub(crate) async fn feed_task(
    store: ClassicStore,
    health: Arc<Health>,
    tx: mpsc::Sender<Feed>,
    cancel: CancellationToken,
) {
    let mut resume: Option<i64> = None;
    let mut attempt = 0u32;
    while !cancel.is_cancelled() {
        let from = match resume {
            Some(r) => r,
            None => match until_stopped(&cancel, replay(&store, &tx))
                .await
                .unwrap_or(Ok(None))
            {
                Ok(Some(r)) => {
                    if tx.send(Feed::Replayed).await.is_err() {
                        return;
                    }
                    r
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the classic history; retrying");
                    health.set_store_error(Some(&e));
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
        let Some(watch) = until_stopped(&cancel, store.watch_from(from + 1)).await else {
            return;
        };
        let mut stream = match watch {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch; retrying");
                health.set_store_error(Some(&e));
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
