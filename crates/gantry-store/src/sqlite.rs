//! [`SqliteStore`]: the embedded default, one file in the data dir.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteQueryResult, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Sqlite};
use tokio::sync::{Mutex, MutexGuard, Notify};

use crate::group::{DeliveryQueue, insert_batch};
use crate::query::{LogAppend, Sql, VERSION};
use crate::rows::JOB_COLS;
use crate::{AgentRecord, Changes, JobRecord, Millis, NewDelivery, Result, StoreError, db};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// See [`crate::Store::success_changes_nothing`]. The partial indexes are named: without statistics,
/// SQLite's planner takes `jobs_by_stage` as soon as it exists (same columns, no `WHERE`), and
/// finding a pending job of the stage then walks every job of the stage that has already ended, a
/// cost that grows with the stage.
const SUCCESS_CHANGES_NOTHING: &str = "SELECT \
    EXISTS (SELECT 1 FROM pipelines WHERE id = ?1 AND status = 'running' AND started_at IS NOT NULL) \
    AND EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_active_by_stage \
                WHERE pipeline_id = ?1 AND stage_index = ?2 AND id <> ?3 \
                AND status IN ('pending', 'running') \
                AND spec NOT LIKE '%\"rollback\":{\"from\"%') \
    AND NOT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_with_needs, json_each(jobs.needs) \
                    WHERE jobs.pipeline_id = ?1 AND jobs.needs IS NOT NULL AND json_each.value = ?4)";

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

/// Stores a group commit's batch of deliveries with one statement (see [`crate::group`]).
async fn insert_deliveries(
    conn: &mut SqliteConnection,
    batch: &[&NewDelivery],
) -> Result<Vec<(i64, i64, String, String)>> {
    insert_batch::<Sqlite>(batch)
        .build_query_as()
        .fetch_all(conn)
        .await
        .map_err(db("storing deliveries"))
}

/// What SQLite spells its own way (see [`crate::query`]): lists are JSON arrays.
impl Sql for Sqlite {
    type List<'a> = Option<String>;
    type Ids<'a> = Option<String>;

    fn list_param(list: Option<&[String]>) -> Option<String> {
        list.map(|list| serde_json::to_string(list).unwrap_or_else(|_| "[]".to_owned()))
    }

    fn ids_param(ids: Option<&[i64]>) -> Option<String> {
        ids.map(|ids| serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_owned()))
    }

    fn read_list(row: &SqliteRow, column: &str) -> Result<Vec<String>> {
        let text: String = Self::get(row, column)?;
        serde_json::from_str(&text).map_err(json_error(column))
    }

    fn read_opt_list(row: &SqliteRow, column: &str) -> Result<Option<Vec<String>>> {
        let text: Option<String> = Self::get(row, column)?;
        text.map(|text| serde_json::from_str(&text).map_err(json_error(column)))
            .transpose()
    }

    fn read_opt_ids(row: &SqliteRow, column: &str) -> Result<Option<Vec<i64>>> {
        let text: Option<String> = Self::get(row, column)?;
        text.map(|text| serde_json::from_str(&text).map_err(json_error(column)))
            .transpose()
    }

    fn affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    /// Takes the database's write lock before reading (see [`SqliteStore`]).
    const NUMBERED_BATCH: bool = false;
    const BEGIN: &'static str = "BEGIN IMMEDIATE";
    const LATER_LEASE: &'static str = "MAX(COALESCE(lease_until, 0), $1)";
    const NAME_IN_LIST: &'static str = "name IN (SELECT value FROM json_each($2))";
    const JOB_ID_IN_LIST: &'static str = "j.id IN (SELECT value FROM json_each($1))";
    const SUCCESS_CHANGES_NOTHING: &'static str = SUCCESS_CHANGES_NOTHING;
}

/// A JSON array column that does not parse.
fn json_error(column: &str) -> impl FnOnce(serde_json::Error) -> StoreError + '_ {
    move |e| StoreError::database(format!("reading column {column}: {e}"))
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

/// Runs `$body` with `$conn: &mut SqliteConnection`, the writer, and returns once what it
/// committed is on disk ([`Writer::durably`]).
macro_rules! writing {
    ($self:ident, $conn:ident => $body:expr) => {{
        $self
            .writer
            .durably(async {
                let mut guard = $self.writer.lock().await;
                let $conn: &mut SqliteConnection = &mut guard;
                $body
            })
            .await
    }};
}

/// Runs `$body` with `$conn: &mut SqliteConnection`, the writer, and returns once what it
/// committed is on disk if `$changed(&answer)` ([`Writer::durably_if`]).
macro_rules! sweeping {
    ($self:ident, $conn:ident => $body:expr, $changed:expr) => {{
        $self
            .writer
            .durably_if(
                async {
                    let mut guard = $self.writer.lock().await;
                    let $conn: &mut SqliteConnection = &mut guard;
                    $body
                },
                $changed,
            )
            .await
    }};
}

