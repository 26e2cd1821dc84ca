//! Where a tar entry may go: the one path check of the server (uploaded artifacts) and the agent
//! (archives it extracts).

use std::path::{Component, Path, PathBuf};

/// `path` as a relative path without `.` components, or `None` when it is absolute or climbs with
/// `..`: an entry with `Some` stays inside the directory it is extracted into, unless it passes
/// through a link (which the callers resolve).
#[must_use]
pub fn inside(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_stay_and_others_escape() {
        let ok = |p: &str| inside(Path::new(p)).map(|p| p.display().to_string());
        assert_eq!(ok("a/b.txt").as_deref(), Some("a/b.txt"));
        assert_eq!(ok("./a/./b").as_deref(), Some("a/b"));
        assert_eq!(ok(".").as_deref(), Some(""));
        for bad in ["../a", "a/../../b", "a/..", "/etc/passwd", "//x"] {
            assert_eq!(ok(bad), None, "{bad}");
        }
    }
}
