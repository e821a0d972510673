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
//! * Regular expressions (`=~`, `!~`) match the whole value. Only literal characters, escaped metacharacters
//!   (`\.`), `.`, the classes `\d \w \s`, the quantifiers `* + ?` and top-level `|` alternatives are supported:
//!   what Grafana emits (`"a|b"`, with metacharacters escaped) and the usual `.*` wildcards.
//!
//! Every span-level comparison of a query holds on one span. `traceDuration` is the trace's (latest end minus
//! earliest start). A comparison on an attribute the span does not have is false, whatever the operator.
//!
//! Attribute values compare by the query value's type: a string compares with the attribute's string form (an
//! integer attribute `503` equals `"503"`); a number compares numerically with numeric attributes and with
//! string attributes that parse as numbers (Linkerd sends every attribute as a string); a bool compares with
//! bool attributes and with the strings `true`/`false`.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use base64::Engine as _;
use tracepost_storage::model::{self, SpanKind, StatusCode, StoredResource, StoredSpan};
use tracepost_storage::StoredTrace;

use crate::params::parse_go_duration;

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

/// Why a query was refused; its text says what and where (1-based character position).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at character {position})")]
pub struct ParseError {
    message: String,
    position: usize,
}

impl ParseError {
    fn new(message: impl Into<String>, position: usize) -> Self {
        Self {
            message: message.into(),
            position: position + 1,
        }
    }
}

/// A parsed query: a predicate on spans (and on their trace's duration).
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    filter: Option<Expr>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Compare(Comparison),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Comparison {
    pub(crate) field: Field,
    pub(crate) op: Op,
    pub(crate) operand: Operand,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Field {
    Resource(String),
    Span(String),
    /// `.attr`: the span's attribute, else its resource's.
    Unscoped(String),
    Name,
    Status,
    Kind,
    Duration,
    TraceDuration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Match,
    NotMatch,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    fn is_regex(self) -> bool {
        matches!(self, Self::Match | Self::NotMatch)
    }

    fn is_equality(self) -> bool {
        matches!(self, Self::Eq | Self::Ne)
    }

    /// Whether `ordering` (value compared with operand) satisfies a non-regex operator.
    fn accepts(self, ordering: Ordering) -> bool {
        match self {
            Self::Eq => ordering == Ordering::Equal,
            Self::Ne => ordering != Ordering::Equal,
            Self::Gt => ordering == Ordering::Greater,
            Self::Ge => ordering != Ordering::Less,
            Self::Lt => ordering == Ordering::Less,
            Self::Le => ordering != Ordering::Greater,
            Self::Match | Self::NotMatch => false,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::Match => "=~",
            Self::NotMatch => "!~",
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Lt => "<",
            Self::Le => "<=",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Operand {
    Str(String),
    Int(i64),
    Float(f64),
    /// Nanoseconds.
    Duration(i64),
    Bool(bool),
    Status(SpanStatus),
    Kind(SpanKind),
    Pattern(Pattern),
}

/// What a comparison is evaluated against: one span, its resource, and its trace's duration when known.
#[derive(Clone, Copy)]
struct Context<'a> {
    span: &'a StoredSpan,
    resource: Option<&'a StoredResource>,
    /// `None` while only the span is known: `traceDuration` comparisons then hold (the trace is checked later).
    trace_duration: Option<i64>,
}

impl Query {
    /// Parses a query; an empty or blank text is `{}`.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        if text.trim().is_empty() {
            return Ok(Self::match_all());
        }
        Parser::new(text)?.query()
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

    /// The conditions every matching span satisfies (the top-level `&&` terms).
    fn conjuncts(&self) -> &[Expr] {
        match &self.filter {
            None => &[],
            Some(Expr::And(terms)) => terms,
            Some(other) => std::slice::from_ref(other),
        }
    }

    /// The services a matching span can belong to, when the query names them with `=` only (`resource.service.name
    /// = "a"`, or an `||` group of such); `None` when it does not, or also constrains them otherwise (see
    /// [`Query::constrains_service`]).
    pub(crate) fn exact_services(&self) -> Option<Vec<String>> {
        let mut exact: Option<Vec<String>> = None;
        for term in self.conjuncts() {
            if !term.on_service_only() {
                continue;
            }
            let values = term.equality_values()?;
            exact = Some(match exact {
                None => values,
                Some(previous) => previous.into_iter().filter(|value| values.contains(value)).collect(),
            });
        }
        exact
    }

    /// Whether some top-level condition depends on the service name only (and so can select services).
    pub(crate) fn constrains_service(&self) -> bool {
        self.conjuncts().iter().any(Expr::on_service_only)
    }

    /// Whether a service passes every top-level condition that depends on the service name only.
    pub(crate) fn service_allowed(&self, service: &str) -> bool {
        self.conjuncts()
            .iter()
            .filter(|term| term.on_service_only())
            .all(|term| term.eval_service(service))
    }

    /// The span name every matching span has, when the query says `name = "…"` at the top level.
    pub(crate) fn operation(&self) -> Option<&str> {
        self.conjuncts().iter().find_map(|term| match term {
            Expr::Compare(Comparison {
                field: Field::Name,
                op: Op::Eq,
                operand: Operand::Str(name),
            }) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Inclusive bounds on the duration of every matching span, in nanoseconds, from top-level comparisons.
    pub(crate) fn span_duration_bounds(&self) -> (Option<i64>, Option<i64>) {
        let mut min: Option<i64> = None;
        let mut max: Option<i64> = None;
        for term in self.conjuncts() {
            let Expr::Compare(Comparison {
                field: Field::Duration,
                op,
                operand: Operand::Duration(nanos),
            }) = term
            else {
                continue;
            };
            let (low, high) = match op {
                Op::Eq => (Some(*nanos), Some(*nanos)),
                Op::Gt => (Some(nanos.saturating_add(1)), None),
                Op::Ge => (Some(*nanos), None),
                Op::Lt => (None, Some(nanos.saturating_sub(1))),
                Op::Le => (None, Some(*nanos)),
                _ => (None, None),
            };
            if let Some(low) = low {
                min = Some(min.map_or(low, |min| min.max(low)));
            }
            if let Some(high) = high {
                max = Some(max.map_or(high, |max| max.min(high)));
            }
        }
        (min, max)
    }

    /// The fields the query compares, each once, in order of appearance.
    pub(crate) fn fields(&self) -> Vec<&Field> {
        let mut fields = Vec::new();
        if let Some(expr) = &self.filter {
            expr.collect_fields(&mut fields);
        }
        fields
    }
}

/// The trace's duration: latest end minus earliest start, in nanoseconds.
pub(crate) fn trace_duration_nanos(trace: &StoredTrace) -> i64 {
    let nanos = trace.end_time_unix_nano().saturating_sub(trace.start_time_unix_nano());
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

impl Expr {
    fn eval(&self, context: Context<'_>) -> bool {
        match self {
            Self::And(terms) => terms.iter().all(|term| term.eval(context)),
            Self::Or(terms) => terms.iter().any(|term| term.eval(context)),
            Self::Compare(comparison) => comparison.eval(context),
        }
    }

    fn on_service_only(&self) -> bool {
        match self {
            Self::And(terms) | Self::Or(terms) => terms.iter().all(Self::on_service_only),
            Self::Compare(comparison) => comparison.field.is_service(),
        }
    }

    /// The values of `= "…"` comparisons joined by `||` (or a single one); `None` for anything else.
    fn equality_values(&self) -> Option<Vec<String>> {
        match self {
            Self::Compare(Comparison {
                op: Op::Eq,
                operand: Operand::Str(value),
                ..
            }) => Some(vec![value.clone()]),
            Self::Or(terms) => {
                let mut values = Vec::new();
                for term in terms {
                    values.extend(term.equality_values()?);
                }
                Some(values)
            }
            _ => None,
        }
    }

    fn eval_service(&self, service: &str) -> bool {
        match self {
            Self::And(terms) => terms.iter().all(|term| term.eval_service(service)),
            Self::Or(terms) => terms.iter().any(|term| term.eval_service(service)),
            Self::Compare(comparison) => compare_value(
                &model::Value::Str(service.to_owned()),
                comparison.op,
                &comparison.operand,
            ),
        }
    }

    fn collect_fields<'a>(&'a self, fields: &mut Vec<&'a Field>) {
        match self {
            Self::And(terms) | Self::Or(terms) => terms.iter().for_each(|term| term.collect_fields(fields)),
            Self::Compare(comparison) => {
                if !fields.contains(&&comparison.field) {
                    fields.push(&comparison.field);
                }
            }
        }
    }
}

impl Field {
    fn is_service(&self) -> bool {
        matches!(self, Self::Resource(key) if key == SERVICE_NAME)
    }

    /// The attribute value a span has for this field (attributes only; intrinsics give `None`).
    pub(crate) fn attribute<'a>(
        &self,
        span: &'a StoredSpan,
        resource: Option<&'a StoredResource>,
    ) -> Option<Cow<'a, model::Value>> {
        match self {
            Self::Span(key) => span_attribute(span, key).map(Cow::Borrowed),
            Self::Resource(key) => resource_attribute(span, resource, key),
            Self::Unscoped(key) => span_attribute(span, key)
                .map(Cow::Borrowed)
                .or_else(|| resource_attribute(span, resource, key)),
            _ => None,
        }
    }
}

fn span_attribute<'a>(span: &'a StoredSpan, key: &str) -> Option<&'a model::Value> {
    model::find_attribute(&span.span.detail.attributes, key).and_then(model::KeyValue::value)
}

/// A resource attribute; `service.name` is the service tracepost derived (present even when the resource is
/// not, or has none).
fn resource_attribute<'a>(
    span: &'a StoredSpan,
    resource: Option<&'a StoredResource>,
    key: &str,
) -> Option<Cow<'a, model::Value>> {
    if key == SERVICE_NAME {
        return Some(Cow::Owned(model::Value::Str(span.service_name.clone())));
    }
    resource
        .and_then(|resource| model::find_attribute(&resource.resource.attributes, key))
        .and_then(model::KeyValue::value)
        .map(Cow::Borrowed)
}

