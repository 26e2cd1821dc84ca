//! Tar archives in and out: the source tree and dependencies' artifacts come in, this job's stored
//! artifacts go out. Extraction refuses any entry that could write outside its directory.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use gantry_api::paths::inside as safe_relative;

/// Why an archive could not be extracted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ArchiveError {
    /// An entry names a path outside the destination (absolute, or with `..`).
    #[error("the archive entry `{0}` points outside its directory")]
    Unsafe(String),
    /// Reading the archive or writing a file failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Extracts the tar archive at `archive` into `dest` (created if missing). Returns the files and
/// symbolic links it holds, relative to `dest`, in archive order. Fails without writing anything
/// further at the first entry that is absolute, climbs with `..`, hard-links to such a path, or
/// would be written through a symbolic link that leaves `dest`.
pub(crate) fn extract(archive: &Path, dest: &Path) -> Result<Vec<PathBuf>, ArchiveError> {
    fs::create_dir_all(dest)?;
    let mut ar = tar::Archive::new(io::BufReader::new(fs::File::open(archive)?));
    ar.set_preserve_permissions(true);
    ar.set_overwrite(true);
    let mut files = Vec::new();
    for entry in ar.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        let raw = entry.path()?.into_owned();
        let unsafe_entry = || ArchiveError::Unsafe(raw.display().to_string());
        let rel = safe_relative(&raw).ok_or_else(unsafe_entry)?;
        let is_file = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Symlink => true,
            tar::EntryType::Link => {
                let target = entry.link_name()?.unwrap_or_default().into_owned();
                if safe_relative(&target).is_none() {
                    return Err(unsafe_entry());
                }
                true
            }
            tar::EntryType::Directory => false,
            // Pax headers (git archive writes one with the commit id), GNU long names: handled by
            // the reader or of no use here.
            _ => continue,
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        // `unpack_in` refuses (returns false for) entries that would land outside `dest`, also
        // through a symbolic link extracted earlier.
        if !entry.unpack_in(dest)? {
            return Err(unsafe_entry());
        }
        if is_file {
            files.push(rel);
        }
    }
    Ok(files)
}

/// Writes a tar archive of the tree at `dir` (paths relative to it; symbolic links kept as links) to
/// `archive`. Returns how many entries it holds.
pub(crate) fn pack(dir: &Path, archive: &Path) -> io::Result<usize> {
    let mut builder = tar::Builder::new(io::BufWriter::new(fs::File::create(archive)?));
    builder.follow_symlinks(false);
    let mut count = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(dir.join(&rel))?.collect::<Result<_, _>>()?;
        entries.sort_by_key(fs::DirEntry::file_name);
        for e in entries {
            let rel = rel.join(e.file_name());
            let full = e.path();
            if e.file_type()?.is_dir() {
                builder.append_dir(&rel, &full)?;
                stack.push(rel);
            } else {
                builder.append_path_with_name(&full, &rel)?;
            }
            count += 1;
        }
    }
    builder
        .into_inner()?
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar archive with one regular file whose name is written raw into the header (the `tar`
    /// crate's safe setters refuse `..` and absolute names, which is what an attacker would not use).
    fn raw_archive(name: &str, link: Option<(&str, tar::EntryType)>) -> Vec<u8> {
        let mut header = tar::Header::new_ustar();
        {
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
        }
        header.set_mode(0o644);
        match link {
            Some((target, kind)) => {
                header.set_entry_type(kind);
                header.set_size(0);
                let old = header.as_old_mut();
                old.linkname[..target.len()].copy_from_slice(target.as_bytes());
            }
            None => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(4);
            }
        }
        header.set_cksum();
        let mut out = header.as_bytes().to_vec();
        if link.is_none() {
            let mut block = [0u8; 512];
            block[..4].copy_from_slice(b"evil");
            out.extend_from_slice(&block);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn extract_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<Vec<PathBuf>, ArchiveError>) {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("a.tar");
        fs::write(&archive, bytes).unwrap();
        let result = extract(&archive, &tmp.path().join("out/dest"));
        (tmp, result)
    }

    #[test]
    fn rejects_parent_dir_entries() {
        let (tmp, result) = extract_bytes(&raw_archive("../escape.txt", None));
        assert!(matches!(result, Err(ArchiveError::Unsafe(p)) if p == "../escape.txt"));
        assert!(!tmp.path().join("out/escape.txt").exists());
    }

    #[test]
    fn rejects_nested_parent_dir_entries() {
        let (tmp, result) = extract_bytes(&raw_archive("a/../../escape.txt", None));
        assert!(matches!(result, Err(ArchiveError::Unsafe(_))));
        assert!(!tmp.path().join("out/escape.txt").exists());
    }

    #[test]
    fn rejects_absolute_entries() {
        let target = tempfile::tempdir().unwrap();
        let abs = target.path().join("abs.txt");
        let (_tmp, result) = extract_bytes(&raw_archive(abs.to_str().unwrap(), None));
        assert!(matches!(result, Err(ArchiveError::Unsafe(_))));
        assert!(!abs.exists());
    }

    #[test]
    fn rejects_hard_links_out() {
        let (_tmp, result) = extract_bytes(&raw_archive(
            "link",
            Some(("../../etc/passwd", tar::EntryType::Link)),
        ));
        assert!(matches!(result, Err(ArchiveError::Unsafe(_))));
    }

    #[test]
    fn rejects_writing_through_a_symlink_that_leaves() {
        let target = tempfile::tempdir().unwrap();
        let mut bytes = raw_archive(
            "dir",
            Some((target.path().to_str().unwrap(), tar::EntryType::Symlink)),
        );
        bytes.truncate(512);
        let mut file = raw_archive("dir/escape.txt", None);
        bytes.append(&mut file);
        let (_tmp, result) = extract_bytes(&bytes);
        assert!(result.is_err(), "{result:?}");
        assert!(!target.path().join("escape.txt").exists());
    }

    #[test]
    fn packs_and_extracts_a_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("files/sub")).unwrap();
        fs::write(src.join("meta.json"), "{}").unwrap();
        fs::write(src.join("files/sub/a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("sub/a.txt", src.join("files/link")).unwrap();
        let archive = tmp.path().join("a.tar");
        assert_eq!(pack(&src, &archive).unwrap(), 5);
        let out = tmp.path().join("out");
        let mut files = extract(&archive, &out).unwrap();
        files.sort();
        assert_eq!(
            files,
            [
                PathBuf::from("files/link"),
                PathBuf::from("files/sub/a.txt"),
                PathBuf::from("meta.json")
            ]
        );
        assert_eq!(
            fs::read_to_string(out.join("files/sub/a.txt")).unwrap(),
            "a"
        );
        assert_eq!(
            fs::read_link(out.join("files/link")).unwrap(),
            PathBuf::from("sub/a.txt")
        );
    }
}
