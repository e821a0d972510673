//! The OTLP/protobuf fast path: walks an `ExportTraceServiceRequest` in its wire form and writes COPY rows
//! without building the generated message tree.
//!
//! The ingest benchmark showed the generated-types path spending about half of the collector's CPU in
//! allocation: every attribute key and value becomes a `String` only to be re-encoded into the span's
//! `detail` blob. tracepost's storage messages use OTLP's field numbers for `KeyValue`, `AnyValue`, `Event`
//! and `Link` (see `tracepost_storage::model`), so here those sub-messages are validated (structure and UTF-8,
//! as prost would) and copied byte for byte. The result is the same [`Converted`] the generated path
//! produces; `tests` check the two agree byte for byte on arbitrary requests and that malformed input is an
//! error, never a panic.
//!
//! Differences from the generated path, by design: unknown fields are skipped (as prost does) and a
//! resource's `entity_refs` are skipped without being validated (tracepost does not store them); a request
//! holding a protobuf group (proto2 only, never in OTLP), which prost would skip, is refused.

use std::collections::HashSet;

use bytes::{BufMut, Bytes};
use tracepost_storage::block::BlockBuilder;
use tracepost_storage::copy::{sanitize_text, RowSpan};
use tracepost_storage::limits::MAX_ATTRIBUTE_NESTING;
use tracepost_storage::model::{SpanKind, StatusCode};

use crate::catalog::RequestOperations;
use crate::convert::{validate_span, Allowance, ConvertConfig, Converted, ResourceInfo, ValidIds};
use crate::normalize::{derived_status, ResourceFacts, Scalar, SpanFacts};
use crate::red::{RequestMetrics, SpanInput};

/// Why a body is not a valid `ExportTraceServiceRequest`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(&'static str);

type Result<T> = std::result::Result<T, WireError>;

/// An attribute nested deeper than [`MAX_ATTRIBUTE_NESTING`]: the attribute (or the event or link holding it)
/// is dropped and counted, the request goes on.
const TOO_DEEP: WireError = WireError("attribute nested too deep");

/// Groups (proto2's wire types 3 and 4) do not occur in OTLP. prost skips an unknown group, but copied into
/// `detail` every group level would count against prost's recursion limit on read, so they are refused.
pub const GROUPS_UNSUPPORTED: WireError = WireError("protobuf groups are not supported");

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// A cursor over protobuf wire bytes.
#[derive(Clone, Copy)]
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// A varint as prost reads it: at most ten bytes, and no bits past the 64th (a tenth byte above 1 is
    /// refused, not truncated, since the reader's prost would refuse the copied bytes).
    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for index in 0..10 {
            let Some((&byte, rest)) = self.bytes.split_first() else {
                return Err(WireError("buffer underflow in varint"));
            };
            self.bytes = rest;
            if index == 9 && byte > 1 {
                return Err(WireError("invalid varint"));
            }
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(WireError("invalid varint"))
    }

    /// The next field's number and wire type. As in prost, the whole key (not only the field number) must fit
    /// in 32 bits.
    fn key(&mut self) -> Result<(u32, u8)> {
        let key = u32::try_from(self.varint()?).map_err(|_| WireError("invalid key value"))?;
        let field = key >> 3;
        if field == 0 {
            return Err(WireError("invalid field number 0"));
        }
        Ok((field, (key & 7) as u8))
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8]> {
        if length > self.bytes.len() {
            return Err(WireError("buffer underflow"));
        }
        let (taken, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Ok(taken)
    }

    fn length_delimited(&mut self) -> Result<&'a [u8]> {
        let length = usize::try_from(self.varint()?).map_err(|_| WireError("length too large"))?;
        self.take(length)
    }

    fn fixed64(&mut self) -> Result<u64> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(
            bytes.try_into().map_err(|_| WireError("buffer underflow"))?,
        ))
    }

    fn fixed32(&mut self) -> Result<u32> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes(
            bytes.try_into().map_err(|_| WireError("buffer underflow"))?,
        ))
    }

    fn skip(&mut self, wire_type: u8) -> Result<()> {
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.length_delimited().map(drop),
            FIXED32 => self.take(4).map(drop),
            START_GROUP | END_GROUP => Err(GROUPS_UNSUPPORTED),
            _ => Err(WireError("unsupported wire type")),
        }
    }

    /// A length-delimited field that must be UTF-8.
    fn string(&mut self) -> Result<&'a str> {
        std::str::from_utf8(self.length_delimited()?)
            .map_err(|_| WireError("invalid string value: data is not UTF-8 encoded"))
    }
}

/// Reads the value of a field whose wire type must be `expected`.
fn expect(wire_type: u8, expected: u8) -> Result<()> {
    if wire_type == expected {
        Ok(())
    } else {
        Err(WireError("invalid wire type for a known field"))
    }
}

