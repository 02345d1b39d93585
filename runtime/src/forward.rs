//! Followers forward writes to the leader in batches.
//!
//! A follower used to forward each client command as its own HTTP request.
//! Now every forwarded command goes through one [`Forwarder`] per replica: a
//! task drains a channel, takes every command waiting (up to
//! [`MAX_BATCH_COMMANDS`] / [`MAX_BATCH_BYTES`]) and sends them to the leader
//! as **one** `POST /v1/forward` request. The leader submits them all at
//! once (so they land in the same log batch) and answers one reply per
//! command, in request order; the follower hands each its own reply. At most
//! [`MAX_BATCHES_IN_FLIGHT`] batches are in flight, so while the leader works
//! on them the next commands accumulate into the next batch.
//!
//! Each command keeps its exactly-once tag (client id and seq) and gets its
//! own outcome: a reply, a deterministic rejection, or its own error
//! (`not_leader`, `not_ordered`, ...), exactly what a forward of that command
//! alone would have answered. A transport failure of the batch answers every
//! command in it `leader_unreachable`, as it did for single forwards; with a
//! client id and seq they are safe to retry.
//!
//! The batch body is a small typed binary framing ([`encode_request`],
//! [`decode_request`], [`encode_replies`], [`decode_replies`]), versioned by
//! its magic; command bytes are carried as they are. A leader that does not
//! know `/v1/forward` (an older build during a rolling upgrade) answers 404,
//! and the follower then forwards that batch's commands one by one, the old
//! way ([`Forwarded::Fallback`]).
//!
//! A client can batch the same way: [`crate::client::Client::batched`] puts
//! its concurrent commands through a [`Forwarder`] of its own, so many
//! commands travel in one request and one response. A replica that is not
//! the leader answers each such command `not_leader` with the leader's
//! address (it never forwards a batch again), and the client resends there.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use dorado_core::ClientTag;
use dorado_core::entry::MAX_CLIENT_ID;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Path of the batch endpoint (followers forward through it; batching
/// clients send through it).
pub const FORWARD_PATH: &str = "/v1/forward";

/// Most commands in one forwarded batch.
pub const MAX_BATCH_COMMANDS: usize = 512;
/// Most command bytes in one forwarded batch (a single larger command still
/// goes, alone).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Batches one follower keeps in flight to the leader.
pub const MAX_BATCHES_IN_FLIGHT: usize = 4;

const REQUEST_MAGIC: &[u8; 4] = b"DFB1";
const REPLY_MAGIC: &[u8; 4] = b"DFR1";

/// One forwarded command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardCommand {
    /// Exactly-once tag, when the client sent one.
    pub client: Option<ClientTag>,
    /// The command bytes.
    pub payload: Bytes,
}

/// The leader's answer to one forwarded command: what its own
/// `POST /v1/commands` would have answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardReply {
    /// HTTP status (200, 422, 503, ...).
    pub status: u16,
    /// Log index that ordered it (`dorado-index`).
    pub index: Option<u64>,
    /// Answered from the session table (`dorado-duplicate`).
    pub duplicate: bool,
    /// The leader's address (`dorado-leader`), with errors that name one.
    pub leader: Option<String>,
    /// Reply bytes (200) or the JSON error body.
    pub body: Bytes,
}

/// A batch that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed forward batch: {0}")]
pub struct FrameError(pub String);

fn need(buf: &impl Buf, n: usize, what: &str) -> Result<(), FrameError> {
    if buf.remaining() < n {
        Err(FrameError(format!("truncated {what}")))
    } else {
        Ok(())
    }
}

fn take_bytes(buf: &mut Bytes, n: usize, what: &str) -> Result<Bytes, FrameError> {
    need(buf, n, what)?;
    Ok(buf.split_to(n))
}

/// `DFB1`, count (u32), then per command: flag (u8: 1 = tagged), for a
/// tagged one id length (u8), id, seq (u64); payload length (u32), payload.
pub fn encode_request(commands: &[ForwardCommand]) -> Bytes {
    let size: usize = commands
        .iter()
        .map(|c| 14 + c.payload.len() + c.client.as_ref().map_or(0, |t| t.id.len()))
        .sum();
    let mut out = BytesMut::with_capacity(8 + size);
    out.put_slice(REQUEST_MAGIC);
    out.put_u32(commands.len() as u32);
    for c in commands {
        match &c.client {
            Some(tag) => {
                out.put_u8(1);
                out.put_u8(tag.id.len() as u8);
                out.put_slice(tag.id.as_bytes());
                out.put_u64(tag.seq);
            }
            None => out.put_u8(0),
        }
        out.put_u32(c.payload.len() as u32);
        out.put_slice(&c.payload);
    }
    out.freeze()
}

