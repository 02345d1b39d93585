//! HTTP glue: the HTTPS `/mutate` router, the plain-HTTP admin router and [`serve`].
//! All decisions live in [`crate::review`]; handlers only read the body, call it, count
//! and log.
//!
//! # Early answers and the request body
//!
//! Requests refused before they are reviewed (wrong `Content-Type` → 415, body over
//! `max_body_bytes` → 413, undecodable → 400, another path → 404, another method → 405)
//! are answered only after the request body has been read to its end ([`read_body`] is
//! the one place bodies are read). Answering while the client is still uploading is what
//! made these answers unreliable:
//!
//! - HTTP/2 (what the API server speaks): when the handler has dropped an unfinished
//!   request body, h2 ends the stream after the response with `RST_STREAM`. h2 0.4 sends
//!   `NO_ERROR` there once the response is complete, which RFC 9113 §8.1 allows ("stop
//!   uploading, keep the response"), but clients differ: curl 7.88 reports the stream as
//!   failed (exit 92) and never shows the 415. A body read to its end leaves the stream
//!   half-closed by the client, so the complete answer closes it with no reset at all.
//! - HTTP/1.1: hyper closes a connection whose request body was not read, and closing a
//!   TCP socket with unread data sends a TCP RST: the client's next write fails (hyper
//!   and reqwest then report a broken pipe instead of the answer) and the answer can be
//!   dropped from its receive buffer.
//!
//! Only the first `max_body_bytes` are kept. A body over that limit is still read, and
//! discarded, up to [`DRAIN_FACTOR`] times the limit, so a client that sends a body a
//! little too large gets a clean 413 over both protocols. A body beyond that (or whose
//! `Content-Length` says so) is answered 413 at once: reading it to the end would let one
//! request make the server read without bound. Over HTTP/2 the request body is then
//! dropped while the response stream is still open, so h2 sends the complete 413
//! (headers, reason, `END_STREAM`) and only then `RST_STREAM(NO_ERROR)`. Go's
//! `net/http` (the API server), hyper and reqwest (tested in `tests/early_answers.rs`) and
//! .NET since 3.0 keep the response; curl 7.88 still reports exit 92 for it (curl's
//! handling of early HTTP/2 answers changed over releases, e.g. curl/curl#15325 and
//! #22987). Over HTTP/1.1 that 413 carries `Connection: close`, and a client still
//! uploading may see the connection reset instead (curl sends `Expect: 100-continue` for
//! such bodies and gets the 413 cleanly). The API server never gets there: its admission
//! requests stay far below the default limit.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt as _;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, MutationConfig, ServeConfig};
use crate::metrics::{ErrorReason, Metrics};
use crate::review::{self, Outcome};
use crate::tls::{self, CertStore, TlsError};

/// State of the `/mutate` router.
#[derive(Debug, Clone)]
pub struct AppState {
    /// How pods are rewritten.
    pub mutation: Arc<MutationConfig>,
    /// Where requests are counted.
    pub metrics: Arc<Metrics>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
}

impl AppState {
    /// State with fresh metrics.
    pub fn new(mutation: MutationConfig, max_body_bytes: usize) -> Self {
        Self {
            mutation: Arc::new(mutation),
            metrics: Arc::new(Metrics::new()),
            max_body_bytes,
        }
    }
}

/// State of the admin router.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Exposed at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// `/readyz` fails until it holds a certificate.
    pub certs: Arc<CertStore>,
    /// Set once shutdown began; `/readyz` then fails.
    pub stopping: Arc<AtomicBool>,
}

/// `POST /mutate`.
///
/// Other paths get 404 and other methods 405, each after the request body was read (see
/// the module documentation).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .method_not_allowed_fallback(wrong_method)
        .fallback(not_found)
        .with_state(state)
}

