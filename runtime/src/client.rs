//! A client of the replica API with the retry rules that keep exactly-once.
//!
//! The only safe retry of a write whose outcome is unknown is the *same*
//! command with the *same* client id and seq: the group's session table then
//! answers with the original reply instead of applying it again. So this
//! client retries (another endpoint, or the leader named in `dorado-leader`)
//! only when that holds or when the server said the command was never ordered.
//!
//! Three transports, the same API and retry rules:
//! - [`Client::new`]: HTTP/1.1, one request per connection at a time (a
//!   connection pool; concurrent requests open more connections);
//! - [`Client::pipelined`]: HTTP/2 with prior knowledge (h2c) on the same
//!   client port. Every concurrent request of every clone of the client is
//!   one stream of a single connection per replica, and HTTP/2 matches each
//!   response to its request by stream id: many commands in flight on one
//!   connection. The replica's server speaks both on the same port.
//! - [`Client::batched`]: commands submitted concurrently leave together as
//!   one batch request (`POST /v1/forward`, the framing followers forward
//!   with) and come back as one response, each answer matched to its command
//!   by position. One request per batch instead of one per command is what
//!   makes it the cheapest for client and replica alike
//!   (docs/benchmarks.md §9).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dorado_core::ClientTag;

use crate::api::{CLIENT_ID, DUPLICATE, INDEX, LEADER, SEQ};
use crate::forward::{ForwardCommand, Forwarded, Forwarder};
use crate::wire::{ErrorBody, ErrorCode, Status};

/// A successful command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The state machine's reply bytes.
    pub body: Vec<u8>,
    /// Log index that ordered it.
    pub index: Option<u64>,
    /// True when the group answered from its session table (a retry).
    pub duplicate: bool,
    /// The endpoint that answered.
    pub endpoint: String,
}

/// Why a request failed for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The state machine rejected the command deterministically (it *was* ordered).
    #[error("rejected: {message}")]
    Rejected {
        /// Log index that ordered it.
        index: Option<u64>,
        /// The rejection reason.
        message: String,
    },
    /// The server refused the request (bad input, not found, too large), or
    /// (from [`fetch_status`]) answered with an error.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable error code ([`ErrorCode::Unknown`] if the body was not
        /// Dorado's error JSON).
        code: ErrorCode,
        /// Human message.
        message: String,
    },
    /// A request got no answer: connection refused, timed out, cut off.
    #[error("{url}: {message}")]
    Transport {
        /// The URL requested.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// An answer was not what the API sends (e.g. a status that is not a
    /// [`Status`]).
    #[error("{url}: unexpected answer: {message}")]
    Decode {
        /// The URL requested.
        url: String,
        /// Why it could not be read.
        message: String,
    },
    /// No endpoint gave a definitive answer before the deadline.
    #[error("no replica answered within {deadline:?}; last error: {last}")]
    Exhausted {
        /// The deadline.
        deadline: Duration,
        /// The last problem seen.
        last: String,
    },
    /// An endpoint is not a usable URL.
    #[error("bad endpoint {0:?}: expected host:port or http://host:port")]
    BadEndpoint(String),
}

/// Retrying client for one group.
#[derive(Debug, Clone)]
pub struct Client {
    endpoints: Vec<String>,
    http: reqwest::Client,
    /// Set by [`Client::batched`]: commands travel in batches.
    batch: Option<Arc<Forwarder>>,
    deadline: Duration,
}

/// The HTTP client of [`Client::pipelined`]: HTTP/2 with prior knowledge
/// (h2c), so every request to one replica is a stream of one connection.
/// Clones share the connections.
pub fn pipelined_http() -> Result<reqwest::Client, reqwest::Error> {
    crate::ensure_crypto_provider();
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .tcp_nodelay(true)
        // Keep the one connection per replica open while idle.
        .pool_idle_timeout(None)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .http2_keep_alive_timeout(Duration::from_secs(5))
        .http2_adaptive_window(true)
        .timeout(Duration::from_secs(12))
        .connect_timeout(Duration::from_secs(2))
        .build()
}

/// Normalise `host:port` to `http://host:port`.
pub fn endpoint_url(e: &str) -> Result<String, ClientError> {
    let e = e.trim().trim_end_matches('/');
    if e.is_empty() || e.contains(char::is_whitespace) {
        return Err(ClientError::BadEndpoint(e.to_string()));
    }
    if e.starts_with("http://") || e.starts_with("https://") {
        Ok(e.to_string())
    } else {
        Ok(format!("http://{e}"))
    }
}

