//! Module upgrades ordered through the log.
//!
//! Why an upgrade is a log entry: replicas apply entries strictly in index
//! order, so a switch that is itself an entry happens at the same point of
//! the history on every replica. Every command before it runs on the old
//! module, every command after it on the new one, on every replica and in
//! every replay. A switch driven by each pod's own configuration would
//! instead happen at a different index on each replica, and the replicas
//! would diverge for the commands in between.
//!
//! What happens at an [`Entry::Upgrade`](crate::Entry::Upgrade) (in
//! [`crate::ReplicaState::apply`]):
//! - `to` is the module already running: nothing changes, the outcome says so;
//! - otherwise the state machine is asked to switch
//!   ([`crate::StateMachine::upgrade`]): snapshot the old module, instantiate
//!   the new one, hand it the snapshot (its migration export, else its
//!   restore). Any failure on that path is a [`crate::Rejection`] that every
//!   replica reaches the same way, and the group stays on the old module;
//! - the outcome extends the hash chain ([`crate::ChainHash::upgrade`]), and
//!   the module and the one before it become part of the replicated state
//!   (and of snapshots).
//!
//! Which module a starting replica proposes is decided by [`plan`].

/// The 32 bytes of a sha256 written as 64 lowercase hex digits; `None` for
/// anything else (upper case included: one spelling per hash).
pub fn sha256_bytes(hex_digits: &str) -> Option<[u8; 32]> {
    if hex_digits.len() != 64
        || !hex_digits
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    hex::decode(hex_digits).ok()?.try_into().ok()
}

/// What an upgrade entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedUpgrade {
    /// The module that ran before the entry.
    pub from: String,
    /// The module the entry asked for.
    pub to: String,
    /// What happened.
    pub result: UpgradeResult,
}

/// The outcome of an upgrade entry: deterministic, part of the hash chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeResult {
    /// The group runs `to` from the next index on.
    Switched,
    /// `to` was already running; nothing changed.
    AlreadyRunning,
    /// The new module failed on the switch path; the group stays on `from`.
    Rejected(String),
}

impl UpgradeResult {
    /// Stable text for traces, replies and the hash chain.
    pub fn describe(&self) -> String {
        match self {
            UpgradeResult::Switched => "switched".into(),
            UpgradeResult::AlreadyRunning => "already running".into(),
            UpgradeResult::Rejected(reason) => format!("rejected: {reason}"),
        }
    }
}

/// How a replica treats a local module the group does not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpgradeMode {
    /// Propose the local module (the first replica of a rollout does).
    #[default]
    Auto,
    /// Never propose: `dorado upgrade` does; until then stay not ready.
    Manual,
}

/// What a replica that has caught up does about its local module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModulePlan {
    /// The group runs the local module: serve.
    Serve,
    /// Propose an upgrade to the local module, then look again once it is
    /// applied.
    Propose,
    /// Do not propose; stay not ready with this reason (the group may still
    /// switch to the local module later, through `dorado upgrade`).
    Wait(String),
}

/// The decision of a replica that started with module `local` and has
/// applied the group's history up to `applied`, where the group runs
/// `current` and last upgraded away from `previous`.
///
/// Why `previous` is never proposed automatically: during a rollout the pods
/// not yet replaced still carry the old module. One of them that restarts
/// (a crash, a node drain) must not undo the rollout by proposing the old
/// module again; it waits, not ready, until the rollout replaces it. A real
/// rollback is therefore explicit: `dorado upgrade` back to the old module.
/// `rejected` is the reason the last proposal of `local` by this replica was
/// rejected, if it was: proposing it again would be rejected again (the
/// rejection is deterministic), so the replica waits and says why.
pub fn plan(
    local: &str,
    current: &str,
    previous: Option<&str>,
    mode: UpgradeMode,
    rejected: Option<&str>,
) -> ModulePlan {
    if local == current {
        return ModulePlan::Serve;
    }
    let short = |s: &str| s.get(..12).unwrap_or(s).to_string();
    if let Some(reason) = rejected {
        return ModulePlan::Wait(format!(
            "the group rejected the upgrade from {} to this replica's module {}: {reason}; it keeps running {}",
            short(current),
            short(local),
            short(current)
        ));
    }
    if previous == Some(local) {
        return ModulePlan::Wait(format!(
            "this replica's module {} is the one the group upgraded away from (it now runs {}); \
             waiting to be replaced by the rollout, or roll back with `dorado upgrade`",
            short(local),
            short(current)
        ));
    }
    match mode {
        UpgradeMode::Auto => ModulePlan::Propose,
        UpgradeMode::Manual => ModulePlan::Wait(format!(
            "the group runs module {} and this replica has {}; upgrades are manual \
             (dorado.io/upgrade: manual): run `dorado upgrade` to switch the group",
            short(current),
            short(local)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    #[test]
    fn sha256_spelling_is_strict() {
        assert_eq!(sha256_bytes(A), Some([0xaa; 32]));
        assert_eq!(sha256_bytes(&A.to_uppercase()), None);
        assert_eq!(sha256_bytes(&A[1..]), None);
        assert_eq!(sha256_bytes(&format!("{}g", &A[1..])), None);
    }

    #[test]
    fn the_running_module_serves() {
        assert_eq!(
            plan(A, A, None, UpgradeMode::Manual, None),
            ModulePlan::Serve
        );
        assert_eq!(
            plan(A, A, Some(B), UpgradeMode::Auto, Some("x")),
            ModulePlan::Serve
        );
    }

    #[test]
    fn a_new_module_is_proposed_in_auto_mode_only() {
        assert_eq!(
            plan(B, A, None, UpgradeMode::Auto, None),
            ModulePlan::Propose
        );
        assert_eq!(
            plan(C, A, Some(B), UpgradeMode::Auto, None),
            ModulePlan::Propose
        );
        let ModulePlan::Wait(why) = plan(B, A, None, UpgradeMode::Manual, None) else {
            panic!("manual mode proposed");
        };
        assert!(
            why.contains("manual") && why.contains("dorado upgrade"),
            "{why}"
        );
    }

    #[test]
    fn a_pod_from_before_the_rollout_does_not_undo_it() {
        // The group went A -> B; a not-yet-replaced pod with A restarts.
        let ModulePlan::Wait(why) = plan(A, B, Some(A), UpgradeMode::Auto, None) else {
            panic!("the old module was proposed again");
        };
        assert!(why.contains("upgraded away from"), "{why}");
    }

    #[test]
    fn a_rejected_module_is_not_proposed_again() {
        let ModulePlan::Wait(why) = plan(B, A, None, UpgradeMode::Auto, Some("trap: no")) else {
            panic!("a rejected module was proposed again");
        };
        assert!(
            why.contains("rejected") && why.contains("trap: no"),
            "{why}"
        );
    }
}
