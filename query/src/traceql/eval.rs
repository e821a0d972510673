//! Evaluating a query on a span, its resource and its trace's duration.

use std::borrow::Cow;
use std::cmp::Ordering;

use base64::Engine as _;
use tracepost_storage::model::{self, StoredResource, StoredSpan};
use tracepost_storage::StoredTrace;

use super::ast::{Comparison, Expr, Field, Op, Operand};
use super::{span_status, SERVICE_NAME};

/// What a comparison is evaluated against: one span, its resource, and its trace's duration when known.
#[derive(Clone, Copy)]
pub(super) struct Context<'a> {
    pub(super) span: &'a StoredSpan,
    pub(super) resource: Option<&'a StoredResource>,
    /// `None` while only the span is known: `traceDuration` comparisons then hold (the trace is checked later).
    pub(super) trace_duration: Option<i64>,
}

/// The trace's duration: latest end minus earliest start, in nanoseconds.
pub(crate) fn trace_duration_nanos(trace: &StoredTrace) -> i64 {
    let nanos = trace.end_time_unix_nano().saturating_sub(trace.start_time_unix_nano());
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

impl Expr {
    pub(super) fn eval(&self, context: Context<'_>) -> bool {
        match self {
            Self::And(terms) => terms.iter().all(|term| term.eval(context)),
            Self::Or(terms) => terms.iter().any(|term| term.eval(context)),
            Self::Compare(comparison) => comparison.eval(context),
        }
    }
}

impl Field {
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
pub(super) fn compare_value(value: &model::Value, op: Op, operand: &Operand) -> bool {
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
