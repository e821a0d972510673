#!/usr/bin/env bash
# Query benchmark: loads SPANS (default 10,000,000) Linkerd-shaped spans with `tracepost loadgen`, then measures
# p50/p99 latency of trace by ID, services, operations, search by service, search by service + operation +
# duration, and search by one attribute, with `tracepost querybench`.
#
#   bench/query.sh [SPANS] [REQUESTS]
#
# PostgreSQL: TRACEPOST_BENCH_DATABASE_URL (a superuser URL) or a private cluster from scripts/pg-cluster.sh.
# TRACEPOST_BENCH_KEEP=1 keeps the loaded database and skips loading when it already holds spans.
set -euo pipefail
cd "$(dirname "$0")/.."

spans=${1:-10000000}
requests=${2:-200}
http_port=${TRACEPOST_BENCH_HTTP_PORT:-14318}
query_port=${TRACEPOST_BENCH_QUERY_PORT:-16687}
grpc_port=${TRACEPOST_BENCH_GRPC_PORT:-14317}
tempo_port=${TRACEPOST_BENCH_TEMPO_PORT:-13200}

cargo build --release --locked --bin tracepost >&2
bin=target/release/tracepost
server=${TRACEPOST_BENCH_DATABASE_URL:-$(scripts/pg-cluster.sh start bench)}
database_url=${server/\/postgres\?/\/tracepost_querybench?}
ready() {
    (exec 3<>"/dev/tcp/127.0.0.1/$query_port" && printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3 && head -c 12 <&3 | grep -q 200) 2>/dev/null
}

loaded=0
if [[ ${TRACEPOST_BENCH_KEEP:-} == 1 ]] && psql "$server" -qAtc "SELECT 1 FROM pg_database WHERE datname = 'tracepost_querybench'" | grep -q 1; then
    loaded=$(psql "$database_url" -qAtc "SELECT count(*) FROM spans")
fi
if [[ $loaded -eq 0 ]]; then
    psql "$server" -qc "DROP DATABASE IF EXISTS tracepost_querybench" -qc "CREATE DATABASE tracepost_querybench"
fi

log=$(mktemp)
"$bin" serve --database-url "$database_url" --otlp-http-listen "127.0.0.1:$http_port" \
    --otlp-grpc-listen "127.0.0.1:$grpc_port" --query-listen "127.0.0.1:$query_port" \
    --tempo-listen "127.0.0.1:$tempo_port" 2>"$log" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 200); do ready && break; sleep 0.1; done
ready || { cat "$log" >&2; exit 1; }

if [[ $loaded -eq 0 ]]; then
    echo "loading $spans spans" >&2
    "$bin" loadgen --protocol http --endpoint "http://127.0.0.1:$http_port" --spans "$spans" --seed 7 \
        --concurrency 16 --quiet | grep -v '^RESULT' >&2
    psql "$database_url" -qc "VACUUM ANALYZE" >&2
fi
echo "stored spans: $(psql "$database_url" -qAtc "SELECT count(*) FROM spans"), database size: $(psql "$database_url" -qAtc "SELECT pg_size_pretty(pg_database_size(current_database()))")"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ { print $2 }') GiB, PostgreSQL $(psql "$server" -qAtc 'SHOW server_version')"
"$bin" querybench --url "http://127.0.0.1:$query_port" --requests "$requests" || { grep -iE "error|warn" "$log" | tail -20 >&2; exit 1; }
