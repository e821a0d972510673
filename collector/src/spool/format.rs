//! The spool's on-disk format, version 1.
//!
//! A spool directory holds segment files named `segment-<20-digit sequence>.tps`, written in sequence order.
//! Each starts with a 16-byte header and holds records back to back:
//!
//! ```text
//! header:  b"TPSPOOL\n"  u32 LE format version (1)  u32 LE reserved (0)
//! record:  u32 LE payload length  u32 LE CRC-32 (IEEE) of the payload  payload
//! ```
//!
//! A payload is a protobuf [`SpoolRecord`]: one request's spans as the writer copies them into PostgreSQL
//! (binary COPY rows, resources, operations) and when they were appended. Protobuf lets a later version add
//! fields that this one ignores; `row_format` says which layout of COPY rows `rows` and `operation_index`
//! hold ([`tracepost_storage::copy::ROW_FORMAT`]), so a version that changes the span table still knows how
//! to write a spool an older version left behind. A reader accepts every format version up to its own.
//!
//! A record is only valid whole: a length past the end of the file, or a checksum that does not match, ends
//! the segment's valid part (a crash mid-write, a full disk, a damaged block). Records before it are intact.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tracepost_storage::{EncodedSpans, OperationRow, ResourceRow};

/// The first bytes of every segment.
pub const MAGIC: &[u8; 8] = b"TPSPOOL\n";
/// The format this version writes; it reads every version up to this one.
pub const FORMAT_VERSION: u32 = 1;
/// Header bytes at the start of every segment.
pub const HEADER_BYTES: u64 = 16;
/// Length and checksum before every payload.
pub const FRAME_BYTES: u64 = 8;
/// No record is larger: a length beyond it is damage, not a record.
pub const MAX_RECORD_BYTES: u64 = 1 << 30;

/// A segment's file name for its sequence number.
pub fn segment_name(sequence: u64) -> String {
    format!("segment-{sequence:020}.tps")
}

/// The sequence number of a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".tps")?;
    (digits.len() == 20 && digits.bytes().all(|byte| byte.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The header of a new segment.
pub fn header() -> [u8; HEADER_BYTES as usize] {
    let mut header = [0u8; HEADER_BYTES as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header
}

/// Why a segment cannot be read at all.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a spool segment (bad magic)")]
    Magic,
    #[error("written by a newer tracepost (spool format {0}, this version reads up to {FORMAT_VERSION})")]
    NewerVersion(u32),
    #[error("shorter than its header")]
    Short,
}

/// Checks a segment's header; returns its format version.
pub fn check_header(bytes: &[u8]) -> Result<u32, HeaderError> {
    if bytes.len() < HEADER_BYTES as usize {
        return Err(HeaderError::Short);
    }
    if &bytes[..8] != MAGIC {
        return Err(HeaderError::Magic);
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("four bytes"));
    match version {
        1..=FORMAT_VERSION => Ok(version),
        _ => Err(HeaderError::NewerVersion(version)),
    }
}

/// Appends one framed record (length, checksum, payload) to `out`.
pub fn frame(out: &mut BytesMut, payload: &[u8]) {
    out.reserve(FRAME_BYTES as usize + payload.len());
    out.put_u32_le(payload.len() as u32);
    out.put_u32_le(crc32fast::hash(payload));
    out.put_slice(payload);
}

/// What a record frame says about the payload that follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub len: u64,
    pub crc: u32,
}

/// Reads a frame; `None` when its length cannot be a record's (no record is empty: zeros where a frame
/// should be are a file's unwritten tail, not a record).
pub fn parse_frame(bytes: [u8; FRAME_BYTES as usize]) -> Option<Frame> {
    let len = u64::from(u32::from_le_bytes(bytes[..4].try_into().expect("four bytes")));
    let crc = u32::from_le_bytes(bytes[4..].try_into().expect("four bytes"));
    (1..=MAX_RECORD_BYTES).contains(&len).then_some(Frame { len, crc })
}

/// Whether `payload` is what `frame` announced.
pub fn payload_intact(frame: Frame, payload: &[u8]) -> bool {
    payload.len() as u64 == frame.len && crc32fast::hash(payload) == frame.crc
}

/// One request's spans in the spool.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SpoolRecord {
    /// The layout of `rows` and `index` ([`tracepost_storage::copy::ROW_FORMAT`]).
    #[prost(uint32, tag = "1")]
    pub row_format: u32,
    /// When the record was appended (Unix nanoseconds): how old the oldest unsent span is.
    #[prost(int64, tag = "2")]
    pub appended_unix_nanos: i64,
    #[prost(uint64, tag = "3")]
    pub span_count: u64,
    /// Span rows, binary COPY encoded: `span_blocks` rows (format 2), `spans` rows (format 1).
    #[prost(bytes = "bytes", tag = "4")]
    pub rows: Bytes,
    /// Index rows, binary COPY encoded: `trace_index` rows (format 2), `operation_index` rows (format 1, not
    /// needed to rewrite its spans).
    #[prost(bytes = "bytes", tag = "5")]
    pub index: Bytes,
    #[prost(message, repeated, tag = "6")]
    pub resources: Vec<SpoolResource>,
    #[prost(message, repeated, tag = "7")]
    pub operations: Vec<SpoolOperation>,
}

