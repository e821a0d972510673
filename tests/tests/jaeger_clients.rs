//! Grafana's Jaeger data source and the Jaeger UI, old and new, replayed request by request against data sent
//! with the real OpenTelemetry SDK.

mod support;

use serde_json::{json, Value};
use support::*;

struct Fixture {
    app: tracepost::App,
    two: TwoServiceTrace,
    single: SdkTrace,
    database: TestDatabase,
}

async fn fixture(test: &str) -> Fixture {
    let database = TestDatabase::create(test).await;
    let app = serve(&database).await;
    let two = two_service_trace();
    let single = sdk_trace("checkout");
    let endpoint = grpc_endpoint(&app);
    export_grpc(&endpoint, &two.frontend).await.expect("frontend export");
    export_grpc(&endpoint, &two.cart).await.expect("cart export");
    // The cart service's exporter lost its acknowledgement and sent the same spans again.
    export_grpc(&endpoint, &two.cart).await.expect("cart retry");
    export_grpc(&endpoint, &single).await.expect("checkout export");
    Fixture {
        app,
        two,
        single,
        database,
    }
}

fn url(fixture: &Fixture, path: &str) -> String {
    query_url(&fixture.app, path)
}

async fn ok_json(url: &str) -> Value {
    let (status, body) = get_json(url).await;
    assert_eq!(status, 200, "{url}: {body}");
    body
}

