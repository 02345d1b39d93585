//! The pure mutation: a pod as raw JSON in, a [`Decision`] out (a JSON patch, a skip or a
//! denial, plus admission warnings). No I/O, no clock, no global state.
//!
//! **Read typed, write raw.** Every decision reads the pod through the typed views of
//! [`crate::view`] (annotations, owner references, containers, ports, mounts, volumes, ...);
//! nothing here looks up a key in a [`serde_json::Value`]. The patch, on the other hand, is
//! computed against the raw `Value` and never from typed structs, so fields this crate
//! does not know (newer Kubernetes versions, alpha fields) are never dropped: the rewritten
//! container is a copy of the original container's raw JSON with Dorado's fields set, and
//! the volumes, ports, mounts and env entries it keeps are copied verbatim
//! ([`crate::view::Verbatim`]). A pod whose views cannot be read (hostile input: the API
//! server only sends pods it decoded itself) is denied with the reason.
//!
//! What a rewrite does, on a pod annotated `dorado.io/replicate: "true"`:
//!
//! - `metadata.annotations["dorado.io/status"] = "mutated"` (the idempotence marker) and
//!   `metadata.labels["dorado.io/group"] = <group>`;
//! - `spec.automountServiceAccountToken = false` unless the pod sets it; in that case the
//!   `kube-api-access-*` token volume the ServiceAccount admission plugin already injected
//!   is unmounted from the runtime container (and dropped if no other container mounts it);
//! - volumes `dorado-module` (the module ConfigMap, only the module key, read-only mode
//!   0444) and `dorado-tmp` (an `emptyDir` for `/tmp`, the root filesystem being read-only);
//! - when the pod's etcd endpoints (annotation or the webhook's default) are `https://`:
//!   volume `dorado-etcd-client`, the Secret named by `dorado.io/etcd-client-secret`
//!   (default `dorado-etcd-client`, see [`MutationConfig::etcd_client_secret`]) mounted
//!   read-only at `/etc/dorado/etcd-tls`, and `DORADO_ETCD_CA/CERT/KEY` pointing at its
//!   `ca.crt`, `tls.crt` and `tls.key`. With `http://` endpoints nothing TLS is added;
//! - the target container becomes the runtime: image, `command: ["dorado"]`,
//!   `args: ["run"]`, the `DORADO_*` environment, port `dorado`, the module mounted at
//!   `/etc/dorado/module`, startup/readiness/liveness probes, a *restricted*
//!   securityContext and resources. Other containers are untouched.
//!
//! What the pod already has that the rewrite would add (the API server rejects duplicate
//! volume names per pod and duplicate mount paths and port names per container, and warns
//! about port names and numbers shared across containers and sidecars):
//!
//! - a pod volume named like one the rewrite adds and mounted by another container (any
//!   kind) → denied, naming `spec.volumes[i]` and that container: replacing it would change
//!   what that container sees. Mounted by the target container only, or by none, it is
//!   replaced (with a warning if it differed): an earlier pass, or a stale copy of a
//!   mutated pod;
//! - a port named `dorado` in another container or sidecar → denied, naming the port's
//!   field path and container (a Service's `targetPort: dorado` would be ambiguous); the
//!   client port number declared by another container → denied (both would bind it);
//! - a block device of the target container at one of the runtime's mount paths → denied;
//! - the target container's own mounts at the runtime's paths or of its volumes, its own
//!   ports named `dorado` or numbered like the client port, and its own environment
//!   variables named like the runtime's → replaced, with a warning when they differed:
//!   the container becomes the runtime, so what its old image expected there is gone,
//!   and the runtime must own its `/tmp` (the root filesystem is read-only). The pod's
//!   volumes they referred to stay (unmounted volumes are valid).
//!
//! Mount paths in other containers and ports of plain init containers never collide.

use std::collections::BTreeMap;

use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use serde_json::{Map, Value, json};

use crate::annotations as ann;
use crate::config::{
    LogFormat, MAX_LEASE_TTL_SECS, MIN_LEASE_TTL_SECS, MutationConfig, UpgradeMode,
};
use crate::quantity::Quantity;
use crate::validate;
use crate::view::{
    Container, ContainerPort, ObjectMeta, Pod, PodMeta, PodSpec, ResourceRequirements,
    SecurityContext, Text, Verbatim,
};

/// Name of the pod volume holding the module ConfigMap.
pub const MODULE_VOLUME: &str = "dorado-module";
/// Where the module ConfigMap is mounted (read-only) in the runtime container.
pub const MODULE_MOUNT_PATH: &str = "/etc/dorado/module";
/// Name of the writable scratch volume.
pub const TMP_VOLUME: &str = "dorado-tmp";
/// Where the scratch volume is mounted.
pub const TMP_MOUNT_PATH: &str = "/tmp";
/// Size limit of the scratch volume.
pub const TMP_SIZE_LIMIT: &str = "64Mi";
/// Name of the runtime's client port.
pub const PORT_NAME: &str = "dorado";
/// Command of the runtime container.
pub const RUNTIME_COMMAND: &str = "dorado";
/// Arguments of the runtime container.
pub const RUNTIME_ARGS: &[&str] = &["run"];
/// File mode of the projected module file (0444).
pub const MODULE_FILE_MODE: u32 = 0o444;
/// Name of the pod volume holding the etcd client-certificate Secret.
pub const ETCD_TLS_VOLUME: &str = "dorado-etcd-client";
/// Where the etcd client-certificate Secret is mounted (read-only). A whole-volume mount,
/// never `subPath`: only then does the kubelet update the files when the Secret rotates.
pub const ETCD_TLS_MOUNT_PATH: &str = "/etc/dorado/etcd-tls";
/// The Secret's keys (those of a `kubernetes.io/tls` Secret from cert-manager or
/// `dorado-webhook certs`) and the runtime variables pointing at them.
pub const ETCD_TLS_FILES: &[(&str, &str)] = &[
    ("ca.crt", "DORADO_ETCD_CA"),
    ("tls.crt", "DORADO_ETCD_CERT"),
    ("tls.key", "DORADO_ETCD_KEY"),
];
/// File mode of the mounted certificate files (0444). Secret files are owned by root
/// and the runtime runs as a non-root user without a pod `fsGroup` (setting one would
/// change every container's volumes), so they must be world-readable; the volume is a
/// tmpfs only this pod sees, and only the runtime container mounts it.
pub const ETCD_TLS_FILE_MODE: u32 = 0o444;

/// Why a pod was left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// No `dorado.io/replicate` annotation.
    NotOptedIn,
    /// `dorado.io/replicate: "false"`.
    OptedOut,
    /// `dorado.io/status: mutated`: an earlier pass already rewrote it.
    AlreadyMutated,
}

impl Skip {
    /// Short reason for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotOptedIn => "not opted in",
            Skip::OptedOut => "opted out",
            Skip::AlreadyMutated => "already mutated",
        }
    }
}

