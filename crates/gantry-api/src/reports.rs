//! The reports API: a pipeline's or a job's report summaries (`GET /api/v1/pipelines/{id}/reports`,
//! `GET /api/v1/jobs/{id}/reports`) and a ref's coverage trend
//! (`GET /api/v1/projects/{name}/coverage?ref=REF`). Per-line coverage is never shown; lists of
//! failed tests and findings are capped as the summaries cap them (the counts are the true totals).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The reports of a pipeline's jobs (the latest attempt of each), merged, or of one job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReportsSummary {
    /// The test report across the jobs; absent when no job reported tests.
    pub tests: Option<TestsSummary>,
    /// Coverage.
    pub coverage: CoverageSummary,
    /// SARIF results by level; absent when no job reported SARIF.
    pub sarif: Option<SarifSummary>,
    /// Vulnerabilities by severity; absent when no job reported any security scan.
    pub vulnerabilities: Option<VulnerabilitiesSummary>,
    /// Code Quality issues by severity; absent when no job reported Code Quality.
    pub codequality: Option<CodeQualitySummary>,
    /// The verdicts of the gate jobs.
    pub gates: Vec<GateResult>,
}

/// Test counts and the failed cases.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TestsSummary {
    /// All test cases.
    pub total: u64,
    /// Cases that passed.
    pub passed: u64,
    /// Cases that failed.
    pub failed: u64,
    /// Cases in error.
    pub errors: u64,
    /// Cases skipped.
    pub skipped: u64,
    /// The failed and erroring cases, by job.
    pub failures: Vec<FailedCase>,
}

/// A failed or erroring test case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FailedCase {
    /// The job that reported it.
    pub job: String,
    /// The suite or Go package.
    pub suite: String,
    /// The case's name.
    pub name: String,
    /// `failure` or `error`.
    pub kind: String,
    /// Its message.
    pub message: String,
}

/// Coverage: overall, per job, per file (percentages, never lines).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CoverageSummary {
    /// The coverage percent: of the merged coverage reports, else the mean of the jobs'
    /// `coverage:` values; absent without either (what the gate's `coverage` metric reads).
    pub percent: Option<f64>,
    /// Each job's coverage percent.
    pub jobs: Vec<JobCoverage>,
    /// Each file of the merged coverage reports, by path.
    pub files: Vec<FileCoverage>,
}

/// One job's coverage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobCoverage {
    /// The job's id.
    pub job_id: i64,
    /// The job.
    pub job: String,
    /// Its percent: its coverage reports', else its `coverage:` regex's.
    pub percent: f64,
}

/// One file's coverage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FileCoverage {
    /// The path.
    pub file: String,
    /// Covered lines (Go: statements).
    pub covered: u64,
    /// Coverable lines (Go: statements).
    pub coverable: u64,
    /// The percent; absent when nothing is coverable.
    pub percent: Option<f64>,
}

/// SARIF results by level.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SarifSummary {
    /// `error` results.
    pub errors: u64,
    /// `warning` results.
    pub warnings: u64,
    /// `note` results.
    pub notes: u64,
    /// `none` results.
    pub none: u64,
    /// The results.
    pub results: Vec<SarifFinding>,
}

/// A SARIF result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SarifFinding {
    /// `error`, `warning`, `note` or `none`.
    pub level: String,
    /// The rule.
    pub rule_id: Option<String>,
    /// The file.
    pub file: Option<String>,
    /// The line.
    pub line: Option<u64>,
    /// The message.
    pub message: String,
}

/// Vulnerabilities by severity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VulnerabilitiesSummary {
    /// Critical.
    pub critical: u64,
    /// High.
    pub high: u64,
    /// Medium.
    pub medium: u64,
    /// Low.
    pub low: u64,
    /// Info.
    pub info: u64,
    /// Unknown.
    pub unknown: u64,
    /// The vulnerabilities.
    pub vulnerabilities: Vec<VulnerabilityFinding>,
}

/// A vulnerability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VulnerabilityFinding {
    /// Its severity.
    pub severity: String,
    /// Its id (a CVE when it has one).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The package.
    pub package: Option<String>,
    /// The package's version.
    pub version: Option<String>,
    /// The file.
    pub file: Option<String>,
    /// The line.
    pub line: Option<u64>,
}

/// Code Quality issues by severity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CodeQualitySummary {
    /// Blocker.
    pub blocker: u64,
    /// Critical.
    pub critical: u64,
    /// Major.
    pub major: u64,
    /// Minor.
    pub minor: u64,
    /// Info.
    pub info: u64,
    /// Unknown.
    pub unknown: u64,
    /// The issues.
    pub issues: Vec<CodeQualityFinding>,
}

/// A Code Quality issue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CodeQualityFinding {
    /// Its severity.
    pub severity: String,
    /// The check.
    pub check_name: String,
    /// The description.
    pub description: String,
    /// The file.
    pub path: Option<String>,
    /// The line.
    pub line: Option<u64>,
}

/// A gate job's verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GateResult {
    /// The gate job's id.
    pub job_id: i64,
    /// The gate job.
    pub job: String,
    /// Whether every condition passed.
    pub passed: bool,
    /// Each condition, in the gate's order.
    pub conditions: Vec<GateConditionResult>,
    /// What made conditions fail.
    pub offenders: GateOffenders,
}

/// One evaluated condition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GateConditionResult {
    /// The metric (`coverage`, `tests_failed`, ...).
    pub metric: String,
    /// `==`, `!=`, `<`, `<=`, `>` or `>=`.
    pub operator: String,
    /// The threshold.
    pub threshold: f64,
    /// The metric's value; absent when no report gave it.
    pub actual: Option<f64>,
    /// Whether it passed.
    pub passed: bool,
    /// `ok`, `failed`, `no_data` or `nothing_to_cover`.
    pub verdict: String,
}

/// The worst offenders behind a gate's failed conditions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GateOffenders {
    /// Failed tests.
    pub failed_tests: Vec<String>,
    /// SARIF results.
    pub sarif: Vec<String>,
    /// Vulnerabilities.
    pub vulnerabilities: Vec<String>,
    /// Code Quality issues.
    pub codequality: Vec<String>,
    /// Uncovered new lines, by file.
    pub uncovered_new_lines: Vec<UncoveredLines>,
}

/// A file's uncovered new lines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UncoveredLines {
    /// The file.
    pub file: String,
    /// Its uncovered new lines.
    pub lines: Vec<u32>,
}

/// One pipeline's coverage in a ref's trend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CoverageTrendPoint {
    /// The pipeline.
    pub pipeline_id: i64,
    /// Its commit.
    pub sha: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// The mean coverage percent of its jobs (each its coverage reports', else its `coverage:`
    /// regex's), as GitLab's pipeline coverage.
    pub coverage: f64,
}
