//! Durations as lab engineers write them: `90s`, `15m`, `2h`, `180d`, `1h 30m`.

use std::time::Duration;

/// Parses a duration such as `90s`, `15m`, `2h`, `180d` or `1h 30m`.
/// A bare number is refused: `90` could mean seconds or minutes, and guessing wrong
/// turns a 90-minute gap into a 90-second one.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration; write it with a unit, e.g. `90s`, `15m`, `2h`, `180d`".into());
    }
    if trimmed.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "`{trimmed}` has no unit; write e.g. `{trimmed}s` or `{trimmed}m`"
        ));
    }
    humantime::parse_duration(trimmed).map_err(|e| {
        format!("`{trimmed}` is not a duration ({e}); write e.g. `90s`, `15m`, `2h`, `180d`")
    })
}

/// Formats a duration the way it would be written in a scenario (`1h 30m`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_lab_engineers_write() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(
            parse_duration("180d").unwrap(),
            Duration::from_secs(180 * 86400)
        );
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
    }

    #[test]
    fn bare_numbers_and_garbage_are_refused() {
        assert!(parse_duration("90").unwrap_err().contains("has no unit"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn formats_back() {
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h 30m");
    }
}
