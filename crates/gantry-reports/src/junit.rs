//! JUnit XML, as GitLab reads it for `artifacts:reports:junit`.
//!
//! The root is `<testsuites>` or `<testsuite>`; suites may nest. Each `<testcase>` counts once:
//! failed when it has a `<failure>`, in error with an `<error>`, skipped with a `<skipped>`, else
//! passed (the first of these children decides). A failure's message is its `message`
//! attribute followed by its text (usually the stack trace). Counts come from the cases, never
//! from the suites' `tests`/`failures` attributes, which tools get wrong.

use std::io::Read;

use quick_xml::events::{BytesStart, Event};

use crate::error::Error;
use crate::input::LimitGuard;
use crate::options::{Options, cap_message, push_capped};
use crate::tests::{FailedTest, FailureKind, TestReport};
use crate::xml;

#[derive(Default)]
struct Case {
    suite: String,
    name: String,
    outcome: Option<Outcome>,
}

enum Outcome {
    Failed(FailureKind, String),
    Skipped,
}

/// Reads a JUnit XML report.
///
/// # Errors
/// Malformed XML, a root other than `<testsuites>`/`<testsuite>`, an undefined entity, a
/// truncated document, or more than `options.max_bytes` bytes.
pub fn parse<R: Read>(reader: R, options: &Options) -> Result<TestReport, Error> {
    let (mut reader, guard) = xml::reader(reader, options.max_bytes);
    read(&mut reader, &guard).map_err(|e| xml::locate(e, &reader))
}

fn read<R: Read>(reader: &mut xml::XmlReader<R>, guard: &LimitGuard) -> Result<TestReport, Error> {
    let mut buf = Vec::with_capacity(4096);
    let mut report = TestReport::default();
    let mut suites: Vec<String> = Vec::new();
    let mut case: Option<Case> = None;
    // Text of the `<failure>`/`<error>` being read, if any.
    let mut text: Option<String> = None;
    let mut depth = 0usize;
    let mut root: Option<String> = None;
    loop {
        let at = reader.buffer_position();
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| xml::error(&e, reader.error_position(), guard))?;
        let (start, empty) = match &event {
            Event::Start(s) => (Some(s), false),
            Event::Empty(s) => (Some(s), true),
            _ => (None, false),
        };
        if let Some(s) = start {
            if root.is_none() {
                let name = String::from_utf8_lossy(s.local_name().as_ref()).into_owned();
                if name != "testsuites" && name != "testsuite" {
                    return Err(xml::wrong_root("<testsuites> or <testsuite>", &name, at));
                }
                root = Some(name);
            }
            if !empty {
                depth += 1;
            }
            open(
                s,
                empty,
                at,
                guard,
                &mut suites,
                &mut case,
                &mut text,
                &mut report,
            )?;
            buf.clear();
            continue;
        }
        match event {
            Event::End(e) => {
                depth = depth.saturating_sub(1);
                match e.local_name().as_ref() {
                    b"testsuite" => {
                        suites.pop();
                    }
                    b"testcase" => {
                        if let Some(c) = case.take() {
                            finish(c, &mut report);
                        }
                    }
                    b"failure" | b"error" => {
                        if let (
                            Some(t),
                            Some(Case {
                                outcome: Some(Outcome::Failed(_, m)),
                                ..
                            }),
                        ) = (text.take(), case.as_mut())
                        {
                            let t = t.trim();
                            if !t.is_empty() && !m.contains(t) {
                                if !m.is_empty() && !t.starts_with(m.as_str()) {
                                    m.push('\n');
                                } else {
                                    m.clear();
                                }
                                push_capped(m, t);
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Text(t) => {
                if let Some(out) = text.as_mut() {
                    let t = t.decode().map_err(|e| xml::error(&e.into(), at, guard))?;
                    push_capped(out, &t);
                }
            }
            Event::CData(t) => {
                if let Some(out) = text.as_mut() {
                    let t = t.decode().map_err(|e| xml::error(&e.into(), at, guard))?;
                    push_capped(out, &t);
                }
            }
            Event::GeneralRef(r) => {
                let mut s = String::new();
                xml::push_ref(&mut s, &r, at)?;
                if let Some(out) = text.as_mut() {
                    push_capped(out, &s);
                }
            }
            Event::Eof => {
                if depth > 0 {
                    let inside = if case.is_some() {
                        "testcase"
                    } else if !suites.is_empty() {
                        "testsuite"
                    } else {
                        root.as_deref().unwrap_or("testsuites")
                    };
                    return Err(xml::truncated(inside, at));
                }
                if root.is_none() {
                    return Err(xml::empty("<testsuites> or <testsuite>"));
                }
                return Ok(report);
            }
            // The DOCTYPE is skipped unread (see `xml`); comments, declarations and PIs mean nothing here.
            _ => {}
        }
        buf.clear();
    }
}

#[allow(clippy::too_many_arguments)]
fn open(
    s: &BytesStart<'_>,
    empty: bool,
    at: u64,
    guard: &LimitGuard,
    suites: &mut Vec<String>,
    case: &mut Option<Case>,
    text: &mut Option<String>,
    report: &mut TestReport,
) -> Result<(), Error> {
    match s.local_name().as_ref() {
        b"testsuite" if !empty => {
            suites.push(xml::attr(s, b"name", at, guard)?.unwrap_or_default());
        }
        b"testcase" => {
            let name = xml::attr(s, b"name", at, guard)?.unwrap_or_default();
            let name = match xml::attr(s, b"classname", at, guard)? {
                Some(class) if !class.is_empty() => format!("{class}.{name}"),
                _ => name,
            };
            let c = Case {
                suite: suites.last().cloned().unwrap_or_default(),
                name,
                outcome: None,
            };
            if empty {
                finish(c, report);
            } else {
                *case = Some(c);
            }
        }
        kind @ (b"failure" | b"error") => {
            if let Some(c) = case.as_mut() {
                if c.outcome.is_none() {
                    let kind = if kind == b"failure" {
                        FailureKind::Failure
                    } else {
                        FailureKind::Error
                    };
                    let mut message = String::new();
                    push_capped(
                        &mut message,
                        xml::attr(s, b"message", at, guard)?
                            .unwrap_or_default()
                            .trim(),
                    );
                    c.outcome = Some(Outcome::Failed(kind, message));
                    if !empty {
                        *text = Some(String::new());
                    }
                }
            }
        }
        b"skipped" => {
            if let Some(c) = case.as_mut() {
                if c.outcome.is_none() {
                    c.outcome = Some(Outcome::Skipped);
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn finish(case: Case, report: &mut TestReport) {
    match case.outcome {
        None => {
            report.total += 1;
            report.passed += 1;
        }
        Some(Outcome::Skipped) => {
            report.total += 1;
            report.skipped += 1;
        }
        Some(Outcome::Failed(kind, message)) => report.record_failure(FailedTest {
            suite: case.suite,
            name: case.name,
            kind,
            message: cap_message(message),
        }),
    }
}
