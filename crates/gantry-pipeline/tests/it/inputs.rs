//! `spec:inputs` and `$[[ inputs.NAME ]]` interpolation, as GitLab's "CI/CD inputs" documentation
//! describes them: types, `options`, `regex`, `default` (also `null`), the predefined functions and
//! their limit, how values render as a whole value or inside a string, and the errors.

use gantry_pipeline::Compiled;
use gantry_pipeline::plan::Variable;

use crate::{assert_error, compile_files, errors};

/// Compiles a `.gitlab-ci.yml` that includes `t.yml` (the `template`) with the given `inputs`
/// lines (already indented by six spaces; empty for none).
fn include(inputs: &str, template: &str) -> Compiled {
    include_with(inputs, template, |_| {})
}

fn include_with(
    inputs: &str,
    template: &str,
    tweak: impl FnOnce(&mut gantry_pipeline::Context),
) -> Compiled {
    let main = if inputs.is_empty() {
        "include:\n  - local: t.yml\n".to_string()
    } else {
        format!("include:\n  - local: t.yml\n    inputs:\n{inputs}")
    };
    compile_files(&[(".gitlab-ci.yml", &main), ("t.yml", template)], tweak)
}

fn assert_errors(c: &Compiled, expected: &[&str]) {
    for e in expected {
        assert_error(c, e);
    }
}

/// The scripts of `job`, checking that the pipeline compiled without errors.
fn script(c: &Compiled, job: &str) -> Vec<String> {
    let errs = errors(c);
    assert!(errs.is_empty(), "unexpected errors: {errs:#?}");
    let plan = c.plan.as_ref().expect("a plan");
    let names: Vec<&str> = plan.jobs.iter().map(|j| j.name.as_str()).collect();
    plan.jobs
        .iter()
        .find(|j| j.name == job)
        .unwrap_or_else(|| panic!("no job `{job}` in {names:?}"))
        .script
        .clone()
}

// --- default and required ---------------------------------------------------------------------

#[test]
fn default_null_makes_an_input_optional_with_no_value() {
    let t = "spec:\n  inputs:\n    flags:\n      default: null\n    user:\n      default: test-user\n---\njob:\n  script:\n    - run $[[ inputs.flags ]]--user $[[ inputs.user ]]\n";
    assert_eq!(script(&include("", t), "job"), ["run --user test-user"]);
    // A given value still wins over the null default.
    let c = include("      flags: --fast\n", t);
    assert_eq!(script(&c, "job"), ["run --fast--user test-user"]);
}

#[test]
fn default_null_also_works_with_a_tilde_and_as_a_whole_value() {
    let t = "spec:\n  inputs:\n    extra:\n      default: ~\n---\njob:\n  script:\n    - echo start\n  variables:\n    EXTRA: $[[ inputs.extra ]]\n";
    let c = include("", t);
    assert_eq!(script(&c, "job"), ["echo start"]);
    let job = &c.plan.unwrap().jobs[0];
    assert_eq!(job.variables, [Variable::new("EXTRA", "")]);
}

#[test]
fn a_missing_required_input_is_an_error_at_the_include() {
    let t = "spec:\n  inputs:\n    env:\n    stage:\n      default: test\n---\njob:\n  stage: $[[ inputs.stage ]]\n  script:\n    - deploy $[[ inputs.env ]]\n";
    assert_errors(
        &include("", t),
        &[".gitlab-ci.yml:2:5: `t.yml`: `env` input: required value has not been provided"],
    );
}

#[test]
fn an_unknown_input_is_an_error_at_its_key() {
    let t = "spec:\n  inputs:\n    env:\n      default: dev\n---\njob:\n  script:\n    - deploy $[[ inputs.env ]]\n";
    assert_errors(
        &include("      env: prod\n      enviroment: prod\n", t),
        &[
            ".gitlab-ci.yml:5:7: `t.yml`: unknown input arguments: `enviroment` (the file declares: env)",
        ],
    );
}

#[test]
fn inputs_for_a_file_without_a_spec_header_are_an_error() {
    let t = "job:\n  script: [echo]\n";
    assert_errors(
        &include("      env: prod\n", t),
        &[
            ".gitlab-ci.yml:4:7: `t.yml`: given inputs not defined in the `spec` section of the included configuration file",
        ],
    );
}

