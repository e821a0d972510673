//! tracepost
