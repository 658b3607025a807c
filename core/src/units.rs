//! Durations (`"500ms"`, `"1m30s"`) and sizes (`"128Mi"`, `"1G"`) as written in
//! manifests. Durations follow Go's grammar (ns, us, ms, s, m, h; decimals and
//! sequences allowed); sizes follow Kubernetes quantities (k/M/G/T are powers
//! of 1000, Ki/Mi/Gi/Ti powers of 1024, a bare number is bytes).

use std::time::Duration;

/// Why a duration or size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("empty value")]
    Empty,
    #[error("`{0}` is not a duration: expected a number and a unit like \"500ms\", \"2s\", \"5m\", \"1h\"")]
    BadDuration(String),
    #[error("`{0}` is not a size: expected a number and an optional unit like \"64Mi\", \"1G\", \"512Ki\"")]
    BadSize(String),
    #[error("`{0}` is too large")]
    Overflow(String),
}

/// Parses a duration such as `"500ms"`, `"2s"`, `"1m30s"` or `"1.5h"`.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(UnitError::Empty);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || UnitError::BadDuration(text.to_string());
    let mut rest = s;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        total_nanos = total_nanos
            .checked_add(scale_decimal(num, nanos_per_unit).ok_or_else(bad)?)
            .ok_or_else(|| UnitError::Overflow(text.to_string()))?;
        rest = next;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000)
        .map_err(|_| UnitError::Overflow(text.to_string()))?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// Multiplies a decimal string (`"1.25"`) by an integer factor without floats.
fn scale_decimal(num: &str, factor: u128) -> Option<u128> {
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if frac_part.contains('.') || frac_part.len() > 9 {
        return None;
    }
    let int: u128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().ok()?
    };
    let mut value = int.checked_mul(factor)?;
    if !frac_part.is_empty() {
        let frac: u128 = frac_part.parse().ok()?;
        let denom = 10u128.pow(frac_part.len() as u32);
        value = value.checked_add(frac.checked_mul(factor)? / denom)?;
    }
    Some(value)
}

/// Parses a size such as `"128Mi"`, `"1G"`, `"512Ki"` or `"4096"` into bytes.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(UnitError::Empty);
    }
    let bad = || UnitError::BadSize(text.to_string());
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(bad());
    }
    let factor: u128 = match unit {
        "" | "B" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = scale_decimal(num, factor).ok_or_else(bad)?;
    u64::try_from(bytes).map_err(|_| UnitError::Overflow(text.to_string()))
}

/// Formats a duration the way manifests write it (`"1m30s"`, `"500ms"`),
/// exactly: [`parse_duration`] reads back the same duration (stored
/// manifests depend on it), so a duration that is no whole number of
/// milliseconds is written in microseconds or nanoseconds (`"1500us"`).
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let nanos = d.as_nanos();
    if !nanos.is_multiple_of(1_000_000) {
        return if nanos.is_multiple_of(1_000) {
            format!("{}us", nanos / 1_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let total_ms = d.as_millis();
    if !total_ms.is_multiple_of(1000) {
        return format!("{total_ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, len) in [("h", 3600), ("m", 60)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    if secs > 0 || out.is_empty() {
        out.push_str(&format!("{secs}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_parse() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            ("0", Duration::ZERO),
            ("250us", Duration::from_micros(250)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn durations_refused() {
        for text in [
            "",
            "5",
            "s",
            "5x",
            "1..5s",
            "-1s",
            "5 s",
            "1d",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(text).is_err(), "{text} should be refused");
        }
    }

    #[test]
    fn sizes_parse() {
        let cases = [
            ("128Mi", 128 << 20),
            ("1G", 1_000_000_000),
            ("1Gi", 1 << 30),
            ("512Ki", 512 << 10),
            ("4096", 4096),
            ("1.5Ki", 1536),
            ("64M", 64_000_000),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn sizes_refused() {
        for text in ["", "Mi", "12XB", "1.2.3M", "-5", "99999999999Ti"] {
            assert!(parse_size(text).is_err(), "{text} should be refused");
        }
    }

    #[test]
    fn durations_format_round_trip() {
        for text in [
            "500ms", "2s", "5m", "1h", "1m30s", "1h2m3s", "1500us", "7ns", "0s",
        ] {
            let d = parse_duration(text).unwrap();
            assert_eq!(format_duration(d), text);
        }
    }

    /// Found by the `manifest` fuzz target (fuzz/regressions/manifest/):
    /// a health `timeout = "50ns10ms"` was stored as `"10ms"`, so the
    /// revision read back held another manifest than the one applied.
    #[test]
    fn durations_below_a_millisecond_are_stored_exactly() {
        for text in ["50ns10ms", "1.5ms", "2s1us", "1h1ns", "0.000001s"] {
            let d = parse_duration(text).unwrap();
            let shown = format_duration(d);
            assert_eq!(parse_duration(&shown).unwrap(), d, "{text} -> {shown}");
        }
        assert_eq!(
            format_duration(parse_duration("50ns10ms").unwrap()),
            "10000050ns"
        );
    }
}
