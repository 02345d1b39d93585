//! The images the pods run, and etcd as a container from its image.
//!
//! [`build`] runs `scripts/images.sh --no-archives` once per test process,
//! into the target directory this test was built in: the same static
//! binaries and images a user builds. When nothing changed, cargo and
//! podman's layer cache make that a matter of seconds; `.ci/run` builds them
//! (with archives) before the tests anyway.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, bail};

use crate::podman::{self, Container, Network};

/// The image references `scripts/images.sh names` prints.
#[derive(Debug, Clone)]
pub struct Names {
    /// `localhost/dorado/runtime:<version>`.
    pub runtime: String,
    /// `localhost/dorado/webhook:<version>`.
    pub webhook: String,
    /// `localhost/dorado/etcd:<etcd version>`.
    pub etcd: String,
}

/// Build the images (once per process) and return their names.
pub fn build() -> anyhow::Result<&'static Names> {
    static NAMES: OnceLock<Result<Names, String>> = OnceLock::new();
    NAMES
        .get_or_init(|| build_images().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Where `scripts/images.sh` leaves static binary `name` (`dorado`,
/// `dorado-webhook`): `<target>/<arch>-unknown-linux-musl/image/<name>`.
pub fn static_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    Ok(target_dir()?
        .join(format!("{}-unknown-linux-musl", std::env::consts::ARCH))
        .join("image")
        .join(name))
}

fn target_dir() -> anyhow::Result<std::path::PathBuf> {
    Ok(crate::profile_dir()?
        .parent()
        .context("profile directory has no parent")?
        .to_path_buf())
}

fn script() -> std::path::PathBuf {
    crate::repo_root().join("scripts/images.sh")
}

fn build_images() -> anyhow::Result<Names> {
    let target_dir = target_dir()?;
    let status = Command::new("bash")
        .arg(script())
        .arg("--no-archives")
        .env("CARGO_TARGET_DIR", &target_dir)
        .status()
        .context("cannot run scripts/images.sh")?;
    if !status.success() {
        bail!("scripts/images.sh --no-archives failed ({status})");
    }
    names()
}

/// `scripts/images.sh names`, parsed.
pub fn names() -> anyhow::Result<Names> {
    let out = Command::new("bash")
        .arg(script())
        .arg("names")
        .output()
        .context("cannot run scripts/images.sh names")?;
    if !out.status.success() {
        bail!(
            "scripts/images.sh names failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout).context("names are not UTF-8")?;
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .with_context(|| format!("scripts/images.sh names printed no {key}: {text}"))
    };
    Ok(Names {
        runtime: get("runtime")?,
        webhook: get("webhook")?,
        etcd: get("etcd")?,
    })
}

/// A single-member etcd, a container from the etcd image on the test's
/// network, as the manifests run it: non-root, read-only root filesystem, no
/// capabilities, its data directory a volume.
#[derive(Debug)]
pub struct Etcd {
    _container: Container,
    url: String,
}

/// Host part of etcd's address on the network (pods use .10 and up).
const ETCD_HOST: u8 = 2;

impl Etcd {
    /// Start it with its data and log under `dir`; returns once `/health` says so.
    pub async fn start(image: &str, net: &Network, dir: &Path) -> anyhow::Result<Etcd> {
        let data = dir.join("etcd-data");
        std::fs::create_dir_all(&data)?;
        std::os::unix::fs::chown(&data, Some(65532), Some(65532)).context("chown etcd-data")?;
        let ip = net.address(ETCD_HOST);
        let url = format!("http://{ip}:2379");
        let advertise = format!("--advertise-client-urls={url}");
        let container = podman::run_system_container(
            &format!("{}-etcd", net.name()),
            net,
            ip,
            &[format!(
                "type=bind,source={},destination=/var/lib/etcd",
                data.display()
            )],
            &dir.join("etcd.log"),
            &[
                image,
                "--name=e2e",
                "--data-dir=/var/lib/etcd/data",
                "--listen-client-urls=http://0.0.0.0:2379",
                &advertise,
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=e2e=http://127.0.0.1:2380",
                "--heartbeat-interval=50",
                "--election-timeout=500",
            ],
            (&format!("{url}/health"), "\"health\":\"true\""),
        )
        .await?;
        Ok(Etcd {
            _container: container,
            url,
        })
    }

    /// `http://<ip>:2379`, reachable from the pods and from the host.
    pub fn client_url(&self) -> String {
        self.url.clone()
    }
}
