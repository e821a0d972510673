//! Every bad input gets a clear error and loses nothing valid beside it; overload and an unreachable database
//! are refused with retryable errors; every refusal and rejection is counted.

mod support;

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use support::*;

const TRACE: [u8; 16] = [0x11; 16];

fn span(name: &str, span_id: u8) -> Span {
    Span {
        trace_id: TRACE.to_vec(),
        span_id: vec![span_id; 8],
        name: name.into(),
        kind: 2,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_050_000_000,
        ..Default::default()
    }
}

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn request(service: Option<&str>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    let attributes = service
        .map(|name| vec![string_kv("service.name", name)])
        .unwrap_or_default();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes,
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

/// Four invalid spans (one per rule) beside two valid ones.
fn mixed_spans() -> Vec<Span> {
    let mut zero_trace = span("zero trace id", 3);
    zero_trace.trace_id = vec![0; 16];
    let mut short_span = span("short span id", 4);
    short_span.span_id = vec![4; 4];
    let mut no_start = span("no start", 5);
    no_start.start_time_unix_nano = 0;
    let mut backwards = span("ends before it starts", 6);
    backwards.end_time_unix_nano = backwards.start_time_unix_nano - 1;
    vec![
        span("valid one", 1),
        zero_trace,
        short_span,
        no_start,
        backwards,
        span("valid two", 2),
    ]
}

async fn metrics_page(app: &tracepost::App) -> String {
    get_text(&query_url(app, "/metrics")).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_spans_are_rejected_in_partial_success_and_the_valid_ones_stored() {
    let database = TestDatabase::create("partial_success").await;
    let app = serve(&database).await;

    // gRPC, through a real tonic client.
    let mut client = TraceServiceClient::connect(grpc_endpoint(&app)).await.expect("connect");
    let response = client
        .export(request(Some("svc"), mixed_spans()))
        .await
        .expect("export")
        .into_inner();
    let partial = response.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 4);
    assert!(
        partial.error_message.contains("trace id must be 16 bytes"),
        "{}",
        partial.error_message
    );
    assert!(
        partial.error_message.contains("end time must not be before start time"),
        "{}",
        partial.error_message
    );
    assert_eq!(database.span_rows().await, 2);

    // OTLP/HTTP protobuf.
    let body = request(Some("svc"), mixed_spans()).encode_to_vec();
    let (status, _, body) = post_otlp(&http_endpoint(&app), "application/x-protobuf", None, body).await;
    assert_eq!(status, 200);
    let response = ExportTraceServiceResponse::decode(body.as_slice()).expect("protobuf response");
    assert_eq!(response.partial_success.expect("partial success").rejected_spans, 4);
    assert_eq!(database.span_rows().await, 4);

    // OTLP/JSON with snake_case keys: the decoder yields empty IDs, which validation must catch.
    let json = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},
        "scopeSpans":[{"spans":[
          {"trace_id":"11111111111111111111111111111111","span_id":"0707070707070707","name":"snake",
           "startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000000000001"},
          {"traceId":"11111111111111111111111111111111","spanId":"0808080808080808","name":"camel",
           "startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000000000001"}]}]}]}"#;
    let (status, _, body) = post_otlp(&http_endpoint(&app), "application/json", None, json.into()).await;
    assert_eq!(status, 200);
    let response: serde_json::Value = serde_json::from_slice(&body).expect("json response");
    assert_eq!(
        response["partialSuccess"]["rejectedSpans"]
            .to_string()
            .trim_matches('"'),
        "1"
    );
    assert_eq!(database.span_rows().await, 5);

    let page = metrics_page(&app).await;
    assert_eq!(
        metric_value(&page, "tracepost_spans_rejected_total{reason=\"invalid_trace_id\"}"),
        3.0
    );
    assert_eq!(
        metric_value(&page, "tracepost_spans_rejected_total{reason=\"invalid_span_id\"}"),
        2.0
    );
    assert_eq!(
        metric_value(&page, "tracepost_spans_rejected_total{reason=\"missing_start_time\"}"),
        2.0
    );
    assert_eq!(
        metric_value(&page, "tracepost_spans_rejected_total{reason=\"end_before_start\"}"),
        2.0
    );
    assert_eq!(metric_value(&page, "tracepost_spans_committed_total"), 5.0);
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_bodies_get_400_and_invalid_argument_with_a_reason() {
    let database = TestDatabase::create("undecodable").await;
    let app = serve(&database).await;

    let (status, _, body) = post_otlp(
        &http_endpoint(&app),
        "application/x-protobuf",
        None,
        vec![0xff, 0xff, 0xff, 0x01],
    )
    .await;
    assert_eq!(status, 400);
    let rpc_status = tonic_types::Status::decode(body.as_slice()).expect("google.rpc.Status body");
    assert_eq!(rpc_status.code, tonic::Code::InvalidArgument as i32);
    assert!(
        rpc_status.message.contains("invalid protobuf"),
        "{}",
        rpc_status.message
    );

    let (status, _, body) = post_otlp(&http_endpoint(&app), "application/json", None, b"{not json".to_vec()).await;
    assert_eq!(status, 400);
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json status");
    assert!(
        body["message"].as_str().expect("message").contains("invalid json"),
        "{body}"
    );

    let (status, _, _) = post_otlp(&http_endpoint(&app), "text/plain", None, b"hello".to_vec()).await;
    assert_eq!(status, 415);

    let (status, _, _) = post_otlp(
        &http_endpoint(&app),
        "application/x-protobuf",
        Some("gzip"),
        b"not gzip at all".to_vec(),
    )
    .await;
    assert_eq!(status, 400);

    // A gRPC frame whose payload is not a protobuf message, sent over plain HTTP/2.
    let (grpc_status, message) = raw_grpc_export(&app, &[0xff, 0xff, 0xff, 0x01]).await;
    assert_eq!(grpc_status, tonic::Code::InvalidArgument as i32, "{message}");
    assert!(message.contains("cannot decode"), "{message}");

    let page = metrics_page(&app).await;
    assert_eq!(
        metric_value(
            &page,
            "tracepost_requests_refused_total{transport=\"http\",reason=\"decode_error\"}"
        ),
        4.0
    );
    assert_eq!(
        metric_value(
            &page,
            "tracepost_requests_refused_total{transport=\"grpc\",reason=\"decode_error\"}"
        ),
        1.0
    );
    assert_eq!(database.span_rows().await, 0);
    // The process is still serving.
    let (status, _) = get_text(&query_url(&app, "/healthz")).await;
    assert_eq!(status, 200);
    app.stop().await.expect("clean shutdown");
}

