//! The test summary that JUnit XML and `go test -json` produce.

use serde::{Deserialize, Serialize};

use crate::options::MAX_ITEMS;

/// Tests of one or more reports: counts, and the failed cases with their messages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestReport {
    /// All test cases.
    pub total: u64,
    /// Cases that passed.
    pub passed: u64,
    /// Cases that failed (an assertion).
    pub failed: u64,
    /// Cases in error (an unexpected exception, a Go package that failed to build or run).
    pub errors: u64,
    /// Cases skipped.
    pub skipped: u64,
    /// The failed and erroring cases, at most [`MAX_ITEMS`], in report order.
    pub failures: Vec<FailedTest>,
}

/// Whether a case failed or errored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// An assertion failed (`<failure>`, a Go test's `fail`).
    Failure,
    /// Something else went wrong (`<error>`, a Go package-level failure).
    Error,
}

/// One failed or erroring case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedTest {
    /// The suite or Go package, when known.
    pub suite: String,
    /// The case's name (JUnit's `classname.name`, Go's test name).
    pub name: String,
    /// Failure or error.
    pub kind: FailureKind,
    /// The message: the `message` attribute and the element's text, or a Go test's output,
    /// capped at [`crate::MAX_MESSAGE`] bytes.
    pub message: String,
}

impl FailedTest {
    /// `suite: name`, or the name alone.
    pub fn display_name(&self) -> String {
        if self.suite.is_empty() || self.name.starts_with(&self.suite) {
            self.name.clone()
        } else {
            format!("{}: {}", self.suite, self.name)
        }
    }
}

impl TestReport {
    /// Failures plus errors.
    pub fn failed_or_errored(&self) -> u64 {
        self.failed.saturating_add(self.errors)
    }

    pub(crate) fn record_failure(&mut self, case: FailedTest) {
        match case.kind {
            FailureKind::Failure => self.failed += 1,
            FailureKind::Error => self.errors += 1,
        }
        self.total += 1;
        if self.failures.len() < MAX_ITEMS {
            self.failures.push(case);
        }
    }

    /// Adds another report's tests to these.
    pub fn merge(&mut self, other: &TestReport) {
        // Counts may come from an agent: they saturate rather than wrap or panic.
        self.total = self.total.saturating_add(other.total);
        self.passed = self.passed.saturating_add(other.passed);
        self.failed = self.failed.saturating_add(other.failed);
        self.errors = self.errors.saturating_add(other.errors);
        self.skipped = self.skipped.saturating_add(other.skipped);
        let room = MAX_ITEMS.saturating_sub(self.failures.len());
        self.failures
            .extend(other.failures.iter().take(room).cloned());
    }
}
