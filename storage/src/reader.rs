//! Reading traces back: by ID, by search, and the services, operations and dependencies lists.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use prometheus_client::metrics::counter::Counter;
use prost::Message;
use tokio_postgres::Row;

use crate::copy::{operation_key, sanitize_text};
use crate::model::{Resource, Span, SpanDetail, SpanId, SpanKind, StatusCode, StoredResource, StoredSpan, TraceId};
use crate::StorageError;

/// A trace as stored: its spans (each span ID once, ordered by start time) and the resources they reference.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredTrace {
    pub trace_id: TraceId,
    pub spans: Vec<StoredSpan>,
    pub resources: HashMap<i64, StoredResource>,
    /// More spans are stored than the reader's per-trace limit; `spans` holds the first ones by start time.
    pub truncated: bool,
}

impl StoredTrace {
    /// The resource of a span, if stored.
    pub fn resource_of(&self, span: &StoredSpan) -> Option<&StoredResource> {
        self.resources.get(&span.resource_id)
    }

    /// The earliest span start, in Unix nanoseconds.
    pub fn start_time_unix_nano(&self) -> u64 {
        self.spans
            .iter()
            .map(|span| span.span.start_time_unix_nano)
            .min()
            .unwrap_or(0)
    }

    /// The latest span end, in Unix nanoseconds.
    pub fn end_time_unix_nano(&self) -> u64 {
        self.spans
            .iter()
            .map(|span| span.span.end_time_unix_nano())
            .max()
            .unwrap_or(0)
    }

    /// The root span: the earliest span without a parent, or failing that the earliest span.
    pub fn root(&self) -> Option<&StoredSpan> {
        self.spans
            .iter()
            .find(|span| span.span.parent_span_id.is_none())
            .or_else(|| self.spans.first())
    }
}

/// Optional bounds on a trace's span start times, in Unix nanoseconds (a hint that prunes partitions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

/// What SQL can select candidate spans by; everything else a search asks is checked on the fetched traces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanFilter {
    /// Services to search; `None` means every service in the operations dictionary.
    pub services: Option<Vec<String>>,
    /// Exact span name.
    pub operation: Option<String>,
    /// Span duration bounds, inclusive, in nanoseconds.
    pub min_duration_ns: Option<i64>,
    pub max_duration_ns: Option<i64>,
    /// Span start bounds, inclusive, in Unix nanoseconds.
    pub start_min_ns: i64,
    pub start_max_ns: i64,
}

/// Bounds on the work one search may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchBudget {
    /// Candidate spans read per round trip at most (the first page reads `8 × limit`, and each next one
    /// twice as many, up to this).
    pub page_spans: i64,
    /// Round trips at most.
    pub max_pages: usize,
    /// Wall time at most (checked between pages).
    pub max_time: Duration,
}

impl Default for SearchBudget {
    fn default() -> Self {
        Self {
            page_spans: 2000,
            max_pages: 20,
            max_time: Duration::from_millis(500),
        }
    }
}

/// A dependency link between two services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DependencyLink {
    pub parent: String,
    pub child: String,
    pub call_count: i64,
}

/// Slack around a time range when fetching the spans of traces found by search: a trace's other spans may
/// start a little before or after the span that matched.
const TRACE_SLACK_NS: i64 = 10 * 60 * 1_000_000_000;

const SPAN_COLUMNS: &str =
    "trace_id, span_id, parent_span_id, start_ns, service, name, kind, status, cluster, resource_id, detail";

/// The default [`TraceReader::max_spans_per_trace`].
pub const DEFAULT_MAX_SPANS_PER_TRACE: usize = 10_000;

/// The most services [`TraceReader::services`] lists (and a search without a service walks).
pub const MAX_LISTED_SERVICES: usize = 10_000;

/// The default [`TraceReader::max_spans_per_search`].
pub const DEFAULT_MAX_SPANS_PER_SEARCH: usize = 50_000;

