//! Reports and quality gates end to end (issue 18): the test jobs write real JUnit XML, Go cover
//! profiles and SARIF, and `gantry run` gates on them.

use std::path::Path;

use serde_json::Value;

use crate::Repo;

/// Writes `report.xml` (one passing test and `$FAILED` failing ones) and `cover.out` (four
/// one-statement lines of `main.go`, `$COVERED` of them run), then fails when a test failed, as
/// `go test` does.
const WRITE_REPORTS: &str = r#"set -e
: "${COVERED:=4}" "${FAILED:=0}"
echo "mode: set" > cover.out
for l in 1 2 3 4; do
  n=0; if [ "$l" -le "$COVERED" ]; then n=1; fi
  echo "example.com/svc/main.go:$l.1,$l.20 1 $n" >> cover.out
done
{
  echo '<testsuite name="svc">'
  echo '<testcase classname="svc" name="TestOk"/>'
  i=0
  while [ "$i" -lt "$FAILED" ]; do
    echo "<testcase classname=\"svc\" name=\"TestBroken$i\"><failure message=\"want 2, got 3\"/></testcase>"
    i=$((i+1))
  done
  echo '</testsuite>'
} > report.xml
[ "$FAILED" -eq 0 ]
"#;

/// Writes `scan.sarif` with `$SARIF_ERRORS` errors in `main.go`.
const WRITE_SARIF: &str = r#"set -e
: "${SARIF_ERRORS:=0}"
results=""
i=0
while [ "$i" -lt "$SARIF_ERRORS" ]; do
  [ -n "$results" ] && results="$results,"
  results="$results{\"ruleId\":\"G101\",\"level\":\"error\",\"message\":{\"text\":\"hard-coded credentials\"},\"locations\":[{\"physicalLocation\":{\"artifactLocation\":{\"uri\":\"main.go\"},\"region\":{\"startLine\":$((i+2))}}}]}"
  i=$((i+1))
done
printf '{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"scan"}},"results":[%s]}]}' "$results" > scan.sarif
"#;

const MAIN_GO: &str = "package main\n\nfunc a() int { return 1 }\n\nfunc main() { a() }\n";

fn pipeline(gate: &str) -> String {
    format!(
        r#"stages: [test, gate, deploy]
unit:
  stage: test
  script: [sh write-reports.sh]
  artifacts:
    reports:
      junit: report.xml
      gocover: cover.out
scan:
  stage: test
  script: [sh write-sarif.sh]
  artifacts:
    reports:
      sarif: scan.sarif
quality:
  stage: gate
  when: always
  gate:
{gate}
deploy:
  stage: deploy
  script: [echo deploying]
"#
    )
}

const GATE: &str =
    "    coverage: \">= 75\"\n    tests_failed: \"== 0\"\n    sarif_errors: \"== 0\"\n";

fn service(gate: &str) -> Repo {
    Repo::new(&[
        (".gitlab-ci.yml", &pipeline(gate)),
        ("write-reports.sh", WRITE_REPORTS),
        ("write-sarif.sh", WRITE_SARIF),
        ("go.mod", "module example.com/svc\n\ngo 1.22\n"),
        ("main.go", MAIN_GO),
    ])
}

fn events<'a>(r: &'a crate::Run, kind: &str) -> Vec<&'a Value> {
    r.events.iter().filter(|e| e["event"] == kind).collect()
}

fn gate_event(r: &crate::Run) -> &Value {
    let g = events(r, "gate");
    assert_eq!(g.len(), 1, "{}", r.dump());
    g[0]
}

/// The gate's condition on `metric`.
fn condition<'a>(r: &'a crate::Run, metric: &str) -> &'a Value {
    gate_event(r)["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["metric"] == metric)
        .unwrap_or_else(|| panic!("no {metric}: {}", r.dump()))
}