/// What to do with the pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Allow unchanged.
    Skip(Skip),
    /// Allow with this JSON patch.
    Mutate(Patch),
    /// Deny with this message (names the annotation and the expected form).
    Deny(String),
}

/// The verdict plus admission warnings (defaulted or ignored annotations).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Skip, patch or deny.
    pub verdict: Verdict,
    /// Warnings shown to the client (`kubectl` prints them).
    pub warnings: Vec<String>,
}

/// Settings resolved from the annotations and the defaults.
#[derive(Debug)]
struct Settings {
    module_name: String,
    module_key: String,
    group: String,
    container: usize,
    port: u16,
    lease_ttl: u32,
    snapshot_every: u64,
    etcd_endpoints: Vec<String>,
    /// The etcd client-certificate Secret to mount, when the endpoints are `https://`.
    etcd_client_secret: Option<String>,
    log_format: LogFormat,
    upgrade: UpgradeMode,
    cpu_request: Quantity,
    cpu_limit: Option<Quantity>,
    memory_request: Quantity,
    memory_limit: Option<Quantity>,
}

/// Decides what to do with `pod` (the raw `request.object` of a pod CREATE).
pub fn mutate_pod(pod: &Value, cfg: &MutationConfig) -> Decision {
    let mut warnings = Vec::new();
    let meta = match ObjectMeta::of(pod) {
        Ok(meta) => meta,
        Err(e) => return deny(unreadable(&e), warnings),
    };
    let annotations = &meta.annotations;

    match annotations.get(ann::REPLICATE) {
        None => {
            let stray: Vec<&str> = annotations
                .keys()
                .filter(|k| k.starts_with(ann::PREFIX) && k.as_str() != ann::STATUS)
                .map(String::as_str)
                .collect();
            if !stray.is_empty() {
                warnings.push(format!(
                    "{} ignored: the pod does not opt in with {}: \"true\"",
                    stray.join(", "),
                    ann::REPLICATE
                ));
            }
            return skip(Skip::NotOptedIn, warnings);
        }
        Some(Text::Str(v)) if v == "false" => return skip(Skip::OptedOut, warnings),
        Some(Text::Str(v)) if v == "true" => {}
        Some(other) => {
            return deny(
                format!(
                    "annotation {}: got {other}; expected \"true\" or \"false\"",
                    ann::REPLICATE
                ),
                warnings,
            );
        }
    }

    match annotations.get(ann::STATUS) {
        Some(Text::Str(v)) if v == ann::STATUS_MUTATED => {
            return skip(Skip::AlreadyMutated, warnings);
        }
        Some(other) => warnings.push(format!(
            "annotation {} is written by the webhook; {other} replaced by \"{}\"",
            ann::STATUS,
            ann::STATUS_MUTATED
        )),
        None => {}
    }

    for key in annotations.keys() {
        if key.starts_with(ann::PREFIX) && !ann::KNOWN.contains(&key.as_str()) {
            warnings.push(format!(
                "unknown annotation {key} ignored (see the annotation reference in README.md)"
            ));
        }
    }

    // The rest is read only once the pod opts in: a pod the webhook leaves alone is never
    // refused for its shape.
    let view = match Pod::of(pod) {
        Ok(view) => view,
        Err(e) => return deny(unreadable(&e), warnings),
    };
    let settings = match resolve(annotations, &view, cfg, &mut warnings) {
        Ok(s) => s,
        Err(errors) => return deny(errors.join("; "), warnings),
    };
    let collisions = collisions(&view.spec, &settings);
    if !collisions.is_empty() {
        return deny(collisions.join("; "), warnings);
    }
    let patch = build_patch(&view, &settings, cfg, &mut warnings);
    Decision {
        verdict: Verdict::Mutate(patch),
        warnings,
    }
}

/// The denial of a pod whose views cannot be read.
fn unreadable(e: &serde_json::Error) -> String {
    format!("the pod cannot be read ({e}); expected a v1 Pod as the API server sends it")
}

fn skip(reason: Skip, warnings: Vec<String>) -> Decision {
    Decision {
        verdict: Verdict::Skip(reason),
        warnings,
    }
}

fn deny(message: String, warnings: Vec<String>) -> Decision {
    Decision {
        verdict: Verdict::Deny(message),
        warnings,
    }
}

