//! Durations as GitLab writes them: `3600`, `30s`, `1h 30m`, `2 hours 10 minutes`, `1 day`.

use std::time::Duration;

/// Parses a human duration. A bare number is seconds.
///
/// # Errors
/// Text that is not a duration.
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim().to_ascii_lowercase();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(n) = t.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total = 0f64;
    let mut rest = t.as_str();
    let mut any = false;
    while !rest.is_empty() {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if rest.is_empty() {
            break;
        }
        let n_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if n_len == 0 {
            if let Some(r) = rest.strip_prefix("and") {
                rest = r;
                continue;
            }
            return Err(format!("`{s}` is not a duration"));
        }
        let n: f64 = rest[..n_len]
            .parse()
            .map_err(|_| format!("`{s}` is not a duration"))?;
        rest = rest[n_len..].trim_start();
        let u_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..u_len];
        rest = &rest[u_len..];
        let mult = match unit {
            "s" | "sec" | "secs" | "second" | "seconds" | "" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86400.0,
            "w" | "wk" | "wks" | "week" | "weeks" => 604_800.0,
            "mo" | "mos" | "month" | "months" => 2_592_000.0,
            "y" | "yr" | "yrs" | "year" | "years" => 31_536_000.0,
            _ => return Err(format!("`{s}` is not a duration: unknown unit `{unit}`")),
        };
        total += n * mult;
        any = true;
    }
    if !any {
        return Err(format!("`{s}` is not a duration"));
    }
    // A number too large for a `Duration` (or NaN) is an error, not a panic.
    Duration::try_from_secs_f64(total).map_err(|_| format!("`{s}` is too long a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitlab_forms() {
        assert_eq!(parse("3600").unwrap().as_secs(), 3600);
        assert_eq!(parse("30s").unwrap().as_secs(), 30);
        assert_eq!(parse("1h 30m").unwrap().as_secs(), 5400);
        assert_eq!(parse("2 hours 10 minutes").unwrap().as_secs(), 7800);
        assert_eq!(parse("1 day").unwrap().as_secs(), 86400);
        assert_eq!(
            parse("1 week and 2 days").unwrap().as_secs(),
            8 * 86400 + 86400
        );
        assert!(parse("soon").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn too_long_is_an_error_not_a_panic() {
        let huge = format!("4 minutes{}", "2".repeat(400));
        let err = parse(&huge).unwrap_err();
        assert!(err.contains("too long"), "{err}");
    }
}
