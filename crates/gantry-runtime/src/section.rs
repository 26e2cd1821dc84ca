//! The job log's own collapsible sections: `before_script`, `script` and `after_script` each
//! become one, with GitLab's markers (`\e[0Ksection_start:UNIX_TIME:NAME\r\e[0KHeader` and
//! `\e[0Ksection_end:UNIX_TIME:NAME\r\e[0K`), reported as [`Event::JobLog`](crate::Event) lines
//! of standard output so that they reach every log (the agent's spool, the server, the web UI).
//! The names are GitLab Runner's where it has one (`step_script`, `after_script`); its
//! `step_script` holds `before_script` too, which here has a section of its own. A part's section
//! starts when its first command is echoed and ends when the next part starts or its step ends,
//! however it ended; a job's own markers inside are its output, nested in the part's section.

use std::time::SystemTime;

/// A part of a job's script with a section of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// `before_script`.
    BeforeScript,
    /// `script`.
    Script,
    /// `after_script`.
    AfterScript,
}

const PARTS: [Part; 3] = [Part::BeforeScript, Part::Script, Part::AfterScript];

impl Part {
    /// The section's name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Part::BeforeScript => "before_script",
            Part::Script => "step_script",
            Part::AfterScript => "after_script",
        }
    }

    /// The section's header.
    #[must_use]
    pub fn header(self) -> &'static str {
        match self {
            Part::BeforeScript => "Running before_script",
            Part::Script => "Running script",
            Part::AfterScript => "Running after_script",
        }
    }

    /// The line that starts its section at `time` (seconds since the Unix epoch).
    #[must_use]
    pub fn start_line(self, time: u64) -> String {
        format!(
            "\x1b[0Ksection_start:{time}:{}\r\x1b[0K{}",
            self.name(),
            self.header()
        )
    }

    /// The line that ends its section at `time`.
    #[must_use]
    pub fn end_line(self, time: u64) -> String {
        format!("\x1b[0Ksection_end:{time}:{}\r\x1b[0K", self.name())
    }
}

/// A section marker line, the runtime's or a job's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker<'a> {
    /// `section_start` (else `section_end`).
    pub start: bool,
    /// The time it gives (seconds since the Unix epoch).
    pub time: u64,
    /// The section's name.
    pub name: &'a str,
    /// What follows the marker: a start's header.
    pub header: &'a str,
}

/// The section marker that `line` is, as GitLab reads them: after escape sequences only,
/// `section_start:` or `section_end:`, the time, `:`, the name (`[A-Za-z0-9_.-]`), options in
/// brackets (`[collapsed=true]`), then `\r\e[0K`.
#[must_use]
pub fn parse(line: &str) -> Option<Marker<'_>> {
    let mut text = line;
    while let Some(csi) = text.strip_prefix("\x1b[") {
        let end = csi.find(|c: char| ('@'..='~').contains(&c))?;
        text = &csi[end + 1..];
    }
    let (start, rest) = if let Some(r) = text.strip_prefix("section_start:") {
        (true, r)
    } else {
        (false, text.strip_prefix("section_end:")?)
    };
    let (time, rest) = rest.split_once(':')?;
    let time = time.parse().ok()?;
    let name_end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        .unwrap_or(rest.len());
    let (name, mut rest) = rest.split_at(name_end);
    if name.is_empty() {
        return None;
    }
    if let Some(options) = rest.strip_prefix('[') {
        rest = &options[options.find(']')? + 1..];
    }
    let header = rest.strip_prefix("\r\x1b[0K")?;
    Some(Marker {
        start,
        time,
        name,
        header,
    })
}

/// Whether `line` is one of the runtime's own section markers (exactly as [`Part::start_line`]
/// and [`Part::end_line`] write them), not a job's output. A job that prints exactly such a line
/// is taken for the runtime.
#[must_use]
pub fn is_own_marker(line: &str) -> bool {
    let Some(m) = parse(line) else {
        return false;
    };
    PARTS.iter().any(|p| {
        p.name() == m.name
            && line
                == if m.start {
                    p.start_line(m.time)
                } else {
                    p.end_line(m.time)
                }
    })
}

/// The sections of one step: where each part starts (the index of its first command), in order.
pub(crate) struct Sections<'a> {
    parts: &'a [(usize, Part)],
    commands: &'a [String],
    /// The index of the command after the last one echoed.
    next: usize,
    /// How many of `parts` have been started.
    started: usize,
    open: Option<Part>,
}

