//! Prometheus metrics of one replica (`GET /metrics`).
//!
//! Operators alert on role flapping, applied-index lag and append latency, so
//! those are first-class here; everything is updated from the apply loop or
//! the append tasks with atomic operations only.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// All metrics of a replica.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Commands applied (including rejected and duplicates).
    pub commands_applied: Counter,
    /// Commands rejected by the state machine or as stale.
    pub commands_rejected: Counter,
    /// Log entries applied.
    pub entries_applied: Counter,
    /// Commands per appended batch.
    pub batch_size: Histogram,
    /// Seconds from append start to the store's answer.
    pub append_latency: Histogram,
    /// 1 while leader.
    pub is_leader: Gauge,
    /// Highest applied index.
    pub applied_index: Gauge,
    /// Highest committed index known.
    pub commit_index: Gauge,
    /// 1 while ready.
    pub ready: Gauge,
    /// Leader terms won by this replica.
    pub elections_won: Counter,
    /// Snapshots written by this replica.
    pub snapshots_written: Counter,
    /// Store operations that failed.
    pub store_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register every metric.
    pub fn new() -> Self {
        let mut m = Metrics {
            commands_applied: Counter::default(),
            commands_rejected: Counter::default(),
            entries_applied: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            append_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            is_leader: Gauge::default(),
            applied_index: Gauge::default(),
            commit_index: Gauge::default(),
            ready: Gauge::default(),
            elections_won: Counter::default(),
            snapshots_written: Counter::default(),
            store_errors: Counter::default(),
            registry: Registry::with_prefix("dorado"),
        };
        let registry = &mut m.registry;
        registry.register(
            "commands_applied",
            "Commands applied, including rejected ones",
            m.commands_applied.clone(),
        );
        registry.register(
            "commands_rejected",
            "Commands rejected deterministically",
            m.commands_rejected.clone(),
        );
        registry.register(
            "entries_applied",
            "Log entries applied",
            m.entries_applied.clone(),
        );
        registry.register(
            "batch_size_commands",
            "Commands per appended batch",
            m.batch_size.clone(),
        );
        registry.register(
            "append_latency_seconds",
            "Latency of fenced appends to the store",
            m.append_latency.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica leads its group",
            m.is_leader.clone(),
        );
        registry.register(
            "applied_index",
            "Highest applied log index",
            m.applied_index.clone(),
        );
        registry.register(
            "commit_index",
            "Highest committed log index known",
            m.commit_index.clone(),
        );
        registry.register("ready", "1 while the replica is ready", m.ready.clone());
        registry.register("elections_won", "Leader terms won", m.elections_won.clone());
        registry.register(
            "snapshots_written",
            "Snapshots stored",
            m.snapshots_written.clone(),
        );
        registry.register(
            "store_errors",
            "Failed store operations",
            m.store_errors.clone(),
        );
        m
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Convert an index to a gauge value.
pub fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
