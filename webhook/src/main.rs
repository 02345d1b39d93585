//! `dorado-webhook`: thin binary over the `dorado_webhook` library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use dorado_webhook::quantity::Quantity;
use dorado_webhook::{LogFormat, MutationConfig, ResourceDefaults, ServeConfig, TlsFiles};

#[derive(Debug, Parser)]
#[command(
    name = "dorado-webhook",
    version,
    about = "Dorado mutating admission webhook"
)]
struct Cli {
    /// Log output format of the webhook itself.
    #[arg(long, env = "DORADO_WEBHOOK_LOG_FORMAT", value_enum, default_value_t = Format::Human, global = true)]
    log_format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the webhook (HTTPS) and the admin endpoints (HTTP).
    Serve(Box<ServeArgs>),
    /// Generate a CA and a serving certificate for the webhook Service.
    Certs(CertsArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Serving certificate chain (PEM); reloaded when it changes.
    #[arg(
        long,
        env = "DORADO_WEBHOOK_TLS_CERT",
        default_value = "/etc/dorado-webhook/tls/tls.crt"
    )]
    tls_cert: PathBuf,
    /// Serving private key (PEM); reloaded when it changes.
    #[arg(
        long,
        env = "DORADO_WEBHOOK_TLS_KEY",
        default_value = "/etc/dorado-webhook/tls/tls.key"
    )]
    tls_key: PathBuf,
    /// HTTPS address of POST /mutate.
    #[arg(long, env = "DORADO_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Plain-HTTP address of /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "DORADO_WEBHOOK_ADMIN_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    admin_listen: SocketAddr,
    /// Image of the Dorado runtime put into mutated pods.
    #[arg(long, env = "DORADO_WEBHOOK_RUNTIME_IMAGE")]
    runtime_image: String,
    /// imagePullPolicy of the runtime container (Always, IfNotPresent, Never); unset keeps the pod's.
    #[arg(long, env = "DORADO_WEBHOOK_IMAGE_PULL_POLICY")]
    image_pull_policy: Option<String>,
    /// Default etcd client URLs, comma-separated (annotation dorado.io/etcd-endpoints overrides).
    #[arg(long, env = "DORADO_WEBHOOK_ETCD_ENDPOINTS")]
    etcd_endpoints: String,
    /// Default Secret (in the pod's namespace) with the runtime's etcd client certificate,
    /// mounted when the etcd endpoints are https:// (dorado.io/etcd-client-secret overrides).
    #[arg(long, env = "DORADO_WEBHOOK_ETCD_CLIENT_SECRET", default_value = dorado_webhook::config::DEFAULT_ETCD_CLIENT_SECRET)]
    etcd_client_secret: String,
    /// Default client port of the runtime (dorado.io/port).
    #[arg(long, env = "DORADO_WEBHOOK_DEFAULT_PORT", default_value_t = dorado_webhook::config::DEFAULT_PORT)]
    default_port: u16,
    /// Default leader lease TTL in seconds (dorado.io/lease-ttl).
    #[arg(long, env = "DORADO_WEBHOOK_DEFAULT_LEASE_TTL", default_value_t = dorado_webhook::config::DEFAULT_LEASE_TTL_SECS)]
    default_lease_ttl: u32,
    /// Default snapshot interval in log entries (dorado.io/snapshot-every).
    #[arg(long, env = "DORADO_WEBHOOK_DEFAULT_SNAPSHOT_EVERY", default_value_t = dorado_webhook::config::DEFAULT_SNAPSHOT_EVERY)]
    default_snapshot_every: u64,
    /// Default runtime log format (dorado.io/log-format).
    #[arg(long, env = "DORADO_WEBHOOK_DEFAULT_LOG_FORMAT", value_enum, default_value_t = Format::Human)]
    default_log_format: Format,
    /// Default CPU request (dorado.io/cpu-request).
    #[arg(
        long,
        env = "DORADO_WEBHOOK_DEFAULT_CPU_REQUEST",
        default_value = "100m"
    )]
    default_cpu_request: Quantity,
    /// Default CPU limit, or "none" (dorado.io/cpu-limit).
    #[arg(long, env = "DORADO_WEBHOOK_DEFAULT_CPU_LIMIT", default_value = "1")]
    default_cpu_limit: String,
    /// Default memory request (dorado.io/memory-request).
    #[arg(
        long,
        env = "DORADO_WEBHOOK_DEFAULT_MEMORY_REQUEST",
        default_value = "128Mi"
    )]
    default_memory_request: Quantity,
    /// Default memory limit, or "none" (dorado.io/memory-limit).
    #[arg(
        long,
        env = "DORADO_WEBHOOK_DEFAULT_MEMORY_LIMIT",
        default_value = "512Mi"
    )]
    default_memory_limit: String,
    /// UID/GID of the runtime container.
    #[arg(long, env = "DORADO_WEBHOOK_RUN_AS_USER", default_value_t = dorado_webhook::config::DEFAULT_RUN_AS_USER)]
    run_as_user: i64,
    /// Largest accepted AdmissionReview body in bytes.
    #[arg(long, env = "DORADO_WEBHOOK_MAX_BODY_BYTES", default_value_t = dorado_webhook::config::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Fallback period (seconds) for re-reading the certificate files.
    #[arg(
        long,
        env = "DORADO_WEBHOOK_CERT_RELOAD_INTERVAL",
        default_value_t = 30
    )]
    cert_reload_interval: u64,
    /// Seconds to keep serving (with /readyz failing) after SIGTERM.
    #[arg(long, env = "DORADO_WEBHOOK_SHUTDOWN_DELAY", default_value_t = 3)]
    shutdown_delay: u64,
    /// Seconds in-flight requests get to finish after the delay.
    #[arg(long, env = "DORADO_WEBHOOK_SHUTDOWN_GRACE", default_value_t = 10)]
    shutdown_grace: u64,
}

