//! The HTTP routes and their two error styles.
//!
//! * `GET /api/traces/{trace_id}`: Jaeger's v1 API (query-api-contracts.md §1.1, §1.3.6), a UI JSON trace in the
//!   `{data, total, limit, offset, errors}` envelope, errors in the same envelope.
//! * `GET /api/v3/traces/{trace_id}`: Jaeger's api_v3 over HTTP (§4), `{"result": <OTLP/JSON TracesData>}`,
//!   errors as `{"error": {"httpCode", "message"}}`.
//!
//! Every v1 answer is indented with four spaces when asked with Jaeger's `prettyPrint` ([`PrettyPrint`]), as
//! Jaeger's `writeJSON` does; errors stay compact, as Jaeger writes them.
//!
//! Handlers only parse, fetch and render; [`QueryError`] says what went wrong and the two wrappers
//! [`V1Error`] and [`V3Error`] write it in each API's envelope. Storage errors are logged where they happen and
//! answered without their detail: 503 with `Retry-After` when the database could not answer (unreachable,
//! no connection free in time, a statement timed out), else a bare 500 "internal error".

use std::future::Future;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tracepost_storage::model::TraceId;
use tracepost_storage::{PostgresReader, StorageError, StoredTrace, TimeRange};

use crate::blocking::cpu_heavy;
use crate::jaeger;
use crate::limits::{QueryLimits, Shared, TRUNCATED_HEADER};
use crate::otlp_json::{self, OtlpJson};
use crate::params::Params;

/// How far a client's `start`/`end` hint is widened on each side: clients derive it from what they displayed,
/// and spans of the trace may start a little outside it.
const RANGE_SLACK_NANOS: i64 = 10 * 60 * 1_000_000_000;
/// `start`/`end` values below this are taken as milliseconds (Grafana's backend sends ms, Jaeger clients µs);
/// as microseconds it would be a date in 1973.
const MILLIS_CUTOFF: i64 = 100_000_000_000_000;

/// The query API (Jaeger's v1 and api_v3 routes) reading from `reader`, within the default [`QueryLimits`].
pub fn router(reader: PostgresReader) -> Router {
    router_with_limits(reader, QueryLimits::default())
}

/// The query API (Jaeger's v1 and api_v3 routes) reading from `reader`, within `limits`.
pub fn router_with_limits(reader: PostgresReader, limits: QueryLimits) -> Router {
    let reader = reader
        .with_max_spans_per_trace(limits.max_spans_per_trace)
        .with_max_spans_per_search(limits.max_spans_per_search);
    routes(reader.clone(), limits).merge(crate::search::routes(reader, limits))
}

/// Where the handlers read traces from: [`PostgresReader`] in production, a fake in tests.
pub(crate) trait TraceSource: Clone + Send + Sync + 'static {
    /// Same contract as [`PostgresReader::get_trace`].
    fn get_trace(
        &self,
        trace_id: TraceId,
        range: TimeRange,
    ) -> impl Future<Output = Result<Option<StoredTrace>, StorageError>> + Send;
}

impl TraceSource for PostgresReader {
    fn get_trace(
        &self,
        trace_id: TraceId,
        range: TimeRange,
    ) -> impl Future<Output = Result<Option<StoredTrace>, StorageError>> + Send {
        PostgresReader::get_trace(self, trace_id, range)
    }
}

pub(crate) fn routes<S: TraceSource>(source: S, limits: QueryLimits) -> Router {
    Router::new()
        .route("/api/traces/{trace_id}", get(get_trace_v1::<S>))
        .route("/api/v3/traces/{trace_id}", get(get_trace_v3::<S>))
        .with_state(Shared { reader: source, limits })
}

/// `GET /api/traces/{trace_id}[?start=&end=&prettyPrint=]`.
async fn get_trace_v1<S: TraceSource>(
    State(Shared { reader: source, .. }): State<Shared<S>>,
    pretty: PrettyPrint,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, V1Error> {
    let trace_id = parse_trace_id(path, "traceID")?;
    let Query(params) = query.map_err(|rejection| QueryError::BadRequest(rejection.body_text()))?;
    let range = parse_v1_range(&params)?;
    let trace = fetch(&source, trace_id, range).await?;
    Ok(cpu_heavy(trace.spans.len(), || {
        pretty.json(V1Envelope::data(vec![jaeger::to_jaeger_trace(&trace)]))
    }))
}

/// Jaeger's `prettyPrint` query parameter ([`Params::pretty_print`]), for a v1 route to render its answer
/// with [`PrettyPrint::json`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct PrettyPrint(pub(crate) bool);

impl<S: Send + Sync> FromRequestParts<S> for PrettyPrint {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // A query the route's own parameters cannot parse is refused there; here it just means not asked.
        let pairs = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|Query(pairs)| pairs)
            .unwrap_or_default();
        Ok(Self(Params::new(pairs).pretty_print()))
    }
}

