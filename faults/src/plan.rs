//! Schedules: everything random about one run, derived from its seed alone.
//!
//! A [`Plan`] is a pure function of `(seed, profile, workload length)`: the
//! workload shape (clients, keys, snapshot interval) and the sequence of fault
//! episodes (what, whom, when, for how long). Running the same plan again
//! replays the same schedule; what cannot be replayed exactly is the timing of
//! the operating system and of etcd, which is why long runs use many seeds.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The lease TTL every replica runs with, in seconds.
pub const LEASE_TTL_SECS: u64 = 2;

/// Kinds of fault the nemesis injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// `kill -9` a replica, restart it on the same working directory.
    KillReplica,
    /// `kill -9` a replica, restart it on an empty directory (a recreated pod).
    KillReplicaWipe,
    /// `SIGSTOP` a group's leader for longer than its lease, then `SIGCONT`.
    PauseLeader,
    /// `kill -9` one etcd member, restart it on its data.
    KillEtcdMember,
    /// Cut a replica off from etcd (network namespaces), then heal.
    CutFromEtcd,
}

impl FaultKind {
    /// All kinds, in report order.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::KillReplica,
        FaultKind::KillReplicaWipe,
        FaultKind::PauseLeader,
        FaultKind::KillEtcdMember,
        FaultKind::CutFromEtcd,
    ];

    /// Short stable name.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillReplica => "kill-replica",
            FaultKind::KillReplicaWipe => "kill-replica-wipe",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::KillEtcdMember => "kill-etcd-member",
            FaultKind::CutFromEtcd => "cut-from-etcd",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which replica a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The group's leader at the moment of the fault (a random replica if none).
    Leader,
    /// Replica number `i` of the group.
    Replica(usize),
}

/// How long a paused leader stays paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseHold {
    /// A fixed time (always longer than the lease).
    Fixed(Duration),
    /// Until another replica reports itself leader, plus this delay: the
    /// resumed ex-leader then races the new one.
    UntilNewLeader(Duration),
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Kill a replica and restart it after `down`.
    KillReplica {
        /// Group index.
        group: usize,
        /// Victim.
        target: Target,
        /// Restart on an empty working directory.
        wipe: bool,
        /// Time dead.
        down: Duration,
    },
    /// Pause the leader.
    PauseLeader {
        /// Group index.
        group: usize,
        /// How long.
        hold: PauseHold,
    },
    /// Kill etcd member `member` and restart it after `down`.
    KillEtcdMember {
        /// Member index.
        member: usize,
        /// Time dead.
        down: Duration,
    },
    /// Cut a replica off from etcd for `hold`.
    CutFromEtcd {
        /// Group index.
        group: usize,
        /// Victim.
        target: Target,
        /// Time cut off.
        hold: Duration,
    },
}

impl Fault {
    /// Its kind.
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::KillReplica { wipe: false, .. } => FaultKind::KillReplica,
            Fault::KillReplica { wipe: true, .. } => FaultKind::KillReplicaWipe,
            Fault::PauseLeader { .. } => FaultKind::PauseLeader,
            Fault::KillEtcdMember { .. } => FaultKind::KillEtcdMember,
            Fault::CutFromEtcd { .. } => FaultKind::CutFromEtcd,
        }
    }
}

/// Faults applied together after a quiet gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    /// Quiet time before the episode.
    pub gap: Duration,
    /// Faults applied concurrently (each heals itself).
    pub faults: Vec<Fault>,
}

/// What a schedule emphasises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// Every fault kind, mixed, sometimes overlapping.
    #[default]
    Standard,
    /// Only leader pauses of the kv group under heavy writes, resuming the
    /// ex-leader right after a new leader appears: the schedule that exposes
    /// a missing append fence.
    PauseHeavy,
}

impl Profile {
    /// Stable name (the `--profile` value).
    pub fn name(self) -> &'static str {
        match self {
            Profile::Standard => "standard",
            Profile::PauseHeavy => "pause-heavy",
        }
    }
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "standard" => Ok(Profile::Standard),
            "pause-heavy" => Ok(Profile::PauseHeavy),
            other => Err(format!(
                "unknown profile {other:?} (expected standard or pause-heavy)"
            )),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Groups every schedule runs (index = group number in faults).
pub const GROUPS: [&str; 2] = ["kv", "bank"];
/// Group index of the kv workload.
pub const KV: usize = 0;
/// Group index of the bank workload.
pub const BANK: usize = 1;
/// Replicas per group.
pub const REPLICAS: usize = 3;
/// etcd members.
pub const ETCD_MEMBERS: usize = 3;

