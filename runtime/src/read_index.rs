//! Linearizable reads share one store round trip.
//!
//! A linearizable read must observe every write acknowledged before the read
//! arrived. A replica learns that bound from the store (`Store::last_index`, a
//! linearizable read of the log) and then waits until it has applied up to it.
//! One store read per client read made etcd serve a request per query: at 256
//! concurrent readers those requests queued in etcd and set the read latency.
//!
//! So reads that arrive while a store read is in flight wait for the *next*
//! one, which answers all of them. That call starts after each of them
//! arrived, which is all linearizability needs. Joining the call already in
//! flight would not be enough: etcd may have answered it from a moment before
//! the read arrived. (etcd batches its own ReadIndex requests the same way.)

use std::sync::Arc;

use dorado_core::{Index, StoreResult};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// `Store::last_index` with the store type erased: the highest index `>= from`.
pub(crate) type LastIndexFn =
    Arc<dyn Fn(Index) -> BoxFuture<'static, StoreResult<Option<Index>>> + Send + Sync>;

type Waiter = oneshot::Sender<StoreResult<Index>>;

/// Handle to the task that answers read-index requests (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct ReadIndex {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl ReadIndex {
    /// Start the task (tests). `applied` reports what the replica has applied; only
    /// the log above it is read. The task ends when `cancel` fires or every
    /// handle is dropped.
    #[cfg(test)]
    pub(crate) fn spawn(
        last_index: LastIndexFn,
        applied: impl Fn() -> Index + Send + 'static,
        cancel: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (reads, task) = Self::new(last_index, applied, cancel);
        (reads, tokio::spawn(task))
    }

    /// The handle and the task that answers it, for the caller to spawn
    /// (into the replica's task set).
    pub(crate) fn new(
        last_index: LastIndexFn,
        applied: impl Fn() -> Index + Send + 'static,
        cancel: CancellationToken,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ReadIndex { tx }, run(last_index, applied, rx, cancel))
    }

    /// The index a linearizable read must wait for: every write acknowledged
    /// before this call is at or below it. `None` once the replica stops.
    pub(crate) async fn read(&self) -> Option<StoreResult<Index>> {
        let (waiter, answer) = oneshot::channel();
        self.tx.send(waiter).ok()?;
        answer.await.ok()
    }
}

