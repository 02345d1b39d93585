//! The pure protocol engine: events in, actions out.
//!
//! Two halves, both free of I/O so their every decision is unit-tested here:
//!
//! - [`Learner`] puts entries arriving from a watch (in store commit order) and
//!   from the leader's own successful appends back into index order, and says
//!   when the replica is stuck at a gap.
//! - [`LeaderEngine`] turns client commands into batches, keeps several fenced
//!   appends in flight, retries appends whose outcome is unknown at the *same*
//!   index (so a batch can never land twice), fills a predecessor's gaps with
//!   no-ops, and tells the driver exactly which waiting clients get which
//!   answer when leadership ends.
//!
//! Why a leader may hold a batch back (group commit with a linger): clients
//! wait for their answer before they send again, so under load they split
//! into cohorts, one in the append in flight and one queued behind it, and
//! every cohort pays for a whole append of its own. After a commit the engine
//! therefore waits, for at most [`LeaderConfig::linger`] and never longer than
//! the append just took, until most of the clients it answered are back, so
//! they leave together in one larger batch and etcd orders fewer Txns. One
//! client is never held (it is back as soon as it sends), nor is anything
//! while another append is in flight. Measured in docs/benchmarks.md §9.
//!
//! The driver in the `dorado` crate performs the actions against a `Store`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::entry::{Command, EncodeError, Entry};
use crate::store::{AppendOutcome, Epoch, Index, LeaderRecord, StoreError};

/// Orders learned entries.
#[derive(Debug, Clone)]
pub struct Learner {
    next: Index,
    buffered: BTreeMap<Index, Entry>,
}

impl Learner {
    /// A learner whose next index to apply is `applied + 1`.
    pub fn new(applied: Index) -> Self {
        Learner {
            next: applied + 1,
            buffered: BTreeMap::new(),
        }
    }

    /// Offer an entry; duplicates and entries already applied are ignored.
    /// Returns true if the entry was new.
    pub fn offer(&mut self, index: Index, entry: Entry) -> bool {
        if index < self.next || self.buffered.contains_key(&index) {
            return false;
        }
        self.buffered.insert(index, entry);
        true
    }

    /// The next entry to apply, if it has arrived.
    pub fn pop_ready(&mut self) -> Option<(Index, Entry)> {
        let entry = self.buffered.remove(&self.next)?;
        let index = self.next;
        self.next += 1;
        Some((index, entry))
    }

    /// The next entry to apply, if it has arrived, without taking it (the
    /// driver looks before an upgrade entry: its module must be loaded first).
    pub fn peek_ready(&self) -> Option<&Entry> {
        self.buffered.get(&self.next)
    }

    /// The index the replica waits for.
    pub fn next(&self) -> Index {
        self.next
    }

    /// `Some((missing, highest_buffered))` when later entries have arrived but
    /// `next` has not: the replica is at a gap only a leader can fill.
    pub fn gap(&self) -> Option<(Index, Index)> {
        let (&high, _) = self.buffered.last_key_value()?;
        (high > self.next).then_some((self.next, high))
    }

    /// Jump past a restored snapshot: forget everything up to `applied`.
    pub fn reset(&mut self, applied: Index) {
        self.next = applied + 1;
        self.buffered = self.buffered.split_off(&self.next);
    }
}

/// Tuning of the leader's batching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderConfig {
    /// Appends allowed in flight at once.
    pub max_inflight: usize,
    /// A batch closes when its uncompressed (version-1) encoding,
    /// [`Entry::uncompressed_len`], would exceed this many bytes; a batch
    /// always takes at least one command, so a single larger command makes a
    /// batch of its own. This bounds both what is stored (a compressed entry
    /// is written only when shorter) and what replicas decompress. Compressed
    /// entries are only written up to [`crate::entry::MAX_DECOMPRESSED_ENTRY`]
    /// of uncompressed encoding; bigger batches are stored uncompressed.
    pub max_batch_bytes: usize,
    /// A batch closes at this many commands.
    pub max_batch_commands: usize,
    /// Store big batches compressed (entry format version 2, see
    /// [`Entry::encode`]). Off writes only version 1, which every build
    /// reads: for a rolling upgrade from a build that predates version 2
    /// (such a build refuses version-2 entries as corrupt), or to keep a
    /// rollback to it possible.
    pub compress_entries: bool,
    /// Longest a leader holds the next batch back after a commit, waiting for
    /// the clients it just answered to send their next commands (see
    /// [`LeaderEngine::on_append`]); never longer than the append that just
    /// committed took. Zero cuts the next batch at once.
    pub linger: Duration,
}

/// One append in flight is the default: commands that arrive meanwhile queue
/// and leave together as the next batch, so batches grow with load (group
/// commit) and etcd gets fewer, larger Txns. Measured on 2 cores with etcd on
/// the same machine, 1 beat 2, 4 and 8 at every client count (docs/benchmarks.md);
/// more in flight can pay off when etcd is remote and its round trip, not its
/// CPU, is the limit.
impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            max_inflight: 1,
            max_batch_bytes: 1024 * 1024,
            max_batch_commands: 4096,
            compress_entries: true,
            linger: Duration::from_millis(2),
        }
    }
}

