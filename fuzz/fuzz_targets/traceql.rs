//! TraceQL: whatever the text, parsing within the default limits (lexer, parser, checker, regular
//! expressions compiled) never panics, overflows the stack or takes long, and refuses what is over a limit as
//! a limit; what parses plans and evaluates as the Tempo search and tag routes run it, and agrees with itself:
//! the storage filter keeps every span the query matches, the cheap per-span test passes every span the
//! trace-level test matches, and a query within tighter limits parses the same within the default ones.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracepost_fuzz::query::{assert_candidate, services, traces};
use tracepost_query::fuzzing;
use tracepost_query::traceql::{ParseLimits, Query, DEFAULT_MAX_LENGTH};

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    let parsed = Query::parse(&text);
    if text.len() > DEFAULT_MAX_LENGTH {
        assert!(
            parsed.as_ref().is_err_and(|error| error.is_limit_exceeded()),
            "{} bytes accepted",
            text.len()
        );
    }
    let strict = ParseLimits {
        max_length: DEFAULT_MAX_LENGTH,
        max_depth: 1,
    };
    match (Query::parse_with(&text, strict), &parsed) {
        (Ok(tight), Ok(query)) => assert_eq!(&tight, query, "the limits change what parses"),
        (Ok(_), Err(error)) => panic!("parses within tighter limits only: {error}"),
        (Err(error), Ok(_)) => assert!(
            error.is_limit_exceeded(),
            "refused for syntax with tighter limits: {error}"
        ),
        (Err(_), Err(_)) => {}
    }
    let Ok(query) = parsed else {
        return;
    };
    let traces = traces();
    let filter = fuzzing::tempo_span_filter(&query, services(), 0, i64::MAX);
    for trace in traces {
        let matching = query.matching_spans(trace);
        assert_eq!(query.matches_trace(trace), !matching.is_empty());
        for span in matching {
            assert!(
                query.may_match_span(span, trace.resource_of(span)),
                "the per-span test refuses a matching span"
            );
            assert_candidate(&filter, span);
        }
    }
    fuzzing::tempo_search_response(traces, &query, 3);
    fuzzing::tempo_tag_names(traces, &query, None, 5000);
    for tag in [
        "resource.service.name",
        "span.direction",
        ".http.response.status_code",
        "span.odd key",
        "status",
    ] {
        fuzzing::tempo_tag_values(tag, traces, services(), &query, 5000);
    }
});
