//! The `dorado-bench` binary: benchmarks, the local demo, and replicas of
//! either protocol for them to start. Parses arguments and calls the library.

use std::io;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Dorado's benchmarks and local demo (not part of any image).
#[derive(Debug, Parser)]
#[command(name = "dorado-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmark Dorado against raw etcd puts, fenced Txns and the classic
    /// protocol in one run; `bench failover` / `bench recovery` measure
    /// write unavailability and replica catch-up.
    Bench(Box<dorado_bench::bench::BenchArgs>),
    /// Run 3 replicas of the embedded kv example, kill the leader, recreate it
    /// empty and check that nothing was lost (etcd if installed, else in-process).
    Demo(dorado_bench::demo::DemoArgs),
    /// Run one replica of a group with either protocol (`dorado run`'s flags
    /// plus `--protocol` and `--replicas`); the benchmarks and the demo start
    /// their replicas with it.
    Run(Box<dorado_bench::ReplicaArgs>),
}

fn main() -> ExitCode {
    // Installed before anything can open a TLS connection (reqwest, etcd-client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let message = format!("{error:#}").replace('\n', "; ");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Bench(args) => {
            runtime.block_on(dorado_bench::bench::main(*args))?;
        }
        Command::Demo(args) => {
            runtime.block_on(dorado_bench::demo::run(&args, &mut io::stdout()))?
        }
        Command::Run(args) => runtime.block_on(dorado_bench::run_replica(*args))?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        // Catches what clap only reports when parsing: duplicate flags or
        // argument groups (e.g. from flattened argument structs).
        super::Cli::command().debug_assert();
    }
}
