//! The TraceQL subset tracepost's Tempo search understands.
//!
//! One spanset filter, `{}` (every span) or `{ expr }`, where `expr` combines comparisons with `&&` and `||`
//! (`&&` binds tighter) and parentheses. Grafana's search builder emits `{a && b && (c || d)}`, with
//! parenthesised `||` groups for multi-value `=` and `&&` groups for multi-value `!=`.
//!
//! * Fields: `resource.<attr>`, `span.<attr>`, `.<attr>` (the span's attribute, else its resource's; a quoted
//!   name such as `span."a b"` is accepted too) and the intrinsics `name`, `status`, `kind`, `duration` and
//!   `traceDuration` (also spelled `span:name`, `span:status`, `span:kind`, `span:duration`, `trace:duration`).
//! * Operators: `= != =~ !~ > >= < <=`.
//! * Values: `"strings"` (Go escapes; a backslash before any other character is kept, for regex escapes) and
//!   `` `raw strings` ``, integers, floats, Go durations (`100ms`, `1.5s`, `1h30m`), `true`/`false`, the status
//!   keywords `ok|error|unset` and the kind keywords `client|server|producer|consumer|internal|unspecified`.
//! * Regular expressions (`=~`, `!~`) have RE2 syntax, as in Tempo, and match the whole value. Unlike Go's,
//!   the classes `\d \w \s` include non-ASCII digits, letters and spaces. One whose compiled form would be
//!   large is refused, so none is expensive.
//!
//! Every span-level comparison of a query holds on one span. `traceDuration` is the trace's (latest end minus
//! earliest start). A comparison on an attribute the span does not have is false, whatever the operator.
//!
//! Attribute values compare by the query value's type: a string compares with the attribute's string form (an
//! integer attribute `503` equals `"503"`); a number compares numerically with numeric attributes and with
//! string attributes that parse as numbers (Linkerd sends every attribute as a string); a bool compares with
//! bool attributes and with the strings `true`/`false`.
//!
//! The modules follow a query's way through: `lexer` (text to tokens), `parser` (tokens to the `ast`), `check`
//! (operators and values suit their fields; regular expressions compiled by `pattern`), `eval` (a query on a
//! span and its trace) and `plan` (what storage can select candidates by).

mod ast;
mod check;
mod eval;
mod lexer;
mod parser;
mod pattern;
mod plan;
#[cfg(test)]
mod tests;

use std::fmt;

use tracepost_storage::model::{SpanKind, StatusCode, StoredResource, StoredSpan};
use tracepost_storage::StoredTrace;

use ast::Expr;
pub(crate) use ast::{Comparison, Field, Op, Operand};
use eval::trace_duration_nanos;
use eval::Context;
use parser::Parser;

/// The resource attribute naming the service; tracepost derives it for every span.
pub(crate) const SERVICE_NAME: &str = "service.name";

/// A span's status as TraceQL sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanStatus {
    Unset,
    Ok,
    Error,
}

impl SpanStatus {
    /// The TraceQL keyword: `unset`, `ok` or `error`.
    pub fn keyword(self) -> &'static str {
        match self {
            Self::Unset => "unset",
            Self::Ok => "ok",
            Self::Error => "error",
        }
    }
}

/// The status TraceQL's `status` compares against. Every status decision of the Tempo API goes through here,
/// so that deriving errors from other signals (HTTP 5xx responses, say) changes one place.
pub fn span_status(span: &StoredSpan) -> SpanStatus {
    match span.span.status_code {
        StatusCode::Error => SpanStatus::Error,
        StatusCode::Ok => SpanStatus::Ok,
        StatusCode::Unset => SpanStatus::Unset,
    }
}

/// The TraceQL keyword of a span kind.
pub fn kind_keyword(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Unspecified => "unspecified",
        SpanKind::Internal => "internal",
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
    }
}

/// The status keywords, in the order Tempo lists them.
pub const STATUS_KEYWORDS: [&str; 3] = ["ok", "error", "unset"];
/// The kind keywords, in the order Tempo lists them.
pub const KIND_KEYWORDS: [&str; 6] = ["client", "server", "producer", "consumer", "internal", "unspecified"];

