//! The two faces of `gantry run`: human output (prefixed, coloured, with a live status line on a
//! terminal) and `--output json` (JSON Lines, a documented contract). Both are `Reporter`s.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gantry_runtime::executor::Stream;
use gantry_runtime::gantry_release::{Kind, Phase};
use gantry_runtime::gantry_reports::{GateOutcome, Reports, gate};
use gantry_runtime::{Event, JobStatus, PipelineStatus, ReportKind, Reporter, section};

/// How many of a failed job's last lines the summary shows.
const TAIL_LINES: usize = 12;
/// `--output`: a human's text, or JSON.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    Human,
    Json,
}

/// Output is flushed at least this often while lines stream.
const FLUSH_EVERY: Duration = Duration::from_millis(40);

/// Buffered stdout that flushes on a timer, so that 200,000 lines cost a few writes, not 200,000,
/// while a person still sees output live. A closed pipe silently stops output.
struct Out {
    buf: io::BufWriter<io::Stdout>,
    last_flush: Instant,
    broken: bool,
}

impl Out {
    fn new() -> Out {
        Out {
            buf: io::BufWriter::with_capacity(64 * 1024, io::stdout()),
            last_flush: Instant::now(),
            broken: false,
        }
    }
    fn line(&mut self, s: &str) {
        if self.broken {
            return;
        }
        if self
            .buf
            .write_all(s.as_bytes())
            .and_then(|()| self.buf.write_all(b"\n"))
            .is_err()
        {
            self.broken = true;
        }
        if self.last_flush.elapsed() >= FLUSH_EVERY {
            self.flush();
        }
    }
    /// Writes `s` without a newline (the live status line).
    fn raw(&mut self, s: &str) {
        if !self.broken && self.buf.write_all(s.as_bytes()).is_err() {
            self.broken = true;
        }
    }
    fn flush(&mut self) {
        if !self.broken && self.buf.flush().is_err() {
            self.broken = true;
        }
        self.last_flush = Instant::now();
    }
}

/// One finished job, for the summary.
struct Finished {
    name: String,
    status: JobStatus,
    allow_failure: bool,
    exit_code: Option<i32>,
    duration: Duration,
    coverage: Option<f64>,
    /// Why it failed without an exit code of its script.
    error: Option<String>,
    tail: Vec<String>,
}

struct HumanState {
    out: Out,
    width: usize,
    color: bool,
    /// Whether a live status line is shown (stdout is a terminal).
    status_line: bool,
    /// Whether it is on screen now, below the last output line.
    status_drawn: bool,
    running: usize,
    done: usize,
    total: usize,
    tails: HashMap<String, VecDeque<String>>,
    finished: Vec<Finished>,
    /// Each job's latest summaries, in the order jobs first reported.
    reports: Vec<(String, Reports)>,
    /// Each gate's latest verdict, in the order gates first reported.
    gates: Vec<(String, GateOutcome)>,
    pipeline: Option<(PipelineStatus, Duration)>,
}

/// Human output. Lines look like `build > text` and `build $ command`.
pub struct Human {
    state: Mutex<HumanState>,
}

const COLORS: [&str; 6] = ["36", "35", "34", "33", "32", "96"];

impl Human {
    /// Output for a run of `jobs` (names, for padding and colours).
    pub fn new(jobs: &[String]) -> Human {
        let color = io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let status_line = io::stdout().is_terminal();
        let width = jobs
            .iter()
            .map(|j| j.chars().count())
            .max()
            .unwrap_or(0)
            .min(40);
        Human {
            state: Mutex::new(HumanState {
                out: Out::new(),
                width,
                color,
                status_line,
                status_drawn: false,
                running: 0,
                done: 0,
                total: jobs.len(),
                tails: HashMap::new(),
                finished: Vec::new(),
                reports: Vec::new(),
                gates: Vec::new(),
                pipeline: None,
            }),
        }
    }