fn put_key(out: &mut impl BufMut, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

fn put_varint(out: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

fn put_len(out: &mut impl BufMut, field: u32, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.put_slice(bytes);
}

/// Checks a `KeyValue` (key string, `AnyValue`), as prost would decode it; returns its key and scalar value.
/// `level` is the message nesting of this `KeyValue` counted from the attribute (1), as
/// `tracepost_storage::limits` counts it; past [`MAX_ATTRIBUTE_NESTING`] the answer is [`TOO_DEEP`], before
/// any recursion, so the stack stays bounded.
fn check_key_value(bytes: &[u8], level: u32) -> Result<(&str, Scalar<'_>)> {
    if level > MAX_ATTRIBUTE_NESTING {
        return Err(TOO_DEEP);
    }
    let mut reader = Reader::new(bytes);
    let mut key = "";
    let mut value = Scalar::Other;
    while !reader.is_empty() {
        let (field, wire_type) = reader.key()?;
        match field {
            1 => expect(wire_type, LEN).and_then(|()| reader.string().map(|text| key = text))?,
            2 => expect(wire_type, LEN)
                .and_then(|()| check_any_value(reader.length_delimited()?, level + 1).map(|v| value = v))?,
            _ => reader.skip(wire_type)?,
        }
    }
    Ok((key, value))
}

/// Checks an `AnyValue`; returns it if it is a string or an integer (the last value field wins, as in prost).
fn check_any_value(bytes: &[u8], level: u32) -> Result<Scalar<'_>> {
    if level > MAX_ATTRIBUTE_NESTING {
        return Err(TOO_DEEP);
    }
    let mut reader = Reader::new(bytes);
    let mut value = Scalar::Other;
    while !reader.is_empty() {
        let (field, wire_type) = reader.key()?;
        match field {
            1 => expect(wire_type, LEN).and_then(|()| reader.string().map(|text| value = Scalar::Str(text)))?,
            2 => expect(wire_type, VARINT).and_then(|()| reader.varint().map(|_| value = Scalar::Other))?,
            3 => expect(wire_type, VARINT).and_then(|()| reader.varint().map(|v| value = Scalar::Int(v as i64)))?,
            4 => expect(wire_type, FIXED64).and_then(|()| reader.fixed64().map(|_| value = Scalar::Other))?,
            // ArrayValue and KeyValueList (one level each): `repeated` field 1 of AnyValue / KeyValue.
            5 | 6 => {
                expect(wire_type, LEN)?;
                let list = reader.length_delimited()?;
                if level + 1 > MAX_ATTRIBUTE_NESTING {
                    return Err(TOO_DEEP);
                }
                if field == 5 {
                    for_each_repeated(list, |item| check_any_value(item, level + 2).map(drop))?;
                } else {
                    for_each_repeated(list, |item| check_key_value(item, level + 2).map(drop))?;
                }
                value = Scalar::Other;
            }
            7 => expect(wire_type, LEN).and_then(|()| reader.length_delimited().map(|_| value = Scalar::Other))?,
            _ => reader.skip(wire_type)?,
        }
    }
    Ok(value)
}

/// Calls `each` with every field-1 sub-message of a message whose only known field is `repeated ... = 1`.
fn for_each_repeated(bytes: &[u8], mut each: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let mut reader = Reader::new(bytes);
    while !reader.is_empty() {
        let (field, wire_type) = reader.key()?;
        if field == 1 {
            expect(wire_type, LEN)?;
            each(reader.length_delimited()?)?;
        } else {
            reader.skip(wire_type)?;
        }
    }
    Ok(())
}

/// Checks an `Event` (time, name, attributes, dropped count).
fn check_event(bytes: &[u8]) -> Result<()> {
    let mut reader = Reader::new(bytes);
    while !reader.is_empty() {
        let (field, wire_type) = reader.key()?;
        match field {
            1 => expect(wire_type, FIXED64).and_then(|()| reader.fixed64().map(drop))?,
            2 => expect(wire_type, LEN).and_then(|()| reader.string().map(drop))?,
            3 => expect(wire_type, LEN).and_then(|()| check_key_value(reader.length_delimited()?, 1).map(drop))?,
            4 => expect(wire_type, VARINT).and_then(|()| reader.varint().map(drop))?,
            _ => reader.skip(wire_type)?,
        }
    }
    Ok(())
}

/// Checks a `Link` (IDs, trace state, attributes, dropped count, flags).
fn check_link(bytes: &[u8]) -> Result<()> {
    let mut reader = Reader::new(bytes);
    while !reader.is_empty() {
        let (field, wire_type) = reader.key()?;
        match field {
            1 | 2 => expect(wire_type, LEN).and_then(|()| reader.length_delimited().map(drop))?,
            3 => expect(wire_type, LEN).and_then(|()| reader.string().map(drop))?,
            4 => expect(wire_type, LEN).and_then(|()| check_key_value(reader.length_delimited()?, 1).map(drop))?,
            5 => expect(wire_type, VARINT).and_then(|()| reader.varint().map(drop))?,
            6 => expect(wire_type, FIXED32).and_then(|()| reader.fixed32().map(drop))?,
            _ => reader.skip(wire_type)?,
        }
    }
    Ok(())
}

/// Appends a `KeyValue` with a string value, as prost encodes it, as field `field`.
fn put_string_attribute(out: &mut Vec<u8>, field: u32, key: &str, value: &str) {
    let mut any = Vec::with_capacity(value.len() + 4);
    put_len(&mut any, 1, value.as_bytes());
    let mut pair = Vec::with_capacity(key.len() + any.len() + 8);
    if !key.is_empty() {
        put_len(&mut pair, 1, key.as_bytes());
    }
    put_len(&mut pair, 2, &any);
    put_len(out, field, &pair);
}

/// The request's rows would outgrow the memory the ingest budget gives it.
pub const OVER_BUDGET: WireError =
    WireError("the request's spans encode into more memory than the ingest budget allows");

/// Converts a protobuf `ExportTraceServiceRequest` straight from its bytes.
pub fn convert_protobuf(body: &[u8], config: &ConvertConfig) -> Result<Converted> {
    convert_protobuf_within(body, config, &mut Allowance::unlimited())
}

/// [`convert_protobuf`] within an [`Allowance`]: [`OVER_BUDGET`] when the rows would outgrow it.
pub fn convert_protobuf_within(
    body: &[u8],
    config: &ConvertConfig,
    allowance: &mut Allowance<'_>,
) -> Result<Converted> {
    let mut state = State {
        allowance,
        resource_bytes: 0,
        converted: Converted {
            // A Linkerd span takes some 400 bytes of protobuf.
            metrics: config
                .span_metrics
                .as_deref()
                .map(|metrics| RequestMetrics::new(metrics, body.len() / 384)),
            ..Converted::default()
        },
        blocks: BlockBuilder::new(),
        resource_days: HashSet::new(),
        detail: Vec::with_capacity(1024),
        route: String::new(),
        operations: RequestOperations::default(),
        config,
    };
    let mut reader = Reader::new(body);
    while !reader.is_empty() {
        let (field, wire_type) = reader.key()?;
        if field == 1 {
            expect(wire_type, LEN)?;
            state.resource_spans(reader.length_delimited()?)?;
        } else {
            reader.skip(wire_type)?;
        }
    }
    (state.converted.encoded.rows, state.converted.encoded.trace_index) =
        state.blocks.finish(&state.converted.encoded.resources);
    (state.converted.encoded.operations, state.converted.operation_keys) = state.operations.finish(&config.catalog);
    Ok(state.converted)
}

struct State<'c, 'a> {
    allowance: &'c mut Allowance<'a>,
    /// What the request's resources cost beyond the rows (see `convert::PER_RESOURCE_BYTES`).
    resource_bytes: usize,
    converted: Converted,
    blocks: BlockBuilder,
    resource_days: HashSet<(i64, i32)>,
    /// Scratch buffer for one span's `detail`.
    detail: Vec<u8>,
    /// Scratch buffer for one span's route template.
    route: String,
    operations: RequestOperations,
    config: &'c ConvertConfig,
}

impl State<'_, '_> {
    fn resource_spans(&mut self, bytes: &[u8]) -> Result<()> {
        // Fields may come in any order: collect first, then build the resource before its spans.
        let mut resources = Vec::new();
        let mut scope_spans = Vec::new();
        let mut schema_url = "";
        let mut reader = Reader::new(bytes);
        while !reader.is_empty() {
            let (field, wire_type) = reader.key()?;
            match field {
                1 => expect(wire_type, LEN)
                    .map(|()| reader.length_delimited())?
                    .map(|r| resources.push(r))?,
                2 => expect(wire_type, LEN)
                    .map(|()| reader.length_delimited())?
                    .map(|s| scope_spans.push(s))?,
                3 => expect(wire_type, LEN)
                    .and_then(|()| reader.string())
                    .map(|url| schema_url = url)?,
                _ => reader.skip(wire_type)?,
            }
        }

        self.resource_bytes += crate::convert::PER_RESOURCE_BYTES + resources.iter().map(|r| r.len()).sum::<usize>();
        self.admit()?;
        // Our `Resource`: attributes (1), dropped count (2), schema URL (3), in field order as prost writes it.
        let mut attributes = Vec::new();
        let mut facts = ResourceFacts::default();
        let mut dropped = 0u64;
        let mut too_deep = 0u32;
        for resource in resources {
            let mut reader = Reader::new(resource);
            while !reader.is_empty() {
                let (field, wire_type) = reader.key()?;
                match field {
                    1 => {
                        expect(wire_type, LEN)?;
                        let attribute = reader.length_delimited()?;
                        match check_key_value(attribute, 1) {
                            Ok((key, value)) => {
                                facts.observe(key, value);
                                attributes.push((key, attribute));
                            }
                            Err(TOO_DEEP) => too_deep += 1,
                            Err(error) => return Err(error),
                        }
                    }
                    2 => expect(wire_type, VARINT)
                        .and_then(|()| reader.varint())
                        .map(|count| dropped = count)?,
                    _ => reader.skip(wire_type)?,
                }
            }
        }
        let outcome = facts.finish();
        let mut body = Vec::new();
        for (key, attribute) in attributes {
            match &outcome.service {
                Some(service) if outcome.replaces_service && key == "service.name" => {
                    put_string_attribute(&mut body, 1, key, service);
                }
                _ => put_len(&mut body, 1, attribute),
            }
        }
        for (key, value) in &outcome.additions {
            put_string_attribute(&mut body, 1, key, value);
        }
        let dropped = (dropped as u32).saturating_add(too_deep);
        if dropped != 0 {
            put_key(&mut body, 2, VARINT);
            put_varint(&mut body, u64::from(dropped));
        }
        if !schema_url.is_empty() {
            put_len(&mut body, 3, schema_url.as_bytes());
        }
        let info = ResourceInfo::new(
            &outcome,
            Bytes::from(body),
            self.config,
            self.converted.metrics.as_mut(),
        );
        for scope_spans in scope_spans {
            self.scope_spans(scope_spans, &info)?;
        }
        Ok(())
    }

    fn scope_spans(&mut self, bytes: &[u8], info: &ResourceInfo) -> Result<()> {
        let mut scopes = Vec::new();
        let mut spans = Vec::new();
        let mut schema_url = "";
        let mut reader = Reader::new(bytes);
        while !reader.is_empty() {
            let (field, wire_type) = reader.key()?;
            match field {
                1 => expect(wire_type, LEN)
                    .map(|()| reader.length_delimited())?
                    .map(|s| scopes.push(s))?,
                2 => expect(wire_type, LEN)
                    .map(|()| reader.length_delimited())?
                    .map(|s| spans.push(s))?,
                3 => expect(wire_type, LEN)
                    .and_then(|()| reader.string())
                    .map(|url| schema_url = url)?,
                _ => reader.skip(wire_type)?,
            }
        }
        let scope = encode_scope(&scopes, schema_url)?;
        for span in spans {
            self.span(span, info, &scope)?;
        }
        Ok(())
    }

    fn span(&mut self, bytes: &[u8], info: &ResourceInfo, scope: &[u8]) -> Result<()> {
        let mut fields = SpanFields::default();
        let mut facts = SpanFacts::default();
        let mut reader = Reader::new(bytes);
        while !reader.is_empty() {
            let (field, wire_type) = reader.key()?;
            match field {
                1 => expect(wire_type, LEN)
                    .and_then(|()| reader.length_delimited())
                    .map(|v| fields.trace_id = v)?,
                2 => expect(wire_type, LEN)
                    .and_then(|()| reader.length_delimited())
                    .map(|v| fields.span_id = v)?,
                3 => expect(wire_type, LEN)
                    .and_then(|()| reader.string())
                    .map(|v| fields.trace_state = v)?,
                4 => expect(wire_type, LEN)
                    .and_then(|()| reader.length_delimited())
                    .map(|v| fields.parent = v)?,
                5 => expect(wire_type, LEN)
                    .and_then(|()| reader.string())
                    .map(|v| fields.name = v)?,
                6 => expect(wire_type, VARINT)
                    .and_then(|()| reader.varint())
                    .map(|v| fields.kind = v as i32)?,
                7 => expect(wire_type, FIXED64)
                    .and_then(|()| reader.fixed64())
                    .map(|v| fields.start = v)?,
                8 => expect(wire_type, FIXED64)
                    .and_then(|()| reader.fixed64())
                    .map(|v| fields.end = v)?,
                9 => {
                    expect(wire_type, LEN)?;
                    let attribute = reader.length_delimited()?;
                    match check_key_value(attribute, 1) {
                        Ok((key, value)) => {
                            facts.observe(key, value);
                            fields.attributes.push(attribute);
                        }
                        Err(TOO_DEEP) => fields.too_deep.attributes += 1,
                        Err(error) => return Err(error),
                    }
                }
                10 => expect(wire_type, VARINT)
                    .and_then(|()| reader.varint())
                    .map(|v| fields.dropped_attributes = v)?,
                11 => {
                    expect(wire_type, LEN)?;
                    let event = reader.length_delimited()?;
                    match check_event(event) {
                        Ok(()) => fields.events.push(event),
                        Err(TOO_DEEP) => fields.too_deep.events += 1,
                        Err(error) => return Err(error),
                    }
                }
                12 => expect(wire_type, VARINT)
                    .and_then(|()| reader.varint())
                    .map(|v| fields.dropped_events = v)?,
                13 => {
                    expect(wire_type, LEN)?;
                    let link = reader.length_delimited()?;
                    match check_link(link) {
                        Ok(()) => fields.links.push(link),
                        Err(TOO_DEEP) => fields.too_deep.links += 1,
                        Err(error) => return Err(error),
                    }
                }
                14 => expect(wire_type, VARINT)
                    .and_then(|()| reader.varint())
                    .map(|v| fields.dropped_links = v)?,
                15 => {
                    expect(wire_type, LEN)?;
                    let mut status = Reader::new(reader.length_delimited()?);
                    while !status.is_empty() {
                        let (field, wire_type) = status.key()?;
                        match field {
                            2 => expect(wire_type, LEN)
                                .and_then(|()| status.string())
                                .map(|v| fields.status_message = v)?,
                            3 => expect(wire_type, VARINT)
                                .and_then(|()| status.varint())
                                .map(|v| fields.status_code = v as i32)?,
                            _ => status.skip(wire_type)?,
                        }
                    }
                }
                16 => expect(wire_type, FIXED32)
                    .and_then(|()| reader.fixed32())
                    .map(|v| fields.flags = v)?,
                _ => reader.skip(wire_type)?,
            }
        }

        let ids = match validate_span(fields.trace_id, fields.span_id, fields.parent, fields.start, fields.end) {
            Ok(ids) => ids,
            Err(reason) => {
                self.converted.reject(reason);
                return Ok(());
            }
        };
        let safe_name = sanitize_text(fields.name);
        let original_name = matches!(safe_name, std::borrow::Cow::Owned(_)).then_some(fields.name);
        let mut status_code = StatusCode::from_i32(fields.status_code);
        let derived_message = derived_status(&facts, status_code as i32, fields.status_message);
        if let Some(message) = &derived_message {
            status_code = StatusCode::Error;
            fields.status_message = message;
        }
        fields.encode_detail(&mut self.detail, scope, original_name);
        let ValidIds {
            trace_id,
            span_id,
            parent_span_id,
        } = ids;
        let row = RowSpan {
            trace_id: &trace_id,
            span_id,
            parent_span_id,
            start_time_unix_nano: fields.start,
            end_time_unix_nano: fields.end,
            name: &safe_name,
            kind: SpanKind::from_i32(fields.kind),
            status_code,
        };
        if let (Some(metrics), Some(span_metrics)) = (self.converted.metrics.as_mut(), &self.config.span_metrics) {
            metrics.push(
                SpanInput {
                    resource: info.metrics_resource,
                    linkerd: info.linkerd,
                    trace_id: &trace_id.0,
                    span_id: &span_id.0,
                    parent: parent_span_id.as_ref().map(|id| &id.0),
                    name: &safe_name,
                    kind: row.kind as i32,
                    error: status_code == StatusCode::Error,
                    duration_ns: fields.end - fields.start,
                    facts: &facts,
                },
                span_metrics.routes(),
            );
        }
        let day = info.note_day(
            fields.start,
            &mut self.resource_days,
            &mut self.converted.encoded.resources,
        );
        self.operations
            .observe(&self.config.catalog, &info.service, &safe_name, row.kind as i16, day);
        // The route template the metrics name the span by, so a search by that name (Jaeger's Monitor tab)
        // finds it.
        let route = match &self.config.span_metrics {
            Some(span_metrics) => {
                self.route.clear();
                span_metrics
                    .routes()
                    .template_into(&safe_name, &mut self.route)
                    .then_some(self.route.as_str())
            }
            None => None,
        };
        self.blocks.push(info.context(), &row, &self.detail, route);
        self.converted.encoded.span_count += 1;
        self.admit()
    }

    /// Checks what the conversion holds so far against the allowance.
    fn admit(&mut self) -> Result<()> {
        let used = self.blocks.held_bytes()
            + self.detail.capacity()
            + self.converted.encoded.span_count * crate::convert::PER_SPAN_BYTES
            + self.resource_bytes;
        if !self.allowance.admit(used) {
            return Err(OVER_BUDGET);
        }
        Ok(())
    }
}

/// One span's fields, borrowed from the request.
#[derive(Default)]
struct SpanFields<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    parent: &'a [u8],
    trace_state: &'a str,
    name: &'a str,
    kind: i32,
    start: u64,
    end: u64,
    attributes: Vec<&'a [u8]>,
    dropped_attributes: u64,
    events: Vec<&'a [u8]>,
    dropped_events: u64,
    links: Vec<&'a [u8]>,
    dropped_links: u64,
    status_message: &'a str,
    status_code: i32,
    flags: u32,
    /// Attributes, events and links dropped for nesting too deep, added to the dropped counts.
    too_deep: TooDeep,
}

