//! The `verify:` job keyword's plan types, and their compilation (a Gantry extension, issue 19).
//!
//! After a deploy job's script succeeds, `gantry-release` measures every `interval` for `duration`:
//! Prometheus queries against a `min` and/or a `max`, HTTP checks, and, per progressive step, canary
//! queries (`compare`) judged against their baseline. This module only reads and checks the block;
//! nothing here runs. Strings (addresses, URLs, queries) are kept unexpanded: a URL holding a `$`
//! is checked once the runtime has expanded it with the job's variables.
//!
//! Defaults: `interval` 10 s, `duration` 1 min, `failure_limit` 0 and `inconclusive_limit` 0 (as in
//! Argo Rollouts), `error_limit` 4 consecutive errors (Argo's `consecutiveErrorLimit`), `on_failure:
//! fail`, one step at weight 100, `confidence` 0.95, `min_effect` 0.1, `pass_score` 95 and
//! `marginal_score` 75 (Kayenta's), an HTTP check expecting `200` within 5 s, failing after 3
//! consecutive bad answers.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::diag::{Diags, hint};
use crate::duration;
use crate::yaml::{Map, Node, Value};

/// A job's `verify:` block, with every default filled in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verify {
    /// Time between two measurements.
    pub interval: Duration,
    /// How long measurements go on after each step's script.
    pub duration: Duration,
    /// Failed measurements of one check tolerated; one more fails the verification.
    pub failure_limit: u32,
    /// Inconclusive measurements (an empty answer) of one check tolerated.
    pub inconclusive_limit: u32,
    /// Consecutive errors (Prometheus unreachable or answering an error) of one check tolerated.
    pub error_limit: u32,
    /// `prometheus:` queries, if any.
    pub prometheus: Option<Prometheus>,
    /// `http:` checks.
    pub http: Vec<HttpCheck>,
    /// What a failed verification does.
    pub on_failure: OnFailure,
    /// Progressive steps: the weights, ascending, the last 100 (`[100]` when not given).
    pub steps: Vec<u8>,
    /// The canary judge's settings, for queries with `compare`.
    pub judge: Judge,
}

impl Default for Verify {
    fn default() -> Verify {
        Verify {
            interval: Duration::from_secs(10),
            duration: Duration::from_secs(60),
            failure_limit: 0,
            inconclusive_limit: 0,
            error_limit: 4,
            prometheus: None,
            http: Vec::new(),
            on_failure: OnFailure::Fail,
            steps: vec![100],
            judge: Judge::default(),
        }
    }
}

/// `verify:prometheus`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prometheus {
    /// The server's base URL (`http://127.0.0.1:9090`), unexpanded.
    pub address: String,
    /// The queries.
    pub queries: Vec<Query>,
}

/// One Prometheus query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// Its name, unique in the block: the measurement's check.
    pub name: String,
    /// PromQL; with `compare`, `$SELECTOR` stands for each selector in turn.
    pub query: String,
    /// Each sample must be at least this.
    pub min: Option<f64>,
    /// Each sample must be at most this.
    pub max: Option<f64>,
    /// Canary against baseline, judged once per step.
    pub compare: Option<Compare>,
    /// The query's weight in the canary score (1 unless given).
    pub weight: f64,
}

/// `compare:` of a query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The label selector of the canary's series.
    pub canary: String,
    /// The label selector of the baseline's series.
    pub baseline: String,
    /// Which change of the canary is a failure.
    pub direction: Direction,
}

/// Which difference between canary and baseline fails a comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The canary being higher (an error rate, a latency).
    Increase,
    /// The canary being lower (a success rate, a throughput).
    Decrease,
    /// Either.
    Either,
}

/// One `http:` check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpCheck {
    /// The URL to `GET`, unexpanded.
    pub url: String,
    /// The status a good answer has.
    pub expect_status: u16,
    /// Bad answers (or timeouts) in a row that fail the verification.
    pub consecutive_failures: u32,
    /// How long an answer may take.
    pub timeout: Duration,
}

