//! `include`: `include:local` wildcards, the limit on included files, and `include:rules`, as GitLab's
//! "Use CI/CD configuration from other files" documentation describes them.

use gantry_pipeline::Compiled;
use gantry_pipeline::plan::Variable;

use crate::{Remotes, compile_changed, compile_files, errors};

/// The job names of a pipeline that compiled without errors.
fn jobs(c: &Compiled) -> Vec<String> {
    let errs = errors(c);
    assert!(errs.is_empty(), "unexpected errors: {errs:#?}");
    let mut names: Vec<String> = c
        .plan
        .as_ref()
        .expect("a plan")
        .jobs
        .iter()
        .map(|j| j.name.clone())
        .collect();
    names.sort();
    names
}

fn job_file(name: &str) -> String {
    format!("{name}:\n  script: [echo {name}]\n")
}

// --- wildcards --------------------------------------------------------------------------------

fn wildcard(pattern: &str) -> Compiled {
    let main = format!("include: '{pattern}'\nmain:\n  script: [echo main]\n");
    let (a, b, c, d) = (job_file("a"), job_file("b"), job_file("c"), job_file("d"));
    compile_files(
        &[
            (".gitlab-ci.yml", &main),
            ("configs/a.yml", &a),
            ("configs/sub/b.yml", &b),
            ("configs/sub/deep/c.yml", &c),
            ("other/d.yml", &d),
            ("configs/notes.txt", "not yaml"),
        ],
        |_| {},
    )
}

#[test]
fn one_star_matches_only_the_directory() {
    assert_eq!(jobs(&wildcard("configs/*.yml")), ["a", "main"]);
    assert_eq!(jobs(&wildcard("/configs/*.yml")), ["a", "main"]);
}

#[test]
fn two_stars_match_the_directory_and_every_subdirectory() {
    assert_eq!(jobs(&wildcard("configs/**.yml")), ["a", "b", "c", "main"]);
}

#[test]
fn two_stars_and_a_slash_match_only_subdirectories() {
    assert_eq!(jobs(&wildcard("configs/**/*.yml")), ["b", "c", "main"]);
}

#[test]
fn a_wildcard_that_matches_nothing_includes_nothing() {
    assert_eq!(jobs(&wildcard("nowhere/*.yml")), ["main"]);
}

// --- limits -----------------------------------------------------------------------------------

fn many_files(n: usize, nested: bool) -> Vec<(String, String)> {
    let mut files = Vec::new();
    if nested {
        files.push((
            ".gitlab-ci.yml".to_string(),
            "include: f0.yml\n".to_string(),
        ));
        for i in 0..n {
            let next = if i + 1 < n {
                format!("include: f{}.yml\n", i + 1)
            } else {
                String::new()
            };
            files.push((
                format!("f{i}.yml"),
                format!("{next}{}", job_file(&format!("j{i}"))),
            ));
        }
    } else {
        let list: String = (0..n).map(|i| format!("  - f{i}.yml\n")).collect();
        files.push((".gitlab-ci.yml".to_string(), format!("include:\n{list}")));
        for i in 0..n {
            files.push((format!("f{i}.yml"), job_file(&format!("j{i}"))));
        }
    }
    files
}

fn compile_owned(files: &[(String, String)]) -> Compiled {
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    compile_files(&refs, |_| {})
}

#[test]
fn up_to_150_includes_are_accepted() {
    assert_eq!(jobs(&compile_owned(&many_files(150, false))).len(), 150);
}

#[test]
fn nested_includes_count_and_may_nest_as_deep_as_the_limit() {
    assert_eq!(jobs(&compile_owned(&many_files(150, true))).len(), 150);
}

#[test]
fn the_151st_include_is_an_error_at_its_position() {
    let errs = errors(&compile_owned(&many_files(151, false)));
    assert_eq!(
        errs,
        [".gitlab-ci.yml:152:5: maximum of 150 nested includes are allowed"]
    );
    let errs = errors(&compile_owned(&many_files(151, true)));
    assert_eq!(
        errs,
        ["f149.yml:1:10: maximum of 150 nested includes are allowed"]
    );
}

