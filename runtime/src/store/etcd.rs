//! The production [`Store`]: etcd v3 through `etcd-client`.
//!
//! Every safety rule of the trait is evaluated by etcd itself, never by
//! reading and then writing: election is a create-if-absent `Txn` on
//! `leader` with the caller's lease (the epoch is the key's create revision,
//! read back inside the same `Txn`), and an append is one `Txn` that compares
//! the leader key's create revision with the caller's epoch *and* checks that
//! the log key is absent before writing it. A paused or partitioned ex-leader
//! cannot slip a write in between, which lease timing alone could not promise.
//!
//! Every request runs under a timeout: `etcd-client` balances over its
//! endpoints and would otherwise wait forever for one to become ready. A
//! timeout or a transport failure is [`StoreError::Unavailable`] (the outcome
//! of a write is then unknown; the protocol resolves it with `Occupied`).
//! Only a request that could not even connect to the member it was routed to
//! (so was never sent) is repeated inside that timeout, which lets a client
//! of a cluster with a dead member move on to a live one.
//!
//! Watches first range-read what exists at a revision `R` (paginated, all
//! pages at `R`) and then watch from `R + 1`, so nothing is missed or
//! repeated in between. They end with an error item on compaction, on a
//! cancel by the server (e.g. the member lost its leader, which this client
//! asks etcd to report) or on connection loss; the caller re-subscribes.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use dorado_core::{
    AppendOutcome, Epoch, Index, LeaderRecord, Leadership, LeaseId, MemberRecord, Meta, Store,
    StoreError, StoreResult,
};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, GetResponse,
    KeyValue, KvClient, LeaseClient, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp,
    TxnOpResponse, TxnResponse, WatchClient, WatchFilterType, WatchOptions, WatchStream,
};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};

use super::tls::{EtcdTls, EtcdTlsError, TlsMaterial};
use super::{
    KeySpace, SNAPSHOT_CHUNK_SIZE, SnapshotManifest, check_module_bytes, decode_json, encode_json,
    end_after_error, new_snapshot_writer,
};

/// Largest gRPC message this client accepts. Responses can legitimately
/// exceed tonic's 4 MiB default: a page of log entries, or a watch catching up
/// after a slow consumer, which etcd batches into one response.
const MAX_DECODING_MESSAGE_SIZE: usize = 1 << 30;

/// Snapshot chunks written concurrently by one `put_snapshot`.
const SNAPSHOT_WRITES_IN_FLIGHT: usize = 4;

/// Snapshot chunks read per range request (2 MiB at the default chunk size).
const SNAPSHOT_CHUNKS_PER_READ: i64 = 4;

/// How often `newest_snapshot` retries when a compaction removes the revision
/// it reads at.
const SNAPSHOT_READ_ATTEMPTS: usize = 3;

// gRPC status codes (stable, from the gRPC spec).
const GRPC_INVALID_ARGUMENT: i32 = 3;
const GRPC_UNAVAILABLE: i32 = 14;

/// How an [`EtcdStore`] talks to etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdStoreOptions {
    /// TLS towards `https://` endpoints (CA bundle, client certificate,
    /// rotation interval); `None` for plain `http://`.
    pub tls: Option<EtcdTls>,
    /// Bound on establishing a connection (and on the probe in `connect`).
    pub connect_timeout: Duration,
    /// Bound on every request; a request that takes longer is `Unavailable`.
    pub request_timeout: Duration,
    /// HTTP/2 keep-alive `(interval, timeout)` so a dead connection under a
    /// long-lived watch is noticed. etcd rejects pings more often than every
    /// 5 s (`too_many_pings`), so keep the interval above that.
    pub keep_alive: Option<(Duration, Duration)>,
    /// Keys per range request when reading the log or scanning snapshots.
    pub page_size: usize,
}

impl Default for EtcdStoreOptions {
    fn default() -> Self {
        Self {
            tls: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            keep_alive: Some((Duration::from_secs(10), Duration::from_secs(5))),
            page_size: 256,
        }
    }
}

/// A [`Store`] backed by etcd, scoped to one group. Cheap to clone; clones
/// share the connection.
///
/// The connection sits behind an [`ArcSwap`]: with TLS, a task re-reads the
/// certificate files every [`EtcdTls::reload_interval`] and, when they
/// changed and the new pair works (probed like a first connection), swaps a
/// new connection in. Each request attempt loads the connection current at
/// that moment; requests and watches already running keep the old one, which
/// closes when the last of them is done, so rotation loses none of them.
#[derive(Clone)]
pub struct EtcdStore {
    conn: Arc<ArcSwap<Conn>>,
    keys: KeySpace,
    ctx: Arc<Ctx>,
    keep_alives: Arc<KeepAlives>,
}

/// Most keep-alive streams kept open by one store (and its clones); beyond
/// it, the cache is emptied (leases lost without a revoke leave entries).
const MAX_KEEP_ALIVE_STREAMS: usize = 64;

/// One long-lived `LeaseKeepAlive` stream per lease: every renewal is one
/// request and one response on it, instead of a new stream per renewal
/// (each of which etcd counts, and ends `Unavailable` when it is dropped).
/// A stream is taken out while a renewal uses it and put back only when
/// that renewal completed, so a renewal cancelled half-way (a timeout)
/// never leaves an unread response behind: its stream is dropped and the
/// next renewal opens a new one. A stream that fails is dropped the same
/// way; one opened on a connection that TLS rotation has since replaced
/// is not reused either, so the old connection can close.
#[derive(Default)]
struct KeepAlives {
    streams: std::sync::Mutex<HashMap<i64, KeepAliveStream>>,
}

struct KeepAliveStream {
    conn: Weak<Conn>,
    keeper: LeaseKeeper,
    responses: LeaseKeepAliveStream,
}

impl KeepAlives {
    fn take(&self, lease: i64, current: &Arc<Conn>) -> Option<KeepAliveStream> {
        self.lock()
            .remove(&lease)
            .filter(|s| s.conn.as_ptr() == Arc::as_ptr(current))
    }

    fn put(&self, lease: i64, stream: KeepAliveStream) {
        let mut streams = self.lock();
        if streams.len() >= MAX_KEEP_ALIVE_STREAMS {
            streams.clear();
        }
        streams.insert(lease, stream);
    }

