#!/usr/bin/env python3
"""Server and agent benchmarks (run through bench/server.sh).

Measures, on the store given by --store (sqlite or postgres):

  * dispatch latency: single-job pipelines triggered one after another while
    idle agents wait; latency = job.started_at - job.queued_at, read from the
    API's millisecond timestamps (the issue's definition: from the job becoming
    ready to an idle agent starting it);
  * dispatch throughput: one pipeline of N trivial jobs (`true`) through 10
    agents; jobs/s = N / (last finished_at - first queued_at); beside it, the
    machine's ceiling: as many bare job processes (bash; then git checkout +
    clean + bash) started 10 at a time with no CI system;
  * webhook intake: wrk sends valid GitLab push deliveries (each with its own
    X-Gitlab-Event-UUID) for a fixed time, twice: as fast as 32 connections go
    (saturation), then paced at --intake-rate/s (5,000, the target) on 64
    connections; each time the accepted count is compared with the deliveries
    counted through the API afterwards; each delivery is a push of its own (its
    own `before`), since a push replayed under a new id is a duplicate;
  * held webhook bodies (with --intake-only, --held N): the server's RSS while N
    connections each send a 10 MiB body but its last byte, for an unknown
    project and for a known one with a signature header;
  * memory: RSS of an idle server and an idle agent; with --memory, the server's
    RSS with 1,000 pipelines of history while 50 SSE clients follow a live job's
    log, the server's and agents' RSS while one job prints 1 GB (--log-mb), and
    the peak RSS of a fresh agent that uploads and then downloads a 512 MB
    artifact (--artifact-mb; 0 skips it).

Prints the results as JSON (progress lines on stderr) and writes bench/out/server-<store>.json.

Usage: server.py --gantry BIN --store sqlite|postgres [--pg-url URL]
                 [--latency-runs N] [--jobs N] [--agents N] [--wrk-seconds S]
                 [--wrk-connections N] [--intake-rate N] [--intake-only [--held N]] [--server-log FILE]
                 [--memory [--history N] [--streams N] [--log-mb MB]
                           [--artifact-mb MB]]
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

ADMIN = "bench-admin-token"
REGISTRATION = "bench-registration-token"
SECRET = "bench-webhook-secret"


def log(msg):
    print(f"server.py: {msg}", file=sys.stderr, flush=True)


class Api:
    def __init__(self, base):
        self.base = base

    def call(self, method, path, body=None, headers=None, raw=False):
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {ADMIN}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        with urllib.request.urlopen(req, timeout=60) as resp:
            payload = resp.read()
            if raw:
                return resp.status, dict(resp.headers), payload
            return json.loads(payload) if payload else None


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_s(pid):
    """CPU seconds of a process and its waited-for children (utime, stime, cutime, cstime)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples the RSS of some processes every 50 ms until stopped; keeps the maximum of each."""

    def __init__(self, pids):
        self.pids = dict(pids)
        self.max = {k: 0 for k in self.pids}
        self.first = {k: rss_kb(p) for k, p in self.pids.items()}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            for k, p in self.pids.items():
                self.max[k] = max(self.max[k], rss_kb(p) or 0)
            time.sleep(0.05)

    def stop(self):
        self._stop.set()
        self._t.join()
        return {k: {"start_kb": self.first[k], "max_kb": self.max[k]} for k in self.pids}


def ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def make_repo(root, yaml_text):
    repo = os.path.join(root, "repo")
    os.makedirs(repo)
    git(repo, "init", "-q", "-b", "main")
    with open(os.path.join(repo, ".gitlab-ci.yml"), "w") as f:
        f.write(yaml_text)
    git(repo, "add", ".")
    git(repo, "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "commit", "-q", "-m", "bench")
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()
    return repo, sha


class Server:
    def __init__(self, gantry, root, database_url, lease="30s", max_artifacts=None, log=None):
        self.data = os.path.join(root, "server-data")
        env = dict(os.environ, GANTRY_ADMIN_TOKEN=ADMIN, GANTRY_REGISTRATION_TOKEN=REGISTRATION)
        # The big-log case streams --log-mb past the default max_job_log: keep all of it.
        env.setdefault("GANTRY_MAX_JOB_LOG", str(4 << 30))
        cmd = [gantry, "server", "--listen", "127.0.0.1:0", "--data-dir", self.data, "--lease-timeout", lease]
        if max_artifacts:
            config = os.path.join(root, "gantry.toml")
            with open(config, "w") as f:
                f.write(f"max_artifacts_bytes = {max_artifacts}\n")
            cmd += ["--config", config]
        if database_url:
            cmd += ["--database-url", database_url]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        self.url = None
        lines = []
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"(http://127\.0\.0\.1:\d+)", line)
            if m:
                self.url = m.group(1)
                break
        if not self.url:
            raise SystemExit("server did not print its address:\n" + "".join(lines))
        # The rest of the server's log is read and dropped, or kept in --server-log.
        sink = open(log, "w") if log else None
        threading.Thread(target=lambda: [sink.write(l) if sink else None for l in self.proc.stderr],
                         daemon=True).start()
        self.api = Api(self.url)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_agents(gantry, root, url, n):
    procs = []
    for i in range(n):
        work = os.path.join(root, f"agent-{i}")
        procs.append(subprocess.Popen(
            [gantry, "agent", "--server", url, "--token", REGISTRATION, "--work-dir", work, "--name", f"bench-{i}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def wait_agents(api, n, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(api.call("GET", "/api/v1/agents")) >= n:
            return
        time.sleep(0.1)
    raise SystemExit("agents did not register")


def wait_pipeline(api, pid, timeout=600, project=None):
    """Waits for pipeline `pid` to end and answers it with its jobs. With `project`, polls the
    project's pipeline list (no jobs), so that polling a big pipeline does not load the server."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if project:
            page = api.call("GET", f"/api/v1/projects/{project}/pipelines?per_page=100")
            status = next((p["status"] for p in page if p["id"] == pid), None)
        else:
            status = api.call("GET", f"/api/v1/pipelines/{pid}")["status"]
        if status in ("success", "failed", "canceled", "skipped"):
            return api.call("GET", f"/api/v1/pipelines/{pid}")
        time.sleep(0.05)
    raise SystemExit(f"pipeline {pid} did not finish")


