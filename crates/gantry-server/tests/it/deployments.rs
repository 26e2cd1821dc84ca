//! Deployments on the server (issue 19), through the agent protocol: a deploy job handed out
//! records a running deployment, its finish ends it (with its measurements), and the
//! environments and deployments routes show them to the project's callers only.

use reqwest::Method;
use serde_json::{Value, json};

use crate::both;
use crate::common::*;
use crate::reports::finish_with;

both!(a_deploy_job_records_its_deployment_which_ends_with_it);
both!(an_environments_history_pages_and_names_with_a_slash);
both!(a_lost_agents_deployment_fails_with_its_lease);

const DEPLOY: &str = "stages: [build, deploy]
build:
  stage: build
  script: [make]
  artifacts: {paths: [out]}
lint:
  stage: build
  script: [make lint]
deploy:
  stage: deploy
  script: [./deploy.sh]
  environment:
    name: production
    url: https://prod.example/$CI_COMMIT_REF_NAME
    deployment_tier: production
";

const MASKED: &str = "hunter2-deploy-secret";

/// Pushes `sha` to `main` of `demo` as GitLab user `jdoe`; answers the pipeline's id.
async fn push_as_jdoe(app: &App, sha: &str) -> i64 {
    let body = json!({
        "object_kind": "push",
        "ref": "refs/heads/main",
        "before": "0000000000000000000000000000000000000000",
        "after": sha,
        "user_name": "Jane Doe",
        "user_username": "jdoe",
        "user_email": "jane@example.com",
    });
    let r = send(
        app.request(Method::POST, "/api/v1/projects/demo/hooks/gitlab")
            .header("X-Gitlab-Token", SECRET)
            .header("X-Gitlab-Event", "Push Hook")
            .header("X-Gitlab-Event-UUID", format!("uuid-{sha}"))
            .json(&body),
        202,
    )
    .await;
    let accepted: Value = r.json().await.unwrap();
    let d = app.delivery("demo", accepted["id"].as_i64().unwrap()).await;
    d["pipeline_id"].as_i64().expect("a pipeline")
}

/// Takes the next job, which must be `name`; answers its id.
async fn take(app: &App, agent: &Agent, name: &str) -> i64 {
    let spec = app.take(agent, 5_000).await.expect("a job");
    assert_eq!(spec["job"], name, "{spec}");
    spec["job_id"].as_i64().unwrap()
}

/// A finish of `outcome` carrying `measurements`.
fn finish(outcome: &str, measurements: &Value) -> Value {
    let mut body = json!({
        "outcome": outcome,
        "exit_code": if outcome == "success" { 0 } else { 1 },
        "measurements": measurements,
    });
    if outcome == "failed" {
        body["failure_reason"] = json!("verification_failure");
    }
    body
}

/// GETs `path` and answers its raw body, checked to answer `200`.
async fn raw(app: &App, path: &str) -> String {
    send(app.get(path), 200).await.text().await.unwrap()
}

