//! A stored trace rendered as Jaeger's v1 "UI JSON" trace (Jaeger's `internal/uimodel`), the payload of
//! `GET /api/traces/{trace_id}`.
//!
//! The mapping is the one Jaeger v2 applies to OTLP data (the collector-contrib `ProtoFromTraces` translator
//! followed by the UI JSON converter), as recorded in query-api-contracts.md §2 and §3:
//!
//! * trace IDs are 16 hex characters when their high 8 bytes are zero, 32 otherwise; span IDs are 16;
//! * times are microseconds, truncated from nanoseconds;
//! * the parent becomes the first `CHILD_OF` reference, links become `FOLLOWS_FROM` (or `CHILD_OF` when the link
//!   says `opentracing.ref_type=child_of`), and a link to the parent only overrides the parent reference's type;
//! * scope, kind, status and trace state become tags around the span attributes, in a fixed order;
//! * events become logs, resources become processes (`p1`, `p2`, … in span order, one per distinct service
//!   name and tags).

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};
use tracepost_storage::model::{
    self, find_attribute, hex_encode, SpanKind, StatusCode, StoredResource, StoredSpan, TraceId,
};
use tracepost_storage::StoredTrace;

/// The resource attribute that names the service; it becomes the process's `serviceName`, not a tag.
const SERVICE_NAME: &str = "service.name";
/// The link attribute OpenTracing bridges use to keep the reference type of a link.
const REF_TYPE_ATTRIBUTE: &str = "opentracing.ref_type";
/// The value of [`REF_TYPE_ATTRIBUTE`] that makes a link a `CHILD_OF` reference.
const REF_TYPE_CHILD_OF: &str = "child_of";
/// The largest integer JavaScript represents exactly (2^53 − 1); larger int64 tags are sent as strings.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// One trace in Jaeger's UI JSON.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Trace {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    pub spans: Vec<Span>,
    pub processes: Processes,
    /// Always `None` (serialized as `null`): tracepost runs no adjusters that would warn.
    pub warnings: Option<Vec<String>>,
}

/// The processes of a trace, keyed by process ID, serialized as a JSON object in assignment order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Processes(pub Vec<(String, Process)>);

/// One span in Jaeger's UI JSON.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
    pub operation_name: String,
    pub references: Vec<Reference>,
    /// Microseconds since the Unix epoch.
    pub start_time: u64,
    /// Microseconds.
    pub duration: u64,
    pub tags: Vec<KeyValue>,
    pub logs: Vec<Log>,
    #[serde(rename = "processID")]
    pub process_id: String,
    /// Always `None` (serialized as `null`).
    pub warnings: Option<Vec<String>>,
}

/// A reference from a span to another span.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reference {
    #[serde(rename = "refType")]
    pub ref_type: RefType,
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
}

/// Jaeger's two reference types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum RefType {
    #[serde(rename = "CHILD_OF")]
    ChildOf,
    #[serde(rename = "FOLLOWS_FROM")]
    FollowsFrom,
}

/// A span event as a Jaeger log.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Log {
    /// Microseconds since the Unix epoch.
    pub timestamp: u64,
    pub fields: Vec<KeyValue>,
}

/// The service that emitted spans: a resource's `service.name` and its other attributes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Process {
    #[serde(rename = "serviceName")]
    pub service_name: String,
    pub tags: Vec<KeyValue>,
}

/// A typed Jaeger tag, serialized as `{"key", "type", "value"}`.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyValue {
    pub key: String,
    pub value: TagValue,
}

/// The value of a tag; the variant is the tag's `type`.
#[derive(Clone, Debug, PartialEq)]
pub enum TagValue {
    String(String),
    Bool(bool),
    /// Serialized as a JSON number, or as a decimal string when JavaScript cannot hold it exactly.
    Int64(i64),
    Float64(f64),
    /// Serialized as standard, padded base64.
    Binary(Vec<u8>),
}

impl TagValue {
    /// The Jaeger type name (`string`, `bool`, `int64`, `float64` or `binary`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::String(_) => "string",
            Self::Bool(_) => "bool",
            Self::Int64(_) => "int64",
            Self::Float64(_) => "float64",
            Self::Binary(_) => "binary",
        }
    }
}

impl KeyValue {
    fn string(key: &str, value: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            value: TagValue::String(value.into()),
        }
    }
}

