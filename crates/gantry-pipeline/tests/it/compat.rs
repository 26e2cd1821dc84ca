//! GitLab behaviours that real `.gitlab-ci.yml` files rely on (issue 15): the reproductions of the
//! bugs found on public projects' files, and GitLab's semantics and validation beyond the shared corpus.

use gantry_pipeline::{Compiled, Context, Variable};

use crate::{assert_error, compile_files, compile_one, errors};

/// The plan's job names, in plan order; panics (with the errors) when there is no plan.
fn jobs(c: &Compiled) -> Vec<String> {
    let errs = errors(c);
    let plan = c
        .plan
        .as_ref()
        .unwrap_or_else(|| panic!("no plan: {errs:#?}"));
    plan.jobs.iter().map(|j| j.name.clone()).collect()
}

/// The names a job needs, or `None` when it waits for stages.
fn needs_of(c: &Compiled, job: &str) -> Option<Vec<String>> {
    let plan = c
        .plan
        .as_ref()
        .unwrap_or_else(|| panic!("no plan: {:#?}", errors(c)));
    let j = plan
        .jobs
        .iter()
        .find(|j| j.name == job)
        .unwrap_or_else(|| panic!("no job `{job}`"));
    j.needs
        .as_ref()
        .map(|n| n.iter().map(|x| x.job.clone()).collect())
}

fn with_source(src: &str, tweak: impl FnOnce(&mut Context)) -> Compiled {
    compile_files(&[(".gitlab-ci.yml", src)], tweak)
}

// Section 1: bugs found on real files.

#[test]
fn a_job_named_pages_is_a_job() {
    let c = compile_one(
        "build: {script: [echo build]}\npages: {stage: deploy, script: [mkdir -p public], artifacts: {paths: [public]}}\n",
    );
    assert_eq!(jobs(&c), ["build", "pages"]);
    let plan = c.plan.unwrap();
    assert_eq!(plan.jobs[1].stage, "deploy");
    assert_eq!(plan.jobs[1].artifacts.as_ref().unwrap().paths, ["public"]);
}

#[test]
fn a_pages_job_without_script_is_an_error_like_any_job() {
    let c = compile_one("build: {script: [x]}\npages: {stage: deploy}\n");
    assert!(
        errors(&c)
            .iter()
            .any(|e| e.contains("`pages`: a job needs `script`")),
        "{:#?}",
        errors(&c)
    );
}

/// The test context's remote is `git@gitlab.example.com:acme/shop/api.git`, branch `main`.
const PROJECT_REFS: &str = r"
plain: {script: [x], only: [branches@acme/shop/api]}
other-project: {script: [x], only: [branches@other/project]}
fork-only: {script: [x], except: [branches@other/project]}
upstream-only: {script: [x], except: [branches@acme/shop/api]}
regex: {script: [x], only: ['/^ma/@acme/shop/api']}
regex-elsewhere: {script: [x], only: ['/^ma/@other/project']}
tags-here: {script: [x], only: [tags@acme/shop/api]}
name: {script: [x], only: [main@acme/shop/api]}
name-elsewhere: {script: [x], only: [main@other/project]}
refs-map: {script: [x], only: {refs: [branches@acme/shop/api]}}
";

#[test]
fn only_except_refs_with_a_project_path() {
    let c = with_source(PROJECT_REFS, |_| {});
    assert_eq!(
        jobs(&c),
        ["plain", "fork-only", "regex", "name", "refs-map"]
    );
}

#[test]
fn only_except_project_path_from_ci_project_path() {
    let c = with_source(PROJECT_REFS, |ctx| {
        ctx.cli_variables
            .push(Variable::new("CI_PROJECT_PATH", "other/project"));
    });
    assert_eq!(
        jobs(&c),
        [
            "other-project",
            "upstream-only",
            "regex-elsewhere",
            "name-elsewhere"
        ]
    );
}

