//! `GET /api/search`: its parameters, the storage filter a query implies, and the response.

use std::collections::HashSet;

use tracepost_storage::model::{self, SpanId, StoredResource, StoredSpan};
use tracepost_storage::{SearchResult, SpanFilter, StoredTrace};

use super::format::{
    Attribute, AttributeValue, SearchMetrics, SearchResponse, SearchSpan, SpanSet, TraceSearchMetadata,
};
use crate::limits::QueryLimits;
use crate::params::{parse_go_duration, Params};
use crate::traceql::{self, kind_keyword, span_status, Comparison, Field, Op, Operand, Query};

/// Tempo's default number of traces.
const DEFAULT_LIMIT: usize = 20;
/// Tempo's default spans per span set.
const DEFAULT_SPANS_PER_SPAN_SET: usize = 3;
/// The window searched when the request gives none (Tempo then searches recent data only).
pub(crate) const DEFAULT_WINDOW_NS: i64 = 3600 * 1_000_000_000;
/// Tempo's `rootServiceName` for a trace whose root span has not arrived.
const ROOT_NOT_RECEIVED: &str = "<root span not yet received>";

/// A parsed search request.
#[derive(Debug)]
pub(crate) struct SearchRequest {
    pub(crate) query: Query,
    /// Span start bounds, inclusive, Unix nanoseconds.
    pub(crate) start_ns: i64,
    pub(crate) end_ns: i64,
    pub(crate) limit: usize,
    pub(crate) spans_per_span_set: usize,
}

/// Go's `strconv.Atoi`, with its error text.
fn atoi(text: &str) -> Result<i64, String> {
    text.parse::<i64>().map_err(|error| {
        let reason = match error.kind() {
            std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => "value out of range",
            _ => "invalid syntax",
        };
        format!("strconv.Atoi: parsing {text:?}: {reason}")
    })
}