/// A resource row of a record.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SpoolResource {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int32, tag = "2")]
    pub day: i32,
    #[prost(string, tag = "3")]
    pub service: String,
    #[prost(string, optional, tag = "4")]
    pub cluster: Option<String>,
    #[prost(bytes = "bytes", tag = "5")]
    pub body: Bytes,
}

/// An operation row of a record.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SpoolOperation {
    #[prost(string, tag = "1")]
    pub service: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(int32, tag = "3")]
    pub kind: i32,
    #[prost(int32, tag = "4")]
    pub day: i32,
}

/// Encodes one request's spans as a framed record.
pub fn encode_record(spans: &EncodedSpans, appended_unix_nanos: i64) -> BytesMut {
    let record = SpoolRecord {
        row_format: tracepost_storage::copy::ROW_FORMAT,
        appended_unix_nanos,
        span_count: spans.span_count as u64,
        rows: spans.rows.clone(),
        index: spans.trace_index.clone(),
        resources: spans
            .resources
            .iter()
            .map(|row| SpoolResource {
                id: row.id,
                day: row.day,
                service: row.service.clone(),
                cluster: row.cluster.clone(),
                body: row.body.clone(),
            })
            .collect(),
        operations: spans
            .operations
            .iter()
            .map(|row| SpoolOperation {
                service: row.service.clone(),
                name: row.name.clone(),
                kind: i32::from(row.kind),
                day: row.day,
            })
            .collect(),
    };
    let payload = record.encode_to_vec();
    let mut out = BytesMut::new();
    frame(&mut out, &payload);
    out
}

/// Why an intact payload cannot be written to PostgreSQL by this version.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("not a spool record: {0}")]
    Decode(String),
    #[error("rows in layout {0}, which this version cannot write (it writes {current})", current = tracepost_storage::copy::ROW_FORMAT)]
    RowFormat(u32),
    #[error("{0}")]
    Upgrade(String),
}

/// Decodes an intact payload into the spans to write and the time it was appended.
pub fn decode_record(payload: Bytes) -> Result<(EncodedSpans, i64), RecordError> {
    let record = SpoolRecord::decode(payload).map_err(|error| RecordError::Decode(error.to_string()))?;
    let resources: Vec<ResourceRow> = record
        .resources
        .into_iter()
        .map(|row| ResourceRow {
            id: row.id,
            day: row.day,
            service: row.service,
            cluster: row.cluster,
            body: row.body,
        })
        .collect();
    let (rows, trace_index) = match record.row_format {
        tracepost_storage::copy::ROW_FORMAT => (record.rows, record.index),
        // Written before the block layout: its span rows are rewritten as blocks.
        tracepost_storage::copy::LEGACY_ROW_FORMAT => {
            tracepost_storage::block::upgrade_rows(record.row_format, &record.rows, &resources)
                .map_err(|error| RecordError::Upgrade(error.to_string()))?
        }
        other => return Err(RecordError::RowFormat(other)),
    };
    let spans = EncodedSpans {
        rows,
        trace_index,
        span_count: usize::try_from(record.span_count).unwrap_or(usize::MAX),
        resources,
        operations: record
            .operations
            .into_iter()
            .map(|row| OperationRow {
                service: row.service,
                name: row.name,
                kind: i16::try_from(row.kind).unwrap_or(0),
                day: row.day,
            })
            .collect(),
    };
    Ok((spans, record.appended_unix_nanos))
}

#[cfg(test)]
mod tests {
    use bytes::Buf;

    use super::*;

