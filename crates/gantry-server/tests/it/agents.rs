//! Agents' credentials and limits: revocation, the registration token's rotation, project and
//! protected-ref scopes, and the per-job log limit (issue 16, findings 9 and 6).

use reqwest::Method;
use serde_json::{Value, json};

use crate::both;
use crate::common::{
    ADMIN, Agent, App, Backend, REGISTRATION, git, send, spawn, spawn_with, text_of,
};

const CI: &str = "build:\n  script: [echo hi]\n";

impl App {
    /// Registers an agent with extra fields in the body; answers the status and the body.
    async fn register_with(&self, token: &str, extra: Value) -> (u16, Value) {
        self.register_at(&self.url, token, extra).await
    }

    /// [`App::register_with`] on the server at `url`.
    async fn register_at(&self, url: &str, token: &str, extra: Value) -> (u16, Value) {
        let mut body = json!({
            "token": token, "name": "scoped", "executor": "shell", "concurrency": 1,
            "version": "test",
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = self
            .client
            .post(format!("{url}/api/v1/agents/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A push of `sha` to `branch` of `project`, processed; answers its pipeline's id.
    async fn pipeline_of_push(&self, project: &str, branch: &str, sha: &str) -> i64 {
        let r = self.push(project, branch, sha).await;
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
        let accepted: Value = r.json().await.unwrap();
        let d = self
            .delivery(project, accepted["id"].as_i64().unwrap())
            .await;
        assert_eq!(d["status"], "created", "{d}");
        let id = d["pipeline_id"].as_i64().unwrap();
        // Its first job is queued once the pipeline has advanced, which may come just after.
        for _ in 0..500 {
            let p = self.json(&format!("/api/v1/pipelines/{id}")).await;
            if p["jobs"][0]["status"] != "created" {
                return id;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("pipeline {id} never queued its job")
    }

    async fn agent_status(&self, agent: &Agent, method: Method, path: &str) -> u16 {
        let mut req = self.agent_call(agent, method.clone(), path);
        if path.ends_with("/log?offset=0") {
            req = req.body("x");
        } else if method == Method::POST {
            req = req.json(&json!({"outcome": "success", "exit_code": 0, "failure_reason": null, "coverage": null, "log_size": 0}));
        }
        req.send().await.unwrap().status().as_u16()
    }
}

/// Agent `id` from the admin's list.
async fn agent_id(app: &App, name: &str) -> i64 {
    let list = app.json("/api/v1/agents").await;
    list.as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .and_then(|a| a["id"].as_i64())
        .unwrap()
}

/// The admin's agent list shows each agent's running jobs (none once they finish) and the
/// protocol version it said at registration, or in a later job request.
async fn agents_show_their_jobs_and_protocol(b: Backend) {
    let app = spawn(b).await;
    let sha = app.commit(&[(".gitlab-ci.yml", CI)]);
    app.project("demo", json!({})).await;
    let (status, body) = app
        .register_with(REGISTRATION, json!({"name": "busy", "protocol": 2}))
        .await;
    assert_eq!(status, 201, "{body}");
    let agent = Agent {
        token: body["token"].as_str().unwrap().to_string(),
    };
    app.register("idle", &[]).await;
    let listed = |list: &Value, name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
            .unwrap()
    };
    let list = app.json("/api/v1/agents").await;
    assert_eq!(listed(&list, "busy")["protocol"], 2, "{list}");
    assert_eq!(listed(&list, "busy")["jobs"], json!([]), "{list}");
    assert_eq!(listed(&list, "idle")["protocol"], 1, "{list}");

    let pipeline = app.pipeline_of_push("demo", "main", &sha).await;
    let r = send(
        app.agent_call(
            &agent,
            Method::POST,
            "/api/v1/agent/jobs/request?wait_ms=5000",
        )
        .json(&json!({"running": [], "protocol": 3})),
        200,
    )
    .await;
    let job: Value = r.json().await.unwrap();
    let job_id = job["job_id"].as_i64().unwrap();
    let list = app.json("/api/v1/agents").await;
    let busy = listed(&list, "busy");
    assert_eq!(busy["protocol"], 3, "the request said it: {list}");
    let jobs = busy["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{list}");
    assert_eq!(jobs[0]["id"], job_id);
    assert_eq!(jobs[0]["name"], "build");
    assert_eq!(jobs[0]["pipeline_id"], pipeline);
    assert_eq!(jobs[0]["project"], "demo");
    assert!(
        jobs[0]["claimed_at"].as_str().unwrap().ends_with('Z'),
        "{list}"
    );
    assert_eq!(listed(&list, "idle")["jobs"], json!([]), "{list}");

    app.run_job(&agent, job_id, "hi\n", "success").await;
    let list = app.json("/api/v1/agents").await;
    assert_eq!(listed(&list, "busy")["jobs"], json!([]), "{list}");
    // A request that does not say its protocol keeps the recorded one.
    assert!(app.take(&agent, 0).await.is_none());
    let list = app.json("/api/v1/agents").await;
    assert_eq!(listed(&list, "busy")["protocol"], 3, "{list}");

    // The OpenAPI document describes both.
    let doc = app.json("/api/v1/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    let agent = &schemas["Agent"]["properties"];
    assert_eq!(
        agent["jobs"]["items"]["$ref"], "#/components/schemas/AgentJob",
        "{agent}"
    );
    assert!(agent["protocol"].is_object(), "{agent}");
    assert!(schemas["AgentJob"]["properties"]["claimed_at"].is_object());
}
both!(agents_show_their_jobs_and_protocol);

/// A revoked agent gets `401` on every call, on this server and on another one sharing the store
/// (which had already authenticated it), and its running job fails as a lost agent's at once.
async fn revoked_agent_is_refused_everywhere(b: Backend) {
    let app = spawn(b).await;
    let other = gantry_server::serve(app.config.clone()).await.unwrap();
    let other_url = other.url();
    let sha = app.commit(&[(".gitlab-ci.yml", CI)]);
    app.project("demo", json!({})).await;
    let agent = app.register("doomed", &[]).await;
    let id = agent_id(&app, "doomed").await;
    let pipeline = app.pipeline_of_push("demo", "main", &sha).await;
    let job = app.take(&agent, 5000).await.expect("a job");
    let job_id = job["job_id"].as_i64().unwrap();
    git(&app.repo, &["branch", "-f", "second"]);
    let sha2 = sha.clone();
    // The other server knows the agent (it has served a call of it).
    let beat = app
        .client
        .post(format!("{other_url}/api/v1/agent/jobs/{job_id}/heartbeat"))
        .bearer_auth(&agent.token)
        .send()
        .await
        .unwrap();
    assert_eq!(beat.status(), 200);

    // A long poll held when the agent is revoked gets no job that comes after.
    let polling = {
        let (client, url, token) = (app.client.clone(), app.url.clone(), agent.token.clone());
        tokio::spawn(async move {
            client
                .post(format!("{url}/api/v1/agent/jobs/request?wait_ms=3000"))
                .bearer_auth(token)
                .json(&json!({"running": [job_id]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    // (Only so that the poll is most likely held by then: either order must end without a job.)
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // No token cannot revoke; the admin can.
    send(
        app.request(Method::DELETE, &format!("/api/v1/agents/{id}")),
        401,
    )
    .await;
    send(
        app.request(Method::DELETE, &format!("/api/v1/agents/{id}"))
            .bearer_auth(ADMIN),
        204,
    )
    .await;
    send(
        app.request(Method::DELETE, &format!("/api/v1/agents/{id}"))
            .bearer_auth(ADMIN),
        404,
    )
    .await;

    // A job queued now wakes the held poll, which must not take it.
    let second = app.pipeline_of_push("demo", "second", &sha2).await;
    assert_ne!(
        polling.await.unwrap(),
        200,
        "a revoked agent's held poll took a job"
    );

    let calls = [
        (Method::POST, "/api/v1/agent/jobs/request".to_string()),
        (
            Method::POST,
            format!("/api/v1/agent/jobs/{job_id}/heartbeat"),
        ),
        (
            Method::PUT,
            format!("/api/v1/agent/jobs/{job_id}/log?offset=0"),
        ),
        (Method::POST, format!("/api/v1/agent/jobs/{job_id}/finish")),
        (
            Method::PUT,
            format!("/api/v1/agent/jobs/{job_id}/artifacts"),
        ),
        (Method::GET, format!("/api/v1/agent/jobs/{job_id}/source")),
    ];
    for (method, path) in &calls {
        assert_eq!(
            app.agent_status(&agent, method.clone(), path).await,
            401,
            "{method} {path}"
        );
        let r = app
            .client
            .request(method.clone(), format!("{other_url}{path}"))
            .bearer_auth(&agent.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} on the other server");
    }
    // The job failed as a lost agent's, without waiting for its lease.
    let p = app.pipeline(second).await;
    assert_eq!(p["jobs"][0]["status"], "pending", "{p}");
    let p = app.pipeline_status(pipeline, "failed").await;
    let j = &p["jobs"][0];
    assert_eq!(j["status"], "failed", "{p}");
    assert_eq!(j["failure_reason"], "runner_system_failure", "{p}");
    assert!(
        !app.json("/api/v1/agents")
            .await
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == id)
    );
    other.shutdown().await.unwrap();
}
both!(revoked_agent_is_refused_everywhere);

/// A rotated registration token replaces the old one on every server; agents registered before
/// keep working.
async fn registration_token_rotates(b: Backend) {
    let app = spawn(b).await;
    let other = gantry_server::serve(app.config.clone()).await.unwrap();
    let before = app.register("before", &[]).await;
    send(
        app.request(Method::POST, "/api/v1/agents/registration-token"),
        401,
    )
    .await;
    let r = send(app.post("/api/v1/agents/registration-token"), 201).await;
    let new: Value = r.json().await.unwrap();
    let new = new["token"].as_str().unwrap().to_string();
    assert_ne!(new, REGISTRATION);

    let (status, _) = app.register_with(REGISTRATION, json!({})).await;
    assert_eq!(status, 401, "the old token still registers");
    let other_url = other.url();
    let (status, _) = app.register_at(&other_url, REGISTRATION, json!({})).await;
    assert_eq!(
        status, 401,
        "the old token still registers on the other server"
    );
    let (status, _) = app.register_at(&other_url, &new, json!({})).await;
    assert_eq!(status, 201);
    let (status, _) = app.register_with(&new, json!({})).await;
    assert_eq!(status, 201);
    // The agent registered with the old token keeps working.
    assert!(app.take(&before, 0).await.is_none());
    other.shutdown().await.unwrap();
}
both!(registration_token_rotates);

/// An agent registered for some projects never gets another project's job; one registered for
/// protected refs only never gets a job of an unprotected ref; an unscoped agent gets any.
async fn scoped_agents_take_only_their_jobs(b: Backend) {
    let app = spawn(b).await;
    let sha = app.commit(&[(".gitlab-ci.yml", CI)]);
    app.project("mine", json!({})).await;
    app.project("theirs", json!({})).await;
    let (status, body) = app
        .register_with(REGISTRATION, json!({"projects": ["nope"]}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app
        .register_with(REGISTRATION, json!({"projects": ["mine"]}))
        .await;
    assert_eq!(status, 201, "{body}");
    let mine_only = Agent {
        token: body["token"].as_str().unwrap().to_string(),
    };
    let (status, body) = app
        .register_with(REGISTRATION, json!({"protected_only": true}))
        .await;
    assert_eq!(status, 201, "{body}");
    let protected_only = Agent {
        token: body["token"].as_str().unwrap().to_string(),
    };

    // An unprotected branch of its project: the protected-only agent does not take the job, the
    // project agent does.
    git(&app.repo, &["branch", "-f", "feature"]);
    let mine_feature = app.pipeline_of_push("mine", "feature", &sha).await;
    assert!(app.take(&protected_only, 0).await.is_none());
    let job = app.take(&mine_only, 0).await.expect("the project's job");
    assert_eq!(job["pipeline_id"], mine_feature);
    // Another project's unprotected branch: neither scoped agent takes it.
    git(&app.repo, &["branch", "-f", "other"]);
    let theirs_other = app.pipeline_of_push("theirs", "other", &sha).await;
    assert!(app.take(&mine_only, 0).await.is_none());
    assert!(app.take(&protected_only, 0).await.is_none());
    // Another project's default branch, protected: the protected-only agent takes it, though
    // an older job waits; the project agent does not.
    let theirs_main = app.pipeline_of_push("theirs", "main", &sha).await;
    assert!(app.take(&mine_only, 0).await.is_none());
    let job = app.take(&protected_only, 0).await.expect("a protected job");
    assert_eq!(job["pipeline_id"], theirs_main);
    // An unscoped agent takes any job.
    let anyone = app.register("anyone", &[]).await;
    let job = app.take(&anyone, 0).await.expect("any job");
    assert_eq!(job["pipeline_id"], theirs_other);
}
both!(scoped_agents_take_only_their_jobs);

/// Past `max_job_log`, the stored log ends with a line saying it was cut, later chunks are taken
/// and dropped (`truncated`), and the job finishes normally.
async fn log_is_cut_at_the_limit(b: Backend) {
    let app = spawn_with(b, |c| c.max_job_log = 1000).await;
    let sha = app.commit(&[(".gitlab-ci.yml", CI)]);
    app.project("demo", json!({})).await;
    let agent = app.register("a", &[]).await;
    let pipeline = app.pipeline_of_push("demo", "main", &sha).await;
    let job = app.take(&agent, 5000).await.expect("a job");
    let id = job["job_id"].as_i64().unwrap();
    let put = |offset: usize, bytes: Vec<u8>| {
        app.agent_call(
            &agent,
            Method::PUT,
            &format!("/api/v1/agent/jobs/{id}/log?offset={offset}"),
        )
        .body(bytes)
        .send()
    };
    let r = put(0, vec![b'a'; 600]).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"size": 600}));
    let r = put(600, vec![b'b'; 600]).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"size": 1200, "truncated": true})
    );
    // Resent, and later chunks: taken, not stored.
    for (offset, n) in [(600, 600), (1200, 5000), (6200, 100_000)] {
        let r = put(offset, vec![b'c'; n]).await.unwrap();
        assert_eq!(r.status(), 200);
        let ack: Value = r.json().await.unwrap();
        assert_eq!(ack["truncated"], true, "{ack}");
    }
    let log = text_of(app.get(&format!("/api/v1/jobs/{id}/log"))).await;
    let line = "\n[gantry] log truncated at 1000 bytes: the job's log reached the server's \
                max_job_log; the job goes on, and its further output is not kept\n";
    assert_eq!(log, format!("{}{}{line}", "a".repeat(600), "b".repeat(400)));
    // The job finishes with the size the agent wrote.
    send(
        app.agent_call(
            &agent,
            Method::POST,
            &format!("/api/v1/agent/jobs/{id}/finish"),
        )
        .json(
            &json!({"outcome": "success", "exit_code": 0, "failure_reason": null,
            "coverage": null, "log_size": 106_200}),
        ),
        200,
    )
    .await;
    let p = app.pipeline_status(pipeline, "success").await;
    assert_eq!(p["jobs"][0]["status"], "success");
}
both!(log_is_cut_at_the_limit);