#[test]
fn repeated_includes_count_and_the_last_one_wins() {
    let c = compile_files(
        &[
            (
                ".gitlab-ci.yml",
                "include:\n  - defaults.yml\n  - unit.yml\n  - smoke.yml\n",
            ),
            (
                "defaults.yml",
                "default:\n  before_script: [echo default]\n",
            ),
            (
                "unit.yml",
                "include: defaults.yml\ndefault:\n  before_script: [echo unit]\nunit:\n  script: [unit]\n",
            ),
            (
                "smoke.yml",
                "include: defaults.yml\ndefault:\n  before_script: [echo smoke]\nsmoke:\n  script: [smoke]\n",
            ),
        ],
        |_| {},
    );
    let plan = c.plan.as_ref().expect("a plan");
    for j in &plan.jobs {
        assert_eq!(j.before_script, ["echo smoke"], "{}", j.name);
    }
    let list: String = (0..151).map(|_| "  - a.yml\n").collect();
    let errs = errors(&compile_files(
        &[
            (".gitlab-ci.yml", &format!("include:\n{list}")),
            ("a.yml", &job_file("a")),
        ],
        |_| {},
    ));
    assert_eq!(
        errs,
        [".gitlab-ci.yml:152:5: maximum of 150 nested includes are allowed"]
    );
}

#[test]
fn an_include_loop_reaches_the_limit_and_says_so() {
    let errs = errors(&compile_files(
        &[
            (".gitlab-ci.yml", "include: a.yml\n"),
            ("a.yml", "include: b.yml\na:\n  script: [a]\n"),
            ("b.yml", "include: a.yml\nb:\n  script: [b]\n"),
        ],
        |_| {},
    ));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with("b.yml:1:10: maximum of 150 nested includes are allowed")
            && errs[0].contains("`a.yml` includes itself: a.yml -> b.yml -> a.yml"),
        "{errs:#?}"
    );
}

// --- rules ------------------------------------------------------------------------------------

fn with_rules(rules: &str) -> Compiled {
    with_rules_in(rules, None, |_| {})
}

fn with_rules_in(
    rules: &str,
    changed: Option<&[&str]>,
    tweak: impl FnOnce(&mut gantry_pipeline::Context),
) -> Compiled {
    let main = format!(
        "variables:\n  GLOBAL: 'yes'\ninclude:\n  - local: extra.yml\n    rules:\n{rules}main:\n  script: [echo main]\n"
    );
    compile_changed(
        &[
            (".gitlab-ci.yml", &main),
            ("extra.yml", &job_file("extra")),
            ("docs/file.md", "hello"),
            ("api.md", "hello"),
        ],
        changed,
        tweak,
    )
}

fn included(c: &Compiled) -> bool {
    jobs(c).contains(&"extra".to_string())
}

#[test]
fn rules_if_sees_predefined_and_cli_variables_but_not_global_ones() {
    assert!(included(&with_rules(
        "      - if: $CI_COMMIT_BRANCH == \"main\"\n"
    )));
    assert!(!included(&with_rules(
        "      - if: $CI_COMMIT_BRANCH == \"dev\"\n"
    )));
    assert!(!included(&with_rules("      - if: $GLOBAL == \"yes\"\n")));
    let c = with_rules_in("      - if: $INCLUDE == \"true\"\n", None, |ctx| {
        ctx.cli_variables.push(Variable::new("INCLUDE", "true"));
    });
    assert!(included(&c));
}

#[test]
fn no_matching_rule_means_not_included_and_the_first_match_decides() {
    assert!(!included(&with_rules("      - if: $NOPE\n")));
    let never_first = "      - if: $CI_COMMIT_BRANCH\n        when: never\n      - when: always\n";
    assert!(!included(&with_rules(never_first)));
    let always = "      - if: $NOPE\n        when: never\n      - if: $CI_COMMIT_BRANCH\n        when: always\n";
    assert!(included(&with_rules(always)));
}

