//! Binary encodings of what DORADO stores: log entries and snapshots.
//!
//! Why a hand-written format instead of serde: these bytes are hashed,
//! compared byte-for-byte by a leader retrying an append, and decoded from a
//! store that other processes write. The format must therefore be canonical
//! (one encoding per value, see below for what that means for compressed
//! entries), versioned, and decodable without trusting any length field.
//! Every decoder checks bounds and returns [`DecodeError`]; nothing here can
//! panic on hostile input (fuzzed in `fuzz/`).
//!
//! All integers are big-endian.
//!
//! ```text
//! entry    = entry_v1 | entry_v2
//! entry_v1 = "DE" 1:u8 kind:u8 (noop: 0 | batch: 1 count:u32 command*
//!                               | upgrade: 2 to:[32])
//! entry_v2 = "DE" 2:u8 codec:u8 raw_len:u32 packed
//!            codec 1 = LZ4 block format; packed decompresses to exactly
//!            raw_len bytes, which are an entry_v1 (a compressed v1 entry)
//! command  = id_len:u16 id seq:u64 payload_len:u32 payload
//! snapshot = "DS" version:u8 index:u64 hash:[32] sha_len:u16 sha
//!            (version 2 only: prev_len:u16 previous_sha)
//!            session_count:u32 session* state_len:u64 state
//! session  = id_len:u16 id seq:u64 last_index:u64 outcome
//! outcome  = 0:u8 len:u32 reply | 1:u8 len:u32 reason
//! ```
//!
//! # Compressed entries (version 2)
//!
//! A batch of client commands repeats itself: client ids, JSON keys, the
//! state machine's command vocabulary. Every entry is written to etcd once and
//! sent to every watching replica, so its size is paid several times over.
//! [`Entry::encode`] therefore writes an entry whose version-1 encoding is
//! longer than [`COMPRESS_ABOVE`] bytes (and at most
//! [`MAX_DECOMPRESSED_ENTRY`]) as version 2, the version-1 bytes compressed
//! with LZ4 — **if** that is strictly shorter; otherwise (small entries,
//! no-ops, incompressible payloads, anything above the limit) it writes
//! version 1. [`Entry::decode`] reads both, forever: logs written before
//! version 2 existed stay readable (`fixtures/entry-v1/` holds such bytes).
//!
//! What "canonical" means with two versions:
//! - the encoder is deterministic: one entry, one byte string, in one build
//!   (what a leader retrying an append compares);
//! - a version-1 entry decodes only if it re-encodes (version 1) to exactly
//!   the same bytes, as before;
//! - a version-2 entry decodes only if it is what the encoder could have
//!   written: known codec, `raw_len` above [`COMPRESS_ABOVE`] and at most
//!   [`MAX_DECOMPRESSED_ENTRY`], strictly shorter than `raw_len`, the packed
//!   bytes decompress to exactly `raw_len` bytes, and those are a canonical
//!   version-1 entry. The packed bytes themselves are *not* required to be
//!   this build's compressor output: LZ4 allows many streams for the same
//!   data and another lz4_flex release may choose differently, and an upgrade
//!   must never make its own group's log unreadable. Two stored entries with
//!   the same value can thus differ in their packed bytes; everything
//!   replicated (the hash chain, sessions, snapshots) is computed from the
//!   decoded commands, never from entry bytes.
//! - Version-1 encodings of batches the encoder now writes as version 2 are
//!   accepted (they are the old logs).
//!
//! Which limit applies to which length: [`MAX_DECOMPRESSED_ENTRY`] bounds
//! `raw_len`, checked before anything is allocated, so a hostile entry cannot
//! make a replica allocate more than that. The leader's batch limit
//! (`LeaderConfig::max_batch_bytes`) is applied to the version-1 length
//! ([`Entry::uncompressed_len`], the sum of [`Command::encoded_len`]); what
//! is stored is never longer than that, and what a replica decompresses is
//! exactly that.

use crate::session::{Outcome, Session, Sessions};
use crate::store::Index;

const ENTRY_MAGIC: &[u8; 2] = b"DE";
const SNAPSHOT_MAGIC: &[u8; 2] = b"DS";
/// Entries: uncompressed.
const ENTRY_V1: u8 = 1;
/// Entries: a compressed version-1 entry.
const ENTRY_V2: u8 = 2;
/// Snapshots of a group that never upgraded its module.
const SNAPSHOT_V1: u8 = 1;
/// Snapshots that also name the module the group upgraded away from last.
const SNAPSHOT_V2: u8 = 2;
const KIND_NOOP: u8 = 0;
const KIND_BATCH: u8 = 1;
/// An ordered module upgrade (see `crate::upgrade`). Entries of this kind
/// are refused as corrupt by builds that predate upgrades: upgrade every
/// replica's runtime before proposing the first module upgrade.
const KIND_UPGRADE: u8 = 2;
/// Codec of a version-2 entry: the LZ4 block format (no frame, no checksum;
/// etcd already checksums what it stores).
const CODEC_LZ4: u8 = 1;
/// Magic, version, codec, raw_len.
const V2_HEADER: usize = 2 + 1 + 1 + 4;

