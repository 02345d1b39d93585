//! The kubelet's and the container runtime's part: a pod spec in, podman
//! containers out, following the spec and nothing else.
//!
//! For each pod: an address on the test's podman network (the pod IP,
//! `status.podIP`), volumes in a pod directory (ConfigMap and Secret keys as
//! files with their modes, `emptyDir` writable by anyone), and for each
//! container one `podman run` of the container's image:
//!
//! - `command`/`args` against the image's `ENTRYPOINT`/`CMD` by Kubernetes'
//!   rules (read from `podman image inspect`), passed as the full entrypoint;
//! - the container's `env`, with downward-API `fieldRef`s filled in and
//!   `$(VAR)` references expanded as the kubelet does (the image's `ENV` is
//!   merged under it by podman);
//! - each volume bind-mounted at its `mountPath` (`readOnly` honoured);
//! - `runAsUser`/`runAsGroup` (container over pod over the image's `USER`),
//!   `runAsNonRoot` enforced against the resulting uid, `fsGroup` and
//!   `supplementalGroups` as extra groups (and the group of the volumes),
//!   `readOnlyRootFilesystem` (`--read-only` without podman's extra tmpfs
//!   mounts), `capabilities` drop/add, `allowPrivilegeEscalation: false`
//!   (`no-new-privileges`), the default seccomp profile for `RuntimeDefault`;
//! - stdout and stderr in a CRI log file in the pod directory
//!   (`containers/<name>/<restart>.log`, the format of `/var/log/pods`): the
//!   pod's log, kept after the container is gone;
//! - a restart after the container ends, per `restartPolicy` (`Always`,
//!   `OnFailure`, `Never`), as a new container with the next log file and a
//!   restart count, after a back-off (1, 2, 4, then 8 s; the kubelet's is
//!   10 s to 5 min).
//!
//! Readiness follows the container's `readinessProbe` (HTTP GET on the pod IP,
//! from the node). Anything in a spec this harness does not implement (other
//! volume types, `envFrom`, `subPath`, init containers, privileged
//! containers, host namespaces, …) is an error, never ignored. Accepted but
//! not acted on: `resources` (no cgroup limits in this sandbox), liveness and
//! startup probes (nothing here depends on a restart by probe),
//! scheduling fields (one node).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use crate::podman::{self, Container, Network};

/// Node-side state: the pod network, the ConfigMaps and Secrets the API
/// server holds, and the pods' directories.
#[derive(Debug)]
pub struct Kubelet {
    net: Network,
    root: PathBuf,
    config_maps: Vec<Value>,
    secrets: Vec<Value>,
    started: u32,
}

/// A pod whose containers are running.
#[derive(Debug)]
pub struct RunningPod {
    /// `metadata.name`.
    pub name: String,
    /// `status.podIP`.
    pub ip: Ipv4Addr,
    /// The pod spec it was started from.
    pub spec: Value,
    /// The pod's directory (volumes, logs); removed when deleted.
    pub dir: PathBuf,
    containers: Vec<ContainerProcess>,
}

/// How a container ended the last time (`lastState.terminated`), with the
/// restarts so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terminated {
    /// Exit code of the last run that ended (137 after SIGKILL).
    pub exit_code: i32,
    /// `restartCount`.
    pub restart_count: u32,
}

#[derive(Debug)]
struct ContainerProcess {
    name: String,
    supervisor: Arc<Supervisor>,
    thread: Option<JoinHandle<()>>,
    readiness: Option<Probe>,
}

/// One container's lifecycle: the current podman container, its restarts,
/// the stop flag the pod's deletion sets.
#[derive(Debug)]
struct Supervisor {
    state: Mutex<Lifecycle>,
    wake: Condvar,
}

#[derive(Debug)]
struct Lifecycle {
    current: Option<Container>,
    restart_count: u32,
    last_exit: Option<i32>,
    stopping: bool,
    /// `podman run` options and image arguments, without `--name` and the
    /// log path (which change per restart).
    run_args: Vec<String>,
    base_name: String,
    log_dir: PathBuf,
    policy: RestartPolicy,
    /// Why the supervisor stopped restarting (a failed `podman run`).
    error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// An HTTP GET readiness probe, resolved to a port.
#[derive(Debug, Clone)]
struct Probe {
    path: String,
    port: u16,
    timeout: Duration,
}

/// Which object a key-files volume projects.
#[derive(Debug, Clone, Copy)]
enum KeyFiles {
    ConfigMap,
    Secret,
}

/// The part of `podman image inspect` the kubelet's rules need.
#[derive(Debug, Deserialize)]
struct ImageConfig {
    #[serde(rename = "User", default)]
    user: String,
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
}

/// Back-off before restart `n` (0-based): 1 s doubling, at most 8 s.
fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.min(3))
}

