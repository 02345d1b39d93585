//! The container engine: podman, driven through its CLI, and the two things
//! the harness owns in it, each removed on drop.
//!
//! - [`Network`]: a bridge network per [`crate::Env`], named after the test
//!   process (`dorado-e2e-<pid>-<n>`); podman picks a free subnet, the harness
//!   places pods at fixed addresses in it. The host reaches every address on it
//!   (it holds the gateway); nothing is published beyond this machine.
//! - [`Container`]: one `podman run -d`, force-removed on drop.
//!
//! Both carry the label [`LABEL`]`=<pid>`, so that `.ci/run` (and
//! [`remove_leftovers`]) find what a killed test process left behind.
//!
//! Sandbox quirks (see `/work/notes`): containers need `--runtime runc`, and
//! explicit low rlimits, because raising rlimits is forbidden here.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Label on every container and network the harness creates; its value is
/// the pid of the test process.
pub const LABEL: &str = "io.dorado.e2e";

/// OCI runtime (crun cannot start containers in this sandbox).
pub const RUNTIME: &str = "runc";

/// The rlimits every container gets (podman's defaults raise them, which the
/// sandbox forbids).
pub const ULIMITS: [&str; 2] = ["nofile=1024:1024", "nproc=1024:1024"];

/// Run `podman ARGS`, returning its stdout; fails with its stderr.
pub fn podman<I, S>(args: I) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
    let out = Command::new("podman")
        .args(&args)
        .output()
        .context("cannot run podman (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "podman {} failed ({}): {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether podman is usable; the error says why not.
pub fn available() -> anyhow::Result<()> {
    podman(["version", "--format", "{{.Client.Version}}"]).map(|_| ())
}

fn label_value() -> String {
    format!("{LABEL}={}", std::process::id())
}

/// Unique name for something this process creates: `dorado-e2e-<pid>-<n>-<what>`.
pub fn unique_name(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "dorado-e2e-{}-{}-{what}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Remove containers and networks labelled by test processes that no longer
/// exist (killed before their drops ran).
pub fn remove_leftovers() -> anyhow::Result<()> {
    let dead = |pid: &str| !Path::new("/proc").join(pid.trim()).exists();
    let containers = podman([
        "ps",
        "-a",
        "--filter",
        &format!("label={LABEL}"),
        "--format",
        &format!("{{{{.ID}}}} {{{{index .Labels \"{LABEL}\"}}}}"),
    ])?;
    for line in containers.lines() {
        if let Some((id, pid)) = line.split_once(' ')
            && dead(pid)
        {
            let _ = podman(["rm", "-f", "-t", "0", id]);
        }
    }
    // Network names carry the pid (`dorado-e2e-<pid>-<n>-net`; `network ls`
    // cannot print a label's value in every podman version).
    let networks = podman([
        "network",
        "ls",
        "--filter",
        &format!("label={LABEL}"),
        "--format",
        "{{.Name}}",
    ])?;
    for name in networks.lines() {
        if let Some(pid) = name
            .strip_prefix("dorado-e2e-")
            .and_then(|rest| rest.split('-').next())
            && dead(pid)
        {
            let _ = podman(["network", "rm", "-f", name]);
        }
    }
    Ok(())
}

/// `podman run --rm` (runc, the rlimits, the label) to completion: its stdout.
pub fn run_to_completion(args: &[&str]) -> anyhow::Result<String> {
    let mut all: Vec<String> = ["--runtime", RUNTIME, "run", "--rm", "--label"]
        .into_iter()
        .map(String::from)
        .collect();
    all.push(label_value());
    for u in ULIMITS {
        all.extend(["--ulimit".to_string(), u.to_string()]);
    }
    all.extend(args.iter().map(|a| a.to_string()));
    podman(&all)
}

/// A control-plane container of the harness (etcd, the webhook) as
/// `manifests/base` runs it: non-root 65532, read-only root without extra
/// tmpfs mounts, no capabilities, `no-new-privileges`, at `ip` on `net`,
/// `mounts` (`type=bind,...` specs), its log in the CRI file `log`; then
/// `image` and its arguments. Returns once `ready_url` answers 2xx with a body
/// containing `ready_body`, failing early if the container stops.
pub async fn run_system_container(
    name: &str,
    net: &Network,
    ip: Ipv4Addr,
    mounts: &[String],
    log: &Path,
    image_and_args: &[&str],
    (ready_url, ready_body): (&str, &str),
) -> anyhow::Result<Container> {
    let mut args: Vec<String> = [
        "--pull=never",
        "--network",
        net.name(),
        "--ip",
        &ip.to_string(),
        "--user",
        "65532:65532",
        "--read-only",
        "--read-only-tmpfs=false",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--log-driver",
        "k8s-file",
        "--log-opt",
        &format!("path={}", log.display()),
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for m in mounts {
        args.extend(["--mount".to_string(), m.clone()]);
    }
    args.extend(image_and_args.iter().map(|a| a.to_string()));
    let container = Container::run(name, &args)?;
    let http = reqwest::Client::new();
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    let start = Instant::now();
    loop {
        let state = container.status()?.state;
        if state != "running" {
            bail!(
                "{name} is {state} instead of becoming ready; its log:\n{}",
                log_text()
            );
        }
        let last = match http
            .get(ready_url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(resp) => {
                let code = resp.status();
                let text = resp.text().await.unwrap_or_default();
                if code.is_success() && text.contains(ready_body) {
                    break;
                }
                format!("{code} {text}")
            }
            Err(e) => e.to_string(),
        };
        if start.elapsed() > SYSTEM_READY {
            bail!(
                "{name}: {ready_url} not ready after {SYSTEM_READY:?} (last: {last}); its log:\n{}",
                log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(container)
}

/// Startup of etcd or the webhook on a loaded machine.
const SYSTEM_READY: Duration = Duration::from_secs(60);

/// A podman bridge network of one test; removed (with anything still
/// attached) on drop.
#[derive(Debug)]
pub struct Network {
    name: String,
    /// First address of the /24 (x.y.z.0).
    base: Ipv4Addr,
    gateway: Ipv4Addr,
}

impl Network {
    /// Create a network with a subnet podman picks from its free pool.
    pub fn create() -> anyhow::Result<Network> {
        let name = unique_name("net");
        podman(["network", "create", "--label", &label_value(), &name])
            .context("create the pod network")?;
        // From here on the drop removes it.
        let mut net = Network {
            name,
            base: Ipv4Addr::UNSPECIFIED,
            gateway: Ipv4Addr::UNSPECIFIED,
        };
        let out = podman([
            "network",
            "inspect",
            &net.name,
            "--format",
            "{{range .Subnets}}{{.Subnet}} {{.Gateway}}\n{{end}}",
        ])?;
        let line = out.lines().next().unwrap_or_default();
        let (subnet, gateway) = line
            .split_once(' ')
            .with_context(|| format!("network {}: no subnet in {out:?}", net.name))?;
        let (addr, prefix) = subnet
            .split_once('/')
            .with_context(|| format!("subnet {subnet:?}"))?;
        if prefix != "24" {
            bail!("network {}: expected a /24 subnet, got {subnet}", net.name);
        }
        net.base = addr.parse().with_context(|| format!("subnet {subnet:?}"))?;
        net.gateway = gateway
            .trim()
            .parse()
            .with_context(|| format!("gateway {gateway:?}"))?;
        Ok(net)
    }

    /// The network's name (`--network`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's address on the network.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Address `.host` of the subnet (2..=254).
    pub fn address(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.base.octets();
        Ipv4Addr::new(a, b, c, host)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // -f also removes containers still attached (a failed test's pods).
        let _ = podman(["network", "rm", "-f", &self.name]);
    }
}

/// A container started with `podman run -d`; force-removed on drop.
#[derive(Debug)]
pub struct Container {
    name: String,
}

/// What `podman inspect` says about a container (the kubelet's
/// `containerStatuses[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `running`, `exited`, `created`, …
    pub state: String,
    /// Restarts so far (restartPolicy).
    pub restart_count: u32,
    /// Exit code of the last run that ended (0 while it never ended).
    pub exit_code: i32,
}

impl Container {
    /// `podman run -d --name NAME --label … --runtime runc --ulimit … ARGS`:
    /// `args` are the remaining `podman run` options, the image and its
    /// arguments.
    pub fn run(name: &str, args: &[String]) -> anyhow::Result<Container> {
        let mut all: Vec<String> = ["--runtime", RUNTIME, "run", "-d", "--name", name]
            .into_iter()
            .map(String::from)
            .collect();
        all.extend(["--label".to_string(), label_value()]);
        for u in ULIMITS {
            all.extend(["--ulimit".to_string(), u.to_string()]);
        }
        all.extend(args.iter().cloned());
        // The guard exists before the start, so a half-created container is
        // removed too.
        let c = Container {
            name: name.to_string(),
        };
        podman(&all).with_context(|| format!("start container {name}"))?;
        Ok(c)
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// State, restart count and last exit code.
    pub fn status(&self) -> anyhow::Result<Status> {
        let out = podman([
            "inspect",
            "--type",
            "container",
            "--format",
            "{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}",
            &self.name,
        ])?;
        let mut f = out.split_whitespace();
        let (Some(state), Some(restarts), Some(code)) = (f.next(), f.next(), f.next()) else {
            bail!("container {}: unexpected inspect output {out:?}", self.name);
        };
        Ok(Status {
            state: state.to_string(),
            restart_count: restarts.parse().context("RestartCount")?,
            exit_code: code.parse().context("ExitCode")?,
        })
    }

    /// SIGKILL and remove now.
    pub fn remove(&self) -> anyhow::Result<()> {
        podman(["rm", "-f", "-t", "0", "--ignore", &self.name]).map(|_| ())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}
