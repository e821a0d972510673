//! The stored trace the golden-file tests render (`testdata/jaeger_trace.json`, `testdata/otlp_trace.json`).
//!
//! Six spans over a 64-bit trace ID (high 8 bytes zero):
//!
//! | span | span ID | parent | resource | scope | kind | status |
//! |---|---|---|---|---|---|---|
//! | A | 0102030405060708 | – | cart (11) | http 1.2.3 | server | ERROR "upstream failed" |
//! | B | 1111111111111111 | A | db-proxy (22) | sqlx | client | OK |
//! | C | 00000000000000ff | A | no attributes (33) | – | internal | UNSET "note" |
//! | D | 2222222222222222 | B | cart (11) | version 2.0 only | producer | ERROR |
//! | E | 3333333333333333 | B | missing (55), "orphan" | – | unspecified | UNSET |
//! | F | 4444444444444444 | D | cart (11) | http 1.2.3 | consumer | UNSET |
//!
//! A carries every attribute type, three events (named, unnamed, with its own `event` attribute), two links
//! (a plain one and an `opentracing.ref_type=child_of` one to a 64-bit trace), a trace state, flags and dropped
//! counts. B's stored name differs from its original name and it links to its parent (which turns the parent
//! reference into FOLLOWS_FROM); C links to its parent as `child_of` (no duplicate reference).

use std::collections::HashMap;

use tracepost_storage::model::{
    AnyValue, ArrayValue, Event, KeyValue, KeyValueList, Link, Resource, Scope, Span, SpanDetail, SpanId, SpanKind,
    StatusCode, StoredResource, StoredSpan, TraceId, Value, NO_SERVICE_NAME,
};
use tracepost_storage::StoredTrace;

pub(crate) const TRACE_ID: TraceId = TraceId([0, 0, 0, 0, 0, 0, 0, 0, 0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18]);
pub(crate) const CART_RESOURCE: i64 = 11;
const DB_RESOURCE: i64 = 22;
const BARE_RESOURCE: i64 = 33;
const MISSING_RESOURCE: i64 = 55;

const SPAN_A: SpanId = SpanId([1, 2, 3, 4, 5, 6, 7, 8]);
const SPAN_B: SpanId = SpanId([0x11; 8]);
const SPAN_C: SpanId = SpanId([0, 0, 0, 0, 0, 0, 0, 0xff]);
const SPAN_D: SpanId = SpanId([0x22; 8]);
const SPAN_E: SpanId = SpanId([0x33; 8]);
const SPAN_F: SpanId = SpanId([0x44; 8]);

fn any(value: Value) -> AnyValue {
    AnyValue { value: Some(value) }
}

fn http_scope() -> Scope {
    Scope {
        name: "io.opentelemetry.http".to_owned(),
        version: "1.2.3".to_owned(),
        attributes: vec![KeyValue::string("library.language", "rust")],
        dropped_attributes_count: 0,
        schema_url: "https://opentelemetry.io/schemas/1.21.0".to_owned(),
    }
}

fn cart_resource() -> StoredResource {
    StoredResource {
        id: CART_RESOURCE,
        service_name: "cart".to_owned(),
        cluster: Some("prod-eu".to_owned()),
        resource: Resource {
            attributes: vec![
                KeyValue::string("service.name", "cart"),
                KeyValue::string("host.name", "node-1"),
                KeyValue::string("k8s.cluster.name", "prod-eu"),
            ],
            dropped_attributes_count: 1,
            schema_url: "https://opentelemetry.io/schemas/1.24.0".to_owned(),
        },
    }
}

fn db_resource() -> StoredResource {
    StoredResource {
        id: DB_RESOURCE,
        service_name: "db-proxy".to_owned(),
        cluster: None,
        resource: Resource {
            attributes: vec![
                KeyValue::new("process.pid", Value::Int(4242)),
                KeyValue::string("service.name", "db-proxy"),
            ],
            dropped_attributes_count: 0,
            schema_url: String::new(),
        },
    }
}

fn bare_resource() -> StoredResource {
    StoredResource {
        id: BARE_RESOURCE,
        service_name: NO_SERVICE_NAME.to_owned(),
        cluster: None,
        resource: Resource::default(),
    }
}