#[derive(Debug, clap::Args)]
struct CertsArgs {
    /// Name of the webhook Service.
    #[arg(long, default_value = "dorado-webhook")]
    service: String,
    /// Namespace of the webhook Service.
    #[arg(long, default_value = "dorado-system")]
    namespace: String,
    /// Directory receiving ca.crt, tls.crt and tls.key.
    #[arg(long)]
    out: PathBuf,
    /// Validity of the CA in days.
    #[arg(long, default_value_t = 3650)]
    ca_days: u32,
    /// Validity of the serving certificate in days.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
    /// Also write etcd's certificates into this directory: ca.crt, server.*, peer.*, client.*.
    #[arg(long, value_name = "DIR")]
    etcd_out: Option<PathBuf>,
    /// Name of the etcd StatefulSet and its headless Service.
    #[arg(long, default_value = "etcd")]
    etcd_service: String,
    /// Name of etcd's client Service.
    #[arg(long, default_value = "etcd-client")]
    etcd_client_service: String,
    /// Namespace of etcd.
    #[arg(long, default_value = "dorado-system")]
    etcd_namespace: String,
    /// etcd members (etcd-0 .. etcd-N-1 are named in the certificates).
    #[arg(long, default_value_t = 3)]
    etcd_replicas: u32,
}

fn optional_quantity(s: &str) -> anyhow::Result<Option<Quantity>> {
    if s == "none" {
        return Ok(None);
    }
    Ok(Some(Quantity::parse(s)?))
}

fn log_format(f: Format) -> LogFormat {
    match f {
        Format::Human => LogFormat::Human,
        Format::Json => LogFormat::Json,
    }
}

fn init_tracing(format: Format) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        Format::Human => builder.init(),
        Format::Json => builder.json().init(),
    }
}

async fn terminate() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut mutation = MutationConfig::new(
        args.runtime_image,
        dorado_webhook::validate::split_endpoints(&args.etcd_endpoints),
    );
    mutation.image_pull_policy = args.image_pull_policy;
    mutation.etcd_client_secret = args.etcd_client_secret;
    mutation.port = args.default_port;
    mutation.lease_ttl_secs = args.default_lease_ttl;
    mutation.snapshot_every = args.default_snapshot_every;
    mutation.log_format = log_format(args.default_log_format);
    mutation.run_as_user = args.run_as_user;
    mutation.resources = ResourceDefaults {
        cpu_request: args.default_cpu_request,
        cpu_limit: optional_quantity(&args.default_cpu_limit).context("--default-cpu-limit")?,
        memory_request: args.default_memory_request,
        memory_limit: optional_quantity(&args.default_memory_limit)
            .context("--default-memory-limit")?,
    };
    mutation.validate().context("invalid configuration")?;

    let mut config = ServeConfig::new(
        mutation,
        TlsFiles {
            cert: args.tls_cert,
            key: args.tls_key,
        },
    );
    config.reload_interval = Duration::from_secs(args.cert_reload_interval.max(1));
    config.max_body_bytes = args.max_body_bytes;
    config.shutdown_delay = Duration::from_secs(args.shutdown_delay);
    config.shutdown_grace = Duration::from_secs(args.shutdown_grace);

    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let admin = std::net::TcpListener::bind(args.admin_listen)
        .with_context(|| format!("cannot listen on {}", args.admin_listen))?;
    dorado_webhook::serve(listener, admin, config, terminate()).await?;
    Ok(())
}

fn run_certs(args: CertsArgs) -> anyhow::Result<()> {
    let generated =
        dorado_webhook::certs::generate(&args.service, &args.namespace, args.ca_days, args.days)?;
    dorado_webhook::certs::write_files(&args.out, &generated, args.force)?;
    eprintln!(
        "wrote {0}/ca.crt, {0}/tls.crt and {0}/tls.key for {1}; caBundle follows on stdout",
        args.out.display(),
        dorado_webhook::certs::service_dns_names(&args.service, &args.namespace).join(", ")
    );
    if let Some(dir) = &args.etcd_out {
        let etcd = dorado_webhook::certs::generate_etcd(
            &args.etcd_service,
            &args.etcd_client_service,
            &args.etcd_namespace,
            args.etcd_replicas,
            args.ca_days,
            args.days,
        )?;
        dorado_webhook::certs::write_etcd_files(dir, &etcd, args.force)?;
        eprintln!(
            "wrote {0}/ca.crt and the server, peer and client pairs ({0}/{{server,peer,client}}.{{crt,key}}) for etcd {1} in {2}",
            dir.display(),
            args.etcd_service,
            args.etcd_namespace
        );
    }
    println!("{}", generated.ca_bundle());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Certs(args) => run_certs(args),
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the tokio runtime")?
            .block_on(run_serve(*args)),
    }
}
