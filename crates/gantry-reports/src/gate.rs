//! Evaluating a gate's conditions against merged reports, and the table `gantry run` prints.
//!
//! *Missing data fails.* A condition whose metric has no report behind it fails with "no data";
//! it never passes silently.
//!
//! *Coverage on new code* is the line coverage of the lines the change added or modified
//! ([`ChangedLines`]): covered / coverable, where a changed line is coverable when a coverage
//! report lists it (blank lines, comments and files without coverage data are not). It needs both
//! coverage reports and the change; without either it is "no data" and fails. When the change
//! has no coverable line (documentation, configuration), the condition passes as "nothing to
//! cover", as SonarQube does not apply coverage conditions on new code without new lines to cover.
//! (SonarQube also skips them for changes under 20 lines by default; Gantry does not.)

use std::fmt::Write as _;

use gantry_pipeline::gate::{Condition, Metric, Op};
use serde::{Deserialize, Serialize};

use crate::codequality::Severity as CqSeverity;
use crate::coverage::percent;
use crate::diff::ChangedLines;
use crate::sarif::Level;
use crate::security::Severity;
use crate::summary::Reports;

/// How many offenders of each kind the outcome lists.
pub const MAX_OFFENDERS: usize = 20;

/// What a condition found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The condition holds.
    Ok,
    /// The condition does not hold.
    Failed,
    /// No report gave the metric: fails.
    NoData,
    /// `new_coverage` on a change without coverable lines: passes.
    NothingToCover,
}

impl Verdict {
    /// Whether the condition passed.
    pub fn passed(self) -> bool {
        matches!(self, Verdict::Ok | Verdict::NothingToCover)
    }
}

/// One evaluated condition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConditionResult {
    /// The metric.
    pub metric: Metric,
    /// The operator.
    pub operator: Op,
    /// The threshold.
    pub threshold: f64,
    /// The metric's value, when there is one.
    pub actual: Option<f64>,
    /// Whether the condition passed.
    pub passed: bool,
    /// Why.
    pub verdict: Verdict,
}

/// The files with uncovered new lines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UncoveredLines {
    /// The file.
    pub file: String,
    /// Its uncovered new lines, sorted.
    pub lines: Vec<u32>,
}

/// The worst offenders behind failed conditions, at most [`MAX_OFFENDERS`] of each kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offenders {
    /// Failed tests: `name: first line of the message`.
    pub failed_tests: Vec<String>,
    /// SARIF results of the failed levels: `file:line [rule] message`.
    pub sarif: Vec<String>,
    /// Vulnerabilities of the failed severities: `id package@version (severity)`.
    pub vulnerabilities: Vec<String>,
    /// Code Quality issues of the failed severities: `path:line check_name (severity)`.
    pub codequality: Vec<String>,
    /// Uncovered new lines, by file.
    pub uncovered_new_lines: Vec<UncoveredLines>,
}

/// A gate's verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateOutcome {
    /// Whether every condition passed.
    pub passed: bool,
    /// Each condition, in the gate's order.
    pub conditions: Vec<ConditionResult>,
    /// What made conditions fail.
    pub offenders: Offenders,
}

/// Evaluates `conditions` against `reports` (the merge of the needed jobs' reports), with
/// `changes` (the change's added and modified lines) for `new_coverage`.
pub fn evaluate(
    conditions: &[Condition],
    reports: &Reports,
    changes: Option<&ChangedLines>,
) -> GateOutcome {
    let mut offenders = Offenders::default();
    let mut new_cov: Option<(Option<f64>, Vec<UncoveredLines>)> = None;
    let mut results = Vec::with_capacity(conditions.len());
    for c in conditions {
        let (actual, nothing_to_cover) = if c.metric == Metric::NewCoverage {
            let (value, _) = new_cov.get_or_insert_with(|| new_coverage(reports, changes));
            let nothing = value.is_none() && reports.coverage.is_some() && changes.is_some();
            (*value, nothing)
        } else {
            (value(c.metric, reports), false)
        };
        let verdict = match actual {
            Some(a) if c.op.holds(a, c.threshold) => Verdict::Ok,
            Some(_) => Verdict::Failed,
            None if nothing_to_cover => Verdict::NothingToCover,
            None => Verdict::NoData,
        };
        if verdict == Verdict::Failed {
            add_offenders(c.metric, reports, &mut new_cov, changes, &mut offenders);
        }
        results.push(ConditionResult {
            metric: c.metric,
            operator: c.op,
            threshold: c.threshold,
            actual,
            passed: verdict.passed(),
            verdict,
        });
    }
    GateOutcome {
        passed: results.iter().all(|r| r.passed),
        conditions: results,
        offenders,
    }
}