/// Unix seconds (`start`, `end`); absent, empty and `0` are all "not given".
pub(crate) fn seconds(params: &Params, name: &str) -> Result<i64, String> {
    params
        .get(name)
        .map(|text| crate::params::parse_int(text).map_err(|error| format!("invalid {name}: {error}")))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// The window in nanoseconds: the given one, or the last hour.
pub(crate) fn window_nanos(window: Option<(i64, i64)>, now_ns: i64) -> (i64, i64) {
    match window {
        Some((start, end)) => (start.saturating_mul(1_000_000_000), end.saturating_mul(1_000_000_000)),
        None => (now_ns.saturating_sub(DEFAULT_WINDOW_NS), now_ns),
    }
}

/// Parses the parameters in Tempo's order, with Tempo's messages.
pub(crate) fn parse_request(params: &Params, now_ns: i64, limits: &QueryLimits) -> Result<SearchRequest, String> {
    let start = seconds(params, "start")?;
    let end = seconds(params, "end")?;
    let text = params.get("q");
    let mut query = match text {
        Some(text) => {
            Query::parse_with(text, limits.traceql()).map_err(|error| format!("invalid TraceQL query: {error}"))?
        }
        None => Query::match_all(),
    };
    if let Some(tags) = params.get("tags") {
        if text.is_some() {
            return Err("invalid request: can't specify tags and q in the same query".into());
        }
        let pairs = parse_logfmt(tags).map_err(|error| format!("invalid tags: {error}"))?;
        let mut seen = HashSet::new();
        for (key, value) in pairs {
            if !seen.insert(key.clone()) {
                return Err(format!("invalid tags: tag {key} has been set twice"));
            }
            query = query.and(legacy_tag(key, value));
        }
    }
    let duration = |name: &str| -> Result<Option<i64>, String> {
        params
            .get(name)
            .map(|text| parse_go_duration(text).map_err(|error| format!("invalid {name}: {error}")))
            .transpose()
    };
    let min_duration = duration("minDuration")?;
    let max_duration = duration("maxDuration")?;
    if let (Some(min), Some(max)) = (min_duration, max_duration) {
        if min != 0 && min > max {
            return Err("invalid maxDuration: must be greater than minDuration".into());
        }
    }
    // Tempo's legacy duration bounds are on the trace.
    if let Some(min) = min_duration.filter(|min| *min > 0) {
        query = query.and(Comparison::new(Field::TraceDuration, Op::Ge, Operand::Duration(min)));
    }
    if let Some(max) = max_duration.filter(|max| *max > 0) {
        query = query.and(Comparison::new(Field::TraceDuration, Op::Le, Operand::Duration(max)));
    }
    let positive = |name: &str, default: usize| -> Result<usize, String> {
        let Some(text) = params.get(name) else {
            return Ok(default);
        };
        let number = atoi(text).map_err(|error| format!("invalid {name}: {error}"))?;
        if number <= 0 {
            return Err(format!("invalid {name}: must be a positive number"));
        }
        Ok(usize::try_from(number).unwrap_or(usize::MAX))
    };
    let limit = positive("limit", DEFAULT_LIMIT)?;
    limits.check_traces("limit", limit)?;
    let spans_per_span_set = positive("spss", DEFAULT_SPANS_PER_SPAN_SET)?;
    if spans_per_span_set > limits.max_spans_per_span_set {
        return Err(format!(
            "spss={spans_per_span_set} is over the limit of {} spans per span set: ask for fewer",
            limits.max_spans_per_span_set
        ));
    }
    let window = if start == 0 && end == 0 {
        None
    } else if end <= start {
        return Err(format!(
            "http parameter start must be before end. received start={start} end={end}"
        ));
    } else {
        Some((start, end))
    };
    let (start_ns, end_ns) = window_nanos(window, now_ns);
    Ok(SearchRequest {
        query,
        start_ns,
        end_ns,
        limit,
        spans_per_span_set,
    })
}

/// A legacy `tags` pair as a condition: `name` and `service.name` are the span name and the service, anything
/// else an attribute of the span or its resource, compared as a string.
fn legacy_tag(key: String, value: String) -> Comparison {
    let field = match key.as_str() {
        "name" => Field::Name,
        // The derived service name is stored with NUL as U+FFFD.
        traceql::SERVICE_NAME => {
            return Comparison::new(
                Field::Resource(key),
                Op::Eq,
                Operand::Str(tracepost_storage::limits::label_column(&value).into_owned()),
            );
        }
        _ => Field::Unscoped(key),
    };
    Comparison::new(field, Op::Eq, Operand::Str(value))
}

/// logfmt: `key=value key2="quoted value" flag` (a bare key has the empty value).
fn parse_logfmt(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            return Ok(pairs);
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            if c == '"' {
                return Err(format!("unexpected '\"' at pos {}", start + key.len() + 1));
            }
            key.push(c);
        }
        if key.is_empty() {
            return Err(format!("unexpected '=' at pos {}", start + 1));
        }
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '=').is_some() {
            if chars.next_if(|(_, c)| *c == '"').is_some() {
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, 't')) => value.push('\t'),
                            Some((_, escaped)) => value.push(escaped),
                            None => return Err("unterminated quoted value".into()),
                        },
                        Some((_, c)) => value.push(c),
                        None => return Err("unterminated quoted value".into()),
                    }
                }
            } else {
                while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// What storage can select candidate spans by, from what every matching span satisfies: the services (given
/// `known`, the service list, when the query selects services by other than `=`), the span name and the span
/// duration bounds.
pub(crate) fn span_filter(query: &Query, known: Option<&[String]>, start_ns: i64, end_ns: i64) -> SpanFilter {
    let services = query
        .exact_services()
        .or_else(|| known.map(<[String]>::to_vec))
        .map(|mut services| {
            services.retain(|service| query.service_allowed(service));
            services.sort();
            services.dedup();
            services
        });
    let (min_duration_ns, max_duration_ns) = query.span_duration_bounds();
    SpanFilter {
        services,
        operation: query.operation().map(str::to_owned),
        min_duration_ns,
        max_duration_ns,
        start_min_ns: start_ns,
        start_max_ns: end_ns,
        required_items: query.required_items(),
    }
}

/// Whether [`span_filter`] needs the service list.
pub(crate) fn needs_service_list(query: &Query) -> bool {
    query.exact_services().is_none() && query.constrains_service()
}

/// The search response for what a search found (traces newest first). An incomplete search (stopped at its
/// budget) says so the way Tempo's own frontend does: `completedJobs` below `totalJobs`.
pub(crate) fn response(found: &SearchResult, query: &Query, spans_per_span_set: usize) -> SearchResponse {
    SearchResponse {
        traces: found
            .traces
            .iter()
            .map(|trace| trace_metadata(trace, query, spans_per_span_set))
            .collect(),
        metrics: SearchMetrics {
            inspected_traces: u32::try_from(found.inspected_traces).unwrap_or(u32::MAX),
            inspected_bytes: found.inspected_bytes,
            completed_jobs: (!found.complete).then_some(0),
            total_jobs: (!found.complete).then_some(1),
        },
    }
}

/// A trace ID as Tempo writes it in search results: hex without leading zeros.
pub(crate) fn trimmed_trace_id(trace: &StoredTrace) -> String {
    let hex = trace.trace_id.to_hex();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// The root span: the first span without a parent. A trace whose root has not arrived (Linkerd's first proxy
/// span has the caller's span as parent, say) has none, as in Tempo.
fn root(trace: &StoredTrace) -> Option<&StoredSpan> {
    trace.spans.iter().find(|span| {
        span.span
            .parent_span_id
            .is_none_or(|parent| parent == SpanId::default())
    })
}

fn trace_metadata(trace: &StoredTrace, query: &Query, spans_per_span_set: usize) -> TraceSearchMetadata {
    let start = trace.start_time_unix_nano();
    let duration = trace.end_time_unix_nano().saturating_sub(start);
    let (root_service_name, root_trace_name) = match root(trace) {
        Some(root) => (root.service_name.clone(), root.span.original_name().to_owned()),
        None => (ROOT_NOT_RECEIVED.to_owned(), String::new()),
    };
    let matching = query.matching_spans(trace);
    let fields = query.fields();
    let spans = matching
        .iter()
        .take(spans_per_span_set)
        .map(|span| search_span(span, trace.resource_of(span), &fields))
        .collect();
    TraceSearchMetadata {
        trace_id: trimmed_trace_id(trace),
        root_service_name,
        root_trace_name,
        start_time_unix_nano: (start != 0).then(|| start.to_string()),
        duration_ms: u32::try_from(duration / 1_000_000).unwrap_or(u32::MAX),
        span_sets: vec![SpanSet {
            spans,
            matched: u32::try_from(matching.len()).unwrap_or(u32::MAX),
        }],
    }
}

fn search_span(span: &StoredSpan, resource: Option<&StoredResource>, fields: &[&Field]) -> SearchSpan {
    let duration = span.span.duration_nanos();
    let start = span.span.start_time_unix_nano;
    SearchSpan {
        span_id: span.span.span_id.to_hex(),
        name: span.span.original_name().to_owned(),
        start_time_unix_nano: (start != 0).then(|| start.to_string()),
        duration_nanos: (duration != 0).then(|| duration.to_string()),
        attributes: span_attributes(span, resource, fields),
    }
}

/// The span's values of the fields the query compared (attribute names without their scope, as Tempo keys
/// them), each key once; intrinsics that are span fields already (name, duration) are left out.
fn span_attributes(span: &StoredSpan, resource: Option<&StoredResource>, fields: &[&Field]) -> Vec<Attribute> {
    let mut attributes: Vec<Attribute> = Vec::new();
    for field in fields {
        let (key, value) = match field {
            Field::Status => ("status", AttributeValue::String(span_status(span).keyword().to_owned())),
            Field::Kind => ("kind", AttributeValue::String(kind_keyword(span.span.kind).to_owned())),
            Field::Resource(key) | Field::Span(key) | Field::Unscoped(key) => {
                let Some(value) = field
                    .attribute(span, resource)
                    .and_then(|value| attribute_value(&value))
                else {
                    continue;
                };
                (key.as_str(), value)
            }
            Field::Name | Field::Duration | Field::TraceDuration => continue,
        };
        if attributes.iter().all(|attribute| attribute.key != key) {
            attributes.push(Attribute {
                key: key.to_owned(),
                value,
            });
        }
    }
    attributes
}

fn attribute_value(value: &model::Value) -> Option<AttributeValue> {
    match value {
        model::Value::Str(text) => Some(AttributeValue::String(text.clone())),
        model::Value::Int(number) => Some(AttributeValue::Int(number.to_string())),
        model::Value::Double(number) if number.is_finite() => Some(AttributeValue::Double(*number)),
        model::Value::Bool(flag) => Some(AttributeValue::Bool(*flag)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fixtures;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(pairs)
    }

    const NOW: i64 = 1_754_042_400_000_000_000;

    #[test]
    fn grafana_search_request_parses() {
        // Grafana's request (url.Values.Encode: sorted keys; `+` already decoded to spaces by the extractor).
        let request = parse_request(
            &params(&[
                ("end", "1754042400"),
                ("limit", "20"),
                (
                    "q",
                    r#"{resource.service.name="frontend" && name="GET /cart" && status=error && duration>100ms}"#,
                ),
                ("spss", "3"),
                ("start", "1754038800"),
            ]),
            NOW,
            &QueryLimits::default(),
        )
        .expect("valid");
        assert_eq!(request.start_ns, 1_754_038_800_000_000_000);
        assert_eq!(request.end_ns, 1_754_042_400_000_000_000);
        assert_eq!(request.limit, 20);
        assert_eq!(request.spans_per_span_set, 3);
        let filter = span_filter(&request.query, None, request.start_ns, request.end_ns);
        assert_eq!(
            filter,
            SpanFilter {
                services: Some(vec!["frontend".to_owned()]),
                operation: Some("GET /cart".to_owned()),
                min_duration_ns: Some(100_000_001),
                max_duration_ns: None,
                start_min_ns: 1_754_038_800_000_000_000,
                start_max_ns: 1_754_042_400_000_000_000,
                required_items: Vec::new(),
            }
        );
    }

    #[test]
    fn defaults_are_the_last_hour_20_traces_and_3_spans() {
        let request = parse_request(&params(&[]), NOW, &QueryLimits::default()).expect("valid");
        assert!(request.query.is_match_all());
        assert_eq!((request.start_ns, request.end_ns), (NOW - DEFAULT_WINDOW_NS, NOW));
        assert_eq!((request.limit, request.spans_per_span_set), (20, 3));
        let request = parse_request(
            &params(&[("q", ""), ("start", "0"), ("end", "0"), ("tag", "x")]),
            NOW,
            &QueryLimits::default(),
        )
        .expect("empty values count as absent");
        assert!(request.query.is_match_all());
    }

    #[test]
    fn errors_use_tempo_messages() {
        let error =
            |pairs: &[(&str, &str)]| parse_request(&params(pairs), NOW, &QueryLimits::default()).expect_err("invalid");
        assert_eq!(
            error(&[("start", "yesterday")]),
            "invalid start: strconv.ParseInt: parsing \"yesterday\": invalid syntax"
        );
        assert_eq!(
            error(&[("end", "1.5")]),
            "invalid end: strconv.ParseInt: parsing \"1.5\": invalid syntax"
        );
        assert_eq!(
            error(&[("limit", "x")]),
            "invalid limit: strconv.Atoi: parsing \"x\": invalid syntax"
        );
        assert_eq!(error(&[("limit", "0")]), "invalid limit: must be a positive number");
        assert_eq!(error(&[("spss", "-1")]), "invalid spss: must be a positive number");
        assert_eq!(
            error(&[("minDuration", "fast")]),
            "invalid minDuration: time: invalid duration \"fast\""
        );
        assert_eq!(
            error(&[("minDuration", "2s"), ("maxDuration", "1s")]),
            "invalid maxDuration: must be greater than minDuration"
        );
        assert_eq!(
            error(&[("start", "20"), ("end", "10")]),
            "http parameter start must be before end. received start=20 end=10"
        );
        assert_eq!(
            error(&[("start", "20")]),
            "http parameter start must be before end. received start=20 end=0"
        );
        assert_eq!(
            error(&[("q", "{ name = }")]),
            "invalid TraceQL query: expected a value (at character 10)"
        );
        assert_eq!(
            error(&[("q", "{}"), ("tags", "a=b")]),
            "invalid request: can't specify tags and q in the same query"
        );
        assert_eq!(error(&[("tags", "a=1 a=2")]), "invalid tags: tag a has been set twice");
        assert_eq!(
            error(&[("tags", "a=\"open")]),
            "invalid tags: unterminated quoted value"
        );
    }

    #[test]
    fn limits_over_the_caps_are_refused_naming_the_cap() {
        let limits = QueryLimits {
            max_traces_per_search: 50,
            max_spans_per_span_set: 10,
            max_traceql_length: 40,
            ..QueryLimits::default()
        };
        let error = |pairs: &[(&str, &str)]| parse_request(&params(pairs), NOW, &limits).expect_err("over a cap");
        assert_eq!(
            error(&[("limit", "51")]),
            "limit=51 is over the limit of 50 traces per search: ask for fewer, or narrow the search (service, \
             operation, tags, a shorter time range)"
        );
        assert_eq!(
            error(&[("spss", "11")]),
            "spss=11 is over the limit of 10 spans per span set: ask for fewer"
        );
        assert!(
            error(&[("q", r#"{ resource.service.name = "a-rather-long-service" }"#)])
                .starts_with("invalid TraceQL query: the query is 51 bytes long, over the limit of 40 bytes")
        );
        let request = parse_request(&params(&[("limit", "50"), ("spss", "10")]), NOW, &limits).expect("at the caps");
        assert_eq!((request.limit, request.spans_per_span_set), (50, 10));
    }

    #[test]
    fn legacy_tags_and_durations_become_conditions() {
        let request = parse_request(
            &params(&[
                (
                    "tags",
                    r#"service.name=cart name="GET /cart" http.response.status_code=500"#,
                ),
                ("minDuration", "100ms"),
                ("maxDuration", "1s"),
            ]),
            NOW,
            &QueryLimits::default(),
        )
        .expect("valid");
        let trace = fixtures::trace();
        assert!(
            request.query.matches_trace(&trace),
            "A: cart, GET /cart, 500, trace of 123 ms"
        );
        let filter = span_filter(&request.query, None, 0, 1);
        assert_eq!(filter.services, Some(vec!["cart".to_owned()]));
        assert_eq!(filter.operation.as_deref(), Some("GET /cart"));
        let request = parse_request(
            &params(&[("tags", "service.name=cart"), ("minDuration", "1s")]),
            NOW,
            &QueryLimits::default(),
        )
        .expect("valid");
        assert!(!request.query.matches_trace(&trace), "the trace lasts 123 ms");
        assert_eq!(
            parse_logfmt(r#" a=1  b="x \"y\"" c= d"#),
            Ok(vec![
                ("a".into(), "1".into()),
                ("b".into(), "x \"y\"".into()),
                ("c".into(), String::new()),
                ("d".into(), String::new()),
            ])
        );
    }

    #[test]
    fn service_regexes_select_from_the_service_list() {
        let query = Query::parse(r#"{ resource.service.name =~ "ca.*|db-.*" && resource.service.name != "cat" }"#)
            .expect("valid");
        assert!(needs_service_list(&query));
        let known = ["cart", "cat", "db-proxy", "frontend"].map(str::to_owned);
        let filter = span_filter(&query, Some(&known), 0, 1);
        assert_eq!(filter.services, Some(vec!["cart".to_owned(), "db-proxy".to_owned()]));
        let query = Query::parse(r#"{ span.x = "1" }"#).expect("valid");
        assert!(!needs_service_list(&query));
        assert_eq!(span_filter(&query, None, 0, 1).services, None);
    }

    #[test]
    fn trace_ids_lose_leading_zeros() {
        let trace = fixtures::trace();
        assert_eq!(trimmed_trace_id(&trace), "a1b2c3d4e5f60718");
    }

    /// The search response form, checked field by field against Tempo's `SearchResponse` (safe field set).
    fn found(traces: Vec<StoredTrace>, inspected_traces: u64) -> SearchResult {
        SearchResult {
            traces,
            complete: true,
            inspected_traces,
            inspected_bytes: 0,
        }
    }

    #[test]
    fn an_incomplete_search_says_so_in_its_metrics() {
        let query = Query::parse("{}").expect("valid");
        let mut result = found(Vec::new(), 40);
        result.complete = false;
        result.inspected_bytes = 12_345;
        let rendered = serde_json::to_value(response(&result, &query, 3)).expect("serializable");
        assert_eq!(
            rendered["metrics"],
            json!({"inspectedTraces": 40, "inspectedBytes": "12345", "completedJobs": 0, "totalJobs": 1})
        );
    }

    #[test]
    fn renders_a_search_response_exactly_as_the_golden_file() {
        let trace = fixtures::trace();
        // Spans A (cart, ERROR, 500) and D (cart, ERROR) match; one span per set shows the count.
        let query = Query::parse(
            r#"{ resource.service.name = "cart" && status = error && (span.http.response.status_code >= 500 || kind = producer) }"#,
        )
        .expect("valid");
        let rendered = serde_json::to_value(response(&found(vec![trace], 3), &query, 1)).expect("serializable");
        let golden: serde_json::Value =
            serde_json::from_str(include_str!("../testdata/tempo_search.json")).expect("golden file is JSON");
        assert_eq!(rendered, golden, "rendered:\n{rendered:#}");
    }

    #[test]
    fn a_trace_without_root_says_so_and_zero_values_are_left_out() {
        let mut trace = fixtures::trace();
        trace.spans.remove(0);
        let query = Query::parse(r#"{ name = "compute" }"#).expect("valid");
        let rendered = serde_json::to_value(response(&found(vec![trace], 0), &query, 3)).expect("serializable");
        assert_eq!(
            rendered,
            json!({
                "traces": [{
                    "traceID": "a1b2c3d4e5f60718",
                    "rootServiceName": "<root span not yet received>",
                    "startTimeUnixNano": "1706678909210000999",
                    "durationMs": 7,
                    "spanSets": [{
                        "spans": [{
                            "spanID": "00000000000000ff",
                            "name": "compute",
                            "startTimeUnixNano": "1706678909211000000",
                            "durationNanos": "999"
                        }],
                        "matched": 1
                    }]
                }],
                "metrics": {}
            })
        );
        let empty = serde_json::to_value(response(&found(Vec::new(), 0), &query, 3)).expect("serializable");
        assert_eq!(empty, json!({"traces": [], "metrics": {}}));
    }
}
