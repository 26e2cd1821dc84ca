//! The import graph between the modules of a crate, and its circles.
//!
//! A module is a file under `src/` (`lib.rs` and `main.rs` are the crate root, `crate`; `a/b.rs`
//! and `a/b/mod.rs` are `a::b`). Module `m` imports module `n` when code of `m` outside its inline
//! test modules names a path into `n`: `crate::n::x`, `super::x`, or `n::x` for a child `n` of `m`
//! (a path that names no module, such as `crate::now`, goes to the crate root). Circles are the
//! strongly connected components of that graph; tidy refuses one of more than [`MAX_CIRCLE`]
//! modules, so imports point one way, from the router down to what handlers share.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::source;

/// The most modules a circle of imports may hold (a parent and its children may import each other).
pub(crate) const MAX_CIRCLE: usize = 3;

/// The modules of a crate and which ones each imports.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    /// Each module with the modules it imports (never itself).
    pub imports: BTreeMap<String, BTreeSet<String>>,
}

/// The module a file under `src/` is: `crate`, `a`, `a::b`; `None` for a binary under `src/bin/`.
fn module_of(rel: &Path) -> Option<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if !(parts.is_empty() && (stem == "lib" || stem == "main")) && stem != "mod" {
        parts.push(stem.to_owned());
    }
    Some(if parts.is_empty() {
        "crate".to_owned()
    } else {
        parts.join("::")
    })
}

/// The import graph of the files under `src` (paths relative to it, with their text).
pub(crate) fn graph(files: &[(std::path::PathBuf, String)]) -> Graph {
    let mut g = Graph::default();
    let files: Vec<(String, &String)> = files
        .iter()
        .filter_map(|(p, t)| module_of(p).map(|m| (m, t)))
        .collect();
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let paths: Vec<(&String, Vec<source::NamedPath>)> = files
        .iter()
        .map(|(m, t)| (m, source::named_paths_outside_tests(t)))
        .collect();
    // What each module brings in from another module (`use clock::now`), so that `crate::now`
    // counts as an import of `clock`, where the item lives.
    let none = BTreeMap::new();
    let mut names: Reexports = BTreeMap::new();
    for (module, ps) in &paths {
        for p in ps {
            if let (Some(target), Some(name)) = (
                resolve(module, &p.segments, &modules, &none),
                p.segments.last(),
            ) && &target != *module
            {
                names
                    .entry((*module).clone())
                    .or_default()
                    .insert(name.clone(), target);
            }
        }
    }
    for (module, ps) in &paths {
        let mut to = BTreeSet::new();
        for p in ps {
            if let Some(target) = resolve(module, &p.segments, &modules, &names)
                && &target != *module
            {
                to.insert(target);
            }
        }
        g.imports.entry((*module).clone()).or_default().extend(to);
    }
    g
}

/// Per module, the names it brings in from other modules, with the module each comes from.
type Reexports = BTreeMap<String, BTreeMap<String, String>>;

/// The module a path named in `module` points into, if any.
fn resolve(
    module: &str,
    segments: &[String],
    modules: &BTreeSet<String>,
    reexports: &Reexports,
) -> Option<String> {
    let mut base: Vec<&str> = if module == "crate" {
        Vec::new()
    } else {
        module.split("::").collect()
    };
    let mut rest = segments;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        Some("self") => rest = &rest[1..],
        // A child module (`child::f`), or nothing of this crate (`tokio::spawn`, a lone name).
        Some(first) => {
            let mut child = base.clone();
            child.push(first);
            if rest.len() < 2 || !modules.contains(&child.join("::")) {
                return None;
            }
        }
        None => return None,
    }
    // The longest module the path runs through.
    let mut best = if base.is_empty() {
        "crate".to_owned()
    } else {
        base.join("::")
    };
    let mut path = base;
    for s in rest {
        path.push(s);
        let name = path.join("::");
        if modules.contains(&name) {
            best = name;
        } else {
            // An item of `best`, or a name `best` brings in from elsewhere.
            if let Some(from) = reexports.get(&best).and_then(|r| r.get(s))
                && from != module
            {
                best.clone_from(from);
            }
            break;
        }
    }
    Some(best)
}

