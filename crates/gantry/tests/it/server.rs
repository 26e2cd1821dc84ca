//! End-to-end tests of `gantry server` and `gantry agent`: the real binary, real git repositories,
//! real processes killed with SIGKILL. Every scenario runs on SQLite and on PostgreSQL (the
//! PostgreSQL variants need `GANTRY_TEST_POSTGRES_URL`, from `eval "$(scripts/postgres.sh)"`, and
//! fail without it).
//!
//! Waits poll with deadlines; no sleep decides an outcome.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gantry_api::{JobStatus, Pipeline, PipelineStatus};
use serde_json::{Value, json};

use crate::proxy::HoldingProxy;
use crate::{Repo, run_ok};

pub(crate) const ADMIN: &str = "admin-secret-token";
const REGISTRATION: &str = "registration-secret-token";
const WEBHOOK: &str = "webhook-secret";
/// The lease of every test server: short, so that a dead agent's job fails quickly.
const LEASE: &str = "3s";
/// How long any one wait may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(45);

pub(crate) fn gantry() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gantry"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GANTRY_") {
            c.env_remove(k);
        }
    }
    c
}

/// Polls `f` until it gives a value, or fails the test with `what` after [`DEADLINE`].
pub(crate) fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_within(DEADLINE, what, f)
}

/// Polls `f` until it gives a value, or fails the test with `what` after `deadline`.
fn wait_within<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where the server keeps its data.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Store {
    Sqlite,
    Postgres,
}

/// A database for one test: a SQLite file in the data dir, or a fresh PostgreSQL database that is
/// dropped afterwards.
struct Database {
    url: Option<String>,
    drop: Option<(String, String)>,
}

impl Database {
    fn new(store: Store) -> Database {
        match store {
            Store::Sqlite => Database {
                url: None,
                drop: None,
            },
            Store::Postgres => {
                let admin = std::env::var("GANTRY_TEST_POSTGRES_URL").expect(
                    "GANTRY_TEST_POSTGRES_URL is not set: start PostgreSQL with \
                     `eval \"$(scripts/postgres.sh)\"`",
                );
                let name = format!(
                    "gantry_e2e_{}_{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_nanos()
                );
                psql(&admin, &format!("CREATE DATABASE {name}"));
                let (base, _) = admin.rsplit_once('/').expect("a database URL");
                Database {
                    url: Some(format!("{base}/{name}")),
                    drop: Some((admin, name)),
                }
            }
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some((admin, name)) = &self.drop {
            let _ = Command::new("psql")
                .args([admin.as_str(), "-q", "-c"])
                .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .output();
        }
    }
}

fn psql(url: &str, sql: &str) {
    let what = format!("psql {sql} (PostgreSQL's client is needed for the PostgreSQL tests)");
    run_ok(
        Command::new("psql").args([url, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]),
        &what,
    );
}

/// A `gantry server` process.
pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
    data_dir: PathBuf,
    db: Option<String>,
    /// Its standard error, line by line.
    lines: mpsc::Receiver<String>,
}

impl Server {
    /// Starts a server on `listen` with the fixed test tokens.
    fn start(data_dir: &Path, db: Option<&str>, listen: &str) -> Server {
        Server::start_with(data_dir, db, listen, &[])
    }

    /// [`Server::start`] with more environment variables.
    fn start_with(data_dir: &Path, db: Option<&str>, listen: &str, env: &[(&str, &str)]) -> Server {
        let mut c = gantry();
        c.args(["server", "--listen", listen, "--lease-timeout", LEASE])
            .arg("--data-dir")
            .arg(data_dir)
            .env("GANTRY_ADMIN_TOKEN", ADMIN)
            .env("GANTRY_REGISTRATION_TOKEN", REGISTRATION);
        // After the defaults, so that a test can replace them.
        c.envs(env.iter().copied());
        if let Some(db) = db {
            c.args(["--database-url", db]);
        }
        Server::spawn(c, data_dir, db)
    }

