//! The JSON types of Gantry's HTTP API, shared by the server (which answers with them) and the agent
//! and CLI (which send and read them). Plain data: no IO, no behaviour beyond small helpers.
//!
//! Two surfaces:
//! - the **public API** under `/api/v1` (projects, pipelines, jobs, deliveries, agents), documented in
//!   the OpenAPI document the server generates from these types (`utoipa::ToSchema`);
//! - the **agent protocol** under `/api/v1/agent` ([`agent`]), which agents speak with their agent
//!   token.
//!
//! Timestamps are RFC 3339 strings in UTC with millisecond precision (`2026-11-27T19:42:01.123Z`).
//! Statuses are spelled as GitLab spells them.
//!
//! Besides the types, two helpers that both the server and the agent need: [`backoff`] and
//! [`paths`] (where a tar entry may go).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub mod agent;
pub mod backoff;
pub mod deployments;
pub mod paths;
pub mod reports;

/// The body of every error answer (4xx and 5xx).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a human.
    pub error: String,
}

/// A `KEY=VALUE` pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyValue {
    /// The variable's name.
    pub key: String,
    /// Its value.
    pub value: String,
}

/// A project variable, as given to `POST /api/v1/projects`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectVariable {
    /// The variable's name.
    pub key: String,
    /// Its value. In answers, masked variables carry no value (`null`).
    pub value: Option<String>,
    /// Whether its value is replaced by `[MASKED]` in logs, and never shown by the API.
    #[serde(default)]
    pub masked: bool,
    /// Whether it is given only to pipelines of protected refs (see `protected_branches` and
    /// `protected_tags` of the project).
    #[serde(default)]
    pub protected: bool,
    /// Which environments it applies to (`*`, `production`, `review/*`).
    #[serde(default = "star")]
    pub environment_scope: String,
}

fn star() -> String {
    "*".to_string()
}

/// Which forge a project's commit statuses go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    /// GitLab (`POST /projects/:id/statuses/:sha`).
    Gitlab,
    /// GitHub (`POST /repos/:owner/:repo/statuses/:sha`).
    Github,
    /// Gitea (GitHub-compatible statuses API).
    Gitea,
    /// Not a forge: a pipeline triggered through the API (only in [`Delivery::forge`]).
    Api,
    /// Not a forge: a scheduled pipeline (only in [`Delivery::forge`]).
    Schedule,
}

impl ForgeKind {
    /// The kind as written in URLs and JSON.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::Gitlab => "gitlab",
            ForgeKind::Github => "github",
            ForgeKind::Gitea => "gitea",
            ForgeKind::Api => "api",
            ForgeKind::Schedule => "schedule",
        }
    }
}

/// Where to report commit statuses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Forge {
    /// The forge.
    pub kind: ForgeKind,
    /// The API's base URL (`https://gitlab.example.com/api/v4`, `https://api.github.com`).
    pub api_url: String,
    /// The token to post statuses with. Never shown in answers (`null`).
    pub token: Option<String>,
    /// The project on the forge: GitLab's numeric id or `group/name`; GitHub's and Gitea's `owner/repo`.
    pub project: String,
}

/// A scheduled pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Schedule {
    /// A cron expression with five fields (`0 3 * * *`), read in `cron_timezone`.
    pub cron: String,
    /// The IANA time zone of `cron` (`Europe/Berlin`), as GitLab's `cron_timezone`; UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_timezone: Option<String>,
    /// The branch or tag to run; the project's default branch when absent.
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
    /// Variables of the scheduled pipelines.
    #[serde(default)]
    pub variables: Vec<KeyValue>,
}

/// What pipelines of merge requests from forks get (a GitHub or Gitea pull request from another
/// repository, a GitLab merge request from another project).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForkPipelines {
    /// No pipeline at all.
    None,
    /// A pipeline without the project's variables and without `CI_JOB_TOKEN` (the default).
    #[default]
    NoSecrets,
    /// A pipeline that waits, `manual`, until the admin or a project token approves it
    /// (`POST /api/v1/pipelines/{id}/approve`); then it runs with the project's variables.
    Approve,
}

