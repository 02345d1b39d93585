//! The pipelined client (HTTP/2, many commands in flight on one connection),
//! the batching client (many commands per request) and followers' batched
//! forwarding, against three real `dorado run` replicas of the `kv` example
//! on a real etcd.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dorado::client::{Client, ClientError};
use dorado_testkit::cluster::Cluster;
use dorado_testkit::etcd_process::EtcdProcess;
use tokio::net::{TcpListener, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_dorado");

/// Commands sent at once.
const IN_FLIGHT: usize = 1000;

/// A TCP proxy to `target` that counts the connections made through it.
async fn counting_proxy(target: SocketAddr) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr.to_string(), count)
}

async fn group() -> (EtcdProcess, Cluster, usize) {
    let etcd = EtcdProcess::start().await.expect("start etcd");
    let mut c = Cluster::new(BIN, etcd.client_urls(), dorado_testkit::examples::KV, 3, 0);
    c.start_all();
    c.wait_all_ready().await;
    let leader = c.wait_leader().await;
    (etcd, c, leader)
}

fn put(key: &str, value: &str) -> Vec<u8> {
    format!(r#"{{"op":"put","key":"{key}","value":"{value}"}}"#).into_bytes()
}

/// A cas that cannot match: the kv module answers with the key's current
/// value, so the reply names the command it answers.
fn failing_cas(key: &str) -> Vec<u8> {
    format!(r#"{{"op":"cas","key":"{key}","expected":"never","value":"x"}}"#).into_bytes()
}

/// Send `IN_FLIGHT` commands at once through one pipelined client; every
/// reply must be the one for its command.
async fn thousand_in_flight(client: &Client, tag_prefix: &str) {
    let mut tasks = Vec::new();
    for i in 0..IN_FLIGHT {
        let client = client.clone();
        let id = format!("{tag_prefix}-{i}");
        tasks.push(tokio::spawn(async move {
            let r = client
                .submit(&put(&format!("k{i}"), &format!("v{i}")), Some((&id, 1)))
                .await
                .unwrap_or_else(|e| panic!("put {i}: {e}"));
            assert_eq!(r.body, br#"{"ok":true}"#, "put {i}");
            let index = r.index.expect("index");
            let r = client
                .submit(&failing_cas(&format!("k{i}")), Some((&id, 2)))
                .await
                .unwrap_or_else(|e| panic!("cas {i}: {e}"));
            let reply = String::from_utf8(r.body.clone()).unwrap();
            assert_eq!(
                reply,
                format!(r#"{{"ok":false,"error":"cas mismatch","current":"v{i}"}}"#),
                "command {i} got another command's reply"
            );
            assert!(r.index > Some(index), "ordered after the put");
            // A retry with the same tag is answered from the session table.
            let again = client
                .submit(&failing_cas(&format!("k{i}")), Some((&id, 2)))
                .await
                .unwrap_or_else(|e| panic!("retry {i}: {e}"));
            assert!(again.duplicate, "retry {i} not a duplicate");
            assert_eq!(again.body, r.body, "retry {i}: the original reply");
            // An older seq is rejected, for this command alone.
            match client
                .submit(&put(&format!("k{i}"), "late"), Some((&id, 1)))
                .await
            {
                Ok(r) if r.duplicate => {}
                Err(ClientError::Rejected { .. }) => {}
                other => panic!("stale seq {i}: {other:?}"),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_commands_in_flight_share_one_http2_connection() {
    let (_etcd, c, leader) = group().await;
    let target: SocketAddr = c.replicas[leader].addr().parse().unwrap();
    let (proxy, connections) = counting_proxy(target).await;
    let client = Client::pipelined(&[proxy]).unwrap();
    thousand_in_flight(&client, "pipe").await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "every command of the pipelined client went over one connection"
    );
    c.wait_converged(Duration::from_secs(20)).await;
}

/// Commands sent to a follower are forwarded to the leader in batches
/// (`dorado::forward`); each still gets its own reply, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_forwards_concurrent_commands_in_batches() {
    let (_etcd, c, leader) = group().await;
    let follower = (leader + 1) % c.replicas.len();
    let client = Client::pipelined(&[c.replicas[follower].addr()]).unwrap();
    thousand_in_flight(&client, "fwd").await;
    c.wait_converged(Duration::from_secs(20)).await;
    // The follower answered after applying each write: read it there.
    let value = client
        .query(br#"{"op":"get","key":"k7"}"#, true)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&value).contains("v7"), "{value:?}");
}

/// The batching client sends commands in batch requests: a thousand
/// concurrent commands (four each) over HTTP/1.1, where one command per
/// request would open a connection per command in flight, need only about
/// one connection per batch in flight (at most twice that: a connection goes
/// back to the pool a moment after its response was read, so the next batch
/// may open another). Each command still gets its own reply, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batching_client_carries_many_commands_per_request() {
    let (_etcd, c, leader) = group().await;
    let target: SocketAddr = c.replicas[leader].addr().parse().unwrap();
    let (proxy, connections) = counting_proxy(target).await;
    let client = Client::batched(&[proxy]).unwrap();
    thousand_in_flight(&client, "batch").await;
    let used = connections.load(Ordering::SeqCst);
    assert!(
        (1..=2 * dorado::forward::MAX_BATCHES_IN_FLIGHT).contains(&used),
        "{used} connections for {IN_FLIGHT} concurrent commands: not batched"
    );
    c.wait_converged(Duration::from_secs(20)).await;
}

/// A follower answers a client's batch `not_leader` per command, naming the
/// leader; the batching client resends each there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batching_client_sent_to_a_follower_is_redirected_to_the_leader() {
    let (_etcd, c, leader) = group().await;
    let follower = (leader + 1) % c.replicas.len();
    let client = Client::batched(&[c.replicas[follower].addr()]).unwrap();
    thousand_in_flight(&client, "redirect").await;
    let r = client.submit(&put("k1", "again"), None).await.unwrap();
    assert_eq!(
        r.endpoint,
        format!("http://{}", c.replicas[leader].addr()),
        "answered by the leader"
    );
    c.wait_converged(Duration::from_secs(20)).await;
}
