//! The world of one schedule: a three-member etcd cluster, the network
//! namespaces (when available), and two groups of three replicas each (the
//! `kv` and `bank` examples). Dropping it kills every process and removes
//! every namespace, also when a schedule fails half-way.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use dorado::wire::Status;
use dorado_testkit::etcd_process::{EtcdCluster, EtcdProcessOptions};
use tokio::time::Instant;

use crate::plan::{ETCD_MEMBERS, GROUPS, LEASE_TTL_SECS, Plan, REPLICAS};
use crate::procs::{ReplicaProc, ReplicaSpec};
use dorado_testkit::netns::NetEnv;

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(100);

/// Poll `cond` every [`POLL`] until it returns `Some` or `timeout` passes.
pub async fn poll<T, F, Fut>(timeout: Duration, mut cond: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One group's replicas.
#[derive(Debug)]
pub struct Group {
    /// Group name (`kv`, `bank`).
    pub name: String,
    /// Its replicas.
    pub replicas: Vec<Mutex<ReplicaProc>>,
    /// Their client URLs (fixed across restarts).
    pub urls: Vec<String>,
}

/// Everything a schedule runs against.
#[derive(Debug)]
pub struct World {
    // Field order is drop order: replicas die before their namespaces and
    // before etcd.
    /// The groups (index = [`crate::plan::KV`], [`crate::plan::BANK`]).
    pub groups: Vec<Group>,
    /// Network namespaces, if `ip netns` works here.
    pub net: Option<NetEnv>,
    /// The etcd cluster.
    pub etcd: tokio::sync::Mutex<EtcdCluster>,
    /// etcd member log files (kept for reports).
    pub etcd_logs: Vec<PathBuf>,
    /// HTTP client for status and workload.
    pub http: reqwest::Client,
    /// Time zero of the schedule (all history times are relative to it).
    pub epoch: Instant,
    /// What happened when, for reports.
    pub timeline: Mutex<Vec<(Duration, String)>>,
    /// Problems of the harness itself (not of Dorado).
    pub harness_errors: Mutex<Vec<String>>,
}

/// A free TCP port on 127.0.0.1, below the ephemeral range when possible so
/// that a replica restarted on "its" port does not find it taken by some
/// client's outgoing connection.
fn free_port() -> anyhow::Result<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    for _ in 0..200 {
        let candidate = if low > 12_000 {
            rand::random_range(10_000..low)
        } else {
            0
        };
        if let Ok(l) = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, candidate)) {
            return Ok(l.local_addr()?.port());
        }
    }
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

