//! [`Verifier`]: one verification, from the first measurement to its [`Outcome`].
//!
//! Measurements are taken at `interval`, `2 × interval`, … up to `duration` after the start (at
//! least one), each time every check at once. Between them the task sleeps on a tokio timer, so a
//! waiting verification costs nothing. A check that exceeds its limits ends the verification at
//! once. Queries with `compare` are judged once, at the end of the window, over the whole window
//! (`/api/v1/query_range` every `interval`); with `min` / `max` too, their instant measurements are
//! of the canary's selector. The judge measures once per step, so its errors and missing data are
//! not tolerated by `error_limit` (only `inconclusive_limit` applies to a judge without data).

use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use gantry_pipeline::verify::{Direction, HttpCheck, Query, Verify};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use crate::analysis::{FailureRule, Limits, Phase, Tally};
use crate::judge::{self, Comparison, Verdict};
use crate::prometheus::{self, QueryError};
use crate::{Kind, Measurement};

/// How a verification ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every check stayed within its limits, and the canary judge (if any) passed.
    Passed,
    /// As passed, but the canary score was only marginal: go on, with a warning.
    Marginal,
    /// A check exceeded its limits, or the canary judge failed.
    Failed,
    /// The cancel signal came first.
    Canceled,
}

/// The result of one verification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// How it ended.
    pub status: Status,
    /// Why it failed or was marginal: the check and the limit (`error-rate: failed (2) >
    /// failure_limit (1)`).
    pub reason: Option<String>,
    /// The canary score, when there were queries with `compare` and data.
    pub score: Option<f64>,
    /// Every measurement, in the order taken.
    pub measurements: Vec<Measurement>,
}

/// Runs verifications. Cheap to clone; every verification of one process should share one, so that
/// they share the `reqwest::Client`'s connection pool.
#[derive(Clone, Debug)]
pub struct Verifier {
    http: reqwest::Client,
}

/// One check measured at every tick.
enum Check<'a> {
    Query {
        client: prometheus::Client,
        query: &'a Query,
        text: String,
    },
    Http(&'a HttpCheck),
}

impl Verifier {
    /// A verifier over `http`.
    #[must_use]
    pub fn new(http: reqwest::Client) -> Verifier {
        Verifier { http }
    }

    /// Runs the verification `spec` (one step of it: the caller runs the script of each of
    /// `spec.steps`, then this), calling `report` with each measurement as it is taken, until it
    /// ends or `cancel` becomes `true`.
    pub async fn verify<F>(
        &self,
        spec: &Verify,
        mut report: F,
        mut cancel: watch::Receiver<bool>,
    ) -> Outcome
    where
        F: FnMut(&Measurement) + Send,
    {
        let start = Instant::now();
        let wall_start = SystemTime::now();
        let checks = self.checks(spec);
        let limits: Vec<Limits> = checks
            .iter()
            .map(|c| Limits {
                failures: match c {
                    Check::Query { .. } => FailureRule::Limit(spec.failure_limit),
                    Check::Http(h) => FailureRule::Consecutive(h.consecutive_failures),
                },
                inconclusive: spec.inconclusive_limit,
                consecutive_errors: spec.error_limit,
            })
            .collect();
        let mut tallies = vec![Tally::default(); checks.len()];
        let mut out = Outcome {
            status: Status::Passed,
            reason: None,
            score: None,
            measurements: Vec::new(),
        };
        let mut record = |mut m: Measurement, out: &mut Outcome| {
            m.elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            report(&m);
            out.measurements.push(m);
        };
        let ticks = u32::try_from(spec.duration.as_nanos() / spec.interval.as_nanos().max(1))
            .unwrap_or(u32::MAX)
            .max(1);
        for tick in 1..=ticks {
            if !checks.is_empty() {
                tokio::select! {
                    () = sleep_until(start + spec.interval * tick) => {}
                    () = canceled(&mut cancel) => return out.canceled(),
                }
                let taken = tokio::select! {
                    taken = join_all(checks.iter().map(|c| self.measure(c))) => taken,
                    () = canceled(&mut cancel) => return out.canceled(),
                };
                for ((m, tally), limits) in taken.into_iter().zip(&mut tallies).zip(&limits) {
                    tally.record(m.phase);
                    let check = m.check.clone();
                    record(m, &mut out);
                    if let Some(why) = tally.exceeded(limits) {
                        return out.failed(format!("{check}: {why}"));
                    }
                }
            }
        }
        let compared: Vec<&Query> = spec
            .prometheus
            .iter()
            .flat_map(|p| &p.queries)
            .filter(|q| q.compare.is_some())
            .collect();
        if compared.is_empty() {
            return out;
        }
        if checks.is_empty() {
            tokio::select! {
                () = sleep_until(start + spec.duration) => {}
                () = canceled(&mut cancel) => return out.canceled(),
            }
        }
        let judged = tokio::select! {
            judged = self.judge(spec, &compared, wall_start) => judged,
            () = canceled(&mut cancel) => return out.canceled(),
        };
        let (score, verdict, measurements) = judged;
        for m in measurements {
            record(m, &mut out);
        }
        out.score = score;
        let mut tally = Tally::default();
        let last = out.measurements.last().map(|m| m.phase);
        tally.record(last.unwrap_or(Phase::Error));
        let score_limits = Limits {
            failures: FailureRule::Limit(0),
            inconclusive: spec.inconclusive_limit,
            consecutive_errors: 0,
        };
        if let Some(why) = tally.exceeded(&score_limits) {
            return out.failed(format!("canary score: {why}"));
        }
        if verdict == Verdict::Marginal {
            out.status = Status::Marginal;
            out.reason = Some(format!(
                "canary score {:.0} is below pass_score ({})",
                score.unwrap_or_default(),
                spec.judge.pass_score
            ));
        }
        out
    }

