//! Whole jobs run by [`job::run`] against a stand-in server: what their `finish` call carries of
//! their reports and gates (protocol 2) and their verification measurements (protocol 3).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use gantry_api::agent::{FinishJob, JobSpec, Outcome};
use gantry_pipeline::gate::Condition;
use gantry_pipeline::plan::{Artifacts, ArtifactsWhen, Job, Plan, Variable};
use gantry_runtime::gantry_reports::gate::Verdict;
use gantry_runtime::gantry_reports::{ChangedLines, Options, Reports, junit, lcov};
use tokio::sync::watch;

use crate::ExecutorKind;
use crate::client::Client;
use crate::executors::Executors;
use crate::job::{self, Done, Env};
use crate::spool;

/// What the stand-in server holds (the log aside).
#[derive(Default)]
struct Server {
    /// The bodies of the finish calls, as sent.
    finishes: Vec<String>,
    /// A finish body longer than this is refused with `413`.
    body_limit: Option<usize>,
    /// How many times the commit's tree was asked for.
    sources: usize,
}

type Shared = Arc<Mutex<Server>>;

async fn finish(State(s): State<Shared>, body: String) -> StatusCode {
    let mut s = s.lock().unwrap();
    s.finishes.push(body.clone());
    match s.body_limit {
        Some(limit) if body.len() > limit => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::OK,
    }
}

/// The commit's tree as the server's `source` call sends it: one file.
fn source_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(6);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "README", &b"hello\n"[..]).unwrap();
    b.into_inner().unwrap()
}

async fn serve(state: Shared, log: spool::LogServer) -> Client {
    let app = Router::new()
        .route(
            "/api/v1/agent/jobs/{id}/heartbeat",
            post(|| async { "{\"cancel\":false}" }),
        )
        .route(
            "/api/v1/agent/jobs/{id}/source",
            get(|State(s): State<Shared>| async move {
                s.lock().unwrap().sources += 1;
                source_tar()
            }),
        )
        .route(
            "/api/v1/agent/jobs/{id}/artifacts",
            put(|| async { StatusCode::CREATED }),
        )
        .route("/api/v1/agent/jobs/{id}/finish", post(finish))
        .with_state(state)
        .merge(spool::log_route(log));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Client::new(&format!("http://{addr}"), "t".into()).unwrap()
}

/// What a job's run left: the finish calls' bodies (raw and read) and the log.
struct Ran {
    raw: Vec<String>,
    finish: FinishJob,
    log: String,
    sources: usize,
}

/// Runs `job` of `plan` (the job the spec names) as an agent with the shell executor does, with
/// `gate_reports` and `changes` in its spec.
async fn run(
    plan: Plan,
    gate_reports: Option<Reports>,
    changes: Option<ChangedLines>,
    server: Server,
) -> Ran {
    let state = Arc::new(Mutex::new(server));
    let log = spool::LogServer::default();
    let client = serve(state.clone(), log.clone()).await;
    let work = tempfile::tempdir().unwrap();
    let exec = Executors::for_agent(ExecutorKind::Shell, &work.path().join("builds"))
        .await
        .unwrap();
    let (_abort_tx, abort) = watch::channel(false);
    let env = Arc::new(Env {
        client,
        work_dir: work.path().to_path_buf(),
        name: "test-agent".into(),
        exec: Arc::new(exec),
        git: false,
        abort,
    });
    let spec = JobSpec {
        job_id: 5,
        pipeline_id: 1,
        project: "svc".into(),
        attempt: 1,
        trace_id: "trace".into(),
        sha: "0".repeat(40),
        lease_timeout_ms: 60_000,
        job: plan.jobs.last().unwrap().name.clone(),
        plan,
        dependencies: Vec::new(),
        gate_reports,
        changes,
    };
    assert_eq!(job::run(env, spec, 0).await, Done::Finished);
    let s = state.lock().unwrap();
    let raw = s.finishes.clone();
    let finish = serde_json::from_str(raw.last().expect("a finish call")).unwrap();
    Ran {
        raw,
        finish,
        log: String::from_utf8_lossy(&log.lock().unwrap().log).into_owned(),
        sources: s.sources,
    }
}

fn plan(job: Job) -> Plan {
    Plan {
        stages: ["build", "test", "gate"].map(String::from).to_vec(),
        jobs: vec![job],
        predefined: vec![Variable::new("CI", "true")],
        variables: Vec::new(),
        cli_variables: Vec::new(),
        scoped_variables: Vec::new(),
    }
}

/// A JUnit report with `failed` failing cases out of three, each failure's message naming `$TOKEN`.
fn junit_xml(failed: usize) -> String {
    let mut cases = String::new();
    for i in 0..3 {
        if i < failed {
            cases.push_str(&format!(
                "<testcase classname=\"svc\" name=\"Test{i}\"><failure message=\"token $TOKEN refused\"/></testcase>"
            ));
        } else {
            cases.push_str(&format!("<testcase classname=\"svc\" name=\"Test{i}\"/>"));
        }
    }
    format!("<testsuite name=\"svc\">{cases}</testsuite>")
}