/// The body of `POST /api/v1/projects`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NewProject {
    /// A unique name: letters, digits, `-`, `_` and `.`, at most 100 characters.
    pub name: String,
    /// Anything `git fetch` takes: a URL or a path on the server's machine.
    pub repo_url: String,
    /// The default branch (`main` when absent).
    #[serde(default)]
    pub default_branch: Option<String>,
    /// The secret that webhooks must prove (GitLab's token, GitHub's and Gitea's HMAC key).
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// Project variables.
    #[serde(default)]
    pub variables: Vec<ProjectVariable>,
    /// Where to report commit statuses.
    #[serde(default)]
    pub forge: Option<Forge>,
    /// Scheduled pipelines.
    #[serde(default)]
    pub schedules: Vec<Schedule>,
    /// Which other projects of this server may `include:project` this project's files: names,
    /// or patterns where `*` stands for any run of characters (`team-*`; `*` is every project).
    /// Empty (the default): none; a project may always include its own files.
    #[serde(default)]
    pub include_allowed_from: Vec<String>,
    /// What pipelines of merge requests from forks get (`no_secrets` when absent).
    #[serde(default)]
    pub fork_pipelines: Option<ForkPipelines>,
    /// The protected branches: names, or patterns where `*` stands for any run of characters
    /// (`release/*`). Only pipelines of protected refs get protected variables and
    /// `CI_COMMIT_REF_PROTECTED`. Absent: the default branch only.
    #[serde(default)]
    pub protected_branches: Option<Vec<String>>,
    /// The protected tags, names or patterns as for branches (`v*`). Empty (the default): none.
    #[serde(default)]
    pub protected_tags: Vec<String>,
    /// `notify:` rules, written as in a pipeline file's top-level `notify:`
    /// (`[{"on": ["rollback"], "slack": {"url": "$SLACK_WEBHOOK_URL"}}]`); they apply to every
    /// pipeline of the project, with the file's own.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub notify: Vec<serde_json::Value>,
}

/// A project, as the API shows it (secrets left out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Project {
    /// The project's id.
    pub id: i64,
    /// Its unique name.
    pub name: String,
    /// Where its repository is fetched from.
    pub repo_url: String,
    /// The default branch.
    pub default_branch: String,
    /// Whether a webhook secret is set.
    pub has_webhook_secret: bool,
    /// Project variables; masked ones without their value.
    pub variables: Vec<ProjectVariable>,
    /// Where commit statuses go, without the token.
    pub forge: Option<Forge>,
    /// Scheduled pipelines.
    pub schedules: Vec<Schedule>,
    /// Which other projects may `include:project` this project's files (names or `*`
    /// patterns); empty: none but itself.
    pub include_allowed_from: Vec<String>,
    /// What pipelines of merge requests from forks get.
    pub fork_pipelines: ForkPipelines,
    /// The protected branches (names or `*` patterns).
    pub protected_branches: Vec<String>,
    /// The protected tags (names or `*` patterns).
    pub protected_tags: Vec<String>,
    /// When it was added.
    pub created_at: String,
}

/// What a project token may do on its project.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// It only reads: pipelines, jobs, logs, artifacts, reports, environments and the project.
    Read,
    /// It also triggers, cancels, retries and plays pipelines and jobs, approves a fork's
    /// pipeline and rolls back environments (the default).
    #[default]
    Write,
}

impl TokenScope {
    /// `read` or `write`, as the API spells it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Read => "read",
            TokenScope::Write => "write",
        }
    }
}

impl std::fmt::Display for TokenScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TokenScope {
    type Err = String;
    fn from_str(s: &str) -> Result<TokenScope, String> {
        match s {
            "read" => Ok(TokenScope::Read),
            "write" => Ok(TokenScope::Write),
            _ => Err(format!("scope `{s}`: want `read` or `write`")),
        }
    }
}

/// The body of `POST /api/v1/projects/{name}/tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NewProjectToken {
    /// A name for people: 1 to 100 characters, no control characters (need not be unique).
    pub name: String,
    /// When the token stops working: RFC 3339 (`2027-01-31T12:00:00Z`) or a date
    /// (`2027-01-31`, meaning its start in UTC); in the future. Never, when absent.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// What the token may do (`write` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<TokenScope>,
    /// The older spelling of `scope`: `true` is `read`, `false` is `write`. A body that gives
    /// both must give them alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(deprecated)]
    pub read_only: Option<bool>,
}

