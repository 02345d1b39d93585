//! Clients: the kv workload whose history is checked for linearizability,
//! and the bank workload whose total must never change.
//!
//! Every client has its own client id and numbers its commands 1, 2, 3, ...;
//! it follows the exactly-once rules of the client API:
//!
//! - `200`: applied, here is the reply; `422`: applied, rejected
//!   deterministically;
//! - `503` with code `not_leader`, `no_leader`, `not_ordered` or `starting`,
//!   or a connection that could not be opened: **not applied**; the client
//!   retries the same seq, or (sometimes, per its plan) gives the operation
//!   up and moves on to a new seq;
//! - anything else (`unknown_outcome`, timeouts, a reset connection, a
//!   gateway error): **unknown**; the client retries the *same* seq, on any
//!   replica, until it gets a definite answer or its deadline passes.
//!
//! Every attempt is recorded, so the checks can later hold the group to what
//! it said: a command reported "not applied" must never show up in a trace.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use tokio::time::Instant;

use dorado::wire::ErrorBody;
use dorado_testkit::examples::Reply;

use crate::checker::{Completion, KvOp, KvResult, Operation};
use crate::plan::{BANK, KV, KvClientPlan, Plan};
use crate::world::World;

/// How long one operation may be retried before it is given up.
pub const OP_DEADLINE: Duration = Duration::from_secs(25);

/// What one HTTP attempt told the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200.
    Ok {
        /// `dorado-index`.
        index: Option<u64>,
        /// `dorado-duplicate` was set.
        duplicate: bool,
        /// Reply body.
        body: String,
    },
    /// 422: ordered and rejected deterministically.
    Rejected {
        /// `dorado-index`.
        index: Option<u64>,
        /// Error body.
        body: String,
    },
    /// Definitely not applied (code or reason).
    NotApplied(String),
    /// May or may not have been applied.
    Unknown(String),
}

/// One attempt of a write.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Replica asked.
    pub replica: usize,
    /// When it was sent (ns).
    pub sent: u64,
    /// What came back.
    pub answer: Answer,
}

/// How a write ended for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// 200 or 422 (the last attempt's answer).
    Definite,
    /// Every attempt said "not applied" and the client gave up.
    NotApplied,
    /// Given up with at least one unknown attempt.
    Unknown,
}

/// One command a client sent (with all its attempts).
#[derive(Debug, Clone)]
pub struct WriteRecord {
    /// Group index.
    pub group: usize,
    /// Client id.
    pub client: String,
    /// Sequence number.
    pub seq: u64,
    /// Command body.
    pub body: String,
    /// Invocation (ns).
    pub invoked: u64,
    /// Completion (ns), when definite.
    pub completed: Option<u64>,
    /// How it ended.
    pub outcome: WriteOutcome,
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
}

impl WriteRecord {
    /// The definite answer, if any.
    pub fn answer(&self) -> Option<&Answer> {
        match self.outcome {
            WriteOutcome::Definite => self.attempts.last().map(|a| &a.answer),
            _ => None,
        }
    }
}

/// A problem seen by a client while running (checked at once).
#[derive(Debug, Clone)]
pub struct ClientAnomaly {
    /// Group index.
    pub group: usize,
    /// Category.
    pub what: &'static str,
    /// Details.
    pub detail: String,
}

/// Everything the clients recorded.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Every write, every group.
    pub writes: Vec<WriteRecord>,
    /// The kv history (writes, command reads and query reads).
    pub kv_history: Vec<Operation>,
    /// kv reads (queries) that got no answer (not part of the history).
    pub kv_reads_failed: usize,
    /// Bank total reads that got an answer (each checked).
    pub bank_reads: usize,
    /// Problems seen while running.
    pub anomalies: Vec<ClientAnomaly>,
}

/// Shared recorder.
pub type SharedRecorder = Arc<Mutex<Recorder>>;

fn rec(r: &SharedRecorder) -> std::sync::MutexGuard<'_, Recorder> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// Send one command attempt and classify the answer.
pub async fn send_command(
    http: &reqwest::Client,
    url: &str,
    body: &str,
    client: &str,
    seq: u64,
    timeout: Duration,
) -> Answer {
    let resp = http
        .post(format!("{url}/v1/commands"))
        .header(dorado::api::CLIENT_ID, client)
        .header(dorado::api::SEQ, seq.to_string())
        .timeout(timeout)
        .body(body.to_string())
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Answer::NotApplied(format!("connect: {e}")),
        Err(e) => return Answer::Unknown(format!("request: {e}")),
    };
    let status = resp.status().as_u16();
    let index = resp
        .headers()
        .get(dorado::api::INDEX)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let duplicate = resp.headers().contains_key(dorado::api::DUPLICATE);
    let text = match resp.text().await {
        Ok(t) => t,
        Err(e) => return Answer::Unknown(format!("{status} with unreadable body: {e}")),
    };
    match status {
        200 => Answer::Ok {
            index,
            duplicate,
            body: text,
        },
        422 => Answer::Rejected { index, body: text },
        503 => {
            let code = ErrorBody::parse(text.as_bytes()).code;
            if code.never_ordered() {
                Answer::NotApplied(code.to_string())
            } else {
                Answer::Unknown(format!("503 {code}"))
            }
        }
        other => Answer::Unknown(format!(
            "{other} {}",
            text.chars().take(120).collect::<String>()
        )),
    }
}

