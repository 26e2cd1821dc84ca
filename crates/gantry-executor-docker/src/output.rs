//! The output of an exec: lines, and the echo markers in them (see `gantry_runtime::script`).

use gantry_runtime::executor::{StepEvent, StepSink, Stream};
use gantry_runtime::script::{MAX_LINE, marker_prefix, output_line as text, parse_marker};

/// Turns the chunks of an exec's two streams into line and echo events.
///
/// The engine multiplexes both streams into one connection, each copied by its own reader, so a
/// stream can lag behind the other. A command's marker comes on both streams; as in the shell
/// executor, the two streams meet at each marker: when one stream reaches marker `i` first, its later
/// output is held until the other stream reaches it too (or [`RENDEZVOUS_GRACE`] passes without
/// output), then the echo is sent, then the held output. So an echo comes after all output of earlier
/// commands and before any output of its own, on both streams.
pub(crate) struct Lines {
    prefix: Option<Vec<u8>>,
    commands: Vec<String>,
    echoed: usize,
    /// Markers passed, per stream (stdout, stderr).
    seen: [usize; 2],
    /// The stream that waits at a marker for the other one, and the marker's index.
    blocked: Option<(Stream, usize)>,
    /// Output of the blocked stream, held until it is unblocked.
    held: std::collections::VecDeque<(Stream, Vec<u8>)>,
    out: Vec<u8>,
    err: Vec<u8>,
    sink: StepSink,
    open: bool,
}

/// How long a stream waits at a marker for the other one when no output comes.
pub(crate) const RENDEZVOUS_GRACE: std::time::Duration = std::time::Duration::from_millis(50);

fn slot(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl Lines {
    pub(crate) fn new(marker: Option<&str>, commands: Vec<String>, sink: StepSink) -> Lines {
        Lines {
            prefix: marker.map(marker_prefix),
            commands,
            echoed: 0,
            seen: [0, 0],
            blocked: None,
            held: std::collections::VecDeque::new(),
            out: Vec::new(),
            err: Vec::new(),
            sink,
            open: true,
        }
    }

    /// Whether a stream waits at a marker (the caller calls [`Lines::flush`] after a grace).
    pub(crate) fn waiting(&self) -> bool {
        self.blocked.is_some()
    }

    /// Takes a chunk of `stream`.
    pub(crate) async fn push(&mut self, stream: Stream, chunk: &[u8]) {
        if matches!(self.blocked, Some((b, _)) if b == stream) {
            self.held.push_back((stream, chunk.to_vec()));
            return;
        }
        self.process(stream, chunk).await;
        self.replay().await;
    }

    /// Stops waiting at a marker: sends its echo and the held output.
    pub(crate) async fn flush(&mut self) {
        if let Some((_, i)) = self.blocked.take() {
            self.echo(i).await;
        }
        self.replay().await;
    }

    /// Processes held output of every stream that is not blocked (the other stream's may be held
    /// behind it, and may be what the blocked stream waits for), in order per stream.
    async fn replay(&mut self) {
        loop {
            let blocked = self.blocked.map(|(b, _)| b);
            let Some(at) = self.held.iter().position(|(s, _)| Some(*s) != blocked) else {
                break;
            };
            let Some((s, c)) = self.held.remove(at) else {
                break;
            };
            self.process(s, &c).await;
        }
    }

    async fn process(&mut self, stream: Stream, chunk: &[u8]) {
        let mut buf = std::mem::take(match stream {
            Stream::Stdout => &mut self.out,
            Stream::Stderr => &mut self.err,
        });
        buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
            self.line(stream, &buf[start..start + pos]).await;
            start += pos + 1;
            if self.blocked.is_some_and(|(b, _)| b == stream) {
                // The rest waits for the other stream.
                self.held.push_front((stream, buf[start..].to_vec()));
                return;
            }
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

    /// Sends what is left: held output and unterminated lines.
    pub(crate) async fn finish(&mut self) {
        self.seen = [usize::MAX, usize::MAX];
        self.flush().await;
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
        let found = self
            .prefix
            .as_deref()
            .and_then(|p| parse_marker(line, p, self.commands.len()));
        let Some((at, index)) = found else {
            self.send(StepEvent::Output(text(line, stream))).await;
            return;
        };
        if at > 0 {
            self.send(StepEvent::Output(text(&line[..at], stream)))
                .await;
        }
        let me = slot(stream);
        self.seen[me] = self.seen[me].max(index + 1);
        match self.blocked {
            // The other stream waits at this marker (or an earlier one): both are here now.
            Some((_, i)) if i <= index => {
                self.blocked = None;
                self.echo(i).await;
                if index > i {
                    self.echo(index).await;
                }
            }
            Some(_) => {}
            None if self.seen[1 - me] > index || index < self.echoed => self.echo(index).await,
            None => self.blocked = Some((stream, index)),
        }
    }

    async fn echo(&mut self, index: usize) {
        if index >= self.echoed {
            self.echoed = index + 1;
            let command = self.commands[index].clone();
            self.send(StepEvent::Echo(command)).await;
        }
    }

    async fn send(&mut self, event: StepEvent) {
        if self.open && self.sink.send(event).await.is_err() {
            self.open = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_runtime::executor::OutputLine;

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

    /// A stream that blocks at a marker while the other stream's output is held (it was blocked
    /// first) does not wait for the grace: the held output is what it waits for.
    #[tokio::test]
    async fn held_output_of_the_other_stream_is_not_stuck() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let mut l = Lines::new(Some("m:"), vec!["a".into(), "b".into(), "c".into()], tx);
        l.push(Stream::Stderr, b"\x1em:0\n\x1em:1\nto-stderr\n\x1em:2\n")
            .await;
        l.push(Stream::Stdout, b"\x1em:0\n/\n\x1em:1\n\x1em:2\n")
            .await;
        assert!(!l.waiting());
        drop(l);
        let mut got = Vec::new();
        while let Some(e) = rx.recv().await {
            got.push(e);
        }
        assert_eq!(
            got,
            [
                StepEvent::Echo("a".into()),
                StepEvent::Output(OutputLine {
                    stream: Stream::Stdout,
                    line: "/".into()
                }),
                StepEvent::Echo("b".into()),
                StepEvent::Output(OutputLine {
                    stream: Stream::Stderr,
                    line: "to-stderr".into()
                }),
                StepEvent::Echo("c".into()),
            ]
        );
    }
}
