//! Closed-loop writers that survive a failover: the clients of the failover
//! and recovery measurements.
//!
//! Unlike the throughput driver (which counts a failed operation and moves
//! on), a writer behaves like a careful application: a write that fails or
//! times out is retried *with the same client id and seq* (exactly-once makes
//! that safe) on the next replica of the group, after a short pause, until it
//! is acknowledged. Clients start spread round-robin over all replicas
//! (followers forward to the leader), so after the leader dies every client
//! finds a live replica within one retry or two. Every acknowledgement can be
//! recorded with the instant its request was sent and the instant the answer
//! arrived, which is what write unavailability is computed from.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::http1;
use dorado::api::{CLIENT_ID, SEQ};

/// One acknowledged write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ack {
    /// When the (last attempt of the) request was sent.
    pub sent: Instant,
    /// When its 200 answer arrived.
    pub acked: Instant,
}

/// How the writers run.
#[derive(Debug, Clone)]
pub(crate) struct WriterConfig {
    /// Every replica of the group.
    pub targets: Vec<SocketAddr>,
    /// Every client starts at this target (`None`: spread round-robin).
    pub start_at: Option<usize>,
    /// Closed-loop clients.
    pub clients: usize,
    /// Client ids are this prefix plus `-<n>`.
    pub client_prefix: String,
    /// Put commands, one per key.
    pub commands: Arc<Vec<Bytes>>,
    /// Stop after this many acknowledged writes in total (`None`: until stopped).
    pub limit: Option<u64>,
    /// Record every acknowledgement (failover) or only count them (loading).
    pub record: bool,
    /// Pause before retrying a failed write.
    pub retry_pause: Duration,
    /// Bound on one request.
    pub request_timeout: Duration,
}

/// Shared state of a set of running writers.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    stop: AtomicBool,
    /// Tickets handed out (writes started, limited mode).
    started: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    last_ack: Mutex<Option<Instant>>,
    first_error: Mutex<Option<String>>,
    acks: Mutex<Vec<Ack>>,
    notify: Notify,
}

/// Running writers.
#[derive(Debug)]
pub(crate) struct Writers {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

/// What the writers did.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    pub acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Every acknowledgement, by time of arrival (when recording).
    pub acks: Vec<Ack>,
}

impl Writers {
    /// Start the writers.
    pub(crate) fn start(config: WriterConfig) -> Self {
        let shared = Arc::new(Shared::default());
        let config = Arc::new(config);
        let mut tasks = JoinSet::new();
        for index in 0..config.clients {
            let shared = shared.clone();
            let config = config.clone();
            tasks.spawn(client(index, config, shared));
        }
        Writers { shared, tasks }
    }

    /// Acknowledged writes so far.
    pub(crate) fn acked(&self) -> u64 {
        self.shared.acked.load(Ordering::Acquire)
    }

    /// Failed attempts so far.
    pub(crate) fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Acquire)
    }

    /// When the last write was acknowledged.
    pub(crate) fn last_ack(&self) -> Option<Instant> {
        *self
            .shared
            .last_ack
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The first error any writer saw.
    pub(crate) fn first_error(&self) -> Option<String> {
        self.shared
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Wait (at most `timeout`) for the first acknowledgement of a write
    /// whose request was sent at or after `since`; returns it.
    pub(crate) async fn first_ack_sent_after(
        &self,
        since: Instant,
        timeout: Duration,
    ) -> Option<Ack> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            let found = self
                .shared
                .acks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .rev()
                .take_while(|a| a.acked >= since)
                .filter(|a| a.sent >= since)
                .min_by_key(|a| a.acked)
                .copied();
            if found.is_some() {
                return found;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Wait until the writers end by themselves (limit reached), at most `timeout`.
    pub(crate) async fn join(&mut self, timeout: Duration) -> bool {
        let joined = async { while self.tasks.join_next().await.is_some() {} };
        tokio::time::timeout(timeout, joined).await.is_ok()
    }

    /// Stop every writer (bounded: an attempt in flight is abandoned) and
    /// return what they did.
    pub(crate) async fn stop(mut self) -> WriterStats {
        self.shared.stop.store(true, Ordering::Release);
        // A writer finishes its attempt in flight; give it a moment, then cut it off.
        let _ = self.join(Duration::from_secs(2)).await;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let mut acks =
            std::mem::take(&mut *self.shared.acks.lock().unwrap_or_else(|p| p.into_inner()));
        acks.sort_by_key(|a| a.acked);
        WriterStats {
            acked: self.acked(),
            errors: self.errors(),
            first_error: self.first_error(),
            acks,
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.tasks.abort_all();
    }
}

async fn client(index: usize, config: Arc<WriterConfig>, shared: Arc<Shared>) {
    let n = config.targets.len().max(1);
    let mut target = config.start_at.unwrap_or(index) % n;
    let mut conn = http1::Conn::new(config.targets[target]);
    let id = format!("{}-{index}", config.client_prefix);
    let mut rng = SmallRng::seed_from_u64(0xfa11_0000 + index as u64);
    let keys = config.commands.len().max(1);
    let mut seq = 0u64;
    'writes: while !shared.stop.load(Ordering::Acquire) {
        if let Some(limit) = config.limit
            && shared.started.fetch_add(1, Ordering::AcqRel) >= limit
        {
            break;
        }
        seq += 1;
        let seq_text = seq.to_string();
        let body = config.commands[rng.random_range(0..keys)].clone();
        loop {
            if shared.stop.load(Ordering::Acquire) {
                break 'writes;
            }
            let headers = [(CLIENT_ID, id.as_str()), (SEQ, seq_text.as_str())];
            let sent = Instant::now();
            let outcome = tokio::time::timeout(
                config.request_timeout,
                conn.post("/v1/commands", &headers, &body),
            )
            .await;
            let error = match outcome {
                Ok(Ok(r)) if r.status == 200 => {
                    let acked = Instant::now();
                    shared.acked.fetch_add(1, Ordering::AcqRel);
                    *shared.last_ack.lock().unwrap_or_else(|p| p.into_inner()) = Some(acked);
                    if config.record {
                        shared
                            .acks
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Ack { sent, acked });
                        shared.notify.notify_waiters();
                    }
                    continue 'writes;
                }
                Ok(Ok(r)) => {
                    let text = String::from_utf8_lossy(&r.body);
                    format!(
                        "HTTP {} from {}: {}",
                        r.status,
                        config.targets[target],
                        text.chars().take(200).collect::<String>()
                    )
                }
                Ok(Err(e)) => e,
                Err(_) => format!(
                    "no reply from {} within {:?}",
                    config.targets[target], config.request_timeout
                ),
            };
            shared.errors.fetch_add(1, Ordering::AcqRel);
            shared
                .first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(error);
            // Try the next replica, on a fresh connection.
            target = (target + 1) % n;
            conn = http1::Conn::new(config.targets[target]);
            tokio::time::sleep(config.retry_pause).await;
        }
    }
}
