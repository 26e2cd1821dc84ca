//! What the XML parsers share: the reader, errors with a byte position, attributes and text.
//!
//! *Closed to entity expansion and external entities.* quick-xml never interprets a DTD or
//! fetches anything: a `<!DOCTYPE …>` arrives as one event that we skip, so its `<!ENTITY …>` declarations
//! (billion laughs, `SYSTEM "file:///etc/passwd"`) are never expanded and never fetched. A
//! reference to any entity other than XML's five predefined ones and character references is an
//! error that names it, in text and in attributes alike.

use std::io::{BufReader, Read};

use quick_xml::escape::{EscapeError, resolve_predefined_entity};
use quick_xml::events::{BytesRef, BytesStart};

use crate::error::{Error, Position};
use crate::input::{LimitGuard, Limited, input_with_lines};

pub(crate) type XmlReader<R> = quick_xml::Reader<BufReader<Limited<R>>>;

pub(crate) fn reader<R: Read>(inner: R, limit: u64) -> (XmlReader<R>, LimitGuard) {
    let input = input_with_lines(inner, limit);
    let mut reader = quick_xml::Reader::from_reader(input.reader);
    reader.config_mut().check_end_names = true;
    (reader, input.guard)
}

/// `e` with its byte offset turned into a line and column, where the reader still knows them.
pub(crate) fn locate<R>(e: Error, reader: &XmlReader<R>) -> Error {
    match e {
        Error::Invalid {
            position: Some(Position::Byte(at)),
            message,
        } => {
            let position = match reader
                .get_ref()
                .get_ref()
                .lines()
                .and_then(|l| l.locate(at))
            {
                Some((line, column)) => Position::Line {
                    line,
                    column: Some(column),
                },
                None => Position::Byte(at),
            };
            Error::Invalid {
                position: Some(position),
                message,
            }
        }
        other => other,
    }
}

/// The error for a failed XML read at byte `at`.
pub(crate) fn error(e: &quick_xml::Error, at: u64, guard: &LimitGuard) -> Error {
    guard.or(|| match e {
        quick_xml::Error::Escape(EscapeError::UnrecognizedEntity(_, name)) => {
            undefined_entity(name, at)
        }
        _ => Error::invalid(Some(Position::Byte(at)), format!("malformed XML: {e}")),
    })
}

fn undefined_entity(name: &str, at: u64) -> Error {
    Error::invalid(
        Some(Position::Byte(at)),
        format!(
            "undefined entity `&{name};` (entities declared in a DTD are never expanded or fetched)"
        ),
    )
}

/// Appends what a reference in text stands for: a predefined entity or a character.
pub(crate) fn push_ref(out: &mut String, r: &BytesRef<'_>, at: u64) -> Result<(), Error> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::invalid(Some(Position::Byte(at)), format!("malformed XML: {e}"))
    };
    if let Some(c) = r.resolve_char_ref().map_err(|e| bad(&e))? {
        out.push(c);
        return Ok(());
    }
    let name = r.decode().map_err(|e| bad(&e))?;
    match resolve_predefined_entity(&name) {
        Some(s) => {
            out.push_str(s);
            Ok(())
        }
        None => Err(undefined_entity(&name, at)),
    }
}

/// The value of attribute `name` (local name), unescaped.
pub(crate) fn attr(
    start: &BytesStart<'_>,
    name: &[u8],
    at: u64,
    guard: &LimitGuard,
) -> Result<Option<String>, Error> {
    for a in start.attributes() {
        let a = a.map_err(|e| error(&e.into(), at, guard))?;
        if a.key.local_name().as_ref() == name {
            let v = a
                .decode_and_unescape_value(start.decoder())
                .map_err(|e| error(&e, at, guard))?;
            return Ok(Some(v.into_owned()));
        }
    }
    Ok(None)
}

/// The error for a document that ends inside an element.
pub(crate) fn truncated(open: &str, at: u64) -> Error {
    Error::invalid(
        Some(Position::Byte(at)),
        format!("the document ends inside <{open}> (truncated?)"),
    )
}

/// The error for a root element of another format.
pub(crate) fn wrong_root(expected: &str, found: &str, at: u64) -> Error {
    Error::invalid(
        Some(Position::Byte(at)),
        format!("expected {expected} as the root element, found <{found}>"),
    )
}

/// The error for a document with no root element.
pub(crate) fn empty(expected: &str) -> Error {
    Error::invalid(None, format!("no root element; expected {expected}"))
}
