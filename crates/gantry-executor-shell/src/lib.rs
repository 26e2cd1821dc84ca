//! The shell executor: runs each job step as one local `bash` process (or `sh` when there is no bash)
//! in its own process group.
//!
//! # How a step runs
//! The step's commands become one script, delivered on the shell's standard input and read completely
//! by a small bootstrap (`. /dev/fd/3`) before anything runs; the commands then see `/dev/null` as their
//! standard input. The script starts with `set -eo pipefail` and runs each command through `eval` of a
//! single-quoted string, so a multi-line command (a YAML block scalar) is one command and a syntax
//! error in one command cannot swallow the next. The step stops at the first command that fails, and
//! its exit code is the step's exit code, as with GitLab Runner. The script and its markers are
//! `gantry_runtime::script`'s, shared with the container executor.
//!
//! When the step asks for echo, a marker line (an ASCII record separator, `gantry:`, a per-step nonce
//! and the command's index) is printed on both standard output and standard error before each
//! command. The two pipe readers meet at each marker and the standard output reader turns it into a
//! [`StepEvent::Echo`], so an echo comes after all output of earlier commands and before any output
//! of its own command, on both streams. Within one command, the order between the two streams is as
//! close as two pipes allow.
//!
//! # Process hygiene
//! The shell leads a new process group. On timeout or cancel the whole group gets `SIGTERM`, then
//! `SIGKILL` after [`KILL_GRACE`]. When the shell exits by itself, whatever it left running in its
//! group (`sleep 100 &`) is killed, and the output pipes are read only until they drain or
//! [`DRAIN_GRACE`] has passed, so that a process that escaped the group cannot hold the step open.
//! Gantry makes itself the subreaper of its steps' orphans and reaps the killed ones, so that nothing
//! is left behind even where init does not reap (see `adopt_orphans`).

use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use gantry_runtime::executor::{
    CancelSignal, Executor, JobContext, Session, Step, StepEvent, StepOutcome, StepSink, Stream,
    canceled,
};
use gantry_runtime::script::{
    Shell, marker_prefix, new_marker, output_line, parse_marker, step_script,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::watch;

/// How long a killed step's processes get between `SIGTERM` and `SIGKILL`.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// How long the output pipes are still read after the shell exited, when something outside the
/// process group keeps them open.
pub const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// How long killed leftovers of a step may take to die before gantry stops waiting to reap them.
pub const REAP_GRACE: Duration = Duration::from_millis(500);

/// Lines longer than this are split into several lines of at most this many bytes.
pub use gantry_runtime::script::MAX_LINE;

/// Variables passed through from gantry's own environment (the step's variables override them).
pub const INHERITED_ENV: [&str; 7] = ["PATH", "HOME", "USER", "SHELL", "LANG", "TERM", "TMPDIR"];

/// The shell executor's configuration.
#[derive(Clone, Debug, Default)]
pub struct ShellExecutor {
    /// Run jobs that name an `image` anyway, in the shell, ignoring the image. Without it such jobs fail
    /// in [`Executor::prepare`].
    pub allow_image: bool,
}

/// A job prepared by [`ShellExecutor`]: the shell executor keeps no state between steps.
#[derive(Debug)]
pub struct ShellSession {
    _private: (),
}

impl Executor for ShellExecutor {
    type Session = ShellSession;

    fn prepare(
        &self,
        job: &JobContext,
    ) -> impl Future<Output = Result<ShellSession, String>> + Send {
        let result = match &job.image {
            Some(image) if !self.allow_image => Err(format!(
                "job has `image: {}`; running it needs the container executor (not available yet); pass \
                 --shell-executor to run it in the shell",
                image.name
            )),
            _ => Ok(ShellSession { _private: () }),
        };
        adopt_orphans();
        std::future::ready(result)
    }
}

/// Makes gantry the reaper of the processes its steps leave behind (Linux `PR_SET_CHILD_SUBREAPER`).
///
/// When a step's shell dies, its background processes are orphaned. Normally init adopts and reaps
/// them; but not every init reaps (some container and microVM inits do not), and then every killed
/// process would stay a zombie. As their subreaper, gantry reaps them itself after killing the group
/// (see [`reap_group`]). Processes that escaped the group (`setsid`) are adopted too and stay zombies
/// until gantry exits, as they would under such an init anyway.
fn adopt_orphans() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = nix::sys::prctl::set_child_subreaper(true);
    });
}

