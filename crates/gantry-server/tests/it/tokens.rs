//! Project tokens: what a project token may do on its own project, what it is refused elsewhere,
//! and the token lifecycle (secret shown once, stored as a hash, revocation, expiry).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::both;
use crate::common::{App, Backend, eventually, json_error, send, spawn, tar_of};

const PIPELINE: &str = "\
stages: [build, deploy]
build:
  stage: build
  script: [echo build]
deploy:
  stage: deploy
  script: [echo deploy]
  when: manual
";

/// A request with `token` in `Authorization: Bearer`.
fn with_bearer(app: &App, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
    app.request(method, path).bearer_auth(token)
}

/// A request with `token` in `PRIVATE-TOKEN`.
fn with_private(app: &App, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
    app.request(method, path).header("PRIVATE-TOKEN", token)
}

/// Sends `req`, asserts `status` and a JSON error body; answers the error message.
async fn refused(req: reqwest::RequestBuilder, status: u16, what: &str) -> String {
    let r = req.send().await.unwrap();
    assert_eq!(r.status().as_u16(), status, "{what}");
    json_error(r, what).await
}

/// Creates a token for `project` with the admin token; answers the whole answer.
async fn create_token(app: &App, project: &str, body: Value) -> Value {
    let r = send(
        app.post(&format!("/api/v1/projects/{project}/tokens"))
            .json(&body),
        201,
    )
    .await;
    r.json().await.unwrap()
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Triggers a pipeline of `project` with `token`; waits until it exists and answers its id.
async fn trigger(app: &App, project: &str, token: &str) -> i64 {
    let r = send(
        with_private(
            app,
            Method::POST,
            &format!("/api/v1/projects/{project}/pipelines"),
            token,
        )
        .json(&json!({"ref": "main"})),
        202,
    )
    .await;
    let accepted: Value = r.json().await.unwrap();
    let d = app
        .delivery(project, accepted["id"].as_i64().unwrap())
        .await;
    assert_eq!(d["status"], "created", "{d}");
    d["pipeline_id"].as_i64().unwrap()
}

fn job_id(p: &Value, name: &str) -> i64 {
    p["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == name)
        .unwrap_or_else(|| panic!("no job {name} in {p}"))["id"]
        .as_i64()
        .unwrap()
}

async fn project_token_acts_on_its_project_only(b: Backend) {
    let app = spawn(b).await;
    app.commit(&[(".gitlab-ci.yml", PIPELINE)]);
    app.project("alpha", json!({})).await;
    app.project("beta", json!({})).await;
    let created = create_token(&app, "alpha", json!({"name": "ci"})).await;
    let token = created["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("gpt_"), "{token}");
    assert_eq!(token.len(), 4 + 64);
    assert_eq!(created["name"], "ci");
    assert!(created["id"].as_i64().is_some());
    assert!(created["created_at"].as_str().is_some());
    assert_eq!(created["expires_at"], Value::Null);

    // It triggers its project's pipelines (both headers work) ...
    let pa = trigger(&app, "alpha", &token).await;
    send(
        with_bearer(
            &app,
            Method::POST,
            "/api/v1/projects/alpha/pipelines",
            &token,
        )
        .json(&json!({})),
        202,
    )
    .await;
    // ... while beta's pipeline comes from the admin.
    let r = send(
        app.post("/api/v1/projects/beta/pipelines")
            .json(&json!({"ref": "main"})),
        202,
    )
    .await;
    let accepted: Value = r.json().await.unwrap();
    let pb = app.delivery("beta", accepted["id"].as_i64().unwrap()).await["pipeline_id"]
        .as_i64()
        .unwrap();
    let p_alpha = app.pipeline_status(pa, "pending").await;
    let p_beta = app.pipeline_status(pb, "pending").await;
    let (build_a, deploy_a) = (job_id(&p_alpha, "build"), job_id(&p_alpha, "deploy"));
    let (build_b, deploy_b) = (job_id(&p_beta, "build"), job_id(&p_beta, "deploy"));

    // An agent runs alpha's build, with a log and artifacts.
    let agent = app.register("agent-1", &[]).await;
    let spec = eventually(|| async {
        let s = app.take(&agent, 1000).await?;
        (s["job_id"] == build_a).then_some(s)
    })
    .await;
    app.upload_artifacts(&agent, build_a, tar_of("files/out.txt", b"42"))
        .await;
    app.run_job(
        &agent,
        spec["job_id"].as_i64().unwrap(),
        "built alpha\n",
        "success",
    )
    .await;

    // Reads of its own project.
    let ok = |path: String| {
        let app = &app;
        let token = &token;
        async move {
            let r = with_bearer(app, Method::GET, &path, token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "GET {path}: {:?}", r.text().await);
            r
        }
    };
    let p: Value = ok(format!("/api/v1/pipelines/{pa}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(p["project"], "alpha");
    let list: Value = ok("/api/v1/projects/alpha/pipelines".into())
        .await
        .json()
        .await
        .unwrap();
    assert!(list.as_array().unwrap().iter().any(|x| x["id"] == pa));
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|x| x["project"] == "alpha")
    );
    let list: Value = ok("/api/v1/projects/alpha/deliveries".into())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let project: Value = ok("/api/v1/projects/alpha".into())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(project["name"], "alpha");
    let job: Value = ok(format!("/api/v1/jobs/{build_a}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "success");
    let log = ok(format!("/api/v1/jobs/{build_a}/log"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(log, "built alpha\n");
    let stream = ok(format!("/api/v1/jobs/{build_a}/log/stream"))
        .await
        .text()
        .await
        .unwrap();
    assert!(stream.contains("built alpha"), "{stream}");
    assert!(stream.contains("event: end"), "{stream}");
    let artifacts = ok(format!("/api/v1/jobs/{build_a}/artifacts"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        artifacts.as_ref(),
        tar_of("files/out.txt", b"42").as_slice()
    );
    for path in [
        format!("/api/v1/pipelines/{pa}/reports"),
        format!("/api/v1/jobs/{build_a}/reports"),
        "/api/v1/projects/alpha/coverage?ref=main".into(),
    ] {
        ok(path).await;
    }

    // Play, retry and cancel on its own project.
    send(
        with_bearer(
            &app,
            Method::POST,
            &format!("/api/v1/jobs/{deploy_a}/play"),
            &token,
        ),
        200,
    )
    .await;
    let r = send(
        with_private(
            &app,
            Method::POST,
            &format!("/api/v1/jobs/{build_a}/retry"),
            &token,
        ),
        201,
    )
    .await;
    let retried: Value = r.json().await.unwrap();
    assert_eq!(retried["attempt"], 2);
    let r = send(
        with_bearer(
            &app,
            Method::POST,
            &format!("/api/v1/pipelines/{pa}/cancel"),
            &token,
        ),
        200,
    )
    .await;
    let canceled: Value = r.json().await.unwrap();
    assert_eq!(canceled["status"], "canceled");

    // Everything of beta is refused with 403 and a JSON error; so are things that do not exist,
    // so that the token learns nothing about other projects.
    let missing = pb + pa + 1_000;
    let forbidden = [
        (Method::GET, "/api/v1/projects/beta".to_string()),
        (Method::GET, "/api/v1/projects/beta/pipelines".into()),
        (Method::POST, "/api/v1/projects/beta/pipelines".into()),
        (Method::GET, "/api/v1/projects/beta/deliveries".into()),
        (Method::GET, "/api/v1/projects/nope/pipelines".into()),
        (Method::GET, format!("/api/v1/pipelines/{pb}")),
        (Method::POST, format!("/api/v1/pipelines/{pb}/cancel")),
        (Method::GET, format!("/api/v1/pipelines/{missing}")),
        (Method::GET, format!("/api/v1/jobs/{build_b}")),
        (Method::GET, format!("/api/v1/jobs/{build_b}/log")),
        (Method::GET, format!("/api/v1/jobs/{build_b}/log/stream")),
        (Method::GET, format!("/api/v1/jobs/{build_b}/artifacts")),
        (Method::POST, format!("/api/v1/jobs/{build_b}/retry")),
        (Method::POST, format!("/api/v1/jobs/{deploy_b}/play")),
        (Method::GET, format!("/api/v1/jobs/{missing}")),
        (Method::GET, format!("/api/v1/pipelines/{pb}/reports")),
        (Method::GET, format!("/api/v1/pipelines/{missing}/reports")),
        (Method::GET, format!("/api/v1/jobs/{build_b}/reports")),
        (
            Method::GET,
            "/api/v1/projects/beta/coverage?ref=main".into(),
        ),
    ];
    for (method, path) in forbidden {
        let what = format!("{method} {path}");
        let msg = refused(
            with_bearer(&app, method, &path, &token).json(&json!({"ref": "main"})),
            403,
            &what,
        )
        .await;
        assert!(msg.contains("own project"), "{what}: {msg}");
    }
    // Admin-only routes: 403 too, also on its own project's tokens.
    let admin_only = [
        (Method::GET, "/api/v1/projects".to_string(), json!(null)),
        (
            Method::POST,
            "/api/v1/projects".into(),
            json!({"name": "gamma", "repo_url": app.repo.to_str().unwrap()}),
        ),
        (Method::GET, "/api/v1/agents".into(), json!(null)),
        (
            Method::GET,
            "/api/v1/projects/alpha/tokens".into(),
            json!(null),
        ),
        (
            Method::POST,
            "/api/v1/projects/alpha/tokens".into(),
            json!({"name": "more"}),
        ),
        (
            Method::DELETE,
            format!("/api/v1/projects/alpha/tokens/{}", created["id"]),
            json!(null),
        ),
    ];
    for (method, path, body) in admin_only {
        let what = format!("{method} {path}");
        let msg = refused(
            with_private(&app, method, &path, &token).json(&body),
            403,
            &what,
        )
        .await;
        assert!(msg.contains("admin token"), "{what}: {msg}");
    }
    // Nothing of that happened: beta's pipeline is untouched, no project was added, the token lives.
    let p = app.pipeline(pb).await;
    assert_eq!(p["status"], "pending");
    assert_eq!(p["jobs"].as_array().unwrap().len(), 2);
    send(app.get("/api/v1/projects/gamma"), 404).await;
    let tokens = app.json("/api/v1/projects/alpha/tokens").await;
    assert_eq!(tokens.as_array().unwrap().len(), 1);
    // The agent's token is no API token.
    refused(
        with_bearer(
            &app,
            Method::GET,
            &format!("/api/v1/pipelines/{pa}"),
            &agent.token,
        ),
        401,
        "agent token on the API",
    )
    .await;
}
both!(project_token_acts_on_its_project_only);

async fn project_token_lifecycle(b: Backend) {
    let app = spawn(b).await;
    app.commit(&[(".gitlab-ci.yml", PIPELINE)]);
    let alpha = app.project("alpha", json!({})).await;
    let created = create_token(
        &app,
        "alpha",
        json!({"name": "deploy bot", "expires_at": "2999-01-31"}),
    )
    .await;
    assert_eq!(created["expires_at"], "2999-01-31T00:00:00.000Z");
    let secret = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_i64().unwrap();
    let second = create_token(&app, "alpha", json!({"name": "other"})).await;
    assert_ne!(second["token"], created["token"]);

    // The list has no secrets.
    let r = send(app.get("/api/v1/projects/alpha/tokens"), 200).await;
    let text = r.text().await.unwrap();
    assert!(!text.contains(&secret), "{text}");
    assert!(!text.contains("gpt_"), "{text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["name"], "deploy bot");
    assert_eq!(list[0]["expires_at"], "2999-01-31T00:00:00.000Z");
    assert_eq!(list[0].get("token"), None);

    // The store holds the SHA-256 of the secret, never the secret.
    let store = gantry_store::connect(&app.database_url).await.unwrap();
    let alpha_id = alpha["id"].as_i64().unwrap();
    let stored = store.project_tokens(alpha_id).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].token_hash, sha256_hex(&secret));
    assert!(stored.iter().all(|t| !t.token_hash.contains(&secret[4..])));
    assert!(
        store
            .project_token_by_hash(&secret)
            .await
            .unwrap()
            .is_none()
    );
    let found = store
        .project_token_by_hash(&sha256_hex(&secret))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, id);
    assert_eq!(found.project_name, "alpha");

    // It works until it is revoked; then 401, like any unknown token.
    send(
        with_bearer(
            &app,
            Method::GET,
            "/api/v1/projects/alpha/pipelines",
            &secret,
        ),
        200,
    )
    .await;
    let r = app
        .request(
            Method::DELETE,
            &format!("/api/v1/projects/alpha/tokens/{id}"),
        )
        .bearer_auth(crate::common::ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for path in ["/api/v1/projects/alpha/pipelines", "/api/v1/projects/alpha"] {
        refused(with_bearer(&app, Method::GET, path, &secret), 401, path).await;
        refused(with_private(&app, Method::GET, path, &secret), 401, path).await;
    }
    refused(
        app.request(
            Method::DELETE,
            &format!("/api/v1/projects/alpha/tokens/{id}"),
        )
        .bearer_auth(crate::common::ADMIN),
        404,
        "revoking twice",
    )
    .await;
    let list = app.json("/api/v1/projects/alpha/tokens").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], second["id"]);
    // The other token still works.
    send(
        with_bearer(
            &app,
            Method::GET,
            "/api/v1/projects/alpha/pipelines",
            second["token"].as_str().unwrap(),
        ),
        200,
    )
    .await;

    // An expired token gets 401. (The API refuses to create one, so it goes into the store.)
    let expired = "gpt_expired0000000000000000000000000000000000000000000000000000000";
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    store
        .create_project_token(&gantry_store::NewProjectToken {
            project_id: alpha_id,
            name: "old".into(),
            token_hash: sha256_hex(expired),
            created_at: now - 10_000,
            expires_at: Some(now - 1_000),
            read_only: false,
        })
        .await
        .unwrap();
    let msg = refused(
        with_bearer(
            &app,
            Method::GET,
            "/api/v1/projects/alpha/pipelines",
            expired,
        ),
        401,
        "expired token",
    )
    .await;
    assert!(msg.contains("expired"), "{msg}");
    refused(
        with_bearer(
            &app,
            Method::GET,
            "/api/v1/projects/alpha/pipelines",
            "gpt_nope",
        ),
        401,
        "unknown token",
    )
    .await;

    // Bad requests.
    for (body, what) in [
        (json!({"name": ""}), "empty name"),
        (json!({"name": "x", "expires_at": "soon"}), "bad time"),
        (json!({"name": "x", "expires_at": "2001-01-01"}), "past"),
        (
            json!({"name": "x", "expires_at": "2001-02-30T00:00:00Z"}),
            "no such day",
        ),
        (json!({"expires_at": "2999-01-01"}), "no name"),
    ] {
        refused(
            app.post("/api/v1/projects/alpha/tokens").json(&body),
            400,
            what,
        )
        .await;
    }
    refused(
        app.post("/api/v1/projects/nope/tokens")
            .json(&json!({"name": "x"})),
        404,
        "no such project",
    )
    .await;
    refused(
        app.get("/api/v1/projects/nope/tokens"),
        404,
        "no such project",
    )
    .await;
    // A token of alpha cannot be revoked through another project.
    app.project("beta", json!({})).await;
    refused(
        app.client
            .delete(format!(
                "{}/api/v1/projects/beta/tokens/{}",
                app.url, second["id"]
            ))
            .bearer_auth(crate::common::ADMIN),
        404,
        "another project's token",
    )
    .await;
    assert_eq!(
        app.json("/api/v1/projects/alpha/tokens")
            .await
            .as_array()
            .unwrap()
            .len(),
        2,
        "the second token and the expired one"
    );
}
both!(project_token_lifecycle);

async fn a_token_of_scope_read_looks_and_changes_nothing(b: Backend) {
    let app = spawn(b).await;
    app.commit(&[(".gitlab-ci.yml", PIPELINE)]);
    app.project("alpha", json!({})).await;

    // The scope is given, defaults to `write`, and the older `read_only` still says `read`.
    let reader = create_token(&app, "alpha", json!({"name": "viewer", "scope": "read"})).await;
    assert_eq!(reader["scope"], "read", "{reader}");
    assert_eq!(reader["read_only"], true, "{reader}");
    let writer = create_token(&app, "alpha", json!({"name": "ci"})).await;
    assert_eq!(writer["scope"], "write", "{writer}");
    let old = create_token(&app, "alpha", json!({"name": "old", "read_only": true})).await;
    assert_eq!(old["scope"], "read", "{old}");
    let alike = json!({"name": "alike", "read_only": false, "scope": "write"});
    assert_eq!(create_token(&app, "alpha", alike).await["scope"], "write");
    let list = app.json("/api/v1/projects/alpha/tokens").await;
    let scopes: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["scope"].as_str().unwrap()))
        .collect();
    assert_eq!(
        scopes,
        [
            ("viewer", "read"),
            ("ci", "write"),
            ("old", "read"),
            ("alike", "write")
        ]
    );
    for (body, want) in [
        (
            json!({"name": "x", "scope": "write", "read_only": true}),
            "scope `write` and read_only `true` disagree: give `scope` alone",
        ),
        (
            json!({"name": "x", "scope": "read", "read_only": false}),
            "scope `read` and read_only `false` disagree: give `scope` alone",
        ),
        (
            json!({"name": "x", "scope": "admin"}),
            "unknown variant `admin`, expected `read` or `write`",
        ),
    ] {
        let msg = refused(
            app.post("/api/v1/projects/alpha/tokens").json(&body),
            400,
            want,
        )
        .await;
        assert!(msg.contains(want), "{msg}");
    }

    // It reads the pipeline, and every change is refused with what it cannot do.
    let reader = reader["token"].as_str().unwrap().to_string();
    let writer = writer["token"].as_str().unwrap().to_string();
    let id = trigger(&app, "alpha", &writer).await;
    let p = app.pipeline_status(id, "pending").await;
    let (build, deploy) = (job_id(&p, "build"), job_id(&p, "deploy"));
    send(
        with_bearer(
            &app,
            Method::GET,
            &format!("/api/v1/pipelines/{id}"),
            &reader,
        ),
        200,
    )
    .await;
    for (path, want) in [
        (
            format!("/api/v1/pipelines/{id}/cancel"),
            "this token's scope is read: it cannot cancel a pipeline",
        ),
        (
            format!("/api/v1/jobs/{build}/retry"),
            "this token's scope is read: it cannot retry a job",
        ),
        (
            format!("/api/v1/jobs/{deploy}/play"),
            "this token's scope is read: it cannot play a job",
        ),
        (
            "/api/v1/projects/alpha/environments/production/rollback".to_string(),
            "this token's scope is read: it cannot roll back an environment",
        ),
        (
            "/api/v1/projects/alpha/pipelines".to_string(),
            "this token's scope is read: it cannot trigger a pipeline",
        ),
        (
            "/api/v1/projects/alpha/variables".to_string(),
            "this needs the admin token; a project token cannot do it",
        ),
    ] {
        let msg = refused(
            with_private(&app, Method::POST, &path, &reader).json(&json!({
                "key": "K", "value": "v", "masked": false, "protected": false,
                "environment_scope": "*"
            })),
            403,
            &path,
        )
        .await;
        assert_eq!(msg, want, "{path}");
    }
    assert_eq!(
        app.json(&format!("/api/v1/pipelines/{id}")).await["status"],
        "pending"
    );
    // The same pipeline, canceled by a token of scope `write`.
    send(
        with_private(
            &app,
            Method::POST,
            &format!("/api/v1/pipelines/{id}/cancel"),
            &writer,
        ),
        200,
    )
    .await;
}
both!(a_token_of_scope_read_looks_and_changes_nothing);

#[tokio::test]
async fn the_openapi_document_names_the_token_scope() {
    let app = spawn(Backend::Sqlite).await;
    let doc = app.json("/api/v1/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["TokenScope"]["enum"], json!(["read", "write"]));
    for name in ["NewProjectToken", "ProjectToken", "CreatedProjectToken"] {
        let props = &schemas[name]["properties"];
        assert_eq!(props["read_only"]["deprecated"], true, "{name}: {props}");
        let scope = props["scope"].to_string();
        assert!(
            scope.contains("#/components/schemas/TokenScope"),
            "{name}: {scope}"
        );
    }
    for name in ["ProjectToken", "CreatedProjectToken"] {
        let required = schemas[name]["required"].as_array().unwrap();
        assert!(required.contains(&json!("scope")), "{name}: {required:?}");
    }
}

/// A client that follows no redirects, so that the answers of sign-in can be seen.
fn browser_like() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `Set-Cookie` headers of `r` that set `name`.
fn set_cookies(r: &reqwest::Response, name: &str) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
        .collect()
}

/// `GET /signin`: the pre-session cookie's `name=value` and the form's `csrf`.
async fn signin_form(app: &App, client: &reqwest::Client) -> (String, String) {
    let r = send(client.get(format!("{}/signin", app.url)), 200).await;
    let cookies = set_cookies(&r, "gantry_signin");
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let cookie = &cookies[0];
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/signin", "Max-Age="] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let page = r.text().await.unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no csrf in the form: {page}"));
    (
        cookie.split(';').next().unwrap().to_string(),
        csrf.to_string(),
    )
}

async fn sign_in_needs_the_site_s_own_form(b: Backend) {
    let app = spawn(b).await;
    app.commit(&[(".gitlab-ci.yml", PIPELINE)]);
    app.project("alpha", json!({})).await;
    let reader = create_token(&app, "alpha", json!({"name": "viewer", "scope": "read"})).await;
    let reader = reader["token"].as_str().unwrap().to_string();
    let client = browser_like();
    let post = |cookie: Option<&str>, body: String| {
        let mut req = client
            .post(format!("{}/signin", app.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req
    };
    let (pre, csrf) = signin_form(&app, &client).await;
    let (other_pre, other_csrf) = signin_form(&app, &client).await;
    assert_ne!(pre, other_pre);
    let body = |csrf: &str| format!("token={reader}&csrf={csrf}");

    // Refused: no pre-session, no form token, another pre-session's form token, and a browser
    // that says the form came from another site.
    for (req, what) in [
        (post(None, format!("token={reader}")), "nothing"),
        (post(None, body(&csrf)), "no pre-session"),
        (post(Some(&pre), format!("token={reader}")), "no form token"),
        (post(Some(&pre), body(&other_csrf)), "another form's token"),
        (post(Some(&other_pre), body(&csrf)), "another pre-session"),
        (
            post(Some(&pre), body(&csrf)).header("sec-fetch-site", "cross-site"),
            "a cross-site form",
        ),
        (
            post(Some(&pre), body(&csrf)).header("sec-fetch-site", "same-site"),
            "a same-site form",
        ),
        (
            post(Some(&pre), body(&csrf)).header("origin", "https://evil.example"),
            "another origin",
        ),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 403, "{what}");
        assert!(set_cookies(&r, "gantry_session").is_empty(), "{what}");
        let page = r.text().await.unwrap();
        assert!(page.contains("reload the page"), "{what}: {page}");
    }

    // The site's own form signs in, from the same origin as a browser says it.
    let origin = app.url.trim_end_matches('/').to_string();
    let r = post(Some(&pre), body(&csrf))
        .header("sec-fetch-site", "same-origin")
        .header("origin", &origin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    let session = set_cookies(&r, "gantry_session");
    assert_eq!(session.len(), 1, "{session:?}");
    assert!(session[0].contains("HttpOnly") && session[0].contains("SameSite=Strict"));
    let gone = set_cookies(&r, "gantry_signin");
    assert!(gone.len() == 1 && gone[0].contains("Max-Age=0"), "{gone:?}");
    // A wrong token with a good form is told so.
    let r = post(
        Some(&other_pre),
        format!("token=gpt_nope&csrf={other_csrf}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("not known"));

    // The session shows its token's scope beside the sign-out.
    let page = send(
        client
            .get(format!("{}/", app.url))
            .header("cookie", session[0].split(';').next().unwrap()),
        200,
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(
        page.contains("scope <span class=\"scope\">read</span> (read only)"),
        "{page}"
    );
}
both!(sign_in_needs_the_site_s_own_form);
