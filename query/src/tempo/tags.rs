//! Tag autocomplete: `GET /api/v2/search/tags` and `GET /api/v2/search/tag/{tag}/values`.
//!
//! Attribute names and values come from a bounded sample of recent traces (the handler reads it); service and
//! span names come from the dictionaries; `status` and `kind` have fixed keyword values.

use std::collections::BTreeSet;

use tracepost_storage::model;
use tracepost_storage::StoredTrace;

use super::format::{TagScope, TagValue, TagValuesResponse, TagsResponse};
use crate::traceql::{Field, Query, KIND_KEYWORDS, SERVICE_NAME, STATUS_KEYWORDS};

/// The intrinsics the TraceQL subset supports, as the `intrinsic` scope lists them.
pub(crate) const INTRINSIC_TAGS: [&str; 5] = ["duration", "kind", "name", "status", "traceDuration"];

/// A scope of `GET /api/v2/search/tags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    Resource,
    Span,
    Intrinsic,
}

/// The scopes a `scope` parameter asks for: all three when absent or `all`, none for scopes tracepost does not
/// serve (`event`, `link`, `instrumentation`).
pub(crate) fn scopes(text: Option<&str>) -> Vec<Scope> {
    match text {
        None | Some("all") => vec![Scope::Resource, Scope::Span, Scope::Intrinsic],
        Some("resource") => vec![Scope::Resource],
        Some("span") => vec![Scope::Span],
        Some("intrinsic") => vec![Scope::Intrinsic],
        Some(_) => Vec::new(),
    }
}

/// Whether the scopes need the trace sample.
pub(crate) fn need_sample(scopes: &[Scope]) -> bool {
    scopes.iter().any(|scope| *scope != Scope::Intrinsic)
}

/// The attribute names of the spans of `sample` that match `query`, by scope, sorted, at most `limit` per
/// scope. `service.name` is always a resource tag: every span has a service.
pub(crate) fn tag_names(sample: &[StoredTrace], query: &Query, scopes: &[Scope], limit: usize) -> TagsResponse {
    let mut resource_tags = BTreeSet::from([SERVICE_NAME.to_owned()]);
    let mut span_tags = BTreeSet::new();
    for trace in sample {
        for span in query.matching_spans(trace) {
            span_tags.extend(
                span.span
                    .detail
                    .attributes
                    .iter()
                    .map(|attribute| attribute.key.clone()),
            );
            if let Some(resource) = trace.resource_of(span) {
                resource_tags.extend(
                    resource
                        .resource
                        .attributes
                        .iter()
                        .map(|attribute| attribute.key.clone()),
                );
            }
        }
    }
    let capped = |tags: BTreeSet<String>| tags.into_iter().filter(|tag| !tag.is_empty()).take(limit).collect();
    let mut resource_tags = Some(resource_tags);
    let mut span_tags = Some(span_tags);
    let scopes = scopes
        .iter()
        .map(|scope| match scope {
            Scope::Resource => TagScope {
                name: "resource",
                tags: resource_tags.take().map(capped).unwrap_or_default(),
            },
            Scope::Span => TagScope {
                name: "span",
                tags: span_tags.take().map(capped).unwrap_or_default(),
            },
            Scope::Intrinsic => TagScope {
                name: "intrinsic",
                tags: INTRINSIC_TAGS.iter().take(limit).map(|tag| (*tag).to_owned()).collect(),
            },
        })
        .collect();
    TagsResponse { scopes }
}

/// Where the values of a tag come from.
#[derive(Debug, PartialEq)]
pub(crate) enum Source {
    /// The service list.
    Services,
    /// The span names of the operations dictionary.
    SpanNames,
    /// Fixed values (keywords, or none).
    Fixed(Vec<TagValue>),
    /// The sample's values of an attribute.
    Attribute(Field),
}

/// Classifies a scoped TraceQL identifier (`resource.service.name`, `span.http.route`, `.x`, `name`, …).
/// Identifiers outside the subset (other intrinsics, event and link scopes) have no values.
pub(crate) fn source(tag: &str) -> Source {
    let keywords = |words: &[&str]| {
        Source::Fixed(
            words
                .iter()
                .map(|word| TagValue {
                    kind: "keyword",
                    value: (*word).to_owned(),
                })
                .collect(),
        )
    };
    match tag {
        "resource.service.name" => Source::Services,
        "name" | "span:name" => Source::SpanNames,
        "status" | "span:status" => keywords(&STATUS_KEYWORDS),
        "kind" | "span:kind" => keywords(&KIND_KEYWORDS),
        _ => {
            let field = if let Some(key) = tag.strip_prefix("resource.") {
                Field::Resource(key.to_owned())
            } else if let Some(key) = tag.strip_prefix("span.") {
                Field::Span(key.to_owned())
            } else if let Some(key) = tag.strip_prefix('.') {
                Field::Unscoped(key.to_owned())
            } else {
                return Source::Fixed(Vec::new());
            };
            if matches!(&field, Field::Resource(key) | Field::Span(key) | Field::Unscoped(key) if key.is_empty()) {
                return Source::Fixed(Vec::new());
            }
            Source::Attribute(field)
        }
    }
}

/// String values as tag values, without empties and duplicates, sorted, at most `limit`.
pub(crate) fn string_values(values: impl IntoIterator<Item = String>, limit: usize) -> TagValuesResponse {
    let unique: BTreeSet<String> = values.into_iter().filter(|value| !value.is_empty()).collect();
    TagValuesResponse {
        tag_values: unique
            .into_iter()
            .take(limit)
            .map(|value| TagValue { kind: "string", value })
            .collect(),
    }
}

