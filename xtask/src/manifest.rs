//! What tidy reads from a crate's `Cargo.toml`, parsed as TOML.

use toml::{Table, Value};

/// A crate manifest, parsed.
pub(crate) struct Manifest(Table);

impl Manifest {
    pub fn parse(text: &str) -> Result<Self, String> {
        text.parse::<Table>()
            .map(Manifest)
            .map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// `package.name`.
    pub fn name(&self) -> Option<&str> {
        self.0.get("package")?.get("name")?.as_str()
    }

    /// Whether the manifest has `[lints] workspace = true`.
    pub fn uses_workspace_lints(&self) -> bool {
        self.0
            .get("lints")
            .and_then(|l| l.get("workspace"))
            .and_then(Value::as_bool)
            == Some(true)
    }

    /// The workspace crates (named `gantry…`) among the normal dependencies: `[dependencies]` and
    /// every `[target.'cfg(…)'.dependencies]`. Dev- and build-dependencies are not counted. A
    /// renamed dependency counts by its package (`package = "…"`, or the folder of its `path`).
    pub fn workspace_deps(&self) -> Vec<String> {
        let mut sections: Vec<&Table> = Vec::new();
        if let Some(t) = self.0.get("dependencies").and_then(Value::as_table) {
            sections.push(t);
        }
        if let Some(targets) = self.0.get("target").and_then(Value::as_table) {
            for target in targets.values() {
                if let Some(t) = target.get("dependencies").and_then(Value::as_table) {
                    sections.push(t);
                }
            }
        }
        let mut out = Vec::new();
        for section in sections {
            for (key, value) in section {
                let package = value
                    .get("package")
                    .and_then(Value::as_str)
                    .or_else(|| {
                        let path = value.get("path")?.as_str()?;
                        path.trim_end_matches('/').rsplit('/').next()
                    })
                    .unwrap_or(key);
                if package.starts_with("gantry") && !out.iter().any(|o| o == package) {
                    out.push(package.to_owned());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(m: &str) -> Vec<String> {
        Manifest::parse(m).unwrap().workspace_deps()
    }

    #[test]
    fn only_normal_dependencies_count() {
        let m = "[dependencies]\ngantry-pipeline.workspace = true\nserde = \"1\"\n\
                 [dev-dependencies]\ngantry-executor-shell.workspace = true\n\
                 [build-dependencies]\ngantry-store.workspace = true\n";
        assert_eq!(deps(m), ["gantry-pipeline"]);
    }

    #[test]
    fn target_specific_dependencies_are_seen() {
        let m = "[target.'cfg(unix)'.dependencies]\ngantry-runtime = { workspace = true }\n\
                 [target.x86_64-unknown-linux-gnu.dependencies.gantry-store]\nworkspace = true\n\
                 [target.'cfg(windows)'.dev-dependencies]\ngantry-agent.workspace = true\n";
        assert_eq!(deps(m), ["gantry-runtime", "gantry-store"]);
    }

    #[test]
    fn table_and_dotted_forms_and_renames_are_seen() {
        let m = "dependencies.gantry-api = { workspace = true }\n";
        assert_eq!(deps(m), ["gantry-api"]);
        let m = "[dependencies.rt]\npackage = \"gantry-runtime\"\nversion = \"0.1\"\n";
        assert_eq!(deps(m), ["gantry-runtime"]);
        let m = "[dependencies]\nstore = { path = \"../gantry-store\" }\n";
        assert_eq!(deps(m), ["gantry-store"]);
    }

    #[test]
    fn name_and_lints() {
        let m = Manifest::parse("[package]\nname = \"gantry-api\"\n[lints]\nworkspace = true\n")
            .unwrap();
        assert_eq!(m.name(), Some("gantry-api"));
        assert!(m.uses_workspace_lints());
        let m = Manifest::parse("[package]\nname = \"x\"\n").unwrap();
        assert!(!m.uses_workspace_lints());
    }
}
