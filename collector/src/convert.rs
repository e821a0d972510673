//! OTLP → tracepost's span model, validated and encoded as COPY rows in one pass.
//!
//! This is the only place that reads OTLP wire types on the ingest side. Strings are moved out of the decoded
//! request, never cloned; resource-level work (service name, cluster, resource encoding) happens once per
//! `ResourceSpans`, not per span.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1 as otlp_common;
use opentelemetry_proto::tonic::trace::v1 as otlp_trace;
use prost::Message;
use tracepost_storage::block::BlockBuilder;
use tracepost_storage::copy::{sanitize_text, RowContext};
use tracepost_storage::limits::{key_value_exceeds, label_column, retain_within_nesting};
use tracepost_storage::model::{
    self, Resource, Scope, Span, SpanDetail, SpanId, SpanKind, StatusCode, TraceId, NO_SERVICE_NAME,
};
use tracepost_storage::time::day_of;
use tracepost_storage::{EncodedSpans, ResourceRow};

use crate::catalog::{OperationCatalog, RequestOperations};
use crate::normalize::{derived_status, ResourceFacts, ResourceOutcome, Scalar, SpanFacts};
use crate::red::{RequestMetrics, SpanInput, SpanMetrics};

/// Why a span was rejected. Each reason is a metric label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    InvalidTraceId,
    InvalidSpanId,
    InvalidParentSpanId,
    MissingStartTime,
    EndBeforeStart,
    /// An OTLP/JSON span that does not decode (a trace ID that is not hex, a value of the wrong type).
    MalformedSpan,
}

impl RejectReason {
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidTraceId => "invalid_trace_id",
            Self::InvalidSpanId => "invalid_span_id",
            Self::InvalidParentSpanId => "invalid_parent_span_id",
            Self::MissingStartTime => "missing_start_time",
            Self::EndBeforeStart => "end_before_start",
            Self::MalformedSpan => "malformed_span",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::InvalidTraceId => "trace id must be 16 bytes and not all zero",
            Self::InvalidSpanId => "span id must be 8 bytes and not all zero",
            Self::InvalidParentSpanId => "parent span id must be empty or 8 bytes",
            Self::MissingStartTime => "start time must not be zero",
            Self::EndBeforeStart => "end time must not be before start time",
            Self::MalformedSpan => "span is not valid OTLP/JSON (IDs in hex, times as decimal strings or numbers, values nested under about 40 levels)",
        }
    }
}

/// Settings that shape conversion.
#[derive(Clone, Debug, Default)]
pub struct ConvertConfig {
    /// The cluster of spans whose resource has no `k8s.cluster.name`.
    pub cluster_name: Option<String>,
    /// Operations already recorded in the `operations` dictionary.
    pub catalog: Arc<OperationCatalog>,
    /// RED metrics and service graph, when enabled.
    pub span_metrics: Option<Arc<SpanMetrics>>,
}

/// One request, converted.
#[derive(Debug, Default)]
pub struct Converted {
    pub encoded: EncodedSpans,
    /// Catalog keys of `encoded.operations`, forgotten again if the write fails.
    pub operation_keys: Vec<u64>,
    /// Rejected spans by reason, in the order first seen.
    pub rejected: Vec<(RejectReason, u64)>,
    /// The spans reduced for the RED metrics, recorded once they are committed.
    pub metrics: Option<RequestMetrics>,
}

impl Converted {
    pub fn rejected_count(&self) -> u64 {
        self.rejected.iter().map(|(_, count)| count).sum()
    }

    /// The `partial_success.error_message` for this request (empty when nothing was rejected).
    pub fn rejection_message(&self) -> String {
        let parts: Vec<String> = self
            .rejected
            .iter()
            .map(|(reason, count)| format!("{count} span(s) rejected: {}", reason.describe()))
            .collect();
        parts.join("; ")
    }

    pub(crate) fn reject(&mut self, reason: RejectReason) {
        match self.rejected.iter_mut().find(|(seen, _)| *seen == reason) {
            Some((_, count)) => *count += 1,
            None => self.rejected.push((reason, 1)),
        }
    }
}

