//! A real Kubernetes control plane on loopback: its own etcd, `kube-apiserver`,
//! `kube-controller-manager` and `kube-scheduler`, built from the
//! `k8s.io/kubernetes` Go module by `tests/controlplane/build.sh` into a cache
//! outside the clone.
//!
//! Everything is wired as a kubeadm-style cluster would be, on 127.0.0.1 with
//! free ports: one CA signs the API server's serving certificate and a client
//! certificate per identity (`admin` in `system:masters`, the controller
//! manager, the scheduler, the node `system:node:<name>` in `system:nodes`, the
//! API server's client to the kubelet); an ECDSA service-account key pair;
//! authorization `Node,RBAC` with `NodeRestriction` on top of the default
//! admission plugins (which include `MutatingAdmissionWebhook`). Webhook calls
//! go to endpoints, not to cluster IPs (`--enable-aggregator-routing`): there
//! is no kube-proxy here. The controller manager runs its default controllers
//! (StatefulSet, ReplicaSet, Deployment, EndpointSlice, garbage collector,
//! service account and token, persistent-volume binder, node lifecycle, …)
//! with a credential per controller.
//!
//! Each process is a [`ChildGuard`]: killed when the [`ControlPlane`] drops,
//! also when a test fails. Their logs stay in the cluster directory and are
//! quoted when something does not come up.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use dorado_testkit::etcd_process::EtcdProcess;
use dorado_testkit::pki::{Pair, TestCa, Usage, valid_now};
use dorado_testkit::process::{ChildGuard, free_ports, tail_file};

/// Where pods get addresses: the service CIDR is virtual (no kube-proxy sends
/// anything to it); the API server only needs it to allocate ClusterIPs.
const SERVICE_CIDR: &str = "10.96.0.0/16";

/// The service-account issuer and audience.
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Bound on each component becoming healthy.
const STARTUP: Duration = Duration::from_secs(120);

/// The directory holding the three binaries, built once per test process
/// (`tests/controlplane/build.sh`; a no-op when the cache is warm).
pub fn binaries() -> anyhow::Result<&'static Path> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let script = crate::repo_root().join("tests/controlplane/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}); see its output above",
                script.display(),
                out.status
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text.lines().last().unwrap_or_default().trim();
        if last.is_empty() {
            return Err(format!("{} printed no directory", script.display()));
        }
        Ok(PathBuf::from(last))
    });
    dir.as_deref()
        .map_err(|e| anyhow::anyhow!("the Kubernetes control plane: {e}"))
}

/// A client identity: its kubeconfig and the certificate pair in it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// A kubeconfig for this identity against the API server.
    pub kubeconfig: PathBuf,
    /// The pair (for TLS clients outside kubeconfig, e.g. the kubelet's server).
    pub pair: Pair,
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// The cluster CA (PEM), which also signs the kubelet's serving pair.
    pub ca: TestCa,
    /// Path of the CA certificate.
    pub ca_file: PathBuf,
    /// `system:masters`: what `kubectl` uses.
    pub admin: Identity,
    /// `system:node:<node>` in `system:nodes`: what the kubelet uses.
    pub node: Identity,
    /// `system:kube-proxy` (bound to `system:node-proxier`): what the node's
    /// stand-in for kube-proxy and DNS reads EndpointSlices as.
    pub proxy: Identity,
    /// The node's name.
    pub node_name: String,
    dir: PathBuf,
    // Dropped in reverse order of start: scheduler, controller manager, API server, etcd.
    scheduler: ChildGuard,
    controller_manager: ChildGuard,
    apiserver: ChildGuard,
    _etcd: EtcdProcess,
}

