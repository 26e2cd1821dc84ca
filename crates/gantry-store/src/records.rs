//! The records the store reads and writes: projects, deliveries, pipelines, jobs, agents, tokens,
//! and what changes them.

use gantry_api::{DeliveryStatus, JobStatus, PipelineStatus};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The size of an artifacts chunk row that [`Store::put_artifacts`](crate::Store::put_artifacts) writes (the server writes the
/// same). Chunks of other sizes (up to the database's limits) are read as well.
pub const ARTIFACT_CHUNK: usize = 1 << 20;

/// A job's current (committed) artifacts archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArtifactsInfo {
    /// The upload whose chunks hold it.
    pub upload_id: i64,
    /// Its size in bytes.
    pub size: i64,
    /// How many chunks (`seq` `0..chunks`) hold it.
    pub chunks: i64,
}

/// A project: its name and repository, and the server's JSON document of its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectRecord {
    /// The id.
    pub id: i64,
    /// The unique name.
    pub name: String,
    /// The settings (the server's JSON: repo URL, branch, secrets, variables, forge, schedules).
    pub spec: String,
    /// When it was added.
    pub created_at: Millis,
}

/// A webhook delivery (or an API or schedule trigger) to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDelivery {
    /// The project.
    pub project_id: i64,
    /// `gitlab`, `github`, `gitea`, or `api` / `schedule` for triggers without a webhook.
    pub forge: String,
    /// The forge's delivery id (unique per project and forge); generated for triggers.
    pub delivery_id: String,
    /// The event (`push`, `tag_push`, `merge_request`, ...).
    pub event: String,
    /// The body as received (or the trigger's JSON).
    pub payload: Vec<u8>,
    /// The trace id of the request that brought it.
    pub trace_id: String,
    /// When it arrived.
    pub received_at: Millis,
    /// For pushes: the push's identity (its ref, `before` and `after`). A delivery of the same
    /// project with the same key, received at or after [`NewDelivery::push_key_since`], makes this
    /// one a duplicate of it, whatever its delivery id: a signed body replayed under a new id runs
    /// nothing (issue 16, finding 12). `None` for other events.
    pub push_key: Option<String>,
    /// Keys of deliveries received before this no longer count (the dedupe window's start).
    pub push_key_since: Millis,
}

/// A stored delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// Gantry's id.
    pub id: i64,
    /// The project.
    pub project_id: i64,
    /// See [`NewDelivery::forge`].
    pub forge: String,
    /// See [`NewDelivery::delivery_id`].
    pub delivery_id: String,
    /// See [`NewDelivery::event`].
    pub event: String,
    /// See [`NewDelivery::payload`] (empty in lists).
    pub payload: Vec<u8>,
    /// See [`NewDelivery::trace_id`].
    pub trace_id: String,
    /// The status.
    pub status: DeliveryStatus,
    /// Why it was skipped or failed.
    pub reason: Option<String>,
    /// The pipeline it created.
    pub pipeline_id: Option<i64>,
    /// When it arrived.
    pub received_at: Millis,
    /// How many attempts to process it failed transiently (see [`Store::fail_delivery_attempt`](crate::Store::fail_delivery_attempt)).
    pub attempts: i64,
    /// While pending after a transient failure: when the next attempt may start.
    pub retry_at: Option<Millis>,
    /// Why the last transient failure happened.
    pub last_error: Option<String>,
}

/// A pipeline to create, with its jobs.
#[derive(Clone, Debug, PartialEq)]
pub struct NewPipeline {
    /// The project.
    pub project_id: i64,
    /// The delivery it comes from: creating it marks the delivery `created`, in the same
    /// transaction; a second call for the same delivery creates nothing and answers the first id.
    pub delivery_id: Option<i64>,
    /// The branch or tag.
    pub git_ref: String,
    /// Whether `git_ref` is a tag.
    pub tag: bool,
    /// Whether `git_ref` is protected: only agents scoped to protected refs see this, when they
    /// claim (see [`AgentRecord::protected_only`]).
    pub protected: bool,
    /// The commit.
    pub sha: String,
    /// The commit before the push.
    pub before_sha: Option<String>,
    /// `CI_PIPELINE_SOURCE`.
    pub source: String,
    /// The first status (`created`, or `failed` for an invalid file).
    pub status: PipelineStatus,
    /// The trace id.
    pub trace_id: String,
    /// The configuration errors as the server's JSON (`[]` when none).
    pub errors: String,
    /// The server's JSON of what every job of the pipeline shares (variables, plan stages, ...).
    pub spec: String,
    /// When.
    pub created_at: Millis,
    /// The jobs, in plan order.
    pub jobs: Vec<NewJob>,
}

