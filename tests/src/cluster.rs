//! One test's Kubernetes cluster: the [`ControlPlane`], one [`Node`] whose
//! pods run as podman containers from the built images, hostPath
//! PersistentVolumes for claims (what a storage provisioner provides), and a
//! working directory holding a copy of `manifests/` — the user's checkout,
//! where TLS material is written and `kubectl apply -k` runs.
//!
//! Dropping it stops the node (every pod's containers, then the network),
//! then the control plane, then removes the directory, also when a test fails.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::{HostPathVolumeSource, PersistentVolume, PersistentVolumeSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

use crate::controlplane::{ControlPlane, Kubectl};
use crate::images::{self, Names};
use crate::node::Node;
use crate::podman::{self, Network};

/// The node's name.
pub const NODE: &str = "dorado-e2e-node";

/// A control plane with one node.
pub struct Cluster {
    /// The node (dropped first: its pods go before the API server).
    pub node: Node,
    /// The API server and controllers.
    pub cp: ControlPlane,
    /// The user's working directory: `manifests/` is copied here.
    pub workdir: PathBuf,
    /// The images the node runs.
    pub images: &'static Names,
    /// A kube-rs client as the cluster admin.
    pub client: kube::Client,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Build the images and the control plane if needed, start both, create
    /// `volumes` PersistentVolumes of 10Gi, and wait until the node is Ready.
    pub async fn start(volumes: usize) -> anyhow::Result<Cluster> {
        dorado::ensure_crypto_provider();
        podman::available().map_err(|e| {
            anyhow::anyhow!("the control-plane tests run pods as podman containers: {e:#}")
        })?;
        podman::remove_leftovers()?;
        let images = images::build()?;
        crate::controlplane::binaries()?;
        let dir = tempfile::Builder::new()
            .prefix("dorado-k8s-")
            .tempdir()
            .context("temp dir")?;
        let workdir = dir.path().join("work");
        copy_dir(
            &crate::repo_root().join("manifests"),
            &workdir.join("manifests"),
        )?;
        let net = Network::create()?;
        let cp = ControlPlane::start(&dir.path().join("control-plane"), NODE).await?;
        let client = cp.client(&cp.admin).await?;
        let node = Node::start(&cp, net, dir.path().join("node")).await?;
        let pvs: Api<PersistentVolume> = Api::all(client.clone());
        for i in 0..volumes {
            // The cluster's storage: a directory per volume, writable by the
            // pods' non-root users (hostPath volumes get no fsGroup).
            let path = dir.path().join("volumes").join(format!("pv-{i}"));
            std::fs::create_dir_all(&path)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
            let pv = PersistentVolume {
                metadata: ObjectMeta {
                    name: Some(format!("pv-{i}")),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeSpec {
                    capacity: Some([("storage".to_string(), Quantity("10Gi".into()))].into()),
                    access_modes: Some(vec!["ReadWriteOnce".to_string()]),
                    persistent_volume_reclaim_policy: Some("Retain".to_string()),
                    host_path: Some(HostPathVolumeSource {
                        path: path.display().to_string(),
                        type_: Some("Directory".to_string()),
                    }),
                    ..PersistentVolumeSpec::default()
                }),
                ..PersistentVolume::default()
            };
            pvs.create(&PostParams::default(), &pv)
                .await
                .with_context(|| format!("create PersistentVolume pv-{i}"))?;
        }
        let cluster = Cluster {
            node,
            cp,
            workdir,
            images,
            client,
            _dir: dir,
        };
        cluster
            .kubectl_ok([
                "wait",
                "--for=condition=Ready",
                &format!("node/{NODE}"),
                "--timeout=120s",
            ])
            .context("the node did not become Ready")?;
        Ok(cluster)
    }

    /// Stop the node's pods, then the control plane (what dropping does,
    /// awaited: the containers are gone when this returns).
    pub async fn stop(self) {
        let Cluster { node, cp, _dir, .. } = self;
        node.stop().await;
        drop(cp);
        drop(_dir);
    }

    /// `kubectl ARGS` as the cluster admin, in the working directory.
    pub fn kubectl<I, S>(&self, args: I) -> anyhow::Result<Kubectl>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cp.kubectl_in(&self.workdir, args)
    }

    /// [`Self::kubectl`] that must succeed: its stdout.
    pub fn kubectl_ok<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.kubectl(args)?.ok()
    }

    /// A path in the working directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.workdir.join(rel)
    }

    /// The control plane's log tails, for failure messages.
    pub fn diagnostics(&self) -> String {
        let pods = self
            .kubectl(["get", "pods", "-A", "-o", "wide"])
            .map(|k| format!("{}{}", k.stdout, k.stderr))
            .unwrap_or_default();
        format!("pods:\n{pods}\n{}", self.cp.log_tails())
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("cp", &self.cp)
            .field("workdir", &self.workdir)
            .finish_non_exhaustive()
    }
}

/// A bounded wait for a command, with what it printed on timeout.
pub const KUBECTL_WAIT: Duration = Duration::from_secs(300);

fn copy_dir(src: &Path, dst: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src).with_context(|| format!("read {}", src.display()))? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &to)?;
        } else {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}
