//! [`SqliteStore`]: the embedded default, one file in the data dir.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite};
use tokio::sync::{Mutex, MutexGuard, Notify};

use crate::group::{
    DeliveryQueue, DeliveryWriter, expire_push_key, insert_batch, select_id, select_push_id,
};
use crate::rows::{
    AGENT_COLS, DELIVERY_COLS, INSERT_BATCH, JOB_COLS, NOT_STARTED, OVER, PIPELINE_COLS,
    PROJECT_COLS, PROJECT_TOKEN_COLS, assemble, limit_offset, queued_at,
};
use crate::{
    AgentRecord, ArtifactsInfo, Changes, DeliveryRecord, JobRecord, JobResult, Millis, NewAgent,
    NewDelivery, NewJob, NewPipeline, NewProjectToken, Page, Paged, PipelineFilter, PipelineRecord,
    ProjectRecord, ProjectTokenRecord, Result, Store, StoreError, db, skip_projects,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A pipeline's version (see [`PIPELINE_COLS`]).
const VERSION: &str = "p.version + COALESCE((SELECT SUM(j.bumps) FROM jobs j WHERE j.pipeline_id = p.id), 0) AS version";
/// See [`Store::success_changes_nothing`]. The partial indexes are named: without statistics,
/// SQLite's planner takes `jobs_by_stage` as soon as it exists (same columns, no `WHERE`), and
/// finding a pending job of the stage then walks every job of the stage that has already ended
/// (0.8 ms per finished job in a stage of 1,000).
const SUCCESS_CHANGES_NOTHING: &str = "SELECT \
    EXISTS (SELECT 1 FROM pipelines WHERE id = ?1 AND status = 'running' AND started_at IS NOT NULL) \
    AND EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_active_by_stage \
                WHERE pipeline_id = ?1 AND stage_index = ?2 AND id <> ?3 \
                AND status IN ('pending', 'running')) \
    AND NOT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_with_needs, json_each(jobs.needs) \
                    WHERE jobs.pipeline_id = ?1 AND jobs.needs IS NOT NULL AND json_each.value = ?4)";

/// In place of [`VERSION`] where the record is only read (heads and lists): the sum walks every
/// job of the pipeline, and nothing that only reads uses it.
const NO_VERSION: &str = "0 AS version";

/// The oldest pending job that an agent with tags `?3` (a JSON array), taking untagged jobs if
/// `?2`, may run at `?1`, whose resource group has no running job.
const CANDIDATE: &str = "SELECT j.id FROM jobs j \
     WHERE j.status = 'pending' \
     AND (j.run_after IS NULL OR j.run_after <= ?1) \
     AND (j.tags <> '[]' OR ?2) \
     AND NOT EXISTS (SELECT 1 FROM json_each(j.tags) t \
        WHERE t.value NOT IN (SELECT value FROM json_each(?3))) \
     AND (j.resource_group IS NULL OR NOT EXISTS (\
        SELECT 1 FROM jobs r WHERE r.project_id = j.project_id \
        AND r.resource_group = j.resource_group AND r.status = 'running'))";

/// [`CANDIDATE`] for `agent`: with its scope's conditions, the oldest first.
fn candidate(agent: &AgentRecord) -> String {
    format!(
        "{CANDIDATE}{} ORDER BY j.queued_at, j.id LIMIT 1",
        agent.scope_sql("1")
    )
}

/// How many connections serve reads beside the writer.
const READERS: u32 = 4;

/// The store on SQLite.
///
/// **One writer.** SQLite lets one transaction write at a time. Every write goes through a single
/// connection behind a fair (FIFO) async mutex, and every transaction on it starts with
/// `BEGIN IMMEDIATE`, which takes the database's write lock before reading. So a claim's "find the
/// oldest pending job" and "mark it running" cannot interleave with another claim, in this process
/// or another one on the same file (which waits on `busy_timeout`). A pool of writers with deferred
/// transactions would instead fail with `SQLITE_BUSY` when two read-then-write transactions meet,
/// and waiting writers would sleep in SQLite's busy handler rather than queue.
///
/// Reads use a small pool of other connections: in WAL mode they see the last commit and never
/// block the writer. An in-memory database (`sqlite::memory:`) has only the writer.
///
/// **Durability.** A write returns once what it committed is synced to disk (see [`WalSync`]),
/// so what the server acknowledged (a delivery's `202`, a job handed out, a log chunk, a finish)
/// survives the machine dying, as on PostgreSQL with its default `synchronous_commit = on`. The
/// connections run WAL with `synchronous = NORMAL` and the syncs are shared between the writes
/// that commit while one runs (group commit). Before, with `NORMAL` alone, the WAL was synced only
/// at checkpoints: a `kill -9` lost nothing, but a power loss or an operating system crash could
/// lose acknowledged deliveries and hand a job out twice.
///
/// **Group commit of deliveries** (see [`crate::group`]): the delivery writer is the writer.
///
/// **Checkpoints** (see [`checkpoint`]): a background task keeps the WAL short, so that the writer
/// never stops for a large sync.
pub struct SqliteStore {
    writer: std::sync::Arc<Writer>,
    readers: Option<SqlitePool>,
    deliveries: DeliveryQueue,
}

#[async_trait]
impl DeliveryWriter for SqliteConnection {
    async fn insert(&mut self, batch: &[&NewDelivery]) -> Result<Vec<(i64, i64, String, String)>> {
        insert_batch::<Sqlite>(batch)
            .build_query_as()
            .fetch_all(self)
            .await
            .map_err(db("storing deliveries"))
    }

    async fn stored_id(&mut self, delivery: &NewDelivery) -> Result<(i64, bool)> {
        let by_id: Option<i64> = select_id::<Sqlite>(delivery)
            .build_query_scalar()
            .fetch_optional(&mut *self)
            .await
            .map_err(db("reading a duplicate delivery"))?;
        if let Some(id) = by_id {
            return Ok((id, false));
        }
        let (id, at): (i64, i64) = select_push_id::<Sqlite>(delivery)
            .build_query_as()
            .fetch_one(self)
            .await
            .map_err(db("reading a duplicate delivery"))?;
        Ok((id, at < delivery.push_key_since))
    }

    async fn expire(&mut self, delivery: &NewDelivery) -> Result<()> {
        expire_push_key::<Sqlite>(delivery)
            .build()
            .execute(self)
            .await
            .map_err(db("expiring a push key"))?;
        Ok(())
    }
}

/// Extends the lease of job `job_id` held by agent `agent_id` inside an artifacts transaction, and
/// with `mark`, records that the job has artifacts. `false`: the agent does not hold the job.
async fn lease_for_artifacts(
    conn: &mut SqliteConnection,
    job_id: i64,
    agent_id: i64,
    lease_until: Millis,
    mark: bool,
) -> Result<bool> {
    let leased = sqlx::query(
        "UPDATE jobs SET has_artifacts = (has_artifacts OR ?4), lease_until = MAX(COALESCE(lease_until, 0), ?1) WHERE id = ?2 AND status = 'running' AND agent_id = ?3",
    )
    .bind(lease_until)
    .bind(job_id)
    .bind(agent_id)
    .bind(mark)
    .execute(&mut *conn)
    .await
    .map_err(db("extending a lease"))?;
    Ok(leased.rows_affected() > 0)
}

/// A typed column read.
fn get<'r, T>(row: &'r SqliteRow, column: &str) -> Result<T>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(column)
        .map_err(|e| StoreError::Database(format!("reading column {column}: {e}")))
}

/// A list column (a JSON array).
fn list(row: &SqliteRow, column: &str) -> Result<Vec<String>> {
    let text: String = get(row, column)?;
    serde_json::from_str(&text)
        .map_err(|e| StoreError::Database(format!("reading column {column}: {e}")))
}

