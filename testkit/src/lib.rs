//! Test support shared by every Dorado test crate, the benchmarks and the
//! demo. Nothing that ships in an image depends on it: it starts real etcd
//! processes, embeds the example guests built from `wasm-examples/`, and keeps
//! the process bookkeeping that proves a test left nothing behind.
//!
//! Layout:
//! - [`cluster`]: a group of replica processes (`<bin> run ...`) with their
//!   own ports and directories, killed on drop; HTTP helpers and bounded waits.
//! - [`etcd_process`]: throwaway etcd members and clusters on free loopback
//!   ports, killed on drop.
//! - [`etcd_metrics`]: etcd's `/metrics` parsed typed, and the census of
//!   what a workload cost etcd (requests by method, streams, bytes, CPU).
//! - [`examples`]: the example guests (`kv`, `counter`, `bank`, `faulty`),
//!   rebuilt by `build.rs` whenever their sources change.
//! - [`pki`]: test certificates (rcgen): CAs, server and client pairs with
//!   chosen validity (expired ones too), written atomically for rotations.
//! - [`netns`]: network namespaces with their own IPs behind one bridge, whose
//!   route to etcd can be cut and healed (needs root and `ip`).
//! - [`process`]: the guard every child process lives in (killed on drop),
//!   free ports, bounded waits, log tails.
//! - [`procs`]: find a process's children and check none outlives it.
//! - [`replica`]: the flags every harness starts a replica process with.

pub mod cluster;
pub mod etcd_metrics;
pub mod etcd_process;
pub mod examples;
pub mod netns;
pub mod pki;
pub mod process;
pub mod procs;
pub mod replica;
