//! The command line against a real server (issue 20's "the command line speaks the same API"):
//! `gantry login`, `pipeline`, `job`, `project`, `agent list`, `env --project`, each with its
//! table and its `--output json`, and their errors. The server and agent are real processes
//! (`server.rs`'s `Setup`); the jobs run on a real agent.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gantry_api::{JobStatus, PipelineStatus};
use serde_json::Value;

use crate::server::{ADMIN, Setup, Store, gantry, job_named, retrigger, wait_for};

/// `gantry ARGS` with its config directory (for `gantry login`) in `home`.
fn cli(home: &Path, args: &[&str]) -> Command {
    let mut c = gantry();
    c.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .args(args);
    c
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn ok(c: &mut Command) -> String {
    stdout(&c.output().unwrap())
}

fn json(c: &mut Command) -> Value {
    let text = ok(c.args(["--output", "json"]));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Runs `c`, which must fail with `code` and say `says` on stderr.
fn fails(c: &mut Command, code: i32, says: &str) {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(err.contains(says), "wanted `{says}` in: {err}");
}

const CI: &str = "stages: [build, test]
build:
  stage: build
  script:
    - echo built $GREETING
flaky:
  stage: test
  script:
    - if [ -f \"$MARK\" ]; then echo second try; else touch \"$MARK\"; exit 1; fi
deploy:
  stage: test
  when: manual
  script:
    - echo deploying
";

#[test]
fn login_projects_variables_schedules_pipelines_jobs_and_agents() {
    let s = Setup::new(Store::Sqlite);
    let home = s.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let url = s.server.url.clone();
    let mark = s.path().join("mark");
    let (_repo, api) = s.project("cli", CI);

    // A token the server does not know is refused and saves nothing.
    fails(
        &mut cli(&home, &["login", "--server", &url, "--token", "nope"]),
        2,
        "401",
    );
    let login = home.join("config/gantry/login.json");
    assert!(!login.exists());
    let out = cli(&home, &["login", "--server", &url, "--token", ADMIN])
        .output()
        .unwrap();
    stdout(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("the admin token"));
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&login).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    // From here on the commands find the server and token in the login file.
    let g = |args: &[&str]| cli(&home, args);

    // Variables: set (plain, and masked + protected + scoped), list, delete.
    let text = ok(&mut g(&[
        "project", "variable", "set", "cli", "GREETING", "hi-cli",
    ]));
    assert!(text.contains("set GREETING of cli (scope *)"), "{text}");
    let mark_s = mark.to_str().unwrap();
    ok(&mut g(&[
        "project", "variable", "set", "cli", "MARK", mark_s,
    ]));
    let v = json(&mut g(&[
        "project",
        "variable",
        "set",
        "cli",
        "SECRET",
        "s3cret-value",
        "--masked",
        "--protected",
        "--environment-scope",
        "production",
    ]));
    assert_eq!(v["value"], Value::Null, "{v}");
    assert_eq!(v["environment_scope"], "production");
    let text = ok(&mut g(&["project", "variable", "list", "cli"]));
    let secret_row = text.lines().find(|l| l.starts_with("SECRET")).unwrap();
    assert!(
        secret_row.contains("[MASKED]") && secret_row.contains("production"),
        "{text}"
    );
    assert!(!text.contains("s3cret-value"), "{text}");
    assert!(text.starts_with("KEY"), "{text}");
    fails(
        &mut g(&[
            "project", "variable", "set", "cli", "SHORT", "x", "--masked",
        ]),
        2,
        "at least 8 characters",
    );
    let gone = json(&mut g(&["project", "variable", "delete", "cli", "SECRET"]));
    assert_eq!(gone, serde_json::json!({"deleted": "SECRET"}));
    let list = json(&mut g(&["project", "variable", "list", "cli"]));
    let keys: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["GREETING", "MARK"]);
    fails(
        &mut g(&["project", "variable", "delete", "cli", "SECRET"]),
        2,
        "has no variable `SECRET`",
    );

    // A project token reads the project's variables, and may not change them.
    let token = ok(&mut g(&[
        "project", "token", "create", "cli", "--name", "ci",
    ]));
    let token = token.trim();
    let list = json(&mut g(&[
        "project", "variable", "list", "cli", "--token", token,
    ]));
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    fails(
        &mut g(&[
            "project", "variable", "set", "cli", "X", "y", "--token", token,
        ]),
        2,
        "403",
    );

    // A token of scope `read` (and `--read-only`, its older spelling): the scope in the table and
    // the JSON, and the server's reason when it tries a change.
    let reader = ok(&mut g(&[
        "project", "token", "create", "cli", "--name", "viewer", "--scope", "read",
    ]));
    ok(&mut g(&[
        "project",
        "token",
        "create",
        "cli",
        "--name",
        "old",
        "--read-only",
    ]));
    let text = ok(&mut g(&["project", "token", "list", "cli"]));
    let scope_of = |name: &str| {
        let row = text.lines().find(|l| l.contains(name)).unwrap();
        row.split_whitespace().nth(2).unwrap().to_string()
    };
    assert!(text.starts_with("ID  NAME"), "{text}");
    assert_eq!(
        [scope_of(" ci "), scope_of("viewer"), scope_of("old")],
        ["write", "read", "read"],
        "{text}"
    );
    let list = json(&mut g(&["project", "token", "list", "cli"]));
    assert_eq!(list[1]["scope"], "read", "{list}");
    fails(
        &mut g(&[
            "project", "token", "create", "cli", "--name", "x", "--scope", "admin",
        ]),
        2,
        "invalid value 'admin'",
    );

    // Schedules: add, list, delete; a bad one is refused with the server's message.
    let text = ok(&mut g(&[
        "project",
        "schedule",
        "add",
        "cli",
        "--cron",
        "0 9 * * 1-5",
        "--cron-timezone",
        "Europe/Berlin",
        "--ref",
        "main",
    ]));
    assert!(
        text.contains("1  0 9 * * 1-5  Europe/Berlin  main"),
        "{text}"
    );
    fails(
        &mut g(&["project", "schedule", "add", "cli", "--cron", "nope"]),
        2,
        "schedule `nope`",
    );
    let list = json(&mut g(&["project", "schedule", "list", "cli"]));
    assert_eq!(list[0]["cron_timezone"], "Europe/Berlin", "{list}");
    let text = ok(&mut g(&["project", "schedule", "delete", "cli", "1"]));
    assert_eq!(text, "deleted schedule 1 of cli\n");
    assert_eq!(
        json(&mut g(&["project", "schedule", "list", "cli"])),
        Value::Array(vec![])
    );
    fails(
        &mut g(&["project", "schedule", "delete", "cli", "1"]),
        2,
        "has no schedule 1",
    );

    // Projects.
    let text = ok(&mut g(&["project", "list"]));
    let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..2], ["cli", "main"], "{text}");
    assert_eq!(json(&mut g(&["project", "list"]))[0]["name"], "cli");
    let text = ok(&mut g(&["project", "show", "cli"]));
    assert!(text.starts_with("name:               cli\n"), "{text}");
    assert!(text.contains("\ndefault branch:     main\n"), "{text}");
    assert_eq!(
        json(&mut g(&["project", "show", "cli"]))["variables"][0]["key"],
        "GREETING"
    );
    fails(&mut g(&["project", "show", "nope"]), 2, "404");

    // A pipeline on a real agent: `build` sees the variable set above, `flaky` fails once.
    let _agent = s.agent("a1");
    let id = api.trigger("cli");
    let p = wait_for("build and flaky to end", || {
        let p = api.pipeline(id);
        (job_named(&p, "flaky").status == JobStatus::Failed).then_some(p)
    });
    let ids = id.to_string();
    let text = ok(&mut g(&["pipeline", "list", "cli"]));
    assert!(text.starts_with("ID  STATUS"), "{text}");
    assert!(
        text.lines().nth(1).unwrap().starts_with(&format!("{id}  ")),
        "{text}"
    );
    let list = json(&mut g(&["pipeline", "list", "cli", "--ref", "main"]));
    assert_eq!(list[0]["id"], id);
    let list = json(&mut g(&["pipeline", "list", "cli", "--status", "success"]));
    assert_eq!(list, Value::Array(vec![]));
    let list = json(&mut g(&["pipeline", "list", "cli", "--page", "2"]));
    assert_eq!(list, Value::Array(vec![]));

    let build = job_named(&p, "build").id;
    let flaky = job_named(&p, "flaky").id;
    let deploy = job_named(&p, "deploy").id;
    fails(
        &mut g(&["job", "play", &deploy.to_string(), "--token", reader.trim()]),
        2,
        "this token's scope is read: it cannot play a job",
    );
    let text = ok(&mut g(&["pipeline", "show", &ids]));
    assert!(text.starts_with(&format!("pipeline {id}  ")), "{text}");
    assert!(text.contains("├─ build\n│  └─ build "), "{text}");
    assert!(
        text.contains(&format!("└─ test\n   ├─ flaky   failed    #{flaky}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("   └─ deploy  manual    #{deploy}")),
        "{text}"
    );
    let shown = json(&mut g(&["pipeline", "show", &ids]));
    assert_eq!(shown["jobs"].as_array().unwrap().len(), 3);

    let log = ok(&mut g(&["job", "log", &build.to_string()]));
    assert!(log.contains("built hi-cli\n"), "{log}");

    // Retrying the pipeline retries its failed job, and says so.
    let text = ok(&mut g(&["pipeline", "retry", &ids]));
    assert!(text.starts_with("retried flaky: job #"), "{text}");
    assert!(text.contains("(attempt 2)"), "{text}");
    let p = wait_for("the retry to pass", || {
        let p = api.pipeline(id);
        (job_named(&p, "flaky").status == JobStatus::Success).then_some(p)
    });
    assert_eq!(job_named(&p, "flaky").attempt, 2);
    let text = ok(&mut g(&["pipeline", "retry", &ids]));
    assert!(text.contains("nothing retried"), "{text}");
    assert_eq!(
        json(&mut g(&["pipeline", "retry", &ids])),
        Value::Array(vec![])
    );

    // Play the manual job; retry a job.
    let text = ok(&mut g(&["job", "play", &deploy.to_string()]));
    assert!(text.starts_with("started deploy: job #"), "{text}");
    let p = api.finished(id);
    assert_eq!(p.status, PipelineStatus::Success, "{p:#?}");
    let retried = json(&mut g(&["job", "retry", &build.to_string()]));
    assert_eq!(retried["name"], "build");
    assert_eq!(retried["attempt"], 2);
    api.finished(id);
    fails(&mut g(&["job", "play", &build.to_string()]), 2, "409");

    // Agents.
    let text = ok(&mut g(&["agent", "list"]));
    let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[1..4], ["a1", "online", "-"], "idle: {text}");
    assert!(text.starts_with("ID  NAME  STATUS  JOBS  "), "{text}");
    // The protocol the agent speaks, in its column.
    let at = text.lines().next().unwrap().find("PROTOCOL").unwrap();
    let protocol = gantry_api::agent::PROTOCOL.to_string();
    assert!(
        text.lines().nth(1).unwrap()[at..].starts_with(&protocol),
        "{text}"
    );
    let list = json(&mut g(&["agent", "list"]));
    assert_eq!(list[0]["name"], "a1");
    assert_eq!(list[0]["jobs"], Value::Array(vec![]), "{list}");
    assert_eq!(list[0]["protocol"], gantry_api::agent::PROTOCOL, "{list}");

    // Errors: an unknown id, a finished pipeline, a bad token, no server at all.
    fails(
        &mut g(&["pipeline", "show", "99999"]),
        2,
        "404 Not Found: no pipeline 99999",
    );
    fails(&mut g(&["pipeline", "cancel", &ids]), 2, "409");
    fails(
        &mut g(&[
            "pipeline", "list", "cli", "--server", &url, "--token", "wrong",
        ]),
        2,
        "401",
    );
    // A token from the environment never goes to the saved login's server.
    fails(
        g(&["pipeline", "list", "cli"]).env("GANTRY_TOKEN", "another-servers-token"),
        2,
        "a token from the environment needs its server",
    );
    fails(
        gantry()
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join("elsewhere"))
            .args(["pipeline", "list", "cli"]),
        2,
        "no server",
    );
    // The saved token goes to its own server only (a trailing `/` is the same server).
    fails(
        &mut g(&["pipeline", "list", "cli", "--server", "http://127.0.0.1:9"]),
        2,
        "no token",
    );
    ok(&mut g(&[
        "pipeline",
        "list",
        "cli",
        "--server",
        &format!("{url}/"),
    ]));
    // GANTRY_SERVER and GANTRY_TOKEN work without a login.
    let text = ok(gantry()
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join("elsewhere"))
        .env("GANTRY_SERVER", &url)
        .env("GANTRY_TOKEN", ADMIN)
        .args(["pipeline", "list", "cli"]));
    let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..2], [ids.as_str(), "success"], "{text}");
}

