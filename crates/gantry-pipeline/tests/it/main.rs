//! Integration tests of the compiler: plans rendered as text and compared with snapshots, and the
//! exact position and wording of diagnostics.

mod buildyml;
mod compat;
mod diagnostics;
mod includes;
mod inputs;
mod notify;
mod plans;
mod verify;

use std::sync::Mutex;

use gantry_pipeline::{Compiled, Context, GitFacts, MemSources, Sources, compile};

/// Compiles `files` (the first is the pipeline file) with a fixed git context on branch `main`.
pub fn compile_files(files: &[(&str, &str)], tweak: impl FnOnce(&mut Context)) -> Compiled {
    compile_changed(files, None, tweak)
}

/// Like [`compile_files`], with `changed` as the files that `rules:changes` sees as changed.
pub fn compile_changed(
    files: &[(&str, &str)],
    changed: Option<&[&str]>,
    tweak: impl FnOnce(&mut Context),
) -> Compiled {
    let mut sources = MemSources::new(
        files
            .iter()
            .map(|(n, c)| ((*n).to_string(), (*c).to_string()))
            .collect(),
    );
    sources.changed = changed.map(|c| c.iter().map(|s| (*s).to_string()).collect());
    let mut ctx = Context {
        file: files[0].0.to_string(),
        git: GitFacts {
            sha: "a".repeat(40),
            before_sha: "b".repeat(40),
            branch: Some("main".into()),
            message: "Add feature\n\nLonger text".into(),
            default_branch: "main".into(),
            remote_url: Some("git@gitlab.example.com:acme/shop/api.git".into()),
            user_name: "Jane Doe".into(),
            user_email: "jane@example.com".into(),
            ..GitFacts::default()
        },
        ..Context::default()
    };
    tweak(&mut ctx);
    compile(&sources, &ctx)
}

/// In-memory files whose remote includes are `remotes` by key, and whose `unavailable` remote
/// includes say why; records every key asked for.
pub struct Remotes {
    local: MemSources,
    remotes: Vec<(&'static str, &'static str)>,
    /// Remote includes that cannot be had: (key, why).
    pub unavailable: Vec<(&'static str, &'static str)>,
    asked: Mutex<Vec<String>>,
}

impl Remotes {
    /// `files` (the first is the pipeline file) and the remote includes `remotes`.
    pub fn new(files: &[(&str, &str)], remotes: Vec<(&'static str, &'static str)>) -> Remotes {
        let files = files
            .iter()
            .map(|(n, c)| ((*n).to_string(), (*c).to_string()))
            .collect();
        Remotes {
            local: MemSources::new(files),
            remotes,
            unavailable: Vec::new(),
            asked: Mutex::new(Vec::new()),
        }
    }

    /// Compiles with the default context; answers the result and the remote keys asked for.
    pub fn compile(self) -> (Compiled, Vec<String>) {
        let c = compile(&self, &Context::default());
        (c, self.asked.into_inner().unwrap())
    }
}

impl Sources for Remotes {
    fn read(&self, p: &str) -> Result<String, String> {
        self.local.read(p)
    }
    fn files(&self) -> &[String] {
        self.local.files()
    }
    fn remote(&self, key: &str) -> Option<String> {
        self.asked.lock().unwrap().push(key.to_string());
        let found = self.remotes.iter().find(|(k, _)| *k == key);
        found.map(|(_, c)| (*c).to_string())
    }
    fn remote_unavailable(&self, key: &str) -> Option<String> {
        let found = self.unavailable.iter().find(|(k, _)| *k == key);
        found.map(|(_, why)| (*why).to_string())
    }
}

/// The errors of `c`, as `FILE:LINE:COLUMN: message`.
pub fn errors(c: &Compiled) -> Vec<String> {
    c.errors().map(ToString::to_string).collect()
}

/// Asserts that `c` has the error `expected` (among others).
pub fn assert_error(c: &Compiled, expected: &str) {
    let errs = errors(c);
    assert!(
        errs.iter().any(|e| e == expected),
        "expected `{expected}` in {errs:#?}"
    );
}

/// Compiles one pipeline file.
pub fn compile_one(src: &str) -> Compiled {
    compile_files(&[(".gitlab-ci.yml", src)], |_| {})
}

