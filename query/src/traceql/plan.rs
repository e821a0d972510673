//! What a query tells storage: the services, span name and duration bounds every matching span has.

use tracepost_storage::model;

use super::ast::{Comparison, Expr, Field, Op, Operand};
use super::eval::compare_value;
use super::{Query, SERVICE_NAME};

impl Query {
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

    /// The bloom filter items every matching span carries ([`tracepost_storage::SpanFilter::required_items`]):
    /// one per top-level `attribute = "text"` (span, resource or unscoped; the comparison is on the value's
    /// string form, which is what the items hash). Numeric, boolean and pattern comparisons, negations and
    /// alternatives give none, nor does `resource.service.name` (the service tracepost derived, a column).
    pub(crate) fn required_items(&self) -> Vec<u64> {
        self.conjuncts()
            .iter()
            .filter_map(|term| {
                let Expr::Compare(Comparison {
                    field,
                    op: Op::Eq,
                    operand: Operand::Str(text),
                }) = term
                else {
                    return None;
                };
                let key = match field {
                    Field::Span(key) => key,
                    Field::Resource(key) | Field::Unscoped(key) if key != SERVICE_NAME => key,
                    _ => return None,
                };
                Some(tracepost_storage::block::attribute_item(key, text))
            })
            .collect()
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

impl Expr {
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
}
