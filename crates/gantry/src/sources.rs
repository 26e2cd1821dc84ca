//! `Sources` over the file system: the compiler reads files only through this.

use std::path::{Component, Path, PathBuf};

use gantry_pipeline::Sources;

/// The project's files on disk, with the listing taken once from git.
pub struct FsSources {
    root: PathBuf,
    files: Vec<String>,
    include_cache: PathBuf,
}

impl FsSources {
    /// Files under `root`, listed by git (or by walking the tree outside a repository).
    pub fn new(root: &Path, state_dir: &Path) -> FsSources {
        FsSources {
            root: root.to_path_buf(),
            files: crate::git::files(root),
            include_cache: state_dir.join("include-cache"),
        }
    }
}

impl Sources for FsSources {
    fn read(&self, path: &str) -> Result<String, String> {
        let rel = Path::new(path);
        if rel.components().any(|c| {
            matches!(
                c,
                Component::ParentDir | Component::RootDir | Component::Prefix(_)
            )
        }) {
            return Err("the path must stay inside the project".into());
        }
        std::fs::read_to_string(self.root.join(rel)).map_err(|e| e.to_string())
    }

    fn files(&self) -> &[String] {
        &self.files
    }

    /// Remote includes are looked up in `.gantry/include-cache/`, under the key with every character
    /// outside `[A-Za-z0-9._-]` replaced by `_`.
    fn remote(&self, key: &str) -> Option<String> {
        let name: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        std::fs::read_to_string(self.include_cache.join(name)).ok()
    }
}