/// A client session: id, next seq, its random stream.
struct Session<'w> {
    world: &'w World,
    group: usize,
    id: String,
    seq: u64,
    rng: ChaCha8Rng,
    attempt_timeout: Duration,
    give_up_percent: u8,
}

impl Session<'_> {
    /// Submit `body` under the next seq, retrying per the exactly-once rules.
    async fn write(&mut self, body: String) -> WriteRecord {
        self.seq += 1;
        let world = self.world;
        let urls = &world.groups[self.group].urls;
        let invoked = world.now_ns();
        let deadline = Instant::now() + OP_DEADLINE;
        let mut attempts: Vec<Attempt> = Vec::new();
        loop {
            let replica = self.rng.random_range(0..urls.len());
            let sent = world.now_ns();
            let answer = send_command(
                &world.http,
                &urls[replica],
                &body,
                &self.id,
                self.seq,
                self.attempt_timeout,
            )
            .await;
            let definite = matches!(answer, Answer::Ok { .. } | Answer::Rejected { .. });
            let not_applied = matches!(answer, Answer::NotApplied(_));
            attempts.push(Attempt {
                replica,
                sent,
                answer,
            });
            let all_not_applied = attempts
                .iter()
                .all(|a| matches!(a.answer, Answer::NotApplied(_)));
            let give_up = |outcome| WriteRecord {
                group: self.group,
                client: self.id.clone(),
                seq: self.seq,
                body: body.clone(),
                invoked,
                completed: None,
                outcome,
                attempts: attempts.clone(),
            };
            if definite {
                return WriteRecord {
                    completed: Some(world.now_ns()),
                    ..give_up(WriteOutcome::Definite)
                };
            }
            if not_applied
                && all_not_applied
                && self.rng.random_range(0..100u8) < self.give_up_percent
            {
                return give_up(WriteOutcome::NotApplied);
            }
            if Instant::now() >= deadline {
                return give_up(if all_not_applied {
                    WriteOutcome::NotApplied
                } else {
                    WriteOutcome::Unknown
                });
            }
            let pause = self.rng.random_range(20..150);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// A linearizable query on a random replica; `None` if it got no answer.
    async fn query(&mut self, body: &str) -> Option<(u64, u64, Reply, usize)> {
        let world = self.world;
        let urls = &world.groups[self.group].urls;
        let replica = self.rng.random_range(0..urls.len());
        let invoked = world.now_ns();
        let resp = world
            .http
            .post(format!("{}/v1/query", urls[replica]))
            .timeout(self.attempt_timeout)
            .body(body.to_string())
            .send()
            .await
            .ok()?;
        if resp.status().as_u16() != 200 {
            return None;
        }
        let text = resp.bytes().await.ok()?;
        let completed = world.now_ns();
        let v = Reply::parse(&text).ok()?;
        Some((invoked, completed, v, replica))
    }
}

/// A kv value as the checker sees it: a string, or `None` for absent.
pub(crate) fn value_of(v: Option<&Value>) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("value {other} is not a string")),
    }
}

/// Convert a definite kv reply into a checker result.
fn kv_result(op: &KvOp, answer: &Answer) -> Result<KvResult, String> {
    let Answer::Ok { body, .. } = answer else {
        return Err(format!("kv command answered {answer:?}"));
    };
    let v = Reply::parse(body.as_bytes()).map_err(|e| format!("reply {body:?}: {e}"))?;
    let ok = v.ok;
    match op {
        KvOp::Put(_) if ok => Ok(KvResult::Written),
        KvOp::Get if ok => value_of(v.value.as_ref()).map(KvResult::Read),
        KvOp::Cas { .. } if ok => Ok(KvResult::CasOk),
        KvOp::Cas { .. } if v.error.as_deref() == Some("cas mismatch") => Ok(KvResult::CasFailed {
            current: v
                .current
                .as_ref()
                .map(|c| value_of(c.as_ref()))
                .transpose()?,
        }),
        _ => Err(format!("unexpected reply {body}")),
    }
}

