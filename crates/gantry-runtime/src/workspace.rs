//! Job workspaces: each job runs in its own directory, never in the user's working tree.
//!
//! At the start of a pipeline the project's files are listed (`git ls-files --cached --others
//! --exclude-standard`: tracked files with their uncommitted changes, plus untracked files that are
//! not ignored; deleted files and anything under `.gantry/` are left out) and their `lstat` taken.
//! The snapshot store ([`store`], `state_dir/snapshots/`) keeps generations of those files across
//! pipelines: a pipeline reuses the newest one and copies only the files whose stat changed (copies
//! keep symlinks as symlinks and file modes; `std::fs::copy` uses `copy_file_range`, which shares
//! extents on btrfs and XFS). A pipeline holds its generation, unchanged, until it ends.
//!
//! Each job attempt then gets `state_dir/builds/<pipeline>/<job-slug>`:
//! - where overlayfs can be mounted (root, and a file system it accepts as upper layer; probed once
//!   per pipeline), an overlay of the generation with the job's own upper layer in
//!   `builds/<pipeline>/.layers/<job-slug>/`. One `mount` per job, whatever the project's size;
//!   nothing a job writes, even in place, reaches the snapshot or another job. The overlay is detached
//!   when the attempt ends (its directory is then empty; the job's changes stay in its upper layer).
//! - elsewhere, the generation's directories and a hard link to each of its files: one `link` per
//!   file, whatever the file sizes.
//!
//! New files a job creates stay in its own directory either way.
//!
//! # Caveat (hard links only)
//! The hard links share inodes with the snapshot. A job that writes *in place* into a project file
//! (`echo x >> README.md`, or a tool that opens the file for writing instead of replacing it) changes
//! the snapshot, and so what later jobs of the same pipeline see in that file. The next pipeline finds
//! the changed copy by its stat and copies the file again. The user's working tree is never affected.
//! Tools that replace files (compilers, `sed -i`, editors, git, and gantry's own artifact and cache
//! restores) are safe.

mod overlay;
mod store;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};

pub(crate) use overlay::unmount_all;

/// Above this many files, copies, links and stats are spread over threads.
const PARALLEL_THRESHOLD: usize = 2000;

/// What is compared of a file to tell whether it changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stat {
    size: i64,
    ino: i64,
    mtime_ns: i64,
    ctime_ns: i64,
    mode: i64,
}

/// What a listed project path is.
#[derive(Debug)]
enum Kind {
    File,
    Symlink(PathBuf),
}

/// A listed project file or symlink.
#[derive(Debug)]
struct Entry {
    rel: PathBuf,
    kind: Kind,
    stat: Stat,
}

/// What [`Snapshot::build`] needs to know.
pub(crate) struct Setup<'a> {
    pub project_dir: &'a Path,
    pub state_dir: &'a Path,
    /// This pipeline's builds directory, `state_dir/builds/<pipeline>`.
    pub builds_dir: &'a Path,
    pub in_place: bool,
    /// The caller's listing of the project's files.
    pub given: Option<Vec<PathBuf>>,
    /// A job will ask for [`Snapshot::listed`].
    pub untracked: bool,
    /// Try overlay workspaces.
    pub overlay: bool,
}

/// The project's files as of the start of the pipeline.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Where the files are: the generation, or the project directory itself when running in place.
    root: PathBuf,
    /// Files and symlinks, relative, sorted.
    entries: Vec<Entry>,
    /// Every directory that contains an entry, parents before children.
    dirs: Vec<PathBuf>,
    /// The listed paths, built on first use (for `untracked`).
    listed: OnceLock<HashSet<PathBuf>>,
    /// Running in place in a git checkout: nothing was listed up front, and [`Snapshot::listed`] asks
    /// git for the tracked files (the project dir and the state dir).
    tracked_by_git: Option<(PathBuf, PathBuf)>,
    /// The generation this pipeline holds.
    lease: Option<store::Lease>,
    /// Job workspaces are overlays (until a mount fails).
    overlay: AtomicBool,
    /// Held while the pipeline runs, so that no other run discards its builds directory.
    _builds_lock: Option<Flock<File>>,
}

/// A job's workspace: detaches its overlay, if it has one, when dropped.
#[derive(Debug)]
#[must_use]
pub(crate) struct View {
    mounted: Option<PathBuf>,
}

impl Drop for View {
    fn drop(&mut self) {
        if let Some(m) = self.mounted.take() {
            overlay::unmount(&m);
        }
    }
}

fn lock(path: &Path, arg: FlockArg) -> io::Result<Flock<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    Flock::lock(file, arg).map_err(|(_, e)| io::Error::from(e))
}

/// A name no other call, here or in another process, returns.
pub(crate) fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{nanos}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