impl Kubelet {
    /// A kubelet whose pods live under `root` on `net`.
    pub fn new(net: Network, root: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&root)?;
        Ok(Kubelet {
            net,
            root,
            config_maps: Vec::new(),
            secrets: Vec::new(),
            started: 0,
        })
    }

    /// Make ConfigMaps known, as `kubectl apply` would store them.
    pub fn add_config_maps<'a>(&mut self, maps: impl IntoIterator<Item = &'a Value>) {
        self.config_maps.extend(maps.into_iter().cloned());
    }

    /// Make Secrets known, as `kubectl apply` would store them.
    pub fn add_secrets<'a>(&mut self, secrets: impl IntoIterator<Item = &'a Value>) {
        self.secrets.extend(secrets.into_iter().cloned());
    }

    /// The pod network.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// IP of pod slot `slot` (addresses .10 and up of the network).
    pub fn slot_ip(&self, slot: usize) -> Ipv4Addr {
        self.net
            .address(10 + u8::try_from(slot).unwrap_or(200).min(200))
    }

    /// Start `pod` in slot `slot` (its IP); returns once every container is
    /// started (not necessarily ready: see [`RunningPod::wait_ready`]).
    pub fn run(&mut self, pod: &Value, slot: usize) -> anyhow::Result<RunningPod> {
        let name = str_at(pod, "/metadata/name")?.to_string();
        let namespace = pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let spec = &pod["spec"];
        for unsupported in [
            "initContainers",
            "ephemeralContainers",
            "hostAliases",
            "overhead",
            "resourceClaims",
            "os",
        ] {
            if spec.get(unsupported).is_some_and(|v| !v.is_null()) {
                bail!("pod {name}: spec.{unsupported} is not supported by this harness");
            }
        }
        for host in ["hostNetwork", "hostPID", "hostIPC", "hostUsers"] {
            let expected = host == "hostUsers";
            if spec[host].as_bool().is_some_and(|v| v != expected) {
                bail!(
                    "pod {name}: spec.{host}: {} is not supported by this harness",
                    !expected
                );
            }
        }
        if spec["shareProcessNamespace"].as_bool() == Some(true) {
            bail!("pod {name}: spec.shareProcessNamespace is not supported by this harness");
        }
        let policy = match spec["restartPolicy"].as_str() {
            None | Some("Always") => RestartPolicy::Always,
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            Some(other) => bail!("pod {name}: restartPolicy {other:?} is not a restart policy"),
        };
        self.started += 1;
        let dir = self.root.join(format!("{name}.{}", self.started));
        std::fs::create_dir_all(&dir)?;
        let ip = self.slot_ip(slot);
        let fs_group = spec["securityContext"]["fsGroup"]
            .as_u64()
            .map(|g| u32::try_from(g).context("fsGroup"))
            .transpose()?;
        let volumes = self
            .volumes(&name, &namespace, spec, &dir.join("volumes"), fs_group)
            .with_context(|| format!("pod {name}: volumes"))?;
        let mut running = RunningPod {
            name: name.clone(),
            ip,
            spec: pod.clone(),
            dir: dir.clone(),
            containers: Vec::new(),
        };
        let containers = spec["containers"]
            .as_array()
            .filter(|c| !c.is_empty())
            .with_context(|| format!("pod {name}: spec.containers is empty"))?;
        for c in containers {
            let process = self
                .start_container(pod, c, ip, &volumes, &dir, policy)
                .with_context(|| {
                    format!(
                        "pod {name}: container {}",
                        c["name"].as_str().unwrap_or("?")
                    )
                })?;
            running.containers.push(process);
        }
        Ok(running)
    }

    /// Materialise the pod's volumes; returns name → directory.
    fn volumes(
        &self,
        pod: &str,
        namespace: &str,
        spec: &Value,
        dir: &Path,
        fs_group: Option<u32>,
    ) -> anyhow::Result<BTreeMap<String, PathBuf>> {
        let mut out = BTreeMap::new();
        for v in spec["volumes"].as_array().into_iter().flatten() {
            let name = str_at(v, "/name")?;
            let path = dir.join(name);
            std::fs::create_dir_all(&path)?;
            let kinds: Vec<&String> = v
                .as_object()
                .into_iter()
                .flat_map(|o| o.keys())
                .filter(|k| *k != "name")
                .collect();
            match kinds.as_slice() {
                [k] if *k == "configMap" => {
                    self.key_files_volume(KeyFiles::ConfigMap, namespace, &v["configMap"], &path)
                        .with_context(|| format!("volume {name}"))?;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
                }
                [k] if *k == "secret" => {
                    self.key_files_volume(KeyFiles::Secret, namespace, &v["secret"], &path)
                        .with_context(|| format!("volume {name}"))?;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
                }
                [k] if *k == "emptyDir" => {
                    if v["emptyDir"]["medium"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty())
                    {
                        bail!(
                            "pod {pod}: volume {name}: emptyDir.medium is not supported by this harness"
                        );
                    }
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
                }
                _ => bail!(
                    "pod {pod}: volume {name}: only configMap, secret and emptyDir volumes are supported by this harness: {v}"
                ),
            }
            // The kubelet makes volumes group-owned by fsGroup.
            if let Some(gid) = fs_group {
                chown_tree(&path, gid)?;
            }
            out.insert(name.to_string(), path);
        }
        Ok(out)
    }

    /// A `configMap` or `secret` volume: the object's keys as files (all of
    /// them, or the `items`), with `defaultMode`/`mode`.
    fn key_files_volume(
        &self,
        kind: KeyFiles,
        namespace: &str,
        src: &Value,
        dir: &Path,
    ) -> anyhow::Result<()> {
        let (objects, name_field, text_field, base64_field, what) = match kind {
            KeyFiles::ConfigMap => (
                &self.config_maps,
                "/name",
                "data",
                "binaryData",
                "configmap",
            ),
            KeyFiles::Secret => (&self.secrets, "/secretName", "stringData", "data", "secret"),
        };
        let name = str_at(src, name_field)?;
        let optional = src["optional"].as_bool().unwrap_or(false);
        let Some(map) = objects.iter().find(|m| {
            m["metadata"]["name"] == name
                && m["metadata"]["namespace"].as_str().unwrap_or("default") == namespace
        }) else {
            if optional {
                return Ok(());
            }
            bail!("{what} \"{name}\" not found in namespace {namespace}");
        };
        let cm = src;
        let mut keys: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for (k, v) in map[text_field].as_object().into_iter().flatten() {
            keys.insert(
                k.clone(),
                v.as_str().unwrap_or_default().as_bytes().to_vec(),
            );
        }
        for (k, v) in map[base64_field].as_object().into_iter().flatten() {
            // As the API server decodes []byte (Go's encoding/base64 skips
            // line breaks, which kustomize's YAML output contains).
            let text: String = v
                .as_str()
                .unwrap_or_default()
                .chars()
                .filter(|c| *c != '\n' && *c != '\r')
                .collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .with_context(|| format!("{what} {name}: {base64_field}.{k} is not base64"))?;
            keys.insert(k.clone(), bytes);
        }
        let default_mode = cm["defaultMode"].as_u64().unwrap_or(0o644) as u32;
        let items: Vec<(String, String, u32)> = match cm["items"].as_array() {
            Some(items) => items
                .iter()
                .map(|i| {
                    Ok((
                        str_at(i, "/key")?.to_string(),
                        str_at(i, "/path")?.to_string(),
                        i["mode"].as_u64().map_or(default_mode, |m| m as u32),
                    ))
                })
                .collect::<anyhow::Result<_>>()?,
            None => keys
                .keys()
                .map(|k| (k.clone(), k.clone(), default_mode))
                .collect(),
        };
        for (key, path, mode) in items {
            let bytes = keys
                .get(&key)
                .with_context(|| format!("{what} {name} has no key {key:?}"))?;
            if path.starts_with('/') || path.split('/').any(|p| p == "..") {
                bail!("item path {path:?} must be relative without ..");
            }
            let file = dir.join(&path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&file, bytes)?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }

    fn start_container(
        &self,
        pod: &Value,
        c: &Value,
        ip: Ipv4Addr,
        volumes: &BTreeMap<String, PathBuf>,
        pod_dir: &Path,
        policy: RestartPolicy,
    ) -> anyhow::Result<ContainerProcess> {
        let name = str_at(c, "/name")?;
        for unsupported in [
            "envFrom",
            "lifecycle",
            "volumeDevices",
            "resizePolicy",
            "restartPolicy",
            "stdin",
            "tty",
        ] {
            if c.get(unsupported)
                .is_some_and(|v| !v.is_null() && *v != false)
            {
                bail!("{unsupported} is not supported by this harness");
            }
        }
        if let Some(p) =
            c["ports"].as_array().into_iter().flatten().find(|p| {
                p.get("hostPort").is_some_and(|h| !h.is_null()) || p.get("hostIP").is_some()
            })
        {
            bail!("ports with hostPort/hostIP are not supported by this harness: {p}");
        }
        let image_ref = str_at(c, "/image")?;
        if c["imagePullPolicy"] == "Always" {
            bail!("imagePullPolicy: Always needs a registry; this node has none");
        }
        let image = inspect_image(image_ref)?;

        // Environment: the container's, in order (podman merges the image's under it).
        let mut env: Vec<(String, String)> = Vec::new();
        let mut defined: BTreeMap<String, String> = BTreeMap::new();
        for e in c["env"].as_array().into_iter().flatten() {
            let key = str_at(e, "/name")?.to_string();
            let value = if let Some(v) = e.get("value") {
                expand(v.as_str().unwrap_or_default(), &defined)
            } else if let Some(from) = e.get("valueFrom") {
                field_ref(pod, ip, self.net.gateway(), from)
                    .with_context(|| format!("env {key}"))?
            } else {
                String::new()
            };
            defined.insert(key.clone(), value.clone());
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        }

        // Command: Kubernetes' rules for command/args vs ENTRYPOINT/CMD.
        let strings = |v: &Value| -> Option<Vec<String>> {
            v.as_array().map(|a| {
                a.iter()
                    .map(|s| expand(s.as_str().unwrap_or_default(), &defined))
                    .collect()
            })
        };
        let entrypoint = image.entrypoint.clone().unwrap_or_default();
        let argv: Vec<String> = match (strings(&c["command"]), strings(&c["args"])) {
            (Some(cmd), Some(args)) => cmd.into_iter().chain(args).collect(),
            (Some(cmd), None) => cmd,
            (None, Some(args)) => entrypoint.into_iter().chain(args).collect(),
            (None, None) => entrypoint
                .into_iter()
                .chain(image.cmd.clone().unwrap_or_default())
                .collect(),
        };
        if argv.is_empty() {
            bail!("no command: neither the container nor the image gives one");
        }

        // Security context: container over pod over image.
        let csc = &c["securityContext"];
        let psc = &pod["spec"]["securityContext"];
        for unsupported in [
            "seLinuxOptions",
            "windowsOptions",
            "procMount",
            "appArmorProfile",
        ] {
            if csc.get(unsupported).is_some_and(|v| !v.is_null())
                || psc.get(unsupported).is_some_and(|v| !v.is_null())
            {
                bail!("securityContext.{unsupported} is not supported by this harness");
            }
        }
        if psc.get("sysctls").is_some_and(|v| !v.is_null()) {
            bail!("securityContext.sysctls is not supported by this harness");
        }
        if csc["privileged"].as_bool() == Some(true) {
            bail!("privileged containers are not supported by this harness");
        }
        let pick = |key: &str| csc[key].as_u64().or_else(|| psc[key].as_u64());
        let (image_uid, image_gid) = image_user(&image.user)?;
        let non_root = csc["runAsNonRoot"]
            .as_bool()
            .or_else(|| psc["runAsNonRoot"].as_bool())
            .unwrap_or(false);
        let uid = match (pick("runAsUser"), image_uid) {
            (Some(u), _) => u32::try_from(u).context("runAsUser")?,
            (None, Some(u)) => u,
            (None, None) if non_root => bail!(
                "CreateContainerConfigError: container has runAsNonRoot and image has non-numeric user ({}), cannot verify user is non-root",
                image.user
            ),
            (None, None) => bail!(
                "image USER {:?} is a name; this harness needs a numeric USER or runAsUser",
                image.user
            ),
        };
        if non_root && uid == 0 {
            bail!(
                "CreateContainerConfigError: container has runAsNonRoot and image will run as root"
            );
        }
        let user = match (pick("runAsGroup"), image_gid) {
            (Some(g), _) => format!("{uid}:{}", u32::try_from(g).context("runAsGroup")?),
            (None, Some(g)) => format!("{uid}:{g}"),
            // The user's primary group in the image, as the runtime resolves it.
            (None, None) => uid.to_string(),
        };
        let read_only_root = csc["readOnlyRootFilesystem"].as_bool().unwrap_or(false);

        let mut args: Vec<String> = vec![
            "--pull".into(),
            "never".into(),
            "--network".into(),
            self.net.name().to_string(),
            "--ip".into(),
            ip.to_string(),
            "--hostname".into(),
            pod["spec"]["hostname"]
                .as_str()
                .or_else(|| pod["metadata"]["name"].as_str())
                .unwrap_or("pod")
                .to_string(),
            "--user".into(),
            user,
            "--log-driver".into(),
            "k8s-file".into(),
        ];
        let groups = psc["supplementalGroups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .chain(psc["fsGroup"].as_u64());
        for g in groups {
            args.extend(["--group-add".into(), g.to_string()]);
        }
        if read_only_root {
            // Kubernetes mounts nothing writable the spec does not name.
            args.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
        }
        for cap in csc["capabilities"]["drop"].as_array().into_iter().flatten() {
            args.extend(["--cap-drop".into(), str_of(cap, "capabilities.drop")?]);
        }
        for cap in csc["capabilities"]["add"].as_array().into_iter().flatten() {
            args.extend(["--cap-add".into(), str_of(cap, "capabilities.add")?]);
        }
        if csc["allowPrivilegeEscalation"].as_bool() == Some(false) {
            args.extend(["--security-opt".into(), "no-new-privileges".into()]);
        }
        let seccomp = &csc["seccompProfile"]["type"];
        let seccomp = if seccomp.is_null() {
            &psc["seccompProfile"]["type"]
        } else {
            seccomp
        };
        match seccomp.as_str() {
            None | Some("RuntimeDefault") => {}
            Some("Unconfined") => {
                args.extend(["--security-opt".into(), "seccomp=unconfined".into()])
            }
            Some(other) => bail!("seccompProfile {other} is not supported by this harness"),
        }
        for (k, v) in &env {
            args.extend(["--env".into(), format!("{k}={v}")]);
        }
        if let Some(dir) = c["workingDir"].as_str() {
            args.extend(["--workdir".into(), dir.to_string()]);
        }

        // Volumes at their mount paths.
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            for unsupported in [
                "subPath",
                "subPathExpr",
                "mountPropagation",
                "recursiveReadOnly",
            ] {
                if m.get(unsupported).is_some_and(|v| !v.is_null()) {
                    bail!("volumeMounts with {unsupported} are not supported by this harness");
                }
            }
            let vname = str_at(m, "/name")?;
            let path = str_at(m, "/mountPath")?;
            if !path.starts_with('/') || path.split('/').any(|p| p == "..") || path.contains(',') {
                bail!("mountPath {path:?} must be absolute without .. (and without commas here)");
            }
            let src = volumes
                .get(vname)
                .with_context(|| format!("volumeMount {vname}: no such volume in the pod"))?;
            let ro = if m["readOnly"].as_bool().unwrap_or(false) {
                ",ro=true"
            } else {
                ""
            };
            args.extend([
                "--mount".into(),
                format!("type=bind,source={},destination={path}{ro}", src.display()),
            ]);
        }

        // The full command as the entrypoint: podman then adds nothing of the image's.
        args.extend([
            "--entrypoint".into(),
            serde_json::to_string(&argv)?,
            image_ref.to_string(),
        ]);

        let log_dir = pod_dir.join("containers").join(name);
        std::fs::create_dir_all(&log_dir)?;
        let base_name = format!(
            "{}-{}-{name}",
            self.net.name(),
            pod_dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("pod")
                .replace('.', "-")
        );
        let readiness = match c.get("readinessProbe") {
            None | Some(Value::Null) => None,
            Some(p) => Some(http_probe(c, p).context("readinessProbe")?),
        };
        let supervisor = Arc::new(Supervisor {
            state: Mutex::new(Lifecycle {
                current: None,
                restart_count: 0,
                last_exit: None,
                stopping: false,
                run_args: args,
                base_name,
                log_dir,
                policy,
                error: None,
            }),
            wake: Condvar::new(),
        });
        {
            let mut st = supervisor.state.lock().expect("lifecycle lock");
            let first = st.start()?;
            st.current = Some(first);
        }
        let thread = {
            let s = supervisor.clone();
            std::thread::Builder::new()
                .name(format!("kubelet-{name}"))
                .spawn(move || s.supervise())
                .context("spawn the container's supervisor")?
        };
        Ok(ContainerProcess {
            name: name.to_string(),
            supervisor,
            thread: Some(thread),
            readiness,
        })
    }
}

