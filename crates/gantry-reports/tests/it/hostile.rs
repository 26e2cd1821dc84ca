//! Broken and hostile reports: entity expansion, external entities, size limits, corrupt bytes.

use gantry_reports::{
    Error, Options, cobertura, codequality, gocover, gotest, junit, lcov, sarif, security,
};

const BILLION_LAUGHS: &str = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
"#;

fn invalid(e: &Error) -> &str {
    match e {
        Error::Invalid { message, .. } => message,
        other => panic!("expected an invalid-report error, got {other}"),
    }
}

#[test]
fn billion_laughs_is_never_expanded() {
    let in_text = format!(
        "{BILLION_LAUGHS}<testsuite name=\"s\"><testcase name=\"a\"><failure>&lol9;</failure></testcase></testsuite>"
    );
    let e = junit::parse(in_text.as_bytes(), &Options::default()).unwrap_err();
    assert!(invalid(&e).starts_with("undefined entity `&lol9;`"), "{e}");
    let in_attr =
        format!("{BILLION_LAUGHS}<testsuite name=\"&lol9;\"><testcase name=\"a\"/></testsuite>");
    let e = junit::parse(in_attr.as_bytes(), &Options::default()).unwrap_err();
    assert!(invalid(&e).starts_with("undefined entity `&lol9;`"), "{e}");
    // Declared but never referenced: the DTD is skipped unread, and the report reads normally.
    let unused =
        format!("{BILLION_LAUGHS}<testsuite name=\"s\"><testcase name=\"a\"/></testsuite>");
    assert_eq!(
        junit::parse(unused.as_bytes(), &Options::default())
            .unwrap()
            .total,
        1
    );
}

#[test]
fn external_entities_are_never_read() {
    let xxe = r#"<?xml version="1.0"?>
<!DOCTYPE testsuite [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<testsuite name="s"><testcase name="a"><failure message="&xxe;">&xxe;</failure></testcase></testsuite>"#;
    let e = junit::parse(xxe.as_bytes(), &Options::default()).unwrap_err();
    assert!(invalid(&e).starts_with("undefined entity `&xxe;`"), "{e}");
    assert!(!e.to_string().contains("root:"), "{e}");
    let in_source = r#"<!DOCTYPE coverage [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<coverage><sources><source>&xxe;</source></sources></coverage>"#;
    let e = cobertura::parse(in_source.as_bytes(), &Options::default()).unwrap_err();
    assert!(invalid(&e).starts_with("undefined entity `&xxe;`"), "{e}");
    // Predefined entities and character references still work.
    let ok = r#"<testsuite><testcase name="a&amp;b&#x21;"><failure>x &lt; y&#33;</failure></testcase></testsuite>"#;
    let r = junit::parse(ok.as_bytes(), &Options::default()).unwrap();
    assert_eq!(r.failures[0].name, "a&b!");
    assert_eq!(r.failures[0].message, "x < y!");
}

#[test]
fn every_parser_stops_at_the_size_limit() {
    let small = Options {
        max_bytes: 1024,
        ..Options::default()
    };
    let junit_big = format!(
        "<testsuite>{}</testsuite>",
        "<testcase name=\"a\"/>".repeat(100)
    );
    let cob_big = format!("<coverage>{}</coverage>", "<!-- padding -->".repeat(100));
    let lcov_big = format!("SF:a\n{}end_of_record\n", "DA:1,1\n".repeat(200));
    let go_big = format!("mode: set\n{}", "m/a.go:1.1,2.2 1 1\n".repeat(100));
    let gotest_big = "{\"Action\":\"start\",\"Package\":\"p\"}\n".repeat(50);
    let sarif_big = format!("{{\"runs\":[{{\"results\":[{}{{}}]}}]}}", "{},".repeat(500));
    let sec_big = format!("{{\"vulnerabilities\":[{}{{}}]}}", "{},".repeat(500));
    let cq_big = format!("[{}{{}}]", "{},".repeat(500));
    let results: Vec<(&str, Result<(), Error>)> = vec![
        (
            "junit",
            junit::parse(junit_big.as_bytes(), &small).map(drop),
        ),
        (
            "cobertura",
            cobertura::parse(cob_big.as_bytes(), &small).map(drop),
        ),
        ("lcov", lcov::parse(lcov_big.as_bytes(), &small).map(drop)),
        (
            "gocover",
            gocover::parse(go_big.as_bytes(), &small).map(drop),
        ),
        (
            "gotest",
            gotest::parse(gotest_big.as_bytes(), &small).map(drop),
        ),
        (
            "sarif",
            sarif::parse(sarif_big.as_bytes(), &small).map(drop),
        ),
        (
            "security",
            security::parse(sec_big.as_bytes(), &small).map(drop),
        ),
        (
            "codequality",
            codequality::parse(cq_big.as_bytes(), &small).map(drop),
        ),
    ];
    for (name, r) in results {
        match r {
            Err(Error::TooLarge { limit: 1024 }) => {}
            other => panic!("{name}: expected the size limit, got {other:?}"),
        }
    }
    // The same reports under the default limit read fine.
    assert!(junit::parse(junit_big.as_bytes(), &Options::default()).is_ok());
    assert!(sarif::parse(sarif_big.as_bytes(), &Options::default()).is_ok());
}

#[test]
fn the_limit_error_names_the_limit() {
    assert_eq!(Options::default().max_bytes, 50 * 1024 * 1024);
    let e = Error::TooLarge {
        limit: 50 * 1024 * 1024,
    };
    assert_eq!(
        e.with_file("junit.xml"),
        "junit.xml: the report is larger than the limit of 50 MB (52428800 bytes)"
    );
    let exact = "<testsuite/>";
    let o = Options {
        max_bytes: exact.len() as u64,
        ..Options::default()
    };
    assert!(
        junit::parse(exact.as_bytes(), &o).is_ok(),
        "a report of exactly the limit is fine"
    );
}

#[test]
fn corrupt_input_is_a_clear_error() {
    let e = lcov::parse(
        &b"SF:a\nDA:1,\xff\xfe\nend_of_record\n"[..],
        &Options::default(),
    )
    .unwrap_err();
    assert_eq!(e.with_file("lcov.info"), "lcov.info:2: not valid UTF-8");
    let e = security::parse(
        &b"{\"vulnerabilities\": [ {\"severity\": \"High\"}"[..],
        &Options::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("EOF while parsing"), "{e}");
    let e = junit::parse(&b"\x00\x01\x02 not xml"[..], &Options::default()).unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    let e = cobertura::parse(&b"<coverage><packages>"[..], &Options::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("the document ends inside <coverage>"),
        "{e}"
    );
}

/// Test counts merged from what agents send saturate instead of overflowing.
#[test]
fn huge_test_counts_saturate_when_merged() {
    let huge = gantry_reports::TestReport {
        total: u64::MAX,
        failed: u64::MAX,
        errors: 1,
        ..Default::default()
    };
    let mut all = huge.clone();
    all.merge(&huge);
    assert_eq!((all.total, all.failed), (u64::MAX, u64::MAX));
    assert_eq!(all.failed_or_errored(), u64::MAX);
}
