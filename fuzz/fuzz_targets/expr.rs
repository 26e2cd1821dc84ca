//! Arbitrary bytes into the `rules:if` parser; whatever parses is evaluated twice (against a few fixed
//! variables, and with every variable set to the input itself, which exercises regexes compiled from
//! variable values at evaluation time) and asked for its variables.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn fixed(name: &str) -> Option<String> {
    let v = match name {
        "CI_COMMIT_BRANCH" | "CI_COMMIT_REF_NAME" | "CI_DEFAULT_BRANCH" => "main",
        "CI_PIPELINE_SOURCE" => "push",
        "CI_COMMIT_TAG" => "v1.2.3",
        "CI_COMMIT_MESSAGE" => "Fix the build [skip tests]\n\nLonger body.",
        "EMPTY" => "",
        "PATTERN" => "/^release-\\d+$/i",
        "BAD_PATTERN" => "/[unclosed/",
        "A" | "VAR" => "value",
        _ => return None,
    };
    Some(v.to_string())
}

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(expr) = gantry_pipeline::expr::parse(src) else {
        return;
    };
    let _ = expr.eval(&fixed);
    let _ = expr.eval(&|_: &str| Some(src.to_string()));
    let _ = expr.eval(&|_: &str| None);
    let names = expr.variables();
    for (i, n) in names.iter().enumerate() {
        assert!(
            !names[..i].contains(n),
            "variables() lists `{n}` twice: {names:?}"
        );
    }
});
