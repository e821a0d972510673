//! Parsing query parameters the way Jaeger (Go) does, with Go's error texts where clients may show them.

use tracepost_storage::time::days_from_civil;

/// Query parameters in order, with `+` and percent escapes decoded.
#[derive(Clone, Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn new(pairs: Vec<(String, String)>) -> Self {
        Self(pairs)
    }

    /// Parameters from literal pairs (tests).
    #[cfg(test)]
    pub(crate) fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
        )
    }

    /// The first non-empty value of `name` (clients send valueless parameters such as `&minDuration&`).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.trim())
            .find(|value| !value.is_empty())
    }

    /// The first non-empty value among several names (new name first, then deprecated aliases).
    pub(crate) fn get_any(&self, names: &[&str]) -> Option<(&str, String)> {
        names
            .iter()
            .find_map(|name| self.get(name).map(|value| (value, (*name).to_owned())))
    }

    /// Every non-empty value of `name`.
    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.trim())
            .filter(|value| !value.is_empty())
    }
}

/// Go's `strconv.ParseInt` error text.
pub(crate) fn parse_int(text: &str) -> Result<i64, String> {
    text.parse::<i64>().map_err(|error| {
        let reason = match error.kind() {
            std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => "value out of range",
            _ => "invalid syntax",
        };
        format!("strconv.ParseInt: parsing {text:?}: {reason}")
    })
}

/// Go's `strconv.ParseBool`.
pub(crate) fn parse_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("strconv.ParseBool: parsing {text:?}: invalid syntax")),
    }
}

/// A Go duration (`time.ParseDuration`): decimal numbers with units `ns`, `us`/`µs`/`μs`, `ms`, `s`, `m`, `h`,
/// possibly several (`1h30m`), optionally signed; a bare `0` is valid. In nanoseconds.
pub(crate) fn parse_go_duration(text: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {text:?}");
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_end];
        if number.is_empty() || number == "." {
            return Err(invalid());
        }
        let value: f64 = number.parse().map_err(|_| invalid())?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("time: missing unit in duration {text:?}")),
            other => return Err(format!("time: unknown unit {other:?} in duration {text:?}")),
        };
        total += value * scale;
    }
    if total > i64::MAX as f64 {
        return Err(invalid());
    }
    Ok(if negative { -(total as i64) } else { total as i64 })
}

/// An RFC 3339 timestamp (`2025-08-01T09:00:00Z`, fractions and `±hh:mm` offsets accepted) in Unix
/// nanoseconds. A space where the offset's `+` was (an unencoded `+` decoded as a space) is accepted.
pub(crate) fn parse_rfc3339(text: &str) -> Result<i64, String> {
    let invalid = || format!("parsing time {text:?} as \"2006-01-02T15:04:05.999999999Z07:00\": cannot parse");
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || !matches!(bytes[10], b'T' | b't' | b' ') {
        return Err(invalid());
    }
    let number = |range: std::ops::Range<usize>| -> Result<i64, String> {
        text.get(range)
            .and_then(|digits| digits.parse::<i64>().ok())
            .ok_or_else(invalid)
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    if bytes[13] != b':' || bytes[16] != b':' {
        return Err(invalid());
    }
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(invalid());
    }
    let mut rest = &text[19..];
    let mut nanos = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits_end = fraction.find(|c: char| !c.is_ascii_digit()).unwrap_or(fraction.len());
        let digits = &fraction[..digits_end];
        if digits.is_empty() || digits.len() > 9 {
            return Err(invalid());
        }
        nanos = digits.parse::<i64>().map_err(|_| invalid())? * 10i64.pow(9 - digits.len() as u32);
        rest = &fraction[digits_end..];
    }
    let offset_seconds = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' | b' ' => 1,
                b'-' => -1,
                _ => return Err(invalid()),
            };
            let hours: i64 = rest[1..3].parse().map_err(|_| invalid())?;
            let minutes: i64 = rest[4..6].parse().map_err(|_| invalid())?;
            sign * (hours * 3600 + minutes * 60)
        }
        _ => return Err(invalid()),
    };
    let days = i64::from(days_from_civil(year as i32, month as u32, day as u32));
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Ok(seconds.saturating_mul(1_000_000_000).saturating_add(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1.2s"), Ok(1_200_000_000));
        assert_eq!(parse_go_duration("100ms"), Ok(100_000_000));
        assert_eq!(parse_go_duration("1h30m"), Ok(5_400_000_000_000));
        assert_eq!(parse_go_duration("250µs"), Ok(250_000));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(
            parse_go_duration("100"),
            Err("time: missing unit in duration \"100\"".into())
        );
        assert_eq!(
            parse_go_duration("1x"),
            Err("time: unknown unit \"x\" in duration \"1x\"".into())
        );
        assert_eq!(parse_go_duration("fast"), Err("time: invalid duration \"fast\"".into()));
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339("2025-08-01T09:00:00Z"), Ok(1_754_038_800_000_000_000));
        assert_eq!(parse_rfc3339("2025-08-01T09:00:00.5Z"), Ok(1_754_038_800_500_000_000));
        assert_eq!(
            parse_rfc3339("2025-08-01T11:00:00+02:00"),
            Ok(1_754_038_800_000_000_000)
        );
        assert_eq!(
            parse_rfc3339("2025-08-01T11:00:00 02:00"),
            Ok(1_754_038_800_000_000_000)
        );
        assert!(parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn go_int_errors() {
        assert_eq!(
            parse_int("x"),
            Err("strconv.ParseInt: parsing \"x\": invalid syntax".into())
        );
        assert_eq!(parse_int("42"), Ok(42));
    }
}
