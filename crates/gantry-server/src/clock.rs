//! Time as the server keeps it: milliseconds since the Unix epoch ([`now_ms`]), written and read
//! as RFC 3339 in UTC ([`rfc3339`], [`parse_time`]).

use std::time::{SystemTime, UNIX_EPOCH};

use gantry_store::Millis;

/// The current time in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// RFC 3339 in UTC with milliseconds (`2026-11-27T19:42:01.123Z`).
pub(crate) fn rfc3339(ms: Millis) -> String {
    let t = jiff::Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    });
    jiff::fmt::temporal::DateTimePrinter::new()
        .precision(Some(3))
        .timestamp_to_string(&t)
}

/// Parses an RFC 3339 time (`2027-01-31T12:00:00Z`, `…T12:00:00.5+02:00`) or a date (`2027-01-31`,
/// its start in UTC) into milliseconds since the epoch; `None` when it is neither.
pub(crate) fn parse_time(s: &str) -> Option<Millis> {
    let s = s.trim();
    if s.len() == 10 {
        let date: jiff::civil::Date = s.parse().ok()?;
        let t = date.to_zoned(jiff::tz::TimeZone::UTC).ok()?;
        return Some(t.timestamp().as_millisecond());
    }
    // jiff reads the wider ISO 8601 forms too; RFC 3339 wants the seconds and a `Z` or `±HH:MM`.
    let b = s.as_bytes();
    let zulu = s.ends_with(['Z', 'z']);
    let colon_offset =
        b.len() > 6 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':';
    if b.len() < 20 || b[4] != b'-' || b[13] != b':' || b[16] != b':' || !(zulu || colon_offset) {
        return None;
    }
    let t: jiff::Timestamp = s.parse().ok()?;
    Some(t.as_millisecond())
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339(1_795_809_721_123),
            "2026-11-27T20:02:01.123Z"
        );
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn times_parse() {
        use super::parse_time;
        for ms in [0, 951_782_400_000, 1_795_809_721_123, 4_102_444_800_000] {
            assert_eq!(parse_time(&super::rfc3339(ms)), Some(ms));
        }
        assert_eq!(parse_time("2000-02-29"), Some(951_782_400_000));
        assert_eq!(
            parse_time("2000-02-29T02:00:00+02:00"),
            Some(951_782_400_000)
        );
        assert_eq!(
            parse_time("2000-02-28T23:30:00-00:30"),
            Some(951_782_400_000)
        );
        assert_eq!(parse_time("1970-01-01T00:00:00.5Z"), Some(500));
        for bad in [
            "",
            "2000-02-30",
            "2001-02-29",
            "2000-13-01",
            "2000-1-01",
            "2000-01-01T25:00:00Z",
            "2000-01-01T00:00:00",
            "2000-01-01T00:00Z",
            "tomorrow",
            "2000-01-01T00:00:00+0200",
            "+200-01-01",
            "2000-01-01T00:00:00.Z",
            "2000-01-01T00:00:00.1x2Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}
