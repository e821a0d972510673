//! PostgreSQL binary COPY encoding of span rows.
//!
//! Rows are encoded straight into a `BytesMut` by the request task that decoded them, so the batcher only
//! concatenates byte chunks and the writer only streams them: no intermediate row structs, no per-value
//! dynamic dispatch. The format is documented in the PostgreSQL manual (COPY, "Binary Format").

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::model::{Span, SpanId, SpanKind, StatusCode, TraceId};

/// The layout of the rows [`crate::block::BlockBuilder`] writes, as the spool records it: change it whenever
/// [`crate::block::COPY_SPAN_BLOCKS`] or [`crate::block::COPY_TRACE_INDEX`] (their columns or types) change,
/// and keep a way to write rows of every earlier layout a spool may still hold
/// ([`crate::block::upgrade_rows`]).
///
/// - 1: one `spans` row per span ([`encode_span_row`]) and `operation_index` rows (tracepost 0.1 before the
///   block layout). Read back and rewritten as blocks.
/// - 2: `span_blocks` and `trace_index` rows.
pub const ROW_FORMAT: u32 = 2;

/// The row layout of the legacy `spans` table (format 1).
pub const LEGACY_ROW_FORMAT: u32 = 1;

/// The COPY statement whose column order [`encode_span_row`] follows (format 1, the legacy table).
pub const COPY_SPANS: &str = "COPY spans (trace_id, span_id, parent_span_id, start_ns, duration_ns, service, name, \
     kind, status, cluster, resource_id, detail) FROM STDIN (FORMAT binary)";

const COLUMNS: i16 = 12;

/// The COPY statement whose column order [`encode_operation_index_row`] follows.
pub const COPY_OPERATION_INDEX: &str =
    "COPY operation_index (operation_key, start_ns, max_duration_ns, trace_id) FROM STDIN (FORMAT binary)";

/// The key of an operation in `operation_index`: FNV-1a (64 bits) of the service, a 0xff byte (never in
/// UTF-8) and the span name as stored (after [`sanitize_text`]).
pub fn operation_key(service: &str, name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in service.bytes().chain(std::iter::once(0xff)).chain(name.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}

/// Appends one `operation_index` row.
pub fn encode_operation_index_row(
    out: &mut BytesMut,
    operation_key: i64,
    start_ns: i64,
    max_duration_ns: i64,
    trace_id: &TraceId,
) {
    out.put_i16(4);
    put_i64(out, operation_key);
    put_i64(out, start_ns);
    put_i64(out, max_duration_ns);
    put_bytes(out, &trace_id.0);
}

/// The 19-byte header that starts every binary COPY stream.
pub fn copy_header() -> Bytes {
    let mut header = BytesMut::with_capacity(19);
    header.put_slice(b"PGCOPY\n\xff\r\n\0");
    header.put_i32(0); // flags
    header.put_i32(0); // header extension length
    header.freeze()
}

/// The trailer that ends every binary COPY stream.
pub fn copy_trailer() -> Bytes {
    Bytes::from_static(&[0xff, 0xff])
}

/// The resource-level values every span row of one resource shares.
#[derive(Clone, Copy, Debug)]
pub struct RowContext<'a> {
    pub service: &'a str,
    pub cluster: Option<&'a str>,
    pub resource_id: i64,
}

/// The span-level columns of a row, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct RowSpan<'a> {
    pub trace_id: &'a TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    /// Must already be safe for a `text` column (see [`sanitize_text`]).
    pub name: &'a str,
    pub kind: SpanKind,
    pub status_code: StatusCode,
}

/// Appends one legacy (format 1) span row. The span's name must already be safe for a `text` column (see [`sanitize_text`]).
pub fn encode_span_row(out: &mut BytesMut, context: RowContext<'_>, span: &Span) {
    let row = RowSpan {
        trace_id: &span.trace_id,
        span_id: span.span_id,
        parent_span_id: span.parent_span_id,
        start_time_unix_nano: span.start_time_unix_nano,
        end_time_unix_nano: span.detail.end_time_unix_nano,
        name: &span.name,
        kind: span.kind,
        status_code: span.status_code,
    };
    encode_row_columns(out, context, &row);
    let length = span.detail.encoded_len();
    out.put_i32(i32::try_from(length).unwrap_or(i32::MAX));
    out.reserve(length);
    span.detail.encode_raw(out);
}

