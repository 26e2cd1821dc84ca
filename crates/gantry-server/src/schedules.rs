//! Scheduled pipelines: five-field cron expressions from the projects' `schedules`, read by `croner`
//! in the schedule's `cron_timezone` (an IANA name; UTC when absent). As in standard cron, when both
//! the day of the month and the day of the week are restricted, either one matching is enough.
//! Across daylight saving changes a schedule fires as `croner` documents: a fixed time that the
//! clocks skip fires at the first minute after the gap, a fixed time that occurs twice fires at the
//! first one only, and minutes given by `*` or steps fire at each wall-clock minute that exists.
//! Each minute that fires becomes a delivery of forge `schedule` whose id is made of the schedule and
//! the minute, so that several servers sharing a database start one pipeline, not one each.

use std::time::Duration;

use gantry_api::{Schedule, TriggerPipeline};
use gantry_store::NewDelivery;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan as _};

use crate::state::AppState;

/// A parsed schedule: its cron expression and time zone.
#[derive(Clone, Debug)]
pub(crate) struct Cron {
    cron: croner::Cron,
    zone: TimeZone,
}

/// Parses a schedule's `MIN HOUR DAY MONTH WEEKDAY` and its time zone.
///
/// # Errors
/// Not five fields, a field that does not parse, or a time zone that is not known.
pub(crate) fn parse(schedule: &Schedule) -> Result<Cron, String> {
    parse_cron(&schedule.cron, schedule.cron_timezone.as_deref())
}

fn parse_cron(s: &str, zone: Option<&str>) -> Result<Cron, String> {
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() != 5 {
        return Err("a cron expression has five fields: minute hour day month weekday".into());
    }
    // `5/20` means from 5 to the field's end in steps of 20, as in GitLab's fugit; croner wants
    // the range written out.
    let last = ["59", "23", "31", "12", "7"];
    let fields: Vec<String> = fields
        .iter()
        .zip(last)
        .map(|(field, last)| {
            let parts = field.split(',').map(|part| match part.split_once('/') {
                Some((from, step)) if from != "*" && !from.contains('-') => {
                    format!("{from}-{last}/{step}")
                }
                _ => part.to_string(),
            });
            parts.collect::<Vec<_>>().join(",")
        })
        .collect();
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .build()
        .parse(&fields.join(" "))
        .map_err(|e| e.to_string())?;
    let zone = match zone {
        None => TimeZone::UTC,
        Some(name) => TimeZone::get(name)
            .map_err(|_| format!("cron_timezone `{name}` is not a known IANA time zone"))?,
    };
    Ok(Cron { cron, zone })
}

