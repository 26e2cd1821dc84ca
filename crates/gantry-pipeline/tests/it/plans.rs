//! Snapshot tests of plans for many configurations. `cargo insta review` updates them.

use insta::assert_snapshot;

use crate::{compile_changed, compile_files, compile_one, errors, render};

#[test]
fn stages_default_and_implicit_pre_post() {
    assert_snapshot!(render(&compile_one(
        "
first:
  stage: .pre
  script: echo pre
build:
  stage: build
  script: [make]
test:
  script: [make test]
last:
  stage: .post
  script: echo post
"
    )));
}

#[test]
fn custom_stages_order_jobs_by_stage_then_file_order() {
    assert_snapshot!(render(&compile_one(
        "
stages: [lint, build, ship]
ship-it: {stage: ship, script: [echo ship]}
b2: {stage: build, script: [echo b2]}
lint: {stage: lint, script: [echo lint]}
b1: {stage: build, script: [echo b1]}
"
    )));
}

#[test]
fn variables_forms_and_precedence_inputs() {
    assert_snapshot!(render(&compile_files(
        &[(
            ".gitlab-ci.yml",
            "
variables:
  PLAIN: one
  NUMBER: 42
  EMPTY:
  DESCRIBED:
    value: two
    description: a documented variable
  RAW:
    value: $PLAIN
    expand: false
job:
  variables:
    JOB_VAR: $PLAIN-job
  script: [env]
",
        )],
        |ctx| ctx
            .cli_variables
            .push(gantry_pipeline::Variable::new("FROM_CLI", "x")),
    )));
}

#[test]
fn extends_deep_merges_multiple_parents() {
    assert_snapshot!(render(&compile_one(
        "
.base:
  variables: {A: base, B: base}
  before_script: [echo base]
  tags: [linux]
.docker:
  extends: .base
  variables: {B: docker, C: docker}
  image: alpine
.tests:
  script: [echo tests]
  retry: 2
job:
  extends: [.docker, .tests]
  variables: {C: job}
  script: [echo job]
"
    )));
}

#[test]
fn default_is_inherited_unless_inherit_says_no() {
    assert_snapshot!(render(&compile_one(
        "
default:
  image: ruby:3.3
  before_script: [echo default before]
  after_script: [echo default after]
  retry: 1
  timeout: 10m
  interruptible: true
  tags: [docker]
variables:
  G1: one
  G2: two
all:
  script: [echo all]
none:
  inherit: {default: false, variables: false}
  script: [echo none]
some:
  inherit: {default: [image], variables: [G2]}
  script: [echo some]
own:
  before_script: [echo own]
  script: [echo own]
"
    )));
}

#[test]
fn rules_pick_the_first_matching_rule() {
    assert_snapshot!(render(&compile_changed(
        &[
            (
                ".gitlab-ci.yml",
                r#"
variables:
  DEPLOY: "yes"
on-main:
  script: [echo main]
  rules:
    - if: $CI_COMMIT_BRANCH == "main"
      variables: {TARGET: prod}
    - when: never
not-on-main:
  script: [echo other]
  rules:
    - if: $CI_COMMIT_BRANCH != "main"
manual-deploy:
  script: [echo deploy]
  rules:
    - if: $DEPLOY == "yes" && $CI_COMMIT_REF_NAME =~ /^ma/
      when: manual
      allow_failure: true
delayed:
  script: [echo later]
  rules:
    - if: $CI_PIPELINE_SOURCE == "push"
      when: delayed
      start_in: 5 minutes
exit-codes:
  script: [exit 3]
  allow_failure:
    exit_codes: [3, 4]
  rules:
    - if: $NOPE
      when: never
    - when: on_success
changes-and-exists:
  script: [echo changed]
  rules:
    - changes: [src/**/*.go]
      exists: [go.mod]
"#,
            ),
            ("go.mod", "module x"),
            ("src/a/b.go", "package a")
        ],
        Some(&["src/a/b.go"]),
        |_| {},
    )));
}

#[test]
fn rules_changes_false_when_nothing_matching_changed() {
    let c = compile_changed(
        &[(
            ".gitlab-ci.yml",
            "docs:\n  script: [make docs]\n  rules:\n    - changes: [docs/**/*]\nalways:\n  script: [\"true\"]\n",
        )],
        Some(&["src/main.go"]),
        |_| {},
    );
    let plan = c.plan.unwrap();
    assert_eq!(
        plan.jobs
            .iter()
            .map(|j| j.name.as_str())
            .collect::<Vec<_>>(),
        ["always"]
    );
}

#[test]
fn only_and_except() {
    assert_snapshot!(render(&compile_one(
        r#"
branches-only:
  script: [echo b]
  only: [branches]
tags-only:
  script: [echo t]
  only: [tags]
main-by-name:
  script: [echo m]
  only: [main]
regex:
  script: [echo r]
  only: [/^ma.*$/]
except-main:
  script: [echo e]
  except: [main]
vars:
  script: [echo v]
  only:
    refs: [branches]
    variables: [$CI_COMMIT_BRANCH == "main"]
manual-default:
  script: [echo manual]
  when: manual
"#
    )));
}

