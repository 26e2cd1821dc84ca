//! The `Executor` trait: everything that starts a process goes through it.
//!
//! # Lifecycle
//! Per job attempt, the runtime:
//! 1. makes the workspace and restores caches and artifacts into it, then calls
//!    [`Executor::prepare`]. It returns a [`Session`]: for the shell executor that is nothing at all.
//!    An `Err` fails the attempt (`runner_system_failure`, the message shown to the user); no step
//!    runs, and there is no session to clean up. (The container executor checks the engine here, but
//!    pulls images and creates its network, services and job container in the first step, because
//!    only a [`Step`] carries the job's resolved variables: the project path it mounts at, and
//!    `DOCKER_AUTH_CONFIG`. A failure there fails the step as a `SystemFailure`, with the same message.)
//! 2. calls [`Session::run_step`] for the `before_script` + `script` step, then, if the job has one,
//!    for the `after_script` step in a fresh shell: always, even after a failure, a timeout or a
//!    cancel. Each call streams events to the sink as they come and returns how the step ended. A step
//!    must honour its timeout and the cancel signal by killing everything it started (the whole
//!    process group, or the container) before returning, and must drop every clone of the sink
//!    before returning: the runtime reads events until the channel closes. A cancel signal whose
//!    sender is gone never cancels; the `after_script` step gets one that never fires (only its own
//!    timeout stops it).
//! 3. saves caches and collects artifacts from the workspace, then calls [`Session::cleanup`] exactly
//!    once, whatever happened; it must leave nothing behind.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of output, without its line terminator. Invalid UTF-8 is replaced lossily.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputLine {
    /// The stream.
    pub stream: Stream,
    /// The text.
    pub line: String,
}

/// What an executor needs to know about the job to prepare for it.
#[derive(Clone, Debug)]
pub struct JobContext {
    /// The job's name.
    pub name: String,
    /// The job's workspace on the host; becomes `CI_PROJECT_DIR`.
    pub workspace: PathBuf,
    /// The job's `image`, if any (the shell executor refuses or ignores it, see its docs).
    pub image: Option<gantry_pipeline::plan::Image>,
    /// The job's services.
    pub services: Vec<gantry_pipeline::plan::Image>,
}

/// One shell session to run.
#[derive(Clone, Debug)]
pub struct Step {
    /// `script` (with `before_script` first) or `after_script`.
    pub kind: StepKind,
    /// The commands, one per entry, run in order in one shell; the step fails at the first failing command.
    pub commands: Vec<String>,
    /// The full environment of the step (nothing else is inherited except `PATH`, `HOME`, `USER`, `SHELL`,
    /// `LANG`, `TERM` and `TMPDIR` from gantry's own environment, which these entries override).
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub workdir: PathBuf,
    /// Kill the step after this long.
    pub timeout: Option<Duration>,
    /// Whether to echo each command as a `$ command` line through [`StepEvent::Echo`] before running it.
    pub echo: bool,
}

/// Which step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// `before_script` and `script`.
    Script,
    /// `after_script`.
    AfterScript,
}

/// What a running step reports, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepEvent {
    /// A command is about to run.
    Echo(String),
    /// A line of output.
    Output(OutputLine),
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// The shell exited with this code (0 is success).
    Exited(i32),
    /// The timeout killed it.
    TimedOut,
    /// The cancel signal killed it.
    Canceled,
    /// The executor failed to run it at all.
    SystemFailure(String),
}

/// The sending side of a step's event stream. Bounded, so that a slow consumer slows the job down
/// rather than buffering its whole log.
pub type StepSink = mpsc::Sender<StepEvent>;

/// Becomes `true` when the job must be canceled.
pub type CancelSignal = watch::Receiver<bool>;

/// Starts jobs' processes. See the module docs for the lifecycle.
pub trait Executor: Send + Sync + 'static {
    /// The per-job state.
    type Session: Session;
    /// Prepares to run a job (step 1 of the lifecycle).
    fn prepare(
        &self,
        job: &JobContext,
    ) -> impl Future<Output = Result<Self::Session, String>> + Send;
}

/// A prepared job. See the module docs for the lifecycle.
pub trait Session: Send + 'static {
    /// Runs one step to completion, streaming its events to `sink` (step 2 of the lifecycle).
    fn run_step(
        &mut self,
        step: &Step,
        sink: StepSink,
        cancel: CancelSignal,
    ) -> impl Future<Output = StepOutcome> + Send;
    /// Releases everything the session holds (step 3 of the lifecycle).
    fn cleanup(self) -> impl Future<Output = ()> + Send;
}

/// Resolves when the cancel signal is `true`; never when its sender is gone without canceling.
pub async fn canceled(cancel: &mut CancelSignal) {
    loop {
        if *cancel.borrow_and_update() {
            return;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
