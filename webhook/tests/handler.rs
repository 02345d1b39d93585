//! The axum glue, driven in-process with `Router::oneshot` (no sockets, no TLS).

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use dorado_webhook::server::{AdminState, AppState};
use dorado_webhook::tls::CertStore;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

fn state(max_body: usize) -> AppState {
    AppState::new(common::config(), max_body)
}

async fn call(app: axum::Router, req: Request<Body>) -> (StatusCode, String) {
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn post(body: impl Into<Body>, content_type: Option<&str>) -> Request<Body> {
    let mut b = Request::post("/mutate");
    if let Some(ct) = content_type {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    b.body(body.into()).unwrap()
}

fn opt_in_body() -> Vec<u8> {
    serde_json::to_vec(&common::request("opt-in-statefulset")).unwrap()
}

#[tokio::test]
async fn valid_review_is_answered_and_counted() {
    let st = state(1 << 20);
    let app = dorado_webhook::router(st.clone());
    let (status, body) = call(
        app.clone(),
        post(opt_in_body(), Some("application/json; charset=utf-8")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let decoded = common::decode_response(body.as_bytes());
    assert!(decoded.answer.response.allowed, "{body}");
    assert!(decoded.patch.is_some());

    let deny = serde_json::to_vec(&common::request("deny-missing-module")).unwrap();
    let (status, _) = call(app.clone(), post(deny, Some("application/json"))).await;
    assert_eq!(status, StatusCode::OK);
    let skip = serde_json::to_vec(&common::request("no-annotation")).unwrap();
    let (status, _) = call(app, post(skip, Some("application/json"))).await;
    assert_eq!(status, StatusCode::OK);

    let metrics = st.metrics.encode();
    for line in [
        "dorado_webhook_requests_total 3",
        "dorado_webhook_mutated_total 1",
        "dorado_webhook_denied_total 1",
        "dorado_webhook_skipped_total 1",
        "dorado_webhook_request_duration_seconds_count 3",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let app = dorado_webhook::router(state(1 << 20));
    for ct in [Some("text/plain"), Some("application/yaml"), None] {
        let (status, body) = call(app.clone(), post(opt_in_body(), ct)).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
        assert!(body.contains("application/json"), "{body}");
    }
}

#[tokio::test]
async fn oversized_body_is_413() {
    let st = state(1024);
    let app = dorado_webhook::router(st.clone());
    // Declared length over the limit.
    let (status, body) = call(app.clone(), post(opt_in_body(), Some("application/json"))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body.contains("1024 bytes"), "{body}");
    // Streamed body without a length.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b' '; 800]), Ok(vec![b' '; 800])];
    let stream = Body::from_stream(futures::stream::iter(chunks));
    let (status, _) = call(app, post(stream, Some("application/json"))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        st.metrics
            .encode()
            .contains("dorado_webhook_errors_total{reason=\"too_large\"} 2")
    );
}

#[tokio::test]
async fn undecodable_bodies_are_400_with_a_message() {
    let app = dorado_webhook::router(state(1 << 20));
    let valid = opt_in_body();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "not valid JSON"),
        (valid[..valid.len() / 2].to_vec(), "not valid JSON"),
        (b"[1,2]".to_vec(), "not a JSON object"),
        (
            br#"{"kind":"Pod","apiVersion":"admission.k8s.io/v1"}"#.to_vec(),
            "expected kind",
        ),
        (
            br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1","request":{}}"#
                .to_vec(),
            "expected apiVersion",
        ),
        (
            br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#.to_vec(),
            "no request in",
        ),
    ];
    for (body, needle) in cases {
        let (status, text) = call(app.clone(), post(body, Some("application/json"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains(needle), "{needle:?} not in {text:?}");
    }
}

#[tokio::test]
async fn malformed_request_with_uid_gets_an_invalid_review() {
    let app = dorado_webhook::router(state(1 << 20));
    let body = serde_json::to_vec(&common::request("invalid-request-missing-operation")).unwrap();
    let (status, text) = call(app, post(body, Some("application/json"))).await;
    assert_eq!(status, StatusCode::OK);
    let answer = common::decode_response(text.as_bytes()).answer;
    assert!(!answer.response.allowed, "{text}");
    assert_eq!(answer.response.uid, "5d0a0000-0000-4000-8000-00000000002d");
}

#[tokio::test]
async fn other_methods_and_paths_are_rejected() {
    let app = dorado_webhook::router(state(1 << 20));
    let (status, _) = call(
        app.clone(),
        Request::get("/mutate").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = call(app, Request::post("/validate").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn admin_endpoints() {
    common::install_crypto_provider();
    let secret = common::SecretDir::new();
    let certs = Arc::new(CertStore::new(secret.files()));
    let stopping = Arc::new(AtomicBool::new(false));
    let st = AdminState {
        metrics: Arc::new(dorado_webhook::metrics::Metrics::new()),
        certs: certs.clone(),
        stopping: stopping.clone(),
    };
    let admin = dorado_webhook::admin_router(st);
    let get = |p: &str| Request::get(p).body(Body::empty()).unwrap();
    assert_eq!(call(admin.clone(), get("/healthz")).await.0, StatusCode::OK);
    let (status, body) = call(admin.clone(), get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("no serving certificate"), "{body}");

    let ca = dorado_webhook::certs::CertificateAuthority::new("test", 1).unwrap();
    let pair = ca.issue(&["localhost".into()], 1).unwrap();
    secret.install(pair.cert_pem.as_bytes(), pair.key_pem.as_bytes());
    certs.reload().unwrap();
    assert_eq!(call(admin.clone(), get("/readyz")).await.0, StatusCode::OK);

    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        call(admin.clone(), get("/readyz")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (status, metrics) = call(admin, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains("# TYPE dorado_webhook_requests counter"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dorado_webhook_request_duration_seconds"),
        "{metrics}"
    );
}
