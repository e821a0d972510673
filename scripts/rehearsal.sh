#!/usr/bin/env bash
# A local two-cluster rehearsal of deploy/ on one machine, with no change to the machine's own PostgreSQL:
#
#   - a private PostgreSQL cluster (scripts/pg-cluster.sh, cluster "rehearsal") with a database `tracepost`
#     owned by the role `tracepost`, migrated once by `tracepost migrate`, and the read-only role `tracepost_ro`
#     with the grants of README "Read-only query role";
#   - a stand-in for `postgres-rw-infra`, the Service Linkerd mirrors into the apps cluster: a TCP forwarder
#     (scripts/tcp-forward.py, python3's standard library) on its own port in front of the same PostgreSQL;
#   - two collectors, `--cluster-name apps` writing through the stand-in and `--cluster-name infra` writing
#     directly, each with `--skip-migrations` and its own `--spool-dir`;
#   - one `tracepost query --skip-migrations` as `tracepost_ro` (Jaeger API, Tempo API, Jaeger SPM from
#     VictoriaMetrics);
#   - one VictoriaMetrics (Debian's `victoria-metrics` package, installed if missing) scraping both collectors'
#     /metrics every 2 s, each target labelled `cluster`;
#   - cross-cluster traffic from `tracepost loadgen --cluster-endpoint apps=... --cluster-endpoint infra=...`:
#     each proxy span goes to the collector of its pod's cluster, so a trace with a hop from an apps service
#     to an infra service is split between the two collectors.
#
#   scripts/rehearsal.sh           keep it running with a steady load until Ctrl-C, printing what to open
#   scripts/rehearsal.sh --smoke   check it and exit non-zero on any failure (CI, about 2 minutes):
#       a) a trace crossing the clusters comes back from the query role stitched: spans of both clusters,
#          every span's parent in the trace but the first proxy span's, whose parent is the (unmeshed)
#          caller's span that the proxies never see (Linkerd only continues traces);
#       b) the cross-cluster edge (apps service -> infra service) is in /api/dependencies;
#       c) VictoriaMetrics has each collector's RED metrics for its own cluster, and what the service graph
#          makes of a call whose halves reach different collectors: the apps caller's edge to a virtual node
#          named after the callee's address, and the infra collector's unpaired server spans;
#       d) stopping PostgreSQL for 30 s under a steady load loses nothing: the collectors keep acknowledging
#          from their spools (/readyz says "spooling"), drain them once PostgreSQL is back, and PostgreSQL then
#          holds exactly the spans the load generator had acknowledged.
#
# Environment:
#   TRACEPOST_REHEARSAL_PORT_BASE   ports BASE+17/18/88 (apps OTLP gRPC/HTTP, admin), BASE+117/118/188 (infra),
#                                   BASE+286 (Jaeger API), BASE+200 (Tempo), BASE+28 (VictoriaMetrics),
#                                   BASE+32 (postgres-rw-infra stand-in); default 27400
#   TRACEPOST_REHEARSAL_RATE        spans/s of the load during the outage (smoke) or the steady load; default
#                                   1000 (smoke), 200 (interactive)
#   TRACEPOST_REHEARSAL_OUTAGE_S    how long --smoke keeps PostgreSQL stopped; default 30
#   TRACEPOST_REHEARSAL_BIN         a tracepost binary to use instead of building one
#   TRACEPOST_REHEARSAL_VICTORIA_METRICS   a victoria-metrics binary instead of Debian's
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=no
case ${1:-} in
--smoke) smoke=yes ;;
"") ;;
*)
    echo "usage: $0 [--smoke]" >&2
    exit 2
    ;;
esac

base=${TRACEPOST_REHEARSAL_PORT_BASE:-27400}
apps_grpc=$((base + 17)) apps_http=$((base + 18)) apps_admin=$((base + 88))
infra_grpc=$((base + 117)) infra_http=$((base + 118)) infra_admin=$((base + 188))
query_port=$((base + 286)) tempo_port=$((base + 200)) vm_port=$((base + 28)) forward_port=$((base + 32))
if [[ $smoke == yes ]]; then
    rate=${TRACEPOST_REHEARSAL_RATE:-1000}
else
    rate=${TRACEPOST_REHEARSAL_RATE:-200}
fi
outage_s=${TRACEPOST_REHEARSAL_OUTAGE_S:-30}
pg_cluster=rehearsal
password=rehearsal # the private cluster trusts loopback; the roles get a password as real ones would