#[test]
fn rules_exists_checks_files_of_the_project() {
    assert!(included(&with_rules("      - exists: [docs/file.md]\n")));
    assert!(included(&with_rules("      - exists: ['docs/*.md']\n")));
    assert!(!included(&with_rules("      - exists: [docs/other.md]\n")));
    assert!(included(&with_rules(
        "      - exists:\n          paths: [docs/file.md]\n"
    )));
    assert!(!included(&with_rules(
        "      - exists: [docs/file.md]\n        when: never\n"
    )));
    // The paths may use the variables that `include` can use.
    assert!(included(&with_rules(
        "      - exists: ['$CI_PROJECT_NAME.md']\n"
    )));
    assert!(!included(&with_rules("      - exists: ['$NOPE.md']\n")));
}

#[test]
fn rules_exists_with_the_project_itself_checks_its_files() {
    let rule = "      - exists:\n          paths: [docs/file.md]\n          project: acme/shop/api\n          ref: main\n";
    assert!(included(&with_rules(rule)));
}

#[test]
fn rules_exists_in_another_project_cannot_be_checked_offline_and_says_so() {
    let rule =
        "      - exists:\n          paths: [docs/file.md]\n          project: other/project\n";
    let c = with_rules(rule);
    assert!(!included(&c));
    let warnings: Vec<String> = c.diagnostics.iter().map(ToString::to_string).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("warning:")
                && w.contains("`rules:exists` in project `other/project`")),
        "{warnings:#?}"
    );
}

#[test]
fn rules_changes_checks_the_changed_files() {
    let rule = "      - changes: [Dockerfile]\n";
    assert!(included(&with_rules_in(
        rule,
        Some(&["Dockerfile"]),
        |_| {}
    )));
    assert!(!included(&with_rules_in(
        rule,
        Some(&["README.md"]),
        |_| {}
    )));
    let rule =
        "      - changes:\n          paths: ['src/**/*']\n          compare_to: refs/heads/main\n";
    assert!(included(&with_rules_in(
        rule,
        Some(&["src/a/b.rs"]),
        |_| {}
    )));
    let rule = "      - if: $CI_COMMIT_BRANCH == \"main\"\n        changes: [Dockerfile]\n";
    assert!(!included(&with_rules_in(
        rule,
        Some(&["README.md"]),
        |_| {}
    )));
}

#[test]
fn an_excluded_include_is_not_read() {
    let c = compile_files(
        &[(
            ".gitlab-ci.yml",
            "include:\n  - local: missing.yml\n    rules:\n      - if: $NOPE\nmain:\n  script: [echo]\n",
        )],
        |_| {},
    );
    assert_eq!(jobs(&c), ["main"]);
}

#[test]
fn invalid_include_rules_are_errors() {
    let errs = errors(&with_rules("      - if: $A\n        when: manual\n"));
    assert!(
        errs.contains(
            &".gitlab-ci.yml:7:15: `include:rules`: `when` must be `never` or `always`, not `manual`"
                .to_string()
        ),
        "{errs:#?}"
    );
    let errs = errors(&with_rules("      - if: $A\n        allow_failure: true\n"));
    assert!(
        errs.contains(
            &".gitlab-ci.yml:7:9: `include:rules`: unknown keyword `allow_failure` (allowed: if, exists, changes, when)"
                .to_string()
        ),
        "{errs:#?}"
    );
    let errs = errors(&compile_files(
        &[(
            ".gitlab-ci.yml",
            "include:\n  - local: extra.yml\n    rules: []\nmain:\n  script: [echo]\n",
        )],
        |_| {},
    ));
    assert!(
        errs.contains(&".gitlab-ci.yml:3:12: `include:rules` can't be blank".to_string()),
        "{errs:#?}"
    );
}