/// The values an attribute has on the spans of `sample` that match `query`, typed, sorted by value, at most
/// `limit`. Arrays, maps and bytes are left out.
pub(crate) fn attribute_values(
    sample: &[StoredTrace],
    query: &Query,
    field: &Field,
    limit: usize,
) -> TagValuesResponse {
    let mut values: BTreeSet<(String, &'static str)> = BTreeSet::new();
    for trace in sample {
        for span in query.matching_spans(trace) {
            let Some(value) = field.attribute(span, trace.resource_of(span)) else {
                continue;
            };
            let typed = match value.as_ref() {
                model::Value::Str(text) => Some((text.clone(), "string")),
                model::Value::Int(number) => Some((number.to_string(), "int")),
                model::Value::Double(number) if number.is_finite() => Some((number.to_string(), "float")),
                model::Value::Bool(flag) => Some((flag.to_string(), "bool")),
                _ => None,
            };
            if let Some(typed) = typed.filter(|(text, _)| !text.is_empty()) {
                values.insert(typed);
            }
        }
    }
    TagValuesResponse {
        tag_values: values
            .into_iter()
            .take(limit)
            .map(|(value, kind)| TagValue { kind, value })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fixtures;

    #[test]
    fn tag_names_by_scope() {
        let sample = [fixtures::trace()];
        let all = serde_json::to_value(tag_names(&sample, &Query::match_all(), &scopes(None), 100)).expect("json");
        assert_eq!(
            all,
            json!({"scopes": [
                {"name": "resource", "tags": ["host.name", "k8s.cluster.name", "process.pid", "service.name"]},
                {"name": "span", "tags": [
                    "big", "blob", "cached", "db.system", "empty", "empty.any", "http.response.status_code",
                    "http.route", "labels", "max.safe", "messaging.system", "min.unsafe", "ratio", "tags.list"
                ]},
                {"name": "intrinsic", "tags": ["duration", "kind", "name", "status", "traceDuration"]}
            ]})
        );
        // Narrowed by a query, one scope, capped.
        let query = Query::parse(r#"{ resource.service.name = "db-proxy" }"#).expect("valid");
        let narrowed = serde_json::to_value(tag_names(&sample, &query, &scopes(Some("span")), 1)).expect("json");
        assert_eq!(narrowed, json!({"scopes": [{"name": "span", "tags": ["db.system"]}]}));
        assert!(scopes(Some("event")).is_empty());
        assert!(!need_sample(&scopes(Some("intrinsic"))));
        // With no data, service.name is still offered.
        let empty =
            serde_json::to_value(tag_names(&[], &Query::match_all(), &scopes(Some("resource")), 10)).expect("json");
        assert_eq!(
            empty,
            json!({"scopes": [{"name": "resource", "tags": ["service.name"]}]})
        );
    }

    #[test]
    fn tag_value_sources() {
        assert_eq!(source("resource.service.name"), Source::Services);
        assert_eq!(source("name"), Source::SpanNames);
        assert_eq!(
            serde_json::to_value(TagValuesResponse {
                tag_values: match source("status") {
                    Source::Fixed(values) => values,
                    other => panic!("{other:?}"),
                }
            })
            .expect("json"),
            json!({"tagValues": [
                {"type": "keyword", "value": "ok"},
                {"type": "keyword", "value": "error"},
                {"type": "keyword", "value": "unset"}
            ]})
        );
        assert!(matches!(source("kind"), Source::Fixed(values) if values.len() == 6));
        assert_eq!(
            source("span.http.route"),
            Source::Attribute(Field::Span("http.route".into()))
        );
        assert_eq!(
            source(".k8s.pod.ip"),
            Source::Attribute(Field::Unscoped("k8s.pod.ip".into()))
        );
        assert_eq!(source("duration"), Source::Fixed(Vec::new()));
        assert_eq!(source("event.name"), Source::Fixed(Vec::new()));
        assert_eq!(source("span."), Source::Fixed(Vec::new()));
    }

    #[test]
    fn attribute_values_are_typed_sorted_and_capped() {
        let sample = [fixtures::trace()];
        let values = |tag: &str, limit: usize| {
            let field = match source(tag) {
                Source::Attribute(field) => field,
                Source::Services => Field::Resource(SERVICE_NAME.to_owned()),
                other => panic!("{tag}: {other:?}"),
            };
            serde_json::to_value(attribute_values(&sample, &Query::match_all(), &field, limit)).expect("json")
        };
        assert_eq!(
            values("span.http.response.status_code", 10),
            json!({"tagValues": [{"type": "int", "value": "500"}]})
        );
        assert_eq!(
            values("span.cached", 10),
            json!({"tagValues": [{"type": "bool", "value": "false"}]})
        );
        assert_eq!(
            values("span.ratio", 10),
            json!({"tagValues": [{"type": "float", "value": "0.25"}]})
        );
        assert_eq!(
            values("span.tags.list", 10),
            json!({"tagValues": []}),
            "arrays are left out"
        );
        assert_eq!(
            values("resource.service.name", 10),
            json!({"tagValues": [
                {"type": "string", "value": "OTLPResourceNoServiceName"},
                {"type": "string", "value": "cart"},
                {"type": "string", "value": "db-proxy"},
                {"type": "string", "value": "orphan"}
            ]})
        );
        assert_eq!(
            values("resource.service.name", 1)["tagValues"].as_array().map(Vec::len),
            Some(1)
        );
        assert_eq!(
            serde_json::to_value(string_values(["b".into(), String::new(), "a".into(), "b".into()], 10)).expect("json"),
            json!({"tagValues": [{"type": "string", "value": "a"}, {"type": "string", "value": "b"}]})
        );
    }
}
