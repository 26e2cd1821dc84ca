//! The agent protocol's client side (see `gantry_api::agent`): one method per call, each answering
//! with the call's type or a [`CallError`] that says whether to retry.

use std::path::Path;
use std::time::Duration;

use gantry_api::agent::{
    FinishJob, Heartbeat, JobSpec, LogAck, RegisterAgent, Registered, RequestJob,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt as _;

/// How long a call other than the long poll and the transfers may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a transfer (source, artifacts) may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);
/// How many bytes of a file an upload reads at a time.
const UPLOAD_CHUNK: usize = 256 << 10;

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// No answer: the server is down, restarting, or the network failed. Retry.
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    /// `409`: the job's lease is lost. Stop the job.
    #[error("the lease of the job is lost")]
    LeaseLost,
    /// `401`: the token was rejected.
    #[error("the server rejected the token: {0}")]
    Unauthorized(String),
    /// Any other answer that is not a success.
    #[error("the server answered {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The error message of its body (or the body).
        message: String,
    },
    /// A local file could not be read or written. Retrying does not help.
    #[error("{0}")]
    Io(String),
}

impl CallError {
    /// Whether trying again later may succeed: no answer, or a server-side error.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            CallError::Unreachable(_) => true,
            CallError::Status { status, .. } => *status >= 500 || *status == 429,
            CallError::LeaseLost | CallError::Unauthorized(_) | CallError::Io(_) => false,
        }
    }
}

fn unreachable(e: &reqwest::Error) -> CallError {
    // The whole chain: reqwest's own message says little ("error sending request").
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    CallError::Unreachable(message)
}

/// The message of an error answer: its JSON `error`, or the body itself.
fn message(body: &[u8]) -> String {
    serde_json::from_slice::<gantry_api::ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_string())
}

/// The error of an answer that is not a success.
fn check(status: u16, body: &[u8]) -> Result<(), CallError> {
    match status {
        200..=299 => Ok(()),
        401 => Err(CallError::Unauthorized(message(body))),
        409 => Err(CallError::LeaseLost),
        _ => Err(CallError::Status {
            status,
            message: message(body),
        }),
    }
}

