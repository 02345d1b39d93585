//! The manifests a user applies, rendered the way `kubectl apply -k` renders
//! them, and the pods the StatefulSet controller makes from them.
//!
//! `manifests/examples/<name>` expects the module in a ConfigMap the user
//! creates (`kubectl create configmap`); the render adds that ConfigMap with
//! the module the runtime's tests embed — the same bytes `wasm-examples/`
//! builds.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use base64::Engine as _;
use serde::Deserialize as _;
use serde_json::{Value, json};

/// Every object of one `kubectl kustomize` render, as JSON.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The objects, in render order.
    pub objects: Vec<Value>,
}

impl Rendered {
    /// Render `manifests/examples/<example>`, plus the ConfigMap `<example>`
    /// holding `module` as `<example>.wasm` that the user creates.
    pub fn example(example: &str, module: &[u8]) -> anyhow::Result<Rendered> {
        let src = crate::repo_root().join("manifests/examples").join(example);
        let mut rendered = Rendered::kustomize(&src)?;
        // The user uploads the module (README: `kubectl create configmap
        // <example> --from-file=<example>.wasm=…`) into the example's namespace.
        let namespace = rendered
            .all("Namespace")
            .find_map(|n| n["metadata"]["name"].as_str())
            .unwrap_or("default")
            .to_string();
        rendered.objects.push(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": example, "namespace": namespace},
            "binaryData": {
                format!("{example}.wasm"): base64::engine::general_purpose::STANDARD.encode(module),
            },
        }));
        Ok(rendered)
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

    /// Every object of `kind`, as its Kubernetes type.
    pub fn typed<K: serde::de::DeserializeOwned>(&self, kind: &str) -> anyhow::Result<Vec<K>> {
        self.all(kind)
            .map(|o| {
                serde_json::from_value(o.clone())
                    .with_context(|| format!("a rendered {kind} does not parse"))
            })
            .collect()
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
