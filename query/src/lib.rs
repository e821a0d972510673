//! tracepost's query side: the Jaeger-compatible HTTP API over the traces in PostgreSQL.
//!
//! * `api`: the axum [`router`], its handlers and the two error envelopes (Jaeger v1 and api_v3).
//! * [`jaeger`]: a stored trace as Jaeger's v1 "UI JSON" trace.
//! * [`otlp_json`]: a stored trace back as OTLP `TracesData`, its OTLP/JSON rendering and protobuf encoding.
//! * `spm`: Jaeger's SPM (Monitor tab) metrics routes, answered by PromQL against VictoriaMetrics.
//! * [`tempo`]: the Tempo HTTP API subset Grafana's Tempo data source uses ([`tempo_router`]), with
//!   [`traceql`], the TraceQL subset it parses.
//!
//! Depends on `tracepost-storage` only (never on the collector crate).

mod api;
mod blocking;
/// Entry points for the cargo-fuzz targets in `fuzz/` (the request parsers and planners, private otherwise);
/// it exists for them only and is no API.
#[doc(hidden)]
pub mod fuzzing;
pub mod jaeger;
mod limits;
pub mod otlp_json;
mod params;
mod search;
mod spm;
pub mod tempo;
pub mod traceql;

#[cfg(test)]
mod fixtures;

pub use api::{router, router_with_limits};
pub use limits::QueryLimits;
pub use spm::spm_router;
pub use tempo::{tempo_router, tempo_router_with_limits};
