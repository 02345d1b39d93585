//! The pure mutation: a pod as raw JSON in, a [`Decision`] out (a JSON patch, a skip or a
//! denial, plus admission warnings). No I/O, no clock, no global state.
//!
//! The pod is never converted into typed structs: the patch is computed on the raw
//! [`serde_json::Value`], so fields this crate does not know (newer Kubernetes versions,
//! alpha fields) are never dropped. The rewritten container is a copy of the original
//! container object with Dorado's fields set, so its unknown fields survive as well.
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

use std::collections::HashSet;

use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use serde_json::{Map, Value, json};

use crate::annotations as ann;
use crate::config::{LogFormat, MAX_LEASE_TTL_SECS, MIN_LEASE_TTL_SECS, MutationConfig};
use crate::quantity::Quantity;
use crate::validate;

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
    cpu_request: Quantity,
    cpu_limit: Option<Quantity>,
    memory_request: Quantity,
    memory_limit: Option<Quantity>,
}

/// Decides what to do with `pod` (the raw `request.object` of a pod CREATE).
pub fn mutate_pod(pod: &Value, cfg: &MutationConfig) -> Decision {
    let mut warnings = Vec::new();
    let annotations = pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object);
    let Some(annotations) = annotations else {
        return skip(Skip::NotOptedIn, warnings);
    };

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
        Some(Value::String(v)) if v == "false" => return skip(Skip::OptedOut, warnings),
        Some(Value::String(v)) if v == "true" => {}
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
        Some(Value::String(v)) if v == ann::STATUS_MUTATED => {
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

    let settings = match resolve(pod, annotations, cfg, &mut warnings) {
        Ok(s) => s,
        Err(errors) => return deny(errors.join("; "), warnings),
    };
    let collisions = collisions(pod, &settings);
    if !collisions.is_empty() {
        return deny(collisions.join("; "), warnings);
    }
    let patch = build_patch(pod, &settings, cfg, &mut warnings);
    Decision {
        verdict: Verdict::Mutate(patch),
        warnings,
    }
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
fn get_str<'a>(annotations: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match annotations.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(format!("annotation {key}: got {other}; expected a string")),
    }
}

