#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL servers: TRACEPOST_TEST_DATABASE_URL if set, else a
# private cluster from scripts/pg-cluster.sh (installing PostgreSQL's Debian packages when missing), plus a
# private TLS 1.3-only cluster for the TLS tests, and VictoriaMetrics (installed from Debian's packages when
# missing) for the RED metrics tests. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z ${TRACEPOST_TEST_DATABASE_URL:-} ]]; then
    TRACEPOST_TEST_DATABASE_URL=$(scripts/pg-cluster.sh start test)
    export TRACEPOST_TEST_DATABASE_URL
    # Databases left by earlier runs of the private cluster.
    psql "$TRACEPOST_TEST_DATABASE_URL" -qAtc "SELECT datname FROM pg_database WHERE datname LIKE 'tracepost_test_%'" |
        while read -r database; do psql "$TRACEPOST_TEST_DATABASE_URL" -qc "DROP DATABASE \"$database\""; done
fi
scripts/pg-cluster.sh start tls --tls >/dev/null

# The RED metrics tests start a real VictoriaMetrics of their own (Debian's package) on a free port.
if [[ -z ${TRACEPOST_TEST_VICTORIA_METRICS:-} ]] && ! command -v victoria-metrics >/dev/null; then
    echo "installing VictoriaMetrics from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq victoria-metrics >&2
fi

# The TLS tests make their certificates with the openssl command line.
if ! command -v openssl >/dev/null; then
    echo "installing openssl from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq openssl >&2
fi

cargo test --workspace --locked "$@"

# The SQL functions that read stored blocks (storage/migrations/0006_sql_access.sql), fed hand-encoded and
# malformed blocks.
scripts/test-sql-access.sh "$TRACEPOST_TEST_DATABASE_URL"
