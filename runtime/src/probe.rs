//! Probing the leader directly, so a follower can tell a dead leader from a
//! quiet one without waiting for its lease (`dorado_core::decide::Suspicion`
//! decides what the answers mean; this only asks).
//!
//! Why a direct probe rather than heartbeats through etcd: heartbeats would
//! add writes and watch fan-out to the store that the protocol works to keep
//! small, and a paused etcd would silence them and depose healthy leaders.
//! A probe answers "is the process there?": after `kill -9` the port refuses
//! at once, so suspicion builds in milliseconds; a leader that is merely busy
//! keeps appending, and the decision counts log progress as proof of life.
//! A probe that times out is reported as such ([`ProbeOutcome::Silent`]),
//! not as a refusal: on a loaded machine an idle leader can be slow to
//! answer, and the decision gives silence a longer window.

use std::fmt::Debug;
use std::time::Duration;

use dorado_core::LeaderRecord;
use dorado_core::decide::ProbeOutcome;
use futures::future::BoxFuture;

/// Asks whether a leader's process answers. Implementations bound their own
/// time and must tell a refusal ([`ProbeOutcome::Down`]: nothing listens, or
/// the process says it is unhealthy) from no answer within the timeout
/// ([`ProbeOutcome::Silent`]); the suspicion rule trusts the first far more.
pub trait LeaderProbe: Debug + Send + Sync + 'static {
    /// What probing `leader` found.
    fn probe(&self, leader: &LeaderRecord) -> BoxFuture<'static, ProbeOutcome>;
}

/// `GET http://<address>/healthz` with a short timeout.
#[derive(Debug, Clone)]
pub struct HttpProbe {
    http: reqwest::Client,
}

impl HttpProbe {
    /// Each probe gets `timeout` for connect and answer together.
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        // Plain HTTP only: a default client loads the platform's CA roots
        // and fails in the runtime image, which has none (found by the
        // control-plane test: every replica exited at startup).
        let http = crate::replica_http(timeout).no_proxy().build()?;
        Ok(HttpProbe { http })
    }
}

impl LeaderProbe for HttpProbe {
    fn probe(&self, leader: &LeaderRecord) -> BoxFuture<'static, ProbeOutcome> {
        let request = self.http.get(format!("http://{}/healthz", leader.address));
        Box::pin(async move {
            match request.send().await {
                Ok(r) if r.status().is_success() => ProbeOutcome::Alive,
                Ok(r) => {
                    tracing::debug!(status = %r.status(), "the leader says it is unhealthy");
                    ProbeOutcome::Down
                }
                Err(e) if e.is_timeout() => {
                    tracing::debug!(error = %e, "leader probe timed out");
                    ProbeOutcome::Silent
                }
                Err(e) => {
                    tracing::debug!(error = %e, "leader probe failed");
                    ProbeOutcome::Down
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(address: String) -> LeaderRecord {
        LeaderRecord {
            replica: "r".into(),
            address,
        }
    }

    #[tokio::test]
    async fn a_listening_api_answers_and_a_closed_port_does_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok\n" }));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let probe = HttpProbe::new(Duration::from_millis(500)).unwrap();
        assert_eq!(
            probe.probe(&record(addr.to_string())).await,
            ProbeOutcome::Alive
        );
        server.abort();
        let _ = server.await;
        // The port is closed now: refused.
        assert_eq!(
            probe.probe(&record(addr.to_string())).await,
            ProbeOutcome::Down
        );
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        // Accepts connections but never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let probe = HttpProbe::new(Duration::from_millis(100)).unwrap();
        assert_eq!(
            probe.probe(&record(addr.to_string())).await,
            ProbeOutcome::Silent
        );
        drop(listener);
    }
}
