//! One simulated run: a group of 3–5 real replica drivers (`dorado::node`)
//! over one in-memory store, clients, a nemesis, then the checks.
//!
//! Everything runs on one current-thread tokio runtime with a paused clock:
//! time advances only when every task waits, so a run of tens of virtual
//! seconds takes milliseconds, and leases, timeouts and backoffs behave as
//! they would in real time. All randomness of the run (group size, tuning,
//! workload, fault schedule, the fault layer's dice) comes from one ChaCha8
//! generator seeded with the run's seed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dorado::node::{self, Consistency, Node, NodeConfig, RunningNode, SubmitError};
use dorado::probe::LeaderProbe;
use dorado::store::MemoryStore;
use dorado::trace::TraceWriter;
use dorado_core::decide::ProbeOutcome;
use dorado_core::{ClientTag, Command, LeaderRecord, Store, UpgradeMode};
use dorado_faults::checker::{self, Budget, Completion, KvOp, KvResult, Operation};
use futures::future::BoxFuture;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

use crate::kv::{self, Kv};
use crate::log::Log;
use crate::store::{Dice, FaultStore, Link, OnDepose, Violations, Weather, chance, draw};

/// What one run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Replicas in the group.
    pub replicas: usize,
    /// Client operations in the history.
    pub operations: usize,
    /// Faults the nemesis injected.
    pub faults: usize,
    /// Leaders deposed by a follower's suspicion.
    pub depositions: usize,
    /// Virtual seconds simulated.
    pub virtual_secs: u64,
    /// A digest of the full event log: two runs of one seed took the same
    /// path exactly when their digests match (`tests/reproducible.rs`).
    pub log_digest: u64,
}

/// A failed check, with everything needed to look into it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("seed {seed}: {message} (re-run: cargo run -p dorado-sim -- --seed {seed})")]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// Which check failed and how.
    pub message: String,
    /// The run's full event log.
    pub log: Vec<String>,
}

/// Lease TTL of every simulated replica.
const TTL: Duration = Duration::from_secs(1);
/// How long a simulated probe of an unreachable peer takes to fail.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// Longer than the largest suspicion window (the lease TTL) plus a probe in
/// flight: a leader steady for this long must not be deposed.
const STEADY: Duration = Duration::from_millis(1500);
/// Keys of the workload (few, so operations conflict).
const KEYS: [&str; 3] = ["a", "b", "c"];
/// Bounds one client's history (and so the linearizability search).
const MAX_OPS_PER_CLIENT: usize = 400;

#[derive(Debug, Clone, Copy)]
struct Params {
    replicas: usize,
    max_inflight: usize,
    /// The leader's batch linger. Chosen from the seed outside the dice, so
    /// that adding it left every other draw of a seed as it was.
    linger: Duration,
    snapshot_every: u64,
    clients: u64,
    ops_per_client: usize,
    fault_ms: u64,
}

struct Slot {
    name: String,
    link: Arc<Link>,
    running: Mutex<Option<RunningNode<FaultStore>>>,
    node: Mutex<Option<Node>>,
    /// Bumped by every start and crash: a start still in progress for an
    /// older incarnation gives up instead of installing itself.
    incarnation: Mutex<u64>,
}

struct World {
    params: Params,
    mem: MemoryStore,
    weather: Arc<Weather>,
    dice: Dice,
    log: Log,
    slots: Vec<Slot>,
    /// Set when the nemesis is done: clients then finish their quota.
    calm: AtomicBool,
    /// Leaders deposed so far.
    depositions: AtomicUsize,
    /// Store-contract violations the fault layer saw.
    violations: Violations,
}

/// The simulated network between replicas, for the drivers' leader probes:
/// a crashed replica refuses at once; a paused one (a slow leader) or an
/// isolated one (a network blip), or any probe from an isolated replica,
/// times out.
struct SimProbe {
    world: std::sync::Weak<World>,
    from: usize,
}

impl std::fmt::Debug for SimProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimProbe")
            .field("from", &self.from)
            .finish()
    }
}

