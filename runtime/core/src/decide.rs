//! The replica driver's decisions, free of I/O: each is a small state machine
//! (or a pure function) that takes events and the current time and answers
//! what the driver must do. The driver (`dorado::node`) performs the answers
//! and feeds the outcomes back; nothing here sleeps, reads a clock or talks to
//! the store, so every rule below is unit-tested on its decisions.
//!
//! - [`Progress`]: stuck detection (no progress at the next index although the
//!   store is ahead) and [`may_campaign`], the election rule that lets a stuck
//!   replica campaign so a gap left by a dead leader gets filled.
//! - [`Readiness`]: the catch-up rule behind `/readyz` and [`ReadyInputs::ready`].
//! - [`Replies`]: matching the outcomes of applied entries to the clients that
//!   wait for them, including outcomes that arrive through the watch before the
//!   append's own answer.
//! - [`SnapshotPolicy`]: when a snapshot is taken.
//! - [`leader_base`]: the index above which a new leader reads the log and fills gaps.
//! - [`LeaseTimer`]: how long a keep-alive may take and when the lease is lost.
//! - [`view_ends_term`] and [`Orphan`]: what a leader-watch view means for the
//!   term, and when a replica the store names leader but that does not lead
//!   must resign.
//! - [`Suspicion`]: when a follower deposes a leader that looks dead (its
//!   probes fail and the log stands still), so failover does not wait for the
//!   leader's lease, with hysteresis and back-off against false suspicion.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::store::{Epoch, Index, Leadership};

/// How long the next index may stay missing (while the store is ahead) before
/// the replica re-reads the log and may campaign.
pub const STUCK_AFTER: Duration = Duration::from_secs(1);

/// Stuck detection. Fed on every tick with where the learner stands.
///
/// A replica is *behind* when later entries are buffered (a gap) or the store
/// holds an index at or above the one it waits for. Behind at the same index
/// for longer than [`STUCK_AFTER`] means the watch may have missed something
/// (re-subscribe) or the index is a gap a dead leader left, which only a new
/// leader fills: the replica is then *stuck* and may campaign although it is
/// not caught up.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    since: Option<(Index, Instant)>,
    stuck: bool,
}

/// What a tick of [`Progress`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressAction {
    /// Nothing to do.
    None,
    /// Re-subscribe the log watch (which also restores a newer snapshot if the
    /// log was truncated under the replica).
    Resubscribe,
}

impl Progress {
    /// A tick: `next` is the index the replica waits for, `gap` whether later
    /// entries are buffered, `commit` the highest index known to be in the store.
    pub fn tick(&mut self, now: Instant, next: Index, gap: bool, commit: Index) -> ProgressAction {
        let behind = gap || commit >= next;
        if !behind {
            self.since = None;
            self.stuck = false;
            return ProgressAction::None;
        }
        match self.since {
            Some((n, since)) if n == next => {
                if now.saturating_duration_since(since) > STUCK_AFTER {
                    self.since = Some((next, now));
                    self.stuck = true;
                    return ProgressAction::Resubscribe;
                }
            }
            _ => {
                self.since = Some((next, now));
                self.stuck = false;
            }
        }
        ProgressAction::None
    }

    /// True when the replica has made no progress at its next index for a
    /// while although the store is ahead.
    pub fn stuck(&self) -> bool {
        self.stuck
    }
}

/// What the election rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CampaignInputs {
    /// The leader watch says nobody leads.
    pub no_leader: bool,
    /// This replica holds a lease.
    pub lease_held: bool,
    /// Shutdown began.
    pub draining: bool,
    /// This replica stopped applying (it could not serve as leader).
    pub fatal: bool,
    /// Applied what the store held at the last check.
    pub caught_up: bool,
    /// See [`Progress::stuck`].
    pub stuck: bool,
}

/// Campaign when nobody leads, we hold a lease, are neither shutting down nor
/// fatal, and are caught up, or stuck: a replica stuck at a gap left by a dead leader must be
/// allowed to lead, or the gap would never be filled when every replica is
/// stuck at it.
pub fn may_campaign(i: CampaignInputs) -> bool {
    i.no_leader && i.lease_held && !i.draining && !i.fatal && (i.caught_up || i.stuck)
}

/// The catch-up half of readiness, owned by the health check.
///
/// Each store check reads the store's last index. A replica is caught up when
/// it has applied what the store held at the *previous* check (entries written
/// since are in flight, not a lag), or everything the store holds now. A
/// replica that is not caught up turns caught up as soon as it applies the
/// previous check's index ([`Readiness::on_applied`]), not at the next check:
/// a recreated pod would otherwise report ready up to a check period late.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    target: Option<Index>,
    caught_up: bool,
}

impl Readiness {
    /// Not caught up, no check yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store check returned the store's last index (`None`: nothing above
    /// what the replica applied). `applied` is read after the check returned.
    pub fn on_check(&mut self, applied: Index, last: Option<Index>) {
        let last = last.unwrap_or(applied);
        self.caught_up = applied >= self.target.unwrap_or(last).min(last) || applied >= last;
        self.target = Some(last);
    }

    /// The replica applied up to `applied`. Returns true when this made it caught up.
    pub fn on_applied(&mut self, applied: Index) -> bool {
        match self.goal() {
            Some(goal) if applied >= goal => {
                self.caught_up = true;
                true
            }
            _ => false,
        }
    }

    /// The index whose application makes the replica caught up, while it is not.
    pub fn goal(&self) -> Option<Index> {
        self.target.filter(|_| !self.caught_up)
    }

