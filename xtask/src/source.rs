//! The paths a Rust source file names, read from its tokens: `use` trees (with their groups,
//! `self` and renames), `extern crate`, and paths in code (`tokio::spawn`, `::std::fs::read`,
//! and a name brought in by a `use`, such as `Instant` after `use std::time::Instant`). Comments,
//! strings and character literals are skipped, so a path named in them does not count. Paths
//! inside macro invocations are seen too (they are tokens like any other).
//!
//! This is a tokenizer, not a parser: it does not resolve scopes (a `use` anywhere in the file
//! applies to the whole file) and knows nothing of macros that build paths from pieces. That is
//! enough for a lint that asks "does this file name `std::fs`?".

/// A path named by a source file, with `use` renames and imported names expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NamedPath {
    /// The segments, without a leading `::`.
    pub segments: Vec<String>,
    /// A glob import (`use a::b::*`): `segments` is the module it reads.
    pub glob: bool,
    /// The 1-based line where the path starts.
    pub line: usize,
}

impl NamedPath {
    /// `a::b::c`, with `::*` for a glob.
    pub fn display(&self) -> String {
        let mut s = self.segments.join("::");
        if self.glob {
            s.push_str("::*");
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
    /// A literal or a lifetime: something that ends a path and is never part of one.
    Other,
}

/// Splits `src` into tokens with their 1-based lines, dropping comments and whitespace.
fn tokens(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    // Advances `i` past `n` chars, counting lines.
    macro_rules! skip {
        ($n:expr) => {
            for _ in 0..$n {
                if at(i) == '\n' {
                    line += 1;
                }
                i += 1;
            }
        };
    }
    while i < c.len() {
        let ch = c[i];
        let start_line = line;
        if ch.is_whitespace() {
            skip!(1);
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    skip!(2);
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    skip!(2);
                    if depth == 0 {
                        break;
                    }
                } else {
                    skip!(1);
                }
            }
        } else if let Some(hashes) = raw_string_start(&c, i) {
            // r"..", r#".."#, br"..", cr"..": up to the quote and the same number of hashes.
            while at(i) != '"' {
                i += 1;
            }
            skip!(1);
            while i < c.len() {
                if at(i) == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                    skip!(1 + hashes);
                    break;
                }
                skip!(1);
            }
            out.push((Tok::Other, start_line));
        } else if ch == '"' || ((ch == 'b' || ch == 'c') && at(i + 1) == '"') {
            if ch != '"' {
                i += 1;
            }
            skip!(1);
            while i < c.len() && at(i) != '"' {
                skip!(if at(i) == '\\' { 2 } else { 1 });
            }
            skip!(1);
            out.push((Tok::Other, start_line));
        } else if ch == '\'' || (ch == 'b' && at(i + 1) == '\'') {
            if ch == 'b' {
                i += 1;
            }
            if at(i + 1) == '\\' {
                // An escaped character (`'\''`, `'\u{7f}'`): past it, up to the closing quote.
                i += 3;
                while i < c.len() && at(i) != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                // A lifetime or a label.
                i += 1;
                while is_ident_char(at(i)) {
                    i += 1;
                }
            }
            out.push((Tok::Other, start_line));
        } else if ch == 'r' && at(i + 1) == '#' && is_ident_start(at(i + 2)) {
            i += 2;
            let s = i;
            while is_ident_char(at(i)) {
                i += 1;
            }
            out.push((Tok::Ident(c[s..i].iter().collect()), start_line));
        } else if is_ident_start(ch) {
            let s = i;
            while is_ident_char(at(i)) {
                i += 1;
            }
            out.push((Tok::Ident(c[s..i].iter().collect()), start_line));
        } else if ch.is_ascii_digit() {
            while is_ident_char(at(i)) {
                i += 1;
            }
            out.push((Tok::Other, start_line));
        } else if ch == ':' && at(i + 1) == ':' {
            i += 2;
            out.push((Tok::PathSep, start_line));
        } else {
            i += 1;
            out.push((Tok::Punct(ch), start_line));
        }
    }
    out
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// The number of `#` of a raw string literal starting at `i` (`r"`, `r#"`, `br"`, `cr"`).
fn raw_string_start(c: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if matches!(c.get(j), Some('b' | 'c')) {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    // Part of a longer identifier (`bar"` cannot start a literal).
    if i > 0 && is_ident_char(c[i - 1]) {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (c.get(j) == Some(&'"')).then_some(hashes)
}

/// One name brought in by a `use` or an `extern crate`.
struct Import {
    path: NamedPath,
    /// The name it is known by in the file (`None` for `as _` and globs).
    name: Option<String>,
}

/// Every path `src` names, expanded through the file's imports.
pub(crate) fn named_paths(src: &str) -> Vec<NamedPath> {
    paths_in(&tokens(src))
}

/// Every path `src` names outside its inline test modules (`#[cfg(test)] mod tests { .. }`): what
/// the code itself depends on.
pub(crate) fn named_paths_outside_tests(src: &str) -> Vec<NamedPath> {
    let toks = tokens(src);
    let is = |i: usize, t: &Tok| toks.get(i).is_some_and(|(x, _)| x == t);
    let ident = |s: &str| Tok::Ident(s.to_owned());
    let mut kept = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        // `# [ cfg ( test ) ] mod NAME {`, then up to its matching brace.
        let head = [
            Tok::Punct('#'),
            Tok::Punct('['),
            ident("cfg"),
            Tok::Punct('('),
            ident("test"),
            Tok::Punct(')'),
            Tok::Punct(']'),
            ident("mod"),
        ];
        if head.iter().enumerate().all(|(k, t)| is(i + k, t))
            && matches!(toks.get(i + 8), Some((Tok::Ident(_), _)))
            && is(i + 9, &Tok::Punct('{'))
        {
            let mut depth = 0;
            i += 9;
            while i < toks.len() {
                match toks[i].0 {
                    Tok::Punct('{') => depth += 1,
                    Tok::Punct('}') => depth -= 1,
                    _ => {}
                }
                i += 1;
                if depth == 0 {
                    break;
                }
            }
            continue;
        }
        kept.push(toks[i].clone());
        i += 1;
    }
    paths_in(&kept)
}

/// Every path the tokens name, expanded through their imports.
fn paths_in(toks: &[(Tok, usize)]) -> Vec<NamedPath> {
    let mut imports = Vec::new();
    let mut code = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let prev = i.checked_sub(1).map(|p| &toks[p].0);
        match &toks[i].0 {
            Tok::Ident(k) if k == "use" => {
                i = use_tree(toks, i + 1, &[], true, &mut imports);
            }
            Tok::Ident(k)
                if k == "extern"
                    && matches!(toks.get(i + 1), Some((Tok::Ident(c), _)) if c == "crate") =>
            {
                if let Some((Tok::Ident(name), line)) = toks.get(i + 2) {
                    let alias = match (toks.get(i + 3), toks.get(i + 4)) {
                        (Some((Tok::Ident(a), _)), Some((Tok::Ident(n), _))) if a == "as" => {
                            Some(n.clone()).filter(|n| n != "_")
                        }
                        _ => Some(name.clone()),
                    };
                    imports.push(Import {
                        path: NamedPath {
                            segments: vec![name.clone()],
                            glob: false,
                            line: *line,
                        },
                        name: alias,
                    });
                }
                i += 3;
            }
            // A path in code: not a field or a method (after `.`), not the rest of a path whose
            // generic arguments came first (`Vec::<u8>::new`).
            Tok::Ident(_) if !matches!(prev, Some(Tok::Punct('.') | Tok::PathSep)) => {
                let (segments, next) = path_at(toks, i);
                code.push(NamedPath {
                    segments,
                    glob: false,
                    line: toks[i].1,
                });
                i = next;
            }
            // `::std::fs`: a leading `::` not after a name or generic arguments.
            Tok::PathSep
                if !matches!(prev, Some(Tok::Ident(_) | Tok::Punct('>')))
                    && matches!(toks.get(i + 1), Some((Tok::Ident(_), _))) =>
            {
                let (segments, next) = path_at(toks, i + 1);
                code.push(NamedPath {
                    segments,
                    glob: false,
                    line: toks[i].1,
                });
                i = next;
            }
            _ => i += 1,
        }
    }
    let mut out: Vec<NamedPath> = imports
        .iter()
        .map(|im| NamedPath {
            segments: expand(&im.path.segments, &imports, 0),
            ..im.path.clone()
        })
        .collect();
    for p in code {
        // A lone name counts only when an import gave it (a lone `tokio` is not the crate).
        let imported = imports
            .iter()
            .any(|im| im.name.as_deref() == Some(p.segments[0].as_str()));
        if p.segments.len() > 1 || imported {
            out.push(NamedPath {
                segments: expand(&p.segments, &imports, 0),
                ..p
            });
        }
    }
    out
}

