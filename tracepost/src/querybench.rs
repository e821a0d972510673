//! `tracepost querybench`: latency of the query API against whatever a collector has stored, as Grafana and
//! the Jaeger UI would query it. Prints p50 and p99 per query kind.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

/// Options of `tracepost querybench`.
#[derive(Clone, Debug, clap::Args)]
pub struct QuerybenchArgs {
    /// Query API base URL.
    #[arg(long, default_value = "http://127.0.0.1:16686")]
    pub url: String,
    /// Requests per query kind (after 10 warm-up requests).
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Search window, in minutes back from now.
    #[arg(long, default_value_t = 60)]
    pub window_minutes: i64,
    /// The attribute searched for, as `key=value`.
    #[arg(long, default_value = "http.response.status_code=503")]
    pub attribute: String,
}

struct Bench {
    client: Client<HttpConnector, Empty<Bytes>>,
    base: String,
}

impl Bench {
    async fn get(&self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        let uri: http::Uri = format!("{}{path}", self.base).parse().context("request url")?;
        let response = self.client.get(uri).await.with_context(|| format!("GET {path}"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    async fn json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = self.get(path).await?;
        if status != 200 {
            bail!("GET {path}: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Times `requests` GETs of the paths `path_for(i)` yields, after a warm-up; every answer must be 200.
    async fn measure(&self, name: &str, requests: usize, path_for: impl Fn(usize) -> String) -> anyhow::Result<()> {
        for index in 0..10 {
            self.get(&path_for(index)).await?;
        }
        let mut latencies = Vec::with_capacity(requests);
        let mut results = 0usize;
        for index in 0..requests {
            let path = path_for(index + 10);
            let started = Instant::now();
            let (status, body) = self.get(&path).await?;
            latencies.push(started.elapsed());
            if status != 200 {
                bail!("GET {path}: {status} {}", String::from_utf8_lossy(&body));
            }
            results += usize::from(body.len() > 64);
        }
        latencies.sort();
        let percentile = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)];
        println!(
            "{name:<44} p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms   ({results}/{requests} non-empty)",
            millis(percentile(0.50)),
            millis(percentile(0.99)),
            millis(*latencies.last().unwrap_or(&Duration::ZERO)),
        );
        Ok(())
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Runs the query benchmark.
pub async fn run(args: QuerybenchArgs) -> anyhow::Result<()> {
    let bench = Bench {
        client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
        base: args.url.trim_end_matches('/').to_owned(),
    };
    let services: Vec<String> = serde_json::from_value(bench.json("/api/services").await?["data"].take())?;
    if services.is_empty() {
        bail!("no services stored: load spans first (tracepost loadgen)");
    }
    let now_micros = tracepost_storage::time::now_unix_nanos() / 1000;
    let window = format!(
        "start={}&end={}",
        now_micros - args.window_minutes * 60_000_000,
        now_micros + 60_000_000
    );
    let mut operations = Vec::new();
    let mut trace_ids = Vec::new();
    for service in &services {
        let names: Vec<String> = serde_json::from_value(
            bench
                .json(&format!("/api/services/{}/operations", encode(service)))
                .await?["data"]
                .take(),
        )?;
        operations.extend(names.into_iter().take(50).map(|name| (service.clone(), name)));
        let found = bench
            .json(&format!("/api/traces?service={}&limit=100&{window}", encode(service)))
            .await?;
        for trace in found["data"].as_array().into_iter().flatten() {
            if let Some(id) = trace["traceID"].as_str() {
                trace_ids.push(id.to_owned());
            }
        }
    }
    if trace_ids.is_empty() || operations.is_empty() {
        bail!("no traces found in the last {} minutes", args.window_minutes);
    }
    let (key, value) = args.attribute.split_once('=').context("--attribute is key=value")?;
    let tags = encode(&format!("{{\"{key}\":\"{value}\"}}"));
    println!(
        "query benchmark: {} services, {} operations sampled, {} trace IDs sampled, {} requests each",
        services.len(),
        operations.len(),
        trace_ids.len(),
        args.requests
    );
    let pick = |index: usize, length: usize| (index.wrapping_mul(2_654_435_761)) % length;
    bench
        .measure("trace by ID", args.requests, |i| {
            format!("/api/traces/{}", trace_ids[pick(i, trace_ids.len())])
        })
        .await?;
    bench
        .measure("services", args.requests, |_| "/api/services".to_owned())
        .await?;
    bench
        .measure("operations", args.requests, |i| {
            format!("/api/services/{}/operations", encode(&services[i % services.len()]))
        })
        .await?;
    bench
        .measure("search by service (limit 20)", args.requests, |i| {
            format!(
                "/api/traces?service={}&limit=20&{window}",
                encode(&services[i % services.len()])
            )
        })
        .await?;
    bench
        .measure("search by service + operation + duration", args.requests, |i| {
            let (service, operation) = &operations[pick(i, operations.len())];
            format!(
                "/api/traces?service={}&operation={}&minDuration=1ms&limit=20&{window}",
                encode(service),
                encode(operation)
            )
        })
        .await?;
    bench
        .measure(&format!("search by attribute {key}={value}"), args.requests, |i| {
            format!(
                "/api/traces?service={}&tags={tags}&limit=20&{window}",
                encode(&services[i % services.len()])
            )
        })
        .await?;
    Ok(())
}
