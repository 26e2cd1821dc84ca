#!/usr/bin/env bash
# Container executor benchmarks, side by side on the same engine (the one scripts/engine.sh starts):
#
#   bench/container.sh [--quick]
#
# 1. overhead:  `gantry run` of a one-job pipeline running `true` in gantry-test/base:1, against
#               `docker run --rm gantry-test/base:1 true` (create, start, run, remove), and the same
#               pipeline in the shell executor, to separate Gantry's own cost from the container's.
# 2. twenty:    20 such jobs with --concurrency 2, against 20 `docker run --rm` two at a time
#               (xargs -P 2).
# 3. workspace: a repository of 10,000 files. Gantry bind-mounts the prepared workspace; the peer
#               (gitlab-ci-local) copies the source into a volume through a helper container for
#               every job (`docker cp` into a helper, then the job mounts the volume). The peer itself
#               needs its helper image from a registry, which this machine has none of, so its
#               mechanism is reproduced with the docker CLI.
#
# Needs hyperfine (apt-get install hyperfine) and a release build (cargo build --release -p gantry,
# or GANTRY_BIN). Results go to bench/out/container-*.md and are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
runs=10
[ "${1:-}" = "--quick" ] && runs=3

eval "$(bash scripts/engine.sh)"
export DOCKER_HOST
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
gantry=${GANTRY_BIN:-$root/target/release/gantry}
[ -x "$gantry" ] || cargo build --release -p gantry >&2
image=gantry-test/base:1
out=$root/bench/out
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

repo() { # repo DIR YAML: a git repository with one commit
    mkdir -p "$1"
    printf '%s' "$2" >"$1/.gitlab-ci.yml"
    git -C "$1" init -q -b main
    git -C "$1" add -A
    git -C "$1" -c user.name=b -c user.email=b@example.com commit -qm init
}

# 1. overhead
repo "$work/one" "job:
  image: $image
  script: [\"true\"]
"
repo "$work/one-shell" "job:
  script: [\"true\"]
"
hyperfine -N --warmup 2 --runs "$runs" --export-markdown "$out/container-overhead.md" \
    --prepare "rm -rf $work/one/.gantry $work/one-shell/.gantry" \
    -n 'docker run --rm IMAGE true' "docker run --rm $image true" \
    -n 'gantry run (container job: true)' "$gantry run --cwd $work/one --output json" \
    -n 'gantry run (shell job: true)' "$gantry run --cwd $work/one-shell --output json"

# 2. twenty jobs, two at a time
yaml=""
for i in $(seq 1 20); do yaml+="job$i:
  image: $image
  script: [\"true\"]
"; done
repo "$work/twenty" "$yaml"
hyperfine -N --warmup 1 --runs "$(( runs < 5 ? runs : 5 ))" --export-markdown "$out/container-twenty.md" \
    --prepare "rm -rf $work/twenty/.gantry" \
    -n '20 x docker run --rm, 2 at a time' \
    "bash -c 'seq 20 | xargs -P 2 -I{} docker run --rm $image true'" \
    -n 'gantry run: 20 container jobs, --concurrency 2' \
    "$gantry run --cwd $work/twenty --output json --concurrency 2"

# 3. workspace of 10,000 files
big=$work/big
mkdir -p "$big"
python3 - "$big" <<'EOF'
import os, sys
root = sys.argv[1]
for d in range(100):
    os.makedirs(f"{root}/src/d{d:03}", exist_ok=True)
    for f in range(100):
        with open(f"{root}/src/d{d:03}/f{f:03}.txt", "w") as fh:
            fh.write(f"file {d} {f}\n" * 8)
EOF
repo "$big" "job:
  image: $image
  script: [\"test -f src/d099/f099.txt\"]
"
cat >"$work/copy-into-volume.sh" <<EOF
#!/usr/bin/env bash
# What gitlab-ci-local does per job: a volume, a helper container, docker cp of the source, then the
# job container on the volume; everything removed after.
set -euo pipefail
v=gcl-bench-\$\$
docker volume create --label gantry.managed=true "\$v" >/dev/null
docker create --name "\$v" -v "\$v:/builds" $image true >/dev/null
docker cp "$big/." "\$v:/builds/" >/dev/null
docker rm "\$v" >/dev/null
docker run --rm -v "\$v:/builds" -w /builds $image test -f src/d099/f099.txt
docker volume rm "\$v" >/dev/null
EOF
hyperfine -N --warmup 1 --runs "$(( runs < 3 ? runs : 3 ))" --export-markdown "$out/container-workspace-10k.md" \
    --prepare "rm -rf $big/.gantry" \
    -n 'copy into a volume via a helper container (peer mechanism)' "bash $work/copy-into-volume.sh" \
    -n 'gantry run: bind-mounted workspace' "$gantry run --cwd $big --output json"

for f in overhead twenty workspace-10k; do
    echo
    echo "### $f"
    cat "$out/container-$f.md"
done
