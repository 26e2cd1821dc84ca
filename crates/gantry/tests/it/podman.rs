//! `gantry run` against Podman's Docker-compatible service (`scripts/podman.sh`), which the
//! container executor speaks to as it speaks to Docker.
//!
//! This test needs the service that `scripts/podman.sh` starts (it prints
//! `export GANTRY_TEST_PODMAN_HOST=...`); without it, it fails, saying so.

use std::process::Command;

use super::{Repo, Run, gantry_cmd};

fn podman_host() -> String {
    std::env::var("GANTRY_TEST_PODMAN_HOST").unwrap_or_else(|_| {
        panic!(
            "this test needs Podman's service: run `eval \"$(scripts/podman.sh)\"` (it prints \
             `export GANTRY_TEST_PODMAN_HOST=...`), then the tests"
        )
    })
}

/// The containers the service still has for jobs of `repo`.
fn leftovers(host: &str, repo: &Repo) -> Vec<String> {
    let out = Command::new("podman")
        .args(["--remote", "--url", host, "ps", "-a", "--filter"])
        .arg("label=gantry.managed=true")
        .args(["--format", "{{index .Labels \"gantry.workspace\"}}"])
        .output()
        .expect("podman runs");
    assert!(out.status.success(), "{out:?}");
    let root = repo.path().to_string_lossy().into_owned();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&root))
        .map(str::to_string)
        .collect()
}

#[test]
fn podman_runs_image_jobs_with_after_script_and_artifacts_and_says_why_one_cannot_start() {
    let host = podman_host();
    let repo = Repo::new(&[
        ("hello.txt", "hello from the repository\n"),
        (
            ".gitlab-ci.yml",
            "
build:
  stage: build
  image: gantry-test/base:1
  script:
    - grep ^ID= /etc/os-release
    - cat hello.txt
    - echo \"image=$CI_JOB_IMAGE\"
    - echo made-inside > made.txt
  after_script:
    - echo \"after=$CI_JOB_STATUS\"
  artifacts:
    paths: [made.txt]
check:
  stage: test
  script: [cat made.txt]
absent:
  image:
    name: gantry-test/absent:1
    pull_policy: never
  script: [echo never]
",
        ),
    ]);
    let out = gantry_cmd(repo.path())
        .env("DOCKER_HOST", &host)
        .args(["run", "--output", "json"])
        .output()
        .expect("gantry runs");
    let r = Run::parse(out);
    assert_eq!(r.status("build"), "success", "{}", r.dump());
    assert_eq!(
        r.log("build"),
        [
            "ID=gantry-test-base",
            "hello from the repository",
            "image=gantry-test/base:1",
            "after=success",
        ],
        "{}",
        r.dump()
    );
    assert_eq!(r.log("check"), ["made-inside"], "{}", r.dump());
    assert_eq!(r.status("absent"), "failed");
    let error = r.finished("absent")["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("image `gantry-test/absent:1` is not present"),
        "{}",
        r.dump()
    );
    assert_eq!(r.code, 1);
    assert!(
        leftovers(&host, &repo).is_empty(),
        "{:?}",
        leftovers(&host, &repo)
    );
}
