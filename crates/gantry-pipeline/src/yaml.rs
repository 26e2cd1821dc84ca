//! A YAML tree that remembers where every node came from.
//!
//! Built from `saphyr-parser` events so that lint messages can point at a line and column, and so that
//! GitLab's YAML dialect is handled exactly: aliases are expanded, `<<` merge keys are applied (explicit
//! keys win), a repeated key keeps its last value (and is reported), and local tags such as
//! `!reference` are kept on the node for the compiler to resolve.
//!
//! Aliases are expanded within a node budget, against alias bombs. Where libyaml (GitLab's parser)
//! is laxer than the YAML spec that `saphyr-parser` follows (a line of a flow collection left of its
//! key, such as a `]` under `- KEY: [`; a quoted scalar continued left of its quote), the refused
//! lines are re-indented and the file parsed again, only after such an error; positions are shifted
//! back, so they stay those of the file.

use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A position in a source file: 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// Index of the file in the compiler's file table.
    pub file: u32,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub col: u32,
}

/// A YAML node with its position and optional local tag (for example `reference` for `!reference`).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where the node starts.
    pub pos: Pos,
    /// A local tag without its leading `!`, such as `reference`.
    pub tag: Option<Box<str>>,
}

/// The value of a [`Node`].
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `null`, `~` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string; quoted scalars are always strings.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order, with unique keys.
    Map(Map),
}

/// A mapping in source order. Keys are unique: a repeated key keeps its last value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Map {
    /// The entries.
    pub entries: Vec<Entry>,
}

/// One key of a [`Map`].
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The key, as a string.
    pub key: String,
    /// Where the key is.
    pub key_pos: Pos,
    /// The value.
    pub value: Node,
}

impl Map {
    /// The value of `key`, if any.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries.iter().find(|e| e.key == key).map(|e| &e.value)
    }
    /// The entry of `key`, if any.
    #[must_use]
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }
    /// A mutable reference to the value of `key`.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.entries
            .iter_mut()
            .find(|e| e.key == key)
            .map(|e| &mut e.value)
    }
    /// Sets `key`, replacing its value in place or appending it.
    pub fn insert(&mut self, key: String, key_pos: Pos, value: Node) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.key == key) {
            e.value = value;
            e.key_pos = key_pos;
        } else {
            self.entries.push(Entry {
                key,
                key_pos,
                value,
            });
        }
    }
    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Node> {
        let i = self.entries.iter().position(|e| e.key == key)?;
        Some(self.entries.remove(i).value)
    }
    /// Whether the map has `key`.
    #[must_use]
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

impl Node {
    /// A node with no position (made by the compiler rather than read from a file).
    #[must_use]
    pub fn new(value: Value, pos: Pos) -> Node {
        Node {
            value,
            pos,
            tag: None,
        }
    }
    /// A string node.
    #[must_use]
    pub fn str(s: impl Into<String>, pos: Pos) -> Node {
        Node::new(Value::Str(s.into()), pos)
    }
    /// The map, if this is one.
    #[must_use]
    pub fn as_map(&self) -> Option<&Map> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }
    /// The mutable map, if this is one.
    pub fn as_map_mut(&mut self) -> Option<&mut Map> {
        match &mut self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }
    /// The sequence, if this is one.
    #[must_use]
    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }
    /// The string, if this is one.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// Whether this is null.
    #[must_use]
    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }
    /// A scalar rendered as GitLab renders it into a string (`true`, `1`, `1.5`); `None` for collections.
    #[must_use]
    pub fn scalar_string(&self) -> Option<String> {
        match &self.value {
            Value::Null => Some(String::new()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Str(s) => Some(s.clone()),
            Value::Seq(_) | Value::Map(_) => None,
        }
    }
    /// A short name of the node's type, for messages.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) | Value::Float(_) => "number",
            Value::Str(_) => "string",
            Value::Seq(_) => "array",
            Value::Map(_) => "mapping",
        }
    }
}

/// An error from reading YAML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YamlError {
    /// Where it is.
    pub pos: Pos,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.pos.line, self.pos.col, self.message)
    }
}

/// A repeated key, reported as a warning (the last value wins, as in GitLab).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateKey {
    /// The repeated key.
    pub key: String,
    /// Where the later occurrence is.
    pub pos: Pos,
}

/// The documents of one file.
#[derive(Clone, Debug, Default)]
pub struct Documents {
    /// Every document in the stream, in order.
    pub docs: Vec<Node>,
    /// Keys that appeared twice in one mapping.
    pub duplicates: Vec<DuplicateKey>,
}