/// Reads `child`'s stdout on a thread, chunk by chunk.
fn chunks(child: &mut std::process::Child) -> mpsc::Receiver<Vec<u8>> {
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects `rx` into `seen` until it holds `text`, within the deadline.
fn read_until(rx: &mpsc::Receiver<Vec<u8>>, seen: &mut Vec<u8>, text: &str) {
    let end = Instant::now() + Duration::from_secs(45);
    while !String::from_utf8_lossy(seen).contains(text) {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(c) => seen.extend(c),
            Err(_) => panic!(
                "no `{text}` in the followed log: {}",
                String::from_utf8_lossy(seen)
            ),
        }
    }
}

#[test]
fn job_log_follows_a_running_job_and_pipelines_cancel() {
    let s = Setup::new(Store::Sqlite);
    let home = s.path().join("home");
    let release = s.path().join("release");
    let ci = format!(
        "slow:\n  script:\n    - printf '\\033[32mfirst line\\033[0m\\n'\n    - while [ ! -f {} ]; do sleep 0.05; done\n    - echo second line\n",
        release.display()
    );
    let (_repo, api) = s.project("follow", &ci);
    let url = s.server.url.clone();
    let g = |args: &[&str]| {
        let mut c = cli(&home, args);
        c.args(["--server", &url, "--token", ADMIN]);
        c
    };
    let _agent = s.agent("a1");
    let id = api.trigger("follow");
    let job = wait_for("the job to start", || {
        let p = api.pipeline(id);
        let j = job_named(&p, "slow");
        (j.status == JobStatus::Running).then_some(j.id)
    });

    let mut follow = g(&["job", "log", &job.to_string(), "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = chunks(&mut follow);
    let mut seen = Vec::new();
    // The colours arrive as the job wrote them.
    read_until(&rx, &mut seen, "\x1b[32mfirst line\x1b[0m\n");
    assert!(
        !String::from_utf8_lossy(&seen).contains("second line"),
        "the job has not written it yet"
    );
    assert!(follow.try_wait().unwrap().is_none(), "it follows the job");
    // The agent lists the job it runs.
    let text = ok(&mut g(&["agent", "list"]));
    let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[1..4], ["a1", "online", &job.to_string()], "{text}");
    let list = json(&mut g(&["agent", "list"]));
    assert_eq!(list[0]["jobs"][0]["id"], job, "{list}");
    assert_eq!(list[0]["jobs"][0]["name"], "slow", "{list}");
    assert_eq!(list[0]["jobs"][0]["project"], "follow", "{list}");
    std::fs::write(&release, "").unwrap();
    read_until(&rx, &mut seen, "second line\n");
    let status = wait_for("gantry job log to exit", || follow.try_wait().unwrap());
    let mut err = String::new();
    follow
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("job {job} ended: success")), "{err}");
    api.finished(id);

    // The JSON form: the stream's events, one a line, the last one the end.
    let out = ok(&mut g(&[
        "job",
        "log",
        &job.to_string(),
        "--follow",
        "--output",
        "json",
    ]));
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["offset"], 0);
    assert!(events[0]["text"].as_str().unwrap().contains("first line"));
    assert_eq!(events.last().unwrap()["status"], "success");

    // A running pipeline is canceled; its followed log ends with the job's status, exit 1.
    std::fs::remove_file(&release).unwrap();
    let second = retrigger(&api, "follow", id);
    let job = wait_for("the second job to start", || {
        let p = api.pipeline(second);
        let j = job_named(&p, "slow");
        (j.status == JobStatus::Running).then_some(j.id)
    });
    let canceled = json(&mut g(&["pipeline", "cancel", &second.to_string()]));
    assert_eq!(canceled["id"], second);
    let out = g(&["job", "log", &job.to_string(), "--follow"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ended: canceled"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fails(&mut g(&["job", "log", "99999"]), 2, "404");

    // A reader that went away (`| head`) ends the command quietly.
    let mut child = g(&["job", "log", &job.to_string(), "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn env_lists_a_server_project_s_environments_and_history() {
    let s = Setup::new(Store::Sqlite);
    let home = s.path().join("home");
    let url = s.server.url.clone();
    let (_repo, api) = s.project(
        "shop",
        "deploy:\n  script: [echo deploying]\n  environment:\n    name: review/app\n",
    );
    let g = |args: &[&str]| {
        let mut c = cli(&home, args);
        c.args(["--server", &url, "--token", ADMIN]);
        c
    };
    fails(&mut g(&["env", "list"]), 2, "--project NAME");
    fails(
        &mut g(&["env", "history", "review/app", "--project", "shop"]),
        2,
        "404 Not Found: project shop has no environment `review/app`",
    );
    fails(&mut g(&["env", "list", "--project", "nope"]), 2, "404");

    let _agent = s.agent("a1");
    let first = api.trigger("shop");
    api.finished(first);
    let second = retrigger(&api, "shop", first);
    api.finished(second);

    let text = ok(&mut g(&["env", "list", "--project", "shop"]));
    assert!(text.starts_with("ENVIRONMENT  CURRENT"), "{text}");
    let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[0], "review/app", "{text}");
    assert_eq!(row[1], row[3], "the newest is the current one: {text}");
    assert_eq!(row[4..6], ["success", "main"], "{text}");
    let envs = json(&mut g(&["env", "list", "--project", "shop"]));
    assert_eq!(envs[0]["deployments"], 2, "{envs}");
    assert_eq!(envs[0]["current"]["pipeline_id"], second, "{envs}");

    // The slash in the name reaches the server encoded; newest first.
    let text = ok(&mut g(&[
        "env",
        "history",
        "review/app",
        "--project",
        "shop",
    ]));
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert_eq!(
        rows[0][1..4],
        ["success", "deploy", &second.to_string()],
        "{text}"
    );
    assert_eq!(rows[1][3], first.to_string(), "{text}");
    let history = ["env", "history", "review/app", "--project", "shop"];
    let list = json(&mut g(&history));
    assert_eq!(list[1]["pipeline_id"], first, "{list}");
    let list = json(g(&history).args(["--page", "2"]));
    assert_eq!(list, Value::Array(vec![]));
    // `gantry rollback` against the server re-deploys the first deployment.
    let rollback = ["rollback", "review/app", "--project", "shop"];
    let to = list_id(&json(&mut g(&history)), 1);
    let from = list_id(&json(&mut g(&history)), 0);
    let text = ok(&mut g(&rollback));
    let prefix = format!("rollback of review/app: deployment {from} → {to}, job ");
    let job: i64 = text
        .strip_prefix(&prefix)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    // The rollback runs in the first pipeline, which keeps its status: wait for its job.
    wait_for("the rollback's job to end", || {
        api.job(job).status.is_final().then_some(())
    });
    let list = json(&mut g(&history));
    assert_eq!(list[0]["rollback_of"], from, "{list}");
    assert_eq!(list[0]["status"], "success", "{list}");
    assert_eq!(list[1]["status"], "rolled_back", "{list}");
    // Nothing earlier than the first deployment succeeded: the server's 409 and its message.
    fails(g(&rollback).args(["--to", "999999"]), 2, "409");
    // Without --project and --server, `env` still reads this directory's `gantry run` records.
    fails(
        cli(&home, &["env", "history", "review/app", "--cwd"]).arg(s.path()),
        2,
        "review/app",
    );
}

/// The id of the deployment at `index` of a JSON list.
fn list_id(list: &Value, index: usize) -> i64 {
    list[index]["id"].as_i64().expect("a deployment id")
}

#[test]
fn pipeline_list_says_where_the_next_page_is() {
    let s = Setup::new(Store::Sqlite);
    let home = s.path().join("home");
    let (_repo, _api) = s.project("many", "job:\n  script: [echo hi]\n");
    let url = s.server.url.clone();
    let g = |args: &[&str]| {
        let mut c = cli(&home, args);
        c.args(["--server", &url, "--token", ADMIN]);
        c
    };
    let http = reqwest::blocking::Client::new();
    for _ in 0..21 {
        let r = http
            .post(format!("{url}/api/v1/projects/many/pipelines"))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({"ref": "main"}))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
    }
    wait_for("21 pipelines", || {
        let page = json(&mut g(&["pipeline", "list", "many", "--page", "2"]));
        (page.as_array()?.len() == 1).then_some(())
    });
    let out = g(&["pipeline", "list", "many"]).output().unwrap();
    assert_eq!(stdout(&out).lines().count(), 21, "a header and 20 rows");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("more on page 2 of 2 (--page 2)"), "{err}");
    let out = g(&["pipeline", "list", "many", "--page", "2"])
        .output()
        .unwrap();
    assert_eq!(stdout(&out).lines().count(), 2);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