/// Bounds on the queries [`Query::parse_with`] accepts, so that no query text can exhaust the parser's stack
/// or the evaluator's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseLimits {
    /// Bytes of query text at most.
    pub max_length: usize,
    /// Parentheses nested inside one another at most.
    pub max_depth: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            max_length: DEFAULT_MAX_LENGTH,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

/// The default [`ParseLimits::max_length`]: Grafana's builder writes a few hundred bytes even for many
/// selected values.
pub const DEFAULT_MAX_LENGTH: usize = 16 * 1024;
/// The default [`ParseLimits::max_depth`]: Grafana's builder nests one level.
pub const DEFAULT_MAX_DEPTH: usize = 32;

/// Why a query was refused; its text says what and where (1-based character position).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at character {position})")]
pub struct ParseError {
    message: String,
    position: usize,
    limit_exceeded: bool,
}

impl ParseError {
    fn new(message: impl Into<String>, position: usize) -> Self {
        Self {
            message: message.into(),
            position: position + 1,
            limit_exceeded: false,
        }
    }

    fn limit(message: impl Into<String>, position: usize) -> Self {
        Self {
            limit_exceeded: true,
            ..Self::new(message, position)
        }
    }

    /// Whether the query was refused for exceeding a [`ParseLimits`] bound rather than for its syntax.
    pub fn is_limit_exceeded(&self) -> bool {
        self.limit_exceeded
    }
}

/// A parsed query: a predicate on spans (and on their trace's duration).
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    filter: Option<Expr>,
}

impl Query {
    /// Parses a query within the default [`ParseLimits`]; an empty or blank text is `{}`.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        Self::parse_with(text, ParseLimits::default())
    }

    /// Parses a query within `limits`; an empty or blank text is `{}`.
    pub fn parse_with(text: &str, limits: ParseLimits) -> Result<Self, ParseError> {
        if text.len() > limits.max_length {
            return Err(ParseError::limit(
                format!(
                    "the query is {} bytes long, over the limit of {} bytes: shorten it, e.g. with one regular \
                     expression (`=~ \"a|b\"`) instead of many `||` terms",
                    text.len(),
                    limits.max_length
                ),
                0,
            ));
        }
        if text.trim().is_empty() {
            return Ok(Self::match_all());
        }
        Parser::new(text, limits.max_depth)?.query()
    }

    /// `{}`: every span.
    pub fn match_all() -> Self {
        Self { filter: None }
    }

    /// Whether the query is `{}`.
    pub fn is_match_all(&self) -> bool {
        self.filter.is_none()
    }

    /// Whether a span may match, its trace's duration unknown (`traceDuration` comparisons are assumed to hold):
    /// a cheap first test on candidate spans.
    pub fn may_match_span(&self, span: &StoredSpan, resource: Option<&StoredResource>) -> bool {
        self.eval(Context {
            span,
            resource,
            trace_duration: None,
        })
    }

    /// The spans of a trace that match, in the trace's order; the trace matches when there is one.
    pub fn matching_spans<'a>(&self, trace: &'a StoredTrace) -> Vec<&'a StoredSpan> {
        let duration = trace_duration_nanos(trace);
        trace
            .spans
            .iter()
            .filter(|span| {
                self.eval(Context {
                    span,
                    resource: trace.resource_of(span),
                    trace_duration: Some(duration),
                })
            })
            .collect()
    }

    /// Whether some span of the trace matches.
    pub fn matches_trace(&self, trace: &StoredTrace) -> bool {
        let duration = trace_duration_nanos(trace);
        trace.spans.iter().any(|span| {
            self.eval(Context {
                span,
                resource: trace.resource_of(span),
                trace_duration: Some(duration),
            })
        })
    }

    fn eval(&self, context: Context<'_>) -> bool {
        self.filter.as_ref().is_none_or(|expr| expr.eval(context))
    }

    /// Adds a condition that must also hold (legacy search parameters).
    pub(crate) fn and(self, comparison: Comparison) -> Self {
        let added = Expr::Compare(comparison);
        let filter = match self.filter {
            None => added,
            Some(Expr::And(mut terms)) => {
                terms.push(added);
                Expr::And(terms)
            }
            Some(other) => Expr::And(vec![other, added]),
        };
        Self { filter: Some(filter) }
    }
}

impl fmt::Display for SpanStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}
