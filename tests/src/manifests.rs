//! The manifests a user applies, rendered the way `kubectl apply -k` renders
//! them, and the pods the StatefulSet controller makes from them.
//!
//! `manifests/examples/<name>` expects the built module next to its
//! kustomization (it is a build product, git-ignored), so the render runs on
//! a temporary copy holding the module the runtime embeds — the same bytes
//! `wasm-examples/` builds.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use serde::Deserialize as _;
use serde_json::{Value, json};

/// Every object of one `kubectl kustomize` render, as JSON.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The objects, in render order.
    pub objects: Vec<Value>,
}

impl Rendered {
    /// Render `manifests/examples/<example>` with `module` as its
    /// `<example>.wasm`.
    pub fn example(example: &str, module: &[u8]) -> anyhow::Result<Rendered> {
        let src = crate::repo_root().join("manifests/examples").join(example);
        let tmp = tempfile::Builder::new()
            .prefix("dorado-e2e-kustomize-")
            .tempdir()?;
        for entry in std::fs::read_dir(&src).with_context(|| format!("read {}", src.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), tmp.path().join(entry.file_name()))?;
            }
        }
        std::fs::write(tmp.path().join(format!("{example}.wasm")), module)?;
        Rendered::kustomize(tmp.path())
    }

    /// `kubectl kustomize DIR`, parsed.
    pub fn kustomize(dir: &Path) -> anyhow::Result<Rendered> {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(dir)
            .output()
            .context("cannot run `kubectl kustomize` (kubectl must be on PATH)")?;
        if !out.status.success() {
            bail!(
                "kubectl kustomize {} failed: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8(out.stdout).context("kustomize output is not UTF-8")?;
        let mut objects = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).context("kustomize output is not valid YAML")?;
            if !v.is_null() {
                objects.push(v);
            }
        }
        Ok(Rendered { objects })
    }

    /// The object of `kind` named `name`.
    pub fn get(&self, kind: &str, name: &str) -> anyhow::Result<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .with_context(|| format!("the render has no {kind} {name}"))
    }

    /// Every object of `kind`.
    pub fn all(&self, kind: &str) -> impl Iterator<Item = &Value> {
        self.objects.iter().filter(move |o| o["kind"] == kind)
    }
}

/// The pod the StatefulSet controller creates for `ordinal`: the template's
/// metadata and spec, name `<set>-<ordinal>`, the controller's labels, an
/// owner reference to the set, and `hostname`/`subdomain` for stable DNS.
pub fn statefulset_pod(sts: &Value, ordinal: u32) -> anyhow::Result<Value> {
    let set = sts["metadata"]["name"]
        .as_str()
        .context("StatefulSet without metadata.name")?;
    let namespace = sts["metadata"]["namespace"].as_str().unwrap_or("default");
    let template = &sts["spec"]["template"];
    if !template.is_object() {
        bail!("StatefulSet {set} has no spec.template");
    }
    let name = format!("{set}-{ordinal}");
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template["metadata"].clone(),
        "spec": template["spec"].clone(),
    });
    let meta = pod["metadata"]
        .as_object_mut()
        .context("template metadata is not an object")?;
    meta.insert("name".into(), json!(name));
    meta.insert("namespace".into(), json!(namespace));
    let labels = meta
        .entry("labels")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .context("template labels are not an object")?;
    labels.insert("statefulset.kubernetes.io/pod-name".into(), json!(name));
    labels.insert(
        "apps.kubernetes.io/pod-index".into(),
        json!(ordinal.to_string()),
    );
    labels.insert(
        "controller-revision-hash".into(),
        json!(format!("{set}-5d8f9c7b6")),
    );
    meta.insert(
        "ownerReferences".into(),
        json!([{
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "name": set,
            "uid": "8d3b6f0e-2a41-4c4e-9a55-0e1c5b7d9f21",
            "controller": true,
            "blockOwnerDeletion": true,
        }]),
    );
    let spec = pod["spec"]
        .as_object_mut()
        .context("template spec is not an object")?;
    spec.insert("hostname".into(), json!(name));
    if let Some(service) = sts["spec"]["serviceName"].as_str() {
        spec.insert("subdomain".into(), json!(service));
    }
    Ok(pod)
}
