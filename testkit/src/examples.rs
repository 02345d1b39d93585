//! The example guests, embedded in the binary.
//!
//! `build.rs` builds `wasm-examples/` on every change to its sources, so
//! these bytes always match the current guest code; tests, benchmarks and
//! demos use them instead of reading files at run time.

/// `kv`: JSON key-value store (put / get / delete / cas).
pub const KV: &[u8] = include_bytes!(concat!(env!("DORADO_WASM_DIR"), "/kv.wasm"));
/// `kv2`: kv plus `incr`, with its own snapshot format; migrates kv snapshots.
pub const KV2: &[u8] = include_bytes!(concat!(env!("DORADO_WASM_DIR"), "/kv2.wasm"));
/// `kv_migrate_trap`: kv whose migration hook refuses every upgrade (panics
/// with "kv_migrate_trap refuses every migration").
pub const KV_MIGRATE_TRAP: &[u8] =
    include_bytes!(concat!(env!("DORADO_WASM_DIR"), "/kv_migrate_trap.wasm"));
/// `counter`: JSON counter (add / get).
pub const COUNTER: &[u8] = include_bytes!(concat!(env!("DORADO_WASM_DIR"), "/counter.wasm"));
/// `bank`: accounts and transfers with conserved total.
pub const BANK: &[u8] = include_bytes!(concat!(env!("DORADO_WASM_DIR"), "/bank.wasm"));
/// `faulty`: panics, loops or exhausts memory on request (host tests).
pub const FAULTY: &[u8] = include_bytes!(concat!(env!("DORADO_WASM_DIR"), "/faulty.wasm"));

/// Every example as `(name, bytes)`.
pub const ALL: [(&str, &[u8]); 6] = [
    ("kv", KV),
    ("kv2", KV2),
    ("kv_migrate_trap", KV_MIGRATE_TRAP),
    ("counter", COUNTER),
    ("bank", BANK),
    ("faulty", FAULTY),
];

/// Directory holding the built `.wasm` files (inside `wasm-examples/target`),
/// for tests and tools that need paths rather than bytes.
pub fn wasm_dir() -> &'static str {
    env!("DORADO_WASM_DIR")
}

/// A reply of the `kv` or `bank` example: `{"ok":true,...}` with the fields
/// the operation returns, or `{"ok":false,"error":"..."}`. Fields an
/// operation does not return are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(default)]
pub struct Reply {
    /// Whether the operation succeeded.
    pub ok: bool,
    /// Why it did not (`cas mismatch`, `insufficient funds ...`).
    pub error: Option<String>,
    /// kv `get`: the value (`None` for a missing key).
    pub value: Option<serde_json::Value>,
    /// kv `cas` that failed: the value it found, `Some(None)` if the key was
    /// absent; `None` if the reply did not say.
    #[serde(deserialize_with = "present")]
    pub current: Option<Option<serde_json::Value>>,
    /// kv `len`.
    pub len: Option<u64>,
    /// kv `delete`: whether the key existed.
    pub deleted: Option<bool>,
    /// bank `balance`.
    pub balance: Option<i64>,
    /// bank `total`: the sum of all balances.
    pub total: Option<u64>,
    /// bank `total`: the number of accounts.
    pub accounts: Option<u64>,
}

impl Reply {
    /// Parse a reply body.
    pub fn parse(body: &[u8]) -> Result<Reply, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// A field that is present (even as `null`) is `Some`; an absent one stays
/// the default `None`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::Reply;
    use serde_json::json;

    #[test]
    fn replies_parse_with_absent_and_null_kept_apart() {
        let r = Reply::parse(br#"{"ok":false,"error":"cas mismatch","current":null}"#).unwrap();
        assert!(!r.ok);
        assert_eq!(r.error.as_deref(), Some("cas mismatch"));
        assert_eq!(r.current, Some(None));
        let r = Reply::parse(br#"{"ok":false,"error":"cas mismatch","current":1}"#).unwrap();
        assert_eq!(r.current, Some(Some(json!(1))));
        let r = Reply::parse(br#"{"ok":true,"value":null}"#).unwrap();
        assert!(r.ok);
        assert_eq!(r.value, None);
        assert_eq!(r.current, None);
        let r = Reply::parse(br#"{"ok":true,"total":15,"accounts":2}"#).unwrap();
        assert_eq!((r.total, r.accounts), (Some(15), Some(2)));
        assert!(Reply::parse(b"not json").is_err());
    }
}