    /// Flushes buffered output (called on a timer).
    pub fn flush(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.out.flush();
        }
    }

    /// A rollback's line: `rollback of ENV: deployment FROM → TO` when it starts (`running`), then
    /// the same with `succeeded` or `FAILED`.
    pub fn rollback(&self, environment: &str, from: u64, to: u64, status: &str) {
        let Ok(mut s) = self.state.lock() else { return };
        s.clear_status();
        let text = format!("rollback of {environment}: deployment {from} → {to}");
        let line = match status {
            "running" => s.paint("1", &text),
            "success" => s.paint("32", &format!("{text} succeeded")),
            _ => s.paint("31", &format!("{text} FAILED")),
        };
        s.out.line(&line);
        s.out.flush();
        s.draw_status();
    }

    /// Prints the summary: every job with its result and duration, and the last lines of failed jobs.
    pub fn summary(&self) {
        let Ok(mut s) = self.state.lock() else { return };
        s.clear_status();
        s.status_line = false;
        let finished = std::mem::take(&mut s.finished);
        let width = finished
            .iter()
            .map(|f| f.name.chars().count())
            .max()
            .unwrap_or(0);
        s.out.line("");
        for f in &finished {
            let (label, code) = match f.status {
                JobStatus::Success => ("PASS", "32"),
                JobStatus::Failed if f.allow_failure => ("WARN", "33"),
                JobStatus::Failed => ("FAIL", "31"),
                JobStatus::Canceled => ("CANCELED", "31"),
                JobStatus::Skipped => ("SKIP", "90"),
                JobStatus::Manual => ("MANUAL", "90"),
                JobStatus::Created
                | JobStatus::Pending
                | JobStatus::Running
                | JobStatus::Scheduled => unreachable!("a run does not end a job {:?}", f.status),
            };
            let label = s.paint(code, &format!("{label:<8}"));
            let mut line = format!("{label} {:<width$}", f.name);
            if matches!(
                f.status,
                JobStatus::Success | JobStatus::Failed | JobStatus::Canceled
            ) {
                line.push_str(&format!("  {}", fmt_duration(f.duration)));
            }
            if let Some(c) = f.coverage {
                line.push_str(&format!("  coverage {c:.2}%"));
            }
            if f.status == JobStatus::Failed {
                match (f.exit_code, &f.error) {
                    (Some(c), _) => line.push_str(&format!("  exit code {c}")),
                    (None, Some(e)) => line.push_str(&format!("  {e}")),
                    (None, None) => line.push_str("  (no exit code)"),
                }
            }
            s.out.line(&line);
            if f.status == JobStatus::Failed && !f.allow_failure {
                for t in &f.tail {
                    let bar = s.paint("90", "  │");
                    s.out.line(&format!("{bar} {t}"));
                }
            }
        }
        s.reports_summary();
        if let Some((status, d)) = s.pipeline {
            let (word, code) = match status {
                PipelineStatus::Success => ("pipeline passed", "32"),
                PipelineStatus::Failed => ("pipeline failed", "31"),
                PipelineStatus::Canceled => ("pipeline canceled", "31"),
                PipelineStatus::Created
                | PipelineStatus::Pending
                | PipelineStatus::Running
                | PipelineStatus::Skipped
                | PipelineStatus::Manual => {
                    unreachable!("a run does not end a pipeline {status:?}")
                }
            };
            let text = s.paint(code, word);
            s.out.line(&format!("{text} in {}", fmt_duration(d)));
        }
        s.out.flush();
    }
}

/// How many failed tests the test summary lists.
const FAILED_TESTS_SHOWN: usize = 20;

