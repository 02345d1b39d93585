//! The one node of the control-plane tests: a kubelet that talks to the real
//! API server (kube-rs, as `system:node:<name>`) and runs pods with the
//! podman runner of [`crate::kubelet`].
//!
//! What it does, as a kubelet does:
//! - registers its `Node` (Ready, capacity, its address and kubelet port) and
//!   renews its `Lease` in `kube-node-lease`, so the node lifecycle
//!   controller keeps it Ready and untainted;
//! - every half second lists the pods bound to it (`spec.nodeName`) and
//!   reconciles: starts new ones (ConfigMaps, Secrets and bound
//!   PersistentVolumes read from the API), stops deleted ones (SIGTERM, the
//!   pod's grace period, SIGKILL) and then removes the pod object with grace
//!   0 and a UID precondition, and writes each pod's status: `podIP`, phase,
//!   conditions, container statuses with readiness (the pod's readiness
//!   probes) and restart counts; a pod that cannot start stays Pending with
//!   the reason in its container's `waiting` state;
//! - serves `/containerLogs/{namespace}/{pod}/{container}` over TLS with
//!   client-certificate authentication, so `kubectl logs` works through the
//!   API server.
//!
//! What kube-proxy and cluster DNS would do, it does with hosts files: it
//! reads EndpointSlices (as `system:kube-proxy`) and writes each pod's
//! `/etc/hosts` (mounted read-only instead of podman's) with the pod's own
//! name, the Services' names (`<svc>.<ns>.svc.cluster.local`,
//! `<svc>.<ns>.svc`, `<svc>.<ns>`, and `<svc>` within the namespace) pointing
//! at a ready endpoint, and per-endpoint names of headless Services
//! (`<hostname>.<svc>.<ns>.svc…`). Ports are not remapped: a Service is
//! reachable on its target port. Nothing else about any workload is special.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ContainerState as K8sContainerState, ContainerStateRunning,
    ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, DaemonEndpoint, HostIP,
    Node as K8sNode, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus, NodeSystemInfo,
    PersistentVolume, PersistentVolumeClaim, Pod, PodCondition, PodIP, PodStatus, Secret,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::controlplane::ControlPlane;
use crate::kubelet::{Kubelet, LogSource, RunOptions, RunningPod, cri_log_text};
use crate::podman::Network;

/// How often the node reconciles its pods.
const SYNC: Duration = Duration::from_millis(500);

/// How often the node renews its lease and heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// How long a pod that failed to start waits before the next attempt.
const RETRY: Duration = Duration::from_secs(2);

/// The most a deleted pod's containers get between SIGTERM and SIGKILL here
/// (the pod's `terminationGracePeriodSeconds` below that is honoured).
const MAX_GRACE: Duration = Duration::from_secs(15);

type Logs = Arc<Mutex<BTreeMap<(String, String), LogSource>>>;

/// A running node; stopping (or dropping) it stops every pod on it.
#[derive(Debug)]
pub struct Node {
    /// The node's name.
    pub name: String,
    /// Its address, 127.0.0.1: where the API server reaches its kubelet port
    /// (the pod network's bridge has no address until a pod runs on it). Pods
    /// see the node at the network's gateway (`status.hostIP`).
    /// its kubelet port, and pods reach the host.
    pub address: Ipv4Addr,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    server: axum_server::Handle<SocketAddr>,
}

struct Agent {
    name: String,
    client: kube::Client,
    proxy: kube::Client,
    // Pods drop (their containers go) before the kubelet and its network.
    pods: BTreeMap<String, PodEntry>,
    stopping: JoinSet<()>,
    kubelet: Kubelet,
    /// Pods that could not start: when they were last tried, and why.
    failing: BTreeMap<String, (Instant, String)>,
    /// Pods whose deletion is under way (containers stopping, then the object).
    deleting: BTreeSet<String>,
    next_host: u8,
    logs: Logs,
    dir: PathBuf,
    http: reqwest::Client,
    kubelet_port: u16,
    address: Ipv4Addr,
    /// The node as pods reach it (the network's gateway).
    pod_host: Ipv4Addr,
    services: String,
    last_heartbeat: Option<Instant>,
    started: Timestamp,
}

struct PodEntry {
    name: String,
    namespace: String,
    running: RunningPod,
    hosts_file: PathBuf,
    own_hosts: String,
    written_hosts: String,
    started: Timestamp,
    last_status: Option<PodStatus>,
    /// Container name → image, for the container statuses.
    images: BTreeMap<String, String>,
}

