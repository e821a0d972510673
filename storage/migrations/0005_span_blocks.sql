-- Span blocks (storage/src/block.rs): a request's spans grouped by service, cluster and day into blocks of
-- at most 1024 spans, one row each. `spans` is a protobuf SpanBlock that PostgreSQL compresses itself (TOAST,
-- lz4 where the server has it) and SQL can read (`tracepost_block_spans`, `tracepost_spans`); the other
-- columns are what searches filter on before reading it: the block's time range, service, cluster,
-- duration range and a bloom filter of its span names and attribute values (never compressed).
-- Partitioned by the block's earliest span start; a block never spans two days.
CREATE TABLE span_blocks (
    block_id        bigint  NOT NULL,
    start_ns        bigint  NOT NULL,
    last_start_ns   bigint  NOT NULL,
    service         text    NOT NULL,
    cluster         text,
    span_count      integer NOT NULL,
    min_duration_ns bigint  NOT NULL,
    max_duration_ns bigint  NOT NULL,
    bloom           bytea   NOT NULL,
    spans           bytea   NOT NULL
) PARTITION BY RANGE (start_ns);
ALTER TABLE span_blocks ALTER COLUMN bloom SET STORAGE PLAIN;
DO $$
BEGIN
    ALTER TABLE span_blocks ALTER COLUMN spans SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 is not available on this server: span blocks are compressed with pglz';
END
$$;
-- Newest-first search by service, and across services.
CREATE INDEX span_blocks_service_last_start ON span_blocks (service, last_start_ns DESC, block_id DESC);
CREATE INDEX span_blocks_last_start ON span_blocks (last_start_ns DESC, block_id DESC);
-- A block by its ID (trace lookups).
CREATE INDEX span_blocks_block_id ON span_blocks (block_id);
CREATE TABLE span_blocks_default PARTITION OF span_blocks DEFAULT;

-- One row per (trace, block): the trace's earliest span start in the block (the partition key, in the same
-- day as the block), the block and how many of the trace's spans it holds. Trace by ID reads these first.
CREATE TABLE trace_index (
    trace_id   uuid    NOT NULL,
    start_ns   bigint  NOT NULL,
    block_id   bigint  NOT NULL,
    span_count integer NOT NULL
) PARTITION BY RANGE (start_ns);
CREATE INDEX trace_index_trace_id ON trace_index USING hash (trace_id);
CREATE TABLE trace_index_default PARTITION OF trace_index DEFAULT;

-- The per-span tables of earlier versions (`spans`, `operation_index`) are no longer written. Their rows stay
-- readable (trace by ID and search read them beside the blocks) until retention drops their partitions.
