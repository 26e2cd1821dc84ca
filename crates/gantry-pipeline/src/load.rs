//! From files to one expanded configuration tree: documents and `spec:inputs`, `include`, `extends`
//! and `!reference`, in GitLab's order (includes, then extends, then references).

use std::collections::{HashMap, HashSet};

use crate::context::{Context, Sources};
use crate::diag::Diags;
use crate::expr;
use crate::plan::Variable;
use crate::vars;
use crate::yaml::{self, Map, Node, Pos, Value};

/// The most files one pipeline may include, as in GitLab.
const MAX_INCLUDES: usize = 150;
/// How deep includes may nest.
const MAX_INCLUDE_DEPTH: usize = 100;
/// How many levels `extends` may have, as in GitLab.
const MAX_EXTENDS_DEPTH: usize = 11;
/// How many `!reference` hops may chain, as in GitLab.
const MAX_REFERENCE_DEPTH: usize = 10;

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
    "pages",
];

/// Loads `ctx.file` and everything it includes, then resolves `extends` and `!reference`.
/// Problems are recorded in `diags`; the returned tree is as complete as the input allows.
pub fn load(sources: &dyn Sources, ctx: &Context, diags: &mut Diags) -> Node {
    let mut loader = Loader {
        sources,
        ctx,
        diags,
        count: 0,
        stack: Vec::new(),
    };
    let root = loader.file(&ctx.file, None, Pos::default(), &[]);
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

struct Loader<'a> {
    sources: &'a dyn Sources,
    ctx: &'a Context,
    diags: &'a mut Diags,
    count: usize,
    stack: Vec<String>,
}