/// A job to create.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    /// The name.
    pub name: String,
    /// The stage.
    pub stage: String,
    /// The stage's index: its order among the pipeline's stages. Only compared (the server numbers
    /// the stages that have jobs from 0, so a job at 0 has no earlier stage).
    pub stage_index: i64,
    /// Position in plan order (jobs are listed by it).
    pub position: i64,
    /// The attempt (1, or more for a retry).
    pub attempt: i64,
    /// The first status (`created`, `manual`, `pending`, ...).
    pub status: JobStatus,
    /// `when`.
    pub when: String,
    /// Whether a failure is allowed (for listings; the exact rule lives in `spec`).
    pub allow_failure: bool,
    /// The names of the jobs it needs; `None` waits for earlier stages.
    pub needs: Option<Vec<String>>,
    /// `tags`: only agents with all of them may take it.
    pub tags: Vec<String>,
    /// `resource_group`, expanded.
    pub resource_group: Option<String>,
    /// `interruptible`.
    pub interruptible: bool,
    /// The server's JSON of the job.
    pub spec: String,
    /// When.
    pub created_at: Millis,
}

/// A stored job.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRecord {
    /// The id.
    pub id: i64,
    /// The pipeline.
    pub pipeline_id: i64,
    /// See [`NewJob`].
    pub name: String,
    /// See [`NewJob`].
    pub stage: String,
    /// See [`NewJob`].
    pub stage_index: i64,
    /// See [`NewJob`].
    pub position: i64,
    /// See [`NewJob`].
    pub attempt: i64,
    /// The status.
    pub status: JobStatus,
    /// See [`NewJob`].
    pub when: String,
    /// See [`NewJob`].
    pub allow_failure: bool,
    /// See [`NewJob`].
    pub needs: Option<Vec<String>>,
    /// See [`NewJob`].
    pub tags: Vec<String>,
    /// See [`NewJob`].
    pub resource_group: Option<String>,
    /// See [`NewJob`].
    pub interruptible: bool,
    /// See [`NewJob`].
    pub spec: String,
    /// When it was created.
    pub created_at: Millis,
    /// When it became `pending`.
    pub queued_at: Option<Millis>,
    /// When an agent claimed it.
    pub started_at: Option<Millis>,
    /// When it ended.
    pub finished_at: Option<Millis>,
    /// A delayed job does not become `pending` before this.
    pub run_after: Option<Millis>,
    /// The agent that claimed it.
    pub agent_id: Option<i64>,
    /// That agent's name.
    pub agent_name: Option<String>,
    /// The lease's deadline while it runs.
    pub lease_until: Option<Millis>,
    /// Cancel was asked for while it runs: the agent learns it from its next heartbeat.
    pub cancel_requested: bool,
    /// The script's exit code.
    pub exit_code: Option<i32>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// Coverage.
    pub coverage: Option<f64>,
    /// The log's size in bytes.
    pub log_size: i64,
    /// Whether it uploaded artifacts.
    pub has_artifacts: bool,
    /// A newer attempt of this job exists.
    pub retried: bool,
}

/// A stored pipeline with all its jobs (every attempt, in `position`, then `attempt` order).
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineRecord {
    /// The id.
    pub id: i64,
    /// The project.
    pub project_id: i64,
    /// The project's name.
    pub project_name: String,
    /// See [`NewPipeline`].
    pub git_ref: String,
    /// See [`NewPipeline`].
    pub tag: bool,
    /// See [`NewPipeline`].
    pub sha: String,
    /// See [`NewPipeline`].
    pub before_sha: Option<String>,
    /// See [`NewPipeline`].
    pub source: String,
    /// The status.
    pub status: PipelineStatus,
    /// See [`NewPipeline`].
    pub trace_id: String,
    /// See [`NewPipeline`].
    pub errors: String,
    /// See [`NewPipeline`].
    pub spec: String,
    /// When it was created.
    pub created_at: Millis,
    /// When its first job started.
    pub started_at: Option<Millis>,
    /// When it ended.
    pub finished_at: Option<Millis>,
    /// Bumped by every [`Store::apply`](crate::Store::apply), [`Store::finish`](crate::Store::finish), [`Store::claim`](crate::Store::claim) of one of its jobs, and
    /// lease expiry: the optimistic lock. Only [`Store::pipeline`](crate::Store::pipeline) reads it (a sum over the jobs);
    /// heads and lists carry 0, with which an `apply` fails rather than writes blind.
    pub version: i64,
    /// The jobs; empty in lists.
    pub jobs: Vec<JobRecord>,
}

