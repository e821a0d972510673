//! Jaeger's lists and searches: services, operations, trace search and multi-get, dependencies (v1), and the
//! api_v3 services, operations, traces and trace-summaries routes.

use std::collections::{HashMap, HashSet};

use crate::limits::SEARCH_INCOMPLETE_HEADER;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tracepost_storage::model::{self, SpanKind, StatusCode as SpanStatus, StoredResource, StoredSpan, TraceId};
use tracepost_storage::{PostgresReader, SearchBudget, SearchResult, SpanFilter, StoredTrace, TimeRange};

use crate::api::{storage_failed, PrettyPrint, QueryError, V1Envelope, V1Error, V1ErrorEntry, V3Error};
use crate::blocking::cpu_heavy;
use crate::jaeger::{self, value_matches};
use crate::limits::{QueryLimits, Shared};
use crate::otlp_json::{self, OtlpJson};
use crate::params::{parse_bool, parse_go_duration, parse_int, parse_rfc3339, Params};

/// Jaeger's default search window when `start` is absent: 48 hours before `end`.
const DEFAULT_LOOKBACK_NS: i64 = 48 * 3600 * 1_000_000_000;
/// Jaeger's default `limit` (traces).
const DEFAULT_LIMIT: i64 = 100;
/// `/api/dependencies` default lookback: 24 hours, in ms.
const DEFAULT_DEPENDENCIES_LOOKBACK_MS: i64 = 24 * 3600 * 1000;
/// api_v3's default `query.searchDepth`.
const DEFAULT_SEARCH_DEPTH: i64 = 100;

/// The list and search routes, reading from `reader`.
pub(crate) fn routes(reader: PostgresReader, limits: QueryLimits) -> Router {
    Router::new()
        .route("/api/services", get(services_v1))
        .route("/api/services/{service}/operations", get(service_operations_v1))
        .route("/api/operations", get(operations_v1))
        .route("/api/traces", get(search_v1))
        .route("/api/dependencies", get(dependencies_v1))
        .route("/api/v3/services", get(services_v3))
        .route("/api/v3/operations", get(operations_v3))
        .route("/api/v3/traces", get(search_v3))
        .route("/api/v3/trace-summaries", get(summaries_v3))
        .with_state(Shared { reader, limits })
}

fn params(query: Result<Query<Vec<(String, String)>>, QueryRejection>) -> Result<Params, QueryError> {
    let Query(pairs) = query.map_err(|rejection| QueryError::BadRequest(rejection.body_text()))?;
    Ok(Params::new(pairs))
}

/// An optional integer parameter, with Jaeger's error text naming it.
fn int_param(params: &Params, name: &str) -> Result<Option<i64>, QueryError> {
    params
        .get(name)
        .map(|text| {
            parse_int(text).map_err(|error| QueryError::BadRequest(format!("unable to parse param '{name}': {error}")))
        })
        .transpose()
}

// === v1 lists ===

async fn services_v1(State(Shared { reader, .. }): State<Shared>, pretty: PrettyPrint) -> Result<Response, V1Error> {
    let services = reader
        .services()
        .await
        .map_err(|error| storage_failed("listing services", &error))?;
    Ok(pretty.json(V1Envelope::list(services)))
}

