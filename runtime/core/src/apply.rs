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
}

impl ReplicaState {
    /// State before index 1.
    pub fn new(session_expiry: u64) -> Self {
        ReplicaState {
            applied: 0,
            hash: ChainHash::GENESIS,
            sessions: Sessions::default(),
            session_expiry,
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
            hash: self.hash,
        };
        match entry {
            Entry::Noop => self.hash = self.hash.noop(index),
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
        module_sha256: &str,
    ) -> Result<SnapshotData, Rejection> {
        Ok(SnapshotData {
            index: self.applied,
            hash: self.hash.0,
            module_sha256: module_sha256.to_string(),
            sessions: self.sessions.clone(),
            state: sm.snapshot()?,
        })
    }

    /// Rebuild from a snapshot: restores the guest and returns the host state.
    pub fn restore<M: StateMachine + ?Sized>(
        snapshot: &SnapshotData,
        session_expiry: u64,
        sm: &mut M,
    ) -> Result<Self, Rejection> {
        sm.restore(&snapshot.state)?;
        Ok(ReplicaState {
            applied: snapshot.index,
            hash: ChainHash(snapshot.hash),
            sessions: snapshot.sessions.clone(),
            session_expiry,
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
        let mut s = ReplicaState::new(0);
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
        let mut s = ReplicaState::new(0);
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
        let mut s = ReplicaState::new(0);
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

    #[test]
    fn two_replicas_fed_the_same_entries_agree_and_snapshots_restore() {
        let entries = [
            Entry::Batch(vec![cmd(Some(("a", 1)), b"x"), cmd(None, b"y")]),
            Entry::Noop,
            Entry::Batch(vec![cmd(Some(("a", 2)), b"z")]),
        ];
        let run = || {
            let mut s = ReplicaState::new(10);
            let mut m = ListMachine::default();
            for (i, e) in entries.iter().enumerate() {
                s.apply(i as u64 + 1, e, &mut m).unwrap();
            }
            (s, m)
        };
        let (s1, mut m1) = run();
        let (s2, mut m2) = run();
        assert_eq!(s1, s2);
        let snap = s1.snapshot(&mut m1, "sha").unwrap();
        assert_eq!(snap, s2.snapshot(&mut m2, "sha").unwrap());

        let mut m3 = ListMachine::default();
        let s3 = ReplicaState::restore(&snap, 10, &mut m3).unwrap();
        assert_eq!(s3, s1);
        assert_eq!(m3, m1);
    }
}
