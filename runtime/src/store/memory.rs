//! An in-process [`Store`] with etcd's semantics, for tests and demos.
//!
//! Protocol logic is unit-tested against this store, and `dorado-bench demo` runs
//! on it when no etcd binary exists, so it must behave like the etcd adapter
//! in everything the protocol can observe. It therefore models the parts of
//! etcd the adapter relies on rather than the trait's outcomes: one key-value
//! map with a global revision counter (create revisions are the epochs),
//! leases whose expiry deletes their keys and notifies watchers, range
//! watches, and the same key layout (see [`crate::store`]), including
//! chunked snapshots with a manifest written last. Every operation runs under
//! one mutex, which gives etcd's transaction atomicity for free.
//!
//! Several stores can share one "etcd": [`MemoryStore::group`] returns a view
//! of another group in the same key space, and clones share everything, so
//! three replicas in one process see one shared memory.
//!
//! Lease expiry is driven by tokio time (a timer task per lease, plus a check
//! at the start of every operation), so tests with a paused clock work.
//! [`MemoryStore::set_unavailable`] simulates an unreachable store.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use dorado_core::{
    AppendOutcome, Epoch, Index, LeaderRecord, Leadership, LeaseId, MemberRecord, Meta, Store,
    StoreError, StoreResult,
};
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{
    KeySpace, SNAPSHOT_CHUNK_SIZE, SnapshotManifest, check_module_bytes, decode_json, encode_json,
    end_after_error, new_snapshot_writer,
};

/// In-memory store; cheap to clone, clones share one state.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
    keys: KeySpace,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

struct State {
    revision: i64,
    kvs: BTreeMap<String, Kv>,
    leases: BTreeMap<i64, Lease>,
    next_lease: i64,
    watchers: Vec<Watcher>,
    unavailable: Option<String>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            revision: 1,
            kvs: BTreeMap::new(),
            leases: BTreeMap::new(),
            next_lease: 0x6d65_6d00,
            watchers: Vec::new(),
            unavailable: None,
        }
    }
}

struct Kv {
    value: Arc<[u8]>,
    create_revision: i64,
    lease: i64,
}

struct Lease {
    deadline: Instant,
    ttl: Duration,
    keys: BTreeSet<String>,
}

/// A watch on the key range `[start, end)`.
struct Watcher {
    start: String,
    end: String,
    tx: mpsc::UnboundedSender<StoreResult<Event>>,
}

#[derive(Clone)]
enum Event {
    Put {
        key: String,
        value: Arc<[u8]>,
        create_revision: i64,
    },
    Delete,
}

impl State {
    /// Fail if the store is "down"; expire leases whose time has come.
    fn check(&mut self) -> StoreResult<()> {
        if let Some(reason) = &self.unavailable {
            return Err(StoreError::Unavailable(format!("memory store: {reason}")));
        }
        self.expire_due(Instant::now());
        Ok(())
    }

    fn expire_due(&mut self, now: Instant) {
        let due: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.revoke(id);
        }
    }

    fn revoke(&mut self, id: i64) {
        if let Some(lease) = self.leases.remove(&id) {
            if !lease.keys.is_empty() {
                self.revision += 1;
            }
            for key in lease.keys {
                self.kvs.remove(&key);
                self.notify(&key, Event::Delete);
            }
        }
    }

    fn put(&mut self, key: String, value: Arc<[u8]>, lease: i64) -> StoreResult<()> {
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Err(StoreError::LeaseExpired(lease));
        }
        self.revision += 1;
        let create_revision = match self.kvs.get(&key) {
            Some(old) => {
                if old.lease != 0
                    && old.lease != lease
                    && let Some(l) = self.leases.get_mut(&old.lease)
                {
                    l.keys.remove(&key);
                }
                old.create_revision
            }
            None => self.revision,
        };
        if lease != 0
            && let Some(l) = self.leases.get_mut(&lease)
        {
            l.keys.insert(key.clone());
        }
        self.kvs.insert(
            key.clone(),
            Kv {
                value: value.clone(),
                create_revision,
                lease,
            },
        );
        self.notify(
            &key,
            Event::Put {
                key: key.clone(),
                value,
                create_revision,
            },
        );
        Ok(())
    }

    /// Delete every key in `[start, end)` in one revision.
    fn delete_range(&mut self, start: &str, end: &str) {
        if start >= end {
            return;
        }
        let doomed: Vec<String> = self
            .kvs
            .range::<str, _>((
                std::ops::Bound::Included(start),
                std::ops::Bound::Excluded(end),
            ))
            .map(|(k, _)| k.clone())
            .collect();
        if doomed.is_empty() {
            return;
        }
        self.revision += 1;
        for key in doomed {
            if let Some(kv) = self.kvs.remove(&key)
                && kv.lease != 0
                && let Some(l) = self.leases.get_mut(&kv.lease)
            {
                l.keys.remove(&key);
            }
            self.notify(&key, Event::Delete);
        }
    }

    fn range(&self, start: &str, end: &str) -> impl DoubleEndedIterator<Item = (&String, &Kv)> {
        let bounds = if start < end {
            (
                std::ops::Bound::Included(start),
                std::ops::Bound::Excluded(end),
            )
        } else {
            // An empty range; BTreeMap::range panics on start > end.
            (
                std::ops::Bound::Included(start),
                std::ops::Bound::Excluded(start),
            )
        };
        self.kvs.range::<str, _>(bounds)
    }

    fn notify(&mut self, key: &str, event: Event) {
        self.watchers.retain(|w| {
            if w.tx.is_closed() {
                return false;
            }
            if w.start.as_str() <= key && key < w.end.as_str() {
                return w.tx.send(Ok(event.clone())).is_ok();
            }
            true
        });
    }

    fn watch(&mut self, start: String, end: String) -> mpsc::UnboundedReceiver<StoreResult<Event>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.watchers.push(Watcher { start, end, tx });
        rx
    }
}