impl PrettyPrint {
    /// `body` as `application/json`: compact (exactly as axum's [`Json`] writes it), or when asked indented as
    /// Jaeger's `json.MarshalIndent(response, "", "    ")` does (four spaces, no trailing newline).
    pub(crate) fn json(self, body: impl Serialize) -> Response {
        if !self.0 {
            return Json(body).into_response();
        }
        let mut bytes = Vec::with_capacity(128);
        let mut serializer =
            serde_json::Serializer::with_formatter(&mut bytes, serde_json::ser::PrettyFormatter::with_indent(b"    "));
        match body.serialize(&mut serializer) {
            Ok(()) => ([(axum::http::header::CONTENT_TYPE, "application/json")], bytes).into_response(),
            Err(error) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                error.to_string(),
            )
                .into_response(),
        }
    }
}

/// `GET /api/v3/traces/{trace_id}`. The optional `startTime`/`endTime` are not used yet.
async fn get_trace_v3<S: TraceSource>(
    State(Shared { reader: source, .. }): State<Shared<S>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, V3Error> {
    let trace_id = parse_trace_id(path, "trace_id")?;
    let trace = fetch(&source, trace_id, TimeRange::default()).await?;
    let mut response = cpu_heavy(trace.spans.len(), || {
        let data = otlp_json::to_traces_data(&trace);
        Json(V3TraceResponse {
            result: OtlpJson(&data),
        })
        .into_response()
    });
    mark_truncated(&mut response, &trace);
    Ok(response)
}

/// Says in a response header that a trace was cut to its first spans, where the format has no place for it:
/// `tracepost-trace-truncated: <spans shown>`.
pub(crate) fn mark_truncated(response: &mut Response, trace: &StoredTrace) {
    if trace.truncated {
        response
            .headers_mut()
            .insert(TRUNCATED_HEADER, axum::http::HeaderValue::from(trace.spans.len()));
    }
}

/// Parses a trace ID path segment: 1 to 32 hex characters, surrounding whitespace ignored.
pub(crate) fn parse_trace_id(
    path: Result<Path<String>, PathRejection>,
    parameter: &str,
) -> Result<TraceId, QueryError> {
    let malformed = || {
        QueryError::BadRequest(format!(
            "malformed parameter '{parameter}': expected 1 to 32 hex characters"
        ))
    };
    let Path(text) = path.map_err(|_| malformed())?;
    TraceId::parse_hex(text.trim()).ok_or_else(malformed)
}

/// The v1 `start`/`end` hint (µs, or ms), in nanoseconds and widened by [`RANGE_SLACK_NANOS`] on each side.
pub(crate) fn parse_v1_range(params: &[(String, String)]) -> Result<TimeRange, QueryError> {
    let start = parse_timestamp(params, "start")?;
    let end = parse_timestamp(params, "end")?;
    Ok(TimeRange {
        start: start.map(|nanos| nanos.saturating_sub(RANGE_SLACK_NANOS)),
        end: end.map(|nanos| nanos.saturating_add(RANGE_SLACK_NANOS)),
    })
}

/// The first non-empty value of `name` as Unix nanoseconds; empty values count as absent, as clients send
/// valueless parameters.
fn parse_timestamp(params: &[(String, String)], name: &str) -> Result<Option<i64>, QueryError> {
    let Some(text) = params
        .iter()
        .filter(|(key, _)| key == name)
        .map(|(_, value)| value.trim())
        .find(|value| !value.is_empty())
    else {
        return Ok(None);
    };
    let value: i64 = text
        .parse()
        .map_err(|error| QueryError::BadRequest(format!("unable to parse param '{name}': {error}")))?;
    let micros = if value < MILLIS_CUTOFF {
        value.saturating_mul(1000)
    } else {
        value
    };
    Ok(Some(micros.saturating_mul(1000)))
}

/// Reads a trace; a trace with no spans is as missing as no trace.
async fn fetch<S: TraceSource>(source: &S, trace_id: TraceId, range: TimeRange) -> Result<StoredTrace, QueryError> {
    match source.get_trace(trace_id, range).await {
        Ok(Some(trace)) if !trace.spans.is_empty() => Ok(trace),
        Ok(_) => Err(QueryError::NotFound),
        Err(error) => Err(storage_failed(&format!("reading trace {}", trace_id.to_hex()), &error)),
    }
}

/// Seconds a client is told to wait before retrying when the database could not answer.
pub(crate) const RETRY_AFTER_SECONDS: u32 = 5;

/// Logs a storage failure with its detail and says what the client may know: unavailable (retry) or internal.
pub(crate) fn storage_failed(what: &str, error: &StorageError) -> QueryError {
    if error.is_unavailable() {
        tracing::warn!(%error, "{what}: database unavailable");
        QueryError::Unavailable
    } else {
        tracing::error!(%error, "{what} failed");
        QueryError::Internal
    }
}

/// Why a query failed, independent of the envelope it is reported in.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueryError {
    /// A malformed parameter; the message names it.
    #[error("{0}")]
    BadRequest(String),
    #[error("trace not found")]
    NotFound,
    /// api_v3's answer to a search that found nothing.
    #[error("No traces found")]
    NoTracesFound,
    /// Storage failed; the cause has been logged and is never sent to the client.
    #[error("internal error")]
    Internal,
    /// The database could not answer (unreachable, busy, a statement timed out); the client may retry.
    #[error("database unavailable, retry later")]
    Unavailable,
    /// A feature that needs configuration it does not have.
    #[error("{0}")]
    NotImplemented(String),
    /// The metrics backend failed or answered something unusable.
    #[error("{0}")]
    Backend(String),
}

