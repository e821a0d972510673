//! Numbered, embedded migrations, each applied in its own transaction and recorded in a version table.
//! Several replicas starting together serialize on a PostgreSQL advisory lock.

use crate::Database;

use crate::StorageError;

/// A migration: its number, its name, and its SQL.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. Append only: never edit one that has shipped.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "spans",
        sql: include_str!("../migrations/0001_spans.sql"),
    },
    Migration {
        version: 2,
        name: "query_dictionaries",
        sql: include_str!("../migrations/0002_query_dictionaries.sql"),
    },
    Migration {
        version: 3,
        name: "operation_search",
        sql: include_str!("../migrations/0003_operation_search.sql"),
    },
    Migration {
        version: 4,
        name: "out_of_window_days",
        sql: include_str!("../migrations/0004_out_of_window_days.sql"),
    },
    Migration {
        version: 5,
        name: "span_blocks",
        sql: include_str!("../migrations/0005_span_blocks.sql"),
    },
    Migration {
        version: 6,
        name: "sql_access",
        sql: include_str!("../migrations/0006_sql_access.sql"),
    },
];

/// The schema version this binary needs.
pub const REQUIRED_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// Advisory lock key held while migrating (ASCII "tpmigrat").
pub(crate) const MIGRATION_LOCK: i64 = 0x7470_6d69_6772_6174;

const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS tracepost_schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// Applies pending migrations and returns the versions applied now. The pool's statement timeout does not
/// apply: a migration, or waiting for another replica's, may take longer.
pub async fn migrate(database: &Database) -> Result<Vec<i32>, StorageError> {
    let mut client = database.get().await?;
    client.batch_execute("SET statement_timeout = 0").await?;
    let outcome = migrate_locked(&mut client).await;
    // Back to the connection's own setting before it returns to the pool.
    let reset = client.batch_execute("RESET statement_timeout").await;
    let applied = outcome?;
    reset?;
    Ok(applied)
}

async fn migrate_locked(client: &mut deadpool_postgres::Client) -> Result<Vec<i32>, StorageError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let outcome = apply_pending(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let applied = outcome?;
    unlock?;
    Ok(applied)
}

async fn apply_pending(client: &mut deadpool_postgres::Client) -> Result<Vec<i32>, StorageError> {
    client.batch_execute(VERSION_TABLE).await?;
    let current = current_version_of(client).await?;
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|migration| migration.version > current) {
        let transaction = client.transaction().await?;
        transaction
            .batch_execute(migration.sql)
            .await
            .map_err(|error| StorageError::Migration {
                version: migration.version,
                reason: crate::describe_db_error(&error),
            })?;
        transaction
            .execute(
                "INSERT INTO tracepost_schema_migrations (version, name) VALUES ($1, $2)",
                &[&migration.version, &migration.name],
            )
            .await?;
        transaction.commit().await?;
        tracing::info!(version = migration.version, name = migration.name, "applied migration");
        applied.push(migration.version);
    }
    Ok(applied)
}

/// Grants `role` what the read-only query role needs, and nothing more: CONNECT on this database, USAGE on
/// the schema, SELECT on every table there now and (default privileges of the role running this, which is
/// the one that migrates) on every table later migrations add. Idempotent; the role must exist.
pub async fn grant_read(database: &Database, role: &str) -> Result<(), StorageError> {
    let client = database.get().await?;
    let exists: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", &[&role])
        .await?
        .get(0);
    if !exists {
        return Err(StorageError::Db {
            message: format!("role {role:?} does not exist: create it (it needs LOGIN) before granting it read access"),
            sqlstate: None,
            connection_failed: false,
        });
    }
    let name: String = client.query_one("SELECT current_database()", &[]).await?.get(0);
    let (role, name) = (quote_identifier(role), quote_identifier(&name));
    client
        .batch_execute(&format!(
            "GRANT CONNECT ON DATABASE {name} TO {role};
             GRANT USAGE ON SCHEMA public TO {role};
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {role};"
        ))
        .await?;
    Ok(())
}

/// `name` as a PostgreSQL identifier in double quotes, inner quotes doubled: any text names exactly itself.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The newest applied migration, 0 when none is.
pub async fn current_version(database: &Database) -> Result<i32, StorageError> {
    let client = database.get().await?;
    current_version_of(&client).await
}

async fn current_version_of(client: &tokio_postgres::Client) -> Result<i32, StorageError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('tracepost_schema_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_one("SELECT coalesce(max(version), 0) FROM tracepost_schema_migrations", &[])
        .await?
        .get(0))
}
