#!/usr/bin/env bash
# The web UI's job page with a big log (default 50 MiB: a million lines, a third of them coloured,
# and a collapsed section), made by a real job on a real agent, opened in headless Chromium
# through chromedriver. Reports, from the page itself: the time from navigation until the last
# line is in the DOM, the longest main-thread task (PerformanceObserver `longtask`) and the
# longest gap between 10 ms timer ticks, the JS heap and the number of DOM nodes.
#
#   bench/ui-log.sh [MIB]
#
# Builds the release binary first; GANTRY_BIN=PATH measures another build instead (no cargo build).
# GANTRY_OLD_APP_JS=FILE measures that script too, in place of the served one (for the ratio:
# `git show REV:crates/gantry-ui/assets/app.js > FILE`); a run that has not shown the last line
# after GANTRY_LOG_WAIT seconds (default 120) reports what it had then.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${GANTRY_BIN:-}" ]; then
    cargo build --release -p gantry >&2
fi
GANTRY_BIN=$(realpath "${GANTRY_BIN:-target/release/gantry}") MIB=${1:-50} exec python3 - <<'PY'
import json, os, re, shutil, socket, subprocess, sys, tempfile, time, urllib.request

gantry, mib = os.environ["GANTRY_BIN"], int(os.environ["MIB"])
wait = float(os.environ.get("GANTRY_LOG_WAIT", "120"))
old_js = os.environ.get("GANTRY_OLD_APP_JS")
tmp = tempfile.mkdtemp()
procs = []


def spawn(args, **kw):
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, **kw)
    procs.append(p)
    return p


def call(url, body=None, method=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=600) as r:
        return r.read()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


