//! The query side as a hostile client and a careless operator would try it: queries that used to crash, poison
//! or exhaust tracepost get an answer that says what was wrong, and tracepost keeps answering everyone else.

mod support;

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use serde_json::Value;
use support::*;
use tracepost_storage::model::TraceId;
use tracepost_storage::{connect_pool, schema, DatabaseConfig, PostgresReader, TimeRange};

/// The default span limit per trace (`QueryLimits::max_spans_per_trace`).
const MAX_SPANS_PER_TRACE: usize = 10_000;

/// One resource of `service` holding `spans`.
fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(service.into())),
                    }),
                    ..Default::default()
                }],
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

/// `count` spans of trace `trace_id`, a microsecond apart from `start_ns`, each lasting 1 ms; span `i` has span
/// ID `i + 1` and is named `op <i>`.
fn spans(trace_id: [u8; 16], start_ns: u64, count: u64) -> Vec<Span> {
    (0..count)
        .map(|index| Span {
            trace_id: trace_id.to_vec(),
            span_id: (index + 1).to_be_bytes().to_vec(),
            name: format!("op {index}"),
            kind: 2,
            start_time_unix_nano: start_ns + index * 1000,
            end_time_unix_nano: start_ns + index * 1000 + 1_000_000,
            ..Default::default()
        })
        .collect()
}

/// Exports `request` over OTLP/HTTP protobuf and asserts it was acknowledged.
async fn export(app: &tracepost::App, request: &ExportTraceServiceRequest) {
    let (status, _, body) = post_otlp(
        &http_endpoint(app),
        "application/x-protobuf",
        None,
        request.encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// GETs a URL and returns (status, the `tracepost-trace-truncated` header, JSON body).
async fn get_with_truncation(url: &str) -> (u16, Option<String>, Value) {
    let response = reqwest::get(url).await.expect("request");
    let status = response.status().as_u16();
    let truncated = response
        .headers()
        .get("tracepost-trace-truncated")
        .map(|value| value.to_str().expect("ascii header").to_owned());
    (status, truncated, response.json().await.expect("JSON body"))
}

/// The spans of an OTLP/JSON `TracesData`.
fn otlp_spans(data: &Value) -> Vec<&Value> {
    data["resourceSpans"]
        .as_array()
        .expect("resourceSpans")
        .iter()
        .flat_map(|resource| resource["scopeSpans"].as_array().expect("scopeSpans"))
        .flat_map(|scope| scope["spans"].as_array().expect("spans"))
        .collect()
}

/// Percent-encodes every byte outside the unreserved set, as a browser or Grafana sends a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(byte).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A TraceQL query opened with thousands of parentheses used to overflow the parser's stack and abort the
/// process; now search, tag names and tag values answer 400 naming the limit, and the listener keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tempo_query_with_thousands_of_parentheses_is_refused_and_tracepost_keeps_serving() {
    let database = TestDatabase::create("deep_traceql").await;
    let app = serve(&database).await;
    let hostile = encode(&format!("{{{}", "(".repeat(5000)));
    for path in [
        "/api/search?q=",
        "/api/v2/search/tag/name/values?q=",
        "/api/v2/search/tag/span.http.route/values?q=",
        "/api/v2/search/tags?q=",
    ] {
        let (status, body) = get_text(&tempo_url(&app, &format!("{path}{hostile}"))).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(
            body,
            "invalid TraceQL query: parentheses are nested more than 32 deep: remove redundant parentheses \
             (at character 34)\n",
            "{path}"
        );
    }
    assert_eq!(get_text(&tempo_url(&app, "/api/echo")).await, (200, "echo".to_owned()));
    app.begin_shutdown();
    app.wait().await.expect("clean shutdown");
}

/// Asking for more traces than a search may return is a 400 in each API's error format that names the cap and
/// says how to narrow the request; a Tempo search asking for too many spans per span set likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_asking_for_more_than_the_caps_are_refused_with_the_cap_named() {
    let database = TestDatabase::create("search_caps").await;
    let app = serve(&database).await;
    let narrow = "ask for fewer, or narrow the search (service, operation, tags, a shorter time range)";

    let (status, body) = get_json(&query_url(&app, "/api/traces?service=cart&limit=100000")).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0]["msg"],
        format!("limit=100000 is over the limit of 1500 traces per search: {narrow}")
    );

    let (status, body) = get_json(&query_url(
        &app,
        "/api/v3/traces?query.startTimeMin=2025-08-01T09:00:00Z&query.startTimeMax=2025-08-01T10:00:00Z\
         &query.searchDepth=2000",
    ))
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"]["message"],
        format!("query.searchDepth=2000 is over the limit of 1500 traces per search: {narrow}")
    );

    let ids = (1..=1501)
        .map(|id| format!("traceID={id:x}"))
        .collect::<Vec<_>>()
        .join("&");
    let (status, body) = get_json(&query_url(&app, &format!("/api/traces?{ids}"))).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0]["msg"],
        "1501 traceID parameters are over the limit of 1500 traces per request: ask for fewer traces at a time"
    );

    let (status, body) = get_text(&tempo_url(&app, "/api/search?q=%7B%7D&limit=1000000")).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        format!("limit=1000000 is over the limit of 1500 traces per search: {narrow}\n")
    );
    let (status, body) = get_text(&tempo_url(&app, "/api/search?q=%7B%7D&spss=101")).await;
    assert_eq!(
        (status, body.as_str()),
        (
            400,
            "spss=101 is over the limit of 100 spans per span set: ask for fewer\n"
        )
    );
    let (status, _) = get_text(&tempo_url(&app, "/api/search?q=%7B%7D&limit=1500&spss=100")).await;
    assert_eq!(status, 200, "at the caps");
    app.begin_shutdown();
    app.wait().await.expect("clean shutdown");
}