#[derive(Default)]
struct TooDeep {
    attributes: u32,
    events: u32,
    links: u32,
}

impl SpanFields<'_> {
    /// Writes the `SpanDetail` protobuf (field order and defaults as prost writes them).
    fn encode_detail(&self, out: &mut Vec<u8>, scope: &[u8], original_name: Option<&str>) {
        out.clear();
        for attribute in &self.attributes {
            put_len(out, 1, attribute);
        }
        put_count_plus(out, 2, self.dropped_attributes, self.too_deep.attributes);
        for event in &self.events {
            put_len(out, 3, event);
        }
        put_count_plus(out, 4, self.dropped_events, self.too_deep.events);
        for link in &self.links {
            put_len(out, 5, link);
        }
        put_count_plus(out, 6, self.dropped_links, self.too_deep.links);
        if !self.trace_state.is_empty() {
            put_len(out, 7, self.trace_state.as_bytes());
        }
        if self.flags != 0 {
            put_key(out, 8, FIXED32);
            out.put_u32_le(self.flags);
        }
        if !self.status_message.is_empty() {
            put_len(out, 9, self.status_message.as_bytes());
        }
        out.extend_from_slice(scope);
        if let Some(name) = original_name {
            put_len(out, 11, name.as_bytes());
        }
        if self.end != 0 {
            put_key(out, 12, FIXED64);
            out.put_u64_le(self.end);
        }
    }
}