async fn run(
    last_index: LastIndexFn,
    applied: impl Fn() -> Index,
    mut rx: mpsc::UnboundedReceiver<Waiter>,
    cancel: CancellationToken,
) {
    let mut round = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            waiter = rx.recv() => match waiter {
                Some(waiter) => waiter,
                None => return,
            },
        };
        round.push(first);
        while let Ok(waiter) = rx.try_recv() {
            round.push(waiter);
        }
        // Read after every waiter of this round arrived: an append
        // acknowledged before any of them is applied already or above this.
        let applied = applied();
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            r = last_index(applied + 1) => r.map(|last| last.unwrap_or(applied).max(applied)),
        };
        for waiter in round.drain(..) {
            let _ = waiter.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dorado_core::StoreError;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// A `last_index` whose calls block until the test releases them; call
    /// `n` (from 1) answers `100 * n`, or fails if the test says so.
    #[derive(Clone)]
    struct Gate {
        calls: Arc<AtomicU64>,
        froms: Arc<Mutex<Vec<Index>>>,
        release: Arc<tokio::sync::Semaphore>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Gate {
        fn new() -> Self {
            Gate {
                calls: Arc::default(),
                froms: Arc::default(),
                release: Arc::new(tokio::sync::Semaphore::new(0)),
                fail: Arc::default(),
            }
        }

        fn last_index(&self) -> LastIndexFn {
            let gate = self.clone();
            Arc::new(move |from| {
                let gate = gate.clone();
                Box::pin(async move {
                    let n = gate.calls.fetch_add(1, Ordering::SeqCst) + 1;
                    gate.froms.lock().unwrap().push(from);
                    gate.release.acquire().await.unwrap().forget();
                    if gate.fail.load(Ordering::SeqCst) {
                        Err(StoreError::Unavailable("etcd is down".into()))
                    } else {
                        Ok(Some(100 * n))
                    }
                })
            })
        }

        async fn wait_calls(&self, n: u64) {
            tokio::time::timeout(Duration::from_secs(5), async {
                while self.calls.load(Ordering::SeqCst) < n {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("last_index was not called {n} times within 5 s"));
        }
    }

    /// `ReadIndex::read`, split so the read has certainly arrived when this
    /// returns.
    fn enqueue(reads: &ReadIndex) -> oneshot::Receiver<StoreResult<Index>> {
        let (waiter, answer) = oneshot::channel();
        reads.tx.send(waiter).expect("read-index task is running");
        answer
    }

    #[tokio::test]
    async fn reads_that_arrive_during_a_call_share_the_next_one() {
        let gate = Gate::new();
        let cancel = CancellationToken::new();
        let (reads, task) = ReadIndex::spawn(gate.last_index(), || 7, cancel.clone());

        let a = enqueue(&reads);
        gate.wait_calls(1).await;
        // B, C and D arrive while call 1 is in flight: they must not take its
        // answer (it may predate them) but share call 2.
        let later: Vec<_> = (0..3).map(|_| enqueue(&reads)).collect();
        gate.release.add_permits(1);
        assert_eq!(a.await, Ok(Ok(100)));

        gate.wait_calls(2).await;
        gate.release.add_permits(1);
        for r in later {
            assert_eq!(r.await, Ok(Ok(200)));
        }
        assert_eq!(
            gate.calls.load(Ordering::SeqCst),
            2,
            "B, C and D shared one call"
        );
        assert_eq!(
            *gate.froms.lock().unwrap(),
            vec![8, 8],
            "reads start above applied"
        );
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn nothing_above_applied_means_applied() {
        let applied = Arc::new(AtomicU64::new(41));
        let seen = applied.clone();
        let last_index: LastIndexFn = Arc::new(|_| Box::pin(async { Ok(None) }));
        let (reads, _task) = ReadIndex::spawn(
            last_index,
            move || seen.load(Ordering::SeqCst),
            CancellationToken::new(),
        );
        assert_eq!(reads.read().await, Some(Ok(41)));
        applied.store(50, Ordering::SeqCst);
        assert_eq!(reads.read().await, Some(Ok(50)));
    }

    #[tokio::test]
    async fn a_failed_call_fails_every_read_of_its_round_and_the_next_round_retries() {
        let gate = Gate::new();
        let (reads, _task) = ReadIndex::spawn(gate.last_index(), || 0, CancellationToken::new());
        let a = enqueue(&reads);
        gate.wait_calls(1).await;
        let b = enqueue(&reads);
        gate.fail.store(true, Ordering::SeqCst);
        gate.release.add_permits(1);
        assert!(matches!(a.await, Ok(Err(StoreError::Unavailable(_)))));
        gate.wait_calls(2).await;
        gate.release.add_permits(1);
        assert!(matches!(b.await, Ok(Err(StoreError::Unavailable(_)))));
        gate.fail.store(false, Ordering::SeqCst);
        let c = enqueue(&reads);
        gate.wait_calls(3).await;
        gate.release.add_permits(1);
        assert_eq!(c.await, Ok(Ok(300)));
    }

    #[tokio::test]
    async fn reads_end_with_none_once_the_replica_stops() {
        let gate = Gate::new();
        let cancel = CancellationToken::new();
        let (reads, task) = ReadIndex::spawn(gate.last_index(), || 0, cancel.clone());
        let a = enqueue(&reads);
        gate.wait_calls(1).await;
        cancel.cancel();
        task.await.unwrap();
        assert!(a.await.is_err(), "a read in flight ends");
        assert_eq!(reads.read().await, None, "a new read is refused");
    }
}
