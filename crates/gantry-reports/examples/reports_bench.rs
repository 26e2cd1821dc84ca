//! Parsing and gate benchmark: writes a JUnit file and a SARIF log of the given sizes into a
//! temporary directory (removed at the end), parses each, and prints MB/s and the peak resident
//! memory of the parse; then decides a gate over 20 jobs' summaries and prints the time.
//!
//!   cargo run --release -p gantry-reports --example reports_bench [JUNIT_MB] [SARIF_MB]
//!
//! `bench/reports.sh` runs it. Peak memory is Linux's `VmHWM`, reset before each parse through
//! `/proc/self/clear_refs`; elsewhere it prints "n/a". Besides wall-clock MB/s it prints MB/s of
//! the thread's on-CPU time (`/proc/thread-self/schedstat`), which a busy machine disturbs less.
#![allow(clippy::print_stdout, missing_docs)]

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use gantry_pipeline::gate::Condition;
use gantry_reports::coverage::FileCoverage;
use gantry_reports::sarif::{Level, SarifReport, SarifResult};
use gantry_reports::security::{Severity, Vulnerability, VulnerabilityReport};
use gantry_reports::tests::{FailedTest, FailureKind};
use gantry_reports::{
    ChangedLines, Coverage, Options, Reports, TestReport, evaluate, gate, junit, sarif,
};

const MB: u64 = 1024 * 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let junit_mb: u64 = args.next().map_or(Ok(100), |a| a.parse())?;
    let sarif_mb: u64 = args.next().map_or(Ok(50), |a| a.parse())?;
    let dir = tempfile::tempdir()?;

    let junit_path = dir.path().join("junit.xml");
    let cases = write_junit(&junit_path, junit_mb * MB)?;
    let size = std::fs::metadata(&junit_path)?.len();
    let opts = Options {
        max_bytes: size + 1,
        ..Options::default()
    };
    let (report, took, peak) = measure(|| {
        Ok(junit::parse(
            BufReader::new(File::open(&junit_path)?),
            &opts,
        )?)
    })?;
    assert_eq!(report.total, cases);
    print_parse(
        "JUnit",
        size,
        took,
        peak,
        &format!("{} cases, {} failed", report.total, report.failed),
    );
    std::fs::remove_file(&junit_path)?;

    let sarif_path = dir.path().join("results.sarif");
    let results = write_sarif(&sarif_path, sarif_mb * MB)?;
    let size = std::fs::metadata(&sarif_path)?.len();
    let opts = Options {
        max_bytes: size + 1,
        ..Options::default()
    };
    let (report, took, peak) = measure(|| {
        Ok(sarif::parse(
            BufReader::new(File::open(&sarif_path)?),
            &opts,
        )?)
    })?;
    assert_eq!(report.errors + report.warnings + report.notes, results);
    print_parse("SARIF", size, took, peak, &format!("{results} results"));
    std::fs::remove_file(&sarif_path)?;

    gate_bench()?;
    Ok(())
}

fn print_parse(what: &str, size: u64, took: Measured, peak: Option<u64>, detail: &str) {
    let Measured { wall: took, cpu } = took;
    #[allow(clippy::cast_precision_loss)]
    let mbs = size as f64 / MB as f64 / took.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let cpu = cpu.map_or("n/a".to_owned(), |c| {
        format!("{:.0} MB/s", size as f64 / MB as f64 / c.as_secs_f64())
    });
    let peak = peak.map_or("n/a".to_owned(), |kb| {
        format!("{:.1} MB", kb as f64 / 1024.0)
    });
    println!(
        "{what:6} {:>6.1} MB in {:>6.3} s: {mbs:>6.0} MB/s (on CPU: {cpu}), peak RSS during the parse {peak} ({detail})",
        size as f64 / MB as f64,
        took.as_secs_f64()
    );
}

/// Wall-clock and on-CPU time.
struct Measured {
    wall: Duration,
    cpu: Option<Duration>,
}

/// The thread's time on CPU so far (Linux).
fn cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(Duration::from_nanos(
        s.split_whitespace().next()?.parse().ok()?,
    ))
}

/// Runs `f` with the peak RSS reset before, returning its value, times and peak RSS in kB.
fn measure<T>(
    f: impl FnOnce() -> Result<T, Box<dyn std::error::Error>>,
) -> Result<(T, Measured, Option<u64>), Box<dyn std::error::Error>> {
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let cpu_start = cpu_time();
    let start = Instant::now();
    let value = f()?;
    let wall = start.elapsed();
    let cpu = cpu_time().zip(cpu_start).map(|(b, a)| b - a);
    let peak = if reset { peak_rss_kb() } else { None };
    Ok((value, Measured { wall, cpu }, peak))
}

fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A JUnit file of about `bytes` bytes shaped like a Maven Surefire report; returns its cases.
fn write_junit(path: &Path, bytes: u64) -> std::io::Result<u64> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let written = std::cell::Cell::new(0u64);
    let mut cases = 0u64;
    let emit = |w: &mut BufWriter<File>, s: &str| -> std::io::Result<()> {
        written.set(written.get() + s.len() as u64);
        w.write_all(s.as_bytes())
    };
    emit(
        &mut w,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"all\">\n",
    )?;
    let mut suite = 0u64;
    while written.get() < bytes {
        suite += 1;
        emit(
            &mut w,
            &format!(
                "  <testsuite name=\"com.example.module{suite}.ServiceTest\" tests=\"50\" time=\"1.25\">\n    <properties><property name=\"java.version\" value=\"21\"/></properties>\n"
            ),
        )?;
        for i in 0..50 {
            cases += 1;
            let head = format!(
                "    <testcase name=\"handlesRequestNumber{i}WithValidInput\" classname=\"com.example.module{suite}.ServiceTest\" time=\"0.0{i}\""
            );
            match i % 20 {
                0 => emit(
                    &mut w,
                    &format!(
                        "{head}>\n      <failure message=\"expected: &lt;200&gt; but was: &lt;500&gt;\" type=\"org.opentest4j.AssertionFailedError\"><![CDATA[org.opentest4j.AssertionFailedError: expected: <200> but was: <500>\n\tat org.junit.jupiter.api.AssertionUtils.fail(AssertionUtils.java:55)\n\tat com.example.module{suite}.ServiceTest.handlesRequestNumber{i}(ServiceTest.java:{i})\n\tat java.base/java.lang.reflect.Method.invoke(Method.java:580)]]></failure>\n      <system-out>request id {cases} &amp; trace</system-out>\n    </testcase>\n"
                    ),
                )?,
                1 => emit(
                    &mut w,
                    &format!(
                        "{head}>\n      <skipped message=\"disabled on CI\"/>\n    </testcase>\n"
                    ),
                )?,
                _ => emit(
                    &mut w,
                    &format!(
                        "{head}>\n      <system-out>GET /api/items/{i} 200 OK in 3ms</system-out>\n    </testcase>\n"
                    ),
                )?,
            }
        }
        emit(&mut w, "  </testsuite>\n")?;
    }
    emit(&mut w, "</testsuites>\n")?;
    w.flush()?;
    Ok(cases)
}

/// A SARIF log of about `bytes` bytes shaped like a linter's; returns its results.
fn write_sarif(path: &Path, bytes: u64) -> std::io::Result<u64> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let head = r#"{"$schema":"https://json.schemastore.org/sarif-2.1.0.json","version":"2.1.0","runs":[{"tool":{"driver":{"name":"lint","version":"1.0","rules":[{"id":"R1","defaultConfiguration":{"level":"error"}},{"id":"R2"},{"id":"R3","defaultConfiguration":{"level":"note"}}]}},"results":["#;
    w.write_all(head.as_bytes())?;
    let mut written = head.len() as u64;
    let mut n = 0u64;
    while written < bytes {
        let rule = ["R1", "R2", "R3"][(n % 3) as usize];
        let sep = if n == 0 { "" } else { "," };
        let r = format!(
            r#"{sep}
{{"ruleId":"{rule}","ruleIndex":{},"message":{{"text":"Variable 'value{n}' is assigned but its value is never used in this function body"}},"locations":[{{"physicalLocation":{{"artifactLocation":{{"uri":"src/module{}/file{}.go","uriBaseId":"%SRCROOT%"}},"region":{{"startLine":{},"startColumn":5,"endLine":{},"endColumn":20}}}}}}],"partialFingerprints":{{"primaryLocationLineHash":"{:016x}"}}}}"#,
            n % 3,
            n % 97,
            n % 13,
            n % 500 + 1,
            n % 500 + 1,
            n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        );
        written += r.len() as u64;
        w.write_all(r.as_bytes())?;
        n += 1;
    }
    w.write_all(b"]}]}\n")?;
    w.flush()?;
    Ok(n)
}

