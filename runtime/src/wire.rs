//! The client API's types on the wire: what `GET /v1/status` answers, the
//! JSON body of every error and the codes in it.
//!
//! The server ([`crate::api`]) builds these and the client
//! ([`crate::client`]), the tools, the benchmarks, the demo and the tests read
//! them, so nothing looks a field up by name in untyped JSON. Every enum
//! serializes as the snake_case (or lowercase) string the API has always
//! sent; `runtime/README.md` lists them, and the tests below pin the JSON.

use std::fmt;

use dorado_core::{Epoch, Index};
use serde::{Deserialize, Serialize};

/// A replica's part in its group, as `GET /v1/status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Holds leadership: its appends are the ones the store accepts.
    Leader,
    /// Applies what the leader ordered and forwards writes to it; also a
    /// replica that is electing or preparing to lead.
    #[default]
    Follower,
}

impl Role {
    /// `Leader` when `leading`, else `Follower`.
    pub const fn of(leading: bool) -> Role {
        if leading {
            Role::Leader
        } else {
            Role::Follower
        }
    }

    /// The name on the wire (`leader`, `follower`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which ordering protocol a replica runs (`--protocol`, `DORADO_PROTOCOL`
/// of `dorado-bench run`; `dorado run` always runs DORADO).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// DORADO: fenced, batched appends through etcd.
    #[default]
    Dorado,
    /// The paper's 2016 scheme (one entry per request, acceptances by every
    /// replica, majority decisions, views by votes); a benchmark baseline.
    Classic,
}

impl Protocol {
    /// The name `--protocol` takes and status and reports carry.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Dorado => "dorado",
            Protocol::Classic => "classic",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// Group name.
    pub group: String,
    /// Namespace.
    pub namespace: String,
    /// This replica.
    pub replica: String,
    /// Whether this replica leads.
    pub role: Role,
    /// Current leader's replica id.
    pub leader: Option<String>,
    /// Current leader's address.
    pub leader_address: Option<String>,
    /// Current leadership epoch.
    pub epoch: Option<Epoch>,
    /// Highest applied index.
    pub applied_index: Index,
    /// Highest committed index known.
    pub commit_index: Index,
    /// Hash chain after `applied_index`.
    pub hash: String,
    /// sha256 of the module this replica was started with (its ConfigMap's).
    pub module_sha256: String,
    /// sha256 of the module the group runs after `applied_index` (differs
    /// from `module_sha256` during a rollout, or while an upgrade waits).
    #[serde(default)]
    pub group_module: String,
    /// Where this replica stands with its own module (see README "Upgrades").
    #[serde(default)]
    pub module_state: ModuleState,
    /// Whether `/readyz` says ready.
    pub ready: bool,
    /// Last store problem, if the store is failing now.
    pub store_error: Option<String>,
    /// Index of the newest snapshot this replica restored or wrote.
    pub snapshot_index: Index,
    /// Ordering protocol.
    pub protocol: Protocol,
}

/// Where a replica stands with the module it was started with.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum ModuleState {
    /// The group runs it (or did once since this replica started): serving.
    #[default]
    Serving,
    /// The group runs another module; this replica proposes its own.
    Proposing,
    /// Not ready until the group runs this module; the reason says why and
    /// what to do.
    Waiting(String),
}

impl From<dorado_core::ModulePlan> for ModuleState {
    fn from(plan: dorado_core::ModulePlan) -> Self {
        match plan {
            dorado_core::ModulePlan::Serve => ModuleState::Serving,
            dorado_core::ModulePlan::Propose => ModuleState::Proposing,
            dorado_core::ModulePlan::Wait(reason) => ModuleState::Waiting(reason),
        }
    }
}

/// `POST /v1/upgrade` request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRequest {
    /// sha256 (64 lowercase hex digits) of a module already in the store.
    pub module: String,
}

impl UpgradeRequest {
    /// The JSON body of a request to switch to `module`.
    pub fn body(module: &str) -> Vec<u8> {
        serde_json::to_vec(&UpgradeRequest {
            module: module.to_owned(),
        })
        .unwrap_or_default()
    }
}

/// The reply to an upgrade that was ordered and not rejected (a rejected
/// one is an error body with code `rejected` and the entry's `index`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeReply {
    /// Index of the upgrade entry.
    pub index: Index,
    /// The module before it.
    pub from: String,
    /// The module it asked for.
    pub to: String,
    /// `switched` or `already running`.
    pub result: String,
}

