#!/usr/bin/env bash
# A private PostgreSQL cluster for development, tests and benchmarks, on a free loopback port.
#
#   scripts/pg-cluster.sh start NAME [--tls]   start (or reuse) cluster NAME; prints its URL on stdout
#   scripts/pg-cluster.sh stop NAME            stop it
#   scripts/pg-cluster.sh destroy NAME         stop it and delete its data
#   scripts/pg-cluster.sh url NAME             print the URL of a running cluster
#   scripts/pg-cluster.sh ca NAME              print the path of a --tls cluster's CA certificate
#
# It never touches a system cluster: data lives in $TRACEPOST_PG_DIR (default /tmp/tracepost-pg-<uid>)/NAME,
# owned by the postgres user when run as root (initdb refuses root). PostgreSQL's Debian packages are
# installed if no server binaries are found. --tls turns on SSL with a self-signed certificate and a TLS 1.3
# minimum, as CloudNativePG configures it.
#
# TRACEPOST_PG_SETTINGS (space-separated NAME=VALUE, e.g. "autovacuum=off") adds server settings when `start`
# starts the cluster (passed as -c NAME=VALUE, never written to its configuration); a cluster already running
# keeps the settings it was started with (`stop` it first).
set -euo pipefail

log() { echo "pg-cluster: $*" >&2; }

command=${1:-}
name=${2:-}
tls=no
[[ ${3:-} == --tls ]] && tls=yes
[[ -n $command && -n $name ]] || { echo "usage: $0 start|stop|destroy|url|ca NAME [--tls]" >&2; exit 2; }

base=${TRACEPOST_PG_DIR:-/tmp/tracepost-pg-$(id -u)}
dir=$base/$name
mkdir -p "$base"
chmod 755 "$base"
# One invocation at a time (parallel test processes may all ask for the same cluster).
exec 9>"$base/.lock"
flock 9

find_bindir() {
    local candidate
    for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [[ -x $candidate/initdb && -x $candidate/pg_ctl ]] && { echo "$candidate"; return 0; }
    done
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v initdb)"
        return 0
    fi
    return 1
}

bindir=$(find_bindir || true)
if [[ -z $bindir ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        log "no PostgreSQL server found: install Debian's postgresql package (or set TRACEPOST_DATABASE_URL)"
        exit 1
    fi
    log "installing PostgreSQL from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql-common >&2
    # Do not let the package create and start a system cluster on 5432 we did not ask for.
    sed -ri 's/^#?\s*create_main_cluster\s*=.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf
    apt-get install -y -qq postgresql >&2
    bindir=$(find_bindir)
fi

as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

url_of() {
    local port mode=disable
    port=$(cat "$dir/port")
    [[ -f $dir/tls ]] && mode=require
    echo "postgres://postgres@127.0.0.1:$port/postgres?sslmode=$mode"
}

running() {
    [[ -f $dir/port ]] && as_owner "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1
}

free_port() {
    local port
    for port in $(seq 55432 55632); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    log "no free port in 55432-55632"
    return 1
}

case $command in
url)
    running || { log "cluster $name is not running"; exit 1; }
    url_of
    ;;
ca)
    [[ -f $dir/ca.crt ]] || { log "cluster $name has no CA certificate (start it with --tls)"; exit 1; }
    echo "$dir/ca.crt"
    ;;
stop)
    if running; then
        as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >&2
    fi
    ;;
destroy)
    if running; then
        as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >&2
    fi
    rm -rf "$dir"
    ;;
start)
    if running; then
        url_of
        exit 0
    fi
    if [[ ! -f $dir/data/PG_VERSION ]]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$dir"
        log "creating cluster $name in $dir"
        as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; exit 1; }
        if [[ $tls == yes ]]; then
            # A private CA and a server certificate for localhost and 127.0.0.1 signed by it, so clients can
            # test both encryption without verification and verification against --database-ca-file.
            (
                cd "$dir"
                openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=tracepost test CA" \
                    -keyout ca.key -out ca.crt
                openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
                printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
                    "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >server.ext
                openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
                    -extfile server.ext -out server.crt
            ) >/dev/null 2>&1
            install -m 600 "$dir/server.key" "$dir/data/server.key"
            install -m 644 "$dir/server.crt" "$dir/data/server.crt"
            chmod 644 "$dir/ca.crt"
            [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$dir/data/server.key" "$dir/data/server.crt"
            touch "$dir/tls"
            cat >>"$dir/data/postgresql.conf" <<CONF
ssl = on
ssl_min_protocol_version = 'TLSv1.3'
CONF
            # TCP clients must use TLS.
            cat >"$dir/data/pg_hba.conf" <<HBA
local     all all                trust
hostssl   all all 127.0.0.1/32   trust
hostnossl all all 127.0.0.1/32   reject
HBA
        fi
    fi
    # A restarted cluster keeps its port when it is free, so clients that knew it reconnect.
    port=$(cat "$dir/port" 2>/dev/null || true)
    if [[ -z $port ]] || (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        port=$(free_port)
    fi
    echo "$port" >"$dir/port"
    chmod 644 "$dir/port"
    settings=""
    for setting in ${TRACEPOST_PG_SETTINGS:-}; do
        [[ $setting =~ ^[a-z_.]+=[A-Za-z0-9_.]+$ ]] || { log "TRACEPOST_PG_SETTINGS: not NAME=VALUE: $setting"; exit 2; }
        settings+=" -c $setting"
    done
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
        -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c max_connections=300$settings" start >&2 9>&- \
        || { tail -20 "$dir/postgres.log" >&2; exit 1; }
    log "cluster $name listening on 127.0.0.1:$port"
    url_of
    ;;
*)
    echo "usage: $0 start|stop|destroy|url|ca NAME [--tls]" >&2
    exit 2
    ;;
esac
