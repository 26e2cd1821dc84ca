//! The Mann-Whitney U test, as `scipy.stats.mannwhitneyu(x, y, alternative, method="asymptotic")`
//! computes it: the normal approximation with the tie correction and the continuity correction.

/// Which difference the test looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alternative {
    /// `x` and `y` differ either way.
    TwoSided,
    /// `x` is stochastically greater than `y`.
    Greater,
    /// `x` is stochastically less than `y`.
    Less,
}

/// A test's result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MannWhitney {
    /// The U statistic of `x` (scipy's `statistic`).
    pub u: f64,
    /// The p-value.
    pub p: f64,
}

/// Tests `x` against `y`; `None` when either is empty. Values that all tie give `p = 1`.
#[must_use]
#[allow(clippy::cast_precision_loss)]
pub fn mann_whitney_u(x: &[f64], y: &[f64], alternative: Alternative) -> Option<MannWhitney> {
    if x.is_empty() || y.is_empty() {
        return None;
    }
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    let n = n1 + n2;
    // Rank the pooled sample, ties getting the mean of their ranks; sum of t^3 - t over tie groups.
    let mut pooled: Vec<(f64, bool)> = x
        .iter()
        .map(|&v| (v, true))
        .chain(y.iter().map(|&v| (v, false)))
        .collect();
    pooled.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut r1, mut tie_term) = (0.0, 0.0);
    let mut i = 0;
    while i < pooled.len() {
        let mut j = i + 1;
        while j < pooled.len() && pooled[j].0 == pooled[i].0 {
            j += 1;
        }
        let t = (j - i) as f64;
        let rank = (i + j + 1) as f64 / 2.0;
        r1 += rank * pooled[i..j].iter().filter(|(_, in_x)| *in_x).count() as f64;
        tie_term += t * t * t - t;
        i = j;
    }
    let u1 = r1 - n1 * (n1 + 1.0) / 2.0;
    let u2 = n1 * n2 - u1;
    let (u, factor) = match alternative {
        Alternative::Greater => (u1, 1.0),
        Alternative::Less => (u2, 1.0),
        Alternative::TwoSided => (u1.max(u2), 2.0),
    };
    let mu = n1 * n2 / 2.0;
    let s = (n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)))).sqrt();
    let z = (u - mu - 0.5) / s;
    // All values tie: s is 0, z is -inf (or NaN for a single pair), and nothing differs.
    let p = if s > 0.0 { normal_sf(z) * factor } else { 1.0 };
    Some(MannWhitney {
        u: u1,
        p: p.clamp(0.0, 1.0),
    })
}

/// The standard normal distribution's survival function, `P(Z > z)`.
fn normal_sf(z: f64) -> f64 {
    0.5 * libm::erfc(z / std::f64::consts::SQRT_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case: x, y, then (alternative, scipy's statistic, scipy's p-value). Computed once with
    /// scipy 1.17.1 in a virtualenv: `scipy.stats.mannwhitneyu(x, y, alternative=ALT,
    /// method="asymptotic", use_continuity=True)`, printing `float(r.statistic)` and
    /// `float(r.pvalue)` with `repr`.
    #[allow(clippy::type_complexity)]
    const SCIPY: &[(&[f64], &[f64], [(Alternative, f64, f64); 3])] = &[
        (
            &[1.0, 2.0, 3.0, 4.0, 5.0],
            &[6.0, 7.0, 8.0, 9.0, 10.0],
            [
                (Alternative::TwoSided, 0.0, 0.012185780355344813),
                (Alternative::Greater, 0.0, 0.9966923245172357),
                (Alternative::Less, 0.0, 0.006092890177672406),
            ],
        ),
        (
            &[1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0, 5.0],
            &[3.0, 3.0, 4.0, 4.0, 5.0, 6.0, 6.0, 7.0, 8.0],
            [
                (Alternative::TwoSided, 10.5, 0.01442744938140461),
                (Alternative::Greater, 10.5, 0.9945251253634712),
                (Alternative::Less, 10.5, 0.007213724690702305),
            ],
        ),
        (
            &[0.012, 0.015, 0.011, 0.013, 0.05, 0.012, 0.014],
            &[0.010, 0.011, 0.011, 0.012, 0.009, 0.013],
            [
                (Alternative::TwoSided, 35.5, 0.04284750549660049),
                (Alternative::Greater, 35.5, 0.021423752748300245),
                (Alternative::Less, 35.5, 0.9849908985653778),
            ],
        ),
        (
            &[5.1, 4.9, 6.2, 5.8, 6.0, 5.5, 5.3, 6.1, 5.9, 5.6, 5.0, 6.3],
            &[5.2, 5.0, 5.4, 4.8, 5.1, 5.3, 4.9, 5.5, 5.0, 4.7],
            [
                (Alternative::TwoSided, 99.0, 0.010947566013861603),
                (Alternative::Greater, 99.0, 0.005473783006930802),
                (Alternative::Less, 99.0, 0.9954789138558795),
            ],
        ),
        (
            &[1.0, 1.0, 1.0],
            &[1.0, 1.0],
            [
                (Alternative::TwoSided, 3.0, 1.0),
                (Alternative::Greater, 3.0, 1.0),
                (Alternative::Less, 3.0, 1.0),
            ],
        ),
    ];

    #[test]
    fn p_values_match_scipy() {
        for (x, y, expected) in SCIPY {
            for (alternative, u, p) in expected {
                let r = mann_whitney_u(x, y, *alternative).unwrap();
                assert_eq!(r.u, *u, "{x:?} {y:?} {alternative:?}");
                assert!(
                    (r.p - p).abs() <= 1e-12 * p.max(1e-300) + 1e-15,
                    "{x:?} {y:?} {alternative:?}: {} instead of {p}",
                    r.p
                );
            }
        }
    }

    #[test]
    fn empty_samples_have_no_result() {
        assert_eq!(mann_whitney_u(&[], &[1.0], Alternative::TwoSided), None);
        assert_eq!(mann_whitney_u(&[1.0], &[], Alternative::Less), None);
    }
}
