//! `rules:if` expressions: GitLab's "CI/CD variable expressions".
//!
//! The language, as GitLab documents and implements it (`Gitlab::Ci::Pipeline::Expression`):
//!
//! - Values: `$VAR` (not `${VAR}`, which GitLab rejects too), strings in single or double quotes, `null`, and regular expression
//!   literals `/pattern/flags` (flags `i`, `m`, `s`, `U`).
//! - `==` and `!=` compare two values in either order. An undefined variable equals only another
//!   undefined variable or `null`; a variable set to `""` is not `null` but equals `""`.
//! - `=~` and `!~` match the left value against the right one, unanchored. The right side is a regex
//!   literal or a value; a value of the form `/pattern/flags` is compiled as a regex when the expression
//!   is evaluated. An undefined right side matches nothing (`=~` is false, `!~` is true). A right side
//!   that is not a valid `/regex/` falls back to GitLab's documented quirk: the match succeeds when the
//!   left value is a substring of the right one. An undefined left side is matched as the empty string,
//!   as GitLab does (it matches `value.to_s`).
//! - A bare value, as the whole expression or as an operand of `&&` / `||`, is true when it is defined
//!   and not empty.
//! - `&&` binds tighter than `||`; comparisons bind tighter than both; parentheses group.
//!
//! Limits: GitLab's lexer gives up after 100 attempts, so an expression has at most 99 tokens; parentheses
//! nest at most 64 deep. Parsing is linear in the input and never recurses deeper than the nesting limit.
//!
//! Regexes use RE2 syntax, as in GitLab. They are checked against RE2's grammar and translated for the
//! `regex` crate, so that the RE2-only spellings (`\Q...\E`, `[[]`, a literal `{`, `\p{^Greek}`) work
//! and the Perl classes `\d`, `\w`, `\s` and `\b` stay ASCII-only as in RE2.
//!
//! Where this knowingly differs from GitLab's implementation:
//!
//! - Accepted here, rejected by GitLab: `\"` / `\'` inside strings (GitLab has no escapes).
//! - A bare empty variable is false inside `&&` and `||` too, as documented. GitLab's evaluator treats
//!   `""` as true there (gitlab-org/gitlab#321371).
//! - Rejected here, silently evaluated by GitLab: a regex anywhere but to the right of `=~` / `!~`, and
//!   chained comparisons like `$A == $B == $C`.
//! - RE2 limits not checked: nested repetitions over 1000 in total (`(a{100}){100}`), which the `regex`
//!   crate's size limit catches when they are big enough to matter. `\C` is rejected.

use std::borrow::Cow;

use regex::{Regex, RegexBuilder};

/// The most tokens GitLab's lexer accepts. It makes 100 attempts and fails unless it has reached the
/// end by then, so an expression of exactly 100 tokens is already rejected.
const MAX_TOKENS: usize = 99;

/// The deepest nesting of parentheses. Not reachable within [`MAX_TOKENS`]; a guard for the recursion.
const MAX_DEPTH: usize = 64;

/// The flags GitLab accepts after a regex (`[ismU]*`).
const REGEX_FLAGS: &str = "imsU";

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    root: Node,
}

/// A parse error; `offset` is the byte offset in the source where the problem is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    /// Byte offset in the source where the problem is.
    pub offset: usize,
    /// What is wrong and, where it helps, what was expected.
    pub message: String,
}

fn error(offset: usize, message: impl Into<String>) -> ExprError {
    ExprError {
        offset,
        message: message.into(),
    }
}

/// Parses an expression.
///
/// # Errors
///
/// An [`ExprError`] at the first problem: an unknown token, an invalid regex literal, a missing or
/// misplaced operand, unbalanced parentheses, or more tokens or nesting than GitLab allows.
pub fn parse(src: &str) -> Result<Expr, ExprError> {
    parse_with_limits(src, MAX_TOKENS, MAX_DEPTH)
}

fn parse_with_limits(src: &str, max_tokens: usize, max_depth: usize) -> Result<Expr, ExprError> {
    let tokens = lex(src, max_tokens)?;
    let mut parser = Parser {
        src,
        tokens: tokens.into_iter().peekable(),
        depth: 0,
        max_depth,
    };
    let root = parser.parse_or()?;
    if let Some(token) = parser.tokens.next() {
        return Err(match token.kind {
            Tok::Close => error(token.start, "unmatched `)`: there is no `(` to close"),
            _ => error(
                token.start,
                format!(
                    "expected `&&`, `||` or end of expression, found {}",
                    describe(src, &token)
                ),
            ),
        });
    }
    Ok(Expr { root })
}

impl Expr {
    /// Evaluates with `lookup` giving a variable's value (None = undefined).
    #[must_use]
    pub fn eval(&self, lookup: &dyn Fn(&str) -> Option<String>) -> bool {
        self.root.eval(lookup)
    }

    /// Names of the variables the expression reads (for diagnostics), in order of first appearance,
    /// each once.
    #[must_use]
    pub fn variables(&self) -> Vec<String> {
        let mut names = Vec::new();
        self.root.collect_variables(&mut names);
        names
    }
}

// ---------------------------------------------------------------------------------------------------
// Syntax tree and evaluation

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Or(Vec<Node>),
    And(Vec<Node>),
    /// A bare value: true when defined and not empty.
    Present(Operand),
    Equals {
        lhs: Operand,
        rhs: Operand,
        negated: bool,
    },
    Matches {
        lhs: Operand,
        rhs: MatchRhs,
        negated: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Operand {
    Var(String),
    Str(String),
    Null,
}

#[derive(Clone, Debug, PartialEq)]
enum MatchRhs {
    Regex(RegexLiteral),
    Value(Operand),
}

/// A regex literal, compiled at parse time. Two literals are equal when their sources are.
#[derive(Clone, Debug)]
struct RegexLiteral {
    source: String,
    regex: Regex,
}

impl PartialEq for RegexLiteral {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Operand {
    fn value<'a>(&'a self, lookup: &dyn Fn(&str) -> Option<String>) -> Option<Cow<'a, str>> {
        match self {
            Operand::Var(name) => lookup(name).map(Cow::Owned),
            Operand::Str(s) => Some(Cow::Borrowed(s)),
            Operand::Null => None,
        }
    }
}

impl Node {
    fn eval(&self, lookup: &dyn Fn(&str) -> Option<String>) -> bool {
        match self {
            Node::Or(items) => items.iter().any(|n| n.eval(lookup)),
            Node::And(items) => items.iter().all(|n| n.eval(lookup)),
            Node::Present(value) => value.value(lookup).is_some_and(|v| !v.is_empty()),
            Node::Equals { lhs, rhs, negated } => {
                (lhs.value(lookup) == rhs.value(lookup)) != *negated
            }
            Node::Matches { lhs, rhs, negated } => match matches(lhs, rhs, lookup) {
                Some(found) => found != *negated,
                // GitLab: `=~` is false and `!~` is true when the right side is undefined.
                None => *negated,
            },
        }
    }