/// Entries whose version-1 encoding is at most this long are never
/// compressed.
///
/// 256 bytes is about two commands of 100 bytes. Below it LZ4 finds little
/// to remove (there is hardly a repeat inside one command, and the version-2
/// header costs 5 bytes more), and a lightly loaded leader, whose batches hold
/// one or two commands, spends no time compressing. The measurement in
/// `docs/benchmarks.md` ("Entry compression") shows where it starts to pay.
pub const COMPRESS_ABOVE: usize = 256;

/// The largest `raw_len` a version-2 entry may declare; above it the encoder
/// writes version 1 and the decoder refuses the entry before allocating.
///
/// 1.5 MiB is etcd's default request limit, which no uncompressed entry
/// could ever exceed, and it is above the largest batch `dorado run` builds:
/// its leader closes a batch at `max(1 MiB, --max-command-bytes + 4096)`
/// bytes of version-1 encoding, and `--max-command-bytes` is at most
/// 1,400,000. Part of the format: raising it needs a new version, since an
/// older build would refuse the larger entries.
pub const MAX_DECOMPRESSED_ENTRY: usize = 1536 * 1024;

/// Who sent a command, for exactly-once delivery.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientTag {
    /// Client-chosen id (non-empty, at most 255 bytes).
    pub id: String,
    /// Sequence number within that client, starting at 1.
    pub seq: u64,
}

/// One client command inside a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// `None` for commands sent without `dorado-client-id` (at-least-once).
    pub client: Option<ClientTag>,
    /// The bytes handed to the state machine.
    pub payload: Vec<u8>,
}

/// What one log index holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Written by a new leader to fill a gap left by its predecessor.
    Noop,
    /// Client commands, applied in order.
    Batch(Vec<Command>),
    /// Switch the group to the module whose sha256 is `to` (64 lowercase hex
    /// digits): every replica switches at this index, or every replica
    /// rejects the switch (see [`crate::upgrade`]).
    Upgrade {
        /// sha256 of the new module.
        to: String,
    },
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end before the structure does.
    #[error("truncated {what}: needed {needed} more bytes at offset {offset}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// How many bytes were missing.
        needed: usize,
        /// Where.
        offset: usize,
    },
    /// The magic prefix is wrong: this is not a Dorado entry/snapshot.
    #[error("bad magic: expected {expected:?}")]
    BadMagic {
        /// The magic that was expected.
        expected: &'static str,
    },
    /// A format version this build does not know.
    #[error(
        "unsupported format version {0} (this build reads entry versions 1 and 2, snapshot versions 1 and 2)"
    )]
    Version(u8),
    /// An enum tag outside its range.
    #[error("invalid {what} tag {tag}")]
    BadTag {
        /// Which field.
        what: &'static str,
        /// The value found.
        tag: u8,
    },
    /// A string field is not UTF-8.
    #[error("{0} is not valid utf-8")]
    Utf8(&'static str),
    /// Bytes remain after the structure ended (a canonical encoding has none).
    #[error("{0} trailing bytes after the end")]
    Trailing(usize),
    /// Well-formed bytes that the encoder never produces (a client id over
    /// [`MAX_CLIENT_ID`] bytes, session ids out of order or repeated), so that
    /// decoding stays the exact inverse of encoding.
    #[error("not canonical: {0}")]
    NotCanonical(&'static str),
    /// A compressed entry declares a decompressed length above
    /// [`MAX_DECOMPRESSED_ENTRY`] (refused before allocating).
    #[error("compressed entry declares {len} bytes; at most {max} allowed")]
    TooLarge {
        /// The declared length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The packed bytes of a compressed entry are not a valid LZ4 block of
    /// the declared length.
    #[error("compressed entry is corrupt: {0}")]
    Decompress(String),
}

/// Why a value cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A client id longer than the format allows.
    #[error("client id is {0} bytes; at most 255 allowed")]
    ClientIdTooLong(usize),
    /// A payload larger than the format allows.
    #[error("payload of {0} bytes exceeds the 4 GiB field limit")]
    PayloadTooLarge(usize),
    /// A client tag with an empty id (a tag needs an id; untagged commands carry none).
    #[error("client id is empty; 1 to 255 bytes required")]
    EmptyClientId,
    /// An upgrade names something other than a module sha256.
    #[error("module hash {0:?} is not a sha256 (64 lowercase hex digits)")]
    BadModuleHash(String),
}

/// Longest client id accepted anywhere (HTTP header, entry, snapshot).
pub const MAX_CLIENT_ID: usize = 255;

impl Entry {
    /// Bytes to store for this entry: version 2 (compressed) for an entry
    /// whose version-1 encoding is longer than [`COMPRESS_ABOVE`] and at most
    /// [`MAX_DECOMPRESSED_ENTRY`] bytes when compression makes it shorter,
    /// version 1 otherwise. Never longer than [`Entry::uncompressed_len`];
    /// deterministic (the same entry gives the same bytes).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        Ok(compress(self.encode_uncompressed()?))
    }

    /// The version-1 (uncompressed) encoding: what [`Entry::encode`] writes
    /// for small entries, and what a version-2 entry decompresses to. For
    /// tests and tools that need the uncompressed form.
    pub fn encode_uncompressed(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(self.uncompressed_len());
        out.extend_from_slice(ENTRY_MAGIC);
        out.push(ENTRY_V1);
        match self {
            Entry::Noop => out.push(KIND_NOOP),
            Entry::Upgrade { to } => {
                out.push(KIND_UPGRADE);
                let raw = crate::upgrade::sha256_bytes(to)
                    .ok_or_else(|| EncodeError::BadModuleHash(to.clone()))?;
                out.extend_from_slice(&raw);
            }
            Entry::Batch(commands) => {
                out.push(KIND_BATCH);
                put_u32(&mut out, len_u32(commands.len())?);
                for c in commands {
                    put_client(&mut out, c.client.as_ref())?;
                    put_bytes32(&mut out, &c.payload)?;
                }
            }
        }
        Ok(out)
    }

    /// Size of [`Entry::encode_uncompressed`]'s output, without encoding: an
    /// upper bound of [`Entry::encode`]'s, and exactly what decoding a stored
    /// entry produces before it is parsed. Batch size limits apply to it.
    pub fn uncompressed_len(&self) -> usize {
        4 + match self {
            Entry::Noop => 0,
            Entry::Upgrade { .. } => 32,
            Entry::Batch(cs) => 4 + cs.iter().map(Command::encoded_len).sum::<usize>(),
        }
    }

    /// Decode bytes produced by [`Entry::encode`] (either version) or by
    /// [`Entry::encode_uncompressed`].
    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        let mut r = Reader::new(bytes);
        match r.magic(ENTRY_MAGIC, "DE")? {
            ENTRY_V1 => decode_v1(r),
            ENTRY_V2 => decode_v2(r),
            v => Err(DecodeError::Version(v)),
        }
    }

    /// Number of commands (0 for a no-op or an upgrade).
    pub fn len(&self) -> usize {
        match self {
            Entry::Noop | Entry::Upgrade { .. } => 0,
            Entry::Batch(c) => c.len(),
        }
    }

    /// True for no-ops, upgrades and empty batches.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Command {
    /// Check what encoding requires of one command (client id length, payload
    /// size), so that a batch of validated commands always encodes.
    pub fn validate(&self) -> Result<(), EncodeError> {
        if let Some(c) = &self.client {
            if c.id.is_empty() {
                return Err(EncodeError::EmptyClientId);
            }
            if c.id.len() > MAX_CLIENT_ID {
                return Err(EncodeError::ClientIdTooLong(c.id.len()));
            }
        }
        len_u32(self.payload.len()).map(|_| ())
    }

    /// Bytes this command takes inside a version-1 (uncompressed) batch;
    /// see [`Entry::uncompressed_len`].
    pub fn encoded_len(&self) -> usize {
        2 + self.client.as_ref().map_or(0, |c| c.id.len()) + 8 + 4 + self.payload.len()
    }
}

