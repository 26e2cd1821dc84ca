//! Every runtime keyword, through real pipelines.

use std::time::{Duration, Instant};

use crate::{Repo, scratch};

#[test]
fn artifacts_pass_between_jobs_with_exclude_and_dependencies() {
    let repo = Repo::ci(
        r#"
produce:
  stage: build
  script:
    - mkdir -p out/sub && echo one > out/a.txt && echo two > out/sub/b.txt && echo map > out/x.map
  artifacts:
    paths: [$CI_PROJECT_DIR/out/]
    exclude: ["out/*.map"]
consume:
  stage: test
  script:
    - cat out/a.txt out/sub/b.txt
    - test ! -e out/x.map && echo "no map"
isolated:
  stage: test
  dependencies: []
  script:
    - test ! -e out && echo "nothing restored"
"#,
    );
    let r = repo.run_json(&[]);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(r.log("consume"), ["one", "two", "no map"]);
    assert_eq!(r.log("isolated"), ["nothing restored"]);
}

#[test]
fn workspaces_are_isolated_and_the_working_tree_is_untouched() {
    let repo = Repo::new(&[
        ("tracked.txt", "original\n"),
        (
            ".gitlab-ci.yml",
            "
first:
  stage: build
  script:
    - echo leftover > leftover.txt
    - rm tracked.txt && echo changed > tracked.txt
second:
  stage: test
  script:
    - cat tracked.txt
    - test ! -e leftover.txt && echo clean
",
        ),
    ]);
    std::fs::write(repo.path().join("uncommitted.txt"), "dirty\n").unwrap();
    let r = repo.run_json(&[]);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(r.log("second"), ["original", "clean"]);
    assert_eq!(
        std::fs::read_to_string(repo.path().join("tracked.txt")).unwrap(),
        "original\n"
    );
    assert!(!repo.path().join("leftover.txt").exists());
    // Uncommitted files are part of the workspace.
    let repo2 = Repo::ci("job:\n  script: [cat uncommitted.txt]\n");
    std::fs::write(repo2.path().join("uncommitted.txt"), "dirty\n").unwrap();
    let r = repo2.run_json(&[]);
    assert_eq!(r.log("job"), ["dirty"], "{}", r.dump());
}

#[test]
fn cache_is_restored_on_the_next_run_and_policy_pull_never_saves() {
    let repo = Repo::ci(
        r#"
warm:
  cache:
    key: deps-$CI_COMMIT_REF_SLUG
    paths: [deps/]
  script:
    - test -f deps/marker && echo "cache hit" || echo "cache miss"
    - mkdir -p deps && echo x > deps/marker
readonly:
  cache:
    key: ro
    paths: [ro/]
    policy: pull
  script:
    - test -f ro/marker && echo "ro hit" || echo "ro miss"
    - mkdir -p ro && echo x > ro/marker
"#,
    );
    let first = repo.run_json(&[]);
    assert_eq!(first.log("warm"), ["cache miss"], "{}", first.dump());
    assert_eq!(first.log("readonly"), ["ro miss"]);
    let second = repo.run_json(&[]);
    assert_eq!(second.log("warm"), ["cache hit"], "{}", second.dump());
    assert_eq!(second.log("readonly"), ["ro miss"]);
}

#[test]
fn retry_reruns_until_it_passes() {
    let (_keep, dir) = scratch();
    let counter = dir.join("count");
    let repo = Repo::ci(
        "
flaky:
  retry: 2
  script:
    - echo run >> \"$COUNTER\"
    - test $(wc -l < \"$COUNTER\") -ge 3
never-retried:
  retry:
    max: 2
    when: [runner_system_failure]
  script: [exit 1]
  allow_failure: true
",
    );
    let r = repo.run_json(&["--variable", &format!("COUNTER={}", counter.display())]);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(r.starts("flaky"), 3);
    assert_eq!(r.status("flaky"), "success");
    assert_eq!(r.starts("never-retried"), 1);
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let (_keep, dir) = scratch();
    let pidfile = dir.join("pid");
    let repo = Repo::ci(
        "
slow:
  timeout: 1s
  script:
    - sleep 300 & echo $! > \"$PIDFILE\"
    - sleep 300
",
    );
    let started = Instant::now();
    let r = repo.run_json(&["--variable", &format!("PIDFILE={}", pidfile.display())]);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the timeout did not stop the job"
    );
    assert_eq!(r.code, 1, "{}", r.dump());
    assert_eq!(r.status("slow"), "failed");
    assert!(r.finished("slow")["exit_code"].is_null());
    assert_gone(&pidfile, "the background child, after the timeout");
}

