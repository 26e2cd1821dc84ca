//! The statements both stores share, written once: [`Sql`], implemented for `sqlx::Sqlite` (in
//! `sqlite.rs`) and `sqlx::Postgres` (in `postgres.rs`), and the [`crate::Store`] impl that runs
//! them ([`store!`], expanded once in each backend). The statements are default methods of a trait
//! rather than free generic functions because a trait's bounds (every type a statement binds or
//! reads) hold inside its own methods, and are proven once, where each database implements it.
//!
//! Each default method of [`Sql`] runs its statements on a connection the backend hands it (a
//! pooled reader, SQLite's writer, a PostgreSQL pool connection, or a transaction on one); how a
//! backend gets that connection, and what it does around it (SQLite's single writer and group
//! commit), stays in the backend. The SQL text uses `$N` placeholders: sqlx's SQLite driver binds a
//! parameter named `$N` to the Nth argument, as PostgreSQL does, so one text serves both, and each
//! connection prepares it once and caches it by that text.
//!
//! What the databases spell differently is an item of the impl: how a list of strings or ids is
//! bound and read (a JSON array on SQLite, `text[]` / `bigint[]` on PostgreSQL), a few fragments
//! ([`Sql::LATER_LEASE`], [`Sql::BEGIN`], [`Sql::NAME_IN_LIST`], [`Sql::JOB_ID_IN_LIST`]), and
//! one statement that differs ([`Sql::SUCCESS_CHANGES_NOTHING`]); what only one database does (claims,
//! [`crate::Store::apply`], appending a log, expiring leases) stays in its backend.

use sqlx::{ColumnIndex, Connection, Decode, Encode, Executor, IntoArguments, Row, Type};

use crate::rows::{
    AGENT_COLS, DELIVERY_COLS, INSERT_BATCH, JOB_COLS, NOT_STARTED, OVER, PIPELINE_COLS,
    PROJECT_COLS, PROJECT_TOKEN_COLS, assemble, limit_offset, queued_at,
};
use gantry_api::deployments::DeploymentStatus;
use gantry_api::{DeliveryStatus, JobStatus, PipelineStatus};

use crate::error::{Result, StoreError, db};
use crate::records::{
    AgentJobRecord, AgentRecord, ArtifactsInfo, Changes, CoveragePoint, DeliveryRecord,
    DeploymentRecord, EnvironmentRecord, JobRecord, JobResult, Millis, NewAgent, NewDelivery,
    NewDeployment, NewJob, NewNotification, NewPipeline, NewProjectToken, NewReports,
    NotificationRecord, Page, Paged, PipelineFilter, PipelineRecord, ProjectRecord,
    ProjectTokenRecord, ReportsRecord,
};

/// A pipeline's version (see [`PIPELINE_COLS`]).
pub(crate) const VERSION: &str = "CAST(p.version + COALESCE((SELECT SUM(j.bumps) FROM jobs j \
     WHERE j.pipeline_id = p.id), 0) AS BIGINT) AS version";

/// In place of [`VERSION`] where the record is only read (heads and lists): the sum walks every
/// job of the pipeline, and nothing that only reads uses it.
const NO_VERSION: &str = "CAST(0 AS BIGINT) AS version";

/// The columns [`Sql::reports_row`] reads, from `jobs j LEFT JOIN job_reports r`.
const REPORTS_COLS: &str = "j.id, j.name, j.stage, j.stage_index, j.status, \
     j.coverage AS job_coverage, r.job_id AS stored, r.reports, r.gate, r.coverage, \
     r.tests_total, r.tests_failed, r.gate_passed";

/// [`REPORTS_COLS`] without the summaries (a typed `NULL`).
const GATE_COLS: &str = "j.id, j.name, j.stage, j.stage_index, j.status, \
     j.coverage AS job_coverage, r.job_id AS stored, CASE WHEN 1 = 0 THEN r.reports END AS reports, \
     r.gate, r.coverage, r.tests_total, r.tests_failed, r.gate_passed";

/// The columns [`Sql::notification_row`] reads.
const NOTIFICATION_COLS: &str = "id, pipeline_id, target, event, status, attempts, last_error, \
     next_attempt_at, created_at";

/// The columns [`Sql::deployment_row`] reads, from [`DEPLOYMENT_FROM`].
const DEPLOYMENT_COLS: &str = "d.id, d.project_id, pr.name AS project_name, d.environment, d.url, \
     d.tier, j.status, d.job_id, d.pipeline_id, d.job_name, d.sha, d.git_ref, d.triggered_by, \
     d.variables, d.artifacts, d.created_at, j.finished_at, d.rollback_of, d.rolled_back_by, \
     d.measurements";

/// Deployments `d` with their jobs `j` (whose status is theirs) and projects `pr`.
const DEPLOYMENT_FROM: &str =
    "FROM deployments d JOIN jobs j ON j.id = d.job_id JOIN projects pr ON pr.id = d.project_id";

/// The condition that deployment `d` (of job `j`) is a success that was not rolled back.
const CURRENT: &str = "j.status = 'success' AND d.rolled_back_by IS NULL";

/// The condition that job `j` is its position's latest attempt.
const LATEST_ATTEMPT: &str = "NOT EXISTS (SELECT 1 FROM jobs n WHERE n.pipeline_id = j.pipeline_id \
     AND n.position = j.position AND n.attempt > j.attempt)";

/// A statement's text with its parameters bound, ready to run.
type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>;

