//! Rollbacks of `gantry run`'s deployments, automatic (a deploy job whose `verify:` failed with
//! `on_failure: rollback`) and by hand (`gantry rollback ENV [--to ID]`).
//!
//! A rollback re-runs the deploy job of its target deployment (by default the last one of the
//! environment that succeeded before the one rolled back), as GitLab's re-deploy does: the
//! target's commit is checked out in a temporary worktree under `.gantry/rollbacks/<id>/`, its
//! pipeline file compiled with the recorded ref and variables, the job turned into its rollback
//! by [`gantry_pipeline::verify::into_rollback`] (the rolled-back deployment's `rollback_script`
//! runs instead when it has one), and run with the target's artifact snapshot as the artifact
//! store. It is a deployment of its own (`rollback_of`, triggered by `rollback`); when it
//! succeeds the rolled-back one becomes `rolled_back`. A failed rollback is reported (a line on
//! stderr, the `rollback` event with status `failed`, the `rollback` notification) and never
//! starts another one.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use gantry_agent::executors::Executors;
use gantry_notify::EventKind;
use gantry_pipeline::Plan;
use gantry_pipeline::plan::{ScopedVariable, Variable};
use gantry_runtime::gantry_release::history::{
    self, Deployment, DeploymentStatus, History, NewDeployment,
};
use gantry_runtime::{Event, PipelineStatus, Reporter};

use crate::cli::Output;
use crate::notify::Notifier;
use crate::output::{Human, Json};

/// Exit code: interrupted (Ctrl-C).
const EXIT_INTERRUPTED: u8 = 130;

/// `gantry rollback ENV`: rolls the environment's newest deployment back.
#[derive(Args)]
pub struct RollbackArgs {
    /// The environment.
    #[arg(value_name = "ENV")]
    pub environment: String,
    /// The deployment to go back to (a successful one of ENV; default: the last success before
    /// the newest deployment).
    #[arg(long, value_name = "DEPLOYMENT_ID")]
    pub to: Option<u64>,
    /// The project directory (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub output: Output,
    /// A server's project instead of this directory (`--project NAME` with `--server`/`--token`,
    /// `GANTRY_SERVER`/`GANTRY_TOKEN` or `gantry login`).
    #[command(flatten)]
    pub server: crate::cmd_env::EnvServer,
    /// Variables as `gantry run` takes them: the target's masked variables (their values are not
    /// recorded) take theirs from here; the others keep their recorded values. Last: its heading
    /// would go on to the arguments after it.
    #[command(
        flatten,
        next_help_heading = "Variables (only the target's masked ones, which are not recorded, take their values from these)"
    )]
    pub variables: crate::cli::VariableArgs,
}

/// Where a rollback's lines and events go: the run's own output.
#[derive(Clone)]
pub enum Face {
    /// Human output.
    Human(Arc<Human>),
    /// `--output json`.
    Json(Arc<Json>),
}

impl Face {
    fn reporter(&self) -> Arc<dyn Reporter> {
        match self {
            Face::Human(h) => h.clone(),
            Face::Json(j) => j.clone(),
        }
    }

    fn json(&self) -> Option<Arc<Json>> {
        match self {
            Face::Human(_) => None,
            Face::Json(j) => Some(j.clone()),
        }
    }

    fn status(&self, environment: &str, from: u64, to: u64, status: &str) {
        match self {
            Face::Human(h) => h.rollback(environment, from, to, status),
            Face::Json(j) => j.rollback(environment, from, to, status),
        }
    }
}

/// Tasks a command waits for before it exits: rollbacks (`true` when it succeeded) and
/// notifications (always `true`).
#[derive(Default)]
pub struct Pending {
    tasks: Mutex<Vec<tokio::task::JoinHandle<bool>>>,
}

impl Pending {
    /// Adds a task.
    pub fn push(&self, task: tokio::task::JoinHandle<bool>) {
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
    }

    /// Adds a notification's task, which never fails.
    pub fn notification(&self, task: Option<tokio::task::JoinHandle<()>>) {
        if let Some(task) = task {
            self.push(tokio::spawn(async move {
                let _ = task.await;
                true
            }));
        }
    }

