//! The two faces of `gantry run`: human output (prefixed, coloured, with a live status line on a
//! terminal) and `--output json` (JSON Lines, a documented contract). Both are `Reporter`s.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gantry_runtime::executor::Stream;
use gantry_runtime::{Event, JobStatus, PipelineStatus, Reporter};

/// How many of a failed job's last lines the summary shows.
const TAIL_LINES: usize = 12;
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

impl HumanState {
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
        error: Option<&'a str>,
    },
    PipelineFinished {
        status: &'static str,
        duration_ms: u64,
    },
}

impl Reporter for Json {
    fn event(&self, e: Event<'_>) {
        let (v, flush) = match e {
            Event::JobStarted { job, stage, .. } => (JsonEvent::JobStarted { job, stage }, false),
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
