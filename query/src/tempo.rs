//! The Tempo HTTP API subset Grafana's Tempo data source uses (query-api-contracts.md §6), served on its own
//! listener (`--tempo-listen`).
//!
//! * `GET /api/echo` (Grafana's "Save & test"), `GET /ready`, `GET /api/status/buildinfo`.
//! * `GET /api/v2/traces/{id}` and `GET /api/traces/{id}` (`start`/`end` in Unix seconds, optional): with
//!   `Accept: application/protobuf` a `TraceByIDResponse` (v2) or `Trace` (v1) in protobuf, as Grafana asks;
//!   otherwise Tempo's JSON.
//! * `GET /api/search`: a [`traceql`](crate::traceql) query (or the legacy `tags`, `minDuration`,
//!   `maxDuration`) over `start`/`end` (default: the last hour), at most `limit` traces (20), `spss` spans per
//!   span set (3). Only fields every Grafana version decodes are written.
//! * `GET /api/v2/search/tags` and `GET /api/v2/search/tag/{tag}/values`: services and span names from the
//!   dictionaries, keywords for `status` and `kind`, and attribute names and values from a bounded sample of
//!   recent traces (so attribute autocomplete covers what was seen lately, not everything ever stored).
//!
//! Errors are plain text with Tempo's messages where Grafana may show them. Unknown query parameters are
//! ignored (Grafana sends a stray `tag=` with tag values).

mod format;
pub(crate) mod search;
pub(crate) mod tags;

use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query as QueryString, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tracepost_storage::model::TraceId;
use tracepost_storage::{PostgresReader, SearchBudget, SearchResult, SpanFilter, StorageError, StoredTrace, TimeRange};

use crate::api::{mark_truncated, QueryError, RETRY_AFTER_SECONDS};
use crate::blocking::cpu_heavy;
use crate::limits::{QueryLimits, Shared};
use crate::otlp_json::to_traces_data;
use crate::params::Params;
use crate::search::span_count;
use crate::traceql::Query;
use format::{TagValuesResponse, TagsResponse};
use tags::Source;

/// How far a trace-by-ID `start`/`end` hint is widened on each side (spans may start a little outside it).
const RANGE_SLACK_NANOS: i64 = 10 * 60 * 1_000_000_000;
/// Traces read to suggest attribute names and values.
const SAMPLE_TRACES: usize = 50;
/// The work one autocomplete request may do.
const SAMPLE_BUDGET: SearchBudget = SearchBudget {
    page_spans: 1000,
    max_pages: 3,
    max_time: Duration::from_millis(200),
};
/// Tag names per scope and tag values at most, when the request says nothing (Grafana asks for 5000).
const DEFAULT_TAG_LIMIT: usize = 5000;
/// Services whose span names `name` values may list when the query selects several.
const MAX_SERVICES_FOR_NAMES: usize = 100;
const PROTOBUF: &str = "application/protobuf";

/// The Tempo API router, reading from `reader`, within the default [`QueryLimits`].
pub fn tempo_router(reader: PostgresReader) -> Router {
    tempo_router_with_limits(reader, QueryLimits::default())
}

/// The Tempo API router, reading from `reader`, within `limits`.
pub fn tempo_router_with_limits(reader: PostgresReader, limits: QueryLimits) -> Router {
    let reader = reader
        .with_max_spans_per_trace(limits.max_spans_per_trace)
        .with_max_spans_per_search(limits.max_spans_per_search);
    Router::new()
        .route("/api/echo", get(echo))
        .route("/ready", get(ready))
        .route("/api/status/buildinfo", get(build_info))
        .route("/api/v2/traces/{trace_id}", get(trace_v2))
        .route("/api/traces/{trace_id}", get(trace_v1))
        .route("/api/search", get(search_traces))
        .route("/api/v2/search/tags", get(search_tags))
        .route("/api/v2/search/tag/{tag}/values", get(search_tag_values))
        .with_state(Shared { reader, limits })
}

