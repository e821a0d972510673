//! OTLP/protobuf: the collector's fast path (`wire::convert_protobuf`) never panics, stores only what the
//! reader decodes, and agrees with prost's generated types (`convert::convert_request`) whenever prost
//! accepts the body too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tracepost_collector::convert::convert_request;
use tracepost_collector::wire::{convert_protobuf, GROUPS_UNSUPPORTED};
use tracepost_fuzz::{assert_readable, assert_same_storage, config};

fuzz_target!(|body: &[u8]| {
    let fast = convert_protobuf(body, &config());
    if let Ok(fast) = &fast {
        assert_readable(fast);
    }
    // The fast path may accept what prost refuses (attributes nested past prost's recursion limit are
    // dropped, not fatal; `entity_refs` are skipped unread). It refuses what prost accepts only for protobuf
    // groups, which OTLP never holds.
    if let Ok(request) = ExportTraceServiceRequest::decode(body) {
        let slow = convert_request(request, &config());
        match &fast {
            Ok(fast) => assert_same_storage(fast, &slow),
            Err(error) if *error == GROUPS_UNSUPPORTED => {}
            Err(error) => panic!("prost accepts what the fast path refuses ({error})"),
        }
    }
});
