//! A stored trace turned back into OTLP: the `TracesData` message, its OTLP/JSON rendering (the `result` of
//! api_v3's `GET /api/v3/traces/{trace_id}`) and its protobuf encoding.
//!
//! The JSON is written here rather than by `opentelemetry-proto`'s serde derives, which emit every default
//! field (`"traceState": ""`, `"flags": 0`, `"droppedAttributesCount": 0`, `"parentSpanId": ""`, …) where
//! OTLP/JSON (proto3 JSON, query-api-contracts.md §4) leaves them out. The rules applied:
//!
//! * keys in lowerCamelCase; trace and span IDs as lower-case hex, never base64;
//! * 64-bit integers (`startTimeUnixNano`, `endTimeUnixNano`, `timeUnixNano`, `intValue`) as decimal strings;
//! * enums (`kind`, `status.code`) as integers; `bytesValue` as standard base64; non-finite doubles as the
//!   strings `NaN`, `Infinity` and `-Infinity`;
//! * scalars equal to their default, empty lists and absent messages are omitted; present messages are written
//!   even when empty (`"resource": {}`, `"scope": {}`, `"status": {}`, as Jaeger writes them);
//! * always written, so that decoders stricter than proto3 (`opentelemetry-proto`'s serde among them) accept the
//!   output: `resourceSpans`, every `key` of a key-value, the `values` of array and key-value-list values.

use std::collections::HashMap;

use base64::Engine as _;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, TracesData};
use prost::Message as _;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use tracepost_storage::model::{self, hex_encode, StoredSpan, NO_SERVICE_NAME};
use tracepost_storage::StoredTrace;

/// Rebuilds the OTLP form of a stored trace: one `ResourceSpans` per resource (in order of first appearance
/// among the spans), within it one `ScopeSpans` per distinct scope (same order), spans in stored order.
///
/// A span whose resource is missing from the trace gets a resource holding only its derived `service.name`.
pub fn to_traces_data(trace: &StoredTrace) -> TracesData {
    let mut resource_spans: Vec<ResourceSpans> = Vec::new();
    let mut by_resource: HashMap<i64, usize> = HashMap::new();
    for stored in &trace.spans {
        let index = *by_resource.entry(stored.resource_id).or_insert_with(|| {
            resource_spans.push(new_resource_spans(trace, stored));
            resource_spans.len() - 1
        });
        let Some(group) = resource_spans.get_mut(index) else {
            continue;
        };
        let (scope, schema_url) = to_otlp_scope(stored.span.detail.scope.as_ref());
        let span = to_otlp_span(&stored.span);
        let existing = group
            .scope_spans
            .iter_mut()
            .find(|scope_spans| scope_spans.scope.as_ref() == Some(&scope) && scope_spans.schema_url == schema_url);
        match existing {
            Some(scope_spans) => scope_spans.spans.push(span),
            None => group.scope_spans.push(ScopeSpans {
                scope: Some(scope),
                spans: vec![span],
                schema_url,
            }),
        }
    }
    TracesData { resource_spans }
}

/// Encodes `TracesData` as protobuf bytes.
pub fn encode_protobuf(data: &TracesData) -> Vec<u8> {
    data.encode_to_vec()
}

fn new_resource_spans(trace: &StoredTrace, stored: &StoredSpan) -> ResourceSpans {
    let (resource, schema_url) = match trace.resources.get(&stored.resource_id) {
        Some(found) => (
            Resource {
                attributes: to_otlp_attributes(&found.resource.attributes),
                dropped_attributes_count: found.resource.dropped_attributes_count,
                entity_refs: Vec::new(),
            },
            found.resource.schema_url.clone(),
        ),
        None => {
            let mut attributes = Vec::new();
            if stored.service_name != NO_SERVICE_NAME {
                attributes.push(KeyValue {
                    key: "service.name".to_owned(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(stored.service_name.clone())),
                    }),
                    key_strindex: 0,
                });
            }
            let resource = Resource {
                attributes,
                ..Default::default()
            };
            (resource, String::new())
        }
    };
    ResourceSpans {
        resource: Some(resource),
        scope_spans: Vec::new(),
        schema_url,
    }
}

