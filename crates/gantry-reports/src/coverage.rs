//! The coverage summary that Cobertura, lcov and Go cover profiles produce: per file, per line.
//!
//! Summaries of several jobs merge per file and line, keeping the larger hit count, so a line
//! covered by any job is covered. The coverage percentage counts Go files by statements (as
//! `go tool cover -func` does in its total) and other files by lines.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Coverage of one or more reports, keyed by file path (relative to the project when the
/// report or [`crate::Options::strip_prefix`] allows).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// Each file's coverage.
    pub files: BTreeMap<String, FileCoverage>,
}

/// One file's coverage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCoverage {
    /// `(line, hits)` for each coverable line, sorted by line, one entry per line.
    pub lines: Vec<(u32, u64)>,
    /// `(line, covered, total)` branches on a line, sorted by line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<(u32, u32, u32)>,
    /// `(covered, total)` branches for the whole file, when the report gives only totals
    /// (lcov's `BRH`/`BRF` without `BRDA`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_totals: Option<(u64, u64)>,
    /// Go statement blocks, sorted; empty for other reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<Block>,
}

/// A Go cover profile's block: a range of source with its statements and execution count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Block {
    /// `(line, column)` where the block starts.
    pub start: (u32, u32),
    /// `(line, column)` where it ends.
    pub end: (u32, u32),
    /// How many statements it holds.
    pub statements: u32,
    /// How many times it ran (`set` mode: 0 or 1).
    pub count: u64,
}

impl FileCoverage {
    /// Sorts and de-duplicates lines, branches and blocks (duplicates keep the larger count).
    pub(crate) fn normalize(&mut self) {
        self.lines.sort_unstable_by_key(|l| l.0);
        self.lines.dedup_by(|next, kept| {
            if next.0 == kept.0 {
                kept.1 = kept.1.max(next.1);
                true
            } else {
                false
            }
        });
        self.branches.sort_unstable_by_key(|b| b.0);
        self.branches.dedup_by(|next, kept| {
            if next.0 == kept.0 {
                kept.1 = kept.1.max(next.1);
                kept.2 = kept.2.max(next.2);
                true
            } else {
                false
            }
        });
        self.blocks.sort_unstable_by_key(|b| (b.start, b.end));
        self.blocks.dedup_by(|next, kept| {
            if (next.start, next.end) == (kept.start, kept.end) {
                kept.count = kept.count.max(next.count);
                kept.statements = kept.statements.max(next.statements);
                true
            } else {
                false
            }
        });
    }

    fn merge(&mut self, other: &FileCoverage) {
        if other.lines.is_empty()
            && other.branches.is_empty()
            && other.blocks.is_empty()
            && other.branch_totals.is_none()
        {
            return;
        }
        self.lines = merge_sorted(
            &self.lines,
            &other.lines,
            |l| l.0,
            |a, b| (a.0, a.1.max(b.1)),
        );
        self.branches = merge_sorted(
            &self.branches,
            &other.branches,
            |b| b.0,
            |a, b| (a.0, a.1.max(b.1), a.2.max(b.2)),
        );
        self.blocks = merge_sorted(
            &self.blocks,
            &other.blocks,
            |b| (b.start, b.end),
            |a, b| Block {
                count: a.count.max(b.count),
                statements: a.statements.max(b.statements),
                ..*a
            },
        );
        self.branch_totals = match (self.branch_totals, other.branch_totals) {
            (Some(a), Some(b)) => Some((a.0.max(b.0), a.1.max(b.1))),
            (a, b) => a.or(b),
        };
    }

    /// `(covered, coverable)`: statements for Go files, else lines.
    pub fn counts(&self) -> (u64, u64) {
        if self.blocks.is_empty() {
            let covered = self.lines.iter().filter(|l| l.1 > 0).count() as u64;
            (covered, self.lines.len() as u64)
        } else {
            self.blocks.iter().fold((0, 0), |(c, t), b| {
                let s = u64::from(b.statements);
                (if b.count > 0 { c + s } else { c }, t + s)
            })
        }
    }

    /// The hit count of `line`, or `None` when the line is not coverable.
    pub fn hits(&self, line: u32) -> Option<u64> {
        self.lines
            .binary_search_by_key(&line, |l| l.0)
            .ok()
            .map(|i| self.lines[i].1)
    }

    /// `(covered, total)` branches.
    pub fn branch_counts(&self) -> (u64, u64) {
        if self.branches.is_empty() {
            return self.branch_totals.unwrap_or((0, 0));
        }
        self.branches
            .iter()
            .fold((0, 0), |(c, t), b| (c + u64::from(b.1), t + u64::from(b.2)))
    }
}

fn merge_sorted<T: Copy, K: Ord>(
    a: &[T],
    b: &[T],
    key: impl Fn(&T) -> K,
    both: impl Fn(&T, &T) -> T,
) -> Vec<T> {
    if b.is_empty() {
        return a.to_vec();
    }
    if a.is_empty() {
        return b.to_vec();
    }
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match key(&a[i]).cmp(&key(&b[j])) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(both(&a[i], &b[j]));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

impl Coverage {
    /// Adds another summary: files are merged line by line, keeping the larger hit count.
    pub fn merge(&mut self, other: &Coverage) {
        for (path, file) in &other.files {
            match self.files.get_mut(path) {
                Some(mine) => mine.merge(file),
                None => {
                    self.files.insert(path.clone(), file.clone());
                }
            }
        }
    }

    /// `(covered, coverable)` over all files.
    pub fn counts(&self) -> (u64, u64) {
        self.files.values().fold((0, 0), |(c, t), f| {
            let (fc, ft) = f.counts();
            (c + fc, t + ft)
        })
    }

    /// Coverage in percent, rounded to two decimals; `None` when nothing is coverable.
    pub fn percent(&self) -> Option<f64> {
        percent(self.counts())
    }

    /// Branch coverage in percent, rounded to two decimals; `None` without branch data.
    pub fn branch_percent(&self) -> Option<f64> {
        percent(self.files.values().fold((0, 0), |(c, t), f| {
            let (fc, ft) = f.branch_counts();
            (c + fc, t + ft)
        }))
    }

    pub(crate) fn file_mut(&mut self, path: String) -> &mut FileCoverage {
        self.files.entry(path).or_default()
    }

    pub(crate) fn normalize(&mut self) {
        for f in self.files.values_mut() {
            f.normalize();
        }
    }
}

/// `covered / total` in percent, rounded to two decimals; `None` when `total` is 0.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn percent((covered, total): (u64, u64)) -> Option<f64> {
    (total > 0).then(|| round2(covered as f64 * 100.0 / total as f64))
}

pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A report's file name made relative: `prefix` (with or without a trailing `/`) and a leading
/// `./` removed.
pub(crate) fn relative(name: &str, prefix: Option<&str>) -> String {
    let mut s = name;
    if let Some(p) = prefix
        .map(|p| p.trim_end_matches('/'))
        .filter(|p| !p.is_empty())
    {
        if let Some(rest) = s.strip_prefix(p).and_then(|r| r.strip_prefix('/')) {
            s = rest;
        }
    }
    while let Some(rest) = s.strip_prefix("./") {
        s = rest;
    }
    s.to_owned()
}
