//! The compiled pipeline: what the runtime executes. Plain data, no behaviour beyond small helpers.
//!
//! Everything here is already resolved: includes, `extends`, `!reference`, `default`, `inherit`, rules,
//! `parallel`, and `needs`. Variable *values* are kept unexpanded; the runtime expands them per job
//! with [`crate::vars`], because dotenv reports from earlier jobs can change them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A compiled pipeline.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Plan {
    /// Stage names in order, including `.pre` and `.post`.
    pub stages: Vec<String>,
    /// Jobs in plan order: by stage, then by order in the file. Jobs whose rules say `never` are absent.
    pub jobs: Vec<Job>,
    /// Predefined pipeline variables (`CI`, `CI_COMMIT_*`, `CI_PROJECT_*`, ...): the lowest precedence.
    pub predefined: Vec<Variable>,
    /// Global `variables`, then `workflow:rules:variables`, later entries winning.
    pub variables: Vec<Variable>,
    /// The caller's variables (`--variable`, variables files): the highest precedence.
    pub cli_variables: Vec<Variable>,
    /// The caller's variables scoped to environments (variables files): per key, the most
    /// specific scope that matches a job's environment gives it its value, just below
    /// `cli_variables`. See [`scope_rank`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scoped_variables: Vec<ScopedVariable>,
}

/// A variable that applies only to jobs whose environment matches `environment_scope`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopedVariable {
    /// The variable.
    pub variable: Variable,
    /// An environment name, a pattern with `*` wildcards, or `*` for every job.
    pub environment_scope: String,
}

/// How well GitLab's `environment_scope` `scope` matches the environment `env` (expanded; `None`
/// for a job without one): `None` when it does not apply, else a rank where a higher one is more
/// specific: `*` (every job, even one without an environment) ranks 0, a pattern ranks 1, the
/// exact name ranks 2. `*` in a pattern matches any text, `/` included (`review/*` matches
/// `review/a/b`).
#[must_use]
pub fn scope_rank(scope: &str, env: Option<&str>) -> Option<u8> {
    if scope == "*" {
        return Some(0);
    }
    let env = env?;
    let parts: Vec<&str> = scope.split('*').collect();
    if parts.len() == 1 {
        return (scope == env).then_some(2);
    }
    let mut rest = env;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            rest = rest.strip_prefix(part)?;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part).then_some(1);
        } else {
            let at = rest.find(part)?;
            rest = &rest[at + part.len()..];
        }
    }
    None
}

/// Per key, the item whose `environment_scope` matches the environment `env` most specifically
/// (the later one on a tie), in the order each key first appears; `key_scope` gives an item's key
/// and scope. GitLab's rule for scoped variables, shared by `--variables-file` and the server's
/// project variables.
pub fn most_specific<'a, T>(
    items: &'a [T],
    key_scope: impl Fn(&'a T) -> (&'a str, &'a str),
    env: Option<&str>,
) -> Vec<&'a T> {
    let mut best: Vec<(u8, &str, &T)> = Vec::new();
    for item in items {
        let (key, scope) = key_scope(item);
        let Some(rank) = scope_rank(scope, env) else {
            continue;
        };
        match best.iter_mut().find(|(_, k, _)| *k == key) {
            Some(b) if b.0 <= rank => *b = (rank, key, item),
            Some(_) => {}
            None => best.push((rank, key, item)),
        }
    }
    best.into_iter().map(|(_, _, item)| item).collect()
}

/// A variable with its value and flags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variable {
    /// The name.
    pub key: String,
    /// The value, unexpanded.
    pub value: String,
    /// Whether `$VAR` references inside the value are expanded (`expand: false` turns it off).
    pub expand: bool,
    /// Whether the value must be replaced by `[MASKED]` in every output.
    pub masked: bool,
}

impl Variable {
    /// A plain, expandable, unmasked variable.
    #[must_use]
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Variable {
        Variable {
            key: key.into(),
            value: value.into(),
            expand: true,
            masked: false,
        }
    }
}

/// When a job runs, relative to the state of the jobs it waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// Only when everything it waits for succeeded (allowed failures count as success).
    OnSuccess,
    /// Only when something it waits for failed.
    OnFailure,
    /// Whatever happened before.
    Always,
    /// Only when played (`--manual JOB`).
    Manual,
    /// Like `OnSuccess`, after [`Job::start_in`].
    Delayed,
}

