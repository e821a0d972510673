//! Reading traces back: by ID, by search, and the services, operations and dependencies lists.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Database;
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prost::Message;
use tokio_postgres::Row;

use crate::block::{bloom_condition, decode_block_spans, BlockSpan};
use crate::copy::sanitize_text;
use crate::model::{Resource, SpanKind, StoredResource, StoredSpan, TraceId};
use crate::time::NANOS_PER_DAY;
use crate::StorageError;

mod legacy;

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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
    /// Bloom filter items ([`crate::block::attribute_item`], [`crate::block::name_item`]) that every span the
    /// search is after carries: blocks whose filter lacks one are skipped unread. Leave out anything a
    /// matching span might not carry (an alternative, a negation, a derived tag).
    pub required_items: Vec<u64>,
}

/// What a search found, and whether that is all there is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SearchResult {
    pub traces: Vec<StoredTrace>,
    /// False when the search stopped at its budget (pages, time, spans held) before it had looked at every
    /// block that could hold a match and before it had `limit` traces: more matching traces may exist.
    pub complete: bool,
    /// Traces whose spans were checked.
    pub inspected_traces: u64,
    /// Bytes of span blocks read.
    pub inspected_bytes: u64,
}

/// One `span_blocks` row as searches and lookups read it.
struct BlockRow {
    block_id: i64,
    last_start_ns: i64,
    service: String,
    cluster: Option<String>,
    spans: Bytes,
}

impl BlockRow {
    fn from_row(row: &Row) -> Self {
        Self {
            block_id: row.get("block_id"),
            last_start_ns: row.get("last_start_ns"),
            service: row.get("service"),
            cluster: row.get("cluster"),
            spans: Bytes::copy_from_slice(row.get::<_, &[u8]>("spans")),
        }
    }
}

/// What tracepost's lookups and searches plan with, inside their read transaction: index scans and nested
/// loops only. Every one of them is an index probe per asked ID or an ordered index walk with `LIMIT`; without
/// statistics (a new day's partition, autovacuum off) the planner otherwise guesses a few rows and picks a
/// bitmap scan and sort of every block in the window, or a hash join over a sequential scan of a partition.
const INDEX_PLANS: &str = "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; \
     SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

async fn index_plans(
    client: &mut deadpool_postgres::Client,
) -> Result<deadpool_postgres::Transaction<'_>, StorageError> {
    let transaction = client.transaction().await?;
    transaction.batch_execute(INDEX_PLANS).await?;
    Ok(transaction)
}

/// The search's page query: blocks newest first (by latest span start, then ID) below the cursor, within the
/// time range (`$1`, `$2`; `$3` the first day, for partition pruning) and duration range (`$6`, `$7`), at
/// most `$8`; with services, `$9` holds them; then a pair of probe hashes per bloom filter item.
fn search_statement(with_services: bool, items: usize) -> String {
    let first_probe = if with_services { 10 } else { 9 };
    let mut conditions = String::from(
        "last_start_ns >= $1 AND start_ns <= $2 AND start_ns >= $3 \
         AND last_start_ns <= $4 AND (last_start_ns < $4 OR block_id < $5) \
         AND max_duration_ns >= $6 AND min_duration_ns <= $7",
    );
    for item in 0..items {
        let h1 = first_probe + 2 * item;
        conditions.push_str(" AND ");
        conditions.push_str(&bloom_condition("bloom", "block_id", h1, h1 + 1));
    }
    let columns = "block_id, last_start_ns, service, cluster, spans";
    if with_services {
        format!(
            "SELECT c.* FROM unnest($9::text[]) AS s(service) CROSS JOIN LATERAL (
                 SELECT {columns} FROM span_blocks WHERE span_blocks.service = s.service AND {conditions}
                 ORDER BY last_start_ns DESC, block_id DESC LIMIT $8) c
             ORDER BY c.last_start_ns DESC, c.block_id DESC LIMIT $8"
        )
    } else {
        format!(
            "SELECT {columns} FROM span_blocks WHERE {conditions} ORDER BY last_start_ns DESC, block_id DESC LIMIT $8"
        )
    }
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

