use gantry_reports::sarif::{Level, SarifReport};
use gantry_reports::security::{Severity, VulnerabilityReport};
use gantry_reports::{Options, codequality, sarif, security};

use crate::{fixture, strip};

#[test]
fn sarif_levels_rules_and_locations() {
    let r = sarif::parse(&fixture("results.sarif")[..], &strip("/builds/group/svc")).unwrap();
    assert_eq!((r.errors, r.warnings, r.notes, r.none), (2, 2, 1, 1));
    let first = &r.results[0];
    assert_eq!(
        first.level,
        Level::Error,
        "level from the rule's defaultConfiguration"
    );
    assert_eq!(first.rule_id.as_deref(), Some("SA1000"));
    assert_eq!(first.place(), "main.go:42");
    assert_eq!(first.message, "error parsing regexp: missing closing ]");
    assert_eq!(r.results[1].level, Level::Note);
    assert_eq!(
        r.results[1].place(),
        "internal/store/store.go:7",
        "file:// and the prefix go"
    );
    assert_eq!(r.results[2].place(), "util.go:3", "the first location");
    assert_eq!(
        r.results[3].rule_id.as_deref(),
        Some("U1000"),
        "rule by ruleIndex"
    );
    assert_eq!(
        r.results[3].level,
        Level::Warning,
        "no level anywhere: warning"
    );
    assert_eq!(r.results[4].level, Level::None, "kind pass");
    assert_eq!(r.results[5].place(), "config.go:12", "the second run");
}

#[test]
fn sarif_rejects_other_documents_with_position() {
    let e = sarif::parse(&br#"{"version":"2.1.0"}"#[..], &Options::default()).unwrap_err();
    assert_eq!(e.to_string(), "not a SARIF log: no `runs`");
    let e = sarif::parse(
        &b"{\"runs\": [\n {\"results\": [ {\"level\": 5} ]}]}"[..],
        &Options::default(),
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("2:"), "{e}");
    assert!(e.to_string().contains("invalid type"), "{e}");
    let e = sarif::parse(&b"{\"runs\": []} trailing"[..], &Options::default()).unwrap_err();
    assert!(e.to_string().contains("trailing characters"), "{e}");
    let e = sarif::parse(&b"[1,2]"[..], &Options::default()).unwrap_err();
    assert!(e.to_string().contains("a SARIF log"), "{e}");
    let e = sarif::parse(&br#"{"runs": [{"results": 3}]}"#[..], &Options::default()).unwrap_err();
    assert!(e.to_string().contains("an array of results"), "{e}");
    // `null` runs or results: the tool did not run; nothing to count.
    let r = sarif::parse(&br#"{"runs": null}"#[..], &Options::default()).unwrap();
    assert_eq!(r, SarifReport::default());
    let r = sarif::parse(
        &br#"{"runs": [{"results": null}]}"#[..],
        &Options::default(),
    )
    .unwrap();
    assert_eq!(r, SarifReport::default());
    let e = sarif::parse(&b"[1,2]"[..], &Options::default()).unwrap_err();
    assert!(e.to_string().contains("a SARIF log"), "{e}");
}

#[test]
fn sarif_lists_are_capped_per_level_with_true_totals() {
    let mut s = String::from(r#"{"runs":[{"results":["#);
    for i in 0..1200 {
        s.push_str(&format!(
            r#"{{"level":"note","message":{{"text":"n{i}"}}}},"#
        ));
    }
    s.push_str(r#"{"level":"error","message":{"text":"the error"}}]}]}"#);
    let r = sarif::parse(s.as_bytes(), &Options::default()).unwrap();
    assert_eq!((r.notes, r.errors), (1200, 1));
    assert_eq!(
        r.results.len(),
        gantry_reports::MAX_ITEMS + 1,
        "the error is kept after the capped notes"
    );
    let mut merged = SarifReport::default();
    merged.merge(&r);
    merged.merge(&r);
    assert_eq!((merged.notes, merged.errors), (2400, 2));
    assert_eq!(merged.results.len(), gantry_reports::MAX_ITEMS + 2);
}

#[test]
fn security_report_severities_ids_and_packages() {
    let r = security::parse(
        &fixture("gl-dependency-scanning-report.json")[..],
        &Options::default(),
    )
    .unwrap();
    assert_eq!(
        (r.critical, r.high, r.medium, r.low, r.info, r.unknown),
        (1, 1, 0, 1, 1, 1)
    );
    let v = &r.vulnerabilities[0];
    assert_eq!(v.severity, Severity::Critical);
    assert_eq!(v.id, "CVE-2023-45288", "the CVE before other identifiers");
    assert_eq!(v.package.as_deref(), Some("golang.org/x/net"));
    assert_eq!(v.display(), "CVE-2023-45288 golang.org/x/net@v0.17.0");
    assert_eq!(r.vulnerabilities[1].id, "GHSA-xxxx-yyyy-zzzz");
    assert_eq!(
        r.vulnerabilities[3].id, "d1",
        "no identifiers: the report id"
    );
    assert_eq!(r.vulnerabilities[4].display(), "79 app.js:10");
    let mut m = VulnerabilityReport::default();
    m.merge(&r);
    m.merge(&r);
    assert_eq!((m.critical, m.vulnerabilities.len()), (2, 10));
}

#[test]
fn security_report_needs_vulnerabilities() {
    let e = security::parse(
        &br#"{"version":"15.0.0","scan":{}}"#[..],
        &Options::default(),
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "not a security report: no `vulnerabilities`");
    let e = security::parse(
        &b"{\"vulnerabilities\": [ {\"severity\": \"High\"},\n  oops ]}"[..],
        &Options::default(),
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("2:3:"), "{e}");
}

#[test]
fn code_quality_issues() {
    let r = codequality::parse(
        &fixture("gl-code-quality-report.json")[..],
        &Options::default(),
    )
    .unwrap();
    assert_eq!(
        (r.blocker, r.critical, r.major, r.minor, r.info, r.unknown),
        (1, 0, 1, 1, 0, 1)
    );
    assert_eq!(r.issues[1].line, Some(30), "positions.begin.line");
    assert_eq!(r.issues[2].path.as_deref(), Some("db.go"));
    assert_eq!(r.issues[0].check_name, "golint");
    let e = codequality::parse(&br#"{"issues": []}"#[..], &Options::default()).unwrap_err();
    assert!(
        e.to_string().contains("an array of Code Climate issues"),
        "{e}"
    );
}
