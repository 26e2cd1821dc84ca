//! File tree helpers shared by workspaces, artifacts and caches: walking, glob selection, copying.
//!
//! Copies never write through an existing file: the destination is unlinked first, because a
//! workspace file may be a hard link into the pipeline snapshot (see [`crate::workspace`]).

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Directories never walked at the root of a tree: git's own and gantry's state.
const SKIPPED_ROOT_DIRS: [&str; 2] = [".git", ".gantry"];

/// Calls `f` with the path relative to `root` of every file and symlink under `root.join(rel)`,
/// recursively, without following symlinks.
pub(crate) fn walk(root: &Path, rel: &Path, f: &mut dyn FnMut(&Path)) -> io::Result<()> {
    walk_entries(root, rel, &mut |p, is_dir| {
        if !is_dir {
            f(p);
        }
    })
}

/// Like [`walk`], but also calls `f` for every directory below `rel` (with `true`), before its content.
fn walk_entries(root: &Path, rel: &Path, f: &mut dyn FnMut(&Path, bool)) -> io::Result<()> {
    let dir = root.join(rel);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if rel.as_os_str().is_empty() && SKIPPED_ROOT_DIRS.iter().any(|s| name == *s) {
            continue;
        }
        let path = rel.join(&name);
        if entry.file_type()?.is_dir() {
            f(&path, true);
            walk_entries(root, &path, f)?;
        } else {
            f(&path, false);
        }
    }
    Ok(())
}

/// Whether a pattern contains glob syntax.
fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '[', '{'])
}

/// Turns a user pattern into one relative to `root`: `./` and a leading `$CI_PROJECT_DIR` (already
/// expanded into `root`) are stripped. Returns `None` for paths that leave the root.
fn normalize(pattern: &str, root: &Path) -> Option<String> {
    let mut p = pattern.trim();
    let root_str = root.to_str().unwrap_or("");
    if p.starts_with('/') {
        p = p.strip_prefix(root_str)?;
        if !(p.is_empty() || p.starts_with('/')) {
            return None;
        }
    }
    let mut parts = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

fn glob(pattern: &str) -> Result<globset::Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("invalid pattern `{pattern}`: {e}"))
}

/// Adds the glob `pattern` and `pattern/**` (what is under the directories it matches) to `set`; an
/// invalid pattern becomes a warning.
fn add_with_contents(set: &mut GlobSetBuilder, pattern: &str, warnings: &mut Vec<String>) {
    for p in [pattern.to_string(), format!("{pattern}/**")] {
        match glob(&p) {
            Ok(g) => {
                set.add(g);
            }
            Err(w) => warnings.push(w),
        }
    }
}

/// Selects files under a root with GitLab's `paths`/`exclude`/`untracked` rules: a pattern that names a
/// directory (or ends with `/`) takes everything under it, `**` crosses directories, `*` does not, and
/// `exclude` patterns match files.
pub(crate) struct Selection {
    /// The selected files and symlinks, relative to the root, sorted. Directories inside a selected
    /// directory are listed too (before their content), so that an empty one survives, as in GitLab.
    pub files: Vec<PathBuf>,
    /// Problems worth telling the user (patterns that matched nothing, invalid patterns).
    pub warnings: Vec<String>,
}

/// See [`Selection`]. `tracked`, when given, adds every file not in it ("untracked" files).
pub(crate) fn select(
    root: &Path,
    patterns: &[String],
    exclude: &[String],
    tracked: Option<&HashSet<PathBuf>>,
) -> io::Result<Selection> {
    let mut warnings = Vec::new();
    let mut excl = GlobSetBuilder::new();
    for e in exclude {
        let Some(n) = normalize(e, root) else {
            continue;
        };
        add_with_contents(&mut excl, &n, &mut warnings);
    }
    let excl = excl.build().unwrap_or_else(|_| GlobSet::empty());
    let mut files = BTreeSet::new();
    let add = |p: &Path, files: &mut BTreeSet<PathBuf>| {
        if !excl.is_match(p) {
            files.insert(p.to_path_buf());
        }
    };

    for pattern in patterns {
        let Some(n) = normalize(pattern, root) else {
            warnings.push(format!(
                "`{pattern}` is outside the project directory; ignored"
            ));
            continue;
        };
        let before = files.len();
        if !is_glob(&n) {
            let rel = PathBuf::from(&n);
            match fs::symlink_metadata(root.join(&rel)) {
                Ok(m) if m.is_dir() => walk_entries(root, &rel, &mut |p, _| add(p, &mut files))?,
                Ok(_) if !n.is_empty() => add(&rel, &mut files),
                _ => {}
            }
        } else {
            let mut set = GlobSetBuilder::new();
            add_with_contents(&mut set, &n, &mut warnings);
            let set = set.build().unwrap_or_else(|_| GlobSet::empty());
            // Walk only below the pattern's literal prefix.
            let prefix: PathBuf = n.split('/').take_while(|c| !is_glob(c)).collect();
            walk_entries(root, &prefix, &mut |p, _| {
                if set.is_match(p) {
                    add(p, &mut files);
                }
            })?;
        }
        if files.len() == before {
            warnings.push(format!("{pattern}: no matching files"));
        }
    }
    if let Some(tracked) = tracked {
        walk(root, Path::new(""), &mut |p| {
            if !tracked.contains(p) {
                add(p, &mut files);
            }
        })?;
    }
    Ok(Selection {
        files: files.into_iter().collect(),
        warnings,
    })
}

