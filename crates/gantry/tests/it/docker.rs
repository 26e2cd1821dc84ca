//! `gantry run` with the container executor, against a real engine (`scripts/engine.sh`).
//!
//! These tests need the engine that `scripts/engine.sh` starts (or any engine at `DOCKER_HOST` with
//! its two test images); without one they fail, saying so.

use std::process::Command;

use super::server::{self, Store};
use super::{Repo, Run, run_ok};

const BASE: &str = "gantry-test/base:1";
const SERVICE: &str = "gantry-test/service:1";

/// Runs the docker CLI against the test engine.
fn docker(args: &[&str]) -> String {
    run_ok(
        Command::new("docker").args(args),
        &format!("docker {args:?} ({})", help()),
    )
}

fn help() -> &'static str {
    "these tests need a container engine with the test images: run \
     `eval \"$(scripts/engine.sh)\"` (it prints `export DOCKER_HOST=...`), then the tests"
}

/// Fails (never skips) when the engine or its test images are missing.
fn engine() {
    for image in [BASE, SERVICE] {
        let ok = Command::new("docker")
            .args(["image", "inspect", image])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "no engine, or no image {image}: {}", help());
    }
}

/// The labelled objects (containers, networks, volumes) that belong to jobs of `repo`.
fn leftovers(repo: &Repo) -> Vec<String> {
    leftovers_under(repo.path())
}

/// The labelled objects (containers, networks, volumes) of jobs whose workspace is under `root`.
fn leftovers_under(root: &std::path::Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for (kind, list) in [
        ("container", vec!["ps", "-a"]),
        ("network", vec!["network", "ls"]),
        ("volume", vec!["volume", "ls"]),
    ] {
        let mut args = list;
        args.extend([
            "--filter",
            "label=gantry.managed=true",
            "--format",
            "{{.Label \"gantry.workspace\"}}",
        ]);
        for line in docker(&args).lines() {
            if line.starts_with(&root) {
                found.push(format!("{kind} of {line}"));
            }
        }
    }
    found
}

