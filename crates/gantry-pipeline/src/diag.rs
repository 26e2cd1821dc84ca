//! Diagnostics: every problem the compiler finds, with the file, line and column it points at.
//!
//! Once an include could not be read, errors its content could have prevented (`Diags::follow_on`: a
//! job without `script`, an unknown `extends`/`!reference` target, stage or needed job) are dropped,
//! so that the include's own error is the one reported.

use std::fmt;

use serde::Serialize;

use crate::yaml::Pos;

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The pipeline cannot run.
    Error,
    /// The pipeline runs, but something is probably wrong.
    Warning,
}

/// One problem, located in a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file, relative to the project directory.
    pub file: String,
    /// 1-based line (0 when the problem has no place in a file).
    pub line: u32,
    /// 1-based column (0 when the problem has no place in a file).
    pub column: u32,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, without a trailing dot.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        if self.line == 0 {
            write!(f, "{}: {sev}{}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {sev}{}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// Collects diagnostics while compiling; maps file indices in [`Pos`] back to names.
#[derive(Debug, Default)]
pub struct Diags {
    /// The file table: `Pos::file` indexes it.
    pub files: Vec<String>,
    /// What has been found so far.
    pub list: Vec<Diagnostic>,
    /// An include could not be read: errors that its content could have prevented (a job without
    /// `script`, an unknown `extends` or `!reference` target, stage or needed job) are not reported,
    /// as they would only repeat the include's own error.
    pub incomplete: bool,
}

impl Diags {
    /// Registers a file and returns its index.
    pub fn add_file(&mut self, name: &str) -> u32 {
        if let Some(i) = self.files.iter().position(|f| f == name) {
            return u32::try_from(i).unwrap_or(0);
        }
        self.files.push(name.to_string());
        u32::try_from(self.files.len() - 1).unwrap_or(0)
    }

    fn make(&self, pos: Pos, severity: Severity, message: String) -> Diagnostic {
        let file = self
            .files
            .get(pos.file as usize)
            .cloned()
            .unwrap_or_default();
        Diagnostic {
            file,
            line: pos.line,
            column: pos.col,
            severity,
            message,
        }
    }

    /// Records an error at `pos`.
    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        let d = self.make(pos, Severity::Error, message.into());
        if !self.list.contains(&d) {
            self.list.push(d);
        }
    }

    /// Records an error that a missing include could explain: dropped when one is missing.
    pub fn follow_on(&mut self, pos: Pos, message: impl Into<String>) {
        if !self.incomplete {
            self.error(pos, message);
        }
    }

    /// Records a warning at `pos`.
    pub fn warning(&mut self, pos: Pos, message: impl Into<String>) {
        let d = self.make(pos, Severity::Warning, message.into());
        if !self.list.contains(&d) {
            self.list.push(d);
        }
    }

    /// Whether any error has been recorded.
    #[must_use]
    pub fn has_errors(&self) -> bool {
        self.list.iter().any(|d| d.severity == Severity::Error)
    }
}

/// The closest of `candidates` to `word`, if it is close enough to suggest ("did you mean").
#[must_use]
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let mut best: Option<(&str, usize)> = None;
    for c in candidates {
        let d = levenshtein(word, c);
        if d <= 2.max(word.len() / 4) && best.is_none_or(|(_, bd)| d < bd) {
            best = Some((c, d));
        }
    }
    best.map(|(c, _)| c)
}

/// `; did you mean `x`?` when one of `candidates` is close to `word`, else nothing: the tail of a message.
#[must_use]
pub fn hint(word: &str, candidates: &[&str]) -> String {
    did_you_mean(word, candidates)
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keywords_only() {
        assert_eq!(did_you_mean("scirpt", &["script", "stage"]), Some("script"));
        assert_eq!(did_you_mean("zzzzzz", &["script", "stage"]), None);
    }
}
