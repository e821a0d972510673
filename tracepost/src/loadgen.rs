//! `tracepost loadgen`: OTLP traffic shaped as Linkerd proxies send it.
//!
//! Each trace crosses 1 to 10 meshed hops; each hop yields the four proxy spans Linkerd records (outbound
//! server and client on the caller's proxy, inbound server and client on the callee's), chained parent to
//! child, so traces hold 4 to 40 spans. Services live in the `apps` and `infra` clusters and call across
//! them. As Linkerd 2.18+ proxies do: status UNSET, every attribute a string (including the status code),
//! the raw path as span name, pod labels as resource attributes, empty instrumentation scope. A share of
//! requests answer 5xx.
//!
//! With `--cluster-endpoint CLUSTER=URL` (repeated) the spans go where Linkerd's proxies would send them: each
//! proxy exports to its own cluster's collector, so a trace whose hops cross clusters reaches several
//! collectors, each with the spans of its cluster's pods.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Http,
    Grpc,
}

/// Options of `tracepost loadgen`.
#[derive(Clone, Debug, clap::Args)]
pub struct LoadgenArgs {
    /// Collector endpoint (default http://127.0.0.1:4318 for http, http://127.0.0.1:4317 for grpc).
    #[arg(long, env = "TRACEPOST_LOADGEN_ENDPOINT")]
    pub endpoint: Option<String>,
    /// OTLP transport.
    #[arg(long, value_enum, default_value = "http")]
    pub protocol: Protocol,
    /// Spans to send in all (rounded up to whole requests).
    #[arg(long, default_value_t = 100_000)]
    pub spans: u64,
    /// Target spans per second: request N is sent no earlier than N x --request-spans / --rate seconds after
    /// the start (a client still waiting for an answer when its next request is due sends it as soon as the
    /// answer comes); 0 sends as fast as the collector acknowledges.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Requests in flight at once: each of this many clients sends one request and waits for its answer
    /// before the next.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Spans per export request, rounded up to a multiple of 4 (a request's last trace is cut short to fit,
    /// at a hop boundary). Linkerd proxies send up to 1000.
    #[arg(long, default_value_t = 1000)]
    pub request_spans: usize,
    /// Share of hops answering 5xx.
    #[arg(long, default_value_t = 0.03)]
    pub error_ratio: f64,
    /// Seed: the same seed generates the same spans.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the spans as text COPY rows of the plain 11-column baseline table (used by the benchmark).
    #[arg(long)]
    pub copy_text_out: Option<PathBuf>,
    /// Generate (and write --copy-text-out) without sending.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Generate and encode every request before the clock starts, so the generator's own work is not
    /// measured (holds all requests in memory: about 450 bytes per span). HTTP only.
    #[arg(long)]
    pub pregenerate: bool,
    /// Plant rare values instead of sending the load: --plant-traces traces, one export request each, each a
    /// generated trace (same shape as the load's) one span of which carries the string attribute
    /// `KEY=PREFIX<n>` (n = 0, 1, ...): a value no other span has. Their starts are spread evenly over
    /// --plant-between. Prints one `PLANTED trace_id=.. service=.. key=.. value=.. start_ns=..` line per
    /// trace (the service is the one of the span carrying the value), for `tracepost querybench --planted`.
    #[arg(long, value_name = "KEY=PREFIX")]
    pub plant: Option<String>,
    /// Traces --plant sends.
    #[arg(long, default_value_t = 20)]
    pub plant_traces: u64,
    /// Cross-cluster mode, one per cluster (repeat): send each span to the collector of the cluster of the pod
    /// whose proxy emitted it, e.g. `--cluster-endpoint apps=http://127.0.0.1:14318 --cluster-endpoint
    /// infra=http://127.0.0.1:24318`. A service stays in its usual cluster (`apps` or `infra`) when that one is
    /// named; the others are dealt round robin over the named clusters in the order given, and every named
    /// cluster must get one. Each pod's resource carries its cluster as `k8s.cluster.name`; a hop's outbound
    /// server and client spans go to the caller's cluster, its inbound ones to the callee's. Each generated
    /// request becomes one export per cluster, which its client sends one after the other (each counted as an
    /// acknowledged request, with its own latency). Replaces --endpoint.
    #[arg(long = "cluster-endpoint", value_name = "CLUSTER=URL", value_parser = parse_cluster_endpoint)]
    pub cluster_endpoints: Vec<(String, String)>,
    /// Where --plant puts its traces: `START_NS..END_NS`, Unix nanoseconds (the `start_ns` and `end_ns` of a
    /// load's RESULT line); default the minute before now.
    #[arg(long, value_name = "START_NS..END_NS")]
    pub plant_between: Option<String>,
}

/// `CLUSTER=URL` of `--cluster-endpoint`.
fn parse_cluster_endpoint(text: &str) -> Result<(String, String), String> {
    let (cluster, url) = text
        .split_once('=')
        .ok_or_else(|| format!("expected CLUSTER=URL, got {text:?}"))?;
    let (cluster, url) = (cluster.trim(), url.trim());
    if cluster.is_empty() || url.is_empty() {
        return Err(format!("expected CLUSTER=URL with both parts, got {text:?}"));
    }
    Ok((cluster.to_owned(), url.to_owned()))
}

/// The services of the generated mesh: (service, namespace, home cluster).
const SERVICES: &[(&str, &str, &str)] = &[
    ("ingress-nginx", "ingress", "apps"),
    ("gitlab-webservice", "gitlab", "apps"),
    ("harbor-core", "harbor", "apps"),
    ("harbor-jobservice", "harbor", "apps"),
    ("grafana", "monitoring", "infra"),
    ("keycloak", "auth", "infra"),
    ("vmselect", "monitoring", "infra"),
    ("minio", "storage", "infra"),
];
const REPLICAS: usize = 2;
const PATHS: &[&str] = &[
    "/api/v4/projects/{}/jobs",
    "/api/v2.0/repositories/{}/artifacts",
    "/healthz",
    "/login",
    "/api/v1/query",
    "/objects/{}",
];
const METHODS: &[&str] = &["GET", "GET", "GET", "POST", "PUT"];

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn chance(&mut self, ratio: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= ratio
    }
}

