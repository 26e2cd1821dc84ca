//! Webhook intake against hostile clients (issue 16, findings 2, 4 and 12): what needs no body is
//! checked before the body is read; slow and idle connections are cut; replayed pushes run nothing.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::both;
use crate::common::{App, Backend, SECRET, send_why, spawn_with};

/// The server's `host:port`.
fn addr(app: &App) -> String {
    app.url.trim_start_matches("http://").to_string()
}

/// Sends a request head (and no body, whatever `Content-Length` says) and reads the status line.
/// The timeout only keeps a broken server from hanging the test.
async fn status_without_body(app: &App, head: &str) -> String {
    let mut s = TcpStream::connect(addr(app)).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 12];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut buf))
        .await
        .expect("answered without waiting for the body")
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

fn post_head(path: &str, headers: &[&str], length: u64) -> String {
    let mut h = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n"
    );
    for x in headers {
        h.push_str(x);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    h
}

async fn checks_before_the_body(b: Backend) {
    let app = spawn_with(b, |c| c.webhook_body_limits.gitea = 1000).await;
    app.project("demo", json!({})).await;
    let huge = 5_000_000_000;
    // An unknown project: 404, though the body never comes.
    for forge in ["gitlab", "github", "gitea"] {
        let head = post_head(
            &format!("/api/v1/projects/nope/hooks/{forge}"),
            &["x-hub-signature-256: sha256=00", "x-gitlab-token: x"],
            huge,
        );
        assert_eq!(
            status_without_body(&app, &head).await,
            "HTTP/1.1 404",
            "{forge}"
        );
    }
    // No signature header: 401, the body not awaited.
    for forge in ["github", "gitea"] {
        let head = post_head(
            &format!("/api/v1/projects/demo/hooks/{forge}"),
            &["x-github-event: push"],
            huge,
        );
        assert_eq!(
            status_without_body(&app, &head).await,
            "HTTP/1.1 401",
            "{forge}"
        );
    }
    // GitLab's token does not depend on the body: a wrong one is refused before it.
    let head = post_head(
        "/api/v1/projects/demo/hooks/gitlab",
        &["x-gitlab-token: wrong", "x-gitlab-event: Push Hook"],
        huge,
    );
    assert_eq!(status_without_body(&app, &head).await, "HTTP/1.1 401");
    let head = post_head("/api/v1/projects/demo/hooks/gitlab", &[], huge);
    assert_eq!(status_without_body(&app, &head).await, "HTTP/1.1 401");
    // Signed, but declared over the forge's limit: 413 before the body.
    let head = post_head(
        "/api/v1/projects/demo/hooks/github",
        &["x-hub-signature-256: sha256=00"],
        huge,
    );
    assert_eq!(status_without_body(&app, &head).await, "HTTP/1.1 413");
    let head = post_head(
        "/api/v1/projects/demo/hooks/gitea",
        &["x-gitea-signature: 00"],
        1001,
    );
    assert_eq!(status_without_body(&app, &head).await, "HTTP/1.1 413");
    // A chunked body that grows over the limit: 413 too.
    let chunks = futures_util::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 500]))),
    );
    let r = app
        .request(Method::POST, "/api/v1/projects/demo/hooks/gitea")
        .header("x-gitea-signature", "00")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    if let Ok(r) = r {
        // The server may also close the connection before the client has sent it all.
        assert_eq!(r.status(), 413);
    }
    // The GitLab limit is its own: a body under it gets as far as the JSON check.
    let r = app
        .request(Method::POST, "/api/v1/projects/demo/hooks/gitlab")
        .header("x-gitlab-token", SECRET)
        .header("x-gitlab-event", "Push Hook")
        .body(vec![b'{'; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
both!(checks_before_the_body);

/// Reads until the server closes the connection (end of stream or reset), within a guard that
/// only keeps a broken server from hanging the test.
async fn closed_by_server(s: &mut TcpStream) {
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut sink))
        .await
        .expect("the server closes the connection");
}

