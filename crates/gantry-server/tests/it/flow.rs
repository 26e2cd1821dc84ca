//! Pipelines from events, the agent protocol by hand, leases, cancel / retry / play, the read API.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use reqwest::Method;
use serde_json::{Value, json};

use crate::both;
use crate::common::{
    Agent, App, Backend, eventually, json_error, send, send_why, spawn, spawn_with, tar_of, text_of,
};

const TWO_STAGES: &str = "\
stages: [build, test]
variables:
  GREETING: hello
build:
  stage: build
  script: [echo build]
  artifacts:
    paths: [out/]
test:
  stage: test
  script: [echo test]
";

fn statuses(p: &Value) -> Vec<(String, String)> {
    p["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["name"].as_str().unwrap().to_string(),
                j["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn push_creates_a_pipeline_that_agents_run(b: Backend) {
    let app = spawn(b).await;
    let sha = app.commit(&[(".gitlab-ci.yml", TWO_STAGES)]);
    app.project(
        "demo",
        json!({"variables": [{"key": "DEPLOY_TOKEN", "value": "hunter2-secret", "masked": true}]}),
    )
    .await;
    let d = app.push_and_wait("demo", &sha).await;
    assert_eq!(d["status"], "created", "{d}");
    let pid = d["pipeline_id"].as_i64().unwrap();
    let p = app.pipeline_status(pid, "pending").await;
    assert_eq!(p["sha"], sha);
    assert_eq!(p["ref"], "main");
    assert_eq!(p["source"], "push");
    assert_eq!(
        statuses(&p),
        vec![
            ("build".into(), "pending".into()),
            ("test".into(), "created".into())
        ]
    );

    let agent = app.register("agent-1", &[]).await;
    let spec = app.take(&agent, 5000).await.expect("a job");
    assert_eq!(spec["job"], "build");
    assert_eq!(spec["sha"], sha);
    assert_eq!(spec["pipeline_id"], pid);
    let job_id = spec["job_id"].as_i64().unwrap();
    let vars: Vec<Value> = spec["plan"]["jobs"][0]["predefined"]
        .as_array()
        .unwrap()
        .iter()
        .chain(spec["plan"]["predefined"].as_array().unwrap())
        .cloned()
        .collect();
    let get = |k: &str| {
        vars.iter()
            .find(|v| v["key"] == k)
            .map(|v| v["value"].clone())
    };
    assert_eq!(get("CI_JOB_ID"), Some(json!(job_id.to_string())));
    assert_eq!(get("CI_PIPELINE_SOURCE"), Some(json!("push")));
    assert_eq!(get("CI_COMMIT_BRANCH"), Some(json!("main")));
    assert_eq!(get("GANTRY_TRACE_ID"), Some(p["trace_id"].clone()));
    let masked = spec["plan"]["cli_variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["key"] == "DEPLOY_TOKEN")
        .expect("the project variable is handed to the agent");
    assert_eq!(masked["masked"], true);
    assert_eq!(
        masked["value"], "hunter2-secret",
        "the job still gets the value"
    );
    assert_eq!(spec["plan"]["jobs"][0]["retry"]["max"], 0);
    // The pipeline's stored row holds no plaintext copy of the masked value (issue 16, finding 8).
    let store = gantry_store::connect(&app.database_url).await.unwrap();
    let row = store.pipeline(pid).await.unwrap().unwrap();
    assert!(!row.spec.contains("hunter2-secret"), "{}", row.spec);
    assert!(row.spec.contains("DEPLOY_TOKEN"), "{}", row.spec);
    for j in &row.jobs {
        assert!(!j.spec.contains("hunter2-secret"), "{}", j.spec);
    }

    // The pipeline runs.
    let p = app.pipeline_status(pid, "running").await;
    assert_eq!(p["jobs"][0]["status"], "running");
    assert_eq!(p["jobs"][0]["agent"], "agent-1");

    // Source: a tar of the commit.
    let r = send(
        app.agent_call(
            &agent,
            Method::GET,
            &format!("/api/v1/agent/jobs/{job_id}/source"),
        ),
        200,
    )
    .await;
    let bytes = r.bytes().await.unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&".gitlab-ci.yml".to_string()), "{names:?}");

    // Heartbeat.
    let r = send(
        app.agent_call(
            &agent,
            Method::POST,
            &format!("/api/v1/agent/jobs/{job_id}/heartbeat"),
        ),
        200,
    )
    .await;
    assert_eq!(r.json::<Value>().await.unwrap()["cancel"], false);

    // Logs: appended by offset, a resent chunk is not doubled, a gap is 416.
    let log = |offset: usize, body: &'static str| {
        app.agent_call(
            &agent,
            Method::PUT,
            &format!("/api/v1/agent/jobs/{job_id}/log?offset={offset}"),
        )
        .body(body)
        .send()
    };
    let r = log(0, "line one\n").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["size"], 9);
    let r = log(0, "line one\n").await.unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["size"],
        9,
        "a resent chunk is not doubled"
    );
    let r = log(9, "line two\n").await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["size"], 18);
    let r = log(100, "gap\n").await.unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.json::<Value>().await.unwrap()["size"], 18);

    // Finishing before the server holds the whole log is refused.
    let finish = |log_size: i64| {
        app.agent_call(&agent, Method::POST, &format!("/api/v1/agent/jobs/{job_id}/finish"))
            .json(&json!({"outcome": "success", "exit_code": 0, "failure_reason": null, "coverage": null, "log_size": log_size}))
            .send()
    };
    assert_eq!(finish(50).await.unwrap().status(), 409);

    // Artifacts: a tar, checked.
    let evil = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        let name = b"../escape";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        b.into_inner().unwrap()
    };
    send_why(
        app.agent_call(
            &agent,
            Method::PUT,
            &format!("/api/v1/agent/jobs/{job_id}/artifacts"),
        )
        .body(evil),
        400,
        "zip-slip is refused",
    )
    .await;
    app.upload_artifacts(&agent, job_id, tar_of("out/result.txt", b"42"))
        .await;

    let r = finish(18).await.unwrap();
    assert_eq!(r.status(), 200);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["status"], "success");

    // The next stage is queued; its spec names the build job as a dependency with artifacts.
    let spec2 = app.take(&agent, 5000).await.expect("the test job");
    assert_eq!(spec2["job"], "test");
    let test_id = spec2["job_id"].as_i64().unwrap();
    let deps = spec2["dependencies"].as_array().unwrap();
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0]["name"], "build");
    assert_eq!(deps[0]["has_artifacts"], true);
    let r = dependency_artifacts(&app, &agent, test_id, job_id).await;
    assert_eq!(
        r.bytes().await.unwrap().to_vec(),
        tar_of("out/result.txt", b"42")
    );
    // The finished job's calls are refused now: its lease is over.
    let r = log(18, "late\n").await.unwrap();
    assert_eq!(r.status(), 409);

    app.run_job(&agent, test_id, "testing\n", "success").await;
    let p = app.pipeline_status(pid, "success").await;
    assert!(p["finished_at"].is_string());

    // The read API.
    let j = app.json(&format!("/api/v1/jobs/{job_id}")).await;
    for k in ["created_at", "queued_at", "started_at", "finished_at"] {
        let t = j[k].as_str().unwrap_or_else(|| panic!("{k} in {j}"));
        assert_eq!(t.len(), 24, "{k}: {t}");
        assert!(t.ends_with('Z') && t.as_bytes()[19] == b'.', "{k}: {t}");
    }
    assert_eq!(j["agent"], "agent-1");
    assert_eq!(j["log_size"], 18);
    assert_eq!(j["has_artifacts"], true);
    let r = send(app.get(&format!("/api/v1/jobs/{job_id}/log")), 200).await;
    assert_eq!(r.text().await.unwrap(), "line one\nline two\n");
    let r = send(
        app.get(&format!("/api/v1/jobs/{job_id}/log"))
            .header("Range", "bytes=9-"),
        206,
    )
    .await;
    assert_eq!(r.headers()["content-range"], "bytes 9-17/18");
    assert_eq!(r.text().await.unwrap(), "line two\n");
    send(
        app.get(&format!("/api/v1/jobs/{job_id}/log"))
            .header("Range", "bytes=500-"),
        416,
    )
    .await;
    send(app.get(&format!("/api/v1/jobs/{job_id}/artifacts")), 200).await;
    send(app.get(&format!("/api/v1/jobs/{test_id}/artifacts")), 404).await;

    // The live stream replays the log of a finished job, then ends.
    let text = text_of(app.get(&format!("/api/v1/jobs/{job_id}/log/stream"))).await;
    assert!(text.contains("event: log"), "{text}");
    assert!(text.contains("line one\\nline two\\n"), "{text}");
    assert!(text.contains("event: end"), "{text}");

    // The masked value appears in no answer.
    for path in [
        "/api/v1/projects/demo".to_string(),
        format!("/api/v1/pipelines/{pid}"),
        format!("/api/v1/jobs/{job_id}"),
        "/api/v1/projects/demo/pipelines".to_string(),
    ] {
        let text = text_of(app.get(&path)).await;
        assert!(!text.contains("hunter2-secret"), "{path}: {text}");
    }
    let agents = app.json("/api/v1/agents").await;
    assert_eq!(agents[0]["name"], "agent-1");
    assert_eq!(agents[0]["online"], true);

    let metrics = text_of(app.request(Method::GET, "/metrics")).await;
    assert!(
        metrics.contains("gantry_jobs_total{status=\"success\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gantry_pipelines_total{status=\"success\"} 1"),
        "{metrics}"
    );
}
both!(push_creates_a_pipeline_that_agents_run);

