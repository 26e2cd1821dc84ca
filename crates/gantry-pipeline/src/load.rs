//! From files to one expanded configuration tree: documents and `spec:inputs`, `include`, `extends`
//! and `!reference`, in GitLab's order (includes, then extends, then references).
//!
//! - `spec:inputs`: types, `options`, `regex`, defaults; `$[[ inputs.x | function ]]` interpolation
//!   with GitLab's functions, typed as a whole value, text inside a string; only in files with a
//!   `spec` header.
//! - `include`: local with GitLab's wildcards (`**` crosses directories, `*` does not); `rules` with
//!   the variables `include` may use; at most 150 files, nested ones and repeats counted;
//!   remote/project/template/component asked of `Sources::remote` by key, `project` with a list of
//!   files as one include per file. A local include inside a project or component file is that
//!   project's file at that ref or version (`Sources::nested_local`), and an error inside a remote
//!   file or a template, as in GitLab.
//! - `extends`: deep merge, several parents, 11 levels; `!reference`: spliced into lists, 10 levels.

use std::collections::{HashMap, HashSet};

use crate::context::{Context, Sources};
use crate::diag::Diags;
use crate::expr;
use crate::plan::Variable;
use crate::vars;
use crate::yaml::{self, Map, Node, Pos, Value};

/// The most files one pipeline may include, nested ones and repeats counted, as in GitLab.
const MAX_INCLUDES: usize = 150;
/// How many `extends` may have, as in GitLab.
const MAX_EXTENDS_DEPTH: usize = 11;
/// How many `!reference` hops may chain, as in GitLab.
const MAX_REFERENCE_DEPTH: usize = 10;
/// How many functions one interpolation block may chain, as in GitLab.
const MAX_FUNCTIONS: usize = 3;
/// How many `options` one input may list, as in GitLab.
const MAX_OPTIONS: usize = 50;

/// Top-level keys that are not jobs.
pub const GLOBAL_KEYWORDS: &[&str] = &[
    "default",
    "include",
    "stages",
    "variables",
    "workflow",
    "image",
    "services",
    "cache",
    "before_script",
    "after_script",
    "spec",
];

/// Whether the top-level key `key` holding `value` is a keyword rather than a job: one of
/// [`GLOBAL_KEYWORDS`], or Gantry's `notify:` section, which is a list; a mapping under `notify`
/// is a job of that name, as in GitLab, where `notify` is no keyword.
#[must_use]
pub fn is_global(key: &str, value: &crate::yaml::Node) -> bool {
    GLOBAL_KEYWORDS.contains(&key) || (key == "notify" && value.as_map().is_none())
}

/// Loads `ctx.file` and everything it includes, then resolves `extends` and `!reference`.
/// Problems are recorded in `diags`; the returned tree is as complete as the input allows.
pub fn load(sources: &dyn Sources, ctx: &Context, diags: &mut Diags) -> Node {
    let mut loader = Loader {
        sources,
        ctx,
        diags,
        count: 0,
        over_limit: false,
        stack: Vec::new(),
        predefined: crate::context::predefined_variables(ctx),
    };
    let root = loader.file(&ctx.file, None, Pos::default(), &Given(None));
    let mut root = root.unwrap_or_else(|| Node::new(Value::Map(Map::default()), Pos::default()));
    if root.is_null() {
        root = Node::new(Value::Map(Map::default()), root.pos);
    }
    if root.as_map().is_none() {
        diags.error(
            root.pos,
            format!(
                "the pipeline must be a mapping of keywords and jobs, not {}",
                root.kind()
            ),
        );
        return Node::new(Value::Map(Map::default()), root.pos);
    }
    // GitLab resolves `!reference` where it can before `extends` merges templates (a template whose
    // `variables` is a reference still merges key by key), and what needs inherited keys after it.
    resolve_references(&mut root, diags, true);
    resolve_extends(&mut root, diags);
    resolve_references(&mut root, diags, false);
    root
}

/// Whether a file name of the loader is a remote include's key rather than a path of this project.
fn is_remote_key(name: &str) -> bool {
    ["remote:", "project:", "template:", "component:"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// A remote include's key as the include says it: `include:project` `group/p` file `ci.yml`.
fn describe_key(key: &str) -> String {
    let (kind, target) = key.split_once(':').unwrap_or((key, ""));
    match (kind, target.split_once('@')) {
        ("project", Some((project, rest))) => {
            let (git_ref, file) = rest.split_once(':').unwrap_or((rest, ""));
            format!("include:project` `{project}` ref `{git_ref}` file `{file}")
        }
        _ => format!("include:{kind}` `{target}"),
    }
}

/// The `inputs` an `include` gives the file it includes (`None`: the include has no `inputs`).
struct Given<'a>(Option<&'a Node>);

struct Loader<'a> {
    sources: &'a dyn Sources,
    ctx: &'a Context,
    diags: &'a mut Diags,
    /// Files included so far, nested ones and repeats counted; the pipeline file is not.
    count: usize,
    /// Set once the include limit is reported: nothing more is included.
    over_limit: bool,
    /// The files whose includes are being resolved, outermost first, with their inputs.
    stack: Vec<(String, String)>,
    /// The predefined variables (those of the pipeline, not of a job).
    predefined: Vec<Variable>,
}

