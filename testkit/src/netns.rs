//! Network namespaces, so that one replica can be cut off from etcd while
//! clients and the other replicas still reach it.
//!
//! Layout (all on one machine, no iptables needed):
//!
//! ```text
//!  host namespace                                   namespace dfx-<pid>-<n>-<slot>
//!  ┌───────────────────────────────┐  veth pair   ┌──────────────────────────┐
//!  │ bridge dfb<tok>  10.A.B.1/24  ├──────────────┤ 10.A.B.(10+slot)         │
//!  │                  10.A.C.1/32  │              │ replica listens here     │
//!  │ etcd proxies on 10.A.C.1:port │              │ route 10.A.C.1 via .1    │
//!  │ → etcd members on 127.0.0.1   │              │   (blackhole = cut)      │
//!  └───────────────────────────────┘              └──────────────────────────┘
//! ```
//!
//! Every replica runs in its own namespace. etcd members listen on 127.0.0.1
//! of the host namespace, which other namespaces cannot reach, so the suite
//! runs one small TCP proxy per member on a dedicated address (`10.A.C.1`).
//! Cutting a replica replaces its route to that address with a blackhole:
//! its established etcd connections stall (packets vanish, as in a real
//! partition) and new ones fail, while client traffic (from `10.A.B.1`) and
//! replica-to-replica forwarding on the bridge are untouched.
//!
//! Everything is removed on drop; namespaces and bridges left behind by a
//! process that died without dropping (SIGKILL) carry its pid in their names
//! and are removed by the next run.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const NS_PREFIX: &str = "dfx-";
const BRIDGE_PREFIX: &str = "dfb";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Run `ip` with `args`; an error quotes its stderr.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `ip {}`", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `ip netns` works here (root, iproute2, a kernel that allows it).
/// Probed once per process; `Err` says why not.
pub fn available() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            if std::env::var_os("DORADO_FAULTS_NO_NETNS").is_some() {
                return Err("disabled by DORADO_FAULTS_NO_NETNS".into());
            }
            let name = format!("{NS_PREFIX}{}-probe", std::process::id());
            ip(&["netns", "add", &name]).map_err(|e| e.to_string())?;
            let link = format!("{BRIDGE_PREFIX}{:06x}p", std::process::id() & 0xff_ffff);
            let bridge = ip(&["link", "add", &link, "type", "bridge"]).map_err(|e| e.to_string());
            let _ = ip(&["link", "del", &link]);
            ip(&["netns", "del", &name]).map_err(|e| e.to_string())?;
            bridge.map(|_| ())
        })
        .clone()
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Remove namespaces and bridges of suite processes that no longer exist.
fn remove_stale() {
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some(rest) = name.strip_prefix(NS_PREFIX) else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !pid_alive(p)) {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(list) = ip(&["-o", "link", "show", "type", "bridge"]) {
        for line in list.lines() {
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            let Some(hex) = name.strip_prefix(BRIDGE_PREFIX) else {
                continue;
            };
            let pid = hex.get(..6).and_then(|h| u32::from_str_radix(h, 16).ok());
            // Only names we could have made: the pid's low 24 bits.
            if pid.is_some_and(|p| !pid_alive(p)) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

/// The namespaces of one schedule and the etcd proxies they use.
#[derive(Debug)]
pub struct NetEnv {
    bridge: String,
    gateway: Ipv4Addr,
    proxy_ip: Ipv4Addr,
    subnet: (u8, u8),
    namespaces: Vec<String>,
    proxy_urls: Vec<String>,
    proxies: Vec<JoinHandle<()>>,
}

impl NetEnv {
    /// Create `slots` namespaces (one per replica) and a proxy for each etcd
    /// client URL (`http://127.0.0.1:port`).
    pub async fn create(slots: usize, etcd_urls: &[String]) -> anyhow::Result<NetEnv> {
        if slots > 200 {
            bail!("at most 200 namespaces");
        }
        remove_stale();
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tok = format!("{:06x}{:x}", pid & 0xff_ffff, n % 16);
        let subnet = pick_subnet()?;
        let mut env = NetEnv {
            bridge: format!("{BRIDGE_PREFIX}{tok}"),
            gateway: Ipv4Addr::new(10, subnet.0, subnet.1, 1),
            proxy_ip: Ipv4Addr::new(10, subnet.0, subnet.1 + 1, 1),
            subnet,
            namespaces: Vec::new(),
            proxy_urls: Vec::new(),
            proxies: Vec::new(),
        };
        // From here on, Drop cleans up whatever was created.
        let bridge = env.bridge.clone();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", env.gateway),
            "dev",
            &bridge,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/32", env.proxy_ip),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for slot in 0..slots {
            let ns = format!("{NS_PREFIX}{pid}-{n}-{slot}");
            ip(&["netns", "add", &ns])?;
            env.namespaces.push(ns.clone());
            let host_if = format!("dfh{tok}{slot:x}");
            let ns_if = format!("dfn{tok}{slot:x}");
            ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ])?;
            ip(&["link", "set", &ns_if, "netns", &ns])?;
            ip(&["link", "set", &host_if, "master", &bridge])?;
            ip(&["link", "set", &host_if, "up"])?;
            let addr = format!("{}/24", env.slot_ip(slot));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &ns_if])?;
            ip(&["-n", &ns, "link", "set", &ns_if, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            env.route(slot, false)?;
        }
        for url in etcd_urls {
            let upstream: SocketAddr = url
                .trim_start_matches("http://")
                .parse()
                .with_context(|| format!("etcd URL {url} is not http://ip:port"))?;
            let listener = TcpListener::bind((env.proxy_ip, 0))
                .await
                .with_context(|| format!("bind an etcd proxy on {}", env.proxy_ip))?;
            let port = listener.local_addr()?.port();
            env.proxy_urls
                .push(format!("http://{}:{port}", env.proxy_ip));
            env.proxies.push(tokio::spawn(proxy(listener, upstream)));
        }
        Ok(env)
    }

    /// Namespace of `slot`.
    pub fn namespace(&self, slot: usize) -> &str {
        &self.namespaces[slot]
    }

    /// Address of `slot` inside its namespace.
    pub fn slot_ip(&self, slot: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet.0, self.subnet.1, 10 + slot as u8)
    }

    /// etcd URLs as seen from the namespaces (the proxies).
    pub fn etcd_urls(&self) -> &[String] {
        &self.proxy_urls
    }

    fn route(&self, slot: usize, cut: bool) -> anyhow::Result<()> {
        let ns = &self.namespaces[slot];
        let dst = format!("{}/32", self.proxy_ip);
        if cut {
            ip(&["-n", ns, "route", "replace", "blackhole", &dst])?;
        } else {
            let via = self.gateway.to_string();
            ip(&["-n", ns, "route", "replace", &dst, "via", &via])?;
        }
        Ok(())
    }

    /// Cut `slot` off from etcd (existing connections stall, new ones fail).
    pub fn cut(&self, slot: usize) -> anyhow::Result<()> {
        self.route(slot, true)
    }

    /// Give `slot` its route to etcd back.
    pub fn heal(&self, slot: usize) -> anyhow::Result<()> {
        self.route(slot, false)
    }
}