    /// Applied what the store held at the last check.
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }
}

/// Everything `/readyz` depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadyInputs {
    /// This replica holds a lease (it is a live member).
    pub lease_held: bool,
    /// The last store operation succeeded.
    pub store_ok: bool,
    /// A fatal error stopped applying (corrupt entry, broken trace, ...).
    pub fatal: bool,
    /// See [`Readiness::caught_up`].
    pub caught_up: bool,
    /// Shutdown began.
    pub draining: bool,
    /// The group runs this replica's module, or did once since it started
    /// (see [`crate::upgrade::plan`]).
    pub module_ok: bool,
}

impl ReadyInputs {
    /// Ready: a live, healthy, caught-up member that is not shutting down
    /// and runs the module it was started with.
    pub fn ready(&self) -> bool {
        self.lease_held
            && self.store_ok
            && !self.fatal
            && self.caught_up
            && !self.draining
            && self.module_ok
    }
}

/// A client that gets an answer: `Some(reply)` is its command's outcome,
/// `None` means its outcome cannot be told (answer "unknown, retry with the
/// same id and seq").
pub type Answer<T, R> = (T, Option<R>);

/// Matches the outcomes of applied entries to the clients waiting for them.
///
/// A leader's entry can be applied before the append's answer comes back: the
/// watch delivers it first. Its outcomes are then kept ([`Replies::on_applied`]
/// with `inflight` true) until the append commits ([`Replies::on_committed`]);
/// in the usual order the waiters are registered at commit and answered when
/// the entry is applied. `T` is the driver's token for a waiting client, `R`
/// the reply it gets.
#[derive(Debug)]
pub struct Replies<T, R> {
    waiting: BTreeMap<Index, Vec<(u32, T)>>,
    early: BTreeMap<Index, Vec<R>>,
}

impl<T, R> Default for Replies<T, R> {
    fn default() -> Self {
        Replies {
            waiting: BTreeMap::new(),
            early: BTreeMap::new(),
        }
    }
}

impl<T, R: Clone> Replies<T, R> {
    /// No waiters and no early outcomes.
    pub fn new() -> Self {
        Self::default()
    }

    /// The leader's append at `index` committed with `waiters` at their batch
    /// positions; the replica has applied up to `applied`. Returns the clients
    /// answered now and whether the entry must still be given to the learner
    /// (false when the watch already delivered and applied it).
    pub fn on_committed(
        &mut self,
        index: Index,
        waiters: Vec<(u32, T)>,
        applied: Index,
    ) -> (Vec<Answer<T, R>>, bool) {
        if index <= applied {
            let replies = self.early.remove(&index).unwrap_or_default();
            let answers = waiters
                .into_iter()
                .map(|(pos, t)| (t, replies.get(pos as usize).cloned()))
                .collect();
            return (answers, false);
        }
        if !waiters.is_empty() {
            self.waiting.insert(index, waiters);
        }
        (Vec::new(), true)
    }

    /// The entry at `index` was applied with these outcomes (one per command,
    /// in batch order). `inflight` is true when this leader's append at
    /// `index` has not been answered yet: the outcomes are kept for it.
    pub fn on_applied(
        &mut self,
        index: Index,
        replies: impl FnOnce() -> Vec<R>,
        inflight: bool,
    ) -> Vec<Answer<T, R>> {
        if let Some(waiters) = self.waiting.remove(&index) {
            let replies = replies();
            return waiters
                .into_iter()
                .map(|(pos, t)| (t, replies.get(pos as usize).cloned()))
                .collect();
        }
        if inflight {
            self.early.insert(index, replies());
        }
        Vec::new()
    }

    /// Leadership ended: appends in flight will never be answered here, so
    /// outcomes kept for them are dropped (their clients were abandoned).
    pub fn on_step_down(&mut self) {
        self.early.clear();
    }

    /// True when no client waits for an applied entry (a draining replica may stop).
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// When a snapshot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Every this many log indexes (0 = never).
    pub every: u64,
}

impl SnapshotPolicy {
    /// Whether to snapshot right after applying `index`. Only the leader
    /// writes snapshots (one writer, no races between replicas truncating the
    /// log), and never while an earlier snapshot is still being stored.
    pub fn due(&self, index: Index, leading: bool, in_progress: bool) -> bool {
        self.every != 0 && index.is_multiple_of(self.every) && leading && !in_progress
    }
}

/// The index above which a new leader reads the log and fills gaps with
/// no-ops: the higher of the newest snapshot and what it has applied. Entries
/// at or below the newest snapshot are never gap-filled: they may have been
/// truncated, and a no-op written there would be appended below the snapshot.
pub fn leader_base(newest_snapshot: Option<Index>, applied: Index) -> Index {
    newest_snapshot.unwrap_or(0).max(applied)
}

/// Lease renewal timing.
///
/// The keep-alive alone decides whether the lease lives, and it may take as
/// long as the lease has left ([`LeaseTimer::budget`]): a slow etcd must not
/// cost a healthy leader its lease. Publishing the member record is best
/// effort and never delays the next keep-alive beyond one period.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTimer {
    ttl: Duration,
    last_ok: Instant,
}

/// What to do after a keep-alive answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Renewed: publish the member record, renew again after [`LeaseTimer::period`].
    Renewed,
    /// Failed but the lease may still live: retry after one period.
    Retry,
    /// The lease is gone (expired, or unrenewed for a whole TTL): get a new one.
    Lost,
}