/// A nullable list column.
fn opt_list(row: &SqliteRow, column: &str) -> Result<Option<Vec<String>>> {
    let text: Option<String> = get(row, column)?;
    text.map(|text| {
        serde_json::from_str(&text)
            .map_err(|e| StoreError::Database(format!("reading column {column}: {e}")))
    })
    .transpose()
}

/// A nullable list of ids (a JSON array).
fn opt_ids(row: &SqliteRow, column: &str) -> Result<Option<Vec<i64>>> {
    let text: Option<String> = get(row, column)?;
    text.map(|text| {
        serde_json::from_str(&text)
            .map_err(|e| StoreError::Database(format!("reading column {column}: {e}")))
    })
    .transpose()
}

/// A list as the JSON array stored.
fn json(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".to_owned())
}

/// Runs `$body` with `$conn: &mut SqliteConnection` for reading: a pooled reader, or the writer of
/// an in-memory database.
macro_rules! read {
    ($self:ident, $conn:ident => $body:expr) => {{
        match &$self.readers {
            Some(pool) => {
                let mut pooled = pool.acquire().await.map_err(db("acquiring a connection"))?;
                let $conn: &mut SqliteConnection = &mut pooled;
                $body
            }
            None => {
                let mut guard = $self.writer.lock().await;
                let $conn: &mut SqliteConnection = &mut guard;
                $body
            }
        }
    }};
}

/// Creates the database file `0600` when missing, and makes it and its `-wal` and `-shm`
/// files `0600` when they exist with another mode.
#[cfg(unix)]
fn private_files(db_path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let fail = |p: &std::path::Path, e: std::io::Error| {
        StoreError::Database(format!("making {} private: {e}", p.display()))
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(db_path)
        .map_err(|e| fail(db_path, e))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db_path.as_os_str().to_owned();
        p.push(suffix);
        let p = std::path::PathBuf::from(p);
        if let Ok(m) = std::fs::metadata(&p) {
            if m.permissions().mode() & 0o777 != 0o600 {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| fail(&p, e))?;
            }
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating the file and its directory if missing) the database at `url`
    /// (`sqlite://PATH` or `sqlite::memory:`) and runs the migrations.
    ///
    /// # Errors
    /// When the file cannot be created or opened, or a migration fails.
    pub async fn open(url: &str) -> Result<Self> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)
            .map_err(db("parsing the SQLite URL"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("temp_store", "memory")
            // The checkpointer below keeps the WAL short; this is only the safety net, so that
            // the writer itself rarely stops to copy pages and sync the database file.
            .pragma("wal_autocheckpoint", "10000");
        let db_path = options.get_filename().to_path_buf();
        if !in_memory {
            if let Some(dir) = options.get_filename().parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Database(format!("creating {}: {e}", dir.display()))
                    })?;
                }
            }
        }
        // The database holds webhook secrets and forge tokens: only the server's user may read
        // it. SQLite gives the `-wal` and `-shm` files the database file's mode; files that an
        // older version left readable are fixed here.
        #[cfg(unix)]
        if !in_memory {
            private_files(&db_path)?;
        }
        let mut writer = SqliteConnection::connect_with(&options)
            .await
            .map_err(db("opening the SQLite database"))?;
        MIGRATOR
            .run_direct(&mut writer)
            .await
            .map_err(|e| StoreError::Database(format!("migrating the SQLite database: {e}")))?;
        // The WAL beside the database file, opened once for the syncs (SQLite keeps that file
        // while a connection is open, and the writer always is). It exists from the migrations'
        // writes on; if it does not, SQLite is not in WAL mode and nothing could be synced.
        let wal = if in_memory {
            None
        } else {
            let mut path = db_path.into_os_string();
            path.push("-wal");
            let path = std::path::PathBuf::from(path);
            let file = std::fs::File::open(&path).map_err(|e| {
                StoreError::Database(format!(
                    "opening the SQLite WAL {} (is the database in WAL mode?): {e}",
                    path.display()
                ))
            })?;
            Some(std::sync::Arc::new(file))
        };
        let readers = if in_memory {
            None
        } else {
            Some(
                SqlitePoolOptions::new()
                    .max_connections(READERS)
                    // A file does not drop connections: no ping (a round trip to the connection's
                    // thread) before each read.
                    .test_before_acquire(false)
                    .min_connections(0)
                    .idle_timeout(Some(Duration::from_secs(300)))
                    .connect_lazy_with(options),
            )
        };
        let writer = std::sync::Arc::new(Writer {
            conn: Mutex::new(writer),
            wrote: std::sync::Arc::new(Notify::new()),
            sync: WalSync::new(wal),
            #[cfg(test)]
            passes: std::sync::atomic::AtomicU64::new(0),
        });
        if let Some(pool) = &readers {
            tokio::spawn(checkpoint(
                pool.clone(),
                std::sync::Arc::downgrade(&writer),
                writer.wrote.clone(),
            ));
        }
        Ok(Self {
            writer,
            readers,
            deliveries: DeliveryQueue::default(),
        })
    }
}

/// The one connection that writes. Each release of it wakes the checkpointer, which otherwise
/// sleeps: an idle server does not wake to find nothing to copy.
struct Writer {
    conn: Mutex<SqliteConnection>,
    wrote: std::sync::Arc<Notify>,
    sync: WalSync,
    /// Checkpointer passes, for the tests.
    #[cfg(test)]
    passes: std::sync::atomic::AtomicU64,
}

impl Writer {
    /// Runs `write` (which takes the writer), then returns its result once what it committed is
    /// on disk.
    async fn durably<T>(&self, write: impl Future<Output = Result<T>>) -> Result<T> {
        self.durably_if(write, |_| true).await
    }

    /// [`Writer::durably`] for a write that often changes nothing (a claim without a job, a sweep
    /// that finds nothing): waits for a sync only when `changed` says that it did, so that an idle
    /// server does not flush the disk on every poll and sweep.
    async fn durably_if<T>(
        &self,
        write: impl Future<Output = Result<T>>,
        changed: impl FnOnce(&T) -> bool,
    ) -> Result<T> {
        let out = write.await?;
        if changed(&out) {
            self.sync.after_commit().await?;
        }
        Ok(out)
    }

    async fn lock(&self) -> WriterGuard<'_> {
        WriterGuard {
            conn: self.conn.lock().await,
            wrote: &self.wrote,
        }
    }
}

/// Group commit for SQLite: the writer commits with `synchronous = NORMAL` (the WAL is written,
/// not synced), and a write returns only after an `fdatasync` of the WAL file that began after its
/// commit. Writes that commit while one sync runs share the next one, so a burst of commits pays
/// for a few syncs rather than one each, as PostgreSQL's WAL flush is shared. (`synchronous =
/// FULL` syncs inside every commit, on the one writer: it cost about a sixth of the jobs/s without
/// a checkout, which this gives back.)
///
/// Why it is durable: every page of a commit is in the WAL file when the commit returns (WAL
/// mode writes the frames, then the commit frame), and the sync flushes that file whichever file
/// descriptor asks. Frames a checkpoint has since copied into the database file are safe too: with
/// `NORMAL`, SQLite syncs the WAL before a checkpoint and the database file after it, and only then
/// lets a later write start the WAL over.
struct WalSync {
    /// The WAL file, open; `None` for an in-memory database, which has nothing to sync.
    wal: Option<std::sync::Arc<std::fs::File>>,
    /// Tickets handed out, one per write that asked for a sync after its commit.
    tickets: std::sync::atomic::AtomicU64,
    /// Every ticket up to this one is covered by a sync that has finished.
    synced: std::sync::atomic::AtomicU64,
    /// One sync at a time; the writes that wait for it queue here.
    running: Mutex<()>,
    /// Syncs done, for the tests.
    #[cfg(test)]
    syncs: std::sync::atomic::AtomicU64,
}

