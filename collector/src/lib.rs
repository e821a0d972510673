//! tracepost's collector: OTLP receivers (gRPC and HTTP), conversion into the span model at the edge, and
//! the bounded pipeline that commits spans to PostgreSQL before acknowledging them.
//!
//! Depends on `tracepost-storage` only (never on the query crate).

pub mod body;
pub mod catalog;
pub mod convert;
pub mod grpc;
pub mod http;
pub mod ingest;
pub mod json;
pub mod metrics;
pub mod normalize;
pub mod pipeline;
pub mod red;
pub mod routes;
pub mod spool;
pub mod wire;

pub use body::Encoding;
pub use catalog::OperationCatalog;
pub use convert::ConvertConfig;
pub use grpc::grpc_router;
pub use http::http_router;
pub use ingest::{ExportError, ExportRequest, Ingest, IngestLimits, PayloadFormat, Transport};
pub use metrics::CollectorMetrics;
pub use pipeline::{IngestError, MemoryBudget, Pipeline, PipelineConfig, PipelineTasks, Reservation};
pub use red::{RedConfig, SpanMetrics};
pub use routes::RouteRules;
pub use spool::SpoolConfig;

/// The default cap on request bodies, compressed and decompressed: 16 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 << 20;
