//! End-to-end harness: the user's journey from an annotated StatefulSet to a
//! replicated service that survives pod loss, with every part real except the
//! API server, whose part this crate plays: the pods run as podman containers
//! from the images `scripts/images.sh` builds.
//!
//! Layout:
//!
//! - [`images`]: the images (built by `scripts/images.sh` once per test
//!   process; cargo and podman's layer cache make that a no-op when nothing
//!   changed);
//! - [`podman`]: the podman CLI, the test's network and containers (removed on
//!   drop, labelled for `.ci/run`'s cleanup);
//! - [`manifests`]: `kubectl kustomize` of `manifests/examples/<name>` (in a
//!   temporary copy that holds the built module), and the StatefulSet
//!   controller's pod for an ordinal;
//! - [`apiserver`]: `dorado-webhook serve` as a container from the webhook
//!   image, and the API server's side of admission: an `AdmissionReview` over
//!   TLS verified against the CA that `dorado-webhook certs` wrote, then the
//!   returned JSONPatch applied;
//! - [`kubelet`]: start a pod spec as podman containers the way a kubelet
//!   does (pod IP, volumes, downward API, `$(VAR)`, security context,
//!   readiness probes, restarts, logs), and nothing Dorado-specific;
//! - [`Env`]: the network, etcd (a container from the etcd image), the
//!   webhook and a kubelet for one test.

pub mod apiserver;
pub mod cluster;
pub mod controlplane;
pub mod images;
pub mod kubelet;
pub mod manifests;
pub mod node;
pub mod podman;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

pub use apiserver::Webhook;
pub use kubelet::{Kubelet, RunningPod};
pub use manifests::Rendered;

/// Poll `check` until it returns `Ok`, or fail after `timeout` naming `what`
/// and the last reason `check` gave (its `Err`).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    dorado_testkit::process::poll(timeout, check)
        .await
        .map_err(|last| {
            anyhow::anyhow!("timed out after {timeout:?} waiting for {what}; last: {last}")
        })
}

/// A pod as JSON (a rendered or patched object) as the API's type.
pub fn typed_pod(pod: &serde_json::Value) -> anyhow::Result<k8s_openapi::api::core::v1::Pod> {
    serde_json::from_value(pod.clone()).context("the pod does not parse as a Kubernetes Pod")
}

/// `<target>/<profile>` of this test executable (`<target>/<profile>/deps/<test>`).
pub(crate) fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("path of the test executable")?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("test executable is not in <target>/<profile>/deps")
}

/// Root of the repository (for `manifests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// One test's cluster: a podman network, etcd and the webhook in containers
/// on it, a kubelet. Dropping it removes every container (pods first) and
/// the network, and the temporary directories, also when the test fails.
#[derive(Debug)]
pub struct Env {
    /// The webhook container.
    pub webhook: Webhook,
    /// The etcd container.
    pub etcd: images::Etcd,
    /// The kubelet (and the network: dropped after the containers on it).
    pub kubelet: Kubelet,
    /// The images the pods run.
    pub images: &'static images::Names,
    _dir: tempfile::TempDir,
}

/// Pod slots (addresses) per [`Env`]: pods are placed by the caller.
pub const SLOTS: usize = 3;

impl Env {
    /// Build the images if needed, create the network, start etcd from the
    /// etcd image on it, the webhook (with the runtime image as its
    /// `--runtime-image`) and a kubelet.
    pub async fn start() -> anyhow::Result<Env> {
        dorado::ensure_crypto_provider();
        podman::available().map_err(|e| {
            anyhow::anyhow!("the end-to-end tests run pods as podman containers: {e:#}")
        })?;
        // A killed earlier run's containers and networks.
        podman::remove_leftovers()?;
        let names = images::build()?;
        let dir = tempfile::Builder::new()
            .prefix("dorado-e2e-")
            .tempdir()
            .context("temp dir")?;
        let net = podman::Network::create()?;
        let etcd = images::Etcd::start(&names.etcd, &net, dir.path())
            .await
            .context("start etcd")?;
        let webhook = Webhook::start(
            &names.webhook,
            &net,
            dir.path(),
            &[etcd.client_url()],
            &names.runtime,
        )
        .await
        .context("start the webhook")?;
        let kubelet = Kubelet::new(net, dir.path().join("node"))?;
        Ok(Env {
            webhook,
            etcd,
            kubelet,
            images: names,
            _dir: dir,
        })
    }
}