impl NewProjectToken {
    /// The scope the body asks for: `scope`, else `read_only`'s, else `write`.
    ///
    /// # Errors
    /// When `scope` and `read_only` disagree.
    pub fn resolved_scope(&self) -> Result<TokenScope, String> {
        let alias = self.read_only.map(|r| {
            if r {
                TokenScope::Read
            } else {
                TokenScope::Write
            }
        });
        match (self.scope, alias) {
            (Some(s), Some(a)) if s != a => Err(format!(
                "scope `{s}` and read_only `{}` disagree: give `scope` alone",
                a == TokenScope::Read
            )),
            (s, a) => Ok(s.or(a).unwrap_or_default()),
        }
    }
}

/// A project token, as lists show it (without its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectToken {
    /// The token's id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// When it was created.
    pub created_at: String,
    /// When it stops working; never, when absent.
    pub expires_at: Option<String>,
    /// What it may do (absent from an older server's answer: see `effective_scope`).
    #[serde(default)]
    #[schema(required = true)]
    pub scope: TokenScope,
    /// Whether `scope` is `read`: the older spelling, for older clients.
    #[schema(deprecated)]
    pub read_only: bool,
}

/// A project token just created: the only answer that carries its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedProjectToken {
    /// The token's id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// The secret (`gpt_` and 64 hex digits), for `Authorization: Bearer` or `PRIVATE-TOKEN`.
    /// The server keeps only its SHA-256 and never shows it again.
    pub token: String,
    /// When it was created.
    pub created_at: String,
    /// When it stops working; never, when absent.
    pub expires_at: Option<String>,
    /// What it may do (absent from an older server's answer: see `effective_scope`).
    #[serde(default)]
    #[schema(required = true)]
    pub scope: TokenScope,
    /// Whether `scope` is `read`: the older spelling, for older clients.
    #[schema(deprecated)]
    pub read_only: bool,
}

impl ProjectToken {
    /// Its scope, also from an older server, which answers `read_only` alone.
    #[must_use]
    pub fn effective_scope(&self) -> TokenScope {
        if self.read_only {
            TokenScope::Read
        } else {
            self.scope
        }
    }
}

impl CreatedProjectToken {
    /// Its scope, also from an older server, which answers `read_only` alone.
    #[must_use]
    pub fn effective_scope(&self) -> TokenScope {
        if self.read_only {
            TokenScope::Read
        } else {
            self.scope
        }
    }
}

/// The body of `POST /api/v1/projects/{name}/pipelines`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TriggerPipeline {
    /// The branch or tag (the default branch when absent).
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
    /// Pipeline variables, with the highest precedence.
    #[serde(default)]
    pub variables: Vec<KeyValue>,
}

/// A status enum's spelling, from its variants and their words (`$doc` says whose words they
/// are): `as_str`, `parse` (through `$all`, every variant) and `Display`.
macro_rules! status_spelling {
    ($ty:ident, $all:ident, $doc:literal; $($variant:ident => $word:literal),+ $(,)?) => {
        impl $ty {
            #[doc = concat!("The status, ", $doc, ".")]
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $word,)+
                }
            }
            #[doc = concat!("Parses [`", stringify!($ty), "::as_str`].")]
            #[must_use]
            pub fn parse(s: &str) -> Option<$ty> {
                $all.iter().copied().find(|st| st.as_str() == s)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// A pipeline's status, as GitLab spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PipelineStatus {
    /// Created; no job has been queued yet.
    Created,
    /// Some job is queued, none runs.
    Pending,
    /// Some job runs.
    Running,
    /// Every job that ran succeeded (or failed with an allowed failure).
    Success,
    /// A job failed, or the configuration is invalid.
    Failed,
    /// Canceled.
    Canceled,
    /// Nothing ran: every job was skipped.
    Skipped,
    /// Waiting for a manual job to be played.
    Manual,
}

impl PipelineStatus {
    /// Whether the pipeline is over.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PipelineStatus::Success
                | PipelineStatus::Failed
                | PipelineStatus::Canceled
                | PipelineStatus::Skipped
        )
    }
}

