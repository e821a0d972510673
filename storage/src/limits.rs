//! The limits ingest and read agree on, so that whatever the collector acknowledges the reader can decode.
//!
//! Stored `detail` and resource bodies are protobuf, decoded with prost, which refuses a message nested more
//! than [`PROST_RECURSION_LIMIT`] levels below the one being decoded; every nested message counts one level,
//! so an `ArrayValue` level of an attribute costs two (`AnyValue`, `ArrayValue`) and a `KeyValueList` level
//! three (`AnyValue`, `KeyValueList`, `KeyValue`). Both ingest paths (the protobuf fast path and OTLP/JSON)
//! measure an attribute with [`key_value_exceeds`]'s rule and drop an attribute nested deeper than
//! [`MAX_ATTRIBUTE_NESTING`] (counted in the span's dropped attributes), which keeps every stored message
//! well inside prost's limit wherever the attribute sits: see the tests below.

use crate::model::{AnyValue, KeyValue, Value};

/// prost's recursion limit when decoding (prost's default, which tracepost does not change).
pub const PROST_RECURSION_LIMIT: u32 = 100;

/// The deepest an attribute may nest, in messages, counting the attribute's own `KeyValue` as 1.
pub const MAX_ATTRIBUTE_NESTING: u32 = 64;

/// How deep the deepest attribute `KeyValue` sits below the outermost message, in an OTLP export request
/// (request → resource spans → scope spans → span → event or link → key value) and in storage (span detail →
/// event, link or scope → key value).
pub const DEEPEST_ATTRIBUTE_IN_REQUEST: u32 = 5;
pub const DEEPEST_ATTRIBUTE_IN_STORAGE: u32 = 2;

const _: () = assert!(DEEPEST_ATTRIBUTE_IN_REQUEST - 1 + MAX_ATTRIBUTE_NESTING <= PROST_RECURSION_LIMIT);
const _: () = assert!(DEEPEST_ATTRIBUTE_IN_STORAGE - 1 + MAX_ATTRIBUTE_NESTING <= PROST_RECURSION_LIMIT);

/// The longest service or cluster name the indexed columns hold, in bytes. A resource's service name is
/// written into every row of its spans, so an unbounded one would let a small request encode into rows many
/// times its size; the full name stays in the stored resource. Queries cut names the same way
/// ([`label_column`]), so a search for the full name still finds its spans.
pub const MAX_LABEL_BYTES: usize = 256;

/// A service or cluster name as its column holds it: NUL (which PostgreSQL text refuses) as U+FFFD, cut to
/// [`MAX_LABEL_BYTES`] at a character boundary.
pub fn label_column(text: &str) -> std::borrow::Cow<'_, str> {
    let text = crate::copy::sanitize_text(text);
    if text.len() <= MAX_LABEL_BYTES {
        return text;
    }
    let mut end = MAX_LABEL_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(text[..end].to_owned())
}

/// The longest span name the operations dictionary lists, in bytes: its primary key is a btree, whose rows
/// must stay well under a page. Longer names (a SQL statement as a span name) are stored and searchable,
/// just not listed, like the names past the per-service cap.
pub const MAX_LISTED_NAME_BYTES: usize = 1024;

/// Whether an attribute nests deeper than [`MAX_ATTRIBUTE_NESTING`] messages. Recursion stops as soon as
/// the limit is passed, so the stack depth is bounded whatever the value.
pub fn key_value_exceeds(attribute: &KeyValue) -> bool {
    key_value_exceeds_at(attribute, 1)
}

fn key_value_exceeds_at(attribute: &KeyValue, level: u32) -> bool {
    if level > MAX_ATTRIBUTE_NESTING {
        return true;
    }
    attribute
        .value
        .as_ref()
        .is_some_and(|value| any_value_exceeds_at(value, level + 1))
}

fn any_value_exceeds_at(value: &AnyValue, level: u32) -> bool {
    if level > MAX_ATTRIBUTE_NESTING {
        return true;
    }
    match &value.value {
        Some(Value::Array(array)) => {
            level + 1 > MAX_ATTRIBUTE_NESTING || array.values.iter().any(|item| any_value_exceeds_at(item, level + 2))
        }
        Some(Value::Map(list)) => {
            level + 1 > MAX_ATTRIBUTE_NESTING || list.values.iter().any(|item| key_value_exceeds_at(item, level + 2))
        }
        _ => false,
    }
}

/// Keeps the attributes within the nesting limit; returns how many were dropped.
pub fn retain_within_nesting(attributes: &mut Vec<KeyValue>) -> u32 {
    let before = attributes.len();
    attributes.retain(|attribute| !key_value_exceeds(attribute));
    (before - attributes.len()) as u32
}

