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
//! - A job's reports ([`JobResult::reports`]) are stored in the transaction of its finish: a
//!   refused finish stores none, and [`Store::save_reports`] again replaces them, never doubles.
//! - A deployment is recorded once per job ([`Store::record_deployment`]); its status and end
//!   are its job's, so every way a job ends (finish, lease expiry, cancel) ends it, and its
//!   measurements are stored in its job's finish. [`Store::mark_rolled_back`] marks it once.
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

mod error;
mod group;
mod postgres;
mod query;
mod records;
mod rows;
mod sqlite;
mod store;

pub use error::{DatabaseError, Result, StoreError};
pub use gantry_api::{DeliveryStatus, JobStatus, PipelineStatus};
pub use postgres::PgStore;
pub use records::{
    ARTIFACT_CHUNK, AgentJobRecord, AgentRecord, ArtifactsInfo, Changes, CoveragePoint,
    DeliveryRecord, DeploymentRecord, EnvironmentRecord, JobChange, JobRecord, JobResult, Millis,
    NewAgent, NewDelivery, NewDeployment, NewJob, NewNotification, NewPipeline, NewProjectToken,
    NewReports, NotificationRecord, Page, Paged, PipelineFilter, PipelineRecord, ProjectRecord,
    ProjectTokenRecord, ReportsRecord,
};
pub use sqlite::SqliteStore;
pub use store::Store;

pub(crate) use error::db;

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