/// The deepest nesting accepted; deeper input is an error rather than a stack overflow.
const MAX_DEPTH: usize = 256;
/// The most nodes that alias expansion may produce; guards against "billion laughs".
const MAX_NODES: usize = 2_000_000;

/// `s` in double quotes, with `"`, `\`, newline, tab and carriage return escaped as YAML and
/// Ruby's `inspect` both write them; `other` writes every other character.
pub(crate) fn double_quoted(s: &str, mut other: impl FnMut(&mut String, char)) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => other(&mut out, c),
        }
    }
    out.push('"');
    out
}

/// Reads every document of `src`. `file` is the file's index, stored in every [`Pos`].
///
/// # Errors
/// Malformed YAML, an unknown alias, a merge key whose value is not a mapping, or input that is too deep
/// or expands to too many nodes.
pub fn parse(src: &str, file: u32) -> Result<Documents, YamlError> {
    match parse_exact(src, file) {
        Err(e) if e.message.contains("indentation") => parse_reindented(src, file, e),
        r => r,
    }
}

/// The most lines re-indented in one file before giving up.
const MAX_REINDENTED: usize = 1_000;

/// GitLab's parser (libyaml) does not check indentation inside a flow collection or a quoted scalar,
/// so a `]` or an entry written left of its key, or a quoted scalar continued left of where it
/// starts, is accepted there; `saphyr-parser` follows the YAML spec and refuses them. So, and only
/// after such an error, the refused lines are indented: a line inside a flow collection to the
/// collection's opening bracket, a quoted scalar's continuation lines to its opening quote. That
/// changes no value (leading white space of such lines is not content), and positions on those
/// lines are shifted back to the file as written. Other indentation errors are reported as they are.
fn parse_reindented(src: &str, file: u32, first: YamlError) -> Result<Documents, YamlError> {
    let mut lines: Vec<String> = src.split('\n').map(str::to_string).collect();
    // Spaces added at the start of each line (by 0-based line index).
    let mut added = vec![0u32; lines.len()];
    let mut err = first;
    for _ in 0..MAX_REINDENTED {
        let line = err.pos.line as usize;
        if line == 0 || line > lines.len() || !err.message.contains("indentation") {
            break;
        }
        let l = line - 1;
        let (range, col) = if err.message.contains("quoted scalar") {
            // Refused where the scalar starts: indent its continuation lines.
            let col = (err.pos.col as usize).saturating_sub(1);
            let Some(end) = quoted_end_line(&lines, l, col) else {
                break;
            };
            (l + 1..=end, col)
        } else {
            let prefix = lines[..l].iter().fold(String::new(), |mut p, x| {
                p.push_str(x);
                p.push('\n');
                p
            });
            let Some(col) = open_flow_column(&prefix) else {
                break;
            };
            (l..=l, col)
        };
        let mut changed = false;
        for i in range {
            let text = &mut lines[i];
            let indent = text.chars().take_while(|c| matches!(c, ' ' | '\t')).count();
            if text.trim().is_empty() || indent >= col {
                continue;
            }
            text.insert_str(0, &" ".repeat(col - indent));
            added[i] += to_u32(col - indent);
            changed = true;
        }
        if !changed {
            break;
        }
        match parse_exact(&lines.join("\n"), file) {
            Ok(mut docs) => {
                for d in &mut docs.docs {
                    unshift(d, &added);
                }
                for d in &mut docs.duplicates {
                    d.pos = shifted(d.pos, &added);
                }
                return Ok(docs);
            }
            Err(e) => err = e,
        }
    }
    err.pos = shifted(err.pos, &added);
    Err(err)
}

/// The 0-based index of the line where the quoted scalar that starts at `line`, `col` ends.
fn quoted_end_line(lines: &[String], line: usize, col: usize) -> Option<usize> {
    let mut chars: Vec<char> = lines.get(line)?.chars().collect();
    let quote = *chars.get(col).filter(|c| matches!(c, '\'' | '"'))?;
    let (mut i, mut j) = (line, col + 1);
    loop {
        while j < chars.len() {
            match chars[j] {
                '\\' if quote == '"' => j += 2,
                '\'' if quote == '\'' && chars.get(j + 1) == Some(&'\'') => j += 2,
                c if c == quote => return Some(i),
                _ => j += 1,
            }
        }
        i += 1;
        j = 0;
        chars = lines.get(i)?.chars().collect();
    }
}

