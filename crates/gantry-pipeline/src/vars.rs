//! Variable expansion: `$VAR`, `${VAR}` and `$$`, as GitLab expands them in the places it does
//! (variable values, `rules`, artifact and cache paths, environment names, resource groups).
//! Scripts are not expanded here: the shell does that, with the variables in its environment.
//!
//! [`Resolver`] looks values up lazily through the precedence layers, so that the rules of 2,000 jobs
//! do not each rebuild the pipeline's variables.

use std::collections::HashMap;

use crate::plan::Variable;

/// Expands `$NAME`, `${NAME}` and `$$` in `s`. An undefined variable expands to nothing, as in GitLab.
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    if !s.contains('$') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut lit = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        out.push_str(&s[lit..i]);
        let rest = &b[i + 1..];
        if rest.first() == Some(&b'$') {
            out.push('$');
            i += 2;
        } else if rest.first() == Some(&b'{') {
            match rest.iter().position(|&c| c == b'}') {
                Some(end) if is_name(&rest[1..end]) => {
                    let name = &s[i + 2..i + 1 + end];
                    out.push_str(&lookup(name).unwrap_or_default());
                    i += end + 2;
                }
                _ => {
                    out.push('$');
                    i += 1;
                }
            }
        } else {
            let n = rest
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                .count();
            if n == 0 {
                out.push('$');
                i += 1;
            } else {
                out.push_str(&lookup(&s[i + 1..=i + n]).unwrap_or_default());
                i += 1 + n;
            }
        }
        lit = i;
    }
    out.push_str(&s[lit..]);
    out
}

fn is_name(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Resolves an ordered list of variables (later entries win) into final values: each value is expanded
/// against the others, recursively up to a fixed depth so that a cycle cannot loop forever.
#[must_use]
pub fn resolve(vars: &[Variable]) -> Vec<(String, String)> {
    let mut last: HashMap<&str, &Variable> = HashMap::with_capacity(vars.len());
    let mut order: Vec<&str> = Vec::with_capacity(vars.len());
    for v in vars {
        if last.insert(v.key.as_str(), v).is_none() {
            order.push(v.key.as_str());
        }
    }
    let mut cache: HashMap<String, String> = HashMap::with_capacity(order.len());
    order
        .iter()
        .map(|k| {
            let v = resolve_one(k, &|n| last.get(n).copied(), &mut cache, 0);
            ((*k).to_string(), v)
        })
        .collect()
}

fn resolve_one<'a>(
    key: &str,
    raw: &dyn Fn(&str) -> Option<&'a Variable>,
    cache: &mut HashMap<String, String>,
    depth: u32,
) -> String {
    if let Some(v) = cache.get(key) {
        return v.clone();
    }
    let Some(var) = raw(key) else {
        return String::new();
    };
    if !var.expand || !var.value.contains('$') || depth > 8 {
        return var.value.clone();
    }
    let mut found: HashMap<String, String> = HashMap::new();
    for n in names_in(&var.value) {
        if n != key && raw(&n).is_some() {
            let v = resolve_one(&n, raw, cache, depth + 1);
            found.insert(n, v);
        }
    }
    let v = expand(&var.value, &|n| found.get(n).cloned());
    if depth == 0 {
        cache.insert(key.to_string(), v.clone());
    }
    v
}

/// The names of the variables that `s` refers to.
#[must_use]
pub fn names_in(s: &str) -> Vec<String> {
    let names = std::cell::RefCell::new(Vec::new());
    let _ = expand(s, &|n| {
        names.borrow_mut().push(n.to_string());
        None
    });
    names.into_inner()
}

/// `s` lowercased, with every character outside `[a-z0-9]` replaced by `-`: the start of GitLab's slugs.
#[must_use]
pub fn dashed(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// A slug as GitLab makes `CI_COMMIT_REF_SLUG`: lowercased, anything but `0-9a-z` replaced with `-`,
/// at most 63 bytes, no leading or trailing `-`.
#[must_use]
pub fn slug(s: &str) -> String {
    let mut out = dashed(s);
    out.truncate(63);
    out.trim_matches('-').to_string()
}

/// Variables indexed by name, later entries winning: one layer of a [`Resolver`] that many
/// lookups share (pipeline-level variables are indexed once, not once per job).
pub type VarIndex<'a> = HashMap<&'a str, &'a Variable>;

/// Indexes `vars`, later entries winning.
#[must_use]
pub fn index(vars: &[Variable]) -> VarIndex<'_> {
    let mut m = HashMap::with_capacity(vars.len());
    for v in vars {
        m.insert(v.key.as_str(), v);
    }
    m
}

