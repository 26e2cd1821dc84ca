//! Cobertura XML (`coverage_report` with `coverage_format: cobertura`).
//!
//! Reads `<class filename>`'s `<lines><line number hits branch condition-coverage>`; the lines
//! repeated under `<methods>` are skipped. A relative `filename` is relative to a `<source>`: the
//! file's path is `SOURCE/filename` made relative by [`Options::strip_prefix`] (the project
//! directory), or `SOURCE/filename` when the source itself is relative, else `filename`.

use std::io::Read;

use quick_xml::events::{BytesStart, Event};

use crate::coverage::{Coverage, relative};
use crate::error::{Error, Position};
use crate::input::LimitGuard;
use crate::options::{Options, push_capped};
use crate::xml;

/// Reads a Cobertura XML report.
///
/// # Errors
/// Malformed XML, a root other than `<coverage>`, a bad line number or hit count, an undefined
/// entity, a truncated document, or more than `options.max_bytes` bytes.
pub fn parse<R: Read>(reader: R, options: &Options) -> Result<Coverage, Error> {
    let (mut reader, guard) = xml::reader(reader, options.max_bytes);
    read(&mut reader, &guard, options).map_err(|e| xml::locate(e, &reader))
}

fn read<R: Read>(
    reader: &mut xml::XmlReader<R>,
    guard: &LimitGuard,
    options: &Options,
) -> Result<Coverage, Error> {
    let prefix = options.strip_prefix.as_deref();
    let mut buf = Vec::with_capacity(4096);
    let mut cov = Coverage::default();
    let mut sources: Vec<String> = Vec::new();
    let mut source_text: Option<String> = None;
    let mut file: Option<String> = None;
    let mut in_methods = 0usize;
    let mut depth = 0usize;
    let mut root_seen = false;
    loop {
        let at = reader.buffer_position();
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| xml::error(&e, reader.error_position(), guard))?;
        match &event {
            Event::Start(s) | Event::Empty(s) => {
                let empty = matches!(event, Event::Empty(_));
                let name = s.local_name();
                if !root_seen {
                    if name.as_ref() != b"coverage" {
                        let found = String::from_utf8_lossy(name.as_ref()).into_owned();
                        return Err(xml::wrong_root("<coverage>", &found, at));
                    }
                    root_seen = true;
                }
                if !empty {
                    depth += 1;
                }
                match name.as_ref() {
                    b"source" if !empty => source_text = Some(String::new()),
                    b"class" => {
                        let name = xml::attr(s, b"filename", at, guard)?.ok_or_else(|| {
                            Error::invalid(
                                Some(Position::Byte(at)),
                                "<class> without a filename attribute",
                            )
                        })?;
                        let path = path(&name, &sources, prefix);
                        cov.file_mut(path.clone());
                        file = (!empty).then_some(path);
                    }
                    b"methods" if !empty => in_methods += 1,
                    b"line" if in_methods == 0 => {
                        if let Some(f) = &file {
                            line(s, at, guard, cov.file_mut(f.clone()))?;
                        }
                    }
                    _ => {}
                }
            }
            Event::End(e) => {
                depth = depth.saturating_sub(1);
                match e.local_name().as_ref() {
                    b"source" => {
                        if let Some(s) = source_text.take() {
                            let s = s.trim();
                            if !s.is_empty() {
                                sources.push(s.to_owned());
                            }
                        }
                    }
                    b"class" => file = None,
                    b"methods" => in_methods = in_methods.saturating_sub(1),
                    _ => {}
                }
            }
            Event::Text(t) => {
                if let Some(out) = source_text.as_mut() {
                    let t = t.decode().map_err(|e| xml::error(&e.into(), at, guard))?;
                    push_capped(out, &t);
                }
            }
            Event::GeneralRef(r) => {
                let mut s = String::new();
                xml::push_ref(&mut s, r, at)?;
                if let Some(out) = source_text.as_mut() {
                    out.push_str(&s);
                }
            }
            Event::Eof => {
                if depth > 0 {
                    return Err(xml::truncated(
                        if file.is_some() { "class" } else { "coverage" },
                        at,
                    ));
                }
                if !root_seen {
                    return Err(xml::empty("<coverage>"));
                }
                cov.normalize();
                return Ok(cov);
            }
            _ => {}
        }
        buf.clear();
    }
}

fn line(
    s: &BytesStart<'_>,
    at: u64,
    guard: &LimitGuard,
    file: &mut crate::coverage::FileCoverage,
) -> Result<(), Error> {
    let bad = |what: &str, v: &str| {
        Error::invalid(
            Some(Position::Byte(at)),
            format!("<line> has a bad {what} `{v}`"),
        )
    };
    let number = xml::attr(s, b"number", at, guard)?.unwrap_or_default();
    let number: u32 = number.trim().parse().map_err(|_| bad("number", &number))?;
    let hits = xml::attr(s, b"hits", at, guard)?.unwrap_or_else(|| "0".into());
    let hits = parse_hits(hits.trim()).ok_or_else(|| bad("hits", &hits))?;
    file.lines.push((number, hits));
    if xml::attr(s, b"branch", at, guard)?.as_deref() == Some("true") {
        if let Some(cc) = xml::attr(s, b"condition-coverage", at, guard)? {
            let (c, t) = condition_coverage(&cc).ok_or_else(|| bad("condition-coverage", &cc))?;
            file.branches.push((number, c, t));
        }
    }
    Ok(())
}

/// A hit count, also when a tool writes it as a float (`3.0`).
fn parse_hits(s: &str) -> Option<u64> {
    s.parse::<u64>().ok().or_else(|| {
        let f: f64 = s.parse().ok()?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        (f.is_finite() && f >= 0.0).then_some(f as u64)
    })
}

/// `50% (1/2)` → `(1, 2)`.
fn condition_coverage(s: &str) -> Option<(u32, u32)> {
    let inner = s.split_once('(')?.1.split_once(')')?.0;
    let (c, t) = inner.split_once('/')?;
    Some((c.trim().parse().ok()?, t.trim().parse().ok()?))
}

fn path(filename: &str, sources: &[String], prefix: Option<&str>) -> String {
    if filename.starts_with('/') {
        return relative(filename, prefix);
    }
    for source in sources {
        let joined = format!("{}/{filename}", source.trim_end_matches('/'));
        if let Some(p) = prefix {
            let rel = relative(&joined, Some(p));
            if rel != joined {
                return rel;
            }
        }
    }
    if let Some(source) = sources
        .iter()
        .find(|s| !s.starts_with('/') && !s.contains(":\\"))
    {
        return relative(
            &format!("{}/{filename}", source.trim_end_matches('/')),
            None,
        );
    }
    relative(filename, prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_sources() {
        let s = vec!["/builds/p/src".to_owned()];
        assert_eq!(path("a/b.py", &s, Some("/builds/p")), "src/a/b.py");
        assert_eq!(path("a/b.py", &s, None), "a/b.py");
        assert_eq!(path("a/b.py", &["src".to_owned()], None), "src/a/b.py");
        assert_eq!(path("a/b.py", &[".".to_owned()], None), "a/b.py");
        assert_eq!(path("/builds/p/x.py", &s, Some("/builds/p/")), "x.py");
        assert_eq!(condition_coverage("50% (1/2)"), Some((1, 2)));
        assert_eq!(condition_coverage("50%"), None);
    }
}