async fn a_deploy_job_records_its_deployment_which_ends_with_it(backend: Backend) {
    let app = spawn(backend).await;
    app.project(
        "demo",
        json!({"variables": [
            {"key": "DEPLOY_TOKEN", "value": MASKED, "masked": true},
            {"key": "REGION", "value": "eu-west"},
        ]}),
    )
    .await;
    let sha = app.commit(&[(".gitlab-ci.yml", DEPLOY)]);
    let pipeline = push_as_jdoe(&app, &sha).await;
    let agent = app.register("a", &[]).await;
    assert_eq!(
        app.json("/api/v1/projects/demo/environments").await,
        json!([])
    );

    let build = take(&app, &agent, "build").await;
    app.upload_artifacts(&agent, build, tar_of("out", b"binary"))
        .await;
    app.run_job(&agent, build, "built\n", "success").await;
    let lint = take(&app, &agent, "lint").await;
    app.run_job(&agent, lint, "linted\n", "success").await;

    // Handed out: a running deployment, with what it deploys and who triggered it.
    let deploy = take(&app, &agent, "deploy").await;
    let envs = app.json("/api/v1/projects/demo/environments").await;
    let env = &envs[0];
    assert_eq!(envs.as_array().unwrap().len(), 1, "{envs}");
    assert_eq!(env["name"], "production");
    assert_eq!(env["url"], "https://prod.example/main");
    assert_eq!(env["tier"], "production");
    assert_eq!(env["deployments"], 1);
    assert_eq!(env["current"], Value::Null, "nothing succeeded yet: {env}");
    let d = &env["last"];
    assert_eq!(d["status"], "running");
    assert_eq!(d["project"], "demo");
    assert_eq!(d["environment"], "production");
    assert_eq!(
        (d["job_id"].as_i64(), d["job"].as_str()),
        (Some(deploy), Some("deploy"))
    );
    assert_eq!(d["pipeline_id"], pipeline);
    assert_eq!(
        (d["sha"].as_str(), d["ref"].as_str()),
        (Some(sha.as_str()), Some("main"))
    );
    assert_eq!(d["triggered_by"], "push by jdoe");
    assert_eq!(
        d["variables"],
        json!([
            {"key": "DEPLOY_TOKEN", "value": "[MASKED]", "masked": true},
            {"key": "REGION", "value": "eu-west", "masked": false},
        ])
    );
    assert_eq!(d["artifacts"], json!(["build"]), "lint left none");
    assert!(d["created_at"].as_str().is_some());
    assert_eq!(d["finished_at"], Value::Null);
    assert_eq!(d["measurements"], json!([]));

    // Finished with its verification's measurements: a success holding them.
    let measurements = json!([
        {"kind": "http", "check": "https://prod.example/healthz", "value": 200.0,
         "threshold": "status 200", "passed": true, "phase": "pass", "elapsed_ms": 5, "weight": 50},
        {"kind": "prometheus", "check": "error-rate", "value": 0.01, "threshold": "<= 0.05",
         "passed": true, "phase": "pass", "elapsed_ms": 1005, "weight": 100},
    ]);
    let r = finish_with(
        &app,
        &agent,
        deploy,
        "deployed\n",
        finish("success", &measurements),
    )
    .await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let history = app
        .json("/api/v1/projects/demo/environments/production/deployments")
        .await;
    let d = &history[0];
    assert_eq!(d["status"], "success");
    assert!(d["finished_at"].as_str().is_some(), "{d}");
    assert_eq!(d["measurements"], measurements);
    let envs = app.json("/api/v1/projects/demo/environments").await;
    assert_eq!(envs[0]["current"]["id"], d["id"]);

    // A failed verification fails the job and its deployment (a retry of it deploys again).
    let retried: Value = send(app.post(&format!("/api/v1/jobs/{deploy}/retry")), 201)
        .await
        .json()
        .await
        .unwrap();
    let again = take(&app, &agent, "deploy").await;
    assert_eq!(retried["id"], again);
    let failed = json!([{"kind": "http", "check": "https://prod.example/healthz", "value": 500.0,
        "threshold": "status 200", "passed": false, "phase": "fail", "elapsed_ms": 7}]);
    finish_with(&app, &agent, again, "deployed\n", finish("failed", &failed)).await;
    let history = app
        .json("/api/v1/projects/demo/environments/production/deployments")
        .await;
    let statuses: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["failed", "success"]);
    assert_eq!(history[0]["job_id"], again);
    assert_eq!(history[0]["measurements"], failed);
    let envs = app.json("/api/v1/projects/demo/environments").await;
    assert_eq!(
        (
            envs[0]["deployments"].as_i64(),
            envs[0]["last"]["status"].as_str()
        ),
        (Some(2), Some("failed"))
    );
    assert_eq!(
        envs[0]["current"]["job_id"], deploy,
        "the success stays current"
    );

    // No secret in clear, anywhere the API shows a deployment.
    for path in [
        "/api/v1/projects/demo/environments",
        "/api/v1/projects/demo/environments/production/deployments",
    ] {
        assert!(!raw(&app, path).await.contains(MASKED), "{path}");
    }
}

const REVIEW: &str = "stages: [deploy, cleanup]
review-a:
  stage: deploy
  script: [./deploy.sh a]
  environment: review/x
review-b:
  stage: deploy
  script: [./deploy.sh b]
  environment: {name: review/x}
review-c:
  stage: deploy
  script: [./deploy.sh c]
  environment: {name: review/x, action: start}
stop-review:
  stage: cleanup
  when: always
  script: [./stop.sh]
  environment: {name: review/x, action: stop}
nameless:
  stage: cleanup
  when: always
  script: [./deploy.sh]
  environment: $NOT_SET
";

