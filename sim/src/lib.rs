//! Deterministic simulation of whole DORADO groups, in the manner of
//! FoundationDB's simulator and TigerBeetle's VOPR: the real replica driver
//! (`dorado::node`, unchanged) runs 3–5 replicas over the in-memory store on
//! a virtual clock, a seeded nemesis and fault layer break things, clients
//! record a history, and every run ends with the same checks.
//!
//! Layout:
//! - [`world`]: one run — group, clients, nemesis, checks ([`world::run`]).
//! - [`store`]: the fault layer, a `Store` per replica around the shared
//!   in-memory store (latency, pauses, cuts, lost append answers, watch
//!   delays/duplicates/ends).
//! - [`kv`]: the native state machine, which records any value applied twice.
//! - [`log`]: the event log with virtual timestamps.
//!
//! Faults: crash (always with wiped state: in-process replicas recover from
//! the store alone) and restart; a leader paused past its lease; the store
//! unavailable; one replica cut off the store; append outcome unknown (landed
//! or not, answer lost); log and leader watches delayed, duplicated, or ended
//! and resumed; compaction (snapshots every 8 or 32 entries, log truncated)
//! under slow followers; clients retrying with the same id and seq. Module
//! upgrades (to a second module, back, or to one whose migration fails) are
//! proposed among the client operations throughout.
//!
//! Checks per run: the fence (every append that lands was made under the
//! epoch leading at that moment, checked by the fault layer), liveness once faults stop, equal hash chains on every
//! replica (and the same group module), exactly once (nothing applied twice, no acknowledged write lost),
//! and linearizability of the client history (the fault suite's checker,
//! `dorado_faults::checker`).

pub mod kv;
pub mod log;
pub mod store;
pub mod world;

pub use world::{Failure, Report, run, run_logged};

/// Run seeds `from..from + count`; the first failure stops the sweep.
pub fn sweep(from: u64, count: u64) -> Result<Vec<Report>, Failure> {
    (from..from + count).map(|seed| run(seed, false)).collect()
}