impl Serialize for KeyValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tag = serializer.serialize_struct("KeyValue", 3)?;
        tag.serialize_field("key", &self.key)?;
        tag.serialize_field("type", self.value.type_name())?;
        match &self.value {
            TagValue::String(text) => tag.serialize_field("value", text)?,
            TagValue::Bool(flag) => tag.serialize_field("value", flag)?,
            TagValue::Int64(number) if number.unsigned_abs() <= MAX_SAFE_INTEGER => {
                tag.serialize_field("value", number)?;
            }
            TagValue::Int64(number) => tag.serialize_field("value", &number.to_string())?,
            TagValue::Float64(number) => tag.serialize_field("value", number)?,
            TagValue::Binary(bytes) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
                tag.serialize_field("value", &encoded)?;
            }
        }
        tag.end()
    }
}

impl Serialize for Processes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (id, process) in &self.0 {
            map.serialize_entry(id, process)?;
        }
        map.end()
    }
}

/// Renders a stored trace as a Jaeger UI trace, keeping the stored span order. A truncated trace says so in
/// its first span's `warnings`.
///
/// Span `flags` are left out, as Jaeger's own OTLP translator does: OTLP's flag bits (W3C trace flags,
/// parent-is-remote) do not mean what Jaeger's do.
pub fn to_jaeger_trace(trace: &StoredTrace) -> Trace {
    let mut processes = ProcessTable::default();
    let mut spans: Vec<Span> = trace
        .spans
        .iter()
        .map(|stored| {
            let process_id = processes.id_for(stored, &trace.resources);
            to_jaeger_span(&stored.span, process_id)
        })
        .collect();
    if trace.truncated {
        if let Some(first) = spans.first_mut() {
            first.warnings = Some(vec![crate::limits::truncation_warning(trace.spans.len())]);
        }
    }
    Trace {
        trace_id: jaeger_trace_id(&trace.trace_id),
        spans,
        processes: Processes(processes.processes),
        warnings: None,
    }
}

/// A trace ID as Jaeger's v1 JSON writes it: 16 hex characters when the high 8 bytes are zero, else 32.
pub fn jaeger_trace_id(trace_id: &TraceId) -> String {
    let (high, low) = trace_id.0.split_at(8);
    if high.iter().all(|byte| *byte == 0) {
        hex_encode(low)
    } else {
        hex_encode(&trace_id.0)
    }
}

/// Assigns process IDs in span order, one per distinct (service name, tags).
#[derive(Default)]
struct ProcessTable {
    processes: Vec<(String, Process)>,
    /// Process IDs already resolved, by (resource ID, the span's service name).
    resolved: HashMap<(i64, String), String>,
}

impl ProcessTable {
    fn id_for(&mut self, stored: &StoredSpan, resources: &HashMap<i64, StoredResource>) -> String {
        let key = (stored.resource_id, stored.service_name.clone());
        if let Some(id) = self.resolved.get(&key) {
            return id.clone();
        }
        let process = match resources.get(&stored.resource_id) {
            Some(resource) => to_process(&resource.resource, &stored.service_name),
            None => Process {
                service_name: stored.service_name.clone(),
                tags: Vec::new(),
            },
        };
        let id = self.intern(process);
        self.resolved.insert(key, id.clone());
        id
    }

    fn intern(&mut self, process: Process) -> String {
        if let Some((id, _)) = self.processes.iter().find(|(_, known)| *known == process) {
            return id.clone();
        }
        let id = format!("p{}", self.processes.len() + 1);
        self.processes.push((id.clone(), process));
        id
    }
}

/// The process of a resource. The service name is the resource's own non-empty string `service.name`; when it
/// has none, the name the collector derived for the span (`OTLPResourceNoServiceName` for a resource without
/// one) is used instead.
fn to_process(resource: &model::Resource, derived_service_name: &str) -> Process {
    let service_name = find_attribute(&resource.attributes, SERVICE_NAME)
        .and_then(model::KeyValue::as_str)
        .filter(|name| !name.is_empty())
        .unwrap_or(derived_service_name);
    let tags = resource
        .attributes
        .iter()
        .filter(|attribute| attribute.key != SERVICE_NAME)
        .map(to_tag)
        .collect();
    Process {
        service_name: service_name.to_owned(),
        tags,
    }
}

fn to_jaeger_span(span: &model::Span, process_id: String) -> Span {
    Span {
        trace_id: jaeger_trace_id(&span.trace_id),
        span_id: span.span_id.to_hex(),
        operation_name: span.original_name().to_owned(),
        references: references(span),
        start_time: span.start_time_unix_nano / 1000,
        duration: span.duration_nanos() / 1000,
        tags: span_tags(span),
        logs: span.detail.events.iter().map(to_log).collect(),
        process_id,
        warnings: None,
    }
}

