//! Every error names the file, line and column of the offending key, and says what is wrong.

use crate::{Remotes, compile_files, compile_one};

/// The errors of compiling `src`, as `FILE:LINE:COLUMN: message`.
fn errors(src: &str) -> Vec<String> {
    crate::errors(&compile_one(src))
}

fn assert_error(src: &str, expected: &str) {
    crate::assert_error(&compile_one(src), expected);
}

/// Asserts that `src` has an error that starts with `at` and contains `part`.
#[track_caller]
fn assert_error_at(src: &str, at: &str, part: &str) {
    assert_any(&errors(src), |e| e.starts_with(at) && e.contains(part));
}

/// Asserts that one of `errs` passes `test`; a failure lists them all.
#[track_caller]
fn assert_any(errs: &[String], test: impl Fn(&str) -> bool) {
    assert!(errs.iter().any(|e| test(e)), "{errs:#?}");
}

#[test]
fn unknown_keyword_with_did_you_mean() {
    assert_error(
        "job:\n  stage: test\n  scirpt: [echo]\n  script: [echo]\n",
        ".gitlab-ci.yml:3:3: `job`: unknown keyword `scirpt`; did you mean `script`?",
    );
}

#[test]
fn needs_naming_a_missing_job() {
    assert_error(
        "build:\n  script: [make]\ntest:\n  needs: [biuld]\n  script: [make test]\n",
        ".gitlab-ci.yml:4:11: `test` needs `biuld`, which is not a job of this pipeline; did you mean `build`?",
    );
}

#[test]
fn needs_cycle() {
    let errs = errors("a:\n  needs: [b]\n  script: [x]\nb:\n  needs: [a]\n  script: [x]\n");
    assert_any(&errs, |e| {
        e.contains("`needs` cycle: ") && e.contains("a -> b -> a") || e.contains("b -> a -> b")
    });
    assert_any(&errs, |e| {
        e.starts_with(".gitlab-ci.yml:") && e.contains("cycle")
    });
}

#[test]
fn bad_regex_in_rules_if() {
    assert_error_at(
        "job:\n  script: [x]\n  rules:\n    - if: $A =~ /[unclosed/\n",
        ".gitlab-ci.yml:4:",
        "invalid `rules:if` expression",
    );
}

#[test]
fn stage_not_in_stages() {
    assert_error(
        "stages: [build, test]\njob:\n  stage: deplyo\n  script: [x]\n",
        ".gitlab-ci.yml:3:3: `job`: stage `deplyo` is not defined in `stages` (.pre, build, test, .post)",
    );
}

#[test]
fn duplicate_key_is_a_warning_and_the_last_value_wins() {
    let c = compile_one("job:\n  script: [echo one]\n  script: [echo two]\n");
    let warn: Vec<String> = c.diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(
        warn,
        [".gitlab-ci.yml:3:3: warning: duplicate key `script`: the last value wins"]
    );
    assert_eq!(c.plan.unwrap().jobs[0].script, ["echo two"]);
}

#[test]
fn malformed_yaml() {
    let errs = errors("job:\n  script: [echo\n  stage: x\n");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with(".gitlab-ci.yml:") && errs[0].contains("invalid YAML"),
        "{errs:#?}"
    );
}

#[test]
fn missing_local_include() {
    assert_error(
        "include:\n  - local: ci/missing.yml\njob:\n  script: [x]\n",
        ".gitlab-ci.yml:2:5: local include `ci/missing.yml` not found: no such file",
    );
}

#[test]
fn remote_include_is_not_available_offline() {
    let errs = errors(
        "include:\n  - remote: https://example.com/ci.yml\n  - project: group/p\n    file: ci.yml\njob:\n  script: [x]\n",
    );
    assert_any(&errs, |e| {
        e.contains("`include:remote` `https://example.com/ci.yml` is not available offline")
    });
    assert_any(&errs, |e| {
        e.contains("`include:project` `group/p` file `ci.yml` is not available offline")
    });
}

#[test]
fn remote_include_from_the_cache() {
    let (c, _) = Remotes::new(
        &[(".gitlab-ci.yml", "include: https://example.com/ci.yml\n")],
        vec![(
            "remote:https://example.com/ci.yml",
            "remote-job:\n  script: [echo remote]\n",
        )],
    )
    .compile();
    assert_eq!(c.plan.unwrap().jobs[0].name, "remote-job");
}

#[test]
fn include_project_with_a_list_of_files_includes_each() {
    let (c, asked) = Remotes::new(&[(".gitlab-ci.yml", "include:\n  - project: group/p\n    ref: v1\n    file: [/a.yml, b.yml]\njob:\n  extends: .b\n")], vec![
            ("project:group/p@v1:/a.yml", "a:\n  script: [echo a]\n"),
            ("project:group/p@v1:b.yml", ".b:\n  script: [echo b]\n"),
        ]).compile();
    let errs: Vec<String> = c.errors().map(ToString::to_string).collect();
    assert!(errs.is_empty(), "{errs:#?}");
    let names: Vec<String> = c
        .plan
        .unwrap()
        .jobs
        .iter()
        .map(|j| j.name.clone())
        .collect();
    assert_eq!(names, ["a", "job"]);
    assert_eq!(
        asked,
        ["project:group/p@v1:/a.yml", "project:group/p@v1:b.yml"]
    );
}

