//! The agent protocol: how `gantry agent` registers, takes jobs, streams logs and reports results.
//! Every call but [`REGISTER`] carries the agent's own token (`Authorization: Bearer TOKEN`).
//!
//! | call | body | answer |
//! |---|---|---|
//! | `POST /api/v1/agents/register` | [`RegisterAgent`] (registration token inside) | `201` [`Registered`] |
//! | `POST /api/v1/agent/jobs/request?wait_ms=N` | [`RequestJob`] | `200` [`JobSpec`], or `204` when no job came within `wait_ms` (long poll, at most 60 s) |
//! | `POST /api/v1/agent/jobs/request/stop` | [`StopPolling`] | `204`: the polls of the session end with `204` (the agent drains) |
//! | `POST /api/v1/agent/jobs/{id}/heartbeat` | none | `200` [`Heartbeat`]; `409` when the lease is lost |
//! | `PUT /api/v1/agent/jobs/{id}/log?offset=N` | raw log bytes from byte `N` | `200` [`LogAck`] (`truncated` once the log is at the server's limit); `416` [`LogAck`] when `N` is past the stored end |
//! | `GET /api/v1/agent/jobs/{id}/source` | none | `200` a tar archive of the commit's tree |
//! | `GET /api/v1/agent/jobs/{id}/git/info/refs?service=git-upload-pack`, `POST .../git/git-upload-pack` | git's smart HTTP protocol | the project's repository, read-only, for `git fetch` of the job's commit; `403` when the agent does not hold the job |
//! | `GET /api/v1/agent/jobs/{id}/dependencies/{dep}/artifacts` | none | `200` the artifacts archive of job `dep`; `404` when it has none |
//! | `PUT /api/v1/agent/jobs/{id}/artifacts` | a tar archive | `201` |
//! | `POST /api/v1/agent/jobs/{id}/finish` | [`FinishJob`] | `200`; `409` when the lease is lost |
//!
//! **Leases.** A job handed out is leased to the agent until `now + lease_timeout`; every heartbeat,
//! log chunk and upload extends it. When a lease runs out, the server fails the job with
//! `runner_system_failure` (and retries it where `retry:when` allows); later calls for it get `409`
//! and the agent must stop the job.
//!
//! **Logs.** The log is a byte stream; chunks say where they start. The server appends only the bytes
//! past its stored end, so a chunk sent twice (after a lost answer) is never doubled, and answers with
//! the stored size, from which the agent continues. A log is kept up to the server's `max_job_log`:
//! the chunk that passes it is cut there and a line saying so is appended, and that answer and every
//! later one say `truncated` (the bytes are taken and dropped), so that the agent stops sending and
//! the job goes on. Finishing a truncated log needs no `log_size` match.
//!
//! **Revocation.** `DELETE /api/v1/agents/{id}` (admin) removes an agent: its next call gets `401`,
//! on every server, and its running jobs fail as a lost agent's. `POST
//! /api/v1/agents/registration-token` (admin) replaces the registration token.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The path of the registration call.
pub const REGISTER: &str = "/api/v1/agents/register";

/// The largest finish body ([`FinishJob`]) a server reads, whatever its `max_body_bytes`: a finish
/// carries the job's report summaries, whose per-line coverage of a few thousand files takes
/// megabytes. An agent fits the summaries into half of it, leaving room for the rest.
pub const MAX_FINISH_BYTES: usize = 64 << 20;

/// The protocol version this crate speaks. Version 2 added the reports of a job's finish
/// ([`FinishJob::reports`], [`FinishJob::gate`]) and a gate job's inputs ([`JobSpec::gate_reports`],
/// [`JobSpec::changes`]); an agent that registers without [`RegisterAgent::protocol`] speaks 1.
/// Version 3 added a deploy job's verification measurements ([`FinishJob::measurements`]).
pub const PROTOCOL: u32 = 3;

/// The body of the registration call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegisterAgent {
    /// The server's registration token.
    pub token: String,
    /// The agent's name (the host name unless given).
    pub name: String,
    /// Tags: the agent takes jobs whose `tags` are all among these.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Whether it takes jobs without tags (default true).
    #[serde(default = "yes")]
    pub run_untagged: bool,
    /// Its executor (`shell`, `docker`).
    pub executor: String,
    /// How many jobs it runs at once.
    pub concurrency: u32,
    /// Its version.
    pub version: String,
    /// The projects whose jobs it may take (GitLab's project runners); empty: any project.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<String>,
    /// It takes only jobs of pipelines on protected refs (GitLab's protected runners).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protected_only: bool,
    /// The protocol version it speaks ([`PROTOCOL`]); 1 when absent.
    #[serde(default = "one")]
    pub protocol: u32,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