impl Snapshot {
    /// Lists the project and, unless in place, brings the snapshot store up to date and holds a
    /// generation for this pipeline.
    pub(crate) fn build(setup: Setup<'_>) -> io::Result<Snapshot> {
        let Setup {
            project_dir,
            state_dir,
            builds_dir,
            in_place,
            given,
            untracked,
            overlay,
        } = setup;
        let checkout = project_dir.join(".git").exists();
        let mut snapshot = Snapshot {
            root: project_dir.to_path_buf(),
            entries: Vec::new(),
            dirs: Vec::new(),
            listed: OnceLock::new(),
            tracked_by_git: None,
            lease: None,
            overlay: AtomicBool::new(false),
            _builds_lock: None,
        };
        if in_place && given.is_none() && (checkout || !untracked) {
            // In place, nothing is copied, and the listing only serves `untracked`. In a checkout
            // (an agent's), GitLab defines those as the files git does not track, so git is asked
            // when a job wants them, not for every job; elsewhere (`GIT_STRATEGY: none`) no job
            // of this run wants them.
            snapshot.tracked_by_git =
                checkout.then(|| (project_dir.to_path_buf(), state_dir.to_path_buf()));
            return Ok(snapshot);
        }
        let listing = list(project_dir, state_dir, given)?;
        let started_ns = now_ns();
        let entries = par_map(&listing, |rel| {
            let path = project_dir.join(rel);
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let kind = if meta.file_type().is_symlink() {
                Kind::Symlink(fs::read_link(&path)?)
            } else if meta.is_file() {
                Kind::File
            } else {
                // Directories (submodules) and special files are left out.
                return Ok(None);
            };
            Ok(Some(Entry {
                rel: rel.clone(),
                kind,
                stat: Stat::of(&meta),
            }))
        })?;
        snapshot.entries = entries.into_iter().flatten().collect();
        let mut dirs: HashSet<&Path> = HashSet::new();
        for e in &snapshot.entries {
            let mut p = e.rel.parent();
            while let Some(d) = p {
                if d.as_os_str().is_empty() || !dirs.insert(d) {
                    break;
                }
                p = d.parent();
            }
        }
        let mut dirs: Vec<PathBuf> = dirs.into_iter().map(Path::to_path_buf).collect();
        dirs.sort();
        snapshot.dirs = dirs;
        if in_place {
            return Ok(snapshot);
        }

        let builds_root = builds_dir.parent().unwrap_or(builds_dir);
        fs::create_dir_all(builds_root)?;
        let name = builds_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        snapshot._builds_lock = Some(
            lock(
                &builds_root.join(format!("{name}.lock")),
                FlockArg::LockExclusiveNonblock,
            )
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("another run uses {}: {e}", builds_dir.display()),
                )
            })?,
        );
        let use_overlay = overlay && overlay::works(builds_root);
        let lease = store::acquire(
            &state_dir.join("snapshots"),
            project_dir,
            &snapshot.entries,
            &snapshot.dirs,
            started_ns,
            !use_overlay,
            &state_dir.join("trash"),
        )?;
        snapshot.root = std::path::absolute(&lease.dir)?;
        snapshot.lease = Some(lease);
        snapshot.overlay = AtomicBool::new(use_overlay);
        Ok(snapshot)
    }

    /// Makes `dir` a fresh workspace (whatever was there is removed): an overlay of the snapshot, or
    /// else a tree of hard links to it.
    pub(crate) fn populate(&self, dir: &Path) -> io::Result<View> {
        let parent = dir.parent().unwrap_or(dir);
        if let (Ok(d), Ok(p)) = (fs::metadata(dir), fs::metadata(parent)) {
            if d.dev() != p.dev() {
                // Still mounted (a run that died): never delete through a mount.
                overlay::unmount(dir);
            }
        }
        crate::files::remove(dir)?;
        let layers = parent
            .join(".layers")
            .join(dir.file_name().unwrap_or_default());
        crate::files::remove(&layers)?;
        fs::create_dir_all(dir)?;
        if self.overlay.load(Ordering::Relaxed) {
            let (upper, work) = (layers.join("upper"), layers.join("work"));
            fs::create_dir_all(&upper)?;
            fs::create_dir_all(&work)?;
            let mounted = overlay::mount(
                &self.root,
                &std::path::absolute(&upper)?,
                &std::path::absolute(&work)?,
                dir,
            );
            if mounted.is_ok() {
                return Ok(View {
                    mounted: Some(dir.to_path_buf()),
                });
            }
            // From now on, hard links.
            self.overlay.store(false, Ordering::Relaxed);
            if let Some(lease) = &self.lease {
                lease.mark_linked()?;
            }
            crate::files::remove(&layers)?;
        }
        for d in &self.dirs {
            match fs::create_dir(dir.join(d)) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        par_map(&self.entries, |e| match &e.kind {
            Kind::File => fs::hard_link(self.root.join(&e.rel), dir.join(&e.rel)),
            Kind::Symlink(target) => std::os::unix::fs::symlink(target, dir.join(&e.rel)),
        })?;
        Ok(View { mounted: None })
    }

    /// The paths listed at the start of the pipeline; files outside it are "untracked".
    pub(crate) fn listed(&self) -> &HashSet<PathBuf> {
        self.listed.get_or_init(|| match &self.tracked_by_git {
            Some((project_dir, state_dir)) => tracked(project_dir, state_dir)
                .or_else(|_| list(project_dir, state_dir, None))
                .unwrap_or_default()
                .into_iter()
                .collect(),
            None => self.entries.iter().map(|e| e.rel.clone()).collect(),
        })
    }
}

