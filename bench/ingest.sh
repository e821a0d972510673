#!/usr/bin/env bash
# Ingest benchmark: how fast tracepost commits spans compared with a plain `psql \copy` of the same spans.
#
#   bench/ingest.sh [SPANS] [RUNS]          (defaults: 1000000 spans, 3 runs)
#
# Each run, on the same machine and the same PostgreSQL server:
#  1. baseline: `psql \copy` (text format) of the spans into the plain 11-column table of
#     ../shared/reference/postgres-ingest-measurements.md (attributes as jsonb) with btree indexes on trace_id
#     and on (service, start_ns), in a fresh database;
#  2. tracepost: `tracepost serve` on a fresh database, and `tracepost loadgen` sending the same spans
#     (same seed) over OTLP/HTTP protobuf; the clock stops when the last request is acknowledged, which means
#     committed.
# It prints each run and the medians: spans/s of both, their ratio, the collector's CPU (% of one core per
# 10k spans/s), its peak RSS, and the load generator's own CPU. Each run also sends the spans to a tracepost
# started with --disable-span-metrics: the difference in collector CPU is what the RED metrics and the service
# graph cost.
#
# PostgreSQL: TRACEPOST_BENCH_DATABASE_URL (a superuser URL) or a private cluster started by
# scripts/pg-cluster.sh. Extra serve flags: TRACEPOST_BENCH_SERVE_ARGS. Loadgen concurrency:
# TRACEPOST_BENCH_CONCURRENCY (default 16, as many proxies export at once).
set -euo pipefail
cd "$(dirname "$0")/.."

spans=${1:-1000000}
runs=${2:-3}
concurrency=${TRACEPOST_BENCH_CONCURRENCY:-16}
http_port=${TRACEPOST_BENCH_HTTP_PORT:-14318}
query_port=${TRACEPOST_BENCH_QUERY_PORT:-16687}
grpc_port=${TRACEPOST_BENCH_GRPC_PORT:-14317}
tempo_port=${TRACEPOST_BENCH_TEMPO_PORT:-13200}

cargo build --release --locked --bin tracepost >&2
bin=target/release/tracepost
server=${TRACEPOST_BENCH_DATABASE_URL:-$(scripts/pg-cluster.sh start bench)}
database_url() { echo "${server/\/postgres\?/\/$1?}"; }
fresh_database() {
    psql "$server" -qc "DROP DATABASE IF EXISTS $1" -qc "CREATE DATABASE $1"
}
cpu_seconds() { # utime + stime of a process, in seconds (clock ticks of 1/100 s)
    awk '{ split($0, a, ") "); split(a[2], f, " "); print (f[12] + f[13]) / 100 }' "/proc/$1/stat"
}
ready() {
    (exec 3<>"/dev/tcp/127.0.0.1/$query_port" && printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3 && head -c 12 <&3 | grep -q 200) 2>/dev/null
}

