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
