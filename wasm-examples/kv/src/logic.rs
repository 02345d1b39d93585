//! The key-value store itself, free of anything wasm or Dorado specific.
//!
//! Kept in its own file so the host's benchmark can compile exactly this logic
//! natively (`#[path]` include) and compare it with the same code running as a
//! wasm guest. It depends only on `std`, `serde` and `serde_json`.
//!
//! The other kv guests (`kv2`, `kv_migrate_trap`) include this same file, so
//! there is one copy of the store; [`Dialect`] selects the commands a build
//! accepts.

use serde::de::{Error, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// The whole state: an ordered map, so snapshots are byte-identical for
/// identical histories.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Kv {
    map: BTreeMap<String, Value>,
}

/// The commands a build of the store accepts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dialect {
    /// `kv.wasm`: put, get, delete, cas.
    #[default]
    V1,
    /// `kv2.wasm`: V1 plus `incr`.
    V2,
}

/// One command or query. A flat struct rather than a tagged enum: serde's
/// internally tagged enums buffer the whole object first, which costs more
/// than the store operation itself for small commands.
#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(default, borrow)]
    key: Option<Key<'a>>,
    #[serde(default, deserialize_with = "present")]
    value: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    expected: Option<Value>,
    /// `incr` only; any JSON value, so that V1 keeps ignoring the field.
    #[serde(default, deserialize_with = "present")]
    by: Option<Value>,
}

/// A key borrowed from the request when it has no escapes (the usual case),
/// so looking up or overwriting an existing key allocates nothing.
/// (`Option<Cow<str>>` would always allocate: serde borrows only bare `Cow`s.)
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for KeyVisitor<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: Error>(self, v: String) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor(std::marker::PhantomData))
    }
}

