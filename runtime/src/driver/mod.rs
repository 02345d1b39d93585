//! The replica driver skeleton every ordering protocol shares.
//!
//! Dorado runs two ordering protocols behind one client API: DORADO
//! (`node.rs`: fenced, batched appends) and, in `dorado-bench`, the paper's
//! classic scheme kept as a baseline (acceptance entries and majorities).
//! They differ only in how an index gets its command. Everything around that
//! lives here once, so that a fix lands in both and a benchmark compares
//! ordering and nothing else:
//!
//! - [`Applier`]: applying entries through the state machine with sessions,
//!   hash chain, trace lines and metrics; queries, waits and snapshots of the
//!   applied state.
//! - [`ReplicaHandle`]: the client side (submit, query, status, ...) and the
//!   [`crate::replica::Replica`] the HTTP API serves; [`ReadBound`] is the one
//!   protocol-specific part of a linearizable read.
//! - [`Health`] and [`health_task`]: the shared flags, the status report and
//!   `/readyz`.
//! - [`lease_task`] over a [`LeaseStore`]: lease, keep-alive, member record,
//!   resigning.
//! - [`TaskSet`] and [`Lifecycle`]: every task a replica spawns, including the
//!   append and snapshot tasks of its core loop, stops on graceful shutdown,
//!   on abort, when the passed-in shutdown token is cancelled and when the
//!   owner is dropped; after that the replica never touches the store again.
//!
//! - [`ModuleCatalog`]: the modules a state machine can switch to at an
//!   upgrade entry, filled from the store before the entry is applied.
//! - [`CoreLoop`] and [`run_core`]: the core loop's input priorities, request
//!   dispatch and drain, so each protocol writes only its decisions.
//!
//! A protocol supplies its [`CoreLoop`] (which owns an [`Applier`]), its
//! ordering tasks and its store. The decisions these
//! components perform (lease timing, readiness, catch-up) are made in
//! `dorado-core`, as are the protocol's own.

mod applier;
mod core_loop;
mod handle;
mod health;
mod lease;
mod modules;
mod tasks;

pub use applier::Applier;
pub use core_loop::{CoreInputs, CoreLoop, DrainWaiters, run_core};
pub use handle::{Lifecycle, ReadBound, ReadRequest, ReplicaHandle, ReplyTo, Request};
pub use health::{CatchUp, Health, Probe, health_task};
pub use lease::{LeaseStore, backoff, lease_task, retry_unreachable};
pub use modules::ModuleCatalog;
pub use tasks::{Spawner, TaskSet, until_stopped};