/// The answer to the registration call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    /// The agent's id.
    pub id: i64,
    /// The agent's own token, shown only this once: the agent keeps it in its work dir.
    pub token: String,
}

/// The body of a job request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestJob {
    /// Jobs the agent runs right now (for the server's view of its load).
    #[serde(default)]
    pub running: Vec<i64>,
    /// The agent process's session: a random string that [`StopPolling`] names to end this
    /// process's long polls (an agent that restarts with the same token has a new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The protocol version it speaks ([`PROTOCOL`]), recorded as the agent's (it may be newer
    /// than at registration); absent: the one recorded stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
}

/// The body of `POST /api/v1/agent/jobs/request/stop`: the agent drains, so its long polls of
/// `session` end with `204` now, and later ones of it at once (for two minutes); a job claimed
/// before the call still goes to the poll, and the agent runs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StopPolling {
    /// The session of the polls to end ([`RequestJob::session`]).
    pub session: String,
}

/// A job handed to an agent.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct JobSpec {
    /// The job's id (`CI_JOB_ID`).
    pub job_id: i64,
    /// Its pipeline (`CI_PIPELINE_ID`).
    pub pipeline_id: i64,
    /// The project's name.
    pub project: String,
    /// The attempt (1 for the first run).
    pub attempt: u32,
    /// The trace id; the agent logs with it and passes it into the job as `GANTRY_TRACE_ID`.
    pub trace_id: String,
    /// The commit.
    pub sha: String,
    /// The lease: the agent must heartbeat at least every third of it.
    pub lease_timeout_ms: u64,
    /// The name of the job to run, in `plan`.
    pub job: String,
    /// A plan holding the job and the jobs it takes artifacts from (not to be run). Its variables
    /// already hold everything: predefined, YAML, project and pipeline variables (masked ones flagged),
    /// `CI_JOB_ID`, `CI_PIPELINE_ID` and `GANTRY_TRACE_ID`. `retry` is cleared: the server retries.
    #[schema(value_type = Object)]
    pub plan: gantry_pipeline::Plan,
    /// The jobs whose artifacts the job takes, to download before it runs.
    pub dependencies: Vec<Dependency>,
    /// For a job with `gate:`: the merged summaries of the jobs its gate is evaluated on (its
    /// `needs`, else every job of the earlier stages) that reported any (protocol 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub gate_reports: Option<gantry_reports::Reports>,
    /// For a gate testing `new_coverage`: the lines the change added or modified against its
    /// base (protocol 2); absent when there is no base, and the condition then has no data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub changes: Option<gantry_reports::ChangedLines>,
}

/// A job whose artifacts a job takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Dependency {
    /// Its id (for the download URL).
    pub job_id: i64,
    /// Its name (in the plan).
    pub name: String,
    /// Whether it uploaded artifacts.
    pub has_artifacts: bool,
}

/// The answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Heartbeat {
    /// The job was canceled: stop it, run its `after_script`, then finish it as canceled.
    pub cancel: bool,
}

/// The answer to a log chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogAck {
    /// How many bytes of the log the server holds; once `truncated`, how many it took (the end
    /// of the chunk), though it keeps no more.
    pub size: i64,
    /// The log reached the server's limit: it ends with a line saying so, and the server drops
    /// whatever comes after; the agent stops sending the log (the job goes on).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// The answer to `POST /api/v1/agents/registration-token`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegistrationToken {
    /// The new registration token, shown only this once; the previous one no longer registers.
    pub token: String,
}

/// How a job ended, as the agent saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Succeeded (possibly a failure with allowed exit code is still `failed`; the server decides).
    Success,
    /// Failed.
    Failed,
    /// Canceled by a heartbeat answer.
    Canceled,
}

/// The body of the finish call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FinishJob {
    /// How it ended.
    pub outcome: Outcome,
    /// The script's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Why it failed (`script_failure`, `job_execution_timeout`, `runner_system_failure`, ...).
    pub failure_reason: Option<String>,
    /// The coverage found in the log.
    pub coverage: Option<f64>,
    /// The log's final size in bytes: the server refuses to finish (`409`) until it holds all of it.
    pub log_size: i64,
    /// The summaries of the job's `artifacts:reports`, read after its script whether it passed or
    /// failed (protocol 2); absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub reports: Option<gantry_reports::Reports>,
    /// A gate job's verdict, every condition with its actual value (protocol 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub gate: Option<gantry_reports::GateOutcome>,
    /// A deploy job's verification measurements, every step's, in order (protocol 3); empty when
    /// it verified nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurements: Vec<crate::deployments::Measurement>,
}
