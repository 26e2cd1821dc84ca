//! The canary judge, pure: canary against baseline per query, then a weighted score (the method of
//! Spinnaker's Kayenta judge).
//!
//! A query fails when the Mann-Whitney U test finds the canary different at `confidence` (two-sided
//! for `either`, one-sided for `increase` / `decrease`) *and* the relative difference of the means
//! is at least `min_effect` in the direction that counts, so that noise does not fail a deploy. The
//! score is the weighted share of passing queries, in percent, over the queries that had data on both
//! sides: at least `pass_score` passes, at least `marginal_score` is marginal, below fails.

use gantry_pipeline::verify::{Direction, Judge};
use serde::{Deserialize, Serialize};

use crate::stats::{Alternative, mann_whitney_u};

/// One query's comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Whether the canary passes; `None` when a side had no data.
    pub passed: Option<bool>,
    /// The test's p-value.
    pub p: Option<f64>,
    /// `mean(canary) / mean(baseline) - 1` (infinite when only the baseline's mean is 0).
    pub effect: Option<f64>,
}

/// Compares `canary` with `baseline` for a query whose bad direction is `direction`.
#[must_use]
pub fn compare(
    canary: &[f64],
    baseline: &[f64],
    direction: Direction,
    judge: &Judge,
) -> Comparison {
    let alternative = match direction {
        Direction::Increase => Alternative::Greater,
        Direction::Decrease => Alternative::Less,
        Direction::Either => Alternative::TwoSided,
    };
    let Some(test) = mann_whitney_u(canary, baseline, alternative) else {
        return Comparison {
            passed: None,
            p: None,
            effect: None,
        };
    };
    let (c, b) = (mean(canary), mean(baseline));
    let effect = if b == 0.0 {
        if c == 0.0 {
            0.0
        } else {
            f64::INFINITY * c.signum()
        }
    } else {
        c / b - 1.0
    };
    let significant = test.p < 1.0 - judge.confidence;
    let bad_way = match direction {
        Direction::Increase => effect >= judge.min_effect,
        Direction::Decrease => -effect >= judge.min_effect,
        Direction::Either => effect.abs() >= judge.min_effect,
    };
    Comparison {
        passed: Some(!(significant && bad_way)),
        p: Some(test.p),
        effect: Some(effect),
    }
}

#[allow(clippy::cast_precision_loss)]
fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The judge's verdict on a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// At or above `pass_score`.
    Pass,
    /// At or above `marginal_score`: the deploy goes on, with a warning.
    Marginal,
    /// Below `marginal_score`.
    Fail,
    /// No query had data on both sides.
    NoData,
}

/// The weighted score (0 to 100) of `(weight, comparison)` pairs and its verdict; `None` as the
/// score when no comparison had data.
#[must_use]
pub fn score(comparisons: &[(f64, &Comparison)], judge: &Judge) -> (Option<f64>, Verdict) {
    let (mut passed, mut total) = (0.0, 0.0);
    for (weight, c) in comparisons {
        if let Some(ok) = c.passed {
            total += weight;
            if ok {
                passed += weight;
            }
        }
    }
    if total == 0.0 {
        return (None, Verdict::NoData);
    }
    let score = 100.0 * passed / total;
    let verdict = if score >= judge.pass_score {
        Verdict::Pass
    } else if score >= judge.marginal_score {
        Verdict::Marginal
    } else {
        Verdict::Fail
    };
    (Some(score), verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASELINE: [f64; 8] = [0.010, 0.012, 0.011, 0.009, 0.010, 0.013, 0.011, 0.010];

    #[test]
    fn a_real_increase_fails_and_the_same_noise_passes() {
        let j = Judge::default();
        let degraded: Vec<f64> = BASELINE.iter().map(|v| v * 3.0).collect();
        let c = compare(&degraded, &BASELINE, Direction::Increase, &j);
        assert_eq!(c.passed, Some(false), "{c:?}");
        assert!(c.p.unwrap() < 0.05);
        let shuffled = [0.011, 0.010, 0.013, 0.010, 0.009, 0.011, 0.012, 0.010];
        assert_eq!(
            compare(&shuffled, &BASELINE, Direction::Either, &j).passed,
            Some(true)
        );
    }

    #[test]
    fn direction_decides_which_change_counts() {
        let j = Judge::default();
        let higher: Vec<f64> = BASELINE.iter().map(|v| v * 3.0).collect();
        assert_eq!(
            compare(&higher, &BASELINE, Direction::Decrease, &j).passed,
            Some(true)
        );
        assert_eq!(
            compare(&higher, &BASELINE, Direction::Either, &j).passed,
            Some(false)
        );
        assert_eq!(
            compare(&BASELINE, &higher, Direction::Decrease, &j).passed,
            Some(false)
        );
    }

    #[test]
    fn a_significant_but_small_effect_passes() {
        // Every canary value is above every baseline value (p < 0.001), by 2 % only.
        let canary: Vec<f64> = BASELINE.iter().map(|v| v * 1.02 + 0.01).collect();
        let tiny: Vec<f64> = BASELINE.iter().map(|v| v + 100.0).collect();
        let canary_tiny: Vec<f64> = tiny.iter().map(|v| v + 1.0).collect();
        let j = Judge::default();
        assert_eq!(
            compare(&canary, &BASELINE, Direction::Increase, &j).passed,
            Some(false)
        );
        let c = compare(&canary_tiny, &tiny, Direction::Increase, &j);
        assert!(c.p.unwrap() < 0.001, "{c:?}");
        assert_eq!(c.passed, Some(true), "{c:?}");
        let strict = Judge {
            min_effect: 0.0,
            ..j
        };
        assert_eq!(
            compare(&canary_tiny, &tiny, Direction::Increase, &strict).passed,
            Some(false)
        );
    }

    #[test]
    fn score_is_the_weighted_share_of_passing_queries() {
        let j = Judge::default();
        let pass = Comparison {
            passed: Some(true),
            p: Some(0.5),
            effect: Some(0.0),
        };
        let fail = Comparison {
            passed: Some(false),
            ..pass.clone()
        };
        let none = Comparison {
            passed: None,
            p: None,
            effect: None,
        };
        assert_eq!(
            score(&[(1.0, &pass), (1.0, &none)], &j),
            (Some(100.0), Verdict::Pass)
        );
        assert_eq!(
            score(&[(3.0, &pass), (1.0, &fail)], &j),
            (Some(75.0), Verdict::Marginal)
        );
        assert_eq!(
            score(&[(1.0, &pass), (1.0, &fail)], &j),
            (Some(50.0), Verdict::Fail)
        );
        assert_eq!(score(&[(1.0, &none)], &j), (None, Verdict::NoData));
    }
}
