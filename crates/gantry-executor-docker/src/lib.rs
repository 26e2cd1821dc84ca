//! The container executor: runs each job in a container through the Docker Engine API (Docker, or
//! Podman's compatible service), with its `services` beside it on a network of its own.
//!
//! ```no_run
//! # async fn f() -> Result<(), gantry_executor_docker::Error> {
//! use gantry_executor_docker::{Config, DockerExecutor};
//! let executor = DockerExecutor::connect(Config::default()).await?;
//! executor.cleanup_leftovers().await?; // an agent, at start: what a crash left behind
//! # Ok(()) }
//! ```
//!
//! # How a job runs
//! [`Executor::prepare`] only makes the session: what the containers need (`CI_PROJECT_PATH` for
//! the mount point, the job's `DOCKER_AUTH_CONFIG`, its limits and labels) is in the step's variables,
//! which the runtime hands to the first [`Session::run_step`]. That first step pulls the images
//! (by the pull policy), creates the job's network when it has services, starts the services and waits
//! for their exposed ports, then creates and starts the job container. A failure there is the step's
//! [`StepOutcome::SystemFailure`], with a message that names the image or service.
//!
//! The job container mounts the job's workspace at `/builds/<project path>` (`CI_PROJECT_DIR` inside)
//! and works there. Each step is the container's own run, as with `docker run`: its command is a
//! small `sh` wrapper that runs the step's script ([`STEP_FILE`] in a per-session directory mounted
//! read-only at [`STEPS_DIR`]) with bash when the image has it, else `sh`; Gantry attaches to its
//! output, starts it and waits for it to exit. The first step creates the container with its
//! variables and working directory; a later step (`after_script`, in a fresh shell) starts the same
//! container again, so files outside the workspace persist, while processes a step left running end
//! with it (as in GitLab Runner); its script exports what differs (`CI_JOB_STATUS`). Host paths of
//! the workspace in the variables and working directory are translated to the container's. Echo
//! markers work as in the shell executor.
//!
//! # Timeouts and cancellation
//! As in the shell executor: `SIGTERM` to every process of the container but the wrapper (from an
//! exec), then, after [`KILL_GRACE`], the container is killed. Exit codes are the shell's; a shell
//! killed by a signal is `128 + signal`.
//!
//! # Ownership of the workspace
//! When the workspace on the host belongs to someone else than root, everything in it is given back
//! to its owner (`chown -R`) after each step, so that files a root container created stay readable
//! and removable by the runtime: by the wrapper itself when the container runs as root, else (or when
//! the step had to be killed) by a short-lived root container on the same image.
//!
//! # Cleanup
//! Containers and networks carry the labels `gantry.managed=true`, `gantry.pipeline`, `gantry.job`,
//! `gantry.session` and `gantry.workspace`; [`Session::cleanup`] removes everything of its session by
//! label, with anonymous volumes. [`DockerExecutor::cleanup_leftovers`] removes every managed object.

mod names;
mod output;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, ExecConfig, HostConfig, NetworkCreateRequest,
    NetworkingConfig,
};
use bollard::query_parameters as q;
use futures_util::StreamExt;
use gantry_pipeline::plan::Image;
use gantry_runtime::executor::{
    CancelSignal, Executor, JobContext, Session, Step, StepOutcome, StepSink, Stream, canceled,
};
use gantry_runtime::script::{self, sh_quote};

pub use names::{parse_cpus, parse_memory};

/// How long a killed step's processes get between `SIGTERM` and the container's `SIGKILL`.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// How long the job container's output is still read after it stopped. The engine closes the
/// streams when the container stops (nothing a step left running survives its main process), so
/// this only bounds an engine that would not.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Where the step scripts are mounted in the job container.
pub const STEPS_DIR: &str = "/gantry-steps";

/// Where workspaces are mounted: `/builds/<project path>`, as GitLab Runner does.
pub const BUILDS_DIR: &str = "/builds";

/// The job variable that sets the job container's memory limit (`512m`, `2g`, bytes); capped by
/// [`Config::memory`].
pub const MEMORY_VARIABLE: &str = "GANTRY_DOCKER_MEMORY";

/// The job variable that sets the job container's CPU limit (`1.5`); capped by [`Config::cpus`].
pub const CPUS_VARIABLE: &str = "GANTRY_DOCKER_CPUS";

/// The label every object of the executor carries, with the value `true`.
pub const MANAGED_LABEL: &str = "gantry.managed";

/// When an image is pulled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Every time a job uses it.
    Always,
    /// Only when the engine does not have it (Gantry's default; GitLab Runner's is `Always`).
    #[default]
    IfNotPresent,
    /// Never: the engine must have it.
    Never,
}

impl PullPolicy {
    /// Parses GitLab's names: `always`, `if-not-present`, `never`.
    #[must_use]
    pub fn parse(s: &str) -> Option<PullPolicy> {
        match s {
            "always" => Some(PullPolicy::Always),
            "if-not-present" => Some(PullPolicy::IfNotPresent),
            "never" => Some(PullPolicy::Never),
            _ => None,
        }
    }
}

