#!/usr/bin/env bash
# Query benchmark (issue 10): loads SPANS (default 10,000,000) Linkerd-shaped spans over OTLP/HTTP with
# `tracepost loadgen` into a fresh database, plants PLANT (default 20) traces each with ONE span carrying a
# unique attribute value (`tracepost loadgen --plant order.id=rare-`, spread over the loaded window), then runs
# `tracepost querybench` twice: first on fresh statistics-less partitions (autovacuum off, nothing analyzed),
# then after VACUUM ANALYZE. Prints the ingest rate over the whole load, p50/p99/max per query kind against
# its target, incomplete-flagged answers, and the size on disk per relation family and per span.
#
#   bench/query.sh [SPANS] [REQUESTS]
#
# 10M spans take about 2 minutes to load on 2 cores, plus ~5 minutes of queries. For 100 million spans, see
# bench/scale.sh (the same with SPANS=100000000).
#
# PostgreSQL: a private cluster `querybench` from scripts/pg-cluster.sh started with autovacuum=off (restarted
# if it runs with autovacuum on; nothing else uses it), or TRACEPOST_BENCH_DATABASE_URL (a superuser URL;
# its autovacuum setting is reported, not changed). The machine's own PostgreSQL is never touched.
# The load goes through `tracepost serve`; queries go to a `tracepost query` process started after it, which
# runs no partition maintenance. The collector's maintenance runs at its start (when the partitions are
# still empty) and then every --partition-maintenance-interval, which the load sets to a day, so a load of
# any length (100M spans take longer than the default 10 minutes) leaves the first pass only the statistics
# the load itself made, which the script prints from pg_stat_user_tables.
# TRACEPOST_BENCH_KEEP=1 keeps the loaded database and skips loading when it already holds spans (the first
# pass then is not "never analyzed": see the statistics printed).
set -euo pipefail
cd "$(dirname "$0")/.."

spans=${1:-10000000}
requests=${2:-200}
plant=${TRACEPOST_BENCH_PLANT:-20}
http_port=${TRACEPOST_BENCH_HTTP_PORT:-14318}
query_port=${TRACEPOST_BENCH_QUERY_PORT:-16687}
grpc_port=${TRACEPOST_BENCH_GRPC_PORT:-14317}
tempo_port=${TRACEPOST_BENCH_TEMPO_PORT:-13200}
admin_port=${TRACEPOST_BENCH_ADMIN_PORT:-18888}

cargo build --release --locked --bin tracepost >&2
bin=target/release/tracepost
if [[ -n ${TRACEPOST_BENCH_DATABASE_URL:-} ]]; then
    server=$TRACEPOST_BENCH_DATABASE_URL
else
    server=$(TRACEPOST_PG_SETTINGS="autovacuum=off" scripts/pg-cluster.sh start querybench)
    if [[ $(psql "$server" -qAtc "SHOW autovacuum") != off ]]; then
        scripts/pg-cluster.sh stop querybench
        server=$(TRACEPOST_PG_SETTINGS="autovacuum=off" scripts/pg-cluster.sh start querybench)
    fi
fi
database_url=${server/\/postgres\?/\/tracepost_querybench?}
state=target/querybench
mkdir -p "$state"
sql() { psql "$database_url" -X -q -v ON_ERROR_STOP=1 "$@"; }

loaded=0
if [[ ${TRACEPOST_BENCH_KEEP:-} == 1 ]] && [[ -s $state/load.result && -s $state/planted ]] \
    && psql "$server" -qAtc "SELECT 1 FROM pg_database WHERE datname = 'tracepost_querybench'" | grep -q 1; then
    loaded=$(sql -Atc "SELECT coalesce(sum(span_count), 0) FROM span_blocks")
fi
if [[ $loaded -eq 0 ]]; then
    psql "$server" -qc "DROP DATABASE IF EXISTS tracepost_querybench" -qc "CREATE DATABASE tracepost_querybench"
fi