impl HumanState {
    /// After the jobs: the test summary (passed, failed, skipped, the failed tests), coverage per
    /// job, then each gate's table.
    fn reports_summary(&mut self) {
        let reports = std::mem::take(&mut self.reports);
        let with_tests: Vec<_> = reports
            .iter()
            .filter_map(|(j, r)| Some((j, r.tests.as_ref()?)))
            .collect();
        if !with_tests.is_empty() {
            self.out.line("");
            self.out.line("tests:");
            let width = with_tests
                .iter()
                .map(|(j, _)| j.chars().count())
                .max()
                .unwrap_or(0);
            let mut failures = Vec::new();
            for (job, t) in &with_tests {
                let failed = t.failed_or_errored();
                let text = format!(
                    "  {job:<width$}  {} passed, {failed} failed, {} skipped",
                    t.passed, t.skipped
                );
                let text = if failed > 0 {
                    self.paint("31", &text)
                } else {
                    text
                };
                self.out.line(&text);
                failures.extend(t.failures.iter().map(|f| (job, f)));
            }
            for (job, f) in failures.iter().take(FAILED_TESTS_SHOWN) {
                let first = f
                    .message
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                let line = format!("  FAILED {job}: {}", f.display_name());
                let line = self.paint("31", &line);
                if first.is_empty() {
                    self.out.line(&line);
                } else {
                    self.out.line(&format!("{line}: {}", first.trim()));
                }
            }
            if failures.len() > FAILED_TESTS_SHOWN {
                self.out.line(&format!(
                    "  … and {} more failed tests",
                    failures.len() - FAILED_TESTS_SHOWN
                ));
            }
        }
        let with_coverage: Vec<_> = reports
            .iter()
            .filter_map(|(j, r)| Some((j, r.coverage.as_ref()?)))
            .collect();
        if !with_coverage.is_empty() {
            self.out.line("");
            self.out.line("coverage:");
            let width = with_coverage
                .iter()
                .map(|(j, _)| j.chars().count())
                .max()
                .unwrap_or(0);
            for (job, c) in with_coverage {
                let (covered, total) = c.counts();
                let pct = c.percent().map_or_else(
                    || "no coverable lines".to_owned(),
                    |p| format!("{}%", gate::format_number(p)),
                );
                self.out.line(&format!(
                    "  {job:<width$}  {pct} ({covered} of {total} covered)"
                ));
            }
        }
        for (job, outcome) in std::mem::take(&mut self.gates) {
            self.out.line("");
            let table = gate::render(&outcome);
            let mut lines = table.lines();
            if let Some(first) = lines.next() {
                let code = if outcome.passed { "32" } else { "31" };
                let head = self.paint(code, first);
                self.out.line(&format!("{job}: {head}"));
            }
            for l in lines {
                self.out.line(l);
            }
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn prefix(&self, job: &str, sep: char) -> String {
        let padded = format!("{job:<w$}", w = self.width);
        if !self.color {
            return format!("{padded} {sep}");
        }
        let h = job
            .bytes()
            .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize));
        format!("\x1b[{}m{padded}\x1b[0m {sep}", COLORS[h % COLORS.len()])
    }

    /// Removes the status line, so that the next output line takes its place. It goes through the
    /// same buffer as the output, so the two never interleave.
    fn clear_status(&mut self) {
        if self.status_drawn {
            self.out.raw("\r\x1b[2K");
            self.status_drawn = false;
        }
    }

    fn draw_status(&mut self) {
        if self.status_line {
            let queued = self.total.saturating_sub(self.running + self.done);
            let text = format!(
                "\x1b[90m{} running · {} queued · {}/{} done\x1b[0m",
                self.running, queued, self.done, self.total
            );
            self.out.raw(&text);
            self.status_drawn = true;
        }
    }
}