/// A job that writes a JUnit report with one failing test (its message holding the masked
/// `TOKEN`) and fails, as a test job does.
fn unit_plan() -> Plan {
    let mut unit = Job::new("unit", "test", 1);
    unit.script = vec![
        format!(
            "printf '%s' \"{}\" > report.xml",
            junit_xml(1).replace('"', "\\\"")
        ),
        "exit 1".into(),
    ];
    unit.artifacts = Some(Artifacts {
        name: None,
        paths: Vec::new(),
        exclude: Vec::new(),
        untracked: false,
        when: ArtifactsWhen::Always,
        expire_in: None,
        reports: vec![("junit".into(), vec!["report.xml".into()])],
    });
    let mut p = plan(unit);
    p.variables.push(Variable {
        masked: true,
        ..Variable::new("TOKEN", "s3cr3t-t0ken")
    });
    p
}

#[tokio::test]
async fn a_jobs_junit_summary_goes_in_its_finish_masked() {
    let ran = run(unit_plan(), None, None, Server::default()).await;
    assert_eq!(ran.finish.outcome, Outcome::Failed);
    let reports = ran
        .finish
        .reports
        .expect("the finish carries the summaries");
    let tests = reports.tests.unwrap();
    assert_eq!((tests.total, tests.failed), (3, 1));
    assert_eq!(tests.failures[0].name, "svc.Test0");
    assert_eq!(tests.failures[0].message, "token [MASKED] refused");
    assert!(ran.finish.gate.is_none());
    assert_eq!(ran.sources, 1);
    assert!(
        !ran.raw[0].contains("s3cr3t"),
        "the masked value reached the finish: {}",
        ran.raw[0]
    );
}

#[tokio::test]
async fn a_server_refusing_a_large_finish_gets_it_without_the_summaries() {
    let server = Server {
        body_limit: Some(150),
        ..Server::default()
    };
    let ran = run(unit_plan(), None, None, server).await;
    assert_eq!(ran.raw.len(), 2, "{:?}", ran.raw);
    assert!(ran.raw[0].contains("\"reports\""), "{}", ran.raw[0]);
    assert_eq!(ran.finish.reports, None);
    assert_eq!(ran.finish.outcome, Outcome::Failed);
}

/// A gate job without a script (with `default:` scripts, which must not run) testing `conditions`.
fn gate_plan(conditions: &[(&str, &str)]) -> Plan {
    let mut quality = Job::new("quality", "gate", 2);
    quality.before_script = vec!["echo before-script-ran".into()];
    quality.after_script = vec!["echo after-script-ran".into()];
    quality.gate = conditions
        .iter()
        .map(|(m, c)| Condition::parse(m, c).unwrap())
        .collect();
    plan(quality)
}

fn test_reports(failed: usize) -> Reports {
    Reports {
        tests: Some(junit::parse(junit_xml(failed).as_bytes(), &Options::default()).unwrap()),
        ..Reports::default()
    }
}

#[tokio::test]
async fn a_gate_job_decides_on_the_spec_s_summaries_and_sends_its_verdict() {
    let p = gate_plan(&[("tests_failed", "== 0"), ("tests_total", "> 0")]);
    let failing = run(p.clone(), Some(test_reports(2)), None, Server::default()).await;
    assert_eq!(failing.finish.outcome, Outcome::Failed);
    assert_eq!(
        failing.finish.failure_reason.as_deref(),
        Some("script_failure")
    );
    let gate = failing.finish.gate.as_ref().expect("the verdict is sent");
    assert!(!gate.passed);
    assert_eq!(gate.conditions[0].actual, Some(2.0));
    assert!(!gate.conditions[0].passed);
    assert_eq!(gate.offenders.failed_tests.len(), 2);
    assert!(
        failing
            .log
            .contains("quality gate failed: tests_failed 2 != 0"),
        "{}",
        failing.log
    );

    let passing = run(p, Some(test_reports(0)), None, Server::default()).await;
    assert_eq!(passing.finish.outcome, Outcome::Success);
    let gate = passing.finish.gate.as_ref().expect("the verdict is sent");
    assert!(gate.passed);
    assert_eq!(gate.conditions[1].actual, Some(3.0));
    for ran in [&failing, &passing] {
        assert!(
            !ran.log.contains("script-ran"),
            "a default script ran: {}",
            ran.log
        );
        assert_eq!(ran.sources, 0, "a gate without a script fetched the commit");
    }
}