impl QueryError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound | Self::NoTracesFound => StatusCode::NOT_FOUND,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Backend(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// A [`QueryError`] answered in Jaeger's v1 envelope: `{"data":null,…,"errors":[{"code","msg"}]}`.
#[derive(Debug)]
pub(crate) struct V1Error(QueryError);

impl From<QueryError> for V1Error {
    fn from(error: QueryError) -> Self {
        Self(error)
    }
}

impl IntoResponse for V1Error {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let body: V1Envelope<()> = V1Envelope {
            data: None,
            total: 0,
            limit: 0,
            offset: 0,
            errors: Some(vec![V1ErrorEntry {
                code: status.as_u16(),
                msg: self.0.to_string(),
                trace_id: String::new(),
            }]),
        };
        error_response(status, &body)
    }
}

/// A [`QueryError`] answered in api_v3's envelope: `{"error":{"httpCode","message"}}`.
#[derive(Debug)]
pub(crate) struct V3Error(QueryError);

impl From<QueryError> for V3Error {
    fn from(error: QueryError) -> Self {
        Self(error)
    }
}

impl IntoResponse for V3Error {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let body = V3ErrorBody {
            error: V3ErrorDetail {
                http_code: status.as_u16(),
                message: self.0.to_string(),
            },
        };
        error_response(status, &body)
    }
}

/// Jaeger's v1 response envelope. `total`, `limit` and `offset` stay 0 for traces.
#[derive(Debug, Serialize)]
pub(crate) struct V1Envelope<T> {
    data: Option<T>,
    total: usize,
    limit: usize,
    offset: usize,
    pub(crate) errors: Option<Vec<V1ErrorEntry>>,
}

impl<T> V1Envelope<Vec<T>> {
    /// A list whose `total` is its length (services and operations).
    pub(crate) fn list(data: Vec<T>) -> Self {
        Self {
            total: data.len(),
            data: Some(data),
            limit: 0,
            offset: 0,
            errors: None,
        }
    }
}

impl<T> V1Envelope<T> {
    pub(crate) fn data(data: T) -> Self {
        Self {
            data: Some(data),
            total: 0,
            limit: 0,
            offset: 0,
            errors: None,
        }
    }
}

/// One entry of the v1 `errors` array: `code` left out when 0, `traceID` when empty.
#[derive(Debug, Serialize)]
pub(crate) struct V1ErrorEntry {
    #[serde(skip_serializing_if = "is_zero")]
    code: u16,
    msg: String,
    #[serde(rename = "traceID", skip_serializing_if = "String::is_empty")]
    trace_id: String,
}