impl Loader<'_> {
    /// Reads one file (or remote content), applies its inputs, and merges its includes under it.
    fn file(
        &mut self,
        name: &str,
        content: Option<String>,
        at: Pos,
        inputs: &[(String, Node, Pos)],
    ) -> Option<Node> {
        if self.stack.len() >= MAX_INCLUDE_DEPTH {
            self.diags.error(
                at,
                format!("includes nest deeper than {MAX_INCLUDE_DEPTH} levels"),
            );
            return None;
        }
        if self.stack.iter().any(|s| s == name) {
            self.diags
                .error(at, format!("include `{name}` includes itself"));
            return None;
        }
        self.count += 1;
        if self.count > MAX_INCLUDES {
            self.diags
                .error(at, format!("more than {MAX_INCLUDES} includes"));
            return None;
        }
        let src = match content {
            Some(c) => c,
            None => match self.sources.read(name) {
                Ok(c) => c,
                Err(e) => {
                    if self.stack.is_empty() {
                        self.diags.error(at, format!("cannot read `{name}`: {e}"));
                    } else {
                        self.diags
                            .error(at, format!("local include `{name}` not found: {e}"));
                    }
                    return None;
                }
            },
        };
        let file = self.diags.add_file(name);
        let docs = match yaml::parse(&src, file) {
            Ok(d) => d,
            Err(e) => {
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
        // A file with a `spec` header: the first document is the header, the second the content.
        let (header, mut body) = match docs.len() {
            0 => (
                None,
                Node::new(
                    Value::Map(Map::default()),
                    Pos {
                        file,
                        line: 1,
                        col: 1,
                    },
                ),
            ),
            1 => (None, docs.remove(0)),
            _ => {
                let first = docs.remove(0);
                if first.as_map().is_some_and(|m| m.contains("spec")) {
                    (Some(first), docs.remove(0))
                } else {
                    (None, first)
                }
            }
        };
        if body.is_null() {
            body = Node::new(Value::Map(Map::default()), body.pos);
        }
        let values = self.inputs(header.as_ref(), inputs, at);
        if header.is_some()
            || !inputs.is_empty()
            || (src.contains("$[[") && contains_interpolation(&body))
        {
            interpolate(&mut body, &values, self.diags);
        }
        let Some(map) = body.as_map_mut() else {
            if self.stack.is_empty() {
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
        self.stack.push(name.to_string());
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

    /// The values of a file's inputs: its `spec:inputs` defaults overridden by the include's `inputs`.
    fn inputs(
        &mut self,
        header: Option<&Node>,
        given: &[(String, Node, Pos)],
        at: Pos,
    ) -> HashMap<String, Node> {
        let mut values = HashMap::new();
        let spec = header
            .and_then(|h| h.as_map())
            .and_then(|m| m.get("spec"))
            .and_then(Node::as_map);
        let declared = spec.and_then(|s| s.get("inputs")).and_then(Node::as_map);
        if let Some(decl) = declared {
            for e in &decl.entries {
                let d = e.value.as_map();
                if let Some(def) = d.and_then(|d| d.get("default")) {
                    values.insert(e.key.clone(), def.clone());
                }
            }
        }
        for (k, v, pos) in given {
            if declared.is_some_and(|d| !d.contains(k)) || declared.is_none() {
                self.diags.error(*pos, format!("unknown input `{k}`"));
                continue;
            }
            values.insert(k.clone(), v.clone());
        }
        if let Some(decl) = declared {
            for e in &decl.entries {
                if !values.contains_key(&e.key) {
                    self.diags
                        .error(at, format!("required input `{}` has no value", e.key));
                    continue;
                }
                let d = e.value.as_map();
                let ty = d
                    .and_then(|d| d.get("type"))
                    .and_then(Node::as_str)
                    .unwrap_or("string");
                let v = &values[&e.key];
                let ok = match ty {
                    "string" => matches!(v.value, Value::Str(_)),
                    "number" => matches!(v.value, Value::Int(_) | Value::Float(_)),
                    "boolean" => matches!(v.value, Value::Bool(_)),
                    "array" => matches!(v.value, Value::Seq(_)),
                    _ => true,
                };
                if !ok {
                    self.diags.error(
                        v.pos,
                        format!("input `{}` must be a {ty}, not {}", e.key, v.kind()),
                    );
                }
                if let (Some(opts), Some(s)) = (
                    d.and_then(|d| d.get("options")).and_then(Node::as_seq),
                    v.scalar_string(),
                ) {
                    if !opts
                        .iter()
                        .any(|o| o.scalar_string().as_deref() == Some(&s))
                    {
                        self.diags.error(
                            v.pos,
                            format!("input `{}`: `{s}` is not one of the allowed options", e.key),
                        );
                    }
                }
                if let (Some(re), Some(s)) = (
                    d.and_then(|d| d.get("regex")).and_then(Node::as_str),
                    v.as_str(),
                ) {
                    let pat = re.trim_start_matches('/').trim_end_matches('/');
                    if regex::Regex::new(pat).is_ok_and(|r| !r.is_match(s)) {
                        self.diags
                            .error(v.pos, format!("input `{}` does not match {re}", e.key));
                    }
                }
            }
        }
        values
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
            if !self.include_rules_match(rules) {
                return None;
            }
        }
        let inputs: Vec<(String, Node, Pos)> = map
            .and_then(|m| m.get("inputs"))
            .and_then(Node::as_map)
            .map(|m| {
                m.entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone(), e.key_pos))
                    .collect()
            })
            .unwrap_or_default();
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
                if path.contains('*') {
                    let glob = match globset::GlobBuilder::new(&path)
                        .literal_separator(true)
                        .build()
                    {
                        Ok(g) => g.compile_matcher(),
                        Err(e) => {
                            self.diags
                                .error(pos, format!("invalid include glob `{path}`: {e}"));
                            return None;
                        }
                    };
                    let mut files: Vec<String> = self
                        .sources
                        .files()
                        .iter()
                        .filter(|f| glob.is_match(f))
                        .cloned()
                        .collect();
                    files.sort();
                    let mut merged = Node::new(Value::Map(Map::default()), pos);
                    for f in files {
                        if let Some(n) = self.file(&f, None, pos, &inputs) {
                            deep_merge(&mut merged, n);
                        }
                    }
                    return Some(merged);
                }
                if !(path.ends_with(".yml") || path.ends_with(".yaml")) {
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
                    if let Some(content) = self.sources.remote(&key) {
                        if let Some(n) = self.file(&key, Some(content), at, &inputs) {
                            deep_merge(&mut merged, n);
                        }
                        continue;
                    }
                    let message = match self.sources.remote_unavailable(&key) {
                        Some(why) => format!("`include:{other}` `{target}`{what}: {why}"),
                        None => format!(
                            "`include:{other}` `{target}`{what} is not available offline: it is not in the local include cache"
                        ),
                    };
                    self.diags.error(at, message);
                }
                Some(merged)
            }
        }
    }

    fn include_rules_match(&mut self, rules: &Node) -> bool {
        let Some(rules) = rules.as_seq() else {
            return true;
        };
        for r in rules {
            let Some(m) = r.as_map() else { continue };
            let mut ok = true;
            if let Some(cond) = m.get("if").and_then(Node::as_str) {
                match expr::parse(cond) {
                    Ok(e) => ok &= e.eval(&|n| self.lookup(n)),
                    Err(e) => {
                        self.diags
                            .error(r.pos, format!("invalid `if` expression: {e}"));
                        return false;
                    }
                }
            }
            if let Some(ex) = m.get("exists") {
                let pats: Vec<String> =
                    string_list(ex.as_map().and_then(|m| m.get("paths")).unwrap_or(ex));
                ok &= pats.iter().any(|p| {
                    globset::Glob::new(p).is_ok_and(|g| {
                        let g = g.compile_matcher();
                        self.sources.files().iter().any(|f| g.is_match(f))
                    })
                });
            }
            if ok {
                return m.get("when").and_then(Node::as_str) != Some("never");
            }
        }
        false
    }

    fn lookup(&self, name: &str) -> Option<String> {
        self.ctx
            .cli_variables
            .iter()
            .rev()
            .find(|v| v.key == name)
            .map(|v| v.value.clone())
            .or_else(|| {
                predefined(self.ctx)
                    .iter()
                    .find(|v| v.key == name)
                    .map(|v| v.value.clone())
            })
    }
}