impl When {
    /// The keyword as written in YAML.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            When::OnSuccess => "on_success",
            When::OnFailure => "on_failure",
            When::Always => "always",
            When::Manual => "manual",
            When::Delayed => "delayed",
        }
    }
}

/// Whether a failure of the job fails the pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AllowFailure {
    /// `allow_failure: true|false`.
    Bool(bool),
    /// `allow_failure: {exit_codes: [..]}`: allowed only for these exit codes.
    ExitCodes(Vec<i32>),
}

impl AllowFailure {
    /// Whether a failure with `exit_code` is allowed (`None` means no exit code, such as a timeout).
    #[must_use]
    pub fn allows(&self, exit_code: Option<i32>) -> bool {
        match self {
            AllowFailure::Bool(b) => *b,
            AllowFailure::ExitCodes(codes) => exit_code.is_some_and(|c| codes.contains(&c)),
        }
    }
    /// Whether some failure could be allowed (for listings).
    #[must_use]
    pub fn is_allowed(&self) -> bool {
        !matches!(self, AllowFailure::Bool(false))
    }
}

/// Why a job failed, as GitLab names the reasons that `retry:when` matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The script exited non-zero.
    ScriptFailure,
    /// The job ran past its timeout.
    JobExecutionTimeout,
    /// The executor could not run the job.
    RunnerSystemFailure,
    /// A job it needs produced no usable artifacts.
    MissingDependencyFailure,
    /// Something else.
    UnknownFailure,
    /// The script succeeded but the deployment's `verify:` failed (a Gantry reason). Never
    /// retried, not even by `retry:when: always`: a retry would deploy the faulty version again;
    /// `verify:on_failure: rollback` is what answers it.
    VerificationFailure,
}

impl FailureReason {
    /// The reason as GitLab spells it (`script_failure`, ...), as the API and the store keep it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::ScriptFailure => "script_failure",
            FailureReason::JobExecutionTimeout => "job_execution_timeout",
            FailureReason::RunnerSystemFailure => "runner_system_failure",
            FailureReason::MissingDependencyFailure => "missing_dependency_failure",
            FailureReason::UnknownFailure => "unknown_failure",
            FailureReason::VerificationFailure => "verification_failure",
        }
    }
}

/// `retry`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// How many times to retry (0 to 2).
    pub max: u32,
    /// Which failures to retry; empty means `always`.
    pub when: Vec<String>,
    /// Retry only for these exit codes, when non-empty.
    pub exit_codes: Vec<i32>,
}

impl Retry {
    /// Whether a failure with this reason and exit code should be retried (attempt counting is the caller's).
    #[must_use]
    pub fn matches(&self, reason: FailureReason, exit_code: Option<i32>) -> bool {
        if self.max == 0 || reason == FailureReason::VerificationFailure {
            return false;
        }
        let when_ok = self.when.is_empty()
            || self
                .when
                .iter()
                .any(|w| w == "always" || w == reason.as_str());
        let code_ok =
            self.exit_codes.is_empty() || exit_code.is_some_and(|c| self.exit_codes.contains(&c));
        if self.when.is_empty() || self.exit_codes.is_empty() {
            when_ok && code_ok
        } else {
            when_ok || code_ok
        }
    }
}

/// One entry of `needs`, resolved to a concrete job of the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Need {
    /// The name of the needed job (with its matrix suffix, if any).
    pub job: String,
    /// Whether its artifacts are downloaded.
    pub artifacts: bool,
    /// Whether the need was `optional: true`.
    pub optional: bool,
}

/// When artifacts are uploaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactsWhen {
    /// Only when the job succeeds (the default).
    OnSuccess,
    /// Only when the job fails.
    OnFailure,
    /// Always.
    Always,
}

/// `artifacts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifacts {
    /// `name` (unexpanded).
    pub name: Option<String>,
    /// Glob patterns relative to the project directory (unexpanded).
    pub paths: Vec<String>,
    /// Glob patterns to leave out.
    pub exclude: Vec<String>,
    /// Whether untracked files are added.
    pub untracked: bool,
    /// When to upload.
    pub when: ArtifactsWhen,
    /// `expire_in`, as written.
    pub expire_in: Option<String>,
    /// `reports`: report type → paths. `dotenv` is applied by the runtime; `junit`,
    /// `coverage_report` (Cobertura; its `path`), `codequality`, `sast`, `dependency_scanning`,
    /// `container_scanning` and Gantry's `lcov`, `gotest`, `gocover` and `sarif` are read into
    /// summaries for gates. Other types are only kept.
    pub reports: Vec<(String, Vec<String>)>,
}

