//! The `gate:` keyword's plan types: conditions on report metrics (`coverage: ">= 75"`).
//!
//! This module only parses and holds conditions; `gantry-reports` evaluates them against the
//! summaries of the jobs a gate depends on. A condition is `METRIC: "OPERATOR NUMBER"`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A metric a gate condition can test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Line (or Go statement) coverage in percent, from coverage reports or the jobs' `coverage:` regex.
    Coverage,
    /// Line coverage in percent of the lines the change added or modified.
    NewCoverage,
    /// Failed tests plus tests in error.
    TestsFailed,
    /// All tests.
    TestsTotal,
    /// Skipped tests.
    TestsSkipped,
    /// SARIF results of level `error`.
    SarifErrors,
    /// SARIF results of level `warning`.
    SarifWarnings,
    /// SARIF results of level `note`.
    SarifNotes,
    /// Vulnerabilities of severity `Critical`.
    VulnerabilitiesCritical,
    /// Vulnerabilities of severity `High`.
    VulnerabilitiesHigh,
    /// Vulnerabilities of severity `Medium`.
    VulnerabilitiesMedium,
    /// Vulnerabilities of severity `Low`.
    VulnerabilitiesLow,
    /// Vulnerabilities of severity `Unknown`.
    VulnerabilitiesUnknown,
    /// Code Quality issues of severity `blocker`.
    CodequalityBlocker,
    /// Code Quality issues of severity `critical`.
    CodequalityCritical,
    /// Code Quality issues of severity `major`.
    CodequalityMajor,
    /// Code Quality issues of severity `minor`.
    CodequalityMinor,
    /// Code Quality issues of severity `info`.
    CodequalityInfo,
}

impl Metric {
    /// Every metric, in the order the docs list them.
    pub const ALL: [Metric; 18] = [
        Metric::Coverage,
        Metric::NewCoverage,
        Metric::TestsFailed,
        Metric::TestsTotal,
        Metric::TestsSkipped,
        Metric::SarifErrors,
        Metric::SarifWarnings,
        Metric::SarifNotes,
        Metric::VulnerabilitiesCritical,
        Metric::VulnerabilitiesHigh,
        Metric::VulnerabilitiesMedium,
        Metric::VulnerabilitiesLow,
        Metric::VulnerabilitiesUnknown,
        Metric::CodequalityBlocker,
        Metric::CodequalityCritical,
        Metric::CodequalityMajor,
        Metric::CodequalityMinor,
        Metric::CodequalityInfo,
    ];

    /// The key as written under `gate:`.
    pub fn key(self) -> &'static str {
        match self {
            Metric::Coverage => "coverage",
            Metric::NewCoverage => "new_coverage",
            Metric::TestsFailed => "tests_failed",
            Metric::TestsTotal => "tests_total",
            Metric::TestsSkipped => "tests_skipped",
            Metric::SarifErrors => "sarif_errors",
            Metric::SarifWarnings => "sarif_warnings",
            Metric::SarifNotes => "sarif_notes",
            Metric::VulnerabilitiesCritical => "vulnerabilities_critical",
            Metric::VulnerabilitiesHigh => "vulnerabilities_high",
            Metric::VulnerabilitiesMedium => "vulnerabilities_medium",
            Metric::VulnerabilitiesLow => "vulnerabilities_low",
            Metric::VulnerabilitiesUnknown => "vulnerabilities_unknown",
            Metric::CodequalityBlocker => "codequality_blocker",
            Metric::CodequalityCritical => "codequality_critical",
            Metric::CodequalityMajor => "codequality_major",
            Metric::CodequalityMinor => "codequality_minor",
            Metric::CodequalityInfo => "codequality_info",
        }
    }

    /// The metric named by `key`, if there is one.
    pub fn from_key(key: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.key() == key)
    }

    /// Whether the metric is a percentage (the others are counts).
    pub fn is_percent(self) -> bool {
        matches!(self, Metric::Coverage | Metric::NewCoverage)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// `==`
    #[serde(rename = "==")]
    Eq,
    /// `!=`
    #[serde(rename = "!=")]
    Ne,
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `<=`
    #[serde(rename = "<=")]
    Le,
    /// `>`
    #[serde(rename = ">")]
    Gt,
    /// `>=`
    #[serde(rename = ">=")]
    Ge,
}