fn assert_clean(repo: &Repo) {
    let left = leftovers(repo);
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn all_output(r: &Run) -> String {
    format!("{}\n{}", r.stdout, r.stderr)
}

#[test]
fn image_job_runs_inside_the_container() {
    engine();
    let repo = Repo::new(&[
        ("hello.txt", "hello from the repository\n"),
        (
            ".gitlab-ci.yml",
            "
job:
  image: gantry-test/base:1
  script:
    - grep ^ID= /etc/os-release
    - cat hello.txt
    - echo \"pwd=$(pwd) dir=$CI_PROJECT_DIR\"
    - test ! -e \"$HOST_REPO\" && echo host-invisible
    - command -v bash || echo no-bash
    - echo made-inside > inside.txt
",
        ),
    ]);
    let host = repo.path().to_string_lossy().into_owned();
    let r = repo.run_json(&["--variable", &format!("HOST_REPO={host}")]);
    assert_eq!(r.code, 0, "{}", r.dump());
    let log = r.log("job");
    assert_eq!(log[0], "ID=gantry-test-base", "{}", r.dump());
    assert_eq!(log[1], "hello from the repository");
    let (pwd, dir) = log[2].split_once(' ').unwrap();
    assert!(pwd.starts_with("pwd=/builds/"), "{}", log[2]);
    assert_eq!(pwd["pwd=".len()..], dir["dir=".len()..], "{}", log[2]);
    assert_eq!(log[3], "host-invisible");
    assert_eq!(log[4], "no-bash");
    assert_clean(&repo);
}

#[test]
fn ci_job_image_is_the_expanded_image() {
    engine();
    let repo = Repo::ci(
        "variables:\n  TAG: '1'\njob:\n  image: gantry-test/base:$TAG\n  script: [echo \"image=$CI_JOB_IMAGE\"]\n",
    );
    let r = repo.run_json(&[]);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(r.log("job"), ["image=gantry-test/base:1"]);
    assert_clean(&repo);
}

#[test]
fn two_jobs_at_once_each_in_its_own_container() {
    engine();
    let job = |name: &str| {
        format!(
            "{name}:\n  image: gantry-test/base:1\n  script:\n    - touch /tmp/mine-{name}\n    \
             - echo \"host=$(hostname)\"\n    - sleep 1\n    - ls /tmp\n"
        )
    };
    let repo = Repo::new(&[(".gitlab-ci.yml", &format!("{}{}", job("a"), job("b")))]);
    let r = repo.run_json(&["--concurrency", "2"]);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(r.log("a")[1], "mine-a", "{}", r.dump());
    assert_eq!(r.log("b")[1], "mine-b", "{}", r.dump());
    assert_ne!(r.log("a")[0], r.log("b")[0], "same container");
    // Both had started before either finished.
    let started = |j: &str| r.index(|e| e["event"] == "job_started" && e["job"] == j);
    let finished = |j: &str| r.index(|e| e["event"] == "job_finished" && e["job"] == j);
    assert!(
        started("a").max(started("b")) < finished("a").min(finished("b")),
        "{}",
        r.dump()
    );
    assert_clean(&repo);
}

#[test]
fn service_is_reachable_by_alias_with_its_variables_and_command() {
    engine();
    let repo = Repo::ci(
        "
job:
  image: gantry-test/base:1
  services:
    - name: gantry-test/service:1
      alias: web
    - name: gantry-test/service:1
      alias: greet
      variables:
        GREETING: hi-from-variables
      command: ['sh', '-c', 'echo \"$GREETING\" > /www/index.html && exec httpd -f -p 80 -h /www']
  script:
    - wget -q -O- http://web/
    - wget -q -O- http://gantry-test__service/
    - wget -q -O- http://gantry-test-service/
    - wget -q -O- http://greet/
",
    );
    let r = repo.run_json(&[]);
    assert_eq!(r.code, 0, "{}", r.dump());
    let log = r.log("job");
    assert_eq!(log[..3], ["gantry-service"; 3], "{}", r.dump());
    assert_eq!(log[3], "hi-from-variables");
    assert_clean(&repo);
}

#[test]
fn a_service_that_never_listens_fails_with_its_log() {
    engine();
    let repo = Repo::ci(
        "
job:
  image: gantry-test/base:1
  services:
    - name: gantry-test/service:1
      command: ['sh', '-c', 'echo service-is-broken; exit 3']
  script: [echo never]
",
    );
    let r = repo.run_json(&[]);
    assert_eq!(r.status("job"), "failed", "{}", r.dump());
    let all = all_output(&r);
    assert!(
        all.contains("gantry-test/service:1") && all.contains("service-is-broken"),
        "{all}"
    );
    assert!(r.log("job").is_empty());
    assert_clean(&repo);
}

#[test]
fn artifacts_pass_from_container_to_shell_and_back() {
    engine();
    let repo = Repo::ci(
        "
stages: [one, two, three]
in-container:
  stage: one
  image: gantry-test/base:1
  script:
    - mkdir -p out && grep ^ID= /etc/os-release > out/first.txt
  artifacts: {paths: [out/]}
in-shell:
  stage: two
  script:
    - test -f /etc/gantry-no-such-file || echo shell > out/second.txt
    - cat out/first.txt
  artifacts: {paths: [out/]}
in-container-again:
  stage: three
  image: gantry-test/base:1
  script:
    - cat out/first.txt out/second.txt
",
    );
    let r = repo.run_json(&[]);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(r.log("in-shell"), ["ID=gantry-test-base"], "{}", r.dump());
    assert_eq!(
        r.log("in-container-again"),
        ["ID=gantry-test-base", "shell"],
        "{}",
        r.dump()
    );
    assert_clean(&repo);
}

#[test]
fn timeout_removes_the_container_and_after_script_still_runs() {
    engine();
    let repo = Repo::ci(
        "
slow:
  image: gantry-test/base:1
  timeout: 2s
  script:
    - echo started
    - sleep 60
  after_script:
    - 'echo \"after: $CI_JOB_STATUS\"'
",
    );
    let r = repo.run_json(&[]);
    assert_eq!(r.status("slow"), "failed", "{}", r.dump());
    assert_eq!(r.log("slow"), ["started", "after: failed"], "{}", r.dump());
    assert!(all_output(&r).contains("timed out"), "{}", r.dump());
    assert_clean(&repo);
}

#[test]
fn cancel_removes_the_container() {
    engine();
    let repo = Repo::ci(
        "
long:
  image: gantry-test/base:1
  script:
    - echo started
    - sleep 300
  after_script:
    - 'echo \"after: $CI_JOB_STATUS\"'
",
    );
    let run = crate::start_run(repo.path(), &[]);
    assert!(
        !leftovers(&repo).is_empty(),
        "no container while running: {:?}",
        run.seen
    );
    let (status, all) = run.interrupt();
    assert_eq!(status.code(), Some(130), "{all}");
    assert!(all.contains("\"line\":\"after: canceled\""), "{all}");
    assert_clean(&repo);
}

#[test]
fn a_missing_image_fails_with_a_clear_message() {
    engine();
    let repo = Repo::ci(
        "
pulled:
  image: gantry-test/no-such-image:1
  script: [echo never]
never-pulled:
  image:
    name: gantry-test/no-such-image:2
    pull_policy: never
  script: [echo never]
",
    );
    let r = repo.run_json(&[]);
    assert_eq!(r.code, 1, "{}", r.dump());
    assert_eq!(r.status("pulled"), "failed");
    assert_eq!(r.status("never-pulled"), "failed");
    let all = all_output(&r);
    assert!(
        all.contains("cannot pull image `gantry-test/no-such-image:1`"),
        "{all}"
    );
    // The reason is in the event stream, on the job's `job_finished`.
    let error = r.finished("pulled")["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("cannot pull image `gantry-test/no-such-image:1`"),
        "{}",
        r.dump()
    );
    let error = r.finished("never-pulled")["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.starts_with("image `gantry-test/no-such-image:2` is not present"),
        "{}",
        r.dump()
    );
    assert!(
        all.contains("image `gantry-test/no-such-image:2` is not present")
            && all.contains("`never`"),
        "{all}"
    );
    assert!(r.log("pulled").is_empty() && r.log("never-pulled").is_empty());
    assert_clean(&repo);
}

#[test]
fn nothing_is_left_behind() {
    engine();
    let repo = Repo::ci(
        "
stages: [a, b]
with-service:
  stage: a
  image: gantry-test/base:1
  services: [gantry-test/service:1]
  script: [wget -q -O- http://gantry-test-service/]
failing:
  stage: a
  image: gantry-test/base:1
  script: [exit 3]
shell:
  stage: b
  script: [echo shell]
",
    );
    let r = repo.run_json(&["--concurrency", "2"]);
    assert_eq!(r.status("with-service"), "success", "{}", r.dump());
    assert_eq!(r.status("failing"), "failed", "{}", r.dump());
    assert_eq!(r.finished("failing")["exit_code"], 3);
    // The shell job did not run: `failing` failed stage a.
    assert_eq!(r.starts("shell"), 0);
    assert_clean(&repo);
}

#[test]
fn shell_executor_flag_keeps_image_jobs_in_the_shell() {
    engine();
    let repo = Repo::ci(
        "job:\n  image: gantry-test/base:1\n  script: [test -e /etc/gantry-x || echo in-shell]\n",
    );
    let r = repo.run_json(&["--shell-executor"]);
    assert_eq!(r.log("job"), ["in-shell"], "{}", r.dump());
    assert_clean(&repo);
}

/// `gantry agent --executor docker` runs `image:` jobs of a pipeline from a server: in the
/// container (bash-less image, so `sh`), with the log, echoes, `after_script` and exit codes back on
/// the server, artifacts passed on to the next job, and nothing left on the engine.
#[test]
fn agent_runs_image_jobs_from_the_server() {
    engine();
    let s = server::Setup::new(Store::Sqlite);
    let repo = Repo::new(&[
        ("hello.txt", "hello from the repository\n"),
        (
            ".gitlab-ci.yml",
            "
stages: [build, test]
build:
  stage: build
  image: gantry-test/base:1
  script:
    - grep ^ID= /etc/os-release
    - cat hello.txt
    - echo \"dir=$CI_PROJECT_DIR pwd=$(pwd)\"
    - echo made-inside > made.txt
    - test -f .git/HEAD && echo has-git
  after_script:
    - 'echo \"after: $CI_JOB_STATUS\"'
  artifacts:
    paths: [made.txt]
fails:
  stage: build
  image: gantry-test/base:1
  allow_failure: true
  script:
    - echo failing >&2
    - exit 3
  after_script:
    - 'echo \"after: $CI_JOB_STATUS\"'
test:
  stage: test
  image: gantry-test/base:1
  script:
    - cat made.txt
",
        ),
    ]);
    let api = server::Api::new(&s.server);
    api.add_project("containers", repo.path());
    let agent = s.agent_with("d1", &["--executor", "docker", "--concurrency", "2"]);
    let id = api.trigger("containers");
    let p = api.finished(id);
    let jobs = || format!("{:#?}\nagent:\n{}", p.jobs, agent.output());
    let build = server::job_named(&p, "build");
    let fails = server::job_named(&p, "fails");
    let test = server::job_named(&p, "test");
    assert_eq!(build.status, gantry_api::JobStatus::Success, "{}", jobs());
    assert_eq!(build.agent.as_deref(), Some("d1"));
    assert_eq!(build.exit_code, Some(0), "{}", jobs());
    let log = api.log(build.id);
    assert!(
        log.contains("$ grep ^ID= /etc/os-release\nID=gantry-test-base\n"),
        "{log}"
    );
    assert!(
        log.contains("$ cat hello.txt\nhello from the repository\n"),
        "{log}"
    );
    let dir = log
        .lines()
        .find_map(|l| l.strip_prefix("dir="))
        .unwrap_or_else(|| panic!("{log}"));
    let (dir, pwd) = dir.split_once(" pwd=").unwrap();
    assert!(dir.starts_with("/builds/") && dir == pwd, "{log}");
    assert!(log.contains("after: success\n"), "{log}");
    // The checkout's repository is in the container's workspace.
    assert!(log.contains("\nhas-git\n"), "{log}");

    assert_eq!(fails.status, gantry_api::JobStatus::Failed, "{}", jobs());
    assert_eq!(fails.exit_code, Some(3), "{}", jobs());
    assert_eq!(fails.failure_reason.as_deref(), Some("script_failure"));
    let log = api.log(fails.id);
    assert!(
        log.contains("failing\n") && log.contains("after: failed\n"),
        "{log}"
    );

    assert_eq!(test.status, gantry_api::JobStatus::Success, "{}", jobs());
    assert!(
        api.log(test.id).contains("\nmade-inside\n"),
        "{}",
        api.log(test.id)
    );
    let left = leftovers_under(s.path());
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Issue 16, finding 3, with the container executor: an `image:` job plants hooks,
/// `core.fsmonitor`, `core.sshCommand` and an `include.path` in the checkout's `.git` (which the
/// container sees through its workspace) and asks for its untracked files (which the agent lists
/// with git on the host); the next job on the same worker needs a fetch, a checkout
/// and a clean by the agent on the host, and none of the planted code runs there.
#[test]
fn planted_git_hooks_from_a_container_never_run_on_the_host() {
    engine();
    let s = server::Setup::new(Store::Sqlite);
    let mark = s.path().join("planted-ran");
    // The agent's own path of the checkout: planted commands name it as the host sees it.
    let host = s.path().join("agents/d1/builds/checkouts/0/plant/.git");
    let (mark, host) = (mark.display(), host.display());
    let plant = format!(
        "set -e\n\
         printf '#!/bin/sh\\necho \"ran $0\" >> {mark}\\nenv >> {mark}\\n' > .git/run\n\
         chmod +x .git/run\n\
         mkdir -p .git/hooks\n\
         for h in post-checkout reference-transaction pre-auto-gc post-merge; do cp .git/run .git/hooks/$h; done\n\
         printf '[core]\\n\\tfsmonitor = {host}/run\\n\\tsshCommand = {host}/run\\n[gc]\\n\\tauto = 1\\n[include]\\n\\tpath = evil.cfg\\n' >> .git/config\n\
         printf '[core]\\n\\thooksPath = {host}/hooks\\n\\tfsmonitor = {host}/run\\n' > .git/evil.cfg\n\
         echo planted\n"
    );
    let yaml = "stages: [first, second]\n\
         plant:\n  stage: first\n  image: gantry-test/base:1\n  variables:\n    GIT_DEPTH: \"1\"\n  script:\n    - sh plant.sh\n  artifacts:\n    untracked: true\n\
         next:\n  stage: second\n  image: gantry-test/base:1\n  variables:\n    GIT_DEPTH: \"0\"\n  script:\n    - echo next-ok\n";
    let repo = Repo::new(&[(".gitlab-ci.yml", yaml), ("plant.sh", &plant)]);
    for i in 1..=2 {
        std::fs::write(repo.path().join("n.txt"), i.to_string()).unwrap();
        repo.git(&["add", "n.txt"]);
        repo.git(&["commit", "-q", "-m", &format!("commit {i}")]);
    }
    let api = server::Api::new(&s.server);
    api.add_project("plant", repo.path());
    let agent = s.agent_with("d1", &["--executor", "docker"]);
    let p = api.finished(api.trigger("plant"));
    let plant = api.log(server::job_named(&p, "plant").id);
    assert!(plant.contains("\nplanted\n"), "{plant}");
    let mark = s.path().join("planted-ran");
    assert!(
        !mark.exists(),
        "planted code ran on the host: {}",
        std::fs::read_to_string(&mark).unwrap_or_default()
    );
    let next = server::job_named(&p, "next");
    assert_eq!(
        next.status,
        gantry_api::JobStatus::Success,
        "{}\nagent:\n{}",
        api.log(next.id),
        agent.output()
    );
    assert!(api.log(next.id).contains("\nnext-ok\n"));
    let left = leftovers_under(s.path());
    assert!(left.is_empty(), "left behind: {left:?}");
}