impl Comparison {
    pub(crate) fn new(field: Field, op: Op, operand: Operand) -> Self {
        Self { field, op, operand }
    }

    fn eval(&self, context: Context<'_>) -> bool {
        let span = context.span;
        match &self.field {
            Field::Name => compare_text(span.span.original_name(), self.op, &self.operand),
            Field::Status => match self.operand {
                Operand::Status(status) => self.op.accepts(equality(span_status(span) == status)),
                _ => false,
            },
            Field::Kind => match self.operand {
                Operand::Kind(kind) => self.op.accepts(equality(span.span.kind == kind)),
                _ => false,
            },
            Field::Duration => {
                let nanos = i64::try_from(span.span.duration_nanos()).unwrap_or(i64::MAX);
                compare_duration(nanos, self.op, &self.operand)
            }
            Field::TraceDuration => context
                .trace_duration
                .is_none_or(|nanos| compare_duration(nanos, self.op, &self.operand)),
            Field::Resource(_) | Field::Span(_) | Field::Unscoped(_) => self
                .field
                .attribute(span, context.resource)
                .is_some_and(|value| compare_value(&value, self.op, &self.operand)),
        }
    }
}

fn equality(equal: bool) -> Ordering {
    if equal {
        Ordering::Equal
    } else {
        Ordering::Less
    }
}

fn compare_duration(nanos: i64, op: Op, operand: &Operand) -> bool {
    match operand {
        Operand::Duration(bound) => op.accepts(nanos.cmp(bound)),
        _ => false,
    }
}

/// Compares text (a span name, or an attribute's string form) with a string or pattern operand.
fn compare_text(text: &str, op: Op, operand: &Operand) -> bool {
    match operand {
        Operand::Pattern(pattern) => pattern.matches(text) == (op == Op::Match),
        Operand::Str(expected) if op.is_equality() => op.accepts(equality(text == expected)),
        Operand::Str(expected) => {
            let ordering = match (parse_number(text), parse_number(expected)) {
                (Some(left), Some(right)) => left.compare(right),
                _ => Some(text.cmp(expected.as_str())),
            };
            ordering.is_some_and(|ordering| op.accepts(ordering))
        }
        _ => false,
    }
}

/// Compares an attribute value with an operand, by the operand's type (see the module documentation).
fn compare_value(value: &model::Value, op: Op, operand: &Operand) -> bool {
    match operand {
        Operand::Str(_) | Operand::Pattern(_) => value_text(value).is_some_and(|text| compare_text(&text, op, operand)),
        Operand::Int(number) => compare_number(value, op, Number::Int(*number)),
        Operand::Float(number) => compare_number(value, op, Number::Float(*number)),
        Operand::Bool(expected) => {
            let actual = match value {
                model::Value::Bool(flag) => Some(*flag),
                model::Value::Str(text) => match text.trim() {
                    "true" => Some(true),
                    "false" => Some(false),
                    _ => None,
                },
                _ => None,
            };
            actual.is_some_and(|actual| op.accepts(equality(actual == *expected)))
        }
        Operand::Duration(_) | Operand::Status(_) | Operand::Kind(_) => false,
    }
}

fn compare_number(value: &model::Value, op: Op, expected: Number) -> bool {
    let actual = match value {
        model::Value::Int(number) => Some(Number::Int(*number)),
        model::Value::Double(number) => Some(Number::Float(*number)),
        model::Value::Str(text) => parse_number(text),
        _ => None,
    };
    actual
        .and_then(|actual| actual.compare(expected))
        .is_some_and(|ordering| op.accepts(ordering))
}

