//! Checks on the evidence a schedule leaves: the replicas' traces and the
//! clients' records.
//!
//! Every replica prints one JSON line per applied command (`--log-format
//! json`): index, position in the batch, client id and seq, command, result,
//! whether it was answered from the session table, hash. Each incarnation of
//! each replica has its own trace file. From all of them together:
//!
//! - **agreement**: every trace that shows position `index.pos` shows the
//!   same command, result and hash there;
//! - **applied at most once**: a `(client, seq)` is applied (a line that is
//!   not a session-table duplicate and not a stale-seq rejection) at one
//!   position only;
//! - **acknowledged means applied**: every command a client got a 200/422
//!   for is applied, at the index the reply named (unless it was a duplicate
//!   answer), with the reply the client got;
//! - **not applied means not applied**: a command every attempt of which was
//!   answered "not applied" never shows up applied, and a retry never gets a
//!   session-table answer when every earlier attempt was answered "not
//!   applied".

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use dorado::trace::{JsonTraceLine, TraceResult};

use crate::workload::{Answer, WriteOutcome, WriteRecord};

/// What kind of property a finding breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnomalyKind {
    /// kv history has no linearization.
    NotLinearizable,
    /// A bank total or balance is wrong.
    Bank,
    /// Two traces disagree about the same log position.
    Divergence,
    /// Live replicas do not reach the same index and hash.
    NoConvergence,
    /// A group stops accepting writes after every fault is healed.
    NoLiveness,
    /// A command applied at two positions.
    AppliedTwice,
    /// An acknowledged command is not in the log (or elsewhere than reported).
    AckedNotApplied,
    /// A client's reply differs from what the trace shows was applied.
    ReplyMismatch,
    /// A command answered "not applied" was applied.
    NotAppliedButApplied,
    /// A reply that the state machine cannot produce for that command.
    UnexpectedReply,
}

impl AnomalyKind {
    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::NotLinearizable => "not-linearizable",
            AnomalyKind::Bank => "bank-invariant",
            AnomalyKind::Divergence => "divergence",
            AnomalyKind::NoConvergence => "no-convergence",
            AnomalyKind::NoLiveness => "no-liveness",
            AnomalyKind::AppliedTwice => "applied-twice",
            AnomalyKind::AckedNotApplied => "acknowledged-not-applied",
            AnomalyKind::ReplyMismatch => "reply-mismatch",
            AnomalyKind::NotAppliedButApplied => "not-applied-but-applied",
            AnomalyKind::UnexpectedReply => "unexpected-reply",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    /// Its kind.
    pub kind: AnomalyKind,
    /// Group it concerns.
    pub group: String,
    /// A precise description.
    pub detail: String,
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] group {}: {}",
            self.kind.name(),
            self.group,
            self.detail
        )
    }
}

/// One applied command as a trace shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceCommand {
    /// Client id (`-` for none).
    pub client: String,
    /// Seq (0 for none).
    pub seq: u64,
    /// Command text.
    pub cmd: String,
    /// Applied or rejected.
    pub result: TraceResult,
    /// Reply or rejection reason.
    pub detail: String,
    /// Answered from the session table.
    pub duplicate: bool,
    /// Hash chain value after it.
    pub hash: String,
}

impl TraceCommand {
    /// Whether this line is an application (not a session-table answer, not
    /// a stale-seq rejection).
    pub fn is_application(&self) -> bool {
        let stale = self.result == TraceResult::Rejected
            && self.detail.starts_with("stale sequence number");
        !(self.duplicate || stale)
    }
}

/// A parsed trace line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceLine {
    /// A command at `index.pos`.
    Command(u64, u32, TraceCommand),
    /// A no-op entry.
    Noop(u64, String),
    /// A snapshot restore.
    Restored(u64),
}