    fn spawn(mut c: Command, data_dir: &Path, db: Option<&str>) -> Server {
        std::fs::create_dir_all(data_dir).unwrap();
        let mut child = c
            .current_dir(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gantry server starts");
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Server {
            child,
            url: String::new(),
            data_dir: data_dir.to_path_buf(),
            db: db.map(str::to_string),
            lines,
        };
        s.url = s.wait_line("listening on ", |rest| Some(rest.trim().to_string()));
        s
    }

    /// Waits for a line of standard error holding `marker`; `f` reads what follows it.
    fn wait_line<T>(&mut self, marker: &str, f: impl Fn(&str) -> Option<T>) -> T {
        let end = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(at) = line.find(marker) {
                        if let Some(v) = f(&line[at + marker.len()..]) {
                            return v;
                        }
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "the server printed no `{marker}`; its output:\n{}",
                        seen.join("\n")
                    );
                }
            }
        }
    }

    /// The port it listens on.
    fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches('/')
            .parse()
            .unwrap()
    }

    /// Kills it with SIGKILL.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts it again on the same port, data dir and database.
    fn restart(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port());
        let url = self.url.clone();
        let end = Instant::now() + DEADLINE;
        // The port is free again at once (SO_REUSEADDR); retry a little in case it is not.
        loop {
            let data_dir = self.data_dir.clone();
            let db = self.db.clone();
            let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Server::start(&data_dir, db.as_deref(), &listen)
            }));
            match started {
                Ok(s) => {
                    *self = s;
                    assert_eq!(self.url, url);
                    return;
                }
                Err(e) => {
                    if Instant::now() > end {
                        std::panic::resume_unwind(e);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `gantry agent` process.
pub(crate) struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(server_url: &str, dir: &Path, name: &str, args: &[&str]) -> Agent {
        let work = dir.join(name);
        std::fs::create_dir_all(&work).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = gantry()
            .args([
                "agent",
                "--server",
                server_url,
                "--token",
                REGISTRATION,
                "--name",
                name,
            ])
            .args(args)
            .arg("--work-dir")
            .arg(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("gantry agent starts");
        Agent { child, log }
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub(crate) fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends signal `name`: `TERM` aborts the agent's jobs, `QUIT` drains it.
    fn signal(&self, name: &str) {
        crate::signal(&self.child, name);
    }

    /// Waits until the agent exits as SIGTERM makes it (143).
    fn wait_aborted(&mut self) {
        let status = wait_for("the agent to exit", || self.child.try_wait().unwrap());
        assert_eq!(status.code(), Some(143), "{}", self.output());
    }

    /// Sends SIGTERM and waits until the agent exits with 143.
    fn terminate(&mut self) {
        self.signal("TERM");
        self.wait_aborted();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The API, as the admin.
pub(crate) struct Api {
    http: reqwest::blocking::Client,
    url: String,
}

impl Api {
    pub(crate) fn new(server: &Server) -> Api {
        Api {
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            url: server.url.trim_end_matches('/').to_string(),
        }
    }

    fn get(&self, path: &str) -> reqwest::blocking::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(ADMIN)
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub(crate) fn get_json(&self, path: &str) -> Value {
        let r = self.get(path);
        let status = r.status();
        let text = r.text().unwrap();
        assert!(status.is_success(), "GET {path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    pub(crate) fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(ADMIN)
            .json(body)
            .send()
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    pub(crate) fn add_project(&self, name: &str, repo: &Path) {
        let (status, body) = self.post(
            "/api/v1/projects",
            &json!({
                "name": name,
                "repo_url": repo.to_str().unwrap(),
                "webhook_secret": WEBHOOK,
            }),
        );
        assert_eq!(status, 201, "{body}");
    }

    /// Triggers a pipeline on `main` by API; waits for it to exist and returns its id.
    pub(crate) fn trigger(&self, project: &str) -> i64 {
        let (status, body) = self.post(
            &format!("/api/v1/projects/{project}/pipelines"),
            &json!({"ref": "main"}),
        );
        assert_eq!(status, 202, "{body}");
        self.first_pipeline(project)
    }

    /// The id of the project's first pipeline, once it exists.
    fn first_pipeline(&self, project: &str) -> i64 {
        wait_for("the pipeline to be created", || {
            let list = self.get_json(&format!("/api/v1/projects/{project}/pipelines"));
            list.as_array()?.last()?.get("id")?.as_i64()
        })
    }

    pub(crate) fn pipeline(&self, id: i64) -> Pipeline {
        serde_json::from_value(self.get_json(&format!("/api/v1/pipelines/{id}"))).unwrap()
    }

    /// Waits for the pipeline to end.
    pub(crate) fn finished(&self, id: i64) -> Pipeline {
        wait_for("the pipeline to finish", || {
            let p = self.pipeline(id);
            p.status.is_final().then_some(p)
        })
    }

    pub(crate) fn job(&self, id: i64) -> gantry_api::Job {
        serde_json::from_value(self.get_json(&format!("/api/v1/jobs/{id}"))).unwrap()
    }

    pub(crate) fn log(&self, job: i64) -> String {
        let r = self.get(&format!("/api/v1/jobs/{job}/log"));
        assert!(r.status().is_success(), "log of job {job}: {}", r.status());
        r.text().unwrap()
    }
}

pub(crate) fn job_named<'a>(p: &'a Pipeline, name: &str) -> &'a gantry_api::Job {
    p.jobs
        .iter()
        .find(|j| j.name == name)
        .unwrap_or_else(|| panic!("no job {name} in {p:#?}"))
}

fn assert_success(p: &Pipeline, agents: &[&Agent]) {
    if p.status != PipelineStatus::Success {
        let logs: Vec<String> = agents.iter().map(|a| a.output()).collect();
        panic!(
            "pipeline {} ended {:?}: {:#?}\nagents:\n{}",
            p.id,
            p.status,
            p.jobs,
            logs.join("\n---\n")
        );
    }
}

/// How many lines the file holds (0 when it does not exist).
fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Everything one test needs: a temp dir, a database, a server.
pub(crate) struct Setup {
    dir: tempfile::TempDir,
    _db: Database,
    pub(crate) server: Server,
}

impl Setup {
    pub(crate) fn new(store: Store) -> Setup {
        Setup::with_env(store, &[])
    }

    /// A setup whose server has more environment variables.
    pub(crate) fn with_env(store: Store, env: &[(&str, &str)]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::new(store);
        let server = Server::start_with(
            &dir.path().join("data"),
            db.url.as_deref(),
            "127.0.0.1:0",
            env,
        );
        Setup {
            dir,
            _db: db,
            server,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The files `runs` and `release` in the setup's directory, and `template` with `{runs}` and
    /// `{release}` replaced by their paths.
    pub(crate) fn runs_and_release(&self, template: &str) -> (PathBuf, PathBuf, String) {
        let runs = self.path().join("runs");
        let release = self.path().join("release");
        let yaml = template
            .replace("{runs}", &runs.display().to_string())
            .replace("{release}", &release.display().to_string());
        (runs, release, yaml)
    }

    /// Adds project `name` on a new repository holding `.gitlab-ci.yml` = `ci`.
    pub(crate) fn project(&self, name: &str, ci: &str) -> (Repo, Api) {
        let repo = Repo::ci(ci);
        let api = self.add(name, &repo);
        (repo, api)
    }

    /// Adds project `name` on `repo`.
    pub(crate) fn add(&self, name: &str, repo: &Repo) -> Api {
        let api = Api::new(&self.server);
        api.add_project(name, repo.path());
        api
    }

    pub(crate) fn agent(&self, name: &str) -> Agent {
        self.agent_with(name, &[])
    }

    pub(crate) fn agent_with(&self, name: &str, args: &[&str]) -> Agent {
        Agent::start(&self.server.url, &self.path().join("agents"), name, args)
    }

    /// An agent that talks to the server through `proxy`.
    fn agent_through(&self, name: &str, proxy: &HoldingProxy) -> Agent {
        Agent::start(&proxy.url, &self.path().join("agents"), name, &[])
    }
}

macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name(super::Store::Sqlite) })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name(super::Store::Postgres) })*
        }
    };
}

both_stores!(
    the_go_example_gates_through_the_server,
    webhook_pipeline_runs_on_an_agent,
    killed_agent_job_is_retried_elsewhere,
    killed_server_pipeline_finishes,
    five_agents_run_many_jobs_once_each,
    readme_quick_start,
    canceled_job_stops_and_restarted_agent_keeps_its_token,
    project_token_from_the_cli,
    quit_drains_the_running_job,
    term_aborts_and_reports_the_running_job,
    term_aborts_a_job_that_a_poll_brings_during_the_abort,
    jobs_get_a_git_checkout,
    jobs_fetch_origin_with_their_job_token,
    planted_git_hooks_and_config_never_run_in_the_agent,
    git_route_serves_only_the_job_s_agent,
    quit_while_polling_strands_no_job,
    without_git_jobs_get_the_tree,
    unreachable_repo_is_retried_until_it_returns,
    unreachable_repo_fails_after_the_last_attempt,
    remote_include_over_http_runs,
    remote_include_of_a_local_address_is_refused,
    project_include_from_another_project_runs,
    project_include_is_denied_unless_the_included_project_allows_it,
    component_and_template_includes_resolve,
    unreachable_remote_include_fails_the_pipeline_with_its_position,
    big_artifact_passes_intact,
);

/// (a) A push webhook creates a two-stage pipeline that runs on an agent; artifacts pass from the
/// first stage to the second; the trace id of the webhook request reaches the job.
fn webhook_pipeline_runs_on_an_agent(store: Store) {
    let s = Setup::new(store);
    let repo = Repo::new(&[(
        ".gitlab-ci.yml",
        "stages: [build, test]\n\
         build:\n  stage: build\n  script:\n    - echo \"built by job $CI_JOB_ID\" > out.txt\n    - echo \"TRACE=$GANTRY_TRACE_ID\"\n  artifacts:\n    paths: [out.txt]\n\
         test:\n  stage: test\n  script:\n    - cat out.txt\n    - echo \"test in $CI_PIPELINE_ID\"\n",
    )]);
    let api = s.add("web", &repo);
    let agent = s.agent("a1");

    let sha = repo.git(&["rev-parse", "HEAD"]).trim().to_string();
    let trace = "e2e-trace-4f2a9c";
    let resp = api
        .http
        .post(format!("{}/api/v1/projects/web/hooks/gitlab", api.url))
        .header("X-Gitlab-Token", WEBHOOK)
        .header("X-Gitlab-Event", "Push Hook")
        .header("X-Gitlab-Event-UUID", "delivery-1")
        .header("X-Trace-ID", trace)
        .json(&json!({
            "object_kind": "push",
            "ref": "refs/heads/main",
            "before": "0000000000000000000000000000000000000000",
            "after": sha,
            "user_name": "Test User",
            "user_email": "test@example.com",
        }))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(resp.headers()["x-trace-id"], trace);

    let id = api.first_pipeline("web");
    let p = api.finished(id);
    assert_success(&p, &[&agent]);
    assert_eq!(p.trace_id, trace);
    assert_eq!(p.sha, sha);
    let build = job_named(&p, "build");
    let test = job_named(&p, "test");
    assert_eq!(build.agent.as_deref(), Some("a1"));
    let build_log = api.log(build.id);
    assert!(
        build_log.contains(&format!("TRACE={trace}\n")),
        "{build_log}"
    );
    assert!(
        build_log.contains("$ echo \"TRACE=$GANTRY_TRACE_ID\""),
        "{build_log}"
    );
    // The script is a collapsible section of the stored log, its markers as the runtime wrote them.
    let at = |s: &str| {
        build_log
            .find(s)
            .unwrap_or_else(|| panic!("no {s:?}: {build_log}"))
    };
    let echo = at("$ echo \"TRACE=");
    assert!(at("\x1b[0Ksection_start:") < echo && echo < at("\x1b[0Ksection_end:"));
    assert!(build_log.contains(":step_script\r\x1b[0KRunning script\n"));
    let test_log = api.log(test.id);
    assert!(
        test_log.contains(&format!("built by job {}\n", build.id)),
        "{test_log}"
    );
    assert!(test_log.contains(&format!("test in {id}\n")), "{test_log}");
    assert_eq!(test.log_size, i64::try_from(test_log.len()).unwrap());
    // The agent logs with the trace id too.
    assert!(agent.output().contains(trace), "{}", agent.output());
}

/// Issue 18 through a server and an agent: examples/go-service's gate job is given the summaries
/// its `needs` reported with their finish, and for `new_coverage` the lines a branch changed
/// against the default branch (from the server's mirror); the reports API and the coverage trend
/// show the results.
fn the_go_example_gates_through_the_server(store: Store) {
    use crate::gates::{UNTESTED_CLAMP, UNTESTED_DOUBLE, break_a_test, change, go_service};
    let s = Setup::new(store);
    let repo = go_service();
    let api = s.add("svc", &repo);
    let _agent = s.agent("a1");
    // One Go build cache for every job (a pipeline variable wins over the pipeline's own).
    let go_cache = s.path().join("go-build");
    let go_cache = go_cache.display().to_string();
    let run = |git_ref: &str| -> (Pipeline, Value) {
        let list = |api: &Api| api.get_json("/api/v1/projects/svc/pipelines");
        let before = list(&api).as_array().unwrap().len();
        let (status, body) = api.post(
            "/api/v1/projects/svc/pipelines",
            &json!({"ref": git_ref, "variables": [{"key": "GOCACHE", "value": go_cache}]}),
        );
        assert_eq!(status, 202, "{body}");
        let id = wait_for("the pipeline to be created", || {
            let l = list(&api);
            let l = l.as_array()?;
            (l.len() > before).then(|| l[0]["id"].as_i64())?
        });
        let p = api.finished(id);
        let reports = api.get_json(&format!("/api/v1/pipelines/{id}/reports"));
        (p, reports)
    };
    let status = |p: &Pipeline, job: &str| job_named(p, job).status;
    let failed = |r: &Value| -> Vec<String> {
        let gates = r["gates"].as_array().unwrap();
        assert_eq!(gates.len(), 1, "{r}");
        assert_eq!(gates[0]["job"], "quality-gate");
        gates[0]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["passed"] != true)
            .map(|c| c["metric"].as_str().unwrap().to_owned())
            .collect()
    };
    let actual = |r: &Value, metric: &str| -> Value {
        r["gates"][0]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["metric"] == metric)
            .unwrap_or_else(|| panic!("no {metric}: {r}"))["actual"]
            .clone()
    };

    // As it is, everything passes and deploy runs.
    let (main1, r) = run("main");
    assert_eq!(main1.status, PipelineStatus::Success, "{r}");
    assert_eq!(status(&main1, "deploy"), JobStatus::Success);
    assert!(failed(&r).is_empty(), "{r}");
    assert_eq!(actual(&r, "coverage"), 80.0, "{r}");
    assert_eq!(
        actual(&r, "new_coverage"),
        Value::Null,
        "no change on main: {r}"
    );
    assert_eq!(r["tests"]["total"], 5, "{r}");
    assert_eq!(r["coverage"]["percent"], 80.0, "{r}");

    // Untested code drops coverage under 75%: the gate fails and deploy does not run.
    change(&repo, "drop", "main.go", |s| s + UNTESTED_CLAMP);
    let (p, r) = run("drop");
    assert_eq!(status(&p, "quality-gate"), JobStatus::Failed, "{r}");
    assert_eq!(status(&p, "deploy"), JobStatus::Skipped);
    assert!(failed(&r).contains(&"coverage".to_owned()), "{r}");

    // One untested statement: total coverage passes, the change's own lines (0%) do not.
    change(&repo, "untested", "main.go", |s| s + UNTESTED_DOUBLE);
    let (p, r) = run("untested");
    assert_eq!(status(&p, "quality-gate"), JobStatus::Failed, "{r}");
    assert_eq!(failed(&r), ["new_coverage"], "{r}");
    assert_eq!(actual(&r, "new_coverage"), 0.0, "{r}");
    assert_eq!(
        r["gates"][0]["offenders"]["uncovered_new_lines"][0]["file"], "main.go",
        "{r}"
    );
    assert_eq!(status(&p, "deploy"), JobStatus::Skipped);

    // A failing test fails the test job and the gate, which still runs (`when: always`).
    change(&repo, "broken", "main_test.go", break_a_test);
    let (p, r) = run("broken");
    assert_eq!(status(&p, "unit-tests"), JobStatus::Failed, "{r}");
    assert_eq!(status(&p, "quality-gate"), JobStatus::Failed);
    assert_eq!(failed(&r), ["tests_failed"], "{r}");
    assert!(
        r["tests"]["failures"].to_string().contains("TestSum"),
        "{r}"
    );
    assert_eq!(status(&p, "deploy"), JobStatus::Skipped);

    // Back on main the gate passes again, and main's coverage trend holds both pipelines.
    let (main2, _) = run("main");
    assert_eq!(main2.status, PipelineStatus::Success);
    let trend = api.get_json("/api/v1/projects/svc/coverage?ref=main");
    let points: Vec<(i64, f64)> = trend
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["pipeline_id"].as_i64().unwrap(),
                c["coverage"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(points, [(main2.id, 80.0), (main1.id, 80.0)], "{trend}");
}

