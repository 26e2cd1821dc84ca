//! `--preview`: the expanded configuration written back as YAML.

use std::fmt::Write;

use crate::yaml::{Node, Value};

/// Renders `n` as block-style YAML. Strings are quoted whenever a plain scalar would read differently.
#[must_use]
pub fn to_yaml(n: &Node) -> String {
    let mut out = String::new();
    match &n.value {
        Value::Map(m) if !m.entries.is_empty() => {
            for e in &m.entries {
                write_entry(&mut out, 0, &e.key, &e.value);
            }
        }
        Value::Seq(s) if !s.is_empty() => {
            for i in s {
                write_item(&mut out, 0, i);
            }
        }
        _ => {
            out.push_str(&scalar(n));
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(' ');
    }
}

/// YAML allows an implicit key of at most 1024 characters; longer ones are written as `? key`.
const MAX_IMPLICIT_KEY: usize = 1000;

fn write_entry(out: &mut String, ind: usize, key: &str, v: &Node) {
    indent(out, ind);
    let k = if key == "<<" {
        "\"<<\"".to_string()
    } else {
        quote(key)
    };
    if k.chars().count() > MAX_IMPLICIT_KEY {
        out.push_str("? ");
        out.push_str(&k);
        out.push('\n');
        indent(out, ind);
    } else {
        out.push_str(&k);
    }
    out.push(':');
    match &v.value {
        Value::Map(m) if !m.entries.is_empty() => {
            out.push('\n');
            for e in &m.entries {
                write_entry(out, ind + 2, &e.key, &e.value);
            }
        }
        Value::Seq(s) if !s.is_empty() => {
            out.push('\n');
            for i in s {
                write_item(out, ind, i);
            }
        }
        _ => {
            out.push(' ');
            out.push_str(&scalar(v));
            out.push('\n');
        }
    }
}

fn write_item(out: &mut String, ind: usize, v: &Node) {
    indent(out, ind);
    out.push_str("- ");
    match &v.value {
        Value::Map(m) if !m.entries.is_empty() => {
            let mut first = true;
            for e in &m.entries {
                if first {
                    // The first key goes on the dash's line.
                    let mut tmp = String::new();
                    write_entry(&mut tmp, ind + 2, &e.key, &e.value);
                    out.push_str(&tmp[ind + 2..]);
                    first = false;
                } else {
                    write_entry(out, ind + 2, &e.key, &e.value);
                }
            }
        }
        Value::Seq(s) if !s.is_empty() => {
            out.push('\n');
            for i in s {
                write_item(out, ind + 2, i);
            }
        }
        _ => {
            out.push_str(&scalar(v));
            out.push('\n');
        }
    }
}

fn scalar(n: &Node) -> String {
    match &n.value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) if f.is_nan() => ".nan".into(),
        Value::Float(f) if f.is_infinite() => {
            if *f > 0.0 {
                ".inf".into()
            } else {
                "-.inf".into()
            }
        }
        Value::Float(f) => {
            let s = f.to_string();
            if s.contains('.') || s.contains('e') {
                s
            } else {
                format!("{s}.0")
            }
        }
        Value::Str(s) => quote(s),
        Value::Seq(_) => "[]".into(),
        Value::Map(_) => "{}".into(),
    }
}

/// Quotes `s` when it would not read back as the same string as a plain scalar.
fn quote(s: &str) -> String {
    let plain_ok = !s.is_empty()
        && !s.starts_with(|c: char| c.is_whitespace() || "-?:,[]{}#&*!|>'\"%@`~".contains(c))
        && !s.ends_with(|c: char| c.is_whitespace() || c == ':')
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.contains('\n')
        && !s.contains('\t')
        && !s.chars().any(char::is_control)
        && matches!(crate::yaml::parse(s, 0).ok().and_then(|d| d.docs.into_iter().next()).map(|n| n.value), Some(Value::Str(ref x)) if x == s);
    if plain_ok {
        return s.to_string();
    }
    crate::yaml::double_quoted(s, |out, c| {
        if c.is_control() {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    })
}

/// Converts `n` to JSON, dropping positions and tags.
#[must_use]
pub fn to_json(n: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &n.value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Str(s) => J::String(s.clone()),
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(m) => J::Object(
            m.entries
                .iter()
                .map(|e| (e.key.clone(), to_json(&e.value)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse;

    #[test]
    fn long_and_merge_like_keys_round_trip() {
        for src in [
            format!("{}: 1\n", "\u{1f}".repeat(200)),
            format!("? {}\n: 1\n", "k".repeat(2000)),
            "'<<': 1\n".to_string(),
            "a:\n  '<<': {b: 1}\n  c: [1]\n".to_string(),
        ] {
            let a = parse(&src, 0).unwrap().docs.remove(0);
            let text = to_yaml(&a);
            let b = parse(&text, 0)
                .unwrap_or_else(|e| panic!("{e}: {text}"))
                .docs
                .remove(0);
            assert_eq!(to_json(&a), to_json(&b), "{text}");
        }
    }

    #[test]
    fn round_trips() {
        let src = "stages:\n- build\njob:\n  script:\n  - echo \"hi: there\"\n  - 'true'\n  - '1'\n  - \"multi\\nline\"\n  variables:\n    A: 'x # y'\n    B: 2\n    C: ''\n    D: null\n  rules:\n  - if: $A == \"x\"\n    when: always\n  - when: never\n  empty: []\n";
        let a = parse(src, 0).unwrap().docs.remove(0);
        let text = to_yaml(&a);
        let b = parse(&text, 0).unwrap().docs.remove(0);
        assert_eq!(to_json(&a), to_json(&b), "{text}");
    }
}
