//! Writes the fuzz targets' seed corpora, `fuzz/corpus/<target>/seed-*`, from the repository's fixtures
//! (`collector/testdata/*.otlp.json`) and a few hand-built requests at the edges the collector cares about
//! (attributes nested just within and just past the limit, invalid IDs, NUL in names); for the query
//! targets, the TraceQL queries and the Jaeger, api_v3 and Tempo request URLs of the query crate's tests and
//! the end-to-end tests (`query/src/traceql/tests.rs`, `tests/tests/grafana_tempo_datasource.rs`,
//! `tests/tests/jaeger_clients.rs`), and queries and parameters at the limits:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```
//!
//! Every seed is small (a few KB); the corpora the fuzzer grows from them are not committed.

use std::fs;
use std::path::{Path, PathBuf};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue, KeyValueList};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tracepost_collector::wire::convert_protobuf;
use tracepost_fuzz::{config, details, rows};
use tracepost_storage::limits::MAX_ATTRIBUTE_NESTING;

fn main() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let testdata = fuzz.join("../collector/testdata");
    let mut fixtures: Vec<(String, Vec<u8>)> = fs::read_dir(&testdata)
        .expect("collector/testdata")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.to_string_lossy().ends_with(".otlp.json"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().replace(".otlp.json", "");
            (name, fs::read(&path).expect("a fixture"))
        })
        .collect();
    fixtures.sort();

    let mut requests: Vec<(String, ExportTraceServiceRequest)> = fixtures
        .iter()
        .map(|(name, json)| {
            let request = serde_json::from_slice(json).expect("the fixtures are OTLP/JSON");
            (name.clone(), request)
        })
        .collect();
    for levels in [
        MAX_ATTRIBUTE_NESTING - 1,
        MAX_ATTRIBUTE_NESTING,
        MAX_ATTRIBUTE_NESTING + 1,
    ] {
        requests.push((format!("nested-{levels}"), request_with(deep_attribute(levels))));
    }
    requests.push(("edges".into(), edges()));

    let mut json = Corpus::new(fuzz, "otlp_json");
    let mut protobuf = Corpus::new(fuzz, "otlp_protobuf");
    let mut stored = Corpus::new(fuzz, "stored_rows");
    for (name, body) in &fixtures {
        json.write(name, body);
    }
    for (name, request) in &requests {
        if !name.starts_with("linkerd") {
            json.write(name, &serde_json::to_vec(request).expect("serializes"));
        }
        let body = request.encode_to_vec();
        protobuf.write(name, &body);
        let converted = convert_protobuf(&body, &config()).expect("prost's encoding converts");
        let rows = rows(&converted.encoded.rows);
        for (index, detail) in details(&rows).enumerate() {
            stored.write(&format!("{name}-detail-{index}"), detail);
        }
        for (index, resource) in converted.encoded.resources.iter().enumerate() {
            stored.write(&format!("{name}-resource-{index}"), &resource.body);
        }
    }
    protobuf.write("empty", b"");
    json.write("empty", b"{}");
    stored.write("trace-id", b"0102030405060708090A0b0c0d0e0f10");
    stored.write("span-id", b"00f067aa0ba902b7");

    let repository = fuzz.join("..");
    let read = |path: &str| fs::read_to_string(repository.join(path)).unwrap_or_else(|error| panic!("{path}: {error}"));
    let mut traceql = Corpus::new(fuzz, "traceql");
    let mut queries = traceql_literals(&read("query/src/traceql/tests.rs"));
    queries.extend(traceql_literals(&read("tests/tests/grafana_tempo_datasource.rs")));
    queries.extend(traceql_edges());
    queries.sort();
    queries.dedup();
    for (index, query) in queries.iter().enumerate() {
        traceql.write(&format!("{index:03}"), query.as_bytes());
    }

    let mut params = Corpus::new(fuzz, "jaeger_params");
    let mut requests = request_literals(&read("tests/tests/jaeger_clients.rs"));
    requests.extend(request_literals(&read("tests/tests/grafana_tempo_datasource.rs")));
    requests.extend(PARAMETER_EDGES.iter().map(|request| (*request).to_owned()));
    requests.sort();
    requests.dedup();
    for (index, request) in requests.iter().enumerate() {
        params.write(&format!("{index:03}"), request.as_bytes());
    }
}