    /// Waits for every task, those added meanwhile included; `false` when a rollback failed.
    pub async fn wait(&self) -> bool {
        let mut ok = true;
        loop {
            let next = self
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match next {
                Some(task) => ok &= task.await.unwrap_or(false),
                None => return ok,
            }
        }
    }
}

/// What every rollback of one command needs.
pub struct Context {
    /// The project directory (a git work tree).
    pub project_dir: PathBuf,
    /// `.gantry/`.
    pub state_dir: PathBuf,
    /// The pipeline file, relative to the project directory.
    pub file: String,
    /// `--gitlab-url`, for the includes of the target's pipeline.
    pub gitlab_url: Option<String>,
    /// `--offline`.
    pub offline: bool,
    /// The variables of the command line: masked ones were not recorded and come from here.
    pub variables: Vec<Variable>,
    /// The variables scoped to environments (`--variables-file`).
    pub scoped: Vec<ScopedVariable>,
    /// Whether the variables were given to `gantry rollback` itself, which warns of each one the
    /// rollback does not use (it takes only masked ones).
    pub by_hand: bool,
    /// The pipeline id a rollback runs and is recorded under.
    pub pipeline_id: u64,
    /// The runtime rollbacks and notifications run on (a reporter may be called off it).
    pub runtime: tokio::runtime::Handle,
    /// The executors.
    pub executor: Arc<Executors>,
    /// The output.
    pub face: Face,
    /// Becomes `true` on Ctrl-C.
    pub cancel: tokio::sync::watch::Receiver<bool>,
    /// What the command waits for before it exits.
    pub pending: Arc<Pending>,
    /// The run's notifier, for `deployment_succeeded` and `deployment_failed`.
    pub notifier: Option<Notifier>,
}

impl Context {
    /// Starts the rollback of deployment `from` of `environment` on its own task (the command
    /// waits for it through [`Context::pending`]).
    pub fn spawn(self: &Arc<Context>, environment: String, from: u64) {
        let ctx = self.clone();
        let task = self.runtime.spawn(async move {
            roll_back(&ctx, &environment, from, None, AUTOMATIC).await == Outcome::Succeeded
        });
        self.pending.push(task);
    }

    /// Sends `deployment_succeeded` or `deployment_failed` for a deployment to `environment`.
    pub fn notify_deployment(&self, environment: &str, job: &str, succeeded: bool) {
        let Some(n) = &self.notifier else { return };
        let (kind, failed) = if succeeded {
            (EventKind::DeploymentSucceeded, Vec::new())
        } else {
            (EventKind::DeploymentFailed, vec![job.to_string()])
        };
        let _on = self.runtime.enter();
        let task = n.spawn(kind, Some(environment.to_string()), None, failed);
        self.pending.notification(task);
    }
}

/// How a rollback ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The target is deployed again.
    Succeeded,
    /// It failed (or was canceled).
    Failed,
    /// There was nothing to roll back to.
    NoTarget,
}

/// How a rollback was started, as its deployment's `triggered_by` says it.
pub const AUTOMATIC: &str = "rollback (automatic)";
/// See [`AUTOMATIC`].
pub const BY_HAND: &str = "rollback by hand";