impl MemoryStore {
    /// A fresh shared memory, viewed as group `default` in namespace `default`.
    pub fn new() -> Self {
        Self {
            shared: Arc::default(),
            keys: KeySpace {
                prefix: format!("{}default/default/", super::KEY_ROOT),
            },
        }
    }

    /// A fresh shared memory, viewed as `group` in `namespace`.
    pub fn new_group(namespace: &str, group: &str) -> StoreResult<Self> {
        Ok(Self {
            shared: Arc::default(),
            keys: KeySpace::new(namespace, group)?,
        })
    }

    /// Another group in the same shared memory (like another prefix on the
    /// same etcd): independent keys, one revision counter, shared leases.
    pub fn group(&self, namespace: &str, group: &str) -> StoreResult<Self> {
        Ok(Self {
            shared: self.shared.clone(),
            keys: KeySpace::new(namespace, group)?,
        })
    }

    /// The key space of this view.
    pub fn key_space(&self) -> &KeySpace {
        &self.keys
    }

    /// The current revision of the shared memory.
    pub fn revision(&self) -> i64 {
        self.lock().revision
    }

    /// Simulate an unreachable store: while `Some(reason)`, every operation
    /// fails with `Unavailable` and every open watch ends with that error.
    /// Leases keep their deadlines, as they would on a real outage.
    pub fn set_unavailable(&self, reason: Option<&str>) {
        let mut st = self.lock();
        st.unavailable = reason.map(str::to_owned);
        if let Some(reason) = reason {
            for w in st.watchers.drain(..) {
                let _ = w.tx.send(Err(StoreError::Unavailable(format!(
                    "memory store: {reason}"
                ))));
            }
        }
    }

    /// Write `value` at `relative_key` (under this group's prefix) with no
    /// checks at all. For tests and tools that need to fabricate stored
    /// state, e.g. a corrupt record or a snapshot whose manifest never came.
    pub fn put_raw(&self, relative_key: &str, value: &[u8]) -> StoreResult<()> {
        let mut st = self.lock();
        st.check()?;
        st.put(self.keys.key(relative_key), Arc::from(value), 0)
    }

    /// Keys (relative to this group's prefix) that start with
    /// `relative_prefix`, in key order. For tests and tools.
    pub fn raw_keys(&self, relative_prefix: &str) -> StoreResult<Vec<String>> {
        let mut st = self.lock();
        st.check()?;
        let start = self.keys.key(relative_prefix);
        let end = format!("{start}\u{10ffff}");
        Ok(st
            .range(&start, &end)
            .map(|(key, _)| self.keys.relative(key).to_owned())
            .collect())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something ever did, the
        // map is still consistent key by key, so keep serving.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn checked(&self) -> StoreResult<MutexGuard<'_, State>> {
        let mut st = self.lock();
        st.check()?;
        Ok(st)
    }