fn string_attribute(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn pod_resource(pod: usize, cluster: &str) -> Resource {
    let (service, namespace, _) = SERVICES[pod / REPLICAS];
    let pod_name = format!("{service}-7d9f8c{:02}-x{pod:03}", pod % REPLICAS);
    let attributes = vec![
        string_attribute("service.name", service),
        string_attribute("host.name", pod_name.clone()),
        KeyValue {
            key: "process.pid".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(1)),
            }),
            ..Default::default()
        },
        string_attribute("k8s.cluster.name", cluster),
        string_attribute("linkerd.io/workload-ns", namespace),
        string_attribute("linkerd.io/proxy-deployment", service),
        string_attribute("linkerd.io/control-plane-ns", "linkerd"),
        string_attribute("app.kubernetes.io/name", service),
        string_attribute("pod-template-hash", "7d9f8c"),
        string_attribute("k8s.pod.ip", format!("10.{}.{}.{}", pod % 2, pod / 250, pod % 250 + 1)),
        string_attribute("k8s.pod.uid", format!("0b3f{pod:04}-1c2d-4e5f-8a9b-{pod:012}")),
        string_attribute("k8s.container.name", service),
    ];
    Resource {
        attributes,
        dropped_attributes_count: 0,
        entity_refs: Vec::new(),
    }
}

/// The clusters of the generated mesh, the cluster of each service, and every pod's resource.
struct Mesh {
    clusters: Vec<String>,
    /// The cluster (an index into `clusters`) of each service of [`SERVICES`].
    service_cluster: Vec<usize>,
    /// By pod number: `service * REPLICAS + replica`.
    resources: Vec<Resource>,
}

impl Mesh {
    /// The mesh over the named clusters: a service stays in its home cluster when that one is named, the others
    /// are dealt round robin over the clusters in the order given. Every cluster must get a service.
    fn new(clusters: &[String]) -> anyhow::Result<Self> {
        anyhow::ensure!(!clusters.is_empty(), "no cluster named");
        for (index, name) in clusters.iter().enumerate() {
            anyhow::ensure!(!clusters[..index].contains(name), "cluster {name} is named twice");
        }
        let mesh = Self::assigned(clusters);
        if let Some(empty) = (0..clusters.len()).find(|cluster| !mesh.service_cluster.contains(cluster)) {
            anyhow::bail!(
                "cluster {} gets none of the {} services (name fewer clusters)",
                clusters[empty],
                SERVICES.len()
            );
        }
        Ok(mesh)
    }

    /// The usual mesh: `apps` and `infra`, every service in its home cluster.
    fn standard() -> Self {
        Self::assigned(&["apps".to_owned(), "infra".to_owned()])
    }

    fn assigned(clusters: &[String]) -> Self {
        let mut dealt = 0;
        let service_cluster: Vec<usize> = SERVICES
            .iter()
            .map(|(_, _, home)| {
                clusters.iter().position(|name| name == home).unwrap_or_else(|| {
                    dealt += 1;
                    (dealt - 1) % clusters.len().max(1)
                })
            })
            .collect();
        let resources = (0..SERVICES.len() * REPLICAS)
            .map(|pod| pod_resource(pod, &clusters[service_cluster[pod / REPLICAS]]))
            .collect();
        Self {
            clusters: clusters.to_vec(),
            service_cluster,
            resources,
        }
    }