/// A trace with more spans than the per-trace limit comes back cut to its first spans by start time: Jaeger's
/// JSON says so in the first span's `warnings`, api_v3 and Tempo (OTLP, which has no place for it) in a
/// response header, and searches return the same cut trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looking_up_a_trace_longer_than_the_span_limit_returns_its_first_spans_and_says_so() {
    let database = TestDatabase::create("truncated_trace").await;
    let app = serve(&database).await;
    let trace_id = [0x5a; 16];
    let hex = "5a".repeat(16);
    let start_ns = u64::try_from(now_micros() - 60_000_000).expect("positive") * 1000;
    let total = MAX_SPANS_PER_TRACE as u64 + 50;
    export(&app, &request("huge", spans(trace_id, start_ns, total))).await;
    let last_shown_micros = (start_ns + (MAX_SPANS_PER_TRACE as u64 - 1) * 1000) / 1000;
    let warning = format!(
        "trace truncated: only its first {MAX_SPANS_PER_TRACE} spans by start time are shown (the span limit per trace)"
    );

    let (status, body) = get_json(&query_url(&app, &format!("/api/traces/{hex}"))).await;
    assert_eq!(status, 200);
    let jaeger_spans = body["data"][0]["spans"].as_array().expect("spans");
    assert_eq!(jaeger_spans.len(), MAX_SPANS_PER_TRACE);
    assert_eq!(jaeger_spans[0]["warnings"], serde_json::json!([warning]));
    assert_eq!(jaeger_spans[1]["warnings"], Value::Null);
    let latest = jaeger_spans
        .iter()
        .map(|span| span["startTime"].as_u64().expect("µs"))
        .max();
    assert_eq!(
        latest,
        Some(last_shown_micros),
        "the first spans by start time, not any"
    );

    let (status, truncated, body) = get_with_truncation(&query_url(&app, &format!("/api/v3/traces/{hex}"))).await;
    assert_eq!(status, 200);
    assert_eq!(truncated.as_deref(), Some("10000"));
    assert_eq!(otlp_spans(&body["result"]).len(), MAX_SPANS_PER_TRACE);

    let (status, truncated, body) = get_with_truncation(&tempo_url(&app, &format!("/api/v2/traces/{hex}"))).await;
    assert_eq!(status, 200);
    assert_eq!(truncated.as_deref(), Some("10000"));
    assert_eq!(otlp_spans(&body["trace"]).len(), MAX_SPANS_PER_TRACE);

    let now = now_micros();
    let (status, body) = get_json(&query_url(
        &app,
        &format!(
            "/api/traces?service=huge&start={}&end={now}&limit=1",
            now - 3_600_000_000
        ),
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"][0]["spans"].as_array().map(Vec::len),
        Some(MAX_SPANS_PER_TRACE)
    );
    assert_eq!(body["data"][0]["spans"][0]["warnings"], serde_json::json!([warning]));

    // A trace within the limit is whole and unmarked.
    export(&app, &request("small", spans([0x5b; 16], start_ns, 3))).await;
    let (status, truncated, body) =
        get_with_truncation(&query_url(&app, &format!("/api/v3/traces/{}", "5b".repeat(16)))).await;
    assert_eq!((status, truncated), (200, None));
    assert_eq!(otlp_spans(&body["result"]).len(), 3);
    app.begin_shutdown();
    app.wait().await.expect("clean shutdown");
}

