//! The JSON documents the server stores in the store's opaque `spec` columns: a project's settings
//! ([`ProjectSpec`]), what every job of a pipeline shares ([`PipelineDoc`], with a fork pipeline's
//! approval, [`ForkDoc`]) and a job ([`JobDoc`]). Plain data: no IO, no state.

use gantry_api::{ForkPipelines, PipelineFork, ProjectVariable};
use gantry_pipeline::Variable;
use serde::{Deserialize, Serialize};

/// A project's settings, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ProjectSpec {
    pub repo_url: String,
    pub default_branch: String,
    #[serde(default)]
    pub webhook_secret: Option<String>,
    #[serde(default)]
    pub variables: Vec<ProjectVariable>,
    #[serde(default)]
    pub forge: Option<gantry_api::Forge>,
    #[serde(default)]
    pub schedules: Vec<gantry_api::Schedule>,
    /// The other projects that may `include:project` this one's files (names or `*` patterns).
    #[serde(default)]
    pub include_allowed_from: Vec<String>,
    /// What pipelines of merge requests from forks get.
    #[serde(default)]
    pub fork_pipelines: ForkPipelines,
    /// The protected branches (names or `*` patterns); `None`: the default branch only.
    #[serde(default)]
    pub protected_branches: Option<Vec<String>>,
    /// The protected tags (names or `*` patterns); none by default, as on GitLab.
    #[serde(default)]
    pub protected_tags: Vec<String>,
    /// `notify:` rules of the project, applied with those of each pipeline's file (unexpanded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<gantry_notify::Rule>,
}

impl ProjectSpec {
    /// The protected branches: the setting, or the default branch alone.
    pub fn protected_branches(&self) -> Vec<String> {
        self.protected_branches
            .clone()
            .unwrap_or_else(|| vec![self.default_branch.clone()])
    }

    /// Whether branch (or, with `tag`, tag) `name` is protected: a name or pattern of
    /// `protected_branches` (the default branch when unset) or `protected_tags` matches it, where
    /// `*` stands for any run of characters, `/` included (GitLab's wildcards).
    pub fn is_protected(&self, name: &str, tag: bool) -> bool {
        if tag {
            self.protected_tags.iter().any(|p| name_matches(p, name))
        } else {
            match &self.protected_branches {
                Some(list) => list.iter().any(|p| name_matches(p, name)),
                None => name == self.default_branch,
            }
        }
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters (none included)
/// and every other character for itself.
pub(crate) fn name_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    // Greedy matching with backtracking to the last `*` (linear for names this short).
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// What every job of a pipeline shares, as stored in the pipeline's `spec`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct PipelineDoc {
    pub stages: Vec<String>,
    /// Predefined pipeline variables (with the merge request's).
    pub predefined: Vec<Variable>,
    /// Global and `workflow:rules` variables.
    pub variables: Vec<Variable>,
    /// Trigger and schedule variables: the highest precedence.
    pub cli_variables: Vec<Variable>,
    /// Project variables this pipeline may see (protected ones only on protected refs); environment
    /// scopes are matched per job when it is handed out. Masked ones carry no value (`None`): it is
    /// read from the project's variables at dispatch, so that no row keeps a plaintext copy.
    pub project_variables: Vec<ProjectVariable>,
    /// Set for a pipeline of a merge request from a fork: it has no project variables and its jobs
    /// get no `CI_JOB_TOKEN` until it is approved (`approve`), which writes both in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork: Option<ForkDoc>,
    /// The pipeline's `notify:` rules, unexpanded (see `notify.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<gantry_notify::Rule>,
    /// The change's lines, read at creation when a gate has `new_coverage` (else `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<ChangesDoc>,
}

/// The most added or modified lines a pipeline keeps for `new_coverage` (each goes to a gate
/// job's agent as a number).
pub(crate) const MAX_CHANGED_LINES: usize = 250_000;

/// The most bytes of a pipeline's kept change ([`ChangesDoc::Lines`]: paths and ranges), which
/// every hand-out of its jobs decodes with the rest of the [`PipelineDoc`].
pub(crate) const MAX_CHANGES_BYTES: usize = 256 << 10;

/// The lines a pipeline's change added or modified, read when it was created
/// (`reports::read_changes`), for its gates' `new_coverage`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ChangesDoc {
    /// By file, the lines as ranges (`1-5,9`).
    Lines(std::collections::BTreeMap<String, String>),
    /// Why there are none (no base, git failed, too many): the condition has no data.
    Unknown(String),
}

