//! Running a guest: the ABI calls, trap classification and rollback.
//!
//! Rollback design: an [`Instance`] keeps a *checkpoint* (the last snapshot
//! bytes, or none for the initial state) and a *log* of the commands applied
//! since. When a call traps, the wasm instance is discarded and a new one is
//! built from checkpoint + log, so the state is exactly what it was before the
//! failing command. The log is folded into a new checkpoint once it outgrows
//! `max(checkpoint_log_bytes, 2 × checkpoint size)`, which keeps both the
//! amortised snapshot cost per command and the replay time after a trap
//! bounded. A snapshot requested by the caller doubles as a checkpoint.
//!
//! Upgrades ([`Instance::migrate_from`]) hand a *foreign* snapshot to the
//! module, via `dorado_migrate` if it has one. Rollback only speaks
//! `dorado_restore`, i.e. the module's own format, so after a migration the
//! checkpoint is a fresh snapshot of the migrated instance, never the foreign
//! bytes.

use super::module::{LAST_PANIC, MIGRATE, Module, one_line};
use super::{HostConfig, HostError};
use dorado_core::{RejectKind, Rejection, StateMachine};
use std::fmt;
use wasmtime::{
    InstancePre, Memory, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap, TypedFunc,
};

/// Fuel for reading the panic message out of a trapped instance.
const LAST_PANIC_FUEL: u64 = 1_000_000;
/// Longest panic message carried into a rejection.
const MAX_PANIC_MESSAGE: usize = 1024;
/// Bookkeeping cost charged per logged command, so that many tiny commands
/// also trigger re-checkpointing.
const LOG_ENTRY_COST: usize = 64;

/// Store data: the limits plus a record of which limit (if any) was hit, so a
/// grow failure is reported as [`RejectKind::MemoryLimit`] whatever error
/// value wasmtime wraps it in.
pub(crate) struct GuestData {
    limits: StoreLimits,
    limit_hit: Option<&'static str>,
}

impl ResourceLimiter for GuestData {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum);
        if !matches!(allowed, Ok(true)) {
            self.limit_hit = Some("memory");
        }
        allowed
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limit_hit = Some("memory");
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.table_growing(current, desired, maximum);
        if !matches!(allowed, Ok(true)) {
            self.limit_hit = Some("table");
        }
        allowed
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limit_hit = Some("table");
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Why a call into the guest failed, before it becomes a [`Rejection`].
enum Fault {
    /// wasmtime returned an error: a trap or a limiter refusal.
    Wasm(wasmtime::Error),
    /// The guest broke the ABI (bad pointer, bad status).
    BadReply(String),
    /// The input does not fit in a 32-bit address space.
    TooLarge(usize),
}

/// One live wasm instance with its exports resolved.
pub(crate) struct Live {
    store: Store<GuestData>,
    memory: Memory,
    abi_version: TypedFunc<(), u32>,
    alloc: TypedFunc<u32, u32>,
    apply: TypedFunc<(u32, u32), u64>,
    query: TypedFunc<(u32, u32), u64>,
    snapshot: TypedFunc<(), u64>,
    restore: TypedFunc<(u32, u32), u32>,
    last_panic: Option<TypedFunc<(), u64>>,
    migrate: Option<TypedFunc<(u32, u32), u32>>,
}

#[derive(Clone, Copy)]
enum Entry {
    Apply,
    Query,
}