/// Creates the database file `0600` when missing, and makes it and its `-wal` and `-shm`
/// files `0600` when they exist with another mode.
#[cfg(unix)]
fn private_files(db_path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let fail = |p: &std::path::Path, e: std::io::Error| {
        StoreError::database(format!("making {} private: {e}", p.display()))
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
                        StoreError::database(format!("creating {}: {e}", dir.display()))
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
            .map_err(|e| StoreError::database(format!("migrating the SQLite database: {e}")))?;
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
                StoreError::database(format!(
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
/// FULL` syncs inside every commit, on the one writer: it cost a large share of the jobs/s without
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
            .map_err(|e| StoreError::database(format!("syncing the SQLite WAL: {e}")))?;
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
/// syncs tens of megabytes while every write waits. So once
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
                // The writer's connection itself, not a `WriterGuard`: this is no write, and a
                // guard's release would wake the checkpointer again, every pass, while idle.
                let mut conn = writer.conn.lock().await;
                let _ = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&mut *conn)
                    .await;
            }
        }
    }
    pool.close().await;
}

/// What SQLite does its own way; [`crate::query::store!`] writes the rest of the
/// [`crate::Store`] impl.
impl SqliteStore {
    async fn insert_delivery(&self, d: &NewDelivery) -> Result<(i64, bool)> {
        self.writer
            .durably(async {
                self.deliveries
                    .store(d, || async { Ok(self.writer.lock().await) })
                    .await
            })
            .await
    }

    async fn apply(&self, pipeline_id: i64, version: i64, changes: &Changes) -> Result<bool> {
        writing!(self, conn => {
            let mut tx = conn
                .begin_with(Sqlite::BEGIN)
                .await
                .map_err(db("beginning a transaction"))?;
            // Under the write lock, nothing changes the pipeline between this read and the writes.
            let current: Option<(i64, i64)> = sqlx::query_as(&format!(
                "SELECT {VERSION}, p.project_id FROM pipelines p WHERE p.id = $1"
            ))
            .bind(pipeline_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("reading a pipeline's version"))?;
            Sqlite::apply_at(tx, pipeline_id, version, current, changes).await
        })
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
                    let tags = Sqlite::list_param(Some(&agent.tags));
                    let candidate_sql = candidate(agent);
                    // Without a candidate, answer from a reader and leave the writer to others:
                    // agents woken together mostly find nothing.
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
                        .begin_with(Sqlite::BEGIN)
                        .await
                        .map_err(db("beginning a transaction"))?;
                    // Under the write lock, the choice and the update cannot interleave with
                    // another claim.
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
                    let job = Sqlite::job_row(&row)?;
                    Sqlite::start_pipeline(&mut *tx, job.pipeline_id, now).await?;
                    tx.commit().await.map_err(db("committing a claim"))?;
                    Ok(Some(job))
                },
                Option::is_some,
            )
            .await
    }

    async fn append_log(&self, chunk: LogAppend<'_>) -> Result<i64> {
        let LogAppend {
            job_id,
            agent_id,
            offset,
            bytes,
            lease_until,
        } = chunk;
        writing!(self, conn => {
            let mut tx = conn
                .begin_with(Sqlite::BEGIN)
                .await
                .map_err(db("beginning a transaction"))?;
            let q = sqlx::query(
                "SELECT log_size FROM jobs WHERE id = ? AND status = 'running' AND agent_id = ?",
            )
            .bind(job_id)
            .bind(agent_id);
            let size: Option<i64> = Sqlite::row(&mut *tx, q, "reading a job's log size", |row| {
                Sqlite::get(row, "log_size")
            })
            .await?;
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
                let q = sqlx::query("INSERT INTO log_chunks (job_id, pos, bytes) VALUES (?, ?, ?)")
                    .bind(job_id)
                    .bind(size)
                    .bind(fresh);
                Sqlite::run(&mut *tx, q, "appending to a log").await?;
            }
            let q = sqlx::query(
                "UPDATE jobs SET log_size = ?, lease_until = MAX(COALESCE(lease_until, 0), ?) \
                 WHERE id = ?",
            )
            .bind(new_size)
            .bind(lease_until)
            .bind(job_id);
            Sqlite::run(&mut *tx, q, "updating a job's log size").await?;
            tx.commit().await.map_err(db("committing a log chunk"))?;
            Ok(new_size)
        })
    }

    async fn expire_leases(&self, now: Millis) -> Result<Vec<(i64, i64)>> {
        self.writer
            .durably_if(
                async {
                    let mut conn = self.writer.lock().await;
                    let mut expired: Vec<(i64, i64)> = sqlx::query_as(
                        "UPDATE jobs SET status = 'failed', \
                         failure_reason = 'runner_system_failure', \
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
}

crate::query::store!(SqliteStore, Sqlite, SqliteConnection, "sqlite");

#[cfg(test)]
mod tests {
    use sqlx::Row as _;

    use super::*;
    use crate::{NewAgent, Store};

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
                protocol: 3,
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