/// `a::b::c` starting at the identifier at `i`; answers its segments and the index after it.
fn path_at(toks: &[(Tok, usize)], mut i: usize) -> (Vec<String>, usize) {
    let mut segments = Vec::new();
    while let Some((Tok::Ident(s), _)) = toks.get(i) {
        segments.push(s.clone());
        i += 1;
        if matches!(toks.get(i), Some((Tok::PathSep, _)))
            && matches!(toks.get(i + 1), Some((Tok::Ident(_), _)))
        {
            i += 1;
        } else {
            break;
        }
    }
    (segments, i)
}

/// Replaces a first segment that names an import by the import's path (`Instant::now` after
/// `use std::time::Instant`), repeatedly (`use std::time; use time::Instant;`).
fn expand(segments: &[String], imports: &[Import], depth: usize) -> Vec<String> {
    if depth > 8 {
        return segments.to_vec();
    }
    let first = segments[0].as_str();
    for im in imports {
        // `use tokio;` names the crate itself: nothing to expand.
        if im.name.as_deref() == Some(first) && im.path.segments != [first] {
            let mut full = expand(&im.path.segments, imports, depth + 1);
            full.extend_from_slice(&segments[1..]);
            return full;
        }
    }
    segments.to_vec()
}

/// Reads the `use` tree starting at token `i` under `prefix`; answers the index after it (after
/// the `;` at the `top` level, after the tree inside a group).
fn use_tree(
    toks: &[(Tok, usize)],
    mut i: usize,
    prefix: &[String],
    top: bool,
    out: &mut Vec<Import>,
) -> usize {
    let line = toks.get(i).map_or(0, |t| t.1);
    let mut path = prefix.to_vec();
    if matches!(toks.get(i), Some((Tok::PathSep, _))) {
        i += 1;
    }
    loop {
        match toks.get(i).map(|t| &t.0) {
            Some(Tok::Ident(s)) if s == "self" && !path.is_empty() => i += 1,
            Some(Tok::Ident(s)) => {
                path.push(s.clone());
                i += 1;
            }
            Some(Tok::Punct('*')) => {
                out.push(Import {
                    path: NamedPath {
                        segments: path,
                        glob: true,
                        line,
                    },
                    name: None,
                });
                return finish_tree(toks, i + 1, top);
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                while !matches!(toks.get(i).map(|t| &t.0), None | Some(Tok::Punct('}'))) {
                    i = use_tree(toks, i, &path, false, out);
                    if matches!(toks.get(i), Some((Tok::Punct(','), _))) {
                        i += 1;
                    }
                }
                return finish_tree(toks, i + 1, top);
            }
            _ => break,
        }
        if matches!(toks.get(i), Some((Tok::PathSep, _))) {
            i += 1;
        } else {
            break;
        }
    }
    let mut name = path.last().cloned();
    match (toks.get(i), toks.get(i + 1)) {
        (Some((Tok::Ident(a), _)), Some((Tok::Ident(n), _))) if a == "as" => {
            name = Some(n.clone()).filter(|n| n != "_");
            i += 2;
        }
        _ => {}
    }
    if !path.is_empty() {
        out.push(Import {
            path: NamedPath {
                segments: path,
                glob: false,
                line,
            },
            name,
        });
    }
    finish_tree(toks, i, top)
}

