//! Helpers shared by the integration tests.
//!
//! Tests read like the webhook does: typed. Requests and answers are read through the small
//! views below, patched pods as `k8s_openapi` [`Pod`]s (or, for fields newer than the
//! Kubernetes version it is built for, a test's own view). Raw JSON is what is sent, what
//! a patch is applied to, and what the golden files compare whole; it is changed only
//! through JSON pointers ([`set`], [`remove`]).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use base64::Engine as _;
use dorado_webhook::{MutationConfig, Outcome};
use json_patch::jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::Value;

/// The configuration every golden case is evaluated with.
pub fn config() -> MutationConfig {
    MutationConfig::new(
        "dorado/dorado:0.1.0",
        vec![
            "http://etcd-0.etcd.dorado-system.svc:2379".into(),
            "http://etcd-1.etcd.dorado-system.svc:2379".into(),
            "http://etcd-2.etcd.dorado-system.svc:2379".into(),
        ],
    )
}

pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Names of all golden cases (files `<name>.request.json`), sorted.
pub fn cases() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(golden_dir())
        .expect("golden dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".request.json").map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The request of a golden case, as sent.
pub fn request(case: &str) -> Value {
    read_json(&golden_dir().join(format!("{case}.request.json")))
}

/// What the tests read of an AdmissionReview request.
#[derive(Debug, Deserialize)]
pub struct Review {
    pub request: ReviewRequest,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewRequest {
    pub uid: String,
    #[serde(default)]
    pub dry_run: bool,
    /// The pod, raw: what a patch applies to.
    #[serde(default)]
    pub object: Value,
}

/// The request of a golden case, read.
pub fn review(case: &str) -> ReviewRequest {
    Review::deserialize(&request(case))
        .unwrap_or_else(|e| panic!("{case}: not an AdmissionReview request: {e}"))
        .request
}

/// An AdmissionReview response as the API server reads it. kube's `AdmissionResponse`
/// cannot read it: it takes `patch` for a JSON array of bytes, where the API server (and
/// so the webhook) has base64 text, and its `patchType` is private.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    pub kind: String,
    pub api_version: String,
    pub response: AnswerResponse,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnswerResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(default)]
    pub status: kube::core::Status,
    /// Base64 of the JSON patch.
    pub patch: Option<String>,
    pub patch_type: Option<String>,
    pub warnings: Option<Vec<String>>,
}

/// A serialized review, decoded.
#[derive(Debug)]
pub struct Decoded {
    /// As the API server reads it.
    pub answer: Answer,
    /// As JSON, with `response.patch` shown decoded (what the golden files hold).
    pub json: Value,
    /// The JSON patch, if any.
    pub patch: Option<json_patch::Patch>,
}

/// Decodes a serialized review; `patch` must be a base64 string when present.
pub fn decode_response(body: &[u8]) -> Decoded {
    let mut json: Value = serde_json::from_slice(body).expect("response is JSON");
    let answer = Answer::deserialize(&json).expect("response is an AdmissionReview");
    let mut patch = None;
    if let Some(b64) = &answer.response.patch {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("patch is valid base64");
        let decoded: Value = serde_json::from_slice(&raw).expect("patch is JSON");
        patch = Some(serde_json::from_value(decoded.clone()).expect("patch is a JSON patch"));
        set(&mut json, &["response", "patch"], decoded);
    }
    Decoded {
        answer,
        json,
        patch,
    }
}

/// Outcome of one case.
#[derive(Debug)]
pub struct CaseOutput {
    pub outcome: Outcome,
    /// The AdmissionReview response as the API server reads it.
    pub answer: Answer,
    /// The AdmissionReview response, with `response.patch` decoded into JSON.
    pub response: Value,
    /// The JSON patch, if any.
    pub patch: Option<json_patch::Patch>,
    /// `request.object` with the patch applied, if there was a patch.
    pub mutated: Option<Value>,
}

impl CaseOutput {
    /// The patched pod, typed; panics if there was no patch.
    pub fn pod(&self) -> Pod {
        typed_pod(self.mutated.as_ref().expect("a patched pod"))
    }

    /// The denial (or `invalid`) message; empty when there is none.
    pub fn message(&self) -> &str {
        &self.answer.response.status.message
    }
}

/// A pod (a request object, or a patched one) as the API's type.
pub fn typed_pod(pod: &Value) -> Pod {
    Pod::deserialize(pod).unwrap_or_else(|e| panic!("not a Kubernetes Pod ({e}): {pod}"))
}

pub fn run_body(body: &[u8], object: Option<&Value>) -> CaseOutput {
    let reviewed = dorado_webhook::review(body, &config()).expect("review answers");
    let Decoded {
        answer,
        json: response,
        patch,
    } = decode_response(&reviewed.body);
    let mutated = match (&patch, object) {
        (Some(patch), Some(object)) => {
            let mut pod = object.clone();
            json_patch::patch(&mut pod, patch).expect("patch applies to the request object");
            Some(pod)
        }
        _ => None,
    };
    CaseOutput {
        outcome: reviewed.outcome,
        answer,
        response,
        patch,
        mutated,
    }
}

pub fn run(case: &str) -> CaseOutput {
    let body = serde_json::to_vec(&request(case)).unwrap();
    run_body(&body, Some(&review(case).object))
}

/// Wraps `pod` into a CREATE AdmissionReview with `uid`.
pub fn review_for(pod: &Value, uid: &str) -> Vec<u8> {
    let mut req = request("opt-in-statefulset");
    set(&mut req, &["request", "uid"], uid.into());
    set(&mut req, &["request", "object"], pod.clone());
    serde_json::to_vec(&req).unwrap()
}