#[test]
fn a_file_without_a_spec_header_is_not_interpolated() {
    let t = "job:\n  script: ['echo $[[ inputs.env ]]']\n";
    assert_eq!(script(&include("", t), "job"), ["echo $[[ inputs.env ]]"]);
}

// --- types ------------------------------------------------------------------------------------

const TYPED: &str = "spec:\n  inputs:\n    n:\n      type: number\n      default: 1\n    b:\n      type: boolean\n      default: false\n    a:\n      type: array\n      default: [x]\n    s:\n      type: string\n      default: text\n---\njob:\n  script: [echo]\n";

#[test]
fn each_type_accepts_its_own_values() {
    let c = include(
        "      n: 2.5\n      b: true\n      a: [1, {k: v}]\n      s: hello\n",
        TYPED,
    );
    assert_eq!(script(&c, "job"), ["echo"]);
}

#[test]
fn a_value_of_the_wrong_type_is_an_error_at_the_value() {
    let c = include(
        "      n: three\n      b: 'yes'\n      a: x\n      s: [1, 2]\n",
        TYPED,
    );
    assert_errors(
        &c,
        &[
            ".gitlab-ci.yml:4:10: `t.yml`: `n` input: provided value is not a number",
            ".gitlab-ci.yml:5:10: `t.yml`: `b` input: provided value is not a boolean",
            ".gitlab-ci.yml:6:10: `t.yml`: `a` input: provided value is not an array",
            ".gitlab-ci.yml:7:10: `t.yml`: `s` input: provided value is not a string",
        ],
    );
}

#[test]
fn a_default_of_the_wrong_type_is_an_error_at_the_default() {
    let t = "spec:\n  inputs:\n    n:\n      type: number\n      default: one\n---\njob:\n  script: [echo]\n";
    assert_errors(
        &include("", t),
        &["t.yml:5:16: `t.yml`: `n` input: default value is not a number"],
    );
}

#[test]
fn an_unknown_type_is_an_error() {
    let t = "spec:\n  inputs:\n    n:\n      type: integer\n---\njob:\n  script: [echo]\n";
    assert_errors(
        &include("      n: 1\n", t),
        &[
            "t.yml:4:13: `t.yml`: unknown input specification for `n` (valid types: array, boolean, number, string)",
        ],
    );
}

#[test]
fn an_unknown_keyword_in_an_input_spec_is_an_error() {
    let t = "spec:\n  inputs:\n    n:\n      defualt: 1\n---\njob:\n  script: [echo]\n";
    assert_errors(
        &include("      n: 1\n", t),
        &["t.yml:4:7: `t.yml`: `n` input: unknown keyword `defualt`; did you mean `default`?"],
    );
}

// --- options and regex ------------------------------------------------------------------------

#[test]
fn options_limit_the_values() {
    let t = "spec:\n  inputs:\n    env:\n      options: [staging, production]\n    level:\n      type: number\n      options: [1, 2]\n      default: 1\n---\njob:\n  script:\n    - deploy $[[ inputs.env ]] $[[ inputs.level ]]\n";
    assert_eq!(
        script(
            &include("      env: production\n      level: 2\n", t),
            "job"
        ),
        ["deploy production 2"]
    );
    assert_errors(
        &include("      env: dev\n      level: 3\n", t),
        &[
            ".gitlab-ci.yml:4:12: `t.yml`: `env` input: `dev` cannot be used because it is not in the list of allowed options (staging, production)",
            ".gitlab-ci.yml:5:14: `t.yml`: `level` input: `3` cannot be used because it is not in the list of allowed options (1, 2)",
        ],
    );
}

#[test]
fn a_default_outside_the_options_is_an_error() {
    let t = "spec:\n  inputs:\n    env:\n      options: [staging, production]\n      default: dev\n---\njob:\n  script: [deploy]\n";
    assert_errors(
        &include("", t),
        &[
            "t.yml:5:16: `t.yml`: `env` input: `dev` cannot be used because it is not in the list of allowed options (staging, production)",
        ],
    );
}

#[test]
fn options_only_go_with_strings_and_numbers() {
    let t = "spec:\n  inputs:\n    b:\n      type: boolean\n      options: [true]\n      default: true\n---\njob:\n  script: [echo]\n";
    assert_errors(
        &include("", t),
        &["t.yml:5:7: `t.yml`: `b` input: options can only be used with string and number inputs"],
    );
}