/// `GANTRY_ROLLBACK`: `true` in a job that rolls a deployment back.
pub const ROLLBACK: &str = "GANTRY_ROLLBACK";
/// `GANTRY_ROLLBACK_FROM`: the id of the deployment being rolled back.
pub const ROLLBACK_FROM: &str = "GANTRY_ROLLBACK_FROM";
/// `GANTRY_ROLLBACK_TO`: the id of the deployment re-deployed.
pub const ROLLBACK_TO: &str = "GANTRY_ROLLBACK_TO";
/// `GANTRY_DEPLOY_WEIGHT`: a progressive step's weight while a verified job's script runs.
pub const DEPLOY_WEIGHT: &str = "GANTRY_DEPLOY_WEIGHT";

/// Turns `job`, the deploy job of deployment `to` (as that deployment ran it: its commit's
/// definition), into the job that rolls deployment `from` back to it, as GitLab's re-deploy:
/// - its script is `rollback_script` (the rolled-back job's, when that has one) or its own;
/// - it runs whole at once, unverified (`to` was verified when it was deployed): no `verify`,
///   `GANTRY_DEPLOY_WEIGHT=100`, and a rollback never starts another rollback;
/// - it sees `GANTRY_ROLLBACK=true`, `GANTRY_ROLLBACK_FROM` and `GANTRY_ROLLBACK_TO`;
/// - it runs even if the job was manual or delayed.
pub fn into_rollback(
    job: &mut crate::plan::Job,
    from: &str,
    to: &str,
    rollback_script: Option<&[String]>,
) {
    use crate::plan::{Variable, When};
    if let Some(script) = rollback_script.filter(|s| !s.is_empty()) {
        job.script = script.to_vec();
    }
    job.verify = None;
    job.rollback_script = Vec::new();
    job.when = When::OnSuccess;
    job.start_in = None;
    let set = [
        (ROLLBACK, "true"),
        (ROLLBACK_FROM, from),
        (ROLLBACK_TO, to),
        (DEPLOY_WEIGHT, "100"),
    ];
    job.variables
        .retain(|v| !set.iter().any(|(k, _)| *k == v.key));
    job.variables.extend(set.into_iter().map(|(k, v)| Variable {
        expand: false,
        ..Variable::new(k, v)
    }));
}

/// `verify:on_failure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Re-deploy the last successful deployment (or run `rollback_script`).
    Rollback,
    /// Fail the job and the deployment, and do nothing else.
    Fail,
}

/// The canary judge's settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judge {
    /// The Mann-Whitney U test's confidence: a difference counts when `p < 1 - confidence`.
    pub confidence: f64,
    /// The smallest relative difference of the means that counts (0.1: 10 %).
    pub min_effect: f64,
    /// A score (0 to 100) at or above which the step passes.
    pub pass_score: f64,
    /// A score at or above which the step is marginal (it goes on, with a warning).
    pub marginal_score: f64,
}

impl Default for Judge {
    fn default() -> Judge {
        Judge {
            confidence: 0.95,
            min_effect: 0.1,
            pass_score: 95.0,
            marginal_score: 75.0,
        }
    }
}

const VERIFY_KEYS: &[&str] = &[
    "interval",
    "duration",
    "failure_limit",
    "inconclusive_limit",
    "error_limit",
    "prometheus",
    "http",
    "on_failure",
    "steps",
    "confidence",
    "min_effect",
    "pass_score",
    "marginal_score",
];
const PROMETHEUS_KEYS: &[&str] = &["address", "queries"];
const QUERY_KEYS: &[&str] = &["name", "query", "min", "max", "compare", "weight"];
const COMPARE_KEYS: &[&str] = &["canary", "baseline", "direction"];
const HTTP_KEYS: &[&str] = &["url", "expect_status", "consecutive_failures", "timeout"];

