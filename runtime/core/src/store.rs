//! The boundary between the protocol and the shared memory that orders it.
//!
//! DORADO's safety rests entirely on this trait: the shared store (etcd in
//! production) decides the order, replicas never talk consensus to each other.
//! Every implementation must pass the conformance suite in
//! `runtime/tests/store_conformance.rs`, which checks each requirement below
//! against both the in-memory and the etcd adapter.
//!
//! One `Store` value is scoped to one group (`/dorado/v1/<namespace>/<group>/`).

use std::future::Future;
use std::time::Duration;

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

/// Position of an entry in the group's log. The first entry is index 1.
pub type Index = u64;

/// Fencing token of a leadership term: the store revision at which the leader
/// key was created. Strictly increases from one term to the next.
pub type Epoch = i64;

/// A lease that keeps the leader and member keys alive while its owner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

/// Group metadata, written once by the first replica (`meta` key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Hex sha256 of the wasm module every replica must run.
    pub module_sha256: String,
    /// Guest ABI version of that module.
    pub abi_version: u32,
    /// Ordering protocol (`dorado`).
    pub protocol: String,
    /// Client sessions idle for more than this many log entries are forgotten.
    /// Part of the replicated state's rules, so it must be the same everywhere.
    pub session_expiry_entries: u64,
}

/// Value of the `leader` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// Replica id of the leader.
    pub replica: String,
    /// `host:port` where its client API listens.
    pub address: String,
}

/// The current leader and its fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// Who leads.
    pub leader: LeaderRecord,
    /// Fencing token (create revision of the leader key).
    pub epoch: Epoch,
}

/// Value of a `members/<replica>` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// `host:port` of the replica's client API.
    pub address: String,
    /// Highest log index the replica has applied.
    pub applied_index: Index,
    /// Hex hash chain value after `applied_index`.
    pub hash: String,
}

