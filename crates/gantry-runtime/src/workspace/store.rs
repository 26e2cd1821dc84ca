//! The snapshot store, `state_dir/snapshots/`: generations of the project's files that later
//! pipelines reuse, updated by the files that changed.
//!
//! ```text
//! snapshots/lock          flock: held exclusively while a pipeline picks and updates a generation
//! snapshots/current       the newest generation's number
//! snapshots/<n>/          generation n: the project's files
//! snapshots/<n>.manifest  per file: the project file's stat when it was copied, and the copy's stat
//! snapshots/<n>.lock      flock: held shared by every pipeline that uses generation n, for its run
//! snapshots/<n>.linked    present once a pipeline has hard-linked job workspaces to generation n
//! ```
//!
//! *Invariant*: a generation is never changed while a pipeline holds its `.lock`. A pipeline that
//! finds changed files updates the newest generation in place only when it can take its `.lock`
//! exclusively (nobody uses it); otherwise it makes a new generation, and the older ones are deleted
//! by the first pipeline that finds them unused. Updates replace files (a new inode, renamed over the
//! old one), never write through, so generations may share inodes.
//!
//! A generation whose manifest is missing (a pipeline died while updating it) is never trusted: the
//! next pipeline makes a new one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};

use super::{Entry, Kind, Stat, lock, par_map};

/// The first line of a manifest.
const MANIFEST_HEADER: &[u8] = b"gantry-snapshot 1\0";

/// Project files whose ctime is this close to the start of the pipeline (or after it) are copied
/// again next time, whatever their stat says: a write in the same clock tick as an earlier one can
/// leave size and times unchanged (git's "racy" files).
const RACY_NS: i64 = 1_000_000_000;

/// A pipeline's hold on a generation: nobody changes it until this is dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    /// The generation's tree.
    pub dir: PathBuf,
    linked: PathBuf,
    _lock: Flock<File>,
}

impl Lease {
    /// Records that job workspaces hard-link to this generation: jobs may write through into its
    /// files, so later pipelines check the copies' stat too, and never share its inodes.
    pub(crate) fn mark_linked(&self) -> io::Result<()> {
        if !self.linked.exists() {
            File::create(&self.linked)?;
        }
        Ok(())
    }
}

/// One manifest record.
#[derive(Clone, Debug)]
struct Record {
    rel: PathBuf,
    link: bool,
    /// The project file's stat when it was copied (all zero: copy it again next time).
    src: Stat,
    /// The copy's stat.
    copy: Stat,
}

