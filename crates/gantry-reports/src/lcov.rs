//! lcov tracefiles (`lcov`, a Gantry extension key).
//!
//! Records run from `SF:path` to `end_of_record`: `DA:line,hits[,checksum]` for lines,
//! `BRDA:line,block,branch,taken` for branches (`-` means never reached), and `BRF`/`BRH` as the
//! file's branch totals when there are no `BRDA` lines. `LF`/`LH` are derived from `DA`, and
//! function records (`FN`, `FNDA`, …) and test names (`TN`) are not used.

use std::io::Read;

use crate::coverage::{Coverage, FileCoverage, relative};
use crate::error::Error;
use crate::input::Lines;
use crate::options::Options;

/// Reads an lcov tracefile.
///
/// # Errors
/// A record outside `SF:`…`end_of_record`, a bad number, a file that ends inside a record, or
/// more than `options.max_bytes` bytes.
pub fn parse<R: Read>(reader: R, options: &Options) -> Result<Coverage, Error> {
    let mut lines = Lines::new(reader, options.max_bytes);
    let prefix = options.strip_prefix.as_deref();
    let mut cov = Coverage::default();
    let mut current: Option<(String, FileCoverage, Option<u64>, Option<u64>)> = None;
    let mut any = false;
    while let Some((n, line)) = lines.next_line()? {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        any = true;
        if line == "end_of_record" {
            let (path, mut file, brf, brh) = current
                .take()
                .ok_or_else(|| Error::at_line(n, "end_of_record without SF:"))?;
            if file.branches.is_empty() {
                if let (Some(f), Some(h)) = (brf, brh) {
                    file.branch_totals = Some((h, f));
                }
            }
            cov.file_mut(path).merge_record(file);
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(Error::at_line(
                n,
                format!("expected `KEY:VALUE`, found `{line}`"),
            ));
        };
        if key == "SF" {
            if current.is_some() {
                return Err(Error::at_line(
                    n,
                    "SF: inside a record (missing end_of_record)",
                ));
            }
            current = Some((relative(value, prefix), FileCoverage::default(), None, None));
            continue;
        }
        let needs_record = matches!(key, "DA" | "BRDA" | "BRF" | "BRH" | "LF" | "LH");
        if !needs_record {
            continue;
        }
        let Some((_, file, brf, brh)) = current.as_mut() else {
            return Err(Error::at_line(
                n,
                format!("{key}: outside a record (no SF: before it)"),
            ));
        };
        let num = |s: &str, what: &str| -> Result<u64, Error> {
            s.trim()
                .parse()
                .map_err(|_| Error::at_line(n, format!("{key}: bad {what} `{s}`")))
        };
        let line_no = |s: &str| -> Result<u32, Error> {
            s.trim()
                .parse()
                .map_err(|_| Error::at_line(n, format!("{key}: bad line number `{s}`")))
        };
        match key {
            "DA" => {
                let mut parts = value.splitn(3, ',');
                let l = line_no(parts.next().unwrap_or(""))?;
                let hits = parts
                    .next()
                    .ok_or_else(|| Error::at_line(n, "DA: expected `DA:LINE,HITS`"))?;
                // Some tools write negative counts for lines they could not instrument.
                let hits = if hits.trim().starts_with('-') {
                    0
                } else {
                    num(hits, "hit count")?
                };
                file.lines.push((l, hits));
            }
            "BRDA" => {
                let parts: Vec<&str> = value.split(',').collect();
                if parts.len() != 4 {
                    return Err(Error::at_line(
                        n,
                        "BRDA: expected `BRDA:LINE,BLOCK,BRANCH,TAKEN`",
                    ));
                }
                let l = line_no(parts[0])?;
                let taken = match parts[3].trim() {
                    "-" => 0,
                    t => num(t, "taken count")?,
                };
                file.branches.push((l, u32::from(taken > 0), 1));
            }
            "BRF" => *brf = Some(num(value, "count")?),
            "BRH" => *brh = Some(num(value, "count")?),
            _ => {}
        }
    }
    if current.is_some() {
        return Err(Error::at_line(
            lines.number,
            "the file ends inside a record (missing end_of_record)",
        ));
    }
    if !any {
        return Err(Error::invalid(None, "empty lcov file"));
    }
    cov.normalize();
    Ok(cov)
}

impl FileCoverage {
    /// Adds a record's lines and branches (a file may have several records). Branches on one line
    /// add up; lines are de-duplicated later by [`FileCoverage::normalize`].
    fn merge_record(&mut self, mut record: FileCoverage) {
        // BRDA lines are one branch each: sum them per line.
        record.branches.sort_unstable_by_key(|b| b.0);
        let mut summed: Vec<(u32, u32, u32)> = Vec::with_capacity(record.branches.len());
        for b in record.branches {
            match summed.last_mut() {
                Some(last) if last.0 == b.0 => {
                    last.1 += b.1;
                    last.2 += b.2;
                }
                _ => summed.push(b),
            }
        }
        self.lines.append(&mut record.lines);
        self.branches.extend(summed);
        if record.branch_totals.is_some() {
            self.branch_totals = record.branch_totals;
        }
    }
}