/// The executor's configuration (an agent's options).
#[derive(Clone, Debug)]
pub struct Config {
    /// The engine's address (`unix:///path`, `tcp://host:port`); `None` reads `DOCKER_HOST`, else
    /// the default socket `/var/run/docker.sock`.
    pub host: Option<String>,
    /// The pull policy of images whose job does not name one.
    pub pull_policy: PullPolicy,
    /// The memory limit of every job container, in bytes (the most a job variable may ask for).
    pub memory: Option<u64>,
    /// The CPU limit of every job container (the most a job variable may ask for).
    pub cpus: Option<f64>,
    /// Run job and service containers privileged. Never a job option.
    pub privileged: bool,
    /// How long services get to accept connections on their exposed ports.
    pub service_timeout: Duration,
    /// How long [`DockerExecutor::connect`] waits for the engine to answer.
    pub connect_timeout: Duration,
    /// Registry credentials in `DOCKER_AUTH_CONFIG`'s format. `None` uses the job's
    /// `DOCKER_AUTH_CONFIG` variable, else the process's.
    pub auth_config: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            host: None,
            pull_policy: PullPolicy::IfNotPresent,
            memory: None,
            cpus: None,
            privileged: false,
            service_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            auth_config: None,
        }
    }
}

/// Why the executor could not start or clean up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine cannot be reached at `host`.
    #[error("cannot reach the container engine at {host}: {message}")]
    Connect {
        /// The address.
        host: String,
        /// What went wrong.
        message: String,
    },
    /// The engine answered with an error.
    #[error("container engine: {0}")]
    Engine(#[from] bollard::errors::Error),
}

/// Runs jobs in containers. Cheap to clone; one per process is enough.
#[derive(Clone, Debug)]
pub struct DockerExecutor {
    docker: Docker,
    config: Arc<Config>,
    host: String,
}

impl DockerExecutor {
    /// Connects to the engine, negotiates the API version (Podman and older engines answer 1.41) and
    /// checks that it answers within [`Config::connect_timeout`].
    ///
    /// # Errors
    /// When the engine cannot be reached or does not answer in time.
    pub async fn connect(config: Config) -> Result<DockerExecutor, Error> {
        let host = config
            .host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
        let connect_err = |message: String| Error::Connect {
            host: host.clone(),
            message,
        };
        let docker = Docker::connect_with_host(&host).map_err(|e| connect_err(e.to_string()))?;
        let negotiated = tokio::time::timeout(config.connect_timeout, async {
            let d = docker.negotiate_version().await?;
            d.ping().await?;
            Ok::<_, bollard::errors::Error>(d)
        })
        .await
        .map_err(|_| connect_err(format!("no answer within {:?}", config.connect_timeout)))?
        .map_err(|e| connect_err(e.to_string()))?;
        Ok(DockerExecutor {
            docker: negotiated.with_timeout(Duration::from_secs(600)),
            config: Arc::new(config),
            host,
        })
    }

    /// The engine's address.
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The client, for callers that need more of the engine (tests, benchmarks).
    #[must_use]
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Removes every container, network and volume labelled `gantry.managed=true`: what a crashed
    /// agent left behind. Call it when nothing else runs jobs on this engine. Returns how many
    /// objects were removed.
    ///
    /// # Errors
    /// When the engine cannot list them.
    pub async fn cleanup_leftovers(&self) -> Result<usize, Error> {
        remove_labelled(
            &self.docker,
            &format!("{MANAGED_LABEL}=true"),
            true,
            &|_| true,
        )
        .await
    }

    /// Removes the containers, networks and volumes that carry `label` (`key=value`), such as
    /// `gantry.pipeline=42`: [`DockerExecutor::cleanup_leftovers`] for a part of the engine.
    ///
    /// # Errors
    /// When the engine cannot list them.
    pub async fn remove_labelled(&self, label: &str) -> Result<usize, Error> {
        remove_labelled(&self.docker, label, true, &|_| true).await
    }

    /// Removes every managed container and network whose job workspace (label `gantry.workspace`)
    /// is `dir` or lies under it: what a crashed agent whose jobs work under `dir` left behind,
    /// without touching the jobs of anyone else on the same engine. Returns how many objects were
    /// removed.
    ///
    /// # Errors
    /// When the engine cannot list them.
    pub async fn cleanup_under(&self, dir: &Path) -> Result<usize, Error> {
        let under = |labels: Option<&HashMap<String, String>>| {
            labels
                .and_then(|l| l.get("gantry.workspace"))
                .is_some_and(|w| Path::new(w).starts_with(dir))
        };
        remove_labelled(
            &self.docker,
            &format!("{MANAGED_LABEL}=true"),
            false,
            &under,
        )
        .await
    }
}

/// Labels of an object, as the engine lists them.
type Labels<'a> = Option<&'a HashMap<String, String>>;

