//! `dorado replay`: re-execute a group's stored history offline.
//!
//! The hash chain makes divergence *visible*; replay makes it *locatable*:
//! it applies the stored log (from the start, or from the newest snapshot when
//! the log below it was truncated) to a fresh instance of a module and
//! compares its hash chain with every hash it can find — the replicas'
//! published `members/` records and, if given, a saved trace — reporting the
//! first index that differs. Typical uses: finding where a replica went
//! wrong, and (through [`verify_upgrade`]) proving that a new module build
//! behaves like the running one on production history before it is proposed.
//!
//! Replay follows the history's module upgrades: it starts on the group's
//! first module (or the module of the snapshot it starts from) and switches
//! at every upgrade entry, fetching each module from the store
//! (`modules/<sha256>`) just as a replica does.

use std::collections::BTreeMap;
use std::sync::Arc;

use dorado_core::{
    AppliedEntry, ChainHash, Entry, Index, Outcome, ReplicaState, SnapshotData, StateMachine,
    Store, StoreError,
};

use crate::driver::ModuleCatalog;
use crate::host::{ModuleSet, Switching};
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
    /// The history needs a module that neither the store nor the files given
    /// hold.
    #[error("the history runs module {0}, which is not in the store; pass it with --module FILE")]
    MissingModule(String),
    /// The group has no meta: it does not exist (or is not a Dorado group).
    #[error("the group has no meta record; is the group name right?")]
    NoGroup,
}

/// Where a replay starts: the state after the newest snapshot (when the log
/// below it is truncated) or the group's first module in its initial state,
/// and the log's last index.
struct Start {
    state: ReplicaState,
    snapshot: Option<(Index, Vec<u8>)>,
    last: Index,
}

/// Make `sha256` loadable by `catalog`, from the store if needed.
async fn ensure_module<S: Store>(
    store: &S,
    catalog: &Arc<dyn ModuleCatalog>,
    sha256: &str,
) -> Result<(), ReplayError> {
    if catalog.has(sha256) {
        return Ok(());
    }
    let bytes = store
        .get_module(sha256)
        .await?
        .ok_or_else(|| ReplayError::MissingModule(sha256.to_owned()))?;
    catalog
        .clone()
        .add(sha256.to_owned(), bytes)
        .await
        .map_err(|e| ReplayError::Corrupt(format!("module {sha256}: {e}")))
}

/// Read where the replay starts and bring `sm` there.
async fn start<S: Store, M: StateMachine>(
    store: &S,
    sm: &mut M,
    catalog: &Arc<dyn ModuleCatalog>,
) -> Result<Start, ReplayError> {
    let meta = store.meta().await?.ok_or(ReplayError::NoGroup)?;
    let last = store.last_index(0).await?.unwrap_or(0);
    let first = store.read_log(1, last, 1).await?.first().map(|(i, _)| *i);
    let mut state = ReplicaState::new(meta.session_expiry_entries, meta.module_sha256.clone());
    if first == Some(1) || last == 0 {
        ensure_module(store, catalog, &meta.module_sha256).await?;
        sm.load(&meta.module_sha256, None)
            .map_err(|e| ReplayError::Restore {
                index: 0,
                reason: e.to_string(),
            })?;
        return Ok(Start {
            state,
            snapshot: None,
            last,
        });
    }
    let Some((index, bytes)) = store.newest_snapshot().await? else {
        return Err(ReplayError::Missing(1));
    };
    let snap = SnapshotData::decode(&bytes)
        .map_err(|e| ReplayError::Corrupt(format!("snapshot {index}: {e}")))?;
    ensure_module(store, catalog, &snap.module_sha256).await?;
    state = ReplicaState::restore(&snap, state.session_expiry, sm).map_err(|e| {
        ReplayError::Restore {
            index,
            reason: e.to_string(),
        }
    })?;
    Ok(Start {
        state,
        snapshot: Some((index, snap.state)),
        last,
    })
}

/// Every stored entry from `from` to `last`, in order, each handed to `each`
/// (which returns false to stop early). Returns the last index handed over.
async fn for_each_entry<S: Store>(
    store: &S,
    from: Index,
    last: Index,
    mut each: impl AsyncEntryFn,
) -> Result<Index, ReplayError> {
    let mut next = from;
    while next <= last {
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
            if !each.call(index, entry).await? {
                return Ok(index);
            }
            next = index + 1;
        }
    }
    Ok(next.saturating_sub(1))
}