/// The rest of a version-1 entry, after its version byte.
fn decode_v1(mut r: Reader<'_>) -> Result<Entry, DecodeError> {
    let entry = match r.u8("entry kind")? {
        KIND_NOOP => Entry::Noop,
        KIND_UPGRADE => {
            let raw = r.take(32, "module hash")?;
            Entry::Upgrade {
                to: hex::encode(raw),
            }
        }
        KIND_BATCH => {
            let n = r.u32("command count")? as usize;
            // Each command needs at least 14 bytes; refuse counts the input cannot hold.
            let mut commands = Vec::with_capacity(n.min(r.remaining() / 14));
            for _ in 0..n {
                let client = r.client()?;
                let payload = r.bytes32("payload")?.to_vec();
                commands.push(Command { client, payload });
            }
            Entry::Batch(commands)
        }
        tag => {
            return Err(DecodeError::BadTag {
                what: "entry kind",
                tag,
            });
        }
    };
    r.finish()?;
    Ok(entry)
}

/// The rest of a version-2 entry, after its version byte. Every check that
/// needs no allocation comes first.
fn decode_v2(mut r: Reader<'_>) -> Result<Entry, DecodeError> {
    let codec = r.u8("codec")?;
    if codec != CODEC_LZ4 {
        return Err(DecodeError::BadTag {
            what: "codec",
            tag: codec,
        });
    }
    let raw_len = r.u32("uncompressed length")?;
    let raw_len_usize = usize::try_from(raw_len).unwrap_or(usize::MAX);
    if raw_len_usize > MAX_DECOMPRESSED_ENTRY {
        return Err(DecodeError::TooLarge {
            len: u64::from(raw_len),
            max: MAX_DECOMPRESSED_ENTRY,
        });
    }
    if raw_len_usize <= COMPRESS_ABOVE {
        return Err(DecodeError::NotCanonical(
            "compressed entry small enough to be stored uncompressed",
        ));
    }
    if r.buf.len() >= raw_len_usize {
        return Err(DecodeError::NotCanonical(
            "compressed entry no shorter than its uncompressed form",
        ));
    }
    let packed = r.take(r.remaining(), "packed entry")?;
    let mut raw = vec![0u8; raw_len_usize];
    let written = lz4_flex::block::decompress_into(packed, &mut raw)
        .map_err(|e| DecodeError::Decompress(e.to_string()))?;
    if written != raw_len_usize {
        return Err(DecodeError::Decompress(format!(
            "{written} bytes decompressed, {raw_len} declared"
        )));
    }
    let mut inner = Reader::new(&raw);
    match inner.magic(ENTRY_MAGIC, "DE")? {
        ENTRY_V1 => decode_v1(inner),
        _ => Err(DecodeError::NotCanonical(
            "a compressed entry must hold a version-1 entry",
        )),
    }
}