/// Why a request failed; answered as plain text, as Tempo (Go's `http.Error`) does.
#[derive(Debug)]
pub(crate) enum TempoError {
    BadRequest(String),
    NotFound,
    /// Storage failed; the cause has been logged and is never sent.
    Internal,
    /// The database could not answer; the client may retry.
    Unavailable,
}

impl IntoResponse for TempoError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
            Self::NotFound => (StatusCode::NOT_FOUND, "trace not found".to_owned()),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_owned()),
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable, retry later".to_owned(),
            ),
        };
        let mut response = (
            status,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            format!("{message}\n"),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, RETRY_AFTER_SECONDS.into());
        }
        response
    }
}

fn storage_failed(what: &str, error: &StorageError) -> TempoError {
    match crate::api::storage_failed(what, error) {
        QueryError::Unavailable => TempoError::Unavailable,
        _ => TempoError::Internal,
    }
}

fn params(query: Result<QueryString<Vec<(String, String)>>, QueryRejection>) -> Result<Params, TempoError> {
    let QueryString(pairs) = query.map_err(|rejection| TempoError::BadRequest(rejection.body_text()))?;
    Ok(Params::new(pairs))
}

async fn echo() -> &'static str {
    "echo"
}

async fn ready() -> &'static str {
    "ready"
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BuildInfo {
    version: &'static str,
    revision: &'static str,
    branch: &'static str,
    build_date: &'static str,
    build_user: &'static str,
    go_version: &'static str,
}

async fn build_info() -> Json<BuildInfo> {
    Json(BuildInfo {
        version: env!("CARGO_PKG_VERSION"),
        revision: option_env!("TRACEPOST_REVISION").unwrap_or("unknown"),
        branch: option_env!("TRACEPOST_BRANCH").unwrap_or("unknown"),
        build_date: option_env!("TRACEPOST_BUILD_DATE").unwrap_or("unknown"),
        build_user: "unknown",
        go_version: "",
    })
}

// === trace by ID ===

#[derive(Clone, Copy, PartialEq, Eq)]
enum TraceApi {
    /// `/api/traces/{id}`: a bare `Trace`.
    V1,
    /// `/api/v2/traces/{id}`: a `TraceByIDResponse`.
    V2,
}

async fn trace_v2(
    State(Shared { reader, .. }): State<Shared>,
    path: Result<Path<String>, PathRejection>,
    query: Result<QueryString<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, TempoError> {
    trace_by_id(&reader, path, query, &headers, TraceApi::V2).await
}

async fn trace_v1(
    State(Shared { reader, .. }): State<Shared>,
    path: Result<Path<String>, PathRejection>,
    query: Result<QueryString<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, TempoError> {
    trace_by_id(&reader, path, query, &headers, TraceApi::V1).await
}

async fn trace_by_id(
    reader: &PostgresReader,
    path: Result<Path<String>, PathRejection>,
    query: Result<QueryString<Vec<(String, String)>>, QueryRejection>,
    headers: &HeaderMap,
    api: TraceApi,
) -> Result<Response, TempoError> {
    let malformed = || TempoError::BadRequest("invalid trace id: expected 1 to 32 hex characters".to_owned());
    let Path(text) = path.map_err(|_| malformed())?;
    let trace_id = TraceId::parse_hex(text.trim()).ok_or_else(malformed)?;
    let range = trace_range(&params(query)?)?;
    let trace = match reader.get_trace(trace_id, range).await {
        Ok(Some(trace)) if !trace.spans.is_empty() => trace,
        Ok(_) => return Err(TempoError::NotFound),
        Err(error) => return Err(storage_failed("reading a trace", &error)),
    };
    let protobuf = wants_protobuf(headers);
    let mut response = cpu_heavy(trace.spans.len(), || render_trace(&trace, api, protobuf));
    mark_truncated(&mut response, &trace);
    Ok(response)
}

fn render_trace(trace: &StoredTrace, api: TraceApi, protobuf: bool) -> Response {
    let data = to_traces_data(trace);
    if protobuf {
        let body = match api {
            TraceApi::V2 => format::trace_by_id_response_protobuf(&data),
            TraceApi::V1 => format::trace_protobuf(&data),
        };
        return ([(header::CONTENT_TYPE, PROTOBUF)], body).into_response();
    }
    let trace = format::trace_json(&data);
    match api {
        TraceApi::V2 => Json(serde_json::json!({ "trace": trace })).into_response(),
        TraceApi::V1 => Json(trace).into_response(),
    }
}

/// Whether `Accept` names `application/protobuf` (parameters and other media types aside).
fn wants_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|media| media.trim().eq_ignore_ascii_case(PROTOBUF))
        })
}

