//! Authentication, JSON errors, limits, projects, the OpenAPI document, metrics, health.

use reqwest::Method;
use serde_json::{Value, json};

use crate::both;
use crate::common::{ADMIN, App, Backend, json_error, send, send_why, spawn, spawn_with, text_of};

async fn error_body(r: reqwest::Response) -> String {
    json_error(r, "the answer").await
}

async fn auth_is_required(b: Backend) {
    let app = spawn(b).await;
    let r = send(app.anon("/api/v1/projects"), 401).await;
    error_body(r).await;
    let r = send(app.anon("/api/v1/projects").bearer_auth("wrong"), 401).await;
    error_body(r).await;
    send(
        app.anon("/api/v1/projects").header("PRIVATE-TOKEN", ADMIN),
        200,
    )
    .await;
    send(app.anon("/api/v1/projects").bearer_auth(ADMIN), 200).await;
    // Agent calls want an agent token, and the registration token is checked.
    send(
        app.request(Method::POST, "/api/v1/agent/jobs/request")
            .bearer_auth(ADMIN),
        401,
    )
    .await;
    let r = send(app.request(Method::POST, "/api/v1/agents/register")
        .json(&json!({"token": "nope", "name": "a", "executor": "shell", "concurrency": 1, "version": "x"})), 401).await;
    error_body(r).await;
}
both!(auth_is_required);

async fn errors_are_json(b: Backend) {
    let app = spawn_with(b, |c| c.max_body_bytes = 64 * 1024).await;
    let r = send(app.get("/api/v1/nope"), 404).await;
    error_body(r).await;
    let r = send(app.request(Method::DELETE, "/api/v1/projects"), 405).await;
    error_body(r).await;
    let r = send(app.post("/api/v1/projects").body("{not json"), 400).await;
    error_body(r).await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    // The server answers 413 without reading the body and closes the connection: the client must
    // not put it back in its pool, or the next request may be written into the closed socket.
    send_why(
        app.post("/api/v1/projects")
            .header("connection", "close")
            .body(deep),
        413,
        "the deep body is over the limit too",
    )
    .await;
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let r = send_why(
        app.post("/api/v1/projects").body(deep),
        400,
        "nesting past serde_json's limit is a 400, not a crash",
    )
    .await;
    error_body(r).await;
    send(
        app.post("/api/v1/projects")
            .body(vec![b'"', 0xff, 0xfe, b'"']),
        400,
    )
    .await;
    let big = "x".repeat(100 * 1024);
    let r = send(
        app.post("/api/v1/projects")
            .header("connection", "close")
            .body(big),
        413,
    )
    .await;
    error_body(r).await;
    let r = send(app.get("/api/v1/pipelines/not-a-number"), 400).await;
    error_body(r).await;
    let r = send(app.get("/api/v1/pipelines/12345"), 404).await;
    error_body(r).await;
    // Every answer carries a trace id; an incoming one is kept.
    let r = app
        .get("/healthz")
        .header("X-Trace-ID", "trace-abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-trace-id"], "trace-abc");
    let r = app
        .get("/healthz")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["x-trace-id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
}
both!(errors_are_json);

async fn projects(b: Backend) {
    let app = spawn(b).await;
    let p = app
        .project(
            "demo",
            json!({"variables": [
                {"key": "TOKEN", "value": "super-secret-value", "masked": true},
                {"key": "PLAIN", "value": "visible"}
            ], "forge": {"kind": "github", "api_url": "http://127.0.0.1:1", "token": "forge-token", "project": "o/r"}}),
        )
        .await;
    assert_eq!(p["name"], "demo");
    assert_eq!(p["default_branch"], "main");
    assert_eq!(p["has_webhook_secret"], true);
    let text = text_of(app.get("/api/v1/projects/demo")).await;
    assert!(!text.contains("super-secret-value"), "{text}");
    assert!(!text.contains("forge-token"), "{text}");
    assert!(!text.contains(crate::common::SECRET), "{text}");
    assert!(text.contains("visible"));
    let list = app.json("/api/v1/projects").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    send(
        app.post("/api/v1/projects")
            .json(&json!({"name": "demo", "repo_url": "/x"})),
        409,
    )
    .await;
    send(
        app.post("/api/v1/projects")
            .json(&json!({"name": "../evil", "repo_url": "/x"})),
        400,
    )
    .await;
    send(app.get("/api/v1/projects/nope"), 404).await;
    // Who may include its files: none but itself by default; kept and shown when given.
    assert_eq!(p["include_allowed_from"], json!([]));
    let shared = app
        .project(
            "shared",
            json!({"include_allowed_from": ["demo", "team-*"]}),
        )
        .await;
    assert_eq!(shared["include_allowed_from"], json!(["demo", "team-*"]));
    let shown = app.json("/api/v1/projects/shared").await;
    assert_eq!(shown["include_allowed_from"], json!(["demo", "team-*"]));
    let r = send(
        app.post("/api/v1/projects")
            .json(&json!({"name": "bad", "repo_url": "/x", "include_allowed_from": ["a/b"]})),
        400,
    )
    .await;
    assert!(
        error_body(r).await.contains("include_allowed_from"),
        "the error names the setting"
    );
}
both!(projects);

