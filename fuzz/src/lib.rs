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
use tracepost_storage::model::{Resource, SpanDetail};

/// The columns of a `spans` COPY row (see `tracepost_storage::copy::COPY_SPANS`).
pub const COLUMNS: usize = 12;
/// The `resource_id` and `detail` columns.
pub const RESOURCE_ID: usize = 10;
pub const DETAIL: usize = 11;

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

/// One binary COPY row: its columns, `None` for NULL.
pub type Row = Vec<Option<Vec<u8>>>;

/// Splits the binary COPY rows conversion wrote. Conversion writes only whole, well-formed rows, so anything
/// else is a bug: this panics on it.
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
        let row = (0..columns)
            .map(|_| {
                let length = i32::from_be_bytes(take(&mut rest, 4).try_into().unwrap());
                assert!(length >= -1, "column length {length}");
                (length >= 0).then(|| take(&mut rest, length as usize))
            })
            .collect();
        rows.push(row);
    }
    rows
}

/// The stored `detail` of every row.
pub fn details(rows: &[Row]) -> impl Iterator<Item = &[u8]> {
    rows.iter()
        .map(|row| row[DETAIL].as_deref().expect("detail is never NULL"))
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

/// The resource ID column of a row.
pub fn resource_id(row: &Row) -> i64 {
    i64::from_be_bytes(
        row[RESOURCE_ID]
            .as_deref()
            .expect("resource_id is never NULL")
            .try_into()
            .expect("resource_id is 8 bytes"),
    )
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

/// Asserts two conversions of one request store the same: the same rows byte for byte, or, where the
/// protobuf fast path copied a client's non-canonical encoding (unknown fields, repeated or split
/// sub-messages, which prost merges) that the generated types re-encode canonically, the same rows once
/// `detail` and the resource are decoded. Resource IDs hash the resource's encoding, so they are compared
/// through the resources they name. Rejections, operations, the operation index and the metric reduction
/// must be equal.
pub fn assert_same_storage(fast: &Converted, slow: &Converted) {
    assert_eq!(fast.encoded.span_count, slow.encoded.span_count, "span count");
    assert_eq!(fast.rejected, slow.rejected, "rejections");
    assert_eq!(fast.encoded.operations, slow.encoded.operations, "operations");
    assert_eq!(
        fast.encoded.operation_index, slow.encoded.operation_index,
        "operation index"
    );
    assert_eq!(fast.metrics, slow.metrics, "metrics");
    if fast.encoded.rows == slow.encoded.rows {
        return;
    }
    let (fast_rows, slow_rows) = (rows(&fast.encoded.rows), rows(&slow.encoded.rows));
    let (fast_resources, slow_resources) = (resources(fast), resources(slow));
    assert_eq!(fast_rows.len(), slow_rows.len(), "row count");
    for (index, (fast_row, slow_row)) in fast_rows.iter().zip(&slow_rows).enumerate() {
        assert_eq!(
            fast_row[..RESOURCE_ID],
            slow_row[..RESOURCE_ID],
            "row {index}'s columns"
        );
        assert_eq!(
            fast_resources.get(&resource_id(fast_row)),
            slow_resources.get(&resource_id(slow_row)),
            "row {index}'s resource"
        );
        let detail = |row: &Row| SpanDetail::decode(row[DETAIL].as_deref().unwrap()).expect("readable");
        assert_eq!(detail(fast_row), detail(slow_row), "row {index}'s detail");
    }
}
