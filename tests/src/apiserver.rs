//! The API server's side of admission, against a real `dorado-webhook serve`
//! process: certificates from `dorado-webhook certs`, an `AdmissionReview`
//! POSTed over TLS to the Service's DNS name (verified against the CA, as the
//! API server verifies it against the `caBundle`), and the returned JSONPatch
//! applied to the pod.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::Binaries;

/// The Service the certificates are issued for (the base manifests' names).
const SERVICE: &str = "dorado-webhook";
const SERVICE_NAMESPACE: &str = "dorado-system";
/// Path of the MutatingWebhookConfiguration in `manifests/base/webhook`.
const MUTATE_PATH: &str = "/mutate";

/// A running `dorado-webhook serve`; killed on drop.
#[derive(Debug)]
pub struct Webhook {
    child: Child,
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
    /// Generate certificates into `dir`, start the webhook on free loopback
    /// ports and wait until it is ready.
    pub async fn start(
        bins: &Binaries,
        dir: &Path,
        etcd_urls: &[String],
        runtime_image: &str,
    ) -> anyhow::Result<Webhook> {
        let tls = dir.join("webhook-tls");
        let out = Command::new(&bins.webhook)
            .args([
                "certs",
                "--service",
                SERVICE,
                "--namespace",
                SERVICE_NAMESPACE,
            ])
            .arg("--out")
            .arg(&tls)
            .output()
            .context("run dorado-webhook certs")?;
        if !out.status.success() {
            bail!(
                "dorado-webhook certs failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let ca = std::fs::read(tls.join("ca.crt")).context("read ca.crt")?;
        let log = dir.join("webhook.log");
        let child = Command::new(&bins.webhook)
            .args(["--log-format", "json", "serve"])
            .arg("--tls-cert")
            .arg(tls.join("tls.crt"))
            .arg("--tls-key")
            .arg(tls.join("tls.key"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--runtime-image", runtime_image])
            .arg("--etcd-endpoints")
            .arg(etcd_urls.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .context("start dorado-webhook serve")?;
        let mut webhook = Webhook {
            child,
            https: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            client: reqwest::Client::new(),
        };
        let (https, admin) = crate::wait_for("the webhook's listen addresses", WAIT, || {
            let found = webhook.addresses();
            let exited = webhook.child.try_wait().ok().flatten();
            async move {
                if let Some(status) = exited {
                    return Err(format!("dorado-webhook exited ({status})"));
                }
                found.ok_or_else(|| "not logged yet".to_string())
            }
        })
        .await
        .with_context(|| format!("webhook log:\n{}", webhook.log_text()))?;
        webhook.https = https;
        webhook.client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
            .resolve(&service_host(), https)
            .https_only(true)
            .timeout(Duration::from_secs(10))
            .build()?;
        let readyz = format!("http://{admin}/readyz");
        let plain = reqwest::Client::new();
        crate::wait_for("the webhook's /readyz", WAIT, || {
            let r = plain.get(&readyz).send();
            async move {
                match r.await {
                    Ok(resp) if resp.status().is_success() => Ok(()),
                    Ok(resp) => Err(format!("{}", resp.status())),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await?;
        Ok(webhook)
    }

    /// The webhook's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn addresses(&self) -> Option<(SocketAddr, SocketAddr)> {
        let text = self.log_text();
        let mut https = None;
        let mut admin = None;
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let addr = v["fields"]["addr"].as_str().and_then(|a| a.parse().ok());
            match v["fields"]["message"].as_str() {
                Some("webhook listening (https)") => https = addr,
                Some("admin endpoints listening") => admin = addr,
                _ => {}
            }
        }
        Some((https?, admin?))
    }

    /// Send `pod` for admission as a CREATE by the StatefulSet controller and
    /// apply the answer. Fails if the response is malformed (wrong uid,
    /// unknown patch type, a patch that does not apply).
    pub async fn admit(&self, pod: &Value) -> anyhow::Result<Admission> {
        let uid = format!(
            "e2e-{}-{}",
            pod["metadata"]["name"].as_str().unwrap_or("pod"),
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
                "name": pod["metadata"]["name"],
                "namespace": pod["metadata"]["namespace"],
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
        let answer: Value = serde_json::from_slice(&body).context("response is not JSON")?;
        if answer["kind"] != "AdmissionReview" || answer["apiVersion"] != "admission.k8s.io/v1" {
            bail!("response is not an admission.k8s.io/v1 AdmissionReview: {answer}");
        }
        let response = &answer["response"];
        if response["uid"] != uid.as_str() {
            bail!("response uid {} does not echo {uid}", response["uid"]);
        }
        let allowed = response["allowed"]
            .as_bool()
            .context("response.allowed missing")?;
        let warnings = response["warnings"]
            .as_array()
            .map(|w| {
                w.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let message = response["status"]["message"].as_str().map(str::to_owned);
        let mut pod = pod.clone();
        let mut patched = false;
        if let Some(patch) = response["patch"].as_str() {
            if response["patchType"] != "JSONPatch" {
                bail!("patch with patchType {}", response["patchType"]);
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

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const WAIT: Duration = Duration::from_secs(30);

fn service_host() -> String {
    format!("{SERVICE}.{SERVICE_NAMESPACE}.svc")
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    u64::from(std::process::id()) << 20 | N.fetch_add(1, Ordering::Relaxed)
}