/// Every pooled connection carries the statement timeout, so PostgreSQL cancels a statement that runs past it;
/// migrations are exempt, even under a timeout shorter than any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_the_timeout_is_cancelled_but_migrations_are_not() {
    let database = TestDatabase::create("statement_timeout").await;
    let pool_with = |timeout: Duration| {
        let mut config = DatabaseConfig::new(database.url.clone());
        config.statement_timeout = Some(timeout);
        config.pool_size = 1;
        connect_pool(&config).expect("pool")
    };
    let applied = schema::migrate(&pool_with(Duration::from_millis(1)))
        .await
        .expect("migrations are not cut by a 1 ms statement timeout");
    assert_eq!(applied.len(), schema::MIGRATIONS.len());

    let database = pool_with(Duration::from_millis(300));
    let setting = database.query_text("SHOW statement_timeout").await.expect("show");
    assert_eq!(setting.as_deref(), Some("300ms"));
    let error = database
        .query_text("SELECT pg_sleep(5)")
        .await
        .expect_err("cancelled by the timeout");
    assert!(
        error.is_unavailable() && error.to_string().contains("57014"),
        "query_canceled: {error}"
    );
}

/// The text after the status line of every answer: what a client may see. None may carry internal detail.
fn assert_no_internal_detail(body: &str, url: &str) {
    for secret in [
        "postgres",
        "127.0.0.1",
        "spans",
        "operations",
        "SELECT",
        "relation",
        "/tmp",
        "57014",
    ] {
        assert!(!body.contains(secret), "{url} leaks {secret:?}: {body}");
    }
}

/// With PostgreSQL unreachable the query and Tempo APIs answer 503 with `Retry-After` and a message that says
/// only that the database is unavailable (it used to be a 500).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_while_the_database_is_unreachable_are_503_with_retry_after() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("address").port();
    drop(closed);
    let nowhere = TestDatabase {
        name: "unreachable".into(),
        url: format!("postgres://postgres:secret@127.0.0.1:{port}/tracepost?sslmode=disable"),
    };
    let app = tracepost::start(tracepost::Role::Query, config(&nowhere))
        .await
        .expect("the query role starts without the database");
    let now = now_micros();
    let urls = [
        query_url(&app, "/api/services"),
        query_url(&app, "/api/traces/a1b2c3d4e5f60718"),
        query_url(
            &app,
            &format!("/api/traces?service=cart&start={}&end={now}", now - 3_600_000_000),
        ),
        query_url(&app, "/api/v3/traces/a1b2c3d4e5f60718"),
        tempo_url(&app, "/api/search?q=%7B%7D"),
        tempo_url(&app, "/api/v2/traces/a1b2c3d4e5f60718"),
        tempo_url(&app, "/api/v2/search/tag/resource.service.name/values"),
    ];
    for url in urls {
        let response = reqwest::get(&url).await.expect("request");
        assert_eq!(response.status().as_u16(), 503, "{url}");
        let retry_after = response.headers().get("retry-after").cloned();
        assert_eq!(
            retry_after.as_ref().map(|value| value.as_bytes()),
            Some(&b"5"[..]),
            "{url}"
        );
        let body = response.text().await.expect("body");
        assert!(body.contains("database unavailable, retry later"), "{url}: {body}");
        assert_no_internal_detail(&body, &url);
    }
    app.begin_shutdown();
    app.wait().await.expect("clean shutdown");
}

