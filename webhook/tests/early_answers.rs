//! Requests the webhook refuses before reviewing them (wrong Content-Type, body over the
//! limit, undecodable body, wrong path or method) against the real server over real TLS,
//! with HTTP/2 and HTTP/1.1 chosen by ALPN. Every answer must arrive complete: the status
//! and the whole plain-text reason. A stream or connection reset, which is what an answer
//! sent while the client is still uploading can turn into, fails the request and the test.

mod common;

use std::sync::Arc;
use std::task::Poll;

use axum::body::Bytes;
use common::{Running, https_client_alpn, serving_secret};
use dorado_webhook::ServeConfig;
use reqwest::{Method, Version};

/// The server's body limit in these tests.
const LIMIT: usize = 256 * 1024;
/// A body under the limit but far over one HTTP/2 DATA frame and the initial windows.
const BIG: usize = 200 * 1024;
/// A body that fits in the first DATA frame.
const SMALL: usize = 8;
/// The most a raw HTTP/2 upload sends per step (one default DATA frame).
const UPLOAD_CHUNK: usize = 16 * 1024;
/// A body over the limit that the server still reads to the end (at most
/// `DRAIN_FACTOR` times the limit) before answering 413.
const OVER: usize = LIMIT * dorado_webhook::server::DRAIN_FACTOR;
/// A body so large that the server answers 413 without reading it all.
const FAR_OVER: usize = OVER + 1;
/// Sequential requests per case, then as many concurrent ones.
const RUNS: usize = 20;

const H2: &[&[u8]] = &[b"h2"];
const H1: &[&[u8]] = &[b"http/1.1"];

/// One kind of refused request and the answer it must get.
struct Case {
    what: &'static str,
    method: Method,
    path: &'static str,
    content_type: Option<&'static str>,
    body_len: usize,
    status: u16,
    /// A substring of the plain-text reason.
    reason: &'static str,
}

/// The real server with a [`LIMIT`] body limit, and clients speaking HTTP/2 and
/// HTTP/1.1.
struct Fixture {
    server: Running,
    h2: reqwest::Client,
    h1: reqwest::Client,
    /// The CA the serving certificate was issued by.
    ca_pem: String,
    /// Holds the serving certificate files for the server's lifetime.
    _secret: common::SecretDir,
}

async fn fixture() -> Fixture {
    let (secret, ca) = serving_secret();
    let mut config = ServeConfig::new(common::config(), secret.files());
    config.max_body_bytes = LIMIT;
    let server = Running::start(config);
    server.ready().await;
    Fixture {
        server,
        h2: https_client_alpn(ca.cert_pem(), true, H2),
        h1: https_client_alpn(ca.cert_pem(), true, H1),
        ca_pem: ca.cert_pem().to_owned(),
        _secret: secret,
    }
}

/// Sends `case` once; `Err` says what went wrong (transport error, status, reason).
async fn send_once(
    client: &reqwest::Client,
    base: &str,
    case: &Case,
    version: Version,
) -> Result<(), String> {
    let mut req = client
        .request(case.method.clone(), format!("{base}{}", case.path))
        .body(vec![b' '; case.body_len]);
    if let Some(ct) = case.content_type {
        req = req.header("content-type", ct);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("request failed: {e:?}"))?;
    let got_version = resp.version();
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("reading the body of the {status} answer failed: {e:?}"))?;
    if got_version != version {
        return Err(format!(
            "answered over {got_version:?}, expected {version:?}"
        ));
    }
    if status != case.status || !text.contains(case.reason) {
        return Err(format!(
            "got {status} {text:?}; expected {} with a reason containing {:?}",
            case.status, case.reason
        ));
    }
    Ok(())
}

/// [`RUNS`] sequential then [`RUNS`] concurrent requests; returns the failures.
async fn hammer(
    client: &reqwest::Client,
    base: &str,
    case: &Case,
    version: Version,
) -> Vec<String> {
    let mut failures = Vec::new();
    for i in 0..RUNS {
        if let Err(e) = send_once(client, base, case, version).await {
            failures.push(format!("sequential #{i}: {e}"));
        }
    }
    let concurrent = (0..RUNS).map(|_| send_once(client, base, case, version));
    for (i, r) in futures::future::join_all(concurrent)
        .await
        .into_iter()
        .enumerate()
    {
        if let Err(e) = r {
            failures.push(format!("concurrent #{i}: {e}"));
        }
    }
    failures
}

