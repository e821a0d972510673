//! Ingest tried as a hostile client, a careless operator and an unlucky database would: each test is one
//! defect of issue 8, reproduced against the receivers and checked to be answered correctly now.

mod support;

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue, KeyValueList};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn span(trace: u8, span_id: u8, name: &str) -> Span {
    let start = (now_micros() as u64 - 60_000_000) * 1000;
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![span_id; 8],
        name: name.into(),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 5_000_000,
        ..Default::default()
    }
}

fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string_kv("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    }
}

async fn metrics_page(app: &tracepost::App) -> String {
    get_text(&query_url(app, "/metrics")).await.1
}

/// Writes raw bytes to an HTTP listener and returns what comes back until the server closes or `wait` ends.
async fn raw_http(addr: std::net::SocketAddr, head: &[u8], wait: Duration) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// An attribute whose value nests `levels` arrays (each costs prost two messages).
fn nested_arrays(levels: usize) -> KeyValue {
    let mut value = AnyValue {
        value: Some(any_value::Value::IntValue(1)),
    };
    for _ in 0..levels {
        value = AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![value] })),
        };
    }
    KeyValue {
        key: "nested".into(),
        value: Some(value),
        ..Default::default()
    }
}

/// An attribute whose value nests `levels` key-value lists (each costs prost three messages).
fn nested_lists(levels: usize) -> KeyValue {
    let mut value = AnyValue {
        value: Some(any_value::Value::IntValue(1)),
    };
    for _ in 0..levels {
        value = AnyValue {
            value: Some(any_value::Value::KvlistValue(KeyValueList {
                values: vec![KeyValue {
                    key: "k".into(),
                    value: Some(value),
                    ..Default::default()
                }],
            })),
        };
    }
    KeyValue {
        key: "nested".into(),
        value: Some(value),
        ..Default::default()
    }
}

/// The report: a 358-byte request whose attribute nests arrays 50-99 levels (key-value lists 45-49) was
/// acknowledged, then every read of its trace and every search that met it answered 500. Now such an
/// attribute is dropped (counted in the span's dropped attributes), and the trace and searches answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_with_attributes_nested_past_the_limit_is_acknowledged_and_stays_readable() {
    let database = TestDatabase::create("deep_attribute").await;
    let app = serve(&database).await;
    let mut spans = Vec::new();
    for (index, attribute) in [
        nested_arrays(50),
        nested_arrays(99),
        nested_lists(45),
        nested_lists(49),
        nested_arrays(20),
    ]
    .into_iter()
    .enumerate()
    {
        let mut deep = span(0x42, index as u8 + 1, "deep");
        deep.attributes = vec![string_kv("kept", "yes"), attribute];
        spans.push(deep);
    }
    let body = request("deep-svc", spans).encode_to_vec();
    let (status, _, answer) = post_otlp(&http_endpoint(&app), "application/x-protobuf", None, body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));

    let trace_id = hex(&[0x42; 16]);
    let (status, trace) = get_json(&query_url(&app, &format!("/api/traces/{trace_id}"))).await;
    assert_eq!(status, 200, "{trace}");
    let stored = trace["data"][0]["spans"].as_array().expect("spans");
    assert_eq!(stored.len(), 5);
    for span in stored {
        let tags = span["tags"].as_array().expect("tags");
        assert!(
            tags.iter().any(|tag| tag["key"] == "kept" && tag["value"] == "yes"),
            "{span}"
        );
    }
    // The 20-level array is within the limit and kept; the four deeper ones are dropped.
    let with_nested = stored
        .iter()
        .filter(|span| {
            span["tags"]
                .as_array()
                .expect("tags")
                .iter()
                .any(|tag| tag["key"] == "nested")
        })
        .count();
    assert_eq!(with_nested, 1);

    let (status, found) = get_json(&query_url(&app, "/api/traces?service=deep-svc&lookback=1h&limit=20")).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["data"].as_array().expect("traces").len(), 1);
    app.stop().await.expect("clean shutdown");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The report: a non-hex trace ID in an OTLP/JSON span failed the whole request, losing the valid spans