impl LeaderProbe for SimProbe {
    fn probe(&self, leader: &LeaderRecord) -> BoxFuture<'static, ProbeOutcome> {
        let world = self.world.clone();
        let from = self.from;
        let target = leader.address.clone();
        Box::pin(async move {
            let Some(world) = world.upgrade() else {
                return ProbeOutcome::Down;
            };
            let Some(t) = world.by_address(&target) else {
                return ProbeOutcome::Down;
            };
            let rtt = Duration::from_micros(draw(&world.dice, 1..=6) * 250);
            tokio::time::sleep(rtt).await;
            if lock(&world.slots[t].running).is_none() {
                return ProbeOutcome::Down; // refused
            }
            if world.slots[from].link.is_isolated() || !world.alive(t) {
                tokio::time::sleep(PROBE_TIMEOUT).await;
                return ProbeOutcome::Silent;
            }
            ProbeOutcome::Alive
        })
    }
}

/// Run one seed to completion and check it.
pub fn run(seed: u64, echo: bool) -> Result<Report, Failure> {
    run_logged(seed, echo).0
}

/// [`run`], also returning the full event log of a run that passed (a
/// failure carries its own).
pub fn run_logged(seed: u64, echo: bool) -> (Result<Report, Failure>, Vec<String>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let failure = Failure {
                seed,
                message: format!("cannot build the runtime: {e}"),
                log: Vec::new(),
            };
            return (Err(failure), Vec::new());
        }
    };
    rt.block_on(async {
        // The log's clock is the runtime's paused one: start it inside.
        let log = Log::new(echo);
        let result = run_world(seed, log.clone()).await;
        (result, log.lines())
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run_world(seed: u64, log: Log) -> Result<Report, Failure> {
    let dice: Dice = Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed)));
    let params = Params {
        replicas: draw(&dice, 3..=5) as usize,
        max_inflight: draw(&dice, 1..=4) as usize,
        linger: [0, 2, 20].map(Duration::from_millis)[(seed % 3) as usize],
        snapshot_every: [0, 8, 32][draw(&dice, 0..=2) as usize],
        clients: draw(&dice, 2..=4),
        ops_per_client: draw(&dice, 10..=30) as usize,
        fault_ms: draw(&dice, 2000..=8000),
    };
    log.ev(format!("seed {seed}: {params:?}"));
    let fail = |message: String, log: &Log| Failure {
        seed,
        message,
        log: log.lines(),
    };
    let mem = MemoryStore::new_group("sim", "g").map_err(|e| fail(e.to_string(), &log))?;
    let world = Arc::new(World {
        params,
        mem,
        weather: Arc::new(Weather::default()),
        dice,
        log: log.clone(),
        slots: (0..params.replicas)
            .map(|i| Slot {
                name: format!("r{i}"),
                link: Arc::new(Link::default()),
                running: Mutex::new(None),
                node: Mutex::new(None),
                incarnation: Mutex::new(0),
            })
            .collect(),
        calm: AtomicBool::new(false),
        depositions: AtomicUsize::new(0),
        violations: Violations::default(),
    });
    for i in 0..params.replicas {
        world.start(i).await;
    }

    world.weather.stormy.store(true, Ordering::Release);
    let clients: Vec<_> = (0..params.clients)
        .map(|c| tokio::spawn(client(world.clone(), c, params.ops_per_client)))
        .collect();
    let upgrader = tokio::spawn(upgrader(world.clone()));
    let faults = nemesis(world.clone()).await;
    world.heal_all().await;
    world.calm.store(true, Ordering::Release);
    log.ev("faults stop; everything healed");
    let mut history = Vec::new();
    for c in clients {
        history.extend(
            c.await
                .map_err(|e| fail(format!("client panicked: {e}"), &log))?,
        );
    }
    let upgrades = upgrader
        .await
        .map_err(|e| fail(format!("upgrader panicked: {e}"), &log))?;
    log.ev(format!("{upgrades} upgrade proposals answered"));
    let result = world.check(&history).await;
    let virtual_secs = log.now_ns() / 1_000_000_000;
    world.stop_all().await;
    result.map_err(|m| fail(m, &log))?;
    Ok(Report {
        seed,
        replicas: params.replicas,
        operations: history.len(),
        faults,
        depositions: world.depositions.load(Ordering::Acquire),
        virtual_secs,
        log_digest: log.digest(),
    })
}

impl World {
    fn node(&self, i: usize) -> Option<Node> {
        lock(&self.slots[i].node).clone()
    }

