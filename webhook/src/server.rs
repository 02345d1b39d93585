//! HTTP glue: the HTTPS `/mutate` router, the plain-HTTP admin router and [`serve`].
//! All decisions live in [`crate::review`]; handlers only read the body, call it, count
//! and log.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
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
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
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

async fn mutate(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    st.metrics.requests.inc();
    let response = answer(&st, &headers, body).await;
    st.metrics.duration.observe(started.elapsed().as_secs_f64());
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

async fn answer(st: &AppState, headers: &HeaderMap, body: Body) -> Response {
    let m = &st.metrics;
    if let Err(msg) = is_json(headers) {
        m.error(ErrorReason::ContentType);
        return plain_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, msg);
    }
    let too_large = || {
        m.error(ErrorReason::TooLarge);
        plain_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body exceeds the limit of {} bytes",
                st.max_body_bytes
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > st.max_body_bytes as u64) {
        return too_large();
    }
    let bytes = match Limited::new(body, st.max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Err(e) => {
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
