//! The kubelet's and the container runtime's part: a pod spec in, processes
//! out, following the spec and nothing else.
//!
//! For each pod: its own network namespace (the pod IP, `status.podIP`),
//! volumes in a pod directory (ConfigMap keys as files with their modes,
//! `emptyDir` writable by anyone), and for each container a process started as
//!
//! ```text
//! ip netns exec <pod netns> unshare --mount --uts --propagation private -- sh -c SETUP …
//!   └─ root filesystem: the image's files, host libraries (read-only), /proc,
//!      the device nodes a runtime provides, each volume at its mountPath;
//!      read-only when readOnlyRootFilesystem; hostname = the pod's
//!   └─ chroot --userspec=<runAsUser>:<runAsGroup> <root> <command> <args>
//! ```
//!
//! with the image's environment plus the container's `env` (downward-API
//! `fieldRef`s filled in, `$(VAR)` references expanded as the kubelet does),
//! the command resolved from `command`/`args` and the image's entrypoint as
//! Kubernetes defines it, and `runAsNonRoot` enforced. Readiness follows the
//! container's `readinessProbe` (HTTP GET on the pod IP, from the node).
//! Anything in a spec this harness does not implement (another volume type,
//! `envFrom`, `subPath`, init containers, …) is an error, never ignored.
//!
//! "Images" are a small registry of directories: the runtime image maps
//! `/usr/local/bin/dorado` to the built binary, like `runtime/Dockerfile`.
//! The host's shared libraries are mounted read-only because the test build
//! links glibc dynamically, where the real image is a static musl binary.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use dorado_testkit::netns::NetEnv;
use serde_json::Value;

use crate::Binaries;

/// The image the webhook is told to put into pods (`--runtime-image`).
pub const RUNTIME_IMAGE: &str = concat!("dorado/dorado:", env!("CARGO_PKG_VERSION"));

/// One container image: files, entrypoint, default command, env, user.
#[derive(Debug, Clone)]
pub struct Image {
    /// (path in the image, file on this machine).
    pub files: Vec<(PathBuf, PathBuf)>,
    /// `ENTRYPOINT`.
    pub entrypoint: Vec<String>,
    /// `CMD`.
    pub cmd: Vec<String>,
    /// `ENV` (at least `PATH`).
    pub env: Vec<(String, String)>,
    /// `USER` uid:gid.
    pub user: (u32, u32),
}

/// The images the harness can "pull": the runtime image of `runtime/Dockerfile`.
pub fn images(bins: &Binaries) -> BTreeMap<String, Image> {
    let runtime = Image {
        files: vec![("/usr/local/bin/dorado".into(), bins.dorado.clone())],
        entrypoint: vec!["/usr/local/bin/dorado".into()],
        cmd: vec!["run".into()],
        env: vec![(
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        )],
        user: (65532, 65532),
    };
    BTreeMap::from([(RUNTIME_IMAGE.to_string(), runtime)])
}

/// Node-side state: the pod network, the images, the ConfigMaps the API
/// server holds, and the pods' directories.
#[derive(Debug)]
pub struct Kubelet {
    net: NetEnv,
    root: PathBuf,
    images: BTreeMap<String, Image>,
    config_maps: Vec<Value>,
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
    /// The pod's directory (volumes, root filesystems); removed when deleted.
    pub dir: PathBuf,
    containers: Vec<ContainerProcess>,
}

#[derive(Debug)]
struct ContainerProcess {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    readiness: Option<Probe>,
}

/// An HTTP GET readiness probe, resolved to a port.
#[derive(Debug, Clone)]
struct Probe {
    path: String,
    port: u16,
    timeout: Duration,
}

