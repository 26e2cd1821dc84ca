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
//! and works there; its main process only waits. Each step is one `docker exec` of a script (bash when
//! the image has it, else `sh`), written to a per-session directory mounted read-only at
//! [`STEPS_DIR`]; host paths of the workspace in the step's variables and working directory are
//! translated to the container's. Echo markers work as in the shell executor.
//!
//! # Timeouts and cancellation
//! As in the shell executor: `SIGTERM` to every process of the container but its main one, then,
//! after [`KILL_GRACE`], the container is killed (and started again for `after_script`, which runs in
//! a fresh exec). Exit codes are the shell's; a shell killed by a signal is `128 + signal`.
//!
//! # Ownership of the workspace
//! When the workspace on the host belongs to someone else than root, everything in it is given back
//! to its owner (`chown -R` inside the container, as root) after each step, so that files a root
//! container created stay readable and removable by the runtime.
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
    CancelSignal, Executor, JobContext, Session, Step, StepOutcome, StepSink, Stream,
};

pub use names::{parse_cpus, parse_memory};

/// How long a killed step's processes get between `SIGTERM` and the container's `SIGKILL`.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// How long an exec's output is still read after its shell exited, when something it left running
/// keeps the streams open.
pub const DRAIN_GRACE: Duration = Duration::from_millis(500);

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
        remove_labelled(&self.docker, &format!("{MANAGED_LABEL}=true"), true).await
    }

    /// Removes the containers, networks and volumes that carry `label` (`key=value`), such as
    /// `gantry.pipeline=42`: [`DockerExecutor::cleanup_leftovers`] for a part of the engine.
    ///
    /// # Errors
    /// When the engine cannot list them.
    pub async fn remove_labelled(&self, label: &str) -> Result<usize, Error> {
        remove_labelled(&self.docker, label, true).await
    }
}

