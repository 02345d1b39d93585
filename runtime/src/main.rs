//! The `dorado` binary: parses arguments and calls the library. Each
//! subcommand is one variant of [`Command`]; the work lives in `dorado::*` so
//! it is tested without spawning this binary.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use dorado::client::{Client, generated_client_id};
use dorado::host::{
    DEFAULT_FUEL_PER_COMMAND, DEFAULT_MEMORY_LIMIT, Host, HostConfig, Module, ModuleSet, Switching,
};
use dorado::store::{EtcdStore, EtcdStoreOptions, EtcdTlsArgs};
use dorado::tools;
use dorado::trace::LogFormat;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Dorado: replicated state machines for Kubernetes workloads.
#[derive(Debug, Parser)]
#[command(name = "dorado", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a module and print its ABI version, exports, size and sha256.
    Inspect {
        /// The guest module (.wasm).
        module: PathBuf,
    },
    /// Apply commands from stdin (one per line) to a fresh local instance and
    /// print one reply per line; a line starting with `?` is a query.
    Try(TryArgs),
    /// Run one replica of a group (what the webhook injects into pods).
    Run(Box<dorado::cli::RunArgs>),
    /// Submit a command to a group and print the reply.
    Submit(SubmitArgs),
    /// Run a read-only query against a group and print the answer.
    Query(QueryArgs),
    /// Show a replica's status.
    Status(StatusArgs),
    /// Re-execute a group's stored history offline and report the first index whose hash differs.
    Replay(ReplayArgs),
    /// Switch a running group to another module (or back), ordered through its log.
    Upgrade(UpgradeArgs),
}

/// Which group in which store (shared by the commands that read the store).
#[derive(Debug, Args)]
struct GroupArgs {
    /// etcd endpoints, comma-separated URLs.
    #[arg(
        long,
        env = "DORADO_ETCD_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    etcd: Vec<String>,
    #[command(flatten)]
    etcd_tls: EtcdTlsArgs,
    /// Group name.
    #[arg(long, env = "DORADO_GROUP")]
    group: String,
    /// Namespace of the group.
    #[arg(long, env = "DORADO_NAMESPACE", default_value = "default")]
    namespace: String,
}