#[tokio::test]
async fn openapi_lists_every_route() {
    let app = spawn(Backend::Sqlite).await;
    let doc: Value = app
        .anon("/api/v1/openapi.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/projects",
        "/api/v1/projects/{name}",
        "/api/v1/projects/{name}/tokens",
        "/api/v1/projects/{name}/tokens/{id}",
        "/api/v1/projects/{name}/variables",
        "/api/v1/projects/{name}/variables/{key}",
        "/api/v1/projects/{name}/schedules",
        "/api/v1/projects/{name}/schedules/{n}",
        "/api/v1/projects/{name}/hooks/gitlab",
        "/api/v1/projects/{name}/hooks/github",
        "/api/v1/projects/{name}/hooks/gitea",
        "/api/v1/projects/{name}/pipelines",
        "/api/v1/projects/{name}/deliveries",
        "/api/v1/pipelines/{id}",
        "/api/v1/pipelines/{id}/cancel",
        "/api/v1/jobs/{id}",
        "/api/v1/jobs/{id}/log",
        "/api/v1/jobs/{id}/log/stream",
        "/api/v1/jobs/{id}/artifacts",
        "/api/v1/jobs/{id}/retry",
        "/api/v1/jobs/{id}/play",
        "/api/v1/agents",
        "/api/v1/agents/register",
        "/api/v1/agent/jobs/request",
        "/api/v1/agent/jobs/{id}/heartbeat",
        "/api/v1/agent/jobs/{id}/log",
        "/api/v1/agent/jobs/{id}/source",
        "/api/v1/agent/jobs/{id}/dependencies/{dep}/artifacts",
        "/api/v1/agent/jobs/{id}/artifacts",
        "/api/v1/agent/jobs/{id}/finish",
        "/api/v1/agent/jobs/request/stop",
        "/api/v1/agent/jobs/{id}/git/info/refs",
        "/api/v1/agent/jobs/{id}/git/git-upload-pack",
        "/api/v1/projects/{name}/git/info/refs",
        "/api/v1/projects/{name}/git/git-upload-pack",
        "/healthz",
        "/readyz",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} is missing from the OpenAPI document"
        );
    }
    let get = &paths["/api/v1/projects/{name}/pipelines"]["get"];
    let params: Vec<&str> = get["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for n in ["name", "ref", "status", "page", "per_page"] {
        assert!(params.contains(&n), "{n} in {params:?}");
    }
    assert!(get["responses"]["401"].is_object());
    assert!(get["responses"]["403"].is_object());
    let create = &paths["/api/v1/projects/{name}/tokens"]["post"];
    assert!(create["responses"]["201"].is_object());
    assert!(create["responses"]["403"].is_object());
    assert!(create["security"].is_array());
    assert!(paths["/api/v1/projects/{name}/tokens/{id}"]["delete"]["responses"]["204"].is_object());
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for s in ["NewProjectToken", "ProjectToken", "CreatedProjectToken"] {
        assert!(schemas.contains_key(s), "schema {s}");
    }
    for s in ["NewProject", "Project"] {
        let field = &schemas[s]["properties"]["include_allowed_from"];
        assert_eq!(field["type"], "array", "{s}.include_allowed_from: {field}");
    }
    let required = schemas["Project"]["required"].as_array().unwrap();
    assert!(
        required.contains(&json!("include_allowed_from")),
        "{required:?}"
    );
    let delivery = &schemas["Delivery"]["properties"];
    for f in ["attempts", "retry_at", "last_error"] {
        assert!(delivery[f].is_object(), "Delivery.{f} in {delivery}");
    }
    // Every reference names a schema of the document (the status enums among them).
    let mut refs = Vec::new();
    refs_in(&doc, &mut refs);
    for r in &refs {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or(r);
        assert!(schemas.contains_key(name), "{r} names no schema");
    }
    for s in ["JobStatus", "PipelineStatus", "DeliveryStatus"] {
        assert!(refs.iter().any(|r| r.ends_with(&format!("/{s}"))), "{s}");
    }
}

/// Every `$ref` in `v`.
fn refs_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                match (k.as_str(), x.as_str()) {
                    ("$ref", Some(r)) => out.push(r.to_owned()),
                    _ => refs_in(x, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| refs_in(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn metrics_can_need_a_token() {
    let app = spawn_with(Backend::Sqlite, |c| {
        c.metrics_token = Some(gantry_server::config::Secret("scrape-me".into()));
    })
    .await;
    send(app.anon("/metrics"), 401).await;
    send(app.anon("/metrics").bearer_auth("wrong"), 401).await;
    let r = send(app.anon("/metrics").bearer_auth("scrape-me"), 200).await;
    assert!(r.text().await.unwrap().contains("# EOF"));
    // Without the setting, /metrics stays open (as before), and /healthz is always open.
    let open = spawn(Backend::Sqlite).await;
    send(open.anon("/metrics"), 200).await;
    send(app.anon("/healthz"), 200).await;
}

#[tokio::test]
async fn metrics_and_health() {
    let app = spawn(Backend::Sqlite).await;
    let _ = app.get("/api/v1/projects").send().await.unwrap();
    let text = text_of(app.anon("/metrics")).await;
    for name in [
        "gantry_http_request_duration_seconds",
        "gantry_pipelines",
        "gantry_jobs",
        "gantry_job_queue_wait_seconds",
        "gantry_job_duration_seconds",
        "gantry_queue_depth",
        "gantry_agents_connected",
        "gantry_webhook_deliveries",
        "gantry_log_bytes",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing from /metrics:\n{text}"
        );
    }
    assert!(text.contains("route=\"/api/v1/projects\""), "{text}");
    send(app.anon("/healthz"), 200).await;
    send(app.anon("/readyz"), 200).await;
}

#[allow(dead_code)]
fn _unused(_: &App) {}
