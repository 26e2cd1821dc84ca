#!/usr/bin/env bash
# The web UI's heaviest page: a pipeline of 200 jobs (10 stages of 20, each job needing the job of
# its row in the stage before: 180 edges), as the server renders it (store read, graph layout,
# HTML), timed by curl over N requests (default 50) after one warm-up; prints the median and p95.
#
#   bench/ui.sh [N]    (then bench/ui-log.sh: the job page with a 50 MiB log)
#
# Builds the release binary first; GANTRY_BIN=PATH measures another build instead (no cargo build).
# No agent runs: the jobs stay pending, which the page shows as it would show them running.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-50}
if [ -z "${GANTRY_BIN:-}" ]; then
    cargo build --release -p gantry >&2
fi
gantry=$(realpath "${GANTRY_BIN:-target/release/gantry}")
tmp=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

mkdir "$tmp/repo"
python3 - "$tmp/repo/.gitlab-ci.yml" <<'PY'
import sys
stages = [f"s{i}" for i in range(10)]
out = ["stages: [" + ", ".join(stages) + "]"]
for i, s in enumerate(stages):
    for j in range(20):
        out.append(f"job-{i}-{j}:\n  stage: {s}\n  script: [echo {i} {j}]")
        if i:
            out.append(f"  needs: [job-{i-1}-{j}]")
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PY
git -C "$tmp/repo" init -q -b main
git -C "$tmp/repo" add -A
git -C "$tmp/repo" -c user.name=bench -c user.email=bench@example.com commit -qm "200 jobs"

GANTRY_ADMIN_TOKEN=bench-admin GANTRY_REGISTRATION_TOKEN=bench-registration \
    "$gantry" server --listen 127.0.0.1:0 --data-dir "$tmp/data" 2>"$tmp/server.log" &
pid=$!
url=
for _ in $(seq 100); do
    url=$(grep -o 'listening on [^ ]*' "$tmp/server.log" | head -1 | cut -d' ' -f3 || true)
    [ -n "$url" ] && break
    sleep 0.1
done
[ -n "$url" ] || { cat "$tmp/server.log" >&2; exit 1; }
url=${url%/}
auth=(-H "Authorization: Bearer bench-admin" -H "Content-Type: application/json")
curl -sf "${auth[@]}" -d "{\"name\":\"bench\",\"repo_url\":\"$tmp/repo\"}" "$url/api/v1/projects" >/dev/null
curl -sf "${auth[@]}" -d '{"ref":"main"}' "$url/api/v1/projects/bench/pipelines" >/dev/null
for _ in $(seq 300); do
    jobs=$(curl -s "${auth[@]}" "$url/api/v1/pipelines/1" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["jobs"]))' 2>/dev/null || echo 0)
    [ "$jobs" = 200 ] && break
    sleep 0.1
done
[ "$jobs" = 200 ] || { echo "the pipeline has $jobs jobs, not 200" >&2; exit 1; }

page() { curl -sf -o /dev/null -w '%{time_total}\n' -b gantry_session=bench-admin "$url/pipelines/1"; }
page >/dev/null
for _ in $(seq "$n"); do page; done | sort -n | awk '{ t[NR] = $1 } END {
    printf "pipeline page, 200 jobs, %d requests: median %.1f ms, p95 %.1f ms\n",
        NR, t[int((NR + 1) / 2)] * 1000, t[int(NR * 0.95 + 0.5)] * 1000 }'

# The job page with a 50 MiB log, in headless Chromium.
GANTRY_BIN="$gantry" bench/ui-log.sh
