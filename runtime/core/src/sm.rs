//! The boundary between the protocol and whatever executes commands.
//!
//! The protocol never sees wasmtime: it drives anything that implements
//! [`StateMachine`]. The wasm host in the `dorado` crate is the production
//! implementation; unit tests use small in-process machines.

use std::fmt;

/// Why a command (or query, snapshot, restore) was refused by the state machine.
///
/// Rejections must be **deterministic**: every replica that feeds the same
/// history to the same module must produce the same `RejectKind` for the same
/// command, because the rejection text is part of the hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectKind {
    /// The guest panicked or hit an `unreachable` / other wasm trap.
    Trap,
    /// The command used more than its fuel budget (e.g. an endless loop).
    OutOfFuel,
    /// The guest tried to grow its memory past the configured cap.
    MemoryLimit,
    /// The guest returned a malformed reply (out-of-bounds pointer, bad status).
    BadReply,
    /// A module to upgrade to cannot run here at all: it does not compile,
    /// lacks an export, speaks another ABI version, or the state machine
    /// cannot switch modules.
    BadModule,
}

impl RejectKind {
    /// Stable lowercase name, used in traces, HTTP errors and the hash chain.
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectKind::Trap => "trap",
            RejectKind::OutOfFuel => "out of fuel",
            RejectKind::MemoryLimit => "memory limit",
            RejectKind::BadReply => "bad reply",
            RejectKind::BadModule => "bad module",
        }
    }
}

impl fmt::Display for RejectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A deterministic refusal: the kind plus a short human message.
///
/// Only `kind` and `message` are hashed, so implementations must keep the
/// message free of addresses, timings or anything else that varies by host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// What class of failure happened.
    pub kind: RejectKind,
    /// Deterministic detail (e.g. the guest's panic message).
    pub message: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}: {}", self.kind, self.message)
        }
    }
}

impl std::error::Error for Rejection {}

/// A deterministic state machine, as the protocol sees it.
///
/// # Correctness requirements
/// * `apply` is a pure function of the state and the command: two instances fed
///   the same commands in the same order return identical replies and
///   rejections, and `snapshot` returns identical bytes.
/// * A rejected `apply` leaves the state **exactly** as before the call
///   (implementations roll back, e.g. by re-instantiating from a snapshot).
/// * `query` never changes the state.
/// * `restore(snapshot())` yields a machine indistinguishable from the original.
pub trait StateMachine {
    /// Apply one ordered command and return the reply bytes.
    fn apply(&mut self, command: &[u8]) -> Result<Vec<u8>, Rejection>;
    /// Answer a read-only query.
    fn query(&mut self, query: &[u8]) -> Result<Vec<u8>, Rejection>;
    /// Serialise the whole state.
    fn snapshot(&mut self) -> Result<Vec<u8>, Rejection>;
    /// Replace the whole state with a snapshot taken by [`StateMachine::snapshot`].
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), Rejection>;

    /// Switch from module `from` (the one running) to module `to`, keeping
    /// the state: snapshot, instantiate `to`, hand it the snapshot (its
    /// migration hook if it has one, else its restore). Called at an ordered
    /// upgrade entry, with `to != from`.
    ///
    /// Requirements: deterministic like `apply` (every replica gets the same
    /// result for the same history), and on `Err` nothing changed: the old
    /// module keeps running with its state. The driver makes `to` available
    /// before the call; a module it could not obtain is never a rejection
    /// (another replica might have obtained it).
    fn upgrade(&mut self, from: &str, to: &str) -> Result<(), Rejection> {
        let _ = (from, to);
        Err(Rejection {
            kind: RejectKind::BadModule,
            message: "this state machine cannot switch modules".into(),
        })
    }

    /// Become module `module` with `snapshot` (taken by that module) as its
    /// state: restoring a snapshot from before or after an upgrade. `None`
    /// is the module's initial state, asked only of a machine that has
    /// applied nothing (a replica of a group that has no snapshot yet starts
    /// from the group's first module). Machines that cannot switch modules
    /// run only the module they were built with, which the driver checks; the
    /// default restores the snapshot, or keeps the initial state.
    fn load(&mut self, module: &str, snapshot: Option<&[u8]>) -> Result<(), Rejection> {
        let _ = module;
        match snapshot {
            Some(s) => self.restore(s),
            None => Ok(()),
        }
    }
}