/// Cache `policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CachePolicy {
    /// Restore before, save after.
    PullPush,
    /// Restore only.
    Pull,
    /// Save only.
    Push,
}

/// How a cache key is made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheKey {
    /// A literal key (unexpanded).
    Literal(String),
    /// A hash of these files' contents, optionally prefixed.
    Files {
        /// The files (paths relative to the project directory).
        files: Vec<String>,
        /// The prefix (unexpanded).
        prefix: Option<String>,
    },
}

/// One `cache` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cache {
    /// The key.
    pub key: CacheKey,
    /// Paths (globs) to cache.
    pub paths: Vec<String>,
    /// Whether untracked files are cached.
    pub untracked: bool,
    /// The policy.
    pub policy: CachePolicy,
    /// When to save (`on_success`, `on_failure`, `always`).
    pub when: ArtifactsWhen,
    /// Keys tried in order when the key has no cache yet.
    pub fallback_keys: Vec<String>,
    /// `cache:unprotect`: the cache is shared with unprotected refs (GitLab keeps the caches of
    /// protected and unprotected refs apart unless this is set).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unprotect: bool,
    /// Appended to the key and every fallback key. The server sets GitLab's `-protected` or
    /// `-non_protected`, so that a pipeline of an unprotected ref (a fork's, say) never writes a
    /// cache that a protected one restores; empty in a local run.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_suffix: String,
}

/// `environment`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    /// The name, expanded with the job's variables at compile time (as GitLab does).
    pub name: String,
    /// The URL, expanded likewise.
    pub url: Option<String>,
    /// `start`, `prepare`, `stop`, `verify` or `access`.
    pub action: String,
    /// `production`, `staging`, `testing`, `development` or `other`.
    pub deployment_tier: Option<String>,
}

/// An `image` or a service, kept for the container executor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The image name.
    pub name: String,
    /// `entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `alias` (services).
    pub alias: Option<String>,
    /// `command` (services).
    pub command: Option<Vec<String>>,
    /// `pull_policy`.
    pub pull_policy: Vec<String>,
    /// Service `variables`.
    pub variables: Vec<(String, String)>,
    /// `docker: user`: the user the container runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_user: Option<String>,
    /// `docker: platform`: the platform of the image to pull and run (`linux/arm64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_platform: Option<String>,
}

/// A job of the plan.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    /// The job's name, with GitLab's suffix for parallel jobs (`build 1/3`, `build: [linux, amd64]`).
    pub name: String,
    /// The name as written in the file, without the suffix.
    pub base_name: String,
    /// The stage.
    pub stage: String,
    /// Index of the stage in [`Plan::stages`].
    pub stage_index: usize,
    /// `before_script` lines.
    pub before_script: Vec<String>,
    /// `script` lines.
    pub script: Vec<String>,
    /// `after_script` lines.
    pub after_script: Vec<String>,
    /// Predefined job variables (`CI_JOB_NAME`, `CI_JOB_STAGE`, `CI_NODE_*`, `CI_ENVIRONMENT_*`, ...).
    pub predefined: Vec<Variable>,
    /// Job variables (job `variables`, then matrix values, then `rules:variables`), unexpanded.
    pub variables: Vec<Variable>,
    /// When the job runs.
    pub when: When,
    /// `start_in` for delayed jobs.
    pub start_in: Option<Duration>,
    /// `allow_failure`, with GitLab's default (true for manual jobs without rules).
    pub allow_failure: AllowFailure,
    /// `needs`, resolved to job names; `None` means the job waits for all earlier stages.
    pub needs: Option<Vec<Need>>,
    /// `dependencies`; `None` means every job of earlier stages (or every need with artifacts).
    pub dependencies: Option<Vec<String>>,
    /// `artifacts`.
    pub artifacts: Option<Artifacts>,
    /// `cache` entries.
    pub cache: Vec<Cache>,
    /// `retry`.
    pub retry: Retry,
    /// `timeout`.
    pub timeout: Option<Duration>,
    /// `(CI_NODE_INDEX, CI_NODE_TOTAL)` for parallel jobs.
    pub node: Option<(u32, u32)>,
    /// `environment`.
    pub environment: Option<Environment>,
    /// `coverage`: a regex over the log (without the slashes).
    pub coverage: Option<String>,
    /// `resource_group` (unexpanded).
    pub resource_group: Option<String>,
    /// `interruptible`.
    pub interruptible: bool,
    /// `tags`.
    pub tags: Vec<String>,
    /// `image`.
    pub image: Option<Image>,
    /// `services`.
    pub services: Vec<Image>,
    /// Whether this is a `trigger` job (not runnable yet).
    pub trigger: bool,
    /// Why the job is in the plan: the rule or `only`/`except` clause that selected it.
    pub reason: String,
    /// `gate`: the quality gate's conditions, evaluated by the runtime after the script (if any)
    /// on the reports of the jobs this one depends on (issue 18). Empty for other jobs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gate: Vec<crate::gate::Condition>,
    /// `verify`: what to measure after the script succeeds (issue 19); `None` for other jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<crate::verify::Verify>,
    /// `rollback_script`: run in place of a re-deploy when the job's deployment is rolled back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollback_script: Vec<String>,
}

