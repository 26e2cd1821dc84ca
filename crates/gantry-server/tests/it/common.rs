//! The harness: a real server on 127.0.0.1:0 over a fresh store (SQLite in a temp dir, or a fresh
//! PostgreSQL database on the server named by GANTRY_TEST_POSTGRES_URL), and real git repositories.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gantry_server::{Config, RunningServer};
use hmac::{Hmac, Mac as _};
use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::{Value, json};
use sha2::Sha256;

pub const ADMIN: &str = "admin-token-for-tests";
pub const REGISTRATION: &str = "registration-token-for-tests";
pub const SECRET: &str = "webhook-secret";

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a test body against both stores.
#[macro_export]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await;
            }
        }
    };
}

pub struct App {
    pub server: Option<RunningServer>,
    pub url: String,
    pub client: Client,
    /// Kept so that the directory lives as long as the server.
    pub _dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub database_url: String,
    pub config: Config,
    /// Drops the PostgreSQL database when the test ends, passed or failed.
    _database: Option<TestDatabase>,
}

/// A test's own PostgreSQL database, dropped with this guard: a test run leaves no databases
/// behind in the cluster it shares with later runs (over 400 had piled up in a local one).
struct TestDatabase {
    admin_url: String,
    name: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot block on a future: a thread of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                use sqlx::Connection as _;
                let mut conn = sqlx::PgConnection::connect(&admin_url).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await?;
                Ok::<_, sqlx::Error>(())
            })
            .map_err(std::io::Error::other)
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) && !std::thread::panicking() {
            panic!("cannot drop the test database {}: {dropped:?}", self.name);
        }
    }
}

