//! The classic protocol's use of etcd: plain puts, range reads and one watch.
//!
//! Deliberately *not* the [`dorado_core::Store`] trait: that trait's append
//! is a fenced `Txn`, which is exactly what the 2016 scheme did not have.
//! Ordering writes here are unconditional puts of keys that name their writer
//! (so a retry after an unknown outcome rewrites the same bytes). The one
//! `Txn` is the create-if-absent of the group's `meta`, which is
//! configuration (module hash, group size), not ordering.
//!
//! The connection is the one an [`EtcdStore`] already holds (its client is a
//! cheap handle), so `dorado run` connects the same way for both protocols;
//! leases go through the store's own lease calls.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use dorado_core::{LeaseId, MemberRecord, StoreError, StoreResult};
use etcd_client::{
    Compare, CompareOp, GetOptions, KeyValue, KvClient, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchClient, WatchOptions, WatchStream,
};

use super::protocol::{Instance, Record, View};
use super::wire::{self, ClassicKeys, ClassicMeta, KeyKind, prefix_end};
use dorado::driver::LeaseStore;
use dorado::store::EtcdStore;

/// Largest gRPC message accepted (a page of acceptances or a watch burst
/// after a slow consumer can exceed tonic's 4 MiB default).
const MAX_DECODING_MESSAGE_SIZE: usize = 1 << 30;

/// Keys per range request.
const PAGE: i64 = 512;

/// One page of a range read.
#[derive(Debug)]
pub(crate) struct Page {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub revision: i64,
}

/// etcd access of one classic group. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ClassicStore {
    etcd: EtcdStore,
    kv: KvClient,
    watch: WatchClient,
    keys: ClassicKeys,
    timeout: Duration,
}

impl std::fmt::Debug for ClassicStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassicStore")
            .field("endpoints", &self.etcd.endpoints())
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

impl ClassicStore {
    /// Classic access to the group `etcd` is scoped to.
    pub fn new(etcd: EtcdStore, timeout: Duration) -> Self {
        let client = etcd.client();
        ClassicStore {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            keys: ClassicKeys::new(etcd.key_space().prefix()),
            etcd,
            timeout,
        }
    }

    pub fn keys(&self) -> &ClassicKeys {
        &self.keys
    }