#[test]
fn parallel_and_matrix_names_like_gitlab() {
    assert_snapshot!(render(&compile_one(
        "
shard:
  parallel: 3
  script: [echo $CI_NODE_INDEX]
build:
  stage: build
  parallel:
    matrix:
      - OS: [linux, darwin]
        ARCH: [amd64, arm64]
      - OS: windows
        ARCH: amd64
  script: [echo $OS $ARCH]
"
    )));
}

#[test]
fn needs_resolve_matrix_instances_and_flags() {
    assert_snapshot!(render(&compile_one(
        "
stages: [build, test, deploy]
build:
  stage: build
  parallel:
    matrix:
      - PROVIDER: [aws, gcp]
  script: [echo build]
lint:
  stage: build
  script: [echo lint]
test:
  stage: test
  parallel:
    matrix:
      - PROVIDER: [aws, gcp]
  needs:
    - job: build
      parallel:
        matrix:
          - PROVIDER: $[[ matrix.PROVIDER ]]
    - job: lint
      artifacts: false
    - job: gone
      optional: true
  script: [echo test]
deploy:
  stage: deploy
  needs: [build]
  dependencies: [build]
  script: [echo deploy]
early:
  stage: deploy
  needs: []
  script: [echo early]
"
    )));
}

#[test]
fn workflow_rules_add_variables() {
    assert_snapshot!(render(&compile_one(
        r#"
workflow:
  rules:
    - if: $CI_COMMIT_BRANCH == "main"
      variables: {DEPLOY_TARGET: production}
    - when: always
job:
  script: [echo $DEPLOY_TARGET]
"#
    )));
}

#[test]
fn workflow_rules_can_stop_the_pipeline() {
    let c =
        compile_one("workflow:\n  rules:\n    - if: $CI_COMMIT_TAG\njob:\n  script: [\"true\"]\n");
    assert!(c.errors().next().is_none());
    assert_eq!(
        c.workflow_skipped.as_deref(),
        Some("workflow:rules: no rule matched")
    );
}

#[test]
fn include_local_with_globs_and_override() {
    assert_snapshot!(render(&compile_files(
        &[
            (
                ".gitlab-ci.yml",
                "include:\n  - local: ci/*.yml\n  - /templates/base.yml\nshared:\n  variables: {WHERE: main}\n"
            ),
            ("ci/a.yml", "a-job:\n  script: [echo a]\n"),
            ("ci/b.yml", "b-job:\n  script: [echo b]\n"),
            ("ci/nested/c.yml", "c-job:\n  script: [echo c]\n"),
            (
                "templates/base.yml",
                "include: ci/nested/c.yml\nshared:\n  variables: {WHERE: base, KEEP: base}\n  script: [echo shared]\n"
            ),
        ],
        |_| {},
    )));
}

#[test]
fn include_with_spec_inputs() {
    assert_snapshot!(render(&compile_files(
        &[
            (
                ".gitlab-ci.yml",
                "include:\n  - local: deploy.yml\n    inputs:\n      env: production\n      replicas: 3\n"
            ),
            (
                "deploy.yml",
                "spec:\n  inputs:\n    env:\n      options: [staging, production]\n    replicas:\n      type: number\n      default: 1\n    flags:\n      type: array\n      default: [--fast]\n---\ndeploy-$[[ inputs.env ]]:\n  stage: deploy\n  script:\n    - deploy --env $[[ inputs.env ]] --replicas $[[ inputs.replicas ]]\n    - $[[ inputs.flags ]]\n",
            ),
        ],
        |_| {},
    )));
}

#[test]
fn references_splice_into_lists() {
    assert_snapshot!(render(&compile_one(
        "
.setup:
  script: [echo one, echo two]
  variables: {URL: example.org}
.rules:
  rules:
    - if: $CI_COMMIT_BRANCH
job:
  variables:
    URL: !reference [.setup, variables, URL]
  rules:
    - !reference [.rules, rules]
  script:
    - !reference [.setup, script]
    - echo three
"
    )));
}

#[test]
fn artifacts_cache_retry_timeout_environment_and_more() {
    assert_snapshot!(render(&compile_one(
        r#"
deploy:
  stage: deploy
  script: [./deploy]
  artifacts:
    name: "$CI_JOB_NAME-artifacts"
    paths: [dist/, "*.log"]
    exclude: [dist/**/*.map]
    untracked: true
    when: always
    expire_in: 1 week
    reports:
      dotenv: deploy.env
      junit: [report.xml]
  cache:
    - key: {files: [go.sum], prefix: go}
      paths: [.go/]
      policy: pull
      fallback_keys: [go-main]
    - key: $CI_COMMIT_REF_SLUG
      paths: [node_modules/]
      when: always
      unprotect: true
  retry:
    max: 2
    when: [script_failure, runner_system_failure]
    exit_codes: [137]
  timeout: 1h 30m
  environment:
    name: review/$CI_COMMIT_REF_SLUG
    url: https://$CI_COMMIT_REF_SLUG.example.com
    action: start
  coverage: '/Total: (\d+\.\d+)%/'
  resource_group: production
  interruptible: true
  image: {name: golang:1.22, entrypoint: [""]}
  services:
    - postgres:16
    - {name: redis:7, alias: cache}
  tags: [linux, docker]
trigger-child:
  trigger: {include: child.yml}
"#
    )));
}