impl Loader<'_> {
    /// Reads one file (or remote content), applies its inputs, and merges its includes under it.
    fn file(
        &mut self,
        name: &str,
        content: Option<String>,
        at: Pos,
        inputs: &Given<'_>,
    ) -> Option<Node> {
        let included = !self.stack.is_empty();
        if included {
            if self.over_limit {
                return None;
            }
            // The same file with the same inputs inside itself: GitLab includes it again and
            // again until the limit stops it. Say so now, and why.
            let key = inputs.0.map(node_text).unwrap_or_default();
            if let Some(i) = self.stack.iter().rposition(|(n, k)| n == name && *k == key) {
                let chain: Vec<&str> = self.stack[i..]
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .chain([name])
                    .collect();
                self.limit_reached(
                    at,
                    &format!("`{name}` includes itself: {}", chain.join(" -> ")),
                );
                return None;
            }
            self.count += 1;
            if self.count > MAX_INCLUDES {
                self.limit_reached(at, "");
                return None;
            }
        }
        let src = match content {
            Some(c) => c,
            None => match self.sources.read(name) {
                Ok(c) => c,
                Err(e) => {
                    if included {
                        self.diags.incomplete = true;
                        self.diags
                            .error(at, format!("local include `{name}` not found: {e}"));
                    } else {
                        self.diags.error(at, format!("cannot read `{name}`: {e}"));
                    }
                    return None;
                }
            },
        };
        let file = self.diags.add_file(name);
        let docs = match yaml::parse(&src, file) {
            Ok(d) => d,
            Err(e) => {
                self.diags.incomplete |= included;
                self.diags
                    .error(e.pos, format!("invalid YAML: {}", e.message));
                return None;
            }
        };
        for d in &docs.duplicates {
            self.diags.warning(
                d.pos,
                format!("duplicate key `{}`: the last value wins", d.key),
            );
        }
        let mut docs = docs.docs;
        // The pipeline file itself may be a Yunxiao / CodeBuild `build.yml`: translated, it is a
        // `.gitlab-ci.yml` tree like any other (no includes, inputs or extends of its own).
        if self.stack.is_empty()
            && docs
                .first()
                .is_some_and(|d| crate::buildyml::is_buildyml(name, d))
        {
            return Some(crate::buildyml::to_gitlab(&docs[0], self.diags));
        }
        let start = Pos {
            file,
            line: 1,
            col: 1,
        };
        let empty = |pos| Node::new(Value::Map(Map::default()), pos);
        // A file with a `spec` header: the first document is the header, the second the content.
        let is_header = |n: &Node| n.as_map().is_some_and(|m| m.contains("spec"));
        let (header, mut body) = match docs.len() {
            0 => (None, empty(start)),
            1 if docs[0].as_map().is_some_and(|m| m.entries.len() == 1) && is_header(&docs[0]) => {
                let h = docs.remove(0);
                let pos = h.pos;
                (Some(h), empty(pos))
            }
            1 => (None, docs.remove(0)),
            _ => {
                let first = docs.remove(0);
                if is_header(&first) {
                    (Some(first), docs.remove(0))
                } else {
                    (None, first)
                }
            }
        };
        if body.is_null() {
            body = empty(body.pos);
        }
        match &header {
            Some(h) => {
                if let Some(values) = self.inputs(name, h, inputs.0, included.then_some(at)) {
                    let lookup = |n: &str| self.variable(n);
                    let mut i = Interpolation {
                        file: name,
                        values: &values,
                        lookup: &lookup,
                        errors: Vec::new(),
                    };
                    i.node(&mut body);
                    for (pos, message) in i.errors {
                        self.diags.error(pos, message);
                    }
                }
            }
            None => {
                if let Some(given) = inputs.0 {
                    self.diags.error(
                        given.pos,
                        format!("`{name}`: given inputs not defined in the `spec` section of the included configuration file"),
                    );
                }
            }
        }
        let Some(map) = body.as_map_mut() else {
            if !included {
                return Some(body);
            }
            self.diags.error(
                body.pos,
                format!("included file `{name}` must be a mapping"),
            );
            return None;
        };
        let include = map.remove("include");
        let Some(include) = include else {
            return Some(body);
        };
        let key = inputs.0.map(node_text).unwrap_or_default();
        self.stack.push((name.to_string(), key));
        let mut merged = Node::new(Value::Map(Map::default()), body.pos);
        for inc in include_items(&include) {
            if let Some(node) = self.include(inc) {
                deep_merge(&mut merged, node);
            }
        }
        self.stack.pop();
        deep_merge(&mut merged, body);
        Some(merged)
    }

    fn limit_reached(&mut self, at: Pos, why: &str) {
        self.over_limit = true;
        self.diags.incomplete = true;
        let why = if why.is_empty() {
            String::new()
        } else {
            format!(": {why}")
        };
        self.diags.error(
            at,
            format!("maximum of {MAX_INCLUDES} nested includes are allowed{why}"),
        );
    }

    /// Checks `spec:inputs` of file `name` and the `given` values against each other; returns
    /// the value of every input, or `None` when something is wrong (each problem is reported).
    /// `at` is the include (`None` for the pipeline file, whose missing inputs are reported at
    /// their declaration).
    fn inputs(
        &mut self,
        name: &str,
        header: &Node,
        given: Option<&Node>,
        at: Option<Pos>,
    ) -> Option<HashMap<String, Node>> {
        let mut ok = true;
        let mut error = |diags: &mut Diags, pos: Pos, msg: String| {
            diags.error(pos, format!("`{name}`: {msg}"));
            ok = false;
        };
        let spec = header.as_map().and_then(|m| m.get("spec"));
        let empty = Map::default();
        let declared: &Map = match spec.map(|s| &s.value) {
            Some(Value::Map(s)) => {
                for e in &s.entries {
                    if !["inputs", "include", "component"].contains(&e.key.as_str()) {
                        let hint = crate::diag::hint(&e.key, &["inputs", "include", "component"]);
                        error(
                            self.diags,
                            e.key_pos,
                            format!("unknown keyword `spec:{}`{hint}", e.key),
                        );
                    }
                }
                match s.get("inputs").map(|i| &i.value) {
                    Some(Value::Map(m)) => m,
                    None | Some(Value::Null) => &empty,
                    Some(_) => {
                        let pos = s.get("inputs").map_or(header.pos, |i| i.pos);
                        error(self.diags, pos, "`spec:inputs` must be a mapping".into());
                        &empty
                    }
                }
            }
            Some(Value::Null) | None => &empty,
            Some(_) => {
                error(
                    self.diags,
                    spec.map_or(header.pos, |s| s.pos),
                    "`spec` must be a mapping".into(),
                );
                &empty
            }
        };
        let given_map: Option<&Map> = match given {
            None => None,
            Some(g) => match &g.value {
                Value::Map(m) => Some(m),
                Value::Null => None,
                _ => {
                    error(
                        self.diags,
                        g.pos,
                        "`include:inputs` must be a mapping".into(),
                    );
                    None
                }
            },
        };
        if let Some(g) = given_map {
            let names: Vec<&str> = declared.entries.iter().map(|e| e.key.as_str()).collect();
            for e in &g.entries {
                if !declared.contains(&e.key) {
                    let list = if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    };
                    error(
                        self.diags,
                        e.key_pos,
                        format!(
                            "unknown input arguments: `{}` (the file declares: {list})",
                            e.key
                        ),
                    );
                }
            }
        }
        let mut values = HashMap::new();
        for e in &declared.entries {
            let spec = match InputSpec::parse(&e.key, &e.value) {
                Ok(s) => s,
                Err(problems) => {
                    for (pos, msg) in problems {
                        error(self.diags, pos, msg);
                    }
                    continue;
                }
            };
            let mut problems = spec.problems();
            let provided = given_map
                .and_then(|g| g.get(&e.key))
                .filter(|v| !v.is_null());
            let value = match (provided, &spec.default) {
                (Some(v), _) => {
                    if let Some(d) = &spec.default {
                        problems.extend(spec.check(d, "default"));
                    }
                    problems.extend(spec.check(v, "provided"));
                    v.clone()
                }
                (None, Some(d)) => {
                    problems.extend(spec.check(d, "default"));
                    d.clone()
                }
                (None, None) if spec.optional => Node::new(Value::Null, e.key_pos),
                (None, None) => {
                    problems.push((
                        at.unwrap_or(e.key_pos),
                        "required value has not been provided".into(),
                    ));
                    Node::new(Value::Null, e.key_pos)
                }
            };
            for (pos, msg) in problems {
                error(self.diags, pos, format!("`{}` input: {msg}", e.key));
            }
            values.insert(e.key.clone(), spec.normalize(value));
        }
        ok.then_some(values)
    }

    fn include(&mut self, inc: &Node) -> Option<Node> {
        let pos = inc.pos;
        let (kind, target, map) = match &inc.value {
            Value::Str(s) => {
                let kind = if s.starts_with("https://") || s.starts_with("http://") {
                    "remote"
                } else {
                    "local"
                };
                (kind, s.clone(), None)
            }
            Value::Map(m) => {
                let kinds = ["local", "remote", "project", "template", "component"];
                let Some(k) = kinds.iter().find(|k| m.contains(k)) else {
                    self.diags.error(pos, "an include needs one of `local`, `remote`, `project`, `template` or `component`");
                    return None;
                };
                let Some(t) = m.get(k).and_then(Node::scalar_string) else {
                    self.diags
                        .error(pos, format!("`include:{k}` must be a string"));
                    return None;
                };
                (*k, t, Some(m))
            }
            _ => {
                self.diags.error(
                    pos,
                    format!(
                        "an include must be a string or a mapping, not {}",
                        inc.kind()
                    ),
                );
                return None;
            }
        };
        if let Some(rules) = map.and_then(|m| m.get("rules")) {
            if !self.include_rules(rules) {
                return None;
            }
        }
        let inputs = Given(map.and_then(|m| m.get("inputs")));
        let target = vars::expand(&target, &|n| self.lookup(n));
        match kind {
            "local" => {
                if target.starts_with("./") || target.starts_with("../") || target.contains("/../")
                {
                    self.diags.error(
                        pos,
                        format!("local include `{target}`: paths are relative to the project root, like `/ci/jobs.yml`; `.` and `..` are not allowed"),
                    );
                    return None;
                }
                let path = target.trim_start_matches('/').to_string();
                // Inside a remote include, a local include is read where that file came from.
                let parent = self
                    .stack
                    .last()
                    .map(|(n, _)| n.clone())
                    .filter(|n| is_remote_key(n));
                if let Some(parent) = parent {
                    match self.sources.nested_local(&parent, &path) {
                        Ok(None) => {}
                        Err(why) => {
                            self.diags.error(
                                pos,
                                format!(
                                    "local include `{target}` in `{}`: {why}",
                                    describe_key(&parent)
                                ),
                            );
                            return None;
                        }
                        Ok(Some(_)) if path.contains('*') => {
                            self.diags.error(
                                pos,
                                format!("local include `{target}` in `{}`: a wildcard cannot be listed in another project; name the files", describe_key(&parent)),
                            );
                            return None;
                        }
                        Ok(Some(key)) => {
                            if !is_yaml(&path) {
                                self.diags.error(
                                    pos,
                                    format!("local include `{path}` must be a .yml or .yaml file"),
                                );
                                return None;
                            }
                            let what =
                                format!("local include `{target}` in `{}`", describe_key(&parent));
                            let mut merged = Node::new(Value::Map(Map::default()), pos);
                            self.remote_file(&key, &what, pos, &inputs, &mut merged);
                            return Some(merged);
                        }
                    }
                }
                if path.contains('*') {
                    let re = wildcard(&path);
                    let mut files: Vec<String> = self
                        .sources
                        .files()
                        .iter()
                        .filter(|f| re.is_match(f))
                        .cloned()
                        .collect();
                    files.sort();
                    let mut merged = Node::new(Value::Map(Map::default()), pos);
                    for f in files {
                        if !is_yaml(&f) {
                            self.diags.error(
                                pos,
                                format!("local include `{f}` (matched by `{path}`) must be a .yml or .yaml file"),
                            );
                            continue;
                        }
                        if let Some(n) = self.file(&f, None, pos, &inputs) {
                            deep_merge(&mut merged, n);
                        }
                    }
                    return Some(merged);
                }
                if !is_yaml(&path) {
                    self.diags.error(
                        pos,
                        format!("local include `{path}` must be a .yml or .yaml file"),
                    );
                    return None;
                }
                self.file(&path, None, pos, &inputs)
            }
            other => {
                // `include:project` with `file` as a list is one include per file.
                let items: Vec<(String, String, Pos)> = match (other, map) {
                    ("project", Some(m)) => {
                        let r = m.get("ref").and_then(Node::scalar_string).map_or_else(
                            || "HEAD".into(),
                            |r| vars::expand(&r, &|n| self.lookup(n)),
                        );
                        let Some(f) = m.get("file") else {
                            self.diags.error(pos, "`include:project` needs a `file`");
                            return None;
                        };
                        let files: Option<Vec<(String, Pos)>> = match &f.value {
                            Value::Seq(list) => list
                                .iter()
                                .map(|i| i.scalar_string().map(|s| (s, i.pos)))
                                .collect(),
                            _ => f.scalar_string().map(|s| vec![(s, pos)]),
                        };
                        let Some(files) = files else {
                            self.diags.error(
                                f.pos,
                                "`include:file` must be a string or a list of strings",
                            );
                            return None;
                        };
                        files
                            .into_iter()
                            .map(|(f, at)| {
                                let f = vars::expand(&f, &|n| self.lookup(n));
                                (
                                    format!("project:{target}@{r}:{f}"),
                                    format!(" file `{f}`"),
                                    at,
                                )
                            })
                            .collect()
                    }
                    _ => vec![(format!("{other}:{target}"), String::new(), pos)],
                };
                let mut merged = Node::new(Value::Map(Map::default()), pos);
                for (key, what, at) in items {
                    let what = format!("`include:{other}` `{target}`{what}");
                    self.remote_file(&key, &what, at, &inputs, &mut merged);
                }
                Some(merged)
            }
        }
    }

    /// Merges the remote include `key` (`what` names it in errors) into `merged`, or says why it
    /// is not available.
    fn remote_file(
        &mut self,
        key: &str,
        what: &str,
        at: Pos,
        inputs: &Given<'_>,
        merged: &mut Node,
    ) {
        if let Some(content) = self.sources.remote(key) {
            if let Some(n) = self.file(key, Some(content), at, inputs) {
                deep_merge(merged, n);
            }
            return;
        }
        let message = match self.sources.remote_unavailable(key) {
            Some(why) => format!("{what}: {why}"),
            None => {
                format!("{what} is not available offline: it is not in the local include cache")
            }
        };
        self.diags.incomplete = true;
        self.diags.error(at, message);
    }

    /// Whether an include with these `rules` is included: the first rule that matches decides
    /// (`when: never` leaves it out); no match leaves it out. Invalid rules are errors.
    fn include_rules(&mut self, rules: &Node) -> bool {
        let Some(list) = rules.as_seq() else {
            self.diags
                .error(rules.pos, "`include:rules` must be an array of rules");
            return false;
        };
        if list.is_empty() {
            self.diags
                .error(rules.pos, "`include:rules` can't be blank");
            return false;
        }
        const KEYS: &[&str] = &["if", "exists", "changes", "when"];
        let mut valid = true;
        for r in list {
            let Some(m) = r.as_map() else {
                self.diags
                    .error(r.pos, "`include:rules`: each rule must be a mapping");
                valid = false;
                continue;
            };
            for e in &m.entries {
                if !KEYS.contains(&e.key.as_str()) {
                    self.diags.error(
                        e.key_pos,
                        format!(
                            "`include:rules`: unknown keyword `{}` (allowed: if, exists, changes, when)",
                            e.key
                        ),
                    );
                    valid = false;
                }
            }
            if let Some(w) = m.get("when") {
                if !matches!(w.as_str(), Some("never" | "always")) {
                    let what = w.scalar_string().unwrap_or_else(|| w.kind().to_string());
                    self.diags.error(
                        w.pos,
                        format!(
                            "`include:rules`: `when` must be `never` or `always`, not `{what}`"
                        ),
                    );
                    valid = false;
                }
            }
            if let Some(cond) = m.get("if") {
                match cond.as_str() {
                    None => {
                        self.diags
                            .error(cond.pos, "`include:rules`: `if` must be a string");
                        valid = false;
                    }
                    Some(text) => {
                        if let Err(e) = expr::parse(text) {
                            let mut p = cond.pos;
                            p.col += u32::try_from(e.offset).unwrap_or(0);
                            self.diags.error(
                                p,
                                format!(
                                    "invalid `include:rules:if` expression `{text}`: {}",
                                    e.message
                                ),
                            );
                            valid = false;
                        }
                    }
                }
            }
        }
        if !valid {
            return false;
        }
        for m in list.iter().filter_map(Node::as_map) {
            let mut matched = true;
            if let Some(text) = m.get("if").and_then(Node::as_str) {
                matched &= expr::parse(text).is_ok_and(|e| e.eval(&|n| self.lookup(n)));
            }
            if let Some(ch) = m.get("changes") {
                matched = matched && self.include_changes(ch);
            }
            if let Some(ex) = m.get("exists") {
                matched = matched && self.include_exists(ex);
            }
            if matched {
                return m.get("when").and_then(Node::as_str) != Some("never");
            }
        }
        false
    }

    /// `include:rules:changes`: a list of paths, or `{paths, compare_to}`.
    fn include_changes(&self, n: &Node) -> bool {
        let paths = n.as_map().and_then(|m| m.get("paths")).unwrap_or(n);
        let pats: Vec<String> = string_list(paths)
            .iter()
            .map(|p| vars::expand(p, &|v| self.lookup(v)))
            .collect();
        let Some(changed) = self.sources.changed_files() else {
            return true;
        };
        pats.iter()
            .any(|p| rule_glob(p).is_some_and(|g| changed.iter().any(|f| g.is_match(f))))
    }

    /// `include:rules:exists`: a list of paths, or `{paths, project, ref}`. Another project's files
    /// cannot be seen from here: such a rule does not match, with a warning.
    fn include_exists(&mut self, n: &Node) -> bool {
        let (paths, project) = match n.as_map() {
            Some(m) => (
                m.get("paths"),
                m.get("project")
                    .and_then(Node::scalar_string)
                    .map(|p| vars::expand(&p, &|v| self.lookup(v))),
            ),
            None => (Some(n), None),
        };
        if let Some(p) = project {
            if Some(p.as_str()) != self.lookup("CI_PROJECT_PATH").as_deref() {
                self.diags.warning(
                    n.pos,
                    format!("`rules:exists` in project `{p}` cannot be checked offline: the rule does not match"),
                );
                return false;
            }
        }
        let pats: Vec<String> = paths
            .map(string_list)
            .unwrap_or_default()
            .iter()
            .map(|p| vars::expand(p, &|v| self.lookup(v)))
            .collect();
        pats.iter().any(|p| {
            rule_glob(p).is_some_and(|g| self.sources.files().iter().any(|f| g.is_match(f)))
        })
    }

    /// A variable that `include` may use: the caller's (`--variable`), else a predefined one.
    fn variable(&self, name: &str) -> Option<(String, bool)> {
        self.ctx
            .cli_variables
            .iter()
            .rev()
            .find(|v| v.key == name)
            .or_else(|| self.predefined.iter().find(|v| v.key == name))
            .map(|v| (v.value.clone(), v.masked))
    }

    fn lookup(&self, name: &str) -> Option<String> {
        self.variable(name).map(|(v, _)| v)
    }
}

