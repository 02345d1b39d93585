//! Keys and values of the classic protocol in etcd.
//!
//! Everything lives under `/dorado/v1/<namespace>/<group>/classic/`, next to
//! (never inside) the DORADO key space of a group with the same name, so the
//! two protocols can share one etcd in a benchmark:
//!
//! | key | value | writer |
//! |---|---|---|
//! | `meta` | JSON [`ClassicMeta`] | first replica (create-if-absent) |
//! | `roster/<replica>` | JSON `{"replica": ..}` | each replica, once |
//! | `members/<replica>` | JSON [`MemberRecord`], lease-bound | each replica |
//! | `requests/<origin>/<incarnation>-<counter>` | request, instance 0 | replica a client called |
//! | `accept/<instance>/<view>/<replica>` | request or no-op | leader (the order), then every replica |
//! | `elections/<view>/<replica>` | JSON vote | replicas changing view |
//!
//! This is the prototype's `/apprequests` queue split in two families
//! (unordered requests and acceptances) and its `/appelections` queue. The
//! prototype's etcd v2 in-order keys are replaced by keys that name their
//! writer: with no compare-and-swap, a key written by exactly one replica
//! can never be overwritten by another, and a retried put rewrites the same
//! bytes. Instances and views are zero padded to 20 digits so key order is
//! numeric order (a replay reads `accept/` in instance order).
//!
//! Request and acceptance values are a one-line JSON header naming the
//! instance, view, writer and request, then `\n`, then the canonical
//! [`Entry`] encoding of the command (or of a no-op), so the trace and the
//! hash chain see exactly the bytes DORADO would. The header repeats what the
//! key says and decoding checks that both agree.

use dorado_core::{Command, Entry, MemberRecord};
use serde::{Deserialize, Serialize};

use super::protocol::{Accept, Instance, PendingRequest, Record, RequestId, Value, View};
use dorado::store::{format_index, parse_index};

/// Group metadata of a classic group, written once by its first replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassicMeta {
    /// Hex sha256 of the module every replica must run.
    pub module_sha256: String,
    /// Guest ABI version of that module.
    pub abi_version: u32,
    /// Always `classic`.
    pub protocol: String,
    /// Client sessions idle for more than this many instances are forgotten.
    pub session_expiry_entries: u64,
    /// Number of replicas whose acceptances and votes count; a majority of
    /// it decides a request and installs a view.
    pub group_size: usize,
}

/// The keys of one classic group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClassicKeys {
    prefix: String,
}

/// What a key under the classic prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Meta,
    Roster(String),
    Member(String),
    Request {
        origin: String,
        incarnation: u64,
        counter: u64,
    },
    Accept {
        instance: Instance,
        view: View,
        replica: String,
    },
    Election {
        view: View,
        replica: String,
    },
}

/// The families in the order a replay reads them: the roster first (it
/// decides whose acceptances count), then the votes (the view), then the
/// acceptances in instance order, then the unordered requests (most of which
/// are known to be applied by then), then the live members.
pub(crate) const REPLAY_FAMILIES: [&str; 5] =
    ["roster/", "elections/", "accept/", "requests/", "members/"];

impl ClassicKeys {
    /// Keys under `group_prefix` (which ends in `/`) + `classic/`.
    pub fn new(group_prefix: &str) -> Self {
        ClassicKeys {
            prefix: format!("{group_prefix}classic/"),
        }
    }