fn window(minutes_back: i64) -> (i64, i64) {
    let now = now_micros();
    (now - minutes_back * 60_000_000, now + 60_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_jaeger_data_source_test_search_trace_view_and_node_graph() {
    let fixture = fixture("grafana_jaeger").await;

    // Test button (Grafana ≤ 11 wants a non-empty list).
    let services = ok_json(&url(&fixture, "/api/services")).await;
    assert_eq!(
        services,
        json!({"data": ["cart", "checkout", "frontend"], "total": 3, "limit": 0, "offset": 0, "errors": null})
    );

    // Search form: operations of the chosen service, then the search itself (Go url.Values encoding: sorted
    // keys, `+` for spaces, µs times).
    let operations = ok_json(&url(&fixture, "/api/services/frontend/operations")).await;
    assert_eq!(
        operations,
        json!({"data": ["GET /cart", "GET cart"], "total": 2, "limit": 0, "offset": 0, "errors": null})
    );
    let (start, end) = window(10);
    let search = ok_json(&url(
        &fixture,
        &format!(
            "/api/traces?end={end}&limit=20&maxDuration=2s&operation=GET+%2Fcart&service=frontend&start={start}\
             &tags=%7B%22http.response.status_code%22%3A%22503%22%7D"
        ),
    ))
    .await;
    let traces = search["data"].as_array().expect("data");
    assert_eq!(traces.len(), 1, "{search}");
    assert_eq!(traces[0]["traceID"], fixture.two.trace_id());
    assert_eq!(
        traces[0]["spans"].as_array().map(Vec::len),
        Some(3),
        "the retried span appears once"
    );

    // frontend's root span answered HTTP 503 with an UNSET status: tracepost stored it as an error, so
    // `error=true` finds the trace through frontend too.
    let derived = ok_json(&url(
        &fixture,
        &format!("/api/traces?end={end}&service=frontend&start={start}&tags=%7B%22error%22%3A%22true%22%7D"),
    ))
    .await;
    assert_eq!(derived["data"][0]["traceID"], fixture.two.trace_id(), "{derived}");
    // A tag value no frontend span has does not match.
    let miss = ok_json(&url(
        &fixture,
        &format!("/api/traces?end={end}&service=frontend&start={start}&tags=%7B%22http.response.status_code%22%3A%22200%22%7D"),
    ))
    .await;
    assert_eq!(miss["data"], json!([]));
    // ...but it does on the cart service, where `error=true` comes from the span's ERROR status.
    let hit = ok_json(&url(
        &fixture,
        &format!("/api/traces?end={end}&service=cart&start={start}&tags=error%3Dtrue"),
    ))
    .await;
    assert_eq!(hit["data"][0]["traceID"], fixture.two.trace_id());

    // Trace view, with the millisecond time hint Grafana 12+ sends.
    let (start_ms, end_ms) = (start / 1000, end / 1000);
    let trace = ok_json(&url(
        &fixture,
        &format!("/api/traces/{}?end={end_ms}&start={start_ms}", fixture.two.trace_id()),
    ))
    .await;
    let spans = trace["data"][0]["spans"].as_array().expect("spans");
    assert_eq!(spans.len(), 3);
    let processes = &trace["data"][0]["processes"];
    let names: Vec<&str> = processes
        .as_object()
        .expect("processes")
        .values()
        .filter_map(|p| p["serviceName"].as_str())
        .collect();
    assert!(names.contains(&"frontend") && names.contains(&"cart"), "{names:?}");

    // Node graph / dependency graph.
    let dependencies = ok_json(&url(
        &fixture,
        &format!("/api/dependencies?endTs={end_ms}&lookback=3600000"),
    ))
    .await;
    assert_eq!(
        dependencies,
        json!({"data": [{"parent": "frontend", "child": "cart", "callCount": 1}], "total": 0, "limit": 0, "offset": 0, "errors": null})
    );
    assert_eq!(
        fixture.database.span_rows().await,
        6,
        "3 frontend/cart spans, 1 retried, 2 checkout"
    );
    fixture.app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jaeger_ui_before_2_15_search_trace_compare_and_dependencies() {
    let fixture = fixture("jaeger_ui_v1").await;
    let (start, end) = window(60);
    // Search page: empty durations are sent without '='.
    let search = ok_json(&url(
        &fixture,
        &format!("/api/traces?end={end}&limit=20&lookback=1h&maxDuration&minDuration&service=checkout&start={start}"),
    ))
    .await;
    assert_eq!(search["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(search["data"][0]["traceID"], fixture.single.trace_id());

    // Compare / lookup by IDs, one of which does not exist.
    let missing = "00000000000000000000000000000bad";
    let compare = ok_json(&url(
        &fixture,
        &format!(
            "/api/traces?traceID={}&traceID={}&traceID={missing}",
            fixture.two.trace_id(),
            fixture.single.trace_id()
        ),
    ))
    .await;
    let ids: Vec<&str> = compare["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|t| t["traceID"].as_str())
        .collect();
    assert_eq!(ids, vec![fixture.two.trace_id(), fixture.single.trace_id()]);
    assert_eq!(
        compare["errors"],
        json!([{"msg": "trace not found", "traceID": "0000000000000bad"}])
    );

    // Trace page.
    let trace = ok_json(&url(&fixture, &format!("/api/traces/{}", fixture.single.trace_id()))).await;
    assert_eq!(trace["data"][0]["spans"].as_array().map(Vec::len), Some(2));

    // System architecture: a week.
    let dependencies = ok_json(&url(
        &fixture,
        &format!("/api/dependencies?endTs={}&lookback=604800000", end / 1000),
    ))
    .await;
    assert_eq!(
        dependencies["data"],
        json!([{"parent": "frontend", "child": "cart", "callCount": 1}])
    );

    // Errors in Jaeger's envelope, naming the parameter.
    let (status, body) = get_json(&url(&fixture, "/api/traces?service=checkout&start=yesterday")).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0]["msg"],
        "unable to parse param 'start': strconv.ParseInt: parsing \"yesterday\": invalid syntax"
    );
    let (status, body) = get_json(&url(&fixture, "/api/traces?limit=20")).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0],
        json!({"code": 400, "msg": "parameter 'service' is required"})
    );
    let (status, body) = get_json(&url(&fixture, "/api/operations")).await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["msg"], "parameter 'service' is required");
    fixture.app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jaeger_ui_from_2_19_services_operations_and_trace_summaries() {
    let fixture = fixture("jaeger_ui_v3").await;
    let services = ok_json(&url(&fixture, "/api/v3/services")).await;
    assert_eq!(services, json!({"services": ["cart", "checkout", "frontend"]}));
    let operations = ok_json(&url(&fixture, "/api/v3/operations?service=frontend")).await;
    assert_eq!(
        operations,
        json!({"operations": [{"name": "GET /cart", "spanKind": "server"}, {"name": "GET cart", "spanKind": "client"}]})
    );
    let servers = ok_json(&url(&fixture, "/api/v3/operations?service=frontend&spanKind=server")).await;
    assert_eq!(
        servers,
        json!({"operations": [{"name": "GET /cart", "spanKind": "server"}]})
    );
    let v1_operations = ok_json(&url(&fixture, "/api/operations?service=cart&spanKind=server")).await;
    assert_eq!(
        v1_operations,
        json!({"data": [{"name": "GET /items", "spanKind": "server"}], "total": 1, "limit": 0, "offset": 0, "errors": null})
    );

    let now = tracepost_storage::time::now_unix_nanos() / 1_000_000_000;
    let (min, max) = (rfc3339(now - 600), rfc3339(now + 60));
    let summaries = ok_json(&url(
        &fixture,
        &format!(
            "/api/v3/trace-summaries?query.serviceName=cart&query.attributes=%7B%22error%22%3A%22true%22%7D\
             &query.durationMin=0s&query.searchDepth=20&query.startTimeMin={min}&query.startTimeMax={max}"
        ),
    ))
    .await;
    let summary = &summaries["summaries"][0];
    assert_eq!(summary["traceId"], fixture.two.trace_id());
    assert_eq!(summary["rootServiceName"], "frontend");
    assert_eq!(summary["rootOperationName"], "GET /cart");
    assert_eq!(summary["spanCount"], 3);
    assert_eq!(summary["errorSpanCount"], 2, "cart's error and frontend's derived 503");
    assert_eq!(summary["orphanSpanCount"], 0);
    assert_eq!(
        summary["services"],
        json!([{"name": "frontend", "spanCount": 2, "errorSpanCount": 1}, {"name": "cart", "spanCount": 1, "errorSpanCount": 1}])
    );
    assert!(summary["minStartTimeUnixNano"]
        .as_str()
        .is_some_and(|text| text.parse::<u64>().is_ok()));

    // Nothing found: 200 with no summaries for the UI, 404 "No traces found" on /api/v3/traces.
    let window = format!("query.startTimeMin={min}&query.startTimeMax={max}");
    let empty = ok_json(&url(
        &fixture,
        &format!("/api/v3/trace-summaries?query.serviceName=nobody&{window}"),
    ))
    .await;
    assert_eq!(empty, json!({"summaries": []}));
    let (status, body) = get_json(&url(
        &fixture,
        &format!("/api/v3/traces?query.serviceName=nobody&{window}"),
    ))
    .await;
    assert_eq!(status, 404);
    assert_eq!(body, json!({"error": {"httpCode": 404, "message": "No traces found"}}));
    let found = ok_json(&url(
        &fixture,
        &format!("/api/v3/traces?query.serviceName=checkout&{window}"),
    ))
    .await;
    assert_eq!(
        found["result"]["resourceSpans"][0]["scopeSpans"][0]["spans"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let (status, body) = get_json(&url(&fixture, "/api/v3/traces?query.serviceName=checkout")).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"]["message"],
        "query.startTimeMin and query.startTimeMax are required"
    );
    fixture.app.stop().await.expect("clean shutdown");
}

/// Seconds since the epoch as RFC 3339 with milliseconds, as the Jaeger UI sends it (`toISOString`).
fn rfc3339(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400) as i32;
    let (year, month, day) = tracepost_storage::time::civil_from_days(days);
    let of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}%3A{:02}%3A{:02}.000Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}