/// Rolls deployment `from` of `environment` back to deployment `to` (default: the last success
/// before it), started as `by` says ([`AUTOMATIC`], [`BY_HAND`]). Reports on the context's
/// output; records the rollback; never starts another.
pub async fn roll_back(
    ctx: &Arc<Context>,
    environment: &str,
    from: u64,
    to: Option<u64>,
    by: &str,
) -> Outcome {
    let history = History::new(&ctx.state_dir);
    let found = match to {
        Some(id) => history.get(environment, id).map(Some),
        None => history.target(environment, from),
    };
    let (from_d, to_d) = match (history.get(environment, from), found) {
        (Ok(f), Ok(Some(t))) => (f, t),
        (Ok(_), Ok(None)) => {
            eprintln!(
                "gantry: error: cannot roll back {environment}: no deployment of it succeeded \
                 before deployment {from}"
            );
            return Outcome::NoTarget;
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("gantry: error: cannot roll back {environment}: {e}");
            return Outcome::Failed;
        }
    };
    if !to_d.spec.artifacts.is_empty()
        && history
            .snapshot_pruned(environment, to_d.id)
            .unwrap_or(true)
    {
        eprintln!(
            "gantry: error: deployment {}'s artifacts were pruned (only the last {} successful \
             deployments keep them): cannot roll back to it",
            to_d.id,
            history::KEEP_SNAPSHOTS
        );
        return Outcome::Failed;
    }
    ctx.face.status(environment, from, to_d.id, "running");
    if to_d.spec.dirty {
        eprintln!(
            "gantry: warning: deployment {} of {environment} was made from a working tree with \
             uncommitted changes; the rollback re-deploys its commit as committed",
            to_d.id
        );
    }
    let spec = NewDeployment {
        pipeline_id: ctx.pipeline_id,
        triggered_by: by.into(),
        started_at: history::now(),
        rollback_of: Some(from),
        dirty: false,
        ..to_d.spec.clone()
    };
    let mut notifier = ctx.notifier.clone();
    let (status, error) = match history.start(spec) {
        Ok(new) => {
            let status = match run(ctx, &from_d, &to_d, new.id).await {
                Ok((s, n)) => {
                    notifier = Some(n);
                    (s, None)
                }
                Err(e) => (DeploymentStatus::Failed, Some(format!("{e:#}"))),
            };
            finish(&history, environment, &from_d, new.id, status.0);
            status
        }
        Err(e) => (DeploymentStatus::Failed, Some(e.to_string())),
    };
    let succeeded = status == DeploymentStatus::Success;
    if let Some(n) = notifier {
        let rollback = gantry_notify::Rollback {
            from: from.to_string(),
            to: to_d.id.to_string(),
        };
        let failed = if succeeded {
            Vec::new()
        } else {
            vec![format!("{} (rollback)", to_d.spec.job)]
        };
        let env = Some(environment.to_string());
        let task = n.spawn(EventKind::Rollback, env, Some(rollback), failed);
        ctx.pending.notification(task);
    }
    ctx.face.status(
        environment,
        from,
        to_d.id,
        if succeeded { "success" } else { "failed" },
    );
    if !succeeded {
        eprintln!(
            "gantry: error: the rollback of {environment} from deployment {from} to {} failed{}; \
             nothing else is rolled back",
            to_d.id,
            error.map(|e| format!(": {e}")).unwrap_or_default()
        );
    }
    if succeeded {
        Outcome::Succeeded
    } else {
        Outcome::Failed
    }
}

/// Records the rollback's end (and the rolled-back deployment's new status), prunes old
/// snapshots; a record that cannot be written is a warning.
fn finish(
    history: &History,
    environment: &str,
    from: &Deployment,
    id: u64,
    status: DeploymentStatus,
) {
    let mut result = history
        .finish(environment, id, status, history::now(), Vec::new())
        .map(drop);
    if status == DeploymentStatus::Success {
        result = result.and_then(|()| history.mark_rolled_back(environment, from.id, id).map(drop));
    }
    if let Err(e) = result.and_then(|()| history.prune_snapshots(environment)) {
        eprintln!("gantry: warning: the rollback of {environment} is not all recorded: {e}");
    }
}

/// Checks the target out, compiles its pipeline, and runs its deploy job as the rollback;
/// answers how it ended and the notifier of the target's pipeline.
async fn run(
    ctx: &Arc<Context>,
    from: &Deployment,
    to: &Deployment,
    id: u64,
) -> Result<(DeploymentStatus, Notifier)> {
    let staged = {
        let (ctx, from, to) = (ctx.clone(), from.clone(), to.clone());
        tokio::task::spawn_blocking(move || stage(&ctx, &from, &to, id))
            .await
            .context("the rollback's preparation stopped")??
    };
    let reporter: Arc<dyn Reporter> = Arc::new(Quiet(ctx.face.reporter()));
    let result = gantry_runtime::run(
        &staged.plan,
        staged.config.clone(),
        ctx.executor.clone(),
        reporter,
        ctx.cancel.clone(),
    )
    .await
    .context("the rollback job could not run")?;
    let status = match result.status {
        PipelineStatus::Success => DeploymentStatus::Success,
        PipelineStatus::Canceled => DeploymentStatus::Canceled,
        _ => DeploymentStatus::Failed,
    };
    let notifier = Notifier::new(
        &staged.rules,
        &staged.plan,
        &ctx.project_dir,
        ctx.face.json(),
    );
    Ok((status, notifier))
}

