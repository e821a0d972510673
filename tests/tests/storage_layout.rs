//! What the block layout promises users: a value only one span carries is found through every search API,
//! a search that stops at its budget says so, the route template the metrics use finds its spans, spans stored
//! by an earlier version (one row per span) are still found, and a span's attributes can be read with SQL.

mod support;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use serde_json::Value;
use support::*;
use tracepost_storage::{connect_pool, DatabaseConfig, PostgresReader, SearchBudget, SpanFilter};

fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// One resource of `service` holding `spans`.
fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string_attribute("service.name", service)],
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

/// A span of trace `trace`, starting `start_ns`, lasting 2 ms.
fn span(trace: [u8; 16], id: u64, name: &str, start_ns: u64, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: trace.to_vec(),
        span_id: id.to_be_bytes().to_vec(),
        name: name.into(),
        kind: 2,
        start_time_unix_nano: start_ns,
        end_time_unix_nano: start_ns + 2_000_000,
        attributes,
        ..Default::default()
    }
}

fn trace_id(request: u64, trace: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&(request + 1).to_be_bytes());
    id[8..].copy_from_slice(&(trace + 1).to_be_bytes());
    id
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

/// GETs a URL: status, whether the response is marked incomplete, JSON body.
async fn get(url: &str) -> (u16, bool, Value) {
    let response = reqwest::get(url).await.expect("request");
    let status = response.status().as_u16();
    let incomplete = response.headers().get("tracepost-search-incomplete").is_some();
    (status, incomplete, response.json().await.expect("JSON body"))
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(byte).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn rfc3339(micros: i64) -> String {
    let seconds = micros.div_euclid(1_000_000);
    let days = seconds.div_euclid(86_400) as i32;
    let (year, month, day) = tracepost_storage::time::civil_from_days(days);
    let of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// Forty requests of 25 four-span traces each, across two services, every span saying
/// `http.response.status_code=200`; then one request of `cart` whose one span carries `order.id=o-rare-77`.
/// Returns the planted trace's ID (hex).
async fn load_with_one_rare_value(app: &tracepost::App, start_ns: u64) -> String {
    for request_index in 0..40u64 {
        let service = if request_index % 2 == 0 { "shop" } else { "cart" };
        let spans = (0..25u64)
            .flat_map(|trace| {
                (0..4u64).map(move |index| {
                    span(
                        trace_id(request_index, trace),
                        trace * 4 + index + 1,
                        &format!("GET /items/{}", trace * 4 + index),
                        start_ns + request_index * 1_000_000 + index * 1000,
                        vec![string_attribute("http.response.status_code", "200")],
                    )
                })
            })
            .collect();
        export(app, &request(service, spans)).await;
    }
    let planted = trace_id(1000, 7);
    export(
        app,
        &request(
            "cart",
            vec![span(
                planted,
                1,
                "POST /orders",
                start_ns + 20_000_000,
                vec![
                    string_attribute("http.response.status_code", "200"),
                    string_attribute("order.id", "o-rare-77"),
                ],
            )],
        ),
    )
    .await;
    planted.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A search for a value only one span among thousands carries returns exactly that span's trace, through
/// Jaeger's v1 search (service and `tags`), api v3 (`query.attributes`) and Tempo's TraceQL search with and
/// without a service; Tempo's metrics show the search read that block only, not every block; and a value no
/// span carries finds nothing, with the search complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_only_one_span_carries_is_found_through_every_search_api() {
    let database = TestDatabase::create("rare_value").await;
    let app = serve(&database).await;
    let now = now_micros();
    let start_ns = u64::try_from(now - 60_000_000).expect("positive") * 1000;
    let planted = load_with_one_rare_value(&app, start_ns).await;
    let window = format!("start={}&end={}", now - 3_600_000_000, now + 60_000_000);

    let tags = encode(r#"{"order.id":"o-rare-77"}"#);
    let (status, incomplete, body) = get(&query_url(
        &app,
        &format!("/api/traces?service=cart&tags={tags}&{window}"),
    ))
    .await;
    assert_eq!((status, incomplete), (200, false), "{body}");
    let found: Vec<&str> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|trace| trace["traceID"].as_str().expect("traceID"))
        .collect();
    assert_eq!(found, vec![planted.as_str()]);
    assert!(body["errors"].is_null(), "{body}");

    let v3 = format!(
        "/api/v3/traces?query.service_name=cart&query.attributes={tags}&query.start_time_min={}&query.start_time_max={}",
        encode(&rfc3339(now - 3_600_000_000)),
        encode(&rfc3339(now + 60_000_000)),
    );
    let (status, _, body) = get(&query_url(&app, &v3)).await;
    assert_eq!(status, 200, "{body}");
    let trace_ids: std::collections::HashSet<String> = body["result"]["resourceSpans"]
        .as_array()
        .expect("resourceSpans")
        .iter()
        .flat_map(|resource| resource["scopeSpans"].as_array().expect("scopeSpans"))
        .flat_map(|scope| scope["spans"].as_array().expect("spans"))
        .map(|span| span["traceId"].as_str().expect("traceId").to_owned())
        .collect();
    assert_eq!(trace_ids.into_iter().collect::<Vec<_>>(), vec![planted.clone()]);

    let seconds = format!("start={}&end={}", now / 1_000_000 - 3600, now / 1_000_000 + 60);
    for query in [
        r#"{ span.order.id = "o-rare-77" }"#,
        r#"{ resource.service.name = "cart" && span.order.id = "o-rare-77" }"#,
    ] {
        let (status, incomplete, body) =
            get(&tempo_url(&app, &format!("/api/search?q={}&{seconds}", encode(query)))).await;
        assert_eq!((status, incomplete), (200, false), "{query}: {body}");
        let traces = body["traces"].as_array().expect("traces");
        assert_eq!(traces.len(), 1, "{query}: {body}");
        assert_eq!(traces[0]["traceID"], planted.trim_start_matches('0'), "{query}");
        let inspected = body["metrics"]["inspectedTraces"].as_u64().expect("inspectedTraces");
        assert!(
            inspected < 200,
            "{query}: {inspected} traces inspected of 1,001: the bloom filters should skip the other blocks"
        );
        assert!(body["metrics"]["completedJobs"].is_null(), "complete: {body}");
    }

    let absent = encode(r#"{"order.id":"o-absent"}"#);
    let (status, incomplete, body) = get(&query_url(
        &app,
        &format!("/api/traces?service=cart&tags={absent}&{window}"),
    ))
    .await;
    assert_eq!((status, incomplete), (200, false), "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(0));
    app.begin_shutdown();
    app.wait().await.expect("clean shutdown");
}

/// A search whose budget runs out before it has looked at every block that could match says the answer is
/// incomplete; the same search with room to finish says it is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_stopped_by_its_budget_says_it_is_incomplete() {
    let database = TestDatabase::create("incomplete").await;
    let app = serve(&database).await;
    let now = now_micros();
    let start_ns = u64::try_from(now - 60_000_000).expect("positive") * 1000;
    load_with_one_rare_value(&app, start_ns).await;
    let reader = PostgresReader::new(connect_pool(&DatabaseConfig::new(database.url.clone())).expect("pool"));
    let filter = SpanFilter {
        services: Some(vec!["shop".into()]),
        start_min_ns: (now - 3_600_000_000) * 1000,
        start_max_ns: (now + 60_000_000) * 1000,
        ..SpanFilter::default()
    };
    let tight = SearchBudget {
        max_pages: 1,
        ..SearchBudget::default()
    };
    // No span matches, so the search must look at every block of `shop` (20) to be complete.
    let stopped = reader
        .search(&filter, 20, tight, |_, _| false, |_| true)
        .await
        .expect("search");
    assert!(!stopped.complete, "one page of blocks cannot cover 20 blocks");
    assert!(stopped.traces.is_empty());
    let finished = reader
        .search(&filter, 20, SearchBudget::default(), |_, _| false, |_| true)
        .await
        .expect("search");
    assert!(finished.complete);
    assert_eq!(
        finished.inspected_traces, 500,
        "every trace of shop's 20 blocks was checked"
    );
    app.begin_shutdown();
    app.wait().await.expect("clean shutdown");
}

/// Jaeger's Monitor tab lists operations by the route templates the RED metrics use (`/objects/{id}`) and its
/// "View traces" searches for that name: the search finds the spans named by raw paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searching_by_the_route_template_the_metrics_use_finds_its_raw_paths() {
    let database = TestDatabase::create("route_search").await;
    let app = serve(&database).await;
    let now = now_micros();
    let start_ns = u64::try_from(now - 60_000_000).expect("positive") * 1000;
    let spans = vec![
        span(trace_id(1, 1), 1, "/objects/123", start_ns, Vec::new()),
        span(trace_id(1, 2), 2, "/objects/456", start_ns + 1000, Vec::new()),
        span(trace_id(1, 3), 3, "/health", start_ns + 2000, Vec::new()),
    ];
    export(&app, &request("store", spans)).await;
    let window = format!("start={}&end={}", now - 3_600_000_000, now + 60_000_000);
    for (operation, expected) in [("/objects/{id}", 2), ("/objects/123", 1), ("/health", 1)] {
        let (status, _, body) = get(&query_url(
            &app,
            &format!("/api/traces?service=store&operation={}&{window}", encode(operation)),
        ))
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["data"].as_array().map(Vec::len),
            Some(expected),
            "{operation}: {body}"
        );
    }
    app.begin_shutdown();
    app.wait().await.expect("clean shutdown");
}

/// A database written by an earlier version holds one row per span in `spans`: after the upgrade its
/// traces are still found by ID and by search, beside traces stored in blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_stored_one_row_per_span_by_an_earlier_version_are_still_found() {
    use tracepost_storage::copy::{copy_header, copy_trailer, encode_span_row, RowContext, COPY_SPANS};
    use tracepost_storage::model::{self, SpanDetail, SpanId, SpanKind, StatusCode, TraceId};

    let database = TestDatabase::create("legacy_rows").await;
    let app = serve(&database).await;
    let now = now_micros();
    let start_ns = u64::try_from(now - 120_000_000).expect("positive") * 1000;
    // Rows as version 4 wrote them: the resource, the operation, the per-span COPY.
    let resource = model::Resource {
        attributes: vec![model::KeyValue::string("service.name", "old-shop")],
        ..Default::default()
    };
    let client = database.client().await;
    client
        .execute(
            "INSERT INTO resources (resource_id, day, service, cluster, body) VALUES (77, $1, 'old-shop', NULL, $2)",
            &[
                &tracepost_storage::time::day_of(start_ns as i64),
                &resource.encode_to_vec(),
            ],
        )
        .await
        .expect("resource");
    client
        .execute(
            "INSERT INTO operations (service, name, kind, last_seen_day) VALUES ('old-shop', 'GET /old', 2, $1)",
            &[&tracepost_storage::time::day_of(start_ns as i64)],
        )
        .await
        .expect("operation");
    let mut rows = bytes::BytesMut::new();
    rows.extend_from_slice(&copy_header());
    for index in 0..3u8 {
        let span = model::Span {
            trace_id: TraceId([0x0d; 16]),
            span_id: SpanId([index + 1; 8]),
            parent_span_id: (index > 0).then_some(SpanId([index; 8])),
            name: "GET /old".into(),
            kind: SpanKind::Server,
            start_time_unix_nano: start_ns + u64::from(index) * 1000,
            status_code: StatusCode::Unset,
            detail: SpanDetail {
                attributes: vec![model::KeyValue::string("legacy", "yes")],
                end_time_unix_nano: start_ns + 5_000_000,
                ..Default::default()
            },
        };
        let context = RowContext {
            service: "old-shop",
            cluster: None,
            resource_id: 77,
        };
        encode_span_row(&mut rows, context, &span);
    }
    rows.extend_from_slice(&copy_trailer());
    let sink = client.copy_in(COPY_SPANS).await.expect("copy");
    let mut sink = std::pin::pin!(sink);
    futures_util::SinkExt::send(&mut sink, rows.freeze())
        .await
        .expect("rows");
    sink.as_mut().finish().await.expect("copied");
    // And one trace written now, in blocks.
    export(
        &app,
        &request(
            "new-shop",
            vec![span(trace_id(5, 5), 1, "GET /new", start_ns, Vec::new())],
        ),
    )
    .await;

    let legacy = "0d".repeat(16);
    let (status, _, body) = get(&query_url(&app, &format!("/api/traces/{legacy}"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["spans"].as_array().map(Vec::len), Some(3));
    assert_eq!(body["data"][0]["processes"]["p1"]["serviceName"], "old-shop");
    let window = format!("start={}&end={}", now - 3_600_000_000, now + 60_000_000);
    for (service, expected) in [("old-shop", legacy.clone()), ("new-shop", hex(&trace_id(5, 5)))] {
        let tags = encode(if service == "old-shop" {
            r#"{"legacy":"yes"}"#
        } else {
            "{}"
        });
        let (status, _, body) = get(&query_url(
            &app,
            &format!("/api/traces?service={service}&tags={tags}&{window}"),
        ))
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"][0]["traceID"], expected.as_str(), "{service}: {body}");
    }
    let (status, _, body) = get(&query_url(&app, "/api/services")).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"], serde_json::json!(["new-shop", "old-shop"]));
    app.begin_shutdown();
    app.wait().await.expect("clean shutdown");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A user reads a stored span's attributes with SQL, through the `tracepost_spans` view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spans_attributes_can_be_read_with_sql() {
    let database = TestDatabase::create("sql_view").await;
    let app = serve(&database).await;
    let now = now_micros();
    let start_ns = u64::try_from(now - 60_000_000).expect("positive") * 1000;
    export(
        &app,
        &request(
            "cart",
            vec![span(
                trace_id(9, 9),
                42,
                "POST /orders",
                start_ns,
                vec![string_attribute("order.id", "o-1")],
            )],
        ),
    )
    .await;
    let row = database
        .client()
        .await
        .query_one(
            "SELECT trace_id, span_id, service, name, kind, attributes->>'order.id', duration_ns
             FROM tracepost_spans WHERE service = 'cart'",
            &[],
        )
        .await
        .expect("one span");
    assert_eq!(row.get::<_, String>(0), hex(&trace_id(9, 9)));
    assert_eq!(row.get::<_, String>(1), format!("{:016x}", 42));
    assert_eq!(row.get::<_, String>(2), "cart");
    assert_eq!(row.get::<_, String>(3), "POST /orders");
    assert_eq!(row.get::<_, String>(4), "server");
    assert_eq!(row.get::<_, String>(5), "o-1");
    assert_eq!(row.get::<_, i64>(6), 2_000_000);
    app.begin_shutdown();
    app.wait().await.expect("clean shutdown");
}
