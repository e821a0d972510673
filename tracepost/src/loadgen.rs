//! `tracepost loadgen`: OTLP traffic shaped as Linkerd proxies send it.
//!
//! Each trace crosses 1 to 10 meshed hops; each hop yields the four proxy spans Linkerd records (outbound
//! server and client on the caller's proxy, inbound server and client on the callee's), chained parent to
//! child, so traces hold 4 to 40 spans. Services live in the `apps` and `infra` clusters and call across
//! them. As Linkerd 2.18+ proxies do: status UNSET, every attribute a string (including the status code),
//! the raw path as span name, pod labels as resource attributes, empty instrumentation scope. A share of
//! requests answer 5xx.

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
    /// Where --plant puts its traces: `START_NS..END_NS`, Unix nanoseconds (the `start_ns` and `end_ns` of a
    /// load's RESULT line); default the minute before now.
    #[arg(long, value_name = "START_NS..END_NS")]
    pub plant_between: Option<String>,
}

/// The services of the generated mesh: (service, namespace, cluster).
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

fn pod_resource(pod: usize) -> Resource {
    let (service, namespace, cluster) = SERVICES[pod / REPLICAS];
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

/// One generated request, plus the spans' pods (for the COPY text).
struct Generated {
    request: ExportTraceServiceRequest,
    first_trace_id: [u8; 16],
    span_count: u64,
}

/// Generates request number `index` (deterministic in seed and index).
fn generate_request(args: &LoadgenArgs, resources: &[Resource], index: u64, base_nanos: u64) -> Generated {
    let mut rng = Rng::new(args.seed ^ index.wrapping_mul(0x1000_0000_01b3).wrapping_add(1));
    let mut by_pod: BTreeMap<usize, Vec<Span>> = BTreeMap::new();
    let mut spans = 0;
    let mut first_trace_id = [0u8; 16];
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
            resource: Some(resources[pod].clone()),
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
        span_count: spans as u64,
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

/// An encoded request, its first trace ID and its span count.
type Pregenerated = (Bytes, [u8; 16], u64);

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
fn planted_trace(
    args: &LoadgenArgs,
    resources: &[Resource],
    key: &str,
    prefix: &str,
    number: u64,
    start_ns: u64,
) -> Planted {
    let shape = LoadgenArgs {
        request_spans: 40,
        seed: args.seed ^ 0x706c_616e_7400_0000 ^ number,
        ..args.clone()
    };
    let mut generated = generate_request(&shape, resources, 0, start_ns);
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
    let span_count: u64 = generated
        .request
        .resource_spans
        .iter()
        .flat_map(|resource_spans| &resource_spans.scope_spans)
        .map(|scope| scope.spans.len() as u64)
        .sum();
    let mut chosen = (number.wrapping_mul(7) % span_count.max(1)) as usize;
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

/// `--plant`: sends the planted traces one request at a time (over HTTP or gRPC, as --protocol says) and
/// prints a `PLANTED` line for each.
async fn plant_rare_values(
    args: &LoadgenArgs,
    plant: &str,
    resources: &[Resource],
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
    let endpoint = args.endpoint.clone().unwrap_or_else(|| match args.protocol {
        Protocol::Http => "http://127.0.0.1:4318".into(),
        Protocol::Grpc => "http://127.0.0.1:4317".into(),
    });
    let mut client = match args.protocol {
        Protocol::Http => Client::Http {
            client: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
            uri: format!("{}/v1/traces", endpoint.trim_end_matches('/'))
                .parse()
                .context("invalid --endpoint")?,
        },
        Protocol::Grpc => Client::Grpc(Box::new(
            TraceServiceClient::connect(endpoint.clone())
                .await
                .with_context(|| format!("connecting to {endpoint}"))?,
        )),
    };
    let count = args.plant_traces.max(1);
    for number in 0..count {
        // Evenly spread, the first at `from`, none later than `to` less a trace's length.
        let start_ns = from + (to - from) / count * number;
        let planted = planted_trace(args, resources, key, prefix, number, start_ns);
        let mut attempt = 0;
        loop {
            match client.send(&Payload::Message(planted.request.clone())).await {
                Ok(response) => {
                    if let Some(partial) = response.partial_success.filter(|partial| partial.rejected_spans > 0) {
                        anyhow::bail!(
                            "planted trace {number}: {} spans rejected: {}",
                            partial.rejected_spans,
                            partial.error_message
                        );
                    }
                    break;
                }
                Err(SendError::Retryable(message)) if attempt < 8 => {
                    attempt += 1;
                    tracing::debug!(%message, "retrying export");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(SendError::Retryable(message) | SendError::Fatal(message)) => {
                    anyhow::bail!("planted trace {number}: export failed: {message}")
                }
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

/// The requests `tracepost loadgen` would send for `args` (same seed, same spans), encoded as protobuf:
/// for benchmarks that feed the collector's conversion directly.
pub fn encoded_requests(args: &LoadgenArgs) -> Vec<Vec<u8>> {
    let resources: Vec<Resource> = (0..SERVICES.len() * REPLICAS).map(pod_resource).collect();
    let base_nanos = 1_795_300_000_000_000_000;
    (0..args.spans.div_ceil(args.request_spans.max(1) as u64))
        .map(|index| {
            generate_request(args, &resources, index, base_nanos)
                .request
                .encode_to_vec()
        })
        .collect()
}

/// Runs the load generator to completion.
pub async fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    let requests = args.spans.div_ceil(args.request_spans.max(1) as u64);
    let resources: Arc<Vec<Resource>> = Arc::new((0..SERVICES.len() * REPLICAS).map(pod_resource).collect());
    let base_nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64 - 60_000_000_000;
    if let Some(plant) = &args.plant {
        return plant_rare_values(&args, plant, &resources, base_nanos).await;
    }
    if let Some(path) = &args.copy_text_out {
        let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        for index in 0..requests {
            write_copy_text(
                &mut out,
                &generate_request(&args, &resources, index, base_nanos).request,
            )?;
        }
        out.flush()?;
    }
    if args.dry_run {
        return Ok(());
    }
    let endpoint = args.endpoint.clone().unwrap_or_else(|| match args.protocol {
        Protocol::Http => "http://127.0.0.1:4318".into(),
        Protocol::Grpc => "http://127.0.0.1:4317".into(),
    });
    let counters = Arc::new(Counters::default());
    let next_request = Arc::new(AtomicU64::new(0));
    let sample_trace = Arc::new(std::sync::Mutex::new(None::<[u8; 16]>));
    let pregenerated: Option<Arc<Vec<Pregenerated>>> = args.pregenerate.then(|| {
        let all = (0..requests)
            .map(|index| {
                let generated = generate_request(&args, &resources, index, base_nanos);
                (
                    Bytes::from(generated.request.encode_to_vec()),
                    generated.first_trace_id,
                    generated.span_count,
                )
            })
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
        let mut client = match args.protocol {
            Protocol::Http => Client::Http {
                client: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
                uri: format!("{}/v1/traces", endpoint.trim_end_matches('/'))
                    .parse()
                    .context("invalid --endpoint")?,
            },
            Protocol::Grpc => Client::Grpc(Box::new(
                TraceServiceClient::connect(endpoint.clone())
                    .await
                    .with_context(|| format!("connecting to {endpoint}"))?,
            )),
        };
        let pregenerated = pregenerated.clone();
        let (args, resources, counters, next_request, sample_trace) = (
            args.clone(),
            resources.clone(),
            counters.clone(),
            next_request.clone(),
            sample_trace.clone(),
        );
        // Each worker returns the latency of every request it got acknowledged, in microseconds.
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
                let (payload, first_trace_id, span_count) = match &pregenerated {
                    Some(all) => {
                        let (bytes, first_trace_id, span_count) = &all[index as usize];
                        (Payload::Encoded(bytes.clone()), *first_trace_id, *span_count)
                    }
                    None => {
                        let generated = generate_request(&args, &resources, index, base_nanos);
                        (
                            Payload::Message(generated.request),
                            generated.first_trace_id,
                            generated.span_count,
                        )
                    }
                };
                let mut attempt = 0;
                loop {
                    let sent = Instant::now();
                    match client.send(&payload).await {
                        Ok(response) => {
                            latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                            let rejected = response
                                .partial_success
                                .map_or(0, |partial| partial.rejected_spans.max(0) as u64);
                            counters.spans_rejected.fetch_add(rejected, Ordering::Relaxed);
                            counters
                                .spans_acked
                                .fetch_add(span_count.saturating_sub(rejected), Ordering::Relaxed);
                            counters.requests_acked.fetch_add(1, Ordering::Relaxed);
                            sample_trace
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(first_trace_id);
                            break;
                        }
                        Err(SendError::Retryable(message)) if attempt < 8 => {
                            attempt += 1;
                            counters.retries.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%message, "retrying export");
                            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                        }
                        Err(SendError::Retryable(message) | SendError::Fatal(message)) => {
                            eprintln!("loadgen: export failed: {message}");
                            counters.requests_failed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
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
    let sample = sample_trace
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .map(|id| hex(&id))
        .unwrap_or_default();
    println!("loadgen summary ({:?} to {endpoint})", args.protocol);
    println!(
        "  spans acknowledged: {acked} in {} requests",
        counters.requests_acked.load(Ordering::Relaxed)
    );
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
    // Request N's traces start from base + N ms (see `generate_request`), each at most ~250 ms long.
    let (first_ns, last_ns) = (base_nanos, base_nanos + requests * 1_000_000);
    println!("  span starts:        {first_ns} .. {last_ns} (Unix ns)");
    println!("RESULT spans={acked} elapsed_s={elapsed:.3} rate={:.0} loadgen_cpu_s={cpu:.2} failed={failed} trace_id={sample} p50_ms={p50} p90_ms={p90} p99_ms={p99} max_ms={max} start_ns={first_ns} end_ns={last_ns}", acked as f64 / elapsed);
    if failed > 0 {
        anyhow::bail!("{failed} export request(s) failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
        }
    }

    #[test]
    fn generated_spans_are_linkerd_shaped_and_deterministic() {
        let resources: Vec<Resource> = (0..SERVICES.len() * REPLICAS).map(pod_resource).collect();
        let first = generate_request(&args(), &resources, 3, 1_000);
        let again = generate_request(&args(), &resources, 3, 1_000);
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
        let resources: Vec<Resource> = (0..SERVICES.len() * REPLICAS).map(pod_resource).collect();
        for (asked, sent) in [(1, 4), (4, 4), (5, 8), (500, 500), (512, 512)] {
            let args = LoadgenArgs {
                request_spans: asked,
                ..args()
            };
            for index in 0..20 {
                assert_eq!(
                    generate_request(&args, &resources, index, 1_000).span_count,
                    sent,
                    "{asked} asked"
                );
            }
        }
    }

    #[test]
    fn a_planted_trace_is_one_trace_with_the_value_on_one_span() {
        let resources: Vec<Resource> = (0..SERVICES.len() * REPLICAS).map(pod_resource).collect();
        for number in 0..30 {
            let planted = planted_trace(&args(), &resources, "order.id", "rare-", number, 5_000_000_000);
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