fn kv_body(key: &str, op: &KvOp) -> String {
    match op {
        KvOp::Put(v) => json!({"op": "put", "key": key, "value": v}),
        KvOp::Get => json!({"op": "get", "key": key}),
        KvOp::Cas { expected, new } => {
            json!({"op": "cas", "key": key, "expected": expected, "value": new})
        }
    }
    .to_string()
}

/// Run a kv write (put, cas or a get through the log) and record it.
async fn kv_write(
    s: &mut Session<'_>,
    key: &str,
    op: KvOp,
    recorder: &SharedRecorder,
) -> Option<KvResult> {
    let w = s.write(kv_body(key, &op)).await;
    let client_no =
        s.id.trim_start_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .unwrap_or(0);
    let (completion, result) = match (&w.outcome, w.answer()) {
        (WriteOutcome::Definite, Some(answer)) => match kv_result(&op, answer) {
            Ok(result) => (
                Completion::Ok {
                    at: w.completed.unwrap_or(u64::MAX),
                    result: result.clone(),
                },
                Some(result),
            ),
            Err(detail) => {
                rec(recorder).anomalies.push(ClientAnomaly {
                    group: KV,
                    what: "unexpected reply",
                    detail: format!("{} #{} {}: {detail}", w.client, w.seq, w.body),
                });
                (Completion::Info, None)
            }
        },
        (WriteOutcome::NotApplied, _) => (Completion::Fail, None),
        _ => (Completion::Info, None),
    };
    let mut r = rec(recorder);
    r.kv_history.push(Operation {
        client: client_no,
        key: key.to_string(),
        op,
        invoked: w.invoked,
        completion,
    });
    r.writes.push(w);
    result
}

/// A linearizable kv read, recorded if answered.
async fn kv_read(
    s: &mut Session<'_>,
    key: &str,
    recorder: &SharedRecorder,
) -> Option<Option<String>> {
    let client_no =
        s.id.trim_start_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .unwrap_or(0);
    let Some((invoked, at, v, replica)) =
        s.query(&json!({"op": "get", "key": key}).to_string()).await
    else {
        rec(recorder).kv_reads_failed += 1;
        return None;
    };
    let value = if v.ok {
        value_of(v.value.as_ref())
    } else {
        Err(format!("query reply {v:?}"))
    };
    let mut r = rec(recorder);
    match value {
        Ok(value) => {
            r.kv_history.push(Operation {
                client: client_no,
                key: key.to_string(),
                op: KvOp::Get,
                invoked,
                completion: Completion::Ok {
                    at,
                    result: KvResult::Read(value.clone()),
                },
            });
            Some(value)
        }
        Err(detail) => {
            r.anomalies.push(ClientAnomaly {
                group: KV,
                what: "unexpected reply",
                detail: format!("query get {key} at replica {replica}: {detail}"),
            });
            None
        }
    }
}

/// Key name `n`.
pub fn key(n: usize) -> String {
    format!("k{n}")
}

/// One kv client: random puts, cas, reads (queries and through the log)
/// on a few keys, until `stop`.
pub async fn kv_client(
    world: &World,
    number: usize,
    plan: KvClientPlan,
    keys: usize,
    stop: &AtomicBool,
    recorder: SharedRecorder,
) {
    let mut s = Session {
        world,
        group: KV,
        id: format!("kv-{number}"),
        seq: 0,
        rng: ChaCha8Rng::seed_from_u64(plan.seed),
        attempt_timeout: plan.attempt_timeout,
        give_up_percent: plan.give_up_percent,
    };
    let mut seen: HashMap<String, Option<String>> = HashMap::new();
    let mut written = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let k = key(s.rng.random_range(0..keys));
        let dice = s.rng.random_range(0..100);
        if dice < 35 {
            if let Some(v) = kv_read(&mut s, &k, &recorder).await {
                seen.insert(k, v);
            }
            continue;
        }
        let op = if dice < 45 {
            KvOp::Get
        } else {
            written += 1;
            let value = format!("{number}-{written}");
            if dice < 75 {
                KvOp::Put(value)
            } else {
                let expected = if s.rng.random_bool(0.8) {
                    seen.get(&k).cloned().flatten()
                } else {
                    None
                };
                KvOp::Cas {
                    expected,
                    new: value,
                }
            }
        };
        match kv_write(&mut s, &k, op.clone(), &recorder).await {
            Some(KvResult::Read(v)) => {
                seen.insert(k, v);
            }
            Some(KvResult::Written | KvResult::CasOk) => {
                if let KvOp::Put(v) | KvOp::Cas { new: v, .. } = op {
                    seen.insert(k, Some(v));
                }
            }
            Some(KvResult::CasFailed { current: Some(c) }) => {
                seen.insert(k, c);
            }
            _ => {}
        }
    }
}

/// Account name `n`.
pub fn account(n: usize) -> String {
    format!("a{n}")
}

