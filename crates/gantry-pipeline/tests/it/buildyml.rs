//! The `build.yml` format (Alibaba Cloud Yunxiao, after AWS CodeBuild's buildspec): translated into the
//! equivalent `.gitlab-ci.yml`, checked with positions, and converted back to text that compiles to the
//! same plan.

use gantry_pipeline::buildyml;

use crate::{compile_files, render};

fn compile_build(src: &str) -> gantry_pipeline::Compiled {
    compile_files(&[("build.yml", src)], |_| {})
}

fn assert_error(src: &str, expected: &str) {
    crate::assert_error(&compile_build(src), expected);
}

/// The example of issue 15, as Yunxiao documents it.
const GO: &str = "\
version: 1.0
phases:
  build:
    commands:
      - go mod download
      - GOOS=linux go build -o main main.go
artifacts:
  files:
    - main
";

const FULL: &str = "\
version: 0.2
env:
  variables:
    GOFLAGS: -mod=mod
    RETRIES: 3
phases:
  post_build:
    commands: [echo post]
  build:
    commands: [go build -o main .]
    finally: [echo cleanup]
  install:
    on-failure: CONTINUE
    commands: [go mod download]
  pre_build:
    commands: [go vet ./...]
cache:
  paths: [.go/]
artifacts:
  name: app
  files: [main, 'docs/**/*']
  exclude-paths: [docs/tmp/*]
";

#[test]
fn buildyml_example_compiles_to_a_plan() {
    let c = compile_build(GO);
    let plan = render(&c);
    assert_eq!(
        plan.lines().take(3).collect::<Vec<_>>(),
        [
            "stages: .pre, build, .post",
            "- build [build] when=on_success allow_failure=Bool(false)",
            "  script: [\"go mod download\", \"GOOS=linux go build -o main main.go\"]",
        ],
        "{plan}"
    );
    let job = &c.plan.as_ref().unwrap().jobs[0];
    let artifacts = job.artifacts.as_ref().expect("artifacts");
    assert_eq!(artifacts.paths, ["main"]);
    assert!(!artifacts.untracked);
}

#[test]
fn buildyml_phases_run_in_their_fixed_order_with_env_cache_and_artifacts() {
    let c = compile_build(FULL);
    let plan = c.plan.as_ref().expect("a plan");
    assert_eq!(
        plan.stages,
        [
            ".pre",
            "install",
            "pre_build",
            "build",
            "post_build",
            ".post"
        ]
    );
    let names: Vec<&str> = plan.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["install", "pre_build", "build", "post_build"]);
    let vars: Vec<(&str, &str)> = plan
        .variables
        .iter()
        .map(|v| (v.key.as_str(), v.value.as_str()))
        .collect();
    assert_eq!(vars, [("GOFLAGS", "-mod=mod"), ("RETRIES", "3")]);
    let job = |n: &str| plan.jobs.iter().find(|j| j.name == n).unwrap();
    assert!(job("install").allow_failure.is_allowed());
    assert!(!job("build").allow_failure.is_allowed());
    assert_eq!(job("build").after_script, ["echo cleanup"]);
    // Every phase but the last passes the files it leaves to the next ones.
    for n in ["install", "pre_build", "build"] {
        let a = job(n).artifacts.as_ref().expect("artifacts");
        assert!(a.untracked && a.paths.is_empty(), "{n}: {a:?}");
    }
    let last = job("post_build").artifacts.as_ref().expect("artifacts");
    assert_eq!(last.paths, ["main", "docs/**/*"]);
    assert_eq!(last.exclude, ["docs/tmp/*"]);
    assert_eq!(last.name.as_deref(), Some("app"));
    assert!(!last.untracked);
    assert_eq!(job("install").cache.len(), 1);
    assert_eq!(job("install").cache[0].paths, [".go/"]);
}

#[test]
fn buildyml_other_phase_names_run_in_the_order_written() {
    let c = compile_build(
        "version: 1.0\nphases:\n  test:\n    commands: [make test]\n  package:\n    commands: [make dist]\n",
    );
    let plan = c.plan.as_ref().expect("a plan");
    assert_eq!(plan.stages, [".pre", "test", "package", ".post"]);
}

