//! The real server over real TLS on 127.0.0.1, with a real HTTPS client (reqwest + rustls)
//! that trusts only the generated CA. Certificate rotation is done the way the kubelet
//! updates a Secret volume: an atomic rename of the `..data` symlink.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Running, SecretDir, eventually, https_client};
use dorado_webhook::certs::{CertificateAuthority, ServingPair};
use dorado_webhook::{ServeConfig, serve};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(15);

fn start(secret: &SecretDir, reload_interval: Duration) -> Running {
    let mut config = ServeConfig::new(common::config(), secret.files());
    config.reload_interval = reload_interval;
    config.shutdown_grace = Duration::from_secs(5);
    Running::start(config)
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

fn issue(ca: &CertificateAuthority) -> ServingPair {
    ca.issue(&["localhost".into(), "127.0.0.1".into()], 1)
        .unwrap()
}

/// Sends the opt-in review; returns the served leaf certificate (DER).
async fn mutate(client: &reqwest::Client, base: &str) -> Result<Vec<u8>, String> {
    let body = serde_json::to_vec(&common::request("opt-in-statefulset")).unwrap();
    let resp = client
        .post(format!("{base}/mutate"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("request failed: {e:?}"))?;
    let info = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(<[u8]>::to_vec)
        .ok_or("no peer certificate")?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    let decoded = common::decode_response(&bytes);
    if !decoded.answer.response.allowed || decoded.patch.is_none() {
        return Err(format!("unexpected review {}", decoded.json));
    }
    Ok(info)
}

async fn status(url: &str) -> Option<u16> {
    reqwest::get(url).await.ok().map(|r| r.status().as_u16())
}

async fn metrics(admin: &str) -> String {
    reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_over_tls_and_rotates_on_symlink_swap() {
    let secret = SecretDir::new();
    let ca = CertificateAuthority::new("dorado test CA", 1).unwrap();
    let first = issue(&ca);
    secret.install(first.cert_pem.as_bytes(), first.key_pem.as_bytes());
    // A long fallback period: only the file-system watch can explain a quick reload.
    let server = start(&secret, Duration::from_secs(3600));
    let admin = server.admin.clone();
    eventually("the webhook reports ready", WAIT, || async {
        (status(&format!("{admin}/readyz")).await == Some(200)).then_some(())
    })
    .await;

    let fresh = https_client(ca.cert_pem(), false);
    assert_eq!(
        mutate(&fresh, &server.base).await.unwrap(),
        der(&first.cert_pem)
    );

    // Continuous load on pooled connections while the certificate rotates.
    let stop_load = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop_load, ok) = (stop_load.clone(), ok.clone());
        let client = https_client(ca.cert_pem(), true);
        let base = server.base.clone();
        tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop_load.load(Ordering::Relaxed) {
                match mutate(&client, &base).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.push(e),
                }
            }
            errors
        })
    };

    let second = issue(&ca);
    secret.install(second.cert_pem.as_bytes(), second.key_pem.as_bytes());
    let second_der = der(&second.cert_pem);
    eventually(
        "new TLS connections are served the rotated certificate",
        WAIT,
        || async { (mutate(&fresh, &server.base).await.ok()? == second_der).then_some(()) },
    )
    .await;

    // A broken pair (key of another certificate) is rejected; the second pair stays.
    let third = issue(&ca);
    secret.install(second.cert_pem.as_bytes(), third.key_pem.as_bytes());
    eventually(
        "the broken pair is counted as a failed reload",
        WAIT,
        || async {
            metrics(&admin)
                .await
                .contains("dorado_webhook_certificate_reloads_total{result=\"failure\"} 1")
                .then_some(())
        },
    )
    .await;
    assert_eq!(mutate(&fresh, &server.base).await.unwrap(), second_der);
    // Garbage is rejected as well.
    secret.install(b"-----BEGIN CERTIFICATE-----\nnot base64\n", b"junk");
    eventually(
        "the garbage pair is counted as a failed reload",
        WAIT,
        || async {
            metrics(&admin)
                .await
                .contains("dorado_webhook_certificate_reloads_total{result=\"failure\"} 2")
                .then_some(())
        },
    )
    .await;
    assert_eq!(mutate(&fresh, &server.base).await.unwrap(), second_der);
    assert_eq!(status(&format!("{admin}/readyz")).await, Some(200));

    // Let the load run across all of that, then check it never failed.
    let before = ok.load(Ordering::Relaxed);
    eventually("background requests keep succeeding", WAIT, || async {
        (ok.load(Ordering::Relaxed) > before + 10).then_some(())
    })
    .await;
    stop_load.store(true, Ordering::Relaxed);
    let errors = load.await.unwrap();
    assert!(
        errors.is_empty(),
        "requests failed during rotation: {errors:?}"
    );
    assert!(ok.load(Ordering::Relaxed) > 10);

    let m = metrics(&admin).await;
    assert!(
        m.contains("dorado_webhook_certificate_reloads_total{result=\"success\"} 2"),
        "{m}"
    );
    assert!(m.contains("dorado_webhook_certificate_loaded 1"), "{m}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_a_certificate_appears() {
    let secret = SecretDir::new();
    // Polling fallback only matters if the directory watch misses; keep it short here so
    // both paths are exercised.
    let server = start(&secret, Duration::from_millis(200));
    let admin = server.admin.clone();
    eventually("the admin port answers", WAIT, || async {
        status(&format!("{admin}/healthz"))
            .await
            .filter(|s| *s == 200)
    })
    .await;
    assert_eq!(status(&format!("{admin}/readyz")).await, Some(503));
    let ca = CertificateAuthority::new("dorado test CA", 1).unwrap();
    let client = https_client(ca.cert_pem(), false);
    let err = mutate(&client, &server.base).await.unwrap_err();
    assert!(err.contains("request failed"), "{err}");

    let pair = issue(&ca);
    secret.install(pair.cert_pem.as_bytes(), pair.key_pem.as_bytes());
    eventually("the webhook becomes ready", WAIT, || async {
        (status(&format!("{admin}/readyz")).await == Some(200)).then_some(())
    })
    .await;
    assert_eq!(
        mutate(&client, &server.base).await.unwrap(),
        der(&pair.cert_pem)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_clients_fail_the_handshake() {
    let secret = SecretDir::new();
    let ca = CertificateAuthority::new("dorado test CA", 1).unwrap();
    let pair = issue(&ca);
    secret.install(pair.cert_pem.as_bytes(), pair.key_pem.as_bytes());
    let server = start(&secret, Duration::from_secs(3600));
    let admin = server.admin.clone();
    eventually("ready", WAIT, || async {
        (status(&format!("{admin}/readyz")).await == Some(200)).then_some(())
    })
    .await;
    let other = CertificateAuthority::new("someone else", 1).unwrap();
    let client = https_client(other.cert_pem(), false);
    assert!(mutate(&client, &server.base).await.is_err());
    // Plain HTTP on the TLS port gets nowhere either.
    let plain = server.base.replace("https://", "http://");
    assert!(reqwest::get(format!("{plain}/mutate")).await.is_err());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_readiness_then_stops() {
    let secret = SecretDir::new();
    let ca = CertificateAuthority::new("dorado test CA", 1).unwrap();
    let pair = issue(&ca);
    secret.install(pair.cert_pem.as_bytes(), pair.key_pem.as_bytes());
    common::install_crypto_provider();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    let mut config = ServeConfig::new(common::config(), secret.files());
    config.shutdown_delay = Duration::from_secs(30);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, admin, config, async move {
        let _ = rx.await;
    }));
    eventually("ready", WAIT, || async {
        (status(&format!("{admin_url}/readyz")).await == Some(200)).then_some(())
    })
    .await;
    tx.send(()).unwrap();
    // During the drain delay the admin port still answers, but not ready.
    eventually(
        "readiness fails after the shutdown signal",
        WAIT,
        || async { (status(&format!("{admin_url}/readyz")).await == Some(503)).then_some(()) },
    )
    .await;
    assert!(!task.is_finished());
    task.abort();
}
