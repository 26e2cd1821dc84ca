//! A job log as HTML, a chunk of whole lines at a time: every line escaped first, then wrapped in
//! spans for its ANSI SGR colours (other escape sequences dropped), with a line-number anchor
//! (`L12`). GitLab's `section_start:TIME:NAME[collapsed=true]\r\e[0KHeader` and
//! `section_end:TIME:NAME\r\e[0K` markers become a header line (`data-s`) and an end line
//! (`data-e`) that the page's script folds; sections stay flat lines so that a chunk can end
//! anywhere. Colours reset at each line. A log is never unmasked here: it is shown as stored.

use std::fmt::Write as _;

use maud::Escaper;

/// Whole lines of a log rendered: the HTML, how many bytes of the input they took, and the number
/// of the line after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// One `<div class="l">` per line.
    pub html: String,
    /// The bytes of the input used: up to and including the last newline (all, when flushed).
    pub consumed: usize,
    /// The number of the next line.
    pub next_line: u64,
}

/// Renders the whole lines of `bytes`, numbered from `first_line`; with `flush`, a last line
/// without its newline too (the log is complete).
#[must_use]
pub fn render(bytes: &[u8], first_line: u64, flush: bool) -> LogChunk {
    render_from(
        bytes,
        first_line,
        false,
        if flush { Tail::Done } else { Tail::Whole },
    )
}

/// What becomes of the last bytes of a chunk that end without a newline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Left for a later chunk (the line is unfinished).
    Whole,
    /// A whole last line (the log is complete).
    Done,
    /// A piece of a line that goes on in the next chunk: shown up to its last whole character,
    /// and the next chunk's first line is the same line (`next_line` does not move on).
    Piece,
}

/// Renders the lines of `bytes`, numbered from `first_line`; with `continued`, the first line is
/// the rest of line `first_line`, begun in an earlier chunk: shown without a number or anchor of
/// its own (and never as a section marker).
#[must_use]
pub fn render_from(bytes: &[u8], first_line: u64, continued: bool, tail: Tail) -> LogChunk {
    let mut html = String::with_capacity(bytes.len() * 2);
    let mut line = first_line;
    let mut at = 0;
    let mut continued = continued;
    while at < bytes.len() {
        let (end, next, ends) = match (bytes[at..].iter().position(|&b| b == b'\n'), tail) {
            (Some(i), _) => (at + i, at + i + 1, true),
            (None, Tail::Whole) => break,
            (None, Tail::Done) => (bytes.len(), bytes.len(), true),
            (None, Tail::Piece) => {
                let end = at + char_end(&bytes[at..]);
                if end == at {
                    break;
                }
                (end, end, false)
            }
        };
        let text = String::from_utf8_lossy(&bytes[at..end]);
        if continued {
            render_rest(&mut html, &text);
        } else {
            render_line(&mut html, &text, line);
        }
        if ends {
            line = line.saturating_add(1);
        }
        continued = false;
        at = next;
    }
    LogChunk {
        html,
        consumed: at,
        next_line: line,
    }
}

/// How many bytes of `bytes` end at a character's edge: all but an unfinished UTF-8 sequence at
/// the end.
#[must_use]
pub fn char_end(bytes: &[u8]) -> usize {
    let tail = bytes.len().saturating_sub(4);
    for i in (tail..bytes.len()).rev() {
        let b = bytes[i];
        if b & 0xC0 == 0x80 {
            continue;
        }
        let want = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if bytes.len() - i < want {
            i
        } else {
            bytes.len()
        };
    }
    bytes.len()
}

/// How many bytes at the start of `bytes` belong to a character begun before them (at most 3).
#[must_use]
pub fn char_start(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take(3)
        .take_while(|&&b| b & 0xC0 == 0x80)
        .count()
}

/// A section marker: its kind, name and whether it starts collapsed, and the text after it.
fn marker(text: &str) -> Option<(&'static str, &str, bool, &str)> {
    // A marker starts its line, after escape sequences only (`\e[0K`): a command that prints one
    // (`$ printf 'section_start:…'`) is no marker.
    let mut text = text;
    while let Some(csi) = text.strip_prefix("\x1b[") {
        let end = csi.find(|c: char| ('@'..='~').contains(&c))?;
        text = &csi[end + 1..];
    }
    for kind in ["section_start:", "section_end:"] {
        let Some(rest) = text.strip_prefix(kind) else {
            continue;
        };
        let (_, rest) = rest.split_once(':')?;
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
            .unwrap_or(rest.len());
        let (name, mut after) = rest.split_at(name_end);
        if name.is_empty() {
            return None;
        }
        let mut collapsed = false;
        if let Some(opts) = after.strip_prefix('[') {
            let (opts, tail) = opts.split_once(']').unwrap_or((opts, ""));
            collapsed = opts.split(',').any(|o| o.trim() == "collapsed=true");
            after = tail;
        }
        let after = after.strip_prefix('\r').unwrap_or(after);
        let after = after.strip_prefix("\x1b[0K").unwrap_or(after);
        return Some((
            if kind == "section_start:" { "s" } else { "e" },
            name,
            collapsed,
            after,
        ));
    }
    None
}