#[test]
fn only_tags_with_a_project_path_on_a_tag() {
    let c = with_source(PROJECT_REFS, |ctx| {
        ctx.git.tag = Some("v1.0".into());
    });
    assert!(
        jobs(&c).contains(&"tags-here".to_string()),
        "{:?}",
        jobs(&c)
    );
    assert!(!jobs(&c).contains(&"plain".to_string()), "{:?}", jobs(&c));
}

#[test]
fn needs_one_matrix_instance_by_its_full_name() {
    let c = compile_one(
        "build:\n  stage: build\n  script: [x]\n  parallel:\n    matrix: [{ARCH: [amd64, arm64]}]\nshard:\n  stage: build\n  script: [x]\n  parallel: 2\ntest:\n  needs: [\"build: [arm64]\", shard 2/2]\n  script: [x]\n",
    );
    assert_eq!(
        needs_of(&c, "test").unwrap(),
        ["build: [arm64]", "shard 2/2"]
    );
}

#[test]
fn needs_flattens_a_nested_array_from_an_anchor() {
    let c = compile_one(
        ".n: &n [build-a, build-b]\nbuild-a: {stage: build, script: [x]}\nbuild-b: {stage: build, script: [x]}\nbuild-c: {stage: build, script: [x]}\ntest:\n  needs: [*n, build-c]\n  script: [x]\n",
    );
    assert_eq!(
        needs_of(&c, "test").unwrap(),
        ["build-a", "build-b", "build-c"]
    );
}

#[test]
fn cache_flattens_a_nested_array_from_an_anchor() {
    let c = compile_one(
        ".c: &c [{key: go-mod, paths: [.go/]}]\njob:\n  cache: [*c, {key: other, paths: [x/]}]\n  script: [x]\n",
    );
    let errs = errors(&c);
    let plan = c.plan.unwrap_or_else(|| panic!("no plan: {errs:#?}"));
    let keys: Vec<String> = plan.jobs[0]
        .cache
        .iter()
        .map(|c| format!("{:?}", c.key))
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys[0].contains("go-mod"), "{keys:?}");
    assert_eq!(plan.jobs[0].cache[0].paths, [".go/"]);
}

#[test]
fn null_drops_what_extends_brought_in_for_any_key() {
    let c = compile_one(
        r"
stages: [build, test, deploy]
dep: {stage: build, script: [x]}
.base:
  stage: deploy
  parallel: 3
  image: alpine
  services: [postgres]
  tags: [docker]
  variables: {A: a}
  cache: {key: k, paths: [p/]}
  artifacts: {paths: [out/]}
  retry: 2
  timeout: 1h
  environment: production
  interruptible: true
  allow_failure: true
  when: manual
  needs: [dep]
  dependencies: [dep]
  coverage: '/(\d+)%/'
  resource_group: rg
  before_script: [echo before]
  after_script: [echo after]
  only: [tags]
job:
  extends: .base
  script: [echo job]
  stage: null
  parallel: null
  image: null
  services: null
  tags: null
  variables: null
  cache: null
  artifacts: null
  retry: null
  timeout: null
  environment: null
  interruptible: null
  allow_failure: null
  when: null
  needs: null
  dependencies: null
  coverage: null
  resource_group: null
  before_script: null
  after_script: null
  only: null
",
    );
    assert_eq!(jobs(&c), ["dep", "job"]);
    let plan = c.plan.unwrap();
    let j = &plan.jobs[1];
    assert_eq!(j.stage, "test");
    assert!(j.image.is_none() && j.services.is_empty() && j.tags.is_empty());
    assert!(j.cache.is_empty() && j.artifacts.is_none() && j.environment.is_none());
    assert_eq!(j.retry.max, 0);
    assert!(j.timeout.is_none() && j.coverage.is_none() && j.resource_group.is_none());
    assert!(!j.interruptible && !j.allow_failure.is_allowed());
    assert_eq!(j.when.as_str(), "on_success");
    assert!(j.needs.is_none() && j.dependencies.is_none());
    assert!(j.before_script.is_empty() && j.after_script.is_empty());
    assert!(!j.variables.iter().any(|v| v.key == "A"));
}