    fn forget(&self, lease: i64) {
        self.lock().remove(&lease);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, KeepAliveStream>> {
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One connection to etcd and the service clients made from it.
struct Conn {
    client: Client,
    kv: KvClient,
    watch: WatchClient,
    lease: LeaseClient,
}

impl Conn {
    fn new(client: Client) -> Self {
        Conn {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            lease: client.lease_client(),
            client,
        }
    }
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.ctx.endpoints)
            .field("prefix", &self.keys.prefix())
            .field("options", &self.ctx.options)
            .finish_non_exhaustive()
    }
}

/// Why [`EtcdStore::try_connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdConnectError {
    /// The TLS files or a TLS handshake failed (names the file or endpoint).
    #[error(transparent)]
    Tls(#[from] EtcdTlsError),
    /// etcd could not be reached or refused the request.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<EtcdConnectError> for StoreError {
    /// Inconsistent TLS flags are `InvalidArgument` (only a restart with
    /// other flags helps); bad files and refused handshakes are
    /// `Unavailable`, retried, since a rotation can fix them.
    fn from(e: EtcdConnectError) -> Self {
        match e {
            EtcdConnectError::Tls(e) if e.is_config() => StoreError::InvalidArgument(e.to_string()),
            EtcdConnectError::Tls(e) => StoreError::Unavailable(e.to_string()),
            EtcdConnectError::Store(e) => e,
        }
    }
}

/// What error messages and timeouts need, shared by the store and its watches.
#[derive(Debug)]
struct Ctx {
    endpoints: String,
    options: EtcdStoreOptions,
}

impl Ctx {
    /// Run one etcd request under the request timeout, mapping its errors.
    ///
    /// `op` makes the request; it is made again (until the timeout) only
    /// when the previous attempt could not even connect to the endpoint the
    /// client picked, so the request was never sent and repeating it is safe
    /// for writes too. That happens when one member of a cluster is down
    /// and the client has not noticed yet; another member will answer.
    async fn call<T, F, Fut>(&self, what: &str, lease: Option<i64>, mut op: F) -> StoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last_connect_error: Option<String> = None;
        let attempts = async {
            let mut backoff = Duration::from_millis(10);
            loop {
                match op().await {
                    Err(e) if never_sent(&e) => {
                        last_connect_error = Some(e.to_string());
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(250));
                    }
                    other => return other,
                }
            }
        };
        let result = tokio::time::timeout(self.options.request_timeout, attempts).await;
        match result {
            Err(_) => Err(StoreError::Unavailable(format!(
                "{what}: etcd at {} did not answer within {:?}{}",
                self.endpoints,
                self.options.request_timeout,
                last_connect_error
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            ))),
            Ok(Err(e)) => Err(self.map_err(what, lease, e)),
            Ok(Ok(v)) => Ok(v),
        }
    }

    fn map_err(&self, what: &str, lease: Option<i64>, e: etcd_client::Error) -> StoreError {
        let (message, invalid_argument) = match &e {
            etcd_client::Error::GRpcStatus(status) => (
                status.message().to_owned(),
                i32::from(status.code()) == GRPC_INVALID_ARGUMENT,
            ),
            etcd_client::Error::InvalidArgs(m) => (m.clone(), true),
            other => (other.to_string(), false),
        };
        classify(&message, lease, invalid_argument).unwrap_or_else(|| {
            let tls = tls_cause(&e)
                .map(|t| format!(" (tls: {t})"))
                .unwrap_or_default();
            StoreError::Unavailable(format!("{what} at etcd {}: {e}{tls}", self.endpoints))
        })
    }
}

/// Whether a request failed before any byte of it left this process:
/// the transport could not connect to the endpoint it was routed to.
fn never_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            i32::from(status.code()) == GRPC_UNAVAILABLE
                && (status.message().contains("tcp connect error")
                    || format!("{status:?}").contains("ConnectError"))
        }
        _ => false,
    }
}

/// The error kinds etcd reports by message rather than by status code.
fn classify(message: &str, lease: Option<i64>, invalid_argument: bool) -> Option<StoreError> {
    if message.contains("database space exceeded") || message.contains("NOSPACE") {
        Some(StoreError::NoSpace(message.to_owned()))
    } else if message.contains("lease not found") {
        Some(StoreError::LeaseExpired(lease.unwrap_or(0)))
    } else if message.contains("required revision has been compacted") {
        Some(StoreError::Compacted(0))
    } else if invalid_argument || message.contains("received message larger than max") {
        // etcd refuses requests above --max-request-bytes with
        // InvalidArgument ("request is too large"), and gRPC refuses them
        // above that plus 512 KiB with ResourceExhausted.
        Some(StoreError::InvalidArgument(message.to_owned()))
    } else {
        None
    }
}

/// Open a connection to `endpoints` with `tls` and prove it: a TLS probe of
/// each endpoint (an unreachable one is left to the read below, which moves
/// on to live members), then a linearizable count-only read of `probe_key`.
async fn open(
    ctx: &Ctx,
    endpoints: &[String],
    tls: Option<&TlsMaterial>,
    probe_key: &str,
) -> Result<Conn, EtcdConnectError> {
    let options = &ctx.options;
    if let Some(tls) = tls {
        for endpoint in endpoints {
            if let Err(reason) = tls.probe(endpoint, options.connect_timeout).await? {
                tracing::debug!(%endpoint, %reason, "etcd endpoint unreachable during the tls probe");
            }
        }
    }
    let mut connect = ConnectOptions::new()
        .with_connect_timeout(options.connect_timeout)
        .with_timeout(options.request_timeout)
        .with_require_leader(true);
    if let Some((interval, timeout)) = options.keep_alive {
        connect = connect.with_keep_alive(interval, timeout);
    }
    if let Some(tls) = tls {
        connect = connect.with_tls(tls.client_options());
    }
    let client = match tokio::time::timeout(
        options.connect_timeout,
        Client::connect(endpoints, Some(connect)),
    )
    .await
    {
        Err(_) => {
            return Err(StoreError::Unavailable(format!(
                "cannot connect to etcd at {} within {:?}",
                ctx.endpoints, options.connect_timeout
            ))
            .into());
        }
        Ok(Err(e)) => {
            return Err(match ctx.map_err("connect", None, e) {
                StoreError::Unavailable(m) => {
                    StoreError::Unavailable(format!("cannot connect: {m}"))
                }
                other => other,
            }
            .into());
        }
        Ok(Ok(client)) => client,
    };
    let conn = Conn::new(client);
    // The client connects lazily; prove etcd answers (with a quorum).
    // Like every request, the probe moves on from members that refuse
    // connections, so one dead member of a cluster does not fail it.
    let probe = ctx.call("connect", None, || {
        let (mut kv, key) = (conn.kv.clone(), probe_key.to_owned());
        async move { kv.get(key, Some(GetOptions::new().with_count_only())).await }
    });
    match tokio::time::timeout(options.connect_timeout, probe).await {
        Ok(Ok(_)) => Ok(conn),
        Ok(Err(StoreError::Unavailable(m))) => {
            Err(StoreError::Unavailable(format!("etcd is not serving: {m}")).into())
        }
        Ok(Err(other)) => Err(other.into()),
        Err(_) => Err(StoreError::Unavailable(format!(
            "etcd at {} did not answer within {:?}",
            ctx.endpoints, options.connect_timeout
        ))
        .into()),
    }
}

