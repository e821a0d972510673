//! Writing batches of encoded span rows: one transaction per batch, resources first, then one binary COPY.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::Database;
use bytes::Bytes;
use futures_util::SinkExt;

use crate::block::{COPY_SPAN_BLOCKS, COPY_TRACE_INDEX};
use crate::copy::{copy_header, copy_trailer};
use crate::StorageError;

/// A resource row to insert (once per resource and day) before the spans that reference it.
#[derive(Clone, Debug)]
pub struct ResourceRow {
    pub id: i64,
    pub day: i32,
    pub service: String,
    pub cluster: Option<String>,
    /// The protobuf encoding of [`crate::model::Resource`].
    pub body: Bytes,
}

/// An operation (service, span name, kind) seen on a day, for the operations dictionary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationRow {
    pub service: String,
    pub name: String,
    pub kind: i16,
    pub day: i32,
}

/// The spans of one request, laid out in blocks ([`crate::block::BlockBuilder`]) and encoded as binary COPY
/// rows of the current [`crate::copy::ROW_FORMAT`].
#[derive(Clone, Debug, Default)]
pub struct EncodedSpans {
    /// `span_blocks` rows.
    pub rows: Bytes,
    pub span_count: usize,
    pub resources: Vec<ResourceRow>,
    /// Operations the collector has not recorded yet today.
    pub operations: Vec<OperationRow>,
    /// `trace_index` rows: one per (trace, block) of the request.
    pub trace_index: Bytes,
}

/// How long after its own deadline a write waits for a server that answers nothing before closing the
/// connection.
const UNANSWERED_GRACE: Duration = Duration::from_secs(1);

/// COPY data goes to the connection in messages of at most this many bytes. tokio-postgres copies each
/// message into its connection's write buffer, which keeps its capacity: one message of a whole 8 MiB
/// block would leave every pooled connection holding 8 MiB or more beyond the memory budget.
const COPY_MESSAGE_BYTES: usize = 64 * 1024;

/// The most (resource, day) pairs remembered as already stored; past it the memory is cleared, which only
/// costs a few redundant `ON CONFLICT DO NOTHING` inserts.
const KNOWN_RESOURCES_CAP: usize = 100_000;

/// Writes batches. Cheap to share: one per process.
#[derive(Debug)]
pub struct PostgresWriter {
    database: Database,
    known_resources: Mutex<HashSet<(i64, i32)>>,
}

impl PostgresWriter {
    pub fn new(database: Database) -> Self {
        Self {
            database,
            known_resources: Mutex::new(HashSet::new()),
        }
    }

    /// Writes the parts in one transaction and returns once it has committed, within `time`: waiting for a
    /// connection counts, and every statement runs with `statement_timeout` and `lock_timeout` set to what
    /// is left, so a locked table or a slow server aborts the transaction in PostgreSQL itself (an error here
    /// then means nothing was committed). If PostgreSQL does not answer at all, the connection is closed a
    /// moment after `time` and [`StorageError::Unanswered`] says the outcome is unknown.
    pub async fn write(&self, parts: &[&EncodedSpans], time: Duration) -> Result<(), StorageError> {
        let started = Instant::now();
        let mut client = tokio::time::timeout(time, self.database.get())
            .await
            .map_err(|_| StorageError::Pool("no database connection within the request's deadline".into()))??;
        let left = time.saturating_sub(started.elapsed());
        if left < Duration::from_millis(10) {
            return Err(StorageError::Pool(
                "no time left to write before the request's deadline".into(),
            ));
        }
        let new_resources = self.unknown_resources(parts);
        let commit_sent = AtomicBool::new(false);
        let write = write_on(&mut client, parts, &new_resources, left, &commit_sent);
        match tokio::time::timeout(left + UNANSWERED_GRACE, write).await {
            Ok(Ok(())) => {
                self.remember(&new_resources);
                Ok(())
            }
            Ok(Err(error)) => Err(error),
            Err(_) => {
                // The server did not answer even its own timeouts: drop the connection (the server rolls
                // back what it has not committed when it notices).
                drop(deadpool_postgres::Object::take(client));
                if commit_sent.load(Ordering::SeqCst) {
                    Err(StorageError::Unanswered)
                } else {
                    Err(StorageError::Pool(
                        "the database did not answer within the request's deadline".into(),
                    ))
                }
            }
        }
    }

    /// Opens `connections` pooled connections and has each read the span tables' catalog entries (every
    /// partition's), so the first writes after a start do not pay for a new backend and a cold relation cache
    /// (about 100-250 ms on a fresh server). Best effort: a database that is not reachable yet is not waited for.
    pub async fn warm_up(&self, connections: usize) {
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            match tokio::time::timeout(Duration::from_secs(5), self.database.get()).await {
                Ok(Ok(client)) => clients.push(client),
                _ => return,
            }
        }
        for client in &clients {
            let warmed = client
                .batch_execute(
                    "EXPLAIN SELECT * FROM span_blocks; EXPLAIN SELECT * FROM trace_index; \
                     EXPLAIN SELECT * FROM resources; EXPLAIN SELECT * FROM operations",
                )
                .await;
            if let Err(error) = warmed {
                tracing::debug!(%error, "warming up a writer connection failed");
                return;
            }
        }
    }

    fn unknown_resources<'a>(&self, parts: &[&'a EncodedSpans]) -> Vec<&'a ResourceRow> {
        let known = self
            .known_resources
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut seen = HashSet::new();
        parts
            .iter()
            .flat_map(|part| part.resources.iter())
            .filter(|row| !known.contains(&(row.id, row.day)) && seen.insert((row.id, row.day)))
            .collect()
    }

    fn remember(&self, rows: &[&ResourceRow]) {
        let mut known = self
            .known_resources
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if known.len() + rows.len() > KNOWN_RESOURCES_CAP {
            known.clear();
        }
        known.extend(rows.iter().map(|row| (row.id, row.day)));
    }
}