status_spelling! {
    PipelineStatus, ALL_PIPELINE_STATUSES, "as GitLab spells it";
    Created => "created",
    Pending => "pending",
    Running => "running",
    Success => "success",
    Failed => "failed",
    Canceled => "canceled",
    Skipped => "skipped",
    Manual => "manual",
}

/// Every pipeline status.
pub const ALL_PIPELINE_STATUSES: [PipelineStatus; 8] = [
    PipelineStatus::Created,
    PipelineStatus::Pending,
    PipelineStatus::Running,
    PipelineStatus::Success,
    PipelineStatus::Failed,
    PipelineStatus::Canceled,
    PipelineStatus::Skipped,
    PipelineStatus::Manual,
];

/// A job's status, as GitLab spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for the jobs it depends on.
    Created,
    /// In the queue, waiting for an agent.
    Pending,
    /// An agent runs it.
    Running,
    /// Succeeded.
    Success,
    /// Failed (see `failure_reason`).
    Failed,
    /// Canceled.
    Canceled,
    /// Did not run (`when`, or an earlier failure).
    Skipped,
    /// A manual job waiting to be played.
    Manual,
    /// A delayed job waiting for its `start_in`.
    Scheduled,
}

impl JobStatus {
    /// Whether the job is over (it will not run again unless retried, which makes a new job).
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Success | JobStatus::Failed | JobStatus::Canceled | JobStatus::Skipped
        )
    }
}

status_spelling! {
    JobStatus, ALL_JOB_STATUSES, "as GitLab spells it";
    Created => "created",
    Pending => "pending",
    Running => "running",
    Success => "success",
    Failed => "failed",
    Canceled => "canceled",
    Skipped => "skipped",
    Manual => "manual",
    Scheduled => "scheduled",
}

/// Every job status.
pub const ALL_JOB_STATUSES: [JobStatus; 9] = [
    JobStatus::Created,
    JobStatus::Pending,
    JobStatus::Running,
    JobStatus::Success,
    JobStatus::Failed,
    JobStatus::Canceled,
    JobStatus::Skipped,
    JobStatus::Manual,
    JobStatus::Scheduled,
];

/// A configuration error that made a pipeline fail before any job ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PipelineError {
    /// The file (`.gitlab-ci.yml`, or an included file).
    pub file: String,
    /// 1-based line (0 when the error has no position).
    pub line: u32,
    /// 1-based column (0 when the error has no position).
    pub column: u32,
    /// The message.
    pub message: String,
}

/// A pipeline. `GET /api/v1/pipelines/{id}` fills `jobs`; lists leave it empty.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Pipeline {
    /// The pipeline's id (`CI_PIPELINE_ID`).
    pub id: i64,
    /// The project's name.
    pub project: String,
    /// The branch or tag.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Whether `ref` is a tag.
    pub tag: bool,
    /// The commit.
    pub sha: String,
    /// The commit before the push (all zeros for a new branch), when known.
    pub before_sha: Option<String>,
    /// `CI_PIPELINE_SOURCE`: `push`, `merge_request_event`, `api`, `schedule`, `web`.
    pub source: String,
    /// The status.
    pub status: PipelineStatus,
    /// The trace id that follows this pipeline from the webhook to the last line of its logs.
    pub trace_id: String,
    /// Configuration errors (only when the file is invalid; the status is then `failed`).
    pub errors: Vec<PipelineError>,
    /// When it was created.
    pub created_at: String,
    /// When its first job started.
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Seconds from start to end.
    pub duration: Option<f64>,
    /// Set for a pipeline of a merge request from a fork: what it gets, and its approval.
    #[serde(default)]
    pub fork: Option<PipelineFork>,
    /// Its jobs, in plan order (the latest attempt of each job).
    #[serde(default)]
    pub jobs: Vec<Job>,
}

/// What a pipeline of a merge request from a fork gets (see [`ForkPipelines`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PipelineFork {
    /// The project's setting when the pipeline was created: `no_secrets` or `approve`.
    pub mode: ForkPipelines,
    /// Whether its jobs get the project's variables and `CI_JOB_TOKEN` (only once approved).
    pub secrets: bool,
    /// Why it waits (`manual`), while it waits for an approval.
    pub waiting: Option<String>,
    /// Who approved it: `admin`, or `token ID (NAME)` for a project token.
    pub approved_by: Option<String>,
    /// When it was approved.
    pub approved_at: Option<String>,
}

