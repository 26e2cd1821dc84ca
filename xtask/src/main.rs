//! Project automation. `cargo xtask tidy` checks the architecture rules written in ARCHITECTURE.md;
//! the same check runs as a test, so `cargo nextest run` enforces it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Which workspace crates each crate may depend on (normal dependencies). Dev-dependencies are free.
const ALLOWED: &[(&str, &[&str])] = &[
    ("gantry-pipeline", &[]),
    ("gantry-runtime", &["gantry-pipeline"]),
    (
        "gantry-executor-shell",
        &["gantry-runtime", "gantry-pipeline"],
    ),
    (
        "gantry-executor-docker",
        &["gantry-runtime", "gantry-pipeline"],
    ),
    ("gantry-api", &["gantry-pipeline"]),
    ("gantry-store", &["gantry-api", "gantry-pipeline"]),
    (
        "gantry-server",
        &["gantry-api", "gantry-store", "gantry-pipeline"],
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
            "gantry-executor-shell",
            "gantry-executor-docker",
            "gantry-api",
            "gantry-store",
            "gantry-server",
            "gantry-agent",
        ],
    ),
];

/// Crates that must do no IO: these paths may not appear in their sources.
const NO_IO: &[(&str, &[&str])] = &[("gantry-pipeline", BANNED_IO), ("gantry-api", BANNED_IO)];

/// What a crate that does no IO may not use.
const BANNED_IO: &[&str] = &[
    "std::fs",
    "std::process",
    "std::net",
    "tokio",
    "std::env::var",
    "std::time::Instant",
    "SystemTime",
];

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
        _ => {
            eprintln!("usage: cargo xtask tidy");
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
        if !text.contains(&format!("name = \"{name}\"")) {
            problems.push(format!(
                "crates/{name}: the folder name must be the crate name"
            ));
        }
        if !text.contains("[lints]\nworkspace = true") {
            problems.push(format!(
                "crates/{name}: must use the workspace lints (`[lints] workspace = true`)"
            ));
        }
        let Some(allowed) = ALLOWED.iter().find(|(n, _)| *n == name).map(|(_, a)| *a) else {
            problems.push(format!("crates/{name}: not listed in xtask's dependency table; add it there and to ARCHITECTURE.md"));
            continue;
        };
        for dep in workspace_deps(&text) {
            if !allowed.contains(&dep.as_str()) {
                problems.push(format!(
                    "crates/{name} depends on {dep}, which ARCHITECTURE.md does not allow"
                ));
            }
        }
        if let Some((_, banned)) = NO_IO.iter().find(|(n, _)| *n == name) {
            for (file, text) in rust_files(&entry.path().join("src")) {
                for b in *banned {
                    if text.contains(b) {
                        problems.push(format!(
                            "{}: uses `{b}`, but {name} does no IO",
                            file.display()
                        ));
                    }
                }
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
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The workspace crates named in the `[dependencies]` section of a manifest.
fn workspace_deps(manifest: &str) -> Vec<String> {
    let mut in_deps = false;
    let mut out = Vec::new();
    for line in manifest.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_deps = l == "[dependencies]";
            continue;
        }
        if in_deps {
            let name = l.split(['=', '.', ' ']).next().unwrap_or_default();
            if name.starts_with("gantry") {
                out.push(name.to_string());
            }
        }
    }
    out
}

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
            // Doc comments may name what the crate does not do.
            let code: String = t
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            out.push((p, code));
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
    fn workspace_deps_reads_only_normal_dependencies() {
        let m = "[dependencies]\ngantry-pipeline.workspace = true\nserde = \"1\"\n[dev-dependencies]\ngantry-executor-shell.workspace = true\n";
        assert_eq!(workspace_deps(m), ["gantry-pipeline"]);
    }

    #[test]
    fn a_forbidden_dependency_is_reported() {
        let dir = std::env::temp_dir().join(format!("xtask-tidy-{}", std::process::id()));
        let c = dir.join("crates/gantry-pipeline");
        std::fs::create_dir_all(c.join("src")).unwrap();
        std::fs::write(c.join("Cargo.toml"), "name = \"gantry-pipeline\"\n[dependencies]\ngantry-runtime.workspace = true\n[lints]\nworkspace = true\n").unwrap();
        std::fs::write(c.join("src/lib.rs"), "fn f() { std::fs::read(\"x\"); }\n").unwrap();
        std::fs::write(dir.join("ARCHITECTURE.md"), "crates/gantry-pipeline").unwrap();
        let problems = tidy(&dir).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("depends on gantry-runtime")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("uses `std::fs`")),
            "{problems:?}"
        );
    }
}