/// A query stuck behind a lock is cancelled by the statement timeout and answered 503 (retry), not left hanging;
/// once the lock is gone the same request answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_stuck_past_the_statement_timeout_is_503_not_a_hang() {
    let database = TestDatabase::create("stuck_query").await;
    let mut settings = config(&database);
    settings.database.statement_timeout = Some(Duration::from_millis(300));
    let app = tracepost::start(tracepost::Role::Serve, settings)
        .await
        .expect("tracepost starts");
    let mut blocker = database.client().await;
    let lock = blocker.transaction().await.expect("begin");
    lock.batch_execute("LOCK TABLE operations IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");

    let url = query_url(&app, "/api/services");
    let response = reqwest::get(&url).await.expect("request");
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body = response.text().await.expect("body");
    assert_no_internal_detail(&body, &url);
    let (status, body) = get_text(&tempo_url(&app, "/api/v2/search/tag/resource.service.name/values")).await;
    assert_eq!((status, body.as_str()), (503, "database unavailable, retry later\n"));

    lock.rollback().await.expect("unlock");
    let (status, body) = get_json(&url).await;
    assert_eq!((status, body["data"].clone()), (200, serde_json::json!([])));
    app.begin_shutdown();
    app.wait().await.expect("clean shutdown");
}

/// A NUL byte in a service or operation parameter (`service=a%00b`) used to be a 500 (PostgreSQL text cannot
/// hold NUL). Stored names carry U+FFFD for NUL, so the query maps it the same way and finds what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searching_for_a_service_name_with_a_nul_byte_finds_its_traces() {
    let database = TestDatabase::create("nul_service").await;
    let app = serve(&database).await;
    let start_ns = u64::try_from(now_micros() - 60_000_000).expect("positive") * 1000;
    let mut sent = spans([0x4e; 16], start_ns, 2);
    sent[0].name = "GET\0/x".into();
    export(&app, &request("nul\0svc", sent)).await;
    let now = now_micros();
    let window = format!("start={}&end={now}", now - 3_600_000_000);

    let (status, body) = get_json(&query_url(&app, &format!("/api/traces?service=nul%00svc&{window}"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["data"][0]["spans"].as_array().map(Vec::len), Some(2));
    let (status, body) = get_json(&query_url(
        &app,
        &format!("/api/traces?service=nul%00svc&operation=GET%00%2Fx&{window}"),
    ))
    .await;
    assert_eq!(
        (status, body["data"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{body}"
    );
    assert_eq!(
        body["data"][0]["spans"][0]["operationName"], "GET\u{0}/x",
        "the name as sent"
    );

    let (status, body) = get_json(&query_url(&app, "/api/services/nul%00svc/operations")).await;
    assert_eq!((status, body["total"].clone()), (200, serde_json::json!(2)), "{body}");
    let (status, body) = get_json(&query_url(
        &app,
        "/api/v3/traces?query.serviceName=nul%00svc&query.startTimeMin=2000-01-01T00:00:00Z\
         &query.startTimeMax=2100-01-01T00:00:00Z",
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(otlp_spans(&body["result"]).len(), 2);
    // Tempo: TraceQL's `\x00` escape, and the legacy `tags`.
    for search in [
        format!("q={}", encode(r#"{ resource.service.name = "nul\x00svc" }"#)),
        "tags=service.name%3Dnul%00svc".to_owned(),
    ] {
        let (status, body) = get_json(&tempo_url(&app, &format!("/api/search?{search}"))).await;
        assert_eq!(status, 200, "{search}: {body}");
        assert_eq!(body["traces"].as_array().map(Vec::len), Some(1), "{search}: {body}");
    }
    app.begin_shutdown();
    app.wait().await.expect("clean shutdown");
}

/// One stored block that cannot be decoded, beside a valid block of the same trace and service, must not turn
/// the trace lookup and searches touching it into a 500: the bad block is left out and counted, and the trace
/// and the searches answer with the valid spans; a resource whose body cannot be decoded likewise leaves its
/// spans without resource attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_stored_row_is_left_out_and_the_trace_and_searches_still_answer() {
    let database = TestDatabase::create("corrupt_row").await;
    let app = serve(&database).await;
    let start_ns = u64::try_from(now_micros() - 60_000_000).expect("positive") * 1000;
    export(&app, &request("poisoned", spans([0x6c; 16], start_ns, 2))).await;
    export(&app, &request("bare", spans([0x6d; 16], start_ns, 1))).await;
    let client = database.client().await;
    let inserted = client
        .execute(
            "WITH block AS (
                 INSERT INTO span_blocks (block_id, start_ns, last_start_ns, service, cluster, span_count,
                                          min_duration_ns, max_duration_ns, bloom, spans)
                 SELECT 999, start_ns, last_start_ns + 1, service, cluster, 1, min_duration_ns, max_duration_ns,
                        bloom, '\\xffffffff'::bytea
                 FROM span_blocks WHERE service = 'poisoned' LIMIT 1
                 RETURNING start_ns)
             INSERT INTO trace_index (trace_id, start_ns, block_id, span_count)
             SELECT encode($1::bytea, 'hex')::uuid, start_ns, 999, 1 FROM block",
            &[&vec![0x6c_u8; 16]],
        )
        .await
        .expect("insert a corrupt block");
    assert_eq!(inserted, 1);
    let corrupted = client
        .execute(
            "UPDATE resources SET body = '\\xffffffff'::bytea WHERE service = 'bare'",
            &[],
        )
        .await
        .expect("corrupt a resource");
    assert_eq!(corrupted, 1);

    let poisoned = "6c".repeat(16);
    let (status, body) = get_json(&query_url(&app, &format!("/api/traces/{poisoned}"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["spans"].as_array().map(Vec::len), Some(2));
    let (status, body) = get_json(&query_url(&app, &format!("/api/v3/traces/{poisoned}"))).await;
    assert_eq!((status, otlp_spans(&body["result"]).len()), (200, 2));
    let now = now_micros();
    let (status, body) = get_json(&query_url(
        &app,
        &format!("/api/traces?service=poisoned&start={}&end={now}", now - 3_600_000_000),
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(1));
    let (status, body) = get_json(&tempo_url(&app, "/api/search?q=%7B%7D")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["traces"].as_array().map(Vec::len), Some(2), "both traces: {body}");
    let (status, body) = get_json(&query_url(&app, &format!("/api/traces/{}", "6d".repeat(16)))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["spans"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        body["data"][0]["processes"]["p1"]["serviceName"], "bare",
        "the derived service name"
    );

    // The reader counts each row it left out.
    let reader = PostgresReader::new(connect_pool(&DatabaseConfig::new(database.url.clone())).expect("pool"));
    let trace = reader
        .get_trace(TraceId([0x6c; 16]), TimeRange::default())
        .await
        .expect("answers")
        .expect("found");
    assert_eq!(trace.spans.len(), 2);
    assert_eq!(reader.undecodable_rows().get(), 1);
    reader
        .get_trace(TraceId([0x6d; 16]), TimeRange::default())
        .await
        .expect("answers");
    assert_eq!(reader.undecodable_rows().get(), 2, "the resource too");
    app.begin_shutdown();
    app.wait().await.expect("clean shutdown");
}

/// The attack: a search within every per-request cap (1,500 traces of 10,000 spans) held 15 million spans and
/// peaked past a gigabyte. A search now stops once the traces it found hold `--max-spans-per-search` spans and
/// answers with those, newest first, through the Jaeger API and Tempo's search alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_stops_at_the_span_cap_and_answers_with_the_traces_found_so_far() {
    let database = TestDatabase::create("search_span_cap").await;
    let mut config = config(&database);
    config.query_limits.max_spans_per_search = 450;
    let app = tracepost::start(tracepost::Role::Serve, config).await.expect("start");
    let start_ns = u64::try_from(now_micros() - 60_000_000).expect("positive") * 1000;
    for trace in 1..=20u8 {
        let spans = spans([trace; 16], start_ns + u64::from(trace) * 10_000_000, 100);
        export(&app, &request("wide", spans)).await;
    }
    let (status, found) = get_json(&query_url(&app, "/api/traces?service=wide&limit=1500&lookback=1h")).await;
    assert_eq!(status, 200, "{found}");
    let traces = found["data"].as_array().expect("traces");
    // Traces are added whole until they hold 450 spans or more: five of a hundred spans.
    assert_eq!(traces.len(), 5, "{found}");
    assert_eq!(traces[0]["traceID"], "14".repeat(16), "the newest first");
    let (status, tempo) = get_json(&tempo_url(
        &app,
        &format!(
            "/api/search?q={}&limit=1500",
            encode(r#"{ resource.service.name = "wide" }"#)
        ),
    ))
    .await;
    assert_eq!(status, 200, "{tempo}");
    assert_eq!(tempo["traces"].as_array().map(Vec::len), Some(5), "{tempo}");
    app.stop().await.expect("clean shutdown");
}
