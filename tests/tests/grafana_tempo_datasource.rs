//! Grafana's Tempo data source replayed request by request (the Test button, trace by ID with its v1
//! fallback, TraceQL search from the builder, tag autocomplete) against traces sent with the real
//! OpenTelemetry SDK and by Linkerd proxies.

mod support;

use std::collections::BTreeSet;

use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{Span, TracesData};
use prost::Message as _;
use serde_json::{json, Value};
use support::*;

/// The Linkerd fixture's trace and the window (Unix seconds) around its spans (2026-11-22).
const LINKERD_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const LINKERD_START: i64 = 1_795_299_000;
const LINKERD_END: i64 = 1_795_302_000;

/// `tempopb.TraceByIDResponse` as Grafana decodes it: field 1 is a `Trace`, wire-identical to `TracesData`.
#[derive(Clone, PartialEq, prost::Message)]
struct TraceByIdResponse {
    #[prost(message, optional, tag = "1")]
    trace: Option<TracesData>,
}

struct Fixture {
    app: tracepost::App,
    two: TwoServiceTrace,
    single: SdkTrace,
}

async fn fixture(test: &str) -> Fixture {
    let database = TestDatabase::create(test).await;
    let app = serve(&database).await;
    let two = two_service_trace();
    let single = sdk_trace("checkout");
    let endpoint = grpc_endpoint(&app);
    export_grpc(&endpoint, &two.frontend).await.expect("frontend export");
    export_grpc(&endpoint, &two.cart).await.expect("cart export");
    export_grpc(&endpoint, &single).await.expect("checkout export");
    let (status, _, body) = post_otlp(
        &http_endpoint(&app),
        "application/json",
        None,
        linkerd_fixture("2.19").into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    Fixture { app, two, single }
}

fn url(fixture: &Fixture, path: &str) -> String {
    tempo_url(&fixture.app, path)
}

/// Go's `url.QueryEscape`: unreserved bytes kept, space as `+`, everything else `%XX`.
fn query_escape(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(char::from(byte)),
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// A query string as Grafana's backend builds it (`url.Values.Encode`: keys sorted).
fn go_query(pairs: &[(&str, String)]) -> String {
    let mut pairs = pairs.to_vec();
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    pairs
        .iter()
        .map(|(key, value)| format!("{}={}", query_escape(key), query_escape(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Grafana's search request: `/api/search?end=&limit=20&q=&spss=3&start=`.
fn search_path(q: &str, start: i64, end: i64) -> String {
    format!(
        "/api/search?{}",
        go_query(&[
            ("q", q.to_owned()),
            ("limit", "20".to_owned()),
            ("spss", "3".to_owned()),
            ("start", start.to_string()),
            ("end", end.to_string()),
        ])
    )
}

async fn ok_json(url: &str) -> Value {
    let (status, body) = get_json(url).await;
    assert_eq!(status, 200, "{url}: {body}");
    body
}

/// GET with `Accept: application/protobuf`, as Grafana's backend asks for traces: (status, content type, body).
async fn get_protobuf(url: &str) -> (u16, String, Vec<u8>) {
    let response = reqwest::Client::new()
        .get(url)
        .header("accept", "application/protobuf")
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, content_type, response.bytes().await.expect("body").to_vec())
}

/// Now, in Unix seconds, with a window around it covering the SDK traces.
fn recent_window() -> (i64, i64) {
    let now = now_micros() / 1_000_000;
    (now - 600, now + 60)
}

fn spans(data: &TracesData) -> Vec<&Span> {
    data.resource_spans
        .iter()
        .flat_map(|group| &group.scope_spans)
        .flat_map(|scope| &scope.spans)
        .collect()
}

fn service_of<'a>(data: &'a TracesData, span: &Span) -> &'a str {
    data.resource_spans
        .iter()
        .find(|group| group.scope_spans.iter().any(|scope| scope.spans.contains(span)))
        .and_then(|group| group.resource.as_ref())
        .and_then(|resource| attribute(&resource.attributes, "service.name"))
        .and_then(|value| match value {
            AnyValue::StringValue(text) => Some(text.as_str()),
            _ => None,
        })
        .unwrap_or_default()
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| attribute.value.as_ref())
        .and_then(|value| value.value.as_ref())
}

fn span_named<'a>(data: &'a TracesData, name: &str) -> &'a Span {
    spans(data)
        .into_iter()
        .find(|span| span.name == name)
        .unwrap_or_else(|| panic!("span {name} missing"))
}

