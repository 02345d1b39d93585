//! The client API every replica serves (default port 7070).
//!
//! Handlers only translate HTTP to [`Replica`] calls and back; every decision
//! about ordering lives in the node. Errors are JSON with a stable `code` (for
//! programs) and a human `message` (for people); the codes are listed in
//! `runtime/README.md`. Request validation happens here, before anything can
//! reach the log: an empty command, a malformed header or an oversized body is
//! answered with 400/413 and never ordered.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dorado_core::entry::MAX_CLIENT_ID;
use dorado_core::{ClientTag, Command, Outcome};
use serde::Deserialize;

use crate::forward::{
    FORWARD_PATH, ForwardCommand, ForwardReply, Forwarded, Forwarder, MAX_BATCH_BYTES,
};
use crate::node::{Consistency, Node, QueryError, SubmitError, SubmitReply};
use crate::replica::Replica;
use crate::wire::{ErrorBody, ErrorCode, UpgradeRequest};

/// Header carrying the client id for exactly-once delivery.
pub const CLIENT_ID: &str = "dorado-client-id";
/// Header carrying the client's sequence number.
pub const SEQ: &str = "dorado-seq";
/// Response header with the log index that ordered the command.
pub const INDEX: &str = "dorado-index";
/// Response header set when the reply came from the session table.
pub const DUPLICATE: &str = "dorado-duplicate";
/// Response header naming the leader's address, when known.
pub const LEADER: &str = "dorado-leader";
/// Request header marking a follower-to-leader forward (never forwarded again).
pub const FORWARDED: &str = "dorado-forwarded";

/// Default largest command body: well under etcd's 1.5 MiB request limit,
/// leaving room for the batch framing and other commands.
pub const DEFAULT_MAX_COMMAND_BYTES: usize = 512 * 1024;

/// What the API needs. The replica is attached once it has connected to the
/// store; until then every route but `/healthz` answers 503, so probes and
/// clients see a clear "starting" state while etcd is unreachable.
pub struct ApiState {
    started: OnceLock<Arc<dyn Replica>>,
    /// Why the last attempt to connect to the store failed, while starting.
    connect_error: std::sync::Mutex<Option<String>>,
    /// Client used to forward writes to the leader.
    pub http: reqwest::Client,
    /// Largest accepted command or query, in bytes.
    pub max_command_bytes: usize,
    /// Batches the writes this replica forwards to the leader.
    forwarder: Forwarder,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field(
                "started",
                &self.started.get().map(|r| r.replica_id().to_string()),
            )
            .field("max_command_bytes", &self.max_command_bytes)
            .finish()
    }
}

impl ApiState {
    /// State with a forwarding client and a size limit; attach the node later.
    ///
    /// Forwarding to the leader is plain HTTP inside the pod network
    /// ([`crate::replica_http`]).
    pub fn new(max_command_bytes: usize) -> Result<Self, reqwest::Error> {
        let http = crate::replica_http(Duration::from_secs(15))
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(ApiState {
            started: OnceLock::new(),
            connect_error: std::sync::Mutex::new(None),
            forwarder: Forwarder::new(http.clone()),
            http,
            max_command_bytes,
        })
    }

    /// Attach the running replica (once).
    pub fn attach(&self, node: Node) {
        self.attach_replica(Arc::new(node));
    }

    /// Attach a running replica of any protocol (once).
    pub fn attach_replica(&self, replica: Arc<dyn Replica>) {
        let _ = self.started.set(replica);
    }

    /// Record why connecting to the store failed (`None` once it answered),
    /// so that `/readyz` and every other route say it while starting.
    pub fn set_connect_error(&self, error: Option<String>) {
        *self
            .connect_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = error;
    }

    fn started(&self) -> Result<&Arc<dyn Replica>, ApiError> {
        self.started.get().ok_or_else(|| {
            let error = self
                .connect_error
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone();
            let message = match error {
                Some(e) => format!("replica is starting: cannot connect to the store: {e}"),
                None => "replica is starting: connecting to the store and recovering state".into(),
            };
            ApiError::new(ErrorCode::Starting, message)
        })
    }
}

