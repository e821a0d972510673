//! The storage contract: what a trace store promises the collector and the query API, whatever keeps the
//! spans. [`crate::PostgresWriter`] and [`crate::PostgresReader`] are the PostgreSQL implementation. The
//! collector's pipeline and the query routes hold those types today and use no more than is written here
//! (plus their constructors and limits); a second backend would make them generic over these traits.

use std::future::Future;
use std::time::Duration;

use crate::model::{SpanKind, StoredResource, StoredSpan, TraceId};
use crate::{
    DependencyLink, EncodedSpans, SearchBudget, SearchResult, SpanFilter, StorageError, StoredTrace, TimeRange,
};

/// Which spans a search keeps, given the span and its resource.
pub type SpanPredicate<'a> = &'a (dyn Fn(&StoredSpan, Option<&StoredResource>) -> bool + Send + Sync);
/// Which traces a search keeps, given the whole trace.
pub type TracePredicate<'a> = &'a (dyn Fn(&StoredTrace) -> bool + Send + Sync);

/// Writes spans.
///
/// - **Durability.** [`TraceWriter::write`] returns `Ok` only once every span of every part is durable (in
///   PostgreSQL: committed), so the caller may acknowledge them.
/// - **Atomicity.** The parts of one call are stored together or not at all, except when the outcome is
///   unknown ([`StorageError::Unanswered`]: COMMIT was sent and never answered).
/// - **Time.** A call takes at most `time` (plus a moment when the store does not answer at all); a call
///   that fails in time stored nothing, so a refusal never becomes a write later.
/// - **Idempotency.** None on write: writing the same spans twice stores them twice; readers deduplicate by
///   (trace ID, span ID), and a block written twice is read once.
/// - **Ordering.** None: the spans of a trace may arrive in any order, over any number of calls and
///   collectors.
/// - **Errors.** [`StorageError::is_unavailable`]: worth retrying; [`StorageError::is_data_error`]: the same
///   data will be refused again (write the parts one at a time to find the one).
pub trait TraceWriter: Send + Sync {
    fn write(&self, parts: &[&EncodedSpans], time: Duration) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// Reads traces.
///
/// - **Identity.** A span is its (trace ID, span ID): every answer holds each span once, whatever was stored
///   twice.
/// - **Ordering.** A trace's spans by start time; search results newest first.
/// - **Limits.** A trace holds at most the reader's spans per trace (the first ones, marked
///   [`StoredTrace::truncated`]); a search at most `limit` traces, within its [`SearchBudget`], and says in
///   [`SearchResult::complete`] whether it looked at everything that could match.
/// - **Damage.** Stored data that cannot be decoded is left out of the answer and counted, never an error.
/// - **Errors.** As for [`TraceWriter`]: [`StorageError::is_unavailable`] when the store could not answer.
pub trait TraceReader: Send + Sync {
    /// Traces by ID, in the order asked, leaving out IDs with no stored span; `range` bounds span starts.
    fn get_traces(
        &self,
        trace_ids: &[TraceId],
        range: TimeRange,
    ) -> impl Future<Output = Result<Vec<StoredTrace>, StorageError>> + Send;

    /// Service names, sorted.
    fn services(&self) -> impl Future<Output = Result<Vec<String>, StorageError>> + Send;

    /// A service's operations (name and kind), sorted by name; `kind` narrows them to one span kind.
    fn operations(
        &self,
        service: &str,
        kind: Option<SpanKind>,
    ) -> impl Future<Output = Result<Vec<(String, SpanKind)>, StorageError>> + Send;

    /// Newest-first search: traces with a span selected by `filter` for which `span_matches` holds, and for
    /// which `trace_matches` holds as a whole; at most `limit`, within `budget`.
    fn search(
        &self,
        filter: &SpanFilter,
        limit: usize,
        budget: SearchBudget,
        span_matches: SpanPredicate<'_>,
        trace_matches: TracePredicate<'_>,
    ) -> impl Future<Output = Result<SearchResult, StorageError>> + Send;

    /// Service dependencies over `[end - lookback, end]`.
    fn dependencies(
        &self,
        end_ns: i64,
        lookback_ns: i64,
    ) -> impl Future<Output = Result<Vec<DependencyLink>, StorageError>> + Send;
}

impl TraceWriter for crate::PostgresWriter {
    async fn write(&self, parts: &[&EncodedSpans], time: Duration) -> Result<(), StorageError> {
        crate::PostgresWriter::write(self, parts, time).await
    }
}

impl TraceReader for crate::PostgresReader {
    async fn get_traces(&self, trace_ids: &[TraceId], range: TimeRange) -> Result<Vec<StoredTrace>, StorageError> {
        crate::PostgresReader::get_traces(self, trace_ids, range).await
    }

    async fn services(&self) -> Result<Vec<String>, StorageError> {
        crate::PostgresReader::services(self).await
    }

    async fn operations(&self, service: &str, kind: Option<SpanKind>) -> Result<Vec<(String, SpanKind)>, StorageError> {
        crate::PostgresReader::operations(self, service, kind).await
    }

    async fn search(
        &self,
        filter: &SpanFilter,
        limit: usize,
        budget: SearchBudget,
        span_matches: SpanPredicate<'_>,
        trace_matches: TracePredicate<'_>,
    ) -> Result<SearchResult, StorageError> {
        crate::PostgresReader::search(self, filter, limit, budget, span_matches, trace_matches).await
    }

    async fn dependencies(&self, end_ns: i64, lookback_ns: i64) -> Result<Vec<DependencyLink>, StorageError> {
        crate::PostgresReader::dependencies(self, end_ns, lookback_ns).await
    }
}