/// The 0-based column of the outermost flow collection still open at the end of `prefix`.
fn open_flow_column(prefix: &str) -> Option<usize> {
    let chars: Vec<Vec<char>> = prefix.split('\n').map(|l| l.chars().collect()).collect();
    // A flow collection's start event spans its anchor and tag, and ends after its bracket.
    let bracket = |span: &Span, b: char| {
        let col = span.end.col().checked_sub(1)?;
        let line = chars.get(span.end.line().checked_sub(1)?)?;
        (line.get(col) == Some(&b)).then_some(col)
    };
    // Each open collection: the column of its flow bracket, or `None` for a block collection.
    let mut open: Vec<Option<usize>> = Vec::new();
    for ev in Parser::new_from_str(prefix) {
        let Ok((ev, span)) = ev else { break };
        match ev {
            Event::SequenceStart(..) => open.push(bracket(&span, '[')),
            Event::MappingStart(..) => open.push(bracket(&span, '{')),
            Event::SequenceEnd | Event::MappingEnd => {
                open.pop();
            }
            _ => {}
        }
    }
    open.into_iter().flatten().next()
}

fn shifted(mut pos: Pos, added: &[u32]) -> Pos {
    let pad = added
        .get((pos.line as usize).wrapping_sub(1))
        .copied()
        .unwrap_or(0);
    pos.col = pos.col.saturating_sub(pad).max(1);
    pos
}

fn unshift(n: &mut Node, added: &[u32]) {
    n.pos = shifted(n.pos, added);
    match &mut n.value {
        Value::Seq(items) => items.iter_mut().for_each(|i| unshift(i, added)),
        Value::Map(m) => {
            for e in &mut m.entries {
                e.key_pos = shifted(e.key_pos, added);
                unshift(&mut e.value, added);
            }
        }
        _ => {}
    }
}