/// Reads one annotation as a string; a non-string value is an error.
fn get_str<'a>(
    annotations: &'a BTreeMap<String, Text>,
    key: &str,
) -> Result<Option<&'a str>, String> {
    match annotations.get(key) {
        None => Ok(None),
        Some(Text::Str(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(format!("annotation {key}: got {other}; expected a string")),
    }
}

/// Resolves every setting, collecting all problems so one denial lists them all.
fn resolve(
    annotations: &BTreeMap<String, Text>,
    pod: &Pod,
    cfg: &MutationConfig,
    warnings: &mut Vec<String>,
) -> Result<Settings, Vec<String>> {
    let mut errors = Vec::new();
    let mut text = |key: &str| match get_str(annotations, key) {
        Ok(v) => v,
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let module = text(ann::MODULE);
    let group = text(ann::GROUP);
    let container = text(ann::CONTAINER);
    let port = text(ann::PORT);
    let lease_ttl = text(ann::LEASE_TTL);
    let snapshot_every = text(ann::SNAPSHOT_EVERY);
    let etcd = text(ann::ETCD_ENDPOINTS);
    let etcd_client_secret = text(ann::ETCD_CLIENT_SECRET);
    let log_format = text(ann::LOG_FORMAT);
    let upgrade = text(ann::UPGRADE);
    let cpu_request = text(ann::CPU_REQUEST);
    let cpu_limit = text(ann::CPU_LIMIT);
    let memory_request = text(ann::MEMORY_REQUEST);
    let memory_limit = text(ann::MEMORY_LIMIT);

    let module = match module {
        None => {
            errors.push(format!(
                "annotation {} is required with {}: \"true\"; expected NAME[/KEY], the \
                 ConfigMap holding the .wasm module and its key (default {}), e.g. kv/kv.wasm",
                ann::MODULE,
                ann::REPLICATE,
                ann::DEFAULT_MODULE_KEY
            ));
            None
        }
        Some(m) => match parse_module(m) {
            Ok((name, key, defaulted)) => {
                if defaulted {
                    warnings.push(format!(
                        "{}: no key given, using \"{name}/{key}\"",
                        ann::MODULE
                    ));
                }
                Some((name, key))
            }
            Err(e) => {
                errors.push(format!(
                    "annotation {}: {e}; expected NAME[/KEY], e.g. kv/kv.wasm",
                    ann::MODULE
                ));
                None
            }
        },
    };

    let group = match group {
        Some(g) => match validate::dns1123_label(g) {
            Ok(()) => Some(g.to_owned()),
            Err(e) => {
                errors.push(format!(
                    "annotation {}: {g:?} {e}; expected a DNS-1123 label, e.g. kv",
                    ann::GROUP
                ));
                None
            }
        },
        None => match group_from_owner(&pod.metadata) {
            Ok((g, warning)) => {
                warnings.extend(warning);
                Some(g)
            }
            Err(e) => {
                errors.push(e);
                None
            }
        },
    };

    let port = match port {
        None => Some(cfg.port),
        Some(p) => match parse_int::<u16>(p) {
            Some(n) if n > 0 => Some(n),
            _ => {
                errors.push(format!(
                    "annotation {}: {p:?} is not a port; expected an integer from 1 to 65535",
                    ann::PORT
                ));
                None
            }
        },
    };

    let container =
        select_container(&pod.spec.containers, container, warnings).map_err(|e| errors.push(e));
    if let (Ok(idx), Some(port)) = (&container, port)
        && let Some(user) = port_user(&pod.spec, *idx, port)
    {
        errors.push(format!(
            "annotation {}: port {port} is already declared by {user}; expected a free \
             port: set {} to another port or change that container's port",
            ann::PORT,
            ann::PORT
        ));
    }

    let lease_ttl = match lease_ttl {
        None => Some(cfg.lease_ttl_secs),
        Some(v) => match parse_int::<u32>(v) {
            Some(n) if (MIN_LEASE_TTL_SECS..=MAX_LEASE_TTL_SECS).contains(&n) => Some(n),
            _ => {
                errors.push(format!(
                    "annotation {}: {v:?} is invalid; expected whole seconds from \
                     {MIN_LEASE_TTL_SECS} to {MAX_LEASE_TTL_SECS}",
                    ann::LEASE_TTL
                ));
                None
            }
        },
    };

    let snapshot_every = match snapshot_every {
        None => Some(cfg.snapshot_every),
        Some(v) => match parse_int::<u64>(v) {
            Some(0) => {
                warnings.push(format!(
                    "{}: \"0\" disables snapshots, so the log in etcd is never truncated",
                    ann::SNAPSHOT_EVERY
                ));
                Some(0)
            }
            Some(n) => Some(n),
            None => {
                errors.push(format!(
                    "annotation {}: {v:?} is invalid; expected a number of log entries (0 = never)",
                    ann::SNAPSHOT_EVERY
                ));
                None
            }
        },
    };

    let etcd = match etcd {
        None => Some(cfg.etcd_endpoints.clone()),
        Some(v) => {
            let list = validate::split_endpoints(v);
            let bad: Vec<String> = list
                .iter()
                .filter_map(|e| {
                    validate::etcd_endpoint(e)
                        .err()
                        .map(|r| format!("{e:?} {r}"))
                })
                .collect();
            if list.is_empty() || !bad.is_empty() {
                let what = if list.is_empty() {
                    "no endpoint given".to_owned()
                } else {
                    bad.join(", ")
                };
                errors.push(format!(
                    "annotation {}: {what}; expected comma-separated URLs such as \
                     http://etcd-0.etcd.dorado-system.svc:2379",
                    ann::ETCD_ENDPOINTS
                ));
                None
            } else {
                Some(list)
            }
        }
    };

    // The Secret is mounted exactly when the runtime talks TLS to etcd, i.e. when the
    // endpoints are https:// (the runtime refuses certificate flags for http://), so plain
    // http development setups need no Secret.
    let etcd_client_secret = match (&etcd, etcd_client_secret) {
        (_, Some(name)) if validate::dns1123_subdomain(name).is_err() => {
            let e = validate::dns1123_subdomain(name).err().unwrap_or_default();
            errors.push(format!(
                "annotation {}: {name:?} {e}; expected the name of a Secret in the pod's \
                 namespace (a DNS-1123 subdomain, e.g. {}) holding ca.crt, tls.crt and tls.key",
                ann::ETCD_CLIENT_SECRET,
                crate::config::DEFAULT_ETCD_CLIENT_SECRET
            ));
            None
        }
        (Some(list), name) => {
            let https = list.iter().filter(|e| validate::is_https(e)).count();
            if https == 0 {
                if name.is_some() {
                    warnings.push(format!(
                        "{} ignored: the etcd endpoints are http://, so no client certificate \
                         is mounted",
                        ann::ETCD_CLIENT_SECRET
                    ));
                }
                Some(None)
            } else if https < list.len() {
                errors.push(format!(
                    "annotation {}: {} mixes https:// and http://; expected one scheme for \
                     every endpoint",
                    ann::ETCD_ENDPOINTS,
                    list.join(",")
                ));
                None
            } else {
                Some(Some(name.unwrap_or(&cfg.etcd_client_secret).to_owned()))
            }
        }
        (None, _) => None,
    };

    let log_format = match log_format {
        None => Some(cfg.log_format),
        Some(v) => match LogFormat::parse(v) {
            Some(f) => Some(f),
            None => {
                errors.push(format!(
                    "annotation {}: {v:?} is not a log format; expected \"human\" or \"json\"",
                    ann::LOG_FORMAT
                ));
                None
            }
        },
    };

    let upgrade = match upgrade {
        None => Some(UpgradeMode::default()),
        Some(v) => match UpgradeMode::parse(v) {
            Some(u) => Some(u),
            None => {
                errors.push(format!(
                    "annotation {}: {v:?} is not an upgrade mode; expected \"auto\" or \"manual\"",
                    ann::UPGRADE
                ));
                None
            }
        },
    };

    let d = &cfg.resources;
    let cpu_request = quantity(cpu_request, ann::CPU_REQUEST, false, Some(&d.cpu_request));
    let cpu_limit = quantity(cpu_limit, ann::CPU_LIMIT, true, d.cpu_limit.as_ref());
    let memory_request = quantity(
        memory_request,
        ann::MEMORY_REQUEST,
        false,
        Some(&d.memory_request),
    );
    let memory_limit = quantity(
        memory_limit,
        ann::MEMORY_LIMIT,
        true,
        d.memory_limit.as_ref(),
    );
    let mut take = |r: Result<Option<Quantity>, String>| match r {
        Ok(q) => Some(q),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let cpu_request = take(cpu_request);
    let cpu_limit = take(cpu_limit);
    let memory_request = take(memory_request);
    let memory_limit = take(memory_limit);
    for (req_key, lim_key, req, lim) in [
        (ann::CPU_REQUEST, ann::CPU_LIMIT, &cpu_request, &cpu_limit),
        (
            ann::MEMORY_REQUEST,
            ann::MEMORY_LIMIT,
            &memory_request,
            &memory_limit,
        ),
    ] {
        if let (Some(Some(req)), Some(Some(lim))) = (req, lim)
            && req.value() > lim.value()
        {
            errors.push(format!(
                "annotation {req_key}: request {req} exceeds the limit {lim}; expected a \
                 request no larger than the limit (set {lim_key} to raise it)"
            ));
        }
    }

    match (
        module,
        group,
        container,
        port,
        lease_ttl,
        snapshot_every,
        etcd,
        etcd_client_secret,
        log_format,
        upgrade,
        cpu_request,
        cpu_limit,
        memory_request,
        memory_limit,
    ) {
        (
            Some((module_name, module_key)),
            Some(group),
            Ok(container),
            Some(port),
            Some(lease_ttl),
            Some(snapshot_every),
            Some(etcd_endpoints),
            Some(etcd_client_secret),
            Some(log_format),
            Some(upgrade),
            Some(Some(cpu_request)),
            Some(cpu_limit),
            Some(Some(memory_request)),
            Some(memory_limit),
        ) if errors.is_empty() => Ok(Settings {
            module_name,
            module_key,
            group,
            container,
            port,
            lease_ttl,
            snapshot_every,
            etcd_endpoints,
            etcd_client_secret,
            log_format,
            upgrade,
            cpu_request,
            cpu_limit,
            memory_request,
            memory_limit,
        }),
        _ => Err(errors),
    }
}

/// Parses an unsigned decimal integer made of digits only (no sign, no blanks).
fn parse_int<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// An annotation quantity, or the default. `Ok(None)` means "no value" (only limits may
/// say `none`).
fn quantity(
    value: Option<&str>,
    key: &str,
    is_limit: bool,
    default: Option<&Quantity>,
) -> Result<Option<Quantity>, String> {
    match value {
        None => Ok(default.cloned()),
        Some("none") if is_limit => Ok(None),
        Some(v) => Quantity::parse(v).map(Some).map_err(|e| {
            let none = if is_limit { ", or none" } else { "" };
            format!("annotation {key}: {e}; expected a Kubernetes quantity such as 250m, 1 or 512Mi{none}")
        }),
    }
}

/// Splits `NAME[/KEY]`; the flag says whether the key was defaulted.
fn parse_module(value: &str) -> Result<(String, String, bool), String> {
    let (name, key) = match value.split_once('/') {
        Some((name, key)) => (name, Some(key)),
        None => (value, None),
    };
    if key.is_some_and(|k| k.contains('/')) {
        return Err(format!("{value:?} has more than one '/'"));
    }
    validate::dns1123_subdomain(name).map_err(|e| format!("ConfigMap name {name:?} {e}"))?;
    match key {
        None => Ok((name.to_owned(), ann::DEFAULT_MODULE_KEY.to_owned(), true)),
        Some(key) => {
            validate::configmap_key(key).map_err(|e| format!("key {key:?} {e}"))?;
            Ok((name.to_owned(), key.to_owned(), false))
        }
    }
}

/// The label a ReplicaSet's pods carry, holding the suffix of the ReplicaSet's name.
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// The group from the controlling owner: a StatefulSet's name, or the Deployment name of
/// a ReplicaSet (its name without the pod-template-hash suffix).
fn group_from_owner(meta: &PodMeta) -> Result<(String, Option<String>), String> {
    let ask = format!(
        "set annotation {} to the replica group's name (a DNS-1123 label)",
        ann::GROUP
    );
    let owner = meta
        .owner_references
        .iter()
        .find(|r| r.controller == Some(true));
    let Some(owner) = owner else {
        return Err(format!(
            "cannot derive the group: the pod has no controlling owner; {ask}"
        ));
    };
    let kind = owner.kind.as_deref().unwrap_or("");
    let name = owner.name.as_deref().unwrap_or("");
    let mut warning = None;
    let group = match kind {
        "StatefulSet" => name.to_owned(),
        "ReplicaSet" => {
            let hash = meta
                .labels
                .as_ref()
                .and_then(|labels| labels.get(POD_TEMPLATE_HASH_LABEL))
                .and_then(Text::as_str);
            let by_hash = hash.and_then(|h| {
                name.strip_suffix(h)
                    .and_then(|p| p.strip_suffix('-'))
                    .filter(|p| !p.is_empty())
            });
            match by_hash {
                Some(deployment) => deployment.to_owned(),
                None => match name.rsplit_once('-') {
                    Some((deployment, _)) if !deployment.is_empty() => {
                        warning = Some(format!(
                            "group {deployment:?} derived by dropping the last '-' suffix of \
                             ReplicaSet {name:?} (no matching pod-template-hash label); set {} \
                             to be explicit",
                            ann::GROUP
                        ));
                        deployment.to_owned()
                    }
                    _ => {
                        return Err(format!(
                            "cannot derive the group from ReplicaSet {name:?}: no Deployment \
                             name in it; {ask}"
                        ));
                    }
                },
            }
        }
        other => {
            return Err(format!(
                "cannot derive the group from controlling owner {other} {name:?} (only \
                 StatefulSet and Deployment/ReplicaSet are understood); {ask}"
            ));
        }
    };
    validate::dns1123_label(&group)
        .map_err(|e| format!("group {group:?} derived from {kind} {name:?} {e}; {ask}"))?;
    Ok((group, warning))
}

/// Index of the target container.
fn select_container(
    containers: &[Verbatim<Container>],
    requested: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<usize, String> {
    if containers.is_empty() {
        return Err(
            "pod has no containers; expected at least one in spec.containers to become the runtime"
                .to_owned(),
        );
    }
    let names: Vec<&str> = containers.iter().map(|c| name_of(&c.view)).collect();
    let idx = match requested {
        Some(wanted) => names.iter().position(|n| *n == wanted).ok_or_else(|| {
            format!(
                "annotation {}: no container named {wanted:?}; expected one of {}",
                ann::CONTAINER,
                names.join(", ")
            )
        })?,
        None => {
            if containers.len() > 1 {
                warnings.push(format!(
                    "{} not set: using the first container {:?}",
                    ann::CONTAINER,
                    names[0]
                ));
            }
            0
        }
    };
    Ok(idx)
}

/// A container's name, `""` when it has none (the API server would reject it later).
fn name_of(c: &Container) -> &str {
    c.name.as_deref().unwrap_or("")
}

/// The three lists of containers of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    Containers,
    InitContainers,
    EphemeralContainers,
}

impl List {
    /// The field's name in `spec`, for messages.
    fn field(self) -> &'static str {
        match self {
            List::Containers => "containers",
            List::InitContainers => "initContainers",
            List::EphemeralContainers => "ephemeralContainers",
        }
    }
}

/// Every container of the pod (regular, then init, then ephemeral) with its list and index.
fn all_containers(spec: &PodSpec) -> impl Iterator<Item = (List, usize, &Container)> {
    let regular = spec.containers.iter().map(|c| &c.view);
    let init = spec.init_containers.iter().map(|c| &**c);
    let ephemeral = spec.ephemeral_containers.iter().map(|c| &**c);
    regular
        .enumerate()
        .map(|(i, c)| (List::Containers, i, c))
        .chain(init.enumerate().map(|(i, c)| (List::InitContainers, i, c)))
        .chain(
            ephemeral
                .enumerate()
                .map(|(i, c)| (List::EphemeralContainers, i, c)),
        )
}

/// The containers other than the target that share the pod's network and port names:
/// every regular container and the sidecars (init containers with `restartPolicy:
/// Always`), as `(field path, container)`. Plain init containers have exited before the
/// runtime starts, and Kubernetes does not count their ports either.
fn neighbours(spec: &PodSpec, target: usize) -> Vec<(String, &Container)> {
    all_containers(spec)
        .filter(|(list, i, c)| match list {
            List::Containers => *i != target,
            List::InitContainers => c.restart_policy.as_deref() == Some("Always"),
            List::EphemeralContainers => false,
        })
        .map(|(list, i, c)| (format!("spec.{}[{i}]", list.field()), c))
        .collect()
}

/// The declared ports of `container`, as `(index, port)`.
fn ports_of(container: &Container) -> impl Iterator<Item = (usize, &ContainerPort)> {
    container.ports.iter().map(|p| &p.view).enumerate()
}

/// The first port of another container (or sidecar) that already declares `port`, as
/// `spec.containers[1].ports[0] (container "sidecar")`.
fn port_user(spec: &PodSpec, target: usize, port: u16) -> Option<String> {
    neighbours(spec, target).into_iter().find_map(|(path, c)| {
        ports_of(c)
            .find(|(_, p)| p.number() == Some(port.into()))
            .map(|(i, _)| format!("{path}.ports[{i}] (container {:?})", name_of(c)))
    })
}

/// Where the rewrite would collide with what the pod already has, in a way that cannot be
/// resolved by the rewrite itself; one message per conflicting item, naming its field
/// path and name and what to change. The target container's own mounts at the runtime's
/// paths and its own ports named `dorado` or numbered like the client port are not
/// collisions: the container becomes the runtime and they are replaced (with a warning).
fn collisions(spec: &PodSpec, s: &Settings) -> Vec<String> {
    let mut errors = Vec::new();
    // Volume names are unique per pod. A volume with one of our names that another
    // container mounts is the user's, and replacing it would change what that container
    // sees. One that only the target container mounts (or nobody) is replaced in
    // `build_patch`: the target becomes the runtime, whose mounts of our names are ours,
    // so nothing else changes (a stale copy of a mutated pod looks like that).
    let ours = runtime_volumes(s);
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let Some(name) = v.view.name.as_deref() else {
            continue;
        };
        if ours.iter().any(|(o, _)| *o == name)
            && let Some(user) = mounted_elsewhere(spec, s.container, name)
        {
            errors.push(format!(
                "spec.volumes[{i}]: volume name {name:?} is used by the Dorado rewrite for {}, \
                 but {user} mounts this volume; rename the volume and the volumeMounts that \
                 refer to it",
                volume_purpose(name)
            ));
        }
    }
    // Port names must be unique per container only, but Services and probes that name a
    // port use the first container declaring it (Kubernetes warns about duplicates), so a
    // second "dorado" port would make `targetPort: dorado` ambiguous.
    for (path, c) in neighbours(spec, s.container) {
        for (i, _) in ports_of(c).filter(|(_, p)| p.name.as_deref() == Some(PORT_NAME)) {
            errors.push(format!(
                "{path}.ports[{i}] (container {:?}): port name {PORT_NAME:?} is used by the \
                 Dorado rewrite for the runtime's client port; rename this port",
                name_of(c)
            ));
        }
    }
    // A block device at one of the runtime's mount paths is invalid (a path is either a
    // mount or a device) and the runtime has no use for it; removing it silently would
    // hide a mistake, so the user moves it. (`select_container` chose an index into the
    // non-empty list.)
    let target = &spec.containers[s.container].view;
    let our_paths: Vec<&str> = runtime_mount_specs(s).map(|(_, path, _)| *path).collect();
    for (i, d) in target.volume_devices.iter().enumerate() {
        let path = d.device_path.as_deref().unwrap_or("");
        if our_paths.contains(&path) {
            errors.push(format!(
                "spec.containers[{}].volumeDevices[{i}] (container {:?}, device {:?}): \
                 devicePath {path} is where the Dorado runtime mounts a volume; move the \
                 device to another path or another container",
                s.container,
                name_of(target),
                d.name.as_deref().unwrap_or("")
            ));
        }
    }
    errors
}

/// What the volume of the rewrite with this name holds, for messages.
fn volume_purpose(name: &str) -> &'static str {
    match name {
        MODULE_VOLUME => "the module ConfigMap",
        TMP_VOLUME => "the runtime's /tmp",
        ETCD_TLS_VOLUME => "the etcd client certificate Secret",
        _ => "its own volume",
    }
}

