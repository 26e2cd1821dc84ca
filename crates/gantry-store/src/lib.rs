//! The server's durable state, behind one [`Store`] trait with two implementations: SQLite (the
//! embedded default, one file in the data dir) and PostgreSQL (several servers sharing one database).
//! Both run their migrations when they connect. [`connect`] picks one from a URL.
//!
//! The store knows tables, transactions and the queue's rules; it knows nothing about YAML, HTTP or
//! forges. What a job *is* (its script, variables, artifacts) is an opaque JSON document
//! ([`NewJob::spec`]) written by the server and read back by it. Pipeline *progress* (which job runs
//! next) is decided by the server from a [`PipelineRecord`] and written back with [`Store::apply`],
//! which is optimistic: it applies only if the pipeline's `version` is still the one read, so two
//! servers never both advance one pipeline.
//!
//! Times are milliseconds since the Unix epoch ([`Millis`]), always passed in by the caller, so that
//! tests control the clock. Statuses are `gantry-api`'s enums ([`JobStatus`], [`PipelineStatus`],
//! [`DeliveryStatus`]), stored as the strings they spell; a row holding a status no enum knows
//! reads as a [`StoreError::Database`] that names the column and the value.
//!
//! # Guarantees (each one tested against both implementations)
//! - A job is handed out by [`Store::claim`] to exactly one agent, however many agents and servers
//!   claim at once (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite: one writer).
//! - A job in a `resource_group` is not handed out while another job of the same group (in any
//!   pipeline of the project) is running.
//! - A push is stored once per project and [`NewDelivery::push_key`] within its window, whatever
//!   its delivery id: a replay is answered as a duplicate of the first, as a repeated id is.
//! - A delivery id is stored once per project and forge: the second [`Store::insert_delivery`] answers
//!   `duplicate`.
//! - [`Store::append_log`] appends only the bytes past the stored end: a resent chunk is never doubled.
//! - Calls made under a lease ([`Store::heartbeat`], [`Store::append_log`],
//!   [`Store::begin_artifacts`], [`Store::commit_artifacts`], [`Store::finish`]) fail with [`StoreError::LeaseLost`] once the job is no longer running on that
//!   agent.
//! - A job's artifacts are served only once an upload is committed, and a new upload replaces the
//!   old one in one statement: readers see the old archive or the new one, never a mix or a part.
//! - A call that returned `Ok` is committed and synced to disk: it survives the server process
//!   being killed (`kill -9`) and the machine dying. On SQLite a write returns after a sync of the
//!   WAL that began after its commit (group commit, `sqlite::WalSync`); PostgreSQL is as durable
//!   as its configuration (`synchronous_commit = on` by default).
//!
//! # Layout
//! Each backend has its own migrations (`migrations/sqlite`, `migrations/postgres`, embedded with
//! `sqlx::migrate!`). A job's log is a list of chunk rows `(job_id, pos, bytes)` with the size kept
//! on the job row, so appending and reading a range never load the whole log. Artifacts are chunk
//! rows `(job_id, upload_id, seq, data)` of at most [`ARTIFACT_CHUNK`] bytes each, written under a
//! fresh upload id and made current by [`Store::commit_artifacts`] (the `artifacts` row names the
//! current upload, its size and its chunk count), so that neither storing nor serving an archive
//! holds more than a chunk in memory. A pipeline's [`PipelineRecord::version`] is the pipeline row's own counter (bumped
//! by [`Store::apply`]) plus the sum of its jobs' counters (bumped by claims, finishes and lease
//! expiry), so that agents working on one pipeline never contend for its row. The statements both
//! databases share, and the [`Store`] impl, are written once (`query.rs`); see [`SqliteStore`] and
//! [`PgStore`] for how each one keeps the guarantees.

use async_trait::async_trait;

mod group;
mod postgres;
mod query;
mod rows;
mod sqlite;

