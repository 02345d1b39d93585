//! `dorado-bench demo`: the whole story on one machine in well under a minute.
//!
//! Three replicas of the embedded `kv` example share one store; the demo
//! submits commands, kills the leader with `SIGKILL`, measures how long writes
//! are blocked, recreates the killed replica with nothing but the store to
//! recover from, and checks that the group ends up whole:
//!
//! 1. every acknowledged write is readable on the recreated replica;
//! 2. every acknowledged write was applied exactly once;
//! 3. all replicas reach the same index with the same hash chain value;
//! 4. another replica took over within the bound.
//!
//! When an `etcd` binary exists the store is a throwaway etcd and the replicas
//! are child processes of this executable (`dorado run`, each in its own
//! working directory), so the crash is a real `kill -9`. Without etcd the
//! replicas run inside this process on the in-memory store (it models etcd's
//! leases and revisions, but three processes cannot share it), a crash is an
//! abort of the replica's tasks, and the demo says so.
//!
//! Whatever happens (a failed check, an error, Ctrl-C or SIGTERM), every
//! process and task the demo started is stopped before it returns: each one is
//! owned by a guard that kills it on drop.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dorado_core::StoreError;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use sha2::Digest;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use dorado::api::{self, ApiState, DEFAULT_MAX_COMMAND_BYTES};
use dorado::client::{Client, ClientError, fetch_status};
use dorado::host::{Host, HostConfig, HostError, LoadError};
use dorado::node::{self, NodeConfig};
use dorado::probe::HttpProbe;
use dorado::store::MemoryStore;
use dorado::trace::TraceWriter;
use dorado::wire::Status;
use dorado_testkit::etcd_process::{EtcdProcess, EtcdProcessError, find_etcd_binary};
use dorado_testkit::examples::Reply;
use dorado_testkit::process::ChildGuard;
use dorado_testkit::replica::ReplicaFlags;

/// Replica names, as a StatefulSet would call its pods.
const NAMES: [&str; 3] = ["kv-0", "kv-1", "kv-2"];
/// Key prefix of the demo group.
const NAMESPACE: &str = "demo";
/// Group name.
const GROUP: &str = "kv";
/// How long replicas may take to start, elect a leader or catch up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the demo waits for any write after the crash before giving up.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Poll interval for status checks.
const POLL: Duration = Duration::from_millis(25);
/// Concurrent readers in the read-back check.
const READERS: usize = 16;

/// Where the shared memory lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StoreChoice {
    /// A throwaway etcd when an `etcd` binary is found, else the in-process store.
    #[default]
    Auto,
    /// A throwaway etcd (fails if there is no `etcd` binary).
    Etcd,
    /// The in-process memory store (replicas run inside this process).
    Memory,
}

/// Options of `dorado-bench demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Commands to submit before the leader is killed (a tenth as many more
    /// are submitted while it is down).
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub commands: u64,
    /// Lease time-to-live in seconds: the longest a crashed leader blocks writes.
    #[arg(long, value_name = "SECS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub lease_ttl: u64,
    /// Every this many log entries the leader stores a snapshot and truncates
    /// the log (0 = never); the recreated replica restores the newest one.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub snapshot_every: u64,
    /// Where the shared memory lives: `auto` runs a throwaway etcd when an
    /// `etcd` binary is found ($DORADO_ETCD_BIN or PATH), else the in-process store.
    #[arg(long, value_enum, default_value_t = StoreChoice::Auto)]
    pub store: StoreChoice,
    /// The takeover check fails if the first write after the crash takes
    /// longer than this [default: lease TTL + 3000].
    #[arg(long, value_name = "MS")]
    pub max_takeover_ms: Option<u64>,
    /// Keep the working directory (replica stdout traces and stderr logs) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs {
            commands: 500,
            lease_ttl: 2,
            snapshot_every: 200,
            store: StoreChoice::Auto,
            max_takeover_ms: None,
            keep: false,
        }
    }
}

