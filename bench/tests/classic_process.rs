//! `dorado-bench run --protocol classic`: three replica processes of the
//! paper's scheme against a real etcd, one of them killed.

use std::time::Duration;

use dorado_testkit::cluster::{Cluster, kv_put, submit_retrying};
use dorado_testkit::etcd_process::EtcdProcess;

const BIN: &str = env!("CARGO_BIN_EXE_dorado-bench");

async fn etcd() -> EtcdProcess {
    EtcdProcess::start().await.expect("start etcd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_protocol_classic_orders_commands_and_survives_a_killed_replica() {
    let etcd = etcd().await;
    let mut c = Cluster::new(BIN, etcd.client_urls(), dorado_testkit::examples::KV, 3, 0);
    for r in &mut c.replicas {
        r.extra = vec![
            "--protocol".into(),
            "classic".into(),
            "--replicas".into(),
            "3".into(),
        ];
    }
    c.start_all();
    c.wait_all_ready().await;
    let urls = c.urls();
    for seq in 1..=30u64 {
        let r = submit_retrying(
            &urls,
            &kv_put(&format!("k{seq}"), "v"),
            "classic",
            seq,
            Duration::from_secs(20),
        )
        .await
        .unwrap_or_else(|| panic!("classic write {seq} got no answer"));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    c.wait_converged(Duration::from_secs(20)).await;
    let s = c.status(0).await.expect("status");
    assert_eq!(s.protocol, dorado_bench::Protocol::Classic);
    // Kill whichever replica reports itself leader (or the first): the rest continue.
    let victim = c.leader().await.unwrap_or(0);
    c.replicas[victim].kill();
    let alive: Vec<String> = (0..3)
        .filter(|i| *i != victim)
        .map(|i| c.replicas[i].url())
        .collect();
    for seq in 31..=40u64 {
        let r = submit_retrying(
            &alive,
            &kv_put(&format!("k{seq}"), "v"),
            "classic",
            seq,
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|| panic!("classic write {seq} after the crash got no answer"));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    c.wait_converged(Duration::from_secs(20)).await;
}