/// A rollback ready to run: its plan (only the rollback job selected), its run's settings, the
/// target's `notify:` rules; dropping it removes its worktree and state.
struct Staged {
    plan: Plan,
    config: gantry_runtime::RunConfig,
    rules: Vec<gantry_notify::Rule>,
    _checkout: Checkout,
}

/// The temporary worktree and state of one rollback, removed when dropped.
struct Checkout {
    repo: PathBuf,
    dir: PathBuf,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let worktree = self.dir.join("src");
        if worktree.exists() {
            let path = worktree.to_string_lossy();
            let _ = git(&self.repo, &["worktree", "remove", "--force", &path]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = git(&self.repo, &["worktree", "prune"]);
    }
}

/// Runs `git -C dir ARGS`; answers its standard output, or an error with its stderr.
fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir).args(args);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Blocking: checks out `to`'s commit, compiles it, and makes the rollback's plan and state
/// (the artifact store is a copy of `to`'s snapshot, also kept as rollback `id`'s own).
fn stage(ctx: &Context, from: &Deployment, to: &Deployment, id: u64) -> Result<Staged> {
    let history = History::new(&ctx.state_dir);
    let dir = ctx.state_dir.join("rollbacks").join(id.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let checkout = Checkout {
        repo: ctx.project_dir.clone(),
        dir: dir.clone(),
    };
    let sha = &to.spec.sha;
    let prefix = git(&ctx.project_dir, &["rev-parse", "--show-prefix"]).context(
        "a rollback checks out the target's commit: the project must be a git repository",
    )?;
    let worktree = dir.join("src");
    let path = worktree.to_string_lossy();
    git(
        &ctx.project_dir,
        &["worktree", "add", "--detach", "--quiet", &path, sha],
    )
    .with_context(|| format!("cannot check out commit {sha} of deployment {}", to.id))?;
    let src = worktree.join(&prefix);
    let mut repo = crate::git::read(&src);
    let git_ref = to.spec.git_ref.clone();
    let is_tag = git(
        &ctx.project_dir,
        &[
            "show-ref",
            "--verify",
            "--quiet",
            &format!("refs/tags/{git_ref}"),
        ],
    )
    .is_ok();
    (repo.facts.branch, repo.facts.tag) = if is_tag {
        (None, Some(git_ref))
    } else {
        (Some(git_ref), None)
    };
    let variables = recorded_variables(ctx, to);
    let prepared = crate::cli::compile_source(crate::cli::Source {
        dir: src.clone(),
        file: ctx.file.clone(),
        state_dir: ctx.state_dir.clone(),
        repo,
        gitlab_url: ctx.gitlab_url.clone(),
        offline: ctx.offline,
        pipeline_source: "push".into(),
        pipeline_id: ctx.pipeline_id,
        cli_variables: variables,
    })?;
    let errors: Vec<String> = prepared
        .compiled
        .errors()
        .map(ToString::to_string)
        .collect();
    if !errors.is_empty() {
        bail!(
            "the pipeline of commit {sha} has errors: {}",
            errors.join("; ")
        );
    }
    let Some(mut plan) = prepared.compiled.plan else {
        bail!("the pipeline of commit {sha} does not compile");
    };
    plan.scoped_variables = ctx.scoped.clone();
    let Some(index) = plan.jobs.iter().position(|j| j.name == to.spec.job) else {
        bail!(
            "the pipeline of commit {sha} has no job `{}` (its rules may exclude it)",
            to.spec.job
        );
    };
    let script = Some(from.spec.rollback_script.as_slice());
    gantry_pipeline::verify::into_rollback(
        &mut plan.jobs[index],
        &from.id.to_string(),
        &to.id.to_string(),
        script,
    );
    plan.jobs[index].name = format!("{} (rollback)", plan.jobs[index].name);
    let state = dir.join("state");
    // A target without one took no artifacts (`roll_back` refuses one whose were pruned).
    let snapshot = history.snapshot_dir(to.id);
    if snapshot.is_dir() {
        history::link_tree(&snapshot, &state.join("artifacts"))?;
        history::link_tree(&snapshot, &history.snapshot_dir(id))?;
    }
    let selected = (0..plan.jobs.len()).map(|i| i == index).collect();
    let config = gantry_runtime::RunConfig {
        project_dir: src,
        state_dir: state,
        pipeline_id: ctx.pipeline_id,
        concurrency: 1,
        in_place: false,
        selected,
        play_manual: Vec::new(),
        echo: true,
        default_timeout: Duration::from_secs(3600),
        files: Some(prepared.files.iter().map(PathBuf::from).collect()),
        overlay: true,
        changes: None,
        max_report_bytes: 50 * 1024 * 1024,
        gate_reports: None,
    };
    Ok(Staged {
        plan,
        config,
        rules: prepared.compiled.notify,
        _checkout: checkout,
    })
}

/// The target's recorded variables, as command-line variables: a masked one (not recorded) is
/// taken from this command's variables of the same key (a plain one, else the scoped one that
/// fits the target's environment best), else left out with a warning.
fn recorded_variables(ctx: &Context, to: &Deployment) -> Vec<Variable> {
    let scoped = gantry_pipeline::plan::most_specific(
        &ctx.scoped,
        |s| (&s.variable.key, &s.environment_scope),
        Some(&to.spec.environment),
    );
    if ctx.by_hand {
        let mut unused: Vec<&str> = ctx
            .variables
            .iter()
            .chain(ctx.scoped.iter().map(|s| &s.variable))
            .map(|c| c.key.as_str())
            .filter(|k| !to.spec.variables.iter().any(|v| v.masked && v.key == *k))
            .collect();
        unused.sort_unstable();
        unused.dedup();
        for key in unused {
            eprintln!(
                "gantry: warning: variable `{key}` is not used: the rollback re-deploys deployment \
                 {} with its recorded variables and takes only masked ones (never recorded) from \
                 this command",
                to.id
            );
        }
    }
    let mut out = Vec::new();
    for v in &to.spec.variables {
        if !v.masked {
            out.push(Variable {
                expand: false,
                ..Variable::new(&v.key, &v.value)
            });
            continue;
        }
        let given = ctx.variables.iter().rev().find(|c| c.key == v.key);
        let given = given.or_else(|| scoped.iter().map(|s| &s.variable).find(|c| c.key == v.key));
        match given {
            Some(current) => out.push(Variable {
                expand: false,
                masked: true,
                ..current.clone()
            }),
            None => eprintln!(
                "gantry: warning: the rollback to deployment {} runs without masked variable `{}` \
                 (masked values are not recorded, and this command does not set it)",
                to.id, v.key
            ),
        }
    }
    out
}

/// Passes a rollback run's events on, except its pipeline's end (the run's own is the one that
/// counts).
struct Quiet(Arc<dyn Reporter>);

impl Reporter for Quiet {
    fn event(&self, event: Event<'_>) {
        if !matches!(event, Event::PipelineFinished { .. }) {
            self.0.event(event);
        }
    }
}

/// `gantry rollback ENV [--to ID]`: exit 0 when the rollback succeeded, 1 when it failed or had no
/// target, 2 on a usage error.
pub fn main(args: &RollbackArgs) -> Result<u8> {
    let output = args.output;
    if args.server.wanted() {
        if !args.variables.is_empty() {
            let message = "--variable and --variables-file apply to a rollback of this directory's \
                           deployments, not a server's (it keeps its project's variables)";
            return Ok(crate::cli::config_error(output, message));
        }
        return crate::cmd_env::rollback(&args.server, output, &args.environment, args.to);
    }
    let (variables, scoped) = match crate::cli::cli_variables(&args.variables, &[]) {
        Ok(v) => v,
        Err(e) => return Ok(crate::cli::config_error(output, &e)),
    };
    let dir = match &args.cwd {
        Some(d) => d.clone(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let Ok(dir) = dir.canonicalize() else {
        let message = format!("project directory `{}` does not exist", dir.display());
        return Ok(crate::cli::config_error(output, &message));
    };
    let state_dir = dir.join(".gantry");
    let environment = &args.environment;
    let history = History::new(&state_dir);
    // A deployment left running by a run that was killed is `failed`: it blocks nothing.
    crate::deploys::fail_abandoned(&history, environment)?;
    let all = match history.history(environment) {
        Ok(all) => all,
        Err(e @ history::Error::UnknownEnvironment(_)) => {
            return Ok(crate::cli::config_error(output, &e.to_string()));
        }
        Err(e) => return Err(e.into()),
    };
    let newest = &all[0];
    if newest.status == DeploymentStatus::Running {
        let message = format!(
            "deployment {} of {environment} is still running: roll back once it has ended",
            newest.id
        );
        return Ok(crate::cli::config_error(output, &message));
    }
    if let Some(to) = args.to {
        let problem = match all.iter().find(|d| d.id == to) {
            None => Some(format!(
                "environment `{environment}` has no deployment {to}"
            )),
            Some(d) if d.id == newest.id => Some(format!(
                "deployment {to} is the newest deployment of {environment}: there is nothing to \
                 roll back"
            )),
            Some(d) if d.status != DeploymentStatus::Success => Some(format!(
                "deployment {to} of {environment} is {}: --to must name a successful deployment",
                d.status.as_str()
            )),
            Some(_) => None,
        };
        if let Some(message) = problem {
            return Ok(crate::cli::config_error(output, &message));
        }
    }
    let file = match crate::cli::pipeline_file(None, &dir) {
        Ok(f) => f,
        Err(e) => return Ok(crate::cli::config_error(output, &format!("{e:#}"))),
    };
    let pipeline_id = crate::cli::next_pipeline_id(&state_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let face = match output {
        Output::Human => Face::Human(Arc::new(Human::new(&[format!(
            "{} (rollback)",
            newest.spec.job
        )]))),
        Output::Json => Face::Json(Arc::new(Json::new())),
    };
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    let from = newest.id;
    let (outcome, interrupted) = rt.block_on(async {
        let executor = Arc::new(Executors::for_run(false, true).await);
        let ctx = Arc::new(Context {
            runtime: tokio::runtime::Handle::current(),
            project_dir: dir.clone(),
            state_dir,
            file,
            gitlab_url: std::env::var("GANTRY_GITLAB_URL").ok(),
            offline: false,
            variables,
            scoped,
            by_hand: true,
            pipeline_id,
            executor,
            face: face.clone(),
            cancel: cancel_rx,
            pending: Arc::new(Pending::default()),
            notifier: None,
        });
        let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = interrupted.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                eprintln!("\ngantry: interrupted; canceling the rollback");
                let _ = cancel_tx.send(true);
            }
        });
        let outcome = roll_back(&ctx, environment, from, args.to, BY_HAND).await;
        ctx.pending.wait().await;
        (
            outcome,
            interrupted.load(std::sync::atomic::Ordering::SeqCst),
        )
    });
    match &face {
        Face::Human(h) => h.summary(),
        Face::Json(j) => j.flush(),
    }
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(match outcome {
        _ if interrupted => EXIT_INTERRUPTED,
        Outcome::Succeeded => 0,
        Outcome::Failed | Outcome::NoTarget => 1,
    })
}

/// The jobs of `plan` whose failed verification rolls back (`verify:on_failure: rollback`).
#[must_use]
pub fn rolling_back_jobs(plan: &Plan) -> HashSet<String> {
    plan.jobs
        .iter()
        .filter(|j| {
            j.verify
                .as_ref()
                .is_some_and(|v| v.on_failure == gantry_pipeline::verify::OnFailure::Rollback)
        })
        .map(|j| j.name.clone())
        .collect()
}