/// The scope and the `ScopeSpans` schema URL; a span without a stored scope gets the empty scope.
fn to_otlp_scope(scope: Option<&model::Scope>) -> (InstrumentationScope, String) {
    match scope {
        Some(scope) => (
            InstrumentationScope {
                name: scope.name.clone(),
                version: scope.version.clone(),
                attributes: to_otlp_attributes(&scope.attributes),
                dropped_attributes_count: scope.dropped_attributes_count,
            },
            scope.schema_url.clone(),
        ),
        None => (InstrumentationScope::default(), String::new()),
    }
}

fn to_otlp_span(span: &model::Span) -> Span {
    let detail = &span.detail;
    Span {
        trace_id: span.trace_id.0.to_vec(),
        span_id: span.span_id.0.to_vec(),
        trace_state: detail.trace_state.clone(),
        parent_span_id: span
            .parent_span_id
            .filter(|parent| !parent.is_zero())
            .map(|parent| parent.0.to_vec())
            .unwrap_or_default(),
        flags: detail.flags,
        name: span.original_name().to_owned(),
        kind: span.kind as i32,
        start_time_unix_nano: span.start_time_unix_nano,
        end_time_unix_nano: detail.end_time_unix_nano,
        attributes: to_otlp_attributes(&detail.attributes),
        dropped_attributes_count: detail.dropped_attributes_count,
        events: detail.events.iter().map(to_otlp_event).collect(),
        dropped_events_count: detail.dropped_events_count,
        links: detail.links.iter().map(to_otlp_link).collect(),
        dropped_links_count: detail.dropped_links_count,
        status: Some(Status {
            message: detail.status_message.clone(),
            code: span.status_code as i32,
        }),
    }
}

fn to_otlp_event(event: &model::Event) -> Event {
    Event {
        time_unix_nano: event.time_unix_nano,
        name: event.name.clone(),
        attributes: to_otlp_attributes(&event.attributes),
        dropped_attributes_count: event.dropped_attributes_count,
    }
}

fn to_otlp_link(link: &model::Link) -> Link {
    Link {
        trace_id: link.trace_id.clone(),
        span_id: link.span_id.clone(),
        trace_state: link.trace_state.clone(),
        attributes: to_otlp_attributes(&link.attributes),
        dropped_attributes_count: link.dropped_attributes_count,
        flags: link.flags,
    }
}

fn to_otlp_attributes(attributes: &[model::KeyValue]) -> Vec<KeyValue> {
    attributes.iter().map(to_otlp_key_value).collect()
}

fn to_otlp_key_value(attribute: &model::KeyValue) -> KeyValue {
    KeyValue {
        key: attribute.key.clone(),
        value: attribute.value.as_ref().map(to_otlp_any_value),
        key_strindex: 0,
    }
}

fn to_otlp_any_value(value: &model::AnyValue) -> AnyValue {
    let value = value.value.as_ref().map(|value| match value {
        model::Value::Str(text) => any_value::Value::StringValue(text.clone()),
        model::Value::Bool(flag) => any_value::Value::BoolValue(*flag),
        model::Value::Int(number) => any_value::Value::IntValue(*number),
        model::Value::Double(number) => any_value::Value::DoubleValue(*number),
        model::Value::Bytes(bytes) => any_value::Value::BytesValue(bytes.clone()),
        model::Value::Array(array) => any_value::Value::ArrayValue(ArrayValue {
            values: array.values.iter().map(to_otlp_any_value).collect(),
        }),
        model::Value::Map(map) => any_value::Value::KvlistValue(KeyValueList {
            values: to_otlp_attributes(&map.values),
        }),
    });
    AnyValue { value }
}

/// `TracesData` serialized as OTLP/JSON (see the module documentation for the rules).
#[derive(Clone, Copy, Debug)]
pub struct OtlpJson<'a>(pub &'a TracesData);

impl Serialize for OtlpJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("resourceSpans", &List(&self.0.resource_spans, ResourceSpansJson))?;
        map.end()
    }
}

/// A slice serialized element by element through a JSON view.
struct List<'a, T, V>(&'a [T], fn(&'a T) -> V);

impl<'a, T, V: Serialize> Serialize for List<'a, T, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(self.1))
    }
}

/// Object-writing helpers that leave default values out.
trait MapExt: SerializeMap {
    fn string(&mut self, key: &'static str, value: &str) -> Result<(), Self::Error> {
        if value.is_empty() {
            return Ok(());
        }
        self.serialize_entry(key, value)
    }