async fn invalid_configuration_fails_the_pipeline(b: Backend) {
    let app = spawn(b).await;
    let sha = app.commit(&[(".gitlab-ci.yml", "job:\n  script: [echo]\n  stage: nope\n")]);
    app.project("demo", json!({})).await;
    let d = app.push_and_wait("demo", &sha).await;
    let p = app.pipeline(d["pipeline_id"].as_i64().unwrap()).await;
    assert_eq!(p["status"], "failed");
    let e = &p["errors"][0];
    assert_eq!(e["file"], ".gitlab-ci.yml");
    assert_eq!(e["line"], 3, "{p}");
    assert!(e["column"].as_u64().unwrap() > 0);
    assert!(e["message"].as_str().unwrap().contains("nope"), "{e}");
    assert!(p["jobs"].as_array().unwrap().is_empty());

    // Broken YAML too.
    let sha = app.commit(&[(".gitlab-ci.yml", "job: [unclosed\n")]);
    let d = app.push_and_wait("demo", &sha).await;
    let p = app.pipeline(d["pipeline_id"].as_i64().unwrap()).await;
    assert_eq!(p["status"], "failed");
    assert!(p["errors"][0]["line"].as_u64().unwrap() >= 1);
}
both!(invalid_configuration_fails_the_pipeline);