impl Node {
    /// Register the node with `cp` and start its kubelet; pods run on `net`
    /// and live under `dir`.
    pub async fn start(cp: &ControlPlane, net: Network, dir: PathBuf) -> anyhow::Result<Node> {
        std::fs::create_dir_all(dir.join("hosts"))?;
        let address = Ipv4Addr::LOCALHOST;
        let pod_host = net.gateway();
        let client = cp.client(&cp.node).await?;
        let proxy = cp.client(&cp.proxy).await?;
        let logs: Logs = Arc::default();
        let (server, kubelet_port) = serve_logs(cp, address, logs.clone()).await?;
        let mut agent = Agent {
            name: cp.node_name.clone(),
            client,
            proxy,
            pods: BTreeMap::new(),
            stopping: JoinSet::new(),
            kubelet: Kubelet::new(net, dir.join("pods"))?,
            failing: BTreeMap::new(),
            deleting: BTreeSet::new(),
            next_host: 10,
            logs,
            dir,
            http: reqwest::Client::new(),
            kubelet_port,
            address,
            pod_host,
            services: String::new(),
            last_heartbeat: None,
            started: Timestamp::now(),
        };
        agent.register().await.context("register the node")?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move { agent.run(stop).await });
        Ok(Node {
            name: cp.node_name.clone(),
            address,
            shutdown,
            task: Some(task),
            server,
        })
    }

    /// Stop every pod (SIGKILL), the log server and the sync loop.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        self.server.shutdown();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.server.shutdown();
        if let Some(t) = self.task.take() {
            // The agent owns the pods: dropping it kills their containers.
            t.abort();
        }
    }
}

