//! Applying ordered entries: the replicated state beyond the guest's own.
//!
//! A replica's state is the guest's memory *plus* what the host keeps for the
//! protocol: the applied index, the hash chain and the exactly-once session
//! table. [`ReplicaState`] owns the host part and is the only code that feeds
//! commands to a [`StateMachine`], so the rules "apply strictly in index
//! order", "a retried seq returns the cached reply" and "every outcome extends
//! the hash chain" live in exactly one place.

use crate::entry::{ClientTag, Command, Entry, SnapshotData};
use crate::hash::ChainHash;
use crate::session::{Outcome, Session, SessionCheck, Sessions};
use crate::sm::{Rejection, StateMachine};
use crate::store::Index;
use crate::upgrade::{AppliedUpgrade, UpgradeResult};

/// One command's result, as the trace and waiting clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedCommand {
    /// Log index of its batch.
    pub index: Index,
    /// Position inside the batch.
    pub position: u32,
    /// Exactly-once tag, if the client sent one.
    pub client: Option<ClientTag>,
    /// The command bytes.
    pub payload: Vec<u8>,
    /// Reply or rejection.
    pub outcome: Outcome,
    /// True when this was a retry answered from the session table (not re-applied).
    pub duplicate: bool,
    /// Hash chain after this command.
    pub hash: ChainHash,
}

/// Everything that applying one log entry produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedEntry {
    /// The entry's index.
    pub index: Index,
    /// True for a gap-filling no-op.
    pub noop: bool,
    /// One record per command, in batch order.
    pub commands: Vec<AppliedCommand>,
    /// For an upgrade entry: what it did.
    pub upgrade: Option<AppliedUpgrade>,
    /// Hash chain after the entry.
    pub hash: ChainHash,
}

/// Why an entry could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The caller offered an entry other than `applied + 1`.
    #[error("entry {got} offered out of order: next to apply is {expected}")]
    OutOfOrder {
        /// `applied + 1`.
        expected: Index,
        /// What was offered.
        got: Index,
    },
}

/// The host-side replicated state of one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaState {
    /// Highest applied index (0 = nothing yet).
    pub applied: Index,
    /// Hash chain after `applied`.
    pub hash: ChainHash,
    /// Exactly-once sessions.
    pub sessions: Sessions,
    /// Sessions idle for longer than this many entries expire (0 = never).
    pub session_expiry: u64,
    /// sha256 of the module the group runs after `applied`.
    pub module: String,
    /// The module the group upgraded away from last (`None`: never upgraded).
    pub previous_module: Option<String>,
}

impl ReplicaState {
    /// State before index 1 of a group that starts with module `module`.
    pub fn new(session_expiry: u64, module: String) -> Self {
        ReplicaState {
            applied: 0,
            hash: ChainHash::GENESIS,
            sessions: Sessions::default(),
            session_expiry,
            module,
            previous_module: None,
        }
    }

    /// Apply the entry at `index`, which must be `applied + 1`.
    pub fn apply<M: StateMachine + ?Sized>(
        &mut self,
        index: Index,
        entry: &Entry,
        sm: &mut M,
    ) -> Result<AppliedEntry, ApplyError> {
        if index != self.applied + 1 {
            return Err(ApplyError::OutOfOrder {
                expected: self.applied + 1,
                got: index,
            });
        }
        let mut out = AppliedEntry {
            index,
            noop: matches!(entry, Entry::Noop),
            commands: Vec::with_capacity(entry.len()),
            upgrade: None,
            hash: self.hash,
        };
        match entry {
            Entry::Noop => self.hash = self.hash.noop(index),
            Entry::Upgrade { to } => {
                let from = self.module.clone();
                let result = if *to == from {
                    UpgradeResult::AlreadyRunning
                } else {
                    match sm.upgrade(&from, to) {
                        Ok(()) => {
                            self.previous_module =
                                Some(std::mem::replace(&mut self.module, to.clone()));
                            UpgradeResult::Switched
                        }
                        Err(rejection) => UpgradeResult::Rejected(rejection.to_string()),
                    }
                };
                self.hash = self.hash.upgrade(index, &from, to, &result);
                out.upgrade = Some(AppliedUpgrade {
                    from,
                    to: to.clone(),
                    result,
                });
            }
            Entry::Batch(commands) => {
                for (position, cmd) in commands.iter().enumerate() {
                    let position = position as u32;
                    let (outcome, duplicate) = self.apply_one(index, cmd, sm);
                    self.hash = self.hash.command(index, position, cmd, &outcome);
                    out.commands.push(AppliedCommand {
                        index,
                        position,
                        client: cmd.client.clone(),
                        payload: cmd.payload.clone(),
                        outcome,
                        duplicate,
                        hash: self.hash,
                    });
                }
            }
        }
        self.sessions.expire(index, self.session_expiry);
        self.applied = index;
        out.hash = self.hash;
        Ok(out)
    }