/// A change to one job, applied by [`Store::apply`](crate::Store::apply). `None` fields are left as they are.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobChange {
    /// The job.
    pub id: i64,
    /// The new status.
    pub status: Option<JobStatus>,
    /// When it became pending.
    pub queued_at: Option<Millis>,
    /// When it ended (for jobs that end without running: skipped, canceled).
    pub finished_at: Option<Millis>,
    /// Not pending before this (delayed jobs).
    pub run_after: Option<Millis>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// Ask its agent to cancel it.
    pub cancel_requested: Option<bool>,
    /// A newer attempt exists.
    pub retried: Option<bool>,
}

/// What [`Store::apply`](crate::Store::apply) writes, in one transaction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    /// Changed jobs.
    pub jobs: Vec<JobChange>,
    /// New jobs (retries, which carry `attempt` > 1, and the same `position`).
    pub new_jobs: Vec<NewJob>,
    /// The pipeline's new status.
    pub status: Option<PipelineStatus>,
    /// When it started.
    pub started_at: Option<Millis>,
    /// When it ended.
    pub finished_at: Option<Millis>,
    /// The pipeline's new `spec` (a fork pipeline's approval).
    pub spec: Option<String>,
    /// Notifications stored with the changes (a pipeline's end's), as
    /// [`Store::insert_notification`](crate::Store::insert_notification) stores them: they are
    /// stored if and only if the changes are.
    pub notifications: Vec<NewNotification>,
}

/// Which pipelines to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineFilter {
    /// Only this ref.
    pub git_ref: Option<String>,
    /// Only this status.
    pub status: Option<PipelineStatus>,
}

/// A page of a list: 1-based `page`, `per_page` rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// The page, from 1.
    pub page: i64,
    /// Rows per page.
    pub per_page: i64,
}

/// A page of results, newest first, and how many there are in all.
#[derive(Clone, Debug, PartialEq)]
pub struct Paged<T> {
    /// The rows.
    pub items: Vec<T>,
    /// The total number of rows.
    pub total: i64,
}

/// An agent to register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAgent {
    /// Its name.
    pub name: String,
    /// SHA-256 of its token, hex: the token itself is never stored.
    pub token_hash: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Whether it takes untagged jobs.
    pub run_untagged: bool,
    /// Its executor.
    pub executor: String,
    /// Its concurrency.
    pub concurrency: i64,
    /// Its version.
    pub version: String,
    /// When.
    pub registered_at: Millis,
    /// The projects (ids) whose jobs it may take; `None`: any project.
    pub projects: Option<Vec<i64>>,
    /// It takes only jobs of pipelines whose ref is protected.
    pub protected_only: bool,
    /// The agent protocol version it speaks (`gantry_api::agent::PROTOCOL`).
    pub protocol: i64,
}

/// A registered agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRecord {
    /// The id.
    pub id: i64,
    /// See [`NewAgent`].
    pub name: String,
    /// See [`NewAgent`].
    pub tags: Vec<String>,
    /// See [`NewAgent`].
    pub run_untagged: bool,
    /// See [`NewAgent`].
    pub executor: String,
    /// See [`NewAgent`].
    pub concurrency: i64,
    /// See [`NewAgent`].
    pub version: String,
    /// See [`NewAgent`].
    pub registered_at: Millis,
    /// When it was last heard from.
    pub last_seen_at: Option<Millis>,
    /// See [`NewAgent`].
    pub projects: Option<Vec<i64>>,
    /// See [`NewAgent`].
    pub protected_only: bool,
    /// The protocol version it last said it speaks (at registration or in a job request); `None`
    /// for an agent registered before the store recorded it that has not asked since.
    pub protocol: Option<i64>,
}

/// A job running on an agent: what [`crate::Store::agent_jobs`] reads, for the agents list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentJobRecord {
    /// The agent holding the job's lease.
    pub agent_id: i64,
    /// The job's id.
    pub job_id: i64,
    /// The job's name.
    pub name: String,
    /// Its pipeline.
    pub pipeline_id: i64,
    /// Its project's name.
    pub project_name: String,
    /// When the agent claimed it.
    pub claimed_at: Millis,
}

