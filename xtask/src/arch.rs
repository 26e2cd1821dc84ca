//! The table of allowed dependencies between crates in ARCHITECTURE.md.
//!
//! The table follows the line that starts with `**Allowed dependencies between crates**`. Each row
//! is `| crates | may depend on |`: the first cell names one or more crates in backticks, the
//! second names in backticks the crates they may depend on, or says `all of the above` (every crate
//! of the rows above), or names none. In the second cell, what follows a `:` is a comment.

/// The heading the table follows.
const HEADING: &str = "**Allowed dependencies between crates**";

/// Each crate of the table with the crates it may depend on, in the table's order.
pub(crate) fn allowed_table(arch: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut lines = arch
        .lines()
        .enumerate()
        .skip_while(|(_, l)| !l.trim_start().starts_with(HEADING));
    if lines.next().is_none() {
        return Err(format!("ARCHITECTURE.md: no line starting with {HEADING}"));
    }
    let rows = lines
        .skip_while(|(_, l)| l.trim().is_empty())
        .take_while(|(_, l)| l.trim_start().starts_with('|'))
        // The header row and the separator.
        .skip(2);
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (n, row) in rows {
        let cells: Vec<&str> = row.trim().trim_matches('|').split('|').collect();
        let [crates, deps] = cells[..] else {
            return Err(format!(
                "ARCHITECTURE.md:{}:1: a row of the dependency table needs 2 cells",
                n + 1
            ));
        };
        let crates = backticked(crates);
        if crates.is_empty() {
            return Err(format!(
                "ARCHITECTURE.md:{}:1: the row names no crate in backticks",
                n + 1
            ));
        }
        let deps = deps.split(':').next().unwrap_or_default();
        let deps = if deps.contains("all of the above") {
            out.iter().map(|(c, _)| c.clone()).collect()
        } else {
            backticked(deps)
        };
        for c in crates {
            out.push((c, deps.clone()));
        }
    }
    if out.is_empty() {
        return Err(format!("ARCHITECTURE.md: no table rows after {HEADING}"));
    }
    Ok(out)
}

/// The words in backticks in `cell`.
fn backticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_with_several_crates_comments_and_all_of_the_above() {
        let md = "intro\n\n**Allowed dependencies between crates** (checked):\n\n\
                  | crate | may depend on |\n|---|---|\n\
                  | `a` | no workspace crate |\n\
                  | `b`, `c` | `a`: never `d` |\n\
                  | `e` | all of the above |\n\nafter\n| `x` | `y` |\n";
        let t = allowed_table(md).unwrap();
        let v = |xs: &[&str]| xs.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            t,
            [
                ("a".to_owned(), v(&[])),
                ("b".to_owned(), v(&["a"])),
                ("c".to_owned(), v(&["a"])),
                ("e".to_owned(), v(&["a", "b", "c"])),
            ]
        );
    }

    #[test]
    fn a_missing_table_is_an_error() {
        assert!(allowed_table("no table here").is_err());
        assert!(allowed_table("**Allowed dependencies between crates**\n\ntext").is_err());
    }
}