impl ChangesDoc {
    /// `lines` kept, or why not when they are over [`MAX_CHANGED_LINES`] or [`MAX_CHANGES_BYTES`].
    pub fn of(lines: &gantry_reports::ChangedLines) -> ChangesDoc {
        Self::bounded(lines, MAX_CHANGED_LINES, MAX_CHANGES_BYTES)
    }

    fn bounded(
        lines: &gantry_reports::ChangedLines,
        max_lines: usize,
        max_bytes: usize,
    ) -> ChangesDoc {
        let count: usize = lines.files.values().map(Vec::len).sum();
        if count > max_lines {
            return ChangesDoc::Unknown(format!(
                "the change adds or modifies {count} lines, over the {max_lines} kept for \
                 new_coverage"
            ));
        }
        let mut bytes = 0;
        let mut out = std::collections::BTreeMap::new();
        for (file, numbers) in &lines.files {
            let ranges = to_ranges(numbers);
            bytes += file.len() + ranges.len();
            if bytes > max_bytes {
                return ChangesDoc::Unknown(format!(
                    "the change's lines ({} files) take over the {max_bytes} bytes kept for \
                     new_coverage",
                    lines.files.len()
                ));
            }
            out.insert(file.clone(), ranges);
        }
        ChangesDoc::Lines(out)
    }

    /// The lines kept, else why there are none.
    pub fn lines(&self) -> Result<gantry_reports::ChangedLines, String> {
        let ranges = match self {
            ChangesDoc::Lines(ranges) => ranges,
            ChangesDoc::Unknown(why) => return Err(why.clone()),
        };
        let mut out = gantry_reports::ChangedLines::default();
        for (file, text) in ranges {
            let lines = from_ranges(text)
                .ok_or_else(|| format!("the kept lines of {file} do not parse: `{text}`"))?;
            out.files.insert(file.clone(), lines);
        }
        Ok(out)
    }
}

/// Sorted line numbers as ranges: `[1, 2, 3, 5]` → `1-3,5`.
fn to_ranges(lines: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        let first = lines[i];
        let mut last = first;
        while i + 1 < lines.len() && last.checked_add(1) == Some(lines[i + 1]) {
            i += 1;
            last = lines[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if last == first {
            out.push_str(&first.to_string());
        } else {
            out.push_str(&format!("{first}-{last}"));
        }
        i += 1;
    }
    out
}

/// The inverse of [`to_ranges`]; `None` when `text` is not such a list.
fn from_ranges(text: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let n = part.parse::<u32>().ok()?;
                (n, n)
            }
        };
        if last < first || out.len() + (last - first) as usize > MAX_CHANGED_LINES {
            return None;
        }
        out.extend(first..=last);
    }
    Some(out)
}

/// A fork pipeline's mode and approval, as stored in its [`PipelineDoc`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ForkDoc {
    /// The project's `fork_pipelines` when the pipeline was created.
    pub mode: ForkPipelines,
    /// Who approved it (`approve`): `admin`, or `token ID (NAME)`.
    #[serde(default)]
    pub approved_by: Option<String>,
    /// When.
    #[serde(default)]
    pub approved_at: Option<i64>,
}

/// What a pipeline waits for until a fork pipeline of mode `approve` is approved.
pub(crate) const WAITING_FOR_APPROVAL: &str = "a merge request from a fork: it runs, with the \
    project's variables, once the admin or a project token approves it \
    (POST /api/v1/pipelines/{id}/approve)";

impl ForkDoc {
    /// Whether its jobs get the project's variables and `CI_JOB_TOKEN`: only once approved.
    pub fn secrets(&self) -> bool {
        self.mode == ForkPipelines::Approve && self.approved_at.is_some()
    }

    /// Whether it waits for an approval.
    pub fn waiting(&self) -> bool {
        self.mode == ForkPipelines::Approve && self.approved_at.is_none()
    }

    /// The API's view.
    pub fn to_api(&self) -> PipelineFork {
        PipelineFork {
            mode: self.mode,
            secrets: self.secrets(),
            waiting: self.waiting().then(|| WAITING_FOR_APPROVAL.to_string()),
            approved_by: self.approved_by.clone(),
            approved_at: self.approved_at.map(crate::rfc3339),
        }
    }
}

