//! GitLab security reports (`sast`, `dependency_scanning`, `container_scanning`): one JSON object
//! whose `vulnerabilities` array is streamed one vulnerability at a time.
//!
//! Each vulnerability counts under its `severity` (`Critical`, `High`, `Medium`, `Low`, `Info`,
//! `Unknown`; a missing or other value counts as `Unknown`). Its id is its first CVE identifier,
//! else its first identifier's value, else its `id`; its package is `location.dependency`'s
//! `package.name` and `version` (dependency and container scanning), its place `location.file`
//! and `start_line` (SAST).

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::json::{Each, Field, Findings, findings, stream};
use crate::options::{Options, cap_message};

/// A vulnerability's severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// `Critical`.
    Critical,
    /// `High`.
    High,
    /// `Medium`.
    Medium,
    /// `Low`.
    Low,
    /// `Info`.
    Info,
    /// `Unknown`, missing, or a value the schema does not list.
    Unknown,
}

impl Severity {
    fn parse(s: Option<&str>) -> Severity {
        match s.map(str::to_ascii_lowercase).as_deref() {
            Some("critical") => Severity::Critical,
            Some("high") => Severity::High,
            Some("medium") => Severity::Medium,
            Some("low") => Severity::Low,
            Some("info") => Severity::Info,
            _ => Severity::Unknown,
        }
    }

    /// The name as GitLab writes it.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Info => "info",
            Severity::Unknown => "unknown",
        }
    }
}

/// Vulnerabilities of one or more security reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VulnerabilityReport {
    /// Severity `Critical`.
    pub critical: u64,
    /// Severity `High`.
    pub high: u64,
    /// Severity `Medium`.
    pub medium: u64,
    /// Severity `Low`.
    pub low: u64,
    /// Severity `Info`.
    pub info: u64,
    /// Severity `Unknown` or missing.
    pub unknown: u64,
    /// The vulnerabilities, at most [`crate::MAX_ITEMS`] per severity, in report order.
    pub vulnerabilities: Vec<Vulnerability>,
}

/// One vulnerability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vulnerability {
    /// Its severity.
    pub severity: Severity,
    /// Its first CVE, else its first identifier, else its report id.
    pub id: String,
    /// Its name (or message).
    pub name: String,
    /// The affected package (dependency and container scanning).
    pub package: Option<String>,
    /// The affected package's version.
    pub version: Option<String>,
    /// The file (SAST) or dependency file.
    pub file: Option<String>,
    /// The line (SAST).
    pub line: Option<u64>,
    /// All identifiers' values (CVE, CWE, GHSA, …), at most 10.
    pub identifiers: Vec<String>,
}

impl Vulnerability {
    /// `id package@version`, `id file:line` or `id`.
    pub fn display(&self) -> String {
        match (&self.package, &self.version, &self.file, self.line) {
            (Some(p), Some(v), ..) => format!("{} {p}@{v}", self.id),
            (Some(p), None, ..) => format!("{} {p}", self.id),
            (None, _, Some(f), Some(l)) => format!("{} {f}:{l}", self.id),
            (None, _, Some(f), None) => format!("{} {f}", self.id),
            _ => self.id.clone(),
        }
    }
}

impl VulnerabilityReport {
    /// The count of `severity`.
    pub fn count(&self, severity: Severity) -> u64 {
        self.counts()[severity as usize]
    }

    /// The counts, in [`Severity`]'s order.
    fn counts(&self) -> [u64; 6] {
        [
            self.critical,
            self.high,
            self.medium,
            self.low,
            self.info,
            self.unknown,
        ]
    }

    /// Adds another report's vulnerabilities.
    pub fn merge(&mut self, other: &VulnerabilityReport) {
        for (severity, n) in other.counts().into_iter().enumerate() {
            *self.counts_mut()[severity] += n;
        }
        crate::json::merge_kept::<_, 6>(&mut self.vulnerabilities, &other.vulnerabilities, |i| {
            i.severity as usize
        });
    }
}

impl Findings for VulnerabilityReport {
    type Raw = Raw;

    fn level(raw: &Raw) -> usize {
        Severity::parse(raw.severity.as_deref()) as usize
    }

    fn counts_mut(&mut self) -> [&mut u64; 6] {
        [
            &mut self.critical,
            &mut self.high,
            &mut self.medium,
            &mut self.low,
            &mut self.info,
            &mut self.unknown,
        ]
    }

    fn keep(&mut self, raw: Raw) {
        let severity = Severity::parse(raw.severity.as_deref());
        let values: Vec<String> = raw
            .identifiers
            .iter()
            .filter_map(|i| i.value.clone().or_else(|| i.name.clone()))
            .take(10)
            .collect();
        let cve = raw.identifiers.iter().find(|i| {
            i.kind
                .as_deref()
                .is_some_and(|k| k.eq_ignore_ascii_case("cve"))
        });
        let id = cve
            .and_then(|i| i.value.clone())
            .or_else(|| values.first().cloned())
            .or(raw.id)
            .unwrap_or_else(|| "(no id)".to_owned());
        let (file, line, package, version) = match raw.location {
            Some(l) => {
                let (p, v) = match l.dependency {
                    Some(d) => (d.package.and_then(|p| p.name), d.version),
                    None => (None, None),
                };
                (l.file, l.start_line, p, v)
            }
            None => (None, None, None, None),
        };
        self.vulnerabilities.push(Vulnerability {
            severity,
            id,
            name: cap_message(raw.name.or(raw.message).unwrap_or_default()),
            package,
            version,
            file,
            line,
            identifiers: values,
        });
    }
}

#[derive(Deserialize)]
pub(crate) struct Raw {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    identifiers: Vec<Identifier>,
    #[serde(default)]
    location: Option<Loc>,
}

#[derive(Deserialize)]
struct Identifier {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct Loc {
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    start_line: Option<u64>,
    #[serde(default)]
    dependency: Option<Dependency>,
}

#[derive(Deserialize)]
struct Dependency {
    #[serde(default)]
    package: Option<Package>,
    #[serde(default)]
    version: Option<String>,
}

#[derive(Deserialize)]
struct Package {
    #[serde(default)]
    name: Option<String>,
}

/// Reads a GitLab security report.
///
/// # Errors
/// Invalid JSON, no `vulnerabilities` array, a vulnerability of the wrong shape, or more than
/// `options.max_bytes` bytes.
pub fn parse<R: Read>(reader: R, options: &Options) -> Result<VulnerabilityReport, Error> {
    let mut report = VulnerabilityReport::default();
    let found = stream(
        reader,
        options.max_bytes,
        Field {
            name: "vulnerabilities",
            what: "a security report (an object with `vulnerabilities`)",
            seed: Each::new("vulnerabilities", &mut findings(&mut report)),
        },
    )?;
    if !found {
        return Err(Error::invalid(
            None,
            "not a security report: no `vulnerabilities`",
        ));
    }
    Ok(report)
}