enum Attempt<T> {
    Done(Result<T, ClientError>),
    Retry { leader: Option<String>, why: String },
}

/// A replica's answer to one command, whichever transport carried it.
struct Answer {
    status: u16,
    index: Option<u64>,
    duplicate: bool,
    leader: Option<String>,
    body: Vec<u8>,
}

/// A command that got no answer; `sent` unless it certainly never left.
struct Lost {
    sent: bool,
    message: String,
}

/// The `dorado-forwarded` value of a batching client's requests.
const BATCH_SENDER: &str = "client";

impl Client {
    /// A client for these replica endpoints (comma-separated lists are split).
    pub fn new(endpoints: &[String]) -> Result<Self, ClientError> {
        let endpoints = endpoints
            .iter()
            .flat_map(|e| e.split(','))
            .filter(|e| !e.trim().is_empty())
            .map(endpoint_url)
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(ClientError::BadEndpoint(String::new()));
        }
        crate::ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(12))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| ClientError::BadEndpoint(e.to_string()))?;
        Ok(Client {
            endpoints,
            http,
            batch: None,
            deadline: Duration::from_secs(20),
        })
    }

    /// Like [`Client::new`], but over HTTP/2 (h2c, prior knowledge): all
    /// concurrent requests of this client and its clones to one replica are
    /// multiplexed over one connection ([`pipelined_http`]). Use one client
    /// (cloned) for many concurrent commands; each keeps its own exactly-once
    /// tag and gets its own reply.
    pub fn pipelined(endpoints: &[String]) -> Result<Self, ClientError> {
        let mut client = Self::new(endpoints)?;
        client.http = pipelined_http().map_err(|e| ClientError::BadEndpoint(e.to_string()))?;
        Ok(client)
    }

    /// Like [`Client::new`], but commands travel in batches: every command
    /// submitted while earlier ones are on their way, by this client and its
    /// clones, leaves in one `POST /v1/forward` request (the framing
    /// followers forward with, [`crate::forward`]), with at most
    /// [`crate::forward::MAX_BATCHES_IN_FLIGHT`] batches in flight. Each
    /// command keeps its exactly-once tag and gets its own answer, matched
    /// by its position in the batch, and the retry rules are those of a
    /// command sent alone. A replica that answers `not_leader` names the
    /// leader, and the command is resent there. The cheapest transport for
    /// many concurrent commands: one request and one response carry them
    /// all. Queries go one by one, as with [`Client::new`].
    pub fn batched(endpoints: &[String]) -> Result<Self, ClientError> {
        let mut client = Self::new(endpoints)?;
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(12))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| ClientError::BadEndpoint(e.to_string()))?;
        client.batch = Some(Arc::new(Forwarder::new(http)));
        Ok(client)
    }

    /// Give up after this long (default 20 s).
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    async fn with_retries<T, F, Fut>(&self, mut once: F) -> Result<T, ClientError>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let start = Instant::now();
        let mut next = 0usize;
        let mut hint: Option<String> = None;
        let mut last = String::from("no attempt made");
        let mut attempt = 0u32;
        while start.elapsed() < self.deadline {
            let url = match hint.take() {
                Some(h) => endpoint_url(&h)?,
                None => {
                    let u = self.endpoints[next % self.endpoints.len()].clone();
                    next += 1;
                    u
                }
            };
            match once(url.clone()).await {
                Attempt::Done(r) => return r,
                Attempt::Retry { leader, why } => {
                    last = format!("{url}: {why}");
                    hint = leader;
                    if hint.is_none() {
                        tokio::time::sleep(Duration::from_millis(
                            (25u64 << attempt.min(4)).min(400),
                        ))
                        .await;
                        attempt += 1;
                    }
                }
            }
        }
        Err(ClientError::Exhausted {
            deadline: self.deadline,
            last,
        })
    }

    /// Submit a command. With `tag = Some((client_id, seq))` every retry is
    /// exactly-once; without it, a command whose outcome is unknown is not retried.
    pub async fn submit(
        &self,
        command: &[u8],
        tag: Option<(&str, u64)>,
    ) -> Result<Reply, ClientError> {
        self.with_retries(|base| async move {
            let answer = match &self.batch {
                Some(forwarder) => {
                    let batched = ForwardCommand {
                        client: tag.map(|(id, seq)| ClientTag { id: id.into(), seq }),
                        payload: Bytes::copy_from_slice(command),
                    };
                    match forwarder.forward(BATCH_SENDER, &base, batched).await {
                        Forwarded::Reply(r) => Ok(Answer {
                            status: r.status,
                            index: r.index,
                            duplicate: r.duplicate,
                            leader: r.leader,
                            body: r.body.to_vec(),
                        }),
                        // 503: the batch was never sent.
                        Forwarded::Unreachable { status, message } => Err(Lost {
                            sent: status != 503,
                            message,
                        }),
                        // A replica that predates batches: this command alone.
                        Forwarded::Fallback => self.post_command(&base, command, tag).await,
                    }
                }
                None => self.post_command(&base, command, tag).await,
            };
            let answer = match answer {
                Ok(a) => a,
                Err(lost) if tag.is_some() || !lost.sent => {
                    return Attempt::Retry {
                        leader: None,
                        why: lost.message,
                    };
                }
                Err(lost) => {
                    return Attempt::Done(Err(ClientError::Exhausted {
                        deadline: self.deadline,
                        last: format!(
                            "{} (outcome unknown; send a client id and seq to retry safely)",
                            lost.message
                        ),
                    }));
                }
            };
            let Answer {
                status,
                index,
                duplicate,
                leader,
                body,
            } = answer;
            if status == 200 {
                return Attempt::Done(Ok(Reply {
                    body,
                    index,
                    duplicate,
                    endpoint: base,
                }));
            }
            let ErrorBody { code, message, .. } = ErrorBody::parse(&body);
            let safe = !code.outcome_unknown() || tag.is_some();
            match status {
                422 => Attempt::Done(Err(ClientError::Rejected { index, message })),
                502..=504 if safe => Attempt::Retry {
                    leader,
                    why: format!("{code}: {message}"),
                },
                _ => Attempt::Done(Err(ClientError::Api {
                    status,
                    code,
                    message,
                })),
            }
        })
        .await
    }

    /// One command as its own `POST /v1/commands`.
    async fn post_command(
        &self,
        base: &str,
        command: &[u8],
        tag: Option<(&str, u64)>,
    ) -> Result<Answer, Lost> {
        let mut req = self
            .http
            .post(format!("{base}/v1/commands"))
            .body(command.to_vec());
        if let Some((id, seq)) = tag {
            req = req.header(CLIENT_ID, id).header(SEQ, seq.to_string());
        }
        let resp = req.send().await.map_err(|e| Lost {
            sent: !e.is_connect(),
            message: e.to_string(),
        })?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Ok(Answer {
            status: resp.status().as_u16(),
            index: header(INDEX).and_then(|v| v.parse().ok()),
            duplicate: header(DUPLICATE).is_some(),
            leader: header(LEADER),
            body: resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
        })
    }

    /// Run a query (linearizable unless `stale`).
    pub async fn query(&self, query: &[u8], stale: bool) -> Result<Vec<u8>, ClientError> {
        self.with_retries(|base| async move {
            let url = if stale {
                format!("{base}/v1/query?consistency=stale")
            } else {
                format!("{base}/v1/query")
            };
            let resp = match self.http.post(url).body(query.to_vec()).send().await {
                Ok(r) => r,
                Err(e) => {
                    return Attempt::Retry {
                        leader: None,
                        why: e.to_string(),
                    };
                }
            };
            let status = resp.status().as_u16();
            let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            if status == 200 {
                return Attempt::Done(Ok(body));
            }
            let ErrorBody { code, message, .. } = ErrorBody::parse(&body);
            match status {
                422 => Attempt::Done(Err(ClientError::Rejected {
                    index: None,
                    message,
                })),
                503 | 504 => Attempt::Retry {
                    leader: None,
                    why: format!("{code}: {message}"),
                },
                _ => Attempt::Done(Err(ClientError::Api {
                    status,
                    code,
                    message,
                })),
            }
        })
        .await
    }

    /// `GET /v1/status` of the first endpoint that answers.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.with_retries(|base| async move {
            match fetch_status(&self.http, &base, STATUS_TIMEOUT).await {
                Ok(s) => Attempt::Done(Ok(s)),
                Err(e) => Attempt::Retry {
                    leader: None,
                    why: e.to_string(),
                },
            }
        })
        .await
    }
}