    fn apply_one<M: StateMachine + ?Sized>(
        &mut self,
        index: Index,
        cmd: &Command,
        sm: &mut M,
    ) -> (Outcome, bool) {
        let Some(client) = &cmd.client else {
            return (run(sm, &cmd.payload), false);
        };
        match self.sessions.check(&client.id, client.seq) {
            // Planted bug (feature `planted-no-session-cache`, for the simulation).
            SessionCheck::Duplicate(outcome) if !cfg!(feature = "planted-no-session-cache") => {
                (outcome, true)
            }
            SessionCheck::Stale { current } => (
                Outcome::Rejected(format!(
                    "stale sequence number {} for client {}: it is already at {current}",
                    client.seq, client.id
                )),
                false,
            ),
            SessionCheck::Fresh | SessionCheck::Duplicate(_) => {
                let outcome = run(sm, &cmd.payload);
                self.sessions.insert(
                    client.id.clone(),
                    Session {
                        seq: client.seq,
                        last_index: index,
                        outcome: outcome.clone(),
                    },
                );
                (outcome, false)
            }
        }
    }

    /// Capture guest and host state after `applied`.
    pub fn snapshot<M: StateMachine + ?Sized>(
        &self,
        sm: &mut M,
    ) -> Result<SnapshotData, Rejection> {
        Ok(SnapshotData {
            index: self.applied,
            hash: self.hash.0,
            module_sha256: self.module.clone(),
            previous_module: self.previous_module.clone(),
            sessions: self.sessions.clone(),
            state: sm.snapshot()?,
        })
    }

    /// Rebuild from a snapshot: loads the snapshot's module with its state
    /// and returns the host state.
    pub fn restore<M: StateMachine + ?Sized>(
        snapshot: &SnapshotData,
        session_expiry: u64,
        sm: &mut M,
    ) -> Result<Self, Rejection> {
        sm.load(&snapshot.module_sha256, Some(&snapshot.state))?;
        Ok(ReplicaState {
            applied: snapshot.index,
            hash: ChainHash(snapshot.hash),
            sessions: snapshot.sessions.clone(),
            session_expiry,
            module: snapshot.module_sha256.clone(),
            previous_module: snapshot.previous_module.clone(),
        })
    }
}

fn run<M: StateMachine + ?Sized>(sm: &mut M, payload: &[u8]) -> Outcome {
    match sm.apply(payload) {
        Ok(reply) => Outcome::Reply(reply),
        Err(rejection) => Outcome::Rejected(rejection.to_string()),
    }
}

/// Small deterministic state machines for unit tests of the protocol.
pub mod testing {
    use crate::sm::{RejectKind, Rejection, StateMachine};

    /// Appends every command to a list; `b"trap"` is rejected; the reply is the
    /// list length so far. Snapshots are the list joined by newlines.
    #[derive(Debug, Default, Clone, PartialEq, Eq)]
    pub struct ListMachine {
        /// Commands applied so far.
        pub items: Vec<Vec<u8>>,
    }

    impl StateMachine for ListMachine {
        fn apply(&mut self, command: &[u8]) -> Result<Vec<u8>, Rejection> {
            if command == b"trap" {
                return Err(Rejection {
                    kind: RejectKind::Trap,
                    message: "asked to trap".into(),
                });
            }
            self.items.push(command.to_vec());
            Ok(self.items.len().to_string().into_bytes())
        }

        fn query(&mut self, _q: &[u8]) -> Result<Vec<u8>, Rejection> {
            Ok(self.items.len().to_string().into_bytes())
        }

        fn snapshot(&mut self) -> Result<Vec<u8>, Rejection> {
            Ok(self.items.join(&b'\n'))
        }

        fn restore(&mut self, snapshot: &[u8]) -> Result<(), Rejection> {
            self.items = if snapshot.is_empty() {
                vec![]
            } else {
                snapshot
                    .split(|b| *b == b'\n')
                    .map(<[u8]>::to_vec)
                    .collect()
            };
            Ok(())
        }
    }

