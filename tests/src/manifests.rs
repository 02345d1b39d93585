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
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
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
            .find_map(|n| head(n)?.metadata.name)
            .unwrap_or_else(|| "default".to_string());
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

    /// The object of `kind` named `name`, as its Kubernetes type.
    pub fn get<K: serde::de::DeserializeOwned>(&self, kind: &str, name: &str) -> anyhow::Result<K> {
        let found = self
            .objects
            .iter()
            .find(|o| {
                head(o).is_some_and(|h| h.kind == kind && h.metadata.name.as_deref() == Some(name))
            })
            .with_context(|| format!("no {kind} {name} in the render"))?;
        serde_json::from_value(found.clone())
            .with_context(|| format!("{kind} {name} does not parse"))
    }

    /// Every object of `kind`.
    pub fn all(&self, kind: &str) -> impl Iterator<Item = &Value> {
        self.objects
            .iter()
            .filter(move |o| head(o).is_some_and(|h| h.kind == kind))
    }
}

/// What every Kubernetes object has: its kind and metadata.
#[derive(Debug, serde::Deserialize)]
struct Head {
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
}

fn head(object: &Value) -> Option<Head> {
    Head::deserialize(object).ok()
}

/// The pod the StatefulSet controller creates for `ordinal`: the template's
/// metadata and spec, name `<set>-<ordinal>`, the controller's labels, an
/// owner reference to the set, and `hostname`/`subdomain` for stable DNS.
pub fn statefulset_pod(sts: &StatefulSet, ordinal: u32) -> anyhow::Result<Pod> {
    let set = sts
        .metadata
        .name
        .clone()
        .context("StatefulSet without metadata.name")?;
    let spec = sts
        .spec
        .as_ref()
        .with_context(|| format!("StatefulSet {set} has no spec"))?;
    let name = format!("{set}-{ordinal}");
    let mut meta = spec.template.metadata.clone().unwrap_or_default();
    meta.name = Some(name.clone());
    meta.namespace = Some(
        sts.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
    );
    let labels = meta.labels.get_or_insert_with(Default::default);
    labels.insert("statefulset.kubernetes.io/pod-name".into(), name.clone());
    labels.insert("apps.kubernetes.io/pod-index".into(), ordinal.to_string());
    labels.insert(
        "controller-revision-hash".into(),
        format!("{set}-5d8f9c7b6"),
    );
    meta.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: set.clone(),
        uid: "8d3b6f0e-2a41-4c4e-9a55-0e1c5b7d9f21".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    let mut pod_spec = spec
        .template
        .spec
        .clone()
        .with_context(|| format!("StatefulSet {set} has no spec.template.spec"))?;
    pod_spec.hostname = Some(name);
    pod_spec.subdomain = spec.service_name.clone();
    Ok(Pod {
        metadata: meta,
        spec: Some(pod_spec),
        status: None,
    })
}
