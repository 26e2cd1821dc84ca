//! Reports and gates on the server (issue 18): a finish stores the job's summaries, a gate job's
//! spec carries its sources' merged summaries and the change's lines, the reports routes show
//! them, and the commit status names the gate's outcome.

use reqwest::Method;
use serde_json::{Value, json};

use crate::both;
use crate::common::*;

/// Sends `log` and finishes job `id` with `body` (plus the log's size); answers the response.
pub(crate) async fn finish_with(
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

/// A GitLab push of `sha` to `branch` after `before`; answers the pipeline's id.
pub(crate) async fn push_after(
    app: &App,
    project: &str,
    branch: &str,
    before: &str,
    sha: &str,
) -> i64 {
    let mut p = fixture("gitlab-push.json");
    set(&mut p, "/ref", json!(format!("refs/heads/{branch}")));
    set(&mut p, "/before", json!(before));
    set(&mut p, "/after", json!(sha));
    set(&mut p, "/checkout_sha", json!(sha));
    let id = format!("push-{branch}-{sha}");
    let r = send_hook(app, project, "gitlab", "Push Hook", &p, &id).await;
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let d = app.delivery(project, id).await;
    d["pipeline_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pipeline: {d}"))
}

/// Takes jobs, finishing those of other pipelines, until job `name` of `pipeline` comes.
pub(crate) async fn take_in(app: &App, agent: &Agent, pipeline: i64, name: &str) -> Value {
    loop {
        let spec = app.take(agent, 5_000).await.expect("a job");
        if spec["pipeline_id"] == pipeline && spec["job"] == name {
            return spec;
        }
        let r = finish_with(
            app,
            agent,
            id_of(&spec),
            "x\n",
            finish("success", None, None),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
}

/// A `new_coverage` gate (in merge request pipelines too).
const NEW_CODE: &str = "stages: [test, gate]
unit:
  stage: test
  script: [make test]
  rules: [{when: on_success}]
quality:
  stage: gate
  rules: [{when: on_success}]
  gate:
    new_coverage: '>= 80'
";

/// A `new_coverage` gate gets the change's lines: against the push's `before`, and for a new
/// branch (no `before`) against its merge base with the default branch.
async fn a_new_coverage_gate_gets_the_changes_lines(backend: Backend) {
    let app = spawn(backend).await;
    app.project("demo", json!({})).await;
    let agent = app.register("a", &[]).await;
    let five = "1\n2\n3\n4\n5\n";
    let first = app.commit(&[(".gitlab-ci.yml", NEW_CODE), ("src/a.go", five)]);
    push_after(&app, "demo", "main", ZEROS, &first).await;
    let second = app.commit(&[("src/a.go", "1\ntwo\n3\n4\n5\n6\n7\n")]);
    let pipeline = push_after(&app, "demo", "main", &first, &second).await;
    let gate = take_in(&app, &agent, pipeline, "quality").await;
    assert_eq!(
        gate["changes"],
        json!({"files": {"src/a.go": [2, 6, 7]}}),
        "{gate}"
    );

    git(&app.repo, &["checkout", "-q", "-b", "feature"]);
    let third = app.commit(&[
        ("src/b.go", "x\ny\n"),
        ("src/a.go", "one\ntwo\n3\n4\n5\n6\n7\n"),
    ]);
    let pipeline = push_after(&app, "demo", "feature", ZEROS, &third).await;
    let gate = take_in(&app, &agent, pipeline, "quality").await;
    assert_eq!(
        gate["changes"],
        json!({"files": {"src/a.go": [1], "src/b.go": [1, 2]}}),
        "against main's head, the merge base: {gate}"
    );
}
both!(a_new_coverage_gate_gets_the_changes_lines);

/// Project `demo` with `NEW_CODE`, an agent, and two pushes to `main` (the second changes lines 2
/// and 4 of `src/a.go`); answers the first commit and the second push's pipeline.
async fn new_code(backend: Backend) -> (App, Agent, String, i64) {
    let app = spawn(backend).await;
    app.project("demo", json!({})).await;
    let agent = app.register("a", &[]).await;
    let first = app.commit(&[(".gitlab-ci.yml", NEW_CODE), ("src/a.go", "1\n2\n3\n")]);
    push_after(&app, "demo", "main", ZEROS, &first).await;
    let second = app.commit(&[("src/a.go", "1\ntwo\n3\n4\n")]);
    let pipeline = push_after(&app, "demo", "main", &first, &second).await;
    (app, agent, first, pipeline)
}

/// A pipeline created before its doc kept the change's lines (its stored spec has no `changes`)
/// gets them at its gate job's hand-out, read then as at creation.
async fn an_older_pipelines_new_coverage_gate_reads_the_changes_lines(backend: Backend) {
    let (app, agent, _, pipeline) = new_code(backend).await;
    let store = gantry_store::connect(&app.database_url).await.unwrap();
    let p = store.pipeline(pipeline).await.unwrap().unwrap();
    let mut spec: Value = serde_json::from_str(&p.spec).unwrap();
    assert!(spec["changes"].is_object(), "kept at creation: {spec}");
    spec.as_object_mut().unwrap().remove("changes");
    let changes = gantry_store::Changes {
        spec: Some(spec.to_string()),
        ..Default::default()
    };
    assert!(store.apply(pipeline, p.version, &changes).await.unwrap());
    let gate = take_in(&app, &agent, pipeline, "quality").await;
    assert_eq!(
        gate["changes"],
        json!({"files": {"src/a.go": [2, 4]}}),
        "{gate}"
    );
}
both!(an_older_pipelines_new_coverage_gate_reads_the_changes_lines);

/// The change's lines are read when the pipeline is created: a gate job is handed out without
/// git, its lines right (against a push's `before`, a new branch's merge base with the default
/// branch, a merge request's diff base; none without a base) with the project's mirror gone and
/// its repository out of reach.
async fn a_new_coverage_gate_is_handed_out_without_git(backend: Backend) {
    let (app, agent, first, pipeline) = new_code(backend).await;
    git(&app.repo, &["checkout", "-q", "-b", "feature"]);
    let third = app.commit(&[("src/b.go", "x\n")]);
    let branch = push_after(&app, "demo", "feature", ZEROS, &third).await;
    // A merge request into `release` (at `first`): against its diff base, `first`.
    git(&app.repo, &["branch", "release", &first]);
    let mut mr = fixture("gitlab-merge-request.json");
    set(
        &mut mr,
        "/object_attributes/source_branch",
        json!("feature"),
    );
    set(
        &mut mr,
        "/object_attributes/target_branch",
        json!("release"),
    );
    set(&mut mr, "/object_attributes/last_commit/id", json!(third));
    let r = send_hook(&app, "demo", "gitlab", "Merge Request Hook", &mr, "mr").await;
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let d = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let d = app.delivery("demo", d).await;
    let merge_request = d["pipeline_id"].as_i64().unwrap_or_else(|| panic!("{d}"));
    // A branch with no history in common with `main`: no base, no lines (never a wrong number).
    git(&app.repo, &["checkout", "-q", "--orphan", "lonely"]);
    let lonely = app.commit(&[("src/c.go", "z\n")]);
    let lonely = push_after(&app, "demo", "lonely", ZEROS, &lonely).await;

    std::fs::remove_dir_all(app.config.data_dir.join("mirrors")).unwrap();
    let away = app.repo.with_extension("away");
    std::fs::rename(&app.repo, &away).unwrap();
    let gate = take_in(&app, &agent, pipeline, "quality").await;
    assert_eq!(
        gate["changes"],
        json!({"files": {"src/a.go": [2, 4]}}),
        "{gate}"
    );
    let gate = take_in(&app, &agent, branch, "quality").await;
    assert_eq!(
        gate["changes"],
        json!({"files": {"src/b.go": [1]}}),
        "against the merge base with main: {gate}"
    );
    let gate = take_in(&app, &agent, merge_request, "quality").await;
    assert_eq!(
        gate["changes"],
        json!({"files": {"src/a.go": [2, 4], "src/b.go": [1]}}),
        "against the merge request's diff base: {gate}"
    );
    let gate = take_in(&app, &agent, lonely, "quality").await;
    assert!(gate.get("changes").is_none(), "{gate}");
    assert!(
        !app.config.data_dir.join("mirrors").exists(),
        "no hand-out touched a mirror"
    );
    std::fs::rename(&away, &app.repo).unwrap();
}
both!(a_new_coverage_gate_is_handed_out_without_git);

const ZEROS: &str = "0000000000000000000000000000000000000000";

/// A report of `kind` from `gantry-reports`' test fixtures, parsed as an agent's runtime does.
fn fixture_report(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../gantry-reports/tests/it/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The reports routes: tests across jobs with the failed cases by job, coverage overall, per job
/// and per file, findings by level and severity, the gate's verdict; 404 for unknown ids.
async fn the_reports_routes_show_a_pipelines_reports(backend: Backend) {
    use gantry_reports::{Options, Reports, codequality, junit, sarif, security};
    let app = spawn(backend).await;
    app.project("demo", json!({})).await;
    let pipeline = app.push_ci(GATED).await;
    let agent = app.register("a", &[]).await;
    let o = Options::default();
    let unit_reports = Reports {
        tests: Some(junit::parse(&fixture_report("junit-maven.xml")[..], &o).unwrap()),
        job_coverage: vec![80.0],
        ..Reports::default()
    };
    let lint_reports = Reports {
        sarif: Some(sarif::parse(&fixture_report("results.sarif")[..], &o).unwrap()),
        vulnerabilities: Some(
            security::parse(
                &fixture_report("gl-dependency-scanning-report.json")[..],
                &o,
            )
            .unwrap(),
        ),
        codequality: Some(
            codequality::parse(&fixture_report("gl-code-quality-report.json")[..], &o).unwrap(),
        ),
        coverage: Some(
            serde_json::from_value(coverage(&[
                ("b.rs", &[(1, 0), (2, 3)]),
                ("a.rs", &[(1, 1)]),
            ]))
            .unwrap(),
        ),
        ..Reports::default()
    };
    let unit = take_job(&app, &agent, "unit").await;
    let body = finish(
        "failed",
        Some(80.0),
        Some(serde_json::to_value(&unit_reports).unwrap()),
    );
    assert_eq!(
        finish_with(&app, &agent, id_of(&unit), "80%\n", body)
            .await
            .status(),
        200
    );
    let lint = take_job(&app, &agent, "lint").await;
    let body = finish(
        "success",
        None,
        Some(serde_json::to_value(&lint_reports).unwrap()),
    );
    assert_eq!(
        finish_with(&app, &agent, id_of(&lint), "x\n", body)
            .await
            .status(),
        200
    );
    let gate = take_job(&app, &agent, "quality").await;
    let inputs: Reports = serde_json::from_value(gate["gate_reports"].clone()).unwrap();
    let conditions = [
        gantry_pipeline::gate::Condition::parse("coverage", ">= 75").unwrap(),
        gantry_pipeline::gate::Condition::parse("tests_failed", "== 0").unwrap(),
    ];
    let outcome = gantry_reports::evaluate(&conditions, &inputs, None);
    let mut body = finish("failed", None, None);
    body["gate"] = serde_json::to_value(&outcome).unwrap();
    assert_eq!(
        finish_with(&app, &agent, id_of(&gate), "x\n", body)
            .await
            .status(),
        200
    );

    let shown = app
        .json(&format!("/api/v1/pipelines/{pipeline}/reports"))
        .await;
    let t = unit_reports.tests.as_ref().unwrap();
    assert_eq!(shown["tests"]["total"], t.total, "{shown}");
    assert_eq!(shown["tests"]["failed"], t.failed);
    assert_eq!(shown["tests"]["errors"], t.errors);
    let failures = shown["tests"]["failures"].as_array().unwrap();
    assert_eq!(failures.len(), t.failures.len());
    assert_eq!(failures[0]["job"], "unit");
    assert_eq!(failures[0]["name"], t.failures[0].name);
    assert_eq!(failures[0]["suite"], t.failures[0].suite);
    assert_eq!(failures[0]["message"], t.failures[0].message);
    // Coverage reports win over the regex; per job and per file, never per line.
    assert_eq!(shown["coverage"]["percent"], 66.67);
    assert_eq!(
        shown["coverage"]["jobs"],
        json!([{"job_id": id_of(&unit), "job": "unit", "percent": 80.0},
               {"job_id": id_of(&lint), "job": "lint", "percent": 66.67}])
    );
    assert_eq!(
        shown["coverage"]["files"],
        json!([{"file": "a.rs", "covered": 1, "coverable": 1, "percent": 100.0},
               {"file": "b.rs", "covered": 1, "coverable": 2, "percent": 50.0}])
    );
    let s = lint_reports.sarif.as_ref().unwrap();
    assert_eq!(shown["sarif"]["errors"], s.errors);
    assert_eq!(shown["sarif"]["warnings"], s.warnings);
    assert_eq!(
        shown["sarif"]["results"].as_array().unwrap().len(),
        s.results.len()
    );
    let v = lint_reports.vulnerabilities.as_ref().unwrap();
    assert_eq!(shown["vulnerabilities"]["critical"], v.critical);
    assert_eq!(shown["vulnerabilities"]["high"], v.high);
    let q = lint_reports.codequality.as_ref().unwrap();
    assert_eq!(shown["codequality"]["major"], q.major);
    assert_eq!(
        shown["codequality"]["issues"].as_array().unwrap().len(),
        q.issues.len()
    );
    let gates = shown["gates"].as_array().unwrap();
    assert_eq!(gates.len(), 1);
    assert_eq!(gates[0]["job"], "quality");
    assert_eq!(gates[0]["passed"], false);
    assert_eq!(
        gates[0]["conditions"][0],
        json!({"metric": "coverage", "operator": ">=", "threshold": 75.0, "actual": 66.67,
               "passed": false, "verdict": "failed"})
    );
    assert_eq!(gates[0]["conditions"][1]["metric"], "tests_failed");
    assert_eq!(
        gates[0]["conditions"][1]["actual"],
        (t.failed + t.errors) as f64
    );
    assert!(
        !gates[0]["offenders"]["failed_tests"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let one = app
        .json(&format!("/api/v1/jobs/{}/reports", id_of(&lint)))
        .await;
    assert!(one["tests"].is_null(), "{one}");
    assert_eq!(one["coverage"]["percent"], 66.67);
    assert_eq!(one["gates"], json!([]));
    let one = app
        .json(&format!("/api/v1/jobs/{}/reports", id_of(&gate)))
        .await;
    assert_eq!(one["gates"][0]["job_id"], id_of(&gate));
    for path in [
        "/api/v1/pipelines/999999/reports",
        "/api/v1/jobs/999999/reports",
    ] {
        send(app.get(path), 404).await;
    }
}
both!(the_reports_routes_show_a_pipelines_reports);

/// Pipelines of `main`, one per value, whose `unit` job finished with that coverage (the others
/// without); answers their ids.
async fn covered_pipelines(app: &App, coverage: &[f64]) -> Vec<i64> {
    let agent = app.register("a", &[]).await;
    let mut pipelines = Vec::new();
    for cov in coverage {
        let pipeline = app.push_ci(&format!("# {cov}\n{GATED}")).await;
        let unit = take_in(app, &agent, pipeline, "unit").await;
        let r = finish_with(
            app,
            &agent,
            id_of(&unit),
            "x\n",
            finish("success", Some(*cov), None),
        )
        .await;
        assert_eq!(r.status(), 200);
        pipelines.push(pipeline);
    }
    pipelines
}

/// The coverage trend of a ref: its pipelines with coverage, newest first, paginated; 400
/// without a ref, 404 for an unknown project.
async fn the_coverage_trend_of_a_ref(backend: Backend) {
    let app = spawn(backend).await;
    app.project("demo", json!({})).await;
    let pipelines = covered_pipelines(&app, &[70.0, 72.5, 71.25]).await;
    let r = send(
        app.get("/api/v1/projects/demo/coverage?ref=main&per_page=2"),
        200,
    )
    .await;
    assert_eq!(r.headers()["x-total"], "3");
    let page: Value = r.json().await.unwrap();
    let points: Vec<(i64, f64)> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["pipeline_id"].as_i64().unwrap(),
                p["coverage"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(points, [(pipelines[2], 71.25), (pipelines[1], 72.5)]);
    assert_eq!(page[0]["sha"].as_str().unwrap().len(), 40);
    assert!(
        page[0]["created_at"].as_str().unwrap().ends_with('Z'),
        "{page}"
    );
    let other = app.json("/api/v1/projects/demo/coverage?ref=feature").await;
    assert_eq!(other, json!([]));
    send(app.get("/api/v1/projects/demo/coverage"), 400).await;
    send(app.get("/api/v1/projects/nope/coverage?ref=main"), 404).await;
}
both!(the_coverage_trend_of_a_ref);

/// The reports page of a pipeline of the default branch draws the branch's coverage trend (the
/// pipelines its jobs finished with coverage, oldest left) with its own point marked, and says
/// its coverage and the change since the previous pipeline in text.
async fn the_reports_page_draws_the_coverage_trend(backend: Backend) {
    let app = spawn(backend).await;
    app.project("demo", json!({})).await;
    let pipelines = covered_pipelines(&app, &[70.0, 72.5, 71.25]).await;
    let page = |id: i64| {
        app.anon(&format!("/pipelines/{id}/reports"))
            .header("Cookie", format!("gantry_session={ADMIN}"))
    };
    let html = text_of(page(pipelines[2])).await;
    assert!(
        html.contains("aria-label=\"Coverage of main over its last 3 pipelines with coverage, oldest first: first 70%, last 71.25%, lowest 70%, highest 72.5%\""),
        "{html}"
    );
    assert_eq!(html.matches("<circle class=\"point\"").count(), 2);
    assert!(html.contains(&format!(
        "<title>#{} (this pipeline): 71.25%</title>",
        pipelines[2]
    )));
    assert!(html.contains(&format!(
        "coverage <strong>71.25%</strong> (-1.25 since the previous pipeline on main, <a href=\"/pipelines/{0}/reports\">#{0}</a>)",
        pipelines[1]
    )));
    let html = text_of(page(pipelines[0])).await;
    assert!(html.contains("coverage <strong>70%</strong></p>"), "{html}");
    assert_eq!(html.matches("<circle class=\"current\"").count(), 1);
}
both!(the_reports_page_draws_the_coverage_trend);
