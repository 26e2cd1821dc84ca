use gantry_reports::coverage::Block;
use gantry_reports::{Coverage, Options, cobertura, gocover, lcov};

use crate::{fixture, strip};

#[test]
fn cobertura_lines_branches_and_sources() {
    let c = cobertura::parse(&fixture("cobertura.xml")[..], &strip("/builds/group/app")).unwrap();
    let paths: Vec<&str> = c.files.keys().map(String::as_str).collect();
    assert_eq!(paths, ["src/shop/cart.py", "src/shop/util.py"]);
    let cart = &c.files["src/shop/cart.py"];
    assert_eq!(cart.lines, [(1, 1), (3, 5), (4, 5), (6, 0)]);
    assert_eq!(
        cart.branches,
        [(3, 1, 2)],
        "the <methods> copy is not counted twice"
    );
    assert_eq!(c.percent(), Some(66.67));
    assert_eq!(c.branch_percent(), Some(50.0));
    let plain = cobertura::parse(&fixture("cobertura.xml")[..], &Options::default()).unwrap();
    assert!(plain.files.contains_key("shop/cart.py"));
}

#[test]
fn cobertura_rejects_bad_numbers_and_other_roots() {
    let e = cobertura::parse(
        &br#"<coverage><packages><package><classes><class filename="a.py"><lines><line number="x" hits="1"/></lines></class></classes></package></packages></coverage>"#[..],
        &Options::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("<line> has a bad number `x`"), "{e}");
    let e = cobertura::parse(&b"<testsuite/>"[..], &Options::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("expected <coverage> as the root element"),
        "{e}"
    );
}

#[test]
fn lcov_records() {
    let c = lcov::parse(&fixture("coverage.lcov")[..], &strip("/builds/group/app/")).unwrap();
    let index = &c.files["src/index.js"];
    assert_eq!(index.lines, [(1, 3), (2, 3), (4, 0), (5, 0)]);
    assert_eq!(
        index.branches,
        [(2, 1, 2)],
        "BRDA lines sum per line; `-` is not taken"
    );
    let lib = &c.files["src/lib.js"];
    assert_eq!(
        lib.branch_totals,
        Some((3, 4)),
        "BRH/BRF when there is no BRDA"
    );
    assert_eq!(c.percent(), Some(50.0));
    assert_eq!(c.branch_percent(), Some(66.67));
}

#[test]
fn lcov_rejects_broken_records_with_their_line() {
    for (input, want) in [
        ("DA:1,1\n", "1: DA: outside a record (no SF: before it)"),
        (
            "SF:a\nDA:x,1\nend_of_record\n",
            "2: DA: bad line number `x`",
        ),
        (
            "SF:a\nDA:1,1\n",
            "2: the file ends inside a record (missing end_of_record)",
        ),
        (
            "SF:a\nSF:b\n",
            "2: SF: inside a record (missing end_of_record)",
        ),
        (
            "SF:a\ngarbage\n",
            "2: expected `KEY:VALUE`, found `garbage`",
        ),
        ("", "empty lcov file"),
    ] {
        let e = lcov::parse(input.as_bytes(), &Options::default()).unwrap_err();
        assert_eq!(e.to_string(), want, "{input:?}");
    }
}

#[test]
fn go_cover_profile_statements_and_lines() {
    let c = gocover::parse(&fixture("cover.out")[..], &strip("example.com/svc")).unwrap();
    let main = &c.files["main.go"];
    assert_eq!(main.blocks.len(), 4, "the repeated block is merged");
    assert_eq!(
        main.blocks[0],
        Block {
            start: (10, 13),
            end: (12, 2),
            statements: 1,
            count: 1
        },
        "set mode: covered by either copy"
    );
    assert_eq!(
        main.lines,
        [
            (10, 1),
            (11, 1),
            (12, 1),
            (14, 1),
            (15, 1),
            (16, 0),
            (17, 0),
            (18, 1)
        ],
        "line 15 is in a covered and an uncovered block: covered"
    );
    assert_eq!(c.files["internal/store/store.go"].counts(), (0, 2));
    // `go tool cover -func` total: 3 of 6 statements.
    assert_eq!(c.percent(), Some(50.0));
}

#[test]
fn go_cover_count_mode_adds_repeated_blocks() {
    let input = "mode: count\nm/a.go:1.1,2.2 3 2\nm/a.go:1.1,2.2 3 5\n";
    let c = gocover::parse(input.as_bytes(), &Options::default()).unwrap();
    assert_eq!(c.files["m/a.go"].blocks[0].count, 7);
}

#[test]
fn go_cover_rejects_bad_profiles_with_their_line() {
    for (input, want) in [
        (
            "m/a.go:1.1,2.2 1 1\n",
            "1: expected `mode: set|count|atomic` first",
        ),
        (
            "mode: sometimes\n",
            "1: unknown mode `sometimes`; expected set, count or atomic",
        ),
        (
            "mode: set\nm/a.go:1.1 1 1\n",
            "2: expected `FILE:LINE.COL,LINE.COL STATEMENTS COUNT`, found `m/a.go:1.1 1 1`",
        ),
        (
            "mode: set\nmode: count\n",
            "2: mode `count` differs from the first mode `set`",
        ),
        (
            "mode: set\nm/a.go:1.1,2.2 1 1\nm/a.go:1.1,2.2 2 1\n",
            "3: block m/a.go:1.1 has 2 statements here but 1 before",
        ),
        (
            "",
            "empty cover profile; expected `mode: set|count|atomic` first",
        ),
    ] {
        let e = gocover::parse(input.as_bytes(), &Options::default()).unwrap_err();
        assert_eq!(e.to_string(), want, "{input:?}");
    }
}

#[test]
fn coverage_merges_per_file_and_line_by_max_hits() {
    let a = lcov::parse(
        "SF:a.js\nDA:1,0\nDA:2,4\nend_of_record\n".as_bytes(),
        &Options::default(),
    )
    .unwrap();
    let b = lcov::parse(
        "SF:a.js\nDA:1,2\nDA:2,1\nDA:3,0\nend_of_record\nSF:b.js\nDA:1,0\nend_of_record\n"
            .as_bytes(),
        &Options::default(),
    )
    .unwrap();
    let mut m = Coverage::default();
    m.merge(&a);
    m.merge(&b);
    assert_eq!(m.files["a.js"].lines, [(1, 2), (2, 4), (3, 0)]);
    assert_eq!(m.files["b.js"].lines, [(1, 0)]);
    assert_eq!(m.counts(), (2, 4));
    // Go blocks merge the same way.
    let g1 = gocover::parse(
        "mode: set\nm/a.go:1.1,2.2 1 0\n".as_bytes(),
        &Options::default(),
    )
    .unwrap();
    let g2 = gocover::parse(
        "mode: set\nm/a.go:1.1,2.2 1 1\nm/a.go:3.1,3.9 1 0\n".as_bytes(),
        &Options::default(),
    )
    .unwrap();
    let mut g = g1.clone();
    g.merge(&g2);
    assert_eq!(g.counts(), (1, 2));
    assert_eq!(g.files["m/a.go"].lines, [(1, 1), (2, 1), (3, 0)]);
    let json = serde_json::to_string(&g).unwrap();
    assert_eq!(serde_json::from_str::<Coverage>(&json).unwrap(), g);
}