    fn collect_variables(&self, names: &mut Vec<String>) {
        let mut add = |operand: &Operand| {
            if let Operand::Var(name) = operand {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        };
        match self {
            Node::Or(items) | Node::And(items) => {
                for item in items {
                    item.collect_variables(names);
                }
            }
            Node::Present(value) => add(value),
            Node::Equals { lhs, rhs, .. } => {
                add(lhs);
                add(rhs);
            }
            Node::Matches { lhs, rhs, .. } => {
                add(lhs);
                if let MatchRhs::Value(value) = rhs {
                    add(value);
                }
            }
        }
    }
}

/// Whether the left value matches the right side; `None` when the right side is undefined.
fn matches(lhs: &Operand, rhs: &MatchRhs, lookup: &dyn Fn(&str) -> Option<String>) -> Option<bool> {
    // GitLab matches `value.to_s`: an undefined left side is the empty string.
    let text = lhs.value(lookup).unwrap_or_default();
    match rhs {
        MatchRhs::Regex(literal) => Some(literal.regex.is_match(&text)),
        MatchRhs::Value(value) => {
            let pattern = value.value(lookup)?;
            Some(match regex_from_value(&pattern) {
                Some(regex) => regex.is_match(&text),
                // Documented GitLab behaviour for a right side that is not a valid `/regex/`: the left
                // side is looked for as a substring of the right side.
                None => pattern.contains(&*text),
            })
        }
    }
}

/// Compiles a value of the form `/pattern/flags`, as GitLab does for the right side of `=~` and `!~`.
fn regex_from_value(value: &str) -> Option<Regex> {
    // GitLab first turns every `\/` into `/`, then matches `^/(.*)/([ismU]*)$`.
    let value = value.replace(r"\/", "/");
    let body = value.strip_prefix('/')?;
    let close = body.rfind('/')?;
    let flags = &body[close + 1..];
    if !flags.chars().all(|f| REGEX_FLAGS.contains(f)) {
        return None;
    }
    compile_regex(&body[..close], flags).ok()
}

/// Compiles an RE2 pattern with GitLab's flags.
fn compile_regex(pattern: &str, flags: &str) -> Result<Regex, String> {
    let translated = re2::translate(pattern)?;
    RegexBuilder::new(&translated)
        .case_insensitive(flags.contains('i'))
        .multi_line(flags.contains('m'))
        .dot_matches_new_line(flags.contains('s'))
        .swap_greed(flags.contains('U'))
        .build()
        .map_err(|e| match e {
            regex::Error::Syntax(text) => text
                .lines()
                .find_map(|line| line.strip_prefix("error: "))
                .unwrap_or("syntax error")
                .trim_end_matches('.')
                .to_string(),
            regex::Error::CompiledTooBig(_) => "the compiled regular expression is too big".into(),
            other => other.to_string().trim_end_matches('.').to_string(),
        })
}

// ---------------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug)]
struct Token {
    kind: Tok,
    start: usize,
    end: usize,
}

#[derive(Debug)]
enum Tok {
    Open,
    Close,
    Var(String),
    Str(String),
    Null,
    Regex(RegexLiteral),
    Op(Op),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Match,
    NotMatch,
    And,
    Or,
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Match => "=~",
            Op::NotMatch => "!~",
            Op::And => "&&",
            Op::Or => "||",
        }
    }

    fn is_comparison(self) -> bool {
        !matches!(self, Op::And | Op::Or)
    }
}

fn lex(src: &str, max_tokens: usize) -> Result<Vec<Token>, ExprError> {
    let bytes = src.as_bytes();
    let mut tokens = Vec::new();
    let mut pos = 0;
    loop {
        // Ruby's `\s`: space, \t, \n, \v, \f, \r.
        while pos < bytes.len() && matches!(bytes[pos], b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
        {
            pos += 1;
        }
        if pos == bytes.len() {
            return Ok(tokens);
        }
        if tokens.len() == max_tokens {
            return Err(error(
                pos,
                format!("expression has too many tokens: GitLab accepts at most {max_tokens}"),
            ));
        }
        let (kind, end) = lex_token(src, pos)?;
        tokens.push(Token {
            kind,
            start: pos,
            end,
        });
        pos = end;
    }
}

fn lex_token(src: &str, start: usize) -> Result<(Tok, usize), ExprError> {
    let rest = &src[start..];
    let first = rest.as_bytes()[0];
    match first {
        b'(' => Ok((Tok::Open, start + 1)),
        b')' => Ok((Tok::Close, start + 1)),
        b'$' => lex_variable(src, start),
        b'"' | b'\'' => lex_string(src, start, char::from(first)),
        b'/' => lex_regex(src, start),
        b'=' | b'!' | b'&' | b'|' => {
            let op = match rest.get(..2) {
                Some("==") => Op::Eq,
                Some("!=") => Op::Ne,
                Some("=~") => Op::Match,
                Some("!~") => Op::NotMatch,
                Some("&&") => Op::And,
                Some("||") => Op::Or,
                _ => {
                    let hint = match first {
                        b'=' => "use `==` to compare or `=~` to match a regular expression",
                        b'!' => "expected `!=` or `!~` (there is no `!` negation)",
                        b'&' => "expected `&&`",
                        _ => "expected `||`",
                    };
                    return Err(error(
                        start,
                        format!("unknown operator `{}`: {hint}", char::from(first)),
                    ));
                }
            };
            Ok((Tok::Op(op), start + 2))
        }
        c if c.is_ascii_alphanumeric() || c == b'_' => {
            let len = name_len(rest);
            let word = &rest[..len];
            if word == "null" {
                Ok((Tok::Null, start + len))
            } else {
                Err(error(
                    start,
                    format!(
                        "unexpected `{}`: strings must be quoted and variable names start with `$`",
                        snippet(word)
                    ),
                ))
            }
        }
        _ => {
            let c = rest.chars().next().unwrap_or_default();
            Err(error(start, format!("unexpected character `{c}`")))
        }
    }
}

/// Length of the `[A-Za-z0-9_]*` run at the start of `s` (Ruby's `\w`, ASCII).
fn name_len(s: &str) -> usize {
    s.bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count()
}

fn lex_variable(src: &str, start: usize) -> Result<(Tok, usize), ExprError> {
    let rest = &src[start + 1..];
    if let Some(inner) = rest.strip_prefix('{') {
        // GitLab's expression lexer knows only `$VAR`; `${VAR}` is a syntax error there, and
        // accepting it would make a pipeline pass here that GitLab rejects.
        let len = name_len(inner);
        let name = if len > 0 && inner[len..].starts_with('}') {
            &inner[..len]
        } else {
            "VAR"
        };
        Err(error(
            start,
            format!("`${{...}}` is not allowed in expressions; write `${name}`"),
        ))
    } else {
        let len = name_len(rest);
        if len == 0 {
            return Err(error(start, "expected a variable name after `$`"));
        }
        Ok((Tok::Var(rest[..len].to_string()), start + 1 + len))
    }
}

/// A quoted string. A backslash escapes the quote character; any other backslash is kept as is.
fn lex_string(src: &str, start: usize, quote: char) -> Result<(Tok, usize), ExprError> {
    let body = &src[start + 1..];
    let mut value = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\\' && chars.peek().is_some_and(|&(_, next)| next == quote) {
            value.push(quote);
            chars.next();
        } else if c == quote {
            return Ok((Tok::Str(value), start + 1 + i + 1));
        } else {
            value.push(c);
        }
    }
    Err(error(
        start,
        format!("unterminated string: expected a closing `{quote}`"),
    ))
}