/// beside it. Now that span alone is rejected in `partial_success`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_span_with_a_trace_id_that_is_not_hex_is_rejected_alone() {
    let database = TestDatabase::create("json_bad_id").await;
    let app = serve(&database).await;
    let start = (now_micros() as u64 - 1_000_000) * 1000;
    let body = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"json-svc"}}}}]}},
        "scopeSpans":[{{"spans":[
          {{"traceId":"not-hex-at-all","spanId":"0102030405060708","name":"bad","startTimeUnixNano":"{start}","endTimeUnixNano":"{start}"}},
          {{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"good","startTimeUnixNano":"{start}","endTimeUnixNano":"{start}"}}
        ]}}]}}]}}"#
    );
    let (status, _, answer) = post_otlp(&http_endpoint(&app), "application/json", None, body.into_bytes()).await;
    assert_eq!(status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("json answer");
    assert_eq!(answer["partialSuccess"]["rejectedSpans"], 1, "{answer}");
    assert!(
        answer["partialSuccess"]["errorMessage"]
            .as_str()
            .is_some_and(|message| message.contains("not valid OTLP/JSON")),
        "{answer}"
    );
    assert_eq!(database.span_rows().await, 1);
    let (status, trace) = get_json(&query_url(&app, "/api/traces/5b8efff798038103d269b633813fc60c")).await;
    assert_eq!(status, 200);
    assert_eq!(trace["data"][0]["spans"][0]["operationName"], "good");
    let page = metrics_page(&app).await;
    assert_eq!(
        metric_value(&page, "tracepost_spans_rejected_total{reason=\"malformed_span\"}"),
        1.0
    );
    app.stop().await.expect("clean shutdown");
}

/// The report: 14.6 KB of gzip'd OTLP/JSON empty spans (`{}` repeated, 15 MB decompressed, under the cap)
/// took the process to 1.3 GB. Now what decoding would take is counted before it runs, and a request that
/// could never fit the ingest memory budget is refused with 413; the next valid request is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_gzip_body_that_would_decode_into_gigabytes_is_refused_before_decoding() {
    let database = TestDatabase::create("json_bomb").await;
    let app = serve(&database).await;
    let spans = vec!["{}"; 5_000_000].join(",");
    let json = format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{spans}]}}]}}]}}"#);
    assert!(json.len() < 16 << 20);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut encoder, json.as_bytes()).expect("gzip");
    let compressed = encoder.finish().expect("gzip");
    assert!(compressed.len() < 64 << 10, "{}", compressed.len());
    let (status, _, answer) = post_otlp(&http_endpoint(&app), "application/json", Some("gzip"), compressed).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&answer));
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("ingest budget"), "{answer}");

    let body = request("after-bomb", vec![span(7, 1, "fine")]).encode_to_vec();
    let (status, _, _) = post_otlp(&http_endpoint(&app), "application/x-protobuf", None, body).await;
    assert_eq!(status, 200);
    assert_eq!(database.span_rows().await, 1);
    app.stop().await.expect("clean shutdown");
}

/// The report: a connection that announces a body and sends nothing was held forever. Now the body must
/// arrive within the body read timeout (408), and a body announced over the cap is refused unread (413).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_gets_408_and_one_announced_over_the_cap_gets_413_unread() {
    let database = TestDatabase::create("slow_body").await;
    let mut config = config(&database);
    config.body_read_timeout = Duration::from_millis(500);
    let app = tracepost::start(tracepost::Role::Serve, config).await.expect("start");
    let addr = app.otlp_http_addr.expect("http listener");

    let started = std::time::Instant::now();
    let answer = raw_http(
        addr,
        b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: 1000\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    let answer = raw_http(
        addr,
        b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: 107374182400\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let page = metrics_page(&app).await;
    assert_eq!(
        metric_value(
            &page,
            "tracepost_requests_refused_total{transport=\"http\",reason=\"body_timeout\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &page,
            "tracepost_requests_refused_total{transport=\"http\",reason=\"too_large\"}"
        ),
        1.0
    );
    app.stop().await.expect("clean shutdown");
}

/// The report: with the `spans` table locked, exports got no answer until the OpenTelemetry clients' 10 s
/// timeout, were committed later anyway (so the clients' retries stored them twice), and `/readyz` stayed 200.
/// Now each export is refused with a retryable error within the export timeout, the refused spans are never
/// committed, `/readyz` says the database does not take writes, and it recovers when the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_to_a_locked_table_are_refused_in_time_and_never_committed_later() {
    let database = TestDatabase::create("locked").await;
    let mut config = config(&database);
    config.export_timeout = Duration::from_secs(2);
    let app = tracepost::start(tracepost::Role::Serve, config).await.expect("start");
    let (status, _) = get_text(&query_url(&app, "/readyz")).await;
    assert_eq!(status, 200);

    let mut blocker = database.client().await;
    let lock = blocker.transaction().await.expect("begin");
    lock.batch_execute("LOCK TABLE span_blocks IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");

    let started = std::time::Instant::now();
    let body = request("locked-svc", vec![span(9, 1, "refused")]).encode_to_vec();
    let (status, headers, answer) = post_otlp(&http_endpoint(&app), "application/x-protobuf", None, body).await;
    assert_eq!(status, 503);
    assert!(headers.get("retry-after").is_some());
    // PostgreSQL's own message (a canceled statement on relation "spans") stays in the log.
    let answer = tonic_types::Status::decode(answer.as_slice()).expect("a google.rpc.Status body");
    assert_eq!(answer.message, "storage unavailable, retry later");
    // Answered by the 2 s export timeout (plus the writer's last attempt), well before a client's 10 s.
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    // The real exporter, which retries retryable refusals within its own 10 s timeout, is never
    // acknowledged either.
    let refused = sdk_trace("locked-svc");
    let outcome = export_http(&http_endpoint(&app), &refused, opentelemetry_otlp::Protocol::HttpBinary).await;
    assert!(outcome.is_err(), "an export to a locked table must not be acknowledged");
    let (status, reason) = get_text(&query_url(&app, "/readyz")).await;
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("does not take writes"), "{reason}");

    lock.rollback().await.expect("release the lock");
    let accepted = sdk_trace("after-lock");
    export_http(
        &http_endpoint(&app),
        &accepted,
        opentelemetry_otlp::Protocol::HttpBinary,
    )
    .await
    .expect("stored once the table is free");
    let (status, reason) = get_text(&query_url(&app, "/readyz")).await;
    assert_eq!(status, 200, "{reason}");
    // Only the last export is stored: nothing refused was committed behind its client's back.
    let client = database.client().await;
    let services: Vec<String> = client
        .query("SELECT DISTINCT service FROM span_blocks", &[])
        .await
        .expect("query")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(services, vec!["after-lock".to_owned()]);
    app.stop().await.expect("clean shutdown");
}