#[test]
fn include_project_with_a_missing_file_in_a_list_is_one_error() {
    let (c, _) = Remotes::new(&[(".gitlab-ci.yml", "include:\n  - project: group/p\n    file:\n      - a.yml\n      - b.yml\njob:\n  extends: .a\n")], vec![("project:group/p@HEAD:a.yml", ".a:\n  script: [echo a]\n")]).compile();
    let errs: Vec<String> = c.errors().map(ToString::to_string).collect();
    assert_eq!(
        errs,
        [
            ".gitlab-ci.yml:5:9: `include:project` `group/p` file `b.yml` is not available offline: it is not in the local include cache"
        ]
    );
}

#[test]
fn include_project_file_must_be_a_string_or_a_list_of_strings() {
    let errs = errors("include:\n  - project: group/p\n    file: {a: 1}\njob:\n  script: [x]\n");
    assert_eq!(
        errs,
        [".gitlab-ci.yml:3:11: `include:file` must be a string or a list of strings"]
    );
    let errs = errors("include:\n  - project: group/p\njob:\n  script: [x]\n");
    assert_eq!(
        errs,
        [".gitlab-ci.yml:2:5: `include:project` needs a `file`"]
    );
}

#[test]
fn remote_include_unavailable_says_why() {
    let mut s = Remotes::new(
        &[(
            ".gitlab-ci.yml",
            "job:\n  script: [x]\ninclude:\n  - remote: https://example.com/ci.yml\n",
        )],
        Vec::new(),
    );
    s.unavailable = vec![(
        "remote:https://example.com/ci.yml",
        "cannot be fetched: connection refused",
    )];
    let (c, _) = s.compile();
    let errs: Vec<String> = c.errors().map(ToString::to_string).collect();
    assert_eq!(
        errs,
        [
            ".gitlab-ci.yml:4:5: `include:remote` `https://example.com/ci.yml`: cannot be fetched: connection refused"
        ]
    );
}

#[test]
fn extends_unknown_and_circular() {
    let errs = errors(
        "a:\n  extends: .missing\n  script: [x]\nb:\n  extends: c\n  script: [x]\nc:\n  extends: b\n  script: [x]\n",
    );
    assert_any(&errs, |e| {
        e == ".gitlab-ci.yml:2:12: `a`: unknown key `.missing` in `extends`"
    });
    assert_any(&errs, |e| {
        e.contains("circular dependency detected in `extends`")
    });
}

#[test]
fn extends_deeper_than_eleven_levels() {
    let mut src = String::from(".l0:\n  script: [x]\n");
    for i in 1..=12 {
        src.push_str(&format!(".l{i}:\n  extends: .l{}\n", i - 1));
    }
    src.push_str("job:\n  extends: .l12\n");
    assert!(
        errors(&src)
            .iter()
            .any(|e| e.contains("nests deeper than 11 levels"))
    );
}

#[test]
fn reference_to_itself() {
    assert_error_at(
        "job:\n  script:\n    - !reference [job, script]\n",
        ".gitlab-ci.yml:3:7:",
        "refers to itself",
    );
}

#[test]
fn errors_in_included_files_name_that_file() {
    let c = compile_files(
        &[
            (".gitlab-ci.yml", "include: ci/jobs.yml\n"),
            ("ci/jobs.yml", "job:\n  script: [x]\n  wehn: manual\n"),
        ],
        |_| {},
    );
    let errs: Vec<String> = c.errors().map(ToString::to_string).collect();
    assert_eq!(
        errs,
        ["ci/jobs.yml:3:3: `job`: unknown keyword `wehn`; did you mean `when`?"]
    );
}

#[test]
fn bad_values() {
    let errs = errors(
        "job:\n  script: [x]\n  when: sometimes\n  retry: 5\n  timeout: soon\n  parallel: 500\n  allow_failure: maybe\n  cache:\n    key: a/b\n",
    );
    for want in [
        ".gitlab-ci.yml:3:9: `job`: unknown `when` value `sometimes`",
        ".gitlab-ci.yml:4:10: `job`: `retry` must be 0, 1 or 2",
        ".gitlab-ci.yml:5:12: `job`: invalid `timeout`: `soon` is not a duration",
        ".gitlab-ci.yml:6:13: `job`: `parallel` must be between 1 and 200",
        ".gitlab-ci.yml:7:18: `job`: `allow_failure` must be a boolean or `{exit_codes: [...]}`",
        ".gitlab-ci.yml:9:10: `job`: `cache:key` cannot contain `/` or be `.` or `..`",
    ] {
        assert!(
            errs.iter().any(|e| e == want),
            "expected `{want}` in {errs:#?}"
        );
    }
}