#[tokio::test]
async fn a_gate_job_tests_new_coverage_on_the_spec_s_changes() {
    // main.go: lines 1-3 run, line 4 not.
    let lcov_text = "SF:main.go\nDA:1,1\nDA:2,1\nDA:3,1\nDA:4,0\nend_of_record\n";
    let coverage = Reports {
        coverage: Some(lcov::parse(lcov_text.as_bytes(), &Options::default()).unwrap()),
        ..Reports::default()
    };
    let p = gate_plan(&[("coverage", ">= 70"), ("new_coverage", ">= 80")]);
    let diff = |lines: &str| {
        ChangedLines::parse(&format!(
            "diff --git a/main.go b/main.go\n--- a/main.go\n+++ b/main.go\n@@ -1,0 +{lines} @@\n+a\n+b\n"
        ))
        .unwrap()
    };

    let gate_on = |changes: Option<&str>| {
        run(
            p.clone(),
            Some(coverage.clone()),
            changes.map(diff),
            Server::default(),
        )
    };

    // Lines 3 and 4 changed: half of them run.
    let ran = gate_on(Some("3,2")).await;
    assert_eq!(ran.finish.outcome, Outcome::Failed);
    let gate = ran.finish.gate.unwrap();
    assert!(gate.conditions[0].passed, "total coverage 75 passes");
    assert_eq!(gate.conditions[1].actual, Some(50.0));
    assert_eq!(gate.offenders.uncovered_new_lines[0].lines, [4]);

    // Lines 2 and 3 changed: all run.
    let ran = gate_on(Some("2,2")).await;
    assert_eq!(ran.finish.outcome, Outcome::Success);
    assert_eq!(ran.finish.gate.unwrap().conditions[1].actual, Some(100.0));

    // No changes in the spec: no data, which fails.
    let ran = gate_on(None).await;
    assert_eq!(ran.finish.outcome, Outcome::Failed);
    let gate = ran.finish.gate.unwrap();
    assert_eq!(gate.conditions[1].verdict, Verdict::NoData);
}

/// A health endpoint answering `200` on 127.0.0.1: its base URL.
async fn health_server() -> String {
    let app = Router::new().route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A deploy job verified at steps 50 and 100 by an HTTP check whose URL holds the masked `TOKEN`.
async fn verified_plan() -> Plan {
    let mut deploy = Job::new("deploy", "test", 1);
    deploy.script = vec!["echo deploying at $GANTRY_DEPLOY_WEIGHT".into()];
    deploy.verify = Some(gantry_pipeline::verify::Verify {
        interval: std::time::Duration::from_millis(50),
        duration: std::time::Duration::from_millis(120),
        http: vec![gantry_pipeline::verify::HttpCheck {
            url: format!("{}/healthz?token=$TOKEN", health_server().await),
            expect_status: 200,
            consecutive_failures: 3,
            timeout: std::time::Duration::from_secs(5),
        }],
        steps: vec![50, 100],
        ..gantry_pipeline::verify::Verify::default()
    });
    let mut p = plan(deploy);
    p.variables.push(Variable {
        masked: true,
        ..Variable::new("TOKEN", "s3cr3t-t0ken")
    });
    p
}

#[tokio::test]
async fn a_verified_jobs_measurements_go_in_its_finish_masked_with_their_weights() {
    let ran = run(verified_plan().await, None, None, Server::default()).await;
    assert_eq!(ran.finish.outcome, Outcome::Success, "{}", ran.log);
    let m = &ran.finish.measurements;
    assert!(!m.is_empty(), "no measurements: {}", ran.log);
    let weights: Vec<Option<u8>> = m.iter().map(|m| m.weight).collect();
    let first_100 = weights.iter().position(|w| *w == Some(100)).unwrap();
    assert!(first_100 > 0, "{weights:?}");
    assert!(
        weights[..first_100].iter().all(|w| *w == Some(50))
            && weights[first_100..].iter().all(|w| *w == Some(100)),
        "every step's, in order: {weights:?}"
    );
    for m in m {
        assert_eq!((m.kind.as_str(), m.phase.as_str()), ("http", "pass"));
        assert!(m.passed);
        assert_eq!(m.value, Some(200.0));
        assert!(m.check.ends_with("/healthz?token=[MASKED]"), "{}", m.check);
    }
    assert!(
        !ran.raw[0].contains("s3cr3t"),
        "the masked value reached the finish: {}",
        ran.raw[0]
    );
}

#[tokio::test]
async fn a_server_refusing_a_large_finish_gets_it_without_the_measurements() {
    let server = Server {
        body_limit: Some(200),
        ..Server::default()
    };
    let ran = run(verified_plan().await, None, None, server).await;
    assert_eq!(ran.raw.len(), 2, "{:?}", ran.raw);
    assert!(ran.raw[0].contains("\"measurements\""), "{}", ran.raw[0]);
    assert!(ran.finish.measurements.is_empty());
    assert_eq!(ran.finish.outcome, Outcome::Success);
}