/// A JSON error response: an [`ErrorBody`] with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status (the code's own, [`ErrorCode::http_status`], but for a
    /// lost forwarded answer).
    pub status: StatusCode,
    /// What the client reads.
    pub body: ErrorBody,
}

impl ApiError {
    /// An error with the code's own HTTP status.
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::from_u16(code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body: ErrorBody {
                code,
                message: message.into(),
                leader: None,
                index: None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let leader = self
            .body
            .leader
            .as_deref()
            .and_then(|l| HeaderValue::from_str(l).ok());
        let index = self.body.index;
        let mut resp = (self.status, axum::Json(self.body)).into_response();
        if let Some(l) = leader {
            resp.headers_mut().insert(LEADER, l);
        }
        if let Some(i) = index {
            resp.headers_mut().insert(INDEX, HeaderValue::from(i));
        }
        resp
    }
}

/// The router of the client API.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/commands", post(submit))
        .route("/v1/upgrade", post(upgrade))
        .route(FORWARD_PATH, post(forward_batch))
        .route("/v1/query", post(query))
        .route("/v1/status", get(status))
        .route("/v1/snapshot", get(snapshot))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Serve `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!(
            "no route for {} {}; the API has POST /v1/commands, POST /v1/query, GET /v1/status, /healthz, /readyz, /metrics",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Parse the exactly-once headers: both or neither; id printable ASCII up to
/// 255 bytes; seq a positive integer.
pub fn parse_client_tag(headers: &HeaderMap) -> Result<Option<ClientTag>, ApiError> {
    let bad = |m: String| ApiError::new(ErrorCode::BadHeader, m);
    let id = headers.get(CLIENT_ID);
    let seq = headers.get(SEQ);
    match (id, seq) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(bad(format!(
            "{CLIENT_ID} is set but {SEQ} is missing; send both (seq = 1, 2, 3, ... per client) or neither"
        ))),
        (None, Some(_)) => Err(bad(format!(
            "{SEQ} is set but {CLIENT_ID} is missing; send both or neither"
        ))),
        (Some(id), Some(seq)) => {
            let id = id
                .to_str()
                .ok()
                .filter(|s| {
                    !s.is_empty()
                        && s.len() <= MAX_CLIENT_ID
                        && s.bytes().all(|b| b.is_ascii_graphic())
                })
                .ok_or_else(|| {
                    bad(format!(
                        "{CLIENT_ID} must be 1 to {MAX_CLIENT_ID} printable ASCII characters without spaces"
                    ))
                })?;
            let seq_text = seq.to_str().unwrap_or("");
            let seq: u64 = seq_text
                .trim()
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    bad(format!(
                        "{SEQ} must be a positive integer (1, 2, 3, ...), got {seq_text:?}"
                    ))
                })?;
            Ok(Some(ClientTag {
                id: id.to_string(),
                seq,
            }))
        }
    }
}

async fn read_body(body: Body, max: usize, what: &str) -> Result<Bytes, ApiError> {
    let bytes = axum::body::to_bytes(body, max).await.map_err(|_| {
        ApiError::new(
            ErrorCode::TooLarge,
            format!("{what} is larger than the limit of {max} bytes"),
        )
    })?;
    if bytes.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Empty,
            format!(
                "{what} is empty; send the bytes your state machine expects as the request body"
            ),
        ));
    }
    Ok(bytes)
}

fn reply_response(r: SubmitReply) -> Response {
    match r.outcome {
        Outcome::Reply(bytes) => {
            let mut resp = (StatusCode::OK, bytes).into_response();
            let h = resp.headers_mut();
            h.insert(INDEX, HeaderValue::from(r.index));
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            if r.duplicate {
                h.insert(DUPLICATE, HeaderValue::from_static("true"));
            }
            resp
        }
        Outcome::Rejected(reason) => {
            let mut e = ApiError::new(ErrorCode::Rejected, reason);
            e.body.index = Some(r.index);
            e.into_response()
        }
    }
}

async fn submit(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let client = parse_client_tag(&headers)?;
    let payload = read_body(body, state.max_command_bytes, "command").await?;
    let node = state.started()?;
    let command = Command {
        client: client.clone(),
        payload: payload.to_vec(),
    };
    match node.submit(command).await {
        Ok(r) => Ok(reply_response(r)),
        Err(SubmitError::Forward(addr)) if !headers.contains_key(FORWARDED) => {
            forward_batched(&state, node, &addr, client, payload).await
        }
        Err(e) => Err(submit_error(e)),
    }
}

/// `POST /v1/upgrade` with `{"module":"<sha256>"}`: order a switch of the
/// group to a module already in the store. Answered like a command: once
/// the upgrade entry is applied here, with its outcome.
async fn upgrade(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let payload = read_body(body, 64 * 1024, "upgrade request").await?;
    let request: UpgradeRequest = serde_json::from_slice(&payload).map_err(|e| {
        ApiError::new(
            ErrorCode::UnknownModule,
            format!(
                "the upgrade request is not valid ({e}); expected {{\"module\":\"<sha256 of a module in the store, 64 lowercase hex digits>\"}}"
            ),
        )
    })?;
    let node = state.started()?;
    match node.propose_upgrade(request.module).await {
        Ok(r) => Ok(reply_response(r)),
        Err(SubmitError::Forward(addr)) if !headers.contains_key(FORWARDED) => {
            forward(&state, node, &addr, "/v1/upgrade", None, payload).await
        }
        Err(SubmitError::Invalid(e)) => Err(ApiError::new(ErrorCode::UnknownModule, e.to_string())),
        Err(e) => Err(submit_error(e)),
    }
}

fn submit_error(e: SubmitError) -> ApiError {
    let code = match &e {
        SubmitError::Forward(_) => ErrorCode::NotLeader,
        SubmitError::NoLeader => ErrorCode::NoLeader,
        SubmitError::NotOrdered => ErrorCode::NotOrdered,
        SubmitError::Unknown => ErrorCode::UnknownOutcome,
        SubmitError::ShuttingDown => ErrorCode::ShuttingDown,
        SubmitError::Timeout(_) => ErrorCode::Timeout,
        SubmitError::Invalid(_) => ErrorCode::InvalidCommand,
        SubmitError::UnknownModule(_) => ErrorCode::UnknownModule,
        SubmitError::Unsupported(_) => ErrorCode::Unsupported,
    };
    let mut err = ApiError::new(code, e.to_string());
    if let SubmitError::Forward(addr) = e {
        err.body.leader = Some(addr);
    }
    err
}

/// Forward a write to the leader in a batch with the other writes being
/// forwarded ([`crate::forward`]), then answer only once this replica has
/// applied it too (so a client that reads here next sees its write).
async fn forward_batched(
    state: &ApiState,
    node: &Arc<dyn Replica>,
    leader: &str,
    client: Option<ClientTag>,
    payload: Bytes,
) -> Result<Response, ApiError> {
    let command = ForwardCommand {
        client: client.clone(),
        payload: payload.clone(),
    };
    let reply = match state
        .forwarder
        .forward(node.replica_id(), leader, command)
        .await
    {
        Forwarded::Reply(reply) => reply,
        Forwarded::Fallback => {
            return forward(
                state,
                node,
                leader,
                "/v1/commands",
                client.as_ref(),
                payload,
            )
            .await;
        }
        Forwarded::Unreachable { status, message } => {
            let mut err = ApiError::new(
                ErrorCode::LeaderUnreachable,
                format!(
                    "{message}; if the command was sent with a client id and seq, retrying it is safe"
                ),
            );
            err.status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            err.body.leader = Some(leader.to_string());
            return Err(err);
        }
    };
    if let Some(index) = reply.index {
        // Best effort: the leader has applied it; if we lag, still answer.
        node.wait_applied(index).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = (status, reply.body).into_response();
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(if status == StatusCode::OK {
            "application/octet-stream"
        } else {
            "application/json"
        }),
    );
    if let Some(i) = reply.index {
        h.insert(INDEX, HeaderValue::from(i));
    }
    if reply.duplicate {
        h.insert(DUPLICATE, HeaderValue::from_static("true"));
    }
    if let Some(l) = reply.leader.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(LEADER, l);
    }
    Ok(resp)
}

/// `POST /v1/forward` (from followers and batching clients,
/// [`crate::client::Client::batched`]): a batch of writes. Each is
/// checked like `POST /v1/commands` checks one, all are submitted at once,
/// and each gets its own answer (never forwarded again), in batch order.
async fn forward_batch(
    State(state): State<Arc<ApiState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let limit = MAX_BATCH_BYTES.max(state.max_command_bytes) * 2;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            ErrorCode::TooLarge,
            format!("forwarded batch is larger than the limit of {limit} bytes"),
        )
    })?;
    let commands = crate::forward::decode_request(bytes)
        .map_err(|e| ApiError::new(ErrorCode::BadHeader, e.to_string()))?;
    let node = state.started()?;
    let max = state.max_command_bytes;
    let answers = commands.into_iter().map(|c| async move {
        if c.payload.is_empty() {
            return error_reply(ApiError::new(ErrorCode::Empty, "command is empty"));
        }
        if c.payload.len() > max {
            return error_reply(ApiError::new(
                ErrorCode::TooLarge,
                format!("command is larger than the limit of {max} bytes"),
            ));
        }
        let command = Command {
            client: c.client,
            payload: c.payload.to_vec(),
        };
        match node.submit(command).await {
            Ok(r) => match r.outcome {
                Outcome::Reply(bytes) => ForwardReply {
                    status: 200,
                    index: Some(r.index),
                    duplicate: r.duplicate,
                    leader: None,
                    body: Bytes::from(bytes),
                },
                Outcome::Rejected(reason) => {
                    let mut e = ApiError::new(ErrorCode::Rejected, reason);
                    e.body.index = Some(r.index);
                    error_reply(e)
                }
            },
            Err(e) => error_reply(submit_error(e)),
        }
    });
    let replies = futures::future::join_all(answers).await;
    Ok((
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "application/octet-stream")],
        crate::forward::encode_replies(&replies),
    )
        .into_response())
}

/// An API error as a forwarded command's answer.
fn error_reply(e: ApiError) -> ForwardReply {
    ForwardReply {
        status: e.status.as_u16(),
        index: e.body.index,
        duplicate: false,
        leader: e.body.leader.clone(),
        body: Bytes::from(serde_json::to_vec(&e.body).unwrap_or_default()),
    }
}

/// Forward a write to the leader, then answer only once this replica has
/// applied it too (so a client that reads here next sees its write).
async fn forward(
    state: &ApiState,
    node: &Arc<dyn Replica>,
    leader: &str,
    path: &str,
    client: Option<&ClientTag>,
    payload: Bytes,
) -> Result<Response, ApiError> {
    let mut req = state
        .http
        .post(format!("http://{leader}{path}"))
        .header(FORWARDED, node.replica_id())
        .body(payload);
    if let Some(c) = client {
        req = req.header(CLIENT_ID, &c.id).header(SEQ, c.seq.to_string());
    }
    let resp = req.send().await.map_err(|e| {
        let mut err = ApiError::new(
            ErrorCode::LeaderUnreachable,
            format!(
                "cannot reach the leader at {leader}: {e}; if the command was sent with a client id and seq, retrying it is safe"
            ),
        );
        err.body.leader = Some(leader.to_string());
        err
    })?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    for (k, v) in resp.headers() {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_str().as_bytes()),
            HeaderValue::from_bytes(v.as_bytes()),
        ) {
            headers.insert(k, v);
        }
    }
    let body = resp.bytes().await.map_err(|e| ApiError {
        status: StatusCode::BAD_GATEWAY,
        ..ApiError::new(
            ErrorCode::LeaderUnreachable,
            format!("the leader at {leader} dropped the reply: {e}; retry with the same client id and seq"),
        )
    })?;
    let index = headers
        .get(INDEX)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(index) = index {
        // Best effort: the leader has applied it; if we lag, still answer.
        node.wait_applied(index).await;
    }
    headers.remove(http::header::CONTENT_LENGTH);
    headers.remove(http::header::TRANSFER_ENCODING);
    headers.remove(http::header::CONNECTION);
    Ok((status, headers, body).into_response())
}

#[derive(Debug, Deserialize)]
struct QueryParams {
    consistency: Option<String>,
}

async fn query(
    State(state): State<Arc<ApiState>>,
    params: Result<Query<QueryParams>, QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    // axum's own rejection is plain text; the API answers JSON errors only.
    let Query(params) = params.map_err(|e| {
        ApiError::new(
            ErrorCode::BadParameter,
            format!(
                "{}; the only parameter is consistency=linearizable|stale",
                e.body_text()
            ),
        )
    })?;
    let consistency = match params.consistency.as_deref() {
        None | Some("linearizable") => Consistency::Linearizable,
        Some("stale") => Consistency::Stale,
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::BadParameter,
                format!(
                    "consistency must be \"linearizable\" (default) or \"stale\", got {other:?}"
                ),
            ));
        }
    };
    let q = read_body(body, state.max_command_bytes, "query").await?;
    let node = state.started()?;
    match node.query(q.to_vec(), consistency).await {
        Ok(bytes) => Ok((
            StatusCode::OK,
            [(http::header::CONTENT_TYPE, "application/octet-stream")],
            bytes,
        )
            .into_response()),
        Err(e) => {
            let code = match &e {
                QueryError::Rejected(_) => ErrorCode::Rejected,
                QueryError::Store(_) => ErrorCode::StoreUnavailable,
                QueryError::Behind { .. } => ErrorCode::Behind,
                QueryError::ShuttingDown => ErrorCode::ShuttingDown,
            };
            Err(ApiError::new(code, e.to_string()))
        }
    }
}

async fn status(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let node = state.started()?;
    Ok(axum::Json(node.status()).into_response())
}

/// The replica's current snapshot (encoded `SnapshotData`), for comparing
/// replicas byte for byte and for debugging a guest's state offline.
async fn snapshot(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let node = state.started()?;
    let (index, bytes) = node.snapshot().await.ok_or_else(|| {
        ApiError::new(
            ErrorCode::SnapshotFailed,
            "the state machine could not produce a snapshot",
        )
    })?;
    let mut resp = (StatusCode::OK, bytes).into_response();
    resp.headers_mut().insert(INDEX, HeaderValue::from(index));
    Ok(resp)
}

async fn readyz(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let node = state.started()?;
    if node.is_ready() {
        return Ok((StatusCode::OK, "ready\n").into_response());
    }
    let s = node.status();
    let why = if node.is_draining() {
        "shutting down".to_string()
    } else if let Some(e) = s.store_error {
        e
    } else {
        format!(
            "catching up: applied {} of {} (or no lease yet)",
            s.applied_index, s.commit_index
        )
    };
    Err(ApiError::new(ErrorCode::NotReady, why))
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let node = state.started()?;
    Ok((
        StatusCode::OK,
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.render_metrics(),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// Found by `fuzz/fuzz_targets/api_router.rs`: a query string that does
    /// not deserialize (here a repeated `consistency`) got axum's plain-text
    /// 400 instead of the API's JSON error.
    #[tokio::test]
    async fn fuzz_regression_bad_query_string_is_a_json_error() {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let app = router(Arc::new(ApiState::new(1024).unwrap()));
        let req = http::Request::builder()
            .method("POST")
            .uri("/v1/query?consistency=a&consistency=b")
            .body(Body::from("{}"))
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let error: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(error.code, ErrorCode::BadParameter, "{error:?}");
    }

    #[test]
    fn client_headers_are_both_or_neither_and_well_formed() {
        assert_eq!(parse_client_tag(&headers(&[])).unwrap(), None);
        assert_eq!(
            parse_client_tag(&headers(&[(CLIENT_ID, "web-1"), (SEQ, "7")])).unwrap(),
            Some(ClientTag {
                id: "web-1".into(),
                seq: 7
            })
        );
        for bad in [
            headers(&[(CLIENT_ID, "a")]),
            headers(&[(SEQ, "1")]),
            headers(&[(CLIENT_ID, "a"), (SEQ, "x")]),
            headers(&[(CLIENT_ID, "a"), (SEQ, "0")]),
            headers(&[(CLIENT_ID, "a"), (SEQ, "-3")]),
            headers(&[(CLIENT_ID, "has space"), (SEQ, "1")]),
            headers(&[(CLIENT_ID, ""), (SEQ, "1")]),
        ] {
            let e = parse_client_tag(&bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.body.code, ErrorCode::BadHeader);
        }
        let long = "x".repeat(256);
        assert!(parse_client_tag(&headers(&[(CLIENT_ID, &long), (SEQ, "1")])).is_err());
    }
}
