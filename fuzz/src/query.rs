//! What the query targets evaluate against: a few stored traces with the attributes Linkerd and the SDKs send
//! (strings only, typed values, arrays, bytes, NUL in a name), the service list they imply, and the check that
//! a search's storage filter keeps every span the query matches.

use std::collections::HashMap;
use std::sync::OnceLock;

use tracepost_storage::copy::sanitize_text;
use tracepost_storage::limits::label_column;
use tracepost_storage::model::{
    AnyValue, ArrayValue, Event, KeyValue, Resource, Span, SpanDetail, SpanId, SpanKind, StatusCode, StoredResource,
    StoredSpan, TraceId, Value,
};
use tracepost_storage::{SpanFilter, StoredTrace};

fn resource(id: i64, service: &str, attributes: Vec<KeyValue>) -> StoredResource {
    let mut all = vec![KeyValue::string("service.name", service)];
    all.extend(attributes);
    StoredResource {
        id,
        service_name: service.to_owned(),
        cluster: Some("apps".into()),
        resource: Resource {
            attributes: all,
            ..Resource::default()
        },
    }
}

struct SpanSpec<'a> {
    name: &'a str,
    resource: &'a StoredResource,
    parent: Option<u8>,
    kind: SpanKind,
    status: StatusCode,
    start: u64,
    duration: u64,
    attributes: Vec<KeyValue>,
}

fn span(trace: u8, id: u8, spec: SpanSpec<'_>) -> StoredSpan {
    let stored_name = sanitize_text(spec.name).into_owned();
    let original_name = (stored_name != spec.name).then(|| spec.name.to_owned());
    StoredSpan {
        span: Span {
            trace_id: TraceId([trace; 16]),
            span_id: SpanId([id; 8]),
            parent_span_id: spec.parent.map(|parent| SpanId([parent; 8])),
            name: stored_name,
            kind: spec.kind,
            start_time_unix_nano: spec.start,
            status_code: spec.status,
            detail: SpanDetail {
                attributes: spec.attributes,
                end_time_unix_nano: spec.start + spec.duration,
                original_name,
                events: vec![Event {
                    name: "event".into(),
                    attributes: vec![KeyValue::string("event.attr", "x")],
                    ..Event::default()
                }],
                ..SpanDetail::default()
            },
        },
        resource_id: spec.resource.id,
        service_name: spec.resource.service_name.clone(),
        cluster: spec.resource.cluster.clone(),
    }
}

fn trace(id: u8, resources: &[&StoredResource], spans: Vec<StoredSpan>) -> StoredTrace {
    StoredTrace {
        trace_id: TraceId([id; 16]),
        spans,
        resources: resources
            .iter()
            .map(|resource| (resource.id, (*resource).clone()))
            .collect::<HashMap<_, _>>(),
        truncated: false,
    }
}

