//! The reader every parser reads through: buffered, and closed at the size limit.

use std::cell::Cell;
use std::io::{self, BufRead, BufReader, Read};
use std::rc::Rc;

use crate::error::Error;

/// A reader that fails once more than `limit` bytes come through, and remembers that it did.
pub(crate) struct Limited<R> {
    inner: R,
    left: u64,
    hit: Rc<Cell<bool>>,
    lines: Option<LineTrack>,
}

/// Where lines start in the last two chunks read, so that a byte offset of an error near the
/// read position becomes a line and column without keeping the report.
#[derive(Default)]
pub(crate) struct LineTrack {
    read: u64,
    newlines: u64,
    last_newline: Option<u64>,
    chunks: [Chunk; 2],
}

#[derive(Default)]
struct Chunk {
    start: u64,
    newlines_before: u64,
    last_newline_before: Option<u64>,
    data: Vec<u8>,
}

impl LineTrack {
    fn record(&mut self, bytes: &[u8]) {
        self.chunks.swap(0, 1);
        let c = &mut self.chunks[1];
        c.start = self.read;
        c.newlines_before = self.newlines;
        c.last_newline_before = self.last_newline;
        c.data.clear();
        c.data.extend_from_slice(bytes);
        let count = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
        if let Some(i) = bytes.iter().rposition(|&b| b == b'\n') {
            self.last_newline = Some(self.read + i as u64);
        }
        self.newlines += count;
        self.read += bytes.len() as u64;
    }

    /// The line and column (from 1, the column in bytes) of byte `at`, when it is in the last
    /// two chunks.
    pub(crate) fn locate(&self, at: u64) -> Option<(u64, u64)> {
        let c = self
            .chunks
            .iter()
            .find(|c| c.start <= at && at <= c.start + c.data.len() as u64 && !c.data.is_empty())?;
        let upto = &c.data[..usize::try_from(at - c.start).ok()?];
        let line = c.newlines_before + upto.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        let line_start = match upto.iter().rposition(|&b| b == b'\n') {
            Some(i) => c.start + i as u64 + 1,
            None => c.last_newline_before.map_or(0, |n| n + 1),
        };
        Some((line, at - line_start + 1))
    }
}

impl<R> Limited<R> {
    /// The line tracker, for readers made with [`input_with_lines`].
    pub(crate) fn lines(&self) -> Option<&LineTrack> {
        self.lines.as_ref()
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // At the limit: the report is too large only if there is more.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.hit.set(true);
                    Err(io::Error::other("report size limit reached"))
                }
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        if let Some(lines) = self.lines.as_mut() {
            lines.record(&buf[..n]);
        }
        Ok(n)
    }
}

/// A buffered, limited reader plus the flag that says whether the limit was hit.
pub(crate) struct Input<R> {
    pub(crate) reader: BufReader<Limited<R>>,
    pub(crate) guard: LimitGuard,
}

/// Tells an error caused by the size limit from other errors.
#[derive(Clone)]
pub(crate) struct LimitGuard {
    hit: Rc<Cell<bool>>,
    limit: u64,
}

impl LimitGuard {
    /// The error to report: the limit's when it was hit, else `other()`.
    pub(crate) fn or(&self, other: impl FnOnce() -> Error) -> Error {
        if self.hit.get() {
            Error::TooLarge { limit: self.limit }
        } else {
            other()
        }
    }

    pub(crate) fn io(&self, e: io::Error) -> Error {
        self.or(|| Error::Io(e))
    }
}

pub(crate) fn input<R: Read>(inner: R, limit: u64) -> Input<R> {
    make(inner, limit, None)
}

/// An input that also tracks lines (for the XML parsers, whose reader counts bytes only).
pub(crate) fn input_with_lines<R: Read>(inner: R, limit: u64) -> Input<R> {
    make(inner, limit, Some(LineTrack::default()))
}

fn make<R: Read>(inner: R, limit: u64, lines: Option<LineTrack>) -> Input<R> {
    let hit = Rc::new(Cell::new(false));
    Input {
        reader: BufReader::with_capacity(
            64 * 1024,
            Limited {
                inner,
                left: limit,
                hit: hit.clone(),
                lines,
            },
        ),
        guard: LimitGuard { hit, limit },
    }
}

/// Reads lines one at a time into a reused buffer, counting them.
pub(crate) struct Lines<R> {
    input: Input<R>,
    buf: Vec<u8>,
    /// The number of the line last returned, from 1.
    pub(crate) number: u64,
}

impl<R: Read> Lines<R> {
    pub(crate) fn new(inner: R, limit: u64) -> Self {
        Lines {
            input: input(inner, limit),
            buf: Vec::new(),
            number: 0,
        }
    }

    /// The next line's number and text without its line ending, or `None` at the end.
    pub(crate) fn next_line(&mut self) -> Result<Option<(u64, &str)>, Error> {
        self.buf.clear();
        let n = self
            .input
            .reader
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| self.input.guard.io(e))?;
        if n == 0 {
            return Ok(None);
        }
        self.number += 1;
        let mut line = &self.buf[..];
        if let Some(l) = line.strip_suffix(b"\n") {
            line = l;
        }
        if let Some(l) = line.strip_suffix(b"\r") {
            line = l;
        }
        std::str::from_utf8(line)
            .map(|l| Some((self.number, l)))
            .map_err(|_| Error::at_line(self.number, "not valid UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_located_across_chunks() {
        let mut t = LineTrack::default();
        t.record(b"ab\ncd");
        t.record(b"ef\ng");
        assert_eq!(t.locate(0), Some((1, 1)));
        assert_eq!(t.locate(4), Some((2, 2)));
        assert_eq!(
            t.locate(7),
            Some((2, 5)),
            "the line started in the chunk before"
        );
        assert_eq!(t.locate(8), Some((3, 1)));
        t.record(b"hi");
        assert_eq!(t.locate(1), None, "older chunks are forgotten");
        assert_eq!(t.locate(10), Some((3, 3)));
    }

    #[test]
    fn the_limit_is_inclusive() {
        let mut exact = input(&b"12345"[..], 5);
        let mut s = String::new();
        assert!(exact.reader.read_to_string(&mut s).is_ok());
        let mut over = input(&b"123456"[..], 5);
        assert!(over.reader.read_to_string(&mut s).is_err());
        assert!(matches!(
            over.guard.or(|| Error::at_line(1, "x")),
            Error::TooLarge { limit: 5 }
        ));
    }
}
