//! When measurements fail a verification: Argo Rollouts' analysis semantics, pure.
//!
//! Each check keeps its own [`Tally`]. A check fails the verification as soon as:
//! - its failed measurements exceed `failure_limit` (`failed > failure_limit`), or, for an HTTP
//!   check, `consecutive_failures` bad answers come in a row (its failures are counted that way
//!   only);
//! - its inconclusive measurements exceed `inconclusive_limit`;
//! - its consecutive errors exceed `error_limit` (Argo's `consecutiveErrorLimit`: a measurement that
//!   is not an error resets the count).

use serde::{Deserialize, Serialize};

/// What one measurement says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Within its threshold.
    Pass,
    /// Outside its threshold (or a bad HTTP answer).
    Fail,
    /// No value to judge: an empty result, `NaN`, or a canary without data.
    Inconclusive,
    /// The measurement could not be taken: Prometheus unreachable, or answering an error.
    Error,
}

/// How a check's failed measurements are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureRule {
    /// More than this many failed measurements fail the verification.
    Limit(u32),
    /// This many failed measurements in a row fail it.
    Consecutive(u32),
}

/// The limits of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How failures count.
    pub failures: FailureRule,
    /// Inconclusive measurements tolerated.
    pub inconclusive: u32,
    /// Consecutive errors tolerated.
    pub consecutive_errors: u32,
}

/// The counts of one check's measurements so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Failed measurements.
    pub failed: u32,
    /// Failed measurements since the last one that did not fail.
    pub consecutive_failed: u32,
    /// Inconclusive measurements.
    pub inconclusive: u32,
    /// Errors since the last measurement that was not one.
    pub consecutive_errors: u32,
}

impl Tally {
    /// Counts one measurement.
    pub fn record(&mut self, phase: Phase) {
        self.consecutive_failed = if phase == Phase::Fail {
            self.consecutive_failed + 1
        } else {
            0
        };
        self.consecutive_errors = if phase == Phase::Error {
            self.consecutive_errors + 1
        } else {
            0
        };
        match phase {
            Phase::Fail => self.failed += 1,
            Phase::Inconclusive => self.inconclusive += 1,
            Phase::Pass | Phase::Error => {}
        }
    }

    /// Why the check fails the verification under `limits`, if it does.
    #[must_use]
    pub fn exceeded(&self, limits: &Limits) -> Option<String> {
        match limits.failures {
            FailureRule::Limit(limit) if self.failed > limit => {
                return Some(format!(
                    "failed ({}) > failure_limit ({limit})",
                    self.failed
                ));
            }
            FailureRule::Consecutive(n) if self.consecutive_failed >= n => {
                return Some(format!(
                    "{} consecutive bad answers (consecutive_failures: {n})",
                    self.consecutive_failed
                ));
            }
            _ => {}
        }
        if self.inconclusive > limits.inconclusive {
            return Some(format!(
                "inconclusive ({}) > inconclusive_limit ({})",
                self.inconclusive, limits.inconclusive
            ));
        }
        if self.consecutive_errors > limits.consecutive_errors {
            return Some(format!(
                "consecutive errors ({}) > error_limit ({})",
                self.consecutive_errors, limits.consecutive_errors
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Phase::{Error, Fail, Inconclusive, Pass};

    /// The reason after recording `phases`, or `None`.
    fn after(phases: &[Phase], limits: Limits) -> Option<String> {
        let mut t = Tally::default();
        for p in phases {
            t.record(*p);
        }
        t.exceeded(&limits)
    }

    const ARGO: Limits = Limits {
        failures: FailureRule::Limit(1),
        inconclusive: 1,
        consecutive_errors: 2,
    };

    #[test]
    fn failures_beyond_the_limit_fail() {
        assert_eq!(after(&[Fail, Pass, Pass], ARGO), None);
        assert_eq!(
            after(&[Fail, Pass, Fail], ARGO).as_deref(),
            Some("failed (2) > failure_limit (1)")
        );
        let strict = Limits {
            failures: FailureRule::Limit(0),
            ..ARGO
        };
        assert!(after(&[Pass, Fail], strict).is_some());
    }

    #[test]
    fn inconclusive_beyond_its_limit_fails() {
        assert_eq!(after(&[Inconclusive, Pass], ARGO), None);
        assert_eq!(
            after(&[Inconclusive, Pass, Inconclusive], ARGO).as_deref(),
            Some("inconclusive (2) > inconclusive_limit (1)")
        );
    }

    #[test]
    fn only_consecutive_errors_count() {
        assert_eq!(after(&[Error, Error, Pass, Error, Error], ARGO), None);
        assert_eq!(
            after(&[Error, Error, Error], ARGO).as_deref(),
            Some("consecutive errors (3) > error_limit (2)")
        );
    }

    #[test]
    fn http_checks_fail_after_consecutive_bad_answers() {
        let http = Limits {
            failures: FailureRule::Consecutive(3),
            ..ARGO
        };
        assert_eq!(after(&[Fail, Fail, Pass, Fail, Fail, Pass], http), None);
        assert_eq!(
            after(&[Pass, Fail, Fail, Fail], http).as_deref(),
            Some("3 consecutive bad answers (consecutive_failures: 3)")
        );
    }
}
