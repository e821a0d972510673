//! The per-span tables of schema versions before 5 (`spans`, `operation_index`): no longer written, read
//! beside the blocks until retention drops their partitions. This is the reader those versions had.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::copy::{operation_key, sanitize_text};
use prost::Message;
use tokio_postgres::Row;

use crate::model::{Span, SpanDetail, SpanId, SpanKind, StatusCode, StoredResource, StoredSpan, TraceId};
use crate::StorageError;

use super::{
    trace_id_from, PostgresReader, SearchBudget, SpanFilter, StoredTrace, TimeRange, SEARCH_FETCH_TRACES,
    TRACE_SLACK_NS,
};

pub(super) const SPAN_COLUMNS: &str =
    "trace_id, span_id, parent_span_id, start_ns, service, name, kind, status, cluster, resource_id, detail";

impl PostgresReader {
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

    /// The legacy `spans` table's part of [`PostgresReader::get_traces`]: traces by ID, in the order asked; IDs with no stored span are left out. Each trace holds at most
    /// [`PostgresReader::max_spans_per_trace`] spans, the first by start time, and says when it holds fewer than
    /// are stored.
    ///
    /// Spans are deduplicated here, on read: a client that retried an export whose acknowledgement it lost
    /// may have stored the same (trace ID, span ID) twice, and the first copy wins.
    pub(super) async fn legacy_get_traces(
        &self,
        trace_ids: &[TraceId],
        range: TimeRange,
    ) -> Result<Vec<StoredTrace>, StorageError> {
        if trace_ids.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.database.get().await?;
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
        let resources = self.load_resources(&**client, &resource_ids).await?;
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

    /// Newest-first search: traces with a span selected by `filter` for which `span_matches` holds (given the
    /// span's resource), and for which `trace_matches` holds as a whole; at most `limit`, within `budget`.
    ///
    /// Candidate spans come newest first from the `(service, start_ns DESC)` index, a page at a time, one
    /// index walk per service; `span_matches` runs on the candidates themselves, so only traces with a
    /// matching span are fetched whole.
    pub(super) async fn legacy_find(
        &self,
        filter: &SpanFilter,
        limit: usize,
        budget: SearchBudget,
        span_matches: impl Fn(&StoredSpan, Option<&StoredResource>) -> bool,
        trace_matches: impl Fn(&StoredTrace) -> bool,
    ) -> Result<(Vec<StoredTrace>, bool), StorageError> {
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
            return Ok((Vec::new(), true));
        }
        if filter.operation.is_some() {
            return self
                .legacy_find_by_operation(&services, filter, limit, budget, span_matches, trace_matches)
                .await;
        }
        let mut found = Vec::new();
        let mut found_spans = 0usize;
        let mut examined = HashSet::new();
        let mut resources: HashMap<i64, StoredResource> = HashMap::new();
        let mut upper = filter.start_max_ns;
        let mut page_spans = (limit as i64).saturating_mul(8).clamp(1, budget.page_spans.max(1));
        for _ in 0..budget.max_pages {
            let client = self.database.get().await?;
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
            resources.extend(self.load_resources(&**client, &missing).await?);
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
                for trace in self.legacy_get_traces(&ids, range).await? {
                    if trace_matches(&trace) {
                        found_spans += trace.spans.len();
                        found.push(trace);
                        if found.len() >= limit {
                            return Ok((found, true));
                        }
                        if found_spans >= self.max_spans_per_search {
                            return Ok((found, false));
                        }
                    }
                }
            }
            let Some(lowest) = lowest else { return Ok((found, true)) };
            if exhausted {
                return Ok((found, true));
            }
            if started.elapsed() > budget.max_time {
                break;
            }
            // The next page starts below the oldest span of this one. Spans sharing that exact nanosecond
            // with the page's last row may be skipped; their traces usually have other spans to find them by.
            upper = lowest as i64 - 1;
        }
        Ok((found, false))
    }

    /// Search by operation: candidate traces come newest first from `operation_index`, are fetched whole and
    /// kept when one of their spans matches (which also rules out hash collisions).
    async fn legacy_find_by_operation(
        &self,
        services: &[String],
        filter: &SpanFilter,
        limit: usize,
        budget: SearchBudget,
        span_matches: impl Fn(&StoredSpan, Option<&StoredResource>) -> bool,
        trace_matches: impl Fn(&StoredTrace) -> bool,
    ) -> Result<(Vec<StoredTrace>, bool), StorageError> {
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
            let client = self.database.get().await?;
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
                let client = self.database.get().await?;
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
                let resources = self.load_resources(&**client, &resource_ids).await?;
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
                    for trace in self.legacy_get_traces(chunk, range).await? {
                        if trace_matches(&trace) {
                            found_spans += trace.spans.len();
                            found.push(trace);
                            if found.len() >= limit {
                                return Ok((found, true));
                            }
                            if found_spans >= self.max_spans_per_search {
                                return Ok((found, false));
                            }
                        }
                    }
                }
            }
            if exhausted || rows.is_empty() {
                return Ok((found, true));
            }
            if started.elapsed() > budget.max_time {
                break;
            }
            upper = lowest - 1;
        }
        Ok((found, false))
    }
}

pub(super) fn span_from_row(row: &Row) -> Result<StoredSpan, StorageError> {
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