#[test]
fn null_leaves_the_key_unset_so_default_applies_as_in_gitlab() {
    let c = compile_one(
        "default:\n  image: ruby:3\n  before_script: [echo default]\njob:\n  image: null\n  before_script: ~\n  script: [x]\n",
    );
    let errs = errors(&c);
    let plan = c.plan.unwrap_or_else(|| panic!("no plan: {errs:#?}"));
    assert_eq!(plan.jobs[0].image.as_ref().unwrap().name, "ruby:3");
    assert_eq!(plan.jobs[0].before_script, ["echo default"]);
}

#[test]
fn needs_without_a_value_is_no_needs() {
    let c = compile_one(
        "build: {stage: build, script: [x]}\ntest:\n  needs:\n  script: [x]\nrule-needs:\n  needs: [build]\n  rules:\n    - needs: ~\n  script: [x]\n",
    );
    assert_eq!(needs_of(&c, "test"), None);
    assert_eq!(needs_of(&c, "rule-needs").unwrap(), ["build"]);
}

#[test]
fn retry_when_takes_gitlabs_current_failure_types() {
    let c = compile_one(
        "job:\n  script: [x]\n  retry:\n    max: 2\n    when: [runner_interrupted, runner_configuration_error, runner_external_dependency_failure, stuck_pending_no_matching_runners, no_updates_running, server_timeout_running, runner_system_failure]\nsingle:\n  script: [x]\n  retry: {max: 1, when: runner_interrupted}\n",
    );
    assert_eq!(jobs(&c), ["job", "single"]);
    assert_eq!(c.plan.unwrap().jobs[1].retry.when, ["runner_interrupted"]);
}

#[test]
fn retry_when_rejects_an_unknown_failure_type_where_it_is_written() {
    let c = compile_one(
        "job:\n  script: [x]\n  retry:\n    max: 2\n    when: [runner_system_failure, runner_interupted]\n",
    );
    assert_error(
        &c,
        ".gitlab-ci.yml:5:35: `job`: unknown `retry:when` value `runner_interupted`; did you mean `runner_interrupted`?",
    );
}

#[test]
fn a_script_must_hold_strings() {
    for (src, at, not) in [
        ("job:\n  script: 5\n", "2:11", "a number"),
        ("job:\n  script: [echo, 5]\n", "2:18", "a number"),
        ("job:\n  script: [echo, true]\n", "2:18", "a boolean"),
        (
            "job:\n  script: [echo]\n  before_script: [[a, ~]]\n",
            "3:23",
            "null",
        ),
        ("job:\n  script: {a: b}\n", "2:11", "a mapping"),
    ] {
        let c = compile_one(src);
        let key = if src.contains("before_script: [[") {
            "before_script"
        } else {
            "script"
        };
        assert_error(
            &c,
            &format!(
                ".gitlab-ci.yml:{at}: `job`: `{key}` must be a string or a nested array of strings up to 10 levels deep, not {not}"
            ),
        );
    }
    let ok = compile_one("job:\n  script: [[a, [b]], c, 'd: e']\n");
    assert_eq!(ok.plan.unwrap().jobs[0].script, ["a", "b", "c", "d: e"]);
}

// Section 3: needs:parallel:matrix with matrix expressions.

const MATRIX_BUILD: &str = "build:\n  stage: build\n  script: [x]\n  parallel:\n    matrix:\n      - OS: [linux, windows]\n        ARCH: [amd64, arm64]\n";

#[test]
fn matrix_expressions_map_instances_one_to_one() {
    let c = compile_one(&format!(
        "{MATRIX_BUILD}test:\n  script: [x]\n  parallel:\n    matrix:\n      - OS: [linux, windows]\n        ARCH: [amd64, arm64]\n  needs:\n    - job: build\n      parallel:\n        matrix:\n          - OS: ['$[[ matrix.OS ]]']\n            ARCH: ['$[[matrix.ARCH]]']\n"
    ));
    for (os, arch) in [
        ("linux", "amd64"),
        ("linux", "arm64"),
        ("windows", "amd64"),
        ("windows", "arm64"),
    ] {
        assert_eq!(
            needs_of(&c, &format!("test: [{os}, {arch}]")).unwrap(),
            [format!("build: [{os}, {arch}]")]
        );
    }
}

