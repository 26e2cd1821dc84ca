//! Each target's request, in the format its service documents; the signatures.
//!
//! All messages say the same things (`facts`), rendered per format; only the generic webhook sends
//! the event as data.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use reqwest::Url;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::{Commit, Error, Event, EventKind, Pipeline, Rollback, Target, TargetKind};

/// An HTTP POST ready to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Where to, signature query included (DingTalk).
    pub url: Url,
    /// Headers besides `Content-Type: application/json`.
    pub headers: Vec<(&'static str, String)>,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// The failed jobs a message lists by name; the rest are counted.
const LISTED_JOBS: usize = 20;

/// The request `target` (its URL and secret already expanded) wants for `event`, signed with
/// `now` where its service signs.
///
/// # Errors
/// When the URL is empty (an unset variable), not a URL, or neither http nor https, or when a
/// secret is empty: sending unsigned would fail or, to a webhook, skip its check. The error never
/// shows the URL, which holds the hook's token.
pub fn request(target: &Target, event: &Event, now: SystemTime) -> Result<Request, Error> {
    let kind = target.kind;
    if target.url.trim().is_empty() {
        return Err(Error::EmptyUrl(kind));
    }
    let mut url = Url::parse(target.url.trim()).map_err(|e| Error::BadUrl {
        kind,
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::Scheme(kind));
    }
    let secret = target.secret.as_deref();
    if secret.is_some_and(|s| s.trim().is_empty()) {
        return Err(Error::EmptySecret(kind));
    }
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut headers = Vec::new();
    let body = match target.kind {
        TargetKind::Slack => slack(event),
        TargetKind::Wecom => wecom(event),
        TargetKind::Dingtalk => {
            if let Some(secret) = secret {
                let timestamp = since_epoch.as_millis().to_string();
                let sign = dingtalk_sign(&timestamp, secret);
                // `append_pair` form-encodes the base64 (`+`, `/`, `=`), the urlEncode the docs ask for.
                url.query_pairs_mut()
                    .append_pair("timestamp", &timestamp)
                    .append_pair("sign", &sign);
            }
            dingtalk(event)
        }
        TargetKind::Feishu => {
            let mut body = feishu(event);
            if let Some(secret) = secret {
                let timestamp = since_epoch.as_secs().to_string();
                body["sign"] = json!(feishu_sign(&timestamp, secret));
                body["timestamp"] = json!(timestamp);
            }
            body
        }
        TargetKind::Webhook => serde_json::to_value(Payload::new(event)).unwrap_or_default(),
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    if target.kind == TargetKind::Webhook {
        headers.push(("X-Gantry-Event", event.kind.as_str().to_string()));
        if let Some(secret) = secret {
            headers.push((
                "X-Gantry-Signature",
                format!("sha256={}", webhook_signature(secret, &body)),
            ));
        }
    }
    Ok(Request { url, headers, body })
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return Vec::new();
    };
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

/// DingTalk's signature of a signed custom robot, before URL encoding: base64 of the HMAC-SHA256,
/// keyed with the secret, of `timestamp + "\n" + secret` (timestamp in milliseconds).
///
/// Documented in DingTalk's custom robot guide, security settings ("加签"):
/// <https://open.dingtalk.com/document/robots/custom-robot-access>.
#[must_use]
pub fn dingtalk_sign(timestamp: &str, secret: &str) -> String {
    let msg = format!("{timestamp}\n{secret}");
    BASE64.encode(hmac_sha256(secret.as_bytes(), msg.as_bytes()))
}

/// Feishu's signature of a custom bot with signature verification: base64 of the HMAC-SHA256,
/// keyed with `timestamp + "\n" + secret`, of an empty message (timestamp in seconds).
///
/// Documented in Feishu's custom bot guide ("签名校验"):
/// <https://open.feishu.cn/document/client-docs/bot-v3/add-custom-bot>.
#[must_use]
pub fn feishu_sign(timestamp: &str, secret: &str) -> String {
    let key = format!("{timestamp}\n{secret}");
    BASE64.encode(hmac_sha256(key.as_bytes(), b""))
}

/// The generic webhook's signature: the lowercase hex HMAC-SHA256 of the body, keyed with the
/// secret; sent as `X-Gantry-Signature: sha256=<hex>`.
#[must_use]
pub fn webhook_signature(secret: &str, body: &[u8]) -> String {
    hex::encode(hmac_sha256(secret.as_bytes(), body))
}

/// One line of a message: a label, its text, and a link for the text.
struct Fact {
    label: &'static str,
    text: String,
    link: Option<String>,
}

/// The message's title: what happened, and to which project.
fn title(e: &Event) -> String {
    let env = e.environment.as_deref().unwrap_or("an environment");
    let what = match e.kind {
        EventKind::PipelineFailed => format!("Pipeline #{} failed", e.pipeline.id),
        EventKind::PipelineFixed => format!("Pipeline #{} fixed", e.pipeline.id),
        EventKind::DeploymentFailed => format!("Deployment to {env} failed"),
        EventKind::DeploymentSucceeded => format!("Deployment to {env} succeeded"),
        EventKind::Rollback => format!("Rollback of {env}"),
    };
    format!("{what}: {}", e.project)
}

/// What every message says, in order.
fn facts(e: &Event) -> Vec<Fact> {
    let fact = |label, text: String| Fact {
        label,
        text,
        link: None,
    };
    let short: String = e.commit.sha.chars().take(8).collect();
    let commit = if e.commit.title.is_empty() {
        short
    } else {
        format!("{short} {}", e.commit.title)
    };
    let mut jobs = e
        .failed_jobs
        .iter()
        .take(LISTED_JOBS)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if e.failed_jobs.len() > LISTED_JOBS {
        jobs.push_str(&format!(" and {} more", e.failed_jobs.len() - LISTED_JOBS));
    }
    if jobs.is_empty() {
        jobs = "none".into();
    }
    let mut facts = vec![
        fact("Project", e.project.clone()),
        fact("Ref", e.git_ref.clone()),
        fact("Commit", commit),
        Fact {
            label: "Pipeline",
            text: format!("#{}", e.pipeline.id),
            link: e.pipeline.url.clone(),
        },
        fact("Failed jobs", jobs),
    ];
    if let Some(env) = &e.environment {
        facts.push(fact("Environment", env.clone()));
    }
    if let Some(r) = &e.rollback {
        facts.push(fact(
            "Rollback",
            format!("from deployment {} to deployment {}", r.from, r.to),
        ));
    }
    facts
}

/// Slack incoming webhook: `text` (the notification's fallback) and `blocks`, a section with the
/// title and one with the facts as fields, in `mrkdwn` (`&`, `<`, `>` escaped, links as
/// `<url|text>`). A section has at most 10 fields of at most 2,000 characters.
///
/// Documented in "Sending messages using incoming webhooks":
/// <https://api.slack.com/messaging/webhooks>, and Block Kit's section block:
/// <https://api.slack.com/reference/block-kit/blocks#section>.
fn slack(e: &Event) -> Value {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let title = esc(&title(e));
    let facts = facts(e);
    let fields: Vec<Value> = facts
        .iter()
        .map(|f| {
            let text = match &f.link {
                Some(link) => format!("<{}|{}>", esc(link), esc(&f.text)),
                None => esc(&f.text),
            };
            json!({"type": "mrkdwn", "text": clip(&format!("*{}*\n{text}", f.label), 2000)})
        })
        .collect();
    let plain: Vec<String> = facts
        .iter()
        .map(|f| format!("{}: {}", f.label, esc(&f.text)))
        .collect();
    json!({
        "text": clip(&format!("{title}\n{}", plain.join("\n")), 3000),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{title}*")}},
            {"type": "section", "fields": fields},
        ],
    })
}

/// The facts as Markdown lines, links as `[text](url)`.
fn markdown_lines(e: &Event, bullet: &str) -> Vec<String> {
    facts(e)
        .iter()
        .map(|f| match &f.link {
            Some(link) => format!("{bullet}**{}:** [{}]({link})", f.label, f.text),
            None => format!("{bullet}**{}:** {}", f.label, f.text),
        })
        .collect()
}

/// WeCom group robot: `msgtype: markdown` with `markdown.content`, at most 4,096 bytes of UTF-8.
///
/// Documented in "群机器人配置说明": <https://work.weixin.qq.com/api/doc/90000/90136/91770>.
fn wecom(e: &Event) -> Value {
    let content = format!("**{}**\n{}", title(e), markdown_lines(e, "> ").join("\n"));
    json!({"msgtype": "markdown", "markdown": {"content": clip_bytes(&content, 4096)}})
}

/// DingTalk custom robot: `msgtype: markdown` with `markdown.title` (shown in the conversation
/// list) and `markdown.text`.
///
/// Documented in DingTalk's custom robot guide and its message types:
/// <https://open.dingtalk.com/document/robots/custom-robot-access>,
/// <https://open.dingtalk.com/document/orgapp/message-type>.
fn dingtalk(e: &Event) -> Value {
    let title = title(e);
    let text = format!("### {title}\n\n{}", markdown_lines(e, "- ").join("\n"));
    json!({"msgtype": "markdown", "markdown": {"title": title, "text": text}})
}

/// Feishu custom bot: `msg_type: post` (rich text), `content.post.zh_cn` with a `title` and
/// `content`, one paragraph per fact made of `text` and `a` (link) elements; a signed bot adds
/// `timestamp` and `sign` to the body. The body may not exceed 20 KB.
///
/// Documented in Feishu's custom bot guide: <https://open.feishu.cn/document/client-docs/bot-v3/add-custom-bot>.
fn feishu(e: &Event) -> Value {
    let paragraphs: Vec<Value> = facts(e)
        .into_iter()
        .map(|f| {
            let label = format!("{}: ", f.label);
            match f.link {
                Some(href) => json!([
                    {"tag": "text", "text": label},
                    {"tag": "a", "text": f.text, "href": href},
                ]),
                None => json!([{"tag": "text", "text": format!("{label}{}", f.text)}]),
            }
        })
        .collect();
    json!({
        "msg_type": "post",
        "content": {"post": {"zh_cn": {"title": title(e), "content": paragraphs}}},
    })
}

/// The generic webhook's payload, version 1: the event as data, plus its title. A change that
/// removes or retypes a field makes a version 2.
///
/// ```json
/// {"version": 1, "event": "rollback", "title": "Rollback of production: acme/shop",
///  "project": "acme/shop", "ref": "main", "commit": {"sha": "…", "title": "…"},
///  "pipeline": {"id": 42, "url": "…"}, "failed_jobs": ["deploy"], "environment": "production",
///  "rollback": {"from": "17", "to": "16"}}
/// ```
#[derive(serde::Serialize)]
struct Payload<'a> {
    version: u32,
    event: EventKind,
    title: String,
    project: &'a str,
    #[serde(rename = "ref")]
    git_ref: &'a str,
    commit: &'a Commit,
    pipeline: &'a Pipeline,
    failed_jobs: &'a [String],
    environment: Option<&'a str>,
    rollback: Option<&'a Rollback>,
}

impl Payload<'_> {
    fn new(e: &Event) -> Payload<'_> {
        Payload {
            version: 1,
            event: e.kind,
            title: title(e),
            project: &e.project,
            git_ref: &e.git_ref,
            commit: &e.commit,
            pipeline: &e.pipeline,
            failed_jobs: &e.failed_jobs,
            environment: e.environment.as_deref(),
            rollback: e.rollback.as_ref(),
        }
    }
}

/// `s` cut to at most `max` characters.
fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn clip_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
