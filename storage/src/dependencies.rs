//! Service dependencies: parent/child span pairs whose services differ, rolled up in 5-minute buckets.

use std::collections::{BTreeMap, HashMap};

use crate::Database;
use bytes::Bytes;

use crate::block::decode_block;
use crate::reader::DependencyLink;
use crate::time::NANOS_PER_DAY;
use crate::StorageError;

/// Bucket width of the roll-up.
pub const BUCKET_NS: i64 = 5 * 60 * 1_000_000_000;
/// A bucket is rolled up once it has been closed this long (late spans of a batch still arriving).
pub const SETTLE_NS: i64 = 2 * 60 * 1_000_000_000;
/// Without any roll-up yet (a fresh install, or no collector running), live computation covers at most this.
const LIVE_CAP_NS: i64 = 3600 * 1_000_000_000;
/// Buckets rolled up per pass at most.
const MAX_BUCKETS_PER_PASS: i64 = 288;

const ROLLUP_NAME: &str = "dependencies";
/// Advisory lock key held while rolling up (ASCII "tpdepend").
const ROLLUP_LOCK: i64 = 0x7470_6465_7065_6e64;

/// Children are paired with parents that started at most this long before them (a slice of children and
/// this much before it are held in memory at once, as 8-byte span hashes).
const PARENT_WINDOW_NS: i64 = 30 * 1_000_000_000;
/// Children are paired a slice of this much start time at a time.
const SLICE_NS: i64 = 30 * 1_000_000_000;

/// Parent/child pairs for child spans starting in `[from, to)`, each child span counted once however often it
/// was stored; a parent is looked for among the spans that started up to [`PARENT_WINDOW_NS`] before its
/// child. Computed from the span blocks a slice at a time, so memory stays bounded by the span rate.
async fn edges(
    client: &deadpool_postgres::Client,
    from: i64,
    to: i64,
    totals: &mut BTreeMap<(String, String), i64>,
) -> Result<(), StorageError> {
    let statement = client
        .prepare_cached(
            "SELECT service, spans FROM span_blocks
             WHERE last_start_ns >= $1 AND start_ns < $2 AND start_ns >= $3",
        )
        .await?;
    let mut slice = from;
    while slice < to {
        let end = (slice + SLICE_NS).min(to);
        let window = slice - PARENT_WINDOW_NS;
        let first_day = window - window.rem_euclid(NANOS_PER_DAY);
        // Streamed: a slice's blocks are decoded one at a time, never held together.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&window, &end, &first_day];
        let rows = client.query_raw(&statement, params).await?;
        futures_util::pin_mut!(rows);
        let mut services: Vec<String> = Vec::new();
        let mut service_of: HashMap<u64, u32> = HashMap::new();
        let mut children: HashMap<u64, (u64, u32)> = HashMap::new();
        while let Some(row) = futures_util::TryStreamExt::try_next(&mut rows).await? {
            let service: &str = row.get(0);
            let index = match services.iter().position(|known| known == service) {
                Some(index) => index as u32,
                None => {
                    services.push(service.to_owned());
                    (services.len() - 1) as u32
                }
            };
            let Ok(block) = decode_block(Bytes::copy_from_slice(row.get::<_, &[u8]>(1))) else {
                continue;
            };
            for span in &block.spans {
                let start = i64::try_from(span.start_time_unix_nano).unwrap_or(i64::MAX);
                if start < window || start >= end {
                    continue;
                }
                service_of.insert(span_key(&span.trace_id, &span.span_id), index);
                if start >= slice && !span.parent_span_id.is_empty() {
                    children.insert(
                        span_key(&span.trace_id, &span.span_id),
                        (span_key(&span.trace_id, &span.parent_span_id), index),
                    );
                }
            }
        }
        for (parent, child_service) in children.values() {
            if let Some(parent_service) = service_of.get(parent) {
                if parent_service != child_service {
                    let key = (
                        services[*parent_service as usize].clone(),
                        services[*child_service as usize].clone(),
                    );
                    *totals.entry(key).or_default() += 1;
                }
            }
        }
        slice = end;
    }
    Ok(())
}