#[test]
fn matrix_expressions_whitespace_literals_and_several_in_one_string() {
    let c = compile_one(
        "pkg:\n  stage: build\n  script: [x]\n  parallel:\n    matrix:\n      - TARGET: [linux-amd64, linux-arm64, v2-linux]\ntest:\n  script: [x]\n  parallel:\n    matrix:\n      - OS: [linux]\n        ARCH: [amd64, arm64]\n  needs:\n    - job: pkg\n      parallel:\n        matrix:\n          - TARGET: ['$[[   matrix.OS\t]]-$[[ matrix.ARCH ]]', 'v2-$[[matrix.OS]]']\n",
    );
    assert_eq!(
        needs_of(&c, "test: [linux, amd64]").unwrap(),
        ["pkg: [linux-amd64]", "pkg: [v2-linux]"]
    );
    assert_eq!(
        needs_of(&c, "test: [linux, arm64]").unwrap(),
        ["pkg: [linux-arm64]", "pkg: [v2-linux]"]
    );
}

#[test]
fn matrix_expressions_fix_some_identifiers_and_keep_literal_values() {
    let c = compile_one(&format!(
        "{MATRIX_BUILD}test:\n  script: [x]\n  parallel:\n    matrix:\n      - OS: [linux, windows]\n  needs:\n    - job: build\n      parallel:\n        matrix:\n          - OS: ['$[[ matrix.OS ]]']\n            ARCH: [arm64]\n"
    ));
    assert_eq!(
        needs_of(&c, "test: [windows]").unwrap(),
        ["build: [windows, arm64]"]
    );
}

#[test]
fn matrix_expressions_in_a_needed_job_name() {
    let c = compile_one(
        "build-linux: {stage: build, script: [x]}\nbuild-mac: {stage: build, script: [x]}\ntest:\n  script: [x]\n  parallel:\n    matrix: [{OS: [linux, mac]}]\n  needs: ['build-$[[ matrix.OS ]]']\n",
    );
    assert_eq!(needs_of(&c, "test: [mac]").unwrap(), ["build-mac"]);
}

#[test]
fn matrix_expression_of_an_unknown_identifier() {
    let c = compile_one(&format!(
        "{MATRIX_BUILD}test:\n  script: [x]\n  parallel:\n    matrix: [{{OS: [linux]}}]\n  needs:\n    - job: build\n      parallel:\n        matrix:\n          - OS: ['$[[ matrix.OS ]]']\n            ARCH: ['$[[ matrix.NOPE ]]']\n"
    ));
    assert_error(
        &c,
        ".gitlab-ci.yml:17:20: `test`: `NOPE` does not exist in the job's matrix configuration (`$[[ matrix.NOPE ]]`)",
    );
}

// Section 3: optional needs on jobs that rules remove.

#[test]
fn optional_needs_on_jobs_that_rules_remove() {
    let c = compile_one(
        "gone:\n  stage: build\n  script: [x]\n  rules: [{if: $NOPE}]\nnever:\n  stage: build\n  script: [x]\n  rules: [{when: never}]\nhere: {stage: build, script: [x]}\ntest:\n  script: [x]\n  needs:\n    - {job: gone, optional: true}\n    - {job: never, optional: true}\n    - here\nonly-optional:\n  script: [x]\n  needs: [{job: gone, optional: true}]\n",
    );
    assert_eq!(jobs(&c), ["here", "test", "only-optional"]);
    assert_eq!(needs_of(&c, "test").unwrap(), ["here"]);
    // Only optional needs, none in the pipeline: starts at once, like `needs: []`.
    assert_eq!(needs_of(&c, "only-optional").unwrap(), Vec::<String>::new());
}

