//! The store conformance suite: every correctness requirement of
//! `dorado_core::Store`, checked against both adapters.
//!
//! Each case is written once, as a generic `async fn` over [`TestStore`], and
//! instantiated by `conformance!` as one test per implementation
//! (`memory::<case>` and `etcd::<case>`), so a divergence between the
//! in-memory store the protocol is unit-tested on and the etcd store it runs
//! on shows up as one failing test with a precise name.
//!
//! Every etcd test starts its own etcd (`EtcdProcess`, killed on drop even if
//! the test panics), so tests run in parallel and never see each other's keys.
//! Waiting is always a bounded poll of a condition, never a bare sleep.

use std::future::Future;
use std::time::{Duration, Instant};

use dorado::store::{EtcdStore, EtcdStoreOptions, MemoryStore};
use dorado_core::{
    AppendOutcome, Index, LeaderRecord, Leadership, LeaseId, MemberRecord, Meta, Store, StoreError,
};
use dorado_testkit::etcd_process::{EtcdCluster, EtcdProcess, EtcdProcessOptions};
use futures::StreamExt;
use futures::stream::BoxStream;

/// Long enough never to expire during a test.
const LONG_TTL: Duration = Duration::from_secs(60);
/// Bound on waiting for anything that should happen.
const WAIT: Duration = Duration::from_secs(15);

/// What the cases need beyond the trait: raw access to fabricate or inspect
/// stored state, and a view of another group on the same store.
trait TestStore: Store + Clone {
    fn other_group(&self, group: &str) -> Self;
    fn put_raw(&self, relative_key: &str, value: &[u8]) -> impl Future<Output = ()> + Send;
    fn raw_keys(&self, relative_prefix: &str) -> impl Future<Output = Vec<String>> + Send;
}

impl TestStore for MemoryStore {
    fn other_group(&self, group: &str) -> Self {
        self.group("test", group).expect("valid group name")
    }
    async fn put_raw(&self, relative_key: &str, value: &[u8]) {
        MemoryStore::put_raw(self, relative_key, value).expect("raw put");
    }
    async fn raw_keys(&self, relative_prefix: &str) -> Vec<String> {
        MemoryStore::raw_keys(self, relative_prefix).expect("raw keys")
    }
}

impl TestStore for EtcdStore {
    fn other_group(&self, group: &str) -> Self {
        self.group("test", group).expect("valid group name")
    }
    async fn put_raw(&self, relative_key: &str, value: &[u8]) {
        EtcdStore::put_raw(self, relative_key, value)
            .await
            .expect("raw put");
    }
    async fn raw_keys(&self, relative_prefix: &str) -> Vec<String> {
        EtcdStore::raw_keys(self, relative_prefix)
            .await
            .expect("raw keys")
    }
}

fn memory_store() -> MemoryStore {
    MemoryStore::new_group("test", "conformance").expect("valid names")
}

fn etcd_options() -> EtcdProcessOptions {
    let shm = std::path::Path::new("/dev/shm");
    EtcdProcessOptions {
        // Fast elections make etcd's minimum lease TTL 1 s (1.5 election timeouts).
        heartbeat_interval: Duration::from_millis(50),
        election_timeout: Duration::from_millis(500),
        // No fsync cost: these tests check semantics, not durability.
        base_dir: shm.is_dir().then(|| shm.to_owned()),
        ..EtcdProcessOptions::default()
    }
}

fn store_options() -> EtcdStoreOptions {
    EtcdStoreOptions {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        // Tiny pages so every multi-key read crosses page boundaries.
        page_size: 3,
        ..EtcdStoreOptions::default()
    }
}

async fn etcd_store() -> (EtcdProcess, EtcdStore) {
    let etcd = EtcdProcess::start_with(etcd_options())
        .await
        .expect("start etcd");
    let store = EtcdStore::connect(&etcd.client_urls(), "test", "conformance", store_options())
        .await
        .expect("connect to etcd");
    (etcd, store)
}

/// One test per case per implementation.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::memory_store()).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test]
                async fn $case() {
                    // Kept alive for the whole case; killed on drop, also on panic.
                    let (_etcd, store) = super::etcd_store().await;
                    super::$case(store).await;
                }
            )*
        }
    };
}

conformance!(
    meta_is_write_once,
    corrupt_records_are_reported_with_their_key,
    campaign_is_exclusive_and_epochs_increase,
    revoking_the_lease_removes_the_leader,
    depose_deletes_exactly_that_epoch_and_fences_it,
    lease_expiry_removes_the_leader,
    keep_alive_keeps_the_leader,
    append_with_stale_epoch_is_fenced,
    append_to_occupied_index_returns_existing_bytes,
    append_without_leader_is_fenced,
    read_log_is_ordered_and_bounded,
    last_index_tracks_the_highest_entry,
    last_index_looks_only_at_or_above_from,
    watch_log_yields_existing_then_new_exactly_once,
    watch_log_never_yields_below_from,
    watch_log_ignores_deletions,
    watch_leader_reports_create_and_delete,
    large_snapshot_round_trips,
    modules_are_content_addressed_write_once_and_chunked,
    partial_snapshot_is_invisible,
    newest_snapshot_picks_highest_index,
    delete_log_below_deletes_exactly_the_range,
    delete_snapshots_below_deletes_exactly_the_range,
    members_vanish_with_their_lease,
    invalid_replica_name_is_rejected,
    concurrent_appends_to_one_index_have_one_winner,
    groups_are_isolated,
);

// ---------------------------------------------------------------- helpers

fn record(replica: &str) -> LeaderRecord {
    LeaderRecord {
        replica: replica.to_owned(),
        address: format!("{replica}.example:7070"),
    }
}

fn meta(sha: &str) -> Meta {
    Meta {
        module_sha256: sha.to_owned(),
        abi_version: 1,
        protocol: "dorado".to_owned(),
        session_expiry_entries: 1000,
    }
}

fn member(applied: Index) -> MemberRecord {
    MemberRecord {
        address: "10.0.0.1:7070".into(),
        applied_index: applied,
        hash: format!("{applied:064x}"),
    }
}

fn entry(i: Index) -> Vec<u8> {
    format!("entry-{i}").into_bytes()
}

