#!/usr/bin/env python3
"""Generate the fixture repositories used by bench/run.sh.

Each fixture is a fresh git repository with a `.gitlab-ci.yml` (jobs have no
`image:`, so both tools use their shell executor) and exactly one commit.

Usage:
    python3 bench/fixtures.py NAME DIR     # create fixture NAME in DIR
    python3 bench/fixtures.py --list       # list fixture names

The YAML is written by hand (no PyYAML needed): job names are plain scalars and
script lines are double-quoted strings.
"""

import json
import os
import subprocess
import sys


def job(name, stage, script, needs=None):
    lines = [f"{name}:", f"  stage: {stage}"]
    if needs is not None:
        lines.append("  needs: [" + ", ".join(needs) + "]")
    lines.append("  script:")
    # Double-quoted (JSON strings are valid YAML): a bare `true` would be a boolean.
    lines.extend(f"    - {json.dumps(line)}" for line in script)
    return "\n".join(lines) + "\n"


def pipeline(stages, jobs):
    out = "stages:\n" + "".join(f"  - {s}\n" for s in stages) + "\n"
    return out + "\n".join(jobs)


def grid(n_stages, per_stage, script, chain_needs=False):
    """n_stages stages of per_stage jobs each. With chain_needs, every job
    `needs` every job of the previous stage (a complete bipartite DAG)."""
    stages = [f"s{s}" for s in range(1, n_stages + 1)]
    jobs = []
    prev = []
    for s, stage in enumerate(stages, 1):
        cur = [f"s{s}_j{j:02d}" for j in range(1, per_stage + 1)]
        for name in cur:
            needs = prev if (chain_needs and prev) else None
            jobs.append(job(name, stage, script, needs))
        prev = cur
    return pipeline(stages, jobs)


def write_tree(root, n_files, fanout=10):
    """n_files small files spread over a two-level tree of directories."""
    per_dir = max(1, n_files // (fanout * fanout))
    i = 0
    while i < n_files:
        d = i // per_dir
        path = os.path.join(root, "src", f"d{d // fanout:02d}", f"e{d % fanout:02d}")
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, f"f{i:05d}.txt"), "w") as f:
            f.write(f"file {i}\n")
        i += 1


def fx_three_stages(root):
    return grid(3, 1, ["echo hi"])


def fx_fifty_jobs(root):
    return grid(5, 10, ["echo hi"])


def fx_six_by_ten(root):
    return grid(6, 10, ["echo hi"], chain_needs=True)


def fx_per_job_overhead(root):
    return grid(1, 20, ["true"])


def fx_log_200k(root):
    return pipeline(["test"], [job("log", "test", ["seq 1 200000"])])


def fx_log_2m(root):
    return pipeline(["test"], [job("log", "test", ["seq 1 2000000"])])


def fx_workspace_10k(root):
    write_tree(root, 10_000)
    # Each job checks that the tree really is in its workspace.
    script = ["test -f src/d09/e09/f09999.txt", "test -f src/d00/e00/f00000.txt"]
    return pipeline(["test"], [job(f"job{i}", "test", script) for i in (1, 2, 3)])


def fx_workspace_40k(root):
    """A repository the size of a large real project (u-boot has about 38,600
    files): 40,000 files, and two one-line jobs in two stages (bench/big-repo.py)."""
    write_tree(root, 40_000, fanout=20)
    check = "test -f src/d19/e19/f39999.txt"
    return pipeline(["build", "test"], [job("build", "build", [check]),
                                        job("test", "test", [check])])


FIXTURES = {
    "three-stages": fx_three_stages,
    "fifty-jobs": fx_fifty_jobs,
    "six-by-ten": fx_six_by_ten,
    "per-job-overhead": fx_per_job_overhead,
    "log-200k": fx_log_200k,
    "log-2m": fx_log_2m,
    "workspace-10k": fx_workspace_10k,
    "workspace-40k": fx_workspace_40k,
}


def git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, stdout=subprocess.DEVNULL)


def create(name, root):
    os.makedirs(root, exist_ok=True)
    if os.listdir(root):
        sys.exit(f"fixtures.py: {root} is not empty")
    yml = FIXTURES[name](root)
    with open(os.path.join(root, ".gitlab-ci.yml"), "w") as f:
        f.write(yml)
    # Both tools keep their state inside the repository; keep it untracked.
    with open(os.path.join(root, ".gitignore"), "w") as f:
        f.write(".gantry/\n.gitlab-ci-local/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "-c", "user.name=bench", "-c", "user.email=bench@example.invalid",
        "-c", "commit.gpgsign=false", "commit", "-q", "-m", f"fixture {name}")
    # A fake `origin` whose HEAD points at main, so that gitlab-ci-local takes
    # its normal path for CI_PROJECT_* / CI_DEFAULT_BRANCH instead of the
    # "no remote" fallback (nothing is ever fetched from it).
    git(root, "remote", "add", "origin", "git@gitlab.example.invalid:bench/fixture.git")
    git(root, "update-ref", "refs/remotes/origin/main", "HEAD")
    git(root, "symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/main")


def main(argv):
    if argv[1:] == ["--list"]:
        print("\n".join(FIXTURES))
        return
    if len(argv) != 3 or argv[1] not in FIXTURES:
        sys.exit(__doc__ + "\nfixtures: " + ", ".join(FIXTURES))
    create(argv[1], argv[2])


if __name__ == "__main__":
    main(sys.argv)