/// The optional `start`/`end` hint (Unix seconds; 0 is absent), widened by [`RANGE_SLACK_NANOS`].
pub(crate) fn trace_range(params: &Params) -> Result<TimeRange, TempoError> {
    let start = search::seconds(params, "start").map_err(TempoError::BadRequest)?;
    let end = search::seconds(params, "end").map_err(TempoError::BadRequest)?;
    if start != 0 && end != 0 && end <= start {
        return Err(TempoError::BadRequest(format!(
            "http parameter start must be before end. received start={start} end={end}"
        )));
    }
    let nanos = |seconds: i64| (seconds != 0).then(|| seconds.saturating_mul(1_000_000_000));
    Ok(TimeRange {
        start: nanos(start).map(|nanos| nanos.saturating_sub(RANGE_SLACK_NANOS)),
        end: nanos(end).map(|nanos| nanos.saturating_add(RANGE_SLACK_NANOS)),
    })
}

// === search ===

/// What storage selects candidates by for `query` (reading the service list when the query selects services
/// by a regular expression or `!=`).
async fn span_filter(
    reader: &PostgresReader,
    query: &Query,
    start_ns: i64,
    end_ns: i64,
) -> Result<SpanFilter, TempoError> {
    let known = if search::needs_service_list(query) {
        Some(
            reader
                .services()
                .await
                .map_err(|error| storage_failed("listing services", &error))?,
        )
    } else {
        None
    };
    Ok(search::span_filter(query, known.as_deref(), start_ns, end_ns))
}

/// Newest-first traces with a span matching `query`, with how much was inspected and whether that was
/// everything that could match.
async fn find(
    reader: &PostgresReader,
    query: &Query,
    (start_ns, end_ns): (i64, i64),
    limit: usize,
    budget: SearchBudget,
) -> Result<SearchResult, TempoError> {
    let filter = span_filter(reader, query, start_ns, end_ns).await?;
    reader
        .search(
            &filter,
            limit,
            budget,
            |span, resource| query.may_match_span(span, resource),
            |trace| cpu_heavy(trace.spans.len(), || query.matches_trace(trace)),
        )
        .await
        .map_err(|error| storage_failed("searching traces", &error))
}