/// A regex literal, lexed as GitLab does: `\/` is an escaped slash, every other character (a backslash
/// too) stands for itself, and the first other `/` closes the pattern.
fn lex_regex(src: &str, start: usize) -> Result<(Tok, usize), ExprError> {
    let body = &src[start + 1..];
    let mut pattern = String::new();
    let mut raw_len = 0;
    let mut chars = body.char_indices().peekable();
    let close = loop {
        let Some((i, c)) = chars.next() else {
            return Err(error(
                start,
                "unterminated regular expression: expected a closing `/`",
            ));
        };
        match c {
            '/' => break start + 1 + i,
            '\\' if chars.peek().is_some_and(|&(_, next)| next == '/') => {
                chars.next();
                pattern.push('/');
                raw_len += 2;
            }
            c => {
                pattern.push(c);
                raw_len += 1;
            }
        }
    };
    let flags_start = close + 1;
    let flags_len = src[flags_start..]
        .bytes()
        .take_while(u8::is_ascii_alphanumeric)
        .count();
    let flags = &src[flags_start..flags_start + flags_len];
    if let Some((i, f)) = flags
        .char_indices()
        .find(|&(_, f)| !REGEX_FLAGS.contains(f))
    {
        return Err(error(
            flags_start + i,
            format!("unknown regular expression flag `{f}`: GitLab accepts `i`, `m`, `s` and `U`"),
        ));
    }
    let end = flags_start + flags_len;
    let source = &src[start..end];
    // GitLab's lexer wants at least two characters between the slashes.
    match raw_len {
        0 => return Err(error(start, "empty regular expression `//`")),
        1 => {
            return Err(error(
                start,
                format!(
                    "GitLab does not support single-character regular expressions like `{source}`"
                ),
            ));
        }
        _ => {}
    }
    let regex = compile_regex(&pattern, flags).map_err(|message| {
        error(
            start,
            format!(
                "invalid regular expression `{}`: {message}",
                snippet(source)
            ),
        )
    })?;
    Ok((
        Tok::Regex(RegexLiteral {
            source: source.to_string(),
            regex,
        }),
        end,
    ))
}

/// At most 40 characters of `s`, for messages.
fn snippet(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(40) {
        Some((i, _)) => Cow::Owned(format!("{}...", &s[..i])),
        None => Cow::Borrowed(s),
    }
}

fn describe(src: &str, token: &Token) -> String {
    format!("`{}`", snippet(&src[token.start..token.end]))
}

// ---------------------------------------------------------------------------------------------------
// Parser

struct Parser<'a> {
    src: &'a str,
    tokens: std::iter::Peekable<std::vec::IntoIter<Token>>,
    depth: usize,
    max_depth: usize,
}

impl Parser<'_> {
    fn eat_op(&mut self, op: Op) -> bool {
        self.tokens
            .next_if(|t| matches!(t.kind, Tok::Op(o) if o == op))
            .is_some()
    }

    fn parse_or(&mut self) -> Result<Node, ExprError> {
        self.parse_chain(Op::Or, Self::parse_and, Node::Or)
    }

    fn parse_and(&mut self) -> Result<Node, ExprError> {
        self.parse_chain(Op::And, Self::parse_primary, Node::And)
    }

    /// `operand (op operand)*`: the operand alone, or `node` of them all.
    fn parse_chain(
        &mut self,
        op: Op,
        operand: fn(&mut Self) -> Result<Node, ExprError>,
        node: fn(Vec<Node>) -> Node,
    ) -> Result<Node, ExprError> {
        let mut items = vec![operand(self)?];
        while self.eat_op(op) {
            items.push(operand(self)?);
        }
        Ok(if items.len() == 1 {
            items.swap_remove(0)
        } else {
            node(items)
        })
    }

    fn parse_primary(&mut self) -> Result<Node, ExprError> {
        let Some(token) = self.tokens.next() else {
            return Err(error(
                self.src.len(),
                "expected a variable, string, `null` or `(`, found end of expression",
            ));
        };
        match token.kind {
            Tok::Open => {
                if self.depth >= self.max_depth {
                    return Err(error(
                        token.start,
                        format!(
                            "parentheses are nested too deeply (the limit is {})",
                            self.max_depth
                        ),
                    ));
                }
                self.depth += 1;
                let inner = self.parse_or()?;
                self.depth -= 1;
                match self.tokens.next() {
                    Some(Token {
                        kind: Tok::Close, ..
                    }) => Ok(inner),
                    Some(other) => Err(error(
                        other.start,
                        format!(
                            "expected `&&`, `||` or `)` to close the `(` at offset {}, found {}",
                            token.start,
                            describe(self.src, &other)
                        ),
                    )),
                    None => Err(error(
                        self.src.len(),
                        format!(
                            "expected `)` to close the `(` at offset {}, found end of expression",
                            token.start
                        ),
                    )),
                }
            }
            Tok::Var(_) | Tok::Str(_) | Tok::Null => self.parse_comparison(token),
            Tok::Regex(_) => Err(misplaced_regex(token.start)),
            _ => Err(error(
                token.start,
                format!(
                    "expected a variable, string, `null` or `(`, found {}",
                    describe(self.src, &token)
                ),
            )),
        }
    }

    /// A value, alone or compared with another one.
    fn parse_comparison(&mut self, lhs: Token) -> Result<Node, ExprError> {
        let lhs = operand(lhs.kind).unwrap_or(Operand::Null);
        let op = match self.tokens.peek() {
            Some(Token {
                kind: Tok::Op(op), ..
            }) if op.is_comparison() => *op,
            _ => return Ok(Node::Present(lhs)),
        };
        self.tokens.next();
        let rhs = self.tokens.next();
        let expected = match op {
            Op::Match | Op::NotMatch => "a regular expression, variable, string or `null`",
            _ => "a variable, string or `null`",
        };
        let Some(rhs) = rhs else {
            return Err(error(
                self.src.len(),
                format!(
                    "expected {expected} after `{}`, found end of expression",
                    op.text()
                ),
            ));
        };
        let node = match (op, rhs.kind) {
            (Op::Match | Op::NotMatch, Tok::Regex(regex)) => Node::Matches {
                lhs,
                rhs: MatchRhs::Regex(regex),
                negated: op == Op::NotMatch,
            },
            (_, Tok::Regex(_)) => return Err(misplaced_regex(rhs.start)),
            (_, kind @ (Tok::Var(_) | Tok::Str(_) | Tok::Null)) => {
                let rhs = operand(kind).unwrap_or(Operand::Null);
                match op {
                    Op::Match | Op::NotMatch => Node::Matches {
                        lhs,
                        rhs: MatchRhs::Value(rhs),
                        negated: op == Op::NotMatch,
                    },
                    _ => Node::Equals {
                        lhs,
                        rhs,
                        negated: op == Op::Ne,
                    },
                }
            }
            (_, kind) => {
                let token = Token { kind, ..rhs };
                return Err(error(
                    token.start,
                    format!(
                        "expected {expected} after `{}`, found {}",
                        op.text(),
                        describe(self.src, &token)
                    ),
                ));
            }
        };
        if let Some(Token {
            kind: Tok::Op(next),
            start,
            ..
        }) = self.tokens.peek()
        {
            if next.is_comparison() {
                return Err(error(
                    *start,
                    format!(
                        "unexpected `{}`: comparisons cannot be chained, join them with `&&` or `||`",
                        next.text()
                    ),
                ));
            }
        }
        Ok(node)
    }
}