/// Grant a long lease and win the election with it.
async fn lead<S: Store>(s: &S, replica: &str) -> (LeaseId, i64) {
    let lease = s.grant_lease(LONG_TTL).await.expect("grant lease");
    let epoch = s
        .campaign(lease, &record(replica))
        .await
        .expect("campaign")
        .expect("no other leader");
    (lease, epoch)
}

async fn append_all<S: Store>(s: &S, epoch: i64, indexes: impl IntoIterator<Item = Index>) {
    for i in indexes {
        assert_eq!(
            s.append(epoch, i, &entry(i)).await.expect("append"),
            AppendOutcome::Appended,
            "append {i}"
        );
    }
}

async fn log_indexes<S: Store>(s: &S) -> Vec<Index> {
    s.read_log(0, Index::MAX, usize::MAX)
        .await
        .expect("read log")
        .into_iter()
        .map(|(i, _)| i)
        .collect()
}

async fn next_within<T>(stream: &mut BoxStream<'static, T>, what: &str) -> T {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("{what}: stream ended"),
        Err(_) => panic!("{what}: nothing within {WAIT:?}"),
    }
}

async fn next_entry(
    stream: &mut BoxStream<'static, Result<(Index, Vec<u8>), StoreError>>,
) -> (Index, Vec<u8>) {
    next_within(stream, "watch_log")
        .await
        .expect("watch_log item")
}

/// Nothing more arrives for a while (bounded; used to check "exactly once").
async fn assert_quiet<T: std::fmt::Debug>(stream: &mut BoxStream<'static, T>) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
        panic!("unexpected extra item: {item:?}");
    }
}

/// Poll `check` until it returns true, at most [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// ------------------------------------------------------------------ cases

async fn meta_is_write_once<S: TestStore>(s: S) {
    assert_eq!(s.meta().await.unwrap(), None);
    let first = meta("aaaa");
    assert_eq!(s.init_meta(&first).await.unwrap(), first);
    assert_eq!(s.init_meta(&meta("bbbb")).await.unwrap(), first);
    assert_eq!(s.init_meta(&first).await.unwrap(), first);
    assert_eq!(s.meta().await.unwrap(), Some(first));
}

async fn corrupt_records_are_reported_with_their_key<S: TestStore>(s: S) {
    s.put_raw("meta", b"{not json").await;
    s.put_raw("leader", b"\xff\xfe").await;
    s.put_raw("members/r1", b"[]").await;
    let corrupt_key = |r: Result<_, StoreError>| match r {
        Err(StoreError::Corrupt { key, .. }) => key,
        other => panic!("expected Corrupt, got {other:?}"),
    };
    assert_eq!(corrupt_key(s.init_meta(&meta("a")).await.map(drop)), "meta");
    assert_eq!(corrupt_key(s.meta().await.map(drop)), "meta");
    assert_eq!(corrupt_key(s.leader().await.map(drop)), "leader");
    assert_eq!(corrupt_key(s.members().await.map(drop)), "members/r1");
    let mut watch = s.watch_leader();
    assert_eq!(
        corrupt_key(next_within(&mut watch, "watch_leader").await.map(drop)),
        "leader"
    );
    assert!(
        tokio::time::timeout(WAIT, watch.next())
            .await
            .expect("watch ends after an error")
            .is_none()
    );
}

async fn depose_deletes_exactly_that_epoch_and_fences_it<S: TestStore>(s: S) {
    // Nothing to depose: no leader key.
    assert!(!s.depose(1).await.unwrap());
    let (lease, epoch) = lead(&s, "r1").await;
    s.publish_member(lease, "r1", &member(1)).await.unwrap();
    append_all(&s, epoch, [1]).await;
    // Another epoch (older, newer) leaves the key alone.
    assert!(!s.depose(epoch - 1).await.unwrap());
    assert!(!s.depose(epoch + 1).await.unwrap());
    assert_eq!(s.leader().await.unwrap().map(|l| l.epoch), Some(epoch));
    assert!(s.depose(epoch).await.unwrap(), "the leader's own epoch");
    assert_eq!(s.leader().await.unwrap(), None);
    // Twice is a no-op.
    assert!(!s.depose(epoch).await.unwrap());
    // The deposed leader's appends fail the fence, its lease and member record live on.
    assert_eq!(
        s.append(epoch, 2, &entry(2)).await.unwrap(),
        AppendOutcome::Fenced
    );
    assert_eq!(
        s.members()
            .await
            .unwrap()
            .into_iter()
            .map(|(r, _)| r)
            .collect::<Vec<_>>(),
        vec!["r1".to_owned()]
    );
    s.keep_alive(lease).await.unwrap();
    // A new leader gets a larger epoch; deposing the old one again does nothing.
    let (_, next) = lead(&s, "r2").await;
    assert!(next > epoch);
    assert!(!s.depose(epoch).await.unwrap());
    assert_eq!(s.leader().await.unwrap().map(|l| l.epoch), Some(next));
    append_all(&s, next, [2]).await;
}

async fn campaign_is_exclusive_and_epochs_increase<S: TestStore>(s: S) {
    assert_eq!(s.leader().await.unwrap(), None);
    let l1 = s.grant_lease(LONG_TTL).await.unwrap();
    let l2 = s.grant_lease(LONG_TTL).await.unwrap();
    let e1 = s
        .campaign(l1, &record("r1"))
        .await
        .unwrap()
        .expect("r1 wins");
    assert!(e1 > 0);
    assert_eq!(s.campaign(l2, &record("r2")).await.unwrap(), None);
    // Not even the holder can create the key twice.
    assert_eq!(s.campaign(l1, &record("r1")).await.unwrap(), None);
    assert_eq!(
        s.leader().await.unwrap(),
        Some(Leadership {
            leader: record("r1"),
            epoch: e1
        })
    );
    let (mut last, mut holder) = (e1, l1);
    for term in 0..3 {
        s.revoke_lease(holder).await.unwrap();
        assert_eq!(s.leader().await.unwrap(), None);
        // Unrelated writes between terms do not disturb the order.
        s.init_meta(&meta("x")).await.unwrap();
        let lease = s.grant_lease(LONG_TTL).await.unwrap();
        let name = format!("t{term}");
        let epoch = s
            .campaign(lease, &record(&name))
            .await
            .unwrap()
            .expect("wins");
        assert!(epoch > last, "epoch {epoch} after {last}");
        let current = s.leader().await.unwrap().expect("a leader");
        assert_eq!(
            (current.leader.replica.as_str(), current.epoch),
            (name.as_str(), epoch)
        );
        (last, holder) = (epoch, lease);
    }
    s.revoke_lease(holder).await.unwrap();
    // A revoked lease cannot win an election.
    let err = s.campaign(l1, &record("r1")).await;
    assert!(
        matches!(err, Err(StoreError::LeaseExpired(_))),
        "campaign with a revoked lease: {err:?}"
    );
    assert_eq!(s.leader().await.unwrap(), None);
}

