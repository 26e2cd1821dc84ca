//! Rollbacks end to end: real git repositories with two versions of a deploy job verified by an
//! HTTP check against a local health endpoint that only answers for the healthy versions. The
//! deploy script writes a file naming its version, its build artifact and its variables, so each
//! test reads what was deployed last.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::notify::Recorder;
use crate::server::HttpStub;
use crate::{Repo, Run};

const TOKEN: &str = "s3cret-rollback-token";

/// The pipeline of `version`: a build job whose artifact names the version, and a deploy job
/// verified against `/healthz/<version>` of `port` that rolls back on failure; `extra` is added
/// to the deploy job.
fn pipeline(version: &str, port: u16, extra: &str) -> String {
    format!(
        r#"
variables:
  VERSION: {version}
stages: [build, deploy, after]
notify:
  - on: [deployment_succeeded, deployment_failed, rollback]
    webhook: {{url: $HOOK_URL}}
build:
  stage: build
  script: echo "build of $VERSION" > app.bin
  artifacts: {{paths: [app.bin]}}
deploy:
  stage: deploy
  environment: {{name: production}}
  script:
    - echo "$VERSION $(cat app.bin) replicas=$REPLICAS rollback=${{GANTRY_ROLLBACK:-no}} from=${{GANTRY_ROLLBACK_FROM:-}} to=${{GANTRY_ROLLBACK_TO:-}} token=$TOKEN" > "$OUT/deployed.txt"
    - echo "deployed $VERSION"
  verify:
    interval: 0.1s
    duration: 0.1s
    on_failure: rollback
    http:
      - url: http://127.0.0.1:{port}/healthz/$VERSION
        consecutive_failures: 1
{extra}
watch:
  stage: after
  rules:
    - if: $WATCH == "yes"
      when: on_failure
  script:
    - for i in $(seq 1 600); do grep -q rollback=true "$OUT/deployed.txt" && break; sleep 0.1; done
    - grep -q rollback=true "$OUT/deployed.txt" && echo "saw the rollback"
"#
    )
}

/// A project whose first commit is `v1`, a health endpoint that answers for `healthy` versions,
/// a webhook recorder, and a scratch directory the deploy writes to.
struct Setup {
    repo: Repo,
    port: u16,
    hook: Recorder,
    out: tempfile::TempDir,
    _health: HttpStub,
}

