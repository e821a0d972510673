//! tracepost's storage: the span model, the PostgreSQL schema and its migrations, the binary COPY writer,
//! trace reads and partition maintenance. Depends on no other tracepost crate.

pub mod copy;
pub mod db;
pub mod dependencies;
pub mod model;
pub mod partitions;
pub mod reader;
pub mod schema;
pub mod time;
pub mod writer;

pub use db::{connect_pool, ConnectError, DatabaseConfig, DEFAULT_STATEMENT_TIMEOUT};
pub use deadpool_postgres::Pool;
pub use reader::{
    DependencyLink, SearchBudget, SpanFilter, StoredTrace, TimeRange, TraceReader, DEFAULT_MAX_SPANS_PER_TRACE,
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
}

impl StorageError {
    /// True when retrying the same data cannot succeed (PostgreSQL refused a value, not a connection).
    pub fn is_data_error(&self) -> bool {
        let Self::Db(error) = self else { return false };
        error.as_db_error().is_some_and(|db| {
            let code = db.code().code();
            code.starts_with("22") || code.starts_with("23")
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
