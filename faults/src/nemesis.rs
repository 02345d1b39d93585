//! The nemesis: performs a plan's fault episodes against a [`World`].
//!
//! Episodes run one after another; the faults of one episode run
//! concurrently, and every fault heals itself before its episode ends (a
//! killed replica is restarted, a paused one continued, an etcd member
//! restarted, a cut healed). What could not be injected is counted as
//! skipped, with the reason.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::plan::{Fault, FaultKind, GROUPS, PauseHold, Plan, REPLICAS, Target};
use crate::world::{World, lock};

/// Faults injected and skipped during a schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Injected, per kind.
    pub injected: BTreeMap<FaultKind, usize>,
    /// Skipped, per kind, with the last reason.
    pub skipped: BTreeMap<FaultKind, (usize, String)>,
}

impl FaultStats {
    /// Add another schedule's counts.
    pub fn add(&mut self, other: &FaultStats) {
        for (k, n) in &other.injected {
            *self.injected.entry(*k).or_default() += n;
        }
        for (k, (n, why)) in &other.skipped {
            let e = self.skipped.entry(*k).or_insert((0, String::new()));
            e.0 += n;
            e.1.clone_from(why);
        }
    }
}

enum Done {
    Injected(FaultKind),
    Skipped(FaultKind, String),
}

/// Run every episode of `plan`.
pub async fn run(world: &World, plan: &Plan) -> FaultStats {
    let mut stats = FaultStats::default();
    for episode in &plan.episodes {
        tokio::time::sleep(episode.gap).await;
        let done = futures::future::join_all(episode.faults.iter().map(|f| inject(world, f))).await;
        for d in done {
            match d {
                Done::Injected(k) => *stats.injected.entry(k).or_default() += 1,
                Done::Skipped(k, why) => {
                    world.log(format!("skipped {k}: {why}"));
                    let e = stats.skipped.entry(k).or_insert((0, String::new()));
                    e.0 += 1;
                    e.1 = why;
                }
            }
        }
    }
    stats
}

async fn resolve(world: &World, group: usize, target: Target) -> usize {
    match target {
        Target::Replica(i) => i % REPLICAS,
        Target::Leader => world
            .wait_leader(group, Duration::from_secs(3))
            .await
            .unwrap_or(0),
    }
}

async fn inject(world: &World, fault: &Fault) -> Done {
    let kind = fault.kind();
    match *fault {
        Fault::KillReplica {
            group,
            target,
            wipe,
            down,
        } => {
            let i = resolve(world, group, target).await;
            let replica = &world.groups[group].replicas[i];
            let name = {
                let mut r = lock(replica);
                r.kill();
                r.spec.name.clone()
            };
            world.log(format!("kill -9 {name} ({target:?})"));
            tokio::time::sleep(down).await;
            let started = lock(replica).start(wipe);
            match started {
                Ok(()) => {
                    world.log(format!(
                        "restarted {name}{}",
                        if wipe { " on an empty directory" } else { "" }
                    ));
                    Done::Injected(kind)
                }
                Err(e) => {
                    world.harness_error(format!("restart {name}: {e:#}"));
                    Done::Injected(kind)
                }
            }
        }
        Fault::PauseLeader { group, hold } => {
            let Some(i) = world.wait_leader(group, Duration::from_secs(5)).await else {
                return Done::Skipped(kind, format!("group {} had no leader", GROUPS[group]));
            };
            let replica = &world.groups[group].replicas[i];
            let (name, paused) = {
                let mut r = lock(replica);
                (r.spec.name.clone(), r.pause())
            };
            if let Err(e) = paused {
                world.harness_error(format!("pause {name}: {e:#}"));
                return Done::Skipped(kind, format!("could not pause {name}"));
            }
            world.log(format!("SIGSTOP leader {name}"));
            match hold {
                PauseHold::Fixed(d) => tokio::time::sleep(d).await,
                PauseHold::UntilNewLeader(delay) => {
                    match world
                        .wait_leader_except(group, Some(i), Duration::from_secs(12))
                        .await
                    {
                        Some(j) => world.log(format!(
                            "new leader {} while {name} is paused",
                            world.groups[group].replicas[j]
                                .lock()
                                .map(|r| r.spec.name.clone())
                                .unwrap_or_default()
                        )),
                        None => world.log(format!("no new leader while {name} is paused")),
                    }
                    tokio::time::sleep(delay).await;
                }
            }
            let resumed = lock(replica).resume();
            match resumed {
                Ok(()) => world.log(format!("SIGCONT {name}")),
                Err(e) => world.harness_error(format!("resume {name}: {e:#}")),
            }
            Done::Injected(kind)
        }
        Fault::KillEtcdMember { member, down } => {
            {
                let mut etcd = world.etcd.lock().await;
                if let Err(e) = etcd.kill_member(member) {
                    world.harness_error(format!("kill etcd member {member}: {e}"));
                    return Done::Skipped(kind, format!("could not kill member {member}"));
                }
            }
            world.log(format!("kill -9 etcd member m{member}"));
            tokio::time::sleep(down).await;
            let mut etcd = world.etcd.lock().await;
            let mut result = etcd.restart_member(member).await;
            for _ in 0..2 {
                if result.is_ok() {
                    break;
                }
                result = etcd.restart_member(member).await;
            }
            match result {
                Ok(()) => world.log(format!("restarted etcd member m{member}")),
                Err(e) => world.harness_error(format!("restart etcd member {member}: {e}")),
            }
            Done::Injected(kind)
        }
        Fault::CutFromEtcd {
            group,
            target,
            hold,
        } => {
            let Some(net) = &world.net else {
                let why = match dorado_testkit::netns::available() {
                    Err(e) => format!("network namespaces unavailable: {e}"),
                    Ok(()) => "network namespaces unavailable".into(),
                };
                return Done::Skipped(kind, why);
            };
            let i = resolve(world, group, target).await;
            let slot = group * REPLICAS + i;
            let replica = &world.groups[group].replicas[i];
            let name = lock(replica).spec.name.clone();
            if let Err(e) = net.cut(slot) {
                world.harness_error(format!("cut {name}: {e:#}"));
                return Done::Skipped(kind, format!("could not cut {name}"));
            }
            lock(replica).cut = true;
            world.log(format!("cut {name} ({target:?}) off from etcd"));
            tokio::time::sleep(hold).await;
            match net.heal(slot) {
                Ok(()) => {
                    lock(replica).cut = false;
                    world.log(format!("healed {name}'s route to etcd"));
                }
                Err(e) => world.harness_error(format!("heal {name}: {e:#}")),
            }
            Done::Injected(kind)
        }
    }
}