/// `podman image inspect`: the image must be on the node (no registry).
fn inspect_image(image: &str) -> anyhow::Result<ImageConfig> {
    let out = podman::podman(["image", "inspect", "--format", "{{json .Config}}", image])
        .with_context(|| {
            format!("ErrImageNeverPull: image {image:?} is not on this node (build it with scripts/images.sh)")
        })?;
    serde_json::from_str(out.trim()).with_context(|| format!("image {image}: config {out:?}"))
}

/// The image's `USER` as numbers (`uid[:gid]`); `None` when unset or a name.
fn image_user(user: &str) -> anyhow::Result<(Option<u32>, Option<u32>)> {
    if user.is_empty() {
        return Ok((Some(0), Some(0)));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let uid = u.parse().ok();
    let gid = match g {
        Some(g) => Some(
            g.parse()
                .with_context(|| format!("image USER group {g:?}"))?,
        ),
        None => None,
    };
    Ok((uid, gid))
}

fn str_of(v: &Value, what: &str) -> anyhow::Result<String> {
    v.as_str()
        .map(str::to_owned)
        .with_context(|| format!("{what}: {v} is not a string"))
}

/// Give `path` and everything below it group `gid`, group-readable (and
/// group-writable for directories), as the kubelet does for `fsGroup`.
fn chown_tree(path: &Path, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(path, None, Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    let meta = std::fs::symlink_metadata(path)?;
    let mode = meta.permissions().mode();
    if meta.is_dir() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o2070))?;
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), gid)?;
        }
    } else if meta.is_file() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o040))?;
    }
    Ok(())
}