/// The sample traces: a Linkerd hop (every attribute a string), an SDK trace with typed attributes, and one
/// whose root has not arrived, with a NUL in a span name.
pub fn traces() -> &'static [StoredTrace] {
    static TRACES: OnceLock<Vec<StoredTrace>> = OnceLock::new();
    TRACES.get_or_init(|| {
        let core = resource(
            1,
            "harbor-core",
            vec![
                KeyValue::string("k8s.pod.ip", "10.42.1.7"),
                KeyValue::string("direction", "resource-level"),
            ],
        );
        let jobs = resource(
            2,
            "harbor-jobservice",
            vec![KeyValue::string("k8s.namespace.name", "harbor")],
        );
        let frontend = resource(
            3,
            "frontend",
            vec![
                KeyValue::new("host.cpus", Value::Int(8)),
                KeyValue::new("ratio", Value::Double(0.25)),
            ],
        );
        let odd = resource(
            4,
            "odd\u{fffd}svc",
            vec![KeyValue::new("raw", Value::Bytes(vec![0, 1, 255]))],
        );
        let linkerd = trace(
            1,
            &[&core, &jobs],
            vec![
                span(
                    1,
                    1,
                    SpanSpec {
                        name: "/api/v2.0/projects/42/repositories",
                        resource: &core,
                        parent: None,
                        kind: SpanKind::Server,
                        status: StatusCode::Unset,
                        start: 1_000,
                        duration: 45_000_000,
                        attributes: vec![
                            KeyValue::string("direction", "inbound"),
                            KeyValue::string("http.response.status_code", "503"),
                            KeyValue::string("server.port", "80"),
                            KeyValue::string("tls", "true"),
                        ],
                    },
                ),
                span(
                    1,
                    2,
                    SpanSpec {
                        name: "GET /jobs",
                        resource: &jobs,
                        parent: Some(1),
                        kind: SpanKind::Client,
                        status: StatusCode::Error,
                        start: 2_000_000,
                        duration: 3_000_000,
                        attributes: vec![KeyValue::string("direction", "outbound")],
                    },
                ),
            ],
        );
        let sdk = trace(
            2,
            &[&frontend],
            vec![
                span(
                    2,
                    3,
                    SpanSpec {
                        name: "GET /cart",
                        resource: &frontend,
                        parent: None,
                        kind: SpanKind::Server,
                        status: StatusCode::Ok,
                        start: 1_700_000_000_000_000_000,
                        duration: 1_500_000_000,
                        attributes: vec![
                            KeyValue::new("http.response.status_code", Value::Int(200)),
                            KeyValue::new("ratio", Value::Double(0.5)),
                            KeyValue::new("nan", Value::Double(f64::NAN)),
                            KeyValue::new("cached", Value::Bool(false)),
                            KeyValue::new(
                                "list",
                                Value::Array(ArrayValue {
                                    values: vec![AnyValue {
                                        value: Some(Value::Str("a".into())),
                                    }],
                                }),
                            ),
                            KeyValue::string("", "empty key"),
                            KeyValue::string("odd key", "é\u{0}"),
                        ],
                    },
                ),
                span(
                    2,
                    4,
                    SpanSpec {
                        name: "SELECT",
                        resource: &frontend,
                        parent: Some(3),
                        kind: SpanKind::Internal,
                        status: StatusCode::Unset,
                        start: 1_700_000_000_100_000_000,
                        duration: 0,
                        attributes: vec![KeyValue::new("db.rows", Value::Int(i64::MIN))],
                    },
                ),
            ],
        );
        let orphan = trace(
            3,
            &[&odd],
            vec![span(
                3,
                5,
                SpanSpec {
                    name: "with\u{0}nul",
                    resource: &odd,
                    parent: Some(9),
                    kind: SpanKind::Unspecified,
                    status: StatusCode::Unset,
                    start: 0,
                    duration: u64::MAX,
                    attributes: Vec::new(),
                },
            )],
        );
        vec![linkerd, sdk, orphan]
    })
}

/// The service list the sample implies (as `PostgresReader::services` would list it).
pub fn services() -> &'static [String] {
    static SERVICES: OnceLock<Vec<String>> = OnceLock::new();
    SERVICES.get_or_init(|| {
        let mut services: Vec<String> = traces()
            .iter()
            .flat_map(|trace| trace.spans.iter().map(|span| span.service_name.clone()))
            .collect();
        services.sort();
        services.dedup();
        services
    })
}

/// A span the query matches is among the candidates storage selects with `filter` (services, operation,
/// duration bounds, as `PostgresReader::find_traces_by_span` applies them), so a search never misses it.
pub fn assert_candidate(filter: &SpanFilter, span: &StoredSpan) {
    if let Some(services) = &filter.services {
        assert!(
            services
                .iter()
                .any(|service| label_column(service) == span.service_name.as_str()),
            "{filter:?} leaves out the matching span's service {:?}",
            span.service_name
        );
    }
    if let Some(operation) = &filter.operation {
        assert_eq!(
            sanitize_text(operation),
            span.span.name.as_str(),
            "{filter:?} leaves out the matching span"
        );
    }
    let duration = i64::try_from(span.span.duration_nanos()).unwrap_or(i64::MAX);
    assert!(
        filter.min_duration_ns.is_none_or(|min| duration >= min)
            && filter.max_duration_ns.is_none_or(|max| duration <= max),
        "{filter:?} leaves out the matching span of {duration} ns"
    );
}
