//! Project automation. `cargo xtask tidy` checks the architecture rules written in ARCHITECTURE.md;
//! the same check runs as a test, so `cargo nextest run` enforces it.

mod arch;
mod cycles;
mod manifest;
mod source;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use manifest::Manifest;

/// Which workspace crates each crate may depend on (normal dependencies). Dev-dependencies are free.
const ALLOWED: &[(&str, &[&str])] = &[
    ("gantry-pipeline", &[]),
    (
        "gantry-runtime",
        &[
            "gantry-pipeline",
            "gantry-api",
            "gantry-reports",
            "gantry-release",
        ],
    ),
    (
        "gantry-executor-shell",
        &["gantry-runtime", "gantry-pipeline"],
    ),
    (
        "gantry-executor-docker",
        &["gantry-runtime", "gantry-pipeline"],
    ),
    ("gantry-api", &["gantry-pipeline", "gantry-reports"]),
    ("gantry-reports", &["gantry-pipeline"]),
    ("gantry-release", &["gantry-pipeline", "gantry-api"]),
    ("gantry-notify", &["gantry-pipeline", "gantry-api"]),
    ("gantry-store", &["gantry-api", "gantry-pipeline"]),
    ("gantry-ui", &["gantry-api"]),
    (
        "gantry-server",
        &[
            "gantry-api",
            "gantry-store",
            "gantry-pipeline",
            "gantry-reports",
            "gantry-notify",
            "gantry-ui",
        ],
    ),
    (
        "gantry-agent",
        &[
            "gantry-api",
            "gantry-pipeline",
            "gantry-runtime",
            "gantry-executor-shell",
            "gantry-executor-docker",
        ],
    ),
    (
        "gantry",
        &[
            "gantry-pipeline",
            "gantry-runtime",
            "gantry-api",
            "gantry-store",
            "gantry-server",
            "gantry-agent",
            "gantry-notify",
        ],
    ),
];

/// Crates that must do no IO: the paths their sources may not name.
const NO_IO: &[(&str, &[&str])] = &[
    ("gantry-pipeline", BANNED_IO),
    ("gantry-api", BANNED_IO),
    ("gantry-reports", BANNED_IO),
    ("gantry-ui", BANNED_IO),
];

/// What a crate that does no IO may not name: a path counts when it starts with one of these
/// (`std::fs` covers `std::fs::read`), unless it starts with one of [`IO_FREE`].
const BANNED_IO: &[&str] = &[
    "std::fs",
    "std::process",
    "std::net",
    "std::os",
    "tokio",
    "std::env",
    "std::time::Instant",
    "std::time::SystemTime",
];

