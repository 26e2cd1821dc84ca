#!/usr/bin/env bash
# Fuzzes the HTTP API with schemathesis (from PyPI, in a virtualenv under target/) against a real
# `gantry server` on the embedded SQLite store, for a bounded number of examples per operation.
# Fails on any 5xx answer and on any answer that breaks the OpenAPI document the server serves.
#
#   scripts/schemathesis.sh [GANTRY_BINARY] [MAX_EXAMPLES]
set -euo pipefail
cd "$(dirname "$0")/.."
gantry=${1:-target/release/gantry}
examples=${2:-25}
venv=target/venv
if [ ! -x "$venv/bin/schemathesis" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet schemathesis==4.32.5
fi
dir=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT

# A real project with a real repository, so that path parameters can name existing things.
git init -q -b main "$dir/repo"
printf 'build:\n  script: [echo hi]\n' > "$dir/repo/.gitlab-ci.yml"
git -C "$dir/repo" add .
git -C "$dir/repo" -c user.name=fuzz -c user.email=fuzz@example.invalid commit -q -m fuzz

GANTRY_ADMIN_TOKEN=fuzz-admin GANTRY_REGISTRATION_TOKEN=fuzz-registration \
    "$gantry" server --listen 127.0.0.1:0 --data-dir "$dir/data" 2> "$dir/server.log" &
pid=$!
url=
for _ in $(seq 300); do
    url=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$dir/server.log" | head -n 1 || true)
    [ -n "$url" ] && break
    sleep 0.1
done
if [ -z "$url" ]; then
    echo "schemathesis.sh: the server did not start:" >&2
    cat "$dir/server.log" >&2
    exit 1
fi
python3 - "$url" "$dir/repo" <<'PY'
import json, sys, urllib.request
url, repo = sys.argv[1], sys.argv[2]
def post(path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": "Bearer fuzz-admin", "Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).read()
post("/api/v1/projects", {"name": "fuzz", "repo_url": repo, "webhook_secret": "fuzz-secret",
                          "variables": [{"key": "SECRET", "value": "hunter2-masked", "masked": True}]})
post("/api/v1/projects/fuzz/pipelines", {"ref": "main"})
PY

status=0
SCHEMATHESIS_HOOKS=scripts/schemathesis_hooks.py "$venv/bin/schemathesis" run "$url/api/v1/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --header "Authorization: Bearer fuzz-admin" \
    --max-examples "$examples" --seed 1 --workers 1 --request-timeout 10 \
    --phases examples,coverage,fuzzing \
    --report junit --report-dir target/schemathesis || status=$?
if ! kill -0 "$pid" 2>/dev/null; then
    echo "schemathesis.sh: the server died during the run:" >&2
    tail -n 50 "$dir/server.log" >&2
    exit 1
fi
exit "$status"