/// How a keep-alive ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// The store renewed the lease.
    Ok,
    /// The store says the lease no longer exists.
    Expired,
    /// Failed or timed out: the lease may still exist.
    Failed,
}

impl LeaseTimer {
    /// A lease of `ttl` granted at `now`.
    pub fn new(ttl: Duration, now: Instant) -> Self {
        LeaseTimer { ttl, last_ok: now }
    }

    /// Time between renewals: a third of the TTL, at least 100 ms.
    pub fn period(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(100))
    }

    /// How long the keep-alive started at `now` may take: what is left of the
    /// lease since the last renewal, at least one period.
    pub fn budget(&self, now: Instant) -> Duration {
        self.ttl
            .saturating_sub(now.saturating_duration_since(self.last_ok))
            .max(self.period())
    }

    /// The keep-alive answered at `now`.
    pub fn on_keep_alive(&mut self, now: Instant, result: KeepAlive) -> LeaseDecision {
        match result {
            KeepAlive::Ok => {
                self.last_ok = now;
                LeaseDecision::Renewed
            }
            KeepAlive::Expired => LeaseDecision::Lost,
            KeepAlive::Failed if now.saturating_duration_since(self.last_ok) >= self.ttl => {
                LeaseDecision::Lost
            }
            KeepAlive::Failed => LeaseDecision::Retry,
        }
    }
}

/// Whether a view from the leader watch ends this replica's term at `epoch`.
///
/// Only a *newer* leader does (epochs are store revisions, so they only
/// grow). A view of an older epoch is a late event of a watch that lags
/// behind the campaign this replica won; no leader at all is such a late
/// event, the lease's expiry (which the lease task reports itself) or a
/// deposition by a follower that suspected this leader ([`Suspicion`]); in
/// each case appends are fenced meanwhile, and the first fenced append ends
/// the term. Stepping down on either would leave
/// the store naming a leader that does not lead, and nobody would ever
/// campaign again (found by the simulation, seed 16).
pub fn view_ends_term(epoch: Epoch, view: Option<&Leadership>) -> bool {
    view.is_some_and(|l| l.epoch > epoch)
}

/// Detects an orphaned leadership: the store names this replica leader, but
/// it does not lead (its term ended on its side, or it never started), and it
/// is not about to start one. Then nobody leads and nobody campaigns; after
/// `grace` the replica must resign (revoke its lease) so an election happens.
#[derive(Debug, Clone)]
pub struct Orphan {
    grace: Duration,
    since: Option<Instant>,
}

impl Orphan {
    /// Resign after `grace` of orphaned leadership.
    pub fn new(grace: Duration) -> Self {
        Orphan { grace, since: None }
    }

    /// A tick: `named` when the store names this replica leader, `leading`
    /// when it leads or is preparing to. Returns true when it must resign.
    pub fn tick(&mut self, now: Instant, named: bool, leading: bool) -> bool {
        if !named || leading {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.grace {
            self.since = None;
            return true;
        }
        false
    }
}

/// Tuning of [`Suspicion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuspicionConfig {
    /// How often the follower probes the leader (the driver's period).
    pub probe_every: Duration,
    /// Consecutive failed probes before the leader is suspected.
    pub misses: u32,
    /// The first window: failures must span at least this long, with no log
    /// progress, before the follower deposes.
    pub window: Duration,
    /// The back-off ceiling: each deposition by this replica doubles its
    /// window up to this (the lease TTL: never slower than the lease).
    pub max_window: Duration,
    /// The window when a probe went unanswered ([`ProbeOutcome::Silent`])
    /// rather than refused: silence is what a busy leader on a loaded
    /// machine also looks like, so it must last this long (or the current
    /// window, if longer) before it deposes.
    pub silent_window: Duration,
    /// A leadership this replica has not deposed for this long resets the
    /// window to its first value.
    pub calm_after: Duration,
}

impl SuspicionConfig {
    /// Defaults for a lease of `ttl`: probes every 50 ms, 3 refused probes
    /// over 100 ms, or half the TTL (at least a second) of silence; back-off
    /// up to the TTL, reset after 30 s of calm.
    pub fn for_lease(ttl: Duration) -> Self {
        SuspicionConfig {
            probe_every: Duration::from_millis(50),
            misses: 3,
            window: Duration::from_millis(100),
            max_window: ttl.max(Duration::from_millis(100)),
            silent_window: (ttl / 2).max(Duration::from_secs(1)),
            calm_after: Duration::from_secs(30),
        }
    }
}

/// What one probe of the leader found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The leader's process answered that it is alive.
    Alive,
    /// Nothing listens at the leader's address (connection refused or the
    /// host unreachable), or the process answered that it is not healthy:
    /// what `kill -9` looks like, strong evidence.
    Down,
    /// No answer within the probe's timeout: a dead host, a paused process,
    /// or merely a busy leader on a loaded machine; weak evidence.
    Silent,
}

