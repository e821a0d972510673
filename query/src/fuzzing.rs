//! For the cargo-fuzz targets in `fuzz/` (`traceql`, `jaeger_params`) only: the parsers and planners the
//! Jaeger and Tempo handlers run on a request before they touch storage, which are private to this crate.
//! Each function runs the handlers' own code, with the default [`QueryLimits`]; errors are the message the
//! client would get. Not an API: hidden from the docs, and nothing but the fuzz targets calls it.

use axum::extract::Path;
use tracepost_storage::model::TraceId;
use tracepost_storage::{SpanFilter, StoredTrace, TimeRange};

use crate::api::QueryError;
use crate::limits::QueryLimits;
use crate::params::{self, Params};
use crate::tempo::{self, search, tags, TempoError};
use crate::traceql::Query;

fn query_error(error: QueryError) -> String {
    error.to_string()
}

fn tempo_error(error: TempoError) -> String {
    match error {
        TempoError::BadRequest(message) => message,
        other => format!("{other:?}"),
    }
}

/// Go's `strconv.ParseInt`, as the Jaeger parameters are parsed.
pub fn parse_int(text: &str) -> Result<i64, String> {
    params::parse_int(text)
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    params::parse_bool(text)
}

/// Go's `time.ParseDuration`, in nanoseconds.
pub fn parse_go_duration(text: &str) -> Result<i64, String> {
    params::parse_go_duration(text)
}

/// An RFC 3339 time, in Unix nanoseconds (api_v3's `query.startTimeMin`, …).
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    params::parse_rfc3339(text)
}

/// Jaeger's `tags` parameter: a JSON object of strings, or logfmt.
pub fn jaeger_tags(text: &str) -> Result<Vec<(String, String)>, String> {
    crate::search::parse_tags(text).map_err(query_error)
}

/// What a Jaeger search parses a request into: the storage filter, the tags every matching span has, and the
/// trace limit.
pub type JaegerSearch = (SpanFilter, Vec<(String, String)>, usize);

/// `GET /api/traces` (without `traceID`) with these parameters, at `now_ns`.
pub fn jaeger_v1_search(pairs: Vec<(String, String)>, now_ns: i64) -> Result<JaegerSearch, String> {
    crate::search::parse_v1_search(&Params::new(pairs), now_ns, &QueryLimits::default())
        .map(|search| (search.filter, search.tags, search.limit))
        .map_err(query_error)
}

/// `GET /api/v3/traces` and `/api/v3/trace-summaries` with these parameters.
pub fn jaeger_v3_search(pairs: Vec<(String, String)>) -> Result<JaegerSearch, String> {
    crate::search::parse_v3_search(&Params::new(pairs), &QueryLimits::default())
        .map(|search| (search.filter, search.tags, search.limit))
        .map_err(query_error)
}

/// The trace ID of `GET /api/traces/{id}` and `/api/v3/traces/{id}`.
pub fn jaeger_trace_id(segment: &str) -> Result<TraceId, String> {
    crate::api::parse_trace_id(Ok(Path(segment.to_owned())), "traceID").map_err(query_error)
}

/// The `start`/`end` hint of `GET /api/traces/{id}`.
pub fn jaeger_trace_range(pairs: &[(String, String)]) -> Result<TimeRange, String> {
    crate::api::parse_v1_range(pairs).map_err(query_error)
}

/// What a Tempo search parses a request into: the query (legacy parameters folded in), the storage filter
/// (given `services`, the service list), the trace limit and spans per span set.
pub type TempoSearch = (Query, SpanFilter, usize, usize);

/// `GET /api/search` with these parameters, at `now_ns`, up to the storage filter it selects candidates by.
pub fn tempo_search(pairs: Vec<(String, String)>, now_ns: i64, services: &[String]) -> Result<TempoSearch, String> {
    let request = search::parse_request(&Params::new(pairs), now_ns, &QueryLimits::default())?;
    let filter = tempo_span_filter(&request.query, services, request.start_ns, request.end_ns);
    Ok((request.query, filter, request.limit, request.spans_per_span_set))
}

/// The storage filter a Tempo search selects candidate spans by, `services` being the service list (read only
/// when the query needs it, as the handler does).
pub fn tempo_span_filter(query: &Query, services: &[String], start_ns: i64, end_ns: i64) -> SpanFilter {
    let known = search::needs_service_list(query).then_some(services);
    search::span_filter(query, known, start_ns, end_ns)
}

/// The search response for traces found by `query`, as JSON.
pub fn tempo_search_response(traces: &[StoredTrace], query: &Query, spans_per_span_set: usize) -> serde_json::Value {
    let found = tracepost_storage::SearchResult {
        traces: traces.to_vec(),
        complete: true,
        inspected_traces: 1,
        inspected_bytes: 0,
    };
    serde_json::to_value(search::response(&found, query, spans_per_span_set)).expect("serializes")
}

/// A trace ID as Tempo's search results write it (no leading zeros).
pub fn tempo_trace_id(trace: &StoredTrace) -> String {
    search::trimmed_trace_id(trace)
}

/// The trace ID of `GET /api/traces/{id}` and `/api/v2/traces/{id}` (Tempo): 1 to 32 hex characters.
pub fn tempo_trace_id_segment(segment: &str) -> Option<TraceId> {
    TraceId::parse_hex(segment.trim())
}

/// The `start`/`end` hint of Tempo's trace-by-ID routes.
pub fn tempo_trace_range(pairs: Vec<(String, String)>) -> Result<TimeRange, String> {
    tempo::trace_range(&Params::new(pairs)).map_err(tempo_error)
}

/// What a Tempo tag request parses into: the narrowing query, the sampled window and the limit.
pub type TempoTagRequest = (Query, (i64, i64), usize);

/// `GET /api/v2/search/tags` and `/api/v2/search/tag/{tag}/values` with these parameters.
pub fn tempo_tag_request(pairs: Vec<(String, String)>) -> Result<TempoTagRequest, String> {
    let params = Params::new(pairs);
    let query = tempo::narrowing_query(&params, &QueryLimits::default()).map_err(tempo_error)?;
    let window = tempo::tag_window(&params).map_err(tempo_error)?;
    Ok((query, window, tempo::tag_limit(&params)))
}

/// `GET /api/v2/search/tags?scope=…` answered from `sample`, as JSON.
pub fn tempo_tag_names(sample: &[StoredTrace], query: &Query, scope: Option<&str>, limit: usize) -> serde_json::Value {
    let scopes = tags::scopes(scope);
    serde_json::to_value(tags::tag_names(sample, query, &scopes, limit)).expect("serializes")
}

/// `GET /api/v2/search/tag/{tag}/values` answered from `sample` (and `services` for the service names), as
/// JSON; `None` for the span names, which come from the operations dictionary.
pub fn tempo_tag_values(
    tag: &str,
    sample: &[StoredTrace],
    services: &[String],
    query: &Query,
    limit: usize,
) -> Option<serde_json::Value> {
    let response = match tags::source(tag) {
        tags::Source::Services => tags::string_values(
            services
                .iter()
                .filter(|service| query.service_allowed(service))
                .cloned(),
            limit,
        ),
        tags::Source::SpanNames => return None,
        tags::Source::Fixed(tag_values) => return Some(serde_json::json!({ "tagValues": tag_values })),
        tags::Source::Attribute(field) => tags::attribute_values(sample, query, &field, limit),
    };
    Some(serde_json::to_value(response).expect("serializes"))
}
