//! Reports of `artifacts:reports`, read into summaries after each attempt (passed or failed), and
//! kept in `state_dir/reports/<job-slug>.json` so that a gate in a later run (`gantry run gate`)
//! finds the summaries of jobs it does not run. Parsing is `gantry-reports`'; this module finds
//! the files (globbed as artifacts are), opens them and names them in errors.
//!
//! Report types read: `junit` and `gotest` (tests), `coverage_report` (Cobertura), `lcov` and
//! `gocover` (coverage), `sarif`, `sast`, `dependency_scanning` and `container_scanning`
//! (vulnerabilities), `codequality`. Others (`dotenv`, `jacoco`, …) are only kept as artifacts.
//!
//! File names in coverage and SARIF reports become relative to the workspace (its absolute path is
//! stripped); a Go cover profile's import paths lose the module path of the nearest `go.mod` at or
//! above the profile, and gain that `go.mod`'s directory.

use std::fs::{self, File};
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use gantry_reports::{Options, Reports};
use serde::{Deserialize, Serialize};

/// A kind of summary, as [`crate::Event::Report`] names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportKind {
    /// Tests (`junit`, `gotest`): [`Reports::tests`].
    Junit,
    /// Coverage (`coverage_report`, `lcov`, `gocover`): [`Reports::coverage`].
    Coverage,
    /// SARIF: [`Reports::sarif`].
    Sarif,
    /// Security reports: [`Reports::vulnerabilities`].
    Vulnerabilities,
    /// Code Quality: [`Reports::codequality`].
    Codequality,
}

impl ReportKind {
    /// The name in `--output json`: `junit`, `coverage`, `sarif`, `vulnerabilities`, `codequality`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Junit => "junit",
            ReportKind::Coverage => "coverage",
            ReportKind::Sarif => "sarif",
            ReportKind::Vulnerabilities => "vulnerabilities",
            ReportKind::Codequality => "codequality",
        }
    }

    /// The kinds `reports` has data of, in this order: tests, coverage, SARIF, vulnerabilities,
    /// Code Quality.
    #[must_use]
    pub fn present(reports: &Reports) -> Vec<ReportKind> {
        let mut out = Vec::new();
        if reports.tests.is_some() {
            out.push(ReportKind::Junit);
        }
        if reports.coverage.is_some() {
            out.push(ReportKind::Coverage);
        }
        if reports.sarif.is_some() {
            out.push(ReportKind::Sarif);
        }
        if reports.vulnerabilities.is_some() {
            out.push(ReportKind::Vulnerabilities);
        }
        if reports.codequality.is_some() {
            out.push(ReportKind::Codequality);
        }
        out
    }
}

/// Whether `kind` (an `artifacts:reports` key) is read into a summary.
pub(crate) fn is_read(kind: &str) -> bool {
    matches!(
        kind,
        "junit"
            | "gotest"
            | "coverage_report"
            | "lcov"
            | "gocover"
            | "sarif"
            | "sast"
            | "dependency_scanning"
            | "container_scanning"
            | "codequality"
    )
}

/// Reads the report files of `kinds` (type → files relative to `workspace`, already globbed) into
/// one summary. A file that cannot be read does not stop the others: its error (naming the file
/// and the type) is in the second list.
pub(crate) fn read(
    workspace: &Path,
    kinds: &[(String, Vec<PathBuf>)],
    max_bytes: u64,
) -> (Reports, Vec<String>) {
    let mut all = Reports::default();
    let mut errors = Vec::new();
    for (kind, files) in kinds {
        for f in files {
            let path = workspace.join(f);
            if path.is_dir() {
                continue;
            }
            match read_one(workspace, &path, kind, max_bytes) {
                Ok(r) => all.merge(&r),
                Err(e) => errors.push(format!("cannot read the {kind} report {}", e.named(f))),
            }
        }
    }
    (all, errors)
}

/// Why one report could not be read.
enum ReadError {
    Open(io::Error),
    Parse(gantry_reports::Error),
}

impl ReadError {
    /// The message with the file: `FILE:LINE: message`, `FILE: message`.
    fn named(&self, file: &Path) -> String {
        let file = file.display().to_string();
        match self {
            ReadError::Open(e) => format!("{file}: {e}"),
            ReadError::Parse(e) => e.with_file(&file),
        }
    }
}