/// After a tree: at the `top` level, skips to past the `;`.
fn finish_tree(toks: &[(Tok, usize)], mut i: usize, top: bool) -> usize {
    if top {
        while i < toks.len() && toks[i].0 != Tok::Punct(';') {
            i += 1;
        }
        i + 1
    } else {
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(src: &str) -> Vec<String> {
        named_paths(src).iter().map(NamedPath::display).collect()
    }

    #[test]
    fn use_groups_self_and_renames_are_expanded() {
        let p = paths(
            "use a::{b, c::d};\nuse std::fs::{self, File as F};\npub(crate) use ::x::y as _;\n",
        );
        assert_eq!(p, ["a::b", "a::c::d", "std::fs", "std::fs::File", "x::y"]);
    }

    #[test]
    fn nested_groups_and_globs() {
        let p = paths("use std::{io::{self, Read}, time::*};");
        assert_eq!(p, ["std::io", "std::io::Read", "std::time::*"]);
        let p = paths("use {std::fs, tokio::{spawn}};\nuse x;");
        assert_eq!(p, ["std::fs", "tokio::spawn", "x"]);
    }

    #[test]
    fn a_use_in_a_comment_or_a_string_does_not_count() {
        let src = r####"
            // use std::fs;
            /* use std::process; /* nested */ std::net::TcpStream */
            /// Never calls `std::fs::read`.
            const A: &str = "use std::fs; std::fs::read";
            const B: &str = r#"std::process::Command "quoted" "#;
            const C: &[u8] = br##"tokio::spawn"##;
            const D: char = '"';
            const E: [char; 3] = ['\'', '\u{22}', '\\'];
            const F: &str = "\" std::fs \\";
            fn f<'a>(x: &'a str) -> &'a str { x }
        "####;
        assert_eq!(paths(src), Vec::<String>::new());
    }

    #[test]
    fn paths_in_code_and_macros_are_seen() {
        let src = "fn f() { let x = std::fs::read(\"a\"); tokio::spawn(async {}); \
                   println!(\"{}\", ::std::process::id()); }";
        let p = paths(src);
        assert!(p.contains(&"std::fs::read".to_owned()), "{p:?}");
        assert!(p.contains(&"tokio::spawn".to_owned()), "{p:?}");
        assert!(p.contains(&"std::process::id".to_owned()), "{p:?}");
    }

    #[test]
    fn an_imported_name_is_expanded_where_it_is_used() {
        let src =
            "use std::time;\nuse std::env as e;\nfn f() { time::Instant::now(); e::var(\"X\"); }";
        let p = paths(src);
        assert!(p.contains(&"std::time::Instant::now".to_owned()), "{p:?}");
        assert!(p.contains(&"std::env::var".to_owned()), "{p:?}");
        let p = paths("use std::time::SystemTime;\nfn f() { SystemTime::now(); }");
        assert!(
            p.contains(&"std::time::SystemTime::now".to_owned()),
            "{p:?}"
        );
    }

    #[test]
    fn fields_methods_and_lone_names_are_not_paths() {
        let p = paths("fn f(s: S) { s.tokio; s.fs::<u8>(); let tokio = 1; Vec::<u8>::new(); }");
        assert!(
            !p.iter()
                .any(|p| p.starts_with("tokio") || p.starts_with("fs")),
            "{p:?}"
        );
        assert!(!p.contains(&"new".to_owned()), "{p:?}");
    }

    #[test]
    fn inline_test_modules_can_be_left_out() {
        let src = "use a::b;\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use c::d;\n    \
                   fn f() { let s = \"}\"; { e::f(); } }\n}\nfn g() { x::y(); }\n";
        let p: Vec<String> = named_paths_outside_tests(src)
            .iter()
            .map(NamedPath::display)
            .collect();
        assert_eq!(p, ["a::b", "x::y"]);
        assert!(paths(src).contains(&"c::d".to_owned()));
    }

    #[test]
    fn lines_are_counted_past_comments_and_strings() {
        let src = "/* a\nb */\nconst S: &str = \"x\ny\";\nuse std::fs;\n";
        let p = named_paths(src);
        assert_eq!(p[0].line, 5);
    }
}
