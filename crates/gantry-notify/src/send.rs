//! Delivery: one shared HTTP client, a timeout per attempt, retries with backoff, one [`Delivery`]
//! per target. Nothing here panics or returns an error to the caller: a failure is a `Delivery`
//! with its last error, for the caller to log and count.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gantry_api::backoff::Backoff;
use gantry_pipeline::Variable;
use gantry_pipeline::vars;
use tokio::task::{JoinHandle, JoinSet};

use crate::format::request;
use crate::{Error, Event, Rule, Target, TargetKind};

/// How hard to try.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Attempts per target, the first included (at least 1).
    pub attempts: u32,
    /// The limit of one attempt, connection to last byte.
    pub timeout: Duration,
    /// The wait after the first failed attempt; it doubles after each, up to `max_delay`.
    pub first_delay: Duration,
    /// The longest wait between attempts.
    pub max_delay: Duration,
}

impl Default for Policy {
    /// 5 attempts of at most 10 s each, waiting 1 s, 2 s, 4 s and 8 s (with jitter) between them.
    fn default() -> Policy {
        Policy {
            attempts: 5,
            timeout: Duration::from_secs(10),
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// What happened to one notification to one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The target's kind.
    pub target: TargetKind,
    /// The target's host, for logs (the URL's path and query hold the hook's token).
    pub host: String,
    /// Attempts made (0 when the target could not be turned into a request).
    pub attempts: u32,
    /// The last HTTP status received, if any.
    pub status: Option<u16>,
    /// Why the last attempt failed; `None` when delivered.
    pub error: Option<String>,
}

impl Delivery {
    /// Whether the target accepted the notification.
    #[must_use]
    pub fn delivered(&self) -> bool {
        self.error.is_none()
    }
}

/// Sends notifications. Cheap to clone: clones share one HTTP client (and its connections).
#[derive(Clone, Debug)]
pub struct Sender {
    client: reqwest::Client,
    policy: Arc<Policy>,
}

/// How much of a response body is read, to find a chat service's error code.
const MAX_ANSWER: usize = 64 * 1024;

impl Sender {
    /// A sender with its own HTTP client (rustls, no redirects: a hook that moves is an error).
    ///
    /// # Errors
    /// When the HTTP client cannot be built (no TLS roots).
    pub fn new(policy: Policy) -> Result<Sender, Error> {
        let client = reqwest::Client::builder()
            .timeout(policy.timeout)
            .connect_timeout(policy.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(Error::Client)?;
        Ok(Sender {
            client,
            policy: Arc::new(policy),
        })
    }

    /// Runs [`Sender::notify`] on its own task, so that the caller does not wait: a pipeline never
    /// waits on a chat service. Await the handle to log the deliveries. Needs a tokio runtime.
    pub fn spawn(
        &self,
        rules: Vec<Rule>,
        variables: Vec<Variable>,
        event: Event,
    ) -> JoinHandle<Vec<Delivery>> {
        let sender = self.clone();
        tokio::spawn(async move { sender.notify(&rules, &variables, event).await })
    }

    /// Sends `event` to the target of every rule that wants it, all at once, with URLs and secrets
    /// expanded from `variables` (the pipeline's, in precedence order: later ones win). Answers
    /// one delivery per such rule, in rule order.
    pub async fn notify(
        &self,
        rules: &[Rule],
        variables: &[Variable],
        event: Event,
    ) -> Vec<Delivery> {
        let wanted: Vec<&Rule> = rules.iter().filter(|r| r.wants(event.kind)).collect();
        if wanted.is_empty() {
            return Vec::new();
        }
        let values: HashMap<String, String> = vars::resolve(variables).into_iter().collect();
        let event = Arc::new(event);
        let mut tasks = JoinSet::new();
        for (i, rule) in wanted.iter().enumerate() {
            let target = expand(&rule.target, &values);
            let (sender, event) = (self.clone(), Arc::clone(&event));
            tasks.spawn(async move { (i, sender.deliver(&target, &event).await) });
        }
        let mut done: Vec<Option<Delivery>> = vec![None; wanted.len()];
        while let Some(joined) = tasks.join_next().await {
            if let Ok((i, d)) = joined {
                done[i] = Some(d);
            }
        }
        done.into_iter()
            .zip(wanted)
            .map(|(d, rule)| {
                d.unwrap_or_else(|| Delivery {
                    target: rule.target.kind,
                    host: String::new(),
                    attempts: 0,
                    status: None,
                    error: Some("the delivery task stopped".into()),
                })
            })
            .collect()
    }

    /// Sends `event` to `target` (URL and secret expanded), retrying transport errors, `408`,
    /// `429`, `5xx` and chat services' error codes with backoff, up to the policy's attempts. Each
    /// attempt is signed anew, since the services refuse old timestamps.
    pub async fn deliver(&self, target: &Target, event: &Event) -> Delivery {
        let host = reqwest::Url::parse(target.url.trim())
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        let mut delivery = Delivery {
            target: target.kind,
            host,
            attempts: 0,
            status: None,
            error: None,
        };
        let mut backoff =
            Backoff::new(self.policy.first_delay, self.policy.max_delay).with_jitter();
        loop {
            let req = match request(target, event, SystemTime::now()) {
                Ok(r) => r,
                Err(e) => {
                    delivery.error = Some(e.to_string());
                    return delivery;
                }
            };
            delivery.attempts += 1;
            let (status, outcome) = self.attempt(target.kind, req).await;
            delivery.status = status.or(delivery.status);
            match outcome {
                Outcome::Delivered => {
                    delivery.error = None;
                    return delivery;
                }
                Outcome::Failed { error, retry } => {
                    delivery.error = Some(error);
                    if !retry || delivery.attempts >= self.policy.attempts.max(1) {
                        return delivery;
                    }
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    async fn attempt(&self, kind: TargetKind, req: crate::Request) -> (Option<u16>, Outcome) {
        let mut post = self
            .client
            .post(req.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(req.body);
        for (name, value) in req.headers {
            post = post.header(name, value);
        }
        let mut answer = match post.send().await {
            Ok(a) => a,
            Err(e) => return (None, Outcome::transport(&e)),
        };
        let status = answer.status();
        let mut body = Vec::new();
        while body.len() < MAX_ANSWER {
            match answer.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => return (Some(status.as_u16()), Outcome::transport(&e)),
            }
        }
        let code = Some(status.as_u16());
        if !status.is_success() {
            let retry = status.is_server_error()
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || status == reqwest::StatusCode::REQUEST_TIMEOUT;
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            let error = format!("HTTP {status}: {}", text.trim());
            return (code, Outcome::Failed { error, retry });
        }
        match service_error(kind, &body) {
            Some(error) => (code, Outcome::Failed { error, retry: true }),
            None => (code, Outcome::Delivered),
        }
    }
}

enum Outcome {
    Delivered,
    Failed { error: String, retry: bool },
}

impl Outcome {
    /// A connection, timeout or body error: worth another attempt. The message leaves the URL out.
    fn transport(e: &reqwest::Error) -> Outcome {
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "cannot connect"
        } else {
            "request failed"
        };
        let mut error = format!("{what}: {}", DisplayChain(e));
        error.truncate(500);
        Outcome::Failed { error, retry: true }
    }
}

/// An error and its sources, `: `-separated, without the URL (`reqwest` puts it in its message).
struct DisplayChain<'a>(&'a reqwest::Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut source = std::error::Error::source(self.0);
        let mut first = true;
        while let Some(s) = source {
            if !first {
                f.write_str(": ")?;
            }
            write!(f, "{s}")?;
            first = false;
            source = s.source();
        }
        if first {
            f.write_str("no details")?;
        }
        Ok(())
    }
}

/// WeCom and DingTalk answer `200` with a non-zero `errcode`, Feishu with a non-zero `code`, when
/// they refuse a message (bad signature, rate limit): that is a failure too.
fn service_error(kind: TargetKind, body: &[u8]) -> Option<String> {
    if !matches!(
        kind,
        TargetKind::Wecom | TargetKind::Dingtalk | TargetKind::Feishu
    ) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let (code, field) = ["errcode", "code", "StatusCode"]
        .iter()
        .find_map(|k| v.get(*k)?.as_i64().map(|c| (c, *k)))?;
    if code == 0 {
        return None;
    }
    let message = ["errmsg", "msg", "StatusMessage"]
        .iter()
        .find_map(|k| v.get(*k)?.as_str())
        .unwrap_or("");
    Some(format!(
        "{} refused the message: {field} {code}: {message}",
        kind.as_str()
    ))
}

/// `target` with `$VARIABLES` in its URL and secret expanded from `values` (resolved variables),
/// as [`Sender::notify`] sends it; for a caller that stores it to send later.
#[must_use]
pub fn expand(target: &Target, values: &HashMap<String, String>) -> Target {
    let get = |k: &str| values.get(k).cloned();
    Target {
        kind: target.kind,
        url: vars::expand(&target.url, &get),
        secret: target.secret.as_ref().map(|s| vars::expand(s, &get)),
    }
}
