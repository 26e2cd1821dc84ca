//! The lines a change added or modified, from `git diff --unified=0 BASE...HEAD`.
//!
//! The caller runs git with `--no-color --no-ext-diff --src-prefix=a/ --dst-prefix=b/` (so that
//! no user configuration changes the output) and hands the text here. Each hunk header
//! `@@ -A,B +C,D @@` adds lines `C..C+D` of the new file (`D` defaults to 1; 0 is a pure
//! deletion). Deleted files (`+++ /dev/null`) add nothing; renamed and copied files count under
//! their new name; quoted paths are unquoted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Added or modified lines by file (paths relative to the repository).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedLines {
    /// Sorted line numbers, by file.
    pub files: BTreeMap<String, Vec<u32>>,
}

impl ChangedLines {
    /// Reads the output of `git diff --unified=0`.
    ///
    /// # Errors
    /// A hunk header that does not parse (the message names the line).
    pub fn parse(diff: &str) -> Result<ChangedLines, String> {
        let mut out = ChangedLines::default();
        let mut file: Option<String> = None;
        // Lines of the current hunk still to skip: (old, new).
        let mut pending = (0u64, 0u64);
        for (i, line) in diff.lines().enumerate() {
            if pending.0 > 0 || pending.1 > 0 {
                if line.starts_with('-') && pending.0 > 0 {
                    pending.0 -= 1;
                    continue;
                }
                if line.starts_with('+') && pending.1 > 0 {
                    pending.1 -= 1;
                    continue;
                }
                if line.starts_with('\\') {
                    continue;
                }
                pending = (0, 0);
            }
            if let Some(path) = line.strip_prefix("+++ ") {
                let path = unquote(path.trim_end_matches('\t'));
                file = if path == "/dev/null" {
                    None
                } else {
                    Some(path.strip_prefix("b/").unwrap_or(&path).to_owned())
                };
            } else if line.starts_with("diff --git ") {
                file = None;
            } else if let Some(rest) = line.strip_prefix("@@ ") {
                let (old, new) = hunk(rest).ok_or_else(|| {
                    format!("diff line {}: malformed hunk header `{line}`", i + 1)
                })?;
                pending = (old, new.1);
                if let Some(f) = &file {
                    if new.1 > 0 {
                        let lines = out.files.entry(f.clone()).or_default();
                        let first = u32::try_from(new.0).unwrap_or(u32::MAX);
                        let count = u32::try_from(new.1).unwrap_or(u32::MAX);
                        lines.extend(first..first.saturating_add(count));
                    }
                }
            }
        }
        for lines in out.files.values_mut() {
            lines.sort_unstable();
            lines.dedup();
        }
        out.files.retain(|_, l| !l.is_empty());
        Ok(out)
    }
}

/// `-A,B +C,D @@ …` → (B, (C, D)).
fn hunk(rest: &str) -> Option<(u64, (u64, u64))> {
    let mut parts = rest.split(' ');
    let old = parts.next()?.strip_prefix('-')?;
    let new = parts.next()?.strip_prefix('+')?;
    let range = |s: &str| -> Option<(u64, u64)> {
        match s.split_once(',') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => Some((s.parse().ok()?, 1)),
        }
    };
    Some((range(old)?.1, range(new)?))
}

/// Git's C-style quoting of paths with special characters: `"b/a\tb"`.
fn unquote(s: &str) -> String {
    let Some(inner) = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
        return s.to_owned();
    };
    let mut bytes = Vec::with_capacity(inner.len());
    let mut it = inner.bytes().peekable();
    while let Some(b) = it.next() {
        if b != b'\\' {
            bytes.push(b);
            continue;
        }
        match it.next() {
            Some(b'n') => bytes.push(b'\n'),
            Some(b't') => bytes.push(b'\t'),
            Some(b'r') => bytes.push(b'\r'),
            Some(b'a') => bytes.push(7),
            Some(b'b') => bytes.push(8),
            Some(b'f') => bytes.push(12),
            Some(b'v') => bytes.push(11),
            Some(d @ b'0'..=b'7') => {
                let mut v = u32::from(d - b'0');
                for _ in 0..2 {
                    if let Some(&n @ b'0'..=b'7') = it.peek() {
                        v = v * 8 + u32::from(n - b'0');
                        it.next();
                    }
                }
                bytes.push(u8::try_from(v).unwrap_or(b'?'));
            }
            Some(other) => bytes.push(other),
            None => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
