#!/usr/bin/env bash
# Fuzzes gantry-pipeline with cargo-fuzz (libFuzzer).
#
#   fuzz/run.sh [SECONDS] [TARGET...]     # default: 30 seconds each for yaml, expr and compile
#
# Works on the stable toolchain: cargo-fuzz passes nightly-only flags (-Z...), which RUSTC_BOOTSTRAP=1
# allows. Each target starts from a copy of fuzz/seeds/<target> in fuzz/corpus/<target> (git-ignored,
# kept between runs so coverage accumulates). A crash, panic, timeout or OOM is saved under
# fuzz/artifacts/<target>/ and makes this script exit non-zero (after the other targets have run).
#
# Environment: FUZZ_SANITIZER (default `none`: the crate is safe Rust; `address` works too, slower),
# FUZZ_JOBS (libFuzzer -fork=N workers, default 1), FUZZ_ARGS (extra libFuzzer flags).
set -euo pipefail

secs="${1:-30}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(yaml expr compile)
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$root/fuzz/target"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

sanitizer="${FUZZ_SANITIZER:-none}"
build=(--fuzz-dir fuzz --sanitizer "$sanitizer" --debug-assertions)

echo "== building fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build "${build[@]}"

failed=()
for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t"
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    cp -n fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null || true
    args=(-max_total_time="$secs" -max_len=4096 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1)
    if [ -f "fuzz/dict/$t.dict" ]; then
        args+=(-dict="fuzz/dict/$t.dict")
    fi
    if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then
        args+=(-fork="$FUZZ_JOBS" -ignore_crashes=0)
    fi
    # shellcheck disable=SC2206
    args+=(${FUZZ_ARGS:-})
    echo "== fuzzing $t for ${secs}s"
    if ! cargo fuzz run "${build[@]}" "$t" "$corpus" -- "${args[@]}"; then
        echo "!! $t: crash; the input is in fuzz/artifacts/$t/ (reproduce: RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=fuzz/target cargo fuzz run ${build[*]} $t fuzz/artifacts/$t/<file>)" >&2
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "ok: ${targets[*]} ran ${secs}s each without a crash"