def trigger(api, project, timeout=60):
    """Triggers a pipeline on main; answers its id (the trigger answers a delivery id)."""
    d = api.call("POST", f"/api/v1/projects/{project}/pipelines", {"ref": "main"})
    deadline = time.time() + timeout
    while time.time() < deadline:
        for item in api.call("GET", f"/api/v1/projects/{project}/deliveries?per_page=100"):
            if item["id"] == d["id"] and item.get("pipeline_id"):
                return item["pipeline_id"]
        time.sleep(0.01)
    raise SystemExit(f"delivery {d['id']} made no pipeline")


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def bench(args):
    results = {"store": args.store}
    root = tempfile.mkdtemp(prefix="gantry-bench-server-")
    db = None if args.store == "sqlite" else args.pg_url
    strategy = "" if args.git_strategy == "fetch" else f"variables:\n  GIT_STRATEGY: {args.git_strategy}\n"
    jobs_yaml = "stages: [test]\n" + strategy + "".join(f"j{i}:\n  stage: test\n  script: [\"true\"]\n" for i in range(args.jobs))
    repo, sha = make_repo(root, "one:\n  script: [\"true\"]\n")
    server = Server(args.gantry, root, db, max_artifacts=(args.artifact_mb + 64) << 20 if args.memory else None,
                    log=args.server_log)
    agents = []
    try:
        api = server.api
        time.sleep(1)
        results["idle_server_rss_kb"] = rss_kb(server.proc.pid)
        api.call("POST", "/api/v1/projects", {"name": "one", "repo_url": repo, "webhook_secret": SECRET})
        if args.intake_only:
            # The server alone: no agents, so only the intake and the delivery processor share the
            # cores with wrk.
            if args.wrk_seconds > 0:
                results["intake"] = intake(server, root, args, sha)
            if args.held > 0:
                results["held_bodies"] = held_bodies(server, args)
            return results
        agents = start_agents(args.gantry, root, server.url, args.agents)
        wait_agents(api, args.agents)
        time.sleep(1)
        results["idle_agent_rss_kb"] = max(rss_kb(a.pid) or 0 for a in agents)

        # Dispatch latency: one job at a time, agents idle.
        lat = []
        for _ in range(args.latency_runs):
            p = wait_pipeline(api, trigger(api, "one"))
            for j in p["jobs"]:
                if j["queued_at"] and j["started_at"]:
                    lat.append((ts(j["started_at"]) - ts(j["queued_at"])) * 1000)
        results["latency_ms"] = {"n": len(lat), "p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat)}
        log(f"latency p50 {results['latency_ms']['p50']:.1f} ms p99 {results['latency_ms']['p99']:.1f} ms")

        # Throughput: N trivial jobs through the agents.
        repo2 = os.path.join(root, "many")
        os.makedirs(repo2)
        r2, _ = make_repo(repo2, jobs_yaml)
        api.call("POST", "/api/v1/projects", {"name": "many", "repo_url": r2})
        cpu_before = (cpu_s(server.proc.pid), sum(cpu_s(a.pid) for a in agents))
        p = wait_pipeline(api, trigger(api, "many"), timeout=1200, project="many")
        cpu_after = (cpu_s(server.proc.pid), sum(cpu_s(a.pid) for a in agents))
        first = min(ts(j["queued_at"]) for j in p["jobs"])
        last = max(ts(j["finished_at"]) for j in p["jobs"])
        ok = sum(1 for j in p["jobs"] if j["status"] == "success")
        results["throughput"] = {"jobs": len(p["jobs"]), "succeeded": ok, "seconds": last - first,
                                 "jobs_per_s": len(p["jobs"]) / (last - first),
                                 "server_cpu_s": cpu_after[0] - cpu_before[0],
                                 "agents_cpu_s": cpu_after[1] - cpu_before[1]}
        t = results["throughput"]
        log(f"throughput {t['jobs_per_s']:.0f} jobs/s; CPU: server {t['server_cpu_s']:.1f} s, "
            f"agents {t['agents_cpu_s']:.1f} s (with their children)")
        results["ceiling"] = ceiling(root, args.jobs, args.agents)
        c = results["ceiling"]
        log(f"ceiling: {c['bash_per_s']:.0f} bash starts/s, {c['checkout_bash_per_s']:.0f}/s with "
            f"a git checkout and clean each, {args.agents} at a time")

        # Memory with history and live streams, then with a 1 GB log.
        if args.memory:
            results["streams"] = streams(server, agents, root, args)
            results["big_log"] = big_log(server, agents, root, args)
            if args.artifact_mb > 0:
                results["big_artifact"] = big_artifact(server, root, args)

        # Webhook intake with wrk.
        if args.wrk_seconds <= 0:
            results["intake"] = "skipped (--wrk-seconds 0)"
        elif shutil.which("wrk"):
            results["intake"] = intake(server, root, args, sha)
        else:
            results["intake"] = "wrk not installed"
    finally:
        for a in agents:
            a.send_signal(signal.SIGTERM)
        for a in agents:
            try:
                a.wait(10)
            except subprocess.TimeoutExpired:
                a.kill()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return results


def ceiling(root, n, parallel):
    """What this machine allows with no CI system at all: `n` trivial job processes started
    `parallel` at a time (xargs), first `bash -c true` alone (a job's shell), then with the source
    step an agent runs for a commit it already has (`git checkout` and `git clean` in a one-file
    repository, one repository per worker as the agents keep them)."""
    repo = os.path.join(root, "ceiling")
    os.makedirs(repo)
    git(repo, "init", "-q")
    with open(os.path.join(repo, "f"), "w") as f:
        f.write("x\n")
    git(repo, "add", "f")
    git(repo, "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "commit", "-q", "-m", "c")
    for i in range(parallel):
        subprocess.run(["git", "clone", "-q", repo, os.path.join(root, f"ceiling-{i}")], check=True)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                         text=True).stdout.strip()

    def rate(*cmd):
        # One line per job; xargs numbers its running slots (SLOT), so that no two jobs share a
        # repository at once (job i and job i + parallel can overlap when job i is slow).
        script = "x\n" * n
        t0 = time.time()
        subprocess.run(["xargs", "-P", str(parallel), "--process-slot-var=SLOT", "-n1", *cmd],
                       input=script, text=True, check=True)
        return n / (time.time() - t0)

    bash = rate("bash", "-c", "true")
    checkout = rate("sh", "-c", f"cd {root}/ceiling-$SLOT && git -c advice.detachedHead=false checkout -q -f --detach {sha}"
                    " && git clean -q -ffdx && exec bash -c true")
    return {"jobs": n, "parallel": parallel, "bash_per_s": bash, "checkout_bash_per_s": checkout}


def streams(server, agents, root, args):
    """1,000 pipelines of history, then 50 SSE clients following one live job's log: the server's
    RSS before and at most while they stream."""
    api = server.api
    made = 0
    while made < args.history:
        batch = [trigger_only(api, "one") for _ in range(min(50, args.history - made))]
        made += len(batch)
    deadline = time.time() + 600
    while time.time() < deadline:
        headers = api.call("GET", "/api/v1/projects/one/pipelines?per_page=1&status=success", raw=True)[1]
        if total(headers) >= args.history:
            break
        time.sleep(0.5)
    repo = os.path.join(root, "live")
    os.makedirs(repo)
    r, _ = make_repo(repo, "talk:\n  script:\n    - for i in $(seq 1 400); do echo \"line $i of a live log, streamed to fifty clients\"; sleep 0.02; done\n")
    api.call("POST", "/api/v1/projects", {"name": "live", "repo_url": r})
    pid = trigger(api, "live")
    job = None
    while job is None:
        p = api.call("GET", f"/api/v1/pipelines/{pid}")
        job = next((j["id"] for j in p["jobs"] if j["status"] == "running"), None)
        time.sleep(0.05)
    before = rss_kb(server.proc.pid)
    sampler = RssSampler({"server": server.proc.pid})
    received = [0] * args.streams

    def follow(i):
        req = urllib.request.Request(f"{server.url}/api/v1/jobs/{job}/log/stream")
        req.add_header("Authorization", f"Bearer {ADMIN}")
        with urllib.request.urlopen(req, timeout=120) as resp:
            for line in resp:
                if line.startswith(b"data:"):
                    received[i] += 1
                if line.startswith(b"event: end"):
                    return

    threads = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(args.streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    mem = sampler.stop()
    wait_pipeline(api, pid)
    out = {"pipelines": made, "streams": args.streams, "events_per_stream_min": min(received),
           "server_rss_before_kb": before, "server_rss_max_kb": mem["server"]["max_kb"]}
    log(f"history {made} pipelines + {args.streams} streams: server RSS {before} kB before, "
        f"{mem['server']['max_kb']} kB max")
    return out


def trigger_only(api, project):
    return api.call("POST", f"/api/v1/projects/{project}/pipelines", {"ref": "main"})


def big_log(server, agents, root, args):
    """One job prints --log-mb MB; the RSS of the server and of the agents, sampled while it runs."""
    api = server.api
    repo = os.path.join(root, "biglog")
    os.makedirs(repo)
    size = args.log_mb * 1024 * 1024
    # 1 KiB lines: `yes` repeats one 1,023-character line (and dies of SIGPIPE when `head` is done,
    # which `pipefail` would count as the job's failure).
    r, _ = make_repo(repo, "flood:\n  script:\n    - (yes \"$(printf '%01023d' 0)\" || true) | head -c " + str(size) + "\n")
    api.call("POST", "/api/v1/projects", {"name": "biglog", "repo_url": r})
    pids = {"server": server.proc.pid}
    pids.update({f"agent-{i}": a.pid for i, a in enumerate(agents)})
    sampler = RssSampler(pids)
    start = time.time()
    pid = trigger(api, "biglog")
    p = wait_pipeline(api, pid, timeout=3600)
    secs = time.time() - start
    mem = sampler.stop()
    job = p["jobs"][0]
    stored = job.get("log_size")
    agent_max = max(v["max_kb"] for k, v in mem.items() if k.startswith("agent"))
    agent_start = max(v["start_kb"] or 0 for k, v in mem.items() if k.startswith("agent"))
    out = {"mb": args.log_mb, "status": p["status"], "stored_bytes": stored, "seconds": secs,
           "server_rss_start_kb": mem["server"]["start_kb"], "server_rss_max_kb": mem["server"]["max_kb"],
           "agent_rss_start_kb": agent_start, "agent_rss_max_kb": agent_max}
    log(f"{args.log_mb} MB log: {p['status']}, {stored} bytes stored in {secs:.0f} s; server RSS "
        f"{out['server_rss_start_kb']} -> max {out['server_rss_max_kb']} kB, agent RSS {agent_start} -> max {agent_max} kB")
    return out


def vm_hwm_kb(pid):
    """The peak RSS of a process so far (VmHWM), in kB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def big_artifact(server, root, args):
    """A fresh agent runs a job that stores an --artifact-mb MB artifact, then the next stage's job
    that takes it: the agent's peak RSS (VmHWM) while idle, after the upload and after the
    download, and the server's peak RSS. (The server is started with max_artifacts_bytes above
    the archive's size: see bench.)"""
    api = server.api
    repo = os.path.join(root, "bigartifact")
    os.makedirs(repo)
    size = args.artifact_mb * 1024 * 1024
    r, _ = make_repo(repo, "stages: [build, test]\n"
                     "make:\n  stage: build\n  tags: [bench-artifact]\n  script:\n    - head -c " + str(size) + " /dev/urandom > big.bin\n"
                     "  artifacts:\n    paths: [big.bin]\n"
                     "take:\n  stage: test\n  tags: [bench-artifact]\n  script:\n    - ls -l big.bin\n")
    api.call("POST", "/api/v1/projects", {"name": "bigartifact", "repo_url": r})
    before = len(api.call("GET", "/api/v1/agents"))
    # Its own agent (the only one with the tag), so that its peak RSS is this pipeline's.
    agent = subprocess.Popen(
        [args.gantry, "agent", "--server", server.url, "--token", REGISTRATION, "--work-dir",
         os.path.join(root, "artifact-agent"), "--name", "bench-artifact", "--tags", "bench-artifact"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_agents(api, before + 1)
        time.sleep(1)
        idle = vm_hwm_kb(agent.pid)
        start = time.time()
        pid = trigger(api, "bigartifact")
        uploaded = None
        deadline = time.time() + 3600
        while time.time() < deadline:
            p = api.call("GET", f"/api/v1/pipelines/{pid}")
            if p["status"] in ("success", "failed", "canceled", "skipped"):
                break
            # VmHWM once the first job is over: the peak of packing and uploading.
            if uploaded is None and any(j["name"] == "make" and j["status"] not in ("created", "pending", "running")
                                        for j in p["jobs"]):
                uploaded = vm_hwm_kb(agent.pid)
            time.sleep(0.05)
        secs = time.time() - start
        total_hwm = vm_hwm_kb(agent.pid)
        server_hwm = vm_hwm_kb(server.proc.pid)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
    out = {"mb": args.artifact_mb, "status": p["status"], "seconds": secs, "agent_hwm_idle_kb": idle,
           "agent_hwm_after_upload_kb": uploaded, "agent_hwm_after_download_kb": total_hwm,
           "server_hwm_kb": server_hwm}
    log(f"{args.artifact_mb} MB artifact: {p['status']} in {secs:.0f} s; agent peak RSS {idle} kB idle, "
        f"{uploaded} kB after the upload, {total_hwm} kB after the download; server peak RSS {server_hwm} kB")
    return out


def total(headers):
    return int({k.lower(): v for k, v in headers.items()}.get("x-total", "0"))


def intake(server, root, args, sha):
    """Two wrk passes of valid signed GitLab push deliveries, each with its own delivery id:
    as fast as --wrk-connections closed-loop connections go (saturation), then paced at
    --intake-rate deliveries/s (open loop, on 64 connections). Every delivery answered 202 must be
    in the database afterwards."""
    out = {"saturation": wrk_hooks(server, root, args, sha, 0, args.wrk_connections)}
    if args.intake_rate:
        out["paced"] = wrk_hooks(server, root, args, sha, args.intake_rate, 64)
    return out


def wrk_hooks(server, root, args, sha, rate, connections):
    api = server.api
    before = api.call("GET", "/api/v1/projects/one/deliveries?per_page=1", raw=True)[1]
    before_total = total(before)
    # Each delivery is a push of its own (its own `before`): the server stores one push once,
    # whatever the delivery id (a replay is a duplicate), so one body for all would measure
    # duplicates.
    body = json.dumps({
        "object_kind": "push", "ref": "refs/heads/main",
        "before": "BEFORE", "after": sha, "checkout_sha": sha,
        "project": {"path_with_namespace": "bench/one"},
        "commits": [], "total_commits_count": 0,
    })
    body_pre, body_post = body.split("BEFORE")
    threads = 2
    # Paced: each wrk thread sends on its own schedule of rate/threads requests a second, from a
    # monotonic clock (LuaJIT's FFI); a request that falls behind schedule goes at once, so a
    # stall is followed by a catch-up burst, as a forge's retries would be. wrk's delay() takes
    # whole milliseconds; the schedule keeps the average exact.
    pacing = "" if not rate else f"""
local ffi = require("ffi")
ffi.cdef[[ typedef struct {{ long tv_sec; long tv_nsec; }} bench_ts; int clock_gettime(int, bench_ts*); ]]
local clock = ffi.new("bench_ts")
local function now_ms()
  ffi.C.clock_gettime(1, clock)
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end
local interval = 1000 / ({rate} / {threads})
local next_at = nil
delay = function()
  local now = now_ms()
  if next_at == nil then next_at = now end
  local wait = next_at - now
  next_at = next_at + interval
  if wait < 0 then return 0 end
  return wait
end
"""
    script = os.path.join(root, f"hook-{rate}.lua")
    with open(script, "w") as f:
        f.write(f"""
wrk.method = "POST"
local body_pre, body_post = {json.dumps(body_pre)}, {json.dumps(body_post)}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Gitlab-Token"] = "{SECRET}"
wrk.headers["X-Gitlab-Event"] = "Push Hook"
local counter = 0
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
request = function()
  counter = counter + 1
  wrk.headers["X-Gitlab-Event-UUID"] = string.format("%s-%s-%d-%d-%d", "{rate}", tostring(tid), math.random(1, 2147483647), os.time(), counter)
  local before = string.format("%08x%08x%08x%016x", tid, counter, math.random(0, 2147483647), os.time())
  return wrk.format(nil, "/api/v1/projects/one/hooks/gitlab", nil, body_pre .. before .. body_post)
end
{pacing}
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d p50_us=%d p99_us=%d\\n", summary.requests, latency:percentile(50), latency:percentile(99)))
end
""")
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{args.wrk_seconds}s", "--latency", "-s", script, server.url],
                         capture_output=True, text=True).stdout
    m = re.search(r"RESULT requests=(\d+) p50_us=(\d+) p99_us=(\d+)", out)
    if not m:
        return {"error": "wrk printed no result", "output": out[-2000:]}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sent = int(m.group(1))
    time.sleep(2)
    after = api.call("GET", "/api/v1/projects/one/deliveries?per_page=1", raw=True)[1]
    stored = total(after) - before_total
    result = {"connections": connections, "sent": sent, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
              "stored": stored, "per_s": sent / args.wrk_seconds,
              "p50_ms": int(m.group(2)) / 1000, "p99_ms": int(m.group(3)) / 1000}
    if rate:
        result["rate"] = rate
    log(f"intake ({'paced at %d/s' % rate if rate else 'saturation'}, {connections} connections): "
        f"{result['per_s']:.0f}/s p50 {result['p50_ms']} ms p99 {result['p99_ms']} ms; "
        f"{sent} answered, {stored} stored")
    return result


def held_bodies(server, args):
    """--held N connections, each declaring a --held-mib MiB webhook body and sending all of it
    but the last byte, as fast as the server takes it (issue 16, finding 2): once for an unknown
    project (answered 404 before the body) and once for a known one with a signature header (read
    under the server's webhook body budget). The server's RSS before, while they are held, and
    after they are closed."""
    host, port = server.url.rsplit("/", 1)[1].split(":")
    pid = server.proc.pid
    out = {}
    for case, project, extra in [("unknown_project", "nope", ""),
                                 ("signed_header", "one", "X-Hub-Signature-256: sha256=00\r\n")]:
        length = args.held_mib << 20
        head = (f"POST /api/v1/projects/{project}/hooks/github HTTP/1.1\r\nHost: x\r\n"
                f"Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n").encode()
        before = rss_kb(pid)
        socks = []
        for _ in range(args.held):
            s = socket.create_connection((host, int(port)))
            s.sendall(head)
            s.setblocking(False)
            socks.append([s, length - 1])
        chunk = b" " * (1 << 16)
        deadline = time.time() + args.held_seconds
        while time.time() < deadline and any(left > 0 for _, left in socks):
            progressed = False
            for entry in socks:
                s, left = entry
                if left <= 0:
                    continue
                try:
                    n = s.send(chunk[:min(left, len(chunk))])
                    entry[1] -= n
                    progressed = True
                except BlockingIOError:
                    pass
                except OSError:
                    entry[1] = 0  # closed by the server
            if not progressed:
                time.sleep(0.05)
        held = rss_kb(pid)
        sent = sum(length - 1 - max(left, 0) for _, left in socks)
        for s, _ in socks:
            s.close()
        time.sleep(2)
        after = rss_kb(pid)
        out[case] = {"connections": args.held, "declared_mib": args.held_mib, "sent_mib": sent >> 20,
                     "rss_before_kb": before, "rss_held_kb": held, "rss_after_kb": after}
        log(f"held bodies ({case}): {args.held} x {args.held_mib} MiB declared, {sent >> 20} MiB sent; "
            f"RSS {before} kB before, {held} kB held, {after} kB after")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gantry", required=True)
    ap.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--pg-url")
    ap.add_argument("--latency-runs", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--wrk-seconds", type=int, default=10)
    ap.add_argument("--wrk-connections", type=int, default=32,
                    help="wrk connections for the intake")
    ap.add_argument("--intake-rate", type=int, default=5000,
                    help="deliveries/s of the paced intake pass (0 skips it)")
    ap.add_argument("--held", type=int, default=200,
                    help="with --intake-only, connections that hold webhook bodies back (0 skips it)")
    ap.add_argument("--held-mib", type=int, default=10, help="the body each --held connection declares")
    ap.add_argument("--held-seconds", type=int, default=10, help="how long --held connections send")
    ap.add_argument("--intake-only", action="store_true",
                    help="measure only webhook intake, with no agents running")
    ap.add_argument("--git-strategy", choices=["fetch", "none"], default="fetch",
                    help="GIT_STRATEGY of the throughput jobs (fetch: a checkout per job, as GitLab Runner)")
    ap.add_argument("--server-log", help="keep the server's log in this file (with GANTRY_LOG="
                    "info,sqlx::query=debug: every statement with its elapsed time)")
    ap.add_argument("--memory", action="store_true",
                    help="also measure RSS with history and live streams, and with a big log")
    ap.add_argument("--history", type=int, default=1000)
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--log-mb", type=int, default=1024)
    ap.add_argument("--artifact-mb", type=int, default=512,
                    help="with --memory, the size of the artifact whose upload and download are measured (0: skip)")
    args = ap.parse_args()
    if args.store == "postgres" and not args.pg_url:
        raise SystemExit("--pg-url is required for --store postgres")
    results = bench(args)
    os.makedirs("bench/out", exist_ok=True)
    tag = os.environ.get("GANTRY_BENCH_TAG")
    with open(f"bench/out/server-{args.store}{'-' + tag if tag else ''}.json", "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
