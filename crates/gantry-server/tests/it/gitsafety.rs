//! The server's git against hostile repositories: one that accepts a connection and never
//! answers holds up no other project and is stopped at the timeout with every process it
//! started; credentials in a `repo_url` reach git in its environment only, and are shown nowhere.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::both;
use crate::common::{Backend, eventually, git, spawn_with};

const CI: &str = "job:\n  script: [echo hi]\n";

/// A server that accepts connections and answers nothing until released; after that, it closes
/// every connection at once. Answers its URL, how many connections it accepted, and the release.
async fn silent_server() -> (String, Arc<Mutex<usize>>, tokio::sync::watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/repo.git", listener.local_addr().unwrap());
    let accepted = Arc::new(Mutex::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            *count.lock().unwrap() += 1;
            let mut released = released.clone();
            tokio::spawn(async move {
                let _ = released.wait_for(|r| *r).await;
                drop(conn);
            });
        }
    });
    (url, accepted, release)
}

/// The command lines of the processes running now that contain `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        if line.contains(needle) {
            found.push(line);
        }
    }
    found
}

async fn accepted_delivery(r: reqwest::Response) -> i64 {
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let v: Value = r.json().await.unwrap();
    v["id"].as_i64().unwrap()
}

async fn a_hanging_repository_holds_up_no_other_project(backend: Backend) {
    let app = spawn_with(backend, |c| c.delivery_max_attempts = 1).await;
    let sha = app.commit(&[(".gitlab-ci.yml", CI)]);
    let (url, accepted, release) = silent_server().await;
    app.project("hung", json!({ "repo_url": url })).await;
    app.project("fine", json!({})).await;
    let hung = accepted_delivery(app.push("hung", "main", &sha).await).await;
    // The hung project's fetch is under way and waits for an answer.
    eventually(|| async { (*accepted.lock().unwrap() > 0).then_some(()) }).await;
    let fine = accepted_delivery(app.push("fine", "main", &sha).await).await;
    let d = app.delivery("fine", fine).await;
    assert_eq!(d["status"], "created", "{d}");
    assert!(d["pipeline_id"].as_i64().is_some(), "{d}");
    let list = app.json("/api/v1/projects/hung/deliveries").await;
    let h = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == hung)
        .unwrap();
    assert_eq!(h["status"], "pending", "still fetching: {h}");
    // Once the repository closes its connections, the fetch fails like any unreachable one.
    release.send(true).unwrap();
    let d = app.delivery("hung", hung).await;
    assert_eq!(d["status"], "failed", "{d}");
}
both!(a_hanging_repository_holds_up_no_other_project);

async fn a_hanging_fetch_is_stopped_at_the_timeout_with_its_helpers(backend: Backend) {
    let app = spawn_with(backend, |c| {
        c.delivery_max_attempts = 1;
        c.git_timeout = Duration::from_secs(1);
    })
    .await;
    let sha = app.commit(&[(".gitlab-ci.yml", CI)]);
    let (url, accepted, _release) = silent_server().await;
    app.project("hung", json!({ "repo_url": url })).await;
    let hung = accepted_delivery(app.push("hung", "main", &sha).await).await;
    let d = app.delivery("hung", hung).await;
    assert_eq!(d["status"], "failed", "{d}");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("cannot fetch refs/heads/main from {url}"))
            && reason.contains("git fetch did not finish within 1s and was stopped"),
        "{reason}"
    );
    assert!(
        *accepted.lock().unwrap() > 0,
        "the fetch reached the server"
    );
    // Neither git nor its http helper (both name the URL in their arguments) is left, once the
    // kernel has torn down what was sent SIGKILL.
    eventually(|| async { processes_with(&url).is_empty().then_some(()) }).await;
}
both!(a_hanging_fetch_is_stopped_at_the_timeout_with_its_helpers);

const USER: &str = "ci-bot";
const TOKEN: &str = "s3cret-t0ken-42";

/// What the repository's server saw: the `Authorization` headers, and the command lines that held
/// the token (looked at while each request was being answered, that is while git ran).
#[derive(Default)]
struct Seen {
    authorizations: Vec<String>,
    command_lines: Vec<String>,
}