/// What one span costs a conversion beyond its row bytes, at most: its metrics record, its share of the
/// operation index and of the resource days (a generous bound, checked by [`Allowance`]).
pub(crate) const PER_SPAN_BYTES: usize = 256;

/// What one `ResourceSpans` costs a conversion beyond its attributes' bytes, at most: its metrics node, its
/// resource rows, its normalisation. Charged even for an empty one, so a request of millions of empty
/// `ResourceSpans` is refused by its allowance.
pub(crate) const PER_RESOURCE_BYTES: usize = 256;

/// The memory a conversion may take, grown on demand from the ingest memory budget: conversion checks it as
/// the encoded rows grow, so a request whose rows would outgrow the budget (a small body whose resource
/// repeats into every row, say) is refused instead of allocated.
pub struct Allowance<'a> {
    allowed: usize,
    grow: Option<&'a mut dyn FnMut(usize) -> bool>,
}

impl<'a> Allowance<'a> {
    /// No limit (tests, benchmarks, tools).
    pub fn unlimited() -> Self {
        Self {
            allowed: usize::MAX,
            grow: None,
        }
    }

    /// `allowed` bytes already reserved; `grow(total)` reserves up to `total` or says it cannot.
    pub fn new(allowed: usize, grow: &'a mut dyn FnMut(usize) -> bool) -> Self {
        Self {
            allowed,
            grow: Some(grow),
        }
    }

    /// Whether `used` bytes fit, growing the reservation by half again when they do not.
    pub(crate) fn admit(&mut self, used: usize) -> bool {
        if used <= self.allowed {
            return true;
        }
        let Some(grow) = self.grow.as_mut() else { return true };
        let wanted = used.max(self.allowed.saturating_add(self.allowed / 2));
        if grow(wanted) {
            self.allowed = wanted;
            true
        } else {
            false
        }
    }
}

/// A request whose conversion would take more memory than the ingest budget gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the request's spans encode into more memory than the ingest budget allows")]
pub struct OverBudget;

/// Converts and encodes a decoded request, consuming it.
pub fn convert_request(request: ExportTraceServiceRequest, config: &ConvertConfig) -> Converted {
    // Without a limit the conversion cannot be over it.
    convert_request_within(request, config, &mut Allowance::unlimited()).unwrap_or_default()
}

