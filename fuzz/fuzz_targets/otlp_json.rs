//! OTLP/JSON: `json::convert_json` never panics, stores only what the reader decodes, and when serde decodes
//! the whole request at once, decoding it a span at a time stores the same. `json::decode_cost` never
//! panics and counts at least the text twice.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tracepost_collector::convert::convert_request;
use tracepost_collector::json::{convert_json, decode_cost};
use tracepost_fuzz::{assert_readable, assert_same_storage, config};

fuzz_target!(|body: &[u8]| {
    let cost = decode_cost(body);
    assert!(
        cost >= body.len().saturating_mul(2),
        "decode cost {cost} for {} bytes",
        body.len()
    );
    let converted = convert_json(body, &config());
    if let Ok(converted) = &converted {
        assert_readable(converted);
    }
    // What serde decodes whole, decoded a span at a time, is accepted and stored the same. Only for UTF-8
    // bodies: serde skips an unknown field's string without checking its UTF-8, but a span's raw text must
    // be UTF-8, so a body that is not (not JSON, RFC 8259 section 8.1) may be refused whole.
    let utf8 = std::str::from_utf8(body).is_ok();
    if let Some(request) = utf8
        .then(|| serde_json::from_slice::<ExportTraceServiceRequest>(body).ok())
        .flatten()
    {
        match &converted {
            Ok(converted) => assert_same_storage(converted, &convert_request(request, &config())),
            Err(error) => panic!("serde decodes the request whole, convert_json refuses it: {error}"),
        }
    }
});