/// Pick up rotated TLS files until the store is dropped: every
/// `reload_interval`, read the files; if their bytes differ from the material
/// in use, check them, open and prove a new connection, and swap it in. A
/// change that fails (unreadable, bad PEM, expired, refused by etcd) is
/// logged (once per distinct error) and retried at the next check; the
/// connection in use stays.
async fn reload_tls(
    conn: Weak<ArcSwap<Conn>>,
    ctx: Arc<Ctx>,
    endpoints: Vec<String>,
    mut current: TlsMaterial,
    probe_key: String,
) {
    let mut last_error: Option<String> = None;
    loop {
        tokio::time::sleep(current.files().reload_interval).await;
        if conn.strong_count() == 0 {
            return;
        }
        let files = current.files().clone();
        let attempt = async {
            let read = files.clone();
            let contents = tokio::task::spawn_blocking(move || read.read_files())
                .await
                .map_err(|e| {
                    EtcdTlsError::Config(format!("reading the tls files panicked: {e}"))
                })??;
            if current.is_from(&contents) {
                return Ok(None);
            }
            let material = TlsMaterial::from_contents(&files, contents, SystemTime::now())?;
            let new = open(&ctx, &endpoints, Some(&material), &probe_key).await?;
            Ok::<_, EtcdConnectError>(Some((material, new)))
        };
        match attempt.await {
            Ok(None) => {}
            Ok(Some((material, new))) => {
                let Some(conn) = conn.upgrade() else { return };
                conn.store(Arc::new(new));
                current = material;
                last_error = None;
                tracing::info!(
                    endpoints = %ctx.endpoints,
                    ca = %files.ca.display(),
                    cert = ?files.identity.as_ref().map(|id| id.cert.display().to_string()),
                    "etcd tls files changed: requests now use a new connection with them"
                );
            }
            Err(e) => {
                let message = e.to_string();
                if last_error.as_deref() != Some(message.as_str()) {
                    tracing::error!(
                        error = %message,
                        "the etcd tls files changed but cannot be used; the connection in use keeps the previous ones"
                    );
                    last_error = Some(message);
                }
            }
        }
    }
}

/// The TLS failure under a transport error, if any, for error messages.
fn tls_cause(e: &etcd_client::Error) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(tls) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls.to_string());
        }
        next = err.source();
    }
    None
}

/// One page of a range read.
struct Page {
    kvs: Vec<KeyValue>,
    more: bool,
    revision: i64,
}

impl EtcdStore {
    /// Connect to etcd at `endpoints` for `group` in `namespace`, and check
    /// that the cluster answers a linearizable read within
    /// `options.connect_timeout`. Unreachable etcd is `Unavailable`, naming
    /// the endpoints; bad names are `InvalidArgument`; TLS failures are
    /// mapped as [`EtcdConnectError`] says.
    pub async fn connect(
        endpoints: &[String],
        namespace: &str,
        group: &str,
        options: EtcdStoreOptions,
    ) -> StoreResult<Self> {
        Self::try_connect(endpoints, namespace, group, options)
            .await
            .map_err(StoreError::from)
    }