async fn manual_and_skipped(b: Backend) {
    let app = spawn(b).await;
    app.project("demo", json!({})).await;
    let sha = app.commit(&[(
        ".gitlab-ci.yml",
        "deploy:\n  script: [echo]\n  when: manual\n",
    )]);
    let d = app.push_and_wait("demo", &sha).await;
    let pid = d["pipeline_id"].as_i64().unwrap();
    let p = app.pipeline_status(pid, "manual").await;
    assert_eq!(statuses(&p), vec![("deploy".into(), "manual".into())]);
    // Play it.
    let job_id = p["jobs"][0]["id"].as_i64().unwrap();
    let r = send(app.post(&format!("/api/v1/jobs/{job_id}/play")), 200).await;
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "pending");
    send_why(
        app.post(&format!("/api/v1/jobs/{job_id}/play")),
        409,
        "only a manual job is played",
    )
    .await;

    // Nothing survives the rules: no pipeline, the delivery says why.
    let sha = app.commit(&[(
        ".gitlab-ci.yml",
        "job:\n  script: [echo]\n  rules:\n    - if: $CI_COMMIT_BRANCH == \"release\"\n",
    )]);
    let d = app.push_and_wait("demo", &sha).await;
    assert_eq!(d["status"], "skipped", "{d}");
    assert!(d["pipeline_id"].is_null());
    assert!(d["reason"].as_str().unwrap().contains("rules"), "{d}");
    let sha = app.commit(&[(
        ".gitlab-ci.yml",
        "workflow:\n  rules:\n    - if: $CI_PIPELINE_SOURCE == \"schedule\"\njob:\n  script: [echo]\n",
    )]);
    let d = app.push_and_wait("demo", &sha).await;
    assert_eq!(d["status"], "skipped", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("workflow"), "{d}");
}
both!(manual_and_skipped);

async fn lease_expiry_retries_the_job(b: Backend) {
    let app = spawn_with(b, |c| c.lease_timeout = Duration::from_millis(800)).await;
    app.project("demo", json!({})).await;
    let pid = app
        .push_ci("job:\n  script: [echo]\n  retry:\n    max: 1\n    when: runner_system_failure\n")
        .await;
    let agent = app.register("dies", &[]).await;
    let spec = app.take(&agent, 5000).await.unwrap();
    let first = spec["job_id"].as_i64().unwrap();
    // The agent goes silent. The lease runs out: the job fails and a new attempt is queued.
    let p = eventually(|| async {
        let p = app.pipeline(pid).await;
        (p["jobs"][0]["attempt"] == 2 && p["jobs"][0]["status"] == "pending").then_some(p)
    })
    .await;
    let old = app.json(&format!("/api/v1/jobs/{first}")).await;
    assert_eq!(old["status"], "failed");
    assert_eq!(old["failure_reason"], "runner_system_failure");
    assert_eq!(p["jobs"][0]["status"], "pending");
    // The dead agent's calls are refused.
    send(
        app.agent_call(
            &agent,
            Method::POST,
            &format!("/api/v1/agent/jobs/{first}/heartbeat"),
        ),
        409,
    )
    .await;
    let other = app.register("lives", &[]).await;
    let spec = app.take(&other, 5000).await.unwrap();
    assert_eq!(spec["attempt"], 2);
    app.run_job(&other, spec["job_id"].as_i64().unwrap(), "ok\n", "success")
        .await;
    app.pipeline_status(pid, "success").await;
}
both!(lease_expiry_retries_the_job);

async fn cancel_and_retry(b: Backend) {
    let app = spawn(b).await;
    app.project("demo", json!({})).await;
    let pid = app.push_ci(TWO_STAGES).await;
    let agent = app.register("a", &[]).await;
    let spec = app.take(&agent, 5000).await.unwrap();
    let build = spec["job_id"].as_i64().unwrap();
    app.run_job(&agent, build, "boom\n", "failed").await;
    let p = app.pipeline_status(pid, "failed").await;
    assert_eq!(
        statuses(&p),
        vec![
            ("build".into(), "failed".into()),
            ("test".into(), "skipped".into())
        ]
    );
    // Retry the failed job: a new attempt, and the skipped job waits again.
    let r = send(app.post(&format!("/api/v1/jobs/{build}/retry")), 201).await;
    let retried: Value = r.json().await.unwrap();
    assert_eq!(retried["attempt"], 2);
    assert_ne!(retried["id"], build);
    let p = app.pipeline(pid).await;
    assert_eq!(p["status"], "running", "an earlier attempt ran");
    assert_eq!(
        statuses(&p),
        vec![
            ("build".into(), "pending".into()),
            ("test".into(), "created".into())
        ]
    );
    // Cancel while the retry runs: the agent learns it from its heartbeat.
    let spec = app.take(&agent, 5000).await.unwrap();
    let running = spec["job_id"].as_i64().unwrap();
    let r = send(app.post(&format!("/api/v1/pipelines/{pid}/cancel")), 200).await;
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["status"], "canceled");
    assert_eq!(p["jobs"][1]["status"], "canceled");
    let r = app
        .agent_call(
            &agent,
            Method::POST,
            &format!("/api/v1/agent/jobs/{running}/heartbeat"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["cancel"], true);
    app.run_job(&agent, running, "", "canceled").await;
    let p = app.pipeline(pid).await;
    assert_eq!(p["status"], "canceled");
    assert!(p["finished_at"].is_string());
    send(app.post("/api/v1/jobs/999999/retry"), 404).await;
}
both!(cancel_and_retry);

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

