//! The lease every replica keeps, whatever its protocol: it makes the replica
//! a live member (its `members/<replica>` record, and DORADO's leader key,
//! vanish with it), so a crashed replica is noticed after one TTL.
//!
//! When to renew, how long a keep-alive may take and when the lease counts
//! as lost are decided by [`LeaseTimer`] in `dorado-core`; this task performs
//! those decisions against a [`LeaseStore`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dorado_core::decide::{KeepAlive, LeaseDecision, LeaseTimer};
use dorado_core::{LeaseId, MemberRecord, Store, StoreError, StoreResult};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::health::Health;
use super::tasks::until_stopped;

/// What the lease task needs from a store.
///
/// # Correctness requirements
/// * `keep_alive` answers `Err(StoreError::LeaseExpired)` once the lease no
///   longer exists, and any other error only when the outcome is unknown.
/// * `revoke_lease` deletes every key bound to the lease (revoking an unknown
///   lease is not an error).
/// * `publish_member` binds the record to the lease: it vanishes with it.
///
/// Every [`Store`] is one (the DORADO key space); the classic baseline
/// implements it over its own keys.
pub trait LeaseStore: Send + Sync + 'static {
    /// Grant a lease that expires `ttl` after its last keep-alive.
    fn grant_lease(&self, ttl: Duration) -> impl Future<Output = StoreResult<LeaseId>> + Send;
    /// Refresh a lease.
    fn keep_alive(&self, lease: LeaseId) -> impl Future<Output = StoreResult<()>> + Send;
    /// Revoke a lease, deleting every key bound to it.
    fn revoke_lease(&self, lease: LeaseId) -> impl Future<Output = StoreResult<()>> + Send;
    /// Write this replica's member record, bound to `lease`.
    fn publish_member(
        &self,
        lease: LeaseId,
        replica: &str,
        record: &MemberRecord,
    ) -> impl Future<Output = StoreResult<()>> + Send;
}

impl<S: Store> LeaseStore for S {
    fn grant_lease(&self, ttl: Duration) -> impl Future<Output = StoreResult<LeaseId>> + Send {
        Store::grant_lease(self, ttl)
    }

    fn keep_alive(&self, lease: LeaseId) -> impl Future<Output = StoreResult<()>> + Send {
        Store::keep_alive(self, lease)
    }

    fn revoke_lease(&self, lease: LeaseId) -> impl Future<Output = StoreResult<()>> + Send {
        Store::revoke_lease(self, lease)
    }

    fn publish_member(
        &self,
        lease: LeaseId,
        replica: &str,
        record: &MemberRecord,
    ) -> impl Future<Output = StoreResult<()>> + Send {
        Store::publish_member(self, lease, replica, record)
    }
}

/// Backoff for store retries: fast at first, capped at one second.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << attempt.min(5)).min(1000))
}

/// Retry `op` with [`backoff`] while the store is unreachable or out of
/// space (states to report and wait out at startup, not reasons to crash);
/// any other outcome is returned.
pub async fn retry_unreachable<T, F, Fut>(what: &str, mut op: F) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<T>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(e @ (StoreError::Unavailable(_) | StoreError::NoSpace(_))) => {
                tracing::warn!(error = %e, "{what}: store not reachable yet; retrying");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Hold a lease until `stop`: grant, keep alive ([`LeaseTimer`]), publish the
/// member record after each renewal, get a new lease when it is lost.
///
/// `lease_tx` carries the lease while it is held (`None` otherwise);
/// `on_lost` runs whenever a held lease is gone (expired, or resigned). On
/// [`Health::resign`] or [`Health::set_fatal`] the lease is revoked at once;
/// a fatal replica takes no new one until restarted.
pub async fn lease_task<L: LeaseStore>(
    store: Arc<L>,
    health: Arc<Health>,
    lease_tx: watch::Sender<Option<LeaseId>>,
    on_lost: impl Fn() + Send + Sync + 'static,
    stop: CancellationToken,
) {
    let ttl = health.config.lease_ttl;
    let lost = |health: &Health| {
        let _ = lease_tx.send(None);
        health.set_lease_held(false);
        on_lost();
    };
    let mut attempt = 0;
    'lease: while !stop.is_cancelled() {
        let Some(lease) = until_stopped(&stop, store.grant_lease(ttl)).await else {
            return;
        };
        let lease = match lease {
            Ok(l) => l,
            Err(e) => {
                health.set_store_error(Some(&e));
                health.metrics.store_errors.inc();
                tracing::warn!(error = %e, "cannot get a lease; retrying");
                if until_stopped(&stop, tokio::time::sleep(backoff(attempt)))
                    .await
                    .is_none()
                {
                    return;
                }
                attempt += 1;
                continue;
            }
        };
        attempt = 0;
        let _ = lease_tx.send(Some(lease));
        health.set_lease_held(true);
        let mut timer = LeaseTimer::new(ttl, Instant::now().into_std());
        let period = timer.period();
        loop {
            let record = health.member_record();
            // How long the keep-alive may take and what its answer means is
            // `LeaseTimer`'s decision; publishing the member record is best effort.
            let budget = timer.budget(Instant::now().into_std());
            let Some(result) =
                until_stopped(&stop, tokio::time::timeout(budget, store.keep_alive(lease))).await
            else {
                return;
            };
            let result = result
                .unwrap_or_else(|_| Err(StoreError::Unavailable("keep-alive timed out".into())));
            let outcome = match &result {
                Ok(()) => KeepAlive::Ok,
                Err(StoreError::LeaseExpired(_)) => KeepAlive::Expired,
                Err(e) => {
                    health.metrics.store_errors.inc();
                    tracing::warn!(error = %e, "lease keep-alive failed");
                    KeepAlive::Failed
                }
            };
            match timer.on_keep_alive(Instant::now().into_std(), outcome) {
                LeaseDecision::Renewed => {
                    let publish = tokio::time::timeout(
                        period,
                        store.publish_member(lease, &health.config.replica, &record),
                    );
                    match until_stopped(&stop, publish).await {
                        None => return,
                        Some(Ok(Ok(()))) => {}
                        Some(Ok(Err(e))) => {
                            tracing::debug!(error = %e, "could not publish the member record");
                        }
                        Some(Err(_)) => tracing::debug!("publishing the member record timed out"),
                    }
                }
                LeaseDecision::Retry => {}
                LeaseDecision::Lost => {
                    tracing::warn!("lease lost; getting a new one");
                    break;
                }
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
                _ = health.resign_requested() => {
                    tracing::warn!("resigning: revoking the lease so another replica leads");
                    lost(&health);
                    match until_stopped(&stop, store.revoke_lease(lease)).await {
                        None => return,
                        Some(Ok(())) => {}
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "could not revoke the lease; it will expire by itself");
                        }
                    }
                    if health.is_fatal() {
                        // Never a member again until restarted.
                        return stop.cancelled().await;
                    }
                    continue 'lease;
                }
            }
        }
        lost(&health);
    }
}
