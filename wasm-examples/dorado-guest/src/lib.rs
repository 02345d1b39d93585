//! Dorado guest SDK: write a deterministic state machine in safe Rust, export it
//! with one macro, build it for `wasm32-unknown-unknown`.
//!
//! ```ignore
//! #[derive(Default)]
//! struct Counter(u64);
//!
//! impl dorado_guest::StateMachine for Counter {
//!     fn apply(&mut self, _command: &[u8]) -> Vec<u8> { self.0 += 1; self.0.to_string().into_bytes() }
//!     fn query(&self, _query: &[u8]) -> Vec<u8> { self.0.to_string().into_bytes() }
//!     fn snapshot(&self) -> Vec<u8> { self.0.to_le_bytes().to_vec() }
//!     fn restore(bytes: &[u8]) -> Self { Counter(bytes.try_into().map(u64::from_le_bytes).unwrap_or(0)) }
//! }
//!
//! dorado_guest::export!(Counter);
//! ```
//!
//! # Why a trait and a macro
//! The host talks to a guest through a handful of raw exports that pass
//! pointers into linear memory. Getting those right needs `unsafe`, and every
//! guest getting them right separately is how replicas diverge. This crate
//! owns all of it, so a guest author writes only the four required methods
//! of [`StateMachine`] (and, for upgrades that change the snapshot format,
//! `migrate`), no `unsafe` and nothing ABI-related.
//!
//! # The ABI (version [`ABI_VERSION`] = 1)
//! All integers are wasm `i32`/`i64`; pointers are offsets into the guest's
//! exported `memory`. A "packed reply" is a `u64` equal to `(ptr << 32) | len`.
//!
//! | export | signature | meaning |
//! |---|---|---|
//! | `memory` | memory | the guest's linear memory |
//! | `dorado_abi_version` | `() -> u32` | always [`ABI_VERSION`] |
//! | `dorado_alloc` | `(len: u32) -> u32` | a buffer of `len` bytes for the host to write input into |
//! | `dorado_apply` | `(ptr: u32, len: u32) -> u64` | apply a command, packed reply |
//! | `dorado_query` | `(ptr: u32, len: u32) -> u64` | answer a read-only query, packed reply |
//! | `dorado_snapshot` | `() -> u64` | the serialised state, packed reply |
//! | `dorado_restore` | `(ptr: u32, len: u32) -> u32` | replace the state; `0` = ok, `1` = `(ptr, len)` is not the last `dorado_alloc` buffer |
//! | `dorado_last_panic` | `() -> u64` | *optional*: the last panic message (UTF-8), packed; `len == 0` if none |
//! | `dorado_migrate` | `(ptr: u32, len: u32) -> u32` | *optional*: replace the state with one migrated from another module (see below); `0` = ok, `1` = `(ptr, len)` is not the last `dorado_alloc` buffer |
//!
//! A guest imports nothing: no WASI, no host functions. The host refuses any
//! module with imports.
//!
//! # Memory ownership
//! Every buffer that crosses the boundary is owned by the guest:
//! * `dorado_alloc(len)` returns the guest's single input buffer, resized to
//!   `len`. The host writes exactly `len` bytes into it and then passes that
//!   same `(ptr, len)` to `dorado_apply`, `dorado_query` or `dorado_restore`.
//!   The buffer is valid until the next `dorado_alloc`; any other `(ptr, len)`
//!   is refused (a trap for apply and query, status `1` for restore).
//! * A packed reply points at the guest's single reply buffer. It stays valid
//!   until the **next call into any export**, which frees it; the host copies
//!   it out immediately.
//!
//! The host never frees anything, so there is no `dorado_free`.
//!
//! # Module upgrades: `dorado_migrate`
//! When a group upgrades from module A to module B (an ordered `Upgrade` entry
//! in the log), every replica takes A's snapshot, instantiates B and, if B
//! exports `dorado_migrate`, writes into a `dorado_alloc(32 + n)` buffer the
//! 32 raw bytes of A's sha256 followed by A's `n`-byte snapshot and calls
//! `dorado_migrate(ptr, 32 + n)`. A module without the export gets
//! `dorado_restore(snapshot)` instead. The export is optional, so the ABI
//! version stays 1. A guest refuses a migration by trapping (panicking): the
//! host rejects the upgrade, with the message from `dorado_last_panic`, and
//! the group stays on A. [`export!`] always exports `dorado_migrate`, backed
//! by [`StateMachine::migrate`].
//!
//! # Initial state, panics and traps
//! * The initial state is [`Default::default`]; `restore` is only ever called
//!   with bytes a `snapshot` produced (possibly on another replica).
//! * Build with `panic = "abort"`: a panic then ends in a wasm `unreachable`
//!   trap, and the host rejects the command and rolls the state back. Before
//!   aborting, the SDK's panic hook records the message (with its source
//!   location) where `dorado_last_panic` finds it, so the host can report it.
//!   The message is deterministic: it depends only on the module and input.
//! * Reply with an error (e.g. `{"ok":false,"error":"..."}`) for bad input
//!   instead of panicking: a reply is cheap, a trap costs the host a rollback.
//!
//! # Determinism
//! The host guarantees NaN canonicalisation and has no clock, randomness or
//! I/O to offer. What is left is up to the guest: use ordered containers
//! (`BTreeMap`, not `HashMap` with a random seed) so that identical histories
//! produce byte-identical snapshots.