    /// The cluster a resource of this mesh is in (by its `k8s.cluster.name`; the first for another resource).
    fn cluster_of(&self, resource: Option<&Resource>) -> usize {
        resource
            .and_then(|resource| resource.attributes.iter().find(|kv| kv.key == "k8s.cluster.name"))
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(text) => self.clusters.iter().position(|name| name == text),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// The services of cluster `cluster`, comma-separated.
    fn services_of(&self, cluster: usize) -> String {
        SERVICES
            .iter()
            .zip(&self.service_cluster)
            .filter(|(_, assigned)| **assigned == cluster)
            .map(|((service, _, _), _)| *service)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// One generated request.
struct Generated {
    request: ExportTraceServiceRequest,
    first_trace_id: [u8; 16],
    /// The first trace with a hop from a service of the mesh's first cluster to one of another cluster.
    crossing_trace_id: Option<[u8; 16]>,
}

/// One export request of a generated request: the cluster (an index into the mesh's clusters and the
/// endpoints) it goes to, and its span count.
struct Export {
    cluster: usize,
    request: ExportTraceServiceRequest,
    spans: u64,
}

/// Splits a generated request by cluster: the spans of each resource go to the cluster of its pod. One export
/// per cluster that has spans, in the order of the mesh's clusters.
fn split_by_cluster(mesh: &Mesh, request: ExportTraceServiceRequest) -> Vec<Export> {
    let mut exports: Vec<Export> = Vec::new();
    for resource_spans in request.resource_spans {
        let cluster = mesh.cluster_of(resource_spans.resource.as_ref());
        let spans = resource_span_count(&resource_spans);
        let position = match exports.iter().position(|export| export.cluster == cluster) {
            Some(position) => position,
            None => {
                exports.push(Export {
                    cluster,
                    request: ExportTraceServiceRequest::default(),
                    spans: 0,
                });
                exports.len() - 1
            }
        };
        let export = &mut exports[position];
        export.spans += spans;
        export.request.resource_spans.push(resource_spans);
    }
    exports.sort_by_key(|export| export.cluster);
    exports
}

/// Generates request number `index` (deterministic in seed and index).
fn generate_request(args: &LoadgenArgs, mesh: &Mesh, index: u64, base_nanos: u64) -> Generated {
    let mut rng = Rng::new(args.seed ^ index.wrapping_mul(0x1000_0000_01b3).wrapping_add(1));
    let mut by_pod: BTreeMap<usize, Vec<Span>> = BTreeMap::new();
    let mut spans = 0;
    let mut first_trace_id = [0u8; 16];
    let mut crossing_trace_id = None;
    let mut trace_start = base_nanos + index * 1_000_000;
    while spans < args.request_spans {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&rng.next().to_be_bytes());
        trace_id[8..].copy_from_slice(&rng.next().to_be_bytes());
        if first_trace_id == [0; 16] {
            first_trace_id = trace_id;
        }
        // Four spans per hop; the last trace gets only the hops the request has room for.
        let hops = (1 + rng.below(10)).min((args.request_spans - spans).div_ceil(4));
        let mut parent = rng.next().to_be_bytes().to_vec();
        let mut caller = rng.below(SERVICES.len());
        let mut start = trace_start;
        let mut duration = 40_000_000 + (rng.below(200) as u64) * 1_000_000;
        for _ in 0..hops {
            let mut callee = rng.below(SERVICES.len());
            if callee == caller {
                callee = (callee + 1) % SERVICES.len();
            }
            if crossing_trace_id.is_none() && mesh.service_cluster[caller] == 0 && mesh.service_cluster[callee] != 0 {
                crossing_trace_id = Some(trace_id);
            }
            let source_pod = caller * REPLICAS + rng.below(REPLICAS);
            let destination_pod = callee * REPLICAS + rng.below(REPLICAS);
            let (callee_service, callee_namespace, _) = SERVICES[callee];
            let path = PATHS[rng.below(PATHS.len())].replace("{}", &(rng.below(100_000)).to_string());
            let method = METHODS[rng.below(METHODS.len())];
            let status = if rng.chance(args.error_ratio) { "503" } else { "200" };
            let authority = format!("{callee_service}.{callee_namespace}.svc.cluster.local:8080");
            let layers = [
                (source_pod, SpanKind::Server, "outbound"),
                (source_pod, SpanKind::Client, "outbound"),
                (destination_pod, SpanKind::Server, "inbound"),
                (destination_pod, SpanKind::Client, "inbound"),
            ];
            for (layer, (pod, kind, direction)) in layers.into_iter().enumerate() {
                let span_id = rng.next().to_be_bytes().to_vec();
                let offset = layer as u64 * 200_000;
                let attributes = vec![
                    string_attribute("direction", direction),
                    string_attribute("http.request.method", method),
                    string_attribute("url.scheme", "http"),
                    string_attribute("url.path", path.clone()),
                    string_attribute("url.full", format!("http://{authority}{path}")),
                    string_attribute("network.transport", "tcp"),
                    string_attribute(
                        "server.address",
                        format!("{callee_service}.{callee_namespace}.svc.cluster.local"),
                    ),
                    string_attribute("server.port", "8080"),
                    string_attribute("user_agent.original", "Go-http-client/1.1"),
                    string_attribute("http.response.status_code", status),
                ];
                by_pod.entry(pod).or_default().push(Span {
                    trace_id: trace_id.to_vec(),
                    span_id: span_id.clone(),
                    parent_span_id: parent.clone(),
                    flags: 0x300,
                    name: path.clone(),
                    kind: kind as i32,
                    start_time_unix_nano: start + offset,
                    end_time_unix_nano: start + duration - offset,
                    attributes,
                    status: Some(Status::default()),
                    ..Default::default()
                });
                parent = span_id;
                spans += 1;
            }
            start += 1_000_000;
            duration = (duration / 2).max(2_000_000);
            caller = callee;
        }
        trace_start += 10_000;
    }
    let resource_spans = by_pod
        .into_iter()
        .map(|(pod, spans)| ResourceSpans {
            resource: Some(mesh.resources[pod].clone()),
            scope_spans: vec![ScopeSpans {
                scope: None,
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        })
        .collect();
    Generated {
        request: ExportTraceServiceRequest { resource_spans },
        first_trace_id,
        crossing_trace_id,
    }
}

/// Text COPY rows of the plain baseline table:
/// trace_id, span_id, parent_span_id, service, name, kind, start_ns, duration_ns, status, attributes (jsonb), cluster.
fn write_copy_text(out: &mut impl Write, request: &ExportTraceServiceRequest) -> std::io::Result<()> {
    for resource_spans in &request.resource_spans {
        let resource = resource_spans.resource.as_ref();
        let find = |key: &str| {
            resource
                .and_then(|resource| resource.attributes.iter().find(|kv| kv.key == key))
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(text) => Some(text.clone()),
                    _ => None,
                })
                .unwrap_or_default()
        };
        let (service, cluster) = (find("service.name"), find("k8s.cluster.name"));
        for span in resource_spans.scope_spans.iter().flat_map(|scope| scope.spans.iter()) {
            let attributes: Vec<String> = span
                .attributes
                .iter()
                .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(text) => Some(format!("\"{}\":\"{}\"", kv.key, text)),
                    _ => None,
                })
                .collect();
            writeln!(
                out,
                "\\\\x{}\t\\\\x{}\t\\\\x{}\t{service}\t{}\t{}\t{}\t{}\t0\t{{{}}}\t{cluster}",
                hex(&span.trace_id),
                hex(&span.span_id),
                hex(&span.parent_span_id),
                span.name,
                span.kind,
                span.start_time_unix_nano,
                span.end_time_unix_nano - span.start_time_unix_nano,
                attributes.join(",")
            )?;
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The nearest-rank percentile of `sorted` (ascending): the smallest value that at least `percent` % of the
/// values do not exceed, so 100 is the maximum; `None` when there are no values.
fn percentile(sorted: &[u32], percent: usize) -> Option<u32> {
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// Microseconds as milliseconds for the summary, or `-` when there is no value.
fn milliseconds(micros: Option<u32>) -> String {
    micros.map_or_else(|| "-".into(), |micros| format!("{:.3}", f64::from(micros) / 1000.0))
}

#[derive(Default)]
struct Counters {
    spans_acked: AtomicU64,
    spans_rejected: AtomicU64,
    requests_acked: AtomicU64,
    requests_failed: AtomicU64,
    retries: AtomicU64,
}

// One client per worker: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Client {
    Http {
        client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
        uri: http::Uri,
    },
    Grpc(Box<TraceServiceClient<tonic::transport::Channel>>),
}

/// A generated request ready to send: its exports as (cluster, payload, spans), and its sample trace IDs.
struct Prepared {
    exports: Vec<(usize, Payload, u64)>,
    first_trace_id: [u8; 16],
    crossing_trace_id: Option<[u8; 16]>,
}

/// Spans of one resource's part of a request.
fn resource_span_count(resource_spans: &ResourceSpans) -> u64 {
    resource_spans
        .scope_spans
        .iter()
        .map(|scope| scope.spans.len() as u64)
        .sum()
}

fn span_count(request: &ExportTraceServiceRequest) -> u64 {
    request.resource_spans.iter().map(resource_span_count).sum()
}

/// The exports of a request: one per cluster in cross-cluster mode (`split`), else the request itself.
fn exports_of(mesh: &Mesh, split: bool, request: ExportTraceServiceRequest) -> Vec<Export> {
    if split {
        return split_by_cluster(mesh, request);
    }
    let spans = span_count(&request);
    vec![Export {
        cluster: 0,
        request,
        spans,
    }]
}

/// Request number `index`, split by cluster when `split`, encoded ahead of sending when `encode`.
fn prepare(args: &LoadgenArgs, mesh: &Mesh, split: bool, index: u64, base_nanos: u64, encode: bool) -> Prepared {
    let generated = generate_request(args, mesh, index, base_nanos);
    let exports = exports_of(mesh, split, generated.request)
        .into_iter()
        .map(|export| {
            let payload = if encode {
                Payload::Encoded(Bytes::from(export.request.encode_to_vec()))
            } else {
                Payload::Message(export.request)
            };
            (export.cluster, payload, export.spans)
        })
        .collect();
    Prepared {
        exports,
        first_trace_id: generated.first_trace_id,
        crossing_trace_id: generated.crossing_trace_id,
    }
}

/// The mesh and the endpoint of each of its clusters (without --cluster-endpoint: the standard mesh and one
/// endpoint for all of it).
fn targets(args: &LoadgenArgs) -> anyhow::Result<(Mesh, Vec<String>)> {
    if args.cluster_endpoints.is_empty() {
        let endpoint = args.endpoint.clone().unwrap_or_else(|| match args.protocol {
            Protocol::Http => "http://127.0.0.1:4318".into(),
            Protocol::Grpc => "http://127.0.0.1:4317".into(),
        });
        return Ok((Mesh::standard(), vec![endpoint]));
    }
    anyhow::ensure!(
        args.endpoint.is_none(),
        "--endpoint (or TRACEPOST_LOADGEN_ENDPOINT) and --cluster-endpoint exclude each other"
    );
    let names: Vec<String> = args
        .cluster_endpoints
        .iter()
        .map(|(cluster, _)| cluster.clone())
        .collect();
    let mesh = Mesh::new(&names).context("--cluster-endpoint")?;
    Ok((
        mesh,
        args.cluster_endpoints.iter().map(|(_, url)| url.clone()).collect(),
    ))
}

/// A request to send: built on the fly, or encoded ahead of time (`--pregenerate`).
enum Payload {
    Message(ExportTraceServiceRequest),
    Encoded(Bytes),
}

enum SendError {
    Retryable(String),
    Fatal(String),
}

impl Client {
    async fn connect(protocol: Protocol, endpoint: &str) -> anyhow::Result<Self> {
        Ok(match protocol {
            Protocol::Http => Self::Http {
                client: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
                uri: format!("{}/v1/traces", endpoint.trim_end_matches('/'))
                    .parse()
                    .with_context(|| format!("invalid endpoint {endpoint}"))?,
            },
            Protocol::Grpc => Self::Grpc(Box::new(
                TraceServiceClient::connect(endpoint.to_owned())
                    .await
                    .with_context(|| format!("connecting to {endpoint}"))?,
            )),
        })
    }

    /// Sends `payload`, retrying a retryable failure up to 8 times, 200 ms x the attempt apart (each retry
    /// counted in `retries`): the answer and its attempt's latency in microseconds, or why it failed.
    async fn send_retrying(
        &mut self,
        payload: &Payload,
        retries: &AtomicU64,
    ) -> Result<(ExportTraceServiceResponse, u32), String> {
        let mut attempt = 0;
        loop {
            let sent = Instant::now();
            match self.send(payload).await {
                Ok(response) => {
                    return Ok((response, u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX)));
                }
                Err(SendError::Retryable(message)) if attempt < 8 => {
                    attempt += 1;
                    retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%message, "retrying export");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(SendError::Retryable(message) | SendError::Fatal(message)) => return Err(message),
            }
        }
    }

    async fn send(&mut self, request: &Payload) -> Result<ExportTraceServiceResponse, SendError> {
        match self {
            Self::Http { client, uri } => {
                let body = match request {
                    Payload::Message(message) => Bytes::from(message.encode_to_vec()),
                    Payload::Encoded(bytes) => bytes.clone(),
                };
                let http_request = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(Full::new(body))
                    .map_err(|error| SendError::Fatal(error.to_string()))?;
                let response = client
                    .request(http_request)
                    .await
                    .map_err(|error| SendError::Retryable(error.to_string()))?;
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|error| SendError::Retryable(error.to_string()))?
                    .to_bytes();
                if status.is_success() {
                    return ExportTraceServiceResponse::decode(body)
                        .map_err(|error| SendError::Fatal(error.to_string()));
                }
                let message = format!("http {status}: {}", String::from_utf8_lossy(&body));
                if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
                    Err(SendError::Retryable(message))
                } else {
                    Err(SendError::Fatal(message))
                }
            }
            Self::Grpc(client) => {
                let message = match request {
                    Payload::Message(message) => message.clone(),
                    Payload::Encoded(bytes) => ExportTraceServiceRequest::decode(bytes.clone())
                        .map_err(|error| SendError::Fatal(error.to_string()))?,
                };
                match client.export(message).await {
                    Ok(response) => Ok(response.into_inner()),
                    Err(status) if status.code() == tonic::Code::Unavailable => {
                        Err(SendError::Retryable(status.to_string()))
                    }
                    Err(status) => Err(SendError::Fatal(status.to_string())),
                }
            }
        }
    }
}

