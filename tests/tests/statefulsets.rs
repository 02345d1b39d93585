//! The user's journey, end to end: `kubectl kustomize manifests/examples/…`,
//! the StatefulSet controller's pods, admission by the real webhook over TLS,
//! the mutated pods started as the kubelet would start them against a real
//! etcd, a client workload, a pod lost and recreated from the same spec.
//!
//! Needs root, podman (with runc), `kubectl` (for kustomize) and the images of
//! `scripts/images.sh` (built on first use); see the crate's README.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use dorado::client::Client;
use dorado::wire::Status;
use dorado_e2e::manifests::statefulset_pod;
use dorado_e2e::{Env, Rendered, RunningPod, typed_pod, wait_for};
use dorado_testkit::examples::Reply;
use k8s_openapi::api::apps::v1::StatefulSet;
use serde_json::{Value, json};

/// Startup of a debug-built replica on a loaded 2-core machine.
const READY: Duration = Duration::from_secs(90);
const CONVERGE: Duration = Duration::from_secs(60);

/// Render `example`, admit its 3 pods and start them; returns the StatefulSet.
async fn deploy(
    env: &mut Env,
    example: &str,
    module: &[u8],
) -> anyhow::Result<(StatefulSet, Vec<RunningPod>)> {
    let rendered = Rendered::example(example, module)?;
    env.kubelet.add_config_maps(rendered.typed("ConfigMap")?);
    let sts: StatefulSet = rendered.get("StatefulSet", example)?;
    let replicas = sts
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .context("spec.replicas")?;
    assert_eq!(replicas, 3, "the example runs three replicas");
    let mut pods = Vec::new();
    for ordinal in 0..3 {
        pods.push(create_pod(env, &sts, ordinal).await?);
    }
    for pod in &mut pods {
        pod.wait_ready(READY).await?;
    }
    Ok((sts, pods))
}

/// What happens when the StatefulSet controller creates pod `ordinal`:
/// admission, then the kubelet starts it (in the network slot of its ordinal).
async fn create_pod(env: &mut Env, sts: &StatefulSet, ordinal: u32) -> anyhow::Result<RunningPod> {
    let pod = statefulset_pod(sts, ordinal)?;
    let admitted = env.webhook.admit(&serde_json::to_value(&pod)?).await?;
    if !admitted.allowed {
        bail!(
            "the webhook denied {:?}: {:?}",
            pod.metadata.name,
            admitted.message
        );
    }
    assert!(admitted.patched, "an opted-in pod must be patched");
    assert!(
        admitted.warnings.is_empty(),
        "the example's pods need no defaulting warnings: {:?}",
        admitted.warnings
    );
    env.kubelet
        .run(&typed_pod(&admitted.pod)?, ordinal as usize)
}

fn endpoints(pods: &[RunningPod]) -> anyhow::Result<Vec<String>> {
    pods.iter().map(|p| Ok(p.url(p.port()?))).collect()
}

async fn status(pod: &RunningPod) -> Result<Status, String> {
    Client::new(&[pod.url(pod.port().map_err(|e| e.to_string())?)])
        .map_err(|e| e.to_string())?
        .with_deadline(Duration::from_secs(2))
        .status()
        .await
        .map_err(|e| e.to_string())
}