/// Matching traces are fetched whole this many at a time, so one fetch holds at most this many times the
/// per-trace span limit.
const SEARCH_FETCH_TRACES: usize = 16;

/// Reads traces. Cheap to clone; clones share the undecodable-row counter and its log limiter.
///
/// A stored row it cannot decode (a span's `detail`, a resource's body, a malformed trace ID) never fails an
/// answer: the row is left out, counted in [`TraceReader::undecodable_rows`] and logged once per trace ID.
#[derive(Clone, Debug)]
pub struct TraceReader {
    pool: Pool,
    max_spans_per_trace: usize,
    max_spans_per_search: usize,
    undecodable: Counter,
    log_limiter: Arc<Mutex<LogLimiter>>,
}

impl TraceReader {
    /// A reader returning at most [`DEFAULT_MAX_SPANS_PER_TRACE`] spans per trace.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            max_spans_per_trace: DEFAULT_MAX_SPANS_PER_TRACE,
            max_spans_per_search: DEFAULT_MAX_SPANS_PER_SEARCH,
            undecodable: Counter::default(),
            log_limiter: Arc::default(),
        }
    }

    /// Stored rows left out of answers because they could not be decoded, since start; register it as
    /// `tracepost_stored_rows_undecodable` (a counter, so `_total` in the exposition).
    pub fn undecodable_rows(&self) -> Counter {
        self.undecodable.clone()
    }

    /// Counts a row that could not be decoded and logs it, once per trace ID and at most
    /// [`LogLimiter::PER_MINUTE`] times a minute.
    fn skip_undecodable(&self, what: &str, trace_id: Option<&[u8]>, resource_id: Option<i64>, error: &StorageError) {
        self.undecodable.inc();
        let trace = trace_id.map(hex).unwrap_or_default();
        let key = match resource_id {
            Some(id) => format!("resource {id}"),
            None => trace.clone(),
        };
        let decision = self
            .log_limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(&key, Instant::now());
        if let Some(suppressed) = decision {
            tracing::warn!(
                trace_id = %trace,
                resource_id,
                %error,
                suppressed_since_last = suppressed,
                "left an undecodable stored {what} out of the answer"
            );
        }
    }

    /// The spans of `rows`, leaving out (and counting) those that cannot be decoded.
    fn decode_spans(&self, rows: &[Row]) -> Vec<StoredSpan> {
        rows.iter()
            .filter_map(|row| match span_from_row(row) {
                Ok(span) => Some(span),
                Err(error) => {
                    self.skip_undecodable("span", row.try_get::<_, &[u8]>(0).ok(), None, &error);
                    None
                }
            })
            .collect()
    }

    /// The resources of `resource_ids`; one whose body cannot be decoded is left out (and counted), so its
    /// spans show without resource attributes.
    async fn load_resources(
        &self,
        client: &tokio_postgres::Client,
        resource_ids: &[i64],
    ) -> Result<HashMap<i64, StoredResource>, StorageError> {
        if resource_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = client
            .query(
                "SELECT DISTINCT ON (resource_id) resource_id, service, cluster, body
                 FROM resources WHERE resource_id = ANY($1)",
                &[&resource_ids],
            )
            .await?;
        let mut resources = HashMap::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.get(0);
            let body: &[u8] = row.get(3);
            let resource = match Resource::decode(body) {
                Ok(resource) => resource,
                Err(error) => {
                    self.skip_undecodable("resource", None, Some(id), &StorageError::Corrupt(error.to_string()));
                    continue;
                }
            };
            resources.insert(
                id,
                StoredResource {
                    id,
                    service_name: row.get(1),
                    cluster: row.get(2),
                    resource,
                },
            );
        }
        Ok(resources)
    }

    /// The same reader, returning at most `max` spans per trace (at least 1): the first by start time, the trace
    /// marked [`StoredTrace::truncated`]. The limit is applied in SQL, so a huge trace is never read whole.
    pub fn with_max_spans_per_trace(mut self, max: usize) -> Self {
        self.max_spans_per_trace = max.max(1);
        self
    }

    /// Spans returned per trace at most.
    pub fn max_spans_per_trace(&self) -> usize {
        self.max_spans_per_trace
    }

    /// The same reader stopping a search once the traces it found hold this many spans (it answers with the
    /// traces found so far, as when its time budget runs out): what one search holds is bounded by this plus
    /// one fetch of matching traces, whatever its `limit`.
    pub fn with_max_spans_per_search(mut self, max: usize) -> Self {
        self.max_spans_per_search = max.max(1);
        self
    }

    /// Rows asked of PostgreSQL per trace: one more than kept, to tell a truncated trace from a full one.
    fn spans_per_trace_query_limit(&self) -> i64 {
        i64::try_from(self.max_spans_per_trace)
            .unwrap_or(i64::MAX)
            .saturating_add(1)
    }

    /// Fetches one trace. `None` when no span of it is stored.
    pub async fn get_trace(&self, trace_id: TraceId, range: TimeRange) -> Result<Option<StoredTrace>, StorageError> {
        Ok(self.get_traces(&[trace_id], range).await?.pop())
    }

    /// Fetches traces by ID, in the order asked; IDs with no stored span are left out. Each trace holds at most
    /// [`TraceReader::max_spans_per_trace`] spans, the first by start time, and says when it holds fewer than
    /// are stored.
    ///
    /// Spans are deduplicated here, on read: a client that retried an export whose acknowledgement it lost
    /// may have stored the same (trace ID, span ID) twice, and the first copy wins.
    pub async fn get_traces(&self, trace_ids: &[TraceId], range: TimeRange) -> Result<Vec<StoredTrace>, StorageError> {
        if trace_ids.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.pool.get().await?;
        // One index lookup per trace, each cut to the limit (plus one) by PostgreSQL's top-N sort.
        let statement = client
            .prepare_cached(&format!(
                "SELECT c.* FROM unnest($1::bytea[]) AS t(id) CROSS JOIN LATERAL (
                     SELECT {SPAN_COLUMNS} FROM spans
                     WHERE trace_id = t.id AND start_ns >= $2 AND start_ns <= $3
                     ORDER BY start_ns, span_id LIMIT $4) c
                 ORDER BY c.start_ns, c.span_id"
            ))
            .await?;
        let ids: Vec<&[u8]> = trace_ids.iter().map(|id| id.0.as_slice()).collect();
        let rows = client
            .query(
                &statement,
                &[
                    &ids,
                    &range.start.unwrap_or(i64::MIN),
                    &range.end.unwrap_or(i64::MAX),
                    &self.spans_per_trace_query_limit(),
                ],
            )
            .await?;
        let mut by_trace: HashMap<TraceId, Vec<StoredSpan>> = HashMap::new();
        let mut rows_per_trace: HashMap<TraceId, usize> = HashMap::new();
        let mut seen = HashSet::with_capacity(rows.len());
        for span in self.decode_spans(&rows) {
            *rows_per_trace.entry(span.span.trace_id).or_default() += 1;
            if seen.insert((span.span.trace_id, span.span.span_id)) {
                by_trace.entry(span.span.trace_id).or_default().push(span);
            }
        }
        let mut truncated = HashSet::new();
        for (trace_id, spans) in &mut by_trace {
            if rows_per_trace.get(trace_id).copied().unwrap_or(0) > self.max_spans_per_trace {
                spans.truncate(self.max_spans_per_trace);
                truncated.insert(*trace_id);
            }
        }
        let resource_ids: Vec<i64> = by_trace
            .values()
            .flatten()
            .map(|span| span.resource_id)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let resources = self.load_resources(&client, &resource_ids).await?;
        let mut traces = Vec::with_capacity(by_trace.len());
        for trace_id in trace_ids {
            let Some(spans) = by_trace.remove(trace_id) else {
                continue;
            };
            let resources = spans
                .iter()
                .filter_map(|span| {
                    resources
                        .get(&span.resource_id)
                        .map(|resource| (span.resource_id, resource.clone()))
                })
                .collect();
            traces.push(StoredTrace {
                trace_id: *trace_id,
                spans,
                resources,
                truncated: truncated.contains(trace_id),
            });
        }
        Ok(traces)
    }

    /// Service names, sorted, at most [`MAX_LISTED_SERVICES`] (a client inventing service names cannot make the
    /// list, or a search across every service, grow without bound).
    pub async fn services(&self) -> Result<Vec<String>, StorageError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT DISTINCT service FROM operations ORDER BY service LIMIT $1",
                &[&(MAX_LISTED_SERVICES as i64)],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// A service's operations (name and kind), sorted by name; `kind` narrows them to one span kind.
    pub async fn operations(
        &self,
        service: &str,
        kind: Option<SpanKind>,
    ) -> Result<Vec<(String, SpanKind)>, StorageError> {
        let client = self.pool.get().await?;
        let kind = kind.map(|kind| kind as i16);
        let service = crate::limits::label_column(service);
        let rows = client
            .query(
                "SELECT name, kind FROM operations WHERE service = $1 AND ($2::int2 IS NULL OR kind = $2)
                 ORDER BY name, kind",
                &[&service.as_ref(), &kind],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), SpanKind::from_i32(i32::from(row.get::<_, i16>(1)))))
            .collect())
    }

    /// Distinct operation names across services, sorted, at most `limit`.
    pub async fn operation_names(&self, limit: i64) -> Result<Vec<String>, StorageError> {
        let client = self.pool.get().await?;
        let rows = client
            .query("SELECT DISTINCT name FROM operations ORDER BY name LIMIT $1", &[&limit])
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Newest-first search: traces with at least one span selected by `filter` for which `matches` holds,
    /// at most `limit` of them, within `budget`. See [`TraceReader::find_traces_by_span`].
    pub async fn find_traces(
        &self,
        filter: &SpanFilter,
        limit: usize,
        budget: SearchBudget,
        matches: impl Fn(&StoredTrace) -> bool,
    ) -> Result<Vec<StoredTrace>, StorageError> {
        self.find_traces_by_span(filter, limit, budget, |_, _| true, matches)
            .await
    }

    /// Newest-first search: traces with a span selected by `filter` for which `span_matches` holds (given the
    /// span's resource), and for which `trace_matches` holds as a whole; at most `limit`, within `budget`.
    ///
    /// Candidate spans come newest first from the `(service, start_ns DESC)` index, a page at a time, one
    /// index walk per service; `span_matches` runs on the candidates themselves, so only traces with a
    /// matching span are fetched whole.
    pub async fn find_traces_by_span(
        &self,
        filter: &SpanFilter,
        limit: usize,
        budget: SearchBudget,
        span_matches: impl Fn(&StoredSpan, Option<&StoredResource>) -> bool,
        trace_matches: impl Fn(&StoredTrace) -> bool,
    ) -> Result<Vec<StoredTrace>, StorageError> {
        let started = Instant::now();
        // Text columns hold NUL as U+FFFD (PostgreSQL refuses NUL in text), so parameters do too.
        let services: Vec<String> = match &filter.services {
            Some(services) => services
                .iter()
                .map(|service| crate::limits::label_column(service).into_owned())
                .collect(),
            None => self.services().await?,
        };
        let operation = filter
            .operation
            .as_deref()
            .map(|operation| sanitize_text(operation).into_owned());
        if services.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        if filter.operation.is_some() {
            return self
                .find_by_operation(&services, filter, limit, budget, span_matches, trace_matches)
                .await;
        }
        let mut found = Vec::new();
        let mut found_spans = 0usize;
        let mut examined = HashSet::new();
        let mut resources: HashMap<i64, StoredResource> = HashMap::new();
        let mut upper = filter.start_max_ns;
        let mut page_spans = (limit as i64).saturating_mul(8).clamp(1, budget.page_spans.max(1));
        for _ in 0..budget.max_pages {
            let client = self.pool.get().await?;
            // Planned with the actual parameters each time (an unnamed statement): a cached generic plan
            // sorts every row of a popular key instead of walking the index in order.
            let statement: &str = &format!(
                "SELECT c.* FROM unnest($1::text[]) AS s(service) CROSS JOIN LATERAL (
                        SELECT {SPAN_COLUMNS} FROM spans
                        WHERE spans.service = s.service AND start_ns >= $2 AND start_ns <= $3
                          AND ($4::text IS NULL OR name = $4)
                          AND duration_ns >= $5 AND duration_ns <= $6
                        ORDER BY start_ns DESC LIMIT $7) c
                     ORDER BY c.start_ns DESC LIMIT $7"
            );
            let rows = client
                .query(
                    statement,
                    &[
                        &services,
                        &filter.start_min_ns,
                        &upper,
                        &operation,
                        &filter.min_duration_ns.unwrap_or(0),
                        &filter.max_duration_ns.unwrap_or(i64::MAX),
                        &page_spans,
                    ],
                )
                .await?;
            let exhausted = (rows.len() as i64) < page_spans;
            page_spans = page_spans.saturating_mul(2).min(budget.page_spans.max(1));
            let candidates = self.decode_spans(&rows);
            let missing: Vec<i64> = candidates
                .iter()
                .map(|span| span.resource_id)
                .filter(|id| !resources.contains_key(id))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            resources.extend(self.load_resources(&client, &missing).await?);
            drop(client);

            let lowest = candidates.iter().map(|span| span.span.start_time_unix_nano).min();
            let mut matched = Vec::new();
            for span in &candidates {
                let trace_id = span.span.trace_id;
                if !examined.contains(&trace_id) && span_matches(span, resources.get(&span.resource_id)) {
                    examined.insert(trace_id);
                    matched.push((trace_id, span.span.start_time_unix_nano as i64));
                }
            }
            for chunk in matched.chunks(limit.clamp(1, SEARCH_FETCH_TRACES)) {
                let ids: Vec<TraceId> = chunk.iter().map(|(id, _)| *id).collect();
                let lowest = chunk.iter().map(|(_, start)| *start).min().unwrap_or(i64::MIN);
                let highest = chunk.iter().map(|(_, start)| *start).max().unwrap_or(i64::MAX);
                let range = TimeRange {
                    start: Some(lowest.saturating_sub(TRACE_SLACK_NS)),
                    end: Some(highest.saturating_add(TRACE_SLACK_NS)),
                };
                for trace in self.get_traces(&ids, range).await? {
                    if trace_matches(&trace) {
                        found_spans += trace.spans.len();
                        found.push(trace);
                        if found.len() >= limit || found_spans >= self.max_spans_per_search {
                            return Ok(found);
                        }
                    }
                }
            }
            let Some(lowest) = lowest else { break };
            if exhausted || started.elapsed() > budget.max_time {
                break;
            }
            // The next page starts below the oldest span of this one. Spans sharing that exact nanosecond
            // with the page's last row may be skipped; their traces usually have other spans to find them by.
            upper = lowest as i64 - 1;
        }
        Ok(found)
    }

    /// Search by operation: candidate traces come newest first from `operation_index`, are fetched whole and
    /// kept when one of their spans matches (which also rules out hash collisions).
    async fn find_by_operation(
        &self,
        services: &[String],
        filter: &SpanFilter,
        limit: usize,
        budget: SearchBudget,
        span_matches: impl Fn(&StoredSpan, Option<&StoredResource>) -> bool,
        trace_matches: impl Fn(&StoredTrace) -> bool,
    ) -> Result<Vec<StoredTrace>, StorageError> {
        let operation = sanitize_text(filter.operation.as_deref().unwrap_or_default()).into_owned();
        let keys: Vec<i64> = services
            .iter()
            .map(|service| operation_key(service, &operation))
            .collect();
        let started = Instant::now();
        let mut found = Vec::new();
        let mut found_spans = 0usize;
        let mut examined = HashSet::new();
        let mut upper = filter.start_max_ns;
        let mut page = (limit as i64).saturating_mul(2).clamp(1, budget.page_spans.max(1));
        for _ in 0..budget.max_pages {
            let client = self.pool.get().await?;
            // Planned with the actual parameters each time (an unnamed statement): a cached generic plan
            // sorts every row of a popular key instead of walking the index in order.
            let statement: &str = "SELECT c.trace_id, c.start_ns FROM unnest($1::int8[]) AS k(key) CROSS JOIN LATERAL (
                        SELECT trace_id, start_ns FROM operation_index
                        WHERE operation_key = k.key AND start_ns >= $2 AND start_ns <= $3 AND max_duration_ns >= $5
                        ORDER BY start_ns DESC LIMIT $4) c
                     ORDER BY c.start_ns DESC LIMIT $4";
            let min_duration = filter.min_duration_ns.unwrap_or(0);
            let rows = client
                .query(statement, &[&keys, &filter.start_min_ns, &upper, &page, &min_duration])
                .await?;
            drop(client);
            let exhausted = (rows.len() as i64) < page;
            page = page.saturating_mul(2).min(budget.page_spans.max(1));
            let mut candidates = Vec::new();
            let (mut lowest, mut highest) = (i64::MAX, i64::MIN);
            for row in &rows {
                let start: i64 = row.get(1);
                lowest = lowest.min(start);
                highest = highest.max(start);
                let trace_id = match trace_id_from(row.get(0)) {
                    Ok(trace_id) => trace_id,
                    Err(error) => {
                        self.skip_undecodable("operation index entry", row.try_get(0).ok(), None, &error);
                        continue;
                    }
                };
                if examined.insert(trace_id) {
                    candidates.push(trace_id);
                }
            }
            if !candidates.is_empty() {
                // Verify on the candidates' spans of that operation first; fetch only matching traces whole.
                let range_start = lowest.saturating_sub(TRACE_SLACK_NS);
                let range_end = highest.saturating_add(TRACE_SLACK_NS);
                let client = self.pool.get().await?;
                // At most the per-trace limit of that operation's spans per trace, the first by start time, so a
                // huge trace is never read whole.
                let statement: &str = &format!(
                    "SELECT c.* FROM unnest($1::bytea[]) AS t(id) CROSS JOIN LATERAL (
                         SELECT {SPAN_COLUMNS} FROM spans
                         WHERE trace_id = t.id AND start_ns >= $2 AND start_ns <= $3 AND name = $4
                         ORDER BY start_ns LIMIT $5) c"
                );
                let ids: Vec<&[u8]> = candidates.iter().map(|id| id.0.as_slice()).collect();
                let per_trace = self.spans_per_trace_query_limit();
                let rows = client
                    .query(statement, &[&ids, &range_start, &range_end, &operation, &per_trace])
                    .await?;
                let spans = self.decode_spans(&rows);
                let resource_ids: Vec<i64> = spans
                    .iter()
                    .map(|span| span.resource_id)
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .collect();
                let resources = self.load_resources(&client, &resource_ids).await?;
                drop(client);
                let matched: HashSet<TraceId> = spans
                    .iter()
                    .filter(|span| span_matches(span, resources.get(&span.resource_id)))
                    .map(|span| span.span.trace_id)
                    .collect();
                let ordered: Vec<TraceId> = candidates.into_iter().filter(|id| matched.contains(id)).collect();
                let range = TimeRange {
                    start: Some(range_start),
                    end: Some(range_end),
                };
                for chunk in ordered.chunks(SEARCH_FETCH_TRACES) {
                    for trace in self.get_traces(chunk, range).await? {
                        if trace_matches(&trace) {
                            found_spans += trace.spans.len();
                            found.push(trace);
                            if found.len() >= limit || found_spans >= self.max_spans_per_search {
                                return Ok(found);
                            }
                        }
                    }
                }
            }
            if exhausted || rows.is_empty() || started.elapsed() > budget.max_time {
                break;
            }
            upper = lowest - 1;
        }
        Ok(found)
    }

    /// Service dependencies over `[end - lookback, end]`: parent/child span pairs whose services differ,
    /// each child span counted once however often it was stored. Rolled-up buckets are summed and the tail
    /// not rolled up yet is computed from the spans.
    pub async fn dependencies(&self, end_ns: i64, lookback_ns: i64) -> Result<Vec<DependencyLink>, StorageError> {
        crate::dependencies::query(&self.pool, end_ns.saturating_sub(lookback_ns), end_ns).await
    }
}