fn process_cpu_seconds() -> f64 {
    // utime and stime (fields 14 and 15 of /proc/self/stat) in clock ticks of 1/100 s on Linux.
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(after_name) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// One planted trace: its spans (as one export request) and what `PLANTED` says of it.
struct Planted {
    request: ExportTraceServiceRequest,
    trace_id: [u8; 16],
    service: String,
    value: String,
    start_ns: u64,
}

/// Planted trace number `number` of `--plant KEY=PREFIX`, starting at `start_ns`: the first trace of a
/// generated request, attribute `key=PREFIX<number>` added to one of its spans.
fn planted_trace(args: &LoadgenArgs, mesh: &Mesh, key: &str, prefix: &str, number: u64, start_ns: u64) -> Planted {
    let shape = LoadgenArgs {
        request_spans: 40,
        seed: args.seed ^ 0x706c_616e_7400_0000 ^ number,
        ..args.clone()
    };
    let mut generated = generate_request(&shape, mesh, 0, start_ns);
    let trace_id = generated.first_trace_id;
    for resource_spans in &mut generated.request.resource_spans {
        for scope in &mut resource_spans.scope_spans {
            scope.spans.retain(|span| span.trace_id == trace_id);
        }
    }
    generated
        .request
        .resource_spans
        .retain(|resource_spans| resource_spans.scope_spans.iter().any(|scope| !scope.spans.is_empty()));
    let mut chosen = (number.wrapping_mul(7) % span_count(&generated.request).max(1)) as usize;
    let value = format!("{prefix}{number}");
    let (mut service, mut planted_start) = (String::new(), start_ns);
    'found: for resource_spans in &mut generated.request.resource_spans {
        for scope in &mut resource_spans.scope_spans {
            if chosen >= scope.spans.len() {
                chosen -= scope.spans.len();
                continue;
            }
            let span = &mut scope.spans[chosen];
            span.attributes.push(string_attribute(key, value.clone()));
            planted_start = span.start_time_unix_nano;
            service = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| resource.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(text) => Some(text.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            break 'found;
        }
    }
    Planted {
        request: generated.request,
        trace_id,
        service,
        value,
        start_ns: planted_start,
    }
}

/// `--plant`: sends the planted traces one request at a time (over HTTP or gRPC, as --protocol says; in
/// cross-cluster mode one export per cluster each) and prints a `PLANTED` line for each.
async fn plant_rare_values(
    args: &LoadgenArgs,
    plant: &str,
    mesh: &Mesh,
    endpoints: &[String],
    now_base: u64,
) -> anyhow::Result<()> {
    let (key, prefix) = plant.split_once('=').context("--plant is KEY=PREFIX")?;
    let (from, to) = match &args.plant_between {
        Some(text) => {
            let (from, to) = text.split_once("..").context("--plant-between is START_NS..END_NS")?;
            (from.trim().parse::<u64>()?, to.trim().parse::<u64>()?)
        }
        None => (now_base, now_base + 60_000_000_000),
    };
    anyhow::ensure!(from < to, "--plant-between: the start must be before the end");
    let mut clients = Vec::new();
    for endpoint in endpoints {
        clients.push(Client::connect(args.protocol, endpoint).await?);
    }
    let split = !args.cluster_endpoints.is_empty();
    let retries = AtomicU64::new(0);
    let count = args.plant_traces.max(1);
    for number in 0..count {
        // Evenly spread, the first at `from`, none later than `to` less a trace's length.
        let start_ns = from + (to - from) / count * number;
        let planted = planted_trace(args, mesh, key, prefix, number, start_ns);
        for export in exports_of(mesh, split, planted.request) {
            let payload = Payload::Message(export.request);
            match clients[export.cluster].send_retrying(&payload, &retries).await {
                Ok((response, _)) => {
                    if let Some(partial) = response.partial_success.filter(|partial| partial.rejected_spans > 0) {
                        anyhow::bail!(
                            "planted trace {number}: {} spans rejected: {}",
                            partial.rejected_spans,
                            partial.error_message
                        );
                    }
                }
                Err(message) => anyhow::bail!("planted trace {number}: export failed: {message}"),
            }
        }
        println!(
            "PLANTED trace_id={} service={} key={key} value={} start_ns={}",
            hex(&planted.trace_id),
            planted.service,
            planted.value,
            planted.start_ns
        );
    }
    Ok(())
}

/// The requests `tracepost loadgen` would send for `args` (same seed, same spans; without --cluster-endpoint),
/// encoded as protobuf: for benchmarks that feed the collector's conversion directly.
pub fn encoded_requests(args: &LoadgenArgs) -> Vec<Vec<u8>> {
    let mesh = Mesh::standard();
    let base_nanos = 1_795_300_000_000_000_000;
    (0..args.spans.div_ceil(args.request_spans.max(1) as u64))
        .map(|index| generate_request(args, &mesh, index, base_nanos).request.encode_to_vec())
        .collect()
}

/// The first acknowledged request's trace IDs: its first trace, and its first trace crossing clusters.
#[derive(Default)]
struct Samples {
    first: Option<[u8; 16]>,
    crossing: Option<[u8; 16]>,
}

/// Runs the load generator to completion.
pub async fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    let requests = args.spans.div_ceil(args.request_spans.max(1) as u64);
    let (mesh, endpoints) = targets(&args)?;
    let split = !args.cluster_endpoints.is_empty();
    let mesh = Arc::new(mesh);
    let base_nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64 - 60_000_000_000;
    if let Some(plant) = &args.plant {
        return plant_rare_values(&args, plant, &mesh, &endpoints, base_nanos).await;
    }
    if let Some(path) = &args.copy_text_out {
        let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        for index in 0..requests {
            write_copy_text(&mut out, &generate_request(&args, &mesh, index, base_nanos).request)?;
        }
        out.flush()?;
    }
    if args.dry_run {
        return Ok(());
    }
    let counters = Arc::new(Counters::default());
    let cluster_spans: Arc<Vec<AtomicU64>> = Arc::new(endpoints.iter().map(|_| AtomicU64::new(0)).collect());
    let next_request = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(std::sync::Mutex::new(Samples::default()));
    let pregenerated: Option<Arc<Vec<Prepared>>> = args.pregenerate.then(|| {
        let all = (0..requests)
            .map(|index| prepare(&args, &mesh, split, index, base_nanos, true))
            .collect();
        Arc::new(all)
    });
    let started = Instant::now();
    let cpu_before = process_cpu_seconds();
    let progress = (!args.quiet).then(|| {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let acked = counters.spans_acked.load(Ordering::Relaxed);
                eprintln!(
                    "loadgen: {acked} spans acked ({}/s), {} requests failed, {} retries",
                    acked - last,
                    counters.requests_failed.load(Ordering::Relaxed),
                    counters.retries.load(Ordering::Relaxed)
                );
                last = acked;
            }
        })
    });
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        // One client per cluster (one in all without --cluster-endpoint).
        let mut clients = Vec::new();
        for endpoint in &endpoints {
            clients.push(Client::connect(args.protocol, endpoint).await?);
        }
        let (args, mesh, pregenerated, counters, cluster_spans, next_request, samples) = (
            args.clone(),
            mesh.clone(),
            pregenerated.clone(),
            counters.clone(),
            cluster_spans.clone(),
            next_request.clone(),
            samples.clone(),
        );
        // Each worker returns the latency of every export it got acknowledged, in microseconds.
        workers.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::new();
            loop {
                let index = next_request.fetch_add(1, Ordering::Relaxed);
                if index >= requests {
                    return latencies;
                }
                if args.rate > 0 {
                    let due = started
                        + Duration::from_secs_f64((index * args.request_spans as u64) as f64 / args.rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let generated;
                let prepared = match &pregenerated {
                    Some(all) => &all[index as usize],
                    None => {
                        generated = prepare(&args, &mesh, split, index, base_nanos, false);
                        &generated
                    }
                };
                let mut delivered = true;
                for (cluster, payload, spans) in &prepared.exports {
                    match clients[*cluster].send_retrying(payload, &counters.retries).await {
                        Ok((response, latency)) => {
                            latencies.push(latency);
                            let rejected = response
                                .partial_success
                                .map_or(0, |partial| partial.rejected_spans.max(0) as u64);
                            let acked = spans.saturating_sub(rejected);
                            counters.spans_rejected.fetch_add(rejected, Ordering::Relaxed);
                            counters.spans_acked.fetch_add(acked, Ordering::Relaxed);
                            cluster_spans[*cluster].fetch_add(acked, Ordering::Relaxed);
                            counters.requests_acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(message) => {
                            eprintln!("loadgen: export failed: {message}");
                            counters.requests_failed.fetch_add(1, Ordering::Relaxed);
                            delivered = false;
                        }
                    }
                }
                if delivered {
                    let mut samples = samples.lock().unwrap_or_else(|p| p.into_inner());
                    samples.first.get_or_insert(prepared.first_trace_id);
                    if samples.crossing.is_none() {
                        samples.crossing = prepared.crossing_trace_id;
                    }
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await?);
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu_before;
    latencies.sort_unstable();
    let [p50, p90, p99, max] = [50, 90, 99, 100].map(|percent| milliseconds(percentile(&latencies, percent)));
    let acked = counters.spans_acked.load(Ordering::Relaxed);
    let failed = counters.requests_failed.load(Ordering::Relaxed);
    let (sample, crossing) = {
        let samples = samples.lock().unwrap_or_else(|p| p.into_inner());
        let hex_of = |id: Option<[u8; 16]>| id.map(|id| hex(&id)).unwrap_or_default();
        (hex_of(samples.first), hex_of(samples.crossing))
    };
    let target = if split {
        args.cluster_endpoints
            .iter()
            .map(|(cluster, url)| format!("{cluster}={url}"))
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        endpoints[0].clone()
    };
    println!("loadgen summary ({:?} to {target})", args.protocol);
    println!(
        "  spans acknowledged: {acked} in {} requests",
        counters.requests_acked.load(Ordering::Relaxed)
    );
    if split {
        for (cluster, name) in mesh.clusters.iter().enumerate() {
            println!(
                "    to {name}: {} spans (services {})",
                cluster_spans[cluster].load(Ordering::Relaxed),
                mesh.services_of(cluster)
            );
        }
    }
    println!(
        "  spans rejected:     {}",
        counters.spans_rejected.load(Ordering::Relaxed)
    );
    println!(
        "  requests failed:    {failed}   retries: {}",
        counters.retries.load(Ordering::Relaxed)
    );
    println!(
        "  elapsed:            {elapsed:.2} s   rate: {:.0} spans/s",
        acked as f64 / elapsed
    );
    println!(
        "  loadgen cpu:        {cpu:.2} s ({:.0} % of one core)",
        100.0 * cpu / elapsed
    );
    println!("  latency (ms):       p50 {p50}   p90 {p90}   p99 {p99}   max {max}   (per acknowledged request, its last attempt from send to answer)");
    println!("  sample trace id:    {sample}");
    println!(
        "  crossing trace id:  {crossing}   (a trace with a hop from {} to another cluster)",
        mesh.clusters[0]
    );
    // Request N's traces start from base + N ms (see `generate_request`), each at most ~250 ms long.
    let (first_ns, last_ns) = (base_nanos, base_nanos + requests * 1_000_000);
    println!("  span starts:        {first_ns} .. {last_ns} (Unix ns)");
    let mut result = format!("RESULT spans={acked} elapsed_s={elapsed:.3} rate={:.0} loadgen_cpu_s={cpu:.2} failed={failed} trace_id={sample} p50_ms={p50} p90_ms={p90} p99_ms={p99} max_ms={max} start_ns={first_ns} end_ns={last_ns} crossing_trace={crossing}", acked as f64 / elapsed);
    if split {
        let per_cluster: Vec<String> = mesh
            .clusters
            .iter()
            .zip(cluster_spans.iter())
            .map(|(name, spans)| format!("{name}:{}", spans.load(Ordering::Relaxed)))
            .collect();
        result.push_str(&format!(" cluster_spans={}", per_cluster.join(",")));
    }
    println!("{result}");
    if failed > 0 {
        anyhow::bail!("{failed} export request(s) failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn args() -> LoadgenArgs {
        LoadgenArgs {
            endpoint: None,
            protocol: Protocol::Http,
            spans: 1000,
            rate: 0,
            concurrency: 1,
            request_spans: 200,
            error_ratio: 0.5,
            seed: 7,
            copy_text_out: None,
            dry_run: true,
            quiet: true,
            pregenerate: false,
            plant: None,
            plant_traces: 20,
            plant_between: None,
            cluster_endpoints: Vec::new(),
        }
    }

    #[test]
    fn generated_spans_are_linkerd_shaped_and_deterministic() {
        let mesh = Mesh::standard();
        let first = generate_request(&args(), &mesh, 3, 1_000);
        let again = generate_request(&args(), &mesh, 3, 1_000);
        assert_eq!(first.request, again.request);
        let spans: Vec<&Span> = first
            .request
            .resource_spans
            .iter()
            .flat_map(|r| r.scope_spans.iter())
            .flat_map(|s| s.spans.iter())
            .collect();
        assert_eq!(spans.len(), 200, "exactly --request-spans spans");
        for span in &spans {
            assert_eq!(span.status.as_ref().map(|s| s.code), Some(0), "status is always UNSET");
            assert!(span.attributes.iter().all(|kv| matches!(
                kv.value.as_ref().and_then(|v| v.value.as_ref()),
                Some(any_value::Value::StringValue(_))
            )));
            assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
        }
        let clusters: std::collections::HashSet<String> = first
            .request
            .resource_spans
            .iter()
            .filter_map(|r| {
                r.resource
                    .as_ref()?
                    .attributes
                    .iter()
                    .find(|kv| kv.key == "k8s.cluster.name")
                    .cloned()
            })
            .filter_map(|kv| match kv.value?.value? {
                any_value::Value::StringValue(text) => Some(text),
                _ => None,
            })
            .collect();
        assert_eq!(clusters.len(), 2, "traces cross both clusters");
        let errors = spans.iter().filter(|span| span.attributes.iter().any(|kv| kv.key == "http.response.status_code" && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()), Some(any_value::Value::StringValue(code)) if code == "503"))).count();
        assert!(errors > 0, "a share of 5xx");
    }

    #[test]
    fn request_spans_round_up_to_whole_hops() {
        let mesh = Mesh::standard();
        for (asked, sent) in [(1, 4), (4, 4), (5, 8), (500, 500), (512, 512)] {
            let args = LoadgenArgs {
                request_spans: asked,
                ..args()
            };
            for index in 0..20 {
                assert_eq!(
                    span_count(&generate_request(&args, &mesh, index, 1_000).request),
                    sent,
                    "{asked} asked"
                );
            }
        }
    }

    #[test]
    fn a_planted_trace_is_one_trace_with_the_value_on_one_span() {
        let mesh = Mesh::standard();
        for number in 0..30 {
            let planted = planted_trace(&args(), &mesh, "order.id", "rare-", number, 5_000_000_000);
            let spans: Vec<&Span> = planted
                .request
                .resource_spans
                .iter()
                .flat_map(|r| r.scope_spans.iter())
                .flat_map(|s| s.spans.iter())
                .collect();
            assert!((4..=40).contains(&spans.len()));
            assert!(spans.iter().all(|span| span.trace_id == planted.trace_id));
            let carrying: Vec<&&Span> = spans
                .iter()
                .filter(|span| span.attributes.iter().any(|kv| kv.key == "order.id"))
                .collect();
            assert_eq!(carrying.len(), 1);
            assert_eq!(carrying[0].start_time_unix_nano, planted.start_ns);
            assert_eq!(planted.value, format!("rare-{number}"));
            assert!(SERVICES.iter().any(|(service, _, _)| *service == planted.service));
        }
    }

    fn text_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(text) => Some(text.clone()),
                _ => None,
            })
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn cross_cluster_exports_send_every_span_to_its_pods_cluster() {
        let mesh = Mesh::new(&names(&["apps", "infra"])).unwrap();
        let home: HashMap<&str, &str> = SERVICES
            .iter()
            .map(|(service, _, cluster)| (*service, *cluster))
            .collect();
        let (mut hops, mut crossing_hops, mut apps_to_infra) = (0, 0, 0);
        for index in 0..20 {
            let generated = generate_request(&args(), &mesh, index, 1_000);
            let (total, crossing_trace) = (span_count(&generated.request), generated.crossing_trace_id);
            let exports = split_by_cluster(&mesh, generated.request);
            assert!(
                exports.windows(2).all(|pair| pair[0].cluster < pair[1].cluster),
                "one export per cluster"
            );
            // Every span sent: the cluster of the collector it went to, the service of its pod, the span.
            let mut sent: HashMap<Vec<u8>, (&str, String, &Span)> = HashMap::new();
            for export in &exports {
                let cluster = mesh.clusters[export.cluster].as_str();
                assert_eq!(export.spans, span_count(&export.request));
                for resource_spans in &export.request.resource_spans {
                    let resource = &resource_spans.resource.as_ref().unwrap().attributes;
                    let service = text_attribute(resource, "service.name").unwrap();
                    assert_eq!(text_attribute(resource, "k8s.cluster.name").as_deref(), Some(cluster));
                    assert_eq!(home[service.as_str()], cluster, "the pod of {service}");
                    assert!(text_attribute(resource, "host.name").unwrap().starts_with(&service));
                    for span in resource_spans.scope_spans.iter().flat_map(|scope| &scope.spans) {
                        let previous = sent.insert(span.span_id.clone(), (cluster, service.clone(), span));
                        assert!(previous.is_none(), "a span sent twice");
                    }
                }
            }
            assert_eq!(sent.len() as u64, total, "every span sent");
            // Each hop: outbound server -> outbound client on the caller's pod, inbound server -> inbound client
            // on the callee's; the outbound pair in the caller's cluster, the inbound pair in the callee's.
            let mut crossing_traces = std::collections::HashSet::new();
            for (cluster, service, inbound_server) in sent.values() {
                let direction = text_attribute(&inbound_server.attributes, "direction").unwrap();
                if direction != "inbound" || inbound_server.kind != SpanKind::Server as i32 {
                    continue;
                }
                hops += 1;
                let (caller_cluster, caller, outbound_client) = &sent[&inbound_server.parent_span_id];
                assert_eq!(outbound_client.kind, SpanKind::Client as i32);
                assert_eq!(
                    text_attribute(&outbound_client.attributes, "direction").as_deref(),
                    Some("outbound")
                );
                assert_ne!(caller, service, "a hop calls another service");
                let (cluster_of_outbound_server, service_of_outbound_server, outbound_server) =
                    &sent[&outbound_client.parent_span_id];
                assert_eq!(outbound_server.kind, SpanKind::Server as i32);
                assert_eq!(
                    (*cluster_of_outbound_server, service_of_outbound_server),
                    (*caller_cluster, caller)
                );
                let (cluster_of_inbound_client, service_of_inbound_client, inbound_client) = sent
                    .values()
                    .find(|(_, _, span)| span.parent_span_id == inbound_server.span_id)
                    .unwrap();
                assert_eq!(inbound_client.kind, SpanKind::Client as i32);
                assert_eq!(
                    (*cluster_of_inbound_client, service_of_inbound_client),
                    (*cluster, service)
                );
                if caller_cluster != cluster {
                    crossing_hops += 1;
                    if *caller_cluster == "apps" {
                        apps_to_infra += 1;
                        crossing_traces.insert(inbound_server.trace_id.clone());
                    }
                }
            }
            match crossing_trace {
                Some(trace) => assert!(crossing_traces.contains(trace.as_slice()), "request {index}"),
                None => assert!(crossing_traces.is_empty(), "request {index}"),
            }
        }
        assert_eq!(hops * 4, 20 * 200, "20 requests of 200 spans, 4 a hop");
        assert!(crossing_hops > 0 && apps_to_infra > 0, "hops cross the clusters");
        assert!(crossing_hops < hops, "and some stay in one cluster");
    }

    #[test]
    fn services_keep_their_named_home_cluster_and_the_others_are_dealt_round_robin() {
        let standard = Mesh::new(&names(&["apps", "infra"])).unwrap();
        assert_eq!(standard.service_cluster, [0, 0, 0, 0, 1, 1, 1, 1]);
        assert_eq!(
            standard.services_of(1),
            "grafana,keycloak,vmselect,minio",
            "the usual layout"
        );
        assert_eq!(Mesh::standard().resources, standard.resources);
        for (pod, resource) in standard.resources.iter().enumerate() {
            assert_eq!(
                text_attribute(&resource.attributes, "k8s.cluster.name").as_deref(),
                Some(SERVICES[pod / REPLICAS].2)
            );
        }
        assert_eq!(
            Mesh::new(&names(&["infra", "apps"])).unwrap().service_cluster,
            [1, 1, 1, 1, 0, 0, 0, 0]
        );
        assert_eq!(
            Mesh::new(&names(&["east", "west", "north"])).unwrap().service_cluster,
            [0, 1, 2, 0, 1, 2, 0, 1]
        );
        // infra keeps its services; the apps services are dealt over both.
        let edge = Mesh::new(&names(&["infra", "edge"])).unwrap();
        assert_eq!(edge.service_cluster, [0, 1, 0, 1, 0, 0, 0, 0]);
        assert_eq!(edge.services_of(1), "gitlab-webservice,harbor-jobservice");
        for (pod, resource) in edge.resources.iter().enumerate() {
            let expected = if [2, 3, 6, 7].contains(&pod) { "edge" } else { "infra" };
            assert_eq!(
                text_attribute(&resource.attributes, "k8s.cluster.name").as_deref(),
                Some(expected),
                "pod {pod}"
            );
        }
        assert_eq!(Mesh::new(&names(&["apps"])).unwrap().service_cluster, [0; 8]);
        let nine: Vec<String> = (0..9).map(|number| format!("c{number}")).collect();
        assert_eq!(
            Mesh::new(&nine).err().map(|error| error.to_string()).as_deref(),
            Some("cluster c8 gets none of the 8 services (name fewer clusters)")
        );
        assert_eq!(
            Mesh::new(&names(&["apps", "apps"]))
                .err()
                .map(|error| error.to_string())
                .as_deref(),
            Some("cluster apps is named twice")
        );
        assert!(Mesh::new(&[]).is_err());
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        loadgen: LoadgenArgs,
    }

    #[test]
    fn cluster_endpoints_come_from_the_command_line() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "loadgen",
            "--cluster-endpoint",
            "apps=http://127.0.0.1:14318",
            "--cluster-endpoint",
            "infra = http://127.0.0.1:24318",
        ])
        .unwrap();
        assert_eq!(
            cli.loadgen.cluster_endpoints,
            [
                ("apps".to_owned(), "http://127.0.0.1:14318".to_owned()),
                ("infra".to_owned(), "http://127.0.0.1:24318".to_owned())
            ]
        );
        let (mesh, endpoints) = targets(&cli.loadgen).unwrap();
        assert_eq!(mesh.clusters, ["apps", "infra"]);
        assert_eq!(endpoints, ["http://127.0.0.1:14318", "http://127.0.0.1:24318"]);
        for bad in ["apps", "=http://127.0.0.1:1", "apps="] {
            assert!(
                Cli::try_parse_from(["loadgen", "--cluster-endpoint", bad]).is_err(),
                "{bad}"
            );
        }
        let both = LoadgenArgs {
            endpoint: Some("http://127.0.0.1:4318".into()),
            ..cli.loadgen.clone()
        };
        assert!(targets(&both).is_err());
        let (mesh, endpoints) = targets(&args()).unwrap();
        assert_eq!(
            (mesh.clusters.len(), endpoints),
            (2, vec!["http://127.0.0.1:4318".to_owned()])
        );
    }

    /// A stand-in OTLP/HTTP collector on a free loopback port: counts the spans it is sent by the
    /// `k8s.cluster.name` of their resource.
    async fn counting_collector() -> (String, Arc<std::sync::Mutex<BTreeMap<String, u64>>>) {
        let counts = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let recorded = counts.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let recorded = recorded.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body).unwrap();
                    let mut recorded = recorded.lock().unwrap();
                    for resource_spans in &request.resource_spans {
                        let resource = &resource_spans.resource.as_ref().unwrap().attributes;
                        let cluster = text_attribute(resource, "k8s.cluster.name").unwrap();
                        *recorded.entry(cluster).or_insert(0) += resource_spans
                            .scope_spans
                            .iter()
                            .map(|scope| scope.spans.len() as u64)
                            .sum::<u64>();
                    }
                    ExportTraceServiceResponse::default().encode_to_vec()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{address}"), counts)
    }

    #[tokio::test]
    async fn each_cluster_collector_receives_its_clusters_spans_only() {
        let (apps, apps_counts) = counting_collector().await;
        let (infra, infra_counts) = counting_collector().await;
        let load = LoadgenArgs {
            spans: 2_000,
            concurrency: 3,
            dry_run: false,
            cluster_endpoints: vec![("apps".into(), apps), ("infra".into(), infra)],
            ..args()
        };
        run(load.clone()).await.unwrap();
        let apps_counts = apps_counts.lock().unwrap().clone();
        let infra_counts = infra_counts.lock().unwrap().clone();
        assert_eq!(apps_counts.keys().collect::<Vec<_>>(), ["apps"]);
        assert_eq!(infra_counts.keys().collect::<Vec<_>>(), ["infra"]);
        // What the split of the same requests says each cluster gets.
        let mesh = Mesh::standard();
        let mut expected = [0u64; 2];
        for index in 0..10 {
            for export in split_by_cluster(&mesh, generate_request(&load, &mesh, index, 1_000).request) {
                expected[export.cluster] += export.spans;
            }
        }
        assert_eq!([apps_counts["apps"], infra_counts["infra"]], expected);
        assert_eq!(expected.iter().sum::<u64>(), 2_000);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let hundred: Vec<u32> = (1..=100).collect();
        assert_eq!(
            [50, 90, 99, 100].map(|percent| percentile(&hundred, percent)),
            [Some(50), Some(90), Some(99), Some(100)]
        );
        let thousand: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&thousand, 99), Some(990));
        assert_eq!(percentile(&[1, 2, 3], 50), Some(2));
        assert_eq!(percentile(&[1, 2, 3], 0), Some(1));
        assert_eq!(percentile(&[7], 99), Some(7));
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(milliseconds(Some(1_234)), "1.234");
        assert_eq!(milliseconds(None), "-");
    }
}
