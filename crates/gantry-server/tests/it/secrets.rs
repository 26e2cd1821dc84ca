//! Secrets at rest (issue 16, finding 8): webhook secrets, variable values and forge tokens are
//! encrypted in the database under the server's secret key; the server still uses them, a restart
//! with the same key reads them, a wrong key stops the server with a clear error, and what an older
//! server stored in plaintext is read and encrypted at startup.

use std::os::unix::fs::PermissionsExt as _;

use reqwest::Method;
use reqwest::Response;
use serde_json::{Value, json};

use crate::both;
use crate::common::{App, Backend, spawn, spawn_with};

const WEBHOOK_SECRET: &str = "whsec-plaintext-4f1c";
const MASKED: &str = "masked-plaintext-9d2e";
const PROTECTED: &str = "protected-plaintext-77ab";
const PLAIN_VAR: &str = "plain-var-plaintext-5e6f";
const FORGE_TOKEN: &str = "forge-token-plaintext-c3d0";
/// What appears nowhere in the database. (A variable neither masked nor protected is copied into
/// the rows of the pipelines that get it, as the rest of a pipeline's variables are.)
const SECRETS: [&str; 4] = [WEBHOOK_SECRET, MASKED, PROTECTED, FORGE_TOKEN];

/// The settings of the project under test, as the API takes them.
fn settings() -> Value {
    json!({
        "webhook_secret": WEBHOOK_SECRET,
        "variables": [
            {"key": "DEPLOY_TOKEN", "value": MASKED, "masked": true},
            {"key": "REGION", "value": PROTECTED, "protected": true},
            {"key": "COLOR", "value": PLAIN_VAR},
        ],
        // A forge whose statuses go nowhere: only its token matters here.
        "forge": {"kind": "gitlab", "api_url": "http://127.0.0.1:9", "token": FORGE_TOKEN, "project": "a/b"},
    })
}

/// A GitLab push of `sha` to `main`, signed with `token`.
async fn push(app: &App, sha: &str, token: &str, uuid: &str) -> Response {
    app.request(Method::POST, "/api/v1/projects/demo/hooks/gitlab")
        .header("X-Gitlab-Token", token)
        .header("X-Gitlab-Event", "Push Hook")
        .header("X-Gitlab-Event-UUID", uuid)
        .json(&json!({
            "object_kind": "push",
            "ref": "refs/heads/main",
            "before": "0000000000000000000000000000000000000000",
            "after": sha,
        }))
        .send()
        .await
        .unwrap()
}