    fn up(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.node(i).is_some())
            .collect()
    }

    fn leader(&self) -> Option<usize> {
        self.up()
            .into_iter()
            .find(|&i| self.node(i).is_some_and(|n| n.is_leader()))
    }

    /// One line per replica: role, leader view, indexes, errors.
    fn describe(&self) -> String {
        (0..self.slots.len())
            .map(|i| match self.node(i) {
                None => format!("{} down", self.slots[i].name),
                Some(n) => {
                    let s = n.status();
                    format!(
                        "{} {} leader={:?} epoch={:?} applied={} commit={} ready={} error={:?}",
                        s.replica,
                        s.role,
                        s.leader,
                        s.epoch,
                        s.applied_index,
                        s.commit_index,
                        s.ready,
                        s.store_error
                    )
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The replica's process runs, is not paused and is reachable by peers.
    fn alive(&self, i: usize) -> bool {
        let slot = &self.slots[i];
        lock(&slot.running).is_some() && !slot.link.is_paused() && !slot.link.is_isolated()
    }

    /// `by` deposed `name`'s term `epoch`. The fence keeps that safe in any
    /// case; what must not happen is churn: deposing a leader that leads
    /// that term, answers probes and has been steady (neither paused nor
    /// isolated, nor the deposer isolated) for longer than any suspicion
    /// window plus a probe in flight.
    fn deposed(&self, by: &str, name: &str, epoch: i64) {
        self.depositions.fetch_add(1, Ordering::AcqRel);
        let (Some(d), Some(l)) = (self.by_address(by), self.by_address(name)) else {
            return;
        };
        let leads = self.node(l).is_some_and(|n| {
            let s = n.status();
            n.is_leader() && s.epoch == Some(epoch)
        });
        if leads && self.slots[l].link.steady_for(STEADY) && self.slots[d].link.steady_for(STEADY) {
            lock(&self.violations).push(format!(
                "churn: {by} deposed {name} (epoch {epoch}) although it led, answered probes and both had been steady for {STEADY:?}"
            ));
        }
    }

    fn by_address(&self, addr: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.name == addr)
    }

    /// Start replica `i` in the background (it waits for the store if it must).
    async fn start(self: &Arc<Self>, i: usize) {
        let slot = &self.slots[i];
        let incarnation = {
            let mut g = lock(&slot.incarnation);
            *g += 1;
            *g
        };
        let store = FaultStore::new(
            self.mem.clone(),
            self.violations.clone(),
            slot.link.clone(),
            self.weather.clone(),
            self.dice.clone(),
            self.log.clone(),
            &slot.name,
        )
        .on_depose(OnDepose(Arc::new({
            let world = Arc::downgrade(self);
            move |by: &str, deposed: &str, epoch| {
                if let Some(world) = world.upgrade() {
                    world.deposed(by, deposed, epoch);
                }
            }
        })));
        let mut config = NodeConfig::new("sim", "g", &slot.name, &slot.name);
        config.leader_probe = Some(Arc::new(SimProbe {
            world: Arc::downgrade(self),
            from: i,
        }));
        config.lease_ttl = TTL;
        config.snapshot_every = self.params.snapshot_every;
        config.leader.max_inflight = self.params.max_inflight;
        config.leader.linger = self.params.linger;
        config.module_sha256 = kv::MODULE_A.into();
        config.modules = Some(Arc::new(kv::NativeModules));
        // Upgrades come from the upgrader task only.
        config.upgrade = UpgradeMode::Manual;
        config.submit_timeout = Duration::from_secs(3);
        config.catch_up_timeout = Duration::from_secs(2);
        let world = self.clone();
        tokio::spawn(async move {
            let started = node::start(
                store,
                Kv::default(),
                config,
                TraceWriter::new(std::io::sink()),
                // Crashes abort the replica (`RunningNode::abort`).
                Default::default(),
            )
            .await;
            let slot = &world.slots[i];
            match started {
                Ok(running) => {
                    if *lock(&slot.incarnation) != incarnation {
                        running.abort().await;
                        return;
                    }
                    *lock(&slot.node) = Some(running.node.clone());
                    *lock(&slot.running) = Some(running);
                    world.log.ev(format!("{} started", slot.name));
                }
                Err(e) => world.log.ev(format!("{} failed to start: {e}", slot.name)),
            }
        });
    }

    async fn crash(&self, i: usize) {
        let slot = &self.slots[i];
        *lock(&slot.incarnation) += 1;
        lock(&slot.node).take();
        let running = lock(&slot.running).take();
        if let Some(r) = running {
            r.abort().await;
        }
        // In-process replicas keep no local state: every restart recovers
        // from the store alone, so a crash is always a crash with wiped state.
        self.log.ev(format!("{} crashed (state wiped)", slot.name));
    }

    async fn heal_all(self: &Arc<Self>) {
        self.weather.stormy.store(false, Ordering::Release);
        self.mem.set_unavailable(None);
        for (i, slot) in self.slots.iter().enumerate() {
            slot.link.set_paused(false);
            slot.link.set_cut(false);
            slot.link.set_isolated(false);
            let down = lock(&slot.running).is_none();
            if down {
                // Supersedes a start still waiting for the store.
                self.start(i).await;
            }
        }
    }

    async fn stop_all(&self) {
        for i in 0..self.slots.len() {
            let running = lock(&self.slots[i].running).take();
            if let Some(r) = running {
                r.abort().await;
            }
        }
    }

    /// The fence, liveness, convergence, exactly-once and linearizability.
    async fn check(self: &Arc<Self>, history: &[Operation]) -> Result<(), String> {
        if let Some(v) = lock(&self.violations).first() {
            return Err(v.clone());
        }
        // Liveness: once faults stop, a new write completes.
        let probe = Command {
            client: Some(ClientTag {
                id: "probe".into(),
                seq: 1,
            }),
            payload: kv::put("probe", "probe-1"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut target = None;
        loop {
            if Instant::now() > deadline {
                return Err(format!(
                    "no liveness: a write did not complete within 20 s after the faults stopped; replicas: {}",
                    self.describe()
                ));
            }
            let i = target.unwrap_or_else(|| {
                let up = self.up();
                up.get(draw(&self.dice, 0..=9) as usize % up.len().max(1))
                    .copied()
                    .unwrap_or(0)
            });
            let Some(node) = self.node(i) else {
                target = None;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            match node.submit(probe.clone()).await {
                Ok(_) => break,
                Err(SubmitError::Forward(addr)) => {
                    target = self.by_address(&addr);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(_) => {
                    target = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        self.log.ev("liveness: the probe write completed");

        // Convergence: every replica applies the whole log and agrees.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let last = self
                .mem
                .last_index(1)
                .await
                .map_err(|e| format!("cannot read the store: {e}"))?
                .unwrap_or(0);
            let states: Vec<_> = (0..self.slots.len())
                .map(|i| {
                    self.node(i).map(|n| {
                        let s = n.status();
                        (
                            s.applied_index,
                            s.hash,
                            s.group_module.get(..4).unwrap_or_default().to_string(),
                        )
                    })
                })
                .collect();
            let all_there = states
                .iter()
                .all(|s| s.as_ref().is_some_and(|(a, _, _)| *a >= last));
            if all_there {
                let first = &states[0];
                if let Some(bad) = states.iter().position(|s| s != first) {
                    return Err(format!(
                        "divergence: replica r0 is at {first:?}, replica r{bad} at {:?}",
                        states[bad]
                    ));
                }
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no convergence within 20 s: the store's last index is {last}, replicas (applied, hash, module): {states:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.log.ev("convergence: equal hash chains");

        // Exactly once: no value applied twice, no acknowledged write missing.
        let node = self.node(0).ok_or("replica r0 is down after healing")?;
        let dups = node
            .query(b"dups".to_vec(), Consistency::Stale)
            .await
            .map_err(|e| format!("dups query failed: {e}"))?;
        if !dups.is_empty() {
            return Err(format!(
                "exactly-once violated: applied more than once: {}",
                String::from_utf8_lossy(&dups).replace('\n', ", ")
            ));
        }
        for op in history {
            if let (KvOp::Put(v), Completion::Ok { .. }) = (&op.op, &op.completion) {
                let seen = node
                    .query(format!("seen {v}").into_bytes(), Consistency::Stale)
                    .await
                    .map_err(|e| format!("seen query failed: {e}"))?;
                if seen != b"1" {
                    return Err(format!("acknowledged write lost: {op}"));
                }
            }
        }

        // Linearizability of every key's history.
        let budget = Budget {
            max_time: Duration::from_secs(20),
            ..Budget::default()
        };
        let report = checker::check(history, budget);
        if let Some(v) = report.violations().next() {
            return Err(format!("not linearizable: {v}"));
        }
        if let Some((key, why)) = report.undecided().next() {
            return Err(format!("linearizability undecided for key {key}: {why}"));
        }
        Ok(())
    }
}

/// One client: operations on random keys for as long as the faults last
/// (and at least `ops`), puts retried with the same id and seq until they
/// have an answer.
async fn client(world: Arc<World>, c: u64, ops: usize) -> Vec<Operation> {
    let mut history = Vec::with_capacity(ops);
    let mut seq = 0;
    let mut target: Option<usize> = None;
    for n in 0..MAX_OPS_PER_CLIENT {
        if n >= ops && world.calm.load(Ordering::Acquire) {
            break;
        }
        let pause = draw(&world.dice, 1..=60);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let key = KEYS[draw(&world.dice, 0..=2) as usize];
        let invoked = world.log.now_ns();
        if chance(&world.dice, 0.4) {
            let read = read(&world, key).await;
            let completion = match read {
                Some(v) => Completion::Ok {
                    at: world.log.now_ns(),
                    result: KvResult::Read(v),
                },
                None => Completion::Fail,
            };
            history.push(Operation {
                client: c,
                key: key.into(),
                op: KvOp::Get,
                invoked,
                completion,
            });
            continue;
        }
        seq += 1;
        let value = format!("c{c}-{seq}");
        let command = Command {
            client: Some(ClientTag {
                id: format!("c{c}"),
                seq,
            }),
            payload: kv::put(key, &value),
        };
        let completion = put(&world, &command, &mut target).await;
        world
            .log
            .ev(format!("c{c}: put {key}={value} -> {completion:?}"));
        history.push(Operation {
            client: c,
            key: key.into(),
            op: KvOp::Put(value),
            invoked,
            completion,
        });
    }
    history
}

async fn put(world: &World, command: &Command, target: &mut Option<usize>) -> Completion {
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut uncertain = false;
    while Instant::now() < deadline {
        let i = match *target {
            Some(i) => i,
            None => {
                let up = world.up();
                if up.is_empty() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                up[draw(&world.dice, 0..=(up.len() as u64 - 1)) as usize]
            }
        };
        // Every retry takes virtual time: a loop that never sleeps would
        // stop the clock (and so the lease expiry it may be waiting for).
        let Some(node) = world.node(i) else {
            *target = None;
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        match node.submit(command.clone()).await {
            Ok(_) => {
                return Completion::Ok {
                    at: world.log.now_ns(),
                    result: KvResult::Written,
                };
            }
            Err(SubmitError::Forward(addr)) => {
                *target = world.by_address(&addr);
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
            // Definitely not ordered by this attempt.
            Err(SubmitError::NoLeader | SubmitError::NotOrdered) => {}
            Err(
                e @ (SubmitError::Invalid(_)
                | SubmitError::UnknownModule(_)
                | SubmitError::Unsupported(_)),
            ) => {
                world.log.ev(format!("refused: {e}"));
                return Completion::Fail;
            }
            // Unknown, timed out, or the replica died holding it.
            Err(SubmitError::Unknown | SubmitError::Timeout(_) | SubmitError::ShuttingDown) => {
                uncertain = true;
            }
        }
        *target = None;
        tokio::time::sleep(Duration::from_millis(draw(&world.dice, 20..=120))).await;
    }
    if uncertain {
        Completion::Info
    } else {
        Completion::Fail
    }
}

async fn read(world: &World, key: &str) -> Option<Option<String>> {
    let up = world.up();
    let i = *up.get(draw(&world.dice, 0..=9) as usize % up.len().max(1))?;
    let node = world.node(i)?;
    let q = node
        .query(format!("get {key}").into_bytes(), Consistency::Linearizable)
        .await
        .ok()?;
    Some((!q.is_empty()).then(|| String::from_utf8_lossy(&q).into_owned()))
}

/// Proposes module upgrades during the fault phase, every 0.5–2 s, to a
/// random module (including the one whose migration fails, and the one
/// running), through a random replica, following redirects like a client.
/// Returns how many proposals got an answer. What the checks then prove:
/// every replica switched (or refused) at the same index, since the two
/// modules reply differently and the hash chains must still be equal.
async fn upgrader(world: Arc<World>) -> usize {
    let mut answered = 0;
    while !world.calm.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(draw(&world.dice, 500..=2000))).await;
        let to = [kv::MODULE_A, kv::MODULE_B, kv::MODULE_TRAP][draw(&world.dice, 0..=2) as usize];
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut target: Option<usize> = None;
        while Instant::now() < deadline {
            let up = world.up();
            let i = match target {
                Some(i) => i,
                None if up.is_empty() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                None => up[draw(&world.dice, 0..=(up.len() as u64 - 1)) as usize],
            };
            let Some(node) = world.node(i) else {
                target = None;
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            match node.propose_upgrade(to.to_string()).await {
                Ok(r) => {
                    let outcome = match &r.outcome {
                        dorado_core::Outcome::Reply(b) => String::from_utf8_lossy(b).into_owned(),
                        dorado_core::Outcome::Rejected(reason) => reason.clone(),
                    };
                    world.log.ev(format!(
                        "upgrade to {} at index {}: {outcome}",
                        &to[..4],
                        r.index
                    ));
                    answered += 1;
                    break;
                }
                Err(SubmitError::Forward(addr)) => {
                    target = world.by_address(&addr);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => {
                    world.log.ev(format!("upgrade to {}: {e}", &to[..4]));
                    target = None;
                    tokio::time::sleep(Duration::from_millis(draw(&world.dice, 20..=120))).await;
                }
            }
        }
    }
    answered
}

/// The fault schedule: random faults every 0.2–1.2 s for the fault phase,
/// each healed after its own random duration. Returns how many it injected.
async fn nemesis(world: Arc<World>) -> usize {
    let end = Instant::now() + Duration::from_millis(world.params.fault_ms);
    let mut heals: Vec<(Instant, Heal)> = Vec::new();
    let mut count = 0;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(draw(&world.dice, 200..=1200))).await;
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = heals.into_iter().partition(|(at, _)| *at <= now);
        heals = later;
        for (_, h) in due {
            h.apply(&world).await;
        }
        let n = world.slots.len() as u64;
        let for_ms = |lo, hi| now + Duration::from_millis(draw(&world.dice, lo..=hi));
        let fault = draw(&world.dice, 0..=7);
        let victim = match fault {
            1 | 2 => world.leader(),
            _ => Some(draw(&world.dice, 0..=n - 1) as usize),
        };
        let Some(v) = victim else { continue };
        let name = world.slots[v].name.clone();
        match fault {
            0 | 1 => {
                if lock(&world.slots[v].running).is_none() {
                    continue;
                }
                world.crash(v).await;
                heals.push((for_ms(100, 3000), Heal::Restart(v)));
            }
            2 => {
                world
                    .log
                    .ev(format!("{name} (leader) paused past its lease"));
                world.slots[v].link.set_paused(true);
                heals.push((
                    now + TTL + Duration::from_millis(draw(&world.dice, 200..=1500)),
                    Heal::Resume(v),
                ));
            }
            3 => {
                world.log.ev("store unavailable");
                world.mem.set_unavailable(Some("sim: store down"));
                heals.push((for_ms(100, 1500), Heal::StoreUp));
            }
            4 => {
                world.log.ev(format!("{name} cut off the store"));
                world.slots[v].link.set_cut(true);
                heals.push((for_ms(300, 2500), Heal::Uncut(v)));
            }
            5 => {
                world
                    .log
                    .ev(format!("{name} unreachable by its peers (network blip)"));
                world.slots[v].link.set_isolated(true);
                heals.push((for_ms(50, 1500), Heal::Reachable(v)));
            }
            6 => {
                let Some(l) = world.leader() else { continue };
                let lname = world.slots[l].name.clone();
                world
                    .log
                    .ev(format!("{lname} (leader) paused briefly (a slow leader)"));
                world.slots[l].link.set_paused(true);
                heals.push((for_ms(50, 400), Heal::Resume(l)));
            }
            _ => continue,
        }
        count += 1;
    }
    for (_, h) in heals {
        h.apply(&world).await;
    }
    count
}

#[derive(Debug, Clone, Copy)]
enum Heal {
    Restart(usize),
    Resume(usize),
    StoreUp,
    Uncut(usize),
    Reachable(usize),
}

impl Heal {
    async fn apply(self, world: &Arc<World>) {
        match self {
            Heal::Restart(i) => {
                if lock(&world.slots[i].running).is_none() {
                    world.log.ev(format!("{} restarting", world.slots[i].name));
                    world.start(i).await;
                }
            }
            Heal::Resume(i) => {
                world.log.ev(format!("{} resumed", world.slots[i].name));
                world.slots[i].link.set_paused(false);
            }
            Heal::StoreUp => {
                world.log.ev("store available again");
                world.mem.set_unavailable(None);
            }
            Heal::Uncut(i) => {
                world.log.ev(format!("{} reconnected", world.slots[i].name));
                world.slots[i].link.set_cut(false);
            }
            Heal::Reachable(i) => {
                world
                    .log
                    .ev(format!("{} reachable again", world.slots[i].name));
                world.slots[i].link.set_isolated(false);
            }
        }
    }
}