/// Appends one legacy (format 1) span row whose `detail` column is already encoded (the protobuf of a `SpanDetail`).
pub fn encode_span_row_with_detail(out: &mut BytesMut, context: RowContext<'_>, row: &RowSpan<'_>, detail: &[u8]) {
    encode_row_columns(out, context, row);
    put_bytes(out, detail);
}

/// Every column but the last, `detail`.
fn encode_row_columns(out: &mut BytesMut, context: RowContext<'_>, row: &RowSpan<'_>) {
    debug_assert!(!row.name.contains('\0'), "span names are sanitized before encoding");
    out.put_i16(COLUMNS);
    put_bytes(out, &row.trace_id.0);
    put_i64(out, row.span_id.to_i64());
    match row.parent_span_id {
        Some(parent) => put_i64(out, parent.to_i64()),
        None => out.put_i32(-1),
    }
    put_i64(out, clamp_i64(row.start_time_unix_nano));
    put_i64(
        out,
        clamp_i64(row.end_time_unix_nano.saturating_sub(row.start_time_unix_nano)),
    );
    put_bytes(out, context.service.as_bytes());
    put_bytes(out, row.name.as_bytes());
    put_i16(out, row.kind as i16);
    put_i16(out, row.status_code as i16);
    match context.cluster {
        Some(cluster) => put_bytes(out, cluster.as_bytes()),
        None => out.put_i32(-1),
    }
    put_i64(out, context.resource_id);
}

pub(crate) fn put_bytes(out: &mut BytesMut, value: &[u8]) {
    out.put_i32(i32::try_from(value.len()).unwrap_or(i32::MAX));
    out.put_slice(value);
}

pub(crate) fn put_i64(out: &mut BytesMut, value: i64) {
    out.put_i32(8);
    out.put_i64(value);
}

pub(crate) fn put_i32(out: &mut BytesMut, value: i32) {
    out.put_i32(4);
    out.put_i32(value);
}

pub(crate) fn put_i16(out: &mut BytesMut, value: i16) {
    out.put_i32(2);
    out.put_i16(value);
}

fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Makes a string safe for a PostgreSQL `text` column: NUL characters, which PostgreSQL refuses, become
/// U+FFFD. Callers keep the original wherever it must stay recoverable.
pub fn sanitize_text(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{fffd}"))
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SpanDetail;

    #[test]
    fn a_row_has_twelve_fields_and_null_markers() {
        let span = Span {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            parent_span_id: None,
            name: "GET /".into(),
            kind: SpanKind::Server,
            start_time_unix_nano: 10,
            status_code: StatusCode::Unset,
            detail: SpanDetail {
                end_time_unix_nano: 25,
                ..Default::default()
            },
        };
        let mut out = BytesMut::new();
        let context = RowContext {
            service: "svc",
            cluster: None,
            resource_id: 7,
        };
        encode_span_row(&mut out, context, &span);
        assert_eq!(&out[0..2], &12i16.to_be_bytes());
        assert_eq!(&out[2..6], &16i32.to_be_bytes());
        // parent span ID is NULL
        let parent_at = 2 + 4 + 16 + 4 + 8;
        assert_eq!(&out[parent_at..parent_at + 4], &(-1i32).to_be_bytes());
        // duration is end - start
        let duration_at = parent_at + 4 + 4 + 8 + 4;
        assert_eq!(&out[duration_at..duration_at + 8], &15i64.to_be_bytes());
    }

    #[test]
    fn nul_characters_are_replaced_and_clean_text_is_borrowed() {
        assert_eq!(sanitize_text("a\0b"), "a\u{fffd}b");
        assert!(matches!(sanitize_text("plain"), Cow::Borrowed("plain")));
    }
}
