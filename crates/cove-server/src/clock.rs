//! Wall-clock time as the API shows it: unix milliseconds inside, RFC 3339 UTC outside.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `2026-11-24T20:31:00.123Z`.
pub fn rfc3339(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// Unix milliseconds of an RFC 3339 time: `2026-11-24T20:31:00Z`, with fractions of a
/// second and any UTC offset (`+01:00`, as Python's `isoformat()` writes it).
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let text = text.trim();
    let (base, offset_ms) = match text.strip_suffix('Z').or_else(|| text.strip_suffix('z')) {
        Some(base) => (base, 0),
        None => {
            // An offset follows the time of day (after the 'T'), never the date's dashes.
            let time_at = text.find(['T', 't', ' '])?;
            match text[time_at..].rfind(['+', '-']) {
                Some(at) => {
                    let (base, offset) = text.split_at(time_at + at);
                    let sign = if offset.starts_with('-') { -1 } else { 1 };
                    let (hours, minutes) = offset[1..].split_once(':')?;
                    let minutes = hours.parse::<i64>().ok()? * 60 + minutes.parse::<i64>().ok()?;
                    (base, sign * minutes * 60_000)
                }
                None => (text, 0),
            }
        }
    };
    let time = humantime::parse_rfc3339_weak(base).ok()?;
    let ms = time.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64;
    Some(ms - offset_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_with_offsets_and_fractions() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01.250Z"), Some(1250));
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:00.5-00:30"),
            Some(1_800_500)
        );
        assert_eq!(
            parse_rfc3339(&rfc3339(1_700_000_000_123)),
            Some(1_700_000_000_123)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