#[allow(clippy::cast_precision_loss)]
fn value(metric: Metric, r: &Reports) -> Option<f64> {
    let t = r.tests.as_ref();
    let s = r.sarif.as_ref();
    let v = r.vulnerabilities.as_ref();
    let q = r.codequality.as_ref();
    let n = match metric {
        Metric::Coverage => return r.coverage_percent(),
        Metric::NewCoverage => return None,
        Metric::TestsFailed => t?.failed_or_errored(),
        Metric::TestsTotal => t?.total,
        Metric::TestsSkipped => t?.skipped,
        Metric::SarifErrors => s?.errors,
        Metric::SarifWarnings => s?.warnings,
        Metric::SarifNotes => s?.notes,
        Metric::VulnerabilitiesCritical => v?.count(Severity::Critical),
        Metric::VulnerabilitiesHigh => v?.count(Severity::High),
        Metric::VulnerabilitiesMedium => v?.count(Severity::Medium),
        Metric::VulnerabilitiesLow => v?.count(Severity::Low),
        Metric::VulnerabilitiesUnknown => v?.count(Severity::Unknown),
        Metric::CodequalityBlocker => q?.count(CqSeverity::Blocker),
        Metric::CodequalityCritical => q?.count(CqSeverity::Critical),
        Metric::CodequalityMajor => q?.count(CqSeverity::Major),
        Metric::CodequalityMinor => q?.count(CqSeverity::Minor),
        Metric::CodequalityInfo => q?.count(CqSeverity::Info),
    };
    Some(n as f64)
}

/// Coverage of the changed lines, and the uncovered ones by file.
fn new_coverage(
    reports: &Reports,
    changes: Option<&ChangedLines>,
) -> (Option<f64>, Vec<UncoveredLines>) {
    let (Some(cov), Some(changes)) = (reports.coverage.as_ref(), changes) else {
        return (None, Vec::new());
    };
    let (mut covered, mut coverable) = (0u64, 0u64);
    let mut uncovered = Vec::new();
    for (path, lines) in &changes.files {
        let Some(file) = cov.files.get(path) else {
            continue;
        };
        let mut missed = Vec::new();
        for &l in lines {
            match file.hits(l) {
                Some(0) => {
                    coverable += 1;
                    missed.push(l);
                }
                Some(_) => {
                    coverable += 1;
                    covered += 1;
                }
                None => {}
            }
        }
        if !missed.is_empty() {
            uncovered.push(UncoveredLines {
                file: path.clone(),
                lines: missed,
            });
        }
    }
    (percent((covered, coverable)), uncovered)
}

fn add_offenders(
    metric: Metric,
    r: &Reports,
    new_cov: &mut Option<(Option<f64>, Vec<UncoveredLines>)>,
    changes: Option<&ChangedLines>,
    out: &mut Offenders,
) {
    let push = |list: &mut Vec<String>, item: String| {
        if list.len() < MAX_OFFENDERS && !list.contains(&item) {
            list.push(item);
        }
    };
    match metric {
        Metric::TestsFailed => {
            for f in r.tests.iter().flat_map(|t| &t.failures) {
                // The first telling line (Go's build output starts with a `# package` header).
                let first = f
                    .message
                    .lines()
                    .find(|l| !l.trim().is_empty() && !l.starts_with("# "))
                    .unwrap_or("");
                let item = if first.is_empty() {
                    f.display_name()
                } else {
                    format!("{}: {}", f.display_name(), first.trim())
                };
                push(&mut out.failed_tests, item);
            }
        }
        Metric::SarifErrors | Metric::SarifWarnings | Metric::SarifNotes => {
            let level = match metric {
                Metric::SarifErrors => Level::Error,
                Metric::SarifWarnings => Level::Warning,
                _ => Level::Note,
            };
            for x in r
                .sarif
                .iter()
                .flat_map(|s| &s.results)
                .filter(|x| x.level == level)
            {
                let rule = x
                    .rule_id
                    .as_deref()
                    .map(|r| format!(" [{r}]"))
                    .unwrap_or_default();
                let msg = x.message.lines().next().unwrap_or("");
                push(
                    &mut out.sarif,
                    format!("{}{rule} {msg}", x.place()).trim_end().to_owned(),
                );
            }
        }
        Metric::VulnerabilitiesCritical
        | Metric::VulnerabilitiesHigh
        | Metric::VulnerabilitiesMedium
        | Metric::VulnerabilitiesLow
        | Metric::VulnerabilitiesUnknown => {
            let sev = match metric {
                Metric::VulnerabilitiesCritical => Severity::Critical,
                Metric::VulnerabilitiesHigh => Severity::High,
                Metric::VulnerabilitiesMedium => Severity::Medium,
                Metric::VulnerabilitiesLow => Severity::Low,
                _ => Severity::Unknown,
            };
            for v in r
                .vulnerabilities
                .iter()
                .flat_map(|v| &v.vulnerabilities)
                .filter(|v| v.severity == sev)
            {
                push(
                    &mut out.vulnerabilities,
                    format!("{} ({})", v.display(), sev.name()),
                );
            }
        }
        Metric::CodequalityBlocker
        | Metric::CodequalityCritical
        | Metric::CodequalityMajor
        | Metric::CodequalityMinor
        | Metric::CodequalityInfo => {
            let sev = match metric {
                Metric::CodequalityBlocker => CqSeverity::Blocker,
                Metric::CodequalityCritical => CqSeverity::Critical,
                Metric::CodequalityMajor => CqSeverity::Major,
                Metric::CodequalityMinor => CqSeverity::Minor,
                _ => CqSeverity::Info,
            };
            for i in r
                .codequality
                .iter()
                .flat_map(|q| &q.issues)
                .filter(|i| i.severity == sev)
            {
                let place = match (&i.path, i.line) {
                    (Some(p), Some(l)) => format!("{p}:{l}"),
                    (Some(p), None) => p.clone(),
                    _ => "(no location)".to_owned(),
                };
                push(
                    &mut out.codequality,
                    format!("{place} {} ({})", i.check_name, sev.name()),
                );
            }
        }
        Metric::NewCoverage => {
            if out.uncovered_new_lines.is_empty() {
                let (_, uncovered) = new_cov.get_or_insert_with(|| new_coverage(r, changes));
                out.uncovered_new_lines = uncovered.iter().take(MAX_OFFENDERS).cloned().collect();
            }
        }
        Metric::Coverage | Metric::TestsTotal | Metric::TestsSkipped => {}
    }
}