/// An async callback over `(index, entry)` (closures cannot borrow their
/// captures across an await in stable Rust's `async` closures for `&mut`).
trait AsyncEntryFn {
    /// Handle one entry; `Ok(false)` stops.
    fn call(
        &mut self,
        index: Index,
        entry: Entry,
    ) -> impl std::future::Future<Output = Result<bool, ReplayError>>;
}

/// Replay the group's stored history against `sm`, switching modules at its
/// upgrade entries (modules come from `catalog`, filled from the store), and
/// compare with the members' published hashes and the optional trace.
pub async fn replay<S: Store, M: StateMachine>(
    store: &S,
    sm: &mut M,
    catalog: &Arc<dyn ModuleCatalog>,
    trace: &[TracedHash],
) -> Result<ReplayReport, ReplayError> {
    let Start {
        state,
        snapshot,
        last,
    } = start(store, sm, catalog).await?;
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

    let mut run = ReplayRun {
        store,
        sm,
        catalog,
        state,
        refs,
        commands: 0,
        checked: 0,
        divergence: None,
    };
    let to = for_each_entry(store, from, last, &mut run).await?;
    Ok(ReplayReport {
        from,
        to,
        snapshot: snapshot.map(|(i, _)| i),
        commands: run.commands,
        hash: run.state.hash,
        checked: run.checked,
        divergence: run.divergence,
    })
}

struct ReplayRun<'a, S, M> {
    store: &'a S,
    sm: &'a mut M,
    catalog: &'a Arc<dyn ModuleCatalog>,
    state: ReplicaState,
    refs: BTreeMap<Index, Vec<(String, String)>>,
    commands: u64,
    checked: usize,
    divergence: Option<Divergence>,
}

impl<S: Store, M: StateMachine> AsyncEntryFn for &mut ReplayRun<'_, S, M> {
    async fn call(&mut self, index: Index, entry: Entry) -> Result<bool, ReplayError> {
        if let Entry::Upgrade { to } = &entry {
            ensure_module(self.store, self.catalog, to).await?;
        }
        let applied = self
            .state
            .apply(index, &entry, self.sm)
            .map_err(|e| ReplayError::Corrupt(e.to_string()))?;
        self.commands += applied.commands.len() as u64;
        if let Some(rs) = self.refs.get(&index) {
            let actual = applied.hash.to_string();
            for (source, expected) in rs {
                self.checked += 1;
                if expected.is_empty() || !actual.starts_with(expected.as_str()) {
                    self.divergence = Some(Divergence {
                        index,
                        source: source.clone(),
                        expected: expected.clone(),
                        actual,
                    });
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// What [`verify_upgrade`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The module the group runs where the check starts.
    pub from_module: String,
    /// The module checked.
    pub to_module: String,
    /// Snapshot the check started from, if any.
    pub snapshot: Option<Index>,
    /// Last index checked.
    pub to: Index,
    /// Commands compared.
    pub commands: u64,
    /// The switch itself was rejected (the new module cannot take the state).
    pub switch_rejected: Option<String>,
    /// The first command whose reply differs.
    pub first_difference: Option<ReplyDifference>,
    /// Whether both modules' snapshots are byte-identical at the end.
    pub state_equal: bool,
}

impl VerifyReport {
    /// Every reply and the resulting state agree.
    pub fn agrees(&self) -> bool {
        self.switch_rejected.is_none() && self.first_difference.is_none() && self.state_equal
    }
}

/// A command the two modules answered differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyDifference {
    /// Log index of its entry.
    pub index: Index,
    /// Position in the batch.
    pub position: u32,
    /// The running module's outcome.
    pub old: String,
    /// The new module's outcome.
    pub new: String,
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.snapshot {
            Some(s) => writeln!(f, "checked from snapshot at index {s} to index {}", self.to)?,
            None => writeln!(f, "checked the whole history, indexes 1..={}", self.to)?,
        }
        writeln!(
            f,
            "running module {}\nnew module     {}",
            self.from_module, self.to_module
        )?;
        if let Some(r) = &self.switch_rejected {
            return write!(f, "the switch itself is rejected: {r}");
        }
        match &self.first_difference {
            None => writeln!(f, "all {} replies agree", self.commands)?,
            Some(d) => writeln!(
                f,
                "FIRST DIFFERENCE at index {}.{}: running module {}, new module {}",
                d.index, d.position, d.old, d.new
            )?,
        }
        if self.state_equal {
            write!(f, "the resulting states are identical")
        } else {
            write!(f, "the resulting states DIFFER")
        }
    }
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Reply(r) => format!("reply {}", crate::trace::excerpt(r)),
        Outcome::Rejected(reason) => format!("rejected: {reason}"),
    }
}

