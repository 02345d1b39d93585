//! Store adapters: the shared memory DORADO orders commands through.
//!
//! The protocol core only knows the [`dorado_core::Store`] trait. This module
//! holds its two implementations and everything they must agree on, so that
//! the conformance suite (`runtime/tests/store_conformance.rs`) can hold both
//! to the same rules:
//!
//! - [`EtcdStore`] (production): etcd v3, every safety check evaluated by etcd
//!   inside one `Txn`.
//! - [`MemoryStore`] (unit tests, `dorado-bench demo` without an etcd binary): the
//!   same key space and the same semantics in one process.
//!
//! # Key space
//!
//! One prefix per group, `/dorado/v1/<namespace>/<group>/`, then:
//!
//! | key | value |
//! |---|---|
//! | `meta` | JSON [`dorado_core::Meta`], create-if-absent |
//! | `leader` | JSON [`dorado_core::LeaderRecord`], bound to the leader's lease |
//! | `log/<index, 20 digits>` | one log entry (a batch), written once under the fence |
//! | `snap/<index, 20 digits>/chunks-<writer>/<n, 8 digits>` | snapshot chunks of one writer |
//! | `snap/<index, 20 digits>/manifest` | JSON [`SnapshotManifest`], written **last** |
//! | `members/<replica>` | JSON [`dorado_core::MemberRecord`], bound to the member's lease |
//! | `modules/<sha256>/chunks-<writer>/<n, 8 digits>` | chunks of a wasm module, by content hash |
//! | `modules/<sha256>/manifest` | JSON [`SnapshotManifest`] (index 0), written **last**, never deleted |
//!
//! Indexes are zero padded to 20 digits (the width of `u64::MAX`) so that the
//! byte order of keys is the numeric order of indexes; range reads, range
//! deletes and "highest key" queries rely on it.
//!
//! # Why snapshots look like this
//!
//! etcd refuses requests above 1.5 MiB, so a snapshot is written as several
//! chunks ([`SNAPSHOT_CHUNK_SIZE`]) and only becomes visible when its manifest
//! exists. The manifest is created only if absent and carries the chunk count,
//! total length and sha256, checked on every read. Each writer puts its chunks
//! under its own random `chunks-<writer>/` directory, so two replicas that
//! snapshot the same index concurrently can never interleave chunks: the first
//! manifest wins and the loser deletes its chunks. A writer that crashes
//! between chunks and manifest leaves chunks nobody reads; they are deleted
//! with the rest of the index by `delete_snapshots_below`.
//!
//! Modules are stored the same way, keyed by their sha256, so that every
//! module a group's history ever ran can be loaded by any replica and by
//! `dorado replay` (a replica catching up across an upgrade may hold only the
//! newer module in its ConfigMap). Both adapters refuse bytes whose sha256
//! is not their key, on write and on read. They are never deleted: a module
//! is small next to the history it explains.

pub mod etcd;
pub mod memory;
pub mod tls;

use dorado_core::{Index, StoreError, StoreResult};
use futures::stream::{self, BoxStream, Stream, StreamExt};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

pub use etcd::{EtcdConnectError, EtcdStore, EtcdStoreOptions};
pub use memory::MemoryStore;
pub use tls::{ClientIdentityFiles, EtcdTls, EtcdTlsArgs, EtcdTlsError, TlsMaterial};

/// Root of every Dorado key, versioned so a future layout can live next to it.
pub const KEY_ROOT: &str = "/dorado/v1/";

/// Size of one snapshot chunk: a third of etcd's default 1.5 MiB request limit,
/// leaving ample room for the key, the gRPC framing and a raised-but-unknown
/// server configuration.
pub const SNAPSHOT_CHUNK_SIZE: usize = 512 * 1024;

/// Width of a zero-padded index in keys (`u64::MAX` has 20 digits).
pub const INDEX_WIDTH: usize = 20;

/// Check a namespace, group or replica name before it becomes part of a key.
///
/// Names must be non-empty and must not contain `/` (it would escape the
/// group's prefix or the `members/` directory) or control characters.
pub fn validate_name(what: &str, name: &str) -> StoreResult<()> {
    let reason = if name.is_empty() {
        Some("must not be empty")
    } else if name.contains('/') {
        Some("must not contain '/'")
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if name == "." || name == ".." {
        Some("must not be '.' or '..'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StoreError::InvalidArgument(format!(
            "invalid {what} name {name:?}: {reason}"
        ))),
        None => Ok(()),
    }
}

