//! The caps on what one request to the query and Tempo APIs may ask for. Asking for more than a cap allows is
//! a 400 that names the cap and says how to narrow the request; a trace longer than the span cap is cut.

use tracepost_storage::{PostgresReader, DEFAULT_MAX_SPANS_PER_SEARCH, DEFAULT_MAX_SPANS_PER_TRACE};

use crate::traceql::{self, ParseLimits};

/// Caps on one request, each a setting of its own (the field docs are the `--help` lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryLimits {
    /// Traces one search may return at most (Jaeger `limit`, api_v3 `query.searchDepth`, Tempo `limit`, trace IDs per multi-get); asking for more is a 400.
    pub max_traces_per_search: usize,
    /// Spans per span set one Tempo search may return at most (`spss`); asking for more is a 400.
    pub max_spans_per_span_set: usize,
    /// Spans returned per trace at most; a longer trace is cut to its first spans by start time, with a warning in Jaeger's JSON.
    pub max_spans_per_trace: usize,
    /// Spans one search may return at most, all traces together; past it the search answers with the traces found so far.
    pub max_spans_per_search: usize,
    /// Bytes a TraceQL query may have at most; a longer one is a 400.
    pub max_traceql_length: usize,
    /// Parentheses a TraceQL query may nest at most; a deeper one is a 400.
    pub max_traceql_depth: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            // The Jaeger UI's own maximum for "Limit Results".
            max_traces_per_search: 1500,
            // Tempo's default `max_spans_per_span_set`.
            max_spans_per_span_set: 100,
            max_spans_per_trace: DEFAULT_MAX_SPANS_PER_TRACE,
            max_spans_per_search: DEFAULT_MAX_SPANS_PER_SEARCH,
            max_traceql_length: traceql::DEFAULT_MAX_LENGTH,
            max_traceql_depth: traceql::DEFAULT_MAX_DEPTH,
        }
    }
}

impl QueryLimits {
    pub(crate) fn traceql(&self) -> ParseLimits {
        ParseLimits {
            max_length: self.max_traceql_length,
            max_depth: self.max_traceql_depth,
        }
    }

    /// The refusal of a search asking for `asked` traces (through `parameter`), when over the cap.
    pub(crate) fn check_traces(&self, parameter: &str, asked: usize) -> Result<(), String> {
        if asked <= self.max_traces_per_search {
            return Ok(());
        }
        Err(format!(
            "{parameter}={asked} is over the limit of {} traces per search: ask for fewer, or narrow the search \
             (service, operation, tags, a shorter time range)",
            self.max_traces_per_search
        ))
    }
}

/// What the handlers share: where traces come from, and the caps.
#[derive(Clone, Debug)]
pub(crate) struct Shared<S = PostgresReader> {
    pub(crate) reader: S,
    pub(crate) limits: QueryLimits,
}

/// The warning on the first span of a trace that was cut to its first `shown` spans (Jaeger's query service
/// does the same with its `max_trace_size`; the Jaeger UI lists a span's warnings in its details).
pub(crate) fn truncation_warning(shown: usize) -> String {
    format!("trace truncated: only its first {shown} spans by start time are shown (the span limit per trace)")
}

/// The response header saying a trace was cut, where the format (OTLP) has no place for it.
pub(crate) const TRUNCATED_HEADER: &str = "tracepost-trace-truncated";

/// Set (to `true`) on a search response when the search stopped at its budget before it had looked at everything
/// that could match: there may be more matching traces than the response holds.
pub(crate) const SEARCH_INCOMPLETE_HEADER: &str = "tracepost-search-incomplete";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asking_for_more_traces_than_the_cap_names_the_cap_and_how_to_narrow() {
        let limits = QueryLimits::default();
        assert_eq!(limits.check_traces("limit", 1500), Ok(()));
        assert_eq!(
            limits.check_traces("limit", 1501),
            Err(
                "limit=1501 is over the limit of 1500 traces per search: ask for fewer, or narrow the search \
                 (service, operation, tags, a shorter time range)"
                    .to_owned()
            )
        );
    }
}
