-- Newest-first search by service and operation. Span names are raw paths for Linkerd proxies, so an operation
-- is rare among its service's spans: walking (service, start_ns) and filtering on the name read far too many
-- rows (query benchmark: p99 1.4 s at 10M spans), and a third btree on spans, (service, name, start_ns),
-- brought ingest below the plain-COPY target (0.87x). Instead, the collector writes one narrow row per
-- (trace, operation) per request, keyed by a 64-bit hash of service and span name, partitioned like spans,
-- with the newest start and the longest duration among those spans (so `minDuration` narrows candidates).
CREATE TABLE operation_index (
    operation_key   bigint NOT NULL,
    start_ns        bigint NOT NULL,
    max_duration_ns bigint NOT NULL,
    trace_id        bytea  NOT NULL
) PARTITION BY RANGE (start_ns);
CREATE INDEX operation_index_key_start ON operation_index (operation_key, start_ns DESC);
CREATE TABLE operation_index_default PARTITION OF operation_index DEFAULT;
