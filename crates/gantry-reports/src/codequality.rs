//! Code Quality reports (`codequality`): a JSON array of Code Climate issues, streamed.
//!
//! Each issue counts under its `severity` (`info`, `minor`, `major`, `critical`, `blocker`; a
//! missing or other value counts as `unknown`), with its `check_name`, `description` and place
//! (`location.path` and `location.lines.begin`, or `location.positions.begin.line`).

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::json::{Each, Findings, findings, stream};
use crate::options::{Options, cap_message};

/// A Code Quality issue's severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// `blocker`.
    Blocker,
    /// `critical`.
    Critical,
    /// `major`.
    Major,
    /// `minor`.
    Minor,
    /// `info`.
    Info,
    /// Missing, or a value the spec does not list.
    Unknown,
}

impl Severity {
    fn parse(s: Option<&str>) -> Severity {
        match s.map(str::to_ascii_lowercase).as_deref() {
            Some("blocker") => Severity::Blocker,
            Some("critical") => Severity::Critical,
            Some("major") => Severity::Major,
            Some("minor") => Severity::Minor,
            Some("info") => Severity::Info,
            _ => Severity::Unknown,
        }
    }

    /// The name as the spec writes it.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Blocker => "blocker",
            Severity::Critical => "critical",
            Severity::Major => "major",
            Severity::Minor => "minor",
            Severity::Info => "info",
            Severity::Unknown => "unknown",
        }
    }
}

/// Issues of one or more Code Quality reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeQualityReport {
    /// Severity `blocker`.
    pub blocker: u64,
    /// Severity `critical`.
    pub critical: u64,
    /// Severity `major`.
    pub major: u64,
    /// Severity `minor`.
    pub minor: u64,
    /// Severity `info`.
    pub info: u64,
    /// No or an unknown severity.
    pub unknown: u64,
    /// The issues, at most [`crate::MAX_ITEMS`] per severity, in report order.
    pub issues: Vec<Issue>,
}

/// One issue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    /// Its severity.
    pub severity: Severity,
    /// The check that found it.
    pub check_name: String,
    /// What it says, capped.
    pub description: String,
    /// The file.
    pub path: Option<String>,
    /// The first line.
    pub line: Option<u64>,
}

impl CodeQualityReport {
    /// The count of `severity`.
    pub fn count(&self, severity: Severity) -> u64 {
        self.counts()[severity as usize]
    }

    /// The counts, in [`Severity`]'s order.
    fn counts(&self) -> [u64; 6] {
        [
            self.blocker,
            self.critical,
            self.major,
            self.minor,
            self.info,
            self.unknown,
        ]
    }

    /// Adds another report's issues.
    pub fn merge(&mut self, other: &CodeQualityReport) {
        for (severity, n) in other.counts().into_iter().enumerate() {
            *self.counts_mut()[severity] += n;
        }
        crate::json::merge_kept::<_, 6>(&mut self.issues, &other.issues, |i| i.severity as usize);
    }
}

impl Findings for CodeQualityReport {
    type Raw = Raw;

    fn level(raw: &Raw) -> usize {
        Severity::parse(raw.severity.as_deref()) as usize
    }

    fn counts_mut(&mut self) -> [&mut u64; 6] {
        [
            &mut self.blocker,
            &mut self.critical,
            &mut self.major,
            &mut self.minor,
            &mut self.info,
            &mut self.unknown,
        ]
    }

    fn keep(&mut self, raw: Raw) {
        let severity = Severity::parse(raw.severity.as_deref());
        let (path, line) = match raw.location {
            Some(l) => (
                l.path,
                l.lines
                    .and_then(|x| x.begin)
                    .or_else(|| l.positions.and_then(|p| p.begin).and_then(|b| b.line)),
            ),
            None => (None, None),
        };
        self.issues.push(Issue {
            severity,
            check_name: raw.check_name.unwrap_or_default(),
            description: cap_message(raw.description.unwrap_or_default()),
            path,
            line,
        });
    }
}

#[derive(Deserialize)]
pub(crate) struct Raw {
    #[serde(default)]
    check_name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    location: Option<Loc>,
}

#[derive(Deserialize)]
struct Loc {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    lines: Option<Lines>,
    #[serde(default)]
    positions: Option<Positions>,
}

#[derive(Deserialize)]
struct Lines {
    #[serde(default)]
    begin: Option<u64>,
}

#[derive(Deserialize)]
struct Positions {
    #[serde(default)]
    begin: Option<Position>,
}

#[derive(Deserialize)]
struct Position {
    #[serde(default)]
    line: Option<u64>,
}

/// Reads a Code Quality (Code Climate JSON) report.
///
/// # Errors
/// Invalid JSON, a document that is not an array, an issue of the wrong shape, or more than
/// `options.max_bytes` bytes.
pub fn parse<R: Read>(reader: R, options: &Options) -> Result<CodeQualityReport, Error> {
    let mut report = CodeQualityReport::default();
    stream(
        reader,
        options.max_bytes,
        Each::new("Code Climate issues", &mut findings(&mut report)),
    )?;
    Ok(report)
}