impl Lifecycle {
    /// `podman run` of the next instance (name and log file per restart).
    fn start(&self) -> anyhow::Result<Container> {
        let n = self.restart_count;
        let name = format!("{}-{n}", self.base_name);
        let mut args = vec![
            "--log-opt".to_string(),
            format!("path={}", self.log_dir.join(format!("{n}.log")).display()),
        ];
        args.extend(self.run_args.iter().cloned());
        Container::run(&name, &args)
    }
}

impl Supervisor {
    /// Wait for the current container to end, record how, and start the next
    /// one per the restart policy, until the pod is deleted.
    fn supervise(&self) {
        loop {
            let name = {
                let st = self.state.lock().expect("lifecycle lock");
                match (&st.current, st.stopping) {
                    (Some(c), false) => c.name().to_string(),
                    _ => return,
                }
            };
            // Blocks until the container exits (or is removed by a deletion).
            let waited = podman::podman(["wait", &name]);
            let mut st = self.state.lock().expect("lifecycle lock");
            if st.stopping {
                return;
            }
            let code = match waited.map(|o| o.trim().parse::<i32>()) {
                Ok(Ok(code)) => code,
                Ok(Err(e)) => {
                    st.error = Some(format!("podman wait {name}: {e}"));
                    return;
                }
                Err(e) => {
                    st.error = Some(format!("{e:#}"));
                    return;
                }
            };
            st.last_exit = Some(code);
            // The address is the pod's: free it for the next instance.
            if let Some(old) = st.current.take() {
                let _ = old.remove();
            }
            let restart = match st.policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => code != 0,
                RestartPolicy::Never => false,
            };
            if !restart {
                return;
            }
            let delay = backoff(st.restart_count);
            let (guard, _) = self
                .wake
                .wait_timeout_while(st, delay, |s| !s.stopping)
                .expect("lifecycle lock");
            st = guard;
            if st.stopping {
                return;
            }
            st.restart_count += 1;
            match st.start() {
                Ok(c) => st.current = Some(c),
                Err(e) => {
                    st.error = Some(format!("restart: {e:#}"));
                    return;
                }
            }
        }
    }

    /// Stop for good: no more restarts, the current container SIGKILLed and removed.
    fn stop(&self) {
        let current = {
            let mut st = self.state.lock().expect("lifecycle lock");
            st.stopping = true;
            st.current.take()
        };
        self.wake.notify_all();
        if let Some(c) = current {
            let _ = c.remove();
        }
    }
}