#[test]
fn allow_failure_with_exit_codes() {
    let repo = Repo::ci(
        "
allowed:
  script: [exit 3]
  allow_failure: {exit_codes: [3]}
not-allowed:
  script: [exit 4]
  allow_failure: {exit_codes: [3]}
",
    );
    let r = repo.run_json(&[]);
    assert_eq!(r.code, 1, "{}", r.dump());
    assert_eq!(r.finished("allowed")["allow_failure"], true);
    assert_eq!(r.finished("allowed")["exit_code"], 3);
    assert_eq!(r.finished("not-allowed")["allow_failure"], false);
    assert_eq!(r.pipeline(), "failed");
    let only_allowed = repo.run_json(&["allowed"]);
    assert_eq!(only_allowed.code, 0, "{}", only_allowed.dump());
    assert_eq!(only_allowed.pipeline(), "success");
}

#[test]
fn after_script_runs_after_a_failure_and_cannot_change_the_status() {
    let repo = Repo::ci(
        "
job:
  before_script: [export FROM_BEFORE=yes]
  script:
    - echo \"script sees $FROM_BEFORE\"
    - exit 7
    - echo unreachable
  after_script:
    - 'echo \"after: $CI_JOB_STATUS, before_script var: ${FROM_BEFORE:-unset}\"'
    - exit 9
passing:
  script: [echo ok]
  after_script: ['echo \"after: $CI_JOB_STATUS\"', exit 1]
",
    );
    let r = repo.run_json(&[]);
    assert_eq!(
        r.log("job"),
        ["script sees yes", "after: failed, before_script var: unset"],
        "{}",
        r.dump()
    );
    assert_eq!(r.finished("job")["exit_code"], 7);
    assert_eq!(r.status("passing"), "success");
    assert_eq!(r.log("passing"), ["ok", "after: success"]);
}

#[test]
fn on_failure_and_always_jobs() {
    let repo = Repo::ci(
        "
stages: [build, test, cleanup]
broken:
  stage: build
  script: [exit 1]
skipped:
  stage: test
  script: [echo should not run]
notify:
  stage: cleanup
  when: on_failure
  script: [echo notified]
tidy:
  stage: cleanup
  when: always
  script: [echo tidied]
",
    );
    let r = repo.run_json(&[]);
    assert_eq!(r.code, 1);
    assert_eq!(r.status("skipped"), "skipped");
    assert_eq!(r.log("notify"), ["notified"]);
    assert_eq!(r.log("tidy"), ["tidied"]);
    let ok = Repo::ci(
        "a:\n  script: [\"true\"]\nnotify:\n  stage: deploy\n  when: on_failure\n  script: [echo x]\n",
    );
    let r = ok.run_json(&[]);
    assert_eq!(r.status("notify"), "skipped", "{}", r.dump());
    assert_eq!(r.starts("notify"), 0);
}

#[test]
fn manual_jobs_run_only_when_played() {
    let repo = Repo::ci(
        "build:\n  script: [echo built]\ndeploy:\n  when: manual\n  script: [echo deployed]\n",
    );
    let r = repo.run_json(&[]);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(r.status("deploy"), "manual");
    assert_eq!(r.starts("deploy"), 0);
    let r = repo.run_json(&["--manual", "deploy"]);
    assert_eq!(r.log("deploy"), ["deployed"], "{}", r.dump());
}

#[test]
fn delayed_jobs_wait_for_start_in() {
    let repo = Repo::ci("later:\n  when: delayed\n  start_in: 2 seconds\n  script: [echo late]\n");
    let t = Instant::now();
    let r = repo.run_json(&[]);
    assert_eq!(r.log("later"), ["late"], "{}", r.dump());
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "the delayed job did not wait"
    );
}

