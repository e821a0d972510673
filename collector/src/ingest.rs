//! The one ingest function both transports call.

use std::sync::Arc;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use crate::convert::{convert_request, ConvertConfig, Converted};
use crate::metrics::{ReasonLabels, RefusalLabels, TransportLabels};
use crate::pipeline::{IngestError, Pipeline};
use crate::wire::convert_protobuf;
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

/// Why a request was refused whole.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot decode request: {0}")]
    Decode(String),
    #[error("request too large: {0}")]
    TooLarge(String),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

impl ExportError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Decode(_) => "decode_error",
            Self::TooLarge(_) => "too_large",
            Self::Ingest(error) => error.label(),
        }
    }
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
    max_request_bytes: usize,
}

impl Ingest {
    pub fn new(
        pipeline: Pipeline,
        convert: ConvertConfig,
        metrics: CollectorMetrics,
        max_request_bytes: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pipeline,
                convert,
                metrics,
                max_request_bytes,
            }),
        }
    }

    /// The cap on compressed and on decompressed request bodies.
    pub fn max_request_bytes(&self) -> usize {
        self.inner.max_request_bytes
    }

    /// Decodes and exports an OTLP body (already decompressed): protobuf through the wire fast path,
    /// JSON through the generated types.
    pub async fn export_bytes(
        &self,
        body: Bytes,
        format: PayloadFormat,
        transport: Transport,
    ) -> Result<ExportTraceServiceResponse, ExportError> {
        let inner = self.inner.clone();
        let converted = self
            .run_blocking(move || match format {
                PayloadFormat::Protobuf => convert_protobuf(&body, &inner.convert)
                    .map_err(|error| ExportError::Decode(format!("invalid protobuf: {error}"))),
                PayloadFormat::Json => {
                    let request: ExportTraceServiceRequest = serde_json::from_slice(&body)
                        .map_err(|error| ExportError::Decode(format!("invalid json: {error}")))?;
                    Ok(convert_request(request, &inner.convert))
                }
            })
            .await;
        self.finish(converted, transport).await
    }

    /// Counts a request refused before it reached [`Ingest::export`] (size, encoding, content type).
    pub fn count_refusal(&self, transport: Transport, error: &ExportError) {
        self.inner
            .metrics
            .requests
            .get_or_create(&TransportLabels {
                transport: transport.label(),
            })
            .inc();
        self.count_refused_request(transport, error);
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

    /// Decoding and conversion are CPU work: keep them off the async workers.
    async fn run_blocking(
        &self,
        work: impl FnOnce() -> Result<Converted, ExportError> + Send + 'static,
    ) -> Result<Converted, ExportError> {
        tokio::task::spawn_blocking(work)
            .await
            .unwrap_or_else(|error| Err(ExportError::Decode(format!("request could not be processed: {error}"))))
    }

    async fn finish(
        &self,
        converted: Result<Converted, ExportError>,
        transport: Transport,
    ) -> Result<ExportTraceServiceResponse, ExportError> {
        let metrics = &self.inner.metrics;
        let converted = match converted {
            Ok(converted) => converted,
            Err(error) => {
                metrics
                    .requests
                    .get_or_create(&TransportLabels {
                        transport: transport.label(),
                    })
                    .inc();
                self.count_refused_request(transport, &error);
                return Err(error);
            }
        };
        for (reason, count) in &converted.rejected {
            metrics
                .spans_rejected
                .get_or_create(&ReasonLabels { reason: reason.label() })
                .inc_by(*count);
        }
        let rejected = converted.rejected_count();
        let message = converted.rejection_message();
        let accepted = converted.encoded.span_count as u64;
        let span_metrics = converted.metrics;
        if let Err(error) = self.inner.pipeline.submit(converted.encoded).await {
            self.inner.convert.catalog.forget(&converted.operation_keys);
            let error = ExportError::from(error);
            self.count_refused_request(transport, &error);
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