#[test]
fn a_required_need_on_a_job_that_rules_remove_is_an_error() {
    let c = compile_one(
        "gone:\n  stage: build\n  script: [x]\n  rules: [{when: never}]\ntest:\n  script: [x]\n  needs: [gone]\n",
    );
    assert!(
        errors(&c).iter().any(|e| e.starts_with(
            ".gitlab-ci.yml:7:11: `test` needs `gone`, but `gone` is not in this pipeline"
        )),
        "{:#?}",
        errors(&c)
    );
}

// Section 3: validation GitLab does.

#[test]
fn empty_rules_are_refused() {
    let c = compile_one("job:\n  script: [x]\n  rules: []\n");
    assert_error(&c, ".gitlab-ci.yml:3:10: `job`: `rules` can't be blank");
    let c = compile_one("workflow:\n  rules: []\njob:\n  script: [x]\n");
    assert_error(&c, ".gitlab-ci.yml:2:10: `workflow:rules` can't be blank");
}

#[test]
fn a_blank_script_is_refused() {
    for src in [
        "job:\n  script: ''\n",
        "job:\n  script: '  '\n",
        "job:\n  script: []\n",
        "job:\n  script:\n",
    ] {
        assert_error(
            &compile_one(src),
            ".gitlab-ci.yml:2:3: `job`: `script` can't be blank",
        );
    }
}

#[test]
fn an_invalid_when_is_refused() {
    assert_error(
        &compile_one("job:\n  script: [x]\n  when: later\n"),
        ".gitlab-ci.yml:3:9: `job`: unknown `when` value `later`",
    );
    assert_error(
        &compile_one("job:\n  script: [x]\n  when: 1\n"),
        ".gitlab-ci.yml:3:9: `job`: `when` must be a string, not a number",
    );
    assert_error(
        &compile_one("job:\n  script: [x]\n  when: never\n"),
        ".gitlab-ci.yml:3:9: `job`: `when: never` is only allowed in `rules` and `workflow:rules`; a job's `when` should be one of: on_success, on_failure, always, manual, delayed",
    );
}

#[test]
fn cache_paths_must_be_an_array() {
    assert_error(
        &compile_one("job:\n  script: [x]\n  cache:\n    key: k\n    paths: vendor/\n"),
        ".gitlab-ci.yml:5:12: `job`: `cache:paths` must be an array of strings, not a string",
    );
}

