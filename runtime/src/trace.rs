//! The replay trace: one stdout line per applied command, what `kubectl logs`
//! shows an operator.
//!
//! Why a separate writer thread: the apply loop is the protocol's critical
//! path and stdout can be a slow pipe (container runtimes, `kubectl logs -f`).
//! The loop formats lines into a buffer per log entry and hands it over a
//! channel; the writer thread batches into a `BufWriter` and flushes only when
//! it has nothing more to write.
//!
//! Handing text over never blocks: the apply loop runs on a tokio worker,
//! and a blocking send there would stall every task on that worker. Instead
//! the writer counts the bytes queued ([`TraceWriter::backlog`]); the apply
//! loop stops applying while the backlog is above [`TraceWriter::HIGH_WATER`]
//! and resumes when the writer catches up, so a stalled stdout slows the
//! replica rather than dropping lines: a trace with holes would defeat its
//! purpose.
//!
//! A write error is never swallowed: the writer records it and stops, and
//! [`TraceWriter::error`] reports it; the replica then goes not-ready with that
//! message (a replica never silently stops tracing).

use std::fmt::Write as _;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use dorado_core::{AppliedEntry, ChainHash, Outcome};

/// Trace line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `idx=12.0 client=web#7 cmd=... ok reply=... hash=...`
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Longest payload/reply excerpt in a human trace line.
const EXCERPT: usize = 60;

/// Formats applied entries as trace lines.
#[derive(Debug, Clone, Copy)]
pub struct TraceFormatter {
    format: LogFormat,
}

impl TraceFormatter {
    /// A formatter for `format`.
    pub fn new(format: LogFormat) -> Self {
        TraceFormatter { format }
    }

    /// Append the lines for one applied entry to `out`.
    pub fn entry(&self, e: &AppliedEntry, out: &mut String) {
        if let Some(u) = &e.upgrade {
            match self.format {
                LogFormat::Human => {
                    let _ = writeln!(
                        out,
                        "idx={} upgrade module {} -> {} {} hash={}",
                        e.index,
                        u.from,
                        u.to,
                        u.result.describe(),
                        e.hash.short()
                    );
                }
                LogFormat::Json => json_line(
                    out,
                    &JsonTraceLine::Upgrade {
                        from: u.from.clone(),
                        hash: e.hash.to_string(),
                        index: e.index,
                        result: u.result.describe(),
                        to: u.to.clone(),
                        upgrade: true,
                    },
                ),
            }
            return;
        }
        if e.noop {
            match self.format {
                LogFormat::Human => {
                    let _ = writeln!(out, "idx={} noop hash={}", e.index, e.hash.short());
                }
                LogFormat::Json => {
                    json_line(
                        out,
                        &JsonTraceLine::Noop {
                            hash: e.hash.to_string(),
                            index: e.index,
                            noop: true,
                        },
                    );
                }
            }
            return;
        }
        for c in &e.commands {
            let (client, seq) = match &c.client {
                Some(t) => (t.id.as_str(), t.seq),
                None => ("-", 0),
            };
            match self.format {
                LogFormat::Human => {
                    let _ = write!(out, "idx={}.{} client={client}", c.index, c.position);
                    if seq != 0 {
                        let _ = write!(out, "#{seq}");
                    }
                    let _ = write!(out, " cmd={}", excerpt(&c.payload));
                    match &c.outcome {
                        Outcome::Reply(r) => {
                            let _ = write!(out, " ok reply={}", excerpt(r));
                        }
                        Outcome::Rejected(reason) => {
                            let _ = write!(out, " rejected: {reason}");
                        }
                    }
                    if c.duplicate {
                        out.push_str(" (duplicate, not re-applied)");
                    }
                    let _ = writeln!(out, " hash={}", c.hash.short());
                }
                LogFormat::Json => {
                    let (result, detail) = match &c.outcome {
                        Outcome::Reply(r) => {
                            (TraceResult::Ok, String::from_utf8_lossy(r).into_owned())
                        }
                        Outcome::Rejected(reason) => (TraceResult::Rejected, reason.clone()),
                    };
                    json_line(
                        out,
                        &JsonTraceLine::Command(JsonTraceCommand {
                            client: client.to_string(),
                            cmd: String::from_utf8_lossy(&c.payload).into_owned(),
                            detail,
                            duplicate: c.duplicate,
                            hash: c.hash.to_string(),
                            index: c.index,
                            pos: c.position,
                            result,
                            seq,
                        }),
                    );
                }
            }
        }
    }

