#!/usr/bin/env bash
# Reports: parse a generated 100 MB JUnit file and a 50 MB SARIF log (streaming, flat memory;
# target 100 MB/s or more), then decide a gate over 20 jobs' summaries (target under 10 ms).
#
#   bench/reports.sh [JUNIT_MB] [SARIF_MB]      (defaults 100 and 50)
#
# The inputs are written to a temporary directory that the example removes. Prints MB/s and the
# peak resident memory of each parse, and the gate's median time.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet --release -p gantry-reports --example reports_bench -- "${1:-100}" "${2:-50}"
