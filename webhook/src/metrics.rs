//! Prometheus metrics of the webhook (served on the admin port at `/metrics`).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a request got no AdmissionReview answer (or an `invalid` one).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ErrorReason {
    /// Content-Type was not `application/json`.
    ContentType,
    /// Body larger than the limit.
    TooLarge,
    /// Body could not be read (client went away mid-body).
    BodyRead,
    /// Body is not a v1 AdmissionReview.
    BadRequest,
    /// Answered with an `invalid` AdmissionReview (malformed request part).
    Invalid,
}

impl ErrorReason {
    /// Label value (snake case).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::ContentType => "content_type",
            ErrorReason::TooLarge => "too_large",
            ErrorReason::BodyRead => "body_read",
            ErrorReason::BadRequest => "bad_request",
            ErrorReason::Invalid => "invalid",
        }
    }
}

impl EncodeLabelValue for ErrorReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Label set of `dorado_webhook_errors_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The reason.
    pub reason: ErrorReason,
}

/// Result of a certificate reload attempt.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ReloadResult {
    /// A new pair was loaded.
    Success,
    /// A changed pair could not be read or parsed; the old pair stays in use.
    Failure,
}

impl ReloadResult {
    /// Label value (snake case).
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
        }
    }
}

impl EncodeLabelValue for ReloadResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Label set of `dorado_webhook_certificate_reloads_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// The result.
    pub result: ReloadResult,
}

/// All webhook metrics and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    /// Every request to `/mutate`.
    pub requests: Counter,
    /// Reviews answered with a patch.
    pub mutated: Counter,
    /// Reviews allowed unchanged.
    pub skipped: Counter,
    /// Reviews denied.
    pub denied: Counter,
    /// Requests answered with an HTTP error or an `invalid` review, by reason.
    pub errors: Family<ErrorLabels, Counter>,
    /// Time to answer a `/mutate` request (body read + decision + encoding).
    pub duration: Histogram,
    /// Certificate reload attempts, by result.
    pub cert_reloads: Family<ReloadLabels, Counter>,
    /// 1 while a serving certificate is loaded.
    pub cert_loaded: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers all metrics under the `dorado_webhook` prefix.
    pub fn new() -> Self {
        let requests = Counter::default();
        let mutated = Counter::default();
        let skipped = Counter::default();
        let denied = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        // 50 µs .. ~0.8 s
        let duration = Histogram::new(exponential_buckets(0.000_05, 2.0, 15));
        let cert_reloads = Family::<ReloadLabels, Counter>::default();
        let cert_loaded = Gauge::default();
        let mut registry = Registry::with_prefix("dorado_webhook");
        registry.register("requests", "Requests to /mutate", requests.clone());
        registry.register("mutated", "Pods rewritten", mutated.clone());
        registry.register("skipped", "Reviews allowed unchanged", skipped.clone());
        registry.register("denied", "Pods denied", denied.clone());
        registry.register(
            "errors",
            "Requests answered with an HTTP error or an invalid review",
            errors.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time to answer a /mutate request",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        registry.register(
            "certificate_reloads",
            "Serving certificate reload attempts",
            cert_reloads.clone(),
        );
        registry.register(
            "certificate_loaded",
            "1 while a serving certificate is loaded",
            cert_loaded.clone(),
        );
        Self {
            requests,
            mutated,
            skipped,
            denied,
            errors,
            duration,
            cert_reloads,
            cert_loaded,
            registry,
        }
    }

    /// Counts one error.
    pub fn error(&self, reason: ErrorReason) {
        self.errors.get_or_create(&ErrorLabels { reason }).inc();
    }

    /// Counts one reload attempt.
    pub fn reload(&self, result: ReloadResult) {
        self.cert_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