impl V1ErrorEntry {
    /// The entry of a search that stopped at its budget before it had looked at everything that could match.
    pub(crate) fn incomplete_search() -> Self {
        Self {
            code: 0,
            msg: "search incomplete: it stopped at its time budget before looking at every span that could match, \
                  so more matching traces may exist; narrow the time range or add a service, an operation or a tag"
                .to_owned(),
            trace_id: String::new(),
        }
    }

    /// A multi-get entry for a trace that was not found (no code, as Jaeger sends it).
    pub(crate) fn missing_trace(trace_id: String) -> Self {
        Self {
            code: 0,
            msg: "trace not found".to_owned(),
            trace_id,
        }
    }
}

fn is_zero(code: &u16) -> bool {
    *code == 0
}

/// Jaeger writes errors with Go's `http.Error`: the JSON envelope as `text/plain` with a trailing newline. A
/// 503 says when to retry.
fn error_response(status: StatusCode, body: &impl Serialize) -> Response {
    let mut text = serde_json::to_string(body).unwrap_or_default();
    text.push('\n');
    let mut response = (
        status,
        [
            (axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        text,
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, RETRY_AFTER_SECONDS.into());
    }
    response
}

#[derive(Serialize)]
struct V3TraceResponse<'a> {
    result: OtlpJson<'a>,
}