    fn hex(&mut self, key: &'static str, bytes: &[u8]) -> Result<(), Self::Error> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.serialize_entry(key, &hex_encode(bytes))
    }

    fn number<N: Serialize + Default + PartialEq>(&mut self, key: &'static str, value: N) -> Result<(), Self::Error> {
        if value == N::default() {
            return Ok(());
        }
        self.serialize_entry(key, &value)
    }

    /// A 64-bit integer as a decimal string.
    fn long(&mut self, key: &'static str, value: u64) -> Result<(), Self::Error> {
        if value == 0 {
            return Ok(());
        }
        self.serialize_entry(key, &value.to_string())
    }

    fn list<'a, T, V: Serialize>(
        &mut self,
        key: &'static str,
        items: &'a [T],
        view: fn(&'a T) -> V,
    ) -> Result<(), Self::Error> {
        if items.is_empty() {
            return Ok(());
        }
        self.serialize_entry(key, &List(items, view))
    }
}

impl<M: SerializeMap> MapExt for M {}

struct ResourceSpansJson<'a>(&'a ResourceSpans);

impl Serialize for ResourceSpansJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let resource_spans = self.0;
        let mut map = serializer.serialize_map(None)?;
        if let Some(resource) = &resource_spans.resource {
            map.serialize_entry("resource", &ResourceJson(resource))?;
        }
        map.list("scopeSpans", &resource_spans.scope_spans, ScopeSpansJson)?;
        map.string("schemaUrl", &resource_spans.schema_url)?;
        map.end()
    }
}

struct ResourceJson<'a>(&'a Resource);

impl Serialize for ResourceJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let resource = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.list("attributes", &resource.attributes, KeyValueJson)?;
        map.number("droppedAttributesCount", resource.dropped_attributes_count)?;
        map.list("entityRefs", &resource.entity_refs, EntityRefJson)?;
        map.end()
    }
}

/// Every field written: `opentelemetry-proto`'s serde requires them all.
struct EntityRefJson<'a>(&'a EntityRef);

impl Serialize for EntityRefJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let entity = self.0;
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("schemaUrl", &entity.schema_url)?;
        map.serialize_entry("type", &entity.r#type)?;
        map.serialize_entry("idKeys", &entity.id_keys)?;
        map.serialize_entry("descriptionKeys", &entity.description_keys)?;
        map.end()
    }
}

struct ScopeSpansJson<'a>(&'a ScopeSpans);

impl Serialize for ScopeSpansJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let scope_spans = self.0;
        let mut map = serializer.serialize_map(None)?;
        if let Some(scope) = &scope_spans.scope {
            map.serialize_entry("scope", &ScopeJson(scope))?;
        }
        map.list("spans", &scope_spans.spans, SpanJson)?;
        map.string("schemaUrl", &scope_spans.schema_url)?;
        map.end()
    }
}

struct ScopeJson<'a>(&'a InstrumentationScope);

impl Serialize for ScopeJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let scope = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.string("name", &scope.name)?;
        map.string("version", &scope.version)?;
        map.list("attributes", &scope.attributes, KeyValueJson)?;
        map.number("droppedAttributesCount", scope.dropped_attributes_count)?;
        map.end()
    }
}

struct SpanJson<'a>(&'a Span);

impl Serialize for SpanJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let span = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.hex("traceId", &span.trace_id)?;
        map.hex("spanId", &span.span_id)?;
        map.string("traceState", &span.trace_state)?;
        map.hex("parentSpanId", &span.parent_span_id)?;
        map.number("flags", span.flags)?;
        map.string("name", &span.name)?;
        map.number("kind", span.kind)?;
        map.long("startTimeUnixNano", span.start_time_unix_nano)?;
        map.long("endTimeUnixNano", span.end_time_unix_nano)?;
        map.list("attributes", &span.attributes, KeyValueJson)?;
        map.number("droppedAttributesCount", span.dropped_attributes_count)?;
        map.list("events", &span.events, EventJson)?;
        map.number("droppedEventsCount", span.dropped_events_count)?;
        map.list("links", &span.links, LinkJson)?;
        map.number("droppedLinksCount", span.dropped_links_count)?;
        if let Some(status) = &span.status {
            map.serialize_entry("status", &StatusJson(status))?;
        }
        map.end()
    }
}

struct EventJson<'a>(&'a Event);