    /// [`EtcdStore::connect`] with TLS failures kept typed.
    ///
    /// With `options.tls`, the files are loaded and checked first, then every
    /// endpoint gets a TLS probe ([`TlsMaterial::probe`]) so that an unknown
    /// CA, an expired certificate or a wrong host name is reported as such
    /// rather than as a timeout; then a task starts that picks up rotated
    /// files (it ends when the last clone of this store is dropped).
    pub async fn try_connect(
        endpoints: &[String],
        namespace: &str,
        group: &str,
        options: EtcdStoreOptions,
    ) -> Result<Self, EtcdConnectError> {
        let keys = KeySpace::new(namespace, group)?;
        if endpoints.is_empty() || endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(StoreError::InvalidArgument(format!(
                "etcd endpoints must be a non-empty list of URLs, got {endpoints:?}"
            ))
            .into());
        }
        let ctx = Arc::new(Ctx {
            endpoints: endpoints.join(","),
            options: options.clone(),
        });
        let material = match &options.tls {
            Some(tls) => Some(tls.load()?),
            None => None,
        };
        let probe_key = keys.meta();
        let conn = open(&ctx, endpoints, material.as_ref(), &probe_key).await?;
        let store = Self {
            conn: Arc::new(ArcSwap::from_pointee(conn)),
            keys,
            ctx,
            keep_alives: Arc::default(),
        };
        if let Some(material) = material {
            tokio::spawn(reload_tls(
                Arc::downgrade(&store.conn),
                store.ctx.clone(),
                endpoints.to_vec(),
                material,
                probe_key,
            ));
        }
        Ok(store)
    }

    /// One renewal on an open keep-alive stream, under the request timeout.
    async fn renew_on(&self, open: &mut KeepAliveStream, lease: LeaseId) -> StoreResult<()> {
        let what = "keep lease alive";
        let renew = async {
            open.keeper
                .keep_alive()
                .await
                .map_err(|e| self.ctx.map_err(what, Some(lease.0), e))?;
            match open.responses.message().await {
                Ok(Some(resp)) if resp.ttl() <= 0 => Err(StoreError::LeaseExpired(lease.0)),
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(StoreError::Unavailable(format!(
                    "{what}: etcd at {} ended the keep-alive stream",
                    self.ctx.endpoints
                ))),
                Err(e) => Err(self.ctx.map_err(what, Some(lease.0), e)),
            }
        };
        match tokio::time::timeout(self.ctx.options.request_timeout, renew).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "{what}: etcd at {} did not answer within {:?}",
                self.ctx.endpoints, self.ctx.options.request_timeout
            ))),
        }
    }

    /// The same connection, scoped to another group.
    pub fn group(&self, namespace: &str, group: &str) -> StoreResult<Self> {
        Ok(Self {
            keys: KeySpace::new(namespace, group)?,
            ..self.clone()
        })
    }

    /// The key space of this store.
    pub fn key_space(&self) -> &KeySpace {
        &self.keys
    }

    /// The endpoints this store was connected with, comma separated.
    pub fn endpoints(&self) -> &str {
        &self.ctx.endpoints
    }

    /// The underlying etcd client, for tools that need raw access (the
    /// benchmark's raw put rate, `dorado replay`, tests). It is the
    /// connection current now; a later certificate rotation does not move it.
    pub fn client(&self) -> Client {
        self.conn.load().client.clone()
    }

    /// Write `value` at `relative_key` (under this group's prefix) with no
    /// checks at all. For tests and tools that need to fabricate stored
    /// state, e.g. a corrupt record or a snapshot whose manifest never came.
    pub async fn put_raw(&self, relative_key: &str, value: &[u8]) -> StoreResult<()> {
        self.kv_put(
            "put",
            None,
            self.keys.key(relative_key),
            value.to_vec(),
            None,
        )
        .await
    }

    /// Keys (relative to this group's prefix) that start with
    /// `relative_prefix`, in key order. For tests and tools.
    pub async fn raw_keys(&self, relative_prefix: &str) -> StoreResult<Vec<String>> {
        let start = self.keys.key(relative_prefix).into_bytes();
        let end = prefix_end(&start);
        let mut out = Vec::new();
        let mut next = start;
        let mut revision = 0;
        loop {
            let page = self
                .range_page(
                    "list keys",
                    next.clone(),
                    end.clone(),
                    self.ctx.options.page_size.max(1),
                    revision,
                    GetOptions::new().with_keys_only(),
                )
                .await?;
            revision = page.revision;
            out.extend(page.kvs.iter().map(|kv| self.keys.relative_lossy(kv.key())));
            match page.kvs.last() {
                Some(last) if page.more => next = key_after(last.key()),
                _ => return Ok(out),
            }
        }
    }

    async fn get(&self, what: &str, key: String) -> StoreResult<Option<KeyValue>> {
        let mut resp = self.kv_get(what, key.into_bytes(), None).await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    async fn kv_get(
        &self,
        what: &str,
        key: Vec<u8>,
        options: Option<GetOptions>,
    ) -> StoreResult<GetResponse> {
        self.ctx
            .call(what, None, || {
                let (mut kv, key, options) =
                    (self.conn.load().kv.clone(), key.clone(), options.clone());
                async move { kv.get(key, options).await }
            })
            .await
    }

    async fn kv_put(
        &self,
        what: &str,
        lease: Option<i64>,
        key: String,
        value: Vec<u8>,
        options: Option<PutOptions>,
    ) -> StoreResult<()> {
        self.ctx
            .call(what, lease, || {
                let (mut kv, key, value) =
                    (self.conn.load().kv.clone(), key.clone(), value.clone());
                let options = options.clone();
                async move { kv.put(key, value, options).await }
            })
            .await
            .map(drop)
    }

    async fn kv_delete(&self, what: &str, key: String, options: DeleteOptions) -> StoreResult<()> {
        self.ctx
            .call(what, None, || {
                let (mut kv, key, options) =
                    (self.conn.load().kv.clone(), key.clone(), options.clone());
                async move { kv.delete(key, Some(options)).await }
            })
            .await
            .map(drop)
    }

    async fn txn(&self, what: &str, lease: Option<i64>, txn: Txn) -> StoreResult<TxnResponse> {
        self.ctx
            .call(what, lease, || {
                let (mut kv, txn) = (self.conn.load().kv.clone(), txn.clone());
                async move { kv.txn(txn).await }
            })
            .await
    }

    /// Keys in `[start, end)`, at `revision` (0 = latest), at most `limit`.
    async fn range_page(
        &self,
        what: &str,
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
        revision: i64,
        options: GetOptions,
    ) -> StoreResult<Page> {
        let options = options
            .with_range(end)
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .with_revision(revision);
        let mut resp = self
            .kv_get(what, start, Some(options))
            .await
            .map_err(|e| with_compacted_revision(e, revision))?;
        // A read pinned to a revision reports etcd's *current* revision in its
        // header; later pages and the watch that follows must stay at the
        // revision the first page was read at, or writes to ranges already
        // read would be skipped.
        let revision = if revision > 0 {
            revision
        } else {
            resp.header().map_or(revision, |h| h.revision())
        };
        Ok(Page {
            more: resp.more(),
            kvs: resp.take_kvs(),
            revision,
        })
    }

    async fn open_watch(
        &self,
        what: &str,
        key: String,
        end: Option<String>,
        start_revision: i64,
        filters: Vec<WatchFilterType>,
    ) -> StoreResult<WatchStream> {
        let mut options = WatchOptions::new()
            .with_start_revision(start_revision)
            .with_fragment()
            .with_filters(filters);
        if let Some(end) = end {
            options = options.with_range(end);
        }
        self.ctx
            .call(what, None, || {
                let (mut watch, key, options) =
                    (self.conn.load().watch.clone(), key.clone(), options.clone());
                async move { watch.watch(key, Some(options)).await }
            })
            .await
    }

    fn decode_leader(&self, kv: &KeyValue) -> StoreResult<Leadership> {
        let leader: LeaderRecord = decode_json(&self.keys.relative_lossy(kv.key()), kv.value())?;
        Ok(Leadership {
            leader,
            epoch: kv.create_revision(),
        })
    }

    fn decode_log(&self, kv: &KeyValue) -> StoreResult<(Index, Vec<u8>)> {
        match self.keys.parse_log_key(kv.key()) {
            Some(index) => Ok((index, kv.value().to_vec())),
            None => Err(StoreError::Corrupt {
                key: self.keys.relative_lossy(kv.key()),
                reason: "not a log key (expected log/<20 digit index>)".into(),
            }),
        }
    }

    /// The newest snapshot manifest key and the revision the scan ran at.
    ///
    /// Not a descending scan of `snap/`: etcd 3.4 reads every value of a
    /// sorted range, here every chunk of every retained snapshot. Instead the
    /// scan walks the snapshot directories in ascending order, reading one
    /// key per directory (an unsorted read with limit 1 reads one value) and
    /// asking whether its manifest exists with a count-only read (which reads
    /// none). Older snapshots are deleted once a newer one is complete, so
    /// there are only a few directories. Every read is pinned to the first
    /// one's revision.
    async fn newest_manifest_key(&self) -> StoreResult<Option<(Index, Vec<u8>, i64)>> {
        let end = self.keys.snap_end().into_bytes();
        let mut start = self.keys.snap_prefix().into_bytes();
        let mut revision = 0;
        let mut newest = None;
        loop {
            let page = self
                .range_page(
                    "scan snapshots",
                    start,
                    end.clone(),
                    1,
                    revision,
                    GetOptions::new().with_keys_only(),
                )
                .await?;
            revision = page.revision;
            let Some(kv) = page.kvs.first() else {
                return Ok(newest);
            };
            let Some(index) = self.keys.parse_snap_dir_index(kv.key()) else {
                // Not `snap/<index>/...`; not a snapshot, so not ours to judge.
                start = key_after(kv.key());
                continue;
            };
            let manifest = self.keys.snap_manifest(index).into_bytes();
            let found = self
                .kv_get(
                    "scan snapshots",
                    manifest.clone(),
                    Some(GetOptions::new().with_count_only().with_revision(revision)),
                )
                .await
                .map_err(|e| with_compacted_revision(e, revision))?;
            if found.count() > 0 {
                newest = Some((index, manifest, revision));
            }
            match index.checked_add(1) {
                Some(next) => start = self.keys.snap_below(next).into_bytes(),
                None => return Ok(newest),
            }
        }
    }

    async fn read_snapshot_at(
        &self,
        index: Index,
        manifest_key: Vec<u8>,
        revision: i64,
    ) -> StoreResult<Option<(Index, Vec<u8>)>> {
        let keys = self.keys.clone();
        let bytes = self
            .read_chunked_at("snapshot", index, manifest_key, revision, |writer| {
                keys.snap_chunk_dir(index, writer)
            })
            .await?;
        Ok(bytes.map(|b| (index, b)))
    }

    /// Read a chunked value (a snapshot or a module) through its manifest at
    /// `revision` (0: the newest), checking every chunk against it. `None`
    /// when the manifest does not exist.
    async fn read_chunked_at(
        &self,
        what: &'static str,
        index: Index,
        manifest_key: Vec<u8>,
        revision: i64,
        chunk_dir: impl Fn(&str) -> String,
    ) -> StoreResult<Option<Vec<u8>>> {
        let rel = self.keys.relative_lossy(&manifest_key);
        let mut resp = self
            .kv_get(
                what,
                manifest_key,
                Some(GetOptions::new().with_revision(revision)),
            )
            .await
            .map_err(|e| with_compacted_revision(e, revision))?;
        let Some(manifest_kv) = resp.take_kvs().into_iter().next() else {
            return Ok(None);
        };
        let manifest: SnapshotManifest = decode_json(&rel, manifest_kv.value())?;
        if manifest.index != index {
            return Err(StoreError::Corrupt {
                key: rel,
                reason: format!("manifest names index {}", manifest.index),
            });
        }
        let dir = chunk_dir(&manifest.writer);
        let end = prefix_end(dir.as_bytes());
        let mut start = dir.into_bytes();
        let mut bytes = Vec::with_capacity(usize::try_from(manifest.total_len).unwrap_or(0));
        let mut found = 0usize;
        loop {
            let page = self
                .range_page(
                    what,
                    start.clone(),
                    end.clone(),
                    SNAPSHOT_CHUNKS_PER_READ as usize,
                    revision,
                    GetOptions::new(),
                )
                .await?;
            for kv in &page.kvs {
                bytes.extend_from_slice(kv.value());
                found += 1;
            }
            match page.kvs.last() {
                Some(last) if page.more => start = key_after(last.key()),
                _ => break,
            }
        }
        manifest.verify(&rel, found, &bytes)?;
        Ok(Some(bytes))
    }

    /// Write `bytes` as chunks under `chunk_dir(writer)` for a fresh writer
    /// id, then the manifest at `manifest_key` if it is still absent. The
    /// manifest is what readers look for, so a reader sees the whole value
    /// or nothing. Values are deterministic (a snapshot of an index, a module
    /// of a hash): when another writer got there first, ours is dropped.
    async fn put_chunked(
        &self,
        what: &'static str,
        index: Index,
        manifest_key: String,
        bytes: &[u8],
        chunk_dir: impl Fn(&str) -> String,
    ) -> StoreResult<()> {
        if self.get(what, manifest_key.clone()).await?.is_some() {
            return Ok(());
        }
        let writer = new_snapshot_writer();
        let manifest = SnapshotManifest::describe(index, &writer, bytes)?;
        let dir = chunk_dir(&writer);
        // Owned futures (key, chunk copy, client handles): the borrow checker
        // cannot prove a borrowing closure's futures `Send` for every lifetime.
        let puts: Vec<_> = (0u32..)
            .zip(bytes.chunks(SNAPSHOT_CHUNK_SIZE))
            .map(|(n, chunk)| {
                let key = format!("{dir}{n:08}");
                let chunk = chunk.to_vec();
                let store = self.clone();
                async move { store.kv_put(what, None, key, chunk, None).await }
            })
            .collect();
        let written: StoreResult<()> = stream::iter(puts)
            .buffer_unordered(SNAPSHOT_WRITES_IN_FLIGHT)
            .try_collect()
            .await;
        if let Err(e) = written {
            self.delete_prefix_best_effort(&dir).await;
            return Err(e);
        }
        let value = encode_json(what, &manifest)?;
        let txn = Txn::new()
            .when([Compare::create_revision(
                manifest_key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(manifest_key, value, None)]);
        let resp = self.txn(what, None, txn).await?;
        if !resp.succeeded() {
            // Another writer finished the same value first; ours is garbage.
            self.delete_prefix_best_effort(&dir).await;
        }
        Ok(())
    }
}

/// Fill in the revision a range read asked for when etcd says it is gone.
fn with_compacted_revision(e: StoreError, revision: i64) -> StoreError {
    match e {
        StoreError::Compacted(0) => StoreError::Compacted(revision),
        other => other,
    }
}

/// The smallest key after `key`.
fn key_after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// The end of the range of keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The `Get` responses of a transaction branch, in order.
fn txn_gets(resp: &TxnResponse) -> Vec<Option<KeyValue>> {
    resp.op_responses()
        .into_iter()
        .filter_map(|op| match op {
            TxnOpResponse::Get(mut get) => Some(get.take_kvs().into_iter().next()),
            _ => None,
        })
        .collect()
}

impl Store for EtcdStore {
    async fn init_meta(&self, meta: &Meta) -> StoreResult<Meta> {
        let key = self.keys.meta();
        let value = encode_json("meta", meta)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.txn("init meta", None, txn).await?;
        if resp.succeeded() {
            return Ok(meta.clone());
        }
        match txn_gets(&resp).into_iter().next().flatten() {
            Some(kv) => decode_json(self.keys.relative(&key), kv.value()),
            None => Err(StoreError::Unavailable(
                "init meta: etcd reported meta present but returned none".into(),
            )),
        }
    }

    async fn meta(&self) -> StoreResult<Option<Meta>> {
        let key = self.keys.meta();
        self.get("read meta", key.clone())
            .await?
            .map(|kv| decode_json(self.keys.relative(&key), kv.value()))
            .transpose()
    }

    async fn grant_lease(&self, ttl: Duration) -> StoreResult<LeaseId> {
        // etcd leases have whole-second TTLs; round up so the lease never
        // expires earlier than asked.
        let secs = i64::try_from(ttl.as_millis().div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1);
        let resp = self
            .ctx
            .call("grant lease", None, || {
                let mut client = self.conn.load().lease.clone();
                async move { client.grant(secs, None).await }
            })
            .await?;
        Ok(LeaseId(resp.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> StoreResult<()> {
        // One request and its response on the lease's open stream
        // (`KeepAlives`); a new stream when there is none or it failed.
        let current = self.conn.load_full();
        if let Some(mut open) = self.keep_alives.take(lease.0, &current) {
            match self.renew_on(&mut open, lease).await {
                Ok(()) => {
                    self.keep_alives.put(lease.0, open);
                    return Ok(());
                }
                Err(e @ StoreError::LeaseExpired(_)) => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, lease = lease.0, "keep-alive stream failed; opening a new one");
                }
            }
        }
        // Opening a stream sends the first request and reads its answer;
        // etcd-client reports a TTL <= 0 (the lease is gone) as "lease not found".
        let (keeper, responses) = self
            .ctx
            .call("keep lease alive", Some(lease.0), || {
                let mut client = current.lease.clone();
                async move { client.keep_alive(lease.0).await }
            })
            .await?;
        self.keep_alives.put(
            lease.0,
            KeepAliveStream {
                conn: Arc::downgrade(&current),
                keeper,
                responses,
            },
        );
        Ok(())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> StoreResult<()> {
        self.keep_alives.forget(lease.0);
        match self
            .ctx
            .call("revoke lease", Some(lease.0), || {
                let mut client = self.conn.load().lease.clone();
                async move { client.revoke(lease.0).await }
            })
            .await
        {
            Ok(_) | Err(StoreError::LeaseExpired(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn campaign(&self, lease: LeaseId, leader: &LeaderRecord) -> StoreResult<Option<Epoch>> {
        let key = self.keys.leader();
        let value = encode_json("leader record", leader)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(
                    key.clone(),
                    value,
                    Some(PutOptions::new().with_lease(lease.0)),
                ),
                TxnOp::get(key.clone(), None),
            ]);
        let resp = self.txn("campaign", Some(lease.0), txn).await?;
        if !resp.succeeded() {
            return Ok(None);
        }
        // The put and the get ran in one revision: this is our key.
        match txn_gets(&resp).into_iter().next().flatten() {
            Some(kv) => Ok(Some(kv.create_revision())),
            None => Err(StoreError::Unavailable(
                "campaign: etcd created the leader key but did not return it".into(),
            )),
        }
    }

    async fn leader(&self) -> StoreResult<Option<Leadership>> {
        self.get("read leader", self.keys.leader())
            .await?
            .map(|kv| self.decode_leader(&kv))
            .transpose()
    }

    async fn depose(&self, epoch: Epoch) -> StoreResult<bool> {
        let key = self.keys.leader();
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                epoch,
            )])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn("depose", None, txn).await?.succeeded())
    }

    fn watch_leader(&self) -> BoxStream<'static, StoreResult<Option<Leadership>>> {
        let watcher = LeaderWatcher {
            store: self.clone(),
            phase: LeaderPhase::Start,
            buf: VecDeque::new(),
        };
        end_after_error(stream::unfold(watcher, |mut w| async move {
            w.next().await.map(|item| (item, w))
        }))
    }

    async fn append(&self, epoch: Epoch, index: Index, entry: &[u8]) -> StoreResult<AppendOutcome> {
        if epoch <= 0 {
            // create_revision(leader) == 0 would hold for an *absent* leader.
            return Ok(AppendOutcome::Fenced);
        }
        let leader = self.keys.leader();
        let key = self.keys.log(index);
        #[cfg(not(feature = "unfenced-appends"))]
        let compares = [
            Compare::create_revision(leader.clone(), CompareOp::Equal, epoch),
            Compare::create_revision(key.clone(), CompareOp::Equal, 0),
        ];
        // A deliberately injected bug, for the fault suite (`dorado-faults`,
        // feature `bug-unfenced`) to prove it catches a missing fence: the
        // append skips the leader-epoch compare. Never in a release build.
        #[cfg(all(feature = "unfenced-appends", not(debug_assertions)))]
        compile_error!(
            "feature `unfenced-appends` removes the leader fence from appends; it exists only to test the fault suite and must never be built in a release profile"
        );
        #[cfg(feature = "unfenced-appends")]
        let compares = [Compare::create_revision(key.clone(), CompareOp::Equal, 0)];
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::put(key.clone(), entry, None)])
            .or_else([TxnOp::get(leader, None), TxnOp::get(key, None)]);
        let resp = self.txn("append", None, txn).await?;
        if resp.succeeded() {
            return Ok(AppendOutcome::Appended);
        }
        let mut gets = txn_gets(&resp).into_iter();
        let leader_kv = gets.next().flatten();
        let log_kv = gets.next().flatten();
        if leader_kv.map(|kv| kv.create_revision()) != Some(epoch) {
            return Ok(AppendOutcome::Fenced);
        }
        match log_kv {
            Some(kv) => Ok(AppendOutcome::Occupied(kv.value().to_vec())),
            None => Err(StoreError::Unavailable(format!(
                "append: etcd refused log/{index} but neither fence nor entry explain it"
            ))),
        }
    }

    async fn read_log(
        &self,
        from: Index,
        to: Index,
        limit: usize,
    ) -> StoreResult<Vec<(Index, Vec<u8>)>> {
        let mut out = Vec::new();
        if from > to || limit == 0 {
            return Ok(out);
        }
        let mut start = self.keys.log(from).into_bytes();
        let end = self.keys.log_end_inclusive(to).into_bytes();
        let mut revision = 0;
        loop {
            let want = (limit - out.len()).min(self.ctx.options.page_size.max(1));
            let page = self
                .range_page(
                    "read log",
                    start.clone(),
                    end.clone(),
                    want,
                    revision,
                    GetOptions::new(),
                )
                .await?;
            revision = page.revision;
            for kv in &page.kvs {
                out.push(self.decode_log(kv)?);
            }
            match page.kvs.last() {
                Some(last) if page.more && out.len() < limit => start = key_after(last.key()),
                _ => return Ok(out),
            }
        }
    }

    async fn last_index(&self, from: Index) -> StoreResult<Option<Index>> {
        // Not "sort descending, limit 1": etcd 3.4 drops the limit of a
        // sorted range and reads (and unmarshals) every value in it, so each
        // call cost the whole log; with replicas calling this every 250 ms
        // that was half of etcd's CPU under load. Instead, read the first key
        // at or above a candidate together with the number of keys there
        // (etcd counts from its in-memory index, without reading values).
        // `n` distinct indexes `>= first` put the highest at `>= first + n -
        // 1`, so jump there and read again. Without gaps (the usual log) that
        // is one read when at most one entry is above `from`, two otherwise;
        // each read fetches one value whatever the log's length.
        let mut candidate = from;
        let mut highest_seen = None;
        loop {
            let options = GetOptions::new()
                .with_range(self.keys.log_end())
                .with_keys_only()
                .with_limit(1);
            let resp = self
                .kv_get(
                    "read last index",
                    self.keys.log(candidate).into_bytes(),
                    Some(options),
                )
                .await?;
            let Some(kv) = resp.kvs().first() else {
                // Only reachable if entries vanished between two reads
                // (truncation never removes the highest entry): keep what
                // was seen.
                return Ok(highest_seen);
            };
            let (first, _) = self.decode_log(kv)?;
            let count = u64::try_from(resp.count()).unwrap_or(0);
            if count <= 1 {
                return Ok(Some(first));
            }
            highest_seen = Some(first);
            // > first >= candidate: every round moves forward.
            candidate = first.saturating_add(count - 1);
        }
    }

    fn watch_log(&self, from: Index) -> BoxStream<'static, StoreResult<(Index, Vec<u8>)>> {
        let watcher = LogWatcher {
            store: self.clone(),
            from,
            phase: LogPhase::Start,
            buf: VecDeque::new(),
        };
        end_after_error(stream::unfold(watcher, |mut w| async move {
            w.next().await.map(|item| (item, w))
        }))
    }

    async fn delete_log_below(&self, below: Index) -> StoreResult<()> {
        let options = DeleteOptions::new().with_range(self.keys.log(below));
        self.kv_delete("delete log", self.keys.log_prefix(), options)
            .await
    }

    async fn put_snapshot(&self, index: Index, bytes: &[u8]) -> StoreResult<()> {
        let keys = self.keys.clone();
        self.put_chunked(
            "write snapshot",
            index,
            self.keys.snap_manifest(index),
            bytes,
            |writer| keys.snap_chunk_dir(index, writer),
        )
        .await
    }

    async fn put_module(&self, sha256: &str, bytes: &[u8]) -> StoreResult<()> {
        check_module_bytes(sha256, bytes)?;
        let keys = self.keys.clone();
        self.put_chunked(
            "write module",
            0,
            self.keys.module_manifest(sha256),
            bytes,
            |writer| keys.module_chunk_dir(sha256, writer),
        )
        .await
    }

    async fn get_module(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>> {
        let keys = self.keys.clone();
        let manifest = self.keys.module_manifest(sha256).into_bytes();
        let bytes = self
            .read_chunked_at("read module", 0, manifest, 0, |writer| {
                keys.module_chunk_dir(sha256, writer)
            })
            .await?;
        match bytes {
            Some(b) => check_module_bytes(sha256, &b).map(|()| Some(b)),
            None => Ok(None),
        }
    }

    async fn newest_snapshot_index(&self) -> StoreResult<Option<Index>> {
        Ok(self.newest_manifest_key().await?.map(|(index, _, _)| index))
    }

    async fn newest_snapshot(&self) -> StoreResult<Option<(Index, Vec<u8>)>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some((index, key, revision)) = self.newest_manifest_key().await? else {
                return Ok(None);
            };
            // All reads at the scan's revision: a snapshot being replaced or
            // deleted meanwhile cannot tear what we read.
            match self.read_snapshot_at(index, key, revision).await {
                Err(StoreError::Compacted(_)) if attempt < SNAPSHOT_READ_ATTEMPTS => continue,
                Ok(None) if attempt < SNAPSHOT_READ_ATTEMPTS => continue,
                other => return other,
            }
        }
    }

    async fn delete_snapshots_below(&self, below: Index) -> StoreResult<()> {
        let options = DeleteOptions::new().with_range(self.keys.snap_below(below));
        self.kv_delete("delete snapshots", self.keys.snap_prefix(), options)
            .await
    }

    async fn publish_member(
        &self,
        lease: LeaseId,
        replica: &str,
        record: &MemberRecord,
    ) -> StoreResult<()> {
        let key = self.keys.member(replica)?;
        let value = encode_json("member record", record)?;
        let options = PutOptions::new().with_lease(lease.0);
        self.kv_put("publish member", Some(lease.0), key, value, Some(options))
            .await
    }

    async fn members(&self) -> StoreResult<Vec<(String, MemberRecord)>> {
        let mut out = Vec::new();
        let mut start = self.keys.members_prefix().into_bytes();
        let end = self.keys.members_end().into_bytes();
        let mut revision = 0;
        loop {
            let page = self
                .range_page(
                    "read members",
                    start.clone(),
                    end.clone(),
                    self.ctx.options.page_size.max(1),
                    revision,
                    GetOptions::new(),
                )
                .await?;
            revision = page.revision;
            for kv in &page.kvs {
                let rel = self.keys.relative_lossy(kv.key());
                let Some(replica) = self.keys.parse_member_key(kv.key()) else {
                    return Err(StoreError::Corrupt {
                        key: rel,
                        reason: "not a member key".into(),
                    });
                };
                out.push((replica, decode_json(&rel, kv.value())?));
            }
            match page.kvs.last() {
                Some(last) if page.more => start = key_after(last.key()),
                _ => return Ok(out),
            }
        }
    }
}