impl RunningPod {
    /// `http://<pod IP>:<port>`.
    pub fn url(&self, port: u16) -> String {
        format!("http://{}:{port}", self.ip)
    }

    /// The port of the first container's first `containerPort`.
    pub fn port(&self) -> anyhow::Result<u16> {
        self.spec["spec"]["containers"][0]["ports"][0]["containerPort"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .context("the first container declares no containerPort")
    }

    /// The first container that has ended at least once, and how it ended
    /// last (the kubelet's `lastState.terminated` and `restartCount`).
    pub fn exited(&self) -> Option<(String, Terminated)> {
        self.containers.iter().find_map(|c| {
            let st = c.supervisor.state.lock().expect("lifecycle lock");
            st.last_exit.map(|exit_code| {
                (
                    c.name.clone(),
                    Terminated {
                        exit_code,
                        restart_count: st.restart_count,
                    },
                )
            })
        })
    }

    /// Restarts of container `name` so far.
    pub fn restart_count(&self, name: &str) -> Option<u32> {
        self.containers.iter().find(|c| c.name == name).map(|c| {
            c.supervisor
                .state
                .lock()
                .expect("lifecycle lock")
                .restart_count
        })
    }

    /// Wait until every container's readiness probe passes (a container
    /// without one is ready once started). Fails at once when a container
    /// ends, with its log: the kubelet would report the pod as crash-looping.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let start = std::time::Instant::now();
        loop {
            if let Some((name, how)) = self.exited() {
                bail!(
                    "pod {}: container {name} ended (exit code {}, {} restarts) instead of becoming ready; its log:\n{}",
                    self.name,
                    how.exit_code,
                    how.restart_count,
                    self.all_logs_of(&name)
                );
            }
            if let Some(err) = self.containers.iter().find_map(|c| {
                c.supervisor
                    .state
                    .lock()
                    .expect("lifecycle lock")
                    .error
                    .clone()
            }) {
                bail!("pod {}: {err}", self.name);
            }
            let mut why = None;
            for c in &self.containers {
                let Some(p) = &c.readiness else { continue };
                let url = format!("http://{}:{}{}", self.ip, p.port, p.path);
                match http.get(&url).timeout(p.timeout).send().await {
                    Ok(r) if (200..400).contains(&r.status().as_u16()) => {}
                    Ok(r) => {
                        why = Some(format!(
                            "{url}: {} {}",
                            r.status(),
                            r.text().await.unwrap_or_default().trim()
                        ));
                    }
                    Err(e) => why = Some(format!("{url}: {e}")),
                }
            }
            let Some(why) = why else { return Ok(()) };
            if start.elapsed() > timeout {
                bail!("pod {} not ready after {timeout:?}: {why}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kubectl logs` of the first container's current instance: its stdout
    /// (`stderr == false`) or stderr lines from the CRI log file.
    pub fn logs(&self, stderr: bool) -> String {
        let Some(c) = self.containers.first() else {
            return String::new();
        };
        let n = c
            .supervisor
            .state
            .lock()
            .expect("lifecycle lock")
            .restart_count;
        let file = c.supervisor.log_dir().join(format!("{n}.log"));
        cri_log_stream(
            &std::fs::read_to_string(file).unwrap_or_default(),
            if stderr { "stderr" } else { "stdout" },
        )
    }

    /// Both streams of every instance of container `name` (for error messages).
    fn all_logs_of(&self, name: &str) -> String {
        let Some(c) = self.containers.iter().find(|c| c.name == name) else {
            return String::new();
        };
        let n = c
            .supervisor
            .state
            .lock()
            .expect("lifecycle lock")
            .restart_count;
        (0..=n)
            .map(|i| {
                let text = std::fs::read_to_string(c.supervisor.log_dir().join(format!("{i}.log")))
                    .unwrap_or_default();
                format!(
                    "--- run {i} stdout:\n{}--- run {i} stderr:\n{}",
                    cri_log_stream(&text, "stdout"),
                    cri_log_stream(&text, "stderr")
                )
            })
            .collect()
    }

    /// Force-delete the pod: SIGKILL every container, then remove everything
    /// it had on the node (volumes, logs).
    pub fn delete_now(mut self) -> anyhow::Result<()> {
        self.kill();
        std::fs::remove_dir_all(&self.dir).with_context(|| format!("remove {}", self.dir.display()))
    }

    fn kill(&mut self) {
        for c in &mut self.containers {
            c.supervisor.stop();
            if let Some(t) = c.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Supervisor {
    fn log_dir(&self) -> PathBuf {
        self.state.lock().expect("lifecycle lock").log_dir.clone()
    }
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One stream of a CRI log file (`<time> <stream> <P|F> <text>` per line;
/// `P` marks a partial line continued by the next record).
pub fn cri_log_stream(text: &str, stream: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut f = line.splitn(4, ' ');
        let (Some(_time), Some(s), Some(tag)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if s != stream {
            continue;
        }
        out.push_str(f.next().unwrap_or_default());
        if tag != "P" {
            out.push('\n');
        }
    }
    out
}

/// The downward API subset a pod can name in `env[].valueFrom.fieldRef`.
/// `host` is the node's address (the network's gateway).
fn field_ref(pod: &Value, ip: Ipv4Addr, host: Ipv4Addr, from: &Value) -> anyhow::Result<String> {
    let Some(path) = from["fieldRef"]["fieldPath"].as_str() else {
        bail!("only valueFrom.fieldRef is supported by this harness: {from}");
    };
    let meta = &pod["metadata"];
    let label = |prefix: &str, map: &Value| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map[key].as_str().unwrap_or_default().to_string())
    };
    Ok(match path {
        "metadata.name" => meta["name"].as_str().unwrap_or_default().to_string(),
        "metadata.namespace" => meta["namespace"].as_str().unwrap_or("default").to_string(),
        "metadata.uid" => meta["uid"].as_str().unwrap_or_default().to_string(),
        "status.podIP" | "status.podIPs" => ip.to_string(),
        "status.hostIP" | "status.hostIPs" => host.to_string(),
        "spec.nodeName" => "e2e-node".to_string(),
        "spec.serviceAccountName" => pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            .to_string(),
        _ => match label("metadata.labels['", &meta["labels"])
            .or_else(|| label("metadata.annotations['", &meta["annotations"]))
        {
            Some(v) => v,
            None => bail!("fieldPath {path:?} is not a downward-API field"),
        },
    })
}

/// Kubernetes' `$(VAR)` expansion: references to variables defined earlier
/// are replaced, `$$` is an escaped `$`, anything else stays as written.
pub fn expand(s: &str, defined: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) if defined.contains_key(&inner[..end]) => {
                    out.push_str(&defined[&inner[..end]]);
                    rest = &inner[end + 1..];
                }
                Some(end) => {
                    out.push_str(&rest[i..i + 2 + end + 1]);
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn http_probe(c: &Value, p: &Value) -> anyhow::Result<Probe> {
    let get = p
        .get("httpGet")
        .with_context(|| format!("only httpGet probes are supported by this harness: {p}"))?;
    if get["scheme"].as_str().is_some_and(|s| s != "HTTP") {
        bail!("only HTTP probes are supported by this harness");
    }
    let port = match &get["port"] {
        Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Value::String(name) => c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|port| port["name"] == name.as_str())
            .and_then(|port| port["containerPort"].as_u64())
            .and_then(|p| u16::try_from(p).ok()),
        _ => None,
    }
    .with_context(|| format!("probe port {} names no container port", get["port"]))?;
    Ok(Probe {
        path: get["path"].as_str().unwrap_or("/").to_string(),
        port,
        timeout: Duration::from_secs(p["timeoutSeconds"].as_u64().unwrap_or(1)),
    })
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> anyhow::Result<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .with_context(|| format!("{pointer} is missing or not a string"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let defined = BTreeMap::from([
            ("POD_IP".to_string(), "10.1.2.3".to_string()),
            ("PORT".to_string(), "7070".to_string()),
        ]);
        assert_eq!(expand("$(POD_IP):$(PORT)", &defined), "10.1.2.3:7070");
        assert_eq!(expand("$$(POD_IP)", &defined), "$(POD_IP)");
        assert_eq!(expand("$(UNDEFINED)-x", &defined), "$(UNDEFINED)-x");
        assert_eq!(expand("a$b$(", &defined), "a$b$(");
        assert_eq!(expand("plain", &defined), "plain");
    }

    #[test]
    fn downward_api_fields() {
        let pod = serde_json::json!({
            "metadata": {"name": "kv-1", "namespace": "ns", "labels": {"app": "kv"}},
            "spec": {},
        });
        let ip = Ipv4Addr::new(10, 9, 8, 7);
        let get = |path: &str| {
            field_ref(
                &pod,
                ip,
                Ipv4Addr::new(10, 9, 8, 1),
                &serde_json::json!({"fieldRef": {"fieldPath": path}}),
            )
        };
        assert_eq!(get("metadata.name").unwrap(), "kv-1");
        assert_eq!(get("metadata.namespace").unwrap(), "ns");
        assert_eq!(get("status.podIP").unwrap(), "10.9.8.7");
        assert_eq!(get("metadata.labels['app']").unwrap(), "kv");
        assert!(get("spec.bogus").is_err());
    }

    #[test]
    fn cri_log_streams_are_separated_and_partial_lines_joined() {
        let log = "2026-12-04T18:00:00.1+00:00 stdout P idx=1 \n\
                   2026-12-04T18:00:00.2+00:00 stderr F oops\n\
                   2026-12-04T18:00:00.3+00:00 stdout F hash=ab\n\
                   2026-12-04T18:00:00.4+00:00 stdout F \n";
        assert_eq!(cri_log_stream(log, "stdout"), "idx=1 hash=ab\n\n");
        assert_eq!(cri_log_stream(log, "stderr"), "oops\n");
    }

    #[test]
    fn image_users_and_backoff() {
        assert_eq!(image_user("").unwrap(), (Some(0), Some(0)));
        assert_eq!(
            image_user("65532:65532").unwrap(),
            (Some(65532), Some(65532))
        );
        assert_eq!(image_user("65532").unwrap(), (Some(65532), None));
        assert_eq!(image_user("nonroot").unwrap(), (None, None));
        assert!(image_user("1:group").is_err());
        let delays: Vec<u64> = (0..6).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 8, 8]);
    }
}