/// [`convert_request`] within an [`Allowance`].
pub fn convert_request_within(
    request: ExportTraceServiceRequest,
    config: &ConvertConfig,
    allowance: &mut Allowance<'_>,
) -> Result<Converted, OverBudget> {
    let mut converted = Converted {
        metrics: config.span_metrics.as_deref().map(|metrics| {
            let spans = request
                .resource_spans
                .iter()
                .flat_map(|resource| &resource.scope_spans)
                .map(|scope| scope.spans.len())
                .sum();
            RequestMetrics::new(metrics, spans)
        }),
        ..Converted::default()
    };
    let mut blocks = BlockBuilder::new();
    let mut route = String::new();
    let mut resource_days = HashSet::new();
    let mut operations = RequestOperations::default();
    let mut resource_bytes = 0usize;
    for resource_spans in request.resource_spans {
        let otlp_resource = resource_spans.resource.unwrap_or_default();
        resource_bytes += PER_RESOURCE_BYTES + otlp_resource.encoded_len();
        if !allowance.admit(blocks.held_bytes() + converted.encoded.span_count * PER_SPAN_BYTES + resource_bytes) {
            return Err(OverBudget);
        }
        let mut attributes = convert_attributes(otlp_resource.attributes);
        let too_deep = retain_within_nesting(&mut attributes);
        let mut resource = Resource {
            attributes,
            dropped_attributes_count: otlp_resource.dropped_attributes_count.saturating_add(too_deep),
            schema_url: resource_spans.schema_url,
        };
        let mut facts = ResourceFacts::default();
        for attribute in &resource.attributes {
            facts.observe(&attribute.key, scalar(attribute.value.as_ref()));
        }
        let outcome = facts.finish();
        if outcome.replaces_service {
            let service = outcome.service.clone().unwrap_or_default();
            for attribute in resource.attributes.iter_mut().filter(|kv| kv.key == "service.name") {
                attribute.value = Some(string_value(service.clone()));
            }
        }
        for (key, value) in &outcome.additions {
            resource.attributes.push(model::KeyValue {
                key: (*key).to_owned(),
                value: Some(string_value(value.clone())),
            });
        }
        let info = ResourceInfo::new(
            &outcome,
            Bytes::from(resource.encode_to_vec()),
            config,
            converted.metrics.as_mut(),
        );
        for scope_spans in resource_spans.scope_spans {
            let scope = convert_scope(scope_spans.scope, scope_spans.schema_url);
            for otlp_span in scope_spans.spans {
                let mut span = match convert_span(otlp_span, scope.as_ref()) {
                    Ok(span) => span,
                    Err(reason) => {
                        converted.reject(reason);
                        continue;
                    }
                };
                let mut facts = SpanFacts::default();
                for attribute in &span.detail.attributes {
                    facts.observe(&attribute.key, scalar(attribute.value.as_ref()));
                }
                if let Some(message) = derived_status(&facts, span.status_code as i32, &span.detail.status_message) {
                    span.status_code = StatusCode::Error;
                    span.detail.status_message = message;
                }
                if let (Some(metrics), Some(span_metrics)) = (converted.metrics.as_mut(), &config.span_metrics) {
                    metrics.push(
                        SpanInput {
                            resource: info.metrics_resource,
                            linkerd: info.linkerd,
                            trace_id: &span.trace_id.0,
                            span_id: &span.span_id.0,
                            parent: span.parent_span_id.as_ref().map(|id| &id.0),
                            name: &span.name,
                            kind: span.kind as i32,
                            error: span.status_code == StatusCode::Error,
                            duration_ns: span.end_time_unix_nano() - span.start_time_unix_nano,
                            facts: &facts,
                        },
                        span_metrics.routes(),
                    );
                }
                let day = info.note_day(
                    span.start_time_unix_nano,
                    &mut resource_days,
                    &mut converted.encoded.resources,
                );
                operations.observe(&config.catalog, &info.service, &span.name, span.kind as i16, day);
                let route = config
                    .span_metrics
                    .as_ref()
                    .and_then(|span_metrics| {
                        route.clear();
                        span_metrics
                            .routes()
                            .template_into(&span.name, &mut route)
                            .then_some(())
                    })
                    .map(|()| route.as_str());
                blocks.push_span(info.context(), &span, route);
                converted.encoded.span_count += 1;
                if !allowance
                    .admit(blocks.held_bytes() + converted.encoded.span_count * PER_SPAN_BYTES + resource_bytes)
                {
                    return Err(OverBudget);
                }
            }
        }
    }
    (converted.encoded.operations, converted.operation_keys) = operations.finish(&config.catalog);
    (converted.encoded.rows, converted.encoded.trace_index) = blocks.finish(&converted.encoded.resources);
    Ok(converted)
}

/// What normalisation reads of an attribute value.
fn scalar(value: Option<&model::AnyValue>) -> Scalar<'_> {
    match value.and_then(|value| value.value.as_ref()) {
        Some(model::Value::Str(text)) => Scalar::Str(text),
        Some(model::Value::Int(number)) => Scalar::Int(*number),
        _ => Scalar::Other,
    }
}

fn string_value(text: String) -> model::AnyValue {
    model::AnyValue {
        value: Some(model::Value::Str(text)),
    }
}

/// Service name, cluster and ID of a resource, derived once per `ResourceSpans`.
#[derive(Clone, Debug)]
pub(crate) struct ResourceInfo {
    pub(crate) service: String,
    cluster: Option<String>,
    id: i64,
    body: Bytes,
    /// Whether the resource is a Linkerd proxy's.
    pub(crate) linkerd: bool,
    /// The resource's index in the request's metrics.
    pub(crate) metrics_resource: u32,
}

