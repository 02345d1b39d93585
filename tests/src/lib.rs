//! End-to-end harness: the user's journey from an annotated StatefulSet to a
//! replicated service that survives pod loss, with every part real except the
//! two that cannot run here (the API server and the container engine), whose
//! parts this crate plays.
//!
//! Layout:
//!
//! - [`manifests`]: `kubectl kustomize` of `manifests/examples/<name>` (in a
//!   temporary copy that holds the built module), and the StatefulSet
//!   controller's pod for an ordinal;
//! - [`apiserver`]: the `dorado-webhook serve` process, and the API server's
//!   side of admission: an `AdmissionReview` over TLS verified against the CA
//!   that `dorado-webhook certs` wrote, then the returned JSONPatch applied;
//! - [`kubelet`]: start a pod spec as processes the way a kubelet and a
//!   container runtime do — a network namespace per pod (its own IP, so every
//!   pod can listen on the same port), a mount namespace and a root
//!   filesystem per container with the volumes at their mount paths, the
//!   downward API, `$(VAR)` expansion, the user and read-only root of the
//!   security context, readiness probes — and nothing Dorado-specific;
//! - [`Env`]: etcd, the network, the webhook and a kubelet for one test.
//!
//! Why network namespaces rather than 127.0.0.x addresses: the mutated pod
//! says `DORADO_LISTEN=0.0.0.0:<port>`, which only works when each pod has its
//! own network stack; rewriting it for the harness would be exactly the kind
//! of special case that hides a broken spec. The namespaces come from
//! `dorado-testkit` ([`dorado_testkit::netns::NetEnv`]); they need root and
//! `ip netns`, which the CI machines have.

pub mod apiserver;
pub mod kubelet;
pub mod manifests;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dorado_testkit::etcd_process::EtcdProcess;
use dorado_testkit::netns::NetEnv;

pub use apiserver::Webhook;
pub use kubelet::{Kubelet, RunningPod};
pub use manifests::Rendered;

/// Poll `check` until it returns `Some`, or fail after `timeout` naming `what`
/// and the last reason `check` gave (its `Err`).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(v) => return Ok(v),
            Err(why) => why,
        };
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Paths of the two binaries the images of the harness contain.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `dorado` (the runtime image's entrypoint).
    pub dorado: PathBuf,
    /// `dorado-webhook`.
    pub webhook: PathBuf,
}

/// Build (or find up to date) `dorado` and `dorado-webhook` in the target
/// directory and profile this test was built with. `cargo test --workspace`
/// has built them already, so this is a no-op there; `cargo test -p
/// dorado-e2e` alone would otherwise run against stale or missing binaries.
pub fn binaries() -> anyhow::Result<&'static Binaries> {
    static BINS: OnceLock<Result<Binaries, String>> = OnceLock::new();
    BINS.get_or_init(|| build_binaries().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn build_binaries() -> anyhow::Result<Binaries> {
    let exe = std::env::current_exe().context("path of the test executable")?;
    // target/<profile>/deps/<test>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable is not in <target>/<profile>/deps")?;
    let target_dir = profile_dir
        .parent()
        .context("profile directory has no parent")?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("profile directory name")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "dorado", "--bin", "dorado"])
        .args(["-p", "dorado-webhook", "--bin", "dorado-webhook"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd.status().context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build of dorado and dorado-webhook failed ({status})");
    }
    let bins = Binaries {
        dorado: profile_dir.join("dorado"),
        webhook: profile_dir.join("dorado-webhook"),
    };
    for b in [&bins.dorado, &bins.webhook] {
        if !b.is_file() {
            bail!("{} is missing after cargo build", b.display());
        }
    }
    Ok(bins)
}

/// Root of the repository (for `manifests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// One test's cluster: a real etcd, a pod network, the webhook, a kubelet.
/// Dropping it stops every process (pods first) and removes the network and
/// the temporary directories, also when the test fails.
#[derive(Debug)]
pub struct Env {
    /// The kubelet (and the pods it runs).
    pub kubelet: Kubelet,
    /// The webhook process.
    pub webhook: Webhook,
    _etcd: EtcdProcess,
    _dir: tempfile::TempDir,
}

/// Pod slots (network namespaces) per [`Env`]: pods are placed by the caller.
pub const SLOTS: usize = 3;

impl Env {
    /// Start etcd, the pod network, the webhook (with `runtime_image` as its
    /// runtime image) and a kubelet that knows the images of [`kubelet::images`].
    pub async fn start() -> anyhow::Result<Env> {
        dorado::ensure_crypto_provider();
        dorado_testkit::netns::available()
            .map_err(|e| anyhow::anyhow!("the end-to-end tests need `ip netns` (root): {e}"))?;
        let bins = binaries()?;
        let dir = tempfile::Builder::new()
            .prefix("dorado-e2e-")
            .tempdir()
            .context("temp dir")?;
        let etcd = EtcdProcess::start().await.context("start etcd")?;
        let net = NetEnv::create(SLOTS, &etcd.client_urls())
            .await
            .context("create the pod network")?;
        let etcd_urls = net.etcd_urls().to_vec();
        let webhook = Webhook::start(bins, dir.path(), &etcd_urls, kubelet::RUNTIME_IMAGE)
            .await
            .context("start the webhook")?;
        let kubelet = Kubelet::new(net, dir.path().join("node"), kubelet::images(bins))?;
        Ok(Env {
            kubelet,
            webhook,
            _etcd: etcd,
            _dir: dir,
        })
    }
}
