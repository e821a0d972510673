//! The collector's own metrics: every refusal and rejection is counted.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    pub transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub transport: &'static str,
    pub reason: &'static str,
}

/// Collector metrics, registered under the `tracepost` prefix.
#[derive(Clone, Debug)]
pub struct CollectorMetrics {
    pub requests: Family<TransportLabels, Counter>,
    pub spans_received: Family<TransportLabels, Counter>,
    pub spans_rejected: Family<ReasonLabels, Counter>,
    pub requests_refused: Family<RefusalLabels, Counter>,
    pub spans_refused: Family<ReasonLabels, Counter>,
    pub spans_committed: Counter,
    pub batches_committed: Counter,
    pub batch_write_retries: Counter,
    pub batch_write_failures: Counter,
    pub batch_outcome_unknown: Counter,
    pub requests_expired: Counter,
    pub spans_failed: Counter,
    pub batch_write_seconds: Histogram,
    pub batch_spans: Histogram,
    pub inflight_bytes: Gauge,
    pub pending_spans: Gauge,
}

impl Default for CollectorMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            spans_received: Family::default(),
            spans_rejected: Family::default(),
            requests_refused: Family::default(),
            spans_refused: Family::default(),
            spans_committed: Counter::default(),
            batches_committed: Counter::default(),
            batch_write_retries: Counter::default(),
            batch_write_failures: Counter::default(),
            batch_outcome_unknown: Counter::default(),
            requests_expired: Counter::default(),
            spans_failed: Counter::default(),
            batch_write_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            batch_spans: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
            inflight_bytes: Gauge::default(),
            pending_spans: Gauge::default(),
        }
    }
}

impl CollectorMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("tracepost");
        registry.register("otlp_requests", "OTLP export requests received", self.requests.clone());
        registry.register(
            "spans_received",
            "Spans received in OTLP requests",
            self.spans_received.clone(),
        );
        registry.register(
            "spans_rejected",
            "Spans rejected as invalid (reported in partial_success)",
            self.spans_rejected.clone(),
        );
        registry.register(
            "requests_refused",
            "OTLP requests refused whole (overload, size, decoding, storage unavailable)",
            self.requests_refused.clone(),
        );
        registry.register(
            "spans_refused",
            "Valid spans refused with a retryable error",
            self.spans_refused.clone(),
        );
        registry.register(
            "spans_committed",
            "Spans committed to PostgreSQL",
            self.spans_committed.clone(),
        );
        registry.register(
            "batches_committed",
            "Batches committed to PostgreSQL",
            self.batches_committed.clone(),
        );
        registry.register(
            "batch_write_retries",
            "Batch write attempts that failed and were retried",
            self.batch_write_retries.clone(),
        );
        registry.register(
            "batch_write_failures",
            "Batches given up after the retry budget (their requests got a retryable error)",
            self.batch_write_failures.clone(),
        );
        registry.register(
            "batch_outcome_unknown",
            "Batches whose COMMIT PostgreSQL never answered (their clients got a retryable error; a retry is read once)",
            self.batch_outcome_unknown.clone(),
        );
        registry.register(
            "requests_expired",
            "Requests refused unwritten because their deadline (--export-timeout) passed before a writer was free",
            self.requests_expired.clone(),
        );
        registry.register(
            "spans_failed",
            "Spans whose batch could not be committed (their clients got an error and were not acknowledged)",
            self.spans_failed.clone(),
        );
        registry.register(
            "batch_write_duration_seconds",
            "Time to COPY and commit one batch",
            self.batch_write_seconds.clone(),
        );
        registry.register("batch_spans", "Spans per committed batch", self.batch_spans.clone());
        registry.register(
            "inflight_bytes",
            "Encoded span bytes admitted and not yet committed",
            self.inflight_bytes.clone(),
        );
        registry.register(
            "pending_spans",
            "Spans admitted and not yet committed",
            self.pending_spans.clone(),
        );
    }
}