impl Live {
    pub(crate) fn new(pre: &InstancePre<GuestData>, config: &HostConfig) -> wasmtime::Result<Self> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(config.memory_limit)
            .instances(1)
            .memories(1)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            pre.module().engine(),
            GuestData {
                limits,
                limit_hit: None,
            },
        );
        store.limiter(|data| data);
        store.set_fuel(config.fuel_per_snapshot)?;
        let instance = pre.instantiate(&mut store)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| wasmtime::format_err!("export memory is not a memory"))?;
        let last_panic = instance.get_typed_func(&mut store, LAST_PANIC.0).ok();
        let migrate = instance.get_typed_func(&mut store, MIGRATE.0).ok();
        Ok(Live {
            abi_version: instance.get_typed_func(&mut store, "dorado_abi_version")?,
            alloc: instance.get_typed_func(&mut store, "dorado_alloc")?,
            apply: instance.get_typed_func(&mut store, "dorado_apply")?,
            query: instance.get_typed_func(&mut store, "dorado_query")?,
            snapshot: instance.get_typed_func(&mut store, "dorado_snapshot")?,
            restore: instance.get_typed_func(&mut store, "dorado_restore")?,
            last_panic,
            migrate,
            memory,
            store,
        })
    }

    pub(crate) fn abi_version(&mut self, fuel: u64) -> Result<u32, String> {
        self.store.set_fuel(fuel).map_err(|e| e.to_string())?;
        self.abi_version
            .call(&mut self.store, ())
            .map_err(|e| one_line(&format!("{e:#}")))
    }

    fn fuel_left(&self) -> u64 {
        self.store.get_fuel().unwrap_or(0)
    }

    /// Copies `input` into a buffer from `dorado_alloc`.
    fn write_input(&mut self, input: &[u8]) -> Result<(u32, u32), Fault> {
        self.write_inputs(&[input])
    }

    /// Copies the concatenation of `parts` into one buffer from
    /// `dorado_alloc`, without concatenating them on the host first.
    fn write_inputs(&mut self, parts: &[&[u8]]) -> Result<(u32, u32), Fault> {
        let total = parts.iter().map(|p| p.len()).sum::<usize>();
        let len = u32::try_from(total).map_err(|_| Fault::TooLarge(total))?;
        let ptr = self.alloc.call(&mut self.store, len).map_err(Fault::Wasm)?;
        let mut at = ptr as usize;
        for part in parts {
            self.memory.write(&mut self.store, at, part).map_err(|_| {
                Fault::BadReply(format!(
                    "dorado_alloc({len}) returned {ptr:#x}, outside the guest's memory"
                ))
            })?;
            at += part.len();
        }
        Ok((ptr, len))
    }

    /// Copies a packed `(ptr << 32) | len` reply out of guest memory.
    fn read_reply(&self, export: &str, packed: u64) -> Result<Vec<u8>, Fault> {
        let ptr = (packed >> 32) as usize;
        let len = (packed & 0xffff_ffff) as usize;
        self.memory
            .data(&self.store)
            .get(ptr..ptr + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                Fault::BadReply(format!(
                    "{export} returned {len} bytes at {ptr:#x}, outside the guest's memory"
                ))
            })
    }

    fn call(&mut self, entry: Entry, input: &[u8], fuel: u64) -> Result<Vec<u8>, Fault> {
        self.store.set_fuel(fuel).map_err(Fault::Wasm)?;
        let (ptr, len) = self.write_input(input)?;
        let (func, name) = match entry {
            Entry::Apply => (&self.apply, "dorado_apply"),
            Entry::Query => (&self.query, "dorado_query"),
        };
        let packed = func
            .call(&mut self.store, (ptr, len))
            .map_err(Fault::Wasm)?;
        self.read_reply(name, packed)
    }

    fn take_snapshot(&mut self, fuel: u64) -> Result<Vec<u8>, Fault> {
        self.store.set_fuel(fuel).map_err(Fault::Wasm)?;
        let packed = self
            .snapshot
            .call(&mut self.store, ())
            .map_err(Fault::Wasm)?;
        self.read_reply("dorado_snapshot", packed)
    }

    fn restore_from(&mut self, snapshot: &[u8], fuel: u64) -> Result<(), Fault> {
        self.store.set_fuel(fuel).map_err(Fault::Wasm)?;
        let (ptr, len) = self.write_input(snapshot)?;
        match self
            .restore
            .call(&mut self.store, (ptr, len))
            .map_err(Fault::Wasm)?
        {
            0 => Ok(()),
            status => Err(Fault::BadReply(format!(
                "dorado_restore returned status {status}"
            ))),
        }
    }

    /// `dorado_migrate(from ++ snapshot)` if the module exports it, else
    /// `dorado_restore(snapshot)`.
    fn migrate_from(&mut self, from: &[u8; 32], snapshot: &[u8], fuel: u64) -> Result<(), Fault> {
        let Some(migrate) = self.migrate.clone() else {
            return self.restore_from(snapshot, fuel);
        };
        self.store.set_fuel(fuel).map_err(Fault::Wasm)?;
        let (ptr, len) = self.write_inputs(&[from, snapshot])?;
        match migrate
            .call(&mut self.store, (ptr, len))
            .map_err(Fault::Wasm)?
        {
            0 => Ok(()),
            status => Err(Fault::BadReply(format!(
                "{} returned status {status}",
                MIGRATE.0
            ))),
        }
    }

    /// The guest's recorded panic message, if it exports `dorado_last_panic`
    /// and recorded one. Called only on an instance about to be discarded.
    fn panic_message(&mut self) -> Option<String> {
        let func = self.last_panic.as_ref()?;
        self.store.set_fuel(LAST_PANIC_FUEL).ok()?;
        let packed = func.call(&mut self.store, ()).ok()?;
        let bytes = self.read_reply(LAST_PANIC.0, packed).ok()?;
        if bytes.is_empty() {
            return None;
        }
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_PANIC_MESSAGE)]);
        Some(one_line(&text))
    }

    /// Turns a fault into a deterministic rejection. `budget` is the fuel the
    /// failed call was given.
    fn classify(&mut self, fault: Fault, budget: u64, memory_limit: usize) -> Rejection {
        let (kind, message) = match fault {
            Fault::BadReply(message) => (RejectKind::BadReply, message),
            Fault::TooLarge(len) => (
                RejectKind::MemoryLimit,
                format!("input of {len} bytes does not fit in a 32-bit guest"),
            ),
            Fault::Wasm(error) => match (self.store.data().limit_hit, error.downcast_ref::<Trap>())
            {
                (Some("table"), _) => (RejectKind::MemoryLimit, "table growth refused".to_owned()),
                (Some(_), _) => (
                    RejectKind::MemoryLimit,
                    format!("guest memory would exceed the cap of {memory_limit} bytes"),
                ),
                (None, Some(Trap::OutOfFuel)) => (
                    RejectKind::OutOfFuel,
                    format!("fuel budget of {budget} exhausted"),
                ),
                (None, Some(Trap::UnreachableCodeReached)) => match self.panic_message() {
                    Some(message) => (RejectKind::Trap, format!("guest panicked: {message}")),
                    None => (
                        RejectKind::Trap,
                        describe_trap(Trap::UnreachableCodeReached),
                    ),
                },
                (None, Some(trap)) => (RejectKind::Trap, describe_trap(*trap)),
                (None, None) => (RejectKind::Trap, one_line(&error.to_string())),
            },
        };
        Rejection { kind, message }
    }
}

