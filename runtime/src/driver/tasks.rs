//! Every task a replica spawns, owned in one place so that stopping the
//! replica stops all of them.
//!
//! A replica that has been shut down or aborted must never write to the
//! store again: a leaked append task of an in-process replica that "crashed"
//! (tests, the simulation, the demo) would otherwise still write entries or
//! snapshots for a leader that no longer exists, and a leaked lease task
//! would keep a dead replica's lease alive. Tokio detaches a task whose
//! `JoinHandle` is dropped, so ownership has to be explicit: the driver's
//! long-lived tasks *and* the short ones its core loop spawns (appends,
//! snapshots, classic writes) all go into the same [`TaskSet`], and the set
//! stops them all on [`TaskSet::shutdown`], [`TaskSet::abort`] or when it is
//! dropped (the task that owned the replica was aborted).

use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

type Tasks = Mutex<Option<JoinSet<()>>>;

/// Owns a replica's tasks. Not cloneable: whoever holds it decides when the
/// replica stops. Tasks are spawned through [`Spawner`]s.
///
/// # Guarantees
/// * After [`TaskSet::abort`] or [`TaskSet::shutdown`] returns, none of the
///   set's tasks runs any more and no new one can be spawned into it.
/// * Dropping the set cancels its token and aborts every task; each stops at
///   its next await point (on a current-thread runtime, before any other task
///   runs again).
/// * A [`Spawner`] outliving the set spawns nothing.
#[derive(Debug)]
pub struct TaskSet {
    tasks: Arc<Tasks>,
    stop: CancellationToken,
}

/// Spawns into a [`TaskSet`] (cheap to clone; does not keep the set alive).
#[derive(Debug, Clone)]
pub struct Spawner {
    tasks: Weak<Tasks>,
    stop: CancellationToken,
}

impl TaskSet {
    /// An empty set whose stop token is a child of `shutdown`: cancelling
    /// `shutdown` asks every task of the set to stop.
    pub fn new(shutdown: &CancellationToken) -> Self {
        TaskSet {
            tasks: Arc::new(Mutex::new(Some(JoinSet::new()))),
            stop: shutdown.child_token(),
        }
    }

    /// Spawns into this set.
    pub fn spawner(&self) -> Spawner {
        Spawner {
            tasks: Arc::downgrade(&self.tasks),
            stop: self.stop.clone(),
        }
    }

    /// The token every long-lived task must watch: its stop path.
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Close the set: nothing can be spawned into it any more.
    fn close(&self) -> Option<JoinSet<()>> {
        self.stop.cancel();
        match self.tasks.lock() {
            Ok(mut t) => t.take(),
            Err(p) => p.into_inner().take(),
        }
    }

    /// Graceful stop: cancel the token and let every task return by its own
    /// stop path (the core loop flushes the trace and answers its clients);
    /// whatever has not returned within `grace` is aborted. Returns once no
    /// task of the set runs.
    pub async fn shutdown(self, grace: Duration) {
        let Some(mut set) = self.close() else { return };
        let joined =
            tokio::time::timeout(grace, async { while set.join_next().await.is_some() {} }).await;
        if joined.is_err() {
            tracing::warn!(
                tasks = set.len(),
                "tasks did not stop within {grace:?}; aborting them"
            );
            set.shutdown().await;
        }
    }

    /// Abrupt stop (an in-process crash): cancel the token, abort every task
    /// and wait until none runs.
    pub async fn abort(self) {
        if let Some(mut set) = self.close() {
            set.shutdown().await;
        }
    }
}

impl Drop for TaskSet {
    fn drop(&mut self) {
        // Dropping a JoinSet aborts its tasks; done outside the lock.
        drop(self.close());
    }
}

impl Spawner {
    /// Run `task` in the set. It must watch [`Spawner::token`] and return
    /// soon after it is cancelled. Returns false (and drops `task`) once the
    /// set is stopping or gone.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> bool {
        let Some(tasks) = self.tasks.upgrade() else {
            return false;
        };
        let mut guard = match tasks.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let Some(set) = guard.as_mut() else {
            return false;
        };
        if self.stop.is_cancelled() {
            return false;
        }
        // Reap what has finished so a long-lived set does not grow.
        while set.try_join_next().is_some() {}
        set.spawn(task);
        true
    }

    /// Run `task` in the set until it completes or the set stops, whichever
    /// comes first: for the short tasks a core loop spawns (an append, a
    /// snapshot write), which are dropped at their next await point once the
    /// replica stops, whatever they are waiting for.
    pub fn spawn_until_stopped(&self, task: impl Future<Output = ()> + Send + 'static) -> bool {
        let stop = self.stop.clone();
        self.spawn(async move {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {}
                _ = task => {}
            }
        })
    }

    /// The set's stop token.
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// `fut`, unless `stop` is cancelled first (checked first on every poll).
pub async fn until_stopped<T>(stop: &CancellationToken, fut: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        r = fut => Some(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A task that counts its polls past a gate; any count after the stop
    /// instant is a task that outlived its set.
    async fn counting(ran: Arc<AtomicUsize>, gate: Arc<tokio::sync::Notify>) {
        gate.notified().await;
        ran.fetch_add(1, Ordering::SeqCst);
    }

    #[tokio::test(start_paused = true)]
    async fn abort_drop_and_shutdown_stop_every_task() {
        for how in ["abort", "drop", "shutdown", "parent token"] {
            let parent = CancellationToken::new();
            let set = TaskSet::new(&parent);
            let spawner = set.spawner();
            let ran = Arc::new(AtomicUsize::new(0));
            let gate = Arc::new(tokio::sync::Notify::new());
            // Neither watches the token: only the set can stop them.
            assert!(spawner.spawn(counting(ran.clone(), gate.clone())));
            assert!(spawner.spawn_until_stopped(counting(ran.clone(), gate.clone())));
            tokio::task::yield_now().await;
            match how {
                "abort" => set.abort().await,
                "drop" => drop(set),
                "shutdown" => set.shutdown(Duration::from_secs(1)).await,
                _ => {
                    parent.cancel();
                    assert!(
                        !spawner.spawn(async {}),
                        "{how}: a stopping set refuses tasks"
                    );
                    set.abort().await;
                }
            }
            gate.notify_waiters();
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert_eq!(
                ran.load(Ordering::SeqCst),
                0,
                "{how}: a task ran after the stop"
            );
            assert!(
                !spawner.spawn(async {}),
                "{how}: a stopped set refuses tasks"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_lets_tasks_finish_their_stop_path() {
        let set = TaskSet::new(&CancellationToken::new());
        let token = set.token();
        let flushed = Arc::new(AtomicUsize::new(0));
        let f = flushed.clone();
        set.spawner().spawn(async move {
            token.cancelled().await;
            f.fetch_add(1, Ordering::SeqCst);
        });
        set.shutdown(Duration::from_secs(1)).await;
        assert_eq!(flushed.load(Ordering::SeqCst), 1);
    }
}