/// One job's summaries at the caps: 1000 failed tests, 1000 SARIF errors, 200 vulnerabilities,
/// and coverage of 50 files of 400 lines.
fn job(j: u32) -> Reports {
    let mut tests = TestReport {
        total: 5000,
        passed: 4000,
        ..TestReport::default()
    };
    for i in 0..1000 {
        tests.failed += 1;
        tests.failures.push(FailedTest {
            suite: format!("pkg{j}"),
            name: format!("TestCase{i}"),
            kind: FailureKind::Failure,
            message: "assertion failed: expected 1, got 2\n    at handler_test.go:42".to_owned(),
        });
    }
    let mut coverage = Coverage::default();
    for f in 0..50 {
        let file = FileCoverage {
            lines: (1..=400).map(|l| (l, u64::from((l + j) % 3))).collect(),
            ..FileCoverage::default()
        };
        // Half the files are shared between jobs, half are the job's own.
        let name = if f < 25 {
            format!("shared/f{f}.go")
        } else {
            format!("job{j}/f{f}.go")
        };
        coverage.files.insert(name, file);
    }
    let mut sarif = SarifReport::default();
    for i in 0..1000u32 {
        sarif.errors += 1;
        sarif.results.push(SarifResult {
            level: Level::Error,
            rule_id: Some("R1".into()),
            file: Some(format!("job{j}/f{}.go", i % 50)),
            line: Some(u64::from(i % 400)),
            message: "unused variable".into(),
        });
    }
    let mut vulnerabilities = VulnerabilityReport::default();
    for i in 0..200 {
        vulnerabilities.high += 1;
        vulnerabilities.vulnerabilities.push(Vulnerability {
            severity: Severity::High,
            id: format!("CVE-2024-{i:05}"),
            name: "a vulnerability".into(),
            package: Some(format!("example.com/dep{i}")),
            version: Some("v1.2.3".into()),
            file: Some("go.sum".into()),
            line: None,
            identifiers: vec![format!("CVE-2024-{i:05}")],
        });
    }
    Reports {
        tests: Some(tests),
        coverage: Some(coverage),
        job_coverage: vec![],
        sarif: Some(sarif),
        vulnerabilities: Some(vulnerabilities),
        codequality: None,
    }
}

fn gate_bench() -> Result<(), Box<dyn std::error::Error>> {
    let jobs: Vec<Reports> = (0..20).map(job).collect();
    let stored: Vec<String> = jobs
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<_, _>>()?;
    let mut diff = String::new();
    for f in 0..20 {
        diff.push_str(&format!(
            "--- a/shared/f{f}.go\n+++ b/shared/f{f}.go\n@@ -10,0 +11,50 @@\n"
        ));
        for _ in 0..50 {
            diff.push_str("+x\n");
        }
    }
    let conditions: Vec<Condition> = [
        ("coverage", ">= 60"),
        ("new_coverage", ">= 80"),
        ("tests_failed", "== 0"),
        ("tests_total", "> 0"),
        ("sarif_errors", "== 0"),
        ("sarif_warnings", "<= 10"),
        ("vulnerabilities_critical", "== 0"),
        ("vulnerabilities_high", "<= 2"),
    ]
    .iter()
    .map(|(m, t)| Condition::parse(m, t))
    .collect::<Result<_, _>>()?;
    let runs = 50;
    let mut in_memory = Vec::with_capacity(runs);
    let mut from_json = Vec::with_capacity(runs);
    let mut table = String::new();
    for run in 0..runs + 3 {
        let start = Instant::now();
        let changes = ChangedLines::parse(&diff)?;
        let merged = Reports::merged(&jobs);
        let outcome = evaluate(&conditions, &merged, Some(&changes));
        table = gate::render(&outcome);
        let took = start.elapsed();
        if run >= 3 {
            in_memory.push(took);
        }

        let start = Instant::now();
        let parsed: Vec<Reports> = stored
            .iter()
            .map(|s| serde_json::from_str(s))
            .collect::<Result<_, _>>()?;
        let changes = ChangedLines::parse(&diff)?;
        let outcome = evaluate(&conditions, &Reports::merged(&parsed), Some(&changes));
        std::hint::black_box(gate::render(&outcome));
        let took = start.elapsed();
        if run >= 3 {
            from_json.push(took);
        }
    }
    in_memory.sort();
    from_json.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let json_kb = stored.iter().map(String::len).sum::<usize>() / 1024;
    println!(
        "gate   20 jobs, {} conditions: merge + evaluate + table median {:.2} ms (p90 {:.2}); from stored JSON ({json_kb} kB) median {:.2} ms (p90 {:.2}); {runs} runs after 3 warm-up runs",
        conditions.len(),
        ms(in_memory[runs / 2]),
        ms(in_memory[runs * 9 / 10]),
        ms(from_json[runs / 2]),
        ms(from_json[runs * 9 / 10]),
    );
    assert!(table.starts_with("quality gate: FAILED"));
    Ok(())
}
