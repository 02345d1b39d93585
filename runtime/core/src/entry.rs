//! Binary encodings of what DORADO stores: log entries and snapshots.
//!
//! Why a hand-written format instead of serde: these bytes are hashed,
//! compared byte-for-byte by a leader retrying an append, and decoded from a
//! store that other processes write. The format must therefore be canonical
//! (one encoding per value), versioned, and decodable without trusting any
//! length field. Every decoder checks bounds and returns [`DecodeError`];
//! nothing here can panic on hostile input (fuzzed in `fuzz/`).
//!
//! All integers are big-endian.
//!
//! ```text
//! entry    = "DE" version:u8 kind:u8 (noop: nothing | batch: count:u32 command*)
//! command  = id_len:u16 id seq:u64 payload_len:u32 payload
//! snapshot = "DS" version:u8 index:u64 hash:[32] sha_len:u16 sha
//!            session_count:u32 session* state_len:u64 state
//! session  = id_len:u16 id seq:u64 last_index:u64 outcome
//! outcome  = 0:u8 len:u32 reply | 1:u8 len:u32 reason
//! ```

use crate::session::{Outcome, Session, Sessions};
use crate::store::Index;

const ENTRY_MAGIC: &[u8; 2] = b"DE";
const SNAPSHOT_MAGIC: &[u8; 2] = b"DS";
const VERSION: u8 = 1;
const KIND_NOOP: u8 = 0;
const KIND_BATCH: u8 = 1;

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
    #[error("unsupported format version {0} (this build reads version 1)")]
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
}

/// Longest client id accepted anywhere (HTTP header, entry, snapshot).
pub const MAX_CLIENT_ID: usize = 255;

impl Entry {
    /// Canonical bytes of this entry.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(ENTRY_MAGIC);
        out.push(VERSION);
        match self {
            Entry::Noop => out.push(KIND_NOOP),
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

    /// Size of [`Entry::encode`]'s output, without encoding.
    pub fn encoded_len(&self) -> usize {
        4 + match self {
            Entry::Noop => 0,
            Entry::Batch(cs) => 4 + cs.iter().map(Command::encoded_len).sum::<usize>(),
        }
    }

    /// Decode bytes produced by [`Entry::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        let mut r = Reader::new(bytes);
        r.magic(ENTRY_MAGIC, "DE")?;
        let entry = match r.u8("entry kind")? {
            KIND_NOOP => Entry::Noop,
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

    /// Number of commands (0 for a no-op).
    pub fn len(&self) -> usize {
        match self {
            Entry::Noop => 0,
            Entry::Batch(c) => c.len(),
        }
    }

    /// True for no-ops and empty batches.
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

    /// Bytes this command takes inside an encoded batch.
    pub fn encoded_len(&self) -> usize {
        2 + self.client.as_ref().map_or(0, |c| c.id.len()) + 8 + 4 + self.payload.len()
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
        out.push(VERSION);
        put_u64(&mut out, self.index);
        out.extend_from_slice(&self.hash);
        put_bytes16(&mut out, self.module_sha256.as_bytes())?;
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
        r.magic(SNAPSHOT_MAGIC, "DS")?;
        let index = r.u64("snapshot index")?;
        let mut hash = [0u8; 32];
        hash.copy_from_slice(r.take(32, "hash")?);
        let module_sha256 = r.string16("module sha256")?;
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

    fn magic(&mut self, magic: &[u8; 2], name: &'static str) -> Result<(), DecodeError> {
        if self.take(2, "magic")? != magic {
            return Err(DecodeError::BadMagic { expected: name });
        }
        match self.u8("version")? {
            VERSION => Ok(()),
            v => Err(DecodeError::Version(v)),
        }
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
        for e in [Entry::Noop, sample_batch(), Entry::Batch(vec![])] {
            let bytes = e.encode().unwrap();
            assert_eq!(bytes.len(), e.encoded_len());
            assert_eq!(Entry::decode(&bytes).unwrap(), e);
        }
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
        assert_eq!(Entry::decode(b"DE\x02\x00"), Err(DecodeError::Version(2)));
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
            sessions,
            state: b"state".to_vec(),
        };
        let bytes = s.encode().unwrap();
        assert_eq!(SnapshotData::decode(&bytes).unwrap(), s);
        for cut in 0..bytes.len() {
            assert!(SnapshotData::decode(&bytes[..cut]).is_err());
        }
    }
}