async fn data_dir_and_database_files_are_private(b: Backend) {
    use std::os::unix::fs::PermissionsExt as _;
    // What an older server left: a world-readable data dir, token file and database file.
    let app = spawn_with(b, |c| {
        std::fs::create_dir_all(&c.data_dir).unwrap();
        let open = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(&c.data_dir, open.clone()).unwrap();
        for f in ["admin-token", "registration-token"] {
            std::fs::write(c.data_dir.join(f), "old\n").unwrap();
            std::fs::set_permissions(c.data_dir.join(f), open.clone()).unwrap();
        }
    })
    .await;
    app.project("demo", json!({"webhook_secret": "s3cret"}))
        .await;
    let dir = &app.config.data_dir;
    assert_eq!(mode(dir), 0o700, "the data dir");
    for f in ["admin-token", "registration-token"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    if app.database_url.starts_with("sqlite") {
        for f in ["gantry.db", "gantry.db-wal", "gantry.db-shm"] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
    }
}
both!(data_dir_and_database_files_are_private);

async fn projects_are_paginated(b: Backend) {
    let app = spawn(b).await;
    for name in ["a", "b", "c"] {
        app.project(name, json!({})).await;
    }
    let r = send(app.get("/api/v1/projects?per_page=2&page=1"), 200).await;
    assert_eq!(r.headers()["x-total"], "3");
    assert_eq!(r.headers()["x-next-page"], "2");
    let list: Value = r.json().await.unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let r = app
        .get("/api/v1/projects?per_page=2&page=2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-next-page"], "");
    let list: Value = r.json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "c");
    send(app.get("/api/v1/projects?per_page=500"), 400).await;
}
both!(projects_are_paginated);