impl EtcdStore {
    async fn delete_prefix_best_effort(&self, prefix: &str) {
        let options = DeleteOptions::new().with_prefix();
        if let Err(e) = self
            .kv_delete("delete snapshot chunks", prefix.to_owned(), options)
            .await
        {
            tracing::warn!(
                prefix = self.keys.relative(prefix),
                error = %e,
                "could not delete unused snapshot chunks; they are removed with older snapshots"
            );
        }
    }
}

/// Turn a server-side watch cancel into the error the caller should see.
fn watch_cancelled(ctx: &Ctx, compact_revision: i64, reason: &str) -> StoreError {
    if compact_revision > 0 {
        return StoreError::Compacted(compact_revision);
    }
    classify(reason, None, false).unwrap_or_else(|| {
        StoreError::Unavailable(format!(
            "etcd at {} cancelled the watch: {}",
            ctx.endpoints,
            if reason.is_empty() {
                "no reason given"
            } else {
                reason
            }
        ))
    })
}

fn watch_ended(ctx: &Ctx) -> StoreError {
    StoreError::Unavailable(format!("watch stream from etcd at {} ended", ctx.endpoints))
}

enum LogPhase {
    Start,
    /// Paging through the entries that existed at `revision`.
    Existing {
        next: Option<Vec<u8>>,
        revision: i64,
    },
    // Boxed: a watch stream is large, the other phases are small.
    Live(Box<WatchStream>),
    Done,
}

