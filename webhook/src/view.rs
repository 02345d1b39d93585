//! Read views: the parts of a pod (and of any object's metadata) the webhook decides on,
//! as types.
//!
//! **Read typed, write raw.** Decisions read these views; nothing looks up a key in a
//! [`serde_json::Value`]. The rewrite itself is a JSON patch computed against the raw
//! `Value` the API server sent ([`crate::mutate`]), never a typed round trip: a pod
//! deserialized into structs and serialized back loses every field the structs do not know
//! (a newer Kubernetes, alpha fields), and the patch would silently drop them.
//!
//! **Lean views, not `k8s_openapi` types.** Each view has only the fields the webhook reads,
//! every one optional, so a view fails only on a field the webhook actually reads. The
//! `k8s_openapi` `Pod` of the one Kubernetes version this workspace builds against would
//! also refuse pods the webhook has no reason to refuse: a container or owner reference
//! missing a field it requires (`name`, `uid`), or a newer version's field with a changed
//! shape. Mutating admission gets pods the API server already decoded into its own types,
//! so a view fails only on hostile input (or a fuzzer's); [`crate::mutate::mutate_pod`]
//! then denies the pod with the reason.
//!
//! **Shapes.**
//! - `null` reads as absent, as in the API server's own decoding: lists and maps whose
//!   absence means nothing special read `null` as empty ([`null_as_default`]); fields whose
//!   mere presence matters, even as `null`, keep it ([`present`]).
//! - Where the rewrite copies an object verbatim (the target container, the pod's volumes,
//!   a container's ports, mounts and env entries, its resources, parts of its
//!   securityContext), the view keeps that object's raw JSON next to its typed fields
//!   ([`Verbatim`]) or holds it in a `Value` field: typed access to a field, and the raw
//!   JSON stays exactly what the API server sent.
//! - Every view struct reads only from a JSON object ([`Obj`], [`Verbatim`]). serde's
//!   derived structs also accept an array of their fields in order, which would let
//!   `"spec": [[{}]]` pass for a spec with one container, and the patch written for it
//!   would not apply.
//! - Values Kubernetes types as strings but the webhook quotes back in its messages
//!   (annotations, labels, resource quantities) are [`Text`]: a string, or any other JSON,
//!   so a wrong type is reported instead of failing the whole read.
//!
//! Views are read from the already-parsed `Value` (`T::deserialize(&value)`), so what a
//! duplicate key in the request body means is decided once, by the parse of the body.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Number, Value};

/// Any Kubernetes object, for the metadata read first.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Object {
    metadata: Option<Obj<ObjectMeta>>,
}

/// What is read of an object before anything else: its names (for logs) and its
/// annotations, which say whether the webhook has anything to do with it.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Only for logs, so any JSON is accepted.
    pub name: Option<Text>,
    /// Only for logs, so any JSON is accepted.
    pub generate_name: Option<Text>,
    /// The `dorado.io/*` configuration (and whatever else the object carries).
    #[serde(deserialize_with = "null_as_default")]
    pub annotations: BTreeMap<String, Text>,
}

impl ObjectMeta {
    /// The metadata of `object`; `null` (no object at all) reads as empty metadata.
    pub fn of(object: &Value) -> Result<Self, serde_json::Error> {
        let object = Option::<Obj<Object>>::deserialize(object)?;
        Ok(object
            .and_then(|o| o.0.metadata)
            .map(|m| m.0)
            .unwrap_or_default())
    }
}

/// What a rewrite reads of a pod besides the annotations, read only once they opt the pod
/// in: a pod the webhook leaves alone is never refused for its shape.
#[derive(Debug, Default)]
pub struct Pod {
    /// Labels and owners.
    pub metadata: PodMeta,
    /// The spec.
    pub spec: PodSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PodJson {
    metadata: Option<Obj<PodMeta>>,
    spec: Option<Obj<PodSpec>>,
}

impl Pod {
    /// The view of `pod`; `null` (no pod, no metadata, no spec) reads as empty.
    pub fn of(pod: &Value) -> Result<Self, serde_json::Error> {
        let pod = Option::<Obj<PodJson>>::deserialize(pod)?.map_or_else(PodJson::default, |p| p.0);
        Ok(Pod {
            metadata: pod.metadata.map(|m| m.0).unwrap_or_default(),
            spec: pod.spec.map(|s| s.0).unwrap_or_default(),
        })
    }
}

/// The metadata a rewrite reads besides the annotations.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodMeta {
    /// Absent and empty differ: the patch adds the map or one key to it.
    pub labels: Option<BTreeMap<String, Text>>,
    /// Where the group name comes from when `dorado.io/group` is not set.
    #[serde(deserialize_with = "null_as_default")]
    pub owner_references: Vec<Obj<OwnerReference>>,
}

/// An owner reference.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OwnerReference {
    /// `StatefulSet`, `ReplicaSet`, ...
    pub kind: Option<String>,
    /// The owner's name.
    pub name: Option<String>,
    /// Whether this owner is the managing controller.
    pub controller: Option<bool>,
}