#[test]
fn buildyml_unknown_keys_have_positions_and_suggestions() {
    assert_error(
        "version: 1.0\nphase:\n  build:\n    commands: [make]\n",
        "build.yml:2:1: unknown key `phase`; did you mean `phases`?",
    );
    assert_error(
        "version: 1.0\nphases:\n  build:\n    comands: [make]\n",
        "build.yml:4:5: unknown key `comands` in `phases:build`; did you mean `commands`?",
    );
    assert_error(
        "version: 1.0\nphases:\n  prebuild:\n    commands: [make]\n",
        "build.yml:3:3: unknown phase `prebuild`; did you mean `pre_build`?",
    );
    assert_error(
        "version: 1.0\nphases:\n  build:\n    commands: [make]\nartifacts:\n  file: [a]\n",
        "build.yml:6:3: unknown key `file` in `artifacts`; did you mean `files`?",
    );
    assert_error(
        "version: 1.0\nenv:\n  variable: {A: b}\nphases:\n  build:\n    commands: [make]\n",
        "build.yml:3:3: unknown key `variable` in `env`; did you mean `variables`?",
    );
}

#[test]
fn buildyml_wrong_types_and_unsupported_keys_are_errors() {
    assert_error(
        "version: 1.0\nphases:\n  build:\n    commands: make\n",
        "build.yml:4:15: `phases:build:commands` must be a list of commands, not string",
    );
    assert_error(
        "version: 1.0\nphases:\n  build:\n    commands:\n      - make\n      - [a, b]\n",
        "build.yml:6:9: each of `phases:build:commands` must be a string, not array",
    );
    assert_error(
        "version: 1.0\nphases:\n  build:\n    commands: [make]\n    on-failure: MAYBE\n",
        "build.yml:5:17: `phases:build:on-failure` must be `ABORT` or `CONTINUE`, not `MAYBE`",
    );
    assert_error(
        "version: 1.0\nphases:\n  install:\n    runtime-versions: {golang: 1.22}\n    commands: [go version]\n",
        "build.yml:4:5: `runtime-versions` in `phases:install` is not supported by Gantry",
    );
    assert_error(
        "version: 1.0\nphases:\n  build:\n    finally: [echo]\n",
        "build.yml:3:3: `phases:build` needs `commands`",
    );
    assert_error(
        "version: 1.0\nenv:\n  variables:\n    A: [1]\nphases:\n  build:\n    commands: [make]\n",
        "build.yml:4:8: variable `A` must be a string, a number or a boolean, not array",
    );
    assert_error(
        "phases:\n  build:\n    commands: [make]\n",
        "build.yml:1:1: `version` is missing (for example `version: 1.0`)",
    );
    assert_error(
        "version: 1.0\nphases: [build]\n",
        "build.yml:2:9: `phases` must be a mapping of phase names to phases, not array",
    );
    assert_error(
        "version: 1.0\nphases:\n  image:\n    commands: [make]\n",
        "build.yml:3:3: a phase cannot be named `image`, which is a GitLab keyword or a hidden job",
    );
}

#[test]
fn buildyml_a_gitlab_file_is_not_taken_for_one() {
    // A job named `phases` in a `.gitlab-ci.yml` stays a job.
    let c = compile_files(&[(".gitlab-ci.yml", "phases:\n  script: [make]\n")], |_| {});
    let plan = c.plan.as_ref().expect("a plan");
    assert_eq!(plan.jobs[0].name, "phases");
    let doc = |src: &str| gantry_pipeline::yaml::parse(src, 0).unwrap().docs.remove(0);
    // A job named `version` is a mapping, never a `build.yml`'s scalar version.
    assert!(!buildyml::is_buildyml(
        "ci.yml",
        &doc("version:\n  script: [x]\n")
    ));
    assert!(buildyml::is_buildyml("ci.yml", &doc("version: 0.2\n")));
    assert!(buildyml::is_buildyml("ci/build.yml", &doc("phases: {}\n")));
    assert!(!buildyml::is_buildyml(
        "ci/.gitlab-ci.yml",
        &doc("phases: {}\n")
    ));
}

#[test]
fn buildyml_converted_text_compiles_to_the_same_plan() {
    for src in [GO, FULL] {
        let text = buildyml::convert(src, "build.yml").expect("converts");
        let converted = compile_files(&[(".gitlab-ci.yml", &text)], |_| {});
        let errs: Vec<String> = converted.errors().map(ToString::to_string).collect();
        assert!(errs.is_empty(), "{errs:#?}\n{text}");
        assert_eq!(render(&converted), render(&compile_build(src)), "{text}");
    }
}

#[test]
fn buildyml_convert_reports_errors_with_positions() {
    let errs = buildyml::convert(
        "version: 1.0\nphases:\n  build:\n    comands: [x]\n",
        "b.yml",
    )
    .expect_err("errors");
    let errs: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(
        errs,
        [
            "b.yml:3:3: `phases:build` needs `commands`",
            "b.yml:4:5: unknown key `comands` in `phases:build`; did you mean `commands`?",
        ]
    );
}