/// A fresh PostgreSQL database on the test server: its URL and the guard that drops it.
async fn postgres_database() -> (String, TestDatabase) {
    let base = std::env::var("GANTRY_TEST_POSTGRES_URL").expect(
        "GANTRY_TEST_POSTGRES_URL is not set: start PostgreSQL with `eval \"$(scripts/postgres.sh)\"`",
    );
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("cannot connect to GANTRY_TEST_POSTGRES_URL");
    let name = format!(
        "gantry_server_test_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("cannot create a test database");
    // Replace the database name in the URL (postgres://user@host:port/db?params).
    let (head, params) = match base.split_once('?') {
        Some((h, p)) => (h.to_string(), format!("?{p}")),
        None => (base.clone(), String::new()),
    };
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let head = match head[scheme_end..].find('/') {
        Some(i) => head[..scheme_end + i].to_string(),
        None => head,
    };
    let url = format!("{head}/{name}{params}");
    (
        url,
        TestDatabase {
            admin_url: base,
            name,
        },
    )
}

pub async fn spawn(backend: Backend) -> App {
    spawn_with(backend, |_| {}).await
}

pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> App {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(&dir.path().join("data"), ADMIN, REGISTRATION);
    config.sweep_interval = Duration::from_millis(200);
    config.status_backoff = Duration::from_millis(20);
    let mut database = None;
    if let Backend::Postgres = backend {
        let (url, guard) = postgres_database().await;
        config.database_url = url;
        database = Some(guard);
    }
    tweak(&mut config);
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let server = gantry_server::serve(config.clone()).await.unwrap();
    let url = server.url();
    App {
        server: Some(server),
        url,
        client: Client::new(),
        _dir: dir,
        repo,
        database_url: config.database_url.clone(),
        config,
        _database: database,
    }
}

/// `git` in `dir`, as Jane Doe.
pub fn git_command(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Jane Doe")
        .env("GIT_AUTHOR_EMAIL", "jane@example.com")
        .env("GIT_COMMITTER_NAME", "Jane Doe")
        .env("GIT_COMMITTER_EMAIL", "jane@example.com");
    c
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_command(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl App {
    /// Commits `files` to the test repository's current branch; answers the SHA.
    pub fn commit(&self, files: &[(&str, &str)]) -> String {
        for (name, content) in files {
            let p = self.repo.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        git(&self.repo, &["add", "-A"]);
        git(
            &self.repo,
            &["commit", "-q", "--allow-empty", "-m", "a commit"],
        );
        git(&self.repo, &["rev-parse", "HEAD"])
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path).bearer_auth(ADMIN)
    }

    /// A GET that carries no credentials of its own (health, metrics, what an outsider sends).
    pub fn anon(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    /// A request that carries no credentials of its own: the test adds the ones it checks.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.url))
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.request(Method::POST, path).bearer_auth(ADMIN)
    }

    pub async fn json(&self, path: &str) -> Value {
        let r = self.get(path).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    /// Adds project `name` on the test repository.
    pub async fn project(&self, name: &str, extra: Value) -> Value {
        let mut body = json!({
            "name": name,
            "repo_url": self.repo.to_str().unwrap(),
            "webhook_secret": SECRET,
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let r = send(self.post("/api/v1/projects").json(&body), 201).await;
        r.json().await.unwrap()
    }

    /// A GitLab push of `sha` to `branch`.
    pub async fn push(&self, project: &str, branch: &str, sha: &str) -> Response {
        let body = json!({
            "object_kind": "push",
            "ref": format!("refs/heads/{branch}"),
            "before": "0000000000000000000000000000000000000000",
            "after": sha,
            "user_name": "Jane Doe",
            "user_email": "jane@example.com",
        });
        self.request(
            Method::POST,
            &format!("/api/v1/projects/{project}/hooks/gitlab"),
        )
        .header("X-Gitlab-Token", SECRET)
        .header("X-Gitlab-Event", "Push Hook")
        .header("X-Gitlab-Event-UUID", format!("uuid-{sha}-{branch}"))
        .json(&body)
        .send()
        .await
        .unwrap()
    }

    /// Pushes and waits for the delivery to be processed; answers the delivery.
    pub async fn push_and_wait(&self, project: &str, sha: &str) -> Value {
        let r = self.push(project, "main", sha).await;
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
        let accepted: Value = r.json().await.unwrap();
        self.delivery(project, accepted["id"].as_i64().unwrap())
            .await
    }

    /// Commits `ci` as `.gitlab-ci.yml` and pushes it to project `demo`; answers the pipeline's id.
    pub async fn push_ci(&self, ci: &str) -> i64 {
        let sha = self.commit(&[(".gitlab-ci.yml", ci)]);
        let d = self.push_and_wait("demo", &sha).await;
        d["pipeline_id"].as_i64().unwrap()
    }

    /// Waits until delivery `id` is processed.
    pub async fn delivery(&self, project: &str, id: i64) -> Value {
        eventually(|| async {
            let list = self
                .json(&format!(
                    "/api/v1/projects/{project}/deliveries?per_page=100"
                ))
                .await;
            list.as_array()
                .unwrap()
                .iter()
                .find(|d| d["id"] == id && d["status"] != "pending")
                .cloned()
        })
        .await
    }

    pub async fn pipeline(&self, id: i64) -> Value {
        self.json(&format!("/api/v1/pipelines/{id}")).await
    }

    /// Waits until pipeline `id` has `status`.
    pub async fn pipeline_status(&self, id: i64, status: &str) -> Value {
        eventually(|| async {
            let p = self.pipeline(id).await;
            (p["status"] == status).then_some(p)
        })
        .await
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.unwrap();
        }
    }
}

/// Sends `req` and checks that it answers `status` (a mismatch fails with the body); answers the
/// response.
pub async fn send(req: RequestBuilder, status: u16) -> Response {
    send_why(req, status, "the request").await
}

/// Like [`send`], with `why` the status is expected in a failure.
pub async fn send_why(req: RequestBuilder, status: u16, why: &str) -> Response {
    let r = req.send().await.unwrap();
    if r.status() != status {
        let got = r.status();
        panic!("{why}: answered {got}, not {status}: {:?}", r.text().await);
    }
    r
}

/// The message of the JSON error `r` (its content type is JSON, with an `error` field); `what`
/// names the call in a failure.
pub async fn json_error(r: Response, what: &str) -> String {
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        ct.starts_with("application/json"),
        "{what}: content type {ct}"
    );
    let v: Value = r.json().await.unwrap();
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no `error` in {v}"))
        .to_string()
}

/// Sends `req` and answers the body of its response as text.
pub async fn text_of(req: RequestBuilder) -> String {
    req.send().await.unwrap().text().await.unwrap()
}

/// A tar of one file `name` holding `content`.
pub fn tar_of(name: &str, content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, content).unwrap();
    b.into_inner().unwrap()
}

/// Polls `f` until it answers `Some`, for at most 30 s (a bound for a broken build, not a timing).
pub async fn eventually<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..600 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the condition did not come true within 30 s");
}

/// A registered agent speaking the protocol by hand.
pub struct Agent {
    pub token: String,
}

impl App {
    pub async fn register(&self, name: &str, tags: &[&str]) -> Agent {
        let r = send(
            self.request(Method::POST, "/api/v1/agents/register")
                .json(&json!({
                    "token": REGISTRATION, "name": name, "tags": tags,
                    "executor": "shell", "concurrency": 1, "version": "test",
                })),
            201,
        )
        .await;
        let v: Value = r.json().await.unwrap();
        Agent {
            token: v["token"].as_str().unwrap().to_string(),
        }
    }

    pub fn agent_call(&self, agent: &Agent, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&agent.token)
    }

    /// Asks for a job, waiting up to `wait_ms`; `None` on 204.
    pub async fn take(&self, agent: &Agent, wait_ms: u64) -> Option<Value> {
        let r = self
            .agent_call(
                agent,
                reqwest::Method::POST,
                &format!("/api/v1/agent/jobs/request?wait_ms={wait_ms}"),
            )
            .json(&json!({"running": []}))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => Some(r.json().await.unwrap()),
            204 => None,
            s => panic!("request answered {s}: {:?}", r.text().await),
        }
    }

    /// Uploads `tar` as the artifacts of job `id` (checked to answer 201).
    pub async fn upload_artifacts(&self, agent: &Agent, id: i64, tar: Vec<u8>) {
        let path = format!("/api/v1/agent/jobs/{id}/artifacts");
        send(self.agent_call(agent, Method::PUT, &path).body(tar), 201).await;
    }

    /// Finishes job `id` with `outcome` after sending `log`.
    pub async fn run_job(&self, agent: &Agent, id: i64, log: &str, outcome: &str) -> Value {
        send(
            self.agent_call(
                agent,
                reqwest::Method::PUT,
                &format!("/api/v1/agent/jobs/{id}/log?offset=0"),
            )
            .body(log.to_string()),
            200,
        )
        .await;
        let r = send(
            self.agent_call(
                agent,
                reqwest::Method::POST,
                &format!("/api/v1/agent/jobs/{id}/finish"),
            )
            .json(&json!({
                "outcome": outcome,
                "exit_code": if outcome == "success" { 0 } else { 1 },
                "failure_reason": if outcome == "failed" { Some("script_failure") } else { None },
                "coverage": null,
                "log_size": log.len(),
            })),
            200,
        )
        .await;
        r.json().await.unwrap()
    }
}