#[test]
fn wrong_scalar_types_are_refused_where_they_are_written() {
    for (src, want) in [
        (
            "stage: 5",
            "3:10: `job`: `stage` must be a string, not a number",
        ),
        (
            "tags: docker",
            "3:9: `job`: `tags` must be an array of strings, not a string",
        ),
        (
            "tags: [docker, 1]",
            "3:9: `job`: `tags` must be an array of strings, not an array holding a number",
        ),
        (
            "interruptible: 'yes'",
            "3:18: `job`: `interruptible` must be a boolean value, not a string",
        ),
        (
            "resource_group: [a]",
            "3:19: `job`: `resource_group` must be a string, not an array",
        ),
        (
            "dependencies: build",
            "3:17: `job`: `dependencies` must be an array of strings, not a string",
        ),
        (
            "artifacts: {paths: [a], untracked: 'no'}",
            "3:38: `job`: `artifacts:untracked` must be a boolean value, not a string",
        ),
        (
            "artifacts: {paths: [a], expire_in: [1]}",
            "3:38: `job`: `artifacts:expire_in` must be a string, not an array",
        ),
        (
            "artifacts: [a]",
            "3:14: `job`: `artifacts` must be a mapping, not an array",
        ),
        (
            "cache: {paths: [a], untracked: 1}",
            "3:34: `job`: `cache:untracked` must be a boolean value, not a number",
        ),
        (
            "cache: {key: [a], paths: [a]}",
            "3:16: `job`: `cache:key` must be a string, not an array",
        ),
        (
            "environment: {name: [prod]}",
            "3:23: `job`: `environment:name` must be a string, not an array",
        ),
        (
            "image: {name: 5}",
            "3:17: `job`: `image:name` must be a string, not a number",
        ),
        (
            "services: [{name: db, entrypoint: sh}]",
            "3:37: `job`: `services:entrypoint` must be an array of strings, not a string",
        ),
        (
            "inherit: {default: 'no'}",
            "3:22: `job`: `inherit:default` must be a boolean value or an array of strings, not a string",
        ),
        (
            "only: main",
            "3:9: `job`: `only` must be an array of conditions or a mapping, not a string",
        ),
        (
            "except: {refs: main}",
            "3:18: `job`: `except:refs` must be an array of strings, not a string",
        ),
        (
            "retry: {max: '2'}",
            "3:16: `job`: `retry:max` must be an integer, not a string",
        ),
        (
            "allow_failure: {exit_codes: ['1']}",
            "3:31: `job`: `allow_failure:exit_codes` must be an integer or an array of integers, not an array holding a string",
        ),
        (
            "coverage: 5",
            "3:13: `job`: `coverage` must be a string, not a number",
        ),
    ] {
        let c = compile_one(&format!(
            "build: {{stage: build, script: [x]}}\njob:\n  {src}\n  script: [x]\n"
        ));
        assert_error(&c, &format!(".gitlab-ci.yml:{want}"));
    }
}

#[test]
fn rules_flatten_a_nested_array_from_an_anchor() {
    let c = compile_one(
        ".r: &r [{if: $NOPE, when: never}, {if: $CI_COMMIT_BRANCH == \"main\", when: manual}]\njob:\n  script: [x]\n  rules: [*r, {when: on_success}]\nworkflow:\n  rules: [[{if: $NOPE, when: never}], {when: always}]\n",
    );
    let errs = errors(&c);
    let plan = c.plan.unwrap_or_else(|| panic!("no plan: {errs:#?}"));
    assert_eq!(plan.jobs.len(), 1);
    assert_eq!(plan.jobs[0].when.as_str(), "manual");
}

#[test]
fn rule_keywords_have_gitlabs_types() {
    for (rule, want) in [
        (
            "{if: [a]}",
            "3:16: `job`: `rules:if` must be a string, not an array",
        ),
        (
            "{when: 1}",
            "3:18: `job`: `rules:when` must be a string, not a number",
        ),
        (
            "{allow_failure: 'yes'}",
            "3:27: `job`: `rules:allow_failure` must be a boolean value, not a string",
        ),
        (
            "{changes: Dockerfile}",
            "3:21: `job`: `rules:changes` must be an array of strings, not a string",
        ),
        (
            "{exists: {paths: go.mod}}",
            "3:28: `job`: `rules:exists:paths` must be an array of strings, not a string",
        ),
        (
            "{changes: {paths: [a], compare_to: [main]}}",
            "3:46: `job`: `rules:changes:compare_to` must be a string, not an array",
        ),
        (
            "{variables: [A]}",
            "3:23: `job`: `rules:variables` must be a mapping, not an array",
        ),
    ] {
        let c = compile_one(&format!("job:\n  script: [x]\n  rules: [{rule}]\n"));
        assert_error(&c, &format!(".gitlab-ci.yml:{want}"));
    }
}

#[test]
fn start_in_belongs_to_delayed_jobs_and_to_rules() {
    assert_error(
        &compile_one("job:\n  script: [x]\n  start_in: 5 minutes\n"),
        ".gitlab-ci.yml:3:3: `job`: `start_in` is only for `when: delayed`",
    );
    assert_error(
        &compile_one(
            "job:\n  script: [x]\n  when: delayed\n  start_in: 5 minutes\n  rules: [{when: delayed, start_in: 1 minute}]\n",
        ),
        ".gitlab-ci.yml:4:3: `job`: `start_in` may not be used with `rules`; set it in the rule",
    );
    let ok = compile_one("job:\n  script: [x]\n  when: delayed\n  start_in: 5 minutes\n");
    assert_eq!(jobs(&ok), ["job"]);
}