    /// The records of an in-memory segment: the intact records and the offset where the valid part ends.
    fn split_records(mut segment: Bytes) -> Result<(Vec<Bytes>, u64), HeaderError> {
        check_header(&segment)?;
        segment.advance(HEADER_BYTES as usize);
        let mut offset = HEADER_BYTES;
        let mut records = Vec::new();
        while segment.len() >= FRAME_BYTES as usize {
            let Some(frame) = parse_frame(segment[..FRAME_BYTES as usize].try_into().expect("eight bytes")) else {
                break;
            };
            let end = FRAME_BYTES + frame.len;
            if (segment.len() as u64) < end {
                break;
            }
            let payload = segment.slice(FRAME_BYTES as usize..end as usize);
            if !payload_intact(frame, &payload) {
                break;
            }
            records.push(payload);
            segment.advance(end as usize);
            offset += end;
        }
        Ok((records, offset))
    }

    fn spans(count: usize) -> EncodedSpans {
        EncodedSpans {
            rows: Bytes::from(vec![7u8; count * 10]),
            span_count: count,
            resources: vec![ResourceRow {
                id: -42,
                day: 20_000,
                service: "checkout".into(),
                cluster: Some("apps".into()),
                body: Bytes::from_static(b"\x0a\x03abc"),
            }],
            operations: vec![OperationRow {
                service: "checkout".into(),
                name: "GET /cart".into(),
                kind: 2,
                day: 20_000,
            }],
            trace_index: Bytes::from_static(b"index rows"),
        }
    }

    fn segment_of(records: &[BytesMut]) -> BytesMut {
        let mut segment = BytesMut::from(&header()[..]);
        for record in records {
            segment.extend_from_slice(record);
        }
        segment
    }

    #[test]
    fn a_record_reads_back_as_the_spans_that_were_appended() {
        let original = spans(3);
        let segment = segment_of(&[encode_record(&original, 1_234)]).freeze();
        let (records, end) = split_records(segment.clone()).expect("header");
        assert_eq!(end, segment.len() as u64);
        let (decoded, appended) = decode_record(records[0].clone()).expect("record");
        assert_eq!(appended, 1_234);
        assert_eq!(decoded.rows, original.rows);
        assert_eq!(decoded.span_count, 3);
        assert_eq!(decoded.trace_index, original.trace_index);
        assert_eq!(decoded.resources[0].id, -42);
        assert_eq!(decoded.resources[0].cluster.as_deref(), Some("apps"));
        assert_eq!(decoded.operations, original.operations);
    }

    #[test]
    fn a_torn_last_record_ends_the_valid_part_after_the_intact_ones() {
        let first = encode_record(&spans(2), 1);
        let second = encode_record(&spans(5), 2);
        let whole = segment_of(&[first.clone(), second.clone()]);
        let intact_end = HEADER_BYTES + first.len() as u64;
        for cut in [1, FRAME_BYTES as usize, second.len() - 1] {
            let torn = Bytes::copy_from_slice(&whole[..whole.len() - cut]);
            let (records, end) = split_records(torn).expect("header");
            assert_eq!(records.len(), 1, "cut {cut}");
            assert_eq!(end, intact_end, "cut {cut}");
        }
    }

    /// A tail of zeros (a file extended but never written) would pass as empty records with a zero CRC.
    #[test]
    fn zeros_where_a_record_should_be_end_the_valid_part() {
        let first = encode_record(&spans(2), 1);
        let mut whole = segment_of(std::slice::from_ref(&first));
        whole.extend_from_slice(&[0u8; 64]);
        let (records, end) = split_records(whole.freeze()).expect("header");
        assert_eq!(records.len(), 1);
        assert_eq!(end, HEADER_BYTES + first.len() as u64);
    }

