//! Peak memory under hostile load stays within the bound ARCHITECTURE.md states as a formula of the
//! settings: the real binary, its RSS read from /proc, requests built to cost as much memory as they can.

mod support;

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use support::{fresh_database, start_serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1 << 20;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut encoder, bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

/// One valid span carrying a `size`-byte attribute: a few KB on the wire, `size` bytes once decompressed.
fn big_span_request(id: u8, size: usize) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let span = Span {
        trace_id: vec![id; 16],
        span_id: vec![id; 8],
        name: "big".into(),
        start_time_unix_nano: now,
        end_time_unix_nano: now + 1000,
        attributes: vec![KeyValue {
            key: "padding".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("a".repeat(size))),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// POSTs a gzip'd body over HTTP/1.1 and returns the status code (0 if the connection closed first).
async fn post(addr: String, content_type: &'static str, body: std::sync::Arc<Vec<u8>>) -> u16 {
    let Ok(mut stream) = tokio::net::TcpStream::connect(&addr).await else {
        return 0;
    };
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\ncontent-encoding: gzip\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(&body).await.is_err() {
        return 0;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Opens a connection that announces a 10 MB body and sends 1 KB of it.
async fn stall(addr: String) {
    if let Ok(mut stream) = tokio::net::TcpStream::connect(&addr).await {
        let head = "POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\n\
                    content-length: 10000000\r\n\r\n";
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&[0u8; 1024]).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    }
}

/// The memory bound of ARCHITECTURE.md, "Bounded memory": what the process holds beyond its idle RSS is at most
/// three times the ingest memory budget (`--max-inflight-bytes`; the factor covers the allocator keeping freed
/// memory in its per-thread arenas) plus 400 KiB per open connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_memory_under_hostile_ingest_stays_within_the_documented_bound() {
    let database_url = fresh_database("memory_bound").await;
    let budget = 64 * MIB;
    let budget_flag = budget.to_string();
    let tracepost = start_serve(
        &database_url,
        &["--max-inflight-bytes", &budget_flag, "--admission-wait", "2s"],
    )
    .await;
    let addr = tracepost.address("otlp_http");
    // Warm up with one ordinary request, then take the idle RSS.
    assert_eq!(
        post(
            addr.clone(),
            "application/x-protobuf",
            gzip(&big_span_request(1, 1000)).into()
        )
        .await,
        200
    );
    let idle_kb = tracepost.status_kb("VmRSS");

    let protobuf_bomb = std::sync::Arc::new(gzip(&big_span_request(2, 4 << 20)));
    let json_bomb = {
        let spans = vec!["{}"; 5_000_000].join(",");
        std::sync::Arc::new(gzip(
            format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{spans}]}}]}}]}}"#).as_bytes(),
        ))
    };
    let json_big_string = {
        let now = 1_700_000_000_000_000_000u64;
        std::sync::Arc::new(gzip(
            format!(
                r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"x","startTimeUnixNano":"{now}","endTimeUnixNano":"{now}","attributes":[{{"key":"a","value":{{"stringValue":"{}"}}}}]}}]}}]}}]}}"#,
                "b".repeat(8 << 20)
            )
            .as_bytes(),
        ))
    };
    let connections = 24 + 4 + 4 + 50;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..24 {
        tasks.spawn(post(addr.clone(), "application/x-protobuf", protobuf_bomb.clone()));
    }
    for _ in 0..4 {
        tasks.spawn(post(addr.clone(), "application/json", json_bomb.clone()));
        tasks.spawn(post(addr.clone(), "application/json", json_big_string.clone()));
    }
    for _ in 0..50 {
        let addr = addr.clone();
        tasks.spawn(async move {
            stall(addr).await;
            0
        });
    }
    let mut statuses = std::collections::BTreeMap::new();
    while let Some(status) = tasks.join_next().await {
        *statuses.entry(status.expect("task")).or_insert(0) += 1;
    }
    let peak_kb = tracepost.status_kb("VmHWM");
    let bound_kb = idle_kb + (3 * budget) / 1024 + connections * 400;
    eprintln!(
        "idle {idle_kb} kB, peak {peak_kb} kB, bound {bound_kb} kB (budget {} MiB, {connections} connections); \
         answers {statuses:?}",
        budget / MIB
    );
    assert!(
        statuses.get(&200).copied().unwrap_or(0) >= 1,
        "some valid requests are stored: {statuses:?}"
    );
    assert_eq!(statuses.get(&500), None, "{statuses:?}");
    assert!(peak_kb <= bound_kb, "peak {peak_kb} kB over the bound {bound_kb} kB");
    // The process survived it all and still takes spans.
    assert_eq!(
        post(addr, "application/x-protobuf", gzip(&big_span_request(3, 1000)).into()).await,
        200
    );
}