/// The parent first (as `CHILD_OF`), then one reference per link, except that a link to the parent changes
/// the parent reference's type instead of repeating it.
fn references(span: &model::Span) -> Vec<Reference> {
    let parent = span.parent_span_id.filter(|parent| !parent.is_zero());
    let mut references = Vec::with_capacity(span.detail.links.len() + 1);
    if let Some(parent) = parent {
        references.push(Reference {
            ref_type: RefType::ChildOf,
            trace_id: jaeger_trace_id(&span.trace_id),
            span_id: parent.to_hex(),
        });
    }
    for link in &span.detail.links {
        let ref_type = link_ref_type(link);
        let links_to_parent = parent.is_some_and(|parent| {
            link.trace_id.as_slice() == span.trace_id.0.as_slice() && link.span_id.as_slice() == parent.0.as_slice()
        });
        if links_to_parent {
            if let Some(parent_reference) = references.first_mut() {
                parent_reference.ref_type = ref_type;
            }
            continue;
        }
        references.push(Reference {
            ref_type,
            trace_id: link_trace_id(&link.trace_id),
            span_id: hex_encode(&link.span_id),
        });
    }
    references
}

fn link_ref_type(link: &model::Link) -> RefType {
    let ref_type = find_attribute(&link.attributes, REF_TYPE_ATTRIBUTE).and_then(model::KeyValue::as_str);
    if ref_type == Some(REF_TYPE_CHILD_OF) {
        RefType::ChildOf
    } else {
        RefType::FollowsFrom
    }
}

/// A link's trace ID with the same 16-or-32 rule as span trace IDs (raw hex if it is not 16 bytes).
fn link_trace_id(bytes: &[u8]) -> String {
    match <[u8; 16]>::try_from(bytes) {
        Ok(array) => jaeger_trace_id(&TraceId(array)),
        Err(_) => hex_encode(bytes),
    }
}

/// Scope tags, span attributes, then `span.kind`, `otel.status_code` (+ `error`), `otel.status_description`
/// and `w3c.tracestate`, each only when it has something to say.
fn span_tags(span: &model::Span) -> Vec<KeyValue> {
    let detail = &span.detail;
    let mut tags = Vec::with_capacity(detail.attributes.len() + 7);
    if let Some(scope) = &detail.scope {
        if !scope.name.is_empty() {
            tags.push(KeyValue::string("otel.scope.name", scope.name.as_str()));
        }
        if !scope.version.is_empty() {
            tags.push(KeyValue::string("otel.scope.version", scope.version.as_str()));
        }
    }
    tags.extend(detail.attributes.iter().map(to_tag));
    if let Some(kind) = SpanKind::jaeger_name(span.kind) {
        tags.push(KeyValue::string("span.kind", kind));
    }
    match span.status_code {
        StatusCode::Unset => {}
        StatusCode::Ok => tags.push(KeyValue::string("otel.status_code", "OK")),
        StatusCode::Error => {
            tags.push(KeyValue::string("otel.status_code", "ERROR"));
            tags.push(KeyValue {
                key: "error".to_owned(),
                value: TagValue::Bool(true),
            });
        }
    }
    if !detail.status_message.is_empty() {
        tags.push(KeyValue::string(
            "otel.status_description",
            detail.status_message.as_str(),
        ));
    }
    if !detail.trace_state.is_empty() {
        tags.push(KeyValue::string("w3c.tracestate", detail.trace_state.as_str()));
    }
    tags
}

/// An event as a log: an `event` field with the name (unless the name is empty or an attribute is already
/// called `event`), then the attributes.
fn to_log(event: &model::Event) -> Log {
    let mut fields = Vec::with_capacity(event.attributes.len() + 1);
    if !event.name.is_empty() && find_attribute(&event.attributes, "event").is_none() {
        fields.push(KeyValue::string("event", event.name.as_str()));
    }
    fields.extend(event.attributes.iter().map(to_tag));
    Log {
        timestamp: event.time_unix_nano / 1000,
        fields,
    }
}

fn to_tag(attribute: &model::KeyValue) -> KeyValue {
    KeyValue {
        key: attribute.key.clone(),
        value: to_tag_value(attribute.value()),
    }
}