impl WalSync {
    fn new(wal: Option<std::sync::Arc<std::fs::File>>) -> Self {
        Self {
            wal,
            tickets: std::sync::atomic::AtomicU64::new(0),
            synced: std::sync::atomic::AtomicU64::new(0),
            running: Mutex::new(()),
            #[cfg(test)]
            syncs: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Returns once a sync that began after this call has finished (the caller has committed).
    async fn after_commit(&self) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let Some(wal) = &self.wal else {
            return Ok(());
        };
        // A ticket taken after the commit: a sync covers it only if it read the tickets later.
        let ticket = self.tickets.fetch_add(1, SeqCst) + 1;
        if self.synced.load(SeqCst) >= ticket {
            return Ok(());
        }
        let _running = self.running.lock().await;
        // The sync before ours may have begun after our ticket: then it covered us.
        if self.synced.load(SeqCst) >= ticket {
            return Ok(());
        }
        let covers = self.tickets.load(SeqCst);
        let wal = wal.clone();
        tokio::task::spawn_blocking(move || wal.sync_data())
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| StoreError::Database(format!("syncing the SQLite WAL: {e}")))?;
        self.synced.fetch_max(covers, SeqCst);
        #[cfg(test)]
        self.syncs.fetch_add(1, SeqCst);
        Ok(())
    }
}

/// The writer, held; its release wakes the checkpointer.
struct WriterGuard<'a> {
    conn: MutexGuard<'a, SqliteConnection>,
    wrote: &'a Notify,
}

impl std::ops::Deref for WriterGuard<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        self.wrote.notify_one();
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // The checkpointer wakes, finds the store gone and ends.
        self.writer.wrote.notify_one();
    }
}

/// How often, at most, the checkpointer runs (while there are writes).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

/// WAL frames (pages) from which the checkpointer makes the WAL start over.
const WAL_RESTART_FRAMES: i64 = 100;

/// Keeps the WAL short without the writer ever waiting for a large sync.
///
/// Every [`CHECKPOINT_EVERY`], a passive checkpoint from a reader connection copies the committed
/// pages into the database file and syncs both files; it never blocks the writer. Under a steady
/// stream of commits it never quite catches up, though, and SQLite starts the WAL over only once
/// every frame is copied, so the WAL would grow until the writer's own automatic checkpoint, which
/// syncs tens of megabytes while every write waits (100 ms and more on a virtual disk). So once
/// the WAL holds [`WAL_RESTART_FRAMES`], the checkpointer copies the few frames committed since its
/// passive pass while holding the writer (a short sync), and the next write starts the WAL over.
/// Between writes it sleeps. Ends when the store is dropped.
async fn checkpoint(
    pool: SqlitePool,
    writer: std::sync::Weak<Writer>,
    wrote: std::sync::Arc<Notify>,
) {
    loop {
        wrote.notified().await;
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        let Some(writer) = writer.upgrade() else {
            break;
        };
        #[cfg(test)]
        writer
            .passes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A failed checkpoint is retried next time; the writer's own checkpoints are the backstop.
        let passive: std::result::Result<(i64, i64, i64), _> =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&pool)
                .await;
        if let Ok((_, log, _)) = passive {
            if log >= WAL_RESTART_FRAMES {
                let mut conn = writer.lock().await;
                let _ = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&mut *conn)
                    .await;
            }
        }
    }
    pool.close().await;
}