fn read_one(
    workspace: &Path,
    path: &Path,
    kind: &str,
    max_bytes: u64,
) -> Result<Reports, ReadError> {
    let file = File::open(path).map_err(ReadError::Open)?;
    // Refused before reading a byte; the parsers also stop at the limit (a file still growing).
    let len = file.metadata().map_err(ReadError::Open)?.len();
    if len > max_bytes {
        return Err(ReadError::Parse(gantry_reports::Error::TooLarge {
            limit: max_bytes,
        }));
    }
    let reader = BufReader::new(file);
    let ws = Options {
        max_bytes,
        strip_prefix: Some(workspace.to_string_lossy().into_owned()),
    };
    let plain = Options {
        max_bytes,
        strip_prefix: None,
    };
    let p = ReadError::Parse;
    let mut r = Reports::default();
    match kind {
        "junit" => r.tests = Some(gantry_reports::junit::parse(reader, &plain).map_err(p)?),
        "gotest" => r.tests = Some(gantry_reports::gotest::parse(reader, &plain).map_err(p)?),
        "coverage_report" => {
            r.coverage = Some(gantry_reports::cobertura::parse(reader, &ws).map_err(p)?);
        }
        "lcov" => r.coverage = Some(gantry_reports::lcov::parse(reader, &ws).map_err(p)?),
        "gocover" => {
            let module = go_module(workspace, path);
            let options = Options {
                max_bytes,
                strip_prefix: module.as_ref().map(|(m, _)| m.clone()),
            };
            let mut cov = gantry_reports::gocover::parse(reader, &options).map_err(p)?;
            if let Some((m, dir)) = module.filter(|(_, d)| !d.is_empty()) {
                // Paths of this module are relative to its directory; make them the workspace's.
                let prefix = format!("{m}/");
                cov.files = std::mem::take(&mut cov.files)
                    .into_iter()
                    .map(|(k, v)| {
                        if k.starts_with(&prefix) || k.starts_with('/') {
                            (k, v)
                        } else {
                            (format!("{dir}/{k}"), v)
                        }
                    })
                    .collect();
            }
            r.coverage = Some(cov);
        }
        "sarif" => r.sarif = Some(gantry_reports::sarif::parse(reader, &ws).map_err(p)?),
        "sast" | "dependency_scanning" | "container_scanning" => {
            r.vulnerabilities = Some(gantry_reports::security::parse(reader, &ws).map_err(p)?);
        }
        "codequality" => {
            r.codequality = Some(gantry_reports::codequality::parse(reader, &ws).map_err(p)?);
        }
        _ => {}
    }
    Ok(r)
}

/// The module path of the nearest `go.mod` at or above `report` inside `workspace`, and that
/// directory relative to the workspace (`""` for the workspace itself).
fn go_module(workspace: &Path, report: &Path) -> Option<(String, String)> {
    let mut dir = report.parent()?;
    loop {
        if let Ok(text) = fs::read_to_string(dir.join("go.mod")) {
            let module = text.lines().find_map(|l| {
                let rest = l.trim().strip_prefix("module")?;
                let rest = rest.split("//").next()?.trim().trim_matches('"');
                (!rest.is_empty()).then(|| rest.to_owned())
            })?;
            let rel = dir.strip_prefix(workspace).ok()?;
            return Some((module, rel.to_string_lossy().into_owned()));
        }
        if dir == workspace {
            return None;
        }
        dir = dir.parent()?;
        if !dir.starts_with(workspace) {
            return None;
        }
    }
}

