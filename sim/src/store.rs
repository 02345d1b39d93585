//! The fault layer: a [`Store`] that wraps one replica's view of the shared
//! in-memory store and injects what the nemesis and the seeded dice decide.
//!
//! - every operation takes a random virtual latency (so appends in flight
//!   complete out of order);
//! - a *paused* replica (a process frozen past its lease) gets no answers
//!   until it resumes: calls wait before and after reaching the store, so a
//!   request sent before the pause lands, and its answer arrives afterwards;
//! - a *cut* replica cannot reach the store at all;
//! - while faults are active an append may land with its answer lost, or not
//!   land and fail (outcome unknown to the replica either way), and the log
//!   and leader watches deliver late, twice, or end (the replica re-subscribes).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dorado::store::MemoryStore;
use dorado_core::{
    AppendOutcome, Epoch, Index, LeaderRecord, Leadership, LeaseId, MemberRecord, Meta, Store,
    StoreError, StoreResult,
};
use futures::stream::{self, BoxStream, StreamExt};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::Notify;

use crate::log::Log;

/// The world's dice, shared by everything random in one run.
pub type Dice = Arc<Mutex<ChaCha8Rng>>;

/// Roll: true with probability `p`.
pub fn chance(dice: &Dice, p: f64) -> bool {
    dice.lock()
        .unwrap_or_else(|e| e.into_inner())
        .random_bool(p)
}

/// A uniform draw from `range`.
pub fn draw(dice: &Dice, range: std::ops::RangeInclusive<u64>) -> u64 {
    dice.lock()
        .unwrap_or_else(|e| e.into_inner())
        .random_range(range)
}

/// Faults every replica sees, switched on for the fault phase.
#[derive(Debug, Default)]
pub struct Weather {
    /// Probabilistic faults (lost answers, watch delays/duplicates/cuts) on.
    pub stormy: AtomicBool,
}

/// One replica's link to the store, driven by the nemesis.
///
/// The pause is an `AtomicBool` plus a `Notify`, not a `tokio::sync::watch`:
/// watch receivers wait on one of eight `Notify`s picked at random, so the
/// order in which a resume wakes them would differ between runs of one seed.
#[derive(Debug, Default)]
pub struct Link {
    paused: AtomicBool,
    resumed: Notify,
    cut: AtomicBool,
    /// A network blip: other replicas' probes cannot reach this one, nor
    /// its probes them (the store is still reachable).
    isolated: AtomicBool,
    /// When a pause or an isolation last ended.
    healed_at: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Link {
    /// Freeze or resume the replica's view of the store.
    pub fn set_paused(&self, paused: bool) {
        let was = self.paused.swap(paused, Ordering::AcqRel);
        if !paused {
            self.resumed.notify_waiters();
            if was {
                self.mark_healed();
            }
        }
    }

    /// Whether the replica's process is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Isolate the replica from its peers (not from the store), or heal that.
    pub fn set_isolated(&self, isolated: bool) {
        if self.isolated.swap(isolated, Ordering::AcqRel) && !isolated {
            self.mark_healed();
        }
    }

    fn mark_healed(&self) {
        *self.healed_at.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(tokio::time::Instant::now());
    }

    /// Neither paused nor isolated now, nor within `recent`.
    pub fn steady_for(&self, recent: Duration) -> bool {
        let healed = *self.healed_at.lock().unwrap_or_else(|e| e.into_inner());
        !self.is_paused() && !self.is_isolated() && healed.is_none_or(|at| at.elapsed() >= recent)
    }

    /// Whether the replica is isolated from its peers.
    pub fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::Acquire)
    }

    /// Cut the replica off the store, or heal the cut.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Release);
    }

    async fn wait_resumed(&self) {
        loop {
            // Registered before the check, so a resume in between is not missed.
            let resumed = self.resumed.notified();
            if !self.paused.load(Ordering::Acquire) {
                return;
            }
            resumed.await;
        }
    }
}

/// Broken invariants of the store contract seen by the fault layer.
pub type Violations = Arc<Mutex<Vec<String>>>;

/// Called with (deposer, deposed leader, epoch) after every deposition.
pub type DeposeHook = dyn Fn(&str, &str, Epoch) + Send + Sync;

/// Told of every deposition: who deposed, whom, which epoch.
#[derive(Clone)]
pub struct OnDepose(pub Arc<DeposeHook>);

impl std::fmt::Debug for OnDepose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnDepose")
    }
}