async fn an_environments_history_pages_and_names_with_a_slash(backend: Backend) {
    let app = spawn(backend).await;
    app.project("demo", json!({})).await;
    app.project("other", json!({})).await;
    app.push_ci(REVIEW).await;
    let agent = app.register("a", &[]).await;
    let mut ids = Vec::new();
    for (name, outcome) in [
        ("review-a", "success"),
        ("review-b", "failed"),
        ("review-c", "success"),
    ] {
        let id = take(&app, &agent, name).await;
        finish_with(&app, &agent, id, "x\n", finish(outcome, &json!([]))).await;
        ids.push(id);
    }
    // An `action: stop` job is no deployment, nor is one whose name expands to nothing.
    let stop = take(&app, &agent, "stop-review").await;
    app.run_job(&agent, stop, "stopped\n", "success").await;
    let nameless = take(&app, &agent, "nameless").await;
    app.run_job(&agent, nameless, "deployed\n", "success").await;

    let path = "/api/v1/projects/demo/environments/review%2Fx/deployments";
    let r = send(app.get(&format!("{path}?per_page=2")), 200).await;
    let header = |name: &str| r.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(
        (header("x-total"), header("x-page"), header("x-per-page")),
        ("3".into(), "1".into(), "2".into())
    );
    assert_eq!(header("x-next-page"), "2");
    let first: Value = r.json().await.unwrap();
    let jobs = |v: &Value| -> Vec<(i64, String)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["job_id"].as_i64().unwrap(),
                    d["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        jobs(&first),
        [
            (ids[2], "success".to_owned()),
            (ids[1], "failed".to_owned())
        ],
        "newest first"
    );
    assert_eq!(first[0]["environment"], "review/x");
    // A push without `user_username`: `GITLAB_USER_LOGIN` is the email's local part.
    assert_eq!(first[0]["triggered_by"], "push by jane");
    let second = app.json(&format!("{path}?per_page=2&page=2")).await;
    assert_eq!(jobs(&second), [(ids[0], "success".to_owned())]);
    let envs = app.json("/api/v1/projects/demo/environments").await;
    assert_eq!(envs.as_array().unwrap().len(), 1, "{envs}");
    assert_eq!(envs[0]["name"], "review/x");
    assert_eq!(envs[0]["deployments"], 3);
    assert_eq!(envs[0]["current"]["job_id"], ids[2]);

    // Unknown environments, and the name's slash unencoded (two path segments), are not found.
    for unknown in [
        "/api/v1/projects/demo/environments/review/deployments",
        "/api/v1/projects/demo/environments/review%2Fy/deployments",
        "/api/v1/projects/demo/environments/review/x/deployments",
        "/api/v1/projects/nope/environments/review%2Fx/deployments",
        "/api/v1/projects/nope/environments",
    ] {
        let r = send(app.get(unknown), 404).await;
        json_error(r, unknown).await;
    }
    send(app.get(&format!("{path}?per_page=101")), 400).await;

    // A project token sees its project's environments, and not another project's.
    let token = |project: &str| {
        let app = &app;
        let project = project.to_owned();
        async move {
            let r = send(
                app.post(&format!("/api/v1/projects/{project}/tokens"))
                    .json(&json!({"name": "reader", "read_only": true})),
                201,
            )
            .await;
            let v: Value = r.json().await.unwrap();
            v["token"].as_str().unwrap().to_owned()
        }
    };
    let (own, others) = (token("demo").await, token("other").await);
    for path in [path, "/api/v1/projects/demo/environments"] {
        send(app.request(Method::GET, path).bearer_auth(&own), 200).await;
        let r = send(app.request(Method::GET, path).bearer_auth(&others), 403).await;
        json_error(r, path).await;
        send(app.request(Method::GET, path), 401).await;
    }

    // Both routes are in the OpenAPI document, paginated like the other lists.
    let doc: Value = send(app.anon("/api/v1/openapi.json"), 200)
        .await
        .json()
        .await
        .unwrap();
    let paths = &doc["paths"];
    assert!(paths["/api/v1/projects/{name}/environments"]["get"].is_object());
    let history = &paths["/api/v1/projects/{name}/environments/{env}/deployments"]["get"];
    let params: Vec<&str> = history["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, ["name", "env", "page", "per_page"]);
    assert!(history["responses"]["200"]["headers"]["X-Total"].is_object());
}

/// An agent killed mid-deploy (during its verification, say): the lease reaper fails the job,
/// and with it the deployment, which is never current.
async fn a_lost_agents_deployment_fails_with_its_lease(backend: Backend) {
    let app = spawn_with(backend, |c| {
        c.lease_timeout = std::time::Duration::from_millis(800);
    })
    .await;
    app.project("demo", json!({})).await;
    app.push_ci("deploy:\n  script: [./deploy.sh]\n  environment: production\n")
        .await;
    let agent = app.register("dies", &[]).await;
    let deploy = take(&app, &agent, "deploy").await;
    let path = "/api/v1/projects/demo/environments/production/deployments";
    assert_eq!(app.json(path).await[0]["status"], "running");
    let d = eventually(|| async {
        let d = app.json(path).await[0].clone();
        (d["status"] != "running").then_some(d)
    })
    .await;
    assert_eq!(
        (d["status"].as_str(), d["job_id"].as_i64()),
        (Some("failed"), Some(deploy))
    );
    assert!(d["finished_at"].as_str().is_some(), "{d}");
    let envs = app.json("/api/v1/projects/demo/environments").await;
    assert_eq!(envs[0]["current"], Value::Null);
}