impl Graph {
    /// The strongly connected components of more than one module, each sorted, largest first.
    pub(crate) fn circles(&self) -> Vec<Vec<String>> {
        // Tarjan's algorithm.
        struct T<'a> {
            g: &'a Graph,
            index: BTreeMap<&'a str, usize>,
            low: BTreeMap<&'a str, usize>,
            stack: Vec<&'a str>,
            on: BTreeSet<&'a str>,
            out: Vec<Vec<String>>,
        }
        fn visit<'a>(t: &mut T<'a>, v: &'a str) {
            let i = t.index.len();
            t.index.insert(v, i);
            t.low.insert(v, i);
            t.stack.push(v);
            t.on.insert(v);
            let next = t.g.imports.get(v).into_iter().flatten();
            for w in next {
                let w = w.as_str();
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if t.low[v] == t.index[v] {
                let mut c = Vec::new();
                while let Some(w) = t.stack.pop() {
                    t.on.remove(w);
                    c.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if c.len() > 1 {
                    c.sort();
                    t.out.push(c);
                }
            }
        }
        let mut t = T {
            g: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on: BTreeSet::new(),
            out: Vec::new(),
        };
        for v in self.imports.keys() {
            if !t.index.contains_key(v.as_str()) {
                visit(&mut t, v);
            }
        }
        let mut out = t.out;
        out.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        out
    }

    /// One line per module: `m -> a, b`; then one line per circle.
    pub(crate) fn render(&self) -> String {
        let mut s = String::new();
        for (m, to) in &self.imports {
            let to: Vec<&str> = to.iter().map(String::as_str).collect();
            s.push_str(&format!("{m} -> {}\n", to.join(", ")));
        }
        let arrows: usize = self.imports.values().map(BTreeSet::len).sum();
        s.push_str(&format!(
            "{} modules, {arrows} imports\n",
            self.imports.len()
        ));
        for c in self.circles() {
            s.push_str(&format!("circle of {}: {}\n", c.len(), c.join(", ")));
        }
        s
    }
}

/// The circles of more than [`MAX_CIRCLE`] modules in crate `name`, whose sources are under `src`.
pub(crate) fn problems(
    name: &str,
    src: &Path,
    files: &[(std::path::PathBuf, String)],
) -> Vec<String> {
    let rel: Vec<(std::path::PathBuf, String)> = files
        .iter()
        .filter_map(|(p, t)| Some((p.strip_prefix(src).ok()?.to_path_buf(), t.clone())))
        .collect();
    graph(&rel)
        .circles()
        .into_iter()
        .filter(|c| c.len() > MAX_CIRCLE)
        .map(|c| {
            format!(
                "crates/{name}: {} modules import each other in a circle ({}); at most {MAX_CIRCLE} may (`cargo xtask imports {name}` prints the graph)",
                c.len(),
                c.join(", ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn g(files: &[(&str, &str)]) -> Graph {
        let files: Vec<(PathBuf, String)> = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), (*t).to_owned()))
            .collect();
        graph(&files)
    }

    #[test]
    fn paths_resolve_to_the_modules_they_run_through() {
        let g = g(&[
            (
                "lib.rs",
                "mod a; mod b; mod t; pub use a::X; pub(crate) use t::now; fn f() { b::c::g(); }",
            ),
            ("t.rs", "pub fn now() {}"),
            (
                "a.rs",
                "use crate::b::c::{self, D}; fn f() { crate::now(); crate::Y; }\n\
                 #[cfg(test)]\nmod tests { use crate::b; use super::*; }",
            ),
            ("b/mod.rs", "mod c; use c::D; use super::a;"),
            (
                "b/c.rs",
                "use super::super::a::X; use tokio::spawn; use self::x;",
            ),
        ]);
        let to = |m: &str| g.imports[m].iter().cloned().collect::<Vec<_>>();
        assert_eq!(to("crate"), ["a", "b::c", "t"]);
        // `crate::now` is `t`'s, re-exported by the root; `crate::Y` is the root's own.
        assert_eq!(to("a"), ["b::c", "crate", "t"]);
        assert_eq!(to("b"), ["a", "b::c"]);
        assert_eq!(to("b::c"), ["a"]);
        assert!(to("t").is_empty());
        assert_eq!(g.circles(), [vec!["a", "b::c", "crate"]]);
    }

    #[test]
    fn a_circle_of_four_modules_is_a_problem_and_of_three_is_not() {
        let three = [
            ("a.rs", "use crate::b::B;"),
            ("b.rs", "use crate::c::C;"),
            ("c.rs", "use crate::a::A;"),
            ("d.rs", "use crate::a::A;"),
        ];
        let files = |fs: &[(&str, &str)]| -> Vec<(PathBuf, String)> {
            fs.iter()
                .map(|(p, t)| (PathBuf::from("src").join(p), (*t).to_owned()))
                .collect()
        };
        assert_eq!(g(&three).circles(), [vec!["a", "b", "c"]]);
        assert!(problems("x", Path::new("src"), &files(&three)).is_empty());
        let mut four = three;
        four[2].1 = "use crate::d::D;";
        let p = problems("x", Path::new("src"), &files(&four));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("4 modules import each other in a circle (a, b, c, d)"),
            "{p:?}"
        );
    }
}