/// The default [`PostgresReader::max_spans_per_trace`].
pub const DEFAULT_MAX_SPANS_PER_TRACE: usize = 10_000;

/// The most services [`PostgresReader::services`] lists (and a search without a service walks).
pub const MAX_LISTED_SERVICES: usize = 10_000;

/// The default [`PostgresReader::max_spans_per_search`].
pub const DEFAULT_MAX_SPANS_PER_SEARCH: usize = 50_000;

/// Matching traces are fetched whole this many at a time, so one fetch holds at most this many times the
/// per-trace span limit.
const SEARCH_FETCH_TRACES: usize = 16;

/// Reads traces. Cheap to clone; clones share the undecodable-row counter and its log limiter.
///
/// A stored row it cannot decode (a span's `detail`, a resource's body, a malformed trace ID) never fails an
/// answer: the row is left out, counted in [`PostgresReader::undecodable_rows`] and logged once per trace ID.
#[derive(Clone, Debug)]
pub struct PostgresReader {
    database: Database,
    max_spans_per_trace: usize,
    max_spans_per_search: usize,
    undecodable: Counter,
    log_limiter: Arc<Mutex<LogLimiter>>,
    /// When the per-span tables of earlier versions were last checked for rows, and whether they had any.
    legacy: Arc<Mutex<Option<(Instant, bool)>>>,
}

