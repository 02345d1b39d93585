//! The images of `scripts/images.sh`, checked as a user would check them:
//! the runtime image runs as the non-root user with a read-only root, the
//! binaries in the images are static, the images carry their user and OCI
//! labels. Needs podman (see the crate's README).

use std::process::Command;

use anyhow::{Context, bail};
use dorado_e2e::{images, podman};
use serde::Deserialize;

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[test]
fn runtime_image_prints_its_version_as_non_root_with_a_read_only_root() -> anyhow::Result<()> {
    let names = images::build()?;
    let out = podman::run_to_completion(&[
        "--read-only",
        "--user",
        "65532",
        &names.runtime,
        "--version",
    ])?;
    assert_eq!(out.trim(), format!("dorado {VERSION}"), "{out}");
    Ok(())
}

#[test]
fn image_binaries_are_static() -> anyhow::Result<()> {
    images::build()?;
    for name in ["dorado", "dorado-webhook"] {
        let path = images::static_binary(name)?;
        let file = Command::new("file").arg("-L").arg(&path).output()?;
        let file = String::from_utf8_lossy(&file.stdout);
        assert!(
            file.contains("statically linked") || file.contains("static-pie linked"),
            "{}: {file}",
            path.display()
        );
        let ldd = Command::new("ldd").arg(&path).output()?;
        let ldd = format!(
            "{}{}",
            String::from_utf8_lossy(&ldd.stdout),
            String::from_utf8_lossy(&ldd.stderr)
        );
        assert!(
            ldd.contains("not a dynamic executable") || ldd.contains("statically linked"),
            "{}: ldd says {ldd}",
            path.display()
        );
    }
    Ok(())
}

/// The part of `podman image inspect` checked here.
#[derive(Debug, Deserialize)]
struct Config {
    #[serde(rename = "User")]
    user: String,
    #[serde(rename = "Labels")]
    labels: std::collections::BTreeMap<String, String>,
}

fn config(image: &str) -> anyhow::Result<Config> {
    let out = podman::podman(["image", "inspect", "--format", "{{json .Config}}", image])?;
    serde_json::from_str(out.trim()).with_context(|| format!("{image}: {out}"))
}

#[test]
fn images_run_as_65532_and_carry_oci_labels() -> anyhow::Result<()> {
    let names = images::build()?;
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dorado_e2e::repo_root())
        .output()?;
    let head = String::from_utf8(head.stdout)?.trim().to_string();
    let etcd_version = names
        .etcd
        .rsplit_once(':')
        .map(|(_, v)| v.to_string())
        .context("etcd image has no tag")?;
    for (image, version) in [
        (&names.runtime, VERSION.to_string()),
        (&names.webhook, VERSION.to_string()),
        (&names.etcd, etcd_version),
    ] {
        if !image.starts_with("localhost/dorado/") {
            bail!("{image} is not named under localhost/dorado/");
        }
        let c = config(image)?;
        assert_eq!(c.user, "65532:65532", "{image}");
        let label = |k: &str| {
            c.labels
                .get(&format!("org.opencontainers.image.{k}"))
                .cloned()
        };
        assert_eq!(label("version"), Some(version), "{image}: {:?}", c.labels);
        assert!(label("source").is_some_and(|s| !s.is_empty()), "{image}");
        assert_eq!(label("revision"), Some(head.clone()), "{image}");
    }
    Ok(())
}