/// How long one status request may take.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// One `GET /v1/status` of the replica at `base_url` (`http://host:port`),
/// no retries: for tools that poll replicas one by one with their own
/// client and timeout.
pub async fn fetch_status(
    http: &reqwest::Client,
    base_url: &str,
    timeout: Duration,
) -> Result<Status, ClientError> {
    let url = format!("{base_url}/v1/status");
    let transport = |e: reqwest::Error| ClientError::Transport {
        url: url.clone(),
        message: e.to_string(),
    };
    let resp = http
        .get(&url)
        .timeout(timeout)
        .send()
        .await
        .map_err(transport)?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(transport)?;
    if status != 200 {
        let ErrorBody { code, message, .. } = ErrorBody::parse(&body);
        return Err(ClientError::Api {
            status,
            code,
            message,
        });
    }
    serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
        url: url.clone(),
        message: e.to_string(),
    })
}

/// A client id unlikely to collide with any other: host name, process id and time.
pub fn generated_client_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "cli".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let id = format!("{host}-{}-{nanos:x}", std::process::id());
    id.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalised_and_validated() {
        assert_eq!(
            endpoint_url("127.0.0.1:7070").unwrap(),
            "http://127.0.0.1:7070"
        );
        assert_eq!(endpoint_url("http://a:1/").unwrap(), "http://a:1");
        assert!(endpoint_url("").is_err());
        assert!(endpoint_url("a b").is_err());
        let c = Client::new(&["a:1,b:2".into()]).unwrap();
        assert_eq!(c.endpoints, vec!["http://a:1", "http://b:2"]);
    }

    /// A replica's API before the replica is attached (still connecting to
    /// the store): every route but `/healthz` answers 503 `starting`.
    async fn starting_api() -> String {
        let state = std::sync::Arc::new(crate::api::ApiState::new(1024).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(crate::api::serve(
            listener,
            crate::api::router(state),
            std::future::pending(),
        ));
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn error_bodies_become_typed_errors() {
        let base = starting_api().await;
        let client = Client::new(std::slice::from_ref(&base))
            .unwrap()
            .with_deadline(Duration::from_secs(5));
        let http = &client.http;
        match fetch_status(http, &base, Duration::from_secs(5)).await {
            Err(ClientError::Api {
                status: 503,
                code: ErrorCode::Starting,
                message,
            }) => assert!(message.contains("starting"), "{message}"),
            other => panic!("expected 503 starting, got {other:?}"),
        }
        // Refused before anything could be ordered: no retry, the code as sent.
        match client.submit(b"", Some(("c", 1))).await {
            Err(ClientError::Api {
                status: 400,
                code: ErrorCode::Empty,
                ..
            }) => {}
            other => panic!("expected 400 empty, got {other:?}"),
        }
        match fetch_status(http, "http://127.0.0.1:1", Duration::from_secs(5)).await {
            Err(ClientError::Transport { url, .. }) => assert!(url.ends_with("/v1/status")),
            other => panic!("expected a transport error, got {other:?}"),
        }
    }

    /// A batch answered as a whole (the replica is still starting) or never
    /// sent (nothing listens) was not ordered: the batching client retries it,
    /// with or without a tag, until its deadline, and says why it gave up.
    #[tokio::test]
    async fn a_batching_client_retries_what_was_never_ordered() {
        let starting = Client::batched(&[starting_api().await])
            .unwrap()
            .with_deadline(Duration::from_millis(300));
        match starting.submit(b"x", Some(("c", 1))).await {
            Err(ClientError::Exhausted { last, .. }) => {
                assert!(last.contains("starting"), "{last}")
            }
            other => panic!("expected to give up on a starting replica, got {other:?}"),
        }
        let dead = Client::batched(&["127.0.0.1:1".into()])
            .unwrap()
            .with_deadline(Duration::from_millis(300));
        match dead.submit(b"x", None).await {
            Err(ClientError::Exhausted { last, .. }) => {
                assert!(last.contains("cannot reach"), "{last}")
            }
            other => panic!("expected to give up on a dead endpoint, got {other:?}"),
        }
    }

    #[test]
    fn generated_ids_are_valid_header_values() {
        let id = generated_client_id();
        assert!(!id.is_empty() && id.len() <= 255);
        assert!(id.bytes().all(|b| b.is_ascii_graphic()));
    }
}