/// The string form of a scalar attribute value (ints in decimal, bools as `true`/`false`, bytes in base64);
/// `None` for arrays and maps.
pub(crate) fn value_text(value: &model::Value) -> Option<Cow<'_, str>> {
    match value {
        model::Value::Str(text) => Some(Cow::Borrowed(text)),
        model::Value::Int(number) => Some(Cow::Owned(number.to_string())),
        model::Value::Double(number) => Some(Cow::Owned(number.to_string())),
        model::Value::Bool(flag) => Some(Cow::Borrowed(if *flag { "true" } else { "false" })),
        model::Value::Bytes(bytes) => Some(Cow::Owned(base64::engine::general_purpose::STANDARD.encode(bytes))),
        model::Value::Array(_) | model::Value::Map(_) => None,
    }
}

#[derive(Clone, Copy, Debug)]
enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    fn compare(self, other: Self) -> Option<Ordering> {
        match (self, other) {
            (Self::Int(left), Self::Int(right)) => Some(left.cmp(&right)),
            (left, right) => left.as_f64().partial_cmp(&right.as_f64()),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Self::Int(number) => number as f64,
            Self::Float(number) => number,
        }
    }
}

/// A decimal integer or float (`503`, `-1`, `0.25`, `1e3`), surrounding whitespace ignored.
fn parse_number(text: &str) -> Option<Number> {
    let text = text.trim();
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    if let Ok(number) = text.parse::<i64>() {
        return Some(Number::Int(number));
    }
    text.parse::<f64>()
        .ok()
        .filter(|number| number.is_finite())
        .map(Number::Float)
}

// === lexing ===

#[derive(Clone, Debug, PartialEq)]
enum Token {
    LeftBrace,
    RightBrace,
    LeftParen,
    RightParen,
    And,
    Or,
    Pipe,
    Op(Op),
    Str(String),
    Word(String),
}

#[derive(Clone, Debug)]
struct Lexeme {
    token: Token,
    /// Character positions, `end` exclusive.
    start: usize,
    end: usize,
}

/// TraceQL scopes outside the subset (and `span:`/`trace:` intrinsics other than the supported ones).
const OTHER_SCOPES: &[&str] = &[
    "event",
    "link",
    "instrumentation",
    "parent",
    "trace",
    "span",
    "resource",
];
/// TraceQL intrinsics outside the subset.
const OTHER_INTRINSICS: &[&str] = &[
    "statusMessage",
    "rootName",
    "rootServiceName",
    "childCount",
    "nestedSetLeft",
    "nestedSetRight",
    "nestedSetParent",
];

/// Characters that end a word (besides whitespace).
const TERMINALS: &[char] = &['{', '}', '(', ')', '=', '!', '~', '<', '>', '&', '|', '"', '`', ','];

fn lex(text: &str) -> Result<Vec<Lexeme>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut lexemes = Vec::new();
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        if c.is_whitespace() {
            index += 1;
            continue;
        }
        let start = index;
        let next = chars.get(index + 1).copied();
        let (token, length) = match (c, next) {
            ('{', _) => (Token::LeftBrace, 1),
            ('}', _) => (Token::RightBrace, 1),
            ('(', _) => (Token::LeftParen, 1),
            (')', _) => (Token::RightParen, 1),
            ('&', Some('&')) => (Token::And, 2),
            ('|', Some('|')) => (Token::Or, 2),
            ('|', _) => (Token::Pipe, 1),
            ('=', Some('~')) => (Token::Op(Op::Match), 2),
            ('=', _) => (Token::Op(Op::Eq), 1),
            ('!', Some('=')) => (Token::Op(Op::Ne), 2),
            ('!', Some('~')) => (Token::Op(Op::NotMatch), 2),
            ('>', Some('>')) | ('<', Some('<')) => {
                return Err(ParseError::new("structural operators are not supported", start));
            }
            ('>', Some('=')) => (Token::Op(Op::Ge), 2),
            ('>', _) => (Token::Op(Op::Gt), 1),
            ('<', Some('=')) => (Token::Op(Op::Le), 2),
            ('<', _) => (Token::Op(Op::Lt), 1),
            ('"', _) => {
                let (text, end) = lex_quoted(&chars, index)?;
                lexemes.push(Lexeme {
                    token: Token::Str(text),
                    start,
                    end,
                });
                index = end;
                continue;
            }
            ('`', _) => {
                let close = chars[index + 1..]
                    .iter()
                    .position(|c| *c == '`')
                    .ok_or_else(|| ParseError::new("unterminated raw string", start))?;
                let end = index + 1 + close + 1;
                lexemes.push(Lexeme {
                    token: Token::Str(chars[index + 1..end - 1].iter().collect()),
                    start,
                    end,
                });
                index = end;
                continue;
            }
            _ if TERMINALS.contains(&c) => {
                return Err(ParseError::new(format!("unexpected `{c}`"), start));
            }
            _ => {
                let length = chars[index..]
                    .iter()
                    .position(|c| c.is_whitespace() || TERMINALS.contains(c))
                    .unwrap_or(chars.len() - index);
                (Token::Word(chars[index..index + length].iter().collect()), length)
            }
        };
        index += length;
        lexemes.push(Lexeme {
            token,
            start,
            end: index,
        });
    }
    Ok(lexemes)
}

