//! The one ingest function both transports call.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::body::{self, Encoding};
use crate::convert::Allowance;
use crate::convert::{ConvertConfig, Converted};
use crate::json::{self, convert_json_within, JsonError};
use crate::metrics::{ExportLabels, ReasonLabels, RefusalLabels, TransportLabels};
use crate::pipeline::BudgetError;
use crate::pipeline::{IngestError, Pipeline, Reservation};
use crate::wire::{self, convert_protobuf_within};
use crate::CollectorMetrics;

/// The transport a request came in on (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
        }
    }
}

/// The payload encodings OTLP/HTTP carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadFormat {
    Protobuf,
    Json,
}

/// Why a request was refused whole. Messages are for clients: they never carry internal detail (storage
/// errors are logged, not returned).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot decode request: {0}")]
    Decode(String),
    #[error("request too large: {0}")]
    TooLarge(String),
    #[error("request timed out: {0}")]
    Timeout(String),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

impl ExportError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Decode(_) => "decode_error",
            Self::TooLarge(_) => "too_large",
            Self::Timeout(_) => "body_timeout",
            Self::Ingest(error) => error.label(),
        }
    }
}

/// The limits every OTLP request is held to, from its first byte. Each is a setting of the binary.
#[derive(Clone, Debug)]
pub struct IngestLimits {
    /// Cap on a request body, compressed and decompressed.
    pub max_request_bytes: usize,
    /// Requests being decoded or written at once, per process (taken once the body is in, so slow senders hold none); more wait for the admission wait.
    pub max_concurrent_requests: usize,
    /// The whole body must arrive within this time of the request's start.
    pub body_read_timeout: Duration,
    /// Every request is answered (acknowledged or refused) within this time of its start: shorter than the
    /// 10 s OTLP clients wait by default.
    pub export_timeout: Duration,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_request_bytes: crate::DEFAULT_MAX_REQUEST_BYTES,
            max_concurrent_requests: 64,
            body_read_timeout: Duration::from_secs(5),
            export_timeout: Duration::from_secs(8),
        }
    }
}

/// An OTLP request body as a receiver hands it over, unread.
#[derive(Debug)]
pub struct ExportRequest {
    pub body: Body,
    /// The declared length, if any (checked against the cap before reading).
    pub content_length: Option<u64>,
    pub encoding: Encoding,
    /// gRPC: the body is one length-prefixed message whose compressed flag says whether `encoding` applies.
    pub grpc_framed: bool,
    pub format: PayloadFormat,
}

/// Converts, admits and commits OTLP export requests.
#[derive(Clone, Debug)]
pub struct Ingest {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pipeline: Pipeline,
    convert: ConvertConfig,
    metrics: CollectorMetrics,
    limits: IngestLimits,
    requests: Arc<Semaphore>,
}

impl Ingest {
    pub fn new(pipeline: Pipeline, convert: ConvertConfig, metrics: CollectorMetrics, limits: IngestLimits) -> Self {
        let requests = Arc::new(Semaphore::new(limits.max_concurrent_requests.max(1)));
        Self {
            inner: Arc::new(Inner {
                pipeline,
                convert,
                metrics,
                limits,
                requests,
            }),
        }
    }

    /// The cap on compressed and on decompressed request bodies.
    pub fn max_request_bytes(&self) -> usize {
        self.inner.limits.max_request_bytes
    }

    /// Reads, decodes and exports one OTLP request under the limits: a request slot, the body reserved from
    /// the memory budget as it arrives and read before the body deadline, decompression and decoding on the
    /// blocking pool with their memory reserved first, and an answer before the export deadline.
    pub async fn export(
        &self,
        request: ExportRequest,
        transport: Transport,
    ) -> Result<ExportTraceServiceResponse, ExportError> {
        self.count_request(transport);
        let started = Instant::now();
        let outcome = self.export_inner(request, transport).await;
        if let Err(error) = &outcome {
            self.count_refused_request(transport, error);
        }
        self.inner
            .metrics
            .export_seconds
            .get_or_create(&ExportLabels {
                transport: transport.label(),
                outcome: if outcome.is_ok() { "acknowledged" } else { "refused" },
            })
            .observe(started.elapsed().as_secs_f64());
        outcome
    }

