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
use k8s_openapi::api::core::v1::{
    ConfigMap, Container as K8sContainer, EnvVarSource, KeyToPath, Pod, PodSecurityContext,
    PodSpec, Probe as K8sProbe, Secret, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

use crate::podman::{self, Container, Network};

/// Node-side state: the pod network, the ConfigMaps and Secrets the API
/// server holds, and the pods' directories.
#[derive(Debug)]
pub struct Kubelet {
    net: Network,
    root: PathBuf,
    config_maps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
    started: u32,
}

/// Where and with what node-side extras a pod starts.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The pod IP (an address on the kubelet's network).
    pub ip: Ipv4Addr,
    /// A hosts file the kubelet keeps current, mounted read-only at
    /// `/etc/hosts` instead of podman's (what cluster DNS would answer).
    pub hosts_file: Option<PathBuf>,
    /// `persistentVolumeClaim` volumes: claim name → the bound volume's
    /// directory on the node.
    pub claims: BTreeMap<String, PathBuf>,
    /// `spec.nodeName` for the downward API.
    pub node_name: String,
}

impl RunOptions {
    /// At `ip`, without extras, on the node `e2e-node`.
    pub fn at(ip: Ipv4Addr) -> Self {
        RunOptions {
            ip,
            hosts_file: None,
            claims: BTreeMap::new(),
            node_name: "e2e-node".to_string(),
        }
    }
}

/// A pod whose containers are running.
#[derive(Debug)]
pub struct RunningPod {
    /// `metadata.name`.
    pub name: String,
    /// `status.podIP`.
    pub ip: Ipv4Addr,
    /// The pod it was started from.
    pub spec: Pod,
    /// The pod's directory (volumes, logs); removed when deleted.
    pub dir: PathBuf,
    containers: Vec<ContainerProcess>,
}

/// A container as the kubelet reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// Its name in the spec.
    pub name: String,
    /// A container instance exists now (not between restarts).
    pub running: bool,
    /// Restarts so far.
    pub restart_count: u32,
    /// Exit code of the last instance that ended.
    pub last_exit: Option<i32>,
    /// Why the kubelet gave up restarting it.
    pub error: Option<String>,
}

/// The log files of a pod's containers (shared with its supervisors).
#[derive(Debug, Clone)]
pub struct LogSource {
    containers: Vec<(String, Arc<Supervisor>)>,
}

impl LogSource {
    /// The CRI log file of container `name`'s current instance, or of the
    /// previous one (`previous`, as `kubectl logs -p`).
    pub fn file(&self, name: &str, previous: bool) -> anyhow::Result<PathBuf> {
        let (_, sup) = self
            .containers
            .iter()
            .find(|(n, _)| n == name)
            .with_context(|| format!("container {name:?} is not in the pod"))?;
        let st = sup.state.lock().expect("lifecycle lock");
        let n = if previous {
            st.restart_count
                .checked_sub(1)
                .with_context(|| format!("previous terminated container {name:?} not found"))?
        } else {
            st.restart_count
        };
        Ok(st.log_dir.join(format!("{n}.log")))
    }
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

/// A `configMap` or `secret` volume: which object's keys become files.
#[derive(Debug, Clone)]
struct KeyFiles {
    /// `configmap` or `secret` (for messages).
    what: &'static str,
    name: String,
    optional: bool,
    items: Option<Vec<KeyToPath>>,
    default_mode: Option<i32>,
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

    /// Make ConfigMaps known, as the API server holds them (the newest copy
    /// of a name wins).
    pub fn add_config_maps(&mut self, maps: impl IntoIterator<Item = ConfigMap>) {
        self.config_maps.extend(maps);
    }

