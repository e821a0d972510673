//! Daily span partitions: created ahead of time, dropped after the retention period. Run by the collector
//! role, one instance at a time (a PostgreSQL advisory lock elects it).

use std::time::Duration;

use crate::Database;

use crate::time::{civil_from_days, days_from_civil, NANOS_PER_DAY};
use crate::StorageError;

/// Advisory lock key held while maintaining partitions (ASCII "tpmaintn").
const MAINTENANCE_LOCK: i64 = 0x7470_6d61_696e_746e;

/// What one maintenance pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// False when another instance holds the maintenance lock (this one did nothing).
    pub ran: bool,
    pub created: Vec<String>,
    pub dropped: Vec<String>,
    /// Blocks (rows of `span_blocks_default`, each holding one or more spans) deleted from the default partition
    /// because they are older than the retention.
    pub expired_default_rows: u64,
    /// Partitions analyzed (new, or changed much since their last statistics).
    pub analyzed: Vec<String>,
}

/// The tables partitioned by day on `start_ns`, each with a `<table>_default` partition, and whether they are
/// still written (partitions are created ahead only for those; every one is dropped after the retention).
const PARTITIONED_TABLES: &[(&str, bool)] = &[
    ("span_blocks", true),
    ("trace_index", true),
    // The per-span tables of schema versions before 5: read until retention empties them.
    ("spans", false),
    ("operation_index", false),
];

/// A partition is analyzed again once this share of its rows has changed since it last was (and at least
/// [`ANALYZE_MIN_CHANGES`] rows): a new day's partition starts without statistics, and nothing may depend
/// on autovacuum having got to it.
const ANALYZE_CHANGED_SHARE: f64 = 0.1;
const ANALYZE_MIN_CHANGES: i64 = 1000;

/// The name of the `span_blocks` partition holding one day (days since the Unix epoch):
/// `span_blocks_pYYYYMMDD`.
pub fn partition_name(day: i32) -> String {
    table_partition_name("span_blocks", day)
}

fn table_partition_name(table: &str, day: i32) -> String {
    let (year, month, day_of_month) = civil_from_days(day);
    format!("{table}_p{year:04}{month:02}{day_of_month:02}")
}

fn parse_partition_name(table: &str, name: &str) -> Option<i32> {
    let digits = name.strip_prefix(table)?.strip_prefix("_p")?;
    if digits.len() != 8 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let year = digits[0..4].parse().ok()?;
    let month = digits[4..6].parse().ok()?;
    let day = digits[6..8].parse().ok()?;
    Some(days_from_civil(year, month, day))
}

/// The size of one partition of a day-partitioned table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionSize {
    /// The partitioned table: `span_blocks`, `trace_index` (and the per-span tables of schema versions < 5).
    pub relation: String,
    /// The day the partition holds (`YYYY-MM-DD`), or `default`.
    pub day: String,
    /// Heap, TOAST and indexes, in bytes.
    pub bytes: i64,
}

/// Every partition of the day-partitioned tables and its size on disk, everything included: what a day of
/// spans costs. Reads the catalogs only.
pub async fn partition_sizes(database: &Database) -> Result<Vec<PartitionSize>, StorageError> {
    let client = database.get().await?;
    let tables: Vec<&str> = PARTITIONED_TABLES.iter().map(|(table, _)| *table).collect();
    let rows = client
        .query(
            "SELECT parent.relname::text, child.relname::text, pg_total_relation_size(child.oid)
             FROM pg_inherits
             JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
             JOIN pg_class child ON child.oid = pg_inherits.inhrelid
             WHERE parent.relname = ANY($1) AND parent.relnamespace = current_schema()::regnamespace
             ORDER BY 1, 2",
            &[&tables],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let relation: String = row.get(0);
            let partition: String = row.get(1);
            let day = if partition == format!("{relation}_default") {
                "default".to_owned()
            } else {
                let (year, month, day) = civil_from_days(parse_partition_name(&relation, &partition)?);
                format!("{year:04}-{month:02}-{day:02}")
            };
            Some(PartitionSize {
                relation,
                day,
                bytes: row.get(2),
            })
        })
        .collect())
}

