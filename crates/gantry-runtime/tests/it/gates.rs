//! Reports read after each job and quality gates (issue 18), with real processes writing real
//! report files.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gantry_pipeline::gate::Condition;
use gantry_pipeline::plan::{AllowFailure, Job, When};
use gantry_runtime::JobStatus;
use gantry_runtime::executor::{Executor, JobContext};
use gantry_runtime::fake::{FakeExecutor, FakeSession};
use gantry_runtime::gantry_reports::{ChangedLines, GateOutcome, Options, Reports};
use tokio::sync::watch;

use crate::{Rec, Run, artifacts, config, job, needs, plan, repo, run, run_on, run_with};

const GO_MOD: &str = "module example.com/svc\n\ngo 1.22\n";

/// A JUnit report with `failed` failing cases out of three.
fn junit(failed: usize) -> String {
    let mut cases = String::new();
    for i in 0..3 {
        if i < failed {
            cases.push_str(&format!(
                "<testcase classname=\"svc\" name=\"Test{i}\"><failure message=\"want 2, got 3\"/></testcase>"
            ));
        } else {
            cases.push_str(&format!("<testcase classname=\"svc\" name=\"Test{i}\"/>"));
        }
    }
    format!("<testsuite name=\"svc\">{cases}</testsuite>")
}

/// A Go cover profile of `main.go` with `covered` of four one-statement blocks (lines 1-4) run.
fn cover(covered: usize) -> String {
    let mut out = String::from("mode: set\n");
    for l in 1..=4 {
        let n = usize::from(l <= covered);
        out.push_str(&format!("example.com/svc/main.go:{l}.1,{l}.20 1 {n}\n"));
    }
    out
}

/// A job that writes `files` (name, content) with `printf` and reports them as `reports`.
fn writer(name: &str, stage: usize, files: &[(&str, String)], reports: &[(&str, &str)]) -> Job {
    let script: Vec<String> = files
        .iter()
        .map(|(f, c)| format!("printf '%s' '{c}' > {f}"))
        .collect();
    let script: Vec<&str> = script.iter().map(String::as_str).collect();
    let mut j = job(name, stage, &script);
    let mut a = artifacts(&[]).unwrap();
    a.reports = reports
        .iter()
        .map(|(k, p)| ((*k).to_owned(), vec![(*p).to_owned()]))
        .collect();
    j.artifacts = Some(a);
    j
}

/// A gate job without a script.
fn gate(name: &str, stage: usize, conditions: &[(&str, &str)]) -> Job {
    let mut j = job(name, stage, &[]);
    j.gate = conditions
        .iter()
        .map(|(m, c)| Condition::parse(m, c).unwrap())
        .collect();
    j
}

fn gates(run: &Run) -> Vec<(String, GateOutcome)> {
    run.rec.picked(|r| match r {
        Rec::Gate { job, outcome } => Some((job, outcome)),
        _ => None,
    })
}

fn reports(run: &Run, job: &str) -> Vec<(&'static str, Reports)> {
    run.rec.picked(|r| match r {
        Rec::Report {
            job: j,
            kind,
            reports,
        } if j == job => Some((kind, reports)),
        _ => None,
    })
}

#[tokio::test]
async fn a_failed_jobs_reports_are_read_reported_and_kept() {
    let r = repo(&[("go.mod", GO_MOD)]);
    let mut unit = writer(
        "unit",
        1,
        &[("report.xml", junit(1)), ("cover.out", cover(3))],
        &[("junit", "report.xml"), ("gocover", "cover.out")],
    );
    unit.script.push("exit 1".into());
    let p = plan(vec![unit]);
    let run = run(&p, r.path()).await;
    assert_eq!(run.status("unit"), JobStatus::Failed);
    let got = reports(&run, "unit");
    let kinds: Vec<&str> = got.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, ["junit", "coverage"]);
    let all = &got[0].1;
    let tests = all.tests.as_ref().unwrap();
    assert_eq!((tests.total, tests.failed), (3, 1));
    assert_eq!(all.coverage_percent(), Some(75.0));
    let cov = all.coverage.as_ref().unwrap();
    assert_eq!(cov.files.keys().collect::<Vec<_>>(), ["main.go"]);
    let kept = std::fs::read_to_string(r.path().join(".gantry/reports/unit.json")).unwrap();
    assert!(kept.contains("\"want 2, got 3\""), "{kept}");
}

