#!/usr/bin/env python3
"""What job workspaces cost in a big repository: `gantry run` against
`gantry run --in-place`, side by side, on the `workspace-40k` fixture
(fixtures.py: 40,000 files, two one-line jobs in two stages).

Cases, each with the project's state (`.gantry/`) kept between runs, as a
developer's repeated runs keep it:

  in-place / unchanged     gantry run --in-place
  workspaces / unchanged   gantry run        (reuses the snapshot)
  in-place / changed       gantry run --in-place, CHANGED files edited before each run
  workspaces / changed     gantry run,        CHANGED files edited before each run
  workspaces / first run   gantry run with no `.gantry/` (the snapshot is made)
  hard links / ...         with --as-user USER: the same two workspace cases run
                           as USER, who cannot mount overlays, so Gantry falls
                           back to hard-link workspaces

Timing: hyperfine (-N, --warmup 2, --runs RUNS; edits and moving `.gantry/`
aside happen in --prepare, outside the timing) when installed, else a loop
timed here. Results are printed as Markdown and saved to
bench/out/big-repo.md and bench/out/big-repo.json.

Usage: bench/big-repo.py [--files N] [--changed K] [--runs R] [--as-user USER] [--keep]
Environment: GANTRY_BIN (default target/release/gantry; build it with
`cargo build --release -p gantry`).
"""

import argparse
import json
import os
import pwd
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
import fixtures  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")
GANTRY = os.environ.get("GANTRY_BIN", os.path.join(ROOT, "target", "release", "gantry"))