#[test]
fn coverage_below_the_threshold_fails_the_gate_and_stops_the_deploy_stage() {
    let repo = service(GATE);
    let r = repo.run_json(&["--variable", "COVERED=2"]);
    assert_eq!(r.code, 1, "{}", r.dump());
    assert_eq!(r.status("unit"), "success");
    assert_eq!(r.status("quality"), "failed");
    assert_eq!(r.status("deploy"), "skipped");
    assert_eq!(
        r.finished("quality")["error"],
        "quality gate failed: coverage 50 < 75"
    );
    let g = gate_event(&r);
    assert_eq!(g["job"], "quality");
    assert_eq!(g["passed"], false);
    let c = condition(&r, "coverage");
    assert_eq!(
        (&c["operator"], &c["threshold"], &c["actual"], &c["passed"]),
        (
            &Value::from(">="),
            &Value::from(75.0),
            &Value::from(50.0),
            &Value::from(false)
        )
    );
    assert_eq!(condition(&r, "tests_failed")["passed"], true);
    assert_eq!(condition(&r, "sarif_errors")["passed"], true);

    // The report events: unit's tests and coverage, scan's SARIF, before each job's finish.
    let reports: Vec<(String, String)> = events(&r, "report")
        .iter()
        .map(|e| {
            (
                e["job"].as_str().unwrap().into(),
                e["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    for want in [("unit", "junit"), ("unit", "coverage"), ("scan", "sarif")] {
        assert!(
            reports.contains(&(want.0.into(), want.1.into())),
            "{reports:?}"
        );
    }
    let cov = events(&r, "report")
        .into_iter()
        .find(|e| e["kind"] == "coverage")
        .unwrap();
    assert_eq!(cov["summary"]["percent"], 50.0);
    assert_eq!(cov["summary"]["lines_total"], 4);
    let junit = r.index(|e| e["event"] == "report" && e["kind"] == "junit");
    assert!(junit < r.index(|e| e["event"] == "job_finished" && e["job"] == "unit"));

    // Restoring coverage passes the gate, and deploy runs.
    let r = repo.run_json(&["--variable", "COVERED=4"]);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(r.status("quality"), "success");
    assert_eq!(r.status("deploy"), "success");
    assert_eq!(gate_event(&r)["passed"], true);
}

#[test]
fn a_failing_test_fails_an_always_gate_that_prints_its_table_after_the_summary() {
    let repo = service(GATE);
    let out = repo.gantry(&[
        "run",
        "--variable",
        "FAILED=1",
        "--variable",
        "SARIF_ERRORS=2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let summary: Vec<&str> = stdout.lines().skip_while(|l| !l.is_empty()).collect();
    let summary = summary.join("\n");
    assert!(
        summary.contains("FAIL     unit") && summary.contains("FAIL     quality"),
        "{summary}"
    );
    assert!(
        summary.contains("tests:\n  unit  1 passed, 1 failed, 0 skipped\n  FAILED unit: svc.TestBroken0: want 2, got 3"),
        "{summary}"
    );
    assert!(
        summary.contains("coverage:\n  unit  100% (4 of 4 covered)"),
        "{summary}"
    );
    assert!(
        summary.contains("quality: quality gate: FAILED"),
        "{summary}"
    );
    let rows: Vec<Vec<&str>> = summary
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    for row in [
        ["coverage", "100%", ">=", "75%", "OK"],
        ["tests_failed", "1", "==", "0", "FAILED"],
        ["sarif_errors", "2", "==", "0", "FAILED"],
    ] {
        assert!(rows.iter().any(|r| r == &row), "{row:?} in {summary}");
    }
    assert!(
        summary.contains("SARIF results:\n  main.go:2 [G101] hard-coded credentials"),
        "{summary}"
    );
    assert!(
        summary
            .lines()
            .last()
            .unwrap()
            .starts_with("pipeline failed"),
        "the verdict comes last: {summary}"
    );
}

#[test]
fn a_metric_without_data_fails_with_no_data() {
    let repo = service("    tests_failed: \"== 0\"\n    vulnerabilities_critical: \"== 0\"\n");
    let r = repo.run_json(&[]);
    assert_eq!(r.status("quality"), "failed", "{}", r.dump());
    let c = condition(&r, "vulnerabilities_critical");
    assert_eq!(c["actual"], Value::Null);
    assert_eq!(c["verdict"], "no_data");
    assert_eq!(c["passed"], false);
    assert_eq!(
        r.finished("quality")["error"],
        "quality gate failed: vulnerabilities_critical: no data"
    );
    let out = repo.gantry(&["run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "vulnerabilities_critical",
                    "no",
                    "data",
                    "==",
                    "0",
                    "FAILED"
                ]),
        "{stdout}"
    );
}

#[test]
fn new_coverage_is_the_coverage_of_the_lines_the_change_touched() {
    let gate = "    coverage: \">= 70\"\n    new_coverage: \">= 80\"\n";
    let repo = service(gate);
    // A change on a branch: lines 3 and 4 of main.go; the profile covers lines 1-3.
    repo.git(&["checkout", "-q", "-b", "feature"]);
    std::fs::write(
        repo.path().join("main.go"),
        "package main\n\nfunc a() int { return 2 }\nfunc b() int { return 3 }\nfunc main() { a() }\n",
    )
    .unwrap();
    repo.git(&["commit", "-q", "-am", "Change a, add b"]);

    // The base is the merge base with the default branch.
    let r = repo.run_json(&["--variable", "COVERED=3"]);
    assert_eq!(r.status("quality"), "failed", "{}", r.dump());
    assert_eq!(
        condition(&r, "coverage")["passed"],
        true,
        "75% total passes"
    );
    assert_eq!(condition(&r, "new_coverage")["actual"], 50.0);
    assert_eq!(
        r.finished("quality")["error"],
        "quality gate failed: new_coverage 50 < 80"
    );
    let uncovered = &gate_event(&r)["offenders"]["uncovered_new_lines"];
    assert_eq!(uncovered[0]["file"], "main.go");
    assert_eq!(uncovered[0]["lines"], serde_json::json!([4]));

    // Covering the new line passes.
    let r = repo.run_json(&["--variable", "COVERED=4"]);
    assert_eq!(r.status("quality"), "success", "{}", r.dump());

    // --diff-base picks another base: against HEAD nothing changed, nothing to cover.
    let r = repo.run_json(&["--variable", "COVERED=3", "--diff-base", "HEAD"]);
    assert_eq!(r.status("quality"), "success", "{}", r.dump());
    assert_eq!(condition(&r, "new_coverage")["verdict"], "nothing_to_cover");

    // A base that is no commit is an error.
    let r = repo.run_json(&["--diff-base", "no-such-rev"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("`no-such-rev` is not a commit"),
        "{}",
        r.dump()
    );
}

#[test]
fn lint_rejects_an_unknown_metric_and_a_malformed_condition_with_positions() {
    let repo = Repo::ci("quality:\n  gate:\n    coverge: \">= 75\"\n    tests_failed: \"0\"\n");
    let out = repo.gantry(&["lint"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!("{stdout}{stderr}");
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(
            ".gitlab-ci.yml:3:5: `quality`: unknown gate metric `coverge`; did you mean `coverage`?"
        ),
        "{all}"
    );
    assert!(
        all.contains(".gitlab-ci.yml:4:19: `quality`: malformed gate condition `0` for tests_failed: no operator"),
        "{all}"
    );
}

/// examples/go-service, copied into a repository of its own on branch `main` (without what a run
/// in place leaves: caches, builds, `.gantry/`).
pub(crate) fn go_service() -> Repo {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/go-service");
    let mut files = Vec::new();
    let mut dirs = vec![example.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy();
            if [".cache", "dist", ".gantry"].contains(&name.as_ref()) {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else {
                let name = path.strip_prefix(&example).unwrap().display().to_string();
                files.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    Repo::new(&refs)
}

/// Commits `edit` applied to `file` on a new branch `branch` from `main`.
pub(crate) fn change(repo: &Repo, branch: &str, file: &str, edit: impl FnOnce(String) -> String) {
    repo.git(&["checkout", "-q", "main"]);
    repo.git(&["checkout", "-q", "-b", branch]);
    let path = repo.path().join(file);
    let text = edit(std::fs::read_to_string(&path).unwrap());
    std::fs::write(&path, text).unwrap();
    repo.git(&["commit", "-q", "-am", branch]);
}

/// Three untested statements for `main.go`: coverage 16/23, under 75%.
pub(crate) const UNTESTED_CLAMP: &str = "\n// Clamp keeps n within [lo, hi].\nfunc Clamp(n, lo, hi int) int {\n\tif n < lo {\n\t\treturn lo\n\t}\n\treturn min2(n, hi)\n}\n\nfunc min2(a, b int) int {\n\tif a < b {\n\t\treturn a\n\t}\n\treturn b\n}\n";

/// One untested statement for `main.go`: total coverage 16/21 passes, new code (0%) does not.
pub(crate) const UNTESTED_DOUBLE: &str =
    "\n// Double doubles n.\nfunc Double(n int) int {\n\treturn 2 * n\n}\n";

/// `main_test.go` with a failing test.
pub(crate) fn break_a_test(test_go: String) -> String {
    test_go.replace("Sum(2, 3); got != 5", "Sum(2, 3); got != 6")
}

/// The gate's verdict on each condition: (metric, passed).
fn verdicts(r: &crate::Run) -> Vec<(String, bool)> {
    gate_event(r)["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["metric"].as_str().unwrap().to_owned(),
                c["passed"] == true,
            )
        })
        .collect()
}

fn failed_metrics(r: &crate::Run) -> Vec<String> {
    verdicts(r)
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(m, _)| m)
        .collect()
}

/// Needs Go (`scripts/need.sh go golang-go` installs it; `scripts/test` runs it).
#[test]
fn the_go_example_gates_its_deploy_on_tests_coverage_and_new_code() {
    let repo = go_service();
    // One Go build cache for all the runs, outside the repository (a `--variable` wins over the
    // pipeline's), so that only the first run compiles from scratch.
    let go_cache = tempfile::tempdir().unwrap();
    let cache_var = format!("GOCACHE={}", go_cache.path().join("go-build").display());
    let run = |repo: &Repo| repo.run_json(&["--variable", &cache_var]);

    // As it is, everything passes and deploy runs.
    let r = run(&repo);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(r.status("deploy"), "success");
    assert_eq!(condition(&r, "coverage")["actual"], 80.0);
    assert_eq!(condition(&r, "tests_total")["actual"], 5.0);

    // Three untested statements: coverage 16/23 drops under 75%, and deploy does not run.
    change(&repo, "drop", "main.go", |s| s + UNTESTED_CLAMP);
    let r = run(&repo);
    assert_eq!(r.status("quality-gate"), "failed", "{}", r.dump());
    assert_eq!(r.status("deploy"), "skipped");
    assert!(
        failed_metrics(&r).contains(&"coverage".to_owned()),
        "{:?}",
        verdicts(&r)
    );

    // One untested statement: total coverage (16/21) still passes, new code (0%) does not.
    change(&repo, "untested", "main.go", |s| s + UNTESTED_DOUBLE);
    let r = run(&repo);
    assert_eq!(r.status("quality-gate"), "failed", "{}", r.dump());
    assert_eq!(failed_metrics(&r), ["new_coverage"]);
    assert_eq!(r.status("deploy"), "skipped");
    let uncovered = &gate_event(&r)["offenders"]["uncovered_new_lines"][0];
    assert_eq!(uncovered["file"], "main.go");

    // A failing test fails the test job and the gate, which still reports (`when: always`).
    change(&repo, "broken", "main_test.go", break_a_test);
    let r = run(&repo);
    assert_eq!(r.status("unit-tests"), "failed", "{}", r.dump());
    assert_eq!(r.status("quality-gate"), "failed");
    assert_eq!(failed_metrics(&r), ["tests_failed"]);
    let failed = gate_event(&r)["offenders"]["failed_tests"][0]
        .as_str()
        .unwrap();
    assert!(failed.contains("TestSum"), "{failed}");
    assert_eq!(r.status("deploy"), "skipped");

    // Back on main, the gate passes again.
    repo.git(&["checkout", "-q", "main"]);
    let r = run(&repo);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(r.status("deploy"), "success");
}