impl Reporter for Human {
    fn event(&self, e: Event<'_>) {
        let Ok(mut s) = self.state.lock() else { return };
        s.clear_status();
        match e {
            Event::JobStarted {
                job,
                stage,
                attempt,
            } => {
                s.running += 1;
                let p = s.prefix(job, '>');
                let what = if attempt > 1 {
                    format!("retrying (attempt {attempt})")
                } else {
                    format!("starting, stage {stage}")
                };
                let what = s.paint("1", &what);
                s.out.line(&format!("{p} {what}"));
            }
            Event::JobEcho { job, command } => {
                let p = s.prefix(job, '$');
                let c = s.paint("32", command);
                s.out.line(&format!("{p} {c}"));
            }
            Event::JobLog { job, line, .. } => {
                // Section markers: the runtime's own and every end show nothing; a job's own start
                // shows its header.
                let line = match section::parse(line) {
                    None => line,
                    Some(m) if m.start && !m.header.is_empty() && !section::is_own_marker(line) => {
                        m.header
                    }
                    Some(_) => {
                        s.draw_status();
                        return;
                    }
                };
                let p = s.prefix(job, '>');
                s.out.line(&format!("{p} {line}"));
                let tail = s.tails.entry(job.to_string()).or_default();
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line.to_string());
            }
            Event::JobInfo { job, message } => {
                let p = s.prefix(job, '>');
                let m = s.paint("33", message);
                s.out.line(&format!("{p} {m}"));
            }
            Event::JobFinished {
                job,
                status,
                allow_failure,
                exit_code,
                duration,
                coverage,
                error,
                ..
            } => {
                let ran = match status {
                    JobStatus::Success => Some(("passed".to_string(), "32")),
                    JobStatus::Failed if allow_failure => {
                        Some(("failed (allowed to fail)".to_string(), "33"))
                    }
                    JobStatus::Failed => Some(("failed".to_string(), "31")),
                    JobStatus::Canceled => Some(("canceled".to_string(), "31")),
                    JobStatus::Skipped
                    | JobStatus::Manual
                    | JobStatus::Created
                    | JobStatus::Pending
                    | JobStatus::Running
                    | JobStatus::Scheduled => None,
                };
                if let Some((word, code)) = ran {
                    s.running = s.running.saturating_sub(1);
                    let p = s.prefix(job, '>');
                    let word = match exit_code {
                        Some(c) if c != 0 => format!("{word}, exit code {c}"),
                        _ => word,
                    };
                    let text = s.paint(code, &word);
                    s.out
                        .line(&format!("{p} {text} in {}", fmt_duration(duration)));
                }
                s.done += 1;
                let tail = s.tails.remove(job).map(Vec::from).unwrap_or_default();
                s.finished.push(Finished {
                    name: job.to_string(),
                    status,
                    allow_failure,
                    exit_code,
                    duration,
                    coverage,
                    error: error.map(str::to_string),
                    tail,
                });
            }
            Event::PipelineFinished { status, duration } => {
                s.pipeline = Some((status, duration));
            }
            Event::Report { job, reports, .. } => {
                match s.reports.iter_mut().find(|(j, _)| j == job) {
                    Some((_, r)) => *r = reports.clone(),
                    None => s.reports.push((job.to_owned(), reports.clone())),
                }
            }
            Event::Gate { job, outcome } => match s.gates.iter_mut().find(|(j, _)| j == job) {
                Some((_, o)) => *o = outcome.clone(),
                None => s.gates.push((job.to_owned(), outcome.clone())),
            },
            Event::Verify {
                job,
                weight,
                measurement,
            } => {
                let p = s.prefix(job, '>');
                let code = if measurement.passed { "32" } else { "31" };
                let text = s.paint(code, &gantry_runtime::measurement_line(measurement, weight));
                s.out.line(&format!("{p} {text}"));
            }
        }
        s.draw_status();
    }
}

/// `--output json`: one JSON object per line, each with an `event` key.
pub struct Json {
    out: Mutex<Out>,
}

impl Json {
    /// JSON Lines on stdout.
    pub fn new() -> Json {
        Json {
            out: Mutex::new(Out::new()),
        }
    }
    /// Flushes buffered output.
    pub fn flush(&self) {
        if let Ok(mut o) = self.out.lock() {
            o.flush();
        }
    }
    /// Writes one event object.
    pub fn write(&self, v: &serde_json::Value) {
        if let Ok(mut o) = self.out.lock() {
            o.line(&v.to_string());
        }
    }

    /// The `rollback` event: `status` is `running` when it starts, then `success` or `failed`.
    pub fn rollback(&self, environment: &str, from: u64, to: u64, status: &str) {
        self.write(&serde_json::json!({
            "event": "rollback", "environment": environment, "from": from, "to": to,
            "status": status,
        }));
        self.flush();
    }
}

/// The events of the JSON Lines contract, serialised without building intermediate values.
#[derive(serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum JsonEvent<'a> {
    JobStarted {
        job: &'a str,
        stage: &'a str,
    },
    JobLog {
        job: &'a str,
        stream: &'static str,
        line: &'a str,
    },
    JobFinished {
        job: &'a str,
        status: &'static str,
        allow_failure: bool,
        exit_code: Option<i32>,
        duration_ms: u64,
        coverage: Option<f64>,
        /// Why it failed, as GitLab names it (`script_failure`, ...; `verification_failure`).
        reason: Option<&'static str>,
        error: Option<&'a str>,
    },
    PipelineFinished {
        status: &'static str,
        duration_ms: u64,
    },
    Report {
        job: &'a str,
        kind: &'static str,
        summary: serde_json::Value,
    },
    Gate {
        job: &'a str,
        passed: bool,
        conditions: &'a [gate::ConditionResult],
        offenders: &'a gate::Offenders,
    },
    Verify {
        job: &'a str,
        check: &'a str,
        value: Option<f64>,
        threshold: &'a str,
        passed: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        weight: Option<u8>,
        kind: Kind,
        phase: Phase,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<&'a str>,
    },
}

