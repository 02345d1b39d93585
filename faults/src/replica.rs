//! `dorado-faults replica ...`: one Dorado replica, run by the same library
//! function as `dorado run` ([`dorado::cli::run_replica`]: same flags, same
//! defaults), so that the suite's own binary can be the replica process.
//!
//! Why not spawn the `dorado` binary: Cargo builds another package's binaries
//! only when that package is tested, so `cargo test -p dorado-faults` (and a
//! `--features bug-unfenced` build, which must link the *buggy* library) could
//! otherwise run a stale or missing binary. Linking the library into this
//! binary makes the replicas always run the code under test.

use anyhow::Context;

/// `dorado run`'s flags.
pub type ReplicaArgs = dorado::cli::RunArgs;

/// Run the replica until SIGTERM / Ctrl-C (the suite kills it with SIGKILL).
pub fn main(args: ReplicaArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(dorado::cli::run_replica(args, dorado::runner::Dorado))?;
    Ok(())
}
