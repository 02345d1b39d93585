//! README.md's walk-through, literally, against a real Kubernetes control
//! plane: `kube-apiserver`, `kube-controller-manager` and `kube-scheduler`
//! built from the `k8s.io/kubernetes` module, one node whose kubelet runs
//! pods as podman containers from the images `scripts/images.sh` builds.
//!
//! The API server calls the webhook through its Service with the overlay's
//! `caBundle`, evaluates `matchConditions` and selectors, validates the
//! mutated pods; the StatefulSet, ReplicaSet and Deployment controllers
//! create and recreate them; `kubectl logs` reaches the node's log endpoint.
//!
//! One cluster serves the whole journey (a cluster start costs a minute of
//! the two cores); each step says which README command it is. Needs root,
//! podman with runc, Go (the control plane is built on first use into
//! `/var/cache/dorado/controlplane`), Debian's etcd and kubectl.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use dorado::client::{Client, ClientError};
use dorado::wire::{ModuleState, Status};
use dorado_e2e::cluster::{Cluster, KUBECTL_WAIT};
use dorado_e2e::images::static_binary;
use dorado_e2e::wait_for;
use dorado_testkit::examples::{KV, KV2};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

const NS: &str = "dorado-demo";
const CONVERGE: Duration = Duration::from_secs(90);

/// `kubectl -n dorado-demo get pod NAME -o jsonpath=PATH`.
fn pod_field(c: &Cluster, name: &str, jsonpath: &str) -> anyhow::Result<String> {
    c.kubectl_ok([
        "-n",
        NS,
        "get",
        "pod",
        name,
        "-o",
        &format!("jsonpath={jsonpath}"),
    ])
}