/// A new token of `project` (read-only when `read_only`): its secret.
pub async fn create_token(app: &App, project: &str, read_only: bool) -> String {
    let r = send(
        app.post(&format!("/api/v1/projects/{project}/tokens"))
            .json(&json!({"name": "ci", "read_only": read_only})),
        201,
    )
    .await;
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A forge payload from `tests/it/forges/`.
pub fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/forges")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Sets the field at JSON pointer `at` (it must exist in the fixture: a typo fails the test).
pub fn set(v: &mut Value, at: &str, to: Value) {
    *v.pointer_mut(at)
        .unwrap_or_else(|| panic!("the fixture has no {at}")) = to;
}

/// The hex HMAC-SHA256 of `body` under the webhook secret, as GitHub and Gitea sign.
pub fn hmac_hex(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Sends `payload` to project `project` as forge `forge`'s event `event`, signed.
pub async fn send_hook(
    app: &App,
    project: &str,
    forge: &str,
    event: &str,
    payload: &Value,
    id: &str,
) -> reqwest::Response {
    let body = serde_json::to_vec(payload).unwrap();
    let mut r = app
        .request(
            Method::POST,
            &format!("/api/v1/projects/{project}/hooks/{forge}"),
        )
        .header("content-type", "application/json");
    r = match forge {
        "gitlab" => r
            .header("X-Gitlab-Token", SECRET)
            .header("X-Gitlab-Event", event)
            .header("X-Gitlab-Event-UUID", id),
        "github" => r
            .header("X-Hub-Signature-256", format!("sha256={}", hmac_hex(&body)))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", id),
        _ => r
            .header("X-Gitea-Signature", hmac_hex(&body))
            .header("X-Gitea-Event", event)
            .header("X-Gitea-Delivery", id),
    };
    r.body(body).send().await.unwrap()
}