    fn spawn_expiry(&self, id: i64) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            // No runtime: expiry still happens lazily at the next operation.
            return;
        };
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        handle.spawn(async move {
            loop {
                let deadline = {
                    let Some(shared) = weak.upgrade() else { return };
                    let mut st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
                    let Some(lease) = st.leases.get(&id) else {
                        return;
                    };
                    let deadline = lease.deadline;
                    if deadline <= Instant::now() {
                        st.revoke(id);
                        return;
                    }
                    deadline
                };
                tokio::time::sleep_until(deadline).await;
            }
        });
    }

    fn decode_leader(&self, key: &str, kv: &Kv) -> StoreResult<Leadership> {
        let leader: LeaderRecord = decode_json(self.keys.relative(key), &kv.value)?;
        Ok(Leadership {
            leader,
            epoch: kv.create_revision,
        })
    }

    fn newest_manifest(&self, st: &State) -> StoreResult<Option<SnapshotManifest>> {
        let found = st
            .range(&self.keys.snap_prefix(), &self.keys.snap_end())
            .rev()
            .find_map(|(key, kv)| {
                self.keys
                    .parse_snap_manifest_key(key.as_bytes())
                    .map(|index| (key, index, kv))
            });
        let Some((key, index, kv)) = found else {
            return Ok(None);
        };
        let rel = self.keys.relative(key);
        let manifest: SnapshotManifest = decode_json(rel, &kv.value)?;
        if manifest.index != index {
            return Err(StoreError::Corrupt {
                key: rel.to_owned(),
                reason: format!("manifest names index {}", manifest.index),
            });
        }
        Ok(Some(manifest))
    }
}

fn receiver_stream<T: Send + 'static>(rx: mpsc::UnboundedReceiver<T>) -> BoxStream<'static, T> {
    stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
}

impl Store for MemoryStore {
    async fn init_meta(&self, meta: &Meta) -> StoreResult<Meta> {
        let mut st = self.checked()?;
        let key = self.keys.meta();
        if let Some(kv) = st.kvs.get(&key) {
            return decode_json(self.keys.relative(&key), &kv.value);
        }
        let value = encode_json("meta", meta)?;
        st.put(key, value.into(), 0)?;
        Ok(meta.clone())
    }

    async fn meta(&self) -> StoreResult<Option<Meta>> {
        let st = self.checked()?;
        let key = self.keys.meta();
        st.kvs
            .get(&key)
            .map(|kv| decode_json(self.keys.relative(&key), &kv.value))
            .transpose()
    }

    async fn grant_lease(&self, ttl: Duration) -> StoreResult<LeaseId> {
        let id = {
            let mut st = self.checked()?;
            st.next_lease += 1;
            let id = st.next_lease;
            let ttl = ttl.max(Duration::from_millis(1));
            st.leases.insert(
                id,
                Lease {
                    deadline: Instant::now() + ttl,
                    ttl,
                    keys: BTreeSet::new(),
                },
            );
            id
        };
        self.spawn_expiry(id);
        Ok(LeaseId(id))
    }