/// Creates the partitions for `today - 1 ..= today + days_ahead` and drops those wholly older than
/// `retention`, if this instance wins the maintenance lock.
pub async fn maintain(
    database: &Database,
    now_unix_nanos: i64,
    days_ahead: i32,
    retention: Duration,
) -> Result<MaintenanceReport, StorageError> {
    let mut client = database.get().await?;
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&MAINTENANCE_LOCK])
        .await?
        .get(0);
    if !locked {
        return Ok(MaintenanceReport::default());
    }
    // Background work, not a query: the pool's statement timeout does not apply to it (moving a day's rows
    // out of the default partition may take a while).
    let outcome = match client.batch_execute("SET statement_timeout = 0").await {
        Ok(()) => maintain_locked(&mut client, now_unix_nanos, days_ahead, retention).await,
        Err(error) => Err(error.into()),
    };
    let unlock = client
        .batch_execute(&format!(
            "RESET statement_timeout; SELECT pg_advisory_unlock({MAINTENANCE_LOCK})"
        ))
        .await;
    let report = outcome?;
    unlock?;
    Ok(report)
}

async fn maintain_locked(
    client: &mut deadpool_postgres::Client,
    now_unix_nanos: i64,
    days_ahead: i32,
    retention: Duration,
) -> Result<MaintenanceReport, StorageError> {
    let mut report = MaintenanceReport {
        ran: true,
        ..Default::default()
    };
    let retention_nanos = i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX);
    let cutoff = now_unix_nanos.saturating_sub(retention_nanos);
    let today = crate::time::day_of(now_unix_nanos);
    let oldest_kept = crate::time::day_of(cutoff);
    for &(table, written) in PARTITIONED_TABLES {
        let existing: Vec<i32> = client
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = $1::text::regclass",
                &[&table],
            )
            .await?
            .iter()
            .filter_map(|row| parse_partition_name(table, row.get::<_, &str>(0)))
            .collect();
        for day in (today - 1).max(oldest_kept)..=today + days_ahead {
            if written && !existing.contains(&day) {
                create_partition(client, table, day).await?;
                report.created.push(table_partition_name(table, day));
            }
        }
        for &day in &existing {
            let upper = (i64::from(day) + 1) * NANOS_PER_DAY;
            if upper <= cutoff {
                drop_partition(client, table, day).await?;
                report.dropped.push(table_partition_name(table, day));
            }
        }
        let mut expired = client
            .execute(&format!("DELETE FROM {table}_default WHERE start_ns < $1"), &[&cutoff])
            .await?;
        expired += expire_beyond_window(client, table, now_unix_nanos, cutoff, today + days_ahead).await?;
        if table == "span_blocks" {
            report.expired_default_rows = expired;
        }
    }
    report.analyzed = analyze_changed(client, today).await?;
    client
        .execute("DELETE FROM resources WHERE day < $1", &[&(oldest_kept - 1)])
        .await?;
    client
        .execute("DELETE FROM operations WHERE last_seen_day < $1", &[&(oldest_kept - 1)])
        .await?;
    if !report.created.is_empty() || !report.dropped.is_empty() {
        tracing::info!(created = ?report.created, dropped = ?report.dropped, "maintained partitions");
    }
    Ok(report)
}