#[derive(Serialize)]
struct V3ErrorBody {
    error: V3ErrorDetail,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct V3ErrorDetail {
    http_code: u16,
    message: String,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::fixtures;

    /// An in-memory [`TraceSource`] that records the time range of the last lookup.
    #[derive(Clone, Default)]
    struct FakeSource {
        traces: Arc<HashMap<TraceId, StoredTrace>>,
        broken: bool,
        unavailable: bool,
        last_range: Arc<Mutex<Option<TimeRange>>>,
    }

    impl FakeSource {
        fn with_fixture() -> Self {
            let trace = fixtures::trace();
            Self {
                traces: Arc::new(HashMap::from([(trace.trace_id, trace)])),
                ..Self::default()
            }
        }

        fn last_range(&self) -> Option<TimeRange> {
            *self.last_range.lock().expect("lock")
        }
    }

    impl TraceSource for FakeSource {
        async fn get_trace(&self, trace_id: TraceId, range: TimeRange) -> Result<Option<StoredTrace>, StorageError> {
            *self.last_range.lock().expect("lock") = Some(range);
            if self.broken {
                return Err(StorageError::Corrupt("secret detail".to_owned()));
            }
            if self.unavailable {
                return Err(StorageError::Pool(
                    "timed out connecting to postgres://tracepost:secret@db:5432".to_owned(),
                ));
            }
            Ok(self.traces.get(&trace_id).cloned())
        }
    }

    struct Reply {
        status: u16,
        content_type: String,
        retry_after: Option<String>,
        body: serde_json::Value,
        text: String,
    }

    /// Serves the routes on an ephemeral port and sends one raw HTTP/1.1 GET.
    async fn get(source: FakeSource, target: &str) -> Reply {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local address");
        let server = tokio::spawn(async move { axum::serve(listener, routes(source, QueryLimits::default())).await });
        let mut stream = TcpStream::connect(address).await.expect("connect");
        let request = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        server.abort();

        let text = String::from_utf8(raw).expect("utf-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("header end");
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .expect("status line");
        let headers: Vec<(&str, &str)> = lines.filter_map(|line| line.split_once(':')).collect();
        let header = |wanted: &str| {
            headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
                .map(|(_, value)| value.trim().to_owned())
        };
        let content_type = header("content-type").unwrap_or_default();
        let retry_after = header("retry-after");
        let text = body.to_owned();
        let body = serde_json::from_str(body).expect("JSON body");
        Reply {
            status,
            content_type,
            retry_after,
            body,
            text,
        }
    }

    fn v1_error(code: u16, msg: &str) -> serde_json::Value {
        json!({"data": null, "total": 0, "limit": 0, "offset": 0, "errors": [{"code": code, "msg": msg}]})
    }

    #[tokio::test]
    async fn v1_returns_the_trace_in_the_envelope() {
        let reply = get(FakeSource::with_fixture(), "/api/traces/A1B2C3D4E5F60718").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.content_type, "application/json");
        let golden: serde_json::Value =
            serde_json::from_str(include_str!("testdata/jaeger_trace.json")).expect("golden file is JSON");
        assert_eq!(
            reply.body,
            json!({"data": [golden], "total": 0, "limit": 0, "offset": 0, "errors": null})
        );
    }

    #[tokio::test]
    async fn pretty_print_indents_with_four_spaces_as_jaeger_and_is_compact_otherwise() {
        async fn body(pretty: bool) -> String {
            let response = PrettyPrint(pretty).json(V1Envelope::list(vec!["cart", "checkout"]));
            assert_eq!(response.headers()["content-type"], "application/json");
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("body");
            String::from_utf8(bytes.to_vec()).expect("utf-8")
        }
        assert_eq!(
            body(true).await,
            "{\n    \"data\": [\n        \"cart\",\n        \"checkout\"\n    ],\n    \"total\": 2,\n    \
             \"limit\": 0,\n    \"offset\": 0,\n    \"errors\": null\n}"
        );
        assert_eq!(
            body(false).await,
            r#"{"data":["cart","checkout"],"total":2,"limit":0,"offset":0,"errors":null}"#
        );
    }

    #[tokio::test]
    async fn v1_trace_with_pretty_print_is_indented_and_without_it_unchanged() {
        let compact = serde_json::to_string(&V1Envelope::data(vec![jaeger::to_jaeger_trace(&fixtures::trace())]))
            .expect("serializes");
        for target in [
            "/api/traces/a1b2c3d4e5f60718",
            "/api/traces/a1b2c3d4e5f60718?prettyPrint=false",
            "/api/traces/a1b2c3d4e5f60718?prettyPrint=&prettyPrint=true",
        ] {
            let reply = get(FakeSource::with_fixture(), target).await;
            assert_eq!(reply.text, compact, "{target}");
        }
        for target in [
            "/api/traces/a1b2c3d4e5f60718?prettyPrint=true",
            "/api/traces/a1b2c3d4e5f60718?raw=true&prettyPrint=1",
        ] {
            let reply = get(FakeSource::with_fixture(), target).await;
            assert_eq!(reply.status, 200, "{target}");
            assert_eq!(reply.content_type, "application/json", "{target}");
            assert!(
                reply
                    .text
                    .starts_with("{\n    \"data\": [\n        {\n            \"traceID\": \"a1b2c3d4e5f60718\",\n"),
                "{target}: {}",
                reply.text
            );
            assert!(reply.text.ends_with("\n    \"errors\": null\n}"), "{target}");
            assert_eq!(
                reply.body,
                serde_json::from_str::<serde_json::Value>(&compact).expect("JSON"),
                "{target}"
            );
        }
    }

    #[tokio::test]
    async fn v1_errors_stay_compact_with_pretty_print_as_in_jaeger() {
        let reply = get(FakeSource::with_fixture(), "/api/traces/ffff?prettyPrint=true").await;
        assert_eq!(reply.status, 404);
        assert_eq!(
            reply.text,
            "{\"data\":null,\"total\":0,\"limit\":0,\"offset\":0,\"errors\":[{\"code\":404,\"msg\":\"trace not found\"}]}\n"
        );
    }

    #[tokio::test]
    async fn v1_accepts_the_full_32_character_id_and_no_time_range() {
        let source = FakeSource::with_fixture();
        let reply = get(source.clone(), "/api/traces/0000000000000000a1b2c3d4e5f60718").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body["data"][0]["traceID"], "a1b2c3d4e5f60718");
        assert_eq!(source.last_range(), Some(TimeRange::default()));
    }

    #[tokio::test]
    async fn v1_time_range_is_widened_and_accepts_microseconds_and_milliseconds() {
        let ten_minutes = 600_000_000_000;
        let source = FakeSource::with_fixture();
        get(
            source.clone(),
            "/api/traces/a1b2c3d4e5f60718?start=1706678909209712&end=1706678909333169",
        )
        .await;
        assert_eq!(
            source.last_range(),
            Some(TimeRange {
                start: Some(1_706_678_909_209_712_000 - ten_minutes),
                end: Some(1_706_678_909_333_169_000 + ten_minutes),
            })
        );
        get(
            source.clone(),
            "/api/traces/a1b2c3d4e5f60718?start=1706678909209&end=&raw=true",
        )
        .await;
        assert_eq!(
            source.last_range(),
            Some(TimeRange {
                start: Some(1_706_678_909_209_000_000 - ten_minutes),
                end: None,
            })
        );
    }

