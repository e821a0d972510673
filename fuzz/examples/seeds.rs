//! Writes the fuzz targets' seed corpora, `fuzz/corpus/<target>/seed-*`, from the repository's fixtures
//! (`collector/testdata/*.otlp.json`) and a few hand-built requests at the edges the collector cares about
//! (attributes nested just within and just past the limit, invalid IDs, NUL in names):
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
}

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
