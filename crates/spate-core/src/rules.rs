//! The CloudEvents value rules, one function per rule, shared by every decoder.

use crate::error::CodecError;

/// Attribute names: `[a-z0-9]+`.
pub fn check_attribute_name(name: &str) -> Result<(), CodecError> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(CodecError::InvalidAttributeName(name.to_string()))
    }
}

/// CloudEvents String: no control characters (U+0000–U+001F, U+007F–U+009F).
/// Unpaired surrogates cannot occur in a Rust `str`.
pub fn check_string(name: &str, v: &str) -> Result<(), CodecError> {
    match v.chars().find(|c| matches!(*c as u32, 0x00..=0x1F | 0x7F..=0x9F)) {
        None => Ok(()),
        Some(c) => Err(CodecError::value(
            name,
            format!("contains control character U+{:04X}, which CloudEvents strings must not hold", c as u32),
        )),
    }
}

fn valid_percent_escapes(v: &str) -> bool {
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if i + 2 >= b.len() || !(b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// URI-reference (RFC 3986 §4.1): no whitespace, no characters RFC 3986 never
/// allows unescaped, and well-formed percent escapes. Non-ASCII (IRI) characters
/// are accepted, as the Go SDK Knative is built on accepts them.
pub fn check_uri_reference(name: &str, v: &str) -> Result<(), CodecError> {
    if let Some(c) = v.chars().find(|c| c.is_whitespace() || c.is_control() || "<>\"{}|\\^`".contains(*c)) {
        return Err(CodecError::value(
            name,
            format!("is not a URI-reference: character {c:?} must be percent-encoded"),
        ));
    }
    if !valid_percent_escapes(v) {
        return Err(CodecError::value(name, "is not a URI-reference: '%' must be followed by two hex digits"));
    }
    Ok(())
}

/// Absolute URI: a URI-reference that starts with a scheme.
pub fn check_absolute_uri(name: &str, v: &str) -> Result<(), CodecError> {
    check_uri_reference(name, v)?;
    let scheme_ok = match v.find(':') {
        Some(i) if i > 0 => {
            let s = &v.as_bytes()[..i];
            s[0].is_ascii_alphabetic() && s.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        }
        _ => false,
    };
    if scheme_ok {
        Ok(())
    } else {
        Err(CodecError::value(name, format!("'{v}' is not an absolute URI (it needs a scheme such as https:)")))
    }
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let s = b.get(at..at + n)?;
    if !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => 29,
        _ => 28,
    }
}

/// RFC 3339 `date-time`: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
pub fn check_rfc3339(name: &str, v: &str) -> Result<(), CodecError> {
    if parse_rfc3339(v).is_some() {
        Ok(())
    } else {
        Err(CodecError::value(name, format!("'{v}' is not an RFC 3339 timestamp such as 2018-04-05T17:31:00Z")))
    }
}

/// Parses RFC 3339 into (unix seconds, nanoseconds). `None` when invalid.
pub fn parse_rfc3339(v: &str) -> Option<(i64, u32)> {
    let b = v.as_bytes();
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let min = digits(b, 14, 2)?;
    let sec = digits(b, 17, 2)?;
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't'))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start).min(9)..9 {
            nanos *= 10;
        }
    }
    let offset_secs: i64 = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() => {
            let oh = digits(b, i + 1, 2)?;
            let om = digits(b, i + 4, 2)?;
            if b[i + 3] != b':' || oh > 23 || om > 59 {
                return None;
            }
            let s = i64::from(oh * 3600 + om * 60);
            if *sign == b'+' { s } else { -s }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + min * 60 + sec.min(59)) - offset_secs;
    Some((secs, nanos))
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Now, as RFC 3339 UTC with microseconds (event `time`, log timestamps).
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format_rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

/// Now, as RFC 3339 UTC to the second, as Kubernetes writes metadata times (`2026-11-21T10:00:00Z`).
pub fn now_rfc3339_seconds() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let s = format_rfc3339(d.as_secs() as i64, 0);
    format!("{}Z", &s[..19])
}

/// Formats unix time as RFC 3339 UTC with microseconds, e.g. `2026-11-21T10:00:00.123456Z`.
pub fn format_rfc3339(unix_secs: i64, nanos: u32) -> String {
    let days = unix_secs.div_euclid(86_400);
    let sod = unix_secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z", sod / 3600, (sod / 60) % 60, sod % 60, nanos / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_accepts_and_rejects() {
        for ok in [
            "2018-04-05T03:56:24Z",
            "2018-04-05t03:56:24.123456789+01:00",
            "2020-02-29T00:00:00-05:30",
            "1990-12-31T23:59:60Z",
        ] {
            assert!(parse_rfc3339(ok).is_some(), "{ok}");
        }
        for bad in [
            "2018-04-05",
            "2018-04-05T03:56:24",
            "2019-02-29T00:00:00Z",
            "2018-13-01T00:00:00Z",
            "2018-04-05 03:56:24Z",
            "2018-04-05T03:56:24.Z",
            "2018-04-05T03:56:24+0100",
            "",
        ] {
            assert!(parse_rfc3339(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn rfc3339_round_trips_through_format() {
        let (s, n) = parse_rfc3339("2026-11-21T10:11:12.345678Z").unwrap();
        assert_eq!(format_rfc3339(s, n), "2026-11-21T10:11:12.345678Z");
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some((0, 0)));
    }

    #[test]
    fn names_strings_uris() {
        assert!(check_attribute_name("abc123").is_ok());
        for bad in ["", "Abc", "a-b", "a_b", "é"] {
            assert!(check_attribute_name(bad).is_err(), "{bad}");
        }
        assert!(check_string("x", "tab\there").is_err());
        assert!(check_string("x", "del\u{7f}").is_err());
        assert!(check_string("x", "c1\u{85}").is_err());
        assert!(check_string("x", "ok 🌎").is_ok());
        assert!(check_uri_reference("source", "/a/b?c=d#e").is_ok());
        assert!(check_uri_reference("source", "has space").is_err());
        assert!(check_uri_reference("source", "bad%zzescape").is_err());
        assert!(check_uri_reference("source", "trailing%2").is_err());
        assert!(check_absolute_uri("dataschema", "https://x/y").is_ok());
        assert!(check_absolute_uri("dataschema", "/relative").is_err());
        assert!(check_absolute_uri("dataschema", "1http://x").is_err());
    }
}
