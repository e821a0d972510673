#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL servers: TRACEPOST_TEST_DATABASE_URL if set, else a
# private cluster from scripts/pg-cluster.sh (installing PostgreSQL's Debian packages when missing), plus a
# private TLS 1.3-only cluster for the TLS tests. Extra arguments go to `cargo test`.
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

cargo test --workspace --locked "$@"