fn operand(kind: Tok) -> Option<Operand> {
    match kind {
        Tok::Var(name) => Some(Operand::Var(name)),
        Tok::Str(value) => Some(Operand::Str(value)),
        Tok::Null => Some(Operand::Null),
        _ => None,
    }
}

fn misplaced_regex(offset: usize) -> ExprError {
    error(
        offset,
        "a regular expression can only be used on the right of `=~` or `!~`",
    )
}

// ---------------------------------------------------------------------------------------------------
// RE2 syntax

/// Checks a pattern against RE2's grammar and rewrites it for the `regex` crate with RE2's meaning.
///
/// Follows RE2's parser (`re2/parse.cc`) with its default, Perl-like flags. Rewritten: `\d`, `\w`, `\s`
/// and `\b` (ASCII-only in RE2), `\Q...\E`, every escaped or class character (written as `\x{..}`, so
/// that `[`, `&&`, `--` and `~~` inside a class mean what they mean in RE2), a `{` that does not start a
/// counted repetition (a literal in RE2), `\p{^Name}`. Rejected as RE2 rejects them: stacked repetition
/// operators (`a**`), counts above 1000, flags other than `imsU`, unknown escapes. Everything else is
/// left for the `regex` crate to check, which agrees with RE2 on it.
mod re2 {
    use std::fmt::Write as _;

    /// RE2's largest counted repetition.
    const MAX_REPEAT: u32 = 1000;

    pub(super) fn translate(pattern: &str) -> Result<String, String> {
        let cs: Vec<char> = pattern.chars().collect();
        let posix_ends = posix_ends(&cs);
        let mut out = String::with_capacity(pattern.len() + 16);
        let mut i = 0;
        // Whether the previous item was a repetition operator: RE2 rejects `a**`, `a+{2}`, ...
        let mut after_repeat = false;
        while i < cs.len() {
            let mut repeat = false;
            match cs[i] {
                '\\' => i = top_level_escape(&cs, i, &mut out)?,
                '[' => i = class(&cs, &posix_ends, i, &mut out)?,
                '(' if cs.get(i + 1) == Some(&'?') => i = group_flags(&cs, i, &mut out)?,
                c @ ('*' | '+' | '?') => {
                    let mut end = i + 1;
                    if cs.get(end) == Some(&'?') {
                        end += 1;
                    }
                    if after_repeat {
                        return Err(stacked(&cs[i..end]));
                    }
                    out.push(c);
                    if end > i + 1 {
                        out.push('?');
                    }
                    i = end;
                    repeat = true;
                }
                '{' => match counted_repetition(&cs, i) {
                    Some((mut end, lo, hi)) => {
                        if lo > MAX_REPEAT || hi.is_some_and(|hi| hi > MAX_REPEAT) {
                            return Err(
                                "bad repetition operator: counts above 1000 are not supported"
                                    .into(),
                            );
                        }
                        if hi.is_some_and(|hi| hi < lo) {
                            return Err(
                                "bad repetition operator: the minimum is above the maximum".into(),
                            );
                        }
                        if cs.get(end) == Some(&'?') {
                            end += 1;
                        }
                        if after_repeat {
                            return Err(stacked(&cs[i..end]));
                        }
                        out.extend(&cs[i..end]);
                        i = end;
                        repeat = true;
                    }
                    None => {
                        out.push_str(r"\{");
                        i += 1;
                    }
                },
                c => {
                    out.push(c);
                    i += 1;
                }
            }
            after_repeat = repeat;
        }
        Ok(out)
    }

    fn stacked(op: &[char]) -> String {
        format!(
            "bad repetition operator `{}`: repetition operators cannot be stacked",
            op.iter().collect::<String>()
        )
    }

    /// `{n}`, `{n,}` or `{n,m}` at `i` (no leading zeros): the index after it, `n` and `m`.
    fn counted_repetition(cs: &[char], i: usize) -> Option<(usize, u32, Option<u32>)> {
        let (lo, mut j) = integer(cs, i + 1)?;
        let hi = if cs.get(j) == Some(&',') {
            j += 1;
            if cs.get(j) == Some(&'}') {
                None
            } else {
                let (hi, next) = integer(cs, j)?;
                j = next;
                Some(hi)
            }
        } else {
            Some(lo)
        };
        (cs.get(j) == Some(&'}')).then_some((j + 1, lo, hi))
    }

    fn integer(cs: &[char], i: usize) -> Option<(u32, usize)> {
        let len = cs[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 || (len > 1 && cs[i] == '0') {
            return None;
        }
        let value = cs[i..i + len].iter().fold(0u32, |n, c| {
            n.saturating_mul(10)
                .saturating_add(c.to_digit(10).unwrap_or(0))
        });
        Some((value, i + len))
    }

    /// `(?flags)`, `(?flags:` and named groups. RE2 knows the flags `i`, `m`, `s` and `U` only.
    fn group_flags(cs: &[char], i: usize, out: &mut String) -> Result<usize, String> {
        let mut j = i + 2;
        if matches!(cs.get(j), Some('P' | '<')) {
            // A named group: the regex crate checks the name.
            out.push_str("(?");
            return Ok(j);
        }
        let mut negated = false;
        let mut saw_flag = false;
        loop {
            match cs.get(j) {
                Some('i' | 'm' | 's' | 'U') => saw_flag = true,
                Some('-') if !negated => {
                    negated = true;
                    saw_flag = false;
                }
                Some(':' | ')') if !negated || saw_flag => break,
                _ => {
                    let end = (j + 1).min(cs.len());
                    return Err(format!(
                        "invalid or unsupported Perl syntax `{}`",
                        cs[i..end].iter().collect::<String>()
                    ));
                }
            }
            j += 1;
        }
        out.extend(&cs[i..j]);
        Ok(j)
    }

    /// An escape outside a class, at `i` (a backslash). Returns the index after it.
    fn top_level_escape(cs: &[char], i: usize, out: &mut String) -> Result<usize, String> {
        let Some(&c) = cs.get(i + 1) else {
            return Err("trailing backslash at end of expression".into());
        };
        match c {
            'b' => out.push_str(r"(?-u:\b)"),
            'B' => out.push_str(r"(?-u:\B)"),
            'A' => out.push_str(r"\A"),
            'z' => out.push_str(r"\z"),
            'Q' => {
                let mut j = i + 2;
                while j < cs.len() {
                    if cs[j] == '\\' && cs.get(j + 1) == Some(&'E') {
                        return Ok(j + 2);
                    }
                    push_literal(out, cs[j]);
                    j += 1;
                }
                return Ok(j);
            }
            'p' | 'P' => return unicode_class(cs, i, out),
            'd' | 'D' | 'w' | 'W' | 's' | 'S' => out.push_str(perl_class(c, false)),
            _ => {
                let (rune, end) = escaped_char(cs, i)?;
                push_literal(out, rune);
                return Ok(end);
            }
        }
        Ok(i + 2)
    }

    /// RE2's Perl classes are ASCII-only; in a class, the positive ones are spliced in as ranges.
    fn perl_class(c: char, in_class: bool) -> &'static str {
        match (c, in_class) {
            ('d', false) => "[0-9]",
            ('d', true) => "0-9",
            ('D', _) => "[^0-9]",
            ('w', false) => "[0-9A-Za-z_]",
            ('w', true) => "0-9A-Za-z_",
            ('W', _) => "[^0-9A-Za-z_]",
            ('s', false) => r"[\t\n\x0C\r ]",
            ('s', true) => r"\t\n\x0C\r ",
            _ => r"[^\t\n\x0C\r ]",
        }
    }