fn timeout_flag() -> String {
    format!("--timeout={}s", KUBECTL_WAIT.as_secs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readme_walkthrough_on_a_real_control_plane() -> anyhow::Result<()> {
    // Three volumes for the etcd StatefulSet's claims.
    let cluster = Cluster::start(3).await?;
    let result = journey(&cluster).await;
    if result.is_err() {
        eprintln!("{}", cluster.diagnostics());
    }
    cluster.stop().await;
    result
}

async fn journey(c: &Cluster) -> anyhow::Result<()> {
    install(c).await?;
    let (kv, acked) = kv_example(c).await?;
    let kv = kv_upgrade(c, kv, acked).await?;
    admission_as_a_user_sees_it(c, &kv).await?;
    bank_deployment(c).await?;
    webhook_outage(c).await?;
    Ok(())
}

/// README "Install": certificates, `kubectl apply -k` of the overlay, the
/// control plane's rollout.
async fn install(c: &Cluster) -> anyhow::Result<()> {
    let webhook = static_binary("dorado-webhook")?;
    let out = std::process::Command::new(&webhook)
        .args([
            "certs",
            "--service",
            "dorado-webhook",
            "--namespace",
            "dorado-system",
            "--out",
            "manifests/overlays/self-signed/tls",
            "--etcd-out",
            "manifests/overlays/self-signed/tls/etcd",
        ])
        .current_dir(&c.workdir)
        .output()
        .context("run dorado-webhook certs")?;
    ensure!(
        out.status.success(),
        "dorado-webhook certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.kubectl_ok(["apply", "-k", "manifests/overlays/local-images"])?;
    c.kubectl_ok([
        "-n",
        "dorado-system",
        "rollout",
        "status",
        "deploy/dorado-webhook",
        &timeout_flag(),
    ])?;
    c.kubectl_ok([
        "-n",
        "dorado-system",
        "rollout",
        "status",
        "statefulset/etcd",
        &timeout_flag(),
    ])?;
    // The caBundle reached the configuration.
    let bundle = c.kubectl_ok([
        "get",
        "mutatingwebhookconfiguration",
        "dorado-webhook",
        "-o",
        "jsonpath={.webhooks[0].clientConfig.caBundle}",
    ])?;
    ensure!(!bundle.trim().is_empty(), "the caBundle was not set");
    Ok(())
}

/// The kv group's pods, by name, with their IPs.
struct Group {
    name: String,
    pods: BTreeMap<String, String>,
}

impl Group {
    fn endpoints(&self) -> Vec<String> {
        self.pods.values().map(|ip| format!("{ip}:7070")).collect()
    }
}

/// Pods of group `group` (label `dorado.io/group`), Ready, with their IPs.
async fn ready_group(c: &Cluster, group: &str, want: usize) -> anyhow::Result<Group> {
    let api: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    let pods = wait_for(
        &format!("{want} ready pods of group {group}"),
        Duration::from_secs(240),
        || {
            let api = api.clone();
            async move {
                let list = api
                    .list(&ListParams::default().labels(&format!("dorado.io/group={group}")))
                    .await
                    .map_err(|e| e.to_string())?;
                let mut ready = BTreeMap::new();
                let mut seen = Vec::new();
                for p in &list.items {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    let status = p.status.as_ref();
                    let is_ready = p.metadata.deletion_timestamp.is_none()
                        && status
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|cs| {
                                cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            });
                    seen.push(format!(
                        "{name}: {}",
                        status
                            .and_then(|s| s.phase.clone())
                            .unwrap_or_else(|| "-".into())
                    ));
                    if let (true, Some(ip)) = (is_ready, status.and_then(|s| s.pod_ip.clone())) {
                        ready.insert(name, ip);
                    }
                }
                if ready.len() == want && list.items.len() == want {
                    Ok(ready)
                } else {
                    Err(format!("{seen:?}"))
                }
            }
        },
    )
    .await?;
    Ok(Group {
        name: group.to_string(),
        pods,
    })
}

/// The status of the replica at `endpoint`.
async fn replica_status(endpoint: &str) -> Result<Status, String> {
    Client::new(&[endpoint.to_string()])
        .map_err(|e| e.to_string())?
        .with_deadline(Duration::from_secs(2))
        .status()
        .await
        .map_err(|e| format!("{endpoint}: {e}"))
}

/// Wait until every replica applied the commit index with one hash.
async fn converged(group: &Group) -> anyhow::Result<(u64, String)> {
    wait_for(
        &format!("the replicas of {} to agree", group.name),
        CONVERGE,
        || async {
            let mut seen = Vec::new();
            for e in group.endpoints() {
                seen.push(replica_status(&e).await?);
            }
            let commit = seen.iter().map(|s| s.commit_index).max().unwrap_or(0);
            if commit > 0
                && seen
                    .iter()
                    .all(|s| s.applied_index == commit && s.hash == seen[0].hash)
            {
                Ok((commit, seen[0].hash.clone()))
            } else {
                Err(seen
                    .iter()
                    .map(|s| {
                        format!(
                            "{}: {}/{} {}",
                            s.replica, s.applied_index, s.commit_index, s.hash
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "))
            }
        },
    )
    .await
}

/// The IPs (`ip:7070`) of group `group`'s pods that have one. Pod IPs change
/// when pods are recreated; a client in the cluster would use the Service,
/// which needs kube-proxy, so the writers look the pods up again instead.
async fn pod_endpoints(api: &Api<Pod>, group: &str) -> anyhow::Result<Vec<String>> {
    let list = api
        .list(&ListParams::default().labels(&format!("dorado.io/group={group}")))
        .await?;
    Ok(list
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.as_ref())
        .map(|ip| format!("{ip}:7070"))
        .collect())
}

/// A writer that owns key `key` and moves it from `start` up by one with
/// `cas`, as client `id`, until `stop` or `max` acknowledged writes: a
/// command applied twice would fail its `expected`, so every acknowledged
/// step proves exactly-once, and the final value proves none was lost. A
/// command whose replicas are gone (recreated with new IPs) is retried with
/// the same id and seq against the pods found then.
async fn cas_writer(
    api: Api<Pod>,
    group: &'static str,
    key: String,
    id: String,
    start: u64,
    stop: Arc<AtomicBool>,
    max: u64,
) -> anyhow::Result<u64> {
    let mut n = start;
    let mut seq = 0;
    let mut endpoints = pod_endpoints(&api, group).await?;
    while !stop.load(Ordering::Relaxed) && n - start < max {
        seq += 1;
        let expected = if n == 0 { Value::Null } else { json!(n) };
        let cmd = json!({"op": "cas", "key": key, "expected": expected, "value": n + 1});
        let since = std::time::Instant::now();
        let reply = loop {
            let client = Client::new(&endpoints)?.with_deadline(Duration::from_secs(10));
            match client
                .submit(cmd.to_string().as_bytes(), Some((&id, seq)))
                .await
            {
                Ok(r) => break r,
                Err(e @ ClientError::Exhausted { .. }) => {
                    ensure!(
                        since.elapsed() < Duration::from_secs(180),
                        "{key}: no replica took cas {n}->{} in 180 s: {e}",
                        n + 1
                    );
                    endpoints = pod_endpoints(&api, group).await?;
                }
                Err(e) => bail!("{key}: cas {n}->{}: {e}", n + 1),
            }
        };
        let body: Value = serde_json::from_slice(&reply.body)?;
        ensure!(
            body == json!({"ok": true}),
            "{key}: cas {n}->{} answered {body} (a command applied twice, or a lost write)",
            n + 1
        );
        n += 1;
    }
    Ok(n)
}

/// A writer task: its key and the count it reached.
type Writer = tokio::task::JoinHandle<anyhow::Result<(String, u64)>>;

/// One [`cas_writer`] per acknowledged key, continuing from its acknowledged
/// count as a new client (`<key>-<phase>`) until `stop`.
fn resume_writers(
    pods: &Api<Pod>,
    acked: &BTreeMap<String, u64>,
    phase: &str,
    stop: &Arc<AtomicBool>,
) -> Vec<Writer> {
    acked
        .iter()
        .map(|(key, start)| {
            let key = key.clone();
            let task = cas_writer(
                pods.clone(),
                "kv",
                key.clone(),
                format!("{key}-{phase}"),
                *start,
                stop.clone(),
                u64::MAX,
            );
            tokio::spawn(async move { task.await.map(|n| (key, n)) })
        })
        .collect()
}

/// Wait for the writers (once stopped): each must have had a write
/// acknowledged `during` what ran meanwhile; `acked` takes their counts.
async fn join_writers(
    writers: Vec<Writer>,
    acked: &mut BTreeMap<String, u64>,
    during: &str,
) -> anyhow::Result<()> {
    for w in writers {
        let (key, n) = w.await??;
        let before = acked[&key];
        ensure!(
            n > before,
            "{key}: no write was acknowledged during {during}"
        );
        acked.insert(key, n);
    }
    Ok(())
}

/// Every replica's value of each writer's key equals its acknowledged count.
async fn check_writers(group: &Group, acked: &BTreeMap<String, u64>) -> anyhow::Result<()> {
    for e in group.endpoints() {
        let client = Client::new(std::slice::from_ref(&e))?;
        for (key, n) in acked {
            let q = json!({"op": "get", "key": key});
            let got: Value =
                serde_json::from_slice(&client.query(q.to_string().as_bytes(), true).await?)?;
            let want = if *n == 0 { Value::Null } else { json!(n) };
            ensure!(
                got == json!({"ok": true, "value": want}),
                "{e}: {key} is {got}, but {n} writes were acknowledged"
            );
        }
    }
    Ok(())
}

/// README "Walk-through": the etcd client Secret, the module ConfigMap,
/// `kubectl apply -k manifests/examples/kv`, the trace, a pod deleted and a
/// rolling restart under load.
async fn kv_example(c: &Cluster) -> anyhow::Result<(Group, BTreeMap<String, u64>)> {
    c.kubectl_ok(["create", "namespace", NS])?;
    c.kubectl_ok([
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        "dorado-etcd-client",
        "--from-file=ca.crt=manifests/overlays/self-signed/tls/etcd/ca.crt",
        "--from-file=tls.crt=manifests/overlays/self-signed/tls/etcd/client.crt",
        "--from-file=tls.key=manifests/overlays/self-signed/tls/etcd/client.key",
    ])?;
    // The module as `wasm-examples` builds it (the same bytes).
    std::fs::write(c.path("kv.wasm"), KV)?;
    std::fs::write(c.path("bank.wasm"), dorado_testkit::examples::BANK)?;
    c.kubectl_ok([
        "-n",
        NS,
        "create",
        "configmap",
        "kv",
        "--from-file=kv.wasm=kv.wasm",
    ])?;
    c.kubectl_ok(["apply", "-k", "manifests/examples/kv"])?;
    c.kubectl_ok([
        "-n",
        NS,
        "rollout",
        "status",
        "statefulset/kv",
        &timeout_flag(),
    ])?;
    let group = ready_group(c, "kv", 3).await?;

    // `dorado submit` / `query` against a pod's IP, as the README shows.
    let ip = pod_field(c, "kv-0", "{.status.podIP}")?;
    let dorado = static_binary("dorado")?;
    let endpoint = format!("{}:7070", ip.trim());
    let run = |args: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new(&dorado).args(args).output()?;
        ensure!(
            out.status.success(),
            "dorado {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    run(&[
        "submit",
        "--endpoint",
        &endpoint,
        r#"{"op":"put","key":"a","value":"1"}"#,
    ])?;
    let got = run(&[
        "query",
        "--endpoint",
        &endpoint,
        r#"{"op":"get","key":"a"}"#,
    ])?;
    ensure!(got.contains(r#""1""#), "query after submit answered {got}");
    let status = run(&["status", "--endpoint", &endpoint])?;
    ensure!(
        status.contains("kv-0") && status.contains("dorado-demo"),
        "dorado status does not describe kv-0 of dorado-demo: {status}"
    );

    // Writes from a client to the pods' IPs.
    let stop = Arc::new(AtomicBool::new(false));
    let mut acked = BTreeMap::new();
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    for w in 0..4 {
        let key = format!("w{w}");
        let n = cas_writer(
            pods.clone(),
            "kv",
            key.clone(),
            key.clone(),
            0,
            stop.clone(),
            25,
        )
        .await?;
        acked.insert(key, n);
    }
    let (index, hash) = converged(&group).await?;

    // `kubectl logs kv-1` shows the replay trace, up to the group's hash.
    let logs = c.kubectl_ok(["-n", NS, "logs", "kv-1"])?;
    let entries: Vec<_> = logs
        .lines()
        .filter_map(dorado::trace::parse_trace_line)
        .collect();
    let last = entries
        .last()
        .with_context(|| format!("kubectl logs kv-1 shows no trace lines:\n{logs}"))?;
    ensure!(
        last.index == index && hash.starts_with(&last.hash),
        "kubectl logs kv-1 ends at {}/{} but the group is at {index}/{hash}",
        last.index,
        last.hash
    );
    ensure!(
        logs.contains("client=w0#"),
        "the trace names the writers' client ids:\n{logs}"
    );

    // `kubectl delete pod kv-0`: the controller recreates it, it catches up.
    let old_uid = pod_field(c, "kv-0", "{.metadata.uid}")?;
    c.kubectl_ok(["-n", NS, "delete", "pod", "kv-0", &timeout_flag()])?;
    let group = ready_group(c, "kv", 3).await?;
    let new_uid = pod_field(c, "kv-0", "{.metadata.uid}")?;
    ensure!(
        old_uid != new_uid,
        "kv-0 was not recreated (same uid {old_uid})"
    );
    converged(&group).await?;
    check_writers(&group, &acked).await?;

    // `kubectl rollout restart statefulset/kv` under a write load.
    let writers = resume_writers(&pods, &acked, "restart", &stop);
    let uids = |c: &Cluster| -> anyhow::Result<String> {
        c.kubectl_ok([
            "-n",
            NS,
            "get",
            "pods",
            "-l",
            "dorado.io/group=kv",
            "-o",
            "jsonpath={.items[*].metadata.uid}",
        ])
    };
    let before_restart = uids(c)?;
    c.kubectl_ok(["-n", NS, "rollout", "restart", "statefulset/kv"])?;
    c.kubectl_ok([
        "-n",
        NS,
        "rollout",
        "status",
        "statefulset/kv",
        &timeout_flag(),
    ])?;
    stop.store(true, Ordering::Relaxed);
    join_writers(writers, &mut acked, "the rollout").await?;
    let group = ready_group(c, "kv", 3).await?;
    let after_restart = uids(c)?;
    for uid in before_restart.split_whitespace() {
        ensure!(
            !after_restart.contains(uid),
            "pod {uid} survived the rollout restart"
        );
    }
    converged(&group).await?;
    check_writers(&group, &acked).await?;
    Ok((group, acked))
}

/// Hex sha256 of a module, as `/v1/status` and the trace spell it.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Submits `{"op":"incr","key":"n","by":5}` as client `incr`, seq `seq`.
async fn incr(group: &Group, seq: u64) -> anyhow::Result<(Value, u64)> {
    let cmd = json!({"op": "incr", "key": "n", "by": 5});
    let reply = Client::new(&group.endpoints())?
        .with_deadline(Duration::from_secs(30))
        .submit(cmd.to_string().as_bytes(), Some(("incr", seq)))
        .await?;
    let index = reply.index.context("the incr reply names no log index")?;
    Ok((serde_json::from_slice(&reply.body)?, index))
}

/// README "Upgrades", the procedure: kv2.wasm in a ConfigMap of its own, the
/// pod template's `dorado.io/module` pointed at it, and the StatefulSet's
/// rolling update (a real one, by the controller) while the writers go on.
/// The first new pod proposes the upgrade; every pod ends up serving kv2,
/// switched at one index of the log.
async fn kv_upgrade(
    c: &Cluster,
    group: Group,
    mut acked: BTreeMap<String, u64>,
) -> anyhow::Result<Group> {
    let (v1, v2) = (sha256_hex(KV), sha256_hex(KV2));

    // Before: the group runs kv, and kv answers incr with an error reply.
    for e in group.endpoints() {
        let s = replica_status(&e).await.map_err(anyhow::Error::msg)?;
        ensure!(
            s.module_sha256 == v1 && s.group_module == v1 && s.module_state == ModuleState::Serving,
            "{e}: before the upgrade, module {} group module {} {:?}; expected kv ({v1}) serving",
            s.module_sha256,
            s.group_module,
            s.module_state
        );
    }
    let (before, incr_before) = incr(&group, 1).await?;
    ensure!(
        before["ok"] == json!(false)
            && before["error"]
                .as_str()
                .is_some_and(|e| e.contains("expected put, get, delete or cas")),
        "kv answered incr with {before}; expected an error reply naming kv's operations"
    );

    // `kubectl create configmap kv-v2 --from-file=kv.wasm=kv2.wasm`.
    std::fs::write(c.path("kv2.wasm"), KV2)?;
    c.kubectl_ok([
        "-n",
        NS,
        "create",
        "configmap",
        "kv-v2",
        "--from-file=kv.wasm=kv2.wasm",
    ])?;

    // The writers go on through the rollout, as new clients.
    let stop = Arc::new(AtomicBool::new(false));
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    let writers = resume_writers(&pods, &acked, "upgrade", &stop);

    // Point the pod template at it: the StatefulSet controller rolls the pods.
    c.kubectl_ok([
        "-n",
        NS,
        "patch",
        "statefulset",
        "kv",
        "--type=merge",
        "-p",
        r#"{"spec":{"template":{"metadata":{"annotations":{"dorado.io/module":"kv-v2/kv.wasm"}}}}}"#,
    ])?;
    let rollout = c.kubectl_ok([
        "-n",
        NS,
        "rollout",
        "status",
        "statefulset/kv",
        &timeout_flag(),
    ]);
    stop.store(true, Ordering::Relaxed);
    rollout.with_context(|| {
        format!(
            "the rolling update of statefulset/kv to kv-v2/kv.wasm did not finish in {} s",
            KUBECTL_WAIT.as_secs()
        )
    })?;
    join_writers(writers, &mut acked, "the upgrade").await?;

    // After: every pod holds kv2, the group runs it, all serve, one hash.
    let group = ready_group(c, "kv", 3).await?;
    for name in group.pods.keys() {
        let module = pod_field(c, name, "{.metadata.annotations.dorado\\.io/module}")?;
        ensure!(
            module == "kv-v2/kv.wasm",
            "{name} was not rolled: its dorado.io/module is {module:?}"
        );
    }
    converged(&group).await?;
    for e in group.endpoints() {
        let s = replica_status(&e).await.map_err(anyhow::Error::msg)?;
        ensure!(
            s.module_sha256 == v2 && s.group_module == v2 && s.module_state == ModuleState::Serving,
            "{e} ({}): after the upgrade, module {} group module {} {:?}; expected kv2 ({v2}) serving",
            s.replica,
            s.module_sha256,
            s.group_module,
            s.module_state
        );
    }
    check_writers(&group, &acked).await?;
    let (after, incr_after) = incr(&group, 2).await?;
    ensure!(
        after == json!({"ok": true, "value": 5}),
        "kv2 answered incr with {after}; expected {{\"ok\":true,\"value\":5}}"
    );

    // `kubectl logs`: each pod's trace switches once, at the same index,
    // between the two incr commands.
    let line = format!(" upgrade module {v1} -> {v2} switched hash=");
    let mut switched_at = BTreeMap::new();
    for name in group.pods.keys() {
        let logs = c.kubectl_ok(["-n", NS, "logs", name])?;
        let upgrades: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(" upgrade module "))
            .collect();
        let [upgrade] = upgrades.as_slice() else {
            bail!(
                "kubectl logs {name} shows {} upgrade lines, expected one ({v1} -> {v2}):\n{}",
                upgrades.len(),
                upgrades.join("\n")
            );
        };
        let index = upgrade
            .strip_prefix("idx=")
            .and_then(|rest| rest.split_once(&line))
            .and_then(|(idx, _)| idx.parse::<u64>().ok())
            .with_context(|| format!("kubectl logs {name}: {upgrade:?} is not `idx=N{line}...`"))?;
        switched_at.insert(name.clone(), index);
    }
    let first = *switched_at.values().next().context("no kv pod")?;
    ensure!(
        switched_at.values().all(|i| *i == first),
        "the pods switched at different indexes: {switched_at:?}"
    );
    ensure!(
        incr_before < first && first < incr_after,
        "the upgrade entry ({first}) is not between the incr commands ({incr_before}, {incr_after})"
    );
    Ok(group)
}

/// Denials, warnings, dry runs and re-admission, as `kubectl` shows them.
async fn admission_as_a_user_sees_it(c: &Cluster, kv: &Group) -> anyhow::Result<()> {
    let pod = |name: &str, annotations: &str| {
        format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {NS}
  annotations:
{annotations}
spec:
  securityContext:
    runAsNonRoot: true
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: app
      image: registry.invalid/app:1
      securityContext:
        allowPrivilegeEscalation: false
        capabilities:
          drop: [\"ALL\"]
"
        )
    };
    let apply = |file: &str, yaml: &str, extra: &[&str]| -> anyhow::Result<_> {
        let path = c.path(file);
        std::fs::write(&path, yaml)?;
        let mut args = vec!["apply", "-f", file];
        args.extend(extra);
        c.kubectl(args)
    };

    // A bad value: denied with the webhook's message naming the annotation.
    let bad = apply(
        "bad-port.yaml",
        &pod(
            "bad-port",
            "    dorado.io/replicate: \"true\"\n    dorado.io/module: kv/kv.wasm\n    dorado.io/group: adhoc\n    dorado.io/port: \"99999\"",
        ),
        &[],
    )?;
    ensure!(!bad.success, "a pod with dorado.io/port 99999 was admitted");
    ensure!(
        bad.stderr
            .contains("admission webhook \"pods.dorado.io\" denied the request")
            && bad.stderr.contains("dorado.io/port"),
        "the denial does not name the webhook and the annotation: {}",
        bad.stderr
    );

    // A defaulted value: admitted with a warning that kubectl prints. Dry
    // run on the server first: the same answer, and nothing is created.
    let defaulted = pod(
        "defaulted",
        "    dorado.io/replicate: \"true\"\n    dorado.io/module: kv\n    dorado.io/group: adhoc",
    );
    let dry = apply("defaulted.yaml", &defaulted, &["--dry-run=server"])?;
    ensure!(dry.success, "dry run failed: {}", dry.stderr);
    ensure!(
        dry.stderr.contains("Warning:") && dry.stderr.contains("module.wasm"),
        "the dry run printed no defaulting warning: {}",
        dry.stderr
    );
    let exists = c.kubectl(["-n", NS, "get", "pod", "defaulted"])?;
    ensure!(
        !exists.success && exists.stderr.contains("NotFound"),
        "--dry-run=server created the pod: {}",
        exists.stdout
    );
    let real = apply("defaulted.yaml", &defaulted, &[])?;
    ensure!(
        real.success,
        "the defaulted pod was refused: {}",
        real.stderr
    );
    ensure!(
        real.stderr.contains("Warning:") && real.stderr.contains("module.wasm"),
        "kubectl printed no warning: {}",
        real.stderr
    );
    c.kubectl_ok(["-n", NS, "delete", "pod", "defaulted", "--wait=false"])?;

    // Pods that collide with what the rewrite adds: the user sees why.
    collisions(
        c,
        &dorado_e2e::repo_root().join("webhook/tests/fixtures/collisions"),
    )?;

    // Re-admission: a label change of a mutated pod does not rewrite it.
    let before = pod_field(c, "kv-1", "{.spec}")?;
    c.kubectl_ok([
        "-n",
        NS,
        "label",
        "pod",
        "kv-1",
        "e2e.dorado.io/touched=yes",
    ])?;
    let after = pod_field(c, "kv-1", "{.spec}")?;
    ensure!(before == after, "a label change rewrote the pod spec");
    let status = pod_field(c, "kv-1", "{.metadata.annotations.dorado\\.io/status}")?;
    ensure!(status == "mutated", "kv-1's dorado.io/status is {status:?}");
    converged(kv).await?;
    Ok(())
}

/// Each fixture of `webhook/tests/fixtures/collisions`, as its README's
/// table promises: a denied pod is refused by the API server with the
/// webhook's message, an admitted one is rewritten into a pod the API server
/// validates and accepts (server-side dry run: nothing is created). In a
/// namespace of its own: the fixtures' other containers are not meant to meet
/// the restricted Pod Security level of `dorado-demo`.
fn collisions(c: &Cluster, dir: &std::path::Path) -> anyhow::Result<()> {
    c.kubectl_ok(["create", "namespace", "collisions"])?;
    let readme = std::fs::read_to_string(dir.join("README.md"))?;
    let mut rows = 0;
    for line in readme.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, file, outcome, what, _] = cells.as_slice() else {
            continue;
        };
        let Some(file) = file.strip_prefix('`').and_then(|f| f.strip_suffix('`')) else {
            continue;
        };
        rows += 1;
        let path = dir.join(file).display().to_string();
        let out = c.kubectl([
            "-n",
            "collisions",
            "create",
            "--dry-run=server",
            "-f",
            &path,
        ])?;
        match *outcome {
            "denied" => {
                let message = what
                    .split('`')
                    .nth(1)
                    .with_context(|| format!("{file}: no `message` in the README row"))?;
                ensure!(
                    !out.success
                        && out.stderr.contains("denied the request")
                        && out.stderr.contains(message),
                    "{file}: expected the API server to refuse it with {message:?}; kubectl said: {}{}",
                    out.stdout,
                    out.stderr
                );
            }
            "admitted" => ensure!(
                out.success,
                "{file}: expected the API server to accept the rewritten pod; kubectl said: {}",
                out.stderr
            ),
            other => bail!("{file}: unknown outcome {other:?} in the README"),
        }
    }
    ensure!(
        rows >= 10,
        "the collision README lists only {rows} fixtures"
    );
    Ok(())
}

/// The bank state machine in a Deployment: the group defaults from the
/// ReplicaSet owner; money is conserved across a deleted pod.
async fn bank_deployment(c: &Cluster) -> anyhow::Result<()> {
    c.kubectl_ok([
        "-n",
        NS,
        "create",
        "configmap",
        "bank",
        "--from-file=bank.wasm=bank.wasm",
    ])?;
    c.kubectl_ok(["apply", "-k", "manifests/examples/bank-deployment"])?;
    c.kubectl_ok([
        "-n",
        NS,
        "rollout",
        "status",
        "deployment/bank-deployment",
        &timeout_flag(),
    ])?;
    let group = ready_group(c, "bank-deployment", 3).await?;
    let client = Client::new(&group.endpoints())?.with_deadline(Duration::from_secs(60));
    for a in 0..4 {
        let cmd = json!({"op": "open", "account": format!("a{a}"), "balance": 100});
        client
            .submit(cmd.to_string().as_bytes(), Some(("opener", a + 1)))
            .await?;
    }
    for i in 0..40u64 {
        let cmd = json!({"op": "transfer", "from": format!("a{}", i % 4), "to": format!("a{}", (i + 1) % 4), "amount": 7});
        client
            .submit(cmd.to_string().as_bytes(), Some(("mover", i + 1)))
            .await?;
    }
    let victim = group.pods.keys().next().cloned().context("no bank pod")?;
    c.kubectl_ok(["-n", NS, "delete", "pod", &victim, &timeout_flag()])?;
    let group = ready_group(c, "bank-deployment", 3).await?;
    ensure!(
        !group.pods.contains_key(&victim),
        "the ReplicaSet did not replace {victim}"
    );
    converged(&group).await?;
    for e in group.endpoints() {
        let total: Value = serde_json::from_slice(
            &Client::new(std::slice::from_ref(&e))?
                .query(br#"{"op":"total"}"#, true)
                .await?,
        )?;
        ensure!(
            total == json!({"ok": true, "total": 400, "accounts": 4}),
            "{e}: bank total {total}"
        );
    }
    Ok(())
}

/// With the webhook scaled to 0, opted-in pods are refused and plain pods
/// are still created.
async fn webhook_outage(c: &Cluster) -> anyhow::Result<()> {
    c.kubectl_ok([
        "-n",
        "dorado-system",
        "scale",
        "deploy/dorado-webhook",
        "--replicas=0",
    ])?;
    let webhooks: Api<Pod> = Api::namespaced(c.client.clone(), "dorado-system");
    wait_for("the webhook's pods to be gone", KUBECTL_WAIT, || {
        let webhooks = webhooks.clone();
        async move {
            let left = webhooks
                .list(&ListParams::default().labels("app.kubernetes.io/name=dorado-webhook"))
                .await
                .map_err(|e| e.to_string())?;
            if left.items.is_empty() {
                Ok(())
            } else {
                Err(format!("{} pods left", left.items.len()))
            }
        }
    })
    .await?;
    let opted = c.kubectl([
        "-n",
        NS,
        "run",
        "opted-in",
        "--image=registry.invalid/app:1",
        "--restart=Never",
        "--annotations=dorado.io/replicate=true",
        "--annotations=dorado.io/module=kv/kv.wasm",
        "--annotations=dorado.io/group=adhoc",
        "--overrides",
        r#"{"spec":{"securityContext":{"runAsNonRoot":true,"seccompProfile":{"type":"RuntimeDefault"}},"containers":[{"name":"opted-in","image":"registry.invalid/app:1","securityContext":{"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]}}}]}}"#,
    ])?;
    ensure!(
        !opted.success && opted.stderr.contains("pods.dorado.io"),
        "an opted-in pod was created while the webhook was down: {}{}",
        opted.stdout,
        opted.stderr
    );
    let plain = c.kubectl([
        "-n",
        NS,
        "run",
        "plain",
        "--image=registry.invalid/app:1",
        "--restart=Never",
        "--overrides",
        r#"{"spec":{"securityContext":{"runAsNonRoot":true,"seccompProfile":{"type":"RuntimeDefault"}},"containers":[{"name":"plain","image":"registry.invalid/app:1","securityContext":{"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]}}}]}}"#,
    ])?;
    ensure!(
        plain.success,
        "a plain pod was refused while the webhook was down: {}",
        plain.stderr
    );
    c.kubectl_ok([
        "-n",
        "dorado-system",
        "scale",
        "deploy/dorado-webhook",
        "--replicas=2",
    ])?;
    c.kubectl_ok([
        "-n",
        "dorado-system",
        "rollout",
        "status",
        "deploy/dorado-webhook",
        &timeout_flag(),
    ])?;
    Ok(())
}