/// Removes the containers, networks and (with `volumes`) volumes that carry `label` (`key=value`).
async fn remove_labelled(docker: &Docker, label: &str, volumes: bool) -> Result<usize, Error> {
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
    for n in networks.iter().filter_map(|n| n.id.as_deref()) {
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
    steps: usize,
    started: Option<Started>,
    /// Why the containers could not start, once they could not.
    failed: Option<String>,
    /// Something of the session may exist on the engine.
    touched: bool,
}

/// The job container, once running.
#[derive(Debug)]
struct Started {
    container: String,
    dir: String,
    user: Option<String>,
    /// The owner of the workspace on the host, when it is not root.
    owner: Option<(u32, u32)>,
    /// The container was killed and must be started again before the next step.
    stopped: bool,
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
                let nonce = output::nonce();
                Ok(DockerSession {
                    docker: self.docker.clone(),
                    config: self.config.clone(),
                    job: job.clone(),
                    steps_dir: std::env::temp_dir().join(format!("gantry-steps-{nonce}")),
                    nonce,
                    steps: 0,
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

/// Resolves when the cancel signal is `true`; never when its sender is gone without canceling.
async fn canceled(cancel: &mut CancelSignal) {
    loop {
        if *cancel.borrow_and_update() {
            return;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
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
        if self.started.is_none() {
            if let Some(f) = &self.failed {
                return StepOutcome::SystemFailure(format!(
                    "the job container is not available: {f}"
                ));
            }
            self.touched = true;
            let start = self.start(&step.env);
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
        if started.stopped {
            if let Err(e) = self
                .docker
                .start_container(&started.container, None::<q::StartContainerOptions>)
                .await
            {
                return StepOutcome::SystemFailure(format!(
                    "cannot start the job container again: {}",
                    engine_message(&e)
                ));
            }
            started.stopped = false;
        }
        self.steps += 1;
        let outcome = run_exec(
            &self.docker,
            started,
            &self.job.workspace,
            &self.steps_dir,
            self.steps,
            &step,
            sink,
            &mut cancel,
            timeout,
        )
        .await;
        if let Some((uid, gid)) = started.owner {
            if !started.stopped {
                let cmd = format!("chown -R {uid}:{gid} {}", output::sh_quote(&started.dir));
                let _ = exec_quiet(&self.docker, &started.container, &cmd).await;
            }
        }
        outcome
    }

    /// Pulls the images, starts the services and the job container.
    async fn start(&mut self, env: &[(String, String)]) -> Result<Started, String> {
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
        for r in futures_util::future::join_all(pulls).await {
            r?;
        }

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
        let body = ContainerCreateBody {
            image: Some(image.name.clone()),
            entrypoint: image.entrypoint.clone(),
            // The main process only waits; steps are execs. `TERM` ends it at once.
            cmd: Some(vec![
                "sh".into(),
                "-c".into(),
                "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done".into(),
            ]),
            user: user.clone(),
            working_dir: Some(dir.clone()),
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
        self.docker
            .start_container(&created.id, None::<q::StartContainerOptions>)
            .await
            .map_err(|e| {
                format!(
                    "cannot start the job container from `{}`: {}",
                    image.name,
                    engine_message(&e)
                )
            })?;
        Ok(Started {
            container: created.id,
            dir,
            user,
            owner: owner(&self.job.workspace),
            stopped: false,
        })
    }

    /// Makes `image` present by its pull policy.
    async fn pull(&self, image: &Image, auth: Option<&str>) -> Result<(), String> {
        let policy = image
            .pull_policy
            .first()
            .and_then(|p| PullPolicy::parse(p))
            .unwrap_or(self.config.pull_policy);
        let name = &image.name;
        if policy != PullPolicy::Always {
            match self.docker.inspect_image(name).await {
                Ok(_) => return Ok(()),
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
        Ok(())
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
        if let Some(s) = &self.started {
            if let (Some((uid, gid)), false) = (s.owner, s.stopped) {
                // Already done after each step; again in case a step was cut short.
                let cmd = format!("chown -R {uid}:{gid} {}", output::sh_quote(&s.dir));
                let _ = exec_quiet(&self.docker, &s.container, &cmd).await;
            }
            let rm = q::RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            let _ = self.docker.remove_container(&s.container, Some(rm)).await;
        }
        // A job without services that started completely has nothing but its container; anything
        // else (services, a network, an interrupted start) is found by the session's label.
        let only_container = self.started.is_some() && self.job.services.is_empty();
        if self.touched && !only_container {
            // Everything else of the session, including what an interrupted start created.
            let label = format!("gantry.session={}", self.nonce);
            let _ = remove_labelled(&self.docker, &label, true).await;
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

/// Runs one step as an exec in the job container.
#[allow(clippy::too_many_arguments)]
async fn run_exec(
    docker: &Docker,
    started: &mut Started,
    workspace: &Path,
    steps_dir: &Path,
    n: usize,
    step: &Step,
    sink: StepSink,
    cancel: &mut CancelSignal,
    timeout: impl Future<Output = ()>,
) -> StepOutcome {
    let marker = step.echo.then(|| format!("gantry:{}:", output::nonce()));
    let file = format!("step-{n}.sh");
    let text = output::script(&step.commands, marker.as_deref());
    if let Err(e) = std::fs::write(steps_dir.join(&file), text) {
        return StepOutcome::SystemFailure(format!("cannot write the step script: {e}"));
    }
    let host = workspace.to_string_lossy();
    let env = translate_env(&step.env, workspace, &started.dir);
    let workdir = translate_path(&step.workdir.to_string_lossy(), &host, &started.dir);
    let detect =
        "if command -v bash >/dev/null 2>&1; then exec bash \"$0\"; else exec sh \"$0\"; fi";
    let exec = docker
        .create_exec(
            &started.container,
            ExecConfig {
                cmd: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    detect.into(),
                    format!("{STEPS_DIR}/{file}"),
                ]),
                env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                working_dir: Some(workdir),
                user: started.user.clone(),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await;
    let exec = match exec {
        Ok(e) => e.id,
        Err(e) => {
            return StepOutcome::SystemFailure(format!(
                "cannot run the step in the job container: {}",
                engine_message(&e)
            ));
        }
    };
    let output = match docker.start_exec(&exec, None).await {
        Ok(bollard::exec::StartExecResults::Attached { output, .. }) => output,
        Ok(bollard::exec::StartExecResults::Detached) => {
            return StepOutcome::SystemFailure("the engine detached the step".into());
        }
        Err(e) => {
            return StepOutcome::SystemFailure(format!(
                "cannot start the step in the job container: {}",
                engine_message(&e)
            ));
        }
    };
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

    // The step ends when its shell does: usually the stream closes then, but a background process
    // can keep it open, so the exec is also polled.
    let exited = async {
        let mut reader_done = false;
        loop {
            if !reader_done {
                tokio::select! {
                    _ = &mut reader => reader_done = true,
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            } else {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            match docker.inspect_exec(&exec).await {
                Ok(i) if i.running == Some(false) => {
                    let outcome = match i.exit_code.and_then(|c| i32::try_from(c).ok()) {
                        Some(code) => StepOutcome::Exited(code),
                        None => StepOutcome::SystemFailure(
                            "the engine did not tell the step's exit code".into(),
                        ),
                    };
                    return (outcome, reader_done);
                }
                Ok(_) => {}
                Err(e) => {
                    let message = format!("lost the step's exec: {}", engine_message(&e));
                    return (StepOutcome::SystemFailure(message), reader_done);
                }
            }
        }
    };
    tokio::pin!(timeout);
    let (outcome, reader_done) = tokio::select! {
        r = exited => r,
        () = &mut timeout => {
            terminate(docker, started, &exec).await;
            (StepOutcome::TimedOut, false)
        }
        () = canceled(cancel) => {
            terminate(docker, started, &exec).await;
            (StepOutcome::Canceled, false)
        }
    };
    if !reader_done
        && tokio::time::timeout(DRAIN_GRACE, &mut reader)
            .await
            .is_err()
    {
        reader.abort();
        let _ = reader.await;
    }
    let _ = std::fs::remove_file(steps_dir.join(&file));
    outcome
}

/// Stops a step: `SIGTERM` to every process of the container but its main one, then, if the step's
/// shell is still running after [`KILL_GRACE`], the container is killed.
async fn terminate(docker: &Docker, started: &mut Started, exec: &str) {
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        exec_quiet(docker, &started.container, "kill -TERM -1 2>/dev/null"),
    )
    .await;
    let deadline = tokio::time::Instant::now() + KILL_GRACE;
    while tokio::time::Instant::now() < deadline {
        match docker.inspect_exec(exec).await {
            Ok(i) if i.running == Some(true) => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opts = q::KillContainerOptionsBuilder::default()
        .signal("KILL")
        .build();
    let _ = docker.kill_container(&started.container, Some(opts)).await;
    started.stopped = true;
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