/// Wait until every pod has applied the same index as the group's commit
/// index with the same hash; returns (index, hash).
async fn converged(pods: &[RunningPod]) -> anyhow::Result<(u64, String)> {
    wait_for("all replicas to agree", CONVERGE, || async {
        let mut seen = Vec::new();
        for p in pods {
            let s = status(p).await.map_err(|e| format!("{}: {e}", p.name))?;
            seen.push((p.name.clone(), s.applied_index, s.commit_index, s.hash));
        }
        let commit = seen.iter().map(|s| s.2).max().unwrap_or(0);
        let first = &seen[0];
        if commit > 0 && seen.iter().all(|s| s.1 == commit && s.3 == first.3) {
            Ok((commit, first.3.clone()))
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await
}

async fn leader(pods: &[RunningPod]) -> anyhow::Result<usize> {
    wait_for("a leader", CONVERGE, || async {
        for (i, p) in pods.iter().enumerate() {
            if let Ok(s) = status(p).await
                && s.is_leader()
            {
                return Ok(i);
            }
        }
        Err("no pod reports role leader".to_string())
    })
    .await
}

/// The recreated pod's stdout (what `kubectl logs` shows) must be a replay
/// trace: contiguous entry lines ending at `index` with the group's hash.
fn check_trace(pod: &RunningPod, index: u64, hash: &str) -> anyhow::Result<()> {
    let out = pod.logs(false);
    let entries: Vec<_> = out
        .lines()
        .filter_map(dorado::trace::parse_trace_line)
        .collect();
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        bail!("{}: stdout has no trace lines:\n{out}", pod.name);
    };
    // A batch is one log entry: its commands share the index (`idx=12.0`,
    // `idx=12.1`, ...), so consecutive lines stay at an index or go one up.
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index && pair[1].index != pair[0].index + 1 {
            bail!(
                "{}: trace jumps from {} to {}",
                pod.name,
                pair[0].index,
                pair[1].index
            );
        }
    }
    if last.index != index || !hash.starts_with(&last.hash) {
        bail!(
            "{}: trace ends at idx {} hash {}, the group is at {index} {hash}",
            pod.name,
            last.index,
            last.hash
        );
    }
    if first.index > 1 && !out.contains("restored snapshot") {
        bail!(
            "{}: trace starts at {} without a restored snapshot",
            pod.name,
            first.index
        );
    }
    Ok(())
}

async fn query_all(pods: &[RunningPod], q: Value) -> anyhow::Result<Vec<Reply>> {
    let mut out = Vec::new();
    for p in pods {
        let c = Client::new(&[p.url(p.port()?)])?;
        let body = c.query(q.to_string().as_bytes(), true).await?;
        out.push(Reply::parse(&body).with_context(|| format!("{}: reply is not JSON", p.name))?);
    }
    Ok(out)
}

async fn kv_puts(client: &Client, id: &str, range: std::ops::Range<u64>) -> anyhow::Result<()> {
    for i in range {
        let cmd = json!({"op": "put", "key": format!("{id}-{i}"), "value": format!("v{i}")});
        let reply = client
            .submit(cmd.to_string().as_bytes(), Some((id, i + 1)))
            .await?;
        let v = Reply::parse(&reply.body)?;
        if !v.ok {
            bail!("put {id}-{i} answered {v:?}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_statefulset_survives_the_loss_of_its_leader_pod() -> anyhow::Result<()> {
    let mut env = Env::start().await?;
    let (sts, mut pods) = deploy(&mut env, "kv", dorado_testkit::examples::KV).await?;
    let client = Client::new(&endpoints(&pods)?)?.with_deadline(Duration::from_secs(30));

    // Three writers, each through the Service (any pod; followers forward).
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move { kv_puts(&client, &format!("w{w}"), 0..40).await })
        })
        .collect();
    for w in writers {
        w.await??;
    }

    // Delete the leader's pod: SIGKILL, and everything it had on the node is gone.
    let lost = leader(&pods).await?;
    let ordinal = lost as u32;
    pods.remove(lost).delete_now()?;
    // Writes go on while it is gone (the survivors elect a new leader).
    kv_puts(&client, "w3", 0..30).await?;

    // The StatefulSet controller recreates it from the same template.
    let mut recreated = create_pod(&mut env, &sts, ordinal).await?;
    recreated.wait_ready(READY).await?;
    pods.insert(lost, recreated);
    kv_puts(&client, "w4", 0..10).await?;

    let (index, hash) = converged(&pods).await?;
    check_trace(&pods[lost], index, &hash)?;

    let lens = query_all(&pods, json!({"op": "len"})).await?;
    for (p, len) in pods.iter().zip(&lens) {
        assert_eq!(len.len, Some(3 * 40 + 30 + 10), "{}: {len:?}", p.name);
    }
    for key in ["w0-0", "w2-39", "w3-29", "w4-9"] {
        let got = query_all(&pods, json!({"op": "get", "key": key})).await?;
        assert!(
            got.iter().all(|g| *g == got[0]),
            "replicas disagree on {key}: {got:?}"
        );
        assert!(got[0].ok, "{key}: {:?}", got[0]);
    }
    // The runtime saw the pod's identity through the downward API.
    let s = status(&pods[lost]).await.map_err(anyhow::Error::msg)?;
    assert_eq!(s.replica, format!("kv-{ordinal}"));
    assert_eq!(s.group, "kv");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_statefulset_conserves_money_across_a_recreated_pod() -> anyhow::Result<()> {
    const ACCOUNTS: u64 = 5;
    const BALANCE: u64 = 1000;
    let mut env = Env::start().await?;
    let (sts, mut pods) = deploy(&mut env, "bank", dorado_testkit::examples::BANK).await?;
    let client = Client::new(&endpoints(&pods)?)?.with_deadline(Duration::from_secs(30));
    for a in 0..ACCOUNTS {
        let cmd = json!({"op": "open", "account": format!("a{a}"), "balance": BALANCE});
        let r = client
            .submit(cmd.to_string().as_bytes(), Some(("opener", a + 1)))
            .await?;
        let v = Reply::parse(&r.body)?;
        assert!(v.ok, "open a{a}: {v:?}");
    }

    let transfers = |t: u64, range: std::ops::Range<u64>| {
        let client = client.clone();
        tokio::spawn(async move {
            let id = format!("teller{t}");
            for i in range {
                // Deterministic but varied: some transfers overdraw and are refused.
                let from = (t + i) % ACCOUNTS;
                let to = (t + 2 * i + 1) % ACCOUNTS;
                let amount = (i * 137 + t * 71) % 700 + 1;
                let cmd = json!({"op": "transfer", "from": format!("a{from}"), "to": format!("a{to}"), "amount": amount});
                client
                    .submit(cmd.to_string().as_bytes(), Some((&id, i + 1)))
                    .await?;
            }
            anyhow::Ok(())
        })
    };
    let first: Vec<_> = (0..4).map(|t| transfers(t, 0..25)).collect();
    // Lose a follower pod while the tellers are busy, and recreate it.
    let lead = leader(&pods).await?;
    let lost = (lead + 1) % pods.len();
    pods.remove(lost).delete_now()?;
    let mut recreated = create_pod(&mut env, &sts, lost as u32).await?;
    recreated.wait_ready(READY).await?;
    pods.insert(lost, recreated);
    for t in first {
        t.await??;
    }
    let second: Vec<_> = (0..4).map(|t| transfers(t, 25..40)).collect();
    for t in second {
        t.await??;
    }

    let (index, hash) = converged(&pods).await?;
    check_trace(&pods[lost], index, &hash)?;
    for (p, total) in pods
        .iter()
        .zip(query_all(&pods, json!({"op": "total"})).await?)
    {
        assert_eq!(
            total.total,
            Some(ACCOUNTS * BALANCE),
            "{}: money not conserved: {total:?}",
            p.name
        );
        assert_eq!(total.accounts, Some(ACCOUNTS), "{}: {total:?}", p.name);
    }
    let mut balances: BTreeMap<u64, Vec<Reply>> = BTreeMap::new();
    for a in 0..ACCOUNTS {
        let got = query_all(&pods, json!({"op": "balance", "account": format!("a{a}")})).await?;
        for g in &got {
            assert!(g.balance.is_some_and(|b| b >= 0), "a{a}: {g:?}");
        }
        assert!(
            got.iter().all(|g| *g == got[0]),
            "replicas disagree on a{a}: {got:?}"
        );
        balances.insert(a, got);
    }
    let sum: i64 = balances.values().map(|g| g[0].balance.unwrap_or(0)).sum();
    assert_eq!(sum, (ACCOUNTS * BALANCE) as i64);
    Ok(())
}

/// The harness is not lenient: a pod the webhook did not patch (or patched
/// badly) does not become a working replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_without_a_correct_patch_fail_to_start() -> anyhow::Result<()> {
    let mut env = Env::start().await?;
    let rendered = Rendered::example("kv", dorado_testkit::examples::KV)?;
    env.kubelet.add_config_maps(rendered.typed("ConfigMap")?);
    let sts: StatefulSet = rendered.get("StatefulSet", "kv")?;

    // 1. The template as written: the image's `dorado run` without
    // configuration. Without a readiness probe the kubelet calls it ready at
    // start, so what matters is that it crashes (CrashLoopBackOff).
    let mut pod = statefulset_pod(&sts, 0)?;
    // The template's image (dorado/dorado) is a registry name: not on this node.
    let err = env
        .kubelet
        .run(&pod, 0)
        .expect_err("the template's registry image is not on the node");
    let msg = format!("{err:#}");
    assert!(msg.contains("ErrImageNeverPull"), "{msg}");
    // With the image the node has (what a kustomize `images:` override gives).
    let spec = pod.spec.as_mut().context("pod spec")?;
    spec.containers[0].image = Some(env.images.runtime.clone());
    let unpatched = env.kubelet.run(&pod, 0)?;
    let (container, exit) = wait_for("the unpatched pod's container to exit", READY, || {
        let exited = unpatched.exited();
        async move { exited.ok_or_else(|| "still running".to_string()) }
    })
    .await?;
    assert_eq!(container, "kv");
    assert_ne!(exit.exit_code, 0, "{exit:?}");
    let stderr = unpatched.logs(true);
    assert!(
        stderr.contains("--group"),
        "the runtime names what is missing: {stderr}"
    );
    // restartPolicy Always: the kubelet starts it again (and it crashes again).
    wait_for("the unpatched container's restart", READY, || {
        let restarts = unpatched.restart_count("kv");
        async move {
            match restarts {
                Some(n) if n >= 1 => Ok(()),
                other => Err(format!("restart count {other:?}")),
            }
        }
    })
    .await?;
    drop(unpatched);

    // 2. A patch that forgets the module volume mount: the runtime cannot load it.
    let pod = serde_json::to_value(statefulset_pod(&sts, 1)?)?;
    let mut admitted = typed_pod(&env.webhook.admit(&pod).await?.pod)?;
    let mounts = admitted
        .spec
        .as_mut()
        .and_then(|s| s.containers.first_mut())
        .and_then(|c| c.volume_mounts.as_mut())
        .context("the mutated pod mounts volumes")?;
    let before = mounts.len();
    mounts.retain(|m| m.mount_path != "/etc/dorado/module");
    assert_eq!(
        mounts.len() + 1,
        before,
        "the module is mounted at /etc/dorado/module"
    );
    let mut broken = env.kubelet.run(&admitted, 1)?;
    let err = broken
        .wait_ready(READY)
        .await
        .expect_err("a pod without its module must not become ready");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("/etc/dorado/module/kv.wasm"),
        "the error names the module path: {msg}"
    );
    Ok(())
}