/// The TraceQL queries a test file holds: raw strings `r#"{…}"#` and plain strings `"{ … }"` (not format
/// strings), unescaped.
fn traceql_literals(source: &str) -> Vec<String> {
    let mut queries = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("r#\"{") {
        let body = &rest[start + 3..];
        let end = body.find("\"#").expect("a raw string ends");
        queries.push(body[..end].to_owned());
        rest = &body[end..];
    }
    for line in source.lines() {
        let mut rest = line;
        while let Some(start) = rest.find("\"{") {
            let body = &rest[start + 1..];
            let mut text = String::new();
            let mut chars = body.chars();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some('n') => text.push('\n'),
                        Some(other) => text.push(other),
                        None => break,
                    },
                    other => text.push(other),
                }
            }
            rest = chars.as_str();
            if closed && !text.contains("{{") && !text.contains("{}}") {
                queries.push(text);
            }
        }
    }
    queries
}

/// Queries at the limits: nesting just within and past the depth limit, a length just within it, large
/// regular expressions, every operator and value form.
fn traceql_edges() -> Vec<String> {
    use tracepost_query::traceql::DEFAULT_MAX_DEPTH;
    let nested = |depth: usize| format!("{{ {}name = \"a\"{} }}", "(".repeat(depth), ")".repeat(depth));
    vec![
        nested(DEFAULT_MAX_DEPTH),
        nested(DEFAULT_MAX_DEPTH + 1),
        format!("{{{}", "(".repeat(100)),
        format!("{{ name = \"{}\" }}", "x".repeat(2000)),
        r#"{ name =~ "(\\w{100}){100}" }"#.to_owned(),
        r#"{ resource.service.name =~ "(cart|checkout)-v[0-9]+" && span.x !~ "\\d+\\.\\p{Greek}" }"#.to_owned(),
        "{ span.a = 1 || span.b = -2.5e3 || span.c = true || .d != \"\\u00e9\\x41\\U0001F600\" }".to_owned(),
        "{ duration >= 1h30m && duration < 1.5s && traceDuration > 250µs && duration <= 9223372036854775807ns }"
            .to_owned(),
        "{ kind = unspecified && status != unset && span:kind = producer && span:status = ok }".to_owned(),
        "{ span.\"odd key\" = `raw \\d` && resource.\"service.name\" = \"harbor-core\" }".to_owned(),
        "{ resource.service.name = \"a\\u0000b\" || name = \"with\\x00nul\" }".to_owned(),
        "{ .http.response.status_code >= 500 && .http.response.status_code < 600 }".to_owned(),
    ]
}

/// Request URLs a test file holds (`"/api/…?…"`, continued lines joined), as `SEGMENT?QUERY` inputs: the
/// path's trace ID or tag name, then its query string; `format!` placeholders become plausible values.
fn request_literals(source: &str) -> Vec<String> {
    let mut requests = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("\"/api/") {
        let body = &rest[start + 1..];
        let end = body.find('"').expect("a string ends");
        let mut url = body[..end].to_owned();
        rest = &body[end..];
        while let Some(continued) = url.find("\\\n") {
            let tail = url[continued + 2..].trim_start().to_owned();
            url.truncate(continued);
            url.push_str(&tail);
        }
        for (placeholder, value) in [
            ("{end}", "1754038800000000"),
            ("{start}", "1754035200000000"),
            ("{end_ms}", "1754038800000"),
            ("{start_ms}", "1754035200000"),
            ("{min}", "2025-08-01T08:50:00Z"),
            ("{max}", "2025-08-01T09:01:00.123456789+00:00"),
            (
                "{window}",
                "query.startTimeMin=2025-08-01T08:00:00Z&query.startTimeMax=2025-08-01T09:00:00Z",
            ),
            ("{LINKERD_START}", "1754035200"),
            ("{LINKERD_END}", "1754038800"),
            ("{missing}", "00000000000000000000000000000bad"),
            ("{trace_id}", "0af7651916cd43dd8448eb211c80319c"),
            ("{}", "00f067aa0ba902b7"),
        ] {
            url = url.replace(placeholder, value);
        }
        if url.contains(['{', '}']) {
            continue;
        }
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let segments: Vec<&str> = path.split('/').collect();
        let segment = match segments.iter().position(|segment| *segment == "tag") {
            Some(tag) => segments.get(tag + 1).copied().unwrap_or_default(),
            None => segments
                .last()
                .copied()
                .filter(|last| last.chars().all(|c| c.is_ascii_hexdigit()))
                .unwrap_or_default(),
        };
        requests.push(format!("{segment}?{query}"));
    }
    requests
}