#[test]
fn unknown_artifacts_and_cache_when_values() {
    let errs = errors(
        "job:\n  script: [x]\n  artifacts:\n    paths: [a]\n    when: sometimes\n  cache:\n    key: k\n    when: later\n",
    );
    assert_eq!(
        errs,
        [
            ".gitlab-ci.yml:4:5: `job`: unknown `artifacts:when` value `sometimes`",
            ".gitlab-ci.yml:7:5: `job`: unknown `cache:when` value `later`",
        ]
    );
}

#[test]
fn needs_entries_must_be_names_or_mappings() {
    let errs = errors(
        "a:\n  script: [x]\nb:\n  needs:\n    - ~\n  script: [x]\nc:\n  needs: a\n  script: [x]\n",
    );
    assert_any(&errs, |e| {
        e.starts_with(".gitlab-ci.yml:5:7:") && e.contains("not null")
    });
    assert_any(&errs, |e| {
        e.starts_with(".gitlab-ci.yml:8:10:") && e.contains("`needs` must be an array")
    });
}

#[test]
fn a_job_must_be_a_mapping_with_a_script() {
    let errs = errors("stagse: [a]\nempty:\n  stage: test\n");
    assert_any(&errs, |e| {
        e.contains("`stagse` is not a keyword") && e.contains("did you mean `stages`?")
    });
    assert_any(&errs, |e| e.contains("`empty`: a job needs `script`"));
}

#[test]
fn gate_unknown_metric_at_its_key() {
    assert_error(
        "gate:\n  gate:\n    coverge: \">= 75\"\n",
        ".gitlab-ci.yml:3:5: `gate`: unknown gate metric `coverge`; did you mean `coverage`?",
    );
    assert_error_at(
        "gate:\n  gate:\n    speed: \"> 1\"\n",
        ".gitlab-ci.yml:3:5: `gate`: unknown gate metric `speed`; known metrics: coverage, new_coverage,",
        "codequality_info",
    );
}

#[test]
fn gate_malformed_condition_at_its_value() {
    assert_error_at(
        "gate:\n  gate:\n    coverage: \"75\"\n",
        ".gitlab-ci.yml:3:15: `gate`: malformed gate condition `75` for coverage: no operator;",
        "expected `OPERATOR NUMBER`",
    );
    assert_error_at(
        "gate:\n  gate:\n    tests_failed: \"== none\"\n",
        ".gitlab-ci.yml:3:19: `gate`: malformed gate condition `== none`",
        "`none` is not a number",
    );
    assert_error(
        "gate:\n  gate:\n    tests_failed: 0\n",
        ".gitlab-ci.yml:3:19: `gate`: gate condition `tests_failed` must be a string such as \">= 80\", not a number",
    );
}

#[test]
fn gate_must_be_a_non_empty_mapping() {
    assert_error(
        "gate:\n  gate: [coverage]\n",
        ".gitlab-ci.yml:2:9: `gate`: `gate` must be a mapping of metric to condition (for example `coverage: \">= 80\"`), not an array",
    );
    assert_error(
        "gate:\n  gate: {}\n",
        ".gitlab-ci.yml:2:9: `gate`: `gate` needs at least one condition",
    );
}

#[test]
fn a_gate_job_needs_no_script_but_an_empty_job_still_does() {
    assert!(errors("gate:\n  gate:\n    tests_failed: \"== 0\"\n").is_empty());
    let errs = errors("gate:\n  stage: test\n");
    assert_any(&errs, |e| e.contains("`gate`: a job needs `script`"));
}

#[test]
fn coverage_report_needs_a_known_format_and_a_path() {
    let job = |body: &str| {
        format!("t:\n  script: [x]\n  artifacts:\n    reports:\n      coverage_report:\n{body}")
    };
    assert_error(
        &job("        coverage_format: clover\n        path: c.xml\n"),
        ".gitlab-ci.yml:6:26: `t`: `artifacts:reports:coverage_report:coverage_format` must be `cobertura` or `jacoco`",
    );
    assert_error(
        &job("        coverage_format: cobertura\n"),
        ".gitlab-ci.yml:6:9: `t`: `artifacts:reports:coverage_report` needs `path`",
    );
    assert_error(
        &job("        coverage_format: cobertura\n        path: c.xml\n        paths: [x]\n"),
        ".gitlab-ci.yml:8:9: `t`: unknown `artifacts:reports:coverage_report` keyword `paths`; did you mean `path`?",
    );
    assert_error(
        "t:\n  script: [x]\n  artifacts:\n    reports:\n      coverage_report: c.xml\n",
        ".gitlab-ci.yml:5:24: `t`: `artifacts:reports:coverage_report` must be a mapping with `coverage_format` and `path`, not a string",
    );
}