/// Whether a follower should depose the leader it sees.
///
/// The fence makes an early takeover safe whatever the old leader believes
/// (its appends fail once its key is gone), so only liveness is at stake: a
/// false suspicion costs a leadership change, never correctness. Hence the
/// rule errs towards patience where that is cheap:
/// - a leader is suspected only after `misses` consecutive failed probes that
///   span at least the current window when each was refused
///   ([`ProbeOutcome::Down`]), or the longer `silent_window` when any of
///   them went unanswered ([`ProbeOutcome::Silent`]): a refused connection
///   is what a killed process leaves, a timeout is also what a leader
///   starved of CPU for a moment looks like;
/// - any log progress (an entry learned, which only a live leader writes)
///   clears the suspicion: a leader that is slow to answer probes under load,
///   or a blip between two replicas, never deposes a leader that appends;
/// - a paused store does not depose either: the leader still answers probes;
/// - each deposition by this replica doubles its window (up to the lease
///   TTL), so repeated false suspicion backs off to the lease's own pace; a
///   long calm resets it.
#[derive(Debug, Clone)]
pub struct Suspicion {
    cfg: SuspicionConfig,
    window: Duration,
    /// The epoch being watched; `None` when there is no leader to suspect
    /// (none, or this replica leads).
    watched: Option<Epoch>,
    misses: u32,
    first_miss: Option<Instant>,
    /// Whether a probe of the current run of misses went unanswered.
    silent: bool,
    last_deposed: Option<Instant>,
}

/// What [`Suspicion`] asks of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuspicionAction {
    /// Nothing to do.
    Wait,
    /// Delete the leader key if it still holds this epoch, then campaign.
    Depose(Epoch),
}

impl Suspicion {
    /// A follower that suspects nobody yet.
    pub fn new(cfg: SuspicionConfig) -> Self {
        Suspicion {
            cfg,
            window: cfg.window,
            watched: None,
            misses: 0,
            first_miss: None,
            silent: false,
            last_deposed: None,
        }
    }

    /// The window in force (grows with each deposition).
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The leadership this replica sees: `Some(epoch)` of another replica's
    /// term, `None` when nobody leads or this replica does. A new epoch starts
    /// afresh.
    pub fn on_leader(&mut self, now: Instant, other: Option<Epoch>) {
        if self.watched != other {
            self.watched = other;
            self.clear();
        }
        if let Some(at) = self.last_deposed
            && now.saturating_duration_since(at) >= self.cfg.calm_after
        {
            self.window = self.cfg.window;
            self.last_deposed = None;
        }
    }

    /// The log grew: the leader is alive.
    pub fn on_progress(&mut self) {
        self.clear();
    }

    /// Whether the leader should be probed now (there is one to suspect).
    pub fn wants_probe(&self) -> bool {
        self.watched.is_some()
    }

    /// What a probe of the watched leader found.
    pub fn on_probe(&mut self, now: Instant, outcome: ProbeOutcome) -> SuspicionAction {
        let Some(epoch) = self.watched else {
            return SuspicionAction::Wait;
        };
        #[cfg(feature = "planted-deaf-suspicion")]
        let outcome = {
            let _ = outcome;
            ProbeOutcome::Down
        };
        match outcome {
            ProbeOutcome::Alive => {
                self.clear();
                return SuspicionAction::Wait;
            }
            ProbeOutcome::Silent => self.silent = true,
            ProbeOutcome::Down => {}
        }
        self.misses += 1;
        let first = *self.first_miss.get_or_insert(now);
        let window = if self.silent {
            self.window.max(self.cfg.silent_window)
        } else {
            self.window
        };
        if self.misses < self.cfg.misses || now.saturating_duration_since(first) < window {
            return SuspicionAction::Wait;
        }
        // Depose once per term; the next suspicion needs a twice longer window.
        self.watched = None;
        self.clear();
        self.last_deposed = Some(now);
        self.window = (self.window * 2).min(self.cfg.max_window.max(self.cfg.window));
        SuspicionAction::Depose(epoch)
    }