/// The runtime container's volume mounts: volume, path, read-only. The etcd one only
/// when the endpoints are `https://`.
const RUNTIME_MOUNTS: &[(&str, &str, bool)] = &[
    (MODULE_VOLUME, MODULE_MOUNT_PATH, true),
    (TMP_VOLUME, TMP_MOUNT_PATH, false),
    (ETCD_TLS_VOLUME, ETCD_TLS_MOUNT_PATH, true),
];

/// The entries of [`RUNTIME_MOUNTS`] this pod's runtime gets.
fn runtime_mount_specs(
    s: &Settings,
) -> impl Iterator<Item = &'static (&'static str, &'static str, bool)> {
    RUNTIME_MOUNTS
        .iter()
        .filter(|(name, ..)| *name != ETCD_TLS_VOLUME || s.etcd_client_secret.is_some())
}

/// The volume mounts the runtime container gets.
fn runtime_mounts(s: &Settings) -> Vec<Value> {
    runtime_mount_specs(s)
        .map(|(name, path, read_only)| {
            if *read_only {
                json!({ "name": name, "mountPath": path, "readOnly": true })
            } else {
                json!({ "name": name, "mountPath": path })
            }
        })
        .collect()
}

/// The pod volumes the rewrite adds, by name.
fn runtime_volumes(s: &Settings) -> Vec<(&'static str, Value)> {
    let mut volumes = vec![
        (
            MODULE_VOLUME,
            json!({
                "name": MODULE_VOLUME,
                "configMap": {
                    "name": s.module_name,
                    "items": [{ "key": s.module_key, "path": s.module_key }],
                    "defaultMode": MODULE_FILE_MODE,
                },
            }),
        ),
        (
            TMP_VOLUME,
            json!({ "name": TMP_VOLUME, "emptyDir": { "sizeLimit": TMP_SIZE_LIMIT } }),
        ),
    ];
    if let Some(secret) = &s.etcd_client_secret {
        let items: Vec<Value> = ETCD_TLS_FILES
            .iter()
            .map(|(key, _)| json!({ "key": key, "path": key }))
            .collect();
        volumes.push((
            ETCD_TLS_VOLUME,
            json!({
                "name": ETCD_TLS_VOLUME,
                "secret": { "secretName": secret, "items": items, "defaultMode": ETCD_TLS_FILE_MODE },
            }),
        ));
    }
    volumes
}

