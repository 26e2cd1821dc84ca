//! A deploy job's `verify:` (issue 19), the parts that need no job: the shared [`Verifier`], the
//! expansion of its URLs, one verification bounded by the job's deadline, and the messages. The
//! progression (the script once per step with `GANTRY_DEPLOY_WEIGHT`, then a verification) is
//! `job.rs`'s `verified_steps`.
//!
//! One [`Verifier`], so one HTTP client and its connection pool, serves every verification of the
//! process while any run uses it: all jobs of a `gantry run`, all jobs of an agent's workers.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use gantry_pipeline::vars;
use gantry_pipeline::verify::Verify;
use gantry_release::{Measurement, Outcome, Status, Verifier};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use crate::mask::Masker;

/// The variable holding the progressive step's weight while a verified job's script runs.
pub(crate) const WEIGHT: &str = gantry_pipeline::verify::DEPLOY_WEIGHT;

/// The verifier of every run of this process that verifies, made by the first that needs it.
static SHARED: Mutex<Weak<Verifier>> = Mutex::new(Weak::new());

/// The shared verifier (see the module docs), or why no HTTP client can be made.
pub(crate) fn shared() -> Result<Arc<Verifier>, String> {
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(v) = shared.upgrade() {
        return Ok(v);
    }
    let client = reqwest::Client::builder()
        .build()
        .map_err(|e| format!("cannot make the verification's HTTP client: {e}"))?;
    let v = Arc::new(Verifier::new(client));
    *shared = Arc::downgrade(&v);
    Ok(v)
}

/// One verification of `spec`, reporting each measurement, until it ends, `cancel` becomes `true`
/// (its status is then `Canceled`) or `deadline` comes (`None`).
pub(crate) async fn verify(
    verifier: &Verifier,
    spec: &Verify,
    report: impl FnMut(&Measurement) + Send,
    cancel: watch::Receiver<bool>,
    deadline: Instant,
) -> Option<Outcome> {
    tokio::select! {
        outcome = verifier.verify(spec, report, cancel) => Some(outcome),
        () = sleep_until(deadline) => None,
    }
}

/// The line that starts a verification: `verifying at weight 10: 2 checks every 5s for 1m`.
pub(crate) fn starting(spec: &Verify, at: &str, human: impl Fn(Duration) -> String) -> String {
    let checks = spec.prometheus.as_ref().map_or(0, |p| p.queries.len()) + spec.http.len();
    format!(
        "verifying{at}: {checks} check{} every {} for {}",
        if checks == 1 { "" } else { "s" },
        human(spec.interval),
        human(spec.duration)
    )
}

/// What an ended verification (not canceled) means for the job: `Ok` with the line that says it
/// passed (or was marginal, and goes on), `Err` with the job's error line.
pub(crate) fn judged(outcome: &Outcome, at: &str) -> Result<String, String> {
    match outcome.status {
        Status::Passed | Status::Canceled => Ok(format!(
            "verification passed{at} ({} measurements)",
            outcome.measurements.len()
        )),
        Status::Marginal => Ok(format!(
            "warning: verification marginal{at}: {}; going on",
            outcome.reason.as_deref().unwrap_or("no reason given")
        )),
        Status::Failed => Err(failure(outcome, at)),
    }
}

/// `m` with its free text masked.
pub(crate) fn masked(masker: &Masker, m: &Measurement) -> Measurement {
    Measurement {
        check: masker.mask(&m.check).into_owned(),
        threshold: masker.mask(&m.threshold).into_owned(),
        detail: m.detail.as_deref().map(|d| masker.mask(d).into_owned()),
        ..m.clone()
    }
}

/// Sets (or replaces) `GANTRY_DEPLOY_WEIGHT` in `env`.
pub(crate) fn set_weight(env: &mut Vec<(String, String)>, weight: u8) {
    env.retain(|(k, _)| k != WEIGHT);
    env.push((WEIGHT.to_string(), weight.to_string()));
}

/// `spec` with its Prometheus address and HTTP URLs expanded with `env` (queries are not: their
/// `$SELECTOR` is the verifier's).
pub(crate) fn expanded(spec: &Verify, env: &[(String, String)]) -> Verify {
    let look = |n: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    let mut spec = spec.clone();
    if let Some(p) = &mut spec.prometheus {
        p.address = vars::expand(&p.address, &look);
    }
    for h in &mut spec.http {
        h.url = vars::expand(&h.url, &look);
    }
    spec
}