/// The pod spec the webhook reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSpec {
    /// Verbatim: the target container is rewritten from a copy of its raw JSON.
    #[serde(deserialize_with = "null_as_default")]
    pub containers: Vec<Verbatim<Container>>,
    /// Read for their mounts and, for sidecars, their ports.
    #[serde(deserialize_with = "null_as_default")]
    pub init_containers: Vec<Obj<Container>>,
    /// Read for their mounts.
    #[serde(deserialize_with = "null_as_default")]
    pub ephemeral_containers: Vec<Obj<Container>>,
    /// Verbatim: the patch writes the whole list back. Absent and empty differ (the patch
    /// adds or replaces it).
    pub volumes: Option<Vec<Verbatim<Volume>>>,
    /// `Some` when the pod sets it, even to `null`: then the webhook leaves it alone.
    #[serde(deserialize_with = "present")]
    pub automount_service_account_token: Option<Option<bool>>,
}

/// A container (regular, init or ephemeral).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Container {
    /// The container's name.
    pub name: Option<String>,
    /// `Always` makes an init container a sidecar.
    pub restart_policy: Option<String>,
    /// Declared ports.
    #[serde(deserialize_with = "null_as_default")]
    pub ports: Vec<Verbatim<ContainerPort>>,
    /// Volume mounts.
    #[serde(deserialize_with = "null_as_default")]
    pub volume_mounts: Vec<Verbatim<VolumeMount>>,
    /// Block devices.
    #[serde(deserialize_with = "null_as_default")]
    pub volume_devices: Vec<Obj<VolumeDevice>>,
    /// Environment variables.
    #[serde(deserialize_with = "null_as_default")]
    pub env: Vec<Verbatim<EnvVar>>,
    /// Parts of it are kept by the rewrite.
    pub security_context: Option<Obj<SecurityContext>>,
    /// Verbatim: the rewrite keeps other resource names and `claims`.
    pub resources: Option<Verbatim<ResourceRequirements>>,
    /// Present (even `null`): the rewrite removes it, with a warning.
    #[serde(deserialize_with = "present")]
    pub working_dir: Option<IgnoredAny>,
    /// Present (even `null`): the rewrite removes it, with a warning.
    #[serde(deserialize_with = "present")]
    pub lifecycle: Option<IgnoredAny>,
}

/// A declared container port.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerPort {
    /// The port's name.
    pub name: Option<String>,
    /// Any JSON number, quoted back as sent in messages.
    pub container_port: Option<Number>,
    /// `TCP` when absent.
    pub protocol: Option<String>,
}

impl ContainerPort {
    /// The port number, when it is a non-negative integer.
    pub fn number(&self) -> Option<u64> {
        self.container_port.as_ref().and_then(Number::as_u64)
    }
}

/// A volume mount.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VolumeMount {
    /// The mounted volume.
    pub name: Option<String>,
    /// Where it is mounted.
    pub mount_path: Option<String>,
}

/// A block device of a container.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VolumeDevice {
    /// The volume.
    pub name: Option<String>,
    /// Where the device appears.
    pub device_path: Option<String>,
}

/// An environment variable.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EnvVar {
    /// The variable's name.
    pub name: Option<String>,
}

/// The parts of a container's securityContext the rewrite keeps.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SecurityContext {
    /// Kept verbatim when present (even `null`).
    #[serde(deserialize_with = "present")]
    pub se_linux_options: Option<Value>,
    /// Kept verbatim when present (even `null`).
    #[serde(deserialize_with = "present")]
    pub app_armor_profile: Option<Value>,
    /// Kept verbatim when its type is `Localhost`.
    pub seccomp_profile: Option<Verbatim<SeccompProfile>>,
}

/// A seccomp profile.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SeccompProfile {
    /// `RuntimeDefault`, `Localhost` or `Unconfined`.
    #[serde(rename = "type")]
    pub profile_type: Option<String>,
}

/// A container's resource requests and limits, by resource name.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ResourceRequirements {
    /// Requests.
    #[serde(deserialize_with = "null_as_default")]
    pub requests: BTreeMap<String, Text>,
    /// Limits.
    #[serde(deserialize_with = "null_as_default")]
    pub limits: BTreeMap<String, Text>,
}

/// A pod volume.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Volume {
    /// The volume's name.
    pub name: Option<String>,
    /// A projected volume (the injected service-account token is one).
    pub projected: Option<Obj<ProjectedVolumeSource>>,
}

/// The sources of a projected volume.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ProjectedVolumeSource {
    /// The projections.
    #[serde(deserialize_with = "null_as_default")]
    pub sources: Vec<Obj<VolumeProjection>>,
}

/// One projection of a projected volume.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VolumeProjection {
    /// Present (even `null`): a service-account token.
    #[serde(deserialize_with = "present")]
    pub service_account_token: Option<IgnoredAny>,
}

/// A value Kubernetes types as a string (annotation, label, quantity): the string, or
/// whatever other JSON was sent, so that messages can quote it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Text {
    /// A string, as Kubernetes requires.
    Str(String),
    /// Anything else.
    Other(Value),
}

