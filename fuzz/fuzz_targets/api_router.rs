//! The whole client API router (`dorado::api::router`) with random requests:
//! methods, paths, query strings, headers and bodies. The input is an HTTP/1.1
//! request as it arrives on the wire (seeds in `corpus/api_router/`). The replica is not
//! attached (no store, no node), which is exactly the state of a pod that is
//! still connecting to etcd; every route must still answer cleanly.
//!
//! Properties:
//! * no request panics the router or a handler;
//! * the status is one of 200 (`/healthz` only), 400, 404, 405, 413, 503;
//! * every error body is an `ErrorBody` (`{"code", "message"}`) whose code is
//!   one the API documents, answered with that code's HTTP status.
#![no_main]

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::body::Body;
use dorado::api::{ApiState, router};
use dorado::wire::{ErrorBody, ErrorCode};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

/// Small, so that 413 is reachable.
const MAX_BODY: usize = 64;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime")
});

static ROUTER: LazyLock<Router> = LazyLock::new(|| {
    router(Arc::new(
        ApiState::new(MAX_BODY).expect("the forwarding client builds"),
    ))
});

/// Parses the input as an HTTP/1.1 request (head, blank line, body).
fn build(data: &[u8]) -> Option<Request<Body>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head_len) = parsed.parse(data).ok()? else {
        return None;
    };
    let mut req = Request::builder()
        .method(Method::from_bytes(parsed.method?.as_bytes()).ok()?)
        .uri(http::Uri::try_from(parsed.path?).ok()?)
        .body(Body::from(data[head_len..].to_vec()))
        .ok()?;
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        req.headers_mut().append(name, value);
    }
    Some(req)
}

fuzz_target!(|data: &[u8]| {
    let Some(req) = build(data) else {
        return;
    };
    let head = req.method() == Method::HEAD;
    let path = req.uri().path().to_owned();
    RUNTIME.block_on(async {
        let resp = ROUTER
            .clone()
            .oneshot(req)
            .await
            .expect("the router is infallible");
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("response body")
            .to_bytes();
        if status == StatusCode::OK {
            assert_eq!(path, "/healthz", "200 from a route that needs the replica");
            return;
        }
        assert!(
            [
                StatusCode::BAD_REQUEST,
                StatusCode::NOT_FOUND,
                StatusCode::METHOD_NOT_ALLOWED,
                StatusCode::PAYLOAD_TOO_LARGE,
                StatusCode::SERVICE_UNAVAILABLE,
            ]
            .contains(&status),
            "unexpected status {status} for {path}"
        );
        if head {
            return;
        }
        let error: ErrorBody = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{status} for {path} is not a JSON error ({e}): {:?}",
                String::from_utf8_lossy(&body)
            )
        });
        assert_ne!(error.code, ErrorCode::Unknown, "unknown code in {error:?}");
        assert_eq!(
            error.code.http_status(),
            status.as_u16(),
            "{error:?} came with {status}"
        );
    });
});
