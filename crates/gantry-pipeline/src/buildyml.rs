//! The `build.yml` format of Alibaba Cloud Yunxiao (Flow), which follows AWS CodeBuild's buildspec,
//! translated into the equivalent `.gitlab-ci.yml` tree so that the normal compiler makes its `Plan`.
//!
//! ```yaml
//! version: 1.0
//! env:
//!   variables: {GOFLAGS: -mod=mod}
//! phases:
//!   install:   {commands: [go mod download]}
//!   build:     {commands: [go build -o main .], finally: [echo done], on-failure: ABORT}
//! artifacts:
//!   files: [main]
//! ```
//!
//! The translation keeps every position, so `gantry lint` points into the `build.yml` itself:
//! - each phase becomes a job of the same name in a stage of the same name; the stages are
//!   `install`, `pre_build`, `build`, `post_build` (those present) in that order, or the phases in
//!   the order written when any other name is used;
//! - `commands` become `script`, `finally` becomes `after_script`, `on-failure: CONTINUE` becomes
//!   `allow_failure: true`;
//! - `env.variables` become the pipeline's `variables`, `cache.paths` its `cache:paths`;
//! - `artifacts.files` (with `name` and `exclude-paths`) become the last phase's `artifacts`;
//! - a phase's untracked files pass to the next phases (`artifacts:untracked`), since the phases of
//!   a build share one file system where GitLab's jobs each have their own.
//!
//! What the format has that Gantry cannot honour (`runtime-versions`, `run-as`, secrets stores,
//! `base-directory`, reports…) is an error at its position rather than silently dropped.

use crate::diag::{Diags, hint};
use crate::load::GLOBAL_KEYWORDS;
use crate::yaml::{Map, Node, Pos, Value};

/// The phases whose order is fixed, in that order.
pub const PHASES: &[&str] = &["install", "pre_build", "build", "post_build"];

const TOP: &[&str] = &["version", "env", "phases", "artifacts", "cache"];
const TOP_UNSUPPORTED: &[&str] = &["run-as", "proxy", "batch", "reports"];
const ENV: &[&str] = &["variables"];
const ENV_UNSUPPORTED: &[&str] = &[
    "shell",
    "parameter-store",
    "secrets-manager",
    "exported-variables",
    "git-credential-helper",
];
const PHASE: &[&str] = &["commands", "finally", "on-failure"];
const PHASE_UNSUPPORTED: &[&str] = &["runtime-versions", "run-as"];
const ARTIFACTS: &[&str] = &["files", "name", "exclude-paths"];
const ARTIFACTS_UNSUPPORTED: &[&str] = &[
    "base-directory",
    "discard-paths",
    "enable-symlinks",
    "s3-prefix",
    "secondary-artifacts",
];
const CACHE: &[&str] = &["paths"];

/// Whether the pipeline file `name`, whose first document is `root`, is a `build.yml` rather than a
/// `.gitlab-ci.yml`: a top-level `phases`, or a `version` that is a scalar (never a valid GitLab
/// job). A file named `.gitlab-ci.yml` is always GitLab's.
#[must_use]
pub fn is_buildyml(name: &str, root: &Node) -> bool {
    if name.rsplit('/').next() == Some(".gitlab-ci.yml") {
        return false;
    }
    let Some(map) = root.as_map() else {
        return false;
    };
    map.contains("phases")
        || map
            .get("version")
            .is_some_and(|v| v.scalar_string().is_some() && !v.is_null())
}

