//! The command line: exit codes, errors, listings, preview, lint and human output.

use crate::Repo;

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `gantry run --list-json`'s answer, and its job names.
fn list_json(out: &std::process::Output) -> (serde_json::Value, Vec<String>) {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON: {e}: {:?}", text(out)));
    let names = v
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap().to_string())
        .collect();
    (v, names)
}

/// `gantry run --output json` of the pipeline `ci`, which must end in a configuration error.
fn refused(ci: &str) -> crate::Run {
    let r = Repo::ci(ci).run_json(&[]);
    assert_eq!(r.code, 2);
    r
}

#[test]
fn exit_codes_follow_the_pipeline() {
    let ok = Repo::ci("a:\n  script: [\"true\"]\n");
    assert_eq!(ok.gantry(&["run"]).status.code(), Some(0));
    let bad = Repo::ci("a:\n  script: [\"false\"]\n");
    assert_eq!(bad.gantry(&["run"]).status.code(), Some(1));
}

#[test]
fn configuration_errors_exit_2_and_run_nothing() {
    let repo =
        Repo::ci("a:\n  script: [touch ran]\nb:\n  needs: [missing]\n  script: [\"true\"]\n");
    let r = repo.run_json(&[]);
    assert_eq!(r.code, 2, "{}", r.dump());
    assert_eq!(r.events.len(), 1, "{}", r.dump());
    assert_eq!(r.events[0]["event"], "error");
    assert_eq!(
        r.events[0]["message"],
        ".gitlab-ci.yml:4:11: `b` needs `missing`, which is not a job of this pipeline"
    );
    assert!(
        !repo.path().join(".gantry/builds").exists()
            || std::fs::read_dir(repo.path().join(".gantry/builds"))
                .unwrap()
                .next()
                .is_none()
    );
    let human = repo.gantry(&["run"]);
    let (_, err) = text(&human);
    assert_eq!(human.status.code(), Some(2));
    assert!(
        err.contains(".gitlab-ci.yml:4:11: `b` needs `missing`"),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let repo = Repo::ci("a:\n  script: [\"true\"]\n");
    let r = repo.run_json(&["--variable", "NOEQUALS"]);
    assert_eq!(r.code, 2);
    assert_eq!(
        r.events[0]["message"],
        "--variable `NOEQUALS` must be KEY=VALUE"
    );
    assert_eq!(repo.run_json(&["no-such-job"]).code, 2);
    assert_eq!(
        repo.gantry(&["run", "--no-such-flag"]).status.code(),
        Some(2)
    );
    assert_eq!(repo.run_json(&["--file", "missing.yml"]).code, 2);
    assert_eq!(repo.run_json(&["--stage", "nope"]).code, 2);
}

#[test]
fn malformed_yaml_is_a_configuration_error() {
    refused("a:\n  script: [true\n").assert_message_has("invalid YAML");
}

#[test]
fn list_json_and_table() {
    let repo = Repo::ci(
        "build:\n  stage: build\n  script: [make]\ntest:\n  needs: [build]\n  script: [make test]\ndeploy:\n  stage: deploy\n  when: manual\n  environment: production\n  script: [./deploy]\n",
    );
    let out = repo.gantry(&["run", "--list-json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!([
            {"name": "build", "stage": "build", "when": "on_success", "allow_failure": false, "needs": [], "environment": null},
            {"name": "test", "stage": "test", "when": "on_success", "allow_failure": false, "needs": ["build"], "environment": null},
            {"name": "deploy", "stage": "deploy", "when": "manual", "allow_failure": true, "needs": [], "environment": "production"},
        ])
    );
    let (table, _) = text(&repo.gantry(&["run", "--list"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("WHY"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("test") && lines[2].contains("[build]"),
        "{table}"
    );
    assert!(
        lines[3].contains("manual") && lines[3].contains("production"),
        "{table}"
    );
}

#[test]
fn list_json_of_a_pipeline_that_workflow_rules_do_not_create_is_empty() {
    let repo = Repo::ci(
        "workflow:\n  rules:\n    - if: $CI_PIPELINE_SOURCE == \"schedule\"\njob:\n  script: [\"true\"]\n",
    );
    let out = repo.gantry(&["run", "--list-json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON: {e}: {:?}", text(&out)));
    assert_eq!(v, serde_json::json!([]));
}

#[test]
fn list_leaves_out_jobs_that_only_default_keeps_out_of_merge_request_pipelines() {
    let repo = Repo::ci(
        "plain:\n  script: [\"true\"]\nmr:\n  script: [\"true\"]\n  rules:\n    - if: $CI_PIPELINE_SOURCE == \"merge_request_event\"\n",
    );
    let out = repo.gantry(&[
        "run",
        "--list-json",
        "--pipeline-source",
        "merge_request_event",
    ]);
    assert_eq!(list_json(&out).1, ["mr"]);
    let (table, _) =
        text(&repo.gantry(&["run", "--list", "--pipeline-source", "merge_request_event"]));
    assert!(!table.lines().any(|l| l.starts_with("plain")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("mr")), "{table}");
}

#[test]
fn needs_flag_follows_optional_needs_present_and_skips_those_rules_removed() {
    let repo = Repo::ci(
        "gone:\n  stage: build\n  script: [x]\n  rules: [{when: never}]\nhere:\n  stage: build\n  script: [x]\nother:\n  stage: build\n  script: [x]\ntest:\n  script: [x]\n  needs:\n    - {job: gone, optional: true}\n    - {job: here, optional: true}\n",
    );
    let out = repo.gantry(&["run", "test", "--needs", "--list-json"]);
    let (v, names) = list_json(&out);
    assert_eq!(names, ["here", "test"]);
    assert_eq!(v[1]["needs"], serde_json::json!(["here"]));
}

#[test]
fn preview_prints_expanded_yaml() {
    let repo = Repo::new(&[
        (
            ".gitlab-ci.yml",
            "include: base.yml\ndefault:\n  before_script: [echo default]\njob:\n  extends: .base\n  script: [echo job]\n",
        ),
        ("base.yml", ".base:\n  variables: {FROM: base}\n"),
    ]);
    let out = repo.gantry(&["run", "--preview"]);
    let (yaml, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(yaml.contains("job:\n  variables:\n    FROM: base\n  script:\n  - echo job\n  before_script:\n  - echo default\n"), "{yaml}");
}

#[test]
fn lint_reports_positions_and_exit_codes() {
    let repo =
        Repo::ci("stages: [build]\njob:\n  stage: test\n  script: [\"true\"]\n  scritp: [x]\n");
    let out = repo.gantry(&["lint"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            ".gitlab-ci.yml:3:3: `job`: stage `test` is not defined in `stages` (.pre, build, .post)",
            ".gitlab-ci.yml:5:3: `job`: unknown keyword `scritp`; did you mean `script`?",
        ]
    );
    let json = repo.gantry(&["lint", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(
        v["diagnostics"][1],
        serde_json::json!({"file": ".gitlab-ci.yml", "line": 5, "column": 3, "severity": "error", "message": "`job`: unknown keyword `scritp`; did you mean `script`?"})
    );
    let good = Repo::ci("job:\n  script: [\"true\"]\n");
    let out = good.gantry(&["lint"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out).0, ".gitlab-ci.yml: valid (1 jobs)\n");
}

#[test]
fn lint_warns_of_duplicate_keys_and_accepts_them_as_gitlab_does() {
    let repo = Repo::ci("job:\n  script: [a]\n  script: [b]\n");
    let out = repo.gantry(&["lint"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out).0,
        ".gitlab-ci.yml:3:3: warning: duplicate key `script`: the last value wins\n\
         .gitlab-ci.yml: valid (1 jobs)\n"
    );
    let json = repo.gantry(&["lint", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["diagnostics"][0]["severity"], "warning");
    assert_eq!(v["diagnostics"][0]["line"], 3);
}

#[test]
fn lint_takes_the_variables_and_pipeline_source_that_run_takes() {
    let repo = Repo::new(&[
        (
            ".gitlab-ci.yml",
            "include:\n  - local: extra.yml\n    rules: [{if: $EXTRA == \"1\"}]\n\
             a: {script: [x], rules: [{if: $X == \"1\"}]}\n\
             b: {script: [x], rules: [{if: $CI_PIPELINE_SOURCE == \"schedule\"}]}\n\
             c: {script: [x]}\n",
        ),
        ("extra.yml", "extra: {script: [x]}\n"),
        ("vars.yml", "EXTRA: '1'\n"),
    ]);
    let out = repo.gantry(&["lint"]);
    assert_eq!(text(&out).0, ".gitlab-ci.yml: valid (1 jobs)\n");
    let out = repo.gantry(&[
        "lint",
        "--variable",
        "X=1",
        "--variables-file",
        "vars.yml",
        "--pipeline-source",
        "schedule",
    ]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert_eq!(text(&out).0, ".gitlab-ci.yml: valid (4 jobs)\n");
    let bad = repo.gantry(&["lint", "--variable", "X"]);
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(text(&bad).1, "gantry: --variable `X` must be KEY=VALUE\n");
}

/// The names of the jobs `gantry run --list-json ARGS` lists.
fn listed(repo: &Repo, args: &[&str]) -> Vec<String> {
    let mut all = vec!["run", "--list-json"];
    all.extend_from_slice(args);
    let out = repo.gantry(&all);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    crate::job_names(&out.stdout)
}

#[test]
fn a_tagged_branch_head_is_a_branch_pipeline_and_a_detached_tag_a_tag_pipeline() {
    let repo = Repo::new(&[(
        ".gitlab-ci.yml",
        "on-tags: {script: [x], only: [tags]}\n\
         on-branches: {script: [x], only: [branches]}\n\
         branch-var: {script: [x], rules: [{if: $CI_COMMIT_BRANCH}]}\n\
         tag-v1: {script: [x], rules: [{if: $CI_COMMIT_REF_NAME == \"v1.0\"}]}\n",
    )]);
    repo.git(&["tag", "v1.0"]);
    // A push of `main` is a branch pipeline, whatever tags point at its commit.
    assert_eq!(listed(&repo, &[]), ["on-branches", "branch-var"]);
    // A tag pipeline: the user names the tag...
    assert_eq!(
        listed(&repo, &["--variable", "CI_COMMIT_TAG=v1.0"]),
        ["on-tags", "tag-v1"]
    );
    // ... or checks it out (a detached HEAD at the tag).
    repo.git(&["checkout", "-q", "--detach", "v1.0"]);
    assert_eq!(listed(&repo, &[]), ["on-tags", "tag-v1"]);
}

#[test]
fn image_jobs_fail_clearly_when_the_image_cannot_be_had_and_run_in_the_shell_on_request() {
    let repo = Repo::ci("job:\n  image: alpine:3\n  script: [echo in shell]\n");
    let r = repo.run_json(&[]);
    assert_eq!(r.code, 1, "{}", r.dump());
    assert_eq!(r.status("job"), "failed");
    assert!(
        r.stderr.contains("alpine:3") || r.stdout.contains("alpine:3"),
        "{}",
        r.dump()
    );
    let r = repo.run_json(&["--shell-executor"]);
    assert_eq!(r.log("job"), ["in shell"], "{}", r.dump());
}

#[test]
fn trigger_jobs_are_refused_clearly() {
    let r = refused("child:\n  trigger:\n    include: child.yml\n");
    r.assert_message_has("`trigger`");
    r.assert_message_has("not supported yet");
}

#[test]
fn human_output_has_prefixes_echo_and_a_summary() {
    let repo = Repo::ci(
        "build-job:\n  stage: build\n  script: [echo hello]\nt:\n  script: [echo bye, exit 3]\n",
    );
    let out = repo.gantry(&["run"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.contains("build-job $ echo hello\n"), "{stdout}");
    assert!(stdout.contains("build-job > hello\n"), "{stdout}");
    assert!(stdout.contains("t         > bye\n"), "{stdout}");
    assert!(
        !stdout.contains('\x1b'),
        "no colours when stdout is not a terminal: {stdout}"
    );
    let summary: Vec<&str> = stdout.lines().skip_while(|l| !l.is_empty()).collect();
    assert!(
        summary
            .iter()
            .any(|l| l.starts_with("PASS") && l.contains("build-job")),
        "{stdout}"
    );
    assert!(
        summary
            .iter()
            .any(|l| l.starts_with("FAIL") && l.contains(" t ") && l.contains("exit code 3")),
        "{stdout}"
    );
    assert!(
        summary.iter().any(|l| l.contains("│ bye")),
        "the failed job's last lines are shown: {stdout}"
    );
    assert!(
        summary.last().unwrap().starts_with("pipeline failed in"),
        "{stdout}"
    );
}

/// A job with `before_script`, `script` (with a section of its own) and `after_script`.
const SECTIONED: &str = "j:\n  before_script: [echo before]\n  script:\n    - printf '\\033[0Ksection_start:1:mine\\r\\033[0KMy header\\n'\n    - echo inside\n    - printf '\\033[0Ksection_end:2:mine\\r\\033[0K\\n'\n    - exit 3\n  after_script: [echo after]\n";

#[test]
fn human_output_shows_no_section_markers_and_a_jobs_own_section_header() {
    let out = Repo::ci(SECTIONED).gantry(&["run"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(!stdout.contains('\x1b'), "{stdout}");
    let log: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("j > "))
        .collect();
    assert!(!log.iter().any(|l| l.contains("section_")), "{stdout}");
    assert_eq!(
        log[..5],
        [
            "starting, stage test",
            "before",
            "My header",
            "inside",
            "after"
        ],
        "{stdout}"
    );
    assert!(log[5].starts_with("failed, exit code 3 in"), "{stdout}");
}

#[test]
fn json_job_log_carries_a_jobs_own_section_markers_only() {
    let run = Repo::ci(SECTIONED).run_json(&[]);
    assert_eq!(
        run.log("j"),
        [
            "before",
            "\x1b[0Ksection_start:1:mine\r\x1b[0KMy header",
            "inside",
            "\x1b[0Ksection_end:2:mine\r\x1b[0K",
            "after",
        ],
        "{}",
        run.stdout
    );
}

#[test]
fn named_jobs_and_needs_selection() {
    let repo = Repo::ci(
        "a:\n  stage: build\n  script: [echo a]\nb:\n  stage: test\n  needs: [a]\n  script: [echo b]\nc:\n  stage: deploy\n  needs: [b]\n  script: [echo c]\n",
    );
    let only = repo.run_json(&["c"]);
    assert_eq!(
        (only.starts("a"), only.starts("b"), only.starts("c")),
        (0, 0, 1),
        "{}",
        only.dump()
    );
    let needs = repo.run_json(&["--needs", "c"]);
    assert_eq!(
        (needs.starts("a"), needs.starts("b"), needs.starts("c")),
        (1, 1, 1)
    );
    let only_needs = repo.run_json(&["--only-needs", "c"]);
    assert_eq!(
        (
            only_needs.starts("a"),
            only_needs.starts("b"),
            only_needs.starts("c")
        ),
        (1, 1, 0)
    );
    let stage = repo.run_json(&["--stage", "test"]);
    assert_eq!(
        (stage.starts("a"), stage.starts("b"), stage.starts("c")),
        (0, 1, 0)
    );
}

#[test]
fn on_a_terminal_a_status_line_is_shown_and_never_mixed_into_output() {
    let repo = Repo::ci(
        "a:\n  script: [echo one, echo two]\nb:\n  stage: deploy\n  script: [echo three]\n",
    );
    // `script` (util-linux) gives gantry a pseudo-terminal for stdout.
    let cmd = format!("{} run", env!("CARGO_BIN_EXE_gantry"));
    let out = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .current_dir(repo.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("script runs");
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let status = "1 running · 1 queued · 0/2 done";
    assert!(stdout.contains(status), "no status line: {stdout:?}");
    // Every drawn status line is erased before the next output line is written.
    for (i, _) in stdout.match_indices("done\x1b[0m") {
        let rest = &stdout[i + "done\x1b[0m".len()..];
        assert!(
            rest.is_empty() || rest.starts_with("\r\x1b[2K"),
            "status line not cleared: {stdout:?}"
        );
    }
    let lines: Vec<String> = stdout
        .split("\r\n")
        .map(|l| l.rsplit("\x1b[2K").next().unwrap_or(l).to_string())
        .collect();
    assert!(lines.iter().any(|l| l == "a $ echo one"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "b > three"), "{lines:?}");
}

/// Manual jobs and job selection, as gitlab-ci-local (whose `run` flags Gantry follows) does it:
/// a manual job runs when it is named or played with `--manual`; one that is not played holds
/// nothing up, but a job that `needs` it cannot run, which is an error that says what to play.
const MANUAL_PIPELINE: &str = "
setup:
  stage: .pre
  when: manual
  script: [echo setup]
compile:
  stage: build
  rules:
    - when: manual
  script: [echo compile]
unit:
  stage: test
  needs: [setup]
  script: [echo unit]
lint:
  stage: test
  script: [echo lint]
publish:
  stage: deploy
  script: [echo publish]
";

fn ran(r: &crate::Run) -> Vec<&'static str> {
    ["setup", "compile", "unit", "lint", "publish"]
        .into_iter()
        .filter(|j| r.starts(j) > 0)
        .collect()
}

fn error_message(r: &crate::Run) -> String {
    r.events
        .iter()
        .find(|e| e["event"] == "error")
        .and_then(|e| e["message"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_needed_manual_job_that_is_not_played_is_an_error() {
    let repo = Repo::ci(MANUAL_PIPELINE);
    for args in [&[][..], &["--needs", "unit"], &["--only-needs", "unit"]] {
        let r = repo.run_json(args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.dump());
        assert!(ran(&r).is_empty(), "{args:?}: {}", r.dump());
        let msg = error_message(&r);
        assert!(
            msg.contains("`unit` needs `setup`, a manual job") && msg.contains("--manual setup"),
            "{args:?}: {msg}"
        );
    }
    // Listing is not running: it still works.
    let list = repo.gantry(&["run", "--list-json"]);
    assert!(list.status.success(), "{list:?}");
}

#[test]
fn played_manual_jobs_run_and_unplayed_ones_hold_nothing_up() {
    let repo = Repo::ci(MANUAL_PIPELINE);
    let r = repo.run_json(&["--manual", "setup"]);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(
        ran(&r),
        ["setup", "unit", "lint", "publish"],
        "{}",
        r.dump()
    );
    assert_eq!(r.status("compile"), "manual");
    let r = repo.run_json(&["--manual", "setup", "--manual", "compile"]);
    assert_eq!(
        ran(&r),
        ["setup", "compile", "unit", "lint", "publish"],
        "{}",
        r.dump()
    );
}

#[test]
fn a_named_manual_job_runs() {
    let repo = Repo::ci(MANUAL_PIPELINE);
    let r = repo.run_json(&["compile"]);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(ran(&r), ["compile"]);
    // Without `--needs`, what a named job needs is not run, manual or not.
    let r = repo.run_json(&["unit"]);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(ran(&r), ["unit"]);
}

#[test]
fn needs_runs_played_manual_jobs_and_leaves_unplayed_earlier_stages_out() {
    let repo = Repo::ci(MANUAL_PIPELINE);
    let r = repo.run_json(&["--needs", "unit", "--manual", "setup"]);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(ran(&r), ["setup", "unit"]);
    // `lint` has no `needs`: it waits for the earlier stages, whose manual jobs are not played.
    let r = repo.run_json(&["--needs", "lint"]);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(ran(&r), ["lint"]);
    let r = repo.run_json(&["--needs", "publish", "--manual", "setup"]);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(ran(&r), ["setup", "unit", "lint", "publish"]);
}