#[tokio::test]
async fn coverage_below_the_threshold_fails_the_gate_and_stops_the_next_stage() {
    let r = repo(&[("go.mod", GO_MOD)]);
    let p = plan(vec![
        writer(
            "unit",
            1,
            &[("report.xml", junit(0)), ("cover.out", cover(2))],
            &[("junit", "report.xml"), ("gocover", "cover.out")],
        ),
        gate(
            "quality",
            2,
            &[("coverage", ">= 75"), ("tests_failed", "== 0")],
        ),
        job("deploy", 3, &["echo deploying"]),
    ]);
    let run = run(&p, r.path()).await;
    assert_eq!(run.status("unit"), JobStatus::Success);
    assert_eq!(run.status("quality"), JobStatus::Failed);
    assert_eq!(run.status("deploy"), JobStatus::Skipped);
    assert_eq!(
        run.rec.finished_error("quality").as_deref(),
        Some("quality gate failed: coverage 50 < 75")
    );
    let g = gates(&run);
    assert_eq!(g.len(), 1);
    assert!(!g[0].1.passed);
    assert!(g[0].1.conditions[1].passed, "tests_failed == 0 holds");

    // Restored coverage passes, and deploy runs.
    let r = repo(&[("go.mod", GO_MOD)]);
    let mut p = p;
    p.jobs[0] = writer(
        "unit",
        1,
        &[("report.xml", junit(0)), ("cover.out", cover(4))],
        &[("junit", "report.xml"), ("gocover", "cover.out")],
    );
    let run = crate::run(&p, r.path()).await;
    assert_eq!(run.status("quality"), JobStatus::Success);
    assert_eq!(run.status("deploy"), JobStatus::Success);
    assert!(run.rec.has_info("quality", "quality gate passed"));
}

#[tokio::test]
async fn a_failing_test_fails_an_always_gate_that_still_reports_its_table() {
    let r = repo(&[]);
    let mut unit = writer(
        "unit",
        1,
        &[("report.xml", junit(2))],
        &[("junit", "report.xml")],
    );
    unit.script.push("exit 1".into());
    let mut quality = gate("quality", 2, &[("tests_failed", "== 0")]);
    quality.when = When::Always;
    let run = run(&plan(vec![unit, quality]), r.path()).await;
    assert_eq!(run.status("unit"), JobStatus::Failed);
    assert_eq!(run.status("quality"), JobStatus::Failed);
    let g = gates(&run);
    assert_eq!(g[0].1.conditions[0].actual, Some(2.0));
    assert_eq!(g[0].1.offenders.failed_tests.len(), 2);
    assert_eq!(
        run.rec.finished_error("quality").as_deref(),
        Some("quality gate failed: tests_failed 2 != 0")
    );
}

#[tokio::test]
async fn missing_data_fails_and_needs_choose_the_jobs() {
    let r = repo(&[]);
    let sarif = r#"{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"t"}},"results":[]}]}"#;
    let mut quality = gate(
        "quality",
        2,
        &[("tests_total", "> 0"), ("sarif_errors", "== 0")],
    );
    // Only `scan` is needed: the tests of `unit` are not the gate's.
    quality.needs = needs(&["scan"]);
    quality.allow_failure = AllowFailure::Bool(true);
    let p = plan(vec![
        writer(
            "unit",
            1,
            &[("report.xml", junit(0))],
            &[("junit", "report.xml")],
        ),
        writer(
            "scan",
            1,
            &[("scan.sarif", sarif.to_owned())],
            &[("sarif", "scan.sarif")],
        ),
        quality,
        job("deploy", 3, &["echo deploying"]),
    ]);
    let run = run(&p, r.path()).await;
    assert_eq!(run.status("quality"), JobStatus::Failed);
    assert!(run.job("quality").allow_failure);
    assert_eq!(
        run.status("deploy"),
        JobStatus::Success,
        "an allowed failure"
    );
    assert_eq!(
        run.rec.finished_error("quality").as_deref(),
        Some("quality gate failed: tests_total: no data")
    );
}