/// A JSON pointer from raw (unescaped) tokens; `~` and `/` are escaped as `~0` and `~1`.
pub fn pointer<'t>(tokens: impl IntoIterator<Item = Token<'t>>) -> PointerBuf {
    PointerBuf::from_tokens(tokens)
}

fn tok(s: &str) -> Token<'_> {
    Token::new(s)
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

fn replace(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Replace(ReplaceOperation { path, value })
}

fn build_patch(pod: &Pod, s: &Settings, cfg: &MutationConfig, warnings: &mut Vec<String>) -> Patch {
    let Pod {
        metadata: meta,
        spec,
    } = pod;
    let mut ops = Vec::new();

    ops.push(add(
        pointer([tok("metadata"), tok("annotations"), tok(ann::STATUS)]),
        json!(ann::STATUS_MUTATED),
    ));

    match &meta.labels {
        Some(labels) => {
            let current = labels.get(ann::GROUP_LABEL);
            if current.and_then(Text::as_str) != Some(s.group.as_str()) {
                if let Some(current) = current {
                    warnings.push(format!(
                        "label {} {current} replaced by {:?}",
                        ann::GROUP_LABEL,
                        s.group
                    ));
                }
                ops.push(add(
                    pointer([tok("metadata"), tok("labels"), tok(ann::GROUP_LABEL)]),
                    json!(s.group),
                ));
            }
        }
        None => ops.push(add(
            pointer([tok("metadata"), tok("labels")]),
            json!({ ann::GROUP_LABEL: s.group }),
        )),
    }

    let automount_explicit = spec.automount_service_account_token.is_some();
    if !automount_explicit {
        ops.push(add(
            pointer([tok("spec"), tok("automountServiceAccountToken")]),
            json!(false),
        ));
    }

    // Service-account token volumes the ServiceAccount admission plugin injected because
    // the pod did not set automountServiceAccountToken: the runtime needs no API access, so
    // its mounts go, and so does the volume unless another container still mounts it.
    let token_volumes = if automount_explicit {
        Vec::new()
    } else {
        injected_token_volumes(spec)
    };
    // The pod's volumes, copied verbatim, by name.
    let mut new_volumes: Vec<(Option<&str>, Value)> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| {
            let name = v.view.name.as_deref().unwrap_or("");
            !token_volumes.iter().any(|t| t == name)
                || mounted_elsewhere(spec, s.container, name).is_some()
        })
        .map(|v| (v.view.name.as_deref(), v.raw.clone()))
        .collect();
    for (name, v) in runtime_volumes(s) {
        match new_volumes.iter().position(|(n, _)| *n == Some(name)) {
            Some(i) => {
                if new_volumes[i].1 != v {
                    warnings.push(format!(
                        "volume {name:?} replaced by the runtime's ({}); no other container \
                         mounts it",
                        volume_purpose(name)
                    ));
                }
                new_volumes[i] = (Some(name), v);
            }
            None => new_volumes.push((Some(name), v)),
        }
    }
    let new_volumes = new_volumes.into_iter().map(|(_, v)| v).collect();
    let volumes_path = pointer([tok("spec"), tok("volumes")]);
    ops.push(if spec.volumes.is_some() {
        replace(volumes_path, Value::Array(new_volumes))
    } else {
        add(volumes_path, Value::Array(new_volumes))
    });

    // `select_container` chose an index into the non-empty list.
    let original = &spec.containers[s.container];
    let container = rewrite_container(original, s, cfg, &token_volumes, warnings);
    ops.push(replace(
        pointer([tok("spec"), tok("containers"), Token::from(s.container)]),
        container,
    ));
    Patch(ops)
}