/// A 64-bit key for a (trace ID, span ID) pair.
fn span_key(trace_id: &[u8], span_id: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in trace_id.iter().chain(span_id) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Rolls up the buckets that have settled since the last pass, under an advisory lock (one instance does it).
/// Returns the number of buckets rolled up.
pub async fn rollup(database: &Database, now_ns: i64, retention_ns: i64) -> Result<i64, StorageError> {
    let mut client = database.get().await?;
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&ROLLUP_LOCK])
        .await?
        .get(0);
    if !locked {
        return Ok(0);
    }
    // Background work, not a query: the pool's statement timeout does not apply to it.
    let outcome = match client.batch_execute("SET statement_timeout = 0").await {
        Ok(()) => rollup_locked(&mut client, now_ns, retention_ns).await,
        Err(error) => Err(error.into()),
    };
    let unlock = client
        .batch_execute(&format!(
            "RESET statement_timeout; SELECT pg_advisory_unlock({ROLLUP_LOCK})"
        ))
        .await;
    let buckets = outcome?;
    unlock?;
    Ok(buckets)
}

async fn rollup_locked(
    client: &mut deadpool_postgres::Client,
    now_ns: i64,
    retention_ns: i64,
) -> Result<i64, StorageError> {
    let settled_until = (now_ns - SETTLE_NS).div_euclid(BUCKET_NS) * BUCKET_NS;
    let done: Option<i64> = client
        .query_opt(
            "SELECT done_until_ns FROM rollup_state WHERE name = $1",
            &[&ROLLUP_NAME],
        )
        .await?
        .map(|row| row.get(0));
    let oldest = (now_ns - retention_ns).div_euclid(BUCKET_NS) * BUCKET_NS;
    let mut bucket = done.unwrap_or(settled_until - LIVE_CAP_NS).max(oldest);
    let mut rolled = 0;
    while bucket + BUCKET_NS <= settled_until && rolled < MAX_BUCKETS_PER_PASS {
        let mut totals = BTreeMap::new();
        edges(client, bucket, bucket + BUCKET_NS, &mut totals).await?;
        let parents: Vec<&str> = totals.keys().map(|(parent, _)| parent.as_str()).collect();
        let children: Vec<&str> = totals.keys().map(|(_, child)| child.as_str()).collect();
        let counts: Vec<i64> = totals.values().copied().collect();
        let transaction = client.transaction().await?;
        transaction
            .execute(
                "INSERT INTO dependency_edges (bucket_ns, parent, child, call_count)
                 SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int8[])
                 ON CONFLICT (bucket_ns, parent, child) DO UPDATE SET call_count = EXCLUDED.call_count",
                &[&bucket, &parents, &children, &counts],
            )
            .await?;
        transaction
            .execute(
                "INSERT INTO rollup_state (name, done_until_ns) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET done_until_ns = EXCLUDED.done_until_ns",
                &[&ROLLUP_NAME, &(bucket + BUCKET_NS)],
            )
            .await?;
        transaction.commit().await?;
        bucket += BUCKET_NS;
        rolled += 1;
    }
    client
        .execute("DELETE FROM dependency_edges WHERE bucket_ns < $1", &[&oldest])
        .await?;
    Ok(rolled)
}

/// Links over `[from_ns, to_ns]`: the rolled-up buckets plus the tail not rolled up yet, computed live.
pub(crate) async fn query(database: &Database, from_ns: i64, to_ns: i64) -> Result<Vec<DependencyLink>, StorageError> {
    let client = database.get().await?;
    let done: Option<i64> = client
        .query_opt(
            "SELECT done_until_ns FROM rollup_state WHERE name = $1",
            &[&ROLLUP_NAME],
        )
        .await?
        .map(|row| row.get(0));
    let mut totals: BTreeMap<(String, String), i64> = BTreeMap::new();
    let live_from = match done {
        Some(done) => {
            let rows = client
                .query(
                    "SELECT parent, child, sum(call_count)::bigint FROM dependency_edges
                     WHERE bucket_ns >= $1 AND bucket_ns < $2 GROUP BY 1, 2",
                    &[
                        &from_ns.div_euclid(BUCKET_NS).saturating_mul(BUCKET_NS),
                        &done.min(to_ns),
                    ],
                )
                .await?;
            for row in rows {
                *totals.entry((row.get(0), row.get(1))).or_default() += row.get::<_, i64>(2);
            }
            done.max(from_ns)
        }
        None => from_ns.max(to_ns - LIVE_CAP_NS),
    };
    if live_from <= to_ns {
        edges(&client, live_from, to_ns.saturating_add(1), &mut totals).await?;
    }
    Ok(totals
        .into_iter()
        .map(|((parent, child), call_count)| DependencyLink {
            parent,
            child,
            call_count,
        })
        .collect())
}