/// Translates a `build.yml` tree into the equivalent `.gitlab-ci.yml` tree. Problems go to `diags`
/// with their positions; what is valid is translated regardless.
#[must_use]
pub fn to_gitlab(root: &Node, diags: &mut Diags) -> Node {
    let mut out = Map::default();
    let Some(map) = root.as_map() else {
        diags.error(
            root.pos,
            format!("a build.yml must be a mapping, not {}", root.kind()),
        );
        return Node::new(Value::Map(out), root.pos);
    };
    check_keys(map, "", TOP, TOP_UNSUPPORTED, diags);
    match map.entry("version") {
        None => diags.error(
            root.pos,
            "`version` is missing (for example `version: 1.0`)",
        ),
        Some(e) if e.value.is_null() || e.value.scalar_string().is_none() => diags.error(
            e.value.pos,
            format!(
                "`version` must be a number or a string, not {}",
                e.value.kind()
            ),
        ),
        Some(_) => {}
    }

    let phases = phases(map, root.pos, diags);
    if !phases.is_empty() {
        let stages = phases
            .iter()
            .map(|p| Node::str(p.name.clone(), p.key_pos))
            .collect();
        let at = map.entry("phases").map_or(root.pos, |e| e.key_pos);
        out.insert("stages".into(), at, Node::new(Value::Seq(stages), at));
    }
    if let Some(e) = map.entry("env") {
        if let Some(vars) = env(&e.value, diags) {
            out.insert("variables".into(), e.key_pos, vars);
        }
    }
    if let Some(e) = map.entry("cache") {
        if let Some(cache) = cache(&e.value, diags) {
            out.insert("cache".into(), e.key_pos, cache);
        }
    }
    let stored = map
        .entry("artifacts")
        .and_then(|e| artifacts(&e.value, diags));

    let last = phases.len().saturating_sub(1);
    for (i, p) in phases.into_iter().enumerate() {
        let mut job = Map::default();
        job.insert(
            "stage".into(),
            p.key_pos,
            Node::str(p.name.clone(), p.key_pos),
        );
        job.entries.extend(p.job.entries);
        if i < last {
            // The phases of a build share one file system: what a phase leaves passes on.
            let mut pass = Map::default();
            pass.insert(
                "untracked".into(),
                p.key_pos,
                Node::new(Value::Bool(true), p.key_pos),
            );
            job.insert(
                "artifacts".into(),
                p.key_pos,
                Node::new(Value::Map(pass), p.key_pos),
            );
        } else if let Some(a) = &stored {
            job.insert("artifacts".into(), a.pos, a.clone());
        }
        out.insert(p.name, p.key_pos, Node::new(Value::Map(job), p.value_pos));
    }
    Node::new(Value::Map(out), root.pos)
}

/// One translated phase: its name, where it is, and its job's keys (without `stage`).
struct Phase {
    name: String,
    key_pos: Pos,
    value_pos: Pos,
    job: Map,
}

