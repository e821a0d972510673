//! What the RED metrics and the service graph cost per span, without the network or PostgreSQL in the way.
//!
//!     cargo bench -p tracepost --bench metrics_cost [-- SPANS [ROUNDS]]    (defaults 300000 and 7)
//!
//! Converts the load generator's Linkerd-shaped requests (protobuf, 1000 spans each) on one thread, as the
//! collector does for every export, once without and once with span metrics (conversion that also reduces
//! each span, then `SpanMetrics::record` as after the commit), alternating, and prints the median of each
//! per span and their difference. The end-to-end share is that difference over the collector's whole CPU per
//! span, which `bench/ingest.sh` measures.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use tracepost::loadgen::{encoded_requests, LoadgenArgs};
use tracepost_collector::wire::convert_protobuf;
use tracepost_collector::{ConvertConfig, RedConfig, SpanMetrics};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    loadgen: LoadgenArgs,
}

/// Nanoseconds per span to convert (and, with metrics, record) every request.
fn round(requests: &[Vec<u8>], spans: u64, span_metrics: Option<Arc<SpanMetrics>>) -> f64 {
    let config = ConvertConfig {
        span_metrics: span_metrics.clone(),
        ..ConvertConfig::default()
    };
    let start = Instant::now();
    for body in requests {
        let mut converted = convert_protobuf(body, &config).expect("the load generator's requests are valid");
        if let (Some(span_metrics), Some(request)) = (&span_metrics, converted.metrics.take()) {
            span_metrics.record(request);
        }
        black_box(converted);
    }
    start.elapsed().as_nanos() as f64 / spans as f64
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let positional: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with('-')).collect();
    let spans: u64 = positional
        .first()
        .map_or(300_000, |value| value.parse().expect("SPANS is a number"));
    let rounds: usize = positional
        .get(1)
        .map_or(7, |value| value.parse().expect("ROUNDS is a number"));
    let args = Args::parse_from(["metrics_cost", "--spans", &spans.to_string(), "--seed", "42"]).loadgen;
    let requests = encoded_requests(&args);
    let spans = requests.len() as u64 * args.request_spans as u64;

    let (mut without, mut with) = (Vec::new(), Vec::new());
    // METRICS_COST_ONLY=with or =without runs one side only (to profile it, e.g. under `perf record`).
    let only = std::env::var("METRICS_COST_ONLY").unwrap_or_default();
    for _ in 0..rounds {
        if only != "with" {
            without.push(round(&requests, spans, None));
        }
        if only != "without" {
            // A fresh store each round, as a collector that has just started: its series and pairing maps grow.
            with.push(round(&requests, spans, Some(SpanMetrics::new(RedConfig::default()))));
        }
    }
    if without.is_empty() || with.is_empty() {
        return;
    }
    let (without, with) = (median(without), median(with));
    println!(
        "{spans} Linkerd-shaped spans, {} requests, median of {rounds} rounds on one thread",
        requests.len()
    );
    println!("  conversion without span metrics: {without:.0} ns/span");
    println!("  conversion with span metrics:    {with:.0} ns/span");
    println!(
        "  RED metrics + service graph:     {:.0} ns/span ({:.1} % of the conversion alone)",
        with - without,
        100.0 * (with - without) / without
    );
}
