//! Reports and gates on the server (issue 18): a finish stores the job's summaries, a gate job's
//! spec carries its sources' merged summaries and the change's lines, the reports routes show
//! them, and the commit status names the gate's outcome.

use reqwest::Method;
use serde_json::{Value, json};

use crate::both;
use crate::common::*;

/// Sends `log` and finishes job `id` with `body` (plus the log's size); answers the response.
async fn finish_with(
    app: &App,
    agent: &Agent,
    id: i64,
    log: &str,
    mut body: Value,
) -> reqwest::Response {
    send(
        app.agent_call(
            agent,
            Method::PUT,
            &format!("/api/v1/agent/jobs/{id}/log?offset=0"),
        )
        .body(log.to_string()),
        200,
    )
    .await;
    body["log_size"] = json!(log.len());
    app.agent_call(
        agent,
        Method::POST,
        &format!("/api/v1/agent/jobs/{id}/finish"),
    )
    .json(&body)
    .send()
    .await
    .unwrap()
}

/// A finish of `outcome` with `reports` and `coverage`.
fn finish(outcome: &str, coverage: Option<f64>, reports: Option<Value>) -> Value {
    let mut body = json!({
        "outcome": outcome,
        "exit_code": if outcome == "success" { 0 } else { 1 },
        "coverage": coverage,
    });
    if outcome == "failed" {
        body["failure_reason"] = json!("script_failure");
    }
    if let Some(r) = reports {
        body["reports"] = r;
    }
    body
}

/// Takes the next job, which must be `name`.
async fn take_job(app: &App, agent: &Agent, name: &str) -> Value {
    let spec = app.take(agent, 5_000).await.expect("a job");
    assert_eq!(spec["job"], name, "{spec}");
    spec
}

fn id_of(spec: &Value) -> i64 {
    spec["job_id"].as_i64().unwrap()
}

/// Tests of `total`, the first `failed` of them failing, in suite `suite`.
fn tests(suite: &str, total: u64, failed: u64) -> Value {
    let failures: Vec<Value> = (0..failed)
        .map(|i| {
            json!({"suite": suite, "name": format!("test_{i}"), "kind": "failure",
                   "message": format!("boom {i}\nsecond line")})
        })
        .collect();
    json!({"total": total, "passed": total - failed, "failed": failed, "errors": 0,
           "skipped": 0, "failures": failures})
}

/// Coverage of `files`, each `(path, [(line, hits)])`.
fn coverage(files: &[(&str, &[(u32, u64)])]) -> Value {
    let files: serde_json::Map<String, Value> = files
        .iter()
        .map(|(f, lines)| ((*f).to_owned(), json!({"lines": lines})))
        .collect();
    json!({"files": files})
}

const GATED: &str = "stages: [test, gate]
unit:
  stage: test
  script: [make test]
  coverage: '/(\\d+)%/'
lint:
  stage: test
  script: [make lint]
quality:
  stage: gate
  when: always
  gate:
    coverage: '>= 75'
    tests_failed: '== 0'
";

