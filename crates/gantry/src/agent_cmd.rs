//! `gantry agent` (running one): its flags, its logging and its async runtime, around
//! [`gantry_agent::run_agent`].

use std::path::PathBuf;

use anyhow::Context as _;

/// Which executor runs jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorKind {
    /// Each job in `bash` on this machine; jobs that name an `image:` fail, as with `gantry run`.
    Shell,
    /// Each job in a container (Docker or Podman, at `DOCKER_HOST` or the default socket); jobs
    /// must name an `image:`.
    Docker,
}

/// The format of the agent's own log (on standard error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `gantry agent`'s options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server's URL.
    #[arg(long, env = "GANTRY_SERVER", value_name = "URL")]
    pub server: String,
    /// The server's registration token (needed on the first start only). Discouraged: a
    /// command line shows in `ps` to every user of the machine; prefer `--token-file` or
    /// `GANTRY_AGENT_TOKEN`.
    #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
    pub token: Option<String>,
    /// A file holding the server's registration token (needed on the first start only).
    #[arg(long, env = "GANTRY_AGENT_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Register for these projects only: the agent takes no job of another project (GitLab's
    /// project runners). Given at registration.
    #[arg(
        long,
        value_name = "A,B",
        env = "GANTRY_AGENT_PROJECTS",
        value_delimiter = ','
    )]
    pub projects: Vec<String>,
    /// Register for protected refs only: the agent takes only jobs of pipelines whose ref is
    /// protected (GitLab's protected runners). Given at registration.
    #[arg(long, env = "GANTRY_AGENT_PROTECTED_ONLY")]
    pub protected_only: bool,
    /// What runs the jobs.
    #[arg(long, value_enum, env = "GANTRY_EXECUTOR", default_value = "shell")]
    pub executor: ExecutorKind,
    /// How many jobs run at once.
    #[arg(
        long,
        value_name = "N",
        env = "GANTRY_CONCURRENCY",
        default_value_t = 1
    )]
    pub concurrency: u32,
    /// Tags: the agent takes jobs whose tags are all among these.
    #[arg(long, value_name = "A,B", env = "GANTRY_TAGS", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Whether the agent takes jobs without tags.
    #[arg(
        long,
        value_name = "BOOL",
        env = "GANTRY_RUN_UNTAGGED",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub run_untagged: bool,
    /// Where the agent keeps its token and the jobs' directories.
    #[arg(
        long,
        value_name = "DIR",
        env = "GANTRY_WORK_DIR",
        default_value = "gantry-agent"
    )]
    pub work_dir: PathBuf,
    /// The agent's name (default: the host name).
    #[arg(long, env = "GANTRY_AGENT_NAME")]
    pub name: Option<String>,
    /// The format of the agent's own log.
    #[arg(long, value_enum, env = "GANTRY_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

impl From<Args> for gantry_agent::Config {
    fn from(a: Args) -> gantry_agent::Config {
        gantry_agent::Config {
            server: a.server,
            token: a.token,
            token_file: a.token_file,
            projects: a.projects,
            protected_only: a.protected_only,
            executor: match a.executor {
                ExecutorKind::Shell => gantry_agent::ExecutorKind::Shell,
                ExecutorKind::Docker => gantry_agent::ExecutorKind::Docker,
            },
            concurrency: a.concurrency,
            tags: a.tags,
            run_untagged: a.run_untagged,
            work_dir: a.work_dir,
            name: a.name,
        }
    }
}

/// Runs the agent until it is stopped; returns the process exit code.
///
/// # Errors
/// When it cannot start, or the server rejects its token (the binary exits with 2 then).
pub fn main(args: Args) -> anyhow::Result<u8> {
    init_tracing(args.log_format);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(gantry_agent::run_agent(args.into()))
}

fn init_tracing(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
