use gantry_pipeline::gate::{Condition, Metric, Op};
use gantry_reports::gate::{Verdict, render};
use gantry_reports::{
    ChangedLines, Options, Reports, codequality, evaluate, gocover, gotest, junit, lcov, sarif,
    security,
};

use crate::{fixture, strip};

fn cond(metric: &str, text: &str) -> Condition {
    Condition::parse(metric, text).unwrap()
}

/// Reports of three jobs, as a pipeline would have them.
fn pipeline() -> Vec<Reports> {
    let unit = Reports {
        tests: Some(gotest::parse(&fixture("gotest.json")[..], &Options::default()).unwrap()),
        coverage: Some(
            gocover::parse(&fixture("cover.out")[..], &strip("example.com/svc")).unwrap(),
        ),
        ..Reports::default()
    };
    let java = Reports {
        tests: Some(junit::parse(&fixture("junit-maven.xml")[..], &Options::default()).unwrap()),
        ..Reports::default()
    };
    let scan = Reports {
        sarif: Some(sarif::parse(&fixture("results.sarif")[..], &Options::default()).unwrap()),
        vulnerabilities: Some(
            security::parse(
                &fixture("gl-dependency-scanning-report.json")[..],
                &Options::default(),
            )
            .unwrap(),
        ),
        codequality: Some(
            codequality::parse(
                &fixture("gl-code-quality-report.json")[..],
                &Options::default(),
            )
            .unwrap(),
        ),
        ..Reports::default()
    };
    vec![unit, java, scan]
}

#[test]
fn reports_merge_across_jobs() {
    let jobs = pipeline();
    let all = Reports::merged(&jobs);
    let t = all.tests.as_ref().unwrap();
    assert_eq!((t.total, t.failed, t.errors, t.skipped), (11, 3, 2, 2));
    assert_eq!(t.failures.len(), 5);
    assert_eq!(all.coverage_percent(), Some(50.0));
    assert_eq!(all.sarif.as_ref().unwrap().errors, 2);
    let json = serde_json::to_string(&all).unwrap();
    assert_eq!(serde_json::from_str::<Reports>(&json).unwrap(), all);
}

#[test]
fn each_metric_has_its_value() {
    let all = Reports::merged(&pipeline());
    let changes = ChangedLines::parse(
        "diff --git a/main.go b/main.go\n--- a/main.go\n+++ b/main.go\n@@ -14,0 +15,3 @@\n+a\n+b\n+c\n",
    )
    .unwrap();
    let expect = [
        ("coverage", 50.0),
        ("new_coverage", 33.33),
        ("tests_failed", 5.0),
        ("tests_total", 11.0),
        ("tests_skipped", 2.0),
        ("sarif_errors", 2.0),
        ("sarif_warnings", 2.0),
        ("sarif_notes", 1.0),
        ("vulnerabilities_critical", 1.0),
        ("vulnerabilities_high", 1.0),
        ("vulnerabilities_medium", 0.0),
        ("vulnerabilities_low", 1.0),
        ("vulnerabilities_unknown", 1.0),
        ("codequality_blocker", 1.0),
        ("codequality_critical", 0.0),
        ("codequality_major", 1.0),
        ("codequality_minor", 1.0),
        ("codequality_info", 0.0),
    ];
    assert_eq!(expect.len(), Metric::ALL.len());
    let conditions: Vec<Condition> = expect
        .iter()
        .map(|(m, v)| cond(m, &format!("== {v}")))
        .collect();
    let out = evaluate(&conditions, &all, Some(&changes));
    for (c, (m, v)) in out.conditions.iter().zip(expect) {
        assert_eq!(c.metric.key(), m);
        assert_eq!(c.actual, Some(v), "{m}");
        assert_eq!(c.verdict, Verdict::Ok, "{m}");
    }
    assert!(out.passed);
}

#[test]
fn every_operator_decides() {
    let all = Reports::merged(&pipeline());
    for (text, passes) in [
        ("== 5", true),
        ("== 4", false),
        ("!= 4", true),
        ("!= 5", false),
        ("< 6", true),
        ("< 5", false),
        ("<= 5", true),
        ("<= 4", false),
        ("> 4", true),
        ("> 5", false),
        (">= 5", true),
        (">= 6", false),
    ] {
        let out = evaluate(&[cond("tests_failed", text)], &all, None);
        assert_eq!(out.passed, passes, "tests_failed {text}");
        assert_eq!(out.conditions[0].passed, passes);
    }
}