#[tokio::test]
async fn a_corrupt_or_too_large_report_fails_its_job_naming_the_file() {
    let r = repo(&[]);
    let p = plan(vec![
        writer(
            "unit",
            1,
            &[("report.xml", "<testsuite><testcase name=\"a\">".to_owned())],
            &[("junit", "report.xml")],
        ),
        writer(
            "big",
            1,
            &[("report.xml", junit(0))],
            &[("junit", "report.xml")],
        ),
    ]);
    let run = run_with(&p, r.path(), |c| c.max_report_bytes = 100).await;
    assert_eq!(run.status("unit"), JobStatus::Failed);
    let e = run.rec.finished_error("unit").unwrap();
    assert!(
        e.starts_with("cannot read the junit report report.xml:1:"),
        "{e}"
    );
    assert_eq!(
        run.rec.finished_error("big").as_deref(),
        Some(
            "cannot read the junit report report.xml: the report is larger than the limit of 100 bytes"
        )
    );
}

#[tokio::test]
async fn a_later_run_of_the_gate_alone_reads_the_kept_summaries() {
    let r = repo(&[("go.mod", GO_MOD)]);
    let p = plan(vec![
        writer(
            "unit",
            1,
            &[("cover.out", cover(3))],
            &[("gocover", "cover.out")],
        ),
        gate("quality", 2, &[("coverage", ">= 70")]),
    ]);
    let first = run(&p, r.path()).await;
    assert_eq!(first.status("quality"), JobStatus::Success);
    let second = run_with(&p, r.path(), |c| c.selected = vec![false, true]).await;
    assert_eq!(second.status("quality"), JobStatus::Success);
    assert_eq!(gates(&second)[0].1.conditions[0].actual, Some(75.0));
}

#[tokio::test]
async fn new_coverage_counts_the_changed_lines() {
    let r = repo(&[("go.mod", GO_MOD)]);
    let p = plan(vec![
        writer(
            "unit",
            1,
            &[("cover.out", cover(3))],
            &[("gocover", "cover.out")],
        ),
        gate(
            "quality",
            2,
            &[("coverage", ">= 70"), ("new_coverage", ">= 80")],
        ),
    ]);
    // Lines 3 and 4 changed: 3 is covered, 4 is not.
    let diff =
        "diff --git a/main.go b/main.go\n--- a/main.go\n+++ b/main.go\n@@ -3,0 +3,2 @@\n+a\n+b\n";
    let changes = Arc::new(ChangedLines::parse(diff).unwrap());
    let run = run_with(&p, r.path(), |c| c.changes = Some(changes)).await;
    assert_eq!(run.status("quality"), JobStatus::Failed);
    assert_eq!(
        run.rec.finished_error("quality").as_deref(),
        Some("quality gate failed: new_coverage 50 < 80")
    );
    let g = gates(&run);
    assert_eq!(g[0].1.offenders.uncovered_new_lines[0].lines, [4]);

    // Without a base, new_coverage has no data.
    let r = repo(&[("go.mod", GO_MOD)]);
    let run = crate::run(&p, r.path()).await;
    assert_eq!(
        run.rec.finished_error("quality").as_deref(),
        Some("quality gate failed: new_coverage: no data")
    );
}

#[tokio::test]
async fn masked_values_never_reach_summaries() {
    let r = repo(&[]);
    let report = "<testsuite><testcase name=\"login\"><failure message=\"token $TOKEN refused\"/></testcase></testsuite>";
    let mut unit = job(
        "unit",
        1,
        &[&format!(
            "printf '%s' \"{}\" > report.xml",
            report.replace('"', "\\\"")
        )],
    );
    let mut a = artifacts(&[]).unwrap();
    a.reports = vec![("junit".to_owned(), vec!["report.xml".to_owned()])];
    unit.artifacts = Some(a);
    let mut p = plan(vec![unit]);
    p.variables.push(gantry_pipeline::plan::Variable {
        key: "TOKEN".into(),
        value: "s3cr3t-t0ken".into(),
        expand: true,
        masked: true,
    });
    let run = run(&p, r.path()).await;
    let got = reports(&run, "unit");
    let failure = &got[0].1.tests.as_ref().unwrap().failures[0];
    assert_eq!(failure.message, "token [MASKED] refused");
    let kept = std::fs::read_to_string(r.path().join(".gantry/reports/unit.json")).unwrap();
    assert!(!kept.contains("s3cr3t"), "{kept}");
}

