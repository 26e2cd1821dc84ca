//! The artifact store: `state_dir/artifacts/<job-slug>/`, kept across runs so that a later run of a
//! single job can use the artifacts an earlier run produced.
//!
//! Layout of one job's entry:
//! - `files/`: the artifact files, relative to the workspace, restored into dependants' workspaces;
//! - `reports/<type>/`: the files of `artifacts:reports`, kept but not restored;
//! - `meta.json`: [`Meta`]: the job name, the expanded `name`, `expire_in`, the file count and the
//!   variables of its dotenv reports.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use gantry_pipeline::plan::Variable;
use serde::{Deserialize, Serialize};

/// `meta.json` of a stored entry.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// The job's name.
    pub job: String,
    /// `artifacts:name`, expanded.
    pub name: Option<String>,
    /// `artifacts:expire_in`, as written.
    pub expire_in: Option<String>,
    /// When it was stored (RFC 3339).
    pub created_at: String,
    /// How many files `files/` holds.
    pub files: usize,
    /// The variables of the job's dotenv reports, in order.
    pub dotenv: Vec<(String, String)>,
}

/// What to store for a job.
pub(crate) struct Upload<'a> {
    /// The job's workspace.
    pub workspace: &'a Path,
    /// Artifact files, relative to the workspace.
    pub files: &'a [PathBuf],
    /// Report type → report files, relative to the workspace.
    pub reports: &'a [(String, Vec<PathBuf>)],
    /// The metadata (its `files` is filled in).
    pub meta: Meta,
}

/// Replaces the entry at `dir` with `upload`.
pub(crate) fn store(dir: &Path, mut upload: Upload<'_>) -> io::Result<()> {
    let parent = dir.parent().unwrap_or(dir);
    fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(
        ".{}.new-{}",
        dir.file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    crate::files::remove(&tmp)?;
    fs::create_dir_all(tmp.join("files"))?;
    upload.meta.files =
        crate::files::copy_files(upload.workspace, upload.files, &tmp.join("files"))?;
    for (kind, files) in upload.reports {
        let safe: String = kind
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        crate::files::copy_files(upload.workspace, files, &tmp.join("reports").join(safe))?;
    }
    let meta = serde_json::to_vec_pretty(&upload.meta).map_err(io::Error::other)?;
    fs::write(tmp.join("meta.json"), meta)?;
    crate::files::swap_in(&tmp, dir)
}

/// Copies the stored files of the entry at `dir` into `workspace`; how many (`None`: no entry).
pub(crate) fn restore(dir: &Path, workspace: &Path) -> io::Result<Option<usize>> {
    if !dir.join("meta.json").exists() {
        return Ok(None);
    }
    crate::files::copy_tree(&dir.join("files"), workspace).map(Some)
}

/// The dotenv variables of the entry at `dir` (none when there is no entry).
pub(crate) fn stored_dotenv(dir: &Path) -> Vec<Variable> {
    fs::read(dir.join("meta.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
        .map(|m| to_variables(m.dotenv))
        .unwrap_or_default()
}

/// Dotenv pairs as job variables: literal (not expanded), not masked.
pub(crate) fn to_variables(pairs: Vec<(String, String)>) -> Vec<Variable> {
    pairs
        .into_iter()
        .map(|(key, value)| Variable {
            key,
            value,
            expand: false,
            masked: false,
        })
        .collect()
}

/// Parses a dotenv report: `KEY=VALUE` lines; blank lines and `#` comments are ignored, an optional
/// `export ` is dropped, and one pair of matching surrounding quotes is stripped from the value.
/// Returns the pairs and the lines that are not valid.
pub(crate) fn parse_dotenv(text: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut pairs = Vec::new();
    let mut bad = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let t = t.strip_prefix("export ").unwrap_or(t);
        let Some((key, value)) = t.split_once('=') else {
            bad.push(line.to_string());
            continue;
        };
        let key = key.trim();
        let valid = !key.is_empty()
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !key.as_bytes()[0].is_ascii_digit();
        if !valid {
            bad.push(line.to_string());
            continue;
        }
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        pairs.push((key.to_string(), value.to_string()));
    }
    (pairs, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dotenv() {
        let (pairs, bad) = parse_dotenv(
            "# c\n\nA=1\r\nexport B = \"two words\" \nC='x=y'\nnot a pair\n1X=2\nD=\n",
        );
        let want: Vec<(String, String)> = [("A", "1"), ("B", "two words"), ("C", "x=y"), ("D", "")]
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        assert_eq!(pairs, want);
        assert_eq!(bad, ["not a pair", "1X=2"]);
    }
}
