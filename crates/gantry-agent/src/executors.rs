//! Which executor runs a job: the one place that chooses, for `gantry run` ([`Executors::for_run`])
//! and for the agent ([`Executors::for_agent`]). It lives here because the agent links both
//! executors already and the `gantry` binary links the agent; the server links neither.
//!
//! - `gantry run`: a job with an `image` runs in a container when an engine answers
//!   (`DOCKER_HOST`, else the default socket), every other job in the shell; `--shell-executor`
//!   runs every job in the shell.
//! - `gantry agent --executor shell`: every job in the shell; a job with an `image` fails.
//! - `gantry agent --executor docker`: every job in a container.

use std::path::Path;
use std::time::Duration;

use gantry_executor_docker::{DockerExecutor, DockerSession};
use gantry_executor_shell::{ShellExecutor, ShellSession};
use gantry_runtime::executor::{
    CancelSignal, Executor, JobContext, Session, Step, StepOutcome, StepSink,
};

use crate::ExecutorKind;

/// The executors of a run or an agent, and the rule that picks one per job.
pub struct Executors {
    shell: ShellExecutor,
    /// The container executor, or why there is none.
    docker: Result<DockerExecutor, String>,
    rule: Rule,
}

/// Which executor a job gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// By its `image` (`gantry run`).
    ByImage,
    /// The shell (the agent's `shell`).
    Shell,
    /// A container (the agent's `docker`).
    Containers,
}

impl Executors {
    /// `gantry run`'s: asks the engine (briefly) only when `wants_docker` (a selected job has an
    /// `image`) and not `force_shell` (`--shell-executor`, which runs image jobs in the shell).
    pub async fn for_run(force_shell: bool, wants_docker: bool) -> Executors {
        let docker = if wants_docker {
            // An absent engine fails at once; a present one may be slow to answer: Podman's
            // service takes seconds for its version on a busy machine.
            let config = gantry_executor_docker::Config {
                connect_timeout: Duration::from_secs(10),
                ..gantry_executor_docker::Config::default()
            };
            DockerExecutor::connect(config)
                .await
                .map_err(|e| e.to_string())
        } else {
            Err("not needed".to_string())
        };
        Executors {
            shell: ShellExecutor {
                allow_image: force_shell,
            },
            docker,
            rule: Rule::ByImage,
        }
    }

    /// The agent's: for `docker`, connects to the engine and removes what a crashed agent left
    /// behind of the jobs that worked under `builds` (not anyone else's objects on the engine).
    ///
    /// # Errors
    /// When `docker` is asked for and no engine answers.
    pub async fn for_agent(kind: ExecutorKind, builds: &Path) -> anyhow::Result<Executors> {
        let shell = ShellExecutor { allow_image: false };
        let docker = match kind {
            ExecutorKind::Shell => Err("not used".to_string()),
            ExecutorKind::Docker => {
                let docker = DockerExecutor::connect(Default::default()).await?;
                tracing::info!(host = docker.host(), "container engine ready");
                match docker.cleanup_under(builds).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "removed objects left behind by a crash"),
                    Err(e) => tracing::warn!(error = %e, "cannot remove objects left behind"),
                }
                Ok(docker)
            }
        };
        Ok(Executors {
            shell,
            docker,
            rule: match kind {
                ExecutorKind::Shell => Rule::Shell,
                ExecutorKind::Docker => Rule::Containers,
            },
        })
    }
}

async fn in_container(docker: &DockerExecutor, job: &JobContext) -> Result<Sessions, String> {
    docker
        .prepare(job)
        .await
        .map(|s| Sessions::Docker(Box::new(s)))
}

/// A job prepared by one of the [`Executors`].
pub enum Sessions {
    /// In the shell.
    Shell(ShellSession),
    /// In containers.
    Docker(Box<DockerSession>),
}

impl Executor for Executors {
    type Session = Sessions;

    async fn prepare(&self, job: &JobContext) -> Result<Sessions, String> {
        match (self.rule, &job.image, &self.docker) {
            (Rule::Shell, ..) => self.shell.prepare(job).await.map(Sessions::Shell),
            (Rule::Containers, _, Ok(d)) => in_container(d, job).await,
            (Rule::Containers, _, Err(why)) => Err(why.clone()),
            (_, Some(_), _) if self.shell.allow_image => {
                self.shell.prepare(job).await.map(Sessions::Shell)
            }
            (_, Some(_), Ok(d)) => in_container(d, job).await,
            (_, Some(image), Err(why)) => Err(format!(
                "job has `image: {}`, but no container engine answered ({why}); start one (see \
                 DOCKER_HOST) or pass --shell-executor to run it in the shell",
                image.name
            )),
            (_, None, _) => self.shell.prepare(job).await.map(Sessions::Shell),
        }
    }
}

impl Session for Sessions {
    async fn run_step(&mut self, step: &Step, sink: StepSink, cancel: CancelSignal) -> StepOutcome {
        match self {
            Sessions::Shell(s) => s.run_step(step, sink, cancel).await,
            Sessions::Docker(s) => s.run_step(step, sink, cancel).await,
        }
    }

    async fn cleanup(self) {
        match self {
            Sessions::Shell(s) => s.cleanup().await,
            Sessions::Docker(s) => (*s).cleanup().await,
        }
    }
}