/// Names of `kube-api-access-*` projected volumes carrying a service-account token.
fn injected_token_volumes(spec: &PodSpec) -> Vec<String> {
    spec.volumes
        .iter()
        .flatten()
        .map(|v| &v.view)
        .filter(|v| {
            let sources = v.projected.as_ref().map(|p| p.sources.as_slice());
            v.name
                .as_deref()
                .is_some_and(|n| n.starts_with("kube-api-access-"))
                && sources.is_some_and(|s| s.iter().any(|s| s.service_account_token.is_some()))
        })
        .filter_map(|v| v.name.clone())
        .collect()
}

/// The first container other than the target (any kind: regular, init, ephemeral) that
/// mounts volume `name`, as `spec.containers[0] (container "sidecar")`.
fn mounted_elsewhere(spec: &PodSpec, target: usize, name: &str) -> Option<String> {
    all_containers(spec)
        .find(|(list, i, c)| {
            (*list, *i) != (List::Containers, target)
                && c.volume_mounts
                    .iter()
                    .any(|m| m.view.name.as_deref() == Some(name))
        })
        .map(|(list, i, c)| format!("spec.{}[{i}] (container {:?})", list.field(), name_of(c)))
}

fn field_ref(path: &str) -> Value {
    json!({ "fieldRef": { "apiVersion": "v1", "fieldPath": path } })
}

/// The runtime's environment, by name, in dependency order (`$(POD_NAME)` and `$(POD_IP)`
/// are expanded by the kubelet, so they come first).
fn runtime_env(s: &Settings) -> Vec<(&'static str, Value)> {
    let value = |name: &'static str, value: String| (name, json!({ "name": name, "value": value }));
    let from = |name: &'static str, path: &str| {
        (name, json!({ "name": name, "valueFrom": field_ref(path) }))
    };
    let mut env = vec![
        from("POD_NAME", "metadata.name"),
        from("POD_NAMESPACE", "metadata.namespace"),
        from("POD_IP", "status.podIP"),
        value("DORADO_GROUP", s.group.clone()),
        from("DORADO_NAMESPACE", "metadata.namespace"),
        value("DORADO_REPLICA", "$(POD_NAME)".into()),
        value(
            "DORADO_MODULE",
            format!("{MODULE_MOUNT_PATH}/{}", s.module_key),
        ),
        value("DORADO_ETCD_ENDPOINTS", s.etcd_endpoints.join(",")),
        value("DORADO_LISTEN", format!("0.0.0.0:{}", s.port)),
        value("DORADO_ADVERTISE", format!("$(POD_IP):{}", s.port)),
        value("DORADO_LEASE_TTL", s.lease_ttl.to_string()),
        value("DORADO_SNAPSHOT_EVERY", s.snapshot_every.to_string()),
        value("DORADO_LOG_FORMAT", s.log_format.as_str().into()),
        value("DORADO_UPGRADE", s.upgrade.as_str().into()),
    ];
    if s.etcd_client_secret.is_some() {
        env.extend(
            ETCD_TLS_FILES
                .iter()
                .map(|(key, var)| value(var, format!("{ETCD_TLS_MOUNT_PATH}/{key}"))),
        );
    }
    env
}

fn http_probe(path: &str, period: u32, failures: u32) -> Value {
    json!({
        "httpGet": { "path": path, "port": PORT_NAME, "scheme": "HTTP" },
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "successThreshold": 1,
        "failureThreshold": failures,
    })
}