#![cfg_attr(not(target_arch = "wasm32"), forbid(unsafe_code))]

/// Version of the host ABI produced by [`export!`], returned by
/// `dorado_abi_version`. The host refuses modules with any other value.
pub const ABI_VERSION: u32 = 1;

/// A deterministic state machine that Dorado replicates.
///
/// Requirements (the host cannot check them, replicas diverge if they break):
/// * `apply` depends only on `self` and `command`;
/// * `query` does not change the state (it takes `&self`);
/// * `restore(&s.snapshot())` behaves exactly like `s`, and identical
///   histories give byte-identical snapshots.
///
/// The initial state is `Default::default()`.
pub trait StateMachine: Default {
    /// Applies one ordered command and returns the reply.
    fn apply(&mut self, command: &[u8]) -> Vec<u8>;
    /// Answers a read-only query.
    fn query(&self, query: &[u8]) -> Vec<u8>;
    /// Serialises the whole state.
    fn snapshot(&self) -> Vec<u8>;
    /// Rebuilds a state from bytes produced by [`StateMachine::snapshot`].
    ///
    /// May panic on bytes that no `snapshot` produced: the host turns that
    /// into a refused restore and keeps its previous state.
    fn restore(bytes: &[u8]) -> Self;

    /// Builds the state from the snapshot of *another* module. Called once,
    /// when the group upgrades to this module; `from_module` is the sha256 of
    /// the module that wrote `snapshot` (and `snapshot` is in that module's
    /// format). Afterwards the host only ever restores this module's own
    /// snapshots.
    ///
    /// The default assumes the format did not change and calls
    /// [`StateMachine::restore`]. Override it to read an older format and
    /// convert. Panic to refuse the upgrade: the host rejects it with the
    /// panic message and the group stays on the old module.
    fn migrate(from_module: [u8; 32], snapshot: &[u8]) -> Self {
        let _ = from_module;
        Self::restore(snapshot)
    }
}