/// `index` zero padded to [`INDEX_WIDTH`] digits.
pub fn format_index(index: Index) -> String {
    format!("{index:0width$}", width = INDEX_WIDTH)
}

/// Parse a zero-padded index as written by [`format_index`].
pub fn parse_index(digits: &str) -> Option<Index> {
    if digits.len() != INDEX_WIDTH || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The keys of one group: `/dorado/v1/<namespace>/<group>/...`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySpace {
    prefix: String,
}

impl KeySpace {
    /// Key space of `group` in `namespace`; both names are validated.
    pub fn new(namespace: &str, group: &str) -> StoreResult<Self> {
        validate_name("namespace", namespace)?;
        validate_name("group", group)?;
        Ok(Self {
            prefix: format!("{KEY_ROOT}{namespace}/{group}/"),
        })
    }

    /// The group prefix, ending in `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Absolute key of a key relative to the group prefix.
    pub fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.prefix)
    }

    /// The part of `key` after the group prefix (the key itself if it lies
    /// outside the group), for error messages.
    pub fn relative<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix(self.prefix.as_str()).unwrap_or(key)
    }

    /// Like [`Self::relative`], for raw key bytes.
    pub fn relative_lossy(&self, key: &[u8]) -> String {
        self.relative(&String::from_utf8_lossy(key)).to_owned()
    }

    /// `meta`.
    pub fn meta(&self) -> String {
        self.key("meta")
    }

    /// `leader`.
    pub fn leader(&self) -> String {
        self.key("leader")
    }

    /// `log/`: every log key starts with it.
    pub fn log_prefix(&self) -> String {
        self.key("log/")
    }

    /// Exclusive end of the `log/` range (`log0`, as `'0'` follows `'/'`).
    pub fn log_end(&self) -> String {
        self.key("log0")
    }

    /// `log/<index>`.
    pub fn log(&self, index: Index) -> String {
        format!("{}log/{}", self.prefix, format_index(index))
    }

    /// Exclusive end key for log entries `<= to`.
    pub fn log_end_inclusive(&self, to: Index) -> String {
        match to.checked_add(1) {
            Some(next) => self.log(next),
            None => self.log_end(),
        }
    }

    /// The index of a `log/<index>` key, `None` if `key` is not one.
    pub fn parse_log_key(&self, key: &[u8]) -> Option<Index> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("log/")?;
        parse_index(rest)
    }

    /// `snap/`: every snapshot key starts with it.
    pub fn snap_prefix(&self) -> String {
        self.key("snap/")
    }

    /// Exclusive end of the `snap/` range.
    pub fn snap_end(&self) -> String {
        self.key("snap0")
    }

    /// Exclusive end key for snapshots with index `< below`: `snap/<below>`
    /// sorts after every `snap/<smaller>/...` key and before `snap/<below>/...`.
    pub fn snap_below(&self, below: Index) -> String {
        format!("{}snap/{}", self.prefix, format_index(below))
    }

    /// `modules/<sha256>/manifest`: present once the module is complete.
    pub fn module_manifest(&self, sha256: &str) -> String {
        format!("{}modules/{sha256}/manifest", self.prefix)
    }

    /// `modules/<sha256>/chunks-<writer>/`: the chunks of one writer.
    pub fn module_chunk_dir(&self, sha256: &str, writer: &str) -> String {
        format!("{}modules/{sha256}/chunks-{writer}/", self.prefix)
    }

    /// `snap/<index>/`: every key of that snapshot index starts with it.
    pub fn snap_dir(&self, index: Index) -> String {
        format!("{}snap/{}/", self.prefix, format_index(index))
    }

    /// `snap/<index>/manifest`.
    pub fn snap_manifest(&self, index: Index) -> String {
        format!("{}manifest", self.snap_dir(index))
    }

    /// `snap/<index>/chunks-<writer>/`: the chunk directory of one writer.
    pub fn snap_chunk_dir(&self, index: Index, writer: &str) -> String {
        format!("{}chunks-{writer}/", self.snap_dir(index))
    }

    /// `snap/<index>/chunks-<writer>/<n>`.
    pub fn snap_chunk(&self, index: Index, writer: &str, n: u32) -> String {
        format!("{}{n:08}", self.snap_chunk_dir(index, writer))
    }

    /// The index of a `snap/<index>/manifest` key, `None` for any other key.
    pub fn parse_snap_manifest_key(&self, key: &[u8]) -> Option<Index> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("snap/")?;
        let digits = rest.strip_suffix("/manifest")?;
        parse_index(digits)
    }

    /// The index of any `snap/<index>/...` key, `None` for any other key.
    pub fn parse_snap_dir_index(&self, key: &[u8]) -> Option<Index> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("snap/")?;
        let (digits, _) = rest.split_once('/')?;
        parse_index(digits)
    }

    /// `members/`.
    pub fn members_prefix(&self) -> String {
        self.key("members/")
    }

    /// Exclusive end of the `members/` range.
    pub fn members_end(&self) -> String {
        self.key("members0")
    }

    /// `members/<replica>`; the replica name is validated.
    pub fn member(&self, replica: &str) -> StoreResult<String> {
        validate_name("replica", replica)?;
        Ok(format!("{}members/{replica}", self.prefix))
    }

    /// The replica of a `members/<replica>` key.
    pub fn parse_member_key(&self, key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("members/")?;
        (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_owned())
    }
}