#[test]
fn a_job_name_is_at_most_255_characters() {
    let name = "j".repeat(256);
    let c = compile_one(&format!("{name}:\n  script: [x]\n"));
    assert_error(
        &c,
        &format!(".gitlab-ci.yml:2:3: `{name}`: a job name is at most 255 characters long"),
    );
    assert_eq!(
        jobs(&compile_one(&format!(
            "{}:\n  script: [x]\n",
            "j".repeat(255)
        )))
        .len(),
        1
    );
}

#[test]
fn needs_entry_flags_must_be_booleans() {
    let c = compile_one(
        "build: {stage: build, script: [x]}\njob:\n  script: [x]\n  needs: [{job: build, optional: 'yes'}]\n",
    );
    assert_error(
        &c,
        ".gitlab-ci.yml:4:34: `job`: `needs:optional` must be a boolean value, not a string",
    );
}

// Section 7: `only`'s default in merge request pipelines.

#[test]
fn a_job_without_rules_or_only_is_not_in_a_merge_request_pipeline() {
    let src = "plain: {script: [x]}\nexcept-main: {script: [x], except: [main]}\nmr: {script: [x], only: [merge_requests]}\nruled:\n  script: [x]\n  rules: [{if: $CI_PIPELINE_SOURCE == \"merge_request_event\"}]\nvars-only:\n  script: [x]\n  only: {variables: [$CI_PIPELINE_SOURCE]}\n";
    let c = with_source(src, |ctx| {
        ctx.pipeline_source = "merge_request_event".into();
    });
    assert_eq!(jobs(&c), ["mr", "ruled"]);
    let push = with_source(src, |_| {});
    assert_eq!(jobs(&push), ["plain", "vars-only"]);
}

#[test]
fn workflow_rules_drop_onlys_default() {
    let src = "workflow:\n  rules:\n    - if: $CI_PIPELINE_SOURCE == \"merge_request_event\"\nplain: {script: [x]}\nonly-branches: {script: [x], only: [branches]}\n";
    let c = with_source(src, |ctx| {
        ctx.pipeline_source = "merge_request_event".into();
    });
    assert_eq!(jobs(&c), ["plain"]);
}

#[test]
fn refs_by_pipeline_source() {
    let src = "pushes: {script: [x], only: [pushes]}\nschedules: {script: [x], only: [schedules]}\nweb: {script: [x], only: [web]}\napi: {script: [x], only: [api]}\ntriggers: {script: [x], only: [triggers]}\nnot-schedules: {script: [x], except: [schedules]}\n";
    let push = with_source(src, |_| {});
    assert_eq!(jobs(&push), ["pushes", "not-schedules"]);
    let schedule = with_source(src, |ctx| ctx.pipeline_source = "schedule".into());
    assert_eq!(jobs(&schedule), ["schedules"]);
    let web = with_source(src, |ctx| ctx.pipeline_source = "web".into());
    assert_eq!(jobs(&web), ["web", "not-schedules"]);
}

#[test]
fn except_with_several_keys_excludes_when_any_key_matches() {
    // GitLab: `only` includes the job when all its keys match; `except` excludes it when any does.
    let src = r#"
any: {script: [x], except: {refs: [tags], variables: ['$CI_COMMIT_BRANCH == "main"']}}
none: {script: [x], except: {refs: [tags], variables: ['$CI_COMMIT_BRANCH == "dev"']}}
all-only: {script: [x], only: {refs: [tags], variables: ['$CI_COMMIT_BRANCH == "main"']}}
"#;
    let c = with_source(src, |_| {});
    assert_eq!(jobs(&c), ["none"]);
}