impl Agent {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.sync().await {
                eprintln!("node {}: sync: {e:#}", self.name);
            }
        }
        self.stopping.abort_all();
        let pods = std::mem::take(&mut self.pods);
        tokio::task::block_in_place(|| drop(pods));
    }

    async fn register(&mut self) -> anyhow::Result<()> {
        let nodes: Api<K8sNode> = Api::all(self.client.clone());
        let node = K8sNode {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(BTreeMap::from([
                    ("kubernetes.io/hostname".to_string(), self.name.clone()),
                    ("kubernetes.io/os".to_string(), "linux".to_string()),
                    ("kubernetes.io/arch".to_string(), "amd64".to_string()),
                ])),
                ..ObjectMeta::default()
            },
            ..K8sNode::default()
        };
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e).context("create the Node"),
        }
        self.heartbeat().await
    }

    /// Renew the node's lease and its Ready condition.
    async fn heartbeat(&mut self) -> anyhow::Result<()> {
        let now = Timestamp::now();
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.name.clone()),
                lease_duration_seconds: Some(40),
                renew_time: Some(MicroTime(now)),
                ..LeaseSpec::default()
            }),
        };
        leases
            .patch(
                &self.name,
                &PatchParams::apply("dorado-e2e-kubelet").force(),
                &Patch::Apply(&lease),
            )
            .await
            .context("renew the node lease")?;
        let q = |s: &str| Quantity(s.to_string());
        let condition = |kind: &str, status: &str, reason: &str| NodeCondition {
            type_: kind.to_string(),
            status: status.to_string(),
            reason: Some(reason.to_string()),
            message: Some(format!("{reason} (dorado-e2e kubelet)")),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(Time(self.started)),
        };
        let capacity = BTreeMap::from([
            ("cpu".to_string(), q("16")),
            ("memory".to_string(), q("64Gi")),
            ("pods".to_string(), q("110")),
            ("ephemeral-storage".to_string(), q("100Gi")),
        ]);
        let status = NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".to_string(),
                    address: self.address.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".to_string(),
                    address: self.name.clone(),
                },
            ]),
            allocatable: Some(capacity.clone()),
            capacity: Some(capacity),
            conditions: Some(vec![
                condition("Ready", "True", "KubeletReady"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
            ]),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(self.kubelet_port),
                }),
            }),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".to_string(),
                container_runtime_version: "podman://runc".to_string(),
                kubelet_version: "v0.0.0-dorado-e2e".to_string(),
                operating_system: "linux".to_string(),
                os_image: "dorado-e2e".to_string(),
                kernel_version: "unknown".to_string(),
                machine_id: self.name.clone(),
                system_uuid: self.name.clone(),
                boot_id: self.name.clone(),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        };
        let nodes: Api<K8sNode> = Api::all(self.client.clone());
        nodes
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": status })),
            )
            .await
            .context("update the node status")?;
        self.last_heartbeat = Some(Instant::now());
        Ok(())
    }

    async fn sync(&mut self) -> anyhow::Result<()> {
        if self.last_heartbeat.is_none_or(|t| t.elapsed() >= HEARTBEAT) {
            self.heartbeat().await?;
        }
        // Reap finished deletions.
        while let Some(done) = self.stopping.try_join_next() {
            if let Err(e) = done {
                eprintln!("node {}: pod deletion task: {e}", self.name);
            }
        }
        self.services = self.service_hosts().await.unwrap_or_else(|e| {
            eprintln!("node {}: endpoint slices: {e:#}", self.name);
            std::mem::take(&mut self.services)
        });

        let pods: Api<Pod> = Api::all(self.client.clone());
        let list = pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={}", self.name)))
            .await
            .context("list the node's pods")?;
        let mut seen = BTreeSet::new();
        for pod in list.items {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            seen.insert(uid.clone());
            if pod.metadata.deletion_timestamp.is_some() {
                self.delete(&pod, &uid);
                continue;
            }
            if self.pods.contains_key(&uid) {
                if let Err(e) = self.report(&uid).await {
                    eprintln!("node {}: status of {uid}: {e:#}", self.name);
                }
                continue;
            }
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            if self
                .failing
                .get(&uid)
                .is_some_and(|(t, _)| t.elapsed() < RETRY)
            {
                continue;
            }
            match self.start(&pod, &uid).await {
                Ok(()) => {
                    self.failing.remove(&uid);
                }
                Err(e) => {
                    let message = format!("{e:#}");
                    let known = self.failing.get(&uid).map(|(_, m)| m.as_str());
                    if known != Some(message.as_str()) {
                        self.report_failed(&pod, &message).await;
                    }
                    self.failing.insert(uid.clone(), (Instant::now(), message));
                }
            }
        }
        self.deleting.retain(|uid| seen.contains(uid));
        self.failing.retain(|uid, _| seen.contains(uid));
        // Pods removed without a graceful deletion (force delete).
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| !seen.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(entry) = self.pods.remove(&uid) {
                self.forget_logs(&entry);
                self.stopping.spawn_blocking(move || {
                    let _ = entry.running.delete_within(Duration::ZERO);
                });
            }
        }
        self.write_hosts();
        Ok(())
    }

    /// Start `pod`: its objects from the API, an address, a hosts file, the
    /// containers.
    async fn start(&mut self, pod: &Pod, uid: &str) -> anyhow::Result<()> {
        let name = pod.metadata.name.clone().context("pod without a name")?;
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let spec = pod.spec.as_ref().context("pod without a spec")?;
        let mut claims = BTreeMap::new();
        let config_maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &namespace);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        for v in spec.volumes.iter().flatten() {
            if let Some(cm) = &v.config_map
                && let Some(found) = config_maps.get_opt(&cm.name).await?
            {
                self.kubelet.add_config_maps([found]);
            }
            if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.as_ref())
                && let Some(found) = secrets.get_opt(s).await?
            {
                self.kubelet.add_secrets([found]);
            }
            if let Some(pvc) = &v.persistent_volume_claim {
                claims.insert(
                    pvc.claim_name.clone(),
                    self.bound_volume(&namespace, &pvc.claim_name).await?,
                );
            }
        }
        if self.next_host > 250 {
            bail!("the node's pod network has no free address left");
        }
        let ip = self.kubelet.network().address(self.next_host);
        self.next_host += 1;
        let hostname = spec.hostname.clone().unwrap_or_else(|| name.clone());
        let mut own = format!("{ip}\t{hostname}");
        if let Some(sub) = &spec.subdomain {
            own.push_str(&format!(
                " {hostname}.{sub}.{namespace}.svc.cluster.local {hostname}.{sub}.{namespace}.svc"
            ));
        }
        own.push('\n');
        let hosts_file = self.dir.join("hosts").join(uid);
        let content = hosts_text(&own, &self.services, &namespace);
        std::fs::write(&hosts_file, &content)?;
        let options = RunOptions {
            ip,
            hosts_file: Some(hosts_file.clone()),
            claims,
            node_name: self.name.clone(),
        };
        let kubelet = &mut self.kubelet;
        let running = tokio::task::block_in_place(|| kubelet.run_with(pod, &options))?;
        self.logs
            .lock()
            .expect("logs lock")
            .insert((namespace.clone(), name.clone()), running.log_source());
        self.pods.insert(
            uid.to_string(),
            PodEntry {
                name,
                namespace,
                running,
                hosts_file,
                own_hosts: own,
                written_hosts: content,
                started: Timestamp::now(),
                last_status: None,
                images: spec
                    .containers
                    .iter()
                    .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                    .collect(),
            },
        );
        self.report(uid).await
    }

    /// The node directory of the PersistentVolume bound to `claim`.
    async fn bound_volume(&self, namespace: &str, claim: &str) -> anyhow::Result<PathBuf> {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        let pvc = pvcs
            .get(claim)
            .await
            .with_context(|| format!("claim {claim}"))?;
        let volume = pvc
            .spec
            .and_then(|s| s.volume_name)
            .filter(|v| !v.is_empty())
            .with_context(|| format!("claim {claim} is not bound to a volume yet"))?;
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let pv = pvs
            .get(&volume)
            .await
            .with_context(|| format!("volume {volume}"))?;
        let path = pv
            .spec
            .and_then(|s| s.host_path)
            .map(|h| h.path)
            .with_context(|| {
                format!("volume {volume}: only hostPath volumes exist on this node")
            })?;
        Ok(PathBuf::from(path))
    }

    /// Begin the graceful deletion of `pod`: stop its containers within its
    /// grace period, then remove the object (grace 0, UID precondition).
    fn delete(&mut self, pod: &Pod, uid: &str) {
        if !self.deleting.insert(uid.to_string()) {
            return;
        }
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(Duration::ZERO, Duration::from_secs)
            .min(MAX_GRACE);
        let entry = self.pods.remove(uid);
        if let Some(entry) = &entry {
            self.forget_logs(entry);
        }
        let (Some(name), Some(namespace)) = (&pod.metadata.name, &pod.metadata.namespace) else {
            return;
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let (name, uid) = (name.clone(), uid.to_string());
        self.failing.remove(&uid);
        self.stopping.spawn(async move {
            if let Some(entry) = entry {
                let _ =
                    tokio::task::spawn_blocking(move || entry.running.delete_within(grace)).await;
            }
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            if let Err(e) = api.delete(&name, &params).await
                && !matches!(&e, kube::Error::Api(a) if a.code == 404 || a.code == 409)
            {
                eprintln!("node: delete pod {name}: {e}");
            }
        });
    }

    fn forget_logs(&self, entry: &PodEntry) {
        self.logs
            .lock()
            .expect("logs lock")
            .remove(&(entry.namespace.clone(), entry.name.clone()));
    }

    /// Write the pod's status if it changed.
    async fn report(&mut self, uid: &str) -> anyhow::Result<()> {
        let Some(entry) = self.pods.get(uid) else {
            return Ok(());
        };
        let ready = entry.running.probe_readiness(&self.http).await;
        let states = entry.running.container_states();
        let all_ready = !ready.is_empty() && ready.values().all(|r| *r);
        let statuses = states
            .iter()
            .map(|s| ContainerStatus {
                name: s.name.clone(),
                image: entry.images.get(&s.name).cloned().unwrap_or_default(),
                image_id: String::new(),
                container_id: Some(format!("podman://{}", s.name)),
                ready: ready.get(&s.name).copied().unwrap_or(false),
                started: Some(s.running),
                restart_count: i32::try_from(s.restart_count).unwrap_or(i32::MAX),
                state: Some(if s.running {
                    K8sContainerState {
                        running: Some(ContainerStateRunning { started_at: None }),
                        ..K8sContainerState::default()
                    }
                } else {
                    K8sContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(if s.error.is_some() {
                                "RunContainerError".to_string()
                            } else {
                                "CrashLoopBackOff".to_string()
                            }),
                            message: s.error.clone(),
                        }),
                        ..K8sContainerState::default()
                    }
                }),
                last_state: s.last_exit.map(|code| K8sContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: code,
                        reason: Some(if code == 0 { "Completed" } else { "Error" }.to_string()),
                        ..ContainerStateTerminated::default()
                    }),
                    ..K8sContainerState::default()
                }),
                ..ContainerStatus::default()
            })
            .collect();
        let previous = entry.last_status.as_ref();
        let now = Timestamp::now();
        let condition = |kind: &str, ok: bool| {
            let status = if ok { "True" } else { "False" }.to_string();
            let since = previous
                .and_then(|p| p.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
                .filter(|c| c.status == status)
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            PodCondition {
                type_: kind.to_string(),
                status,
                last_transition_time: Some(since),
                ..PodCondition::default()
            }
        };
        let ip = entry.running.ip.to_string();
        let status = PodStatus {
            phase: Some("Running".to_string()),
            host_ip: Some(self.pod_host.to_string()),
            host_ips: Some(vec![HostIP {
                ip: self.pod_host.to_string(),
            }]),
            pod_ip: Some(ip.clone()),
            pod_ips: Some(vec![PodIP { ip }]),
            start_time: Some(Time(entry.started)),
            conditions: Some(vec![
                condition("PodReadyToStartContainers", true),
                condition("Initialized", true),
                condition("ContainersReady", all_ready),
                condition("Ready", all_ready),
                condition("PodScheduled", true),
            ]),
            container_statuses: Some(statuses),
            ..PodStatus::default()
        };
        if previous.is_some_and(|p| same_status(p, &status)) {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &entry.namespace);
        api.patch_status(
            &entry.name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .with_context(|| format!("status of pod {}", entry.name))?;
        if let Some(entry) = self.pods.get_mut(uid) {
            entry.last_status = Some(status);
        }
        Ok(())
    }

    /// A pod that could not start: Pending, the reason in each container's
    /// `waiting` state (what `kubectl get pods` and `describe` show).
    async fn report_failed(&self, pod: &Pod, message: &str) {
        let (Some(name), Some(namespace)) = (&pod.metadata.name, &pod.metadata.namespace) else {
            return;
        };
        let reason = if message.contains("ErrImageNeverPull") {
            "ErrImageNeverPull"
        } else {
            "CreateContainerConfigError"
        };
        let statuses = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                image_id: String::new(),
                ready: false,
                restart_count: 0,
                state: Some(K8sContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.to_string()),
                        message: Some(message.to_string()),
                    }),
                    ..K8sContainerState::default()
                }),
                ..ContainerStatus::default()
            })
            .collect();
        let status = PodStatus {
            phase: Some("Pending".to_string()),
            host_ip: Some(self.pod_host.to_string()),
            container_statuses: Some(statuses),
            ..PodStatus::default()
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        if let Err(e) = api
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": status })),
            )
            .await
        {
            eprintln!("node {}: status of {name}: {e}", self.name);
        }
        eprintln!(
            "node {}: pod {namespace}/{name} cannot start: {message}",
            self.name
        );
    }

    /// The Services' names → addresses, from the EndpointSlices.
    async fn service_hosts(&self) -> anyhow::Result<String> {
        let slices: Api<EndpointSlice> = Api::all(self.proxy.clone());
        let list = slices.list(&ListParams::default()).await?;
        let mut lines = BTreeSet::new();
        for slice in list.items {
            let (Some(ns), Some(svc)) = (
                slice.metadata.namespace.as_deref(),
                slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name")),
            ) else {
                continue;
            };
            let mut first_ready = None;
            for ep in &slice.endpoints {
                let Some(addr) = ep.addresses.first() else {
                    continue;
                };
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if ready && first_ready.is_none() {
                    first_ready = Some(addr.clone());
                }
                if let Some(h) = &ep.hostname {
                    lines.insert(format!(
                        "{addr}\t{h}.{svc}.{ns}.svc.cluster.local {h}.{svc}.{ns}.svc"
                    ));
                }
            }
            if let Some(addr) = first_ready {
                // `<svc>` alone is added per pod, for pods of the same namespace.
                lines.insert(format!(
                    "{addr}\t{svc}.{ns}.svc.cluster.local {svc}.{ns}.svc {svc}.{ns} #ns={ns} svc={svc}"
                ));
            }
        }
        Ok(lines.into_iter().map(|l| l + "\n").collect())
    }

    /// Rewrite the pods' hosts files whose content changed (in place: the
    /// file is bind-mounted, a rename would not reach the container).
    fn write_hosts(&mut self) {
        for entry in self.pods.values_mut() {
            let content = hosts_text(&entry.own_hosts, &self.services, &entry.namespace);
            if content != entry.written_hosts {
                match std::fs::write(&entry.hosts_file, &content) {
                    Ok(()) => entry.written_hosts = content,
                    Err(e) => eprintln!("node: write {}: {e}", entry.hosts_file.display()),
                }
            }
        }
    }
}