/// Why a client's command got no reply from this leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandoned {
    /// Never written to the store: retrying anywhere is safe.
    NotOrdered,
    /// The append's outcome is unknown (leadership ended while it was in
    /// flight): the command may or may not be applied. A retry with the same
    /// client id and seq is still exactly-once.
    Unknown,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderAction<T> {
    /// Perform the fenced append of `bytes` at `index` with the leader's epoch.
    /// `retry` is true when a previous attempt's outcome was unknown (back off first).
    Append {
        /// Log index.
        index: Index,
        /// Encoded entry.
        bytes: Arc<Vec<u8>>,
        /// A re-send after an unknown outcome.
        retry: bool,
    },
    /// The entry at `index` is committed: feed it to the learner, and answer
    /// each waiter with the outcome at its position once it is applied.
    Committed {
        /// Log index.
        index: Index,
        /// The entry (for the learner).
        entry: Entry,
        /// `(position, token)` of the clients waiting for it.
        waiters: Vec<(u32, T)>,
    },
    /// These clients will get no answer from this leader.
    Abandon {
        /// Whose commands.
        tokens: Vec<T>,
        /// Whether their commands might still be applied.
        why: Abandoned,
    },
    /// This client's command cannot be encoded: refuse it with `error`. It
    /// was never appended (retrying it unchanged fails the same way).
    Refuse {
        /// Whose command.
        token: T,
        /// What encoding requires that the command lacks.
        error: EncodeError,
    },
    /// The next batch is held back (see [`LeaderEngine::on_append`]): call
    /// [`LeaderEngine::on_wake`] at `at`, or later.
    WakeAt(Instant),
    /// Stop leading: the epoch is fenced off (or the store said so).
    StepDown,
}

/// A batch held back after a commit until `target` items queue or `until`.
#[derive(Debug, Clone, Copy)]
struct Hold {
    target: usize,
    until: Instant,
}

/// What waits in the leader's queue: client commands, which leave in
/// batches, and upgrade proposals, which leave alone as their own entry, in
/// arrival order.
#[derive(Debug)]
enum Queued {
    Command(Command),
    Upgrade(String),
}

#[derive(Debug)]
struct Inflight<T> {
    bytes: Arc<Vec<u8>>,
    entry: Entry,
    waiters: Vec<(u32, T)>,
    /// An earlier attempt's outcome was unknown: it may have landed even if a
    /// later attempt is fenced.
    uncertain: bool,
}

/// A held batch leaves once this share (in percent) of the clients the
/// previous batch answered are back: waiting for the last few would make
/// everyone wait for the slowest client. Measured on 2 cores at 64 clients,
/// 75, 90 and 100 gave about the same throughput, 90 the steadiest
/// (docs/benchmarks.md §9).
const HOLD_RELEASE_PERCENT: usize = 90;

fn hold_released(target: usize, queued: usize) -> bool {
    queued * 100 >= target * HOLD_RELEASE_PERCENT
}

/// A leader's batching and append pipeline for one epoch.
#[derive(Debug)]
pub struct LeaderEngine<T> {
    epoch: Epoch,
    config: LeaderConfig,
    next_index: Index,
    queue: VecDeque<(T, Queued)>,
    inflight: BTreeMap<Index, Inflight<T>>,
    hold: Option<Hold>,
    stepped_down: bool,
}

impl<T> LeaderEngine<T> {
    /// A new term: `last_index` is the highest index in the store when it began,
    /// `present` the indexes in `(applied, last_index]` that hold an entry.
    /// Returns the engine and the no-op appends that fill every gap.
    pub fn start(
        epoch: Epoch,
        config: LeaderConfig,
        applied: Index,
        last_index: Index,
        present: &[Index],
    ) -> (Self, Vec<LeaderAction<T>>) {
        let mut engine = LeaderEngine {
            epoch,
            config,
            next_index: last_index.max(applied) + 1,
            queue: VecDeque::new(),
            inflight: BTreeMap::new(),
            hold: None,
            stepped_down: false,
        };
        let mut actions = Vec::new();
        for index in applied + 1..=last_index {
            // Planted bug (feature `planted-skip-gap-fill`, for the simulation).
            if present.binary_search(&index).is_err() && !cfg!(feature = "planted-skip-gap-fill") {
                // A no-op is always encodable; the refusal path cannot be taken.
                actions.extend(engine.launch(index, Entry::Noop, Vec::new()));
            }
        }
        (engine, actions)
    }

    /// The fencing token of this term.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The index the next batch will take.
    pub fn next_index(&self) -> Index {
        self.next_index
    }

    /// Commands queued but not yet in a batch.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Appends in flight.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// True while the append at `index` has not been settled.
    pub fn is_inflight(&self, index: Index) -> bool {
        self.inflight.contains_key(&index)
    }

