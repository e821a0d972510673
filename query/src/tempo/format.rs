//! Tempo's wire forms: the trace by ID as protobuf and as Tempo's JSON, and the search and tag responses.
//!
//! Tempo's JSON is gogo-jsonpb of its protobuf messages, which differs from OTLP/JSON (`otlp_json`): trace,
//! span and link IDs are **base64**; enums are names (`"SPAN_KIND_SERVER"`, `"STATUS_CODE_ERROR"`); 64-bit
//! integers are strings; scalars equal to their default and empty lists are omitted, while present messages
//! are written even when empty (`"status": {}`); a oneof (`AnyValue`) is written whatever its value.

use base64::Engine as _;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, TracesData};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::otlp_json::encode_protobuf;

/// The body of `GET /api/v2/traces/{id}` as protobuf: `TraceByIDResponse { Trace trace = 1; }`, where `Trace`
/// is wire-identical to OTLP `TracesData`. Metrics (2) are left out and status (3) is COMPLETE, its default.
pub(crate) fn trace_by_id_response_protobuf(data: &TracesData) -> Vec<u8> {
    let trace = encode_protobuf(data);
    let mut out = Vec::with_capacity(trace.len() + 11);
    // Field 1, wire type 2 (length-delimited).
    out.push(0x0a);
    prost::encoding::encode_varint(trace.len() as u64, &mut out);
    out.extend_from_slice(&trace);
    out
}

/// The body of `GET /api/traces/{id}` as protobuf: the `Trace` itself, i.e. the `TracesData` bytes.
pub(crate) fn trace_protobuf(data: &TracesData) -> Vec<u8> {
    encode_protobuf(data)
}

/// `Trace` in Tempo's JSON: `{"resourceSpans": [...]}` (the v1 body; v2 wraps it as `{"trace": …}`).
pub(crate) fn trace_json(data: &TracesData) -> Value {
    json!({ "resourceSpans": data.resource_spans.iter().map(resource_spans).collect::<Vec<_>>() })
}

/// A JSON object that leaves default values out.
#[derive(Default)]
struct Object(Map<String, Value>);

impl Object {
    fn put(mut self, key: &str, value: Value) -> Self {
        self.0.insert(key.to_owned(), value);
        self
    }

    fn string(self, key: &str, value: &str) -> Self {
        if value.is_empty() {
            return self;
        }
        self.put(key, Value::from(value))
    }

    fn bytes(self, key: &str, value: &[u8]) -> Self {
        if value.is_empty() {
            return self;
        }
        self.put(key, Value::from(base64_encode(value)))
    }

    fn count(self, key: &str, value: u32) -> Self {
        if value == 0 {
            return self;
        }
        self.put(key, Value::from(value))
    }

    /// A uint64 as a decimal string.
    fn long(self, key: &str, value: u64) -> Self {
        if value == 0 {
            return self;
        }
        self.put(key, Value::from(value.to_string()))
    }

    fn list<T>(self, key: &str, items: &[T], view: fn(&T) -> Value) -> Self {
        if items.is_empty() {
            return self;
        }
        self.put(key, Value::Array(items.iter().map(view).collect()))
    }

    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn resource_spans(group: &ResourceSpans) -> Value {
    let mut object = Object::default();
    if let Some(resource) = &group.resource {
        object = object.put("resource", resource_json(resource));
    }
    object
        .list("scopeSpans", &group.scope_spans, scope_spans)
        .string("schemaUrl", &group.schema_url)
        .done()
}

fn resource_json(resource: &Resource) -> Value {
    Object::default()
        .list("attributes", &resource.attributes, key_value)
        .count("droppedAttributesCount", resource.dropped_attributes_count)
        .done()
}

fn scope_spans(group: &ScopeSpans) -> Value {
    let mut object = Object::default();
    if let Some(scope) = &group.scope {
        object = object.put("scope", scope_json(scope));
    }
    object
        .list("spans", &group.spans, span_json)
        .string("schemaUrl", &group.schema_url)
        .done()
}

fn scope_json(scope: &InstrumentationScope) -> Value {
    Object::default()
        .string("name", &scope.name)
        .string("version", &scope.version)
        .list("attributes", &scope.attributes, key_value)
        .count("droppedAttributesCount", scope.dropped_attributes_count)
        .done()
}

/// OTLP's `Span.SpanKind` names.
fn kind_name(kind: i32) -> Option<&'static str> {
    match kind {
        1 => Some("SPAN_KIND_INTERNAL"),
        2 => Some("SPAN_KIND_SERVER"),
        3 => Some("SPAN_KIND_CLIENT"),
        4 => Some("SPAN_KIND_PRODUCER"),
        5 => Some("SPAN_KIND_CONSUMER"),
        _ => None,
    }
}