/// One kv client's behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvClientPlan {
    /// Seed of its operation stream.
    pub seed: u64,
    /// Per-request timeout (long ones stay queued at a paused leader).
    pub attempt_timeout: Duration,
    /// Chance (percent) of giving up an operation after a definite
    /// "not applied" answer instead of retrying the same seq.
    pub give_up_percent: u8,
}

/// Everything random about one schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The seed it came from.
    pub seed: u64,
    /// Its profile.
    pub profile: Profile,
    /// How long clients run while faults are injected.
    pub workload: Duration,
    /// Snapshot interval of every replica (0 = never).
    pub snapshot_every: u64,
    /// Keys of the kv workload.
    pub kv_keys: usize,
    /// kv clients.
    pub kv_clients: Vec<KvClientPlan>,
    /// Bank clients (seeds).
    pub bank_clients: Vec<u64>,
    /// Bank accounts (each opened with [`Plan::opening_balance`]).
    pub accounts: usize,
    /// Opening balance of every account.
    pub opening_balance: u64,
    /// Fault episodes in order.
    pub episodes: Vec<Episode>,
}

fn ms(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.random_range(lo..=hi))
}

fn target(rng: &mut ChaCha8Rng, leader_percent: u32) -> Target {
    if rng.random_range(0..100) < leader_percent {
        Target::Leader
    } else {
        Target::Replica(rng.random_range(0..REPLICAS))
    }
}

fn fault(rng: &mut ChaCha8Rng, kind: FaultKind) -> Fault {
    let lease = Duration::from_secs(LEASE_TTL_SECS);
    let group = rng.random_range(0..GROUPS.len());
    match kind {
        FaultKind::KillReplica | FaultKind::KillReplicaWipe => Fault::KillReplica {
            group,
            target: target(rng, 50),
            wipe: kind == FaultKind::KillReplicaWipe,
            down: ms(rng, 100, 3000),
        },
        FaultKind::PauseLeader => Fault::PauseLeader {
            group,
            hold: if rng.random_bool(0.5) {
                PauseHold::Fixed(lease + ms(rng, 500, 3000))
            } else {
                PauseHold::UntilNewLeader(ms(rng, 0, 1000))
            },
        },
        FaultKind::KillEtcdMember => Fault::KillEtcdMember {
            member: rng.random_range(0..ETCD_MEMBERS),
            down: ms(rng, 500, 4000),
        },
        FaultKind::CutFromEtcd => Fault::CutFromEtcd {
            group,
            target: target(rng, 60),
            hold: ms(rng, 1000, 6000),
        },
    }
}

/// Rough duration of a fault, to fill the workload time.
fn estimate(f: &Fault) -> Duration {
    let lease = Duration::from_secs(LEASE_TTL_SECS);
    match f {
        Fault::KillReplica { down, .. } => *down + Duration::from_millis(500),
        Fault::PauseLeader { hold, .. } => match hold {
            PauseHold::Fixed(d) => *d,
            PauseHold::UntilNewLeader(d) => lease + Duration::from_millis(700) + *d,
        },
        Fault::KillEtcdMember { down, .. } => *down + Duration::from_millis(1500),
        Fault::CutFromEtcd { hold, .. } => *hold,
    }
}

/// Two faults may share an episode if they do not hit the same thing.
fn compatible(a: &Fault, b: &Fault) -> bool {
    let group = |f: &Fault| match f {
        Fault::KillReplica { group, .. }
        | Fault::PauseLeader { group, .. }
        | Fault::CutFromEtcd { group, .. } => Some(*group),
        Fault::KillEtcdMember { .. } => None,
    };
    match (group(a), group(b)) {
        (None, None) => false, // never two etcd members down: keep quorum
        (Some(x), Some(y)) => x != y,
        _ => true,
    }
}

