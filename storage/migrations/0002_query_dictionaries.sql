-- The services and operations lists (Jaeger's /api/services, /api/operations; Tempo's tag values): a small
-- dictionary the collector writes to only when it sees an operation for the first time that day, so the
-- lists never scan span rows. `last_seen_day` is days since the Unix epoch; retention deletes stale entries.
CREATE TABLE operations (
    service       text     NOT NULL,
    name          text     NOT NULL,
    kind          smallint NOT NULL,
    last_seen_day integer  NOT NULL,
    PRIMARY KEY (service, name, kind)
);

-- Service dependencies, rolled up from parent/child span pairs in 5-minute buckets by the collector role, so
-- /api/dependencies over a week sums a few thousand rows instead of joining billions of spans.
CREATE TABLE dependency_edges (
    bucket_ns  bigint NOT NULL,
    parent     text   NOT NULL,
    child      text   NOT NULL,
    call_count bigint NOT NULL,
    PRIMARY KEY (bucket_ns, parent, child)
);

-- How far each background roll-up has got.
CREATE TABLE rollup_state (
    name          text   PRIMARY KEY,
    done_until_ns bigint NOT NULL
);