fn phases(map: &Map, root: Pos, diags: &mut Diags) -> Vec<Phase> {
    let Some(node) = map.get("phases") else {
        diags.error(
            root,
            "`phases` is missing: a build.yml needs at least one phase with `commands`",
        );
        return Vec::new();
    };
    let Some(phases) = node.as_map() else {
        diags.error(
            node.pos,
            format!(
                "`phases` must be a mapping of phase names to phases, not {}",
                node.kind()
            ),
        );
        return Vec::new();
    };
    if phases.entries.is_empty() {
        diags.error(node.pos, "`phases` is empty: add a phase with `commands`");
    }
    let mut out = Vec::new();
    for e in &phases.entries {
        let name = e.key.as_str();
        if !PHASES.contains(&name) {
            if let Some(known) = crate::diag::did_you_mean(name, PHASES) {
                diags.error(
                    e.key_pos,
                    format!("unknown phase `{name}`; did you mean `{known}`?"),
                );
                continue;
            }
            if name.starts_with('.') || GLOBAL_KEYWORDS.contains(&name) {
                diags.error(
                    e.key_pos,
                    format!(
                        "a phase cannot be named `{name}`, which is a GitLab keyword or a hidden job"
                    ),
                );
                continue;
            }
        }
        let path = format!("phases:{name}");
        let Some(m) = e.value.as_map() else {
            diags.error(
                e.value.pos,
                format!(
                    "`{path}` must be a mapping with `commands`, not {}",
                    e.value.kind()
                ),
            );
            continue;
        };
        check_keys(m, &path, PHASE, PHASE_UNSUPPORTED, diags);
        let mut job = Map::default();
        match m.entry("commands") {
            Some(c) => {
                if let Some(script) = commands(&c.value, &format!("{path}:commands"), diags) {
                    job.insert("script".into(), c.key_pos, script);
                }
            }
            None => diags.error(e.key_pos, format!("`{path}` needs `commands`")),
        }
        if let Some(f) = m.entry("finally") {
            if let Some(after) = commands(&f.value, &format!("{path}:finally"), diags) {
                job.insert("after_script".into(), f.key_pos, after);
            }
        }
        if let Some(o) = m.entry("on-failure") {
            match o.value.as_str() {
                Some("ABORT") => {}
                Some("CONTINUE") => job.insert(
                    "allow_failure".into(),
                    o.key_pos,
                    Node::new(Value::Bool(true), o.value.pos),
                ),
                _ => diags.error(
                    o.value.pos,
                    format!(
                        "`{path}:on-failure` must be `ABORT` or `CONTINUE`, not {}",
                        shown(&o.value)
                    ),
                ),
            }
        }
        if !job.contains("script") {
            // Already reported; a job without a script would only be reported again.
            continue;
        }
        out.push(Phase {
            name: name.to_string(),
            key_pos: e.key_pos,
            value_pos: e.value.pos,
            job,
        });
    }
    // The known phases run in their fixed order; a build with other names runs as written.
    if out.iter().all(|p| PHASES.contains(&p.name.as_str())) {
        out.sort_by_key(|p| PHASES.iter().position(|k| *k == p.name));
    }
    out
}

/// A list of commands: a sequence of strings, kept as the script's nodes.
fn commands(n: &Node, path: &str, diags: &mut Diags) -> Option<Node> {
    strings(n, path, "commands", diags)
}

/// A list of paths: a sequence of strings.
fn paths(n: &Node, path: &str, diags: &mut Diags) -> Option<Node> {
    strings(n, path, "paths", diags)
}

/// A sequence of strings (`what` names them in the error), kept as it is.
fn strings(n: &Node, path: &str, what: &str, diags: &mut Diags) -> Option<Node> {
    let Some(items) = n.as_seq() else {
        diags.error(
            n.pos,
            format!("`{path}` must be a list of {what}, not {}", n.kind()),
        );
        return None;
    };
    let mut ok = true;
    for i in items {
        if i.as_str().is_none() {
            diags.error(
                i.pos,
                format!("each of `{path}` must be a string, not {}", i.kind()),
            );
            ok = false;
        }
    }
    ok.then(|| n.clone())
}

fn env(n: &Node, diags: &mut Diags) -> Option<Node> {
    let Some(m) = n.as_map() else {
        diags.error(n.pos, format!("`env` must be a mapping, not {}", n.kind()));
        return None;
    };
    check_keys(m, "env", ENV, ENV_UNSUPPORTED, diags);
    let v = m.get("variables")?;
    let Some(vars) = v.as_map() else {
        diags.error(
            v.pos,
            format!(
                "`env:variables` must be a mapping of names to values, not {}",
                v.kind()
            ),
        );
        return None;
    };
    let mut out = Map::default();
    for e in &vars.entries {
        if e.value.is_null() || e.value.scalar_string().is_none() {
            diags.error(
                e.value.pos,
                format!(
                    "variable `{}` must be a string, a number or a boolean, not {}",
                    e.key,
                    e.value.kind()
                ),
            );
            continue;
        }
        out.insert(e.key.clone(), e.key_pos, e.value.clone());
    }
    Some(Node::new(Value::Map(out), v.pos))
}

