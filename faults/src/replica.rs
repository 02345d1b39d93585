//! `dorado-faults replica ...`: one Dorado replica, wired exactly as
//! `dorado run` wires it (same library calls, same defaults), so that the
//! suite's own binary can be the replica process.
//!
//! Why not spawn the `dorado` binary: Cargo builds another package's binaries
//! only when that package is tested, so `cargo test -p dorado-faults` (and a
//! `--features bug-unfenced` build, which must link the *buggy* library) could
//! otherwise run a stale or missing binary. Linking the library into this
//! binary makes the replicas always run the code under test.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use dorado::host::{DEFAULT_FUEL_PER_COMMAND, DEFAULT_MEMORY_LIMIT, HostConfig};
use dorado::node::NodeConfig;
use dorado::runner::{self, RunOptions};
use dorado::store::{EtcdStore, EtcdStoreOptions};
use dorado::trace::LogFormat;

/// The subset of `dorado run`'s flags the suite uses (same names and defaults).
#[derive(Debug, Clone, Args)]
pub struct ReplicaArgs {
    /// Group name.
    #[arg(long)]
    pub group: String,
    /// Namespace of the group.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Replica id.
    #[arg(long)]
    pub replica: String,
    /// The guest module (.wasm).
    #[arg(long)]
    pub module: PathBuf,
    /// etcd endpoints, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// Address of the client API.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// Address other replicas use to reach this one.
    #[arg(long)]
    pub advertise: String,
    /// Lease time-to-live in seconds.
    #[arg(long, default_value_t = 2)]
    pub lease_ttl: u64,
    /// Snapshot every this many entries (0 = never).
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// Trace format on stdout.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Appends in flight at once.
    #[arg(long, default_value_t = 4)]
    pub max_inflight: usize,
}

/// Run the replica until SIGTERM / Ctrl-C (the suite kills it with SIGKILL).
pub fn main(args: ReplicaArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DORADO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: ReplicaArgs) -> anyhow::Result<()> {
    let mut node = NodeConfig::new(&args.namespace, &args.group, &args.replica, &args.advertise);
    node.lease_ttl = Duration::from_secs(args.lease_ttl);
    node.snapshot_every = args.snapshot_every;
    node.log_format = args.log_format;
    node.leader.max_inflight = args.max_inflight.max(1);
    let max_command_bytes = dorado::api::DEFAULT_MAX_COMMAND_BYTES;
    node.leader.max_batch_bytes = (1024 * 1024).max(max_command_bytes + 4096);
    let options = RunOptions {
        node,
        module: args.module,
        host: HostConfig {
            fuel_per_command: DEFAULT_FUEL_PER_COMMAND,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            ..HostConfig::default()
        },
        max_command_bytes,
        drain_timeout: Duration::from_secs(5),
        protocol: dorado::runner::Protocol::Dorado,
        group_size: 3,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let (etcd, namespace, group) = (args.etcd, args.namespace, args.group);
    let connect = move || {
        let (etcd, namespace, group) = (etcd.clone(), namespace.clone(), group.clone());
        async move { EtcdStore::connect(&etcd, &namespace, &group, EtcdStoreOptions::default()).await }
    };
    runner::run(options, listener, connect, runner::shutdown_signal()).await?;
    Ok(())
}