fn render_line(out: &mut String, text: &str, n: u64) {
    let text = text.strip_suffix('\r').unwrap_or(text);
    let (class, section, collapsed, text) = match marker(text) {
        Some((kind, name, collapsed, after)) => (kind, Some((kind, name)), collapsed, after),
        None => ("", None, false, text),
    };
    // A carriage return overwrites the line on a terminal: its last part is what stays.
    let text = text.rsplit('\r').next().unwrap_or(text);
    let _ = write!(
        out,
        "<div class=\"l{}{class}\" id=\"L{n}\"",
        if class.is_empty() { "" } else { " " }
    );
    if let Some((kind, name)) = section {
        // Section names are [A-Za-z0-9_.-]: nothing to escape.
        let _ = write!(out, " data-{kind}=\"{name}\"");
        if collapsed {
            out.push_str(" data-c=\"1\"");
        }
    }
    let _ = write!(out, "><a class=\"n\" href=\"#L{n}\">{n}</a>");
    if class == "s" {
        out.push_str("<button type=\"button\" class=\"t tog\" aria-expanded=\"true\">");
        ansi(out, text);
        out.push_str("</button></div>");
    } else {
        out.push_str("<span class=\"t\">");
        ansi(out, text);
        out.push_str("</span></div>");
    }
}

/// The rest of a line begun in an earlier chunk: no number, no anchor, no marker.
fn render_rest(out: &mut String, text: &str) {
    let text = text.strip_suffix('\r').unwrap_or(text);
    let text = text.rsplit('\r').next().unwrap_or(text);
    out.push_str("<div class=\"l c\"><span class=\"n\"></span><span class=\"t\">");
    ansi(out, text);
    out.push_str("</span></div>");
}

