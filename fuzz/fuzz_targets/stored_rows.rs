//! What the reader decodes from a stored row: a span block, a span's `detail` and a resource body (the model's prost
//! decoders, which `storage/src/reader.rs` calls), never panicking whatever the bytes; what decodes re-encodes
//! to bytes that decode to the same; and `tracepost_storage::limits` measures attributes exactly as prost
//! nests them, so an attribute within the limit decodes wherever storage puts it. Text the row columns hold
//! (IDs in hex, names made safe for `text`) is checked on the same input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tracepost_storage::block::decode_block_spans;
use tracepost_storage::copy::sanitize_text;
use tracepost_storage::limits::{key_value_exceeds, retain_within_nesting, MAX_ATTRIBUTE_NESTING};
use tracepost_storage::model::{AnyValue, Event, KeyValue, Link, Resource, Scope, SpanDetail, SpanId, TraceId, Value};

/// The attribute's nesting in messages, counted independently of `limits` (recursion is bounded: prost
/// decoded the value, so it nests at most 100 levels).
fn nesting(attribute: &KeyValue) -> u32 {
    fn any_value(value: &AnyValue) -> u32 {
        1 + match &value.value {
            Some(Value::Array(array)) => 1 + array.values.iter().map(any_value).max().unwrap_or(0),
            Some(Value::Map(list)) => 1 + list.values.iter().map(nesting).max().unwrap_or(0),
            _ => 0,
        }
    }
    1 + attribute.value.as_ref().map_or(0, any_value)
}

/// Decoding what `message` encodes gives a message that encodes to the same bytes (compared as bytes, since
/// a NaN double is not equal to itself).
fn round_trips<M: Message + Default>(message: &M) {
    let bytes = message.encode_to_vec();
    let again = M::decode(bytes.as_slice()).expect("what prost encodes, prost decodes");
    assert_eq!(again.encode_to_vec(), bytes, "re-encoding changes the message");
}

/// The limit agrees with the independent count, and an attribute within it decodes in the deepest place
/// storage puts attributes (an event's, a link's or the scope's, inside a `detail`) and in a resource.
fn check_limits(attributes: &[KeyValue]) {
    for attribute in attributes {
        let levels = nesting(attribute);
        assert_eq!(
            key_value_exceeds(attribute),
            levels > MAX_ATTRIBUTE_NESTING,
            "nesting {levels}"
        );
        if levels > MAX_ATTRIBUTE_NESTING {
            continue;
        }
        let detail = SpanDetail {
            attributes: vec![attribute.clone()],
            events: vec![Event {
                attributes: vec![attribute.clone()],
                ..Event::default()
            }],
            links: vec![Link {
                attributes: vec![attribute.clone()],
                ..Link::default()
            }],
            scope: Some(Scope {
                attributes: vec![attribute.clone()],
                ..Scope::default()
            }),
            ..SpanDetail::default()
        };
        assert!(
            SpanDetail::decode(detail.encode_to_vec().as_slice()).is_ok(),
            "nesting {levels}"
        );
        let resource = Resource {
            attributes: vec![attribute.clone()],
            ..Resource::default()
        };
        assert!(
            Resource::decode(resource.encode_to_vec().as_slice()).is_ok(),
            "nesting {levels}"
        );
    }
    let mut kept = attributes.to_vec();
    let dropped = retain_within_nesting(&mut kept);
    assert_eq!(dropped as usize + kept.len(), attributes.len());
    assert!(kept.iter().all(|attribute| !key_value_exceeds(attribute)));
}

fuzz_target!(|bytes: &[u8]| {
    // A span block: whatever the bytes, decoding never panics, and a lookup's selective decoding (the trace ID
    // read in place) finds only spans of those traces, each as the full decoding finds it (for blocks the
    // builder writes, all of them: `storage::block` tests).
    let block = bytes::Bytes::copy_from_slice(bytes);
    if let Ok(all) = decode_block_spans(block.clone(), |_| true) {
        let even = |trace: &TraceId| trace.0[0] % 2 == 0;
        let picked = decode_block_spans(block, even).expect("what decodes whole decodes in part");
        let expected: Vec<_> = all
            .iter()
            .filter(|span| span.trace_id().is_some_and(|t| even(&t)))
            .collect();
        assert!(
            picked.iter().all(|span| expected.contains(&span)),
            "a span the full decoding does not find"
        );
        for span in &all {
            let _ = span.to_span();
        }
    }
    if let Ok(detail) = SpanDetail::decode(bytes) {
        round_trips(&detail);
        check_limits(&detail.attributes);
        for event in &detail.events {
            check_limits(&event.attributes);
        }
    }
    if let Ok(resource) = Resource::decode(bytes) {
        round_trips(&resource);
        check_limits(&resource.attributes);
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let safe = sanitize_text(text);
        assert!(!safe.contains('\0'));
        assert_eq!(safe.chars().count(), text.chars().count());
        if let Some(id) = TraceId::parse_hex(text) {
            assert_eq!(id.to_hex(), format!("{:0>32}", text.to_ascii_lowercase()));
        }
        if let Some(id) = SpanId::parse_hex(text) {
            assert_eq!(id.to_hex(), format!("{:0>16}", text.to_ascii_lowercase()));
            assert_eq!(SpanId::from_i64(id.to_i64()), id);
        }
    }
});