/// A double-quoted string starting at `open`: its unescaped text and the position after the closing quote.
fn lex_quoted(chars: &[char], open: usize) -> Result<(String, usize), ParseError> {
    let mut text = String::new();
    let mut index = open + 1;
    loop {
        let Some(&c) = chars.get(index) else {
            return Err(ParseError::new("unterminated string", open));
        };
        index += 1;
        match c {
            '"' => return Ok((text, index)),
            '\\' => {
                let Some(&escaped) = chars.get(index) else {
                    return Err(ParseError::new("unterminated string", open));
                };
                index += 1;
                match escaped {
                    '"' | '\\' | '\'' => text.push(escaped),
                    'n' => text.push('\n'),
                    't' => text.push('\t'),
                    'r' => text.push('\r'),
                    'a' => text.push('\u{7}'),
                    'b' => text.push('\u{8}'),
                    'f' => text.push('\u{c}'),
                    'v' => text.push('\u{b}'),
                    'x' | 'u' | 'U' => {
                        let digits = match escaped {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = chars.get(index..index + digits).unwrap_or_default().iter().collect();
                        let decoded = u32::from_str_radix(&hex, 16)
                            .ok()
                            .filter(|_| hex.len() == digits)
                            .and_then(char::from_u32)
                            .ok_or_else(|| ParseError::new(format!("invalid escape `\\{escaped}{hex}`"), index - 2))?;
                        text.push(decoded);
                        index += digits;
                    }
                    // Kept as written: regular expressions need `\.`, `\d`, ….
                    other => {
                        text.push('\\');
                        text.push(other);
                    }
                }
            }
            other => text.push(other),
        }
    }
}

// === parsing ===

struct Parser {
    lexemes: Vec<Lexeme>,
    next: usize,
    /// Where the text ends (for errors at the end).
    length: usize,
}

impl Parser {
    fn new(text: &str) -> Result<Self, ParseError> {
        Ok(Self {
            lexemes: lex(text)?,
            next: 0,
            length: text.chars().count(),
        })
    }

    fn peek(&self) -> Option<&Lexeme> {
        self.lexemes.get(self.next)
    }

    fn bump(&mut self) -> Option<Lexeme> {
        let lexeme = self.lexemes.get(self.next).cloned();
        self.next += usize::from(lexeme.is_some());
        lexeme
    }

    fn position(&self) -> usize {
        self.peek().map_or(self.length, |lexeme| lexeme.start)
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError::new(message, self.position()))
    }

    fn eat(&mut self, token: &Token) -> bool {
        if self.peek().is_some_and(|lexeme| &lexeme.token == token) {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn query(mut self) -> Result<Query, ParseError> {
        if !self.eat(&Token::LeftBrace) {
            return self.error("a query starts with `{`, e.g. `{ name = \"GET /\" }`");
        }
        let filter = if self.eat(&Token::RightBrace) {
            None
        } else {
            let expr = self.or()?;
            if !self.eat(&Token::RightBrace) {
                return self.error("expected `&&`, `||` or `}`");
            }
            Some(expr)
        };
        match self.peek().map(|lexeme| &lexeme.token) {
            None => Ok(Query { filter }),
            Some(Token::Pipe) => self.error("pipelines (`|`) are not supported"),
            Some(_) => self.error("only one spanset filter `{ … }` is supported"),
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut terms = vec![self.and()?];
        while self.eat(&Token::Or) {
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::Or(terms)
        })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut terms = vec![self.primary()?];
        while self.eat(&Token::And) {
            terms.push(self.primary()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::And(terms)
        })
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        if self.eat(&Token::LeftParen) {
            let expr = self.or()?;
            if !self.eat(&Token::RightParen) {
                return self.error("expected `)`");
            }
            return Ok(expr);
        }
        self.comparison().map(Expr::Compare)
    }

    fn comparison(&mut self) -> Result<Comparison, ParseError> {
        let field_position = self.position();
        let field = self.field()?;
        let Some(Lexeme {
            token: Token::Op(op), ..
        }) = self.peek().cloned()
        else {
            return self.error("expected an operator (= != =~ !~ > >= < <=)");
        };
        self.next += 1;
        let value_position = self.position();
        let operand = self.operand()?;
        check(&field, op, operand)
            .map_err(|message| {
                let position = if message.starts_with("field") {
                    field_position
                } else {
                    value_position
                };
                ParseError::new(message, position)
            })
            .map(|operand| Comparison { field, op, operand })
    }

    fn field(&mut self) -> Result<Field, ParseError> {
        let Some(Lexeme {
            token: Token::Word(word),
            end,
            ..
        }) = self.peek().cloned()
        else {
            return self.error("expected a field, e.g. `name`, `span.http.route` or `resource.service.name`");
        };
        let position = self.position();
        self.next += 1;
        // `span."a b"`: a quoted attribute name right after the scope.
        let scoped = |prefix: &str| word.strip_prefix(prefix).map(str::to_owned);
        let attribute = |this: &mut Self, name: String| -> Result<String, ParseError> {
            if !name.is_empty() {
                return Ok(name);
            }
            match this.peek().cloned() {
                Some(Lexeme {
                    token: Token::Str(quoted),
                    start,
                    ..
                }) if start == end && !quoted.is_empty() => {
                    this.next += 1;
                    Ok(quoted)
                }
                _ => Err(ParseError::new(format!("`{word}` needs an attribute name"), position)),
            }
        };
        let field = match word.as_str() {
            "name" | "span:name" => Field::Name,
            "status" | "span:status" => Field::Status,
            "kind" | "span:kind" => Field::Kind,
            "duration" | "span:duration" => Field::Duration,
            "traceDuration" | "trace:duration" => Field::TraceDuration,
            _ => {
                if let Some(name) = scoped("resource.") {
                    Field::Resource(attribute(self, name)?)
                } else if let Some(name) = scoped("span.") {
                    Field::Span(attribute(self, name)?)
                } else if let Some(name) = scoped(".") {
                    Field::Unscoped(attribute(self, name)?)
                } else if let Some((scope, _)) = word
                    .split_once(['.', ':'])
                    .filter(|(scope, _)| OTHER_SCOPES.contains(scope))
                {
                    let message = if word.contains(':') {
                        format!("`{word}` is not supported")
                    } else {
                        format!("`{scope}` fields are not supported")
                    };
                    return Err(ParseError::new(message, position));
                } else if OTHER_INTRINSICS.contains(&word.as_str()) {
                    return Err(ParseError::new(format!("`{word}` is not supported"), position));
                } else {
                    return Err(ParseError::new(
                        format!("unknown field `{word}`: use `.{word}`, `span.{word}` or `resource.{word}` for an attribute"),
                        position,
                    ));
                }
            }
        };
        Ok(field)
    }

    fn operand(&mut self) -> Result<Operand, ParseError> {
        let Some(lexeme) = self.bump() else {
            return self.error("expected a value");
        };
        match lexeme.token {
            Token::Str(text) => Ok(Operand::Str(text)),
            Token::Word(word) => parse_word(&word).map_err(|message| ParseError::new(message, lexeme.start)),
            _ => Err(ParseError::new("expected a value", lexeme.start)),
        }
    }
}

/// An unquoted value: keyword, number or duration.
fn parse_word(word: &str) -> Result<Operand, String> {
    match word {
        "true" => return Ok(Operand::Bool(true)),
        "false" => return Ok(Operand::Bool(false)),
        "ok" => return Ok(Operand::Status(SpanStatus::Ok)),
        "error" => return Ok(Operand::Status(SpanStatus::Error)),
        "unset" => return Ok(Operand::Status(SpanStatus::Unset)),
        "client" => return Ok(Operand::Kind(SpanKind::Client)),
        "server" => return Ok(Operand::Kind(SpanKind::Server)),
        "producer" => return Ok(Operand::Kind(SpanKind::Producer)),
        "consumer" => return Ok(Operand::Kind(SpanKind::Consumer)),
        "internal" => return Ok(Operand::Kind(SpanKind::Internal)),
        "unspecified" => return Ok(Operand::Kind(SpanKind::Unspecified)),
        "nil" => return Err("`nil` is not supported".to_owned()),
        _ => {}
    }
    let unsigned = word.strip_prefix(['-', '+']).unwrap_or(word);
    if !unsigned.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return Err(format!("unexpected value `{word}`: quote strings, e.g. \"{word}\""));
    }
    let plain = unsigned.chars().all(|c| c.is_ascii_digit());
    if plain {
        return word
            .parse::<i64>()
            .map(Operand::Int)
            .map_err(|_| format!("number `{word}` is out of range"));
    }
    let float_like = unsigned
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
    if float_like {
        if let Ok(number) = word.parse::<f64>() {
            if number.is_finite() {
                return Ok(Operand::Float(number));
            }
        }
    }
    parse_go_duration(word)
        .map(Operand::Duration)
        .map_err(|_| format!("invalid number or duration `{word}`"))
}

/// Checks that an operator and a value suit a field, compiling regular expressions.
fn check(field: &Field, op: Op, operand: Operand) -> Result<Operand, String> {
    let describe = |field: &Field| match field {
        Field::Name => "name".to_owned(),
        Field::Status => "status".to_owned(),
        Field::Kind => "kind".to_owned(),
        Field::Duration => "duration".to_owned(),
        Field::TraceDuration => "traceDuration".to_owned(),
        Field::Resource(key) => format!("resource.{key}"),
        Field::Span(key) => format!("span.{key}"),
        Field::Unscoped(key) => format!(".{key}"),
    };
    let unsuitable = || format!("`{}` cannot be used with `{}`", op.symbol(), describe(field));
    if op.is_regex() {
        return match operand {
            Operand::Str(text)
                if matches!(
                    field,
                    Field::Name | Field::Resource(_) | Field::Span(_) | Field::Unscoped(_)
                ) =>
            {
                Pattern::compile(&text).map(Operand::Pattern)
            }
            Operand::Str(_) => Err(unsuitable()),
            _ => Err(format!("`{}` needs a quoted regular expression", op.symbol())),
        };
    }
    match (field, operand) {
        (Field::Name, operand @ Operand::Str(_)) => Ok(operand),
        (Field::Name, _) => Err("`name` compares with a quoted string".to_owned()),
        (Field::Status, operand @ Operand::Status(_)) if op.is_equality() => Ok(operand),
        (Field::Status, Operand::Status(_)) => Err(unsuitable()),
        (Field::Status, _) => Err("`status` compares with ok, error or unset".to_owned()),
        (Field::Kind, operand @ Operand::Kind(_)) if op.is_equality() => Ok(operand),
        (Field::Kind, Operand::Kind(_)) => Err(unsuitable()),
        (Field::Kind, _) => {
            Err("`kind` compares with client, server, producer, consumer, internal or unspecified".to_owned())
        }
        (Field::Duration | Field::TraceDuration, operand @ Operand::Duration(_)) => Ok(operand),
        (Field::Duration | Field::TraceDuration, _) => {
            Err(format!("`{}` compares with a duration such as 100ms", describe(field)))
        }
        (_, operand @ (Operand::Str(_) | Operand::Int(_) | Operand::Float(_))) => Ok(operand),
        (_, operand @ Operand::Bool(_)) if op.is_equality() => Ok(operand),
        (_, Operand::Bool(_)) => Err(unsuitable()),
        (_, Operand::Duration(_)) => Err("durations compare only with `duration` and `traceDuration`".to_owned()),
        (_, Operand::Status(_)) => {
            Err("ok, error and unset compare only with `status`; quote them for a string".to_owned())
        }
        (_, Operand::Kind(_)) => Err("span kinds compare only with `kind`; quote them for a string".to_owned()),
        (_, Operand::Pattern(_)) => Err(unsuitable()),
    }
}

// === regular expressions ===

/// A regular expression of the supported subset, matched against a whole value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Pattern {
    /// Alternatives; each a sequence of atoms.
    branches: Vec<Vec<Atom>>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Atom {
    class: Class,
    repeat: Repeat,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Class {
    Literal(char),
    Any,
    Digit,
    Word,
    Space,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Repeat {
    One,
    /// `?`
    Optional,
    /// `*`
    Many,
}

/// Patterns longer than this are refused (matching is linear in value length times pattern length).
const MAX_PATTERN_CHARS: usize = 1024;

impl Pattern {
    fn compile(text: &str) -> Result<Self, String> {
        if text.chars().count() > MAX_PATTERN_CHARS {
            return Err(format!(
                "regular expressions are limited to {MAX_PATTERN_CHARS} characters"
            ));
        }
        let unsupported = |what: &str| {
            format!("unsupported regular expression `{text}`: {what} (supported: literals, `\\` escapes, `.`, `\\d`, `\\w`, `\\s`, `*`, `+`, `?`, `|`)")
        };
        let mut branches: Vec<Vec<Atom>> = vec![Vec::new()];
        let mut chars = text.chars().peekable();
        let mut at_branch_start = true;
        while let Some(c) = chars.next() {
            let branch = branches.last_mut().ok_or_else(|| unsupported("empty"))?;
            let class = match c {
                '|' => {
                    branches.push(Vec::new());
                    at_branch_start = true;
                    continue;
                }
                // Matching is anchored already.
                '^' if at_branch_start => continue,
                '$' if chars.peek().is_none_or(|next| *next == '|') => continue,
                '.' => Class::Any,
                '\\' => match chars.next() {
                    Some('d') => Class::Digit,
                    Some('w') => Class::Word,
                    Some('s') => Class::Space,
                    Some(escaped) if !escaped.is_alphanumeric() => Class::Literal(escaped),
                    Some(escaped) => return Err(unsupported(&format!("`\\{escaped}`"))),
                    None => return Err(unsupported("trailing `\\`")),
                },
                '*' | '+' | '?' => {
                    let Some(last) = branch.last_mut().filter(|atom| atom.repeat == Repeat::One) else {
                        return Err(unsupported(&format!("`{c}` follows nothing to repeat")));
                    };
                    match c {
                        '*' => last.repeat = Repeat::Many,
                        '?' => last.repeat = Repeat::Optional,
                        _ => {
                            let copy = Atom {
                                class: last.class,
                                repeat: Repeat::Many,
                            };
                            branch.push(copy);
                        }
                    }
                    // A lazy or possessive suffix is not supported.
                    if matches!(chars.peek(), Some('?' | '+')) {
                        return Err(unsupported("lazy or possessive quantifiers"));
                    }
                    continue;
                }
                '(' | ')' | '[' | ']' | '{' | '}' | '^' | '$' => {
                    return Err(unsupported(&format!("`{c}`")));
                }
                other => Class::Literal(other),
            };
            at_branch_start = false;
            branch.push(Atom {
                class,
                repeat: Repeat::One,
            });
        }
        Ok(Self { branches })
    }

    /// Whether the whole of `text` matches one of the alternatives.
    pub(crate) fn matches(&self, text: &str) -> bool {
        self.branches.iter().any(|atoms| matches_branch(atoms, text))
    }
}

impl Class {
    fn accepts(self, c: char) -> bool {
        match self {
            Self::Literal(expected) => c == expected,
            Self::Any => c != '\n',
            Self::Digit => c.is_ascii_digit(),
            Self::Word => c.is_ascii_alphanumeric() || c == '_',
            Self::Space => c.is_whitespace(),
        }
    }
}

/// Runs the branch as an NFA over the positions between atoms (no backtracking).
fn matches_branch(atoms: &[Atom], text: &str) -> bool {
    let mut current = vec![false; atoms.len() + 1];
    current[0] = true;
    close(atoms, &mut current);
    for c in text.chars() {
        let mut next = vec![false; atoms.len() + 1];
        let mut any = false;
        for (position, atom) in atoms.iter().enumerate() {
            if current[position] && atom.class.accepts(c) {
                let target = if atom.repeat == Repeat::Many {
                    position
                } else {
                    position + 1
                };
                next[target] = true;
                any = true;
            }
        }
        if !any {
            return false;
        }
        close(atoms, &mut next);
        current = next;
    }
    current[atoms.len()]
}

/// Adds the positions reachable by skipping optional atoms.
fn close(atoms: &[Atom], states: &mut [bool]) {
    for (position, atom) in atoms.iter().enumerate() {
        if states[position] && atom.repeat != Repeat::One {
            states[position + 1] = true;
        }
    }
}

impl fmt::Display for SpanStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tracepost_storage::model::{KeyValue, Resource, Span, SpanDetail, SpanId, TraceId, Value};

    use super::*;

    fn parse(text: &str) -> Query {
        Query::parse(text).unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    fn error(text: &str) -> String {
        Query::parse(text).expect_err(text).to_string()
    }

    fn compare(field: Field, op: Op, operand: Operand) -> Expr {
        Expr::Compare(Comparison { field, op, operand })
    }

    fn string(text: &str) -> Operand {
        Operand::Str(text.to_owned())
    }

    #[test]
    fn empty_queries_match_everything() {
        for text in ["{}", "{ }", "  {\n}  ", ""] {
            assert!(parse(text).is_match_all(), "{text}");
        }
    }

    #[test]
    fn grafana_builder_output_parses() {
        // The checklist's example of the search builder (service, span name, status, duration).
        let query =
            parse(r#"{resource.service.name="frontend" && name="GET /cart" && status=error && duration>100ms}"#);
        assert_eq!(
            query.filter,
            Some(Expr::And(vec![
                compare(Field::Resource("service.name".into()), Op::Eq, string("frontend")),
                compare(Field::Name, Op::Eq, string("GET /cart")),
                compare(Field::Status, Op::Eq, Operand::Status(SpanStatus::Error)),
                compare(Field::Duration, Op::Gt, Operand::Duration(100_000_000)),
            ]))
        );
        assert_eq!(query.exact_services(), Some(vec!["frontend".to_owned()]));
        assert_eq!(query.operation(), Some("GET /cart"));
        assert_eq!(query.span_duration_bounds(), (Some(100_000_001), None));

        // Multi-value selections: `||` groups for `=`, `&&` groups for `!=`, one regex for `=~`.
        let query = parse(
            r#"{(resource.service.name="a" || resource.service.name="b") && (span.foo!="x" && span.foo!="y") && span.bar=~"p\\.q|r" && traceDuration<=2s}"#,
        );
        assert_eq!(
            query.filter,
            Some(Expr::And(vec![
                Expr::Or(vec![
                    compare(Field::Resource("service.name".into()), Op::Eq, string("a")),
                    compare(Field::Resource("service.name".into()), Op::Eq, string("b")),
                ]),
                Expr::And(vec![
                    compare(Field::Span("foo".into()), Op::Ne, string("x")),
                    compare(Field::Span("foo".into()), Op::Ne, string("y")),
                ]),
                compare(
                    Field::Span("bar".into()),
                    Op::Match,
                    Operand::Pattern(Pattern::compile(r"p\.q|r").expect("pattern"))
                ),
                compare(Field::TraceDuration, Op::Le, Operand::Duration(2_000_000_000)),
            ]))
        );
        assert_eq!(query.exact_services(), Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(query.operation(), None);

        // Grafana's tag-values filter and the default "all" query.
        assert_eq!(
            parse(r#"{resource.service.name="frontend"}"#).exact_services(),
            Some(vec!["frontend".to_owned()])
        );
        assert!(parse("{}").is_match_all());
    }

    #[test]
    fn values_of_every_kind_parse() {
        let operand = |text: &str| match parse(&format!("{{ span.x = {text} }}")).filter {
            Some(Expr::Compare(comparison)) => comparison.operand,
            other => panic!("{other:?}"),
        };
        assert_eq!(operand("503"), Operand::Int(503));
        assert_eq!(operand("-2"), Operand::Int(-2));
        assert_eq!(operand("0.25"), Operand::Float(0.25));
        assert_eq!(operand("true"), Operand::Bool(true));
        assert_eq!(operand(r#""a \"b\" \\ \n \u00e9""#), string("a \"b\" \\ \n é"));
        assert_eq!(operand("`raw \\d`"), string("raw \\d"));
        let duration = |text: &str| match parse(&format!("{{ duration > {text} }}")).filter {
            Some(Expr::Compare(Comparison {
                operand: Operand::Duration(nanos),
                ..
            })) => nanos,
            other => panic!("{other:?}"),
        };
        assert_eq!(duration("100ms"), 100_000_000);
        assert_eq!(duration("1.5s"), 1_500_000_000);
        assert_eq!(duration("2m"), 120_000_000_000);
        assert_eq!(duration("1h"), 3_600_000_000_000);
        assert_eq!(duration("250us"), 250_000);
        assert_eq!(duration("10ns"), 10);
        assert_eq!(duration("1h30m"), 5_400_000_000_000);
        assert_eq!(
            parse("{ kind = server && status != ok }").filter,
            Some(Expr::And(vec![
                compare(Field::Kind, Op::Eq, Operand::Kind(SpanKind::Server)),
                compare(Field::Status, Op::Ne, Operand::Status(SpanStatus::Ok)),
            ]))
        );
        assert_eq!(
            parse(r#"{ .http.route = "/a" || span."odd key" >= 3 || span:name = "x" || trace:duration > 1s }"#).filter,
            Some(Expr::Or(vec![
                compare(Field::Unscoped("http.route".into()), Op::Eq, string("/a")),
                compare(Field::Span("odd key".into()), Op::Ge, Operand::Int(3)),
                compare(Field::Name, Op::Eq, string("x")),
                compare(Field::TraceDuration, Op::Gt, Operand::Duration(1_000_000_000)),
            ]))
        );
    }

    #[test]
    fn invalid_queries_say_what_is_wrong() {
        assert_eq!(
            error("name = \"x\""),
            "a query starts with `{`, e.g. `{ name = \"GET /\" }` (at character 1)"
        );
        assert_eq!(error("{ name = \"x\" "), "expected `&&`, `||` or `}` (at character 14)");
        assert_eq!(
            error("{ name \"x\" }"),
            "expected an operator (= != =~ !~ > >= < <=) (at character 8)"
        );
        assert_eq!(error("{ name = }"), "expected a value (at character 10)");
        assert_eq!(error("{ name = \"x }"), "unterminated string (at character 10)");
        assert_eq!(
            error("{ foo = \"x\" }"),
            "unknown field `foo`: use `.foo`, `span.foo` or `resource.foo` for an attribute (at character 3)"
        );
        assert_eq!(
            error("{ event.name = \"x\" }"),
            "`event` fields are not supported (at character 3)"
        );
        assert_eq!(
            error("{ span:id = \"x\" }"),
            "`span:id` is not supported (at character 3)"
        );
        assert_eq!(
            error("{ rootName = \"x\" }"),
            "`rootName` is not supported (at character 3)"
        );
        assert_eq!(
            error("{ http.route = \"x\" }"),
            "unknown field `http.route`: use `.http.route`, `span.http.route` or `resource.http.route` for an attribute (at character 3)"
        );
        assert_eq!(
            error("{ .foo = bar }"),
            "unexpected value `bar`: quote strings, e.g. \"bar\" (at character 10)"
        );
        assert_eq!(
            error("{ status = 500 }"),
            "`status` compares with ok, error or unset (at character 12)"
        );
        assert_eq!(
            error("{ status > error }"),
            "`>` cannot be used with `status` (at character 12)"
        );
        assert_eq!(
            error("{ kind = \"server\" }"),
            "`kind` compares with client, server, producer, consumer, internal or unspecified (at character 10)"
        );
        assert_eq!(
            error("{ duration > 100 }"),
            "`duration` compares with a duration such as 100ms (at character 14)"
        );
        assert_eq!(
            error("{ duration > 5x }"),
            "invalid number or duration `5x` (at character 14)"
        );
        assert_eq!(
            error("{ name = 3 }"),
            "`name` compares with a quoted string (at character 10)"
        );
        assert_eq!(
            error("{ span.ok > true }"),
            "`>` cannot be used with `span.ok` (at character 13)"
        );
        assert_eq!(
            error("{ span.x = error }"),
            "ok, error and unset compare only with `status`; quote them for a string (at character 12)"
        );
        assert_eq!(
            error("{ span.x =~ 5 }"),
            "`=~` needs a quoted regular expression (at character 13)"
        );
        assert!(error("{ name =~ \"(a|b)\" }").starts_with("unsupported regular expression `(a|b)`: `(`"));
        assert!(error("{ name =~ \"[ab]\" }").starts_with("unsupported regular expression"));
        assert_eq!(error("{ span.x = nil }"), "`nil` is not supported (at character 12)");
        assert_eq!(
            error("{} | count() > 2"),
            "pipelines (`|`) are not supported (at character 4)"
        );
        assert_eq!(
            error("{} && {}"),
            "only one spanset filter `{ … }` is supported (at character 4)"
        );
        assert_eq!(
            error("{ .a = 1 } >> { .b = 2 }"),
            "structural operators are not supported (at character 12)"
        );
        assert_eq!(error("{ (name = \"a\" }"), "expected `)` (at character 15)");
        assert_eq!(
            error("{ span. = \"a\" }"),
            "`span.` needs an attribute name (at character 3)"
        );
        assert_eq!(
            error("{ name = \"a\" & kind = server }"),
            "unexpected `&` (at character 14)"
        );
        assert_eq!(
            error("{ span.x = 99999999999999999999 }"),
            "number `99999999999999999999` is out of range (at character 12)"
        );
    }

    #[test]
    fn patterns_match_whole_values() {
        let pattern = |text: &str| Pattern::compile(text).unwrap_or_else(|error| panic!("{error}"));
        assert!(pattern("a|b").matches("a"));
        assert!(pattern("a|b").matches("b"));
        assert!(!pattern("a|b").matches("ab"), "anchored");
        assert!(pattern("GET .*").matches("GET /cart"));
        assert!(!pattern("GET").matches("GET /cart"));
        assert!(pattern(".*cart.*").matches("GET /cart?x"));
        assert!(pattern(r"/api/v2\.0/.+").matches("/api/v2.0/projects"));
        assert!(!pattern(r"/api/v2\.0/.+").matches("/api/v2x0/projects"));
        assert!(!pattern(r"/api/v2\.0/.+").matches("/api/v2.0/"));
        assert!(pattern(r"5\d\d").matches("503"));
        assert!(!pattern(r"5\d\d").matches("5x3"));
        assert!(pattern("^colou?r$").matches("color"));
        assert!(pattern("^colou?r$").matches("colour"));
        assert!(pattern("").matches(""));
        assert!(!pattern("").matches("x"));
        assert!(pattern(r"a\|b").matches("a|b"));
        // Linear matching: no blow-up on pathological patterns.
        let long = "a".repeat(5000);
        assert!(!pattern(&"a*".repeat(30).replace("**", "*")).matches(&format!("{long}b")));
        for bad in ["(a)", "[a]", "a{2}", r"\p", "*a", "a**", "a*?", r"a\"] {
            assert!(Pattern::compile(bad).is_err(), "{bad}");
        }
    }

    fn resource() -> StoredResource {
        StoredResource {
            id: 7,
            service_name: "harbor-core".into(),
            cluster: None,
            resource: Resource {
                attributes: vec![
                    KeyValue::string("service.name", "harbor-core"),
                    KeyValue::string("k8s.pod.ip", "10.42.1.7"),
                    KeyValue::string("direction", "resource-level"),
                ],
                dropped_attributes_count: 0,
                schema_url: String::new(),
            },
        }
    }

    fn span(name: &str, start: u64, duration: u64, status: StatusCode, attributes: Vec<KeyValue>) -> StoredSpan {
        StoredSpan {
            span: Span {
                trace_id: TraceId([1; 16]),
                span_id: SpanId([start as u8 + 1; 8]),
                parent_span_id: None,
                name: name.into(),
                kind: SpanKind::Server,
                start_time_unix_nano: start,
                status_code: status,
                detail: SpanDetail {
                    attributes,
                    end_time_unix_nano: start + duration,
                    ..SpanDetail::default()
                },
            },
            resource_id: 7,
            service_name: "harbor-core".into(),
            cluster: None,
        }
    }

    /// A Linkerd-style span: every attribute is a string.
    fn linkerd_span() -> StoredSpan {
        span(
            "/api/v2.0/projects/42/repositories",
            1_000,
            45_000_000,
            StatusCode::Unset,
            vec![
                KeyValue::string("direction", "inbound"),
                KeyValue::string("http.response.status_code", "503"),
                KeyValue::string("server.port", "80"),
                KeyValue::string("tls", "true"),
            ],
        )
    }

    fn matches(text: &str, span: &StoredSpan) -> bool {
        let resource = resource();
        parse(text).may_match_span(span, Some(&resource))
    }

    #[test]
    fn attributes_compare_by_the_query_value_type() {
        let linkerd = linkerd_span();
        assert!(
            matches("{ span.http.response.status_code = 503 }", &linkerd),
            "string attribute, number query"
        );
        assert!(matches(r#"{ span.http.response.status_code = "503" }"#, &linkerd));
        assert!(matches("{ span.http.response.status_code >= 500 }", &linkerd));
        assert!(!matches("{ span.http.response.status_code < 500 }", &linkerd));
        assert!(matches("{ span.http.response.status_code = 503.0 }", &linkerd));
        assert!(matches(r#"{ span.http.response.status_code =~ "5.." }"#, &linkerd));
        assert!(matches("{ span.tls = true }", &linkerd));
        assert!(!matches("{ span.tls = false }", &linkerd));
        assert!(
            matches(r#"{ span.server.port > "8" }"#, &linkerd),
            "numeric strings compare as numbers"
        );

        let sdk = span(
            "GET /checkout",
            0,
            10,
            StatusCode::Ok,
            vec![
                KeyValue::new("http.response.status_code", Value::Int(200)),
                KeyValue::new("ratio", Value::Double(0.25)),
                KeyValue::new("cached", Value::Bool(false)),
            ],
        );
        assert!(
            matches(r#"{ span.http.response.status_code = "200" }"#, &sdk),
            "int attribute, string query"
        );
        assert!(matches("{ span.http.response.status_code = 200 }", &sdk));
        assert!(matches("{ span.ratio < 0.5 && span.ratio > 0 }", &sdk));
        assert!(matches("{ span.cached = false && span.cached != true }", &sdk));
        assert!(!matches(r#"{ span.cached = "true" }"#, &sdk));
    }

    #[test]
    fn scopes_and_missing_attributes() {
        let linkerd = linkerd_span();
        assert!(matches(r#"{ resource.k8s.pod.ip = "10.42.1.7" }"#, &linkerd));
        assert!(
            !matches(r#"{ span.k8s.pod.ip = "10.42.1.7" }"#, &linkerd),
            "not a span attribute"
        );
        assert!(
            matches(r#"{ .k8s.pod.ip = "10.42.1.7" }"#, &linkerd),
            "unscoped falls back to the resource"
        );
        assert!(
            matches(r#"{ .direction = "inbound" }"#, &linkerd),
            "unscoped prefers the span"
        );
        assert!(matches(r#"{ resource.direction = "resource-level" }"#, &linkerd));
        assert!(
            !matches(r#"{ span.missing != "x" }"#, &linkerd),
            "a missing attribute never matches"
        );
        assert!(!matches(r#"{ span.missing !~ "x" }"#, &linkerd));
        // service.name is the derived service, even without the resource.
        let query = parse(r#"{ resource.service.name = "harbor-core" }"#);
        assert!(query.may_match_span(&linkerd, None));
        assert!(parse(r#"{ .service.name =~ "harbor-.*" }"#).may_match_span(&linkerd, None));
    }

    #[test]
    fn intrinsics_and_groups() {
        let linkerd = linkerd_span();
        assert!(matches(r#"{ name = "/api/v2.0/projects/42/repositories" }"#, &linkerd));
        assert!(matches(r#"{ name =~ "/api/v2\\.0/projects/.*" }"#, &linkerd));
        assert!(matches("{ kind = server && kind != client }", &linkerd));
        assert!(matches("{ status = unset && status != error }", &linkerd));
        assert!(matches("{ duration > 40ms && duration <= 45ms }", &linkerd));
        assert!(!matches("{ duration > 45ms }", &linkerd));
        assert!(matches(
            r#"{ (span.direction = "outbound" || span.direction = "inbound") && kind = server }"#,
            &linkerd
        ));
        assert!(!matches(
            r#"{ (span.direction != "outbound" && span.direction != "inbound") }"#,
            &linkerd
        ));
        assert!(
            matches(
                r#"{ span.direction = "outbound" || status = unset && kind = server }"#,
                &linkerd
            ),
            "&& binds tighter"
        );
        let failed = span("x", 0, 1, StatusCode::Error, Vec::new());
        assert_eq!(span_status(&failed), SpanStatus::Error);
        assert!(matches("{ status = error }", &failed));
    }

    #[test]
    fn one_span_must_satisfy_every_span_condition() {
        let inbound = linkerd_span();
        let outbound = span(
            "/api/v2.0/projects/42/repositories",
            2_000,
            48_000_000,
            StatusCode::Error,
            vec![KeyValue::string("direction", "outbound")],
        );
        let trace = StoredTrace {
            trace_id: TraceId([1; 16]),
            spans: vec![inbound, outbound],
            resources: HashMap::from([(7, resource())]),
        };
        let query = parse(r#"{ span.direction = "inbound" && status = error }"#);
        assert!(query.matching_spans(&trace).is_empty(), "no single span has both");
        assert!(!query.matches_trace(&trace));
        let query = parse(r#"{ span.direction = "outbound" && status = error }"#);
        assert_eq!(query.matching_spans(&trace).len(), 1);
        assert!(query.matches_trace(&trace));
        assert_eq!(parse("{}").matching_spans(&trace).len(), 2);
    }

    #[test]
    fn trace_duration_is_checked_on_the_whole_trace() {
        let first = span("a", 1_000, 10, StatusCode::Unset, Vec::new());
        let last = span("b", 2_000_000, 1_000_000, StatusCode::Unset, Vec::new());
        let trace = StoredTrace {
            trace_id: TraceId([1; 16]),
            spans: vec![first.clone(), last],
            resources: HashMap::new(),
        };
        // 3 ms - 1 µs.
        assert_eq!(trace_duration_nanos(&trace), 2_999_000);
        let query = parse("{ traceDuration > 2ms && name = \"a\" }");
        assert!(query.may_match_span(&first, None), "unknown until the trace is read");
        assert_eq!(query.matching_spans(&trace).len(), 1);
        let query = parse("{ traceDuration > 3ms }");
        assert!(query.may_match_span(&first, None));
        assert!(!query.matches_trace(&trace));
        assert_eq!(parse("{ traceDuration < 3ms }").matching_spans(&trace).len(), 2);
    }

    #[test]
    fn service_and_duration_hints() {
        let query = parse(r#"{ resource.service.name =~ "harbor-.*" && resource.service.name != "harbor-db" }"#);
        assert!(query.constrains_service());
        assert_eq!(query.exact_services(), None);
        assert!(query.service_allowed("harbor-core"));
        assert!(!query.service_allowed("harbor-db"));
        assert!(!query.service_allowed("cart"));
        let query = parse(r#"{ resource.service.name = "a" && resource.service.name = "b" }"#);
        assert_eq!(
            query.exact_services(),
            Some(Vec::new()),
            "contradiction selects nothing"
        );
        let query = parse(r#"{ resource.service.name = "a" || name = "b" }"#);
        assert!(
            !query.constrains_service(),
            "an || with another field selects no service"
        );
        assert_eq!(query.exact_services(), None);
        assert_eq!(
            parse("{ duration >= 1ms && duration < 1s && duration > 2ms }").span_duration_bounds(),
            (Some(2_000_001), Some(999_999_999))
        );
        assert_eq!(
            parse("{ duration > 1ms || name = \"x\" }").span_duration_bounds(),
            (None, None),
            "an || does not bound"
        );
        let query = parse(r#"{ span.a = "1" && (status = error || kind = client) && span.a != "2" }"#);
        assert_eq!(
            query.fields(),
            vec![&Field::Span("a".into()), &Field::Status, &Field::Kind]
        );
    }
}