impl Op {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    /// Whether `actual OP threshold` holds.
    pub fn holds(self, actual: f64, threshold: f64) -> bool {
        match self {
            Op::Eq => actual == threshold,
            Op::Ne => actual != threshold,
            Op::Lt => actual < threshold,
            Op::Le => actual <= threshold,
            Op::Gt => actual > threshold,
            Op::Ge => actual >= threshold,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

/// One condition of a gate: `metric op threshold` must hold.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// What is measured.
    pub metric: Metric,
    /// How it is compared.
    pub op: Op,
    /// What it is compared with.
    pub threshold: f64,
}

impl Condition {
    /// Parses one `gate:` entry: the key (`coverage`) and its value (`">= 75"`).
    ///
    /// # Errors
    /// An unknown metric (the message lists the known ones), or a value that is not
    /// `OPERATOR NUMBER` (the message shows that form).
    pub fn parse(metric_key: &str, text: &str) -> Result<Condition, String> {
        let Some(metric) = Metric::from_key(metric_key) else {
            let known: Vec<&str> = Metric::ALL.iter().map(|m| m.key()).collect();
            return Err(format!(
                "unknown gate metric `{metric_key}`; known metrics: {}",
                known.join(", ")
            ));
        };
        let malformed = |why: &str| {
            format!(
                "malformed gate condition `{text}` for {metric_key}: {why}; expected `OPERATOR NUMBER` with OPERATOR one of ==, !=, <, <=, >, >= (for example \">= 80\")"
            )
        };
        let t = text.trim();
        let (op, rest) = [
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("<", Op::Lt),
            (">", Op::Gt),
        ]
        .into_iter()
        .find_map(|(s, op)| t.strip_prefix(s).map(|rest| (op, rest)))
        .ok_or_else(|| malformed("no operator"))?;
        let number = rest.trim();
        if number.is_empty() {
            return Err(malformed("no number"));
        }
        let threshold: f64 = number
            .parse()
            .ok()
            .filter(|n: &f64| n.is_finite())
            .ok_or_else(|| malformed(&format!("`{number}` is not a number")))?;
        if threshold < 0.0 {
            return Err(malformed("the number is negative"));
        }
        Ok(Condition {
            metric,
            op,
            threshold,
        })
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.metric, self.op, self.threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_operator() {
        for (text, op) in [
            ("== 0", Op::Eq),
            ("!= 1", Op::Ne),
            ("< 2", Op::Lt),
            ("<= 3", Op::Le),
            ("> 4", Op::Gt),
            (">= 75.5", Op::Ge),
        ] {
            let c = Condition::parse("coverage", text).unwrap();
            assert_eq!(c.op, op, "{text}");
            assert_eq!(c.metric, Metric::Coverage);
        }
        assert_eq!(
            Condition::parse("tests_failed", "==0").unwrap().threshold,
            0.0
        );
        assert_eq!(
            Condition::parse("coverage", "  >=  75.5 ")
                .unwrap()
                .threshold,
            75.5
        );
    }

    #[test]
    fn every_metric_key_round_trips() {
        for m in Metric::ALL {
            assert_eq!(Metric::from_key(m.key()), Some(m));
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.key()));
        }
    }

    #[test]
    fn unknown_metric_lists_the_known_ones() {
        let e = Condition::parse("coverge", ">= 1").unwrap_err();
        assert!(
            e.starts_with(
                "unknown gate metric `coverge`; known metrics: coverage, new_coverage, tests_failed"
            ),
            "{e}"
        );
        assert!(e.ends_with("codequality_info"), "{e}");
    }

    #[test]
    fn malformed_conditions_show_the_expected_form() {
        for (text, why) in [
            ("75", "no operator"),
            (">=", "no number"),
            ("=> 5", "no operator"),
            (">= lots", "`lots` is not a number"),
            ("= 5", "no operator"),
            (">= inf", "`inf` is not a number"),
            (">= -1", "the number is negative"),
        ] {
            let e = Condition::parse("coverage", text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
            assert!(e.contains("expected `OPERATOR NUMBER`"), "{e}");
        }
    }

    #[test]
    fn operators_compare() {
        assert!(Op::Eq.holds(0.0, 0.0) && !Op::Eq.holds(1.0, 0.0));
        assert!(Op::Ne.holds(1.0, 0.0) && !Op::Ne.holds(0.0, 0.0));
        assert!(Op::Lt.holds(1.0, 2.0) && !Op::Lt.holds(2.0, 2.0));
        assert!(Op::Le.holds(2.0, 2.0) && !Op::Le.holds(2.5, 2.0));
        assert!(Op::Gt.holds(3.0, 2.0) && !Op::Gt.holds(2.0, 2.0));
        assert!(Op::Ge.holds(2.0, 2.0) && !Op::Ge.holds(1.9, 2.0));
        assert_eq!(serde_json::to_string(&Op::Ge).unwrap(), "\">=\"");
    }
}