/// Reaps the members of `group` that gantry adopted, once they are killed: until none is left, for at
/// most [`REAP_GRACE`].
async fn reap_group(group: Pid) {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let deadline = tokio::time::Instant::now() + REAP_GRACE;
    loop {
        // A negative pid waits for any child in that process group. The shell itself was reaped
        // already, and no other child of gantry is in this group.
        match waitpid(Pid::from_raw(-group.as_raw()), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                if tokio::time::Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

impl Session for ShellSession {
    fn run_step(
        &mut self,
        step: &Step,
        sink: StepSink,
        cancel: CancelSignal,
    ) -> impl Future<Output = StepOutcome> + Send {
        run_step(step.clone(), sink, cancel)
    }

    fn cleanup(self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// The shell to run steps with: the first `bash` on gantry's `PATH`, else `/bin/sh`.
fn shell() -> &'static (PathBuf, bool) {
    static SHELL: OnceLock<(PathBuf, bool)> = OnceLock::new();
    SHELL.get_or_init(|| {
        let found = std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("bash"))
                .find(|b| b.is_file())
        });
        match found {
            Some(bash) => (bash, true),
            None => (PathBuf::from("/bin/sh"), false),
        }
    })
}

/// Reads the script from standard input (as fd 3), gives the commands `/dev/null` instead, and runs it.
const BOOTSTRAP: &str = "exec 3<&0 0</dev/null; . /dev/fd/3";

/// The script for a step; `marker` is the echo marker when echoing. It first closes the bootstrap's
/// copy of the script (fd 3).
fn script(commands: &[String], marker: Option<&str>, bash: bool) -> String {
    let shell = if bash { Shell::Bash } else { Shell::Posix };
    let mut s = String::from("exec 3<&-\n");
    s.push_str(&step_script(commands, marker, shell));
    s
}

async fn run_step(step: Step, sink: StepSink, mut cancel: CancelSignal) -> StepOutcome {
    if *cancel.borrow() {
        return StepOutcome::Canceled;
    }
    let (shell, is_bash) = shell();
    let marker = step.echo.then(new_marker);
    let script = script(&step.commands, marker.as_deref(), *is_bash);

    let mut cmd = Command::new(shell);
    cmd.arg("-c").arg(BOOTSTRAP);
    cmd.current_dir(&step.workdir).env_clear();
    for key in INHERITED_ENV {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.envs(step.env.iter().map(|(k, v)| (k, v)));
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.process_group(0);
    cmd.kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return StepOutcome::SystemFailure(format!(
                "cannot start {} in {}: {e}",
                shell.display(),
                step.workdir.display()
            ));
        }
    };
    let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) else {
        return StepOutcome::SystemFailure(
            "the shell exited before it could be watched".to_string(),
        );
    };
    let group = Pid::from_raw(pid);
    let _guard = GroupGuard(group);

    let mut stdin = child.stdin.take();
    let feed = tokio::spawn(async move {
        if let Some(stdin) = stdin.as_mut() {
            // A shell that dies early closes the pipe; its exit status tells the story.
            let _ = stdin.write_all(script.as_bytes()).await;
        }
    });
    let marker = marker.map(|m| {
        std::sync::Arc::new(Marker {
            prefix: marker_prefix(&m),
            commands: step.commands.clone().into(),
            stderr_at: watch::Sender::new(0),
            echoed: watch::Sender::new(0),
        })
    });
    let mut out_task = child
        .stdout
        .take()
        .map(|out| tokio::spawn(pump(out, Stream::Stdout, sink.clone(), marker.clone())));
    let mut err_task = child
        .stderr
        .take()
        .map(|err| tokio::spawn(pump(err, Stream::Stderr, sink.clone(), marker)));
    drop(sink);

    let timeout = async {
        match step.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => StepOutcome::Exited(s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))),
            Err(e) => StepOutcome::SystemFailure(format!("cannot wait for the shell: {e}")),
        },
        () = timeout => {
            terminate(&mut child, group).await;
            StepOutcome::TimedOut
        }
        () = canceled(&mut cancel) => {
            terminate(&mut child, group).await;
            StepOutcome::Canceled
        }
    };
    // Whatever the script left running in its group goes too (again when the guard drops, which is
    // harmless). The pid space is far too large to be reused between the reaping and these signals.
    let _ = killpg(group, Signal::SIGKILL);
    reap_group(group).await;
    feed.abort();

    let drain = async {
        if let Some(t) = out_task.as_mut() {
            let _ = t.await;
        }
        if let Some(t) = err_task.as_mut() {
            let _ = t.await;
        }
    };
    if tokio::time::timeout(DRAIN_GRACE, drain).await.is_err() {
        for t in [out_task, err_task].into_iter().flatten() {
            t.abort();
            let _ = t.await;
        }
    }
    let _ = feed.await;
    outcome
}

