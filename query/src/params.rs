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

    /// Jaeger's `prettyPrint`: set when `r.FormValue("prettyPrint")` (its first value, as sent) is neither
    /// empty nor exactly `false`. Not Go's `strconv.ParseBool`: `prettyPrint=0` and `prettyPrint=False`
    /// indent too, as in Jaeger.
    pub(crate) fn pretty_print(&self) -> bool {
        self.0
            .iter()
            .find(|(key, _)| key == "prettyPrint")
            .is_some_and(|(_, value)| !value.is_empty() && value != "false")
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
/// possibly several (`1h30m`), optionally signed; a bare `0` is valid. In nanoseconds, exact as Go's: the
/// whole part of each number is counted in integers, only a fraction goes through a float (as in Go), and
/// anything past the range of an `i64` (Go's `time.Duration`) is invalid, as in Go.
pub(crate) fn parse_go_duration(text: &str) -> Result<i64, String> {
    /// Nanoseconds Go's `Duration` can hold with its sign: 2^63 (negative), one less positive.
    const LIMIT: u64 = 1 << 63;
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
    let mut total: u64 = 0;
    while !rest.is_empty() {
        if !rest.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
            return Err(invalid());
        }
        let whole_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (whole_digits, after) = rest.split_at(whole_end);
        let mut whole: u64 = 0;
        for digit in whole_digits.bytes() {
            whole = whole
                .checked_mul(10)
                .and_then(|tens| tens.checked_add(u64::from(digit - b'0')))
                .filter(|whole| *whole <= LIMIT)
                .ok_or_else(invalid)?;
        }
        rest = after;
        // The fraction: its digits as an integer over a power of ten, precision dropped past 2^63 (as Go does).
        let (mut fraction, mut scale, mut fraction_digits) = (0u64, 1f64, 0);
        if let Some(after_point) = rest.strip_prefix('.') {
            let fraction_end = after_point
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after_point.len());
            let (digits, after) = after_point.split_at(fraction_end);
            fraction_digits = digits.len();
            for digit in digits.bytes() {
                match fraction
                    .checked_mul(10)
                    .and_then(|tens| tens.checked_add(u64::from(digit - b'0')))
                {
                    Some(next) if next <= LIMIT => {
                        fraction = next;
                        scale *= 10.0;
                    }
                    _ => break,
                }
            }
            rest = after;
        }
        if whole_digits.is_empty() && fraction_digits == 0 {
            return Err(invalid());
        }
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let scale_of_unit: u64 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("time: missing unit in duration {text:?}")),
            other => return Err(format!("time: unknown unit {other:?} in duration {text:?}")),
        };
        let mut value = whole
            .checked_mul(scale_of_unit)
            .filter(|value| *value <= LIMIT)
            .ok_or_else(invalid)?;
        if fraction > 0 {
            // At most one unit (3.6e12 ns for hours), so the float is exact to the nanosecond.
            value += (fraction as f64 * (scale_of_unit as f64 / scale)) as u64;
            if value > LIMIT {
                return Err(invalid());
            }
        }
        total = total
            .checked_add(value)
            .filter(|total| *total <= LIMIT)
            .ok_or_else(invalid)?;
    }
    if negative {
        // -2^63 is i64::MIN; anything smaller was refused above.
        return Ok((total as i64).wrapping_neg());
    }
    i64::try_from(total).map_err(|_| invalid())
}

/// An RFC 3339 timestamp (`2025-08-01T09:00:00Z`, fractions and `±hh:mm` offsets accepted) in Unix
/// nanoseconds (times before 1677 or after 2262 clamped to that range). A space where the offset's `+` was
/// (an unencoded `+` decoded as a space) is accepted.
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
    // Exact, then clamped: a time outside what Unix nanoseconds in an i64 hold (1677 to 2262) is its bound.
    let nanos = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    Ok(i64::try_from(nanos).unwrap_or(if nanos < 0 { i64::MIN } else { i64::MAX }))
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
    fn go_durations_are_exact_to_the_nanosecond_over_the_whole_range() {
        // Found by the jaeger_params fuzz target: whole numbers were counted in a float, exact only to 2^53 ns
        // (104 days), and 2^63 ns was taken for i64::MAX; Go counts in integers and refuses what overflows.
        assert_eq!(parse_go_duration("7106248577s"), Ok(7_106_248_577_000_000_000));
        assert_eq!(parse_go_duration("2562047h47m16.854775807s"), Ok(i64::MAX));
        assert_eq!(parse_go_duration("-2562047h47m16.854775808s"), Ok(i64::MIN));
        assert_eq!(parse_go_duration("1.000000001h"), Ok(3_600_000_003_600));
        assert_eq!(parse_go_duration(".5us5.ns"), Ok(505));
        for overflowing in [
            "9223372036854775808ns",
            "2562047h47m16.854775808s",
            "99999999999999999999ns",
        ] {
            assert_eq!(
                parse_go_duration(overflowing),
                Err(format!("time: invalid duration {overflowing:?}"))
            );
        }
        assert_eq!(parse_go_duration("1.18446744073709551619s"), Ok(1_184_467_440));
        assert_eq!(parse_go_duration(".s"), Err("time: invalid duration \".s\"".into()));
    }

    #[test]
    fn rfc3339_times_outside_the_nanosecond_range_are_its_bounds() {
        // Found by the jaeger_params fuzz target: the seconds were scaled with saturation before the fraction
        // was added, so the first second of the range came out wrong (and i64::MIN written back read otherwise).
        assert_eq!(parse_rfc3339("1677-09-21T00:12:43.5Z"), Ok(-9_223_372_036_500_000_000));
        assert_eq!(parse_rfc3339("1677-09-21T00:12:43.145224192Z"), Ok(i64::MIN));
        assert_eq!(parse_rfc3339("2262-04-11T23:47:16.854775807Z"), Ok(i64::MAX));
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00.5Z"), Ok(i64::MIN));
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59.999999999-23:59"), Ok(i64::MAX));
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
    fn pretty_print_is_any_first_value_but_empty_or_false_as_in_jaeger() {
        let pretty = |pairs: &[(&str, &str)]| Params::from_pairs(pairs).pretty_print();
        assert!(!pretty(&[]));
        assert!(!pretty(&[("prettyPrint", "")]));
        assert!(!pretty(&[("prettyPrint", "false")]));
        assert!(!pretty(&[("prettyprint", "true")]));
        for value in ["true", "1", "0", "False", "FALSE", "yes", " false"] {
            assert!(pretty(&[("prettyPrint", value)]), "{value:?}");
        }
        // Go's FormValue takes the first value, even an empty one.
        assert!(!pretty(&[("prettyPrint", ""), ("prettyPrint", "true")]));
        assert!(pretty(&[("prettyPrint", "true"), ("prettyPrint", "false")]));
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