impl Kubelet {
    /// A kubelet whose pods live under `root` on `net`.
    pub fn new(
        net: NetEnv,
        root: PathBuf,
        images: BTreeMap<String, Image>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&root)?;
        // Container users (not root) must traverse into their root filesystems.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        Ok(Kubelet {
            net,
            root,
            images,
            config_maps: Vec::new(),
            started: 0,
        })
    }

    /// Make ConfigMaps known, as `kubectl apply` would store them.
    pub fn add_config_maps<'a>(&mut self, maps: impl IntoIterator<Item = &'a Value>) {
        self.config_maps.extend(maps.into_iter().cloned());
    }

    /// IP of the pod network slot `slot`.
    pub fn slot_ip(&self, slot: usize) -> Ipv4Addr {
        self.net.slot_ip(slot)
    }

    /// Start `pod` in network slot `slot` (its IP); returns once every
    /// container is started (not necessarily ready: see [`RunningPod::wait_ready`]).
    pub fn run(&mut self, pod: &Value, slot: usize) -> anyhow::Result<RunningPod> {
        let name = str_at(pod, "/metadata/name")?.to_string();
        let namespace = pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let spec = &pod["spec"];
        for unsupported in ["initContainers", "ephemeralContainers"] {
            if spec.get(unsupported).is_some_and(|v| !v.is_null()) {
                bail!("pod {name}: spec.{unsupported} is not supported by this harness");
            }
        }
        self.started += 1;
        let dir = self.root.join(format!("{name}.{}", self.started));
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let ip = self.net.slot_ip(slot);
        let volumes = self
            .volumes(&name, &namespace, spec, &dir.join("volumes"))
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
                .start_container(pod, c, ip, &volumes, &dir, slot)
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
    ) -> anyhow::Result<BTreeMap<String, PathBuf>> {
        let mut out = BTreeMap::new();
        for v in spec["volumes"].as_array().into_iter().flatten() {
            let name = str_at(v, "/name")?;
            let path = dir.join(name);
            std::fs::create_dir_all(&path)?;
            if let Some(cm) = v.get("configMap") {
                self.config_map_volume(namespace, cm, &path)
                    .with_context(|| format!("volume {name}"))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            } else if v.get("emptyDir").is_some() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
            } else {
                bail!(
                    "pod {pod}: volume {name}: only configMap and emptyDir volumes are supported by this harness: {v}"
                );
            }
            out.insert(name.to_string(), path);
        }
        Ok(out)
    }

    fn config_map_volume(&self, namespace: &str, cm: &Value, dir: &Path) -> anyhow::Result<()> {
        let name = str_at(cm, "/name")?;
        let optional = cm["optional"].as_bool().unwrap_or(false);
        let Some(map) = self.config_maps.iter().find(|m| {
            m["metadata"]["name"] == name
                && m["metadata"]["namespace"].as_str().unwrap_or("default") == namespace
        }) else {
            if optional {
                return Ok(());
            }
            bail!("configmap \"{name}\" not found in namespace {namespace}");
        };
        let mut keys: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for (k, v) in map["data"].as_object().into_iter().flatten() {
            keys.insert(
                k.clone(),
                v.as_str().unwrap_or_default().as_bytes().to_vec(),
            );
        }
        for (k, v) in map["binaryData"].as_object().into_iter().flatten() {
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
                .with_context(|| format!("binaryData {k} is not base64"))?;
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
                .with_context(|| format!("configmap {name} has no key {key:?}"))?;
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
        slot: usize,
    ) -> anyhow::Result<ContainerProcess> {
        let name = str_at(c, "/name")?;
        for unsupported in ["envFrom", "lifecycle", "volumeDevices"] {
            if c.get(unsupported).is_some_and(|v| !v.is_null()) {
                bail!("{unsupported} is not supported by this harness");
            }
        }
        let image_ref = str_at(c, "/image")?;
        let image = self.images.get(image_ref).with_context(|| {
            format!("ErrImagePull: image {image_ref:?} is not in the harness's registry")
        })?;

        // Environment: the image's, then the container's in order.
        let mut env: Vec<(String, String)> = image.env.clone();
        let mut defined: BTreeMap<String, String> = BTreeMap::new();
        for e in c["env"].as_array().into_iter().flatten() {
            let key = str_at(e, "/name")?.to_string();
            let value = if let Some(v) = e.get("value") {
                expand(v.as_str().unwrap_or_default(), &defined)
            } else if let Some(from) = e.get("valueFrom") {
                field_ref(pod, ip, from).with_context(|| format!("env {key}"))?
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
        let argv: Vec<String> = match (strings(&c["command"]), strings(&c["args"])) {
            (Some(cmd), Some(args)) => cmd.into_iter().chain(args).collect(),
            (Some(cmd), None) => cmd,
            (None, Some(args)) => image.entrypoint.iter().cloned().chain(args).collect(),
            (None, None) => image
                .entrypoint
                .iter()
                .chain(image.cmd.iter())
                .cloned()
                .collect(),
        };
        if argv.is_empty() {
            bail!("no command: neither the container nor the image gives one");
        }

        // Security context: container over pod over image.
        let csc = &c["securityContext"];
        let psc = &pod["spec"]["securityContext"];
        let pick = |key: &str| csc[key].as_u64().or_else(|| psc[key].as_u64());
        let uid = pick("runAsUser").map_or(image.user.0, |u| u as u32);
        let gid = pick("runAsGroup").map_or(image.user.1, |g| g as u32);
        let non_root = csc["runAsNonRoot"]
            .as_bool()
            .or_else(|| psc["runAsNonRoot"].as_bool())
            .unwrap_or(false);
        if non_root && uid == 0 {
            bail!(
                "CreateContainerConfigError: container has runAsNonRoot and image will run as root"
            );
        }
        let read_only_root = csc["readOnlyRootFilesystem"].as_bool().unwrap_or(false);

        // Mounts: image files, then volumes at their mount paths.
        let mut mounts: Vec<(PathBuf, String, bool)> = image
            .files
            .iter()
            .map(|(inside, host)| (host.clone(), inside.display().to_string(), true))
            .collect();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            if m.get("subPath").is_some() || m.get("subPathExpr").is_some() {
                bail!("volumeMounts with subPath are not supported by this harness");
            }
            let vname = str_at(m, "/name")?;
            let path = str_at(m, "/mountPath")?;
            if !path.starts_with('/') || path.split('/').any(|p| p == "..") {
                bail!("mountPath {path:?} must be absolute without ..");
            }
            let src = volumes
                .get(vname)
                .with_context(|| format!("volumeMount {vname}: no such volume in the pod"))?;
            mounts.push((
                src.clone(),
                path.to_string(),
                m["readOnly"].as_bool().unwrap_or(false),
            ));
        }

        let cdir = pod_dir.join("containers").join(name);
        let rootfs = cdir.join("rootfs");
        std::fs::create_dir_all(&rootfs)?;
        std::fs::set_permissions(&cdir, std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(0o755))?;
        let stdout = cdir.join("stdout.log");
        let stderr = cdir.join("stderr.log");

        let hostname = pod["spec"]["hostname"]
            .as_str()
            .or_else(|| pod["metadata"]["name"].as_str())
            .unwrap_or("pod");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.net.namespace(slot)])
            .args([
                "unshare",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "--",
            ])
            .args(["/bin/sh", "-c", SETUP, "setup"])
            .arg(&rootfs)
            .arg(hostname)
            .arg(format!("{uid}:{gid}"))
            .arg(if read_only_root { "ro" } else { "rw" });
        for (src, dst, ro) in &mounts {
            cmd.arg(src).arg(dst).arg(if *ro { "ro" } else { "rw" });
        }
        cmd.arg("--").args(&argv);
        cmd.env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?);
        let child = cmd.spawn().context("start the container process")?;

        let readiness = match c.get("readinessProbe") {
            None | Some(Value::Null) => None,
            Some(p) => Some(http_probe(c, p).context("readinessProbe")?),
        };
        Ok(ContainerProcess {
            name: name.to_string(),
            child,
            stdout,
            stderr,
            readiness,
        })
    }
}