/// Parameters at the edges of each parser: Grafana's and the Jaeger UI's exact requests, Go durations with
/// fractions, several units and overflow, RFC 3339 offsets, both tag forms, the caps.
const PARAMETER_EDGES: &[&str] = &[
    "?end=&limit=20&q=%7B%7D&spss=3&start=",
    "?end=1754038800&limit=20&q=%7Bresource.service.name%3D%22frontend%22%7D&spss=3&start=1754035200",
    "?tags=service.name%3Dfrontend+http.status_code%3D%22500%22+error&minDuration=1.5ms&maxDuration=2h45m30.5s",
    "?service=frontend&tag=error:true&tag=http.method:GET&tags=error%3Dtrue+k%3D%22a+%5C%22b%5C%22%22&limit=1500",
    "?service=a%00b&operation=GET+%2F&minDuration=-1ns&maxDuration=9223372036854775807ns&raw=T&limit=1501",
    "?service=x&start=-9223372036854775808&end=9223372036854775807&lookback=custom",
    "?query.serviceName=cart&query.startTimeMin=2025-08-01T08:00:00.5%2B02:00&query.startTimeMax=2025-08-01T09:00:00z\
     &query.durationMin=1h30m&query.durationMax=2562047h47m16.854775807s&query.searchDepth=20&query.attributes=%7B%22a%22%3A%22b%22%7D",
    "?query.service_name=cart&query.start_time_min=2025-02-31T23:59:60Z&query.start_time_max=9999-12-31T23:59:59.999999999Z",
    "0af7651916cd43dd8448eb211c80319c?start=1754035200&end=1754038800",
    "00000000000000000000000000000001?start=0&end=0",
    "span.http.response.status_code?q=%7B%20span.x%20%3D%20%22y%22%20%7D&limit=5&start=1754035200",
    "resource.service.name?q=%7Bresource.service.name%3D&scope=resource",
    "?scope=intrinsic&limit=0&q=%7B%28%28%28",
    "?minDuration=.5us&maxDuration=1.000000001s&spss=100&limit=0x10",
];

struct Corpus {
    dir: PathBuf,
}

impl Corpus {
    fn new(fuzz: &Path, target: &str) -> Self {
        let dir = fuzz.join("corpus").join(target);
        fs::create_dir_all(&dir).expect("corpus directory");
        Self { dir }
    }

    fn write(&mut self, name: &str, bytes: &[u8]) {
        let path = self.dir.join(format!("seed-{name}"));
        fs::write(&path, bytes).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// An attribute nested exactly `levels` messages deep, counted as `tracepost_storage::limits` counts (arrays,
/// and one key-value list for odd levels).
fn deep_attribute(levels: u32) -> KeyValue {
    let mut remaining = levels - 2;
    let mut value = AnyValue {
        value: Some(any_value::Value::StringValue("leaf".into())),
    };
    if remaining % 2 == 1 {
        value = AnyValue {
            value: Some(any_value::Value::KvlistValue(KeyValueList {
                values: vec![KeyValue {
                    value: Some(value),
                    ..string("m", "")
                }],
            })),
        };
        remaining -= 3;
    }
    while remaining > 0 {
        value = AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![value] })),
        };
        remaining -= 2;
    }
    KeyValue {
        value: Some(value),
        ..string("deep", "")
    }
}

fn span(name: &str) -> Span {
    Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        name: name.into(),
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_001_000_000,
        ..Default::default()
    }
}

fn request(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A span and its event carrying an attribute nested `levels` deep, and the resource too.
fn request_with(attribute: KeyValue) -> ExportTraceServiceRequest {
    let mut span = span("deep");
    span.attributes = vec![string("kept", "yes"), attribute.clone()];
    span.events = vec![span::Event {
        name: "event".into(),
        attributes: vec![attribute.clone()],
        ..Default::default()
    }];
    request(vec![string("service.name", "svc"), attribute], vec![span])
}

/// Spans each validation rule rejects, a name with NUL, and an HTTP 5xx server span.
fn edges() -> ExportTraceServiceRequest {
    let mut spans = vec![span("ok\0nul")];
    let mut short_trace = span("short trace id");
    short_trace.trace_id = vec![1; 15];
    let mut zero_span = span("zero span id");
    zero_span.span_id = vec![0; 8];
    let mut no_start = span("no start");
    no_start.start_time_unix_nano = 0;
    let mut backwards = span("ends before it starts");
    backwards.end_time_unix_nano = 1;
    let mut server = span("GET /users/42");
    server.kind = 2;
    server.parent_span_id = vec![3; 8];
    server.attributes = vec![string("http.response.status_code", "503")];
    spans.extend([short_trace, zero_span, no_start, backwards, server]);
    request(
        vec![
            string("service.name", "linkerd-proxy"),
            string("k8s.cluster.name", "apps"),
        ],
        spans,
    )
}
