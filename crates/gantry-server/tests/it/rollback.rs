//! Rollbacks on the server, through the real agent protocol: automatic after a failed
//! verification with `verify:on_failure: rollback`, and by `POST .../environments/{env}/rollback`;
//! the deployments they record and mark, and the deployment and rollback notifications.

use gantry_api::deployments::DeploymentStatus;
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{Agent, App, Backend, create_token, eventually, send, spawn};
use crate::notify::Recorder;

/// A deploy job that rolls back when its verification fails, and tells the webhook at
/// `$HOOK_URL` of failed deployments and rollbacks. `{extra}` is more of the job.
fn ci(extra: &str) -> String {
    format!(
        "
notify:
  - on: [deployment_failed, rollback]
    webhook: {{url: $HOOK_URL}}
deploy:
  script: [./deploy.sh]
  environment: {{name: production, url: \"http://127.0.0.1:18080\"}}
  resource_group: production
  verify:
    http: [{{url: \"http://127.0.0.1:18080/healthz\"}}]
    on_failure: rollback
{extra}"
    )
}

/// A server with project `demo` whose masked `HOOK_URL` is `hook`'s URL (when given), and an agent.
async fn app(b: Backend, hook: Option<&Recorder>, settings: Value) -> (App, Agent) {
    let app = spawn(b).await;
    let mut extra = settings;
    if let Some(h) = hook {
        extra["variables"] = json!([{"key": "HOOK_URL", "value": h.url, "masked": true}]);
    }
    app.project("demo", extra).await;
    let agent = app.register("agent", &[]).await;
    (app, agent)
}

/// Pushes commit `n` of `ci` and hands its job to `agent`; answers the job's spec.
async fn push_and_take(app: &App, agent: &Agent, ci: &str, n: usize) -> Value {
    let sha = app.commit(&[(".gitlab-ci.yml", ci), ("n", &n.to_string())]);
    let d = app.push_and_wait("demo", &sha).await;
    assert!(d["pipeline_id"].is_i64(), "{d}");
    app.take(agent, 5000).await.expect("the deploy job")
}

/// Finishes job `id` with `outcome` and `reason`, as an agent does.
async fn finish(app: &App, agent: &Agent, id: i64, outcome: &str, reason: Option<&str>) {
    send(
        app.agent_call(
            agent,
            Method::POST,
            &format!("/api/v1/agent/jobs/{id}/finish"),
        )
        .json(&json!({
            "outcome": outcome,
            "exit_code": if outcome == "success" { 0 } else { 1 },
            "failure_reason": reason,
            "coverage": null,
            "log_size": 0,
        })),
        200,
    )
    .await;
}

/// Deploys commit `n` of `ci` to its end (`outcome`, `reason`); answers the job's spec.
async fn deploy(
    app: &App,
    agent: &Agent,
    ci: &str,
    n: usize,
    outcome: &str,
    reason: Option<&str>,
) -> Value {
    let spec = push_and_take(app, agent, ci, n).await;
    finish(app, agent, id(&spec), outcome, reason).await;
    spec
}

/// Deploys commit `n` of `ci("")`, whose verification fails.
async fn failed_verification(app: &App, agent: &Agent, n: usize) -> Value {
    deploy(
        app,
        agent,
        &ci(""),
        n,
        "failed",
        Some("verification_failure"),
    )
    .await
}

fn id(spec: &Value) -> i64 {
    spec["job_id"].as_i64().unwrap()
}

/// The value of variable `key` of the spec's job.
fn var(spec: &Value, key: &str) -> Option<String> {
    spec["plan"]["jobs"][0]["variables"]
        .as_array()?
        .iter()
        .rev()
        .find(|v| v["key"] == key)
        .map(|v| v["value"].as_str().unwrap().to_string())
}

async fn store(app: &App) -> std::sync::Arc<dyn gantry_store::Store> {
    gantry_store::connect(&app.database_url).await.unwrap()
}

/// The deployment of job `job`.
async fn deployment_of(app: &App, job: i64) -> gantry_store::DeploymentRecord {
    store(app)
        .await
        .job_deployment(job)
        .await
        .unwrap()
        .expect("a deployment")
}

async fn a_failed_verification_rolls_back_at_once(b: Backend) {
    let hook = Recorder::start(0).await;
    let (app, agent) = app(b, Some(&hook), json!({})).await;
    let v1 = deploy(&app, &agent, &ci(""), 1, "success", None).await;
    // Version 2 has a rollback_script: it runs in place of version 1's script.
    let v2_ci = ci("  rollback_script: [helm rollback app]\n");
    let v2 = deploy(
        &app,
        &agent,
        &v2_ci,
        2,
        "failed",
        Some("verification_failure"),
    )
    .await;
    let (d1, d2) = (
        deployment_of(&app, id(&v1)).await,
        deployment_of(&app, id(&v2)).await,
    );
    assert_eq!(d2.status, DeploymentStatus::Failed);
    // The rollback is queued when the finish answers: no wait.
    let rb = app
        .take(&agent, 0)
        .await
        .expect("the rollback job, at once");
    assert_eq!(rb["pipeline_id"], v1["pipeline_id"], "{rb}");
    assert_eq!(rb["sha"], v1["sha"], "version 1's commit");
    assert_ne!(rb["sha"], v2["sha"]);
    assert_eq!(rb["attempt"], 2, "a new attempt of version 1's job");
    assert_eq!(rb["job"], "deploy");
    assert_eq!(var(&rb, "GANTRY_ROLLBACK").as_deref(), Some("true"));
    assert_eq!(var(&rb, "GANTRY_ROLLBACK_FROM"), Some(d2.id.to_string()));
    assert_eq!(var(&rb, "GANTRY_ROLLBACK_TO"), Some(d1.id.to_string()));
    assert_eq!(var(&rb, "GANTRY_DEPLOY_WEIGHT").as_deref(), Some("100"));
    let job = &rb["plan"]["jobs"][0];
    assert_eq!(job["script"], json!(["helm rollback app"]), "{job}");
    assert!(job["verify"].is_null(), "a rollback is not verified: {job}");
    let rd = deployment_of(&app, id(&rb)).await;
    assert_eq!(
        (rd.rollback_of, rd.triggered_by.as_str(), rd.sha.as_str()),
        (Some(d2.id), "rollback (automatic)", d1.sha.as_str())
    );
    assert_eq!(rd.status, DeploymentStatus::Running);
    app.run_job(&agent, id(&rb), "rolled back\n", "success")
        .await;
    let s = store(&app).await;
    let d2 = s.deployment(d2.id).await.unwrap().unwrap();
    assert_eq!(d2.status, DeploymentStatus::RolledBack);
    assert_eq!(d2.rolled_back_by, Some(rd.id));
    let rd = s.deployment(rd.id).await.unwrap().unwrap();
    assert_eq!(rd.status, DeploymentStatus::Success);
    assert_eq!(
        s.deployment(d1.id).await.unwrap().unwrap().status,
        DeploymentStatus::Success
    );
    // The notifications: version 2's failed deployment, then the rollback.
    let seen = hook.wait_for(2).await;
    let by = |event: &str| {
        seen.iter()
            .map(|(_, b)| b)
            .find(|b| b["event"] == event)
            .unwrap_or_else(|| panic!("no {event} in {seen:?}"))
            .clone()
    };
    let failed = by("deployment_failed");
    assert_eq!(failed["environment"], "production");
    assert_eq!(failed["failed_jobs"], json!(["deploy"]));
    assert_eq!(failed["commit"]["sha"], v2["sha"]);
    assert_eq!(failed["project"], "demo");
    let rolled = by("rollback");
    assert_eq!(rolled["environment"], "production");
    assert_eq!(
        rolled["rollback"],
        json!({"from": d2.id.to_string(), "to": d1.id.to_string()})
    );
    assert_eq!(rolled["failed_jobs"], json!([]));
    assert_eq!(rolled["commit"]["sha"], v1["sha"]);
    assert_eq!(rolled["pipeline"]["id"], v1["pipeline_id"]);
}
crate::both!(a_failed_verification_rolls_back_at_once);

async fn a_failed_rollback_is_reported_and_never_loops(b: Backend) {
    let hook = Recorder::start(0).await;
    let (app, agent) = app(b, Some(&hook), json!({})).await;
    let v1 = deploy(&app, &agent, &ci(""), 1, "success", None).await;
    let v2 = failed_verification(&app, &agent, 2).await;
    let rb = app.take(&agent, 0).await.expect("the rollback job");
    // Without a rollback_script, the rollback re-runs version 1's own script.
    assert_eq!(rb["plan"]["jobs"][0]["script"], json!(["./deploy.sh"]));
    // Even a failure reported as a verification's (a rollback has none) starts nothing more.
    finish(
        &app,
        &agent,
        id(&rb),
        "failed",
        Some("verification_failure"),
    )
    .await;
    assert!(
        app.take(&agent, 300).await.is_none(),
        "a failed rollback starts nothing"
    );
    let d2 = deployment_of(&app, id(&v2)).await;
    assert_eq!(d2.status, DeploymentStatus::Failed, "not rolled back");
    assert_eq!(d2.rolled_back_by, None);
    assert_eq!(
        deployment_of(&app, id(&rb)).await.status,
        DeploymentStatus::Failed
    );
    let seen = hook.wait_for(2).await;
    let rolled = seen
        .iter()
        .map(|(_, b)| b)
        .find(|b| b["event"] == "rollback")
        .expect("a rollback notification");
    assert_eq!(rolled["failed_jobs"], json!(["deploy"]), "{rolled}");
    assert_eq!(rolled["commit"]["sha"], v1["sha"]);
}
crate::both!(a_failed_rollback_is_reported_and_never_loops);

async fn a_first_deployment_that_fails_verification_has_nothing_to_roll_back_to(b: Backend) {
    let (app, agent) = app(b, None, json!({})).await;
    let v1 = failed_verification(&app, &agent, 1).await;
    assert!(
        app.take(&agent, 300).await.is_none(),
        "nothing to re-deploy"
    );
    // A script failure does not roll back either: only a failed verification does.
    deploy(&app, &agent, &ci(""), 2, "success", None).await;
    deploy(&app, &agent, &ci(""), 3, "failed", Some("script_failure")).await;
    assert!(app.take(&agent, 300).await.is_none(), "a script failure");
    assert_eq!(
        deployment_of(&app, id(&v1)).await.status,
        DeploymentStatus::Failed
    );
}
crate::both!(a_first_deployment_that_fails_verification_has_nothing_to_roll_back_to);

/// `POST .../environments/{env}/rollback` with `body` as `token`; answers the status and body.
async fn post_rollback(app: &App, env: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = app
        .request(
            Method::POST,
            &format!("/api/v1/projects/demo/environments/{env}/rollback"),
        )
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// A deploy job with no verification.
const PLAIN: &str = "
deploy:
  script: [./deploy.sh]
  environment: {name: production}
";

async fn the_api_rolls_back_and_says_why_not(b: Backend) {
    let (app, agent) = app(b, None, json!({})).await;
    let plain = PLAIN;
    let admin = crate::common::ADMIN;
    let (status, body) = post_rollback(&app, "production", admin, None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        body["error"],
        "project `demo` has no environment `production`"
    );
    let v1 = push_and_take(&app, &agent, plain, 1).await;
    let (status, body) = post_rollback(&app, "production", admin, None).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("is still running"),
        "{body}"
    );
    finish(&app, &agent, id(&v1), "success", None).await;
    let (status, body) = post_rollback(&app, "production", admin, None).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("has no successful deployment before"),
        "{body}"
    );
    let v2 = deploy(&app, &agent, plain, 2, "success", None).await;
    let (d1, d2) = (
        deployment_of(&app, id(&v1)).await,
        deployment_of(&app, id(&v2)).await,
    );
    let read_only = create_token(&app, "demo", true).await;
    let (status, body) = post_rollback(&app, "production", &read_only, None).await;
    assert_eq!(status, 403, "{body}");
    for to in [d2.id, d2.id + 1000] {
        let (status, body) =
            post_rollback(&app, "production", admin, Some(json!({"to": to}))).await;
        assert_eq!(status, 409, "to {to}: {body}");
    }
    // A project token that writes may roll back; `to` names the target.
    let writer = create_token(&app, "demo", false).await;
    let (status, body) =
        post_rollback(&app, "production", &writer, Some(json!({"to": d1.id}))).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["environment"], "production");
    assert_eq!(
        (body["from"].as_i64(), body["to"].as_i64()),
        (Some(d2.id), Some(d1.id))
    );
    let rb = app.take(&agent, 0).await.expect("the rollback job");
    assert_eq!(rb["job_id"], body["job_id"]);
    assert_eq!(rb["sha"], v1["sha"]);
    // The deployment says who asked for it: the token, by id and name.
    let by = deployment_of(&app, id(&rb)).await.triggered_by;
    assert!(
        by.starts_with("rollback by token ") && by.ends_with(" (ci)"),
        "{by}"
    );
    assert_eq!(var(&rb, "GANTRY_ROLLBACK_TO"), Some(d1.id.to_string()));
    // While it runs, the environment cannot be rolled back again.
    let (status, _) = post_rollback(&app, "production", admin, None).await;
    assert_eq!(status, 409);
    app.run_job(&agent, id(&rb), "ok\n", "success").await;
    let d2 = deployment_of(&app, id(&v2)).await;
    assert_eq!(d2.status, DeploymentStatus::RolledBack);
    // An environment whose name has a `/`.
    let review = "
deploy:
  script: [./deploy.sh]
  environment: {name: review/x}
";
    deploy(&app, &agent, review, 3, "success", None).await;
    deploy(&app, &agent, review, 4, "success", None).await;
    let (status, body) = post_rollback(&app, "review%2Fx", admin, Some(json!({}))).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["environment"], "review/x");
    let d = deployment_of(&app, body["job_id"].as_i64().unwrap()).await;
    assert_eq!(d.triggered_by, "rollback by admin");
}
crate::both!(the_api_rolls_back_and_says_why_not);

/// A rollback's attempt that an agent claims before the rollback records its deployment (the
/// attempt is queued, and agents woken, first) records who started it, from the attempt's
/// rollback: here the attempt is made through the store as `start` makes it, and never recorded.
async fn a_rollback_handed_out_first_records_who_started_it(b: Backend) {
    let (app, agent) = app(b, None, json!({})).await;
    let plain = PLAIN;
    let v1 = deploy(&app, &agent, plain, 1, "success", None).await;
    let v2 = deploy(&app, &agent, plain, 2, "success", None).await;
    let (d1, d2) = (
        deployment_of(&app, id(&v1)).await,
        deployment_of(&app, id(&v2)).await,
    );
    let s = store(&app).await;
    let p = s.pipeline(d1.pipeline_id).await.unwrap().unwrap();
    let job = p.jobs.iter().find(|j| j.id == d1.job_id).unwrap();
    let mut spec: Value = serde_json::from_str(&job.spec).unwrap();
    spec["rollback"] = json!({"from": d2.id, "to": d1.id, "by": "rollback by token 7 (ops)"});
    let attempt = gantry_store::NewJob {
        name: job.name.clone(),
        stage: job.stage.clone(),
        stage_index: job.stage_index,
        position: job.position,
        attempt: job.attempt + 1,
        status: gantry_api::JobStatus::Pending,
        when: "on_success".into(),
        allow_failure: job.allow_failure,
        needs: job.needs.clone(),
        tags: job.tags.clone(),
        resource_group: job.resource_group.clone(),
        interruptible: job.interruptible,
        spec: spec.to_string(),
        created_at: job.created_at + 1,
    };
    let changes = gantry_store::Changes {
        new_jobs: vec![attempt],
        jobs: vec![gantry_store::JobChange {
            id: job.id,
            retried: Some(true),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(s.apply(p.id, p.version, &changes).await.unwrap());
    let rb = app.take(&agent, 0).await.expect("the rollback job");
    let d = deployment_of(&app, id(&rb)).await;
    assert_eq!(
        (d.triggered_by.as_str(), d.rollback_of),
        ("rollback by token 7 (ops)", Some(d2.id))
    );
}
crate::both!(a_rollback_handed_out_first_records_who_started_it);

async fn project_settings_rules_notify_with_the_files(b: Backend) {
    let settings_hook = Recorder::start(0).await;
    let file_hook = Recorder::start(0).await;
    let app = spawn(b).await;
    // Invalid rules are refused, with where and why.
    let bad = send(
        app.post("/api/v1/projects").json(&json!({
            "name": "bad", "repo_url": "/srv/x.git",
            "notify": [{"on": ["deploy_done"], "webhook": {"url": "$U"}}],
        })),
        400,
    )
    .await;
    let e = crate::common::json_error(bad, "bad rules").await;
    assert!(
        e.starts_with("notify:4:7: `notify`: unknown event `deploy_done`"),
        "{e}"
    );
    app.project(
        "demo",
        json!({
            "variables": [
                {"key": "HOOK_URL", "value": settings_hook.url, "masked": true},
                {"key": "FILE_HOOK", "value": file_hook.url},
            ],
            "notify": [{"on": ["deployment_succeeded"], "webhook": {"url": "$HOOK_URL"}}],
        }),
    )
    .await;
    let agent = app.register("agent", &[]).await;
    let ci = "
notify:
  - on: [deployment_succeeded]
    webhook: {url: $FILE_HOOK}
deploy:
  script: [./deploy.sh]
  environment: {name: staging}
";
    let spec = deploy(&app, &agent, ci, 1, "success", None).await;
    for hook in [&settings_hook, &file_hook] {
        let seen = hook.wait_for(1).await;
        let body = &seen[0].1;
        assert_eq!(body["event"], "deployment_succeeded", "{body}");
        assert_eq!(body["environment"], "staging");
        assert_eq!(body["project"], "demo");
        assert_eq!(body["commit"]["sha"], spec["sha"]);
        assert_eq!(body["failed_jobs"], json!([]));
    }
    // The pipeline's own end notifies nobody: no rule asks for it.
    let s = store(&app).await;
    let p = spec["pipeline_id"].as_i64().unwrap();
    app.pipeline_status(p, "success").await;
    eventually(|| async {
        let all = s.notifications(p).await.unwrap();
        all.iter().all(|n| n.status == "sent").then_some(())
    })
    .await;
    assert_eq!(s.notifications(p).await.unwrap().len(), 2);
}
crate::both!(project_settings_rules_notify_with_the_files);

#[tokio::test]
async fn the_rollback_route_is_in_the_openapi_document() {
    let app = spawn(Backend::Sqlite).await;
    let doc = app.json("/api/v1/openapi.json").await;
    let route = &doc["paths"]["/api/v1/projects/{name}/environments/{env}/rollback"]["post"];
    let answers = route["responses"].as_object().expect("the route");
    for status in ["201", "403", "404", "409"] {
        assert!(answers.contains_key(status), "{status}: {route}");
    }
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["Rollback"].is_object(), "{schemas}");
    assert!(schemas["RollbackRequest"].is_object(), "{schemas}");
}

/// A rollback runs in its target's old pipeline without reopening it: whether it succeeds or
/// fails, that pipeline stays `success`, its commit gets no new status and it sends no pipeline
/// notification.
async fn a_rollback_leaves_its_target_pipeline_alone(b: Backend) {
    let (forge_url, posted) = crate::flow::recorder().await;
    let hook = Recorder::start(0).await;
    let forge =
        json!({"forge": {"kind": "github", "api_url": forge_url, "token": "t", "project": "o/r"}});
    let (app, agent) = app(b, Some(&hook), forge).await;
    let ci = ci("").replace(
        "on: [deployment_failed, rollback]",
        "on: [deployment_failed, rollback, pipeline_failed, pipeline_fixed]",
    );
    // The states posted for commit `sha`, once one of them is `last`.
    let states = |sha: Value, last: &'static str| {
        let posted = posted.clone();
        async move {
            let sha = sha.as_str().unwrap().to_owned();
            eventually(|| async {
                let s: Vec<Value> = posted
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(path, _, _)| path.ends_with(&sha))
                    .map(|(_, _, body)| body["state"].clone())
                    .collect();
                s.contains(&json!(last)).then_some(s)
            })
            .await
        }
    };
    let s = store(&app).await;
    for (n, outcome) in [(1, "success"), (4, "failed")] {
        let v1 = deploy(&app, &agent, &ci, n, "success", None).await;
        let own = states(v1["sha"].clone(), "success").await;
        let p1 = v1["pipeline_id"].as_i64().unwrap();
        let before = s.pipeline(p1).await.unwrap().unwrap();
        deploy(
            &app,
            &agent,
            &ci,
            n + 1,
            "failed",
            Some("verification_failure"),
        )
        .await;
        let rb = app.take(&agent, 0).await.expect("the rollback job");
        assert_eq!(rb["pipeline_id"], v1["pipeline_id"]);
        finish(&app, &agent, id(&rb), outcome, None).await;
        let after = s.pipeline(p1).await.unwrap().unwrap();
        assert_eq!(after.status, before.status, "{outcome}: not reopened");
        assert_eq!(after.finished_at, before.finished_at);
        // Commit statuses are posted in order: once the next pipeline's is, none is left for v1.
        let v3 = deploy(&app, &agent, &ci, n + 2, "success", None).await;
        states(v3["sha"].clone(), "success").await;
        assert_eq!(states(v1["sha"].clone(), "success").await, own, "{outcome}");
        let events: Vec<String> = s
            .notifications(p1)
            .await
            .unwrap()
            .into_iter()
            .map(|r| {
                serde_json::from_str::<Value>(&r.event).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert!(
            !events.iter().any(|e| e.starts_with("pipeline_")),
            "{outcome}: {events:?}"
        );
    }
}
crate::both!(a_rollback_leaves_its_target_pipeline_alone);

/// A rollback's attempt in a pipeline that still runs holds no job of it: when another job of its
/// stage succeeds while the rollback is queued, the next stage starts.
async fn a_queued_rollback_holds_no_job_of_its_pipeline(b: Backend) {
    let (app, agent) = app(b, None, json!({})).await;
    let more = "slow:\n  script: [make]\nafter:\n  stage: deploy\n  script: [make]\n";
    let first = push_and_take(&app, &agent, &ci(more), 1).await;
    let second = app.take(&agent, 5000).await.expect("the other job");
    let (v1, slow) = if first["job"] == "deploy" {
        (first, second)
    } else {
        (second, first)
    };
    finish(&app, &agent, id(&v1), "success", None).await;
    failed_verification(&app, &agent, 2).await;
    let rb = app.take(&agent, 0).await.expect("the rollback job");
    assert_eq!(rb["pipeline_id"], v1["pipeline_id"]);
    finish(&app, &agent, id(&slow), "success", None).await;
    let p = store(&app)
        .await
        .pipeline(v1["pipeline_id"].as_i64().unwrap())
        .await
        .unwrap()
        .unwrap();
    let after = p.jobs.iter().find(|j| j.name == "after").unwrap();
    assert_eq!(after.status, gantry_api::JobStatus::Pending);
}
crate::both!(a_queued_rollback_holds_no_job_of_its_pipeline);

async fn a_rollback_that_a_newer_deployment_superseded_does_not_run(b: Backend) {
    let (app, agent) = app(b, None, json!({})).await;
    let other = app.register("other", &["v3"]).await;
    let v1 = deploy(&app, &agent, &ci(""), 1, "success", None).await;
    let v2 = push_and_take(&app, &agent, &ci(""), 2).await;
    // Version 3 deploys while version 2 runs, on another agent.
    let v3_ci = "
deploy:
  script: [./deploy.sh]
  environment: {name: production}
  tags: [v3]
";
    let v3 = push_and_take(&app, &other, v3_ci, 3).await;
    // Version 2's verification fails: its rollback to version 1 is queued while version 3 runs.
    finish(
        &app,
        &agent,
        id(&v2),
        "failed",
        Some("verification_failure"),
    )
    .await;
    finish(&app, &other, id(&v3), "success", None).await;
    // The rollback's attempt would put version 1 over version 3: it fails instead.
    assert!(app.take(&agent, 0).await.is_none(), "the rollback ran");
    let (d1, d2, d3) = (
        deployment_of(&app, id(&v1)).await,
        deployment_of(&app, id(&v2)).await,
        deployment_of(&app, id(&v3)).await,
    );
    let s = store(&app).await;
    let all = s
        .deployments(
            d1.project_id,
            "production",
            gantry_store::Page {
                page: 1,
                per_page: 10,
            },
        )
        .await
        .unwrap()
        .items;
    let rd = all
        .iter()
        .find(|d| d.rollback_of == Some(d2.id))
        .expect("the rollback's deployment");
    assert_eq!(rd.status, DeploymentStatus::Failed);
    let job = s.job(rd.job_id).await.unwrap().unwrap();
    assert_eq!(job.failure_reason.as_deref(), Some("unknown_failure"));
    let log = String::from_utf8(s.read_log(rd.job_id, 0, 1000).await.unwrap()).unwrap();
    assert!(
        log.contains(&format!(
            "superseded: deployment {} is newer than the one this rollback replaces",
            d3.id
        )),
        "{log}"
    );
    let d2 = s.deployment(d2.id).await.unwrap().unwrap();
    assert_eq!(d2.status, DeploymentStatus::Failed, "not rolled back");
    assert_eq!(d2.rolled_back_by, None);
    assert_eq!(
        s.deployment(d3.id).await.unwrap().unwrap().status,
        DeploymentStatus::Success
    );
}
crate::both!(a_rollback_that_a_newer_deployment_superseded_does_not_run);

/// A server whose leases run out quickly, with project `demo` notifying `hook`, and an agent.
async fn short_leases(b: Backend, hook: &Recorder) -> (App, Agent) {
    let app = crate::common::spawn_with(b, |c| {
        c.lease_timeout = std::time::Duration::from_millis(1500);
    })
    .await;
    app.project(
        "demo",
        json!({"variables": [{"key": "HOOK_URL", "value": hook.url, "masked": true}]}),
    )
    .await;
    let agent = app.register("agent", &[]).await;
    (app, agent)
}

/// The notification bodies `hook` got of `event`.
fn events(seen: &[(u16, Value)], event: &str) -> Vec<Value> {
    seen.iter()
        .map(|(_, b)| b.clone())
        .filter(|b| b["event"] == event)
        .collect()
}

/// Asserts that the pipeline of job `spec` has a stored notification of `kind`.
async fn assert_stored(app: &App, spec: &Value, kind: &str) {
    let p = spec["pipeline_id"].as_i64().unwrap();
    let stored = store(app).await.notifications(p).await.unwrap();
    let want = format!(r#""kind":"{kind}""#);
    assert!(stored.iter().any(|n| n.event.contains(&want)), "{stored:?}");
}

async fn a_deploy_job_whose_lease_ran_out_is_notified_failed(b: Backend) {
    let hook = Recorder::start(0).await;
    let (app, agent) = short_leases(b, &hook).await;
    // The agent is lost mid-deploy: the lease reaper fails the job.
    let v1 = push_and_take(&app, &agent, &ci(""), 1).await;
    let seen = hook.wait_for(1).await;
    let failed = events(&seen, "deployment_failed");
    assert_eq!(failed.len(), 1, "{seen:?}");
    assert_eq!(failed[0]["environment"], "production");
    assert_eq!(failed[0]["failed_jobs"], json!(["deploy"]));
    assert_eq!(failed[0]["commit"]["sha"], v1["sha"]);
    assert_stored(&app, &v1, "deployment_failed").await;
    assert_eq!(
        deployment_of(&app, id(&v1)).await.status,
        DeploymentStatus::Failed
    );
}
crate::both!(a_deploy_job_whose_lease_ran_out_is_notified_failed);

async fn a_rollback_whose_lease_ran_out_is_reported_failed(b: Backend) {
    let hook = Recorder::start(0).await;
    let (app, agent) = short_leases(b, &hook).await;
    let v1 = deploy(&app, &agent, &ci(""), 1, "success", None).await;
    let v2 = failed_verification(&app, &agent, 2).await;
    // The agent is lost while it rolls back.
    let rb = app.take(&agent, 0).await.expect("the rollback job");
    let seen = hook.wait_for(2).await;
    let rolled = events(&seen, "rollback");
    assert_eq!(rolled.len(), 1, "{seen:?}");
    assert_eq!(rolled[0]["failed_jobs"], json!(["deploy"]), "{seen:?}");
    let d2 = deployment_of(&app, id(&v2)).await;
    let d1 = deployment_of(&app, id(&v1)).await;
    assert_eq!(
        rolled[0]["rollback"],
        json!({"from": d2.id.to_string(), "to": d1.id.to_string()})
    );
    assert_stored(&app, &rb, "rollback").await;
    assert_eq!(d2.status, DeploymentStatus::Failed, "not rolled back");
    assert_eq!(d2.rolled_back_by, None);
    assert_eq!(
        deployment_of(&app, id(&rb)).await.status,
        DeploymentStatus::Failed
    );
    // A lost rollback starts nothing more.
    assert!(app.take(&agent, 300).await.is_none());
}
crate::both!(a_rollback_whose_lease_ran_out_is_reported_failed);

async fn an_automatic_rollback_that_cannot_start_is_notified_failed(b: Backend) {
    let hook = Recorder::start(0).await;
    let (app, agent) = app(b, Some(&hook), json!({})).await;
    // The first deployment fails its verification: there is nothing to roll back to.
    let v1 = failed_verification(&app, &agent, 1).await;
    let seen = hook.wait_for(2).await;
    let rolled = events(&seen, "rollback");
    assert_eq!(rolled.len(), 1, "{seen:?}");
    let d1 = deployment_of(&app, id(&v1)).await;
    assert_eq!(rolled[0]["failed_jobs"], json!(["deploy"]));
    assert_eq!(
        rolled[0]["rollback"],
        json!({"from": d1.id.to_string(), "to": ""})
    );
    assert_eq!(events(&seen, "deployment_failed").len(), 1, "{seen:?}");
}
crate::both!(an_automatic_rollback_that_cannot_start_is_notified_failed);

/// Canceling the pipeline a rollback runs in cancels the rollback's attempt, as canceling a
/// pipeline cancels its jobs in GitLab: queued, it is canceled at once; running, its agent is
/// told to stop. Its deployment ends `canceled` and the `rollback` notification says it failed;
/// the old pipeline keeps its own status.
async fn canceling_its_pipeline_cancels_a_rollback(b: Backend) {
    let hook = Recorder::start(0).await;
    let (app, agent) = app(b, Some(&hook), json!({})).await;
    let s = store(&app).await;
    let v1 = deploy(&app, &agent, &ci(""), 1, "success", None).await;
    let p1 = v1["pipeline_id"].as_i64().unwrap();
    let cancel = format!("/api/v1/pipelines/{p1}/cancel");
    // Nothing runs in the old pipeline: there is nothing to cancel.
    send(app.post(&cancel), 409).await;
    // Queued.
    failed_verification(&app, &agent, 2).await;
    let body: Value = send(app.post(&cancel), 200).await.json().await.unwrap();
    assert_eq!(body["status"], "success", "{body}");
    assert!(app.take(&agent, 300).await.is_none(), "the rollback ran");
    let p = s.pipeline(p1).await.unwrap().unwrap();
    let queued = p.jobs.iter().find(|j| j.attempt == 2).unwrap().clone();
    assert_eq!(queued.status, gantry_api::JobStatus::Canceled);
    assert_eq!(
        deployment_of(&app, queued.id).await.status,
        DeploymentStatus::Canceled
    );
    let seen = hook.wait_for(2).await;
    let rolled = events(&seen, "rollback");
    assert_eq!(rolled.len(), 1, "{seen:?}");
    assert_eq!(rolled[0]["failed_jobs"], json!(["deploy"]), "{seen:?}");
    // Running: the agent is told to stop, and finishes it as canceled.
    failed_verification(&app, &agent, 3).await;
    let rb = app.take(&agent, 0).await.expect("the rollback job");
    assert_eq!(rb["pipeline_id"], p1);
    send(app.post(&cancel), 200).await;
    // Canceled again while it stops: nothing more to do, the pipeline as it is.
    let body: Value = send(app.post(&cancel), 200).await.json().await.unwrap();
    assert_eq!(body["status"], "success", "{body}");
    let beat = send(
        app.agent_call(
            &agent,
            Method::POST,
            &format!("/api/v1/agent/jobs/{}/heartbeat", id(&rb)),
        ),
        200,
    )
    .await;
    let beat: Value = beat.json().await.unwrap();
    assert_eq!(beat["cancel"], true, "{beat}");
    app.run_job(&agent, id(&rb), "stopped\n", "canceled").await;
    assert_eq!(
        deployment_of(&app, id(&rb)).await.status,
        DeploymentStatus::Canceled
    );
    let seen = hook.wait_for(4).await;
    let rolled = events(&seen, "rollback");
    assert_eq!(rolled.len(), 2, "{seen:?}");
    assert_eq!(rolled[1]["failed_jobs"], json!(["deploy"]), "{seen:?}");
    let p = s.pipeline(p1).await.unwrap().unwrap();
    assert_eq!(p.status, gantry_api::PipelineStatus::Success);
}
crate::both!(canceling_its_pipeline_cancels_a_rollback);

/// A rollback's attempt is no artifact source of its pipeline: a job of the old pipeline retried
/// after the rollback takes the artifacts of the deploy job's own attempt, as the attempt that
/// counts in the pipeline, not those the rollback uploaded.
async fn a_later_job_does_not_take_a_rollbacks_artifacts(b: Backend) {
    let (app, agent) = app(b, None, json!({})).await;
    let more = "after:\n  stage: deploy\n  needs: [deploy]\n  script: [make]\n";
    let v1 = push_and_take(&app, &agent, &ci(more), 1).await;
    let tar = crate::common::tar_of;
    app.upload_artifacts(&agent, id(&v1), tar("out", b"v1"))
        .await;
    finish(&app, &agent, id(&v1), "success", None).await;
    let after = app.take(&agent, 5000).await.expect("the job after");
    assert_eq!(after["job"], "after");
    assert_eq!(after["dependencies"][0]["job_id"], v1["job_id"], "{after}");
    finish(&app, &agent, id(&after), "success", None).await;
    // Version 2 fails its verification: version 1's job is re-deployed, with artifacts of its own.
    failed_verification(&app, &agent, 2).await;
    let rb = app.take(&agent, 0).await.expect("the rollback job");
    assert_eq!(rb["pipeline_id"], v1["pipeline_id"]);
    app.upload_artifacts(&agent, id(&rb), tar("out", b"rollback"))
        .await;
    finish(&app, &agent, id(&rb), "success", None).await;
    let retried = send(app.post(&format!("/api/v1/jobs/{}/retry", id(&after))), 201).await;
    let retried: Value = retried.json().await.unwrap();
    let again = app.take(&agent, 5000).await.expect("the retried job");
    assert_eq!(again["job_id"], retried["id"]);
    let deps = &again["dependencies"];
    assert_eq!(deps.as_array().map(Vec::len), Some(1), "{deps}");
    assert_eq!(deps[0]["job_id"], v1["job_id"], "{deps}");
}
crate::both!(a_later_job_does_not_take_a_rollbacks_artifacts);