/// A job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    /// The job's id (`CI_JOB_ID`). A retry is a new job with a new id.
    pub id: i64,
    /// Its pipeline.
    pub pipeline_id: i64,
    /// The job's name.
    pub name: String,
    /// Its stage.
    pub stage: String,
    /// The status.
    pub status: JobStatus,
    /// `when`: `on_success`, `on_failure`, `always`, `manual`, `delayed`.
    pub when: String,
    /// Whether a failure is allowed.
    pub allow_failure: bool,
    /// The jobs it needs (`null` when it waits for the earlier stages).
    pub needs: Option<Vec<String>>,
    /// Its `tags`.
    pub tags: Vec<String>,
    /// Which attempt this is (1 for the first run).
    pub attempt: u32,
    /// When it was created.
    pub created_at: String,
    /// When it entered the queue.
    pub queued_at: Option<String>,
    /// When an agent took it.
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Seconds from start to end.
    pub duration: Option<f64>,
    /// The agent that ran it (its name).
    pub agent: Option<String>,
    /// The script's exit code.
    pub exit_code: Option<i32>,
    /// Why it failed: `script_failure`, `job_execution_timeout`, `runner_system_failure`, ...
    pub failure_reason: Option<String>,
    /// The coverage found in its log.
    pub coverage: Option<f64>,
    /// The size of its log in bytes.
    pub log_size: i64,
    /// Whether it has an artifacts archive.
    pub has_artifacts: bool,
}

/// A delivery's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Stored, not processed yet, or waiting for a retry.
    Pending,
    /// A pipeline was created.
    Created,
    /// Nothing to run (see its `reason`).
    Skipped,
    /// It could not be processed (see its `reason`).
    Failed,
}

status_spelling! {
    DeliveryStatus, ALL_DELIVERY_STATUSES, "as stored and answered";
    Pending => "pending",
    Created => "created",
    Skipped => "skipped",
    Failed => "failed",
}

/// Every delivery status.
pub const ALL_DELIVERY_STATUSES: [DeliveryStatus; 4] = [
    DeliveryStatus::Pending,
    DeliveryStatus::Created,
    DeliveryStatus::Skipped,
    DeliveryStatus::Failed,
];

/// A webhook delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    /// Gantry's id of the delivery.
    pub id: i64,
    /// `gitlab`, `github` or `gitea`; `api` and `schedule` for triggers without a webhook.
    pub forge: ForgeKind,
    /// The forge's delivery id (`X-Gitlab-Event-UUID`, `X-GitHub-Delivery`, `X-Gitea-Delivery`).
    pub delivery_id: String,
    /// The event (`push`, `tag_push`, `merge_request`, `pull_request`).
    pub event: String,
    /// `pending` (stored, not processed yet, or waiting for a retry), `created` (a pipeline was
    /// created), `skipped`, `failed`.
    pub status: DeliveryStatus,
    /// Why it was skipped or failed.
    pub reason: Option<String>,
    /// The pipeline it created.
    pub pipeline_id: Option<i64>,
    /// When it arrived.
    pub received_at: String,
    /// How many attempts to process it failed for a reason that may pass (the repository could not
    /// be fetched, a remote include's host could not be reached, a store error). While it is
    /// `pending` after such a failure, it is tried again at `retry_at`; after the server's
    /// `delivery_max_attempts` it ends `failed`.
    #[serde(default)]
    pub attempts: i64,
    /// While `pending` after a failed attempt: when the next attempt may start.
    #[serde(default)]
    pub retry_at: Option<String>,
    /// Why the last failed attempt failed.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// The answer to an accepted webhook (`202`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryAccepted {
    /// Gantry's id of the stored delivery.
    pub id: i64,
    /// Whether this delivery id was seen before (then nothing new happens).
    pub duplicate: bool,
}

