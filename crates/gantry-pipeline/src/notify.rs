//! The top-level `notify:` section, a Gantry extension: which events reach which chat or webhook.
//!
//! ```yaml
//! notify:
//!   - on: [pipeline_failed, rollback]
//!     slack: {url: $SLACK_WEBHOOK_URL}
//!   - on: [all]
//!     webhook: {url: https://example.internal/hook, secret: $HOOK_SECRET}
//! ```
//!
//! Each rule has `on` (events, `all` for every one) and exactly one target. URLs and secrets are
//! kept unexpanded: `gantry-notify` expands them with the pipeline's variables when it sends, so a
//! secret never sits in the compiled output. This module only checks and holds the rules.

use serde::{Deserialize, Serialize};

use crate::compile::a_kind;
use crate::diag::{Diags, hint};
use crate::yaml::{Map, Node};

/// Something that happened that a rule can ask to hear about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A pipeline failed.
    PipelineFailed,
    /// A pipeline succeeded on a ref whose previous pipeline failed.
    PipelineFixed,
    /// A deployment to an environment failed (its job, or its verification).
    DeploymentFailed,
    /// A deployment to an environment succeeded.
    DeploymentSucceeded,
    /// A deployment was rolled back to an earlier one.
    Rollback,
}

impl EventKind {
    /// Every event, in the order the docs list them (what `all` means).
    pub const ALL: [EventKind; 5] = [
        EventKind::PipelineFailed,
        EventKind::PipelineFixed,
        EventKind::DeploymentFailed,
        EventKind::DeploymentSucceeded,
        EventKind::Rollback,
    ];

    /// The name as written under `on:`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::PipelineFailed => "pipeline_failed",
            EventKind::PipelineFixed => "pipeline_fixed",
            EventKind::DeploymentFailed => "deployment_failed",
            EventKind::DeploymentSucceeded => "deployment_succeeded",
            EventKind::Rollback => "rollback",
        }
    }

    fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Where a rule's messages go, each in its own documented format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// A Slack incoming webhook.
    Slack,
    /// A WeCom (WeChat Work) group robot.
    Wecom,
    /// A DingTalk custom robot, signed when it has a secret.
    Dingtalk,
    /// A Feishu custom bot, signed when it has a secret.
    Feishu,
    /// Any HTTP endpoint: Gantry's versioned JSON, HMAC-signed when it has a secret.
    Webhook,
}

impl TargetKind {
    /// Every target, as the docs list them.
    pub const ALL: [TargetKind; 5] = [
        TargetKind::Slack,
        TargetKind::Wecom,
        TargetKind::Dingtalk,
        TargetKind::Feishu,
        TargetKind::Webhook,
    ];

    /// The key as written in a rule.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Slack => "slack",
            TargetKind::Wecom => "wecom",
            TargetKind::Dingtalk => "dingtalk",
            TargetKind::Feishu => "feishu",
            TargetKind::Webhook => "webhook",
        }
    }

    /// Whether the target can be signed with a `secret` (Slack's and WeCom's hooks cannot).
    #[must_use]
    pub fn takes_secret(self) -> bool {
        !matches!(self, TargetKind::Slack | TargetKind::Wecom)
    }

    fn parse(s: &str) -> Option<TargetKind> {
        TargetKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A rule's target: its kind, URL and optional signing secret, both unexpanded (`$VARIABLES` stay).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The kind, which decides the message format.
    pub kind: TargetKind,
    /// The URL to post to.
    pub url: String,
    /// The signing secret, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// One `notify:` rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// The events it wants, `all` spelled out, without repeats.
    pub on: Vec<EventKind>,
    /// Where they go.
    pub target: Target,
}

impl Rule {
    /// Whether the rule wants events of `kind`.
    #[must_use]
    pub fn wants(&self, kind: EventKind) -> bool {
        self.on.contains(&kind)
    }
}

const ALL: &str = "all";

fn names<T: Copy>(
    all: &[T],
    name: fn(T) -> &'static str,
    extra: &[&'static str],
) -> Vec<&'static str> {
    all.iter()
        .map(|k| name(*k))
        .chain(extra.iter().copied())
        .collect()
}

/// A "did you mean" hint if there is one, else the list of what is known.
fn or_list(hint: String, what: &str, known: &[&str]) -> String {
    if hint.is_empty() {
        format!("; {what}: {}", known.join(", "))
    } else {
        hint
    }
}

/// Checks the `notify` section and returns its rules; every problem is an error at its node.
pub(crate) fn compile(node: &Node, diags: &mut Diags) -> Vec<Rule> {
    if node.is_null() {
        return Vec::new();
    }
    let Some(items) = node.as_seq() else {
        diags.error(
            node.pos,
            format!(
                "`notify` must be an array of rules such as `{{on: [pipeline_failed], slack: {{url: $SLACK_WEBHOOK_URL}}}}`, not {}",
                a_kind(node)
            ),
        );
        return Vec::new();
    };
    items.iter().filter_map(|item| rule(item, diags)).collect()
}

/// Checks `notify` rules given apart from a pipeline file, as text (YAML, or JSON, which YAML
/// reads): a server project's settings. `file` names the text in the diagnostics.
///
/// # Errors
/// Every problem, positioned in `src`, as in a pipeline file's `notify:`.
pub fn rules_from_text(src: &str, file: &str) -> Result<Vec<Rule>, Vec<crate::Diagnostic>> {
    let mut diags = Diags::default();
    let index = diags.add_file(file);
    let rules = match crate::yaml::parse(src, index) {
        Ok(d) => match d.docs.first() {
            Some(node) => compile(node, &mut diags),
            None => Vec::new(),
        },
        Err(e) => {
            diags.error(e.pos, e.message);
            Vec::new()
        }
    };
    if diags.list.is_empty() {
        Ok(rules)
    } else {
        Err(diags.list)
    }
}

