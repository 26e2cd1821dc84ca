//! Deployment records end to end: `gantry run` deploys to production twice (a verified success,
//! then a failing deploy), and `gantry env history` and `gantry env list` read `.gantry/`.

use serde_json::Value;

use crate::Repo;
use crate::server::HttpStub;

const SECRET: &str = "s3cret-deploy-token";

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &std::process::Output) -> Value {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

#[test]
fn two_deploys_make_a_history_newest_first_and_a_stop_records_nothing() {
    let health = HttpStub::serve(vec![("/healthz", String::new())]);
    let repo = Repo::ci(&format!(
        r#"
stages: [build, deploy, cleanup]
build:
  stage: build
  script: echo app > app.bin
  artifacts: {{paths: [app.bin]}}
deploy:
  stage: deploy
  environment: {{name: production, url: "http://127.0.0.1:{port}"}}
  variables:
    REPLICAS: "3"
    DEPLOY_URL: https://deployer:$TOKEN@deploy.invalid
  script:
    - test "$FAIL" != 1
  verify:
    interval: 0.1s
    duration: 0.1s
    http:
      - url: http://127.0.0.1:{port}/healthz
stop:
  stage: cleanup
  environment: {{name: production, action: stop}}
  script: echo stopped
"#,
        port = health.port
    ));
    let run = |fail: &str| {
        repo.run_json(&[
            "--variable",
            &format!("FAIL={fail}"),
            "--variable",
            &format!("TOKEN={SECRET}"),
            "--mask",
            "TOKEN",
        ])
    };
    let first = run("0");
    assert_eq!(first.code, 0, "{}", first.stderr);
    let second = run("1");
    assert_eq!(second.code, 1, "{}", second.stderr);

    let history = json(&repo.gantry(&["env", "history", "production", "--output", "json"]));
    let rows: Vec<(u64, &str, u64)> = history
        .as_array()
        .expect("an array")
        .iter()
        .map(|d| {
            (
                d["id"].as_u64().unwrap(),
                d["status"].as_str().unwrap(),
                d["pipeline_id"].as_u64().unwrap(),
            )
        })
        .collect();
    // The stop job ran in the first pipeline, and recorded nothing.
    assert_eq!(rows, [(2, "failed", 2), (1, "success", 1)]);
    let ok = &history[1];
    assert_eq!(ok["job"], "deploy");
    assert_eq!(ok["environment"], "production");
    assert_eq!(ok["ref"], "main");
    assert_eq!(
        ok["sha"].as_str(),
        Some(repo.git(&["rev-parse", "HEAD"]).trim())
    );
    assert_eq!(ok["artifacts"], serde_json::json!(["build"]));
    assert!(ok["triggered_by"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(ok["finished_at"].is_string());
    let var = |d: &Value, k: &str| {
        d["variables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["key"] == k)
            .cloned()
            .unwrap_or_else(|| panic!("no variable {k} in {d}"))
    };
    assert_eq!(
        var(ok, "TOKEN"),
        serde_json::json!({"key": "TOKEN", "value": "[MASKED]", "masked": true})
    );
    assert_eq!(var(ok, "REPLICAS")["value"], "3");
    // A value holding a masked one is masked where it holds it, as in the job's log.
    assert_eq!(
        var(ok, "DEPLOY_URL")["value"],
        "https://deployer:[MASKED]@deploy.invalid"
    );
    assert_eq!(var(&history[0], "FAIL")["value"], "1");
    assert!(!history.to_string().contains(SECRET));
    let checks = ok["measurements"].as_array().unwrap();
    assert!(!checks.is_empty());
    assert!(
        checks
            .iter()
            .all(|m| m["kind"] == "http" && m["passed"] == true)
    );

    let human = repo.gantry(&["env", "history", "production"]);
    let text = stdout(&human);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("ID  STATUS"), "{text}");
    assert!(lines[1].starts_with("2   failed"), "{text}");
    assert!(lines[2].starts_with("1   success"), "{text}");

    let list = json(&repo.gantry(&["env", "list", "--output", "json"]));
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["name"], "production");
    assert_eq!(list[0]["last"]["id"], 2);
    assert_eq!(list[0]["last"]["status"], "failed");
    let text = stdout(&repo.gantry(&["env", "list"]));
    assert!(text.starts_with("ENVIRONMENT  LAST  STATUS"), "{text}");
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("production   2     failed")),
        "{text}"
    );
}

#[test]
fn an_unknown_environment_is_an_error() {
    let repo = Repo::ci("job:\n  script: echo hi\n");
    let out = repo.gantry(&["env", "history", "staging"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "gantry: no environment `staging`: no deployment was recorded to it"
    );
    let out = repo.gantry(&["env", "list", "--output", "json"]);
    assert_eq!(json(&out), serde_json::json!([]));
}

#[test]
fn stop_prepare_verify_and_access_record_no_deployment() {
    let mut ci = String::new();
    for action in ["stop", "prepare", "verify", "access"] {
        ci.push_str(&format!(
            "{action}:\n  environment: {{name: staging, action: {action}}}\n  script: echo {action}\n"
        ));
    }
    let repo = Repo::ci(&ci);
    let run = repo.run_json(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let list = json(&repo.gantry(&["env", "list", "--output", "json"]));
    assert_eq!(list, serde_json::json!([]));
    assert_eq!(
        repo.gantry(&["env", "history", "staging"]).status.code(),
        Some(2)
    );
}