/// (b) An agent killed with SIGKILL in the middle of a job: the job fails with
/// `runner_system_failure` once its lease runs out, is retried on another agent, and the pipeline
/// succeeds.
fn killed_agent_job_is_retried_elsewhere(store: Store) {
    let s = Setup::new(store);
    let (runs, release, yaml) = s.runs_and_release("slow:\n  retry:\n    max: 1\n    when: runner_system_failure\n  script:\n    - echo \"run $CI_JOB_ID\" >> {runs}\n    - while [ ! -f {release} ]; do sleep 0.05; done\n    - echo released\n\
         after:\n  stage: test\n  script:\n    - echo after\n");
    let (_repo, api) = s.project("retry", &yaml);
    let mut first = s.agent("first");
    let id = api.trigger("retry");
    wait_lines(&runs, 1, "the job to start on the first agent");
    let first_job = job_named(&api.pipeline(id), "slow").id;
    first.kill();
    // The orphaned script may go on; let it end once the retry has started.
    let second = s.agent("second");
    let failed = wait_for("the lease to run out", || {
        let j = api.job(first_job);
        j.status.is_final().then_some(j)
    });
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(
        failed.failure_reason.as_deref(),
        Some("runner_system_failure")
    );
    wait_lines(&runs, 2, "the retry to start");
    std::fs::write(&release, "").unwrap();
    let p = api.finished(id);
    assert_success(&p, &[&second]);
    let slow = job_named(&p, "slow");
    assert_eq!(slow.attempt, 2);
    assert_eq!(slow.agent.as_deref(), Some("second"));
    let lines = lines_of(&runs);
    assert_eq!(
        lines,
        [format!("run {first_job}"), format!("run {}", slow.id)]
    );
    assert!(api.log(slow.id).contains("released\n"));
}

/// (c) The server killed with SIGKILL while a job runs, and restarted on the same data: the
/// pipeline finishes, no job runs twice, and every log line sent before the kill is there once.
fn killed_server_pipeline_finishes(store: Store) {
    let mut s = Setup::new(store);
    let (runs, release, yaml) = s.runs_and_release("one:\n  stage: build\n  script:\n    - echo one >> {runs}\n    - for i in $(seq 1 20); do echo before-$i; done\n    - while [ ! -f {release} ]; do sleep 0.05; done\n    - for i in $(seq 1 20); do echo after-$i; done\n\
         two:\n  stage: test\n  script:\n    - echo two >> {runs}\n    - echo second stage\n");
    let (_repo, api) = s.project("crash", &yaml);
    let agent = s.agent("a1");
    let id = api.trigger("crash");
    let one = wait_for("job one to start", || {
        let p = api.pipeline(id);
        let j = job_named(&p, "one");
        (j.status == JobStatus::Running).then_some(j.id)
    });
    // Wait until the server holds the lines printed before the gate.
    let before = wait_for("the first lines to reach the server", || {
        let log = api.log(one);
        log.contains("before-20\n").then_some(log)
    });
    s.server.kill();
    // The job goes on and ends while the server is down.
    std::fs::write(&release, "").unwrap();
    s.server.restart();
    let api = Api::new(&s.server);
    let p = api.finished(id);
    assert_success(&p, &[&agent]);
    assert_eq!(lines_of(&runs), ["one", "two"]);
    let log = api.log(one);
    assert!(log.starts_with(&before), "{log}");
    for i in 1..=20 {
        for word in ["before", "after"] {
            let line = format!("{word}-{i}\n");
            assert_eq!(log.matches(&line).count(), 1, "{line} in {log}");
        }
    }
    assert_eq!(job_named(&p, "one").attempt, 1);
    assert!(api.log(job_named(&p, "two").id).contains("second stage\n"));
}

/// How many jobs (d) runs: the 500. Handing out a job reads only its pipeline's row and the
/// jobs it takes artifacts from, so the cost per job barely grows with the pipeline.
const MANY_JOBS: usize = 500;

/// (d) Five agents take [`MANY_JOBS`] jobs of one pipeline from one queue: each job runs exactly
/// once.
fn five_agents_run_many_jobs_once_each(store: Store) {
    let s = Setup::new(store);
    let runs = s.path().join("runs");
    let mut yaml = String::new();
    for i in 0..MANY_JOBS {
        yaml.push_str(&format!(
            "j{i}:\n  script:\n    - echo {i} >> {}\n",
            runs.display()
        ));
    }
    let (_repo, api) = s.project("many", &yaml);
    let agents: Vec<Agent> = (0..5)
        .map(|i| s.agent_with(&format!("agent{i}"), &["--concurrency", "4"]))
        .collect();
    let id = api.trigger("many");
    // Poll the light list (no jobs in it), not the jobs of the pipeline. The deadline is
    // generous: a debug build on a busy 2-core machine dispatches slowly.
    wait_within(Duration::from_secs(100), "the jobs to finish", || {
        std::thread::sleep(Duration::from_millis(200));
        let list = api.get_json("/api/v1/projects/many/pipelines");
        let status = list
            .as_array()?
            .first()?
            .get("status")?
            .as_str()?
            .to_string();
        ["success", "failed", "canceled", "skipped"]
            .contains(&status.as_str())
            .then_some(())
    });
    let p = api.pipeline(id);
    assert_success(&p, &agents.iter().collect::<Vec<_>>());
    assert_eq!(p.jobs.len(), MANY_JOBS);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for l in lines_of(&runs) {
        *counts.entry(l).or_default() += 1;
    }
    assert_eq!(counts.len(), MANY_JOBS);
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    let used: std::collections::HashSet<_> =
        p.jobs.iter().filter_map(|j| j.agent.clone()).collect();
    assert!(used.len() > 1, "only {used:?} ran jobs");
}

