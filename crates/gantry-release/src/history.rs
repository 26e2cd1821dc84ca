//! Deployment records and their file store: what `gantry run` records when a job deploys to an
//! environment (`environment:action: start`), and what `gantry env` and a rollback read.
//!
//! Layout, under a state directory (`.gantry/` for `gantry run`):
//! - `deployments/<environment>.json`: that environment's [`Deployment`]s, oldest first (the
//!   name is encoded so that `review/x` is one file name);
//! - `deployments/last-id`: the last id given, so ids increase per project directory;
//! - `deployments/.lock`: held while one writer reads and rewrites a file;
//! - `deployments/running/<id>.lock`: held (`flock`) by the process that records deployment `id`
//!   from [`History::start`] until it ends, so that a `running` record whose lock is free was
//!   left by a process that died ([`History::fail_abandoned`]);
//! - `deployments/snapshots/<id>/<job-slug>/`: the artifact store entries deployment `id` used
//!   (hard links where possible), so that a rollback to it re-deploys exactly those; kept for the
//!   last [`KEEP_SNAPSHOTS`] successful deployments of each environment (the directory exists,
//!   empty, for one that used none: a missing one was pruned).
//!
//! Every write replaces its file atomically (write a temporary file, then rename), under an
//! exclusive lock on `.lock`, so two `gantry run` in one directory never lose a record.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::Measurement;

/// The directory, under a state directory, that holds the records.
pub const DIR: &str = "deployments";

/// How many successful deployments of one environment keep their artifact snapshot.
pub const KEEP_SNAPSHOTS: usize = 10;

/// How a deployment stands: the server's statuses, spelled the same in records and tables.
pub use gantry_api::deployments::DeploymentStatus;

/// A variable in force for a deployment; a masked one's value is [`REDACTED`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedVariable {
    /// The name.
    pub key: String,
    /// The value, expanded; [`REDACTED`] when `masked`.
    pub value: String,
    /// Whether the variable is masked.
    #[serde(default)]
    pub masked: bool,
}

/// What stands for a masked variable's value in a record.
pub const REDACTED: &str = "[MASKED]";

/// One verification measurement of a deployment, with its progressive step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMeasurement {
    /// The step's weight, when the job has progressive steps of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u8>,
    /// The measurement.
    #[serde(flatten)]
    pub measurement: Measurement,
}

/// What a deployment is, before the store gives it an id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewDeployment {
    /// The environment's name (expanded).
    pub environment: String,
    /// The environment's URL (expanded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `deployment_tier`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The job that deploys.
    pub job: String,
    /// The pipeline's id.
    pub pipeline_id: u64,
    /// The commit deployed.
    pub sha: String,
    /// The branch or tag.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Who or what triggered it (the git user, else `$USER`).
    pub triggered_by: String,
    /// The variables in force (not the predefined ones), masked ones redacted.
    pub variables: Vec<RecordedVariable>,
    /// The jobs whose artifacts it used.
    pub artifacts: Vec<String>,
    /// When it started, RFC 3339 in UTC.
    pub started_at: String,
    /// The deployment this one rolls back, when it is a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    /// Whether the working tree had uncommitted changes when it deployed (a rollback to it
    /// re-deploys its commit as committed).
    #[serde(default)]
    pub dirty: bool,
    /// The job's `rollback_script`, run in place of a re-deploy when this deployment is rolled
    /// back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollback_script: Vec<String>,
}

/// A recorded deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// Its id: increasing per state directory, from 1.
    pub id: u64,
    /// How it stands.
    pub status: DeploymentStatus,
    /// What it is.
    #[serde(flatten)]
    pub spec: NewDeployment,
    /// When it finished, RFC 3339 in UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Its verification's measurements, in the order they were taken.
    #[serde(default)]
    pub measurements: Vec<StepMeasurement>,
    /// The rollback that replaced it, once it is [`DeploymentStatus::RolledBack`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_by: Option<u64>,
}

