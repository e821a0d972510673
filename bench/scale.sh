#!/usr/bin/env bash
# Scale benchmark: bench/query.sh with 100 million spans (issue 10's size and query targets at 10x the load).
# Reports the same: ingest rate over the whole load, size on disk per relation family and per span, and both
# query passes (before any ANALYZE and after VACUUM ANALYZE).
#
#   bench/scale.sh [SPANS] [REQUESTS]      (default 100000000 and 200)
#
# Needs about 25 GB of free disk for PostgreSQL (~200 bytes a span plus WAL) and, on 2 cores, some 10-20
# minutes of loading at 100-200k spans/s, plus the VACUUM ANALYZE and ~10 minutes of queries. The load sets
# the collector's partition maintenance interval to a day, so nothing is ANALYZEd before pass 1 (the
# statistics printed before it show so). The private cluster is `querybench`, as
# for bench/query.sh (the 100M database replaces a 10M one); TRACEPOST_BENCH_KEEP=1 reuses a loaded one.
set -euo pipefail
exec "$(dirname "$0")/query.sh" "${1:-100000000}" "${2:-200}"