/// Two statuses equal but for the times.
fn same_status(a: &PodStatus, b: &PodStatus) -> bool {
    let strip = |s: &PodStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_transition_time = None;
        }
        s
    };
    strip(a) == strip(b)
}

/// A pod's `/etc/hosts`: localhost, the pod's own names, the Services
/// (`<svc>` alone for those of the pod's namespace).
fn hosts_text(own: &str, services: &str, namespace: &str) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    out.push_str(own);
    for line in services.lines() {
        match line.split_once(" #") {
            Some((names, tags)) => {
                out.push_str(names);
                let mut ns = None;
                let mut svc = None;
                for t in tags.split_whitespace() {
                    if let Some(v) = t.strip_prefix("ns=") {
                        ns = Some(v);
                    } else if let Some(v) = t.strip_prefix("svc=") {
                        svc = Some(v);
                    }
                }
                if ns == Some(namespace)
                    && let Some(svc) = svc
                {
                    out.push(' ');
                    out.push_str(svc);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    #[serde(default)]
    previous: bool,
    #[serde(default)]
    timestamps: bool,
    #[serde(default)]
    follow: bool,
    tail_lines: Option<usize>,
}

/// The kubelet's log endpoint, over TLS with client certificates from the
/// cluster CA (the API server's `--kubelet-client-certificate`).
async fn serve_logs(
    cp: &ControlPlane,
    address: Ipv4Addr,
    logs: Logs,
) -> anyhow::Result<(axum_server::Handle<SocketAddr>, u16)> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pair = cp.ca.issue(
        &[&address.to_string(), &cp.node_name],
        dorado_testkit::pki::Usage::Server,
        dorado_testkit::pki::valid_now(),
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(cp.ca.cert_pem().as_bytes())?)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build()?;
    let certs =
        CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes())?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let listener = std::net::TcpListener::bind(SocketAddr::from((address, 0)))
        .with_context(|| format!("bind the kubelet port on {address}"))?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let handle = axum_server::Handle::new();
    let app = Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .with_state(logs);
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config)),
    )?
    .handle(handle.clone());
    tokio::spawn(async move {
        if let Err(e) = server.serve(app.into_make_service()).await {
            eprintln!("kubelet log server: {e}");
        }
    });
    Ok((handle, port))
}

