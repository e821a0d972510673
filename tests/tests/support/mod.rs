//! What every end-to-end test needs: its own database on a real PostgreSQL, tracepost started in-process on
//! free loopback ports, and real OpenTelemetry SDK clients.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;
use tracepost::{App, AppConfig, Role};
use tracepost_storage::DatabaseConfig;

pub mod victoria_metrics;

/// The PostgreSQL server tests create their databases on: `TRACEPOST_TEST_DATABASE_URL`, or else a private
/// cluster started by `scripts/pg-cluster.sh` (never the system's).
pub fn admin_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| std::env::var("TRACEPOST_TEST_DATABASE_URL").unwrap_or_else(|_| private_cluster("test", false)))
        .clone()
}

/// Starts (or reuses) a private cluster and returns its URL.
pub fn private_cluster(name: &str, tls: bool) -> String {
    let script = format!("{}/../scripts/pg-cluster.sh", env!("CARGO_MANIFEST_DIR"));
    let mut command = std::process::Command::new("bash");
    command.arg(&script).args(["start", name]);
    if tls {
        command.arg("--tls");
    }
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("running {script}: {error}"));
    assert!(
        output.status.success(),
        "{script} start {name} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 url").trim().to_owned()
}

/// The CA certificate of a `--tls` private cluster.
pub fn private_cluster_ca(name: &str) -> String {
    let script = format!("{}/../scripts/pg-cluster.sh", env!("CARGO_MANIFEST_DIR"));
    let output = std::process::Command::new("bash")
        .arg(&script)
        .args(["ca", name])
        .output()
        .expect("run script");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 path").trim().to_owned()
}

/// A database of its own for one test.
#[derive(Clone, Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDatabase {
    pub async fn create(test: &str) -> Self {
        let name = format!(
            "tracepost_test_{}_{}_{}",
            test.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(30)
                .collect::<String>(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let admin = admin_client().await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .expect("drop test database");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = with_database(&admin_url(), &name);
        Self { name, url }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// Spans stored in blocks (all partitions), each stored copy counted.
    pub async fn span_rows(&self) -> i64 {
        self.client()
            .await
            .query_one("SELECT coalesce(sum(span_count), 0)::int8 FROM span_blocks", &[])
            .await
            .expect("count spans")
            .get(0)
    }
}

/// Replaces the database name in a URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let (server, _) = base.rsplit_once('/').expect("url has a database part");
    format!("{server}/{database}{query}")
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to postgres");
    tokio::spawn(connection);
    client
}

async fn admin_client() -> tokio_postgres::Client {
    connect(&admin_url()).await
}

/// A configuration listening on free loopback ports.
pub fn config(database: &TestDatabase) -> AppConfig {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut config = AppConfig::new(DatabaseConfig::new(database.url.clone()));
    config.otlp_grpc_listen = loopback;
    config.otlp_http_listen = loopback;
    config.query_listen = loopback;
    config.admin_listen = loopback;
    config.tempo_listen = loopback;
    config.shutdown_grace = Duration::from_secs(10);
    config
}

/// `tracepost serve` on a fresh database.
pub async fn serve(database: &TestDatabase) -> App {
    tracepost::start(Role::Serve, config(database))
        .await
        .expect("tracepost starts")
}

pub fn http_endpoint(app: &App) -> String {
    format!("http://{}/v1/traces", app.otlp_http_addr.expect("otlp http listener"))
}

pub fn grpc_endpoint(app: &App) -> String {
    format!("http://{}", app.otlp_grpc_addr.expect("otlp grpc listener"))
}

pub fn tempo_url(app: &App, path: &str) -> String {
    format!("http://{}{path}", app.tempo_addr.expect("tempo listener"))
}

pub fn query_url(app: &App, path: &str) -> String {
    format!("http://{}{path}", app.query_addr.expect("query listener"))
}

/// GETs a query URL and returns (status, JSON body).
pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(url).await.expect("query request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("query body");
    let body = serde_json::from_str(&text).unwrap_or_else(|error| panic!("{url} answered non-JSON ({error}): {text}"));
    (status, body)
}

/// GETs a URL and returns (status, text body).
pub async fn get_text(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("request");
    (response.status().as_u16(), response.text().await.expect("body"))
}

/// The value of one sample in a Prometheus/OpenMetrics text page, e.g.
/// `metric_value(&page, "tracepost_spans_rejected_total{reason=\"invalid_trace_id\"}")`. A sample that is
/// not on the page fails the test: a missing metric never reads as zero.
pub fn metric_value(page: &str, sample: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{sample} is not on the metrics page"))
}

/// A small trace made by the real OpenTelemetry SDK: a server span and a client child with every attribute
/// type, an event, a link and an error status.
pub struct SdkTrace {
    pub spans: Vec<SpanData>,
    pub resource: Resource,
}

impl SdkTrace {
    pub fn trace_id(&self) -> String {
        self.spans[0].span_context.trace_id().to_string()
    }
}

pub fn sdk_trace(service: &str) -> SdkTrace {
    let memory = InMemorySpanExporter::default();
    let resource = Resource::builder_empty()
        .with_service_name(service.to_owned())
        .with_attribute(KeyValue::new("k8s.cluster.name", "apps"))
        .with_attribute(KeyValue::new("host.name", "checkout-5d8f-abcde"))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(memory.clone())
        .with_resource(resource.clone())
        .build();
    let scope = opentelemetry::InstrumentationScope::builder("tracepost.tests")
        .with_version("1.2.3")
        .build();
    let tracer = provider.tracer_with_scope(scope);
    let root = tracer
        .span_builder("GET /checkout")
        .with_kind(SpanKind::Server)
        .with_attributes(vec![
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("http.response.status_code", 200_i64),
            KeyValue::new("big.number", 9_007_199_254_740_993_i64),
            KeyValue::new("ratio", 0.25),
            KeyValue::new("cached", false),
            KeyValue::new(
                "tags",
                opentelemetry::Value::Array(opentelemetry::Array::String(vec!["a".into(), "b".into()])),
            ),
        ])
        .start(&tracer);
    let context = Context::current_with_span(root);
    // A link to a span of another trace (a batch job that this request continues, say).
    let linked = opentelemetry::trace::SpanContext::new(
        opentelemetry::trace::TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").expect("trace id"),
        opentelemetry::trace::SpanId::from_hex("b7ad6b7169203331").expect("span id"),
        opentelemetry::trace::TraceFlags::SAMPLED,
        true,
        opentelemetry::trace::TraceState::default(),
    );
    let mut child = tracer
        .span_builder("SELECT orders")
        .with_kind(SpanKind::Client)
        .with_links(vec![opentelemetry::trace::Link::with_context(linked)])
        .start_with_context(&tracer, &context);
    child.add_event("cache miss", vec![KeyValue::new("cache.key", "order:42")]);
    child.set_status(Status::error("db timeout"));
    child.end();
    context.span().end();
    let spans = memory.get_finished_spans().expect("finished spans");
    assert_eq!(spans.len(), 2);
    SdkTrace { spans, resource }
}

/// Exports spans with the real OTLP/gRPC exporter of `opentelemetry-otlp`.
pub async fn export_grpc(endpoint: &str, trace: &SdkTrace) -> opentelemetry_sdk::error::OTelSdkResult {
    use opentelemetry_otlp::WithExportConfig;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(10))
        .build()
        .expect("grpc exporter");
    exporter.set_resource(&trace.resource);
    exporter.export(trace.spans.clone()).await
}