    #[test]
    fn a_flipped_byte_in_a_payload_fails_its_checksum() {
        let first = encode_record(&spans(2), 1);
        let mut whole = segment_of(&[first.clone(), encode_record(&spans(1), 2)]);
        let inside_second = HEADER_BYTES as usize + first.len() + FRAME_BYTES as usize + 3;
        whole[inside_second] ^= 0x40;
        let (records, _) = split_records(whole.freeze()).expect("header");
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn a_segment_from_a_newer_format_or_not_a_segment_is_refused_whole() {
        let mut newer = header();
        newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        assert_eq!(check_header(&newer), Err(HeaderError::NewerVersion(FORMAT_VERSION + 1)));
        assert_eq!(check_header(b"PGDMP.............."), Err(HeaderError::Magic));
        assert_eq!(check_header(&header()[..10]), Err(HeaderError::Short));
    }

    #[test]
    fn rows_in_another_layout_are_not_written_as_if_they_were_this_one() {
        let mut record = SpoolRecord::decode(
            split_records(segment_of(&[encode_record(&spans(1), 1)]).freeze())
                .expect("header")
                .0[0]
                .clone(),
        )
        .expect("record");
        record.row_format += 1;
        let error = decode_record(Bytes::from(record.encode_to_vec())).expect_err("other layout");
        assert!(matches!(error, RecordError::RowFormat(_)));
    }

    #[test]
    fn segment_names_sort_in_sequence_order_and_parse_back() {
        assert_eq!(parse_segment_name(&segment_name(7)), Some(7));
        assert!(segment_name(9) < segment_name(10));
        assert_eq!(parse_segment_name("segment-7.tps"), None);
        assert_eq!(parse_segment_name("segment-0000000000000000000x.tps"), None);
        assert_eq!(parse_segment_name("notes.txt"), None);
    }

    /// A spool written by version 1 is readable by every later version: this segment was written by the
    /// first version (two records, then a torn third) and must keep reading back the same spans.
    #[test]
    fn a_spool_segment_written_by_format_version_1_still_reads() {
        let segment = Bytes::from_static(include_bytes!("testdata/format-v1.tps"));
        let (records, end) = split_records(segment.clone()).expect("version 1 header");
        assert_eq!(records.len(), 2);
        assert!(
            end < segment.len() as u64,
            "the torn third record is not part of the valid part"
        );
        // The encoder that wrote this segment put placeholder bytes where COPY rows go: the records' fields read
        // back, and their rows are refused with a clear error instead of being written.
        let first = SpoolRecord::decode(records[0].clone()).expect("first record");
        assert_eq!(first.row_format, tracepost_storage::copy::LEGACY_ROW_FORMAT);
        assert_eq!(first.appended_unix_nanos, 1_795_300_000_000_000_000);
        assert_eq!(first.span_count, 4);
        assert_eq!(first.resources[0].service, "web");
        let second = SpoolRecord::decode(records[1].clone()).expect("second record");
        assert_eq!(second.span_count, 1);
        assert_eq!(second.operations[0].name, "GET /");
        assert!(matches!(
            decode_record(records[0].clone()),
            Err(RecordError::Upgrade(_))
        ));
    }

    /// A record of per-span rows (layout 1, before span blocks) left in a spool by an earlier version is
    /// rewritten as blocks when it is drained: nothing it holds is lost to the upgrade.
    #[test]
    fn a_record_of_per_span_rows_from_an_earlier_version_drains_as_blocks() {
        use tracepost_storage::model::{Span, SpanDetail, SpanId, SpanKind, StatusCode, TraceId};
        let mut rows = bytes::BytesMut::new();
        for id in 1..=3u8 {
            let span = Span {
                trace_id: TraceId([7; 16]),
                span_id: SpanId([id; 8]),
                parent_span_id: None,
                name: "GET /users".into(),
                kind: SpanKind::Server,
                start_time_unix_nano: 1_795_300_000_000_000_000 + u64::from(id),
                status_code: StatusCode::Unset,
                detail: SpanDetail {
                    end_time_unix_nano: 1_795_300_000_000_000_100,
                    ..Default::default()
                },
            };
            let context = tracepost_storage::copy::RowContext {
                service: "web",
                cluster: Some("apps"),
                resource_id: 11,
            };
            tracepost_storage::copy::encode_span_row(&mut rows, context, &span);
        }
        let record = SpoolRecord {
            row_format: tracepost_storage::copy::LEGACY_ROW_FORMAT,
            appended_unix_nanos: 5,
            span_count: 3,
            rows: rows.freeze(),
            index: Bytes::from_static(b"operation index rows, not needed"),
            resources: Vec::new(),
            operations: Vec::new(),
        };
        let (spans, appended) = decode_record(Bytes::from(record.encode_to_vec())).expect("upgraded");
        assert_eq!((spans.span_count, appended), (3, 5));
        let blocks = tracepost_storage::block::decode_block_rows(&spans.rows).expect("blocks");
        assert_eq!(blocks.len(), 1);
        let ids: Vec<u8> = blocks[0].spans.iter().map(|span| span.span_id[0]).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert!(!spans.trace_index.is_empty());
    }
}