/// An agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Agent {
    /// The agent's id.
    pub id: i64,
    /// Its name (the host name unless given).
    pub name: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Whether it takes jobs without tags.
    pub run_untagged: bool,
    /// Its executor (`shell`, `docker`).
    pub executor: String,
    /// How many jobs it runs at once.
    pub concurrency: u32,
    /// Its version.
    pub version: String,
    /// When it registered.
    pub registered_at: String,
    /// When it was last heard from.
    pub last_seen_at: Option<String>,
    /// Whether it was heard from within the lease timeout.
    pub online: bool,
    /// The agent protocol version it speaks ([`agent::PROTOCOL`]), as it said when it registered
    /// or last asked for a job; `null` when the server has not heard it since it recorded them.
    #[serde(default)]
    pub protocol: Option<u32>,
    /// The jobs it runs now (up to its `concurrency`), oldest claim first; empty: idle.
    #[serde(default)]
    pub jobs: Vec<AgentJob>,
}

/// A job an agent runs now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentJob {
    /// The job's id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Its pipeline's id.
    pub pipeline_id: i64,
    /// Its project.
    pub project: String,
    /// When the agent took it.
    pub claimed_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_their_own_spelling_and_display_it() {
        for st in ALL_PIPELINE_STATUSES {
            assert_eq!(PipelineStatus::parse(st.as_str()), Some(st));
            assert_eq!(st.to_string(), st.as_str());
        }
        for st in ALL_JOB_STATUSES {
            assert_eq!(JobStatus::parse(st.as_str()), Some(st));
            assert_eq!(st.to_string(), st.as_str());
        }
        for st in ALL_DELIVERY_STATUSES {
            assert_eq!(DeliveryStatus::parse(st.as_str()), Some(st));
            assert_eq!(st.to_string(), st.as_str());
        }
        assert_eq!(JobStatus::Scheduled.as_str(), "scheduled");
        assert_eq!(DeliveryStatus::Created.as_str(), "created");
        assert_eq!(PipelineStatus::parse("retrying"), None);
    }

    #[test]
    fn an_older_server_s_token_answer_reads_as_its_scope() {
        let old = r#"{"id": 1, "name": "ci", "created_at": "2026-01-01T00:00:00Z",
                      "expires_at": null, "read_only": true}"#;
        let t: ProjectToken = serde_json::from_str(old).unwrap();
        assert_eq!(t.effective_scope(), TokenScope::Read);
        let old = old.replace("\"read_only\": true", "\"read_only\": false");
        let t: ProjectToken = serde_json::from_str(&old).unwrap();
        assert_eq!(t.effective_scope(), TokenScope::Write);
        let created = r#"{"id": 1, "name": "ci", "token": "gpt_x",
                          "created_at": "2026-01-01T00:00:00Z", "read_only": true}"#;
        let c: CreatedProjectToken = serde_json::from_str(created).unwrap();
        assert_eq!(c.effective_scope(), TokenScope::Read);
    }

    #[test]
    fn a_new_token_s_scope_takes_the_older_read_only_as_an_alias() {
        let body = |v: serde_json::Value| serde_json::from_value::<NewProjectToken>(v).unwrap();
        let scope = |v| body(v).resolved_scope();
        assert_eq!(
            scope(serde_json::json!({"name": "a"})),
            Ok(TokenScope::Write)
        );
        assert_eq!(
            scope(serde_json::json!({"name": "a", "scope": "read"})),
            Ok(TokenScope::Read)
        );
        assert_eq!(
            scope(serde_json::json!({"name": "a", "read_only": true})),
            Ok(TokenScope::Read)
        );
        assert_eq!(
            scope(serde_json::json!({"name": "a", "read_only": false, "scope": "write"})),
            Ok(TokenScope::Write)
        );
        assert_eq!(
            scope(serde_json::json!({"name": "a", "read_only": true, "scope": "write"})),
            Err("scope `write` and read_only `true` disagree: give `scope` alone".to_string())
        );
        assert!(
            scope(serde_json::json!({"name": "a", "read_only": false, "scope": "read"})).is_err()
        );
        assert!(
            serde_json::from_value::<NewProjectToken>(
                serde_json::json!({"name": "a", "scope": "admin"})
            )
            .is_err()
        );
        for s in [TokenScope::Read, TokenScope::Write] {
            assert_eq!(s.as_str().parse::<TokenScope>(), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
