//! `dorado-sim`: run simulation seeds.
//!
//! `dorado-sim --seed N` re-runs one seed and prints its full event log;
//! `dorado-sim --seeds 1000 [--from S]` sweeps; `--long` sweeps 100,000.

use std::time::Instant;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Deterministic simulation of whole DORADO groups")]
struct Args {
    /// Re-run this one seed and print its event log.
    #[arg(long)]
    seed: Option<u64>,
    /// How many seeds to sweep.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// First seed of the sweep.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// The long mode: 100,000 seeds.
    #[arg(long)]
    long: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(seed) = args.seed {
        // The drivers' own logs, interleaved with the event log (virtual
        // time is in the event log; wall time would differ between runs).
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .without_time()
            .with_writer(std::io::stderr)
            .init();
        return match dorado_sim::run(seed, true) {
            Ok(r) => {
                println!("seed {seed}: ok {r:?}");
                Ok(())
            }
            Err(f) => {
                anyhow::bail!("{f}");
            }
        };
    }
    let count = if args.long { 100_000 } else { args.seeds };
    let t0 = Instant::now();
    let mut ops = 0;
    let mut faults = 0;
    let mut depositions = 0;
    for seed in args.from..args.from + count {
        match dorado_sim::run(seed, false) {
            Ok(r) => {
                ops += r.operations;
                faults += r.faults;
                depositions += r.depositions;
            }
            Err(f) => {
                for line in &f.log {
                    eprintln!("{line}");
                }
                anyhow::bail!("{f}");
            }
        }
        let done = seed - args.from + 1;
        if done % 1000 == 0 {
            eprintln!(
                "{done} seeds, {:.1} seeds/s",
                done as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{count} seeds ok in {secs:.1} s ({:.1} seeds/s): {ops} operations, {faults} faults, {depositions} depositions",
        count as f64 / secs
    );
    Ok(())
}
