//! The DORADO protocol core: everything about ordering that can be decided
//! without I/O, so that it can be unit-tested exhaustively and reused by every
//! adapter.
//!
//! Layout:
//! - [`store`]: the [`Store`] trait (the shared memory boundary) and its correctness rules.
//! - [`sm`]: the [`StateMachine`] trait the protocol drives (the wasm host implements it).
//! - [`entry`]: canonical, versioned encodings of log entries and snapshots.
//! - [`session`]: exactly-once client sessions (replicated state).
//! - [`hash`]: the hash chain that makes divergence visible.
//! - [`apply`]: [`ReplicaState`], the only code that feeds commands to a state machine.
//! - [`engine`]: the leader's batching/append pipeline and the learner's ordering buffer.
//! - [`upgrade`]: module upgrades ordered through the log, and which module a
//!   starting replica proposes.
//! - [`decide`]: the replica driver's other decisions (stuck detection and
//!   campaigning, readiness, matching replies to clients, snapshot policy, a
//!   new leader's recovery base, lease renewal timing).
//!
//! Nothing here depends on etcd, wasmtime or HTTP; adapters in the `dorado`
//! crate implement these traits and perform the engine's actions.

pub mod apply;
pub mod decide;
pub mod engine;
pub mod entry;
pub mod hash;
pub mod session;
pub mod sm;
pub mod store;
pub mod upgrade;

pub use apply::{AppliedCommand, AppliedEntry, ReplicaState};
pub use engine::{Abandoned, LeaderAction, LeaderConfig, LeaderEngine, Learner, Route};
pub use entry::{ClientTag, Command, Entry, SnapshotData};
pub use hash::ChainHash;
pub use session::{Outcome, Sessions};
pub use sm::{RejectKind, Rejection, StateMachine};
pub use store::{
    AppendOutcome, Epoch, Index, LeaderRecord, Leadership, LeaseId, MemberRecord, Meta, Store,
    StoreError, StoreResult,
};
pub use upgrade::{AppliedUpgrade, ModulePlan, UpgradeMode, UpgradeResult};
