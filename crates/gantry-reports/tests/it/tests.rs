use gantry_reports::tests::FailureKind;
use gantry_reports::{Options, gotest, junit};

use crate::fixture;

#[test]
fn junit_counts_cases_in_nested_suites() {
    let r = junit::parse(&fixture("junit-maven.xml")[..], &Options::default()).unwrap();
    assert_eq!(
        (r.total, r.passed, r.failed, r.errors, r.skipped),
        (6, 3, 1, 1, 1)
    );
    assert_eq!(r.failed_or_errored(), 2);
    let f = &r.failures[0];
    assert_eq!(f.kind, FailureKind::Failure);
    assert_eq!(f.suite, "com.example.CartTest");
    assert_eq!(f.name, "com.example.CartTest.removesItem");
    assert!(
        f.message
            .starts_with("expected: <1> but was: <2>\norg.opentest4j.AssertionFailedError"),
        "{}",
        f.message
    );
    assert!(f.message.contains("CartTest.java:42"), "{}", f.message);
    let e = &r.failures[1];
    assert_eq!(e.kind, FailureKind::Error);
    assert_eq!(e.suite, "com.example.DbTest", "the innermost suite");
    assert!(
        e.message
            .starts_with("Connection refused\njava.net.ConnectException"),
        "{}",
        e.message
    );
}

#[test]
fn junit_single_testsuite_root_and_text_only_failures() {
    let xml = r#"<testsuite name="pytest"><testcase classname="t" name="a"><failure>assert 1 == 2</failure></testcase><testcase name="b"><skipped/></testcase><testcase name="c"><error message="boom"/></testcase></testsuite>"#;
    let r = junit::parse(xml.as_bytes(), &Options::default()).unwrap();
    assert_eq!(
        (r.total, r.failed, r.errors, r.skipped, r.passed),
        (3, 1, 1, 1, 0)
    );
    assert_eq!(r.failures[0].message, "assert 1 == 2");
    assert_eq!(r.failures[0].name, "t.a");
    assert_eq!(r.failures[1].message, "boom");
}

#[test]
fn junit_first_outcome_wins_and_messages_are_capped() {
    let long = "x".repeat(10_000);
    let xml = format!(
        r#"<testsuites><testsuite name="s"><testcase name="a"><failure message="m">{long}</failure><error message="later"/></testcase></testsuite></testsuites>"#
    );
    let r = junit::parse(xml.as_bytes(), &Options::default()).unwrap();
    assert_eq!((r.failed, r.errors, r.total), (1, 0, 1));
    assert!(
        r.failures[0].message.len() < 4200,
        "{}",
        r.failures[0].message.len()
    );
    assert!(r.failures[0].message.ends_with("[truncated]"));
}

#[test]
fn junit_failure_list_is_capped_but_counts_are_exact() {
    let mut xml = String::from("<testsuite name=\"s\">");
    for i in 0..1500 {
        xml.push_str(&format!("<testcase name=\"t{i}\"><failure/></testcase>"));
    }
    xml.push_str("</testsuite>");
    let r = junit::parse(xml.as_bytes(), &Options::default()).unwrap();
    assert_eq!(r.failed, 1500);
    assert_eq!(r.failures.len(), gantry_reports::MAX_ITEMS);
}

#[test]
fn junit_rejects_other_roots_truncation_and_garbage() {
    let e = junit::parse(&b"<coverage/>"[..], &Options::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "1:1: expected <testsuites> or <testsuite> as the root element, found <coverage>"
    );
    let e = junit::parse(
        &b"<testsuite name=\"s\"><testcase name=\"a\">"[..],
        &Options::default(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("the document ends inside <testcase>"),
        "{e}"
    );
    let e = junit::parse(
        &b"<testsuite><testcase></testsuite>"[..],
        &Options::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("malformed XML"), "{e}");
    let e = junit::parse(
        &b"<testsuite>\n  <testcase name=\"a\">\n  </testsuit>\n"[..],
        &Options::default(),
    )
    .unwrap_err();
    assert!(
        e.with_file("junit.xml")
            .starts_with("junit.xml:3:3: malformed XML"),
        "{e}"
    );
    let e = junit::parse(&b""[..], &Options::default()).unwrap_err();
    assert!(e.to_string().contains("no root element"), "{e}");
    assert_eq!(
        e.with_file("report.xml"),
        "report.xml: no root element; expected <testsuites> or <testsuite>"
    );
}

#[test]
fn gotest_counts_tests_subtests_and_package_failures() {
    let r = gotest::parse(&fixture("gotest.json")[..], &Options::default()).unwrap();
    assert_eq!(
        (r.total, r.passed, r.failed, r.errors, r.skipped),
        (5, 1, 2, 1, 1)
    );
    let names: Vec<&str> = r.failures.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "TestOrders/empty",
            "TestOrders",
            "example.com/svc/internal/broken"
        ]
    );
    assert_eq!(
        r.failures[0].message,
        "    orders_test.go:21: got 3 orders, want 0"
    );
    assert_eq!(r.failures[0].suite, "example.com/svc");
    let build = &r.failures[2];
    assert_eq!(build.kind, FailureKind::Error);
    assert!(build.message.contains("syntax error"), "{}", build.message);
}

#[test]
fn gotest_package_failure_without_failed_tests_is_an_error() {
    let input = r#"{"Action":"start","Package":"p"}
{"Action":"output","Package":"p","Output":"panic: init failed\n"}
{"Action":"output","Package":"p","Output":"FAIL\tp\t0.01s\n"}
{"Action":"fail","Package":"p","Elapsed":0.01}
"#;
    let r = gotest::parse(input.as_bytes(), &Options::default()).unwrap();
    assert_eq!((r.total, r.errors), (1, 1));
    assert!(r.failures[0].message.starts_with("panic: init failed"));
}

#[test]
fn gotest_old_build_errors_on_stderr_are_kept() {
    let input = "# p\n./a.go:1:1: expected 'package'\n{\"Action\":\"output\",\"Package\":\"p\",\"Output\":\"FAIL\\tp [build failed]\\n\"}\n{\"Action\":\"fail\",\"Package\":\"p\",\"Elapsed\":0}\n";
    let r = gotest::parse(input.as_bytes(), &Options::default()).unwrap();
    assert_eq!(r.errors, 1);
    assert!(
        r.failures[0].message.contains("expected 'package'"),
        "{}",
        r.failures[0].message
    );
}

#[test]
fn gotest_rejects_a_broken_event_with_its_line() {
    let input = "{\"Action\":\"run\",\"Package\":\"p\",\"Test\":\"T\"}\n{\"Action\": 3}\n";
    let e = gotest::parse(input.as_bytes(), &Options::default()).unwrap_err();
    assert!(e.to_string().starts_with("2:"), "{e}");
    assert!(
        e.with_file("test.json").starts_with("test.json:2:"),
        "{}",
        e.with_file("test.json")
    );
    assert!(e.to_string().contains("not a `go test -json` event"), "{e}");
}
