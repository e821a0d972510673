//! Service dependencies: parent/child span pairs whose services differ, rolled up in 5-minute buckets.

use std::collections::BTreeMap;

use deadpool_postgres::Pool;

use crate::reader::DependencyLink;
use crate::StorageError;

/// Bucket width of the roll-up.
pub const BUCKET_NS: i64 = 5 * 60 * 1_000_000_000;
/// A bucket is rolled up once it has been closed this long (late spans of a batch still arriving).
pub const SETTLE_NS: i64 = 2 * 60 * 1_000_000_000;
/// Without any roll-up yet (a fresh install, or no collector running), live computation covers at most this.
const LIVE_CAP_NS: i64 = 6 * 3600 * 1_000_000_000;
/// Buckets rolled up per pass at most.
const MAX_BUCKETS_PER_PASS: i64 = 288;

const ROLLUP_NAME: &str = "dependencies";
/// Advisory lock key held while rolling up (ASCII "tpdepend").
const ROLLUP_LOCK: i64 = 0x7470_6465_7065_6e64;

/// Parent/child pairs for child spans starting in `[$1, $2)`, each child span counted once; a parent is
/// looked for up to an hour before its child.
const EDGES_SQL: &str = "SELECT p.service, c.service, count(DISTINCT (c.trace_id, c.span_id))
     FROM spans c
     JOIN spans p ON p.trace_id = c.trace_id AND p.span_id = c.parent_span_id
                 AND p.start_ns >= $1 - 3600000000000 AND p.start_ns < $2
    WHERE c.start_ns >= $1 AND c.start_ns < $2 AND c.parent_span_id IS NOT NULL AND p.service <> c.service
    GROUP BY 1, 2";

/// Rolls up the buckets that have settled since the last pass, under an advisory lock (one instance does it).
/// Returns the number of buckets rolled up.
pub async fn rollup(pool: &Pool, now_ns: i64, retention_ns: i64) -> Result<i64, StorageError> {
    let mut client = pool.get().await?;
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
    let insert = format!(
        "INSERT INTO dependency_edges (bucket_ns, parent, child, call_count)
         SELECT $1, e.* FROM ({}) e
         ON CONFLICT (bucket_ns, parent, child) DO UPDATE SET call_count = EXCLUDED.call_count",
        EDGES_SQL.replace("$2", "$3").replace("$1", "$2")
    );
    let mut rolled = 0;
    while bucket + BUCKET_NS <= settled_until && rolled < MAX_BUCKETS_PER_PASS {
        let transaction = client.transaction().await?;
        transaction
            .execute(&insert, &[&bucket, &bucket, &(bucket + BUCKET_NS)])
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
pub(crate) async fn query(pool: &Pool, from_ns: i64, to_ns: i64) -> Result<Vec<DependencyLink>, StorageError> {
    let client = pool.get().await?;
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
        let rows = client.query(EDGES_SQL, &[&live_from, &to_ns.saturating_add(1)]).await?;
        for row in rows {
            *totals.entry((row.get(0), row.get(1))).or_default() += row.get::<_, i64>(2);
        }
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
