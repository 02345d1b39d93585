//! A native key-value state machine that audits itself.
//!
//! Commands are `put <key> <value>` where every value is unique to one client
//! operation (`c<client>-<seq>`). Besides the registers it remembers every
//! value it ever applied, so a command applied twice (an exactly-once
//! violation) is recorded in the replicated state itself and every replica
//! reports it the same way. Queries: `get <key>`, `dups` (values applied more
//! than once, one per line), `seen <value>` (`1`/`0`).
//!
//! It also stands for three *modules*, so that the simulation can order
//! upgrades between them: [`MODULE_A`] and [`MODULE_B`] differ in their reply
//! to a put (`ok` / `ok-b`), so replicas that switched at different indexes
//! would diverge in their hash chains; switching to [`MODULE_TRAP`] is
//! refused like a migration that traps.

use std::collections::{BTreeMap, BTreeSet};

use dorado_core::{RejectKind, Rejection, StateMachine};

/// The group's first module.
pub const MODULE_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
/// A second module: replies `ok-b` to a put.
pub const MODULE_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
/// A module whose migration always fails.
pub const MODULE_TRAP: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";

/// Every module a simulated replica can run is at hand (nothing to fetch).
#[derive(Debug)]
pub struct NativeModules;

impl dorado::driver::ModuleCatalog for NativeModules {
    fn has(&self, _sha256: &str) -> bool {
        true
    }

    fn add(
        self: std::sync::Arc<Self>,
        _sha256: String,
        _bytes: Vec<u8>,
    ) -> futures::future::BoxFuture<'static, Result<(), String>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The audited register map.
#[derive(Debug, Clone)]
pub struct Kv {
    module: String,
    regs: BTreeMap<String, String>,
    seen: BTreeSet<String>,
    dups: BTreeSet<String>,
}

impl Default for Kv {
    fn default() -> Self {
        Kv {
            module: MODULE_A.into(),
            regs: BTreeMap::new(),
            seen: BTreeSet::new(),
            dups: BTreeSet::new(),
        }
    }
}

fn reject(message: String) -> Rejection {
    Rejection {
        kind: RejectKind::Trap,
        message,
    }
}

/// The bytes of `put key value`.
pub fn put(key: &str, value: &str) -> Vec<u8> {
    format!("put {key} {value}").into_bytes()
}

impl StateMachine for Kv {
    fn apply(&mut self, command: &[u8]) -> Result<Vec<u8>, Rejection> {
        let text = std::str::from_utf8(command).map_err(|e| reject(e.to_string()))?;
        let mut parts = text.split(' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("put"), Some(k), Some(v), None) => {
                if !self.seen.insert(v.to_string()) {
                    self.dups.insert(v.to_string());
                }
                self.regs.insert(k.to_string(), v.to_string());
                Ok(if self.module == MODULE_B {
                    &b"ok-b"[..]
                } else {
                    b"ok"
                }
                .to_vec())
            }
            _ => Err(reject(format!("unknown command {text:?}"))),
        }
    }

    fn query(&mut self, query: &[u8]) -> Result<Vec<u8>, Rejection> {
        let text = std::str::from_utf8(query).map_err(|e| reject(e.to_string()))?;
        match text.split_once(' ') {
            Some(("get", k)) => Ok(self
                .regs
                .get(k)
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default()),
            Some(("seen", v)) => Ok(if self.seen.contains(v) { b"1" } else { b"0" }.to_vec()),
            None if text == "dups" => Ok(self
                .dups
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes()),
            _ => Err(reject(format!("unknown query {text:?}"))),
        }
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, Rejection> {
        let mut out = String::new();
        for (k, v) in &self.regs {
            out.push_str(&format!("k {k} {v}\n"));
        }
        for v in &self.seen {
            out.push_str(&format!("s {v}\n"));
        }
        for v in &self.dups {
            out.push_str(&format!("d {v}\n"));
        }
        Ok(out.into_bytes())
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), Rejection> {
        let text = std::str::from_utf8(snapshot).map_err(|e| reject(e.to_string()))?;
        let mut kv = Kv::default();
        for line in text.lines() {
            let mut p = line.split(' ');
            match (p.next(), p.next(), p.next()) {
                (Some("k"), Some(k), Some(v)) => {
                    kv.regs.insert(k.into(), v.into());
                }
                (Some("s"), Some(v), None) => {
                    kv.seen.insert(v.into());
                }
                (Some("d"), Some(v), None) => {
                    kv.dups.insert(v.into());
                }
                _ => return Err(reject(format!("bad snapshot line {line:?}"))),
            }
        }
        kv.module = std::mem::take(&mut self.module);
        *self = kv;
        Ok(())
    }

    fn upgrade(&mut self, from: &str, to: &str) -> Result<(), Rejection> {
        if from != self.module {
            return Err(reject(format!(
                "asked to upgrade from {from} while running {}",
                self.module
            )));
        }
        if to == MODULE_TRAP || (to != MODULE_A && to != MODULE_B) {
            return Err(reject(format!("module {to} refuses the migration")));
        }
        self.module = to.into();
        Ok(())
    }

    fn load(&mut self, module: &str, snapshot: Option<&[u8]>) -> Result<(), Rejection> {
        if let Some(s) = snapshot {
            self.restore(s)?;
        }
        self.module = module.into();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_applied_twice_is_recorded_and_survives_a_snapshot() {
        let mut kv = Kv::default();
        kv.apply(&put("a", "c1-1")).unwrap();
        kv.apply(&put("b", "c1-2")).unwrap();
        assert_eq!(kv.query(b"dups").unwrap(), b"");
        kv.apply(&put("a", "c1-1")).unwrap();
        assert_eq!(kv.query(b"dups").unwrap(), b"c1-1");
        let snap = kv.snapshot().unwrap();
        let mut other = Kv::default();
        other.restore(&snap).unwrap();
        assert_eq!(other.query(b"get a").unwrap(), b"c1-1");
        assert_eq!(other.query(b"seen c1-2").unwrap(), b"1");
        assert_eq!(other.query(b"dups").unwrap(), b"c1-1");
        assert!(kv.apply(b"nonsense").is_err());
    }
}
