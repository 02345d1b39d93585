//! The four systems as [`Workload`]s of the shared driver.
//!
//! They write the same bytes: every operation's payload is a kv put command
//! of exactly `--command-size` bytes (`{"op":"put","key":"k00000042","value":"xxx…"}`)
//! for a key drawn from the same key space. `etcd-put` stores it as the value
//! of that key; `fenced-txn` appends it as one log entry with Dorado's own
//! fenced append; `dorado`, `dorado-pipelined`, `dorado-batched` and
//! `classic` submit it to their replicas (the same workload; only the group,
//! or for `dorado-pipelined` and `dorado-batched` the transport, differs). Reads are a kv get
//! query (linearizable) for Dorado and classic, a linearizable get of the key for
//! `etcd-put`, and a linearizable get of the leader key (what a Dorado leader
//! reads to confirm its epoch) for `fenced-txn`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dorado_core::{AppendOutcome, Epoch, LeaderRecord, LeaseId, Store};
use etcd_client::{Client, ConnectOptions, DeleteOptions, KvClient};

use super::cluster::{LeaderMetrics, Replicas};
use super::driver::{self, Op, Plan, Progress, Workload};
use super::http1;
use super::machine::Proc;
use super::report::{DoradoStats, RunResult};
use super::{BenchConfig, BenchError, HttpClientKind, SystemKind, Target};
use dorado::api::{CLIENT_ID, SEQ};
use dorado::store::{EtcdStore, EtcdStoreOptions};

/// Digits of a key number (`k00000042`).
const KEY_DIGITS: usize = 8;

/// Length of the command JSON with an empty value.
pub(crate) const MIN_COMMAND_SIZE: usize =
    r#"{"op":"put","key":"k","value":""}"#.len() + KEY_DIGITS + 1;

/// Per-request timeout of the benchmark's own clients (above the replicas'
/// own 10 s submit timeout, so a slow group answers with its error first).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// TTL of the fenced-txn system's leader lease (kept alive during the run).
const FENCE_LEASE_TTL: Duration = Duration::from_secs(10);

pub(crate) fn key_name(key: usize) -> String {
    format!("k{key:0width$}", width = KEY_DIGITS)
}

