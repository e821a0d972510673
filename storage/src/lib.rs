//! tracepost's storage: the span model, the PostgreSQL schema and its migrations, the binary COPY writer,
//! trace reads and partition maintenance. Depends on no other tracepost crate.

pub mod block;
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

pub use db::{connect_pool, ConnectError, DatabaseConfig, DEFAULT_STATEMENT_TIMEOUT};
pub use deadpool_postgres::Pool;
pub use reader::{
    DependencyLink, SearchBudget, SearchResult, SpanFilter, StoredTrace, TimeRange, TraceReader,
    DEFAULT_MAX_SPANS_PER_SEARCH, DEFAULT_MAX_SPANS_PER_TRACE,
};
pub use writer::{EncodedSpans, OperationRow, ResourceRow, SpanWriter};

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database unavailable: {0}")]
    Pool(String),
    #[error("database error: {}", describe_db_error(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("migration {version} failed: {reason}")]
    Migration { version: i32, reason: String },
    #[error("stored data cannot be decoded: {0}")]
    Corrupt(String),
    /// COMMIT was sent and PostgreSQL never answered: the transaction may or may not have committed.
    #[error("the database did not answer COMMIT; the outcome is unknown")]
    Unanswered,
}

impl StorageError {
    /// True when the database could not answer, rather than answered wrongly: unreachable, the pool's wait for
    /// a connection timed out, the connection was lost, the server is shutting down or out of connections, or
    /// a statement was cancelled (its statement timeout, SQLSTATE 57014). Worth retrying later (HTTP 503).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Pool(_) | Self::Unanswered => true,
            Self::Db(error) => match error.as_db_error() {
                Some(db) => {
                    let code = db.code().code();
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
                // No server error: the connection itself failed (closed, refused, timed out, TLS).
                None => {
                    error.is_closed()
                        || std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>())
                        || [
                            "error connecting to server",
                            "timeout waiting for server",
                            "error performing TLS handshake",
                        ]
                        .iter()
                        .any(|prefix| error.to_string().starts_with(prefix))
                }
            },
            Self::Migration { .. } | Self::Corrupt(_) => false,
        }
    }

    /// True when retrying the same data cannot succeed (PostgreSQL refused a value, not a connection).
    pub fn is_data_error(&self) -> bool {
        let Self::Db(error) = self else { return false };
        error.as_db_error().is_some_and(|db| {
            let code = db.code().code();
            // 22 data exception, 23 integrity constraint, 54 program limit (an index row too large).
            code.starts_with("22") || code.starts_with("23") || code.starts_with("54")
        })
    }
}

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(error) => Self::Db(error),
            other => Self::Pool(other.to_string()),
        }
    }
}

/// A database error with PostgreSQL's own message and SQLSTATE when there is one.
pub fn describe_db_error(error: &tokio_postgres::Error) -> String {
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