/// A user who points an OpenTelemetry SDK's OTLP/HTTP exporter at the gRPC port (4317 instead of 4318) gets
/// an export error saying where OTLP/HTTP goes, not an HTTP 200 that counts the spans as sent; the refusal is
/// counted and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_exporter_pointed_at_the_grpc_port_is_told_so_not_acknowledged() {
    let database = TestDatabase::create("http_on_grpc").await;
    let app = serve(&database).await;
    let trace = sdk_trace("wrong-port-svc");
    let endpoint = format!("{}/v1/traces", grpc_endpoint(&app));
    export_http(&endpoint, &trace, opentelemetry_otlp::Protocol::HttpBinary)
        .await
        .expect_err("refused, not acknowledged");
    let (status, _, body) = post_otlp(&endpoint, "application/x-protobuf", None, Vec::new()).await;
    assert_eq!(status, 404);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("OTLP/gRPC receiver") && body.contains("4318"), "{body}");

    let page = metrics_page(&app).await;
    assert_eq!(
        metric_value(
            &page,
            "tracepost_requests_refused_total{transport=\"grpc\",reason=\"decode_error\"}"
        ),
        2.0
    );
    assert_eq!(database.span_rows().await, 0);
    app.stop().await.expect("clean shutdown");
}

/// Sends one raw gRPC message to TraceService/Export and returns (grpc-status, grpc-message).
async fn raw_grpc_export(app: &tracepost::App, payload: &[u8]) -> (i32, String) {
    use http_body_util::{BodyExt, Full};
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<bytes::Bytes>>();
    let request = http::Request::post(format!(
        "{}/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        grpc_endpoint(app)
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Full::new(bytes::Bytes::from(frame)))
    .expect("request");
    let response = client.request(request).await.expect("grpc response");
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let find = |name: &str| {
        headers
            .get(name)
            .or_else(|| trailers.get(name))
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    (
        find("grpc-status").parse().unwrap_or(-1),
        percent_decode(&find("grpc-message")),
    )
}

/// grpc-message is percent-encoded on the wire.
fn percent_decode(text: &str) -> String {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%' && index + 2 < bytes.len() + 1)
            .then(|| {
                text.get(index + 1..index + 3)
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            })
            .flatten();
        match escaped {
            Some(byte) => {
                out.push(byte);
                index += 3;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_get_413_and_resource_exhausted() {
    let database = TestDatabase::create("oversized").await;
    let mut config = config(&database);
    config.max_request_bytes = 64 * 1024;
    let app = tracepost::start(tracepost::Role::Serve, config).await.expect("start");

    let big: Vec<Span> = (1..=200u8)
        .map(|id| {
            let mut span = span(&"x".repeat(600), id);
            span.attributes.push(string_kv("padding", &"y".repeat(200)));
            span
        })
        .collect();
    let body = request(Some("svc"), big.clone()).encode_to_vec();
    assert!(body.len() > 64 * 1024);
    let (status, _, _) = post_otlp(&http_endpoint(&app), "application/x-protobuf", None, body.clone()).await;
    assert_eq!(status, 413);

    // Small on the wire, too large once decompressed.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut encoder, &body).expect("gzip");
    let compressed = encoder.finish().expect("gzip");
    assert!(compressed.len() < 64 * 1024);
    let (status, _, body_back) =
        post_otlp(&http_endpoint(&app), "application/x-protobuf", Some("gzip"), compressed).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body_back));

    let mut client = TraceServiceClient::connect(grpc_endpoint(&app)).await.expect("connect");
    let status = client.export(request(Some("svc"), big)).await.expect_err("too large");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    let page = metrics_page(&app).await;
    assert_eq!(
        metric_value(
            &page,
            "tracepost_requests_refused_total{transport=\"http\",reason=\"too_large\"}"
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &page,
            "tracepost_requests_refused_total{transport=\"grpc\",reason=\"too_large\"}"
        ),
        1.0
    );
    assert_eq!(database.span_rows().await, 0);
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_postgres_would_refuse_are_stored_safely_and_come_back_unchanged() {
    let database = TestDatabase::create("nul_values").await;
    let app = serve(&database).await;
    let mut nul_span = span("GET /a\0b", 1);
    nul_span.attributes.push(string_kv("weird", "x\0y"));
    // A second client's span in the same batch window.
    let mut client = TraceServiceClient::connect(grpc_endpoint(&app)).await.expect("connect");
    let mut other_client = client.clone();
    let (first, second) = tokio::join!(
        other_client.export(request(Some("svc\0name"), vec![nul_span])),
        client.export(request(None, vec![span("other client", 2)])),
    );
    assert!(first.expect("nul span accepted").into_inner().partial_success.is_none());
    assert!(second
        .expect("neighbour accepted")
        .into_inner()
        .partial_success
        .is_none());

    let (status, body) = get_json(&query_url(&app, &format!("/api/traces/{}", "11".repeat(16)))).await;
    assert_eq!(status, 200, "{body}");
    let spans = body["data"][0]["spans"].as_array().expect("spans");
    let nul = spans
        .iter()
        .find(|span| span["spanID"] == "0101010101010101")
        .expect("nul span");
    assert_eq!(nul["operationName"], "GET /a\u{0}b", "the original name is recoverable");
    let weird = nul["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .find(|tag| tag["key"] == "weird")
        .expect("weird tag");
    assert_eq!(weird["value"], "x\u{0}y");
    let processes = &body["data"][0]["processes"];
    let other = spans
        .iter()
        .find(|span| span["spanID"] == "0202020202020202")
        .expect("other span");
    assert_eq!(
        processes[other["processID"].as_str().expect("pid")]["serviceName"],
        "OTLPResourceNoServiceName"
    );
    assert_eq!(
        processes[nul["processID"].as_str().expect("pid")]["serviceName"],
        "svc\u{0}name"
    );
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_with_retryable_errors_and_nothing_is_lost() {
    let database = TestDatabase::create("overload").await;
    let mut config = config(&database);
    // An ingest memory budget of 128 KiB: the first request's rows (about 28 KiB) stay held while the table is
    // locked, and a request needs about four times its body while it is converted (twice the body to decode,
    // twice its block's bytes to lay out and write), so the second one does not fit beside them.
    config.pipeline.max_inflight_bytes = 128 * 1024;
    config.pipeline.admission_wait = Duration::from_millis(200);
    config.pipeline.retry_budget = Duration::from_secs(8);
    let app = tracepost::start(tracepost::Role::Serve, config).await.expect("start");

    // Hold the spans table so the first request's batch cannot commit and its bytes stay in flight.
    let mut blocker = database.client().await;
    let lock = blocker.transaction().await.expect("begin");
    lock.batch_execute("LOCK TABLE span_blocks IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");

    let first_spans: u8 = 30;
    let second_spans: u8 = 30;
    let big: Vec<Span> = (1..=first_spans).map(|id| span(&"n".repeat(900), id)).collect();
    let second: Vec<Span> = (100..100 + second_spans).map(|id| span(&"m".repeat(800), id)).collect();
    let endpoint = grpc_endpoint(&app);
    let first = tokio::spawn({
        let endpoint = endpoint.clone();
        async move {
            let mut client = TraceServiceClient::connect(endpoint).await.expect("connect");
            client.export(request(Some("svc"), big)).await
        }
    });
    // Wait until the first request holds the admission budget (a readiness signal, not a sleep).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let page = metrics_page(&app).await;
        if metric_value(&page, "tracepost_pending_spans") >= f64::from(first_spans) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "first request never admitted");
        tokio::task::yield_now().await;
    }

    let mut client = TraceServiceClient::connect(endpoint).await.expect("connect");
    let status = client
        .export(request(Some("svc"), second.clone()))
        .await
        .expect_err("overloaded");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    use tonic_types::StatusExt;
    let retry = status.get_details_retry_info().expect("RetryInfo detail");
    assert!(retry.retry_delay.is_some());

    let body = request(Some("svc"), second).encode_to_vec();
    let (status, headers, _) = post_otlp(&http_endpoint(&app), "application/x-protobuf", None, body).await;
    assert_eq!(status, 503);
    assert!(headers.get("retry-after").is_some());

    lock.rollback().await.expect("release the lock");
    let first = first
        .await
        .expect("task")
        .expect("the admitted request commits once the table is free");
    assert!(first.into_inner().partial_success.is_none());
    assert_eq!(database.span_rows().await, i64::from(first_spans));

    let page = metrics_page(&app).await;
    assert_eq!(
        metric_value(
            &page,
            "tracepost_requests_refused_total{transport=\"grpc\",reason=\"overloaded\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &page,
            "tracepost_requests_refused_total{transport=\"http\",reason=\"overloaded\"}"
        ),
        1.0
    );
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_gets_retryable_errors_not_acknowledgements() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let database = TestDatabase {
        name: "none".into(),
        url: format!("postgres://root@127.0.0.1:{port}/none?sslmode=disable"),
    };
    let mut config = config(&database);
    config.skip_migrations = true;
    config.pipeline.retry_budget = Duration::from_millis(600);
    config.database.connect_timeout = Duration::from_millis(200);
    config.shutdown_grace = Duration::from_secs(2);
    let app = tracepost::start(tracepost::Role::Serve, config)
        .await
        .expect("start without the database");

    let (status, body) = get_text(&query_url(&app, "/readyz")).await;
    assert_eq!(status, 503, "{body}");

    let mut client = TraceServiceClient::connect(grpc_endpoint(&app)).await.expect("connect");
    let status = client
        .export(request(Some("svc"), vec![span("lost?", 1)]))
        .await
        .expect_err("not durable");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("storage unavailable"), "{}", status.message());

    let body = request(Some("svc"), vec![span("lost?", 2)]).encode_to_vec();
    let (status, headers, _) = post_otlp(&http_endpoint(&app), "application/x-protobuf", None, body).await;
    assert_eq!(status, 503);
    assert!(headers.get("retry-after").is_some());

    let page = metrics_page(&app).await;
    assert_eq!(metric_value(&page, "tracepost_spans_failed_total"), 2.0);
    assert_eq!(metric_value(&page, "tracepost_spans_committed_total"), 0.0);
    // Nothing was in flight at shutdown, and nothing was acknowledged: a clean stop.
    app.stop().await.expect("clean shutdown");
}