/// A gate job's spec carries the merge of what its sources stored, each `coverage:` value once:
/// one from reports that hold it already, one from a job that sent no reports at all.
async fn a_gate_job_gets_its_sources_merged(backend: Backend) {
    let app = spawn(backend).await;
    app.project("demo", json!({})).await;
    let pipeline = app.push_ci(GATED).await;
    let agent = app.register("a", &[]).await;
    let unit = take_job(&app, &agent, "unit").await;
    let reports = json!({
        "tests": tests("pkg", 10, 2),
        "coverage": coverage(&[("src/a.rs", &[(1, 1), (2, 0), (3, 4), (4, 0)])]),
        "job_coverage": [80.0],
    });
    let r = finish_with(
        &app,
        &agent,
        id_of(&unit),
        "80%\n",
        finish("failed", Some(80.0), Some(reports)),
    )
    .await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let lint = take_job(&app, &agent, "lint").await;
    assert!(
        lint.get("gate_reports").is_none(),
        "only gate jobs get inputs: {lint}"
    );
    let r = finish_with(
        &app,
        &agent,
        id_of(&lint),
        "60%\n",
        finish("success", Some(60.0), None),
    )
    .await;
    assert_eq!(r.status(), 200);
    let gate = take_job(&app, &agent, "quality").await;
    let inputs = &gate["gate_reports"];
    assert_eq!(inputs["tests"]["total"], 10, "{inputs}");
    assert_eq!(inputs["tests"]["failed"], 2);
    assert_eq!(
        inputs["coverage"]["files"]["src/a.rs"]["lines"],
        json!([[1, 1], [2, 0], [3, 4], [4, 0]])
    );
    let mut regex: Vec<f64> = inputs["job_coverage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    regex.sort_by(f64::total_cmp);
    assert_eq!(regex, [60.0, 80.0], "each job's coverage once: {inputs}");
    assert!(
        gate.get("changes").is_none(),
        "no new_coverage condition: {gate}"
    );
    app.pipeline_status(pipeline, "running").await;
}
both!(a_gate_job_gets_its_sources_merged);

/// A gate with `needs` is evaluated on those jobs only, with the latest attempt of each.
async fn a_gate_with_needs_reads_its_needs_latest_attempts(backend: Backend) {
    let app = spawn(backend).await;
    app.project("demo", json!({})).await;
    let ci = "stages: [test, gate]
unit:
  stage: test
  script: [make test]
  retry: 1
other:
  stage: test
  script: [make other]
quality:
  stage: gate
  needs: [unit]
  gate:
    tests_failed: '== 0'
";
    let pipeline = app.push_ci(ci).await;
    let agent = app.register("a", &[]).await;
    let mut seen = Vec::new();
    // unit fails (and is retried), other passes, then unit's second attempt passes.
    for _ in 0..3 {
        let spec = app.take(&agent, 5_000).await.expect("a job");
        let name = spec["job"].as_str().unwrap().to_owned();
        let attempt = spec["attempt"].as_i64().unwrap();
        let (outcome, t) = match (name.as_str(), attempt) {
            ("unit", 1) => ("failed", tests("first", 5, 5)),
            ("unit", _) => ("success", tests("second", 7, 0)),
            _ => ("success", tests("other", 100, 3)),
        };
        let body = finish(outcome, None, Some(json!({"tests": t})));
        let r = finish_with(&app, &agent, id_of(&spec), "log\n", body).await;
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        seen.push((name, attempt));
    }
    let gate = take_job(&app, &agent, "quality").await;
    assert_eq!(
        gate["gate_reports"]["tests"]["total"], 7,
        "{gate} after {seen:?}"
    );
    assert_eq!(gate["gate_reports"]["tests"]["failed"], 0);
    app.pipeline_status(pipeline, "running").await;
}
both!(a_gate_with_needs_reads_its_needs_latest_attempts);

/// A finish whose reports do not parse is a 400 naming them; the job stays running, and the
/// agent's retry with good reports finishes it and stores them.
async fn a_finish_with_broken_reports_is_refused_and_can_be_retried(backend: Backend) {
    let app = spawn(backend).await;
    app.project("demo", json!({})).await;
    app.push_ci(GATED).await;
    let agent = app.register("a", &[]).await;
    let unit = take_job(&app, &agent, "unit").await;
    let id = id_of(&unit);
    let bad = finish("success", None, Some(json!({"tests": {"total": "many"}})));
    let r = finish_with(&app, &agent, id, "ok\n", bad).await;
    assert_eq!(r.status(), 400);
    let why = json_error(r, "a broken report").await;
    assert!(why.starts_with("invalid JSON body: `reports`: "), "{why}");
    let job = app.json(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["status"], "running", "nothing changed: {job}");
    let good = finish("success", None, Some(json!({"tests": tests("pkg", 3, 0)})));
    let r = finish_with(&app, &agent, id, "ok\n", good).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let shown = app.json(&format!("/api/v1/jobs/{id}/reports")).await;
    assert_eq!(shown["tests"]["total"], 3, "{shown}");
}
both!(a_finish_with_broken_reports_is_refused_and_can_be_retried);

/// Per-line coverage of 5,000 files (over the 10 MiB `max_body_bytes`) fits a finish.
async fn a_large_coverage_report_fits_a_finish(backend: Backend) {
    let app = spawn(backend).await;
    app.project("demo", json!({})).await;
    app.push_ci(GATED).await;
    let agent = app.register("a", &[]).await;
    let unit = take_job(&app, &agent, "unit").await;
    let lines: Vec<(u32, u64)> = (1..=300).map(|l| (l, u64::from(l % 3))).collect();
    let names: Vec<String> = (0..5_000)
        .map(|i| format!("src/module_{i}/file.rs"))
        .collect();
    let files: Vec<(&str, &[(u32, u64)])> =
        names.iter().map(|n| (n.as_str(), &lines[..])).collect();
    let body = finish("success", None, Some(json!({"coverage": coverage(&files)})));
    let size = serde_json::to_vec(&body).unwrap().len();
    assert!(size > app.config.max_body_bytes, "{size} bytes");
    let r = finish_with(&app, &agent, id_of(&unit), "ok\n", body).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let shown = app
        .json(&format!("/api/v1/jobs/{}/reports", id_of(&unit)))
        .await;
    assert_eq!(shown["coverage"]["files"].as_array().unwrap().len(), 5_000);
    assert_eq!(
        shown["coverage"]["percent"], 66.67,
        "{}",
        shown["coverage"]["percent"]
    );
}
both!(a_large_coverage_report_fits_a_finish);