/// Serves the bare repository `root` over git's dumb HTTP protocol to requests that carry
/// [`USER`] and [`TOKEN`]; `401` to the others.
async fn serve_with_basic_auth(root: std::path::PathBuf) -> (String, Arc<Mutex<Seen>>) {
    use base64::Engine as _;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{TOKEN}"))
    );
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (root, record, expected) = (root.clone(), record.clone(), expected.clone());
            tokio::spawn(async move { answer(conn, &root, &record, &expected).await });
        }
    });
    (format!("http://{addr}/repo.git"), seen)
}

async fn answer(mut conn: TcpStream, root: &std::path::Path, seen: &Mutex<Seen>, expected: &str) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
    let auth = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("authorization")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    {
        let mut seen = seen.lock().unwrap();
        seen.authorizations.push(auth.clone());
        let b64 = expected.trim_start_matches("Basic ");
        for needle in [TOKEN, b64] {
            seen.command_lines.extend(processes_with(needle));
        }
    }
    let reply = if auth != expected {
        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
            .as_bytes()
            .to_vec()
    } else {
        // `/repo.git/info/refs?service=...` → the file `info/refs` (a dumb server's answer).
        let file = path.split('?').next().unwrap_or("");
        let file = file.trim_start_matches("/repo.git/");
        match std::fs::read(root.join(file))
            .ok()
            .filter(|_| !file.contains(".."))
        {
            Some(body) => {
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(&body);
                r
            }
            None => {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
            }
        }
    };
    let _ = conn.write_all(&reply).await;
    let _ = conn.shutdown().await;
}

/// The server's log, from a subscriber of this test process's own.
fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        log
    })
    .clone()
}

async fn credentials_in_the_repo_url_are_shown_nowhere(backend: Backend) {
    let log = captured_log();
    let app = spawn_with(backend, |c| c.delivery_max_attempts = 1).await;
    let sha = app.commit(&[(".gitlab-ci.yml", CI)]);
    let served = app._dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    git(
        &served,
        &[
            "clone",
            "-q",
            "--bare",
            app.repo.to_str().unwrap(),
            "repo.git",
        ],
    );
    git(&served.join("repo.git"), &["update-server-info"]);
    let (url, seen) = serve_with_basic_auth(served.join("repo.git")).await;
    let with_token = url.replace("http://", &format!("http://{USER}:{TOKEN}@"));
    app.project("creds", json!({ "repo_url": with_token }))
        .await;

    // The fetch works: the server got the credentials, as a header.
    let ok = app.push_and_wait("creds", &sha).await;
    assert_eq!(ok["status"], "created", "{ok}");
    // A delivery that fails names the repository, without them.
    let missing = "1234567890123456789012345678901234567890";
    let id = accepted_delivery(app.push("creds", "gone", missing).await).await;
    let failed = app.delivery("creds", id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    {
        let seen = seen.lock().unwrap();
        assert!(
            seen.authorizations.iter().any(|a| a.starts_with("Basic ")),
            "{:?}",
            seen.authorizations
        );
        let leaked: std::collections::BTreeSet<&String> = seen.command_lines.iter().collect();
        assert!(leaked.is_empty(), "git's arguments: {leaked:#?}");
    }
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains(&url), "{reason}");

    for d in app
        .json("/api/v1/projects/creds/deliveries")
        .await
        .as_array()
        .unwrap()
    {
        assert!(!d.to_string().contains(TOKEN), "{d}");
    }
    let project = app.json("/api/v1/projects/creds").await;
    assert_eq!(project["repo_url"], url, "{project}");
    let list = app.json("/api/v1/projects").await;
    assert!(list.to_string().contains(&url), "{list}");
    assert!(!list.to_string().contains(TOKEN), "{list}");
    let log = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    assert!(
        log.contains("delivery failed"),
        "the log was captured: {log}"
    );
    assert!(!log.contains(TOKEN), "{log}");
}
both!(credentials_in_the_repo_url_are_shown_nowhere);