async fn revoking_the_lease_removes_the_leader<S: TestStore>(s: S) {
    let (lease, epoch) = lead(&s, "r1").await;
    assert_eq!(s.leader().await.unwrap().unwrap().epoch, epoch);
    s.revoke_lease(lease).await.unwrap();
    assert_eq!(s.leader().await.unwrap(), None);
    // Revoking again, or an unknown lease, is not an error.
    s.revoke_lease(lease).await.unwrap();
    s.revoke_lease(LeaseId(0x7777_7777)).await.unwrap();
    let err = s.keep_alive(lease).await;
    assert!(matches!(err, Err(StoreError::LeaseExpired(_))), "{err:?}");
}

async fn lease_expiry_removes_the_leader<S: TestStore>(s: S) {
    let lease = s.grant_lease(Duration::from_secs(1)).await.unwrap();
    s.campaign(lease, &record("r1"))
        .await
        .unwrap()
        .expect("wins");
    let started = Instant::now();
    eventually("leader key removed by lease expiry", || async {
        s.leader().await.unwrap().is_none()
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "expired too early"
    );
    let err = s.keep_alive(lease).await;
    assert!(matches!(err, Err(StoreError::LeaseExpired(_))), "{err:?}");
    let err = s.campaign(lease, &record("r1")).await;
    assert!(matches!(err, Err(StoreError::LeaseExpired(_))), "{err:?}");
}

async fn keep_alive_keeps_the_leader<S: TestStore>(s: S) {
    let ttl = Duration::from_secs(1);
    let lease = s.grant_lease(ttl).await.unwrap();
    let epoch = s
        .campaign(lease, &record("r1"))
        .await
        .unwrap()
        .expect("wins");
    let until = Instant::now() + 3 * ttl;
    while Instant::now() < until {
        s.keep_alive(lease).await.expect("lease alive");
        assert_eq!(s.leader().await.unwrap().map(|l| l.epoch), Some(epoch));
        tokio::time::sleep(ttl / 4).await;
    }
    s.revoke_lease(lease).await.unwrap();
}

async fn append_with_stale_epoch_is_fenced<S: TestStore>(s: S) {
    let (old_lease, old_epoch) = lead(&s, "old").await;
    append_all(&s, old_epoch, [1]).await;
    s.revoke_lease(old_lease).await.unwrap();
    let (_lease, epoch) = lead(&s, "new").await;
    assert_ne!(epoch, old_epoch);
    assert_eq!(
        s.append(old_epoch, 2, b"stale").await.unwrap(),
        AppendOutcome::Fenced
    );
    // Fenced takes precedence over Occupied.
    assert_eq!(
        s.append(old_epoch, 1, b"stale").await.unwrap(),
        AppendOutcome::Fenced
    );
    assert_eq!(log_indexes(&s).await, vec![1]);
    assert_eq!(s.last_index(0).await.unwrap(), Some(1));
    assert_eq!(
        s.append(epoch, 2, &entry(2)).await.unwrap(),
        AppendOutcome::Appended
    );
    // A made-up epoch from the future is fenced too.
    assert_eq!(
        s.append(epoch + 1000, 3, b"x").await.unwrap(),
        AppendOutcome::Fenced
    );
    assert_eq!(log_indexes(&s).await, vec![1, 2]);
}

async fn append_to_occupied_index_returns_existing_bytes<S: TestStore>(s: S) {
    let (_lease, epoch) = lead(&s, "r1").await;
    assert_eq!(
        s.append(epoch, 1, b"first").await.unwrap(),
        AppendOutcome::Appended
    );
    assert_eq!(
        s.append(epoch, 1, b"second").await.unwrap(),
        AppendOutcome::Occupied(b"first".to_vec())
    );
    assert_eq!(
        s.read_log(1, 1, 10).await.unwrap(),
        vec![(1, b"first".to_vec())]
    );
}

async fn append_without_leader_is_fenced<S: TestStore>(s: S) {
    for epoch in [0, 1, 2, 100] {
        assert_eq!(
            s.append(epoch, 1, b"x").await.unwrap(),
            AppendOutcome::Fenced,
            "epoch {epoch}"
        );
    }
    assert_eq!(s.last_index(0).await.unwrap(), None);
    assert!(s.raw_keys("log/").await.is_empty());
}

async fn read_log_is_ordered_and_bounded<S: TestStore>(s: S) {
    let (_lease, epoch) = lead(&s, "r1").await;
    // Written out of order; includes a gap at 8 and a digit-count change.
    append_all(&s, epoch, [5, 3, 1, 2, 4, 9, 10, 7, 6, 11]).await;
    let all = s.read_log(1, 100, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6, 7, 9, 10, 11]
    );
    assert!(all.iter().all(|(i, bytes)| *bytes == entry(*i)));
    let ids = |v: Vec<(Index, Vec<u8>)>| v.into_iter().map(|(i, _)| i).collect::<Vec<_>>();
    assert_eq!(ids(s.read_log(3, 5, 100).await.unwrap()), vec![3, 4, 5]);
    assert_eq!(ids(s.read_log(3, 100, 2).await.unwrap()), vec![3, 4]);
    assert_eq!(ids(s.read_log(7, 10, 100).await.unwrap()), vec![7, 9, 10]);
    assert_eq!(
        ids(s.read_log(2, 9, 7).await.unwrap()),
        vec![2, 3, 4, 5, 6, 7, 9]
    );
    assert_eq!(
        ids(s.read_log(8, 8, 100).await.unwrap()),
        Vec::<Index>::new()
    );
    assert_eq!(
        ids(s.read_log(5, 3, 100).await.unwrap()),
        Vec::<Index>::new()
    );
    assert_eq!(
        ids(s.read_log(1, 100, 0).await.unwrap()),
        Vec::<Index>::new()
    );
    assert_eq!(
        ids(s.read_log(12, Index::MAX, 100).await.unwrap()),
        Vec::<Index>::new()
    );
    assert_eq!(ids(s.read_log(0, Index::MAX, 1).await.unwrap()), vec![1]);
    assert_eq!(
        ids(s.read_log(11, Index::MAX, usize::MAX).await.unwrap()),
        vec![11]
    );
}