/// Open the bank's accounts (client `bank-setup`); false if it could not.
pub async fn bank_setup(
    world: &World,
    plan: &Plan,
    recorder: &SharedRecorder,
) -> Result<(), String> {
    let mut s = Session {
        world,
        group: BANK,
        id: "bank-setup".into(),
        seq: 0,
        rng: ChaCha8Rng::seed_from_u64(plan.seed ^ 0xBA4C),
        attempt_timeout: Duration::from_secs(5),
        give_up_percent: 0,
    };
    for a in 0..plan.accounts {
        let body = json!({"op": "open", "account": account(a), "balance": plan.opening_balance})
            .to_string();
        let w = s.write(body).await;
        let ok =
            matches!(w.answer(), Some(Answer::Ok { body, .. }) if body.contains("\"ok\":true"));
        let answer = format!("{:?}", w.attempts.last().map(|a| &a.answer));
        rec(recorder).writes.push(w);
        if !ok {
            return Err(format!("could not open account {}: {answer}", account(a)));
        }
    }
    Ok(())
}

/// One bank client: random transfers between the accounts and linearizable
/// reads of the total, each of which must equal the opening total.
pub async fn bank_client(
    world: &World,
    number: usize,
    seed: u64,
    plan: &Plan,
    stop: &AtomicBool,
    recorder: SharedRecorder,
) {
    let mut s = Session {
        world,
        group: BANK,
        id: format!("bank-{number}"),
        seq: 0,
        rng: ChaCha8Rng::seed_from_u64(seed),
        attempt_timeout: Duration::from_millis(3000),
        give_up_percent: 30,
    };
    let expected = plan.opening_balance * plan.accounts as u64;
    while !stop.load(Ordering::Relaxed) {
        if s.rng.random_range(0..100) < 20 {
            if let Some((invoked, at, v, replica)) = s.query(r#"{"op":"total"}"#).await {
                let mut r = rec(&recorder);
                r.bank_reads += 1;
                if !v.ok || v.total != Some(expected) {
                    r.anomalies.push(ClientAnomaly {
                        group: BANK,
                        what: "bank total changed",
                        detail: format!(
                            "linearizable read of the total at replica {replica} [{:.3}s .. {:.3}s] returned {v:?}, expected total {expected}",
                            invoked as f64 / 1e9,
                            at as f64 / 1e9
                        ),
                    });
                }
            }
            continue;
        }
        let from = s.rng.random_range(0..plan.accounts);
        let mut to = s.rng.random_range(0..plan.accounts - 1);
        if to >= from {
            to += 1;
        }
        let amount = s.rng.random_range(1..=plan.opening_balance / 3);
        let body =
            json!({"op": "transfer", "from": account(from), "to": account(to), "amount": amount})
                .to_string();
        let w = s.write(body).await;
        if let Some(Answer::Ok { body, .. }) = w.answer() {
            let v = Reply::parse(body.as_bytes()).unwrap_or_default();
            let fine = v.ok
                || v.error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("insufficient funds"));
            if !fine {
                rec(&recorder).anomalies.push(ClientAnomaly {
                    group: BANK,
                    what: "unexpected reply",
                    detail: format!("{} #{} {}: {body}", w.client, w.seq, w.body),
                });
            }
        }
        rec(&recorder).writes.push(w);
    }
}

/// A write that must succeed once faults are healed: the liveness probe.
pub async fn probe(world: &World, group: usize, recorder: &SharedRecorder) -> Result<u64, String> {
    let mut s = Session {
        world,
        group,
        id: "probe".into(),
        seq: 0,
        rng: ChaCha8Rng::seed_from_u64(group as u64),
        attempt_timeout: Duration::from_secs(5),
        give_up_percent: 0,
    };
    if group == KV {
        let op = KvOp::Put("probe".into());
        let r = kv_write(&mut s, "probe", op, recorder).await;
        let w = rec(recorder).writes.last().cloned();
        match (r, w.as_ref().and_then(|w| w.answer())) {
            (Some(_), Some(Answer::Ok { index: Some(i), .. })) => Ok(*i),
            _ => Err(format!(
                "no definite answer within {OP_DEADLINE:?} ({})",
                w.map(|w| crate::verify::summarize_attempts(&w.attempts))
                    .unwrap_or_default()
            )),
        }
    } else {
        let body = json!({"op": "open", "account": "probe", "balance": 0}).to_string();
        let w = s.write(body).await;
        let result = match w.answer() {
            Some(Answer::Ok { index: Some(i), .. }) => Ok(*i),
            _ => Err(format!(
                "no definite answer within {OP_DEADLINE:?} ({})",
                crate::verify::summarize_attempts(&w.attempts)
            )),
        };
        rec(recorder).writes.push(w);
        result
    }
}