/// State of one `watch_log` stream; see the module docs.
struct LogWatcher {
    store: EtcdStore,
    from: Index,
    phase: LogPhase,
    buf: VecDeque<StoreResult<(Index, Vec<u8>)>>,
}

impl LogWatcher {
    async fn next(&mut self) -> Option<StoreResult<(Index, Vec<u8>)>> {
        let store = self.store.clone();
        let end = store.keys.log_end().into_bytes();
        loop {
            if let Some(item) = self.buf.pop_front() {
                return Some(item);
            }
            match std::mem::replace(&mut self.phase, LogPhase::Done) {
                LogPhase::Done => return None,
                LogPhase::Start => {
                    let start = store.keys.log(self.from).into_bytes();
                    match self.page(&store, start, end.clone(), 0).await {
                        Ok(phase) => self.phase = phase,
                        Err(e) => return Some(Err(e)),
                    }
                }
                LogPhase::Existing {
                    next: Some(start),
                    revision,
                } => match self.page(&store, start, end.clone(), revision).await {
                    Ok(phase) => self.phase = phase,
                    Err(e) => return Some(Err(e)),
                },
                LogPhase::Existing {
                    next: None,
                    revision,
                } => {
                    let watch = store
                        .open_watch(
                            "watch log",
                            store.keys.log(self.from),
                            Some(store.keys.log_end()),
                            revision + 1,
                            vec![WatchFilterType::NoDelete],
                        )
                        .await;
                    match watch {
                        Ok(watch) => self.phase = LogPhase::Live(Box::new(watch)),
                        Err(e) => return Some(Err(e)),
                    }
                }
                LogPhase::Live(mut watch) => match watch.message().await {
                    Ok(Some(resp)) => {
                        if resp.canceled() || resp.compact_revision() > 0 {
                            return Some(Err(watch_cancelled(
                                &store.ctx,
                                resp.compact_revision(),
                                resp.cancel_reason(),
                            )));
                        }
                        for event in resp.events() {
                            if event.event_type() != EventType::Put {
                                continue;
                            }
                            if let Some(kv) = event.kv() {
                                self.buf.push_back(store.decode_log(kv));
                            }
                        }
                        self.phase = LogPhase::Live(watch);
                    }
                    Ok(None) => return Some(Err(watch_ended(&store.ctx))),
                    Err(e) => return Some(Err(store.ctx.map_err("watch log", None, e))),
                },
            }
        }
    }