    #[tokio::test]
    async fn v1_unknown_trace_is_404_in_the_envelope() {
        let reply = get(FakeSource::with_fixture(), "/api/traces/ffff").await;
        assert_eq!(reply.status, 404);
        assert_eq!(reply.body, v1_error(404, "trace not found"));
    }

    #[tokio::test]
    async fn v1_trace_without_spans_is_404() {
        let mut empty = fixtures::trace();
        empty.spans.clear();
        let source = FakeSource {
            traces: Arc::new(HashMap::from([(empty.trace_id, empty)])),
            ..FakeSource::default()
        };
        let reply = get(source, "/api/traces/a1b2c3d4e5f60718").await;
        assert_eq!(reply.status, 404);
    }

    #[tokio::test]
    async fn v1_malformed_ids_are_400_naming_the_parameter() {
        let too_long = "a".repeat(33);
        for id in ["xyz", too_long.as_str(), "%20"] {
            let reply = get(FakeSource::with_fixture(), &format!("/api/traces/{id}")).await;
            assert_eq!(reply.status, 400, "{id}");
            assert_eq!(
                reply.body,
                v1_error(400, "malformed parameter 'traceID': expected 1 to 32 hex characters"),
                "{id}"
            );
        }
    }

    #[tokio::test]
    async fn v1_bad_time_parameters_are_400() {
        let reply = get(
            FakeSource::with_fixture(),
            "/api/traces/a1b2c3d4e5f60718?start=yesterday",
        )
        .await;
        assert_eq!(reply.status, 400);
        assert_eq!(
            reply.body,
            v1_error(400, "unable to parse param 'start': invalid digit found in string")
        );
        let reply = get(FakeSource::with_fixture(), "/api/traces/a1b2c3d4e5f60718?end=1.5").await;
        assert_eq!(reply.status, 400);
        assert_eq!(
            reply.body["errors"][0]["msg"],
            "unable to parse param 'end': invalid digit found in string"
        );
    }

    #[tokio::test]
    async fn v1_storage_failures_are_500_without_details() {
        let source = FakeSource {
            broken: true,
            ..FakeSource::with_fixture()
        };
        let reply = get(source, "/api/traces/a1b2c3d4e5f60718").await;
        assert_eq!(reply.status, 500);
        assert_eq!(reply.body, v1_error(500, "internal error"));
    }

    #[tokio::test]
    async fn an_unavailable_database_is_503_with_retry_after_and_no_detail() {
        let source = FakeSource {
            unavailable: true,
            ..FakeSource::with_fixture()
        };
        let reply = get(source.clone(), "/api/traces/a1b2c3d4e5f60718").await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.retry_after.as_deref(), Some("5"));
        assert_eq!(reply.body, v1_error(503, "database unavailable, retry later"));
        let reply = get(source, "/api/v3/traces/a1b2c3d4e5f60718").await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.retry_after.as_deref(), Some("5"));
        assert_eq!(
            reply.body,
            json!({"error": {"httpCode": 503, "message": "database unavailable, retry later"}})
        );
    }

    #[tokio::test]
    async fn v3_returns_otlp_json_under_result() {
        let reply = get(
            FakeSource::with_fixture(),
            "/api/v3/traces/a1b2c3d4e5f60718?startTime=2024-01-31T05:28:29Z",
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.content_type, "application/json");
        let golden: serde_json::Value =
            serde_json::from_str(include_str!("testdata/otlp_trace.json")).expect("golden file is JSON");
        assert_eq!(reply.body, json!({ "result": golden }));
    }

    #[tokio::test]
    async fn v3_errors_use_the_api_v3_envelope() {
        let reply = get(FakeSource::with_fixture(), "/api/v3/traces/ffff").await;
        assert_eq!(reply.status, 404);
        assert_eq!(
            reply.body,
            json!({"error": {"httpCode": 404, "message": "trace not found"}})
        );

        let reply = get(FakeSource::with_fixture(), "/api/v3/traces/not-hex").await;
        assert_eq!(reply.status, 400);
        assert_eq!(
            reply.body,
            json!({"error": {"httpCode": 400, "message": "malformed parameter 'trace_id': expected 1 to 32 hex characters"}})
        );

        let source = FakeSource {
            broken: true,
            ..FakeSource::with_fixture()
        };
        let reply = get(source, "/api/v3/traces/a1b2c3d4e5f60718").await;
        assert_eq!(reply.status, 500);
        assert_eq!(
            reply.body,
            json!({"error": {"httpCode": 500, "message": "internal error"}})
        );
    }
}