async fn pagination_and_triggers(b: Backend) {
    let app = spawn(b).await;
    app.project("demo", json!({})).await;
    app.commit(&[(
        ".gitlab-ci.yml",
        "job:\n  script: [echo $CI_PIPELINE_SOURCE]\n",
    )]);
    for i in 0..3 {
        let r = send(
            app.post("/api/v1/projects/demo/pipelines")
                .json(&json!({"ref": "main", "variables": [{"key": "N", "value": i.to_string()}]})),
            202,
        )
        .await;
        let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
        let d = app.delivery("demo", id).await;
        assert_eq!(d["status"], "created", "{d}");
        assert_eq!(d["forge"], "api");
    }
    let r = send(
        app.get("/api/v1/projects/demo/pipelines?per_page=2&page=1"),
        200,
    )
    .await;
    assert_eq!(r.headers()["x-total"], "3");
    assert_eq!(r.headers()["x-page"], "1");
    assert_eq!(r.headers()["x-per-page"], "2");
    assert_eq!(r.headers()["x-next-page"], "2");
    let list: Value = r.json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["source"], "api");
    let r = app
        .get("/api/v1/projects/demo/pipelines?per_page=2&page=2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-next-page"], "");
    assert_eq!(
        r.json::<Value>().await.unwrap().as_array().unwrap().len(),
        1
    );
    send(app.get("/api/v1/projects/demo/pipelines?per_page=500"), 400).await;
    let r = send(app.get("/api/v1/projects/demo/pipelines?status=bogus"), 400).await;
    assert_eq!(
        json_error(r, "?status=bogus").await,
        "unknown status `bogus`"
    );
    // A pipeline is stored `created`, then its first step queues its job: wait for that.
    let total = |status: &'static str| {
        let app = &app;
        async move {
            let r = send(
                app.get(&format!("/api/v1/projects/demo/pipelines?status={status}")),
                200,
            )
            .await;
            r.headers()["x-total"].to_str().unwrap().to_owned()
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while total("pending").await != "3" {
        assert!(
            std::time::Instant::now() < deadline,
            "?status=pending never 3"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(total("success").await, "0", "?status=success");
    let r = app
        .get("/api/v1/projects/demo/pipelines?ref=other")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-total"], "0");
    // A trigger of a ref that does not exist: the delivery fails with the reason.
    let r = app
        .post("/api/v1/projects/demo/pipelines")
        .json(&json!({"ref": "no-such-branch"}))
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let d = app.delivery("demo", id).await;
    assert_eq!(d["status"], "failed");
    assert!(
        d["reason"].as_str().unwrap().contains("no-such-branch"),
        "{d}"
    );
}
both!(pagination_and_triggers);

async fn a_delivery_stored_before_a_crash_is_processed_after_restart(b: Backend) {
    let mut app = spawn(b).await;
    app.project("demo", json!({})).await;
    let sha = app.commit(&[(".gitlab-ci.yml", "job:\n  script: [echo]\n")]);
    app.stop().await;
    // Store a delivery straight into the database, as if the server died right after answering 202.
    let store = gantry_store::connect(&app.database_url).await.unwrap();
    let project = store.project("demo").await.unwrap().unwrap();
    let payload = json!({"ref": "refs/heads/main", "before": "0000000000000000000000000000000000000000", "after": sha});
    let (id, _) = store
        .insert_delivery(&gantry_store::NewDelivery {
            project_id: project.id,
            forge: "gitlab".into(),
            delivery_id: "before-the-crash".into(),
            event: "push".into(),
            payload: serde_json::to_vec(&payload).unwrap(),
            trace_id: "trace-before-crash".into(),
            received_at: 0,
            push_key: None,
            push_key_since: 0,
        })
        .await
        .unwrap();
    let server = gantry_server::serve(app.config.clone()).await.unwrap();
    app.url = server.url();
    app.server = Some(server);
    let d = app.delivery("demo", id).await;
    assert_eq!(d["status"], "created", "{d}");
    let p = app.pipeline(d["pipeline_id"].as_i64().unwrap()).await;
    assert_eq!(p["trace_id"], "trace-before-crash");
}
both!(a_delivery_stored_before_a_crash_is_processed_after_restart);

/// Records the commit statuses a forge receives.
pub(crate) async fn recorder() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, String, Value)>>>,
) {
    use axum::extract::State;
    use axum::http::{HeaderMap, Uri};
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, Value)>>>;
    let seen: Seen = Default::default();
    async fn record(
        State(seen): State<Seen>,
        uri: Uri,
        headers: HeaderMap,
        body: axum::Json<Value>,
    ) -> axum::http::StatusCode {
        let auth = headers
            .get("private-token")
            .or_else(|| headers.get("authorization"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        seen.lock()
            .unwrap()
            .push((uri.path().to_string(), auth, body.0));
        axum::http::StatusCode::CREATED
    }
    let app = axum::Router::new()
        .fallback(record)
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

async fn commit_statuses(b: Backend) {
    let (forge_url, seen) = recorder().await;
    let app = spawn(b).await;
    app.project(
        "gl",
        json!({"forge": {"kind": "gitlab", "api_url": format!("{forge_url}/api/v4"), "token": "gl-token", "project": "group/proj"}}),
    )
    .await;
    app.project(
        "gh",
        json!({"forge": {"kind": "github", "api_url": forge_url, "token": "gh-token", "project": "owner/repo"}}),
    )
    .await;
    let sha = app.commit(&[(".gitlab-ci.yml", "job:\n  script: [echo]\n")]);
    let agent = app.register("a", &[]).await;
    for project in ["gl", "gh"] {
        let d = app.push_and_wait(project, &sha).await;
        let pid = d["pipeline_id"].as_i64().unwrap();
        let spec = app.take(&agent, 5000).await.unwrap();
        app.run_job(&agent, spec["job_id"].as_i64().unwrap(), "ok\n", "success")
            .await;
        app.pipeline_status(pid, "success").await;
    }
    let seen = eventually(|| async {
        let s = seen.lock().unwrap().clone();
        let done = s.iter().filter(|(_, _, b)| b["state"] == "success").count() == 2;
        done.then_some(s)
    })
    .await;
    let gl: Vec<_> = seen
        .iter()
        .filter(|(p, _, _)| p.starts_with("/api/v4"))
        .collect();
    assert!(!gl.is_empty());
    for (path, auth, body) in &gl {
        assert_eq!(
            path,
            &format!("/api/v4/projects/group%2Fproj/statuses/{sha}")
        );
        assert_eq!(auth, "gl-token");
        assert_eq!(body["ref"], "main");
        assert_eq!(body["name"], "gantry");
        assert!(body["description"].is_string());
        assert!(
            ["pending", "running", "success"].contains(&body["state"].as_str().unwrap()),
            "{body}"
        );
    }
    let gh: Vec<_> = seen
        .iter()
        .filter(|(p, _, _)| p.starts_with("/repos"))
        .collect();
    assert!(!gh.is_empty());
    for (path, auth, body) in &gh {
        assert_eq!(path, &format!("/repos/owner/repo/statuses/{sha}"));
        assert_eq!(auth, "Bearer gh-token");
        assert_eq!(body["context"], "gantry");
        assert!(
            ["pending", "success"].contains(&body["state"].as_str().unwrap()),
            "{body}"
        );
    }
}
both!(commit_statuses);

#[allow(dead_code)]
fn _unused(_: &App) {}

async fn newer_push_cancels_interruptible_pipelines(b: Backend) {
    let app = spawn(b).await;
    app.project("demo", json!({})).await;
    let ci = "a:\n  stage: build\n  interruptible: true\n  script: [echo]\nb:\n  stage: test\n  script: [echo]\n";
    let first = app.commit(&[(".gitlab-ci.yml", ci)]);
    let d1 = app.push_and_wait("demo", &first).await;
    let p1 = d1["pipeline_id"].as_i64().unwrap();
    // An interruptible job runs: the older pipeline may be canceled.
    let agent = app.register("a", &[]).await;
    app.take(&agent, 5000).await.unwrap();
    let second = app.commit(&[("README", "x")]);
    let d2 = app.push_and_wait("demo", &second).await;
    let p2 = d2["pipeline_id"].as_i64().unwrap();
    let old = app.pipeline_status(p1, "canceled").await;
    assert_eq!(old["jobs"][1]["status"], "canceled");
    assert_ne!(app.pipeline(p2).await["status"], "canceled");
}
both!(newer_push_cancels_interruptible_pipelines);

async fn merge_request_events(b: Backend) {
    let app = spawn(b).await;
    app.project("demo", json!({})).await;
    app.commit(&[("README", "base")]);
    crate::common::git(&app.repo, &["checkout", "-q", "-b", "feature"]);
    let sha = app.commit(&[(
        ".gitlab-ci.yml",
        "workflow:\n  rules:\n    - if: $CI_PIPELINE_SOURCE == \"merge_request_event\"\n\
         mr:\n  script: [echo]\n  rules:\n    - if: $CI_MERGE_REQUEST_IID == \"7\" && $CI_COMMIT_BRANCH == null\n",
    )]);
    let body = json!({
        "object_kind": "merge_request",
        "user": {"name": "Jane", "email": "jane@example.com"},
        "object_attributes": {
            "iid": 7, "id": 70, "action": "open", "title": "A feature",
            "source_branch": "feature", "target_branch": "main",
            "last_commit": {"id": sha},
        },
    });
    let r = send(
        app.request(Method::POST, "/api/v1/projects/demo/hooks/gitlab")
            .header("X-Gitlab-Token", crate::common::SECRET)
            .header("X-Gitlab-Event", "Merge Request Hook")
            .header("X-Gitlab-Event-UUID", "mr-1")
            .json(&body),
        202,
    )
    .await;
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let d = app.delivery("demo", id).await;
    assert_eq!(d["status"], "created", "{d}");
    let p = app
        .pipeline_status(d["pipeline_id"].as_i64().unwrap(), "pending")
        .await;
    assert_eq!(p["source"], "merge_request_event");
    assert_eq!(p["ref"], "feature");
    assert_eq!(statuses(&p), vec![("mr".into(), "pending".into())]);
    let agent = app.register("a", &[]).await;
    let spec = app.take(&agent, 5000).await.unwrap();
    let pre = spec["plan"]["predefined"].as_array().unwrap();
    let get = |k: &str| {
        pre.iter()
            .rev()
            .find(|v| v["key"] == k)
            .map(|v| v["value"].clone())
    };
    assert_eq!(
        get("CI_MERGE_REQUEST_TARGET_BRANCH_NAME"),
        Some(json!("main"))
    );
    assert_eq!(get("CI_COMMIT_REF_NAME"), Some(json!("feature")));
    assert_eq!(get("CI_COMMIT_BRANCH"), None);
}
both!(merge_request_events);

async fn protected_and_scoped_variables(b: Backend) {
    let app = spawn(b).await;
    app.project(
        "demo",
        json!({"variables": [
            {"key": "PROD_ONLY", "value": "p", "protected": true},
            {"key": "SCOPED", "value": "s", "environment_scope": "review/*"},
            {"key": "EVERYWHERE", "value": "e"},
            // Listed later but less specific: a review job still gets `review/*`'s value.
            {"key": "SCOPED", "value": "wild"},
        ]}),
    )
    .await;
    let ci = "deploy:\n  script: [echo]\n  environment: review/$CI_COMMIT_REF_SLUG\nplain:\n  script: [echo]\n";
    let agent = app.register("a", &[]).await;
    let names = |spec: &Value| -> Vec<String> {
        spec["plan"]["cli_variables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["key"].as_str().unwrap().to_string())
            .collect()
    };
    // On the default branch: protected variables are given.
    let sha = app.commit(&[(".gitlab-ci.yml", ci)]);
    app.push_and_wait("demo", &sha).await;
    let values = |spec: &Value, key: &str| -> Vec<String> {
        spec["plan"]["cli_variables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["key"] == key)
            .map(|v| v["value"].as_str().unwrap().to_string())
            .collect()
    };
    let mut seen = std::collections::HashMap::new();
    for _ in 0..2 {
        let spec = app.take(&agent, 5000).await.unwrap();
        let job = spec["job"].as_str().unwrap().to_string();
        let expected = if job == "deploy" { "s" } else { "wild" };
        assert_eq!(values(&spec, "SCOPED"), [expected], "{job}");
        seen.insert(job, names(&spec));
        app.run_job(&agent, spec["job_id"].as_i64().unwrap(), "", "success")
            .await;
    }
    assert!(
        seen["deploy"].contains(&"PROD_ONLY".to_string()),
        "{seen:?}"
    );
    assert!(seen["plain"].contains(&"EVERYWHERE".to_string()));
    // On another branch: not the protected one.
    crate::common::git(&app.repo, &["checkout", "-q", "-b", "topic"]);
    let sha = app.commit(&[("README", "x")]);
    let r = app.push("demo", "topic", &sha).await;
    assert_eq!(r.status(), 202);
    let spec = app.take(&agent, 10_000).await.unwrap();
    assert!(
        !names(&spec).contains(&"PROD_ONLY".to_string()),
        "{:?}",
        names(&spec)
    );
    assert!(names(&spec).contains(&"EVERYWHERE".to_string()));
}
both!(protected_and_scoped_variables);

async fn live_log_stream(b: Backend) {
    use futures_util::StreamExt as _;
    let app = spawn(b).await;
    app.project("demo", json!({})).await;
    let sha = app.commit(&[(".gitlab-ci.yml", "job:\n  script: [echo]\n")]);
    app.push_and_wait("demo", &sha).await;
    let agent = app.register("a", &[]).await;
    let spec = app.take(&agent, 5000).await.unwrap();
    let id = spec["job_id"].as_i64().unwrap();
    let put = |offset: usize, body: &'static str| {
        app.agent_call(
            &agent,
            Method::PUT,
            &format!("/api/v1/agent/jobs/{id}/log?offset={offset}"),
        )
        .body(body)
        .send()
    };
    assert_eq!(put(0, "first\n").await.unwrap().status(), 200);
    let mut stream = app
        .get(&format!("/api/v1/jobs/{id}/log/stream"))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let mut seen = String::new();
    let mut read_until = async |needle: &str, seen: &mut String| {
        while !seen.contains(needle) {
            let chunk = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .expect("the stream stalled")
                .expect("the stream ended early")
                .unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    read_until("first\\n", &mut seen).await;
    // Live: a chunk appended now arrives on the open stream.
    assert_eq!(put(6, "second\n").await.unwrap().status(), 200);
    read_until("second\\n", &mut seen).await;
    assert!(!seen.contains("event: end"));
    send(app
        .agent_call(&agent, Method::POST, &format!("/api/v1/agent/jobs/{id}/finish"))
        .json(&json!({"outcome": "success", "exit_code": 0, "failure_reason": null, "coverage": null, "log_size": 13})), 200).await;
    read_until("event: end", &mut seen).await;
    assert!(seen.contains("\"status\":\"success\""), "{seen}");
}
both!(live_log_stream);

async fn scheduled_pipelines(b: Backend) {
    let mut app = spawn(b).await;
    app.commit(&[(
        ".gitlab-ci.yml",
        "nightly:\n  script: [echo]\n  rules:\n    - if: $CI_PIPELINE_SOURCE == \"schedule\"\n",
    )]);
    // An unknown time zone is refused, naming the schedule and the zone.
    let r = app
        .post("/api/v1/projects")
        .json(
            &json!({"name": "bad", "repo_url": app.repo.to_str().unwrap(),
            "schedules": [{"cron": "0 9 * * 1-5", "cron_timezone": "Mars/Olympus"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("schedule `0 9 * * 1-5`") && text.contains("Mars/Olympus"),
        "{text}"
    );
    let project = app
        .project(
            "demo",
            json!({"schedules": [{"cron": "* * * * *", "cron_timezone": "Europe/Berlin",
                "variables": [{"key": "FROM_SCHEDULE", "value": "yes"}]}]}),
        )
        .await;
    assert_eq!(
        project["schedules"][0]["cron_timezone"], "Europe/Berlin",
        "{project}"
    );
    // The scheduler looks at the current minute when it starts: restart it.
    app.stop().await;
    let server = gantry_server::serve(app.config.clone()).await.unwrap();
    app.url = server.url();
    app.server = Some(server);
    let d = eventually(|| async {
        let list = app.json("/api/v1/projects/demo/deliveries").await;
        list.as_array()
            .unwrap()
            .iter()
            .find(|d| d["forge"] == "schedule" && d["status"] != "pending")
            .cloned()
    })
    .await;
    assert_eq!(d["status"], "created", "{d}");
    assert!(
        d["delivery_id"]
            .as_str()
            .unwrap()
            .starts_with("schedule-0-")
    );
    let p = app.pipeline(d["pipeline_id"].as_i64().unwrap()).await;
    assert_eq!(p["source"], "schedule");
    let agent = app.register("a", &[]).await;
    let spec = app.take(&agent, 5000).await.unwrap();
    assert_eq!(spec["job"], "nightly");
    let vars = spec["plan"]["cli_variables"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["key"] == "FROM_SCHEDULE" && v["value"] == "yes")
    );
}
both!(scheduled_pipelines);

/// An agent that drains ends its session's long polls: a waiting poll answers `204` at once, a
/// later poll of the session too, even with a job pending (which stays pending for others), and
/// the agent's other sessions (a restart) and other agents are not affected.
async fn stop_polling_ends_the_session_s_polls(b: Backend) {
    let app = spawn(b).await;
    app.project("demo", json!({})).await;
    let agent = app.register("drains", &[]).await;
    let poll = |session: &'static str, wait_ms: u64| {
        app.agent_call(
            &agent,
            Method::POST,
            &format!("/api/v1/agent/jobs/request?wait_ms={wait_ms}"),
        )
        .json(&json!({"running": [], "session": session}))
        .send()
    };
    let waiting = poll("s1", 30_000);
    let stop = async {
        // The poll is on the server before the stop (a stop before it would end it too).
        tokio::time::sleep(Duration::from_millis(200)).await;
        send(
            app.agent_call(&agent, Method::POST, "/api/v1/agent/jobs/request/stop")
                .json(&json!({"session": "s1"})),
            204,
        )
        .await;
    };
    let started = std::time::Instant::now();
    let (r, ()) = tokio::join!(waiting, stop);
    assert_eq!(r.unwrap().status(), 204);
    assert!(started.elapsed() < Duration::from_secs(10));
    let pid = app.push_ci("job:\n  script: [echo]\n").await;
    app.pipeline_status(pid, "pending").await;
    let r = poll("s1", 5_000).await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(app.pipeline(pid).await["jobs"][0]["status"], "pending");
    // A new session of the same agent takes it.
    let r = poll("s2", 5_000).await.unwrap();
    assert_eq!(r.status(), 200);
    send(
        app.agent_call(&agent, Method::POST, "/api/v1/agent/jobs/request/stop")
            .json(&json!({"session": ""})),
        400,
    )
    .await;
}
both!(stop_polling_ends_the_session_s_polls);

/// An agent's row is written at most once per tenth of the lease timeout, however many requests the
/// agent makes: `last_seen_at` moves in steps.
async fn agent_seen_is_written_once_per_tenth_of_the_lease(b: Backend) {
    let app = spawn_with(b, |c| c.lease_timeout = Duration::from_secs(10)).await;
    let agent = app.register("seen", &[]).await;
    let seen = || async {
        let agents = app.json("/api/v1/agents").await;
        agents
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "seen")
            .unwrap()["last_seen_at"]
            .clone()
    };
    let poll = || async {
        send(
            app.agent_call(&agent, Method::POST, "/api/v1/agent/jobs/request?wait_ms=0")
                .json(&json!({"running": []})),
            204,
        )
        .await;
    };
    let registered = seen().await;
    // A tenth of the lease (1 s) later, a request records the agent as seen.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    poll().await;
    let first = seen().await;
    assert_ne!(first, registered);
    // Requests within the next tenth do not write again.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        poll().await;
    }
    assert_eq!(seen().await, first);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    poll().await;
    assert_ne!(seen().await, first);
}
both!(agent_seen_is_written_once_per_tenth_of_the_lease);

/// What job `id` downloads of its dependency `dep`'s artifacts (checked to answer 200).
async fn dependency_artifacts(app: &App, agent: &Agent, id: i64, dep: i64) -> reqwest::Response {
    let path = format!("/api/v1/agent/jobs/{id}/dependencies/{dep}/artifacts");
    send(app.agent_call(agent, Method::GET, &path), 200).await
}

/// A tar of `entries` (name, content), names written raw (so that they may leave the directory).
fn tar_raw(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, content) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, *content).unwrap();
    }
    b.into_inner().unwrap()
}

/// `bytes` as a streamed (chunked, no `Content-Length`) request body, in 64 KiB pieces.
fn streamed(bytes: Vec<u8>) -> reqwest::Body {
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
}

async fn big_artifacts_stream_through_in_chunks(b: Backend) {
    let app = spawn_with(b, |c| c.max_artifacts_bytes = 4 << 20).await;
    let sha = app.commit(&[(".gitlab-ci.yml", TWO_STAGES)]);
    app.project("demo", json!({})).await;
    let d = app.push_and_wait("demo", &sha).await;
    let pid = d["pipeline_id"].as_i64().unwrap();
    let agent = app.register("agent-1", &[]).await;
    let spec = app.take(&agent, 5000).await.expect("a job");
    let job_id = spec["job_id"].as_i64().unwrap();
    let path = format!("/api/v1/agent/jobs/{job_id}/artifacts");
    let put = |body: reqwest::Body| app.agent_call(&agent, Method::PUT, &path).body(body).send();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 241) as u8).collect();

    // Zip-slip past the first chunks (the check runs while the upload streams in) is refused, and
    // nothing is served.
    // The server answers as soon as it sees the bad entry and may close the connection before the
    // client has sent the last bytes: a send cut short that way is tried again.
    let evil = tar_raw(&[("out/big.bin", &big), ("../escape", b"x")]);
    let mut answer = None;
    for _ in 0..5 {
        if let Ok(r) = put(streamed(evil.clone())).await {
            answer = Some(r.status());
            break;
        }
    }
    assert_eq!(
        answer,
        Some(reqwest::StatusCode::BAD_REQUEST),
        "zip-slip after 3 MB is refused"
    );
    send_why(
        app.get(&format!("/api/v1/jobs/{job_id}/artifacts")),
        404,
        "a refused upload is not served",
    )
    .await;

    // A 3 MB archive, streamed without a length, is stored in chunks and comes back whole.
    let good = tar_raw(&[("out/big.bin", &big)]);
    let r = put(streamed(good.clone())).await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["size"], json!(good.len()));

    // Over the limit: refused up front from Content-Length, and while streaming without one.
    // (Up front: the request's head alone, with no byte of the body sent, gets the answer. A client
    // that sends the body races the server closing the connection after it answered.)
    let addr = app.url.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Length: {}\r\n\r\n",
        agent.token,
        6 << 20
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut status = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut status))
        .await
        .expect("answered without waiting for the body")
        .unwrap();
    assert_eq!(&status, b"HTTP/1.1 413");
    // Without a length: the body goes out in chunks from its own task while this one reads the
    // answer, so the answer is read even when the server closes the connection before the client
    // has sent it all (a client that only reads after sending may lose it to that race).
    let huge = tar_raw(&[("out/huge.bin", &vec![7u8; 5 << 20])]);
    let conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut from_server, mut to_server) = conn.into_split();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        agent.token
    );
    let sender = tokio::spawn(async move {
        to_server.write_all(head.as_bytes()).await?;
        for piece in huge.chunks(64 << 10) {
            to_server
                .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                .await?;
            to_server.write_all(piece).await?;
            to_server.write_all(b"\r\n").await?;
        }
        to_server.write_all(b"0\r\n\r\n").await?;
        // Kept open until the answer is read: dropping it would half-close the connection, and
        // the server drops a connection whose client has closed its side.
        Ok::<_, std::io::Error>(to_server)
    });
    let mut status = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(30), from_server.read_exact(&mut status))
        .await
        .expect("an answer to the streamed upload")
        .unwrap();
    sender.abort();
    assert_eq!(
        String::from_utf8_lossy(&status),
        "HTTP/1.1 413",
        "a streamed upload over the limit is refused"
    );
    // Nothing of it was stored: the archive served is still the last good one.
    let r = send(app.get(&format!("/api/v1/jobs/{job_id}/artifacts")), 200).await;
    assert_eq!(r.bytes().await.unwrap().to_vec(), good);
    // An empty body and a body that is not a tar are refused.
    assert_eq!(put(Vec::new().into()).await.unwrap().status(), 400);
    assert_eq!(
        put(b"not a tar archive at all".to_vec().into())
            .await
            .unwrap()
            .status(),
        400
    );

    // The refused uploads left the stored archive alone.
    let r = send(app.get(&format!("/api/v1/jobs/{job_id}/artifacts")), 200).await;
    assert_eq!(r.headers()["content-length"], good.len().to_string());
    assert_eq!(r.bytes().await.unwrap().to_vec(), good);

    // A re-upload replaces it.
    let second = tar_raw(&[("out/big.bin", &big[..1_500_000]), ("out/more", b"more")]);
    assert_eq!(put(second.clone().into()).await.unwrap().status(), 201);
    app.run_job(&agent, job_id, "built\n", "success").await;

    // The next stage downloads it, with its length.
    let spec = app.take(&agent, 5000).await.expect("the test job");
    let test_id = spec["job_id"].as_i64().unwrap();
    let r = dependency_artifacts(&app, &agent, test_id, job_id).await;
    assert_eq!(r.headers()["content-length"], second.len().to_string());
    assert_eq!(r.bytes().await.unwrap().to_vec(), second);
    app.run_job(&agent, test_id, "tested\n", "success").await;
    app.pipeline_status(pid, "success").await;
}
both!(big_artifacts_stream_through_in_chunks);