#[test]
fn needs_start_jobs_without_waiting_for_unrelated_stages() {
    let (_keep, dir) = scratch();
    let marker = dir.join("fast-done");
    let repo = Repo::ci(
        "
slow:
  stage: build
  script:
    - for i in $(seq 1 100); do test -e \"$MARKER\" && break; sleep 0.1; done
    - test -e \"$MARKER\" && echo \"fast finished first\"
fast:
  stage: test
  needs: []
  script: [touch \"$MARKER\"]
",
    );
    let r = repo.run_json(&[
        "--variable",
        &format!("MARKER={}", marker.display()),
        "--concurrency",
        "2",
    ]);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(r.log("slow"), ["fast finished first"]);
}

#[test]
fn matrix_jobs_get_names_and_variables() {
    let repo = Repo::ci(
        "
build:
  parallel:
    matrix:
      - OS: [linux, darwin]
        ARCH: amd64
  script: [echo \"$OS/$ARCH $CI_NODE_INDEX/$CI_NODE_TOTAL $CI_JOB_NAME\"]
shard:
  parallel: 2
  script: [echo \"shard $CI_NODE_INDEX of $CI_NODE_TOTAL\"]
",
    );
    let r = repo.run_json(&[]);
    assert_eq!(
        r.log("build: [linux, amd64]"),
        ["linux/amd64 1/2 build: [linux, amd64]"],
        "{}",
        r.dump()
    );
    assert_eq!(
        r.log("build: [darwin, amd64]"),
        ["darwin/amd64 2/2 build: [darwin, amd64]"]
    );
    assert_eq!(r.log("shard 2/2"), ["shard 2 of 2"]);
}

#[test]
fn resource_group_runs_one_job_at_a_time() {
    let (_keep, dir) = scratch();
    let log = dir.join("log");
    let job = |n: &str| {
        format!(
            "{n}:\n  resource_group: prod\n  script:\n    - echo start >> \"$LOG\"\n    - sleep 0.3\n    - echo end >> \"$LOG\"\n"
        )
    };
    let yml = format!("{}{}{}", job("a"), job("b"), job("c"));
    let repo = Repo::ci(&yml);
    let r = repo.run_json(&[
        "--variable",
        &format!("LOG={}", log.display()),
        "--concurrency",
        "3",
    ]);
    assert_eq!(r.code, 0, "{}", r.dump());
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        lines,
        "start\nend\n".repeat(3),
        "jobs of one resource group overlapped"
    );
}

#[test]
fn masked_variables_never_appear_in_output() {
    let repo = Repo::ci(
        "job:\n  script:\n    - echo \"token is $TOKEN\"\n    - echo \"file secret $FILE_SECRET\" >&2\n    - echo \"$TOKEN\"\n",
    );
    std::fs::write(
        repo.path().join("vars.yml"),
        "FILE_SECRET:\n  value: s3cr3t-value\n  masked: true\n",
    )
    .unwrap();
    let out = repo.gantry(&[
        "run",
        "--variable",
        "TOKEN=hunter2-token",
        "--mask",
        "TOKEN",
        "--variables-file",
        "vars.yml",
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("hunter2-token") && !text.contains("s3cr3t-value"),
        "{text}"
    );
    assert!(
        text.contains("token is [MASKED]") && text.contains("file secret [MASKED]"),
        "{text}"
    );
    let r = repo.run_json(&[
        "--variable",
        "TOKEN=hunter2-token",
        "--mask",
        "TOKEN",
        "--variables-file",
        "vars.yml",
    ]);
    assert!(
        !r.stdout.contains("hunter2-token") && !r.stdout.contains("s3cr3t-value"),
        "{}",
        r.dump()
    );
}

#[test]
fn dotenv_reports_pass_variables_to_later_jobs() {
    let repo = Repo::ci(
        "
build:
  stage: build
  script: [echo VERSION=1.2.3 > build.env]
  artifacts:
    reports:
      dotenv: build.env
deploy:
  stage: deploy
  script: [echo \"deploying $VERSION\"]
",
    );
    let r = repo.run_json(&[]);
    assert_eq!(r.log("deploy"), ["deploying 1.2.3"], "{}", r.dump());
}

#[test]
fn coverage_is_read_from_the_log() {
    let repo = Repo::ci(
        "test:\n  script: [\"echo 'Coverage: 10%'\", \"echo 'Coverage: 87.5%'\"]\n  coverage: '/Coverage: (\\d+\\.?\\d*)%/'\n",
    );
    let r = repo.run_json(&[]);
    assert_eq!(r.finished("test")["coverage"], 87.5, "{}", r.dump());
}

#[test]
fn predefined_and_precedence_of_variables() {
    let repo = Repo::ci(
        "
variables:
  WHO: global
  BOTH: global
job:
  variables:
    BOTH: job
    DERIVED: ${BOTH}-derived
  environment:
    name: review/$CI_COMMIT_REF_NAME
    url: https://example.com
  script:
    - echo \"$CI_COMMIT_SHA $CI_COMMIT_BRANCH $CI_JOB_NAME $CI_JOB_STAGE $CI_PIPELINE_SOURCE\"
    - echo \"$WHO $BOTH $DERIVED $CLI_ONLY\"
    - echo \"$CI_ENVIRONMENT_NAME $CI_ENVIRONMENT_SLUG $CI_ENVIRONMENT_URL $CI_ENVIRONMENT_TIER\"
    - test \"$CI_PROJECT_DIR\" = \"$(pwd)\" && echo \"in project dir\"
",
    );
    let sha = repo.git(&["rev-parse", "HEAD"]).trim().to_string();
    let r = repo.run_json(&["--variable", "WHO=cli", "--variable", "CLI_ONLY=yes"]);
    assert_eq!(
        r.log("job"),
        [
            format!("{sha} main job test push"),
            "cli job job-derived yes".to_string(),
            "review/main review-main-yi2y9f https://example.com development".to_string(),
            "in project dir".to_string(),
        ],
        "{}",
        r.dump()
    );
}

#[test]
fn ctrl_c_cancels_runs_after_script_and_exits_130() {
    let (_keep, dir) = scratch();
    let pidfile = dir.join("pid");
    let repo = Repo::ci(
        "
long:
  script:
    - sleep 300 & echo $! > \"$PIDFILE\"
    - echo started
    - sleep 300
  after_script:
    - 'echo \"after: $CI_JOB_STATUS\"'
",
    );
    let pidvar = format!("PIDFILE={}", pidfile.display());
    let (status, all) = crate::start_run(repo.path(), &["--variable", &pidvar]).interrupt();
    assert_eq!(status.code(), Some(130), "{all}");
    assert!(all.contains("\"line\":\"after: canceled\""), "{all}");
    assert!(
        all.contains("{\"event\":\"pipeline_finished\",\"status\":\"canceled\""),
        "{all}"
    );
    assert_gone(&pidfile, "the child, after Ctrl-C");
}

/// Asserts that the process whose id `pidfile` holds is gone, after a moment to be reaped; `what`
/// names it in the failure.
fn assert_gone(pidfile: &std::path::Path, what: &str) {
    let pid = std::fs::read_to_string(pidfile).unwrap().trim().to_string();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "{what}: process {pid} survived"
    );
}

#[test]
fn variables_file_entries_apply_by_environment_scope() {
    let repo = Repo::ci(
        "
prod:
  script: [echo \"prod DB_HOST=$DB_HOST\"]
  environment: {name: production}
review:
  variables: {SLUG: x}
  script: [echo \"review DB_HOST=$DB_HOST\"]
  environment: {name: review/$SLUG}
plain:
  script: [echo \"plain DB_HOST=$DB_HOST\"]
",
    );
    std::fs::write(
        repo.path().join("vars.yml"),
        "DB_HOST:\n  - {value: db-default.internal}\n  - {value: db-prod.internal, environment_scope: production}\n  - {value: db-review.internal, environment_scope: \"review/*\"}\n",
    )
    .unwrap();
    let out = repo.gantry(&["run", "--variables-file", "vars.yml"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    for want in [
        "prod DB_HOST=db-prod.internal",
        "review DB_HOST=db-review.internal",
        "plain DB_HOST=db-default.internal",
    ] {
        assert!(text.contains(want), "no `{want}` in {text}");
    }
    // `--mask` reaches scoped values.
    let out = repo.gantry(&["run", "--variables-file", "vars.yml", "--mask", "DB_HOST"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(".internal"), "{text}");
    assert!(text.contains("prod DB_HOST=[MASKED]"), "{text}");
}

#[test]
fn bad_variables_file_entries_name_the_file_and_line() {
    let repo = Repo::ci("job: {script: [true]}\n");
    for (file, want) in [
        (
            "A: plain\nDB_HOST:\n  - {environment_scope: production}\n",
            "gantry: vars.yml:3:5: variable `DB_HOST` needs a `value`\n",
        ),
        (
            "DB_HOST:\n  - value: db\n    scope: production\n",
            "gantry: vars.yml:3:5: variable `DB_HOST`: unknown key `scope` (expected one of value, masked, expand, description, environment_scope)\n",
        ),
    ] {
        std::fs::write(repo.path().join("vars.yml"), file).unwrap();
        let out = repo.gantry(&["run", "--variables-file", "vars.yml"]);
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(String::from_utf8_lossy(&out.stderr), want);
    }
}