fn sdk_span_id(trace: &SdkTrace, name: &str) -> [u8; 8] {
    trace
        .spans
        .iter()
        .find(|span| span.name == name)
        .unwrap_or_else(|| panic!("SDK span {name}"))
        .span_context
        .span_id()
        .to_bytes()
}

/// Standard base64 with padding (Tempo's JSON writes IDs so).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let group = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let bits = (u32::from(group[0]) << 16) | (u32::from(group[1]) << 8) | u32::from(group[2]);
        for index in 0..4 {
            if index <= chunk.len() {
                out.push(char::from(ALPHABET[((bits >> (18 - 6 * index)) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Tempo's search results write trace IDs without leading zeros.
fn trimmed(trace_id: &str) -> String {
    let trimmed = trace_id.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Grafana decodes search responses strictly: only these fields may appear.
fn assert_safe_fields(body: &Value) {
    let keys = |value: &Value| -> BTreeSet<String> {
        value
            .as_object()
            .map(|object| object.keys().cloned().collect())
            .unwrap_or_default()
    };
    let allowed = |value: &Value, fields: &[&str]| {
        let extra: Vec<String> = keys(value)
            .into_iter()
            .filter(|key| !fields.contains(&key.as_str()))
            .collect();
        assert!(extra.is_empty(), "unknown fields {extra:?} in {value}");
    };
    allowed(body, &["traces", "metrics"]);
    allowed(&body["metrics"], &["inspectedTraces", "inspectedBytes", "totalBlocks"]);
    for trace in body["traces"].as_array().expect("traces") {
        allowed(
            trace,
            &[
                "traceID",
                "rootServiceName",
                "rootTraceName",
                "startTimeUnixNano",
                "durationMs",
                "spanSets",
            ],
        );
        for set in trace["spanSets"].as_array().expect("span sets") {
            allowed(set, &["spans", "matched"]);
            for span in set["spans"].as_array().expect("spans") {
                allowed(
                    span,
                    &["spanID", "name", "startTimeUnixNano", "durationNanos", "attributes"],
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_tempo_data_source_test_trace_by_id_and_fallback() {
    let fixture = fixture("grafana_tempo_trace").await;

    // Test button ("Save & test").
    let (status, body) = get_text(&url(&fixture, "/api/echo")).await;
    assert_eq!((status, body.as_str()), (200, "echo"));
    let build = ok_json(&url(&fixture, "/api/status/buildinfo")).await;
    assert_eq!(build["version"], env!("CARGO_PKG_VERSION"));
    for field in ["revision", "branch", "buildDate", "buildUser", "goVersion"] {
        assert!(build[field].is_string(), "{field} in {build}");
    }

    // Trace by ID, v2, protobuf.
    let trace_id = fixture.two.trace_id();
    let (status, content_type, body) = get_protobuf(&url(&fixture, &format!("/api/v2/traces/{trace_id}"))).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/protobuf");
    assert_eq!(body[0], 0x0a, "field 1, length-delimited");
    let response = TraceByIdResponse::decode(body.as_slice()).expect("a TraceByIDResponse");
    let data = response.trace.expect("trace present");
    let mut names: Vec<&str> = spans(&data).iter().map(|span| span.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["GET /cart", "GET /items", "GET cart"]);
    for span in spans(&data) {
        assert_eq!(hex(&span.trace_id), trace_id);
    }
    let root = span_named(&data, "GET /cart");
    let call = span_named(&data, "GET cart");
    let served = span_named(&data, "GET /items");
    assert_eq!(root.span_id, sdk_span_id(&fixture.two.frontend, "GET /cart"));
    assert_eq!(call.span_id, sdk_span_id(&fixture.two.frontend, "GET cart"));
    assert_eq!(served.span_id, sdk_span_id(&fixture.two.cart, "GET /items"));
    assert!(root.parent_span_id.is_empty());
    assert_eq!(call.parent_span_id, root.span_id);
    assert_eq!(served.parent_span_id, call.span_id);
    assert_eq!(service_of(&data, root), "frontend");
    assert_eq!(service_of(&data, served), "cart");
    assert_eq!(
        attribute(&root.attributes, "http.response.status_code"),
        Some(&AnyValue::StringValue("503".into()))
    );
    assert_eq!(
        attribute(&served.attributes, "http.response.status_code"),
        Some(&AnyValue::IntValue(503))
    );
    assert_eq!(served.kind, 2, "server");
    assert_eq!(
        served
            .status
            .as_ref()
            .map(|status| (status.code, status.message.as_str())),
        Some((2, "out of stock"))
    );

    // Grafana retries v1 on a v2 404; both answer 404 for a trace that is not there.
    let missing = "2f3e0cee77ae5dc9c17ade3689eb2e54";
    let (status, _, body) = get_protobuf(&url(&fixture, &format!("/api/v2/traces/{missing}"))).await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).trim()),
        (404, "trace not found")
    );
    let (status, _, body) = get_protobuf(&url(&fixture, &format!("/api/traces/{missing}"))).await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).trim()),
        (404, "trace not found")
    );

    // The v1 route answers the bare Trace (= TracesData), the same spans; a time hint in seconds is honoured.
    let (start, end) = recent_window();
    let (status, content_type, body) = get_protobuf(&url(
        &fixture,
        &format!("/api/traces/{trace_id}?end={end}&start={start}"),
    ))
    .await;
    assert_eq!((status, content_type.as_str()), (200, "application/protobuf"));
    let v1 = TracesData::decode(body.as_slice()).expect("a Trace");
    assert_eq!(v1, data);
    // A hint that excludes the trace finds nothing.
    let (status, _, _) = get_protobuf(&url(&fixture, &format!("/api/traces/{trace_id}?end=1000000&start=1"))).await;
    assert_eq!(status, 404);

    // The single-service SDK trace by a short (leading zeros trimmed) ID, as search results give it.
    let single_id = fixture.single.trace_id();
    let (status, _, body) = get_protobuf(&url(&fixture, &format!("/api/v2/traces/{}", trimmed(&single_id)))).await;
    assert_eq!(status, 200);
    let single = TraceByIdResponse::decode(body.as_slice())
        .expect("decodes")
        .trace
        .expect("trace");
    let checkout = span_named(&single, "GET /checkout");
    assert_eq!(
        attribute(&checkout.attributes, "http.request.method"),
        Some(&AnyValue::StringValue("GET".into()))
    );
    assert_eq!(
        attribute(&checkout.attributes, "ratio"),
        Some(&AnyValue::DoubleValue(0.25))
    );
    assert_eq!(
        attribute(&checkout.attributes, "cached"),
        Some(&AnyValue::BoolValue(false))
    );

    // Without the protobuf Accept header: Tempo's JSON (base64 IDs, enum names, uint64 as strings).
    let json_trace = ok_json(&url(&fixture, &format!("/api/v2/traces/{trace_id}"))).await;
    let json_spans: Vec<&Value> = json_trace["trace"]["resourceSpans"]
        .as_array()
        .expect("resourceSpans")
        .iter()
        .flat_map(|group| group["scopeSpans"].as_array().into_iter().flatten())
        .flat_map(|scope| scope["spans"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(json_spans.len(), 3);
    let json_served = json_spans
        .iter()
        .find(|span| span["name"] == "GET /items")
        .expect("GET /items");
    assert_eq!(json_served["spanId"], base64(&served.span_id));
    assert_eq!(json_served["traceId"], base64(&served.trace_id));
    assert_eq!(json_served["kind"], "SPAN_KIND_SERVER");
    assert_eq!(
        json_served["status"],
        json!({"message": "out of stock", "code": "STATUS_CODE_ERROR"})
    );
    assert_eq!(
        json_served["startTimeUnixNano"],
        served.start_time_unix_nano.to_string()
    );
    let v1_json = ok_json(&url(&fixture, &format!("/api/traces/{trace_id}"))).await;
    assert_eq!(v1_json, json_trace["trace"]);

    // Malformed IDs are 400.
    let (status, body) = get_text(&url(&fixture, "/api/v2/traces/not-a-trace-id")).await;
    assert_eq!(
        (status, body.trim()),
        (400, "invalid trace id: expected 1 to 32 hex characters")
    );
    fixture.app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_tempo_data_source_traceql_search() {
    let fixture = fixture("grafana_tempo_search").await;
    let (start, end) = recent_window();

    // The search builder: service, span name, status (a keyword) and duration.
    let served_id = hex(&sdk_span_id(&fixture.two.cart, "GET /items"));
    let body = ok_json(&url(
        &fixture,
        &search_path(
            r#"{resource.service.name="cart" && name="GET /items" && status=error && duration>=0ms}"#,
            start,
            end,
        ),
    ))
    .await;
    assert_safe_fields(&body);
    let traces = body["traces"].as_array().expect("traces");
    assert_eq!(traces.len(), 1, "{body}");
    let trace = &traces[0];
    assert_eq!(trace["traceID"], trimmed(&fixture.two.trace_id()));
    assert_eq!(trace["rootServiceName"], "frontend");
    assert_eq!(trace["rootTraceName"], "GET /cart");
    let root_start = fixture
        .two
        .frontend
        .spans
        .iter()
        .map(|span| span.start_time)
        .min()
        .expect("spans")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_nanos();
    assert_eq!(trace["startTimeUnixNano"], root_start.to_string());
    assert_eq!(
        trace["spanSets"],
        json!([{
            "spans": [{
                "spanID": served_id,
                "name": "GET /items",
                "startTimeUnixNano": trace["spanSets"][0]["spans"][0]["startTimeUnixNano"],
                "durationNanos": trace["spanSets"][0]["spans"][0]["durationNanos"],
                "attributes": [
                    {"key": "service.name", "value": {"stringValue": "cart"}},
                    {"key": "status", "value": {"stringValue": "error"}}
                ]
            }],
            "matched": 1
        }])
    );
    assert!(trace["spanSets"][0]["spans"][0]["startTimeUnixNano"].is_string());
    assert!(body["metrics"]["inspectedTraces"].as_u64() >= Some(1), "{body}");

    // frontend's root span answered HTTP 503 with its status UNSET: tracepost stores it as an error.
    let derived = ok_json(&url(
        &fixture,
        &search_path(r#"{resource.service.name="frontend" && status=error}"#, start, end),
    ))
    .await;
    let spans = &derived["traces"][0]["spanSets"][0]["spans"];
    assert_eq!(spans.as_array().map(Vec::len), Some(1), "{derived}");
    assert_eq!(spans[0]["name"], "GET /cart");
    assert_eq!(
        spans[0]["attributes"],
        json!([
            {"key": "service.name", "value": {"stringValue": "frontend"}},
            {"key": "status", "value": {"stringValue": "error"}}
        ])
    );

    // A query no single span satisfies: no frontend span has status OK.
    let none = ok_json(&url(
        &fixture,
        &search_path(r#"{resource.service.name="frontend" && status=ok}"#, start, end),
    ))
    .await;
    assert_eq!(none["traces"], json!([]), "{none}");

    // Multi-value selection (an || group) and a kind keyword: both SDK traces, newest first.
    let both = ok_json(&url(
        &fixture,
        &search_path(
            r#"{(resource.service.name="frontend" || resource.service.name="checkout") && kind=server}"#,
            start,
            end,
        ),
    ))
    .await;
    assert_safe_fields(&both);
    let ids: BTreeSet<&str> = both["traces"]
        .as_array()
        .expect("traces")
        .iter()
        .filter_map(|trace| trace["traceID"].as_str())
        .collect();
    let expected: BTreeSet<String> = [fixture.two.trace_id(), fixture.single.trace_id()]
        .iter()
        .map(|id| trimmed(id))
        .collect();
    assert_eq!(ids, expected.iter().map(String::as_str).collect());
    for trace in both["traces"].as_array().expect("traces") {
        assert_eq!(
            trace["spanSets"][0]["matched"], 1,
            "one server span per service: {trace}"
        );
    }

    // `{}` is every trace; the limit counts traces.
    let all = ok_json(&url(
        &fixture,
        &format!("/api/search?end={end}&limit=1&q=%7B%7D&start={start}"),
    ))
    .await;
    assert_eq!(all["traces"].as_array().map(Vec::len), Some(1));

    // Linkerd: every attribute a string, a number in the query still matches; the root (the caller's span)
    // was never received.
    let linkerd = ok_json(&url(
        &fixture,
        &search_path(
            r#"{resource.service.name="harbor-core" && span.http.response.status_code=503 && duration>40ms}"#,
            LINKERD_START,
            LINKERD_END,
        ),
    ))
    .await;
    assert_safe_fields(&linkerd);
    assert_eq!(
        linkerd["traces"],
        json!([{
            "traceID": LINKERD_TRACE,
            "rootServiceName": "<root span not yet received>",
            "startTimeUnixNano": "1795300000000000000",
            "durationMs": 48,
            "spanSets": [{
                "spans": [
                    {
                        "spanID": "a1b2c3d4e5f60003",
                        "name": "/api/v2.0/projects/42/repositories",
                        "startTimeUnixNano": "1795300000000900000",
                        "durationNanos": "45000000",
                        "attributes": [
                            {"key": "service.name", "value": {"stringValue": "harbor-core"}},
                            {"key": "http.response.status_code", "value": {"stringValue": "503"}}
                        ]
                    },
                    {
                        "spanID": "a1b2c3d4e5f60004",
                        "name": "/api/v2.0/projects/42/repositories",
                        "startTimeUnixNano": "1795300000001000000",
                        "durationNanos": "44500000",
                        "attributes": [
                            {"key": "service.name", "value": {"stringValue": "harbor-core"}},
                            {"key": "http.response.status_code", "value": {"stringValue": "503"}}
                        ]
                    }
                ],
                "matched": 2
            }]
        }])
    );
    // A regex over services (Grafana's multi-value `=~`), span sets capped at spss.
    let regex = ok_json(&url(
        &fixture,
        &search_path(
            r#"{resource.service.name=~"harbor-core|harbor-jobservice" && name="/api/v2.0/projects/42/repositories"}"#,
            LINKERD_START,
            LINKERD_END,
        ),
    ))
    .await;
    assert_eq!(regex["traces"][0]["spanSets"][0]["matched"], 4, "{regex}");
    assert_eq!(
        regex["traces"][0]["spanSets"][0]["spans"].as_array().map(Vec::len),
        Some(3)
    );
    // The Linkerd trace is outside the default window (the last hour).
    let recent = ok_json(&url(
        &fixture,
        &format!(
            "/api/search?q={}",
            query_escape(r#"{resource.service.name="harbor-core"}"#)
        ),
    ))
    .await;
    assert_eq!(recent["traces"], json!([]));

    // Errors: short plain text.
    let (status, body) = get_text(&url(&fixture, &search_path("{ name = }", start, end))).await;
    assert_eq!(
        (status, body.trim()),
        (400, "invalid TraceQL query: expected a value (at character 10)")
    );
    let (status, body) = get_text(&url(&fixture, &search_path("{} | count() > 1", start, end))).await;
    assert_eq!(
        (status, body.trim()),
        (
            400,
            "invalid TraceQL query: pipelines (`|`) are not supported (at character 4)"
        )
    );
    let (status, body) = get_text(&url(&fixture, "/api/search?limit=0")).await;
    assert_eq!((status, body.trim()), (400, "invalid limit: must be a positive number"));
    let (status, body) = get_text(&url(&fixture, "/api/search?start=20&end=10")).await;
    assert_eq!(
        (status, body.trim()),
        (400, "http parameter start must be before end. received start=20 end=10")
    );
    fixture.app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_tempo_data_source_tag_autocomplete() {
    let fixture = fixture("grafana_tempo_tags").await;

    // Tag names (the last hour by default: the SDK traces).
    let tags = ok_json(&url(&fixture, "/api/v2/search/tags?limit=5000")).await;
    let scope = |body: &Value, name: &str| -> Vec<String> {
        body["scopes"]
            .as_array()
            .expect("scopes")
            .iter()
            .find(|scope| scope["name"] == name)
            .and_then(|scope| scope["tags"].as_array())
            .unwrap_or_else(|| panic!("scope {name} in {body}"))
            .iter()
            .filter_map(|tag| tag.as_str().map(str::to_owned))
            .collect()
    };
    let resource = scope(&tags, "resource");
    for tag in ["service.name", "k8s.cluster.name", "host.name"] {
        assert!(resource.contains(&tag.to_owned()), "{tag} in {resource:?}");
    }
    let span = scope(&tags, "span");
    for tag in ["http.request.method", "http.response.status_code", "ratio"] {
        assert!(span.contains(&tag.to_owned()), "{tag} in {span:?}");
    }
    assert!(
        !resource.contains(&"linkerd.io/workload-ns".to_owned()),
        "Linkerd's trace is a day old"
    );
    assert_eq!(
        scope(&tags, "intrinsic"),
        ["duration", "kind", "name", "status", "traceDuration"]
    );

    // With a tags time range covering the Linkerd trace.
    let linkerd_tags = ok_json(&url(
        &fixture,
        &format!("/api/v2/search/tags?end={LINKERD_END}&limit=5000&start={LINKERD_START}"),
    ))
    .await;
    let resource = scope(&linkerd_tags, "resource");
    for tag in ["service.name", "linkerd.io/workload-ns", "k8s.pod.ip"] {
        assert!(resource.contains(&tag.to_owned()), "{tag} in {resource:?}");
    }
    assert!(scope(&linkerd_tags, "span").contains(&"direction".to_owned()));
    let only_span = ok_json(&url(&fixture, "/api/v2/search/tags?scope=span")).await;
    assert_eq!(only_span["scopes"].as_array().map(Vec::len), Some(1));

    // Service names (with Grafana's stray `tag=` parameter).
    let services = ok_json(&url(
        &fixture,
        "/api/v2/search/tag/resource.service.name/values?limit=5000&tag=resource.service.name",
    ))
    .await;
    assert_eq!(
        services,
        json!({"tagValues": [
            {"type": "string", "value": "cart"},
            {"type": "string", "value": "checkout"},
            {"type": "string", "value": "frontend"},
            {"type": "string", "value": "harbor-core"},
            {"type": "string", "value": "harbor-jobservice"}
        ]})
    );

    // Span names once a service is chosen.
    let names = ok_json(&url(
        &fixture,
        &format!(
            "/api/v2/search/tag/name/values?{}",
            go_query(&[
                ("limit", "5000".to_owned()),
                ("q", r#"{resource.service.name="frontend"}"#.to_owned()),
                ("tag", "name".to_owned()),
            ])
        ),
    ))
    .await;
    assert_eq!(
        names,
        json!({"tagValues": [
            {"type": "string", "value": "GET /cart"},
            {"type": "string", "value": "GET cart"}
        ]})
    );
    // An incomplete `q` (typed half-way) is ignored: every span name.
    let every_name = ok_json(&url(
        &fixture,
        &format!(
            "/api/v2/search/tag/name/values?q={}&tag=name",
            query_escape(r#"{resource.service.name="#)
        ),
    ))
    .await;
    assert_eq!(
        every_name["tagValues"].as_array().map(Vec::len),
        Some(6),
        "{every_name}"
    );

    // Keywords.
    let status = ok_json(&url(&fixture, "/api/v2/search/tag/status/values?tag=status")).await;
    assert_eq!(
        status,
        json!({"tagValues": [
            {"type": "keyword", "value": "ok"},
            {"type": "keyword", "value": "error"},
            {"type": "keyword", "value": "unset"}
        ]})
    );
    let kinds = ok_json(&url(&fixture, "/api/v2/search/tag/kind/values")).await;
    assert_eq!(kinds["tagValues"][1], json!({"type": "keyword", "value": "server"}));

    // Attribute values from the sample, typed.
    let methods = ok_json(&url(
        &fixture,
        "/api/v2/search/tag/span.http.request.method/values?limit=5000&tag=span.http.request.method",
    ))
    .await;
    assert_eq!(methods, json!({"tagValues": [{"type": "string", "value": "GET"}]}));
    let codes = ok_json(&url(
        &fixture,
        "/api/v2/search/tag/span.http.response.status_code/values",
    ))
    .await;
    assert_eq!(
        codes,
        json!({"tagValues": [
            {"type": "int", "value": "200"},
            {"type": "int", "value": "503"},
            {"type": "string", "value": "503"}
        ]})
    );
    let directions = ok_json(&url(
        &fixture,
        &format!("/api/v2/search/tag/span.direction/values?end={LINKERD_END}&start={LINKERD_START}"),
    ))
    .await;
    assert_eq!(
        directions,
        json!({"tagValues": [
            {"type": "string", "value": "inbound"},
            {"type": "string", "value": "outbound"}
        ]})
    );
    let narrowed = ok_json(&url(
        &fixture,
        &format!(
            "/api/v2/search/tag/span.direction/values?end={LINKERD_END}&q={}&start={LINKERD_START}",
            query_escape(r#"{resource.service.name="harbor-core"}"#)
        ),
    ))
    .await;
    assert_eq!(narrowed, json!({"tagValues": [{"type": "string", "value": "inbound"}]}));
    fixture.app.stop().await.expect("clean shutdown");
}
