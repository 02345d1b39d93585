//! The core loop every protocol runs, written once.
//!
//! A replica's core loop owns its protocol state and its [`Applier`] and is
//! the only place either changes, so it must never block and must keep its
//! inputs in a fixed priority: stop first, then its own tasks' results
//! (append outcomes, timers), then client requests, then what it learned from
//! the store (drained in batches, so a burst of log entries is applied as one
//! batch but cannot starve control messages), then the tick. The order is
//! also what makes the simulation reproducible: a `biased` select polls in a
//! fixed order, an unbiased one in an order tokio draws at random.
//!
//! Drain (graceful shutdown) is the same in every protocol: a drain request
//! waits until the protocol says nothing of this replica is being ordered
//! ([`CoreLoop::is_idle`]); [`CoreLoop::check_drained`] answers the waiters
//! once that holds. Protocols call it wherever their idleness may change.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::applier::Applier;
use super::handle::{ReplyTo, Request};
use crate::node::SubmitError;
use dorado_core::{Command, StateMachine};

/// Drain requests waiting for the replica to have nothing in flight.
#[derive(Debug, Default)]
pub struct DrainWaiters(Vec<oneshot::Sender<()>>);

/// Learned items handled in one go before control messages are polled again.
const LEARN_BATCH: usize = 256;

/// Client requests handled in one go before other inputs are polled again.
const REQUEST_BATCH: usize = 4096;

/// One protocol's core loop; [`run_core`] drives it.
pub trait CoreLoop {
    /// The state machine its applier runs.
    type Machine: StateMachine + Send + 'static;
    /// Results the loop's own tasks send back (append outcomes, ...).
    type Msg: Send;
    /// What the protocol learns from the store (log entries, records).
    type Learned: Send;

    /// A result from one of the loop's own tasks.
    fn handle(&mut self, msg: Self::Msg);
    /// Order `command` and answer `reply` once it is applied here.
    fn submit(&mut self, command: Command, reply: ReplyTo);
    /// Order commands that arrived together, each answered like
    /// [`CoreLoop::submit`]. A protocol that batches puts them in the same
    /// batch; by default each is submitted on its own.
    fn submit_all(&mut self, commands: Vec<(Command, ReplyTo)>) {
        for (command, reply) in commands {
            self.submit(command, reply);
        }
    }
    /// Order a switch to module `to` and answer `reply` once it is applied
    /// here. Protocols without module upgrades refuse.
    fn propose_upgrade(&mut self, to: String, reply: ReplyTo) {
        let _ = to;
        let _ = reply.send(Err(SubmitError::Unsupported(
            "this ordering protocol does not order module upgrades",
        )));
    }
    /// One item learned from the store.
    fn learn(&mut self, item: Self::Learned);
    /// After a batch of [`CoreLoop::learn`] calls: apply what became ready.
    fn after_learning(&mut self);
    /// The periodic tick.
    fn tick(&mut self);
    /// Nothing submitted here is still being ordered or awaiting its reply.
    fn is_idle(&self) -> bool;
    /// The loop's applier.
    fn applier(&mut self) -> &mut Applier<Self::Machine>;
    /// The loop's drain waiters.
    fn drains(&mut self) -> &mut DrainWaiters;
    /// The loop is stopping (before the applier closes): give up any role.
    fn stopping(&mut self) {}

    /// Answer every drain waiter if the replica is idle now.
    fn check_drained(&mut self) {
        if self.drains().0.is_empty() || !self.is_idle() {
            return;
        }
        for w in self.drains().0.drain(..) {
            let _ = w.send(());
        }
    }
}

/// The channels a core loop reads, besides the stop token.
#[derive(Debug)]
pub struct CoreInputs<Msg, Learned> {
    /// Results of the loop's own tasks.
    pub msgs: mpsc::UnboundedReceiver<Msg>,
    /// Client requests from the replica's handles.
    pub requests: mpsc::UnboundedReceiver<Request>,
    /// What the store-reading tasks learned.
    pub learned: mpsc::Receiver<Learned>,
}

/// Run `core` until `stop` is cancelled or an input channel closes; then
/// [`CoreLoop::stopping`] and close the applier (which flushes the trace).
pub async fn run_core<C: CoreLoop>(
    mut core: C,
    inputs: CoreInputs<C::Msg, C::Learned>,
    tick_every: Duration,
    stop: CancellationToken,
) {
    let CoreInputs {
        mut msgs,
        mut requests,
        mut learned,
    } = inputs;
    let mut tick = tokio::time::interval(tick_every);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            msg = msgs.recv() => match msg {
                Some(m) => core.handle(m),
                None => break,
            },
            request = requests.recv() => match request {
                Some(r) => serve_waiting(&mut core, r, &mut requests),
                None => break,
            },
            item = learned.recv() => match item {
                Some(item) => {
                    core.learn(item);
                    for _ in 1..LEARN_BATCH {
                        match learned.try_recv() {
                            Ok(item) => core.learn(item),
                            Err(_) => break,
                        }
                    }
                    core.after_learning();
                }
                None => break,
            },
            _ = tick.tick() => core.tick(),
        }
    }
    core.stopping();
    core.applier().close();
}

/// Serve `first` and every request already waiting behind it (up to
/// [`REQUEST_BATCH`]); consecutive submits go to [`CoreLoop::submit_all`]
/// together, so commands that arrived while the loop was busy leave in one
/// batch instead of the first alone.
fn serve_waiting<C: CoreLoop>(
    core: &mut C,
    first: Request,
    requests: &mut mpsc::UnboundedReceiver<Request>,
) {
    let mut submits = Vec::new();
    let mut next = Some(first);
    let mut taken = 1;
    while let Some(request) = next.take() {
        match request {
            Request::Submit { command, reply } => submits.push((command, reply)),
            other => {
                if !submits.is_empty() {
                    core.submit_all(std::mem::take(&mut submits));
                }
                serve(core, other);
            }
        }
        if taken < REQUEST_BATCH {
            next = requests.try_recv().ok();
            taken += 1;
        }
    }
    if !submits.is_empty() {
        core.submit_all(submits);
    }
}

fn serve<C: CoreLoop>(core: &mut C, request: Request) {
    match request {
        Request::Submit { command, reply } => core.submit(command, reply),
        Request::ProposeUpgrade { to, reply } => core.propose_upgrade(to, reply),
        Request::Drain { reply } => {
            core.drains().0.push(reply);
            core.check_drained();
        }
        Request::Read(r) => core.applier().serve(r),
    }
}