#[test]
fn anchors_and_merge_keys() {
    assert_snapshot!(render(&compile_one(
        "
.defaults: &defaults
  variables: {A: from-anchor}
  script: [echo anchored]
job1:
  <<: *defaults
job2:
  <<: *defaults
  script: [echo own]
scripts:
  script: &s [echo s1, echo s2]
reuse:
  script: *s
"
    )));
}

#[test]
fn planning_is_linear_enough_for_big_files() {
    // 200 stages of 10 jobs, each needing the whole previous stage: the stage barrier keeps the
    // graph small, and the needs of each job stay at 10.
    let mut src = String::from("stages:\n");
    for s in 0..200 {
        src.push_str(&format!("  - s{s}\n"));
    }
    for s in 0..200 {
        for j in 0..10 {
            src.push_str(&format!("j{s}_{j}:\n  stage: s{s}\n  script: [echo]\n"));
            if s > 0 {
                src.push_str("  needs: [");
                src.push_str(
                    &(0..10)
                        .map(|k| format!("j{}_{k}", s - 1))
                        .collect::<Vec<_>>()
                        .join(", "),
                );
                src.push_str("]\n");
            }
        }
    }
    let c = compile_one(&src);
    let plan = c.plan.expect("valid");
    assert_eq!(plan.jobs.len(), 2000);
    assert!(
        plan.jobs
            .iter()
            .skip(10)
            .all(|j| j.needs.as_ref().is_some_and(|n| n.len() == 10))
    );
}

#[test]
fn environment_slugs_match_gitlab() {
    use gantry_pipeline::compile::environment_slug;
    // Values produced by GitLab's `Gitlab::Slug::Environment`.
    assert_eq!(environment_slug("Stage Domain"), "stage-domain-ip33nk");
    assert_eq!(
        environment_slug("stage-domain-foobar-long-string"),
        "stage-domain-foob-yafktx"
    );
    assert_eq!(environment_slug("production"), "production");
}

#[test]
fn gate_jobs_and_report_types() {
    assert_snapshot!(render(&compile_one(
        r#"
stages: [test, scan, gate]
unit:
  stage: test
  script: [go test -json -coverprofile=cover.out ./... > test.json]
  artifacts:
    reports:
      junit: [report.xml, "junit/*.xml"]
      coverage_report:
        coverage_format: cobertura
        path: coverage/cobertura.xml
      lcov: lcov.info
      gotest: test.json
      gocover: cover.out
scan:
  stage: scan
  script: [./scan]
  artifacts:
    reports:
      sarif: scan.sarif
      sast: gl-sast-report.json
      dependency_scanning: gl-dependency-scanning-report.json
      container_scanning: gl-container-scanning-report.json
      codequality: gl-code-quality-report.json
quality-gate:
  stage: gate
  needs: [unit, scan]
  when: always
  gate:
    coverage: ">= 75"
    new_coverage: ">=80"
    tests_failed: "== 0"
    tests_total: "> 0"
    sarif_errors: "== 0"
    sarif_warnings: "<= 10"
    vulnerabilities_critical: "== 0"
    vulnerabilities_high: "<= 2"
    codequality_major: "== 0"
gate-with-script:
  stage: gate
  script: [echo before the gate]
  gate:
    tests_failed: "!= 1.5"
"#
    )));
}

#[test]
fn an_environment_name_sees_rules_variables() {
    // A team maps branches to environments with `rules:variables`, then names the environment
    // after the variable (GitLab expands the name when it creates the job).
    let c = compile_one(
        "deploy:\n  script: ./deploy\n  environment: {name: $TARGET, url: \"https://$TARGET.example\"}\n  rules:\n    - if: $CI_COMMIT_BRANCH == \"main\"\n      variables: {TARGET: production}\n    - variables: {TARGET: staging}\n",
    );
    let errs = errors(&c);
    assert!(errs.is_empty(), "{errs:?}");
    let job = &c.plan.unwrap().jobs[0];
    let env = job.environment.as_ref().unwrap();
    assert_eq!(env.name, "production");
    assert_eq!(env.url.as_deref(), Some("https://production.example"));
    let name = job
        .predefined
        .iter()
        .find(|v| v.key == "CI_ENVIRONMENT_NAME");
    assert_eq!(name.map(|v| v.value.as_str()), Some("production"));
}