/// Arrays and maps become strings holding their JSON rendering; an empty value becomes the empty string.
fn to_tag_value(value: Option<&model::Value>) -> TagValue {
    match value {
        None => TagValue::String(String::new()),
        Some(model::Value::Str(text)) => TagValue::String(text.clone()),
        Some(model::Value::Bool(flag)) => TagValue::Bool(*flag),
        Some(model::Value::Int(number)) => TagValue::Int64(*number),
        Some(model::Value::Double(number)) => TagValue::Float64(*number),
        Some(model::Value::Bytes(bytes)) => TagValue::Binary(bytes.clone()),
        Some(composite @ (model::Value::Array(_) | model::Value::Map(_))) => {
            let mut json = String::new();
            write_json(Some(composite), &mut json);
            TagValue::String(json)
        }
    }
}

/// Writes a value as compact JSON the way OpenTelemetry's Go `pdata` `AsString` does (it calls Go's
/// `encoding/json`): map keys sorted (the last duplicate wins), ints as numbers, bytes as base64, empty values as
/// `null`, floats in Go's notation, and `<`, `>`, `&` escaped. Non-finite floats, which Go refuses, become `null`.
fn write_json(value: Option<&model::Value>, out: &mut String) {
    match value {
        None => out.push_str("null"),
        Some(model::Value::Str(text)) => write_json_string(text, out),
        Some(model::Value::Bool(flag)) => out.push_str(if *flag { "true" } else { "false" }),
        Some(model::Value::Int(number)) => out.push_str(&number.to_string()),
        Some(model::Value::Double(number)) => write_go_float(*number, out),
        Some(model::Value::Bytes(bytes)) => {
            write_json_string(&base64::engine::general_purpose::STANDARD.encode(bytes), out);
        }
        Some(model::Value::Array(array)) => {
            out.push('[');
            for (index, element) in array.values.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_json(element.value.as_ref(), out);
            }
            out.push(']');
        }
        Some(model::Value::Map(map)) => {
            let sorted: BTreeMap<&str, Option<&model::Value>> = map
                .values
                .iter()
                .map(|entry| (entry.key.as_str(), entry.value()))
                .collect();
            out.push('{');
            for (index, (key, entry)) in sorted.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_json_string(key, out);
                out.push(':');
                write_json(entry, out);
            }
            out.push('}');
        }
    }
}

fn write_json_string(text: &str, out: &mut String) {
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' | '\u{0}'..='\u{1f}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(character)));
            }
            other => out.push(other),
        }
    }
    out.push('"');
}

/// Go's `encoding/json` float format (see [`tracepost_storage::block::go_float_text`]).
fn write_go_float(number: f64, out: &mut String) {
    out.push_str(&tracepost_storage::block::go_float_text(number));
}

