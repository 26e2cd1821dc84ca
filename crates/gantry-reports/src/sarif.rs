//! SARIF 2.1.0 logs (`sarif`, a Gantry extension key).
//!
//! Each result of each run counts under its level. A result without `level` takes `none` when
//! its `kind` is not `fail`, else its rule's `defaultConfiguration.level` (from
//! `tool.driver.rules`, by `ruleIndex` or `ruleId`; read when `tool` comes before `results`, as
//! tools write it), else `warning`, as SARIF 2.1.0 §3.27.10 says. A result's place is its first
//! location's `physicalLocation` (`artifactLocation.uri`, `region.startLine`); a `file://` URI
//! loses its scheme and [`Options::strip_prefix`].
//!
//! The log is streamed with serde's `DeserializeSeed`: runs and results are visited one at a
//! time and only the summary is kept.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::coverage::relative;
use crate::error::Error;
use crate::json::{Each, Field, Kept, Key, stream};
use crate::options::{MAX_ITEMS, Options, cap_message};

/// A SARIF result's level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// A serious problem.
    Error,
    /// A problem.
    Warning,
    /// A remark.
    Note,
    /// Not a problem (a `pass`, a `review` or an informational result).
    None,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        match s {
            "error" => Some(Level::Error),
            "warning" => Some(Level::Warning),
            "note" => Some(Level::Note),
            "none" => Some(Level::None),
            _ => None,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Results of one or more SARIF logs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SarifReport {
    /// Results of level `error`.
    pub errors: u64,
    /// Results of level `warning`.
    pub warnings: u64,
    /// Results of level `note`.
    pub notes: u64,
    /// Results of level `none`.
    pub none: u64,
    /// The results, at most [`MAX_ITEMS`] per level, in log order.
    pub results: Vec<SarifResult>,
}

/// One result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SarifResult {
    /// Its level.
    pub level: Level,
    /// The rule that produced it.
    pub rule_id: Option<String>,
    /// The file of its first location.
    pub file: Option<String>,
    /// The start line of its first location.
    pub line: Option<u64>,
    /// Its message text, capped.
    pub message: String,
}

impl SarifResult {
    /// `file:line`, `file`, or `(no location)`.
    pub fn place(&self) -> String {
        match (&self.file, self.line) {
            (Some(f), Some(l)) => format!("{f}:{l}"),
            (Some(f), None) => f.clone(),
            _ => "(no location)".to_owned(),
        }
    }
}

impl SarifReport {
    fn count(&mut self, level: Level) {
        match level {
            Level::Error => self.errors += 1,
            Level::Warning => self.warnings += 1,
            Level::Note => self.notes += 1,
            Level::None => self.none += 1,
        }
    }

    /// Adds another report's results.
    pub fn merge(&mut self, other: &SarifReport) {
        self.errors += other.errors;
        self.warnings += other.warnings;
        self.notes += other.notes;
        self.none += other.none;
        crate::json::merge_kept::<_, 4>(&mut self.results, &other.results, |r| r.level.index());
    }
}

/// Reads a SARIF 2.1.0 log.
///
/// # Errors
/// Invalid JSON, no `runs` array, a result of the wrong shape, or more than `options.max_bytes`
/// bytes.
pub fn parse<R: Read>(reader: R, options: &Options) -> Result<SarifReport, Error> {
    let mut report = SarifReport::default();
    let mut kept = Kept([0; 4]);
    let prefix = options.strip_prefix.as_deref();
    let mut on_run =
        |run: &RunState, mut r: RawResult| add(&mut report, &mut kept, run, &mut r, prefix);
    let found = stream(
        reader,
        options.max_bytes,
        Field {
            name: "runs",
            what: "a SARIF log (an object with `runs`)",
            seed: Runs {
                on_result: &mut on_run,
            },
        },
    )?;
    if !found {
        return Err(Error::invalid(None, "not a SARIF log: no `runs`"));
    }
    Ok(report)
}