/// Removes whatever is at `path` (file, symlink or directory); absent is fine.
pub(crate) fn remove(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Copies one file or symlink to `dst`, replacing (never writing through) whatever was there and
/// creating missing parent directories. File modes are kept.
pub(crate) fn copy_entry(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    if meta.is_dir() {
        return ensure_dir(dst);
    }
    match fs::symlink_metadata(dst) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(dst)?,
        Ok(_) => fs::remove_file(dst)?,
        Err(_) => {
            if let Some(parent) = dst.parent() {
                ensure_dir(parent)?;
            }
        }
    }
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)
    } else {
        fs::copy(src, dst).map(|_| ())
    }
}

/// Creates `dir` and its parents, replacing a file or symlink that stands where a directory must be.
fn ensure_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e)
            if e.kind() == io::ErrorKind::AlreadyExists
                || e.kind() == io::ErrorKind::NotADirectory =>
        {
            // Some ancestor is a file or a symlink: replace the first one that is not a directory.
            let mut cur = PathBuf::new();
            for c in dir.components() {
                cur.push(c);
                if fs::symlink_metadata(&cur).is_ok_and(|m| !m.is_dir()) {
                    fs::remove_file(&cur)?;
                    break;
                }
            }
            fs::create_dir_all(dir)
        }
        Err(e) => Err(e),
    }
}

/// Copies the files `rel` (relative paths) from `src_root` to `dst_root`; missing sources are skipped.
/// Returns how many were copied.
pub(crate) fn copy_files(src_root: &Path, rel: &[PathBuf], dst_root: &Path) -> io::Result<usize> {
    let mut n = 0;
    for r in rel {
        let src = src_root.join(r);
        match copy_entry(&src, &dst_root.join(r)) {
            Ok(()) if src.is_dir() => {}
            Ok(()) => n += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Copies the whole tree under `src_root` over `dst_root`. Returns how many files were copied.
pub(crate) fn copy_tree(src_root: &Path, dst_root: &Path) -> io::Result<usize> {
    let mut rel = Vec::new();
    walk_all(src_root, Path::new(""), &mut |p| rel.push(p.to_path_buf()))?;
    copy_files(src_root, &rel, dst_root)
}

/// Like [`walk`], without skipping anything.
fn walk_all(root: &Path, rel: &Path, f: &mut dyn FnMut(&Path)) -> io::Result<()> {
    let entries = match fs::read_dir(root.join(rel)) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = rel.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            // Directories too, so that empty ones are copied.
            f(&path);
            walk_all(root, &path, f)?;
        } else {
            f(&path);
        }
    }
    Ok(())
}

/// Replaces directory `dst` by a fresh copy of `files` from `src_root`, atomically enough for one
/// machine: the copy is made next to it, then renamed into place. Returns how many files were copied.
pub(crate) fn replace_dir_with(
    src_root: &Path,
    files: &[PathBuf],
    dst: &Path,
) -> io::Result<usize> {
    let tmp = sibling(dst, "tmp");
    remove(&tmp)?;
    fs::create_dir_all(&tmp)?;
    let n = copy_files(src_root, files, &tmp)?;
    swap_in(&tmp, dst)?;
    Ok(n)
}

/// Moves directory `new` to `dst`, removing what was at `dst`.
pub(crate) fn swap_in(new: &Path, dst: &Path) -> io::Result<()> {
    let old = sibling(dst, "old");
    remove(&old)?;
    match fs::rename(dst, &old) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::rename(new, dst)?;
    remove(&old)
}

/// A unique sibling path of `p`, for staging.
fn sibling(p: &Path, what: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = p
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    p.with_file_name(format!(".{name}.{what}-{}-{n}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, rel).unwrap();
    }

    fn sel(root: &Path, pats: &[&str], excl: &[&str]) -> Vec<String> {
        let pats: Vec<String> = pats.iter().map(|s| (*s).to_string()).collect();
        let excl: Vec<String> = excl.iter().map(|s| (*s).to_string()).collect();
        select(root, &pats, &excl, None)
            .unwrap()
            .files
            .iter()
            .filter(|p| !root.join(p).is_dir())
            .map(|p| p.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn selected_directories_are_kept_even_when_emptied_by_exclude() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for f in ["foo/a", "foo/bar/x", "foo/qux/qu ux/g", "foo/qux/qu"] {
            touch(r, f);
        }
        let pats = vec!["foo".to_string()];
        let excl = vec!["foo/qux/qu ux/**".to_string(), "foo/bar".to_string()];
        let got: Vec<String> = select(r, &pats, &excl, None)
            .unwrap()
            .files
            .iter()
            .map(|p| p.to_str().unwrap().to_string())
            .collect();
        assert_eq!(got, ["foo/a", "foo/qux", "foo/qux/qu", "foo/qux/qu ux"]);
    }

    #[test]
    fn selects_like_gitlab() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for f in [
            "a.txt",
            "b.log",
            "out/x.o",
            "out/sub/y.o",
            "out/sub/z.c",
            "deep/1/2/k.o",
            ".git/config",
        ] {
            touch(r, f);
        }
        assert_eq!(
            sel(r, &["out"], &[]),
            ["out/sub/y.o", "out/sub/z.c", "out/x.o"]
        );
        assert_eq!(sel(r, &["out/"], &["out/**/*.o"]), ["out/sub/z.c"]);
        assert_eq!(sel(r, &["*.txt"], &[]), ["a.txt"]);
        assert_eq!(
            sel(r, &["**/*.o"], &[]),
            ["deep/1/2/k.o", "out/sub/y.o", "out/x.o"]
        );
        assert_eq!(sel(r, &["out/*.o"], &[]), ["out/x.o"]);
        assert_eq!(sel(r, &["de*"], &[]), ["deep/1/2/k.o"]);
        let abs = format!("{}/out/sub/", r.display());
        assert_eq!(sel(r, &[&abs], &["**/z.c"]), ["out/sub/y.o"]);
        assert!(sel(r, &["../etc/passwd", "/etc/passwd"], &[]).is_empty());
    }
}
