//! tracepost's storage: the span model, the PostgreSQL schema and its migrations, the binary COPY writer,
//! trace reads and partition maintenance. Depends on no other tracepost crate.

pub mod block;
pub mod contract;
pub mod copy;
pub mod db;
pub mod dependencies;
pub mod limits;
pub mod model;
pub mod partitions;
pub mod reader;
pub mod schema;
pub mod time;
pub mod writer;

pub use contract::{SpanPredicate, TracePredicate, TraceReader, TraceWriter};
pub use db::{connect_pool, ConnectError, Database, DatabaseConfig, DEFAULT_STATEMENT_TIMEOUT};
pub use reader::{
    DependencyLink, PostgresReader, SearchBudget, SearchResult, SpanFilter, StoredTrace, TimeRange,
    DEFAULT_MAX_SPANS_PER_SEARCH, DEFAULT_MAX_SPANS_PER_TRACE,
};
pub use writer::{EncodedSpans, OperationRow, PostgresWriter, ResourceRow};

/// Why a storage call failed. Says what happened without exposing the driver: callers decide by
/// [`StorageError::is_unavailable`] and [`StorageError::is_data_error`].
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database unavailable: {0}")]
    Pool(String),
    /// The database answered with an error, or the connection to it failed.
    #[error("database error: {message}")]
    Db {
        /// PostgreSQL's message and SQLSTATE, or the connection's failure.
        message: String,
        /// The SQLSTATE, when PostgreSQL answered.
        sqlstate: Option<String>,
        /// No server error: the connection itself failed (closed, refused, timed out, TLS).
        connection_failed: bool,
    },
    #[error("migration {version} failed: {reason}")]
    Migration { version: i32, reason: String },
    #[error("stored data cannot be decoded: {0}")]
    Corrupt(String),
    /// COMMIT was sent and PostgreSQL never answered: the transaction may or may not have committed.
    #[error("the database did not answer COMMIT; the outcome is unknown")]
    Unanswered,
}

impl From<tokio_postgres::Error> for StorageError {
    fn from(error: tokio_postgres::Error) -> Self {
        let sqlstate = error.as_db_error().map(|db| db.code().code().to_owned());
        let connection_failed = sqlstate.is_none()
            && (error.is_closed()
                || std::error::Error::source(&error).is_some_and(|source| source.is::<std::io::Error>())
                || [
                    "error connecting to server",
                    "timeout waiting for server",
                    "error performing TLS handshake",
                ]
                .iter()
                .any(|prefix| error.to_string().starts_with(prefix)));
        Self::Db {
            message: describe_db_error(&error),
            sqlstate,
            connection_failed,
        }
    }
}

impl StorageError {
    /// True when the database could not answer, rather than answered wrongly: unreachable, the pool's wait for
    /// a connection timed out, the connection was lost, the server is shutting down or out of connections, or
    /// a statement was cancelled (its statement timeout, SQLSTATE 57014). Worth retrying later (HTTP 503).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Pool(_) | Self::Unanswered => true,
            Self::Db {
                sqlstate: Some(code), ..
            } => {
                // 08: connection exception; 53: insufficient resources (too many connections);
                // 57014: query_canceled; 57P01-57P05: shutdown, crash, cannot connect now, idle timeouts.
                // 28: authentication failed; 3D000: the database does not exist (a deployment not ready yet).
                code.starts_with("08")
                    || code.starts_with("53")
                    || code == "57014"
                    || code.starts_with("57P")
                    || code.starts_with("28")
                    || code == "3D000"
            }
            Self::Db {
                sqlstate: None,
                connection_failed,
                ..
            } => *connection_failed,
            Self::Migration { .. } | Self::Corrupt(_) => false,
        }
    }

    /// True when retrying the same data cannot succeed (PostgreSQL refused a value, not a connection).
    pub fn is_data_error(&self) -> bool {
        let Self::Db {
            sqlstate: Some(code), ..
        } = self
        else {
            return false;
        };
        // 22 data exception, 23 integrity constraint, 54 program limit (an index row too large).
        code.starts_with("22") || code.starts_with("23") || code.starts_with("54")
    }
}

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(error) => error.into(),
            other => Self::Pool(other.to_string()),
        }
    }
}

/// A database error with PostgreSQL's own message and SQLSTATE when there is one.
pub(crate) fn describe_db_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(sqlstate: Option<&str>, connection_failed: bool) -> StorageError {
        StorageError::Db {
            message: "m".into(),
            sqlstate: sqlstate.map(str::to_owned),
            connection_failed,
        }
    }

    #[test]
    fn database_errors_are_classified_by_sqlstate_without_the_driver() {
        assert!(db(Some("57014"), false).is_unavailable(), "statement timeout");
        assert!(db(Some("08006"), false).is_unavailable(), "connection failure");
        assert!(db(None, true).is_unavailable(), "connection refused");
        assert!(!db(None, false).is_unavailable());
        assert!(db(Some("23505"), false).is_data_error());
        assert!(db(Some("22021"), false).is_data_error());
        assert!(!db(Some("57014"), false).is_data_error());
        assert!(
            !db(Some("42P01"), false).is_unavailable(),
            "a missing table is a bug, not an outage"
        );
    }

    #[test]
    fn pool_failures_are_unavailable_and_corrupt_rows_are_not() {
        assert!(StorageError::Pool("timed out waiting for a connection".into()).is_unavailable());
        assert!(!StorageError::Corrupt("bad detail".into()).is_unavailable());
        assert!(!StorageError::Migration {
            version: 1,
            reason: "syntax".into()
        }
        .is_unavailable());
    }
}