fn span_a() -> Span {
    let attributes = vec![
        KeyValue::string("http.route", "/cart"),
        KeyValue::new("cached", Value::Bool(false)),
        KeyValue::new("http.response.status_code", Value::Int(500)),
        KeyValue::new("big", Value::Int(9_223_372_036_854_775_222)),
        KeyValue::new("max.safe", Value::Int(9_007_199_254_740_991)),
        KeyValue::new("min.unsafe", Value::Int(-9_007_199_254_740_992)),
        KeyValue::new("ratio", Value::Double(0.25)),
        KeyValue::new("blob", Value::Bytes(vec![0x00, 0x00, 0x30, 0x39])),
        KeyValue::new(
            "tags.list",
            Value::Array(ArrayValue {
                values: vec![
                    any(Value::Str("a".to_owned())),
                    any(Value::Int(1)),
                    any(Value::Bool(true)),
                    any(Value::Double(1.5)),
                    any(Value::Double(2.0)),
                    any(Value::Bytes(vec![1, 2])),
                ],
            }),
        ),
        KeyValue::new(
            "labels",
            Value::Map(KeyValueList {
                values: vec![
                    KeyValue::string("zeta", "z<&>"),
                    KeyValue::new("alpha", Value::Int(2)),
                    KeyValue::new(
                        "nested",
                        Value::Array(ArrayValue {
                            values: vec![any(Value::Double(1e21)), any(Value::Double(1e-7))],
                        }),
                    ),
                    KeyValue {
                        key: "empty".to_owned(),
                        value: None,
                    },
                ],
            }),
        ),
        KeyValue {
            key: "empty".to_owned(),
            value: None,
        },
        KeyValue {
            key: "empty.any".to_owned(),
            value: Some(AnyValue { value: None }),
        },
    ];
    let events = vec![
        Event {
            time_unix_nano: 1_706_678_909_209_800_123,
            name: "exception".to_owned(),
            attributes: vec![
                KeyValue::string("exception.message", "boom"),
                KeyValue::new("exception.escaped", Value::Bool(true)),
            ],
            dropped_attributes_count: 0,
        },
        Event {
            time_unix_nano: 1_706_678_909_209_900_999,
            name: String::new(),
            attributes: vec![KeyValue::new("retry", Value::Int(3))],
            dropped_attributes_count: 0,
        },
        Event {
            time_unix_nano: 1_706_678_909_210_000_000,
            name: "checkpoint".to_owned(),
            attributes: vec![
                KeyValue::string("event", "custom"),
                KeyValue::new("step", Value::Int(7)),
            ],
            dropped_attributes_count: 1,
        },
    ];
    let links = vec![
        Link {
            trace_id: vec![
                0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c,
            ],
            span_id: vec![0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31],
            trace_state: "x=1".to_owned(),
            attributes: vec![KeyValue::string("peer", "batch")],
            dropped_attributes_count: 0,
            flags: 1,
        },
        Link {
            trace_id: [[0u8; 8], [0x11; 8]].concat(),
            span_id: vec![0x22; 8],
            trace_state: String::new(),
            attributes: vec![KeyValue::string("opentracing.ref_type", "child_of")],
            dropped_attributes_count: 0,
            flags: 0,
        },
    ];
    Span {
        trace_id: TRACE_ID,
        span_id: SPAN_A,
        parent_span_id: None,
        name: "GET /cart".to_owned(),
        kind: SpanKind::Server,
        start_time_unix_nano: 1_706_678_909_209_712_345,
        status_code: StatusCode::Error,
        detail: SpanDetail {
            attributes,
            dropped_attributes_count: 2,
            events,
            dropped_events_count: 1,
            links,
            dropped_links_count: 3,
            trace_state: "congo=t61rcWkgMzE".to_owned(),
            flags: 1,
            status_message: "upstream failed".to_owned(),
            scope: Some(http_scope()),
            original_name: None,
            end_time_unix_nano: 1_706_678_909_333_169_000,
        },
    }
}