/// Parse one line of a JSON trace (`None` for anything else, e.g. a line cut
/// short by `kill -9`).
pub fn parse_line(line: &str) -> Option<TraceLine> {
    Some(match JsonTraceLine::parse(line)? {
        JsonTraceLine::Restored {
            restored_snapshot, ..
        } => TraceLine::Restored(restored_snapshot),
        JsonTraceLine::Noop {
            index,
            hash,
            noop: true,
        } => TraceLine::Noop(index, hash),
        JsonTraceLine::Noop { noop: false, .. } => return None,
        // An entry without commands, like a no-op (the fault suite never
        // upgrades; its hash still has to agree across replicas).
        JsonTraceLine::Upgrade { index, hash, .. } => TraceLine::Noop(index, hash),
        JsonTraceLine::Command(c) => TraceLine::Command(
            c.index,
            c.pos,
            TraceCommand {
                client: c.client,
                seq: c.seq,
                cmd: c.cmd,
                result: c.result,
                detail: c.detail,
                duplicate: c.duplicate,
                hash: c.hash,
            },
        ),
    })
}

/// The log of one group as all its traces together show it.
#[derive(Debug, Default)]
pub struct GroupLog {
    /// Commands by position, with the first file that showed each.
    pub commands: BTreeMap<(u64, u32), (TraceCommand, PathBuf)>,
    /// No-op entries by index.
    pub noops: BTreeMap<u64, (String, PathBuf)>,
    /// Every index some trace shows.
    pub covered: BTreeSet<u64>,
    /// Trace lines read.
    pub lines: usize,
}

/// Read every trace file of a group; disagreements become anomalies.
pub fn read_group(group: &str, files: &[PathBuf], anomalies: &mut Vec<Anomaly>) -> GroupLog {
    let mut log = GroupLog::default();
    let mut reported = 0;
    let mut diverge = |detail: String, anomalies: &mut Vec<Anomaly>| {
        reported += 1;
        if reported <= 5 {
            anomalies.push(Anomaly {
                kind: AnomalyKind::Divergence,
                group: group.to_string(),
                detail,
            });
        }
    };
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines() {
            let Some(parsed) = parse_line(line) else {
                continue;
            };
            log.lines += 1;
            match parsed {
                TraceLine::Restored(_) => {}
                TraceLine::Noop(index, hash) => {
                    log.covered.insert(index);
                    if let Some(((_, pos), (c, f))) =
                        log.commands.range((index, 0)..=(index, u32::MAX)).next()
                    {
                        diverge(
                            format!(
                                "index {index} is a no-op in {} but holds {}#{} at position {pos} in {}",
                                show(file),
                                c.client,
                                c.seq,
                                show(f)
                            ),
                            anomalies,
                        );
                    }
                    match log.noops.get(&index) {
                        Some((h, f)) if *h != hash => diverge(
                            format!(
                                "no-op at index {index}: hash {hash} in {} but {h} in {}",
                                show(file),
                                show(f)
                            ),
                            anomalies,
                        ),
                        Some(_) => {}
                        None => {
                            log.noops.insert(index, (hash, file.clone()));
                        }
                    }
                }
                TraceLine::Command(index, pos, c) => {
                    log.covered.insert(index);
                    if let Some((_, f)) = log.noops.get(&index) {
                        diverge(
                            format!(
                                "index {index} holds {}#{} in {} but is a no-op in {}",
                                c.client,
                                c.seq,
                                show(file),
                                show(f)
                            ),
                            anomalies,
                        );
                    }
                    match log.commands.get(&(index, pos)) {
                        Some((seen, f)) if *seen != c => diverge(
                            format!(
                                "position {index}.{pos}: {} shows {seen:?}, {} shows {c:?}",
                                show(f),
                                show(file)
                            ),
                            anomalies,
                        ),
                        Some(_) => {}
                        None => {
                            log.commands.insert((index, pos), (c, file.clone()));
                        }
                    }
                }
            }
        }
    }
    log
}