fn add(
    report: &mut SarifReport,
    kept: &mut Kept<4>,
    run: &RunState,
    r: &mut RawResult,
    prefix: Option<&str>,
) {
    let rule = r
        .rule_id
        .take()
        .or_else(|| r.rule.as_mut().and_then(|x| x.id.take()))
        .or_else(|| {
            let i = r.rule_index.or(r.rule.as_ref().and_then(|x| x.index))?;
            run.rules.get(i).and_then(|x| x.0.clone())
        });
    let level = r
        .level
        .as_deref()
        .and_then(Level::parse)
        .unwrap_or_else(|| {
            if r.kind.as_deref().is_some_and(|k| k != "fail") {
                return Level::None;
            }
            let by_index = r
                .rule_index
                .and_then(|i| run.rules.get(i))
                .and_then(|x| x.1);
            by_index
                .or_else(|| rule.as_ref().and_then(|id| run.by_id.get(id).copied()))
                .unwrap_or(Level::Warning)
        });
    report.count(level);
    if !kept.take(level.index()) {
        return;
    }
    let physical = r
        .locations
        .first_mut()
        .and_then(|l| l.physical_location.take());
    let (file, line) = match physical {
        Some(p) => (
            p.artifact_location.and_then(|a| a.uri).map(|u| {
                let u = u.strip_prefix("file://").unwrap_or(&u);
                relative(u, prefix)
            }),
            p.region.and_then(|r| r.start_line),
        ),
        None => (None, None),
    };
    let message = r
        .message
        .as_mut()
        .and_then(|m| m.text.take())
        .unwrap_or_default();
    report.results.push(SarifResult {
        level,
        rule_id: rule,
        file,
        line,
        message: cap_message(message),
    });
    debug_assert!(report.results.len() <= 4 * MAX_ITEMS);
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawResult {
    #[serde(default)]
    rule_id: Option<String>,
    #[serde(default)]
    rule_index: Option<usize>,
    #[serde(default)]
    rule: Option<RuleRef>,
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    locations: Vec<Location>,
}

#[derive(Deserialize)]
struct RuleRef {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    index: Option<usize>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Location {
    #[serde(default)]
    physical_location: Option<Physical>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Physical {
    #[serde(default)]
    artifact_location: Option<Artifact>,
    #[serde(default)]
    region: Option<Region>,
}

#[derive(Deserialize)]
struct Artifact {
    #[serde(default)]
    uri: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Region {
    #[serde(default)]
    start_line: Option<u64>,
}

#[derive(Deserialize)]
struct Tool {
    #[serde(default)]
    driver: Option<Driver>,
}

#[derive(Deserialize)]
struct Driver {
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    default_configuration: Option<RuleConfig>,
}

#[derive(Deserialize)]
struct RuleConfig {
    #[serde(default)]
    level: Option<String>,
}

/// What a run tells about its results' defaults: each rule's id and default level.
#[derive(Default)]
struct RunState {
    rules: Vec<(Option<String>, Option<Level>)>,
    by_id: HashMap<String, Level>,
}

type OnResult<'f> = &'f mut dyn FnMut(&RunState, RawResult);

struct Runs<'f> {
    on_result: OnResult<'f>,
}

impl<'de> DeserializeSeed<'de> for Runs<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        // `any` so that `"runs": null` (the tool did not start) reads as no runs.
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Runs<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of runs")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(Run {
                on_result: &mut *self.on_result,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

struct Run<'f> {
    on_result: OnResult<'f>,
}

impl<'de> DeserializeSeed<'de> for Run<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Run<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a run (an object)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut state = RunState::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key.0.as_str() {
                "tool" => {
                    let tool: Tool = map.next_value()?;
                    state = RunState::default();
                    for r in tool.driver.map(|d| d.rules).unwrap_or_default() {
                        let level = r
                            .default_configuration
                            .and_then(|c| c.level)
                            .as_deref()
                            .and_then(Level::parse);
                        if let (Some(id), Some(l)) = (&r.id, level) {
                            state.by_id.insert(id.clone(), l);
                        }
                        state.rules.push((r.id, level));
                    }
                }
                "results" => {
                    let st = &state;
                    let on = &mut *self.on_result;
                    let mut each = |r: RawResult| on(st, r);
                    map.next_value_seed(Each::new("results", &mut each))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}