    fn checks<'a>(&self, spec: &'a Verify) -> Vec<Check<'a>> {
        let mut checks = Vec::new();
        if let Some(p) = &spec.prometheus {
            let client = self.prometheus(&p.address, spec.interval);
            for q in &p.queries {
                if q.min.is_none() && q.max.is_none() {
                    continue;
                }
                let text = match &q.compare {
                    Some(c) => q.query.replace("$SELECTOR", &c.canary),
                    None => q.query.clone(),
                };
                checks.push(Check::Query {
                    client: client.clone(),
                    query: q,
                    text,
                });
            }
        }
        checks.extend(spec.http.iter().map(Check::Http));
        checks
    }

    /// A client of the server at `address` whose queries give up after an interval (at least 1 s),
    /// so that a slow server does not pile measurements up.
    fn prometheus(&self, address: &str, interval: Duration) -> prometheus::Client {
        let timeout = interval.max(Duration::from_secs(1));
        prometheus::Client::new(self.http.clone(), address, timeout)
    }

    async fn measure(&self, check: &Check<'_>) -> Measurement {
        match check {
            Check::Http(h) => crate::http::probe(&self.http, h).await,
            Check::Query {
                client,
                query,
                text,
            } => {
                let threshold = bounds(query);
                let (phase, value, detail) = match client.instant(text).await {
                    Err(QueryError(e)) => (Phase::Error, None, Some(e)),
                    Ok(v) if v.is_empty() => (
                        Phase::Inconclusive,
                        None,
                        Some("the query's result is empty".into()),
                    ),
                    Ok(v) if v.iter().any(|x| x.is_nan()) => (
                        Phase::Inconclusive,
                        None,
                        Some("the query's result is NaN".into()),
                    ),
                    Ok(v) => {
                        let outside = v.iter().copied().find(|&x| {
                            query.min.is_some_and(|lo| x < lo) || query.max.is_some_and(|hi| x > hi)
                        });
                        match outside {
                            Some(x) => (Phase::Fail, Some(x), None),
                            None => (Phase::Pass, v.first().copied(), None),
                        }
                    }
                };
                Measurement::new(
                    Kind::Prometheus,
                    &query.name,
                    value,
                    threshold,
                    phase,
                    detail,
                )
            }
        }
    }

    /// Each compared query's canary against its baseline over the window from `since`, then the score.
    async fn judge(
        &self,
        spec: &Verify,
        queries: &[&Query],
        since: SystemTime,
    ) -> (Option<f64>, Verdict, Vec<Measurement>) {
        let Some(p) = &spec.prometheus else {
            return (None, Verdict::NoData, Vec::new());
        };
        let client = self.prometheus(&p.address, spec.interval.max(Duration::from_secs(10)));
        let end = SystemTime::now();
        let step = spec.interval;
        let series = |selector: &str, q: &Query| {
            let text = q.query.replace("$SELECTOR", selector);
            let client = &client;
            async move { client.range(&text, since, end, step).await }
        };
        let fetched =
            join_all(
                queries.iter().map(|q| {
                    let c = q
                        .compare
                        .as_ref()
                        .map(|c| (c.canary.as_str(), c.baseline.as_str()));
                    let (canary, baseline) = c.unwrap_or_default();
                    async move {
                        futures_util::future::join(series(canary, q), series(baseline, q)).await
                    }
                }),
            )
            .await;
        let mut measurements = Vec::new();
        let mut comparisons = Vec::new();
        let mut errors = 0;
        for (q, (canary, baseline)) in queries.iter().zip(fetched) {
            let direction = q
                .compare
                .as_ref()
                .map_or(Direction::Either, |c| c.direction);
            let threshold = format!(
                "no {} of {}% or more at {}% confidence",
                match direction {
                    Direction::Increase => "increase",
                    Direction::Decrease => "decrease",
                    Direction::Either => "change",
                },
                spec.judge.min_effect * 100.0,
                spec.judge.confidence * 100.0
            );
            let (canary, baseline) = match (canary, baseline) {
                (Ok(c), Ok(b)) => (c, b),
                (Err(QueryError(e)), _) | (_, Err(QueryError(e))) => {
                    errors += 1;
                    measurements.push(Measurement::new(
                        Kind::Canary,
                        &q.name,
                        None,
                        threshold,
                        Phase::Error,
                        Some(e),
                    ));
                    continue;
                }
            };
            let clean = |v: Vec<f64>| v.into_iter().filter(|x| !x.is_nan()).collect::<Vec<_>>();
            let c = judge::compare(&clean(canary), &clean(baseline), direction, &spec.judge);
            let (phase, detail) = match (c.passed, c.p, c.effect) {
                (Some(ok), Some(p), Some(effect)) => (
                    if ok { Phase::Pass } else { Phase::Fail },
                    format!("p = {p:.4}, canary / baseline - 1 = {effect:.3}"),
                ),
                _ => (
                    Phase::Inconclusive,
                    "no data for the canary or the baseline".to_string(),
                ),
            };
            measurements.push(Measurement::new(
                Kind::Canary,
                &q.name,
                c.effect,
                threshold,
                phase,
                Some(detail),
            ));
            comparisons.push((q.weight, c));
        }
        let pairs: Vec<(f64, &Comparison)> = comparisons.iter().map(|(w, c)| (*w, c)).collect();
        let (score, verdict) = judge::score(&pairs, &spec.judge);
        let phase = match verdict {
            Verdict::Pass | Verdict::Marginal => Phase::Pass,
            Verdict::Fail => Phase::Fail,
            Verdict::NoData if errors == queries.len() => Phase::Error,
            Verdict::NoData => Phase::Inconclusive,
        };
        measurements.push(Measurement::new(
            Kind::Score,
            "canary score",
            score,
            format!(
                ">= {} (marginal >= {})",
                spec.judge.pass_score, spec.judge.marginal_score
            ),
            phase,
            (verdict == Verdict::Marginal).then(|| "marginal".to_string()),
        ));
        (score, verdict, measurements)
    }
}

impl Outcome {
    fn failed(mut self, reason: String) -> Outcome {
        self.status = Status::Failed;
        self.reason = Some(reason);
        self
    }

    fn canceled(mut self) -> Outcome {
        self.status = Status::Canceled;
        self
    }
}

/// A query's bounds as text: `>= 1`, `<= 0.05`, `>= 1 and <= 2`.
fn bounds(q: &Query) -> String {
    match (q.min, q.max) {
        (Some(lo), Some(hi)) => format!(">= {lo} and <= {hi}"),
        (Some(lo), None) => format!(">= {lo}"),
        (None, Some(hi)) => format!("<= {hi}"),
        (None, None) => String::new(),
    }
}

/// Resolves once `cancel` is `true`; never, if its sender is gone without canceling.
async fn canceled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}
