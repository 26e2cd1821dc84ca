#!/usr/bin/env bash
# Verification and rollback costs (issue 19; method and latest figures in BENCHMARKS.md):
#   (a) the CPU a `gantry run` uses while 50 verifications wait between measurements
#       (target: under 1% of a core);
#   (b) from `failure_limit` crossed to the rollback job starting, with `gantry run` and through
#       a server and an agent (target: under 1 s).
#
#   bench/rollback.sh [RUNS]        (RUNS failed deploys for (b), default 5)
#
# GANTRY_BIN picks the binary (default: a release build). Everything runs on 127.0.0.1 in a
# temporary directory that the script removes; the verifications check a local HTTP server.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${GANTRY_BIN:-}" ]; then
    cargo build --quiet --release -p gantry
    GANTRY_BIN=$PWD/target/release/gantry
fi
export GANTRY_BIN RUNS=${1:-5}
exec python3 - <<'EOF'
import json, os, re, shutil, signal, subprocess, sys, tempfile, threading, time
import urllib.request
from datetime import datetime

GANTRY = os.environ["GANTRY_BIN"]
RUNS = int(os.environ["RUNS"])
TMP = tempfile.mkdtemp(prefix="gantry-rollback-bench-")
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("CI_", "GITLAB_", "GANTRY_"))}
procs = []


def spawn(args, **kw):
    p = subprocess.Popen(args, env=kw.pop("env", ENV), **kw)
    procs.append(p)
    return p


def cleanup():
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    shutil.rmtree(TMP, ignore_errors=True)


def git(repo, *args):
    subprocess.run(["git", "-C", repo, "-c", "user.name=bench", "-c", "user.email=b@example.com",
                    *args], check=True, capture_output=True)


def repo_with(name, ci):
    repo = os.path.join(TMP, name)
    os.makedirs(repo)
    with open(os.path.join(repo, ".gitlab-ci.yml"), "w") as f:
        f.write(ci)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "bench")
    return repo