/// The files an `include:local` wildcard names, as GitLab matches them: `**` is anything (slashes
/// too), `*` is anything but a slash, every other character stands for itself.
fn wildcard(path: &str) -> regex::Regex {
    let re = regex::escape(path)
        .replace(r"\*\*", ".*?")
        .replace(r"\*", "[^/]*?");
    regex::Regex::new(&format!("^{re}$")).expect("an escaped path is a valid expression")
}

/// Whether `path` names a YAML file (`.yml` or `.yaml`, in any case), as `include` requires.
fn is_yaml(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    [".yml", ".yaml"]
        .iter()
        .any(|ext| base.len() > ext.len() && base.ends_with(ext))
}

/// A `rules:exists` / `rules:changes` pattern, relative to the project root (a leading `./` or `/`
/// is dropped), where `*` stays within one path segment. Job rules and include rules share it.
pub(crate) fn rule_glob(p: &str) -> Option<globset::GlobMatcher> {
    let p = p.trim_start_matches("./").trim_start_matches('/');
    globset::GlobBuilder::new(p)
        .literal_separator(true)
        .build()
        .ok()
        .map(|g| g.compile_matcher())
}

fn include_items(n: &Node) -> Vec<&Node> {
    match &n.value {
        Value::Seq(items) => items.iter().collect(),
        Value::Null => Vec::new(),
        _ => vec![n],
    }
}

