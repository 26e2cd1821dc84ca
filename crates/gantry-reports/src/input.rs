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
    let hit = Rc::new(Cell::new(false));
    Input {
        reader: BufReader::with_capacity(
            64 * 1024,
            Limited {
                inner,
                left: limit,
                hit: hit.clone(),
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
