//! RED metrics and the service graph end to end: Linkerd-shaped proxy spans from two clusters, sent by the
//! real OpenTelemetry SDK exporters, scraped by (and pushed to) a real VictoriaMetrics, queried there, and
//! through tracepost's Jaeger SPM routes.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use serde_json::{json, Value};
use support::victoria_metrics::{free_address, VictoriaMetrics};
use support::*;

/// A Linkerd proxy's resource: `service.name` is the chart's generic one, the workload is in the pod labels.
fn proxy(deployment: &str, namespace: &str, cluster: &str) -> (SdkTracerProvider, InMemorySpanExporter, Resource) {
    provider_with(
        Resource::builder_empty()
            .with_service_name("linkerd-proxy")
            .with_attributes([
                KeyValue::new("host.name", format!("{deployment}-7d9f8c-x1")),
                KeyValue::new("linkerd.io/proxy-deployment", deployment.to_owned()),
                KeyValue::new("linkerd.io/workload-ns", namespace.to_owned()),
                KeyValue::new("k8s.cluster.name", cluster.to_owned()),
            ])
            .build(),
    )
}

/// `requests` meshed calls gitlab (apps) → registry (infra), four proxy spans each, every `error_every`-th
/// answered 503 after 120 ms, the others 200 after 30 ms. Returns the two proxies' spans.
fn hops(first: u64, requests: u64, error_every: u64) -> (SdkTrace, SdkTrace) {
    let (gitlab, gitlab_memory, gitlab_resource) = proxy("gitlab", "gitlab", "apps");
    let (registry, registry_memory, registry_resource) = proxy("registry", "registry", "infra");
    let (gitlab_tracer, registry_tracer) = (gitlab.tracer("linkerd"), registry.tracer("linkerd"));
    let base = SystemTime::now() - Duration::from_secs(5);
    for request in first..first + requests {
        let failed = request % error_every == 0;
        let (status, duration) = if failed { ("503", 120) } else { ("200", 30) };
        let path = format!("/v2/projects/{request}/manifests");
        let attributes = |direction: &str| {
            vec![
                KeyValue::new("direction", direction.to_owned()),
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("url.path", path.clone()),
                KeyValue::new("server.address", "registry.registry.svc.cluster.local"),
                KeyValue::new("http.response.status_code", status),
            ]
        };
        // The caller's own span (an app span the proxy does not export) is the hop's parent.
        let caller = SpanContext::new(
            TraceId::from(0x7e57_0000_0000_0000_0000_0000_0000_0000_u128 + u128::from(request)),
            SpanId::from(0xca11_0000_0000_0000_u64 + request),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let mut context = Context::new().with_remote_span_context(caller);
        let start = base + Duration::from_millis(request * 200);
        let layers = [
            (&gitlab_tracer, SpanKind::Server, "outbound"),
            (&gitlab_tracer, SpanKind::Client, "outbound"),
            (&registry_tracer, SpanKind::Server, "inbound"),
            (&registry_tracer, SpanKind::Client, "inbound"),
        ];
        let mut spans = Vec::new();
        for (layer, (tracer, kind, direction)) in layers.into_iter().enumerate() {
            let offset = Duration::from_micros(200 * layer as u64);
            let span = tracer
                .span_builder(path.clone())
                .with_kind(kind)
                .with_start_time(start + offset)
                .with_attributes(attributes(direction))
                .start_with_context(tracer, &context);
            context = context.with_span(span);
            spans.push((context.clone(), start + Duration::from_millis(duration) - offset));
        }
        for (context, end) in spans.into_iter().rev() {
            context.span().end_with_timestamp(end);
        }
    }
    (
        SdkTrace {
            spans: gitlab_memory.get_finished_spans().expect("spans"),
            resource: gitlab_resource,
        },
        SdkTrace {
            spans: registry_memory.get_finished_spans().expect("spans"),
            resource: registry_resource,
        },
    )
}

/// Sends one phase of traffic: gitlab's proxy over gRPC, registry's over OTLP/HTTP, and registry's export
/// again as if its acknowledgement had been lost.
async fn send_phase(app: &tracepost::App, first: u64) {
    let (gitlab, registry) = hops(first, 5, 3);
    assert_eq!((gitlab.spans.len(), registry.spans.len()), (10, 10));
    export_grpc(&grpc_endpoint(app), &gitlab).await.expect("gitlab export");
    export_http(&http_endpoint(app), &registry, opentelemetry_otlp::Protocol::HttpBinary)
        .await
        .expect("registry export");
    export_http(&http_endpoint(app), &registry, opentelemetry_otlp::Protocol::HttpBinary)
        .await
        .expect("registry re-sent export");
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after epoch")
        .as_millis()
}

fn last_point(family: &Value) -> f64 {
    let points = family["metrics"][0]["metricPoints"].as_array().expect("points");
    points.last().expect("a point")["gaugeValue"]["doubleValue"]
        .as_f64()
        .expect("value")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn victoria_metrics_scrapes_exact_red_counts_and_the_cross_cluster_edge() {
    let database = TestDatabase::create("red_scrape").await;
    let vm_address = free_address();
    let mut config = config(&database);
    config.metrics_query_url = Some(format!("http://{vm_address}"));
    let app = tracepost::start(tracepost::Role::Serve, config).await.expect("start");

    // Phase 1: five requests (the ones numbered 3 failed), then VictoriaMetrics starts scraping /metrics.
    send_phase(&app, 1).await;
    let vm = VictoriaMetrics::start(vm_address, app.query_addr).await;
    vm.wait_for("sum(traces_span_metrics_calls_total)", 10.0).await;
    // Phase 2: five more; the next scrape has them.
    send_phase(&app, 6).await;
    vm.wait_for("sum(traces_span_metrics_calls_total)", 20.0).await;

    // Calls per service, kind, status and cluster: one SERVER call on the callee and one CLIENT call on the
    // caller per request (the proxy-to-app hops are not calls), 503s as errors, re-sent spans counted once.
    let server = r#"service_name="registry",span_kind="SPAN_KIND_SERVER",span_name="/v2/projects/{id}/manifests""#;
    let cluster = r#"k8s_cluster_name="infra",k8s_namespace_name="registry""#;
    let calls = |labels: String| format!("sum(traces_span_metrics_calls_total{{{labels}}})");
    assert_eq!(vm.value(&calls(format!("{server},{cluster}"))).await, Some(10.0));
    assert_eq!(
        vm.value(&calls(format!(r#"{server},status_code="STATUS_CODE_ERROR""#)))
            .await,
        Some(3.0),
        "requests 3, 6 and 9 answered 503"
    );
    assert_eq!(
        vm.value(&calls(format!(r#"{server},status_code="STATUS_CODE_UNSET""#)))
            .await,
        Some(7.0)
    );
    let client =
        r#"service_name="gitlab",span_kind="SPAN_KIND_CLIENT",k8s_cluster_name="apps",k8s_namespace_name="gitlab""#;
    assert_eq!(vm.value(&calls(client.to_owned())).await, Some(10.0));
    assert_eq!(
        vm.value(&calls(
            r#"service_name="gitlab",span_kind="SPAN_KIND_SERVER""#.to_owned()
        ))
        .await,
        None,
        "the outbound proxy's server span is not a call gitlab served"
    );
    let per_cluster = vm
        .query("sum by (k8s_cluster_name) (traces_span_metrics_calls_total)")
        .await;
    let mut per_cluster: Vec<(String, String)> = per_cluster
        .iter()
        .map(|series| {
            (
                series["metric"]["k8s_cluster_name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                series["value"][1].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    per_cluster.sort();
    assert_eq!(
        per_cluster,
        [
            ("apps".to_owned(), "10".to_owned()),
            ("infra".to_owned(), "10".to_owned())
        ]
    );

    // The duration histogram (seconds): 7 answers in 30 ms, 3 in 120 ms (less the proxies' offsets).
    let bucket = |le: &str| format!(r#"sum(traces_span_metrics_duration_seconds_bucket{{{server},le="{le}"}})"#);
    assert_eq!(vm.value(&bucket("0.01")).await, Some(0.0));
    assert_eq!(vm.value(&bucket("0.05")).await, Some(7.0));
    assert_eq!(vm.value(&bucket("0.1")).await, Some(7.0));
    assert_eq!(vm.value(&bucket("0.2")).await, Some(10.0));
    assert_eq!(vm.value(&bucket("+Inf")).await, Some(10.0));
    assert_eq!(
        vm.value(&format!("sum(traces_span_metrics_duration_seconds_count{{{server}}})"))
            .await,
        Some(10.0)
    );
    let sum = vm
        .value(&format!("sum(traces_span_metrics_duration_seconds_sum{{{server}}})"))
        .await
        .expect("sum");
    assert!((sum - (7.0 * 0.0292 + 3.0 * 0.1192)).abs() < 1e-6, "{sum}");

    // The service graph: the cross-cluster edge, its failures and both sides' durations.
    let edge = r#"client="gitlab",server="registry",client_k8s_cluster_name="apps",server_k8s_cluster_name="infra""#;
    assert_eq!(
        vm.value(&format!("sum(traces_service_graph_request_total{{{edge}}})"))
            .await,
        Some(10.0)
    );
    assert_eq!(
        vm.value(&format!("sum(traces_service_graph_request_failed_total{{{edge}}})"))
            .await,
        Some(3.0)
    );
    assert_eq!(
        vm.value(&format!(
            r#"sum(traces_service_graph_request_server_seconds_bucket{{{edge},le="0.05"}})"#
        ))
        .await,
        Some(7.0)
    );
    assert_eq!(
        vm.value(&format!(
            "sum(traces_service_graph_request_client_seconds_count{{{edge}}})"
        ))
        .await,
        Some(10.0)
    );
    let edges = vm
        .query("sum by (client, server) (traces_service_graph_request_total)")
        .await;
    let mut graph: Vec<(String, String)> = edges
        .iter()
        .map(|series| {
            (
                series["metric"]["client"].as_str().unwrap_or_default().to_owned(),
                series["metric"]["server"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    graph.sort();
    assert_eq!(graph, [("gitlab".to_owned(), "registry".to_owned())]);

    // /api/dependencies reports the same cross-service edge.
    let (status, dependencies) = get_json(&query_url(
        &app,
        &format!("/api/dependencies?endTs={}&lookback=3600000", now_ms()),
    ))
    .await;
    assert_eq!(status, 200, "{dependencies}");
    let mut from_store: Vec<(String, String)> = dependencies["data"]
        .as_array()
        .expect("dependencies")
        .iter()
        .map(|link| {
            (
                link["parent"].as_str().unwrap_or_default().to_owned(),
                link["child"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    from_store.sort();
    assert_eq!(from_store, graph, "{dependencies}");

    // Re-sent spans were recognised; tracepost's own page says so.
    let (_, page) = get_text(&query_url(&app, "/metrics")).await;
    assert_eq!(
        metric_value(&page, "tracepost_span_metrics_duplicate_spans_total"),
        20.0
    );

    // Jaeger SPM (the Monitor tab) answers from VictoriaMetrics.
    let spm = |path: &str| {
        query_url(
            &app,
            &format!("{path}&endTs={}&lookback=120000&step=1000&ratePer=120000", now_ms()),
        )
    };
    let (status, calls) = get_json(&spm("/api/metrics/calls?service=registry")).await;
    assert_eq!(status, 200, "{calls}");
    assert_eq!(calls["name"], "service_call_rate");
    assert_eq!(calls["type"], "GAUGE");
    assert_eq!(
        calls["metrics"][0]["labels"],
        json!([{"name": "service_name", "value": "registry"}])
    );
    assert!(last_point(&calls) > 0.0, "{calls}");
    let (status, errors) = get_json(&spm("/api/metrics/errors?service=registry&service=gitlab")).await;
    assert_eq!(status, 200, "{errors}");
    assert_eq!(errors["name"], "service_error_rate");
    assert_eq!(
        errors["metrics"].as_array().map(Vec::len),
        Some(1),
        "gitlab has no SERVER calls: {errors}"
    );
    let ratio = last_point(&errors);
    assert!(ratio > 0.2 && ratio < 0.45, "about 3 in 10 failed: {ratio}");
    let (status, latencies) = get_json(&spm(
        "/api/metrics/latencies?service=registry&quantile=0.95&groupByOperation=true",
    ))
    .await;
    assert_eq!(status, 200, "{latencies}");
    assert_eq!(latencies["name"], "service_operation_latencies");
    assert_eq!(
        latencies["metrics"][0]["labels"],
        json!([{"name": "service_name", "value": "registry"}, {"name": "operation", "value": "/v2/projects/{id}/manifests"}])
    );
    let p95 = last_point(&latencies);
    assert!(
        p95 > 100.0 && p95 <= 200.0,
        "p95 in the (100 ms, 200 ms] bucket, in ms: {p95}"
    );
    let (status, client_side) = get_json(&spm("/api/metrics/calls?service=gitlab&spanKind=client")).await;
    assert_eq!(status, 200);
    assert!(last_point(&client_side) > 0.0, "{client_side}");
    let (status, min_step) = get_json(&query_url(&app, "/api/metrics/minstep")).await;
    assert_eq!(
        (status, min_step),
        (
            200,
            json!({"data": 1, "total": 0, "limit": 0, "offset": 0, "errors": null})
        )
    );
    let (status, refused) = get_json(&spm("/api/metrics/latencies?service=registry")).await;
    assert_eq!(status, 400);
    assert_eq!(refused["errors"][0]["msg"], "please provide a quantile between (0, 1]");

    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_pushed_where_victoria_metrics_cannot_scrape() {
    let database = TestDatabase::create("red_push").await;
    let vm = VictoriaMetrics::start(free_address(), None).await;
    let mut config = config(&database);
    config.metrics_push_url = Some(format!("{}/api/v1/import/prometheus?extra_label=source=push", vm.url));
    config.metrics_push_interval = Duration::from_millis(500);
    let app = tracepost::start(tracepost::Role::Serve, config).await.expect("start");
    send_phase(&app, 1).await;
    vm.wait_for(r#"sum(traces_span_metrics_calls_total{source="push"})"#, 10.0)
        .await;
    assert_eq!(
        vm.value(r#"sum(traces_service_graph_request_failed_total{client="gitlab",server="registry"})"#)
            .await,
        Some(1.0)
    );
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spm_routes_say_when_no_metrics_backend_is_configured() {
    let database = TestDatabase::create("spm_disabled").await;
    let app = serve(&database).await;
    let (status, body) = get_text(&query_url(&app, "/api/metrics/calls?service=registry")).await;
    assert_eq!(status, 501);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json"),
        json!({"data": null, "total": 0, "limit": 0, "offset": 0, "errors": [{"code": 501, "msg": "metrics querying is currently disabled"}]})
    );
    app.stop().await.expect("clean shutdown");
}
