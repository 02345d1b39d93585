//! etcd over TLS with client-certificate authentication: real etcd processes
//! started with `--client-cert-auth`, certificates generated per test
//! ([`dorado_testkit::pki`]), and `dorado run` processes or [`EtcdStore`]s
//! connecting with `--etcd-ca/--etcd-cert/--etcd-key`.
//!
//! Covers a good certificate, the wrong CA, an expired client certificate,
//! a client certificate etcd does not trust, a wrong host name, a missing
//! file, and a rotation during a write load that loses no acknowledged write.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dorado::store::{
    ClientIdentityFiles, EtcdConnectError, EtcdStore, EtcdStoreOptions, EtcdTls, EtcdTlsError,
};
use dorado_testkit::cluster::{self as support, Cluster, http, kv_get, kv_put, post, wait_until};
use dorado_testkit::etcd_process::{EtcdProcess, EtcdProcessOptions, EtcdServerTls};
use dorado_testkit::examples;
use dorado_testkit::pki::{self as test_pki, TestCa, Usage};
use tokio::sync::Mutex;

const BIN: &str = env!("CARGO_BIN_EXE_dorado");

/// The certificates of one test: a server CA, a client CA, and files.
struct Pki {
    dir: tempfile::TempDir,
    server_ca: TestCa,
    client_ca: TestCa,
}

