//! Checking that an operator and a value suit a field.

use tracepost_storage::limits::label_column;

use super::ast::{Field, Op, Operand};
use super::pattern::Pattern;
use super::SERVICE_NAME;

/// Checks that an operator and a value suit a field, compiling regular expressions.
pub(super) fn check(field: &Field, op: Op, operand: Operand) -> Result<Operand, String> {
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
        // The derived service name is stored with NUL as U+FFFD and cut to 256 bytes.
        (Field::Resource(key), Operand::Str(text)) if key == SERVICE_NAME => {
            Ok(Operand::Str(label_column(&text).into_owned()))
        }
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