impl AgentRecord {
    /// The SQL conditions (after `AND`, on a job aliased `j`) that the agent puts on the jobs it
    /// may claim: that it still exists (a long poll holds the record it authenticated with, and a
    /// revoked agent must not claim from it), then its scope. Only ids and a flag go into the text.
    pub(crate) fn scope_sql(&self, protected_true: &str) -> String {
        let mut sql = format!(
            " AND EXISTS (SELECT 1 FROM agents sa WHERE sa.id = {})",
            self.id
        );
        if let Some(projects) = &self.projects {
            let ids: Vec<String> = projects.iter().map(i64::to_string).collect();
            if ids.is_empty() {
                sql.push_str(" AND FALSE");
            } else {
                sql.push_str(&format!(" AND j.project_id IN ({})", ids.join(", ")));
            }
        }
        if self.protected_only {
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM pipelines sp WHERE sp.id = j.pipeline_id \
                 AND sp.protected = {protected_true})"
            ));
        }
        sql
    }
}

/// A project token to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewProjectToken {
    /// The project it acts on.
    pub project_id: i64,
    /// A name for people (not unique).
    pub name: String,
    /// SHA-256 of the secret, hex: the secret itself is never stored.
    pub token_hash: String,
    /// When it was created.
    pub created_at: Millis,
    /// It is refused from this time on; `None`: never expires.
    pub expires_at: Option<Millis>,
    /// It reads and changes nothing: the API's scope `read` (`false`: `write`). Two scopes fit
    /// this column, so the scopes needed no migration.
    pub read_only: bool,
}

/// A stored project token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectTokenRecord {
    /// The id.
    pub id: i64,
    /// See [`NewProjectToken`].
    pub project_id: i64,
    /// The project's name.
    pub project_name: String,
    /// See [`NewProjectToken`].
    pub name: String,
    /// See [`NewProjectToken`].
    pub token_hash: String,
    /// See [`NewProjectToken`].
    pub created_at: Millis,
    /// See [`NewProjectToken`].
    pub expires_at: Option<Millis>,
    /// See [`NewProjectToken`].
    pub read_only: bool,
}

/// How a job ended, as [`Store::finish`](crate::Store::finish) records it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobResult {
    /// `success`, `failed` or `canceled`.
    pub status: JobStatus,
    /// The exit code.
    pub exit_code: Option<i32>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// Coverage.
    pub coverage: Option<f64>,
    /// When.
    pub finished_at: Millis,
    /// The job's report summaries, stored in the same transaction as the result.
    pub reports: Option<NewReports>,
    /// The job's verification measurements (JSON, opaque to the store), stored on its
    /// deployment (if it has one) in the same transaction as the result.
    pub measurements: Option<String>,
}

/// A job's report summaries to store (see [`Store::save_reports`](crate::Store::save_reports)):
/// the JSON kept opaque, and the plain numbers that lists and the coverage trend read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewReports {
    /// The summaries (`gantry_reports::Reports` as JSON), if the job sent any.
    pub reports: Option<Vec<u8>>,
    /// A gate job's verdict (`gantry_reports::GateOutcome` as JSON).
    pub gate: Option<Vec<u8>>,
    /// The job's coverage percent: its coverage reports', else its `coverage:` regex's.
    pub coverage: Option<f64>,
    /// How many tests its reports hold.
    pub tests_total: Option<i64>,
    /// How many of them failed or errored.
    pub tests_failed: Option<i64>,
    /// Whether its gate passed.
    pub gate_passed: Option<bool>,
}

/// A job (its latest attempt) with what it reported: [`NewReports`]' fields as stored (all `None`
/// for a job that stored none), and its `coverage:` regex's value.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportsRecord {
    /// The job.
    pub job_id: i64,
    /// Its name.
    pub name: String,
    /// Its stage.
    pub stage: String,
    /// Its stage's index.
    pub stage_index: i64,
    /// Its status.
    pub status: JobStatus,
    /// Its `coverage:` regex's value ([`JobRecord::coverage`]).
    pub job_coverage: Option<f64>,
    /// What it stored, if anything.
    pub stored: Option<NewReports>,
}

/// A pipeline's coverage, as the trend of a ref lists it: the mean of its jobs' coverage
/// (their latest attempts', each [`NewReports::coverage`], else its `coverage:` regex's value).
#[derive(Clone, Debug, PartialEq)]
pub struct CoveragePoint {
    /// The pipeline.
    pub pipeline_id: i64,
    /// Its commit.
    pub sha: String,
    /// When it was created.
    pub created_at: Millis,
    /// The mean coverage of its jobs, in percent.
    pub coverage: f64,
}