/// Removes the containers and networks that carry `label` (`key=value`) and whose labels `keep`
/// accepts, and (with `volumes`) every volume that carries `label`.
async fn remove_labelled(
    docker: &Docker,
    label: &str,
    volumes: bool,
    keep: &(dyn Fn(Labels<'_>) -> bool + Sync),
) -> Result<usize, Error> {
    let filters = HashMap::from([("label", vec![label.to_string()])]);
    let mut removed = 0;
    let containers = docker
        .list_containers(Some(
            q::ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await?;
    let rm = q::RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    let results = futures_util::future::join_all(
        containers
            .iter()
            .filter(|c| keep(c.labels.as_ref()))
            .filter_map(|c| c.id.as_deref())
            .map(|id| docker.remove_container(id, Some(rm.clone()))),
    )
    .await;
    removed += results.iter().filter(|r| r.is_ok()).count();
    let networks = docker
        .list_networks(Some(
            q::ListNetworksOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await?;
    for n in networks
        .iter()
        .filter(|n| keep(n.labels.as_ref()))
        .filter_map(|n| n.id.as_deref())
    {
        if docker.remove_network(n).await.is_ok() {
            removed += 1;
        }
    }
    if volumes {
        let list = docker
            .list_volumes(Some(
                q::ListVolumesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        for v in list.volumes.unwrap_or_default() {
            let opts = q::RemoveVolumeOptionsBuilder::default().force(true).build();
            if docker.remove_volume(&v.name, Some(opts)).await.is_ok() {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// A job prepared by [`DockerExecutor`]. Its containers start with the first step.
#[derive(Debug)]
pub struct DockerSession {
    docker: Docker,
    config: Arc<Config>,
    job: JobContext,
    nonce: String,
    steps_dir: PathBuf,
    started: Option<Started>,
    /// Why the containers could not start, once they could not.
    failed: Option<String>,
    /// Something of the session may exist on the engine.
    touched: bool,
}

/// The job container, once created. It runs one step per start: its command is a small `sh`
/// wrapper that runs the step script [`STEP_FILE`] (rewritten before each start) with bash when the
/// image has it, else `sh`.
#[derive(Debug)]
struct Started {
    container: String,
    /// The image, platform and labels, for the root helper container that gives the workspace back
    /// to its owner when the job container cannot.
    image: String,
    platform: Option<String>,
    labels: HashMap<String, String>,
    dir: String,
    /// The variables and working directory the container was created with (as the container sees
    /// them); a later step that differs exports, unsets or `cd`s in its script.
    env: Vec<(String, String)>,
    workdir: String,
    /// The owner of the workspace on the host, when it is not root.
    owner: Option<(u32, u32)>,
    /// The container runs as root, so its wrapper gives the workspace back to `owner` after each
    /// step.
    wrapper_chowns: bool,
    /// The container has been started at least once.
    ran: bool,
    /// A root helper container was created (it removes itself, but may not have).
    helper: bool,
}

impl Executor for DockerExecutor {
    type Session = DockerSession;

    fn prepare(
        &self,
        job: &JobContext,
    ) -> impl Future<Output = Result<DockerSession, String>> + Send {
        let result = match &job.image {
            None => Err("the container executor runs only jobs with an `image`".to_string()),
            Some(_) => {
                let nonce = script::nonce();
                Ok(DockerSession {
                    docker: self.docker.clone(),
                    config: self.config.clone(),
                    job: job.clone(),
                    steps_dir: std::env::temp_dir().join(format!("gantry-steps-{nonce}")),
                    nonce,
                    started: None,
                    failed: None,
                    touched: false,
                })
            }
        };
        std::future::ready(result)
    }
}

impl Session for DockerSession {
    fn run_step(
        &mut self,
        step: &Step,
        sink: StepSink,
        cancel: CancelSignal,
    ) -> impl Future<Output = StepOutcome> + Send {
        self.step(step.clone(), sink, cancel)
    }

    fn cleanup(self) -> impl Future<Output = ()> + Send {
        self.clean()
    }
}

/// The message of an engine error: the engine's (or registry's) own words where there are some.
fn engine_message(e: &bollard::errors::Error) -> String {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError { message, .. } => message.trim().to_string(),
        E::DockerStreamError { error } => error.trim().to_string(),
        other => other.to_string(),
    }
}

impl DockerSession {
    async fn step(&mut self, step: Step, sink: StepSink, mut cancel: CancelSignal) -> StepOutcome {
        if *cancel.borrow() {
            return StepOutcome::Canceled;
        }
        let deadline = step.timeout.map(|t| tokio::time::Instant::now() + t);
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timeout);
        if let Some(f) = &self.failed {
            return StepOutcome::SystemFailure(format!("the job container is not available: {f}"));
        }
        if self.started.is_none() {
            self.touched = true;
            let start = self.start(&step);
            let started = tokio::select! {
                r = start => r,
                () = &mut timeout => return StepOutcome::TimedOut,
                () = canceled(&mut cancel) => return StepOutcome::Canceled,
            };
            match started {
                Ok(s) => self.started = Some(s),
                Err(e) => {
                    self.failed = Some(e.clone());
                    return StepOutcome::SystemFailure(e);
                }
            }
        }
        let Some(started) = self.started.as_mut() else {
            return StepOutcome::SystemFailure("the job container is not available".into());
        };
        let first = !started.ran;
        let ran = run_container(
            &self.docker,
            started,
            &self.job.workspace,
            &self.steps_dir,
            &step,
            sink,
            &mut cancel,
            timeout,
        )
        .await;
        let (outcome, wrapper_done) = match ran {
            Ok(r) => r,
            Err(e) => {
                if first {
                    self.failed = Some(e.clone());
                }
                return StepOutcome::SystemFailure(e);
            }
        };
        if let Some(owner) = started.owner {
            if !(started.wrapper_chowns && wrapper_done) {
                chown_as_root(&self.docker, started, &self.job.workspace, owner).await;
            }
        }
        outcome
    }

    /// Pulls the images, starts the services and creates the job container, with `step`'s
    /// variables and working directory; the container starts with the step.
    async fn start(&mut self, step: &Step) -> Result<Started, String> {
        let env = step.env.as_slice();
        let var = |k: &str| {
            env.iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let image = self
            .job
            .image
            .clone()
            .ok_or_else(|| "the job has no image".to_string())?;
        let auth = self
            .config
            .auth_config
            .clone()
            .or_else(|| var("DOCKER_AUTH_CONFIG").map(str::to_string))
            .or_else(|| std::env::var("DOCKER_AUTH_CONFIG").ok());
        let workspace = self.job.workspace.to_string_lossy().into_owned();
        let labels = names::labels(&[
            (MANAGED_LABEL, "true"),
            ("gantry.pipeline", var("CI_PIPELINE_ID").unwrap_or_default()),
            ("gantry.job", var("CI_JOB_NAME").unwrap_or(&self.job.name)),
            ("gantry.job_id", var("CI_JOB_ID").unwrap_or_default()),
            ("gantry.session", &self.nonce),
            ("gantry.workspace", &workspace),
        ]);
        let dir = container_dir(var("CI_PROJECT_PATH"));
        let translated = translate_env(env, &self.job.workspace, &dir);

        // Images first: a missing image fails before anything is created.
        let mut pulls = vec![self.pull(&image, auth.as_deref())];
        for s in &self.job.services {
            pulls.push(self.pull(s, auth.as_deref()));
        }
        let mut image_user = None;
        for (i, r) in futures_util::future::join_all(pulls)
            .await
            .into_iter()
            .enumerate()
        {
            let user = r?;
            if i == 0 {
                image_user = user;
            }
        }
        let owner = owner(&self.job.workspace);
        // Whether the job container runs as root, so that it can give the workspace back itself.
        let wrapper_chowns = owner.is_some()
            && match &image.docker_user {
                Some(u) => is_root(u),
                None => match image_user {
                    Some(u) => is_root(&u),
                    None => self
                        .docker
                        .inspect_image(&image.name)
                        .await
                        .ok()
                        .and_then(|i| i.config)
                        .is_some_and(|c| is_root(c.user.as_deref().unwrap_or_default())),
                },
            };

        std::fs::create_dir_all(&self.steps_dir).map_err(|e| {
            format!(
                "cannot create the step directory {}: {e}",
                self.steps_dir.display()
            )
        })?;

        let mut network = None;
        let mut hosts = Vec::new();
        if !self.job.services.is_empty() {
            let name = format!("gantry-{}", self.nonce);
            self.docker
                .create_network(NetworkCreateRequest {
                    name: name.clone(),
                    driver: Some("bridge".into()),
                    labels: Some(labels.clone()),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("cannot create the job's network: {}", engine_message(&e)))?;
            let services = self.job.services.clone();
            let mut started = Vec::new();
            for (i, s) in services.iter().enumerate() {
                let (id, aliases) = self
                    .start_service(i, s, &name, &labels, &translated)
                    .await?;
                started.push((s, id, aliases));
            }
            for (s, id, aliases) in &started {
                let ip = self.wait_for_service(s, id, &name).await?;
                if let Some(ip) = ip {
                    hosts.extend(aliases.iter().map(|a| format!("{a}:{ip}")));
                }
            }
            network = Some(name);
        }

        let memory = lower(
            self.config.memory,
            var(MEMORY_VARIABLE).and_then(parse_memory),
        );
        let cpus = lower_f(self.config.cpus, var(CPUS_VARIABLE).and_then(parse_cpus));
        let user = image.docker_user.clone();
        let mut create =
            q::CreateContainerOptionsBuilder::default().name(&format!("gantry-{}-job", self.nonce));
        if let Some(p) = &image.docker_platform {
            create = create.platform(p);
        }
        let workdir = translate_path(&step.workdir.to_string_lossy(), &workspace, &dir);
        // The wrapper's own standard error goes nowhere: a shell reports a child killed by a
        // signal ("Terminated") on it, which the step's output must not show. The step's shell
        // gets the real one back (fd 3) from a short `sh` that execs it.
        let mut wrapper = String::from(
            "exec 3>&2 2>/dev/null; \
             if command -v bash >/dev/null 2>&1; then s=bash; else s=sh; fi; \
             sh -c 'exec \"$@\" 2>&3 3>&-' sh \"$s\" \"$0\"; c=$?; ",
        );
        if let (Some((uid, gid)), true) = (owner, wrapper_chowns) {
            wrapper.push_str(&format!(
                "chown -R {uid}:{gid} {} 2>/dev/null; ",
                sh_quote(&dir)
            ));
        }
        wrapper.push_str("exit $c");
        let body = ContainerCreateBody {
            image: Some(image.name.clone()),
            entrypoint: image.entrypoint.clone(),
            // The wrapper stays the main process and runs the step's shell as its child, so that
            // `kill -TERM -1` from an exec reaches the shell (the main process ignores signals
            // it has no handler for) and the exit code is the shell's.
            cmd: Some(vec![
                "sh".into(),
                "-c".into(),
                wrapper,
                format!("{STEPS_DIR}/{STEP_FILE}"),
            ]),
            env: Some(translated.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            user,
            working_dir: Some(workdir.clone()),
            labels: Some(labels.clone()),
            host_config: Some(HostConfig {
                binds: Some(vec![
                    format!("{workspace}:{dir}"),
                    format!("{}:{STEPS_DIR}:ro", self.steps_dir.display()),
                ]),
                network_mode: network.clone(),
                extra_hosts: (!hosts.is_empty()).then_some(hosts),
                #[allow(clippy::cast_possible_wrap)]
                memory: memory.map(|m| m as i64),
                #[allow(clippy::cast_possible_truncation)]
                nano_cpus: cpus.map(|c| (c * 1e9) as i64),
                privileged: Some(self.config.privileged),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(create.build()), body)
            .await
            .map_err(|e| {
                format!(
                    "cannot create the job container from `{}`: {}",
                    image.name,
                    engine_message(&e)
                )
            })?;
        Ok(Started {
            container: created.id,
            image: image.name.clone(),
            platform: image.docker_platform.clone(),
            labels,
            dir,
            env: translated,
            workdir,
            owner,
            wrapper_chowns,
            ran: false,
            helper: false,
        })
    }

    /// Makes `image` present by its pull policy. Returns the image's configured user (empty when it
    /// has none) when it inspected the image on the way.
    async fn pull(&self, image: &Image, auth: Option<&str>) -> Result<Option<String>, String> {
        let policy = image
            .pull_policy
            .first()
            .and_then(|p| PullPolicy::parse(p))
            .unwrap_or(self.config.pull_policy);
        let name = &image.name;
        if policy != PullPolicy::Always {
            match self.docker.inspect_image(name).await {
                Ok(i) => {
                    return Ok(Some(i.config.and_then(|c| c.user).unwrap_or_default()));
                }
                Err(e) if policy == PullPolicy::Never => {
                    return Err(format!(
                        "image `{name}` is not present on the engine and its pull policy is `never`: {}",
                        engine_message(&e)
                    ));
                }
                Err(_) => {}
            }
        }
        let credentials = match auth {
            Some(a) => names::credentials(a, name)?,
            None => None,
        };
        let (from, tag) = names::pull_reference(name);
        let mut opts = q::CreateImageOptionsBuilder::default()
            .from_image(&from)
            .tag(&tag);
        if let Some(p) = &image.docker_platform {
            opts = opts.platform(p);
        }
        let mut stream = self
            .docker
            .create_image(Some(opts.build()), None, credentials);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| {
                format!(
                    "cannot pull image `{name}` (registry {}): {}",
                    names::registry(name),
                    engine_message(&e)
                )
            })?;
            if let Some(err) = info.error_detail.and_then(|d| d.message) {
                return Err(format!(
                    "cannot pull image `{name}` (registry {}): {err}",
                    names::registry(name)
                ));
            }
        }
        Ok(None)
    }

    /// Creates and starts service `i`; returns its container id and aliases.
    async fn start_service(
        &self,
        i: usize,
        s: &Image,
        network: &str,
        labels: &HashMap<String, String>,
        env: &[(String, String)],
    ) -> Result<(String, Vec<String>), String> {
        let aliases = names::service_aliases(&s.name, s.alias.as_deref());
        let mut vars: Vec<(String, String)> = env.to_vec();
        vars.extend(s.variables.iter().cloned());
        let mut create = q::CreateContainerOptionsBuilder::default()
            .name(&format!("gantry-{}-svc-{i}", self.nonce));
        if let Some(p) = &s.docker_platform {
            create = create.platform(p);
        }
        let body = ContainerCreateBody {
            image: Some(s.name.clone()),
            entrypoint: s.entrypoint.clone(),
            cmd: s.command.clone(),
            user: s.docker_user.clone(),
            env: Some(vars.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels.clone()),
            host_config: Some(HostConfig {
                network_mode: Some(network.to_string()),
                privileged: Some(self.config.privileged),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    network.to_string(),
                    EndpointSettings {
                        aliases: Some(aliases.clone()),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let what = |e: &bollard::errors::Error| {
            format!("cannot start service `{}`: {}", s.name, engine_message(e))
        };
        let created = self
            .docker
            .create_container(Some(create.build()), body)
            .await
            .map_err(|e| what(&e))?;
        self.docker
            .start_container(&created.id, None::<q::StartContainerOptions>)
            .await
            .map_err(|e| what(&e))?;
        Ok((created.id, aliases))
    }

    /// Waits until the service accepts connections on each exposed TCP port of its image; returns its
    /// address on the network.
    async fn wait_for_service(
        &self,
        s: &Image,
        id: &str,
        network: &str,
    ) -> Result<Option<String>, String> {
        let ports: Vec<u16> = match self.docker.inspect_image(&s.name).await {
            Ok(i) => i
                .config
                .and_then(|c| c.exposed_ports)
                .unwrap_or_default()
                .iter()
                .filter_map(|p| {
                    let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                    (proto == "tcp").then(|| port.parse().ok()).flatten()
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let deadline = tokio::time::Instant::now() + self.config.service_timeout;
        let mut ip = None;
        let mut pending = ports.clone();
        loop {
            let info = self
                .docker
                .inspect_container(id, None::<q::InspectContainerOptions>)
                .await
                .map_err(|e| format!("service `{}` is gone: {}", s.name, engine_message(&e)))?;
            let running = info
                .state
                .as_ref()
                .and_then(|st| st.running)
                .unwrap_or(false);
            if ip.is_none() {
                ip = info
                    .network_settings
                    .and_then(|n| n.networks)
                    .and_then(|mut n| n.remove(network))
                    .and_then(|e| e.ip_address)
                    .filter(|a| !a.is_empty());
            }
            if !running {
                let code = info.state.and_then(|st| st.exit_code).unwrap_or(-1);
                return Err(format!(
                    "service `{}` exited with code {code} before the job started; its log:\n{}",
                    s.name,
                    self.logs(id).await
                ));
            }
            if let Some(addr) = &ip {
                let mut still = Vec::new();
                for p in pending {
                    let ok = tokio::time::timeout(
                        Duration::from_millis(500),
                        tokio::net::TcpStream::connect((addr.as_str(), p)),
                    )
                    .await;
                    if !matches!(ok, Ok(Ok(_))) {
                        still.push(p);
                    }
                }
                pending = still;
            }
            if pending.is_empty() {
                return Ok(ip);
            }
            if tokio::time::Instant::now() >= deadline {
                let list: Vec<String> = pending.iter().map(u16::to_string).collect();
                return Err(format!(
                    "service `{}` did not accept connections on port {} within {}s; its log:\n{}",
                    s.name,
                    list.join(", "),
                    self.config.service_timeout.as_secs(),
                    self.logs(id).await
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of a container's log.
    async fn logs(&self, id: &str) -> String {
        let opts = q::LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail("50")
            .build();
        let mut stream = self.docker.logs(id, Some(opts));
        let mut text = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        if text.trim().is_empty() {
            "(empty)".to_string()
        } else {
            text.trim_end().to_string()
        }
    }

    async fn clean(self) {
        // The workspace went back to its owner after each step (see `step`).
        if let Some(s) = &self.started {
            let rm = q::RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            let _ = self.docker.remove_container(&s.container, Some(rm)).await;
        }
        // A job without services that started completely has nothing but its container; anything
        // else (services, a network, an interrupted start, a root helper) is found by the
        // session's label.
        let only_container =
            self.started.as_ref().is_some_and(|s| !s.helper) && self.job.services.is_empty();
        if self.touched && !only_container {
            // Everything else of the session, including what an interrupted start created.
            let label = format!("gantry.session={}", self.nonce);
            let _ = remove_labelled(&self.docker, &label, true, &|_| true).await;
        }
        let _ = std::fs::remove_dir_all(&self.steps_dir);
    }
}

/// `/builds/<project path>`, when the path is a plain relative path; `/builds/project` otherwise.
fn container_dir(project_path: Option<&str>) -> String {
    let ok = |p: &str| {
        !p.is_empty()
            && p.split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
            })
    };
    match project_path {
        Some(p) if ok(p) => format!("{BUILDS_DIR}/{p}"),
        _ => format!("{BUILDS_DIR}/project"),
    }
}

/// The step's variables as the container sees them: the workspace's host path becomes `dir` wherever
/// a value is that path or starts with it, `CI_PROJECT_DIR` is `dir` and `CI_BUILDS_DIR` is
/// [`BUILDS_DIR`].
fn translate_env(env: &[(String, String)], workspace: &Path, dir: &str) -> Vec<(String, String)> {
    let host = workspace.to_string_lossy();
    env.iter()
        .map(|(k, v)| {
            let v = match k.as_str() {
                "CI_PROJECT_DIR" => dir.to_string(),
                "CI_BUILDS_DIR" => BUILDS_DIR.to_string(),
                _ => translate_path(v, &host, dir),
            };
            (k.clone(), v)
        })
        .collect()
}

fn translate_path(v: &str, host: &str, dir: &str) -> String {
    if v == host {
        dir.to_string()
    } else if let Some(rest) = v.strip_prefix(host).filter(|r| r.starts_with('/')) {
        format!("{dir}{rest}")
    } else {
        v.to_string()
    }
}

/// The owner of the workspace on the host, unless root.
fn owner(workspace: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(workspace).ok()?;
    (m.uid() != 0).then(|| (m.uid(), m.gid()))
}

fn lower(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn lower_f(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Runs `cmd` with `sh` as root in the container and waits for it; output is discarded.
async fn exec_quiet(docker: &Docker, container: &str, cmd: &str) -> Result<i64, String> {
    let exec = docker
        .create_exec(
            container,
            ExecConfig {
                cmd: Some(vec!["sh".into(), "-c".into(), cmd.into()]),
                user: Some("0".into()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| engine_message(&e))?;
    if let bollard::exec::StartExecResults::Attached { mut output, .. } = docker
        .start_exec(&exec.id, None)
        .await
        .map_err(|e| engine_message(&e))?
    {
        while output.next().await.is_some() {}
    }
    let info = docker
        .inspect_exec(&exec.id)
        .await
        .map_err(|e| engine_message(&e))?;
    Ok(info.exit_code.unwrap_or(-1))
}

/// The step script's name in [`STEPS_DIR`]: the job container's command runs it.
pub const STEP_FILE: &str = "step.sh";

/// Whether a `user` or `user:group` is root.
fn is_root(user: &str) -> bool {
    let name = user.split(':').next().unwrap_or_default();
    name.is_empty() || name == "root" || name == "0"
}

/// Whether `name` can be a shell variable.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What a step's script must do first when its variables or working directory differ from those the
/// container was created with (an `after_script` has `CI_JOB_STATUS`): export, unset, `cd`.
fn step_prefix(
    created: &[(String, String)],
    created_workdir: &str,
    env: &[(String, String)],
    workdir: &str,
) -> String {
    // The last entry of a name wins, as in the container's environment.
    let last =
        |list: &[(String, String)]| -> HashMap<String, String> { list.iter().cloned().collect() };
    let (before, now) = (last(created), last(env));
    let mut prefix = String::new();
    let mut names: Vec<&String> = before.keys().chain(now.keys()).collect();
    names.sort();
    names.dedup();
    for name in names.into_iter().filter(|n| is_identifier(n)) {
        match (before.get(name), now.get(name)) {
            (Some(a), Some(b)) if a == b => {}
            (_, Some(b)) => {
                prefix.push_str(&format!("export {name}={}\n", sh_quote(b)));
            }
            (Some(_), None) => prefix.push_str(&format!("unset {name}\n")),
            (None, None) => {}
        }
    }
    if workdir != created_workdir {
        prefix.push_str(&format!("cd {} || exit 1\n", sh_quote(workdir)));
    }
    prefix
}

/// Runs one step as the job container's own command: writes the step script, attaches to the
/// container's output, starts it and waits for it to exit, as `docker run` does. `Err` when the
/// container cannot be started at all. With the outcome, whether the wrapper ran to its end (it was
/// not killed), so that it gave the workspace back to its owner when it runs as root.
#[allow(clippy::too_many_arguments)]
async fn run_container(
    docker: &Docker,
    started: &mut Started,
    workspace: &Path,
    steps_dir: &Path,
    step: &Step,
    sink: StepSink,
    cancel: &mut CancelSignal,
    timeout: impl Future<Output = ()>,
) -> Result<(StepOutcome, bool), String> {
    let marker = step.echo.then(script::new_marker);
    let host = workspace.to_string_lossy();
    let env = translate_env(&step.env, workspace, &started.dir);
    let workdir = translate_path(&step.workdir.to_string_lossy(), &host, &started.dir);
    let mut text = step_prefix(&started.env, &started.workdir, &env, &workdir);
    text.push_str(&script::step_script(
        &step.commands,
        marker.as_deref(),
        script::Shell::Detect,
    ));
    let file = steps_dir.join(STEP_FILE);
    if let Err(e) = std::fs::write(&file, text) {
        return Ok((
            StepOutcome::SystemFailure(format!("cannot write the step script: {e}")),
            false,
        ));
    }
    let id = started.container.clone();
    let attach = q::AttachContainerOptionsBuilder::default()
        .stream(true)
        .stdout(true)
        .stderr(true)
        .build();
    let output = docker
        .attach_container(&id, Some(attach))
        .await
        .map_err(|e| {
            format!(
                "cannot attach to the job container from `{}`: {}",
                started.image,
                engine_message(&e)
            )
        })?
        .output;
    docker
        .start_container(&id, None::<q::StartContainerOptions>)
        .await
        .map_err(|e| {
            format!(
                "cannot start the job container from `{}`: {}",
                started.image,
                engine_message(&e)
            )
        })?;
    started.ran = true;
    let mut lines = output::Lines::new(marker.as_deref(), step.commands.clone(), sink);
    let mut reader = tokio::spawn(async move {
        let mut output = output;
        loop {
            let item = if lines.waiting() {
                match tokio::time::timeout(output::RENDEZVOUS_GRACE, output.next()).await {
                    Ok(item) => item,
                    Err(_) => {
                        lines.flush().await;
                        continue;
                    }
                }
            } else {
                output.next().await
            };
            let Some(item) = item else { break };
            match item {
                Ok(bollard::container::LogOutput::StdOut { message }) => {
                    lines.push(Stream::Stdout, &message).await;
                }
                Ok(bollard::container::LogOutput::StdErr { message }) => {
                    lines.push(Stream::Stderr, &message).await;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        lines.finish().await;
    });

    // The step ends when the container's main process (the wrapper, after the step's shell) does.
    let exited = async {
        match wait_exit(docker, &id).await {
            Ok(code) => match i32::try_from(code) {
                Ok(code) => (StepOutcome::Exited(code), true),
                Err(_) => (
                    StepOutcome::SystemFailure(format!("the step exited with code {code}")),
                    true,
                ),
            },
            Err(e) => (
                StepOutcome::SystemFailure(format!("lost the job container: {e}")),
                false,
            ),
        }
    };
    tokio::pin!(timeout);
    let (outcome, wrapper_done) = tokio::select! {
        r = exited => r,
        () = &mut timeout => (StepOutcome::TimedOut, terminate(docker, &id).await),
        () = canceled(cancel) => (StepOutcome::Canceled, terminate(docker, &id).await),
    };
    // The container stopped, so its streams close once the output in flight is read.
    if tokio::time::timeout(DRAIN_GRACE, &mut reader)
        .await
        .is_err()
    {
        reader.abort();
        let _ = reader.await;
    }
    let _ = std::fs::remove_file(&file);
    Ok((outcome, wrapper_done))
}

/// Waits until the container is not running; its main process's exit code.
async fn wait_exit(docker: &Docker, id: &str) -> Result<i64, String> {
    let mut wait = docker.wait_container(id, None::<q::WaitContainerOptions>);
    match wait.next().await {
        Some(Ok(r)) => Ok(r.status_code),
        // bollard reports a non-zero exit code as an error.
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(e)) => Err(engine_message(&e)),
        None => Err("the engine did not tell the exit code".into()),
    }
}

/// Stops a step: `SIGTERM` to every process of the container but its main one (the wrapper), then,
/// if the container still runs after [`KILL_GRACE`], it is killed. Returns whether the wrapper
/// ended by itself.
async fn terminate(docker: &Docker, id: &str) -> bool {
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        exec_quiet(docker, id, "kill -TERM -1 2>/dev/null"),
    )
    .await;
    if let Ok(Ok(_)) = tokio::time::timeout(KILL_GRACE, wait_exit(docker, id)).await {
        return true;
    }
    let opts = q::KillContainerOptionsBuilder::default()
        .signal("KILL")
        .build();
    let _ = docker.kill_container(id, Some(opts)).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), wait_exit(docker, id)).await;
    false
}

/// Gives the workspace back to its owner from a short-lived root container on the job's image,
/// when the job container could not (it runs as another user, or was killed).
async fn chown_as_root(
    docker: &Docker,
    started: &mut Started,
    workspace: &Path,
    (uid, gid): (u32, u32),
) {
    started.helper = true;
    let mut create = q::CreateContainerOptionsBuilder::default();
    if let Some(p) = &started.platform {
        create = create.platform(p);
    }
    let body = ContainerCreateBody {
        image: Some(started.image.clone()),
        entrypoint: Some(vec![
            "chown".into(),
            "-R".into(),
            format!("{uid}:{gid}"),
            started.dir.clone(),
        ]),
        cmd: None,
        user: Some("0".into()),
        labels: Some(started.labels.clone()),
        host_config: Some(HostConfig {
            binds: Some(vec![format!("{}:{}", workspace.display(), started.dir)]),
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let Ok(created) = docker.create_container(Some(create.build()), body).await else {
        return;
    };
    if docker
        .start_container(&created.id, None::<q::StartContainerOptions>)
        .await
        .is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(60), wait_exit(docker, &created.id)).await;
    }
    let rm = q::RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    let _ = docker.remove_container(&created.id, Some(rm)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside() {
        assert_eq!(container_dir(Some("group/app")), "/builds/group/app");
        assert_eq!(container_dir(Some("../etc")), "/builds/project");
        assert_eq!(container_dir(None), "/builds/project");
        let env = vec![
            ("CI_PROJECT_DIR".to_string(), "/h/ws".to_string()),
            ("CI_BUILDS_DIR".to_string(), "/h".to_string()),
            ("OUT".to_string(), "/h/ws/out".to_string()),
            ("OTHER".to_string(), "/h/wsx".to_string()),
        ];
        let t = translate_env(&env, Path::new("/h/ws"), "/builds/g/a");
        assert_eq!(t[0].1, "/builds/g/a");
        assert_eq!(t[1].1, "/builds");
        assert_eq!(t[2].1, "/builds/g/a/out");
        assert_eq!(t[3].1, "/h/wsx");
        assert_eq!(lower(Some(5), Some(3)), Some(3));
        assert_eq!(lower(None, Some(3)), Some(3));
    }
}
