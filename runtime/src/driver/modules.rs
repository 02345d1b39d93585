//! What the driver needs to switch modules at an upgrade entry.
//!
//! Whether a module is at hand is a fact about this process, not about the
//! history, so it must never decide an upgrade's outcome (see
//! `host/switching.rs`). The driver therefore asks the catalog first and, for
//! a module it lacks, fetches it from the store (`modules/<sha256>`) and adds
//! it *before* the upgrade entry is applied; applying waits meanwhile.

use std::fmt::Debug;

/// The modules a replica's state machine can switch to.
///
/// # Requirements
/// * After `add(h, b)` returns `Ok`, `has(h)` is true, and the state
///   machine's `upgrade(_, h)` and `load(h, _)` run module `h` (or reject it
///   deterministically when `b` is not a module that loads).
/// * `add` refuses bytes whose sha256 is not `h`, and records nothing then.
pub trait ModuleCatalog: Send + Sync + Debug + 'static {
    /// True when switching to `sha256` needs no I/O.
    fn has(&self, sha256: &str) -> bool;
    /// Add module bytes fetched from the store.
    fn add(&self, sha256: &str, bytes: &[u8]) -> Result<(), String>;
}

impl ModuleCatalog for crate::host::ModuleSet {
    fn has(&self, sha256: &str) -> bool {
        self.contains(sha256)
    }

    fn add(&self, sha256: &str, bytes: &[u8]) -> Result<(), String> {
        self.insert_bytes(sha256, bytes)
    }
}