    /// Make Secrets known, as the API server holds them (the newest copy of
    /// a name wins).
    pub fn add_secrets(&mut self, secrets: impl IntoIterator<Item = Secret>) {
        self.secrets.extend(secrets);
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
    pub fn run(&mut self, pod: &Pod, slot: usize) -> anyhow::Result<RunningPod> {
        let options = RunOptions::at(self.slot_ip(slot));
        self.run_with(pod, &options)
    }

    /// Start `pod` as `options` say; returns once every container is started.
    pub fn run_with(&mut self, pod: &Pod, options: &RunOptions) -> anyhow::Result<RunningPod> {
        let name = pod
            .metadata
            .name
            .clone()
            .context("the pod has no metadata.name")?;
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let spec = pod
            .spec
            .as_ref()
            .with_context(|| format!("pod {name} has no spec"))?;
        let unsupported = [
            ("initContainers", spec.init_containers.is_some()),
            ("ephemeralContainers", spec.ephemeral_containers.is_some()),
            ("hostAliases", spec.host_aliases.is_some()),
            ("overhead", spec.overhead.is_some()),
            ("resourceClaims", spec.resource_claims.is_some()),
            ("os", spec.os.is_some()),
            ("hostNetwork: true", spec.host_network == Some(true)),
            ("hostPID: true", spec.host_pid == Some(true)),
            ("hostIPC: true", spec.host_ipc == Some(true)),
            ("hostUsers: false", spec.host_users == Some(false)),
            (
                "shareProcessNamespace: true",
                spec.share_process_namespace == Some(true),
            ),
        ];
        if let Some((what, _)) = unsupported.iter().find(|(_, set)| *set) {
            bail!("pod {name}: spec.{what} is not supported by this harness");
        }
        let policy = match spec.restart_policy.as_deref() {
            None | Some("Always") => RestartPolicy::Always,
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            Some(other) => bail!("pod {name}: restartPolicy {other:?} is not a restart policy"),
        };
        self.started += 1;
        let dir = self.root.join(format!("{name}.{}", self.started));
        std::fs::create_dir_all(&dir)?;
        let ip = options.ip;
        let psc = spec.security_context.clone().unwrap_or_default();
        let fs_group = psc
            .fs_group
            .map(|g| u32::try_from(g).context("fsGroup"))
            .transpose()?;
        let volumes = self
            .volumes(
                &name,
                &namespace,
                spec,
                &dir.join("volumes"),
                fs_group,
                options,
            )
            .with_context(|| format!("pod {name}: volumes"))?;
        let mut running = RunningPod {
            name: name.clone(),
            ip,
            spec: pod.clone(),
            dir: dir.clone(),
            containers: Vec::new(),
        };
        if spec.containers.is_empty() {
            bail!("pod {name}: spec.containers is empty");
        }
        for c in &spec.containers {
            let process = self
                .start_container(pod, &psc, c, options, &volumes, &dir, policy)
                .with_context(|| format!("pod {name}: container {}", c.name))?;
            running.containers.push(process);
        }
        Ok(running)
    }

    /// Materialise the pod's volumes; returns name → directory.
    fn volumes(
        &self,
        pod: &str,
        namespace: &str,
        spec: &PodSpec,
        dir: &Path,
        fs_group: Option<u32>,
        options: &RunOptions,
    ) -> anyhow::Result<BTreeMap<String, PathBuf>> {
        let mut out = BTreeMap::new();
        for v in spec.volumes.iter().flatten() {
            let name = v.name.as_str();
            // The volume sources this node implements; any other one set
            // makes the volume differ from this copy.
            let supported = Volume {
                name: v.name.clone(),
                config_map: v.config_map.clone(),
                secret: v.secret.clone(),
                empty_dir: v.empty_dir.clone(),
                persistent_volume_claim: v.persistent_volume_claim.clone(),
                ..Volume::default()
            };
            if supported != *v {
                bail!(
                    "pod {pod}: volume {name}: only configMap, secret, emptyDir and persistentVolumeClaim volumes are supported by this harness: {}",
                    serde_json::to_string(v).unwrap_or_default()
                );
            }
            if let Some(pvc) = &v.persistent_volume_claim {
                // The bound volume's directory, as it is: the kubelet applies
                // no fsGroup to hostPath-backed volumes.
                let claim = &pvc.claim_name;
                let path = options.claims.get(claim).with_context(|| {
                    format!("pod {pod}: volume {name}: claim {claim:?} is not bound to a volume on this node")
                })?;
                out.insert(name.to_string(), path.clone());
                continue;
            }
            let path = dir.join(name);
            std::fs::create_dir_all(&path)?;
            if let Some(cm) = &v.config_map {
                let files = KeyFiles {
                    what: "configmap",
                    name: cm.name.clone(),
                    optional: cm.optional.unwrap_or(false),
                    items: cm.items.clone(),
                    default_mode: cm.default_mode,
                };
                self.key_files_volume(&files, namespace, &path)
                    .with_context(|| format!("volume {name}"))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            } else if let Some(secret) = &v.secret {
                let files = KeyFiles {
                    what: "secret",
                    name: secret
                        .secret_name
                        .clone()
                        .with_context(|| format!("volume {name}: secret.secretName is missing"))?,
                    optional: secret.optional.unwrap_or(false),
                    items: secret.items.clone(),
                    default_mode: secret.default_mode,
                };
                self.key_files_volume(&files, namespace, &path)
                    .with_context(|| format!("volume {name}"))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            } else if let Some(empty) = &v.empty_dir {
                if empty.medium.as_deref().is_some_and(|m| !m.is_empty()) {
                    bail!(
                        "pod {pod}: volume {name}: emptyDir.medium is not supported by this harness"
                    );
                }
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
            } else {
                bail!("pod {pod}: volume {name} has no volume source");
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
    fn key_files_volume(&self, src: &KeyFiles, namespace: &str, dir: &Path) -> anyhow::Result<()> {
        let in_ns = |meta: &ObjectMeta| {
            meta.name.as_deref() == Some(src.name.as_str())
                && meta.namespace.as_deref().unwrap_or("default") == namespace
        };
        // The newest copy wins (a kubelet reads the object as it is now).
        let keys: Option<BTreeMap<String, Vec<u8>>> = if src.what == "secret" {
            self.secrets
                .iter()
                .rev()
                .find(|s| in_ns(&s.metadata))
                .map(|s| {
                    let mut keys: BTreeMap<String, Vec<u8>> = s
                        .string_data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                        .collect();
                    keys.extend(
                        s.data
                            .iter()
                            .flatten()
                            .map(|(k, v)| (k.clone(), v.0.clone())),
                    );
                    keys
                })
        } else {
            self.config_maps
                .iter()
                .rev()
                .find(|m| in_ns(&m.metadata))
                .map(|m| {
                    let mut keys: BTreeMap<String, Vec<u8>> = m
                        .data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                        .collect();
                    keys.extend(
                        m.binary_data
                            .iter()
                            .flatten()
                            .map(|(k, v)| (k.clone(), v.0.clone())),
                    );
                    keys
                })
        };
        let (what, name) = (src.what, &src.name);
        let Some(keys) = keys else {
            if src.optional {
                return Ok(());
            }
            bail!("{what} \"{name}\" not found in namespace {namespace}");
        };
        let mode_of = |m: Option<i32>| -> anyhow::Result<u32> {
            u32::try_from(m.or(src.default_mode).unwrap_or(0o644)).context("file mode")
        };
        let items: Vec<(String, String, u32)> = match &src.items {
            Some(items) => items
                .iter()
                .map(|i| Ok((i.key.clone(), i.path.clone(), mode_of(i.mode)?)))
                .collect::<anyhow::Result<_>>()?,
            None => keys
                .keys()
                .map(|k| Ok((k.clone(), k.clone(), mode_of(None)?)))
                .collect::<anyhow::Result<_>>()?,
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

    #[allow(clippy::too_many_arguments)]
    fn start_container(
        &self,
        pod: &Pod,
        psc: &PodSecurityContext,
        c: &K8sContainer,
        options: &RunOptions,
        volumes: &BTreeMap<String, PathBuf>,
        pod_dir: &Path,
        policy: RestartPolicy,
    ) -> anyhow::Result<ContainerProcess> {
        let ip = options.ip;
        let name = c.name.as_str();
        let unsupported = [
            ("envFrom", c.env_from.is_some()),
            ("lifecycle", c.lifecycle.is_some()),
            ("volumeDevices", c.volume_devices.is_some()),
            ("resizePolicy", c.resize_policy.is_some()),
            ("restartPolicy", c.restart_policy.is_some()),
            ("stdin", c.stdin == Some(true)),
            ("tty", c.tty == Some(true)),
        ];
        if let Some((what, _)) = unsupported.iter().find(|(_, set)| *set) {
            bail!("{what} is not supported by this harness");
        }
        if let Some(p) = c
            .ports
            .iter()
            .flatten()
            .find(|p| p.host_port.is_some() || p.host_ip.is_some())
        {
            bail!(
                "ports with hostPort/hostIP are not supported by this harness: port {}",
                p.container_port
            );
        }
        let image_ref = c.image.as_deref().context("the container has no image")?;
        if c.image_pull_policy.as_deref() == Some("Always") {
            bail!("imagePullPolicy: Always needs a registry; this node has none");
        }
        let image = inspect_image(image_ref)?;

        // Environment: the container's, in order (podman merges the image's under it).
        let mut env: Vec<(String, String)> = Vec::new();
        let mut defined: BTreeMap<String, String> = BTreeMap::new();
        for e in c.env.iter().flatten() {
            let key = e.name.clone();
            let value = if let Some(v) = &e.value {
                expand(v, &defined)
            } else if let Some(from) = &e.value_from {
                field_ref(pod, ip, self.net.gateway(), &options.node_name, from)
                    .with_context(|| format!("env {key}"))?
            } else {
                String::new()
            };
            defined.insert(key.clone(), value.clone());
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        }

        // Command: Kubernetes' rules for command/args vs ENTRYPOINT/CMD.
        let strings = |v: &Option<Vec<String>>| -> Option<Vec<String>> {
            v.as_ref()
                .map(|a| a.iter().map(|s| expand(s, &defined)).collect())
        };
        let entrypoint = image.entrypoint.clone().unwrap_or_default();
        let argv: Vec<String> = match (strings(&c.command), strings(&c.args)) {
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
        let csc = c.security_context.clone().unwrap_or_default();
        let unsupported = [
            (
                "seLinuxOptions",
                csc.se_linux_options.is_some() || psc.se_linux_options.is_some(),
            ),
            (
                "windowsOptions",
                csc.windows_options.is_some() || psc.windows_options.is_some(),
            ),
            ("procMount", csc.proc_mount.is_some()),
            (
                "appArmorProfile",
                csc.app_armor_profile.is_some() || psc.app_armor_profile.is_some(),
            ),
            ("sysctls", psc.sysctls.is_some()),
        ];
        if let Some((what, _)) = unsupported.iter().find(|(_, set)| *set) {
            bail!("securityContext.{what} is not supported by this harness");
        }
        if csc.privileged == Some(true) {
            bail!("privileged containers are not supported by this harness");
        }
        let (image_uid, image_gid) = image_user(&image.user)?;
        let non_root = csc.run_as_non_root.or(psc.run_as_non_root).unwrap_or(false);
        let uid = match (csc.run_as_user.or(psc.run_as_user), image_uid) {
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
        let user = match (csc.run_as_group.or(psc.run_as_group), image_gid) {
            (Some(g), _) => format!("{uid}:{}", u32::try_from(g).context("runAsGroup")?),
            (None, Some(g)) => format!("{uid}:{g}"),
            // The user's primary group in the image, as the runtime resolves it.
            (None, None) => uid.to_string(),
        };
        let read_only_root = csc.read_only_root_filesystem.unwrap_or(false);

        let mut args: Vec<String> = vec![
            "--pull".into(),
            "never".into(),
            "--network".into(),
            self.net.name().to_string(),
            "--ip".into(),
            ip.to_string(),
            "--hostname".into(),
            pod.spec
                .as_ref()
                .and_then(|s| s.hostname.clone())
                .or_else(|| pod.metadata.name.clone())
                .unwrap_or_else(|| "pod".to_string()),
            "--user".into(),
            user,
            "--log-driver".into(),
            "k8s-file".into(),
        ];
        let groups = psc
            .supplemental_groups
            .iter()
            .flatten()
            .copied()
            .chain(psc.fs_group);
        for g in groups {
            args.extend(["--group-add".into(), g.to_string()]);
        }
        if read_only_root {
            // Kubernetes mounts nothing writable the spec does not name.
            args.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
        }
        let caps = csc.capabilities.clone().unwrap_or_default();
        for cap in caps.drop.iter().flatten() {
            args.extend(["--cap-drop".into(), cap.clone()]);
        }
        for cap in caps.add.iter().flatten() {
            args.extend(["--cap-add".into(), cap.clone()]);
        }
        if csc.allow_privilege_escalation == Some(false) {
            args.extend(["--security-opt".into(), "no-new-privileges".into()]);
        }
        let seccomp = csc
            .seccomp_profile
            .as_ref()
            .or(psc.seccomp_profile.as_ref())
            .map(|p| p.type_.as_str());
        match seccomp {
            None | Some("RuntimeDefault") => {}
            Some("Unconfined") => {
                args.extend(["--security-opt".into(), "seccomp=unconfined".into()])
            }
            Some(other) => bail!("seccompProfile {other} is not supported by this harness"),
        }
        for (k, v) in &env {
            args.extend(["--env".into(), format!("{k}={v}")]);
        }
        if let Some(dir) = &c.working_dir {
            args.extend(["--workdir".into(), dir.clone()]);
        }
        if let Some(hosts) = &options.hosts_file {
            args.extend([
                "--no-hosts".into(),
                "--mount".into(),
                format!(
                    "type=bind,source={},destination=/etc/hosts,ro=true",
                    hosts.display()
                ),
            ]);
        }

        // Volumes at their mount paths.
        for m in c.volume_mounts.iter().flatten() {
            let unsupported = [
                ("subPath", m.sub_path.is_some()),
                ("subPathExpr", m.sub_path_expr.is_some()),
                ("mountPropagation", m.mount_propagation.is_some()),
                ("recursiveReadOnly", m.recursive_read_only.is_some()),
            ];
            if let Some((what, _)) = unsupported.iter().find(|(_, set)| *set) {
                bail!("volumeMounts with {what} are not supported by this harness");
            }
            let (vname, path) = (&m.name, &m.mount_path);
            if !path.starts_with('/') || path.split('/').any(|p| p == "..") || path.contains(',') {
                bail!("mountPath {path:?} must be absolute without .. (and without commas here)");
            }
            let src = volumes
                .get(vname)
                .with_context(|| format!("volumeMount {vname}: no such volume in the pod"))?;
            let ro = if m.read_only.unwrap_or(false) {
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
        let readiness = c
            .readiness_probe
            .as_ref()
            .map(|p| http_probe(c, p).context("readinessProbe"))
            .transpose()?;
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
        self.stop_within(Duration::ZERO);
    }

    /// Stop for good: no more restarts, the current container sent SIGTERM
    /// and SIGKILLed after `grace` (`podman stop -t`), then removed.
    fn stop_within(&self, grace: Duration) {
        let current = {
            let mut st = self.state.lock().expect("lifecycle lock");
            st.stopping = true;
            st.current.take()
        };
        self.wake.notify_all();
        if let Some(c) = current {
            if !grace.is_zero() {
                let _ = podman::podman([
                    "stop",
                    "--ignore",
                    "-t",
                    &grace.as_secs().max(1).to_string(),
                    c.name(),
                ]);
            }
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
        self.spec
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.ports.as_ref()?.first())
            .and_then(|p| u16::try_from(p.container_port).ok())
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

    /// What the kubelet reports per container (`status.containerStatuses`).
    pub fn container_states(&self) -> Vec<ContainerState> {
        self.containers
            .iter()
            .map(|c| {
                let st = c.supervisor.state.lock().expect("lifecycle lock");
                ContainerState {
                    name: c.name.clone(),
                    running: st.current.is_some(),
                    restart_count: st.restart_count,
                    last_exit: st.last_exit,
                    error: st.error.clone(),
                }
            })
            .collect()
    }

    /// One round of readiness probes: container name → whether it is ready
    /// (running, and its probe answered 2xx/3xx; no probe: ready once running).
    pub async fn probe_readiness(&self, http: &reqwest::Client) -> BTreeMap<String, bool> {
        let mut out = BTreeMap::new();
        for c in &self.containers {
            let running = c
                .supervisor
                .state
                .lock()
                .expect("lifecycle lock")
                .current
                .is_some();
            let ready = match (&c.readiness, running) {
                (_, false) => false,
                (None, true) => true,
                (Some(p), true) => {
                    let url = format!("http://{}:{}{}", self.ip, p.port, p.path);
                    matches!(http.get(&url).timeout(p.timeout).send().await,
                        Ok(r) if (200..400).contains(&r.status().as_u16()))
                }
            };
            out.insert(c.name.clone(), ready);
        }
        out
    }

    /// Where the pod's logs are, for a log server that outlives this borrow.
    pub fn log_source(&self) -> LogSource {
        LogSource {
            containers: self
                .containers
                .iter()
                .map(|c| (c.name.clone(), c.supervisor.clone()))
                .collect(),
        }
    }

    /// Delete the pod the way the kubelet does: SIGTERM to every container,
    /// SIGKILL after `grace`, then remove everything it had on the node.
    pub fn delete_within(mut self, grace: Duration) -> anyhow::Result<()> {
        for c in &mut self.containers {
            c.supervisor.stop_within(grace);
            if let Some(t) = c.thread.take() {
                let _ = t.join();
            }
        }
        std::fs::remove_dir_all(&self.dir).with_context(|| format!("remove {}", self.dir.display()))
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
    cri_log_text(text, Some(stream), false)
}

/// What `kubectl logs` prints from a CRI log file: the records of `stream`
/// (both when `None`) in file order, partial records joined, each line
/// prefixed with its time when `timestamps` (`kubectl logs --timestamps`).
pub fn cri_log_text(text: &str, stream: Option<&str>, timestamps: bool) -> String {
    let mut out = String::new();
    let mut at_line_start = true;
    for line in text.lines() {
        let mut f = line.splitn(4, ' ');
        let (Some(time), Some(s), Some(tag)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if stream.is_some_and(|want| want != s) {
            continue;
        }
        if timestamps && at_line_start {
            out.push_str(time);
            out.push(' ');
        }
        out.push_str(f.next().unwrap_or_default());
        at_line_start = tag != "P";
        if at_line_start {
            out.push('\n');
        }
    }
    out
}

/// The downward API subset a pod can name in `env[].valueFrom.fieldRef`.
/// `host` is the node's address (the network's gateway).
fn field_ref(
    pod: &Pod,
    ip: Ipv4Addr,
    host: Ipv4Addr,
    node: &str,
    from: &EnvVarSource,
) -> anyhow::Result<String> {
    let Some(path) = from.field_ref.as_ref().map(|f| f.field_path.as_str()) else {
        bail!(
            "only valueFrom.fieldRef is supported by this harness: {}",
            serde_json::to_string(from).unwrap_or_default()
        );
    };
    let meta = &pod.metadata;
    let label = |prefix: &str, map: &Option<BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(
            map.as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "status.podIP" | "status.podIPs" => ip.to_string(),
        "status.hostIP" | "status.hostIPs" => host.to_string(),
        "spec.nodeName" => node.to_string(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        _ => match label("metadata.labels['", &meta.labels)
            .or_else(|| label("metadata.annotations['", &meta.annotations))
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

fn http_probe(c: &K8sContainer, p: &K8sProbe) -> anyhow::Result<Probe> {
    let get = p
        .http_get
        .as_ref()
        .context("only httpGet probes are supported by this harness")?;
    if get.scheme.as_deref().is_some_and(|s| s != "HTTP") {
        bail!("only HTTP probes are supported by this harness");
    }
    let port = match &get.port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|port| port.name.as_deref() == Some(name.as_str()))
            .and_then(|port| u16::try_from(port.container_port).ok()),
    }
    .with_context(|| format!("probe port {:?} names no container port", get.port))?;
    Ok(Probe {
        path: get.path.clone().unwrap_or_else(|| "/".to_string()),
        port,
        timeout: Duration::from_secs(
            p.timeout_seconds
                .and_then(|t| u64::try_from(t).ok())
                .unwrap_or(1),
        ),
    })
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
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kv-1", "namespace": "ns", "labels": {"app": "kv"}},
            "spec": {"containers": []},
        }))
        .unwrap();
        let ip = Ipv4Addr::new(10, 9, 8, 7);
        let get = |path: &str| {
            field_ref(
                &pod,
                ip,
                Ipv4Addr::new(10, 9, 8, 1),
                "e2e-node",
                &serde_json::from_value(serde_json::json!({"fieldRef": {"fieldPath": path}}))
                    .unwrap(),
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
        assert_eq!(cri_log_text(log, None, false), "idx=1 oops\nhash=ab\n\n");
        assert_eq!(
            cri_log_text(log, Some("stderr"), true),
            "2026-12-04T18:00:00.2+00:00 oops\n"
        );
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