/// (e) The README's quick start, step by step: a server with the embedded defaults (it generates
/// and prints its tokens), `gantry project add`, an agent, a pipeline triggered by API.
fn readme_quick_start(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::new(store);
    let data = dir.path().join("gantry-data");
    // gantry server --listen 127.0.0.1:8080   (port 0 here; the data dir is ./gantry-data)
    let mut c = gantry();
    c.args(["server", "--listen", "127.0.0.1:0"]);
    if let Some(url) = &db.url {
        c.args(["--database-url", url]);
    }
    let mut server = Server::spawn(c, dir.path(), db.url.as_deref());
    let admin = std::fs::read_to_string(data.join("admin-token"))
        .expect("the server stores its generated admin token")
        .trim()
        .to_string();
    let registration = std::fs::read_to_string(data.join("registration-token"))
        .expect("the server stores its generated registration token")
        .trim()
        .to_string();
    assert!(!admin.is_empty() && !registration.is_empty());

    let repo = Repo::ci(
        "hello:\n  script:\n    - echo \"hello from $CI_PROJECT_NAME on $CI_COMMIT_REF_NAME\"\n",
    );
    // gantry project add --server URL --token ADMIN --name hello --repo-url PATH
    let out = gantry()
        .args(["project", "add", "--server", &server.url, "--token", &admin])
        .args([
            "--name",
            "hello",
            "--repo-url",
            repo.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let project: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(project["name"], "hello");
    // A wrong admin token is refused with the server's error and exit code 2.
    let refused = gantry()
        .args([
            "project",
            "add",
            "--server",
            &server.url,
            "--token",
            "wrong",
        ])
        .args([
            "--name",
            "other",
            "--repo-url",
            repo.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_failed_with(&refused, 2, "401");

    // A wrong registration token is a clear error and exit code 2.
    let rejected = gantry()
        .args(["agent", "--server", &server.url, "--token", "wrong"])
        .arg("--work-dir")
        .arg(dir.path().join("rejected"))
        .output()
        .unwrap();
    assert_failed_with(&rejected, 2, "rejected the registration token");

    // gantry agent --server URL --token-file gantry-data/registration-token
    let work = dir.path().join("agent");
    std::fs::create_dir_all(&work).unwrap();
    let agent_log = dir.path().join("agent.log");
    let agent = Agent {
        child: gantry()
            .args(["agent", "--server", &server.url, "--token-file"])
            .arg(data.join("registration-token"))
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&agent_log).unwrap())
            .spawn()
            .unwrap(),
        log: agent_log,
    };
    // curl -X POST -H "Authorization: Bearer ADMIN" URL/api/v1/projects/hello/pipelines
    let http = reqwest::blocking::Client::new();
    let resp = http
        .post(format!("{}/api/v1/projects/hello/pipelines", server.url))
        .bearer_auth(&admin)
        .json(&json!({"ref": "main"}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let id = wait_for("the pipeline", || {
        let r = http
            .get(format!("{}/api/v1/projects/hello/pipelines", server.url))
            .bearer_auth(&admin)
            .send()
            .ok()?;
        let v: Value = r.json().ok()?;
        v.as_array()?.first()?.get("id")?.as_i64()
    });
    let p = wait_for("the pipeline to finish", || {
        let p: Pipeline = http
            .get(format!("{}/api/v1/pipelines/{id}", server.url))
            .bearer_auth(&admin)
            .send()
            .ok()?
            .json()
            .ok()?;
        p.status.is_final().then_some(p)
    });
    assert_success(&p, &[&agent]);
    let log = http
        .get(format!("{}/api/v1/jobs/{}/log", server.url, p.jobs[0].id))
        .bearer_auth(&admin)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(log.contains("hello from hello on main\n"), "{log}");
    // The agent registered in its default work dir and kept its token there, private.
    let identity = work.join("gantry-agent/agent.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&identity).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    server.kill();
}

/// A pipeline canceled through the API: the agent hears it in a heartbeat answer, stops the job,
/// runs its `after_script`, and finishes it as canceled. Then the agent is restarted with a wrong
/// registration token: it uses the agent token kept in its work dir, and takes the next pipeline.
fn canceled_job_stops_and_restarted_agent_keeps_its_token(store: Store) {
    let s = Setup::new(store);
    let (runs, _, yaml) = s.runs_and_release("long:\n  script:\n    - echo started >> {runs}\n    - sleep 60\n  after_script:\n    - echo cleanup after cancel\n");
    let (repo, api) = s.project("cancel", &yaml);
    let mut agent = s.agent("a1");
    let id = api.trigger("cancel");
    wait_lines(&runs, 1, "the job to start");
    let (status, body) = api.post(&format!("/api/v1/pipelines/{id}/cancel"), &json!({}));
    assert!(status < 300, "{status} {body}");
    let p = api.finished(id);
    assert_eq!(p.status, PipelineStatus::Canceled, "{p:#?}");
    let job = wait_for("the job to end", || {
        let j = api.job(job_named(&p, "long").id);
        j.status.is_final().then_some(j)
    });
    assert_eq!(job.status, JobStatus::Canceled, "{}", agent.output());
    let log = wait_for("the after_script's output", || {
        let log = api.log(job.id);
        log.contains("cleanup after cancel\n").then_some(log)
    });
    assert!(
        log.contains("started") || log.contains("$ echo started"),
        "{log}"
    );

    agent.kill();
    let work = s.path().join("agents").join("a1");
    let restarted = Agent {
        child: gantry()
            .args([
                "agent",
                "--server",
                &s.server.url,
                "--token",
                "not-the-token",
                "--name",
                "a1",
            ])
            .arg("--work-dir")
            .arg(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(s.path().join("a1-again.log")).unwrap())
            .spawn()
            .unwrap(),
        log: s.path().join("a1-again.log"),
    };
    repo.git(&["commit", "-q", "--allow-empty", "-m", "again"]);
    std::fs::write(&runs, "").unwrap();
    let (status, body) = api.post(
        "/api/v1/projects/cancel/pipelines",
        &json!({"ref": "main", "variables": []}),
    );
    assert_eq!(status, 202, "{body}");
    // The second pipeline is the newest one in the list.
    let second = wait_for("the second pipeline", || {
        let list = api.get_json("/api/v1/projects/cancel/pipelines");
        list.as_array()?
            .iter()
            .filter_map(|p| p.get("id")?.as_i64())
            .find(|&pid| pid != id)
    });
    wait_lines(&runs, 1, "the second job to start");
    let p = api.pipeline(second);
    assert_eq!(job_named(&p, "long").agent.as_deref(), Some("a1"));
    let agents = api.get_json("/api/v1/agents");
    assert_eq!(agents.as_array().unwrap().len(), 1, "{agents}");
    assert!(
        restarted.output().contains("using the stored agent token"),
        "{}",
        restarted.output()
    );
}

/// `gantry project token create` prints a secret that triggers and reads its project's pipelines
/// (run by a real agent) and nothing else; `list` shows no secret; `revoke` ends it at once.
fn project_token_from_the_cli(store: Store) {
    let s = Setup::new(store);
    let (repo, api) = s.project(
        "tokened",
        "hello:\n  script:\n    - echo hello $CI_PROJECT_NAME\n",
    );
    api.add_project("other", repo.path());
    let cli = |args: &[&str]| {
        gantry()
            .args(["project", "token"])
            .args(args)
            .args(["--server", &s.server.url, "--token", ADMIN])
            .output()
            .unwrap()
    };
    let out = cli(&[
        "create",
        "tokened",
        "--name",
        "ci",
        "--expires-at",
        "2999-12-31",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(secret.starts_with("gpt_"), "{secret}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2999-12-31T00:00:00.000Z"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let _agent = s.agent("a1");
    let http = reqwest::blocking::Client::new();
    let call = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{}{path}", api.url))
            .header("PRIVATE-TOKEN", &secret)
            .json(&json!({"ref": "main"}))
            .send()
            .unwrap()
    };
    let r = call(reqwest::Method::POST, "/api/v1/projects/tokened/pipelines");
    assert_eq!(r.status().as_u16(), 202);
    let id = wait_for("the pipeline", || {
        let v: Value = call(reqwest::Method::GET, "/api/v1/projects/tokened/pipelines")
            .json()
            .ok()?;
        v.as_array()?.first()?.get("id")?.as_i64()
    });
    let p = wait_for("the pipeline to finish", || {
        let p: Pipeline = call(reqwest::Method::GET, &format!("/api/v1/pipelines/{id}"))
            .json()
            .ok()?;
        p.status.is_final().then_some(p)
    });
    assert_eq!(p.status, PipelineStatus::Success);
    let log = call(
        reqwest::Method::GET,
        &format!("/api/v1/jobs/{}/log", p.jobs[0].id),
    )
    .text()
    .unwrap();
    assert!(log.contains("hello tokened\n"), "{log}");
    // Not another project, not the admin's routes.
    for (method, path) in [
        (reqwest::Method::POST, "/api/v1/projects/other/pipelines"),
        (reqwest::Method::GET, "/api/v1/projects"),
        (reqwest::Method::GET, "/api/v1/agents"),
    ] {
        let r = call(method, path);
        assert_eq!(r.status().as_u16(), 403, "{path}");
        let e: Value = r.json().unwrap();
        assert!(e["error"].is_string(), "{e}");
    }

    let out = cli(&["list", "tokened", "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains(&secret), "{text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "ci");
    let token_id = list[0]["id"].as_i64().unwrap().to_string();

    // Revoking with a project token is refused (exit 2); with the admin token it works.
    let out = gantry()
        .args(["project", "token", "revoke", "tokened", &token_id])
        .args(["--server", &s.server.url, "--token", &secret])
        .output()
        .unwrap();
    assert_failed_with(&out, 2, "403");
    let out = cli(&["revoke", "tokened", &token_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = call(reqwest::Method::GET, "/api/v1/projects/tokened/pipelines");
    assert_eq!(r.status().as_u16(), 401);
    let out = cli(&["revoke", "tokened", &token_id]);
    assert_failed_with(&out, 2, "404");

    // A read-only token reads, and triggers nothing.
    let out = cli(&["create", "tokened", "--name", "reader", "--read-only"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reader = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let with_reader = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{}{path}", api.url))
            .header("PRIVATE-TOKEN", &reader)
            .json(&json!({"ref": "main"}))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let pipelines = "/api/v1/projects/tokened/pipelines";
    assert_eq!(with_reader(reqwest::Method::GET, pipelines), 200);
    assert_eq!(with_reader(reqwest::Method::POST, pipelines), 403);
}

/// SIGQUIT, as for GitLab Runner: the agent takes no new job, lets the running one end (its log and
/// result reach the server), and exits with 0; the next job waits for another agent.
fn quit_drains_the_running_job(store: Store) {
    let s = Setup::new(store);
    let (runs, release, yaml) = s.runs_and_release("stages: [build, test]\n\
         slow:\n  stage: build\n  script:\n    - echo slow >> {runs}\n    - while [ ! -f {release} ]; do sleep 0.05; done\n    - echo drained\n\
         next:\n  stage: test\n  script:\n    - echo next >> {runs}\n");
    let (_repo, api) = s.project("drain", &yaml);
    let mut first = s.agent("first");
    let id = api.trigger("drain");
    wait_lines(&runs, 1, "the job to start");
    first.signal("QUIT");
    wait_for("the agent to start draining", || {
        first.output().contains("SIGQUIT").then_some(())
    });
    std::fs::write(&release, "").unwrap();
    let status = wait_for("the agent to exit", || first.child.try_wait().unwrap());
    assert_eq!(status.code(), Some(0), "{}", first.output());
    let p = api.pipeline(id);
    let slow = job_named(&p, "slow");
    assert_eq!(slow.status, JobStatus::Success);
    assert!(api.log(slow.id).contains("drained\n"));
    let next = job_named(&p, "next");
    assert_eq!(next.status, JobStatus::Pending, "{p:?}");
    assert_eq!(next.agent, None);
    assert_eq!(lines_of(&runs), ["slow"]);
    let second = s.agent("second");
    let p = api.finished(id);
    assert_success(&p, &[&second]);
    assert_eq!(job_named(&p, "next").agent.as_deref(), Some("second"));
    assert_eq!(lines_of(&runs), ["slow", "next"]);
}

/// SIGTERM, as GitLab Runner's forceful shutdown: the agent stops the running job and reports it
/// failed with `runner_system_failure` before it exits (not when the lease runs out), with a line in
/// the job's log; the job's retry runs on another agent; the agent exits with 143.
fn term_aborts_and_reports_the_running_job(store: Store) {
    let s = Setup::new(store);
    let (runs, release, yaml) = s.runs_and_release("slow:\n  retry:\n    max: 1\n    when: runner_system_failure\n  script:\n    - echo \"run $CI_JOB_ID\" >> {runs}\n    - while [ ! -f {release} ]; do sleep 0.05; done\n    - echo released\n");
    let (_repo, api) = s.project("term", &yaml);
    let mut first = s.agent("first");
    let id = api.trigger("term");
    wait_lines(&runs, 1, "the job to start");
    let first_job = job_named(&api.pipeline(id), "slow").id;
    first.terminate();
    assert!(first.output().contains("aborted"), "{}", first.output());
    // Reported by the agent on its way out: final already, and said so in the log.
    let log = assert_aborted(&api, first_job);
    assert!(!log.contains("released"), "{log}");
    std::fs::write(&release, "").unwrap();
    let second = s.agent("second");
    let p = api.finished(id);
    assert_success(&p, &[&second]);
    let slow = job_named(&p, "slow");
    assert_eq!(slow.attempt, 2);
    assert_eq!(
        lines_of(&runs),
        [format!("run {first_job}"), format!("run {}", slow.id)]
    );
}

/// A job that the server hands to a long poll in the instant the agent aborts (SIGTERM) is not
/// left to its lease: the agent reports it failed (`runner_system_failure`) without running it, and
/// the retry runs elsewhere. A proxy holds back the answer that brings the job until the agent has
/// taken the signal.
fn term_aborts_a_job_that_a_poll_brings_during_the_abort(store: Store) {
    let s = Setup::new(store);
    let (runs, _, yaml) = s.runs_and_release("job:\n  retry:\n    max: 1\n    when: runner_system_failure\n  script:\n    - echo \"run $CI_JOB_ID\" >> {runs}\n");
    let (_repo, api) = s.project("held", &yaml);
    let proxy = HoldingProxy::start(&s.server.url);
    let mut first = s.agent_through("first", &proxy);
    let id = api.trigger("held");
    proxy.wait_holding();
    let first_job = job_named(&api.pipeline(id), "job").id;
    assert_eq!(api.job(first_job).status, JobStatus::Running);
    first.signal("TERM");
    // The agent is aborting once it asks the server to end its polls.
    proxy.wait_stop_polling();
    proxy.release();
    first.wait_aborted();
    assert_aborted(&api, first_job);
    assert!(!runs.exists(), "the aborted job ran: {:?}", lines_of(&runs));
    let second = s.agent("second");
    let p = api.finished(id);
    assert_success(&p, &[&second]);
    let job = job_named(&p, "job");
    assert_eq!(job.attempt, 2);
    assert_eq!(lines_of(&runs), [format!("run {}", job.id)]);
}

/// Checks that job `id` was reported failed by an aborting agent (`runner_system_failure`, and the
/// abort's line in its log); its log.
fn assert_aborted(api: &Api, id: i64) -> String {
    let failed = api.job(id);
    assert_eq!(failed.status, JobStatus::Failed, "{failed:?}");
    assert_eq!(
        failed.failure_reason.as_deref(),
        Some("runner_system_failure")
    );
    let log = api.log(id);
    assert!(log.contains("the agent is stopping"), "{log}");
    log
}

/// The agent's own token, from its work dir.
fn agent_token(s: &Setup, name: &str) -> String {
    let path = s.path().join("agents").join(name).join("agent.json");
    let id: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    id["token"].as_str().unwrap().to_string()
}

/// Jobs run in a git checkout of their commit, as with GitLab Runner: `HEAD` is `CI_COMMIT_SHA`,
/// detached, `GIT_DEPTH` limits the history, `GIT_STRATEGY: none` gets no source at all, and the
/// agent's token appears in no log.
fn jobs_get_a_git_checkout(store: Store) {
    let s = Setup::new(store);
    let yaml = "stages: [first, second]\n\
         none:\n  stage: first\n  variables:\n    GIT_STRATEGY: none\n  script:\n    - test ! -e .gitlab-ci.yml\n    - test ! -e .git\n    - echo none-ok\n\
         depth:\n  stage: second\n  variables:\n    GIT_DEPTH: \"2\"\n  script:\n    - test \"$(git rev-parse HEAD)\" = \"$CI_COMMIT_SHA\"\n    - echo \"commits=$(git log --oneline | wc -l | tr -d ' ')\"\n    - echo \"head=$(git rev-parse --abbrev-ref HEAD)\"\n    - echo \"branch=$(git rev-parse origin/main)\"\n    - cat .gitlab-ci.yml > /dev/null\n";
    let repo = Repo::ci(yaml);
    add_commits(&repo, 3);
    let sha = repo.git(&["rev-parse", "HEAD"]).trim().to_string();
    let api = s.add("checkout", &repo);
    let agent = s.agent("a1");
    let id = api.trigger("checkout");
    let p = api.finished(id);
    let token = agent_token(&s, "a1");
    let logs: Vec<String> = p.jobs.iter().map(|j| api.log(j.id)).collect();
    assert_success(&p, &[&agent]);
    assert_eq!(p.sha, sha);
    let none = api.log(job_named(&p, "none").id);
    assert!(none.contains("Skipping Git repository setup"), "{none}");
    assert!(none.contains("none-ok\n"), "{none}");
    let depth = api.log(job_named(&p, "depth").id);
    assert!(
        depth.contains("Fetching changes with git depth set to 2..."),
        "{depth}"
    );
    assert!(
        depth.contains(&format!(
            "Checking out {} as detached HEAD (ref is main)...",
            &sha[..8]
        )),
        "{depth}"
    );
    assert!(depth.contains("commits=2\n"), "{depth}");
    assert!(depth.contains("head=HEAD\n"), "{depth}");
    assert!(depth.contains(&format!("branch={sha}\n")), "{depth}");
    for log in &logs {
        assert!(!log.contains(&token), "the token is in a log: {log}");
    }
    assert!(!agent.output().contains(&token));
}

/// A job's checkout has `origin`, which the job reads with its own `CI_JOB_TOKEN` while it runs:
/// `git fetch --unshallow origin` brings the whole history, `CI_REPOSITORY_URL` (the token as the
/// Basic password, as on GitLab) works for `git ls-remote`, another project's repository is
/// refused, the token is masked in the log, and once the job has ended the token is refused with a
/// Basic challenge.
fn jobs_fetch_origin_with_their_job_token(store: Store) {
    let s = Setup::new(store);
    let kept = s.dir.path().join("job-token");
    let yaml = format!(
        "fetch:\n  variables:\n    GIT_DEPTH: \"1\"\n  script:\n\
         \x20   - echo \"before=$(git log --oneline | wc -l | tr -d ' ')\"\n\
         \x20   - git fetch -q --unshallow origin \"$CI_COMMIT_SHA\"\n\
         \x20   - echo \"after=$(git log --oneline | wc -l | tr -d ' ')\"\n\
         \x20   - git ls-remote \"$CI_REPOSITORY_URL\" > /dev/null && echo url-ok\n\
         \x20   - 'other=\"${{CI_REPOSITORY_URL%/projects/*}}/projects/other/git\"'\n\
         \x20   - if git ls-remote \"$other\" > /dev/null 2>&1; then echo other-readable; else echo other-refused; fi\n\
         \x20   - echo \"token=$CI_JOB_TOKEN\"\n\
         \x20   - printf %s \"$CI_JOB_TOKEN\" > {}\n",
        kept.display()
    );
    let repo = Repo::ci(&yaml);
    add_commits(&repo, 3);
    let api = s.add("tok", &repo);
    let agent = s.agent("a1");
    let p = api.finished(api.trigger("tok"));
    assert_success(&p, &[&agent]);
    let log = api.log(job_named(&p, "fetch").id);
    assert!(log.contains("before=1\n"), "{log}");
    assert!(log.contains("after=4\n"), "{log}");
    assert!(log.contains("url-ok\n"), "{log}");
    assert!(log.contains("other-refused\n"), "{log}");
    let token = std::fs::read_to_string(&kept).unwrap();
    assert!(
        token.starts_with(&format!("{}_", job_named(&p, "fetch").id)),
        "{token}"
    );
    assert!(!log.contains(&token), "the job token is masked: {log}");
    assert!(log.contains("token=[MASKED]"), "{log}");
    let http = reqwest::blocking::Client::new();
    let refs = format!(
        "{}/api/v1/projects/tok/git/info/refs?service=git-upload-pack",
        api.url
    );
    let stale = http.get(&refs).bearer_auth(&token).send().unwrap();
    assert_eq!(stale.status(), 401);
    assert_eq!(
        stale.headers()["www-authenticate"],
        "Basic realm=\"gantry\""
    );
    let none = http.get(&refs).send().unwrap();
    assert_eq!(none.status(), 401);
}

/// A script, committed as `plant.sh`, that plants code in its checkout's `.git` for the agent's
/// next git commands to run: hooks (also under a `core.hooksPath` of its own), `core.fsmonitor`,
/// an `include.path` that sets them again, `core.sshCommand`, `credential.helper`, a filter and
/// `gc.auto` (for `pre-auto-gc`). Each planted program appends its environment to `mark`.
fn plant_script(mark: &Path) -> String {
    let mark = mark.display();
    let hooks = [
        "post-checkout",
        "reference-transaction",
        "pre-auto-gc",
        "post-merge",
        "post-rewrite",
        "fsmonitor-watchman",
        "push-to-checkout",
    ];
    format!(
        "set -e\n\
         evil=\"$PWD/.git/evil\"\n\
         mkdir -p \"$evil/hooks\"\n\
         printf '#!/bin/sh\\necho \"ran $0\" >> {mark}\\nenv >> {mark}\\n' > \"$evil/run\"\n\
         chmod +x \"$evil/run\"\n\
         for h in {hooks}; do cp \"$evil/run\" .git/hooks/$h; cp \"$evil/run\" \"$evil/hooks/$h\"; done\n\
         git config core.fsmonitor \"$evil/run\"\n\
         git config core.sshCommand \"$evil/run\"\n\
         git config credential.helper \"!$evil/run\"\n\
         git config filter.evil.smudge \"$evil/run\"\n\
         git config filter.evil.clean \"$evil/run\"\n\
         git config gc.auto 1\n\
         git config gc.autoDetach false\n\
         printf '[core]\\n\\thooksPath = %s/hooks\\n\\tfsmonitor = %s/run\\n' \"$evil\" \"$evil\" > \"$evil/config\"\n\
         git config include.path \"$evil/config\"\n\
         echo '* filter=evil' > .git/info/attributes\n\
         echo planted\n",
        hooks = hooks.join(" "),
    )
}

/// Finding 3 of issue 16: a job plants hooks, `core.fsmonitor` and configuration in its kept
/// checkout (and asks for its untracked files as artifacts, which the agent lists with git right
/// after the script); the next job on the same worker needs a fetch (the whole history of a shallow
/// checkout), a checkout and a clean by the agent, and none of the planted code runs (the marker
/// stays absent), so the agent's token reaches none of it.
fn planted_git_hooks_and_config_never_run_in_the_agent(store: Store) {
    let s = Setup::new(store);
    let mark = s.dir.path().join("planted-ran");
    let yaml = "stages: [first, second]\n\
         plant:\n  stage: first\n  variables:\n    GIT_DEPTH: \"1\"\n  script:\n    - sh plant.sh\n  artifacts:\n    untracked: true\n\
         next:\n  stage: second\n  variables:\n    GIT_DEPTH: \"0\"\n  script:\n    - test \"$(git rev-parse HEAD)\" = \"$CI_COMMIT_SHA\"\n    - echo \"commits=$(git log --oneline | wc -l | tr -d ' ')\"\n";
    let repo = Repo::new(&[(".gitlab-ci.yml", yaml), ("plant.sh", &plant_script(&mark))]);
    add_commits(&repo, 2);
    let api = s.add("plant", &repo);
    let agent = s.agent("a1");
    let p = api.finished(api.trigger("plant"));
    let token = agent_token(&s, "a1");
    let plant = api.log(job_named(&p, "plant").id);
    assert!(plant.contains("planted\n"), "{plant}");
    let next = api.log(job_named(&p, "next").id);
    let ran = std::fs::read_to_string(&mark).unwrap_or_default();
    assert!(
        !mark.exists(),
        "planted code ran (token exposed: {}): {ran}",
        ran.contains(&token)
    );
    assert_success(&p, &[&agent]);
    assert!(next.contains("commits=3\n"), "{next}");
}

/// The git route of a job answers only the agent that holds the job: no token `401`, another
/// agent (holding a job of another project) `403`, a job that does not exist `404`; pushing is
/// refused; the holder can fetch the commit by its SHA with git itself.
fn git_route_serves_only_the_job_s_agent(store: Store) {
    let s = Setup::new(store);
    let api = Api::new(&s.server);
    let one = Repo::ci("job:\n  script: [echo one]\n");
    let two = Repo::ci("job:\n  script: [echo two]\n");
    api.add_project("one", one.path());
    api.add_project("two", two.path());
    let p1 = api.trigger("one");
    let p2 = api.trigger("two");
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let register = |name: &str| -> String {
        let r: Value = http
            .post(format!("{}/api/v1/agents/register", api.url))
            .json(&json!({"token": REGISTRATION, "name": name, "executor": "shell", "concurrency": 1, "version": "test"}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        r["token"].as_str().unwrap().to_string()
    };
    let claim = |token: &str| -> Value {
        let r = http
            .post(format!(
                "{}/api/v1/agent/jobs/request?wait_ms=10000",
                api.url
            ))
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json().unwrap()
    };
    let (t1, t2) = (register("x"), register("y"));
    let (j1, j2) = (claim(&t1), claim(&t2));
    assert_ne!(j1["pipeline_id"], j2["pipeline_id"]);
    assert!([p1, p2].contains(&j1["pipeline_id"].as_i64().unwrap()));
    let (id1, id2) = (
        j1["job_id"].as_i64().unwrap(),
        j2["job_id"].as_i64().unwrap(),
    );
    let refs = |job: i64, token: Option<&str>, service: &str| -> u16 {
        let mut r = http.get(format!(
            "{}/api/v1/agent/jobs/{job}/git/info/refs?service={service}",
            api.url
        ));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().unwrap().status().as_u16()
    };
    assert_eq!(refs(id1, None, "git-upload-pack"), 401);
    assert_eq!(refs(id1, Some("not-a-token"), "git-upload-pack"), 401);
    assert_eq!(refs(id1, Some(&t2), "git-upload-pack"), 403);
    assert_eq!(refs(id2, Some(&t1), "git-upload-pack"), 403);
    assert_eq!(refs(999_999, Some(&t1), "git-upload-pack"), 404);
    assert_eq!(refs(id1, Some(&t1), "git-receive-pack"), 403);
    assert_eq!(refs(id1, Some(&t1), "git-upload-pack"), 200);
    let push = http
        .post(format!(
            "{}/api/v1/agent/jobs/{id1}/git/git-receive-pack",
            api.url
        ))
        .bearer_auth(&t1)
        .body("0000")
        .send()
        .unwrap();
    assert_eq!(push.status().as_u16(), 403);
    // git itself, by SHA, with the token in its environment.
    let fetch = |job: i64, token: &str, sha: &str| -> bool {
        let dir = tempfile::tempdir().unwrap();
        let init = Command::new("git")
            .args(["init", "-q"])
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert!(init.success());
        Command::new("git")
            .args(["fetch", "-q", "--depth=1"])
            .arg(format!("{}/api/v1/agent/jobs/{job}/git", api.url))
            .arg(format!("+{sha}:refs/gantry/head"))
            .current_dir(dir.path())
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env(
                "GIT_CONFIG_VALUE_0",
                format!("Authorization: Bearer {token}"),
            )
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    let sha1 = j1["sha"].as_str().unwrap();
    assert!(fetch(id1, &t1, sha1));
    assert!(!fetch(id1, &t2, sha1));
}

/// SIGQUIT while a long poll waits: the server ends the poll at once (the agent does not drop it),
/// and a job handed out in that instant runs on the draining agent; no job is left running
/// without an agent until its lease runs out.
fn quit_while_polling_strands_no_job(store: Store) {
    let s = Setup::new(store);
    let (runs, _, yaml) =
        s.runs_and_release("job:\n  script:\n    - echo \"$CI_PIPELINE_ID\" >> {runs}\n");
    let (_repo, api) = s.project("race", &yaml);
    // Idle: the long poll (30 s) ends as soon as the agent asks the server to end it.
    let mut idle = s.agent("idle");
    wait_for("the agent to wait for jobs", || {
        idle.output().contains("waiting for jobs").then_some(())
    });
    // Give the poll time to reach the server (the test passes without, but tests less).
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    idle.signal("QUIT");
    let status = wait_within(Duration::from_secs(10), "the idle agent to exit", || {
        idle.child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0), "{}", idle.output());
    assert!(asked.elapsed() < Duration::from_secs(10));
    // A pipeline created while the agent is told to drain: its job runs on that agent, or stays
    // pending for the next one.
    let mut pipelines = Vec::new();
    for i in 0..3 {
        let mut a = s.agent(&format!("r{i}"));
        wait_for("the agent to wait for jobs", || {
            a.output().contains("waiting for jobs").then_some(())
        });
        let (status, body) = api.post("/api/v1/projects/race/pipelines", &json!({"ref": "main"}));
        assert_eq!(status, 202, "{body}");
        a.signal("QUIT");
        let code = wait_within(Duration::from_secs(20), "the agent to exit", || {
            a.child.try_wait().unwrap()
        });
        assert_eq!(code.code(), Some(0), "{}", a.output());
        let list = api.get_json("/api/v1/projects/race/pipelines");
        for p in list.as_array().unwrap() {
            let id = p["id"].as_i64().unwrap();
            if !pipelines.contains(&id) {
                pipelines.push(id);
            }
        }
        for id in &pipelines {
            let p = api.pipeline(*id);
            for j in &p.jobs {
                assert!(
                    j.status != JobStatus::Running,
                    "a job runs without an agent after the drain: {p:#?}"
                );
            }
        }
    }
    let last = s.agent("last");
    // Every pipeline the API created (one may still be processed when listed).
    let ids = wait_for("the three pipelines", || {
        let list = api.get_json("/api/v1/projects/race/pipelines");
        let ids: Vec<i64> = list
            .as_array()?
            .iter()
            .filter_map(|p| p["id"].as_i64())
            .collect();
        (ids.len() == 3).then_some(ids)
    });
    for id in &ids {
        let p = api.finished(*id);
        assert_success(&p, &[&last]);
    }
    let mut ran = lines_of(&runs);
    ran.sort();
    let mut want: Vec<String> = ids.iter().map(i64::to_string).collect();
    want.sort();
    assert_eq!(ran, want, "each job ran once");
}

/// On a machine without `git`, the agent falls back to the server's archive of the commit's tree.
fn without_git_jobs_get_the_tree(store: Store) {
    let s = Setup::new(store);
    // A PATH with a shell and `cat`, and no git.
    let bin = s.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["bash", "sh", "cat"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap();
        let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
        assert!(!path.is_empty(), "{tool} is installed");
        std::os::unix::fs::symlink(path, bin.join(tool)).unwrap();
    }
    let repo = Repo::new(&[
        ("hello.txt", "hello from the tree\n"),
        (
            ".gitlab-ci.yml",
            "job:\n  script:\n    - test ! -e .git\n    - cat hello.txt\n",
        ),
    ]);
    let api = s.add("nogit", &repo);
    let work = s.path().join("agents").join("plain");
    std::fs::create_dir_all(&work).unwrap();
    let log = s.path().join("plain.log");
    let child = gantry()
        .args(["agent", "--server", &s.server.url, "--token", REGISTRATION])
        .args(["--name", "plain", "--work-dir"])
        .arg(&work)
        .env("PATH", &bin)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let agent = Agent { child, log };
    let id = api.trigger("nogit");
    let p = api.finished(id);
    assert_success(&p, &[&agent]);
    let out = api.log(job_named(&p, "job").id);
    assert!(out.contains("hello from the tree\n"), "{out}");
    assert!(!out.contains("Fetching changes"), "{out}");
    assert!(agent.output().contains("git is not installed"));
}

/// The project's deliveries, newest first.
fn deliveries(api: &Api, project: &str) -> Vec<Value> {
    api.get_json(&format!("/api/v1/projects/{project}/deliveries"))
        .as_array()
        .unwrap()
        .clone()
}

/// Posts an API trigger on `main` and checks the `202`.
fn trigger_accepted(api: &Api, project: &str) {
    let (status, body) = api.post(
        &format!("/api/v1/projects/{project}/pipelines"),
        &json!({"ref": "main"}),
    );
    assert_eq!(status, 202, "{body}");
}

/// Waits, as `what`, until the file `runs` has `n` lines.
pub(crate) fn wait_lines(runs: &Path, n: usize, what: &str) {
    wait_for(what, || (lines_of(runs).len() == n).then_some(()));
}

/// Asserts that `out` exited with `code` and said `says` on standard error.
fn assert_failed_with(out: &std::process::Output, code: i32, says: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(says), "{stderr}");
}

/// Adds `n` commits to `repo`, each writing its number to `n.txt`.
fn add_commits(repo: &Repo, n: usize) {
    for i in 1..=n {
        std::fs::write(repo.path().join("n.txt"), i.to_string()).unwrap();
        repo.git(&["add", "n.txt"]);
        repo.git(&["commit", "-q", "-m", &format!("commit {i}")]);
    }
}

/// Asserts that the log of job `job` of `p` holds `text`.
fn assert_log_has(api: &Api, p: &Pipeline, job: &str, text: &str) {
    let log = api.log(job_named(p, job).id);
    assert!(log.contains(text), "{log}");
}

/// Commits `ci` as the repository's `.gitlab-ci.yml`, with `message`.
fn commit_ci(repo: &Repo, ci: &str, message: &str) {
    std::fs::write(repo.path().join(".gitlab-ci.yml"), ci).unwrap();
    repo.git(&["commit", "-q", "-am", message]);
}

/// Commits `ci` to `repo` as `message`, triggers `project` again (after the pipeline `first`),
/// and checks that the new pipeline failed; answers it.
fn fails_after_commit(
    repo: &Repo,
    api: &Api,
    project: &str,
    first: i64,
    ci: &str,
    message: &str,
) -> Pipeline {
    commit_ci(repo, ci, message);
    let p = api.finished(retrigger(api, project, first));
    assert_eq!(p.status, PipelineStatus::Failed);
    p
}

/// Triggers a pipeline of `project` on `main`; answers its id once it is the newest, after `first`.
pub(crate) fn retrigger(api: &Api, project: &str, first: i64) -> i64 {
    trigger_accepted(api, project);
    let path = format!("/api/v1/projects/{project}/pipelines");
    wait_for("the second pipeline", || {
        let list = api.get_json(&path);
        let newest = list.as_array()?.first()?.get("id")?.as_i64()?;
        (newest != first).then_some(newest)
    })
}

/// A repository path that is away while `away` holds it, for fetches that fail.
fn move_away(repo: &Repo, to: &Path) {
    std::fs::rename(repo.path(), to).unwrap();
}

/// A transient failure (the repository's path is missing) keeps the delivery pending with its
/// attempts counted and a retry time; once the repository is back, a retry creates the pipeline,
/// which runs.
fn unreachable_repo_is_retried_until_it_returns(store: Store) {
    let s = Setup::with_env(
        store,
        &[
            ("GANTRY_DELIVERY_RETRY_BACKOFF", "200ms"),
            ("GANTRY_DELIVERY_RETRY_MAX_BACKOFF", "500ms"),
            ("GANTRY_DELIVERY_MAX_ATTEMPTS", "1000"),
        ],
    );
    let (repo, api) = s.project("flaky", "hello:\n  script: [echo came back]\n");
    let away = s.path().join("repo-away");
    move_away(&repo, &away);
    let sent = Instant::now();
    trigger_accepted(&api, "flaky");
    // Pending, retried more than once, with the fetch's error.
    let d = wait_for("the delivery to be retried twice", || {
        let d = deliveries(&api, "flaky").into_iter().next()?;
        (d["attempts"].as_i64()? >= 3).then_some(d)
    });
    // The processor wakes for each due retry (200 ms, then 400 ms), not only at its 5 s sweep,
    // which would take 10 s for the two retries.
    assert!(
        sent.elapsed() < Duration::from_secs(8),
        "three attempts took {:?}",
        sent.elapsed()
    );
    assert_eq!(d["status"], "pending", "{d}");
    assert!(d["retry_at"].is_string(), "{d}");
    assert!(
        d["last_error"].as_str().unwrap().contains("cannot fetch"),
        "{d}"
    );
    assert!(
        api.get_json("/api/v1/projects/flaky/pipelines")
            .as_array()
            .unwrap()
            .is_empty()
    );
    std::fs::rename(&away, repo.path()).unwrap();
    let agent = s.agent("a1");
    let id = api.first_pipeline("flaky");
    let p = api.finished(id);
    assert_success(&p, &[&agent]);
    assert!(api.log(job_named(&p, "hello").id).contains("came back\n"));
    let d = deliveries(&api, "flaky").into_iter().next().unwrap();
    assert_eq!(d["status"], "created", "{d}");
    assert_eq!(d["pipeline_id"], id, "{d}");
    assert!(d["attempts"].as_i64().unwrap() >= 3, "{d}");
    assert!(d["retry_at"].is_null(), "{d}");
}

/// A repository that never comes back: after the last attempt the delivery is `failed`, the reason
/// saying why and after how many attempts; no pipeline is created. The attempts survive a restart.
fn unreachable_repo_fails_after_the_last_attempt(store: Store) {
    let mut s = Setup::with_env(
        store,
        &[
            ("GANTRY_DELIVERY_RETRY_BACKOFF", "300ms"),
            ("GANTRY_DELIVERY_MAX_ATTEMPTS", "4"),
        ],
    );
    let (repo, api) = s.project("gone", "hello:\n  script: [echo hi]\n");
    let away = s.path().join("repo-away");
    move_away(&repo, &away);
    trigger_accepted(&api, "gone");
    wait_for("a first failed attempt", || {
        let d = deliveries(&api, "gone").into_iter().next()?;
        (d["attempts"].as_i64()? >= 1).then_some(())
    });
    // Restarted (with the same settings), the server goes on counting from the database.
    s.server.kill();
    let listen = format!("127.0.0.1:{}", s.server.port());
    s.server = Server::start_with(
        &s.server.data_dir.clone(),
        s.server.db.clone().as_deref(),
        &listen,
        &[
            ("GANTRY_DELIVERY_RETRY_BACKOFF", "300ms"),
            ("GANTRY_DELIVERY_MAX_ATTEMPTS", "4"),
        ],
    );
    let api = Api::new(&s.server);
    let d = wait_for("the delivery to fail", || {
        let d = deliveries(&api, "gone").into_iter().next()?;
        (d["status"] == "failed").then_some(d)
    });
    assert_eq!(d["attempts"], 4, "{d}");
    let reason = d["reason"].as_str().unwrap();
    assert!(reason.contains("cannot fetch main"), "{reason}");
    assert!(reason.ends_with("(gave up after 4 attempts)"), "{reason}");
    assert!(d["retry_at"].is_null(), "{d}");
    assert!(
        api.get_json("/api/v1/projects/gone/pipelines")
            .as_array()
            .unwrap()
            .is_empty()
    );
    std::fs::rename(&away, repo.path()).unwrap();
}

/// A tiny HTTP server on 127.0.0.1: `GET PATH` answers the body of `PATH` in `files` (200), or 404.
pub(crate) struct HttpStub {
    pub(crate) port: u16,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl HttpStub {
    pub(crate) fn serve(files: Vec<(&'static str, String)>) -> HttpStub {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let req = String::from_utf8_lossy(&req);
                let path = req.split(' ').nth(1).unwrap_or_default();
                let (status, body) = match files.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => ("200 OK", body.as_str()),
                    None => ("404 Not Found", "not found\n"),
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: text/yaml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        HttpStub { port, hits }
    }
}

/// `include:remote` over HTTP: the server fetches the file and the remote file's own remote
/// include; the pipeline has the remote jobs, and they run.
fn remote_include_over_http_runs(store: Store) {
    let s = Setup::with_env(store, &[("GANTRY_ALLOW_LOCAL_INCLUDES", "true")]);
    let nested = HttpStub::serve(vec![(
        "/ci/nested.yml",
        "nested_job:\n  script: [echo from the nested remote file]\n".to_string(),
    )]);
    let stub = HttpStub::serve(vec![(
        "/ci/x.yml",
        format!(
            "include:\n  - remote: http://127.0.0.1:{}/ci/nested.yml\nremote_job:\n  script: [echo from the remote file]\n",
            nested.port
        ),
    )]);
    let repo = Repo::new(&[(
        ".gitlab-ci.yml",
        &format!(
            "include:\n  - remote: http://127.0.0.1:{}/ci/x.yml\nlocal_job:\n  script: [echo local]\n",
            stub.port
        ),
    )]);
    let api = s.add("remote", &repo);
    let agent = s.agent("a1");
    let id = api.trigger("remote");
    let p = api.finished(id);
    assert_success(&p, &[&agent]);
    assert_log_has(&api, &p, "remote_job", "from the remote file\n");
    assert_log_has(&api, &p, "nested_job", "from the nested remote file\n");
    job_named(&p, "local_job");
    assert_eq!(stub.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(nested.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A 404 is not transient: the pipeline fails at once, with the include's position.
    let p = fails_after_commit(
        &repo,
        &api,
        "remote",
        id,
        &format!(
            "include:\n  - remote: http://127.0.0.1:{}/ci/missing.yml\nlocal_job:\n  script: [echo local]\n",
            stub.port
        ),
        "include a missing file",
    );
    let e = &p.errors[0];
    assert_eq!((e.file.as_str(), e.line), (".gitlab-ci.yml", 2), "{e:?}");
    assert!(e.message.contains("404 Not Found"), "{e:?}");
    let d = deliveries(&api, "remote").into_iter().next().unwrap();
    assert_eq!(d["attempts"], 0, "{d}");
}

/// The first error of `p`, checked to stand at the include on line 4, column 5 of
/// `.gitlab-ci.yml`.
fn include_error(p: &Pipeline) -> &gantry_api::PipelineError {
    let e = &p.errors[0];
    assert_eq!(
        (e.file.as_str(), e.line, e.column),
        (".gitlab-ci.yml", 4, 5),
        "{e:?}"
    );
    e
}

/// By default `include:remote` reaches public addresses only: an include of the server's own
/// network fails the pipeline at once (not retried) at the include's position, and the address is
/// never contacted, whether named by IP or by a name that resolves to it.
fn remote_include_of_a_local_address_is_refused(store: Store) {
    let s = Setup::new(store);
    let stub = HttpStub::serve(vec![(
        "/ci/x.yml",
        "remote_job:\n  script: [echo should not run]\n".to_string(),
    )]);
    let api = Api::new(&s.server);
    for (name, host) in [("by-ip", "127.0.0.1"), ("by-name", "localhost")] {
        let url = format!("http://{host}:{}/ci/x.yml", stub.port);
        let repo = Repo::new(&[(
            ".gitlab-ci.yml",
            &format!("job:\n  script: [echo hi]\ninclude:\n  - remote: {url}\n"),
        )]);
        api.add_project(name, repo.path());
        trigger_accepted(&api, name);
        let p = api.finished(api.first_pipeline(name));
        assert_eq!(p.status, PipelineStatus::Failed);
        assert!(p.jobs.is_empty());
        let e = include_error(&p);
        assert!(
            e.message.contains("is not a public address")
                && e.message.contains("allow_local_includes"),
            "{e:?}"
        );
        let d = deliveries(&api, name).into_iter().next().unwrap();
        assert_eq!(d["attempts"], 0, "not retried: {d}");
    }
    assert_eq!(stub.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// `include:project` names another project of this server that allows it (`gantry project add
/// --include-allowed-from` with a pattern): its file at the ref is read from its mirror (fetched
/// first), and the included job runs.
fn project_include_from_another_project_runs(store: Store) {
    let s = Setup::new(store);
    let shared = Repo::new(&[(
        "templates/build.yml",
        "shared_job:\n  script: [echo \"from the shared project on $CI_PROJECT_NAME\"]\n",
    )]);
    shared.git(&["checkout", "-q", "-b", "v1"]);
    std::fs::write(
        shared.path().join("templates/build.yml"),
        "shared_job:\n  script: [echo \"v1 of the shared project\"]\n",
    )
    .unwrap();
    shared.git(&["commit", "-q", "-am", "v1"]);
    shared.git(&["checkout", "-q", "main"]);
    let app = Repo::ci(
        "include:\n  - project: shared\n    ref: v1\n    file: /templates/build.yml\nown_job:\n  script: [echo own]\n",
    );
    let api = Api::new(&s.server);
    let out = gantry()
        .args(["project", "add", "--name", "shared", "--repo-url"])
        .arg(shared.path())
        .args(["--include-allowed-from", "other", "--include-allowed-from"])
        .args(["team-*", "--server", &s.server.url, "--token", ADMIN])
        .args(["--fork-pipelines", "approve", "--protected-branch", "main"])
        .args(["--protected-branch", "release/*", "--protected-tag", "v*"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = api.get_json("/api/v1/projects/shared");
    assert_eq!(shown["include_allowed_from"], json!(["other", "team-*"]));
    assert_eq!(shown["fork_pipelines"], "approve");
    assert_eq!(shown["protected_branches"], json!(["main", "release/*"]));
    assert_eq!(shown["protected_tags"], json!(["v*"]));
    api.add_project("team-app", app.path());
    let agent = s.agent("a1");
    let id = api.trigger("team-app");
    let p = api.finished(id);
    assert_success(&p, &[&agent]);
    assert_log_has(&api, &p, "shared_job", "v1 of the shared project\n");
    job_named(&p, "own_job");
    // A project that is not registered: the pipeline fails with the include's position.
    let p = fails_after_commit(
        &app,
        &api,
        "team-app",
        id,
        "own_job:\n  script: [echo own]\ninclude:\n  - project: nobody\n    file: /x.yml\n",
        "include a project that is not here",
    );
    assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
    let e = &p.errors[0];
    assert_eq!((e.file.as_str(), e.line), (".gitlab-ci.yml", 4), "{e:?}");
    assert!(
        e.message.contains(
            "project `nobody` does not exist or does not allow project `team-app` to include"
        ),
        "{e:?}"
    );
}

/// `include:project` of a project that does not list the including one in `include_allowed_from`
/// (empty by default): the pipeline fails at once (no retry) with the include's position and the
/// setting to change, and nothing of the included file gets in. A project may include its own
/// files without the setting.
fn project_include_is_denied_unless_the_included_project_allows_it(store: Store) {
    let s = Setup::new(store);
    let secret = Repo::new(&[
        (
            ".gitlab-ci.yml",
            "include:\n  - project: secret\n    file: /templates/own.yml\nmain_job:\n  script: [echo main]\n",
        ),
        (
            "templates/own.yml",
            "own_template_job:\n  script: [echo \"private template of $CI_PROJECT_NAME\"]\n",
        ),
    ]);
    let intruder = Repo::ci(
        "own_job:\n  script: [echo own]\ninclude:\n  - project: secret\n    file: /templates/own.yml\n",
    );
    let api = s.add("secret", &secret);
    api.add_project("intruder", intruder.path());
    assert_eq!(
        api.get_json("/api/v1/projects/secret")["include_allowed_from"],
        json!([])
    );
    let agent = s.agent("a1");
    // Itself: allowed without the setting.
    let own = api.trigger("secret");
    let p = api.finished(own);
    assert_success(&p, &[&agent]);
    assert_log_has(&api, &p, "own_template_job", "private template of secret\n");
    // Another project: denied, at once.
    trigger_accepted(&api, "intruder");
    let id = api.first_pipeline("intruder");
    let p = api.finished(id);
    assert_eq!(p.status, PipelineStatus::Failed);
    assert!(p.jobs.is_empty(), "{:?}", p.jobs);
    assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
    let e = include_error(&p);
    assert_eq!(
        e.message,
        "`include:project` `secret` file `/templates/own.yml`: project `secret` does not exist or does not allow \
         project `intruder` to include its files: add `intruder` (or a pattern matching it, such \
         as `*`) to the `include_allowed_from` setting of project `secret`"
    );
    let raw = api.get_json(&format!("/api/v1/pipelines/{id}")).to_string();
    assert!(!raw.contains("private template"), "{raw}");
    let d = deliveries(&api, "intruder").into_iter().next().unwrap();
    assert_eq!(d["attempts"], 0, "{d}");
    assert_eq!(d["status"], "created", "{d}");
}

/// `include:component` of a project of this server (the host is the server's `external_url`):
/// `~latest` picks the highest semantic version tag, and the `templates/NAME/template.yml` layout
/// is found; `include:template` comes from the instance set as `templates_url`. A component of
/// another host is refused at once.
fn component_and_template_includes_resolve(store: Store) {
    let template = HttpStub::serve(vec![(
        "/api/v4/projects/gitlab-org%2Fgitlab/repository/files/lib%2Fgitlab%2Fci%2Ftemplates%2FHello.gitlab-ci.yml/raw?ref=master",
        "template_job:\n  script: [echo from the template]\n".to_string(),
    )]);
    let s = Setup::with_env(
        store,
        &[
            ("GANTRY_EXTERNAL_URL", "http://gantry.test:8080"),
            (
                "GANTRY_TEMPLATES_URL",
                &format!("http://127.0.0.1:{}", template.port),
            ),
            ("GANTRY_ALLOW_LOCAL_INCLUDES", "true"),
        ],
    );
    let comps = Repo::new(&[
        (
            "templates/build/template.yml",
            "spec:\n  inputs:\n    word:\n---\nbuild_$[[ inputs.word ]]:\n  script: [echo 1.0]\n",
        ),
        (
            "templates/common.yml",
            "common:\n  script: [echo common 1.0]\n",
        ),
    ]);
    comps.git(&["tag", "1.0.0"]);
    // A local include of the component is the component project's file at the selected version.
    std::fs::write(
        comps.path().join("templates/build/template.yml"),
        "spec:\n  inputs:\n    word:\n---\ninclude: /templates/common.yml\nbuild_$[[ inputs.word ]]:\n  script: [echo \"component 1.1\"]\n",
    )
    .unwrap();
    std::fs::write(
        comps.path().join("templates/common.yml"),
        "common:\n  script: [echo \"common 1.1\"]\n",
    )
    .unwrap();
    comps.git(&["commit", "-q", "-am", "1.1"]);
    comps.git(&["tag", "1.1.0"]);
    comps.git(&["tag", "2.0.0-rc1"]);
    std::fs::write(
        comps.path().join("templates/common.yml"),
        "common:\n  script: [echo \"common main\"]\n",
    )
    .unwrap();
    comps.git(&["commit", "-q", "-am", "after 1.1"]);
    let app = Repo::ci(
        "include:\n  - component: gantry.test:8080/comps/build@~latest\n    inputs:\n      word: latest\n  - template: Hello.gitlab-ci.yml\n",
    );
    let api = Api::new(&s.server);
    let (status, body) = api.post(
        "/api/v1/projects",
        &json!({"name": "comps", "repo_url": comps.path().to_str().unwrap(),
                "webhook_secret": WEBHOOK, "include_allowed_from": ["app"]}),
    );
    assert_eq!(status, 201, "{body}");
    api.add_project("app", app.path());
    let agent = s.agent("a1");
    let id = api.trigger("app");
    let p = api.finished(id);
    assert_success(&p, &[&agent]);
    assert_log_has(&api, &p, "build_latest", "component 1.1\n");
    assert_log_has(&api, &p, "common", "common 1.1\n");
    assert_log_has(&api, &p, "template_job", "from the template\n");
    // Another host: refused at once, with the include's position.
    let p = fails_after_commit(
        &app,
        &api,
        "app",
        id,
        "job:\n  script: [x]\ninclude:\n  - component: gitlab.com/group/comps/build@1.0.0\n",
        "a component of another host",
    );
    let e = include_error(&p);
    assert!(
        e.message
            .contains("gantry server includes components of its own projects only"),
        "{e:?}"
    );
}

/// `include:remote` of a host that refuses connections: transient, so the delivery is retried; on
/// its last attempt the pipeline is created `failed` with the error at the include's position.
fn unreachable_remote_include_fails_the_pipeline_with_its_position(store: Store) {
    let s = Setup::with_env(
        store,
        &[
            ("GANTRY_DELIVERY_RETRY_BACKOFF", "200ms"),
            ("GANTRY_DELIVERY_MAX_ATTEMPTS", "3"),
            ("GANTRY_ALLOW_LOCAL_INCLUDES", "true"),
        ],
    );
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/x.yml");
    let repo = Repo::new(&[(
        ".gitlab-ci.yml",
        &format!("job:\n  script: [echo hi]\ninclude:\n  - remote: {url}\n"),
    )]);
    let api = s.add("offline", &repo);
    trigger_accepted(&api, "offline");
    let id = api.first_pipeline("offline");
    let p = api.finished(id);
    assert_eq!(p.status, PipelineStatus::Failed);
    assert!(p.jobs.is_empty());
    assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
    let e = include_error(&p);
    assert!(
        e.message
            .starts_with(&format!("`include:remote` `{url}`: cannot be fetched")),
        "{e:?}"
    );
    assert!(e.message.ends_with("(gave up after 3 attempts)"), "{e:?}");
    let d = deliveries(&api, "offline").into_iter().next().unwrap();
    assert_eq!(d["status"], "created", "{d}");
    assert_eq!(d["attempts"], 2, "{d}");
    assert!(
        d["last_error"]
            .as_str()
            .unwrap()
            .contains(&format!("include `remote:{url}`")),
        "{d}"
    );
}

/// The `sha256sum` of `big.bin` printed in a job's log.
fn big_bin_sha(log: &str) -> &str {
    log.lines()
        .filter_map(|l| l.strip_suffix("  big.bin"))
        .find(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no sha256sum of big.bin in {log}"))
}

/// A 64 MiB artifact (sent from the agent's disk, not its memory) reaches the next stage's job
/// byte for byte.
fn big_artifact_passes_intact(store: Store) {
    let s = Setup::new(store);
    let repo = Repo::new(&[(
        ".gitlab-ci.yml",
        "stages: [build, test]\n\
         make:\n  stage: build\n  script:\n    - head -c 67108864 /dev/urandom > big.bin\n    - sha256sum big.bin\n  artifacts:\n    paths: [big.bin]\n\
         take:\n  stage: test\n  script:\n    - sha256sum big.bin\n    - echo \"size $(wc -c < big.bin)\"\n",
    )]);
    let api = s.add("big", &repo);
    let agent = s.agent("a1");
    let id = api.trigger("big");
    let p = api.finished(id);
    assert_success(&p, &[&agent]);
    let made = api.log(job_named(&p, "make").id);
    let taken = api.log(job_named(&p, "take").id);
    assert_eq!(
        big_bin_sha(&taken),
        big_bin_sha(&made),
        "{made}\n---\n{taken}"
    );
    assert!(taken.contains("size 67108864\n"), "{taken}");
}

/// Agents' credentials from the command line (issue 16, finding 9): with `--token-file`, neither
/// the registration token nor the agent's own token is in a job's environment or in any command
/// line a job can list; `gantry agent rotate-registration-token` makes the old token stop
/// registering; `gantry agent revoke` makes the server refuse the agent, which exits with 2.
#[test]
fn agent_credentials_stay_out_of_jobs_and_can_be_revoked() {
    // A registration token of its own: other tests' agents, running meanwhile, carry the shared one
    // on their command lines, which this job lists.
    let registration = format!("quiet-registration-{}", std::process::id());
    let s = Setup::with_env(
        Store::Sqlite,
        &[("GANTRY_REGISTRATION_TOKEN", registration.as_str())],
    );
    let repo = Repo::ci(
        "job:\n  script:\n    - env\n    - for f in /proc/[0-9]*/cmdline; do { tr '\\0' ' ' < \"$f\"; } 2>/dev/null || true; echo; done\n",
    );
    let api = s.add("env", &repo);
    let token_file = s.path().join("registration-token");
    std::fs::write(&token_file, format!("{registration}\n")).unwrap();
    let work = s.path().join("agents").join("quiet");
    std::fs::create_dir_all(&work).unwrap();
    let log = s.path().join("quiet.log");
    let child = gantry()
        .args(["agent", "--server", &s.server.url, "--token-file"])
        .arg(&token_file)
        .args(["--name", "quiet", "--work-dir"])
        .arg(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut agent = Agent { child, log };
    let p = api.finished(api.trigger("env"));
    assert_success(&p, &[&agent]);
    let out = api.log(job_named(&p, "job").id);
    let identity: Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("agent.json")).unwrap()).unwrap();
    let own = identity["token"].as_str().unwrap();
    // The job saw its environment and the agent's command line.
    assert!(out.contains("CI_JOB_ID="), "{out}");
    assert!(out.contains("--token-file"), "{out}");
    assert!(!out.contains(&registration), "{out}");
    assert!(!out.contains(own), "{out}");

    let rotated = gantry()
        .args([
            "agent",
            "rotate-registration-token",
            "--server",
            &s.server.url,
        ])
        .args(["--token", ADMIN])
        .output()
        .unwrap();
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let new = String::from_utf8(rotated.stdout)
        .unwrap()
        .trim()
        .to_string();
    assert!(!new.is_empty() && new != registration);
    let late = gantry()
        .args(["agent", "--server", &s.server.url, "--token-file"])
        .arg(&token_file)
        .arg("--work-dir")
        .arg(s.path().join("late"))
        .output()
        .unwrap();
    assert_failed_with(&late, 2, "rejected the registration token");

    let id = identity["id"].as_i64().unwrap().to_string();
    let revoked = gantry()
        .args(["agent", "revoke", &id, "--server", &s.server.url])
        .args(["--token", ADMIN])
        .output()
        .unwrap();
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let status = wait_for("the revoked agent to exit", || {
        agent.child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(2), "{}", agent.output());
}
