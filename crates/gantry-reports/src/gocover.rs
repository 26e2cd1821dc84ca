//! Go cover profiles (`go test -coverprofile`; `gocover`, a Gantry extension key).
//!
//! The first line is `mode: set|count|atomic`; then one block per line,
//! `FILE:STARTLINE.STARTCOL,ENDLINE.ENDCOL STATEMENTS COUNT`. A block listed twice (profiles of
//! several packages concatenated, `-coverpkg`) is merged as `go tool cover` does: `set` mode keeps
//! whether any run covered it, the counting modes add up. A later `mode:` line must repeat the
//! first one. The coverage percentage counts statements, like the total of `go tool cover -func`.
//! Per line (for coverage on new code), a line's count is the largest of the blocks that span it,
//! so a line is covered when any statement on it ran.
//!
//! File names are import paths (`example.com/svc/internal/x.go`): pass the module path from
//! `go.mod` as [`Options::strip_prefix`] to get paths relative to the module's directory.

use std::collections::HashMap;
use std::io::Read;

use crate::coverage::{Block, Coverage, relative};
use crate::error::Error;
use crate::input::Lines;
use crate::options::Options;

/// `(start, end)` of a block → `(statements, count)`, by file.
type Blocks = HashMap<String, HashMap<((u32, u32), (u32, u32)), (u32, u64)>>;

/// Reads a Go cover profile.
///
/// # Errors
/// No `mode:` line first, a different mode later, a malformed block line, or more than
/// `options.max_bytes` bytes.
pub fn parse<R: Read>(reader: R, options: &Options) -> Result<Coverage, Error> {
    let mut lines = Lines::new(reader, options.max_bytes);
    let prefix = options.strip_prefix.as_deref();
    let mut mode: Option<String> = None;
    let mut blocks: Blocks = HashMap::new();
    while let Some((n, line)) = lines.next_line()? {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(m) = line.strip_prefix("mode:") {
            let m = m.trim();
            if !matches!(m, "set" | "count" | "atomic") {
                return Err(Error::at_line(
                    n,
                    format!("unknown mode `{m}`; expected set, count or atomic"),
                ));
            }
            match &mode {
                Some(first) if first != m => {
                    return Err(Error::at_line(
                        n,
                        format!("mode `{m}` differs from the first mode `{first}`"),
                    ));
                }
                _ => mode = Some(m.to_owned()),
            }
            continue;
        }
        let Some(mode) = mode.as_deref() else {
            return Err(Error::at_line(n, "expected `mode: set|count|atomic` first"));
        };
        let (file, block) = block(line).ok_or_else(|| {
            Error::at_line(
                n,
                format!("expected `FILE:LINE.COL,LINE.COL STATEMENTS COUNT`, found `{line}`"),
            )
        })?;
        let entry = blocks
            .entry(relative(file, prefix))
            .or_default()
            .entry((block.start, block.end))
            .or_insert((block.statements, 0));
        if entry.0 != block.statements {
            return Err(Error::at_line(
                n,
                format!(
                    "block {file}:{}.{} has {} statements here but {} before",
                    block.start.0, block.start.1, block.statements, entry.0
                ),
            ));
        }
        entry.1 = if mode == "set" {
            u64::from(entry.1 > 0 || block.count > 0)
        } else {
            entry.1.saturating_add(block.count)
        };
    }
    if mode.is_none() {
        return Err(Error::invalid(
            None,
            "empty cover profile; expected `mode: set|count|atomic` first",
        ));
    }
    let mut cov = Coverage::default();
    for (path, bs) in blocks {
        let file = cov.file_mut(path);
        for ((start, end), (statements, count)) in bs {
            file.blocks.push(Block {
                start,
                end,
                statements,
                count,
            });
            for l in start.0..=end.0.max(start.0) {
                file.lines.push((l, count));
            }
        }
    }
    cov.normalize();
    Ok(cov)
}

/// `a/b.go:3.10,5.2 2 1` → (`a/b.go`, block).
fn block(line: &str) -> Option<(&str, Block)> {
    let (rest, count) = line.rsplit_once(' ')?;
    let (rest, statements) = rest.rsplit_once(' ')?;
    let (file, range) = rest.rsplit_once(':')?;
    let (start, end) = range.split_once(',')?;
    let pos = |s: &str| -> Option<(u32, u32)> {
        let (l, c) = s.split_once('.')?;
        Some((l.parse().ok()?, c.parse().ok()?))
    };
    if file.is_empty() {
        return None;
    }
    Some((
        file,
        Block {
            start: pos(start)?,
            end: pos(end)?,
            statements: statements.parse().ok()?,
            count: count.parse().ok()?,
        },
    ))
}