/// A received `uint32` count (OTLP declares them `uint32`; a larger varint is truncated as prost truncates
/// it) plus what tracepost dropped itself (saturating).
fn put_count_plus(out: &mut Vec<u8>, field: u32, count: u64, more: u32) {
    let count = (count as u32).saturating_add(more);
    if count != 0 {
        put_key(out, field, VARINT);
        put_varint(out, u64::from(count));
    }
}

/// The `scope` field (10) of `SpanDetail`, ready to append, or empty when the scope is empty: our `Scope` is
/// OTLP's `InstrumentationScope` (name 1, version 2, attributes 3, dropped count 4) plus the `ScopeSpans`
/// schema URL (5).
fn encode_scope(scopes: &[&[u8]], schema_url: &str) -> Result<Vec<u8>> {
    let (mut name, mut version, mut dropped) = ("", "", 0u64);
    let mut too_deep = 0u32;
    let mut attributes = Vec::new();
    for scope in scopes {
        let mut reader = Reader::new(scope);
        while !reader.is_empty() {
            let (field, wire_type) = reader.key()?;
            match field {
                1 => expect(wire_type, LEN)
                    .and_then(|()| reader.string())
                    .map(|v| name = v)?,
                2 => expect(wire_type, LEN)
                    .and_then(|()| reader.string())
                    .map(|v| version = v)?,
                3 => {
                    expect(wire_type, LEN)?;
                    let attribute = reader.length_delimited()?;
                    match check_key_value(attribute, 1) {
                        Ok(_) => attributes.push(attribute),
                        Err(TOO_DEEP) => too_deep += 1,
                        Err(error) => return Err(error),
                    }
                }
                4 => expect(wire_type, VARINT)
                    .and_then(|()| reader.varint())
                    .map(|v| dropped = v)?,
                _ => reader.skip(wire_type)?,
            }
        }
    }
    let mut scope = Vec::new();
    if !name.is_empty() {
        put_len(&mut scope, 1, name.as_bytes());
    }
    if !version.is_empty() {
        put_len(&mut scope, 2, version.as_bytes());
    }
    for attribute in attributes {
        put_len(&mut scope, 3, attribute);
    }
    put_count_plus(&mut scope, 4, dropped, too_deep);
    if !schema_url.is_empty() {
        put_len(&mut scope, 5, schema_url.as_bytes());
    }
    if scope.is_empty() {
        return Ok(Vec::new());
    }
    let mut field = Vec::with_capacity(scope.len() + 4);
    put_len(&mut field, 10, &scope);
    Ok(field)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::convert::convert_request;

    fn leaf_value() -> impl Strategy<Value = any_value::Value> {
        prop_oneof![
            1 => "[a-z0-9/\\x00é]{0,12}".prop_map(any_value::Value::StringValue),
            // Values the Linkerd rules look at, twice as often as any other kind.
            2 => prop_oneof![
                Just("503"),
                Just("200"),
                Just("inbound"),
                Just("outbound"),
                Just("linkerd-proxy")
            ]
            .prop_map(|text| any_value::Value::StringValue(text.to_owned())),
            1 => any::<bool>().prop_map(any_value::Value::BoolValue),
            1 => any::<i64>().prop_map(any_value::Value::IntValue),
            1 => any::<f64>().prop_map(any_value::Value::DoubleValue),
            1 => prop::collection::vec(any::<u8>(), 0..8).prop_map(any_value::Value::BytesValue),
        ]
    }

    fn value() -> impl Strategy<Value = Option<AnyValue>> {
        let leaf = leaf_value().prop_map(|value| AnyValue { value: Some(value) });
        let nested = leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(|values| AnyValue {
                    value: Some(any_value::Value::ArrayValue(ArrayValue { values }))
                }),
                prop::collection::vec(("[a-z]{1,4}", inner), 0..3).prop_map(|pairs| AnyValue {
                    value: Some(any_value::Value::KvlistValue(KeyValueList {
                        values: pairs
                            .into_iter()
                            .map(|(key, value)| KeyValue {
                                key,
                                value: Some(value),
                                ..Default::default()
                            })
                            .collect(),
                    })),
                }),
            ]
        });
        prop_oneof![1 => Just(None), 1 => Just(Some(AnyValue { value: None })), 8 => nested.prop_map(Some)]
    }

    fn key_value() -> impl Strategy<Value = KeyValue> {
        let key = prop_oneof![
            Just("service.name".to_owned()),
            Just("k8s.cluster.name".to_owned()),
            Just("linkerd.io/proxy-deployment".to_owned()),
            Just("linkerd.io/workload-ns".to_owned()),
            Just("host.name".to_owned()),
            Just("http.response.status_code".to_owned()),
            Just("http.status_code".to_owned()),
            Just("direction".to_owned()),
            Just("server.address".to_owned()),
            "[a-z.]{0,10}",
            "[a-z\\x00]{1,5}",
        ];
        let shallow = (key, value()).prop_map(|(key, value)| KeyValue {
            key,
            value,
            ..Default::default()
        });
        // Now and then an attribute nested around the storage limit, on both sides of it.
        let deep = (MAX_ATTRIBUTE_NESTING - 4..MAX_ATTRIBUTE_NESTING + 6).prop_map(deep_attribute);
        prop_oneof![12 => shallow, 1 => deep]
    }

    /// An OTLP attribute nested exactly `levels` messages deep (as `tracepost_storage::limits` counts), made
    /// of arrays and, for odd levels, one key-value list.
    fn deep_attribute(levels: u32) -> KeyValue {
        let mut remaining = levels.max(4) - 2;
        let mut value = AnyValue {
            value: Some(any_value::Value::StringValue("leaf".into())),
        };
        if remaining % 2 == 1 {
            value = AnyValue {
                value: Some(any_value::Value::KvlistValue(KeyValueList {
                    values: vec![KeyValue {
                        key: "m".into(),
                        value: Some(value),
                        ..Default::default()
                    }],
                })),
            };
            remaining -= 3;
        }
        while remaining > 0 {
            value = AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![value] })),
            };
            remaining -= 2;
        }
        KeyValue {
            key: "deep".into(),
            value: Some(value),
            ..Default::default()
        }
    }

    /// The `detail` of every span in the blocks of binary COPY rows.
    fn details(rows: &[u8]) -> Vec<Vec<u8>> {
        tracepost_storage::block::decode_block_rows(rows)
            .expect("blocks decode")
            .into_iter()
            .flat_map(|block| block.spans)
            .map(|span| span.detail.to_vec())
            .collect()
    }

    /// Whatever a conversion stored, the reader's decoders read.
    fn assert_readable(converted: &Converted) -> std::result::Result<(), TestCaseError> {
        for detail in details(&converted.encoded.rows) {
            prop_assert!(tracepost_storage::model::SpanDetail::decode(detail.as_slice()).is_ok());
        }
        for resource in &converted.encoded.resources {
            prop_assert!(tracepost_storage::model::Resource::decode(resource.body.as_ref()).is_ok());
        }
        Ok(())
    }

    fn id(length: usize) -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            6 => prop::collection::vec(any::<u8>(), length),
            1 => Just(vec![0; length]),
            1 => prop::collection::vec(any::<u8>(), 0..20),
        ]
    }

    fn otlp_span() -> impl Strategy<Value = Span> {
        let ids = (id(16), id(8), prop_oneof![Just(Vec::new()), id(8)]);
        let times = (prop_oneof![Just(0u64), 1u64..u64::MAX / 2], 0u64..1_000_000_000_000);
        let text = ("[a-zA-Z /\\x00]{0,12}", "[a-z=,]{0,8}", 0i32..8, any::<u32>());
        let attributes = prop::collection::vec(key_value(), 0..6);
        let event = (
            any::<u64>(),
            "[a-z ]{0,6}",
            prop::collection::vec(key_value(), 0..3),
            0u32..3,
        )
            .prop_map(
                |(time_unix_nano, name, attributes, dropped_attributes_count)| span::Event {
                    time_unix_nano,
                    name,
                    attributes,
                    dropped_attributes_count,
                },
            );
        let link = (
            id(16),
            id(8),
            "[a-z=]{0,6}",
            prop::collection::vec(key_value(), 0..2),
            any::<u32>(),
        )
            .prop_map(|(trace_id, span_id, trace_state, attributes, flags)| span::Link {
                trace_id,
                span_id,
                trace_state,
                attributes,
                dropped_attributes_count: 1,
                flags,
            });
        let children = (
            prop::collection::vec(event, 0..3),
            prop::collection::vec(link, 0..2),
            0i32..3,
            "[a-z]{0,6}",
        );
        (ids, times, text, attributes, children, (0u32..3, 0u32..3, 0u32..3)).prop_map(
            |(
                (trace_id, span_id, parent_span_id),
                (start, length),
                (name, trace_state, kind, flags),
                attributes,
                (events, links, code, message),
                dropped,
            )| {
                Span {
                    trace_id,
                    span_id,
                    parent_span_id,
                    trace_state,
                    name,
                    kind,
                    start_time_unix_nano: start,
                    // Sometimes before the start, to exercise that rejection.
                    end_time_unix_nano: (start + length).saturating_sub(500_000_000_000),
                    attributes,
                    dropped_attributes_count: dropped.0,
                    events,
                    dropped_events_count: dropped.1,
                    links,
                    dropped_links_count: dropped.2,
                    status: (code != 0 || !message.is_empty()).then_some(Status { message, code }),
                    flags,
                }
            },
        )
    }

    fn request() -> impl Strategy<Value = ExportTraceServiceRequest> {
        let scope = prop::option::of((
            "[a-z.]{0,6}",
            "[0-9.]{0,4}",
            prop::collection::vec(key_value(), 0..2),
            0u32..2,
        ))
        .prop_map(|scope| {
            scope.map(
                |(name, version, attributes, dropped_attributes_count)| InstrumentationScope {
                    name,
                    version,
                    attributes,
                    dropped_attributes_count,
                },
            )
        });
        let scope_spans =
            (scope, prop::collection::vec(otlp_span(), 0..4), "[a-z:/]{0,6}").prop_map(|(scope, spans, schema_url)| {
                ScopeSpans {
                    scope,
                    spans,
                    schema_url,
                }
            });
        let resource = prop::option::of((prop::collection::vec(key_value(), 0..4), 0u32..2)).prop_map(|resource| {
            resource.map(|(attributes, dropped_attributes_count)| Resource {
                attributes,
                dropped_attributes_count,
                entity_refs: Vec::new(),
            })
        });
        let resource_spans = (resource, prop::collection::vec(scope_spans, 0..3), "[a-z:/]{0,6}").prop_map(
            |(resource, scope_spans, schema_url)| ResourceSpans {
                resource,
                scope_spans,
                schema_url,
            },
        );
        prop::collection::vec(resource_spans, 0..3)
            .prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
    }

    fn config() -> ConvertConfig {
        static METRICS: std::sync::OnceLock<std::sync::Arc<crate::SpanMetrics>> = std::sync::OnceLock::new();
        ConvertConfig {
            cluster_name: Some("fallback".into()),
            catalog: Default::default(),
            span_metrics: Some(
                METRICS
                    .get_or_init(|| crate::SpanMetrics::new(Default::default()))
                    .clone(),
            ),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// The fast path writes exactly what the generated-types path writes.
        #[test]
        fn the_fast_path_agrees_with_the_generated_types(request in request()) {
            let bytes = request.encode_to_vec();
            let slow = convert_request(request, &config());
            let fast = convert_protobuf(&bytes, &config()).expect("prost's own encoding decodes");
            prop_assert_eq!(&fast.rejected, &slow.rejected);
            prop_assert_eq!(fast.encoded.span_count, slow.encoded.span_count);
            prop_assert_eq!(&fast.encoded.rows, &slow.encoded.rows);
            let resources = |converted: &Converted| converted.encoded.resources.iter()
                .map(|row| (row.id, row.day, row.service.clone(), row.cluster.clone(), row.body.clone()))
                .collect::<Vec<_>>();
            prop_assert_eq!(resources(&fast), resources(&slow));
            prop_assert_eq!(&fast.encoded.operations, &slow.encoded.operations);
            prop_assert_eq!(&fast.encoded.trace_index, &slow.encoded.trace_index);
            prop_assert_eq!(&fast.metrics, &slow.metrics);
        }

        /// Acknowledged implies readable: every span and resource either path stores decodes on read.
        #[test]
        fn what_ingest_accepts_the_reader_decodes(request in request()) {
            let bytes = request.encode_to_vec();
            let fast = convert_protobuf(&bytes, &config()).expect("prost's own encoding decodes");
            assert_readable(&fast)?;
            assert_readable(&convert_request(request, &config()))?;
        }

        /// Corrupted bodies are errors or agree with prost on what they hold; they never panic.
        #[test]
        fn corrupted_bodies_never_panic(request in request(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4), cut in any::<prop::sample::Index>()) {
            let mut bytes = request.encode_to_vec();
            if bytes.is_empty() {
                return Ok(());
            }
            for (index, byte) in flips {
                let at = index.index(bytes.len());
                bytes[at] = byte;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            let fast = convert_protobuf(&bytes, &config());
            if let (Ok(fast), Ok(decoded)) = (fast, ExportTraceServiceRequest::decode(bytes.as_slice())) {
                let slow = convert_request(decoded, &config());
                prop_assert_eq!(fast.encoded.span_count + fast.rejected_count() as usize,
                    slow.encoded.span_count + slow.rejected_count() as usize);
            }
        }
    }

    #[test]
    fn invalid_utf8_in_an_attribute_value_is_an_error_as_with_prost() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![1; 16],
                        span_id: vec![2; 8],
                        start_time_unix_nano: 1,
                        end_time_unix_nano: 2,
                        attributes: vec![KeyValue {
                            key: "k".into(),
                            value: Some(AnyValue {
                                value: Some(any_value::Value::StringValue("AAAA".into())),
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let mut bytes = request.encode_to_vec();
        let at = bytes
            .windows(4)
            .position(|window| window == b"AAAA")
            .expect("value bytes");
        bytes[at] = 0xff;
        assert!(ExportTraceServiceRequest::decode(bytes.as_slice()).is_err());
        let error = convert_protobuf(&bytes, &config()).expect_err("invalid utf-8");
        assert!(error.to_string().contains("UTF-8"), "{error}");
    }

    #[test]
    fn deeply_nested_values_hit_the_nesting_limit_instead_of_the_stack() {
        // A KeyValue whose value nests 50,000 arrays, encoded by hand from the inside out (prost's encoder
        // would recurse as deep): the bytes are built reversed, then turned around.
        fn push_reversed_len(reversed: &mut Vec<u8>, tag: u8) {
            let mut length = Vec::new();
            put_varint(&mut length, reversed.len() as u64);
            reversed.extend(length.iter().rev());
            reversed.push(tag);
        }
        let mut reversed = vec![0x01, 0x18]; // AnyValue { int_value: 1 }
        for _ in 0..50_000 {
            push_reversed_len(&mut reversed, 0x0a); // ArrayValue.values
            push_reversed_len(&mut reversed, 0x2a); // AnyValue.array_value
        }
        push_reversed_len(&mut reversed, 0x12); // KeyValue.value
        reversed.extend_from_slice(b"peed\x04\x0a"); // KeyValue.key = "deep"
        reversed.reverse();
        assert_eq!(check_key_value(&reversed, 1), Err(TOO_DEEP));
    }

    /// A resource's service name is written into every row of its spans: a request of many tiny spans under
    /// one long name encodes into rows many times its size. The service column is cut to 256 bytes, and the
    /// rows are admitted against the allowance as they grow, so such a request is refused when the budget
    /// says no, and converts when it says yes.
    #[test]
    fn rows_that_would_outgrow_the_allowance_are_refused_while_they_are_written() {
        let span = |index: u32| Span {
            trace_id: vec![1; 16],
            span_id: [index.to_le_bytes(), [1; 4]].concat(),
            start_time_unix_nano: 1,
            end_time_unix_nano: 1,
            ..Default::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue("s".repeat(100_000))),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: (0..5_000).map(span).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let body = request.encode_to_vec();
        let mut asked = 0;
        let mut refuse = |total: usize| {
            asked = asked.max(total);
            false
        };
        let error = convert_protobuf_within(&body, &config(), &mut Allowance::new(body.len() * 2, &mut refuse))
            .expect_err("over the allowance");
        assert_eq!(error, OVER_BUDGET);
        assert!(asked > body.len() * 2, "{asked}");
        let mut grant = |_: usize| true;
        let converted = convert_protobuf_within(&body, &config(), &mut Allowance::new(body.len() * 2, &mut grant))
            .expect("granted");
        assert_eq!(converted.encoded.span_count, 5_000);
        // Each row holds the cut name, not the 100 kB one.
        assert!(
            converted.encoded.rows.len() < 5_000 * 600,
            "{}",
            converted.encoded.rows.len()
        );
    }

    /// The report's request: a span whose attribute nests arrays 50-99 levels (or key-value lists 45-49)
    /// was acknowledged and then made every read of its trace fail. Now the attribute is dropped and
    /// counted, the rest of the span is stored, and what is stored decodes.
    #[test]
    fn a_span_with_an_attribute_nested_too_deep_is_stored_without_it() {
        for levels in [MAX_ATTRIBUTE_NESTING, MAX_ATTRIBUTE_NESTING + 1, 99, 100, 150, 199] {
            let span = Span {
                trace_id: vec![1; 16],
                span_id: vec![2; 8],
                name: "deep".into(),
                start_time_unix_nano: 1,
                end_time_unix_nano: 2,
                attributes: vec![
                    KeyValue {
                        key: "kept".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue("yes".into())),
                        }),
                        ..Default::default()
                    },
                    deep_attribute(levels),
                ],
                events: vec![span::Event {
                    name: "with a deep attribute".into(),
                    attributes: vec![deep_attribute(levels)],
                    ..Default::default()
                }],
                ..Default::default()
            };
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans: vec![span],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            let converted = convert_protobuf(&request.encode_to_vec(), &config()).expect("accepted");
            assert_eq!(converted.encoded.span_count, 1, "{levels}");
            let details = details(&converted.encoded.rows);
            let detail = tracepost_storage::model::SpanDetail::decode(details[0].as_slice()).expect("readable");
            let dropped = u32::from(levels > MAX_ATTRIBUTE_NESTING);
            assert_eq!(detail.attributes.len() as u32, 2 - dropped, "{levels}");
            assert_eq!(detail.attributes[0].as_str(), Some("yes"));
            assert_eq!(detail.dropped_attributes_count, dropped, "{levels}");
            assert_eq!(detail.events.len() as u32, 1 - dropped, "{levels}");
            assert_eq!(detail.dropped_events_count, dropped, "{levels}");
        }
    }

    /// A request of one valid span whose attributes are the given `KeyValue` encodings, byte for byte.
    fn request_with_raw_attribute(attribute: &[u8]) -> Vec<u8> {
        let mut span = Vec::new();
        put_len(&mut span, 1, &[1; 16]);
        put_len(&mut span, 2, &[2; 8]);
        put_key(&mut span, 7, FIXED64);
        span.put_u64_le(1);
        put_key(&mut span, 8, FIXED64);
        span.put_u64_le(2);
        put_len(&mut span, 9, attribute);
        let mut scope_spans = Vec::new();
        put_len(&mut scope_spans, 2, &span);
        let mut resource_spans = Vec::new();
        put_len(&mut resource_spans, 2, &scope_spans);
        let mut request = Vec::new();
        put_len(&mut request, 1, &resource_spans);
        request
    }

    /// What the fast path stores when it accepts `body`, decoded as the reader decodes it.
    fn stored_details(
        body: &[u8],
    ) -> Vec<std::result::Result<tracepost_storage::model::SpanDetail, prost::DecodeError>> {
        let converted = convert_protobuf(body, &config()).expect("accepted");
        details(&converted.encoded.rows)
            .iter()
            .map(|detail| tracepost_storage::model::SpanDetail::decode(detail.as_slice()))
            .collect()
    }

    /// Found by `fuzz/fuzz_targets/otlp_protobuf.rs`: an attribute holding an unknown field whose key varint
    /// is past 32 bits (its field number still fits in 32 bits) was copied into `detail`, which prost refuses
    /// on read ("invalid key value"): acknowledged, then unreadable. prost refuses such a key, so the fast
    /// path does too.
    #[test]
    fn a_field_key_past_32_bits_is_refused_as_prost_refuses_it() {
        let mut attribute = Vec::new();
        put_len(&mut attribute, 1, b"k");
        put_varint(&mut attribute, (u64::from(u32::MAX) + 1) | u64::from(VARINT)); // key: field 2^29, varint
        put_varint(&mut attribute, 1);
        let body = request_with_raw_attribute(&attribute);
        assert!(ExportTraceServiceRequest::decode(body.as_slice()).is_err());
        assert!(
            convert_protobuf(&body, &config()).is_err(),
            "stored: {:?}",
            stored_details(&body)
        );
        // The largest key prost reads is kept as an unknown field, and stays readable.
        let mut attribute = Vec::new();
        put_len(&mut attribute, 1, b"k");
        const MAX_FIELD: u32 = (1 << 29) - 1;
        put_varint(&mut attribute, u64::from(MAX_FIELD << 3)); // varint
        put_varint(&mut attribute, 1);
        let body = request_with_raw_attribute(&attribute);
        assert!(ExportTraceServiceRequest::decode(body.as_slice()).is_ok());
        assert!(stored_details(&body).iter().all(|detail| detail.is_ok()));
    }

    /// Found by the same fuzz target: a ten-byte varint whose last byte carries bits past the 64th (an
    /// attribute's `int_value`, here) was accepted, truncated for the metrics and copied into `detail`, where
    /// prost refuses it ("invalid varint"). prost's overflow check is the fast path's now.
    #[test]
    fn a_varint_past_64_bits_is_refused_as_prost_refuses_it() {
        let attribute_with_int = |last: u8| {
            let mut any = vec![(3 << 3) | VARINT]; // AnyValue.int_value
            any.extend([0xff; 9]);
            any.push(last);
            let mut attribute = Vec::new();
            put_len(&mut attribute, 1, b"k");
            put_len(&mut attribute, 2, &any);
            request_with_raw_attribute(&attribute)
        };
        let overflowing = attribute_with_int(0x02);
        assert!(ExportTraceServiceRequest::decode(overflowing.as_slice()).is_err());
        assert!(
            convert_protobuf(&overflowing, &config()).is_err(),
            "stored: {:?}",
            stored_details(&overflowing)
        );
        // u64::MAX itself (last byte 0x01) is a valid varint.
        let largest = attribute_with_int(0x01);
        assert!(ExportTraceServiceRequest::decode(largest.as_slice()).is_ok());
        assert!(stored_details(&largest).iter().all(|detail| detail.is_ok()));
    }

    /// Groups (proto2's wire types 3 and 4) never occur in OTLP. prost skips an unknown group; the fast path
    /// refuses the request instead of copying groups into storage, where their nesting would count against
    /// prost's recursion limit on read. The error says so.
    #[test]
    fn a_request_with_a_group_is_refused_with_a_reason() {
        let body = [(14 << 3) | 3, (14 << 3) | 4]; // an empty group, field 14, in the request
        assert!(ExportTraceServiceRequest::decode(body.as_slice()).is_ok());
        let error = convert_protobuf(&body, &config()).expect_err("groups are refused");
        assert_eq!(error, GROUPS_UNSUPPORTED);
    }
}
