//! `Sources` over the file system: the compiler reads files only through this.

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use gantry_pipeline::Sources;

use crate::includes::Includes;

/// The project's files on disk, with the listing taken once from git, and the remote includes.
pub struct FsSources {
    root: PathBuf,
    files: Vec<String>,
    /// Remote includes: the cache, and what to fetch.
    pub includes: Includes,
    /// For `changes`: computed on first use only, since it costs git processes.
    changed: OnceLock<Option<Vec<String>>>,
    default_branch: String,
    is_repo: bool,
    /// This project as a component source: `host/path/` and the `HEAD` commit (see
    /// [`FsSources::own_components`]).
    own: Option<(String, String)>,
}

impl FsSources {
    /// Files under `root`, as listed in `files`.
    pub fn new(
        root: &Path,
        includes: Includes,
        files: Vec<String>,
        default_branch: &str,
        is_repo: bool,
    ) -> FsSources {
        FsSources {
            root: root.to_path_buf(),
            files,
            includes,
            changed: OnceLock::new(),
            default_branch: default_branch.to_string(),
            is_repo,
            own: None,
        }
    }

    /// Components of this very project at its `HEAD` commit (`host/path/NAME@SHA`, as in
    /// `$CI_SERVER_FQDN/$CI_PROJECT_PATH/NAME@$CI_COMMIT_SHA`, the way GitLab's documentation has a
    /// component project test its components) are read from the working tree, since that commit
    /// may not be pushed yet.
    pub fn own_components(&mut self, host: &str, project_path: &str, sha: &str) {
        if !sha.is_empty() {
            self.own = Some((format!("{host}/{project_path}/"), sha.to_string()));
        }
    }

    /// The content of component `key` when it is one of this project's at `HEAD` (see
    /// [`FsSources::own_components`]) and the working tree has it.
    fn own_component(&self, key: &str) -> Option<String> {
        let (prefix, sha) = self.own.as_ref()?;
        let (name, version) = key
            .strip_prefix("component:")?
            .strip_prefix(prefix.as_str())?
            .rsplit_once('@')?;
        if version != sha || name.contains('/') {
            return None;
        }
        gantry_pipeline::component::files(name)
            .iter()
            .find_map(|f| self.read(f).ok())
    }

    /// The listed files.
    pub fn into_files(self) -> Vec<String> {
        self.files
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

    /// Remote includes: see [`crate::includes`].
    fn remote(&self, key: &str) -> Option<String> {
        self.own_component(key).or_else(|| self.includes.get(key))
    }

    /// A local include in a component of this project at `HEAD` is read from the working tree too.
    fn nested_local(&self, parent: &str, path: &str) -> Result<Option<String>, String> {
        if self.own_component(parent).is_some() {
            return Ok(None);
        }
        self.includes.nested_local(parent, path).map(Some)
    }

    fn remote_unavailable(&self, key: &str) -> Option<String> {
        self.includes.unavailable(key)
    }

    fn changed_files(&self) -> Option<&[String]> {
        self.changed
            .get_or_init(|| {
                if self.is_repo {
                    crate::git::changed_files(&self.root, &self.default_branch)
                } else {
                    None
                }
            })
            .as_deref()
    }
}
