//! A job's report summaries on their way into its `finish` call ([`FinishJob::reports`]), which
//! the server takes up to `gantry_api::agent::MAX_FINISH_BYTES`: summaries whose JSON is larger
//! than [`MAX_JSON`] lose per-line coverage (totals and per-file percentages stay), then the
//! messages of failed tests and findings (counts, names and places stay), then everything, rather
//! than fail the finish. The job's log says what was left out.
//!
//! [`FinishJob::reports`]: gantry_api::agent::FinishJob::reports

use std::io;

use gantry_runtime::gantry_reports::Reports;
use gantry_runtime::gantry_reports::coverage::{Block, FileCoverage};

/// The largest JSON of a job's summaries that a finish call carries: half of what a server reads
/// of a finish, leaving room for the rest of the body (the gate's verdict above all).
pub(crate) const MAX_JSON: u64 = (gantry_api::agent::MAX_FINISH_BYTES / 2) as u64;

/// What of `reports` fits in `limit` bytes of JSON, and what was left out (for the job's log).
pub(crate) fn fit(mut reports: Reports, limit: u64) -> (Option<Reports>, Option<String>) {
    let size = json_len(&reports);
    if size <= limit {
        return (Some(reports), None);
    }
    let over = format!("the report summaries ({size} bytes of JSON) are over the limit of {limit}");
    if let Some(cov) = &mut reports.coverage {
        cov.files.values_mut().for_each(totals_only);
        if json_len(&reports) <= limit {
            return (
                Some(reports),
                Some(format!(
                    "{over}: per-line coverage is not sent to the server (totals and per-file \
                     percentages are; a gate's new_coverage cannot see these lines)"
                )),
            );
        }
    }
    without_messages(&mut reports);
    if json_len(&reports) <= limit {
        return (
            Some(reports),
            Some(format!(
                "{over}: per-line coverage and the messages of failed tests and findings are not \
                 sent to the server (counts, names and places are)"
            )),
        );
    }
    (
        None,
        Some(format!("{over}: they are not sent to the server")),
    )
}

/// `file` with its counts but no line: its covered and uncovered lines (or Go statements) as two
/// blocks on line 0, which no report has, so that its totals, its percentage and the whole
/// report's stay as they were; branches as totals.
fn totals_only(file: &mut FileCoverage) {
    let (covered, total) = file.counts();
    let branches = file.branch_counts();
    let block = |column, statements: u64, count| Block {
        start: (0, column),
        end: (0, column),
        statements: u32::try_from(statements).unwrap_or(u32::MAX),
        count,
    };
    *file = FileCoverage {
        branch_totals: (branches.1 > 0).then_some(branches),
        blocks: [block(0, covered, 1), block(1, total - covered, 0)]
            .into_iter()
            .filter(|b| b.statements > 0)
            .collect(),
        ..FileCoverage::default()
    };
}

/// Clears the free text of `r`: failed tests' and findings' messages.
fn without_messages(r: &mut Reports) {
    for f in r.tests.iter_mut().flat_map(|t| &mut t.failures) {
        f.message.clear();
    }
    for x in r.sarif.iter_mut().flat_map(|s| &mut s.results) {
        x.message.clear();
    }
    for i in r.codequality.iter_mut().flat_map(|q| &mut q.issues) {
        i.description.clear();
    }
}

/// The length of `r`'s JSON, counted as it is written (never held whole).
fn json_len(r: &Reports) -> u64 {
    struct Count(u64);
    impl io::Write for Count {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0 += b.len() as u64;
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    match serde_json::to_writer(&mut c, r) {
        Ok(()) => c.0,
        Err(_) => u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_runtime::gantry_reports::{Options, lcov};

    /// An lcov report of `files` files with `lines` lines each, every third one not run, and a
    /// branch per line.
    fn coverage(files: usize, lines: u32) -> Reports {
        let mut text = String::new();
        for f in 0..files {
            text.push_str(&format!("SF:src/file{f}.c\n"));
            for l in 1..=lines {
                let hits = u32::from(l % 3 != 0);
                text.push_str(&format!("DA:{l},{hits}\nBRDA:{l},0,0,{hits}\n"));
            }
            text.push_str("end_of_record\n");
        }
        Reports {
            coverage: Some(lcov::parse(text.as_bytes(), &Options::default()).unwrap()),
            job_coverage: vec![66.0],
            ..Reports::default()
        }
    }

    #[test]
    fn small_summaries_go_whole() {
        let r = coverage(3, 30);
        assert_eq!(fit(r.clone(), MAX_JSON), (Some(r), None));
    }

    #[test]
    fn large_coverage_keeps_totals_and_per_file_percentages() {
        let r = coverage(40, 3000);
        let whole = json_len(&r);
        let limit = whole / 10;
        let (sent, note) = fit(r.clone(), limit);
        let sent = sent.expect("the totals fit");
        assert!(json_len(&sent) <= limit);
        let note = note.unwrap();
        assert!(note.contains("per-line coverage is not sent"), "{note}");
        let (cov, was) = (
            sent.coverage.as_ref().unwrap(),
            r.coverage.as_ref().unwrap(),
        );
        assert_eq!(cov.counts(), was.counts());
        assert_eq!(cov.percent(), was.percent());
        assert_eq!(cov.branch_percent(), was.branch_percent());
        assert_eq!(sent.coverage_percent(), r.coverage_percent());
        assert_eq!(
            cov.files.keys().collect::<Vec<_>>(),
            was.files.keys().collect::<Vec<_>>()
        );
        for (file, f) in &cov.files {
            assert!(f.lines.is_empty(), "{file} kept its lines");
            assert_eq!(f.counts(), was.files[file].counts(), "{file}");
        }
        assert_eq!(sent.job_coverage, [66.0]);
    }

    #[test]
    fn long_messages_go_before_the_counts() {
        let long = "x".repeat(2000);
        let cases: String = (0..50)
            .map(|i| format!("<testcase name=\"t{i}\"><failure message=\"{long}\"/></testcase>"))
            .collect();
        let xml = format!("<testsuite name=\"s\">{cases}</testsuite>");
        let tests =
            gantry_runtime::gantry_reports::junit::parse(xml.as_bytes(), &Options::default())
                .unwrap();
        let r = Reports {
            tests: Some(tests),
            ..coverage(1, 10)
        };
        let (sent, note) = fit(r.clone(), 20_000);
        let sent = sent.expect("counts and names fit");
        assert!(note.unwrap().contains("messages of failed tests"));
        let (got, was) = (sent.tests.as_ref().unwrap(), r.tests.as_ref().unwrap());
        assert_eq!((got.total, got.failed), (was.total, was.failed));
        assert_eq!(got.failures.len(), 50);
        assert_eq!(got.failures[7].name, was.failures[7].name);
        assert!(got.failures.iter().all(|f| f.message.is_empty()));
        assert_eq!(sent.coverage.unwrap().percent(), was_percent(&r.coverage));
    }

    fn was_percent(c: &Option<gantry_runtime::gantry_reports::Coverage>) -> Option<f64> {
        c.as_ref()
            .and_then(gantry_runtime::gantry_reports::Coverage::percent)
    }

    #[test]
    fn what_cannot_fit_is_left_out_and_said() {
        let r = coverage(40, 3000);
        let (sent, note) = fit(r, 100);
        assert_eq!(sent, None);
        assert!(note.unwrap().ends_with("they are not sent to the server"));
    }
}