/// The strings of a string or a list of strings.
pub fn string_list(n: &Node) -> Vec<String> {
    match &n.value {
        Value::Seq(items) => items.iter().filter_map(Node::scalar_string).collect(),
        Value::Null => Vec::new(),
        _ => n.scalar_string().into_iter().collect(),
    }
}

/// Deep-merges `over` into `base`: mappings merge key by key, anything else is replaced.
pub fn deep_merge(base: &mut Node, over: Node) {
    match (&mut base.value, over.value) {
        (Value::Map(b), Value::Map(o)) => {
            for e in o.entries {
                match b.entries.iter_mut().find(|x| x.key == e.key) {
                    Some(x) => deep_merge(&mut x.value, e.value),
                    None => b.entries.push(e),
                }
            }
        }
        (_, v) => {
            base.value = v;
            base.pos = over.pos;
            base.tag = over.tag;
        }
    }
}

// --- spec:inputs --------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum InputType {
    String,
    Number,
    Boolean,
    Array,
}

impl InputType {
    fn name(self) -> &'static str {
        match self {
            InputType::String => "string",
            InputType::Number => "number",
            InputType::Boolean => "boolean",
            InputType::Array => "array",
        }
    }
}

/// One input of `spec:inputs`.
struct InputSpec<'a> {
    ty: InputType,
    /// The default, unless there is none or it is `null`.
    default: Option<Node>,
    /// Whether the input may be left out: it has a `default` (`null` too) or rules that give one.
    optional: bool,
    /// `options` and the position of its key.
    options: Option<(&'a [Node], Pos)>,
    /// `regex`: the expression, its compiled form, and the positions of its key and value.
    regex: Option<(&'a str, Option<regex::Regex>, Pos, Pos)>,
}

impl<'a> InputSpec<'a> {
    const KEYS: &'static [&'static str] = &[
        "default",
        "description",
        "options",
        "regex",
        "type",
        "rules",
    ];

    /// Reads the specification of input `name`; every problem is a positioned message.
    fn parse(name: &str, n: &'a Node) -> Result<InputSpec<'a>, Vec<(Pos, String)>> {
        let mut spec = InputSpec {
            ty: InputType::String,
            default: None,
            optional: false,
            options: None,
            regex: None,
        };
        let m = match &n.value {
            Value::Null => return Ok(spec),
            Value::Map(m) => m,
            _ => {
                return Err(vec![(
                    n.pos,
                    format!(
                        "`{name}` input: the specification must be a mapping, not {}",
                        n.kind()
                    ),
                )]);
            }
        };
        let mut errs = Vec::new();
        for e in &m.entries {
            if !Self::KEYS.contains(&e.key.as_str()) {
                let hint = crate::diag::hint(&e.key, Self::KEYS);
                errs.push((
                    e.key_pos,
                    format!("`{name}` input: unknown keyword `{}`{hint}", e.key),
                ));
            }
        }
        if let Some(t) = m.get("type") {
            spec.ty = match t.as_str() {
                Some("string") => InputType::String,
                Some("number") => InputType::Number,
                Some("boolean") => InputType::Boolean,
                Some("array") => InputType::Array,
                _ => {
                    errs.push((
                        t.pos,
                        format!("unknown input specification for `{name}` (valid types: array, boolean, number, string)"),
                    ));
                    InputType::String
                }
            };
        }
        if let Some(d) = m.get("description") {
            if !matches!(d.value, Value::Str(_)) {
                errs.push((
                    d.pos,
                    format!("`{name}` input: `description` must be a string"),
                ));
            }
        }
        if let Some(d) = m.get("default") {
            spec.optional = true;
            spec.default = (!d.is_null()).then(|| d.clone());
        }
        if let Some(rules) = m.get("rules").and_then(Node::as_seq) {
            // A rule with a `default`, or a last rule without `if`, gives the input a value.
            spec.optional |= rules
                .iter()
                .filter_map(Node::as_map)
                .any(|r| r.contains("default") || !r.contains("if"));
        }
        if let Some(e) = m.entry("options") {
            match e.value.as_seq() {
                Some(opts) if opts.len() > MAX_OPTIONS => errs.push((
                    e.value.pos,
                    format!("`{name}` input: at most {MAX_OPTIONS} options are allowed"),
                )),
                Some(opts) => spec.options = Some((opts, e.key_pos)),
                None => errs.push((
                    e.value.pos,
                    format!("`{name}` input: `options` must be an array"),
                )),
            }
        }
        if let Some(e) = m.entry("regex") {
            match e.value.as_str() {
                Some(re) => {
                    spec.regex = Some((re, regex::Regex::new(re).ok(), e.key_pos, e.value.pos));
                }
                None => errs.push((
                    e.value.pos,
                    format!("`{name}` input: `regex` must be a string"),
                )),
            }
        }
        if errs.is_empty() { Ok(spec) } else { Err(errs) }
    }

    /// Problems of the specification itself, whatever the value.
    fn problems(&self) -> Vec<(Pos, String)> {
        let mut out = Vec::new();
        if let Some((_, key)) = self.options {
            if !matches!(self.ty, InputType::String | InputType::Number) {
                out.push((
                    key,
                    "options can only be used with string and number inputs".to_string(),
                ));
            }
        }
        if let Some((re, compiled, key, value)) = &self.regex {
            if self.ty != InputType::String {
                out.push((
                    *key,
                    "RegEx validation can only be used with string inputs".to_string(),
                ));
            } else if compiled.is_none() {
                out.push((*value, format!("invalid regular expression `{re}`")));
            }
        }
        out
    }

    /// Checks a `default` or `provided` value against the type, `options` and `regex`.
    fn check(&self, v: &Node, which: &str) -> Vec<(Pos, String)> {
        let ok = match self.ty {
            InputType::String => !matches!(v.value, Value::Seq(_) | Value::Map(_)),
            InputType::Number => matches!(v.value, Value::Int(_) | Value::Float(_)),
            InputType::Boolean => matches!(v.value, Value::Bool(_)),
            InputType::Array => matches!(v.value, Value::Seq(_)),
        };
        if !ok {
            let article = if self.ty == InputType::Array {
                "an"
            } else {
                "a"
            };
            return vec![(
                v.pos,
                format!("{which} value is not {article} {}", self.ty.name()),
            )];
        }
        let mut out = Vec::new();
        let text = to_text(&v.value);
        if let Some((opts, _)) = self.options {
            let allowed = match self.ty {
                InputType::String => opts
                    .iter()
                    .any(|o| o.scalar_string().is_some_and(|s| s == text)),
                InputType::Number => opts.iter().any(|o| number(o) == number(v)),
                _ => true,
            };
            if !allowed {
                let list: Vec<String> = opts.iter().map(|o| to_text(&o.value)).collect();
                out.push((
                    v.pos,
                    format!(
                        "`{text}` cannot be used because it is not in the list of allowed options ({})",
                        list.join(", ")
                    ),
                ));
            }
        }
        if let Some((re, Some(compiled), _, _)) = &self.regex {
            if self.ty == InputType::String && !compiled.is_match(&text) {
                out.push((
                    v.pos,
                    format!("{which} value does not match required RegEx pattern `{re}`"),
                ));
            }
        }
        out
    }

    /// The value as interpolated: a string input is always a string (`null` is empty).
    fn normalize(&self, v: Node) -> Node {
        match (&self.ty, &v.value) {
            (InputType::String, Value::Str(_)) | (_, Value::Seq(_) | Value::Map(_)) => v,
            (InputType::String, other) => Node {
                value: Value::Str(to_text(other)),
                ..v
            },
            _ => v,
        }
    }
}

fn number(n: &Node) -> Option<f64> {
    match n.value {
        #[allow(clippy::cast_precision_loss)]
        Value::Int(i) => Some(i as f64),
        Value::Float(f) => Some(f),
        _ => None,
    }
}

// --- interpolation ------------------------------------------------------------------------------

/// `$[[ inputs.NAME | function | ... ]]` blocks, as GitLab finds them.
static BLOCK: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"\$\[\[\s*(\S.*?\S)\s*\]\]").expect("a valid expression")
});