/// The last key of a snapshot: proves its chunks are complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// Index the snapshot was taken at (must match the key); 0 for a module.
    pub index: Index,
    /// Random id of the writer; its chunks live under `chunks-<writer>/`.
    pub writer: String,
    /// Number of chunks.
    pub chunks: u32,
    /// Total length in bytes.
    pub total_len: u64,
    /// Hex sha256 of the whole snapshot.
    pub sha256: String,
}

impl SnapshotManifest {
    /// Manifest describing `bytes` split into [`SNAPSHOT_CHUNK_SIZE`] chunks.
    pub fn describe(index: Index, writer: &str, bytes: &[u8]) -> StoreResult<Self> {
        let chunks = u32::try_from(bytes.len().div_ceil(SNAPSHOT_CHUNK_SIZE)).map_err(|_| {
            StoreError::InvalidArgument(format!(
                "snapshot of {} bytes has too many chunks",
                bytes.len()
            ))
        })?;
        Ok(Self {
            index,
            writer: writer.to_owned(),
            chunks,
            total_len: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        })
    }

    /// Check the reassembled snapshot against the manifest. `key` names the
    /// manifest (relative) in the error.
    pub fn verify(&self, key: &str, chunks_found: usize, bytes: &[u8]) -> StoreResult<()> {
        let corrupt = |reason: String| StoreError::Corrupt {
            key: key.to_owned(),
            reason,
        };
        if chunks_found != self.chunks as usize {
            return Err(corrupt(format!(
                "manifest lists {} chunks, found {chunks_found}",
                self.chunks
            )));
        }
        if bytes.len() as u64 != self.total_len {
            return Err(corrupt(format!(
                "manifest says {} bytes, chunks hold {}",
                self.total_len,
                bytes.len()
            )));
        }
        let actual = hex::encode(Sha256::digest(bytes));
        if actual != self.sha256 {
            return Err(corrupt(format!(
                "sha256 mismatch: manifest {}, chunks {actual}",
                self.sha256
            )));
        }
        Ok(())
    }
}

/// Refuse to store (or accept from the store) module bytes under a hash they
/// do not have: a module's key is its content's sha256, which is what makes
/// `modules/` safe to write once and read by anyone.
pub fn check_module_bytes(sha256: &str, bytes: &[u8]) -> StoreResult<()> {
    let actual = hex::encode(Sha256::digest(bytes));
    if actual == sha256 {
        return Ok(());
    }
    Err(StoreError::Corrupt {
        key: format!("modules/{sha256}"),
        reason: format!("the module's bytes have sha256 {actual}"),
    })
}

/// A fresh random writer id for snapshot chunks.
pub fn new_snapshot_writer() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Decode a JSON value stored at `key` (relative), or `Corrupt` naming the key.
pub fn decode_json<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: format!("invalid JSON: {e}"),
    })
}

/// Encode a value for the store. Our record types always serialize; an error
/// here would be a bug, reported rather than panicking.
pub fn encode_json<T: Serialize>(what: &str, value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|e| StoreError::InvalidArgument(format!("cannot encode {what}: {e}")))
}