/// OTLP's `Status.StatusCode` names.
fn status_code_name(code: i32) -> Option<&'static str> {
    match code {
        1 => Some("STATUS_CODE_OK"),
        2 => Some("STATUS_CODE_ERROR"),
        _ => None,
    }
}

fn span_json(span: &Span) -> Value {
    let mut object = Object::default()
        .bytes("traceId", &span.trace_id)
        .bytes("spanId", &span.span_id)
        .string("traceState", &span.trace_state)
        .bytes("parentSpanId", &span.parent_span_id)
        .count("flags", span.flags)
        .string("name", &span.name);
    if let Some(kind) = kind_name(span.kind) {
        object = object.put("kind", Value::from(kind));
    }
    object = object
        .long("startTimeUnixNano", span.start_time_unix_nano)
        .long("endTimeUnixNano", span.end_time_unix_nano)
        .list("attributes", &span.attributes, key_value)
        .count("droppedAttributesCount", span.dropped_attributes_count)
        .list("events", &span.events, event_json)
        .count("droppedEventsCount", span.dropped_events_count)
        .list("links", &span.links, link_json)
        .count("droppedLinksCount", span.dropped_links_count);
    if let Some(status) = &span.status {
        object = object.put("status", status_json(status));
    }
    object.done()
}

fn status_json(status: &Status) -> Value {
    let mut object = Object::default().string("message", &status.message);
    if let Some(code) = status_code_name(status.code) {
        object = object.put("code", Value::from(code));
    }
    object.done()
}

fn event_json(event: &Event) -> Value {
    Object::default()
        .long("timeUnixNano", event.time_unix_nano)
        .string("name", &event.name)
        .list("attributes", &event.attributes, key_value)
        .count("droppedAttributesCount", event.dropped_attributes_count)
        .done()
}

fn link_json(link: &Link) -> Value {
    Object::default()
        .bytes("traceId", &link.trace_id)
        .bytes("spanId", &link.span_id)
        .string("traceState", &link.trace_state)
        .list("attributes", &link.attributes, key_value)
        .count("droppedAttributesCount", link.dropped_attributes_count)
        .count("flags", link.flags)
        .done()
}

/// A key-value; the key is always written (strict decoders require it).
fn key_value(attribute: &KeyValue) -> Value {
    let mut object = Object::default().put("key", Value::from(attribute.key.as_str()));
    if let Some(value) = &attribute.value {
        object = object.put("value", any_value(value));
    }
    object.done()
}

fn any_value(value: &AnyValue) -> Value {
    let Some(value) = &value.value else {
        return json!({});
    };
    match value {
        any_value::Value::StringValue(text) => json!({ "stringValue": text }),
        any_value::Value::BoolValue(flag) => json!({ "boolValue": flag }),
        any_value::Value::IntValue(number) => json!({ "intValue": number.to_string() }),
        any_value::Value::DoubleValue(number) => json!({ "doubleValue": double(*number) }),
        any_value::Value::BytesValue(bytes) => json!({ "bytesValue": base64_encode(bytes) }),
        any_value::Value::ArrayValue(array) => {
            json!({ "arrayValue": { "values": array.values.iter().map(any_value).collect::<Vec<_>>() } })
        }
        any_value::Value::KvlistValue(list) => {
            json!({ "kvlistValue": { "values": list.values.iter().map(key_value).collect::<Vec<_>>() } })
        }
        any_value::Value::StringValueStrindex(index) => json!({ "stringValueStrindex": index }),
    }
}

/// A double as JSON: a number, or jsonpb's strings for the non-finite values.
fn double(number: f64) -> Value {
    if number.is_nan() {
        Value::from("NaN")
    } else if number.is_infinite() {
        Value::from(if number > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        Value::from(number)
    }
}

// === search ===

/// `tempopb.SearchResponse`, restricted to the fields every Grafana version knows (its Go client decodes
/// strictly: an unknown field is an error). Zero values are left out.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct SearchResponse {
    pub(crate) traces: Vec<TraceSearchMetadata>,
    pub(crate) metrics: SearchMetrics,
}

