//! Human durations in config: `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"90d"`.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// The longest duration accessgov accepts anywhere (config, tickets, CLI, admin
/// API): 3650 days, about ten years. Longer values are refused by [`parse`], so
/// every date computed from a duration stays far from any overflow.
pub const MAX: Duration = Duration::from_secs(3650 * 86_400);

/// Parses `<integer><unit>` with unit `ms`, `s`, `m`, `h` or `d`, up to [`MAX`].
pub fn parse(s: &str) -> Result<Duration, String> {
    let d = parse_unbounded(s)?;
    if d > MAX {
        return Err(format!("duration {:?} is longer than the maximum of 3650d", s.trim()));
    }
    Ok(d)
}

/// Like [`parse`], but a well-formed value longer than [`MAX`] is capped at it
/// (a ticket asking for "99999d" gets the maximum, not a refusal).
pub fn parse_capped(s: &str) -> Result<Duration, String> {
    parse_unbounded(s).map(|d| d.min(MAX))
}

fn parse_unbounded(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {s:?} has no unit; write e.g. \"30s\", \"5m\", \"2h\", \"90d\""))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("duration {s:?} must start with a whole number, e.g. \"30s\""))?;
    let secs =
        |mult: u64| n.checked_mul(mult).map(Duration::from_secs).ok_or_else(|| format!("duration {s:?} is too large"));
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(format!("duration {s:?} has unknown unit {unit:?}; use ms, s, m, h or d")),
    }
}

/// Formats a duration back in the largest exact unit.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if s >= size && s.is_multiple_of(size) {
            return format!("{}{unit}", s / size);
        }
    }
    format!("{s}s")
}

pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

pub fn de_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?.map(|s| parse(&s).map_err(serde::de::Error::custom)).transpose()
}

pub fn de_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?.iter().map(|s| parse(s).map_err(serde::de::Error::custom)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses_and_formats_back() {
        for (text, secs) in [("30s", 30), ("5m", 300), ("2h", 7200), ("90d", 7_776_000)] {
            let d = parse(text).unwrap();
            assert_eq!(d, Duration::from_secs(secs));
            assert_eq!(format(d), text);
        }
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(format(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn bad_durations_say_how_to_write_one() {
        assert!(parse("30").unwrap_err().contains("no unit"));
        assert!(parse("3w").unwrap_err().contains("unknown unit"));
        assert!(parse("s").unwrap_err().contains("whole number"));
        assert!(parse("99999999999999999999d").is_err());
    }

    #[test]
    fn durations_are_bounded_and_never_overflow() {
        assert_eq!(parse("3650d").unwrap(), MAX);
        assert!(parse("3651d").unwrap_err().contains("maximum"));
        assert_eq!(parse_capped("9999999999d").unwrap(), MAX);
        assert!(parse_capped("99999999999999999999d").is_err());
        assert!(parse_capped("18446744073709551615d").is_err(), "u64::MAX days overflows the seconds");
        assert_eq!(parse_capped("18446744073709551615ms").unwrap(), MAX);
    }
}
