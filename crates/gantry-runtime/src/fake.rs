//! A fake executor for tests of the scheduler: it starts no process, but reads each command of a
//! step as one directive (feature `fake`).
//!
//! Directives (a command may hold several, separated by `;` or new lines; anything else fails the
//! step with exit code 127 and a line on standard error, as a shell's "command not found"):
//! - `true`, `:` and the empty command do nothing; `false` fails with exit code 1;
//! - `exit N` ends the step with exit code `N` (`exit` alone: 0);
//! - `echo WORDS` prints the words on standard output, `$NAME` and `${NAME}` replaced with the
//!   step's variables (unset ones: empty);
//! - `sleep SECONDS` waits, ended by the step's timeout or the cancel signal as a real step is.
//!
//! Echo markers are not needed: with `echo` on, each command is sent as a
//! [`StepEvent::Echo`] before its output.

use std::time::Duration;

use crate::executor::{
    CancelSignal, Executor, JobContext, OutputLine, Session, Step, StepEvent, StepOutcome,
    StepSink, Stream, canceled,
};

/// The fake executor: jobs with an `image` run too (the image is ignored).
#[derive(Clone, Copy, Debug, Default)]
pub struct FakeExecutor;

/// A job prepared by [`FakeExecutor`].
#[derive(Debug)]
pub struct FakeSession;

impl Executor for FakeExecutor {
    type Session = FakeSession;

    async fn prepare(&self, _job: &JobContext) -> Result<FakeSession, String> {
        Ok(FakeSession)
    }
}

impl Session for FakeSession {
    async fn run_step(&mut self, step: &Step, sink: StepSink, cancel: CancelSignal) -> StepOutcome {
        run_step(step.clone(), sink, cancel).await
    }

    async fn cleanup(self) {}
}

/// What one directive does.
enum Done {
    Next,
    Exit(i32),
}

async fn run_step(step: Step, sink: StepSink, mut cancel: CancelSignal) -> StepOutcome {
    if *cancel.borrow() {
        return StepOutcome::Canceled;
    }
    let deadline = step.timeout.map(|t| tokio::time::Instant::now() + t);
    let body = async {
        for command in &step.commands {
            if step.echo {
                let _ = sink.send(StepEvent::Echo(command.clone())).await;
            }
            for directive in command.split([';', '\n']).map(str::trim) {
                if let Done::Exit(code) = directive_run(directive, &step, &sink).await {
                    return StepOutcome::Exited(code);
                }
            }
        }
        StepOutcome::Exited(0)
    };
    let timeout = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        outcome = body => outcome,
        () = timeout => StepOutcome::TimedOut,
        () = canceled(&mut cancel) => StepOutcome::Canceled,
    }
}

async fn directive_run(directive: &str, step: &Step, sink: &StepSink) -> Done {
    let (word, rest) = directive
        .split_once(char::is_whitespace)
        .map_or((directive, ""), |(w, r)| (w, r.trim()));
    let line = |stream, line: String| StepEvent::Output(OutputLine { stream, line });
    match word {
        "" | "true" | ":" => Done::Next,
        "false" => Done::Exit(1),
        "exit" if rest.is_empty() => Done::Exit(0),
        "exit" => match rest.parse() {
            Ok(code) => Done::Exit(code),
            Err(_) => Done::Exit(2),
        },
        "echo" => {
            let _ = sink
                .send(line(Stream::Stdout, expand(rest, &step.env)))
                .await;
            Done::Next
        }
        "sleep" => match rest.parse::<f64>() {
            Ok(secs) if secs >= 0.0 => {
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                Done::Next
            }
            _ => Done::Exit(1),
        },
        _ => {
            let message = format!("fake: {word}: command not found");
            let _ = sink.send(line(Stream::Stderr, message)).await;
            Done::Exit(127)
        }
    }
}

/// Replaces `$NAME` and `${NAME}` in `text` with the variables' values.
fn expand(text: &str, env: &[(String, String)]) -> String {
    let value = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
            .to_string()
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some((name, after)) = after.strip_prefix('{').and_then(|b| b.split_once('}')) {
            out.push_str(&value(name));
            rest = after;
            continue;
        }
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if end == 0 {
            out.push('$');
        } else {
            out.push_str(&value(&after[..end]));
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand() {
        let env = vec![
            ("A".to_string(), "1".to_string()),
            ("B_2".to_string(), "x".to_string()),
        ];
        assert_eq!(expand("a=$A b=${B_2}$C $ end", &env), "a=1 b=x $ end");
    }
}
