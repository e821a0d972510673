//! The span model shared by the collector and the query side.
//!
//! These are tracepost's own types, not OTLP's: the collector converts OTLP into them at its edge, and the
//! query crate converts them back into Jaeger or OTLP JSON at its edge. They carry everything an OTLP span
//! carries so that nothing is lost on the way back out.
//!
//! The parts of a span that no query filters on (attributes, events, links, scope, trace state, flags, dropped
//! counts) are stored as one opaque `bytea` per span, encoded with protobuf through `prost`'s derive. The tags
//! below are therefore part of the on-disk format: never renumber them, only add new ones.

use std::fmt;

/// A 16-byte trace ID, never all zero once validated.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span ID, never all zero once validated.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// Lower-case hex, 32 characters.
    pub fn to_hex(&self) -> String {
        hex_encode(&self.0)
    }

    /// Parses 1 to 32 hex characters (shorter IDs are left-padded with zeros, as Jaeger does).
    pub fn parse_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 16];
        parse_hex_padded(text, &mut bytes)?;
        Some(Self(bytes))
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl SpanId {
    pub fn to_hex(&self) -> String {
        hex_encode(&self.0)
    }

    pub fn parse_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 8];
        parse_hex_padded(text, &mut bytes)?;
        Some(Self(bytes))
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 8]
    }

    /// The ID as the signed 64-bit integer stored in PostgreSQL (big-endian, so ordering is preserved).
    pub fn to_i64(&self) -> i64 {
        i64::from_be_bytes(self.0)
    }

    pub fn from_i64(value: i64) -> Self {
        Self(value.to_be_bytes())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Lower-case hex of any byte string.
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    out
}

fn parse_hex_padded(text: &str, out: &mut [u8]) -> Option<()> {
    let digits = text.as_bytes();
    if digits.is_empty() || digits.len() > out.len() * 2 {
        return None;
    }
    let mut nibbles = Vec::with_capacity(out.len() * 2);
    nibbles.resize(out.len() * 2 - digits.len(), 0u8);
    for digit in digits {
        nibbles.push(char::from(*digit).to_digit(16)? as u8);
    }
    for (index, pair) in nibbles.chunks_exact(2).enumerate() {
        out[index] = (pair[0] << 4) | pair[1];
    }
    Some(())
}

/// OTLP span kinds, with OTLP's numbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(i16)]
pub enum SpanKind {
    #[default]
    Unspecified = 0,
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

impl SpanKind {
    pub fn from_i32(value: i32) -> Self {
        match value {
            1 => Self::Internal,
            2 => Self::Server,
            3 => Self::Client,
            4 => Self::Producer,
            5 => Self::Consumer,
            _ => Self::Unspecified,
        }
    }

    /// The lower-case name Jaeger uses in its `span.kind` tag; `None` for unspecified.
    pub fn jaeger_name(self) -> Option<&'static str> {
        match self {
            Self::Unspecified => None,
            Self::Internal => Some("internal"),
            Self::Server => Some("server"),
            Self::Client => Some("client"),
            Self::Producer => Some("producer"),
            Self::Consumer => Some("consumer"),
        }
    }
}

/// OTLP status codes, with OTLP's numbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(i16)]
pub enum StatusCode {
    #[default]
    Unset = 0,
    Ok = 1,
    Error = 2,
}

impl StatusCode {
    pub fn from_i32(value: i32) -> Self {
        match value {
            1 => Self::Ok,
            2 => Self::Error,
            _ => Self::Unset,
        }
    }
}