async fn last_index_tracks_the_highest_entry<S: TestStore>(s: S) {
    assert_eq!(s.last_index(0).await.unwrap(), None);
    let (_lease, epoch) = lead(&s, "r1").await;
    append_all(&s, epoch, [1]).await;
    assert_eq!(s.last_index(0).await.unwrap(), Some(1));
    append_all(&s, epoch, [2, 3, 10, 9]).await;
    assert_eq!(s.last_index(0).await.unwrap(), Some(10));
    // Keys outside log/ do not count.
    s.put_snapshot(50, b"snap").await.unwrap();
    assert_eq!(s.last_index(0).await.unwrap(), Some(10));
    s.delete_log_below(11).await.unwrap();
    assert_eq!(s.last_index(0).await.unwrap(), None);
}

async fn last_index_looks_only_at_or_above_from<S: TestStore>(s: S) {
    let (_lease, epoch) = lead(&s, "r1").await;
    // Gaps and a sparse tail: an adapter that estimates the highest index
    // from how many entries there are must not stop short of it.
    append_all(&s, epoch, [1, 2, 3, 5, 9, 10, 40, 41, 1000]).await;
    for (from, want) in [
        (0, Some(1000)),
        (1, Some(1000)),
        (4, Some(1000)),
        (41, Some(1000)),
        (42, Some(1000)),
        (1000, Some(1000)),
        (1001, None),
        (Index::MAX, None),
    ] {
        assert_eq!(
            s.last_index(from).await.unwrap(),
            want,
            "last_index({from})"
        );
    }
    s.delete_log_below(1000).await.unwrap();
    assert_eq!(s.last_index(1).await.unwrap(), Some(1000));
    append_all(&s, epoch, [1001, 1002]).await;
    assert_eq!(s.last_index(1001).await.unwrap(), Some(1002));
    assert_eq!(s.last_index(1003).await.unwrap(), None);
}

async fn watch_log_yields_existing_then_new_exactly_once<S: TestStore>(s: S) {
    let (_lease, epoch) = lead(&s, "r1").await;
    append_all(&s, epoch, 1..=7).await;
    let mut watch = s.watch_log(3);
    for i in 3..=7 {
        assert_eq!(next_entry(&mut watch).await, (i, entry(i)));
    }
    append_all(&s, epoch, [8, 10, 9]).await;
    // Later entries arrive in commit order.
    for i in [8, 10, 9] {
        assert_eq!(next_entry(&mut watch).await, (i, entry(i)));
    }
    assert_quiet(&mut watch).await;
    // A second watch from the middle sees the same history once.
    let mut again = s.watch_log(9);
    assert_eq!(next_entry(&mut again).await.0, 9);
    assert_eq!(next_entry(&mut again).await.0, 10);
    append_all(&s, epoch, [11]).await;
    assert_eq!(next_entry(&mut again).await.0, 11);
    assert_eq!(next_entry(&mut watch).await.0, 11);
    assert_quiet(&mut again).await;
    assert_quiet(&mut watch).await;
}

async fn watch_log_never_yields_below_from<S: TestStore>(s: S) {
    let (_lease, epoch) = lead(&s, "r1").await;
    append_all(&s, epoch, [1, 2]).await;
    let mut watch = s.watch_log(5);
    append_all(&s, epoch, [3, 4, 6, 5]).await;
    // Whether these count as existing (index order) or new (commit order)
    // depends on when the watch started; either way each arrives once.
    let mut got = vec![
        next_entry(&mut watch).await.0,
        next_entry(&mut watch).await.0,
    ];
    got.sort_unstable();
    assert_eq!(got, vec![5, 6]);
    assert_quiet(&mut watch).await;
    append_all(&s, epoch, [8, 7]).await;
    assert_eq!(next_entry(&mut watch).await.0, 8);
    assert_eq!(next_entry(&mut watch).await.0, 7);
    assert_quiet(&mut watch).await;
    // A watch on an empty log starts yielding at the first write.
    let other = s.other_group("empty");
    let (_l, e) = lead(&other, "r1").await;
    let mut watch = other.watch_log(1);
    assert_quiet(&mut watch).await;
    append_all(&other, e, [1]).await;
    assert_eq!(next_entry(&mut watch).await.0, 1);
}

async fn watch_log_ignores_deletions<S: TestStore>(s: S) {
    let (_lease, epoch) = lead(&s, "r1").await;
    append_all(&s, epoch, 1..=3).await;
    let mut watch = s.watch_log(1);
    for i in 1..=3 {
        assert_eq!(next_entry(&mut watch).await.0, i);
    }
    s.delete_log_below(3).await.unwrap();
    append_all(&s, epoch, [4]).await;
    assert_eq!(next_entry(&mut watch).await, (4, entry(4)));
    assert_quiet(&mut watch).await;
}

async fn watch_leader_reports_create_and_delete<S: TestStore>(s: S) {
    let mut watch = s.watch_leader();
    assert_eq!(next_within(&mut watch, "initial").await.unwrap(), None);
    let (lease, epoch) = lead(&s, "r1").await;
    assert_eq!(
        next_within(&mut watch, "created").await.unwrap(),
        Some(Leadership {
            leader: record("r1"),
            epoch
        })
    );
    s.revoke_lease(lease).await.unwrap();
    assert_eq!(next_within(&mut watch, "deleted").await.unwrap(), None);
    let short = s.grant_lease(Duration::from_secs(1)).await.unwrap();
    let e2 = s.campaign(short, &record("r2")).await.unwrap().unwrap();
    assert!(e2 > epoch);
    assert_eq!(
        next_within(&mut watch, "second term")
            .await
            .unwrap()
            .map(|l| l.epoch),
        Some(e2)
    );
    // Expiry is reported like a revoke.
    assert_eq!(next_within(&mut watch, "expired").await.unwrap(), None);
    // A watch started while someone leads yields that leadership first.
    let (_l3, e3) = lead(&s, "r3").await;
    let mut late = s.watch_leader();
    assert_eq!(
        next_within(&mut late, "initial")
            .await
            .unwrap()
            .map(|l| l.epoch),
        Some(e3)
    );
    assert_eq!(
        next_within(&mut watch, "third term")
            .await
            .unwrap()
            .map(|l| l.epoch),
        Some(e3)
    );
    assert_quiet(&mut late).await;
}