fn predefined(ctx: &Context) -> Vec<Variable> {
    crate::context::predefined_variables(ctx)
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

fn contains_interpolation(n: &Node) -> bool {
    match &n.value {
        Value::Str(s) => s.contains("$[["),
        Value::Seq(items) => items.iter().any(contains_interpolation),
        Value::Map(m) => m
            .entries
            .iter()
            .any(|e| e.key.contains("$[[") || contains_interpolation(&e.value)),
        _ => false,
    }
}

/// Replaces `$[[ inputs.NAME ]]` (optionally with `| function` suffixes) in keys and values. A value that
/// is exactly one interpolation takes the input's type (so an array input can become a list).
fn interpolate(n: &mut Node, values: &HashMap<String, Node>, diags: &mut Diags) {
    match &mut n.value {
        Value::Str(s) if s.contains("$[[") => {
            let trimmed = s.trim();
            if let Some(name) = single_placeholder(trimmed) {
                if let Some(v) = input_value(&name, values) {
                    if !matches!(v.value, Value::Str(_)) {
                        n.value = v.value.clone();
                        return;
                    }
                }
            }
            match interpolate_str(s, values) {
                Ok(out) => *s = out,
                Err(msg) => diags.error(n.pos, msg),
            }
        }
        Value::Seq(items) => {
            for i in items.iter_mut() {
                interpolate(i, values, diags);
            }
        }
        Value::Map(m) => {
            for e in &mut m.entries {
                if e.key.contains("$[[") {
                    match interpolate_str(&e.key, values) {
                        Ok(k) => e.key = k,
                        Err(msg) => diags.error(e.key_pos, msg),
                    }
                }
                interpolate(&mut e.value, values, diags);
            }
        }
        _ => {}
    }
}

fn single_placeholder(s: &str) -> Option<String> {
    let inner = s.strip_prefix("$[[")?.strip_suffix("]]")?;
    if inner.contains("$[[") || inner.contains('|') {
        return None;
    }
    Some(inner.trim().to_string())
}

fn input_value<'a>(name: &str, values: &'a HashMap<String, Node>) -> Option<&'a Node> {
    values.get(name.strip_prefix("inputs.")?)
}

fn interpolate_str(s: &str, values: &HashMap<String, Node>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("$[[") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let Some(end) = after.find("]]") else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let inner = after[..end].trim();
        let mut parts = inner.split('|').map(str::trim);
        let name = parts.next().unwrap_or_default();
        if let Some(input) = name.strip_prefix("inputs.") {
            let Some(v) = values.get(input) else {
                return Err(format!("unknown interpolation key `{input}`"));
            };
            let mut text = match &v.value {
                Value::Seq(items) => {
                    let strs: Vec<String> = items
                        .iter()
                        .filter_map(Node::scalar_string)
                        .map(|x| format!("\"{x}\""))
                        .collect();
                    format!("[{}]", strs.join(", "))
                }
                _ => v.scalar_string().unwrap_or_default(),
            };
            for f in parts {
                if let Some(args) = f
                    .strip_prefix("truncate(")
                    .and_then(|a| a.strip_suffix(')'))
                {
                    let nums: Vec<usize> = args
                        .split(',')
                        .filter_map(|x| x.trim().parse().ok())
                        .collect();
                    if let [off, len] = nums[..] {
                        text = text.chars().skip(off).take(len).collect();
                    }
                } else if f == "posix_escape" {
                    text = text
                        .chars()
                        .flat_map(|c| {
                            if c.is_alphanumeric() {
                                vec![c]
                            } else {
                                vec!['\\', c]
                            }
                        })
                        .collect();
                }
            }
            out.push_str(&text);
        } else {
            // `$[[ matrix.X ]]` and others are resolved later, by whoever knows them.
            out.push_str(&rest[start..start + 3 + end + 2]);
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
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
    let Some(ext) = m.get("extends") else {
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
            diags.error(
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
                        diags.error(
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
