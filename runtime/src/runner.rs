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
use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::driver::retry_unreachable;
use crate::host::{Host, HostConfig, HostError, ModuleSet, Switching};
use crate::node::{self, NodeConfig, NodeError};
use crate::replica::Replica;
use crate::tools::{self, ToolError};
use crate::trace::TraceWriter;
use crate::wire::{ModuleState, UpgradeRequest};

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
    /// A replica of another ordering protocol (a [`Starter`] other than
    /// [`Dorado`], e.g. the benchmarks' classic baseline) refused to start.
    #[error(transparent)]
    Start(Box<dyn std::error::Error + Send + Sync>),
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

/// A replica that [`run`] started: what the client API serves, and how to
/// stop it (drain in-flight commands for at most the given time, then
/// release leadership).
pub struct Started {
    /// The replica behind the client API.
    pub replica: Arc<dyn Replica>,
    /// Drains and stops the replica.
    pub shutdown: Box<dyn FnOnce(Duration) -> BoxFuture<'static, ()> + Send>,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started").finish_non_exhaustive()
    }
}

/// Starts the ordering protocol once the store is connected. [`Dorado`] is
/// the only one the runtime ships; the benchmarks plug in the paper's classic
/// scheme through this trait without the runtime knowing about it.
///
/// # Requirements
/// * Every task the replica spawns stops when `shutdown` is cancelled, when
///   [`Started::shutdown`] returns and when the [`Started`] is dropped; after
///   that the replica never touches the store again (build on
///   [`crate::driver`], whose `TaskSet` and `Lifecycle` guarantee it).
pub trait Starter<S: Store>: Send {
    /// Start a replica of `node`'s group over `store`, applying to `sm`.
    fn start(
        self,
        store: S,
        sm: Switching,
        node: NodeConfig,
        trace: TraceWriter,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<Started, RunError>> + Send;
}

/// The DORADO protocol: fenced, batched appends ([`node::start`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Dorado;

impl<S: Store> Starter<S> for Dorado {
    async fn start(
        self,
        store: S,
        sm: Switching,
        node: NodeConfig,
        trace: TraceWriter,
        shutdown: CancellationToken,
    ) -> Result<Started, RunError> {
        let running = node::start(store, sm, node, trace, shutdown).await?;
        Ok(Started {
            replica: Arc::new(running.node.clone()),
            shutdown: Box::new(move |drain| Box::pin(running.shutdown(drain))),
        })
    }
}

/// Run one replica until `shutdown` resolves. `connect` is called (with
/// backoff) until it yields a store.
pub async fn run<S, F, Fut>(
    mut options: RunOptions,
    listener: TcpListener,
    mut connect: F,
    starter: impl Starter<S>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError>
where
    S: Store,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<S, StoreError>>,
{
    let host = Host::new(options.host)?;
    let (module, module_bytes) = tools::read_module(&host, &options.module)?;
    let modules = ModuleSet::new(host.clone());
    let sm = Switching::new(modules.clone(), module.instantiate()?);
    options.node.modules = Some(modules);
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
    let api_addr = own_api_address(&listener)?;
    let http_stop = CancellationToken::new();
    let stop = http_stop.clone();
    let server = tokio::spawn(api::serve(
        listener,
        api::router(state.clone()),
        async move { stop.cancelled().await },
    ));

    let replica = ReplicaParts {
        sm,
        module_bytes,
        api_addr,
    };
    let result = serve_replica(options, replica, &state, &mut connect, starter, shutdown).await;
    http_stop.cancel();
    let served = server.await;
    result?;
    match served {
        Ok(r) => r.map_err(RunError::Http),
        Err(e) => Err(RunError::Http(std::io::Error::other(e))),
    }
}

/// What [`serve_replica`] starts the replica with.
struct ReplicaParts {
    sm: Switching,
    /// The module file's bytes, stored under `modules/<sha256>`.
    module_bytes: Vec<u8>,
    /// Where this process's own client API answers (for upgrade proposals).
    api_addr: std::net::SocketAddr,
}

/// The address this process reaches its own API at.
fn own_api_address(listener: &TcpListener) -> std::io::Result<std::net::SocketAddr> {
    let mut addr = listener.local_addr()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(addr)
}

async fn serve_replica<S, F, Fut>(
    options: RunOptions,
    replica: ReplicaParts,
    state: &ApiState,
    connect: &mut F,
    starter: impl Starter<S>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError>
where
    S: Store,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<S, StoreError>>,
{
    tokio::pin!(shutdown);
    let mut attempt = 0u32;
    let store = loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => return Ok(()),
            r = connect() => match r {
                Ok(s) => {
                    state.set_connect_error(None);
                    break s;
                }
                Err(StoreError::InvalidArgument(m)) => {
                    return Err(RunError::Store(StoreError::InvalidArgument(m)));
                }
                Err(e) => {
                    let wait = Duration::from_millis((100u64 << attempt.min(5)).min(3000));
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot reach the store; /readyz stays false until it answers");
                    state.set_connect_error(Some(e.to_string()));
                    tokio::select! {
                        biased;
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    attempt += 1;
                }
            }
        }
    };
    // Any replica and `dorado replay` may need this module later (a replica
    // that catches up across an upgrade to it), so it goes into the store
    // before this replica can propose it.
    let sha256 = options.node.module_sha256.clone();
    tokio::select! {
        biased;
        _ = &mut shutdown => return Ok(()),
        r = retry_unreachable("store the module", || store.put_module(&sha256, &replica.module_bytes)) => {
            r.map_err(RunError::Store)?;
        }
    }
    // Whatever way this future ends (also dropped), the replica's tasks stop.
    let replica_stop = CancellationToken::new();
    let _stop_replica = replica_stop.clone().drop_guard();
    let started = tokio::select! {
        biased;
        _ = &mut shutdown => return Ok(()),
        r = starter.start(store, replica.sm, options.node.clone(), TraceWriter::stdout(), replica_stop.clone()) => r?,
    };
    let running: Arc<dyn Replica> = started.replica.clone();
    state.attach_replica(started.replica);
    tracing::info!("replica started");
    let proposer = tokio::spawn(propose_own_module(
        running,
        replica.api_addr,
        sha256,
        replica_stop.clone(),
    ));
    shutdown.await;
    proposer.abort();
    tracing::info!("shutting down: draining, then resigning");
    (started.shutdown)(options.drain_timeout).await;
    tracing::info!("stopped");
    Ok(())
}

/// While the replica says `proposing` (the group runs another module and
/// upgrades are automatic), ask the group to switch to this replica's module
/// through this process's own API, which forwards to the leader. Stops once
/// the replica serves, or when `stop` is cancelled.
async fn propose_own_module(
    replica: Arc<dyn Replica>,
    api: std::net::SocketAddr,
    module: String,
    stop: CancellationToken,
) {
    let Ok(http) = crate::replica_http(Duration::from_secs(30)).build() else {
        tracing::error!("cannot build the http client that proposes upgrades");
        return;
    };
    let mut attempt = 0u32;
    loop {
        let wait = if attempt == 0 {
            Duration::from_millis(200)
        } else {
            crate::driver::backoff(attempt)
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let status = replica.status();
        match status.module_state {
            ModuleState::Serving => return,
            ModuleState::Waiting(_) => continue,
            ModuleState::Proposing => {}
        }
        tracing::info!(
            from = %status.group_module,
            to = %module,
            "the group runs another module; proposing an upgrade to this replica's module"
        );
        let sent = http
            .post(format!("http://{api}/v1/upgrade"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(UpgradeRequest::body(&module))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() || r.status().as_u16() == 422 => {
                // Ordered (switched, or rejected: the replica's state says which).
                attempt = 0;
            }
            Ok(r) => {
                let code = r.status();
                let body = r.text().await.unwrap_or_default();
                tracing::warn!(%code, %body, "upgrade proposal not ordered; retrying");
                attempt += 1;
            }
            Err(e) => {
                tracing::warn!(error = %e, "upgrade proposal failed; retrying");
                attempt += 1;
            }
        }
    }
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