async fn large_snapshot_round_trips<S: TestStore>(s: S) {
    assert_eq!(s.newest_snapshot().await.unwrap(), None);
    assert_eq!(s.newest_snapshot_index().await.unwrap(), None);
    let bytes = pseudo_random_bytes(3 * 1024 * 1024 + 12_345, 42);
    s.put_snapshot(10, &bytes).await.unwrap();
    assert_eq!(s.newest_snapshot_index().await.unwrap(), Some(10));
    let (index, read) = s.newest_snapshot().await.unwrap().expect("a snapshot");
    assert_eq!(index, 10);
    assert!(read == bytes, "snapshot bytes differ");
    // It really was chunked: no single value near etcd's request limit.
    let keys = s.raw_keys("snap/").await;
    assert!(keys.len() >= 8, "expected chunks, got {keys:?}");
    // Storing the same index again is harmless; empty snapshots work too.
    s.put_snapshot(10, &bytes).await.unwrap();
    assert_eq!(s.newest_snapshot().await.unwrap().map(|(i, _)| i), Some(10));
    s.put_snapshot(11, b"").await.unwrap();
    assert_eq!(s.newest_snapshot().await.unwrap(), Some((11, Vec::new())));
}

async fn modules_are_content_addressed_write_once_and_chunked<S: TestStore>(s: S) {
    use sha2::{Digest, Sha256};
    let bytes = pseudo_random_bytes(2 * 1024 * 1024 + 77, 7);
    let sha = hex::encode(Sha256::digest(&bytes));
    assert_eq!(s.get_module(&sha).await.unwrap(), None);
    // Bytes under someone else's hash are refused, and nothing is stored.
    let wrong = "00".repeat(32);
    assert!(matches!(
        s.put_module(&wrong, &bytes).await,
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(s.get_module(&wrong).await.unwrap(), None);
    s.put_module(&sha, &bytes).await.unwrap();
    let read = s.get_module(&sha).await.unwrap().expect("the module");
    assert!(read == bytes, "module bytes differ");
    let keys = s.raw_keys(&format!("modules/{sha}/")).await;
    assert!(
        keys.len() >= 3,
        "expected chunks and a manifest, got {keys:?}"
    );
    // Writing it again is a no-op; snapshot and log deletions never touch it.
    s.put_module(&sha, &bytes).await.unwrap();
    assert_eq!(s.raw_keys(&format!("modules/{sha}/")).await, keys);
    s.delete_snapshots_below(u64::MAX).await.unwrap();
    s.delete_log_below(u64::MAX).await.unwrap();
    assert!(s.get_module(&sha).await.unwrap() == Some(bytes));
    // A module whose chunks were tampered with is reported, never returned.
    let chunk = keys
        .iter()
        .find(|k| k.contains("/chunks-"))
        .expect("a chunk key");
    s.put_raw(chunk, &[0; 16]).await;
    assert!(matches!(
        s.get_module(&sha).await,
        Err(StoreError::Corrupt { .. })
    ));
}

async fn partial_snapshot_is_invisible<S: TestStore>(s: S) {
    s.put_snapshot(5, b"complete").await.unwrap();
    // A writer that died after two chunks of snapshot 9.
    let dir = "snap/00000000000000000009/chunks-deadbeefdeadbeef";
    s.put_raw(&format!("{dir}/00000000"), &[1; 1024]).await;
    s.put_raw(&format!("{dir}/00000001"), &[2; 1024]).await;
    assert_eq!(s.newest_snapshot_index().await.unwrap(), Some(5));
    assert_eq!(
        s.newest_snapshot().await.unwrap(),
        Some((5, b"complete".to_vec()))
    );
    // A manifest whose chunks do not add up is reported, never returned.
    let manifest = serde_json::json!({
        "index": 9, "writer": "deadbeefdeadbeef", "chunks": 3,
        "total_len": 3072, "sha256": "00",
    });
    s.put_raw(
        "snap/00000000000000000009/manifest",
        manifest.to_string().as_bytes(),
    )
    .await;
    let err = s.newest_snapshot().await;
    assert!(
        matches!(&err, Err(StoreError::Corrupt { key, .. }) if key == "snap/00000000000000000009/manifest"),
        "{err:?}"
    );
    // Once a complete snapshot supersedes it, all is well again.
    s.put_snapshot(12, b"newer").await.unwrap();
    assert_eq!(
        s.newest_snapshot().await.unwrap(),
        Some((12, b"newer".to_vec()))
    );
}

async fn newest_snapshot_picks_highest_index<S: TestStore>(s: S) {
    for index in [3, 9, 6, 10_000_000_000, 100] {
        s.put_snapshot(index, format!("state@{index}").as_bytes())
            .await
            .unwrap();
    }
    assert_eq!(
        s.newest_snapshot_index().await.unwrap(),
        Some(10_000_000_000)
    );
    assert_eq!(
        s.newest_snapshot().await.unwrap(),
        Some((10_000_000_000, b"state@10000000000".to_vec()))
    );
    // Keys under snap/ that are no snapshot's are skipped, not fatal.
    s.put_raw("snap/not-a-snapshot", b"x").await;
    s.put_raw("snap/", b"x").await;
    s.put_snapshot(Index::MAX, b"last").await.unwrap();
    assert_eq!(s.newest_snapshot_index().await.unwrap(), Some(Index::MAX));
    assert_eq!(
        s.newest_snapshot().await.unwrap(),
        Some((Index::MAX, b"last".to_vec()))
    );
}

async fn delete_log_below_deletes_exactly_the_range<S: TestStore>(s: S) {
    let (_lease, epoch) = lead(&s, "r1").await;
    append_all(&s, epoch, 1..=12).await;
    s.delete_log_below(0).await.unwrap();
    s.delete_log_below(1).await.unwrap();
    assert_eq!(log_indexes(&s).await, (1..=12).collect::<Vec<_>>());
    s.delete_log_below(4).await.unwrap();
    assert_eq!(log_indexes(&s).await, (4..=12).collect::<Vec<_>>());
    s.delete_log_below(10).await.unwrap();
    assert_eq!(log_indexes(&s).await, vec![10, 11, 12]);
    // Other keys are untouched.
    assert!(s.leader().await.unwrap().is_some());
    s.delete_log_below(Index::MAX).await.unwrap();
    assert_eq!(log_indexes(&s).await, Vec::<Index>::new());
}

async fn delete_snapshots_below_deletes_exactly_the_range<S: TestStore>(s: S) {
    for index in [2, 4, 6, 10] {
        s.put_snapshot(index, &vec![index as u8; 700 * 1024])
            .await
            .unwrap();
    }
    // Leftover chunks of a dead writer at 3 go with their index.
    s.put_raw(
        "snap/00000000000000000003/chunks-0123456789abcdef/00000000",
        b"x",
    )
    .await;
    let snapshot_indexes = |keys: Vec<String>| {
        let mut v: Vec<String> = keys
            .into_iter()
            .map(|k| k.split('/').nth(1).unwrap().to_owned())
            .collect();
        v.dedup();
        v.into_iter()
            .map(|d| d.parse::<Index>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        snapshot_indexes(s.raw_keys("snap/").await),
        vec![2, 3, 4, 6, 10]
    );
    s.delete_snapshots_below(4).await.unwrap();
    assert_eq!(snapshot_indexes(s.raw_keys("snap/").await), vec![4, 6, 10]);
    s.delete_snapshots_below(10).await.unwrap();
    assert_eq!(snapshot_indexes(s.raw_keys("snap/").await), vec![10]);
    assert_eq!(
        s.newest_snapshot().await.unwrap(),
        Some((10, vec![10u8; 700 * 1024]))
    );
}

async fn members_vanish_with_their_lease<S: TestStore>(s: S) {
    let la = s.grant_lease(LONG_TTL).await.unwrap();
    let lb = s.grant_lease(Duration::from_secs(1)).await.unwrap();
    s.publish_member(la, "r-a", &member(1)).await.unwrap();
    s.publish_member(lb, "r-b", &member(2)).await.unwrap();
    s.publish_member(la, "r-a", &member(3)).await.unwrap();
    let mut all = s.members().await.unwrap();
    all.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        all,
        vec![("r-a".to_owned(), member(3)), ("r-b".to_owned(), member(2))]
    );
    // r-b's lease expires, r-a's is revoked.
    eventually("r-b expires", || async {
        s.members().await.unwrap().len() == 1
    })
    .await;
    assert_eq!(s.members().await.unwrap()[0].0, "r-a");
    s.revoke_lease(la).await.unwrap();
    assert_eq!(s.members().await.unwrap(), Vec::new());
    let err = s.publish_member(la, "r-a", &member(4)).await;
    assert!(matches!(err, Err(StoreError::LeaseExpired(_))), "{err:?}");
}

async fn invalid_replica_name_is_rejected<S: TestStore>(s: S) {
    let lease = s.grant_lease(LONG_TTL).await.unwrap();
    let record = MemberRecord {
        address: "a:1".into(),
        applied_index: 0,
        hash: String::new(),
    };
    for bad in ["", "a/b", "../x"] {
        let err = s.publish_member(lease, bad, &record).await;
        assert!(
            matches!(&err, Err(StoreError::InvalidArgument(m)) if m.contains("replica")),
            "{bad:?}: {err:?}"
        );
    }
    assert_eq!(s.members().await.unwrap(), Vec::new());
}

async fn concurrent_appends_to_one_index_have_one_winner<S: TestStore>(s: S) {
    let (_lease, epoch) = lead(&s, "r1").await;
    for index in 1..=3u64 {
        let payloads: Vec<Vec<u8>> = (0..8)
            .map(|n| format!("{index}-{n}").into_bytes())
            .collect();
        let outcomes =
            futures::future::join_all(payloads.iter().map(|p| s.append(epoch, index, p))).await;
        let outcomes: Vec<AppendOutcome> = outcomes.into_iter().map(Result::unwrap).collect();
        let winners: Vec<usize> = outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| **o == AppendOutcome::Appended)
            .map(|(n, _)| n)
            .collect();
        assert_eq!(winners.len(), 1, "{outcomes:?}");
        let winner = &payloads[winners[0]];
        for outcome in &outcomes {
            assert!(
                *outcome == AppendOutcome::Appended
                    || *outcome == AppendOutcome::Occupied(winner.clone()),
                "{outcome:?}"
            );
        }
        assert_eq!(
            s.read_log(index, index, 10).await.unwrap(),
            vec![(index, winner.clone())]
        );
    }
}

async fn groups_are_isolated<S: TestStore>(s: S) {
    let a = s.other_group("a");
    let b = s.other_group("b");
    a.init_meta(&meta("aaaa")).await.unwrap();
    assert_eq!(b.init_meta(&meta("bbbb")).await.unwrap(), meta("bbbb"));
    let (_la, ea) = lead(&a, "ra").await;
    assert_eq!(b.leader().await.unwrap(), None);
    let mut b_watch = b.watch_log(1);
    append_all(&a, ea, 1..=3).await;
    a.put_snapshot(3, b"a-state").await.unwrap();
    assert_eq!(b.last_index(0).await.unwrap(), None);
    assert_eq!(b.newest_snapshot().await.unwrap(), None);
    // b's own leader cannot write with a's epoch, and vice versa.
    assert_eq!(b.append(ea, 1, b"x").await.unwrap(), AppendOutcome::Fenced);
    let (_lb, eb) = lead(&b, "rb").await;
    assert_eq!(a.append(eb, 4, b"x").await.unwrap(), AppendOutcome::Fenced);
    append_all(&b, eb, [1]).await;
    assert_eq!(next_entry(&mut b_watch).await, (1, entry(1)));
    assert_quiet(&mut b_watch).await;
    b.delete_log_below(100).await.unwrap();
    b.delete_snapshots_below(100).await.unwrap();
    assert_eq!(log_indexes(&a).await, vec![1, 2, 3]);
    assert_eq!(a.newest_snapshot_index().await.unwrap(), Some(3));
}

// -------------------------------------------------------------- etcd only

mod etcd_only {
    use super::*;

    /// A port nothing listens on.
    fn dead_endpoint() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        format!("http://127.0.0.1:{port}")
    }

    fn quick_options() -> EtcdStoreOptions {
        EtcdStoreOptions {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            ..EtcdStoreOptions::default()
        }
    }

    #[tokio::test]
    async fn unreachable_etcd_is_unavailable_within_the_timeout() {
        let endpoint = dead_endpoint();
        let started = Instant::now();
        let err = EtcdStore::connect(
            std::slice::from_ref(&endpoint),
            "test",
            "g",
            quick_options(),
        )
        .await
        .expect_err("nothing listens there");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        match err {
            StoreError::Unavailable(message) => {
                assert!(message.contains(&endpoint), "{message}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_names_and_endpoints_are_rejected() {
        for (ns, group) in [("test", "a/b"), ("", "g"), ("x/y", "g"), ("test", "")] {
            let err = EtcdStore::connect(&[dead_endpoint()], ns, group, quick_options()).await;
            assert!(
                matches!(err, Err(StoreError::InvalidArgument(_))),
                "{ns:?}/{group:?}: {err:?}"
            );
        }
        let err = EtcdStore::connect(&[], "test", "g", quick_options()).await;
        assert!(
            matches!(err, Err(StoreError::InvalidArgument(_))),
            "{err:?}"
        );
        assert!(matches!(
            MemoryStore::new_group("test", "a/b"),
            Err(StoreError::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn etcd_stopping_and_restarting_mid_run() {
        let mut etcd = EtcdProcess::start_with(etcd_options()).await.unwrap();
        let options = EtcdStoreOptions {
            request_timeout: Duration::from_secs(2),
            ..store_options()
        };
        let s = EtcdStore::connect(&etcd.client_urls(), "test", "restart", options)
            .await
            .unwrap();
        let (_lease, epoch) = lead(&s, "r1").await;
        append_all(&s, epoch, [1]).await;
        let mut watch = s.watch_log(1);
        assert_eq!(next_entry(&mut watch).await.0, 1);

        etcd.kill().unwrap();
        let started = Instant::now();
        let err = s.append(epoch, 2, &entry(2)).await;
        assert!(matches!(err, Err(StoreError::Unavailable(_))), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // The watch reports the loss once, then ends.
        let item = next_within(&mut watch, "watch after kill").await;
        assert!(matches!(item, Err(StoreError::Unavailable(_))), "{item:?}");
        assert!(
            tokio::time::timeout(WAIT, watch.next())
                .await
                .unwrap()
                .is_none()
        );

        etcd.restart().await.unwrap();
        eventually("store serves again after restart", || async {
            s.last_index(0).await.is_ok()
        })
        .await;
        // Acknowledged data survived; the leader (lease TTL 60 s) too.
        assert_eq!(s.read_log(1, 1, 1).await.unwrap(), vec![(1, entry(1))]);
        let mut watch = s.watch_log(1);
        assert_eq!(next_entry(&mut watch).await.0, 1);
        let outcome = s.append(epoch, 2, &entry(2)).await.unwrap();
        assert_eq!(outcome, AppendOutcome::Appended);
        assert_eq!(next_entry(&mut watch).await.0, 2);
    }

    #[tokio::test]
    async fn stores_of_different_groups_do_not_see_each_other() {
        let etcd = EtcdProcess::start_with(etcd_options()).await.unwrap();
        let urls = etcd.client_urls();
        let a = EtcdStore::connect(&urls, "ns", "alpha", store_options())
            .await
            .unwrap();
        let b = EtcdStore::connect(&urls, "ns", "beta", store_options())
            .await
            .unwrap();
        // "alpha" is a prefix of "alpha2": the trailing '/' keeps them apart.
        let a2 = EtcdStore::connect(&urls, "ns", "alpha2", store_options())
            .await
            .unwrap();
        let mut b_leader = b.watch_leader();
        assert_eq!(next_within(&mut b_leader, "initial").await.unwrap(), None);
        let (_la, ea) = lead(&a, "ra").await;
        append_all(&a, ea, 1..=4).await;
        a.put_snapshot(4, b"alpha").await.unwrap();
        let lease = a.grant_lease(LONG_TTL).await.unwrap();
        a.publish_member(
            lease,
            "ra",
            &MemberRecord {
                address: "a:1".into(),
                applied_index: 4,
                hash: "h".into(),
            },
        )
        .await
        .unwrap();
        for other in [&b, &a2] {
            assert_eq!(other.leader().await.unwrap(), None);
            assert_eq!(other.last_index(0).await.unwrap(), None);
            assert_eq!(other.read_log(0, Index::MAX, 100).await.unwrap(), vec![]);
            assert_eq!(other.newest_snapshot().await.unwrap(), None);
            assert_eq!(other.members().await.unwrap(), vec![]);
            assert!(other.raw_keys("").await.unwrap().is_empty());
        }
        assert_quiet(&mut b_leader).await;
        a2.delete_log_below(Index::MAX).await.unwrap();
        assert_eq!(a.last_index(0).await.unwrap(), Some(4));
        assert_eq!(a.members().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn full_backend_is_no_space() {
        let etcd = EtcdProcess::start_with(EtcdProcessOptions {
            quota_backend_bytes: Some(2 * 1024 * 1024),
            ..etcd_options()
        })
        .await
        .unwrap();
        let s = EtcdStore::connect(&etcd.client_urls(), "test", "full", store_options())
            .await
            .unwrap();
        let (_lease, epoch) = lead(&s, "r1").await;
        let big = vec![7u8; 256 * 1024];
        let mut outcome = None;
        for index in 1..=64 {
            match s.append(epoch, index, &big).await {
                Ok(AppendOutcome::Appended) => {}
                other => {
                    outcome = Some(other);
                    break;
                }
            }
        }
        match outcome {
            Some(Err(StoreError::NoSpace(message))) => {
                assert!(message.contains("space"), "{message}")
            }
            other => panic!("expected NoSpace before 16 MiB, got {other:?}"),
        }
        // Reads still work; writes of any kind keep failing the same way.
        assert!(s.last_index(0).await.unwrap().is_some());
        let err = s.put_snapshot(1, b"s").await;
        assert!(matches!(err, Err(StoreError::NoSpace(_))), "{err:?}");
    }

    #[tokio::test]
    async fn compaction_under_a_watch_is_compacted() {
        let etcd = EtcdProcess::start_with(etcd_options()).await.unwrap();
        // Page size 3: the watch reads existing entries in pages at one revision.
        let s = EtcdStore::connect(&etcd.client_urls(), "test", "compact", store_options())
            .await
            .unwrap();
        let (_lease, epoch) = lead(&s, "r1").await;
        append_all(&s, epoch, 1..=7).await;
        let mut watch = s.watch_log(1);
        assert_eq!(next_entry(&mut watch).await.0, 1);
        append_all(&s, epoch, [8]).await;
        let mut client = s.client().clone();
        let revision = client
            .get("x", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        client.compact(revision, None).await.unwrap();
        assert_eq!(next_entry(&mut watch).await.0, 2);
        assert_eq!(next_entry(&mut watch).await.0, 3);
        let item = next_within(&mut watch, "after compaction").await;
        assert!(
            matches!(item, Err(StoreError::Compacted(r)) if r > 0),
            "{item:?}"
        );
        assert!(watch.next().await.is_none());
        // Re-subscribing from what we have works.
        let mut again = s.watch_log(4);
        for i in 4..=8 {
            assert_eq!(next_entry(&mut again).await.0, i);
        }
    }

    #[tokio::test]
    async fn store_on_a_three_member_cluster_survives_a_member_loss() {
        let mut cluster = EtcdCluster::start_with(3, etcd_options()).await.unwrap();
        assert_eq!(cluster.len(), 3);
        let urls = cluster.client_urls();
        assert_eq!(urls.len(), 3);
        let s = EtcdStore::connect(&urls, "test", "cluster", store_options())
            .await
            .unwrap();
        let (_lease, epoch) = lead(&s, "r1").await;
        append_all(&s, epoch, [1]).await;

        cluster.kill_member(0).unwrap();
        assert!(!cluster.is_running(0).unwrap());
        // Two of three still form a quorum; the client moves to them.
        let mut next = 2;
        eventually("append with one member down", || {
            let s = s.clone();
            let index = next;
            async move {
                // An earlier attempt that timed out may have been written.
                match s.append(epoch, index, &entry(index)).await {
                    Ok(AppendOutcome::Appended) => true,
                    Ok(AppendOutcome::Occupied(bytes)) => bytes == entry(index),
                    _ => false,
                }
            }
        })
        .await;
        next += 1;
        // Once the survivors have a leader, connecting with the dead member
        // first in the list works.
        let again = EtcdStore::connect(&urls, "test", "cluster", store_options())
            .await
            .expect("connect with one member down");
        assert_eq!(again.last_index(0).await.unwrap(), Some(2));
        cluster.stop_member(1).await.unwrap();
        // Without a quorum nothing is written, and the error says so in time.
        let started = Instant::now();
        let err = s.append(epoch, next, &entry(next)).await;
        assert!(matches!(err, Err(StoreError::Unavailable(_))), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));

        cluster.restart_member(0).await.unwrap();
        cluster.restart_member(1).await.unwrap();
        eventually("cluster serves after restarts", || async {
            s.last_index(0).await.is_ok()
        })
        .await;
        // The lease (60 s) and thus the epoch survived; no entry was lost.
        let log = log_indexes(&s).await;
        assert_eq!(&log[..2], &[1, 2]);
        assert!(log.len() <= 3, "{log:?}");
        let mut watch = s.watch_log(1);
        assert_eq!(next_entry(&mut watch).await.0, 1);
        assert!(cluster.pid(2).unwrap().is_some());
        assert!(cluster.log_path(2).unwrap().exists());
    }

    #[tokio::test]
    async fn entry_above_request_limit_is_invalid_argument() {
        let etcd = EtcdProcess::start_with(etcd_options()).await.unwrap();
        let s = EtcdStore::connect(&etcd.client_urls(), "test", "big", store_options())
            .await
            .unwrap();
        let (_lease, epoch) = lead(&s, "r1").await;
        // Refused by etcd (1.5 MiB limit) and by gRPC (2 MiB) respectively.
        for len in [1_600_000, 3 * 1024 * 1024] {
            let err = s.append(epoch, 1, &vec![0u8; len]).await;
            assert!(
                matches!(err, Err(StoreError::InvalidArgument(_))),
                "{len}: {err:?}"
            );
        }
        assert_eq!(s.last_index(0).await.unwrap(), None);
    }
}

mod memory_only {
    use super::*;

    #[tokio::test]
    async fn clones_and_group_views_share_one_memory() {
        let s = MemoryStore::new();
        let clone = s.clone();
        let (_lease, epoch) = lead(&s, "r1").await;
        assert_eq!(clone.leader().await.unwrap().unwrap().epoch, epoch);
        let other = s.group("default", "other").unwrap();
        assert_eq!(other.leader().await.unwrap(), None);
        let e2 = lead(&other, "r2").await.1;
        assert!(e2 > epoch, "one revision counter across groups");
    }

    #[tokio::test]
    async fn unavailable_store_fails_operations_and_ends_watches() {
        let s = memory_store();
        let (_lease, epoch) = lead(&s, "r1").await;
        let mut watch = s.watch_log(1);
        s.set_unavailable(Some("test outage"));
        let err = s.append(epoch, 1, b"x").await;
        assert!(matches!(err, Err(StoreError::Unavailable(_))), "{err:?}");
        let item = next_within(&mut watch, "watch").await;
        assert!(matches!(item, Err(StoreError::Unavailable(_))), "{item:?}");
        assert!(watch.next().await.is_none());
        s.set_unavailable(None);
        append_all(&s, epoch, [1]).await;
    }

    #[tokio::test(start_paused = true)]
    async fn lease_expiry_follows_tokio_time() {
        let s = memory_store();
        let lease = s.grant_lease(Duration::from_secs(5)).await.unwrap();
        s.campaign(lease, &record("r1")).await.unwrap().unwrap();
        let mut watch = s.watch_leader();
        assert!(next_within(&mut watch, "initial").await.unwrap().is_some());
        tokio::time::sleep(Duration::from_secs(4)).await;
        s.keep_alive(lease).await.unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(s.leader().await.unwrap().is_some());
        // Nobody calls the store: the timer alone expires the lease.
        assert_eq!(next_within(&mut watch, "expiry").await.unwrap(), None);
    }
}