fn show(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A short account of a write's attempts: how many, what they were told,
/// the first and the last.
pub fn summarize_attempts(attempts: &[crate::workload::Attempt]) -> String {
    let label = |a: &Answer| match a {
        Answer::Ok {
            duplicate: true, ..
        } => "200 (session table)".to_string(),
        Answer::Ok { .. } => "200".to_string(),
        Answer::Rejected { .. } => "422".to_string(),
        Answer::NotApplied(code) => code.split(':').next().unwrap_or(code).to_string(),
        Answer::Unknown(what) => what.chars().take(40).collect(),
    };
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for a in attempts {
        *counts.entry(label(&a.answer)).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(k, n)| format!("{k} x{n}")).collect();
    let at = |a: &crate::workload::Attempt| {
        format!(
            "replica {} at {:.3}s: {}",
            a.replica,
            a.sent as f64 / 1e9,
            label(&a.answer)
        )
    };
    match (attempts.first(), attempts.last()) {
        (Some(first), Some(last)) if attempts.len() > 1 => format!(
            "{} attempts [{}], first {}, last {}",
            attempts.len(),
            counts.join(", "),
            at(first),
            at(last)
        ),
        (Some(only), _) => format!("1 attempt, {}", at(only)),
        _ => "no attempts".into(),
    }
}

/// Counts of what the trace checks covered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceCounts {
    /// Distinct commands applied.
    pub applied: usize,
    /// Acknowledged commands found applied as acknowledged.
    pub acked_verified: usize,
    /// Acknowledged commands whose index no trace covers (cannot be checked).
    pub acked_unverifiable: usize,
    /// Commands answered "not applied" and verified absent.
    pub not_applied_verified: usize,
    /// Trace lines read.
    pub lines: usize,
}

