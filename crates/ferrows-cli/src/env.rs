//! Numeric settings from flags and environment variables, with the
//! semantics of websocket-echo-server: `+process.env.X || default`, so an
//! empty, missing or `0` value means the default.

use std::fmt;

/// A setting given by a flag or an environment variable that is not a
/// valid number: reported at start with exit code 2.
#[derive(Debug)]
pub(crate) struct BadSetting {
    pub(crate) source: String,
    pub(crate) value: String,
    pub(crate) why: &'static str,
}

impl fmt::Display for BadSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid value {:?} for {}: {}",
            self.value, self.source, self.why
        )
    }
}

impl std::error::Error for BadSetting {}

/// Where a raw value came from.
pub(crate) struct Raw {
    pub(crate) source: String,
    pub(crate) value: String,
}

/// The flag's value if given, else the environment variable's.
pub(crate) fn raw(flag: Option<&str>, flag_name: &str, env: &str) -> Option<Raw> {
    match flag {
        Some(v) => Some(Raw {
            source: format!("--{flag_name}"),
            value: v.to_owned(),
        }),
        None => std::env::var(env).ok().map(|v| Raw {
            source: env.to_owned(),
            value: v,
        }),
    }
}

/// A number: empty, missing or 0 → `default`; anything but digits → error.
pub(crate) fn number(raw: Option<Raw>, default: u64) -> Result<u64, BadSetting> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    let v = raw.value.trim();
    if v.is_empty() {
        return Ok(default);
    }
    match v.parse::<u64>() {
        Ok(0) => Ok(default),
        Ok(n) => Ok(n),
        Err(_) => Err(BadSetting {
            source: raw.source,
            value: raw.value,
            why: "not a non-negative integer",
        }),
    }
}

/// A duration in the one grammar of [`crate::duration`], a bare number
/// being milliseconds (websocket-echo-server's unit): empty, missing or 0
/// → `default`, like [`number`].
pub(crate) fn duration(
    raw: Option<Raw>,
    default: std::time::Duration,
) -> Result<std::time::Duration, BadSetting> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    let v = raw.value.trim();
    if v.is_empty() {
        return Ok(default);
    }
    match crate::duration::parse(v, crate::duration::Bare::Millis) {
        Ok(d) if d.is_zero() => Ok(default),
        Ok(d) => Ok(d),
        Err(_) => Err(BadSetting {
            source: raw.source,
            value: raw.value,
            why: "not a duration (a bare number is milliseconds; or 500ms, 2s, 1m)",
        }),
    }
}

/// A port: like [`number`], and within 1..=65535. The flag `--port 0`
/// (not the environment variable) asks the system for a free port.
pub(crate) fn port(raw: Option<Raw>, default: u16) -> Result<u16, BadSetting> {
    if let Some(r) = &raw {
        if r.source.starts_with("--") && r.value.trim() == "0" {
            return Ok(0);
        }
    }
    let source = raw.as_ref().map(|r| (r.source.clone(), r.value.clone()));
    let n = number(raw, u64::from(default))?;
    u16::try_from(n).map_err(|_| {
        let (source, value) = source.unwrap_or_default();
        BadSetting {
            source,
            value,
            why: "a port must be between 1 and 65535",
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn r(v: &str) -> Option<Raw> {
        Some(Raw {
            source: "X".into(),
            value: v.into(),
        })
    }

    #[test]
    fn echo_server_semantics() {
        assert_eq!(number(None, 7).unwrap(), 7);
        assert_eq!(number(r(""), 7).unwrap(), 7);
        assert_eq!(number(r("0"), 7).unwrap(), 7);
        assert_eq!(number(r(" 42 "), 7).unwrap(), 42);
        assert!(number(r("12abc"), 7).is_err());
        assert!(number(r("-1"), 7).is_err());
        assert_eq!(port(r("0"), 1337).unwrap(), 1337);
        assert!(port(r("70000"), 1337).is_err());
        let flag = Some(Raw {
            source: "--port".into(),
            value: "0".into(),
        });
        assert_eq!(port(flag, 1337).unwrap(), 0);
    }

    #[test]
    fn durations_keep_milliseconds_for_bare_numbers() {
        use std::time::Duration;
        let d = Duration::from_secs(30);
        assert_eq!(duration(None, d).unwrap(), d);
        assert_eq!(duration(r(""), d).unwrap(), d);
        assert_eq!(duration(r("0"), d).unwrap(), d);
        assert_eq!(duration(r("0s"), d).unwrap(), d);
        assert_eq!(duration(r("1500"), d).unwrap(), Duration::from_millis(1500));
        assert_eq!(duration(r("2s"), d).unwrap(), Duration::from_secs(2));
        assert_eq!(duration(r("1m"), d).unwrap(), Duration::from_secs(60));
        assert!(duration(r("12abc"), d).is_err());
        assert!(duration(r("-1"), d).is_err());
    }
}