    /// The classic prefix, ending in `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Absolute key of a key relative to the classic prefix.
    pub fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.prefix)
    }

    pub fn meta(&self) -> String {
        self.key("meta")
    }

    pub fn roster(&self, replica: &str) -> String {
        self.key(&format!("roster/{replica}"))
    }

    pub fn member(&self, replica: &str) -> String {
        self.key(&format!("members/{replica}"))
    }

    pub fn request(&self, id: &RequestId) -> String {
        self.key(&format!(
            "requests/{}/{:016x}-{}",
            id.origin,
            id.incarnation,
            format_index(id.counter)
        ))
    }

    pub fn accept(&self, instance: Instance, view: View, replica: &str) -> String {
        self.key(&format!(
            "accept/{}/{}/{replica}",
            format_index(instance),
            format_index(view)
        ))
    }

    /// First key of instance `instance` in `accept/`.
    pub fn accept_from(&self, instance: Instance) -> String {
        self.key(&format!("accept/{}/", format_index(instance)))
    }

    pub fn election(&self, view: View, replica: &str) -> String {
        self.key(&format!("elections/{}/{replica}", format_index(view)))
    }

    /// Where a key written by `record` lives.
    pub fn record_key(&self, record: &Record) -> String {
        match record {
            Record::Roster { replica } => self.roster(replica),
            Record::Member { replica, .. } => self.member(replica),
            Record::Request(p) => self.request(&p.id),
            Record::Accept(a) => self.accept(a.instance, a.view, &a.acceptor),
            Record::Vote { view, voter, .. } => self.election(*view, voter),
        }
    }

    /// Relative form of a key, for messages.
    pub fn relative_lossy(&self, key: &[u8]) -> String {
        let key = String::from_utf8_lossy(key);
        key.strip_prefix(self.prefix.as_str())
            .unwrap_or(&key)
            .to_owned()
    }

    /// Classify a key; `None` for keys this version does not know.
    pub fn parse(&self, key: &[u8]) -> Option<KeyKind> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(self.prefix.as_str())?;
        if rest == "meta" {
            return Some(KeyKind::Meta);
        }
        let (family, rest) = rest.split_once('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        match (family, parts.as_slice()) {
            ("roster", [r]) if !r.is_empty() => Some(KeyKind::Roster((*r).to_owned())),
            ("members", [r]) if !r.is_empty() => Some(KeyKind::Member((*r).to_owned())),
            ("requests", [origin, id]) if !origin.is_empty() => {
                let (inc, counter) = id.split_once('-')?;
                if inc.len() != 16 {
                    return None;
                }
                Some(KeyKind::Request {
                    origin: (*origin).to_owned(),
                    incarnation: u64::from_str_radix(inc, 16).ok()?,
                    counter: parse_index(counter)?,
                })
            }
            ("accept", [i, v, r]) if !r.is_empty() => Some(KeyKind::Accept {
                instance: parse_index(i)?,
                view: parse_index(v)?,
                replica: (*r).to_owned(),
            }),
            ("elections", [v, r]) if !r.is_empty() => Some(KeyKind::Election {
                view: parse_index(v)?,
                replica: (*r).to_owned(),
            }),
            _ => None,
        }
    }
}

/// The exclusive end of the range of keys starting with `prefix`.
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// JSON header of request and acceptance values.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    /// Consensus instance; 0 for a request no leader has ordered yet.
    instance: Instance,
    view: View,
    /// Writer of this entry (origin of a request, acceptor of an acceptance).
    replica: String,
    /// `None` for a no-op.
    request: Option<RequestId>,
}