/// Runs inside the pod's network namespace and the container's new mount and
/// UTS namespaces: builds the root filesystem, then becomes the container.
/// Arguments: ROOT HOSTNAME UID:GID ro|rw, then (SRC DST ro|rw)*, `--`, argv.
const SETUP: &str = r#"
set -eu
root=$1 host=$2 user=$3 rootmode=$4
shift 4
m() { /usr/bin/mount "$@"; }
m --bind "$root" "$root"
mkdir -p "$root/usr/lib" "$root/usr/lib64" "$root/proc" "$root/dev" "$root/etc"
ln -sfn usr/lib "$root/lib"
ln -sfn usr/lib64 "$root/lib64"
m --bind -o ro /usr/lib "$root/usr/lib"
m --bind -o ro /usr/lib64 "$root/usr/lib64"
m -t proc proc "$root/proc"
m -t tmpfs -o mode=755,nosuid tmpfs "$root/dev"
for d in null zero random urandom full tty; do
  touch "$root/dev/$d"
  m --bind "/dev/$d" "$root/dev/$d"
done
while [ "$1" != "--" ]; do
  src=$1 dst=$root$2 mode=$3
  shift 3
  if [ -d "$src" ]; then mkdir -p "$dst"; else mkdir -p "$(dirname "$dst")"; touch "$dst"; fi
  m --bind "$src" "$dst"
  if [ "$mode" = ro ]; then m -o remount,bind,ro "$dst"; fi
