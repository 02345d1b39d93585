//! Dorado's benchmarks, the local demo and the paper's classic protocol, in
//! one crate so that the runtime image carries none of them: plotting,
//! progress bars, histograms and the embedded example guests live here, not in
//! the `dorado` binary that pods run.
//!
//! Layout:
//! - [`bench`]: `dorado-bench bench` — throughput against raw etcd puts and
//!   fenced Txns, failover and recovery; reports as JSON, Markdown and plots.
//! - [`demo`]: `dorado-bench demo` — three replicas, the leader killed, a
//!   replica recreated empty; the README's first command.
//! - [`classic`]: the authors' 2016 scheme, a benchmark baseline, plugged into
//!   the runtime's `dorado run` wiring through [`dorado::runner::Starter`].
//! - [`ReplicaArgs`]: `dorado-bench run`, a replica of either protocol (the
//!   benchmarks and the demo start their replicas with it).

pub mod bench;
pub mod classic;
pub mod demo;

use std::sync::Arc;

use dorado::host::Switching;
use dorado::node::NodeConfig;
use dorado::runner::{RunError, Started, Starter};
use dorado::store::EtcdStore;
use dorado::trace::TraceWriter;
use tokio_util::sync::CancellationToken;

/// Which ordering protocol a replica runs: the one `GET /v1/status` reports.
pub use dorado::wire::Protocol;

/// `dorado-bench run`: `dorado run`'s flags plus the protocol to run.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplicaArgs {
    /// Everything `dorado run` takes.
    #[command(flatten)]
    pub run: dorado::cli::RunArgs,
    /// Ordering protocol: dorado (fenced, batched) or classic (the paper's
    /// 2016 scheme, kept as a benchmark baseline).
    #[arg(long, env = "DORADO_PROTOCOL", value_enum, default_value_t = Protocol::Dorado)]
    pub protocol: Protocol,
    /// Replicas in the group; with --protocol classic a majority of them
    /// decides (fixed by the group's first replica).
    #[arg(long, env = "DORADO_REPLICAS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=99))]
    pub replicas: u64,
}

/// Run one replica of either protocol until SIGTERM or Ctrl-C.
pub async fn run_replica(args: ReplicaArgs) -> Result<(), dorado::cli::CliError> {
    match args.protocol {
        Protocol::Dorado => dorado::cli::run_replica(args.run, dorado::runner::Dorado).await,
        Protocol::Classic => {
            let group_size = usize::try_from(args.replicas).unwrap_or(3);
            dorado::cli::run_replica(args.run, Classic { group_size }).await
        }
    }
}

/// Starts [`classic`] replicas of a group of `group_size`.
#[derive(Debug, Clone, Copy)]
pub struct Classic {
    /// Replicas in the group: a majority of them decides.
    pub group_size: usize,
}

impl Starter<EtcdStore> for Classic {
    async fn start(
        self,
        store: EtcdStore,
        instance: Switching,
        node: NodeConfig,
        trace: TraceWriter,
        shutdown: CancellationToken,
    ) -> Result<Started, RunError> {
        let config = classic::ClassicConfig::new(node, self.group_size);
        let running = classic::start_classic(store, instance, config, trace, shutdown)
            .await
            .map_err(|e| RunError::Start(Box::new(e)))?;
        tracing::info!(protocol = "classic", "replica started");
        let replica: Arc<dyn dorado::replica::Replica> = running.replica();
        Ok(Started {
            replica,
            shutdown: Box::new(move |drain| Box::pin(running.shutdown(drain))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn protocol_names_are_the_flag_values() {
        for p in Protocol::value_variants() {
            let value = p
                .to_possible_value()
                .expect("every protocol is a flag value");
            assert_eq!(p.name(), value.get_name());
            assert_eq!(
                serde_json::to_value(p).unwrap(),
                serde_json::Value::from(p.name())
            );
        }
    }
}