/// The trace checks of one group, against the writes its clients recorded.
pub fn check_group(
    group: &str,
    log: &GroupLog,
    writes: &[&WriteRecord],
    final_index: u64,
    anomalies: &mut Vec<Anomaly>,
) -> TraceCounts {
    let mut counts = TraceCounts {
        lines: log.lines,
        ..TraceCounts::default()
    };
    let mut push = |kind, detail: String| {
        anomalies.push(Anomaly {
            kind,
            group: group.to_string(),
            detail,
        })
    };
    let mut applied: HashMap<(&str, u64), Vec<(u64, u32)>> = HashMap::new();
    for ((index, pos), (c, _)) in &log.commands {
        if c.seq != 0 && c.is_application() {
            applied
                .entry((c.client.as_str(), c.seq))
                .or_default()
                .push((*index, *pos));
        }
    }
    counts.applied = applied.len();
    let mut twice = 0;
    for ((client, seq), at) in &applied {
        if at.len() > 1 {
            twice += 1;
            if twice <= 5 {
                let cmds: Vec<String> = at
                    .iter()
                    .map(|p| format!("{}.{}: {}", p.0, p.1, log.commands[p].0.cmd))
                    .collect();
                push(
                    AnomalyKind::AppliedTwice,
                    format!(
                        "{client}#{seq} applied {} times: {}",
                        at.len(),
                        cmds.join("; ")
                    ),
                );
            }
        }
    }
    let complete = (1..=final_index).all(|i| log.covered.contains(&i));
    for w in writes {
        let at = applied.get(&(w.client.as_str(), w.seq));
        let first = at.and_then(|a| a.first()).map(|p| (p, &log.commands[p].0));
        match (&w.outcome, w.answer()) {
            (WriteOutcome::Definite, Some(answer)) => {
                let (index, duplicate, reply) = match answer {
                    Answer::Ok {
                        index,
                        duplicate,
                        body,
                    } => (*index, *duplicate, Some(body)),
                    Answer::Rejected { index, .. } => (*index, false, None),
                    _ => (None, false, None),
                };
                match first {
                    Some(((i, pos), c)) => {
                        if !duplicate && index.is_some_and(|x| x != *i) {
                            push(
                                AnomalyKind::AckedNotApplied,
                                format!(
                                    "{}#{} was acknowledged at index {} but applied at {i}.{pos}",
                                    w.client,
                                    w.seq,
                                    index.unwrap_or(0)
                                ),
                            );
                        } else if let Some(reply) = reply.filter(|r| **r != c.detail) {
                            push(
                                AnomalyKind::ReplyMismatch,
                                format!(
                                    "{}#{} {}: the client got {reply:?} but {i}.{pos} applied it with {:?}",
                                    w.client, w.seq, w.body, c.detail
                                ),
                            );
                        } else {
                            counts.acked_verified += 1;
                        }
                    }
                    None => {
                        let index_covered = index.is_some_and(|i| log.covered.contains(&i));
                        if complete || (!duplicate && index_covered) {
                            push(
                                AnomalyKind::AckedNotApplied,
                                format!(
                                    "{}#{} {} was acknowledged ({answer:?}) but no trace shows it applied",
                                    w.client, w.seq, w.body
                                ),
                            );
                        } else {
                            counts.acked_unverifiable += 1;
                        }
                    }
                }
                // A session-table answer needs an earlier application, by
                // an earlier attempt: not one answered "not applied".
                let earlier = &w.attempts[..w.attempts.len().saturating_sub(1)];
                if duplicate
                    && !earlier.is_empty()
                    && earlier
                        .iter()
                        .all(|a| matches!(a.answer, Answer::NotApplied(_)))
                {
                    let said = summarize_attempts(&w.attempts);
                    push(
                        AnomalyKind::NotAppliedButApplied,
                        format!(
                            "{}#{} {}: every earlier attempt was answered \"not applied\", yet the retry was answered from the session table (so an earlier copy was applied{}); {said}",
                            w.client,
                            w.seq,
                            w.body,
                            first
                                .map(|((i, p), _)| format!(" at {i}.{p}"))
                                .unwrap_or_default()
                        ),
                    );
                }
            }
            (WriteOutcome::NotApplied, _) => match first {
                Some(((i, pos), _)) => {
                    push(
                        AnomalyKind::NotAppliedButApplied,
                        format!(
                            "{}#{} {} was answered \"not applied\" on every attempt but was applied at {i}.{pos}; {}",
                            w.client,
                            w.seq,
                            w.body,
                            summarize_attempts(&w.attempts)
                        ),
                    );
                }
                None => counts.not_applied_verified += 1,
            },
            _ => {}
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Attempt;

    fn line(index: u64, pos: u32, client: &str, seq: u64, detail: &str, dup: bool) -> String {
        serde_json::json!({
            "index": index, "pos": pos, "client": client, "seq": seq, "cmd": "c",
            "result": "ok", "detail": detail, "duplicate": dup, "hash": format!("h{index}.{pos}")
        })
        .to_string()
    }

    fn write_files(dir: &Path, files: &[(&str, Vec<String>)]) -> Vec<PathBuf> {
        files
            .iter()
            .map(|(name, lines)| {
                let p = dir.join(name);
                std::fs::write(&p, lines.join("\n") + "\n").unwrap();
                p
            })
            .collect()
    }

    fn acked(
        client: &str,
        seq: u64,
        index: u64,
        dup: bool,
        body: &str,
        before: &[Answer],
    ) -> WriteRecord {
        let mut attempts: Vec<Attempt> = before
            .iter()
            .map(|a| Attempt {
                replica: 0,
                sent: 0,
                answer: a.clone(),
            })
            .collect();
        attempts.push(Attempt {
            replica: 1,
            sent: 1,
            answer: Answer::Ok {
                index: Some(index),
                duplicate: dup,
                body: body.into(),
            },
        });
        WriteRecord {
            group: 0,
            client: client.into(),
            seq,
            body: "c".into(),
            invoked: 0,
            completed: Some(2),
            outcome: WriteOutcome::Definite,
            attempts,
        }
    }

    #[test]
    fn parses_every_kind_of_line_and_skips_noise() {
        assert_eq!(
            parse_line(r#"{"restored_snapshot":40,"hash":"ab"}"#),
            Some(TraceLine::Restored(40))
        );
        assert_eq!(
            parse_line(r#"{"index":3,"noop":true,"hash":"ab"}"#),
            Some(TraceLine::Noop(3, "ab".into()))
        );
        assert!(matches!(
            parse_line(&line(4, 1, "c", 2, "r", false)),
            Some(TraceLine::Command(4, 1, _))
        ));
        assert_eq!(parse_line(r#"{"index":4,"pos":1,"cli"#), None);
        assert_eq!(parse_line("idx=1.0 client=a#1"), None);
    }

    #[test]
    fn a_clean_log_passes() {
        let dir = tempfile::tempdir().unwrap();
        let l = vec![
            line(1, 0, "a", 1, "r1", false),
            line(1, 1, "b", 1, "r2", false),
            r#"{"index":2,"noop":true,"hash":"n2"}"#.to_string(),
            line(3, 0, "a", 1, "r1", true),
        ];
        let files = write_files(dir.path(), &[("x.1.trace", l.clone()), ("y.1.trace", l)]);
        let mut anomalies = Vec::new();
        let log = read_group("kv", &files, &mut anomalies);
        let writes = [
            acked("a", 1, 1, false, "r1", &[]),
            acked("a", 1, 3, true, "r1", &[Answer::Unknown("timeout".into())]),
            acked(
                "b",
                1,
                1,
                false,
                "r2",
                &[Answer::NotApplied("no_leader".into())],
            ),
        ];
        let refs: Vec<&WriteRecord> = writes.iter().collect();
        let counts = check_group("kv", &log, &refs, 3, &mut anomalies);
        assert!(anomalies.is_empty(), "{anomalies:#?}");
        assert_eq!(counts.applied, 2);
        assert_eq!(counts.acked_verified, 3);
    }

    #[test]
    fn divergence_double_application_and_lies_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_files(
            dir.path(),
            &[
                (
                    "x.1.trace",
                    vec![
                        line(1, 0, "a", 1, "r1", false),
                        line(2, 0, "a", 1, "r1", false),
                    ],
                ),
                ("y.1.trace", vec![line(1, 0, "a", 1, "OTHER", false)]),
            ],
        );
        let mut anomalies = Vec::new();
        let log = read_group("kv", &files, &mut anomalies);
        assert!(anomalies.iter().any(|a| a.kind == AnomalyKind::Divergence));
        let mut not_applied = acked("a", 1, 1, false, "r1", &[]);
        not_applied.outcome = WriteOutcome::NotApplied;
        not_applied.attempts[0].answer = Answer::NotApplied("not_ordered".into());
        not_applied.attempts.truncate(1);
        let writes = [
            not_applied,
            acked(
                "a",
                1,
                2,
                true,
                "r1",
                &[Answer::NotApplied("not_ordered".into())],
            ),
            acked("b", 7, 1, false, "x", &[]),
        ];
        let refs: Vec<&WriteRecord> = writes.iter().collect();
        check_group("kv", &log, &refs, 2, &mut anomalies);
        let kinds: BTreeSet<AnomalyKind> = anomalies.iter().map(|a| a.kind).collect();
        for k in [
            AnomalyKind::AppliedTwice,
            AnomalyKind::NotAppliedButApplied,
            AnomalyKind::AckedNotApplied,
        ] {
            assert!(kinds.contains(&k), "{k:?} missing from {anomalies:#?}");
        }
    }

    #[test]
    fn session_answers_and_stale_rejections_are_not_applications() {
        let stale = serde_json::json!({
            "index": 5, "pos": 0, "client": "a", "seq": 1, "cmd": "c", "result": "rejected",
            "detail": "stale sequence number 1 for client a: it is already at 2", "duplicate": false, "hash": "h"
        })
        .to_string();
        let Some(TraceLine::Command(_, _, c)) = parse_line(&stale) else {
            panic!()
        };
        assert!(!c.is_application());
        let Some(TraceLine::Command(_, _, c)) = parse_line(&line(1, 0, "a", 1, "r", true)) else {
            panic!()
        };
        assert!(!c.is_application());
    }
}