impl PostgresReader {
    /// A reader returning at most [`DEFAULT_MAX_SPANS_PER_TRACE`] spans per trace.
    pub fn new(database: Database) -> Self {
        Self {
            database,
            max_spans_per_trace: DEFAULT_MAX_SPANS_PER_TRACE,
            max_spans_per_search: DEFAULT_MAX_SPANS_PER_SEARCH,
            undecodable: Counter::default(),
            log_limiter: Arc::default(),
            legacy: Arc::default(),
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

    /// The resources of `resource_ids`; one whose body cannot be decoded is left out (and counted), so its
    /// spans show without resource attributes.
    async fn load_resources(
        &self,
        client: &impl tokio_postgres::GenericClient,
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
    /// [`PostgresReader::max_spans_per_trace`] spans (by start time, whole blocks at a time: a trace's blocks are
    /// read earliest first until the limit is passed) and says when it holds fewer than are stored.
    ///
    /// Reads `trace_index` (one hash-index probe per partition) and then only the blocks it names; blocks are
    /// never scanned. Spans are deduplicated here, on read: a client that retried an export whose
    /// acknowledgement it lost, or a spool replay, may have stored the same (trace ID, span ID) twice, and the
    /// first copy wins. Spans of the per-span tables of earlier versions are read beside them while any remain.
    pub async fn get_traces(&self, trace_ids: &[TraceId], range: TimeRange) -> Result<Vec<StoredTrace>, StorageError> {
        if trace_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.database.get().await?;
        let transaction = index_plans(&mut client).await?;
        let ids: Vec<&[u8]> = trace_ids.iter().map(|id| id.0.as_slice()).collect();
        // A block lies within one day, so a block holding spans of the range starts no earlier than the range's
        // first day.
        let lower = range
            .start
            .map_or(i64::MIN, |start| start - start.rem_euclid(NANOS_PER_DAY));
        let statement = transaction
            .prepare_cached(
                "SELECT t.id, i.start_ns, i.block_id, i.span_count FROM unnest($1::bytea[]) AS t(id)
                 CROSS JOIN LATERAL (
                     SELECT start_ns, block_id, span_count FROM trace_index
                     WHERE trace_id = encode(t.id, 'hex')::uuid AND start_ns >= $2 AND start_ns <= $3) i",
            )
            .await?;
        let rows = transaction
            .query(&statement, &[&ids, &lower, &range.end.unwrap_or(i64::MAX)])
            .await?;
        let mut entries: HashMap<TraceId, Vec<(i64, i64, i64)>> = HashMap::new();
        for row in &rows {
            match trace_id_from(row.get(0)) {
                Ok(trace_id) => {
                    entries
                        .entry(trace_id)
                        .or_default()
                        .push((row.get(1), row.get(2), i64::from(row.get::<_, i32>(3))))
                }
                Err(error) => self.skip_undecodable("trace index entry", row.try_get(0).ok(), None, &error),
            }
        }
        // Per trace, its blocks earliest first, until they hold more spans than are kept.
        let wanted = self.spans_per_trace_query_limit();
        let mut blocks: Vec<(i64, i64)> = Vec::new();
        let mut cut = HashSet::new();
        for (trace_id, list) in &mut entries {
            list.sort_unstable();
            let mut held = 0i64;
            for &(start, block, count) in list.iter() {
                if held >= wanted {
                    cut.insert(*trace_id);
                    break;
                }
                blocks.push((block, start));
                held += count;
            }
        }
        blocks.sort_unstable();
        blocks.dedup_by_key(|(block, _)| *block);
        let mut spans_by_trace = self
            .read_blocks(&transaction, &blocks, |trace_id| entries.contains_key(trace_id))
            .await?;
        transaction.commit().await?;
        drop(client);
        if self.legacy_present().await? {
            for trace in self.legacy_get_traces(trace_ids, range).await? {
                spans_by_trace.entry(trace.trace_id).or_default().extend(trace.spans);
            }
        }
        let in_range = |span: &StoredSpan| {
            let start = i64::try_from(span.span.start_time_unix_nano).unwrap_or(i64::MAX);
            range.start.is_none_or(|bound| start >= bound) && range.end.is_none_or(|bound| start <= bound)
        };
        let mut assembled = Vec::with_capacity(trace_ids.len());
        let mut resource_ids = HashSet::new();
        for trace_id in trace_ids {
            let Some(mut spans) = spans_by_trace.remove(trace_id) else {
                continue;
            };
            spans.retain(in_range);
            spans.sort_by_key(|span| (span.span.start_time_unix_nano, span.span.span_id));
            let mut seen = HashSet::with_capacity(spans.len());
            spans.retain(|span| seen.insert(span.span.span_id));
            if spans.is_empty() {
                continue;
            }
            let truncated = spans.len() > self.max_spans_per_trace || cut.contains(trace_id);
            spans.truncate(self.max_spans_per_trace);
            resource_ids.extend(spans.iter().map(|span| span.resource_id));
            assembled.push((*trace_id, spans, truncated));
        }
        let client = self.database.get().await?;
        let resource_ids: Vec<i64> = resource_ids.into_iter().collect();
        let resources = self.load_resources(&**client, &resource_ids).await?;
        Ok(assembled
            .into_iter()
            .map(|(trace_id, spans, truncated)| StoredTrace {
                trace_id,
                resources: spans
                    .iter()
                    .filter_map(|span| resources.get(&span.resource_id).map(|r| (span.resource_id, r.clone())))
                    .collect(),
                spans,
                truncated,
            })
            .collect())
    }

    /// Reads blocks by (block ID, a start time of theirs) and keeps the spans of the traces `wanted` selects.
    async fn read_blocks(
        &self,
        client: &deadpool_postgres::Transaction<'_>,
        blocks: &[(i64, i64)],
        wanted: impl Fn(&TraceId) -> bool,
    ) -> Result<HashMap<TraceId, Vec<StoredSpan>>, StorageError> {
        let mut spans: HashMap<TraceId, Vec<StoredSpan>> = HashMap::new();
        if blocks.is_empty() {
            return Ok(spans);
        }
        let statement = client
            .prepare_cached(&format!(
                "SELECT b.* FROM unnest($1::int8[], $2::int8[]) AS k(id, start)
                 CROSS JOIN LATERAL (
                     SELECT block_id, last_start_ns, service, cluster, spans FROM span_blocks
                     WHERE block_id = k.id AND start_ns <= k.start
                       AND start_ns >= k.start - mod(k.start, {NANOS_PER_DAY})) b"
            ))
            .await?;
        let ids: Vec<i64> = blocks.iter().map(|(id, _)| *id).collect();
        let starts: Vec<i64> = blocks.iter().map(|(_, start)| *start).collect();
        let rows = client.query(&statement, &[&ids, &starts]).await?;
        for row in &rows {
            let block = BlockRow::from_row(row);
            self.decode_block_into(&block, &wanted, |_| true, |_, _| true, &mut spans);
        }
        Ok(spans)
    }

    /// Decodes a block's spans of the traces `traces` picks that `select` picks (from the fields stored beside their detail) and `keep` keeps
    /// (given the span as stored in the block and decoded) into `out`, by trace; an undecodable block or span is left
    /// out and counted.
    fn decode_block_into(
        &self,
        block: &BlockRow,
        traces: impl Fn(&TraceId) -> bool,
        select: impl Fn(&BlockSpan) -> bool,
        keep: impl Fn(&BlockSpan, &StoredSpan) -> bool,
        out: &mut HashMap<TraceId, Vec<StoredSpan>>,
    ) {
        let decoded = match decode_block_spans(block.spans.clone(), traces) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.skip_undecodable("span block", None, None, &error);
                return;
            }
        };
        for span in decoded.into_iter().filter(|span| select(span)) {
            let stored = match span.to_span() {
                Ok(decoded) => StoredSpan {
                    span: decoded,
                    resource_id: span.resource_id,
                    service_name: block.service.clone(),
                    cluster: block.cluster.clone(),
                },
                Err(error) => {
                    self.skip_undecodable("span", Some(&span.trace_id), None, &error);
                    continue;
                }
            };
            if keep(&span, &stored) {
                out.entry(stored.span.trace_id).or_default().push(stored);
            }
        }
    }

    /// Whether the per-span tables of earlier versions still hold rows (checked at most once a minute).
    async fn legacy_present(&self) -> Result<bool, StorageError> {
        if let Some((checked, present)) = *self.legacy.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
            if checked.elapsed() < Duration::from_secs(60) {
                return Ok(present);
            }
        }
        let client = self.database.get().await?;
        let present: bool = client
            .query_one("SELECT EXISTS (SELECT 1 FROM spans)", &[])
            .await?
            .get(0);
        *self.legacy.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), present));
        Ok(present)
    }

    /// Service names, sorted, at most [`MAX_LISTED_SERVICES`] (a client inventing service names cannot make the
    /// list, or a search across every service, grow without bound).
    pub async fn services(&self) -> Result<Vec<String>, StorageError> {
        let client = self.database.get().await?;
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
        let client = self.database.get().await?;
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
        let client = self.database.get().await?;
        let rows = client
            .query("SELECT DISTINCT name FROM operations ORDER BY name LIMIT $1", &[&limit])
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Newest-first search: traces with at least one span selected by `filter` for which `matches` holds,
    /// at most `limit` of them, within `budget`. See [`PostgresReader::find_traces_by_span`].
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
    /// See [`PostgresReader::search`], which also says whether the answer is complete.
    pub async fn find_traces_by_span(
        &self,
        filter: &SpanFilter,
        limit: usize,
        budget: SearchBudget,
        span_matches: impl Fn(&StoredSpan, Option<&StoredResource>) -> bool,
        trace_matches: impl Fn(&StoredTrace) -> bool,
    ) -> Result<Vec<StoredTrace>, StorageError> {
        Ok(self
            .search(filter, limit, budget, span_matches, trace_matches)
            .await?
            .traces)
    }

    /// Newest-first search: traces with a span selected by `filter` for which `span_matches` holds (given the
    /// span's resource), and for which `trace_matches` holds as a whole; at most `limit`, within `budget`.
    ///
    /// Blocks come newest first (by their latest span start) from the `(service, last_start_ns)` index, or
    /// across services from `(last_start_ns)`, a page at a time; PostgreSQL itself skips blocks whose time
    /// range, duration range or bloom filter rule them out (every item of `filter.required_items` must be in
    /// the filter), so a value only one span carries costs a scan of the blocks' filters, not of their spans.
    /// The candidates' spans are checked here, and the traces of matching ones fetched whole. The result says
    /// whether every block that could hold a match was looked at ([`SearchResult::complete`]).
    pub async fn search(
        &self,
        filter: &SpanFilter,
        limit: usize,
        budget: SearchBudget,
        span_matches: impl Fn(&StoredSpan, Option<&StoredResource>) -> bool,
        trace_matches: impl Fn(&StoredTrace) -> bool,
    ) -> Result<SearchResult, StorageError> {
        let started = Instant::now();
        let mut result = SearchResult {
            complete: true,
            ..SearchResult::default()
        };
        // Text columns hold NUL as U+FFFD (PostgreSQL refuses NUL in text), so parameters do too.
        let services: Option<Vec<String>> = filter.services.as_ref().map(|services| {
            services
                .iter()
                .map(|service| crate::limits::label_column(service).into_owned())
                .collect()
        });
        let operation = filter
            .operation
            .as_deref()
            .map(|operation| sanitize_text(operation).into_owned());
        if limit == 0 || services.as_ref().is_some_and(Vec::is_empty) {
            return Ok(result);
        }
        let mut items = filter.required_items.clone();
        if let Some(operation) = &operation {
            items.push(crate::block::name_item(operation));
        }
        items.sort_unstable();
        items.dedup();
        let statement = search_statement(services.is_some(), items.len());
        let lower_day = filter.start_min_ns - filter.start_min_ns.rem_euclid(NANOS_PER_DAY);
        let probes: Vec<(i64, i64)> = items.iter().map(|item| crate::block::probe_hashes(*item)).collect();
        let mut cursor = (i64::MAX, i64::MAX);
        let mut page = 4i64;
        let mut examined = HashSet::new();
        let mut resources: HashMap<i64, StoredResource> = HashMap::new();
        let mut found_spans = 0usize;
        for _ in 0..budget.max_pages {
            if started.elapsed() > budget.max_time {
                result.complete = false;
                break;
            }
            let mut client = self.database.get().await?;
            let transaction = index_plans(&mut client).await?;
            let min_duration = filter.min_duration_ns.unwrap_or(0);
            let max_duration = filter.max_duration_ns.unwrap_or(i64::MAX);
            let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
                &filter.start_min_ns,
                &filter.start_max_ns,
                &lower_day,
                &cursor.0,
                &cursor.1,
                &min_duration,
                &max_duration,
                &page,
            ];
            if let Some(services) = &services {
                params.push(services);
            }
            for (h1, h2) in &probes {
                params.push(h1);
                params.push(h2);
            }
            let rows = transaction.query(statement.as_str(), &params).await?;
            let exhausted = (rows.len() as i64) < page;
            page = (page * 2).min(64);
            let blocks: Vec<BlockRow> = rows.iter().map(BlockRow::from_row).collect();
            if let Some(last) = blocks.last() {
                cursor = (last.last_start_ns, last.block_id);
            }
            let mut candidates: HashMap<TraceId, Vec<StoredSpan>> = HashMap::new();
            for block in &blocks {
                result.inspected_bytes += block.spans.len() as u64;
                self.decode_block_into(
                    block,
                    |trace| !examined.contains(trace),
                    |entry| {
                        let start = i64::try_from(entry.start_time_unix_nano).unwrap_or(i64::MAX);
                        (filter.start_min_ns..=filter.start_max_ns).contains(&start)
                            && operation
                                .as_ref()
                                .is_none_or(|operation| entry.name == *operation || entry.route == *operation)
                    },
                    // The operation was sanitized as stored names are, so the stored name (or the route
                    // template the metrics use) is what it is compared with.
                    |_, stored| {
                        let duration = i64::try_from(stored.span.duration_nanos()).unwrap_or(i64::MAX);
                        (min_duration..=max_duration).contains(&duration)
                    },
                    &mut candidates,
                );
            }
            let missing: Vec<i64> = candidates
                .values()
                .flatten()
                .map(|span| span.resource_id)
                .filter(|id| !resources.contains_key(id))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            resources.extend(self.load_resources(&*transaction, &missing).await?);
            transaction.commit().await?;
            drop(client);
            let mut matched: Vec<(i64, TraceId)> = Vec::new();
            for (trace_id, spans) in &candidates {
                result.inspected_traces += 1;
                let newest = spans
                    .iter()
                    .filter(|span| span_matches(span, resources.get(&span.resource_id)))
                    .map(|span| span.span.start_time_unix_nano as i64)
                    .max();
                if let Some(newest) = newest {
                    matched.push((newest, *trace_id));
                }
            }
            examined.extend(matched.iter().map(|(_, id)| *id));
            matched.sort_unstable_by(|a, b| b.cmp(a));
            for chunk in matched.chunks(SEARCH_FETCH_TRACES) {
                let ids: Vec<TraceId> = chunk.iter().map(|(_, id)| *id).collect();
                let lowest = chunk.iter().map(|(start, _)| *start).min().unwrap_or(i64::MIN);
                let highest = chunk.iter().map(|(start, _)| *start).max().unwrap_or(i64::MAX);
                let range = TimeRange {
                    start: Some(lowest.saturating_sub(TRACE_SLACK_NS)),
                    end: Some(highest.saturating_add(TRACE_SLACK_NS)),
                };
                for trace in self.get_traces(&ids, range).await? {
                    if trace_matches(&trace) {
                        found_spans += trace.spans.len();
                        result.traces.push(trace);
                        if result.traces.len() >= limit {
                            return Ok(result);
                        }
                        if found_spans >= self.max_spans_per_search {
                            result.complete = false;
                            return Ok(result);
                        }
                    }
                }
            }
            if exhausted {
                return self
                    .search_legacy(filter, limit, budget, span_matches, trace_matches, result)
                    .await;
            }
        }
        result.complete = false;
        Ok(result)
    }

    /// The rest of a search in the per-span tables of earlier versions, while they hold rows.
    async fn search_legacy(
        &self,
        filter: &SpanFilter,
        limit: usize,
        budget: SearchBudget,
        span_matches: impl Fn(&StoredSpan, Option<&StoredResource>) -> bool,
        trace_matches: impl Fn(&StoredTrace) -> bool,
        mut result: SearchResult,
    ) -> Result<SearchResult, StorageError> {
        if !self.legacy_present().await? {
            return Ok(result);
        }
        let seen: HashSet<TraceId> = result.traces.iter().map(|trace| trace.trace_id).collect();
        let (traces, complete) = self
            .legacy_find(filter, limit - result.traces.len(), budget, span_matches, |trace| {
                !seen.contains(&trace.trace_id) && trace_matches(trace)
            })
            .await?;
        result.complete &= complete;
        result.traces.extend(traces);
        Ok(result)
    }

    /// Service dependencies over `[end - lookback, end]`: parent/child span pairs whose services differ,
    /// each child span counted once however often it was stored. Rolled-up buckets are summed and the tail
    /// not rolled up yet is computed from the spans.
    pub async fn dependencies(&self, end_ns: i64, lookback_ns: i64) -> Result<Vec<DependencyLink>, StorageError> {
        crate::dependencies::query(&self.database, end_ns.saturating_sub(lookback_ns), end_ns).await
    }
}

fn trace_id_from(bytes: &[u8]) -> Result<TraceId, StorageError> {
    <[u8; 16]>::try_from(bytes)
        .map(TraceId)
        .map_err(|_| StorageError::Corrupt("trace id is not 16 bytes".into()))
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