/// The `summary` of a `report` event: the kind's summary as `gantry-reports` keeps it, except
/// coverage, whose per-line data would be as large as the report: its totals only.
fn report_summary(kind: ReportKind, r: &Reports) -> serde_json::Value {
    let v = match kind {
        ReportKind::Junit => serde_json::to_value(&r.tests),
        ReportKind::Coverage => {
            return r.coverage.as_ref().map_or(serde_json::Value::Null, |c| {
                let (covered, total) = c.counts();
                serde_json::json!({
                    "percent": c.percent(),
                    "lines_covered": covered,
                    "lines_total": total,
                    "branch_percent": c.branch_percent(),
                    "files": c.files.len(),
                })
            });
        }
        ReportKind::Sarif => serde_json::to_value(&r.sarif),
        ReportKind::Vulnerabilities => serde_json::to_value(&r.vulnerabilities),
        ReportKind::Codequality => serde_json::to_value(&r.codequality),
    };
    v.unwrap_or(serde_json::Value::Null)
}

impl Reporter for Json {
    fn event(&self, e: Event<'_>) {
        let (v, flush) = match e {
            Event::JobStarted { job, stage, .. } => (JsonEvent::JobStarted { job, stage }, false),
            // The runtime's own section markers are no output of the job (a job's own are).
            Event::JobLog { line, .. } if section::is_own_marker(line) => return,
            Event::JobLog { job, stream, line } => {
                let stream = if stream == Stream::Stderr {
                    "stderr"
                } else {
                    "stdout"
                };
                (JsonEvent::JobLog { job, stream, line }, false)
            }
            Event::JobFinished {
                job,
                status,
                allow_failure,
                exit_code,
                duration,
                coverage,
                reason,
                error,
                ..
            } => (
                JsonEvent::JobFinished {
                    job,
                    status: status.as_str(),
                    allow_failure,
                    exit_code,
                    duration_ms: millis(duration),
                    coverage,
                    reason: reason.map(gantry_pipeline::plan::FailureReason::as_str),
                    error,
                },
                true,
            ),
            Event::PipelineFinished { status, duration } => (
                JsonEvent::PipelineFinished {
                    status: status.as_str(),
                    duration_ms: millis(duration),
                },
                true,
            ),
            Event::JobInfo { job, message } => {
                // Not part of the JSON contract, but never lost: notes go to stderr.
                eprintln!("gantry: {job}: {message}");
                return;
            }
            Event::Report { job, kind, reports } => (
                JsonEvent::Report {
                    job,
                    kind: kind.as_str(),
                    summary: report_summary(kind, reports),
                },
                false,
            ),
            Event::Gate { job, outcome } => (
                JsonEvent::Gate {
                    job,
                    passed: outcome.passed,
                    conditions: &outcome.conditions,
                    offenders: &outcome.offenders,
                },
                true,
            ),
            Event::Verify {
                job,
                weight,
                measurement: m,
            } => (
                JsonEvent::Verify {
                    job,
                    check: &m.check,
                    value: m.value,
                    threshold: &m.threshold,
                    passed: m.passed,
                    weight,
                    kind: m.kind,
                    phase: m.phase,
                    detail: m.detail.as_deref(),
                },
                true,
            ),
            Event::JobEcho { .. } => return,
        };
        let Ok(mut o) = self.out.lock() else { return };
        if o.broken {
            return;
        }
        if serde_json::to_writer(&mut o.buf, &v).is_err() {
            o.broken = true;
        }
        o.line("");
        if flush {
            o.flush();
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `1.23s`, `2m 03s`, `45ms`.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.2}s", d.as_secs_f64())
    } else {
        format!("{}m {:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}