/// A copy of `original` turned into the runtime container; unknown fields are kept.
fn rewrite_container(
    original: &Verbatim<Container>,
    s: &Settings,
    cfg: &MutationConfig,
    token_volumes: &[String],
    warnings: &mut Vec<String>,
) -> Value {
    let read = &original.view;
    let mut c = original.raw.as_object().cloned().unwrap_or_default();
    let cname = name_of(read).to_owned();

    c.insert("image".into(), json!(cfg.runtime_image));
    if let Some(policy) = &cfg.image_pull_policy {
        c.insert("imagePullPolicy".into(), json!(policy));
    }
    c.insert("command".into(), json!([RUNTIME_COMMAND]));
    c.insert("args".into(), json!(RUNTIME_ARGS));
    for (dropped, present) in [
        ("workingDir", read.working_dir.is_some()),
        ("lifecycle", read.lifecycle.is_some()),
    ] {
        if present {
            c.remove(dropped);
            warnings.push(format!(
                "container {cname:?}: {dropped} removed (it belonged to the replaced image)"
            ));
        }
    }

    // Environment: ours first (dependency order), then the container's other entries.
    let ours = runtime_env(s);
    let mut env: Vec<Value> = ours.iter().map(|(_, e)| e.clone()).collect();
    for e in &read.env {
        let name = e.view.name.as_deref();
        match ours.iter().find(|(n, _)| Some(*n) == name) {
            Some((n, new)) => {
                if n.starts_with("DORADO_") && *new != e.raw {
                    warnings.push(format!(
                        "container {cname:?}: env {n} replaced; configure the runtime \
                         with dorado.io/* annotations"
                    ));
                }
            }
            None => env.push(e.raw.clone()),
        }
    }
    c.insert("env".into(), Value::Array(env));

    // Ports: ours first; the container's own entries clashing by name or number are
    // replaced (port names are unique per container).
    let our_port = json!({ "name": PORT_NAME, "containerPort": s.port, "protocol": "TCP" });
    let mut ports = vec![our_port.clone()];
    for p in &read.ports {
        let clashes =
            p.view.name.as_deref() == Some(PORT_NAME) || p.view.number() == Some(s.port.into());
        if !clashes {
            ports.push(p.raw.clone());
        } else if p.raw != our_port {
            warnings.push(format!(
                "container {cname:?}: port {} replaced by the runtime's port {PORT_NAME:?} \
                 ({}/TCP)",
                describe_port(&p.view),
                s.port
            ));
        }
    }
    c.insert("ports".into(), Value::Array(ports));

    // Volume mounts: ours first; the container's own mounts at our paths or of our
    // volumes are replaced (mount paths are unique per container; the runtime owns these
    // paths), and the injected service-account token is unmounted.
    let our_mounts = runtime_mounts(s);
    let mount_names: Vec<&str> = runtime_mount_specs(s).map(|(name, ..)| *name).collect();
    let mount_paths: Vec<&str> = runtime_mount_specs(s).map(|(_, path, _)| *path).collect();
    let mut mounts = our_mounts.clone();
    for m in &read.volume_mounts {
        let path = m.view.mount_path.as_deref().unwrap_or("");
        let name = m.view.name.as_deref().unwrap_or("");
        if token_volumes.iter().any(|t| t == name) {
            continue;
        }
        if !mount_names.contains(&name) && !mount_paths.contains(&path) {
            mounts.push(m.raw.clone());
        } else if !our_mounts.contains(&m.raw) {
            warnings.push(format!(
                "container {cname:?}: volumeMount of {name:?} at {path} replaced by the \
                 runtime's mounts ({})",
                describe_mounts(s)
            ));
        }
    }
    c.insert("volumeMounts".into(), Value::Array(mounts));

    // Probes: startup (generous, covers module compilation and replay), then liveness and
    // readiness (ready = caught up with the log).
    c.insert("startupProbe".into(), http_probe("/healthz", 2, 90));
    c.insert("livenessProbe".into(), http_probe("/healthz", 10, 3));
    c.insert("readinessProbe".into(), http_probe("/readyz", 5, 3));

    c.insert(
        "securityContext".into(),
        security_context(read.security_context.as_deref(), cfg.run_as_user),
    );
    let resources = resources(read.resources.as_ref(), s, &cname, warnings);
    c.insert("resources".into(), resources);
    Value::Object(c)
}

/// `"http" (8080/TCP)` for messages.
fn describe_port(p: &ContainerPort) -> String {
    let number = p
        .container_port
        .as_ref()
        .map_or("?".to_owned(), ToString::to_string);
    let protocol = p.protocol.as_deref().unwrap_or("TCP");
    match &p.name {
        Some(name) => format!("{name:?} ({number}/{protocol})"),
        None => format!("{number}/{protocol}"),
    }
}