/// Compiles job `job`'s `verify:` value `n`, reporting what is wrong to `diags`. `has_environment`
/// says whether the job has an `environment` (which `on_failure: rollback` needs). `None` when the
/// block has errors.
pub(crate) fn compile(
    n: &Node,
    job: &str,
    has_environment: bool,
    diags: &mut Diags,
) -> Option<Verify> {
    let errors = diags.list.len();
    let mut r = Reader { job, diags };
    let verify = r.verify(n, has_environment);
    (r.diags.list.len() == errors).then_some(verify).flatten()
}

struct Reader<'a> {
    job: &'a str,
    diags: &'a mut Diags,
}

impl Reader<'_> {
    fn error(&mut self, n: &Node, message: String) {
        self.diags
            .error(n.pos, format!("`{}`: {message}", self.job));
    }

    /// `n` as a mapping whose keys are all in `known`; unknown keys are reported at the key.
    fn map<'n>(&mut self, n: &'n Node, known: &[&str], what: &str) -> Option<&'n Map> {
        let Some(m) = n.as_map() else {
            self.error(n, format!("`{what}` must be a mapping, not {}", a_kind(n)));
            return None;
        };
        for e in &m.entries {
            if !known.contains(&e.key.as_str()) {
                let why = hint(&e.key, known);
                self.diags.error(
                    e.key_pos,
                    format!("`{}`: unknown `{what}` keyword `{}`{why}", self.job, e.key),
                );
            }
        }
        Some(m)
    }

    fn verify(&mut self, n: &Node, has_environment: bool) -> Option<Verify> {
        let m = self.map(n, VERIFY_KEYS, "verify")?;
        let mut v = Verify::default();
        if let Some(x) = m.get("interval") {
            v.interval = self.duration(x, "verify:interval").unwrap_or(v.interval);
        }
        if let Some(x) = m.get("duration") {
            v.duration = self.duration(x, "verify:duration").unwrap_or(v.duration);
        }
        if v.interval > v.duration {
            let at = m.get("interval").or(m.get("duration")).unwrap_or(n);
            self.error(
                at,
                format!(
                    "`verify:interval` ({}s) is longer than `verify:duration` ({}s)",
                    v.interval.as_secs(),
                    v.duration.as_secs()
                ),
            );
        }
        for (key, field) in [
            ("failure_limit", &mut v.failure_limit),
            ("inconclusive_limit", &mut v.inconclusive_limit),
            ("error_limit", &mut v.error_limit),
        ] {
            if let Some(x) = m.get(key) {
                *field = self.count(x, &format!("verify:{key}"), 0).unwrap_or(*field);
            }
        }
        if let Some(x) = m.get("prometheus") {
            v.prometheus = self.prometheus(x);
        }
        if let Some(x) = m.get("http") {
            v.http = self.http(x);
        }
        if m.get("prometheus").is_none() && m.get("http").is_none() {
            self.error(
                n,
                "`verify` needs at least one check: `prometheus` queries or `http` checks".into(),
            );
        }
        if let Some(x) = m.get("on_failure") {
            match x.as_str() {
                Some("rollback") => v.on_failure = OnFailure::Rollback,
                Some("fail") => v.on_failure = OnFailure::Fail,
                _ => self.error(
                    x,
                    format!(
                        "`verify:on_failure` must be `rollback` or `fail`, not {}",
                        shown(x)
                    ),
                ),
            }
            if v.on_failure == OnFailure::Rollback && !has_environment {
                self.error(
                    x,
                    "`verify:on_failure: rollback` needs an `environment` to roll back".into(),
                );
            }
        }
        if let Some(x) = m.get("steps") {
            v.steps = self.steps(x);
        }
        self.judge(m, &mut v.judge);
        Some(v)
    }

    fn judge(&mut self, m: &Map, j: &mut Judge) {
        if let Some(x) = m.get("confidence") {
            match self.number(x, "verify:confidence") {
                Some(c) if c > 0.0 && c < 1.0 => j.confidence = c,
                Some(_) => self.error(
                    x,
                    "`verify:confidence` must be between 0 and 1 (for example 0.95)".into(),
                ),
                None => {}
            }
        }
        if let Some(x) = m.get("min_effect") {
            match self.number(x, "verify:min_effect") {
                Some(e) if e >= 0.0 => j.min_effect = e,
                Some(_) => self.error(x, "`verify:min_effect` must not be negative".into()),
                None => {}
            }
        }
        for (key, field) in [
            ("pass_score", &mut j.pass_score),
            ("marginal_score", &mut j.marginal_score),
        ] {
            if let Some(x) = m.get(key) {
                match self.number(x, &format!("verify:{key}")) {
                    Some(s) if (0.0..=100.0).contains(&s) => *field = s,
                    Some(_) => self.error(x, format!("`verify:{key}` must be between 0 and 100")),
                    None => {}
                }
            }
        }
        if j.marginal_score > j.pass_score {
            let at = m.get("marginal_score").or(m.get("pass_score"));
            if let Some(at) = at {
                self.error(
                    at,
                    format!(
                        "`verify:marginal_score` ({}) is above `verify:pass_score` ({})",
                        j.marginal_score, j.pass_score
                    ),
                );
            }
        }
    }

    fn prometheus(&mut self, n: &Node) -> Option<Prometheus> {
        let m = self.map(n, PROMETHEUS_KEYS, "verify:prometheus")?;
        let address = match m.get("address") {
            Some(a) => self.url(a, "verify:prometheus:address"),
            None => {
                self.error(n, "`verify:prometheus` needs an `address`".into());
                None
            }
        };
        let mut queries = Vec::new();
        match m.get("queries") {
            Some(Node {
                value: Value::Seq(items),
                ..
            }) if !items.is_empty() => {
                for item in items {
                    if let Some(q) = self.query(item) {
                        if queries.iter().any(|o: &Query| o.name == q.name) {
                            let at = item.as_map().and_then(|m| m.get("name")).unwrap_or(item);
                            self.error(
                                at,
                                format!("`verify:prometheus:queries`: `{}` is named twice", q.name),
                            );
                        }
                        queries.push(q);
                    }
                }
            }
            Some(q) => self.error(
                q,
                format!(
                    "`verify:prometheus:queries` must be a non-empty array of queries, not {}",
                    a_kind(q)
                ),
            ),
            None => self.error(n, "`verify:prometheus` needs `queries`".into()),
        }
        Some(Prometheus {
            address: address?,
            queries,
        })
    }

    fn query(&mut self, n: &Node) -> Option<Query> {
        let m = self.map(n, QUERY_KEYS, "verify:prometheus:queries")?;
        let name = self.required_str(n, m, "name", "a query");
        let query = self.required_str(n, m, "query", "a query");
        let min = m.get("min").and_then(|x| self.number(x, "min"));
        let max = m.get("max").and_then(|x| self.number(x, "max"));
        if let (Some(lo), Some(hi)) = (min, max) {
            if lo > hi {
                self.error(
                    m.get("min").unwrap_or(n),
                    format!("`min` ({lo}) is above `max` ({hi})"),
                );
            }
        }
        let compare = m.get("compare").and_then(|c| self.compare(c));
        if !m.contains("min") && !m.contains("max") && !m.contains("compare") {
            self.error(
                n,
                format!(
                    "query `{}` needs a `min`, a `max` or a `compare`",
                    name.as_deref().unwrap_or("?")
                ),
            );
        }
        if let (Some(_), Some(q)) = (&compare, &query) {
            if !q.contains("$SELECTOR") {
                self.error(
                    m.get("query").unwrap_or(n),
                    "a query with `compare` must hold `$SELECTOR`, which each selector replaces"
                        .into(),
                );
            }
        }
        let mut weight = 1.0;
        if let Some(x) = m.get("weight") {
            match self.number(x, "weight") {
                Some(w) if w > 0.0 => weight = w,
                Some(_) => self.error(x, "`weight` must be above 0".into()),
                None => {}
            }
        }
        Some(Query {
            name: name?,
            query: query?,
            min,
            max,
            compare,
            weight,
        })
    }

    fn compare(&mut self, n: &Node) -> Option<Compare> {
        let m = self.map(n, COMPARE_KEYS, "compare")?;
        let canary = self.required_str(n, m, "canary", "`compare`");
        let baseline = self.required_str(n, m, "baseline", "`compare`");
        let direction = match m.get("direction") {
            None => Some(Direction::Either),
            Some(x) => match x.as_str() {
                Some("increase") => Some(Direction::Increase),
                Some("decrease") => Some(Direction::Decrease),
                Some("either") => Some(Direction::Either),
                _ => {
                    self.error(
                        x,
                        format!(
                            "`compare:direction` must be `increase`, `decrease` or `either`, not {}",
                            shown(x)
                        ),
                    );
                    None
                }
            },
        };
        Some(Compare {
            canary: canary?,
            baseline: baseline?,
            direction: direction?,
        })
    }

    fn http(&mut self, n: &Node) -> Vec<HttpCheck> {
        let items = match n.as_seq() {
            Some(items) if !items.is_empty() => items,
            _ => {
                self.error(
                    n,
                    format!(
                        "`verify:http` must be a non-empty array of checks, not {}",
                        a_kind(n)
                    ),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for c in items {
            let Some(m) = self.map(c, HTTP_KEYS, "verify:http") else {
                continue;
            };
            let url = match m.get("url") {
                Some(u) => self.url(u, "verify:http:url"),
                None => {
                    self.error(c, "an `http` check needs a `url`".into());
                    None
                }
            };
            let mut check = HttpCheck {
                url: String::new(),
                expect_status: 200,
                consecutive_failures: 3,
                timeout: Duration::from_secs(5),
            };
            if let Some(x) = m.get("expect_status") {
                match self.count(x, "expect_status", 100) {
                    Some(s @ 100..=599) => check.expect_status = u16::try_from(s).unwrap_or(200),
                    Some(_) => self.error(
                        x,
                        "`expect_status` must be an HTTP status, from 100 to 599".into(),
                    ),
                    None => {}
                }
            }
            if let Some(x) = m.get("consecutive_failures") {
                check.consecutive_failures = self
                    .count(x, "consecutive_failures", 1)
                    .unwrap_or(check.consecutive_failures);
            }
            if let Some(x) = m.get("timeout") {
                check.timeout = self.duration(x, "timeout").unwrap_or(check.timeout);
            }
            if let Some(url) = url {
                check.url = url;
                out.push(check);
            }
        }
        out
    }

    fn steps(&mut self, n: &Node) -> Vec<u8> {
        let default = vec![100];
        let Some(items) = n.as_seq().filter(|s| !s.is_empty()) else {
            self.error(
                n,
                format!(
                    "`verify:steps` must be a non-empty array of weights such as [10, 50, 100], not {}",
                    a_kind(n)
                ),
            );
            return default;
        };
        let mut out: Vec<u8> = Vec::new();
        for x in items {
            let w = match x.value {
                Value::Int(i) if (1..=100).contains(&i) => u8::try_from(i).unwrap_or(100),
                _ => {
                    self.error(
                        x,
                        format!(
                            "a `verify:steps` weight must be an integer from 1 to 100, not {}",
                            shown(x)
                        ),
                    );
                    return default;
                }
            };
            if out.last().is_some_and(|&last| w <= last) {
                self.error(x, "`verify:steps` must be in ascending order".into());
                return default;
            }
            out.push(w);
        }
        if out.last() != Some(&100) {
            let last = items.last().unwrap_or(n);
            self.error(last, "`verify:steps` must end at 100".into());
            return default;
        }
        out
    }

    fn required_str(&mut self, n: &Node, m: &Map, key: &str, what: &str) -> Option<String> {
        match m.get(key) {
            Some(x) => match x.as_str() {
                Some(s) if !s.trim().is_empty() => Some(s.to_string()),
                _ => {
                    self.error(
                        x,
                        format!("`{key}` must be a non-empty string, not {}", shown(x)),
                    );
                    None
                }
            },
            None => {
                self.error(n, format!("{what} needs `{key}`"));
                None
            }
        }
    }

    fn duration(&mut self, n: &Node, key: &str) -> Option<Duration> {
        let parsed = match &n.value {
            Value::Str(s) => duration::parse(s),
            Value::Int(i) => u64::try_from(*i)
                .map(Duration::from_secs)
                .map_err(|_| format!("`{i}` is not a duration")),
            _ => Err(format!("must be a duration, not {}", a_kind(n))),
        };
        match parsed {
            Ok(d) if d.is_zero() => {
                self.error(n, format!("invalid `{key}`: it must be longer than 0s"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error(n, format!("invalid `{key}`: {e}"));
                None
            }
        }
    }

    /// A whole number at least `min`.
    fn count(&mut self, n: &Node, key: &str, min: u32) -> Option<u32> {
        match n.value {
            Value::Int(i) if i >= i64::from(min) => u32::try_from(i).ok(),
            _ => {
                self.error(
                    n,
                    format!(
                        "`{key}` must be an integer of at least {min}, not {}",
                        shown(n)
                    ),
                );
                None
            }
        }
    }

    fn number(&mut self, n: &Node, key: &str) -> Option<f64> {
        match n.value {
            #[allow(clippy::cast_precision_loss)]
            Value::Int(i) => Some(i as f64),
            Value::Float(f) if f.is_finite() => Some(f),
            _ => {
                self.error(n, format!("`{key}` must be a number, not {}", shown(n)));
                None
            }
        }
    }

    /// An `http://` or `https://` URL with a host; one holding a variable is checked after expansion.
    fn url(&mut self, n: &Node, key: &str) -> Option<String> {
        let Some(s) = n.as_str() else {
            self.error(n, format!("`{key}` must be a URL, not {}", a_kind(n)));
            return None;
        };
        if s.contains('$') {
            return Some(s.to_string());
        }
        let rest = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"));
        let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
        let host_ok = host.is_some_and(|h| {
            let h = h.rsplit('@').next().unwrap_or_default();
            // `[::1]:9090`, `host:9090`, `host`
            let (name, port) = match h.strip_prefix('[') {
                Some(v6) => match v6.split_once(']') {
                    Some((name, rest)) => (name, rest.strip_prefix(':')),
                    None => ("", None),
                },
                None => match h.split_once(':') {
                    Some((name, port)) => (name, Some(port)),
                    None => (h, None),
                },
            };
            !name.is_empty() && port.is_none_or(|p| p.parse::<u16>().is_ok())
        });
        if !host_ok || s.chars().any(char::is_whitespace) {
            self.error(
                n,
                format!("`{key}` must be an http:// or https:// URL with a host, not `{s}`"),
            );
            return None;
        }
        Some(s.to_string())
    }
}

/// The kind of a node with its article, for messages: `a string`, `an array`, `null`.
fn a_kind(n: &Node) -> String {
    match n.kind() {
        "null" => "null".into(),
        "array" => "an array".into(),
        k => format!("a {k}"),
    }
}

/// A value for a message: a string in backquotes, else its kind.
fn shown(n: &Node) -> String {
    match &n.value {
        Value::Str(s) => format!("`{s}`"),
        Value::Int(i) => format!("`{i}`"),
        Value::Float(f) => format!("`{f}`"),
        _ => a_kind(n),
    }
}