/// What `truncate(offset,length)` looks like.
static TRUNCATE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"^truncate\(\s*(\d+)\s*,\s*(\d+)\s*\)?$").expect("a valid expression")
});

/// Replaces the `$[[ inputs.NAME ]]` blocks of one file's content with the inputs' values. A
/// string that is exactly one block takes the value with its type (an array input becomes a
/// list); inside a longer string a value is rendered as text. Other blocks (`$[[ matrix.X ]]`)
/// are left for whoever knows them.
struct Interpolation<'a> {
    file: &'a str,
    values: &'a HashMap<String, Node>,
    /// A variable's value and whether it is masked, for `expand_vars`.
    lookup: &'a dyn Fn(&str) -> Option<(String, bool)>,
    errors: Vec<(Pos, String)>,
}

enum Rendered {
    Whole(Value),
    Text(String),
}

enum Function {
    ExpandVars,
    Truncate(usize, usize),
    PosixEscape,
}

impl Interpolation<'_> {
    fn node(&mut self, n: &mut Node) {
        match &mut n.value {
            Value::Str(s) if s.contains("$[[") => match self.string(s) {
                Ok(Rendered::Whole(v)) => n.value = v,
                Ok(Rendered::Text(t)) => *s = t,
                Err(msg) => self.errors.push((n.pos, format!("`{}`: {msg}", self.file))),
            },
            Value::Seq(items) => {
                for i in items {
                    self.node(i);
                }
            }
            Value::Map(m) => {
                for e in &mut m.entries {
                    if e.key.contains("$[[") {
                        match self.string(&e.key) {
                            Ok(Rendered::Whole(v)) => e.key = to_text(&v),
                            Ok(Rendered::Text(t)) => e.key = t,
                            Err(msg) => self
                                .errors
                                .push((e.key_pos, format!("`{}`: {msg}", self.file))),
                        }
                    }
                    self.node(&mut e.value);
                }
            }
            _ => {}
        }
    }

    fn string(&self, s: &str) -> Result<Rendered, String> {
        let blocks: Vec<(std::ops::Range<usize>, &str)> = BLOCK
            .captures_iter(s)
            .filter_map(|c| Some((c.get(0)?.range(), c.get(1)?.as_str())))
            .collect();
        if let [(range, data)] = &blocks[..] {
            if range.start == 0 && range.end == s.len() {
                return Ok(match self.block(data)? {
                    Some(v) => Rendered::Whole(v),
                    None => Rendered::Text(s.to_string()),
                });
            }
        }
        let mut out = String::with_capacity(s.len());
        let mut last = 0;
        for (range, data) in blocks {
            out.push_str(&s[last..range.start]);
            match self.block(data)? {
                Some(v) => out.push_str(&to_text(&v)),
                None => out.push_str(&s[range.clone()]),
            }
            last = range.end;
        }
        out.push_str(&s[last..]);
        Ok(Rendered::Text(out))
    }

    /// The value of one block; `None` for a block that is not about inputs.
    fn block(&self, data: &str) -> Result<Option<Value>, String> {
        let mut parts = data.split('|').map(str::trim);
        let access = parts.next().unwrap_or_default();
        let functions: Vec<&str> = parts.collect();
        let Some(name) = access.strip_prefix("inputs.") else {
            return Ok(None);
        };
        let Some(v) = self.values.get(name) else {
            return Err(format!("unknown interpolation key: `{name}`"));
        };
        if functions.len() > MAX_FUNCTIONS {
            return Err(format!(
                "too many functions in interpolation block (at most {MAX_FUNCTIONS})"
            ));
        }
        let stack = functions
            .iter()
            .map(|f| {
                Function::parse(f).ok_or_else(|| {
                    format!("no function matching `{f}`: check that the function name, arguments, and types are correct")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut value = v.value.clone();
        for f in stack {
            value = f.apply(value, self.lookup)?;
        }
        Ok(Some(value))
    }
}

impl Function {
    fn parse(f: &str) -> Option<Function> {
        match f {
            "expand_vars" => Some(Function::ExpandVars),
            "posix_escape" => Some(Function::PosixEscape),
            _ => {
                let c = TRUNCATE.captures(f)?;
                Some(Function::Truncate(c[1].parse().ok()?, c[2].parse().ok()?))
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Function::ExpandVars => "expand_vars",
            Function::Truncate(..) => "truncate",
            Function::PosixEscape => "posix_escape",
        }
    }

    fn apply(
        &self,
        v: Value,
        lookup: &dyn Fn(&str) -> Option<(String, bool)>,
    ) -> Result<Value, String> {
        let name = self.name();
        let Value::Str(s) = v else {
            return Err(format!(
                "error in `{name}` function: invalid input type: {name} can only be used with string inputs"
            ));
        };
        Ok(Value::Str(match self {
            Function::ExpandVars => expand_existing(&s, lookup).map_err(|var| {
                format!("error in `{name}` function: variable expansion error: masked variable `{var}` cannot be expanded")
            })?,
            Function::Truncate(offset, len) => s.chars().skip(*offset).take(*len).collect(),
            Function::PosixEscape => posix_escape(&s),
        }))
    }
}

/// Expands `$NAME` and `${NAME}` where `NAME` is a variable, one level deep; a reference to an
/// unknown variable stays as it is. A masked variable is an error (its name is returned).
fn expand_existing(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<(String, bool)>,
) -> Result<String, String> {
    static VAR: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\$([A-Za-z_][A-Za-z0-9_]*)|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
            .expect("a valid expression")
    });
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for c in VAR.captures_iter(s) {
        let all = c.get(0).expect("the whole match");
        let name = c.get(1).or_else(|| c.get(2)).expect("one group").as_str();
        out.push_str(&s[last..all.start()]);
        match lookup(name) {
            Some((_, true)) => return Err(name.to_string()),
            Some((value, false)) => out.push_str(&value),
            None => out.push_str(all.as_str()),
        }
        last = all.end();
    }
    out.push_str(&s[last..]);
    Ok(out)
}

/// Escapes the characters a POSIX shell treats specially with a backslash (a newline is quoted,
/// the empty string becomes `''`), as Ruby's `Shellwords.shellescape` does.
fn posix_escape(s: &str) -> String {
    if s.is_empty() {
        return "''".to_string();
    }
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("'\n'"),
            c if c.is_ascii_alphanumeric() || "_-.,:+/@".contains(c) => out.push(c),
            c => {
                out.push('\\');
                out.push(c);
            }
        }
    }
    out
}