/// `GET /healthz`, `GET /readyz`, `GET /metrics`.
pub fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(st): State<AdminState>) -> Response {
    if st.stopping.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else if !st.certs.is_loaded() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no serving certificate loaded\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics(State(st): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response()
}

async fn mutate(
    State(st): State<AppState>,
    version: Version,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    st.metrics.requests.inc();
    let response = answer(&st, version, &headers, body).await;
    st.metrics.duration.observe(started.elapsed().as_secs_f64());
    response
}

async fn not_found(
    State(st): State<AppState>,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let read = read_body(body, &headers, st.max_body_bytes).await;
    let message = format!("no such endpoint {}; expected POST /mutate", uri.path());
    unread_tail(version, &read, plain_error(StatusCode::NOT_FOUND, message))
}

async fn wrong_method(
    State(st): State<AppState>,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let read = read_body(body, &headers, st.max_body_bytes).await;
    let message = format!(
        "method {method} not allowed on {}; expected POST",
        uri.path()
    );
    let mut response = plain_error(StatusCode::METHOD_NOT_ALLOWED, message);
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    unread_tail(version, &read, response)
}

/// How much of a body over `max_body_bytes` is still read (and discarded) so that the
/// 413 reaches the client cleanly: bodies up to this many times the limit.
pub const DRAIN_FACTOR: usize = 4;

/// Why a request body could not be read in full.
#[derive(Debug)]
enum BodyError {
    /// It is (or declares to be) longer than the limit. `unread`: the rest of it was not
    /// read (it is longer than [`DRAIN_FACTOR`] times the limit).
    TooLarge { unread: bool },
    /// The transport failed (client reset, malformed framing).
    Read(String),
}

/// Reads the whole request body and returns it if it is at most `limit` bytes long. Every
/// handler reads the body with this before answering, even when it already knows the
/// answer (see the module documentation). A longer body is read and discarded up to
/// [`DRAIN_FACTOR`] times `limit`; only `limit` bytes are ever held in memory.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, BodyError> {
    let drain = limit.saturating_mul(DRAIN_FACTOR);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > drain as u64) {
        return Err(BodyError::TooLarge { unread: true });
    }
    let mut body = body;
    let mut kept = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        total = total.saturating_add(data.len());
        if total > drain {
            return Err(BodyError::TooLarge { unread: true });
        }
        if total <= limit {
            kept.extend_from_slice(&data);
        } else {
            kept = Vec::new();
        }
    }
    if total > limit {
        Err(BodyError::TooLarge { unread: false })
    } else {
        Ok(Bytes::from(kept))
    }
}

/// Marks `response` as the connection's last over HTTP/1.x when part of the request body
/// is still unread (hyper closes such connections; the header tells the client). HTTP/2
/// needs nothing: h2 resets only that stream, with `NO_ERROR`, after the response.
fn unread_tail(
    version: Version,
    read: &Result<Bytes, BodyError>,
    mut response: Response,
) -> Response {
    let http1 = matches!(
        version,
        Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11
    );
    if http1 && matches!(read, Err(BodyError::TooLarge { unread: true })) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn plain_error(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response()
}

fn is_json(headers: &HeaderMap) -> Result<(), String> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .ok_or_else(|| "missing Content-Type; expected application/json".to_owned())?;
    let text = value.to_str().unwrap_or("");
    let essence = text.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(format!(
            "unsupported Content-Type {text:?}; expected application/json"
        ))
    }
}