/// wasmtime's description of a trap without its "wasm trap: " prefix (the
/// rejection kind already says it is a trap).
fn describe_trap(trap: Trap) -> String {
    let text = trap.to_string();
    match text.strip_prefix("wasm trap: ") {
        Some(rest) => rest.to_owned(),
        None => text,
    }
}

/// A running guest, implementing [`StateMachine`] with rollback on traps.
///
/// Every method leaves the state unchanged when it returns `Err`: a rejected
/// `apply` is as if the command never ran, a rejected `restore` keeps the old
/// state, and a trapping `query` or `snapshot` changes nothing.
pub struct Instance {
    module: Module,
    /// `None` only if rebuilding after a trap failed; retried on the next call.
    live: Option<Live>,
    /// State the log starts from; `None` is the guest's initial state.
    checkpoint: Option<Vec<u8>>,
    /// Commands applied since the checkpoint, concatenated.
    log: Vec<u8>,
    /// End offset of each command in `log`.
    log_ends: Vec<usize>,
    /// Log cost at which to re-checkpoint.
    next_checkpoint: usize,
    last_fuel_used: u64,
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("module", &self.module)
            .field("live", &self.live.is_some())
            .field("checkpoint_len", &self.checkpoint.as_ref().map(Vec::len))
            .field("logged_commands", &self.log_ends.len())
            .finish_non_exhaustive()
    }
}

