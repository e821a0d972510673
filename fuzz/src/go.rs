//! What Jaeger and Tempo (Go) do with the parameters the query crate parses "as Go does", written from Go's
//! sources independently of `tracepost_query`, so that the `jaeger_params` target can compare the two.

use tracepost_storage::time::civil_from_days;

/// Go's `time.ParseDuration` (`src/time/format.go`), in nanoseconds; `None` where Go returns an error.
pub fn parse_duration(text: &str) -> Option<i64> {
    const LIMIT: u64 = 1 << 63;
    let mut s = text.as_bytes();
    let mut negative = false;
    if let Some((&c, rest)) = s.split_first() {
        if c == b'-' || c == b'+' {
            negative = c == b'-';
            s = rest;
        }
    }
    if s == b"0" {
        return Some(0);
    }
    if s.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return None;
        }
        // leadingInt
        let before = s.len();
        let mut whole: u64 = 0;
        let mut i = 0;
        while i < s.len() && s[i].is_ascii_digit() {
            if whole > LIMIT / 10 {
                return None;
            }
            whole = whole * 10 + u64::from(s[i] - b'0');
            if whole > LIMIT {
                return None;
            }
            i += 1;
        }
        s = &s[i..];
        let pre = before != s.len();
        // leadingFraction
        let (mut fraction, mut scale, mut post) = (0u64, 1f64, false);
        if s.first() == Some(&b'.') {
            s = &s[1..];
            let before = s.len();
            let mut overflow = false;
            let mut i = 0;
            while i < s.len() && s[i].is_ascii_digit() {
                if !overflow {
                    if fraction > (LIMIT - 1) / 10 {
                        overflow = true;
                    } else {
                        let next = fraction * 10 + u64::from(s[i] - b'0');
                        if next > LIMIT {
                            overflow = true;
                        } else {
                            fraction = next;
                            scale *= 10.0;
                        }
                    }
                }
                i += 1;
            }
            s = &s[i..];
            post = before != s.len();
        }
        if !pre && !post {
            return None;
        }
        let unit_end = s
            .iter()
            .position(|c| *c == b'.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_end == 0 {
            return None;
        }
        let unit: u64 = match &s[..unit_end] {
            b"ns" => 1,
            b"us" => 1_000,
            // U+00B5 (micro sign) and U+03BC (Greek mu) in UTF-8.
            [0xc2, 0xb5, b's'] | [0xce, 0xbc, b's'] => 1_000,
            b"ms" => 1_000_000,
            b"s" => 1_000_000_000,
            b"m" => 60_000_000_000,
            b"h" => 3_600_000_000_000,
            _ => return None,
        };
        s = &s[unit_end..];
        if whole > LIMIT / unit {
            return None;
        }
        let mut value = whole * unit;
        if fraction > 0 {
            // Go: v += uint64(float64(f) * (float64(unit) / scale)); the conversion saturates as Go's does
            // on amd64 for the values that reach it (at most 3.6e12).
            value += (fraction as f64 * (unit as f64 / scale)) as u64;
            if value > LIMIT {
                return None;
            }
        }
        total += value;
        if total > LIMIT {
            return None;
        }
    }
    if negative {
        return Some((total as i64).wrapping_neg());
    }
    if total > LIMIT - 1 {
        return None;
    }
    Some(total as i64)
}

/// Go's `time.Duration.String()`: `1h2m3.5s`, `1.5ms`, `0s`.
pub fn format_duration(nanos: i64) -> String {
    let negative = nanos < 0;
    let mut u = nanos.unsigned_abs();
    let sign = if negative { "-" } else { "" };
    if u < 1_000_000_000 {
        // Below a second: one of ns, µs, ms with a fraction.
        let (unit, digits) = match u {
            0 => return "0s".to_owned(),
            1..=999 => return format!("{sign}{u}ns"),
            1_000..=999_999 => ("µs", 3),
            _ => ("ms", 6),
        };
        return format!("{sign}{}{unit}", fraction(u, digits));
    }
    let mut out = String::new();
    let seconds = fraction(u % 60_000_000_000, 9);
    u /= 60_000_000_000;
    if u > 0 {
        let minutes = u % 60;
        u /= 60;
        if u > 0 {
            out.push_str(&format!("{u}h"));
        }
        out.push_str(&format!("{minutes}m"));
    }
    format!("{sign}{out}{seconds}s")
}

/// `value / 10^digits` written with its fraction, trailing zeros (and a bare point) left out.
fn fraction(value: u64, digits: u32) -> String {
    let scale = 10u64.pow(digits);
    let (whole, part) = (value / scale, value % scale);
    if part == 0 {
        return whole.to_string();
    }
    let part = format!("{part:0width$}", width = digits as usize);
    format!("{whole}.{}", part.trim_end_matches('0'))
}

/// Unix nanoseconds as RFC 3339 in UTC with nanoseconds (`2006-01-02T15:04:05.999999999Z`); `None` outside
/// the years 0000-9999 RFC 3339 can write.
pub fn format_rfc3339(nanos: i64) -> Option<String> {
    let seconds = nanos.div_euclid(1_000_000_000);
    let fraction = nanos.rem_euclid(1_000_000_000);
    let days = i32::try_from(seconds.div_euclid(86_400)).ok()?;
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        return None;
    }
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:09}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_go_parses_and_writes_them() {
        assert_eq!(parse_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_duration("-.5ms"), Some(-500_000));
        assert_eq!(parse_duration("5.s"), Some(5_000_000_000));
        assert_eq!(parse_duration("250µs"), Some(250_000));
        assert_eq!(parse_duration("-9223372036854775808ns"), Some(i64::MIN));
        assert_eq!(parse_duration("9223372036854775808ns"), None);
        assert_eq!(parse_duration(".s"), None);
        assert_eq!(parse_duration("1"), None);
        assert_eq!(parse_duration("1e3s"), None);
        assert_eq!(format_duration(5_400_000_000_000), "1h30m0s");
        assert_eq!(format_duration(1_500_000), "1.5ms");
        assert_eq!(format_duration(-1), "-1ns");
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(i64::MIN), "-2562047h47m16.854775808s");
        assert_eq!(
            format_rfc3339(1_754_038_800_500_000_000).as_deref(),
            Some("2025-08-01T09:00:00.500000000Z")
        );
    }
}
