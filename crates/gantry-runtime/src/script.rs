//! What the executors share to run a step: its script and its echo markers.
//!
//! A step's commands become one script: `set -e`, `pipefail` where the shell has it, and each
//! command through `eval` of a single-quoted string ([`sh_quote`]), so that a multi-line command
//! is one command and a syntax error in one command cannot swallow the next. When the step echoes,
//! each command is preceded by its marker on both streams: an ASCII record separator, the step's
//! marker ([`new_marker`], unique per step so that job output cannot forge one by accident) and the
//! command's index. An executor's output readers find them with [`parse_marker`] and turn them into
//! [`StepEvent::Echo`](crate::executor::StepEvent::Echo)s.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::executor::{OutputLine, Stream};

/// Lines longer than this are split into several lines of at most this many bytes.
pub const MAX_LINE: usize = 1 << 20;

/// The shell a script is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shell {
    /// `bash`.
    Bash,
    /// A POSIX `sh`, which may or may not have `pipefail`.
    Posix,
    /// Not known before it runs (a container's `sh` may be bash): the script finds out.
    Detect,
}

/// A unique string: a step's marker, or (in the container executor) the name of a session's
/// objects.
#[must_use]
pub fn nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}{n:x}", t & 0xffff_ffff_ffff, std::process::id())
}

/// A new step marker, without the command index (`gantry:NONCE:`).
#[must_use]
pub fn new_marker() -> String {
    format!("gantry:{}:", nonce())
}

/// Quotes `s` for a POSIX shell: inside single quotes nothing is special but the quote itself.
#[must_use]
pub fn sh_quote(s: &str) -> String {
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

/// The script of a step for `shell`; `marker` is the echo marker (see [`new_marker`]) when the
/// step echoes.
#[must_use]
pub fn step_script(commands: &[String], marker: Option<&str>, shell: Shell) -> String {
    let mut s = String::with_capacity(128 + commands.iter().map(|c| c.len() + 48).sum::<usize>());
    s.push_str("set -e\n");
    s.push_str(match shell {
        Shell::Bash => "set -o pipefail\nset +o noclobber\n",
        Shell::Posix => "(set -o pipefail) 2>/dev/null && set -o pipefail\n",
        Shell::Detect => {
            "if [ -n \"${BASH_VERSION:-}\" ]; then set -o pipefail; set +o noclobber; \
             else (set -o pipefail) 2>/dev/null && set -o pipefail; fi\n"
        }
    });
    for (i, c) in commands.iter().enumerate() {
        if let Some(m) = marker {
            // `\036` is the record separator that starts the marker; `command` skips shell functions.
            // The marker goes to both streams, so that each reader knows where the command starts.
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

/// The bytes a marker line starts with: the record separator and the marker.
#[must_use]
pub fn marker_prefix(marker: &str) -> Vec<u8> {
    format!("\x1e{marker}").into_bytes()
}

/// Finds a marker of one of the first `commands` commands in `line` (without its terminator):
/// where it starts (output of the previous command may come before it) and the command's index.
#[must_use]
pub fn parse_marker(line: &[u8], prefix: &[u8], commands: usize) -> Option<(usize, usize)> {
    let mut from = 0;
    let at = loop {
        let p = line[from..].iter().position(|&b| b == 0x1e)?;
        let at = from + p;
        if line[at..].starts_with(prefix) {
            break at;
        }
        from = at + 1;
    };
    let index = std::str::from_utf8(&line[at + prefix.len()..])
        .ok()?
        .parse::<usize>()
        .ok()?;
    (index < commands).then_some((at, index))
}

/// A line of output, its invalid UTF-8 replaced.
#[must_use]
pub fn output_line(line: &[u8], stream: Stream) -> OutputLine {
    OutputLine {
        stream,
        line: String::from_utf8_lossy(line).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn scripts_per_shell() {
        let c = ["echo 'hi'".to_string()];
        let s = step_script(&c, Some("m:"), Shell::Detect);
        assert!(s.starts_with("set -e\nif [ -n \"${BASH_VERSION:-}\" ]"));
        assert!(s.ends_with("command printf '\\036m:0\\n' >&2\neval 'echo '\\''hi'\\'''\n"));
        let s = step_script(&c, None, Shell::Bash);
        assert_eq!(
            s,
            "set -e\nset -o pipefail\nset +o noclobber\neval 'echo '\\''hi'\\'''\n"
        );
        let s = step_script(&c, None, Shell::Posix);
        assert!(s.starts_with("set -e\n(set -o pipefail) 2>/dev/null && set -o pipefail\n"));
    }

    #[test]
    fn markers_are_found_after_output_and_only_for_known_commands() {
        let p = marker_prefix("m:");
        assert_eq!(parse_marker(b"\x1em:1", &p, 2), Some((0, 1)));
        assert_eq!(parse_marker(b"part\x1ex\x1em:0", &p, 2), Some((6, 0)));
        assert_eq!(parse_marker(b"\x1em:2", &p, 2), None);
        assert_eq!(parse_marker(b"\x1em:1x", &p, 2), None);
        assert_eq!(parse_marker(b"m:1", &p, 2), None);
        assert_ne!(new_marker(), new_marker());
    }
}