/// A value inside a string: scalars as themselves, `null` as nothing, lists and mappings as GitLab
/// prints them (`["a", 1, true]`).
fn to_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => float_text(*f),
        Value::Str(s) => s.clone(),
        Value::Seq(_) | Value::Map(_) => inspect(v),
    }
}

fn float_text(f: f64) -> String {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        f.to_string()
    }
}

/// A value as Ruby's `inspect` writes it, which is how GitLab renders a list inside a string.
fn inspect(v: &Value) -> String {
    match v {
        Value::Null => "nil".to_string(),
        Value::Str(s) => crate::yaml::double_quoted(s, String::push),
        Value::Seq(items) => {
            let parts: Vec<String> = items.iter().map(|i| inspect(&i.value)).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Map(m) => {
            let parts: Vec<String> = m
                .entries
                .iter()
                .map(|e| {
                    format!(
                        "{} => {}",
                        inspect(&Value::Str(e.key.clone())),
                        inspect(&e.value.value)
                    )
                })
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
        scalar => to_text(scalar),
    }
}

/// A node as text that tells apart different values (for telling apart includes by inputs).
fn node_text(n: &Node) -> String {
    inspect(&n.value)
}

fn resolve_extends(root: &mut Node, diags: &mut Diags) {
    let Some(map) = root.as_map() else { return };
    let names: Vec<String> = map
        .entries
        .iter()
        .filter(|e| e.value.as_map().is_some_and(|m| m.contains("extends")))
        .map(|e| e.key.clone())
        .collect();
    if names.is_empty() {
        return;
    }
    let mut index: HashMap<&str, &Node> = HashMap::with_capacity(map.entries.len());
    for e in &map.entries {
        index.entry(e.key.as_str()).or_insert(&e.value);
    }
    let mut done: HashMap<String, (Node, usize)> = HashMap::new();
    for name in &names {
        let mut chain = Vec::new();
        extend_one(map, &index, name, &mut done, &mut chain, diags);
    }
    let map = root.as_map_mut().expect("checked above");
    for e in &mut map.entries {
        if let Some((n, _)) = done.remove(&e.key) {
            e.value = n;
        }
    }
}

/// Resolves `extends` of job `name`, memoised in `done` with its inheritance depth. Returns the depth.
fn extend_one(
    root: &Map,
    index: &HashMap<&str, &Node>,
    name: &str,
    done: &mut HashMap<String, (Node, usize)>,
    chain: &mut Vec<String>,
    diags: &mut Diags,
) -> Option<usize> {
    if let Some(n) = done.get(name) {
        return Some(n.1);
    }
    let node = *index.get(name)?;
    let Some(m) = node.as_map() else {
        return Some(0);
    };
    // `extends: null` extends nothing, as in GitLab (the opentofu component has one).
    let Some(ext) = m.get("extends").filter(|e| !e.is_null()) else {
        return Some(0);
    };
    if chain.iter().any(|c| c == name) {
        diags.error(
            ext.pos,
            format!("`{name}`: circular dependency detected in `extends`"),
        );
        return None;
    }
    if chain.len() >= MAX_EXTENDS_DEPTH {
        diags.error(
            ext.pos,
            format!("`{name}`: `extends` nests deeper than {MAX_EXTENDS_DEPTH} levels"),
        );
        return None;
    }
    let parents = match &ext.value {
        Value::Str(_) | Value::Seq(_) => string_list(ext),
        _ => {
            diags.error(ext.pos, "`extends` must be a string or an array of strings");
            return None;
        }
    };
    chain.push(name.to_string());
    let mut depth = 1;
    let mut merged = Node::new(Value::Map(Map::default()), node.pos);
    for p in &parents {
        let Some(orig) = index.get(p.as_str()) else {
            let hint = crate::diag::hint(
                p,
                &root
                    .entries
                    .iter()
                    .map(|e| e.key.as_str())
                    .collect::<Vec<_>>(),
            );
            diags.follow_on(
                ext.pos,
                format!("`{name}`: unknown key `{p}` in `extends`{hint}"),
            );
            continue;
        };
        let Some(d) = extend_one(root, index, p, done, chain, diags) else {
            continue;
        };
        depth = depth.max(d + 1);
        let parent = done.get(p.as_str()).map_or(*orig, |(n, _)| n);
        if parent.as_map().is_none() {
            diags.error(
                ext.pos,
                format!("`{name}`: `extends` target `{p}` is not a mapping"),
            );
            continue;
        }
        deep_merge(&mut merged, parent.clone());
    }
    chain.pop();
    if depth > MAX_EXTENDS_DEPTH {
        diags.error(
            ext.pos,
            format!("`{name}`: `extends` nests deeper than {MAX_EXTENDS_DEPTH} levels"),
        );
        return None;
    }
    deep_merge(&mut merged, node.clone());
    if let Some(mm) = merged.as_map_mut() {
        mm.remove("extends");
    }
    let own = Node {
        value: merged.value,
        pos: node.pos,
        tag: node.tag.clone(),
    };
    done.insert(name.to_string(), (own, depth));
    Some(depth)
}

/// Resolves `!reference` tags. With `lenient`, a reference whose target does not exist (yet) is left for
/// a later pass instead of being reported; cycles and excessive nesting are reported either way.
fn resolve_references(root: &mut Node, diags: &mut Diags, lenient: bool) {
    if !has_reference(root) {
        return;
    }
    let snapshot = root.clone();
    let mut r = Refs {
        root: &snapshot,
        seen: HashSet::new(),
        diags,
        lenient,
    };
    r.resolve_in(root, 0);
}

struct Refs<'a> {
    root: &'a Node,
    seen: HashSet<Vec<String>>,
    diags: &'a mut Diags,
    lenient: bool,
}

fn has_reference(n: &Node) -> bool {
    n.tag.as_deref() == Some("reference")
        || match &n.value {
            Value::Seq(items) => items.iter().any(has_reference),
            Value::Map(m) => m.entries.iter().any(|e| has_reference(&e.value)),
            _ => false,
        }
}

impl Refs<'_> {
    fn resolve_in(&mut self, n: &mut Node, depth: usize) {
        if n.tag.as_deref() == Some("reference") {
            if let Some(v) = self.reference(n, depth) {
                *n = v;
            }
            return;
        }

        match &mut n.value {
            Value::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                for mut i in std::mem::take(items) {
                    let was_ref = i.tag.as_deref() == Some("reference");
                    self.resolve_in(&mut i, depth);
                    // An unresolved reference keeps its tag and stays as it is.
                    let was_ref = was_ref && i.tag.is_none();
                    // A reference inside a list that yields a list is spliced in, as GitLab does for scripts.
                    match i.value {
                        Value::Seq(inner) if was_ref => out.extend(inner),
                        _ => out.push(i),
                    }
                }
                *items = out;
            }
            Value::Map(m) => {
                for e in &mut m.entries {
                    self.resolve_in(&mut e.value, depth);
                }
            }
            _ => {}
        }
    }

    fn reference(&mut self, n: &Node, depth: usize) -> Option<Node> {
        let diags = &mut *self.diags;
        let Some(path) = n
            .as_seq()
            .map(|s| s.iter().filter_map(Node::scalar_string).collect::<Vec<_>>())
        else {
            diags.error(
                n.pos,
                "`!reference` must be an array of keys, like `!reference [.job, script]`",
            );
            return None;
        };
        if path.is_empty() {
            diags.error(n.pos, "`!reference` needs at least one key");
            return None;
        }
        if depth + 1 >= MAX_REFERENCE_DEPTH {
            diags.error(
                n.pos,
                format!(
                    "`!reference [{}]` nests deeper than {MAX_REFERENCE_DEPTH} levels",
                    path.join(", ")
                ),
            );
            return None;
        }
        if !self.seen.insert(path.clone()) {
            diags.error(
                n.pos,
                format!("`!reference [{}]` refers to itself", path.join(", ")),
            );
            return None;
        }
        let mut cur = self.root;
        for key in &path {
            match cur.as_map().and_then(|m| m.get(key)) {
                Some(next) => cur = next,
                None => {
                    if !self.lenient {
                        diags.follow_on(
                            n.pos,
                            format!("`!reference [{}]`: `{key}` not found", path.join(", ")),
                        );
                    }
                    self.seen.remove(&path);
                    return None;
                }
            }
        }
        let mut v = cur.clone();
        let before = self.diags.list.len();
        self.resolve_in(&mut v, depth + 1);
        self.seen.remove(&path);
        if self.diags.list.len() > before {
            // Leave the reference unresolved rather than half-resolved.
            return None;
        }
        v.pos = n.pos;
        Some(v)
    }
}