#[test]
fn missing_data_fails() {
    let only_tests = Reports {
        tests: Some(junit::parse(&fixture("junit-maven.xml")[..], &Options::default()).unwrap()),
        ..Reports::default()
    };
    for metric in Metric::ALL {
        if matches!(
            metric,
            Metric::TestsFailed | Metric::TestsTotal | Metric::TestsSkipped
        ) {
            continue;
        }
        let c = Condition {
            metric,
            op: Op::Ge,
            threshold: 0.0,
        };
        let out = evaluate(&[c], &only_tests, None);
        assert!(!out.passed, "{metric}");
        assert_eq!(out.conditions[0].verdict, Verdict::NoData, "{metric}");
        assert_eq!(out.conditions[0].actual, None);
    }
    let out = evaluate(&[cond("tests_failed", "== 0")], &Reports::default(), None);
    assert_eq!(out.conditions[0].verdict, Verdict::NoData);
    assert!(render(&out).contains("no data"));
}

#[test]
fn coverage_falls_back_to_the_jobs_regex_percentages() {
    let r = Reports {
        job_coverage: vec![70.0, 81.0],
        ..Reports::default()
    };
    let out = evaluate(&[cond("coverage", ">= 75")], &r, None);
    assert_eq!(out.conditions[0].actual, Some(75.5));
    assert!(out.passed);
}

#[test]
fn new_coverage_counts_coverable_changed_lines() {
    let cov = lcov::parse(
        "SF:src/a.js\nDA:1,1\nDA:2,0\nDA:3,0\nDA:5,2\nend_of_record\n".as_bytes(),
        &Options::default(),
    )
    .unwrap();
    let r = Reports {
        coverage: Some(cov),
        ..Reports::default()
    };
    // Lines 2..=5 of a.js changed (4 is blank: not coverable), and an untracked file.
    let diff = "diff --git a/src/a.js b/src/a.js\nindex 1..2 100644\n--- a/src/a.js\n+++ b/src/a.js\n@@ -2,2 +2,4 @@ fn\n-old\n-old\n+x\n+y\n+\n+z\ndiff --git a/README.md b/README.md\n--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-a\n+b\n";
    let changes = ChangedLines::parse(diff).unwrap();
    assert_eq!(changes.files["src/a.js"], [2, 3, 4, 5]);
    let out = evaluate(
        &[cond("new_coverage", ">= 80"), cond("coverage", ">= 50")],
        &r,
        Some(&changes),
    );
    assert_eq!(out.conditions[0].actual, Some(33.33));
    assert!(!out.conditions[0].passed);
    assert!(out.conditions[1].passed, "total coverage still passes");
    assert_eq!(out.offenders.uncovered_new_lines[0].file, "src/a.js");
    assert_eq!(out.offenders.uncovered_new_lines[0].lines, [2, 3]);
    assert!(
        render(&out).contains("uncovered new lines:\n  src/a.js: 2-3\n"),
        "{}",
        render(&out)
    );
}

#[test]
fn new_coverage_with_nothing_to_cover_passes_but_without_data_fails() {
    let cov = lcov::parse(
        "SF:a.js\nDA:1,0\nend_of_record\n".as_bytes(),
        &Options::default(),
    )
    .unwrap();
    let r = Reports {
        coverage: Some(cov),
        ..Reports::default()
    };
    let docs = ChangedLines::parse("--- a/README.md\n+++ b/README.md\n@@ -1 +1,2 @@\n-a\n+b\n+c\n")
        .unwrap();
    let c = [cond("new_coverage", ">= 80")];
    let out = evaluate(&c, &r, Some(&docs));
    assert_eq!(out.conditions[0].verdict, Verdict::NothingToCover);
    assert!(out.passed);
    assert!(render(&out).contains("nothing to cover"));
    // Without the change, or without coverage reports: no data, which fails.
    assert_eq!(
        evaluate(&c, &r, None).conditions[0].verdict,
        Verdict::NoData
    );
    let out = evaluate(&c, &Reports::default(), Some(&docs));
    assert_eq!(out.conditions[0].verdict, Verdict::NoData);
    assert!(!out.passed);
}