/// Exports a [`StateMachine`] type as a Dorado wasm module (see the
/// [crate docs](crate) for the ABI it produces).
///
/// Use it exactly once per guest crate (a `cdylib`). On targets other than
/// `wasm32` it expands to nothing, so the state machine can still be unit
/// tested natively with `cargo test`.
#[macro_export]
macro_rules! export {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static DORADO_STATE: $crate::__private::GuestCell<::core::option::Option<$ty>> =
                $crate::__private::GuestCell::new(::core::option::Option::None);

            #[unsafe(no_mangle)]
            extern "C" fn dorado_abi_version() -> u32 {
                $crate::ABI_VERSION
            }

            #[unsafe(no_mangle)]
            extern "C" fn dorado_alloc(len: u32) -> u32 {
                $crate::__private::alloc(len)
            }

            #[unsafe(no_mangle)]
            extern "C" fn dorado_apply(ptr: u32, len: u32) -> u64 {
                $crate::__private::apply::<$ty>(&DORADO_STATE, ptr, len)
            }

            #[unsafe(no_mangle)]
            extern "C" fn dorado_query(ptr: u32, len: u32) -> u64 {
                $crate::__private::query::<$ty>(&DORADO_STATE, ptr, len)
            }

            #[unsafe(no_mangle)]
            extern "C" fn dorado_snapshot() -> u64 {
                $crate::__private::snapshot::<$ty>(&DORADO_STATE)
            }

            #[unsafe(no_mangle)]
            extern "C" fn dorado_restore(ptr: u32, len: u32) -> u32 {
                $crate::__private::restore::<$ty>(&DORADO_STATE, ptr, len)
            }

            #[unsafe(no_mangle)]
            extern "C" fn dorado_last_panic() -> u64 {
                $crate::__private::last_panic()
            }

            #[unsafe(no_mangle)]
            extern "C" fn dorado_migrate(ptr: u32, len: u32) -> u32 {
                $crate::__private::migrate::<$ty>(&DORADO_STATE, ptr, len)
            }
        };
    };
}

/// Implementation details of [`export!`]; not a stable API.
#[doc(hidden)]
#[cfg(target_arch = "wasm32")]
pub mod __private {
    use crate::StateMachine;
    use core::cell::UnsafeCell;

    /// Input buffers above this capacity are released after use, so one huge
    /// restore does not pin its memory for the life of the instance.
    const RETAINED_INPUT: usize = 64 * 1024;

    /// Interior-mutable global for a single-threaded guest.
    #[derive(Debug)]
    pub struct GuestCell<T>(UnsafeCell<T>);

    // SAFETY: on wasm32 without the `atomics` target feature there is exactly
    // one thread, and the host cannot re-enter the guest while an export runs
    // (the guest has no imports to call back through). So accesses to a
    // `GuestCell` never overlap in time.
    #[cfg(not(target_feature = "atomics"))]
    unsafe impl<T> Sync for GuestCell<T> {}

    impl<T> GuestCell<T> {
        /// Wraps a value.
        pub const fn new(value: T) -> Self {
            GuestCell(UnsafeCell::new(value))
        }

        /// # Safety
        /// No other reference obtained from this cell may be alive. Each
        /// export takes it once at entry and drops it before returning; the
        /// panic hook only touches `LAST_PANIC`, which nothing else holds
        /// while guest code runs.
        #[allow(clippy::mut_from_ref)]
        unsafe fn get(&self) -> &mut T {
            // SAFETY: exclusivity is the caller's obligation (see above).
            unsafe { &mut *self.0.get() }
        }
    }

    struct Buffers {
        input: Vec<u8>,
        reply: Vec<u8>,
        hook_installed: bool,
    }

    static BUFFERS: GuestCell<Buffers> = GuestCell::new(Buffers {
        input: Vec::new(),
        reply: Vec::new(),
        hook_installed: false,
    });

    static LAST_PANIC: GuestCell<Vec<u8>> = GuestCell::new(Vec::new());