fn rule(item: &Node, diags: &mut Diags) -> Option<Rule> {
    let Some(m) = item.as_map() else {
        diags.error(
            item.pos,
            format!(
                "`notify`: a rule must be a mapping with `on` and one target, not {}",
                a_kind(item)
            ),
        );
        return None;
    };
    let targets = names(&TargetKind::ALL, TargetKind::as_str, &[]);
    let mut target: Option<Target> = None;
    let mut first: Option<&str> = None;
    let mut ok = true;
    for e in &m.entries {
        if e.key == "on" {
            continue;
        }
        let Some(kind) = TargetKind::parse(&e.key) else {
            let mut known = targets.clone();
            known.push("on");
            let why = or_list(hint(&e.key, &known), "targets", &targets);
            diags.error(
                e.key_pos,
                format!("`notify`: unknown target `{}`{why}", e.key),
            );
            ok = false;
            continue;
        };
        if let Some(f) = first {
            diags.error(
                e.key_pos,
                format!("`notify`: a rule has one target, and this one already has `{f}`; write a rule per target"),
            );
            ok = false;
            continue;
        }
        first = Some(kind.as_str());
        target = destination(kind, &e.value, diags);
    }
    let on = match m.entry("on") {
        Some(e) => events(&e.value, diags),
        None => {
            diags.error(item.pos, "`notify`: a rule needs `on`, the events it sends (for example `on: [pipeline_failed]`)");
            None
        }
    };
    if first.is_none() && ok {
        diags.error(
            item.pos,
            format!("`notify`: a rule needs one target: {}", targets.join(", ")),
        );
    }
    match (on, target) {
        (Some(on), Some(target)) if ok => Some(Rule { on, target }),
        _ => None,
    }
}

fn events(node: &Node, diags: &mut Diags) -> Option<Vec<EventKind>> {
    let known = names(&EventKind::ALL, EventKind::as_str, &[ALL]);
    let Some(list) = node.as_seq().filter(|l| !l.is_empty()) else {
        diags.error(
            node.pos,
            format!(
                "`notify`: `on` must be a non-empty array of events: {}",
                known.join(", ")
            ),
        );
        return None;
    };
    let mut on = Vec::new();
    let mut ok = true;
    for n in list {
        let name = n.as_str().unwrap_or_default();
        if name == ALL {
            on.extend(EventKind::ALL);
        } else if let Some(k) = EventKind::parse(name) {
            on.push(k);
        } else {
            let what = n
                .as_str()
                .map_or_else(|| a_kind(n).to_string(), |s| format!("`{s}`"));
            let why = or_list(hint(name, &known), "events", &known);
            diags.error(n.pos, format!("`notify`: unknown event {what}{why}"));
            ok = false;
        }
    }
    let mut seen = Vec::new();
    on.retain(|k| {
        let new = !seen.contains(k);
        seen.push(*k);
        new
    });
    ok.then_some(on)
}

fn destination(kind: TargetKind, node: &Node, diags: &mut Diags) -> Option<Target> {
    let name = kind.as_str();
    let Some(m) = node.as_map() else {
        diags.error(
            node.pos,
            format!(
                "`notify`: `{name}` must be a mapping with `url`, not {}",
                a_kind(node)
            ),
        );
        return None;
    };
    let mut ok = true;
    for e in &m.entries {
        let known: &[&str] = if kind.takes_secret() {
            &["url", "secret"]
        } else {
            &["url"]
        };
        if !known.contains(&e.key.as_str()) {
            let why = if e.key == "secret" {
                format!("; {name} webhooks are not signed")
            } else {
                hint(&e.key, known)
            };
            diags.error(
                e.key_pos,
                format!("`notify`: unknown key `{}` in `{name}`{why}", e.key),
            );
            ok = false;
        }
    }
    let url = string(m, "url", name, diags);
    let secret = match m.get("secret") {
        Some(_) if kind.takes_secret() => Some(string(m, "secret", name, diags)?),
        _ => None,
    };
    let url = match url {
        Some(u) => u,
        None if m.contains("url") => return None,
        None => {
            diags.error(node.pos, format!("`notify`: `{name}` needs a `url`"));
            return None;
        }
    };
    let plain = !url.contains('$');
    if plain && !url.starts_with("https://") && !url.starts_with("http://") {
        let at = m.get("url").map_or(node.pos, |n| n.pos);
        diags.error(
            at,
            format!("`notify`: `{name}` url `{url}` must start with https:// or http://"),
        );
        ok = false;
    }
    ok.then_some(Target { kind, url, secret })
}

/// The non-empty string at `key`; an error at its value otherwise. `None` also when it is absent.
fn string(m: &Map, key: &str, name: &str, diags: &mut Diags) -> Option<String> {
    let n = m.get(key)?;
    match n.as_str() {
        Some(s) if !s.trim().is_empty() => Some(s.to_string()),
        _ => {
            diags.error(
                n.pos,
                format!("`notify`: `{name}:{key}` must be a non-empty string"),
            );
            None
        }
    }
}