impl ResourceInfo {
    /// `outcome` is what normalisation made of the resource's attributes; `body` is the protobuf of its
    /// [`Resource`] as stored.
    pub(crate) fn new(
        outcome: &ResourceOutcome,
        body: Bytes,
        config: &ConvertConfig,
        metrics: Option<&mut RequestMetrics>,
    ) -> Self {
        let service = match outcome.service.as_deref() {
            Some(name) if !name.is_empty() => label_column(name).into_owned(),
            _ => NO_SERVICE_NAME.to_owned(),
        };
        let cluster = outcome
            .cluster
            .as_deref()
            .map(|name| label_column(name).into_owned())
            .or_else(|| config.cluster_name.clone());
        let id = resource_id_of(&body);
        let metrics_resource = metrics.map_or(0, |metrics| {
            metrics.resource(&service, cluster.as_deref(), outcome.namespace.as_deref())
        });
        Self {
            service,
            cluster,
            id,
            body,
            linkerd: outcome.linkerd,
            metrics_resource,
        }
    }

    pub(crate) fn context(&self) -> RowContext<'_> {
        RowContext {
            service: &self.service,
            cluster: self.cluster.as_deref(),
            resource_id: self.id,
        }
    }

    /// Records that a span starting at `start_time_unix_nano` references this resource (one resource row per
    /// (resource, day) a request touches) and returns that day.
    pub(crate) fn note_day(
        &self,
        start_time_unix_nano: u64,
        seen: &mut HashSet<(i64, i32)>,
        rows: &mut Vec<ResourceRow>,
    ) -> i32 {
        let day = day_of(i64::try_from(start_time_unix_nano).unwrap_or(i64::MAX));
        if seen.insert((self.id, day)) {
            rows.push(ResourceRow {
                id: self.id,
                day,
                service: self.service.clone(),
                cluster: self.cluster.clone(),
                body: self.body.clone(),
            });
        }
        day
    }
}

/// The validated identity of a span, shared by the generated-types path and the wire fast path.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ValidIds {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    pub(crate) parent_span_id: Option<SpanId>,
}

/// Checks IDs and times: a trace ID is 16 bytes and not all zero, a span ID 8 bytes and not all zero, a
/// parent span ID empty or 8 bytes (all zero means none), start time not zero and end not before start.
pub(crate) fn validate_span(
    trace_id: &[u8],
    span_id: &[u8],
    parent_span_id: &[u8],
    start_time_unix_nano: u64,
    end_time_unix_nano: u64,
) -> Result<ValidIds, RejectReason> {
    let trace_id = <[u8; 16]>::try_from(trace_id)
        .map(TraceId)
        .ok()
        .filter(|id| !id.is_zero())
        .ok_or(RejectReason::InvalidTraceId)?;
    let span_id = <[u8; 8]>::try_from(span_id)
        .map(SpanId)
        .ok()
        .filter(|id| !id.is_zero())
        .ok_or(RejectReason::InvalidSpanId)?;
    let parent_span_id = match <[u8; 8]>::try_from(parent_span_id) {
        Ok(bytes) => Some(SpanId(bytes)).filter(|id| !id.is_zero()),
        Err(_) if parent_span_id.is_empty() => None,
        Err(_) => return Err(RejectReason::InvalidParentSpanId),
    };
    if start_time_unix_nano == 0 {
        return Err(RejectReason::MissingStartTime);
    }
    if end_time_unix_nano < start_time_unix_nano {
        return Err(RejectReason::EndBeforeStart);
    }
    Ok(ValidIds {
        trace_id,
        span_id,
        parent_span_id,
    })
}

/// A stable 64-bit ID for a resource: FNV-1a of its protobuf encoding.
fn resource_id_of(body: &[u8]) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in body {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}

fn convert_scope(scope: Option<otlp_common::InstrumentationScope>, schema_url: String) -> Option<Scope> {
    let scope = scope.unwrap_or_default();
    if scope.name.is_empty()
        && scope.version.is_empty()
        && scope.attributes.is_empty()
        && scope.dropped_attributes_count == 0
        && schema_url.is_empty()
    {
        return None;
    }
    let mut attributes = convert_attributes(scope.attributes);
    let too_deep = retain_within_nesting(&mut attributes);
    Some(Scope {
        name: scope.name,
        version: scope.version,
        attributes,
        dropped_attributes_count: scope.dropped_attributes_count.saturating_add(too_deep),
        schema_url,
    })
}

