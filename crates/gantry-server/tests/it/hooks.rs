//! Webhooks: signatures per forge, malformed and oversized bodies, ignored events, duplicates.

use hmac::{Hmac, Mac as _};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::both;
use crate::common::{App, Backend, SECRET, send, spawn_with};

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn push_body(sha: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ref": "refs/heads/main",
        "before": "0000000000000000000000000000000000000000",
        "after": sha,
        "pusher": {"name": "Jane", "email": "jane@example.com"},
    }))
    .unwrap()
}

async fn hook(
    app: &App,
    forge: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> reqwest::Response {
    let mut r = app
        .request(
            Method::POST,
            &format!("/api/v1/projects/demo/hooks/{forge}"),
        )
        .header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(body).send().await.unwrap()
}

async fn signatures(b: Backend) {
    let app = spawn_with(b, |c| c.webhook_body_limits.github = 64 * 1024).await;
    let sha = app.commit(&[(".gitlab-ci.yml", "job:\n  script: [echo hi]\n")]);
    app.project("demo", json!({})).await;
    let body = push_body(&sha);

    // GitLab: the token.
    let gl = |token: &str, id: &str| {
        vec![
            ("X-Gitlab-Token", token.to_string()),
            ("X-Gitlab-Event", "Push Hook".to_string()),
            ("X-Gitlab-Event-UUID", id.to_string()),
        ]
    };
    let r = hook(&app, "gitlab", &gl("wrong", "gl-1"), body.clone()).await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].is_string());
    let r = hook(
        &app,
        "gitlab",
        &[("X-Gitlab-Event", "Push Hook".into())],
        body.clone(),
    )
    .await;
    assert_eq!(r.status(), 401, "no token");
    let r = hook(&app, "gitlab", &gl(SECRET, "gl-1"), body.clone()).await;
    assert_eq!(r.status(), 202);
    let first: Value = r.json().await.unwrap();
    assert_eq!(first["duplicate"], false);
    let r = hook(&app, "gitlab", &gl(SECRET, "gl-1"), body.clone()).await;
    assert_eq!(r.status(), 202);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["id"], first["id"]);

    // GitHub: HMAC of the raw body.
    let sig = format!("sha256={}", hmac_hex(SECRET, &body));
    let gh = |sig: &str, event: &str, id: &str| {
        vec![
            ("X-Hub-Signature-256", sig.to_string()),
            ("X-GitHub-Event", event.to_string()),
            ("X-GitHub-Delivery", id.to_string()),
        ]
    };
    let forged = format!("sha256={}", hmac_hex("not-the-secret", &body));
    let r = hook(&app, "github", &gh(&forged, "push", "gh-1"), body.clone()).await;
    assert_eq!(r.status(), 401);
    let r = hook(
        &app,
        "github",
        &gh("sha256=zz", "push", "gh-1"),
        body.clone(),
    )
    .await;
    assert_eq!(r.status(), 401);
    let r = hook(&app, "github", &gh(&sig, "push", "gh-1"), body.clone()).await;
    assert_eq!(r.status(), 202);
    // The signature covers the body: a changed body with the old signature is refused.
    let mut tampered = body.clone();
    tampered.push(b' ');
    let r = hook(&app, "github", &gh(&sig, "push", "gh-2"), tampered).await;
    assert_eq!(r.status(), 401);
    // Ignored event: 204.
    let ping = br#"{"zen":"hi"}"#.to_vec();
    let psig = format!("sha256={}", hmac_hex(SECRET, &ping));
    let r = hook(&app, "github", &gh(&psig, "ping", "gh-3"), ping).await;
    assert_eq!(r.status(), 204);
    // Malformed JSON, correctly signed: 400.
    let bad = b"{\"ref\": ".to_vec();
    let bsig = format!("sha256={}", hmac_hex(SECRET, &bad));
    let r = hook(&app, "github", &gh(&bsig, "push", "gh-4"), bad).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].is_string());
    // Over the limit: 413.
    let huge = vec![b' '; 100 * 1024];
    let r = hook(&app, "github", &gh(&sig, "push", "gh-5"), huge).await;
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].is_string());

    // Gitea: hex HMAC without a prefix.
    let gt = |sig: &str, id: &str| {
        vec![
            ("X-Gitea-Signature", sig.to_string()),
            ("X-Gitea-Event", "push".to_string()),
            ("X-Gitea-Delivery", id.to_string()),
        ]
    };
    let r = hook(
        &app,
        "gitea",
        &gt(&hmac_hex("nope", &body), "gt-1"),
        body.clone(),
    )
    .await;
    assert_eq!(r.status(), 401);
    let r = hook(
        &app,
        "gitea",
        &gt(&hmac_hex(SECRET, &body), "gt-1"),
        body.clone(),
    )
    .await;
    assert_eq!(r.status(), 202);

    // An unknown project: 404; an unknown forge: 404.
    send(
        app.request(Method::POST, "/api/v1/projects/nope/hooks/gitlab")
            .body("{}"),
        404,
    )
    .await;
    send(
        app.request(Method::POST, "/api/v1/projects/demo/hooks/bitbucket")
            .body("{}"),
        404,
    )
    .await;

    // Three accepted deliveries of one push (the same ref, before and after): the first is
    // stored, the others are replays of it (issue 16, finding 12), as is the repeated id.
    let list = app.json("/api/v1/projects/demo/deliveries").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}
both!(signatures);
