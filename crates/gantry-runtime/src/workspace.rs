//! Job workspaces: each job runs in its own directory, never in the user's working tree.
//!
//! Once per pipeline the project's files are listed (`git ls-files --cached --others
//! --exclude-standard`: tracked files with their uncommitted changes, plus untracked files that are not
//! ignored; deleted files and anything under `.gantry/` are left out) and copied into a snapshot,
//! `state_dir/builds/<pipeline>/.snapshot`. `std::fs::copy` uses `copy_file_range`, which shares
//! extents on btrfs and XFS, and the copy keeps symlinks as symlinks and file modes. Each job attempt
//! then gets `state_dir/builds/<pipeline>/<job-slug>`: the snapshot's directories, and a hard link to
//! each snapshot file. That costs one `link` per file, whatever the file sizes, and new files a job
//! creates stay in its own directory.
//!
//! # Caveat
//! The hard links share inodes with the snapshot. A job that writes *in place* into a project file
//! (`echo x >> README.md`, or a tool that opens the file for writing instead of replacing it) changes
//! the snapshot, and so what later jobs of the same pipeline see in that file. The user's working tree
//! is never affected. Tools that replace files (compilers, `sed -i`, editors, git, and gantry's own
//! artifact and cache restores) are safe.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Above this many files, copies and links are spread over threads.
const PARALLEL_THRESHOLD: usize = 2000;

/// What a listed project path is.
#[derive(Debug)]
enum Kind {
    File,
    Symlink(PathBuf),
}

/// The project's files as of the start of the pipeline, and their copy.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Where the copy is (the project directory itself when running in place).
    root: PathBuf,
    /// Files and symlinks, relative.
    entries: Vec<(PathBuf, Kind)>,
    /// Every directory that contains an entry, parents before children.
    dirs: Vec<PathBuf>,
    /// The listed paths, built on first use (for `untracked`).
    listed: OnceLock<HashSet<PathBuf>>,
    /// Running in place in a git checkout: nothing was listed up front, and [`Snapshot::listed`] asks
    /// git for the tracked files (the project dir and the state dir).
    tracked_by_git: Option<(PathBuf, PathBuf)>,
}

impl Snapshot {
    /// Lists the project and, unless `in_place`, copies it to `dest`. `untracked`: a job will ask
    /// for [`Snapshot::listed`].
    pub(crate) fn build(
        project_dir: &Path,
        state_dir: &Path,
        dest: &Path,
        in_place: bool,
        given: Option<Vec<PathBuf>>,
        untracked: bool,
    ) -> io::Result<Snapshot> {
        let checkout = project_dir.join(".git").exists();
        if in_place && given.is_none() && (checkout || !untracked) {
            // In place, nothing is copied, and the listing only serves `untracked`. In a checkout
            // (an agent's), GitLab defines those as the files git does not track, so git is asked
            // when a job wants them, not for every job; elsewhere (`GIT_STRATEGY: none`) no job
            // of this run wants them.
            return Ok(Snapshot {
                root: project_dir.to_path_buf(),
                entries: Vec::new(),
                dirs: Vec::new(),
                listed: OnceLock::new(),
                tracked_by_git: checkout
                    .then(|| (project_dir.to_path_buf(), state_dir.to_path_buf())),
            });
        }
        let listing = list(project_dir, state_dir, given)?;
        let mut entries = Vec::with_capacity(listing.len());
        for rel in listing {
            let meta = match fs::symlink_metadata(project_dir.join(&rel)) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.file_type().is_symlink() {
                entries.push((
                    rel.clone(),
                    Kind::Symlink(fs::read_link(project_dir.join(&rel))?),
                ));
            } else if meta.is_file() {
                entries.push((rel, Kind::File));
            }
            // Directories (submodules) and special files are left out.
        }
        let mut dirs: HashSet<PathBuf> = HashSet::new();
        for (rel, _) in &entries {
            let mut p = rel.parent();
            while let Some(d) = p {
                if d.as_os_str().is_empty() || !dirs.insert(d.to_path_buf()) {
                    break;
                }
                p = d.parent();
            }
        }
        let mut dirs: Vec<PathBuf> = dirs.into_iter().collect();
        dirs.sort();
        let snapshot = Snapshot {
            root: if in_place {
                project_dir.to_path_buf()
            } else {
                dest.to_path_buf()
            },
            entries,
            dirs,
            listed: OnceLock::new(),
            tracked_by_git: None,
        };
        if !in_place {
            fs::create_dir_all(dest)?;
            snapshot.make_dirs(dest)?;
            par_try(&snapshot.entries, |(rel, kind)| {
                let to = dest.join(rel);
                match kind {
                    Kind::File => fs::copy(project_dir.join(rel), &to).map(|_| ()),
                    Kind::Symlink(target) => std::os::unix::fs::symlink(target, &to),
                }
            })?;
        }
        Ok(snapshot)
    }

    fn make_dirs(&self, root: &Path) -> io::Result<()> {
        for d in &self.dirs {
            match fs::create_dir(root.join(d)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Makes `dir` a fresh workspace: whatever was there is removed, then the snapshot is hard-linked in.
    pub(crate) fn populate(&self, dir: &Path) -> io::Result<()> {
        crate::files::remove(dir)?;
        fs::create_dir_all(dir)?;
        self.make_dirs(dir)?;
        par_try(&self.entries, |(rel, kind)| match kind {
            Kind::File => fs::hard_link(self.root.join(rel), dir.join(rel)),
            Kind::Symlink(target) => std::os::unix::fs::symlink(target, dir.join(rel)),
        })
    }

    /// The paths listed at the start of the pipeline; files outside it are "untracked".
    pub(crate) fn listed(&self) -> &HashSet<PathBuf> {
        self.listed.get_or_init(|| match &self.tracked_by_git {
            Some((project_dir, state_dir)) => tracked(project_dir, state_dir)
                .or_else(|_| list(project_dir, state_dir, None))
                .unwrap_or_default()
                .into_iter()
                .collect(),
            None => self.entries.iter().map(|(p, _)| p.clone()).collect(),
        })
    }
}

/// Lists the project's files relative to `project_dir`: `given` when the caller listed them, else with
/// git when it is a repository, else by walking.
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

/// The files git tracks in `project_dir`.
fn tracked(project_dir: &Path, state_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let keep = keeper(project_dir, state_dir);
    let out = Command::new("git")
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
    let output = Command::new("git")
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

/// Runs `f` on every item, over several threads when there are many; the first error wins.
fn par_try<T: Sync>(items: &[T], f: impl Fn(&T) -> io::Result<()> + Sync) -> io::Result<()> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if items.len() < PARALLEL_THRESHOLD || threads < 2 {
        return items.iter().try_for_each(f);
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(|| c.iter().try_for_each(&f)))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(io::Error::other("copy thread panicked")))
        })
    })
}

/// Moves the builds directory of earlier pipelines out of the way and deletes it on a detached thread,
/// so that a big old tree does not delay the start of this pipeline.
pub(crate) fn discard_old_builds(state_dir: &Path) {
    let builds = state_dir.join("builds");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let trash = state_dir.join(format!("builds.trash-{nanos}-{}", std::process::id()));
    let _ = fs::rename(&builds, &trash);
    // Only a thread when there is something to delete: an agent runs this for every job.
    let trash: Vec<PathBuf> = fs::read_dir(state_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("builds.trash-"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    if trash.is_empty() {
        return;
    }
    std::thread::spawn(move || {
        for t in trash {
            let _ = fs::remove_dir_all(t);
        }
    });
}