async fn check_all(cases: &[Case], version: Version) {
    let f = fixture().await;
    let client = if version == Version::HTTP_2 {
        &f.h2
    } else {
        &f.h1
    };
    let mut report = Vec::new();
    for case in cases {
        let failures = hammer(client, &f.server.base, case, version).await;
        if !failures.is_empty() {
            report.push(format!(
                "{} ({} bytes) over {version:?}: {} of {} requests failed, first: {}",
                case.what,
                case.body_len,
                failures.len(),
                2 * RUNS,
                failures[0]
            ));
        }
    }
    f.server.shutdown().await;
    assert!(report.is_empty(), "{}", report.join("\n"));
}

fn wrong_content_type(body_len: usize) -> Case {
    Case {
        what: "wrong Content-Type",
        method: Method::POST,
        path: "/mutate",
        content_type: Some("text/plain"),
        body_len,
        status: 415,
        reason: "unsupported Content-Type \"text/plain\"; expected application/json",
    }
}

fn refused_cases() -> Vec<Case> {
    vec![
        wrong_content_type(SMALL),
        wrong_content_type(BIG),
        Case {
            what: "no Content-Type",
            content_type: None,
            reason: "missing Content-Type; expected application/json",
            ..wrong_content_type(BIG)
        },
        Case {
            what: "undecodable body",
            content_type: Some("application/json"),
            status: 400,
            reason: "request body is not valid JSON",
            ..wrong_content_type(BIG)
        },
        Case {
            what: "unknown path",
            path: "/validate",
            content_type: Some("application/json"),
            status: 404,
            reason: "no such endpoint /validate; expected POST /mutate",
            ..wrong_content_type(BIG)
        },
        Case {
            what: "wrong method",
            method: Method::PUT,
            content_type: Some("application/json"),
            status: 405,
            reason: "method PUT not allowed on /mutate; expected POST",
            ..wrong_content_type(BIG)
        },
    ]
}

fn over_limit(what: &'static str, body_len: usize) -> Case {
    Case {
        what,
        content_type: Some("application/json"),
        status: 413,
        reason: "request body exceeds the limit of 262144 bytes",
        ..wrong_content_type(body_len)
    }
}

