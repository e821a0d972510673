//! A user sends spans with an OpenTelemetry SDK (gRPC, HTTP protobuf, HTTP JSON) or from Linkerd proxies and
//! opens the trace by ID in Grafana or the Jaeger UI.

mod support;

use serde_json::{json, Value};
use support::*;

fn tag<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["tags"]
        .as_array()
        .expect("tags array")
        .iter()
        .find(|tag| tag["key"] == key)
        .unwrap_or_else(|| panic!("tag {key} missing in {span}"))
}

fn span_named<'a>(trace: &'a Value, name: &str) -> &'a Value {
    trace["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .find(|span| span["operationName"] == name)
        .unwrap_or_else(|| panic!("span {name} missing"))
}

/// What every transport must deliver: the SDK's two spans, translated as Jaeger does.
async fn assert_sdk_trace_is_served(app: &tracepost::App, trace: &SdkTrace) {
    let trace_id = trace.trace_id();
    let (status, body) = get_json(&query_url(app, &format!("/api/traces/{trace_id}"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["errors"], Value::Null);
    let data = body["data"].as_array().expect("data array");
    assert_eq!(data.len(), 1);
    let jaeger = &data[0];
    assert_eq!(jaeger["traceID"], trace_id);
    assert_eq!(jaeger["spans"].as_array().map(Vec::len), Some(2));

    let root = span_named(jaeger, "GET /checkout");
    let child = span_named(jaeger, "SELECT orders");
    assert_eq!(tag(root, "span.kind")["value"], "server");
    assert_eq!(tag(root, "http.response.status_code")["type"], "int64");
    assert_eq!(tag(root, "http.response.status_code")["value"], 200);
    assert_eq!(
        tag(root, "big.number")["value"],
        "9007199254740993",
        "int64 beyond 2^53 is a string"
    );
    assert_eq!(tag(root, "ratio")["type"], "float64");
    assert_eq!(tag(root, "cached")["value"], false);
    assert_eq!(tag(root, "otel.scope.name")["value"], "tracepost.tests");
    assert_eq!(tag(root, "otel.scope.version")["value"], "1.2.3");
    assert_eq!(root["references"], serde_json::json!([]));

    assert_eq!(tag(child, "span.kind")["value"], "client");
    assert_eq!(tag(child, "otel.status_code")["value"], "ERROR");
    assert_eq!(tag(child, "error")["value"], true);
    assert_eq!(tag(child, "otel.status_description")["value"], "db timeout");
    let references = child["references"].as_array().expect("references");
    assert_eq!(references[0]["refType"], "CHILD_OF");
    assert_eq!(references[0]["spanID"], root["spanID"]);
    assert_eq!(
        references[1],
        serde_json::json!({"refType": "FOLLOWS_FROM", "traceID": "0af7651916cd43dd8448eb211c80319c", "spanID": "b7ad6b7169203331"})
    );
    let logs = child["logs"].as_array().expect("logs");
    assert_eq!(logs.len(), 1);
    assert_eq!(
        logs[0]["fields"][0],
        serde_json::json!({"key": "event", "type": "string", "value": "cache miss"})
    );

    let process = &jaeger["processes"][root["processID"].as_str().expect("processID")];
    assert_eq!(process["serviceName"], "checkout");
    assert!(process["tags"]
        .as_array()
        .expect("process tags")
        .iter()
        .any(|tag| tag["key"] == "k8s.cluster.name" && tag["value"] == "apps"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_exporting_over_grpc_finds_its_trace_by_id() {
    let database = TestDatabase::create("sdk_grpc").await;
    let app = serve(&database).await;
    let trace = sdk_trace("checkout");
    export_grpc(&grpc_endpoint(&app), &trace)
        .await
        .expect("grpc export acknowledged");
    assert_eq!(database.span_rows().await, 2, "acknowledged means committed");
    assert_sdk_trace_is_served(&app, &trace).await;
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_exporting_over_http_protobuf_finds_its_trace_by_id() {
    let database = TestDatabase::create("sdk_http_proto").await;
    let app = serve(&database).await;
    let trace = sdk_trace("checkout");
    export_http(&http_endpoint(&app), &trace, opentelemetry_otlp::Protocol::HttpBinary)
        .await
        .expect("http export acknowledged");
    assert_eq!(database.span_rows().await, 2);
    assert_sdk_trace_is_served(&app, &trace).await;
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_exporting_over_http_json_finds_its_trace_by_id() {
    let database = TestDatabase::create("sdk_http_json").await;
    let app = serve(&database).await;
    let trace = sdk_trace("checkout");
    export_http(&http_endpoint(&app), &trace, opentelemetry_otlp::Protocol::HttpJson)
        .await
        .expect("http json export acknowledged");
    assert_eq!(database.span_rows().await, 2);
    assert_sdk_trace_is_served(&app, &trace).await;
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_export_does_not_show_spans_twice() {
    let database = TestDatabase::create("retry_dedup").await;
    let app = serve(&database).await;
    let trace = sdk_trace("checkout");
    export_grpc(&grpc_endpoint(&app), &trace).await.expect("first export");
    // The client lost the acknowledgement and sends the same spans again.
    export_grpc(&grpc_endpoint(&app), &trace).await.expect("second export");
    assert_eq!(
        database.span_rows().await,
        4,
        "deduplication happens on read, not on write"
    );
    let (_, body) = get_json(&query_url(&app, &format!("/api/traces/{}", trace.trace_id()))).await;
    assert_eq!(body["data"][0]["spans"].as_array().map(Vec::len), Some(2));
    let (_, v3) = get_json(&query_url(&app, &format!("/api/v3/traces/{}", trace.trace_id()))).await;
    let spans: usize = v3["result"]["resourceSpans"]
        .as_array()
        .expect("resourceSpans")
        .iter()
        .flat_map(|resource| resource["scopeSpans"].as_array().expect("scopeSpans"))
        .map(|scope| scope["spans"].as_array().expect("spans").len())
        .sum();
    assert_eq!(spans, 2);
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_v3_api_returns_the_trace_as_otlp_json() {
    let database = TestDatabase::create("v3_trace").await;
    let app = serve(&database).await;
    let trace = sdk_trace("checkout");
    export_grpc(&grpc_endpoint(&app), &trace).await.expect("export");
    let (status, body) = get_json(&query_url(&app, &format!("/api/v3/traces/{}", trace.trace_id()))).await;
    assert_eq!(status, 200, "{body}");
    let resource = &body["result"]["resourceSpans"][0];
    assert!(resource["resource"]["attributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .any(|kv| kv["key"] == "service.name" && kv["value"]["stringValue"] == "checkout"));
    let scope_spans = &resource["scopeSpans"][0];
    assert_eq!(scope_spans["scope"]["name"], "tracepost.tests");
    let spans = scope_spans["spans"].as_array().expect("spans");
    let child = spans
        .iter()
        .find(|span| span["name"] == "SELECT orders")
        .expect("child span");
    assert_eq!(child["traceId"], trace.trace_id());
    assert_eq!(child["kind"], 3);
    assert_eq!(child["status"]["code"], 2);
    assert_eq!(child["status"]["message"], "db timeout");
    assert!(
        child["startTimeUnixNano"].is_string(),
        "64-bit integers are strings in OTLP/JSON"
    );
    let expected_end = trace
        .spans
        .iter()
        .find(|span| span.name == "SELECT orders")
        .expect("sdk child")
        .end_time;
    let expected_end = expected_end
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after epoch")
        .as_nanos()
        .to_string();
    assert_eq!(
        child["endTimeUnixNano"], expected_end,
        "nanosecond precision survives the round trip"
    );
    app.stop().await.expect("clean shutdown");
}

/// The trace ID of the Linkerd fixtures, and the one the 2.17 fixture is sent with.
const LINKERD_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const LINKERD_2_17_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4717";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linkerd_proxy_spans_of_both_generations_are_stored_with_their_cluster() {
    let database = TestDatabase::create("linkerd").await;
    let mut config = config(&database);
    config.cluster_name = Some("infra".into());
    let app = tracepost::start(tracepost::Role::Serve, config).await.expect("start");
    // The two fixtures are the same hop (same trace and span IDs): the 2.17 one is sent as a trace of its own,
    // so each generation's spans can be looked at (a lookup keeps one copy of a span ID).
    for generation in ["2.19", "2.17"] {
        let fixture = match generation {
            "2.17" => linkerd_fixture(generation).replace(LINKERD_TRACE_ID, LINKERD_2_17_TRACE_ID),
            _ => linkerd_fixture(generation),
        };
        let (status, _, body) = post_otlp(&http_endpoint(&app), "application/json", None, fixture.into_bytes()).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    let client = database.client().await;
    let rows = client
        .query(
            "SELECT service, coalesce(cluster, ''), sum(span_count)::int8 FROM span_blocks GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )
        .await
        .expect("query");
    let summary: Vec<(String, String, i64)> = rows.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect();
    // 2.19 proxies carry k8s.cluster.name; 2.17 proxies do not, so --cluster-name applies. 2.17 proxies all
    // say service.name=linkerd-proxy: the service is derived from linkerd.io/proxy-deployment.
    assert_eq!(
        summary,
        vec![
            ("harbor-core".into(), "apps".into(), 2),
            ("harbor-core".into(), "infra".into(), 2),
            ("harbor-jobservice".into(), "apps".into(), 2),
            ("harbor-jobservice".into(), "infra".into(), 2),
        ]
    );
    // Stored with status ERROR (the proxies sent UNSET and a 503), the origin named in the status message.
    let errors: i64 = client
        .query_one("SELECT count(*) FROM tracepost_spans WHERE status_code = 'error'", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(errors, 8);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (status, body) = get_json(&query_url(&app, &format!("/api/traces/{trace_id}"))).await;
    assert_eq!(status, 200);
    let spans = body["data"][0]["spans"].as_array().expect("spans");
    assert!(spans.len() >= 4, "the 2.19 hop's four spans are in the trace");
    let status_tag = spans[0]["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .find(|tag| tag["key"] == "http.response.status_code" || tag["key"] == "http.status_code")
        .expect("status code tag");
    assert_eq!(
        status_tag["type"], "string",
        "Linkerd sends every attribute as a string"
    );
    let tag = |span: &Value, key: &str| {
        span["tags"]
            .as_array()
            .and_then(|tags| tags.iter().find(|tag| tag["key"] == key))
            .map(|tag| tag["value"].clone())
    };
    for span in spans {
        assert_eq!(tag(span, "error"), Some(Value::Bool(true)), "{span}");
        let message = tag(span, "otel.status_description").expect("status message");
        assert!(
            message == "tracepost: error derived from http.response.status_code=503"
                || message == "tracepost: error derived from http.status_code=503",
            "{message}"
        );
    }
    // What was derived is visible in the process tags, next to the originals.
    let (status, body_2_17) = get_json(&query_url(&app, &format!("/api/traces/{LINKERD_2_17_TRACE_ID}"))).await;
    assert_eq!(status, 200);
    let processes = body_2_17["data"][0]["processes"].as_object().expect("processes");
    let derived_core = processes
        .values()
        .find(|process| {
            process["tags"]
                .as_array()
                .is_some_and(|tags| tags.iter().any(|tag| tag["key"] == "tracepost.original.service.name"))
        })
        .expect("a 2.17 process keeps its original service name");
    let process_tag = |key: &str| {
        derived_core["tags"]
            .as_array()
            .and_then(|tags| tags.iter().find(|tag| tag["key"] == key))
            .map(|tag| tag["value"].clone())
    };
    assert_eq!(
        process_tag("tracepost.original.service.name"),
        Some(json!("linkerd-proxy"))
    );
    assert_eq!(
        process_tag("tracepost.derived"),
        Some(json!("service.name,k8s.pod.name,k8s.namespace.name"))
    );
    assert_eq!(process_tag("k8s.namespace.name"), Some(json!("harbor")));
    assert!(process_tag("host.name").is_some(), "the original host.name stays");
    // Jaeger search for error=true finds the hop, in both generations.
    let (status, found) = get_json(&query_url(
        &app,
        r#"/api/traces?service=harbor-core&tags=%7B%22error%22%3A%22true%22%7D&start=1795296400000000&end=1795303600000000"#,
    ))
    .await;
    assert_eq!(status, 200, "{found}");
    let mut found_ids: Vec<&str> = found["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|trace| trace["traceID"].as_str().expect("traceID"))
        .collect();
    found_ids.sort_unstable();
    assert_eq!(found_ids, vec![LINKERD_2_17_TRACE_ID, trace_id], "{found}");
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_trace_ids_get_jaeger_errors() {
    let database = TestDatabase::create("lookup_errors").await;
    let app = serve(&database).await;
    let (status, body) = get_json(&query_url(&app, "/api/traces/0123456789abcdef0123456789abcdef")).await;
    assert_eq!(status, 404);
    assert_eq!(body["data"], Value::Null);
    assert_eq!(body["errors"][0]["code"], 404);
    assert_eq!(body["errors"][0]["msg"], "trace not found");
    let (status, body) = get_json(&query_url(&app, "/api/traces/not-a-trace-id")).await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["code"], 400);
    let (status, body) = get_json(&query_url(&app, "/api/v3/traces/0123456789abcdef0123456789abcdef")).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["httpCode"], 404);
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_exports_are_accepted_gzip_and_zstd_over_grpc_gzip_over_http() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    let database = TestDatabase::create("compression").await;
    let app = serve(&database).await;
    let request: ExportTraceServiceRequest =
        serde_json::from_str(&linkerd_fixture("2.19")).expect("fixture is OTLP/JSON");
    for encoding in [
        tonic::codec::CompressionEncoding::Gzip,
        tonic::codec::CompressionEncoding::Zstd,
    ] {
        let mut client = TraceServiceClient::connect(grpc_endpoint(&app))
            .await
            .expect("connect")
            .send_compressed(encoding);
        let response = client
            .export(request.clone())
            .await
            .expect("compressed export accepted")
            .into_inner();
        assert!(response.partial_success.is_none());
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut encoder, &request.encode_to_vec()).expect("gzip");
    let (status, _, body) = post_otlp(
        &http_endpoint(&app),
        "application/x-protobuf",
        Some("gzip"),
        encoder.finish().expect("gzip"),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(database.span_rows().await, 12, "the fixture's four spans, three times");
    app.stop().await.expect("clean shutdown");
}
