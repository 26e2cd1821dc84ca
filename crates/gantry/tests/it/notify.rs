//! `gantry run`'s notifications: the `notify:` rules hear about a failed pipeline and a fixed one,
//! through a local recording HTTP server; a target that cannot be reached only warns.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::{Repo, Run};

/// A local HTTP server that answers `200` to every request and keeps the bodies of the requests.
pub(crate) struct Recorder {
    port: u16,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Recorder {
    pub(crate) fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                kept.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        });
        Recorder { port, bodies }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook/TOKEN", self.port)
    }

    pub(crate) fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }
}

const CI: &str = r#"
notify:
  - on: [pipeline_failed, pipeline_fixed]
    webhook: {url: $HOOK_URL}
build:
  script: echo built
check:
  script: test "$PASS" = yes
flaky:
  script: exit 1
  allow_failure: true
"#;

/// `gantry run` with the hook at `url`; the `check` job passes when `pass`.
fn run(repo: &Repo, url: &str, pass: bool) -> Run {
    let hook = format!("HOOK_URL={url}");
    let pass = format!("PASS={}", if pass { "yes" } else { "no" });
    repo.run_json(&["--variable", &hook, "--variable", &pass])
}

fn notifications(r: &Run) -> Vec<&Value> {
    r.events
        .iter()
        .filter(|e| e["event"] == "notification")
        .collect()
}

#[test]
fn a_failed_pipeline_notifies_with_its_failed_jobs() {
    let hook = Recorder::start();
    let repo = Repo::ci(CI);
    let r = run(&repo, &hook.url(), false);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let b = &bodies[0];
    assert_eq!(b["event"], "pipeline_failed");
    assert_eq!(b["failed_jobs"], json!(["check"]));
    assert_eq!(b["ref"], "main");
    assert_eq!(b["commit"]["sha"], repo.git(&["rev-parse", "HEAD"]).trim());
    assert_eq!(b["commit"]["title"], "Initial commit");
    let name = repo.path().file_name().unwrap().to_string_lossy();
    assert_eq!(b["project"], name.as_ref());
    assert_eq!(
        notifications(&r),
        [
            &json!({"event": "notification", "target": "webhook", "delivered": true, "attempts": 1, "error": null})
        ]
    );
}

#[test]
fn a_passing_run_after_a_failed_one_is_pipeline_fixed() {
    let hook = Recorder::start();
    let repo = Repo::ci(CI);
    assert_eq!(run(&repo, &hook.url(), true).code, 0);
    assert!(hook.bodies().is_empty(), "a first success is no news");
    assert_eq!(run(&repo, &hook.url(), false).code, 1);
    // A run of some jobs says nothing of the pipeline: no notification, and the ref stays failed.
    let hook_var = format!("HOOK_URL={}", hook.url());
    let part = repo.run_json(&["build", "--variable", &hook_var]);
    assert_eq!(part.code, 0, "{}", part.stderr);
    assert!(notifications(&part).is_empty(), "{}", part.dump());
    assert_eq!(hook.bodies().len(), 1);
    assert_eq!(run(&repo, &hook.url(), true).code, 0);
    assert_eq!(run(&repo, &hook.url(), true).code, 0);
    let kinds: Vec<Value> = hook.bodies().iter().map(|b| b["event"].clone()).collect();
    assert_eq!(kinds, ["pipeline_failed", "pipeline_fixed"]);
}

#[test]
fn an_unreachable_target_only_warns() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}/hook/SECRET-TOKEN",
        closed.local_addr().unwrap().port()
    );
    drop(closed);
    let repo = Repo::ci(CI);
    for (pass, code, status) in [(false, 1, "failed"), (true, 0, "success")] {
        let r = run(&repo, &url, pass);
        assert_eq!(r.code, code, "{}", r.stderr);
        let warnings: Vec<&str> = r
            .stderr
            .lines()
            .filter(|l| l.contains("notification"))
            .collect();
        assert_eq!(warnings.len(), 1, "{}", r.stderr);
        assert!(
            warnings[0].starts_with("gantry: warning: notification to webhook"),
            "{}",
            warnings[0]
        );
        assert!(!r.stderr.contains("SECRET-TOKEN"), "{}", r.stderr);
        let n = notifications(&r);
        assert_eq!(n.len(), 1, "{n:?}");
        assert_eq!(n[0]["delivered"], false);
        assert_eq!(n[0]["attempts"], 3);
        assert!(n[0]["error"].as_str().unwrap().contains("cannot connect"));
        let finished = r.events.iter().find(|e| e["event"] == "pipeline_finished");
        assert_eq!(finished.unwrap()["status"], status);
    }
}