/// The put command for `key`, padded to exactly `size` bytes (or as short as possible).
pub(crate) fn put_command(key: usize, size: usize) -> Vec<u8> {
    let base = format!(r#"{{"op":"put","key":"{}","value":""}}"#, key_name(key));
    let pad = size.saturating_sub(base.len());
    format!(
        r#"{{"op":"put","key":"{}","value":"{}"}}"#,
        key_name(key),
        "x".repeat(pad)
    )
    .into_bytes()
}

/// The put command of every key in the benchmark's key space, in key order.
pub(crate) fn put_commands(config: &BenchConfig) -> Vec<Bytes> {
    (0..config.keys.max(1))
        .map(|k| Bytes::from(put_command(k, config.command_size)))
        .collect()
}

fn get_query(key: usize) -> Vec<u8> {
    format!(r#"{{"op":"get","key":"{}"}}"#, key_name(key)).into_bytes()
}

/// What every system shares: payloads, the etcd connection, the fence.
pub(crate) struct Setup {
    run_id: String,
    commands: Arc<Vec<Bytes>>,
    queries: Arc<Vec<Bytes>>,
    kv: KvClient,
    raw_prefix: String,
    fenced: Option<Fence>,
    namespace: String,
    http_client: HttpClientKind,
    target: Target,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("run_id", &self.run_id)
            .field("namespace", &self.namespace)
            .field("fenced", &self.fenced)
            .finish_non_exhaustive()
    }
}

/// A fenced-txn "leader": an `EtcdStore` group with a lease and an epoch.
#[derive(Debug)]
struct Fence {
    store: EtcdStore,
    lease: LeaseId,
    epoch: Epoch,
    next: Arc<AtomicU64>,
    keep_alive: tokio::task::JoinHandle<()>,
}

impl Setup {
    pub(crate) async fn new(
        config: &BenchConfig,
        run_id: &str,
        etcd: &[String],
        namespace: &str,
    ) -> Result<Self, BenchError> {
        let keys = config.keys.max(1);
        let commands = put_commands(config);
        let queries: Vec<Bytes> = (0..keys).map(|k| Bytes::from(get_query(k))).collect();
        // The same connection settings the replicas' store uses.
        let store_options = EtcdStoreOptions::default();
        let client = Client::connect(
            etcd,
            Some(
                ConnectOptions::new()
                    .with_connect_timeout(store_options.connect_timeout)
                    .with_timeout(store_options.request_timeout)
                    .with_require_leader(true),
            ),
        )
        .await?;
        let fenced = if config.systems.contains(&SystemKind::FencedTxn) {
            let store = EtcdStore::connect(etcd, namespace, "fenced-txn", store_options).await?;
            let lease = store.grant_lease(FENCE_LEASE_TTL).await?;
            let leader = LeaderRecord {
                replica: "bench".into(),
                address: "127.0.0.1:0".into(),
            };
            let epoch = store.campaign(lease, &leader).await?.ok_or_else(|| {
                BenchError::Config(format!(
                    "the fenced-txn group in namespace {namespace} already has a leader"
                ))
            })?;
            let keeper = store.clone();
            let keep_alive = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(FENCE_LEASE_TTL / 4).await;
                    let _ = keeper.keep_alive(lease).await;
                }
            });
            Some(Fence {
                store,
                lease,
                epoch,
                next: Arc::new(AtomicU64::new(1)),
                keep_alive,
            })
        } else {
            None
        };
        Ok(Setup {
            run_id: run_id.to_owned(),
            commands: Arc::new(commands),
            queries: Arc::new(queries),
            kv: client.kv_client(),
            raw_prefix: format!("/dorado-bench/{run_id}/put/"),
            fenced,
            namespace: namespace.to_owned(),
            http_client: config.http_client,
            target: config.target,
        })
    }

    /// Measure one system at one concurrency.
    pub(crate) async fn run(
        &self,
        plan: &Plan,
        replicas: Option<&Replicas>,
        procs: &[Proc],
        progress: &mut Progress,
    ) -> Result<RunResult, BenchError> {
        let mut dorado = None;
        let measured = match plan.system {
            SystemKind::EtcdPut => {
                let load = EtcdPut {
                    kv: self.kv.clone(),
                    keys: (0..plan.keys.max(1))
                        .map(|k| format!("{}{}", self.raw_prefix, key_name(k)).into_bytes())
                        .collect(),
                    commands: self.commands.clone(),
                };
                driver::drive(Arc::new(load), plan, procs, progress).await?
            }
            SystemKind::FencedTxn => {
                let fence = self
                    .fenced
                    .as_ref()
                    .ok_or_else(|| BenchError::Config("fenced-txn was not set up".into()))?;
                let load = FencedTxn {
                    store: fence.store.clone(),
                    epoch: fence.epoch,
                    next: fence.next.clone(),
                    commands: self.commands.clone(),
                };
                let measured = driver::drive(Arc::new(load), plan, procs, progress).await?;
                // Keep etcd's key count comparable from run to run.
                let below = fence.next.load(Ordering::Relaxed);
                fence.store.delete_log_below(below).await?;
                measured
            }
            SystemKind::Dorado
            | SystemKind::DoradoPipelined
            | SystemKind::DoradoBatched
            | SystemKind::Classic => {
                let replicas = replicas.ok_or_else(|| {
                    BenchError::Config(format!(
                        "no replicas were started for {}",
                        plan.system.name()
                    ))
                })?;
                let (addrs, leader) = replicas.addrs();
                let http = match self.http_client {
                    // One client, so one HTTP/2 connection per replica that
                    // every benchmark client's requests share as streams.
                    _ if plan.system == SystemKind::DoradoPipelined => Some(
                        dorado::client::pipelined_http()
                            .map_err(|e| BenchError::Http(e.to_string()))?,
                    ),
                    HttpClientKind::Raw => None,
                    HttpClientKind::Reqwest => Some(
                        reqwest::Client::builder()
                            .http1_only()
                            .tcp_nodelay(true)
                            .pool_max_idle_per_host(plan.clients)
                            .timeout(REQUEST_TIMEOUT)
                            .build()
                            .map_err(|e| BenchError::Http(e.to_string()))?,
                    ),
                };
                let targets = match self.target {
                    Target::Leader => vec![addrs[leader]],
                    Target::All => addrs,
                };
                // One batching client per target replica: the benchmark
                // clients talking to that replica share its batches.
                let batched = if plan.system == SystemKind::DoradoBatched {
                    targets
                        .iter()
                        .map(|t| {
                            dorado::client::Client::batched(&[t.to_string()])
                                .map(|c| c.with_deadline(REQUEST_TIMEOUT))
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| BenchError::Http(e.to_string()))?
                } else {
                    Vec::new()
                };
                let load = Dorado {
                    targets,
                    client_prefix: format!(
                        "bench-{}-{}-c{}",
                        self.run_id,
                        plan.system.name(),
                        plan.clients
                    ),
                    commands: self.commands.clone(),
                    queries: self.queries.clone(),
                    http,
                    batched,
                };
                let before = replicas.leader_metrics().await;
                let elections_before = replicas.elections().await;
                let measured = driver::drive(Arc::new(load), plan, procs, progress).await?;
                let after = replicas.leader_metrics().await;
                let elections_after = replicas.elections().await;
                replicas.settle(Duration::from_secs(10)).await;
                let mut stats = dorado_stats(before, after);
                stats.leader_changes = elections_before
                    .zip(elections_after)
                    .map(|(b, a)| a.saturating_sub(b));
                dorado = Some(stats);
                measured
            }
        };
        Ok(RunResult::new(plan, measured, dorado))
    }

    /// Remove what the benchmark wrote (only worth it on a shared etcd).
    pub(crate) async fn cleanup(self, shared_etcd: bool) {
        if let Some(fence) = &self.fenced {
            fence.keep_alive.abort();
            let _ = fence.store.revoke_lease(fence.lease).await;
        }
        if shared_etcd {
            let mut kv = self.kv.clone();
            for prefix in [
                self.raw_prefix.clone(),
                format!("/dorado/v1/{}/", self.namespace),
            ] {
                let _ = kv
                    .delete(prefix, Some(DeleteOptions::new().with_prefix()))
                    .await;
            }
        }
    }
}

