//! One grammar for every time a flag or an environment variable takes: a
//! number with a unit (`500ms`, `2s`, `1.5s`, `1m`, `1h`), or a bare number
//! in the unit the flag's help names (milliseconds for the server timers of
//! websocket-echo-server's heritage, seconds for the client tools).

use std::time::Duration;

/// What a bare number means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bare {
    /// `500` is 500 ms.
    Millis,
    /// `2.5` is 2.5 s.
    Secs,
}

const HELP: &str = "expected a duration like 500ms, 2s, 1.5s, 1m or 1h";

/// Parses `text`: digits with an optional fraction, then an optional unit
/// (`ms`, `s`, `m`, `h`; none means `bare`). Exact to the nanosecond, no
/// floating point; at most 100 days.
pub(crate) fn parse(text: &str, bare: Bare) -> Result<Duration, String> {
    let t = text.trim();
    let unit_at = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = t.split_at(unit_at);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || number.ends_with('.') {
        return Err(format!("{text:?}: {HELP}"));
    }
    let unit_ns: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => match bare {
            Bare::Millis => 1_000_000,
            Bare::Secs => 1_000_000_000,
        },
        other => return Err(format!("{text:?}: unknown unit {other:?}; {HELP}")),
    };
    let too_long = || format!("{text:?} is too long (at most 100 days)");
    if whole.len() > 12 || fraction.len() > 9 {
        return Err(if whole.len() > 12 {
            too_long()
        } else {
            format!("{text:?}: at most nine decimals")
        });
    }
    let whole: u128 = whole.parse().map_err(|_| too_long())?;
    let mut ns = whole.checked_mul(unit_ns).ok_or_else(too_long)?;
    if !fraction.is_empty() {
        let scale = 10u128.pow(u32::try_from(fraction.len()).unwrap_or(9));
        let frac: u128 = fraction.parse().map_err(|_| format!("{text:?}: {HELP}"))?;
        ns = ns
            .checked_add(frac * unit_ns / scale)
            .ok_or_else(too_long)?;
    }
    const MAX_NS: u128 = 100 * 86_400 * 1_000_000_000;
    if ns > MAX_NS {
        return Err(too_long());
    }
    let secs = u64::try_from(ns / 1_000_000_000).map_err(|_| too_long())?;
    let nanos = u32::try_from(ns % 1_000_000_000).map_err(|_| too_long())?;
    Ok(Duration::new(secs, nanos))
}

/// A clap value parser: [`parse`] with `bare`, then within `min..=max`.
pub(crate) fn within(
    bare: Bare,
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text| {
        let d = parse(text, bare)?;
        if d < min {
            return Err(format!("{text:?} is too short: at least {}", show(min)));
        }
        if d > max {
            return Err(format!("{text:?} is too long: at most {}", show(max)));
        }
        Ok(d)
    }
}

/// A duration as a person writes it: `500ms`, `2s`, `1.5s`, `1m`, `24h`.
pub(crate) fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if d.subsec_nanos() % 1_000_000 != 0 {
        format!("{:?}", d)
    } else if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else if ms > 1000 {
        format!("{}s", d.as_secs_f64())
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn units_and_bare_numbers() {
        for (text, bare, want) in [
            ("500ms", Bare::Secs, MS(500)),
            ("2s", Bare::Millis, MS(2000)),
            ("1.5s", Bare::Millis, MS(1500)),
            ("0.25", Bare::Secs, MS(250)),
            ("1m", Bare::Secs, MS(60_000)),
            ("1h", Bare::Secs, MS(3_600_000)),
            ("500", Bare::Millis, MS(500)),
            ("10", Bare::Secs, MS(10_000)),
            (" 30000 ", Bare::Millis, MS(30_000)),
            ("0", Bare::Millis, Duration::ZERO),
            ("1.000000001s", Bare::Secs, Duration::new(1, 1)),
            ("0.5ms", Bare::Secs, Duration::from_micros(500)),
        ] {
            assert_eq!(parse(text, bare), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for text in [
            "",
            "ms",
            "-1",
            "1.",
            ".5",
            "1..2",
            "1e3",
            "nan",
            "inf",
            "2 s",
            "5x",
            "1d",
            "1sec",
            "1.0000000001s",
            "0x10",
            "+1",
        ] {
            assert!(parse(text, Bare::Secs).is_err(), "{text:?} was accepted");
        }
        assert!(parse("101d", Bare::Secs).is_err());
        assert!(parse("2401h", Bare::Secs).is_err(), "over 100 days");
        assert!(parse("99999999999999999999", Bare::Millis).is_err());
        assert_eq!(
            parse("2400h", Bare::Secs),
            Ok(Duration::from_secs(8_640_000))
        );
    }

    #[test]
    fn within_bounds_says_which() {
        let p = within(Bare::Millis, MS(20), MS(60_000));
        assert_eq!(p("500ms"), Ok(MS(500)));
        assert_eq!(p("500"), Ok(MS(500)));
        assert!(p("10ms").unwrap_err().contains("at least 20ms"));
        assert!(p("2m").unwrap_err().contains("at most 1m"));
    }

    #[test]
    fn shows_the_way_people_write_it() {
        assert_eq!(show(MS(500)), "500ms");
        assert_eq!(show(MS(2000)), "2s");
        assert_eq!(show(MS(1500)), "1.5s");
        assert_eq!(show(MS(60_000)), "1m");
        assert_eq!(show(MS(86_400_000)), "24h");
        assert_eq!(show(Duration::ZERO), "0s");
    }
}