/// Inverse of [`encode_request`]; refuses trailing bytes, bad tags (the
/// same rules as the `dorado-client-id`/`dorado-seq` headers) and counts
/// above [`MAX_BATCH_COMMANDS`].
pub fn decode_request(mut buf: Bytes) -> Result<Vec<ForwardCommand>, FrameError> {
    need(&buf, 8, "header")?;
    if &buf[..4] != REQUEST_MAGIC {
        return Err(FrameError("unknown magic (expected DFB1)".into()));
    }
    buf.advance(4);
    let count = buf.get_u32() as usize;
    if count > MAX_BATCH_COMMANDS {
        return Err(FrameError(format!(
            "{count} commands (at most {MAX_BATCH_COMMANDS})"
        )));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        need(&buf, 1, "flag")?;
        let client = match buf.get_u8() {
            0 => None,
            1 => {
                need(&buf, 1, "id length")?;
                let len = usize::from(buf.get_u8());
                let id = take_bytes(&mut buf, len, "client id")?;
                let id = std::str::from_utf8(&id)
                    .ok()
                    .filter(|s| {
                        !s.is_empty()
                            && s.len() <= MAX_CLIENT_ID
                            && s.bytes().all(|b| b.is_ascii_graphic())
                    })
                    .ok_or_else(|| FrameError("bad client id".into()))?
                    .to_owned();
                need(&buf, 8, "seq")?;
                let seq = buf.get_u64();
                if seq == 0 {
                    return Err(FrameError("seq 0".into()));
                }
                Some(ClientTag { id, seq })
            }
            other => return Err(FrameError(format!("bad flag {other}"))),
        };
        need(&buf, 4, "payload length")?;
        let len = buf.get_u32() as usize;
        let payload = take_bytes(&mut buf, len, "payload")?;
        out.push(ForwardCommand { client, payload });
    }
    if buf.has_remaining() {
        return Err(FrameError(format!("{} trailing bytes", buf.remaining())));
    }
    Ok(out)
}

/// `DFR1`, count (u32), then per reply: status (u16), flags (u8: 1 = index,
/// 2 = duplicate, 4 = leader), index (u64) if flagged, leader length (u16)
/// and leader if flagged, body length (u32), body.
pub fn encode_replies(replies: &[ForwardReply]) -> Bytes {
    let size: usize = replies
        .iter()
        .map(|r| 17 + r.body.len() + r.leader.as_ref().map_or(0, String::len))
        .sum();
    let mut out = BytesMut::with_capacity(8 + size);
    out.put_slice(REPLY_MAGIC);
    out.put_u32(replies.len() as u32);
    for r in replies {
        out.put_u16(r.status);
        let leader = r
            .leader
            .as_deref()
            .filter(|l| l.len() <= usize::from(u16::MAX));
        let flags = u8::from(r.index.is_some())
            | (u8::from(r.duplicate) << 1)
            | (u8::from(leader.is_some()) << 2);
        out.put_u8(flags);
        if let Some(i) = r.index {
            out.put_u64(i);
        }
        if let Some(l) = leader {
            out.put_u16(l.len() as u16);
            out.put_slice(l.as_bytes());
        }
        out.put_u32(r.body.len() as u32);
        out.put_slice(&r.body);
    }
    out.freeze()
}