    /// A line announcing a snapshot restore.
    pub fn restored(&self, index: u64, hash: &ChainHash, out: &mut String) {
        match self.format {
            LogFormat::Human => {
                let _ = writeln!(out, "restored snapshot idx={index} hash={}", hash.short());
            }
            LogFormat::Json => {
                json_line(
                    out,
                    &JsonTraceLine::Restored {
                        hash: hash.to_string(),
                        restored_snapshot: index,
                    },
                );
            }
        }
    }
}

/// One line of the JSON replay trace (`--log-format json`). Fields are
/// declared in name order: the order they have always been printed in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum JsonTraceLine {
    /// A command of an entry, applied or answered from the session table.
    Command(JsonTraceCommand),
    /// A no-op entry (a new leader filling a gap).
    Noop {
        /// Hash chain value after it.
        hash: String,
        /// Entry index.
        index: u64,
        /// Always `true`.
        noop: bool,
    },
    /// A module upgrade entry: both module hashes and what happened.
    Upgrade {
        /// The module before the entry.
        from: String,
        /// Hash chain value after it.
        hash: String,
        /// Entry index.
        index: u64,
        /// `switched`, `already running` or `rejected: <reason>`.
        result: String,
        /// The module the entry asked for.
        to: String,
        /// Always `true`.
        upgrade: bool,
    },
    /// The replica restored a snapshot.
    Restored {
        /// Hash chain value at the snapshot.
        hash: String,
        /// The snapshot's index.
        restored_snapshot: u64,
    },
}

impl JsonTraceLine {
    /// Parse one JSON trace line; `None` for anything else (a human-format
    /// line, log noise, a line cut short by `kill -9`).
    pub fn parse(line: &str) -> Option<JsonTraceLine> {
        serde_json::from_str(line.trim()).ok()
    }
}

/// A command line of the JSON trace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JsonTraceCommand {
    /// Client id (`-` for none).
    pub client: String,
    /// The command, as text.
    pub cmd: String,
    /// The reply, or the rejection reason.
    pub detail: String,
    /// Answered from the session table, not applied again.
    pub duplicate: bool,
    /// Hash chain value after it.
    pub hash: String,
    /// Entry index.
    pub index: u64,
    /// Position in the entry's batch.
    pub pos: u32,
    /// Applied or rejected.
    pub result: TraceResult,
    /// Client seq (0 for none).
    pub seq: u64,
}

/// What became of a traced command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceResult {
    /// The state machine replied.
    Ok,
    /// The state machine rejected it deterministically.
    Rejected,
}

fn json_line(out: &mut String, line: &JsonTraceLine) {
    if let Ok(text) = serde_json::to_string(line) {
        out.push_str(&text);
        out.push('\n');
    }
}

/// Printable, single-line, bounded excerpt of bytes.
pub fn excerpt(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(EXCERPT + 3);
    for (n, ch) in s.chars().enumerate() {
        if n == EXCERPT {
            out.push('…');
            break;
        }
        out.push(if ch.is_control() { '·' } else { ch });
    }
    out
}

/// A trace line as parsed back by `dorado replay --trace` (either format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracedHash {
    /// Entry index.
    pub index: u64,
    /// Hash prefix or full hash as printed (hex).
    pub hash: String,
}

/// Extract `(index, hash)` from one trace line; `None` for lines that are not
/// entry lines (restore notices, log noise).
pub fn parse_trace_line(line: &str) -> Option<TracedHash> {
    let line = line.trim();
    if line.starts_with('{') {
        return match JsonTraceLine::parse(line)? {
            JsonTraceLine::Command(c) => Some(TracedHash {
                index: c.index,
                hash: c.hash,
            }),
            JsonTraceLine::Noop { index, hash, .. }
            | JsonTraceLine::Upgrade { index, hash, .. } => Some(TracedHash { index, hash }),
            JsonTraceLine::Restored { .. } => None,
        };
    }
    let idx = line.strip_prefix("idx=")?;
    let idx_end = idx.find(|c: char| !c.is_ascii_digit())?;
    let index = idx[..idx_end].parse().ok()?;
    let hash = line.rsplit_once(" hash=")?.1.to_string();
    Some(TracedHash { index, hash })
}

/// Why the trace can no longer be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    /// Writing or flushing the sink failed; lines from then on are lost.
    #[error(
        "cannot write the replay trace: {0}; this replica stops applying (a trace with holes cannot be replayed); fix the output and restart it"
    )]
    Write(String),
    /// The writer thread could not be started or has ended.
    #[error("the replay trace writer is not running: {0}; restart the replica")]
    WriterGone(String),
}

#[derive(Debug, Default)]
struct TraceState {
    /// Bytes handed over but not yet written.
    pending: AtomicUsize,
    /// The first failure; set once, then the writer stops.
    error: Mutex<Option<TraceError>>,
}