async fn service_operations_v1(
    State(Shared { reader, .. }): State<Shared>,
    pretty: PrettyPrint,
    Path(service): Path<String>,
) -> Result<Response, V1Error> {
    let operations = reader
        .operations(&service, None)
        .await
        .map_err(|error| storage_failed("listing operations", &error))?;
    let mut names: Vec<String> = operations.into_iter().map(|(name, _)| name).collect();
    names.dedup();
    Ok(pretty.json(V1Envelope::list(names)))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Operation {
    name: String,
    span_kind: &'static str,
}

/// The `spanKind` parameter: a kind name, or empty for every kind. An unknown name matches nothing, as in
/// Jaeger.
fn parse_span_kind(text: Option<&str>) -> Result<Option<SpanKind>, ()> {
    match text {
        None => Ok(None),
        Some("server") => Ok(Some(SpanKind::Server)),
        Some("client") => Ok(Some(SpanKind::Client)),
        Some("producer") => Ok(Some(SpanKind::Producer)),
        Some("consumer") => Ok(Some(SpanKind::Consumer)),
        Some("internal") => Ok(Some(SpanKind::Internal)),
        Some(_) => Err(()),
    }
}

async fn list_operations(
    reader: &PostgresReader,
    service: &str,
    kind: Option<&str>,
    unspecified_as: &'static str,
) -> Result<Vec<Operation>, QueryError> {
    let Ok(kind) = parse_span_kind(kind) else {
        return Ok(Vec::new());
    };
    let operations = reader
        .operations(service, kind)
        .await
        .map_err(|error| storage_failed("listing operations", &error))?;
    Ok(operations
        .into_iter()
        .map(|(name, kind)| Operation {
            name,
            span_kind: kind.jaeger_name().unwrap_or(unspecified_as),
        })
        .collect())
}

async fn operations_v1(
    State(Shared { reader, .. }): State<Shared>,
    pretty: PrettyPrint,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, V1Error> {
    let params = params(query)?;
    let service = params
        .get("service")
        .ok_or_else(|| QueryError::BadRequest("parameter 'service' is required".into()))?;
    let operations = list_operations(&reader, service, params.get("spanKind"), "").await?;
    Ok(pretty.json(V1Envelope::list(operations)))
}

// === v1 search ===

/// A parsed search: what SQL narrows candidates by, and what every matching span must also satisfy.
#[derive(Debug)]
pub(crate) struct Search {
    pub(crate) filter: SpanFilter,
    pub(crate) tags: Vec<(String, String)>,
    pub(crate) limit: usize,
}

async fn search_v1(
    State(Shared { reader, limits }): State<Shared>,
    pretty: PrettyPrint,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, V1Error> {
    let params = params(query)?;
    let trace_ids: Vec<&str> = params.all("traceID").collect();
    if !trace_ids.is_empty() {
        if trace_ids.len() > limits.max_traces_per_search {
            return Err(QueryError::BadRequest(format!(
                "{} traceID parameters are over the limit of {} traces per request: ask for fewer traces at a time",
                trace_ids.len(),
                limits.max_traces_per_search
            ))
            .into());
        }
        return multi_get(&reader, &params, &trace_ids, pretty).await;
    }
    let search = parse_v1_search(&params, tracepost_storage::time::now_unix_nanos(), &limits)?;
    let found = find(&reader, &search).await?;
    Ok(cpu_heavy(span_count(&found.traces), || {
        let data: Vec<jaeger::Trace> = found.traces.iter().map(jaeger::to_jaeger_trace).collect();
        let mut envelope = V1Envelope::data(data);
        if !found.complete {
            envelope.errors = Some(vec![V1ErrorEntry::incomplete_search()]);
        }
        incomplete_marked(pretty.json(envelope), found.complete)
    }))
}

pub(crate) fn parse_v1_search(params: &Params, now_ns: i64, limits: &QueryLimits) -> Result<Search, QueryError> {
    let bad = |name: &str, error: String| QueryError::BadRequest(format!("unable to parse param '{name}': {error}"));
    let end_ns = int_param(params, "end")?.map_or(now_ns, |micros| micros.saturating_mul(1000));
    let start_ns =
        int_param(params, "start")?.map_or(end_ns - DEFAULT_LOOKBACK_NS, |micros| micros.saturating_mul(1000));
    let mut tags = Vec::new();
    for tag in params.all("tag") {
        let (key, value) = tag.split_once(':').ok_or_else(|| {
            QueryError::BadRequest(format!(
                "malformed 'tag' parameter, expecting key:value, received: {tag}"
            ))
        })?;
        tags.push((key.to_owned(), value.to_owned()));
    }
    for text in params.all("tags") {
        tags.extend(parse_tags(text)?);
    }
    let limit = match params.get("limit") {
        Some(text) => parse_int(text).map_err(|error| bad("limit", error))?,
        None => DEFAULT_LIMIT,
    };
    let duration = |name: &str| -> Result<Option<i64>, QueryError> {
        params
            .get(name)
            .map(|text| parse_go_duration(text).map_err(|error| bad(name, error)))
            .transpose()
    };
    let min_duration = duration("minDuration")?;
    let max_duration = duration("maxDuration")?;
    if let Some(raw) = params.get("raw") {
        parse_bool(raw).map_err(|error| bad("raw", error))?;
    }
    let service = params
        .get("service")
        .ok_or_else(|| QueryError::BadRequest("parameter 'service' is required".into()))?;
    if limit <= 0 {
        return Err(QueryError::BadRequest(
            "invalid parameter: limit must be greater than 0".into(),
        ));
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    limits.check_traces("limit", limit).map_err(QueryError::BadRequest)?;
    if start_ns > end_ns {
        return Err(QueryError::BadRequest(
            "invalid parameter: start time must be before end time".into(),
        ));
    }
    if let (Some(min), Some(max)) = (min_duration, max_duration) {
        if min != 0 && max != 0 && max < min {
            return Err(QueryError::BadRequest(
                "'maxDuration' should be greater than 'minDuration'".into(),
            ));
        }
    }
    Ok(Search {
        filter: SpanFilter {
            services: Some(vec![stored_service(service)]),
            operation: params.get("operation").map(stored_text),
            min_duration_ns: min_duration.filter(|nanos| *nanos > 0),
            max_duration_ns: max_duration.filter(|nanos| *nanos > 0),
            start_min_ns: start_ns,
            start_max_ns: end_ns,
            required_items: tag_items(&tags),
        },
        tags,
        limit,
    })
}

/// Tags [`tag_matches`] also answers from a span's own fields, not from attributes only.
const DERIVED_TAGS: &[&str] = &[
    "error",
    "span.kind",
    "otel.status_code",
    "otel.status_description",
    "otel.scope.name",
    "otel.scope.version",
    "w3c.tracestate",
];

/// The bloom filter items every span matching all of `tags` carries ([`SpanFilter::required_items`]): one per
/// tag, except the tags a span can match without an attribute of that exact string form (derived tags, an
/// empty value, which an absent value matches, and an integer spelled otherwise than in decimal, `0200`).
pub(crate) fn tag_items(tags: &[(String, String)]) -> Vec<u64> {
    tags.iter()
        .filter(|(key, value)| {
            !DERIVED_TAGS.contains(&key.as_str())
                && !value.is_empty()
                && value.parse::<i64>().map_or(true, |number| number.to_string() == *value)
        })
        .map(|(key, value)| tracepost_storage::block::attribute_item(key, value))
        .collect()
}

/// Marks the response of an incomplete search with [`SEARCH_INCOMPLETE_HEADER`].
fn incomplete_marked(mut response: Response, complete: bool) -> Response {
    if !complete {
        response
            .headers_mut()
            .insert(SEARCH_INCOMPLETE_HEADER, axum::http::HeaderValue::from_static("true"));
    }
    response
}

/// Spans across `traces`: how heavy rendering them is.
pub(crate) fn span_count(traces: &[StoredTrace]) -> usize {
    traces.iter().map(|trace| trace.spans.len()).sum()
}

/// A service or span name as the text columns store it (NUL as U+FFFD), so that it selects what was sent with
/// NUL in it instead of failing the query.
fn stored_text(text: &str) -> String {
    tracepost_storage::copy::sanitize_text(text).into_owned()
}

/// A service name as its column stores it (NUL as U+FFFD, cut to 256 bytes as at ingest).
fn stored_service(text: &str) -> String {
    tracepost_storage::limits::label_column(text).into_owned()
}

/// `tags`: a JSON object of strings, or logfmt (`k=v k2="a b"`).
pub(crate) fn parse_tags(text: &str) -> Result<Vec<(String, String)>, QueryError> {
    if text.starts_with('{') {
        let object: HashMap<String, String> = serde_json::from_str(text).map_err(|error| {
            QueryError::BadRequest(format!("malformed 'tags' parameter, cannot unmarshal JSON: {error}"))
        })?;
        let mut tags: Vec<(String, String)> = object.into_iter().collect();
        tags.sort();
        return Ok(tags);
    }
    parse_logfmt(text).ok_or_else(|| {
        QueryError::BadRequest(format!(
            "malformed 'tags' parameter, expecting a JSON object or logfmt: {text}"
        ))
    })
}

fn parse_logfmt(text: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let key_end = rest.find('=')?;
        let key = rest[..key_end].trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return None;
        }
        rest = &rest[key_end + 1..];
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((index, c)) = chars.next() {
                match c {
                    '\\' => out.push(chars.next()?.1),
                    '"' => {
                        end = Some(index + 1);
                        break;
                    }
                    other => out.push(other),
                }
            }
            rest = &quoted[end?..];
            value = out;
        } else {
            let value_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            value = rest[..value_end].to_owned();
            rest = &rest[value_end..];
        }
        pairs.push((key.to_owned(), value));
        rest = rest.trim_start();
    }
    Some(pairs)
}

async fn find(reader: &PostgresReader, search: &Search) -> Result<SearchResult, QueryError> {
    let filter = &search.filter;
    let tags = &search.tags;
    reader
        .search(
            filter,
            search.limit,
            SearchBudget::default(),
            |span, resource| span_matches(span, resource, filter, tags),
            |_| true,
        )
        .await
        .map_err(|error| storage_failed("searching traces", &error))
}

/// The one-span rule: a trace matches when one of its spans satisfies every filter.
fn span_matches(
    stored: &StoredSpan,
    resource: Option<&StoredResource>,
    filter: &SpanFilter,
    tags: &[(String, String)],
) -> bool {
    let span = &stored.span;
    let start = i64::try_from(span.start_time_unix_nano).unwrap_or(i64::MAX);
    let duration = i64::try_from(span.duration_nanos()).unwrap_or(i64::MAX);
    filter
        .services
        .as_ref()
        .is_none_or(|services| services.contains(&stored.service_name))
        // The operation (a span name, or the route template the RED metrics name spans by, as Jaeger's Monitor
        // tab searches) is selected by storage itself.
        && (filter.start_min_ns..=filter.start_max_ns).contains(&start)
        && filter.min_duration_ns.is_none_or(|min| duration >= min)
        && filter.max_duration_ns.is_none_or(|max| duration <= max)
        && tags
            .iter()
            .all(|(key, value)| tag_matches(stored, resource, key, value))
}

/// Whether a span has the tag `key=value`: among its attributes, its scope's, its resource's, its events' and
/// its links', compared as strings; plus the tags Jaeger derives from OTLP fields (`error`, `span.kind`,
/// `otel.status_code`, `otel.status_description`, `otel.scope.name`, `otel.scope.version`, `w3c.tracestate`).
pub(crate) fn tag_matches(stored: &StoredSpan, resource: Option<&StoredResource>, key: &str, value: &str) -> bool {
    let span = &stored.span;
    let detail = &span.detail;
    let derived = match key {
        "error" => Some((span.status_code == SpanStatus::Error).to_string() == value),
        "span.kind" => Some(span.kind.jaeger_name().unwrap_or("") == value),
        "otel.status_code" => Some(match span.status_code {
            SpanStatus::Error => value == "ERROR",
            SpanStatus::Ok => value == "OK",
            SpanStatus::Unset => false,
        }),
        "otel.status_description" => Some(!detail.status_message.is_empty() && detail.status_message == value),
        "otel.scope.name" => Some(detail.scope.as_ref().is_some_and(|scope| scope.name == value)),
        "otel.scope.version" => Some(detail.scope.as_ref().is_some_and(|scope| scope.version == value)),
        "w3c.tracestate" => Some(!detail.trace_state.is_empty() && detail.trace_state == value),
        _ => None,
    };
    if derived == Some(true) {
        return true;
    }
    let found_in = |attributes: &[model::KeyValue]| {
        attributes
            .iter()
            .any(|attribute| attribute.key == key && value_matches(attribute.value(), value))
    };
    found_in(&detail.attributes)
        || detail.scope.as_ref().is_some_and(|scope| found_in(&scope.attributes))
        || resource.is_some_and(|resource| found_in(&resource.resource.attributes))
        || detail.events.iter().any(|event| found_in(&event.attributes))
        || detail.links.iter().any(|link| found_in(&link.attributes))
}

async fn multi_get(
    reader: &PostgresReader,
    params: &Params,
    texts: &[&str],
    pretty: PrettyPrint,
) -> Result<Response, V1Error> {
    let mut ids = Vec::with_capacity(texts.len());
    for text in texts {
        let id = TraceId::parse_hex(text).ok_or_else(|| {
            QueryError::BadRequest(format!(
                "cannot parse traceID param: strconv.ParseUint: parsing {text:?}: invalid syntax"
            ))
        })?;
        ids.push(id);
    }
    let range = TimeRange {
        start: int_param(params, "start")?.map(|micros| micros.saturating_mul(1000) - 600_000_000_000),
        end: int_param(params, "end")?.map(|micros| micros.saturating_mul(1000) + 600_000_000_000),
    };
    let traces = reader
        .get_traces(&ids, range)
        .await
        .map_err(|error| storage_failed("reading traces", &error))?;
    let found: HashSet<TraceId> = traces.iter().map(|trace| trace.trace_id).collect();
    let errors: Vec<V1ErrorEntry> = ids
        .iter()
        .filter(|id| !found.contains(id))
        .map(|id| V1ErrorEntry::missing_trace(jaeger::jaeger_trace_id(id)))
        .collect();
    Ok(cpu_heavy(span_count(&traces), || {
        let data: Vec<jaeger::Trace> = traces.iter().map(jaeger::to_jaeger_trace).collect();
        let mut envelope = V1Envelope::data(data);
        if !errors.is_empty() {
            envelope.errors = Some(errors);
        }
        pretty.json(envelope)
    }))
}

// === v1 dependencies ===

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Dependency {
    parent: String,
    child: String,
    call_count: i64,
}

async fn dependencies_v1(
    State(Shared { reader, .. }): State<Shared>,
    pretty: PrettyPrint,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, V1Error> {
    let params = params(query)?;
    let end_ms = int_param(&params, "endTs")?.unwrap_or_else(|| tracepost_storage::time::now_unix_nanos() / 1_000_000);
    let lookback_ms = int_param(&params, "lookback")?.unwrap_or(DEFAULT_DEPENDENCIES_LOOKBACK_MS);
    let links = reader
        .dependencies(end_ms.saturating_mul(1_000_000), lookback_ms.saturating_mul(1_000_000))
        .await
        .map_err(|error| storage_failed("computing dependencies", &error))?;
    let service = params.get("service");
    let data = links
        .into_iter()
        .filter(|link| service.is_none_or(|service| link.parent == service || link.child == service))
        .map(|link| Dependency {
            parent: link.parent,
            child: link.child,
            call_count: link.call_count,
        })
        .collect::<Vec<_>>();
    Ok(pretty.json(V1Envelope::data(data)))
}

// === api_v3 ===

#[derive(Serialize)]
struct ServicesV3 {
    services: Vec<String>,
}

async fn services_v3(State(Shared { reader, .. }): State<Shared>) -> Result<Json<ServicesV3>, V3Error> {
    let services = reader
        .services()
        .await
        .map_err(|error| storage_failed("listing services", &error))?;
    Ok(Json(ServicesV3 { services }))
}

#[derive(Serialize)]
struct OperationsV3 {
    operations: Vec<Operation>,
}

async fn operations_v3(
    State(Shared { reader, .. }): State<Shared>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<OperationsV3>, V3Error> {
    let params = params(query)?;
    let service = params.get("service").unwrap_or_default();
    let kind = params.get_any(&["spanKind", "span_kind"]).map(|(kind, _)| kind);
    // The Jaeger UI's schema needs a spanKind string on every operation: unspecified is reported as internal.
    let operations = list_operations(&reader, service, kind, "internal").await?;
    Ok(Json(OperationsV3 { operations }))
}

pub(crate) fn parse_v3_search(params: &Params, limits: &QueryLimits) -> Result<Search, QueryError> {
    let malformed = |name: &str, error: String| QueryError::BadRequest(format!("malformed parameter {name}: {error}"));
    let time = |names: &[&str]| -> Result<Option<i64>, QueryError> {
        params
            .get_any(names)
            .map(|(text, name)| parse_rfc3339(text).map_err(|error| malformed(&name, error)))
            .transpose()
    };
    let start_min = time(&["query.startTimeMin", "query.start_time_min"])?;
    let start_max = time(&["query.startTimeMax", "query.start_time_max"])?;
    let (Some(start_min), Some(start_max)) = (start_min, start_max) else {
        return Err(QueryError::BadRequest(
            "query.startTimeMin and query.startTimeMax are required".into(),
        ));
    };
    if start_min >= start_max {
        return Err(QueryError::BadRequest(
            "query.startTimeMin must be before query.startTimeMax".into(),
        ));
    }
    let duration = |names: &[&str]| -> Result<Option<i64>, QueryError> {
        params
            .get_any(names)
            .map(|(text, name)| parse_go_duration(text).map_err(|error| malformed(&name, error)))
            .transpose()
    };
    let min_duration = duration(&["query.durationMin", "query.duration_min"])?;
    let max_duration = duration(&["query.durationMax", "query.duration_max"])?;
    let (depth, depth_name) = match params.get_any(&["query.searchDepth", "query.search_depth", "query.num_traces"]) {
        Some((text, name)) => (parse_int(text).map_err(|error| malformed(&name, error))?, name),
        None => (DEFAULT_SEARCH_DEPTH, "query.searchDepth".to_owned()),
    };
    if depth <= 0 {
        return Err(QueryError::BadRequest(
            "malformed parameter query.searchDepth: must be greater than 0".into(),
        ));
    }
    let depth = usize::try_from(depth).unwrap_or(usize::MAX);
    limits
        .check_traces(&depth_name, depth)
        .map_err(QueryError::BadRequest)?;
    let tags = match params.get("query.attributes") {
        Some(text) => {
            let object: HashMap<String, String> =
                serde_json::from_str(text).map_err(|error| malformed("query.attributes", error.to_string()))?;
            let mut tags: Vec<(String, String)> = object.into_iter().collect();
            tags.sort();
            tags
        }
        None => Vec::new(),
    };
    Ok(Search {
        filter: SpanFilter {
            services: params
                .get_any(&["query.serviceName", "query.service_name"])
                .map(|(name, _)| vec![stored_service(name)]),
            operation: params
                .get_any(&["query.operationName", "query.operation_name"])
                .map(|(name, _)| stored_text(name)),
            min_duration_ns: min_duration.filter(|nanos| *nanos > 0),
            max_duration_ns: max_duration.filter(|nanos| *nanos > 0),
            start_min_ns: start_min,
            start_max_ns: start_max,
            required_items: tag_items(&tags),
        },
        tags,
        limit: depth,
    })
}

async fn search_v3(
    State(Shared { reader, limits }): State<Shared>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, V3Error> {
    let params = params(query)?;
    let search = parse_v3_search(&params, &limits)?;
    let found = find(&reader, &search).await?;
    let traces = &found.traces;
    if traces.is_empty() {
        return Err(QueryError::NoTracesFound.into());
    }
    Ok(cpu_heavy(span_count(traces), || {
        let mut data = otlp_json::to_traces_data(&traces[0]);
        for trace in &traces[1..] {
            data.resource_spans
                .extend(otlp_json::to_traces_data(trace).resource_spans);
        }
        incomplete_marked(
            Json(serde_json::json!({ "result": OtlpJson(&data) })).into_response(),
            found.complete,
        )
    }))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TraceSummary {
    trace_id: String,
    root_service_name: String,
    root_operation_name: String,
    min_start_time_unix_nano: String,
    max_end_time_unix_nano: String,
    span_count: usize,
    error_span_count: usize,
    orphan_span_count: usize,
    services: Vec<ServiceSummary>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceSummary {
    name: String,
    span_count: usize,
    error_span_count: usize,
}

fn summarize(trace: &StoredTrace) -> TraceSummary {
    let ids: HashSet<model::SpanId> = trace.spans.iter().map(|span| span.span.span_id).collect();
    let root = trace.root();
    let mut services: Vec<ServiceSummary> = Vec::new();
    let mut errors = 0;
    for stored in &trace.spans {
        let error = stored.span.status_code == SpanStatus::Error;
        errors += usize::from(error);
        match services.iter_mut().find(|service| service.name == stored.service_name) {
            Some(service) => {
                service.span_count += 1;
                service.error_span_count += usize::from(error);
            }
            None => services.push(ServiceSummary {
                name: stored.service_name.clone(),
                span_count: 1,
                error_span_count: usize::from(error),
            }),
        }
    }
    TraceSummary {
        trace_id: trace.trace_id.to_hex(),
        root_service_name: root.map(|span| span.service_name.clone()).unwrap_or_default(),
        root_operation_name: root
            .map(|span| span.span.original_name().to_owned())
            .unwrap_or_default(),
        min_start_time_unix_nano: trace.start_time_unix_nano().to_string(),
        max_end_time_unix_nano: trace.end_time_unix_nano().to_string(),
        span_count: trace.spans.len(),
        error_span_count: errors,
        orphan_span_count: trace
            .spans
            .iter()
            .filter(|span| span.span.parent_span_id.is_some_and(|parent| !ids.contains(&parent)))
            .count(),
        services,
    }
}

#[derive(Serialize)]
struct SummariesV3 {
    summaries: Vec<TraceSummary>,
}

/// Unlike `/api/v3/traces`, an empty result is 200 with no summaries: the Jaeger UI treats any other status
/// as an error.
async fn summaries_v3(
    State(Shared { reader, limits }): State<Shared>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, V3Error> {
    let params = params(query)?;
    let search = parse_v3_search(&params, &limits)?;
    let found = find(&reader, &search).await?;
    Ok(cpu_heavy(span_count(&found.traces), || {
        let response = Json(SummariesV3 {
            summaries: found.traces.iter().map(summarize).collect(),
        })
        .into_response();
        incomplete_marked(response, found.complete)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(pairs)
    }

    fn message(error: QueryError) -> String {
        error.to_string()
    }

    #[test]
    fn v1_search_parameters_parse_as_jaeger_parses_them() {
        let search = parse_v1_search(
            &params(&[
                ("service", "frontend"),
                ("operation", "GET /cart"),
                ("start", "1754038800000000"),
                ("end", "1754042400000000"),
                ("minDuration", "100ms"),
                ("maxDuration", ""),
                ("limit", "20"),
                ("lookback", "custom"),
                ("tags", r#"{"http.response.status_code":"503","error":"true"}"#),
            ]),
            0,
            &QueryLimits::default(),
        )
        .expect("valid search");
        assert_eq!(search.filter.services, Some(vec!["frontend".to_owned()]));
        assert_eq!(search.filter.operation.as_deref(), Some("GET /cart"));
        assert_eq!(search.filter.start_min_ns, 1_754_038_800_000_000_000);
        assert_eq!(search.filter.min_duration_ns, Some(100_000_000));
        assert_eq!(search.filter.max_duration_ns, None);
        assert_eq!(search.limit, 20);
        assert_eq!(
            search.tags,
            vec![
                ("error".into(), "true".into()),
                ("http.response.status_code".into(), "503".into())
            ]
        );
    }

    #[test]
    fn v1_search_errors_name_the_parameter() {
        let error = |pairs: &[(&str, &str)]| {
            message(parse_v1_search(&params(pairs), 0, &QueryLimits::default()).expect_err("invalid"))
        };
        assert_eq!(error(&[]), "parameter 'service' is required");
        assert_eq!(
            error(&[("service", "a"), ("start", "yesterday")]),
            "unable to parse param 'start': strconv.ParseInt: parsing \"yesterday\": invalid syntax"
        );
        assert_eq!(
            error(&[("service", "a"), ("minDuration", "fast")]),
            "unable to parse param 'minDuration': time: invalid duration \"fast\""
        );
        assert_eq!(
            error(&[("service", "a"), ("minDuration", "2s"), ("maxDuration", "1s")]),
            "'maxDuration' should be greater than 'minDuration'"
        );
        assert!(error(&[("service", "a"), ("tags", "{nope")])
            .starts_with("malformed 'tags' parameter, cannot unmarshal JSON"));
        assert_eq!(
            error(&[("service", "a"), ("limit", "0")]),
            "invalid parameter: limit must be greater than 0"
        );
    }

    #[test]
    fn searches_over_the_trace_cap_are_refused_naming_the_parameter() {
        let limits = QueryLimits {
            max_traces_per_search: 20,
            ..QueryLimits::default()
        };
        let error = parse_v1_search(&params(&[("service", "a"), ("limit", "21")]), 0, &limits).expect_err("over");
        assert_eq!(
            message(error),
            "limit=21 is over the limit of 20 traces per search: ask for fewer, or narrow the search (service, \
             operation, tags, a shorter time range)"
        );
        let v3 = |depth: (&'static str, &'static str)| {
            parse_v3_search(
                &params(&[
                    ("query.startTimeMin", "2025-08-01T09:00:00Z"),
                    ("query.startTimeMax", "2025-08-01T10:00:00Z"),
                    depth,
                ]),
                &limits,
            )
        };
        assert!(message(v3(("query.num_traces", "21")).expect_err("over")).starts_with("query.num_traces=21 is over"));
        assert_eq!(v3(("query.searchDepth", "20")).expect("at the cap").limit, 20);
        let error = parse_v3_search(
            &params(&[
                ("query.startTimeMin", "2025-08-01T09:00:00Z"),
                ("query.startTimeMax", "2025-08-01T10:00:00Z"),
            ]),
            &QueryLimits {
                max_traces_per_search: 99,
                ..QueryLimits::default()
            },
        )
        .expect_err("the default depth of 100 is over a cap of 99");
        assert!(message(error).starts_with("query.searchDepth=100 is over the limit of 99 traces"));
    }

    #[test]
    fn logfmt_tags_are_accepted() {
        assert_eq!(
            parse_tags(r#"error=true http.route="/a b""#).expect("logfmt"),
            vec![("error".into(), "true".into()), ("http.route".into(), "/a b".into())]
        );
        assert!(parse_tags("no equals sign").is_err());
    }

    #[test]
    fn v3_search_requires_both_times() {
        let error = parse_v3_search(&params(&[("query.serviceName", "a")]), &QueryLimits::default())
            .expect_err("missing times");
        assert_eq!(message(error), "query.startTimeMin and query.startTimeMax are required");
        let search = parse_v3_search(
            &params(&[
                ("query.serviceName", "frontend"),
                ("query.startTimeMin", "2025-08-01T09:00:00.000Z"),
                ("query.startTimeMax", "2025-08-01T10:00:00.000Z"),
                ("query.searchDepth", "20"),
                ("query.attributes", r#"{"error":"true"}"#),
            ]),
            &QueryLimits::default(),
        )
        .expect("valid");
        assert_eq!(search.limit, 20);
        assert_eq!(
            search.filter.start_max_ns - search.filter.start_min_ns,
            3_600_000_000_000
        );
        assert_eq!(search.tags, vec![("error".into(), "true".into())]);
    }
}