fn convert_span(span: otlp_trace::Span, scope: Option<&Scope>) -> Result<Span, RejectReason> {
    let ValidIds {
        trace_id,
        span_id,
        parent_span_id,
    } = validate_span(
        &span.trace_id,
        &span.span_id,
        &span.parent_span_id,
        span.start_time_unix_nano,
        span.end_time_unix_nano,
    )?;
    let (name, original_name) = match sanitize_text(&span.name) {
        std::borrow::Cow::Borrowed(_) => (span.name, None),
        std::borrow::Cow::Owned(safe) => (safe, Some(span.name)),
    };
    let status = span.status.unwrap_or_default();
    // Attributes nested past the storage limit are dropped, and so are events and links holding one; each
    // is counted in its dropped count (`tracepost_storage::limits`).
    let mut attributes = convert_attributes(span.attributes);
    let too_deep_attributes = retain_within_nesting(&mut attributes);
    let event_count = span.events.len();
    let events: Vec<model::Event> = span
        .events
        .into_iter()
        .map(convert_event)
        .filter(|event| !event.attributes.iter().any(key_value_exceeds))
        .collect();
    let link_count = span.links.len();
    let links: Vec<model::Link> = span
        .links
        .into_iter()
        .map(convert_link)
        .filter(|link| !link.attributes.iter().any(key_value_exceeds))
        .collect();
    Ok(Span {
        trace_id,
        span_id,
        parent_span_id,
        name,
        kind: SpanKind::from_i32(span.kind),
        start_time_unix_nano: span.start_time_unix_nano,
        status_code: StatusCode::from_i32(status.code),
        detail: SpanDetail {
            dropped_attributes_count: span.dropped_attributes_count.saturating_add(too_deep_attributes),
            attributes,
            dropped_events_count: span
                .dropped_events_count
                .saturating_add((event_count - events.len()) as u32),
            events,
            dropped_links_count: span
                .dropped_links_count
                .saturating_add((link_count - links.len()) as u32),
            links,
            trace_state: span.trace_state,
            flags: span.flags,
            status_message: status.message,
            scope: scope.cloned(),
            original_name,
            end_time_unix_nano: span.end_time_unix_nano,
        },
    })
}

fn convert_event(event: otlp_trace::span::Event) -> model::Event {
    model::Event {
        time_unix_nano: event.time_unix_nano,
        name: event.name,
        attributes: convert_attributes(event.attributes),
        dropped_attributes_count: event.dropped_attributes_count,
    }
}

fn convert_link(link: otlp_trace::span::Link) -> model::Link {
    model::Link {
        trace_id: link.trace_id,
        span_id: link.span_id,
        trace_state: link.trace_state,
        attributes: convert_attributes(link.attributes),
        dropped_attributes_count: link.dropped_attributes_count,
        flags: link.flags,
    }
}

fn convert_attributes(attributes: Vec<otlp_common::KeyValue>) -> Vec<model::KeyValue> {
    attributes
        .into_iter()
        .map(|attribute| model::KeyValue {
            key: attribute.key,
            value: attribute.value.map(convert_value),
        })
        .collect()
}

fn convert_value(value: otlp_common::AnyValue) -> model::AnyValue {
    use otlp_common::any_value::Value as Otlp;
    use tracepost_storage::model::Value;
    let value = value.value.and_then(|value| match value {
        Otlp::StringValue(text) => Some(Value::Str(text)),
        Otlp::BoolValue(flag) => Some(Value::Bool(flag)),
        Otlp::IntValue(number) => Some(Value::Int(number)),
        Otlp::DoubleValue(number) => Some(Value::Double(number)),
        Otlp::BytesValue(bytes) => Some(Value::Bytes(bytes)),
        Otlp::ArrayValue(array) => Some(Value::Array(model::ArrayValue {
            values: array.values.into_iter().map(convert_value).collect(),
        })),
        Otlp::KvlistValue(list) => Some(Value::Map(model::KeyValueList {
            values: convert_attributes(list.values),
        })),
        // A string-table index only means something inside an OTLP profile, which has the table; a span
        // carrying one has no table to resolve it against, so it is kept as an empty value.
        Otlp::StringValueStrindex(_) => None,
    });
    model::AnyValue { value }
}
