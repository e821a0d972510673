//! What the fuzz targets share: the conversion settings the collector's tests use, a parser for the binary
//! COPY rows conversion writes, and the checks every target makes on what ingest would store; for the query
//! targets, sample stored traces ([`query`]) and Go's parameter parsing to compare with ([`go`]).

pub mod go;
pub mod query;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use prost::Message;
use tracepost_collector::convert::{ConvertConfig, Converted};
use tracepost_collector::{RedConfig, SpanMetrics};
use tracepost_storage::block::{decode_block, BlockSpan};
use tracepost_storage::model::{Resource, SpanDetail};

/// The columns of a `span_blocks` COPY row (see `tracepost_storage::block::COPY_SPAN_BLOCKS`).
pub const COLUMNS: usize = 10;
/// The `block_id`, `span_count` and `bloom` columns.
pub const BLOCK_ID: usize = 0;
pub const SPAN_COUNT: usize = 5;
pub const BLOOM: usize = 8;

/// Conversion settings as in `collector/src/wire.rs`'s tests: a fallback cluster, span metrics on (so the
/// metric reduction runs too) and a fresh operations catalog, so that one input never changes what the next
/// one produces and two conversions of the same input can be compared.
pub fn config() -> ConvertConfig {
    static METRICS: OnceLock<Arc<SpanMetrics>> = OnceLock::new();
    ConvertConfig {
        cluster_name: Some("fallback".into()),
        catalog: Default::default(),
        span_metrics: Some(METRICS.get_or_init(|| SpanMetrics::new(RedConfig::default())).clone()),
    }
}

/// One span as conversion laid it out: the columns of its block's `span_blocks` row (`None` for NULL; the
/// `spans` column left out) and its entry in the block.
pub struct Row {
    pub block: Vec<Option<Vec<u8>>>,
    pub span: BlockSpan,
}

/// Splits the binary COPY `span_blocks` rows conversion wrote into their spans. Conversion writes only whole,
/// well-formed rows and blocks, so anything else is a bug: this panics on it.
pub fn rows(bytes: &[u8]) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut rest = bytes;
    let take = |rest: &mut &[u8], n: usize| -> Vec<u8> {
        assert!(n <= rest.len(), "a COPY row is cut short");
        let (taken, tail) = rest.split_at(n);
        *rest = tail;
        taken.to_vec()
    };
    while !rest.is_empty() {
        let columns = i16::from_be_bytes(take(&mut rest, 2).try_into().unwrap());
        assert_eq!(columns as usize, COLUMNS, "column count");
        let mut block: Vec<Option<Vec<u8>>> = (0..columns)
            .map(|_| {
                let length = i32::from_be_bytes(take(&mut rest, 4).try_into().unwrap());
                assert!(length >= -1, "column length {length}");
                (length >= 0).then(|| take(&mut rest, length as usize))
            })
            .collect();
        let spans = block.pop().flatten().expect("spans is never NULL");
        let decoded = decode_block(spans.into()).expect("a block conversion wrote decodes");
        let count = i32::from_be_bytes(block[SPAN_COUNT].as_deref().unwrap().try_into().unwrap());
        assert_eq!(count as usize, decoded.spans.len(), "the block's span count");
        for span in decoded.spans {
            rows.push(Row {
                block: block.clone(),
                span,
            });
        }
    }
    rows
}

/// The stored `detail` of every span.
pub fn details(rows: &[Row]) -> impl Iterator<Item = &[u8]> {
    rows.iter().map(|row| row.span.detail.as_ref())
}

/// Acknowledged implies readable: every `detail` and every resource body a conversion would store decodes
/// with the reader's decoders, and every row's resource is among the request's resources.
pub fn assert_readable(converted: &Converted) -> Vec<Row> {
    let rows = rows(&converted.encoded.rows);
    assert_eq!(rows.len(), converted.encoded.span_count, "rows and span count");
    for detail in details(&rows) {
        if let Err(error) = SpanDetail::decode(detail) {
            panic!("a stored detail does not decode: {error}\n{detail:02x?}");
        }
    }
    for resource in &converted.encoded.resources {
        if let Err(error) = Resource::decode(resource.body.as_ref()) {
            panic!("a stored resource does not decode: {error}\n{:02x?}", resource.body);
        }
    }
    let resources = resources(converted);
    for row in &rows {
        let id = resource_id(row);
        assert!(resources.contains_key(&id), "row's resource {id} is not stored");
    }
    rows
}

/// The resource ID of a span.
pub fn resource_id(row: &Row) -> i64 {
    row.span.resource_id
}

/// The request's resources by ID, decoded.
pub fn resources(converted: &Converted) -> HashMap<i64, Resource> {
    converted
        .encoded
        .resources
        .iter()
        .map(|row| {
            (
                row.id,
                Resource::decode(row.body.as_ref()).expect("stored resources decode"),
            )
        })
        .collect()
}

/// Asserts two conversions of one request store the same: the same rows byte for byte (blocks and trace
/// index), or, where the protobuf fast path copied a client's non-canonical encoding (unknown fields, repeated
/// or split sub-messages, which prost merges) that the generated types re-encode canonically, the same spans
/// in the same blocks once `detail` and the resource are decoded (the block IDs, which hash the block's bytes,
/// and the bloom filters then may differ). Resource IDs hash the resource's encoding, so they are compared
/// through the resources they name. Rejections, operations and the metric reduction must be equal.
pub fn assert_same_storage(fast: &Converted, slow: &Converted) {
    assert_eq!(fast.encoded.span_count, slow.encoded.span_count, "span count");
    assert_eq!(fast.rejected, slow.rejected, "rejections");
    assert_eq!(fast.encoded.operations, slow.encoded.operations, "operations");
    assert_eq!(fast.metrics, slow.metrics, "metrics");
    if fast.encoded.rows == slow.encoded.rows {
        assert_eq!(fast.encoded.trace_index, slow.encoded.trace_index, "trace index");
        return;
    }
    let (fast_rows, slow_rows) = (rows(&fast.encoded.rows), rows(&slow.encoded.rows));
    let (fast_resources, slow_resources) = (resources(fast), resources(slow));
    assert_eq!(fast_rows.len(), slow_rows.len(), "row count");
    for (index, (fast_row, slow_row)) in fast_rows.iter().zip(&slow_rows).enumerate() {
        assert_eq!(
            fast_row.block[BLOCK_ID + 1..BLOOM],
            slow_row.block[BLOCK_ID + 1..BLOOM],
            "span {index}'s block columns"
        );
        let entry = |row: &Row| BlockSpan {
            detail: Default::default(),
            resource_id: 0,
            ..row.span.clone()
        };
        assert_eq!(entry(fast_row), entry(slow_row), "span {index}'s fields");
        assert_eq!(
            fast_resources.get(&resource_id(fast_row)),
            slow_resources.get(&resource_id(slow_row)),
            "row {index}'s resource"
        );
        let detail = |row: &Row| SpanDetail::decode(row.span.detail.as_ref()).expect("readable");
        assert_eq!(detail(fast_row), detail(slow_row), "row {index}'s detail");
    }
}