/// Sends a whole `GET /healthz` on `s` and reads its answer.
async fn healthz_on(s: &mut TcpStream) -> String {
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("\"ok\"}") {
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
            .await
            .expect("answered")
            .unwrap();
        assert!(n > 0, "closed before the answer");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

// The store plays no part: SQLite only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_and_health_answers_meanwhile() {
    let app = spawn_with(Backend::Sqlite, |c| {
        c.header_read_timeout = Duration::from_secs(2);
        c.idle_timeout = Duration::from_secs(3600);
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut s = TcpStream::connect(addr(&app)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    send_why(
        app.anon("/healthz"),
        200,
        "the server answers while 500 heads dawdle",
    )
    .await;
    // Each partial head is cut by the server.
    for s in &mut slow {
        closed_by_server(s).await;
    }
    // A kept-alive connection may stay idle longer than the header timeout.
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    assert!(healthz_on(&mut s).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(healthz_on(&mut s).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let app = spawn_with(Backend::Sqlite, |c| {
        c.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    assert!(healthz_on(&mut s).await.starts_with("HTTP/1.1 200"));
    closed_by_server(&mut s).await;
}

/// A signed GitHub push of `body` under delivery id `id`.
async fn github_push(app: &App, body: &[u8], id: &str) -> reqwest::Response {
    use hmac::{Hmac, Mac as _};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    let sig = hex::encode(mac.finalize().into_bytes());
    app.request(Method::POST, "/api/v1/projects/demo/hooks/github")
        .header("content-type", "application/json")
        .header("x-hub-signature-256", format!("sha256={sig}"))
        .header("x-github-event", "push")
        .header("x-github-delivery", id)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

async fn deliveries(app: &App) -> Vec<serde_json::Value> {
    app.json("/api/v1/projects/demo/deliveries?per_page=100")
        .await
        .as_array()
        .unwrap()
        .clone()
}

async fn replayed_pushes_run_nothing(b: Backend) {
    let app = spawn_with(b, |c| c.push_dedupe_window = Duration::from_secs(2)).await;
    let sha = app.commit(&[(".gitlab-ci.yml", "job:\n  script: [echo hi]\n")]);
    app.project("demo", json!({})).await;
    let push = |after: &str| {
        serde_json::to_vec(&json!({
            "ref": "refs/heads/main",
            "before": "1111111111111111111111111111111111111111",
            "after": after,
            "pusher": {"name": "Jane"},
        }))
        .unwrap()
    };
    let body = push(&sha);
    let r = github_push(&app, &body, "real").await;
    assert_eq!(r.status(), 202);
    let first: serde_json::Value = r.json().await.unwrap();
    assert_eq!(first["duplicate"], false);
    // The same signed body under new delivery ids: duplicates of the first, stored nowhere.
    for id in ["replay-1", "replay-2"] {
        let r = github_push(&app, &body, id).await;
        assert_eq!(r.status(), 202);
        let reason = r.headers()["x-gantry-reason"].to_str().unwrap().to_string();
        assert!(reason.contains(&first["id"].to_string()), "{reason}");
        let again: serde_json::Value = r.json().await.unwrap();
        assert_eq!(again["duplicate"], true, "{id}");
        assert_eq!(again["id"], first["id"], "{id} names the original");
    }
    assert_eq!(deliveries(&app).await.len(), 1);
    // Another push of the same ref is a delivery of its own.
    let other = app.commit(&[("x", "y")]);
    let r = github_push(&app, &push(&other), "next").await;
    let next: serde_json::Value = r.json().await.unwrap();
    assert_eq!(next["duplicate"], false);
    assert_eq!(deliveries(&app).await.len(), 2);
    // One pipeline for the first push, whatever the replays did.
    let d = app.delivery("demo", first["id"].as_i64().unwrap()).await;
    assert_eq!(d["status"], "created", "{d}");
    // After the window, the same push is a new delivery again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = github_push(&app, &body, "much-later").await;
    let late: serde_json::Value = r.json().await.unwrap();
    assert_eq!(late["duplicate"], false);
    assert_ne!(late["id"], first["id"]);
}
both!(replayed_pushes_run_nothing);
