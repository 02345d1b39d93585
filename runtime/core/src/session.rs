//! Exactly-once client sessions.
//!
//! A client that retries a command (after a timeout, a leader change, a
//! forwarded request that died) must not have it applied twice. The table is
//! part of the *replicated* state: every replica updates it while applying, so
//! whichever replica answers a retry knows the original reply. It travels in
//! snapshots, and sessions expire by log position, never by wall time, so that
//! every replica forgets the same sessions at the same index.

use std::collections::BTreeMap;

use crate::store::Index;

/// What applying a command produced, as clients and the hash chain see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The state machine's reply bytes.
    Reply(Vec<u8>),
    /// The command was refused deterministically (trap, stale sequence number).
    Rejected(String),
}

/// The last command a client had applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Highest sequence number applied for this client.
    pub seq: u64,
    /// Log index where that happened (drives expiry).
    pub last_index: Index,
    /// Its outcome, returned again to a retry.
    pub outcome: Outcome,
}

/// Decision for an incoming sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCheck {
    /// New command: apply it.
    Fresh,
    /// Same seq as the last applied one: answer with the cached outcome.
    Duplicate(Outcome),
    /// Older than the last applied seq: refuse (its reply is gone).
    Stale {
        /// The session's current seq.
        current: u64,
    },
}

/// Session table, ordered so that snapshots are byte-identical everywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sessions {
    map: BTreeMap<String, Session>,
}

/// How often (in log indexes) expiry runs. Deterministic: a function of the index only.
pub const EXPIRY_CHECK_EVERY: Index = 1024;

impl Sessions {
    /// Classify `seq` for `client`.
    pub fn check(&self, client: &str, seq: u64) -> SessionCheck {
        match self.map.get(client) {
            None => SessionCheck::Fresh,
            Some(s) if seq > s.seq => SessionCheck::Fresh,
            Some(s) if seq == s.seq => SessionCheck::Duplicate(s.outcome.clone()),
            Some(s) => SessionCheck::Stale { current: s.seq },
        }
    }

    /// Record an applied command.
    pub fn insert(&mut self, client: String, session: Session) {
        self.map.insert(client, session);
    }

    /// Forget sessions idle for more than `expiry` entries, if `index` is a check point.
    pub fn expire(&mut self, index: Index, expiry: u64) {
        if expiry == 0 || !index.is_multiple_of(EXPIRY_CHECK_EVERY) {
            return;
        }
        self.map
            .retain(|_, s| s.last_index.saturating_add(expiry) >= index);
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no client has a session.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Sessions in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Session)> {
        self.map.iter()
    }

    /// Look one session up.
    pub fn get(&self, client: &str) -> Option<&Session> {
        self.map.get(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(seq: u64, at: Index) -> Session {
        Session {
            seq,
            last_index: at,
            outcome: Outcome::Reply(vec![seq as u8]),
        }
    }

    #[test]
    fn seq_classification() {
        let mut t = Sessions::default();
        assert_eq!(t.check("a", 1), SessionCheck::Fresh);
        t.insert("a".into(), s(5, 10));
        assert_eq!(t.check("a", 6), SessionCheck::Fresh);
        assert_eq!(
            t.check("a", 5),
            SessionCheck::Duplicate(Outcome::Reply(vec![5]))
        );
        assert_eq!(t.check("a", 4), SessionCheck::Stale { current: 5 });
        assert_eq!(t.check("b", 1), SessionCheck::Fresh);
    }

    #[test]
    fn expiry_is_by_log_position_at_check_points_only() {
        let mut t = Sessions::default();
        t.insert("old".into(), s(1, 1));
        t.insert("new".into(), s(1, 2000));
        t.expire(2047, 100); // not a check point
        assert_eq!(t.len(), 2);
        t.expire(2048, 100);
        assert!(t.get("old").is_none());
        assert!(t.get("new").is_some());
        t.expire(4096, 0); // 0 disables expiry
        assert_eq!(t.len(), 1);
    }
}