/// A connection to one server, with the agent's token once it has one.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// A client for the server at `base` (`http://host:port`), calling with `token`.
    pub(crate) fn new(base: &str, token: String) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("gantry-agent/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(4)
            .build()?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// The same connection, calling with another token.
    pub(crate) fn with_token(&self, token: String) -> Client {
        Client {
            token,
            ..self.clone()
        }
    }

    /// The URL of the git repository of job `job` (git's smart HTTP protocol).
    pub(crate) fn git_url(&self, job: i64) -> String {
        self.job_url(job, "/git")
    }

    /// Project `project`'s repository for its jobs, read with a job's `CI_JOB_TOKEN`: the
    /// `origin` of checkouts.
    pub(crate) fn project_git_url(&self, project: &str) -> String {
        self.url(&format!("/api/v1/projects/{project}/git"))
    }

    /// The token the client calls with.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn job_url(&self, job: i64, rest: &str) -> String {
        self.url(&format!("/api/v1/agent/jobs/{job}{rest}"))
    }

    /// Sends `req`; the answer's status and body, whatever the status.
    async fn send_raw(&self, req: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), CallError> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| unreachable(&e))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| unreachable(&e))?.to_vec();
        Ok((status, body))
    }

    /// Sends `req`; a success answer's status and body, or the error.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), CallError> {
        let (status, body) = self.send_raw(req).await?;
        check(status, &body)?;
        Ok((status, body))
    }

    /// Sends `req` and reads its answer as JSON.
    async fn send_json<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, CallError> {
        let (_, body) = self.send(req).await?;
        Self::json(&body)
    }

    fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, CallError> {
        serde_json::from_slice(body).map_err(|e| CallError::Status {
            status: 200,
            message: format!("unexpected answer: {e}"),
        })
    }

    fn post_json(&self, url: String, body: &impl Serialize) -> reqwest::RequestBuilder {
        self.http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).unwrap_or_default())
    }

    /// `POST /api/v1/agents/register`.
    pub(crate) async fn register(&self, body: &RegisterAgent) -> Result<Registered, CallError> {
        let req = self
            .post_json(self.url(gantry_api::agent::REGISTER), body)
            .timeout(CALL_TIMEOUT);
        self.send_json(req).await
    }

    /// `POST /api/v1/agent/jobs/request?wait_ms=N`: a job, or `None` when none came in time.
    pub(crate) async fn request_job(
        &self,
        wait: Duration,
        body: &RequestJob,
    ) -> Result<Option<JobSpec>, CallError> {
        let ms = wait.as_millis();
        let req = self
            .post_json(
                self.url(&format!("/api/v1/agent/jobs/request?wait_ms={ms}")),
                body,
            )
            .timeout(wait + CALL_TIMEOUT);
        let (status, body) = self.send(req).await?;
        if status == 204 {
            return Ok(None);
        }
        Self::json(&body).map(Some)
    }

    /// `POST /api/v1/agent/jobs/request/stop`: ends the long polls of `session`.
    pub(crate) async fn stop_polling(&self, session: &str) -> Result<(), CallError> {
        let req = self
            .post_json(
                self.url("/api/v1/agent/jobs/request/stop"),
                &gantry_api::agent::StopPolling {
                    session: session.to_string(),
                },
            )
            .timeout(CALL_TIMEOUT);
        self.send(req).await.map(|_| ())
    }

    /// `POST .../heartbeat`.
    pub(crate) async fn heartbeat(&self, job: i64) -> Result<Heartbeat, CallError> {
        let req = self
            .http
            .post(self.job_url(job, "/heartbeat"))
            .timeout(CALL_TIMEOUT);
        self.send_json(req).await
    }

    /// `PUT .../log?offset=N`: how many bytes the server holds (also when it answers `416`).
    pub(crate) async fn put_log(
        &self,
        job: i64,
        offset: u64,
        bytes: Vec<u8>,
    ) -> Result<LogAck, CallError> {
        let req = self
            .http
            .put(self.job_url(job, &format!("/log?offset={offset}")))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes)
            .timeout(CALL_TIMEOUT);
        let (status, body) = self.send_raw(req).await?;
        if status != 416 {
            check(status, &body)?;
        }
        Self::json(&body)
    }

    /// `GET path` (under the job) into the file `dest`; `false` when the server answers `404`.
    pub(crate) async fn download(
        &self,
        job: i64,
        rest: &str,
        dest: &Path,
    ) -> Result<bool, CallError> {
        let mut resp = self
            .http
            .get(self.job_url(job, rest))
            .bearer_auth(&self.token)
            .timeout(TRANSFER_TIMEOUT)
            .send()
            .await
            .map_err(|e| unreachable(&e))?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Ok(false);
        }
        if !(200..=299).contains(&status) {
            let body = resp.bytes().await.unwrap_or_default();
            return Err(check(status, &body).err().unwrap_or(CallError::Status {
                status,
                message: String::new(),
            }));
        }
        let io = |e: std::io::Error| CallError::Io(format!("cannot write {}: {e}", dest.display()));
        let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
        while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(&e))? {
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        Ok(true)
    }

    /// `PUT .../artifacts`: the tar archive at `archive`, streamed from the file (never held in
    /// memory whole) with its size as `Content-Length`. Each call opens the file anew, so a retry
    /// sends it from the start.
    pub(crate) async fn put_artifacts(&self, job: i64, archive: &Path) -> Result<(), CallError> {
        let io =
            |e: std::io::Error| CallError::Io(format!("cannot read {}: {e}", archive.display()));
        let file = tokio::fs::File::open(archive).await.map_err(io)?;
        let len = file.metadata().await.map_err(io)?.len();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, UPLOAD_CHUNK);
        let req = self
            .http
            .put(self.job_url(job, "/artifacts"))
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(stream))
            .timeout(TRANSFER_TIMEOUT);
        self.send(req).await.map(|_| ())
    }

    /// `POST .../finish`.
    pub(crate) async fn finish(&self, job: i64, body: &FinishJob) -> Result<(), CallError> {
        let req = self
            .post_json(self.job_url(job, "/finish"), body)
            .timeout(CALL_TIMEOUT);
        self.send(req).await.map(|_| ())
    }
}