    /// `\pN`, `\p{Name}` and their negations, including `\p{^Name}`, at `i`.
    fn unicode_class(cs: &[char], i: usize, out: &mut String) -> Result<usize, String> {
        let mut negated = cs[i + 1] == 'P';
        let (name, end): (String, usize) = match cs.get(i + 2) {
            None => return Err("missing Unicode class name after `\\p`".into()),
            Some('{') => {
                let Some(len) = cs[i + 3..].iter().position(|c| *c == '}') else {
                    return Err("unclosed Unicode class name: expected `}`".into());
                };
                (cs[i + 3..i + 3 + len].iter().collect(), i + 4 + len)
            }
            Some(&c) => (c.to_string(), i + 3),
        };
        let name = match name.strip_prefix('^') {
            Some(rest) => {
                negated = !negated;
                rest.to_string()
            }
            None => name,
        };
        out.push_str(if negated { r"\P{" } else { r"\p{" });
        out.push_str(&name);
        out.push('}');
        Ok(end)
    }

    /// For each index, the index after the first `:]` starting at or after it (`usize::MAX` if none),
    /// so that looking for the end of a `[:name:]` is constant time.
    fn posix_ends(cs: &[char]) -> Vec<usize> {
        let mut ends = vec![usize::MAX; cs.len() + 1];
        for j in (0..cs.len()).rev() {
            ends[j] = if cs[j] == ':' && cs.get(j + 1) == Some(&']') {
                j + 2
            } else {
                ends[j + 1]
            };
        }
        ends
    }

    /// A character class at `i` (`[`). Returns the index after its `]`.
    fn class(
        cs: &[char],
        posix_ends: &[usize],
        i: usize,
        out: &mut String,
    ) -> Result<usize, String> {
        const MISSING: &str = "missing closing `]` of a character class";
        let mut j = i + 1;
        out.push('[');
        if cs.get(j) == Some(&'^') {
            out.push('^');
            j += 1;
        }
        let mut first = true;
        loop {
            let Some(&c) = cs.get(j) else {
                return Err(MISSING.into());
            };
            if c == ']' && !first {
                out.push(']');
                return Ok(j + 1);
            }
            first = false;
            if c == '[' && cs.get(j + 1) == Some(&':') {
                // `[:alpha:]`, closed by the next `:]` if there is one; the regex crate checks the name.
                let end = posix_ends[j + 2];
                if end != usize::MAX {
                    out.extend(&cs[j..end]);
                    j = end;
                    continue;
                }
            }
            if c == '\\' {
                match cs.get(j + 1) {
                    Some('p' | 'P') => {
                        j = unicode_class(cs, j, out)?;
                        continue;
                    }
                    Some(&p @ ('d' | 'D' | 'w' | 'W' | 's' | 'S')) => {
                        out.push_str(perl_class(p, true));
                        j += 2;
                        continue;
                    }
                    _ => {}
                }
            }
            let (lo, next) = class_char(cs, j)?;
            j = next;
            // `[a-]` means `a` or `-`.
            if cs.get(j) == Some(&'-') && cs.get(j + 1).is_some_and(|c| *c != ']') {
                let (hi, next) = class_char(cs, j + 1)?;
                if hi < lo {
                    return Err(format!("invalid character class range `{lo}-{hi}`"));
                }
                j = next;
                push_literal(out, lo);
                out.push('-');
                push_literal(out, hi);
            } else {
                push_literal(out, lo);
            }
        }
    }

    fn class_char(cs: &[char], i: usize) -> Result<(char, usize), String> {
        match cs.get(i) {
            None => Err("missing closing `]` of a character class".into()),
            Some('\\') => escaped_char(cs, i),
            Some(&c) => Ok((c, i + 1)),
        }
    }