/// Checks the expanded URLs as `gantry lint` checks those without variables.
pub(crate) fn check_urls(spec: &Verify) -> Result<(), String> {
    let address = spec
        .prometheus
        .as_ref()
        .map(|p| ("prometheus:address", &p.address));
    let urls = spec.http.iter().map(|h| ("http:url", &h.url));
    for (key, url) in address.into_iter().chain(urls) {
        let ok = reqwest::Url::parse(url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !ok {
            return Err(format!(
                "`verify:{key}` expands to `{url}`, which is not an http:// or https:// URL with a host"
            ));
        }
    }
    Ok(())
}

/// The job's error line of a failed verification: the check, its value against its threshold,
/// and the limit it crossed.
fn failure(outcome: &Outcome, at: &str) -> String {
    let reason = outcome.reason.as_deref().unwrap_or("failed");
    // A verification fails at the measurement that crossed a limit: its last.
    let last = outcome
        .measurements
        .last()
        .filter(|m| reason.starts_with(&format!("{}: ", m.check)));
    match last {
        Some(m) => {
            let why = &reason[m.check.len() + 2..];
            format!(
                "verification failed{at}: {} = {} against {} ({why})",
                m.check,
                value(m),
                m.threshold
            )
        }
        None => format!("verification failed{at}: {reason}"),
    }
}

/// A measurement's value as text: `0.0123`, `503`, `no value`.
fn value(m: &Measurement) -> String {
    match m.value {
        None => "no value".to_string(),
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{x:.0}"),
        Some(x) => {
            let s = format!("{x:.4}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            if s == "0" || s == "-0" {
                format!("{x:.3e}")
            } else {
                s.to_string()
            }
        }
    }
}

/// One measurement as a log line: `verify at weight 10: error-rate = 0.0123 against <= 0.05: pass`
/// (`weight` when the job has progressive steps), with why it did not pass when it did not.
#[must_use]
pub fn measurement_line(m: &Measurement, weight: Option<u8>) -> String {
    let phase = match m.phase {
        gantry_release::Phase::Pass => "pass",
        gantry_release::Phase::Fail => "FAIL",
        gantry_release::Phase::Inconclusive => "inconclusive",
        gantry_release::Phase::Error => "error",
    };
    let at = weight
        .map(|w| format!(" at weight {w}"))
        .unwrap_or_default();
    let mut line = format!(
        "verify{at}: {} = {} against {}: {phase}",
        m.check,
        value(m),
        m.threshold
    );
    if let Some(d) = &m.detail {
        line.push_str(&format!(" ({d})"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(check: &str, v: Option<f64>, passed: bool) -> Measurement {
        Measurement {
            kind: gantry_release::Kind::Prometheus,
            check: check.into(),
            value: v,
            threshold: "<= 0.05".into(),
            passed,
            phase: if passed {
                gantry_release::Phase::Pass
            } else {
                gantry_release::Phase::Fail
            },
            detail: None,
            elapsed_ms: 0,
        }
    }

    #[test]
    fn a_failure_names_the_check_its_value_and_threshold() {
        let outcome = Outcome {
            status: Status::Failed,
            reason: Some("error-rate: failed (1) > failure_limit (0)".into()),
            score: None,
            measurements: vec![
                m("error-rate", Some(0.012), true),
                m("error-rate", Some(0.12), false),
            ],
        };
        assert_eq!(
            failure(&outcome, " at weight 10"),
            "verification failed at weight 10: error-rate = 0.12 against <= 0.05 (failed (1) > failure_limit (0))"
        );
        assert_eq!(
            measurement_line(&outcome.measurements[0], None),
            "verify: error-rate = 0.012 against <= 0.05: pass"
        );
        assert_eq!(value(&m("x", Some(0.000_012), true)), "1.200e-5");
        assert_eq!(value(&m("x", Some(503.0), true)), "503");
    }

    #[test]
    fn verifications_share_one_verifier_while_one_is_in_use() {
        let a = shared().unwrap();
        let b = shared().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        assert!(
            SHARED.lock().unwrap().upgrade().is_none(),
            "dropped with its last user"
        );
    }

    #[test]
    fn urls_are_expanded_and_queries_are_not() {
        let mut spec = Verify {
            prometheus: Some(gantry_pipeline::verify::Prometheus {
                address: "http://$HOST:9090".into(),
                queries: vec![gantry_pipeline::verify::Query {
                    name: "q".into(),
                    query: "up{$SELECTOR}".into(),
                    min: Some(1.0),
                    max: None,
                    compare: None,
                    weight: 1.0,
                }],
            }),
            ..Verify::default()
        };
        spec.http.push(gantry_pipeline::verify::HttpCheck {
            url: "http://${HOST}/healthz/$GANTRY_DEPLOY_WEIGHT".into(),
            expect_status: 200,
            consecutive_failures: 3,
            timeout: Duration::from_secs(5),
        });
        let mut env = vec![("HOST".to_string(), "127.0.0.1".to_string())];
        set_weight(&mut env, 10);
        set_weight(&mut env, 50);
        let e = expanded(&spec, &env);
        let p = e.prometheus.as_ref().unwrap();
        assert_eq!(p.address, "http://127.0.0.1:9090");
        assert_eq!(p.queries[0].query, "up{$SELECTOR}");
        assert_eq!(e.http[0].url, "http://127.0.0.1/healthz/50");
        assert!(check_urls(&e).is_ok());
        let bad = expanded(&spec, &[]);
        assert_eq!(
            check_urls(&bad).unwrap_err(),
            "`verify:prometheus:address` expands to `http://:9090`, which is not an http:// or https:// URL with a host"
        );
    }
}