/// The failed conditions in one line, as a failed gate's error and a commit status name them:
/// `coverage 71.2 < 75; tests_failed: no data` (with the operator that holds, so that the line
/// says what is). Empty when every condition passed.
pub fn failures(outcome: &GateOutcome) -> String {
    let failed: Vec<String> = outcome
        .conditions
        .iter()
        .filter(|c| !c.passed)
        .map(|c| match (c.verdict, c.actual) {
            (Verdict::NoData, _) | (_, None) => format!("{}: no data", c.metric),
            (_, Some(a)) => format!(
                "{} {} {} {}",
                c.metric,
                format_number(a),
                negated(c.operator),
                format_number(c.threshold)
            ),
        })
        .collect();
    failed.join("; ")
}

/// The operator that holds where `op` does not (`>=` → `<`).
fn negated(op: Op) -> &'static str {
    match op {
        Op::Eq => "!=",
        Op::Ne => "==",
        Op::Lt => ">=",
        Op::Le => ">",
        Op::Gt => "<=",
        Op::Ge => "<",
    }
}

/// A number as the table shows it: integers without decimals, others with up to two.
pub fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        let s = format!("{x:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// Lines as ranges: `3-5, 9`.
fn ranges(lines: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        let start = lines[i];
        let mut end = start;
        while i + 1 < lines.len() && lines[i + 1] == end + 1 {
            i += 1;
            end = lines[i];
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        if start == end {
            let _ = write!(out, "{start}");
        } else {
            let _ = write!(out, "{start}-{end}");
        }
        i += 1;
    }
    out
}

/// The plain-text table `gantry run` prints: one row per condition, then the offenders.
pub fn render(outcome: &GateOutcome) -> String {
    let rows: Vec<[String; 5]> = outcome
        .conditions
        .iter()
        .map(|c| {
            let actual = match (c.actual, c.verdict) {
                (Some(a), _) => {
                    let pct = if c.metric.is_percent() { "%" } else { "" };
                    format!("{}{pct}", format_number(a))
                }
                (None, Verdict::NothingToCover) => "nothing to cover".to_owned(),
                (None, _) => "no data".to_owned(),
            };
            let pct = if c.metric.is_percent() { "%" } else { "" };
            [
                c.metric.key().to_owned(),
                actual,
                c.operator.symbol().to_owned(),
                format!("{}{pct}", format_number(c.threshold)),
                if c.passed { "OK" } else { "FAILED" }.to_owned(),
            ]
        })
        .collect();
    let header = ["metric", "actual", "op", "threshold", "result"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!(
        "quality gate: {}\n",
        if outcome.passed { "passed" } else { "FAILED" }
    );
    for r in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            let _ = write!(line, "  {cell:<w$}", w = widths[i]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let o = &outcome.offenders;
    let mut section = |title: &str, items: &[String]| {
        if !items.is_empty() {
            let _ = writeln!(out, "{title}:");
            for i in items {
                let _ = writeln!(out, "  {i}");
            }
        }
    };
    section("failed tests", &o.failed_tests);
    section("SARIF results", &o.sarif);
    section("vulnerabilities", &o.vulnerabilities);
    section("code quality issues", &o.codequality);
    let uncovered: Vec<String> = o
        .uncovered_new_lines
        .iter()
        .map(|u| format!("{}: {}", u.file, ranges(&u.lines)))
        .collect();
    section("uncovered new lines", &uncovered);
    out
}
