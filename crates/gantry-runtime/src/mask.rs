//! Masking: the values of masked variables become `[MASKED]` in everything the runtime reports.

use std::borrow::Cow;

use regex::Regex;

/// What masked values are replaced with.
pub const MASK: &str = "[MASKED]";

/// Replaces masked values; built once per pipeline.
#[derive(Debug, Default)]
pub struct Masker {
    /// One alternation of every value, longest first, so that the longest value wins where several
    /// overlap. `None` when nothing is masked: then masking costs nothing.
    re: Option<Regex>,
    /// The values, longest first, used only if the alternation is too big for the regex engine.
    plain: Vec<String>,
}

impl Masker {
    /// A masker for these values (empty values are ignored).
    #[must_use]
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut values: Vec<&str> = values.into_iter().filter(|v| !v.is_empty()).collect();
        if values.is_empty() {
            return Masker::default();
        }
        values.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        values.dedup();
        let pattern = values
            .iter()
            .map(|v| regex::escape(v))
            .collect::<Vec<_>>()
            .join("|");
        match regex::RegexBuilder::new(&pattern)
            .size_limit(256 << 20)
            .build()
        {
            Ok(re) => Masker {
                re: Some(re),
                plain: Vec::new(),
            },
            Err(_) => Masker {
                re: None,
                plain: values.iter().map(|v| (*v).to_string()).collect(),
            },
        }
    }

    /// `s` with every masked value replaced.
    #[must_use]
    pub fn mask<'a>(&self, s: &'a str) -> Cow<'a, str> {
        if let Some(re) = &self.re {
            return re.replace_all(s, MASK);
        }
        let mut out = Cow::Borrowed(s);
        for v in &self.plain {
            if out.contains(v.as_str()) {
                out = Cow::Owned(out.replace(v.as_str(), MASK));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_longest_first_and_ignores_empty() {
        let m = Masker::new(["abc", "abcdef", "", "x.y"]);
        assert_eq!(
            m.mask("1abcdef2abc3xzy4x.y"),
            "1[MASKED]2[MASKED]3xzy4[MASKED]"
        );
        assert!(matches!(m.mask("nothing here"), Cow::Borrowed(_)));
        assert_eq!(Masker::new([""]).mask("a"), "a");
    }
}