impl UpgradeReply {
    /// The outcome a waiting proposer gets for an applied upgrade entry.
    pub fn outcome(index: Index, u: &dorado_core::AppliedUpgrade) -> dorado_core::Outcome {
        match &u.result {
            dorado_core::UpgradeResult::Rejected(reason) => {
                dorado_core::Outcome::Rejected(format!(
                    "upgrade from module {} to {} rejected: {reason}",
                    u.from, u.to
                ))
            }
            other => {
                let reply = UpgradeReply {
                    index,
                    from: u.from.clone(),
                    to: u.to.clone(),
                    result: other.describe(),
                };
                dorado_core::Outcome::Reply(serde_json::to_vec(&reply).unwrap_or_default())
            }
        }
    }
}

impl Status {
    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }
}

/// The stable, machine-readable `code` of an error body. Each code has one
/// HTTP status ([`ErrorCode::http_status`]) but one: `leader_unreachable` is
/// 502 when the leader took the command and its answer was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the command or query body is empty.
    Empty,
    /// 400: `dorado-client-id` / `dorado-seq` malformed, or only one of them.
    BadHeader,
    /// 400: a query parameter is malformed or unknown.
    BadParameter,
    /// 400: the command cannot be encoded as a log entry; never ordered.
    InvalidCommand,
    /// 404: no such route.
    NotFound,
    /// 405: the route exists for another method.
    MethodNotAllowed,
    /// 413: the body is larger than `--max-command-bytes`.
    TooLarge,
    /// 422: the state machine rejected the command (trap, out of fuel,
    /// memory cap, stale seq); it *was* ordered (`index`).
    Rejected,
    /// 503: this replica does not lead and the write was already forwarded
    /// once (`leader` names the leader); never ordered.
    NotLeader,
    /// 503: no leader is elected right now; never ordered.
    NoLeader,
    /// 503: leadership changed before the command was ordered; never ordered.
    NotOrdered,
    /// 503: the replica is shutting down.
    ShuttingDown,
    /// 503: a follower could not reach the leader to forward the write.
    LeaderUnreachable,
    /// 503: the replica is still connecting to the store or recovering.
    Starting,
    /// 503 (`/readyz`): not ready; the message says why.
    NotReady,
    /// 503: a linearizable query did not catch up in time.
    Behind,
    /// 503: a linearizable query could not confirm the committed index.
    StoreUnavailable,
    /// 503: the command may or may not be applied; retry with the same
    /// client id and seq.
    UnknownOutcome,
    /// 504: the command was not applied in time; same as `unknown_outcome`.
    Timeout,
    /// 500 (`/v1/snapshot`): the state machine could not produce a snapshot.
    SnapshotFailed,
    /// 400 (`/v1/upgrade`): the body names no module, or a module the store
    /// does not hold; never ordered.
    UnknownModule,
    /// 501: the replica's ordering protocol cannot do this (an upgrade under
    /// the classic baseline).
    Unsupported,
    /// Never sent by a server: a client's name for a code it does not know
    /// (a newer server) or for an error body that is not Dorado's JSON.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code, in the order of the README's table.
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::Empty,
        ErrorCode::BadHeader,
        ErrorCode::BadParameter,
        ErrorCode::InvalidCommand,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::TooLarge,
        ErrorCode::Rejected,
        ErrorCode::NotLeader,
        ErrorCode::NoLeader,
        ErrorCode::NotOrdered,
        ErrorCode::ShuttingDown,
        ErrorCode::LeaderUnreachable,
        ErrorCode::Starting,
        ErrorCode::NotReady,
        ErrorCode::Behind,
        ErrorCode::StoreUnavailable,
        ErrorCode::UnknownOutcome,
        ErrorCode::Timeout,
        ErrorCode::SnapshotFailed,
        ErrorCode::UnknownModule,
        ErrorCode::Unsupported,
        ErrorCode::Unknown,
    ];

    /// The name on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Empty => "empty",
            ErrorCode::BadHeader => "bad_header",
            ErrorCode::BadParameter => "bad_parameter",
            ErrorCode::InvalidCommand => "invalid_command",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Rejected => "rejected",
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::NoLeader => "no_leader",
            ErrorCode::NotOrdered => "not_ordered",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::LeaderUnreachable => "leader_unreachable",
            ErrorCode::Starting => "starting",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::Behind => "behind",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::UnknownOutcome => "unknown_outcome",
            ErrorCode::Timeout => "timeout",
            ErrorCode::SnapshotFailed => "snapshot_failed",
            ErrorCode::UnknownModule => "unknown_module",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// The HTTP status the server answers with this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Empty
            | ErrorCode::BadHeader
            | ErrorCode::BadParameter
            | ErrorCode::InvalidCommand
            | ErrorCode::UnknownModule => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::TooLarge => 413,
            ErrorCode::Rejected => 422,
            ErrorCode::SnapshotFailed | ErrorCode::Unknown => 500,
            ErrorCode::NotLeader
            | ErrorCode::NoLeader
            | ErrorCode::NotOrdered
            | ErrorCode::ShuttingDown
            | ErrorCode::LeaderUnreachable
            | ErrorCode::Starting
            | ErrorCode::NotReady
            | ErrorCode::Behind
            | ErrorCode::StoreUnavailable
            | ErrorCode::UnknownOutcome => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::Unsupported => 501,
        }
    }

    /// The command may have been applied although no reply came: resend it
    /// only with the same client id and seq.
    pub fn outcome_unknown(self) -> bool {
        matches!(self, ErrorCode::UnknownOutcome | ErrorCode::Timeout)
    }

    /// The server guarantees that a command answered with this 503 code was
    /// not ordered, so resending it is safe even without a client id and seq.
    pub fn never_ordered(self) -> bool {
        matches!(
            self,
            ErrorCode::NotLeader
                | ErrorCode::NoLeader
                | ErrorCode::NotOrdered
                | ErrorCode::Starting
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of every error answer: `{"code": ..., "message": ...}`,
/// plus `leader` and `index` when they apply (the same values as the
/// `dorado-leader` and `dorado-index` headers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// Human explanation.
    pub message: String,
    /// The leader's address, when known (`not_leader`, `leader_unreachable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The log index that ordered the command (`rejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Index>,
}

impl ErrorBody {
    /// Read an error body; a body that is not Dorado's JSON (a proxy's page,
    /// a truncated answer) becomes [`ErrorCode::Unknown`] with its text.
    pub fn parse(body: &[u8]) -> ErrorBody {
        serde_json::from_slice(body).unwrap_or_else(|_| ErrorBody {
            code: ErrorCode::Unknown,
            message: String::from_utf8_lossy(body).chars().take(200).collect(),
            leader: None,
            index: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status() -> Status {
        Status {
            group: "shop".into(),
            namespace: "prod".into(),
            replica: "shop-0".into(),
            role: Role::Leader,
            leader: Some("shop-0".into()),
            leader_address: Some("10.1.2.3:7070".into()),
            epoch: Some(42),
            applied_index: 500,
            commit_index: 501,
            hash: "6091c5727729".into(),
            module_sha256: "ab".repeat(32),
            group_module: "ab".repeat(32),
            module_state: ModuleState::Serving,
            ready: true,
            store_error: None,
            snapshot_index: 400,
            protocol: Protocol::Dorado,
        }
    }

    /// The field names and value shapes that `GET /v1/status` has always
    /// had (the contract script and the webhook's users read them).
    #[test]
    fn status_wire_format_is_stable() {
        let golden = json!({
            "group": "shop",
            "namespace": "prod",
            "replica": "shop-0",
            "role": "leader",
            "leader": "shop-0",
            "leader_address": "10.1.2.3:7070",
            "epoch": 42,
            "applied_index": 500,
            "commit_index": 501,
            "hash": "6091c5727729",
            "module_sha256": "ab".repeat(32),
            "group_module": "ab".repeat(32),
            "module_state": {"state": "serving"},
            "ready": true,
            "store_error": null,
            "snapshot_index": 400,
            "protocol": "dorado",
        });
        assert_eq!(serde_json::to_value(status()).unwrap(), golden);
        let back: Status = serde_json::from_value(golden).unwrap();
        assert_eq!(back, status());

        let follower = Status {
            role: Role::Follower,
            leader: None,
            leader_address: None,
            epoch: None,
            store_error: Some("etcd unreachable".into()),
            protocol: Protocol::Classic,
            ..status()
        };
        let golden = json!({
            "group": "shop",
            "namespace": "prod",
            "replica": "shop-0",
            "role": "follower",
            "leader": null,
            "leader_address": null,
            "epoch": null,
            "applied_index": 500,
            "commit_index": 501,
            "hash": "6091c5727729",
            "module_sha256": "ab".repeat(32),
            "group_module": "ab".repeat(32),
            "module_state": {"state": "serving"},
            "ready": true,
            "store_error": "etcd unreachable",
            "snapshot_index": 400,
            "protocol": "classic",
        });
        assert_eq!(serde_json::to_value(&follower).unwrap(), golden);
        assert_eq!(serde_json::from_value::<Status>(golden).unwrap(), follower);

        // A waiting replica says why; a status from before upgrades existed
        // (no module fields) still reads.
        let waiting = Status {
            module_state: ModuleState::Waiting("manual".into()),
            ..status()
        };
        assert_eq!(
            serde_json::to_value(&waiting.module_state).unwrap(),
            json!({"state": "waiting", "reason": "manual"})
        );
        let mut old = serde_json::to_value(status()).unwrap();
        let fields = old.as_object_mut().unwrap();
        fields.remove("group_module");
        fields.remove("module_state");
        let read: Status = serde_json::from_value(old).unwrap();
        assert_eq!(
            (read.group_module.as_str(), read.module_state),
            ("", ModuleState::Serving)
        );
    }

    #[test]
    fn error_body_wire_format_is_stable() {
        let plain = ErrorBody {
            code: ErrorCode::NoLeader,
            message: "no leader is elected right now; retry shortly".into(),
            leader: None,
            index: None,
        };
        let golden =
            r#"{"code":"no_leader","message":"no leader is elected right now; retry shortly"}"#;
        assert_eq!(serde_json::to_string(&plain).unwrap(), golden);
        assert_eq!(ErrorBody::parse(golden.as_bytes()), plain);

        let rejected = ErrorBody {
            code: ErrorCode::Rejected,
            message: "trap: boom".into(),
            leader: None,
            index: Some(7),
        };
        let golden = r#"{"code":"rejected","message":"trap: boom","index":7}"#;
        assert_eq!(serde_json::to_string(&rejected).unwrap(), golden);
        assert_eq!(ErrorBody::parse(golden.as_bytes()), rejected);

        let forward = ErrorBody {
            code: ErrorCode::NotLeader,
            message: "not the leader".into(),
            leader: Some("10.0.0.2:7070".into()),
            index: None,
        };
        let golden = r#"{"code":"not_leader","message":"not the leader","leader":"10.0.0.2:7070"}"#;
        assert_eq!(serde_json::to_string(&forward).unwrap(), golden);
        assert_eq!(ErrorBody::parse(golden.as_bytes()), forward);
    }

    #[test]
    fn every_code_serializes_as_its_name_and_round_trips() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        let names: std::collections::HashSet<_> =
            ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len(), "duplicate code names");
    }

    #[test]
    fn unknown_codes_and_foreign_bodies_are_unknown_not_errors() {
        let newer = ErrorBody::parse(br#"{"code":"quota_exceeded","message":"later"}"#);
        assert_eq!(newer.code, ErrorCode::Unknown);
        assert_eq!(newer.message, "later");
        let html = ErrorBody::parse(b"<html>502 Bad Gateway</html>");
        assert_eq!(html.code, ErrorCode::Unknown);
        assert_eq!(html.message, "<html>502 Bad Gateway</html>");
    }

    /// The README's table, row by row: each code's HTTP status.
    #[test]
    fn codes_have_the_documented_http_status() {
        let readme = include_str!("../README.md");
        for code in ErrorCode::ALL {
            if code == ErrorCode::Unknown {
                continue;
            }
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{code}` |")))
                .unwrap_or_else(|| panic!("runtime/README.md documents no code {code}"));
            assert!(
                row.contains(&format!("| {} |", code.http_status())),
                "README row for {code} does not give HTTP {}: {row}",
                code.http_status()
            );
        }
        for role in [Role::Leader, Role::Follower] {
            assert!(
                readme.contains(&format!("`{role}`")),
                "README lacks role {role}"
            );
        }
    }
}