/// Attributes nested exactly `levels` messages deep, for the tests below.
#[cfg(test)]
mod nesting {
    use crate::model::{AnyValue, ArrayValue, KeyValue, KeyValueList, Value};

    /// A `KeyValue` whose nesting, counted as prost counts it, is exactly `levels` (2 or at least 4), built
    /// from arrays (and one map level when `levels` is odd).
    pub(super) fn attribute(levels: u32) -> KeyValue {
        assert!(levels >= 2, "a KeyValue with a value is at least 2 levels");
        // KeyValue(1) + AnyValue(1) = 2; each array level adds 2, a map level adds 3.
        let mut remaining = levels - 2;
        let mut value = AnyValue {
            value: Some(Value::Str("leaf".into())),
        };
        if remaining % 2 == 1 {
            assert!(
                remaining >= 3,
                "a nesting of 3 levels cannot be built from arrays and maps"
            );
            value = AnyValue {
                value: Some(Value::Map(KeyValueList {
                    values: vec![KeyValue {
                        key: "m".into(),
                        value: Some(value),
                    }],
                })),
            };
            remaining -= 3;
        }
        while remaining > 0 {
            value = AnyValue {
                value: Some(Value::Array(ArrayValue { values: vec![value] })),
            };
            remaining -= 2;
        }
        KeyValue {
            key: "deep".into(),
            value: Some(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::nesting::attribute;
    use super::*;
    use crate::model::{Event, Resource, Scope, SpanDetail};

    fn nesting_of(attribute: &KeyValue) -> u32 {
        fn key_value(attribute: &KeyValue) -> u32 {
            1 + attribute.value.as_ref().map_or(0, any_value)
        }
        fn any_value(value: &AnyValue) -> u32 {
            1 + match &value.value {
                Some(Value::Array(array)) => 1 + array.values.iter().map(any_value).max().unwrap_or(0),
                Some(Value::Map(list)) => 1 + list.values.iter().map(key_value).max().unwrap_or(0),
                _ => 0,
            }
        }
        key_value(attribute)
    }

    #[test]
    fn attributes_are_measured_as_prost_nests_them() {
        for levels in (2..=70).filter(|levels| *levels != 3) {
            let attribute = attribute(levels);
            assert_eq!(nesting_of(&attribute), levels);
            assert_eq!(
                key_value_exceeds(&attribute),
                levels > MAX_ATTRIBUTE_NESTING,
                "{levels}"
            );
        }
    }

    #[test]
    fn what_the_limit_accepts_prost_decodes_in_every_stored_message() {
        let deepest = attribute(MAX_ATTRIBUTE_NESTING);
        let detail = SpanDetail {
            attributes: vec![deepest.clone()],
            events: vec![Event {
                attributes: vec![deepest.clone()],
                ..Event::default()
            }],
            scope: Some(Scope {
                attributes: vec![deepest.clone()],
                ..Scope::default()
            }),
            ..SpanDetail::default()
        };
        let decoded = SpanDetail::decode(detail.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded, detail);
        let resource = Resource {
            attributes: vec![deepest],
            ..Resource::default()
        };
        assert!(Resource::decode(resource.encode_to_vec().as_slice()).is_ok());
    }

    #[test]
    fn prost_refuses_what_is_nested_past_its_limit() {
        // The limit is real: an event attribute nested to the recursion limit is refused on read, which is
        // what ingest must never store.
        let too_deep = attribute(PROST_RECURSION_LIMIT);
        let detail = SpanDetail {
            events: vec![Event {
                attributes: vec![too_deep],
                ..Event::default()
            }],
            ..SpanDetail::default()
        };
        assert!(SpanDetail::decode(detail.encode_to_vec().as_slice()).is_err());
    }

    #[test]
    fn label_columns_are_cut_at_a_character_boundary_and_lose_their_nul() {
        assert_eq!(label_column("svc\0name"), "svc\u{fffd}name");
        let long = "é".repeat(200);
        let cut = label_column(&long);
        assert_eq!(cut.len(), MAX_LABEL_BYTES);
        assert!(long.starts_with(cut.as_ref()));
        assert_eq!(label_column(&"a".repeat(300)).len(), MAX_LABEL_BYTES);
    }

    #[test]
    fn attributes_past_the_limit_are_dropped_and_counted() {
        let mut attributes = vec![
            KeyValue::string("a", "b"),
            attribute(MAX_ATTRIBUTE_NESTING + 1),
            attribute(MAX_ATTRIBUTE_NESTING),
        ];
        assert_eq!(retain_within_nesting(&mut attributes), 1);
        assert_eq!(attributes.len(), 2);
    }
}