/// One replica's store.
#[derive(Clone, Debug)]
pub struct FaultStore {
    on_depose: OnDepose,
    inner: MemoryStore,
    violations: Violations,
    link: Arc<Link>,
    weather: Arc<Weather>,
    dice: Dice,
    log: Log,
    name: String,
}

impl FaultStore {
    /// `name`'s view of `inner`.
    pub fn new(
        inner: MemoryStore,
        violations: Violations,
        link: Arc<Link>,
        weather: Arc<Weather>,
        dice: Dice,
        log: Log,
        name: &str,
    ) -> Self {
        FaultStore {
            on_depose: OnDepose(Arc::new(|_, _, _| {})),
            inner,
            violations,
            link,
            weather,
            dice,
            log,
            name: name.into(),
        }
    }

    /// Call `hook` with the deposed leader's name after each deposition.
    pub fn on_depose(mut self, hook: OnDepose) -> Self {
        self.on_depose = hook;
        self
    }

    fn stormy(&self) -> bool {
        self.weather.stormy.load(Ordering::Acquire)
    }

    fn cut_error(&self) -> StoreError {
        StoreError::Unavailable(format!("sim: {} is cut off the store", self.name))
    }

    /// Before reaching the store: wait out a pause, fail if cut, take latency.
    async fn enter(&self) -> StoreResult<()> {
        self.link.wait_resumed().await;
        if self.link.cut.load(Ordering::Acquire) {
            return Err(self.cut_error());
        }
        let ms = draw(&self.dice, 0..=3);
        tokio::time::sleep(Duration::from_micros(ms * 500 + 100)).await;
        Ok(())
    }

    /// After the store answered: the answer waits out a pause.
    async fn leave<T>(&self, r: StoreResult<T>) -> StoreResult<T> {
        self.link.wait_resumed().await;
        r
    }

    async fn call<T, F: Future<Output = StoreResult<T>>>(&self, f: F) -> StoreResult<T> {
        self.enter().await?;
        let r = f.await;
        self.leave(r).await
    }

    /// Wrap a watch stream with pauses, cuts, delays, duplicates and ends.
    fn weathered<T: Clone + Send + 'static>(
        &self,
        inner: BoxStream<'static, StoreResult<T>>,
        what: &'static str,
    ) -> BoxStream<'static, StoreResult<T>> {
        let me = self.clone();
        stream::unfold(
            (inner, None::<StoreResult<T>>, false),
            move |(mut inner, dup, ended)| {
                let me = me.clone();
                async move {
                    if ended {
                        return None;
                    }
                    if let Some(item) = dup {
                        return Some((item, (inner, None, false)));
                    }
                    let item = inner.next().await?;
                    me.link.wait_resumed().await;
                    if me.link.cut.load(Ordering::Acquire) {
                        return Some((Err(me.cut_error()), (inner, None, true)));
                    }
                    if me.stormy() {
                        if chance(&me.dice, 0.02) {
                            me.log.ev(format!("{}: {what} watch cut", me.name));
                            return None;
                        }
                        if chance(&me.dice, 0.05) {
                            let ms = draw(&me.dice, 1..=80);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        if chance(&me.dice, 0.03) {
                            let again = match &item {
                                Ok(v) => Ok(v.clone()),
                                Err(e) => Err(e.clone()),
                            };
                            return Some((item, (inner, Some(again), false)));
                        }
                    }
                    Some((item, (inner, None, false)))
                }
            },
        )
        .boxed()
    }
}

impl Store for FaultStore {
    async fn init_meta(&self, meta: &Meta) -> StoreResult<Meta> {
        self.call(self.inner.init_meta(meta)).await
    }

    async fn meta(&self) -> StoreResult<Option<Meta>> {
        self.call(self.inner.meta()).await
    }