/// The SGR state of a run of text.
#[derive(Default, Clone, PartialEq, Eq)]
struct Style {
    bold: bool,
    italic: bool,
    underline: bool,
    fg: Option<Colour>,
    bg: Option<Colour>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Colour {
    /// One of the 16 terminal colours (a class of the style sheet).
    Index(u8),
    /// A 256-colour or true colour, as `#rrggbb`.
    Rgb(u8, u8, u8),
}

impl Style {
    fn apply(&mut self, params: &str) {
        let codes: Vec<u16> = if params.is_empty() {
            vec![0]
        } else {
            params.split(';').map(|p| p.parse().unwrap_or(0)).collect()
        };
        let mut i = 0;
        while i < codes.len() {
            match codes[i] {
                0 => *self = Style::default(),
                1 => self.bold = true,
                3 => self.italic = true,
                4 => self.underline = true,
                22 => self.bold = false,
                23 => self.italic = false,
                24 => self.underline = false,
                c @ 30..=37 => self.fg = Some(Colour::Index(u8::try_from(c - 30).unwrap_or(0))),
                c @ 90..=97 => self.fg = Some(Colour::Index(u8::try_from(c - 82).unwrap_or(0))),
                c @ 40..=47 => self.bg = Some(Colour::Index(u8::try_from(c - 40).unwrap_or(0))),
                c @ 100..=107 => self.bg = Some(Colour::Index(u8::try_from(c - 92).unwrap_or(0))),
                39 => self.fg = None,
                49 => self.bg = None,
                c @ (38 | 48) => {
                    let (colour, used) = extended(&codes[i + 1..]);
                    i += used;
                    if c == 38 {
                        self.fg = colour;
                    } else {
                        self.bg = colour;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }

    fn open(&self, out: &mut String) -> bool {
        if *self == Style::default() {
            return false;
        }
        let mut classes = Vec::new();
        let mut style = String::new();
        if self.bold {
            classes.push("b".to_string());
        }
        if self.italic {
            classes.push("i".to_string());
        }
        if self.underline {
            classes.push("u".to_string());
        }
        for (prefix, prop, colour) in [("f", "color", self.fg), ("g", "background", self.bg)] {
            match colour {
                Some(Colour::Index(n)) => classes.push(format!("{prefix}{n}")),
                Some(Colour::Rgb(r, g, b)) => {
                    let _ = write!(style, "{prop}:#{r:02x}{g:02x}{b:02x};");
                }
                None => {}
            }
        }
        let _ = write!(out, "<span class=\"{}\"", classes.join(" "));
        if !style.is_empty() {
            let _ = write!(out, " style=\"{style}\"");
        }
        out.push('>');
        true
    }
}

/// `5;N` or `2;R;G;B` after a 38 or 48: the colour and how many codes it took.
fn extended(codes: &[u16]) -> (Option<Colour>, usize) {
    let byte = |i: usize| {
        codes
            .get(i)
            .map(|&c| u8::try_from(c.min(255)).unwrap_or(255))
    };
    match codes.first() {
        Some(5) => match byte(1) {
            Some(n) if n < 16 => (Some(Colour::Index(n)), 2),
            Some(n) => (Some(xterm(n)), 2),
            None => (None, 1),
        },
        Some(2) => match (byte(1), byte(2), byte(3)) {
            (Some(r), Some(g), Some(b)) => (Some(Colour::Rgb(r, g, b)), 4),
            _ => (None, codes.len()),
        },
        _ => (None, 0),
    }
}

/// Colours 16 to 255 of the xterm palette.
fn xterm(n: u8) -> Colour {
    if n >= 232 {
        let v = 8 + (n - 232) * 10;
        return Colour::Rgb(v, v, v);
    }
    let n = n - 16;
    let level = |v: u8| if v == 0 { 0 } else { 55 + v * 40 };
    Colour::Rgb(level(n / 36), level((n / 6) % 6), level(n % 6))
}

/// `text` escaped, in spans for its SGR sequences; every other escape sequence is dropped.
fn ansi(out: &mut String, text: &str) {
    let mut style = Style::default();
    let mut open = false;
    let mut rest = text;
    while let Some(i) = rest.find('\x1b') {
        escape(out, &rest[..i]);
        let seq = &rest[i + 1..];
        if let Some(csi) = seq.strip_prefix('[') {
            // Parameters and intermediates, then one final byte in @..~.
            let end = csi
                .find(|c: char| ('@'..='~').contains(&c))
                .unwrap_or(csi.len());
            let final_byte = csi[end..].chars().next();
            if final_byte == Some('m') {
                style.apply(&csi[..end]);
                if open {
                    out.push_str("</span>");
                }
                open = style.open(out);
            }
            rest = &csi[(end + final_byte.map_or(0, char::len_utf8)).min(csi.len())..];
        } else {
            // A two-byte escape (or a lone ESC at the end): dropped.
            rest = seq
                .get(seq.chars().next().map_or(0, char::len_utf8)..)
                .unwrap_or("");
        }
    }
    escape(out, rest);
    if open {
        out.push_str("</span>");
    }
}

/// HTML-escaped text, without control characters other than tabs.
fn escape(out: &mut String, text: &str) {
    let clean: String;
    let text = if text.chars().any(|c| c.is_control() && c != '\t') {
        clean = text
            .chars()
            .filter(|&c| !c.is_control() || c == '\t')
            .collect();
        &clean
    } else {
        text
    };
    let _ = Escaper::new(out).write_str(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> String {
        render(line.as_bytes(), 1, true).html
    }

    #[test]
    fn text_is_escaped_before_any_span_is_made() {
        let html = one("<script>window.__xss=1</script> & \"q\"");
        assert!(html.contains("&lt;script&gt;window.__xss=1&lt;/script&gt; &amp; &quot;q&quot;"));
        assert!(!html.contains("<script>"));
        // An escape sequence cannot smuggle markup either.
        let html = one("\x1b[31m<img src=x onerror=alert(1)>\x1b[0m");
        assert!(html.contains("<span class=\"f1\">&lt;img src=x onerror=alert(1)&gt;</span>"));
    }

    #[test]
    fn ansi_colours_become_spans_and_other_sequences_vanish() {
        let html = one("a\x1b[1;32mok\x1b[0m b\x1b[Kc\x1b[38;5;196mr\x1b[48;2;1;2;3mx");
        assert!(html.contains(
            "a<span class=\"b f2\">ok</span> bc<span class=\"\" style=\"color:#ff0000;\">r</span>\
             <span class=\"\" style=\"color:#ff0000;background:#010203;\">x</span>"
        ), "{html}");
        assert!(!html.contains('\x1b'));
        // Bright colours, and a reset of the foreground alone.
        let html = one("\x1b[91;44mA\x1b[39mB");
        assert!(
            html.contains("<span class=\"f9 g4\">A</span><span class=\"g4\">B</span>"),
            "{html}"
        );
    }

    #[test]
    fn every_line_has_an_anchor_and_only_whole_lines_are_taken() {
        let c = render(b"one\ntwo\nthr", 7, false);
        assert_eq!(c.consumed, 8);
        assert_eq!(c.next_line, 9);
        assert!(
            c.html
                .contains("id=\"L7\"><a class=\"n\" href=\"#L7\">7</a>")
        );
        assert!(
            c.html
                .contains("href=\"#L8\">8</a><span class=\"t\">two</span>")
        );
        assert!(!c.html.contains("thr"));
        let c = render(b"thr", 9, true);
        assert_eq!((c.consumed, c.next_line), (3, 10));
        assert!(c.html.contains("thr"));
    }

    #[test]
    fn sections_become_header_and_end_lines() {
        let log = "section_start:1700000000:build_step[collapsed=true]\r\x1b[0K\x1b[36mBuilding <x>\x1b[0m\n\
                   inside\n\
                   section_end:1700000001:build_step\r\x1b[0K\n\
                   after\n";
        let c = render(log.as_bytes(), 1, false);
        assert!(c.html.contains(
            "<div class=\"l s\" id=\"L1\" data-s=\"build_step\" data-c=\"1\"><a class=\"n\" href=\"#L1\">1</a>\
             <button type=\"button\" class=\"t tog\" aria-expanded=\"true\"><span class=\"f6\">Building &lt;x&gt;</span></button>"
        ), "{}", c.html);
        assert!(
            c.html
                .contains("<div class=\"l e\" id=\"L3\" data-e=\"build_step\">")
        );
        assert!(!c.html.contains("section_"));
        assert!(c.html.contains("<span class=\"t\">after</span>"));
        // A marker whose name holds markup is no marker: it is shown, escaped.
        let c = one("section_start:1:<b>\r\x1b[0Kx");
        assert!(!c.contains("data-s") && !c.contains("<b>"), "{c}");
        // After an erase sequence it is one; inside a command's echo it is not.
        assert!(one("\x1b[0Ksection_start:1:a\r\x1b[0KA").contains("data-s=\"a\""));
        let c = one("$ printf 'section_start:1:a\\r'");
        assert!(
            !c.contains("data-s") && c.contains("section_start:1:a"),
            "{c}"
        );
    }

    #[test]
    fn a_line_in_pieces_keeps_its_number() {
        // A piece without its newline: the next line number stays, and the next chunk's first
        // line is its rest, with no number or anchor of its own.
        let c = render_from(b"one\nlong", 4, false, Tail::Piece);
        assert_eq!((c.consumed, c.next_line), (8, 5));
        assert!(
            c.html.contains("id=\"L5\"") && c.html.contains(">long<"),
            "{}",
            c.html
        );
        let c = render_from(b"er\nnext\n", 5, true, Tail::Piece);
        assert_eq!((c.consumed, c.next_line), (8, 7));
        assert!(
            c.html.starts_with(
                "<div class=\"l c\"><span class=\"n\"></span><span class=\"t\">er</span></div>\
                 <div class=\"l\" id=\"L6\">"
            ),
            "{}",
            c.html
        );
        assert!(!c.html.contains("id=\"L5\""));
        // A piece in the middle of a long line: still the same line after it.
        let c = render_from(b"middle", 5, true, Tail::Piece);
        assert_eq!((c.consumed, c.next_line), (6, 5));
        assert!(!c.html.contains("id="));
        // A rest is never a section marker.
        let c = render_from(b"section_start:1:a\r\x1b[0KA\n", 5, true, Tail::Whole);
        assert!(!c.html.contains("data-s"), "{}", c.html);
    }

    #[test]
    fn a_piece_ends_at_a_character_edge() {
        let text = "ab\u{e9}\u{20ac}\u{1f600}".as_bytes(); // 2, 3 and 4 bytes
        for cut in 0..=text.len() {
            let end = char_end(&text[..cut]);
            assert!(std::str::from_utf8(&text[..end]).is_ok(), "{cut}");
            assert!(cut - end < 4);
            let start = char_start(&text[cut..]);
            assert!(std::str::from_utf8(&text[cut + start..]).is_ok(), "{cut}");
            assert_eq!(end == cut, start == 0, "{cut}");
        }
        // A piece cut in a character shows no replacement character and leaves the character
        // for the next chunk.
        let c = render_from(&"x\u{20ac}".as_bytes()[..3], 1, false, Tail::Piece);
        assert_eq!(c.consumed, 1);
        assert!(!c.html.contains('\u{fffd}'), "{}", c.html);
    }

    #[test]
    fn line_numbers_saturate() {
        let c = render(b"a\n", u64::MAX, false);
        assert_eq!(c.next_line, u64::MAX);
    }

    #[test]
    fn a_carriage_return_keeps_the_last_overwrite() {
        assert!(one("10%\r50%\r100%\r\n").contains("<span class=\"t\">100%</span>"));
    }
}