/// End a stream right after its first error item: watches report a failure
/// once and the caller re-subscribes from what it has (requirement 5).
pub fn end_after_error<T, S>(stream: S) -> BoxStream<'static, StoreResult<T>>
where
    T: Send + 'static,
    S: Stream<Item = StoreResult<T>> + Send + 'static,
{
    // Not `scan`/`take_while`: they only end when the inner stream yields
    // again, and a failed watch may never yield again.
    stream::unfold(Some(stream.boxed()), |inner| async move {
        let mut inner = inner?;
        let item = inner.next().await?;
        let rest = item.is_ok().then_some(inner);
        Some((item, rest))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("group", "kv").is_ok());
        assert!(validate_name("group", "kv-1.a_b").is_ok());
        for bad in ["", "a/b", "/", "..", ".", "a\nb"] {
            let err = validate_name("group", bad).unwrap_err();
            assert!(
                matches!(&err, StoreError::InvalidArgument(m) if m.contains("group")),
                "{bad:?}: {err}"
            );
        }
        assert!(KeySpace::new("ns", "a/b").is_err());
        assert!(KeySpace::new("", "g").is_err());
    }

    #[test]
    fn keys_sort_by_index() {
        let ks = KeySpace::new("ns", "g").unwrap();
        assert_eq!(ks.prefix(), "/dorado/v1/ns/g/");
        assert_eq!(ks.log(7), "/dorado/v1/ns/g/log/00000000000000000007");
        assert!(ks.log(9) < ks.log(10));
        assert!(ks.log(u64::MAX) < ks.log_end());
        assert!(ks.log_prefix() < ks.log(0));
        assert_eq!(ks.parse_log_key(ks.log(42).as_bytes()), Some(42));
        assert_eq!(
            ks.parse_log_key(ks.log(u64::MAX).as_bytes()),
            Some(u64::MAX)
        );
        assert_eq!(ks.parse_log_key(b"/dorado/v1/ns/g/log/12"), None);
        assert_eq!(ks.log_end_inclusive(u64::MAX), ks.log_end());
        assert_eq!(ks.log_end_inclusive(3), ks.log(4));
    }

    #[test]
    fn snapshot_keys_order_manifest_last() {
        let ks = KeySpace::new("ns", "g").unwrap();
        let chunk = ks.snap_chunk(5, "ffffffffffffffff", 99_999_999);
        assert!(chunk < ks.snap_manifest(5));
        assert!(ks.snap_manifest(5) < ks.snap_below(6));
        assert!(ks.snap_below(5) < ks.snap_chunk(5, "0000000000000000", 0));
        assert!(ks.snap_manifest(4) < ks.snap_below(5));
        assert_eq!(
            ks.parse_snap_manifest_key(ks.snap_manifest(5).as_bytes()),
            Some(5)
        );
        assert_eq!(ks.parse_snap_manifest_key(chunk.as_bytes()), None);
        assert_eq!(ks.parse_snap_dir_index(chunk.as_bytes()), Some(5));
        assert_eq!(
            ks.parse_snap_dir_index(ks.snap_manifest(7).as_bytes()),
            Some(7)
        );
        assert_eq!(ks.parse_snap_dir_index(ks.snap_below(5).as_bytes()), None);
        assert_eq!(ks.parse_snap_dir_index(ks.log(5).as_bytes()), None);
    }

    #[test]
    fn member_keys() {
        let ks = KeySpace::new("ns", "g").unwrap();
        let key = ks.member("r-0").unwrap();
        assert_eq!(ks.parse_member_key(key.as_bytes()).as_deref(), Some("r-0"));
        assert!(ks.member("a/b").is_err());
        assert!(ks.member("").is_err());
    }

    #[test]
    fn manifest_verifies() {
        let bytes = vec![7u8; SNAPSHOT_CHUNK_SIZE * 2 + 1];
        let m = SnapshotManifest::describe(3, "w", &bytes).unwrap();
        assert_eq!(m.chunks, 3);
        m.verify("snap", 3, &bytes).unwrap();
        assert!(m.verify("snap", 2, &bytes).is_err());
        assert!(m.verify("snap", 3, &bytes[1..]).is_err());
        let mut other = bytes.clone();
        other[0] = 8;
        assert!(m.verify("snap", 3, &other).is_err());
        let empty = SnapshotManifest::describe(1, "w", &[]).unwrap();
        assert_eq!(empty.chunks, 0);
        empty.verify("snap", 0, &[]).unwrap();
    }
}
