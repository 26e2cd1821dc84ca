//! A job's log on its way to the server: the [`LogReporter`] formats the runtime's events into lines
//! and appends them to a spool file; [`upload`] tails that file and sends it in chunks.
//!
//! *Architecture Invariant*: neither side holds the log in memory or waits for the other. The
//! reporter only writes to the file (through a small buffer); the uploader reads at most one chunk
//! at a time, and continues from whatever size the server says it holds, so a chunk whose answer was
//! lost is sent again without being doubled.

use std::fs::File;
use std::io::{self, BufWriter, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gantry_runtime::gantry_reports::{GateOutcome, Reports};
use gantry_runtime::{Event, ReportKind, Reporter, Stream};
use tokio::sync::Notify;

use crate::backoff::Backoff;
use crate::client::{CallError, Client};

/// The most bytes one `PUT .../log` carries.
pub(crate) const CHUNK: usize = 256 * 1024;
/// How often the uploader looks for new lines when nobody tells it.
const TICK: Duration = Duration::from_millis(250);
/// How long the uploader lets new lines gather before it sends less than a [`CHUNK`]: the lines of
/// a burst (or of a whole short job, until the log is closed) go in one request, and a live log is
/// at most this far behind.
const LINGER: Duration = Duration::from_millis(100);
/// The prefix of the lines the runtime and the agent write about a job (not the job's output).
pub(crate) const INFO: &str = "[gantry] ";

/// The spool file's writing end.
struct Writer {
    file: BufWriter<File>,
    /// Bytes written, buffered ones included.
    written: u64,
    /// The first write error, after which nothing more is written.
    error: Option<io::Error>,
}

/// A log spool: one file, written by the reporter, read by the uploader.
pub(crate) struct Spool {
    writer: Mutex<Writer>,
    reader: File,
    /// Something new was written, or the log is closed.
    wake: Notify,
    /// No more lines will come.
    closed: AtomicBool,
}

impl Spool {
    /// Creates (truncates) the spool file at `path`.
    pub(crate) fn create(path: &Path) -> io::Result<Spool> {
        let file = File::create(path)?;
        let reader = File::open(path)?;
        Ok(Spool {
            writer: Mutex::new(Writer {
                file: BufWriter::with_capacity(64 * 1024, file),
                written: 0,
                error: None,
            }),
            reader,
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        })
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `text` (whole lines, each ending in `\n`).
    pub(crate) fn write(&self, text: &str) {
        {
            let mut w = self.writer();
            if w.error.is_some() {
                return;
            }
            match w.file.write_all(text.as_bytes()) {
                Ok(()) => w.written += text.len() as u64,
                Err(e) => w.error = Some(e),
            }
        }
        self.wake.notify_one();
    }

    /// Appends one line written by the agent or the runtime (not the job), with [`INFO`] before it.
    pub(crate) fn info(&self, message: &str) {
        let mut text = String::with_capacity(INFO.len() + message.len() + 1);
        for line in message.lines() {
            text.push_str(INFO);
            text.push_str(line);
            text.push('\n');
        }
        self.write(&text);
    }

    /// Writes out the buffer; how many bytes the file holds.
    fn flush(&self) -> u64 {
        let mut w = self.writer();
        if w.error.is_none() {
            if let Err(e) = w.file.flush() {
                w.error = Some(e);
            }
        }
        w.written
    }

    /// Says that no more lines will come; the uploader sends the rest and ends.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Bytes `start..end` of the file (fewer at its end).
    fn read(&self, start: u64, end: u64) -> io::Result<Vec<u8>> {
        let len = usize::try_from(end.saturating_sub(start)).unwrap_or(CHUNK);
        let mut buf = vec![0; len];
        let mut got = 0;
        while got < len {
            let n = self.reader.read_at(&mut buf[got..], start + got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        Ok(buf)
    }
}

/// Formats the runtime's events as log text into a [`Spool`], and keeps what the `finish` call
/// carries: the job's result, its report summaries and its gate's verdict.
pub(crate) struct LogReporter {
    pub spool: Arc<Spool>,
    finished: Mutex<Option<gantry_runtime::JobResult>>,
    summaries: Mutex<Summaries>,
}

/// A job's report summaries (as the runtime keeps them: masked, merged over its reports) and
/// its gate's verdict.
#[derive(Debug, Default)]
pub(crate) struct Summaries {
    pub reports: Option<Reports>,
    pub gate: Option<GateOutcome>,
    /// The verification's measurements, every step's, in order (at most [`MAX_MEASUREMENTS`]).
    pub measurements: Vec<gantry_api::deployments::Measurement>,
}

/// The most measurements a finish carries: a verification of hours at short intervals stays
/// well under the server's finish limit; the log holds every one.
pub(crate) const MAX_MEASUREMENTS: usize = 10_000;

/// Keeps `m` (taken at the progressive step of `weight`) in `kept` as the agent protocol carries
/// it, the same JSON plus the weight; past [`MAX_MEASUREMENTS`], none.
pub(crate) fn keep_measurement(
    kept: &mut Vec<gantry_api::deployments::Measurement>,
    m: &gantry_runtime::gantry_release::Measurement,
    weight: Option<u8>,
) {
    if kept.len() >= MAX_MEASUREMENTS {
        return;
    }
    let api = serde_json::to_value(m)
        .and_then(serde_json::from_value::<gantry_api::deployments::Measurement>);
    match api {
        Ok(api) => kept.push(gantry_api::deployments::Measurement { weight, ..api }),
        Err(e) => tracing::warn!(error = %e, "a measurement the protocol cannot carry"),
    }
}

impl LogReporter {
    /// A reporter writing to `spool`.
    pub(crate) fn new(spool: Arc<Spool>) -> LogReporter {
        LogReporter {
            spool,
            finished: Mutex::new(None),
            summaries: Mutex::new(Summaries::default()),
        }
    }

    /// The job's summaries and gate verdict, taken. A job whose only summary is its `coverage:`
    /// regex's value (no [`Event::Report`]) gets it as [`Reports::job_coverage`], as the runtime
    /// keeps it for a local gate (unless it was canceled: the runtime keeps nothing then).
    pub(crate) fn take_summaries(&self) -> Summaries {
        let mut s = std::mem::take(&mut *self.summaries());
        if s.reports.is_none() {
            let coverage = self
                .result()
                .filter(|r| r.status != gantry_runtime::JobStatus::Canceled)
                .and_then(|r| r.coverage);
            s.reports = coverage.map(|c| Reports {
                job_coverage: vec![c],
                ..Reports::default()
            });
        }
        s
    }

    fn summaries(&self) -> std::sync::MutexGuard<'_, Summaries> {
        self.summaries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The result of the job, once the runtime reported it finished.
    pub(crate) fn result(&self) -> Option<gantry_runtime::JobResult> {
        self.finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Reporter for LogReporter {
    fn event(&self, event: Event<'_>) {
        match event {
            Event::JobStarted { .. } | Event::PipelineFinished { .. } => {}
            // Each carries all of the attempt's summaries: kept once, at its first kind.
            Event::Report { kind, reports, .. } => {
                if ReportKind::present(reports).first() == Some(&kind) {
                    self.summaries().reports = Some(reports.clone());
                }
            }
            // The gate's table goes into the job's log, where the server shows it.
            Event::Gate { outcome, .. } => {
                self.spool
                    .write(&gantry_runtime::gantry_reports::gate::render(outcome));
                self.summaries().gate = Some(outcome.clone());
            }
            Event::JobEcho { command, .. } => {
                let mut text = String::with_capacity(command.len() + 3);
                for (i, line) in command.lines().enumerate() {
                    text.push_str(if i == 0 { "$ " } else { "  " });
                    text.push_str(line);
                    text.push('\n');
                }
                if text.is_empty() {
                    text.push_str("$ \n");
                }
                self.spool.write(&text);
            }
            Event::JobLog { line, stream, .. } => {
                let _: Stream = stream;
                let mut text = String::with_capacity(line.len() + 1);
                text.push_str(line);
                text.push('\n');
                self.spool.write(&text);
            }
            Event::JobInfo { message, .. } => self.spool.info(message),
            // Each measurement of a verification goes into the job's log, as `gantry run` shows it,
            // and with the finish to the server, which keeps it with the deployment.
            Event::Verify {
                weight,
                measurement,
                ..
            } => {
                self.spool
                    .info(&gantry_runtime::measurement_line(measurement, weight));
                keep_measurement(&mut self.summaries().measurements, measurement, weight);
            }
            Event::JobFinished {
                job,
                stage,
                status,
                allow_failure,
                exit_code,
                duration,
                coverage,
                reason,
                // Already in the log, through the runtime's info line.
                error: _,
            } => {
                *self.finished.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(gantry_runtime::JobResult {
                        name: job.to_string(),
                        stage: stage.to_string(),
                        status,
                        allow_failure,
                        exit_code,
                        duration,
                        coverage,
                        reason,
                    });
            }
        }
    }
}

/// Why the uploader stopped before the server held the whole log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UploadError {
    /// The lease is lost (`409`).
    #[error("the lease of the job is lost")]
    LeaseLost,
    /// The server refused the log for good.
    #[error("{0}")]
    Refused(CallError),
    /// The spool file cannot be written or read.
    #[error("the log spool: {0}")]
    Spool(io::Error),
}

/// Sends the spool to the server as it grows, continuing from the size the server acknowledges,
/// until the spool is closed and the server holds all of it (or said `truncated`: the log reached
/// its limit, and nothing more is sent); returns the log's size. Network errors and server errors
/// are retried with backoff.
pub(crate) async fn upload(
    client: Client,
    job: i64,
    spool: Arc<Spool>,
) -> Result<u64, UploadError> {
    let mut acked: u64 = 0;
    let mut backoff = Backoff::default();
    let mut lingered = false;
    // The server cut the log at its limit: nothing more is sent, the job goes on.
    let mut truncated = false;
    loop {
        // Read `closed` before flushing: when it is set, the flush sees every line.
        let closed = spool.closed.load(Ordering::SeqCst);
        let end = spool.flush();
        if let Some(e) = spool.writer().error.take() {
            return Err(UploadError::Spool(e));
        }
        if truncated {
            acked = end;
        }
        if acked >= end {
            if closed {
                return Ok(end);
            }
            tokio::select! {
                () = spool.wake.notified() => {}
                () = tokio::time::sleep(TICK) => {}
            }
            continue;
        }
        if !closed && !lingered && end - acked < CHUNK as u64 {
            lingered = true;
            let deadline = tokio::time::Instant::now() + LINGER;
            while !spool.closed.load(Ordering::SeqCst) {
                tokio::select! {
                    () = spool.wake.notified() => {}
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
            continue;
        }
        lingered = false;
        let chunk_end = end.min(acked + CHUNK as u64);
        let bytes = spool.read(acked, chunk_end).map_err(UploadError::Spool)?;
        match client.put_log(job, acked, bytes).await {
            Ok(ack) => {
                backoff.reset();
                if ack.truncated && !truncated {
                    tracing::warn!(
                        job,
                        size = ack.size,
                        "the server cut the job's log at its limit: the rest is not sent"
                    );
                    truncated = true;
                }
                // The server holds `ack.size` bytes: from there on (also when it says it holds fewer
                // than we sent, as after a `416`).
                acked = u64::try_from(ack.size).unwrap_or(0).min(end);
            }
            Err(CallError::LeaseLost) => return Err(UploadError::LeaseLost),
            Err(e) if e.is_transient() => {
                tracing::debug!(error = %e, "log upload failed; retrying");
                backoff.wait().await;
            }
            Err(e) => return Err(UploadError::Refused(e)),
        }
    }
}

/// The log route of a stand-in server, for other modules' tests.
#[cfg(test)]
pub(crate) use tests::{Shared as LogServer, log_route};

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::extract::{Path as UrlPath, Query, State};
    use axum::http::StatusCode;
    use axum::routing::put;

    /// What the recording server holds, and how it misbehaves.
    #[derive(Default)]
    pub(crate) struct Recorder {
        pub log: Vec<u8>,
        /// Offsets of the chunks received, in order.
        offsets: Vec<u64>,
        /// Fail this many requests with `503` first (after storing the chunk, as a lost answer).
        fail_after_store: usize,
        /// Keep this many bytes, then answer `truncated` (as the server at `max_job_log`).
        limit: Option<usize>,
    }

    pub(crate) type Shared = Arc<Mutex<Recorder>>;

    #[derive(serde::Deserialize)]
    struct Offset {
        offset: u64,
    }

    async fn put_log(
        State(rec): State<Shared>,
        UrlPath(_job): UrlPath<i64>,
        Query(q): Query<Offset>,
        body: axum::body::Bytes,
    ) -> (StatusCode, String) {
        let mut r = rec.lock().unwrap();
        r.offsets.push(q.offset);
        let size = r.log.len() as u64;
        if q.offset > size {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("{{\"size\":{size}}}"),
            );
        }
        let skip = usize::try_from(size - q.offset).unwrap();
        if let Some(limit) = r.limit {
            let end = q.offset as usize + body.len();
            if end > limit {
                let keep = limit
                    .saturating_sub(size as usize)
                    .min(body.len() - skip.min(body.len()));
                let from = skip.min(body.len());
                r.log.extend_from_slice(&body[from..from + keep]);
                return (
                    StatusCode::OK,
                    format!("{{\"size\":{end},\"truncated\":true}}"),
                );
            }
        }
        if skip < body.len() {
            r.log.extend_from_slice(&body[skip..]);
        }
        if r.fail_after_store > 0 {
            r.fail_after_store -= 1;
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "{\"error\":\"busy\"}".into(),
            );
        }
        (StatusCode::OK, format!("{{\"size\":{}}}", r.log.len()))
    }

    /// A server's log route, appending to `rec`'s log as the server does.
    pub(crate) fn log_route(rec: Shared) -> Router {
        Router::new()
            .route("/api/v1/agent/jobs/{id}/log", put(put_log))
            .with_state(rec)
    }

    async fn recorder(rec: Shared) -> String {
        let app = log_route(rec);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn expected_text(lines: usize) -> String {
        (0..lines)
            .map(|i| format!("line {i} {}\n", "x".repeat(i % 300)))
            .collect()
    }

    async fn run_upload(rec: Shared, lines: usize) -> (u64, String) {
        let base = recorder(rec.clone()).await;
        let tmp = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::create(&tmp.path().join("log")).unwrap());
        let client = Client::new(&base, "t".into()).unwrap();
        let uploader = tokio::spawn(upload(client, 7, spool.clone()));
        let reporter = LogReporter::new(spool.clone());
        for i in 0..lines {
            let line = format!("line {i} {}", "x".repeat(i % 300));
            reporter.event(Event::JobLog {
                job: "j",
                stream: Stream::Stdout,
                line: &line,
            });
            if i % 1000 == 0 {
                tokio::task::yield_now().await;
            }
        }
        spool.close();
        let size = uploader.await.unwrap().unwrap();
        let log = String::from_utf8(rec.lock().unwrap().log.clone()).unwrap();
        (size, log)
    }

    #[tokio::test]
    async fn uploads_the_whole_log_in_chunks_at_acknowledged_offsets() {
        let rec = Shared::default();
        let (size, log) = run_upload(rec.clone(), 5000).await;
        let want = expected_text(5000);
        assert_eq!(log, want);
        assert_eq!(size, want.len() as u64);
        let r = rec.lock().unwrap();
        assert!(r.offsets.len() >= 4, "{:?}", r.offsets);
        // Every chunk starts where the server's log ended.
        assert_eq!(r.offsets[0], 0);
        assert!(r.offsets.windows(2).all(|w| w[0] < w[1]), "{:?}", r.offsets);
    }

    #[tokio::test]
    async fn a_chunk_resent_after_a_lost_answer_is_not_doubled() {
        let rec = Shared::default();
        rec.lock().unwrap().fail_after_store = 3;
        let (_, log) = run_upload(rec.clone(), 3000).await;
        assert_eq!(log, expected_text(3000));
        let r = rec.lock().unwrap();
        // The chunks whose answers were lost were sent again from the same offset.
        assert!(
            r.offsets.windows(2).any(|w| w[0] == w[1]),
            "{:?}",
            r.offsets
        );
    }

    #[tokio::test]
    async fn stops_sending_once_the_server_says_the_log_is_truncated() {
        let rec = Shared::default();
        rec.lock().unwrap().limit = Some(100_000);
        let (size, log) = run_upload(rec.clone(), 5000).await;
        let want = expected_text(5000);
        // The uploader reports the whole spool, and the server kept only its limit.
        assert_eq!(size, want.len() as u64);
        assert_eq!(log, want[..100_000]);
        let r = rec.lock().unwrap();
        // The chunk that passed the limit was the last one sent: none starts past it.
        assert!(r.offsets.iter().all(|o| *o < 100_000), "{:?}", r.offsets);
    }

    #[tokio::test]
    async fn continues_from_the_size_in_a_416_answer() {
        let rec = Shared::default();
        let base = recorder(rec.clone()).await;
        let client = Client::new(&base, "t".into()).unwrap();
        let ack = client.put_log(1, 10, b"late".to_vec()).await.unwrap();
        assert_eq!(ack.size, 0);
        assert!(rec.lock().unwrap().log.is_empty());
    }

    /// The [`Event::JobFinished`] of job `j` with `status` and `coverage`.
    fn finished(status: gantry_runtime::JobStatus, coverage: Option<f64>) -> Event<'static> {
        Event::JobFinished {
            job: "j",
            stage: "test",
            status,
            allow_failure: false,
            exit_code: None,
            duration: Duration::ZERO,
            coverage,
            reason: None,
            error: None,
        }
    }

    #[test]
    fn a_coverage_regex_alone_is_a_summary_unless_canceled() {
        use gantry_runtime::JobStatus;
        let tmp = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::create(&tmp.path().join("log")).unwrap());
        let r = LogReporter::new(spool.clone());
        r.event(finished(JobStatus::Success, Some(81.5)));
        let s = r.take_summaries();
        assert_eq!(s.reports.unwrap().job_coverage, [81.5]);
        assert!(s.gate.is_none());

        let r = LogReporter::new(spool.clone());
        r.event(finished(JobStatus::Canceled, Some(81.5)));
        assert_eq!(r.take_summaries().reports, None);
        let r = LogReporter::new(spool);
        r.event(finished(JobStatus::Success, None));
        assert_eq!(r.take_summaries().reports, None);
    }

    #[test]
    fn formats_echo_output_and_info_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("log");
        let spool = Arc::new(Spool::create(&path).unwrap());
        let r = LogReporter::new(spool.clone());
        r.event(Event::JobEcho {
            job: "j",
            command: "echo a\necho b",
        });
        r.event(Event::JobLog {
            job: "j",
            stream: Stream::Stderr,
            line: "a",
        });
        r.event(Event::JobInfo {
            job: "j",
            message: "artifacts: 1 file",
        });
        let m = gantry_runtime::gantry_release::Measurement {
            kind: gantry_runtime::gantry_release::Kind::Http,
            check: "http://127.0.0.1:8080/healthz".into(),
            value: Some(503.0),
            threshold: "status 200".into(),
            passed: false,
            phase: gantry_runtime::gantry_release::Phase::Fail,
            detail: None,
            elapsed_ms: 100,
        };
        r.event(Event::Verify {
            job: "j",
            weight: Some(10),
            measurement: &m,
        });
        let want = "$ echo a\n  echo b\na\n[gantry] artifacts: 1 file\n\
            [gantry] verify at weight 10: http://127.0.0.1:8080/healthz = 503 against status 200: FAIL\n";
        assert_eq!(spool.flush(), want.len() as u64);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
    }
}