impl Instance {
    pub(super) fn new(module: Module) -> Result<Self, HostError> {
        let live = Live::new(module.pre(), module.config())
            .map_err(|e| HostError::Instantiate(one_line(&format!("{e:#}"))))?;
        Ok(Instance {
            next_checkpoint: module.config().checkpoint_log_bytes,
            module,
            live: Some(live),
            checkpoint: None,
            log: Vec::new(),
            log_ends: Vec::new(),
            last_fuel_used: 0,
        })
    }

    /// The module this instance runs.
    pub fn module(&self) -> &Module {
        &self.module
    }

    /// Fuel the last successful `apply` or `query` consumed.
    pub fn last_fuel_used(&self) -> u64 {
        self.last_fuel_used
    }

    fn config(&self) -> HostConfig {
        *self.module.config()
    }

    fn live(&mut self) -> Result<&mut Live, Rejection> {
        if self.live.is_none() {
            self.live = Some(self.rebuild().map_err(|message| Rejection {
                kind: RejectKind::Trap,
                message,
            })?);
        }
        self.live.as_mut().ok_or_else(|| Rejection {
            kind: RejectKind::Trap,
            message: "no live instance".to_owned(),
        })
    }

    /// A new wasm instance holding the state of checkpoint + log.
    fn rebuild(&self) -> Result<Live, String> {
        let config = self.config();
        let mut live = Live::new(self.module.pre(), &config).map_err(|e| {
            format!(
                "cannot re-instantiate the module: {}",
                one_line(&format!("{e:#}"))
            )
        })?;
        let replay_fuel = config.fuel_per_command.max(config.fuel_per_snapshot);
        if let Some(snapshot) = &self.checkpoint {
            live.restore_from(snapshot, config.fuel_per_snapshot)
                .map_err(|fault| {
                    let r = live.classify(fault, config.fuel_per_snapshot, config.memory_limit);
                    format!("cannot restore the checkpoint: {r}")
                })?;
        }
        let mut start = 0;
        for (i, &end) in self.log_ends.iter().enumerate() {
            live.call(Entry::Apply, &self.log[start..end], replay_fuel)
                .map_err(|fault| {
                    let r = live.classify(fault, replay_fuel, config.memory_limit);
                    format!("replaying logged command {i} failed (non-deterministic guest?): {r}")
                })?;
            start = end;
        }
        Ok(live)
    }

    /// Classifies the fault of the live instance, discards that instance and
    /// rebuilds the previous state in a new one.
    fn reject(&mut self, fault: Fault, budget: u64) -> Rejection {
        let memory_limit = self.config().memory_limit;
        let rejection = match self.live.as_mut() {
            Some(live) => live.classify(fault, budget, memory_limit),
            None => Rejection {
                kind: RejectKind::Trap,
                message: "no live instance".to_owned(),
            },
        };
        self.live = None;
        // If this fails, `live()` retries (and reports) on the next call.
        self.live = self.rebuild().ok();
        rejection
    }

    fn log_cost(&self) -> usize {
        self.log.len() + LOG_ENTRY_COST * self.log_ends.len()
    }

    fn set_checkpoint(&mut self, snapshot: Vec<u8>) {
        self.next_checkpoint = self
            .config()
            .checkpoint_log_bytes
            .max(snapshot.len().saturating_mul(2));
        self.checkpoint = Some(snapshot);
        self.log.clear();
        self.log_ends.clear();
    }

    fn checkpoint_now(&mut self) {
        let fuel = self.config().fuel_per_snapshot;
        let taken = match self.live.as_mut() {
            Some(live) => live.take_snapshot(fuel),
            None => return,
        };
        match taken {
            Ok(snapshot) => self.set_checkpoint(snapshot),
            Err(fault) => {
                // The state is intact (checkpoint + log); keep the longer log
                // and try again after it has doubled.
                let _ = self.reject(fault, fuel);
                self.next_checkpoint = self.log_cost().saturating_mul(2);
            }
        }
    }
}

