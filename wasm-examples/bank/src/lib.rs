//! `bank`: accounts and transfers, the guest the fault tests use to check that
//! no money is ever created or lost.
//!
//! Commands:
//! * `{"op":"open","account":A,"balance":N}` opens a new account (N ≥ 0);
//! * `{"op":"transfer","from":A,"to":B,"amount":N}` moves N > 0 between two
//!   distinct existing accounts.
//!
//! Queries: `{"op":"total"}` → `{"ok":true,"total":T,"accounts":K}` and
//! `{"op":"balance","account":A}`.
//!
//! Overdrafts, unknown accounts and malformed requests get an error reply
//! (`{"ok":false,"error":"..."}`) and leave the state unchanged. The total is
//! kept within `u64`, so no balance can overflow.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The state: balances by account name, in name order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Bank {
    accounts: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct Request {
    op: String,
    account: Option<String>,
    balance: Option<u64>,
    from: Option<String>,
    to: Option<String>,
    amount: Option<u64>,
}

fn json(value: impl Into<Value>) -> Value {
    value.into()
}

/// `{"ok":true,"<name>":<value>,...}`, fields in the given order.
fn ok(fields: &[(&str, Value)]) -> Vec<u8> {
    let mut out = String::from(r#"{"ok":true"#);
    for (name, value) in fields {
        out.push_str(&format!(",{}:{value}", json(*name)));
    }
    out.push('}');
    out.into_bytes()
}

/// `{"ok":false,"error":"<message>"}`
fn error(message: impl Into<String>) -> Vec<u8> {
    format!(r#"{{"ok":false,"error":{}}}"#, json(message.into())).into_bytes()
}

fn parse(bytes: &[u8]) -> Result<Request, Vec<u8>> {
    serde_json::from_slice(bytes).map_err(|e| error(format!("malformed request: {e}")))
}

impl Bank {
    fn total(&self) -> u64 {
        // Never saturates: `open` keeps the sum within u64.
        self.accounts
            .values()
            .fold(0u64, |sum, b| sum.saturating_add(*b))
    }

    fn open(&mut self, account: String, balance: u64) -> Vec<u8> {
        if self.accounts.contains_key(&account) {
            return error(format!("account {account:?} already exists"));
        }
        if self.total().checked_add(balance).is_none() {
            return error("total money would overflow");
        }
        self.accounts.insert(account, balance);
        ok(&[("balance", json(balance))])
    }

    fn transfer(&mut self, from: String, to: String, amount: u64) -> Vec<u8> {
        if amount == 0 {
            return error("amount must be positive");
        }
        if from == to {
            return error(format!("cannot transfer from {from:?} to itself"));
        }
        let (Some(&from_balance), Some(&to_balance)) =
            (self.accounts.get(&from), self.accounts.get(&to))
        else {
            let unknown = if self.accounts.contains_key(&from) {
                to
            } else {
                from
            };
            return error(format!("unknown account {unknown:?}"));
        };
        let Some(from_after) = from_balance.checked_sub(amount) else {
            return error(format!(
                "insufficient funds: {from:?} has {from_balance}, transfer needs {amount}"
            ));
        };
        // Cannot overflow: both balances are part of a total that fits in u64.
        let to_after = to_balance.saturating_add(amount);
        self.accounts.insert(from, from_after);
        self.accounts.insert(to, to_after);
        ok(&[
            ("from_balance", json(from_after)),
            ("to_balance", json(to_after)),
        ])
    }
}

impl dorado_guest::StateMachine for Bank {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        let request = match parse(command) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        match request.op.as_str() {
            "open" => match (request.account, request.balance) {
                (Some(account), Some(balance)) => self.open(account, balance),
                _ => error("open needs \"account\" and a non-negative integer \"balance\""),
            },
            "transfer" => match (request.from, request.to, request.amount) {
                (Some(from), Some(to), Some(amount)) => self.transfer(from, to, amount),
                _ => error("transfer needs \"from\", \"to\" and a non-negative integer \"amount\""),
            },
            other => error(format!("unknown op {other:?} (expected open or transfer)")),
        }
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        let request = match parse(query) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        match request.op.as_str() {
            "total" => ok(&[
                ("total", json(self.total())),
                ("accounts", json(self.accounts.len())),
            ]),
            "balance" => match request.account {
                Some(account) => match self.accounts.get(&account) {
                    Some(balance) => ok(&[("balance", json(*balance))]),
                    None => error(format!("unknown account {account:?}")),
                },
                None => error("balance needs \"account\""),
            },
            other => error(format!(
                "unknown query op {other:?} (expected total or balance)"
            )),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&self.accounts).unwrap_or_default()
    }

    fn restore(bytes: &[u8]) -> Self {
        if bytes.is_empty() {
            return Bank::default();
        }
        match serde_json::from_slice::<BTreeMap<String, u64>>(bytes) {
            Ok(accounts) => {
                let total = accounts
                    .values()
                    .try_fold(0u64, |sum, b| sum.checked_add(*b));
                assert!(total.is_some(), "corrupt bank snapshot: total overflows");
                Bank { accounts }
            }
            Err(e) => panic!("corrupt bank snapshot: {e}"),
        }
    }
}

dorado_guest::export!(Bank);

#[cfg(test)]
mod tests {
    use super::Bank;
    use dorado_guest::StateMachine;

    fn s(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn transfers_conserve_money() {
        let mut bank = Bank::default();
        assert_eq!(
            s(bank.apply(br#"{"op":"open","account":"a","balance":10}"#)),
            r#"{"ok":true,"balance":10}"#
        );
        bank.apply(br#"{"op":"open","account":"b","balance":5}"#);
        assert_eq!(
            s(bank.apply(br#"{"op":"transfer","from":"a","to":"b","amount":4}"#)),
            r#"{"ok":true,"from_balance":6,"to_balance":9}"#
        );
        let before = bank.clone();
        for refused in [
            &br#"{"op":"transfer","from":"a","to":"b","amount":7}"#[..],
            br#"{"op":"transfer","from":"a","to":"zed","amount":1}"#,
            br#"{"op":"transfer","from":"zed","to":"a","amount":1}"#,
            br#"{"op":"transfer","from":"a","to":"a","amount":1}"#,
            br#"{"op":"transfer","from":"a","to":"b","amount":-1}"#,
            br#"{"op":"open","account":"a","balance":1}"#,
            b"[]",
        ] {
            assert!(s(bank.apply(refused)).starts_with(r#"{"ok":false,"error":"#));
        }
        assert_eq!(bank, before);
        assert_eq!(
            s(bank.query(br#"{"op":"total"}"#)),
            r#"{"ok":true,"total":15,"accounts":2}"#
        );
        assert_eq!(Bank::restore(&bank.snapshot()), bank);
    }

    #[test]
    fn total_never_overflows() {
        let mut bank = Bank::default();
        let max = format!(r#"{{"op":"open","account":"a","balance":{}}}"#, u64::MAX);
        assert!(s(bank.apply(max.as_bytes())).starts_with(r#"{"ok":true"#));
        assert!(s(bank.apply(br#"{"op":"open","account":"b","balance":1}"#)).contains("overflow"));
    }
}