fn cache(n: &Node, diags: &mut Diags) -> Option<Node> {
    let Some(m) = n.as_map() else {
        diags.error(
            n.pos,
            format!("`cache` must be a mapping with `paths`, not {}", n.kind()),
        );
        return None;
    };
    check_keys(m, "cache", CACHE, &[], diags);
    let e = m.entry("paths")?;
    let p = paths(&e.value, "cache:paths", diags)?;
    let mut out = Map::default();
    out.insert("paths".into(), e.key_pos, p);
    Some(Node::new(Value::Map(out), n.pos))
}

fn artifacts(n: &Node, diags: &mut Diags) -> Option<Node> {
    let Some(m) = n.as_map() else {
        diags.error(
            n.pos,
            format!(
                "`artifacts` must be a mapping with `files`, not {}",
                n.kind()
            ),
        );
        return None;
    };
    check_keys(m, "artifacts", ARTIFACTS, ARTIFACTS_UNSUPPORTED, diags);
    let mut out = Map::default();
    match m.entry("files") {
        Some(e) => {
            if let Some(p) = paths(&e.value, "artifacts:files", diags) {
                out.insert("paths".into(), e.key_pos, p);
            }
        }
        None => diags.error(n.pos, "`artifacts` needs `files`"),
    }
    if let Some(e) = m.entry("exclude-paths") {
        if let Some(p) = paths(&e.value, "artifacts:exclude-paths", diags) {
            out.insert("exclude".into(), e.key_pos, p);
        }
    }
    if let Some(e) = m.entry("name") {
        if e.value.as_str().is_some() {
            out.insert("name".into(), e.key_pos, e.value.clone());
        } else {
            diags.error(
                e.value.pos,
                format!("`artifacts:name` must be a string, not {}", e.value.kind()),
            );
        }
    }
    out.contains("paths")
        .then(|| Node::new(Value::Map(out), n.pos))
}

/// Reports keys of `map` that are not `known`: the format's keys that Gantry does not support, and
/// unknown ones with a "did you mean".
fn check_keys(map: &Map, path: &str, known: &[&str], unsupported: &[&str], diags: &mut Diags) {
    let within = if path.is_empty() {
        String::new()
    } else {
        format!(" in `{path}`")
    };
    for e in &map.entries {
        let k = e.key.as_str();
        if known.contains(&k) {
            continue;
        }
        if unsupported.contains(&k) {
            diags.error(
                e.key_pos,
                format!("`{k}`{within} is not supported by Gantry"),
            );
        } else {
            let all: Vec<&str> = known.iter().chain(unsupported).copied().collect();
            diags.error(
                e.key_pos,
                format!("unknown key `{k}`{within}{}", hint(k, &all)),
            );
        }
    }
}

/// A scalar as written, for messages.
fn shown(n: &Node) -> String {
    match n.scalar_string() {
        Some(s) if !n.is_null() => format!("`{s}`"),
        _ => n.kind().to_string(),
    }
}

/// `gantry convert`: the `.gitlab-ci.yml` equivalent to the `build.yml` text `src` (read from the
/// file `name`), or every problem found, with positions.
///
/// # Errors
/// The errors found in `src`, as diagnostics in `name`.
pub fn convert(src: &str, name: &str) -> Result<String, Vec<crate::Diagnostic>> {
    let mut diags = Diags::default();
    let file = diags.add_file(name);
    let root = match crate::yaml::parse(src, file) {
        Ok(mut docs) if !docs.docs.is_empty() => docs.docs.remove(0),
        Ok(_) => Node::new(
            Value::Null,
            Pos {
                file,
                line: 1,
                col: 1,
            },
        ),
        Err(e) => {
            diags.error(e.pos, format!("invalid YAML: {}", e.message));
            return Err(diags.list);
        }
    };
    let tree = to_gitlab(&root, &mut diags);
    if diags.has_errors() {
        let mut errors: Vec<crate::Diagnostic> = diags
            .list
            .into_iter()
            .filter(|d| d.severity == crate::Severity::Error)
            .collect();
        errors.sort_by_key(|d| (d.line, d.column));
        return Err(errors);
    }
    Ok(crate::preview::to_yaml(&tree))
}