pub use gantry_api::{DeliveryStatus, JobStatus, PipelineStatus};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The size of an artifacts chunk row that [`Store::put_artifacts`] writes (the server writes the
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

/// The result of a store call.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What can go wrong.
#[derive(Debug)]
pub enum StoreError {
    /// Something with this key exists already (a project name).
    Conflict(String),
    /// The job is no longer running on this agent: its lease ran out, or it was finished or canceled.
    LeaseLost,
    /// A log chunk starts past the stored end, which holds this many bytes.
    LogGap(i64),
    /// An artifacts upload is gone (a later upload of the job dropped it) or does not hold the
    /// chunks it should.
    UploadGone,
    /// The database failed: what was being done, and the database's error as the `source`.
    Database(DatabaseError),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Conflict(what) => write!(f, "{what} already exists"),
            Self::LeaseLost => f.write_str("the job is no longer leased to this agent"),
            Self::LogGap(size) => write!(
                f,
                "the log holds {size} bytes; a chunk must start at or before that"
            ),
            Self::UploadGone => f.write_str("the artifacts upload is gone or incomplete"),
            Self::Database(e) => write!(f, "database: {e}"),
        }
    }
}

impl StoreError {
    /// A database error without the database's own (a file, a migration).
    fn database(message: String) -> Self {
        Self::Database(message.into())
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Database(DatabaseError {
                source: Some(e), ..
            }) => Some(e),
            _ => None,
        }
    }
}

/// What [`StoreError::Database`] carries: what failed, and the database's own error (which
/// [`std::error::Error::source`] of the [`StoreError`] answers), if it came from the database.
#[derive(Debug)]
pub struct DatabaseError {
    message: String,
    source: Option<sqlx::Error>,
}

impl std::fmt::Display for DatabaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<&str> for DatabaseError {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

impl From<String> for DatabaseError {
    fn from(message: String) -> Self {
        Self {
            message,
            source: None,
        }
    }
}

/// Connects to `url` (`sqlite://PATH` (created if missing), `sqlite::memory:`, or `postgres://…`)
/// and runs the migrations.
///
/// # Errors
/// When the URL is of neither kind, the database cannot be reached, or a migration fails.
pub async fn connect(url: &str) -> Result<std::sync::Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(PgStore::connect(url).await?))
    } else {
        Err(StoreError::Database(
            format!(
                "unsupported database URL (want sqlite://PATH, sqlite::memory: or postgres://...): {}",
                redact(url)
            )
            .into(),
        ))
    }
}

/// `url` without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The condition that leaves out the deliveries of projects `skip` (ids are numbers: nothing of a
/// caller's text goes into the statement).
fn skip_projects(skip: &[i64]) -> String {
    if skip.is_empty() {
        return String::new();
    }
    let ids: Vec<String> = skip.iter().map(i64::to_string).collect();
    format!(" AND project_id NOT IN ({})", ids.join(", "))
}

/// Wraps a sqlx error with what was being done.
fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| {
        StoreError::Database(DatabaseError {
            message: format!("{context}: {e}"),
            source: Some(e),
        })
    }
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
    /// How many attempts to process it failed transiently (see [`Store::fail_delivery_attempt`]).
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
    /// Bumped by every [`Store::apply`], [`Store::finish`], [`Store::claim`] of one of its jobs, and
    /// lease expiry: the optimistic lock. Only [`Store::pipeline`] reads it (a sum over the jobs);
    /// heads and lists carry 0, with which an `apply` fails rather than writes blind.
    pub version: i64,
    /// The jobs; empty in lists.
    pub jobs: Vec<JobRecord>,
}

/// A change to one job, applied by [`Store::apply`]. `None` fields are left as they are.
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

/// What [`Store::apply`] writes, in one transaction.
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
    /// It reads and changes nothing.
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

/// How a job ended, as [`Store::finish`] records it.
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
}

