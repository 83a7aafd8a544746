//! Human durations for CLI flags and config: `90s`, `30m`, `1h`, `2h30m`, `1d`.

use std::time::Duration;

/// Parses `<n><unit>` groups (units `ms`, `s`, `m`, `h`, `d`).
///
/// # Errors
/// A message naming the input and what was expected.
pub fn parse(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("{s:?}: {why} (expected e.g. 90s, 30m, 1h, 2h30m, 1d)");
    let s_trim = s.trim();
    if s_trim.is_empty() {
        return Err(bad("empty duration"));
    }
    if s_trim.starts_with('-') {
        return Err(bad("negative durations are not allowed"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s_trim;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad("a number must come before each unit"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| bad("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            "" => return Err(bad("missing unit")),
            other => return Err(bad(&format!("unknown unit {other:?}"))),
        };
        total = total.saturating_add(d);
    }
    Ok(total)
}

/// A duration string as signed milliseconds (the unit of Envoy's L7 settings), saturating;
/// `None` when it does not parse.
#[must_use]
pub fn millis(s: &str) -> Option<i64> {
    parse(s)
        .ok()
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("2h30m").unwrap(), Duration::from_secs(9000));
        assert_eq!(parse("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "h", "10", "-5m", "5y", "1h5"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("-5m").unwrap_err().contains("negative"));
    }
}