done
shift
if [ "$rootmode" = ro ]; then m -o remount,bind,ro "$root"; fi
printf %s "$host" > /proc/sys/kernel/hostname
exec /usr/sbin/chroot --userspec="$user" --groups="${user#*:}" "$root" "$@"
"#;

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

    /// Whether any container has exited (and how).
    pub fn exited(&mut self) -> Option<(String, ExitStatus)> {
        self.containers.iter_mut().find_map(|c| {
            c.child
                .try_wait()
                .ok()
                .flatten()
                .map(|s| (c.name.clone(), s))
        })
    }

    /// Wait until every container's readiness probe passes (a container
    /// without one is ready once started). Fails at once when a container
    /// exits, with the tail of its stderr: the kubelet would report the pod
    /// as crash-looping.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let start = std::time::Instant::now();
        loop {
            if let Some((name, status)) = self.exited() {
                bail!(
                    "pod {}: container {name} exited ({status}) instead of becoming ready; its stderr:\n{}",
                    self.name,
                    self.logs_of(&name, true)
                );
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

    /// `kubectl logs` (stdout and stderr of the first container, as the
    /// container runtime interleaves them into one log; here stdout only or
    /// stderr only).
    pub fn logs(&self, stderr: bool) -> String {
        self.containers
            .first()
            .map(|c| self.logs_of(&c.name, stderr))
            .unwrap_or_default()
    }

    fn logs_of(&self, container: &str, stderr: bool) -> String {
        self.containers
            .iter()
            .find(|c| c.name == container)
            .and_then(|c| std::fs::read_to_string(if stderr { &c.stderr } else { &c.stdout }).ok())
            .unwrap_or_default()
    }

    /// Force-delete the pod: SIGKILL every container, then remove everything
    /// it had on the node (volumes, root filesystems, logs).
    pub fn delete_now(mut self) -> anyhow::Result<()> {
        self.kill();
        std::fs::remove_dir_all(&self.dir).with_context(|| format!("remove {}", self.dir.display()))
    }

    fn kill(&mut self) {
        for c in &mut self.containers {
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
    }
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The downward API subset a pod can name in `env[].valueFrom.fieldRef`.
fn field_ref(pod: &Value, ip: Ipv4Addr, from: &Value) -> anyhow::Result<String> {
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
        "status.hostIP" | "status.hostIPs" => "10.0.0.1".to_string(),
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
                &serde_json::json!({"fieldRef": {"fieldPath": path}}),
            )
        };
        assert_eq!(get("metadata.name").unwrap(), "kv-1");
        assert_eq!(get("metadata.namespace").unwrap(), "ns");
        assert_eq!(get("status.podIP").unwrap(), "10.9.8.7");
        assert_eq!(get("metadata.labels['app']").unwrap(), "kv");
        assert!(get("spec.bogus").is_err());
    }
}