impl Job {
    /// A job named `name` in stage `stage` (at `stage_index`), with every other keyword at GitLab's
    /// default: no scripts, `when: on_success`, no `needs`, no artifacts, and so on.
    #[must_use]
    pub fn new(name: &str, stage: &str, stage_index: usize) -> Job {
        Job {
            name: name.to_string(),
            base_name: name.to_string(),
            stage: stage.to_string(),
            stage_index,
            before_script: Vec::new(),
            script: Vec::new(),
            after_script: Vec::new(),
            predefined: Vec::new(),
            variables: Vec::new(),
            when: When::OnSuccess,
            start_in: None,
            allow_failure: AllowFailure::Bool(false),
            needs: None,
            dependencies: None,
            artifacts: None,
            cache: Vec::new(),
            retry: Retry::default(),
            timeout: None,
            node: None,
            environment: None,
            coverage: None,
            resource_group: None,
            interruptible: false,
            tags: Vec::new(),
            image: None,
            services: Vec::new(),
            trigger: false,
            reason: String::new(),
            gate: Vec::new(),
            verify: None,
            rollback_script: Vec::new(),
        }
    }
}

impl Plan {
    /// The index of the job named `name`.
    #[must_use]
    pub fn job_index(&self, name: &str) -> Option<usize> {
        self.jobs.iter().position(|j| j.name == name)
    }

    /// Every variable of job `index`, lowest precedence first: pipeline predefined, job predefined, then
    /// `runtime` (what only the runtime knows, such as `CI_JOB_ID` and `CI_PROJECT_DIR`), global and
    /// workflow variables, job variables, `dotenv` (from the reports of the jobs it depends on), and last
    /// the caller's variables. Resolve the result with [`crate::vars::resolve`].
    #[must_use]
    pub fn job_variables(
        &self,
        index: usize,
        runtime: &[Variable],
        dotenv: &[Variable],
    ) -> Vec<Variable> {
        let job = &self.jobs[index];
        let mut v = Vec::with_capacity(
            self.predefined.len()
                + job.predefined.len()
                + runtime.len()
                + self.variables.len()
                + job.variables.len(),
        );
        v.extend_from_slice(&self.predefined);
        v.extend_from_slice(&job.predefined);
        v.extend_from_slice(runtime);
        v.extend_from_slice(&self.variables);
        v.extend_from_slice(&job.variables);
        v.extend_from_slice(dotenv);
        if !self.scoped_variables.is_empty() {
            let scoped = self.scoped_for(job, &v);
            v.extend(scoped);
        }
        v.extend_from_slice(&self.cli_variables);
        v
    }

    /// Per key, the scoped variable whose scope matches `job`'s environment most specifically (the
    /// later one on a tie). The environment's name is expanded with `below`, the job's other
    /// variables, and the caller's.
    fn scoped_for(&self, job: &Job, below: &[Variable]) -> Vec<Variable> {
        let env = job.environment.as_ref().map(|e| {
            let mut all = below.to_vec();
            all.extend_from_slice(&self.cli_variables);
            let resolved: std::collections::HashMap<String, String> =
                crate::vars::resolve(&all).into_iter().collect();
            crate::vars::expand(&e.name, &|k| resolved.get(k).cloned())
        });
        most_specific(
            &self.scoped_variables,
            |s| (&s.variable.key, &s.environment_scope),
            env.as_deref(),
        )
        .into_iter()
        .map(|s| s.variable.clone())
        .collect()
    }

