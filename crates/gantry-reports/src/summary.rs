//! All the reports of one job, or of several jobs merged: what a gate is evaluated on.

use serde::{Deserialize, Serialize};

use crate::codequality::CodeQualityReport;
use crate::coverage::Coverage;
use crate::sarif::SarifReport;
use crate::security::VulnerabilityReport;
use crate::tests::TestReport;

/// Reports by kind; `None` where no report of that kind was produced (a gate condition on it then
/// fails with "no data").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reports {
    /// JUnit and `go test -json` reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestReport>,
    /// Cobertura, lcov and Go cover reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Coverage>,
    /// The percentages that jobs' `coverage:` regexes found, one per job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub job_coverage: Vec<f64>,
    /// SARIF logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sarif: Option<SarifReport>,
    /// Security reports (SAST, dependency and container scanning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vulnerabilities: Option<VulnerabilityReport>,
    /// Code Quality reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codequality: Option<CodeQualityReport>,
}

fn merge_opt<T: Clone>(mine: &mut Option<T>, other: Option<&T>, merge: impl FnOnce(&mut T, &T)) {
    match (mine.as_mut(), other) {
        (Some(m), Some(o)) => merge(m, o),
        (None, Some(o)) => *mine = Some(o.clone()),
        _ => {}
    }
}

impl Reports {
    /// Adds another job's (or report's) summaries: tests add up, coverage merges per file and
    /// line, findings concatenate within their caps.
    pub fn merge(&mut self, other: &Reports) {
        merge_opt(&mut self.tests, other.tests.as_ref(), TestReport::merge);
        merge_opt(&mut self.coverage, other.coverage.as_ref(), Coverage::merge);
        self.job_coverage.extend_from_slice(&other.job_coverage);
        merge_opt(&mut self.sarif, other.sarif.as_ref(), SarifReport::merge);
        merge_opt(
            &mut self.vulnerabilities,
            other.vulnerabilities.as_ref(),
            VulnerabilityReport::merge,
        );
        merge_opt(
            &mut self.codequality,
            other.codequality.as_ref(),
            CodeQualityReport::merge,
        );
    }

    /// The merge of all of `reports`.
    pub fn merged<'a>(reports: impl IntoIterator<Item = &'a Reports>) -> Reports {
        let mut all = Reports::default();
        for r in reports {
            all.merge(r);
        }
        all
    }

    /// The coverage percentage: from coverage reports when there are any, else the mean of the
    /// jobs' `coverage:` regex percentages (as GitLab's pipeline coverage), else `None`.
    pub fn coverage_percent(&self) -> Option<f64> {
        if let Some(p) = self.coverage.as_ref().and_then(Coverage::percent) {
            return Some(p);
        }
        if self.job_coverage.is_empty() {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let mean = self.job_coverage.iter().sum::<f64>() / self.job_coverage.len() as f64;
        Some(crate::coverage::round2(mean))
    }
}
