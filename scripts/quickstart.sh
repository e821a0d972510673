#!/usr/bin/env bash
# Quick start: builds tracepost, gets a working PostgreSQL (TRACEPOST_DATABASE_URL, or a private cluster
# created from the system's PostgreSQL packages, installed if missing), runs `tracepost serve`, sends demo
# traffic shaped like Linkerd's, and prints where to look.
#
#   scripts/quickstart.sh           keep tracepost running until Ctrl-C
#   scripts/quickstart.sh --smoke   check the demo end to end, then stop tracepost (used by CI)
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=no
[[ ${1:-} == --smoke ]] && smoke=yes
query_port=${TRACEPOST_QUICKSTART_QUERY_PORT:-16686}
http_port=${TRACEPOST_QUICKSTART_HTTP_PORT:-4318}
grpc_port=${TRACEPOST_QUICKSTART_GRPC_PORT:-4317}
tempo_port=${TRACEPOST_QUICKSTART_TEMPO_PORT:-3200}

# GET on loopback without curl (a fresh Debian may not have it): prints "STATUS BODY".
http_get() {
    local port=$1 path=$2 response
    exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
    response=$(cat <&3)
    exec 3<&-
    local status=${response#HTTP/* }
    echo "${status%% *} ${response#*$'\r\n\r\n'}"
}

echo "==> building tracepost (release)"
cargo build --release --locked --bin tracepost
bin=target/release/tracepost

database_url=${TRACEPOST_DATABASE_URL:-}
if [[ -z $database_url ]]; then
    echo "==> starting a private PostgreSQL cluster"
    server=$(scripts/pg-cluster.sh start quickstart)
    if [[ -z $(psql "$server" -qAtc "SELECT 1 FROM pg_database WHERE datname = 'tracepost'") ]]; then
        psql "$server" -qc "CREATE DATABASE tracepost"
    fi
    database_url=${server/\/postgres\?/\/tracepost?}
fi

echo "==> starting tracepost serve"
log=$(mktemp -t tracepost-quickstart.XXXXXX.log)
"$bin" serve --database-url "$database_url" --cluster-name apps \
    --otlp-grpc-listen "127.0.0.1:$grpc_port" --otlp-http-listen "127.0.0.1:$http_port" \
    --query-listen "127.0.0.1:$query_port" --tempo-listen "127.0.0.1:$tempo_port" >"$log" 2>&1 &
pid=$!
stop() {
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        wait "$pid"
    fi
}
trap 'stop' EXIT INT TERM

for _ in $(seq 1 120); do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "tracepost exited:" >&2
        cat "$log" >&2
        exit 1
    fi
    [[ $(http_get "$query_port" /readyz 2>/dev/null || true) == 200* ]] && break
    sleep 0.5
done
[[ $(http_get "$query_port" /readyz) == 200* ]] || { echo "tracepost never became ready" >&2; cat "$log" >&2; exit 1; }

echo "==> sending demo traffic (Linkerd-shaped spans from the apps and infra clusters)"
"$bin" loadgen --protocol grpc --endpoint "http://127.0.0.1:$grpc_port" --spans 4000 --rate 4000 --quiet >/dev/null
summary=$("$bin" loadgen --protocol http --endpoint "http://127.0.0.1:$http_port" --spans 20000 --rate 10000)
echo "$summary" | grep -v '^RESULT'
trace_id=$(echo "$summary" | sed -n 's/^RESULT .*trace_id=\([0-9a-f]*\).*/\1/p')

trace=$(http_get "$query_port" "/api/traces/$trace_id")
if [[ $trace != 200* || $trace != *"\"traceID\":\"$trace_id\""* ]]; then
    echo "the demo trace $trace_id could not be read back: ${trace:0:300}" >&2
    exit 1
fi
metrics=$(http_get "$query_port" /metrics)
if [[ $metrics != *'traces_span_metrics_calls_total{'* || $metrics != *'traces_service_graph_request_total{'* ]]; then
    echo "no RED metrics or service graph on /metrics" >&2
    exit 1
fi

cat <<MSG

tracepost is running (log: $log)
  open a trace (Jaeger JSON):   http://127.0.0.1:$query_port/api/traces/$trace_id
  the same trace as OTLP JSON:  http://127.0.0.1:$query_port/api/v3/traces/$trace_id
  RED metrics, service graph:   http://127.0.0.1:$query_port/metrics (traces_span_metrics_*, traces_service_graph_*)
  send OTLP to:                 grpc 127.0.0.1:$grpc_port, http http://127.0.0.1:$http_port/v1/traces
  Grafana: add a Jaeger data source with URL http://<this host>:$query_port
           or a Tempo data source with URL http://<this host>:$tempo_port
MSG

if [[ $smoke == yes ]]; then
    trap - EXIT INT TERM
    kill -TERM "$pid"
    if wait "$pid"; then
        echo "==> smoke run passed: demo trace and RED metrics served, tracepost stopped cleanly"
    else
        echo "tracepost did not stop cleanly:" >&2
        cat "$log" >&2
        exit 1
    fi
    exit 0
fi
echo "Press Ctrl-C to stop."
wait "$pid"