    /// What each job waits for. Jobs with `needs` wait for those jobs; the others wait for every job of
    /// every earlier stage, expressed as a stage barrier so that the graph stays linear in size.
    #[must_use]
    pub fn waits(&self) -> Vec<WaitFor> {
        let index: std::collections::HashMap<&str, usize> = self
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.name.as_str(), i))
            .collect();
        self.jobs
            .iter()
            .map(|j| match &j.needs {
                Some(needs) => WaitFor::Jobs(
                    needs
                        .iter()
                        .filter_map(|n| index.get(n.job.as_str()).copied())
                        .collect(),
                ),
                None => WaitFor::StagesBefore(j.stage_index),
            })
            .collect()
    }
}

/// What a job waits for before it can start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitFor {
    /// These jobs (indices into [`Plan::jobs`]).
    Jobs(Vec<usize>),
    /// Every job whose stage index is lower than this.
    StagesBefore(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_match_as_gitlab_documents() {
        assert_eq!(scope_rank("*", None), Some(0));
        assert_eq!(scope_rank("*", Some("production")), Some(0));
        assert_eq!(scope_rank("production", None), None);
        assert_eq!(scope_rank("production", Some("production")), Some(2));
        assert_eq!(scope_rank("production", Some("production/eu")), None);
        assert_eq!(scope_rank("review/*", Some("review/feature")), Some(1));
        assert_eq!(scope_rank("review/*", Some("review/a/b")), Some(1));
        assert_eq!(scope_rank("review/*", Some("staging")), None);
        assert_eq!(scope_rank("review/*", None), None);
        assert_eq!(scope_rank("*/eu", Some("production/eu")), Some(1));
        assert_eq!(scope_rank("a*b*c", Some("a-b-c")), Some(1));
        assert_eq!(scope_rank("a*b*c", Some("a-c")), None);
    }

    fn env_job(name: &str, env: Option<&str>) -> Job {
        let mut j = Job::new(name, "deploy", 0);
        j.environment = env.map(|e| Environment {
            name: e.into(),
            url: None,
            action: "start".into(),
            deployment_tier: None,
        });
        j
    }

    fn scoped(value: &str, scope: &str) -> ScopedVariable {
        ScopedVariable {
            variable: Variable::new("DB_HOST", value),
            environment_scope: scope.into(),
        }
    }

    fn db_host(plan: &Plan, i: usize) -> Option<String> {
        crate::vars::resolve(&plan.job_variables(i, &[], &[]))
            .into_iter()
            .find(|(k, _)| k == "DB_HOST")
            .map(|(_, v)| v)
    }

    #[test]
    fn the_most_specific_scope_wins_per_job() {
        let mut prod = env_job("prod", Some("$TARGET"));
        prod.variables = vec![Variable::new("TARGET", "production")];
        let plan = Plan {
            jobs: vec![
                prod,
                env_job("review", Some("review/a/b")),
                env_job("none", None),
                env_job("staging", Some("staging")),
            ],
            // The exact name beats the pattern, which beats `*`, whatever their order.
            scoped_variables: vec![
                scoped("db.default", "*"),
                scoped("db.prod", "production"),
                scoped("db.review", "review/*"),
                scoped("db.pattern", "prod*"),
            ],
            ..Plan::default()
        };
        assert_eq!(db_host(&plan, 0).as_deref(), Some("db.prod"));
        assert_eq!(db_host(&plan, 1).as_deref(), Some("db.review"));
        assert_eq!(db_host(&plan, 2).as_deref(), Some("db.default"));
        assert_eq!(db_host(&plan, 3).as_deref(), Some("db.default"));
        let only_prod = Plan {
            scoped_variables: vec![scoped("db.prod", "production")],
            ..plan.clone()
        };
        assert_eq!(db_host(&only_prod, 2), None);
        // `--variable` still wins over a scoped entry.
        let cli = Plan {
            cli_variables: vec![Variable::new("DB_HOST", "db.cli")],
            ..plan
        };
        assert_eq!(db_host(&cli, 0).as_deref(), Some("db.cli"));
    }
}
