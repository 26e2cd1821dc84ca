//! The top-level `notify:` section: its rules in the compiled output, values unexpanded, and each
//! mistake reported at its line and column.

use gantry_pipeline::notify::{EventKind, Rule, Target, TargetKind};

use crate::{assert_error, compile_one, errors};

/// A pipeline with one job and `notify` set to `rules` (indented list items).
fn with_notify(rules: &str) -> String {
    format!("job:\n  script: [x]\nnotify:\n{rules}")
}

fn target(kind: TargetKind, url: &str, secret: Option<&str>) -> Target {
    Target {
        kind,
        url: url.into(),
        secret: secret.map(Into::into),
    }
}

#[test]
fn rules_keep_their_variables_unexpanded_and_all_means_every_event() {
    let src = with_notify(
        "  - on: [pipeline_failed, pipeline_fixed, deployment_failed, rollback]
    slack: {url: $SLACK_WEBHOOK_URL}
  - on: [rollback, deployment_succeeded]
    wecom: {url: $WECOM_WEBHOOK_URL}
  - on: [pipeline_failed]
    dingtalk: {url: $DINGTALK_WEBHOOK_URL, secret: $DINGTALK_SECRET}
  - on: [deployment_failed]
    feishu: {url: $FEISHU_WEBHOOK_URL, secret: $FEISHU_SECRET}
  - on: [all, rollback]
    webhook: {url: https://example.internal/hook, secret: $HOOK_SECRET}
",
    );
    let c = compile_one(&src);
    assert_eq!(errors(&c), Vec::<String>::new());
    let plan = c.plan.as_ref().expect("a plan");
    assert_eq!(plan.jobs.len(), 1, "`notify` is not a job");
    use EventKind::*;
    assert_eq!(
        c.notify,
        vec![
            Rule {
                on: vec![PipelineFailed, PipelineFixed, DeploymentFailed, Rollback],
                target: target(TargetKind::Slack, "$SLACK_WEBHOOK_URL", None),
            },
            Rule {
                on: vec![Rollback, DeploymentSucceeded],
                target: target(TargetKind::Wecom, "$WECOM_WEBHOOK_URL", None),
            },
            Rule {
                on: vec![PipelineFailed],
                target: target(
                    TargetKind::Dingtalk,
                    "$DINGTALK_WEBHOOK_URL",
                    Some("$DINGTALK_SECRET")
                ),
            },
            Rule {
                on: vec![DeploymentFailed],
                target: target(
                    TargetKind::Feishu,
                    "$FEISHU_WEBHOOK_URL",
                    Some("$FEISHU_SECRET")
                ),
            },
            Rule {
                on: EventKind::ALL.to_vec(),
                target: target(
                    TargetKind::Webhook,
                    "https://example.internal/hook",
                    Some("$HOOK_SECRET")
                ),
            },
        ]
    );
    assert!(c.notify[1].wants(Rollback) && !c.notify[1].wants(PipelineFailed));
}

#[test]
fn no_notify_section_means_no_rules() {
    let c = compile_one("job:\n  script: [x]\n");
    assert!(c.notify.is_empty());
    let c = compile_one(&with_notify(""));
    assert_eq!(errors(&c), Vec::<String>::new());
}

#[test]
fn unknown_event_at_the_event() {
    let c = compile_one(&with_notify(
        "  - on: [pipeline_faild]\n    slack: {url: $U}\n",
    ));
    assert_error(
        &c,
        ".gitlab-ci.yml:4:10: `notify`: unknown event `pipeline_faild`; did you mean `pipeline_failed`?",
    );
    assert!(c.plan.is_none());
    assert_error(
        &compile_one(&with_notify(
            "  - on: [rollback, merged]\n    slack: {url: $U}\n",
        )),
        ".gitlab-ci.yml:4:20: `notify`: unknown event `merged`; events: pipeline_failed, pipeline_fixed, deployment_failed, deployment_succeeded, rollback, all",
    );
    assert_error(
        &compile_one(&with_notify(
            "  - on: pipeline_failed\n    slack: {url: $U}\n",
        )),
        ".gitlab-ci.yml:4:9: `notify`: `on` must be a non-empty array of events: pipeline_failed, pipeline_fixed, deployment_failed, deployment_succeeded, rollback, all",
    );
}

#[test]
fn unknown_target_at_its_key() {
    assert_error(
        &compile_one(&with_notify("  - on: [all]\n    slak: {url: $U}\n")),
        ".gitlab-ci.yml:5:5: `notify`: unknown target `slak`; did you mean `slack`?",
    );
    assert_error(
        &compile_one(&with_notify("  - on: [all]\n    teams: {url: $U}\n")),
        ".gitlab-ci.yml:5:5: `notify`: unknown target `teams`; targets: slack, wecom, dingtalk, feishu, webhook",
    );
}

#[test]
fn two_targets_in_one_rule_at_the_second() {
    let c = compile_one(&with_notify(
        "  - on: [all]\n    slack: {url: $A}\n    wecom: {url: $B}\n",
    ));
    assert_error(
        &c,
        ".gitlab-ci.yml:6:5: `notify`: a rule has one target, and this one already has `slack`; write a rule per target",
    );
    assert!(c.notify.is_empty());
}

#[test]
fn missing_url_at_the_target() {
    assert_error(
        &compile_one(&with_notify("  - on: [all]\n    dingtalk: {secret: $S}\n")),
        ".gitlab-ci.yml:5:15: `notify`: `dingtalk` needs a `url`",
    );
    assert_error(
        &compile_one(&with_notify("  - on: [all]\n    feishu: {url: ''}\n")),
        ".gitlab-ci.yml:5:19: `notify`: `feishu:url` must be a non-empty string",
    );
    assert_error(
        &compile_one(&with_notify(
            "  - on: [all]\n    webhook: {url: ftp://host/x}\n",
        )),
        ".gitlab-ci.yml:5:20: `notify`: `webhook` url `ftp://host/x` must start with https:// or http://",
    );
}

#[test]
fn a_rule_needs_on_and_a_target() {
    assert_error(
        &compile_one(&with_notify("  - on: [all]\n")),
        ".gitlab-ci.yml:4:5: `notify`: a rule needs one target: slack, wecom, dingtalk, feishu, webhook",
    );
    assert_error(
        &compile_one(&with_notify("  - slack: {url: $U}\n")),
        ".gitlab-ci.yml:4:5: `notify`: a rule needs `on`, the events it sends (for example `on: [pipeline_failed]`)",
    );
    assert_error(
        &compile_one(&with_notify("  - on: [all]\n    slack: $URL\n")),
        ".gitlab-ci.yml:5:12: `notify`: `slack` must be a mapping with `url`, not a string",
    );
}

#[test]
fn secrets_only_where_the_target_signs() {
    assert_error(
        &compile_one(&with_notify(
            "  - on: [all]\n    slack: {url: $U, secret: $S}\n",
        )),
        ".gitlab-ci.yml:5:22: `notify`: unknown key `secret` in `slack`; slack webhooks are not signed",
    );
    assert_error(
        &compile_one(&with_notify(
            "  - on: [all]\n    webhook: {url: $U, secert: $S}\n",
        )),
        ".gitlab-ci.yml:5:24: `notify`: unknown key `secert` in `webhook`; did you mean `secret`?",
    );
}

#[test]
fn notify_must_be_an_array() {
    assert_error(
        &compile_one("job:\n  script: [x]\nnotify: slack\n"),
        ".gitlab-ci.yml:3:9: `notify` must be an array of rules such as `{on: [pipeline_failed], slack: {url: $SLACK_WEBHOOK_URL}}`, not a string",
    );
    assert_error(
        &compile_one(&with_notify("  - slack\n")),
        ".gitlab-ci.yml:4:5: `notify`: a rule must be a mapping with `on` and one target, not a string",
    );
}

/// GitLab has no `notify` keyword, so pipelines name jobs `notify`: a mapping there stays a job
/// (with `default:` applied), and only a list is the section.
#[test]
fn a_job_named_notify_stays_a_job() {
    let c = compile_one(
        "default:\n  before_script: [echo hi]\nstages: [build, cleanup]\nbuild:\n  stage: build\n  script: [exit 1]\nnotify:\n  stage: cleanup\n  when: on_failure\n  script: [echo notified]\n",
    );
    assert_eq!(errors(&c), Vec::<String>::new());
    let plan = c.plan.as_ref().expect("a plan");
    let notify = plan
        .jobs
        .iter()
        .find(|j| j.name == "notify")
        .expect("`notify` is a job");
    assert_eq!(notify.stage, "cleanup");
    assert_eq!(notify.before_script, ["echo hi"]);
    assert!(c.notify.is_empty());
}

#[test]
fn rules_given_as_text_are_checked_as_a_files() {
    let rules = gantry_pipeline::notify::rules_from_text(
        r#"[{"on": ["all"], "dingtalk": {"url": "$U", "secret": "$S"}}]"#,
        "settings",
    )
    .unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].target,
        target(TargetKind::Dingtalk, "$U", Some("$S"))
    );
    assert_eq!(rules[0].on, EventKind::ALL.to_vec());
    let errs = gantry_pipeline::notify::rules_from_text(
        "- on: [rollback]\n  slack: {url: $U, secret: $S}\n",
        "settings",
    )
    .unwrap_err();
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        ["settings:2:20: `notify`: unknown key `secret` in `slack`; slack webhooks are not signed"]
    );
    assert!(
        gantry_pipeline::notify::rules_from_text("[", "settings").unwrap_err()[0]
            .to_string()
            .starts_with("settings:")
    );
}