/// The server's durable state. See the crate docs for the guarantees.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;
    /// Checks that the database answers (for `/readyz`).
    async fn ping(&self) -> Result<()>;

    // --- projects

    /// Adds a project; [`StoreError::Conflict`] when the name is taken.
    async fn create_project(&self, name: &str, spec: &str, now: Millis) -> Result<ProjectRecord>;
    /// Replaces a project's settings; `false` when there is no such project.
    async fn update_project(&self, name: &str, spec: &str) -> Result<bool>;
    /// The project named `name`.
    async fn project(&self, name: &str) -> Result<Option<ProjectRecord>>;
    /// The project with id `id`.
    async fn project_by_id(&self, id: i64) -> Result<Option<ProjectRecord>>;
    /// All projects, by name.
    async fn projects(&self) -> Result<Vec<ProjectRecord>>;

    // --- deliveries

    /// Stores a delivery durably: `(id, false)`, or `(id of the first, true)` when this delivery id
    /// was stored before for the project and forge.
    async fn insert_delivery(&self, delivery: &NewDelivery) -> Result<(i64, bool)>;
    /// Up to `limit` deliveries still `pending` and due at `now` (no `retry_at`, or one not after
    /// `now`), oldest first, with their payloads; none of the projects in `skip` (those whose
    /// deliveries are being processed already).
    async fn pending_deliveries(
        &self,
        limit: i64,
        now: Millis,
        skip: &[i64],
    ) -> Result<Vec<DeliveryRecord>>;
    /// Marks a pending delivery `skipped` or `failed`, with the reason.
    async fn close_delivery(&self, id: i64, status: DeliveryStatus, reason: &str) -> Result<()>;
    /// Records a transient failure of pending delivery `id`: one more attempt, and `error` as its
    /// `last_error`. With `retry_at`, it stays pending and [`Store::pending_deliveries`] skips it
    /// until then; without, it is closed `failed` with `error` as its reason. Answers the attempts
    /// counted now, or 0 when the delivery was not pending (then nothing changes).
    async fn fail_delivery_attempt(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<Millis>,
    ) -> Result<i64>;
    /// The earliest `retry_at` of the pending deliveries, if any waits for a retry.
    async fn next_delivery_retry(&self) -> Result<Option<Millis>>;
    /// A project's deliveries, newest first, without payloads.
    async fn deliveries(&self, project_id: i64, page: Page) -> Result<Paged<DeliveryRecord>>;

    // --- pipelines

    /// Creates a pipeline and its jobs in one transaction (see [`NewPipeline::delivery_id`]).
    async fn create_pipeline(&self, pipeline: &NewPipeline) -> Result<i64>;
    /// A pipeline with all its jobs.
    async fn pipeline(&self, id: i64) -> Result<Option<PipelineRecord>>;
    /// The pipeline without its jobs (`jobs` is empty) or its `version` (0): what handing out one
    /// job needs, at a cost that does not grow with the pipeline's size.
    async fn pipeline_head(&self, id: i64) -> Result<Option<PipelineRecord>> {
        Ok(self.pipeline(id).await?.map(|mut p| {
            p.jobs.clear();
            p.version = 0;
            p
        }))
    }
    /// Every attempt of the jobs of pipeline `pipeline_id` named in `names`, in `position`, then
    /// `attempt` order (as in [`PipelineRecord::jobs`]).
    async fn jobs_named(&self, pipeline_id: i64, names: &[String]) -> Result<Vec<JobRecord>> {
        Ok(self
            .pipeline(pipeline_id)
            .await?
            .map_or_else(Vec::new, |p| {
                p.jobs
                    .into_iter()
                    .filter(|j| names.contains(&j.name))
                    .collect()
            }))
    }
    /// Whether job `job_id` (named `name`, at `stage_index` of pipeline `pipeline_id`), having just
    /// succeeded, leaves its pipeline as it is: the pipeline is `running` and started, another job
    /// of the same stage is still `pending` or `running` (so the stage is not over and the jobs
    /// after it keep waiting), and no job of the pipeline `needs` it. One query, without reading the
    /// pipeline's jobs into memory; when it answers `true`, advancing the pipeline would change
    /// nothing, so the finish of most jobs of a wide stage costs no full read.
    async fn success_changes_nothing(
        &self,
        pipeline_id: i64,
        stage_index: i64,
        job_id: i64,
        name: &str,
    ) -> Result<bool>;
    /// Every attempt of the jobs of pipeline `pipeline_id` whose stage comes before `stage_index`,
    /// in `position`, then `attempt` order.
    async fn jobs_before_stage(
        &self,
        pipeline_id: i64,
        stage_index: i64,
    ) -> Result<Vec<JobRecord>> {
        Ok(self
            .pipeline(pipeline_id)
            .await?
            .map_or_else(Vec::new, |p| {
                p.jobs
                    .into_iter()
                    .filter(|j| j.stage_index < stage_index)
                    .collect()
            }))
    }
    /// A project's pipelines, newest first, without jobs or `version` (0).
    async fn pipelines(
        &self,
        project_id: i64,
        filter: &PipelineFilter,
        page: Page,
    ) -> Result<Paged<PipelineRecord>>;
    /// The ids of pipelines that are not over (not `success`, `failed`, `canceled`, `skipped`), oldest
    /// first: the server advances them after a restart and when delayed jobs come due.
    async fn active_pipelines(&self) -> Result<Vec<i64>>;
    /// The ids of `project_id`'s pipelines of `git_ref` that a push started, older than pipeline
    /// `below`, and not over: those a newer push may make redundant. Oldest first.
    async fn unfinished_push_pipelines(
        &self,
        project_id: i64,
        git_ref: &str,
        below: i64,
    ) -> Result<Vec<i64>>;
    /// Applies `changes` if the pipeline's version is still `version` (then bumps it, answers `true`);
    /// otherwise changes nothing and answers `false`.
    async fn apply(&self, pipeline_id: i64, version: i64, changes: &Changes) -> Result<bool>;

    // --- the queue

    /// Hands the oldest `pending` job that `agent` may run (tags, resource groups, `run_after`) to it:
    /// `running`, `started_at = now`, leased until `lease_until`. `None` when there is none.
    /// Oldest first (by `queued_at`, then id). It also starts the pipeline: `started_at = now` if
    /// unset, and status `running` if it was `created`, `pending`, `manual` or `scheduled` (the
    /// server recomputes the status anyway), and it moves the pipeline's `version`.
    async fn claim(
        &self,
        agent: &AgentRecord,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Option<JobRecord>>;
    /// Extends the lease; answers whether cancel was requested.
    async fn heartbeat(&self, job_id: i64, agent_id: i64, lease_until: Millis) -> Result<bool>;
    /// Appends the part of `bytes` (which start at byte `offset` of the log) past the stored end, and
    /// extends the lease; answers the log's new size.
    async fn append_log(
        &self,
        job_id: i64,
        agent_id: i64,
        offset: i64,
        bytes: &[u8],
        lease_until: Millis,
    ) -> Result<i64>;
    /// Bytes `start..end` of a job's log (fewer at the end of the log).
    async fn read_log(&self, job_id: i64, start: i64, end: i64) -> Result<Vec<u8>>;
    /// Starts an upload of a job's artifacts under the lease (extending it); answers the upload's
    /// id. Unfinished earlier uploads of the job are dropped (their commit then fails).
    async fn begin_artifacts(&self, job_id: i64, agent_id: i64, lease_until: Millis)
    -> Result<i64>;
    /// Stores chunk `seq` (counting from 0) of an upload; storing the same chunk again replaces
    /// it.
    async fn put_artifact_chunk(
        &self,
        job_id: i64,
        upload_id: i64,
        seq: i64,
        data: &[u8],
    ) -> Result<()>;
    /// Makes an upload of `chunks` chunks and `size` bytes the job's artifacts (replacing an
    /// earlier archive, whose chunks are deleted), marks the job as having artifacts and extends
    /// the lease. Fails with [`StoreError::LeaseLost`] if the job is not running on that agent, and
    /// with [`StoreError::UploadGone`] if the upload is not there with exactly that many chunks.
    async fn commit_artifacts(
        &self,
        job_id: i64,
        agent_id: i64,
        upload_id: i64,
        chunks: i64,
        size: i64,
        lease_until: Millis,
    ) -> Result<()>;
    /// Drops an unfinished upload and its chunks (a committed one stays).
    async fn abort_artifacts(&self, job_id: i64, upload_id: i64) -> Result<()>;
    /// Drops the uploads that can never be committed (their job is no longer running) and are not
    /// their job's current archive, with their chunks: what an upload cut off by a crash left.
    /// Answers how many uploads were dropped.
    async fn drop_stale_artifact_uploads(&self) -> Result<u64>;
    /// A job's committed artifacts archive, if it has one.
    async fn artifacts_info(&self, job_id: i64) -> Result<Option<ArtifactsInfo>>;
    /// Chunk `seq` of an upload; `None` once the upload is gone (replaced by a newer one).
    async fn artifact_chunk(
        &self,
        job_id: i64,
        upload_id: i64,
        seq: i64,
    ) -> Result<Option<Vec<u8>>>;

    /// Stores a whole archive in [`ARTIFACT_CHUNK`]-sized chunks and commits it (for callers that
    /// hold it in memory anyway; the server streams instead).
    async fn put_artifacts(
        &self,
        job_id: i64,
        agent_id: i64,
        archive: &[u8],
        lease_until: Millis,
    ) -> Result<()> {
        let upload = self.begin_artifacts(job_id, agent_id, lease_until).await?;
        let mut chunks = 0;
        for (seq, data) in archive.chunks(ARTIFACT_CHUNK).enumerate() {
            let seq = i64::try_from(seq).unwrap_or(i64::MAX);
            self.put_artifact_chunk(job_id, upload, seq, data).await?;
            chunks = seq + 1;
        }
        let size = i64::try_from(archive.len()).unwrap_or(i64::MAX);
        self.commit_artifacts(job_id, agent_id, upload, chunks, size, lease_until)
            .await
    }
    /// A job's whole artifacts archive in memory (for tests and small archives; the server
    /// streams chunks instead).
    async fn artifacts(&self, job_id: i64) -> Result<Option<Vec<u8>>> {
        let Some(info) = self.artifacts_info(job_id).await? else {
            return Ok(None);
        };
        let mut archive = Vec::with_capacity(usize::try_from(info.size).unwrap_or(0));
        for seq in 0..info.chunks {
            match self.artifact_chunk(job_id, info.upload_id, seq).await? {
                Some(data) => archive.extend_from_slice(&data),
                None => return Err(StoreError::UploadGone),
            }
        }
        Ok(Some(archive))
    }
    /// Records how a running job ended and releases its lease; answers its pipeline's id.
    async fn finish(&self, job_id: i64, agent_id: i64, result: &JobResult) -> Result<i64>;
    /// Fails every running job whose lease ran out before `now` (`runner_system_failure`); answers
    /// `(job id, pipeline id)` of each.
    async fn expire_leases(&self, now: Millis) -> Result<Vec<(i64, i64)>>;
    /// Moves every running job's lease to at least `until` (a restarted server gives agents time to
    /// reconnect before their leases are judged).
    async fn extend_leases(&self, until: Millis) -> Result<()>;
    /// How many jobs are `pending`.
    async fn queue_depth(&self) -> Result<i64>;
    /// A job by id.
    async fn job(&self, id: i64) -> Result<Option<JobRecord>>;
    /// The project of pipeline `id` (one primary-key read, for authorization).
    async fn pipeline_project(&self, id: i64) -> Result<Option<i64>>;
    /// The project of job `id` (one primary-key read, for authorization).
    async fn job_project(&self, id: i64) -> Result<Option<i64>>;

    // --- agents

    /// Registers an agent; answers its id.
    async fn register_agent(&self, agent: &NewAgent) -> Result<i64>;
    /// The agent whose token hashes to `token_hash`.
    async fn agent_by_token(&self, token_hash: &str) -> Result<Option<AgentRecord>>;
    /// Records that the agent was heard from.
    async fn touch_agent(&self, id: i64, now: Millis) -> Result<()>;
    /// All agents, by id.
    async fn agents(&self) -> Result<Vec<AgentRecord>>;
    /// Revokes an agent: its row (and so its token) is gone, and the leases of its running jobs
    /// end now, so that the next [`Store::expire_leases`] fails them as a lost agent's. Answers
    /// whether there was such an agent.
    async fn revoke_agent(&self, id: i64) -> Result<bool>;
    /// A setting that every server shares (`None` when it was never set).
    async fn setting(&self, name: &str) -> Result<Option<String>>;
    /// Sets a setting.
    async fn set_setting(&self, name: &str, value: &str) -> Result<()>;

    // --- project tokens

    /// Stores a project token; [`StoreError::Conflict`] when its hash is taken.
    async fn create_project_token(&self, token: &NewProjectToken) -> Result<ProjectTokenRecord>;
    /// A project's tokens, by id.
    async fn project_tokens(&self, project_id: i64) -> Result<Vec<ProjectTokenRecord>>;
    /// The token whose secret hashes to `token_hash` (expired ones too: the caller judges).
    async fn project_token_by_hash(&self, token_hash: &str) -> Result<Option<ProjectTokenRecord>>;
    /// Deletes token `id` of project `project_id`; `false` when there is no such token.
    async fn delete_project_token(&self, project_id: i64, id: i64) -> Result<bool>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_error_is_the_source_of_a_store_error() {
        let e = db("reading a project")(sqlx::Error::RowNotFound);
        assert_eq!(
            e.to_string(),
            format!("database: reading a project: {}", sqlx::Error::RowNotFound)
        );
        let source = std::error::Error::source(&e).expect("a source");
        assert!(
            matches!(
                source.downcast_ref::<sqlx::Error>(),
                Some(sqlx::Error::RowNotFound)
            ),
            "{source:?}"
        );
        assert!(std::error::Error::source(&StoreError::LeaseLost).is_none());
    }
}