/// Inserts `jobs` of a pipeline, in batches.
async fn insert_jobs(
    conn: &mut SqliteConnection,
    pipeline_id: i64,
    project_id: i64,
    jobs: &[NewJob],
) -> Result<()> {
    for batch in jobs.chunks(INSERT_BATCH) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO jobs (pipeline_id, project_id, name, stage, stage_index, position, \
             attempt, status, job_when, allow_failure, needs, tags, resource_group, interruptible, \
             spec, created_at, queued_at) ",
        );
        q.push_values(batch, |mut b, job| {
            b.push_bind(pipeline_id)
                .push_bind(project_id)
                .push_bind(&job.name)
                .push_bind(&job.stage)
                .push_bind(job.stage_index)
                .push_bind(job.position)
                .push_bind(job.attempt)
                .push_bind(&job.status)
                .push_bind(&job.when)
                .push_bind(job.allow_failure)
                .push_bind(job.needs.as_deref().map(json))
                .push_bind(json(&job.tags))
                .push_bind(&job.resource_group)
                .push_bind(job.interruptible)
                .push_bind(&job.spec)
                .push_bind(job.created_at)
                .push_bind(queued_at(job));
        });
        q.build()
            .execute(&mut *conn)
            .await
            .map_err(db("inserting jobs"))?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<()> {
        read!(self, conn => {
            sqlx::query("SELECT 1").execute(conn).await.map_err(db("ping"))?;
        });
        Ok(())
    }

    async fn create_project(&self, name: &str, spec: &str, now: Millis) -> Result<ProjectRecord> {
        self.writer
            .durably(async {
                let mut conn = self.writer.lock().await;
                let row = sqlx::query(&format!(
                    "INSERT INTO projects (name, spec, created_at) VALUES (?, ?, ?) \
                 ON CONFLICT (name) DO NOTHING RETURNING {PROJECT_COLS}"
                ))
                .bind(name)
                .bind(spec)
                .bind(now)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db("creating a project"))?;
                match row {
                    Some(row) => Ok(project_record!(&row)),
                    None => Err(StoreError::Conflict(format!("project {name}"))),
                }
            })
            .await
    }

    async fn update_project(&self, name: &str, spec: &str) -> Result<bool> {
        self.writer
            .durably(async {
                let mut conn = self.writer.lock().await;
                let done = sqlx::query("UPDATE projects SET spec = ? WHERE name = ?")
                    .bind(spec)
                    .bind(name)
                    .execute(&mut *conn)
                    .await
                    .map_err(db("updating a project"))?;
                Ok(done.rows_affected() > 0)
            })
            .await
    }

    async fn project(&self, name: &str) -> Result<Option<ProjectRecord>> {
        let row = read!(self, conn => {
            sqlx::query(&format!("SELECT {PROJECT_COLS} FROM projects WHERE name = ?"))
                .bind(name)
                .fetch_optional(conn)
                .await
                .map_err(db("reading a project"))?
        });
        Ok(match row {
            Some(row) => Some(project_record!(&row)),
            None => None,
        })
    }

    async fn project_by_id(&self, id: i64) -> Result<Option<ProjectRecord>> {
        let row = read!(self, conn => {
            sqlx::query(&format!("SELECT {PROJECT_COLS} FROM projects WHERE id = ?"))
                .bind(id)
                .fetch_optional(conn)
                .await
                .map_err(db("reading a project"))?
        });
        Ok(match row {
            Some(row) => Some(project_record!(&row)),
            None => None,
        })
    }

    async fn projects(&self) -> Result<Vec<ProjectRecord>> {
        let rows = read!(self, conn => {
            sqlx::query(&format!("SELECT {PROJECT_COLS} FROM projects ORDER BY name"))
                .fetch_all(conn)
                .await
                .map_err(db("listing projects"))?
        });
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(project_record!(row));
        }
        Ok(out)
    }

    async fn insert_delivery(&self, d: &NewDelivery) -> Result<(i64, bool)> {
        self.writer
            .durably(async {
                self.deliveries
                    .store(d, || async { Ok(self.writer.lock().await) })
                    .await
            })
            .await
    }

    async fn pending_deliveries(
        &self,
        limit: i64,
        now: Millis,
        skip: &[i64],
    ) -> Result<Vec<DeliveryRecord>> {
        let skip = skip_projects(skip);
        let rows = read!(self, conn => {
            sqlx::query(&format!(
                "SELECT {DELIVERY_COLS}, payload FROM deliveries WHERE status = 'pending' \
                 AND (retry_at IS NULL OR retry_at <= ?){skip} ORDER BY id LIMIT ?"
            ))
            .bind(now)
            .bind(limit)
            .fetch_all(conn)
            .await
            .map_err(db("listing pending deliveries"))?
        });
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(delivery_record!(row, get(row, "payload")?));
        }
        Ok(out)
    }

    async fn close_delivery(&self, id: i64, status: &str, reason: &str) -> Result<()> {
        self.writer
            .durably(async {
                let mut conn = self.writer.lock().await;
                sqlx::query(
                "UPDATE deliveries SET status = ?, reason = ? WHERE id = ? AND status = 'pending'",
            )
            .bind(status)
            .bind(reason)
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(db("closing a delivery"))?;
                Ok(())
            })
            .await
    }

    async fn fail_delivery_attempt(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<Millis>,
    ) -> Result<i64> {
        self.writer
            .durably(async {
                let mut conn = self.writer.lock().await;
                let attempts: Option<i64> = sqlx::query_scalar(
                "UPDATE deliveries SET attempts = attempts + 1, last_error = ?1, retry_at = ?2, \
                 status = CASE WHEN ?2 IS NULL THEN 'failed' ELSE 'pending' END, \
                 reason = CASE WHEN ?2 IS NULL THEN ?1 ELSE reason END \
                 WHERE id = ?3 AND status = 'pending' RETURNING attempts",
            )
            .bind(error)
            .bind(retry_at)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db("recording a failed delivery attempt"))?;
                Ok(attempts.unwrap_or(0))
            })
            .await
    }

    async fn next_delivery_retry(&self) -> Result<Option<Millis>> {
        Ok(read!(self, conn => {
            sqlx::query_scalar::<_, Option<i64>>(
                "SELECT MIN(retry_at) FROM deliveries WHERE status = 'pending'",
            )
            .fetch_one(conn)
            .await
            .map_err(db("reading the next delivery retry"))?
        }))
    }

    async fn deliveries(&self, project_id: i64, page: Page) -> Result<Paged<DeliveryRecord>> {
        let (limit, offset) = limit_offset(page);
        let (total, rows) = read!(self, conn => {
            let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE project_id = ?")
                .bind(project_id)
                .fetch_one(&mut *conn)
                .await
                .map_err(db("counting deliveries"))?;
            let rows = sqlx::query(&format!(
                "SELECT {DELIVERY_COLS} FROM deliveries WHERE project_id = ? \
                 ORDER BY id DESC LIMIT ? OFFSET ?"
            ))
            .bind(project_id)
            .bind(limit)
            .bind(offset)
            .fetch_all(&mut *conn)
            .await
            .map_err(db("listing deliveries"))?;
            (total, rows)
        });
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            items.push(delivery_record!(row, Vec::new()));
        }
        Ok(Paged { items, total })
    }

    async fn create_pipeline(&self, p: &NewPipeline) -> Result<i64> {
        self.writer
            .durably(async {
                let mut conn = self.writer.lock().await;
                let mut tx = conn
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(db("beginning a transaction"))?;
                let id: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO pipelines (project_id, delivery_id, git_ref, tag, sha, before_sha, source, \
                     status, trace_id, errors, spec, created_at, protected) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                     ON CONFLICT (delivery_id) DO NOTHING RETURNING id",
                )
                .bind(p.project_id)
                .bind(p.delivery_id)
                .bind(&p.git_ref)
                .bind(p.tag)
                .bind(&p.sha)
                .bind(&p.before_sha)
                .bind(&p.source)
                .bind(&p.status)
                .bind(&p.trace_id)
                .bind(&p.errors)
                .bind(&p.spec)
                .bind(p.created_at)
                .bind(p.protected)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("creating a pipeline"))?;
                let Some(id) = id else {
                    // The delivery has its pipeline already.
                    let id: i64 = sqlx::query_scalar("SELECT id FROM pipelines WHERE delivery_id = ?")
                        .bind(p.delivery_id)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db("reading a delivery's pipeline"))?;
                    return Ok(id);
                };
                insert_jobs(&mut tx, id, p.project_id, &p.jobs).await?;
                if let Some(delivery) = p.delivery_id {
                    sqlx::query(
                        "UPDATE deliveries SET status = 'created', reason = NULL, pipeline_id = ? \
                         WHERE id = ?",
                    )
                    .bind(id)
                    .bind(delivery)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("marking a delivery created"))?;
                }
                tx.commit().await.map_err(db("committing a pipeline"))?;
                Ok(id)
            })
            .await
    }

    async fn pipeline(&self, id: i64) -> Result<Option<PipelineRecord>> {
        read!(self, conn => {
            // The pipeline row (and its version) is read before the jobs: jobs read later can only
            // be newer, so an `apply` computed from them with this version fails rather than
            // applying over changes it did not see.
            let row = sqlx::query(&format!(
                "SELECT {PIPELINE_COLS}, {VERSION} FROM pipelines p JOIN projects pr ON pr.id = p.project_id \
                 WHERE p.id = ?"
            ))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db("reading a pipeline"))?;
            let Some(row) = row else { return Ok(None) };
            let mut pipeline = pipeline_record!(&row);
            let rows = sqlx::query(&format!(
                "SELECT {JOB_COLS} FROM jobs WHERE pipeline_id = ? ORDER BY position, attempt, id"
            ))
            .bind(id)
            .fetch_all(&mut *conn)
            .await
            .map_err(db("reading a pipeline's jobs"))?;
            pipeline.jobs.reserve(rows.len());
            for row in &rows {
                pipeline.jobs.push(job_record!(row));
            }
            Ok(Some(pipeline))
        })
    }

    async fn pipeline_head(&self, id: i64) -> Result<Option<PipelineRecord>> {
        let row = read!(self, conn => {
            sqlx::query(&format!(
                "SELECT {PIPELINE_COLS}, {NO_VERSION} FROM pipelines p JOIN projects pr ON pr.id = p.project_id \
                 WHERE p.id = ?"
            ))
            .bind(id)
            .fetch_optional(conn)
            .await
            .map_err(db("reading a pipeline"))?
        });
        Ok(match row {
            Some(row) => Some(pipeline_record!(&row)),
            None => None,
        })
    }

    async fn jobs_named(&self, pipeline_id: i64, names: &[String]) -> Result<Vec<JobRecord>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let rows = read!(self, conn => {
            sqlx::query(&format!(
                "SELECT {JOB_COLS} FROM jobs WHERE pipeline_id = ? \
                 AND name IN (SELECT value FROM json_each(?)) ORDER BY position, attempt, id"
            ))
            .bind(pipeline_id)
            .bind(json(names))
            .fetch_all(conn)
            .await
            .map_err(db("reading jobs by name"))?
        });
        rows.iter().map(|row| Ok(job_record!(row))).collect()
    }

    async fn success_changes_nothing(
        &self,
        pipeline_id: i64,
        stage_index: i64,
        job_id: i64,
        name: &str,
    ) -> Result<bool> {
        read!(self, conn => {
            sqlx::query_scalar(SUCCESS_CHANGES_NOTHING)
            .bind(pipeline_id)
            .bind(stage_index)
            .bind(job_id)
            .bind(name)
            .fetch_one(conn)
            .await
            .map_err(db("checking what a job's success changes"))
        })
    }

    async fn jobs_before_stage(
        &self,
        pipeline_id: i64,
        stage_index: i64,
    ) -> Result<Vec<JobRecord>> {
        let rows = read!(self, conn => {
            sqlx::query(&format!(
                "SELECT {JOB_COLS} FROM jobs WHERE pipeline_id = ? AND stage_index < ? \
                 ORDER BY position, attempt, id"
            ))
            .bind(pipeline_id)
            .bind(stage_index)
            .fetch_all(conn)
            .await
            .map_err(db("reading the jobs of earlier stages"))?
        });
        rows.iter().map(|row| Ok(job_record!(row))).collect()
    }

    async fn pipelines(
        &self,
        project_id: i64,
        filter: &PipelineFilter,
        page: Page,
    ) -> Result<Paged<PipelineRecord>> {
        let (limit, offset) = limit_offset(page);
        let (total, rows) = read!(self, conn => {
            let total: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pipelines WHERE project_id = ?1 \
                 AND (?2 IS NULL OR git_ref = ?2) AND (?3 IS NULL OR status = ?3)",
            )
            .bind(project_id)
            .bind(&filter.git_ref)
            .bind(&filter.status)
            .fetch_one(&mut *conn)
            .await
            .map_err(db("counting pipelines"))?;
            let rows = sqlx::query(&format!(
                "SELECT {PIPELINE_COLS}, {NO_VERSION} FROM pipelines p JOIN projects pr ON pr.id = p.project_id \
                 WHERE p.project_id = ?1 AND (?2 IS NULL OR p.git_ref = ?2) \
                 AND (?3 IS NULL OR p.status = ?3) ORDER BY p.id DESC LIMIT ?4 OFFSET ?5"
            ))
            .bind(project_id)
            .bind(&filter.git_ref)
            .bind(&filter.status)
            .bind(limit)
            .bind(offset)
            .fetch_all(&mut *conn)
            .await
            .map_err(db("listing pipelines"))?;
            (total, rows)
        });
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            items.push(pipeline_record!(row));
        }
        Ok(Paged { items, total })
    }

    async fn active_pipelines(&self) -> Result<Vec<i64>> {
        read!(self, conn => {
            sqlx::query_scalar(&format!(
                "SELECT id FROM pipelines WHERE status NOT IN {OVER} ORDER BY id"
            ))
            .fetch_all(conn)
            .await
            .map_err(db("listing active pipelines"))
        })
    }

    async fn unfinished_push_pipelines(
        &self,
        project_id: i64,
        git_ref: &str,
        below: i64,
    ) -> Result<Vec<i64>> {
        read!(self, conn => {
            sqlx::query_scalar(&format!(
                "SELECT id FROM pipelines WHERE status NOT IN {OVER} AND project_id = $1 \
                 AND git_ref = $2 AND source = 'push' AND id < $3 ORDER BY id"
            ))
            .bind(project_id)
            .bind(git_ref)
            .bind(below)
            .fetch_all(conn)
            .await
            .map_err(db("listing the pipelines of a ref"))
        })
    }

    async fn apply(&self, pipeline_id: i64, version: i64, changes: &Changes) -> Result<bool> {
        self.writer
            .durably(async {
                let mut conn = self.writer.lock().await;
                let mut tx = conn
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(db("beginning a transaction"))?;
                let current: Option<(i64, i64)> = sqlx::query_as(&format!(
                    "SELECT {VERSION}, p.project_id FROM pipelines p WHERE p.id = ?"
                ))
                .bind(pipeline_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("reading a pipeline's version"))?;
                let Some((_, project_id)) = current.filter(|&(current, _)| current == version) else {
                    tx.rollback().await.map_err(db("rolling back"))?;
                    return Ok(false);
                };
                sqlx::query(
                    "UPDATE pipelines SET version = version + 1, status = COALESCE(?, status), \
                     started_at = COALESCE(?, started_at), finished_at = COALESCE(?, finished_at), \
                     spec = COALESCE(?, spec) WHERE id = ?",
                )
                .bind(&changes.status)
                .bind(changes.started_at)
                .bind(changes.finished_at)
                .bind(&changes.spec)
                .bind(pipeline_id)
                .execute(&mut *tx)
                .await
                .map_err(db("updating a pipeline"))?;
                for job in &changes.jobs {
                    sqlx::query(
                        "UPDATE jobs SET status = COALESCE(?, status), queued_at = COALESCE(?, queued_at), \
                         finished_at = COALESCE(?, finished_at), run_after = COALESCE(?, run_after), \
                         failure_reason = COALESCE(?, failure_reason), \
                         cancel_requested = COALESCE(?, cancel_requested), retried = COALESCE(?, retried) \
                         WHERE id = ? AND pipeline_id = ?",
                    )
                    .bind(&job.status)
                    .bind(job.queued_at)
                    .bind(job.finished_at)
                    .bind(job.run_after)
                    .bind(&job.failure_reason)
                    .bind(job.cancel_requested)
                    .bind(job.retried)
                    .bind(job.id)
                    .bind(pipeline_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("updating a job"))?;
                }
                insert_jobs(&mut tx, pipeline_id, project_id, &changes.new_jobs).await?;
                tx.commit().await.map_err(db("committing changes"))?;
                Ok(true)
            })
            .await
    }

    async fn claim(
        &self,
        agent: &AgentRecord,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Option<JobRecord>> {
        self.writer
            .durably_if(
                async {
                    let tags = json(&agent.tags);
                    let candidate_sql = candidate(agent);
                    // Without a candidate, answer from a reader and leave the writer to others: agents woken
                    // together mostly find nothing.
                    if let Some(pool) = &self.readers {
                        let mut reader =
                            pool.acquire().await.map_err(db("acquiring a connection"))?;
                        let candidate: Option<i64> = sqlx::query_scalar(&candidate_sql)
                            .bind(now)
                            .bind(agent.run_untagged)
                            .bind(&tags)
                            .fetch_optional(&mut *reader)
                            .await
                            .map_err(db("looking for a job"))?;
                        if candidate.is_none() {
                            return Ok(None);
                        }
                    }
                    let mut conn = self.writer.lock().await;
                    let mut tx = conn
                        .begin_with("BEGIN IMMEDIATE")
                        .await
                        .map_err(db("beginning a transaction"))?;
                    // Under the write lock, the choice and the update cannot interleave with another claim.
                    let row = sqlx::query(&format!(
                        "UPDATE jobs SET status = 'running', started_at = ?1, lease_until = ?4, \
                 agent_id = ?5, agent_name = ?6, bumps = bumps + 1 \
                 WHERE id = ({candidate_sql}) RETURNING {JOB_COLS}"
                    ))
                    .bind(now)
                    .bind(agent.run_untagged)
                    .bind(&tags)
                    .bind(lease_until)
                    .bind(agent.id)
                    .bind(&agent.name)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db("claiming a job"))?;
                    let Some(row) = row else {
                        tx.rollback().await.map_err(db("rolling back"))?;
                        return Ok(None);
                    };
                    let job = job_record!(&row);
                    // The job's `bumps` moved the pipeline's version; only its first claim writes its row.
                    sqlx::query(&format!(
                        "UPDATE pipelines SET started_at = COALESCE(started_at, ?1), \
                 status = CASE WHEN status IN {NOT_STARTED} THEN 'running' ELSE status END \
                 WHERE id = ?2 AND (started_at IS NULL OR status IN {NOT_STARTED})"
                    ))
                    .bind(now)
                    .bind(job.pipeline_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("starting a pipeline"))?;
                    tx.commit().await.map_err(db("committing a claim"))?;
                    Ok(Some(job))
                },
                Option::is_some,
            )
            .await
    }

    async fn heartbeat(&self, job_id: i64, agent_id: i64, lease_until: Millis) -> Result<bool> {
        self.writer
            .durably(async {
                let mut conn = self.writer.lock().await;
                let cancel: Option<bool> = sqlx::query_scalar(
                    "UPDATE jobs SET lease_until = MAX(COALESCE(lease_until, 0), ?) \
                 WHERE id = ? AND status = 'running' AND agent_id = ? RETURNING cancel_requested",
                )
                .bind(lease_until)
                .bind(job_id)
                .bind(agent_id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db("extending a lease"))?;
                cancel.ok_or(StoreError::LeaseLost)
            })
            .await
    }

    async fn append_log(
        &self,
        job_id: i64,
        agent_id: i64,
        offset: i64,
        bytes: &[u8],
        lease_until: Millis,
    ) -> Result<i64> {
        self.writer
            .durably(async {
                let mut conn = self.writer.lock().await;
                let mut tx = conn
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(db("beginning a transaction"))?;
                let size: Option<i64> = sqlx::query_scalar(
                "SELECT log_size FROM jobs WHERE id = ? AND status = 'running' AND agent_id = ?",
            )
            .bind(job_id)
            .bind(agent_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("reading a job's log size"))?;
                let Some(size) = size else {
                    tx.rollback().await.map_err(db("rolling back"))?;
                    return Err(StoreError::LeaseLost);
                };
                if offset < 0 || offset > size {
                    tx.rollback().await.map_err(db("rolling back"))?;
                    return Err(StoreError::LogGap(size));
                }
                let skip = usize::try_from(size - offset).unwrap_or(usize::MAX);
                let fresh = bytes.get(skip..).unwrap_or_default();
                let new_size = size + i64::try_from(fresh.len()).unwrap_or(i64::MAX);
                if !fresh.is_empty() {
                    sqlx::query("INSERT INTO log_chunks (job_id, pos, bytes) VALUES (?, ?, ?)")
                        .bind(job_id)
                        .bind(size)
                        .bind(fresh)
                        .execute(&mut *tx)
                        .await
                        .map_err(db("appending to a log"))?;
                }
                sqlx::query(
                    "UPDATE jobs SET log_size = ?, lease_until = MAX(COALESCE(lease_until, 0), ?) \
                 WHERE id = ?",
                )
                .bind(new_size)
                .bind(lease_until)
                .bind(job_id)
                .execute(&mut *tx)
                .await
                .map_err(db("updating a job's log size"))?;
                tx.commit().await.map_err(db("committing a log chunk"))?;
                Ok(new_size)
            })
            .await
    }

    async fn read_log(&self, job_id: i64, start: i64, end: i64) -> Result<Vec<u8>> {
        let start = start.max(0);
        if end <= start {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, Vec<u8>)> = read!(self, conn => {
            sqlx::query_as(
                "SELECT pos, bytes FROM log_chunks WHERE job_id = ?1 AND pos < ?3 \
                 AND pos >= COALESCE((SELECT MAX(pos) FROM log_chunks \
                    WHERE job_id = ?1 AND pos <= ?2), 0) \
                 ORDER BY pos",
            )
            .bind(job_id)
            .bind(start)
            .bind(end)
            .fetch_all(conn)
            .await
            .map_err(db("reading a log"))?
        });
        Ok(assemble(rows, start, end))
    }

    async fn begin_artifacts(
        &self,
        job_id: i64,
        agent_id: i64,
        lease_until: Millis,
    ) -> Result<i64> {
        self.writer
            .durably(async {
                let mut conn = self.writer.lock().await;
                let mut tx = conn
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(db("beginning a transaction"))?;
                if !lease_for_artifacts(&mut tx, job_id, agent_id, lease_until, false).await? {
                    tx.rollback().await.map_err(db("rolling back"))?;
                    return Err(StoreError::LeaseLost);
                }
                // Unfinished earlier uploads of the job (a retried or abandoned request) go.
                sqlx::query(
                    "DELETE FROM artifact_uploads WHERE job_id = ?1 AND NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.job_id = ?1 AND a.upload_id = artifact_uploads.id)",
                )
                .bind(job_id)
                .execute(&mut *tx)
                .await
                .map_err(db("dropping unfinished uploads"))?;
                let id: i64 =
                    sqlx::query_scalar("INSERT INTO artifact_uploads (job_id) VALUES (?1) RETURNING id")
                        .bind(job_id)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db("starting an upload"))?;
                tx.commit()
                    .await
                    .map_err(db("committing an upload's start"))?;
                Ok(id)
            })
            .await
    }

    async fn put_artifact_chunk(
        &self,
        job_id: i64,
        upload_id: i64,
        seq: i64,
        data: &[u8],
    ) -> Result<()> {
        self.writer
            .durably(async {
                let mut conn = self.writer.lock().await;
                let stored = sqlx::query(
                    "INSERT INTO artifact_chunks (upload_id, seq, data) SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM artifact_uploads WHERE id = ?1 AND job_id = ?4) ON CONFLICT (upload_id, seq) DO UPDATE SET data = excluded.data",
                )
                .bind(upload_id)
                .bind(seq)
                .bind(data)
                .bind(job_id)
                .execute(&mut *conn)
                .await
                .map_err(db("storing an artifacts chunk"))?;
                if stored.rows_affected() == 0 {
                    return Err(StoreError::UploadGone);
                }
                Ok(())
            })
            .await
    }

    async fn commit_artifacts(
        &self,
        job_id: i64,
        agent_id: i64,
        upload_id: i64,
        chunks: i64,
        size: i64,
        lease_until: Millis,
    ) -> Result<()> {
        self.writer
            .durably(async {
                let mut conn = self.writer.lock().await;
                let mut tx = conn
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(db("beginning a transaction"))?;
                if !lease_for_artifacts(&mut tx, job_id, agent_id, lease_until, true).await? {
                    tx.rollback().await.map_err(db("rolling back"))?;
                    return Err(StoreError::LeaseLost);
                }
                let (count, first, last, bytes): (i64, i64, i64, i64) = sqlx::query_as(
                    "SELECT COUNT(c.seq), COALESCE(MIN(c.seq), 0), COALESCE(MAX(c.seq), -1), CAST(COALESCE(SUM(length(c.data)), 0) AS BIGINT) FROM artifact_uploads u LEFT JOIN artifact_chunks c ON c.upload_id = u.id WHERE u.id = ?1 AND u.job_id = ?2",
                )
                .bind(upload_id)
                .bind(job_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("checking an upload"))?;
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM artifact_uploads WHERE id = ?1 AND job_id = ?2)",
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
                let old: Option<i64> =
                    sqlx::query_scalar("SELECT upload_id FROM artifacts WHERE job_id = ?1")
                        .bind(job_id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db("reading artifacts"))?;
                sqlx::query(
                    "INSERT INTO artifacts (job_id, upload_id, size, chunks) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (job_id) DO UPDATE SET upload_id = excluded.upload_id, size = excluded.size, chunks = excluded.chunks",
                )
                .bind(job_id)
                .bind(upload_id)
                .bind(size)
                .bind(chunks)
                .execute(&mut *tx)
                .await
                .map_err(db("storing artifacts"))?;
                if let Some(old) = old.filter(|old| *old != upload_id) {
                    sqlx::query("DELETE FROM artifact_uploads WHERE id = ?1")
                        .bind(old)
                        .execute(&mut *tx)
                        .await
                        .map_err(db("dropping replaced artifacts"))?;
                }
                tx.commit().await.map_err(db("committing artifacts"))?;
                Ok(())
            })
            .await
    }

    async fn drop_stale_artifact_uploads(&self) -> Result<u64> {
        // Chunks go with their upload (`ON DELETE CASCADE`).
        const STALE: &str = "DELETE FROM artifact_uploads WHERE id IN (SELECT u.id FROM artifact_uploads u JOIN jobs j ON j.id = u.job_id WHERE j.status <> 'running' AND NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.upload_id = u.id))";
        self.writer
            .durably_if(
                async {
                    let mut conn = self.writer.lock().await;
                    let dropped = sqlx::query(STALE)
                        .execute(&mut *conn)
                        .await
                        .map_err(db("dropping stale artifact uploads"))?
                        .rows_affected();
                    Ok(dropped)
                },
                |dropped| *dropped > 0,
            )
            .await
    }

    async fn abort_artifacts(&self, job_id: i64, upload_id: i64) -> Result<()> {
        self.writer
            .durably(async {
                // The committed upload stays; chunks go with their upload (`ON DELETE CASCADE`).
                let mut conn = self.writer.lock().await;
                sqlx::query(
                    "DELETE FROM artifact_uploads WHERE id = ?1 AND job_id = ?2 AND NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.job_id = ?2 AND a.upload_id = ?1)",
                )
                .bind(upload_id)
                .bind(job_id)
                .execute(&mut *conn)
                .await
                .map_err(db("dropping an upload"))?;
                Ok(())
            })
            .await
    }

    async fn artifacts_info(&self, job_id: i64) -> Result<Option<ArtifactsInfo>> {
        let row: Option<(i64, i64, i64)> = read!(self, conn => {
            sqlx::query_as("SELECT upload_id, size, chunks FROM artifacts WHERE job_id = ?")
                .bind(job_id)
                .fetch_optional(conn)
                .await
                .map_err(db("reading artifacts"))?
        });
        Ok(row.map(|(upload_id, size, chunks)| ArtifactsInfo {
            upload_id,
            size,
            chunks,
        }))
    }

    async fn artifact_chunk(
        &self,
        job_id: i64,
        upload_id: i64,
        seq: i64,
    ) -> Result<Option<Vec<u8>>> {
        read!(self, conn => {
            sqlx::query_scalar(
                "SELECT c.data FROM artifact_chunks c JOIN artifact_uploads u ON u.id = c.upload_id \
                 WHERE c.upload_id = ? AND c.seq = ? AND u.job_id = ?",
            )
            .bind(upload_id)
            .bind(seq)
            .bind(job_id)
            .fetch_optional(conn)
            .await
            .map_err(db("reading an artifacts chunk"))
        })
    }

    async fn finish(&self, job_id: i64, agent_id: i64, result: &JobResult) -> Result<i64> {
        self.writer
            .durably(async {
                let mut conn = self.writer.lock().await;
                let pipeline_id: Option<i64> = sqlx::query_scalar(
                    "UPDATE jobs SET status = ?, exit_code = ?, failure_reason = ?, coverage = ?, \
                 finished_at = ?, lease_until = NULL, bumps = bumps + 1 \
                 WHERE id = ? AND status = 'running' AND agent_id = ? RETURNING pipeline_id",
                )
                .bind(&result.status)
                .bind(result.exit_code)
                .bind(&result.failure_reason)
                .bind(result.coverage)
                .bind(result.finished_at)
                .bind(job_id)
                .bind(agent_id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db("finishing a job"))?;
                pipeline_id.ok_or(StoreError::LeaseLost)
            })
            .await
    }

    async fn expire_leases(&self, now: Millis) -> Result<Vec<(i64, i64)>> {
        self.writer
            .durably_if(
                async {
                    let mut conn = self.writer.lock().await;
                    let mut expired: Vec<(i64, i64)> = sqlx::query_as(
                    "UPDATE jobs SET status = 'failed', failure_reason = 'runner_system_failure', \
                 finished_at = ?1, lease_until = NULL, bumps = bumps + 1 \
                 WHERE status = 'running' AND lease_until < ?1 RETURNING id, pipeline_id",
                )
                .bind(now)
                .fetch_all(&mut *conn)
                .await
                .map_err(db("expiring leases"))?;
                    expired.sort_unstable();
                    Ok(expired)
                },
                |expired| !expired.is_empty(),
            )
            .await
    }

    async fn extend_leases(&self, until: Millis) -> Result<()> {
        self.writer
            .durably(async {
                let mut conn = self.writer.lock().await;
                sqlx::query(
                    "UPDATE jobs SET lease_until = ?1 \
                 WHERE status = 'running' AND (lease_until IS NULL OR lease_until < ?1)",
                )
                .bind(until)
                .execute(&mut *conn)
                .await
                .map_err(db("extending leases"))?;
                Ok(())
            })
            .await
    }

    async fn queue_depth(&self) -> Result<i64> {
        read!(self, conn => {
            sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = 'pending'")
                .fetch_one(conn)
                .await
                .map_err(db("counting pending jobs"))
        })
    }

    async fn job(&self, id: i64) -> Result<Option<JobRecord>> {
        let row = read!(self, conn => {
            sqlx::query(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?"))
                .bind(id)
                .fetch_optional(conn)
                .await
                .map_err(db("reading a job"))?
        });
        Ok(match row {
            Some(row) => Some(job_record!(&row)),
            None => None,
        })
    }

    async fn pipeline_project(&self, id: i64) -> Result<Option<i64>> {
        read!(self, conn => {
            sqlx::query_scalar("SELECT project_id FROM pipelines WHERE id = ?")
                .bind(id)
                .fetch_optional(conn)
                .await
                .map_err(db("reading a pipeline's project"))
        })
    }

    async fn job_project(&self, id: i64) -> Result<Option<i64>> {
        read!(self, conn => {
            sqlx::query_scalar("SELECT project_id FROM jobs WHERE id = ?")
                .bind(id)
                .fetch_optional(conn)
                .await
                .map_err(db("reading a job's project"))
        })
    }

    async fn register_agent(&self, a: &NewAgent) -> Result<i64> {
        self.writer
            .durably(async {
                let mut conn = self.writer.lock().await;
                sqlx::query_scalar(
                "INSERT INTO agents (name, token_hash, tags, run_untagged, executor, concurrency, \
                 version, registered_at, projects, protected_only) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(&a.name)
            .bind(&a.token_hash)
            .bind(json(&a.tags))
            .bind(a.run_untagged)
            .bind(&a.executor)
            .bind(a.concurrency)
            .bind(&a.version)
            .bind(a.registered_at)
            .bind(
                a.projects
                    .as_ref()
                    .map(|p| serde_json::to_string(p).unwrap_or_else(|_| "[]".to_owned())),
            )
            .bind(a.protected_only)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| agent_error(e, &a.name))
            })
            .await
    }

    async fn agent_by_token(&self, token_hash: &str) -> Result<Option<AgentRecord>> {
        let row = read!(self, conn => {
            sqlx::query(&format!("SELECT {AGENT_COLS} FROM agents WHERE token_hash = ?"))
                .bind(token_hash)
                .fetch_optional(conn)
                .await
                .map_err(db("reading an agent"))?
        });
        Ok(match row {
            Some(row) => Some(agent_record!(&row)),
            None => None,
        })
    }

    async fn touch_agent(&self, id: i64, now: Millis) -> Result<()> {
        self.writer
            .durably(async {
                let mut conn = self.writer.lock().await;
                sqlx::query("UPDATE agents SET last_seen_at = ? WHERE id = ?")
                    .bind(now)
                    .bind(id)
                    .execute(&mut *conn)
                    .await
                    .map_err(db("touching an agent"))?;
                Ok(())
            })
            .await
    }

    async fn agents(&self) -> Result<Vec<AgentRecord>> {
        let rows = read!(self, conn => {
            sqlx::query(&format!("SELECT {AGENT_COLS} FROM agents ORDER BY id"))
                .fetch_all(conn)
                .await
                .map_err(db("listing agents"))?
        });
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(agent_record!(row));
        }
        Ok(out)
    }

    async fn revoke_agent(&self, id: i64) -> Result<bool> {
        self.writer
            .durably(async {
                let mut conn = self.writer.lock().await;
                let mut tx = conn
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(db("beginning a transaction"))?;
                let gone = sqlx::query("DELETE FROM agents WHERE id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("revoking an agent"))?
                    .rows_affected()
                    > 0;
                sqlx::query(
                    "UPDATE jobs SET lease_until = 0 WHERE agent_id = ? AND status = 'running'",
                )
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db("ending a revoked agent's leases"))?;
                tx.commit().await.map_err(db("committing a revocation"))?;
                Ok(gone)
            })
            .await
    }

    async fn setting(&self, name: &str) -> Result<Option<String>> {
        Ok(read!(self, conn => {
            sqlx::query_scalar("SELECT value FROM settings WHERE name = ?")
                .bind(name)
                .fetch_optional(conn)
                .await
                .map_err(db("reading a setting"))?
        }))
    }

    async fn set_setting(&self, name: &str, value: &str) -> Result<()> {
        self.writer
            .durably(async {
                let mut conn = self.writer.lock().await;
                sqlx::query(
                    "INSERT INTO settings (name, value) VALUES (?, ?) \
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                )
                .bind(name)
                .bind(value)
                .execute(&mut *conn)
                .await
                .map_err(db("writing a setting"))?;
                Ok(())
            })
            .await
    }

    async fn create_project_token(&self, t: &NewProjectToken) -> Result<ProjectTokenRecord> {
        self.writer
            .durably(async {
                let mut conn = self.writer.lock().await;
                let id: i64 = sqlx::query_scalar(
                "INSERT INTO project_tokens (project_id, name, token_hash, created_at, expires_at, \
                 read_only) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(t.project_id)
            .bind(&t.name)
            .bind(&t.token_hash)
            .bind(t.created_at)
            .bind(t.expires_at)
            .bind(t.read_only)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| token_error(e, &t.name))?;
                let row = sqlx::query(&format!(
                    "SELECT {PROJECT_TOKEN_COLS} FROM project_tokens t \
                 JOIN projects pr ON pr.id = t.project_id WHERE t.id = ?"
                ))
                .bind(id)
                .fetch_one(&mut *conn)
                .await
                .map_err(db("reading a project token"))?;
                Ok(project_token_record!(&row))
            })
            .await
    }

    async fn project_tokens(&self, project_id: i64) -> Result<Vec<ProjectTokenRecord>> {
        let rows = read!(self, conn => {
            sqlx::query(&format!(
                "SELECT {PROJECT_TOKEN_COLS} FROM project_tokens t \
                 JOIN projects pr ON pr.id = t.project_id WHERE t.project_id = ? ORDER BY t.id"
            ))
            .bind(project_id)
            .fetch_all(conn)
            .await
            .map_err(db("listing project tokens"))?
        });
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(project_token_record!(row));
        }
        Ok(out)
    }

    async fn project_token_by_hash(&self, token_hash: &str) -> Result<Option<ProjectTokenRecord>> {
        let row = read!(self, conn => {
            sqlx::query(&format!(
                "SELECT {PROJECT_TOKEN_COLS} FROM project_tokens t \
                 JOIN projects pr ON pr.id = t.project_id WHERE t.token_hash = ?"
            ))
            .bind(token_hash)
            .fetch_optional(conn)
            .await
            .map_err(db("reading a project token"))?
        });
        Ok(match row {
            Some(row) => Some(project_token_record!(&row)),
            None => None,
        })
    }

    async fn delete_project_token(&self, project_id: i64, id: i64) -> Result<bool> {
        self.writer
            .durably(async {
                let mut conn = self.writer.lock().await;
                let done =
                    sqlx::query("DELETE FROM project_tokens WHERE id = ? AND project_id = ?")
                        .bind(id)
                        .bind(project_id)
                        .execute(&mut *conn)
                        .await
                        .map_err(db("deleting a project token"))?;
                Ok(done.rows_affected() > 0)
            })
            .await
    }
}