impl World {
    /// Start etcd, the namespaces and all replicas under `dir`, and wait until
    /// every replica is ready and each group has a leader.
    pub async fn start(plan: &Plan, replica_bin: &Path, dir: &Path) -> anyhow::Result<World> {
        dorado::ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .context("build the HTTP client")?;
        let etcd = EtcdCluster::start_with(
            ETCD_MEMBERS,
            EtcdProcessOptions {
                base_dir: Some(dir.to_path_buf()),
                ..EtcdProcessOptions::default()
            },
        )
        .await
        .context("start the etcd cluster")?;
        let etcd_logs = (0..ETCD_MEMBERS)
            .filter_map(|i| etcd.log_path(i).ok())
            .collect();
        let net = match dorado_testkit::netns::available() {
            Ok(()) => Some(
                NetEnv::create(GROUPS.len() * REPLICAS, &etcd.client_urls())
                    .await
                    .context("create network namespaces")?,
            ),
            Err(_) => None,
        };
        let modules = [
            ("kv", dorado_testkit::examples::KV),
            ("bank", dorado_testkit::examples::BANK),
        ];
        let mut groups = Vec::new();
        for (g, name) in GROUPS.iter().enumerate() {
            let module = dir.join(format!("{name}.wasm"));
            let bytes = modules
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| *b)
                .context("no module for group")?;
            std::fs::write(&module, bytes)?;
            let mut replicas = Vec::new();
            let mut urls = Vec::new();
            for i in 0..REPLICAS {
                let slot = g * REPLICAS + i;
                let (listen, etcd_urls, netns) = match &net {
                    Some(n) => (
                        SocketAddr::from((n.slot_ip(slot), 7070)),
                        n.etcd_urls().to_vec(),
                        Some(n.namespace(slot).to_string()),
                    ),
                    None => (
                        SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)),
                        etcd.client_urls(),
                        None,
                    ),
                };
                let rname = format!("{name}-{i}");
                let spec = ReplicaSpec {
                    bin: replica_bin.to_path_buf(),
                    group: name.to_string(),
                    namespace: "faults".into(),
                    name: rname.clone(),
                    module: module.clone(),
                    etcd: etcd_urls,
                    listen,
                    lease_ttl: LEASE_TTL_SECS,
                    snapshot_every: plan.snapshot_every,
                    netns,
                };
                let proc = ReplicaProc::new(spec, dir.join("work").join(&rname), dir.join("logs"));
                urls.push(proc.url());
                replicas.push(Mutex::new(proc));
            }
            groups.push(Group {
                name: name.to_string(),
                replicas,
                urls,
            });
        }
        let world = World {
            groups,
            net,
            etcd: tokio::sync::Mutex::new(etcd),
            etcd_logs,
            http,
            epoch: Instant::now(),
            timeline: Mutex::new(Vec::new()),
            harness_errors: Mutex::new(Vec::new()),
        };
        for g in &world.groups {
            for r in &g.replicas {
                lock(r).start(true)?;
            }
        }
        world.log("started etcd and all replicas");
        for (g, group) in GROUPS.iter().enumerate() {
            for i in 0..REPLICAS {
                if !world.wait_ready(g, i, Duration::from_secs(60)).await {
                    let r = lock(&world.groups[g].replicas[i]);
                    anyhow::bail!(
                        "replica {} not ready within 60s; its log ends:\n{}",
                        r.spec.name,
                        crate::procs::tail(&r.log_file(), 15)
                    );
                }
            }
            if world
                .wait_leader(g, Duration::from_secs(30))
                .await
                .is_none()
            {
                anyhow::bail!("group {group} elected no leader within 30s");
            }
        }
        world.log("all replicas ready");
        Ok(world)
    }

    /// Nanoseconds since the schedule's time zero.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Add an event to the timeline.
    pub fn log(&self, what: impl Into<String>) {
        let what = what.into();
        tracing::debug!("{what}");
        if let Ok(mut t) = self.timeline.lock() {
            t.push((self.epoch.elapsed(), what));
        }
    }

    /// Record a harness problem.
    pub fn harness_error(&self, what: impl Into<String>) {
        let what = what.into();
        self.log(format!("HARNESS ERROR: {what}"));
        if let Ok(mut e) = self.harness_errors.lock() {
            e.push(what);
        }
    }

    /// `GET /v1/status` of replica `i` of group `g`.
    pub async fn status(&self, g: usize, i: usize, timeout: Duration) -> Option<Status> {
        dorado::client::fetch_status(&self.http, &self.groups[g].urls[i], timeout)
            .await
            .ok()
    }

    /// Whether replica `i` of group `g` answers `/readyz` with 200.
    pub async fn ready(&self, g: usize, i: usize) -> bool {
        let url = &self.groups[g].urls[i];
        self.http
            .get(format!("{url}/readyz"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    }

    /// Poll until replica `i` of group `g` is ready.
    pub async fn wait_ready(&self, g: usize, i: usize, timeout: Duration) -> bool {
        poll(timeout, || async { self.ready(g, i).await.then_some(()) })
            .await
            .is_some()
    }

    /// The replica of group `g` that reports itself leader (highest epoch if
    /// several do), skipping `except`.
    pub async fn leader_except(&self, g: usize, except: Option<usize>) -> Option<usize> {
        let statuses = futures::future::join_all(
            (0..REPLICAS).map(|i| self.status(g, i, Duration::from_millis(700))),
        )
        .await;
        statuses
            .into_iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != except)
            .filter_map(|(i, s)| {
                let s = s?;
                s.is_leader().then(|| (s.epoch.unwrap_or(0), i))
            })
            .max()
            .map(|(_, i)| i)
    }

    /// Poll for a leader of group `g` (other than `except`).
    pub async fn wait_leader_except(
        &self,
        g: usize,
        except: Option<usize>,
        timeout: Duration,
    ) -> Option<usize> {
        poll(timeout, || self.leader_except(g, except)).await
    }

    /// Poll for a leader of group `g`.
    pub async fn wait_leader(&self, g: usize, timeout: Duration) -> Option<usize> {
        self.wait_leader_except(g, None, timeout).await
    }

    /// Undo every fault still in effect: continue paused replicas, restore
    /// cut routes, restart dead replicas (keeping their data) and etcd members.
    pub async fn heal_all(&self) {
        for (gi, g) in self.groups.iter().enumerate() {
            for (i, r) in g.replicas.iter().enumerate() {
                let mut r = lock(r);
                if r.is_paused()
                    && let Err(e) = r.resume()
                {
                    self.harness_error(format!("resume {}: {e:#}", r.spec.name));
                }
                if r.cut {
                    if let Some(net) = &self.net
                        && let Err(e) = net.heal(gi * REPLICAS + i)
                    {
                        self.harness_error(format!("heal {}: {e:#}", r.spec.name));
                    }
                    r.cut = false;
                }
                if !r.is_running() {
                    let name = r.spec.name.clone();
                    if let Err(e) = r.start(false) {
                        self.harness_error(format!("restart {name}: {e:#}"));
                    }
                }
            }
        }
        let mut etcd = self.etcd.lock().await;
        for m in 0..ETCD_MEMBERS {
            if !etcd.is_running(m).unwrap_or(true)
                && let Err(e) = etcd.restart_member(m).await
            {
                self.harness_error(format!("restart etcd member {m}: {e}"));
            }
        }
        self.log("healed everything");
    }
}

/// Lock a replica; a poisoned lock (a panic elsewhere) still gives access.
pub fn lock(m: &Mutex<ReplicaProc>) -> std::sync::MutexGuard<'_, ReplicaProc> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