impl GroupArgs {
    async fn connect(&self) -> anyhow::Result<EtcdStore> {
        let options = EtcdStoreOptions {
            tls: self.etcd_tls.resolve(&self.etcd)?,
            ..EtcdStoreOptions::default()
        };
        EtcdStore::try_connect(&self.etcd, &self.namespace, &self.group, options)
            .await
            .context("cannot connect to etcd")
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["module", "to"])))]
struct UpgradeArgs {
    #[command(flatten)]
    group: GroupArgs,
    /// The new module (.wasm); stored under modules/<sha256> first.
    #[arg(long)]
    module: Option<PathBuf>,
    /// sha256 of a module already in the store (e.g. the one before the last
    /// upgrade, to roll back).
    #[arg(long)]
    to: Option<String>,
    /// First replay the history since the newest snapshot against the new
    /// module, offline, and propose only if every reply and the final state agree.
    #[arg(long)]
    verify: bool,
    /// With --verify: only report, never propose (is this a behaviour-preserving build?).
    #[arg(long, requires = "verify")]
    dry_run: bool,
    /// How long to look for a leader before giving up, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

#[derive(Debug, Args)]
struct SubmitArgs {
    /// Replica endpoints (host:port or URL), comma-separated or repeated.
    #[arg(long, env = "DORADO_ENDPOINT", required = true, value_delimiter = ',')]
    endpoint: Vec<String>,
    /// Client id for exactly-once delivery [default: generated].
    #[arg(long, requires = "seq")]
    client_id: Option<String>,
    /// Sequence number within the client id (1, 2, 3, ...).
    #[arg(long, requires = "client_id", value_parser = clap::value_parser!(u64).range(1..))]
    seq: Option<u64>,
    /// The command bytes (use - to read stdin).
    command: String,
}

#[derive(Debug, Args)]
struct QueryArgs {
    /// Replica endpoints.
    #[arg(long, env = "DORADO_ENDPOINT", required = true, value_delimiter = ',')]
    endpoint: Vec<String>,
    /// Answer from local state without confirming the latest commit.
    #[arg(long)]
    stale: bool,
    /// The query bytes (use - to read stdin).
    query: String,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Replica endpoint.
    #[arg(long, env = "DORADO_ENDPOINT", required = true, value_delimiter = ',')]
    endpoint: Vec<String>,
    /// Print raw JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    group: GroupArgs,
    /// Module files to use where the store lacks a module the history ran
    /// (replay fetches every module from the store and follows upgrades).
    #[arg(long)]
    module: Vec<PathBuf>,
    /// Also compare with a saved trace (human or JSON lines, e.g. from `kubectl logs`).
    #[arg(long)]
    trace: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct TryArgs {
    /// The guest module (.wasm).
    module: PathBuf,
    /// Write the final state snapshot to this file.
    #[arg(long, value_name = "FILE")]
    snapshot: Option<PathBuf>,
    /// Fuel budget per command (about one unit per wasm operation).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_FUEL_PER_COMMAND)]
    fuel: u64,
    /// Cap on the guest's memory, in MiB.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MEMORY_LIMIT >> 20)]
    memory_mib: usize,
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
    match cli.command {
        Command::Inspect { module } => {
            let host = Host::new(HostConfig::default())?;
            let report = tools::inspect(&host, &module)?;
            print!("{report}");
            io::stdout().flush().context("cannot write output")?;
        }
        Command::Try(args) => {
            let memory_limit = args
                .memory_mib
                .checked_mul(1 << 20)
                .context("--memory-mib is too large")?;
            let host = Host::new(HostConfig {
                fuel_per_command: args.fuel,
                memory_limit,
                ..HostConfig::default()
            })?;
            let stdin = io::stdin().lock();
            let stdout = io::BufWriter::new(io::stdout().lock());
            tools::try_module(&host, &args.module, args.snapshot.as_deref(), stdin, stdout)?;
        }
        Command::Run(args) => {
            runtime()?.block_on(dorado::cli::run_replica(*args, dorado::runner::Dorado))?
        }
        Command::Submit(args) => runtime()?.block_on(submit(args))?,
        Command::Query(args) => runtime()?.block_on(query(args))?,
        Command::Status(args) => runtime()?.block_on(status(args))?,
        Command::Replay(args) => runtime()?.block_on(replay(args))?,
        Command::Upgrade(args) => runtime()?.block_on(upgrade(args))?,
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn arg_bytes(arg: &str) -> anyhow::Result<Vec<u8>> {
    if arg == "-" {
        let mut buf = Vec::new();
        io::Read::read_to_end(&mut io::stdin(), &mut buf).context("cannot read stdin")?;
        Ok(buf)
    } else {
        Ok(arg.as_bytes().to_vec())
    }
}

fn print_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)?;
    if !bytes.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.flush().context("cannot write output")
}

async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.endpoint)?;
    let command = arg_bytes(&args.command)?;
    let id = args.client_id.unwrap_or_else(generated_client_id);
    let seq = args.seq.unwrap_or(1);
    let reply = client.submit(&command, Some((&id, seq))).await?;
    print_bytes(&reply.body)
}

async fn query(args: QueryArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.endpoint)?;
    let q = arg_bytes(&args.query)?;
    let answer = client.query(&q, args.stale).await?;
    print_bytes(&answer)
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.endpoint)?.with_deadline(Duration::from_secs(5));
    let s = client.status().await?;
    if args.json {
        return print_bytes(serde_json::to_string_pretty(&s)?.as_bytes());
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let rows = [
        ("group", s.group),
        ("namespace", s.namespace),
        ("replica", s.replica),
        ("role", s.role.to_string()),
        ("leader", opt(s.leader)),
        ("leader_address", opt(s.leader_address)),
        ("epoch", opt(s.epoch.map(|e| e.to_string()))),
        ("applied_index", s.applied_index.to_string()),
        ("commit_index", s.commit_index.to_string()),
        ("snapshot_index", s.snapshot_index.to_string()),
        ("hash", s.hash),
        ("module_sha256", s.module_sha256),
        ("group_module", s.group_module),
        (
            "module_state",
            match s.module_state {
                dorado::wire::ModuleState::Serving => "serving".into(),
                dorado::wire::ModuleState::Proposing => "proposing an upgrade".into(),
                dorado::wire::ModuleState::Waiting(why) => format!("waiting: {why}"),
            },
        ),
        ("ready", s.ready.to_string()),
        ("store_error", opt(s.store_error)),
    ];
    let mut out = String::new();
    for (key, text) in rows {
        out.push_str(&format!("{key:<15} {text}\n"));
    }
    print_bytes(out.as_bytes())
}