    async fn call<T, Fut>(&self, what: &str, lease: Option<i64>, fut: Fut) -> StoreResult<T>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(StoreError::Unavailable(format!(
                "{what}: etcd at {} did not answer within {:?}",
                self.etcd.endpoints(),
                self.timeout
            ))),
            Ok(Err(e)) => Err(map_err(what, self.etcd.endpoints(), lease, e)),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Store `meta` unless the group has one; return the group's meta.
    pub async fn init_meta(&self, meta: &ClassicMeta) -> StoreResult<ClassicMeta> {
        let key = self.keys.meta();
        let value = serde_json::to_vec(meta)
            .map_err(|e| StoreError::InvalidArgument(format!("meta: {e}")))?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let mut kv = self.kv.clone();
        let resp = self.call("init classic meta", None, kv.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(meta.clone());
        }
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(mut get) = op
                && let Some(kv) = get.take_kvs().into_iter().next()
            {
                return serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
                    key: "classic/meta".into(),
                    reason: e.to_string(),
                });
            }
        }
        Err(StoreError::Unavailable(
            "init classic meta: etcd reported meta present but returned none".into(),
        ))
    }

    /// Register `replica` in the roster (idempotent) and return the roster
    /// as `(create revision, replica)` in registration order.
    pub async fn register(&self, replica: &str) -> StoreResult<Vec<(i64, String)>> {
        self.put(
            &Record::Roster {
                replica: replica.to_owned(),
            },
            "",
        )
        .await?;
        let prefix = self.keys.key("roster/");
        let mut out = Vec::new();
        let mut start = prefix.clone().into_bytes();
        let mut revision = 0;
        loop {
            let page = self
                .range(start, prefix_end(&prefix), revision, false)
                .await?;
            if revision == 0 {
                revision = page.revision;
            }
            for kv in &page.kvs {
                if let Some(KeyKind::Roster(r)) = self.keys.parse(kv.key()) {
                    out.push((kv.create_revision(), r));
                }
            }
            match page.kvs.last() {
                Some(last) if page.more => start = key_after(last.key()),
                _ => break,
            }
        }
        out.sort();
        Ok(out)
    }

    /// Write one record (unconditionally).
    pub async fn put(&self, record: &Record, address: &str) -> StoreResult<()> {
        let key = self.keys.record_key(record);
        let value = wire::encode(record, address).map_err(StoreError::InvalidArgument)?;
        let mut kv = self.kv.clone();
        self.call("put", None, kv.put(key, value, None))
            .await
            .map(drop)
    }

    /// Publish this replica's lease-bound presence.
    pub async fn put_member(
        &self,
        lease: LeaseId,
        replica: &str,
        record: &MemberRecord,
    ) -> StoreResult<()> {
        let value = serde_json::to_vec(record)
            .map_err(|e| StoreError::InvalidArgument(format!("member record: {e}")))?;
        let options = PutOptions::new().with_lease(lease.0);
        let mut kv = self.kv.clone();
        self.call(
            "publish member",
            Some(lease.0),
            kv.put(self.keys.member(replica), value, Some(options)),
        )
        .await
        .map(drop)
    }

    /// A linearizable read that proves etcd (with a quorum) answers.
    pub async fn ping(&self) -> StoreResult<i64> {
        let mut kv = self.kv.clone();
        let resp = self
            .call(
                "health check",
                None,
                kv.get(self.keys.meta(), Some(GetOptions::new().with_count_only())),
            )
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Keys in `[start, end)` at `revision` (0 = now), one page. The page's
    /// `revision` is etcd's current revision when it answered, which is the
    /// revision read at only when `revision` was 0.
    pub async fn range(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        revision: i64,
        keys_only: bool,
    ) -> StoreResult<Page> {
        let mut options = GetOptions::new()
            .with_range(end)
            .with_limit(PAGE)
            .with_revision(revision);
        if keys_only {
            options = options.with_keys_only();
        }
        let mut kv = self.kv.clone();
        let mut resp = self
            .call("range read", None, kv.get(start, Some(options)))
            .await
            .map_err(|e| match e {
                StoreError::Compacted(_) => StoreError::Compacted(revision),
                other => other,
            })?;
        let revision = resp.header().map_or(revision, |h| h.revision());
        Ok(Page {
            more: resp.more(),
            kvs: resp.take_kvs(),
            revision,
        })
    }

    /// Watch the whole classic prefix from `revision`.
    pub async fn watch_from(&self, revision: i64) -> StoreResult<WatchStream> {
        let prefix = self.keys.prefix().to_owned();
        let options = WatchOptions::new()
            .with_range(prefix_end(&prefix))
            .with_start_revision(revision)
            .with_fragment();
        let mut watch = self.watch.clone();
        self.call("watch", None, watch.watch(prefix, Some(options)))
            .await
    }

    /// The highest instance `h >= from - 1` such that every instance in
    /// `from..=h` is decided in etcd now (a linearizable read of the
    /// acceptances' keys). What a linearizable query must wait for.
    pub async fn decided_prefix(
        &self,
        from: Instance,
        roster: &[String],
        majority: usize,
    ) -> StoreResult<Instance> {
        let end = prefix_end(&self.keys.key("accept/"));
        let mut start = self.keys.accept_from(from).into_bytes();
        let mut revision = 0;
        let mut expect = from;
        let mut current: Option<(Instance, BTreeMap<View, BTreeSet<String>>)> = None;
        loop {
            let page = self.range(start, end.clone(), revision, true).await?;
            if revision == 0 {
                revision = page.revision;
            }
            for kv in &page.kvs {
                let Some(KeyKind::Accept {
                    instance,
                    view,
                    replica,
                }) = self.keys.parse(kv.key())
                else {
                    continue;
                };
                if !roster.contains(&replica) {
                    continue;
                }
                match &mut current {
                    Some((i, views)) if *i == instance => {
                        views.entry(view).or_default().insert(replica);
                    }
                    _ => {
                        if let Some((i, views)) = current.take() {
                            if i != expect || !decided(&views, majority) {
                                return Ok(expect - 1);
                            }
                            expect += 1;
                        }
                        current = Some((instance, BTreeMap::from([(view, [replica].into())])));
                    }
                }
            }
            match page.kvs.last() {
                Some(last) if page.more => start = key_after(last.key()),
                _ => break,
            }
        }
        if let Some((i, views)) = current
            && i == expect
            && decided(&views, majority)
        {
            expect += 1;
        }
        Ok(expect - 1)
    }
}

/// The lease and the member record, for the driver's lease task: the same
/// lease calls as DORADO's store, the member record under `classic/members/`.
impl LeaseStore for ClassicStore {
    async fn grant_lease(&self, ttl: Duration) -> StoreResult<LeaseId> {
        dorado_core::Store::grant_lease(&self.etcd, ttl).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> StoreResult<()> {
        dorado_core::Store::keep_alive(&self.etcd, lease).await
    }

    /// Its member key vanishes at once.
    async fn revoke_lease(&self, lease: LeaseId) -> StoreResult<()> {
        dorado_core::Store::revoke_lease(&self.etcd, lease).await
    }

    async fn publish_member(
        &self,
        lease: LeaseId,
        replica: &str,
        record: &MemberRecord,
    ) -> StoreResult<()> {
        self.put_member(lease, replica, record).await
    }
}

fn decided(views: &BTreeMap<View, BTreeSet<String>>, majority: usize) -> bool {
    views.values().any(|acceptors| acceptors.len() >= majority)
}

/// The smallest key after `key`.
pub(crate) fn key_after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

const GRPC_INVALID_ARGUMENT: i32 = 3;

/// etcd errors as [`StoreError`]s, classified the way the DORADO adapter does.
pub(crate) fn map_err(
    what: &str,
    endpoints: &str,
    lease: Option<i64>,
    e: etcd_client::Error,
) -> StoreError {
    let (message, invalid) = match &e {
        etcd_client::Error::GRpcStatus(s) => (
            s.message().to_owned(),
            i32::from(s.code()) == GRPC_INVALID_ARGUMENT,
        ),
        etcd_client::Error::InvalidArgs(m) => (m.clone(), true),
        other => (other.to_string(), false),
    };
    if message.contains("database space exceeded") || message.contains("NOSPACE") {
        StoreError::NoSpace(message)
    } else if message.contains("lease not found") {
        StoreError::LeaseExpired(lease.unwrap_or(0))
    } else if message.contains("required revision has been compacted") {
        StoreError::Compacted(0)
    } else if invalid || message.contains("received message larger than max") {
        StoreError::InvalidArgument(message)
    } else {
        StoreError::Unavailable(format!("{what} at etcd {endpoints}: {e}"))
    }
}
