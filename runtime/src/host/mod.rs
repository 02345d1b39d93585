//! The deterministic wasm host: runs a guest module as a [`StateMachine`] that
//! every replica executes identically.
//!
//! Layout:
//! - this file: [`HostConfig`] and [`Host`], the one wasmtime `Engine` per
//!   process and the determinism settings it is built with;
//! - `module.rs`: [`Module`], load-time validation (no imports at all, the ABI
//!   exports with their exact signatures, including the optional
//!   `dorado_last_panic` and `dorado_migrate` when present,
//!   `dorado_abi_version() == 1`) and the module's sha256;
//! - `instance.rs`: [`Instance`], the ABI calls, the mapping from wasm traps to
//!   [`Rejection`]s, rollback after a trap, and [`Instance::migrate_from`];
//! - `error.rs`: [`LoadError`] (a module is refused) and [`HostError`] (the host
//!   itself failed);
//! - `switching.rs`: [`Switching`], the state machine a replica runs across
//!   module upgrades, and [`ModuleSet`], the modules it may switch to.
//!
//! # Why it is built this way
//! * **Replicas must agree.** Everything that could make two hosts execute the
//!   same module differently is switched off or pinned: no imports (so no
//!   clock, randomness or I/O can reach the guest), NaN canonicalisation,
//!   deterministic relaxed SIMD (and the proposal disabled), no threads.
//! * **Fuel, not epochs.** Runaway guests are stopped by a per-command fuel
//!   budget, which is counted in wasm operations and so trips at the same
//!   point on every replica. Wall-clock interruption would not.
//! * **A trap rejects the command, not the replica.** A command that traps
//!   (panic, out of fuel, memory cap) is refused with a [`RejectKind`] and the
//!   state is as if it never ran. The trapped wasm instance is thrown away and
//!   never reused; the host rebuilds the state from its last checkpoint
//!   snapshot plus the commands applied since (kept in a log), re-checkpointing
//!   as the log grows. The normal path therefore costs no snapshot per
//!   command, only a copy of the command bytes into the log. The price is host
//!   memory: one snapshot plus up to `max(checkpoint_log_bytes, 2 × snapshot)`
//!   of logged commands per instance.
//!
//! * **Upgrades migrate, in the new module.** At an `Upgrade` entry the old
//!   module's snapshot is handed to an instance of the new module with
//!   [`Instance::migrate_from`]: `dorado_migrate(sha256(old) ++ snapshot)` if
//!   the new module exports it, plain `dorado_restore(snapshot)` otherwise.
//!   A guest refuses by trapping, which rejects the upgrade like any other
//!   trap (the instance keeps its state). Rollback speaks only
//!   `dorado_restore`, so the checkpoint after a migration is a snapshot
//!   taken from the migrated instance, in the new module's format.
//!
//! # Known limit
//! Fuel use and memory growth of a command depend slightly on the guest's heap
//! layout, and a rebuilt (or snapshot-restored) instance has a different layout
//! from one that ran the whole history. A command that uses almost exactly
//! its budget could therefore be accepted on one replica and refused on
//! another. The budgets are meant as a safety net far above normal use, not as
//! something commands should come close to.
//!
//! [`StateMachine`]: dorado_core::StateMachine
//! [`Rejection`]: dorado_core::Rejection
//! [`RejectKind`]: dorado_core::RejectKind

mod error;
mod instance;
mod module;
mod switching;

#[cfg(test)]
mod tests;

pub use error::{HostError, LoadError};
pub use instance::Instance;
pub use module::{ABI_VERSION, ExportInfo, Module};
pub use switching::{ModuleSet, Switching};

use std::fmt;
use wasmtime::{Config, Engine, WasmFeatures};

/// Default fuel for one command or query: 10⁸ units (about one per wasm
/// operation). A 100-byte `kv` put uses about 5.5·10³, so this leaves ~18 000×
/// headroom, while an endless loop burns it in about 20 ms (2-core AMD EPYC,
/// release build). Raise it for guests with genuinely heavy commands.
pub const DEFAULT_FUEL_PER_COMMAND: u64 = 100_000_000;
/// Default fuel for snapshots, restores and instantiation, whose cost grows
/// with the state rather than with one command.
pub const DEFAULT_FUEL_PER_SNAPSHOT: u64 = 10_000_000_000;
/// Default cap on a guest's linear memory: 256 MiB.
pub const DEFAULT_MEMORY_LIMIT: usize = 256 << 20;
/// Default minimum size of the rollback log before the host re-checkpoints.
pub const DEFAULT_CHECKPOINT_LOG_BYTES: usize = 4 << 20;

/// Limits and rollback tuning; part of what replicas must agree on (a
/// different fuel budget or memory cap can turn an accepted command into a
/// rejected one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostConfig {
    /// Fuel for one `apply` or `query` (about one unit per wasm operation).
    pub fuel_per_command: u64,
    /// Fuel for one `snapshot`, `restore`, instantiation or rollback replay.
    pub fuel_per_snapshot: u64,
    /// Cap on the guest's linear memory, in bytes. Growing past it traps.
    pub memory_limit: usize,
    /// The rollback log is folded into a new checkpoint snapshot once it holds
    /// this many bytes (or twice the last snapshot's size, if larger), so the
    /// snapshot cost stays proportional to the commands applied.
    pub checkpoint_log_bytes: usize,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            fuel_per_command: DEFAULT_FUEL_PER_COMMAND,
            fuel_per_snapshot: DEFAULT_FUEL_PER_SNAPSHOT,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            checkpoint_log_bytes: DEFAULT_CHECKPOINT_LOG_BYTES,
        }
    }
}

/// The process's wasm engine with Dorado's determinism settings.
///
/// Create one per process and clone it (clones share the engine and its
/// compiled code); every [`Module`] loaded through it runs with its
/// [`HostConfig`].
#[derive(Clone)]
pub struct Host {
    engine: Engine,
    config: HostConfig,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// Builds the engine. Fails only if wasmtime refuses the configuration
    /// (e.g. an unsupported CPU).
    pub fn new(config: HostConfig) -> Result<Self, HostError> {
        let mut wasm = Config::new();
        wasm.consume_fuel(true)
            .cranelift_nan_canonicalization(true)
            .wasm_relaxed_simd(false)
            .relaxed_simd_deterministic(true)
            .wasm_memory64(false)
            .wasm_multi_memory(false)
            .wasm_features(
                WasmFeatures::THREADS | WasmFeatures::SHARED_EVERYTHING_THREADS,
                false,
            );
        let engine = Engine::new(&wasm).map_err(|e| HostError::Engine(format!("{e:#}")))?;
        Ok(Host { engine, config })
    }

    /// The limits every module loaded by this host runs with.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// Compiles and validates a guest module (see [`LoadError`] for every
    /// reason a module is refused) and computes its sha256.
    pub fn load(&self, bytes: &[u8]) -> Result<Module, LoadError> {
        Module::load(&self.engine, self.config, bytes)
    }
}