impl Setup {
    fn new(healthy: &[&'static str]) -> Setup {
        let health = HttpStub::serve(
            healthy
                .iter()
                .map(|v| match *v {
                    "v1" => ("/healthz/v1", String::new()),
                    "v2" => ("/healthz/v2", String::new()),
                    _ => ("/healthz/v3", String::new()),
                })
                .collect(),
        );
        let port = health.port;
        Setup {
            repo: Repo::ci(&pipeline("v1", port, "")),
            port,
            hook: Recorder::start(),
            out: tempfile::tempdir().unwrap(),
            _health: health,
        }
    }

    /// A project where v1 deployed (healthy, `REPLICAS=3`), then v2 is committed with `extra` in
    /// its deploy job, and fails its verification.
    fn v1_deployed_then_v2(extra: &str) -> Setup {
        let s = Setup::new(&["v1"]);
        let first = s.run("3");
        assert_eq!(first.code, 0, "{}", first.dump());
        s.commit("v2", extra);
        s
    }

    /// Commits the pipeline of `version` with `extra` in its deploy job.
    fn commit(&self, version: &str, extra: &str) {
        std::fs::write(
            self.repo.path().join(".gitlab-ci.yml"),
            pipeline(version, self.port, extra),
        )
        .unwrap();
        self.repo.git(&["commit", "-qam", version]);
    }

    fn args(&self, replicas: &str) -> Vec<String> {
        [
            format!("OUT={}", self.out.path().display()),
            format!("REPLICAS={replicas}"),
            format!("TOKEN={TOKEN}"),
            format!("HOOK_URL={}", self.hook.url()),
        ]
        .into_iter()
        .flat_map(|v| ["--variable".to_string(), v])
        .chain(["--mask".into(), "TOKEN".into()])
        .collect()
    }

    fn run(&self, replicas: &str) -> Run {
        self.run_with(replicas, &[])
    }

    fn run_with(&self, replicas: &str, extra: &[&str]) -> Run {
        let args = self.args(replicas);
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        self.repo.run_json(&all)
    }

    fn deployed(&self) -> String {
        std::fs::read_to_string(self.out.path().join("deployed.txt"))
            .unwrap()
            .trim_end()
            .to_string()
    }

    /// `gantry env history production --output json`: (id, status) newest first, and the records.
    fn history(&self) -> (Vec<(u64, String)>, Value) {
        let out = self
            .repo
            .gantry(&["env", "history", "production", "--output", "json"]);
        let all: Value = serde_json::from_slice(&out.stdout).expect("JSON history");
        let rows = all
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["id"].as_u64().unwrap(),
                    d["status"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        (rows, all)
    }

    fn rollback(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["rollback", "production"];
        all.extend_from_slice(args);
        self.repo.gantry(&all)
    }
}

fn rollback_events(run: &Run) -> Vec<&Value> {
    run.events
        .iter()
        .filter(|e| e["event"] == "rollback")
        .collect()
}

fn rows(pairs: &[(u64, &str)]) -> Vec<(u64, String)> {
    pairs.iter().map(|(i, s)| (*i, (*s).to_string())).collect()
}

fn rollback_dirs(repo: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(repo.join(".gantry").join("rollbacks"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn a_failed_verification_rolls_back_to_the_previous_deployment_with_its_variables_and_artifacts() {
    let s = Setup::new(&["v1"]);
    let first = s.run("3");
    assert_eq!(first.code, 0, "{}", first.dump());
    assert!(rollback_events(&first).is_empty(), "{}", first.dump());
    let v1 = "v1 build of v1 replicas=3";
    assert_eq!(
        s.deployed(),
        format!("{v1} rollback=no from= to= token={TOKEN}")
    );

    s.commit("v2", "");
    // `watch` runs after the failed deploy (`when: on_failure`) and waits for the rollback: the
    // rollback starts when the verification fails, not when the pipeline ends.
    let second = s.run_with("5", &["--variable", "WATCH=yes"]);
    assert_eq!(second.code, 1, "the deploy failed: {}", second.dump());
    assert_eq!(second.status("deploy"), "failed");
    assert_eq!(
        second.log("watch"),
        ["saw the rollback"],
        "{}",
        second.dump()
    );
    // v1 again: its commit, its recorded variables (REPLICAS=3), its build's artifact (not v2's,
    // which the second run stored since), the masked token from this run, and GANTRY_ROLLBACK_*.
    assert_eq!(
        s.deployed(),
        format!("{v1} rollback=true from=2 to=1 token={TOKEN}")
    );
    assert_eq!(
        rollback_events(&second),
        [
            &json!({"event": "rollback", "environment": "production", "from": 2, "to": 1, "status": "running"}),
            &json!({"event": "rollback", "environment": "production", "from": 2, "to": 1, "status": "success"}),
        ]
    );
    assert_eq!(second.status("deploy (rollback)"), "success");
    assert_eq!(second.log("deploy (rollback)"), ["deployed v1"]);
    let ended = second.index(|e| e["event"] == "pipeline_finished");
    let started = second.index(|e| e["event"] == "rollback");
    assert!(started < ended, "{}", second.dump());
    assert!(!second.stdout.contains(TOKEN), "masked in the log");

    let (history, all) = s.history();
    assert_eq!(
        history,
        rows(&[(3, "success"), (2, "rolled_back"), (1, "success")])
    );
    assert_eq!(all[0]["rollback_of"], 2);
    assert_eq!(all[0]["triggered_by"], "rollback (automatic)");
    assert_eq!(all[0]["sha"], all[2]["sha"]);
    assert_eq!(all[1]["rolled_back_by"], 3);
    assert!(
        rollback_dirs(s.repo.path()).is_empty(),
        "the worktree is removed"
    );
    assert!(!s.repo.git(&["worktree", "list"]).contains("rollbacks"));

    let events: Vec<(String, Value)> = s
        .hook
        .bodies()
        .iter()
        .map(|b| {
            (
                b["event"].as_str().unwrap().to_string(),
                b["rollback"].clone(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("deployment_succeeded".to_string(), Value::Null),
            ("deployment_failed".to_string(), Value::Null),
            ("rollback".to_string(), json!({"from": "2", "to": "1"})),
        ]
    );
    let rollback = &s.hook.bodies()[2];
    assert_eq!(rollback["environment"], "production");
    assert_eq!(rollback["failed_jobs"], json!([]));
}

#[test]
fn a_rollback_script_runs_instead_and_human_output_names_the_rollback() {
    let s = Setup::v1_deployed_then_v2(
        "  rollback_script:\n    - echo \"script from=$GANTRY_ROLLBACK_FROM to=$GANTRY_ROLLBACK_TO weight=$GANTRY_DEPLOY_WEIGHT $VERSION\" > \"$OUT/deployed.txt\"\n",
    );
    let args = s.args("5");
    let mut all = vec!["run"];
    all.extend(args.iter().map(String::as_str));
    let out = s.repo.gantry(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(s.deployed(), "script from=2 to=1 weight=100 v1");
    assert!(
        stdout
            .lines()
            .any(|l| l == "rollback of production: deployment 2 → 1"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l == "rollback of production: deployment 2 → 1 succeeded"),
        "{stdout}"
    );
    assert!(
        stdout.contains("deploy (rollback) $ echo \"script from="),
        "{stdout}"
    );
}

#[test]
fn a_failing_rollback_is_reported_and_never_loops() {
    let s = Setup::v1_deployed_then_v2("  rollback_script: [\"exit 7\"]\n");
    let second = s.run("5");
    assert_eq!(second.code, 1, "{}", second.dump());
    assert_eq!(
        rollback_events(&second),
        [
            &json!({"event": "rollback", "environment": "production", "from": 2, "to": 1, "status": "running"}),
            &json!({"event": "rollback", "environment": "production", "from": 2, "to": 1, "status": "failed"}),
        ]
    );
    assert_eq!(second.starts("deploy (rollback)"), 1);
    assert!(
        second
            .stderr
            .contains("gantry: error: the rollback of production from deployment 2 to 1 failed"),
        "{}",
        second.dump()
    );
    let (history, all) = s.history();
    assert_eq!(
        history,
        rows(&[(3, "failed"), (2, "failed"), (1, "success")])
    );
    assert_eq!(all[0]["rollback_of"], 2);
    let last = s.hook.bodies().pop().unwrap();
    assert_eq!(last["event"], "rollback");
    assert_eq!(last["failed_jobs"], json!(["deploy (rollback)"]));
}

#[test]
fn without_an_earlier_success_there_is_nothing_to_roll_back_to() {
    let s = Setup::new(&[]);
    let run = s.run("3");
    assert_eq!(run.code, 1, "{}", run.dump());
    assert!(rollback_events(&run).is_empty(), "{}", run.dump());
    assert!(
        run.stderr.contains(
            "gantry: error: cannot roll back production: no deployment of it succeeded before deployment 1"
        ),
        "{}",
        run.dump()
    );
    assert_eq!(s.history().0, rows(&[(1, "failed")]));
}

#[test]
fn gantry_rollback_goes_back_to_the_previous_success_or_to_the_one_named() {
    let s = Setup::new(&["v1", "v2"]);
    let out = s.rollback(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no environment `production`"),
        "{out:?}"
    );
    // An untracked file makes the working tree dirty: the records say so.
    std::fs::write(s.repo.path().join("notes.txt"), "not committed").unwrap();
    assert_eq!(s.run("3").code, 0);
    let out = s.rollback(&["--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no deployment of it succeeded before deployment 1"),
        "{out:?}"
    );
    s.commit("v2", "");
    assert_eq!(s.run("5").code, 0);
    assert!(s.deployed().starts_with("v2 build of v2 replicas=5"));

    let out = s.rollback(&["--output", "json"]);
    let run = Run::parse(out);
    assert_eq!(run.code, 0, "{}", run.dump());
    assert_eq!(
        s.deployed(),
        "v1 build of v1 replicas=3 rollback=true from=2 to=1 token="
    );
    assert!(
        run.stderr.contains("runs without masked variable `TOKEN`"),
        "{}",
        run.dump()
    );
    assert!(
        run.stderr.contains(
            "deployment 1 of production was made from a working tree with uncommitted changes"
        ),
        "{}",
        run.dump()
    );
    assert_eq!(rollback_events(&run).len(), 2, "{}", run.dump());
    assert_eq!(run.pipeline(), "none", "a rollback is not a pipeline");
    let (history, all) = s.history();
    assert_eq!(
        history,
        rows(&[(3, "success"), (2, "rolled_back"), (1, "success")])
    );
    assert_eq!(all[2]["dirty"], true);
    assert_eq!(
        all[0]["dirty"], false,
        "a rollback deploys a commit as committed"
    );
    assert_eq!(all[0]["triggered_by"], "rollback by hand");

    let error = |args: &[&str], part: &str| {
        let out = s.rollback(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(part), "{args:?}: {stderr}");
    };
    error(
        &["--to", "9"],
        "environment `production` has no deployment 9",
    );
    error(
        &["--to", "2"],
        "deployment 2 of production is rolled_back: --to must name a successful deployment",
    );
    error(
        &["--to", "3"],
        "deployment 3 is the newest deployment of production",
    );

    // The rollback is a deployment like any other: rolling it back to 1 works by id.
    let out = s.rollback(&["--to", "1"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("rollback of production: deployment 3 → 1 succeeded"),
        "{stdout}"
    );
    assert_eq!(
        s.history().0,
        rows(&[
            (4, "success"),
            (3, "rolled_back"),
            (2, "rolled_back"),
            (1, "success")
        ])
    );

    // A running record that no live run owns (what a killed run leaves) is failed when read.
    let file = s.repo.path().join(".gantry/deployments/production.json");
    let mut records: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let last = records.as_array_mut().unwrap().last_mut().unwrap();
    last["status"] = json!("running");
    std::fs::write(&file, records.to_string()).unwrap();
    let out = s
        .repo
        .gantry(&["env", "history", "production", "--output", "json"]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("deployment 4 was left running by a run that ended; marked failed"),
        "{out:?}"
    );
    assert_eq!(s.history().0[0], (4, "failed".to_string()));
}

#[test]
fn ctrl_c_cancels_a_running_rollback() {
    let s = Setup::v1_deployed_then_v2("  rollback_script: [\"echo started\", \"sleep 60\"]\n");
    let args = s.args("5");
    let started = crate::start_run(
        s.repo.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let (status, output) = started.interrupt();
    assert_eq!(status.code(), Some(130), "{output}");
    assert!(
        output.contains(
            r#""event":"rollback","environment":"production","from":2,"to":1,"status":"failed""#
        ),
        "{output}"
    );
    assert_eq!(
        s.history().0,
        rows(&[(3, "canceled"), (2, "failed"), (1, "success")])
    );
}

#[test]
fn gantry_rollback_takes_the_masked_variables_as_gantry_run_does() {
    let s = Setup::new(&["v1", "v2"]);
    assert_eq!(s.run("3").code, 0);
    s.commit("v2", "");
    assert_eq!(s.run("5").code, 0);

    let out = s.rollback(&["--variable", "TOKEN=given", "--variable", "REPLICAS=9"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!stderr.contains("runs without masked variable"), "{stderr}");
    // A plain one given here is not used, and the command says so.
    assert!(
        stderr.contains("variable `REPLICAS` is not used: the rollback re-deploys deployment 1")
            && !stderr.contains("variable `TOKEN` is not used"),
        "{stderr}"
    );
    // The masked one comes from the command; the others keep their recorded values.
    assert_eq!(
        s.deployed(),
        "v1 build of v1 replicas=3 rollback=true from=2 to=1 token=given"
    );

    let file = s.out.path().join("vars.yml");
    std::fs::write(&file, "TOKEN: {value: from-file, masked: true}\n").unwrap();
    let out = s.rollback(&["--variables-file", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(s.deployed().ends_with("from=3 to=1 token=from-file"));
    let records =
        std::fs::read_to_string(s.repo.path().join(".gantry/deployments/production.json")).unwrap();
    assert!(
        !records.contains("from-file") && !records.contains("given"),
        "{records}"
    );

    // The same parsing as `gantry run`'s, errors included.
    let out = s.rollback(&["--variable", "TOKEN"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--variable `TOKEN` must be KEY=VALUE"),
        "{out:?}"
    );
    // A server's rollback keeps its project's variables: none are sent.
    let server = [
        "--project",
        "hello",
        "--server",
        "http://127.0.0.1:9",
        "--token",
        "t",
        "--variable",
        "A=b",
    ];
    let out = s.rollback(&server);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "--variable and --variables-file apply to a rollback of this directory's deployments"
        ),
        "{out:?}"
    );
}

#[test]
fn variables_scoped_to_the_environment_are_recorded_and_rolled_back_to() {
    let s = Setup::new(&["v1", "v2"]);
    let run = |replicas: &str| {
        let file = s.out.path().join("run-vars.yml");
        std::fs::write(
            &file,
            format!(
                "REPLICAS:\n  - {{value: \"{replicas}\", environment_scope: production}}\n  \
                 - {{value: \"1\", environment_scope: \"*\"}}\n\
                 TOKEN:\n  - {{value: scoped-secret, masked: true, environment_scope: \"prod*\"}}\n"
            ),
        )
        .unwrap();
        let out = format!("OUT={}", s.out.path().display());
        let hook = format!("HOOK_URL={}", s.hook.url());
        let args = ["--variable", &out, "--variable", &hook, "--variables-file"];
        let mut all: Vec<&str> = args.to_vec();
        all.push(file.to_str().unwrap());
        let run = s.repo.run_json(&all);
        assert_eq!(run.code, 0, "{}", run.dump());
    };
    run("7");
    assert!(s.deployed().starts_with("v1 build of v1 replicas=7"));
    s.commit("v2", "");
    run("8");
    assert!(s.deployed().starts_with("v2 build of v2 replicas=8"));
    let (_, all) = s.history();
    let replicas = all[1]["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["key"] == "REPLICAS");
    assert_eq!(replicas.map(|v| v["value"].clone()), Some(json!("7")));
    let records =
        std::fs::read_to_string(s.repo.path().join(".gantry/deployments/production.json")).unwrap();
    assert!(!records.contains("scoped-secret"), "{records}");
    assert!(records.contains(r#""key": "TOKEN""#), "{records}");

    // The scoped masked value comes from this command's variables file, scoped as in the run.
    let file = s.out.path().join("rollback-vars.yml");
    std::fs::write(
        &file,
        "TOKEN:\n  - {value: other, masked: true, environment_scope: staging}\n  \
         - {value: again, masked: true, environment_scope: production}\n",
    )
    .unwrap();
    let out = s.rollback(&["--variables-file", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("runs without masked variable"),
        "{out:?}"
    );
    assert_eq!(
        s.deployed(),
        "v1 build of v1 replicas=7 rollback=true from=2 to=1 token=again"
    );
}

#[test]
fn a_deployment_left_running_by_a_killed_run_is_failed_and_rolled_back() {
    let s = Setup::new(&["v1", "v2"]);
    assert_eq!(s.run("3").code, 0);
    // v2's deploy waits until told to go on, then fails: a killed run's job never deploys.
    s.commit(
        "v2",
        "  before_script:\n    - echo started\n    - for i in $(seq 1 600); do [ -f \"$OUT/stop\" ] && exit 1; sleep 0.1; done\n",
    );
    let args = s.args("5");
    let started = crate::start_run(
        s.repo.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // While its run lives, deployment 2 is running and blocks a rollback.
    let out = s.rollback(&[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("deployment 2 of production is still running"),
        "{out:?}"
    );
    assert_eq!(s.history().0, rows(&[(2, "running"), (1, "success")]));

    started.kill();
    std::fs::write(s.out.path().join("stop"), "").unwrap();
    let out = s.rollback(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stderr.contains(
            "gantry: warning: deployment 2 was left running by a run that ended; marked failed"
        ),
        "{stderr}"
    );
    assert!(
        s.deployed()
            .starts_with("v1 build of v1 replicas=3 rollback=true from=2 to=1"),
        "{}",
        s.deployed()
    );
    let (history, all) = s.history();
    assert_eq!(
        history,
        rows(&[(3, "success"), (2, "rolled_back"), (1, "success")])
    );
    assert!(all[1]["finished_at"].is_string(), "{all}");
}

#[test]
fn a_target_whose_artifacts_were_pruned_is_refused_unless_it_took_none() {
    let s = Setup::new(&["v1", "v2"]);
    assert_eq!(s.run("3").code, 0);
    s.commit("v2", "");
    // Ten newer successes: deployment 1 is the 11th newest, and its snapshot is pruned.
    for _ in 0..10 {
        assert_eq!(s.run("5").code, 0);
    }
    let snapshots = s.repo.path().join(".gantry/deployments/snapshots");
    assert!(!snapshots.join("1").exists() && snapshots.join("2").is_dir());
    let out = s.rollback(&["--to", "1"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "deployment 1's artifacts were pruned (only the last 10 successful deployments keep \
             them): cannot roll back to it"
        ),
        "{out:?}"
    );
    assert!(s.deployed().starts_with("v2 "), "nothing re-deployed");
    assert_eq!(s.history().0.len(), 11);

    // A kept one without a snapshot (recorded before snapshots were always made) is not refused.
    std::fs::remove_dir_all(snapshots.join("2")).unwrap();
    let out = s.rollback(&["--to", "2"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // A deployment that took no artifacts has nothing to lose, even when it is pruned.
    s.commit("v1", "  dependencies: []\n");
    assert_eq!(s.run("4").code, 0);
    s.commit("v2", "");
    for _ in 0..10 {
        assert_eq!(s.run("6").code, 0);
    }
    let target = s.history().1[10]["id"].as_u64().unwrap();
    assert!(!snapshots.join(target.to_string()).exists());
    let out = s.rollback(&["--to", &target.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        s.deployed().starts_with("v1  replicas=4 rollback=true"),
        "{}",
        s.deployed()
    );
}
