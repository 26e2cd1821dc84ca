//! The output of `go test -json` (`gotest`, a Gantry extension key), one JSON event per line.
//!
//! Every test and subtest that ends in `pass`, `fail` or `skip` counts once. A failed test's
//! message is its output, capped. A package that fails without a failed test (it did not build,
//! `TestMain` or an `init` failed, the binary panicked or timed out outside a test) counts as one
//! test in error named after the package, with the package's output and build output as its
//! message. Lines that are not JSON objects (what `go` prints on stderr when both streams are
//! captured, such as build errors of older Go versions) are kept as context for build failures.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use serde::Deserialize;

use crate::error::{Error, Position};
use crate::input::Lines;
use crate::options::{MAX_MESSAGE, Options, cap_message};
use crate::tests::{FailedTest, FailureKind, TestReport};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GoEvent {
    action: String,
    #[serde(default)]
    package: Option<String>,
    #[serde(default)]
    test: Option<String>,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    import_path: Option<String>,
    #[serde(default)]
    failed_build: Option<String>,
}

/// Output kept while a test or package runs, capped.
#[derive(Default)]
struct Output(String);

impl Output {
    fn push(&mut self, s: &str) {
        crate::options::push_capped(&mut self.0, s);
    }
}

/// Reads the output of `go test -json`.
///
/// # Errors
/// A line that starts like a JSON object but is not a valid event, or more than
/// `options.max_bytes` bytes.
pub fn parse<R: Read>(reader: R, options: &Options) -> Result<TestReport, Error> {
    let mut lines = Lines::new(reader, options.max_bytes);
    let mut report = TestReport::default();
    let mut running: HashMap<(String, String), Output> = HashMap::new();
    let mut packages: HashMap<String, Output> = HashMap::new();
    let mut builds: HashMap<String, Output> = HashMap::new();
    let mut with_failed_tests: HashSet<String> = HashSet::new();
    let mut loose = Output::default();
    while let Some((n, line)) = lines.next_line()? {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if !trimmed.starts_with('{') {
            loose.push(trimmed);
            loose.push("\n");
            continue;
        }
        let ev: GoEvent = serde_json::from_str(trimmed).map_err(|e| {
            Error::invalid(
                Some(Position::Line {
                    line: n,
                    column: Some(e.column() as u64),
                }),
                format!("not a `go test -json` event: {e}"),
            )
        })?;
        let pkg = ev.package.clone().unwrap_or_default();
        match (ev.action.as_str(), ev.test) {
            ("build-output", _) => {
                if let (Some(path), Some(out)) = (ev.import_path, ev.output) {
                    builds.entry(path).or_default().push(&out);
                }
            }
            ("output", Some(test)) => {
                if let Some(out) = ev.output {
                    running.entry((pkg, test)).or_default().push(&out);
                }
            }
            ("output", None) => {
                if let Some(out) = ev.output {
                    packages.entry(pkg).or_default().push(&out);
                }
            }
            ("pass", Some(test)) => {
                running.remove(&(pkg, test));
                report.total += 1;
                report.passed += 1;
            }
            ("skip", Some(test)) => {
                running.remove(&(pkg, test));
                report.total += 1;
                report.skipped += 1;
            }
            ("fail", Some(test)) => {
                let out = running
                    .remove(&(pkg.clone(), test.clone()))
                    .unwrap_or_default();
                with_failed_tests.insert(pkg.clone());
                report.record_failure(FailedTest {
                    suite: pkg,
                    message: cap_message(failure_message(&out.0)),
                    name: test,
                    kind: FailureKind::Failure,
                });
            }
            ("fail", None) => {
                if with_failed_tests.contains(&pkg) {
                    continue;
                }
                let mut message = packages.remove(&pkg).unwrap_or_default().0;
                if let Some(build) = ev.failed_build.as_ref().and_then(|b| builds.get(b)) {
                    message = format!("{}\n{message}", build.0);
                } else if message.contains("[build failed]") && !loose.0.is_empty() {
                    message = format!("{}\n{message}", loose.0);
                }
                report.record_failure(FailedTest {
                    name: pkg.clone(),
                    suite: pkg,
                    message: cap_message(message.trim().to_owned()),
                    kind: FailureKind::Error,
                });
            }
            ("pass" | "skip", None) => {
                packages.remove(&pkg);
            }
            _ => {}
        }
    }
    Ok(report)
}

/// A failed test's output without the `=== RUN` and `--- FAIL` framing lines.
fn failure_message(out: &str) -> String {
    let mut m = String::with_capacity(out.len().min(MAX_MESSAGE));
    for l in out.lines() {
        let t = l.trim_start();
        if t.starts_with("=== ") || t.starts_with("--- FAIL") {
            continue;
        }
        m.push_str(l);
        m.push('\n');
    }
    m.trim_end().to_owned()
}
