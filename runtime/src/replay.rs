//! `dorado replay`: re-execute a group's stored history offline.
//!
//! The hash chain makes divergence *visible*; replay makes it *locatable*:
//! it applies the stored log (from the start, or from the newest snapshot when
//! the log below it was truncated) to a fresh instance of a module and
//! compares its hash chain with every hash it can find — the replicas'
//! published `members/` records and, if given, a saved trace — reporting the
//! first index that differs. Typical uses: proving a new module build is
//! deterministic against production history, or finding where a replica went
//! wrong.

use std::collections::BTreeMap;

use dorado_core::{
    ChainHash, Entry, Index, ReplicaState, SnapshotData, StateMachine, Store, StoreError,
};

use crate::trace::TracedHash;

/// What was compared and whether it matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// First index replayed (1, or the snapshot index + 1).
    pub from: Index,
    /// Last index replayed.
    pub to: Index,
    /// Snapshot the replay started from, if the log was truncated.
    pub snapshot: Option<Index>,
    /// Commands executed.
    pub commands: u64,
    /// Final hash chain value.
    pub hash: ChainHash,
    /// How many reference hashes were compared.
    pub checked: usize,
    /// The first mismatch, if any.
    pub divergence: Option<Divergence>,
}

/// The first index whose hash differs from a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// Log index.
    pub index: Index,
    /// Where the reference came from (`member r1`, `trace`).
    pub source: String,
    /// The reference hash (possibly a prefix, as printed in human traces).
    pub expected: String,
    /// What replay computed.
    pub actual: String,
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(s) = self.snapshot {
            writeln!(
                f,
                "started from snapshot at index {s} (log below it is truncated)"
            )?;
        }
        writeln!(
            f,
            "replayed indexes {}..={} ({} commands), final hash {}",
            self.from, self.to, self.commands, self.hash
        )?;
        match &self.divergence {
            None => write!(f, "all {} reference hashes match", self.checked),
            Some(d) => write!(
                f,
                "DIVERGENCE at index {}: {} has {} but replay computed {}",
                d.index, d.source, d.expected, d.actual
            ),
        }
    }
}

/// Why replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored entry or snapshot does not decode.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The state machine could not restore the snapshot.
    #[error("cannot restore snapshot {index}: {reason}")]
    Restore {
        /// Snapshot index.
        index: Index,
        /// Why.
        reason: String,
    },
    /// The log has a hole that no snapshot covers.
    #[error("log entry {0} is missing and no snapshot covers it")]
    Missing(Index),
}

/// Replay the group's stored history against `sm` and compare with the
/// members' published hashes and the optional trace.
pub async fn replay<S: Store, M: StateMachine>(
    store: &S,
    sm: &mut M,
    trace: &[TracedHash],
) -> Result<ReplayReport, ReplayError> {
    let last = store.last_index(0).await?.unwrap_or(0);
    let first = store.read_log(1, last, 1).await?.first().map(|(i, _)| *i);
    let mut state = ReplicaState::new(session_expiry(store).await?);
    let mut snapshot = None;
    if first != Some(1) && last > 0 {
        let Some((index, bytes)) = store.newest_snapshot().await? else {
            return Err(ReplayError::Missing(1));
        };
        let snap = SnapshotData::decode(&bytes)
            .map_err(|e| ReplayError::Corrupt(format!("snapshot {index}: {e}")))?;
        state = ReplicaState::restore(&snap, state.session_expiry, sm).map_err(|e| {
            ReplayError::Restore {
                index,
                reason: e.to_string(),
            }
        })?;
        snapshot = Some(index);
    }
    let from = state.applied + 1;

    // Reference hashes by index: last trace line per index wins (it is the
    // hash after the entry's last command).
    let mut refs: BTreeMap<Index, Vec<(String, String)>> = BTreeMap::new();
    let mut by_index: BTreeMap<Index, &str> = BTreeMap::new();
    for t in trace {
        by_index.insert(t.index, &t.hash);
    }
    for (i, h) in by_index {
        refs.entry(i)
            .or_default()
            .push(("trace".into(), h.to_string()));
    }
    for (replica, m) in store.members().await? {
        refs.entry(m.applied_index)
            .or_default()
            .push((format!("member {replica}"), m.hash));
    }

    let mut commands = 0u64;
    let mut checked = 0usize;
    let mut divergence = None;
    let mut next = from;
    'outer: while next <= last {
        let page = store.read_log(next, last, 1000).await?;
        if page.is_empty() {
            return Err(ReplayError::Missing(next));
        }
        for (index, bytes) in page {
            if index != next {
                return Err(ReplayError::Missing(next));
            }
            let entry = Entry::decode(&bytes)
                .map_err(|e| ReplayError::Corrupt(format!("log entry {index}: {e}")))?;
            let applied = state
                .apply(index, &entry, sm)
                .map_err(|e| ReplayError::Corrupt(e.to_string()))?;
            commands += applied.commands.len() as u64;
            if let Some(rs) = refs.get(&index) {
                let actual = applied.hash.to_string();
                for (source, expected) in rs {
                    checked += 1;
                    if expected.is_empty() || !actual.starts_with(expected.as_str()) {
                        divergence = Some(Divergence {
                            index,
                            source: source.clone(),
                            expected: expected.clone(),
                            actual,
                        });
                        break 'outer;
                    }
                }
            }
            next = index + 1;
        }
    }
    Ok(ReplayReport {
        from,
        to: next.saturating_sub(1),
        snapshot,
        commands,
        hash: state.hash,
        checked,
        divergence,
    })
}

async fn session_expiry<S: Store>(store: &S) -> Result<u64, ReplayError> {
    Ok(store.meta().await?.map_or(0, |m| m.session_expiry_entries))
}
