//! Dorado's fault-injection suite.
//!
//! Real replicas (`dorado` linked into this crate's binary, see
//! [`replica`]) of two example groups (`kv` and `bank`) run on a real
//! three-member etcd cluster while concurrent clients record every operation
//! and a seeded nemesis injects faults: `kill -9` and restart of replicas
//! (with and without wiping their directory), `SIGSTOP` of a leader for longer
//! than its lease, `kill -9` and restart of an etcd member, and (where
//! `ip netns` works) cutting a replica off from etcd. Afterwards the suite
//! heals everything and checks linearizability of the kv history
//! ([`checker`]), conservation of the bank's money, convergence of every
//! replica's hash chain, and, from the replicas' traces, that no
//! acknowledged command is missing and none was applied twice ([`verify`]).
//!
//! Everything random derives from a seed ([`plan`]); every failure prints its
//! seed and the command that replays it. See `docs/reliability.md`.

pub mod checker;
pub mod nemesis;
pub mod plan;
pub mod procs;
pub mod replica;
pub mod suite;
pub mod verify;
pub mod workload;
pub mod world;
