//! How a report is read, and the caps of summaries.

/// How many entries a summary's list keeps per kind or level (the counts stay exact).
pub const MAX_ITEMS: usize = 1000;

/// How many bytes of a message (a failure's text, a finding's description) a summary keeps.
pub const MAX_MESSAGE: usize = 4096;

/// The default size limit of a report: 50 MB.
pub const DEFAULT_MAX_BYTES: u64 = 50 * 1024 * 1024;

/// How to read a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// A report larger than this many bytes is an error.
    pub max_bytes: u64,
    /// Coverage reports and SARIF: a prefix removed from file names so that they are relative to
    /// the project directory (the project directory for Cobertura, lcov and SARIF, the module path
    /// from `go.mod` for Go cover profiles). A trailing `/` is optional.
    pub strip_prefix: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_bytes: DEFAULT_MAX_BYTES,
            strip_prefix: None,
        }
    }
}

/// Cuts `s` to at most [`MAX_MESSAGE`] bytes, at a character boundary, marking the cut.
pub(crate) fn cap_message(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(" [truncated]");
    }
    s
}

/// Appends `text` to `out` while `out` is under the message cap.
pub(crate) fn push_capped(out: &mut String, text: &str) {
    let room = (MAX_MESSAGE + 1).saturating_sub(out.len());
    if room == 0 {
        return;
    }
    if text.len() <= room {
        out.push_str(text);
    } else {
        let mut end = room;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        out.push_str(&text[..end]);
    }
}