/// Would switching the group to `new_module` now change anything? Replays
/// the history since the newest snapshot twice, offline: as it happened, and
/// with the group switched to `new_module` (by the same path an upgrade
/// entry takes: migration hook, else restore) at its start, then compares
/// every command's outcome and the final states. Upgrade entries in that
/// history are followed by the first run and ignored by the second. Nothing
/// is written to the store.
pub async fn verify_upgrade<S: Store>(
    store: &S,
    modules: &Arc<ModuleSet>,
    new_module: crate::host::Module,
) -> Result<VerifyReport, ReplayError> {
    let to_module = new_module.sha256().to_owned();
    let instance = |m: &crate::host::Module| {
        m.instantiate()
            .map_err(|e| ReplayError::Corrupt(format!("cannot instantiate a module: {e}")))
    };
    let mut old_sm = Switching::new(modules.clone(), instance(&new_module)?);
    let mut new_sm = Switching::new(modules.clone(), instance(&new_module)?);
    let catalog: Arc<dyn ModuleCatalog> = modules.clone();
    let catalog = &catalog;
    let Start {
        state: old_state,
        snapshot,
        last,
    } = start(store, &mut old_sm, catalog).await?;
    let from_module = old_state.module.clone();
    let mut new_state = old_state.clone();
    let loaded = match &snapshot {
        Some((_, bytes)) => new_sm.load(&from_module, Some(bytes)),
        None => new_sm.load(&from_module, None),
    };
    loaded.map_err(|e| ReplayError::Restore {
        index: new_state.applied,
        reason: e.to_string(),
    })?;
    let switched = if from_module == to_module {
        Ok(())
    } else {
        new_sm.upgrade(&from_module, &to_module)
    };
    let mut report = VerifyReport {
        from_module,
        to_module: to_module.clone(),
        snapshot: snapshot.as_ref().map(|(i, _)| *i),
        to: old_state.applied,
        commands: 0,
        switch_rejected: switched.err().map(|r| r.to_string()),
        first_difference: None,
        state_equal: false,
    };
    if report.switch_rejected.is_some() {
        return Ok(report);
    }
    new_state.module = to_module;
    let mut run = VerifyRun {
        store,
        catalog,
        old: (old_state, old_sm),
        new: (new_state, new_sm),
        report: &mut report,
    };
    let to = for_each_entry(store, run.old.0.applied + 1, last, &mut run).await?;
    let old_snap = run.old.1.snapshot();
    let new_snap = run.new.1.snapshot();
    report.to = to;
    report.state_equal = matches!((old_snap, new_snap), (Ok(a), Ok(b)) if a == b);
    Ok(report)
}

struct VerifyRun<'a, S> {
    store: &'a S,
    catalog: &'a Arc<dyn ModuleCatalog>,
    old: (ReplicaState, Switching),
    new: (ReplicaState, Switching),
    report: &'a mut VerifyReport,
}

impl<S: Store> AsyncEntryFn for &mut VerifyRun<'_, S> {
    async fn call(&mut self, index: Index, entry: Entry) -> Result<bool, ReplayError> {
        if let Entry::Upgrade { to } = &entry {
            ensure_module(self.store, self.catalog, to).await?;
        }
        let apply = |(state, sm): &mut (ReplicaState, Switching), e: &Entry| {
            state
                .apply(index, e, sm)
                .map_err(|e| ReplayError::Corrupt(e.to_string()))
        };
        let old: AppliedEntry = apply(&mut self.old, &entry)?;
        // The switched run stays on the new module.
        let new_entry = match entry {
            Entry::Upgrade { .. } => Entry::Noop,
            other => other,
        };
        let new: AppliedEntry = apply(&mut self.new, &new_entry)?;
        self.report.commands += old.commands.len() as u64;
        for (o, n) in old.commands.iter().zip(&new.commands) {
            if o.outcome != n.outcome {
                self.report.first_difference = Some(ReplyDifference {
                    index,
                    position: o.position,
                    old: describe(&o.outcome),
                    new: describe(&n.outcome),
                });
                return Ok(false);
            }
        }
        Ok(true)
    }
}