impl DemoArgs {
    fn max_takeover(&self) -> Duration {
        self.max_takeover_ms
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(self.lease_ttl) + Duration::from_secs(3))
    }
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// `--store etcd` without an etcd binary, or etcd did not start.
    #[error(transparent)]
    Etcd(#[from] EtcdProcessError),
    /// A file or process operation failed.
    #[error("cannot {what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The wasm engine could not be set up.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The embedded module was refused (a build problem).
    #[error("the embedded kv module was refused")]
    Module(#[from] LoadError),
    /// The in-process store refused the group.
    #[error("the in-process store refused the demo group")]
    Store(#[from] StoreError),
    /// A replica died or never came up.
    #[error("replica {name}: {message}")]
    Replica {
        /// The replica.
        name: String,
        /// What went wrong, with the end of its log when there is one.
        message: String,
    },
    /// Something did not happen in time.
    #[error("timed out after {after:?} waiting for {what}; {detail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
        /// The last state seen.
        detail: String,
    },
    /// A command was not acknowledged.
    #[error("command {what} was not acknowledged")]
    Submit {
        /// Which command.
        what: String,
        /// The client's error.
        #[source]
        source: ClientError,
    },
    /// The demo's output could not be written.
    #[error("cannot write output")]
    Output(#[source] io::Error),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted; every replica and etcd process the demo started has been stopped")]
    Interrupted,
    /// One or more checks failed (the report says which and why).
    #[error("{failed} of {total} checks failed: {names}")]
    ChecksFailed {
        /// Failed checks.
        failed: usize,
        /// All checks.
        total: usize,
        /// Names of the failed checks.
        names: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// Run the demo, writing the report to `out`; the progress bar goes to
/// stderr (only when it is a terminal). Returns an error if anything failed,
/// including any check; Ctrl-C and SIGTERM stop everything and return
/// [`DemoError::Interrupted`].
pub async fn run<W: Write>(args: &DemoArgs, out: &mut W) -> Result<(), DemoError> {
    dorado::ensure_crypto_provider();
    tokio::select! {
        r = demo(args, out) => r,
        () = dorado::runner::shutdown_signal() => Err(DemoError::Interrupted),
    }
}

/// The part of the report that is also the summary.
struct Outcome {
    acknowledged: usize,
    takeover: Duration,
    catch_up: Option<Duration>,
    recreated: usize,
}

async fn demo<W: Write>(args: &DemoArgs, out: &mut W) -> Result<(), DemoError> {
    let mut w = Report { out };
    let work = tempfile::Builder::new()
        .prefix("dorado-demo-")
        .tempdir()
        .map_err(io_err("create a working directory"))?;
    let work_path = work.path().to_owned();
    // Declared before the launchers so it is removed after they are stopped.
    let _work = WorkDir {
        dir: Some(work),
        keep: args.keep,
    };
    let sha = hex::encode(sha2::Sha256::digest(dorado_testkit::examples::KV));
    w.line(format_args!(
        "Dorado demo: 3 replicas of the embedded `kv` state machine (sha256 {}…)",
        &sha[..16]
    ))?;

    let etcd_bin = match args.store {
        StoreChoice::Memory => None,
        StoreChoice::Etcd => Some(find_etcd_binary()?),
        StoreChoice::Auto => find_etcd_binary().ok(),
    };
    match etcd_bin {
        Some(bin) => {
            let program = std::env::current_exe().map_err(io_err("find this executable"))?;
            let etcd = EtcdProcess::start().await?;
            w.line(format_args!(
                "  store     etcd ({}): a throwaway single member at {}",
                bin.display(),
                etcd.client_url()
            ))?;
            w.line(format_args!(
                "  replicas  3 `dorado run` processes (kill -9 is a real crash), lease TTL {} s, snapshot every {} entries",
                args.lease_ttl,
                snapshot_text(args.snapshot_every)
            ))?;
            w.work_dir(&work_path, args.keep)?;
            let module = work_path.join("kv.wasm");
            std::fs::write(&module, dorado_testkit::examples::KV)
                .map_err(io_err(format!("write {}", module.display())))?;
            let mut launcher = ProcessLauncher {
                program,
                module,
                etcd: etcd.client_urls(),
                dir: work_path.clone(),
                lease_ttl: args.lease_ttl,
                snapshot_every: args.snapshot_every,
                http: http_client(),
                replicas: NAMES.iter().map(|n| ProcessReplica::new(n)).collect(),
            };
            let result = scenario(args, &mut launcher, &mut w).await;
            launcher.stop_all();
            drop(etcd);
            result
        }
        None => {
            let why = match args.store {
                StoreChoice::Memory => "--store memory".to_string(),
                _ => match find_etcd_binary() {
                    Err(EtcdProcessError::NotFound(why)) => format!("no etcd binary: {why}"),
                    Err(e) => e.to_string(),
                    Ok(_) => "etcd appeared while starting".into(),
                },
            };
            w.line(format_args!(
                "  store     IN-PROCESS memory store, not etcd ({why})"
            ))?;
            w.line(format_args!(
                "            The replicas run as tasks inside this process and a crash is simulated by aborting one;"
            ))?;
            w.line(format_args!(
                "            install etcd (Debian/Ubuntu: apt-get install etcd-server) to run them as real processes."
            ))?;
            w.line(format_args!(
                "  replicas  3 in-process replicas, lease TTL {} s, snapshot every {} entries",
                args.lease_ttl,
                snapshot_text(args.snapshot_every)
            ))?;
            w.work_dir(&work_path, args.keep)?;
            let host = Host::new(HostConfig::default())?;
            let module = host.load(dorado_testkit::examples::KV)?;
            let mut launcher = TaskLauncher {
                module,
                store: MemoryStore::new_group(NAMESPACE, GROUP)?,
                dir: work_path.clone(),
                lease_ttl: args.lease_ttl,
                snapshot_every: args.snapshot_every,
                replicas: NAMES.iter().map(|n| TaskReplica::new(n)).collect(),
            };
            let result = scenario(args, &mut launcher, &mut w).await;
            launcher.stop_all();
            result
        }
    }
}

fn snapshot_text(every: u64) -> String {
    if every == 0 {
        "∞ (never)".into()
    } else {
        every.to_string()
    }
}

/// Removes the working directory on drop unless asked to keep it.
struct WorkDir {
    dir: Option<tempfile::TempDir>,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take()
            && self.keep
        {
            let _ = dir.keep();
        }
    }
}

/// Line-oriented output that reports write failures.
struct Report<'a, W: Write> {
    out: &'a mut W,
}

impl<W: Write> Report<'_, W> {
    fn line(&mut self, args: std::fmt::Arguments<'_>) -> Result<(), DemoError> {
        self.out.write_fmt(args).map_err(DemoError::Output)?;
        self.out.write_all(b"\n").map_err(DemoError::Output)?;
        self.out.flush().map_err(DemoError::Output)
    }

    fn work_dir(&mut self, dir: &Path, keep: bool) -> Result<(), DemoError> {
        let note = if keep {
            "kept after exit"
        } else {
            "removed at exit; --keep keeps it"
        };
        self.line(format_args!(
            "  work dir  {} (replica traces and logs; {note})",
            dir.display()
        ))
    }
}

/// One check of the final report.
struct Check {
    name: &'static str,
    passed: bool,
    detail: String,
}

/// A command the group acknowledged.
#[derive(Debug, Clone)]
struct Acked {
    client: String,
    seq: u64,
    key: String,
    value: Value,
}

/// What the demo does to replicas, for either kind of replica.
trait Launcher {
    /// What a crash is, for the report ("kill -9" or "crash").
    const CRASH: &'static str;
    /// Start replica `i` with empty local state; returns once its API listens.
    async fn start(&mut self, i: usize) -> Result<(), DemoError>;
    /// Crash replica `i`; returns how (e.g. `pid 1234`).
    async fn crash(&mut self, i: usize) -> String;
    /// Base URL of replica `i`'s API.
    fn url(&self, i: usize) -> String;
    /// The replay trace replica `i` has written so far.
    fn trace(&self, i: usize) -> String;
    /// `Some(reason)` if replica `i` died without being crashed.
    fn failure(&mut self, i: usize) -> Option<String>;
    /// Stop every replica.
    fn stop_all(&mut self);
}

async fn scenario<L: Launcher, W: Write>(
    args: &DemoArgs,
    l: &mut L,
    w: &mut Report<'_, W>,
) -> Result<(), DemoError> {
    let http = http_client();
    let started = Instant::now();

    // 1. Start the group.
    w.line(format_args!(""))?;
    for i in 0..NAMES.len() {
        l.start(i).await?;
    }
    let all: Vec<usize> = (0..NAMES.len()).collect();
    wait_ready(l, &http, &all).await?;
    let leader = wait_leader(l, &http, &all).await?;
    w.line(format_args!(
        "[1/5] started {}: all ready in {}, {} leads",
        NAMES.join(", "),
        secs(started.elapsed()),
        NAMES[leader]
    ))?;

    // 2. Load.
    let endpoints: Vec<String> = all.iter().map(|&i| l.url(i)).collect();
    let client = Client::new(&endpoints).map_err(|source| DemoError::Submit {
        what: "(client setup)".into(),
        source,
    })?;
    let jobs: Vec<Acked> = (1..=args.commands)
        .map(|i| Acked {
            client: "demo-load".into(),
            seq: i,
            key: format!("k{i:06}"),
            value: json!(i),
        })
        .collect();
    let bar = progress_bar(jobs.len() as u64, "[2/5] submitting");
    let load_started = Instant::now();
    let acked = submit_all(&client, jobs, &bar).await;
    bar.finish_and_clear();
    let mut acked = acked?;
    let load_time = load_started.elapsed();
    // Leadership may have moved during the load (it should not): crash the current leader.
    let leader = wait_leader(l, &http, &all).await?;
    let before = status(&http, &l.url(leader)).await;
    let old_epoch = before.as_ref().and_then(|s| s.epoch);
    w.line(format_args!(
        "[2/5] {} commands acknowledged in {} ({:.0}/s), each submitted with a client id and seq; log index {}",
        acked.len(),
        secs(load_time),
        acked.len() as f64 / load_time.as_secs_f64().max(1e-3),
        opt(before.map(|s| s.applied_index))
    ))?;

    // 3. Crash the leader and measure the takeover.
    let crashed_at = Instant::now();
    let how = l.crash(leader).await;
    w.line(format_args!(
        "[3/5] {} {} (the leader, {how})",
        L::CRASH,
        NAMES[leader]
    ))?;
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    let probe = Acked {
        client: "demo-probe".into(),
        seq: 1,
        key: "takeover-probe".into(),
        value: json!("written after the crash"),
    };
    let survivor_urls: Vec<String> = survivors.iter().map(|&i| l.url(i)).collect();
    let spin = spinner("      waiting for another replica to take over and accept a write");
    let takeover = probe_write(&http, &survivor_urls, &probe, crashed_at).await;
    spin.finish_and_clear();
    let takeover = takeover?;
    let (takeover_index, took) = takeover;
    let new_leader = wait_leader(l, &http, &survivors).await?;
    let new_epoch = status(&http, &l.url(new_leader))
        .await
        .and_then(|s| s.epoch);
    w.line(format_args!(
        "      {} took over: the first write after the crash was acknowledged {} later (index {takeover_index}, lease TTL {} s)",
        NAMES[new_leader],
        secs(took),
        args.lease_ttl
    ))?;
    acked.push(probe);
    let max_takeover = args.max_takeover();
    let mut checks = vec![Check {
        name: "takeover",
        passed: new_leader != leader && new_epoch > old_epoch && took <= max_takeover,
        detail: format!(
            "{} leads (epoch {} → {}) and accepted a write {} after the crash (bound {})",
            NAMES[new_leader],
            opt(old_epoch),
            opt(new_epoch),
            secs(took),
            secs(max_takeover)
        ),
    }];

    let after_count = (args.commands / 10).max(1);
    let after_jobs: Vec<Acked> = (1..=after_count)
        .map(|i| Acked {
            client: "demo-after".into(),
            seq: i,
            key: format!("after-{i:06}"),
            value: json!(format!("written while {} was down", NAMES[leader])),
        })
        .collect();
    let after_client = Client::new(&survivor_urls).map_err(|source| DemoError::Submit {
        what: "(client setup)".into(),
        source,
    })?;
    let bar = progress_bar(after_count, "      submitting");
    let more = submit_all(&after_client, after_jobs, &bar).await;
    bar.finish_and_clear();
    let more = more?;
    w.line(format_args!(
        "      {} more commands acknowledged while {} is down",
        more.len(),
        NAMES[leader]
    ))?;
    acked.extend(more);

    // 4. Recreate the crashed replica from nothing but the store.
    let (target_index, target_hash) = wait_converged(l, &http, &survivors, START_TIMEOUT).await?;
    let spin = spinner(&format!(
        "[4/5] recreating {} with an empty working directory; waiting for it to catch up",
        NAMES[leader]
    ));
    let recreate_at = Instant::now();
    if let Err(e) = l.start(leader).await {
        spin.finish_and_clear();
        return Err(e);
    }
    let caught_up = wait_caught_up(l, &http, leader, target_index, &target_hash).await;
    spin.finish_and_clear();
    let catch_up = caught_up.as_ref().ok().map(|_| recreate_at.elapsed());
    // Give the trace writer a moment to flush its last lines.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let trace = l.trace(leader);
    let excerpt = TraceExcerpt::parse(&trace);
    match &caught_up {
        Ok(()) => w.line(format_args!(
            "[4/5] recreated {} with an empty working directory: caught up in {}: {}",
            NAMES[leader],
            secs(catch_up.unwrap_or_default()),
            excerpt.summary()
        ))?,
        Err(e) => w.line(format_args!(
            "[4/5] recreated {} with an empty working directory: did NOT catch up: {e}",
            NAMES[leader]
        ))?,
    }
    w.line(format_args!(
        "      its replay trace (stdout, what `kubectl logs` shows):"
    ))?;
    for line in excerpt.lines() {
        w.line(format_args!("        {line}"))?;
    }
    checks.push(Check {
        name: "recovery",
        passed: caught_up.is_ok(),
        detail: match &caught_up {
            Ok(()) => format!(
                "{} rebuilt its state from the store: {}",
                NAMES[leader],
                excerpt.summary()
            ),
            Err(e) => e.to_string(),
        },
    });

    // 5. Checks.
    checks.push(read_back(&http, &l.url(leader), NAMES[leader], &acked).await);
    checks.push(exactly_once(
        &l.trace(survivors[0]),
        NAMES[survivors[0]],
        &acked,
    ));
    let final_state = wait_converged(l, &http, &all, Duration::from_secs(10)).await;
    checks.push(Check {
        name: "same state",
        passed: final_state.is_ok(),
        detail: match &final_state {
            Ok((index, hash)) => format!(
                "all {} replicas applied index {index} with hash {}",
                NAMES.len(),
                short(hash)
            ),
            Err(e) => e.to_string(),
        },
    });
    w.line(format_args!("[5/5] checks"))?;
    for c in &checks {
        let mark = if c.passed { "✓" } else { "✗ FAILED" };
        w.line(format_args!("      {mark} {}: {}", c.name, c.detail))?;
    }

    // Summary.
    let outcome = Outcome {
        acknowledged: acked.len(),
        takeover: took,
        catch_up,
        recreated: leader,
    };
    summary(l, &http, w, &outcome, &checks, started.elapsed()).await?;
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(DemoError::ChecksFailed {
            failed: failed.len(),
            total: checks.len(),
            names: failed.join(", "),
        })
    }
}