    fn buffers() -> &'static mut Buffers {
        // SAFETY: called once at the top of each export; see `GuestCell::get`.
        let buffers = unsafe { BUFFERS.get() };
        if !buffers.hook_installed {
            buffers.hook_installed = true;
            std::panic::set_hook(Box::new(|info| {
                let message = info
                    .payload_as_str()
                    .unwrap_or("panic with a non-string payload");
                let text = match info.location() {
                    Some(at) => {
                        format!("{message} (at {}:{}:{})", at.file(), at.line(), at.column())
                    }
                    None => message.to_owned(),
                };
                // SAFETY: only the hook and `last_panic` touch LAST_PANIC, and
                // they never run at the same time.
                unsafe { *LAST_PANIC.get() = text.into_bytes() };
            }));
        }
        buffers
    }

    fn pack(bytes: &[u8]) -> u64 {
        ((bytes.as_ptr() as usize as u64) << 32) | bytes.len() as u64
    }

    impl Buffers {
        /// The input buffer if `(ptr, len)` is exactly what `dorado_alloc` handed out.
        fn input(&self, ptr: u32, len: u32) -> Option<&[u8]> {
            let ok =
                self.input.as_ptr() as usize == ptr as usize && self.input.len() == len as usize;
            ok.then_some(self.input.as_slice())
        }

        fn reply(&mut self, reply: Vec<u8>) -> u64 {
            if self.input.capacity() > RETAINED_INPUT {
                self.input = Vec::new();
            }
            self.reply = reply;
            pack(&self.reply)
        }
    }

    /// # Safety
    /// Call at most once per export invocation; see `GuestCell::get`.
    #[allow(clippy::mut_from_ref)]
    unsafe fn state<S: StateMachine>(cell: &GuestCell<Option<S>>) -> &mut S {
        // SAFETY: forwarded to the caller.
        unsafe { cell.get() }.get_or_insert_with(S::default)
    }

    /// `dorado_alloc`.
    pub fn alloc(len: u32) -> u32 {
        let buffers = buffers();
        buffers.reply = Vec::new();
        buffers.input.clear();
        buffers.input.resize(len as usize, 0);
        buffers.input.as_mut_ptr() as usize as u32
    }

    /// `dorado_apply`.
    pub fn apply<S: StateMachine>(cell: &GuestCell<Option<S>>, ptr: u32, len: u32) -> u64 {
        let buffers = buffers();
        // SAFETY: the only access to the state in this export.
        let state = unsafe { state(cell) };
        let Some(command) = buffers.input(ptr, len) else {
            panic!("dorado_apply: (ptr, len) is not the buffer returned by dorado_alloc");
        };
        let reply = state.apply(command);
        buffers.reply(reply)
    }

    /// `dorado_query`.
    pub fn query<S: StateMachine>(cell: &GuestCell<Option<S>>, ptr: u32, len: u32) -> u64 {
        let buffers = buffers();
        // SAFETY: the only access to the state in this export.
        let state = unsafe { state(cell) };
        let Some(query) = buffers.input(ptr, len) else {
            panic!("dorado_query: (ptr, len) is not the buffer returned by dorado_alloc");
        };
        let reply = state.query(query);
        buffers.reply(reply)
    }

    /// `dorado_snapshot`.
    pub fn snapshot<S: StateMachine>(cell: &GuestCell<Option<S>>) -> u64 {
        let buffers = buffers();
        // SAFETY: the only access to the state in this export.
        let snapshot = unsafe { state(cell) }.snapshot();
        buffers.reply(snapshot)
    }

    /// `dorado_restore`.
    pub fn restore<S: StateMachine>(cell: &GuestCell<Option<S>>, ptr: u32, len: u32) -> u32 {
        let buffers = buffers();
        // SAFETY: called once in this export; see `GuestCell::get`.
        let slot = unsafe { cell.get() };
        let Some(bytes) = buffers.input(ptr, len) else {
            return 1;
        };
        let restored = S::restore(bytes);
        // Drop the old state before keeping the new one alive in the slot.
        *slot = None;
        *slot = Some(restored);
        buffers.reply(Vec::new());
        0
    }

    /// `dorado_migrate`: the input is the old module's 32-byte sha256
    /// followed by its snapshot.
    pub fn migrate<S: StateMachine>(cell: &GuestCell<Option<S>>, ptr: u32, len: u32) -> u32 {
        let buffers = buffers();
        // SAFETY: called once in this export; see `GuestCell::get`.
        let slot = unsafe { cell.get() };
        let Some(input) = buffers.input(ptr, len) else {
            return 1;
        };
        let Some((from_module, snapshot)) = input.split_first_chunk::<32>() else {
            panic!(
                "dorado_migrate: input of {} bytes is shorter than the 32-byte module hash",
                input.len()
            );
        };
        let migrated = S::migrate(*from_module, snapshot);
        // Drop the old state before keeping the new one alive in the slot.
        *slot = None;
        *slot = Some(migrated);
        buffers.reply(Vec::new());
        0
    }

    /// `dorado_last_panic`.
    pub fn last_panic() -> u64 {
        let _ = buffers();
        // SAFETY: the panic hook is not running (we are in a normal export).
        pack(unsafe { LAST_PANIC.get() })
    }
}