/// Picks the generation for a pipeline whose project files are `entries` (sorted by path, stat taken
/// at `started_ns`), updating or creating one as needed, and holds it. `linked`: job workspaces will
/// be hard links into it.
pub(crate) fn acquire(
    store: &Path,
    project: &Path,
    entries: &[Entry],
    dirs: &[PathBuf],
    started_ns: i64,
    linked: bool,
    trash: &Path,
) -> io::Result<Lease> {
    fs::create_dir_all(store)?;
    let _global = lock(&store.join("lock"), FlockArg::LockExclusive)?;
    let current = fs::read_to_string(store.join("current"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let old = current.and_then(|g| {
        read_manifest(&store.join(format!("{g}.manifest")))
            .ok()
            .map(|m| (g, m))
    });
    let paths = |g: u64| {
        (
            store.join(g.to_string()),
            store.join(format!("{g}.lock")),
            store.join(format!("{g}.manifest")),
            store.join(format!("{g}.linked")),
        )
    };
    let next = || -> u64 {
        let highest = fs::read_dir(store)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                name.split('.').next()?.parse::<u64>().ok()
            })
            .max();
        highest.max(current).map_or(1, |h| h + 1)
    };

    let chosen = match old {
        None => {
            let g = next();
            let (dir, lock_path, manifest, _) = paths(g);
            crate::files::remove(&dir)?;
            let records = build_fresh(project, &dir, entries, dirs, started_ns)?;
            write_manifest(&manifest, &records)?;
            let l = lock(&lock_path, FlockArg::LockShared)?;
            (g, l)
        }
        Some((g, records)) => {
            let (dir, lock_path, manifest, linked_path) = paths(g);
            let exposed = linked_path.exists();
            let diff = diff(&records, entries, exposed.then_some(dir.as_path()))?;
            if diff.is_empty() {
                (g, lock(&lock_path, FlockArg::LockShared)?)
            } else {
                match lock(&lock_path, FlockArg::LockExclusiveNonblock) {
                    Ok(l) => {
                        // Unused: update in place. Without its manifest meanwhile, a crash leaves a
                        // generation that nobody trusts.
                        fs::remove_file(&manifest)?;
                        let records =
                            update_in_place(project, &dir, &records, entries, &diff, started_ns)?;
                        write_manifest(&manifest, &records)?;
                        l.relock(FlockArg::LockShared)?;
                        (g, l)
                    }
                    Err(e) if e.raw_os_error() == Some(nix::libc::EWOULDBLOCK) => {
                        // In use: a new generation, sharing the unchanged files' inodes unless jobs
                        // may write through into them.
                        let n = next();
                        let (new_dir, new_lock, new_manifest, _) = paths(n);
                        crate::files::remove(&new_dir)?;
                        let records = if exposed {
                            build_fresh(project, &new_dir, entries, dirs, started_ns)?
                        } else {
                            clone_with_changes(
                                project, &dir, &new_dir, &records, entries, dirs, &diff, started_ns,
                            )?
                        };
                        write_manifest(&new_manifest, &records)?;
                        (n, lock(&new_lock, FlockArg::LockShared)?)
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    };
    let (g, held) = chosen;
    if current != Some(g) {
        let tmp = store.join(format!(".current-{}", std::process::id()));
        fs::write(&tmp, g.to_string())?;
        fs::rename(&tmp, store.join("current"))?;
    }
    discard_unused(store, g, trash);
    let (dir, _, _, linked_path) = paths(g);
    let lease = Lease {
        dir,
        linked: linked_path,
        _lock: held,
    };
    if linked {
        // Before the store's lock is released: a pipeline that finds this generation in use must
        // know that its inodes may be written through.
        lease.mark_linked()?;
    }
    Ok(lease)
}

/// Moves every generation other than `keep` that no pipeline holds into `trash`.
fn discard_unused(store: &Path, keep: u64, trash: &Path) {
    let Ok(read) = fs::read_dir(store) else {
        return;
    };
    let mut gens: Vec<u64> = read
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            name.split('.').next()?.parse::<u64>().ok()
        })
        .filter(|&g| g != keep)
        .collect();
    gens.sort_unstable();
    gens.dedup();
    for g in gens {
        let lock_path = store.join(format!("{g}.lock"));
        let Ok(_held) = lock(&lock_path, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        let dir = store.join(g.to_string());
        if dir.exists() {
            if fs::create_dir_all(trash).is_err() {
                continue;
            }
            let _ = fs::rename(&dir, trash.join(format!("snapshot-{}", super::unique())));
        }
        for ext in ["manifest", "linked", "lock"] {
            let _ = fs::remove_file(store.join(format!("{g}.{ext}")));
        }
    }
}

/// Which entries must be copied (indices into `entries`) and which recorded paths must go.
#[derive(Debug, Default)]
struct Diff {
    copy: Vec<usize>,
    delete: Vec<PathBuf>,
    /// Per entry: the record that still holds (for the entries not in `copy`).
    kept: Vec<Option<usize>>,
}

impl Diff {
    fn is_empty(&self) -> bool {
        self.copy.is_empty() && self.delete.is_empty()
    }
}

/// Compares the manifest with the project's entries (both sorted by path). `verify`: the generation's
/// directory, when its copies may have been written through and must be checked too.
fn diff(records: &[Record], entries: &[Entry], verify: Option<&Path>) -> io::Result<Diff> {
    let mut d = Diff {
        kept: vec![None; entries.len()],
        ..Diff::default()
    };
    let (mut i, mut j) = (0, 0);
    while i < records.len() || j < entries.len() {
        let ord = match (records.get(i), entries.get(j)) {
            (Some(r), Some(e)) => r.rel.cmp(&e.rel),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                d.delete.push(records[i].rel.clone());
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                d.copy.push(j);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (r, e) = (&records[i], &entries[j]);
                let same = r.link == matches!(e.kind, Kind::Symlink(_))
                    && r.src != Stat::default()
                    && r.src == e.stat;
                if same {
                    d.kept[j] = Some(i);
                } else {
                    d.copy.push(j);
                }
                i += 1;
                j += 1;
            }
        }
    }
    if let Some(dir) = verify {
        // Jobs with hard-linked workspaces may have written into the copies: check them, in parallel.
        let kept: Vec<(usize, usize)> = d
            .kept
            .iter()
            .enumerate()
            .filter_map(|(j, k)| k.map(|i| (j, i)))
            .filter(|&(_, i)| !records[i].link)
            .collect();
        let bad = par_map(&kept, |&(j, i)| {
            let intact = fs::symlink_metadata(dir.join(&records[i].rel))
                .is_ok_and(|m| copy_stat(&m) == records[i].copy);
            Ok((!intact).then_some(j))
        })?;
        for j in bad.into_iter().flatten() {
            d.kept[j] = None;
            d.copy.push(j);
        }
        d.copy.sort_unstable();
    }
    Ok(d)
}

/// What is compared of a copy: jobs writing through a hard link change its mtime, size or mode.
fn copy_stat(m: &fs::Metadata) -> Stat {
    Stat {
        ctime_ns: 0,
        ..Stat::of(m)
    }
}

/// The project file's stat as recorded: all zero when it is racy.
fn recorded(e: &Entry, started_ns: i64) -> Stat {
    if e.stat.ctime_ns > started_ns - RACY_NS || e.stat.mtime_ns > started_ns - RACY_NS {
        Stat::default()
    } else {
        e.stat
    }
}

/// Copies one project entry to `dst` (nothing may be there) and returns its record.
fn put(project: &Path, dst: &Path, e: &Entry, started_ns: i64) -> io::Result<Record> {
    match &e.kind {
        Kind::File => {
            fs::copy(project.join(&e.rel), dst)?;
        }
        Kind::Symlink(target) => std::os::unix::fs::symlink(target, dst)?,
    }
    Ok(Record {
        rel: e.rel.clone(),
        link: matches!(e.kind, Kind::Symlink(_)),
        src: recorded(e, started_ns),
        copy: copy_stat(&fs::symlink_metadata(dst)?),
    })
}

/// Replaces whatever is at `gen/e.rel` by a fresh copy: written beside it, then renamed over it.
fn replace(project: &Path, dir: &Path, e: &Entry, started_ns: i64) -> io::Result<Record> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dst = dir.join(&e.rel);
    if let Some(parent) = dst.parent() {
        ensure_dir(parent)?;
    }
    let tmp = dst.with_file_name(format!(
        ".gantry-new-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let mut rec = put(project, &tmp, e, started_ns)?;
    if fs::symlink_metadata(&dst).is_ok_and(|m| m.is_dir()) {
        fs::remove_dir_all(&dst)?;
    }
    fs::rename(&tmp, &dst)?;
    rec.copy = copy_stat(&fs::symlink_metadata(&dst)?);
    Ok(rec)
}

/// Creates `dir` and its parents, replacing files that stand where a directory must be.
fn ensure_dir(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => {
            fs::remove_file(dir)?;
            fs::create_dir_all(dir)
        }
        Err(_) => {
            if let Some(parent) = dir.parent() {
                ensure_dir(parent)?;
            }
            match fs::create_dir(dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
                _ => Ok(()),
            }
        }
    }
}

fn make_dirs(root: &Path, dirs: &[PathBuf]) -> io::Result<()> {
    fs::create_dir_all(root)?;
    for d in dirs {
        match fs::create_dir(root.join(d)) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// A new generation copied from the project.
fn build_fresh(
    project: &Path,
    dir: &Path,
    entries: &[Entry],
    dirs: &[PathBuf],
    started_ns: i64,
) -> io::Result<Vec<Record>> {
    make_dirs(dir, dirs)?;
    par_map(entries, |e| put(project, &dir.join(&e.rel), e, started_ns))
}

/// A new generation made of hard links to `old`'s unchanged files and copies of the changed ones.
#[allow(clippy::too_many_arguments)]
fn clone_with_changes(
    project: &Path,
    old: &Path,
    dir: &Path,
    records: &[Record],
    entries: &[Entry],
    dirs: &[PathBuf],
    diff: &Diff,
    started_ns: i64,
) -> io::Result<Vec<Record>> {
    make_dirs(dir, dirs)?;
    let idx: Vec<usize> = (0..entries.len()).collect();
    par_map(&idx, |&j| {
        let e = &entries[j];
        let dst = dir.join(&e.rel);
        match diff.kept[j] {
            Some(i) if !records[i].link => {
                fs::hard_link(old.join(&e.rel), &dst)?;
                Ok(records[i].clone())
            }
            _ => put(project, &dst, e, started_ns),
        }
    })
}

/// Applies `diff` to generation `dir`: removes deleted paths (and the directories they leave empty),
/// replaces changed files.
fn update_in_place(
    project: &Path,
    dir: &Path,
    records: &[Record],
    entries: &[Entry],
    diff: &Diff,
    started_ns: i64,
) -> io::Result<Vec<Record>> {
    for rel in &diff.delete {
        crate::files::remove(&dir.join(rel))?;
        let mut parent = rel.parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            if fs::remove_dir(dir.join(p)).is_err() {
                break;
            }
            parent = p.parent();
        }
    }
    let copied = par_map(&diff.copy, |&j| {
        replace(project, dir, &entries[j], started_ns)
    })?;
    let mut copied = copied.into_iter();
    let mut out = Vec::with_capacity(entries.len());
    let mut next_copy = diff.copy.iter().peekable();
    for j in 0..entries.len() {
        if next_copy.peek() == Some(&&j) {
            next_copy.next();
            out.push(copied.next().expect("one record per copy"));
        } else if let Some(i) = diff.kept[j] {
            out.push(records[i].clone());
        }
    }
    Ok(out)
}

fn write_manifest(path: &Path, records: &[Record]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(records.len() * 96);
    buf.extend_from_slice(MANIFEST_HEADER);
    for r in records {
        let (s, c) = (&r.src, &r.copy);
        write!(
            buf,
            "{} {} {} {} {} {} {} {} {} {}\0",
            if r.link { 'l' } else { 'f' },
            s.size,
            s.ino,
            s.mtime_ns,
            s.ctime_ns,
            s.mode,
            c.size,
            c.ino,
            c.mtime_ns,
            c.mode
        )?;
        buf.extend_from_slice(r.rel.as_os_str().as_bytes());
        buf.push(0);
    }
    let tmp = path.with_extension(format!("manifest-{}", std::process::id()));
    fs::write(&tmp, &buf)?;
    fs::rename(&tmp, path)
}

fn read_manifest(path: &Path) -> io::Result<Vec<Record>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "corrupt snapshot manifest");
    let data = fs::read(path)?;
    let body = data.strip_prefix(MANIFEST_HEADER).ok_or_else(bad)?;
    let mut fields = body.split(|&b| b == 0);
    let mut out = Vec::new();
    while let Some(head) = fields.next() {
        if head.is_empty() {
            break;
        }
        let rel = fields.next().filter(|r| !r.is_empty()).ok_or_else(bad)?;
        let head = std::str::from_utf8(head).map_err(|_| bad())?;
        let mut it = head.split(' ');
        let link = match it.next() {
            Some("l") => true,
            Some("f") => false,
            _ => return Err(bad()),
        };
        let mut n =
            || -> io::Result<i64> { it.next().and_then(|v| v.parse().ok()).ok_or_else(bad) };
        let src = Stat {
            size: n()?,
            ino: n()?,
            mtime_ns: n()?,
            ctime_ns: n()?,
            mode: n()?,
        };
        let copy = Stat {
            size: n()?,
            ino: n()?,
            mtime_ns: n()?,
            ctime_ns: 0,
            mode: n()?,
        };
        out.push(Record {
            rel: PathBuf::from(std::ffi::OsStr::from_bytes(rel)),
            link,
            src,
            copy,
        });
    }
    Ok(out)
}

impl Stat {
    pub(crate) fn of(m: &fs::Metadata) -> Stat {
        let cast = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Stat {
            size: cast(m.size()),
            ino: cast(m.ino()),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
            ctime_ns: m.ctime().saturating_mul(1_000_000_000) + m.ctime_nsec(),
            mode: i64::from(m.mode()),
        }
    }
}