# Runs `tracepost serve` on a fresh database with extra flags "$@", sends the spans, and prints
# "elapsed_s cpu_s rss_kib loadgen_cpu_s acknowledged_spans".
run_tracepost() {
    fresh_database tracepost_bench
    # shellcheck disable=SC2086
    "$bin" serve --database-url "$(database_url tracepost_bench)" --otlp-http-listen "127.0.0.1:$http_port" \
        --otlp-grpc-listen "127.0.0.1:$grpc_port" --query-listen "127.0.0.1:$query_port" --tempo-listen "127.0.0.1:$tempo_port" \
        ${TRACEPOST_BENCH_SERVE_ARGS:-} "$@" 2>"$work/serve.log" &
    pid=$!
    for _ in $(seq 1 200); do ready && break; sleep 0.1; done
    ready || { cat "$work/serve.log" >&2; exit 1; }
    cpu_before=$(cpu_seconds "$pid")
    result=$("$bin" loadgen --protocol http --endpoint "http://127.0.0.1:$http_port" --spans "$spans" --seed 42 \
        --concurrency "$concurrency" --pregenerate --quiet | grep '^RESULT')
    cpu_after=$(cpu_seconds "$pid")
    rss_kib=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")
    kill -TERM "$pid"
    wait "$pid"
    stored=$(psql "$(database_url tracepost_bench)" -qAtc "SELECT count(*) FROM spans")
    elapsed=$(echo "$result" | sed -n 's/.*elapsed_s=\([0-9.]*\).*/\1/p')
    loadgen_cpu=$(echo "$result" | sed -n 's/.*loadgen_cpu_s=\([0-9.]*\).*/\1/p')
    acked=$(echo "$result" | sed -n 's/.*spans=\([0-9]*\).*/\1/p')
    [[ $stored -ge $acked ]] || { echo "only $stored of $acked acknowledged spans stored" >&2; exit 1; }
    echo "$elapsed $(awk -v a="$cpu_after" -v b="$cpu_before" 'BEGIN { print a - b }') $rss_kib $loadgen_cpu $acked"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "generating $spans spans" >&2
"$bin" loadgen --spans "$spans" --seed 42 --dry-run --copy-text-out "$work/spans.copy"

results=()
for run in $(seq 1 "$runs"); do
    # 1. the plain COPY baseline
    fresh_database tracepost_bench_plain
    psql "$(database_url tracepost_bench_plain)" -q <<'SQL'
CREATE TABLE spans (trace_id bytea, span_id bytea, parent_span_id bytea, service text, name text, kind smallint,
                    start_ns bigint, duration_ns bigint, status smallint, attributes jsonb, cluster text);
CREATE INDEX ON spans (trace_id);
CREATE INDEX ON spans (service, start_ns);
SQL
    start=$(date +%s.%N)
    psql "$(database_url tracepost_bench_plain)" -qc "\\copy spans FROM '$work/spans.copy'"
    copy_seconds=$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { print a - b }')

    # 2. tracepost end to end, then again without RED metrics and service graph (their cost)
    read -r elapsed cpu rss_kib loadgen_cpu acked <<<"$(run_tracepost)"
    read -r bare_elapsed bare_cpu _ _ bare_acked <<<"$(run_tracepost --disable-span-metrics)"
    [[ -n ${elapsed:-} && ${bare_acked:-} == "$acked" ]] || { echo "a tracepost run failed" >&2; exit 1; }

    line=$(awk -v n="$acked" -v copy="$copy_seconds" -v e2e="$elapsed" -v cpu="$cpu" -v rss="$rss_kib" -v lg="$loadgen_cpu" \
        -v bare_e2e="$bare_elapsed" -v bare_cpu="$bare_cpu" 'BEGIN {
            copy_rate = n / copy; rate = n / e2e; core = cpu / e2e; bare_rate = n / bare_e2e;
            printf "%.0f %.0f %.2f %.2f %.1f %.1f %.2f %.0f %.2f %.1f", copy_rate, rate, rate / copy_rate, 100 * core / (rate / 10000),
                rss / 1024, 100 * lg / e2e, 100 * core, bare_rate, 100 * (bare_cpu / bare_e2e) / (bare_rate / 10000),
                100 * (cpu - bare_cpu) / bare_cpu
        }')
    read -r copy_rate rate ratio cpu_per_10k rss_mib loadgen_pct core_pct bare_rate bare_per_10k metrics_pct <<<"$line"
    printf 'run %d: plain COPY %s spans/s | tracepost %s spans/s (%sx) | collector %s%% of a core (%s%% per 10k spans/s) | peak RSS %s MiB | loadgen %s%% of a core | without metrics %s spans/s, %s%% per 10k spans/s: metrics cost %s%% of ingest CPU\n' \
        "$run" "$copy_rate" "$rate" "$ratio" "$core_pct" "$cpu_per_10k" "$rss_mib" "$loadgen_pct" "$bare_rate" "$bare_per_10k" "$metrics_pct"
    results+=("$line")
done

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
column() { printf '%s\n' "${results[@]}" | awk -v c="$1" '{ print $c }' | median; }
echo
echo "median of $runs runs, $spans Linkerd-shaped spans, $(nproc) cores, $(free -g | awk '/Mem:/ { print $2 }') GiB, $(psql "$server" -qAtc 'SHOW server_version')"
echo "  plain psql \\copy (text, jsonb, 2 btrees):  $(column 1) spans/s"
echo "  tracepost end to end over OTLP/HTTP:       $(column 2) spans/s  ($(column 3) x the plain COPY)"
echo "  collector CPU:                             $(column 7) % of one core, $(column 4) % per 10k spans/s"
echo "  collector peak RSS:                        $(column 5) MiB"
echo "  loadgen CPU:                               $(column 6) % of one core"
echo "  without RED metrics (--disable-span-metrics): $(column 8) spans/s, $(column 9) % per 10k spans/s"
echo "  RED metrics + service graph CPU:           $(column 10) % of the collector's ingest CPU (median of per-run ratios)"
