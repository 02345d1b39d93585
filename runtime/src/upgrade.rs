//! `dorado upgrade`: switch a running group to another module.
//!
//! The switch itself is an ordered log entry (see `dorado_core::upgrade`);
//! this is the operator's side of it: put the module into the store, where
//! every replica and `dorado replay` can fetch it, optionally check offline
//! that it behaves like the running module on the recent history
//! ([`crate::replay::verify_upgrade`]), then ask the leader to order the
//! switch and report its outcome. A rollback is the same thing with the old
//! module (or `--to` its hash: every module the group ran is in the store).

use std::time::Duration;

use dorado_core::{Store, StoreError};

use crate::wire::{ErrorBody, ErrorCode, UpgradeReply, UpgradeRequest};

/// Why an upgrade was not ordered, or what became of it.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The module named by `--to` is not in the store.
    #[error("module {0} is not in the store; pass the file with --module instead")]
    NotStored(String),
    /// No replica could be reached to order the upgrade.
    #[error("could not reach the group's leader: {0}")]
    Unreachable(String),
    /// The leader refused to order it (a code other than a rejection).
    #[error("the upgrade was not ordered: {code}: {message}")]
    Refused {
        /// The error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// It was ordered, and every replica rejected the switch; the group
    /// stays on its module.
    #[error("the upgrade was ordered at index {index:?} and rejected: {message}")]
    Rejected {
        /// Index of the upgrade entry.
        index: Option<u64>,
        /// Why (deterministic, as in the trace).
        message: String,
    },
}

/// What became of a proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposed {
    /// The leader's reply to the attempt that settled it.
    pub reply: UpgradeReply,
    /// An earlier attempt was cut off by a leadership change (its outcome
    /// unknown) and this reply is a re-proposal's: `already running` then
    /// means the earlier attempt may have made the switch.
    pub retried: bool,
}

/// Ask the group's leader to order a switch to `module` (already in the
/// store) and wait for the outcome. Follows the leader through elections for
/// up to `patience`.
///
/// An attempt whose outcome is unknown (the leadership changed while it was
/// being ordered) is simply proposed again: a switch is idempotent, since
/// ordering the module the group already runs is `already running`, so at
/// most one of the attempts switches.
pub async fn propose<S: Store>(
    store: &S,
    module: &str,
    patience: Duration,
) -> Result<Proposed, UpgradeError> {
    if store.get_module(module).await?.is_none() {
        return Err(UpgradeError::NotStored(module.to_owned()));
    }
    let http = crate::replica_http(Duration::from_secs(30))
        .build()
        .map_err(|e| UpgradeError::Unreachable(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + patience;
    let mut last = String::from("no leader is elected");
    let mut attempt = 0u32;
    let mut retried = false;
    while tokio::time::Instant::now() < deadline {
        if attempt > 0 {
            tokio::time::sleep(crate::driver::backoff(attempt)).await;
        }
        attempt += 1;
        let Some(leader) = store.leader().await? else {
            continue;
        };
        let sent = http
            .post(format!("http://{}/v1/upgrade", leader.leader.address))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(UpgradeRequest::body(module))
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                last = format!("{}: {e}", leader.leader.address);
                continue;
            }
        };
        let ok = resp.status().is_success();
        let body = resp
            .bytes()
            .await
            .map_err(|e| UpgradeError::Unreachable(e.to_string()))?;
        if ok {
            let reply = serde_json::from_slice(&body).map_err(|e| UpgradeError::Refused {
                code: ErrorCode::Unknown,
                message: format!("unreadable reply ({e}): {}", String::from_utf8_lossy(&body)),
            })?;
            return Ok(Proposed { reply, retried });
        }
        let err = ErrorBody::parse(&body);
        match err.code {
            ErrorCode::Rejected => {
                return Err(UpgradeError::Rejected {
                    index: err.index,
                    message: err.message,
                });
            }
            code if code.never_ordered() || code == ErrorCode::ShuttingDown => {
                last = err.message;
            }
            ErrorCode::UnknownOutcome => {
                tracing::info!(message = %err.message, "the upgrade's outcome is unknown; proposing it again");
                retried = true;
                last = err.message;
            }
            code => {
                return Err(UpgradeError::Refused {
                    code,
                    message: err.message,
                });
            }
        }
    }
    Err(UpgradeError::Unreachable(last))
}