async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    dorado::cli::init_logging(LogFormat::Human);
    let host = Host::new(HostConfig::default())?;
    let modules = ModuleSet::new(host.clone());
    let mut first = None;
    for path in &args.module {
        let module = tools::load_file(&host, path)?;
        first.get_or_insert_with(|| module.clone());
        modules.insert(module);
    }
    let traced = match &args.trace {
        None => Vec::new(),
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read trace {}", path.display()))?
            .lines()
            .filter_map(dorado::trace::parse_trace_line)
            .collect(),
    };
    let store = args.group.connect().await?;
    let start = match first {
        Some(m) => m,
        None => start_module(&host, &store).await?,
    };
    let mut sm = Switching::new(modules.clone(), start.instantiate()?);
    let report = dorado::replay::replay(&store, &mut sm, &(modules.clone() as _), &traced).await?;
    print_bytes(report.to_string().as_bytes())?;
    if report.divergence.is_some() {
        anyhow::bail!("history diverges from the reference hashes");
    }
    Ok(())
}

/// The group's first module, from the store (replay switches from there).
async fn start_module(host: &Host, store: &EtcdStore) -> anyhow::Result<Module> {
    use dorado_core::Store;
    let meta = store
        .meta()
        .await?
        .context("the group has no meta record; is the group name right?")?;
    let bytes = store
        .get_module(&meta.module_sha256)
        .await?
        .with_context(|| {
            format!(
                "the group's first module {} is not in the store; pass it with --module FILE",
                meta.module_sha256
            )
        })?;
    Ok(host.load(&bytes)?)
}

async fn upgrade(args: UpgradeArgs) -> anyhow::Result<()> {
    use dorado_core::Store;
    dorado::cli::init_logging(LogFormat::Human);
    let host = Host::new(HostConfig::default())?;
    let store = args.group.connect().await?;
    let (module, bytes) = match (&args.module, &args.to) {
        (Some(path), _) => {
            let (module, bytes) = tools::read_module(&host, path)?;
            (module, Some(bytes))
        }
        (None, Some(sha)) => {
            let bytes = store
                .get_module(sha)
                .await?
                .with_context(|| format!("module {sha} is not in the store; pass --module FILE"))?;
            (host.load(&bytes)?, None)
        }
        (None, None) => anyhow::bail!("give --module FILE or --to SHA256"),
    };
    let sha = module.sha256().to_owned();
    if args.verify {
        let modules = ModuleSet::new(host.clone());
        let report = dorado::replay::verify_upgrade(&store, &modules, module.clone()).await?;
        print_bytes(format!("{report}\n").as_bytes())?;
        if !report.agrees() {
            anyhow::bail!("the new module does not behave like the running one; nothing proposed");
        }
        if args.dry_run {
            return Ok(());
        }
    }
    if let Some(bytes) = &bytes {
        store.put_module(&sha, bytes).await?;
    }
    let proposed =
        dorado::upgrade::propose(&store, &sha, Duration::from_secs(args.timeout)).await?;
    let reply = &proposed.reply;
    let mut report = format!(
        "index {}: {} (module {} -> {})\n",
        reply.index, reply.result, reply.from, reply.to
    );
    if proposed.retried {
        report.push_str(
            "an earlier attempt was cut off by a leadership change and proposed again; \
             the group runs the module either way\n",
        );
    }
    print_bytes(report.as_bytes())?;
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