impl Serialize for EventJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let event = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.long("timeUnixNano", event.time_unix_nano)?;
        map.string("name", &event.name)?;
        map.list("attributes", &event.attributes, KeyValueJson)?;
        map.number("droppedAttributesCount", event.dropped_attributes_count)?;
        map.end()
    }
}

struct LinkJson<'a>(&'a Link);

impl Serialize for LinkJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let link = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.hex("traceId", &link.trace_id)?;
        map.hex("spanId", &link.span_id)?;
        map.string("traceState", &link.trace_state)?;
        map.list("attributes", &link.attributes, KeyValueJson)?;
        map.number("droppedAttributesCount", link.dropped_attributes_count)?;
        map.number("flags", link.flags)?;
        map.end()
    }
}

struct StatusJson<'a>(&'a Status);

impl Serialize for StatusJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let status = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.string("message", &status.message)?;
        map.number("code", status.code)?;
        map.end()
    }
}

struct KeyValueJson<'a>(&'a KeyValue);

impl Serialize for KeyValueJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let key_value = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("key", &key_value.key)?;
        if let Some(value) = &key_value.value {
            map.serialize_entry("value", &AnyValueJson(value))?;
        }
        map.number("keyStrindex", key_value.key_strindex)?;
        map.end()
    }
}

/// `{}` for an empty value, otherwise one key naming the type; the value is written even when it is the
/// default (`{"stringValue": ""}`, `{"intValue": "0"}`), since the key is what carries the type.
struct AnyValueJson<'a>(&'a AnyValue);

impl Serialize for AnyValueJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match &self.0.value {
            None => {}
            Some(any_value::Value::StringValue(text)) => map.serialize_entry("stringValue", text)?,
            Some(any_value::Value::BoolValue(flag)) => map.serialize_entry("boolValue", flag)?,
            Some(any_value::Value::IntValue(number)) => map.serialize_entry("intValue", &number.to_string())?,
            Some(any_value::Value::DoubleValue(number)) => map.serialize_entry("doubleValue", &Double(*number))?,
            Some(any_value::Value::BytesValue(bytes)) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
                map.serialize_entry("bytesValue", &encoded)?;
            }
            Some(any_value::Value::ArrayValue(array)) => {
                map.serialize_entry("arrayValue", &ArrayValueJson(array))?;
            }
            Some(any_value::Value::KvlistValue(list)) => {
                map.serialize_entry("kvlistValue", &KeyValueListJson(list))?;
            }
            Some(any_value::Value::StringValueStrindex(index)) => {
                map.serialize_entry("stringValueStrindex", index)?;
            }
        }
        map.end()
    }
}

struct ArrayValueJson<'a>(&'a ArrayValue);

impl Serialize for ArrayValueJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("values", &List(&self.0.values, AnyValueJson))?;
        map.end()
    }
}

struct KeyValueListJson<'a>(&'a KeyValueList);

impl Serialize for KeyValueListJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("values", &List(&self.0.values, KeyValueJson))?;
        map.end()
    }
}

/// A double, with proto3 JSON's string spellings of the values JSON numbers cannot hold.
struct Double(f64);

impl Serialize for Double {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let number = self.0;
        if number.is_nan() {
            serializer.serialize_str("NaN")
        } else if number == f64::INFINITY {
            serializer.serialize_str("Infinity")
        } else if number == f64::NEG_INFINITY {
            serializer.serialize_str("-Infinity")
        } else {
            serializer.serialize_f64(number)
        }
    }
}

#[cfg(test)]
mod tests {
    use tracepost_storage::model::{SpanId, SpanKind, StatusCode, TraceId};

    use super::*;
    use crate::fixtures;

    fn rendered_fixture() -> serde_json::Value {
        let data = to_traces_data(&fixtures::trace());
        serde_json::to_value(OtlpJson(&data)).expect("serializable")
    }

    #[test]
    fn renders_the_fixture_trace_exactly_as_the_golden_file() {
        let rendered = rendered_fixture();
        let golden: serde_json::Value =
            serde_json::from_str(include_str!("testdata/otlp_trace.json")).expect("golden file is JSON");
        assert_eq!(rendered, golden, "rendered:\n{rendered:#}");
    }