/// Whether an attribute value equals `expected` when compared as strings, as Jaeger's tag search does (the
/// value's pdata `AsString` form: ints in decimal, bools as `true`/`false`, bytes in base64, arrays and maps
/// as JSON).
pub(crate) fn value_matches(value: Option<&model::Value>, expected: &str) -> bool {
    match value {
        Some(model::Value::Str(text)) => text == expected,
        None => expected.is_empty(),
        Some(model::Value::Bool(flag)) => expected == if *flag { "true" } else { "false" },
        Some(model::Value::Int(number)) => expected.parse::<i64>().is_ok_and(|parsed| parsed == *number),
        Some(model::Value::Double(number)) => {
            let mut text = String::new();
            write_go_float(*number, &mut text);
            text == expected
        }
        Some(model::Value::Bytes(bytes)) => {
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes) == expected
        }
        Some(composite @ (model::Value::Array(_) | model::Value::Map(_))) => {
            let mut json = String::new();
            write_json(Some(composite), &mut json);
            json == expected
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn renders_the_fixture_trace_exactly_as_the_golden_file() {
        let rendered = serde_json::to_value(to_jaeger_trace(&fixtures::trace())).expect("serializable");
        let golden: serde_json::Value =
            serde_json::from_str(include_str!("testdata/jaeger_trace.json")).expect("golden file is JSON");
        assert_eq!(rendered, golden, "rendered:\n{rendered:#}");
    }

    #[test]
    fn a_truncated_trace_says_so_in_its_first_spans_warnings() {
        let mut trace = fixtures::trace();
        trace.truncated = true;
        let rendered = to_jaeger_trace(&trace);
        assert_eq!(
            rendered.spans[0].warnings,
            Some(vec![
                "trace truncated: only its first 6 spans by start time are shown (the span limit per trace)".to_owned()
            ])
        );
        assert!(rendered.spans[1..].iter().all(|span| span.warnings.is_none()));
        assert_eq!(rendered.warnings, None);
    }

    #[test]
    fn trace_ids_are_16_hex_characters_only_when_the_high_half_is_zero() {
        let mut id = [0u8; 16];
        id[15] = 1;
        assert_eq!(jaeger_trace_id(&TraceId(id)), "0000000000000001");
        id[7] = 0xab;
        assert_eq!(jaeger_trace_id(&TraceId(id)), "00000000000000ab0000000000000001");
        id[0] = 0x10;
        assert_eq!(jaeger_trace_id(&TraceId(id)), "10000000000000ab0000000000000001");
    }

    #[test]
    fn int64_tags_switch_to_strings_beyond_the_javascript_safe_range() {
        let cases = [
            (0, serde_json::json!(0)),
            (9_007_199_254_740_991, serde_json::json!(9_007_199_254_740_991_i64)),
            (-9_007_199_254_740_991, serde_json::json!(-9_007_199_254_740_991_i64)),
            (9_007_199_254_740_992, serde_json::json!("9007199254740992")),
            (-9_007_199_254_740_992, serde_json::json!("-9007199254740992")),
            (i64::MIN, serde_json::json!("-9223372036854775808")),
            (i64::MAX, serde_json::json!("9223372036854775807")),
        ];
        for (number, expected) in cases {
            let tag = KeyValue {
                key: "n".to_owned(),
                value: TagValue::Int64(number),
            };
            let json = serde_json::to_value(&tag).expect("serializable");
            assert_eq!(
                json,
                serde_json::json!({"key": "n", "type": "int64", "value": expected})
            );
        }
    }

    #[test]
    fn composite_values_render_as_go_json() {
        let check = |value: model::Value, expected: &str| {
            let mut out = String::new();
            write_json(Some(&value), &mut out);
            assert_eq!(out, expected);
        };
        let any = |value: model::Value| model::AnyValue { value: Some(value) };
        check(
            model::Value::Array(model::ArrayValue {
                values: vec![
                    any(model::Value::Double(0.5)),
                    any(model::Value::Double(-3.0)),
                    any(model::Value::Double(1e20)),
                    any(model::Value::Double(-1.5e22)),
                    any(model::Value::Double(1.25e-7)),
                    any(model::Value::Double(0.000001)),
                    any(model::Value::Double(0.0)),
                    any(model::Value::Double(f64::NAN)),
                    model::AnyValue { value: None },
                ],
            }),
            "[0.5,-3,100000000000000000000,-1.5e+22,1.25e-7,0.000001,0,null,null]",
        );
        check(
            model::Value::Map(model::KeyValueList {
                values: vec![
                    model::KeyValue::string("b", "quote\" slash\\ tab\t nl\n bell\u{7}"),
                    model::KeyValue::new("a", model::Value::Int(-1)),
                    model::KeyValue::new("b", model::Value::Bool(false)),
                    model::KeyValue::new("c", model::Value::Map(model::KeyValueList { values: Vec::new() })),
                ],
            }),
            r#"{"a":-1,"b":false,"c":{}}"#,
        );
        check(
            model::Value::Array(model::ArrayValue {
                values: vec![any(model::Value::Str("quote\" slash\\ tab\t nl\n bell\u{7} é".into()))],
            }),
            r#"["quote\" slash\\ tab\t nl\n bell\u0007 é"]"#,
        );
    }

    #[test]
    fn resources_with_the_same_service_and_tags_share_a_process() {
        let mut trace = fixtures::trace();
        // Give the db-proxy span the cart resource's twin (same attributes, another schema URL).
        let mut twin = trace.resources[&fixtures::CART_RESOURCE].clone();
        twin.id = 77;
        twin.resource.schema_url = "https://example.invalid/other".to_owned();
        trace.resources.insert(77, twin);
        trace.spans[1].resource_id = 77;
        let rendered = to_jaeger_trace(&trace);
        let process_ids: Vec<&str> = rendered.spans.iter().map(|span| span.process_id.as_str()).collect();
        assert_eq!(process_ids, ["p1", "p1", "p2", "p1", "p3", "p1"]);
        assert_eq!(rendered.processes.0.len(), 3);
    }

    #[test]
    fn a_non_string_service_name_falls_back_to_the_derived_name_and_is_not_a_tag() {
        let resource = model::Resource {
            attributes: vec![
                model::KeyValue::new(SERVICE_NAME, model::Value::Int(7)),
                model::KeyValue::string("host.name", "h"),
            ],
            ..Default::default()
        };
        let process = to_process(&resource, "derived");
        assert_eq!(process.service_name, "derived");
        assert_eq!(process.tags, vec![KeyValue::string("host.name", "h")]);
    }
}
