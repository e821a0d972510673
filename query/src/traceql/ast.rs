//! The syntax tree of a query.

use std::cmp::Ordering;

use tracepost_storage::model::SpanKind;

use super::pattern::Pattern;
use super::SpanStatus;

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
    pub(super) fn is_regex(self) -> bool {
        matches!(self, Self::Match | Self::NotMatch)
    }

    pub(super) fn is_equality(self) -> bool {
        matches!(self, Self::Eq | Self::Ne)
    }

    /// Whether `ordering` (value compared with operand) satisfies a non-regex operator.
    pub(super) fn accepts(self, ordering: Ordering) -> bool {
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

    pub(super) fn symbol(self) -> &'static str {
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

impl Comparison {
    pub(crate) fn new(field: Field, op: Op, operand: Operand) -> Self {
        Self { field, op, operand }
    }
}
