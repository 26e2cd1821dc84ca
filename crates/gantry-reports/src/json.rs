//! Streaming JSON: a report's big array is handed over one element at a time, so memory stays
//! flat however many results the report holds.

use std::fmt;
use std::io::Read;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::error::{Error, Position};
use crate::input::{LimitGuard, input};

/// Runs `seed` over the JSON document in `reader`, then checks that nothing follows it.
pub(crate) fn stream<R, S, V>(reader: R, limit: u64, seed: S) -> Result<V, Error>
where
    R: Read,
    S: for<'de> DeserializeSeed<'de, Value = V>,
{
    let input = input(reader, limit);
    let guard = input.guard.clone();
    let mut de = serde_json::Deserializer::from_reader(input.reader);
    let value = seed.deserialize(&mut de).map_err(|e| error(&e, &guard))?;
    de.end().map_err(|e| error(&e, &guard))?;
    Ok(value)
}

fn error(e: &serde_json::Error, guard: &LimitGuard) -> Error {
    guard.or(|| {
        let text = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = text.strip_suffix(&suffix).unwrap_or(&text);
        let position = (e.line() > 0).then_some(Position::Line {
            line: e.line() as u64,
            column: Some(e.column() as u64),
        });
        Error::invalid(position, message.to_owned())
    })
}

/// A sequence whose elements go to `f` one at a time.
pub(crate) struct Each<'f, T, F> {
    f: &'f mut F,
    what: &'static str,
    _t: PhantomData<T>,
}

impl<'f, T, F> Each<'f, T, F> {
    pub(crate) fn new(what: &'static str, f: &'f mut F) -> Self {
        Each {
            f,
            what,
            _t: PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>, F: FnMut(T)> DeserializeSeed<'de> for Each<'_, T, F> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        // `any` so that `null` (SARIF's "the tool did not run") reads as no elements.
        d.deserialize_any(self)
    }
}

impl<'de, T: Deserialize<'de>, F: FnMut(T)> Visitor<'de> for Each<'_, T, F> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array of {}", self.what)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(x) = seq.next_element::<T>()? {
            (self.f)(x);
        }
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// An object of which only the field `name` is read, with `seed`; the others are skipped.
/// Its value is whether the field was there.
pub(crate) struct Field<S> {
    pub(crate) name: &'static str,
    pub(crate) what: &'static str,
    pub(crate) seed: S,
}

impl<'de, S: DeserializeSeed<'de, Value = ()>> DeserializeSeed<'de> for Field<S> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S: DeserializeSeed<'de, Value = ()>> Visitor<'de> for Field<S> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.what)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut seed = Some(self.seed);
        while let Some(key) = map.next_key::<Key>()? {
            match (key.0 == self.name, seed.take()) {
                (true, Some(s)) => map.next_value_seed(s)?,
                (_, s) => {
                    seed = s;
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(seed.is_none())
    }
}

/// An object key, read without keeping more than its text.
pub(crate) struct Key(pub(crate) String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Key)
    }
}

/// Counts per level and how many of each a list keeps.
pub(crate) struct Kept<const N: usize>(pub(crate) [usize; N]);

impl<const N: usize> Kept<N> {
    /// Whether one more of `level` may be kept; counts it if so.
    pub(crate) fn take(&mut self, level: usize) -> bool {
        if self.0[level] < crate::options::MAX_ITEMS {
            self.0[level] += 1;
            true
        } else {
            false
        }
    }
}

/// A report of findings in six severities, read one finding at a time (see [`findings`]).
pub(crate) trait Findings {
    /// A finding as read.
    type Raw;
    /// The index of `raw`'s severity among the report's counts.
    fn level(raw: &Self::Raw) -> usize;
    /// The report's count of each severity.
    fn counts_mut(&mut self) -> [&mut u64; 6];
    /// Keeps finding `raw`.
    fn keep(&mut self, raw: Self::Raw);
}

/// What reads each finding into `report`: it counts the finding's severity, and keeps the finding
/// while fewer than [`crate::options::MAX_ITEMS`] of that severity are kept.
pub(crate) fn findings<F: Findings>(report: &mut F) -> impl FnMut(F::Raw) + '_ {
    let mut kept = Kept([0; 6]);
    move |raw| {
        let level = F::level(&raw);
        *report.counts_mut()[level] += 1;
        if kept.take(level) {
            report.keep(raw);
        }
    }
}

/// Appends `other`'s items to `mine`, keeping at most [`crate::options::MAX_ITEMS`] of each level
/// (`level` gives an item's index among `N`).
pub(crate) fn merge_kept<T: Clone, const N: usize>(
    mine: &mut Vec<T>,
    other: &[T],
    level: impl Fn(&T) -> usize,
) {
    let mut kept = Kept([0; N]);
    for item in mine.iter() {
        kept.0[level(item)] += 1;
    }
    for item in other {
        if kept.take(level(item)) {
            mine.push(item.clone());
        }
    }
}