/// The statements of both stores, over one database's connection (see the module docs).
pub(crate) trait Sql: sqlx::Database
where
    for<'q> <Self as sqlx::Database>::Arguments<'q>: IntoArguments<'q, Self>,
    for<'c> &'c mut <Self as sqlx::Database>::Connection: Executor<'c, Database = Self>,
    for<'a> &'a str: ColumnIndex<<Self as sqlx::Database>::Row>,
    usize: ColumnIndex<<Self as sqlx::Database>::Row>,
    for<'q> i64: Encode<'q, Self> + Decode<'q, Self> + Type<Self>,
    for<'q> i32: Encode<'q, Self> + Decode<'q, Self> + Type<Self>,
    for<'q> f64: Encode<'q, Self> + Decode<'q, Self> + Type<Self>,
    for<'q> bool: Encode<'q, Self> + Decode<'q, Self> + Type<Self>,
    for<'q> String: Decode<'q, Self> + Type<Self>,
    for<'q> &'q str: Encode<'q, Self> + Type<Self>,
    for<'q> Vec<u8>: Decode<'q, Self> + Type<Self>,
    for<'q> &'q [u8]: Encode<'q, Self> + Type<Self>,
    for<'q> Option<i64>: Encode<'q, Self>,
    for<'q> Option<i32>: Encode<'q, Self>,
    for<'q> Option<f64>: Encode<'q, Self>,
    for<'q> Option<bool>: Encode<'q, Self>,
    for<'q> Option<&'q str>: Encode<'q, Self>,
    for<'q> Option<&'q [u8]>: Encode<'q, Self>,
{
    /// A list of strings (or `NULL`) as bound.
    type List<'a>: Encode<'a, Self> + Type<Self> + Send + 'a;
    /// A list of ids (or `NULL`) as bound.
    type Ids<'a>: Encode<'a, Self> + Type<Self> + Send + 'a;

    /// `list` as bound.
    fn list_param(list: Option<&[String]>) -> Self::List<'_>;
    /// `ids` as bound.
    fn ids_param(ids: Option<&[i64]>) -> Self::Ids<'_>;
    /// A list column.
    fn read_list(row: &Self::Row, column: &str) -> Result<Vec<String>>;
    /// A nullable list column.
    fn read_opt_list(row: &Self::Row, column: &str) -> Result<Option<Vec<String>>>;
    /// A nullable list of ids.
    fn read_opt_ids(row: &Self::Row, column: &str) -> Result<Option<Vec<i64>>>;
    /// How many rows a statement changed.
    fn affected(done: &Self::QueryResult) -> u64;

    /// Whether a many-row `INSERT` numbers its placeholders (`$N`) rather than writing `?`:
    /// SQLite binds `?` in order at no cost, but looks each `$N` up by name, so a batch of
    /// thousands of `$N` costs time quadratic in their count to prepare and to bind.
    const NUMBERED_BATCH: bool;
    /// What begins a write transaction.
    const BEGIN: &'static str;
    /// The later of a job's `lease_until` and `$1`.
    const LATER_LEASE: &'static str;
    /// The condition that a job's `name` is in the list `$2`.
    const NAME_IN_LIST: &'static str;
    /// The condition that job `j`'s `id` is in the list `$1`.
    const JOB_ID_IN_LIST: &'static str;
    /// See [`crate::Store::success_changes_nothing`]: pipeline `$1`, stage `$2`, job `$3`, name `$4`.
    const SUCCESS_CHANGES_NOTHING: &'static str;

    // --- reading rows

    /// A typed column read.
    fn get<'r, T>(row: &'r Self::Row, column: &str) -> Result<T>
    where
        T: Decode<'r, Self> + Type<Self>,
    {
        row.try_get(column)
            .map_err(|e| StoreError::Database(format!("reading column {column}: {e}").into()))
    }

    /// The `status` column of a row, as `parse` reads it; `table_column` names it in the error
    /// that a value `parse` does not know makes.
    fn status<T>(row: &Self::Row, table_column: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
        let value: String = Self::get(row, "status")?;
        parse(&value).ok_or_else(|| {
            StoreError::database(format!(
                "column {table_column} holds an unknown status `{value}`"
            ))
        })
    }

    /// A row of [`JOB_COLS`].
    fn job_row(row: &Self::Row) -> Result<JobRecord> {
        Ok(JobRecord {
            id: Self::get(row, "id")?,
            pipeline_id: Self::get(row, "pipeline_id")?,
            name: Self::get(row, "name")?,
            stage: Self::get(row, "stage")?,
            stage_index: Self::get(row, "stage_index")?,
            position: Self::get(row, "position")?,
            attempt: Self::get(row, "attempt")?,
            status: Self::status(row, "jobs.status", JobStatus::parse)?,
            when: Self::get(row, "job_when")?,
            allow_failure: Self::get(row, "allow_failure")?,
            needs: Self::read_opt_list(row, "needs")?,
            tags: Self::read_list(row, "tags")?,
            resource_group: Self::get(row, "resource_group")?,
            interruptible: Self::get(row, "interruptible")?,
            spec: Self::get(row, "spec")?,
            created_at: Self::get(row, "created_at")?,
            queued_at: Self::get(row, "queued_at")?,
            started_at: Self::get(row, "started_at")?,
            finished_at: Self::get(row, "finished_at")?,
            run_after: Self::get(row, "run_after")?,
            agent_id: Self::get(row, "agent_id")?,
            agent_name: Self::get(row, "agent_name")?,
            lease_until: Self::get(row, "lease_until")?,
            cancel_requested: Self::get(row, "cancel_requested")?,
            exit_code: Self::get(row, "exit_code")?,
            failure_reason: Self::get(row, "failure_reason")?,
            coverage: Self::get(row, "coverage")?,
            log_size: Self::get(row, "log_size")?,
            has_artifacts: Self::get(row, "has_artifacts")?,
            retried: Self::get(row, "retried")?,
        })
    }

    /// A row of [`PIPELINE_COLS`] and a `version`.
    fn pipeline_row(row: &Self::Row) -> Result<PipelineRecord> {
        Ok(PipelineRecord {
            id: Self::get(row, "id")?,
            project_id: Self::get(row, "project_id")?,
            project_name: Self::get(row, "project_name")?,
            git_ref: Self::get(row, "git_ref")?,
            tag: Self::get(row, "tag")?,
            sha: Self::get(row, "sha")?,
            before_sha: Self::get(row, "before_sha")?,
            source: Self::get(row, "source")?,
            status: Self::status(row, "pipelines.status", PipelineStatus::parse)?,
            trace_id: Self::get(row, "trace_id")?,
            errors: Self::get(row, "errors")?,
            spec: Self::get(row, "spec")?,
            created_at: Self::get(row, "created_at")?,
            started_at: Self::get(row, "started_at")?,
            finished_at: Self::get(row, "finished_at")?,
            version: Self::get(row, "version")?,
            jobs: Vec::new(),
        })
    }

    /// A row of [`DELIVERY_COLS`], and `payload` if `with_payload`.
    fn delivery_row(row: &Self::Row, with_payload: bool) -> Result<DeliveryRecord> {
        Ok(DeliveryRecord {
            id: Self::get(row, "id")?,
            project_id: Self::get(row, "project_id")?,
            forge: Self::get(row, "forge")?,
            delivery_id: Self::get(row, "delivery_id")?,
            event: Self::get(row, "event")?,
            payload: if with_payload {
                Self::get(row, "payload")?
            } else {
                Vec::new()
            },
            trace_id: Self::get(row, "trace_id")?,
            status: Self::status(row, "deliveries.status", DeliveryStatus::parse)?,
            reason: Self::get(row, "reason")?,
            pipeline_id: Self::get(row, "pipeline_id")?,
            received_at: Self::get(row, "received_at")?,
            attempts: Self::get(row, "attempts")?,
            retry_at: Self::get(row, "retry_at")?,
            last_error: Self::get(row, "last_error")?,
        })
    }

    /// A row of [`AGENT_COLS`].
    fn agent_row(row: &Self::Row) -> Result<AgentRecord> {
        Ok(AgentRecord {
            id: Self::get(row, "id")?,
            name: Self::get(row, "name")?,
            tags: Self::read_list(row, "tags")?,
            run_untagged: Self::get(row, "run_untagged")?,
            executor: Self::get(row, "executor")?,
            concurrency: Self::get(row, "concurrency")?,
            version: Self::get(row, "version")?,
            registered_at: Self::get(row, "registered_at")?,
            last_seen_at: Self::get(row, "last_seen_at")?,
            projects: Self::read_opt_ids(row, "projects")?,
            protected_only: Self::get(row, "protected_only")?,
            protocol: Self::get(row, "protocol")?,
        })
    }

    /// A row of [`Sql::agent_jobs`].
    fn agent_job_row(row: &Self::Row) -> Result<AgentJobRecord> {
        Ok(AgentJobRecord {
            agent_id: Self::get(row, "agent_id")?,
            job_id: Self::get(row, "id")?,
            name: Self::get(row, "name")?,
            pipeline_id: Self::get(row, "pipeline_id")?,
            project_name: Self::get(row, "project_name")?,
            claimed_at: Self::get(row, "started_at")?,
        })
    }

    /// A row of [`PROJECT_COLS`].
    fn project_row(row: &Self::Row) -> Result<ProjectRecord> {
        Ok(ProjectRecord {
            id: Self::get(row, "id")?,
            name: Self::get(row, "name")?,
            spec: Self::get(row, "spec")?,
            created_at: Self::get(row, "created_at")?,
        })
    }

    /// A row of [`PROJECT_TOKEN_COLS`].
    fn project_token_row(row: &Self::Row) -> Result<ProjectTokenRecord> {
        Ok(ProjectTokenRecord {
            id: Self::get(row, "id")?,
            project_id: Self::get(row, "project_id")?,
            project_name: Self::get(row, "project_name")?,
            name: Self::get(row, "name")?,
            token_hash: Self::get(row, "token_hash")?,
            created_at: Self::get(row, "created_at")?,
            expires_at: Self::get(row, "expires_at")?,
            read_only: Self::get(row, "read_only")?,
        })
    }

    /// Every row of `query`, each read with `read`.
    async fn rows<'q, T>(
        conn: &mut Self::Connection,
        query: Query<'q, Self>,
        context: &'static str,
        read: fn(&Self::Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        let rows = query.fetch_all(&mut *conn).await.map_err(db(context))?;
        rows.iter().map(read).collect()
    }

    /// The row of `query`, if any, read with `read`.
    async fn row<'q, T>(
        conn: &mut Self::Connection,
        query: Query<'q, Self>,
        context: &'static str,
        read: fn(&Self::Row) -> Result<T>,
    ) -> Result<Option<T>> {
        let row = query
            .fetch_optional(&mut *conn)
            .await
            .map_err(db(context))?;
        row.as_ref().map(read).transpose()
    }

    /// Runs `query`: how many rows it changed.
    async fn run<'q>(
        conn: &mut Self::Connection,
        query: Query<'q, Self>,
        context: &'static str,
    ) -> Result<u64> {
        let done = query.execute(&mut *conn).await.map_err(db(context))?;
        Ok(Self::affected(&done))
    }

    /// The one `i64` (or `NULL`) that `sql` answers, with `id` bound as `$1`.
    async fn id_of(
        conn: &mut Self::Connection,
        sql: &'static str,
        id: i64,
        context: &'static str,
    ) -> Result<Option<i64>> {
        sqlx::query_scalar(sql)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db(context))
    }

    // --- projects

    /// See [`crate::Store::ping`].
    async fn ping(conn: &mut Self::Connection) -> Result<()> {
        Self::run(conn, sqlx::query("SELECT 1"), "ping").await?;
        Ok(())
    }

    /// See [`crate::Store::create_project`].
    async fn create_project(
        conn: &mut Self::Connection,
        name: &str,
        spec: &str,
        now: Millis,
    ) -> Result<ProjectRecord> {
        let sql = format!(
            "INSERT INTO projects (name, spec, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING RETURNING {PROJECT_COLS}"
        );
        let q = sqlx::query(&sql).bind(name).bind(spec).bind(now);
        Self::row(conn, q, "creating a project", Self::project_row)
            .await?
            .ok_or_else(|| StoreError::Conflict(format!("project {name}")))
    }

    /// See [`crate::Store::update_project`].
    async fn update_project(conn: &mut Self::Connection, name: &str, spec: &str) -> Result<bool> {
        let q = sqlx::query("UPDATE projects SET spec = $1 WHERE name = $2")
            .bind(spec)
            .bind(name);
        Ok(Self::run(conn, q, "updating a project").await? > 0)
    }

    /// See [`crate::Store::project`].
    async fn project(conn: &mut Self::Connection, name: &str) -> Result<Option<ProjectRecord>> {
        let sql = format!("SELECT {PROJECT_COLS} FROM projects WHERE name = $1");
        let q = sqlx::query(&sql).bind(name);
        Self::row(conn, q, "reading a project", Self::project_row).await
    }

    /// See [`crate::Store::project_by_id`].
    async fn project_by_id(conn: &mut Self::Connection, id: i64) -> Result<Option<ProjectRecord>> {
        let sql = format!("SELECT {PROJECT_COLS} FROM projects WHERE id = $1");
        let q = sqlx::query(&sql).bind(id);
        Self::row(conn, q, "reading a project", Self::project_row).await
    }

    /// See [`crate::Store::projects`].
    async fn projects(conn: &mut Self::Connection) -> Result<Vec<ProjectRecord>> {
        let sql = format!("SELECT {PROJECT_COLS} FROM projects ORDER BY name");
        Self::rows(
            conn,
            sqlx::query(&sql),
            "listing projects",
            Self::project_row,
        )
        .await
    }

    // --- deliveries

    /// See [`crate::Store::pending_deliveries`].
    async fn pending_deliveries(
        conn: &mut Self::Connection,
        limit: i64,
        now: Millis,
        skip: &[i64],
    ) -> Result<Vec<DeliveryRecord>> {
        let skip = skip_projects(skip);
        let sql = format!(
            "SELECT {DELIVERY_COLS}, payload FROM deliveries WHERE status = 'pending' \
             AND (retry_at IS NULL OR retry_at <= $1){skip} ORDER BY id LIMIT $2"
        );
        let q = sqlx::query(&sql).bind(now).bind(limit);
        Self::rows(conn, q, "listing pending deliveries", |row| {
            Self::delivery_row(row, true)
        })
        .await
    }

    /// See [`crate::Store::close_delivery`].
    async fn close_delivery(
        conn: &mut Self::Connection,
        id: i64,
        status: DeliveryStatus,
        reason: &str,
    ) -> Result<()> {
        let q = sqlx::query(
            "UPDATE deliveries SET status = $1, reason = $2 WHERE id = $3 AND status = 'pending'",
        )
        .bind(status.as_str())
        .bind(reason)
        .bind(id);
        Self::run(conn, q, "closing a delivery").await?;
        Ok(())
    }

    /// See [`crate::Store::fail_delivery_attempt`].
    async fn fail_delivery_attempt(
        conn: &mut Self::Connection,
        id: i64,
        error: &str,
        retry_at: Option<Millis>,
    ) -> Result<i64> {
        let attempts: Option<i64> = sqlx::query_scalar(
            "UPDATE deliveries SET attempts = attempts + 1, last_error = $1, retry_at = $2, \
             status = CASE WHEN CAST($2 AS BIGINT) IS NULL THEN 'failed' ELSE 'pending' END, \
             reason = CASE WHEN CAST($2 AS BIGINT) IS NULL THEN $1 ELSE reason END \
             WHERE id = $3 AND status = 'pending' RETURNING attempts",
        )
        .bind(error)
        .bind(retry_at)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("recording a failed delivery attempt"))?;
        Ok(attempts.unwrap_or(0))
    }

    /// See [`crate::Store::next_delivery_retry`].
    async fn next_delivery_retry(conn: &mut Self::Connection) -> Result<Option<Millis>> {
        sqlx::query_scalar("SELECT MIN(retry_at) FROM deliveries WHERE status = 'pending'")
            .fetch_one(&mut *conn)
            .await
            .map_err(db("reading the next delivery retry"))
    }

    /// See [`crate::Store::deliveries`].
    async fn deliveries(
        conn: &mut Self::Connection,
        project_id: i64,
        page: Page,
    ) -> Result<Paged<DeliveryRecord>> {
        let (limit, offset) = limit_offset(page);
        let total: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE project_id = $1")
                .bind(project_id)
                .fetch_one(&mut *conn)
                .await
                .map_err(db("counting deliveries"))?;
        let sql = format!(
            "SELECT {DELIVERY_COLS} FROM deliveries WHERE project_id = $1 \
             ORDER BY id DESC LIMIT $2 OFFSET $3"
        );
        let q = sqlx::query(&sql).bind(project_id).bind(limit).bind(offset);
        let items = Self::rows(conn, q, "listing deliveries", |row| {
            Self::delivery_row(row, false)
        })
        .await?;
        Ok(Paged { items, total })
    }

    // --- notifications

    /// A row of [`NOTIFICATION_COLS`].
    fn notification_row(row: &Self::Row) -> Result<NotificationRecord> {
        Ok(NotificationRecord {
            id: Self::get(row, "id")?,
            pipeline_id: Self::get(row, "pipeline_id")?,
            target: Self::get(row, "target")?,
            event: Self::get(row, "event")?,
            status: Self::get(row, "status")?,
            attempts: Self::get(row, "attempts")?,
            last_error: Self::get(row, "last_error")?,
            next_attempt_at: Self::get(row, "next_attempt_at")?,
            created_at: Self::get(row, "created_at")?,
        })
    }

    /// See [`crate::Store::insert_notification`].
    async fn insert_notification(conn: &mut Self::Connection, n: &NewNotification) -> Result<i64> {
        sqlx::query_scalar(
            "INSERT INTO notifications (pipeline_id, target, event, next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $4, $4) RETURNING id",
        )
        .bind(n.pipeline_id)
        .bind(n.target.as_str())
        .bind(n.event.as_str())
        .bind(n.created_at)
        .fetch_one(&mut *conn)
        .await
        .map_err(db("storing a notification"))
    }

    /// See [`crate::Store::claim_notifications`]. The outer condition is checked again on each
    /// row as it is locked (PostgreSQL): of two servers claiming at once, one gets it.
    async fn claim_notifications(
        conn: &mut Self::Connection,
        now: Millis,
        until: Millis,
        limit: i64,
    ) -> Result<Vec<NotificationRecord>> {
        let sql = format!(
            "SELECT {NOTIFICATION_COLS} FROM notifications WHERE status = 'pending' \
             AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT $2"
        );
        let q = sqlx::query(&sql).bind(now).bind(limit);
        let due = Self::rows(conn, q, "listing due notifications", Self::notification_row).await?;
        let mut claimed = Vec::with_capacity(due.len());
        for n in due {
            let q = sqlx::query(
                "UPDATE notifications SET next_attempt_at = $1 \
                 WHERE id = $2 AND status = 'pending' AND next_attempt_at <= $3",
            )
            .bind(until)
            .bind(n.id)
            .bind(now);
            if Self::run(conn, q, "claiming a notification").await? > 0 {
                claimed.push(n);
            }
        }
        Ok(claimed)
    }

    /// See [`crate::Store::notification_attempt`].
    async fn notification_attempt(
        conn: &mut Self::Connection,
        id: i64,
        error: Option<&str>,
        retry_at: Option<Millis>,
    ) -> Result<bool> {
        let status = match (error, retry_at) {
            (None, _) => "sent",
            (Some(_), Some(_)) => "pending",
            (Some(_), None) => "failed",
        };
        let q = sqlx::query(
            "UPDATE notifications SET attempts = attempts + 1, status = $1, last_error = $2, \
             next_attempt_at = COALESCE($3, next_attempt_at) WHERE id = $4 AND status = 'pending'",
        )
        .bind(status)
        .bind(error)
        .bind(retry_at)
        .bind(id);
        Ok(Self::run(conn, q, "recording a notification attempt").await? > 0)
    }

    /// See [`crate::Store::next_notification_at`].
    async fn next_notification_at(conn: &mut Self::Connection) -> Result<Option<Millis>> {
        sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM notifications WHERE status = 'pending'",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(db("reading the next notification"))
    }

    /// See [`crate::Store::notifications`].
    async fn notifications(
        conn: &mut Self::Connection,
        pipeline_id: i64,
    ) -> Result<Vec<NotificationRecord>> {
        let sql = format!(
            "SELECT {NOTIFICATION_COLS} FROM notifications WHERE pipeline_id = $1 ORDER BY id"
        );
        let q = sqlx::query(&sql).bind(pipeline_id);
        Self::rows(
            conn,
            q,
            "listing a pipeline's notifications",
            Self::notification_row,
        )
        .await
    }

    /// See [`crate::Store::previous_finished_status`].
    async fn previous_finished_status(
        conn: &mut Self::Connection,
        project_id: i64,
        git_ref: &str,
        below: i64,
    ) -> Result<Option<PipelineStatus>> {
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM pipelines WHERE project_id = $1 AND git_ref = $2 AND id < $3 \
             AND status IN ('success', 'failed', 'canceled') ORDER BY id DESC LIMIT 1",
        )
        .bind(project_id)
        .bind(git_ref)
        .bind(below)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("reading the previous pipeline of a ref"))?;
        Ok(status.as_deref().and_then(PipelineStatus::parse))
    }

    /// The delivery that `d` repeats (its delivery id, else its push key), and whether that one is
    /// a push received before `d`'s window (then it does not count): see
    /// [`crate::group::DeliveryWriter::stored_id`].
    async fn stored_delivery(conn: &mut Self::Connection, d: &NewDelivery) -> Result<(i64, bool)> {
        let by_id = sqlx::query_scalar(
            "SELECT id FROM deliveries WHERE project_id = $1 AND forge = $2 AND delivery_id = $3",
        )
        .bind(d.project_id)
        .bind(d.forge.as_str())
        .bind(d.delivery_id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("reading a duplicate delivery"))?;
        if let Some(id) = by_id {
            return Ok((id, false));
        }
        let (id, at): (i64, i64) = sqlx::query_as(
            "SELECT id, received_at FROM deliveries WHERE project_id = $1 AND push_key = $2",
        )
        .bind(d.project_id)
        .bind(d.push_key.as_deref())
        .fetch_one(&mut *conn)
        .await
        .map_err(db("reading a duplicate delivery"))?;
        Ok((id, at < d.push_key_since))
    }

    /// Clears `d`'s push key on a delivery received before `d`'s window: the same push may then
    /// be stored again. Idempotent (an expired key is expired whoever clears it), so it needs no
    /// transaction with the insert that follows.
    async fn expire_push_key(conn: &mut Self::Connection, d: &NewDelivery) -> Result<()> {
        let q = sqlx::query(
            "UPDATE deliveries SET push_key = NULL \
             WHERE project_id = $1 AND push_key = $2 AND received_at < $3",
        )
        .bind(d.project_id)
        .bind(d.push_key.as_deref())
        .bind(d.push_key_since);
        Self::run(conn, q, "expiring a push key").await?;
        Ok(())
    }

    // --- pipelines

    /// Inserts `jobs` of a pipeline, in batches.
    async fn insert_jobs(
        conn: &mut Self::Connection,
        pipeline_id: i64,
        project_id: i64,
        jobs: &[NewJob],
    ) -> Result<()> {
        for batch in jobs.chunks(INSERT_BATCH) {
            let sql = insert_jobs_sql(batch.len(), Self::NUMBERED_BATCH);
            let mut q = sqlx::query(&sql);
            for job in batch {
                q = q
                    .bind(pipeline_id)
                    .bind(project_id)
                    .bind(job.name.as_str())
                    .bind(job.stage.as_str())
                    .bind(job.stage_index)
                    .bind(job.position)
                    .bind(job.attempt)
                    .bind(job.status.as_str())
                    .bind(job.when.as_str())
                    .bind(job.allow_failure)
                    .bind(Self::list_param(job.needs.as_deref()))
                    .bind(Self::list_param(Some(&job.tags)))
                    .bind(job.resource_group.as_deref())
                    .bind(job.interruptible)
                    .bind(job.spec.as_str())
                    .bind(job.created_at)
                    .bind(queued_at(job));
            }
            Self::run(conn, q, "inserting jobs").await?;
        }
        Ok(())
    }

    /// See [`crate::Store::create_pipeline`].
    async fn create_pipeline(conn: &mut Self::Connection, p: &NewPipeline) -> Result<i64> {
        let mut tx = conn
            .begin_with(Self::BEGIN)
            .await
            .map_err(db("beginning a transaction"))?;
        // A concurrent creation for the same delivery (PostgreSQL) waits on the unique index,
        // then does nothing.
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO pipelines (project_id, delivery_id, git_ref, tag, sha, before_sha, \
             source, status, trace_id, errors, spec, created_at, protected) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (delivery_id) DO NOTHING RETURNING id",
        )
        .bind(p.project_id)
        .bind(p.delivery_id)
        .bind(p.git_ref.as_str())
        .bind(p.tag)
        .bind(p.sha.as_str())
        .bind(p.before_sha.as_deref())
        .bind(p.source.as_str())
        .bind(p.status.as_str())
        .bind(p.trace_id.as_str())
        .bind(p.errors.as_str())
        .bind(p.spec.as_str())
        .bind(p.created_at)
        .bind(p.protected)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("creating a pipeline"))?;
        let Some(id) = id else {
            // The delivery has its pipeline already.
            let id: i64 = sqlx::query_scalar("SELECT id FROM pipelines WHERE delivery_id = $1")
                .bind(p.delivery_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("reading a delivery's pipeline"))?;
            return Ok(id);
        };
        Self::insert_jobs(&mut *tx, id, p.project_id, &p.jobs).await?;
        if let Some(delivery) = p.delivery_id {
            let q = sqlx::query(
                "UPDATE deliveries SET status = 'created', reason = NULL, pipeline_id = $1 \
                 WHERE id = $2",
            )
            .bind(id)
            .bind(delivery);
            Self::run(&mut *tx, q, "marking a delivery created").await?;
        }
        tx.commit().await.map_err(db("committing a pipeline"))?;
        Ok(id)
    }

    /// See [`crate::Store::pipeline`].
    async fn pipeline(conn: &mut Self::Connection, id: i64) -> Result<Option<PipelineRecord>> {
        // The pipeline row (and its version) is read before the jobs: jobs read later can only
        // be newer, so an `apply` computed from them with this version fails rather than
        // applying over changes it did not see.
        let sql = format!(
            "SELECT {PIPELINE_COLS}, {VERSION} FROM pipelines p \
             JOIN projects pr ON pr.id = p.project_id WHERE p.id = $1"
        );
        let q = sqlx::query(&sql).bind(id);
        let Some(mut pipeline) =
            Self::row(conn, q, "reading a pipeline", Self::pipeline_row).await?
        else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT {JOB_COLS} FROM jobs WHERE pipeline_id = $1 ORDER BY position, attempt, id"
        );
        let q = sqlx::query(&sql).bind(id);
        pipeline.jobs = Self::rows(conn, q, "reading a pipeline's jobs", Self::job_row).await?;
        Ok(Some(pipeline))
    }

    /// See [`crate::Store::pipeline_head`].
    async fn pipeline_head(conn: &mut Self::Connection, id: i64) -> Result<Option<PipelineRecord>> {
        let sql = format!(
            "SELECT {PIPELINE_COLS}, {NO_VERSION} FROM pipelines p \
             JOIN projects pr ON pr.id = p.project_id WHERE p.id = $1"
        );
        let q = sqlx::query(&sql).bind(id);
        Self::row(conn, q, "reading a pipeline", Self::pipeline_row).await
    }

    /// See [`crate::Store::jobs_named`].
    async fn jobs_named(
        conn: &mut Self::Connection,
        pipeline_id: i64,
        names: &[String],
    ) -> Result<Vec<JobRecord>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {JOB_COLS} FROM jobs WHERE pipeline_id = $1 AND {} \
             ORDER BY position, attempt, id",
            Self::NAME_IN_LIST
        );
        let q = sqlx::query(&sql)
            .bind(pipeline_id)
            .bind(Self::list_param(Some(names)));
        Self::rows(conn, q, "reading jobs by name", Self::job_row).await
    }

    /// See [`crate::Store::success_changes_nothing`].
    async fn success_changes_nothing(
        conn: &mut Self::Connection,
        pipeline_id: i64,
        stage_index: i64,
        job_id: i64,
        name: &str,
    ) -> Result<bool> {
        sqlx::query_scalar(Self::SUCCESS_CHANGES_NOTHING)
            .bind(pipeline_id)
            .bind(stage_index)
            .bind(job_id)
            .bind(name)
            .fetch_one(&mut *conn)
            .await
            .map_err(db("checking what a job's success changes"))
    }

    /// See [`crate::Store::jobs_before_stage`].
    async fn jobs_before_stage(
        conn: &mut Self::Connection,
        pipeline_id: i64,
        stage_index: i64,
    ) -> Result<Vec<JobRecord>> {
        let sql = format!(
            "SELECT {JOB_COLS} FROM jobs WHERE pipeline_id = $1 AND stage_index < $2 \
             ORDER BY position, attempt, id"
        );
        let q = sqlx::query(&sql).bind(pipeline_id).bind(stage_index);
        Self::rows(conn, q, "reading the jobs of earlier stages", Self::job_row).await
    }

    /// See [`crate::Store::pipelines`].
    async fn pipelines(
        conn: &mut Self::Connection,
        project_id: i64,
        filter: &PipelineFilter,
        page: Page,
    ) -> Result<Paged<PipelineRecord>> {
        let (limit, offset) = limit_offset(page);
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pipelines WHERE project_id = $1 \
             AND (CAST($2 AS TEXT) IS NULL OR git_ref = $2) \
             AND (CAST($3 AS TEXT) IS NULL OR status = $3)",
        )
        .bind(project_id)
        .bind(filter.git_ref.as_deref())
        .bind(filter.status.map(PipelineStatus::as_str))
        .fetch_one(&mut *conn)
        .await
        .map_err(db("counting pipelines"))?;
        let sql = format!(
            "SELECT {PIPELINE_COLS}, {NO_VERSION} FROM pipelines p \
             JOIN projects pr ON pr.id = p.project_id \
             WHERE p.project_id = $1 AND (CAST($2 AS TEXT) IS NULL OR p.git_ref = $2) \
             AND (CAST($3 AS TEXT) IS NULL OR p.status = $3) ORDER BY p.id DESC LIMIT $4 OFFSET $5"
        );
        let q = sqlx::query(&sql)
            .bind(project_id)
            .bind(filter.git_ref.as_deref())
            .bind(filter.status.map(PipelineStatus::as_str))
            .bind(limit)
            .bind(offset);
        let items = Self::rows(conn, q, "listing pipelines", Self::pipeline_row).await?;
        Ok(Paged { items, total })
    }

    /// See [`crate::Store::active_pipelines`].
    async fn active_pipelines(conn: &mut Self::Connection) -> Result<Vec<i64>> {
        sqlx::query_scalar(&format!(
            "SELECT id FROM pipelines WHERE status NOT IN {OVER} ORDER BY id"
        ))
        .fetch_all(&mut *conn)
        .await
        .map_err(db("listing active pipelines"))
    }

    /// See [`crate::Store::unfinished_push_pipelines`].
    async fn unfinished_push_pipelines(
        conn: &mut Self::Connection,
        project_id: i64,
        git_ref: &str,
        below: i64,
    ) -> Result<Vec<i64>> {
        sqlx::query_scalar(&format!(
            "SELECT id FROM pipelines WHERE status NOT IN {OVER} AND project_id = $1 \
             AND git_ref = $2 AND source = 'push' AND id < $3 ORDER BY id"
        ))
        .bind(project_id)
        .bind(git_ref)
        .bind(below)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("listing the pipelines of a ref"))
    }

    /// What [`crate::Store::apply`] writes once it holds the pipeline: the jobs' changes, the new
    /// jobs, then the pipeline's row (bumping its version).
    async fn write_changes(
        conn: &mut Self::Connection,
        pipeline_id: i64,
        project_id: i64,
        changes: &Changes,
    ) -> Result<()> {
        for n in &changes.notifications {
            Self::insert_notification(&mut *conn, n).await?;
        }
        for job in &changes.jobs {
            let q = sqlx::query(
                "UPDATE jobs SET status = COALESCE($1, status), \
                 queued_at = COALESCE($2, queued_at), finished_at = COALESCE($3, finished_at), \
                 run_after = COALESCE($4, run_after), \
                 failure_reason = COALESCE($5, failure_reason), \
                 cancel_requested = COALESCE($6, cancel_requested), \
                 retried = COALESCE($7, retried) \
                 WHERE id = $8 AND pipeline_id = $9",
            )
            .bind(job.status.map(JobStatus::as_str))
            .bind(job.queued_at)
            .bind(job.finished_at)
            .bind(job.run_after)
            .bind(job.failure_reason.as_deref())
            .bind(job.cancel_requested)
            .bind(job.retried)
            .bind(job.id)
            .bind(pipeline_id);
            Self::run(conn, q, "updating a job").await?;
        }
        Self::insert_jobs(conn, pipeline_id, project_id, &changes.new_jobs).await?;
        let q = sqlx::query(
            "UPDATE pipelines SET version = version + 1, status = COALESCE($1, status), \
             started_at = COALESCE($2, started_at), finished_at = COALESCE($3, finished_at), \
             spec = COALESCE($4, spec) WHERE id = $5",
        )
        .bind(changes.status.map(PipelineStatus::as_str))
        .bind(changes.started_at)
        .bind(changes.finished_at)
        .bind(changes.spec.as_deref())
        .bind(pipeline_id);
        Self::run(conn, q, "updating a pipeline").await?;
        Ok(())
    }

    /// Ends [`crate::Store::apply`]'s transaction `tx`, which holds the pipeline: when `current`
    /// (the pipeline's version and project; `None` when it is gone) is at `version`, writes
    /// `changes` and commits; else rolls back. Whether it wrote.
    async fn apply_at(
        mut tx: sqlx::Transaction<'_, Self>,
        pipeline_id: i64,
        version: i64,
        current: Option<(i64, i64)>,
        changes: &Changes,
    ) -> Result<bool> {
        let Some((_, project_id)) = current.filter(|&(current, _)| current == version) else {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Ok(false);
        };
        Self::write_changes(&mut *tx, pipeline_id, project_id, changes).await?;
        tx.commit().await.map_err(db("committing changes"))?;
        Ok(true)
    }

    // --- the queue

    /// Marks claimed job `id` running on `agent`: its record.
    async fn mark_claimed(
        conn: &mut Self::Connection,
        id: i64,
        agent: &AgentRecord,
        now: Millis,
        lease_until: Millis,
    ) -> Result<JobRecord> {
        let sql = format!(
            "UPDATE jobs SET status = 'running', started_at = $1, lease_until = $2, \
             agent_id = $3, agent_name = $4, bumps = bumps + 1 WHERE id = $5 \
             RETURNING {JOB_COLS}"
        );
        let q = sqlx::query(&sql)
            .bind(now)
            .bind(lease_until)
            .bind(agent.id)
            .bind(agent.name.as_str())
            .bind(id);
        Self::row(conn, q, "claiming a job", Self::job_row)
            .await?
            .ok_or_else(|| StoreError::Database("a claimed job is gone".to_owned().into()))
    }

    /// Starts the pipeline of a job just claimed, if it is its first: the job's `bumps` moved
    /// the pipeline's version, so only this first claim writes the pipeline's row.
    async fn start_pipeline(
        conn: &mut Self::Connection,
        pipeline_id: i64,
        now: Millis,
    ) -> Result<()> {
        let sql = format!(
            "UPDATE pipelines SET started_at = COALESCE(started_at, $1), \
             status = CASE WHEN status IN {NOT_STARTED} THEN 'running' ELSE status END \
             WHERE id = $2 AND (started_at IS NULL OR status IN {NOT_STARTED})"
        );
        let q = sqlx::query(&sql).bind(now).bind(pipeline_id);
        Self::run(conn, q, "starting a pipeline").await?;
        Ok(())
    }

    /// See [`crate::Store::heartbeat`].
    async fn heartbeat(
        conn: &mut Self::Connection,
        job_id: i64,
        agent_id: i64,
        lease_until: Millis,
    ) -> Result<bool> {
        let later = Self::LATER_LEASE;
        let cancel: Option<bool> = sqlx::query_scalar(&format!(
            "UPDATE jobs SET lease_until = {later} \
             WHERE id = $2 AND status = 'running' AND agent_id = $3 RETURNING cancel_requested"
        ))
        .bind(lease_until)
        .bind(job_id)
        .bind(agent_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("extending a lease"))?;
        cancel.ok_or(StoreError::LeaseLost)
    }

    /// See [`crate::Store::read_log`].
    async fn read_log(
        conn: &mut Self::Connection,
        job_id: i64,
        start: i64,
        end: i64,
    ) -> Result<Vec<u8>> {
        let start = start.max(0);
        if end <= start {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT pos, bytes FROM log_chunks WHERE job_id = $1 AND pos < $3 \
             AND pos >= COALESCE((SELECT MAX(pos) FROM log_chunks \
                WHERE job_id = $1 AND pos <= $2), 0) \
             ORDER BY pos",
        )
        .bind(job_id)
        .bind(start)
        .bind(end)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("reading a log"))?;
        Ok(assemble(rows, start, end))
    }

    /// Extends the lease of job `job_id` held by agent `agent_id` inside an artifacts
    /// transaction, and with `mark`, records that the job has artifacts. `false`: the agent does
    /// not hold the job.
    async fn lease_for_artifacts(
        conn: &mut Self::Connection,
        job_id: i64,
        agent_id: i64,
        lease_until: Millis,
        mark: bool,
    ) -> Result<bool> {
        let later = Self::LATER_LEASE;
        let sql = format!(
            "UPDATE jobs SET has_artifacts = (has_artifacts OR $4), lease_until = {later} \
             WHERE id = $2 AND status = 'running' AND agent_id = $3"
        );
        let q = sqlx::query(&sql)
            .bind(lease_until)
            .bind(job_id)
            .bind(agent_id)
            .bind(mark);
        Ok(Self::run(conn, q, "extending a lease").await? > 0)
    }

    /// See [`crate::Store::begin_artifacts`].
    async fn begin_artifacts(
        conn: &mut Self::Connection,
        job_id: i64,
        agent_id: i64,
        lease_until: Millis,
    ) -> Result<i64> {
        let mut tx = conn
            .begin_with(Self::BEGIN)
            .await
            .map_err(db("beginning a transaction"))?;
        if !Self::lease_for_artifacts(&mut *tx, job_id, agent_id, lease_until, false).await? {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::LeaseLost);
        }
        // Unfinished earlier uploads of the job (a retried or abandoned request) go.
        let q = sqlx::query(
            "DELETE FROM artifact_uploads WHERE job_id = $1 AND NOT EXISTS (SELECT 1 FROM \
             artifacts a WHERE a.job_id = $1 AND a.upload_id = artifact_uploads.id)",
        )
        .bind(job_id);
        Self::run(&mut *tx, q, "dropping unfinished uploads").await?;
        let id: i64 =
            sqlx::query_scalar("INSERT INTO artifact_uploads (job_id) VALUES ($1) RETURNING id")
                .bind(job_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("starting an upload"))?;
        tx.commit()
            .await
            .map_err(db("committing an upload's start"))?;
        Ok(id)
    }

    /// See [`crate::Store::put_artifact_chunk`].
    async fn put_artifact_chunk(
        conn: &mut Self::Connection,
        job_id: i64,
        upload_id: i64,
        seq: i64,
        data: &[u8],
    ) -> Result<()> {
        let q = sqlx::query(
            "INSERT INTO artifact_chunks (upload_id, seq, data) SELECT $1, $2, $3 WHERE EXISTS \
             (SELECT 1 FROM artifact_uploads WHERE id = $1 AND job_id = $4) \
             ON CONFLICT (upload_id, seq) DO UPDATE SET data = excluded.data",
        )
        .bind(upload_id)
        .bind(seq)
        .bind(data)
        .bind(job_id);
        if Self::run(conn, q, "storing an artifacts chunk").await? == 0 {
            return Err(StoreError::UploadGone);
        }
        Ok(())
    }

    /// See [`crate::Store::commit_artifacts`].
    async fn commit_artifacts(
        conn: &mut Self::Connection,
        job_id: i64,
        agent_id: i64,
        upload: ArtifactsInfo,
        lease_until: Millis,
    ) -> Result<()> {
        let ArtifactsInfo {
            upload_id,
            size,
            chunks,
        } = upload;
        let mut tx = conn
            .begin_with(Self::BEGIN)
            .await
            .map_err(db("beginning a transaction"))?;
        if !Self::lease_for_artifacts(&mut *tx, job_id, agent_id, lease_until, true).await? {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::LeaseLost);
        }
        let (count, first, last, bytes): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT COUNT(c.seq), COALESCE(MIN(c.seq), 0), COALESCE(MAX(c.seq), -1), \
             CAST(COALESCE(SUM(length(c.data)), 0) AS BIGINT) FROM artifact_uploads u \
             LEFT JOIN artifact_chunks c ON c.upload_id = u.id WHERE u.id = $1 AND u.job_id = $2",
        )
        .bind(upload_id)
        .bind(job_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("checking an upload"))?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM artifact_uploads WHERE id = $1 AND job_id = $2)",
        )
        .bind(upload_id)
        .bind(job_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("checking an upload"))?;
        if !exists || count != chunks || first != 0 || last != chunks - 1 || bytes != size {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::UploadGone);
        }
        let old = Self::id_of(
            &mut *tx,
            "SELECT upload_id FROM artifacts WHERE job_id = $1",
            job_id,
            "reading artifacts",
        )
        .await?;
        let q = sqlx::query(
            "INSERT INTO artifacts (job_id, upload_id, size, chunks) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (job_id) DO UPDATE SET upload_id = excluded.upload_id, \
             size = excluded.size, chunks = excluded.chunks",
        )
        .bind(job_id)
        .bind(upload_id)
        .bind(size)
        .bind(chunks);
        Self::run(&mut *tx, q, "storing artifacts").await?;
        if let Some(old) = old.filter(|old| *old != upload_id) {
            let q = sqlx::query("DELETE FROM artifact_uploads WHERE id = $1").bind(old);
            Self::run(&mut *tx, q, "dropping replaced artifacts").await?;
        }
        tx.commit().await.map_err(db("committing artifacts"))?;
        Ok(())
    }

    /// See [`crate::Store::drop_stale_artifact_uploads`].
    async fn drop_stale_artifact_uploads(conn: &mut Self::Connection) -> Result<u64> {
        // Chunks go with their upload (`ON DELETE CASCADE`).
        let q = sqlx::query(
            "DELETE FROM artifact_uploads WHERE id IN (SELECT u.id FROM artifact_uploads u \
             JOIN jobs j ON j.id = u.job_id WHERE j.status <> 'running' \
             AND NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.upload_id = u.id))",
        );
        Self::run(conn, q, "dropping stale artifact uploads").await
    }

    /// See [`crate::Store::abort_artifacts`].
    async fn abort_artifacts(
        conn: &mut Self::Connection,
        job_id: i64,
        upload_id: i64,
    ) -> Result<()> {
        // The committed upload stays; chunks go with their upload (`ON DELETE CASCADE`).
        let q = sqlx::query(
            "DELETE FROM artifact_uploads WHERE id = $1 AND job_id = $2 AND NOT EXISTS \
             (SELECT 1 FROM artifacts a WHERE a.job_id = $2 AND a.upload_id = $1)",
        )
        .bind(upload_id)
        .bind(job_id);
        Self::run(conn, q, "dropping an upload").await?;
        Ok(())
    }

    /// See [`crate::Store::artifacts_info`].
    async fn artifacts_info(
        conn: &mut Self::Connection,
        job_id: i64,
    ) -> Result<Option<ArtifactsInfo>> {
        let row: Option<(i64, i64, i64)> =
            sqlx::query_as("SELECT upload_id, size, chunks FROM artifacts WHERE job_id = $1")
                .bind(job_id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db("reading artifacts"))?;
        Ok(row.map(|(upload_id, size, chunks)| ArtifactsInfo {
            upload_id,
            size,
            chunks,
        }))
    }

    /// See [`crate::Store::artifact_chunk`].
    async fn artifact_chunk(
        conn: &mut Self::Connection,
        job_id: i64,
        upload_id: i64,
        seq: i64,
    ) -> Result<Option<Vec<u8>>> {
        sqlx::query_scalar(
            "SELECT c.data FROM artifact_chunks c JOIN artifact_uploads u ON u.id = c.upload_id \
             WHERE c.upload_id = $1 AND c.seq = $2 AND u.job_id = $3",
        )
        .bind(upload_id)
        .bind(seq)
        .bind(job_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("reading an artifacts chunk"))
    }

    /// See [`crate::Store::finish`]: one statement, or a transaction with the job's reports and
    /// measurements.
    async fn finish(
        conn: &mut Self::Connection,
        job_id: i64,
        agent_id: i64,
        result: &JobResult,
    ) -> Result<i64> {
        if result.reports.is_none() && result.measurements.is_none() {
            return Self::finish_job(conn, job_id, agent_id, result).await;
        }
        let mut tx = conn
            .begin_with(Self::BEGIN)
            .await
            .map_err(db("beginning a transaction"))?;
        let pipeline_id = match Self::finish_job(&mut *tx, job_id, agent_id, result).await {
            Ok(id) => id,
            Err(e) => {
                tx.rollback().await.map_err(db("rolling back"))?;
                return Err(e);
            }
        };
        if let Some(reports) = &result.reports {
            Self::save_reports(&mut *tx, job_id, reports).await?;
        }
        if let Some(measurements) = &result.measurements {
            let q = sqlx::query("UPDATE deployments SET measurements = $1 WHERE job_id = $2")
                .bind(measurements.as_str())
                .bind(job_id);
            Self::run(&mut *tx, q, "storing a deployment's measurements").await?;
        }
        tx.commit().await.map_err(db("committing a finish"))?;
        Ok(pipeline_id)
    }

    /// The job's row of [`Sql::finish`].
    async fn finish_job(
        conn: &mut Self::Connection,
        job_id: i64,
        agent_id: i64,
        result: &JobResult,
    ) -> Result<i64> {
        let pipeline_id: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET status = $1, exit_code = $2, failure_reason = $3, coverage = $4, \
             finished_at = $5, lease_until = NULL, bumps = bumps + 1 \
             WHERE id = $6 AND status = 'running' AND agent_id = $7 RETURNING pipeline_id",
        )
        .bind(result.status.as_str())
        .bind(result.exit_code)
        .bind(result.failure_reason.as_deref())
        .bind(result.coverage)
        .bind(result.finished_at)
        .bind(job_id)
        .bind(agent_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("finishing a job"))?;
        pipeline_id.ok_or(StoreError::LeaseLost)
    }

    /// See [`crate::Store::extend_leases`].
    async fn extend_leases(conn: &mut Self::Connection, until: Millis) -> Result<()> {
        let q = sqlx::query(
            "UPDATE jobs SET lease_until = $1 \
             WHERE status = 'running' AND (lease_until IS NULL OR lease_until < $1)",
        )
        .bind(until);
        Self::run(conn, q, "extending leases").await?;
        Ok(())
    }

    /// See [`crate::Store::queue_depth`].
    async fn queue_depth(conn: &mut Self::Connection) -> Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = 'pending'")
            .fetch_one(&mut *conn)
            .await
            .map_err(db("counting pending jobs"))
    }

    /// See [`crate::Store::job`].
    async fn job(conn: &mut Self::Connection, id: i64) -> Result<Option<JobRecord>> {
        let sql = format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1");
        Self::row(
            conn,
            sqlx::query(&sql).bind(id),
            "reading a job",
            Self::job_row,
        )
        .await
    }

    /// See [`crate::Store::pipeline_project`].
    async fn pipeline_project(conn: &mut Self::Connection, id: i64) -> Result<Option<i64>> {
        let sql = "SELECT project_id FROM pipelines WHERE id = $1";
        Self::id_of(conn, sql, id, "reading a pipeline's project").await
    }

    /// See [`crate::Store::job_project`].
    async fn job_project(conn: &mut Self::Connection, id: i64) -> Result<Option<i64>> {
        let sql = "SELECT project_id FROM jobs WHERE id = $1";
        Self::id_of(conn, sql, id, "reading a job's project").await
    }

    // --- reports

    /// A row of [`REPORTS_COLS`].
    fn reports_row(row: &Self::Row) -> Result<ReportsRecord> {
        let stored: Option<i64> = Self::get(row, "stored")?;
        Ok(ReportsRecord {
            job_id: Self::get(row, "id")?,
            name: Self::get(row, "name")?,
            stage: Self::get(row, "stage")?,
            stage_index: Self::get(row, "stage_index")?,
            status: Self::status(row, "jobs.status", JobStatus::parse)?,
            job_coverage: Self::get(row, "job_coverage")?,
            stored: match stored {
                Some(_) => Some(NewReports {
                    reports: Self::get(row, "reports")?,
                    gate: Self::get(row, "gate")?,
                    coverage: Self::get(row, "coverage")?,
                    tests_total: Self::get(row, "tests_total")?,
                    tests_failed: Self::get(row, "tests_failed")?,
                    gate_passed: Self::get(row, "gate_passed")?,
                }),
                None => None,
            },
        })
    }

    /// See [`crate::Store::save_reports`].
    async fn save_reports(
        conn: &mut Self::Connection,
        job_id: i64,
        r: &NewReports,
    ) -> Result<bool> {
        let q = sqlx::query(
            "INSERT INTO job_reports (job_id, pipeline_id, reports, gate, coverage, tests_total, \
             tests_failed, gate_passed) SELECT id, pipeline_id, $2, $3, $4, $5, $6, $7 FROM jobs \
             WHERE id = $1 ON CONFLICT (job_id) DO UPDATE SET reports = excluded.reports, \
             gate = excluded.gate, coverage = excluded.coverage, \
             tests_total = excluded.tests_total, tests_failed = excluded.tests_failed, \
             gate_passed = excluded.gate_passed",
        )
        .bind(job_id)
        .bind(r.reports.as_deref())
        .bind(r.gate.as_deref())
        .bind(r.coverage)
        .bind(r.tests_total)
        .bind(r.tests_failed)
        .bind(r.gate_passed);
        Ok(Self::run(conn, q, "storing a job's reports").await? > 0)
    }

    /// See [`crate::Store::job_reports`].
    async fn job_reports(
        conn: &mut Self::Connection,
        job_id: i64,
    ) -> Result<Option<ReportsRecord>> {
        let sql = format!(
            "SELECT {REPORTS_COLS} FROM jobs j LEFT JOIN job_reports r ON r.job_id = j.id \
             WHERE j.id = $1"
        );
        let q = sqlx::query(&sql).bind(job_id);
        Self::row(conn, q, "reading a job's reports", Self::reports_row).await
    }

    /// See [`crate::Store::pipeline_reports`] and, with `gates_only`,
    /// [`crate::Store::pipeline_gates`].
    async fn pipeline_reports(
        conn: &mut Self::Connection,
        pipeline_id: i64,
        gates_only: bool,
    ) -> Result<Vec<ReportsRecord>> {
        let (cols, which) = if gates_only {
            (GATE_COLS, "r.gate IS NOT NULL")
        } else {
            (
                REPORTS_COLS,
                "(r.job_id IS NOT NULL OR j.coverage IS NOT NULL)",
            )
        };
        let sql = format!(
            "SELECT {cols} FROM jobs j LEFT JOIN job_reports r ON r.job_id = j.id \
             WHERE j.pipeline_id = $1 AND {which} AND {LATEST_ATTEMPT} ORDER BY j.position"
        );
        let q = sqlx::query(&sql).bind(pipeline_id);
        Self::rows(conn, q, "reading a pipeline's reports", Self::reports_row).await
    }

    /// See [`crate::Store::jobs_reports`].
    async fn jobs_reports(
        conn: &mut Self::Connection,
        job_ids: &[i64],
    ) -> Result<Vec<ReportsRecord>> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {REPORTS_COLS} FROM jobs j LEFT JOIN job_reports r ON r.job_id = j.id \
             WHERE {} AND (r.job_id IS NOT NULL OR j.coverage IS NOT NULL) \
             ORDER BY j.position, j.attempt, j.id",
            Self::JOB_ID_IN_LIST
        );
        let q = sqlx::query(&sql).bind(Self::ids_param(Some(job_ids)));
        Self::rows(conn, q, "reading jobs' reports", Self::reports_row).await
    }

    /// See [`crate::Store::coverage_trend`].
    async fn coverage_trend(
        conn: &mut Self::Connection,
        project_id: i64,
        git_ref: &str,
        page: Page,
    ) -> Result<Paged<CoveragePoint>> {
        let (limit, offset) = limit_offset(page);
        let covered = format!(
            "FROM pipelines p JOIN jobs j ON j.pipeline_id = p.id \
             LEFT JOIN job_reports r ON r.job_id = j.id \
             WHERE p.project_id = $1 AND p.git_ref = $2 \
             AND COALESCE(r.coverage, j.coverage) IS NOT NULL AND {LATEST_ATTEMPT}"
        );
        let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(DISTINCT p.id) {covered}"))
            .bind(project_id)
            .bind(git_ref)
            .fetch_one(&mut *conn)
            .await
            .map_err(db("counting a ref's pipelines with coverage"))?;
        let sql = format!(
            "SELECT p.id, p.sha, p.created_at, \
             CAST(AVG(COALESCE(r.coverage, j.coverage)) AS DOUBLE PRECISION) AS coverage \
             {covered} GROUP BY p.id, p.sha, p.created_at ORDER BY p.id DESC LIMIT $3 OFFSET $4"
        );
        let q = sqlx::query(&sql)
            .bind(project_id)
            .bind(git_ref)
            .bind(limit)
            .bind(offset);
        let items = Self::rows(conn, q, "reading a coverage trend", |row| {
            Ok(CoveragePoint {
                pipeline_id: Self::get(row, "id")?,
                sha: Self::get(row, "sha")?,
                created_at: Self::get(row, "created_at")?,
                coverage: Self::get(row, "coverage")?,
            })
        })
        .await?;
        Ok(Paged { items, total })
    }

    // --- deployments

    /// A row of [`DEPLOYMENT_COLS`].
    fn deployment_row(row: &Self::Row) -> Result<DeploymentRecord> {
        let job_status = Self::status(row, "jobs.status", JobStatus::parse)?;
        let rolled_back_by: Option<i64> = Self::get(row, "rolled_back_by")?;
        let status = match (rolled_back_by, job_status) {
            (Some(_), _) => DeploymentStatus::RolledBack,
            (None, JobStatus::Success) => DeploymentStatus::Success,
            (None, JobStatus::Failed) => DeploymentStatus::Failed,
            (None, JobStatus::Canceled | JobStatus::Skipped) => DeploymentStatus::Canceled,
            (None, _) => DeploymentStatus::Running,
        };
        let finished_at: Option<Millis> = Self::get(row, "finished_at")?;
        Ok(DeploymentRecord {
            id: Self::get(row, "id")?,
            project_id: Self::get(row, "project_id")?,
            project_name: Self::get(row, "project_name")?,
            environment: Self::get(row, "environment")?,
            url: Self::get(row, "url")?,
            tier: Self::get(row, "tier")?,
            status,
            job_id: Self::get(row, "job_id")?,
            pipeline_id: Self::get(row, "pipeline_id")?,
            job_name: Self::get(row, "job_name")?,
            sha: Self::get(row, "sha")?,
            git_ref: Self::get(row, "git_ref")?,
            triggered_by: Self::get(row, "triggered_by")?,
            variables: Self::get(row, "variables")?,
            artifacts: Self::get(row, "artifacts")?,
            created_at: Self::get(row, "created_at")?,
            finished_at: finished_at.filter(|_| job_status.is_final()),
            rollback_of: Self::get(row, "rollback_of")?,
            rolled_back_by,
            measurements: Self::get(row, "measurements")?,
        })
    }

    /// See [`crate::Store::record_deployment`]: one insert, unless the job has its deployment.
    async fn record_deployment(conn: &mut Self::Connection, d: &NewDeployment) -> Result<i64> {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO deployments (project_id, environment, url, tier, job_id, pipeline_id, \
             job_name, sha, git_ref, triggered_by, variables, artifacts, created_at, rollback_of) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (job_id) DO NOTHING RETURNING id",
        )
        .bind(d.project_id)
        .bind(d.environment.as_str())
        .bind(d.url.as_deref())
        .bind(d.tier.as_deref())
        .bind(d.job_id)
        .bind(d.pipeline_id)
        .bind(d.job_name.as_str())
        .bind(d.sha.as_str())
        .bind(d.git_ref.as_str())
        .bind(d.triggered_by.as_str())
        .bind(d.variables.as_str())
        .bind(d.artifacts.as_str())
        .bind(d.created_at)
        .bind(d.rollback_of)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("recording a deployment"))?;
        match id {
            Some(id) => Ok(id),
            None => Self::id_of(
                conn,
                "SELECT id FROM deployments WHERE job_id = $1",
                d.job_id,
                "reading a job's deployment",
            )
            .await?
            .ok_or_else(|| StoreError::database("a recorded deployment is gone".to_owned())),
        }
    }

    /// See [`crate::Store::deployment`].
    async fn deployment(conn: &mut Self::Connection, id: i64) -> Result<Option<DeploymentRecord>> {
        let sql = deployments_sql("d.id = $1", "");
        let q = sqlx::query(&sql).bind(id);
        Self::row(conn, q, "reading a deployment", Self::deployment_row).await
    }

    /// See [`crate::Store::job_deployment`].
    async fn job_deployment(
        conn: &mut Self::Connection,
        job_id: i64,
    ) -> Result<Option<DeploymentRecord>> {
        let sql = deployments_sql("d.job_id = $1", "");
        let q = sqlx::query(&sql).bind(job_id);
        Self::row(conn, q, "reading a job's deployment", Self::deployment_row).await
    }

    /// See [`crate::Store::deployments`].
    async fn deployments(
        conn: &mut Self::Connection,
        project_id: i64,
        environment: &str,
        page: Page,
    ) -> Result<Paged<DeploymentRecord>> {
        let (limit, offset) = limit_offset(page);
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deployments WHERE project_id = $1 AND environment = $2",
        )
        .bind(project_id)
        .bind(environment)
        .fetch_one(&mut *conn)
        .await
        .map_err(db("counting deployments"))?;
        let sql = deployments_sql(
            "d.project_id = $1 AND d.environment = $2",
            "ORDER BY d.id DESC LIMIT $3 OFFSET $4",
        );
        let q = sqlx::query(&sql)
            .bind(project_id)
            .bind(environment)
            .bind(limit)
            .bind(offset);
        let items = Self::rows(conn, q, "listing deployments", Self::deployment_row).await?;
        Ok(Paged { items, total })
    }

    /// See [`crate::Store::environments`]: one grouped read of the ids, then their deployments.
    async fn environments(
        conn: &mut Self::Connection,
        project_id: i64,
    ) -> Result<Vec<EnvironmentRecord>> {
        let groups: Vec<(String, i64, i64, Option<i64>)> = sqlx::query_as(&format!(
            "SELECT d.environment, COUNT(*), MAX(d.id), \
             MAX(CASE WHEN {CURRENT} THEN d.id END) \
             FROM deployments d JOIN jobs j ON j.id = d.job_id WHERE d.project_id = $1 \
             GROUP BY d.environment ORDER BY d.environment"
        ))
        .bind(project_id)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("listing environments"))?;
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        // Ids are numbers: nothing of a caller's text goes into the statement.
        let ids: Vec<String> = groups
            .iter()
            .flat_map(|(_, _, last, current)| std::iter::once(*last).chain(*current))
            .map(|id| id.to_string())
            .collect();
        let sql = deployments_sql(&format!("d.id IN ({})", ids.join(", ")), "");
        let q = sqlx::query(&sql);
        let mut by_id: std::collections::HashMap<i64, DeploymentRecord> =
            Self::rows(conn, q, "reading environments", Self::deployment_row)
                .await?
                .into_iter()
                .map(|d| (d.id, d))
                .collect();
        groups
            .into_iter()
            .map(|(name, deployments, last, current)| {
                let last = by_id.get(&last).cloned().ok_or_else(|| {
                    StoreError::database("an environment's deployment is gone".to_owned())
                })?;
                Ok(EnvironmentRecord {
                    name,
                    deployments,
                    last,
                    current: current.and_then(|id| by_id.remove(&id)),
                })
            })
            .collect()
    }

    /// See [`crate::Store::last_success_before`].
    async fn last_success_before(
        conn: &mut Self::Connection,
        id: i64,
    ) -> Result<Option<DeploymentRecord>> {
        let condition = format!(
            "d.id < $1 AND {CURRENT} AND (d.project_id, d.environment) = \
             (SELECT project_id, environment FROM deployments WHERE id = $1)"
        );
        let sql = deployments_sql(&condition, "ORDER BY d.id DESC LIMIT 1");
        let q = sqlx::query(&sql).bind(id);
        Self::row(
            conn,
            q,
            "reading the last successful deployment",
            Self::deployment_row,
        )
        .await
    }

    /// See [`crate::Store::mark_rolled_back`].
    async fn mark_rolled_back(conn: &mut Self::Connection, id: i64, by: i64) -> Result<bool> {
        let q = sqlx::query(
            "UPDATE deployments SET rolled_back_by = $1 WHERE id = $2 AND rolled_back_by IS NULL",
        )
        .bind(by)
        .bind(id);
        Ok(Self::run(conn, q, "marking a deployment rolled back").await? > 0)
    }

    // --- agents

    /// See [`crate::Store::register_agent`].
    async fn register_agent(conn: &mut Self::Connection, a: &NewAgent) -> Result<i64> {
        sqlx::query_scalar(
            "INSERT INTO agents (name, token_hash, tags, run_untagged, executor, concurrency, \
             version, registered_at, projects, protected_only, protocol) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
        )
        .bind(a.name.as_str())
        .bind(a.token_hash.as_str())
        .bind(Self::list_param(Some(&a.tags)))
        .bind(a.run_untagged)
        .bind(a.executor.as_str())
        .bind(a.concurrency)
        .bind(a.version.as_str())
        .bind(a.registered_at)
        .bind(Self::ids_param(a.projects.as_deref()))
        .bind(a.protected_only)
        .bind(a.protocol)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| {
            conflict(e, "registering an agent", || {
                format!("an agent with the token of {}", a.name)
            })
        })
    }

    /// See [`crate::Store::agent_by_token`].
    async fn agent_by_token(
        conn: &mut Self::Connection,
        token_hash: &str,
    ) -> Result<Option<AgentRecord>> {
        let sql = format!("SELECT {AGENT_COLS} FROM agents WHERE token_hash = $1");
        let q = sqlx::query(&sql).bind(token_hash);
        Self::row(conn, q, "reading an agent", Self::agent_row).await
    }

    /// See [`crate::Store::touch_agent`].
    async fn touch_agent(
        conn: &mut Self::Connection,
        id: i64,
        now: Millis,
        protocol: Option<i64>,
    ) -> Result<()> {
        let q = sqlx::query(
            "UPDATE agents SET last_seen_at = $1, protocol = COALESCE($2, protocol) WHERE id = $3",
        )
        .bind(now)
        .bind(protocol)
        .bind(id);
        Self::run(conn, q, "touching an agent").await?;
        Ok(())
    }

    /// See [`crate::Store::agents`].
    async fn agents(conn: &mut Self::Connection) -> Result<Vec<AgentRecord>> {
        let sql = format!("SELECT {AGENT_COLS} FROM agents ORDER BY id");
        Self::rows(conn, sqlx::query(&sql), "listing agents", Self::agent_row).await
    }

    /// See [`crate::Store::agent_jobs`]: the running rows only (`jobs_running`'s partial index).
    async fn agent_jobs(conn: &mut Self::Connection) -> Result<Vec<AgentJobRecord>> {
        let q = sqlx::query(
            "SELECT j.agent_id, j.id, j.name, j.pipeline_id, pr.name AS project_name, \
             COALESCE(j.started_at, j.created_at) AS started_at \
             FROM jobs j JOIN projects pr ON pr.id = j.project_id \
             WHERE j.status = 'running' AND j.agent_id IS NOT NULL \
             ORDER BY j.agent_id, j.started_at, j.id",
        );
        Self::rows(conn, q, "listing agents' jobs", Self::agent_job_row).await
    }

    /// See [`crate::Store::revoke_agent`]: in one transaction, the agent's row goes and its
    /// running jobs' leases end now.
    async fn revoke_agent(conn: &mut Self::Connection, id: i64) -> Result<bool> {
        let mut tx = conn
            .begin_with(Self::BEGIN)
            .await
            .map_err(db("beginning a transaction"))?;
        let q = sqlx::query("DELETE FROM agents WHERE id = $1").bind(id);
        let gone = Self::run(&mut *tx, q, "revoking an agent").await? > 0;
        let q = sqlx::query(
            "UPDATE jobs SET lease_until = 0 WHERE agent_id = $1 AND status = 'running'",
        )
        .bind(id);
        Self::run(&mut *tx, q, "ending a revoked agent's leases").await?;
        tx.commit().await.map_err(db("committing a revocation"))?;
        Ok(gone)
    }

    /// See [`crate::Store::setting`].
    async fn setting(conn: &mut Self::Connection, name: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db("reading a setting"))
    }

    /// See [`crate::Store::set_setting`].
    async fn set_setting(conn: &mut Self::Connection, name: &str, value: &str) -> Result<()> {
        let q = sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value);
        Self::run(conn, q, "writing a setting").await?;
        Ok(())
    }

    // --- project tokens

    /// See [`crate::Store::create_project_token`].
    async fn create_project_token(
        conn: &mut Self::Connection,
        t: &NewProjectToken,
    ) -> Result<ProjectTokenRecord> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO project_tokens (project_id, name, token_hash, created_at, expires_at, \
             read_only) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(t.project_id)
        .bind(t.name.as_str())
        .bind(t.token_hash.as_str())
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.read_only)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| {
            conflict(e, "creating a project token", || {
                format!("a project token with the secret of {}", t.name)
            })
        })?;
        let sql = format!(
            "SELECT {PROJECT_TOKEN_COLS} FROM project_tokens t \
             JOIN projects pr ON pr.id = t.project_id WHERE t.id = $1"
        );
        let q = sqlx::query(&sql).bind(id);
        Self::row(conn, q, "reading a project token", Self::project_token_row)
            .await?
            .ok_or_else(|| StoreError::Database("a new project token is gone".to_owned().into()))
    }

    /// See [`crate::Store::project_tokens`].
    async fn project_tokens(
        conn: &mut Self::Connection,
        project_id: i64,
    ) -> Result<Vec<ProjectTokenRecord>> {
        let sql = format!(
            "SELECT {PROJECT_TOKEN_COLS} FROM project_tokens t \
             JOIN projects pr ON pr.id = t.project_id WHERE t.project_id = $1 ORDER BY t.id"
        );
        let q = sqlx::query(&sql).bind(project_id);
        Self::rows(conn, q, "listing project tokens", Self::project_token_row).await
    }

    /// See [`crate::Store::project_token_by_hash`].
    async fn project_token_by_hash(
        conn: &mut Self::Connection,
        token_hash: &str,
    ) -> Result<Option<ProjectTokenRecord>> {
        let sql = format!(
            "SELECT {PROJECT_TOKEN_COLS} FROM project_tokens t \
             JOIN projects pr ON pr.id = t.project_id WHERE t.token_hash = $1"
        );
        let q = sqlx::query(&sql).bind(token_hash);
        Self::row(conn, q, "reading a project token", Self::project_token_row).await
    }

    /// See [`crate::Store::delete_project_token`].
    async fn delete_project_token(
        conn: &mut Self::Connection,
        project_id: i64,
        id: i64,
    ) -> Result<bool> {
        let q = sqlx::query("DELETE FROM project_tokens WHERE id = $1 AND project_id = $2")
            .bind(id)
            .bind(project_id);
        Ok(Self::run(conn, q, "deleting a project token").await? > 0)
    }
}