    async fn keep_alive(&self, lease: LeaseId) -> StoreResult<()> {
        let mut st = self.checked()?;
        match st.leases.get_mut(&lease.0) {
            Some(l) => {
                l.deadline = Instant::now() + l.ttl;
                Ok(())
            }
            None => Err(StoreError::LeaseExpired(lease.0)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> StoreResult<()> {
        let mut st = self.checked()?;
        st.revoke(lease.0);
        Ok(())
    }

    async fn campaign(&self, lease: LeaseId, leader: &LeaderRecord) -> StoreResult<Option<Epoch>> {
        let mut st = self.checked()?;
        let key = self.keys.leader();
        if st.kvs.contains_key(&key) {
            return Ok(None);
        }
        let value = encode_json("leader record", leader)?;
        st.put(key.clone(), value.into(), lease.0)?;
        Ok(st.kvs.get(&key).map(|kv| kv.create_revision))
    }

    async fn leader(&self) -> StoreResult<Option<Leadership>> {
        let st = self.checked()?;
        let key = self.keys.leader();
        st.kvs
            .get(&key)
            .map(|kv| self.decode_leader(&key, kv))
            .transpose()
    }

    async fn depose(&self, epoch: Epoch) -> StoreResult<bool> {
        let mut st = self.checked()?;
        let key = self.keys.leader();
        if st.kvs.get(&key).map(|kv| kv.create_revision) != Some(epoch) {
            return Ok(false);
        }
        st.delete_range(&key, &format!("{key}\0"));
        Ok(true)
    }

    fn watch_leader(&self) -> BoxStream<'static, StoreResult<Option<Leadership>>> {
        let mut st = match self.checked() {
            Ok(st) => st,
            Err(e) => return stream::once(async move { Err(e) }).boxed(),
        };
        let key = self.keys.leader();
        let current = st
            .kvs
            .get(&key)
            .map(|kv| self.decode_leader(&key, kv))
            .transpose();
        let rx = st.watch(key.clone(), format!("{key}\0"));
        drop(st);
        let this = self.clone();
        let changes = receiver_stream(rx).map(move |event| match event? {
            Event::Put {
                key,
                value,
                create_revision,
            } => {
                let leader: LeaderRecord = decode_json(this.keys.relative(&key), &value)?;
                Ok(Some(Leadership {
                    leader,
                    epoch: create_revision,
                }))
            }
            Event::Delete => Ok(None),
        });
        end_after_error(stream::once(async move { current }).chain(changes))
    }

    async fn append(&self, epoch: Epoch, index: Index, entry: &[u8]) -> StoreResult<AppendOutcome> {
        let mut st = self.checked()?;
        let leader_epoch = st.kvs.get(&self.keys.leader()).map(|kv| kv.create_revision);
        // Feature `unfenced-appends` (the deliberately injected bug the fault
        // suite and the simulation must catch; see `etcd.rs`) skips the fence.
        let fenced = epoch <= 0 || leader_epoch != Some(epoch);
        if fenced && !cfg!(feature = "unfenced-appends") {
            return Ok(AppendOutcome::Fenced);
        }
        let key = self.keys.log(index);
        if let Some(kv) = st.kvs.get(&key) {
            return Ok(AppendOutcome::Occupied(kv.value.to_vec()));
        }
        st.put(key, Arc::from(entry), 0)?;
        Ok(AppendOutcome::Appended)
    }

    async fn read_log(
        &self,
        from: Index,
        to: Index,
        limit: usize,
    ) -> StoreResult<Vec<(Index, Vec<u8>)>> {
        let st = self.checked()?;
        if from > to || limit == 0 {
            return Ok(Vec::new());
        }
        st.range(&self.keys.log(from), &self.keys.log_end_inclusive(to))
            .take(limit)
            .map(|(key, kv)| match self.keys.parse_log_key(key.as_bytes()) {
                Some(index) => Ok((index, kv.value.to_vec())),
                None => Err(corrupt_log_key(&self.keys, key)),
            })
            .collect()
    }

    async fn last_index(&self, from: Index) -> StoreResult<Option<Index>> {
        let st = self.checked()?;
        match st
            .range(&self.keys.log(from), &self.keys.log_end())
            .next_back()
        {
            None => Ok(None),
            Some((key, _)) => match self.keys.parse_log_key(key.as_bytes()) {
                Some(index) => Ok(Some(index)),
                None => Err(corrupt_log_key(&self.keys, key)),
            },
        }
    }

    fn watch_log(&self, from: Index) -> BoxStream<'static, StoreResult<(Index, Vec<u8>)>> {
        let mut st = match self.checked() {
            Ok(st) => st,
            Err(e) => return stream::once(async move { Err(e) }).boxed(),
        };
        let (start, end) = (self.keys.log(from), self.keys.log_end());
        let existing: Vec<StoreResult<(Index, Vec<u8>)>> = st
            .range(&start, &end)
            .map(|(key, kv)| match self.keys.parse_log_key(key.as_bytes()) {
                Some(index) => Ok((index, kv.value.to_vec())),
                None => Err(corrupt_log_key(&self.keys, key)),
            })
            .collect();
        let rx = st.watch(start, end);
        drop(st);
        let keys = self.keys.clone();
        let live = receiver_stream(rx).filter_map(move |event| {
            let item = match event {
                Err(e) => Some(Err(e)),
                Ok(Event::Delete) => None,
                Ok(Event::Put { key, value, .. }) => {
                    Some(match keys.parse_log_key(key.as_bytes()) {
                        Some(index) => Ok((index, value.to_vec())),
                        None => Err(corrupt_log_key(&keys, &key)),
                    })
                }
            };
            std::future::ready(item)
        });
        end_after_error(stream::iter(existing).chain(live))
    }

    async fn delete_log_below(&self, below: Index) -> StoreResult<()> {
        let mut st = self.checked()?;
        st.delete_range(&self.keys.log_prefix(), &self.keys.log(below));
        Ok(())
    }

    async fn put_snapshot(&self, index: Index, bytes: &[u8]) -> StoreResult<()> {
        let mut st = self.checked()?;
        put_chunked(
            &mut st,
            index,
            self.keys.snap_manifest(index),
            bytes,
            |writer| self.keys.snap_chunk_dir(index, writer),
        )
    }

    async fn newest_snapshot_index(&self) -> StoreResult<Option<Index>> {
        let st = self.checked()?;
        Ok(self.newest_manifest(&st)?.map(|m| m.index))
    }

    async fn newest_snapshot(&self) -> StoreResult<Option<(Index, Vec<u8>)>> {
        let st = self.checked()?;
        let Some(manifest) = self.newest_manifest(&st)? else {
            return Ok(None);
        };
        let key = self.keys.snap_manifest(manifest.index);
        let dir = self.keys.snap_chunk_dir(manifest.index, &manifest.writer);
        let bytes = read_chunks(&st, &manifest, self.keys.relative(&key), &dir)?;
        Ok(Some((manifest.index, bytes)))
    }

    async fn put_module(&self, sha256: &str, bytes: &[u8]) -> StoreResult<()> {
        check_module_bytes(sha256, bytes)?;
        let mut st = self.checked()?;
        put_chunked(
            &mut st,
            0,
            self.keys.module_manifest(sha256),
            bytes,
            |writer| self.keys.module_chunk_dir(sha256, writer),
        )
    }

    async fn get_module(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>> {
        let st = self.checked()?;
        let key = self.keys.module_manifest(sha256);
        let rel = self.keys.relative(&key);
        let Some(kv) = st.kvs.get(&key) else {
            return Ok(None);
        };
        let manifest: SnapshotManifest = decode_json(rel, &kv.value)?;
        let dir = self.keys.module_chunk_dir(sha256, &manifest.writer);
        let bytes = read_chunks(&st, &manifest, rel, &dir)?;
        check_module_bytes(sha256, &bytes)?;
        Ok(Some(bytes))
    }

    async fn delete_snapshots_below(&self, below: Index) -> StoreResult<()> {
        let mut st = self.checked()?;
        st.delete_range(&self.keys.snap_prefix(), &self.keys.snap_below(below));
        Ok(())
    }

    async fn publish_member(
        &self,
        lease: LeaseId,
        replica: &str,
        record: &MemberRecord,
    ) -> StoreResult<()> {
        let key = self.keys.member(replica)?;
        let value = encode_json("member record", record)?;
        let mut st = self.checked()?;
        st.put(key, value.into(), lease.0)
    }

    async fn members(&self) -> StoreResult<Vec<(String, MemberRecord)>> {
        let st = self.checked()?;
        st.range(&self.keys.members_prefix(), &self.keys.members_end())
            .map(|(key, kv)| {
                let rel = self.keys.relative(key);
                let replica = self.keys.parse_member_key(key.as_bytes()).ok_or_else(|| {
                    StoreError::Corrupt {
                        key: rel.to_owned(),
                        reason: "not a member key".into(),
                    }
                })?;
                Ok((replica, decode_json(rel, &kv.value)?))
            })
            .collect()
    }
}

fn corrupt_log_key(keys: &KeySpace, key: &str) -> StoreError {
    StoreError::Corrupt {
        key: keys.relative(key).to_owned(),
        reason: "not a log key (expected log/<20 digit index>)".into(),
    }
}

/// Chunks under `chunk_dir(writer)`, then the manifest, unless a manifest
/// exists already (the value is deterministic; the first writer wins).
fn put_chunked<'a>(
    st: &mut State,
    index: Index,
    manifest_key: String,
    bytes: &[u8],
    chunk_dir: impl Fn(&str) -> String + 'a,
) -> StoreResult<()> {
    if st.kvs.contains_key(&manifest_key) {
        return Ok(());
    }
    let writer = new_snapshot_writer();
    let manifest = SnapshotManifest::describe(index, &writer, bytes)?;
    let dir = chunk_dir(&writer);
    for (n, chunk) in (0u32..).zip(bytes.chunks(SNAPSHOT_CHUNK_SIZE)) {
        st.put(format!("{dir}{n:08}"), Arc::from(chunk), 0)?;
    }
    let value = encode_json("manifest", &manifest)?;
    st.put(manifest_key, value.into(), 0)
}

/// The chunks in `dir`, checked against `manifest` (named `key` in errors).
fn read_chunks(
    st: &State,
    manifest: &SnapshotManifest,
    key: &str,
    dir: &str,
) -> StoreResult<Vec<u8>> {
    let mut bytes = Vec::with_capacity(usize::try_from(manifest.total_len).unwrap_or(0));
    let mut found = 0usize;
    for (_, kv) in st.range(dir, &format!("{dir}\u{7f}")) {
        bytes.extend_from_slice(&kv.value);
        found += 1;
    }
    manifest.verify(key, found, &bytes)?;
    Ok(bytes)
}
