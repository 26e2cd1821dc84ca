//! Step scripts and the output of an exec: lines, and the echo markers in them.

use std::sync::atomic::{AtomicU64, Ordering};

use gantry_runtime::executor::{OutputLine, StepEvent, StepSink, Stream};

/// Lines longer than this are split into several lines of at most this many bytes (as in the shell
/// executor).
pub(crate) const MAX_LINE: usize = 1 << 20;

/// A unique string, so that job output cannot forge echo markers by accident, and so that the
/// objects of one session have names of their own.
pub(crate) fn nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}{n:x}", t & 0xffff_ffff_ffff, std::process::id())
}

/// Quotes `s` for a POSIX shell.
pub(crate) fn sh_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// The script of a step, for whichever shell runs it (bash or a POSIX `sh`): `set -e`, `pipefail`
/// where the shell has it, and each command through `eval` of a single-quoted string, preceded by
/// its echo marker on both streams when `marker` is given. The same script as the shell executor's.
pub(crate) fn script(commands: &[String], marker: Option<&str>) -> String {
    let mut s = String::with_capacity(128 + commands.iter().map(|c| c.len() + 48).sum::<usize>());
    s.push_str("set -e\n");
    s.push_str(
        "if [ -n \"${BASH_VERSION:-}\" ]; then set -o pipefail; set +o noclobber; \
         else (set -o pipefail) 2>/dev/null && set -o pipefail; fi\n",
    );
    for (i, c) in commands.iter().enumerate() {
        if let Some(m) = marker {
            let printf = format!("command printf '\\036{m}{i}\\n'");
            s.push_str(&printf);
            s.push('\n');
            s.push_str(&printf);
            s.push_str(" >&2\n");
        }
        s.push_str("eval ");
        s.push_str(&sh_quote(c));
        s.push('\n');
    }
    s
}

/// Turns the chunks of an exec's two streams into line and echo events.
///
/// The engine multiplexes both streams into one connection, in the order its copiers read them. A
/// command's marker comes on both streams; the first copy to arrive becomes the [`StepEvent::Echo`]
/// and the other is dropped. (The shell executor, reading two pipes, also makes the two streams meet
/// at each marker; here a line that the other stream printed just before the marker can come after
/// the echo.)
pub(crate) struct Lines {
    prefix: Option<Vec<u8>>,
    commands: Vec<String>,
    echoed: usize,
    out: Vec<u8>,
    err: Vec<u8>,
    sink: StepSink,
    open: bool,
}

impl Lines {
    pub(crate) fn new(marker: Option<&str>, commands: Vec<String>, sink: StepSink) -> Lines {
        Lines {
            prefix: marker.map(|m| format!("\x1e{m}").into_bytes()),
            commands,
            echoed: 0,
            out: Vec::new(),
            err: Vec::new(),
            sink,
            open: true,
        }
    }

    /// Takes a chunk of `stream`.
    pub(crate) async fn push(&mut self, stream: Stream, chunk: &[u8]) {
        let mut buf = std::mem::take(match stream {
            Stream::Stdout => &mut self.out,
            Stream::Stderr => &mut self.err,
        });
        buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
            self.line(stream, &buf[start..start + pos]).await;
            start += pos + 1;
        }
        while buf.len() - start >= MAX_LINE {
            self.line(stream, &buf[start..start + MAX_LINE]).await;
            start += MAX_LINE;
        }
        buf.drain(..start);
        *match stream {
            Stream::Stdout => &mut self.out,
            Stream::Stderr => &mut self.err,
        } = buf;
    }

    /// Sends what is left of unterminated lines.
    pub(crate) async fn finish(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(match stream {
                Stream::Stdout => &mut self.out,
                Stream::Stderr => &mut self.err,
            });
            if !rest.is_empty() {
                self.line(stream, &rest).await;
            }
        }
    }

    async fn line(&mut self, stream: Stream, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let found = self.prefix.as_deref().and_then(|p| {
            let at = find_marker(line, p)?;
            let index = std::str::from_utf8(&line[at + p.len()..])
                .ok()?
                .parse::<usize>()
                .ok()?;
            (index < self.commands.len()).then_some((at, index))
        });
        match found {
            Some((at, index)) => {
                if at > 0 {
                    self.send(StepEvent::Output(text(&line[..at], stream)))
                        .await;
                }
                if index >= self.echoed {
                    self.echoed = index + 1;
                    let command = self.commands[index].clone();
                    self.send(StepEvent::Echo(command)).await;
                }
            }
            None => self.send(StepEvent::Output(text(line, stream))).await,
        }
    }

    async fn send(&mut self, event: StepEvent) {
        if self.open && self.sink.send(event).await.is_err() {
            self.open = false;
        }
    }
}

fn find_marker(line: &[u8], prefix: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = line[from..].iter().position(|&b| b == 0x1e) {
        let at = from + p;
        if line[at..].starts_with(prefix) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn text(line: &[u8], stream: Stream) -> OutputLine {
    OutputLine {
        stream,
        line: String::from_utf8_lossy(line).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_and_markers() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let mut l = Lines::new(Some("m:"), vec!["a".into(), "b".into()], tx);
        l.push(Stream::Stdout, b"\x1em:0\nhel").await;
        l.push(Stream::Stderr, b"\x1em:0\n").await;
        l.push(Stream::Stdout, b"lo\r\npart\x1em:1\n").await;
        l.push(Stream::Stderr, b"\x1em:1\nerr").await;
        l.finish().await;
        drop(l);
        let mut got = Vec::new();
        while let Some(e) = rx.recv().await {
            got.push(e);
        }
        let out = |s: &str| {
            StepEvent::Output(OutputLine {
                stream: Stream::Stdout,
                line: s.into(),
            })
        };
        assert_eq!(
            got,
            [
                StepEvent::Echo("a".into()),
                out("hello"),
                out("part"),
                StepEvent::Echo("b".into()),
                StepEvent::Output(OutputLine {
                    stream: Stream::Stderr,
                    line: "err".into()
                }),
            ]
        );
    }

    #[test]
    fn script_runs_in_any_shell() {
        let s = script(&["echo 'hi'".into()], Some("m:"));
        assert!(s.contains("eval 'echo '\\''hi'\\'''"));
        assert!(s.starts_with("set -e\n"));
    }
}