/// An environment and its last deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentSummary {
    /// The environment's name.
    pub name: String,
    /// Its newest deployment.
    pub last: Deployment,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No deployment was ever recorded to this environment.
    #[error("no environment `{0}`: no deployment was recorded to it")]
    UnknownEnvironment(String),
    /// No deployment with this id in this environment.
    #[error("environment `{environment}` has no deployment {id}")]
    UnknownDeployment {
        /// The environment.
        environment: String,
        /// The id.
        id: u64,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file does not hold records.
    #[error("{}: not a deployment record: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

/// The owner locks of the deployments this process has running, by lock file: taken in
/// [`History::start`], dropped (and the file removed) when the deployment ends.
static OWNED: Mutex<Vec<(PathBuf, Flock<File>)>> = Mutex::new(Vec::new());

/// The deployment records under one state directory.
#[derive(Clone, Debug)]
pub struct History {
    dir: PathBuf,
}

impl History {
    /// The records under `state_dir` (nothing is read or created yet).
    #[must_use]
    pub fn new(state_dir: &Path) -> History {
        History {
            dir: state_dir.join(DIR),
        }
    }

    /// Records a deployment that starts now: it gets the next id and the status `running`. This
    /// process owns it (holds its lock) until it ends.
    ///
    /// # Errors
    /// When the records cannot be read or written.
    pub fn start(&self, spec: NewDeployment) -> Result<Deployment, Error> {
        let _lock = self.lock()?;
        let id_path = self.dir.join("last-id");
        let last: u64 = match std::fs::read_to_string(&id_path) {
            Ok(s) => s.trim().parse().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => return Err(io(&id_path, source)),
        };
        // A lost `last-id` must not reuse an id that a record holds.
        let id = last.max(self.max_id()?) + 1;
        let deployment = Deployment {
            id,
            status: DeploymentStatus::Running,
            spec,
            finished_at: None,
            measurements: Vec::new(),
            rolled_back_by: None,
        };
        // The owner's lock is held before the record shows: a `running` record with a free lock
        // was left by a process that ended.
        let path = self.owner_lock(id);
        let owner = match try_lock(&path)? {
            Some(owner) => owner,
            None => return Err(io(&path, Errno::EWOULDBLOCK.into())),
        };
        let mut all = self.read(&deployment.spec.environment)?;
        all.push(deployment.clone());
        self.write(&deployment.spec.environment, &all)?;
        write_atomic(&id_path, id.to_string().as_bytes())?;
        OWNED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((path, owner));
        Ok(deployment)
    }

    /// Changes deployment `id` of `environment` with `change`, and returns it as written. A
    /// rollback uses this to mark the deployment it replaces [`DeploymentStatus::RolledBack`].
    ///
    /// # Errors
    /// When there is no such deployment, or the records cannot be read or written.
    pub fn update(
        &self,
        environment: &str,
        id: u64,
        change: impl FnOnce(&mut Deployment),
    ) -> Result<Deployment, Error> {
        let _lock = self.lock()?;
        let mut all = self.read(environment)?;
        let Some(d) = all.iter_mut().find(|d| d.id == id) else {
            return Err(Error::UnknownDeployment {
                environment: environment.to_string(),
                id,
            });
        };
        change(d);
        let out = d.clone();
        self.write(environment, &all)?;
        if out.status != DeploymentStatus::Running {
            self.release(id);
        }
        Ok(out)
    }

    /// Marks `failed` every `running` deployment of `environment` whose owner (the process that
    /// started it) has ended without ending it, as a killed `gantry run` leaves them; answers
    /// their ids.
    ///
    /// # Errors
    /// When the records or a lock file cannot be read or written.
    pub fn fail_abandoned(&self, environment: &str) -> Result<Vec<u64>, Error> {
        let _lock = self.lock()?;
        let mut all = self.read(environment)?;
        let mut ids = Vec::new();
        for d in all
            .iter_mut()
            .filter(|d| d.status == DeploymentStatus::Running)
        {
            // Taking the lock proves its owner gone; dropping it frees it again.
            if try_lock(&self.owner_lock(d.id))?.is_some() {
                d.status = DeploymentStatus::Failed;
                d.finished_at = Some(now());
                ids.push(d.id);
            }
        }
        if !ids.is_empty() {
            self.write(environment, &all)?;
            for &id in &ids {
                let _ = std::fs::remove_file(self.owner_lock(id));
            }
        }
        Ok(ids)
    }

    /// Where the lock of deployment `id`'s owner is.
    fn owner_lock(&self, id: u64) -> PathBuf {
        self.dir.join("running").join(format!("{id}.lock"))
    }

    /// Frees deployment `id`'s owner lock if this process holds it, and removes its file (under
    /// the store's lock, so no other process is taking it meanwhile).
    fn release(&self, id: u64) {
        let path = self.owner_lock(id);
        let mut owned = OWNED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = owned.iter().position(|(p, _)| *p == path) {
            let _ = std::fs::remove_file(&path);
            owned.swap_remove(i);
        }
    }

    /// Ends deployment `id` of `environment`: its status, its end time and its measurements.
    ///
    /// # Errors
    /// As [`History::update`].
    pub fn finish(
        &self,
        environment: &str,
        id: u64,
        status: DeploymentStatus,
        finished_at: String,
        measurements: Vec<StepMeasurement>,
    ) -> Result<Deployment, Error> {
        self.update(environment, id, |d| {
            d.status = status;
            d.finished_at = Some(finished_at);
            d.measurements = measurements;
        })
    }

    /// Marks deployment `id` of `environment` rolled back by deployment `by`, in one atomic write.
    ///
    /// # Errors
    /// As [`History::update`].
    pub fn mark_rolled_back(
        &self,
        environment: &str,
        id: u64,
        by: u64,
    ) -> Result<Deployment, Error> {
        self.update(environment, id, |d| {
            d.status = DeploymentStatus::RolledBack;
            d.rolled_back_by = Some(by);
        })
    }

    /// Deployment `id` of `environment`.
    ///
    /// # Errors
    /// [`Error::UnknownDeployment`] when there is none; or when the records cannot be read.
    pub fn get(&self, environment: &str, id: u64) -> Result<Deployment, Error> {
        self.read(environment)?
            .into_iter()
            .find(|d| d.id == id)
            .ok_or_else(|| Error::UnknownDeployment {
                environment: environment.to_string(),
                id,
            })
    }

    /// The deployment a rollback of deployment `from` of `environment` goes back to by default:
    /// the newest earlier one that succeeded ([`previous_success`]); `None` when there is none.
    ///
    /// # Errors
    /// When the records cannot be read.
    pub fn target(&self, environment: &str, from: u64) -> Result<Option<Deployment>, Error> {
        Ok(previous_success(&self.read(environment)?, from).cloned())
    }

    /// Where deployment `id`'s artifact snapshot is: one artifact store entry per job slug.
    #[must_use]
    pub fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.dir.join("snapshots").join(id.to_string())
    }

    /// Snapshots the artifact store entries `entries` (directories, each kept under its own file
    /// name) for deployment `id`: hard links where possible, else copies. Entries that do not
    /// exist are left out.
    ///
    /// # Errors
    /// When a file cannot be linked or copied.
    pub fn snapshot(&self, id: u64, entries: &[PathBuf]) -> Result<(), Error> {
        let dir = self.snapshot_dir(id);
        std::fs::create_dir_all(&dir).map_err(|source| io(&dir, source))?;
        for entry in entries.iter().filter(|e| e.is_dir()) {
            let Some(name) = entry.file_name() else {
                continue;
            };
            link_tree(entry, &dir.join(name))?;
        }
        Ok(())
    }

    /// Whether deployment `id` of `environment` has no artifact snapshot because pruning removed
    /// it: it is not among the [`KEEP_SNAPSHOTS`] newest successful ones, and its directory is
    /// gone. (A record written before snapshots were always made has none for another reason.)
    ///
    /// # Errors
    /// When the records cannot be read.
    pub fn snapshot_pruned(&self, environment: &str, id: u64) -> Result<bool, Error> {
        if self.snapshot_dir(id).is_dir() {
            return Ok(false);
        }
        let newer_successes = self
            .read(environment)?
            .iter()
            .filter(|d| d.status == DeploymentStatus::Success && d.id >= id)
            .count();
        Ok(newer_successes > KEEP_SNAPSHOTS)
    }

    /// Removes the artifact snapshots of `environment`'s deployments except those of the
    /// [`KEEP_SNAPSHOTS`] newest successful ones and of the running ones.
    ///
    /// # Errors
    /// When the records cannot be read or a snapshot cannot be removed.
    pub fn prune_snapshots(&self, environment: &str) -> Result<(), Error> {
        let mut all = self.read(environment)?;
        all.sort_by_key(|d| std::cmp::Reverse(d.id));
        let mut kept = 0;
        for d in &all {
            let keep = match d.status {
                DeploymentStatus::Running => true,
                DeploymentStatus::Success => {
                    kept += 1;
                    kept <= KEEP_SNAPSHOTS
                }
                _ => false,
            };
            let dir = self.snapshot_dir(d.id);
            if !keep && dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|source| io(&dir, source))?;
            }
        }
        Ok(())
    }

    /// The deployments to `environment`, newest first.
    ///
    /// # Errors
    /// [`Error::UnknownEnvironment`] when none was ever recorded; or when the records cannot be
    /// read.
    pub fn history(&self, environment: &str) -> Result<Vec<Deployment>, Error> {
        let mut all = self.read(environment)?;
        if all.is_empty() {
            return Err(Error::UnknownEnvironment(environment.to_string()));
        }
        all.sort_by_key(|d| std::cmp::Reverse(d.id));
        Ok(all)
    }

    /// Every environment with a deployment, by name, each with its newest deployment.
    ///
    /// # Errors
    /// When the records cannot be read.
    pub fn environments(&self) -> Result<Vec<EnvironmentSummary>, Error> {
        let mut out = Vec::new();
        for path in self.files()? {
            let all = read_file(&path)?;
            if let Some(last) = all.into_iter().max_by_key(|d| d.id) {
                out.push(EnvironmentSummary {
                    name: last.spec.environment.clone(),
                    last,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn files(&self) -> Result<Vec<PathBuf>, Error> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io(&self.dir, source)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(|source| io(&self.dir, source))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".json") && !name.starts_with('.') {
                files.push(path);
            }
        }
        Ok(files)
    }

    fn max_id(&self) -> Result<u64, Error> {
        let mut max = 0;
        for path in self.files()? {
            max = read_file(&path)?.iter().map(|d| d.id).fold(max, u64::max);
        }
        Ok(max)
    }

    fn path(&self, environment: &str) -> PathBuf {
        self.dir.join(format!("{}.json", file_name(environment)))
    }

    fn read(&self, environment: &str) -> Result<Vec<Deployment>, Error> {
        read_file(&self.path(environment))
    }

    fn write(&self, environment: &str, all: &[Deployment]) -> Result<(), Error> {
        let path = self.path(environment);
        let mut text = serde_json::to_vec_pretty(all).map_err(|source| Error::Corrupt {
            path: path.clone(),
            source,
        })?;
        text.push(b'\n');
        write_atomic(&path, &text)
    }

    /// Creates the directory and holds its lock until the file is dropped.
    fn lock(&self) -> Result<Flock<File>, Error> {
        std::fs::create_dir_all(&self.dir).map_err(|source| io(&self.dir, source))?;
        let path = self.dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| io(&path, source))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| io(&path, std::io::Error::from(e)))
    }
}