/// Sets the value at `path` (raw tokens, escaped here), adding missing parents.
pub fn set(doc: &mut Value, path: &[&str], value: Value) {
    PointerBuf::from_tokens(path.iter().copied())
        .assign(doc, value)
        .unwrap_or_else(|e| panic!("cannot set {path:?}: {e}"));
}

/// Removes the value at `path` (raw tokens, escaped here), if there is one.
pub fn remove(doc: &mut Value, path: &[&str]) {
    PointerBuf::from_tokens(path.iter().copied()).delete(doc);
}

/// The directory of the collision fixtures (Pod manifests in YAML).
pub fn collision_fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/collisions")
}

/// Every collision fixture as JSON, by file name, sorted.
pub fn collision_fixtures() -> Vec<(String, Value)> {
    let dir = collision_fixture_dir();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(dir.join(&f)).unwrap();
            let pod = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{f}: {e}"));
            (f, pod)
        })
        .collect()
}

/// Mutated pods of every golden case that produces a patch, by case name.
pub fn mutated_pods() -> Vec<(String, Value)> {
    cases()
        .into_iter()
        .filter_map(|c| run(&c).mutated.map(|m| (c, m)))
        .collect()
}

/// A directory laid out like a Kubernetes Secret volume: `tls.crt -> ..data/tls.crt`,
/// `..data -> ..<generation>`, updated by the kubelet's atomic symlink swap.
pub struct SecretDir {
    pub dir: tempfile::TempDir,
    generation: std::cell::Cell<u32>,
}

impl SecretDir {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            generation: std::cell::Cell::new(0),
        }
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    pub fn files(&self) -> dorado_webhook::TlsFiles {
        dorado_webhook::TlsFiles {
            cert: self.cert_path(),
            key: self.key_path(),
        }
    }

    /// Publishes a new pair the way the kubelet does: write a fresh timestamped directory,
    /// point `..data_tmp` at it, rename `..data_tmp` over `..data` (atomic).
    pub fn install(&self, cert_pem: &[u8], key_pem: &[u8]) {
        use std::os::unix::fs::symlink;
        let g = self.generation.get() + 1;
        self.generation.set(g);
        let root = self.dir.path();
        let gen_name = format!("..2026_11_27_00_00_{g:02}.{g}");
        let gen_dir = root.join(&gen_name);
        std::fs::create_dir(&gen_dir).unwrap();
        std::fs::write(gen_dir.join("tls.crt"), cert_pem).unwrap();
        std::fs::write(gen_dir.join("tls.key"), key_pem).unwrap();
        let tmp = root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        symlink(&gen_name, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
        for f in ["tls.crt", "tls.key"] {
            let link = root.join(f);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{f}"), &link).unwrap();
            }
        }
    }
}

/// Polls `cond` every 20 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// An HTTPS client that trusts only `ca_pem` and reports the peer certificate; it offers
/// both `h2` and `http/1.1` over ALPN.
pub fn https_client(ca_pem: &str, reuse_connections: bool) -> reqwest::Client {
    https_client_alpn(ca_pem, reuse_connections, &[b"h2", b"http/1.1"])
}

/// [`https_client`] offering exactly `alpn` (a preconfigured rustls configuration keeps its
/// own ALPN list; reqwest does not add one).
pub fn https_client_alpn(ca_pem: &str, reuse_connections: bool, alpn: &[&[u8]]) -> reqwest::Client {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    // A resumed session carries no certificate; full handshakes show what is served now.
    tls.resumption = rustls::client::Resumption::disabled();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .tls_info(true)
        .timeout(std::time::Duration::from_secs(10));
    if !reuse_connections {
        builder = builder.pool_max_idle_per_host(0);
    }
    builder.build().unwrap()
}

pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How long the in-process servers get to stop.
pub const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// The real server ([`dorado_webhook::serve`]) running in-process on 127.0.0.1:0.
pub struct Running {
    /// `https://localhost:PORT`.
    pub base: String,
    /// `http://127.0.0.1:PORT` of the admin endpoints.
    pub admin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), dorado_webhook::ServeError>>,
}

impl Running {
    /// Starts the server with `config` (TLS files from `secret`).
    pub fn start(config: dorado_webhook::ServeConfig) -> Self {
        install_crypto_provider();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!(
            "https://localhost:{}",
            listener.local_addr().unwrap().port()
        );
        let admin_url = format!("http://{}", admin.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(dorado_webhook::serve(listener, admin, config, async move {
            let _ = rx.await;
        }));
        Running {
            base,
            admin: admin_url,
            stop: Some(tx),
            task,
        }
    }

    /// Waits until `/readyz` answers 200 (a certificate is loaded).
    pub async fn ready(&self) {
        let url = format!("{}/readyz", self.admin);
        eventually("the webhook reports ready", STOP_WAIT, || async {
            let status = reqwest::get(&url).await.ok()?.status();
            (status == 200).then_some(())
        })
        .await;
    }

    /// Signals shutdown and waits for a clean stop.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let result = tokio::time::timeout(STOP_WAIT, self.task)
            .await
            .expect("server did not stop within the timeout")
            .expect("server task panicked");
        result.expect("server returned an error");
    }
}

/// A Secret directory holding a fresh pair for `localhost` and `127.0.0.1`, and its CA.
pub fn serving_secret() -> (SecretDir, dorado_webhook::certs::CertificateAuthority) {
    let secret = SecretDir::new();
    let ca = dorado_webhook::certs::CertificateAuthority::new("dorado test CA", 1).unwrap();
    let pair = ca
        .issue(&["localhost".into(), "127.0.0.1".into()], 1)
        .unwrap();
    secret.install(pair.cert_pem.as_bytes(), pair.key_pem.as_bytes());
    (secret, ca)
}