# The checked service: /healthz answers 200, anything else 404.
site = os.path.join(TMP, "site")
os.makedirs(site)
open(os.path.join(site, "healthz"), "w").write("ok\n")
http = spawn([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0", "-d", site],
             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
PORT = int(re.search(r"port (\d+)", http.stdout.readline()).group(1))


def cpu_seconds(pid):
    """User + system CPU time of process pid, all its threads."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu():
    """(a) 50 jobs verifying at once, interval 60 s: gantry's CPU over 20 s of waiting."""
    ci = f"""verify:
  parallel: 50
  script: echo deployed
  verify:
    interval: 60s
    duration: 60s
    http:
      - url: http://127.0.0.1:{PORT}/healthz
"""
    repo = repo_with("idle", ci)
    run = spawn([GANTRY, "run", "--concurrency", "50"], cwd=repo, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True)
    waiting = 0
    for line in run.stderr:
        if ": verifying: " in line:
            waiting += 1
            if waiting == 50:
                break
    threading.Thread(target=lambda: run.stderr.read(), daemon=True).start()
    time.sleep(2)
    window = 20.0
    before, t0 = cpu_seconds(run.pid), time.monotonic()
    time.sleep(window)
    used, took = cpu_seconds(run.pid) - before, time.monotonic() - t0
    run.send_signal(signal.SIGINT)
    run.wait()
    share = 100 * used / took
    print(f"(a) 50 verifications waiting: {used:.2f} s of CPU in {took:.1f} s = {share:.2f}% of a "
          f"core (target < 1%: {'met' if share < 1 else 'NOT met'})")


DEPLOY_CI = f"""deploy:
  environment: {{name: production}}
  script: echo "deploying $CHECK"
  verify:
    interval: 0.2s
    duration: 0.4s
    http:
      - url: http://127.0.0.1:{PORT}/$CHECK
        consecutive_failures: 1
    on_failure: rollback
"""


def summary(what, gaps):
    gaps = sorted(gaps)
    if not gaps:
        print(f"(b) {what}: no rollback started")
        return
    median = gaps[len(gaps) // 2]
    print(f"(b) {what}: median {median * 1000:.0f} ms, max {gaps[-1] * 1000:.0f} ms over "
          f"{len(gaps)} rollbacks (target < 1 s: {'met' if gaps[-1] < 1 else 'NOT met'})")


def local_rollback():
    """(b) locally: the stderr line of the failed verification (written unbuffered when the limit
    is crossed) to the rollback's job_started event (stdout, flushed at least every 40 ms while
    lines come): an upper bound."""
    repo = repo_with("local", DEPLOY_CI)
    ok = subprocess.run([GANTRY, "run", "--variable", "CHECK=healthz"], cwd=repo, env=ENV,
                        capture_output=True)
    assert ok.returncode == 0, ok.stderr.decode()
    gaps = []
    for _ in range(RUNS):
        run = spawn([GANTRY, "run", "--output", "json", "--variable", "CHECK=missing"], cwd=repo,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        crossed = []

        def watch():
            for line in run.stderr:
                if "verification failed" in line and not crossed:
                    crossed.append(time.monotonic())
        t = threading.Thread(target=watch)
        t.start()
        started = None
        for line in run.stdout:
            e = json.loads(line)
            if e.get("event") == "job_started" and "(rollback)" in e.get("job", ""):
                started = time.monotonic()
        run.wait()
        t.join()
        if crossed and started:
            gaps.append(started - crossed[0])
    summary("gantry run", gaps)


def api(url, path, body=None, token="admin-bench-token"):
    req = urllib.request.Request(url + path, method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def when(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def wait(what, f, seconds=60):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        v = f()
        if v is not None:
            return v
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def server_rollback():
    """(b) through a server and an agent (SQLite): the failed deploy job's finished_at (when the
    agent's finish reached the server, just after the limit was crossed) to the rollback attempt's
    started_at (when the agent took it), both from the API."""
    repo = repo_with("served", DEPLOY_CI)
    env = dict(ENV, GANTRY_ADMIN_TOKEN="admin-bench-token",
               GANTRY_REGISTRATION_TOKEN="registration-bench-token")
    server = spawn([GANTRY, "server", "--listen", "127.0.0.1:0", "--data-dir",
                    os.path.join(TMP, "data")], env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, text=True)
    url = None
    for line in server.stderr:
        m = re.search(r"listening on (\S+)", line)
        if m:
            url = m.group(1).rstrip("/")
            break
    threading.Thread(target=lambda: server.stderr.read(), daemon=True).start()
    api(url, "/api/v1/projects", {"name": "bench", "repo_url": repo, "webhook_secret": "s"})
    os.makedirs(os.path.join(TMP, "agent"))
    spawn([GANTRY, "agent", "--server", url, "--token", "registration-bench-token", "--name",
           "bench", "--work-dir", os.path.join(TMP, "agent")], env=ENV,
          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def pipeline(check):
        before = len(api(url, "/api/v1/projects/bench/pipelines"))
        api(url, "/api/v1/projects/bench/pipelines",
            {"ref": "main", "variables": [{"key": "CHECK", "value": check}]})
        pid = wait("the pipeline", lambda: (lambda l: l[0]["id"] if len(l) > before else None)(
            api(url, "/api/v1/projects/bench/pipelines")))
        return wait("the pipeline's end", lambda: (lambda p: p if p["status"] in (
            "success", "failed", "canceled", "skipped") else None)(
            api(url, f"/api/v1/pipelines/{pid}")))

    first = pipeline("healthz")
    assert first["status"] == "success", first
    gaps = []
    for _ in range(RUNS):
        failed = pipeline("missing")
        job = next(j for j in failed["jobs"] if j["name"] == "deploy")

        def rollback_started():
            for p in api(url, "/api/v1/projects/bench/pipelines"):
                for j in api(url, f"/api/v1/pipelines/{p['id']}")["jobs"]:
                    if j["name"] == "deploy" and j["attempt"] > 1 and j["started_at"] and \
                            when(j["started_at"]) >= when(job["finished_at"]):
                        return j
            return None
        try:
            again = wait("the rollback", rollback_started, 15)
        except SystemExit as e:
            print(f"(b) server: {e}")
            break
        gaps.append(when(again["started_at"]) - when(job["finished_at"]))
        wait("the rollback's end", lambda: api(url, f"/api/v1/jobs/{again['id']}")
             if api(url, f"/api/v1/jobs/{again['id']}")["finished_at"] else None)
    summary("server and agent", gaps)


try:
    idle_cpu()
    local_rollback()
    server_rollback()
finally:
    cleanup()
EOF