/// A notification to store: see [`Store::insert_notification`](crate::Store::insert_notification).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewNotification {
    /// The pipeline it is about.
    pub pipeline_id: i64,
    /// Where it goes: opaque to the store (the server seals it: it holds the hook's token).
    pub target: String,
    /// What it says: opaque to the store (the event's JSON).
    pub event: String,
    /// When it was made; its first attempt is due then.
    pub created_at: Millis,
}

/// A stored notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationRecord {
    /// Its id.
    pub id: i64,
    /// See [`NewNotification::pipeline_id`].
    pub pipeline_id: i64,
    /// See [`NewNotification::target`].
    pub target: String,
    /// See [`NewNotification::event`].
    pub event: String,
    /// `pending`, `sent` or `failed`.
    pub status: String,
    /// The attempts made.
    pub attempts: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// While pending: when the next attempt is due.
    pub next_attempt_at: Millis,
    /// See [`NewNotification::created_at`].
    pub created_at: Millis,
}

/// A deployment to record: see [`Store::record_deployment`](crate::Store::record_deployment).
/// The store keeps `variables` and `artifacts` opaque (the server's JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDeployment {
    /// The project.
    pub project_id: i64,
    /// The environment's name (`production`, `review/x`).
    pub environment: String,
    /// The environment's URL, when given.
    pub url: Option<String>,
    /// Its `deployment_tier`, when given.
    pub tier: Option<String>,
    /// The job (the attempt) that deploys: one deployment per job.
    pub job_id: i64,
    /// The job's pipeline.
    pub pipeline_id: i64,
    /// The job's name.
    pub job_name: String,
    /// The commit deployed.
    pub sha: String,
    /// The branch or tag.
    pub git_ref: String,
    /// Who or what triggered it (the pipeline's source and user, or `rollback`).
    pub triggered_by: String,
    /// The variables in force, masked ones redacted (JSON, opaque to the store).
    pub variables: String,
    /// The jobs whose artifacts it used (JSON, opaque to the store).
    pub artifacts: String,
    /// When it started.
    pub created_at: Millis,
    /// On a rollback: the deployment it rolls back.
    pub rollback_of: Option<i64>,
}

/// A stored deployment. Its status and end are its job's (read with it), so every way a job
/// ends (a finish, the lease reaper, a cancel) ends its deployment too; only the `rolled_back`
/// mark is the deployment's own.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentRecord {
    /// Its id, increasing.
    pub id: i64,
    /// The project.
    pub project_id: i64,
    /// The project's name.
    pub project_name: String,
    /// See [`NewDeployment::environment`].
    pub environment: String,
    /// See [`NewDeployment::url`].
    pub url: Option<String>,
    /// See [`NewDeployment::tier`].
    pub tier: Option<String>,
    /// `rolled_back` once [`DeploymentRecord::rolled_back_by`] is set; else from its job's
    /// status: `success`, `failed`, `canceled`, or `running` (a job not over).
    pub status: gantry_api::deployments::DeploymentStatus,
    /// See [`NewDeployment::job_id`].
    pub job_id: i64,
    /// See [`NewDeployment::pipeline_id`].
    pub pipeline_id: i64,
    /// See [`NewDeployment::job_name`].
    pub job_name: String,
    /// See [`NewDeployment::sha`].
    pub sha: String,
    /// See [`NewDeployment::git_ref`].
    pub git_ref: String,
    /// See [`NewDeployment::triggered_by`].
    pub triggered_by: String,
    /// See [`NewDeployment::variables`].
    pub variables: String,
    /// See [`NewDeployment::artifacts`].
    pub artifacts: String,
    /// See [`NewDeployment::created_at`].
    pub created_at: Millis,
    /// When its job ended, once it has.
    pub finished_at: Option<Millis>,
    /// See [`NewDeployment::rollback_of`].
    pub rollback_of: Option<i64>,
    /// The rollback that replaced it, once one succeeded.
    pub rolled_back_by: Option<i64>,
    /// Its verification's measurements (JSON, opaque to the store; `[]` until its finish).
    pub measurements: String,
}

/// An environment of a project, as [`Store::environments`](crate::Store::environments) lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvironmentRecord {
    /// Its name.
    pub name: String,
    /// How many deployments it has had.
    pub deployments: i64,
    /// Its newest deployment.
    pub last: DeploymentRecord,
    /// Its newest deployment that succeeded and was not rolled back.
    pub current: Option<DeploymentRecord>,
}