log=$(mktemp)
pid=
stop_server() {
    if [[ -n $pid ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=
    fi
}
trap 'stop_server; rm -f "$log"' EXIT
ready() {
    (exec 3<>"/dev/tcp/127.0.0.1/$query_port" && printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3 && head -c 12 <&3 | grep -q 200) 2>/dev/null
}
start_server() { # ROLE [FLAG...]
    "$bin" "$@" --database-url "$database_url" --otlp-http-listen "127.0.0.1:$http_port" \
        --otlp-grpc-listen "127.0.0.1:$grpc_port" --query-listen "127.0.0.1:$query_port" \
        --tempo-listen "127.0.0.1:$tempo_port" --admin-listen "127.0.0.1:$admin_port" 2>>"$log" &
    pid=$!
    for _ in $(seq 1 300); do ready && break; sleep 0.1; done
    ready || { cat "$log" >&2; exit 1; }
}

if [[ $loaded -eq 0 ]]; then
    start_server serve --partition-maintenance-interval 1d
    echo "loading $spans spans" >&2
    "$bin" loadgen --protocol http --endpoint "http://127.0.0.1:$http_port" --spans "$spans" --seed 7 \
        --concurrency 16 --quiet | tee "$state/load.out" | grep -v '^RESULT' >&2
    grep '^RESULT' "$state/load.out" >"$state/load.result"
    window=$(sed -E 's/.* start_ns=([0-9]+) end_ns=([0-9]+).*/\1..\2/' "$state/load.result")
    "$bin" loadgen --protocol http --endpoint "http://127.0.0.1:$http_port" --plant order.id=rare- \
        --plant-traces "$plant" --plant-between "$window" --seed 7 >"$state/planted"
    echo "planted $(grep -c '^PLANTED' "$state/planted") traces with one span carrying order.id=rare-<n>" >&2
    # Everything acknowledged is committed; stop the collector (and its partition maintenance) for good.
    stop_server
fi
result=$(cat "$state/load.result")
field() { sed -E "s/.* $1=([^ ]+).*/\1/" <<<"$result"; }
window=$(field start_ns)..$(field end_ns)
# The query window: the load's span starts, and a second for the last traces' later spans (querybench samples
# trace IDs from ten slices of it).
between=$(field start_ns)..$(($(field end_ns) + 1000000000))

statistics() {
    sql -c "SELECT s.relname, n_live_tup, reltuples::bigint AS reltuples, last_analyze, last_autoanalyze,
                   analyze_count, autoanalyze_count, autovacuum_count, vacuum_count
            FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
            WHERE n_live_tup > 0 OR analyze_count + autoanalyze_count > 0 ORDER BY s.relname"
    local analyzed
    analyzed=$(sql -Atc "SELECT count(*) FROM pg_stat_user_tables WHERE analyze_count + autoanalyze_count > 0")
    echo "tables ever analyzed: $analyzed (of $(sql -Atc "SELECT count(*) FROM pg_stat_user_tables"))"
}

sizes() {
    sql -c "WITH tables AS (
                SELECT c.oid, c.reltoastrelid, coalesce(pg_partition_root(c.oid), c.oid)::regclass::text AS root
                FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'm')
            ), sized AS (
                SELECT CASE WHEN root IN ('span_blocks', 'trace_index', 'resources', 'operations') THEN root
                            ELSE 'others' END AS family,
                       pg_relation_size(oid, 'main') + pg_relation_size(oid, 'fsm') + pg_relation_size(oid, 'vm') AS heap,
                       CASE WHEN reltoastrelid <> 0 THEN pg_total_relation_size(reltoastrelid) ELSE 0 END AS toast,
                       pg_indexes_size(oid) AS indexes
                FROM tables
            ), spans AS (SELECT greatest(sum(span_count), 1) AS n FROM span_blocks)
            SELECT coalesce(family, 'all tables') AS family, count(*) AS relations,
                   pg_size_pretty(sum(heap)) AS heap, pg_size_pretty(sum(toast)) AS toast,
                   pg_size_pretty(sum(indexes)) AS indexes, pg_size_pretty(sum(heap + toast + indexes)) AS total,
                   round(sum(heap) / min(n), 1) AS heap_b_span, round(sum(toast) / min(n), 1) AS toast_b_span,
                   round(sum(indexes) / min(n), 1) AS index_b_span,
                   round(sum(heap + toast + indexes) / min(n), 1) AS bytes_per_span
            FROM sized, spans GROUP BY GROUPING SETS ((family), ()) ORDER BY grouping(family), family"
    sql -Atc "SELECT 'database size (everything, catalogs included): ' || pg_size_pretty(pg_database_size(current_database()))
                     || ', ' || round(pg_database_size(current_database()) / greatest(sum(span_count), 1)::numeric, 1)
                     || ' bytes per span' FROM span_blocks"
}

stored=$(sql -Atc "SELECT sum(span_count) FROM span_blocks")
echo
echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ { print $2 }') GiB; PostgreSQL $(sql -Atc 'SHOW server_version'), autovacuum $(sql -Atc 'SHOW autovacuum'), shared_buffers $(sql -Atc 'SHOW shared_buffers')"
echo "== load: $(field spans) spans acknowledged in $(field elapsed_s) s over OTLP/HTTP (loadgen, 16 clients, 1000 spans a request): $(field rate) spans/s over the whole load; $(field failed) failed requests"
echo "== stored: $stored spans in $(sql -Atc "SELECT count(*) FROM span_blocks") blocks, $(sql -Atc "SELECT count(*) FROM trace_index") trace index rows; span starts $window (Unix ns)"
echo
echo "== size on disk after the load"
sizes
echo
echo "== statistics before pass 1 (pg_stat_user_tables)"
statistics
echo
failed=0
start_server query
echo "== pass 1: no ANALYZE since the load (fresh partitions, autovacuum off)"
"$bin" querybench --url "http://127.0.0.1:$query_port" --tempo-url "http://127.0.0.1:$tempo_port" \
    --requests "$requests" --between "$between" --planted "$state/planted" \
    || { status=$?; { grep -iE "error|warn" "$log" || true; } | tail -20 >&2; echo "pass 1 failed ($status)"; failed=1; }
echo
started=$(date +%s.%N)
sql -c "VACUUM ANALYZE"
echo "== VACUUM ANALYZE took $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $started }") s"
echo "== pass 2: after VACUUM ANALYZE"
"$bin" querybench --url "http://127.0.0.1:$query_port" --tempo-url "http://127.0.0.1:$tempo_port" \
    --requests "$requests" --between "$between" --planted "$state/planted" \
    || { status=$?; { grep -iE "error|warn" "$log" || true; } | tail -20 >&2; echo "pass 2 failed ($status)"; failed=1; }
echo
echo "== size on disk after VACUUM ANALYZE"
sizes
exit $failed