/// Bodies over the limit that the server reads to the end, so every client, over both
/// protocols, gets the 413 without a reset.
fn over_limit_cases() -> Vec<Case> {
    vec![
        over_limit("body one byte over the limit", LIMIT + 1),
        over_limit("body over the limit", OVER),
        Case {
            what: "wrong Content-Type and a body over the limit",
            content_type: Some("text/plain"),
            ..wrong_content_type(OVER)
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_get_complete_answers_over_http2() {
    check_all(&refused_cases(), Version::HTTP_2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_get_complete_answers_over_http1() {
    check_all(&refused_cases(), Version::HTTP_11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_a_complete_413_over_http2() {
    check_all(&over_limit_cases(), Version::HTTP_2).await;
}

/// What a raw HTTP/2 client sees: the status, the whole body, and the `RST_STREAM` the
/// server sent for the stream, if any.
struct RawAnswer {
    status: u16,
    text: String,
    reset: Option<h2::Reason>,
    /// Why the upload stopped before the end of the body, if it did.
    upload_error: Option<String>,
}

/// An HTTP/2 connection (ALPN `h2`) to the server, made with the h2 crate directly: unlike
/// reqwest, it shows whether the server reset a stream after answering.
async fn raw_h2_connection(f: &Fixture) -> h2::client::SendRequest<Bytes> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(f.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let port = f.server.base.rsplit(':').next().unwrap();
    let tcp = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn raw_h2_send(
    client: &mut h2::client::SendRequest<Bytes>,
    case: &Case,
) -> Result<RawAnswer, String> {
    let mut req = http::Request::builder()
        .method(case.method.clone())
        .uri(format!("https://localhost{}", case.path))
        .header("content-length", case.body_len);
    if let Some(ct) = case.content_type {
        req = req.header("content-type", ct);
    }
    let ready = client
        .clone()
        .ready()
        .await
        .map_err(|e| format!("connection not ready: {e}"))?;
    *client = ready;
    let (response, mut upload) = client
        .send_request(req.body(()).unwrap(), case.body_len == 0)
        .map_err(|e| format!("send_request: {e}"))?;
    // Upload the way a streaming client (curl reading a file) does: one DATA frame's worth
    // at a time, letting the connection write it before preparing the next.
    let body = Bytes::from(vec![b' '; case.body_len]);
    let mut sent = 0;
    let mut upload_error = None;
    while sent < case.body_len {
        upload.reserve_capacity(UPLOAD_CHUNK.min(case.body_len - sent));
        match std::future::poll_fn(|cx| upload.poll_capacity(cx)).await {
            Some(Ok(0)) => continue,
            Some(Ok(n)) => {
                let end = sent + n.min(case.body_len - sent);
                if let Err(e) = upload.send_data(body.slice(sent..end), end == case.body_len) {
                    upload_error = Some(e.to_string());
                    break;
                }
                sent = end;
            }
            Some(Err(e)) => {
                upload_error = Some(e.to_string());
                break;
            }
            None => {
                upload_error = Some("the stream closed".to_owned());
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    let response = response.await.map_err(|e| format!("no response: {e}"))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("reading the {status} body: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    // The server queues its RST_STREAM, if any, right behind the last DATA frame; a
    // request answered after it on the same connection proves it has arrived.
    let _ = raw_h2_roundtrip(client).await;
    let reset = std::future::poll_fn(|cx| {
        Poll::Ready(match upload.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => Some(reason),
            _ => None,
        })
    })
    .await;
    Ok(RawAnswer {
        status,
        text: String::from_utf8_lossy(&text).into_owned(),
        reset,
        upload_error,
    })
}

/// A bodiless request on the same connection, answered after everything sent before.
async fn raw_h2_roundtrip(client: &mut h2::client::SendRequest<Bytes>) -> Result<(), String> {
    let req = http::Request::get("https://localhost/").body(()).unwrap();
    let (response, _) = client.send_request(req, true).map_err(|e| e.to_string())?;
    let mut body = response.await.map_err(|e| e.to_string())?.into_body();
    while let Some(chunk) = body.data().await {
        chunk.map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_are_not_reset_over_http2() {
    let f = fixture().await;
    let mut client = raw_h2_connection(&f).await;
    let mut report = Vec::new();
    let far_over = over_limit("body too large to read", FAR_OVER);
    for case in refused_cases()
        .iter()
        .chain(&over_limit_cases())
        .chain([&far_over])
    {
        let mut failures = Vec::new();
        for i in 0..RUNS {
            match raw_h2_send(&mut client, case).await {
                Err(e) => failures.push(format!("#{i}: {e}")),
                Ok(a) if a.status != case.status || !a.text.contains(case.reason) => {
                    failures.push(format!("#{i}: got {} {:?}", a.status, a.text))
                }
                // A body too large to read gets the complete 413 and then, as RFC 9113
                // §8.1 allows, RST_STREAM(NO_ERROR), which also ends the upload; every
                // other body was read to its end, so the stream ends without a reset.
                Ok(a) if case.body_len == FAR_OVER => {
                    if a.reset.is_some_and(|r| r != h2::Reason::NO_ERROR) {
                        failures.push(format!("#{i}: 413, then reset with {:?}", a.reset));
                    }
                }
                Ok(a) if a.reset.is_some() || a.upload_error.is_some() => failures.push(format!(
                    "#{i}: complete {} answer, but the stream was reset ({:?}; upload: {:?})",
                    a.status, a.reset, a.upload_error
                )),
                Ok(_) => {}
            }
        }
        if !failures.is_empty() {
            report.push(format!(
                "{} ({} bytes): {} of {RUNS} failed, first: {}",
                case.what,
                case.body_len,
                failures.len(),
                failures[0]
            ));
        }
    }
    f.server.shutdown().await;
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_a_complete_413_over_http1() {
    check_all(&over_limit_cases(), Version::HTTP_11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_too_large_to_read_still_get_the_413_over_http2() {
    // Answered before the upload ends, then RST_STREAM(NO_ERROR): reqwest (hyper) keeps
    // the response, as RFC 9113 §8.1 asks of clients.
    check_all(
        &[over_limit("body too large to read", FAR_OVER)],
        Version::HTTP_2,
    )
    .await;
}