/// One layer of variables in a [`Resolver`].
#[derive(Clone, Copy)]
pub enum Layer<'a> {
    /// An index built once and shared.
    Index(&'a VarIndex<'a>),
    /// A short list, searched from its end (later entries win).
    List(&'a [Variable]),
}

/// Lazy, memoised lookup of resolved values over layers of variables: only the variables an
/// expression reads get resolved.
pub struct Resolver<'a> {
    /// Lowest precedence first.
    layers: Vec<Layer<'a>>,
    own: VarIndex<'a>,
    cache: std::cell::RefCell<HashMap<String, String>>,
}

impl<'a> Resolver<'a> {
    /// A resolver over `vars` (later entries win).
    #[must_use]
    pub fn new(vars: &[&'a Variable]) -> Self {
        let mut own = HashMap::with_capacity(vars.len());
        for v in vars {
            own.insert(v.key.as_str(), *v);
        }
        Resolver {
            layers: Vec::new(),
            own,
            cache: std::cell::RefCell::new(HashMap::new()),
        }
    }

    /// A resolver over `layers`, lowest precedence first.
    #[must_use]
    pub fn layered(layers: Vec<Layer<'a>>) -> Self {
        Resolver {
            layers,
            own: HashMap::new(),
            cache: std::cell::RefCell::new(HashMap::new()),
        }
    }

    /// The variable that defines `name`, unresolved.
    fn raw(&self, name: &str) -> Option<&'a Variable> {
        for l in self.layers.iter().rev() {
            let found = match l {
                Layer::Index(m) => m.get(name).copied(),
                Layer::List(list) => list.iter().rev().find(|v| v.key == name),
            };
            if found.is_some() {
                return found;
            }
        }
        self.own.get(name).copied()
    }

    /// The resolved value of `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<String> {
        self.raw(name)?;
        Some(resolve_one(
            name,
            &|n| self.raw(n),
            &mut self.cache.borrow_mut(),
            0,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(n: &str) -> Option<String> {
        match n {
            "A" => Some("a".into()),
            "LONG_NAME" => Some("long".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_both_forms_and_escapes() {
        assert_eq!(
            expand("x $A ${A} $$A ${LONG_NAME}y $LONG_NAME.z $MISSING-", &look),
            "x a a $A longy long.z -"
        );
        assert_eq!(expand("cost $5 and $", &look), "cost  and $");
        assert_eq!(expand("${unterminated", &look), "${unterminated");
    }

    #[test]
    fn resolve_later_wins_and_expands_recursively() {
        let vars = vec![
            Variable::new("A", "1"),
            Variable::new("B", "$A-$C"),
            Variable::new("C", "${A}c"),
            Variable::new("A", "2"),
            Variable {
                key: "RAW".into(),
                value: "$A".into(),
                expand: false,
                masked: false,
            },
            Variable::new("SELF", "x$SELF"),
        ];
        let r: HashMap<_, _> = resolve(&vars).into_iter().collect();
        assert_eq!(r["A"], "2");
        assert_eq!(r["B"], "2-2c");
        assert_eq!(r["RAW"], "$A");
        assert_eq!(r["SELF"], "x");
    }

    #[test]
    fn the_lazy_resolver_agrees_with_resolve() {
        let vars = vec![
            Variable::new("A", "1"),
            Variable::new("B", "$A-${C}"),
            Variable::new("C", "c$B"),
            Variable::new("A", "2"),
        ];
        let refs: Vec<&Variable> = vars.iter().collect();
        let r = Resolver::new(&refs);
        let (low, high) = vars.split_at(2);
        let idx = index(low);
        let layered = Resolver::layered(vec![Layer::Index(&idx), Layer::List(high)]);
        for (k, v) in resolve(&vars) {
            assert_eq!(r.get(&k), Some(v.clone()), "{k}");
            assert_eq!(layered.get(&k), Some(v), "{k}");
        }
        assert_eq!(r.get("MISSING"), None);
        assert_eq!(layered.get("MISSING"), None);
    }

    #[test]
    fn slugs_like_gitlab() {
        assert_eq!(slug("Feature/Foo_Bar"), "feature-foo-bar");
        assert_eq!(slug(&"a".repeat(70)).len(), 63);
        assert_eq!(slug("-x-"), "x");
    }
}