#[test]
fn a_nested_array_in_rules_from_an_anchor_is_flattened() {
    // components/opentofu: `rules: [{if: $SKIP, when: never}, *r]`.
    let src = r"
.r: &r [{if: $CI_COMMIT_TAG}, {when: on_success}]
skipped:
  variables: {SKIP: 'yes'}
  script: [x]
  rules: [{if: $SKIP, when: never}, *r]
runs:
  script: [x]
  rules: [{if: $SKIP, when: never}, *r]
";
    let c = with_source(src, |_| {});
    assert_eq!(jobs(&c), ["runs"]);
}

#[test]
fn a_missing_include_is_the_only_error_for_what_it_would_have_defined() {
    // The job completes a template job of the missing include, extends and references its hidden
    // jobs, runs in its stage and needs its jobs: only the include itself is reported.
    let src = r"
include:
  - template: Jobs/Code-Quality.gitlab-ci.yml
  - local: ci/missing.yml
code_quality:
  variables: {REPORT_FORMAT: html}
build:
  extends: .tpl
  stage: scan
  needs: [tpl-job]
  dependencies: [tpl-job]
test:
  script: [!reference [.tpl, script]]
";
    let c = with_source(src, |_| {});
    assert_eq!(
        errors(&c),
        [
            ".gitlab-ci.yml:3:5: `include:template` `Jobs/Code-Quality.gitlab-ci.yml` is not available offline: it is not in the local include cache",
            ".gitlab-ci.yml:4:5: local include `ci/missing.yml` not found: no such file",
        ]
    );
}

#[test]
fn without_a_missing_include_the_same_jobs_are_errors() {
    let src = "code_quality:\n  variables: {REPORT_FORMAT: html}\nbuild:\n  extends: .tpl\n";
    let c = with_source(src, |_| {});
    let errs = errors(&c);
    assert!(
        errs.iter()
            .any(|e| e.contains("`code_quality`: a job needs `script`"))
            && errs
                .iter()
                .any(|e| e.contains("unknown key `.tpl` in `extends`")),
        "{errs:#?}"
    );
}

#[test]
fn a_flow_sequence_closed_left_of_its_key_is_read_as_gitlab_reads_it() {
    // mbroz/cryptsetup; GitLab's parser (libyaml) does not check indentation in flow collections.
    let src = "job:\n  script: [echo $A]\n  parallel:\n    matrix:\n      - A: [\n          \"x\",\n          \"y\"\n      ]\n";
    let c = with_source(src, |_| {});
    assert_eq!(jobs(&c), ["job: [x]", "job: [y]"]);
}

#[test]
fn a_nested_workflow_rules_array_from_an_anchor_is_flattened() {
    // GitLab's `workflow:rules` is the same `Rules` entry as a job's, which flattens nested arrays.
    let src = r"
.never: &never [{if: $NOPE, when: never}]
.always: &always [{when: always}]
workflow:
  rules: [*never, *always]
job: {script: [x]}
";
    assert_eq!(jobs(&with_source(src, |_| {})), ["job"]);
}

#[test]
fn a_jacoco_coverage_report_is_kept_with_a_warning() {
    let c = compile_one(
        "t:\n  script: [x]\n  artifacts:\n    reports:\n      coverage_report:\n        coverage_format: jacoco\n        path: target/site/jacoco/jacoco.xml\n",
    );
    assert!(errors(&c).is_empty(), "{:#?}", errors(&c));
    let warnings: Vec<String> = c.diagnostics.iter().map(ToString::to_string).collect();
    assert!(
        warnings.contains(&".gitlab-ci.yml:6:26: warning: `t`: Gantry does not read JaCoCo coverage reports; the file is kept as an artifact, and gates see no coverage from it".to_owned()),
        "{warnings:#?}"
    );
    let plan = c.plan.unwrap();
    let reports = &plan.jobs[0].artifacts.as_ref().unwrap().reports;
    assert_eq!(
        reports,
        &[(
            "jacoco".to_owned(),
            vec!["target/site/jacoco/jacoco.xml".to_owned()]
        )]
    );
}