fn parse_exact(src: &str, file: u32) -> Result<Documents, YamlError> {
    let mut b = Builder {
        file,
        anchors: Vec::new(),
        stack: Vec::new(),
        out: Documents::default(),
        nodes: 0,
        plain: false,
    };
    for ev in Parser::new_from_str(src) {
        let (ev, span) = ev.map_err(|e| YamlError {
            pos: Pos {
                file,
                line: to_u32(e.marker().line()),
                col: to_u32(e.marker().col() + 1),
            },
            message: e.info().to_string(),
        })?;
        b.event(ev, span)?;
    }
    Ok(b.out)
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

enum Frame {
    Seq {
        node: Node,
        anchor: usize,
    },
    Map {
        node: Node,
        anchor: usize,
        /// The pending key, and whether it is a merge key (a plain, untagged `<<`).
        key: Option<(String, Pos, bool)>,
        merges: Vec<(Node, Pos)>,
        index: std::collections::HashMap<String, usize>,
    },
}

struct Builder {
    file: u32,
    anchors: Vec<(usize, Node)>,
    stack: Vec<Frame>,
    out: Documents,
    nodes: usize,
    /// Whether the scalar being pushed was plain (unquoted): only a plain `<<` is a merge key.
    plain: bool,
}

impl Builder {
    fn pos(&self, span: Span) -> Pos {
        Pos {
            file: self.file,
            line: to_u32(span.start.line()),
            col: to_u32(span.start.col() + 1),
        }
    }

    fn event(&mut self, ev: Event<'_>, span: Span) -> Result<(), YamlError> {
        let pos = self.pos(span);
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let tag = tag.and_then(|t| local_tag(&t.handle, &t.suffix));
                let value = if style == ScalarStyle::Plain && tag.is_none() {
                    resolve_plain(&text)
                } else {
                    Value::Str(text.into_owned())
                };
                self.plain = style == ScalarStyle::Plain && tag.is_none();
                let node = Node { value, pos, tag };
                self.push(node, anchor)?;
                self.plain = false;
            }
            Event::Alias(id) => {
                let node = self
                    .anchors
                    .iter()
                    .rev()
                    .find(|(a, _)| *a == id)
                    .map(|(_, n)| n.clone())
                    .ok_or_else(|| YamlError {
                        pos,
                        message: "unknown alias".into(),
                    })?;
                self.nodes += count(&node);
                if self.nodes > MAX_NODES {
                    return Err(YamlError {
                        pos,
                        message: "aliases expand to too many nodes".into(),
                    });
                }
                self.push(node, 0)?;
            }
            Event::SequenceStart(anchor, tag) => {
                let tag = tag.and_then(|t| local_tag(&t.handle, &t.suffix));
                let node = self.open(Value::Seq(Vec::new()), pos, tag)?;
                self.stack.push(Frame::Seq { node, anchor });
            }
            Event::MappingStart(anchor, tag) => {
                let tag = tag.and_then(|t| local_tag(&t.handle, &t.suffix));
                let node = self.open(Value::Map(Map::default()), pos, tag)?;
                self.stack.push(Frame::Map {
                    node,
                    anchor,
                    key: None,
                    merges: Vec::new(),
                    index: std::collections::HashMap::new(),
                });
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { node, anchor }) = self.stack.pop() {
                    self.push(node, anchor)?;
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    mut node,
                    anchor,
                    merges,
                    ..
                }) = self.stack.pop()
                {
                    apply_merges(&mut node, merges)?;
                    self.push(node, anchor)?;
                }
            }
            Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd
            | Event::Nothing => {}
        }
        Ok(())
    }

    /// The node a sequence or mapping starts as: `value`, still empty, unless it nests too deep.
    fn open(&self, value: Value, pos: Pos, tag: Option<Box<str>>) -> Result<Node, YamlError> {
        self.depth_check(pos)?;
        Ok(Node { value, pos, tag })
    }

    fn depth_check(&self, pos: Pos) -> Result<(), YamlError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(YamlError {
                pos,
                message: format!("nesting deeper than {MAX_DEPTH} levels"),
            });
        }
        Ok(())
    }

    fn push(&mut self, node: Node, anchor: usize) -> Result<(), YamlError> {
        self.nodes += 1;
        if anchor != 0 {
            self.anchors.push((anchor, node.clone()));
        }
        match self.stack.last_mut() {
            None => self.out.docs.push(node),
            Some(Frame::Seq { node: seq, .. }) => {
                if let Value::Seq(items) = &mut seq.value {
                    items.push(node);
                }
            }
            Some(Frame::Map {
                node: map,
                key,
                merges,
                index,
                ..
            }) => match key.take() {
                None => {
                    let k = match &node.value {
                        Value::Seq(_) | Value::Map(_) => {
                            return Err(YamlError {
                                pos: node.pos,
                                message: "a mapping key must be a scalar".into(),
                            });
                        }
                        _ => node.scalar_string().unwrap_or_default(),
                    };
                    let merge = k == "<<" && self.plain;
                    *key = Some((k, node.pos, merge));
                }
                Some((k, kpos, merge)) => {
                    if merge && node.tag.is_none() {
                        merges.push((node, kpos));
                    } else if let Value::Map(m) = &mut map.value {
                        const LINEAR: usize = 16;
                        let found = if m.entries.len() < LINEAR {
                            m.entries.iter().position(|e| e.key == k)
                        } else {
                            if index.is_empty() {
                                index.extend(
                                    m.entries
                                        .iter()
                                        .enumerate()
                                        .map(|(i, e)| (e.key.clone(), i)),
                                );
                            }
                            index.get(&k).copied()
                        };
                        match found {
                            Some(i) => {
                                self.out.duplicates.push(DuplicateKey {
                                    key: k.clone(),
                                    pos: kpos,
                                });
                                m.entries[i].key_pos = kpos;
                                m.entries[i].value = node;
                            }
                            None => {
                                if !index.is_empty() {
                                    index.insert(k.clone(), m.entries.len());
                                }
                                m.entries.push(Entry {
                                    key: k,
                                    key_pos: kpos,
                                    value: node,
                                });
                            }
                        }
                    }
                }
            },
        }
        Ok(())
    }
}

/// Applies `<<` merge keys: keys written in the mapping itself win, then earlier merge sources win over
/// later ones, as YAML 1.1's merge key type specifies.
fn apply_merges(node: &mut Node, merges: Vec<(Node, Pos)>) -> Result<(), YamlError> {
    let Value::Map(map) = &mut node.value else {
        return Ok(());
    };
    for (src, pos) in merges {
        let sources: Vec<Node> = match src.value {
            Value::Map(_) => vec![src],
            Value::Seq(items) => items,
            Value::Null => Vec::new(),
            _ => {
                return Err(YamlError {
                    pos,
                    message: "the value of a `<<` merge key must be a mapping".into(),
                });
            }
        };
        for s in sources {
            let Value::Map(m) = s.value else {
                return Err(YamlError {
                    pos,
                    message: "the value of a `<<` merge key must be a mapping".into(),
                });
            };
            for e in m.entries {
                if !map.contains(&e.key) {
                    map.entries.push(e);
                }
            }
        }
    }
    Ok(())
}

