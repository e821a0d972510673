//! The Jaeger and Tempo request parameters: an input is `[SEGMENT?]QUERY`, the query string decoded as axum
//! decodes it (`serde_urlencoded`, so `+` and `%XX` escapes and split pairs as any client sends them) and the
//! segment standing for a path's trace ID or tag name. Every parameter parser (Go integers, booleans,
//! durations and RFC 3339 times, the `tags` forms, trace IDs) runs on the segment and on every name and value,
//! and each search route's whole parser (Jaeger v1 and api_v3, Tempo search, trace-by-ID and tag requests) on
//! the pairs. None may panic, and where two parsers should agree they do: durations as Go parses them,
//! what is written back (Go's duration and RFC 3339 forms, logfmt and JSON tags, both trace ID forms) parses
//! to the same, and what a search accepts is within its caps and selects every span its query matches.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use tracepost_fuzz::go;
use tracepost_fuzz::query::{assert_candidate, services, traces};
use tracepost_query::fuzzing;
use tracepost_query::jaeger::jaeger_trace_id;
use tracepost_storage::model::TraceId;
use tracepost_storage::StoredTrace;

/// `QueryLimits::default().max_traces_per_search` and `max_spans_per_span_set`.
const MAX_TRACES: usize = 1500;
const MAX_SPANS_PER_SPAN_SET: usize = 100;
/// A fixed "now" (2025-08-01T09:00:00Z), so that one input always gives the same result.
const NOW_NS: i64 = 1_754_038_800_000_000_000;

/// logfmt as Jaeger's `tags` parser reads it: every value quoted, `"` and `\` escaped; a leading space keeps
/// a first key starting with `{` from reading as JSON.
fn logfmt(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| format!(" {key}=\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect()
}

fn scalars(text: &str) {
    if let Ok(number) = fuzzing::parse_int(text) {
        assert_eq!(fuzzing::parse_int(&number.to_string()), Ok(number));
    }
    let _ = fuzzing::parse_bool(text);

    let duration = fuzzing::parse_go_duration(text);
    assert_eq!(
        duration.as_ref().ok(),
        go::parse_duration(text).as_ref(),
        "{text:?} parses unlike Go's time.ParseDuration"
    );
    if let Ok(nanos) = duration {
        let written = go::format_duration(nanos);
        assert_eq!(fuzzing::parse_go_duration(&written), Ok(nanos), "{written}");
    }

    if let Ok(nanos) = fuzzing::parse_rfc3339(text) {
        if let Some(written) = go::format_rfc3339(nanos) {
            assert_eq!(fuzzing::parse_rfc3339(&written), Ok(nanos), "{written}");
        }
    }

    if let Ok(tags) = fuzzing::jaeger_tags(text) {
        let again = if text.starts_with('{') {
            let object: BTreeMap<&str, &str> = tags.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
            fuzzing::jaeger_tags(&serde_json::to_string(&object).expect("serializes"))
        } else {
            fuzzing::jaeger_tags(&logfmt(&tags))
        };
        assert_eq!(again, Ok(tags), "tags written back parse differently");
    }
}

fn trace_ids(segment: &str) {
    let jaeger = fuzzing::jaeger_trace_id(segment);
    let tempo = fuzzing::tempo_trace_id_segment(segment);
    assert_eq!(
        jaeger.as_ref().ok(),
        tempo.as_ref(),
        "the Jaeger and Tempo routes disagree on {segment:?}"
    );
    let Some(id) = tempo else {
        return;
    };
    assert_eq!(id.to_hex(), format!("{:0>32}", segment.trim().to_ascii_lowercase()));
    assert_eq!(TraceId::parse_hex(&jaeger_trace_id(&id)), Some(id));
    let trace = StoredTrace {
        trace_id: id,
        spans: Vec::new(),
        resources: Default::default(),
        truncated: false,
    };
    assert_eq!(
        fuzzing::tempo_trace_id_segment(&fuzzing::tempo_trace_id(&trace)),
        Some(id)
    );
}

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    let (segment, query) = text.split_once('?').unwrap_or(("", &text));
    let Ok(pairs) = serde_urlencoded::from_str::<Vec<(String, String)>>(query) else {
        return;
    };

    scalars(segment);
    trace_ids(segment);
    for (name, value) in &pairs {
        scalars(name);
        scalars(value);
        if name == "traceID" {
            trace_ids(value);
        }
    }

    for search in [
        fuzzing::jaeger_v1_search(pairs.clone(), NOW_NS),
        fuzzing::jaeger_v3_search(pairs.clone()),
    ] {
        if let Ok((filter, _tags, limit)) = search {
            assert!((1..=MAX_TRACES).contains(&limit), "limit {limit}");
            assert!(filter.start_min_ns <= filter.start_max_ns, "{filter:?}");
            assert!(filter.min_duration_ns.is_none_or(|min| min > 0), "{filter:?}");
            assert!(filter.max_duration_ns.is_none_or(|max| max > 0), "{filter:?}");
            assert!(filter.services.as_ref().is_none_or(|services| services.len() == 1));
        }
    }
    let _ = fuzzing::jaeger_trace_range(&pairs);

    if let Ok((query, filter, limit, spans_per_span_set)) = fuzzing::tempo_search(pairs.clone(), NOW_NS, services()) {
        assert!((1..=MAX_TRACES).contains(&limit), "limit {limit}");
        assert!(
            (1..=MAX_SPANS_PER_SPAN_SET).contains(&spans_per_span_set),
            "spss {spans_per_span_set}"
        );
        assert!(filter.start_min_ns <= filter.start_max_ns, "{filter:?}");
        // The time window aside (the sample's spans are not in it), the filter keeps every matching span.
        let unbounded = fuzzing::tempo_span_filter(&query, services(), 0, i64::MAX);
        for trace in traces() {
            for span in query.matching_spans(trace) {
                assert_candidate(&unbounded, span);
            }
        }
        fuzzing::tempo_search_response(traces(), &query, spans_per_span_set);
    }
    let _ = fuzzing::tempo_trace_range(pairs.clone());
    if let Ok((query, _window, limit)) = fuzzing::tempo_tag_request(pairs.clone()) {
        assert!(limit > 0);
        let scope = pairs
            .iter()
            .find(|(name, _)| name == "scope")
            .map(|(_, value)| value.trim());
        fuzzing::tempo_tag_names(traces(), &query, scope.filter(|scope| !scope.is_empty()), limit);
        fuzzing::tempo_tag_values(segment, traces(), services(), &query, limit);
    }
});