async fn answer(st: &AppState, version: Version, headers: &HeaderMap, body: Body) -> Response {
    let m = &st.metrics;
    // Read first, whatever the answer (see the module documentation).
    let read = read_body(body, headers, st.max_body_bytes).await;
    if let Err(msg) = is_json(headers) {
        m.error(ErrorReason::ContentType);
        let response = plain_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, msg);
        return unread_tail(version, &read, response);
    }
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge { unread }) => {
            m.error(ErrorReason::TooLarge);
            let response = plain_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body exceeds the limit of {} bytes",
                    st.max_body_bytes
                ),
            );
            return unread_tail(version, &Err(BodyError::TooLarge { unread }), response);
        }
        Err(BodyError::Read(e)) => {
            m.error(ErrorReason::BodyRead);
            return plain_error(
                StatusCode::BAD_REQUEST,
                format!("cannot read request body: {e}"),
            );
        }
    };
    let reviewed = match review::review(&bytes, &st.mutation) {
        Ok(r) => r,
        Err(e) => {
            m.error(ErrorReason::BadRequest);
            tracing::warn!(error = %e, "rejected admission request");
            return plain_error(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    match reviewed.outcome {
        Outcome::Mutated => {
            m.mutated.inc();
            tracing::info!(uid = %reviewed.uid, pod = %reviewed.subject, "mutated");
        }
        Outcome::Skipped => {
            m.skipped.inc();
            tracing::debug!(uid = %reviewed.uid, pod = %reviewed.subject, reason = %reviewed.detail, "skipped");
        }
        Outcome::Denied => {
            m.denied.inc();
            tracing::info!(uid = %reviewed.uid, pod = %reviewed.subject, reason = %reviewed.detail, "denied");
        }
        Outcome::Invalid => {
            m.error(ErrorReason::Invalid);
            tracing::warn!(uid = %reviewed.uid, reason = %reviewed.detail, "invalid admission request");
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        reviewed.body,
    )
        .into_response()
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The mutation configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The TLS configuration could not be built.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// A listener could not be prepared.
    #[error("listener: {0}")]
    Listener(#[source] std::io::Error),
    /// The HTTPS server failed.
    #[error("https server: {0}")]
    Https(#[source] std::io::Error),
    /// The admin server failed.
    #[error("admin server: {0}")]
    Admin(#[source] std::io::Error),
}

/// Runs the HTTPS webhook on `listener` and the admin endpoints on `admin_listener` until
/// `shutdown` resolves; then `/readyz` fails for `shutdown_delay` while requests are still
/// served, in-flight connections get `shutdown_grace` to finish, and the certificate
/// watcher stops.
///
/// The server starts even when no certificate can be loaded yet: handshakes fail and
/// `/readyz` reports 503 until the watcher finds a valid pair.
pub async fn serve(
    listener: std::net::TcpListener,
    admin_listener: std::net::TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    config.mutation.validate()?;
    let metrics = Arc::new(Metrics::new());
    let certs = Arc::new(CertStore::new(config.tls.clone()));
    let mut first_error = None;
    tls::reload_and_report(&certs, &metrics, &mut first_error);
    let tls_config = tls::server_config(certs.clone())?;

    let stop = CancellationToken::new();
    let stopping = Arc::new(AtomicBool::new(false));
    let app = router(AppState {
        mutation: Arc::new(config.mutation.clone()),
        metrics: metrics.clone(),
        max_body_bytes: config.max_body_bytes,
    });
    let admin = admin_router(AdminState {
        metrics: metrics.clone(),
        certs: certs.clone(),
        stopping: stopping.clone(),
    });

    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "webhook listening (https)");
    }
    let handle = axum_server::Handle::<SocketAddr>::new();
    let https_server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(tls_config),
    )
    .map_err(ServeError::Listener)?
    .handle(handle.clone());
    admin_listener
        .set_nonblocking(true)
        .map_err(ServeError::Listener)?;
    let admin_listener =
        tokio::net::TcpListener::from_std(admin_listener).map_err(ServeError::Listener)?;
    if let Ok(addr) = admin_listener.local_addr() {
        tracing::info!(%addr, "admin endpoints listening");
    }

    let https = async {
        let r = https_server
            .serve(app.into_make_service())
            .await
            .map_err(ServeError::Https);
        stop.cancel();
        r
    };
    let admin_task = async {
        let r = axum::serve(admin_listener, admin)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .await
            .map_err(ServeError::Admin);
        stop.cancel();
        r
    };
    let control = async {
        tokio::select! {
            () = shutdown => {
                stopping.store(true, Ordering::Relaxed);
                tracing::info!(delay = ?config.shutdown_delay, "shutdown requested; draining");
                tokio::select! {
                    () = tokio::time::sleep(config.shutdown_delay) => {}
                    () = stop.cancelled() => {}
                }
            }
            () = stop.cancelled() => {}
        }
        handle.graceful_shutdown(Some(config.shutdown_grace));
        stop.cancel();
    };
    let watcher = tls::watch(certs, metrics, config.reload_interval, stop.clone());
    let (https, admin, (), ()) = tokio::join!(https, admin_task, control, watcher);
    https?;
    admin?;
    tracing::info!("stopped");
    Ok(())
}
