//! Scheduled pipelines: five-field cron expressions in UTC, from the projects' `schedules`. Each minute
//! that matches becomes a delivery of forge `schedule` whose id is made of the schedule and the minute,
//! so that several servers sharing a database start one pipeline, not one each.

use std::time::Duration;

use gantry_api::TriggerPipeline;
use gantry_store::NewDelivery;

use crate::state::AppState;

/// A parsed cron expression: the allowed values of each field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    any_day: bool,
    any_weekday: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(s: &str, min: u32, max: u32, names: &[&str], name_base: u32) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        return Ok(u32::try_from(i).unwrap_or(0) + name_base);
    }
    let v: u32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v < min || v > max {
        return Err(format!("{v} is out of range {min}-{max}"));
    }
    Ok(v)
}

fn field(s: &str, min: u32, max: u32, names: &[&str], name_base: u32) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let st: u32 = st.parse().map_err(|_| format!("`{st}` is not a step"))?;
                if st == 0 {
                    return Err("a step must be more than 0".into());
                }
                (r, st)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                value(a, min, max, names, name_base)?,
                value(b, min, max, names, name_base)?,
            )
        } else {
            let v = value(range, min, max, names, name_base)?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo > hi {
            return Err(format!("the range {lo}-{hi} is backwards"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

/// Parses `MIN HOUR DAY MONTH WEEKDAY`.
///
/// # Errors
/// Not five fields, or a field that does not parse.
pub(crate) fn parse_cron(s: &str) -> Result<Cron, String> {
    let f: Vec<&str> = s.split_whitespace().collect();
    if f.len() != 5 {
        return Err("a cron expression has five fields: minute hour day month weekday".into());
    }
    let mut weekdays = field(f[4], 0, 7, &DAYS, 0)?;
    if weekdays & (1 << 7) != 0 {
        weekdays |= 1;
    }
    Ok(Cron {
        minutes: field(f[0], 0, 59, &[], 0)?,
        hours: field(f[1], 0, 23, &[], 0)?,
        days: field(f[2], 1, 31, &[], 0)?,
        months: field(f[3], 1, 12, &MONTHS, 1)?,
        weekdays,
        any_day: f[2] == "*",
        any_weekday: f[4] == "*",
    })
}

impl Cron {
    /// Whether the minute `minute` (minutes since the Unix epoch, UTC) matches.
    pub fn matches(&self, minute: i64) -> bool {
        let days = minute.div_euclid(1440);
        let in_day = minute.rem_euclid(1440);
        let (_, month, day) = crate::civil_from_days(days);
        let weekday = (days + 4).rem_euclid(7); // 1970-01-01 was a Thursday.
        let bit = |set: u64, v: i64| set & (1u64 << v) != 0;
        let day_ok = match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (false, true) => bit(self.days, i64::from(day)),
            (true, false) => bit(self.weekdays, weekday),
            // Both restricted: either matches, as in cron.
            (false, false) => bit(self.days, i64::from(day)) || bit(self.weekdays, weekday),
        };
        bit(self.minutes, in_day % 60)
            && bit(self.hours, in_day / 60)
            && bit(self.months, i64::from(month))
            && day_ok
    }
}

/// Checks every project's schedules once a minute.
pub(crate) async fn run(state: AppState) {
    let mut shutdown = state.shutdown.clone();
    let mut last = None;
    loop {
        let now = crate::now_ms();
        let minute = now.div_euclid(60_000);
        if last != Some(minute) {
            last = Some(minute);
            tick(&state, minute).await;
        }
        let next = (minute + 1) * 60_000 - now;
        let wait = Duration::from_millis(u64::try_from(next.clamp(50, 60_000)).unwrap_or(1000));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Stores a delivery for every schedule that matches `minute`.
pub(crate) async fn tick(state: &AppState, minute: i64) {
    let Ok(projects) = state.store.projects().await else {
        return;
    };
    let mut any = false;
    for record in projects {
        let Ok(project) = crate::projects::LoadedProject::parse(record, &state.secrets) else {
            continue;
        };
        for (i, s) in project.spec.schedules.iter().enumerate() {
            let Ok(cron) = parse_cron(&s.cron) else {
                continue;
            };
            if !cron.matches(minute) {
                continue;
            }
            let payload = TriggerPipeline {
                git_ref: Some(
                    s.git_ref
                        .clone()
                        .unwrap_or_else(|| project.spec.default_branch.clone()),
                ),
                variables: s.variables.clone(),
            };
            let Ok(payload) = serde_json::to_vec(&payload) else {
                continue;
            };
            let delivery = NewDelivery {
                project_id: project.record.id,
                forge: "schedule".into(),
                delivery_id: format!("schedule-{i}-{minute}"),
                event: "schedule".into(),
                payload,
                trace_id: crate::random_id(),
                received_at: crate::now_ms(),
                push_key: None,
                push_key_since: 0,
            };
            match state.store.insert_delivery(&delivery).await {
                Ok((_, false)) => any = true,
                Ok((_, true)) => {}
                Err(e) => tracing::warn!(error = %e, "cannot store a scheduled pipeline"),
            }
        }
    }
    if any {
        state.deliveries.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minutes since the epoch of a UTC date and time.
    fn at(days: i64, h: i64, m: i64) -> i64 {
        days * 1440 + h * 60 + m
    }

    #[test]
    fn cron_fields() {
        // 2026-11-27 is day 20784 since the epoch, a Friday.
        let fri = 20_784;
        assert_eq!(crate::civil_from_days(fri), (2026, 11, 27));
        let c = parse_cron("0 3 * * *").unwrap();
        assert!(c.matches(at(fri, 3, 0)));
        assert!(!c.matches(at(fri, 3, 1)));
        let c = parse_cron("*/15 9-17 * * mon-fri").unwrap();
        assert!(c.matches(at(fri, 9, 45)));
        assert!(!c.matches(at(fri + 1, 9, 45)), "Saturday");
        let c = parse_cron("30 12 1 jan,jul *").unwrap();
        assert!(!c.matches(at(fri, 12, 30)));
        let c = parse_cron("0 0 27 * 0").unwrap();
        assert!(c.matches(at(fri, 0, 0)), "day 27 or Sunday");
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_cron("* * *").is_err());
        assert!(parse_cron("*/0 * * * *").is_err());
    }
}