/// Inverse of [`encode_replies`]; `expected` is the number of commands sent.
pub fn decode_replies(mut buf: Bytes, expected: usize) -> Result<Vec<ForwardReply>, FrameError> {
    need(&buf, 8, "header")?;
    if &buf[..4] != REPLY_MAGIC {
        return Err(FrameError("unknown magic (expected DFR1)".into()));
    }
    buf.advance(4);
    let count = buf.get_u32() as usize;
    if count != expected {
        return Err(FrameError(format!(
            "{count} replies for {expected} commands"
        )));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        need(&buf, 3, "status")?;
        let status = buf.get_u16();
        let flags = buf.get_u8();
        if flags & !0b111 != 0 {
            return Err(FrameError(format!("bad flags {flags:#x}")));
        }
        let index = if flags & 1 != 0 {
            need(&buf, 8, "index")?;
            Some(buf.get_u64())
        } else {
            None
        };
        let leader = if flags & 4 != 0 {
            need(&buf, 2, "leader length")?;
            let len = usize::from(buf.get_u16());
            let l = take_bytes(&mut buf, len, "leader")?;
            Some(
                String::from_utf8(l.to_vec())
                    .map_err(|_| FrameError("leader is not UTF-8".into()))?,
            )
        } else {
            None
        };
        need(&buf, 4, "body length")?;
        let len = buf.get_u32() as usize;
        let body = take_bytes(&mut buf, len, "body")?;
        out.push(ForwardReply {
            status,
            index,
            duplicate: flags & 2 != 0,
            leader,
            body,
        });
    }
    if buf.has_remaining() {
        return Err(FrameError(format!("{} trailing bytes", buf.remaining())));
    }
    Ok(out)
}

/// What a forwarded command came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarded {
    /// The leader's answer to this command.
    Reply(ForwardReply),
    /// The leader could not be reached, or its answer was lost
    /// (`status` 503 before the batch was sent, 502 after), with why.
    Unreachable {
        /// 502 or 503.
        status: u16,
        /// What went wrong.
        message: String,
    },
    /// The leader does not know `/v1/forward` (an older build): forward
    /// this command on its own.
    Fallback,
}

struct Pending {
    leader: String,
    command: ForwardCommand,
    reply: oneshot::Sender<Forwarded>,
}

/// Batches the commands a follower forwards (see the module docs), and those
/// of a batching client ([`crate::client::Client::batched`]). Cheap to
/// share; the batching task starts at the first forward (it needs a tokio
/// runtime) and ends when the forwarder is dropped.
#[derive(Debug)]
pub struct Forwarder {
    http: reqwest::Client,
    queue: OnceLock<mpsc::UnboundedSender<Pending>>,
}

impl Forwarder {
    /// A forwarder sending batches with `http`.
    pub fn new(http: reqwest::Client) -> Self {
        Forwarder {
            http,
            queue: OnceLock::new(),
        }
    }

    /// Forward `command` to the leader at `leader` (host:port, or a base URL
    /// such as `http://host:port`), in a batch with whatever else is being
    /// forwarded; `from` names the sender (the `dorado-forwarded` header).
    pub async fn forward(&self, from: &str, leader: &str, command: ForwardCommand) -> Forwarded {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(batch_task(self.http.clone(), from.to_owned(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            leader: leader.to_owned(),
            command,
            reply,
        };
        if queue.send(pending).is_err() {
            return Forwarded::Unreachable {
                status: 503,
                message: "the forwarding task stopped".into(),
            };
        }
        answer.await.unwrap_or_else(|_| Forwarded::Unreachable {
            status: 502,
            message: "the forwarding task dropped the command".into(),
        })
    }
}

async fn batch_task(http: reqwest::Client, from: String, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let permits = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    loop {
        // Wait for room first: while batches are in flight, commands queue
        // up and leave together in the next one.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        // Let the senders woken with this one (e.g. the clients that one
        // batch's replies just answered) queue behind it before taking them.
        tokio::task::yield_now().await;
        let mut bytes = first.command.payload.len();
        let mut taken = vec![first];
        while taken.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.command.payload.len();
                    taken.push(p);
                }
                Err(_) => break,
            }
        }
        // Normally one leader; after a leader change, one batch per address.
        let mut by_leader: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
        for p in taken {
            by_leader.entry(p.leader.clone()).or_default().push(p);
        }
        let mut batches = by_leader.into_iter();
        let first_batch = batches.next();
        for (leader, batch) in batches {
            let (http, from) = (http.clone(), from.clone());
            tokio::spawn(async move { send_batch(&http, &from, &leader, batch).await });
        }
        if let Some((leader, batch)) = first_batch {
            let (http, from) = (http.clone(), from.clone());
            tokio::spawn(async move {
                send_batch(&http, &from, &leader, batch).await;
                drop(permit);
            });
        }
    }
}