/// An attribute value of any OTLP type.
///
/// The field numbers of `AnyValue`, `KeyValue`, `ArrayValue`, `KeyValueList`, `Event` and `Link` are OTLP's own,
/// so the collector's fast path can copy those sub-messages from a request into storage byte for byte.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(string, tag = "1")]
    Str(String),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
    #[prost(double, tag = "4")]
    Double(f64),
    #[prost(message, tag = "5")]
    Array(ArrayValue),
    #[prost(message, tag = "6")]
    Map(KeyValueList),
    #[prost(bytes, tag = "7")]
    Bytes(Vec<u8>),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ArrayValue {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<AnyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValueList {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

impl KeyValue {
    pub fn new(key: impl Into<String>, value: Value) -> Self {
        Self {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
        }
    }

    pub fn string(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self::new(key, Value::Str(value.into()))
    }

    /// The value, if it is present and non-empty.
    pub fn value(&self) -> Option<&Value> {
        self.value.as_ref().and_then(|any| any.value.as_ref())
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self.value() {
            Some(Value::Str(text)) => Some(text),
            _ => None,
        }
    }
}

/// Finds an attribute by key.
pub fn find_attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a KeyValue> {
    attributes.iter().find(|attribute| attribute.key == key)
}

/// The resource that produced a group of spans. Stored once per (resource, day) in the `resources` table.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
    #[prost(uint32, tag = "2")]
    pub dropped_attributes_count: u32,
    /// The `schema_url` of the OTLP `ResourceSpans`.
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

/// Everything about a span that no query filters on, stored as the span row's `detail` column.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SpanDetail {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
    #[prost(uint32, tag = "2")]
    pub dropped_attributes_count: u32,
    #[prost(message, repeated, tag = "3")]
    pub events: Vec<Event>,
    #[prost(uint32, tag = "4")]
    pub dropped_events_count: u32,
    #[prost(message, repeated, tag = "5")]
    pub links: Vec<Link>,
    #[prost(uint32, tag = "6")]
    pub dropped_links_count: u32,
    #[prost(string, tag = "7")]
    pub trace_state: String,
    #[prost(fixed32, tag = "8")]
    pub flags: u32,
    #[prost(string, tag = "9")]
    pub status_message: String,
    #[prost(message, optional, tag = "10")]
    pub scope: Option<Scope>,
    /// The span name exactly as received, when the `name` column had to be made safe for PostgreSQL.
    #[prost(string, optional, tag = "11")]
    pub original_name: Option<String>,
    /// The end time exactly as received (the row stores a duration).
    #[prost(fixed64, tag = "12")]
    pub end_time_unix_nano: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Scope {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(message, repeated, tag = "3")]
    pub attributes: Vec<KeyValue>,
    #[prost(uint32, tag = "4")]
    pub dropped_attributes_count: u32,
    /// The `schema_url` of the OTLP `ScopeSpans`.
    #[prost(string, tag = "5")]
    pub schema_url: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(fixed64, tag = "1")]
    pub time_unix_nano: u64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "3")]
    pub attributes: Vec<KeyValue>,
    #[prost(uint32, tag = "4")]
    pub dropped_attributes_count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Link {
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    #[prost(string, tag = "3")]
    pub trace_state: String,
    #[prost(message, repeated, tag = "4")]
    pub attributes: Vec<KeyValue>,
    #[prost(uint32, tag = "5")]
    pub dropped_attributes_count: u32,
    #[prost(fixed32, tag = "6")]
    pub flags: u32,
}

/// One span, as the collector hands it to storage and as storage hands it back.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub name: String,
    pub kind: SpanKind,
    pub start_time_unix_nano: u64,
    pub status_code: StatusCode,
    pub detail: SpanDetail,
}

impl Span {
    pub fn end_time_unix_nano(&self) -> u64 {
        self.detail.end_time_unix_nano
    }

    pub fn duration_nanos(&self) -> u64 {
        self.detail.end_time_unix_nano.saturating_sub(self.start_time_unix_nano)
    }

    /// The span name as received (the stored column may have been made safe for PostgreSQL).
    pub fn original_name(&self) -> &str {
        self.detail.original_name.as_deref().unwrap_or(&self.name)
    }
}

/// The service name Jaeger gives a resource without `service.name`.
pub const NO_SERVICE_NAME: &str = "OTLPResourceNoServiceName";

/// A resource as stored: its ID (a stable hash of its encoding), the derived service and cluster names, and
/// the resource itself.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredResource {
    pub id: i64,
    pub service_name: String,
    pub cluster: Option<String>,
    pub resource: Resource,
}

/// A span read back from storage, with the ID of its resource.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSpan {
    pub span: Span,
    pub resource_id: i64,
    pub service_name: String,
    pub cluster: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_parse_short_and_mixed_case_hex() {
        let id = TraceId::parse_hex("A1b2").expect("valid hex");
        assert_eq!(id.to_hex(), "0000000000000000000000000000a1b2");
        assert!(TraceId::parse_hex("").is_none());
        assert!(TraceId::parse_hex("xyz").is_none());
        assert!(TraceId::parse_hex(&"a".repeat(33)).is_none());
    }

    #[test]
    fn span_ids_round_trip_through_i64() {
        let low = SpanId([0x00, 0, 0, 0, 0, 0, 0, 1]);
        let high = SpanId([0xff, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(SpanId::from_i64(high.to_i64()), high);
        assert_eq!(SpanId::from_i64(low.to_i64()), low);
    }
}
