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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExportLabels {
    pub transport: &'static str,
    /// `acknowledged` (durable: committed, or fsync'd in the spool) or `refused`.
    pub outcome: &'static str,
}

/// Buckets of the export duration: 0.5 ms to ~16 s.
fn export_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
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
    pub export_seconds: Family<ExportLabels, Histogram, fn() -> Histogram>,
    pub inflight_bytes: Gauge,
    pub pending_spans: Gauge,
    pub spool: SpoolMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpoolRefusalLabels {
    pub reason: &'static str,
}

/// The spool's metrics (`--spool-dir`); all zero without a spool.
#[derive(Clone, Debug, Default)]
pub struct SpoolMetrics {
    pub appended_spans: Counter,
    pub fsyncs: Counter,
    pub drained_spans: Counter,
    pub dropped_spans: Counter,
    pub refusals: Family<SpoolRefusalLabels, Counter>,
    pub damaged_segments: Counter,
    pub damaged_bytes: Counter,
    pub backlog_bytes: Gauge,
    pub disk_bytes: Gauge,
    pub capacity_bytes: Gauge,
    pub oldest_unsent_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl SpoolMetrics {
    /// Counts an append refused for `reason` (`full`, `write_error`).
    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&SpoolRefusalLabels { reason }).inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "spool_appended_spans",
            "Spans made durable in the local spool (acknowledged)",
            self.appended_spans.clone(),
        );
        registry.register(
            "spool_fsyncs",
            "Spool writes made durable (one fdatasync each, shared by every request waiting)",
            self.fsyncs.clone(),
        );
        registry.register(
            "spool_drained_spans",
            "Spooled spans committed to PostgreSQL",
            self.drained_spans.clone(),
        );
        registry.register(
            "spool_dropped_spans",
            "Spooled spans PostgreSQL refused as invalid data (logged, not retried)",
            self.dropped_spans.clone(),
        );
        registry.register(
            "spool_refusals",
            "Appends refused: the spool full (--spool-max-bytes) or its disk failing",
            self.refusals.clone(),
        );
        registry.register(
            "spool_damaged_segments",
            "Spool segments found damaged (torn or corrupt tail); their intact records were kept",
            self.damaged_segments.clone(),
        );
        registry.register(
            "spool_damaged_bytes",
            "Spool bytes skipped as damaged",
            self.damaged_bytes.clone(),
        );
        registry.register(
            "spool_backlog_bytes",
            "Spooled record bytes not yet committed to PostgreSQL",
            self.backlog_bytes.clone(),
        );
        registry.register(
            "spool_disk_bytes",
            "Bytes of spool segment files on disk",
            self.disk_bytes.clone(),
        );
        registry.register(
            "spool_capacity_bytes",
            "The spool's limit (--spool-max-bytes); 0 without a spool",
            self.capacity_bytes.clone(),
        );
        registry.register(
            "spool_oldest_unsent_age_seconds",
            "Age of the oldest spooled span not yet committed to PostgreSQL",
            self.oldest_unsent_seconds.clone(),
        );
    }
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
            export_seconds: Family::new_with_constructor(export_histogram),
            inflight_bytes: Gauge::default(),
            pending_spans: Gauge::default(),
            spool: SpoolMetrics::default(),
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
            "export_duration_seconds",
            "Time from an OTLP request's arrival to its answer: acknowledged once durable, or refused",
            self.export_seconds.clone(),
        );
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
        self.spool.register(registry);
    }
}