/// Every byte the database holds for the tests' tables: the SQLite files as they are on disk (the
/// database, its WAL), or every row of PostgreSQL's tables as text.
async fn raw_database(app: &App) -> Vec<u8> {
    if app.database_url.starts_with("sqlite") {
        let mut all = Vec::new();
        for f in ["gantry.db", "gantry.db-wal"] {
            if let Ok(bytes) = std::fs::read(app.config.data_dir.join(f)) {
                all.extend(bytes);
            }
        }
        assert!(!all.is_empty(), "no SQLite file in the data dir");
        all
    } else {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&app.database_url)
            .await
            .unwrap();
        let mut all = Vec::new();
        for table in ["projects", "deliveries", "pipelines", "jobs"] {
            let text: String = sqlx::query_scalar(&format!(
                "SELECT coalesce(string_agg(t::text, ' '), '') FROM {table} t"
            ))
            .fetch_one(&mut conn)
            .await
            .unwrap();
            all.extend(text.into_bytes());
        }
        all
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Pushes `sha` to `main` (a protected branch) with the project's webhook secret, then takes the
/// pipeline's job as an agent: answers the values of `DEPLOY_TOKEN`, `REGION` and `COLOR` that
/// the job was given.
async fn job_variable(app: &App, sha: &str, uuid: &str) -> [String; 3] {
    let r = push(app, sha, "wrong-secret", &format!("{uuid}-wrong")).await;
    assert_eq!(r.status(), 401, "a wrong webhook secret is refused");
    let r = push(app, sha, WEBHOOK_SECRET, uuid).await;
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let accepted: Value = r.json().await.unwrap();
    let d = app.delivery("demo", accepted["id"].as_i64().unwrap()).await;
    assert_eq!(d["status"], "created", "{d}");
    let agent = app.register(&format!("agent-{uuid}"), &[]).await;
    let spec = app.take(&agent, 5000).await.expect("a job");
    let get = |key: &str| {
        spec["plan"]["cli_variables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["key"] == key)
            .and_then(|v| v["value"].as_str())
            .unwrap_or_else(|| panic!("{key} is not handed to the job"))
            .to_string()
    };
    [get("DEPLOY_TOKEN"), get("REGION"), get("COLOR")]
}

/// What [`job_variable`] answers when the job gets every variable.
fn given() -> [String; 3] {
    [MASKED, PROTECTED, PLAIN_VAR].map(String::from)
}

async fn secrets_are_encrypted_at_rest(b: Backend) {
    let mut app = spawn(b).await;
    let sha = app.commit(&[(".gitlab-ci.yml", "job:\n  script: [echo]\n")]);
    let created = app.project("demo", settings()).await;
    assert_eq!(created["has_webhook_secret"], true);

    // The server verifies webhooks and hands the variable out.
    assert_eq!(job_variable(&app, &sha, "first").await, given());

    // Nothing in the database shows a secret.
    let raw = raw_database(&app).await;
    for plain in SECRETS {
        assert!(!contains(&raw, plain), "`{plain}` is stored in plaintext");
    }
    let store = gantry_store::connect(&app.database_url).await.unwrap();
    let stored = store.project("demo").await.unwrap().unwrap().spec;
    assert!(stored.contains("enc:v1:"), "{stored}");
    assert!(!stored.contains(PLAIN_VAR), "{stored}");
    assert!(
        stored.contains("DEPLOY_TOKEN"),
        "names stay readable: {stored}"
    );

    // A restart with the same key (the generated key file) reads them.
    app.stop().await;
    let key_file = app.config.data_dir.join("secret-key");
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600,
        "the generated key file is private"
    );
    let server = gantry_server::serve(app.config.clone()).await.unwrap();
    app.url = server.url();
    app.server = Some(server);
    let sha = app.commit(&[("README", "second\n")]);
    assert_eq!(job_variable(&app, &sha, "second").await, given());
    app.stop().await;

    // Another key: the server does not start, and says why.
    let mut wrong = app.config.clone();
    wrong.secret_key = Some(gantry_server::Secret("11".repeat(32)));
    let err = match gantry_server::serve(wrong).await {
        Ok(_) => panic!("a server with the wrong key started"),
        Err(e) => format!("{e:#}"),
    };
    for part in [
        "cannot decrypt webhook_secret of project `demo`",
        "GANTRY_SECRET_KEY",
        "not the one the secrets were encrypted with",
    ] {
        assert!(err.contains(part), "`{part}` not in: {err}");
    }
}
both!(secrets_are_encrypted_at_rest);

async fn plaintext_secrets_of_an_older_server_are_read_and_encrypted(b: Backend) {
    let mut app = spawn(b).await;
    let sha = app.commit(&[(".gitlab-ci.yml", "job:\n  script: [echo]\n")]);
    app.stop().await;
    // A project as a server older than encryption at rest stored it.
    let mut spec = settings();
    spec["repo_url"] = json!(app.repo.to_str().unwrap());
    spec["default_branch"] = json!("main");
    let store = gantry_store::connect(&app.database_url).await.unwrap();
    store
        .create_project("demo", &spec.to_string(), 0)
        .await
        .unwrap();
    drop(store);

    let server = gantry_server::serve(app.config.clone()).await.unwrap();
    app.url = server.url();
    app.server = Some(server);
    // Encrypted at startup, before any request.
    let store = gantry_store::connect(&app.database_url).await.unwrap();
    let stored = store.project("demo").await.unwrap().unwrap().spec;
    for plain in SECRETS.iter().chain([&PLAIN_VAR]) {
        assert!(!stored.contains(plain), "`{plain}` still in {stored}");
    }
    assert!(stored.contains("enc:v1:"), "{stored}");
    // And still what the project uses.
    assert_eq!(job_variable(&app, &sha, "upgraded").await, given());
    let api = app.json("/api/v1/projects/demo").await;
    assert_eq!(api["has_webhook_secret"], true);
    let vars = api["variables"].as_array().unwrap();
    assert_eq!(vars[2]["value"], PLAIN_VAR, "{api}");
}
both!(plaintext_secrets_of_an_older_server_are_read_and_encrypted);

/// A server with secret key `key`, a commit and project `demo` (with its secrets), then stopped;
/// answers the server and the commit.
async fn stopped_with_key(b: Backend, key: &str) -> (App, String) {
    let mut app = spawn_with(b, |c| {
        c.secret_key = Some(gantry_server::Secret(key.to_string()));
    })
    .await;
    let sha = app.commit(&[(".gitlab-ci.yml", "job:\n  script: [echo]\n")]);
    app.project("demo", settings()).await;
    app.stop().await;
    (app, sha)
}

async fn the_key_comes_from_the_environment_or_a_file(b: Backend) {
    let hex_key = "ab".repeat(32);
    let (mut app, sha) = stopped_with_key(b, &hex_key).await;
    assert!(
        !app.config.data_dir.join("secret-key").exists(),
        "no key is generated when one is given"
    );

    // The same key, as base64 in a file.
    let file = app.config.data_dir.join("../key.b64");
    std::fs::write(&file, "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n").unwrap();
    let mut config = app.config.clone();
    config.secret_key = None;
    config.secret_key_file = Some(file.clone());
    let server = gantry_server::serve(config.clone()).await.unwrap();
    app.url = server.url();
    app.server = Some(server);
    assert_eq!(job_variable(&app, &sha, "from-file").await, given());
    app.stop().await;

    // A key that is not 32 bytes is refused with a clear error.
    std::fs::write(&file, "c2hvcnQ=\n").unwrap();
    let err = match gantry_server::serve(config).await {
        Ok(_) => panic!("a server with a 5-byte key started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("invalid secret key file"), "{err}");
    assert!(
        err.contains("the key is 5 bytes: it must be 32 bytes"),
        "{err}"
    );
}
both!(the_key_comes_from_the_environment_or_a_file);

async fn the_key_is_rotated_with_the_previous_one(b: Backend) {
    let (old, new) = ("0a".repeat(32), "0b".repeat(32));
    let (mut app, sha) = stopped_with_key(b, &old).await;

    // The new key alone does not open what the old one encrypted.
    let mut config = app.config.clone();
    config.secret_key = Some(gantry_server::Secret(new.clone()));
    assert!(gantry_server::serve(config.clone()).await.is_err());
    // With the previous key as well, the server starts and encrypts everything again.
    config.secret_key_previous = Some(gantry_server::Secret(old.clone()));
    let server = gantry_server::serve(config.clone()).await.unwrap();
    app.url = server.url();
    app.server = Some(server);
    assert_eq!(job_variable(&app, &sha, "rotating").await, given());
    app.stop().await;

    // Now the new key alone reads them, and the old one no longer does.
    config.secret_key_previous = None;
    let server = gantry_server::serve(config.clone()).await.unwrap();
    app.url = server.url();
    app.server = Some(server);
    let sha = app.commit(&[("README", "rotated\n")]);
    assert_eq!(job_variable(&app, &sha, "rotated").await, given());
    app.stop().await;
    config.secret_key = Some(gantry_server::Secret(old));
    let err = match gantry_server::serve(config).await {
        Ok(_) => panic!("the old key still opens the secrets"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("cannot decrypt"), "{err}");
}
both!(the_key_is_rotated_with_the_previous_one);
