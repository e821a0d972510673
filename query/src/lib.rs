//! tracepost's query side: the Jaeger-compatible HTTP API over the traces in PostgreSQL.
//!
//! * `api`: the axum [`router`], its handlers and the two error envelopes (Jaeger v1 and api_v3).
//! * [`jaeger`]: a stored trace as Jaeger's v1 "UI JSON" trace.
//! * [`otlp_json`]: a stored trace back as OTLP `TracesData`, its OTLP/JSON rendering and protobuf encoding.
//!
//! Depends on `tracepost-storage` only (never on the collector crate).

mod api;
pub mod jaeger;
pub mod otlp_json;

#[cfg(test)]
mod fixtures;

pub use api::router;