/// Version 2 for `raw` (a version-1 entry) if the rules in the module docs
/// allow it and it is strictly shorter; `raw` itself otherwise.
fn compress(raw: Vec<u8>) -> Vec<u8> {
    if raw.len() <= COMPRESS_ABOVE || raw.len() > MAX_DECOMPRESSED_ENTRY {
        return raw;
    }
    let Ok(raw_len) = u32::try_from(raw.len()) else {
        return raw;
    };
    let mut out = vec![0u8; V2_HEADER + lz4_flex::block::get_maximum_output_size(raw.len())];
    out[..2].copy_from_slice(ENTRY_MAGIC);
    out[2] = ENTRY_V2;
    out[3] = CODEC_LZ4;
    out[4..V2_HEADER].copy_from_slice(&raw_len.to_be_bytes());
    match lz4_flex::block::compress_into(&raw, &mut out[V2_HEADER..]) {
        Ok(n) if V2_HEADER + n < raw.len() => {
            out.truncate(V2_HEADER + n);
            out
        }
        // Incompressible (or, impossibly, a buffer too small): stay uncompressed.
        _ => raw,
    }
}

/// Everything a replica needs to resume after index `index` without the log
/// before it: the guest's state plus the host-side replicated state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotData {
    /// Last applied index the snapshot includes.
    pub index: Index,
    /// Hash chain value after `index`.
    pub hash: [u8; 32],
    /// sha256 of the module that produced `state`.
    pub module_sha256: String,
    /// The module the group upgraded away from last, if it ever upgraded
    /// (replicated: it decides which modules a starting replica may propose;
    /// see [`crate::upgrade::plan`]). Written as snapshot version 2; `None`
    /// is written as version 1, which builds before upgrades read.
    pub previous_module: Option<String>,
    /// Exactly-once session table.
    pub sessions: Sessions,
    /// The guest's own snapshot bytes.
    pub state: Vec<u8>,
}

impl SnapshotData {
    /// Canonical bytes of this snapshot.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(64 + self.state.len());
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.push(if self.previous_module.is_some() {
            SNAPSHOT_V2
        } else {
            SNAPSHOT_V1
        });
        put_u64(&mut out, self.index);
        out.extend_from_slice(&self.hash);
        put_bytes16(&mut out, self.module_sha256.as_bytes())?;
        if let Some(previous) = &self.previous_module {
            put_bytes16(&mut out, previous.as_bytes())?;
        }
        put_u32(&mut out, len_u32(self.sessions.len())?);
        for (id, s) in self.sessions.iter() {
            put_bytes16(&mut out, id.as_bytes())?;
            put_u64(&mut out, s.seq);
            put_u64(&mut out, s.last_index);
            match &s.outcome {
                Outcome::Reply(b) => {
                    out.push(0);
                    put_bytes32(&mut out, b)?;
                }
                Outcome::Rejected(reason) => {
                    out.push(1);
                    put_bytes32(&mut out, reason.as_bytes())?;
                }
            }
        }
        put_u64(&mut out, self.state.len() as u64);
        out.extend_from_slice(&self.state);
        Ok(out)
    }

    /// Decode bytes produced by [`SnapshotData::encode`].
    pub fn decode(bytes: &[u8]) -> Result<SnapshotData, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = match r.magic(SNAPSHOT_MAGIC, "DS")? {
            v @ (SNAPSHOT_V1 | SNAPSHOT_V2) => v,
            v => return Err(DecodeError::Version(v)),
        };
        let index = r.u64("snapshot index")?;
        let mut hash = [0u8; 32];
        hash.copy_from_slice(r.take(32, "hash")?);
        let module_sha256 = r.string16("module sha256")?;
        let previous_module = if version == SNAPSHOT_V2 {
            Some(r.string16("previous module sha256")?)
        } else {
            None
        };
        let n = r.u32("session count")? as usize;
        let mut sessions = Sessions::default();
        let mut previous: Option<String> = None;
        for _ in 0..n {
            let id = r.string16("session id")?;
            // The encoder writes sessions in id order; anything else would
            // decode to a table that re-encodes to different bytes.
            if previous.as_ref().is_some_and(|p| *p >= id) {
                return Err(DecodeError::NotCanonical(
                    "session ids out of order or repeated",
                ));
            }
            previous = Some(id.clone());
            let seq = r.u64("session seq")?;
            let last_index = r.u64("session index")?;
            let outcome = match r.u8("outcome tag")? {
                0 => Outcome::Reply(r.bytes32("reply")?.to_vec()),
                1 => Outcome::Rejected(
                    String::from_utf8(r.bytes32("reason")?.to_vec())
                        .map_err(|_| DecodeError::Utf8("rejection reason"))?,
                ),
                tag => {
                    return Err(DecodeError::BadTag {
                        what: "outcome",
                        tag,
                    });
                }
            };
            sessions.insert(
                id,
                Session {
                    seq,
                    last_index,
                    outcome,
                },
            );
        }
        let len = r.u64("state length")?;
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated {
            what: "state",
            needed: usize::MAX,
            offset: r.pos,
        })?;
        let state = r.take(len, "state")?.to_vec();
        r.finish()?;
        Ok(SnapshotData {
            index,
            hash,
            module_sha256,
            previous_module,
            sessions,
            state,
        })
    }
}