/// Takes the exclusive lock on `path` (created with its directory) without waiting; `None` when
/// another holds it.
fn try_lock(path: &Path) -> Result<Option<Flock<File>>, Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| io(path, source))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(held) => Ok(Some(held)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(io(path, e.into())),
    }
}

/// The deployment a rollback from `from` goes back to: the newest deployment before it that
/// succeeded. `history` is one environment's, in any order.
#[must_use]
pub fn previous_success(history: &[Deployment], from: u64) -> Option<&Deployment> {
    history
        .iter()
        .filter(|d| d.id < from && d.status == DeploymentStatus::Success)
        .max_by_key(|d| d.id)
}

/// The current time, RFC 3339 in UTC, to the second.
#[must_use]
pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::MAX)
        .to_string()
}

/// An environment name as one file name: ASCII letters, digits, `-` and `.` stay, every other
/// byte is `_` and two hex digits (`review/x` is `review_2fx`).
fn file_name(environment: &str) -> String {
    let mut out = String::with_capacity(environment.len());
    for b in environment.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || (b == b'.' && !out.is_empty()) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// Makes `to` a copy of the tree `from`: directories made, files hard-linked (copied where a
/// link cannot be made), symbolic links made again.
pub fn link_tree(from: &Path, to: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(to).map_err(|source| io(to, source))?;
    for entry in std::fs::read_dir(from).map_err(|source| io(from, source))? {
        let entry = entry.map_err(|source| io(from, source))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(|source| io(&src, source))?;
        if kind.is_dir() {
            link_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&src).map_err(|source| io(&src, source))?;
            std::os::unix::fs::symlink(target, &dst).map_err(|source| io(&dst, source))?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(|source| io(&dst, source))?;
        }
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<Vec<Deployment>, Error> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::Corrupt {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(io(path, source)),
    }
}

/// Writes `path` whole or not at all: a temporary file beside it, synced, then renamed.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = File::create(&tmp).map_err(|source| io(&tmp, source))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| io(&tmp, source))?;
    std::fs::rename(&tmp, path).map_err(|source| io(path, source))
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Kind, Phase};

    fn spec(environment: &str, job: &str) -> NewDeployment {
        NewDeployment {
            environment: environment.into(),
            url: None,
            tier: None,
            job: job.into(),
            pipeline_id: 7,
            sha: "abc".into(),
            git_ref: "main".into(),
            triggered_by: "ada".into(),
            variables: vec![RecordedVariable {
                key: "TOKEN".into(),
                value: REDACTED.into(),
                masked: true,
            }],
            artifacts: vec!["build".into()],
            started_at: "2026-01-01T00:00:00Z".into(),
            rollback_of: None,
            dirty: false,
            rollback_script: Vec::new(),
        }
    }

    fn measurement() -> StepMeasurement {
        StepMeasurement {
            weight: Some(10),
            measurement: Measurement::new(
                Kind::Prometheus,
                "error-rate",
                Some(0.01),
                "<= 0.05".into(),
                Phase::Pass,
                None,
            ),
        }
    }

    #[test]
    fn records_start_and_finish_and_lists_newest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let h = History::new(tmp.path());
        let first = h.start(spec("production", "deploy")).unwrap();
        assert_eq!((first.id, first.status), (1, DeploymentStatus::Running));
        h.finish(
            "production",
            1,
            DeploymentStatus::Success,
            "2026-01-01T00:01:00Z".into(),
            vec![measurement()],
        )
        .unwrap();
        let review = h.start(spec("review/x", "review")).unwrap();
        let second = h.start(spec("production", "deploy")).unwrap();
        assert_eq!((review.id, second.id), (2, 3));
        h.finish(
            "production",
            3,
            DeploymentStatus::Failed,
            "2026-01-01T00:02:00Z".into(),
            Vec::new(),
        )
        .unwrap();

        // A second store over the same directory reads what the first wrote.
        let h = History::new(tmp.path());
        let prod = h.history("production").unwrap();
        let rows: Vec<_> = prod.iter().map(|d| (d.id, d.status)).collect();
        assert_eq!(
            rows,
            [
                (3, DeploymentStatus::Failed),
                (1, DeploymentStatus::Success)
            ]
        );
        assert_eq!(prod[1].measurements, [measurement()]);
        assert_eq!(prod[1].finished_at.as_deref(), Some("2026-01-01T00:01:00Z"));

        let envs = h.environments().unwrap();
        let names: Vec<_> = envs.iter().map(|e| (e.name.as_str(), e.last.id)).collect();
        assert_eq!(names, [("production", 3), ("review/x", 2)]);
        assert_eq!(h.history("review/x").unwrap()[0].spec.job, "review");
    }

    #[test]
    fn record_json_names_its_fields_and_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let h = History::new(tmp.path());
        let d = h.start(spec("production", "deploy")).unwrap();
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["ref"], "main");
        assert_eq!(json["status"], "running");
        assert_eq!(json["variables"][0]["value"], REDACTED);
        let back: Deployment = serde_json::from_value(json).unwrap();
        assert_eq!(back, d);
        let rolled = h
            .update("production", d.id, |d| {
                d.status = DeploymentStatus::RolledBack
            })
            .unwrap();
        assert_eq!(
            serde_json::to_value(&rolled).unwrap()["status"],
            "rolled_back"
        );
    }

    #[test]
    fn unknown_environment_and_deployment_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let h = History::new(tmp.path());
        assert!(h.environments().unwrap().is_empty());
        let e = h.history("staging").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no environment `staging`: no deployment was recorded to it"
        );
        h.start(spec("staging", "deploy")).unwrap();
        assert!(matches!(
            h.update("staging", 9, |_| {}),
            Err(Error::UnknownDeployment { id: 9, .. })
        ));
    }

    #[test]
    fn ids_never_repeat_when_last_id_is_lost() {
        let tmp = tempfile::tempdir().unwrap();
        let h = History::new(tmp.path());
        h.start(spec("a", "j")).unwrap();
        h.start(spec("b", "j")).unwrap();
        std::fs::remove_file(tmp.path().join(DIR).join("last-id")).unwrap();
        assert_eq!(h.start(spec("a", "j")).unwrap().id, 3);
    }

    #[test]
    fn concurrent_writers_lose_no_record() {
        let tmp = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let h = History::new(tmp.path());
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        let d = h.start(spec("production", "deploy")).unwrap();
                        h.finish(
                            "production",
                            d.id,
                            DeploymentStatus::Success,
                            now(),
                            Vec::new(),
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let all = History::new(tmp.path()).history("production").unwrap();
        let mut ids: Vec<u64> = all.iter().map(|d| d.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=40).collect::<Vec<_>>());
        assert!(all.iter().all(|d| d.status == DeploymentStatus::Success));
    }

    #[test]
    fn rollback_target_is_the_newest_earlier_success() {
        let d = |id, status| Deployment {
            id,
            status,
            spec: spec("p", "j"),
            finished_at: None,
            measurements: Vec::new(),
            rolled_back_by: None,
        };
        let h = [
            d(1, DeploymentStatus::Success),
            d(2, DeploymentStatus::Success),
            d(3, DeploymentStatus::Failed),
            d(4, DeploymentStatus::Running),
        ];
        assert_eq!(previous_success(&h, 4).map(|d| d.id), Some(2));
        assert_eq!(previous_success(&h, 2).map(|d| d.id), Some(1));
        assert_eq!(previous_success(&h, 1), None);
    }

    /// A deployment to production that ended `status`, with `snapshot` as its artifacts.
    fn ended(h: &History, status: DeploymentStatus, snapshot: &[PathBuf]) -> Deployment {
        let d = h.start(spec("production", "deploy")).unwrap();
        h.snapshot(d.id, snapshot).unwrap();
        h.finish("production", d.id, status, now(), Vec::new())
            .unwrap()
    }

    #[test]
    fn a_rollback_marks_what_it_replaced_and_finds_its_target() {
        let tmp = tempfile::tempdir().unwrap();
        let h = History::new(tmp.path());
        let v1 = ended(&h, DeploymentStatus::Success, &[]);
        let v2 = h.start(spec("production", "deploy")).unwrap();
        assert_eq!(
            h.target("production", v2.id).unwrap().map(|d| d.id),
            Some(v1.id)
        );
        assert_eq!(h.target("production", v1.id).unwrap(), None);
        let rollback = h
            .start(NewDeployment {
                rollback_of: Some(v2.id),
                ..spec("production", "deploy")
            })
            .unwrap();
        let marked = h
            .mark_rolled_back("production", v2.id, rollback.id)
            .unwrap();
        assert_eq!(marked.status, DeploymentStatus::RolledBack);
        let again = h.get("production", v2.id).unwrap();
        assert_eq!(again.rolled_back_by, Some(rollback.id));
        let json = serde_json::to_value(h.get("production", rollback.id).unwrap()).unwrap();
        assert_eq!(json["rollback_of"], v2.id);
        assert_eq!(json["dirty"], false);
        assert!(matches!(
            h.get("production", 99),
            Err(Error::UnknownDeployment { id: 99, .. })
        ));
    }

    #[test]
    fn snapshots_link_the_entries_and_only_recent_successes_keep_theirs() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("artifacts").join("build");
        std::fs::create_dir_all(store.join("files")).unwrap();
        std::fs::write(store.join("files").join("app.bin"), "v1").unwrap();
        let h = History::new(tmp.path());
        let entries = [store.clone(), tmp.path().join("absent")];
        let ids: Vec<u64> = (0..=KEEP_SNAPSHOTS)
            .map(|_| ended(&h, DeploymentStatus::Success, &entries).id)
            .collect();
        let failed = ended(&h, DeploymentStatus::Failed, &entries);
        // A newer run replaces the store's entry: the snapshot keeps what the deployment used.
        std::fs::remove_file(store.join("files").join("app.bin")).unwrap();
        std::fs::write(store.join("files").join("app.bin"), "v2").unwrap();
        let first = h
            .snapshot_dir(ids[1])
            .join("build")
            .join("files")
            .join("app.bin");
        assert_eq!(std::fs::read_to_string(first).unwrap(), "v1");
        assert!(!h.snapshot_dir(ids[1]).join("absent").exists());
        h.prune_snapshots("production").unwrap();
        assert!(
            !h.snapshot_dir(ids[0]).exists(),
            "the 11th newest success is pruned"
        );
        assert!(
            !h.snapshot_dir(failed.id).exists(),
            "a failed deployment's is pruned"
        );
        assert!(ids[1..].iter().all(|&id| h.snapshot_dir(id).exists()));
        // Only the pruned one counts as pruned: a kept one whose directory is missing (a record
        // from before snapshots were always made) does not.
        assert!(h.snapshot_pruned("production", ids[0]).unwrap());
        assert!(!h.snapshot_pruned("production", ids[1]).unwrap());
        std::fs::remove_dir_all(h.snapshot_dir(ids[2])).unwrap();
        assert!(!h.snapshot_pruned("production", ids[2]).unwrap());
    }

    #[test]
    fn a_running_deployment_whose_owner_ended_is_failed_and_a_live_one_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let h = History::new(tmp.path());
        let live = h.start(spec("production", "deploy")).unwrap();
        let left = h.start(spec("production", "deploy")).unwrap();
        assert_eq!(h.fail_abandoned("production").unwrap(), Vec::<u64>::new());
        // The state a killed owner leaves: its record running, its lock free.
        OWNED
            .lock()
            .unwrap()
            .retain(|(p, _)| *p != h.owner_lock(left.id));
        assert_eq!(h.fail_abandoned("production").unwrap(), [left.id]);
        assert_eq!(
            h.get("production", left.id).unwrap().status,
            DeploymentStatus::Failed
        );
        assert!(!h.owner_lock(left.id).exists());
        // Ending a deployment frees its lock: nothing is left running.
        h.finish(
            "production",
            live.id,
            DeploymentStatus::Success,
            now(),
            Vec::new(),
        )
        .unwrap();
        assert!(!h.owner_lock(live.id).exists());
        assert!(h.fail_abandoned("production").unwrap().is_empty());
    }

    #[test]
    fn a_deployment_that_used_no_artifacts_has_an_empty_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let h = History::new(tmp.path());
        let d = ended(&h, DeploymentStatus::Success, &[tmp.path().join("absent")]);
        let dir = h.snapshot_dir(d.id);
        assert!(dir.is_dir());
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
    }

    #[test]
    fn environment_names_make_distinct_file_names() {
        assert_eq!(file_name("production"), "production");
        assert_eq!(file_name("review/x"), "review_2fx");
        assert_ne!(file_name("review/x"), file_name("review_x"));
        assert_eq!(file_name(".."), "_2e.");
    }
}