/// Parts of the banned modules that do no IO: the target's constants.
const IO_FREE: &[&str] = &["std::env::consts"];

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("tidy") => match tidy(&root()) {
            Ok(()) => {
                eprintln!("tidy: ok");
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for p in problems {
                    eprintln!("tidy: {p}");
                }
                ExitCode::FAILURE
            }
        },
        Some("imports") => {
            let Some(name) = std::env::args().nth(2) else {
                eprintln!("usage: cargo xtask imports CRATE");
                return ExitCode::from(2);
            };
            let src = root().join("crates").join(&name).join("src");
            let files: Vec<(PathBuf, String)> = rust_files(&src)
                .into_iter()
                .filter_map(|(p, t)| Some((p.strip_prefix(&src).ok()?.to_path_buf(), t)))
                .collect();
            if files.is_empty() {
                eprintln!("imports: no sources under crates/{name}/src");
                return ExitCode::FAILURE;
            }
            let out = cycles::graph(&files).render();
            let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: cargo xtask tidy | cargo xtask imports CRATE");
            ExitCode::from(2)
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// Checks every rule; returns all problems found.
fn tidy(root: &Path) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let crates = root.join("crates");
    let mut seen = Vec::new();
    for entry in
        std::fs::read_dir(&crates).map_err(|e| vec![format!("cannot read crates/: {e}")])?
    {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name().to_string_lossy().into_owned();
        let manifest = entry.path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        seen.push(name.clone());
        let manifest = match Manifest::parse(&text) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("crates/{name}/Cargo.toml: {e}"));
                continue;
            }
        };
        if manifest.name() != Some(name.as_str()) {
            problems.push(format!(
                "crates/{name}: the folder name must be the crate name"
            ));
        }
        if !manifest.uses_workspace_lints() {
            problems.push(format!(
                "crates/{name}: must use the workspace lints (`[lints] workspace = true`)"
            ));
        }
        let Some(allowed) = ALLOWED.iter().find(|(n, _)| *n == name).map(|(_, a)| *a) else {
            problems.push(format!("crates/{name}: not listed in xtask's dependency table; add it there and to ARCHITECTURE.md"));
            continue;
        };
        for dep in manifest.workspace_deps() {
            if !allowed.contains(&dep.as_str()) {
                problems.push(format!(
                    "crates/{name} depends on {dep}, which ARCHITECTURE.md does not allow"
                ));
            }
        }
        let src = entry.path().join("src");
        problems.extend(cycles::problems(&name, &src, &rust_files(&src)));
        if let Some((_, banned)) = NO_IO.iter().find(|(n, _)| *n == name) {
            for (file, text) in rust_files(&entry.path().join("src")) {
                let file = file.strip_prefix(root).unwrap_or(&file);
                problems.extend(io_problems(file, &text, &name, banned));
            }
        }
    }
    for (name, _) in ALLOWED {
        if !seen.iter().any(|s| s == name) {
            problems.push(format!("xtask lists crate {name}, which does not exist"));
        }
    }
    let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap_or_default();
    for name in &seen {
        if !arch.contains(&format!("crates/{name}")) {
            problems.push(format!("ARCHITECTURE.md does not mention crates/{name}"));
        }
    }
    match arch::allowed_table(&arch) {
        Ok(table) => problems.extend(table_problems(&table)),
        Err(e) => problems.push(e),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Where the table of ARCHITECTURE.md and `ALLOWED` differ.
fn table_problems(table: &[(String, Vec<String>)]) -> Vec<String> {
    let mut problems = Vec::new();
    let sorted = |xs: &mut Vec<String>| {
        xs.sort();
        xs.join(", ")
    };
    for (name, allowed) in ALLOWED {
        let Some((_, doc)) = table.iter().find(|(c, _)| c == name) else {
            problems.push(format!(
                "ARCHITECTURE.md's dependency table has no row for {name}"
            ));
            continue;
        };
        let mut doc = doc.clone();
        let mut code: Vec<String> = allowed.iter().map(|s| (*s).to_owned()).collect();
        let (doc, code) = (sorted(&mut doc), sorted(&mut code));
        if doc != code {
            problems.push(format!(
                "ARCHITECTURE.md lets {name} depend on [{doc}], xtask's ALLOWED on [{code}]"
            ));
        }
    }
    for (name, _) in table {
        if !ALLOWED.iter().any(|(n, _)| n == name) {
            problems.push(format!(
                "ARCHITECTURE.md's dependency table lists {name}, which xtask's ALLOWED does not"
            ));
        }
    }
    problems
}

/// The banned paths that `text` (the source of `file`, in crate `name`) names.
fn io_problems(file: &Path, text: &str, name: &str, banned: &[&str]) -> Vec<String> {
    fn starts_with(path: &[&str], prefix: &str) -> bool {
        let prefix: Vec<&str> = prefix.split("::").collect();
        path.len() >= prefix.len() && path[..prefix.len()] == prefix[..]
    }
    let mut problems = Vec::new();
    for p in source::named_paths(text) {
        let path: Vec<&str> = p.segments.iter().map(String::as_str).collect();
        if IO_FREE.iter().any(|f| starts_with(&path, f)) {
            continue;
        }
        for b in banned {
            // A glob over a module that holds a banned path (`use std::time::*`) counts too.
            let glob_over =
                p.glob && starts_with(&b.split("::").collect::<Vec<_>>(), &path.join("::"));
            if starts_with(&path, b) || glob_over {
                problems.push(format!(
                    "{}:{}:1: names `{}`, but {name} does no IO (`{b}` is banned)",
                    file.display(),
                    p.line,
                    p.display()
                ));
            }
        }
    }
    problems
}

/// The `.rs` files under `dir`, with their text.
fn rust_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
            continue;
        }
        if p.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        if let Ok(t) = std::fs::read_to_string(&p) {
            out.push((p, t));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tidy_passes() {
        if let Err(problems) = tidy(&root()) {
            panic!("tidy found problems:\n{}", problems.join("\n"));
        }
    }

    #[test]
    fn forbidden_dependencies_and_io_are_reported() {
        let dir = std::env::temp_dir().join(format!("xtask-tidy-{}", std::process::id()));
        let c = dir.join("crates/gantry-pipeline");
        std::fs::create_dir_all(c.join("src")).unwrap();
        std::fs::write(
            c.join("Cargo.toml"),
            "[package]\nname = \"gantry-pipeline\"\n[dependencies]\ngantry-runtime.workspace = true\n\
             [target.'cfg(unix)'.dependencies]\ngantry-store.workspace = true\n\
             [lints]\nworkspace = true\n",
        )
        .unwrap();
        std::fs::write(
            c.join("src/lib.rs"),
            "//! Never calls `std::process`.\nuse std::time::{Duration, Instant};\n\
             fn f() { std::fs::read(\"std::net\"); std::env::consts::OS; }\n",
        )
        .unwrap();
        std::fs::write(dir.join("ARCHITECTURE.md"), "crates/gantry-pipeline").unwrap();
        let problems = tidy(&dir).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        let has = |s: &str| problems.iter().filter(|p| p.contains(s)).count();
        assert_eq!(has("depends on gantry-runtime"), 1, "{problems:?}");
        assert_eq!(has("depends on gantry-store"), 1, "{problems:?}");
        assert_eq!(has("lib.rs:3:1: names `std::fs::read`"), 1, "{problems:?}");
        assert_eq!(
            has("lib.rs:2:1: names `std::time::Instant`"),
            1,
            "{problems:?}"
        );
        assert_eq!(has("does no IO"), 2, "{problems:?}");
        assert_eq!(has("no line starting with **Allowed"), 1, "{problems:?}");
    }

    #[test]
    fn a_glob_over_a_banned_path_is_reported() {
        let p = io_problems(Path::new("x.rs"), "use std::time::*;", "c", BANNED_IO);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            io_problems(
                Path::new("x.rs"),
                "use std::collections::*;",
                "c",
                BANNED_IO
            )
            .is_empty()
        );
    }

    #[test]
    fn a_table_that_differs_from_allowed_is_reported() {
        let mut table: Vec<(String, Vec<String>)> = ALLOWED
            .iter()
            .map(|(n, a)| {
                (
                    (*n).to_owned(),
                    a.iter().rev().map(|s| (*s).to_owned()).collect(),
                )
            })
            .collect();
        assert_eq!(
            table_problems(&table),
            Vec::<String>::new(),
            "the order does not matter"
        );
        table[1].1.push("gantry-store".to_owned());
        table.remove(0);
        table.push(("gantry-extra".to_owned(), Vec::new()));
        let p = table_problems(&table);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("no row for gantry-pipeline"), "{p:?}");
        assert!(
            p[1].contains("lets gantry-runtime depend on [") && p[1].contains("gantry-store]"),
            "{p:?}"
        );
        assert!(p[2].contains("lists gantry-extra"), "{p:?}");
    }
}