try:
    # A project whose one job prints the log.
    repo = os.path.join(tmp, "repo")
    os.makedirs(repo)
    n = mib * 1024 * 1024 // 52
    third, half = n // 3, n // 2
    with open(os.path.join(repo, ".gitlab-ci.yml"), "w") as f:
        f.write(f"""big:
  script:
    - seq 1 {half} | sed -e 's/.*/row & of the big log, as a long build prints it/' -e '0~3s/.*/\\x1b[32m&\\x1b[0m/'
    - printf 'section_start:1:big[collapsed=true]\\r\\033[0KA section\\n'
    - seq {half + 1} {half + 1000} | sed -e 's/.*/row & inside the section/'
    - printf 'section_end:1:big\\r\\033[0K\\n'
    - seq {half + 1001} {n} | sed -e 's/.*/row & after the section, \\x1b[1;31mred\\x1b[0m and plain/'
    - echo the last line
""")
    git = ["git", "-C", repo, "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    subprocess.run(["git", "init", "-q", "-b", "main", repo], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "big log"], check=True)

    env = dict(os.environ, GANTRY_ADMIN_TOKEN="bench-admin",
               GANTRY_REGISTRATION_TOKEN="bench-registration",
               GANTRY_MAX_JOB_LOG=str(2 * mib * 1024 * 1024))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spawn([gantry, "server", "--listen", f"127.0.0.1:{port}", "--data-dir",
           os.path.join(tmp, "data")], env=env, stderr=open(os.path.join(tmp, "server.log"), "w"))
    auth = {"Authorization": "Bearer bench-admin"}
    for _ in range(100):
        try:
            call(url + "/api/v1/projects", headers=auth)
            break
        except OSError:
            time.sleep(0.1)
    os.makedirs(os.path.join(tmp, "agent"))
    spawn([gantry, "agent", "--server", url, "--token", "bench-registration", "--name", "bench",
           "--work-dir", os.path.join(tmp, "agent")], env=env,
          stderr=open(os.path.join(tmp, "agent.log"), "w"))
    call(url + "/api/v1/projects", {"name": "bench", "repo_url": repo}, headers=auth)
    call(url + "/api/v1/projects/bench/pipelines", {"ref": "main"}, headers=auth)
    while True:
        p = (json.loads(call(url + "/api/v1/projects/bench/pipelines", headers=auth)) or [None])[0]
        if p:
            p = json.loads(call(f"{url}/api/v1/pipelines/{p['id']}", headers=auth))
            if p["status"] not in ("created", "pending", "running"):
                break
        time.sleep(0.5)
    job = p["jobs"][0]["id"]
    raw = call(f"{url}/api/v1/jobs/{job}/log", headers=auth)
    last = raw.rstrip(b"\n").count(b"\n") + 1
    print(f"job {job} ({p['status']}): log of {len(raw) / 1048576:.1f} MiB, {last} lines",
          file=sys.stderr)

    # The browser.
    dport = free_port()
    spawn(["chromedriver", f"--port={dport}"], stdout=subprocess.DEVNULL,
          stderr=subprocess.DEVNULL)
    wd = f"http://127.0.0.1:{dport}"
    for _ in range(100):
        try:
            call(wd + "/status")
            break
        except OSError:
            time.sleep(0.1)
    options = {"args": ["--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", "--window-size=1280,720",
                        "--enable-precise-memory-info"]}
    if os.path.exists("/usr/bin/chromium"):
        options["binary"] = "/usr/bin/chromium"
    probe = """
window.__b = {longtask: 0, gap: 0, shown: null};
new PerformanceObserver(function (l) {
  for (const e of l.getEntries()) __b.longtask = Math.max(__b.longtask, e.duration);
}).observe({type: "longtask", buffered: true});
(function () {
  let prev = performance.now();
  const t = setInterval(function () {
    const now = performance.now();
    __b.gap = Math.max(__b.gap, now - prev);
    prev = now;
    if (__b.shown === null && document.getElementById("L%d")) __b.shown = now;
  }, 10);
})();
""" % last
    measure = """return {shown: __b.shown, longtask: __b.longtask, gap: __b.gap,
        heap: performance.memory.usedJSHeapSize, nodes: document.getElementsByTagName('*').length,
        lines: document.querySelectorAll('#log .l').length};"""

    def run(name, script):
        s = json.loads(call(wd + "/session", {"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": options}}}))["value"]["sessionId"]
        base = f"{wd}/session/{s}"
        try:
            cdp = lambda cmd, params: call(base + "/goog/cdp/execute", {"cmd": cmd, "params": params})
            call(base + "/url", {"url": url + "/signin"})
            call(base + "/cookie", {"cookie": {"name": "gantry_session", "value": "bench-admin"}})
            cdp("Page.addScriptToEvaluateOnNewDocument", {"source": probe})
            if script:
                cdp("Network.enable", {})
                cdp("Network.setBlockedURLs", {"urls": ["*/assets/app.js"]})
                cdp("Page.addScriptToEvaluateOnNewDocument", {"source": script})
            call(base + "/url", {"url": f"{url}/jobs/{job}"})
            end = time.time() + wait
            while True:
                m = json.loads(call(base + "/execute/sync", {"script": measure, "args": []}))["value"]
                if m["shown"] is not None or time.time() > end:
                    break
                time.sleep(0.2)
            time.sleep(1)  # the tasks that follow the last line's arrival
            m = json.loads(call(base + "/execute/sync", {"script": measure, "args": []}))["value"]
        finally:
            call(base, method="DELETE")
        shown = "not shown after %.0f s" % wait if m["shown"] is None else "%.0f ms" % m["shown"]
        print(f"{name}: {mib} MiB log, last line {shown}; longest task {m['longtask']:.0f} ms, "
              f"longest timer gap {m['gap']:.0f} ms; JS heap {m['heap'] / 1048576:.1f} MiB; "
              f"{m['nodes']} DOM nodes ({m['lines']} lines)")

    run("virtualised", None)
    if old_js:
        run("old script", open(old_js).read())
finally:
    for p in procs:
        p.terminate()
        p.wait()
    shutil.rmtree(tmp, ignore_errors=True)
PY
