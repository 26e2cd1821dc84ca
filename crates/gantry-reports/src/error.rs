//! Why a report could not be read.

use std::fmt;

/// Where in a report a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// A line (and column) of a line-based or JSON report, from 1.
    Line {
        /// The line, from 1.
        line: u64,
        /// The column, from 1, where known.
        column: Option<u64>,
    },
    /// A byte offset, from 0 (XML reports).
    Byte(u64),
}

/// Why a report could not be read. Its `Display` has no file name: the caller adds it, as in
/// `format!("{file}:{err}")` when [`Error::position`] is some, else `format!("{file}: {err}")`,
/// or with [`Error::with_file`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The report is larger than the limit.
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The report is not what its format says.
    Invalid {
        /// Where, when known.
        position: Option<Position>,
        /// What is wrong.
        message: String,
    },
    /// Reading failed.
    Io(std::io::Error),
}

impl Error {
    pub(crate) fn invalid(position: Option<Position>, message: impl Into<String>) -> Error {
        Error::Invalid {
            position,
            message: message.into(),
        }
    }

    pub(crate) fn at_line(line: u64, message: impl Into<String>) -> Error {
        Error::invalid(Some(Position::Line { line, column: None }), message)
    }

    /// Where the problem is, when known.
    pub fn position(&self) -> Option<Position> {
        match self {
            Error::Invalid { position, .. } => *position,
            _ => None,
        }
    }

    /// The message with the file in front: `FILE:LINE:COLUMN: message`, `FILE: byte N: message`
    /// or `FILE: message`.
    pub fn with_file(&self, file: &str) -> String {
        match self.position() {
            Some(Position::Line { .. }) => format!("{file}:{self}"),
            _ => format!("{file}: {self}"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::TooLarge { limit } => {
                write!(
                    f,
                    "the report is larger than the limit of {}",
                    human_bytes(*limit)
                )
            }
            Error::Invalid { position, message } => match position {
                Some(Position::Line {
                    line,
                    column: Some(c),
                }) => write!(f, "{line}:{c}: {message}"),
                Some(Position::Line { line, column: None }) => write!(f, "{line}: {message}"),
                Some(Position::Byte(b)) => write!(f, "byte {b}: {message}"),
                None => f.write_str(message),
            },
            Error::Io(e) => write!(f, "cannot read the report: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

fn human_bytes(n: u64) -> String {
    const MB: u64 = 1024 * 1024;
    if n >= MB && n % MB == 0 {
        format!("{} MB ({n} bytes)", n / MB)
    } else {
        format!("{n} bytes")
    }
}