fn len_u32(n: usize) -> Result<u32, EncodeError> {
    u32::try_from(n).map_err(|_| EncodeError::PayloadTooLarge(n))
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_bytes16(out: &mut Vec<u8>, b: &[u8]) -> Result<(), EncodeError> {
    let n = u16::try_from(b.len()).map_err(|_| EncodeError::ClientIdTooLong(b.len()))?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) -> Result<(), EncodeError> {
    put_u32(out, len_u32(b.len())?);
    out.extend_from_slice(b);
    Ok(())
}

fn put_client(out: &mut Vec<u8>, client: Option<&ClientTag>) -> Result<(), EncodeError> {
    match client {
        None => {
            out.extend_from_slice(&0u16.to_be_bytes());
            put_u64(out, 0);
        }
        Some(c) => {
            if c.id.is_empty() {
                return Err(EncodeError::EmptyClientId);
            }
            if c.id.len() > MAX_CLIENT_ID {
                return Err(EncodeError::ClientIdTooLong(c.id.len()));
            }
            put_bytes16(out, c.id.as_bytes())?;
            put_u64(out, c.seq);
        }
    }
    Ok(())
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                what,
                needed: n - self.remaining(),
                offset: self.pos,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Check the magic; returns the version byte that follows it.
    fn magic(&mut self, magic: &[u8; 2], name: &'static str) -> Result<u8, DecodeError> {
        if self.take(2, "magic")? != magic {
            return Err(DecodeError::BadMagic { expected: name });
        }
        self.u8("version")
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn bytes32(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    fn string16(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let n = self.u16(what)? as usize;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Utf8(what))
    }

    fn client(&mut self) -> Result<Option<ClientTag>, DecodeError> {
        let id = self.string16("client id")?;
        if id.len() > MAX_CLIENT_ID {
            return Err(DecodeError::NotCanonical("client id longer than 255 bytes"));
        }
        let seq = self.u64("client seq")?;
        if id.is_empty() {
            if seq != 0 {
                return Err(DecodeError::BadTag {
                    what: "anonymous command seq",
                    tag: 1,
                });
            }
            return Ok(None);
        }
        Ok(Some(ClientTag { id, seq }))
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_batch() -> Entry {
        Entry::Batch(vec![
            Command {
                client: Some(ClientTag {
                    id: "c1".into(),
                    seq: 7,
                }),
                payload: b"{\"op\":\"put\"}".to_vec(),
            },
            Command {
                client: None,
                payload: vec![],
            },
        ])
    }

    #[test]
    fn entries_round_trip_and_report_their_length() {
        let upgrade = Entry::Upgrade {
            to: "0f".repeat(32),
        };
        for e in [Entry::Noop, sample_batch(), Entry::Batch(vec![]), upgrade] {
            let bytes = e.encode().unwrap();
            assert_eq!(bytes.len(), e.uncompressed_len());
            assert_eq!(bytes, e.encode_uncompressed().unwrap(), "small: version 1");
            assert_eq!(Entry::decode(&bytes).unwrap(), e);
        }
    }

    #[test]
    fn upgrades_name_a_sha256_and_nothing_else() {
        for bad in ["", "0F".repeat(32).as_str(), &"0f".repeat(31)] {
            assert_eq!(
                Entry::Upgrade { to: bad.into() }.encode(),
                Err(EncodeError::BadModuleHash(bad.into()))
            );
        }
        let bytes = Entry::Upgrade {
            to: "0f".repeat(32),
        }
        .encode()
        .unwrap();
        assert_eq!(&bytes[..4], b"DE\x01\x02");
        assert_eq!(bytes.len(), 36);
        for cut in 0..bytes.len() {
            assert!(
                Entry::decode(&bytes[..cut]).is_err(),
                "prefix {cut} decoded"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Entry::decode(&longer), Err(DecodeError::Trailing(1)));
    }

    #[test]
    fn every_truncation_of_an_entry_is_an_error() {
        let bytes = sample_batch().encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(
                Entry::decode(&bytes[..cut]).is_err(),
                "prefix {cut} decoded"
            );
        }
    }

    #[test]
    fn hostile_entries_are_refused_without_panicking() {
        assert_eq!(
            Entry::decode(b"XX\x01\x00"),
            Err(DecodeError::BadMagic { expected: "DE" })
        );
        assert_eq!(Entry::decode(b"DE\x03\x00"), Err(DecodeError::Version(3)));
        assert_eq!(Entry::decode(b"DE\x00\x00"), Err(DecodeError::Version(0)));
        assert!(matches!(
            Entry::decode(b"DE\x01\x07"),
            Err(DecodeError::BadTag { tag: 7, .. })
        ));
        assert_eq!(
            Entry::decode(b"DE\x01\x00\x00"),
            Err(DecodeError::Trailing(1))
        );
        // A count of 4 billion commands in a 12-byte input must not allocate or loop long.
        assert!(Entry::decode(b"DE\x01\x01\xff\xff\xff\xff\x00\x00").is_err());
    }

    /// The log in `fixtures/entry-v1/` (written by the version-1 encoder
    /// before version 2 existed): four entries for the `kv` example.
    fn legacy_log() -> Vec<Entry> {
        let tagged = |id: &str, seq: u64, payload: String| Command {
            client: Some(ClientTag { id: id.into(), seq }),
            payload: payload.into_bytes(),
        };
        let big = (1..=120u64)
            .map(|seq| {
                let key = format!("k{:08}", seq % 40);
                let base = format!(r#"{{"op":"put","key":"{key}","value":""}}"#);
                let value = format!("v{seq}-{}", "legacy entry ".repeat(8));
                let value = &value[..100 - base.len()];
                tagged(
                    "legacy-writer",
                    seq,
                    format!(r#"{{"op":"put","key":"{key}","value":"{value}"}}"#),
                )
            })
            .collect();
        vec![
            Entry::Batch(big),
            Entry::Noop,
            Entry::Batch(vec![
                Command {
                    client: None,
                    payload: br#"{"op":"put","key":"anon","value":"a"}"#.to_vec(),
                },
                tagged(
                    "legacy-writer",
                    121,
                    r#"{"op":"delete","key":"k00000003"}"#.into(),
                ),
                tagged(
                    "legacy-writer",
                    120,
                    r#"{"op":"put","key":"retried","value":"x"}"#.into(),
                ),
            ]),
            Entry::Batch(vec![tagged("other", 1, r#"{"op":"nope"}"#.into())]),
        ]
    }

    const LEGACY_BYTES: [&[u8]; 4] = [
        include_bytes!("../fixtures/entry-v1/1.bin"),
        include_bytes!("../fixtures/entry-v1/2.bin"),
        include_bytes!("../fixtures/entry-v1/3.bin"),
        include_bytes!("../fixtures/entry-v1/4.bin"),
    ];

    /// Version-1 bytes checked in before version 2 existed still decode to
    /// the same entries, and the version-1 encoder still writes exactly them.
    #[test]
    fn checked_in_version_1_entries_still_decode() {
        for ((bytes, entry), i) in LEGACY_BYTES.iter().zip(legacy_log()).zip(1..) {
            assert_eq!(bytes[2], 1, "fixture {i} is version 1");
            assert_eq!(Entry::decode(bytes).as_ref(), Ok(&entry), "fixture {i}");
            assert_eq!(entry.encode_uncompressed().unwrap(), *bytes, "fixture {i}");
            assert_eq!(entry.uncompressed_len(), bytes.len());
        }
        // Today's encoder compresses the big batch and keeps the rest as they were.
        let now: Vec<_> = legacy_log().iter().map(|e| e.encode().unwrap()).collect();
        assert_eq!(now[0][..3], *b"DE\x02");
        assert!(now[0].len() < LEGACY_BYTES[0].len() / 2, "{}", now[0].len());
        assert_eq!(now[1..], LEGACY_BYTES[1..]);
    }

    /// The hash chain is over commands, not bytes: a log read as version 1
    /// and the same log read as version 2 apply to the same state and chain.
    #[test]
    fn version_1_and_version_2_encodings_give_equal_entries_and_hash_chains() {
        use crate::apply::ReplicaState;
        use crate::apply::testing::ListMachine;
        let replay = |log: &[Vec<u8>]| {
            let mut state = ReplicaState::new(0, String::new());
            let mut sm = ListMachine::default();
            let mut hashes = Vec::new();
            for (i, bytes) in log.iter().enumerate() {
                let entry = Entry::decode(bytes).unwrap();
                hashes.push(state.apply(i as u64 + 1, &entry, &mut sm).unwrap().hash);
            }
            (state, sm, hashes)
        };
        let v1: Vec<Vec<u8>> = LEGACY_BYTES.iter().map(|b| b.to_vec()).collect();
        let now: Vec<Vec<u8>> = legacy_log().iter().map(|e| e.encode().unwrap()).collect();
        assert_ne!(v1, now);
        for (a, b) in v1.iter().zip(&now) {
            assert_eq!(Entry::decode(a), Entry::decode(b));
        }
        let (s1, m1, h1) = replay(&v1);
        let (s2, m2, h2) = replay(&now);
        assert_eq!(h1, h2);
        assert_eq!((s1, m1), (s2, m2));
    }

    /// A batch of `n` commands of `size`-byte payloads, `pseudo_random`
    /// payloads from a fixed xorshift (incompressible) or repeated text.
    fn batch(n: usize, size: usize, pseudo_random: bool) -> Entry {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        Entry::Batch(
            (0..n)
                .map(|i| Command {
                    client: Some(ClientTag {
                        id: "client".into(),
                        seq: i as u64 + 1,
                    }),
                    payload: (0..size)
                        .map(|j| {
                            if pseudo_random {
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                x as u8
                            } else {
                                b"put key value "[j % 14]
                            }
                        })
                        .collect(),
                })
                .collect(),
        )
    }

    #[test]
    fn only_big_compressible_entries_are_compressed() {
        // 8 + 20 + 228 = 256 bytes: at the threshold, version 1.
        let at = batch(1, 228, false);
        assert_eq!(at.uncompressed_len(), COMPRESS_ABOVE);
        assert_eq!(at.encode().unwrap(), at.encode_uncompressed().unwrap());
        // One byte more: version 2, and shorter.
        let above = batch(1, 229, false);
        let bytes = above.encode().unwrap();
        assert_eq!(bytes[..4], *b"DE\x02\x01");
        assert_eq!(bytes[4..8], 257u32.to_be_bytes());
        assert!(bytes.len() < 257);
        assert_eq!(Entry::decode(&bytes).unwrap(), above);
        // Incompressible: version 1, whatever the size. (The command headers
        // of a batch of many random payloads still compress a little.)
        let random = batch(1, 20_000, true);
        let bytes = random.encode().unwrap();
        assert!(bytes == random.encode_uncompressed().unwrap(), "compressed");
        // Above the limit: version 1 (and decodable, however big).
        let huge = batch(1, MAX_DECOMPRESSED_ENTRY, false);
        let bytes = huge.encode().unwrap();
        assert_eq!(bytes[2], 1);
        assert_eq!(Entry::decode(&bytes).unwrap(), huge);
        // Just below it: version 2.
        let most = batch(1, MAX_DECOMPRESSED_ENTRY - 28, false);
        assert_eq!(most.uncompressed_len(), MAX_DECOMPRESSED_ENTRY);
        let bytes = most.encode().unwrap();
        assert_eq!(bytes[2], 2);
        assert_eq!(Entry::decode(&bytes).unwrap(), most);
        // Deterministic.
        assert!(bytes == most.encode().unwrap(), "two encodings differ");
    }

    /// A version-2 entry around `raw`, compressed with lz4_flex directly.
    fn v2(raw: &[u8], declared: u32) -> Vec<u8> {
        let mut out = b"DE\x02\x01".to_vec();
        out.extend_from_slice(&declared.to_be_bytes());
        out.extend_from_slice(&lz4_flex::block::compress(raw));
        out
    }

    #[test]
    fn non_canonical_or_hostile_compressed_entries_are_refused() {
        let big = batch(10, 100, false);
        let raw = big.encode_uncompressed().unwrap();
        let len = raw.len() as u32;
        assert_eq!(Entry::decode(&v2(&raw, len)), Ok(big.clone()));

        // A length no replica would ever allocate is refused from 8 bytes.
        assert_eq!(
            Entry::decode(b"DE\x02\x01\xff\xff\xff\xff"),
            Err(DecodeError::TooLarge {
                len: u64::from(u32::MAX),
                max: MAX_DECOMPRESSED_ENTRY
            })
        );
        let over = MAX_DECOMPRESSED_ENTRY as u32 + 1;
        assert!(matches!(
            Entry::decode(&v2(&raw, over)),
            Err(DecodeError::TooLarge { .. })
        ));
        // Unknown codec.
        let mut bad = v2(&raw, len);
        bad[3] = 2;
        assert_eq!(
            Entry::decode(&bad),
            Err(DecodeError::BadTag {
                what: "codec",
                tag: 2
            })
        );
        // Small entries are stored uncompressed: a compressed one is not canonical.
        let small = sample_batch().encode_uncompressed().unwrap();
        assert!(matches!(
            Entry::decode(&v2(&small, small.len() as u32)),
            Err(DecodeError::NotCanonical(_))
        ));
        // A compressed entry no shorter than the uncompressed one is not canonical.
        let random = batch(1, 400, true).encode_uncompressed().unwrap();
        let packed = v2(&random, random.len() as u32);
        assert!(packed.len() >= random.len());
        assert!(matches!(
            Entry::decode(&packed),
            Err(DecodeError::NotCanonical(_))
        ));
        // The declared length must be exact.
        for declared in [len - 1, len + 1] {
            assert!(matches!(
                Entry::decode(&v2(&raw, declared)),
                Err(DecodeError::Decompress(_))
            ));
        }
        // What it decompresses to must be a canonical version-1 entry.
        let mut inner_v2 = raw.clone();
        inner_v2[2] = 2;
        assert!(matches!(
            Entry::decode(&v2(&inner_v2, len)),
            Err(DecodeError::NotCanonical(_))
        ));
        let mut trailing = raw.clone();
        trailing.push(0);
        assert_eq!(
            Entry::decode(&v2(&trailing, len + 1)),
            Err(DecodeError::Trailing(1))
        );
        let mut long_id = b"DE\x01\x01\x00\x00\x00\x01\x01\x00".to_vec();
        long_id.extend_from_slice(&[b'x'; 256]);
        long_id.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(
            Entry::decode(&v2(&long_id, long_id.len() as u32)),
            Err(DecodeError::NotCanonical("client id longer than 255 bytes"))
        );
    }

    /// What the fuzz target checks, over every truncation and every one-byte
    /// change of a compressed entry: no panic, and whatever still decodes
    /// round-trips.
    #[test]
    fn damaged_compressed_entries_never_panic() {
        let bytes = batch(4, 100, false).encode().unwrap();
        assert_eq!(bytes[2], 2);
        for cut in 0..bytes.len() {
            assert!(
                Entry::decode(&bytes[..cut]).is_err(),
                "prefix {cut} decoded"
            );
        }
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                if let Ok(e) = Entry::decode(&b) {
                    assert!(b.len() < e.uncompressed_len());
                    assert_eq!(Entry::decode(&e.encode().unwrap()), Ok(e));
                }
            }
        }
    }

    /// Found by `fuzz/fuzz_targets/entry_decode.rs`: a 256-byte client id
    /// decoded, but the encoder refuses it, so decode was not the inverse of
    /// encode.
    #[test]
    fn fuzz_regression_overlong_client_id_is_refused() {
        let mut bytes = b"DE\x01\x01\x00\x00\x00\x01\x01\x00".to_vec();
        bytes.extend_from_slice(&[b'x'; 256]);
        bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(
            Entry::decode(&bytes),
            Err(DecodeError::NotCanonical("client id longer than 255 bytes"))
        );
    }

    /// Found by `fuzz/fuzz_targets/snapshot_decode.rs`: sessions out of id
    /// order (or repeated) decoded into a sorted table, which re-encoded to
    /// different bytes; two replicas could hold different snapshot bytes for
    /// one state.
    #[test]
    fn fuzz_regression_snapshot_sessions_must_be_in_id_order() {
        let session = |id: &str| {
            let mut b = vec![0, id.len() as u8];
            b.extend_from_slice(id.as_bytes());
            b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]); // seq
            b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2]); // last index
            b.extend_from_slice(&[0, 0, 0, 0, 0]); // reply, empty
            b
        };
        let snapshot = |ids: &[&str]| {
            let mut b = b"DS\x01".to_vec();
            b.extend_from_slice(&[0; 8]); // index
            b.extend_from_slice(&[0; 32]); // hash
            b.extend_from_slice(&[0, 0]); // module sha256 (empty)
            b.extend_from_slice(&(ids.len() as u32).to_be_bytes());
            for id in ids {
                b.extend_from_slice(&session(id));
            }
            b.extend_from_slice(&[0; 8]); // empty state
            b
        };
        let sorted = snapshot(&["a", "b"]);
        let decoded = SnapshotData::decode(&sorted).unwrap();
        assert_eq!(decoded.encode().unwrap(), sorted);
        for bad in [snapshot(&["b", "a"]), snapshot(&["a", "a"])] {
            assert_eq!(
                SnapshotData::decode(&bad),
                Err(DecodeError::NotCanonical(
                    "session ids out of order or repeated"
                ))
            );
        }
    }

    #[test]
    fn client_ids_must_fit() {
        let e = Entry::Batch(vec![Command {
            client: Some(ClientTag {
                id: "x".repeat(256),
                seq: 1,
            }),
            payload: vec![],
        }]);
        assert_eq!(e.encode(), Err(EncodeError::ClientIdTooLong(256)));
        let Entry::Batch(cs) = &e else { unreachable!() };
        assert_eq!(cs[0].validate(), Err(EncodeError::ClientIdTooLong(256)));
        let empty = Command {
            client: Some(ClientTag {
                id: String::new(),
                seq: 1,
            }),
            payload: vec![],
        };
        assert_eq!(empty.validate(), Err(EncodeError::EmptyClientId));
        assert_eq!(
            Entry::Batch(vec![empty]).encode(),
            Err(EncodeError::EmptyClientId)
        );
        let fine = Command {
            client: Some(ClientTag {
                id: "x".repeat(255),
                seq: 1,
            }),
            payload: vec![1; 10],
        };
        assert_eq!(fine.validate(), Ok(()));
        assert!(Entry::Batch(vec![fine]).encode().is_ok());
    }

    #[test]
    fn snapshots_round_trip_and_truncations_fail() {
        let mut sessions = Sessions::default();
        sessions.insert(
            "a".into(),
            Session {
                seq: 3,
                last_index: 9,
                outcome: Outcome::Reply(b"ok".to_vec()),
            },
        );
        sessions.insert(
            "b".into(),
            Session {
                seq: 1,
                last_index: 2,
                outcome: Outcome::Rejected("trap".into()),
            },
        );
        let s = SnapshotData {
            index: 42,
            hash: [7; 32],
            module_sha256: "ab".repeat(32),
            previous_module: None,
            sessions,
            state: b"state".to_vec(),
        };
        let bytes = s.encode().unwrap();
        assert_eq!(
            bytes[2], SNAPSHOT_V1,
            "a group that never upgraded writes version 1"
        );
        assert_eq!(SnapshotData::decode(&bytes).unwrap(), s);
        for cut in 0..bytes.len() {
            assert!(SnapshotData::decode(&bytes[..cut]).is_err());
        }
        let upgraded = SnapshotData {
            previous_module: Some("cd".repeat(32)),
            ..s
        };
        let bytes = upgraded.encode().unwrap();
        assert_eq!(bytes[2], SNAPSHOT_V2);
        assert_eq!(SnapshotData::decode(&bytes).unwrap(), upgraded);
        for cut in 0..bytes.len() {
            assert!(SnapshotData::decode(&bytes[..cut]).is_err());
        }
    }
}