impl TraceState {
    fn fail(&self, e: TraceError) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
    }
}

/// Sends formatted trace text to a dedicated writer thread.
#[derive(Debug)]
pub struct TraceWriter {
    tx: Option<mpsc::Sender<String>>,
    thread: Option<JoinHandle<()>>,
    state: Arc<TraceState>,
}

impl TraceWriter {
    /// Above this many queued bytes the apply loop pauses (see the module docs).
    pub const HIGH_WATER: usize = 16 * 1024 * 1024;

    /// Write to stdout.
    pub fn stdout() -> Self {
        Self::new(std::io::stdout())
    }

    /// Write to any sink (tests use a file).
    pub fn new<W: Write + Send + 'static>(sink: W) -> Self {
        let (tx, rx) = mpsc::channel::<String>();
        let state = Arc::new(TraceState::default());
        let st = state.clone();
        let spawned = std::thread::Builder::new()
            .name("dorado-trace".into())
            .spawn(move || {
                let mut w = std::io::BufWriter::with_capacity(256 * 1024, sink);
                let fail = |e: std::io::Error| st.fail(TraceError::Write(e.to_string()));
                while let Ok(chunk) = rx.recv() {
                    let mut done = chunk.len();
                    if let Err(e) = w.write_all(chunk.as_bytes()) {
                        return fail(e);
                    }
                    while let Ok(more) = rx.try_recv() {
                        done += more.len();
                        if let Err(e) = w.write_all(more.as_bytes()) {
                            return fail(e);
                        }
                    }
                    if let Err(e) = w.flush() {
                        return fail(e);
                    }
                    st.pending.fetch_sub(done, Ordering::AcqRel);
                }
                if let Err(e) = w.flush() {
                    fail(e);
                }
            });
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                state.fail(TraceError::WriterGone(e.to_string()));
                None
            }
        };
        TraceWriter {
            tx: Some(tx),
            thread,
            state,
        }
    }

    /// Queue text (whole lines) for writing. Never blocks. After a failure
    /// the text is dropped and [`TraceWriter::error`] says why.
    pub fn write(&self, text: String) {
        if text.is_empty() || self.error().is_some() {
            return;
        }
        let Some(tx) = &self.tx else {
            self.state
                .fail(TraceError::WriterGone("written to after close".into()));
            return;
        };
        let len = text.len();
        self.state.pending.fetch_add(len, Ordering::AcqRel);
        if tx.send(text).is_err() {
            self.state.pending.fetch_sub(len, Ordering::AcqRel);
            self.state
                .fail(TraceError::WriterGone("the writer thread ended".into()));
        }
    }

    /// Bytes queued but not yet written.
    pub fn backlog(&self) -> usize {
        self.state.pending.load(Ordering::Acquire)
    }

    /// The failure that stopped the trace, if any.
    pub fn error(&self) -> Option<TraceError> {
        self.state
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Flush everything queued and stop the writer thread.
    pub fn close(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            self.state
                .fail(TraceError::WriterGone("the writer thread panicked".into()));
        }
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dorado_core::{AppliedCommand, ClientTag};

    fn entry() -> AppliedEntry {
        let h = ChainHash::GENESIS.noop(1);
        AppliedEntry {
            index: 5,
            noop: false,
            upgrade: None,
            hash: h,
            commands: vec![
                AppliedCommand {
                    index: 5,
                    position: 0,
                    client: Some(ClientTag {
                        id: "web".into(),
                        seq: 7,
                    }),
                    payload: b"{\"op\":\"put\"}\n".to_vec(),
                    outcome: Outcome::Reply(b"{\"ok\":true}".to_vec()),
                    duplicate: false,
                    hash: h,
                },
                AppliedCommand {
                    index: 5,
                    position: 1,
                    client: None,
                    payload: vec![b'x'; 100],
                    outcome: Outcome::Rejected("trap: boom".into()),
                    duplicate: false,
                    hash: h,
                },
            ],
        }
    }

    #[test]
    fn human_lines_carry_every_field_and_parse_back() {
        let mut out = String::new();
        TraceFormatter::new(LogFormat::Human).entry(&entry(), &mut out);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with(
            "idx=5.0 client=web#7 cmd={\"op\":\"put\"}· ok reply={\"ok\":true} hash="
        ));
        assert!(lines[1].contains("client=- "));
        assert!(
            lines[1].contains("…"),
            "long payloads are cut: {}",
            lines[1]
        );
        assert!(lines[1].contains("rejected: trap: boom"));
        let parsed = parse_trace_line(lines[0]).unwrap();
        assert_eq!(parsed.index, 5);
        assert_eq!(parsed.hash, ChainHash::GENESIS.noop(1).short());
    }

    #[test]
    fn json_lines_are_json_and_parse_back() {
        let mut out = String::new();
        TraceFormatter::new(LogFormat::Json).entry(&entry(), &mut out);
        for line in out.lines() {
            let parsed = JsonTraceLine::parse(line).unwrap();
            assert!(
                matches!(&parsed, JsonTraceLine::Command(c) if c.index == 5)
                    || matches!(&parsed, JsonTraceLine::Noop { index: 5, .. }),
                "{line}"
            );
            assert_eq!(parse_trace_line(line).unwrap().hash.len(), 64);
        }
        assert!(parse_trace_line("restored snapshot idx=3 hash=abc").is_none());
    }

    /// The JSON lines are byte for byte what they were when they were built
    /// with `serde_json::json!` (keys in name order).
    #[test]
    fn json_lines_keep_their_format() {
        let e = entry();
        let hash = e.hash.to_string();
        let mut out = String::new();
        let json = TraceFormatter::new(LogFormat::Json);
        json.entry(&e, &mut out);
        let golden = serde_json::json!({
            "index": 5, "pos": 0, "client": "web", "seq": 7, "cmd": "{\"op\":\"put\"}\n",
            "result": "ok", "detail": "{\"ok\":true}", "duplicate": false, "hash": hash,
        });
        assert_eq!(out.lines().next().unwrap(), golden.to_string());
        let second = JsonTraceLine::parse(out.lines().nth(1).unwrap()).unwrap();
        let JsonTraceLine::Command(c) = second else {
            panic!("{second:?}")
        };
        assert_eq!((c.client.as_str(), c.seq, c.pos), ("-", 0, 1));
        assert_eq!(
            (c.result, c.detail.as_str()),
            (TraceResult::Rejected, "trap: boom")
        );

        let mut out = String::new();
        json.entry(
            &AppliedEntry {
                noop: true,
                commands: vec![],
                ..entry()
            },
            &mut out,
        );
        let golden = serde_json::json!({"index": 5, "noop": true, "hash": hash});
        assert_eq!(out.trim_end(), golden.to_string());
        let mut out = String::new();
        json.restored(40, &e.hash, &mut out);
        let golden = serde_json::json!({"restored_snapshot": 40, "hash": hash});
        assert_eq!(out.trim_end(), golden.to_string());
        assert_eq!(
            JsonTraceLine::parse(&out),
            Some(JsonTraceLine::Restored {
                hash,
                restored_snapshot: 40
            })
        );
    }

    #[test]
    fn the_writer_delivers_everything_in_order_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let mut w = TraceWriter::new(std::fs::File::create(&path).unwrap());
        for i in 0..10_000 {
            w.write(format!("{i}\n"));
        }
        w.close();
        let text = std::fs::read_to_string(&path).unwrap();
        let nums: Vec<usize> = text.lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(nums, (0..10_000).collect::<Vec<_>>());
        assert_eq!(w.error(), None);
        assert_eq!(w.backlog(), 0);
    }

    /// A sink that accepts `ok` bytes, then fails.
    struct Failing {
        ok: usize,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.ok == 0 {
                return Err(std::io::Error::other("disk full"));
            }
            let n = buf.len().min(self.ok);
            self.ok -= n;
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_write_error_is_reported_not_swallowed() {
        let mut w = TraceWriter::new(Failing { ok: 10 });
        w.write("0123456789abcdef\n".into());
        w.close();
        let e = w.error().expect("the failure is reported");
        assert!(e.to_string().contains("disk full"), "{e}");
        assert!(
            e.to_string().contains("cannot write the replay trace"),
            "{e}"
        );
        // Writing after the failure neither blocks nor panics, and the first error stays.
        w.write("more\n".into());
        assert!(w.error().unwrap().to_string().contains("disk full"));
    }

    /// A sink that blocks until released: handing text over must not block.
    #[test]
    fn writing_never_blocks_while_the_sink_stalls() {
        let (release_tx, release_rx) = mpsc::channel::<()>();
        struct Stalled(mpsc::Receiver<()>);
        impl Write for Stalled {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.recv();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut w = TraceWriter::new(Stalled(release_rx));
        let line = "x".repeat(1023) + "\n";
        // Far more than any bounded channel held before (4096 chunks).
        for _ in 0..10_000 {
            w.write(line.clone());
        }
        assert!(w.backlog() > 0, "the stalled sink wrote nothing yet");
        drop(release_tx); // the sink now returns at once
        w.close();
        assert_eq!(w.error(), None);
        assert_eq!(w.backlog(), 0);
    }
}