    /// RE2's `ParseEscape`: an escape standing for one character, at `i` (a backslash).
    fn escaped_char(cs: &[char], i: usize) -> Result<(char, usize), String> {
        let bad = |end: usize| {
            let end = end.min(cs.len());
            format!(
                "invalid escape sequence `{}`",
                cs[i..end].iter().collect::<String>()
            )
        };
        let Some(&c) = cs.get(i + 1) else {
            return Err("trailing backslash at end of expression".into());
        };
        let is_octal = |j: usize| cs.get(j).is_some_and(|c| ('0'..='7').contains(c));
        let rune = match c {
            // A single non-zero digit would be a backreference.
            '1'..='7' if !is_octal(i + 2) => return Err(bad(i + 2)),
            '0'..='7' => {
                let mut j = i + 1;
                let mut code = 0;
                while j < i + 4 && is_octal(j) {
                    code = code * 8 + cs[j].to_digit(8).unwrap_or(0);
                    j += 1;
                }
                return char::from_u32(code).map(|r| (r, j)).ok_or_else(|| bad(j));
            }
            'x' => {
                if cs.get(i + 2) == Some(&'{') {
                    let len = cs[i + 3..]
                        .iter()
                        .take_while(|c| c.is_ascii_hexdigit())
                        .count();
                    let end = i + 3 + len;
                    if len == 0 || cs.get(end) != Some(&'}') {
                        return Err(bad(end + 1));
                    }
                    let digits: String = cs[i + 3..end].iter().collect();
                    return u32::from_str_radix(&digits, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .map(|r| (r, end + 1))
                        .ok_or_else(|| bad(end + 1));
                }
                let digits: String = cs.get(i + 2..i + 4).unwrap_or_default().iter().collect();
                if digits.len() != 2 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad(i + 4));
                }
                let code = u32::from_str_radix(&digits, 16).map_err(|_| bad(i + 4))?;
                return char::from_u32(code)
                    .map(|r| (r, i + 4))
                    .ok_or_else(|| bad(i + 4));
            }
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'a' => '\x07',
            'f' => '\x0C',
            'v' => '\x0B',
            // Escaped punctuation (and `_`) stands for itself.
            c if c.is_ascii() && !c.is_ascii_alphanumeric() => c,
            _ => return Err(bad(i + 2)),
        };
        Ok((rune, i + 2))
    }

    /// A character as a literal that means itself anywhere, in or out of a class.
    fn push_literal(out: &mut String, c: char) {
        if c.is_alphanumeric() {
            out.push(c);
        } else {
            let _ = write!(out, "\\x{{{:X}}}", u32::from(c));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Vars<'a> = &'a [(&'a str, &'a str)];

    fn eval(expr: &str, vars: Vars<'_>) -> Result<bool, ExprError> {
        let lookup = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_string())
        };
        Ok(parse(expr)?.eval(&lookup))
    }

    fn check(expr: &str, vars: Vars<'_>, expected: bool) -> Option<String> {
        match eval(expr, vars) {
            Ok(got) if got == expected => None,
            Ok(got) => Some(format!(
                "{expr:?} with {vars:?}: got {got}, expected {expected}"
            )),
            Err(e) => Some(format!(
                "{expr:?}: parse error at {}: {}",
                e.offset, e.message
            )),
        }
    }

    #[rustfmt::skip]
    const CASES: &[(&str, Vars<'static>, bool)] = &[
        // GitLab's documented examples.
        (r#"$CI_PIPELINE_SOURCE == "merge_request_event""#, &[("CI_PIPELINE_SOURCE", "merge_request_event")], true),
        (r#"$CI_PIPELINE_SOURCE == "merge_request_event""#, &[("CI_PIPELINE_SOURCE", "push")], false),
        (r#"$CI_PIPELINE_SOURCE == "schedule""#, &[], false),
        ("$CI_COMMIT_TAG", &[("CI_COMMIT_TAG", "v1.0.0")], true),
        ("$CI_COMMIT_TAG", &[], false),
        ("$CI_COMMIT_TAG", &[("CI_COMMIT_TAG", "")], false),
        (r#"$CI_COMMIT_BRANCH == "main""#, &[("CI_COMMIT_BRANCH", "main")], true),
        (r#"$CI_COMMIT_BRANCH == "main""#, &[("CI_COMMIT_BRANCH", "mainline")], false),
        ("$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH", &[("CI_COMMIT_BRANCH", "main"), ("CI_DEFAULT_BRANCH", "main")], true),
        ("$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH", &[("CI_COMMIT_BRANCH", "dev"), ("CI_DEFAULT_BRANCH", "main")], false),
        ("$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH && $CI_COMMIT_TITLE =~ /Merge branch.*/",
            &[("CI_COMMIT_BRANCH", "main"), ("CI_DEFAULT_BRANCH", "main"), ("CI_COMMIT_TITLE", "Merge branch 'x' into 'main'")], true),
        ("$CI_COMMIT_BRANCH =~ /regex-expression/", &[("CI_COMMIT_BRANCH", "a-regex-expression-b")], true),
        (r#"$VARIABLE != "some value""#, &[("VARIABLE", "other value")], true),
        (r#"$VARIABLE != "some value""#, &[("VARIABLE", "some value")], false),
        ("$VARIABLE_1 != $VARIABLE_2", &[("VARIABLE_1", "a"), ("VARIABLE_2", "b")], true),
        ("$VARIABLE == null", &[], true),
        ("$VARIABLE == null", &[("VARIABLE", "")], false),
        ("$VARIABLE != null", &[("VARIABLE", "")], true),
        ("$VARIABLE != null", &[], false),
        (r#"$VARIABLE == """#, &[("VARIABLE", "")], true),
        (r#"$VARIABLE == """#, &[], false),
        (r#"$VARIABLE != """#, &[], true),
        (r#"$VARIABLE != """#, &[("VARIABLE", "x")], true),
        ("$VARIABLE =~ /^content.*/", &[("VARIABLE", "content-type")], true),
        ("$VARIABLE =~ /^content.*/", &[("VARIABLE", "the content")], false),
        ("$VARIABLE !~ /^content.*/", &[("VARIABLE", "the content")], true),
        ("$CI_COMMIT_MESSAGE =~ /skip-tests/i", &[("CI_COMMIT_MESSAGE", "WIP\n\nPlease SKIP-TESTS")], true),
        ("$CI_COMMIT_MESSAGE =~ /skip-tests/", &[("CI_COMMIT_MESSAGE", "Please SKIP-TESTS")], false),
        ("$CI_COMMIT_BRANCH =~ /issue/", &[("CI_COMMIT_BRANCH", "severe-issues")], true),
        ("$CI_COMMIT_BRANCH =~ /^issue-.*$/", &[("CI_COMMIT_BRANCH", "severe-issues")], false),
        ("$VAR =~ /^feature/", &[("VAR", "feature/login")], true),
        ("$teststring =~ $pattern", &[("teststring", "abcde"), ("pattern", "/^ab.*/")], true),
        ("$teststring =~ $pattern", &[("teststring", "fghij"), ("pattern", "/^ab.*/")], false),
        ("$PATTERN_TARGET !~ $PATTERN", &[("PATTERN_TARGET", "release/1.2"), ("PATTERN", "/^release/")], false),
        // Variables inside a regex are not resolved.
        ("$CI_JOB_NAME =~ /$string1/", &[("CI_JOB_NAME", "regex-job1"), ("string1", "regex-job1")], false),
        ("$CI_JOB_NAME =~ $pattern", &[("CI_JOB_NAME", "regex-job2"), ("string2", "regex-job2"), ("pattern", "/$string2/")], false),
        // A right side that is not a /regex/: the left side is looked for in it (GitLab's troubleshooting
        // section, and the table of gitlab-org/gitlab#426313).
        (r#""23" =~ "1234""#, &[], true),
        ("\"23\" =~ /1234/", &[], false),
        ("$L =~ $R", &[("L", "1234"), ("R", "1234")], true),
        ("$L =~ $R", &[("L", "1234"), ("R", "23")], false),
        ("$L =~ $R", &[("L", "1234"), ("R", "/23/")], true),
        ("$L =~ $R", &[("L", "23"), ("R", "1234")], true),
        ("$L =~ $R", &[("L", "23"), ("R", "23")], true),
        ("$L =~ $R", &[("L", "23"), ("R", "/23/")], true),
        ("$L =~ $R", &[("L", "/23/"), ("R", "1234")], false),
        ("$L =~ $R", &[("L", "/23/"), ("R", "23")], false),
        ("$L =~ $R", &[("L", "/23/"), ("R", "/23/")], true),
        ("$L !~ $R", &[("L", "1234"), ("R", "23")], true),
        ("$L =~ $R", &[("L", "["), ("R", "/[/")], true),
        ("$L =~ $R", &[("L", "x"), ("R", "/[/")], false),
        ("$L =~ $R", &[("L", "cat"), ("R", "/a/")], true),
        ("$L =~ $R", &[("L", "RELEASE-1"), ("R", "/^rel/i")], true),
        ("$L =~ $R", &[("L", "refs/tags/v1"), ("R", r"/^refs\/tags\//")], true),
        ("$L =~ $R", &[("L", "xyz"), ("R", "/^x/g")], false),
        ("$L =~ $R", &[("L", "x"), ("R", "/^x/g")], true),
        (r#"$L =~ "/^x/""#, &[("L", "xyz")], true),
        // Undefined or null operands of =~ and !~.
        ("$A =~ $UNDEFINED", &[("A", "x")], false),
        ("$A !~ $UNDEFINED", &[("A", "x")], true),
        ("$A =~ null", &[("A", "x")], false),
        ("$A !~ null", &[("A", "x")], true),
        ("$UNDEFINED =~ /^v/", &[], false),
        ("$UNDEFINED !~ /^v/", &[], true),
        ("$UNDEFINED =~ /^$/", &[], true),
        ("$CI_COMMIT_TAG =~ /^v*/", &[], true),
        // Joining, precedence, parentheses.
        ("$VAR1 && $VAR2", &[("VAR1", "a"), ("VAR2", "b")], true),
        ("$VAR1 && $VAR2", &[("VAR1", "a")], false),
        ("$VAR1 || $VAR2", &[("VAR2", "b")], true),
        ("$VAR1 || $VAR2", &[("VAR1", ""), ("VAR2", "")], false),
        ("$A || $B && $C", &[("A", "1")], true),
        ("($A || $B) && $C", &[("A", "1")], false),
        ("($A || $B) && $C", &[("B", "1"), ("C", "1")], true),
        ("$A && $B || $C", &[("C", "1")], true),
        ("$A && ($B || $C)", &[("C", "1")], false),
        ("$VARIABLE1 =~ /^content.*/ || $VARIABLE2 =~ /thing$/ && $VARIABLE3", &[("VARIABLE1", "content")], true),
        ("$VARIABLE1 =~ /^content.*/ || $VARIABLE2 =~ /thing$/ && $VARIABLE3", &[("VARIABLE2", "something")], false),
        ("($VARIABLE1 =~ /^content.*/ || $VARIABLE2) && ($VARIABLE3 =~ /thing$/ || $VARIABLE4)", &[("VARIABLE2", "y"), ("VARIABLE4", "y")], true),
        ("($VARIABLE1 =~ /^content.*/ || $VARIABLE2) && ($VARIABLE3 =~ /thing$/ || $VARIABLE4)", &[("VARIABLE2", "y"), ("VARIABLE3", "things")], false),
        (r#"$CI_COMMIT_BRANCH == "my-branch" || (($VARIABLE1 == "thing" || $VARIABLE2 == "thing") && $VARIABLE3)"#, &[("VARIABLE2", "thing"), ("VARIABLE3", "1")], true),
        (r#"($CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH || $CI_COMMIT_BRANCH == "develop") && $MY_VARIABLE"#,
            &[("CI_COMMIT_BRANCH", "develop"), ("CI_DEFAULT_BRANCH", "main"), ("MY_VARIABLE", "1")], true),
        ("((($A)))", &[("A", "1")], true),
        // A bare empty variable is false inside && and || too (gitlab-org/gitlab#321371, #358775).
        (r#"$EMPTY && $B == "x""#, &[("EMPTY", ""), ("B", "x")], false),
        ("$a || $b == '1'", &[("a", ""), ("b", "1")], true),
        // Values and literals.
        (r#""main" == $CI_COMMIT_BRANCH"#, &[("CI_COMMIT_BRANCH", "main")], true),
        (r#""a" == 'a'"#, &[], true),
        (r#""a" != "b""#, &[], true),
        ("null == null", &[], true),
        ("$UNDEFINED_1 == $UNDEFINED_2", &[], true),
        ("null", &[], false),
        (r#""x""#, &[], true),
        (r#""""#, &[], false),
        (r"$V == 'it\'s'", &[("V", "it's")], true),
        (r#"$V == "say \"hi\"""#, &[("V", "say \"hi\"")], true),
        (r#"$V == "C:\dir\"""#, &[("V", "C:\\dir\"")], true),
        (r#"$V == "a'b""#, &[("V", "a'b")], true),
        ("  $A\t==\n'x'  ", &[("A", "x")], true),
        (r#"$A=="x"&&$B!="y""#, &[("A", "x"), ("B", "z")], true),
        // Regex flags.
        ("$V =~ /^MAIN$/i", &[("V", "main")], true),
        ("$V =~ /^second$/m", &[("V", "first\nsecond")], true),
        ("$V =~ /^second$/", &[("V", "first\nsecond")], false),
        ("$V =~ /first.second/s", &[("V", "first\nsecond")], true),
        ("$V =~ /first.second/", &[("V", "first\nsecond")], false),
        ("$V =~ /^a+b$/imsU", &[("V", "AAB")], true),
        ("$V =~ /(?i)^ab$/", &[("V", "AB")], true),
        // RE2 syntax and meaning.
        (r"$REF =~ /^refs\/heads\//", &[("REF", "refs/heads/main")], true),
        (r"$V =~ /a\\/b/", &[("V", "a/b")], true),
        (r"$V =~ /^v\d+\.\d+$/", &[("V", "v1.23")], true),
        (r"$V =~ /^\d+$/", &[("V", "١٢٣")], false),
        (r"$V =~ /^\w+$/", &[("V", "café")], false),
        (r"$V =~ /^\W$/", &[("V", "é")], true),
        (r"$V =~ /\bfoo/", &[("V", "éfoo")], true),
        (r"$V =~ /^[\d\s]+$/", &[("V", "1 2")], true),
        (r"$V =~ /^\Qa.b\E$/", &[("V", "a.b")], true),
        (r"$V =~ /^\Qa.b\E$/", &[("V", "axb")], false),
        ("$V =~ /[[]x/", &[("V", "[x")], true),
        ("$V =~ /a{x}/", &[("V", "a{x}")], true),
        ("$V =~ /^a{2}$/", &[("V", "aa")], true),
        ("$V =~ /[a&&b]/", &[("V", "&")], true),
        ("$V =~ /[+--]/", &[("V", ",")], true),
        ("$V =~ /[]a]/", &[("V", "]")], true),
        ("$V =~ /[^]a]/", &[("V", "]")], false),
        ("$V =~ /[[:digit:]x]/", &[("V", "7")], true),
        (r"$V =~ /^\p{^Greek}+$/", &[("V", "abc")], true),
        (r"$V =~ /^\pL+$/", &[("V", "αβγ")], true),
        (r"$V =~ /^\x41\101\x{42}$/", &[("V", "AAB")], true),
        ("$V =~ /(?P<name>ab)c/", &[("V", "abc")], true),
        ("$V =~ /^é.$/", &[("V", "éx")], true),
    ];

    #[test]
    fn evaluates_table() {
        let failures: Vec<String> = CASES
            .iter()
            .filter_map(|(expr, vars, expected)| check(expr, vars, *expected))
            .collect();
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[rustfmt::skip]
    const ERRORS: &[(&str, usize, &str)] = &[
        ("", 0, "expected a variable, string, `null` or `(`, found end of expression"),
        ("   ", 3, "found end of expression"),
        ("$A ==", 5, "expected a variable, string or `null` after `==`, found end of expression"),
        ("$A =~", 5, "expected a regular expression, variable, string or `null` after `=~`"),
        ("$A == &&", 6, "after `==`, found `&&`"),
        ("($A", 3, "expected `)` to close the `(` at offset 0, found end of expression"),
        ("(($A) && $B", 11, "to close the `(` at offset 0"),
        ("$A)", 2, "unmatched `)`"),
        ("()", 1, "found `)`"),
        ("($A $B)", 4, "expected `&&`, `||` or `)` to close the `(` at offset 0, found `$B`"),
        ("$A $B", 3, "expected `&&`, `||` or end of expression, found `$B`"),
        (r#"$A = "x""#, 3, "unknown operator `=`"),
        ("&&", 0, "expected a variable, string, `null` or `(`, found `&&`"),
        ("$A &&", 5, "found end of expression"),
        ("$A & $B", 3, "unknown operator `&`: expected `&&`"),
        ("$A | $B", 3, "unknown operator `|`: expected `||`"),
        ("!$A", 0, "unknown operator `!`"),
        (r#"$A == $B == "x""#, 9, "comparisons cannot be chained"),
        ("$", 0, "expected a variable name after `$`"),
        ("$-A", 0, "expected a variable name after `$`"),
        ("${A", 0, "`${...}` is not allowed in expressions; write `$VAR`"),
        ("${A} == 'x'", 0, "`${...}` is not allowed in expressions; write `$A`"),
        (r#"$Ä == "x""#, 0, "expected a variable name after `$`"),
        ("main", 0, "unexpected `main`: strings must be quoted"),
        ("$A == main", 6, "strings must be quoted"),
        ("$A == true", 6, "unexpected `true`"),
        (r#"$A == "x" #"#, 10, "unexpected character `#`"),
        (r#"$A == "abc"#, 6, "unterminated string: expected a closing `\"`"),
        ("$A == 'abc", 6, "unterminated string: expected a closing `'`"),
        ("$A =~ /abc", 6, "unterminated regular expression"),
        (r"$A =~ /abc\/", 6, "unterminated regular expression"),
        ("$A =~ /[/", 6, "single-character regular expressions"),
        ("$A =~ /./", 6, "single-character regular expressions like `/./`"),
        ("$A =~ //", 6, "empty regular expression"),
        ("$A =~ /[ab/", 6, "invalid regular expression `/[ab/`: missing closing `]`"),
        ("$A =~ /(ab/", 6, "invalid regular expression `/(ab/`: unclosed group"),
        ("$A =~ /[b-a]/", 6, "invalid character class range `b-a`"),
        ("$A =~ /ab/g", 10, "unknown regular expression flag `g`"),
        ("$A =~ /ab/x", 10, "unknown regular expression flag `x`"),
        ("$A =~ /ab/i2", 11, "unknown regular expression flag `2`"),
        ("$A =~ /a(?=b)/", 6, "invalid or unsupported Perl syntax `(?=`"),
        ("$A =~ /(?x)ab/", 6, "invalid or unsupported Perl syntax `(?x`"),
        ("$A =~ /ab**/", 6, "bad repetition operator `*`"),
        ("$A =~ /ab{2}{3}/", 6, "bad repetition operator `{3}`"),
        ("$A =~ /a{1001}/", 6, "counts above 1000"),
        (r"$A =~ /(a)\1/", 6, r"invalid escape sequence `\1`"),
        (r"$A =~ /ab\q/", 6, r"invalid escape sequence `\q`"),
        (r"$A =~ /ab\/", 6, "unterminated regular expression"),
        (r"$A =~ /a\p{Nope}/", 6, "invalid regular expression"),
        ("$A == /ab/", 6, "a regular expression can only be used on the right of `=~` or `!~`"),
        ("/ab/ =~ $A", 0, "a regular expression can only be used on the right"),
        ("/ab/", 0, "a regular expression can only be used on the right"),
        ("$A =~ (/ab/)", 6, "after `=~`, found `(`"),
    ];

    #[test]
    fn reports_parse_errors() {
        let mut failures = Vec::new();
        for (src, offset, needle) in ERRORS {
            match parse(src) {
                Ok(expr) => failures.push(format!("{src:?}: parsed as {expr:?}")),
                Err(e) => {
                    if e.offset != *offset || !e.message.contains(needle) {
                        failures.push(format!(
                            "{src:?}: got ({}, {:?}), expected ({offset}, ..{needle:?}..)",
                            e.offset, e.message
                        ));
                    }
                    if e.message.ends_with('.') || e.message.contains('\n') {
                        failures.push(format!(
                            "{src:?}: message {:?} is not one clean line",
                            e.message
                        ));
                    }
                    if e.to_string() != e.message {
                        failures.push(format!("{src:?}: Display differs from the message"));
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn limits_tokens_like_gitlab() {
        let ok = format!("$A{}", " && $A".repeat(49));
        assert!(parse(&ok).is_ok(), "99 tokens must parse");
        let too_long = format!("$A{}", " && $A".repeat(50));
        let e = parse(&too_long).unwrap_err();
        assert_eq!(e.offset, 2 + 6 * 49 + 1, "{e:?}");
        assert!(e.message.contains("too many tokens"), "{e:?}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}$A{}", "(".repeat(1000), ")".repeat(1000));
        let e = parse(&deep).unwrap_err();
        assert!(e.message.contains("too many tokens"), "{e:?}");

        // Past the token limit, the nesting limit still holds.
        let e = parse_with_limits(&deep, usize::MAX, MAX_DEPTH).unwrap_err();
        assert_eq!(e.offset, MAX_DEPTH, "{e:?}");
        assert!(e.message.contains("nested too deeply"), "{e:?}");
        let fits = format!("{}$A{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        let expr = parse_with_limits(&fits, usize::MAX, MAX_DEPTH).unwrap();
        assert!(expr.eval(&|_| Some("1".into())));

        // Long flat chains do not nest.
        let long = format!("$A{}", " || $A".repeat(100_000));
        let expr = parse_with_limits(&long, usize::MAX, MAX_DEPTH).unwrap();
        assert!(!expr.eval(&|_| None));
    }

    #[test]
    fn large_inputs_stay_linear() {
        // Each `[:` would otherwise rescan the rest of the pattern for its `:]`.
        let src = format!("$A =~ /{}/", "[[:a".repeat(50_000));
        assert!(parse(&src).is_err());
        let src = format!("$A =~ /^{}$/", "[[:alpha:]]".repeat(2_000));
        let expr = parse(&src).unwrap();
        assert!(expr.eval(&|_| Some("x".repeat(2_000))));
        let src = format!("$A == \"{}\"", "x".repeat(1_000_000));
        assert!(!parse(&src).unwrap().eval(&|_| None));
    }

    #[test]
    fn lists_variables_once_in_order() {
        let expr = parse(r#"$A == $B || ($C =~ $D && $A && $E =~ /x$F/) || "s" != null"#).unwrap();
        assert_eq!(expr.variables(), ["A", "B", "C", "D", "E"]);
        assert!(parse("null").unwrap().variables().is_empty());
    }

    #[test]
    fn compares_by_source() {
        assert_eq!(
            parse("$A =~ /x+/i").unwrap(),
            parse(" $A  =~  /x+/i ").unwrap()
        );
        assert_ne!(parse("$A =~ /x+/i").unwrap(), parse("$A =~ /x+/").unwrap());
        assert_eq!(parse("$A == 'x'").unwrap(), parse(r#"$A == "x""#).unwrap());
        assert_ne!(parse("$A == $B").unwrap(), parse("$A != $B").unwrap());
    }

    #[test]
    fn reads_each_variable_through_lookup() {
        let expr = parse(r#"$A == "1" && $B"#).unwrap();
        let seen = std::cell::RefCell::new(Vec::new());
        let lookup = |name: &str| {
            seen.borrow_mut().push(name.to_string());
            Some("1".to_string())
        };
        assert!(expr.eval(&lookup));
        assert_eq!(*seen.borrow(), ["A", "B"]);
    }

    #[test]
    fn never_panics_on_short_inputs() {
        const ALPHABET: [&str; 16] = [
            "$", "A", "\"", "'", "/", "\\", "(", ")", "=", "~", "!", "&", "|", " ", "[", "é",
        ];
        let lookup = |name: &str| (name == "A").then(|| "/[a/".to_string());
        let mut inputs = vec![String::new()];
        for _ in 0..4 {
            let next: Vec<String> = inputs
                .iter()
                .flat_map(|s| ALPHABET.iter().map(move |c| format!("{s}{c}")))
                .collect();
            for src in &next {
                match parse(src) {
                    Ok(expr) => {
                        let _ = expr.eval(&lookup);
                        let _ = expr.variables();
                    }
                    Err(e) => assert!(e.offset <= src.len(), "{src:?}: {e:?}"),
                }
            }
            inputs = next;
        }
    }
}
