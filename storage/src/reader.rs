//! Reading traces back.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Pool;
use prost::Message;

use crate::model::{Resource, Span, SpanDetail, SpanId, SpanKind, StatusCode, StoredResource, StoredSpan, TraceId};
use crate::StorageError;

/// A trace as stored: its spans (each span ID once, ordered by start time) and the resources they reference.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredTrace {
    pub trace_id: TraceId,
    pub spans: Vec<StoredSpan>,
    pub resources: HashMap<i64, StoredResource>,
}

/// Optional bounds on a trace's span start times, in Unix nanoseconds (a hint that prunes partitions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

/// Reads traces. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TraceReader {
    pool: Pool,
}

impl TraceReader {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Fetches one trace. `None` when no span of it is stored.
    ///
    /// Spans are deduplicated here, on read: a client that retried an export whose acknowledgement it lost
    /// may have stored the same (trace ID, span ID) twice, and the first copy wins.
    pub async fn get_trace(&self, trace_id: TraceId, range: TimeRange) -> Result<Option<StoredTrace>, StorageError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "SELECT span_id, parent_span_id, start_ns, service, name, kind, status, cluster, resource_id, detail
                 FROM spans
                 WHERE trace_id = $1 AND start_ns >= $2 AND start_ns <= $3
                 ORDER BY start_ns, span_id",
            )
            .await?;
        let rows = client
            .query(
                &statement,
                &[
                    &trace_id.0.as_slice(),
                    &range.start.unwrap_or(i64::MIN),
                    &range.end.unwrap_or(i64::MAX),
                ],
            )
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut seen = HashSet::with_capacity(rows.len());
        let mut spans = Vec::with_capacity(rows.len());
        for row in rows {
            let span_id = SpanId::from_i64(row.get(0));
            if !seen.insert(span_id) {
                continue;
            }
            let parent: Option<i64> = row.get(1);
            let start: i64 = row.get(2);
            let detail_bytes: &[u8] = row.get(9);
            let detail = SpanDetail::decode(detail_bytes).map_err(|error| StorageError::Corrupt(error.to_string()))?;
            spans.push(StoredSpan {
                span: Span {
                    trace_id,
                    span_id,
                    parent_span_id: parent.map(SpanId::from_i64),
                    name: row.get(4),
                    kind: SpanKind::from_i32(i32::from(row.get::<_, i16>(5))),
                    start_time_unix_nano: start.max(0) as u64,
                    status_code: StatusCode::from_i32(i32::from(row.get::<_, i16>(6))),
                    detail,
                },
                service_name: row.get(3),
                cluster: row.get(7),
                resource_id: row.get(8),
            });
        }
        let resource_ids: Vec<i64> = spans
            .iter()
            .map(|span| span.resource_id)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let resource_rows = client
            .query(
                "SELECT DISTINCT ON (resource_id) resource_id, service, cluster, body
                 FROM resources WHERE resource_id = ANY($1)",
                &[&resource_ids],
            )
            .await?;
        let mut resources = HashMap::with_capacity(resource_rows.len());
        for row in resource_rows {
            let id: i64 = row.get(0);
            let body: &[u8] = row.get(3);
            let resource = Resource::decode(body).map_err(|error| StorageError::Corrupt(error.to_string()))?;
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
        Ok(Some(StoredTrace {
            trace_id,
            spans,
            resources,
        }))
    }
}