impl Instance {
    /// Replaces this instance's state with state migrated from another module's
    /// snapshot: `dorado_migrate(from ++ snapshot)` if the module exports it,
    /// else `dorado_restore(snapshot)`. On error the instance is unchanged.
    ///
    /// This is the module-upgrade step: `from_sha256` is the sha256 of the
    /// module that wrote `snapshot` ([`Module::sha256_bytes`]), `self` runs the
    /// new module. The migration runs in a fresh wasm instance with
    /// `fuel_per_snapshot` and the memory cap, and its faults are classified
    /// like [`StateMachine::restore`]'s: a guest that refuses (panics) is a
    /// [`RejectKind::Trap`] with the panic message; out of fuel, memory cap and
    /// a bad status (`BadReply`) as usual. On success the migrated state is
    /// snapshotted again (also with `fuel_per_snapshot`; a fault there rejects
    /// the migration too) and that snapshot, in the new module's own format,
    /// becomes the rollback checkpoint.
    pub fn migrate_from(
        &mut self,
        from_sha256: &[u8; 32],
        snapshot: &[u8],
    ) -> Result<(), Rejection> {
        let config = self.config();
        let fuel = config.fuel_per_snapshot;
        let mut fresh = Live::new(self.module.pre(), &config).map_err(|e| Rejection {
            kind: RejectKind::Trap,
            message: format!(
                "cannot instantiate the module: {}",
                one_line(&format!("{e:#}"))
            ),
        })?;
        let checkpoint = fresh
            .migrate_from(from_sha256, snapshot, fuel)
            .and_then(|()| fresh.take_snapshot(fuel));
        match checkpoint {
            Ok(checkpoint) => {
                self.live = Some(fresh);
                self.set_checkpoint(checkpoint);
                Ok(())
            }
            // The old instance was never touched: nothing to roll back.
            Err(fault) => Err(fresh.classify(fault, fuel, config.memory_limit)),
        }
    }
}

impl StateMachine for Instance {
    fn apply(&mut self, command: &[u8]) -> Result<Vec<u8>, Rejection> {
        let fuel = self.config().fuel_per_command;
        let live = self.live()?;
        match live.call(Entry::Apply, command, fuel) {
            Ok(reply) => {
                self.last_fuel_used = fuel.saturating_sub(live.fuel_left());
                self.log.extend_from_slice(command);
                self.log_ends.push(self.log.len());
                if self.log_cost() >= self.next_checkpoint {
                    self.checkpoint_now();
                }
                Ok(reply)
            }
            Err(fault) => Err(self.reject(fault, fuel)),
        }
    }

    fn query(&mut self, query: &[u8]) -> Result<Vec<u8>, Rejection> {
        let fuel = self.config().fuel_per_command;
        let live = self.live()?;
        match live.call(Entry::Query, query, fuel) {
            Ok(reply) => {
                self.last_fuel_used = fuel.saturating_sub(live.fuel_left());
                Ok(reply)
            }
            Err(fault) => Err(self.reject(fault, fuel)),
        }
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, Rejection> {
        let fuel = self.config().fuel_per_snapshot;
        let live = self.live()?;
        match live.take_snapshot(fuel) {
            Ok(snapshot) => {
                self.set_checkpoint(snapshot.clone());
                Ok(snapshot)
            }
            Err(fault) => Err(self.reject(fault, fuel)),
        }
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), Rejection> {
        let config = self.config();
        let mut fresh = Live::new(self.module.pre(), &config).map_err(|e| Rejection {
            kind: RejectKind::Trap,
            message: format!(
                "cannot instantiate the module: {}",
                one_line(&format!("{e:#}"))
            ),
        })?;
        match fresh.restore_from(snapshot, config.fuel_per_snapshot) {
            Ok(()) => {
                self.live = Some(fresh);
                self.set_checkpoint(snapshot.to_vec());
                Ok(())
            }
            // The old instance was never touched: nothing to roll back.
            Err(fault) => Err(fresh.classify(fault, config.fuel_per_snapshot, config.memory_limit)),
        }
    }
}
