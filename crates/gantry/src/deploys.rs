//! Deployments of `gantry run`, and the `gantry env` commands that read them.
//!
//! [`Recorder`] wraps the run's reporter: when a job with `environment:` and `action: start` (the
//! default) starts, it records a `running` deployment in `.gantry/deployments/`
//! (`gantry_release::history`); it collects the job's `verify` measurements; when the job
//! finishes it records the status. As in GitLab, `stop`, `prepare`, `verify` and `access` record
//! no deployment. A record that cannot be written is a warning: it never fails the pipeline.
//! When a deployment starts, the artifact store entries it uses are snapshot for a later
//! rollback; when it ends, `deployment_succeeded` or `deployment_failed` is notified, and a
//! verification that failed with `on_failure: rollback` starts the rollback at once
//! ([`crate::rollback`]).

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use gantry_pipeline::Plan;
use gantry_runtime::gantry_release::history::{
    self, DeploymentStatus, History, NewDeployment, REDACTED, RecordedVariable, StepMeasurement,
};
use gantry_runtime::{Event, FailureReason, JobStatus, Reporter};

use crate::cli::Output;

/// `gantry env`: the environments of this project directory and their deployments.
#[derive(Subcommand)]
pub enum EnvCommand {
    /// Each environment with its last deployment.
    List(EnvArgs),
    /// The deployments to one environment, newest first.
    History(HistoryArgs),
}

/// What every `gantry env` command takes.
#[derive(Args)]
pub struct EnvArgs {
    /// The project directory (default: the current directory).
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    output: Output,
    /// A project of a server: its environments, not this directory's (`crate::cmd_env`).
    #[command(flatten)]
    server: crate::cmd_env::EnvServer,
}

/// `gantry env history ENV`.
#[derive(Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    common: EnvArgs,
    /// The environment.
    #[arg(value_name = "ENV")]
    environment: String,
}

