#!/usr/bin/env bash
# Server and agent benchmarks: dispatch latency, dispatch throughput through 10 agents, webhook
# intake (wrk) and memory, on SQLite and on PostgreSQL (a fresh database each run).
#
#   bench/server.sh [sqlite|postgres|both] [extra bench/server.py flags]
#
# Installs wrk (Debian) if missing, builds the release binary, starts PostgreSQL with
# scripts/postgres.sh for the postgres run. Results: bench/out/server-<store>.json.
#
# GANTRY_BIN=PATH measures another build instead (no cargo build), e.g. a release binary of an
# earlier commit for a before/after comparison; GANTRY_BENCH_TAG=before names its results
# bench/out/server-<store>-before.json.
#
# The PostgreSQL run has a cluster of its own (target/bench-postgres, port 55442; override with
# GANTRY_BENCH_PG_DIR and GANTRY_BENCH_PG_PORT), not the tests' one: databases that test runs leave
# behind keep autovacuum busy and would be measured too.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-both}
shift || true
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
if [ -z "${GANTRY_BIN:-}" ]; then
    cargo build --release -p gantry >&2
fi
gantry=${GANTRY_BIN:-target/release/gantry}
if [ "$which" = sqlite ] || [ "$which" = both ]; then
    python3 bench/server.py --gantry "$gantry" --store sqlite "$@"
fi
if [ "$which" = postgres ] || [ "$which" = both ]; then
    eval "$(GANTRY_PG_DIR=${GANTRY_BENCH_PG_DIR:-$PWD/target/bench-postgres} \
        GANTRY_PG_PORT=${GANTRY_BENCH_PG_PORT:-55442} bash scripts/postgres.sh)"
    db="gantry_bench_$(date +%s)"
    psql "$GANTRY_TEST_POSTGRES_URL" -qc "CREATE DATABASE $db" >&2
    url="${GANTRY_TEST_POSTGRES_URL%/*}/$db"
    status=0
    python3 bench/server.py --gantry "$gantry" --store postgres --pg-url "$url" "$@" || status=$?
    psql "$GANTRY_TEST_POSTGRES_URL" -qc "DROP DATABASE $db WITH (FORCE)" >&2 || true
    exit "$status"
fi