/// A TCP port in front of the test PostgreSQL that refuses connections until it is opened: a database that
/// is unreachable, then appears.
struct Gate {
    addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Gate {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let is_open = open.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !is_open.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the connection is closed at once
                }
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, open }
    }
}

/// The report: with the database unreachable at start nothing listened (liveness failed) and the process
/// exited after 60 s. Now it listens, `/healthz` is 200, `/readyz` is 503 with the reason, and it migrates and
/// becomes ready when the database appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_unreachable_at_start_it_listens_and_becomes_ready_when_it_appears() {
    let database = TestDatabase::create("late_database").await;
    let url: url_parts::Url = url_parts::parse(&database.url);
    let gate = Gate::start(url.addr).await;
    let mut config = config(&database);
    config.database.url = url.with_addr(gate.addr);
    config.database.connect_timeout = Duration::from_millis(300);
    let app = tokio::time::timeout(Duration::from_secs(5), tracepost::start(tracepost::Role::Serve, config))
        .await
        .expect("start does not wait for the database")
        .expect("start");
    let (status, _) = get_text(&query_url(&app, "/healthz")).await;
    assert_eq!(status, 200);
    let (status, reason) = get_text(&query_url(&app, "/readyz")).await;
    assert_eq!(status, 503);
    assert!(reason.contains("database unreachable"), "{reason}");

    gate.open.store(true, std::sync::atomic::Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, reason) = get_text(&query_url(&app, "/readyz")).await;
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never became ready: {reason}");
        tokio::time::sleep(Duration::from_millis(100)).await; // polling a readiness endpoint
    }
    let trace = sdk_trace("late-svc");
    export_grpc(&grpc_endpoint(&app), &trace).await.expect("stored");
    assert_eq!(database.span_rows().await, trace.spans.len() as i64);
    app.stop().await.expect("clean shutdown");
}

/// The report: `tracepost_spans_received_total` was never incremented and `tracepost_otlp_requests_total`
/// counted only failures. Now both count every request and span, on both transports, and every answered
/// request is timed in `tracepost_export_duration_seconds` (the acknowledgement latency) by its outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_and_every_received_span_is_counted() {
    let database = TestDatabase::create("counted").await;
    let app = serve(&database).await;
    let trace = sdk_trace("counted-svc");
    export_grpc(&grpc_endpoint(&app), &trace).await.expect("grpc");
    export_http(&http_endpoint(&app), &trace, opentelemetry_otlp::Protocol::HttpBinary)
        .await
        .expect("http");
    let mut bad = span(3, 1, "bad");
    bad.trace_id = vec![0; 16];
    let body = request("counted-svc", vec![bad, span(3, 2, "good")]).encode_to_vec();
    let (status, _, _) = post_otlp(&http_endpoint(&app), "application/x-protobuf", None, body).await;
    assert_eq!(status, 200);
    let page = metrics_page(&app).await;
    let spans = trace.spans.len() as f64;
    assert_eq!(
        metric_value(&page, "tracepost_otlp_requests_total{transport=\"grpc\"}"),
        1.0
    );
    assert_eq!(
        metric_value(&page, "tracepost_otlp_requests_total{transport=\"http\"}"),
        2.0
    );
    assert_eq!(
        metric_value(&page, "tracepost_spans_received_total{transport=\"grpc\"}"),
        spans
    );
    assert_eq!(
        metric_value(&page, "tracepost_spans_received_total{transport=\"http\"}"),
        spans + 2.0
    );
    assert_eq!(
        metric_value(
            &page,
            "tracepost_export_duration_seconds_count{transport=\"grpc\",outcome=\"acknowledged\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &page,
            "tracepost_export_duration_seconds_count{transport=\"http\",outcome=\"acknowledged\"}"
        ),
        2.0
    );
    assert!(
        metric_value(
            &page,
            "tracepost_export_duration_seconds_sum{transport=\"http\",outcome=\"acknowledged\"}"
        ) > 0.0
    );
    app.stop().await.expect("clean shutdown");
}