#[test]
fn regex_must_match_the_value() {
    let t = "spec:\n  inputs:\n    version:\n      regex: ^v\\d+\\.\\d+\\.\\d+$\n---\njob:\n  script:\n    - release $[[ inputs.version ]]\n";
    assert_eq!(
        script(&include("      version: v1.2.3\n", t), "job"),
        ["release v1.2.3"]
    );
    assert_errors(
        &include("      version: v1.2\n", t),
        &[
            ".gitlab-ci.yml:4:16: `t.yml`: `version` input: provided value does not match required RegEx pattern `^v\\d+\\.\\d+\\.\\d+$`",
        ],
    );
}

#[test]
fn regex_is_not_enclosed_in_slashes() {
    // GitLab takes the whole string as the expression: `/v1/` looks for the slashes too.
    let t = "spec:\n  inputs:\n    v:\n      regex: /v1/\n---\njob:\n  script: [echo]\n";
    assert_eq!(
        errors(&include("      v: x/v1/y\n", t)),
        Vec::<String>::new()
    );
    assert_eq!(errors(&include("      v: v1\n", t)).len(), 1);
}

#[test]
fn regex_problems_are_errors() {
    let t = "spec:\n  inputs:\n    v:\n      regex: '[unclosed'\n    n:\n      type: number\n      regex: ^1$\n      default: 1\n    d:\n      regex: ^a\n      default: b\n---\njob:\n  script: [echo]\n";
    let c = include("      v: x\n", t);
    let errs = errors(&c);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("t.yml:4:14: `t.yml`: `v` input: invalid regular expression")),
        "{errs:#?}"
    );
    assert_errors(
        &c,
        &[
            "t.yml:7:7: `t.yml`: `n` input: RegEx validation can only be used with string inputs",
            "t.yml:11:16: `t.yml`: `d` input: default value does not match required RegEx pattern `^a`",
        ],
    );
}

// --- rendering --------------------------------------------------------------------------------

#[test]
fn a_whole_value_keeps_the_input_type() {
    let t = "spec:\n  inputs:\n    cmds:\n      type: array\n    n:\n      type: number\n    fail:\n      type: boolean\n---\njob:\n  parallel: $[[ inputs.n ]]\n  allow_failure: $[[ inputs.fail ]]\n  script: $[[ inputs.cmds ]]\n";
    let c = include(
        "      cmds: [make, make test]\n      n: 2\n      fail: true\n",
        t,
    );
    assert_eq!(script(&c, "job 1/2"), ["make", "make test"]);
    let plan = c.plan.unwrap();
    assert_eq!(plan.jobs.len(), 2);
    assert!(plan.jobs[0].allow_failure.is_allowed());
}

