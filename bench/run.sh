#!/usr/bin/env bash
# Benchmark Gantry against gitlab-ci-local (the peer) in one run.
#
#   bench/run.sh [--quick] [--keep] [--wait-idle] [NAME...]
#
# NAME is any of: three-stages fifty-jobs six-by-ten per-job-overhead
# log-200k log-2m workspace-10k (default: all). --quick does fewer runs
# (and reuses the last recorded one-shot peer run of six-by-ten); --keep
# keeps the generated fixture repositories; --wait-idle waits before each
# measured case (up to 15 min) until other processes use < 15% of the CPUs.
#
# Steps: install the peer and tools (bench/setup-peer.sh), build Gantry in
# release mode, run the benchmarks (bench/harness.py). Raw results land in
# bench/out/; the Markdown summary is printed and saved as bench/out/results.md.
# If the peer cannot be installed, or Gantry does not build, the run goes on
# and the missing tool's columns read "n/a" / "pending".
set -uo pipefail
cd "$(dirname "$0")/.."

for a in "$@"; do
    case "$a" in
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    esac
done

if ! bash bench/setup-peer.sh; then
    echo "run.sh: WARNING: the peer (gitlab-ci-local) is not available; only Gantry will be measured" >&2
fi

if [ -z "${GANTRY_BIN:-}" ]; then
    if ! cargo build --release -p gantry >&2; then
        echo "run.sh: WARNING: 'cargo build --release -p gantry' failed; Gantry columns will read 'pending'" >&2
        export GANTRY_UNAVAILABLE="cargo build failed"
    fi
fi

exec python3 bench/harness.py "$@"