impl Plan {
    /// The plan of `seed` under `profile`, with `workload` of client time.
    pub fn generate(seed: u64, profile: Profile, workload: Duration) -> Plan {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let pause_heavy = profile == Profile::PauseHeavy;
        let snapshot_every = if pause_heavy {
            0
        } else {
            [0, 40, 150, 1000][rng.random_range(0..4)]
        };
        let kv_keys = rng.random_range(2..=4);
        let n_kv = if pause_heavy {
            8
        } else {
            rng.random_range(3..=5)
        };
        let kv_clients = (0..n_kv)
            .map(|_| KvClientPlan {
                seed: rng.random(),
                attempt_timeout: if pause_heavy || rng.random_bool(0.5) {
                    ms(&mut rng, 4000, 8000)
                } else {
                    ms(&mut rng, 800, 2500)
                },
                give_up_percent: if rng.random_bool(0.5) { 0 } else { 50 },
            })
            .collect();
        let bank_clients = (0..2).map(|_| rng.random()).collect();
        let mut episodes = Vec::new();
        let mut planned = Duration::ZERO;
        if pause_heavy {
            while planned < workload {
                let gap = ms(&mut rng, 500, 2500);
                let f = Fault::PauseLeader {
                    group: KV,
                    hold: PauseHold::UntilNewLeader(ms(&mut rng, 0, 300)),
                };
                planned += gap + estimate(&f);
                episodes.push(Episode {
                    gap,
                    faults: vec![f],
                });
            }
        } else {
            // Every kind once, in random order, then random kinds; every
            // kind appears even if that overruns the workload time (the
            // workload then lasts until the last episode ends).
            let mut kinds = FaultKind::ALL.to_vec();
            kinds.shuffle(&mut rng);
            let any =
                |rng: &mut ChaCha8Rng| FaultKind::ALL[rng.random_range(0..FaultKind::ALL.len())];
            while planned < workload || !kinds.is_empty() {
                let gap = ms(&mut rng, 300, 2500);
                let kind = kinds.pop().unwrap_or_else(|| any(&mut rng));
                let mut faults = vec![fault(&mut rng, kind)];
                if rng.random_bool(0.25) {
                    let required = kinds.pop();
                    let kind = match required {
                        Some(k) => k,
                        None => any(&mut rng),
                    };
                    let second = fault(&mut rng, kind);
                    if compatible(&faults[0], &second) {
                        faults.push(second);
                    } else if let Some(kind) = required {
                        // Not together with this one: keep it for later.
                        kinds.insert(0, kind);
                    }
                }
                planned += gap + faults.iter().map(estimate).max().unwrap_or_default();
                episodes.push(Episode { gap, faults });
            }
        }
        Plan {
            seed,
            profile,
            workload,
            snapshot_every,
            kv_keys,
            kv_clients,
            bank_clients,
            accounts: 5,
            opening_balance: 1000,
            episodes,
        }
    }

    /// Faults planned, per kind.
    pub fn fault_counts(&self) -> Vec<(FaultKind, usize)> {
        FaultKind::ALL
            .iter()
            .map(|k| {
                let n = self
                    .episodes
                    .iter()
                    .flat_map(|e| &e.faults)
                    .filter(|f| f.kind() == *k)
                    .count();
                (*k, n)
            })
            .collect()
    }
}

/// Seed of schedule `i` of a run with base seed `base` (SplitMix64).
pub fn schedule_seed(base: u64, i: u64) -> u64 {
    let mut z = base.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_is_a_function_of_its_seed() {
        let w = Duration::from_secs(20);
        assert_eq!(
            Plan::generate(7, Profile::Standard, w),
            Plan::generate(7, Profile::Standard, w)
        );
        assert_ne!(
            Plan::generate(7, Profile::Standard, w),
            Plan::generate(8, Profile::Standard, w)
        );
    }

    #[test]
    fn standard_plans_cover_every_kind_and_fill_the_workload() {
        for seed in 0..50 {
            let plan = Plan::generate(seed, Profile::Standard, Duration::from_secs(20));
            for (kind, n) in plan.fault_counts() {
                assert!(n >= 1, "seed {seed}: no {kind}");
            }
            for e in &plan.episodes {
                if let [a, b] = &e.faults[..] {
                    assert!(compatible(a, b));
                }
                assert!(e.faults.len() <= 2);
            }
        }
    }

    #[test]
    fn pause_heavy_plans_only_pause_the_kv_leader() {
        let plan = Plan::generate(1, Profile::PauseHeavy, Duration::from_secs(30));
        assert!(plan.episodes.len() >= 5);
        assert!(
            plan.episodes
                .iter()
                .flat_map(|e| &e.faults)
                .all(|f| matches!(
                    f,
                    Fault::PauseLeader {
                        group: KV,
                        hold: PauseHold::UntilNewLeader(_)
                    }
                ))
        );
    }

    #[test]
    fn schedule_seeds_differ() {
        let seeds: std::collections::HashSet<u64> =
            (0..1000).map(|i| schedule_seed(42, i)).collect();
        assert_eq!(seeds.len(), 1000);
    }
}