fn dorado_stats(before: Option<LeaderMetrics>, after: Option<LeaderMetrics>) -> DoradoStats {
    match (before, after) {
        (Some(b), Some(a)) => {
            let batches = a.batches - b.batches;
            let appends = a.appends - b.appends;
            DoradoStats {
                batches: Some(batches as u64),
                mean_batch_commands: (batches > 0.0)
                    .then(|| (a.batched_commands - b.batched_commands) / batches),
                mean_append_ms: (appends > 0.0)
                    .then(|| (a.append_seconds - b.append_seconds) / appends * 1000.0),
                leader_changes: None,
            }
        }
        _ => DoradoStats::default(),
    }
}

/// Plain etcd puts.
struct EtcdPut {
    kv: KvClient,
    keys: Vec<Vec<u8>>,
    commands: Arc<Vec<Bytes>>,
}

impl std::fmt::Debug for EtcdPut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdPut")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Workload for EtcdPut {
    type Client = KvClient;

    fn client(&self, _index: usize) -> KvClient {
        self.kv.clone()
    }

    async fn call(&self, kv: &mut KvClient, op: Op) -> Result<(), String> {
        let key = self.keys[op.key].clone();
        let call = async {
            if op.read {
                kv.get(key, None).await.map(|_| ())
            } else {
                kv.put(key, self.commands[op.key].to_vec(), None)
                    .await
                    .map(|_| ())
            }
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("etcd did not answer within {REQUEST_TIMEOUT:?}")),
        }
    }
}

/// Dorado's fenced append, one command per entry.
#[derive(Debug)]
struct FencedTxn {
    store: EtcdStore,
    epoch: Epoch,
    next: Arc<AtomicU64>,
    commands: Arc<Vec<Bytes>>,
}