impl Pki {
    fn new() -> Self {
        Pki {
            dir: tempfile::tempdir().expect("tempdir"),
            server_ca: TestCa::new("etcd server CA"),
            client_ca: TestCa::new("etcd client CA"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// etcd TLS with `--client-cert-auth`, serving `server` and trusting
    /// `trusted` for clients; the startup probe uses a client from `probe_ca`.
    fn server_tls(&self, server: &test_pki::Pair, trusted: &[&TestCa]) -> EtcdServerTls {
        let (cert, key) = server.write_to(self.dir.path(), "server");
        let trusted_ca = self.path("trusted-clients.crt");
        test_pki::write_atomic(&trusted_ca, test_pki::bundle(trusted).as_bytes());
        let probe_ca = self.path("server-ca.crt");
        self.server_ca.write_cert(&probe_ca);
        let probe = trusted[0].client("probe");
        let probe_identity = probe.write_to(self.dir.path(), "probe");
        EtcdServerTls {
            cert,
            key,
            trusted_ca,
            client_cert_auth: true,
            probe_ca,
            probe_identity: Some(probe_identity),
            probe_domain: None,
        }
    }

    async fn etcd(&self) -> EtcdProcess {
        let tls = self.server_tls(&self.server_ca.loopback_server(), &[&self.client_ca]);
        start_etcd(tls).await
    }

    /// Client files: the server CA and a pair from the client CA.
    fn client_files(&self, name: &str) -> EtcdTls {
        let ca = self.path(&format!("{name}-ca.crt"));
        self.server_ca.write_cert(&ca);
        let (cert, key) = self.client_ca.client(name).write_to(self.dir.path(), name);
        EtcdTls {
            ca,
            identity: Some(ClientIdentityFiles { cert, key }),
            reload_interval: Duration::from_millis(200),
        }
    }
}

async fn start_etcd(tls: EtcdServerTls) -> EtcdProcess {
    EtcdProcess::start_with(EtcdProcessOptions {
        tls: Some(tls),
        ..EtcdProcessOptions::default()
    })
    .await
    .expect("start etcd with tls")
}

fn options(tls: EtcdTls) -> EtcdStoreOptions {
    EtcdStoreOptions {
        tls: Some(tls),
        connect_timeout: Duration::from_secs(3),
        request_timeout: Duration::from_secs(3),
        ..EtcdStoreOptions::default()
    }
}

async fn connect(etcd: &EtcdProcess, tls: EtcdTls) -> Result<EtcdStore, EtcdConnectError> {
    EtcdStore::try_connect(&etcd.client_urls(), "tls", "g", options(tls)).await
}

fn tls_error(result: Result<EtcdStore, EtcdConnectError>) -> EtcdTlsError {
    match result {
        Err(EtcdConnectError::Tls(e)) => e,
        Err(other) => panic!("expected a tls error, got: {other}"),
        Ok(_) => panic!("expected a tls error, but the connection worked"),
    }
}

/// Three `dorado run` replicas of kv with `tls`, all ready.
async fn ready_replicas(etcd: &EtcdProcess, tls: &EtcdTls) -> Cluster {
    let mut c = Cluster::new(BIN, etcd.client_urls(), examples::KV, 3, 0);
    for r in &mut c.replicas {
        r.extra = flags(tls);
    }
    c.start_all();
    c.wait_all_ready().await;
    c
}

/// `dorado run` flags for `tls`.
fn flags(tls: &EtcdTls) -> Vec<String> {
    let mut out = vec!["--etcd-ca".to_string(), tls.ca.display().to_string()];
    if let Some(id) = &tls.identity {
        out.extend([
            "--etcd-cert".to_string(),
            id.cert.display().to_string(),
            "--etcd-key".to_string(),
            id.key.display().to_string(),
        ]);
    }
    out.extend(["--etcd-tls-reload-secs".to_string(), "1".to_string()]);
    out
}

/// Poll replica 0's `/readyz` until it answers 503 with a body containing
/// `needle`; returns the body.
async fn readyz_until(c: &Cluster, needle: &str) -> String {
    let url = format!("{}/readyz", c.replicas[0].url());
    let http = http();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(&url).send().await
            && r.status() == 503
        {
            let body = r.text().await.unwrap_or_default();
            if body.contains(needle) {
                return body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for /readyz to say {needle:?}; stderr:\n{}",
            support::tail(&c.replicas[0].stderr(), 20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_good_certificate_works_end_to_end() {
    let pki = Pki::new();
    let etcd = pki.etcd().await;
    assert!(etcd.client_url().starts_with("https://"));

    // Without a client certificate etcd refuses the connection, and says so.
    let mut anonymous = pki.client_files("anonymous");
    anonymous.identity = None;
    let e = tls_error(connect(&etcd, anonymous).await);
    assert!(
        matches!(&e, EtcdTlsError::ClientCertRejected { endpoint, client, .. }
            if *endpoint == etcd.client_url() && client.contains("none")),
        "{e}"
    );

    let tls = pki.client_files("replica");
    let c = ready_replicas(&etcd, &tls).await;
    let leader = c.wait_leader().await;
    let http = http();
    for i in 0..10 {
        let r = post(
            &http,
            &c.replicas[(leader + i) % 3].url(),
            "/v1/commands",
            &kv_put(&format!("k{i}"), &format!("v{i}")),
            None,
        )
        .await
        .expect("submit");
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.index.is_some(), "committed commands carry their index");
    }
    let r = post(
        &http,
        &c.replicas[leader].url(),
        "/v1/query",
        &kv_get("k9"),
        None,
    )
    .await
    .expect("query");
    assert!(r.body.contains("\"v9\""), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_ca_names_the_endpoint_and_the_unknown_ca() {
    let pki = Pki::new();
    let etcd = pki.etcd().await;
    let tls = pki.client_files("c");
    // A CA bundle that did not sign etcd's certificate.
    let other = TestCa::new("someone else's CA");
    other.write_cert(&tls.ca);
    let e = tls_error(connect(&etcd, tls.clone()).await);
    assert!(
        matches!(&e, EtcdTlsError::UnknownCa { endpoint, ca } if *endpoint == etcd.client_url() && *ca == tls.ca),
        "{e:?}"
    );
    let message = e.to_string();
    assert!(
        message.contains(&etcd.client_url()) && message.contains("unknown CA"),
        "{message}"
    );

    // `dorado run` says the same in /readyz (and keeps retrying: a fixed
    // file is picked up without a restart).
    let mut c = Cluster::new(BIN, etcd.client_urls(), examples::KV, 1, 0);
    c.replicas[0].extra = flags(&tls);
    c.start(0);
    let body = readyz_until(&c, "unknown CA").await;
    assert!(body.contains(&etcd.client_url()), "{body}");
    pki.server_ca.write_cert(&tls.ca);
    c.wait_ready(0).await;
    assert!(
        c.replicas[0].stderr().contains("unknown CA"),
        "the log names the failure too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_fails_clearly() {
    let pki = Pki::new();
    let etcd = pki.etcd().await;
    let tls = pki.client_files("c");
    let id = tls.identity.clone().unwrap();
    let expired = pki
        .client_ca
        .issue(&["c"], Usage::Client, test_pki::expired());
    expired.write_to(pki.dir.path(), "c");
    let e = tls_error(connect(&etcd, tls).await);
    assert!(
        matches!(&e, EtcdTlsError::ClientCertExpired { path, .. } if *path == id.cert),
        "{e:?}"
    );
    assert!(e.to_string().contains("expired at"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_etcd_does_not_trust_is_refused_clearly() {
    let pki = Pki::new();
    let etcd = pki.etcd().await;
    let tls = pki.client_files("c");
    let stranger = TestCa::new("untrusted client CA");
    stranger.client("c").write_to(pki.dir.path(), "c");
    let e = tls_error(connect(&etcd, tls.clone()).await);
    let cert = tls.identity.unwrap().cert.display().to_string();
    assert!(
        matches!(&e, EtcdTlsError::ClientCertRejected { endpoint, client, .. }
            if *endpoint == etcd.client_url() && *client == cert),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_host_name_fails_clearly() {
    let pki = Pki::new();
    let server = pki
        .server_ca
        .issue(&["etcd.example"], Usage::Server, test_pki::valid_now());
    let mut server_tls = pki.server_tls(&server, &[&pki.client_ca]);
    server_tls.probe_domain = Some("etcd.example".into());
    let etcd = start_etcd(server_tls).await;
    let e = tls_error(connect(&etcd, pki.client_files("c")).await);
    assert!(
        matches!(&e, EtcdTlsError::WrongHostName { endpoint, host, .. }
            if *endpoint == etcd.client_url() && host == "127.0.0.1"),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("etcd.example"),
        "names what the certificate is for: {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_malformed_file_is_named() {
    let pki = Pki::new();
    let etcd = pki.etcd().await;
    let mut tls = pki.client_files("c");
    let missing = pki.path("no-such.key");
    let mut no_key = tls.clone();
    no_key.identity.as_mut().unwrap().key = missing.clone();
    let e = tls_error(connect(&etcd, no_key).await);
    assert!(
        matches!(&e, EtcdTlsError::ReadFile { path, .. } if *path == missing),
        "{e:?}"
    );
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );

    let garbage = pki.path("garbage.crt");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    tls.ca = garbage.clone();
    let e = tls_error(connect(&etcd, tls.clone()).await);
    assert!(
        matches!(&e, EtcdTlsError::BadPem { path, .. } if *path == garbage),
        "{e:?}"
    );

    // `dorado run` with a missing file says which one in /readyz and keeps retrying.
    let mut missing_ca = pki.client_files("r");
    missing_ca.ca = pki.path("no-such-ca.crt");
    let mut c = Cluster::new(BIN, etcd.client_urls(), examples::KV, 1, 0);
    c.replicas[0].extra = flags(&missing_ca);
    c.start(0);
    let body = readyz_until(&c, "no-such-ca.crt").await;
    assert!(body.contains("cannot read the etcd CA bundle"), "{body}");
    pki.server_ca.write_cert(&missing_ca.ca);
    c.wait_ready(0).await;
}

/// Rotation under load: writers submit distinct keys the whole time; the
/// client pair is replaced by one from a second CA; once every replica
/// logged the switch, etcd restarts trusting only the second CA, so the old
/// pair can no longer connect. Writes acknowledged after that prove the new
/// files are in use, and every acknowledged write must be readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_during_a_write_load_loses_no_acknowledged_write() {
    let pki = Pki::new();
    let new_client_ca = TestCa::new("etcd client CA, rotated");
    let server = pki.server_ca.loopback_server();
    let mut etcd = start_etcd(pki.server_tls(&server, &[&pki.client_ca, &new_client_ca])).await;
    let tls = pki.client_files("replica");
    let c = ready_replicas(&etcd, &tls).await;
    c.wait_leader().await;

    let urls = Arc::new(c.urls());
    let acked: Arc<Mutex<BTreeMap<String, (String, Instant)>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (urls, acked, stop) = (urls.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let http = http();
            let mut seq = 0u64;
            while !stop.is_cancelled() {
                seq += 1;
                let (key, value) = (format!("w{w}-{seq}"), format!("v{w}-{seq}"));
                // Retry one command (same client id and seq) until it is
                // acknowledged: across the etcd restart, too.
                let mut i = seq as usize;
                loop {
                    let url = &urls[i % urls.len()];
                    i += 1;
                    let r = post(
                        &http,
                        url,
                        "/v1/commands",
                        &kv_put(&key, &value),
                        Some((&format!("writer-{w}"), seq)),
                    )
                    .await;
                    if let Ok(r) = r
                        && r.status == 200
                    {
                        acked
                            .lock()
                            .await
                            .insert(key.clone(), (value.clone(), Instant::now()));
                        break;
                    }
                    if stop.is_cancelled() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    let acked_count = || {
        let acked = acked.clone();
        async move { acked.lock().await.len() }
    };
    wait_until(
        Duration::from_secs(20),
        "writes before the rotation",
        || async { acked_count().await >= 50 },
    )
    .await;

    // Rotate: a pair from the new CA over the same files.
    let id = tls.identity.clone().unwrap();
    let rotated = new_client_ca.client("replica");
    test_pki::write_atomic(&id.key, rotated.key_pem.as_bytes());
    test_pki::write_atomic(&id.cert, rotated.cert_pem.as_bytes());
    wait_until(
        Duration::from_secs(30),
        "every replica to switch to the new certificate",
        || {
            let replicas = &c.replicas;
            async move {
                replicas
                    .iter()
                    .all(|r| r.stderr().contains("etcd tls files changed"))
            }
        },
    )
    .await;

    // Revoke the old pair: etcd now trusts only the new client CA.
    let (probe_cert, probe_key) = new_client_ca
        .client("probe")
        .write_to(pki.dir.path(), "probe2");
    let trusted = pki.path("trusted-clients.crt");
    new_client_ca.write_cert(&trusted);
    etcd.options_mut().tls.as_mut().unwrap().probe_identity = Some((probe_cert, probe_key));
    let before_restart = acked_count().await;
    etcd.restart()
        .await
        .expect("restart etcd trusting only the new CA");
    let restarted = Instant::now();
    // The old pair is refused now (so what follows uses the new one).
    let e = tls_error(connect(&etcd, pki.client_files("old")).await);
    assert!(
        matches!(e, EtcdTlsError::ClientCertRejected { .. }),
        "{e:?}"
    );
    wait_until(
        Duration::from_secs(30),
        "writes acknowledged after the restart",
        || async {
            let acked = acked.lock().await;
            acked.values().filter(|(_, at)| *at > restarted).count() >= 30
        },
    )
    .await;
    stop.cancel();
    for w in writers {
        w.await.expect("writer");
    }
    let acked = acked.lock().await.clone();
    assert!(acked.len() > before_restart + 30, "{} writes", acked.len());
    eprintln!(
        "rotation: {} writes acknowledged, {before_restart} before etcd dropped the old CA",
        acked.len()
    );

    // Every acknowledged write is there.
    c.wait_converged(Duration::from_secs(30)).await;
    let http = http();
    let leader = c.wait_leader().await;
    for (key, (value, _)) in &acked {
        let r = post(
            &http,
            &c.replicas[leader].url(),
            "/v1/query",
            &kv_get(key),
            None,
        )
        .await
        .expect("query");
        assert!(
            r.body.contains(&format!("\"{value}\"")),
            "acknowledged {key}={value} missing: {}",
            r.body
        );
    }
}