    /// True when nothing is queued or in flight (a draining leader may resign).
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.inflight.is_empty()
    }

    /// A client command arrived. A command that cannot be encoded is refused
    /// here ([`LeaderAction::Refuse`]) and never reaches a batch.
    pub fn submit(&mut self, token: T, command: Command) -> Vec<LeaderAction<T>> {
        self.submit_all(std::iter::once((token, command)))
    }

    /// Commands that arrived together (e.g. one batch request of a client,
    /// or all a driver found waiting): each is checked as by
    /// [`LeaderEngine::submit`], and all are queued before a batch is cut,
    /// so they leave in the same batch rather than the first alone.
    pub fn submit_all(
        &mut self,
        commands: impl IntoIterator<Item = (T, Command)>,
    ) -> Vec<LeaderAction<T>> {
        let mut actions = Vec::new();
        let mut not_ordered = Vec::new();
        for (token, command) in commands {
            if let Err(error) = command.validate() {
                actions.push(LeaderAction::Refuse { token, error });
            } else if self.stepped_down {
                not_ordered.push(token);
            } else {
                self.queue.push_back((token, Queued::Command(command)));
            }
        }
        if !not_ordered.is_empty() {
            actions.push(LeaderAction::Abandon {
                tokens: not_ordered,
                why: Abandoned::NotOrdered,
            });
        }
        actions.extend(self.cut_batches());
        actions
    }

    /// A proposal to switch the group to module `to` (a sha256 in hex). It
    /// is ordered after every command submitted before it and before every
    /// command submitted after it, as an [`Entry::Upgrade`] of its own; its
    /// waiter is answered at position 0 of that entry. Refused when `to` is
    /// not a sha256.
    pub fn propose_upgrade(&mut self, token: T, to: String) -> Vec<LeaderAction<T>> {
        if crate::upgrade::sha256_bytes(&to).is_none() {
            return vec![LeaderAction::Refuse {
                token,
                error: EncodeError::BadModuleHash(to),
            }];
        }
        if self.stepped_down {
            return vec![LeaderAction::Abandon {
                tokens: vec![token],
                why: Abandoned::NotOrdered,
            }];
        }
        self.queue.push_back((token, Queued::Upgrade(to)));
        self.cut_batches()
    }

    /// The store answered the append at `index` at `now`, `took` after it
    /// was sent. A commit may hold the next batch back
    /// ([`LeaderAction::WakeAt`]): until [`HOLD_RELEASE_PERCENT`] of the
    /// commands it answered, plus those already queued, are queued, or until
    /// `now + min(linger, took)`.
    pub fn on_append(
        &mut self,
        index: Index,
        result: Result<AppendOutcome, StoreError>,
        now: Instant,
        took: Duration,
    ) -> Vec<LeaderAction<T>> {
        let Some(inflight) = self.inflight.get(&index) else {
            return Vec::new(); // already settled (e.g. after step-down)
        };
        match result {
            Ok(AppendOutcome::Appended) => self.commit(index, now, took),
            Ok(AppendOutcome::Occupied(existing)) if existing == *inflight.bytes => {
                // An earlier attempt with an unknown outcome did land.
                self.commit(index, now, took)
            }
            // Someone else's entry at our index: ours is certainly not there,
            // and we are deposed. Other in-flight appends may have landed before
            // the new leader took over, so their outcome is unknown.
            Ok(AppendOutcome::Occupied(_)) => {
                let mut actions = self.abandon_all(Abandoned::Unknown, Some(index));
                actions.push(LeaderAction::StepDown);
                actions
            }
            // A newer epoch: this attempt wrote nothing, but an earlier attempt
            // with an unknown outcome (or another in-flight append) may have.
            Ok(AppendOutcome::Fenced) => {
                let certain = (!inflight.uncertain).then_some(index);
                let mut actions = self.abandon_all(Abandoned::Unknown, certain);
                actions.push(LeaderAction::StepDown);
                actions
            }
            Err(StoreError::LeaseExpired(_)) => {
                let mut actions = self.abandon_all(Abandoned::Unknown, None);
                actions.push(LeaderAction::StepDown);
                actions
            }
            Err(_) => {
                let bytes = inflight.bytes.clone();
                if let Some(i) = self.inflight.get_mut(&index) {
                    i.uncertain = true;
                }
                vec![LeaderAction::Append {
                    index,
                    bytes,
                    retry: true,
                }]
            }
        }
    }

    /// Leadership ended for a reason outside the appends (lease lost, shutdown).
    pub fn step_down(&mut self) -> Vec<LeaderAction<T>> {
        self.abandon_all(Abandoned::Unknown, None)
    }

    /// The timer of a [`LeaderAction::WakeAt`] fired at `now`: a batch held
    /// back until then leaves with what has queued.
    pub fn on_wake(&mut self, now: Instant) -> Vec<LeaderAction<T>> {
        match self.hold {
            Some(h) if now >= h.until => {
                self.hold = None;
                self.cut_batches()
            }
            _ => Vec::new(),
        }
    }

    fn commit(&mut self, index: Index, now: Instant, took: Duration) -> Vec<LeaderAction<T>> {
        let Some(done) = self.inflight.remove(&index) else {
            return Vec::new();
        };
        let answered = done.waiters.len();
        let mut actions = vec![LeaderAction::Committed {
            index,
            entry: done.entry,
            waiters: done.waiters,
        }];
        let wait = self.config.linger.min(took);
        if !wait.is_zero() && answered > 0 && self.inflight.is_empty() {
            let hold = Hold {
                target: answered + self.queue.len(),
                until: now + wait,
            };
            if !hold_released(hold.target, self.queue.len()) {
                self.hold = Some(hold);
                actions.push(LeaderAction::WakeAt(hold.until));
                return actions;
            }
        }
        actions.extend(self.cut_batches());
        actions
    }

    /// Fail everything. `definitely_not_written` is an in-flight index known not
    /// to have landed; other in-flight appends are unknown unless `why` says otherwise.
    fn abandon_all(
        &mut self,
        why: Abandoned,
        definitely_not_written: Option<Index>,
    ) -> Vec<LeaderAction<T>> {
        self.stepped_down = true;
        self.hold = None;
        let mut actions = Vec::new();
        let queued: Vec<T> = self.queue.drain(..).map(|(t, _)| t).collect();
        if !queued.is_empty() {
            actions.push(LeaderAction::Abandon {
                tokens: queued,
                why: Abandoned::NotOrdered,
            });
        }
        for (index, inflight) in std::mem::take(&mut self.inflight) {
            let tokens: Vec<T> = inflight.waiters.into_iter().map(|(_, t)| t).collect();
            if tokens.is_empty() {
                continue;
            }
            let why = if Some(index) == definitely_not_written {
                Abandoned::NotOrdered
            } else {
                why
            };
            actions.push(LeaderAction::Abandon { tokens, why });
        }
        actions
    }

    fn cut_batches(&mut self) -> Vec<LeaderAction<T>> {
        if let Some(h) = self.hold {
            if !hold_released(h.target, self.queue.len()) {
                return Vec::new();
            }
            self.hold = None;
        }
        let mut actions = Vec::new();
        while self.inflight.len() < self.config.max_inflight && !self.queue.is_empty() {
            let (entry, waiters) = match self.queue.pop_front() {
                Some((token, Queued::Upgrade(to))) => (Entry::Upgrade { to }, vec![(0, token)]),
                Some((token, Queued::Command(first))) => {
                    let mut size = 8 + first.encoded_len(); // version-1 header + count
                    let mut commands = vec![first];
                    let mut waiters = vec![(0, token)];
                    while let Some((_, Queued::Command(cmd))) = self.queue.front() {
                        let len = cmd.encoded_len();
                        if size + len > self.config.max_batch_bytes
                            || commands.len() >= self.config.max_batch_commands
                        {
                            break;
                        }
                        let Some((token, Queued::Command(cmd))) = self.queue.pop_front() else {
                            break;
                        };
                        size += len;
                        waiters.push((commands.len() as u32, token));
                        commands.push(cmd);
                    }
                    (Entry::Batch(commands), waiters)
                }
                None => break,
            };
            let index = self.next_index;
            let launched = self.launch(index, entry, waiters);
            if matches!(launched[..], [LeaderAction::Append { .. }]) {
                self.next_index += 1;
            }
            actions.extend(launched);
        }
        actions
    }

    /// Encode `entry` and append it at `index`. Commands were validated on
    /// submit, so encoding fails only for a batch the format cannot hold; its
    /// clients are then refused and nothing is appended (an empty or partial
    /// entry would make followers fail while this leader applied its copy).
    fn launch(
        &mut self,
        index: Index,
        entry: Entry,
        waiters: Vec<(u32, T)>,
    ) -> Vec<LeaderAction<T>> {
        let encoded = if self.config.compress_entries {
            entry.encode()
        } else {
            entry.encode_uncompressed()
        };
        let bytes = match encoded {
            Ok(b) => Arc::new(b),
            Err(error) => {
                return waiters
                    .into_iter()
                    .map(|(_, token)| LeaderAction::Refuse {
                        token,
                        error: error.clone(),
                    })
                    .collect();
            }
        };
        self.inflight.insert(
            index,
            Inflight {
                bytes: bytes.clone(),
                entry,
                waiters,
                uncertain: false,
            },
        );
        vec![LeaderAction::Append {
            index,
            bytes,
            retry: false,
        }]
    }
}