#[test]
fn inside_a_string_every_type_renders_as_text() {
    let t = "spec:\n  inputs:\n    n:\n      type: number\n    f:\n      type: number\n    b:\n      type: boolean\n    a:\n      type: array\n---\n'job-$[[ inputs.n ]]':\n  script:\n    - 'echo n=$[[ inputs.n ]] f=$[[ inputs.f ]] b=$[[ inputs.b ]] a=$[[ inputs.a ]]'\n";
    let c = include(
        "      n: 3\n      f: 1.5\n      b: false\n      a: [x, 1, true, 'say \"hi\"']\n",
        t,
    );
    assert_eq!(
        script(&c, "job-3"),
        [r#"echo n=3 f=1.5 b=false a=["x", 1, true, "say \"hi\""]"#]
    );
}

#[test]
fn an_unknown_interpolation_key_is_an_error() {
    let t = "spec:\n  inputs:\n    env:\n      default: dev\n---\njob:\n  script:\n    - deploy $[[ inputs.enviroment ]]\n";
    assert_errors(
        &include("", t),
        &["t.yml:8:7: `t.yml`: unknown interpolation key: `enviroment`"],
    );
}

// --- functions --------------------------------------------------------------------------------

#[test]
fn truncate_takes_an_offset_and_a_length() {
    let t = "spec:\n  inputs:\n    test:\n      default: '0123456789'\n---\njob:\n  script:\n    - echo $[[ inputs.test | truncate(3,5) ]] $[[ inputs.test | truncate( 8 , 10 ) ]]\n";
    assert_eq!(script(&include("", t), "job"), ["echo 34567 89"]);
}

#[test]
fn expand_vars_expands_the_variables_include_can_use() {
    let t = "spec:\n  inputs:\n    test:\n      default: 'test $MY_VAR ${CI_COMMIT_BRANCH} $GLOBAL $UNKNOWN'\n---\nvariables:\n  GLOBAL: global\njob:\n  script:\n    - echo $[[ inputs.test | expand_vars ]]\n    - echo $[[ inputs.test | expand_vars | truncate(5,8) ]]\n";
    let c = include_with("", t, |ctx| {
        ctx.cli_variables.push(Variable::new("MY_VAR", "my value"));
    });
    // Global `variables` are not available to `include`; unknown variables stay as they are.
    assert_eq!(
        script(&c, "job"),
        ["echo test my value main $GLOBAL $UNKNOWN", "echo my value"]
    );
}

#[test]
fn expand_vars_refuses_masked_variables() {
    let t = "spec:\n  inputs:\n    test:\n      default: 'token $SECRET'\n---\njob:\n  script:\n    - echo $[[ inputs.test | expand_vars ]]\n";
    let c = include_with("", t, |ctx| {
        ctx.cli_variables.push(Variable {
            masked: true,
            ..Variable::new("SECRET", "hunter2hunter2")
        });
    });
    let errs = errors(&c);
    assert!(
        errs.iter().any(|e| e.starts_with(
            "t.yml:8:7: `t.yml`: error in `expand_vars` function: variable expansion error: masked variable `SECRET`"
        )),
        "{errs:#?}"
    );
}

#[test]
fn posix_escape_escapes_shell_characters() {
    let t = "spec:\n  inputs:\n    test:\n      default: |-\n        A string with single ' and double \" quotes and   blanks\n    safe:\n      default: a-b_c.d,e:f+g/h@i\n    empty:\n      default: ''\n---\njob:\n  script:\n    - printf '%s\\n' $[[ inputs.test | posix_escape ]]\n    - echo $[[ inputs.safe | posix_escape ]] $[[ inputs.empty | posix_escape ]]\n";
    assert_eq!(
        script(&include("", t), "job"),
        [
            r#"printf '%s\n' A\ string\ with\ single\ \'\ and\ double\ \"\ quotes\ and\ \ \ blanks"#,
            "echo a-b_c.d,e:f+g/h@i ''",
        ]
    );
}

#[test]
fn at_most_three_functions_per_block() {
    let t = "spec:\n  inputs:\n    test:\n      default: 'abc $X'\n---\njob:\n  script:\n    - echo $[[ inputs.test | expand_vars | truncate(0,9) | posix_escape ]]\n    - echo $[[ inputs.test | truncate(0,9) | truncate(0,8) | truncate(0,7) | truncate(0,6) ]]\n";
    let c = include("", t);
    assert_errors(
        &c,
        &["t.yml:9:7: `t.yml`: too many functions in interpolation block (at most 3)"],
    );
    assert_eq!(errors(&c).len(), 1, "{:#?}", errors(&c));
}

#[test]
fn function_problems_are_errors() {
    let t = "spec:\n  inputs:\n    n:\n      type: number\n      default: 12345\n    s:\n      default: abc\n---\njob:\n  script:\n    - echo $[[ inputs.n | truncate(0,2) ]]\n    - echo $[[ inputs.s | upcase ]]\n";
    assert_errors(
        &include("", t),
        &[
            "t.yml:11:7: `t.yml`: error in `truncate` function: invalid input type: truncate can only be used with string inputs",
            "t.yml:12:7: `t.yml`: no function matching `upcase`: check that the function name, arguments, and types are correct",
        ],
    );
}

#[test]
fn the_main_file_can_declare_inputs_with_defaults() {
    let c = compile_files(
        &[(
            ".gitlab-ci.yml",
            "spec:\n  inputs:\n    env:\n      default: staging\n---\ndeploy:\n  script:\n    - deploy $[[ inputs.env ]]\n",
        )],
        |_| {},
    );
    assert_eq!(script(&c, "deploy"), ["deploy staging"]);
}

#[test]
fn a_required_input_of_the_main_file_is_reported_where_it_is_declared() {
    let c = compile_files(
        &[(
            ".gitlab-ci.yml",
            "spec:\n  inputs:\n    env:\n---\ndeploy:\n  script:\n    - deploy $[[ inputs.env ]]\n",
        )],
        |_| {},
    );
    assert_errors(
        &c,
        &[
            ".gitlab-ci.yml:3:5: `.gitlab-ci.yml`: `env` input: required value has not been provided",
        ],
    );
}