    async fn export_inner(
        &self,
        request: ExportRequest,
        transport: Transport,
    ) -> Result<ExportTraceServiceResponse, ExportError> {
        let inner = &self.inner;
        let started = Instant::now();
        let deadline = started + inner.limits.export_timeout;
        let budget = inner.pipeline.budget().clone();
        let limit = inner.limits.max_request_bytes;
        let mut reservation = Reservation::default();
        let read_deadline = deadline.min(started + inner.limits.body_read_timeout);
        let raw = body::read(
            request.body,
            request.content_length,
            limit,
            &budget,
            &mut reservation,
            read_deadline,
        )
        .await?;
        // The slot is taken once the body is in: slow clients hold only the memory they sent, never a slot.
        let _slot = tokio::time::timeout(inner.pipeline.admission_wait(), inner.requests.clone().acquire_owned())
            .await
            .map_err(|_| ExportError::Ingest(IngestError::Overloaded))?
            .map_err(|_| ExportError::Ingest(IngestError::ShuttingDown))?;
        let (message, encoding) = if request.grpc_framed {
            let (message, compressed) = body::unframe_grpc(&raw)?;
            match (compressed, request.encoding) {
                (false, _) => (message, Encoding::Identity),
                (true, Encoding::Identity) => {
                    return Err(ExportError::Decode(
                        "compressed gRPC message without a grpc-encoding header".into(),
                    ))
                }
                (true, encoding) => (message, encoding),
            }
        } else {
            (raw, request.encoding)
        };
        let format = request.format;
        let this = self.inner.clone();
        let runtime = tokio::runtime::Handle::current();
        let converted = tokio::task::spawn_blocking(move || {
            let compressed_len = message.len();
            let message = body::decompress(encoding, message, limit, &budget, &runtime, &mut reservation, deadline)?;
            let decoded_len = if encoding == Encoding::Identity {
                0
            } else {
                message.len()
            };
            // Decoding's own structures (JSON: counted before decoding) and a first allowance for the rows,
            // which grows from the budget as conversion writes them.
            let (decoding, rows) = match format {
                PayloadFormat::Protobuf => (0, message.len().saturating_mul(2).saturating_add(DECODE_HEADROOM)),
                PayloadFormat::Json => (
                    json::decode_cost(&message),
                    message.len().saturating_add(DECODE_HEADROOM),
                ),
            };
            let held = compressed_len + decoded_len + decoding;
            budget
                .reserve_blocking(&runtime, &mut reservation, held + rows, deadline)
                .map_err(|error| body::budget_error(error, "decoding the request"))?;
            let mut refused = None;
            let mut grow =
                |total: usize| match budget.reserve_blocking(&runtime, &mut reservation, held + total, deadline) {
                    Ok(()) => true,
                    Err(error) => {
                        refused = Some(error);
                        false
                    }
                };
            let mut allowance = Allowance::new(rows, &mut grow);
            let converted = match format {
                PayloadFormat::Protobuf => {
                    convert_protobuf_within(&message, &this.convert, &mut allowance).map_err(|error| match error {
                        wire::OVER_BUDGET => None,
                        error => Some(ExportError::Decode(format!("invalid protobuf: {error}"))),
                    })
                }
                PayloadFormat::Json => {
                    convert_json_within(&message, &this.convert, &mut allowance).map_err(|error| match error {
                        JsonError::OverBudget(_) => None,
                        error => Some(ExportError::Decode(error.to_string())),
                    })
                }
            };
            let converted = converted.map_err(|error| {
                error.unwrap_or_else(|| {
                    body::budget_error(refused.unwrap_or(BudgetError::TooLarge), "encoding the request's spans")
                })
            })?;
            Ok((converted, reservation))
        })
        .await
        .unwrap_or_else(|_| Err(ExportError::Decode("the request could not be processed".into())))?;
        self.finish(converted.0, converted.1, deadline, transport).await
    }

    /// Counts a request refused before it reached [`Ingest::export`] (content type, encoding).
    pub fn count_refusal(&self, transport: Transport, error: &ExportError) {
        self.count_request(transport);
        self.count_refused_request(transport, error);
    }

    fn count_request(&self, transport: Transport) {
        self.inner
            .metrics
            .requests
            .get_or_create(&TransportLabels {
                transport: transport.label(),
            })
            .inc();
    }

    fn count_refused_request(&self, transport: Transport, error: &ExportError) {
        self.inner
            .metrics
            .requests_refused
            .get_or_create(&RefusalLabels {
                transport: transport.label(),
                reason: error.label(),
            })
            .inc();
    }

    async fn finish(
        &self,
        converted: Converted,
        reservation: Reservation,
        deadline: Instant,
        transport: Transport,
    ) -> Result<ExportTraceServiceResponse, ExportError> {
        let metrics = &self.inner.metrics;
        let rejected = converted.rejected_count();
        let accepted = converted.encoded.span_count as u64;
        metrics
            .spans_received
            .get_or_create(&TransportLabels {
                transport: transport.label(),
            })
            .inc_by(accepted + rejected);
        for (reason, count) in &converted.rejected {
            metrics
                .spans_rejected
                .get_or_create(&ReasonLabels { reason: reason.label() })
                .inc_by(*count);
        }
        let message = converted.rejection_message();
        let span_metrics = converted.metrics;
        if let Err(error) = self
            .inner
            .pipeline
            .submit(converted.encoded, reservation, deadline)
            .await
        {
            self.inner.convert.catalog.forget(&converted.operation_keys);
            let error = ExportError::from(error);
            metrics
                .spans_refused
                .get_or_create(&ReasonLabels { reason: error.label() })
                .inc_by(accepted);
            return Err(error);
        }
        // Durable now: count the spans in the RED metrics and the service graph (once, even if re-sent).
        if let (Some(request), Some(span_metrics)) = (span_metrics, &self.inner.convert.span_metrics) {
            span_metrics.record(request);
        }
        let partial_success = (rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: i64::try_from(rejected).unwrap_or(i64::MAX),
            error_message: message,
        });
        Ok(ExportTraceServiceResponse { partial_success })
    }
}

/// Room for a conversion's small per-request buffers (the scratch detail, operation rows) in its first row
/// allowance, both formats.
const DECODE_HEADROOM: usize = 4 << 10;