/// One transaction: resources, operations, the blocks' COPY, the trace index's COPY, COMMIT; every
/// statement bounded by `time` in PostgreSQL.
async fn write_on(
    client: &mut deadpool_postgres::Client,
    parts: &[&EncodedSpans],
    new_resources: &[&ResourceRow],
    time: Duration,
    commit_sent: &AtomicBool,
) -> Result<(), StorageError> {
    let transaction = client.transaction().await?;
    let millis = time.as_millis().clamp(1, i32::MAX as u128);
    transaction
        .batch_execute(&format!(
            "SET LOCAL statement_timeout = {millis}; SET LOCAL lock_timeout = {millis}"
        ))
        .await?;
    if !new_resources.is_empty() {
        let ids: Vec<i64> = new_resources.iter().map(|row| row.id).collect();
        let days: Vec<i32> = new_resources.iter().map(|row| row.day).collect();
        let services: Vec<&str> = new_resources.iter().map(|row| row.service.as_str()).collect();
        let clusters: Vec<Option<&str>> = new_resources.iter().map(|row| row.cluster.as_deref()).collect();
        let bodies: Vec<&[u8]> = new_resources.iter().map(|row| row.body.as_ref()).collect();
        transaction
            .execute(
                "INSERT INTO resources (resource_id, day, service, cluster, body)
                 SELECT * FROM unnest($1::int8[], $2::int4[], $3::text[], $4::text[], $5::bytea[])
                 ON CONFLICT DO NOTHING",
                &[&ids, &days, &services, &clusters, &bodies],
            )
            .await?;
    }
    let operations: Vec<&OperationRow> = parts.iter().flat_map(|part| part.operations.iter()).collect();
    if !operations.is_empty() {
        let services: Vec<&str> = operations.iter().map(|row| row.service.as_str()).collect();
        let names: Vec<&str> = operations.iter().map(|row| row.name.as_str()).collect();
        let kinds: Vec<i16> = operations.iter().map(|row| row.kind).collect();
        let days: Vec<i32> = operations.iter().map(|row| row.day).collect();
        // Sorted and deduplicated so concurrent writers lock rows in the same order (no deadlocks) and
        // one statement never updates a row twice.
        transaction
            .execute(
                "INSERT INTO operations (service, name, kind, last_seen_day)
                 SELECT service, name, kind, max(day)
                 FROM unnest($1::text[], $2::text[], $3::int2[], $4::int4[]) AS o(service, name, kind, day)
                 GROUP BY service, name, kind
                 ORDER BY service, name, kind
                 ON CONFLICT (service, name, kind) DO UPDATE SET last_seen_day = EXCLUDED.last_seen_day
                 WHERE operations.last_seen_day < EXCLUDED.last_seen_day",
                &[&services, &names, &kinds, &days],
            )
            .await?;
    }
    let sink = transaction.copy_in(COPY_SPAN_BLOCKS).await?;
    futures_util::pin_mut!(sink);
    sink.feed(copy_header()).await?;
    for part in parts.iter().filter(|part| !part.rows.is_empty()) {
        feed_in_messages(sink.as_mut(), &part.rows).await?;
    }
    sink.feed(copy_trailer()).await?;
    sink.as_mut().finish().await?;
    if parts.iter().any(|part| !part.trace_index.is_empty()) {
        let sink = transaction.copy_in(COPY_TRACE_INDEX).await?;
        futures_util::pin_mut!(sink);
        sink.feed(copy_header()).await?;
        for part in parts.iter().filter(|part| !part.trace_index.is_empty()) {
            feed_in_messages(sink.as_mut(), &part.trace_index).await?;
        }
        sink.feed(copy_trailer()).await?;
        sink.as_mut().finish().await?;
    }
    commit_sent.store(true, Ordering::SeqCst);
    transaction.commit().await?;
    Ok(())
}

/// Feeds `data` to a COPY in messages of at most [`COPY_MESSAGE_BYTES`] (slices of it, not copies).
async fn feed_in_messages(
    mut sink: std::pin::Pin<&mut tokio_postgres::CopyInSink<Bytes>>,
    data: &Bytes,
) -> Result<(), tokio_postgres::Error> {
    let mut start = 0;
    while start < data.len() {
        let end = (start + COPY_MESSAGE_BYTES).min(data.len());
        sink.feed(data.slice(start..end)).await?;
        start = end;
    }
    Ok(())
}
