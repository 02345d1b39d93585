//! `dorado run`: wires the wasm host, a store, the replica and the client API.
//!
//! The order matters for operators: the HTTP listener comes up first (so
//! liveness probes pass and `/readyz` can say *why* the replica is not ready),
//! then the store is connected with backoff (an unreachable etcd is a state to
//! report, not a crash), then state is recovered and the replica starts. On
//! shutdown the replica drains and resigns before the listener closes, so a
//! leader's SIGTERM hands leadership over at once.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dorado_core::{Store, StoreError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::classic::{self, ClassicConfig, ClassicError};
use crate::host::{Host, HostConfig, HostError};
use crate::node::{self, NodeConfig, NodeError};
use crate::tools::{self, ToolError};
use crate::trace::TraceWriter;

/// Which ordering protocol a replica runs (`--protocol`, `DORADO_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// DORADO: fenced, batched appends through etcd.
    #[default]
    Dorado,
    /// The paper's 2016 scheme (one entry per request, acceptances by every
    /// replica, majority decisions, views by votes); a benchmark baseline.
    Classic,
}

impl Protocol {
    /// The name `--protocol` takes and reports carry.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Dorado => "dorado",
            Protocol::Classic => "classic",
        }
    }
}

/// Everything `dorado run` needs besides the listener.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Replica configuration (module hash and ABI are filled in from the module).
    pub node: NodeConfig,
    /// Path of the guest module.
    pub module: PathBuf,
    /// wasm host limits.
    pub host: HostConfig,
    /// Largest accepted command, in bytes.
    pub max_command_bytes: usize,
    /// How long in-flight commands may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// Ordering protocol.
    pub protocol: Protocol,
    /// Replicas in the group: a majority of them decides (classic only).
    pub group_size: usize,
}

/// Why `dorado run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The module could not be read or is not a valid Dorado module.
    #[error(transparent)]
    Module(#[from] ToolError),
    /// The wasm engine could not be set up or instantiate the module.
    #[error("wasm host: {0}")]
    Host(#[from] HostError),
    /// The replica refused to start (module mismatch, corrupt snapshot, ...).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The classic replica refused to start (module or group size mismatch, group full).
    #[error(transparent)]
    Classic(#[from] ClassicError),
    /// The store refused the configuration (e.g. an invalid group name).
    #[error("store: {0}")]
    Store(StoreError),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Http(#[from] std::io::Error),
    /// The client that forwards commands to the leader could not be built.
    #[error("forwarding http client: {0}")]
    HttpClient(#[from] reqwest::Error),
}

/// Run one replica until `shutdown` resolves. `connect` is called (with
/// backoff) until it yields a store.
pub async fn run<S, F, Fut>(
    mut options: RunOptions,
    listener: TcpListener,
    mut connect: F,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError>
where
    S: Store,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<S, StoreError>>,
{
    let host = Host::new(options.host)?;
    let module = tools::load_file(&host, &options.module)?;
    let instance = module.instantiate()?;
    options.node.module_sha256 = module.sha256().to_string();
    options.node.abi_version = module.abi_version();
    tracing::info!(
        module = %options.module.display(),
        sha256 = module.sha256(),
        group = %options.node.group,
        replica = %options.node.replica,
        "module loaded"
    );

    let state = Arc::new(ApiState::new(options.max_command_bytes)?);
    let http_stop = CancellationToken::new();
    let stop = http_stop.clone();
    let server = tokio::spawn(api::serve(
        listener,
        api::router(state.clone()),
        async move { stop.cancelled().await },
    ));

    let result = serve_replica(options, instance, &state, &mut connect, shutdown).await;
    http_stop.cancel();
    let served = server.await;
    result?;
    match served {
        Ok(r) => r.map_err(RunError::Http),
        Err(e) => Err(RunError::Http(std::io::Error::other(e))),
    }
}

async fn serve_replica<S, F, Fut, M>(
    options: RunOptions,
    instance: M,
    state: &ApiState,
    connect: &mut F,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError>
where
    S: Store,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<S, StoreError>>,
    M: dorado_core::StateMachine + Send + 'static,
{
    tokio::pin!(shutdown);
    let mut attempt = 0u32;
    let store = loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = connect() => match r {
                Ok(s) => break s,
                Err(StoreError::InvalidArgument(m)) => {
                    return Err(RunError::Store(StoreError::InvalidArgument(m)));
                }
                Err(e) => {
                    let wait = Duration::from_millis((100u64 << attempt.min(5)).min(3000));
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot reach the store; /readyz stays false until it answers");
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    attempt += 1;
                }
            }
        }
    };
    if options.protocol == Protocol::Classic {
        let Some(etcd) = classic::as_etcd(&store) else {
            return Err(RunError::Store(StoreError::InvalidArgument(
                "--protocol classic runs on etcd only".into(),
            )));
        };
        let config = ClassicConfig::new(options.node.clone(), options.group_size);
        let running = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = classic::start_classic(etcd, instance, config, TraceWriter::stdout()) => r?,
        };
        state.attach_replica(running.replica());
        tracing::info!(protocol = "classic", "replica started");
        shutdown.await;
        tracing::info!("shutting down: draining, then releasing the lease");
        running.shutdown(options.drain_timeout).await;
        tracing::info!("stopped");
        return Ok(());
    }
    let running = tokio::select! {
        _ = &mut shutdown => return Ok(()),
        r = node::start(store, instance, options.node.clone(), TraceWriter::stdout()) => r?,
    };
    state.attach(running.node.clone());
    tracing::info!("replica started");
    shutdown.await;
    tracing::info!("shutting down: draining, then resigning");
    running.shutdown(options.drain_timeout).await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C (what Kubernetes and a terminal send).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
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
