//! The API server's side of admission, against a real `dorado-webhook serve`
//! running as a container from the webhook image on the test's network, as
//! `manifests/base/webhook` runs it (non-root, read-only root, no
//! capabilities, the TLS Secret mounted read-only): certificates from the
//! image's `dorado-webhook certs`, an `AdmissionReview` POSTed over TLS to the
//! Service's DNS name (verified against the CA, as the API server verifies it
//! against the `caBundle`), and the returned JSONPatch applied to the pod.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::podman::{self, Container, Network};

/// The Service the certificates are issued for (the base manifests' names).
const SERVICE: &str = "dorado-webhook";
const SERVICE_NAMESPACE: &str = "dorado-system";
/// Path of the MutatingWebhookConfiguration in `manifests/base/webhook`.
const MUTATE_PATH: &str = "/mutate";
/// Host part of the webhook's address on the network (etcd is .2, pods .10 and up).
const WEBHOOK_HOST: u8 = 3;
/// Ports of the Deployment in `manifests/base/webhook`.
const HTTPS_PORT: u16 = 8443;
const ADMIN_PORT: u16 = 8080;
/// Where the Deployment mounts the TLS Secret.
const TLS_DIR: &str = "/etc/dorado-webhook/tls";

/// A running `dorado-webhook serve` container; removed on drop.
#[derive(Debug)]
pub struct Webhook {
    _container: Container,
    https: SocketAddr,
    log: PathBuf,
    client: reqwest::Client,
}

/// What the webhook answered for one pod.
#[derive(Debug, Clone)]
pub struct Admission {
    /// `response.allowed`.
    pub allowed: bool,
    /// The pod with the patch applied (the input when there was no patch).
    pub pod: Value,
    /// Whether a patch came back.
    pub patched: bool,
    /// `response.status.message` of a denial.
    pub message: Option<String>,
    /// `response.warnings`.
    pub warnings: Vec<String>,
}

impl Webhook {
    /// Generate certificates into `dir` with the image's `dorado-webhook
    /// certs`, start `serve` from `image` on `net` and wait until it is ready.
    pub async fn start(
        image: &str,
        net: &Network,
        dir: &Path,
        etcd_urls: &[String],
        runtime_image: &str,
    ) -> anyhow::Result<Webhook> {
        let tls = dir.join("webhook-tls");
        std::fs::create_dir_all(&tls)?;
        std::os::unix::fs::chown(&tls, Some(65532), Some(65532)).context("chown webhook-tls")?;
        let out_mount = format!("type=bind,source={},destination=/out", tls.display());
        podman::run_to_completion(&[
            "--pull=never",
            "--network=none",
            "--read-only",
            "--cap-drop=ALL",
            "--mount",
            &out_mount,
            image,
            "certs",
            "--service",
            SERVICE,
            "--namespace",
            SERVICE_NAMESPACE,
            "--out",
            "/out",
        ])
        .context("dorado-webhook certs (in the webhook image)")?;
        let ca = std::fs::read(tls.join("ca.crt")).context("read ca.crt")?;
        let log = dir.join("webhook.log");
        let ip = net.address(WEBHOOK_HOST);
        let https = SocketAddr::from((ip, HTTPS_PORT));
        let (cert, key) = (format!("{TLS_DIR}/tls.crt"), format!("{TLS_DIR}/tls.key"));
        let (listen, admin) = (
            format!("0.0.0.0:{HTTPS_PORT}"),
            format!("0.0.0.0:{ADMIN_PORT}"),
        );
        let etcd = etcd_urls.join(",");
        let container = podman::run_system_container(
            &format!("{}-webhook", net.name()),
            net,
            ip,
            &[format!(
                "type=bind,source={},destination={TLS_DIR},ro=true",
                tls.display()
            )],
            &log,
            &[
                image,
                "--log-format",
                "json",
                "serve",
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--listen",
                &listen,
                "--admin-listen",
                &admin,
                "--runtime-image",
                runtime_image,
                "--etcd-endpoints",
                &etcd,
            ],
            (&format!("http://{ip}:{ADMIN_PORT}/readyz"), ""),
        )
        .await?;
        Ok(Webhook {
            _container: container,
            https,
            log,
            client: reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
                .resolve(&service_host(), https)
                .https_only(true)
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    /// The webhook's log so far (CRI format).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send `pod` for admission as a CREATE by the StatefulSet controller and
    /// apply the answer. Fails if the response is malformed (wrong uid,
    /// unknown patch type, a patch that does not apply).
    pub async fn admit(&self, pod: &Value) -> anyhow::Result<Admission> {
        let meta = crate::typed_pod(pod)?.metadata;
        let uid = format!(
            "e2e-{}-{}",
            meta.name.as_deref().unwrap_or("pod"),
            rand_suffix()
        );
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "name": meta.name,
                "namespace": meta.namespace,
                "operation": "CREATE",
                "userInfo": {
                    "username": "system:serviceaccount:kube-system:statefulset-controller",
                    "groups": ["system:serviceaccounts", "system:authenticated"],
                },
                "object": pod,
                "oldObject": null,
                "dryRun": false,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
            }
        });
        let url = format!(
            "https://{}:{}{MUTATE_PATH}?timeout=10s",
            service_host(),
            self.https.port()
        );
        let resp = self
            .client
            .post(&url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&review)?)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            bail!(
                "webhook answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let answer: ReviewAnswer = serde_json::from_slice(&body).with_context(|| {
            format!(
                "response is not an AdmissionReview: {}",
                String::from_utf8_lossy(&body)
            )
        })?;
        if answer.kind != "AdmissionReview" || answer.api_version != "admission.k8s.io/v1" {
            bail!(
                "response is a {} {}, not an admission.k8s.io/v1 AdmissionReview",
                answer.api_version,
                answer.kind
            );
        }
        let response = answer
            .response
            .context("the AdmissionReview has no response")?;
        if response.uid != uid {
            bail!("response uid {} does not echo {uid}", response.uid);
        }
        let (allowed, warnings) = (response.allowed, response.warnings);
        let message = response.status.and_then(|s| s.message);
        let mut pod = pod.clone();
        let mut patched = false;
        if let Some(patch) = response.patch {
            if response.patch_type.as_deref() != Some("JSONPatch") {
                bail!("patch with patchType {:?}", response.patch_type);
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(patch)
                .context("patch is not base64")?;
            let patch: json_patch::Patch =
                serde_json::from_slice(&bytes).context("patch is not a JSONPatch")?;
            json_patch::patch(&mut pod, &patch).context("the patch does not apply to the pod")?;
            patched = true;
        }
        Ok(Admission {
            allowed,
            pod,
            patched,
            message,
            warnings,
        })
    }
}

/// What the tests read of an `AdmissionReview` answer.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewAnswer {
    api_version: String,
    kind: String,
    response: Option<ReviewResponse>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewResponse {
    uid: String,
    allowed: bool,
    #[serde(default)]
    warnings: Vec<String>,
    status: Option<ReviewStatus>,
    patch: Option<String>,
    patch_type: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct ReviewStatus {
    message: Option<String>,
}

fn service_host() -> String {
    format!("{SERVICE}.{SERVICE_NAMESPACE}.svc")
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    u64::from(std::process::id()) << 20 | N.fetch_add(1, Ordering::Relaxed)
}