/// Kills the process group when dropped, so that even a dropped step future leaves nothing running.
struct GroupGuard(Pid);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = killpg(self.0, Signal::SIGKILL);
    }
}

/// Kills the step's process group: `SIGTERM`, then `SIGKILL` after [`KILL_GRACE`]; reaps the shell.
async fn terminate(child: &mut tokio::process::Child, group: Pid) {
    let _ = killpg(group, Signal::SIGTERM);
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    }
}

/// The echo markers of a step: `prefix` followed by the command index, on both streams.
///
/// The two readers meet at each marker: the standard output reader sends the echo only once the
/// standard error reader has sent everything before its copy of the marker, and the standard error
/// reader goes on only once the echo is sent. So the echo of a command comes after all output of the
/// commands before it and before any output of its own, on both streams. A reader that waits more
/// than [`RENDEZVOUS_GRACE`] (the script redirected a stream: `exec 2>file`) stops waiting for the rest
/// of the step.
struct Marker {
    prefix: Vec<u8>,
    commands: std::sync::Arc<[String]>,
    /// How many markers the standard error reader has passed.
    stderr_at: watch::Sender<usize>,
    /// How many echoes the standard output reader has sent.
    echoed: watch::Sender<usize>,
}

/// How long one reader waits for the other at a marker.
const RENDEZVOUS_GRACE: Duration = Duration::from_millis(50);

/// A reader's own state.
struct Reader<'a> {
    stream: Stream,
    sink: &'a StepSink,
    marker: Option<&'a Marker>,
    /// Still meeting the other reader at markers.
    meet: bool,
    /// The sink is still open.
    open: bool,
}

/// Reads `reader` to its end, sending one event per line (or echo marker) to `sink`.
async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    stream: Stream,
    sink: StepSink,
    marker: Option<std::sync::Arc<Marker>>,
) {
    let mut r = Reader {
        stream,
        sink: &sink,
        marker: marker.as_deref(),
        meet: true,
        open: true,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
            r.emit(&buf[start..start + pos]).await;
            start += pos + 1;
        }
        while buf.len() - start >= MAX_LINE {
            r.emit(&buf[start..start + MAX_LINE]).await;
            start += MAX_LINE;
        }
        buf.drain(..start);
    }
    if !buf.is_empty() {
        r.emit(&buf).await;
    }
    if let Some(m) = r.marker {
        // Nobody needs to wait for this reader any more.
        match stream {
            Stream::Stdout => m.echoed.send_replace(usize::MAX),
            Stream::Stderr => m.stderr_at.send_replace(usize::MAX),
        };
    }
}

impl Reader<'_> {
    async fn emit(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let found = self.marker.and_then(|m| {
            let (at, index) = parse_marker(line, &m.prefix, m.commands.len())?;
            Some((m, at, index))
        });
        if let Some((m, at, index)) = found {
            if at > 0 {
                // Output of the previous command that did not end with a newline.
                self.send(StepEvent::Output(output_line(&line[..at], self.stream)))
                    .await;
            }
            self.marker_seen(m, index).await;
            return;
        }
        self.send(StepEvent::Output(output_line(line, self.stream)))
            .await;
    }

    async fn marker_seen(&mut self, m: &Marker, index: usize) {
        match self.stream {
            Stream::Stdout => {
                if *m.echoed.borrow() > index {
                    return; // A copy of a marker already echoed (standard error redirected here).
                }
                if self.meet {
                    let mut at = m.stderr_at.subscribe();
                    let met = tokio::time::timeout(RENDEZVOUS_GRACE, at.wait_for(|n| *n > index));
                    self.meet = matches!(met.await, Ok(Ok(_)));
                }
                self.send(StepEvent::Echo(m.commands[index].clone())).await;
                m.echoed.send_replace(index + 1);
            }
            Stream::Stderr => {
                m.stderr_at.send_if_modified(|n| {
                    let moved = *n < index + 1;
                    *n = (*n).max(index + 1);
                    moved
                });
                if self.meet {
                    let mut echoed = m.echoed.subscribe();
                    let met =
                        tokio::time::timeout(RENDEZVOUS_GRACE, echoed.wait_for(|n| *n > index));
                    self.meet = matches!(met.await, Ok(Ok(_)));
                }
            }
        }
    }

    async fn send(&mut self, event: StepEvent) {
        // Once the consumer is gone, keep draining the pipe so that the job does not block on it.
        if self.open && self.sink.send(event).await.is_err() {
            self.open = false;
        }
    }
}