impl<'a> Sections<'a> {
    pub(crate) fn new(parts: &'a [(usize, Part)], commands: &'a [String]) -> Sections<'a> {
        Sections {
            parts,
            commands,
            next: 0,
            started: 0,
            open: None,
        }
    }

    /// The marker lines to report before the echo of `command` (the step's commands are echoed in
    /// order, though an executor may lose some): the end of the open section and the start of
    /// the next, when `command` is the first of a part.
    pub(crate) fn echoed(&mut self, command: &str) -> Vec<String> {
        let index = self.commands[self.next.min(self.commands.len())..]
            .iter()
            .position(|c| c == command)
            .map_or(self.next, |i| self.next + i);
        self.next = index + 1;
        let reached = self.parts[self.started..]
            .iter()
            .take_while(|(first, _)| *first <= index)
            .count();
        if reached == 0 {
            return Vec::new();
        }
        self.started += reached;
        let part = self.parts[self.started - 1].1;
        let now = unix_now();
        let mut lines: Vec<String> = self.close_at(now).into_iter().collect();
        lines.push(part.start_line(now));
        self.open = Some(part);
        lines
    }

    /// The end of the open section, if any: the step is over.
    pub(crate) fn close(&mut self) -> Option<String> {
        self.close_at(unix_now())
    }

    fn close_at(&mut self, now: u64) -> Option<String> {
        self.open.take().map(|p| p.end_line(now))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_gitlabs_and_recognised() {
        let start = Part::Script.start_line(17);
        assert_eq!(
            start,
            "\x1b[0Ksection_start:17:step_script\r\x1b[0KRunning script"
        );
        let end = Part::AfterScript.end_line(18);
        assert_eq!(end, "\x1b[0Ksection_end:18:after_script\r\x1b[0K");
        assert!(is_own_marker(&start) && is_own_marker(&end));
        for line in [
            "section_start:17:step_script\r\x1b[0KRunning script",
            "\x1b[0Ksection_start:17:notes\r\x1b[0KRunning script",
            "\x1b[0Ksection_start:x:step_script\r\x1b[0KRunning script",
            "\x1b[0Ksection_start:17:step_script\r\x1b[0KMy header",
            "\x1b[0Ksection_end:18:after_script\r\x1b[0Kmore",
            "plain",
        ] {
            assert!(!is_own_marker(line), "{line:?}");
        }
    }

    #[test]
    fn markers_are_parsed_as_gitlab_reads_them() {
        assert_eq!(
            parse("\x1b[0Ksection_start:17:my.sec-1[collapsed=true]\r\x1b[0K\x1b[1mHead"),
            Some(Marker {
                start: true,
                time: 17,
                name: "my.sec-1",
                header: "\x1b[1mHead",
            })
        );
        assert_eq!(
            parse("section_end:18:mine\r\x1b[0K"),
            Some(Marker {
                start: false,
                time: 18,
                name: "mine",
                header: "",
            })
        );
        for line in [
            "$ echo section_start:1:a\r\x1b[0K",
            "section_start:1:a",
            "section_start:x:a\r\x1b[0K",
            "section_start:1:\r\x1b[0K",
            "section_start:1:a[collapsed=true\r\x1b[0K",
        ] {
            assert_eq!(parse(line), None, "{line:?}");
        }
    }

    #[test]
    fn parts_start_at_their_first_command_and_end_once() {
        let commands: Vec<String> = ["a", "b", "a", "c"].map(String::from).to_vec();
        let parts = [(0, Part::BeforeScript), (2, Part::Script)];
        let mut s = Sections::new(&parts, &commands);
        let first = s.echoed("a");
        assert_eq!(first.len(), 1);
        assert!(first[0].contains("section_start:") && first[0].contains(":before_script\r"));
        assert!(s.echoed("b").is_empty());
        // The second `a` is command 2, the first of `script`.
        let second = s.echoed("a");
        assert_eq!(second.len(), 2);
        assert!(second[0].contains("section_end:") && second[0].contains(":before_script\r"));
        assert!(second[1].contains("section_start:") && second[1].contains(":step_script\r"));
        assert!(s.echoed("c").is_empty());
        assert!(s.close().is_some_and(|l| l.contains(":step_script\r")));
        assert_eq!(s.close(), None);
    }

    #[test]
    fn a_lost_echo_still_starts_the_part_it_reaches() {
        let commands: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let parts = [(0, Part::BeforeScript), (1, Part::Script)];
        let mut s = Sections::new(&parts, &commands);
        let lines = s.echoed("b");
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains(":step_script\r"));
        let mut none = Sections::new(&parts, &commands);
        assert_eq!(none.close(), None);
    }
}
