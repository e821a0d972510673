//! The real binary under a real SIGTERM: requests in flight are committed and the process exits 0, promptly
//! even with idle and half-sent connections open.
//! (This test lives with the binary package because only it can name the built binary.)

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

mod support;

use support::{fresh_database, start_serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_what_was_accepted_and_exits_zero() {
    let database_url = fresh_database("sigterm_commits").await;
    let mut running = start_serve(&database_url, &[]).await;
    let http_addr = running.address("otlp_http");

    let spans = (1..=3u8)
        .map(|id| Span {
            trace_id: vec![0x33; 16],
            span_id: vec![id; 8],
            name: "signal".into(),
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_000_001_000,
            ..Default::default()
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client
        .request(
            http::Request::post(format!("http://{http_addr}/v1/traces"))
                .header("content-type", "application/x-protobuf")
                .body(Full::new(Bytes::from(request.encode_to_vec())))
                .expect("request"),
        )
        .await
        .expect("export");
    assert_eq!(response.status(), 200);
    let _ = response.into_body().collect().await;

    let mut process = running.sigterm();
    let status = tokio::task::spawn_blocking(move || process.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "exit status {status:?}");
    let mut saw_clean_shutdown = false;
    // The log ends when the process closes stderr.
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = running.lines.recv().await {
            saw_clean_shutdown |= line.contains("shutdown complete");
        }
    })
    .await
    .expect("stderr closes after exit");
    assert!(saw_clean_shutdown, "the log says every acknowledged span is committed");

    let (db, connection) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let stored: i64 = db
        .query_one("SELECT coalesce(sum(span_count), 0)::int8 FROM span_blocks", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_idle_and_half_sent_connections_open_exits_within_seconds() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let database_url = fresh_database("sigterm_idle").await;
    let mut running = start_serve(&database_url, &[]).await;
    let (query, otlp_http, otlp_grpc) = (
        running.address("query"),
        running.address("otlp_http"),
        running.address("otlp_grpc"),
    );
    // Never sends a byte.
    let silent = TcpStream::connect(&query).await.expect("connect");
    // Half a request head, on the query and on the OTLP/HTTP listener.
    let mut half_query = TcpStream::connect(&query).await.expect("connect");
    half_query
        .write_all(b"GET /api/services HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("send");
    let mut half_otlp = TcpStream::connect(&otlp_http).await.expect("connect");
    half_otlp.write_all(b"POST /v1/tra").await.expect("send");
    // A keep-alive connection after one answered request.
    let mut kept_alive = TcpStream::connect(&query).await.expect("connect");
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("send");
    let mut status_line = [0u8; 12];
    kept_alive.read_exact(&mut status_line).await.expect("answer");
    assert_eq!(&status_line, b"HTTP/1.1 200");
    // An HTTP/2 client that sent its preface and nothing more, as an idle gRPC channel looks.
    let mut h2 = TcpStream::connect(&otlp_grpc).await.expect("connect");
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("send");

    let signalled = std::time::Instant::now();
    let mut process = running.sigterm();
    let status = tokio::task::spawn_blocking(move || process.wait())
        .await
        .expect("join")
        .expect("wait");
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took < Duration::from_secs(3),
        "SIGTERM took {took:?} with only quiet connections open"
    );
    drop((silent, half_query, half_otlp, kept_alive, h2));
}
