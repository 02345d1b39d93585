//! The hash chain that makes divergence visible.
//!
//! `h(i) = sha256(h(i-1) || index || position || client || command || outcome)`
//! per command, `sha256(h(i-1) || index || "noop")` for a no-op entry, and
//! `sha256(h(i-1) || index || "upgrade" || from || to || outcome)` for a
//! module upgrade (so the switch, and whether it happened, is covered too).
//! Replicas publish it in `members/` and print it in every trace line; two
//! replicas with the same applied position and a different hash have diverged,
//! and `dorado replay` finds the first index where that happened.

use sha2::{Digest, Sha256};

use crate::entry::Command;
use crate::session::Outcome;
use crate::store::Index;
use crate::upgrade::UpgradeResult;

/// A hash chain value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChainHash(pub [u8; 32]);

impl std::fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChainHash({})", self.short())
    }
}

impl std::fmt::Display for ChainHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl ChainHash {
    /// The chain value before index 1.
    pub const GENESIS: ChainHash = ChainHash([0; 32]);

    /// Extend the chain with one applied command.
    pub fn command(&self, index: Index, position: u32, cmd: &Command, outcome: &Outcome) -> Self {
        let mut h = Sha256::new();
        h.update(self.0);
        h.update(index.to_be_bytes());
        h.update(position.to_be_bytes());
        match &cmd.client {
            Some(c) => {
                h.update((c.id.len() as u32).to_be_bytes());
                h.update(c.id.as_bytes());
                h.update(c.seq.to_be_bytes());
            }
            None => h.update(0u32.to_be_bytes()),
        }
        h.update((cmd.payload.len() as u64).to_be_bytes());
        h.update(&cmd.payload);
        match outcome {
            Outcome::Reply(r) => {
                h.update([0u8]);
                h.update((r.len() as u64).to_be_bytes());
                h.update(r);
            }
            Outcome::Rejected(reason) => {
                h.update([1u8]);
                h.update((reason.len() as u64).to_be_bytes());
                h.update(reason.as_bytes());
            }
        }
        ChainHash(h.finalize().into())
    }

    /// Extend the chain with a no-op entry.
    pub fn noop(&self, index: Index) -> Self {
        let mut h = Sha256::new();
        h.update(self.0);
        h.update(index.to_be_bytes());
        h.update(b"noop");
        ChainHash(h.finalize().into())
    }

    /// Extend the chain with a module upgrade entry and its outcome.
    pub fn upgrade(&self, index: Index, from: &str, to: &str, result: &UpgradeResult) -> Self {
        let mut h = Sha256::new();
        h.update(self.0);
        h.update(index.to_be_bytes());
        h.update(b"upgrade");
        for part in [from, to, &result.describe()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        ChainHash(h.finalize().into())
    }

    /// First 12 hex digits, for human traces.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }

    /// Parse 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let v = hex::decode(s).ok()?;
        let a: [u8; 32] = v.try_into().ok()?;
        Some(ChainHash(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::ClientTag;

    fn cmd(p: &[u8]) -> Command {
        Command {
            client: Some(ClientTag {
                id: "c".into(),
                seq: 1,
            }),
            payload: p.to_vec(),
        }
    }

    #[test]
    fn every_input_changes_the_hash() {
        let g = ChainHash::GENESIS;
        let ok = Outcome::Reply(b"r".to_vec());
        let base = g.command(1, 0, &cmd(b"x"), &ok);
        assert_ne!(base, g.command(2, 0, &cmd(b"x"), &ok));
        assert_ne!(base, g.command(1, 1, &cmd(b"x"), &ok));
        assert_ne!(base, g.command(1, 0, &cmd(b"y"), &ok));
        assert_ne!(
            base,
            g.command(1, 0, &cmd(b"x"), &Outcome::Reply(b"s".to_vec()))
        );
        assert_ne!(
            base,
            g.command(1, 0, &cmd(b"x"), &Outcome::Rejected("r".into()))
        );
        assert_ne!(base, base.noop(2).noop(3));
        let up = base.upgrade(2, "a", "b", &UpgradeResult::Switched);
        assert_ne!(up, base.upgrade(2, "a", "c", &UpgradeResult::Switched));
        assert_ne!(up, base.upgrade(2, "c", "b", &UpgradeResult::Switched));
        assert_ne!(up, base.upgrade(3, "a", "b", &UpgradeResult::Switched));
        assert_ne!(
            up,
            base.upgrade(2, "a", "b", &UpgradeResult::Rejected("x".into()))
        );
        assert_ne!(up, base.noop(2));
        assert_eq!(base, g.command(1, 0, &cmd(b"x"), &ok));
    }

    #[test]
    fn hex_round_trip() {
        let h = ChainHash::GENESIS.noop(1);
        assert_eq!(ChainHash::from_hex(&h.to_string()), Some(h));
        assert_eq!(ChainHash::from_hex("zz"), None);
    }
}
