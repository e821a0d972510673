//! OTLP/JSON: decoded a span at a time, so one malformed span (a trace ID that is not hex, a bad enum) is
//! rejected in `partial_success` while the valid spans beside it are stored; and measured before decoding, so
//! the memory decoding may take is reserved before it is taken.
//!
//! The request's outer structure (resource spans, resources, scope spans, scopes) is decoded into the
//! generated types as usual; each span is kept as its raw JSON text and decoded on its own.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::convert::{convert_request_within, Allowance, ConvertConfig, Converted, OverBudget, RejectReason};

/// What decoding may allocate per JSON object at the depth of spans (four objects deep: request, resource
/// spans, scope spans, span; resource attributes and scopes sit there too), at most: a generated `Span`, twice
/// (a `Vec` holding it may be twice as large as its contents), and the span's raw-text reference.
pub const BYTES_PER_SPAN_OBJECT: usize = 2 * std::mem::size_of::<Span>() + std::mem::size_of::<&RawValue>();

/// What decoding may allocate per other JSON object, at most: the largest of the structs found below a span
/// (link, event, key-value, value), twice.
pub const BYTES_PER_OBJECT: usize = 2 * max(
    max(std::mem::size_of::<Link>(), std::mem::size_of::<Event>()),
    max(std::mem::size_of::<KeyValue>(), std::mem::size_of::<AnyValue>()),
);

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// The memory decoding and converting `body` may take, at most: its strings (no longer than the text),
/// [`BYTES_PER_SPAN_OBJECT`] or [`BYTES_PER_OBJECT`] per JSON object, and the text again. Counted in one pass
/// over the bytes, before anything is allocated. (The rows are admitted separately as they are written.)
pub fn decode_cost(body: &[u8]) -> usize {
    let (mut span_level, mut other) = (0usize, 0usize);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in body {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match byte {
                b'"' => in_string = true,
                b'{' => {
                    depth += 1;
                    match depth {
                        4 => span_level += 1,
                        _ => other += 1,
                    }
                }
                b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    body.len()
        .saturating_mul(2)
        .saturating_add(span_level.saturating_mul(BYTES_PER_SPAN_OBJECT))
        .saturating_add(other.saturating_mul(BYTES_PER_OBJECT))
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Request<'a> {
    #[serde(borrow)]
    resource_spans: Vec<RawResourceSpans<'a>>,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct RawResourceSpans<'a> {
    resource: Option<Resource>,
    #[serde(borrow)]
    scope_spans: Vec<RawScopeSpans<'a>>,
    schema_url: String,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct RawScopeSpans<'a> {
    scope: Option<InstrumentationScope>,
    #[serde(borrow)]
    spans: Vec<&'a RawValue>,
    schema_url: String,
}

/// Decodes and converts an OTLP/JSON body. An error means the request's structure is not OTLP/JSON; a
/// span that does not decode is rejected on its own ([`RejectReason::MalformedSpan`]).
pub fn convert_json(body: &[u8], config: &ConvertConfig) -> Result<Converted, JsonError> {
    convert_json_within(body, config, &mut Allowance::unlimited())
}

/// Why an OTLP/JSON body was refused whole.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("invalid json: {}", describe(.0))]
    Invalid(#[from] serde_json::Error),
    #[error("invalid json: an OTLP/JSON request is a JSON object")]
    NotAnObject,
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
}

/// serde's message without the names of tracepost's own types: where, and what kind of mistake.
fn describe(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let at = format!("line {} column {}", error.line(), error.column());
    match error.classify() {
        Category::Syntax => format!("not valid JSON at {at}"),
        Category::Eof => "the body ends in the middle of a JSON value".into(),
        Category::Data => format!("not an OTLP/JSON ExportTraceServiceRequest: a value of the wrong type at {at}"),
        Category::Io => "the body could not be read".into(),
    }
}

/// [`convert_json`] within an [`Allowance`].
pub fn convert_json_within(
    body: &[u8],
    config: &ConvertConfig,
    allowance: &mut Allowance<'_>,
) -> Result<Converted, JsonError> {
    // serde would take a JSON array for a struct too: an OTLP/JSON request is an object.
    if body.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
        return Err(JsonError::NotAnObject);
    }
    let request: Request<'_> = serde_json::from_slice(body)?;
    let mut malformed = 0u64;
    let resource_spans = request
        .resource_spans
        .into_iter()
        .map(|resource_spans| ResourceSpans {
            resource: resource_spans.resource,
            schema_url: resource_spans.schema_url,
            scope_spans: resource_spans
                .scope_spans
                .into_iter()
                .map(|scope_spans| ScopeSpans {
                    scope: scope_spans.scope,
                    schema_url: scope_spans.schema_url,
                    spans: scope_spans
                        .spans
                        .into_iter()
                        .filter_map(|raw| serde_json::from_str::<Span>(raw.get()).map_err(|_| malformed += 1).ok())
                        .collect(),
                })
                .collect(),
        })
        .collect();
    let mut converted = convert_request_within(ExportTraceServiceRequest { resource_spans }, config, allowance)?;
    for _ in 0..malformed {
        converted.reject(RejectReason::MalformedSpan);
    }
    Ok(converted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_with_a_trace_id_that_is_not_hex_is_rejected_alone() {
        let body =
            br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},
            "scopeSpans":[{"spans":[
              {"traceId":"zz","spanId":"0102030405060708","name":"bad","startTimeUnixNano":"1","endTimeUnixNano":"2"},
              {"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"good",
               "startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}"#;
        let converted = convert_json(body, &ConvertConfig::default()).expect("structure is valid");
        assert_eq!(converted.encoded.span_count, 1);
        assert_eq!(converted.rejected, vec![(RejectReason::MalformedSpan, 1)]);
        assert!(
            converted.rejection_message().contains("not valid OTLP/JSON"),
            "{}",
            converted.rejection_message()
        );
    }

    #[test]
    fn the_decode_cost_counts_objects_outside_strings() {
        let empty_spans = format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
            ["{}"; 1000].join(",")
        );
        let cost = decode_cost(empty_spans.as_bytes());
        assert_eq!(
            cost,
            empty_spans.len() * 2 + 1000 * BYTES_PER_SPAN_OBJECT + 3 * BYTES_PER_OBJECT
        );
        // Braces inside strings, escaped quotes included, are text.
        assert_eq!(decode_cost(br#"{"a":"{\"{{"}"#), 13 * 2 + BYTES_PER_OBJECT);
    }

    #[test]
    fn a_request_that_is_not_otlp_json_is_an_error_naming_no_internal_type() {
        let error = convert_json(b"[]", &ConvertConfig::default()).expect_err("an array");
        assert_eq!(error.to_string(), "invalid json: an OTLP/JSON request is a JSON object");
        assert!(convert_json(b" [1,2]", &ConvertConfig::default()).is_err());
        let error = convert_json(br#"{"resourceSpans":{"a":1}}"#, &ConvertConfig::default()).expect_err("wrong type");
        assert_eq!(
            error.to_string(),
            "invalid json: not an OTLP/JSON ExportTraceServiceRequest: a value of the wrong type at line 1 column 17"
        );
        let error = convert_json(br#"{"resourceSpans":[{"#, &ConvertConfig::default()).expect_err("cut short");
        assert_eq!(
            error.to_string(),
            "invalid json: the body ends in the middle of a JSON value"
        );
    }

    /// What the README promises: an ordinary OTLP/JSON request (ten attributes and two events a span) is
    /// charged at most eight times its size before decoding (the text twice, and each object at twice the
    /// struct it becomes), so the default 64 MiB budget takes JSON bodies of about 8 MiB.
    #[test]
    fn an_ordinary_json_request_is_charged_at_most_eight_times_its_size() {
        let attribute = |key: &str, value: &str| format!(r#"{{"key":"{key}","value":{{"stringValue":"{value}"}}}}"#);
        let span = |index: usize| {
            let attributes: Vec<String> = (0..10)
                .map(|a| attribute(&format!("http.attr{a}"), "some-value-42"))
                .collect();
            let event = format!(
                r#"{{"timeUnixNano":"1700000000000000000","name":"event","attributes":[{}]}}"#,
                attribute("k", "v")
            );
            format!(
                r#"{{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"{index:016x}","name":"GET /api/orders/{{id}}","kind":2,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000050000000","attributes":[{}],"events":[{event},{event}],"status":{{}}}}"#,
                attributes.join(",")
            )
        };
        let spans: Vec<String> = (0..1000).map(span).collect();
        let body = format!(
            r#"{{"resourceSpans":[{{"resource":{{"attributes":[{}]}},"scopeSpans":[{{"scope":{{"name":"s"}},"spans":[{}]}}]}}]}}"#,
            attribute("service.name", "checkout"),
            spans.join(",")
        );
        let ratio = decode_cost(body.as_bytes()) as f64 / body.len() as f64;
        assert!(ratio <= 8.0, "charged {ratio:.2} x the body");
        assert!(convert_json(body.as_bytes(), &ConvertConfig::default()).is_ok());
    }
}