impl Workload for FencedTxn {
    type Client = ();

    fn client(&self, _index: usize) {}

    async fn call(&self, _client: &mut (), op: Op) -> Result<(), String> {
        if op.read {
            return match self.store.leader().await {
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            };
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        match self
            .store
            .append(self.epoch, index, &self.commands[op.key])
            .await
        {
            Ok(AppendOutcome::Appended) => Ok(()),
            Ok(AppendOutcome::Fenced) => Err("append fenced off".into()),
            Ok(AppendOutcome::Occupied(_)) => Err(format!("log/{index} already written")),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A replica group (either protocol) over the HTTP client API.
#[derive(Debug)]
struct Dorado {
    targets: Vec<SocketAddr>,
    client_prefix: String,
    commands: Arc<Vec<Bytes>>,
    queries: Arc<Vec<Bytes>>,
    /// `None`: the raw HTTP/1.1 client.
    http: Option<reqwest::Client>,
    /// `dorado-batched`: per target, the batching client the benchmark
    /// clients of that target share for their writes (reads go as with
    /// `http`); empty otherwise.
    batched: Vec<dorado::client::Client>,
}

#[derive(Debug)]
struct DoradoClient {
    id: String,
    /// Index of its target in `Dorado::targets`.
    slot: usize,
    target: SocketAddr,
    url: String,
    conn: http1::Conn,
}

impl Workload for Dorado {
    type Client = DoradoClient;

    fn client(&self, index: usize) -> DoradoClient {
        let slot = index % self.targets.len();
        let target = self.targets[slot];
        DoradoClient {
            id: format!("{}-{index}", self.client_prefix),
            slot,
            target,
            url: format!("http://{target}"),
            conn: http1::Conn::new(target),
        }
    }

    async fn call(&self, client: &mut DoradoClient, op: Op) -> Result<(), String> {
        if let Some(batched) = self.batched.get(client.slot).filter(|_| !op.read) {
            return batched
                .submit(&self.commands[op.key], Some((&client.id, op.seq)))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
        let (path, body) = if op.read {
            ("/v1/query", &self.queries[op.key])
        } else {
            ("/v1/commands", &self.commands[op.key])
        };
        let seq = op.seq.to_string();
        let headers: &[(&str, &str)] = if op.read {
            &[]
        } else {
            &[(CLIENT_ID, &client.id), (SEQ, &seq)]
        };
        let (status, reply) = match &self.http {
            None => {
                let call = client.conn.post(path, headers, body);
                match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
                    Ok(Ok(r)) => (r.status, r.body),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        // The connection's state is unknown: start afresh.
                        client.conn = http1::Conn::new(client.target);
                        return Err(format!("no reply within {REQUEST_TIMEOUT:?}"));
                    }
                }
            }
            Some(http) => {
                let mut req = http
                    .post(format!("{}{path}", client.url))
                    .body(body.clone());
                for (name, value) in headers {
                    req = req.header(*name, *value);
                }
                let resp = req.send().await.map_err(|e| e.to_string())?;
                let status = resp.status().as_u16();
                let body = resp.bytes().await.map_err(|e| e.to_string())?;
                (status, body.to_vec())
            }
        };
        if status == 200 {
            Ok(())
        } else {
            let text = String::from_utf8_lossy(&reply);
            Err(format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_have_the_requested_size() {
        for size in [MIN_COMMAND_SIZE, 100, 1000] {
            let c = put_command(42, size);
            assert_eq!(c.len(), size);
            #[derive(serde::Deserialize)]
            struct Put {
                op: String,
                key: String,
                value: String,
            }
            let put: Put = serde_json::from_slice(&c).unwrap();
            assert_eq!((put.op.as_str(), put.key.as_str()), ("put", "k00000042"));
            assert!(put.value.bytes().all(|b| b == b'x'), "{}", put.value);
        }
        assert_eq!(put_command(0, 1).len(), MIN_COMMAND_SIZE - 1);
    }
}