fn compile_remote(
    pipeline: &str,
    local: &[(&str, &str)],
    remotes: Vec<(&'static str, &'static str)>,
) -> (Compiled, Vec<String>) {
    let mut files = vec![(".gitlab-ci.yml", pipeline)];
    files.extend_from_slice(local);
    Remotes::new(&files, remotes).compile()
}

// GitLab (gitlab-foss MR 24356): a local include keeps the context of the file that includes it.
// Inside an `include:project` file that is that project at that ref.
#[test]
fn a_local_include_in_a_project_file_is_read_in_that_project_at_that_ref() {
    let (c, asked) = compile_remote(
        "include:\n  - project: group/lib\n    ref: v1\n    file: /ci/main.yml\n",
        &[("ci/jobs.yml", "ours:\n  script: [echo wrong]\n")],
        vec![
            (
                "project:group/lib@v1:/ci/main.yml",
                "include:\n  - local: /ci/jobs.yml\n  - /ci/more.yml\n  - project: group/other\n    file: o.yml\n",
            ),
            (
                "project:group/lib@v1:ci/jobs.yml",
                "include: ci/deeper.yml\nlib-job:\n  script: [echo lib]\n",
            ),
            (
                "project:group/lib@v1:ci/deeper.yml",
                "deeper:\n  script: [x]\n",
            ),
            ("project:group/lib@v1:ci/more.yml", "more:\n  script: [x]\n"),
            ("project:group/other@HEAD:o.yml", "other:\n  script: [x]\n"),
        ],
    );
    assert_eq!(
        jobs(&c),
        ["deeper", "lib-job", "more", "other"],
        "{asked:#?}"
    );
}

// A component's files are its project's at the component's version.
#[test]
fn a_local_include_in_a_component_is_read_in_the_component_project_at_its_version() {
    let (c, asked) = compile_remote(
        "include:\n  - component: gitlab.example.com/components/opentofu/full-pipeline@2.0.0\n",
        &[("templates/fmt.yml", "ours:\n  script: [echo wrong]\n")],
        vec![
            (
                "component:gitlab.example.com/components/opentofu/full-pipeline@2.0.0",
                "include:\n  - local: /templates/fmt.yml\nplan:\n  script: [x]\n",
            ),
            (
                "project:components/opentofu@2.0.0:templates/fmt.yml",
                "fmt:\n  script: [x]\n",
            ),
        ],
    );
    assert_eq!(jobs(&c), ["fmt", "plan"], "{asked:#?}");
}

// A remote file and a template have no project: GitLab refuses a local include in them
// ("Local file ... does not have project!").
#[test]
fn a_local_include_in_a_remote_file_or_a_template_is_an_error() {
    for (include, key) in [
        (
            "remote: https://example.com/ci.yml",
            "remote:https://example.com/ci.yml",
        ),
        (
            "template: Jobs/Build.gitlab-ci.yml",
            "template:Jobs/Build.gitlab-ci.yml",
        ),
    ] {
        let pipeline: &'static str =
            Box::leak(format!("include:\n  - {include}\njob:\n  script: [x]\n").into_boxed_str());
        let (c, asked) = compile_remote(
            pipeline,
            &[("ci/jobs.yml", "ours:\n  script: [x]\n")],
            vec![(key, "include:\n  - local: /ci/jobs.yml\n")],
        );
        let errs = errors(&c);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].contains("local include `/ci/jobs.yml`") && errs[0].contains("has no project"),
            "{errs:#?}"
        );
        assert!(errs[0].starts_with(&format!("{key}:2:5: ")), "{errs:#?}");
        assert_eq!(asked, [key], "nothing else is asked for");
    }
}

// `extends: null` extends nothing (the opentofu component's `plan.yml` has one).
#[test]
fn extends_null_extends_nothing() {
    let c = compile_files(
        &[(
            ".gitlab-ci.yml",
            ".base:\n  extends: null\n  variables: {A: a}\njob:\n  extends: .base\n  script: [x]\n",
        )],
        |_| {},
    );
    assert_eq!(jobs(&c), ["job"]);
}