/// `dorado-module at /etc/dorado/module, ...` for messages.
fn describe_mounts(s: &Settings) -> String {
    runtime_mount_specs(s)
        .map(|(name, path, _)| format!("{name} at {path}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A securityContext that satisfies the *restricted* Pod Security Standard. Only
/// SELinux/AppArmor settings and a `Localhost` seccomp profile of the original are kept.
fn security_context(original: Option<&SecurityContext>, uid: i64) -> Value {
    let mut sc = Map::new();
    if let Some(old) = original {
        if let Some(v) = &old.se_linux_options {
            sc.insert("seLinuxOptions".into(), v.clone());
        }
        if let Some(v) = &old.app_armor_profile {
            sc.insert("appArmorProfile".into(), v.clone());
        }
        if let Some(p) = &old.seccomp_profile
            && p.view.profile_type.as_deref() == Some("Localhost")
        {
            sc.insert("seccompProfile".into(), p.raw.clone());
        }
    }
    sc.insert("allowPrivilegeEscalation".into(), json!(false));
    sc.insert("capabilities".into(), json!({ "drop": ["ALL"] }));
    sc.insert("privileged".into(), json!(false));
    sc.insert("readOnlyRootFilesystem".into(), json!(true));
    sc.insert("runAsNonRoot".into(), json!(true));
    sc.insert("runAsUser".into(), json!(uid));
    sc.insert("runAsGroup".into(), json!(uid));
    sc.entry("seccompProfile")
        .or_insert_with(|| json!({ "type": "RuntimeDefault" }));
    Value::Object(sc)
}

/// Sets cpu/memory requests and limits; other resource names (ephemeral-storage, devices)
/// and `claims` are kept.
fn resources(
    original: Option<&Verbatim<ResourceRequirements>>,
    s: &Settings,
    cname: &str,
    warnings: &mut Vec<String>,
) -> Value {
    let mut res = original
        .and_then(|r| r.raw.as_object())
        .cloned()
        .unwrap_or_default();
    let none = BTreeMap::new();
    let (requests, limits) =
        original.map_or((&none, &none), |r| (&r.view.requests, &r.view.limits));
    for (section, current, cpu, memory) in [
        (
            "requests",
            requests,
            Some(&s.cpu_request),
            Some(&s.memory_request),
        ),
        (
            "limits",
            limits,
            s.cpu_limit.as_ref(),
            s.memory_limit.as_ref(),
        ),
    ] {
        let mut map: Map<String, Value> = current
            .iter()
            .map(|(name, q)| (name.clone(), Value::from(q.clone())))
            .collect();
        for (name, q) in [("cpu", cpu), ("memory", memory)] {
            map.remove(name);
            if let Some(old) = current.get(name)
                && q.is_none_or(|q| old.as_str() != Some(q.as_str()))
            {
                let new = q.map_or("nothing".to_owned(), |q| format!("{:?}", q.as_str()));
                warnings.push(format!(
                    "container {cname:?}: resources.{section}.{name} {old} replaced by {new}"
                ));
            }
            if let Some(q) = q {
                map.insert(name.into(), json!(q.as_str()));
            }
        }
        if map.is_empty() {
            res.remove(section);
        } else {
            res.insert(section.into(), Value::Object(map));
        }
    }
    Value::Object(res)
}
#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MutationConfig {
        MutationConfig::new("dorado:test", vec!["http://etcd:2379".into()])
    }

    #[test]
    fn pointer_escapes_tilde_and_slash() {
        let p = pointer([tok("metadata"), tok("annotations"), tok("a~b/c")]);
        assert_eq!(p.as_str(), "/metadata/annotations/a~0b~1c");
        let p = pointer([tok("metadata"), tok("annotations"), tok(ann::STATUS)]);
        assert_eq!(p.as_str(), "/metadata/annotations/dorado.io~1status");
    }

    #[test]
    fn module_reference_forms() {
        assert_eq!(
            parse_module("kv/kv.wasm").unwrap(),
            ("kv".into(), "kv.wasm".into(), false)
        );
        assert_eq!(
            parse_module("kv").unwrap(),
            ("kv".into(), "module.wasm".into(), true)
        );
        for bad in ["", "/kv.wasm", "kv/", "kv/a/b", "KV/x", "kv/a b"] {
            assert!(parse_module(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn group_from_replicaset_uses_the_hash_label() {
        let pod = json!({ "metadata": {
            "labels": { "pod-template-hash": "7d4b9c8f6" },
            "ownerReferences": [
                { "kind": "Node", "name": "x" },
                { "kind": "ReplicaSet", "name": "web-api-7d4b9c8f6", "controller": true }
            ]
        }});
        assert_eq!(
            group_from_owner(&Pod::of(&pod).unwrap().metadata).unwrap(),
            ("web-api".into(), None)
        );
        // Without the label, the last suffix is dropped and a warning says so.
        let pod = json!({ "metadata": { "ownerReferences": [
            { "kind": "ReplicaSet", "name": "web-api-7d4b9c8f6", "controller": true }
        ]}});
        let (g, w) = group_from_owner(&Pod::of(&pod).unwrap().metadata).unwrap();
        assert_eq!(g, "web-api");
        assert!(w.unwrap().contains("dorado.io/group"));
        let pod = json!({ "metadata": { "ownerReferences": [
            { "kind": "ReplicaSet", "name": "plain", "controller": true }
        ]}});
        assert!(
            group_from_owner(&Pod::of(&pod).unwrap().metadata)
                .unwrap_err()
                .contains("dorado.io/group")
        );
    }

    #[test]
    fn pod_without_metadata_is_skipped() {
        for pod in [
            json!({}),
            json!(null),
            json!({ "metadata": { "annotations": null } }),
        ] {
            assert_eq!(
                mutate_pod(&pod, &cfg()).verdict,
                Verdict::Skip(Skip::NotOptedIn)
            );
        }
    }

    #[test]
    fn odd_shapes_are_denied_not_panicking() {
        let base = |spec: Value| {
            json!({
                "metadata": {
                    "annotations": { "dorado.io/replicate": "true", "dorado.io/module": "kv/kv.wasm", "dorado.io/group": "kv" }
                },
                "spec": spec
            })
        };
        for spec in [
            json!(null),
            json!({}),
            json!({ "containers": [] }),
            json!({ "containers": "x" }),
            json!({ "containers": [ 1 ] }),
        ] {
            let d = mutate_pod(&base(spec.clone()), &cfg());
            assert!(matches!(d.verdict, Verdict::Deny(_)), "{spec}: {d:?}");
        }
        // A container without a name still works (the API server would reject it later).
        let d = mutate_pod(&base(json!({ "containers": [ {} ] })), &cfg());
        assert!(matches!(d.verdict, Verdict::Mutate(_)), "{d:?}");
    }

    #[test]
    fn unreadable_pods_are_denied_with_the_reason() {
        let opted_in = json!({ "dorado.io/replicate": "true", "dorado.io/module": "kv/kv.wasm" });
        for (pod, reason) in [
            (
                json!("x"),
                "invalid type: string \"x\", expected a JSON object",
            ),
            (
                json!({ "metadata": { "annotations": [] } }),
                "expected a map",
            ),
            // An array is not a spec, even one that reads as "the first field is
            // containers" (a patch written for it would not apply).
            (
                json!({ "metadata": { "annotations": opted_in }, "spec": [[{}]] }),
                "expected a JSON object (PodSpec)",
            ),
            (
                json!({ "metadata": { "annotations": opted_in },
                        "spec": { "containers": [ { "ports": "x" } ] } }),
                "invalid type: string \"x\", expected a sequence",
            ),
            (
                json!({ "metadata": { "annotations": opted_in, "labels": "x" },
                        "spec": { "containers": [ {} ] } }),
                "expected a map",
            ),
        ] {
            let Verdict::Deny(msg) = mutate_pod(&pod, &cfg()).verdict else {
                panic!("{pod}: expected a denial")
            };
            assert!(msg.starts_with("the pod cannot be read ("), "{msg}");
            assert!(
                msg.contains(reason) && msg.contains("expected a v1 Pod"),
                "{msg}"
            );
        }
    }

    #[test]
    fn pods_left_alone_are_not_read_further() {
        // Only the annotations are read before the pod opts in.
        for annotations in [
            json!(null),
            json!({}),
            json!({ "dorado.io/replicate": "false" }),
        ] {
            let pod = json!({
                "metadata": { "annotations": annotations, "labels": 1, "ownerReferences": "x" },
                "spec": [[{}]]
            });
            let d = mutate_pod(&pod, &cfg());
            assert!(matches!(d.verdict, Verdict::Skip(_)), "{pod}: {d:?}");
        }
    }

    #[test]
    fn request_above_limit_is_denied() {
        let pod = json!({
            "metadata": { "annotations": {
                "dorado.io/replicate": "true", "dorado.io/module": "kv/kv.wasm",
                "dorado.io/group": "kv", "dorado.io/memory-request": "1Gi",
                "dorado.io/memory-limit": "512Mi"
            }},
            "spec": { "containers": [ { "name": "kv", "image": "x" } ] }
        });
        let Verdict::Deny(msg) = mutate_pod(&pod, &cfg()).verdict else {
            panic!("expected a denial")
        };
        assert!(msg.contains("dorado.io/memory-request"), "{msg}");
        assert!(msg.contains("exceeds the limit 512Mi"), "{msg}");
    }
}