#[test]
fn the_table_and_the_worst_offenders() {
    let all = Reports::merged(&pipeline());
    let conditions = [
        cond("coverage", ">= 75"),
        cond("tests_failed", "== 0"),
        cond("sarif_errors", "== 0"),
        cond("vulnerabilities_critical", "== 0"),
        cond("vulnerabilities_high", "<= 2"),
        cond("codequality_blocker", "== 0"),
    ];
    let out = evaluate(&conditions, &all, None);
    assert!(!out.passed);
    let table = render(&out);
    let expected = "\
quality gate: FAILED
  metric                    actual  op  threshold  result
  coverage                  50%     >=  75%        FAILED
  tests_failed              5       ==  0          FAILED
  sarif_errors              2       ==  0          FAILED
  vulnerabilities_critical  1       ==  0          FAILED
  vulnerabilities_high      1       <=  2          OK
  codequality_blocker       1       ==  0          FAILED
failed tests:
  example.com/svc: TestOrders/empty: orders_test.go:21: got 3 orders, want 0
  example.com/svc: TestOrders
  example.com/svc/internal/broken: internal/broken/b.go:3:1: syntax error: non-declaration statement outside function body
  com.example.CartTest.removesItem: expected: <1> but was: <2>
  com.example.DbTest.connects: Connection refused
SARIF results:
  main.go:42 [SA1000] error parsing regexp: missing closing ]
  config.go:12 [G101] Potential hardcoded credentials
vulnerabilities:
  CVE-2023-45288 golang.org/x/net@v0.17.0 (critical)
code quality issues:
  db.go:5 gosec (blocker)
";
    assert_eq!(table, expected);
    let json = serde_json::to_value(&out).unwrap();
    assert_eq!(json["conditions"][0]["operator"], ">=");
    assert_eq!(json["conditions"][0]["metric"], "coverage");
    assert_eq!(json["conditions"][0]["actual"], 50.0);
}

#[test]
fn diff_parsing() {
    let diff = "\
diff --git a/old.go b/new.go
similarity index 90%
rename from old.go
rename to new.go
--- a/old.go
+++ b/new.go
@@ -3 +3 @@ func a() {
-	x := 1
+	x := 2
@@ -10,0 +11,2 @@
+++ b/not-a-header
+second
diff --git a/gone.go b/gone.go
deleted file mode 100644
--- a/gone.go
+++ /dev/null
@@ -1,3 +0,0 @@
-a
-b
-c
diff --git \"a/sp ace\\tx.go\" \"b/sp ace\\tx.go\"
--- \"a/sp ace\\tx.go\"
+++ \"b/sp ace\\tx.go\"
@@ -0,0 +1 @@
+new
\\ No newline at end of file
";
    let c = ChangedLines::parse(diff).unwrap();
    assert_eq!(c.files["new.go"], [3, 11, 12]);
    assert!(!c.files.contains_key("gone.go"));
    assert!(!c.files.contains_key("not-a-header"));
    assert_eq!(c.files["sp ace\tx.go"], [1]);
    assert_eq!(c.files.len(), 2);
    let e = ChangedLines::parse("--- a/x\n+++ b/x\n@@ -1 +a,b @@\n").unwrap_err();
    assert_eq!(e, "diff line 3: malformed hunk header `@@ -1 +a,b @@`");
}

#[test]
fn failures_name_each_failed_condition_with_what_holds() {
    let r = Reports {
        job_coverage: vec![71.2],
        ..Reports::default()
    };
    let gate = [
        cond("coverage", ">= 75"),
        cond("tests_failed", "== 0"),
        cond("coverage", "< 90"),
        cond("coverage", "!= 71.2"),
    ];
    let out = evaluate(&gate, &r, None);
    assert_eq!(
        gantry_reports::gate::failures(&out),
        "coverage 71.2 < 75; tests_failed: no data; coverage 71.2 == 71.2"
    );
    let passed = evaluate(&gate[2..3], &r, None);
    assert_eq!(gantry_reports::gate::failures(&passed), "");
}
