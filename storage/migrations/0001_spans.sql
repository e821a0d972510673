-- Span rows: the columns searches filter on, plus one opaque protobuf `detail` (attributes, events, links,
-- scope, trace state, flags, dropped counts). No jsonb, no GIN: the server parses nothing per span.
-- Partitioned by start time in nanoseconds; daily partitions are created ahead of time by the collector role.
CREATE TABLE spans (
    trace_id       bytea    NOT NULL,
    span_id        bigint   NOT NULL,
    parent_span_id bigint,
    start_ns       bigint   NOT NULL,
    duration_ns    bigint   NOT NULL,
    service        text     NOT NULL,
    name           text     NOT NULL,
    kind           smallint NOT NULL,
    status         smallint NOT NULL,
    cluster        text,
    resource_id    bigint   NOT NULL,
    detail         bytea    NOT NULL
) PARTITION BY RANGE (start_ns);

-- Trace lookup by ID.
CREATE INDEX spans_trace_id ON spans USING hash (trace_id);
-- Newest-first search by service (and the services/operations queries of the query API).
CREATE INDEX spans_service_start ON spans (service, start_ns DESC);

-- Spans whose start falls outside every daily partition land here and are moved into a daily partition
-- when one is created for their day; nothing is refused for its timestamp.
CREATE TABLE spans_default PARTITION OF spans DEFAULT;

-- Resources are stored once per (resource, day) instead of once per span: a Linkerd proxy's resource is
-- ~20 attributes and is shared by every span the proxy sends. `day` is days since the Unix epoch of the
-- spans that referenced it, so retention can delete whole days.
CREATE TABLE resources (
    resource_id bigint  NOT NULL,
    day         integer NOT NULL,
    service     text    NOT NULL,
    cluster     text,
    body        bytea   NOT NULL,
    PRIMARY KEY (resource_id, day)
);
