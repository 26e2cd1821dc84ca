//! Runs one test body against a fresh SQLite file or a fresh PostgreSQL database.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gantry_store::{
    AgentRecord, NewAgent, NewDelivery, NewJob, Page, ProjectRecord, Store, connect,
};
use sqlx::Connection;

use crate::records::pipeline;

/// Runs `$body` with `$conn` a new connection to the database at `$url`, SQLite or PostgreSQL.
macro_rules! with_conn {
    ($url:expr, |$conn:ident| $body:expr) => {
        if $url.starts_with("sqlite:") {
            let mut $conn = sqlx::SqliteConnection::connect($url)
                .await
                .expect("connecting to SQLite");
            $body
        } else {
            let mut $conn = sqlx::PgConnection::connect($url)
                .await
                .expect("connecting to PostgreSQL");
            $body
        }
    };
}

/// What a test gets: a store on an empty database, and the means to open another one on it.
pub struct Harness {
    /// The store under test.
    pub store: Arc<dyn Store>,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Harness {
    /// Another store on the same database: a restarted server (SQLite) or a second server
    /// (PostgreSQL, a second pool).
    pub async fn open_another(&self) -> Arc<dyn Store> {
        connect(&self.url)
            .await
            .expect("opening the same database again")
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `sql` on a connection of its own, beside the store: for states no store call makes.
    pub async fn exec(&self, sql: &str) {
        with_conn!(&self.url, |conn| {
            sqlx::query(sql).execute(&mut conn).await.expect(sql);
        });
    }

    /// How many chunk rows the artifacts table holds, whatever upload they belong to (orphans too).
    pub async fn artifact_chunk_rows(&self) -> i64 {
        let sql = "SELECT COUNT(*) FROM artifact_chunks";
        with_conn!(&self.url, |conn| sqlx::query_scalar(sql)
            .fetch_one(&mut conn)
            .await
            .expect(sql))
    }

    /// Puts the database back to before migration 0006 (artifacts as one `archive` blob per job)
    /// holding `archives` (job id, archive), so that the next [`Harness::reopen`] migrates them.
    pub async fn rewind_to_single_row_artifacts(&self, archives: &[(i64, Vec<u8>)]) {
        let sqlite = self.url.starts_with("sqlite:");
        let blob = if sqlite { "BLOB" } else { "BYTEA" };
        let statements = [
            "DROP TABLE artifacts".to_string(),
            "DROP TABLE artifact_chunks".to_string(),
            "DROP TABLE artifact_uploads".to_string(),
            format!(
                "CREATE TABLE artifacts (job_id BIGINT PRIMARY KEY REFERENCES jobs (id), \
                 archive {blob} NOT NULL)"
            ),
            "DELETE FROM _sqlx_migrations WHERE version = 6".to_string(),
        ];
        let insert = if sqlite {
            "INSERT INTO artifacts (job_id, archive) VALUES (?, ?)"
        } else {
            "INSERT INTO artifacts (job_id, archive) VALUES ($1, $2)"
        };
        with_conn!(&self.url, |conn| {
            for sql in &statements {
                sqlx::query(sql).execute(&mut conn).await.expect(sql);
            }
            for (job, archive) in archives {
                sqlx::query(insert)
                    .bind(job)
                    .bind(archive)
                    .execute(&mut conn)
                    .await
                    .expect("storing an old archive");
            }
        });
    }

    /// Drops the store (as a stopped server would) and opens a new one on the same database.
    pub async fn reopen(self) -> Harness {
        let Harness { store, url, _dir } = self;
        assert_eq!(
            Arc::strong_count(&store),
            1,
            "the first store is still in use"
        );
        drop(store);
        let store = connect(&url).await.expect("reopening the database");
        Harness { store, url, _dir }
    }
}

/// Runs `test` on a new SQLite file in a directory that does not exist yet.
pub async fn sqlite<F, Fut>(test: F)
where
    F: FnOnce(Harness) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}/not/yet/gantry.db", dir.path().display());
    let store = connect(&url).await.expect("opening SQLite");
    assert_eq!(store.kind(), "sqlite");
    test(Harness {
        store,
        url,
        _dir: Some(dir),
    })
    .await;
}

/// Runs `test` on a new PostgreSQL database, created on the server that
/// `GANTRY_TEST_POSTGRES_URL` names and dropped afterwards (also when the test fails).
pub async fn postgres<F, Fut>(test: F)
where
    F: FnOnce(Harness) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Ok(admin_url) = std::env::var("GANTRY_TEST_POSTGRES_URL") else {
        panic!(
            "GANTRY_TEST_POSTGRES_URL is not set: start PostgreSQL with scripts/postgres.sh \
             (eval \"$(scripts/postgres.sh)\")"
        );
    };
    let name = database_name();
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| {
            panic!("connecting to {admin_url}: {e}; start PostgreSQL with scripts/postgres.sh")
        });
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("creating the test database");
    let url = with_database(&admin_url, &name);
    let outcome = tokio::spawn(async move {
        let store = connect(&url).await.expect("opening PostgreSQL");
        assert_eq!(store.kind(), "postgres");
        test(Harness {
            store,
            url,
            _dir: None,
        })
        .await;
    })
    .await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("dropping the test database");
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// `gantry_test_<unique>`.
fn database_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "gantry_test_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

// --- fixtures

/// A project named `name`.
pub async fn project(store: &dyn Store, name: &str) -> ProjectRecord {
    store
        .create_project(name, "{}", 1_000)
        .await
        .expect("creating a project")
}

/// A registered agent with `tags`.
pub async fn agent(store: &dyn Store, name: &str, tags: &[&str], untagged: bool) -> AgentRecord {
    let token_hash = format!("hash-of-{name}");
    store
        .register_agent(&NewAgent {
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            run_untagged: untagged,
            ..new_agent(name, &token_hash)
        })
        .await
        .expect("registering an agent");
    store
        .agent_by_token(&token_hash)
        .await
        .expect("reading an agent")
        .expect("the agent just registered")
}

/// A shell agent `name` of token hash `token_hash`, untagged and taking untagged jobs.
pub fn new_agent(name: &str, token_hash: &str) -> NewAgent {
    NewAgent {
        name: name.to_owned(),
        token_hash: token_hash.to_owned(),
        tags: Vec::new(),
        run_untagged: true,
        executor: "shell".to_owned(),
        concurrency: 1,
        version: "0.1.0".to_owned(),
        registered_at: 1_000,
        projects: None,
        protected_only: false,
        protocol: 3,
    }
}

/// Page `page` of `per_page` items.
pub fn page(page: i64, per_page: i64) -> Page {
    Page { page, per_page }
}

/// Creates a pipeline of `jobs` for project `project_id`; answers its id.
pub async fn create(store: &dyn Store, project_id: i64, jobs: Vec<NewJob>) -> i64 {
    store
        .create_pipeline(&pipeline(project_id, jobs))
        .await
        .expect("creating a pipeline")
}

/// A delivery of `project_id` with id `delivery_id`.
pub fn delivery(project_id: i64, delivery_id: &str, received_at: i64) -> NewDelivery {
    NewDelivery {
        project_id,
        forge: "gitlab".to_owned(),
        delivery_id: delivery_id.to_owned(),
        event: "push".to_owned(),
        payload: format!("{{\"delivery\":\"{delivery_id}\"}}").into_bytes(),
        trace_id: format!("trace-{delivery_id}"),
        received_at,
        push_key: None,
        push_key_since: 0,
    }
}