def changed_files(n_files, k):
    """K tracked files spread over the tree."""
    per_dir = max(1, n_files // 400)
    out = []
    for i in range(k):
        f = ((i * n_files) // max(k, 1) + 7) % n_files
        d = f // per_dir
        out.append(f"src/d{d // 20:02d}/e{d % 20:02d}/f{f:05d}.txt")
    return out


def edit_cmd(paths):
    # Appends a line to each file: a real change of content, size and times.
    return "for f in " + " ".join(shlex.quote(p) for p in paths) + '; do echo "$RANDOM" >> "$f"; done'


def fresh_cmd(fx):
    trash = fx + ".trash"
    return (f"mkdir -p {shlex.quote(trash)} && if [ -e .gantry ]; then "
            f"mv .gantry \"$(mktemp -d {shlex.quote(trash)}/XXXXXX)/\"; fi && sync")


def as_user(user, argv):
    if not user:
        return argv
    gid = pwd.getpwnam(user).pw_gid
    return ["setpriv", f"--reuid={user}", f"--regid={gid}", "--clear-groups", *argv]


def hyperfine(name, argv, prepare, fx, runs, outdir):
    export = os.path.join(outdir, f"{name.replace(' / ', '-').replace(' ', '-')}.json")
    cmd = ["hyperfine", "-N", "--style", "basic", "--warmup", "2", "--runs", str(runs),
           "--export-json", export, "-n", name]
    if prepare:
        cmd += ["--prepare", f"bash -c {shlex.quote(prepare)}"]
    cmd += ["--", shlex.join(argv)]
    subprocess.run(cmd, cwd=fx, check=True, stdout=sys.stderr)
    with open(export) as f:
        times = json.load(f)["results"][0]["times"]
    return times


def loop(argv, prepare, fx, runs):
    times = []
    for i in range(runs + 2):
        if prepare:
            subprocess.run(["bash", "-c", prepare], cwd=fx, check=True)
        t0 = time.monotonic()
        subprocess.run(argv, cwd=fx, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        if i >= 2:  # two warm-up runs
            times.append(time.monotonic() - t0)
    return times


def validate(argv, fx):
    p = subprocess.run(argv, cwd=fx, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    text = p.stdout.decode(errors="replace")
    if p.returncode != 0:
        sys.exit(f"big-repo.py: {shlex.join(argv)} failed ({p.returncode}):\n{text[-2000:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=40_000)
    ap.add_argument("--changed", type=int, default=5)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--as-user", default=None)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if not os.access(GANTRY, os.X_OK):
        sys.exit(f"big-repo.py: no Gantry binary at {GANTRY}; run `cargo build --release -p gantry`")

    work = tempfile.mkdtemp(prefix="gantry-big-repo-")
    if a.as_user:
        os.chmod(work, 0o755)
    fx = os.path.join(work, "repo")
    if a.files == 40_000:
        fixtures.create("workspace-40k", fx)
    else:
        fixtures.FIXTURES["custom"] = lambda root: (
            fixtures.write_tree(root, a.files, fanout=20)
            or fixtures.pipeline(["build", "test"], [fixtures.job("build", "build", ["true"]),
                                                      fixtures.job("test", "test", ["true"])]))
        fixtures.create("custom", fx)
    gantry_copy = os.path.join(work, "gantry")
    shutil.copy2(GANTRY, gantry_copy)  # a rebuild during the run changes nothing
    os.chmod(gantry_copy, 0o755)
    outdir = os.path.join(OUT, "big-repo")
    os.makedirs(outdir, exist_ok=True)
    edits = edit_cmd(changed_files(a.files, a.changed))
    have_hyperfine = shutil.which("hyperfine") is not None

    cases = [
        ("in-place / unchanged", [gantry_copy, "run", "--in-place"], None, None),
        ("workspaces / unchanged", [gantry_copy, "run"], None, None),
        ("in-place / changed", [gantry_copy, "run", "--in-place"], edits, None),
        ("workspaces / changed", [gantry_copy, "run"], edits, None),
        ("workspaces / first run", [gantry_copy, "run"], fresh_cmd(fx), None),
    ]
    if a.as_user:
        cases += [
            ("hard links / unchanged", [gantry_copy, "run"], None, a.as_user),
            ("hard links / changed", [gantry_copy, "run"], edits, a.as_user),
        ]
    results = []
    for name, argv, prepare, user in cases:
        if user:
            # Another user's state: start from none, then own the repository.
            subprocess.run(["bash", "-c", fresh_cmd(fx)], cwd=fx, check=True)
            subprocess.run(["chown", "-R", user, fx], check=True)
        argv = as_user(user, argv)
        print(f"\n### {name}: {shlex.join(argv)}", file=sys.stderr)
        validate(argv, fx)
        times = (hyperfine(name, argv, prepare, fx, a.runs, outdir) if have_hyperfine
                 else loop(argv, prepare, fx, a.runs))
        results.append(dict(case=name, command=shlex.join(argv).replace(gantry_copy, "$GANTRY"),
                            prepare=prepare and prepare.replace(fx, "$REPO"),
                            mean=statistics.mean(times),
                            stddev=statistics.stdev(times) if len(times) > 1 else 0.0,
                            min=min(times), max=max(times), runs=len(times)))
        shutil.rmtree(fx + ".trash", ignore_errors=True)

    by = {r["case"]: r for r in results}
    lines = [f"{a.files} files, {a.changed} changed; "
             f"{'hyperfine' if have_hyperfine else 'timed loop'}, {a.runs} runs after 2 warm-ups",
             "", "| case | mean ± σ | min … max | − in-place |", "|---|---|---|---|"]
    for r in results:
        base = by["in-place / changed" if r["case"].endswith("/ changed") else "in-place / unchanged"]
        extra = "" if r["case"].startswith("in-place") else f"+{(r['mean'] - base['mean']) * 1000:.0f} ms"
        lines.append(f"| {r['case']} | {r['mean'] * 1000:.0f} ± {r['stddev'] * 1000:.0f} ms "
                     f"| {r['min'] * 1000:.0f} … {r['max'] * 1000:.0f} ms | {extra} |")
    md = "\n".join(lines) + "\n"
    print(md)
    with open(os.path.join(OUT, "big-repo.md"), "w") as f:
        f.write(md)
    with open(os.path.join(OUT, "big-repo.json"), "w") as f:
        json.dump(results, f, indent=2)
    if a.keep:
        print(f"kept {fx}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