/// Exports spans with the real OTLP/HTTP exporter of `opentelemetry-otlp` (protobuf or JSON).
pub async fn export_http(
    endpoint: &str,
    trace: &SdkTrace,
    protocol: opentelemetry_otlp::Protocol,
) -> opentelemetry_sdk::error::OTelSdkResult {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(reqwest::Client::new())
        .with_protocol(protocol)
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(10))
        .build()
        .expect("http exporter");
    exporter.set_resource(&trace.resource);
    exporter.export(trace.spans.clone()).await
}

/// POSTs a raw OTLP/HTTP body and returns (status, headers, body bytes).
pub async fn post_otlp(
    endpoint: &str,
    content_type: &str,
    content_encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = reqwest::Client::new()
        .post(endpoint)
        .header("content-type", content_type)
        .body(body);
    if let Some(encoding) = content_encoding {
        request = request.header("content-encoding", encoding);
    }
    let response = request.send().await.expect("post otlp");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.expect("body").to_vec())
}

/// The Linkerd fixture (one hop, four proxy spans) as OTLP/JSON.
pub fn linkerd_fixture(generation: &str) -> String {
    let path = format!(
        "{}/fixtures/linkerd-{generation}-one-hop.otlp.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// A trace crossing two services, made by the real SDK: `frontend`'s server span calls out with a client
/// span, which is the parent of `cart`'s server span (an error), as context propagation would link them.
pub struct TwoServiceTrace {
    pub frontend: SdkTrace,
    pub cart: SdkTrace,
}

impl TwoServiceTrace {
    pub fn trace_id(&self) -> String {
        self.frontend.trace_id()
    }
}

fn provider_for(service: &str, cluster: &str) -> (SdkTracerProvider, InMemorySpanExporter, Resource) {
    provider_with(
        Resource::builder_empty()
            .with_service_name(service.to_owned())
            .with_attribute(KeyValue::new("k8s.cluster.name", cluster.to_owned()))
            .build(),
    )
}

/// A tracer provider that keeps its spans in memory, for `resource`.
pub fn provider_with(resource: Resource) -> (SdkTracerProvider, InMemorySpanExporter, Resource) {
    let memory = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(memory.clone())
        .with_resource(resource.clone())
        .build();
    (provider, memory, resource)
}

pub fn two_service_trace() -> TwoServiceTrace {
    let (frontend_provider, frontend_memory, frontend_resource) = provider_for("frontend", "apps");
    let (cart_provider, cart_memory, cart_resource) = provider_for("cart", "infra");
    let frontend = frontend_provider.tracer("frontend");
    let cart = cart_provider.tracer("cart");
    let root = frontend
        .span_builder("GET /cart")
        .with_kind(SpanKind::Server)
        .with_attributes(vec![KeyValue::new("http.response.status_code", "503")])
        .start(&frontend);
    let root_context = Context::current_with_span(root);
    let call = frontend
        .span_builder("GET cart")
        .with_kind(SpanKind::Client)
        .start_with_context(&frontend, &root_context);
    let call_context = root_context.with_span(call);
    let mut served = cart
        .span_builder("GET /items")
        .with_kind(SpanKind::Server)
        .with_attributes(vec![KeyValue::new("http.response.status_code", 503_i64)])
        .start_with_context(&cart, &call_context);
    served.set_status(Status::error("out of stock"));
    served.end();
    call_context.span().end();
    root_context.span().end();
    TwoServiceTrace {
        frontend: SdkTrace {
            spans: frontend_memory.get_finished_spans().expect("spans"),
            resource: frontend_resource,
        },
        cart: SdkTrace {
            spans: cart_memory.get_finished_spans().expect("spans"),
            resource: cart_resource,
        },
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    tracepost_storage::time::now_unix_nanos() / 1000
}