# HTTP, Prometheus text, Jaeger JSON and VictoriaMetrics answers, with python3's standard library.
read -r -d '' helper <<'PY' || true
import json, sys, time, urllib.error, urllib.parse, urllib.request


# Everything is on loopback: no proxy from the environment.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url, timeout=10):
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, OSError) as error:
        return 0, str(error)


def die(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def tag(tags, key):
    return next((item["value"] for item in tags if item["key"] == key), None)


command, args = sys.argv[1], sys.argv[2:]
if command == "status":
    # URL: "STATUS FIRST-LINE-OF-BODY" (status 0 when nothing answers).
    status, body = fetch(args[0], 2)
    print(status, body.splitlines()[0] if body else "")
elif command == "metrics":
    # URL NAME...: each metric summed over its label sets (0 when absent), space-separated.
    status, body = fetch(args[0])
    if status != 200:
        die(f"{args[0]}: {status} {body[:200]}")
    sums = dict.fromkeys(args[1:], 0.0)
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name = series.split("{", 1)[0]
        if name in sums:
            sums[name] += float(value)
    print(" ".join(f"{sums[name]:.0f}" for name in args[1:]))
elif command == "trace":
    # QUERY_URL TRACE_ID: check a) and print "CALLER CALLEE CALLEE_ADDRESS SPANS PROCESSES" of the trace's
    # first hop from an apps pod to an infra pod.
    base, trace_id = args
    status, body = fetch(f"{base}/api/traces/{trace_id}")
    if status != 200:
        die(f"trace {trace_id}: {status} {body[:300]}")
    data = json.loads(body)["data"]
    if len(data) != 1:
        die(f"trace {trace_id}: {len(data)} traces in the answer")
    trace = data[0]
    spans, processes = trace["spans"], trace["processes"]
    cluster = {pid: tag(process["tags"], "k8s.cluster.name") for pid, process in processes.items()}
    by_id = {span["spanID"]: span for span in spans}
    if len(by_id) != len(spans):
        die(f"trace {trace_id}: a span ID twice")
    clusters = sorted({str(cluster[span["processID"]]) for span in spans})
    if clusters != ["apps", "infra"]:
        die(f"trace {trace_id}: spans of the clusters {clusters}, expected apps and infra")
    parent = {}
    for span in spans:
        references = [ref for ref in span["references"] if ref["refType"] == "CHILD_OF"]
        parent[span["spanID"]] = references[0]["spanID"] if references else None
    roots = sorted((span for span in spans if parent[span["spanID"]] not in by_id), key=lambda s: s["startTime"])
    if len(roots) != 1:
        die(f"trace {trace_id}: {len(roots)} spans whose parent is not in the trace, expected 1: "
            + ", ".join(f"{span['operationName']} ({span['spanID']})" for span in roots))
    earliest = min(spans, key=lambda span: (span["startTime"], -span["duration"]))
    if roots[0] is not earliest or tag(roots[0]["tags"], "span.kind") != "server":
        die(f"trace {trace_id}: the span without its parent is not the first proxy span (outbound server)")
    for span in sorted(spans, key=lambda span: span["startTime"]):
        caller_span = by_id.get(parent[span["spanID"]])
        if (caller_span is not None
                and cluster[caller_span["processID"]] == "apps" and cluster[span["processID"]] == "infra"
                and tag(caller_span["tags"], "span.kind") == "client" and tag(span["tags"], "span.kind") == "server"):
            print(processes[caller_span["processID"]]["serviceName"], processes[span["processID"]]["serviceName"],
                  tag(caller_span["tags"], "server.address"), len(spans), len(processes))
            break
    else:
        die(f"trace {trace_id}: no outbound client span on an apps pod with an inbound server child on an infra pod")
elif command == "dependency":
    # QUERY_URL PARENT CHILD: check b), print the edge's call count.
    base, parent, child = args
    status, body = fetch(f"{base}/api/dependencies?endTs={int(time.time() * 1000)}&lookback=3600000")
    if status != 200:
        die(f"/api/dependencies: {status} {body[:300]}")
    links = json.loads(body)["data"]
    counts = [link["callCount"] for link in links if link["parent"] == parent and link["child"] == child]
    if not counts:
        die(f"no {parent} -> {child} in /api/dependencies: {links}")
    print(counts[0])
elif command == "vm":
    # VM_URL PROMQL: one line per series, "VALUE {labels}", sorted by the labels.
    base, promql = args
    fetch(f"{base}/internal/force_flush")
    status, body = fetch(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    if status != 200:
        die(f"VictoriaMetrics {promql}: {status} {body[:300]}")
    result = sorted(json.loads(body)["data"]["result"], key=lambda series: json.dumps(series["metric"], sort_keys=True))
    print("\n".join(f"{series['value'][1]} {json.dumps(series['metric'], sort_keys=True)}" for series in result))
elif command == "urlencode":
    print(urllib.parse.quote(args[0], safe=""))
else:
    die(f"unknown helper command {command}")
PY
py() { python3 -c "$helper" "$@"; }

log() { echo "rehearsal: $*" >&2; }

# --- processes, logs and cleanup -------------------------------------------------------------------------
work=$(mktemp -d -t tracepost-rehearsal.XXXXXX)
declare -A pids=()
order=()
load_pid=
logs_printed=no
interrupted=no
pg_started=no

print_logs() {
    [[ $logs_printed == yes ]] && return 0
    logs_printed=yes
    local file
    for file in "$work"/*.log "$work"/*.out; do
        [[ -s $file ]] || continue
        echo "----- $(basename "$file") (last 40 lines) -----" >&2
        tail -n 40 "$file" >&2
    done
}

fail() {
    echo "rehearsal FAILED: $*" >&2
    print_logs
    exit 1
}

# start NAME COMMAND...: runs COMMAND in the background, its output in $work/NAME.log.
start() {
    local name=$1
    shift
    "$@" >"$work/$name.log" 2>&1 &
    pids[$name]=$!
    order+=("$name")
}

stop_process() {
    local pid=$1
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    [[ -n $load_pid ]] && stop_process "$load_pid"
    local index
    for ((index = ${#order[@]} - 1; index >= 0; index--)); do
        stop_process "${pids[${order[index]}]}"
    done
    if [[ $status -ne 0 && ($interrupted == no || $smoke == yes) ]]; then
        print_logs
    fi
    if [[ $pg_started == yes ]]; then
        if [[ $smoke == yes && $status -eq 0 ]]; then
            scripts/pg-cluster.sh destroy "$pg_cluster" 2>/dev/null || true
        else
            scripts/pg-cluster.sh stop "$pg_cluster" 2>/dev/null || true
            echo "rehearsal: PostgreSQL cluster '$pg_cluster' stopped, data kept (scripts/pg-cluster.sh start|destroy $pg_cluster)" >&2
        fi
    fi
    if [[ $smoke == yes && $status -eq 0 ]]; then
        rm -rf "$work"
    else
        echo "rehearsal: logs and spools in $work" >&2
    fi
    [[ $interrupted == yes && $smoke == no ]] && exit 0
    exit "$status"
}
trap cleanup EXIT
trap 'interrupted=yes; exit 130' INT TERM

# wait_until SECONDS COMMAND...: polls COMMAND every 0.2 s until it succeeds (status 1 if it did not in time).
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# ready PORT [PATH]: the endpoint answers 200 (and every process started is still alive).
ready() {
    local name
    for name in "${order[@]}"; do
        kill -0 "${pids[$name]}" 2>/dev/null || fail "$name exited"
    done
    [[ $(py status "http://127.0.0.1:$1${2:-/readyz}") == 200* ]]
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# spool NAME ADMIN_PORT: "appended drained backlog_bytes disk_bytes dropped refusals" of a collector's spool.
spool() {
    py metrics "http://127.0.0.1:$1/metrics" tracepost_spool_appended_spans_total tracepost_spool_drained_spans_total \
        tracepost_spool_backlog_bytes tracepost_spool_disk_bytes tracepost_spool_dropped_spans_total \
        tracepost_spool_refusals_total
}

drained() {
    local port appended drained backlog rest
    for port in "$apps_admin" "$infra_admin"; do
        read -r appended drained backlog rest <<<"$(spool "$port")"
        [[ $appended == "$drained" && $backlog == 0 ]] || return 1
    done
}

# field NAME FILE: the value of NAME= on the load generator's RESULT line in FILE.
field() {
    awk -v key="$1" '/^RESULT / { for (i = 2; i <= NF; i++) if (index($i, key "=") == 1) print substr($i, length(key) + 2) }' "$2"
}

# Cross-cluster load to the two collectors over OTLP/gRPC, as Linkerd's proxies export.
loadgen=(loadgen --protocol grpc --quiet
    --cluster-endpoint "apps=http://127.0.0.1:$apps_grpc" --cluster-endpoint "infra=http://127.0.0.1:$infra_grpc")

# --- set up ----------------------------------------------------------------------------------------------
for port in "$apps_grpc" "$apps_http" "$apps_admin" "$infra_grpc" "$infra_http" "$infra_admin" "$query_port" \
    "$tempo_port" "$vm_port" "$forward_port"; do
    port_in_use "$port" && fail "port $port is in use (another rehearsal?); set TRACEPOST_REHEARSAL_PORT_BASE"
done

if [[ -n ${TRACEPOST_REHEARSAL_BIN:-} ]]; then
    bin=$TRACEPOST_REHEARSAL_BIN
else
    log "building tracepost (release)"
    cargo build --release --locked --bin tracepost
    bin=target/release/tracepost
fi

vm_bin=${TRACEPOST_REHEARSAL_VICTORIA_METRICS:-}
if [[ -z $vm_bin ]]; then
    if ! command -v victoria-metrics >/dev/null; then
        [[ $(id -u) -eq 0 ]] || fail "victoria-metrics not found: install Debian's victoria-metrics package"
        log "installing VictoriaMetrics from Debian's packages"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq victoria-metrics >&2
    fi
    vm_bin=$(command -v victoria-metrics)
fi
command -v python3 >/dev/null || fail "python3 is needed (the forwarder and the checks)"

log "starting a private PostgreSQL cluster ($pg_cluster)"
pg_started=yes
server=$(scripts/pg-cluster.sh start "$pg_cluster")
pg_port=$(sed -E 's|.*@127\.0\.0\.1:([0-9]+)/.*|\1|' <<<"$server")
psql "$server" -v ON_ERROR_STOP=1 -q -c "SET client_min_messages = warning" \
    -c "DROP DATABASE IF EXISTS tracepost WITH (FORCE)" \
    -c "DO \$\$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tracepost') THEN
                CREATE ROLE tracepost LOGIN PASSWORD '$password';
            END IF;
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tracepost_ro') THEN
                CREATE ROLE tracepost_ro LOGIN PASSWORD '$password';
            END IF;
        END \$\$" \
    -c "CREATE DATABASE tracepost OWNER tracepost" >/dev/null
owner_url="postgres://tracepost:$password@127.0.0.1:$pg_port/tracepost?sslmode=disable"
apps_url="postgres://tracepost:$password@127.0.0.1:$forward_port/tracepost?sslmode=disable"
reader_url="postgres://tracepost_ro:$password@127.0.0.1:$pg_port/tracepost?sslmode=disable"

log "tracepost migrate (as the owner, once), then the read-only role's grants"
if "$bin" migrate --help | grep -q -- '--grant-read-to'; then
    TRACEPOST_DATABASE_URL=$owner_url "$bin" migrate --grant-read-to tracepost_ro >"$work/migrate.log" 2>&1 ||
        fail "tracepost migrate failed"
else
    TRACEPOST_DATABASE_URL=$owner_url "$bin" migrate >"$work/migrate.log" 2>&1 || fail "tracepost migrate failed"
    # README, "Read-only query role", run as the role that migrates (so the default privileges are its).
    psql "$owner_url" -v ON_ERROR_STOP=1 -q \
        -c "GRANT CONNECT ON DATABASE tracepost TO tracepost_ro" \
        -c "GRANT USAGE ON SCHEMA public TO tracepost_ro" \
        -c "GRANT SELECT ON ALL TABLES IN SCHEMA public TO tracepost_ro" \
        -c "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO tracepost_ro" >/dev/null
fi

log "starting VictoriaMetrics on 127.0.0.1:$vm_port (scraping both collectors every 2 s)"
cat >"$work/scrape.yml" <<YAML
scrape_configs:
  - job_name: tracepost-collector
    scrape_interval: 2s
    static_configs:
      - targets: ['127.0.0.1:$apps_admin']
        labels: {cluster: apps}
      - targets: ['127.0.0.1:$infra_admin']
        labels: {cluster: infra}
YAML
start victoria-metrics "$vm_bin" -httpListenAddr="127.0.0.1:$vm_port" -storageDataPath="$work/vm" \
    -retentionPeriod=1d -promscrape.config="$work/scrape.yml" -search.latencyOffset=1s -search.disableCache \
    -loggerLevel=WARN

log "starting the postgres-rw-infra stand-in on 127.0.0.1:$forward_port -> 127.0.0.1:$pg_port"
start postgres-rw-infra python3 scripts/tcp-forward.py "$forward_port" "127.0.0.1:$pg_port"
wait_until 30 port_in_use "$forward_port" || fail "the postgres-rw-infra stand-in: not listening within 30 s"

collector_flags=(--skip-migrations --service-graph-wait 2s --spool-max-bytes 134217728 --shutdown-grace 5s)
log "starting the collectors: apps (through the stand-in) and infra (direct)"
start collector-apps env TRACEPOST_DATABASE_URL="$apps_url" TRACEPOST_LOG=info "$bin" collector "${collector_flags[@]}" \
    --cluster-name apps --spool-dir "$work/spool-apps" --admin-listen "127.0.0.1:$apps_admin" \
    --otlp-grpc-listen "127.0.0.1:$apps_grpc" --otlp-http-listen "127.0.0.1:$apps_http"
start collector-infra env TRACEPOST_DATABASE_URL="$owner_url" TRACEPOST_LOG=info "$bin" collector "${collector_flags[@]}" \
    --cluster-name infra --spool-dir "$work/spool-infra" --admin-listen "127.0.0.1:$infra_admin" \
    --otlp-grpc-listen "127.0.0.1:$infra_grpc" --otlp-http-listen "127.0.0.1:$infra_http"
log "starting the query role as tracepost_ro"
start query env TRACEPOST_DATABASE_URL="$reader_url" TRACEPOST_LOG=info "$bin" query --skip-migrations \
    --query-listen "127.0.0.1:$query_port" --tempo-listen "127.0.0.1:$tempo_port" \
    --metrics-query-url "http://127.0.0.1:$vm_port" --shutdown-grace 5s

wait_until 60 ready "$vm_port" /health || fail "VictoriaMetrics /health: not within 60 s"
wait_until 60 ready "$apps_admin" || fail "collector apps /readyz: not within 60 s"
wait_until 60 ready "$infra_admin" || fail "collector infra /readyz: not within 60 s"
wait_until 60 ready "$query_port" || fail "query /readyz: not within 60 s"
log "everything is ready ($SECONDS s)"

# --- cross-cluster load, and checks a) to c) --------------------------------------------------------------
log "sending cross-cluster traffic"
"$bin" "${loadgen[@]}" --spans 8000 --request-spans 200 --concurrency 4 >"$work/first.out" 2>&1 ||
    fail "the load generator failed"
grep -v '^RESULT' "$work/first.out" | sed 's/^/    /' >&2 || true
crossing=$(field crossing_trace "$work/first.out")
first_spans=$(field spans "$work/first.out")
cluster_spans=$(field cluster_spans "$work/first.out")
[[ -n $crossing && $first_spans == 8000 ]] || fail "the load generator acknowledged $first_spans of 8000 spans, crossing trace '$crossing'"
apps_spans=$(sed -E 's/.*apps:([0-9]+).*/\1/' <<<"$cluster_spans")
infra_spans=$(sed -E 's/.*infra:([0-9]+).*/\1/' <<<"$cluster_spans")
wait_until 60 drained || fail "both spools drained to PostgreSQL: not within 60 s"

if [[ $smoke == yes ]]; then
    log "a) the crossing trace $crossing from the query role"
    read -r caller callee callee_address trace_spans trace_processes <<<"$(py trace "http://127.0.0.1:$query_port" "$crossing")" ||
        fail "a) the crossing trace"
    [[ -n ${trace_processes:-} ]] || fail "a) the crossing trace"
    log "a) ok: $trace_spans spans from $trace_processes pods of apps and infra in one tree; hop $caller (apps) -> $callee (infra, $callee_address)"

    log "b) $caller -> $callee in /api/dependencies"
    calls=$(py dependency "http://127.0.0.1:$query_port" "$caller" "$callee") || fail "b) the cross-cluster dependency"
    log "b) ok: $caller -> $callee, $calls calls"

    log "c) VictoriaMetrics"
    # Each collector counts the spans of its own cluster: a Linkerd hop's outbound client span and inbound
    # server span are counted (the proxies' other two are not), half of what each cluster's pods send.
    expected_red="$((apps_spans / 2)) {\"cluster\": \"apps\", \"k8s_cluster_name\": \"apps\"}
$((infra_spans / 2)) {\"cluster\": \"infra\", \"k8s_cluster_name\": \"infra\"}"
    red_matches() {
        red=$(py vm "http://127.0.0.1:$vm_port" 'sum by (cluster, k8s_cluster_name) (traces_span_metrics_calls_total)')
        [[ $red == "$expected_red" ]]
    }
    red=
    wait_until 30 red_matches ||
        fail "c) RED calls per cluster in VictoriaMetrics: ${red//$'\n'/; }; expected ${expected_red//$'\n'/; }"
    edge_query="sum by (cluster, client, client_k8s_cluster_name, server, server_k8s_cluster_name, connection_type) (traces_service_graph_request_total{client=\"$caller\", server=\"$callee_address\"})"
    # The apps collector never sees the server half of an apps -> infra call, nor the infra collector its
    # client half: each such call is one virtual-node edge on the apps side (client span expired after
    # --service-graph-wait) and one unpaired server span on the infra side, and the reverse for infra -> apps.
    edge_matches() {
        edge=$(py vm "http://127.0.0.1:$vm_port" "$edge_query")
        [[ $edge == "$calls {\"client\": \"$caller\", \"client_k8s_cluster_name\": \"apps\", \"cluster\": \"apps\", \"connection_type\": \"virtual_node\", \"server\": \"$callee_address\"}" ]]
    }
    edge=
    wait_until 30 edge_matches ||
        fail "c) expected the apps collector's virtual-node edge $caller -> $callee_address with the $calls calls of /api/dependencies in VictoriaMetrics: ${edge:-no series}"
    halves_match() {
        unpaired=$(py vm "http://127.0.0.1:$vm_port" 'sum by (cluster) (tracepost_service_graph_unpaired_spans_total)')
        expired=$(py vm "http://127.0.0.1:$vm_port" 'sum by (cluster) (tracepost_service_graph_expired_client_spans_total)')
        local unpaired_apps unpaired_infra expired_apps expired_infra
        unpaired_apps=$(sed -nE 's/^([0-9]+) \{"cluster": "apps"\}$/\1/p' <<<"$unpaired")
        unpaired_infra=$(sed -nE 's/^([0-9]+) \{"cluster": "infra"\}$/\1/p' <<<"$unpaired")
        expired_apps=$(sed -nE 's/^([0-9]+) \{"cluster": "apps"\}$/\1/p' <<<"$expired")
        expired_infra=$(sed -nE 's/^([0-9]+) \{"cluster": "infra"\}$/\1/p' <<<"$expired")
        [[ -n $unpaired_infra && $unpaired_infra -gt 0 && $unpaired_infra == "$expired_apps" &&
            -n $unpaired_apps && $unpaired_apps -gt 0 && $unpaired_apps == "$expired_infra" ]]
    }
    unpaired='' expired=''
    wait_until 30 halves_match ||
        fail "c) expected as many unpaired server spans on each side as expired client spans on the other: unpaired ${unpaired//$'\n'/; }, expired ${expired//$'\n'/; }"
    virtual=$(py vm "http://127.0.0.1:$vm_port" 'sum by (cluster, client, server) (traces_service_graph_request_total{connection_type="virtual_node"})')
    direct=$(py vm "http://127.0.0.1:$vm_port" 'sum by (cluster, client, client_k8s_cluster_name, server, server_k8s_cluster_name) (traces_service_graph_request_total{connection_type=""})')
    cross_direct=$(grep -c -E '"client_k8s_cluster_name": "apps".*"server_k8s_cluster_name": "infra"|"client_k8s_cluster_name": "infra".*"server_k8s_cluster_name": "apps"' <<<"$direct" || true)
    [[ $cross_direct == 0 ]] || fail "c) a paired (direct) edge between the clusters, which one collector cannot see: $direct"
    log "c) ok: RED calls per cluster: ${red//$'\n'/; }"
    log "c)     the cross-cluster call, as the apps collector reports it: ${edge//$'\n'/; }"
    log "c)     unpaired server spans per collector: ${unpaired//$'\n'/; }"
    log "c)     expired (unpaired) client spans per collector: ${expired//$'\n'/; }"
    log "c)     direct (paired) edges: $(grep -c . <<<"$direct") series, none across the clusters; virtual-node edges:"
    awk '{ print "        " $0 }' <<<"$virtual" >&2
fi

if [[ $smoke == no ]]; then
    # A steady load until Ctrl-C, a new seed (new trace IDs) every minute.
    (
        trap 'kill -TERM "$child" 2>/dev/null; exit 0' TERM
        seed=2
        while true; do
            "$bin" "${loadgen[@]}" --spans $((rate * 60)) --rate "$rate" --request-spans 100 --concurrency 2 \
                --seed "$seed" >"$work/steady.out" 2>&1 &
            child=$!
            wait "$child" || exit 1
            seed=$((seed + 1))
        done
    ) &
    load_pid=$!
    red_query='sum by (k8s_cluster_name, service_name) (rate(traces_span_metrics_calls_total[1m]))'
    graph_query='sum by (cluster, client, server, connection_type) (rate(traces_service_graph_request_total[1m]))'
    cat <<MSG

The two-cluster rehearsal is running ($rate spans/s of cross-cluster load; logs and spools in $work).
  a trace crossing the clusters (Jaeger API, read as tracepost_ro):
                          http://127.0.0.1:$query_port/api/traces/$crossing
  Jaeger API / Jaeger UI: http://127.0.0.1:$query_port (a Jaeger UI or Grafana's Jaeger data source reads it;
                          services: /api/services, dependencies: /api/dependencies)
  Tempo API:              http://127.0.0.1:$tempo_port (Grafana's Tempo data source)
  VictoriaMetrics:        http://127.0.0.1:$vm_port/vmui/ ; queries to paste:
                            $red_query
                            $graph_query
                          or http://127.0.0.1:$vm_port/api/v1/query?query=$(py urlencode "$red_query")
  OTLP, cluster apps:     grpc 127.0.0.1:$apps_grpc, http http://127.0.0.1:$apps_http/v1/traces (admin http://127.0.0.1:$apps_admin/metrics)
  OTLP, cluster infra:    grpc 127.0.0.1:$infra_grpc, http http://127.0.0.1:$infra_http/v1/traces (admin http://127.0.0.1:$infra_admin/metrics)
  PostgreSQL:             psql '$reader_url' (postgres-rw-infra stand-in: 127.0.0.1:$forward_port)
Press Ctrl-C to stop.
MSG
    wait -n "$load_pid" "${pids[@]}" || true
    fail "a process exited"
fi

# --- d) a PostgreSQL outage under load ---------------------------------------------------------------------
outage_spans=$((rate * (outage_s + 15)))
log "d) steady load of $rate spans/s ($outage_spans spans), PostgreSQL stopped for $outage_s s in the middle"
"$bin" "${loadgen[@]}" --spans "$outage_spans" --rate "$rate" --request-spans 100 --concurrency 4 --seed 3 \
    >"$work/outage.out" 2>&1 &
load_pid=$!
read -r apps_before _ <<<"$(spool "$apps_admin")"
read -r infra_before _ <<<"$(spool "$infra_admin")"
load_flows() {
    local apps infra
    read -r apps _ <<<"$(spool "$apps_admin")"
    read -r infra _ <<<"$(spool "$infra_admin")"
    ((apps > apps_before + rate / 2 && infra > infra_before + rate / 2))
}
wait_until 30 load_flows || fail "d) the load reaching both collectors: not within 30 s"

read -r apps_appended_0 _ apps_backlog_0 apps_disk_0 _ <<<"$(spool "$apps_admin")"
read -r infra_appended_0 _ infra_backlog_0 infra_disk_0 _ <<<"$(spool "$infra_admin")"
scripts/pg-cluster.sh stop "$pg_cluster"
outage_end=$((SECONDS + outage_s))
log "d) PostgreSQL stopped; the load goes on for $outage_s s"
apps_spooling=no infra_spooling=no
while ((SECONDS < outage_end)); do
    for cluster in apps infra; do
        port_var=${cluster}_admin
        answer=$(py status "http://127.0.0.1:${!port_var}/readyz")
        [[ $answer == 200* ]] || fail "d) collector $cluster not ready while PostgreSQL is away: $answer"
        [[ $answer == *spooling* ]] && printf -v "${cluster}_spooling" '%s' yes
    done
    kill -0 "$load_pid" 2>/dev/null || fail "d) the load generator ended during the outage: raise TRACEPOST_REHEARSAL_RATE's spans"
    sleep 0.5
done
read -r apps_appended_1 _ apps_backlog_1 apps_disk_1 _ <<<"$(spool "$apps_admin")"
read -r infra_appended_1 _ infra_backlog_1 infra_disk_1 _ <<<"$(spool "$infra_admin")"
[[ $apps_spooling == yes && $infra_spooling == yes ]] ||
    fail "d) /readyz never said spooling (apps: $apps_spooling, infra: $infra_spooling)"
restarted=$(scripts/pg-cluster.sh start "$pg_cluster")
back_at=$EPOCHREALTIME
[[ $restarted == "$server" ]] || fail "d) PostgreSQL came back on another port ($restarted, was $server)"
kill -0 "$load_pid" 2>/dev/null || fail "d) the load generator ended before PostgreSQL was back"
apps_outage=$((apps_appended_1 - apps_appended_0)) infra_outage=$((infra_appended_1 - infra_appended_0))
log "d) PostgreSQL is back; spans acknowledged during the outage: apps $apps_outage, infra $infra_outage"
((apps_outage > 0 && infra_outage > 0)) || fail "d) nothing acknowledged while PostgreSQL was away"
# Catching up: every span spooled before PostgreSQL came back is committed, while the load goes on.
caught_up() {
    local apps_drained infra_drained
    read -r _ apps_drained _ <<<"$(spool "$apps_admin")"
    read -r _ infra_drained _ <<<"$(spool "$infra_admin")"
    ((apps_drained >= apps_appended_1 && infra_drained >= infra_appended_1))
}
wait_until 120 caught_up || fail "d) the spools did not drain what the outage left within 120 s"
catch_up_s=$(awk -v a="$back_at" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
log "d) the outage's backlog was committed $catch_up_s s after PostgreSQL came back"
wait "$load_pid" || fail "d) the load generator failed"
load_pid=
outage_acked=$(field spans "$work/outage.out")
[[ $(field failed "$work/outage.out") == 0 ]] || fail "d) export requests failed"
wait_until 120 drained || fail "d) both spools drained after the load: not within 120 s"

acknowledged=$((first_spans + outage_acked))
stored=$(psql "$reader_url" -qAt -c "SET jit = off" \
    -c "SELECT count(*) FROM (SELECT DISTINCT trace_id, span_id FROM tracepost_spans) AS spans")
rows=$(psql "$reader_url" -qAt -c "SET jit = off" -c "SELECT count(*) FROM tracepost_spans")
read -r apps_appended apps_drained _ apps_disk apps_dropped apps_refusals <<<"$(spool "$apps_admin")"
read -r infra_appended infra_drained _ infra_disk infra_dropped infra_refusals <<<"$(spool "$infra_admin")"
log "d) acknowledged by the collectors: $acknowledged spans; stored: $stored distinct ($rows rows); spooled $((apps_appended + infra_appended)), drained $((apps_drained + infra_drained)), dropped $((apps_dropped + infra_dropped)), refused $((apps_refusals + infra_refusals))"
[[ $stored == "$acknowledged" ]] || fail "d) $stored distinct spans stored, $acknowledged acknowledged"
[[ $((apps_appended + infra_appended)) == "$acknowledged" ]] || fail "d) the spools took $((apps_appended + infra_appended)) spans, $acknowledged acknowledged"

# The roles stop cleanly on SIGTERM, with nothing left in the spools.
for name in query collector-infra collector-apps; do
    kill -TERM "${pids[$name]}"
    wait "${pids[$name]}" || fail "$name did not stop cleanly (exit status $?)"
done

bytes_per_span() { awk -v bytes="$1" -v spans="$2" 'BEGIN { if (spans > 0) printf "%.0f", bytes / spans; else print "-" }'; }
cat >&2 <<REPORT

==> two-cluster rehearsal smoke run passed in $SECONDS s
  a) trace $crossing: $trace_spans spans of apps and infra pods, one tree; hop $caller (apps) -> $callee (infra)
  b) /api/dependencies: $caller -> $callee ($calls calls)
  c) VictoriaMetrics: RED calls per cluster: ${red//$'\n'/; }
     the cross-cluster call from the apps collector: ${edge//$'\n'/; }
     unpaired server spans: ${unpaired//$'\n'/; }; expired client spans: ${expired//$'\n'/; }
  d) PostgreSQL stopped $outage_s s at $rate spans/s: apps $apps_outage and infra $infra_outage spans acknowledged meanwhile, the backlog committed $catch_up_s s after it was back;
     $acknowledged spans acknowledged in all, $stored stored (distinct; $rows rows)
     spool bytes per span during the outage: apps $(bytes_per_span $((apps_disk_1 - apps_disk_0)) "$apps_outage") on disk ($(bytes_per_span $((apps_backlog_1 - apps_backlog_0)) "$apps_outage") backlog), infra $(bytes_per_span $((infra_disk_1 - infra_disk_0)) "$infra_outage") on disk ($(bytes_per_span $((infra_backlog_1 - infra_backlog_0)) "$infra_outage") backlog)
     spool on disk at the outage's end: apps $apps_disk_1 B, infra $infra_disk_1 B; drained: apps $apps_disk B, infra $infra_disk B
REPORT