#[derive(Debug, Serialize, Deserialize)]
struct VoteValue {
    view: View,
    replica: String,
    incarnation: u64,
    /// Address of the voter's client API (the prototype's `ip:port`).
    address: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct RosterValue {
    replica: String,
}

/// Why stored bytes are not a valid classic record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt classic record at {key}: {reason}")]
pub struct WireError {
    /// Key relative to the classic prefix.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// Encode the value written for `record`. `address` is the writer's client
/// API address, recorded in votes.
pub(crate) fn encode(record: &Record, address: &str) -> Result<Vec<u8>, String> {
    match record {
        Record::Roster { replica } => json(&RosterValue {
            replica: replica.clone(),
        }),
        Record::Member { address, .. } => json(&MemberRecord {
            address: address.clone().unwrap_or_default(),
            applied_index: 0,
            hash: String::new(),
        }),
        Record::Vote {
            view,
            voter,
            incarnation,
        } => json(&VoteValue {
            view: *view,
            replica: voter.clone(),
            incarnation: *incarnation,
            address: address.to_owned(),
        }),
        Record::Request(p) => with_entry(
            &Header {
                instance: 0,
                view: p.view,
                replica: p.id.origin.clone(),
                request: Some(p.id.clone()),
            },
            &Entry::Batch(vec![p.command.clone()]),
        ),
        Record::Accept(a) => {
            let (request, entry) = match &a.value {
                Value::Noop => (None, Entry::Noop),
                Value::Request { id, command } => {
                    (Some(id.clone()), Entry::Batch(vec![command.clone()]))
                }
            };
            with_entry(
                &Header {
                    instance: a.instance,
                    view: a.view,
                    replica: a.acceptor.clone(),
                    request,
                },
                &entry,
            )
        }
    }
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(value).map_err(|e| e.to_string())
}

fn with_entry(header: &Header, entry: &Entry) -> Result<Vec<u8>, String> {
    // serde_json escapes control characters inside strings, so the header
    // never contains a raw newline and the first one ends it.
    let mut out = json(header)?;
    out.push(b'\n');
    out.extend(entry.encode().map_err(|e| e.to_string())?);
    Ok(out)
}

/// Decode a stored key and value into a record. `Ok(None)` for keys that are
/// not records (meta, unknown families of a newer version).
pub(crate) fn decode(
    keys: &ClassicKeys,
    key: &[u8],
    value: &[u8],
) -> Result<Option<Record>, WireError> {
    let fail = |reason: String| WireError {
        key: keys.relative_lossy(key),
        reason,
    };
    let Some(kind) = keys.parse(key) else {
        return Ok(None);
    };
    let record = match kind {
        KeyKind::Meta => return Ok(None),
        KeyKind::Roster(replica) => {
            let v: RosterValue = serde_json::from_slice(value).map_err(|e| fail(e.to_string()))?;
            if v.replica != replica {
                return Err(fail(format!("value names replica {}", v.replica)));
            }
            Record::Roster { replica }
        }
        KeyKind::Member(replica) => {
            let v: MemberRecord = serde_json::from_slice(value).map_err(|e| fail(e.to_string()))?;
            Record::Member {
                replica,
                address: Some(v.address),
            }
        }
        KeyKind::Election { view, replica } => {
            let v: VoteValue = serde_json::from_slice(value).map_err(|e| fail(e.to_string()))?;
            if v.view != view || v.replica != replica {
                return Err(fail(format!(
                    "value names view {} by {}",
                    v.view, v.replica
                )));
            }
            Record::Vote {
                view,
                voter: replica,
                incarnation: v.incarnation,
            }
        }
        KeyKind::Request {
            origin,
            incarnation,
            counter,
        } => {
            let (header, entry) = split_entry(value).map_err(fail)?;
            let id = RequestId {
                origin,
                incarnation,
                counter,
            };
            if header.instance != 0 || header.request.as_ref() != Some(&id) {
                return Err(fail(format!(
                    "header says instance {} request {:?}",
                    header.instance, header.request
                )));
            }
            let command = single_command(entry).map_err(fail)?;
            Record::Request(PendingRequest {
                id,
                view: header.view,
                command,
            })
        }
        KeyKind::Accept {
            instance,
            view,
            replica,
        } => {
            let (header, entry) = split_entry(value).map_err(fail)?;
            if header.instance != instance || header.view != view || header.replica != replica {
                return Err(fail(format!(
                    "header says instance {} view {} replica {}",
                    header.instance, header.view, header.replica
                )));
            }
            let value = match (header.request, entry) {
                (None, Entry::Noop) => Value::Noop,
                (Some(id), entry @ Entry::Batch(_)) => Value::Request {
                    id,
                    command: single_command(entry).map_err(fail)?,
                },
                _ => return Err(fail("header and entry disagree about a no-op".into())),
            };
            Record::Accept(Accept {
                instance,
                view,
                acceptor: replica,
                value,
            })
        }
    };
    Ok(Some(record))
}

fn split_entry(value: &[u8]) -> Result<(Header, Entry), String> {
    let split = value
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no header line")?;
    let header: Header = serde_json::from_slice(&value[..split]).map_err(|e| e.to_string())?;
    let entry = Entry::decode(&value[split + 1..]).map_err(|e| e.to_string())?;
    Ok((header, entry))
}

fn single_command(entry: Entry) -> Result<Command, String> {
    match entry {
        Entry::Batch(mut commands) if commands.len() == 1 => Ok(commands.remove(0)),
        Entry::Batch(commands) => Err(format!(
            "{} commands in one request; the classic protocol never batches",
            commands.len()
        )),
        Entry::Noop => Err("a request cannot be a no-op".into()),
        Entry::Upgrade { .. } => Err("the classic protocol does not order upgrades".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dorado_core::ClientTag;

    fn keys() -> ClassicKeys {
        ClassicKeys::new("/dorado/v1/ns/g/")
    }

    fn id() -> RequestId {
        RequestId {
            origin: "r1".into(),
            incarnation: 0xabc,
            counter: 7,
        }
    }

    fn cmd() -> Command {
        Command {
            client: Some(ClientTag {
                id: "c".into(),
                seq: 3,
            }),
            payload: b"{\"op\":\"put\"}\n".to_vec(),
        }
    }

    fn roundtrip(record: Record) {
        let k = keys();
        let key = k.record_key(&record);
        let value = encode(&record, "10.0.0.1:7070").unwrap();
        assert_eq!(decode(&k, key.as_bytes(), &value).unwrap(), Some(record));
    }

    #[test]
    fn every_record_round_trips_through_its_key_and_value() {
        roundtrip(Record::Roster {
            replica: "r1".into(),
        });
        roundtrip(Record::Member {
            replica: "r1".into(),
            address: Some("a:1".into()),
        });
        roundtrip(Record::Vote {
            view: 12,
            voter: "r2".into(),
            incarnation: 99,
        });
        roundtrip(Record::Request(PendingRequest {
            id: id(),
            view: 4,
            command: cmd(),
        }));
        roundtrip(Record::Accept(Accept {
            instance: 42,
            view: 4,
            acceptor: "r3".into(),
            value: Value::Request {
                id: id(),
                command: cmd(),
            },
        }));
        roundtrip(Record::Accept(Accept {
            instance: 43,
            view: 5,
            acceptor: "r3".into(),
            value: Value::Noop,
        }));
    }

    #[test]
    fn keys_sort_numerically_and_stay_out_of_the_dorado_space() {
        let k = keys();
        assert!(k.accept(9, 1, "a") < k.accept(10, 1, "a"));
        assert!(k.accept(10, 1, "z") < k.accept_from(11));
        assert!(k.prefix().starts_with("/dorado/v1/ns/g/classic/"));
        assert_eq!(prefix_end("a/"), b"a0".to_vec());
        assert_eq!(k.parse(b"/dorado/v1/ns/g/log/00000000000000000001"), None);
        assert_eq!(k.parse(k.meta().as_bytes()), Some(KeyKind::Meta));
    }

    #[test]
    fn a_header_that_contradicts_its_key_is_corrupt() {
        let k = keys();
        let a = Record::Accept(Accept {
            instance: 1,
            view: 1,
            acceptor: "r1".into(),
            value: Value::Noop,
        });
        let value = encode(&a, "").unwrap();
        let other_key = k.accept(2, 1, "r1");
        assert!(decode(&k, other_key.as_bytes(), &value).is_err());
        assert!(decode(&k, k.accept(1, 1, "r1").as_bytes(), b"garbage").is_err());
    }
}