/// Host and port of a test database URL, to put a gate in front of it.
mod url_parts {
    pub(super) struct Url {
        pub(super) addr: std::net::SocketAddr,
        text: String,
    }

    impl Url {
        pub(super) fn with_addr(&self, addr: std::net::SocketAddr) -> String {
            self.text.replacen(&self.addr.to_string(), &addr.to_string(), 1)
        }
    }

    pub(super) fn parse(url: &str) -> Url {
        let rest = url.split_once("://").expect("scheme").1;
        let host_port = rest.split(['/', '?']).next().expect("authority");
        let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, host)| host);
        let addr = host_port.parse().expect("a test database url is host:port with an IP");
        Url {
            addr,
            text: url.to_owned(),
        }
    }
}

/// A resource's service name is copied into every row of its spans, so the column keeps at most 256 bytes of
/// it: a client cannot make a small request encode into rows many times its size. Searching by the full name
/// still finds the spans, and the trace shows the name as it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_name_longer_than_its_column_is_found_by_its_full_name() {
    let database = TestDatabase::create("long_service").await;
    let app = serve(&database).await;
    let service = format!("svc-{}", "x".repeat(1000));
    let body = request(&service, vec![span(0x51, 1, "long")]).encode_to_vec();
    let (status, _, _) = post_otlp(&http_endpoint(&app), "application/x-protobuf", None, body).await;
    assert_eq!(status, 200);
    let stored: i32 = database
        .client()
        .await
        .query_one("SELECT octet_length(service) FROM span_blocks", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(stored, 256);
    let (status, found) = get_json(&query_url(&app, &format!("/api/traces?service={service}&lookback=1h"))).await;
    assert_eq!(status, 200, "{found}");
    let traces = found["data"].as_array().expect("traces");
    assert_eq!(traces.len(), 1, "{found}");
    let process = traces[0]["processes"]
        .as_object()
        .expect("processes")
        .values()
        .next()
        .expect("process");
    assert_eq!(process["serviceName"], service.as_str());
    // Tempo's search by the full name finds it too.
    let query = format!(r#"{{ resource.service.name = "{service}" }}"#);
    let encoded: String = query
        .bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect();
    let (status, tempo) = get_json(&tempo_url(&app, &format!("/api/search?q={encoded}"))).await;
    assert_eq!(status, 200, "{tempo}");
    assert_eq!(tempo["traces"].as_array().map(Vec::len), Some(1), "{tempo}");
    app.stop().await.expect("clean shutdown");
}

/// The report: a span name of about 4 KB (a SQL statement, say) made PostgreSQL refuse the operations
/// dictionary's index row; the writer retried it as a database fault for 5 s, answered 503 to every request
/// of the batch, and `/readyz` stayed 503. Now such a name is stored and searchable but not listed, and a
/// value PostgreSQL refuses (SQLSTATE class 54 as well as 22 and 23) fails only its own request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_named_by_a_long_sql_statement_is_stored_and_breaks_nothing() {
    let database = TestDatabase::create("long_name").await;
    let app = serve(&database).await;
    let statement = format!(
        "SELECT * FROM orders WHERE id IN ({})",
        (0..100).map(|i| format!("'{i:036}'")).collect::<Vec<_>>().join(",")
    );
    assert!(statement.len() > 3800);
    let started = std::time::Instant::now();
    let body = request("sql-svc", vec![span(0x61, 1, &statement), span(0x61, 2, "short")]).encode_to_vec();
    let (status, _, answer) = post_otlp(&http_endpoint(&app), "application/x-protobuf", None, body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(database.span_rows().await, 2);
    let (status, reason) = get_text(&query_url(&app, "/readyz")).await;
    assert_eq!(status, 200, "{reason}");
    let (status, operations) = get_json(&query_url(&app, "/api/services/sql-svc/operations")).await;
    assert_eq!(status, 200);
    assert_eq!(operations["data"], serde_json::json!(["short"]));
    let trace_id = hex(&[0x61; 16]);
    let (status, trace) = get_json(&query_url(&app, &format!("/api/traces/{trace_id}"))).await;
    assert_eq!(status, 200);
    assert!(trace["data"][0]["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .any(|span| span["operationName"] == statement.as_str()));
    app.stop().await.expect("clean shutdown");
}