async fn search_traces(
    State(Shared { reader, limits }): State<Shared>,
    query: Result<QueryString<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, TempoError> {
    let params = params(query)?;
    let now = tracepost_storage::time::now_unix_nanos();
    let request = search::parse_request(&params, now, &limits).map_err(TempoError::BadRequest)?;
    let window = (request.start_ns, request.end_ns);
    let found = find(&reader, &request.query, window, request.limit, SearchBudget::default()).await?;
    Ok(cpu_heavy(span_count(&found.traces), || {
        let mut response = Json(search::response(&found, &request.query, request.spans_per_span_set)).into_response();
        if !found.complete {
            response.headers_mut().insert(
                crate::limits::SEARCH_INCOMPLETE_HEADER,
                http::HeaderValue::from_static("true"),
            );
        }
        response
    }))
}

// === tags ===

/// The `q` narrowing a tag request; an invalid or incomplete one is ignored, as Tempo does (Grafana sends what
/// the user is typing), but one over a limit is refused.
pub(crate) fn narrowing_query(params: &Params, limits: &QueryLimits) -> Result<Query, TempoError> {
    match params.get("q").map(|text| Query::parse_with(text, limits.traceql())) {
        None => Ok(Query::match_all()),
        Some(Ok(query)) => Ok(query),
        Some(Err(error)) if error.is_limit_exceeded() => {
            Err(TempoError::BadRequest(format!("invalid TraceQL query: {error}")))
        }
        Some(Err(_)) => Ok(Query::match_all()),
    }
}

pub(crate) fn tag_limit(params: &Params) -> usize {
    params
        .get("limit")
        .and_then(|text| text.parse::<usize>().ok())
        .filter(|limit| *limit > 0)
        .unwrap_or(DEFAULT_TAG_LIMIT)
}

/// The window tags are sampled from: `start`/`end` (Unix seconds) when given, else the last hour.
pub(crate) fn tag_window(params: &Params) -> Result<(i64, i64), TempoError> {
    let start = search::seconds(params, "start").map_err(TempoError::BadRequest)?;
    let end = search::seconds(params, "end").map_err(TempoError::BadRequest)?;
    if start != 0 && end != 0 && end <= start {
        return Err(TempoError::BadRequest(format!(
            "http parameter start must be before end. received start={start} end={end}"
        )));
    }
    let now = tracepost_storage::time::now_unix_nanos();
    let end_ns = if end == 0 {
        now
    } else {
        end.saturating_mul(1_000_000_000)
    };
    let start_ns = if start == 0 {
        end_ns.saturating_sub(search::DEFAULT_WINDOW_NS)
    } else {
        start.saturating_mul(1_000_000_000)
    };
    Ok((start_ns, end_ns))
}

/// A bounded sample of recent traces matching `query`.
async fn sample(reader: &PostgresReader, query: &Query, params: &Params) -> Result<Vec<StoredTrace>, TempoError> {
    let window = tag_window(params)?;
    Ok(find(reader, query, window, SAMPLE_TRACES, SAMPLE_BUDGET).await?.traces)
}

async fn search_tags(
    State(Shared { reader, limits }): State<Shared>,
    query: Result<QueryString<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<TagsResponse>, TempoError> {
    let params = params(query)?;
    let scopes = tags::scopes(params.get("scope"));
    let query = narrowing_query(&params, &limits)?;
    let sample = if tags::need_sample(&scopes) {
        sample(&reader, &query, &params).await?
    } else {
        Vec::new()
    };
    Ok(Json(tags::tag_names(&sample, &query, &scopes, tag_limit(&params))))
}

async fn search_tag_values(
    State(Shared { reader, limits }): State<Shared>,
    path: Result<Path<String>, PathRejection>,
    query: Result<QueryString<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<TagValuesResponse>, TempoError> {
    let Path(tag) = path.map_err(|rejection| TempoError::BadRequest(rejection.body_text()))?;
    let params = params(query)?;
    let limit = tag_limit(&params);
    let query = narrowing_query(&params, &limits)?;
    let response = match tags::source(&tag) {
        Source::Services => tags::string_values(services(&reader, &query).await?, limit),
        Source::SpanNames => tags::string_values(span_names(&reader, &query, limit).await?, limit),
        Source::Fixed(tag_values) => TagValuesResponse { tag_values },
        Source::Attribute(field) => {
            let sample = sample(&reader, &query, &params).await?;
            tags::attribute_values(&sample, &query, &field, limit)
        }
    };
    Ok(Json(response))
}

/// The services `query` allows.
async fn services(reader: &PostgresReader, query: &Query) -> Result<Vec<String>, TempoError> {
    let mut services = reader
        .services()
        .await
        .map_err(|error| storage_failed("listing services", &error))?;
    services.retain(|service| query.service_allowed(service));
    Ok(services)
}

/// Span names: of the services `query` selects (`{resource.service.name="x"}`, as Grafana sends once a
/// service is chosen), or of every service.
async fn span_names(reader: &PostgresReader, query: &Query, limit: usize) -> Result<Vec<String>, TempoError> {
    let selected = match query.exact_services() {
        Some(exact) => Some(exact),
        None if query.constrains_service() => Some(services(reader, query).await?),
        None => None,
    };
    let Some(selected) = selected else {
        return reader
            .operation_names(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(|error| storage_failed("listing span names", &error));
    };
    let mut names = Vec::new();
    for service in selected.iter().take(MAX_SERVICES_FOR_NAMES) {
        let operations = reader
            .operations(service, None)
            .await
            .map_err(|error| storage_failed("listing operations", &error))?;
        names.extend(operations.into_iter().map(|(name, _)| name));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(pairs)
    }

    #[test]
    fn protobuf_is_chosen_by_the_accept_header() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_static(value));
            wants_protobuf(&headers)
        };
        assert!(with("application/protobuf"));
        assert!(with("application/json;q=0.5, Application/Protobuf; q=1"));
        assert!(!with("application/json"));
        assert!(!wants_protobuf(&HeaderMap::new()));
    }

    #[test]
    fn trace_time_hints_are_seconds_widened_by_ten_minutes() {
        let ten_minutes = 600_000_000_000;
        let range = trace_range(&params(&[("start", "1754038800"), ("end", "1754042400")])).expect("valid");
        assert_eq!(
            range,
            TimeRange {
                start: Some(1_754_038_800_000_000_000 - ten_minutes),
                end: Some(1_754_042_400_000_000_000 + ten_minutes),
            }
        );
        assert_eq!(
            trace_range(&params(&[("start", "0"), ("end", "0")])).expect("valid"),
            TimeRange::default()
        );
        let error = |pairs: &[(&str, &str)]| match trace_range(&params(pairs)) {
            Err(TempoError::BadRequest(message)) => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            error(&[("start", "x")]),
            "invalid start: strconv.ParseInt: parsing \"x\": invalid syntax"
        );
        assert_eq!(
            error(&[("start", "10"), ("end", "10")]),
            "http parameter start must be before end. received start=10 end=10"
        );
    }

    #[test]
    fn tag_requests_ignore_bad_queries_and_limits() {
        let narrowing = |q: &str| narrowing_query(&params(&[("q", q)]), &QueryLimits::default());
        assert!(narrowing("{ resource.service.name = ").expect("ignored").is_match_all());
        assert!(!narrowing(r#"{resource.service.name="a"}"#)
            .expect("valid")
            .is_match_all());
        let too_deep = format!("{{{}", "(".repeat(100));
        assert!(
            matches!(narrowing(&too_deep), Err(TempoError::BadRequest(message)) if message.contains("nested more than"))
        );
        assert_eq!(tag_limit(&params(&[("limit", "5000"), ("tag", "name")])), 5000);
        assert_eq!(tag_limit(&params(&[("limit", "-1")])), DEFAULT_TAG_LIMIT);
        assert_eq!(tag_limit(&params(&[("limit", "7")])), 7);
        let (start, end) = tag_window(&params(&[("start", "1795299000"), ("end", "1795302000")])).expect("valid");
        assert_eq!((start, end), (1_795_299_000_000_000_000, 1_795_302_000_000_000_000));
        let (start, end) = tag_window(&params(&[("end", "1795302000")])).expect("valid");
        assert_eq!(end - start, search::DEFAULT_WINDOW_NS);
    }

    #[tokio::test]
    async fn errors_are_plain_text_with_a_trailing_newline() {
        let response = TempoError::NotFound.into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE).map(HeaderValue::as_bytes),
            Some(&b"text/plain; charset=utf-8"[..])
        );
        let body = axum::body::to_bytes(response.into_body(), 1024).await.expect("body");
        assert_eq!(&body[..], b"trace not found\n");
    }
}