impl Text {
    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Text::Str(s) => Some(s),
            Text::Other(_) => None,
        }
    }
}

impl From<Text> for Value {
    fn from(text: Text) -> Value {
        match text {
            Text::Str(s) => Value::String(s),
            Text::Other(v) => v,
        }
    }
}

/// As JSON: a string is quoted.
impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Text::Str(s) => fmt::Display::fmt(&Value::from(s.as_str()), f),
            Text::Other(v) => fmt::Display::fmt(v, f),
        }
    }
}

/// `T` read from a JSON object, and only from one.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Obj<T>(pub T);

impl<T> std::ops::Deref for Obj<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ObjVisitor(PhantomData))
    }
}

struct ObjVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjVisitor<T> {
    type Value = Obj<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = std::any::type_name::<T>();
        let name = name.rsplit("::").next().unwrap_or(name);
        write!(f, "a JSON object ({name})")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(Obj)
    }
}

/// An object's raw JSON, kept to be copied verbatim, and its typed view.
#[derive(Debug, Clone, PartialEq)]
pub struct Verbatim<T> {
    /// Exactly what was sent (always a JSON object).
    pub raw: Value,
    /// What the webhook reads of it.
    pub view: T,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Verbatim<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Value::deserialize(deserializer)?;
        let Obj(view) = Obj::<T>::deserialize(&raw).map_err(serde::de::Error::custom)?;
        Ok(Verbatim { raw, view })
    }
}

/// For a field whose presence matters even as `null`: a present key reads as `Some`, an
/// absent one takes the field's default, `None`. Use with a `T` that accepts `null`
/// (`Option<_>`, `Value`, `IgnoredAny`).
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// For a list or map whose absence means nothing special: `null` reads as empty, as Go's
/// JSON decoding (and so the API server) has it.
pub fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn null_and_absent_read_as_empty() {
        for pod in [
            json!(null),
            json!({}),
            json!({ "metadata": null, "spec": null }),
            json!({ "metadata": { "annotations": null, "ownerReferences": null },
                    "spec": { "containers": null, "initContainers": null } }),
        ] {
            assert!(
                ObjectMeta::of(&pod).unwrap().annotations.is_empty(),
                "{pod}"
            );
            let Pod { metadata, spec } = Pod::of(&pod).unwrap();
            assert!(metadata.labels.is_none() && metadata.owner_references.is_empty());
            assert!(
                spec.containers.is_empty() && spec.volumes.is_none(),
                "{pod}"
            );
            assert!(spec.automount_service_account_token.is_none(), "{pod}");
        }
    }

    #[test]
    fn presence_is_told_from_absence() {
        let spec = Pod::of(&json!({ "spec": {
            "automountServiceAccountToken": null,
            "containers": [ { "workingDir": null } ]
        }}))
        .unwrap()
        .spec;
        assert_eq!(spec.automount_service_account_token, Some(None));
        assert!(spec.containers[0].view.working_dir.is_some());
        assert!(spec.containers[0].view.lifecycle.is_none());
    }

    #[test]
    fn structs_read_only_objects() {
        // serde's derived structs would take these arrays as their fields in order.
        for pod in [json!([]), json!({ "metadata": [] })] {
            let e = ObjectMeta::of(&pod).unwrap_err().to_string();
            assert!(e.contains("expected a JSON object"), "{pod}: {e}");
        }
        for pod in [
            json!({ "metadata": { "ownerReferences": [[]] } }),
            json!({ "spec": [[{}]] }),
            json!({ "spec": { "containers": [[]] } }),
            json!({ "spec": { "containers": [ { "ports": [[]] } ] } }),
        ] {
            let e = Pod::of(&pod).unwrap_err().to_string();
            assert!(e.contains("expected a JSON object"), "{pod}: {e}");
        }
    }

    #[test]
    fn verbatim_keeps_the_raw_object() {
        let port = json!({ "name": "http", "containerPort": 8080.0, "x-unknown": [1] });
        let spec = Pod::of(&json!({ "spec": { "containers": [ { "ports": [port] } ] } }))
            .unwrap()
            .spec;
        let p = &spec.containers[0].view.ports[0];
        assert_eq!(p.raw, port);
        assert_eq!(p.view.name.as_deref(), Some("http"));
        assert_eq!(p.view.number(), None, "8080.0 is not an integer");
    }

    #[test]
    fn text_quotes_what_it_got() {
        let meta = ObjectMeta::of(&json!({ "metadata": { "annotations": {
            "a": "x\"y", "b": true, "c": null, "d": { "e": 1 }
        }}}))
        .unwrap();
        let shown: Vec<String> = meta.annotations.values().map(Text::to_string).collect();
        assert_eq!(shown, [r#""x\"y""#, "true", "null", r#"{"e":1}"#]);
        assert_eq!(
            meta.annotations.values().next().unwrap().as_str(),
            Some("x\"y")
        );
    }
}