/// Distinguishes `"expected": null` (`Some(Value::Null)`) from a missing field (`None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl Kv {
    /// Applies `{"op":"put"|"get"|"delete"|"cas",...}`; never panics.
    pub fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        self.apply_in(Dialect::V1, command)
    }

    /// Applies a command of `dialect`; never panics. [`Dialect::V2`] adds
    /// `{"op":"incr","key":K,"by":N}`: adds the signed 64-bit integer N
    /// (default 1) to the integer at K (a missing key counts as 0) and
    /// replies with the new value. A value that is not an integer, a `by`
    /// that is not one, or an overflow is an error reply and changes nothing.
    pub fn apply_in(&mut self, dialect: Dialect, command: &[u8]) -> Vec<u8> {
        let request = match parse(command) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let key = request.key.map(|k| k.0);
        match request.op.as_ref() {
            "put" => {
                let (key, value) = match (key, request.value) {
                    (Some(key), Some(value)) if !value.is_null() => (key, value),
                    (None, _) => return error("put needs a string \"key\""),
                    _ => return error("put needs a non-null \"value\""),
                };
                self.put(key, value);
                br#"{"ok":true}"#.to_vec()
            }
            "get" => match key {
                Some(key) => self.get(&key),
                None => error("get needs a string \"key\""),
            },
            "delete" => match key {
                Some(key) => {
                    let deleted = self.map.remove(key.as_ref()).is_some();
                    ok_field("deleted", &Value::Bool(deleted))
                }
                None => error("delete needs a string \"key\""),
            },
            "cas" => {
                let (key, expected, value) = match (key, request.expected, request.value) {
                    (Some(key), Some(expected), Some(value)) if !value.is_null() => {
                        (key, expected, value)
                    }
                    (None, _, _) => return error("cas needs a string \"key\""),
                    (_, None, _) => return error("cas needs \"expected\" (a value or null)"),
                    _ => return error("cas needs a non-null \"value\""),
                };
                let current = self.map.get(key.as_ref()).unwrap_or(&Value::Null);
                if *current != expected {
                    return error_with_current("cas mismatch", current);
                }
                self.put(key, value);
                br#"{"ok":true}"#.to_vec()
            }
            "incr" if dialect >= Dialect::V2 => {
                let Some(key) = key else {
                    return error("incr needs a string \"key\"");
                };
                let by = match request.by.as_ref().map(Value::as_i64) {
                    None => 1,
                    Some(Some(by)) => by,
                    Some(None) => return error("incr needs an integer \"by\" (signed 64-bit)"),
                };
                let current = match self.map.get(key.as_ref()) {
                    None => 0,
                    Some(value) => match value.as_i64() {
                        Some(n) => n,
                        None => {
                            return error_with_current(
                                "incr needs the value to be a signed 64-bit integer",
                                value,
                            );
                        }
                    },
                };
                let Some(next) = current.checked_add(by) else {
                    return error_with_current(
                        "incr overflows a signed 64-bit integer",
                        &Value::from(current),
                    );
                };
                let next = Value::from(next);
                let reply = ok_field("value", &next);
                self.put(key, next);
                reply
            }
            other => error(&format!(
                "unknown op {other:?} (expected {})",
                match dialect {
                    Dialect::V1 => "put, get, delete or cas",
                    Dialect::V2 => "put, get, delete, cas or incr",
                }
            )),
        }
    }

    /// Answers `{"op":"get","key":K}` and `{"op":"len"}`; never panics.
    pub fn query(&self, query: &[u8]) -> Vec<u8> {
        let request = match parse(query) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        match request.op.as_ref() {
            "get" => match request.key {
                Some(key) => self.get(&key.0),
                None => error("get needs a string \"key\""),
            },
            "len" => ok_field("len", &Value::from(self.map.len())),
            other => error(&format!("unknown query op {other:?} (expected get or len)")),
        }
    }

    /// The map as one JSON object, keys in order.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_json(&mut out, &self.map);
        out
    }

    /// Inverse of [`Kv::snapshot`]; empty bytes are the empty store.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, String> {
        if bytes.is_empty() {
            return Ok(Kv::default());
        }
        serde_json::from_slice(bytes)
            .map(|map| Kv { map })
            .map_err(|e| format!("corrupt kv snapshot: {e}"))
    }

    /// Overwrites in place when the key exists, so the common update path
    /// allocates no new key.
    fn put(&mut self, key: Cow<'_, str>, value: Value) {
        match self.map.get_mut(key.as_ref()) {
            Some(slot) => *slot = value,
            None => {
                self.map.insert(key.into_owned(), value);
            }
        }
    }

    fn get(&self, key: &str) -> Vec<u8> {
        ok_field("value", self.map.get(key).unwrap_or(&Value::Null))
    }
}

fn parse(bytes: &[u8]) -> Result<Request<'_>, Vec<u8>> {
    serde_json::from_slice(bytes).map_err(|e| error(&format!("malformed request: {e}")))
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing JSON into a Vec fails only for maps with non-string keys, which
    // these types do not have; an empty string is still valid output there.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

/// `{"ok":true,"<name>":<value>}`
fn ok_field(name: &str, value: &Value) -> Vec<u8> {
    let mut out = br#"{"ok":true,"#.to_vec();
    write_json(&mut out, name);
    out.push(b':');
    write_json(&mut out, value);
    out.push(b'}');
    out
}

/// `{"ok":false,"error":"<message>","current":<value>}`
fn error_with_current(message: &str, current: &Value) -> Vec<u8> {
    let mut out = br#"{"ok":false,"error":"#.to_vec();
    write_json(&mut out, message);
    out.extend_from_slice(br#","current":"#);
    write_json(&mut out, current);
    out.push(b'}');
    out
}

/// `{"ok":false,"error":"<message>"}`
fn error(message: &str) -> Vec<u8> {
    let mut out = br#"{"ok":false,"error":"#.to_vec();
    write_json(&mut out, message);
    out.push(b'}');
    out
}
