//! `--metrics-push-url`: pushes the `/metrics` exposition to VictoriaMetrics (`/api/v1/import/prometheus`)
//! for places where it cannot scrape tracepost. Each push is the whole registry; samples get the time
//! VictoriaMetrics receives them. A failed push is logged and the next one carries the same counters.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::registry::Registry;

/// Pushes every `interval` until aborted.
pub async fn run(url: String, interval: Duration, registry: Arc<Registry>) {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(error) = push(&client, &url, &registry).await {
            tracing::warn!(%error, url, "metrics push failed; the next push carries the same counters");
        }
    }
}

async fn push(client: &Client<HttpConnector, Full<Bytes>>, url: &str, registry: &Registry) -> anyhow::Result<()> {
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, registry)?;
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(body)))?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request)).await??;
    let status = response.status();
    if !status.is_success() {
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::bail!("{status}: {}", String::from_utf8_lossy(&body).trim());
    }
    Ok(())
}