impl Cron {
    /// Whether the schedule fires in the minute that starts `minute` minutes after the Unix epoch.
    pub(crate) fn fires(&self, minute: i64) -> bool {
        let Some(start) = minute
            .checked_mul(60)
            .and_then(|s| Timestamp::from_second(s).ok())
        else {
            return false;
        };
        let Ok(before) = start.checked_sub(1.second()) else {
            return false;
        };
        self.cron
            .find_next_occurrence(&before.to_zoned(self.zone.clone()), false)
            .is_ok_and(|next| next.timestamp() == start)
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
            let Ok(cron) = parse(s) else {
                continue;
            };
            if !cron.fires(minute) {
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

    /// The minute (since the epoch) of a time in RFC 3339.
    fn at(s: &str) -> i64 {
        crate::parse_time(s).unwrap() / 60_000
    }

    #[test]
    fn cron_fields() {
        // 2026-11-27 is a Friday.
        let c = parse_cron("0 3 * * *", None).unwrap();
        assert!(c.fires(at("2026-11-27T03:00:00Z")));
        assert!(!c.fires(at("2026-11-27T03:01:00Z")));
        let c = parse_cron("*/15 9-17 * * mon-fri", None).unwrap();
        assert!(c.fires(at("2026-11-27T09:45:00Z")));
        assert!(!c.fires(at("2026-11-27T09:40:00Z")));
        assert!(!c.fires(at("2026-11-28T09:45:00Z")), "Saturday");
        let c = parse_cron("30 12 1 jan,jul *", None).unwrap();
        assert!(!c.fires(at("2026-11-27T12:30:00Z")));
        assert!(c.fires(at("2026-07-01T12:30:00Z")));
        let c = parse_cron("0 0 27 * 0", None).unwrap();
        assert!(c.fires(at("2026-11-27T00:00:00Z")), "day 27 or Sunday");
        assert!(c.fires(at("2026-11-29T00:00:00Z")), "day 27 or Sunday");
        assert!(!c.fires(at("2026-11-28T00:00:00Z")));
        let c = parse_cron("0 0 * * 7", None).unwrap();
        assert!(c.fires(at("2026-11-29T00:00:00Z")), "7 is Sunday");
        let c = parse_cron("5/20 1-3/2 * JAN-MAR,Dec SUN,Sat", None).unwrap();
        assert!(c.fires(at("2026-12-05T03:45:00Z")));
        assert!(!c.fires(at("2026-12-05T02:45:00Z")));
        assert!(!c.fires(at("2026-12-05T03:00:00Z")));
        // A restricted day of the month (`*/2` is not `*`) or a day of the week: either is enough.
        let c = parse_cron("0 0 */2 * mon", None).unwrap();
        assert!(c.fires(at("2026-11-30T00:00:00Z")), "Monday the 30th");
        assert!(c.fires(at("2026-11-27T00:00:00Z")), "the 27th");
        assert!(!c.fires(at("2026-11-28T00:00:00Z")));
        let c = parse_cron("0 0 * * Mon/2", None).unwrap();
        assert!(c.fires(at("2026-11-25T00:00:00Z")), "Wednesday");
        assert!(!c.fires(at("2026-11-26T00:00:00Z")), "Thursday");
        let c = parse_cron("0 0 * * 0-7", None).unwrap();
        assert!(c.fires(at("2026-11-26T00:00:00Z")));
        assert!(parse_cron("61 * * * *", None).is_err());
        assert!(parse_cron("* * *", None).is_err());
        assert!(parse_cron("0 * * * * *", None).is_err(), "no seconds field");
        assert!(parse_cron("*/0 * * * *", None).is_err());
        assert!(parse_cron("5-1 * * * *", None).is_err());
        assert!(parse_cron("x * * * *", None).is_err());
    }

    #[test]
    fn time_zones() {
        let err = parse_cron("0 9 * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(err.contains("Mars/Olympus"), "{err}");
        let c = parse_cron("0 9 * * 1-5", Some("Europe/Berlin")).unwrap();
        // Friday before the spring change: 09:00 CET is 08:00 UTC.
        assert!(c.fires(at("2026-03-27T08:00:00Z")));
        assert!(!c.fires(at("2026-03-27T07:00:00Z")));
        // Monday after it: 09:00 CEST is 07:00 UTC.
        assert!(c.fires(at("2026-03-30T07:00:00Z")));
        assert!(!c.fires(at("2026-03-30T08:00:00Z")));
        // Friday before the autumn change (CEST), and Monday after it (CET).
        assert!(c.fires(at("2026-10-23T07:00:00Z")));
        assert!(c.fires(at("2026-10-26T08:00:00Z")));
        assert!(!c.fires(at("2026-10-26T07:00:00Z")));
        assert!(!c.fires(at("2026-10-24T07:00:00Z")), "Saturday");
    }

    #[test]
    fn skipped_and_repeated_local_times() {
        let c = parse_cron("30 2 * * *", Some("Europe/Berlin")).unwrap();
        // The day before: 02:30 CET.
        assert!(c.fires(at("2026-03-28T01:30:00Z")));
        // 2026-03-29 02:30 does not exist in Berlin: the first minute after the gap, 03:00 CEST.
        assert!(c.fires(at("2026-03-29T01:00:00Z")));
        assert!(!c.fires(at("2026-03-29T00:30:00Z")));
        assert!(!c.fires(at("2026-03-29T01:30:00Z")));
        // 2026-10-25 02:30 occurs twice (CEST, then CET): only the first fires.
        assert!(c.fires(at("2026-10-25T00:30:00Z")));
        assert!(!c.fires(at("2026-10-25T01:30:00Z")));
        // A wildcard minute fires at each minute the wall clock shows, in both passes.
        let c = parse_cron("*/30 2 * * *", Some("Europe/Berlin")).unwrap();
        assert!(c.fires(at("2026-10-25T00:30:00Z")));
        assert!(c.fires(at("2026-10-25T01:30:00Z")));
    }
}
