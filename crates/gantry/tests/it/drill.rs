//! The failure drill (issue 19): examples/go-service deployed as local processes and verified
//! against a real Prometheus (Debian's `prometheus`, scraping both replicas every second). Version 1
//! deploys and verifies; version 2 answers 500 to 10% of requests, fails its verification and is
//! rolled back to version 1 automatically, with a notification; the history says so; version 3
//! goes through 10, 50 and 100% with the canary judged against the stable track, and version 4,
//! faulty, stops at its first step and rolls back. Locally with `gantry run`, and through a
//! server and an agent on both stores.
//!
//! Needs Go and Prometheus (`scripts/need.sh go golang-go`, `scripts/need.sh prometheus
//! prometheus`; `scripts/test` runs both). No timing is asserted; waits poll with deadlines.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gantry_api::{JobStatus, PipelineStatus};
use serde_json::{Value, json};

use crate::Repo;
use crate::gates::go_service;
use crate::notify::Recorder;
use crate::server::{Api, Setup, Store, job_named, wait_for};

/// A free port on 127.0.0.1 (nothing listens on it once this returns).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's `prometheus` on 127.0.0.1 scraping the stable and the canary replica every second,
/// labelled `track="stable"` and `track="canary"`; killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(stable: u16, canary: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let target = |port: u16, track: &str| {
            format!("{{targets: ['127.0.0.1:{port}'], labels: {{track: {track}}}}}")
        };
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: go-service\n    static_configs: [{}, {}]\n",
                target(stable, "stable"),
                target(canary, "canary")
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's package `prometheus`) is installed");
        let p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        // Ready, and scraping both targets (it applies discovered targets only after 5 s), so
        // that the first deploy's measurements find data.
        let up = format!("{}/api/v1/query?query=count(up)", p.url);
        wait_for("prometheus to scrape both replicas' ports", || {
            let (_, body) = get(&up)?;
            let v: Value = serde_json::from_str(&body).ok()?;
            (v["data"]["result"][0]["value"][1] == "2").then_some(())
        });
        p
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET url`: its status and body, or `None` when nothing answers.
fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
        .get(url)
        .send()
        .ok()?;
    Some((r.status().as_u16(), r.text().unwrap_or_default()))
}

/// Everything the drill deploys to and watches: the example's repository, Prometheus, the ports of
/// the two replicas, the directory of their pid files, a notification recorder.
struct Drill {
    repo: Repo,
    prometheus: Prometheus,
    stable: u16,
    canary: u16,
    dir: tempfile::TempDir,
    hook: Recorder,
}

impl Drill {
    fn new() -> Drill {
        let (stable, canary) = (free_port(), free_port());
        Drill {
            repo: go_service(),
            prometheus: Prometheus::start(stable, canary),
            stable,
            canary,
            dir: tempfile::tempdir().unwrap(),
            hook: Recorder::start(),
        }
    }

    fn deploy_dir(&self) -> PathBuf {
        self.dir.path().join("deploy")
    }

    /// The variables that say where to deploy (and, with `progressive`, to deploy in steps).
    fn variables(&self, progressive: bool) -> Vec<(String, String)> {
        let mut v = vec![
            ("DEPLOY_PORT".into(), self.stable.to_string()),
            ("CANARY_PORT".into(), self.canary.to_string()),
            ("DEPLOY_DIR".into(), self.deploy_dir().display().to_string()),
            ("PROMETHEUS_URL".into(), self.prometheus.url.clone()),
            ("NOTIFY_URL".into(), self.hook.url()),
            // One Go build cache for every drill, kept across test runs (Go's cache is safe to
            // share), so that only the first run compiles from scratch.
            (
                "GOCACHE".into(),
                concat!(env!("CARGO_TARGET_TMPDIR"), "/drill-go-build").into(),
            ),
        ];
        if progressive {
            v.push(("DEPLOY_STRATEGY".into(), "progressive".into()));
        }
        v
    }

    /// `gantry run --output json` of the whole pipeline.
    fn run(&self, progressive: bool) -> crate::Run {
        let pairs: Vec<String> = self
            .variables(progressive)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut args = Vec::new();
        for p in &pairs {
            args.extend(["--variable", p.as_str()]);
        }
        self.repo.run_json(&args)
    }

    /// Commits version `version` with fault rate `fault` on `main`; answers its commit.
    fn release(&self, version: &str, fault: f64) -> String {
        let env = format!("SERVICE_VERSION={version}\nFAULT_RATE={fault}\n");
        std::fs::write(self.repo.path().join("service.env"), env).unwrap();
        self.repo.git(&["commit", "-q", "-am", version]);
        self.repo.git(&["rev-parse", "HEAD"]).trim().to_string()
    }

    /// What the stable replica's `/healthz` answers (`ok v1`), or why not.
    fn healthz(&self) -> String {
        match get(&format!("http://127.0.0.1:{}/healthz", self.stable)) {
            Some((200, body)) => body.trim().to_string(),
            other => format!("no answer: {other:?}"),
        }
    }

    /// Waits until the stable replica answers `ok VERSION`.
    fn wait_serving(&self, version: &str) {
        let want = format!("ok {version}");
        let end = Instant::now() + Duration::from_secs(45);
        while self.healthz() != want {
            assert!(
                Instant::now() < end,
                "/healthz answers {:?}, not {want:?}",
                self.healthz()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The notifications recorded so far, of `event`.
    fn notifications(&self, event: &str) -> Vec<Value> {
        self.hook
            .bodies()
            .into_iter()
            .filter(|b| b["event"] == event)
            .collect()
    }
}

impl Drop for Drill {
    /// Stops what the deploys started (their pid files say which processes).
    fn drop(&mut self) {
        for name in ["load", "stable", "canary"] {
            let pid = self.deploy_dir().join(format!("{name}.pid"));
            if let Ok(pid) = std::fs::read_to_string(pid) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
}

/// (id, status, sha) of each deployment, newest first.
fn rows(history: &Value) -> Vec<(i64, String, String)> {
    history
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {history}"))
        .iter()
        .map(|d| {
            (
                d["id"].as_i64().unwrap(),
                d["status"].as_str().unwrap().to_string(),
                d["sha"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Asserts the history of a drill after versions 1 and 2: the re-deploy of `v1` (a rollback of
/// the deployment of `v2`) succeeded, `v2`'s was rolled back by it, `v1`'s succeeded.
fn assert_rolled_back_history(history: &Value, v1: &str, v2: &str) {
    let r = rows(history);
    assert_eq!(r.len(), 3, "{history:#}");
    let statuses: Vec<&str> = r.iter().map(|(_, s, _)| s.as_str()).collect();
    assert_eq!(
        statuses,
        ["success", "rolled_back", "success"],
        "{history:#}"
    );
    let shas: Vec<&str> = r.iter().map(|(_, _, s)| s.as_str()).collect();
    assert_eq!(shas, [v1, v2, v1], "{history:#}");
    let (redeploy, bad, good) = (&history[0], &history[1], &history[2]);
    assert_eq!(redeploy["rollback_of"], bad["id"], "{history:#}");
    assert_eq!(
        redeploy["triggered_by"], "rollback (automatic)",
        "{history:#}"
    );
    assert_eq!(bad["rolled_back_by"], redeploy["id"], "{history:#}");
    assert_eq!(good["rolled_back_by"], Value::Null, "{history:#}");
    // Version 2's deployment keeps the measurements that failed it.
    let failed: Vec<&Value> = bad["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["passed"] == false)
        .collect();
    assert!(
        failed.iter().any(|m| m["check"] == "error-rate"),
        "{history:#}"
    );
}

/// (weight, passed) of each canary judgement among `items` (verify events, or measurements).
fn canary_verdicts(items: &[Value]) -> Vec<(Value, Value)> {
    items
        .iter()
        .filter(|m| m["kind"] == "canary")
        .map(|m| (m["weight"].clone(), m["passed"].clone()))
        .collect()
}

/// The `rollback` events of a run.
fn rollbacks(run: &crate::Run) -> Vec<&Value> {
    run.events
        .iter()
        .filter(|e| e["event"] == "rollback")
        .collect()
}

/// The lines of `job`'s log holding `part`.
fn lines_with(run: &crate::Run, job: &str, part: &str) -> Vec<String> {
    run.log(job)
        .into_iter()
        .filter(|l| l.contains(part))
        .collect()
}

#[test]
fn the_failure_drill_rolls_back_a_bad_release_locally() {
    let drill = Drill::new();
    let v1 = drill.repo.git(&["rev-parse", "HEAD"]).trim().to_string();

    // 1. Version 1 deploys, verifies and serves.
    let r = drill.run(false);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(r.status("deploy-production"), "success");
    assert_eq!(r.starts("deploy"), 0, "the placeholder gives way");
    let checks: Vec<&Value> = r
        .events
        .iter()
        .filter(|e| e["event"] == "verify" && e["job"] == "deploy-production")
        .collect();
    for check in ["error-rate", "p99-latency-seconds"] {
        assert!(
            checks
                .iter()
                .any(|e| e["check"] == check && e["passed"] == true),
            "no passing {check}: {}",
            r.dump()
        );
    }
    assert_eq!(drill.healthz(), "ok v1");

    // 2. Version 2 answers 500 to 10% of requests: its verification fails, and version 1 is
    // re-deployed at once, which a notification says.
    let v2 = drill.release("v2", 0.1);
    let r = drill.run(false);
    assert_eq!(r.code, 1, "{}", r.dump());
    let finished = r
        .events
        .iter()
        .find(|e| e["event"] == "job_finished" && e["job"] == "deploy-production")
        .unwrap_or_else(|| panic!("{}", r.dump()));
    assert_eq!(finished["status"], "failed", "{}", r.dump());
    assert!(
        finished["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("verification failed") && e.contains("error-rate")),
        "{finished}"
    );
    assert_eq!(
        lines_with(&r, "deploy-production", "deployed v"),
        ["deployed v2 at weight 100"]
    );
    assert_eq!(
        lines_with(&r, "deploy-production (rollback)", "deployed v"),
        ["deployed v1 at weight 100"],
        "{}",
        r.dump()
    );
    let rollback = |status: &str| {
        json!({"event": "rollback", "environment": "production", "from": 2, "to": 1,
               "status": status})
    };
    assert_eq!(
        rollbacks(&r),
        [&rollback("running"), &rollback("success")],
        "{}",
        r.dump()
    );
    assert_eq!(drill.healthz(), "ok v1");
    let sent = drill.notifications("rollback");
    assert_eq!(sent.len(), 1, "{:#?}", drill.hook.bodies());
    assert_eq!(sent[0]["rollback"], json!({"from": "2", "to": "1"}));

    // 3. The history says it: v1 re-deployed (success), v2 rolled back, v1 success.
    let out = drill
        .repo
        .gantry(&["env", "history", "production", "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let history: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_rolled_back_history(&history, &v1, &v2);

    // 4. Version 3 goes through 10, 50 and 100%, the canary judged against the stable track at
    // each step.
    drill.release("v3", 0.0);
    let r = drill.run(true);
    assert_eq!(r.code, 0, "{}", r.dump());
    let job = "deploy-production-progressive";
    assert_eq!(
        lines_with(&r, job, "deployed v"),
        [
            "deployed v3 at weight 10",
            "deployed v3 at weight 50",
            "deployed v3 at weight 100"
        ]
    );
    assert_eq!(
        canary_verdicts(&r.events),
        [
            (json!(10), json!(true)),
            (json!(50), json!(true)),
            (json!(100), json!(true))
        ],
        "{}",
        r.dump()
    );
    assert_eq!(drill.healthz(), "ok v3");

    // Version 4 answers 500 to 20% of requests: at 10% of the traffic the whole error rate stays
    // under 5%, but the judge finds its canary worse than the stable track. It stops at its first
    // step and version 3 is re-deployed.
    drill.release("v4", 0.2);
    let r = drill.run(true);
    assert_eq!(r.code, 1, "{}", r.dump());
    assert_eq!(
        canary_verdicts(&r.events),
        [(json!(10), json!(false))],
        "{}",
        r.dump()
    );
    assert_eq!(
        lines_with(&r, job, "deployed v"),
        ["deployed v4 at weight 10"],
        "{}",
        r.dump()
    );
    assert_eq!(
        lines_with(&r, &format!("{job} (rollback)"), "deployed v"),
        ["deployed v3 at weight 100"],
        "{}",
        r.dump()
    );
    // Deployments 4 (v3) and 5 (v4), after 1 (v1), 2 (v2) and 3 (v1 again).
    let last = rollbacks(&r)
        .pop()
        .unwrap_or_else(|| panic!("{}", r.dump()));
    assert_eq!(
        last,
        &json!({"event": "rollback", "environment": "production", "from": 5, "to": 4,
                "status": "success"})
    );
    assert_eq!(drill.healthz(), "ok v3");
}

/// Asserts that pipeline `p` failed because its job `job` failed its verification.
fn assert_failed_verification(p: &gantry_api::Pipeline, job: &str) {
    assert_eq!(p.status, PipelineStatus::Failed, "{p:#?}");
    let deploy = job_named(p, job);
    assert_eq!(deploy.status, JobStatus::Failed, "{p:#?}");
    assert_eq!(
        deploy.failure_reason.as_deref(),
        Some("verification_failure"),
        "{p:#?}"
    );
}

/// Triggers a pipeline on `main` with `variables`; answers the finished pipeline.
fn trigger(api: &Api, project: &str, variables: &[(String, String)]) -> gantry_api::Pipeline {
    let list = || api.get_json(&format!("/api/v1/projects/{project}/pipelines"));
    let before = list().as_array().unwrap().len();
    let vars: Vec<Value> = variables
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    let (status, body) = api.post(
        &format!("/api/v1/projects/{project}/pipelines"),
        &json!({"ref": "main", "variables": vars}),
    );
    assert_eq!(status, 202, "{body}");
    let id = wait_for("the pipeline to be created", || {
        let l = list();
        let l = l.as_array()?;
        (l.len() > before).then(|| l[0]["id"].as_i64())?
    });
    api.finished(id)
}

mod sqlite {
    #[test]
    fn the_failure_drill_rolls_back_through_a_server_and_an_agent() {
        super::the_failure_drill_rolls_back_through_a_server_and_an_agent(super::Store::Sqlite);
    }
}

mod postgres {
    #[test]
    fn the_failure_drill_rolls_back_through_a_server_and_an_agent() {
        super::the_failure_drill_rolls_back_through_a_server_and_an_agent(super::Store::Postgres);
    }
}

/// The drill through a server and an agent: each rollback is a new attempt of the re-deployed
/// version's job in its pipeline.
fn the_failure_drill_rolls_back_through_a_server_and_an_agent(store: Store) {
    let drill = Drill::new();
    let s = Setup::new(store);
    let api = Api::new(&s.server);
    api.add_project("drill", drill.repo.path());
    let agent = s.agent_with("a1", &[]);
    let v1 = drill.repo.git(&["rev-parse", "HEAD"]).trim().to_string();
    let vars = drill.variables(false);

    // 1. Version 1 deploys, verifies and serves.
    let p1 = trigger(&api, "drill", &vars);
    assert_eq!(
        p1.status,
        PipelineStatus::Success,
        "{p1:#?}\n{}",
        agent.output()
    );
    assert_eq!(
        job_named(&p1, "deploy-production").status,
        JobStatus::Success
    );
    assert_eq!(drill.healthz(), "ok v1");

    // 2. Version 2 fails its verification; version 1 serves again, and a notification says so.
    let v2 = drill.release("v2", 0.1);
    let p2 = trigger(&api, "drill", &vars);
    assert_failed_verification(&p2, "deploy-production");
    drill.wait_serving("v1");
    let sent = wait_for("the rollback's notification", || {
        let n = drill.notifications("rollback");
        (!n.is_empty()).then_some(n)
    });
    assert_eq!(sent[0]["environment"], "production", "{sent:#?}");

    // 3. The history says it.
    let path = "/api/v1/projects/drill/environments/production/deployments";
    let history = wait_for("the re-deploy to succeed", || {
        let h = api.get_json(path);
        (h[0]["status"] == "success" && h[0]["rollback_of"].is_i64()).then_some(h)
    });
    assert_rolled_back_history(&history, &v1, &v2);
    // The rollback is a new attempt of version 1's deploy job, in version 1's pipeline.
    assert_eq!(history[0]["pipeline_id"], p1.id, "{history:#}");

    // 4. Version 3 goes through its three steps; version 4 stops at its first and rolls back.
    let job = "deploy-production-progressive";
    let vars = drill.variables(true);
    drill.release("v3", 0.0);
    let p3 = trigger(&api, "drill", &vars);
    assert_eq!(p3.status, PipelineStatus::Success, "{p3:#?}");
    assert_eq!(drill.healthz(), "ok v3");
    drill.release("v4", 0.2);
    let p4 = trigger(&api, "drill", &vars);
    assert_failed_verification(&p4, job);
    drill.wait_serving("v3");
    let history = wait_for("version 3's re-deploy to succeed", || {
        let h = api.get_json(path);
        (h[0]["status"] == "success" && h[1]["status"] == "rolled_back").then_some(h)
    });
    let (redeploy, v4, v3) = (&history[0], &history[1], &history[2]);
    assert_eq!(redeploy["rollback_of"], v4["id"], "{history:#}");
    assert_eq!(redeploy["pipeline_id"], p3.id, "{history:#}");
    assert_eq!(v3["status"], "success", "{history:#}");
    // The measurements went with the finishes: version 3's canary judged at each step, version
    // 4's failing at its first.
    assert_eq!(
        canary_verdicts(v3["measurements"].as_array().unwrap()),
        [
            (json!(10), json!(true)),
            (json!(50), json!(true)),
            (json!(100), json!(true))
        ],
        "{history:#}"
    );
    assert_eq!(
        canary_verdicts(v4["measurements"].as_array().unwrap()),
        [(json!(10), json!(false))],
        "{history:#}"
    );
}