/// A failed project token insert: a token hash used twice is a conflict.
fn token_error(e: sqlx::Error, name: &str) -> StoreError {
    if e.as_database_error()
        .is_some_and(sqlx::error::DatabaseError::is_unique_violation)
    {
        StoreError::Conflict(format!("a project token with the secret of {name}"))
    } else {
        db("creating a project token")(e)
    }
}

/// A failed agent insert: a token hash used twice is a conflict.
fn agent_error(e: sqlx::Error, name: &str) -> StoreError {
    if e.as_database_error()
        .is_some_and(sqlx::error::DatabaseError::is_unique_violation)
    {
        StoreError::Conflict(format!("an agent with the token of {name}"))
    } else {
        db("registering an agent")(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan of `statement`, one line per step.
    async fn plan(store: &SqliteStore, statement: &str, params: usize) -> String {
        let sql = format!("EXPLAIN QUERY PLAN {statement}");
        let mut q = sqlx::query(&sql);
        for _ in 0..params {
            q = q.bind(1_i64);
        }
        let mut conn = store.writer.lock().await;
        let rows = q.fetch_all(&mut *conn).await.unwrap();
        rows.iter()
            .map(|r| r.get::<String, _>("detail"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn the_checkpointer_runs_after_writes_and_sleeps_while_idle() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("g.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let passes = || {
            store
                .writer
                .passes
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let settle = || tokio::time::sleep(CHECKPOINT_EVERY * 6);
        settle().await;
        let idle = passes();
        settle().await;
        assert_eq!(passes(), idle, "no pass without a write");
        store.create_project("p", "{}", 1).await.unwrap();
        settle().await;
        let after = passes();
        assert!(after > idle, "a write is followed by a pass");
        settle().await;
        assert_eq!(passes(), after, "idle again");
        // A dropped store ends its checkpointer (which holds the readers' pool).
        let pool = store.readers.clone().unwrap();
        drop(store);
        settle().await;
        assert!(
            pool.is_closed(),
            "the checkpointer closed the pool on its way out"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_write_waits_for_a_sync_that_writes_committing_together_share() {
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("g.db").display());
        let store = std::sync::Arc::new(SqliteStore::open(&url).await.unwrap());
        let sync = &store.writer.sync;
        {
            // The file synced is the database's WAL.
            use std::os::unix::fs::MetadataExt as _;
            let synced = sync.wal.as_ref().unwrap().metadata().unwrap().ino();
            let wal = std::fs::metadata(dir.path().join("g.db-wal"))
                .unwrap()
                .ino();
            assert_eq!(synced, wal);
        }
        let before = sync.syncs.load(SeqCst);
        assert_eq!(
            before, 0,
            "opening the store is not a write of the server's"
        );
        store.create_project("alone", "{}", 1).await.unwrap();
        assert_eq!(sync.syncs.load(SeqCst), 1, "one write, one sync");
        // 64 writes at once: each returns covered by a sync, and they share far fewer syncs.
        let writes: Vec<_> = (0..64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.create_project(&format!("p{i}"), "{}", 1).await })
            })
            .collect();
        for w in writes {
            w.await.unwrap().unwrap();
        }
        let syncs = sync.syncs.load(SeqCst) - 1;
        assert!((1..64).contains(&syncs), "{syncs} syncs for 64 writes");
        assert_eq!(
            sync.synced.load(SeqCst),
            sync.tickets.load(SeqCst),
            "every write's ticket is covered by a finished sync"
        );
        // A failed write does not wait for a sync (nothing of it was committed).
        let taken = store.create_project("alone", "{}", 1).await;
        assert!(taken.is_err());
        assert_eq!(sync.syncs.load(SeqCst) - 1, syncs);
    }

    #[tokio::test]
    async fn polls_and_sweeps_that_change_nothing_do_not_sync() {
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("g.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let id = store
            .register_agent(&NewAgent {
                name: "a".into(),
                token_hash: "h".into(),
                tags: Vec::new(),
                run_untagged: true,
                executor: "shell".into(),
                concurrency: 1,
                version: "0".into(),
                registered_at: 1,
                projects: None,
                protected_only: false,
            })
            .await
            .unwrap();
        let agent = store.agent_by_token("h").await.unwrap().unwrap();
        assert_eq!(agent.id, id);
        let syncs = store.writer.sync.syncs.load(SeqCst);
        assert_eq!(syncs, 1, "the registration synced");
        assert!(store.claim(&agent, 2, 3).await.unwrap().is_none());
        assert!(store.expire_leases(4).await.unwrap().is_empty());
        assert_eq!(store.drop_stale_artifact_uploads().await.unwrap(), 0);
        assert_eq!(store.writer.sync.syncs.load(SeqCst), syncs);
    }

    #[tokio::test]
    async fn an_in_memory_store_has_nothing_to_sync() {
        let store = SqliteStore::open("sqlite::memory:").await.unwrap();
        store.create_project("p", "{}", 1).await.unwrap();
        assert!(store.writer.sync.wal.is_none());
        assert_eq!(
            store
                .writer
                .sync
                .syncs
                .load(std::sync::atomic::Ordering::SeqCst),
            0
        );
    }

    #[tokio::test]
    async fn a_finished_job_is_checked_through_the_partial_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("g.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let plan = plan(&store, SUCCESS_CHANGES_NOTHING, 4).await;
        assert!(plan.contains("jobs_active_by_stage"), "{plan}");
        assert!(plan.contains("jobs_with_needs"), "{plan}");
        assert!(!plan.contains("jobs_by_stage "), "{plan}");
    }
}