/// Whether a listed path belongs to the project (not git's, Gantry's or the state dir's).
fn keeper(project_dir: &Path, state_dir: &Path) -> impl Fn(&Path) -> bool {
    let state_rel = state_dir
        .strip_prefix(project_dir)
        .ok()
        .map(Path::to_path_buf);
    move |p: &Path| {
        !p.starts_with(".gantry")
            && !p.starts_with(".git")
            && state_rel.as_ref().is_none_or(|s| !p.starts_with(s))
    }
}

/// `git`, running no code that the repository names: a job may have written the checkout's `.git`
/// (hooks, `core.fsmonitor`, also through an `include.path`) before its files are listed. The
/// command line wins over every configuration file; the user's own configuration (such as
/// `core.excludesFile` for `gantry run`) still counts.
fn git() -> Command {
    let mut c = Command::new("git");
    c.args([
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "core.fsmonitor=false",
    ]);
    c
}

/// The files git tracks in `project_dir`.
fn tracked(project_dir: &Path, state_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let keep = keeper(project_dir, state_dir);
    let out = git()
        .args(["ls-files", "-z", "--cached"])
        .current_dir(project_dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other("git ls-files failed"));
    }
    Ok(out
        .stdout
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| PathBuf::from(OsStr::from_bytes(s)))
        .filter(|p| keep(p))
        .collect())
}

/// Lists the project's files relative to `project_dir`: `given` when the caller listed them, else with
/// git when it is a repository, else by walking.
fn list(
    project_dir: &Path,
    state_dir: &Path,
    given: Option<Vec<PathBuf>>,
) -> io::Result<Vec<PathBuf>> {
    let keep = keeper(project_dir, state_dir);
    if let Some(mut paths) = given {
        paths.retain(|p| keep(p));
        paths.sort_unstable();
        paths.dedup();
        return Ok(paths);
    }
    let output = git()
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(project_dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    if let Some(out) = output.ok().filter(|o| o.status.success()) {
        let mut paths: Vec<PathBuf> = out
            .stdout
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| PathBuf::from(OsStr::from_bytes(s)))
            .filter(|p| keep(p))
            .collect();
        paths.sort_unstable();
        paths.dedup();
        return Ok(paths);
    }
    let mut paths = Vec::new();
    crate::files::walk(project_dir, Path::new(""), &mut |p| {
        if keep(p) {
            paths.push(p.to_path_buf());
        }
    })?;
    Ok(paths)
}

/// Runs `f` on every item, over several threads when there are many, and returns the results in
/// order; the first error wins.
fn par_map<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> io::Result<R> + Sync,
) -> io::Result<Vec<R>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if items.len() < PARALLEL_THRESHOLD || threads < 2 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(|| c.iter().map(&f).collect::<io::Result<Vec<R>>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for h in handles {
            out.extend(
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a file thread panicked")))?,
            );
        }
        Ok(out)
    })
}

/// Discards the builds directories of earlier pipelines that no run holds (detaching any overlay a
/// killed run left there), and deletes them, with the unused snapshot generations, on a detached
/// thread, so that a big old tree does not delay the start of this pipeline.
pub(crate) fn discard_old_builds(state_dir: &Path) {
    let builds = state_dir.join("builds");
    let trash = state_dir.join("trash");
    if let Ok(read) = fs::read_dir(&builds) {
        for entry in read.flatten() {
            let name = entry.file_name();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let lock_path = if is_dir {
                let mut n = name.clone();
                n.push(".lock");
                builds.join(n)
            } else if name.as_bytes().ends_with(b".lock")
                && !builds
                    .join(OsStr::from_bytes(&name.as_bytes()[..name.len() - 5]))
                    .exists()
            {
                builds.join(&name)
            } else {
                continue;
            };
            // Held by a running pipeline: leave it.
            let Ok(_held) = lock(&lock_path, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            if is_dir {
                if let Ok(abs) = fs::canonicalize(entry.path()) {
                    overlay::unmount_below(&abs);
                }
                if fs::create_dir_all(&trash).is_err()
                    || fs::rename(entry.path(), trash.join(format!("builds-{}", unique()))).is_err()
                {
                    continue;
                }
            }
            let _ = fs::remove_file(&lock_path);
        }
    }
    // What earlier versions left: `builds.trash-*`.
    let mut doomed: Vec<PathBuf> = fs::read_dir(state_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("builds.trash-"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    if let Ok(read) = fs::read_dir(&trash) {
        doomed.extend(read.flatten().map(|e| e.path()));
    }
    // Only a thread when there is something to delete: an agent runs this for every job.
    if doomed.is_empty() {
        return;
    }
    std::thread::spawn(move || {
        for t in doomed {
            let _ = crate::files::remove(&t);
        }
    });
}