async fn summary<L: Launcher, W: Write>(
    l: &mut L,
    http: &reqwest::Client,
    w: &mut Report<'_, W>,
    o: &Outcome,
    checks: &[Check],
    elapsed: Duration,
) -> Result<(), DemoError> {
    w.line(format_args!(""))?;
    w.line(format_args!("Summary"))?;
    w.line(format_args!(
        "  {:<8} {:<9} {:>8}  {:<12}  note",
        "replica", "role", "applied", "hash"
    ))?;
    for (i, name) in NAMES.iter().enumerate() {
        let s = status(http, &l.url(i)).await;
        let note = if i == o.recreated {
            "crashed, recreated empty, recovered from the store"
        } else {
            ""
        };
        w.line(format_args!(
            "  {:<8} {:<9} {:>8}  {:<12}  {note}",
            name,
            s.as_ref().map_or("?", |s| s.role.as_str()),
            s.as_ref()
                .map_or("?".into(), |s| s.applied_index.to_string()),
            short(s.as_ref().map_or("?", |s| s.hash.as_str())),
        ))?;
    }
    let passed = checks.iter().filter(|c| c.passed).count();
    w.line(format_args!("  commands acknowledged  {}", o.acknowledged))?;
    w.line(format_args!(
        "  takeover time          {}",
        secs(o.takeover)
    ))?;
    w.line(format_args!(
        "  catch-up time          {}",
        o.catch_up.map_or("did not catch up".into(), secs)
    ))?;
    w.line(format_args!(
        "  checks passed          {passed}/{}",
        checks.len()
    ))?;
    w.line(format_args!("  total time             {}", secs(elapsed)))
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn http_client() -> reqwest::Client {
    dorado::ensure_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .connect_timeout(Duration::from_secs(1))
        .build()
        .unwrap_or_default()
}

fn progress_bar(len: u64, prefix: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_prefix(prefix);
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix} [{bar:30.cyan/blue}] {pos}/{len} commands, {elapsed}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A spinner on stderr (drawn only when it is a terminal) for silent waits.
fn spinner(message: &str) -> ProgressBar {
    let spin = ProgressBar::new_spinner().with_message(message.to_string());
    if let Ok(style) = ProgressStyle::with_template("{msg} {spinner} {elapsed}") {
        spin.set_style(style);
    }
    spin.enable_steady_tick(Duration::from_millis(100));
    spin
}

async fn status(http: &reqwest::Client, url: &str) -> Option<Status> {
    fetch_status(http, url, Duration::from_secs(3)).await.ok()
}

async fn ready(http: &reqwest::Client, url: &str) -> bool {
    http.get(format!("{url}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Fail fast if a replica died by itself.
fn check_alive<L: Launcher>(l: &mut L, which: &[usize]) -> Result<(), DemoError> {
    for &i in which {
        if let Some(message) = l.failure(i) {
            return Err(DemoError::Replica {
                name: NAMES[i].into(),
                message,
            });
        }
    }
    Ok(())
}

async fn wait_ready<L: Launcher>(
    l: &mut L,
    http: &reqwest::Client,
    which: &[usize],
) -> Result<(), DemoError> {
    let start = Instant::now();
    loop {
        check_alive(l, which)?;
        let mut pending = Vec::new();
        for &i in which {
            if !ready(http, &l.url(i)).await {
                pending.push(NAMES[i]);
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if start.elapsed() > START_TIMEOUT {
            return Err(DemoError::Timeout {
                what: "replicas to be ready".into(),
                after: START_TIMEOUT,
                detail: format!("not ready: {}", pending.join(", ")),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_leader<L: Launcher>(
    l: &mut L,
    http: &reqwest::Client,
    which: &[usize],
) -> Result<usize, DemoError> {
    let start = Instant::now();
    loop {
        check_alive(l, which)?;
        for &i in which {
            if let Some(s) = status(http, &l.url(i)).await
                && s.is_leader()
            {
                return Ok(i);
            }
        }
        if start.elapsed() > START_TIMEOUT {
            return Err(DemoError::Timeout {
                what: "a leader".into(),
                after: START_TIMEOUT,
                detail: "no replica reports role=leader".into(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Wait until `which` all applied the same index with the same hash and
/// nothing committed is left to apply; returns that index and hash.
async fn wait_converged<L: Launcher>(
    l: &mut L,
    http: &reqwest::Client,
    which: &[usize],
    timeout: Duration,
) -> Result<(u64, String), DemoError> {
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        check_alive(l, which)?;
        seen.clear();
        for &i in which {
            let s = status(http, &l.url(i)).await;
            seen.push((
                NAMES[i],
                s.as_ref().map(|s| s.applied_index),
                s.as_ref().map(|s| s.commit_index),
                s.map(|s| s.hash).unwrap_or_default(),
            ));
        }
        let (_, first_applied, _, first_hash) = &seen[0];
        let max_commit = seen.iter().filter_map(|s| s.2).max();
        if let (Some(applied), Some(commit)) = (*first_applied, max_commit)
            && applied >= commit
            && seen
                .iter()
                .all(|s| s.1 == Some(applied) && &s.3 == first_hash)
        {
            return Ok((applied, first_hash.clone()));
        }
        if start.elapsed() > timeout {
            let detail = seen
                .iter()
                .map(|(n, a, c, h)| {
                    format!("{n}: applied {} of {}, hash {}", opt(*a), opt(*c), short(h))
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(DemoError::Timeout {
                what: "the replicas to agree".into(),
                after: timeout,
                detail,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_caught_up<L: Launcher>(
    l: &mut L,
    http: &reqwest::Client,
    i: usize,
    index: u64,
    hash: &str,
) -> Result<(), DemoError> {
    let start = Instant::now();
    let mut last: Option<Status> = None;
    loop {
        check_alive(l, &[i])?;
        if let Some(s) = status(http, &l.url(i)).await {
            if s.applied_index >= index && ready(http, &l.url(i)).await {
                return if s.applied_index == index && s.hash == hash {
                    Ok(())
                } else {
                    Err(DemoError::Replica {
                        name: NAMES[i].into(),
                        message: format!(
                            "caught up to index {} with hash {}, but the others are at index {index} with hash {}",
                            s.applied_index,
                            short(&s.hash),
                            short(hash)
                        ),
                    })
                };
            }
            last = Some(s);
        }
        if start.elapsed() > START_TIMEOUT {
            return Err(DemoError::Timeout {
                what: format!("{} to catch up to index {index}", NAMES[i]),
                after: START_TIMEOUT,
                detail: format!(
                    "it applied {} (ready: {})",
                    opt(last.as_ref().map(|s| s.applied_index)),
                    opt(last.as_ref().map(|s| s.ready))
                ),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `{"op":"put","key":...,"value":...}`, fields in the order people write them.
fn put_command(job: &Acked) -> String {
    format!(
        r#"{{"op":"put","key":{},"value":{}}}"#,
        Value::from(job.key.as_str()),
        job.value
    )
}

/// Submit `jobs` in order (one client id, increasing seqs: a retry after a
/// lost answer is answered from the session table, never applied twice).
async fn submit_all(
    client: &Client,
    jobs: Vec<Acked>,
    bar: &ProgressBar,
) -> Result<Vec<Acked>, DemoError> {
    let mut acked = Vec::with_capacity(jobs.len());
    for job in jobs {
        let command = put_command(&job);
        let what = format!("{}#{}", job.client, job.seq);
        let reply = client
            .submit(command.as_bytes(), Some((&job.client, job.seq)))
            .await
            .map_err(|source| DemoError::Submit {
                what: what.clone(),
                source,
            })?;
        if reply.body != br#"{"ok":true}"# {
            return Err(DemoError::Submit {
                what,
                source: ClientError::Rejected {
                    index: reply.index,
                    message: format!("unexpected reply {}", String::from_utf8_lossy(&reply.body)),
                },
            });
        }
        acked.push(job);
        bar.inc(1);
    }
    Ok(acked)
}

/// Send one tagged write to the survivors until it is acknowledged; returns
/// its log index and how long after `start` (the crash) that was. The same client id and seq on every
/// attempt keep it exactly-once however many attempts reach the log.
async fn probe_write(
    http: &reqwest::Client,
    urls: &[String],
    probe: &Acked,
    start: Instant,
) -> Result<(u64, Duration), DemoError> {
    let body = put_command(probe);
    let mut last = String::from("no attempt yet");
    let mut n = 0usize;
    while start.elapsed() < TAKEOVER_TIMEOUT {
        let url = &urls[n % urls.len()];
        n += 1;
        let sent = http
            .post(format!("{url}/v1/commands"))
            .header(api::CLIENT_ID, &probe.client)
            .header(api::SEQ, probe.seq.to_string())
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                let took = start.elapsed();
                let index = r
                    .headers()
                    .get(api::INDEX)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                return Ok((index, took));
            }
            Ok(r) => {
                let code = r.status();
                last = format!("{url}: {code} {}", r.text().await.unwrap_or_default());
            }
            Err(e) => last = format!("{url}: {e}"),
        }
        tokio::time::sleep(POLL).await;
    }
    Err(DemoError::Timeout {
        what: "a write to succeed after the leader crashed (no takeover)".into(),
        after: TAKEOVER_TIMEOUT,
        detail: format!("last answer: {last}"),
    })
}

/// Every acknowledged write reads back with its value from `url` (local
/// state of that replica).
async fn read_back(http: &reqwest::Client, url: &str, name: &str, acked: &[Acked]) -> Check {
    let results: Vec<Result<(), String>> = futures::stream::iter(acked)
        .map(|a| async move {
            let q = json!({"op": "get", "key": a.key}).to_string();
            let r = http
                .post(format!("{url}/v1/query?consistency=stale"))
                .body(q)
                .send()
                .await
                .map_err(|e| format!("{}: {e}", a.key))?;
            let body = r.bytes().await.map_err(|e| format!("{}: {e}", a.key))?;
            let reply = Reply::parse(&body).map_err(|e| format!("{}: {e}", a.key))?;
            if reply.value.as_ref() == Some(&a.value) {
                Ok(())
            } else {
                Err(format!(
                    "{}: expected {}, read {}",
                    a.key,
                    a.value,
                    String::from_utf8_lossy(&body)
                ))
            }
        })
        .buffer_unordered(READERS)
        .collect()
        .await;
    let bad: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    Check {
        name: "no acknowledged write lost",
        passed: bad.is_empty(),
        detail: if bad.is_empty() {
            format!(
                "all {} acknowledged writes read back with their values from the recreated {name}",
                acked.len()
            )
        } else {
            format!(
                "{} of {} acknowledged writes missing or wrong on {name}, e.g. {}",
                bad.len(),
                acked.len(),
                bad.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
            )
        },
    }
}

/// Every acknowledged command appears exactly once (not counting answers
/// from the session table) in the full trace of a replica that never crashed.
fn exactly_once(trace: &str, name: &str, acked: &[Acked]) -> Check {
    let mut applied: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for line in trace.lines() {
        if !line.starts_with("idx=") || line.contains("(duplicate") {
            continue;
        }
        let Some(tag) = line
            .split(" client=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
        else {
            continue;
        };
        if let Some((id, seq)) = tag.split_once('#')
            && let Ok(seq) = seq.parse()
        {
            *applied.entry((id.to_string(), seq)).or_default() += 1;
        }
    }
    let twice: Vec<String> = applied
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|((id, seq), n)| format!("{id}#{seq} ×{n}"))
        .collect();
    let missing: Vec<String> = acked
        .iter()
        .filter(|a| !applied.contains_key(&(a.client.clone(), a.seq)))
        .map(|a| format!("{}#{}", a.client, a.seq))
        .collect();
    Check {
        name: "exactly once",
        passed: twice.is_empty() && missing.is_empty(),
        detail: if twice.is_empty() && missing.is_empty() {
            format!(
                "each of the {} acknowledged commands appears once in {name}'s trace",
                acked.len()
            )
        } else {
            format!(
                "in {name}'s trace: applied more than once: [{}]; missing: [{}]",
                twice.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                missing
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
    }
}

/// The interesting part of a recreated replica's trace.
#[derive(Debug, Default)]
struct TraceExcerpt {
    restored: Option<(u64, String)>,
    first: Option<String>,
    last: Option<String>,
    lines: usize,
    entries: usize,
}

impl TraceExcerpt {
    fn parse(trace: &str) -> Self {
        let mut e = TraceExcerpt::default();
        let mut last_index = None;
        for line in trace.lines() {
            if let Some(rest) = line.strip_prefix("restored snapshot idx=") {
                let index = rest
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                e.restored = Some((index, line.to_string()));
            } else if let Some(rest) = line.strip_prefix("idx=") {
                let index: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if last_index.as_ref() != Some(&index) {
                    e.entries += 1;
                    last_index = Some(index);
                }
                e.lines += 1;
                if e.first.is_none() {
                    e.first = Some(line.to_string());
                }
                e.last = Some(line.to_string());
            }
        }
        e
    }

    fn summary(&self) -> String {
        match &self.restored {
            Some((index, _)) => format!(
                "restored the snapshot at index {index}, then replayed {} log entries",
                self.entries
            ),
            None => format!(
                "no snapshot in the store, replayed all {} log entries",
                self.entries
            ),
        }
    }

    fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some((_, line)) = &self.restored {
            out.push(line.clone());
        }
        if let Some(first) = &self.first {
            out.push(first.clone());
        }
        if self.lines > 2 {
            out.push(format!("… {} more lines …", self.lines - 2));
        }
        if self.lines > 1
            && let Some(last) = &self.last
        {
            out.push(last.clone());
        }
        if out.is_empty() {
            out.push("(empty)".into());
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Replicas as child processes (`dorado run`), used with etcd.

struct ProcessLauncher {
    program: PathBuf,
    module: PathBuf,
    etcd: Vec<String>,
    dir: PathBuf,
    lease_ttl: u64,
    snapshot_every: u64,
    http: reqwest::Client,
    replicas: Vec<ProcessReplica>,
}

/// A `dorado run` child process; killed (and reaped) on drop.
struct ProcessReplica {
    name: String,
    port: u16,
    dir: PathBuf,
    child: ChildGuard,
    incarnation: u32,
}

impl ProcessReplica {
    fn new(name: &str) -> Self {
        ProcessReplica {
            name: name.into(),
            port: 0,
            dir: PathBuf::new(),
            child: ChildGuard::default(),
            incarnation: 0,
        }
    }

    fn kill(&mut self) -> Option<u32> {
        let pid = self.child.pid()?;
        self.child.kill();
        Some(pid)
    }

    fn stderr_tail(&self) -> String {
        let tail = dorado_testkit::process::tail_file(&self.dir.join("stderr"), 10);
        if tail.is_empty() {
            "(stderr is empty)".into()
        } else {
            format!("end of {}:\n{tail}", self.dir.join("stderr").display())
        }
    }
}

fn free_port() -> Result<u16, DemoError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io_err("find a free port on 127.0.0.1"))
}

impl ProcessLauncher {
    fn spawn(&mut self, i: usize) -> Result<(), DemoError> {
        let port = free_port()?;
        let r = &mut self.replicas[i];
        r.incarnation += 1;
        r.port = port;
        // A recreated pod gets a fresh, empty file system; the old one's
        // files are kept aside for --keep.
        if r.dir.exists() {
            let old = self
                .dir
                .join(format!("{}.crashed-{}", r.name, r.incarnation - 1));
            std::fs::rename(&r.dir, &old).map_err(io_err(format!("move {}", r.dir.display())))?;
        }
        r.dir = self.dir.join(&r.name);
        std::fs::create_dir_all(&r.dir).map_err(io_err(format!("create {}", r.dir.display())))?;
        let stdout = File::create(r.dir.join("stdout"))
            .map_err(io_err(format!("create {}/stdout", r.dir.display())))?;
        let stderr = File::create(r.dir.join("stderr"))
            .map_err(io_err(format!("create {}/stderr", r.dir.display())))?;
        let flags = ReplicaFlags {
            group: GROUP.into(),
            namespace: NAMESPACE.into(),
            replica: r.name.clone(),
            module: self.module.clone(),
            etcd: self.etcd.clone(),
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            lease_ttl: self.lease_ttl,
            snapshot_every: self.snapshot_every,
            extra: Vec::new(),
        };
        // These flags are the whole configuration: the builder clears
        // inherited DORADO_* variables; the log filter is passed on.
        let log = std::env::var("DORADO_LOG").unwrap_or_else(|_| "info".into());
        let mut cmd = flags.command(&self.program, &[], "run", &r.dir, &log);
        cmd.stdout(stdout).stderr(stderr);
        r.child = ChildGuard::spawn(&mut cmd)
            .map_err(io_err(format!("start {} run", self.program.display())))?;
        Ok(())
    }

    /// `Some(status)` if replica `i` has exited (reaping it).
    fn exited(&mut self, i: usize) -> Option<String> {
        self.replicas[i]
            .child
            .try_exit()
            .map(|status| status.to_string())
    }
}

impl Launcher for ProcessLauncher {
    const CRASH: &'static str = "kill -9";

    async fn start(&mut self, i: usize) -> Result<(), DemoError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            self.spawn(i)?;
            let start = Instant::now();
            loop {
                if let Some(status) = self.exited(i) {
                    let r = &self.replicas[i];
                    let tail = r.stderr_tail();
                    // Someone took the port between picking and binding it.
                    if tail.contains("cannot listen") && attempts < 3 {
                        break;
                    }
                    return Err(DemoError::Replica {
                        name: r.name.clone(),
                        message: format!("exited while starting ({status}); {tail}"),
                    });
                }
                let healthy = self
                    .http
                    .get(format!("{}/healthz", self.url(i)))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if healthy {
                    return Ok(());
                }
                if start.elapsed() > START_TIMEOUT {
                    let r = &self.replicas[i];
                    return Err(DemoError::Timeout {
                        what: format!("{}'s API to listen", r.name),
                        after: START_TIMEOUT,
                        detail: r.stderr_tail(),
                    });
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }

    async fn crash(&mut self, i: usize) -> String {
        match self.replicas[i].kill() {
            Some(pid) => format!("pid {pid}"),
            None => "already exited".into(),
        }
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.replicas[i].port)
    }

    fn trace(&self, i: usize) -> String {
        std::fs::read_to_string(self.replicas[i].dir.join("stdout")).unwrap_or_default()
    }

    fn failure(&mut self, i: usize) -> Option<String> {
        let status = self.exited(i)?;
        Some(format!(
            "exited unexpectedly ({status}); {}",
            self.replicas[i].stderr_tail()
        ))
    }

    fn stop_all(&mut self) {
        for r in &mut self.replicas {
            r.kill();
        }
    }
}

// ---------------------------------------------------------------------------
// Replicas as tasks of this process, used with the in-memory store.

struct TaskLauncher {
    module: dorado::host::Module,
    store: MemoryStore,
    dir: PathBuf,
    lease_ttl: u64,
    snapshot_every: u64,
    replicas: Vec<TaskReplica>,
}

/// An in-process replica: its API server and node run in one task that
/// aborts the node (a crash: the lease is left to expire) when `crash` fires.
struct TaskReplica {
    name: String,
    port: u16,
    trace_path: PathBuf,
    crash: CancellationToken,
    failed: Arc<Mutex<Option<String>>>,
    task: Option<JoinHandle<()>>,
    incarnation: u32,
}

impl TaskReplica {
    fn new(name: &str) -> Self {
        TaskReplica {
            name: name.into(),
            port: 0,
            trace_path: PathBuf::new(),
            crash: CancellationToken::new(),
            failed: Arc::default(),
            task: None,
            incarnation: 0,
        }
    }

    fn kill(&mut self) {
        self.crash.cancel();
        self.task = None;
    }
}

impl Drop for TaskReplica {
    fn drop(&mut self) {
        // The task aborts the node and closes the API as soon as it runs
        // again; if the runtime is going away, the tasks go with it.
        self.crash.cancel();
    }
}

impl Launcher for TaskLauncher {
    const CRASH: &'static str = "crash";

    async fn start(&mut self, i: usize) -> Result<(), DemoError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io_err("listen on 127.0.0.1"))?;
        let port = listener
            .local_addr()
            .map_err(io_err("read the listen address"))?
            .port();
        let r = &mut self.replicas[i];
        r.kill();
        r.port = port;
        r.crash = CancellationToken::new();
        r.failed = Arc::default();
        r.incarnation += 1;
        r.trace_path = self.dir.join(format!("{}.{}.trace", r.name, r.incarnation));
        let trace_file = File::create(&r.trace_path)
            .map_err(io_err(format!("create {}", r.trace_path.display())))?;
        let addr = format!("127.0.0.1:{port}");
        let mut config = NodeConfig::new(NAMESPACE, GROUP, &r.name, &addr);
        config.lease_ttl = Duration::from_secs(self.lease_ttl);
        config.snapshot_every = self.snapshot_every;
        config.module_sha256 = self.module.sha256().to_string();
        config.abi_version = self.module.abi_version();
        // As `dorado run` does: followers depose a crashed leader at once.
        let probe = HttpProbe::new(Duration::from_millis(100)).map_err(|e| DemoError::Replica {
            name: r.name.clone(),
            message: format!("leader probe http client: {e}"),
        })?;
        config.leader_probe = Some(Arc::new(probe));
        let instance = self.module.instantiate()?;
        let store = self.store.clone();
        let state = ApiState::new(DEFAULT_MAX_COMMAND_BYTES).map_err(|e| DemoError::Replica {
            name: r.name.clone(),
            message: format!("forwarding http client: {e}"),
        })?;
        let state = Arc::new(state);
        let http_stop = CancellationToken::new();
        let stop = http_stop.clone();
        tokio::spawn(api::serve(
            listener,
            api::router(state.clone()),
            async move { stop.cancelled().await },
        ));
        let crash = r.crash.clone();
        let failed = r.failed.clone();
        r.task = Some(tokio::spawn(async move {
            let trace = TraceWriter::new(trace_file);
            let started = tokio::select! {
                () = crash.cancelled() => None,
                s = node::start(store, instance, config, trace, crash.child_token()) => Some(s),
            };
            match started {
                None => {}
                Some(Err(e)) => {
                    if let Ok(mut f) = failed.lock() {
                        *f = Some(e.to_string());
                    }
                }
                Some(Ok(running)) => {
                    state.attach(running.node.clone());
                    crash.cancelled().await;
                    running.abort().await;
                }
            }
            http_stop.cancel();
        }));
        Ok(())
    }

    async fn crash(&mut self, i: usize) -> String {
        self.replicas[i].kill();
        // Let the task run its abort before anyone looks at the group.
        tokio::task::yield_now().await;
        "in-process: its tasks aborted, its lease left to expire".into()
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.replicas[i].port)
    }

    fn trace(&self, i: usize) -> String {
        std::fs::read_to_string(&self.replicas[i].trace_path).unwrap_or_default()
    }

    fn failure(&mut self, i: usize) -> Option<String> {
        let r = &self.replicas[i];
        if let Some(e) = r.failed.lock().ok().and_then(|f| f.clone()) {
            return Some(format!("failed: {e}"));
        }
        match &r.task {
            Some(t) if t.is_finished() => Some("stopped unexpectedly".into()),
            _ => None,
        }
    }

    fn stop_all(&mut self) {
        for r in &mut self.replicas {
            r.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(client: &str, seq: u64) -> Acked {
        Acked {
            client: client.into(),
            seq,
            key: format!("k{seq}"),
            value: json!(seq),
        }
    }

    #[test]
    fn the_excerpt_shows_the_restore_and_both_ends_of_the_replay() {
        let trace = "restored snapshot idx=400 hash=aaaa\n\
                     idx=401.0 client=a#401 cmd=x ok reply=y hash=b\n\
                     idx=401.1 client=a#402 cmd=x ok reply=y hash=c\n\
                     idx=402 noop hash=d\n\
                     idx=403.0 client=a#403 cmd=x ok reply=y hash=e\n";
        let e = TraceExcerpt::parse(trace);
        assert_eq!(e.restored.as_ref().map(|r| r.0), Some(400));
        assert_eq!((e.entries, e.lines), (3, 4));
        let lines = e.lines();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("restored snapshot idx=400"));
        assert!(lines[1].starts_with("idx=401.0"));
        assert_eq!(lines[2], "… 2 more lines …");
        assert!(lines[3].starts_with("idx=403.0"));
        assert!(
            e.summary()
                .contains("index 400, then replayed 3 log entries")
        );
        assert!(TraceExcerpt::parse("").summary().contains("no snapshot"));
    }

    #[test]
    fn exactly_once_counts_applications_and_ignores_session_answers() {
        let trace = "idx=1.0 client=a#1 cmd=x ok reply=y hash=b\n\
                     idx=2.0 client=a#1 cmd=x ok reply=y (duplicate, not re-applied) hash=b\n\
                     idx=3.0 client=a#2 cmd=x ok reply=y hash=b\n";
        assert!(exactly_once(trace, "r", &[acked("a", 1), acked("a", 2)]).passed);
        let missing = exactly_once(trace, "r", &[acked("a", 3)]);
        assert!(!missing.passed && missing.detail.contains("a#3"));
        let twice = format!("{trace}idx=4.0 client=a#2 cmd=x ok reply=y hash=b\n");
        let c = exactly_once(&twice, "r", &[acked("a", 2)]);
        assert!(!c.passed && c.detail.contains("a#2 ×2"), "{}", c.detail);
    }
}
