//! The Tempo HTTP API subset Grafana's Tempo data source uses.

use axum::Router;
use tracepost_storage::TraceReader;

/// The Tempo API router (served on its own listener, `--tempo-listen`).
pub fn tempo_router(reader: TraceReader) -> Router {
    let _ = reader;
    Router::new()
}
