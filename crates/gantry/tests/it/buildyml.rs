//! `build.yml` (Alibaba Cloud Yunxiao, after AWS CodeBuild's buildspec) end to end: run, list, lint
//! with positions, and `gantry convert` to a `.gitlab-ci.yml` that lints and plans the same.

use crate::Repo;

const BUILD_YML: &str = "\
version: 1.0
env:
  variables:
    GREETING: hello
phases:
  build:
    commands:
      - echo \"$GREETING from build\" > out.txt
      - mkdir -p dist && cp out.txt dist/
  install:
    commands:
      - echo installed > installed.txt
artifacts:
  files:
    - dist/
";

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn buildyml_at_the_root_runs_when_there_is_no_gitlab_ci_yml() {
    let repo = Repo::new(&[("build.yml", BUILD_YML)]);
    let list = repo.gantry(&["run", "--list-json"]);
    assert_eq!(list.status.code(), Some(0), "{list:?}");
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!([
            {"name": "install", "stage": "install", "when": "on_success", "allow_failure": false, "needs": [], "environment": null},
            {"name": "build", "stage": "build", "when": "on_success", "allow_failure": false, "needs": [], "environment": null},
        ])
    );
    let r = repo.run_json(&[]);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(r.status("install"), "success");
    assert_eq!(r.status("build"), "success");
    let lint = repo.gantry(&["lint"]);
    assert_eq!(lint.status.code(), Some(0));
    assert_eq!(stdout(&lint), "build.yml: valid (2 jobs)\n");
}

#[test]
fn buildyml_phases_share_files_and_env_variables() {
    let repo = Repo::new(&[(
        "build.yml",
        "version: 1.0\nenv:\n  variables:\n    WHO: yunxiao\nphases:\n  install:\n    commands: [echo made > made.txt]\n  build:\n    commands: [cat made.txt, echo \"hi $WHO\"]\n",
    )]);
    let r = repo.run_json(&["--file", "build.yml"]);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(r.log("build"), ["made", "hi yunxiao"]);
}

#[test]
fn buildyml_lint_reports_positions() {
    let repo = Repo::new(&[(
        "build.yml",
        "version: 1.0\nphases:\n  build:\n    comands: [make]\n    on-failure: SOMETIMES\n",
    )]);
    let out = repo.gantry(&["lint"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        [
            "build.yml:3:3: `phases:build` needs `commands`",
            "build.yml:4:5: unknown key `comands` in `phases:build`; did you mean `commands`?",
            "build.yml:5:17: `phases:build:on-failure` must be `ABORT` or `CONTINUE`, not `SOMETIMES`",
        ]
    );
}

#[test]
fn buildyml_convert_prints_a_gitlab_ci_yml_that_lints_and_plans_the_same() {
    let repo = Repo::new(&[("build.yml", BUILD_YML)]);
    let out = repo.gantry(&["convert", "build.yml"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let converted = stdout(&out);
    assert!(
        converted.starts_with("# Converted from build.yml"),
        "{converted}"
    );
    let moved = Repo::new(&[(".gitlab-ci.yml", converted.as_str())]);
    let lint = moved.gantry(&["lint"]);
    assert_eq!(
        stdout(&lint),
        ".gitlab-ci.yml: valid (2 jobs)\n",
        "{converted}"
    );
    let list = |r: &Repo| stdout(&r.gantry(&["run", "--list-json"]));
    assert_eq!(list(&moved), list(&repo), "{converted}");
    let preview = |r: &Repo| stdout(&r.gantry(&["run", "--preview"]));
    assert_eq!(preview(&moved), preview(&repo));
    let r = moved.run_json(&[]);
    assert_eq!(r.code, 0, "{}", r.dump());

    let bad = Repo::new(&[(
        "build.yml",
        "version: 1.0\nphases:\n  build:\n    commands: make\n",
    )]);
    let out = bad.gantry(&["convert"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with(
            "build.yml:4:15: `phases:build:commands` must be a list of commands, not string\n"
        ),
        "{out:?}"
    );
}