/// Runs a `gantry env` command; returns the exit code.
pub fn main(command: &EnvCommand) -> Result<u8> {
    let common = match command {
        EnvCommand::List(a) => a,
        EnvCommand::History(a) => &a.common,
    };
    if common.server.wanted() {
        let environment = match command {
            EnvCommand::List(_) => None,
            EnvCommand::History(a) => Some(a.environment.as_str()),
        };
        return crate::cmd_env::main(&common.server, common.output, environment);
    }
    let dir = match &common.cwd {
        Some(d) => d.clone(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let history = History::new(&dir.join(".gantry"));
    let (json, header, rows): (serde_json::Value, &[&str], Vec<Vec<String>>) = match command {
        EnvCommand::List(_) => {
            for e in history.environments()? {
                fail_abandoned(&history, &e.name)?;
            }
            let envs = history.environments()?;
            let rows = envs
                .iter()
                .map(|e| {
                    let d = &e.last;
                    vec![
                        e.name.clone(),
                        d.id.to_string(),
                        d.status.as_str().into(),
                        short(&d.spec.sha),
                        d.spec.git_ref.clone(),
                        d.finished_at.clone().unwrap_or(d.spec.started_at.clone()),
                    ]
                })
                .collect();
            let header = &["ENVIRONMENT", "LAST", "STATUS", "COMMIT", "REF", "WHEN"];
            (serde_json::to_value(&envs)?, header, rows)
        }
        EnvCommand::History(a) => {
            fail_abandoned(&history, &a.environment)?;
            let all = match history.history(&a.environment) {
                Ok(all) => all,
                Err(e @ history::Error::UnknownEnvironment(_)) => {
                    return Ok(crate::cli::config_error(common.output, &e.to_string()));
                }
                Err(e) => return Err(e.into()),
            };
            let rows = all
                .iter()
                .map(|d| {
                    vec![
                        d.id.to_string(),
                        d.status.as_str().into(),
                        d.spec.job.clone(),
                        d.spec.pipeline_id.to_string(),
                        short(&d.spec.sha),
                        d.spec.git_ref.clone(),
                        d.spec.triggered_by.clone(),
                        d.spec.started_at.clone(),
                        d.finished_at.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            let header = &[
                "ID", "STATUS", "JOB", "PIPELINE", "COMMIT", "REF", "BY", "STARTED", "FINISHED",
            ];
            (serde_json::to_value(&all)?, header, rows)
        }
    };
    let mut out = std::io::stdout().lock();
    if common.output == Output::Json {
        writeln!(out, "{json}")?;
    } else {
        crate::client::table(&mut out, header, &rows)?;
    }
    out.flush()?;
    Ok(0)
}

/// Marks `failed` the running deployments of `environment` that a run left when it ended without
/// ending them (it was killed), with a warning line each.
pub(crate) fn fail_abandoned(history: &History, environment: &str) -> Result<()> {
    for id in history.fail_abandoned(environment)? {
        eprintln!(
            "gantry: warning: deployment {id} was left running by a run that ended; marked failed"
        );
    }
    Ok(())
}

fn short(sha: &str) -> String {
    sha.chars().take(8).collect()
}

/// A deployment in progress: its id and environment, and the measurements so far.
struct Running {
    id: u64,
    environment: String,
    measurements: Vec<StepMeasurement>,
}

/// A reporter that records the deployments of a run, then passes every event on.
pub struct Recorder {
    inner: Arc<dyn Reporter>,
    history: History,
    /// What each deploying job would record, by job name (`started_at` is set when it starts).
    specs: HashMap<String, NewDeployment>,
    /// The artifact store entries each deploying job uses, by job name.
    entries: HashMap<String, Vec<PathBuf>>,
    /// The deploying jobs whose failed verification rolls back.
    rolls_back: HashSet<String>,
    /// Rollbacks and notifications, when the run has them.
    hooks: Option<Arc<crate::rollback::Context>>,
    running: Mutex<HashMap<String, Running>>,
}

impl Recorder {
    /// Wraps `inner` when a selected job of `plan` deploys; returns `inner` itself otherwise.
    /// With `hooks`, a deployment's end is notified, and a failed verification with
    /// `on_failure: rollback` starts a rollback on the hooks' runtime.
    pub fn wrap(
        inner: Arc<dyn Reporter>,
        plan: &Plan,
        selected: &[bool],
        state_dir: &Path,
        hooks: Option<Arc<crate::rollback::Context>>,
    ) -> Arc<dyn Reporter> {
        let mut specs: HashMap<String, NewDeployment> = (0..plan.jobs.len())
            .filter(|&i| selected[i])
            .filter_map(|i| spec(plan, selected, i).map(|s| (plan.jobs[i].name.clone(), s)))
            .collect();
        if specs.is_empty() {
            return inner;
        }
        let dirty = state_dir.parent().is_some_and(is_dirty);
        let mut entries = HashMap::new();
        for (job, spec) in &mut specs {
            spec.dirty = dirty;
            let dirs = spec
                .artifacts
                .iter()
                .filter_map(|a| plan.jobs.iter().position(|j| &j.name == a))
                .map(|i| gantry_runtime::artifact_dir(plan, state_dir, i))
                .collect();
            entries.insert(job.clone(), dirs);
        }
        Arc::new(Recorder {
            inner,
            history: History::new(state_dir),
            specs,
            entries,
            rolls_back: crate::rollback::rolling_back_jobs(plan),
            hooks,
            running: Mutex::new(HashMap::new()),
        })
    }

    fn record(&self, event: &Event<'_>) {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *event {
            Event::JobStarted { job, .. } if !running.contains_key(job) => {
                let Some(spec) = self.specs.get(job) else {
                    return;
                };
                let spec = NewDeployment {
                    started_at: history::now(),
                    ..spec.clone()
                };
                match self.history.start(spec) {
                    Ok(d) => {
                        let entries = self.entries.get(job).map_or(&[][..], Vec::as_slice);
                        if let Err(e) = self.history.snapshot(d.id, entries) {
                            eprintln!(
                                "gantry: warning: the artifacts of deployment {} are not kept for a rollback: {e}",
                                d.id
                            );
                        }
                        running.insert(
                            job.to_string(),
                            Running {
                                id: d.id,
                                environment: d.spec.environment,
                                measurements: Vec::new(),
                            },
                        );
                    }
                    Err(e) => eprintln!("gantry: warning: deployment of `{job}` not recorded: {e}"),
                }
            }
            Event::Verify {
                job,
                weight,
                measurement,
            } => {
                if let Some(r) = running.get_mut(job) {
                    r.measurements.push(StepMeasurement {
                        weight,
                        measurement: measurement.clone(),
                    });
                }
            }
            Event::JobFinished {
                job,
                status,
                reason,
                ..
            } => {
                let Some(r) = running.remove(job) else {
                    return;
                };
                let rolls_back = status == JobStatus::Failed
                    && reason == Some(FailureReason::VerificationFailure)
                    && self.rolls_back.contains(job);
                let status = match status {
                    JobStatus::Success => DeploymentStatus::Success,
                    JobStatus::Canceled => DeploymentStatus::Canceled,
                    _ => DeploymentStatus::Failed,
                };
                if let Err(e) = self
                    .history
                    .finish(&r.environment, r.id, status, history::now(), r.measurements)
                    .and_then(|_| self.history.prune_snapshots(&r.environment))
                {
                    eprintln!("gantry: warning: deployment of `{job}` not recorded: {e}");
                }
                let Some(hooks) = &self.hooks else { return };
                if status != DeploymentStatus::Canceled {
                    let ok = status == DeploymentStatus::Success;
                    hooks.notify_deployment(&r.environment, job, ok);
                }
                if rolls_back {
                    hooks.spawn(r.environment, r.id);
                }
            }
            _ => {}
        }
    }
}

impl Reporter for Recorder {
    fn event(&self, event: Event<'_>) {
        self.record(&event);
        self.inner.event(event);
    }
}

/// What job `index` of `plan` records when it starts, if it deploys (`action: start`).
fn spec(plan: &Plan, selected: &[bool], index: usize) -> Option<NewDeployment> {
    let job = &plan.jobs[index];
    let env = job.environment.as_ref().filter(|e| e.action == "start")?;
    let all = plan.job_variables(index, &[], &[]);
    let resolved: HashMap<String, String> =
        gantry_pipeline::vars::resolve(&all).into_iter().collect();
    let get = |k: &str| resolved.get(k).cloned().unwrap_or_default();
    let masked: HashSet<&str> = all
        .iter()
        .filter(|v| v.masked)
        .map(|v| v.key.as_str())
        .collect();
    // A value that holds a masked one (`https://u:$PASSWORD@host`) is masked as the job's log is.
    let masker = gantry_runtime::Masker::new(
        masked
            .iter()
            .filter_map(|k| resolved.get(*k).map(String::as_str)),
    );
    // The variables the pipeline defines and the caller's, those scoped to this environment
    // included (the predefined ones follow from the rest of the record).
    let scoped = gantry_pipeline::plan::most_specific(
        &plan.scoped_variables,
        |s| (&s.variable.key, &s.environment_scope),
        Some(&env.name),
    );
    let mut keys: Vec<&str> = Vec::new();
    for v in plan
        .variables
        .iter()
        .chain(&job.variables)
        .chain(scoped.into_iter().map(|s| &s.variable))
        .chain(&plan.cli_variables)
    {
        if !keys.contains(&v.key.as_str()) {
            keys.push(&v.key);
        }
    }
    let variables = keys
        .into_iter()
        .map(|k| RecordedVariable {
            key: k.to_string(),
            value: if masked.contains(k) {
                REDACTED.to_string()
            } else {
                masker.mask(&get(k)).into_owned()
            },
            masked: masked.contains(k),
        })
        .collect();
    let triggered_by = [get("GITLAB_USER_NAME"), get("GITLAB_USER_EMAIL")]
        .into_iter()
        .chain(std::env::var("USER").ok())
        .find(|u| !u.is_empty())
        .unwrap_or_else(|| "unknown".into());
    Some(NewDeployment {
        environment: env.name.clone(),
        url: env.url.clone(),
        tier: env.deployment_tier.clone(),
        job: job.name.clone(),
        pipeline_id: get("CI_PIPELINE_ID").parse().unwrap_or(0),
        sha: get("CI_COMMIT_SHA"),
        git_ref: get("CI_COMMIT_REF_NAME"),
        triggered_by,
        variables,
        artifacts: artifacts(plan, selected, index),
        started_at: String::new(),
        rollback_of: None,
        dirty: false,
        rollback_script: job.rollback_script.clone(),
    })
}

/// Whether the work tree at `dir` has uncommitted changes (untracked files included: a local run
/// uses them); `false` when git cannot tell.
fn is_dirty(dir: &Path) -> bool {
    std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["status", "--porcelain"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

/// The jobs whose artifacts job `index` gets: its `dependencies`, else its `needs` with
/// artifacts, else the selected jobs of earlier stages that keep artifacts.
fn artifacts(plan: &Plan, selected: &[bool], index: usize) -> Vec<String> {
    let job = &plan.jobs[index];
    if let Some(d) = &job.dependencies {
        return d.clone();
    }
    if let Some(needs) = &job.needs {
        return needs
            .iter()
            .filter(|n| n.artifacts)
            .map(|n| n.job.clone())
            .collect();
    }
    plan.jobs
        .iter()
        .zip(selected)
        .filter(|(j, s)| **s && j.stage_index < job.stage_index && j.artifacts.is_some())
        .map(|(j, _)| j.name.clone())
        .collect()
}
