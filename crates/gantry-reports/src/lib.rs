//! Reports that jobs produce (tests, coverage, static analysis, vulnerabilities, code quality),
//! read into small summaries that merge across jobs, and the quality gate evaluated on them.
//!
//! Each parser streams from the reader it is given into a summary, so memory stays flat however
//! large the report; a report larger than [`Options::max_bytes`] is an error. The crate does no IO
//! of its own and never depends on the runtime: the runtime, the agent and the server call the
//! same code.
//!
//! ```
//! use gantry_reports::{junit, Options};
//! let xml = r#"<testsuite name="s"><testcase name="a"/><testcase name="b"><failure message="boom"/></testcase></testsuite>"#;
//! let report = junit::parse(xml.as_bytes(), &Options::default()).unwrap();
//! assert_eq!((report.total, report.failed), (2, 1));
//! ```
//!
//! Lists in summaries (failed tests, findings) keep at most [`MAX_ITEMS`] entries per kind or
//! level, in report order; the counts are always the true totals.

pub mod cobertura;
pub mod codequality;
pub mod coverage;
pub mod diff;
mod error;
pub mod gate;
pub mod gocover;
pub mod gotest;
mod input;
mod json;
pub mod junit;
pub mod lcov;
mod options;
pub mod sarif;
pub mod security;
pub mod summary;
pub mod tests;
mod xml;

pub use coverage::Coverage;
pub use diff::ChangedLines;
pub use error::{Error, Position};
pub use gate::{GateOutcome, evaluate};
pub use options::{DEFAULT_MAX_BYTES, MAX_ITEMS, MAX_MESSAGE, Options};
pub use summary::Reports;
pub use tests::TestReport;