/// Renders a plan compactly: one block per job, only non-default fields.
pub fn render(c: &Compiled) -> String {
    use std::fmt::Write;
    let errors: Vec<String> = c.errors().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "unexpected errors: {errors:#?}");
    let Some(plan) = &c.plan else {
        return "no plan".into();
    };
    let mut out = String::new();
    let _ = writeln!(out, "stages: {}", plan.stages.join(", "));
    if !plan.variables.is_empty() {
        let vs: Vec<String> = plan
            .variables
            .iter()
            .map(|v| format!("{}={}", v.key, v.value))
            .collect();
        let _ = writeln!(out, "variables: {}", vs.join(" "));
    }
    for j in &plan.jobs {
        let _ = writeln!(
            out,
            "- {} [{}] when={} allow_failure={:?}",
            j.name,
            j.stage,
            j.when.as_str(),
            j.allow_failure
        );
        if let Some(n) = &j.needs {
            let ns: Vec<String> = n
                .iter()
                .map(|x| {
                    format!(
                        "{}{}{}",
                        x.job,
                        if x.artifacts { "" } else { " (no artifacts)" },
                        if x.optional { " (optional)" } else { "" }
                    )
                })
                .collect();
            let _ = writeln!(out, "  needs: [{}]", ns.join(", "));
        }
        if let Some(d) = &j.dependencies {
            let _ = writeln!(out, "  dependencies: [{}]", d.join(", "));
        }
        for (k, v) in [
            ("before_script", &j.before_script),
            ("script", &j.script),
            ("after_script", &j.after_script),
        ] {
            if !v.is_empty() {
                let _ = writeln!(out, "  {k}: {v:?}");
            }
        }
        if !j.variables.is_empty() {
            let vs: Vec<String> = j
                .variables
                .iter()
                .map(|v| {
                    format!(
                        "{}={}{}",
                        v.key,
                        v.value,
                        if v.expand { "" } else { " (raw)" }
                    )
                })
                .collect();
            let _ = writeln!(out, "  variables: {}", vs.join(" "));
        }
        let interesting = [
            "CI_NODE_INDEX",
            "CI_NODE_TOTAL",
            "CI_ENVIRONMENT_NAME",
            "CI_ENVIRONMENT_SLUG",
            "CI_ENVIRONMENT_TIER",
            "CI_ENVIRONMENT_URL",
        ];
        let pre: Vec<String> = j
            .predefined
            .iter()
            .filter(|v| {
                interesting.contains(&v.key.as_str())
                    && !(v.key == "CI_NODE_TOTAL" && v.value == "1")
            })
            .map(|v| format!("{}={}", v.key, v.value))
            .collect();
        if !pre.is_empty() {
            let _ = writeln!(out, "  predefined: {}", pre.join(" "));
        }
        if let Some(s) = j.start_in {
            let _ = writeln!(out, "  start_in: {}s", s.as_secs());
        }
        if let Some(t) = j.timeout {
            let _ = writeln!(out, "  timeout: {}s", t.as_secs());
        }
        if j.retry.max > 0 {
            let _ = writeln!(out, "  retry: {:?}", j.retry);
        }
        if let Some(a) = &j.artifacts {
            let _ = writeln!(out, "  artifacts: {a:?}");
        }
        for c in &j.cache {
            let _ = writeln!(out, "  cache: {c:?}");
        }
        if let Some(e) = &j.environment {
            let _ = writeln!(out, "  environment: {e:?}");
        }
        for (k, v) in [
            ("coverage", &j.coverage),
            ("resource_group", &j.resource_group),
        ] {
            if let Some(v) = v {
                let _ = writeln!(out, "  {k}: {v}");
            }
        }
        if let Some(i) = &j.image {
            let _ = writeln!(out, "  image: {}", i.name);
        }
        if !j.services.is_empty() {
            let _ = writeln!(
                out,
                "  services: {:?}",
                j.services
                    .iter()
                    .map(|s| (&s.name, &s.alias))
                    .collect::<Vec<_>>()
            );
        }
        if !j.tags.is_empty() {
            let _ = writeln!(out, "  tags: {:?}", j.tags);
        }
        if j.interruptible {
            let _ = writeln!(out, "  interruptible");
        }
        if j.trigger {
            let _ = writeln!(out, "  trigger");
        }
        if !j.gate.is_empty() {
            let cs: Vec<String> = j.gate.iter().map(ToString::to_string).collect();
            let _ = writeln!(out, "  gate: {}", cs.join(", "));
        }
        let _ = writeln!(out, "  why: {}", j.reason);
    }
    out
}