fn span_b() -> Span {
    Span {
        trace_id: TRACE_ID,
        span_id: SPAN_B,
        parent_span_id: Some(SPAN_A),
        name: "SELECT cart".to_owned(),
        kind: SpanKind::Client,
        start_time_unix_nano: 1_706_678_909_210_000_999,
        status_code: StatusCode::Ok,
        detail: SpanDetail {
            attributes: vec![KeyValue::string("db.system", "postgresql")],
            links: vec![Link {
                trace_id: TRACE_ID.0.to_vec(),
                span_id: SPAN_A.0.to_vec(),
                ..Default::default()
            }],
            scope: Some(Scope {
                name: "sqlx".to_owned(),
                ..Default::default()
            }),
            original_name: Some("SELECT\u{0}cart".to_owned()),
            end_time_unix_nano: 1_706_678_909_210_100_998,
            ..Default::default()
        },
    }
}

fn span_c() -> Span {
    Span {
        trace_id: TRACE_ID,
        span_id: SPAN_C,
        parent_span_id: Some(SPAN_A),
        name: "compute".to_owned(),
        kind: SpanKind::Internal,
        start_time_unix_nano: 1_706_678_909_211_000_000,
        status_code: StatusCode::Unset,
        detail: SpanDetail {
            links: vec![Link {
                trace_id: TRACE_ID.0.to_vec(),
                span_id: SPAN_A.0.to_vec(),
                attributes: vec![KeyValue::string("opentracing.ref_type", "child_of")],
                ..Default::default()
            }],
            flags: 0x101,
            status_message: "note".to_owned(),
            end_time_unix_nano: 1_706_678_909_211_000_999,
            ..Default::default()
        },
    }
}

fn span_d() -> Span {
    Span {
        trace_id: TRACE_ID,
        span_id: SPAN_D,
        parent_span_id: Some(SPAN_B),
        name: "publish".to_owned(),
        kind: SpanKind::Producer,
        start_time_unix_nano: 1_706_678_909_212_345_678,
        status_code: StatusCode::Error,
        detail: SpanDetail {
            scope: Some(Scope {
                version: "2.0".to_owned(),
                ..Default::default()
            }),
            end_time_unix_nano: 1_706_678_909_217_345_678,
            ..Default::default()
        },
    }
}

fn span_e() -> Span {
    Span {
        trace_id: TRACE_ID,
        span_id: SPAN_E,
        parent_span_id: Some(SPAN_B),
        name: "orphaned".to_owned(),
        kind: SpanKind::Unspecified,
        start_time_unix_nano: 1_706_678_909_213_000_500,
        status_code: StatusCode::Unset,
        detail: SpanDetail {
            events: vec![Event {
                time_unix_nano: 1_706_678_909_213_500_000,
                ..Default::default()
            }],
            end_time_unix_nano: 1_706_678_909_214_000_499,
            ..Default::default()
        },
    }
}

fn span_f() -> Span {
    Span {
        trace_id: TRACE_ID,
        span_id: SPAN_F,
        parent_span_id: Some(SPAN_D),
        name: "consume".to_owned(),
        kind: SpanKind::Consumer,
        start_time_unix_nano: 1_706_678_909_215_000_000,
        status_code: StatusCode::Unset,
        detail: SpanDetail {
            attributes: vec![KeyValue::string("messaging.system", "kafka")],
            scope: Some(http_scope()),
            end_time_unix_nano: 1_706_678_909_216_000_000,
            ..Default::default()
        },
    }
}

fn stored(span: Span, resource_id: i64, service_name: &str, cluster: Option<&str>) -> StoredSpan {
    StoredSpan {
        span,
        resource_id,
        service_name: service_name.to_owned(),
        cluster: cluster.map(str::to_owned),
    }
}

/// The fixture trace described in the module header.
pub(crate) fn trace() -> StoredTrace {
    let resources: HashMap<i64, StoredResource> = [cart_resource(), db_resource(), bare_resource()]
        .into_iter()
        .map(|resource| (resource.id, resource))
        .collect();
    StoredTrace {
        trace_id: TRACE_ID,
        spans: vec![
            stored(span_a(), CART_RESOURCE, "cart", Some("prod-eu")),
            stored(span_b(), DB_RESOURCE, "db-proxy", None),
            stored(span_c(), BARE_RESOURCE, NO_SERVICE_NAME, None),
            stored(span_d(), CART_RESOURCE, "cart", Some("prod-eu")),
            stored(span_e(), MISSING_RESOURCE, "orphan", None),
            stored(span_f(), CART_RESOURCE, "cart", Some("prod-eu")),
        ],
        resources,
        truncated: false,
    }
}