impl ControlPlane {
    /// Start etcd, the API server, the controller manager and the scheduler
    /// under `dir`, for a cluster whose one node is `node_name`; returns once
    /// each answers its health check.
    pub async fn start(dir: &Path, node_name: &str) -> anyhow::Result<ControlPlane> {
        let bin = binaries()?;
        std::fs::create_dir_all(dir)?;
        let etcd = EtcdProcess::start()
            .await
            .context("start the control plane's etcd")?;
        let ports = free_ports(3);
        let (api_port, kcm_port, sched_port) = (ports[0], ports[1], ports[2]);
        let server = format!("https://127.0.0.1:{api_port}");

        let ca = TestCa::new("dorado-e2e-kubernetes-ca");
        let ca_file = dir.join("ca.crt");
        ca.write_cert(&ca_file);
        let serving = ca.issue(
            &[
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            Usage::Server,
            valid_now(),
        );
        let (serving_crt, serving_key) = serving.write_to(dir, "apiserver");
        let kubelet_client = ca.issue_in(
            &["kube-apiserver-kubelet-client"],
            Some("system:masters"),
            Usage::Client,
            valid_now(),
        );
        let (kc_crt, kc_key) = kubelet_client.write_to(dir, "apiserver-kubelet-client");
        let sa = rcgen::KeyPair::generate().context("service-account key")?;
        let sa_key = dir.join("sa.key");
        let sa_pub = dir.join("sa.pub");
        std::fs::write(&sa_key, sa.serialize_pem())?;
        std::fs::write(&sa_pub, sa.public_key_pem())?;

        let identity = |user: &str, group: Option<&str>, file: &str| -> anyhow::Result<Identity> {
            let pair = ca.issue_in(&[user], group, Usage::Client, valid_now());
            let kubeconfig = dir.join(format!("{file}.kubeconfig"));
            std::fs::write(&kubeconfig, kubeconfig_yaml(&server, ca.cert_pem(), &pair))?;
            Ok(Identity { kubeconfig, pair })
        };
        let admin = identity("dorado-e2e-admin", Some("system:masters"), "admin")?;
        let kcm = identity("system:kube-controller-manager", None, "controller-manager")?;
        let sched = identity("system:kube-scheduler", None, "scheduler")?;
        let proxy = identity("system:kube-proxy", None, "kube-proxy")?;
        let node = identity(
            &format!("system:node:{node_name}"),
            Some("system:nodes"),
            "node",
        )?;

        let p = |p: &Path| p.display().to_string();
        let apiserver = spawn(
            &bin.join("kube-apiserver"),
            &[
                format!("--etcd-servers={}", etcd.client_url()),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                format!("--cert-dir={}", p(&dir.join("apiserver-certs"))),
                format!("--tls-cert-file={}", p(&serving_crt)),
                format!("--tls-private-key-file={}", p(&serving_key)),
                format!("--client-ca-file={}", p(&ca_file)),
                "--authorization-mode=Node,RBAC".into(),
                "--enable-admission-plugins=NodeRestriction".into(),
                format!("--service-account-issuer={ISSUER}"),
                format!("--api-audiences={ISSUER}"),
                format!("--service-account-key-file={}", p(&sa_pub)),
                format!("--service-account-signing-key-file={}", p(&sa_key)),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                // No kube-proxy: webhook calls go to the Service's endpoints.
                "--enable-aggregator-routing=true".into(),
                // The `kubernetes` Service's endpoint would be 127.0.0.1, which
                // Endpoints validation refuses; nothing here uses it.
                "--endpoint-reconciler-type=none".into(),
                format!("--kubelet-client-certificate={}", p(&kc_crt)),
                format!("--kubelet-client-key={}", p(&kc_key)),
                format!("--kubelet-certificate-authority={}", p(&ca_file)),
                "--kubelet-preferred-address-types=InternalIP".into(),
                "--allow-privileged=false".into(),
                "--profiling=false".into(),
            ],
            &dir.join("kube-apiserver.log"),
        )?;
        let mut cp_guards = Guards {
            apiserver: Some(apiserver),
            ..Guards::default()
        };
        let http = insecure_http()?;
        let admin_http = client_http(&ca, &admin.pair)?;
        wait_healthy(
            &admin_http,
            &format!("{server}/readyz"),
            "kube-apiserver",
            &dir.join("kube-apiserver.log"),
            cp_guards.apiserver.as_mut(),
        )
        .await?;

        let common = |id: &Identity, port: u16| -> Vec<String> {
            vec![
                format!("--kubeconfig={}", p(&id.kubeconfig)),
                format!("--authentication-kubeconfig={}", p(&id.kubeconfig)),
                format!("--authorization-kubeconfig={}", p(&id.kubeconfig)),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                "--leader-elect=false".into(),
                "--profiling=false".into(),
            ]
        };
        let mut kcm_args = common(&kcm, kcm_port);
        kcm_args.extend([
            "--use-service-account-credentials=true".into(),
            format!("--service-account-private-key-file={}", p(&sa_key)),
            format!("--root-ca-file={}", p(&ca_file)),
            format!("--cert-dir={}", p(&dir.join("kcm-certs"))),
        ]);
        cp_guards.controller_manager = Some(spawn(
            &bin.join("kube-controller-manager"),
            &kcm_args,
            &dir.join("kube-controller-manager.log"),
        )?);
        let mut sched_args = common(&sched, sched_port);
        sched_args.push(format!("--cert-dir={}", p(&dir.join("scheduler-certs"))));
        cp_guards.scheduler = Some(spawn(
            &bin.join("kube-scheduler"),
            &sched_args,
            &dir.join("kube-scheduler.log"),
        )?);
        wait_healthy(
            &http,
            &format!("https://127.0.0.1:{kcm_port}/healthz"),
            "kube-controller-manager",
            &dir.join("kube-controller-manager.log"),
            cp_guards.controller_manager.as_mut(),
        )
        .await?;
        wait_healthy(
            &http,
            &format!("https://127.0.0.1:{sched_port}/healthz"),
            "kube-scheduler",
            &dir.join("kube-scheduler.log"),
            cp_guards.scheduler.as_mut(),
        )
        .await?;
        let Guards {
            apiserver: Some(apiserver),
            controller_manager: Some(controller_manager),
            scheduler: Some(scheduler),
        } = cp_guards
        else {
            bail!("control-plane process guards missing");
        };
        Ok(ControlPlane {
            server,
            ca,
            ca_file,
            admin,
            node,
            proxy,
            node_name: node_name.to_string(),
            dir: dir.to_path_buf(),
            scheduler,
            controller_manager,
            apiserver,
            _etcd: etcd,
        })
    }

    /// A kube-rs client for `id`.
    pub async fn client(&self, id: &Identity) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&id.kubeconfig)
            .with_context(|| format!("read {}", id.kubeconfig.display()))?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .context("kubeconfig")?;
        kube::Client::try_from(config).context("kube client")
    }

    /// `kubectl --kubeconfig <admin> ARGS` in `cwd`: its output, whether or
    /// not it succeeded.
    pub fn kubectl_in<I, S>(&self, cwd: &Path, args: I) -> anyhow::Result<Kubectl>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.admin.kubeconfig)
            .args(&args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .output()
            .context("cannot run kubectl (is it installed?)")?;
        Ok(Kubectl {
            command: format!(
                "kubectl {}",
                args.iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// The last lines of each component's log (for failure messages).
    pub fn log_tails(&self) -> String {
        [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ]
        .iter()
        .map(|c| {
            format!(
                "--- {c}:\n{}\n",
                tail_file(&self.dir.join(format!("{c}.log")), 20)
            )
        })
        .collect()
    }

    /// Whether every component still runs (a crash shows up here first).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for (name, g) in [
            ("kube-apiserver", &mut self.apiserver),
            ("kube-controller-manager", &mut self.controller_manager),
            ("kube-scheduler", &mut self.scheduler),
        ] {
            if !g.is_running() {
                bail!(
                    "{name} exited; its log:\n{}",
                    tail_file(&self.dir.join(format!("{name}.log")), 40)
                );
            }
        }
        Ok(())
    }
}

/// What one `kubectl` call did.
#[derive(Debug, Clone)]
pub struct Kubectl {
    /// The command line, for messages.
    pub command: String,
    /// Exit status 0.
    pub success: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error (warnings, errors).
    pub stderr: String,
}

impl Kubectl {
    /// Stdout if it succeeded; otherwise an error quoting both streams.
    pub fn ok(self) -> anyhow::Result<String> {
        if self.success {
            Ok(self.stdout)
        } else {
            bail!("{} failed:\n{}{}", self.command, self.stdout, self.stderr)
        }
    }
}

#[derive(Debug, Default)]
struct Guards {
    apiserver: Option<ChildGuard>,
    controller_manager: Option<ChildGuard>,
    scheduler: Option<ChildGuard>,
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> anyhow::Result<ChildGuard> {
    let file = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    ChildGuard::spawn(
        Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file),
    )
    .with_context(|| format!("start {}", bin.display()))
}

/// Poll `url` until it answers 200, failing early when the process exits.
async fn wait_healthy(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    log: &Path,
    mut guard: Option<&mut ChildGuard>,
) -> anyhow::Result<()> {
    let result = crate::wait_for(&format!("{what} to be healthy ({url})"), STARTUP, || {
        let exited = guard.as_mut().is_some_and(|g| !g.is_running());
        async move {
            if exited {
                return Ok(Err(format!("{what} exited")));
            }
            match http.get(url).send().await {
                Ok(r) if r.status().is_success() => Ok(Ok(())),
                Ok(r) => Err(format!(
                    "{} {}",
                    r.status(),
                    r.text().await.unwrap_or_default().trim()
                )),
                Err(e) => Err(format!("{e}")),
            }
        }
    })
    .await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => bail!("{why}; its log:\n{}", tail_file(log, 40)),
        Err(e) => bail!("{e:#}; its log:\n{}", tail_file(log, 40)),
    }
}

/// For the components' self-signed health endpoints.
fn insecure_http() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .build()
        .context("http client")
}

/// A client that trusts `ca` and presents `pair`.
pub fn client_http(ca: &TestCa, pair: &Pair) -> anyhow::Result<reqwest::Client> {
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", pair.cert_pem, pair.key_pem).as_bytes())
            .context("client identity")?;
    reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).context("CA certificate")?,
        )
        .identity(identity)
        .timeout(Duration::from_secs(10))
        .build()
        .context("http client")
}

fn kubeconfig_yaml(server: &str, ca_pem: &str, pair: &Pair) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: dorado-e2e
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: user
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: dorado-e2e
  context:
    cluster: dorado-e2e
    user: user
    namespace: default
current-context: dorado-e2e
",
        ca = b64(ca_pem),
        cert = b64(&pair.cert_pem),
        key = b64(&pair.key_pem),
    )
}