/// One trace of a search result.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TraceSearchMetadata {
    /// Hex, leading zeros trimmed.
    #[serde(rename = "traceID")]
    pub(crate) trace_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) root_service_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) root_trace_name: String,
    /// uint64 as a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) start_time_unix_nano: Option<String>,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) duration_ms: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) span_sets: Vec<SpanSet>,
}

/// The matching spans of a trace: at most `spss` of them, and how many matched in all.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct SpanSet {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) spans: Vec<SearchSpan>,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) matched: u32,
}

/// One span of a span set; its attributes are those the query compared.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SearchSpan {
    /// 16 hex characters.
    #[serde(rename = "spanID")]
    pub(crate) span_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) start_time_unix_nano: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) duration_nanos: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) attributes: Vec<Attribute>,
}

/// An OTLP `KeyValue` in JSON (`intValue` as a string).
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct Attribute {
    pub(crate) key: String,
    pub(crate) value: AttributeValue,
}

#[derive(Debug, Serialize, PartialEq)]
pub(crate) enum AttributeValue {
    #[serde(rename = "stringValue")]
    String(String),
    #[serde(rename = "intValue")]
    Int(String),
    #[serde(rename = "doubleValue")]
    Double(f64),
    #[serde(rename = "boolValue")]
    Bool(bool),
}

#[derive(Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SearchMetrics {
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) inspected_traces: u32,
    /// A uint64, so a string in jsonpb.
    #[serde(skip_serializing_if = "is_zero_u64", serialize_with = "as_string")]
    pub(crate) inspected_bytes: u64,
    /// Present only when the search stopped at its budget: then 0 of 1, so clients see it incomplete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) completed_jobs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) total_jobs: Option<u32>,
}

fn is_zero_u64(value: &u64) -> bool {
    *value == 0
}

fn as_string<S: serde::Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

// === tags ===

/// `SearchTagsV2Response`.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct TagsResponse {
    pub(crate) scopes: Vec<TagScope>,
}

#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct TagScope {
    pub(crate) name: &'static str,
    pub(crate) tags: Vec<String>,
}

/// `SearchTagValuesV2Response`.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TagValuesResponse {
    pub(crate) tag_values: Vec<TagValue>,
}

/// A value and its TraceQL type (`string`, `int`, `float`, `bool`, `keyword`), which Grafana uses for quoting.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TagValue {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) value: String,
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::fixtures;
    use crate::otlp_json::to_traces_data;

    #[test]
    fn renders_the_fixture_trace_as_tempo_json_exactly_as_the_golden_file() {
        let rendered = trace_json(&to_traces_data(&fixtures::trace()));
        let golden: Value =
            serde_json::from_str(include_str!("../testdata/tempo_trace.json")).expect("golden file is JSON");
        assert_eq!(rendered, golden, "rendered:\n{rendered:#}");
    }

    #[test]
    fn trace_by_id_response_is_field_one_around_traces_data() {
        let data = to_traces_data(&fixtures::trace());
        let bytes = trace_by_id_response_protobuf(&data);
        let inner = encode_protobuf(&data);
        assert_eq!(bytes[0], 0x0a);
        let mut rest = &bytes[1..];
        let length = prost::encoding::decode_varint(&mut rest).expect("varint length");
        assert_eq!(length as usize, inner.len());
        assert_eq!(rest, inner.as_slice());
        // A `Trace` has the same field numbers as `TracesData`: decoding the payload gives the trace back.
        assert_eq!(TracesData::decode(rest).expect("decodes"), data);
        assert_eq!(trace_protobuf(&data), inner);
    }

    #[test]
    fn any_values_keep_oneof_defaults_and_non_finite_doubles() {
        let value = |value| any_value(&AnyValue { value: Some(value) });
        assert_eq!(value(any_value::Value::IntValue(0)), json!({"intValue": "0"}));
        assert_eq!(value(any_value::Value::BoolValue(false)), json!({"boolValue": false}));
        assert_eq!(
            value(any_value::Value::StringValue(String::new())),
            json!({"stringValue": ""})
        );
        assert_eq!(
            value(any_value::Value::DoubleValue(f64::NAN)),
            json!({"doubleValue": "NaN"})
        );
        assert_eq!(
            value(any_value::Value::DoubleValue(f64::NEG_INFINITY)),
            json!({"doubleValue": "-Infinity"})
        );
        assert_eq!(any_value(&AnyValue { value: None }), json!({}));
    }
}