fn trace_id_from(bytes: &[u8]) -> Result<TraceId, StorageError> {
    <[u8; 16]>::try_from(bytes)
        .map(TraceId)
        .map_err(|_| StorageError::Corrupt("trace id is not 16 bytes".into()))
}

fn span_from_row(row: &Row) -> Result<StoredSpan, StorageError> {
    let trace_id = trace_id_from(row.get(0))?;
    let parent: Option<i64> = row.get(2);
    let start: i64 = row.get(3);
    let detail_bytes: &[u8] = row.get(10);
    let detail = SpanDetail::decode(detail_bytes).map_err(|error| StorageError::Corrupt(error.to_string()))?;
    Ok(StoredSpan {
        span: Span {
            trace_id,
            span_id: SpanId::from_i64(row.get(1)),
            parent_span_id: parent.map(SpanId::from_i64),
            name: row.get(5),
            kind: SpanKind::from_i32(i32::from(row.get::<_, i16>(6))),
            start_time_unix_nano: start.max(0) as u64,
            status_code: StatusCode::from_i32(i32::from(row.get::<_, i16>(7))),
            detail,
        },
        service_name: row.get(4),
        cluster: row.get(8),
        resource_id: row.get(9),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Decides which undecodable rows are logged: each trace (or resource) ID once (among the last [`LogLimiter::REMEMBERED`]),
/// and at most [`LogLimiter::PER_MINUTE`] lines a minute, so a flood of bad rows cannot flood the log.
#[derive(Debug, Default)]
struct LogLimiter {
    logged: HashSet<String>,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl LogLimiter {
    const PER_MINUTE: u32 = 10;
    const REMEMBERED: usize = 4096;

    /// `Some(rows suppressed since the last line)` when this row is to be logged.
    fn admit(&mut self, trace: &str, now: Instant) -> Option<u64> {
        if self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(60))
        {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.logged.contains(trace) || self.in_window >= Self::PER_MINUTE {
            self.suppressed += 1;
            return None;
        }
        if self.logged.len() >= Self::REMEMBERED {
            self.logged.clear();
        }
        self.logged.insert(trace.to_owned());
        self.in_window += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undecodable_rows_are_logged_once_per_trace_and_ten_times_a_minute() {
        let mut limiter = LogLimiter::default();
        let start = Instant::now();
        assert_eq!(limiter.admit("aa", start), Some(0));
        assert_eq!(limiter.admit("aa", start), None, "the same trace again");
        let admitted = (0..20)
            .filter(|index| limiter.admit(&format!("t{index}"), start).is_some())
            .count();
        assert_eq!(admitted, 9, "ten lines in the first minute");
        let next_minute = start + Duration::from_secs(60);
        assert_eq!(
            limiter.admit("bb", next_minute),
            Some(11),
            "the next line says how many were left out"
        );
    }
}