async fn container_logs(
    State(logs): State<Logs>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    if q.follow {
        return (
            StatusCode::BAD_REQUEST,
            "follow is not supported by this kubelet\n",
        )
            .into_response();
    }
    let source = logs
        .lock()
        .expect("logs lock")
        .get(&(namespace.clone(), pod.clone()))
        .cloned();
    let Some(source) = source else {
        return (
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} is not running on this node\n"),
        )
            .into_response();
    };
    let file = match source.file(&container, q.previous) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e:#}\n")).into_response(),
    };
    let text = cri_log_text(
        &std::fs::read_to_string(&file).unwrap_or_default(),
        None,
        q.timestamps,
    );
    let text = match q.tail_lines {
        Some(n) => {
            let lines: Vec<&str> = text.lines().collect();
            let mut t = lines[lines.len().saturating_sub(n)..].join("\n");
            if !t.is_empty() {
                t.push('\n');
            }
            t
        }
        None => text,
    };
    text.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_name_services_and_short_names_only_in_their_namespace() {
        let services = "10.0.0.5\tetcd-0.etcd.sys.svc.cluster.local etcd-0.etcd.sys.svc\n\
                        10.0.0.6\tweb.sys.svc.cluster.local web.sys.svc web.sys #ns=sys svc=web\n";
        let own = "10.0.0.9\tkv-0 kv-0.kv.app.svc.cluster.local kv-0.kv.app.svc\n";
        let in_app = hosts_text(own, services, "app");
        assert!(in_app.contains("10.0.0.9\tkv-0 kv-0.kv.app.svc.cluster.local"));
        assert!(
            in_app.contains("10.0.0.5\tetcd-0.etcd.sys.svc.cluster.local etcd-0.etcd.sys.svc\n")
        );
        assert!(in_app.contains("10.0.0.6\tweb.sys.svc.cluster.local web.sys.svc web.sys\n"));
        assert!(!in_app.contains('#'));
        let in_sys = hosts_text(own, services, "sys");
        assert!(in_sys.contains("web.sys.svc web.sys web\n"));
    }
}