    /// A [`ListMachine`] that runs a named module and can switch: modules
    /// whose name starts with `trap` refuse the switch (like a migration that
    /// traps), and a module named `upper` upper-cases commands from then on.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct VersionedMachine {
        /// The module running.
        pub module: String,
        /// The state.
        pub list: ListMachine,
    }

    impl VersionedMachine {
        /// A machine running `module` with an empty list.
        pub fn new(module: &str) -> Self {
            VersionedMachine {
                module: module.into(),
                list: ListMachine::default(),
            }
        }
    }

    impl StateMachine for VersionedMachine {
        fn apply(&mut self, command: &[u8]) -> Result<Vec<u8>, Rejection> {
            if self.module == "upper" {
                return self.list.apply(&command.to_ascii_uppercase());
            }
            self.list.apply(command)
        }

        fn query(&mut self, q: &[u8]) -> Result<Vec<u8>, Rejection> {
            self.list.query(q)
        }

        fn snapshot(&mut self) -> Result<Vec<u8>, Rejection> {
            self.list.snapshot()
        }

        fn restore(&mut self, snapshot: &[u8]) -> Result<(), Rejection> {
            self.list.restore(snapshot)
        }

        fn upgrade(&mut self, from: &str, to: &str) -> Result<(), Rejection> {
            assert_eq!(from, self.module, "upgrade called with the wrong `from`");
            if to.starts_with("trap") {
                return Err(Rejection {
                    kind: RejectKind::Trap,
                    message: format!("{to} refuses the migration"),
                });
            }
            self.module = to.into();
            Ok(())
        }

        fn load(&mut self, module: &str, snapshot: Option<&[u8]>) -> Result<(), Rejection> {
            self.list.restore(snapshot.unwrap_or_default())?;
            self.module = module.into();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::ListMachine;
    use super::*;

    fn cmd(client: Option<(&str, u64)>, p: &[u8]) -> Command {
        Command {
            client: client.map(|(id, seq)| ClientTag { id: id.into(), seq }),
            payload: p.to_vec(),
        }
    }

    #[test]
    fn applies_in_order_only() {
        let mut s = ReplicaState::new(0, "m1".into());
        let mut m = ListMachine::default();
        assert_eq!(
            s.apply(2, &Entry::Noop, &mut m),
            Err(ApplyError::OutOfOrder {
                expected: 1,
                got: 2
            })
        );
        s.apply(1, &Entry::Noop, &mut m).unwrap();
        assert_eq!(s.applied, 1);
    }

    #[test]
    fn retried_seq_returns_cached_reply_without_reapplying() {
        let mut s = ReplicaState::new(0, "m1".into());
        let mut m = ListMachine::default();
        let e1 = Entry::Batch(vec![cmd(Some(("c", 1)), b"a")]);
        let first = s.apply(1, &e1, &mut m).unwrap();
        let again = Entry::Batch(vec![cmd(Some(("c", 1)), b"a"), cmd(Some(("c", 0)), b"z")]);
        let second = s.apply(2, &again, &mut m).unwrap();
        assert_eq!(m.items, vec![b"a".to_vec()], "the retry was applied twice");
        assert_eq!(second.commands[0].outcome, first.commands[0].outcome);
        assert!(second.commands[0].duplicate);
        assert!(matches!(&second.commands[1].outcome, Outcome::Rejected(r) if r.contains("stale")));
    }

    #[test]
    fn rejections_are_recorded_and_hashed() {
        let mut s = ReplicaState::new(0, "m1".into());
        let mut m = ListMachine::default();
        let e = Entry::Batch(vec![cmd(Some(("c", 1)), b"trap"), cmd(None, b"x")]);
        let a = s.apply(1, &e, &mut m).unwrap();
        assert_eq!(
            a.commands[0].outcome,
            Outcome::Rejected("trap: asked to trap".into())
        );
        assert_eq!(a.commands[1].outcome, Outcome::Reply(b"1".to_vec()));
        // A retry of the rejected command gets the same rejection.
        let r = s
            .apply(2, &Entry::Batch(vec![cmd(Some(("c", 1)), b"trap")]), &mut m)
            .unwrap();
        assert_eq!(r.commands[0].outcome, a.commands[0].outcome);
    }

    fn upgrade(to: &str) -> Entry {
        Entry::Upgrade { to: to.into() }
    }

    #[test]
    fn an_upgrade_switches_at_its_index_and_is_hashed() {
        use super::testing::VersionedMachine;
        let mut s = ReplicaState::new(0, "m1".into());
        let mut m = VersionedMachine::new("m1");
        s.apply(1, &Entry::Batch(vec![cmd(None, b"a")]), &mut m)
            .unwrap();
        let before = s.hash;
        let a = s.apply(2, &upgrade("upper"), &mut m).unwrap();
        let up = a.upgrade.expect("no upgrade outcome");
        assert_eq!((up.from.as_str(), up.to.as_str()), ("m1", "upper"));
        assert_eq!(up.result, UpgradeResult::Switched);
        assert_eq!(s.module, "upper");
        assert_eq!(s.previous_module.as_deref(), Some("m1"));
        assert_eq!(
            a.hash,
            before.upgrade(2, "m1", "upper", &UpgradeResult::Switched)
        );
        // Commands after the entry run on the new module, with the old state.
        s.apply(3, &Entry::Batch(vec![cmd(None, b"b")]), &mut m)
            .unwrap();
        assert_eq!(m.list.items, vec![b"a".to_vec(), b"B".to_vec()]);
        // The same module again changes nothing, but is recorded.
        let again = s.apply(4, &upgrade("upper"), &mut m).unwrap();
        assert_eq!(again.upgrade.unwrap().result, UpgradeResult::AlreadyRunning);
        assert_eq!(s.previous_module.as_deref(), Some("m1"));
    }

    #[test]
    fn a_rejected_upgrade_keeps_the_old_module_and_its_state() {
        use super::testing::VersionedMachine;
        let mut s = ReplicaState::new(0, "m1".into());
        let mut m = VersionedMachine::new("m1");
        s.apply(1, &Entry::Batch(vec![cmd(None, b"a")]), &mut m)
            .unwrap();
        let a = s.apply(2, &upgrade("trap-v2"), &mut m).unwrap();
        assert_eq!(
            a.upgrade.unwrap().result,
            UpgradeResult::Rejected("trap: trap-v2 refuses the migration".into())
        );
        assert_eq!((s.module.as_str(), s.previous_module.clone()), ("m1", None));
        assert_eq!(m.module, "m1");
        s.apply(3, &Entry::Batch(vec![cmd(None, b"b")]), &mut m)
            .unwrap();
        assert_eq!(m.list.items, vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn snapshots_carry_the_module_across_an_upgrade() {
        use super::testing::VersionedMachine;
        let mut s = ReplicaState::new(0, "m1".into());
        let mut m = VersionedMachine::new("m1");
        s.apply(1, &Entry::Batch(vec![cmd(Some(("c", 1)), b"a")]), &mut m)
            .unwrap();
        s.apply(2, &upgrade("upper"), &mut m).unwrap();
        let snap = s.snapshot(&mut m).unwrap();
        assert_eq!(snap.module_sha256, "upper");
        assert_eq!(snap.previous_module.as_deref(), Some("m1"));
        let decoded = SnapshotData::decode(&snap.encode().unwrap()).unwrap();
        assert_eq!(decoded, snap);
        let mut fresh = VersionedMachine::new("m1");
        let restored = ReplicaState::restore(&decoded, 0, &mut fresh).unwrap();
        assert_eq!(restored, s);
        assert_eq!(fresh, m);
    }

    #[test]
    fn a_machine_that_cannot_switch_rejects_every_upgrade() {
        let mut s = ReplicaState::new(0, "m1".into());
        let mut m = ListMachine::default();
        let a = s.apply(1, &upgrade("m2"), &mut m).unwrap();
        assert!(
            matches!(&a.upgrade.unwrap().result, UpgradeResult::Rejected(r) if r.starts_with("bad module")),
        );
        assert_eq!(s.module, "m1");
    }

    #[test]
    fn two_replicas_fed_the_same_entries_agree_and_snapshots_restore() {
        let entries = [
            Entry::Batch(vec![cmd(Some(("a", 1)), b"x"), cmd(None, b"y")]),
            Entry::Noop,
            Entry::Batch(vec![cmd(Some(("a", 2)), b"z")]),
        ];
        let run = || {
            let mut s = ReplicaState::new(10, "m1".into());
            let mut m = ListMachine::default();
            for (i, e) in entries.iter().enumerate() {
                s.apply(i as u64 + 1, e, &mut m).unwrap();
            }
            (s, m)
        };
        let (s1, mut m1) = run();
        let (s2, mut m2) = run();
        assert_eq!(s1, s2);
        let snap = s1.snapshot(&mut m1).unwrap();
        assert_eq!(snap, s2.snapshot(&mut m2).unwrap());

        let mut m3 = ListMachine::default();
        let s3 = ReplicaState::restore(&snap, 10, &mut m3).unwrap();
        assert_eq!(s3, s1);
        assert_eq!(m3, m1);
    }
}