    async fn grant_lease(&self, ttl: Duration) -> StoreResult<LeaseId> {
        self.call(self.inner.grant_lease(ttl)).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> StoreResult<()> {
        self.call(self.inner.keep_alive(lease)).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> StoreResult<()> {
        self.call(self.inner.revoke_lease(lease)).await
    }

    async fn campaign(&self, lease: LeaseId, leader: &LeaderRecord) -> StoreResult<Option<Epoch>> {
        self.call(self.inner.campaign(lease, leader)).await
    }

    async fn leader(&self) -> StoreResult<Option<Leadership>> {
        self.call(self.inner.leader()).await
    }

    async fn depose(&self, epoch: Epoch) -> StoreResult<bool> {
        self.enter().await?;
        // Who held the key: read in the same step as the delete (the memory
        // store never yields inside an operation, and nothing else runs).
        let holder = self.inner.leader().await.ok().flatten();
        let r = self.inner.depose(epoch).await;
        if let (Ok(true), Some(h)) = (&r, holder) {
            self.log.ev(format!(
                "{} deposed {} (epoch {epoch})",
                self.name, h.leader.replica
            ));
            (self.on_depose.0)(&self.name, &h.leader.replica, epoch);
        }
        self.leave(r).await
    }

    fn watch_leader(&self) -> BoxStream<'static, StoreResult<Option<Leadership>>> {
        if self.link.cut.load(Ordering::Acquire) {
            return stream::once(std::future::ready(Err(self.cut_error()))).boxed();
        }
        self.weathered(self.inner.watch_leader(), "leader")
    }

    async fn append(&self, epoch: Epoch, index: Index, entry: &[u8]) -> StoreResult<AppendOutcome> {
        self.enter().await?;
        if self.stormy() && chance(&self.dice, 0.03) {
            self.log.ev(format!(
                "{}: append {index} epoch {epoch} lost before the store",
                self.name
            ));
            return self
                .leave(Err(StoreError::Unavailable("sim: request lost".into())))
                .await;
        }
        let r = self.inner.append(epoch, index, entry).await;
        // The fence (the store contract's first rule): an append succeeds only
        // under the epoch that leads now. Nothing else runs between the two
        // calls (one thread, and the in-memory store never yields inside an
        // operation), so the leader read is the one the append saw.
        if matches!(r, Ok(AppendOutcome::Appended)) {
            let leading = self.inner.leader().await.ok().flatten().map(|l| l.epoch);
            if leading != Some(epoch) {
                let v = format!(
                    "fence broken: {} appended index {index} with epoch {epoch} while {leading:?} leads",
                    self.name
                );
                self.log.ev(v.clone());
                self.violations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(v);
            }
        }
        if self.stormy() && chance(&self.dice, 0.05) {
            self.log.ev(format!(
                "{}: append {index} epoch {epoch} = {r:?}, answer lost",
                self.name
            ));
            return self
                .leave(Err(StoreError::Unavailable("sim: answer lost".into())))
                .await;
        }
        self.leave(r).await
    }

    async fn read_log(
        &self,
        from: Index,
        to: Index,
        limit: usize,
    ) -> StoreResult<Vec<(Index, Vec<u8>)>> {
        self.call(self.inner.read_log(from, to, limit)).await
    }

    async fn last_index(&self, from: Index) -> StoreResult<Option<Index>> {
        self.call(self.inner.last_index(from)).await
    }

    fn watch_log(&self, from: Index) -> BoxStream<'static, StoreResult<(Index, Vec<u8>)>> {
        if self.link.cut.load(Ordering::Acquire) {
            return stream::once(std::future::ready(Err(self.cut_error()))).boxed();
        }
        self.weathered(self.inner.watch_log(from), "log")
    }

    async fn delete_log_below(&self, below: Index) -> StoreResult<()> {
        self.call(self.inner.delete_log_below(below)).await
    }

    async fn put_snapshot(&self, index: Index, bytes: &[u8]) -> StoreResult<()> {
        self.call(self.inner.put_snapshot(index, bytes)).await
    }

    async fn newest_snapshot_index(&self) -> StoreResult<Option<Index>> {
        self.call(self.inner.newest_snapshot_index()).await
    }

    async fn put_module(&self, sha256: &str, bytes: &[u8]) -> StoreResult<()> {
        self.call(self.inner.put_module(sha256, bytes)).await
    }

    async fn get_module(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>> {
        self.call(self.inner.get_module(sha256)).await
    }

    async fn newest_snapshot(&self) -> StoreResult<Option<(Index, Vec<u8>)>> {
        self.call(self.inner.newest_snapshot()).await
    }

    async fn delete_snapshots_below(&self, below: Index) -> StoreResult<()> {
        self.call(self.inner.delete_snapshots_below(below)).await
    }

    async fn publish_member(
        &self,
        lease: LeaseId,
        replica: &str,
        record: &MemberRecord,
    ) -> StoreResult<()> {
        self.call(self.inner.publish_member(lease, replica, record))
            .await
    }

    async fn members(&self) -> StoreResult<Vec<(String, MemberRecord)>> {
        self.call(self.inner.members()).await
    }
}