/// The summaries of a JUnit report with `failed` failing cases out of three.
fn test_reports(failed: usize) -> Arc<Reports> {
    let tests =
        gantry_runtime::gantry_reports::junit::parse(junit(failed).as_bytes(), &Options::default())
            .unwrap();
    Arc::new(Reports {
        tests: Some(tests),
        ..Reports::default()
    })
}

#[tokio::test]
async fn given_gate_reports_are_all_the_gate_sees() {
    // `unit` passes its tests here, but the caller's summaries (an agent's, from the server) say
    // two failed: the gate goes by those alone.
    let r = repo(&[]);
    let p = plan(vec![
        writer(
            "unit",
            1,
            &[("report.xml", junit(0))],
            &[("junit", "report.xml")],
        ),
        gate("quality", 2, &[("tests_failed", "== 0")]),
    ]);
    let run = run_with(&p, r.path(), |c| c.gate_reports = Some(test_reports(2))).await;
    assert_eq!(run.status("unit"), JobStatus::Success);
    assert_eq!(
        run.rec.finished_error("quality").as_deref(),
        Some("quality gate failed: tests_failed 2 != 0")
    );

    // The gate alone, with nothing kept here: given passing summaries, it passes.
    let r = repo(&[]);
    let run = run_with(&p, r.path(), |c| {
        c.selected = vec![false, true];
        c.gate_reports = Some(test_reports(0));
    })
    .await;
    assert_eq!(run.status("quality"), JobStatus::Success);
    assert_eq!(gates(&run)[0].1.conditions[0].actual, Some(0.0));
    // And without them, it has no data.
    let run = run_with(&p, r.path(), |c| c.selected = vec![false, true]).await;
    assert_eq!(
        run.rec.finished_error("quality").as_deref(),
        Some("quality gate failed: tests_failed: no data")
    );
}

/// The fake executor, counting the jobs it prepares.
#[derive(Clone, Default)]
struct Counting(Arc<AtomicUsize>);

impl Executor for Counting {
    type Session = FakeSession;

    async fn prepare(&self, job: &JobContext) -> Result<FakeSession, String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        FakeExecutor.prepare(job).await
    }
}

#[tokio::test]
async fn a_gate_without_a_script_never_starts_the_executor_nor_default_scripts() {
    let r = repo(&[]);
    let with_defaults = |mut j: Job| {
        // As `default: before_script/after_script` leave them in every job.
        j.before_script = vec!["echo before".into()];
        j.after_script = vec!["echo after".into()];
        j
    };
    let p = plan(vec![
        with_defaults(job("unit", 1, &["echo unit"])),
        with_defaults(gate("quality", 2, &[("tests_failed", "== 0")])),
    ]);
    let counting = Counting::default();
    let run_gate = |reports: Arc<Reports>| {
        let mut cfg = config(r.path(), &p);
        cfg.selected = vec![false, true];
        cfg.gate_reports = Some(reports);
        let (_tx, rx) = watch::channel(false);
        run_on(&p, cfg, rx, counting.clone())
    };
    let run = run_gate(test_reports(0)).await;
    assert_eq!(run.status("quality"), JobStatus::Success);
    let run2 = run_gate(test_reports(1)).await;
    assert_eq!(run2.status("quality"), JobStatus::Failed);
    assert_eq!(
        run2.rec.finished_error("quality").as_deref(),
        Some("quality gate failed: tests_failed 1 != 0")
    );
    assert_eq!(
        counting.0.load(Ordering::SeqCst),
        0,
        "the executor was called"
    );
    for run in [&run, &run2] {
        assert!(run.logs("quality").is_empty(), "{:?}", run.logs("quality"));
        assert_eq!(gates(run).len(), 1);
    }

    // A job with a script is prepared, which is what the count sees.
    let mut cfg = config(r.path(), &p);
    cfg.selected = vec![true, false];
    let (_tx, rx) = watch::channel(false);
    let run = run_on(&p, cfg, rx, counting.clone()).await;
    assert_eq!(run.logs("unit"), ["before", "unit", "after"]);
    assert_eq!(counting.0.load(Ordering::SeqCst), 1);
}