    /// The JSON decodes, with `opentelemetry-proto`'s own OTLP/JSON deserializer, to the very `TracesData` it
    /// was written from.
    #[test]
    fn json_decodes_back_to_the_same_traces_data_with_opentelemetry_proto() {
        let data = to_traces_data(&fixtures::trace());
        let json = serde_json::to_string(&OtlpJson(&data)).expect("serializable");
        let decoded: TracesData = serde_json::from_str(&json).expect("opentelemetry-proto accepts the JSON");
        assert_eq!(decoded, data);
    }

    #[test]
    fn json_uses_hex_ids_string_int64s_and_integer_enums() {
        let rendered = rendered_fixture();
        let span = &rendered["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "0000000000000000a1b2c3d4e5f60718");
        assert_eq!(span["spanId"], "0102030405060708");
        assert!(span.get("parentSpanId").is_none());
        assert_eq!(span["startTimeUnixNano"], "1706678909209712345");
        assert_eq!(span["endTimeUnixNano"], "1706678909333169000");
        assert_eq!(span["kind"], 2);
        assert_eq!(span["status"]["code"], 2);
        assert_eq!(span["events"][0]["timeUnixNano"], "1706678909209800123");
        assert_eq!(span["attributes"][3]["value"]["intValue"], "9223372036854775222");
        assert_eq!(span["links"][0]["traceId"], "0af7651916cd43dd8448eb211c80319c");
        let child = &rendered["resourceSpans"][1]["scopeSpans"][0]["spans"][0];
        assert_eq!(child["parentSpanId"], "0102030405060708");
    }

    #[test]
    fn non_finite_doubles_use_the_proto3_json_spellings() {
        let cases = [
            (f64::NAN, serde_json::json!("NaN")),
            (f64::INFINITY, serde_json::json!("Infinity")),
            (f64::NEG_INFINITY, serde_json::json!("-Infinity")),
            (-0.5, serde_json::json!(-0.5)),
        ];
        for (number, expected) in cases {
            let value = AnyValue {
                value: Some(any_value::Value::DoubleValue(number)),
            };
            let json = serde_json::to_value(AnyValueJson(&value)).expect("serializable");
            assert_eq!(json, serde_json::json!({ "doubleValue": expected }));
        }
    }

    #[test]
    fn protobuf_encoding_decodes_to_the_same_traces_data() {
        let data = to_traces_data(&fixtures::trace());
        let bytes = encode_protobuf(&data);
        assert_eq!(TracesData::decode(bytes.as_slice()).expect("valid protobuf"), data);
    }

    /// Converting to OTLP and reading the result back with an independent inverse gives back every stored span
    /// field (the span name being the original name) and every stored resource.
    #[test]
    fn otlp_keeps_every_span_and_resource_field() {
        let trace = fixtures::trace();
        let data = to_traces_data(&trace);

        let mut recovered: Vec<(model::Span, Option<model::Resource>)> = Vec::new();
        for resource_spans in &data.resource_spans {
            let resource = resource_spans.resource.clone().unwrap_or_default();
            let resource = model::Resource {
                attributes: resource.attributes.iter().map(from_otlp_key_value).collect(),
                dropped_attributes_count: resource.dropped_attributes_count,
                schema_url: resource_spans.schema_url.clone(),
            };
            for scope_spans in &resource_spans.scope_spans {
                let scope = scope_spans.scope.clone().unwrap_or_default();
                let scope = model::Scope {
                    name: scope.name,
                    version: scope.version,
                    attributes: scope.attributes.iter().map(from_otlp_key_value).collect(),
                    dropped_attributes_count: scope.dropped_attributes_count,
                    schema_url: scope_spans.schema_url.clone(),
                };
                for span in &scope_spans.spans {
                    recovered.push((from_otlp_span(span, &scope), Some(resource.clone())));
                }
            }
        }

        // Group the expected spans the same way: by resource in first-appearance order, then by scope.
        let mut expected: Vec<(model::Span, Option<model::Resource>)> = Vec::new();
        let mut resource_order: Vec<i64> = Vec::new();
        for stored in &trace.spans {
            if !resource_order.contains(&stored.resource_id) {
                resource_order.push(stored.resource_id);
            }
        }
        for resource_id in resource_order {
            let spans: Vec<&StoredSpan> = trace.spans.iter().filter(|s| s.resource_id == resource_id).collect();
            let mut scopes: Vec<Option<model::Scope>> = Vec::new();
            for stored in &spans {
                if !scopes.contains(&stored.span.detail.scope) {
                    scopes.push(stored.span.detail.scope.clone());
                }
            }
            for scope in scopes {
                for stored in spans.iter().filter(|s| s.span.detail.scope == scope) {
                    let mut span = stored.span.clone();
                    span.name = span.original_name().to_owned();
                    span.detail.original_name = None;
                    span.detail.scope = Some(span.detail.scope.unwrap_or_default());
                    let resource = trace.resources.get(&resource_id).map(|r| r.resource.clone());
                    expected.push((span, resource));
                }
            }
        }

        assert_eq!(recovered.len(), expected.len());
        for ((span, resource), (expected_span, expected_resource)) in recovered.iter().zip(&expected) {
            assert_eq!(span, expected_span);
            match expected_resource {
                Some(expected_resource) => assert_eq!(resource.as_ref(), Some(expected_resource)),
                // The resource was not stored: only the derived service name survives.
                None => assert_eq!(
                    resource.as_ref().map(|r| r.attributes.clone()),
                    Some(vec![model::KeyValue::string("service.name", "orphan")])
                ),
            }
        }
    }

    fn from_otlp_span(span: &Span, scope: &model::Scope) -> model::Span {
        let status = span.status.clone().unwrap_or_default();
        model::Span {
            trace_id: TraceId(span.trace_id.clone().try_into().expect("16-byte trace id")),
            span_id: SpanId(span.span_id.clone().try_into().expect("8-byte span id")),
            parent_span_id: (!span.parent_span_id.is_empty())
                .then(|| SpanId(span.parent_span_id.clone().try_into().expect("8-byte parent id"))),
            name: span.name.clone(),
            kind: SpanKind::from_i32(span.kind),
            start_time_unix_nano: span.start_time_unix_nano,
            status_code: StatusCode::from_i32(status.code),
            detail: model::SpanDetail {
                attributes: span.attributes.iter().map(from_otlp_key_value).collect(),
                dropped_attributes_count: span.dropped_attributes_count,
                events: span
                    .events
                    .iter()
                    .map(|event| model::Event {
                        time_unix_nano: event.time_unix_nano,
                        name: event.name.clone(),
                        attributes: event.attributes.iter().map(from_otlp_key_value).collect(),
                        dropped_attributes_count: event.dropped_attributes_count,
                    })
                    .collect(),
                dropped_events_count: span.dropped_events_count,
                links: span
                    .links
                    .iter()
                    .map(|link| model::Link {
                        trace_id: link.trace_id.clone(),
                        span_id: link.span_id.clone(),
                        trace_state: link.trace_state.clone(),
                        attributes: link.attributes.iter().map(from_otlp_key_value).collect(),
                        dropped_attributes_count: link.dropped_attributes_count,
                        flags: link.flags,
                    })
                    .collect(),
                dropped_links_count: span.dropped_links_count,
                trace_state: span.trace_state.clone(),
                flags: span.flags,
                status_message: status.message,
                scope: Some(scope.clone()),
                original_name: None,
                end_time_unix_nano: span.end_time_unix_nano,
            },
        }
    }

    fn from_otlp_key_value(key_value: &KeyValue) -> model::KeyValue {
        model::KeyValue {
            key: key_value.key.clone(),
            value: key_value.value.as_ref().map(from_otlp_any_value),
        }
    }

    fn from_otlp_any_value(value: &AnyValue) -> model::AnyValue {
        let value = value.value.as_ref().map(|value| match value {
            any_value::Value::StringValue(text) => model::Value::Str(text.clone()),
            any_value::Value::BoolValue(flag) => model::Value::Bool(*flag),
            any_value::Value::IntValue(number) => model::Value::Int(*number),
            any_value::Value::DoubleValue(number) => model::Value::Double(*number),
            any_value::Value::BytesValue(bytes) => model::Value::Bytes(bytes.clone()),
            any_value::Value::ArrayValue(array) => model::Value::Array(model::ArrayValue {
                values: array.values.iter().map(from_otlp_any_value).collect(),
            }),
            any_value::Value::KvlistValue(list) => model::Value::Map(model::KeyValueList {
                values: list.values.iter().map(from_otlp_key_value).collect(),
            }),
            any_value::Value::StringValueStrindex(_) => panic!("never produced"),
        });
        model::AnyValue { value }
    }
}
