#!/usr/bin/env bash
# Remote includes from the include cache: `gantry lint` and `gantry run --list-json` on a 100-job
# pipeline whose jobs come from 20 includes (10 `include:project` files at a tag, 4 templates,
# 4 components at a tag, 2 `include:remote` URLs), all already in the cache
# ($XDG_CACHE_HOME/gantry/includes/), so nothing is fetched. Target: each under 250 ms.
#
#   bench/includes.sh [RUNS]        (default 20 runs after 3 warm-up runs)
#
# Uses GANTRY_BIN, else target/release/gantry (built if missing). Prints mean, min and max.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
runs=${1:-20}
gantry=${GANTRY_BIN:-$root/target/release/gantry}
[ -x "$gantry" ] || cargo build --release -p gantry >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 - "$work" <<'EOF'
import os, sys
work = sys.argv[1]
repo = os.path.join(work, "repo")
cache = os.path.join(work, "cache", "gantry", "includes")
host = "gitlab.example.com"

def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)

def jobs(prefix, stage_names):
    """Five jobs in the style of a real pipeline: a hidden template, extends, rules, needs, matrix-free."""
    out = [f""".{prefix}-base:
  image: registry.example.com/ci/build:1.2
  variables:
    GOFLAGS: -mod=readonly
    {prefix.upper().replace('-', '_')}_DIR: build/{prefix}
  before_script:
    - echo "setting up {prefix}"
    - export PATH="$CI_PROJECT_DIR/bin:$PATH"
  cache:
    key: {prefix}-$CI_COMMIT_REF_SLUG
    paths: [.cache/{prefix}/]
  rules:
    - if: $CI_PIPELINE_SOURCE == "merge_request_event"
    - if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH
    - if: $CI_COMMIT_TAG
"""]
    for i in range(5):
        stage = stage_names[i % len(stage_names)]
        needs = f"\n  needs: [{prefix}-job-{i-1}]" if i > 0 and i % 2 == 0 else ""
        out.append(f"""{prefix}-job-{i}:
  extends: .{prefix}-base
  stage: {stage}{needs}
  script:
    - echo "{prefix} step {i}"
    - make -C ${prefix.upper().replace('-', '_')}_DIR target-{i}
  artifacts:
    paths: [build/{prefix}/out-{i}/]
    expire_in: 1 week
  retry:
    max: 2
    when: [runner_system_failure, stuck_or_timeout_failure]
""")
    return "\n".join(out)

stages = ["build", "test", "deploy"]
includes = []
# 10 files of a project, at a tag.
ref_dir = os.path.join(cache, "project", host, "group/ci-lib", "-", "v1.4.0")
write(os.path.join(ref_dir, ".tag"), "")
files = [f"ci/part-{n}.yml" for n in range(10)]
for n, f in enumerate(files):
    write(os.path.join(ref_dir, f), jobs(f"lib{n}", stages))
includes.append("  - project: group/ci-lib\n    ref: v1.4.0\n    file:\n" + "".join(f"      - /{f}\n" for f in files))
# 4 templates.
for n in range(4):
    name = f"Bench/Template-{n}.gitlab-ci.yml"
    write(os.path.join(cache, "project", host, "gitlab-org/gitlab", "-", "master", "lib/gitlab/ci/templates", name), jobs(f"tpl{n}", stages))
    includes.append(f"  - template: {name}\n")
# 4 components at a tag, with inputs.
comp_dir = os.path.join(cache, "project", host, "group/components", "-", "2.1.0")
write(os.path.join(comp_dir, ".tag"), "")
for n in range(4):
    body = "spec:\n  inputs:\n    stage:\n      default: test\n---\n" + jobs(f"comp{n}", ["$[[ inputs.stage ]]"])
    write(os.path.join(comp_dir, "templates", f"c{n}.yml"), body)
    includes.append(f"  - component: {host}/group/components/c{n}@2.1.0\n    inputs:\n      stage: test\n")
# 2 remote URLs (fresh: just written).
for n in range(2):
    write(os.path.join(cache, "remote", "https", "ci.example.com", "shared", f"remote-{n}.yml"), jobs(f"rem{n}", stages))
    includes.append(f"  - remote: https://ci.example.com/shared/remote-{n}.yml\n")
assert len(includes) == 11 and sum(1 for _ in files) == 10  # 10 files in one project include
write(os.path.join(repo, ".gitlab-ci.yml"), f"""stages: [build, test, deploy]
workflow:
  rules:
    - if: $CI_COMMIT_TAG
    - if: $CI_COMMIT_BRANCH
variables:
  GIT_DEPTH: "20"
default:
  interruptible: true
  tags: [linux]
include:
{"".join(includes)}""")
EOF

git -C "$work/repo" init -q -b main
git -C "$work/repo" -c user.name=b -c user.email=b@example.com add -A
git -C "$work/repo" -c user.name=b -c user.email=b@example.com commit -q -m bench
export XDG_CACHE_HOME=$work/cache GANTRY_GITLAB_URL=https://gitlab.example.com
cd "$work/repo"
"$gantry" lint | tail -1
jobs=$("$gantry" run --list-json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
echo "jobs: $jobs"
[ "$jobs" = 100 ] || { echo "expected 100 jobs" >&2; exit 1; }

python3 - "$gantry" "$runs" <<'EOF'
import subprocess, sys, time
gantry, runs = sys.argv[1], int(sys.argv[2])
for name, args in [("gantry lint", ["lint"]), ("gantry run --list-json", ["run", "--list-json"])]:
    for _ in range(3):
        subprocess.run([gantry, *args], stdout=subprocess.DEVNULL, check=True)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([gantry, *args], stdout=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - t) * 1000)
    mean = sum(times) / len(times)
    print(f"{name:28} mean {mean:6.1f} ms  min {min(times):6.1f}  max {max(times):6.1f}  ({runs} runs)  target 250 ms: {'yes' if mean < 250 else 'NO'}")
EOF