async fn send_batch(client: &reqwest::Client, from: &str, leader: &str, batch: Vec<Pending>) {
    let (commands, waiting): (Vec<ForwardCommand>, Vec<oneshot::Sender<Forwarded>>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let answers = exchange(client, from, leader, &commands).await;
    match answers {
        Ok(replies) => {
            for (reply, to) in replies.into_iter().zip(waiting) {
                let _ = to.send(reply);
            }
        }
        Err(forwarded) => {
            for to in waiting {
                let _ = to.send(forwarded.clone());
            }
        }
    }
}

/// One batch request; `Err` is the answer every command of it gets.
async fn exchange(
    client: &reqwest::Client,
    from: &str,
    leader: &str,
    commands: &[ForwardCommand],
) -> Result<Vec<Forwarded>, Forwarded> {
    // A bad address fails as a request to it would, with reqwest's message.
    let base = crate::client::endpoint_url(leader).unwrap_or_else(|_| format!("http://{leader}"));
    let resp = client
        .post(format!("{base}{FORWARD_PATH}"))
        .header(crate::api::FORWARDED, from)
        .header(http::header::CONTENT_TYPE, "application/octet-stream")
        .body(encode_request(commands))
        .send()
        .await
        .map_err(|e| Forwarded::Unreachable {
            // Only a failed connect certainly sent nothing.
            status: if e.is_connect() { 503 } else { 502 },
            message: format!("cannot reach the leader at {leader}: {e}"),
        })?;
    let status = resp.status().as_u16();
    let lost = |what: String| Forwarded::Unreachable {
        status: 502,
        message: format!("the leader at {leader} {what}"),
    };
    let body = resp
        .bytes()
        .await
        .map_err(|e| lost(format!("dropped the reply: {e}")))?;
    match status {
        200 => decode_replies(body, commands.len())
            .map(|r| r.into_iter().map(Forwarded::Reply).collect())
            .map_err(|e| lost(format!("answered a batch that cannot be read: {e}"))),
        404 | 405 => Err(Forwarded::Fallback),
        // The whole batch was refused before any command was submitted
        // (e.g. the leader is starting or draining): every command gets that
        // answer, as a forward of it alone would have.
        _ => Ok(commands
            .iter()
            .map(|_| {
                Forwarded::Reply(ForwardReply {
                    status,
                    index: None,
                    duplicate: false,
                    leader: None,
                    body: body.clone(),
                })
            })
            .collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commands() -> Vec<ForwardCommand> {
        vec![
            ForwardCommand {
                client: Some(ClientTag {
                    id: "web-1".into(),
                    seq: 7,
                }),
                payload: Bytes::from_static(b"{\"op\":\"put\"}"),
            },
            ForwardCommand {
                client: None,
                payload: Bytes::from_static(b"x"),
            },
            ForwardCommand {
                client: Some(ClientTag {
                    id: "c".repeat(MAX_CLIENT_ID),
                    seq: u64::MAX,
                }),
                payload: Bytes::from(vec![0u8; 70_000]),
            },
        ]
    }

    #[test]
    fn requests_round_trip() {
        let c = commands();
        assert_eq!(decode_request(encode_request(&c)).unwrap(), c);
        assert_eq!(decode_request(encode_request(&[])).unwrap(), vec![]);
    }

    #[test]
    fn replies_round_trip() {
        let r = vec![
            ForwardReply {
                status: 200,
                index: Some(42),
                duplicate: true,
                leader: None,
                body: Bytes::from_static(b"{\"ok\":true}"),
            },
            ForwardReply {
                status: 503,
                index: None,
                duplicate: false,
                leader: Some("10.0.0.1:7070".into()),
                body: Bytes::from_static(b"{\"code\":\"not_leader\"}"),
            },
            ForwardReply {
                status: 422,
                index: Some(0),
                duplicate: false,
                leader: None,
                body: Bytes::new(),
            },
        ];
        assert_eq!(decode_replies(encode_replies(&r), 3).unwrap(), r);
        assert!(decode_replies(encode_replies(&r), 2).is_err());
    }

    /// A stand-in leader: answers each forwarded command with its own tag
    /// and payload (422 for `reject`), slowly, and counts the requests.
    async fn fake_leader(with_batches: bool) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let mut app = axum::Router::new();
        if with_batches {
            app = app.route(
                FORWARD_PATH,
                axum::routing::post(move |headers: http::HeaderMap, body: Bytes| {
                    let counted = counted.clone();
                    async move {
                        counted.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(headers[crate::api::FORWARDED], "f1");
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        let commands = decode_request(body).unwrap();
                        let replies: Vec<ForwardReply> = commands
                            .iter()
                            .enumerate()
                            .map(|(i, c)| {
                                let tag = c
                                    .client
                                    .as_ref()
                                    .map_or("-".to_string(), |t| format!("{}#{}", t.id, t.seq));
                                let rejected = &c.payload[..] == b"reject";
                                ForwardReply {
                                    status: if rejected { 422 } else { 200 },
                                    index: Some(i as u64 + 1),
                                    duplicate: false,
                                    leader: None,
                                    body: Bytes::from(format!(
                                        "{tag}:{}",
                                        String::from_utf8_lossy(&c.payload)
                                    )),
                                }
                            })
                            .collect();
                        encode_replies(&replies)
                    }
                }),
            );
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr.to_string(), requests)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_forwards_travel_in_few_batches_each_with_its_own_reply() {
        use std::sync::atomic::Ordering;
        crate::ensure_crypto_provider();
        let (leader, requests) = fake_leader(true).await;
        let forwarder = Arc::new(Forwarder::new(reqwest::Client::new()));
        let n = 300;
        let mut tasks = Vec::new();
        for i in 0..n {
            let (forwarder, leader) = (forwarder.clone(), leader.clone());
            tasks.push(tokio::spawn(async move {
                let payload = if i % 10 == 3 {
                    "reject".to_string()
                } else {
                    format!("cmd-{i}")
                };
                let command = ForwardCommand {
                    client: (i % 2 == 0).then(|| ClientTag {
                        id: format!("c{i}"),
                        seq: i + 1,
                    }),
                    payload: Bytes::from(payload.clone()),
                };
                let Forwarded::Reply(reply) = forwarder.forward("f1", &leader, command).await
                else {
                    panic!("command {i} not answered");
                };
                let tag = if i % 2 == 0 {
                    format!("c{i}#{}", i + 1)
                } else {
                    "-".into()
                };
                assert_eq!(reply.body, format!("{tag}:{payload}").into_bytes(), "{i}");
                assert_eq!(reply.status, if payload == "reject" { 422 } else { 200 });
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let sent = requests.load(Ordering::SeqCst);
        assert!(sent <= 30, "{n} commands took {sent} requests");
    }

    #[tokio::test]
    async fn an_old_leader_without_batches_means_fallback_and_a_dead_one_unreachable() {
        crate::ensure_crypto_provider();
        let (leader, _) = fake_leader(false).await;
        let forwarder = Forwarder::new(reqwest::Client::new());
        let command = ForwardCommand {
            client: None,
            payload: Bytes::from_static(b"x"),
        };
        assert_eq!(
            forwarder.forward("f1", &leader, command.clone()).await,
            Forwarded::Fallback
        );
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        match forwarder.forward("f1", &dead, command).await {
            Forwarded::Unreachable { status: 503, .. } => {}
            other => panic!("expected unreachable, got {other:?}"),
        }
    }

    #[test]
    fn malformed_batches_are_refused() {
        let good = encode_request(&commands());
        // Every truncation is an error, never a panic or a shorter batch.
        for cut in 0..good.len().min(200) {
            assert!(decode_request(good.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut trailing = BytesMut::from(&good[..]);
        trailing.put_u8(0);
        assert!(decode_request(trailing.freeze()).is_err());
        let mut magic = BytesMut::from(&good[..]);
        magic[3] = b'9';
        assert!(decode_request(magic.freeze()).is_err());
        let bad_tag = |id: &str, seq: u64| {
            encode_request(&[ForwardCommand {
                client: Some(ClientTag { id: id.into(), seq }),
                payload: Bytes::from_static(b"x"),
            }])
        };
        assert!(decode_request(bad_tag("", 1)).is_err());
        assert!(decode_request(bad_tag("has space", 1)).is_err());
        assert!(decode_request(bad_tag("ok", 0)).is_err());
        let mut too_many = BytesMut::new();
        too_many.put_slice(REQUEST_MAGIC);
        too_many.put_u32(MAX_BATCH_COMMANDS as u32 + 1);
        assert!(decode_request(too_many.freeze()).is_err());
        let replies = encode_replies(&[]);
        for cut in 0..replies.len() {
            assert!(decode_replies(replies.slice(..cut), 0).is_err());
        }
    }
}