    async fn page(
        &mut self,
        store: &EtcdStore,
        start: Vec<u8>,
        end: Vec<u8>,
        revision: i64,
    ) -> StoreResult<LogPhase> {
        let page = store
            .range_page(
                "watch log (read existing)",
                start,
                end,
                store.ctx.options.page_size.max(1),
                revision,
                GetOptions::new(),
            )
            .await?;
        for kv in &page.kvs {
            self.buf.push_back(store.decode_log(kv));
        }
        let next = match page.kvs.last() {
            Some(last) if page.more => Some(key_after(last.key())),
            _ => None,
        };
        Ok(LogPhase::Existing {
            next,
            revision: page.revision,
        })
    }
}

enum LeaderPhase {
    Start,
    Live(Box<WatchStream>),
    Done,
}

/// State of one `watch_leader` stream.
struct LeaderWatcher {
    store: EtcdStore,
    phase: LeaderPhase,
    buf: VecDeque<StoreResult<Option<Leadership>>>,
}

impl LeaderWatcher {
    async fn next(&mut self) -> Option<StoreResult<Option<Leadership>>> {
        let store = self.store.clone();
        loop {
            if let Some(item) = self.buf.pop_front() {
                return Some(item);
            }
            match std::mem::replace(&mut self.phase, LeaderPhase::Done) {
                LeaderPhase::Done => return None,
                LeaderPhase::Start => {
                    let key = store.keys.leader();
                    let mut resp = match store
                        .kv_get("read leader", key.clone().into_bytes(), None)
                        .await
                    {
                        Ok(resp) => resp,
                        Err(e) => return Some(Err(e)),
                    };
                    let revision = resp.header().map_or(0, |h| h.revision());
                    let current = resp
                        .take_kvs()
                        .first()
                        .map(|kv| store.decode_leader(kv))
                        .transpose();
                    match store
                        .open_watch("watch leader", key, None, revision + 1, Vec::new())
                        .await
                    {
                        Ok(watch) => self.phase = LeaderPhase::Live(Box::new(watch)),
                        Err(e) => return Some(Err(e)),
                    }
                    return Some(current);
                }
                LeaderPhase::Live(mut watch) => match watch.message().await {
                    Ok(Some(resp)) => {
                        if resp.canceled() || resp.compact_revision() > 0 {
                            return Some(Err(watch_cancelled(
                                &store.ctx,
                                resp.compact_revision(),
                                resp.cancel_reason(),
                            )));
                        }
                        for event in resp.events() {
                            let item = match (event.event_type(), event.kv()) {
                                (EventType::Put, Some(kv)) => store.decode_leader(kv).map(Some),
                                (EventType::Delete, _) => Ok(None),
                                (EventType::Put, None) => continue,
                            };
                            self.buf.push_back(item);
                        }
                        self.phase = LeaderPhase::Live(watch);
                    }
                    Ok(None) => return Some(Err(watch_ended(&store.ctx))),
                    Err(e) => return Some(Err(store.ctx.map_err("watch leader", None, e))),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_message() {
        assert!(matches!(
            classify("etcdserver: mvcc: database space exceeded", None, false),
            Some(StoreError::NoSpace(_))
        ));
        assert_eq!(
            classify("etcdserver: requested lease not found", Some(7), false),
            Some(StoreError::LeaseExpired(7))
        );
        assert_eq!(
            classify(
                "etcdserver: mvcc: required revision has been compacted",
                None,
                false
            ),
            Some(StoreError::Compacted(0))
        );
        assert!(matches!(
            classify("etcdserver: request is too large", None, true),
            Some(StoreError::InvalidArgument(_))
        ));
        assert!(matches!(
            classify(
                "grpc: received message larger than max (2097381 vs. 2097152)",
                None,
                false
            ),
            Some(StoreError::InvalidArgument(_))
        ));
        assert_eq!(classify("etcdserver: no leader", None, false), None);
    }

    #[test]
    fn key_helpers() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(key_after(b"k"), b"k\0".to_vec());
    }
}