/// Where a replica sends a client's write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This replica leads: order it here.
    Local,
    /// Forward to the leader at this address.
    Forward(String),
    /// No leader is known right now: the client should retry shortly.
    NoLeader,
}

/// Decide where a write goes, given who this replica is and who leads.
pub fn route(me: &str, leading: bool, leader: Option<&LeaderRecord>) -> Route {
    if leading {
        return Route::Local;
    }
    match leader {
        Some(l) if l.replica != me => Route::Forward(l.address.clone()),
        // The store says we lead but the engine is not running yet (or just
        // stepped down): not safe to order locally.
        _ => Route::NoLeader,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::ClientTag;

    fn cmd(n: u64) -> Command {
        Command {
            client: Some(ClientTag {
                id: "c".into(),
                seq: n,
            }),
            payload: vec![b'x'; 100],
        }
    }

    fn appends<T>(actions: &[LeaderAction<T>]) -> Vec<Index> {
        actions
            .iter()
            .filter_map(|a| match a {
                LeaderAction::Append { index, .. } => Some(*index),
                _ => None,
            })
            .collect()
    }

    fn engine(max_inflight: usize) -> LeaderEngine<u32> {
        let cfg = LeaderConfig {
            max_inflight,
            linger: Duration::ZERO,
            ..LeaderConfig::default()
        };
        LeaderEngine::start(7, cfg, 0, 0, &[]).0
    }

    fn committed<T: Clone>(actions: &[LeaderAction<T>]) -> Vec<(Entry, Vec<(u32, T)>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                LeaderAction::Committed { entry, waiters, .. } => {
                    Some((entry.clone(), waiters.clone()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_upgrade_is_ordered_between_the_commands_around_it_as_its_own_entry() {
        let mut e = engine(1);
        let to = "ab".repeat(32);
        assert_eq!(appends(&e.submit(1, cmd(1))), vec![1]);
        assert!(appends(&e.submit(2, cmd(2))).is_empty(), "one in flight");
        assert!(e.propose_upgrade(3, to.clone()).is_empty());
        assert!(e.submit(4, cmd(3)).is_empty());
        let mut seen = Vec::new();
        for index in 1..=3 {
            let actions = e.on_append(
                index,
                Ok(AppendOutcome::Appended),
                Instant::now(),
                Duration::ZERO,
            );
            seen.extend(committed(&actions));
        }
        let entries: Vec<Entry> = seen.iter().map(|(e, _)| e.clone()).collect();
        assert_eq!(
            entries,
            vec![
                Entry::Batch(vec![cmd(1)]),
                Entry::Batch(vec![cmd(2)]),
                Entry::Upgrade { to: to.clone() },
            ]
        );
        assert_eq!(seen[2].1, vec![(0, 3)], "the proposer waits at position 0");
        let actions = e.on_append(
            4,
            Ok(AppendOutcome::Appended),
            Instant::now(),
            Duration::ZERO,
        );
        assert_eq!(committed(&actions)[0].0, Entry::Batch(vec![cmd(3)]));
        assert!(e.is_idle());
    }

    #[test]
    fn commands_submitted_together_leave_in_one_batch_and_bad_ones_are_refused() {
        let mut e = engine(1);
        let mut too_long = cmd(9);
        too_long.client = Some(ClientTag {
            id: "c".repeat(crate::entry::MAX_CLIENT_ID + 1),
            seq: 9,
        });
        let actions = e.submit_all([(1, cmd(1)), (2, too_long), (3, cmd(3))]);
        assert!(matches!(actions[0], LeaderAction::Refuse { token: 2, .. }));
        assert_eq!(
            appends(&actions),
            vec![1],
            "one append, not the first alone"
        );
        let done = e.on_append(
            1,
            Ok(AppendOutcome::Appended),
            Instant::now(),
            Duration::ZERO,
        );
        assert_eq!(
            committed(&done),
            vec![(Entry::Batch(vec![cmd(1), cmd(3)]), vec![(0, 1), (1, 3)])]
        );
        // After stepping down, commands submitted together are all not ordered.
        e.step_down();
        assert_eq!(
            e.submit_all([(4, cmd(4)), (5, cmd(5))]),
            vec![LeaderAction::Abandon {
                tokens: vec![4, 5],
                why: Abandoned::NotOrdered
            }]
        );
    }

    #[test]
    fn an_upgrade_to_something_that_is_not_a_sha256_is_refused() {
        let mut e = engine(1);
        assert_eq!(
            e.propose_upgrade(1, "v2".into()),
            vec![LeaderAction::Refuse {
                token: 1,
                error: EncodeError::BadModuleHash("v2".into())
            }]
        );
        assert!(e.is_idle());
    }

    #[test]
    fn learner_orders_entries_and_reports_gaps() {
        let mut l = Learner::new(0);
        assert!(l.offer(2, Entry::Noop));
        assert!(l.pop_ready().is_none());
        assert!(l.offer(3, Entry::Noop));
        assert_eq!(l.gap(), Some((1, 3)));
        assert!(l.offer(1, Entry::Noop));
        assert!(!l.offer(1, Entry::Noop), "duplicates are ignored");
        assert_eq!(l.pop_ready().map(|(i, _)| i), Some(1));
        assert_eq!(l.pop_ready().map(|(i, _)| i), Some(2));
        assert_eq!(l.pop_ready().map(|(i, _)| i), Some(3));
        assert_eq!(l.gap(), None);
        assert!(!l.offer(2, Entry::Noop), "applied entries are ignored");
        l.offer(9, Entry::Noop);
        l.offer(12, Entry::Noop);
        l.reset(10);
        assert_eq!(l.next(), 11);
        assert_eq!(l.gap(), Some((11, 12)));
    }

    #[test]
    fn a_new_leader_fills_every_gap_with_noops_and_continues_after_the_last() {
        let (e, actions) = LeaderEngine::<u32>::start(9, LeaderConfig::default(), 3, 8, &[4, 6, 8]);
        assert_eq!(appends(&actions), vec![5, 7]);
        for a in &actions {
            if let LeaderAction::Append { bytes, .. } = a {
                assert_eq!(Entry::decode(bytes).unwrap(), Entry::Noop);
            }
        }
        assert_eq!(e.next_index(), 9);
        assert_eq!(e.epoch(), 9);
    }

    #[test]
    fn commands_queue_while_appends_are_in_flight_and_batch_together() {
        let mut e = engine(1);
        assert_eq!(appends(&e.submit(1, cmd(1))), vec![1]);
        assert!(appends(&e.submit(2, cmd(2))).is_empty());
        assert!(appends(&e.submit(3, cmd(3))).is_empty());
        assert_eq!(e.queued(), 2);
        let actions = e.on_append(
            1,
            Ok(AppendOutcome::Appended),
            Instant::now(),
            Duration::ZERO,
        );
        match &actions[..] {
            [
                LeaderAction::Committed {
                    index: 1, waiters, ..
                },
                LeaderAction::Append {
                    index: 2, bytes, ..
                },
            ] => {
                assert_eq!(waiters, &vec![(0, 1)]);
                assert_eq!(Entry::decode(bytes).unwrap().len(), 2, "2 and 3 batched");
            }
            other => panic!("unexpected actions {other:?}"),
        }
    }

    #[test]
    fn several_appends_are_in_flight_at_once() {
        let mut e = engine(3);
        let mut indexes = Vec::new();
        for t in 0..3 {
            indexes.extend(appends(&e.submit(t, cmd(t as u64))));
        }
        assert_eq!(indexes, vec![1, 2, 3]);
        assert_eq!(e.inflight(), 3);
        assert!(appends(&e.submit(9, cmd(9))).is_empty());
    }

    /// An engine with `linger`, one append in flight, and a first batch of
    /// `clients` commands in flight at index 1 (tokens `0..clients`).
    fn lingering(linger: Duration, clients: u32) -> LeaderEngine<u32> {
        let cfg = LeaderConfig {
            linger,
            ..LeaderConfig::default()
        };
        let (mut e, _) = LeaderEngine::start(1, cfg, 0, 0, &[]);
        assert_eq!(appends(&e.submit(0, cmd(0))), vec![1]);
        for t in 1..clients {
            assert!(e.submit(t, cmd(u64::from(t))).is_empty());
        }
        // The first batch held only token 0: commit it so that the rest
        // leave as batch 2, then commit batch 2 below with `clients - 1`.
        let a = e.on_append(
            1,
            Ok(AppendOutcome::Appended),
            Instant::now(),
            Duration::ZERO,
        );
        assert_eq!(appends(&a), vec![2]);
        e
    }

    /// Commit batch 2 of a [`lingering`] engine at `now`, `took` after it was sent.
    fn commit_batch_2(
        e: &mut LeaderEngine<u32>,
        now: Instant,
        took: Duration,
    ) -> Vec<LeaderAction<u32>> {
        e.on_append(2, Ok(AppendOutcome::Appended), now, took)
    }

    fn wake_at<T>(actions: &[LeaderAction<T>]) -> Option<Instant> {
        actions.iter().find_map(|a| match a {
            LeaderAction::WakeAt(at) => Some(*at),
            _ => None,
        })
    }

    #[test]
    fn after_a_commit_the_next_batch_waits_for_the_clients_just_answered() {
        let mut e = lingering(Duration::from_millis(2), 11); // batch 2: tokens 1..=10
        let now = Instant::now();
        let took = Duration::from_millis(5);
        let a = commit_batch_2(&mut e, now, took);
        assert_eq!(committed(&a)[0].1.len(), 10);
        assert!(appends(&a).is_empty(), "held: {a:?}");
        assert_eq!(
            wake_at(&a),
            Some(now + Duration::from_millis(2)),
            "linger < took"
        );
        // 9 of the 10 answered clients are back: 90 % releases the batch.
        for t in 1..=8 {
            assert!(e.submit(t, cmd(100 + u64::from(t))).is_empty(), "{t} back");
        }
        let a = e.submit(9, cmd(109));
        assert_eq!(appends(&a), vec![3]);
        let LeaderAction::Append { bytes, .. } = &a[0] else {
            panic!("expected an append, got {a:?}");
        };
        assert_eq!(
            Entry::decode(bytes).unwrap().len(),
            9,
            "one batch of the 9 back"
        );
        // The timer of the released hold firing later changes nothing.
        assert!(e.on_wake(now + Duration::from_millis(2)).is_empty());
        assert_eq!(e.queued(), 0);
    }

    #[test]
    fn a_held_batch_leaves_when_the_timer_fires_and_never_later_than_the_append_took() {
        let mut e = lingering(Duration::from_millis(20), 5); // batch 2: tokens 1..=4
        let now = Instant::now();
        let took = Duration::from_millis(3);
        let a = commit_batch_2(&mut e, now, took);
        assert_eq!(
            wake_at(&a),
            Some(now + took),
            "capped at what the append took"
        );
        assert!(e.submit(1, cmd(101)).is_empty(), "1 of 4 back: still held");
        assert!(
            e.on_wake(now + Duration::from_millis(2)).is_empty(),
            "too early"
        );
        assert!(!e.is_idle());
        assert_eq!(
            appends(&e.on_wake(now + took)),
            vec![3],
            "the timer releases it"
        );
        // An expired hold with nothing queued: the next command leaves at once.
        let a = e.on_append(3, Ok(AppendOutcome::Appended), now + took, took);
        let at = wake_at(&a).expect("held after the 1-command batch");
        assert!(
            e.on_wake(at).is_empty(),
            "nothing queued, nothing to append"
        );
        assert_eq!(appends(&e.submit(2, cmd(102))), vec![4]);
    }

    #[test]
    fn a_single_client_and_a_zero_linger_are_never_held() {
        // One client: the batch it was in had one command, so its next
        // command alone releases the hold at once.
        let mut e = lingering(Duration::from_millis(2), 2); // batch 2: token 1
        let now = Instant::now();
        let a = commit_batch_2(&mut e, now, Duration::from_millis(1));
        assert!(wake_at(&a).is_some());
        assert_eq!(appends(&e.submit(1, cmd(101))), vec![3]);
        // Linger zero: the queued commands leave with the commit.
        let mut e = lingering(Duration::ZERO, 3);
        let a = commit_batch_2(&mut e, now, Duration::from_millis(1));
        assert_eq!(wake_at(&a), None);
        assert!(appends(&a).is_empty(), "nothing queued");
        assert_eq!(appends(&e.submit(1, cmd(101))), vec![3]);
        // Commands that queued during the append leave at once when they are
        // already 90 % of the clients (here 9 queued against 1 answered).
        let mut e = lingering(Duration::from_millis(2), 2);
        for t in 5..14 {
            assert!(e.submit(t, cmd(u64::from(t))).is_empty());
        }
        let a = commit_batch_2(&mut e, now, Duration::from_millis(1));
        assert_eq!(wake_at(&a), None);
        assert_eq!(appends(&a), vec![3]);
    }

    #[test]
    fn stepping_down_while_a_batch_is_held_abandons_it_as_never_ordered() {
        let mut e = lingering(Duration::from_millis(2), 4); // batch 2: tokens 1..=3
        let now = Instant::now();
        let a = commit_batch_2(&mut e, now, Duration::from_millis(2));
        assert!(wake_at(&a).is_some());
        assert!(e.submit(1, cmd(101)).is_empty());
        let a = e.step_down();
        assert!(
            matches!(&a[..], [LeaderAction::Abandon { tokens, why: Abandoned::NotOrdered }] if tokens == &vec![1]),
            "{a:?}"
        );
        assert!(e.on_wake(now + Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn batches_close_at_the_byte_and_count_limits() {
        let cfg = LeaderConfig {
            max_inflight: 1,
            max_batch_bytes: 350,
            max_batch_commands: 100,
            ..LeaderConfig::default()
        };
        let (mut e, _) = LeaderEngine::start(1, cfg, 0, 0, &[]);
        e.submit(0, cmd(0));
        for t in 1..=5 {
            e.submit(t, cmd(t as u64));
        }
        let actions = e.on_append(
            1,
            Ok(AppendOutcome::Appended),
            Instant::now(),
            Duration::ZERO,
        );
        let LeaderAction::Append { bytes, .. } = &actions[1] else {
            panic!("expected an append, got {actions:?}");
        };
        let n = Entry::decode(bytes).unwrap().len();
        assert_eq!(n, 2, "a 115-byte command x3 would exceed 350 bytes");
        assert!(bytes.len() <= 350);
    }

    /// The byte limit applies to the uncompressed length, so it bounds both
    /// what is stored and what followers decompress; big batches are stored
    /// compressed unless `compress_entries` is off.
    #[test]
    fn the_byte_limit_bounds_the_uncompressed_batch_and_big_batches_are_compressed() {
        for compress_entries in [true, false] {
            let cfg = LeaderConfig {
                max_batch_bytes: 2000,
                compress_entries,
                ..LeaderConfig::default()
            };
            let (mut e, _) = LeaderEngine::start(1, cfg, 0, 0, &[]);
            for t in 0..=40 {
                e.submit(t, cmd(t as u64));
            }
            let actions = e.on_append(
                1,
                Ok(AppendOutcome::Appended),
                Instant::now(),
                Duration::ZERO,
            );
            let LeaderAction::Append { bytes, .. } = &actions[1] else {
                panic!("expected an append, got {actions:?}");
            };
            let entry = Entry::decode(bytes).unwrap();
            assert_eq!(entry.len(), 17, "(2000 - 8) / 115 commands");
            assert!(entry.uncompressed_len() <= 2000);
            if compress_entries {
                assert_eq!(bytes[2], 2, "a 1963-byte batch of x's is compressed");
                assert!(bytes.len() < entry.uncompressed_len() / 2);
            } else {
                assert_eq!(**bytes, entry.encode_uncompressed().unwrap());
            }
        }
    }

    #[test]
    fn unknown_outcome_is_retried_at_the_same_index_and_a_landed_retry_commits() {
        let mut e = engine(2);
        e.submit(1, cmd(1));
        let a = e.on_append(
            1,
            Err(StoreError::Unavailable("timeout".into())),
            Instant::now(),
            Duration::ZERO,
        );
        assert!(matches!(
            a[..],
            [LeaderAction::Append {
                index: 1,
                retry: true,
                ..
            }]
        ));
        let LeaderAction::Append { bytes, .. } = &a[0] else {
            unreachable!()
        };
        let ours = bytes.to_vec();
        let a = e.on_append(
            1,
            Ok(AppendOutcome::Occupied(ours)),
            Instant::now(),
            Duration::ZERO,
        );
        assert!(matches!(a[0], LeaderAction::Committed { index: 1, .. }));
    }

    #[test]
    fn fenced_append_steps_down_and_says_what_is_safe_to_retry() {
        let mut e = engine(2);
        e.submit(1, cmd(1)); // index 1
        e.submit(2, cmd(2)); // index 2
        e.submit(3, cmd(3)); // queued
        let a = e.on_append(1, Ok(AppendOutcome::Fenced), Instant::now(), Duration::ZERO);
        assert!(a.contains(&LeaderAction::StepDown));
        assert!(a.contains(&LeaderAction::Abandon {
            tokens: vec![3],
            why: Abandoned::NotOrdered
        }));
        assert!(a.contains(&LeaderAction::Abandon {
            tokens: vec![1],
            why: Abandoned::NotOrdered
        }));
        // Index 2 was in flight: it may have landed before the new leader took over.
        assert!(a.contains(&LeaderAction::Abandon {
            tokens: vec![2],
            why: Abandoned::Unknown
        }));
        // After stepping down nothing is ordered any more.
        assert_eq!(
            e.submit(4, cmd(4)),
            vec![LeaderAction::Abandon {
                tokens: vec![4],
                why: Abandoned::NotOrdered
            }]
        );
        assert!(
            e.on_append(
                2,
                Ok(AppendOutcome::Appended),
                Instant::now(),
                Duration::ZERO
            )
            .is_empty()
        );
    }

    #[test]
    fn a_fenced_retry_after_an_unknown_outcome_is_still_unknown() {
        let mut e = engine(1);
        e.submit(1, cmd(1));
        e.on_append(
            1,
            Err(StoreError::Unavailable("timeout".into())),
            Instant::now(),
            Duration::ZERO,
        );
        let a = e.on_append(1, Ok(AppendOutcome::Fenced), Instant::now(), Duration::ZERO);
        assert!(a.contains(&LeaderAction::Abandon {
            tokens: vec![1],
            why: Abandoned::Unknown
        }));
        assert_eq!(a.last(), Some(&LeaderAction::StepDown));
    }

    #[test]
    fn someone_elses_entry_at_our_index_means_we_were_deposed() {
        let mut e = engine(1);
        e.submit(1, cmd(1));
        let other = Entry::Noop.encode().unwrap();
        let a = e.on_append(
            1,
            Ok(AppendOutcome::Occupied(other)),
            Instant::now(),
            Duration::ZERO,
        );
        assert_eq!(a.last(), Some(&LeaderAction::StepDown));
    }

    #[test]
    fn losing_the_lease_abandons_in_flight_commands_as_unknown() {
        let mut e = engine(1);
        e.submit(1, cmd(1));
        e.submit(2, cmd(2));
        let a = e.step_down();
        assert!(a.contains(&LeaderAction::Abandon {
            tokens: vec![1],
            why: Abandoned::Unknown
        }));
        assert!(a.contains(&LeaderAction::Abandon {
            tokens: vec![2],
            why: Abandoned::NotOrdered
        }));
    }

    #[test]
    fn a_command_that_cannot_be_encoded_is_refused_and_never_appended() {
        let mut e = engine(1);
        let bad = Command {
            client: Some(ClientTag {
                id: "x".repeat(300),
                seq: 1,
            }),
            payload: vec![],
        };
        assert_eq!(
            e.submit(1, bad),
            vec![LeaderAction::Refuse {
                token: 1,
                error: EncodeError::ClientIdTooLong(300)
            }]
        );
        let empty = Command {
            client: Some(ClientTag {
                id: String::new(),
                seq: 1,
            }),
            payload: vec![],
        };
        assert_eq!(
            e.submit(2, empty),
            vec![LeaderAction::Refuse {
                token: 2,
                error: EncodeError::EmptyClientId
            }]
        );
        assert!(e.is_idle(), "nothing queued or in flight");
        // The next good command takes index 1: no index was consumed.
        assert_eq!(appends(&e.submit(3, cmd(3))), vec![1]);
    }

    #[test]
    fn writes_route_to_the_leader() {
        let l = LeaderRecord {
            replica: "r2".into(),
            address: "10.0.0.2:7070".into(),
        };
        assert_eq!(route("r1", true, Some(&l)), Route::Local);
        assert_eq!(
            route("r1", false, Some(&l)),
            Route::Forward("10.0.0.2:7070".into())
        );
        assert_eq!(route("r1", false, None), Route::NoLeader);
        assert_eq!(route("r2", false, Some(&l)), Route::NoLeader);
    }
}
