//! `faulty`: a guest that misbehaves on request, for the host's trap tests.
//!
//! Commands (each may carry `"set":V`, which is stored *before* the fault so
//! tests can prove the host rolls back partial changes):
//! * `{"op":"set","value":V}` stores V;
//! * `{"op":"panic"}` panics (a wasm `unreachable` trap under `panic = "abort"`);
//! * `{"op":"loop"}` never returns (the host's fuel budget stops it);
//! * `{"op":"alloc","mb":N}` allocates and touches N MiB, then frees it;
//!   without `"mb"` it allocates 1 MiB blocks until the host's memory cap stops it;
//! * `{"op":"recurse"}` recurses without bound (stack exhaustion).
//!
//! Queries: `{"op":"get"}` → `{"ok":true,"value":V,"applied":N}` where N counts
//! the commands that completed; `{"op":"panic"}` and `{"op":"loop"}` misbehave
//! as queries too.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::hint::black_box;

/// The state: the last value set and how many commands completed.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Faulty {
    value: Value,
    applied: u64,
}

#[derive(Deserialize)]
struct Request {
    op: String,
    #[serde(default)]
    value: Value,
    #[serde(default)]
    set: Option<Value>,
    #[serde(default)]
    mb: Option<u32>,
}

fn error(message: impl Into<String>) -> Vec<u8> {
    format!(r#"{{"ok":false,"error":{}}}"#, Value::from(message.into())).into_bytes()
}

fn parse(bytes: &[u8]) -> Result<Request, Vec<u8>> {
    serde_json::from_slice(bytes).map_err(|e| error(format!("malformed request: {e}")))
}

fn spin() -> ! {
    let mut i: u64 = 0;
    loop {
        i = black_box(i.wrapping_add(1));
    }
}

fn allocate_mib(mb: u32) -> usize {
    const MIB: usize = 1 << 20;
    let mut block = vec![0u8; (mb as usize).saturating_mul(MIB)];
    // Touch every page so the allocation cannot be optimised away.
    for page in block.chunks_mut(64 * 1024) {
        page[0] = 1;
    }
    black_box(&block).len()
}

fn allocate_forever() -> ! {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; 1 << 20];
        block[0] = 1;
        kept.push(black_box(block));
    }
}

fn recurse(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return 0;
    }
    let frame = black_box([depth; 64]);
    recurse(black_box(depth + 1)).wrapping_add(frame[0])
}

fn misbehave(op: &str) -> Option<Vec<u8>> {
    match op {
        "panic" => panic!("faulty guest asked to panic"),
        "loop" => spin(),
        "recurse" => Some(format!("{}", recurse(0)).into_bytes()),
        _ => None,
    }
}

impl dorado_guest::StateMachine for Faulty {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        let request = match parse(command) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        if let Some(value) = request.set {
            self.value = value;
        }
        if let Some(reply) = misbehave(&request.op) {
            return reply;
        }
        let reply = match request.op.as_str() {
            "set" => {
                self.value = request.value;
                br#"{"ok":true}"#.to_vec()
            }
            "alloc" => match request.mb {
                Some(mb) => {
                    format!(r#"{{"ok":true,"allocated":{}}}"#, allocate_mib(mb)).into_bytes()
                }
                None => allocate_forever(),
            },
            other => return error(format!("unknown op {other:?}")),
        };
        self.applied += 1;
        reply
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        let request = match parse(query) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        if let Some(reply) = misbehave(&request.op) {
            return reply;
        }
        match request.op.as_str() {
            "get" => format!(
                r#"{{"ok":true,"value":{},"applied":{}}}"#,
                self.value, self.applied
            )
            .into_bytes(),
            other => error(format!("unknown query op {other:?}")),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn restore(bytes: &[u8]) -> Self {
        if bytes.is_empty() {
            return Faulty::default();
        }
        serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("corrupt faulty snapshot: {e}"))
    }
}

dorado_guest::export!(Faulty);

#[cfg(test)]
mod tests {
    use super::Faulty;
    use dorado_guest::StateMachine;

    #[test]
    fn well_behaved_commands() {
        let mut f = Faulty::default();
        assert_eq!(f.apply(br#"{"op":"set","value":7}"#), br#"{"ok":true}"#);
        assert_eq!(
            f.apply(br#"{"op":"alloc","mb":1}"#),
            br#"{"ok":true,"allocated":1048576}"#
        );
        assert_eq!(
            f.query(br#"{"op":"get"}"#),
            br#"{"ok":true,"value":7,"applied":2}"#
        );
        assert_eq!(Faulty::restore(&f.snapshot()), f);
    }
}