/// Analyzes the written tables' partitions of yesterday, today and tomorrow, and their default partitions,
/// when they have no statistics yet or have changed by [`ANALYZE_CHANGED_SHARE`] since they were analyzed.
async fn analyze_changed(client: &deadpool_postgres::Client, today: i32) -> Result<Vec<String>, StorageError> {
    let mut names = Vec::new();
    for (table, _) in PARTITIONED_TABLES.iter().filter(|(_, written)| *written) {
        names.push(format!("{table}_default"));
        for day in today - 1..=today + 1 {
            names.push(table_partition_name(table, day));
        }
    }
    let due: Vec<String> = client
        .query(
            "SELECT s.relname::text FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
             WHERE s.relname = ANY($1) AND s.schemaname = current_schema()
               AND s.n_mod_since_analyze >= greatest($2::int8, (greatest(c.reltuples, 0) * $3::float8)::int8)",
            &[&names, &ANALYZE_MIN_CHANGES, &ANALYZE_CHANGED_SHARE],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for name in &due {
        client.batch_execute(&format!("ANALYZE {name}")).await?;
    }
    if !due.is_empty() {
        tracing::debug!(analyzed = ?due, "analyzed partitions");
    }
    Ok(due)
}

/// Rows of the default partition dated after the last daily partition (`last_day`) are kept for the
/// retention counted from when maintenance first saw their day (recorded in `out_of_window_days`), then
/// deleted; a day that gets its partition meanwhile has its rows moved there and is forgotten here.
async fn expire_beyond_window(
    client: &deadpool_postgres::Client,
    table: &str,
    now_unix_nanos: i64,
    cutoff: i64,
    last_day: i32,
) -> Result<u64, StorageError> {
    let window_end = (i64::from(last_day) + 1) * NANOS_PER_DAY;
    client
        .execute(
            &format!(
                "INSERT INTO out_of_window_days (table_name, day, first_seen_ns)
                 SELECT $1::text, (start_ns / {NANOS_PER_DAY})::int4, $2::int8 FROM {table}_default
                 WHERE start_ns >= $3 GROUP BY start_ns / {NANOS_PER_DAY}
                 ON CONFLICT DO NOTHING"
            ),
            &[&table, &now_unix_nanos, &window_end],
        )
        .await?;
    let expired = client
        .execute(
            &format!(
                "DELETE FROM {table}_default d USING out_of_window_days o
                 WHERE o.table_name = $1 AND o.first_seen_ns < $2 AND d.start_ns / {NANOS_PER_DAY} = o.day"
            ),
            &[&table, &cutoff],
        )
        .await?;
    client
        .execute(
            "DELETE FROM out_of_window_days WHERE table_name = $1 AND (first_seen_ns < $2 OR day <= $3)",
            &[&table, &cutoff, &last_day],
        )
        .await?;
    Ok(expired)
}

/// Creates one day's partition, moving in any rows the default partition holds for that day, and attaches
/// it (attaching takes a lighter lock on the parent than `CREATE TABLE ... PARTITION OF`).
async fn create_partition(client: &mut deadpool_postgres::Client, table: &str, day: i32) -> Result<(), StorageError> {
    let name = table_partition_name(table, day);
    let lower = i64::from(day) * NANOS_PER_DAY;
    let upper = lower + NANOS_PER_DAY;
    let transaction = client.transaction().await?;
    transaction
        .batch_execute(&format!(
            "LOCK TABLE {table}_default IN SHARE ROW EXCLUSIVE MODE;
             CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE
                                  INCLUDING COMPRESSION);
             WITH moved AS (DELETE FROM {table}_default WHERE start_ns >= {lower} AND start_ns < {upper}
                            RETURNING *)
             INSERT INTO {name} SELECT * FROM moved;
             ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ({lower}) TO ({upper});"
        ))
        .await?;
    transaction.commit().await?;
    Ok(())
}

/// Drops a partition. This takes an exclusive lock on the parent for a moment (`DETACH ... CONCURRENTLY`
/// is not available while a default partition exists), so it waits at most `lock_timeout` behind running
/// queries and is retried at the next maintenance pass otherwise, rather than queueing writers behind it.
async fn drop_partition(client: &mut deadpool_postgres::Client, table: &str, day: i32) -> Result<(), StorageError> {
    let name = table_partition_name(table, day);
    let transaction = client.transaction().await?;
    transaction
        .batch_execute(&format!("SET LOCAL lock_timeout = '5s'; DROP TABLE {name}"))
        .await?;
    transaction.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip() {
        let day = days_from_civil(2026, 11, 23);
        assert_eq!(partition_name(day), "span_blocks_p20261123");
        assert_eq!(parse_partition_name("spans", "spans_p20261123"), Some(day));
        assert_eq!(parse_partition_name("spans", "spans_default"), None);
        assert_eq!(parse_partition_name("spans", "operation_index_p20261123"), None);
    }
}
