//! `counter`: the smallest useful Dorado guest.
//!
//! Commands: `{"op":"add","n":N}` (N a signed 64-bit integer; overflow is an
//! error reply) and `{"op":"get"}`. Query: `{"op":"get"}`.
//! Replies: `{"ok":true,"value":V}` or `{"ok":false,"error":"..."}`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The state: one signed counter.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    value: i64,
}

#[derive(Deserialize)]
struct Request {
    op: String,
    n: Option<i64>,
}

/// `{"ok":true,"value":<value>}`
fn ok_value(value: i64) -> Vec<u8> {
    format!(r#"{{"ok":true,"value":{value}}}"#).into_bytes()
}

/// `{"ok":false,"error":"<message>"}`
fn error(message: impl Into<String>) -> Vec<u8> {
    format!(r#"{{"ok":false,"error":{}}}"#, Value::from(message.into())).into_bytes()
}

fn parse(bytes: &[u8]) -> Result<Request, Vec<u8>> {
    serde_json::from_slice(bytes).map_err(|e| error(format!("malformed request: {e}")))
}

impl dorado_guest::StateMachine for Counter {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        let request = match parse(command) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        match (request.op.as_str(), request.n) {
            ("add", Some(n)) => match self.value.checked_add(n) {
                Some(value) => {
                    self.value = value;
                    ok_value(value)
                }
                None => error("counter overflow"),
            },
            ("add", None) => error("add needs an integer \"n\""),
            ("get", _) => ok_value(self.value),
            (other, _) => error(format!("unknown op {other:?} (expected add or get)")),
        }
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        match parse(query) {
            Ok(request) if request.op == "get" => ok_value(self.value),
            Ok(request) => error(format!("unknown query op {:?} (expected get)", request.op)),
            Err(reply) => reply,
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn restore(bytes: &[u8]) -> Self {
        if bytes.is_empty() {
            return Counter::default();
        }
        serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("corrupt counter snapshot: {e}"))
    }
}

dorado_guest::export!(Counter);

#[cfg(test)]
mod tests {
    use super::Counter;
    use dorado_guest::StateMachine;

    #[test]
    fn add_get_overflow() {
        let mut c = Counter::default();
        assert_eq!(
            c.apply(br#"{"op":"add","n":5}"#),
            br#"{"ok":true,"value":5}"#
        );
        assert_eq!(
            c.apply(br#"{"op":"add","n":-7}"#),
            br#"{"ok":true,"value":-2}"#
        );
        assert_eq!(c.query(br#"{"op":"get"}"#), br#"{"ok":true,"value":-2}"#);
        let big = format!(r#"{{"op":"add","n":{}}}"#, i64::MIN);
        assert_eq!(
            c.apply(big.as_bytes()),
            br#"{"ok":false,"error":"counter overflow"}"#
        );
        assert!(
            c.apply(b"{")
                .starts_with(br#"{"ok":false,"error":"malformed request"#)
        );
        assert_eq!(Counter::restore(&c.snapshot()), c);
    }
}