/// Result of a fenced append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The entry was written at the index.
    Appended,
    /// The epoch is no longer the leader key's create revision (or there is no
    /// leader key): nothing was written. Takes precedence over `Occupied`.
    Fenced,
    /// The epoch is current but the index already holds an entry; its bytes are
    /// returned so a leader that retries after an unknown outcome can tell
    /// whether the entry is its own.
    Occupied(Vec<u8>),
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer in time; the outcome of
    /// a write that fails this way is unknown.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store has run out of space (etcd `NOSPACE` alarm); it refuses writes
    /// until an operator compacts, defragments and disarms it.
    #[error("store out of space (etcd NOSPACE alarm): {0}")]
    NoSpace(String),
    /// A watch asked for history the store has already compacted away.
    #[error("store history compacted up to revision {0}")]
    Compacted(i64),
    /// The lease has expired or was revoked.
    #[error("lease {0} expired or was revoked")]
    LeaseExpired(i64),
    /// A stored value could not be decoded.
    #[error("corrupt value at key {key}: {reason}")]
    Corrupt {
        /// The key (relative to the group prefix).
        key: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The caller passed something the store cannot represent or refuses
    /// (a name containing `/`, an entry above the store's request size limit).
    /// Retrying the same call will fail the same way.
    #[error("invalid store request: {0}")]
    InvalidArgument(String),
}

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// The shared memory of one DORADO group.
///
/// # Correctness requirements (checked by the conformance suite)
/// 1. **Meta is write-once**: `init_meta` stores its argument only if no meta
///    exists and always returns the stored value.
/// 2. **Election is exclusive**: `campaign` creates the leader key bound to the
///    lease only if it is absent, and returns its epoch; while the key exists
///    every other `campaign` returns `None`. Revoking or expiring the lease
///    removes the key. Each new leader key has a larger epoch than any before.
/// 3. **Appends are fenced and write-once**: `append(epoch, i, ..)` writes
///    `log/i` only if `epoch` equals the current leader key's epoch *and*
///    `log/i` is absent, both checked atomically with the write.
/// 4. **Log reads are ordered**: `read_log` returns existing entries in
///    ascending index order; `last_index(from)` is the highest existing index
///    `>= from`.
/// 5. **Watches are complete**: `watch_log(from)` yields every entry with index
///    `>= from` that exists when it starts or is written later, exactly once,
///    and never an entry below `from`; deletions are not reported. Entries
///    written later arrive in the order the store committed them, which need not
///    be index order. A watch "starts" when it is first polled at the latest
///    (adapters may start earlier). A watch that cannot continue (compaction,
///    connection loss) ends with an error item and then ends; the caller
///    re-subscribes from what it has.
/// 6. **Leader watches report every change**: `watch_leader` first yields the
///    current leadership, then a new item whenever the key is created or deleted.
/// 7. **Snapshots are atomic to readers**: `newest_snapshot` never returns a
///    partially written snapshot, whatever its size; chunking under the store's
///    request limit is the adapter's business.
/// 8. **Deletes are ranges**: `delete_log_below(i)` removes entries `< i` and
///    nothing else; `delete_snapshots_below(i)` likewise for snapshots.
/// 9. **Members are lease-bound**: a member record vanishes with its lease.
/// 10. **Deposition is exact**: `depose(e)` deletes the leader key only if it
///     holds epoch `e` (checked atomically with the delete) and says whether it
///     did; afterwards every `append(e, ..)` fails the fence (requirement 3).
///     The deposed leader's lease and member record are left alone.
/// 11. **Modules are content-addressed and permanent**: `put_module(h, b)`
///     refuses bytes whose sha256 is not `h`, stores them whole (atomic to
///     readers, like snapshots) if `h` is absent and is a no-op otherwise;
///     `get_module(h)` returns exactly those bytes, checked against `h`, or
///     `None`. Modules are never deleted: an upgrade entry in the log, and
///     every replay of it, needs its module.
pub trait Store: Send + Sync + 'static {
    /// Create the group's meta if absent; return whatever meta is stored.
    fn init_meta(&self, meta: &Meta) -> impl Future<Output = StoreResult<Meta>> + Send;
    /// The stored meta, if any, without creating it (read-only tools such as
    /// `dorado replay` must not initialise a group).
    fn meta(&self) -> impl Future<Output = StoreResult<Option<Meta>>> + Send;

    /// Grant a lease that expires `ttl` after its last keep-alive.
    fn grant_lease(&self, ttl: Duration) -> impl Future<Output = StoreResult<LeaseId>> + Send;
    /// Refresh a lease; `Err(LeaseExpired)` if it no longer exists.
    fn keep_alive(&self, lease: LeaseId) -> impl Future<Output = StoreResult<()>> + Send;
    /// Revoke a lease, deleting every key bound to it. Revoking an unknown lease is not an error.
    fn revoke_lease(&self, lease: LeaseId) -> impl Future<Output = StoreResult<()>> + Send;

    /// Try to become leader: `Some(epoch)` if this call created the leader key.
    fn campaign(
        &self,
        lease: LeaseId,
        leader: &LeaderRecord,
    ) -> impl Future<Output = StoreResult<Option<Epoch>>> + Send;
    /// The current leadership, if any.
    fn leader(&self) -> impl Future<Output = StoreResult<Option<Leadership>>> + Send;
    /// Delete the leader key if it still holds `epoch`: `true` if this call
    /// deleted it (see requirement 10). A follower that finds the leader gone
    /// calls this instead of waiting for its lease to expire.
    fn depose(&self, epoch: Epoch) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Current leadership, then every change (see requirement 6).
    fn watch_leader(&self) -> BoxStream<'static, StoreResult<Option<Leadership>>>;

    /// Fenced append (see requirement 3).
    fn append(
        &self,
        epoch: Epoch,
        index: Index,
        entry: &[u8],
    ) -> impl Future<Output = StoreResult<AppendOutcome>> + Send;
    /// Entries with `from <= index <= to`, ascending, at most `limit` of them.
    fn read_log(
        &self,
        from: Index,
        to: Index,
        limit: usize,
    ) -> impl Future<Output = StoreResult<Vec<(Index, Vec<u8>)>>> + Send;
    /// Highest index `>= from` present in the log, `None` if there is none.
    /// This is a linearizable read: every append acknowledged before it started is visible.
    ///
    /// Replicas call this every 250 ms and for every linearizable read, with
    /// `from` just above what they have applied, so its cost must depend on the
    /// entries at or above `from`, never on the length of the whole log.
    fn last_index(&self, from: Index) -> impl Future<Output = StoreResult<Option<Index>>> + Send;
    /// Every entry `>= from`, existing and future (see requirement 5).
    fn watch_log(&self, from: Index) -> BoxStream<'static, StoreResult<(Index, Vec<u8>)>>;
    /// Delete entries with index `< below`.
    fn delete_log_below(&self, below: Index) -> impl Future<Output = StoreResult<()>> + Send;

    /// Store a snapshot taken after applying `index`.
    fn put_snapshot(
        &self,
        index: Index,
        bytes: &[u8],
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Store module `bytes` under their sha256 `sha256` (hex) if absent
    /// (see requirement 11).
    fn put_module(
        &self,
        sha256: &str,
        bytes: &[u8],
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// The module with this sha256, if stored (see requirement 11).
    fn get_module(&self, sha256: &str)
    -> impl Future<Output = StoreResult<Option<Vec<u8>>>> + Send;
    /// Index of the newest complete snapshot.
    fn newest_snapshot_index(&self) -> impl Future<Output = StoreResult<Option<Index>>> + Send;
    /// The newest complete snapshot.
    fn newest_snapshot(&self)
    -> impl Future<Output = StoreResult<Option<(Index, Vec<u8>)>>> + Send;
    /// Delete snapshots with index `< below`.
    fn delete_snapshots_below(&self, below: Index) -> impl Future<Output = StoreResult<()>> + Send;

    /// Publish (create or overwrite) this replica's member record, bound to `lease`.
    fn publish_member(
        &self,
        lease: LeaseId,
        replica: &str,
        record: &MemberRecord,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// All live member records, by replica id.
    fn members(&self) -> impl Future<Output = StoreResult<Vec<(String, MemberRecord)>>> + Send;
}