impl Drop for NetEnv {
    fn drop(&mut self) {
        for p in &self.proxies {
            p.abort();
        }
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// A /24 for the bridge and the next /24 for the proxy address, both unused.
fn pick_subnet() -> anyhow::Result<(u8, u8)> {
    let used = ip(&["-4", "-o", "addr"]).unwrap_or_default()
        + &ip(&["-4", "route", "show", "table", "all"]).unwrap_or_default();
    for _ in 0..200 {
        let a: u8 = rand::random_range(64..=127);
        let b: u8 = rand::random_range(0..=126) * 2;
        let taken = |c: u8| used.contains(&format!("10.{a}.{c}."));
        if !taken(b) && !taken(b + 1) {
            return Ok((a, b));
        }
    }
    bail!("no free 10.x.y.0/23 for the test network")
}

/// Forward every connection on `listener` to `upstream`. If the upstream
/// member is down the downstream connection is closed at once. Aborting this
/// task drops the set, which aborts every connection it forwards.
async fn proxy(listener: TcpListener, upstream: SocketAddr) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let mut down = match listener.accept().await {
            Ok((down, _)) => down,
            Err(_) => {
                // Out of descriptors or similar: back off instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        connections.spawn(async move {
            let Ok(mut up) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = down.set_nodelay(true);
            let _ = up.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
        });
    }
}