/// The fork part of a stored pipeline spec, read without decoding the rest: pipelines that are not
/// fork pipelines have no `fork` key, and cost a substring search.
pub(crate) fn fork_of(spec: &str) -> Option<ForkDoc> {
    #[derive(Deserialize)]
    struct Only {
        #[serde(default)]
        fork: Option<ForkDoc>,
    }
    if !spec.contains("\"fork\"") {
        return None;
    }
    serde_json::from_str::<Only>(spec).ok()?.fork
}

/// The project variables a pipeline gets at creation: the protected ones only on a protected ref,
/// masked ones without their value (read from the project at dispatch).
pub(crate) fn pipeline_variables(project: &ProjectSpec, protected: bool) -> Vec<ProjectVariable> {
    project
        .variables
        .iter()
        .filter(|v| protected || !v.protected)
        .cloned()
        .collect()
}

/// A job as stored in the job's `spec`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct JobDoc {
    pub job: gantry_pipeline::Job,
    /// Set on an attempt that rolls an environment back (`advance::redeploy`): the agent gets
    /// `job` turned into its rollback (`gantry_pipeline::verify::into_rollback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackDoc>,
}

/// The rollback an attempt performs: from the deployment rolled back to the one it re-deploys
/// (whose job this is), with the rolled-back job's `rollback_script` when it has one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RollbackDoc {
    /// The deployment rolled back.
    pub from: i64,
    /// The deployment re-deployed.
    pub to: i64,
    /// What runs instead of the job's script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_script: Option<Vec<String>>,
    /// Who started it (`rollback by admin`, `rollback (automatic)`): its deployment's
    /// `triggered_by` whichever of the hand-out and the rollback records it first. An attempt
    /// stored without it is triggered by `rollback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl JobDoc {
    /// The plan job as an agent runs it: a rollback's turned into its rollback.
    pub fn runnable(self) -> gantry_pipeline::Job {
        let mut job = self.job;
        if let Some(r) = &self.rollback {
            gantry_pipeline::verify::into_rollback(
                &mut job,
                &r.from.to_string(),
                &r.to.to_string(),
                r.rollback_script.as_deref(),
            );
        }
        job
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_reports::ChangedLines;

    fn changed(files: &[(&str, &[u32])]) -> ChangedLines {
        ChangedLines {
            files: files
                .iter()
                .map(|(f, l)| ((*f).to_owned(), l.to_vec()))
                .collect(),
        }
    }

    #[test]
    fn kept_changes_read_back_as_ranges() {
        let lines = changed(&[("a.go", &[1, 2, 3, 5, 9, 10]), ("b/c.go", &[7])]);
        let doc = ChangesDoc::of(&lines);
        let ChangesDoc::Lines(ranges) = &doc else {
            panic!("{doc:?}")
        };
        assert_eq!(ranges["a.go"], "1-3,5,9-10");
        assert_eq!(ranges["b/c.go"], "7");
        assert_eq!(doc.lines(), Ok(lines));
        let stored = serde_json::to_string(&doc).unwrap();
        assert_eq!(stored, r#"{"lines":{"a.go":"1-3,5,9-10","b/c.go":"7"}}"#);
        assert_eq!(serde_json::from_str::<ChangesDoc>(&stored).unwrap(), doc);
    }

    #[test]
    fn changes_over_a_bound_are_kept_as_why_not() {
        let lines = changed(&[("a.go", &[1, 2, 3]), ("b.go", &[1, 5])]);
        let doc = ChangesDoc::bounded(&lines, 4, 1_000);
        let why = doc.lines().unwrap_err();
        assert!(why.contains("5 lines, over the 4 kept"), "{why}");
        let doc = ChangesDoc::bounded(&lines, 100, 10);
        let why = doc.lines().unwrap_err();
        assert!(why.contains("over the 10 bytes kept"), "{why}");
        assert!(matches!(
            ChangesDoc::bounded(&lines, 5, 14),
            ChangesDoc::Lines(_)
        ));
    }

    #[test]
    fn kept_ranges_that_do_not_parse_are_an_error() {
        for text in ["", "x", "3-1", "1-", "1,,2"] {
            let doc = ChangesDoc::Lines([("a".to_owned(), text.to_owned())].into());
            assert!(doc.lines().is_err(), "{text}");
        }
    }
}