fn count(n: &Node) -> usize {
    match &n.value {
        Value::Seq(s) => 1 + s.iter().map(count).sum::<usize>(),
        Value::Map(m) => 1 + m.entries.iter().map(|e| 1 + count(&e.value)).sum::<usize>(),
        _ => 1,
    }
}

fn local_tag(handle: &str, suffix: &str) -> Option<Box<str>> {
    if handle == "!" {
        Some(suffix.into())
    } else {
        None
    }
}

/// Resolves a plain scalar by the YAML 1.2 core schema (what GitLab's parser does for the common cases).
fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let b = s.as_bytes();
    let digits = |t: &[u8]| !t.is_empty() && t.iter().all(u8::is_ascii_digit);
    let unsigned = b
        .strip_prefix(b"-")
        .or_else(|| b.strip_prefix(b"+"))
        .unwrap_or(b);
    if digits(unsigned) {
        if let Ok(i) = s.parse::<i64>() {
            return Value::Int(i);
        }
    }
    if let Some(h) = s.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(h, 16) {
            return Value::Int(i);
        }
    }
    if let Some(o) = s.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(o, 8) {
            return Value::Int(i);
        }
    }
    let looks_float = unsigned.iter().any(u8::is_ascii_digit)
        && unsigned
            .iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'-' | b'+'))
        && (unsigned
            .first()
            .is_some_and(|c| c.is_ascii_digit() || *c == b'.'));
    if looks_float {
        if let Ok(f) = s.parse::<f64>() {
            return Value::Float(f);
        }
    }
    match s {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => Value::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => Value::Float(f64::NAN),
        _ => Value::Str(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(src: &str) -> Node {
        parse(src, 0).unwrap().docs.remove(0)
    }

    #[test]
    fn positions_are_one_based() {
        let n = doc("a:\n  b: 1\n");
        let a = n.as_map().unwrap().entry("a").unwrap();
        assert_eq!((a.key_pos.line, a.key_pos.col), (1, 1));
        let b = a.value.as_map().unwrap().entry("b").unwrap();
        assert_eq!((b.key_pos.line, b.key_pos.col), (2, 3));
    }

    #[test]
    fn merge_keys_explicit_keys_win() {
        let n = doc("x: &x {a: 1, b: 2}\ny:\n  b: 3\n  <<: *x\n");
        let y = n.as_map().unwrap().get("y").unwrap().as_map().unwrap();
        assert_eq!(y.get("a").unwrap().value, Value::Int(1));
        assert_eq!(y.get("b").unwrap().value, Value::Int(3));
    }

    #[test]
    fn only_a_plain_merge_key_merges() {
        let n = doc("x: &x {a: 1}\ny:\n  '<<': *x\nz:\n  <<: *x\n");
        let m = n.as_map().unwrap();
        assert!(m.get("y").unwrap().as_map().unwrap().get("<<").is_some());
        assert!(m.get("z").unwrap().as_map().unwrap().get("a").is_some());
    }

    #[test]
    fn duplicate_key_last_wins_and_is_reported() {
        let d = parse("a: 1\na: 2\n", 0).unwrap();
        assert_eq!(
            d.docs[0].as_map().unwrap().get("a").unwrap().value,
            Value::Int(2)
        );
        assert_eq!(
            d.duplicates,
            vec![DuplicateKey {
                key: "a".into(),
                pos: Pos {
                    file: 0,
                    line: 2,
                    col: 1
                }
            }]
        );
    }

    #[test]
    fn local_tags_are_kept() {
        let n = doc("a: !reference [.x, script]\n");
        assert_eq!(
            n.as_map().unwrap().get("a").unwrap().tag.as_deref(),
            Some("reference")
        );
    }

    #[test]
    fn quoted_scalars_stay_strings() {
        let n = doc("a: '1'\nb: 1\nc: true\nd: ~\n");
        let m = n.as_map().unwrap();
        assert_eq!(m.get("a").unwrap().value, Value::Str("1".into()));
        assert_eq!(m.get("b").unwrap().value, Value::Int(1));
        assert_eq!(m.get("c").unwrap().value, Value::Bool(true));
        assert!(m.get("d").unwrap().is_null());
    }

    #[test]
    fn malformed_yaml_is_an_error_with_a_position() {
        let e = parse("a: [1, 2\nb: 3\n", 0).unwrap_err();
        assert!(e.pos.line >= 1, "{e:?}");
    }

    /// mbroz/cryptsetup: a flow sequence closed left of its key, which libyaml (GitLab) accepts.
    const FLOW_CLOSED_LEFT: &str = "job:\n  script: [echo $A]\n  parallel:\n    matrix:\n      - A: [\n          \"x\",\n          \"y\"\n      ]\n    other: 1\n";

    #[test]
    fn a_flow_collection_closed_at_a_lower_indentation_is_read_as_libyaml_reads_it() {
        let n = doc(FLOW_CLOSED_LEFT);
        let job = n.as_map().unwrap().get("job").unwrap().as_map().unwrap();
        let parallel = job.get("parallel").unwrap().as_map().unwrap();
        let entry = &parallel.get("matrix").unwrap().as_seq().unwrap()[0];
        let a = entry.as_map().unwrap().get("A").unwrap();
        let items: Vec<(&str, u32, u32)> = a
            .as_seq()
            .unwrap()
            .iter()
            .map(|i| (i.as_str().unwrap(), i.pos.line, i.pos.col))
            .collect();
        // Positions stay those of the file as written.
        assert_eq!(items, [("x", 6, 11), ("y", 7, 11)]);
        assert_eq!((a.pos.line, a.pos.col), (5, 12));
        let other = parallel.entry("other").unwrap();
        assert_eq!((other.key_pos.line, other.key_pos.col), (9, 5));
    }

    #[test]
    fn flow_continuation_lines_left_of_their_key_are_read_and_keep_their_columns() {
        // Entries, a quoted scalar's continuation and the closing bracket all left of the key.
        let src = "a:\n  b: {k: [1,\n 2], q: \"one\n two\",\n  z: 3\n }\n  c: 4\n";
        let n = doc(src);
        let b = n.as_map().unwrap().get("a").unwrap().as_map().unwrap();
        let inner = b.get("b").unwrap().as_map().unwrap();
        let k = inner.get("k").unwrap().as_seq().unwrap();
        assert_eq!(
            (k[1].value.clone(), k[1].pos.line, k[1].pos.col),
            (Value::Int(2), 3, 2)
        );
        assert_eq!(inner.get("q").unwrap().as_str(), Some("one two"));
        let z = inner.entry("z").unwrap();
        assert_eq!((z.key_pos.line, z.key_pos.col), (5, 3));
        assert_eq!(b.get("c").unwrap().value, Value::Int(4));
    }

    #[test]
    fn a_flow_collection_with_an_anchor_and_a_tag_is_read_when_closed_left() {
        let n = doc("x: &a !t [\n1]\ny: *a\n");
        let y = n.as_map().unwrap().get("y").unwrap();
        assert_eq!(y.as_seq().unwrap()[0].value, Value::Int(1));
        assert_eq!(
            (
                y.as_seq().unwrap()[0].pos.line,
                y.as_seq().unwrap()[0].pos.col
            ),
            (2, 1)
        );
    }

    #[test]
    fn a_quoted_scalar_continued_left_of_where_it_starts_is_read_as_libyaml_reads_it() {
        let src =
            "job:\n  script:\n    - 'echo ''a''\n  b'\n    - \"echo \\\"c\\\"\n\n  d\"\n  x: 1\n";
        let n = doc(src);
        let job = n.as_map().unwrap().get("job").unwrap().as_map().unwrap();
        let script: Vec<&str> = job
            .get("script")
            .unwrap()
            .as_seq()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(script, ["echo 'a' b", "echo \"c\"\nd"]);
        let x = job.entry("x").unwrap();
        assert_eq!((x.key_pos.line, x.key_pos.col), (8, 3));
    }

    #[test]
    fn bad_indentation_outside_flow_collections_is_still_an_error_at_its_position() {
        for (src, line, col) in [
            ("a:\n  - [1,\n    2]\n - 3\n", 4, 2),
            ("x: [1,\n 2]\na:\n  - [1,\n    2]\n - 3\n", 6, 2),
            ("a: [1,\n 2]\n b: 3\n", 3, 2),
        ] {
            let e = parse(src, 0).unwrap_err();
            assert_eq!((e.pos.line, e.pos.col), (line, col), "{src:?}: {e:?}");
        }
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            src.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
        }
        assert!(parse(&src, 0).unwrap_err().message.contains("too many"));
    }
}