/// Masks the free text of `r` (failed tests' names and messages, findings' messages) with
/// `masker`, as every other text the runtime reports.
pub(crate) fn mask(masker: &crate::mask::Masker, r: &mut Reports) {
    let m = |s: &mut String| {
        let masked = match masker.mask(s) {
            std::borrow::Cow::Owned(o) => Some(o),
            std::borrow::Cow::Borrowed(_) => None,
        };
        if let Some(o) = masked {
            *s = o;
        }
    };
    for f in r.tests.iter_mut().flat_map(|t| &mut t.failures) {
        m(&mut f.suite);
        m(&mut f.name);
        m(&mut f.message);
    }
    for x in r.sarif.iter_mut().flat_map(|s| &mut s.results) {
        m(&mut x.message);
    }
    for v in r
        .vulnerabilities
        .iter_mut()
        .flat_map(|v| &mut v.vulnerabilities)
    {
        m(&mut v.name);
    }
    for i in r.codequality.iter_mut().flat_map(|q| &mut q.issues) {
        m(&mut i.description);
    }
}

/// One job's summaries as kept on disk.
#[derive(Serialize, Deserialize)]
struct Kept {
    job: String,
    reports: Reports,
}

/// Keeps `reports` of `job` as `dir/<slug>.json`, replacing what an earlier run kept.
pub(crate) fn keep(dir: &Path, slug: &str, job: &str, reports: &Reports) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let kept = Kept {
        job: job.to_owned(),
        reports: reports.clone(),
    };
    let bytes = serde_json::to_vec(&kept).map_err(io::Error::other)?;
    let tmp = dir.join(format!(".{slug}.json.new-{}", std::process::id()));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, dir.join(format!("{slug}.json")))
}

/// The summaries an earlier run kept for the job `slug`, if any.
pub(crate) fn kept(dir: &Path, slug: &str) -> Option<Reports> {
    let bytes = fs::read(dir.join(format!("{slug}.json"))).ok()?;
    serde_json::from_slice::<Kept>(&bytes)
        .ok()
        .map(|k| k.reports)
}

/// The one line a failed gate leaves as the job's error: `quality gate failed: coverage 71.2 < 75;
/// tests_failed: no data`.
pub(crate) fn gate_failure(outcome: &gantry_reports::GateOutcome) -> String {
    format!(
        "quality gate failed: {}",
        gantry_reports::gate::failures(outcome)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_module_paths_become_workspace_paths() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path();
        fs::create_dir_all(ws.join("svc")).unwrap();
        fs::write(
            ws.join("svc/go.mod"),
            "module example.com/svc // the service\n\ngo 1.22\n",
        )
        .unwrap();
        fs::write(
            ws.join("svc/cover.out"),
            "mode: set\nexample.com/svc/main.go:3.13,5.2 1 1\nexample.com/svc/main.go:7.13,9.2 1 0\n",
        )
        .unwrap();
        let kinds = [("gocover".to_owned(), vec![PathBuf::from("svc/cover.out")])];
        let (r, errors) = read(ws, &kinds, 1 << 20);
        assert!(errors.is_empty(), "{errors:?}");
        let cov = r.coverage.unwrap();
        assert_eq!(cov.files.keys().collect::<Vec<_>>(), ["svc/main.go"]);
        assert_eq!(cov.percent(), Some(50.0));
    }

    #[test]
    fn a_corrupt_or_too_large_report_names_its_file_and_the_others_are_read() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path();
        fs::write(ws.join("bad.xml"), "<testsuite><testcase name=\"a\">").unwrap();
        fs::write(
            ws.join("big.xml"),
            format!("<testsuite>{}</testsuite>", " ".repeat(200)),
        )
        .unwrap();
        fs::write(
            ws.join("ok.xml"),
            "<testsuite><testcase name=\"a\"/></testsuite>",
        )
        .unwrap();
        let files = ["bad.xml", "big.xml", "ok.xml"].map(PathBuf::from).to_vec();
        let (r, errors) = read(ws, &[("junit".to_owned(), files)], 100);
        assert_eq!(r.tests.unwrap().total, 1);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("cannot read the junit report bad.xml:1:"),
            "{errors:?}"
        );
        assert_eq!(
            errors[1],
            "cannot read the junit report big.xml: the report is larger than the limit of 100 bytes"
        );
    }

    #[test]
    fn kept_summaries_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let r = Reports {
            job_coverage: vec![81.5],
            ..Reports::default()
        };
        keep(d.path(), "unit", "unit", &r).unwrap();
        assert_eq!(kept(d.path(), "unit"), Some(r));
        assert_eq!(kept(d.path(), "other"), None);
    }
}