/// Resolves every setting, collecting all problems so one denial lists them all.
fn resolve(
    pod: &Value,
    annotations: &Map<String, Value>,
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
        None => match group_from_owner(pod) {
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

    let container = select_container(pod, container, warnings).map_err(|e| errors.push(e));
    if let (Ok(idx), Some(port)) = (&container, port)
        && let Some(user) = port_user(pod, *idx, port)
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

/// The group from the controlling owner: a StatefulSet's name, or the Deployment name of
/// a ReplicaSet (its name without the pod-template-hash suffix).
fn group_from_owner(pod: &Value) -> Result<(String, Option<String>), String> {
    let ask = format!(
        "set annotation {} to the replica group's name (a DNS-1123 label)",
        ann::GROUP
    );
    let owner = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .and_then(|refs| {
            refs.iter()
                .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        });
    let Some(owner) = owner else {
        return Err(format!(
            "cannot derive the group: the pod has no controlling owner; {ask}"
        ));
    };
    let kind = owner.get("kind").and_then(Value::as_str).unwrap_or("");
    let name = owner.get("name").and_then(Value::as_str).unwrap_or("");
    let mut warning = None;
    let group = match kind {
        "StatefulSet" => name.to_owned(),
        "ReplicaSet" => {
            let hash = pod
                .pointer("/metadata/labels/pod-template-hash")
                .and_then(Value::as_str);
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
    pod: &Value,
    requested: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<usize, String> {
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            "pod has no containers; expected at least one in spec.containers to become the runtime"
                .to_owned()
        })?;
    let names: Vec<&str> = containers
        .iter()
        .map(|c| c.get("name").and_then(Value::as_str).unwrap_or(""))
        .collect();
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
    if !containers[idx].is_object() {
        return Err(format!("container {:?} is not an object", names[idx]));
    }
    Ok(idx)
}

/// The containers other than the target that share the pod's network and port names:
/// every regular container and the sidecars (init containers with `restartPolicy:
/// Always`), as `(field path, container)`. Plain init containers have exited before the
/// runtime starts, and Kubernetes does not count their ports either.
fn neighbours(pod: &Value, target: usize) -> Vec<(String, &Value)> {
    let list = |key: &str| {
        pod.pointer(&format!("/spec/{key}"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    let regular = list("containers")
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != target)
        .map(|(i, c)| (format!("spec.containers[{i}]"), c));
    let sidecars = list("initContainers")
        .iter()
        .enumerate()
        .filter(|(_, c)| c.get("restartPolicy").and_then(Value::as_str) == Some("Always"))
        .map(|(i, c)| (format!("spec.initContainers[{i}]"), c));
    regular.chain(sidecars).collect()
}

/// The declared ports of `container`, as `(index, port)`.
fn ports_of(container: &Value) -> impl Iterator<Item = (usize, &Value)> {
    container
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
}

/// The first port of another container (or sidecar) that already declares `port`, as
/// `spec.containers[1].ports[0] (container "sidecar")`.
fn port_user(pod: &Value, target: usize, port: u16) -> Option<String> {
    neighbours(pod, target).into_iter().find_map(|(path, c)| {
        ports_of(c)
            .find(|(_, p)| p.get("containerPort").and_then(Value::as_u64) == Some(port.into()))
            .map(|(i, _)| {
                format!(
                    "{path}.ports[{i}] (container {:?})",
                    name_of(c).unwrap_or("")
                )
            })
    })
}

/// Where the rewrite would collide with what the pod already has, in a way that cannot be
/// resolved by the rewrite itself; one message per conflicting item, naming its field
/// path and name and what to change. The target container's own mounts at the runtime's
/// paths and its own ports named `dorado` or numbered like the client port are not
/// collisions: the container becomes the runtime and they are replaced (with a warning).
fn collisions(pod: &Value, s: &Settings) -> Vec<String> {
    let mut errors = Vec::new();
    // Volume names are unique per pod. A volume with one of our names that another
    // container mounts is the user's, and replacing it would change what that container
    // sees. One that only the target container mounts (or nobody) is replaced in
    // `build_patch`: the target becomes the runtime, whose mounts of our names are ours,
    // so nothing else changes (a stale copy of a mutated pod looks like that).
    let ours = runtime_volumes(s);
    let volumes = pod.pointer("/spec/volumes").and_then(Value::as_array);
    for (i, v) in volumes.into_iter().flatten().enumerate() {
        let Some(name) = name_of(v) else { continue };
        if ours.iter().any(|o| name_of(o) == Some(name))
            && let Some(user) = mounted_elsewhere(pod, s.container, name)
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
    for (path, c) in neighbours(pod, s.container) {
        for (i, _) in ports_of(c).filter(|(_, p)| name_of(p) == Some(PORT_NAME)) {
            errors.push(format!(
                "{path}.ports[{i}] (container {:?}): port name {PORT_NAME:?} is used by the \
                 Dorado rewrite for the runtime's client port; rename this port",
                name_of(c).unwrap_or("")
            ));
        }
    }
    // A block device at one of the runtime's mount paths is invalid (a path is either a
    // mount or a device) and the runtime has no use for it; removing it silently would
    // hide a mistake, so the user moves it.
    let target = &pod["spec"]["containers"][s.container];
    let our_paths: Vec<&str> = RUNTIME_MOUNTS
        .iter()
        .filter(|(name, ..)| *name != ETCD_TLS_VOLUME || s.etcd_client_secret.is_some())
        .map(|(_, path, _)| *path)
        .collect();
    let devices = target.get("volumeDevices").and_then(Value::as_array);
    for (i, d) in devices.into_iter().flatten().enumerate() {
        let path = d.get("devicePath").and_then(Value::as_str).unwrap_or("");
        if our_paths.contains(&path) {
            errors.push(format!(
                "spec.containers[{}].volumeDevices[{i}] (container {:?}, device {:?}): \
                 devicePath {path} is where the Dorado runtime mounts a volume; move the \
                 device to another path or another container",
                s.container,
                name_of(target).unwrap_or(""),
                name_of(d).unwrap_or("")
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

/// The volume mounts the runtime container gets.
fn runtime_mounts(s: &Settings) -> Vec<Value> {
    RUNTIME_MOUNTS
        .iter()
        .filter(|(name, ..)| *name != ETCD_TLS_VOLUME || s.etcd_client_secret.is_some())
        .map(|(name, path, read_only)| {
            if *read_only {
                json!({ "name": name, "mountPath": path, "readOnly": true })
            } else {
                json!({ "name": name, "mountPath": path })
            }
        })
        .collect()
}

/// The pod volumes the rewrite adds.
fn runtime_volumes(s: &Settings) -> Vec<Value> {
    let mut volumes = vec![
        json!({
            "name": MODULE_VOLUME,
            "configMap": {
                "name": s.module_name,
                "items": [{ "key": s.module_key, "path": s.module_key }],
                "defaultMode": MODULE_FILE_MODE,
            },
        }),
        json!({ "name": TMP_VOLUME, "emptyDir": { "sizeLimit": TMP_SIZE_LIMIT } }),
    ];
    if let Some(secret) = &s.etcd_client_secret {
        let items: Vec<Value> = ETCD_TLS_FILES
            .iter()
            .map(|(key, _)| json!({ "key": key, "path": key }))
            .collect();
        volumes.push(json!({
            "name": ETCD_TLS_VOLUME,
            "secret": { "secretName": secret, "items": items, "defaultMode": ETCD_TLS_FILE_MODE },
        }));
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

fn build_patch(
    pod: &Value,
    s: &Settings,
    cfg: &MutationConfig,
    warnings: &mut Vec<String>,
) -> Patch {
    let mut ops = Vec::new();

    ops.push(add(
        pointer([tok("metadata"), tok("annotations"), tok(ann::STATUS)]),
        json!(ann::STATUS_MUTATED),
    ));

    match pod.pointer("/metadata/labels").and_then(Value::as_object) {
        Some(labels) => {
            let current = labels.get(ann::GROUP_LABEL);
            if current != Some(&json!(s.group)) {
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

    let automount_explicit = pod.pointer("/spec/automountServiceAccountToken").is_some();
    if !automount_explicit {
        ops.push(add(
            pointer([tok("spec"), tok("automountServiceAccountToken")]),
            json!(false),
        ));
    }

    let volumes = runtime_volumes(s);
    // Service-account token volumes the ServiceAccount admission plugin injected because
    // the pod did not set automountServiceAccountToken: the runtime needs no API access, so
    // its mounts go, and so does the volume unless another container still mounts it.
    let token_volumes = if automount_explicit {
        Vec::new()
    } else {
        injected_token_volumes(pod)
    };
    let existing = pod.pointer("/spec/volumes").and_then(Value::as_array);
    let mut new_volumes: Vec<Value> = existing
        .into_iter()
        .flatten()
        .filter(|v| {
            let name = name_of(v).unwrap_or("");
            !token_volumes.iter().any(|t| t == name)
                || mounted_elsewhere(pod, s.container, name).is_some()
        })
        .cloned()
        .collect();
    for v in volumes {
        match new_volumes.iter().position(|e| name_of(e) == name_of(&v)) {
            Some(i) => {
                if new_volumes[i] != v {
                    warnings.push(format!(
                        "volume {:?} replaced by the runtime's ({}); no other container \
                         mounts it",
                        name_of(&v).unwrap_or(""),
                        volume_purpose(name_of(&v).unwrap_or(""))
                    ));
                }
                new_volumes[i] = v;
            }
            None => new_volumes.push(v),
        }
    }
    let volumes_path = pointer([tok("spec"), tok("volumes")]);
    ops.push(if existing.is_some() {
        replace(volumes_path, Value::Array(new_volumes))
    } else {
        add(volumes_path, Value::Array(new_volumes))
    });

    let original = &pod["spec"]["containers"][s.container];
    let container = rewrite_container(original, s, cfg, &token_volumes, warnings);
    ops.push(replace(
        pointer([tok("spec"), tok("containers"), Token::from(s.container)]),
        container,
    ));
    Patch(ops)
}

/// Names of `kube-api-access-*` projected volumes carrying a service-account token.
fn injected_token_volumes(pod: &Value) -> Vec<String> {
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| {
            let sources = v.pointer("/projected/sources").and_then(Value::as_array);
            name_of(v).is_some_and(|n| n.starts_with("kube-api-access-"))
                && sources.is_some_and(|s| s.iter().any(|s| s.get("serviceAccountToken").is_some()))
        })
        .filter_map(|v| name_of(v).map(str::to_owned))
        .collect()
}

/// The first container other than the target (any kind: regular, init, ephemeral) that
/// mounts volume `name`, as `spec.containers[0] (container "sidecar")`.
fn mounted_elsewhere(pod: &Value, target: usize, name: &str) -> Option<String> {
    let mounts = |c: &Value| {
        c.get("volumeMounts")
            .and_then(Value::as_array)
            .is_some_and(|ms| ms.iter().any(|m| name_of(m) == Some(name)))
    };
    [
        ("containers", Some(target)),
        ("initContainers", None),
        ("ephemeralContainers", None),
    ]
    .into_iter()
    .find_map(|(key, skip)| {
        let list = pod
            .pointer(&format!("/spec/{key}"))
            .and_then(Value::as_array)?;
        list.iter()
            .enumerate()
            .find(|(i, c)| Some(*i) != skip && mounts(c))
            .map(|(i, c)| format!("spec.{key}[{i}] (container {:?})", name_of(c).unwrap_or("")))
    })
}

fn field_ref(path: &str) -> Value {
    json!({ "fieldRef": { "apiVersion": "v1", "fieldPath": path } })
}

/// The runtime's environment, in dependency order (`$(POD_NAME)` and `$(POD_IP)` are
/// expanded by the kubelet, so they come first).
fn runtime_env(s: &Settings) -> Vec<Value> {
    let mut env = vec![
        json!({ "name": "POD_NAME", "valueFrom": field_ref("metadata.name") }),
        json!({ "name": "POD_NAMESPACE", "valueFrom": field_ref("metadata.namespace") }),
        json!({ "name": "POD_IP", "valueFrom": field_ref("status.podIP") }),
        json!({ "name": "DORADO_GROUP", "value": s.group }),
        json!({ "name": "DORADO_NAMESPACE", "valueFrom": field_ref("metadata.namespace") }),
        json!({ "name": "DORADO_REPLICA", "value": "$(POD_NAME)" }),
        json!({ "name": "DORADO_MODULE", "value": format!("{MODULE_MOUNT_PATH}/{}", s.module_key) }),
        json!({ "name": "DORADO_ETCD_ENDPOINTS", "value": s.etcd_endpoints.join(",") }),
        json!({ "name": "DORADO_LISTEN", "value": format!("0.0.0.0:{}", s.port) }),
        json!({ "name": "DORADO_ADVERTISE", "value": format!("$(POD_IP):{}", s.port) }),
        json!({ "name": "DORADO_LEASE_TTL", "value": s.lease_ttl.to_string() }),
        json!({ "name": "DORADO_SNAPSHOT_EVERY", "value": s.snapshot_every.to_string() }),
        json!({ "name": "DORADO_LOG_FORMAT", "value": s.log_format.as_str() }),
    ];
    if s.etcd_client_secret.is_some() {
        env.extend(ETCD_TLS_FILES.iter().map(
            |(key, var)| json!({ "name": var, "value": format!("{ETCD_TLS_MOUNT_PATH}/{key}") }),
        ));
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

fn name_of(v: &Value) -> Option<&str> {
    v.get("name").and_then(Value::as_str)
}

/// A copy of `original` turned into the runtime container; unknown fields are kept.
fn rewrite_container(
    original: &Value,
    s: &Settings,
    cfg: &MutationConfig,
    token_volumes: &[String],
    warnings: &mut Vec<String>,
) -> Value {
    let mut c = original.as_object().cloned().unwrap_or_default();
    let cname = name_of(original).unwrap_or("").to_owned();

    c.insert("image".into(), json!(cfg.runtime_image));
    if let Some(policy) = &cfg.image_pull_policy {
        c.insert("imagePullPolicy".into(), json!(policy));
    }
    c.insert("command".into(), json!([RUNTIME_COMMAND]));
    c.insert("args".into(), json!(RUNTIME_ARGS));
    for dropped in ["workingDir", "lifecycle"] {
        if c.remove(dropped).is_some() {
            warnings.push(format!(
                "container {cname:?}: {dropped} removed (it belonged to the replaced image)"
            ));
        }
    }

    // Environment: ours first (dependency order), then the container's other entries.
    let ours = runtime_env(s);
    let our_names: HashSet<&str> = ours.iter().filter_map(name_of).collect();
    let mut env = ours.clone();
    if let Some(existing) = c.get("env").and_then(Value::as_array) {
        for e in existing {
            match name_of(e) {
                Some(n) if our_names.contains(n) => {
                    let new = ours.iter().find(|o| name_of(o) == Some(n));
                    if n.starts_with("DORADO_") && new != Some(e) {
                        warnings.push(format!(
                            "container {cname:?}: env {n} replaced; configure the runtime \
                             with dorado.io/* annotations"
                        ));
                    }
                }
                _ => env.push(e.clone()),
            }
        }
    }
    c.insert("env".into(), Value::Array(env));

    // Ports: ours first; the container's own entries clashing by name or number are
    // replaced (port names are unique per container).
    let our_port = json!({ "name": PORT_NAME, "containerPort": s.port, "protocol": "TCP" });
    let mut ports = vec![our_port.clone()];
    for p in c
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let clashes = name_of(p) == Some(PORT_NAME)
            || p.get("containerPort").and_then(Value::as_u64) == Some(s.port.into());
        if !clashes {
            ports.push(p.clone());
        } else if *p != our_port {
            warnings.push(format!(
                "container {cname:?}: port {} replaced by the runtime's port {PORT_NAME:?} \
                 ({}/TCP)",
                describe_port(p),
                s.port
            ));
        }
    }
    c.insert("ports".into(), Value::Array(ports));

    // Volume mounts: ours first; the container's own mounts at our paths or of our
    // volumes are replaced (mount paths are unique per container; the runtime owns these
    // paths), and the injected service-account token is unmounted.
    let our_mounts = runtime_mounts(s);
    let mount_names: Vec<&str> = our_mounts.iter().filter_map(name_of).collect();
    let mount_paths: Vec<&str> = our_mounts
        .iter()
        .filter_map(|m| m.get("mountPath").and_then(Value::as_str))
        .collect();
    let mut mounts = our_mounts.clone();
    for m in c
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let path = m.get("mountPath").and_then(Value::as_str).unwrap_or("");
        let name = name_of(m).unwrap_or("");
        if token_volumes.iter().any(|t| t == name) {
            continue;
        }
        if !mount_names.contains(&name) && !mount_paths.contains(&path) {
            mounts.push(m.clone());
        } else if !our_mounts.contains(m) {
            warnings.push(format!(
                "container {cname:?}: volumeMount of {name:?} at {path} replaced by the \
                 runtime's mounts ({})",
                describe_mounts(&our_mounts)
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
        security_context(c.get("securityContext"), cfg.run_as_user),
    );
    let resources = resources(c.get("resources"), s, &cname, warnings);
    c.insert("resources".into(), resources);
    Value::Object(c)
}

/// `"http" (8080/TCP)` for messages.
fn describe_port(p: &Value) -> String {
    let number = p
        .get("containerPort")
        .map_or("?".to_owned(), Value::to_string);
    let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
    match name_of(p) {
        Some(name) => format!("{name:?} ({number}/{protocol})"),
        None => format!("{number}/{protocol}"),
    }
}

/// `dorado-module at /etc/dorado/module, ...` for messages.
fn describe_mounts(mounts: &[Value]) -> String {
    mounts
        .iter()
        .map(|m| {
            let path = m.get("mountPath").and_then(Value::as_str).unwrap_or("");
            format!("{} at {path}", name_of(m).unwrap_or(""))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A securityContext that satisfies the *restricted* Pod Security Standard. Only
/// SELinux/AppArmor settings and a `Localhost` seccomp profile of the original are kept.
fn security_context(original: Option<&Value>, uid: i64) -> Value {
    let mut sc = Map::new();
    if let Some(old) = original.and_then(Value::as_object) {
        for keep in ["seLinuxOptions", "appArmorProfile"] {
            if let Some(v) = old.get(keep) {
                sc.insert(keep.into(), v.clone());
            }
        }
        if let Some(p) = old.get("seccompProfile")
            && p.get("type").and_then(Value::as_str) == Some("Localhost")
        {
            sc.insert("seccompProfile".into(), p.clone());
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
    original: Option<&Value>,
    s: &Settings,
    cname: &str,
    warnings: &mut Vec<String>,
) -> Value {
    let mut res = original
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (section, cpu, memory) in [
        ("requests", Some(&s.cpu_request), Some(&s.memory_request)),
        ("limits", s.cpu_limit.as_ref(), s.memory_limit.as_ref()),
    ] {
        let mut map = res
            .get(section)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (name, q) in [("cpu", cpu), ("memory", memory)] {
            let old = map.remove(name);
            if let Some(old) = &old
                && q.map(|q| json!(q.as_str())).as_ref() != Some(old)
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
        assert_eq!(group_from_owner(&pod).unwrap(), ("web-api".into(), None));
        // Without the label, the last suffix is dropped and a warning says so.
        let pod = json!({ "metadata": { "ownerReferences": [
            { "kind": "ReplicaSet", "name": "web-api-7d4b9c8f6", "controller": true }
        ]}});
        let (g, w) = group_from_owner(&pod).unwrap();
        assert_eq!(g, "web-api");
        assert!(w.unwrap().contains("dorado.io/group"));
        let pod = json!({ "metadata": { "ownerReferences": [
            { "kind": "ReplicaSet", "name": "plain", "controller": true }
        ]}});
        assert!(
            group_from_owner(&pod)
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