/// The `INSERT` of `rows` jobs ([`Sql::insert_jobs`] binds 17 values a job), with `$N`
/// placeholders if `numbered`, else `?` (see [`Sql::NUMBERED_BATCH`]).
fn insert_jobs_sql(rows: usize, numbered: bool) -> String {
    const COLUMNS: usize = 17;
    let mut sql = String::from(
        "INSERT INTO jobs (pipeline_id, project_id, name, stage, stage_index, position, attempt, \
         status, job_when, allow_failure, needs, tags, resource_group, interruptible, spec, \
         created_at, queued_at) VALUES ",
    );
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..COLUMNS {
            if column > 0 {
                sql.push_str(", ");
            }
            if numbered {
                sql.push('$');
                sql.push_str(&(row * COLUMNS + column + 1).to_string());
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql
}

/// A failed insert: a unique key used twice is a [`StoreError::Conflict`] (`what`), anything else
/// a database error while `context`.
fn conflict(e: sqlx::Error, context: &'static str, what: impl FnOnce() -> String) -> StoreError {
    if e.as_database_error()
        .is_some_and(sqlx::error::DatabaseError::is_unique_violation)
    {
        StoreError::Conflict(what())
    } else {
        db(context)(e)
    }
}

/// The arguments of [`crate::Store::append_log`], as the macro [`store!`] hands them to a
/// backend's own `append_log`.
pub(crate) struct LogAppend<'a> {
    pub(crate) job_id: i64,
    pub(crate) agent_id: i64,
    /// Where `bytes` start in the log.
    pub(crate) offset: i64,
    pub(crate) bytes: &'a [u8],
    pub(crate) lease_until: Millis,
}

/// The [`crate::Store`] impl of a backend, written once, for `$store` on database `$db` (whose
/// connections are `$conn`), and its connections' [`crate::group::DeliveryWriter`]. Each
/// call runs [`Sql`]'s statements on a connection that the backend's own macros hand out, in the
/// module where this expands: `read!(self, conn => body)` (for reading), `writing!(self, conn =>
/// body)` (a write: it returns once durable) and `sweeping!(self, conn => body, changed)` (a write
/// that mostly changes nothing: durable when `changed(&answer)`). What a backend does its own way
/// are its inherent methods of the same names: `insert_delivery`, `apply`, `claim`, `append_log`
/// and `expire_leases`, and its function `insert_deliveries` (a group commit's one statement).
macro_rules! store {
    ($store:ident, $db:ident, $conn:ty, $kind:literal) => {
        #[async_trait::async_trait]
        impl crate::group::DeliveryWriter for $conn {
            async fn insert(
                &mut self,
                batch: &[&crate::records::NewDelivery],
            ) -> crate::error::Result<Vec<(i64, i64, String, String)>> {
                insert_deliveries(self, batch).await
            }

            async fn stored_id(&mut self, delivery: &crate::records::NewDelivery) -> crate::error::Result<(i64, bool)> {
                $db::stored_delivery(self, delivery).await
            }

            async fn expire(&mut self, delivery: &crate::records::NewDelivery) -> crate::error::Result<()> {
                $db::expire_push_key(self, delivery).await
            }
        }

        #[async_trait::async_trait]
        impl crate::store::Store for $store {
            fn kind(&self) -> &'static str {
                $kind
            }

            async fn ping(&self) -> crate::error::Result<()> {
                read!(self, conn => $db::ping(conn).await)
            }

            async fn create_project(
                &self,
                name: &str,
                spec: &str,
                now: crate::records::Millis,
            ) -> crate::error::Result<crate::records::ProjectRecord> {
                writing!(self, conn => $db::create_project(conn, name, spec, now).await)
            }

            async fn update_project(&self, name: &str, spec: &str) -> crate::error::Result<bool> {
                writing!(self, conn => $db::update_project(conn, name, spec).await)
            }

            async fn project(&self, name: &str) -> crate::error::Result<Option<crate::records::ProjectRecord>> {
                read!(self, conn => $db::project(conn, name).await)
            }

            async fn project_by_id(&self, id: i64) -> crate::error::Result<Option<crate::records::ProjectRecord>> {
                read!(self, conn => $db::project_by_id(conn, id).await)
            }

            async fn projects(&self) -> crate::error::Result<Vec<crate::records::ProjectRecord>> {
                read!(self, conn => $db::projects(conn).await)
            }

            async fn insert_delivery(&self, d: &crate::records::NewDelivery) -> crate::error::Result<(i64, bool)> {
                $store::insert_delivery(self, d).await
            }

            async fn pending_deliveries(
                &self,
                limit: i64,
                now: crate::records::Millis,
                skip: &[i64],
            ) -> crate::error::Result<Vec<crate::records::DeliveryRecord>> {
                read!(self, conn => $db::pending_deliveries(conn, limit, now, skip).await)
            }

            async fn close_delivery(
                &self,
                id: i64,
                status: gantry_api::DeliveryStatus,
                reason: &str,
            ) -> crate::error::Result<()> {
                writing!(self, conn => $db::close_delivery(conn, id, status, reason).await)
            }

            async fn fail_delivery_attempt(
                &self,
                id: i64,
                error: &str,
                retry_at: Option<crate::records::Millis>,
            ) -> crate::error::Result<i64> {
                writing!(self, conn => $db::fail_delivery_attempt(conn, id, error, retry_at).await)
            }

            async fn next_delivery_retry(&self) -> crate::error::Result<Option<crate::records::Millis>> {
                read!(self, conn => $db::next_delivery_retry(conn).await)
            }

            async fn deliveries(
                &self,
                project_id: i64,
                page: crate::records::Page,
            ) -> crate::error::Result<crate::records::Paged<crate::records::DeliveryRecord>> {
                read!(self, conn => $db::deliveries(conn, project_id, page).await)
            }

            async fn insert_notification(
                &self,
                n: &crate::records::NewNotification,
            ) -> crate::error::Result<i64> {
                writing!(self, conn => $db::insert_notification(conn, n).await)
            }

            async fn claim_notifications(
                &self,
                now: crate::records::Millis,
                until: crate::records::Millis,
                limit: i64,
            ) -> crate::error::Result<Vec<crate::records::NotificationRecord>> {
                writing!(self, conn => $db::claim_notifications(conn, now, until, limit).await)
            }

            async fn notification_attempt(
                &self,
                id: i64,
                error: Option<&str>,
                retry_at: Option<crate::records::Millis>,
            ) -> crate::error::Result<bool> {
                writing!(self, conn => $db::notification_attempt(conn, id, error, retry_at).await)
            }

            async fn next_notification_at(&self) -> crate::error::Result<Option<crate::records::Millis>> {
                read!(self, conn => $db::next_notification_at(conn).await)
            }

            async fn notifications(
                &self,
                pipeline_id: i64,
            ) -> crate::error::Result<Vec<crate::records::NotificationRecord>> {
                read!(self, conn => $db::notifications(conn, pipeline_id).await)
            }

            async fn previous_finished_status(
                &self,
                project_id: i64,
                git_ref: &str,
                below: i64,
            ) -> crate::error::Result<Option<gantry_api::PipelineStatus>> {
                read!(self, conn => {
                    $db::previous_finished_status(conn, project_id, git_ref, below).await
                })
            }

            async fn create_pipeline(&self, p: &crate::records::NewPipeline) -> crate::error::Result<i64> {
                writing!(self, conn => $db::create_pipeline(conn, p).await)
            }

            async fn pipeline(&self, id: i64) -> crate::error::Result<Option<crate::records::PipelineRecord>> {
                read!(self, conn => $db::pipeline(conn, id).await)
            }

            async fn pipeline_head(&self, id: i64) -> crate::error::Result<Option<crate::records::PipelineRecord>> {
                read!(self, conn => $db::pipeline_head(conn, id).await)
            }

            async fn jobs_named(
                &self,
                pipeline_id: i64,
                names: &[String],
            ) -> crate::error::Result<Vec<crate::records::JobRecord>> {
                read!(self, conn => $db::jobs_named(conn, pipeline_id, names).await)
            }

            async fn success_changes_nothing(
                &self,
                pipeline_id: i64,
                stage_index: i64,
                job_id: i64,
                name: &str,
            ) -> crate::error::Result<bool> {
                read!(self, conn => {
                    $db::success_changes_nothing(conn, pipeline_id, stage_index, job_id, name).await
                })
            }

            async fn jobs_before_stage(
                &self,
                pipeline_id: i64,
                stage_index: i64,
            ) -> crate::error::Result<Vec<crate::records::JobRecord>> {
                read!(self, conn => $db::jobs_before_stage(conn, pipeline_id, stage_index).await)
            }

            async fn pipelines(
                &self,
                project_id: i64,
                filter: &crate::records::PipelineFilter,
                page: crate::records::Page,
            ) -> crate::error::Result<crate::records::Paged<crate::records::PipelineRecord>> {
                read!(self, conn => $db::pipelines(conn, project_id, filter, page).await)
            }

            async fn active_pipelines(&self) -> crate::error::Result<Vec<i64>> {
                read!(self, conn => $db::active_pipelines(conn).await)
            }

            async fn unfinished_push_pipelines(
                &self,
                project_id: i64,
                git_ref: &str,
                below: i64,
            ) -> crate::error::Result<Vec<i64>> {
                read!(self, conn => {
                    $db::unfinished_push_pipelines(conn, project_id, git_ref, below).await
                })
            }

            async fn apply(
                &self,
                pipeline_id: i64,
                version: i64,
                changes: &crate::records::Changes,
            ) -> crate::error::Result<bool> {
                $store::apply(self, pipeline_id, version, changes).await
            }

            async fn claim(
                &self,
                agent: &crate::records::AgentRecord,
                now: crate::records::Millis,
                lease_until: crate::records::Millis,
            ) -> crate::error::Result<Option<crate::records::JobRecord>> {
                $store::claim(self, agent, now, lease_until).await
            }

            async fn heartbeat(
                &self,
                job_id: i64,
                agent_id: i64,
                lease_until: crate::records::Millis,
            ) -> crate::error::Result<bool> {
                writing!(self, conn => $db::heartbeat(conn, job_id, agent_id, lease_until).await)
            }

            async fn append_log(
                &self,
                job_id: i64,
                agent_id: i64,
                offset: i64,
                bytes: &[u8],
                lease_until: crate::records::Millis,
            ) -> crate::error::Result<i64> {
                let chunk = crate::query::LogAppend {
                    job_id,
                    agent_id,
                    offset,
                    bytes,
                    lease_until,
                };
                $store::append_log(self, chunk).await
            }

            async fn read_log(&self, job_id: i64, start: i64, end: i64) -> crate::error::Result<Vec<u8>> {
                read!(self, conn => $db::read_log(conn, job_id, start, end).await)
            }

            async fn begin_artifacts(
                &self,
                job_id: i64,
                agent_id: i64,
                lease_until: crate::records::Millis,
            ) -> crate::error::Result<i64> {
                writing!(self, conn => $db::begin_artifacts(conn, job_id, agent_id, lease_until).await)
            }

            async fn put_artifact_chunk(
                &self,
                job_id: i64,
                upload_id: i64,
                seq: i64,
                data: &[u8],
            ) -> crate::error::Result<()> {
                writing!(self, conn => $db::put_artifact_chunk(conn, job_id, upload_id, seq, data).await)
            }

            async fn commit_artifacts(
                &self,
                job_id: i64,
                agent_id: i64,
                upload_id: i64,
                chunks: i64,
                size: i64,
                lease_until: crate::records::Millis,
            ) -> crate::error::Result<()> {
                let upload = crate::records::ArtifactsInfo {
                    upload_id,
                    size,
                    chunks,
                };
                writing!(self, conn => {
                    $db::commit_artifacts(conn, job_id, agent_id, upload, lease_until).await
                })
            }

            async fn abort_artifacts(&self, job_id: i64, upload_id: i64) -> crate::error::Result<()> {
                writing!(self, conn => $db::abort_artifacts(conn, job_id, upload_id).await)
            }

            async fn drop_stale_artifact_uploads(&self) -> crate::error::Result<u64> {
                sweeping!(self, conn => $db::drop_stale_artifact_uploads(conn).await, |n| *n > 0)
            }

            async fn artifacts_info(
                &self,
                job_id: i64,
            ) -> crate::error::Result<Option<crate::records::ArtifactsInfo>> {
                read!(self, conn => $db::artifacts_info(conn, job_id).await)
            }

            async fn artifact_chunk(
                &self,
                job_id: i64,
                upload_id: i64,
                seq: i64,
            ) -> crate::error::Result<Option<Vec<u8>>> {
                read!(self, conn => $db::artifact_chunk(conn, job_id, upload_id, seq).await)
            }

            async fn finish(
                &self,
                job_id: i64,
                agent_id: i64,
                result: &crate::records::JobResult,
            ) -> crate::error::Result<i64> {
                writing!(self, conn => $db::finish(conn, job_id, agent_id, result).await)
            }

            async fn expire_leases(&self, now: crate::records::Millis) -> crate::error::Result<Vec<(i64, i64)>> {
                $store::expire_leases(self, now).await
            }

            async fn extend_leases(&self, until: crate::records::Millis) -> crate::error::Result<()> {
                writing!(self, conn => $db::extend_leases(conn, until).await)
            }

            async fn queue_depth(&self) -> crate::error::Result<i64> {
                read!(self, conn => $db::queue_depth(conn).await)
            }

            async fn job(&self, id: i64) -> crate::error::Result<Option<crate::records::JobRecord>> {
                read!(self, conn => $db::job(conn, id).await)
            }

            async fn pipeline_project(&self, id: i64) -> crate::error::Result<Option<i64>> {
                read!(self, conn => $db::pipeline_project(conn, id).await)
            }

            async fn job_project(&self, id: i64) -> crate::error::Result<Option<i64>> {
                read!(self, conn => $db::job_project(conn, id).await)
            }

            async fn save_reports(
                &self,
                job_id: i64,
                reports: &crate::records::NewReports,
            ) -> crate::error::Result<bool> {
                writing!(self, conn => $db::save_reports(conn, job_id, reports).await)
            }

            async fn job_reports(
                &self,
                job_id: i64,
            ) -> crate::error::Result<Option<crate::records::ReportsRecord>> {
                read!(self, conn => $db::job_reports(conn, job_id).await)
            }

            async fn pipeline_reports(
                &self,
                pipeline_id: i64,
            ) -> crate::error::Result<Vec<crate::records::ReportsRecord>> {
                read!(self, conn => $db::pipeline_reports(conn, pipeline_id, false).await)
            }

            async fn jobs_reports(
                &self,
                job_ids: &[i64],
            ) -> crate::error::Result<Vec<crate::records::ReportsRecord>> {
                read!(self, conn => $db::jobs_reports(conn, job_ids).await)
            }

            async fn pipeline_gates(
                &self,
                pipeline_id: i64,
            ) -> crate::error::Result<Vec<crate::records::ReportsRecord>> {
                read!(self, conn => $db::pipeline_reports(conn, pipeline_id, true).await)
            }

            async fn coverage_trend(
                &self,
                project_id: i64,
                git_ref: &str,
                page: crate::records::Page,
            ) -> crate::error::Result<crate::records::Paged<crate::records::CoveragePoint>> {
                read!(self, conn => $db::coverage_trend(conn, project_id, git_ref, page).await)
            }

            async fn record_deployment(
                &self,
                d: &crate::records::NewDeployment,
            ) -> crate::error::Result<i64> {
                writing!(self, conn => $db::record_deployment(conn, d).await)
            }

            async fn deployment(
                &self,
                id: i64,
            ) -> crate::error::Result<Option<crate::records::DeploymentRecord>> {
                read!(self, conn => $db::deployment(conn, id).await)
            }

            async fn job_deployment(
                &self,
                job_id: i64,
            ) -> crate::error::Result<Option<crate::records::DeploymentRecord>> {
                read!(self, conn => $db::job_deployment(conn, job_id).await)
            }

            async fn deployments(
                &self,
                project_id: i64,
                environment: &str,
                page: crate::records::Page,
            ) -> crate::error::Result<crate::records::Paged<crate::records::DeploymentRecord>> {
                read!(self, conn => $db::deployments(conn, project_id, environment, page).await)
            }

            async fn environments(
                &self,
                project_id: i64,
            ) -> crate::error::Result<Vec<crate::records::EnvironmentRecord>> {
                read!(self, conn => $db::environments(conn, project_id).await)
            }

            async fn last_success_before(
                &self,
                id: i64,
            ) -> crate::error::Result<Option<crate::records::DeploymentRecord>> {
                read!(self, conn => $db::last_success_before(conn, id).await)
            }

            async fn mark_rolled_back(&self, id: i64, by: i64) -> crate::error::Result<bool> {
                writing!(self, conn => $db::mark_rolled_back(conn, id, by).await)
            }

            async fn register_agent(&self, a: &crate::records::NewAgent) -> crate::error::Result<i64> {
                writing!(self, conn => $db::register_agent(conn, a).await)
            }

            async fn agent_by_token(
                &self,
                token_hash: &str,
            ) -> crate::error::Result<Option<crate::records::AgentRecord>> {
                read!(self, conn => $db::agent_by_token(conn, token_hash).await)
            }

            async fn touch_agent(
                &self,
                id: i64,
                now: crate::records::Millis,
                protocol: Option<i64>,
            ) -> crate::error::Result<()> {
                writing!(self, conn => $db::touch_agent(conn, id, now, protocol).await)
            }

            async fn agents(&self) -> crate::error::Result<Vec<crate::records::AgentRecord>> {
                read!(self, conn => $db::agents(conn).await)
            }

            async fn agent_jobs(&self) -> crate::error::Result<Vec<crate::records::AgentJobRecord>> {
                read!(self, conn => $db::agent_jobs(conn).await)
            }

            async fn revoke_agent(&self, id: i64) -> crate::error::Result<bool> {
                writing!(self, conn => $db::revoke_agent(conn, id).await)
            }

            async fn setting(&self, name: &str) -> crate::error::Result<Option<String>> {
                read!(self, conn => $db::setting(conn, name).await)
            }

            async fn set_setting(&self, name: &str, value: &str) -> crate::error::Result<()> {
                writing!(self, conn => $db::set_setting(conn, name, value).await)
            }

            async fn create_project_token(
                &self,
                t: &crate::records::NewProjectToken,
            ) -> crate::error::Result<crate::records::ProjectTokenRecord> {
                writing!(self, conn => $db::create_project_token(conn, t).await)
            }

            async fn project_tokens(
                &self,
                project_id: i64,
            ) -> crate::error::Result<Vec<crate::records::ProjectTokenRecord>> {
                read!(self, conn => $db::project_tokens(conn, project_id).await)
            }

            async fn project_token_by_hash(
                &self,
                token_hash: &str,
            ) -> crate::error::Result<Option<crate::records::ProjectTokenRecord>> {
                read!(self, conn => $db::project_token_by_hash(conn, token_hash).await)
            }

            async fn delete_project_token(&self, project_id: i64, id: i64) -> crate::error::Result<bool> {
                writing!(self, conn => $db::delete_project_token(conn, project_id, id).await)
            }
        }
    };
}

pub(crate) use store;

/// The statement reading the deployments that `condition` keeps, then `order` (and limits).
fn deployments_sql(condition: &str, order: &str) -> String {
    format!("SELECT {DEPLOYMENT_COLS} {DEPLOYMENT_FROM} WHERE {condition} {order}")
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

#[cfg(test)]
mod tests {
    use super::insert_jobs_sql;

    #[test]
    fn a_job_batch_numbers_its_placeholders_only_where_asked() {
        let numbered = insert_jobs_sql(2, true);
        assert!(
            numbered.contains("($1, $2,") && numbered.ends_with("$33, $34)"),
            "{numbered}"
        );
        let plain = insert_jobs_sql(2, false);
        assert!(!plain.contains('$'), "{plain}");
        assert_eq!(plain.matches('?').count(), 34, "{plain}");
    }
}
