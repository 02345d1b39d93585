//! `dorado-faults`: run fault schedules against real replicas and etcd.
//!
//! ```text
//! dorado-faults                       # one schedule with a random seed
//! dorado-faults --schedules 20        # 20 schedules
//! dorado-faults --minutes 30          # schedules until 30 minutes have passed
//! dorado-faults --seed 1234           # replay one schedule
//! ```
//!
//! The hidden `replica` subcommand is what the suite starts as replica
//! processes (the `dorado run` wiring, linked into this binary).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dorado_faults::plan::Profile;
use dorado_faults::replica::{self, ReplicaArgs};
use dorado_faults::suite::{self, SuiteConfig};

/// Fault-injection suite for Dorado (see docs/reliability.md).
#[derive(Debug, Parser)]
#[command(
    name = "dorado-faults",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Replay these schedule seeds (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    seed: Vec<u64>,
    /// Run this many schedules.
    #[arg(long)]
    schedules: Option<u64>,
    /// Start schedules until this many minutes have passed.
    #[arg(long)]
    minutes: Option<f64>,
    /// Base seed of the derived schedule seeds [default: random, printed].
    #[arg(long)]
    base_seed: Option<u64>,
    /// Schedule profile: standard, or pause-heavy (hunts a missing append fence).
    #[arg(long, default_value = "standard")]
    profile: Profile,
    /// Seconds of client load (with faults) per schedule.
    #[arg(long, default_value_t = suite::LONG_WORKLOAD.as_secs())]
    workload_secs: u64,
    /// Stop at the first schedule with an anomaly.
    #[arg(long)]
    stop_on_anomaly: bool,
    /// Where the files of failed schedules are kept.
    #[arg(long, default_value_os_t = std::env::temp_dir().join("dorado-faults-failures"))]
    keep_dir: PathBuf,
    /// Keep the files of every schedule, not only of failed ones.
    #[arg(long)]
    keep_all: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one replica (used by the suite itself).
    #[command(hide = true)]
    Replica(ReplicaArgs),
}

fn main() -> ExitCode {
    let _ = rustls_provider();
    let cli = Cli::parse();
    if let Some(Cmd::Replica(args)) = cli.command {
        return match replica::main(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let replica_bin = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot find this executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = SuiteConfig {
        replica_bin,
        seeds: (!cli.seed.is_empty()).then_some(cli.seed),
        base_seed: cli.base_seed.unwrap_or_else(rand::random),
        schedules: cli.schedules,
        time_limit: cli.minutes.map(|m| Duration::from_secs_f64(m * 60.0)),
        profile: cli.profile,
        workload: Duration::from_secs(cli.workload_secs),
        stop_on_anomaly: cli.stop_on_anomaly,
        keep_dir: cli.keep_dir,
        keep_all: cli.keep_all,
        replay_prefix: suite::default_replay_prefix(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On Ctrl-C or SIGTERM the running schedule is dropped, which kills its
    // processes and removes its network namespaces.
    let summary = runtime.block_on(async {
        tokio::select! {
            summary = suite::run(&cfg) => Some(summary),
            _ = dorado::runner::shutdown_signal() => None,
        }
    });
    let Some(summary) = summary else {
        eprintln!("interrupted; the running schedule was torn down");
        return ExitCode::FAILURE;
    };
    println!("{}", summary.render(&cfg));
    if summary.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn rustls_provider() -> bool {
    dorado::ensure_crypto_provider();
    true
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
