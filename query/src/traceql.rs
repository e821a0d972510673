//! The TraceQL subset tracepost's Tempo search understands.