    fn clear(&mut self) {
        self.misses = 0;
        self.first_miss = None;
        self.silent = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{LeaderAction, LeaderConfig, LeaderEngine, Learner};
    use crate::entry::{ClientTag, Command, Entry};
    use crate::store::AppendOutcome;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn progress_resubscribes_and_turns_stuck_only_after_a_second_at_the_same_index() {
        let t0 = Instant::now();
        let mut p = Progress::default();
        assert_eq!(p.tick(t0, 5, true, 4), ProgressAction::None);
        assert!(!p.stuck());
        assert_eq!(p.tick(t0 + ms(999), 5, true, 4), ProgressAction::None);
        assert!(!p.stuck(), "not yet a second");
        assert_eq!(
            p.tick(t0 + ms(1001), 5, true, 4),
            ProgressAction::Resubscribe
        );
        assert!(p.stuck());
        // The clock restarts after a re-subscribe, and the replica stays stuck.
        assert_eq!(p.tick(t0 + ms(1500), 5, true, 4), ProgressAction::None);
        assert!(p.stuck());
        assert_eq!(
            p.tick(t0 + ms(2002), 5, true, 4),
            ProgressAction::Resubscribe
        );
    }

    #[test]
    fn progress_at_a_new_index_or_nothing_ahead_is_not_stuck() {
        let t0 = Instant::now();
        let mut p = Progress::default();
        p.tick(t0, 5, false, 9);
        p.tick(t0 + ms(1100), 5, false, 9);
        assert!(p.stuck(), "the store holds 9 but 5 never arrived");
        // Applying moved on: no longer stuck, and the clock restarts.
        assert_eq!(p.tick(t0 + ms(1200), 6, false, 9), ProgressAction::None);
        assert!(!p.stuck());
        assert_eq!(p.tick(t0 + ms(2100), 6, false, 9), ProgressAction::None);
        // Caught up with the store: nothing to wait for.
        assert_eq!(p.tick(t0 + ms(2300), 10, false, 9), ProgressAction::None);
        assert!(!p.stuck());
        assert_eq!(p.tick(t0 + ms(5000), 10, false, 9), ProgressAction::None);
    }

    #[test]
    fn campaign_needs_no_leader_a_lease_and_catch_up_or_stuck() {
        let base = CampaignInputs {
            no_leader: true,
            lease_held: true,
            draining: false,
            fatal: false,
            caught_up: true,
            stuck: false,
        };
        assert!(may_campaign(base));
        assert!(!may_campaign(CampaignInputs {
            fatal: true,
            stuck: true,
            ..base
        }));
        assert!(!may_campaign(CampaignInputs {
            no_leader: false,
            ..base
        }));
        assert!(!may_campaign(CampaignInputs {
            lease_held: false,
            ..base
        }));
        assert!(!may_campaign(CampaignInputs {
            draining: true,
            ..base
        }));
        assert!(!may_campaign(CampaignInputs {
            caught_up: false,
            ..base
        }));
        assert!(may_campaign(CampaignInputs {
            caught_up: false,
            stuck: true,
            ..base
        }));
    }

    /// The case of 967a118: a leader died after index 6 landed but before 5
    /// did. Every replica waits at 5, none is caught up; the stuck rule lets
    /// one campaign, its base is what it applied, and it fills 5 with a no-op.
    #[test]
    fn a_gap_left_by_a_dead_leader_is_filled_by_a_stuck_replica() {
        let t0 = Instant::now();
        let mut learner = Learner::new(4);
        learner.offer(6, Entry::Noop);
        let mut readiness = Readiness::new();
        readiness.on_check(4, Some(6));
        readiness.on_check(4, Some(6));
        assert!(!readiness.caught_up(), "6 is in the store, 4 applied");
        let mut progress = Progress::default();
        let gap = learner.gap().is_some();
        progress.tick(t0, learner.next(), gap, 6);
        assert_eq!(
            progress.tick(t0 + ms(1200), learner.next(), gap, 6),
            ProgressAction::Resubscribe
        );
        let inputs = CampaignInputs {
            no_leader: true,
            lease_held: true,
            draining: false,
            fatal: false,
            caught_up: readiness.caught_up(),
            stuck: progress.stuck(),
        };
        assert!(may_campaign(inputs));
        let base = leader_base(None, 4);
        assert_eq!(base, 4);
        let (engine, actions) =
            LeaderEngine::<u32>::start(2, LeaderConfig::default(), base, 6, &[6]);
        let filled: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                LeaderAction::Append { index, bytes, .. } => Some((*index, bytes.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(filled.len(), 1);
        assert_eq!(filled[0].0, 5);
        assert_eq!(Entry::decode(&filled[0].1).unwrap(), Entry::Noop);
        assert_eq!(engine.next_index(), 7);
    }

    #[test]
    fn readiness_compares_with_the_previous_check() {
        let mut r = Readiness::new();
        assert!(!r.caught_up());
        r.on_check(0, Some(100));
        assert!(!r.caught_up(), "first check: 100 in the store, 0 applied");
        // The store moved to 120 while we applied 100: caught up with the
        // previous check, the 20 new entries are in flight.
        r.on_check(100, Some(120));
        assert!(r.caught_up());
        // Falling behind the previous check again is not caught up.
        r.on_check(110, Some(130));
        assert!(!r.caught_up());
        // Nothing above what we applied.
        r.on_check(130, None);
        assert!(r.caught_up());
    }

    /// The case of c4414ab: ready as soon as catch-up completes, not at the next check.
    #[test]
    fn readiness_turns_caught_up_the_moment_the_goal_is_applied() {
        let mut r = Readiness::new();
        r.on_check(0, Some(1000));
        assert_eq!(r.goal(), Some(1000));
        assert!(!r.on_applied(999));
        assert!(!r.caught_up());
        assert!(r.on_applied(1000));
        assert!(r.caught_up());
        assert_eq!(r.goal(), None, "nothing more to wait for");
        assert!(!r.on_applied(1001), "already caught up");
    }

    #[test]
    fn ready_needs_every_condition() {
        let ok = ReadyInputs {
            lease_held: true,
            store_ok: true,
            fatal: false,
            caught_up: true,
            draining: false,
            module_ok: true,
        };
        assert!(ok.ready());
        for bad in [
            ReadyInputs {
                lease_held: false,
                ..ok
            },
            ReadyInputs {
                store_ok: false,
                ..ok
            },
            ReadyInputs { fatal: true, ..ok },
            ReadyInputs {
                caught_up: false,
                ..ok
            },
            ReadyInputs {
                draining: true,
                ..ok
            },
            ReadyInputs {
                module_ok: false,
                ..ok
            },
        ] {
            assert!(!bad.ready(), "{bad:?}");
        }
    }

    #[test]
    fn replies_in_the_usual_order_answer_at_apply() {
        let mut r = Replies::<&str, u32>::new();
        let (now, offer) = r.on_committed(3, vec![(0, "a"), (1, "b")], 2);
        assert!(now.is_empty());
        assert!(offer, "not applied yet: the learner needs it");
        assert!(!r.is_idle());
        let answers = r.on_applied(3, || vec![30, 31], false);
        assert_eq!(answers, vec![("a", Some(30)), ("b", Some(31))]);
        assert!(r.is_idle());
    }

    #[test]
    fn replies_applied_before_the_append_answered_are_kept_for_the_commit() {
        let mut r = Replies::<&str, u32>::new();
        assert!(r.on_applied(3, || vec![30, 31], true).is_empty());
        let (answers, offer) = r.on_committed(3, vec![(1, "b"), (0, "a")], 3);
        assert!(!offer, "already applied");
        assert_eq!(answers, vec![("b", Some(31)), ("a", Some(30))]);
        // Entries not in flight here (a follower's, or another leader's) are not kept.
        assert!(r.on_applied(4, || vec![40], false).is_empty());
        let (answers, _) = r.on_committed(4, vec![(0, "c")], 4);
        assert_eq!(answers, vec![("c", None)], "outcome unknown");
    }

    #[test]
    fn replies_kept_for_a_deposed_leader_are_dropped() {
        let mut r = Replies::<&str, u32>::new();
        r.on_applied(3, || vec![30], true);
        r.on_step_down();
        let (answers, _) = r.on_committed(3, vec![(0, "a")], 3);
        assert_eq!(answers, vec![("a", None)]);
    }

    #[test]
    fn a_position_beyond_the_batch_is_unknown_not_a_panic() {
        let mut r = Replies::<&str, u32>::new();
        r.on_committed(3, vec![(5, "a")], 2);
        assert_eq!(r.on_applied(3, || vec![30], false), vec![("a", None)]);
    }

    /// Appends that complete out of order with several in flight: every
    /// client still gets its own command's outcome, applied in index order.
    #[test]
    fn appends_completing_out_of_order_with_several_in_flight() {
        let cfg = LeaderConfig {
            max_inflight: 3,
            ..LeaderConfig::default()
        };
        let (mut engine, _) = LeaderEngine::<u32>::start(1, cfg, 0, 0, &[]);
        let mut learner = Learner::new(0);
        let mut replies = Replies::<u32, String>::new();
        let cmd = |seq: u64| Command {
            client: Some(ClientTag {
                id: "c".into(),
                seq,
            }),
            payload: format!("p{seq}").into_bytes(),
        };
        let mut appended = Vec::new();
        for t in 1..=3u32 {
            for a in engine.submit(t, cmd(u64::from(t))) {
                if let LeaderAction::Append { index, .. } = a {
                    appended.push(index);
                }
            }
        }
        assert_eq!(appended, vec![1, 2, 3]);
        let mut applied = 0;
        let mut answered = Vec::new();
        let apply = |learner: &mut Learner,
                     replies: &mut Replies<u32, String>,
                     engine: &LeaderEngine<u32>,
                     applied: &mut Index,
                     answered: &mut Vec<(u32, Option<String>)>| {
            while let Some((index, entry)) = learner.pop_ready() {
                *applied = index;
                let outs = match &entry {
                    Entry::Batch(cs) => cs
                        .iter()
                        .map(|c| String::from_utf8(c.payload.clone()).unwrap())
                        .collect(),
                    Entry::Noop | Entry::Upgrade { .. } => Vec::new(),
                };
                answered.extend(replies.on_applied(index, || outs, engine.is_inflight(index)));
            }
        };
        for (index, result) in [
            (3, AppendOutcome::Appended),
            (1, AppendOutcome::Appended),
            (2, AppendOutcome::Appended),
        ] {
            for a in engine.on_append(index, Ok(result), Instant::now(), Duration::ZERO) {
                if let LeaderAction::Committed {
                    index,
                    entry,
                    waiters,
                } = a
                {
                    let (now, offer) = replies.on_committed(index, waiters, applied);
                    answered.extend(now);
                    if offer {
                        learner.offer(index, entry);
                    }
                }
            }
            apply(
                &mut learner,
                &mut replies,
                &engine,
                &mut applied,
                &mut answered,
            );
            if index == 3 {
                assert_eq!(applied, 0, "3 waits for 1 and 2");
                assert!(answered.is_empty());
            }
            if index == 1 {
                assert_eq!(applied, 1, "1 applies, 3 still waits for 2");
            }
        }
        assert_eq!(applied, 3);
        answered.sort();
        assert_eq!(
            answered,
            vec![
                (1, Some("p1".into())),
                (2, Some("p2".into())),
                (3, Some("p3".into()))
            ]
        );
        assert!(engine.is_idle());
        assert!(replies.is_idle());
    }

    #[test]
    fn snapshots_are_due_on_the_leader_at_multiples_and_one_at_a_time() {
        let p = SnapshotPolicy { every: 100 };
        assert!(p.due(200, true, false));
        assert!(!p.due(201, true, false));
        assert!(!p.due(200, false, false), "followers never snapshot");
        assert!(!p.due(200, true, true), "one snapshot at a time");
        assert!(
            !SnapshotPolicy { every: 0 }.due(0, true, false),
            "0 = never"
        );
    }

    #[test]
    fn a_new_leader_never_fills_below_the_newest_snapshot() {
        assert_eq!(leader_base(Some(1000), 10), 1000);
        assert_eq!(leader_base(Some(1000), 1200), 1200);
        assert_eq!(leader_base(None, 7), 7);
        // Gap-filling starts above the base: nothing at or below 1000 is written.
        let (_, actions) = LeaderEngine::<u32>::start(3, LeaderConfig::default(), 1000, 1003, &[]);
        let idx: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                LeaderAction::Append { index, .. } => Some(*index),
                _ => None,
            })
            .collect();
        assert_eq!(idx, vec![1001, 1002, 1003]);
    }

    fn view(epoch: Epoch) -> Leadership {
        Leadership {
            leader: crate::store::LeaderRecord {
                replica: "r".into(),
                address: "r:1".into(),
            },
            epoch,
        }
    }

    #[test]
    fn only_a_newer_leader_ends_a_term() {
        assert!(view_ends_term(10, Some(&view(11))));
        assert!(!view_ends_term(10, Some(&view(10))));
        assert!(!view_ends_term(10, Some(&view(9))), "a late event");
        assert!(
            !view_ends_term(10, None),
            "late, or the lease task's business"
        );
    }

    #[test]
    fn an_orphaned_leadership_is_resigned_after_the_grace() {
        let t0 = Instant::now();
        let mut o = Orphan::new(ms(1000));
        assert!(!o.tick(t0, true, true), "leading: fine");
        assert!(!o.tick(t0, true, false));
        assert!(!o.tick(t0 + ms(999), true, false));
        assert!(o.tick(t0 + ms(1000), true, false), "resign");
        // The clock restarts after a resignation and whenever it is not orphaned.
        assert!(!o.tick(t0 + ms(1100), true, false));
        assert!(!o.tick(t0 + ms(1500), false, false));
        assert!(!o.tick(t0 + ms(2200), true, false));
        assert!(!o.tick(t0 + ms(3100), true, false));
        assert!(o.tick(t0 + ms(3200), true, false));
    }

    #[test]
    fn lease_timer_renews_every_third_of_the_ttl() {
        let t0 = Instant::now();
        let mut l = LeaseTimer::new(Duration::from_secs(3), t0);
        assert_eq!(l.period(), Duration::from_secs(1));
        assert_eq!(l.budget(t0), Duration::from_secs(3));
        assert_eq!(
            l.on_keep_alive(t0 + ms(50), KeepAlive::Ok),
            LeaseDecision::Renewed
        );
        assert_eq!(LeaseTimer::new(ms(90), t0).period(), ms(100), "floor");
    }

    /// The case of d1917e4: a keep-alive that takes longer than a period (a
    /// slow etcd) is waited for as long as the lease has left, and a failure
    /// before the TTL ran out is retried, not taken as a lost lease.
    #[test]
    fn a_slow_etcd_does_not_depose_a_healthy_leader() {
        let t0 = Instant::now();
        let mut l = LeaseTimer::new(Duration::from_secs(2), t0);
        // Renewed at t0, next keep-alive one period later: it may take the
        // remaining 1.33 s, far more than a period.
        let start = t0 + l.period();
        assert!(l.budget(start) > ms(1300), "{:?}", l.budget(start));
        // It took 1.2 s and succeeded: renewed.
        assert_eq!(
            l.on_keep_alive(start + ms(1200), KeepAlive::Ok),
            LeaseDecision::Renewed
        );
        // A failure half-way through the TTL is retried.
        assert_eq!(
            l.on_keep_alive(start + ms(2200), KeepAlive::Failed),
            LeaseDecision::Retry
        );
        // Late in the lease the budget shrinks but never below a period.
        assert_eq!(l.budget(start + ms(3100)), l.period());
        // Unrenewed for a whole TTL: lost.
        assert_eq!(
            l.on_keep_alive(start + ms(3200), KeepAlive::Failed),
            LeaseDecision::Lost
        );
    }

    #[test]
    fn an_expired_lease_is_lost_at_once() {
        let t0 = Instant::now();
        let mut l = LeaseTimer::new(Duration::from_secs(2), t0);
        assert_eq!(
            l.on_keep_alive(t0 + ms(10), KeepAlive::Expired),
            LeaseDecision::Lost
        );
    }

    const ALIVE: ProbeOutcome = ProbeOutcome::Alive;
    const DOWN: ProbeOutcome = ProbeOutcome::Down;
    const SILENT: ProbeOutcome = ProbeOutcome::Silent;

    #[test]
    fn a_leader_that_only_times_out_gets_the_silent_window() {
        // Starved of CPU (or paused, or its host gone): probes time out and
        // the log stands still. A blink is forgiven; a second is not.
        let (mut s, t0) = suspicion();
        s.on_leader(t0, Some(7));
        let actions: Vec<_> = (0..=1500)
            .step_by(50)
            .map(|t| (t, s.on_probe(t0 + ms(t), SILENT)))
            .filter(|(_, a)| *a != SuspicionAction::Wait)
            .collect();
        assert_eq!(actions, vec![(1000, SuspicionAction::Depose(7))]);
    }

    #[test]
    fn one_silent_probe_in_a_run_of_refusals_needs_the_silent_window() {
        let (mut s, t0) = suspicion();
        s.on_leader(t0, Some(7));
        assert_eq!(s.on_probe(t0, SILENT), SuspicionAction::Wait);
        assert_eq!(fail_probes(&mut s, t0, 50, 950), vec![]);
        assert_eq!(
            fail_probes(&mut s, t0, 1000, 1000),
            vec![(1000, SuspicionAction::Depose(7))]
        );
        // An answer ends the run: the next one is judged afresh.
        s.on_leader(t0 + ms(1050), Some(8));
        assert_eq!(s.on_probe(t0 + ms(1050), SILENT), SuspicionAction::Wait);
        assert_eq!(s.on_probe(t0 + ms(1100), ALIVE), SuspicionAction::Wait);
        assert_eq!(
            fail_probes(&mut s, t0, 1150, 1350),
            vec![(1350, SuspicionAction::Depose(8))]
        );
    }

    #[test]
    fn the_silent_window_is_half_the_ttl_and_at_least_a_second() {
        assert_eq!(SuspicionConfig::for_lease(ms(5000)).silent_window, ms(2500));
        assert_eq!(SuspicionConfig::for_lease(ms(2000)).silent_window, ms(1000));
        assert_eq!(SuspicionConfig::for_lease(ms(500)).silent_window, ms(1000));
    }

    fn suspicion() -> (Suspicion, Instant) {
        let cfg = SuspicionConfig::for_lease(ms(2000));
        (Suspicion::new(cfg), Instant::now())
    }

    /// Probes every 50 ms from `from` to `to` (inclusive), all failing.
    fn fail_probes(
        s: &mut Suspicion,
        t0: Instant,
        from: u64,
        to: u64,
    ) -> Vec<(u64, SuspicionAction)> {
        (from..=to)
            .step_by(50)
            .map(|t| (t, s.on_probe(t0 + ms(t), DOWN)))
            .filter(|(_, a)| *a != SuspicionAction::Wait)
            .collect()
    }

    #[test]
    fn a_dead_leader_is_deposed_after_three_misses_over_the_window() {
        let (mut s, t0) = suspicion();
        s.on_leader(t0, Some(7));
        assert!(s.wants_probe());
        // Misses at 0, 50, 100 ms: the third spans the 100 ms window.
        assert_eq!(
            fail_probes(&mut s, t0, 0, 300),
            vec![(100, SuspicionAction::Depose(7))]
        );
        // Once per term: no second deposition of the same epoch.
        assert!(!s.wants_probe());
        assert_eq!(s.on_probe(t0 + ms(350), DOWN), SuspicionAction::Wait);
    }

    #[test]
    fn log_progress_keeps_a_leader_that_does_not_answer_probes() {
        // A slow leader under load, or a blip between this replica and the
        // leader: probes fail but entries keep arriving.
        let (mut s, t0) = suspicion();
        s.on_leader(t0, Some(7));
        for t in (0..2000).step_by(50) {
            if t % 100 == 0 {
                s.on_progress();
            }
            assert_eq!(
                s.on_probe(t0 + ms(t), DOWN),
                SuspicionAction::Wait,
                "at {t} ms"
            );
        }
    }

    #[test]
    fn an_answering_leader_of_a_paused_store_is_kept() {
        // etcd paused: no progress at all, but the leader answers its probes.
        let (mut s, t0) = suspicion();
        s.on_leader(t0, Some(7));
        for t in (0..5000).step_by(50) {
            // A probe now and then fails (a hiccup), never three in a row.
            let outcome = if t % 150 != 0 { ALIVE } else { DOWN };
            assert_eq!(
                s.on_probe(t0 + ms(t), outcome),
                SuspicionAction::Wait,
                "at {t} ms"
            );
        }
    }

    #[test]
    fn a_short_blip_is_not_enough() {
        // Two misses, then an answer: the count starts over.
        let (mut s, t0) = suspicion();
        s.on_leader(t0, Some(7));
        assert_eq!(fail_probes(&mut s, t0, 0, 50), vec![]);
        assert_eq!(s.on_probe(t0 + ms(100), ALIVE), SuspicionAction::Wait);
        assert_eq!(fail_probes(&mut s, t0, 150, 200), vec![]);
        assert_eq!(
            fail_probes(&mut s, t0, 250, 250),
            vec![(250, SuspicionAction::Depose(7))]
        );
    }

    #[test]
    fn three_quick_misses_wait_for_the_window() {
        // Probes answered with an error at once (connection refused) may come
        // faster than the period; the window still has to pass.
        let (mut s, t0) = suspicion();
        s.on_leader(t0, Some(7));
        for t in [0, 10, 20, 30, 90] {
            assert_eq!(
                s.on_probe(t0 + ms(t), DOWN),
                SuspicionAction::Wait,
                "at {t} ms"
            );
        }
        assert_eq!(s.on_probe(t0 + ms(100), DOWN), SuspicionAction::Depose(7));
    }

    #[test]
    fn each_deposition_doubles_the_window_up_to_the_ttl_and_calm_resets_it() {
        let (mut s, t0) = suspicion();
        let mut t = 0;
        let mut windows = Vec::new();
        for epoch in 1..=7 {
            s.on_leader(t0 + ms(t), Some(epoch));
            let first = t;
            loop {
                if let SuspicionAction::Depose(e) = s.on_probe(t0 + ms(t), DOWN) {
                    assert_eq!(e, epoch);
                    windows.push(t - first);
                    break;
                }
                t += 50;
            }
            t += 50;
        }
        assert_eq!(windows, vec![100, 200, 400, 800, 1600, 2000, 2000]);
        // 30 s without a deposition: back to the first window.
        s.on_leader(t0 + ms(t + 30_000), Some(8));
        assert_eq!(s.window(), ms(100));
    }

    #[test]
    fn no_suspicion_without_another_leader() {
        let (mut s, t0) = suspicion();
        // Nobody leads, or this replica does.
        s.on_leader(t0, None);
        assert!(!s.wants_probe());
        assert_eq!(fail_probes(&mut s, t0, 0, 1000), vec![]);
        // A new term forgets the misses of the old one.
        s.on_leader(t0, Some(3));
        assert_eq!(fail_probes(&mut s, t0, 0, 50), vec![]);
        s.on_leader(t0 + ms(60), Some(4));
        assert_eq!(fail_probes(&mut s, t0, 100, 150), vec![]);
        assert_eq!(
            fail_probes(&mut s, t0, 200, 200),
            vec![(200, SuspicionAction::Depose(4))]
        );
    }
}
