//! What the driver needs to switch modules at an upgrade entry.
//!
//! Whether a module is at hand is a fact about this process, not about the
//! history, so it must never decide an upgrade's outcome (see
//! `host/switching.rs`). The driver therefore asks the catalog first and, for
//! a module it lacks, fetches it from the store (`modules/<sha256>`) and adds
//! it *before* the upgrade entry is applied; applying waits meanwhile.

use std::fmt::Debug;
use std::sync::Arc;

use futures::future::BoxFuture;

/// The modules a replica's state machine can switch to.
///
/// # Requirements
/// * After `add(h, b)` returns `Ok`, `has(h)` is true, and the state
///   machine's `upgrade(_, h)` and `load(h, _)` run module `h` (or reject it
///   deterministically when `b` is not a module that loads).
/// * `add` refuses bytes whose sha256 is not `h`, and records nothing then.
/// * `add` never blocks an async worker: compiling a module takes long
///   enough (hundreds of milliseconds on a loaded machine) to starve the
///   replica's API, and a follower would take the silent leader for dead.
pub trait ModuleCatalog: Send + Sync + Debug + 'static {
    /// True when switching to `sha256` needs no I/O.
    fn has(&self, sha256: &str) -> bool;
    /// Add module bytes fetched from the store.
    fn add(
        self: Arc<Self>,
        sha256: String,
        bytes: Vec<u8>,
    ) -> BoxFuture<'static, Result<(), String>>;
}

impl ModuleCatalog for crate::host::ModuleSet {
    fn has(&self, sha256: &str) -> bool {
        self.contains(sha256)
    }

    /// Compiles on tokio's blocking pool.
    fn add(
        self: Arc<Self>,
        sha256: String,
        bytes: Vec<u8>,
    ) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || self.insert_bytes(&sha256, &bytes))
                .await
                .unwrap_or_else(|e| Err(format!("compiling the module failed: {e}")))
        })
    }
}
