//! The gamepad wire formats.
//!
//! Client → server (text messages):
//!
//! * legacy: `"B X Y"`, B `1`/`0` (button 0), X and Y axes 0 and 1 as the
//!   old page wrote them with `toPrecision(2)`, optionally followed by
//!   `<br/>`: `1 0.12 -0.50<br/>`;
//! * `{"type":"pad","seq":N,"axes":[…],"buttons":[…]}`: axes in −1..1,
//!   buttons as numbers 0..1 (pressed from 0.5) or booleans;
//! * `{"type":"auth","token":"…"}`, `{"type":"release"}`,
//!   `{"type":"ping","id":N}` (answered with a `pong` of the same id).
//!
//! Server → client: JSON objects with a `type` of `hello`, `role`,
//! `stop`, `error`, `telemetry` or `pong` (see [`hello`] and friends).

use serde::Deserialize;
use serde_json::json;

use super::control::{
    ClientId, Command, MAX_BUTTONS, Outputs, Refusal, Role, RoleWhy, Settings, Status, StopCause,
};

/// The largest message a gamepad client may send (bytes): a pad message
/// with every axis and button of a large controller is well under this.
pub(crate) const MAX_MESSAGE: usize = 4096;

/// The most axes a pad message may carry.
pub(crate) const MAX_AXES: usize = 32;

/// The longest token accepted (bytes).
pub(crate) const MAX_TOKEN: usize = 256;

/// A message from a client.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Inbound {
    /// A driving command.
    Pad(Command),
    /// A token, to be allowed to drive.
    Auth(String),
    /// Give up control.
    Release,
    /// Round-trip measurement: answer with `pong` and this id.
    Ping(u64),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum JsonIn {
    Pad {
        seq: u64,
        axes: Vec<f64>,
        buttons: Vec<ButtonIn>,
    },
    Auth {
        token: String,
    },
    Release,
    Ping {
        id: u64,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ButtonIn {
    Bool(bool),
    Value(f64),
}

/// Parses a text message from a client; the error says what is wrong
/// (short, and never longer than 200 characters).
pub(crate) fn parse(text: &str) -> Result<Inbound, String> {
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        parse_json(trimmed)
    } else {
        parse_legacy(trimmed).map(Inbound::Pad)
    }
}

fn parse_json(text: &str) -> Result<Inbound, String> {
    let msg: JsonIn =
        serde_json::from_str(text).map_err(|e| shorten(&format!("bad JSON message: {e}")))?;
    match msg {
        JsonIn::Pad { seq, axes, buttons } => {
            if axes.len() > MAX_AXES {
                return Err(format!("too many axes: at most {MAX_AXES}"));
            }
            if buttons.len() > MAX_BUTTONS as usize {
                return Err(format!("too many buttons: at most {MAX_BUTTONS}"));
            }
            let axis = |i: usize| axes.get(i).copied().unwrap_or(0.0);
            let (x, y) = (axis(0), axis(1));
            for (i, v) in axes.iter().enumerate() {
                if !v.is_finite() || v.abs() > 1.0 {
                    return Err(format!("axis {i} is {v}: axes are in -1..1"));
                }
            }
            let mut bits = 0u64;
            for (i, b) in buttons.iter().enumerate() {
                let pressed = match *b {
                    ButtonIn::Bool(p) => p,
                    ButtonIn::Value(v) if (0.0..=1.0).contains(&v) => v >= 0.5,
                    ButtonIn::Value(v) => {
                        return Err(format!("button {i} is {v}: buttons are 0..1 or true/false"));
                    }
                };
                if pressed {
                    bits |= 1u64 << i;
                }
            }
            Ok(Inbound::Pad(Command {
                seq: Some(seq),
                x,
                y,
                buttons: bits,
            }))
        }
        JsonIn::Auth { token } => {
            if token.len() > MAX_TOKEN {
                return Err(format!("token too long: at most {MAX_TOKEN} bytes"));
            }
            Ok(Inbound::Auth(token))
        }
        JsonIn::Release => Ok(Inbound::Release),
        JsonIn::Ping { id } => Ok(Inbound::Ping(id)),
    }
}

/// `"B X Y"` with an optional `<br/>` after it.
fn parse_legacy(text: &str) -> Result<Command, String> {
    const FORMAT: &str = "expected \"B X Y\" (e.g. \"1 0.12 -0.50\") or a JSON message";
    let body = text.strip_suffix("<br/>").unwrap_or(text).trim_end();
    let mut parts = body.split_ascii_whitespace();
    let (Some(b), Some(x), Some(y), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(shorten(&format!("not understood: {FORMAT}")));
    };
    let buttons = match b {
        "1" => 1,
        "0" => 0,
        _ => return Err(shorten(&format!("button {b:?} is not 1 or 0: {FORMAT}"))),
    };
    let axis = |s: &str, name: &str| -> Result<f64, String> {
        // Rust also parses "NaN", "inf" and "infinity": not numbers here.
        let ok = !s.is_empty()
            && s.bytes()
                .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'+' | b'e' | b'E'));
        let v: f64 = if ok {
            s.parse().unwrap_or(f64::NAN)
        } else {
            f64::NAN
        };
        if !v.is_finite() || v.abs() > 1.0 {
            return Err(shorten(&format!("{name} {s:?} is not a number in -1..1")));
        }
        Ok(v)
    };
    Ok(Command {
        seq: None,
        x: axis(x, "axis 0")?,
        y: axis(y, "axis 1")?,
        buttons,
    })
}

/// Cuts a message to 200 characters (errors may quote the input).
fn shorten(text: &str) -> String {
    const MAX: usize = 200;
    if text.chars().count() <= MAX {
        return text.to_owned();
    }
    let mut s: String = text.chars().take(MAX - 1).collect();
    s.push('…');
    s
}

/// Percent-decodes a query parameter value (`+` is a space); `None` if it
/// is not valid UTF-8 after decoding.
pub(crate) fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
                match (hex(i + 1), hex(i + 2)) {
                    (Some(hi), Some(lo)) => {
                        out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn buttons_json(bits: u64, count: u32) -> Vec<bool> {
    (0..count.min(MAX_BUTTONS))
        .map(|i| bits & (1u64 << i) != 0)
        .collect()
}

/// The first message of every connection.
pub(crate) fn hello(id: ClientId, settings: &Settings, status: &Status) -> String {
    json!({
        "type": "hello",
        "id": id,
        "role": Role::Viewer.as_str(),
        "driver": status.driver,
        "token_required": settings.token.is_some(),
        "deadman_ms": millis(settings.deadman),
        "lease_timeout_ms": millis(settings.lease_timeout),
        "buttons": settings.buttons,
        "max_speed": settings.max_speed,
    })
    .to_string()
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Tells a client its role.
pub(crate) fn role(role: Role, why: RoleWhy, driver: Option<ClientId>) -> String {
    json!({
        "type": "role",
        "role": role.as_str(),
        "why": why.as_str(),
        "driver": driver,
    })
    .to_string()
}

/// Tells every client the robot was stopped.
pub(crate) fn stop(cause: StopCause) -> String {
    json!({
        "type": "stop",
        "reason": cause.reason().as_str(),
        "cause": cause.as_str(),
        "text": cause.text(),
    })
    .to_string()
}

/// A refusal.
pub(crate) fn refused(why: Refusal) -> String {
    error(why.code(), &why.text())
}

/// An error message: `code` is stable, `text` for people.
pub(crate) fn error(code: &str, text: &str) -> String {
    json!({ "type": "error", "code": code, "text": text }).to_string()
}

/// The answer to a ping.
pub(crate) fn pong(id: u64) -> String {
    json!({ "type": "pong", "id": id }).to_string()
}

/// The outputs and the driver state, for every client.
pub(crate) fn telemetry(status: &Status, buttons: u32, t_ms: u64) -> String {
    json!({
        "type": "telemetry",
        "t_ms": t_ms,
        "left": status.outputs.left,
        "right": status.outputs.right,
        "buttons": buttons_json(status.outputs.buttons, buttons),
        "driver": status.driver,
        "stopped": status.stopped.map(StopCause::as_str),
        "stop_text": status.stopped.map(StopCause::text),
        "clients": status.clients,
    })
    .to_string()
}

#[derive(serde::Serialize)]
struct OutputLine<'a> {
    t_ms: u64,
    left: f64,
    right: f64,
    buttons: Vec<bool>,
    reason: &'a str,
}

/// One jsonl output line (without the newline), fields in the documented
/// order.
pub(crate) fn output_line(t_ms: u64, outputs: &Outputs, buttons: u32, reason: &str) -> String {
    let line = OutputLine {
        t_ms,
        left: outputs.left,
        right: outputs.right,
        buttons: buttons_json(outputs.buttons, buttons),
        reason,
    };
    serde_json::to_string(&line).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pad(seq: Option<u64>, x: f64, y: f64, buttons: u64) -> Inbound {
        Inbound::Pad(Command { seq, x, y, buttons })
    }

    #[test]
    fn legacy_format() {
        assert_eq!(parse("1 0.12 -0.50<br/>"), Ok(pad(None, 0.12, -0.5, 1)));
        assert_eq!(parse("0 0.0 1.0"), Ok(pad(None, 0.0, 1.0, 0)));
        assert_eq!(parse("0 -1.0 0.0<br/>\n"), Ok(pad(None, -1.0, 0.0, 0)));
        // toPrecision(2) of tiny numbers uses an exponent.
        assert_eq!(parse("0 1.2e-7 -3.4e-9"), Ok(pad(None, 1.2e-7, -3.4e-9, 0)));
        for bad in [
            "",
            "1",
            "1 0.1",
            "1 0.1 0.2 0.3",
            "2 0.1 0.2",
            "true 0.1 0.2",
            "1 NaN 0.2",
            "1 inf 0.2",
            "1 infinity 0.2",
            "1 0.1 1.5",
            "1 0x10 0",
            "1 0.1 0.2<br/><br/>",
            "hello",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn json_pad() {
        assert_eq!(
            parse(r#"{"type":"pad","seq":7,"axes":[0.5,-1,0.3,0],"buttons":[1,0,0.7,false,true]}"#),
            Ok(pad(Some(7), 0.5, -1.0, 0b10101))
        );
        // Missing axes are 0; extra fields are fine.
        assert_eq!(
            parse(r#"{"type":"pad","seq":0,"axes":[],"buttons":[],"extra":{"a":1}}"#),
            Ok(pad(Some(0), 0.0, 0.0, 0))
        );
        for (bad, why) in [
            (r#"{"type":"pad","axes":[0,0],"buttons":[]}"#, "seq"),
            (
                r#"{"type":"pad","seq":-1,"axes":[0,0],"buttons":[]}"#,
                "bad JSON",
            ),
            (
                r#"{"type":"pad","seq":1.5,"axes":[0,0],"buttons":[]}"#,
                "bad JSON",
            ),
            (
                r#"{"type":"pad","seq":1,"axes":[2,0],"buttons":[]}"#,
                "axis 0",
            ),
            (
                r#"{"type":"pad","seq":1,"axes":["a"],"buttons":[]}"#,
                "bad JSON",
            ),
            (
                r#"{"type":"pad","seq":1,"axes":[1e999],"buttons":[]}"#,
                "bad JSON",
            ),
            (
                r#"{"type":"pad","seq":1,"axes":[0],"buttons":[2]}"#,
                "button 0",
            ),
            (
                r#"{"type":"pad","seq":1,"axes":[0],"buttons":[-0.1]}"#,
                "button 0",
            ),
            (r#"{"type":"drive"}"#, "bad JSON"),
            (r#"{"seq":1}"#, "bad JSON"),
            (r#"{"type":"pad""#, "bad JSON"),
            ("{}", "bad JSON"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let many_axes = format!(
            r#"{{"type":"pad","seq":1,"axes":[{}],"buttons":[]}}"#,
            vec!["0"; 33].join(",")
        );
        assert!(parse(&many_axes).unwrap_err().contains("too many axes"));
        let many_buttons = format!(
            r#"{{"type":"pad","seq":1,"axes":[],"buttons":[{}]}}"#,
            vec!["0"; 65].join(",")
        );
        assert!(
            parse(&many_buttons)
                .unwrap_err()
                .contains("too many buttons")
        );
        let sixty_four = format!(
            r#"{{"type":"pad","seq":1,"axes":[],"buttons":[{}]}}"#,
            vec!["1"; 64].join(",")
        );
        assert_eq!(parse(&sixty_four), Ok(pad(Some(1), 0.0, 0.0, u64::MAX)));
    }

    #[test]
    fn other_json_messages() {
        assert_eq!(
            parse(r#"{"type":"auth","token":"s e"}"#),
            Ok(Inbound::Auth("s e".to_owned()))
        );
        assert_eq!(parse(r#"{"type":"release"}"#), Ok(Inbound::Release));
        assert_eq!(parse(r#"{"type":"ping","id":42}"#), Ok(Inbound::Ping(42)));
        let long = format!(r#"{{"type":"auth","token":"{}"}}"#, "x".repeat(300));
        assert!(parse(&long).unwrap_err().contains("too long"));
    }

    #[test]
    fn errors_are_short_even_for_long_input() {
        let evil = format!(r#"{{"type":"{}"}}"#, "A".repeat(5000));
        let err = parse(&evil).unwrap_err();
        assert!(err.chars().count() <= 200, "{}", err.len());
    }

    #[test]
    fn query_values_decode() {
        assert_eq!(percent_decode("abc").as_deref(), Some("abc"));
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(percent_decode("%E2%9C%93").as_deref(), Some("✓"));
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode("%zz").as_deref(), Some("%zz"));
        assert_eq!(percent_decode("%FF"), None);
    }

    #[test]
    fn output_lines_are_the_documented_shape() {
        let o = Outputs {
            left: 0.5,
            right: -0.25,
            buttons: 0b101,
        };
        assert_eq!(
            output_line(1234, &o, 4, "command"),
            r#"{"t_ms":1234,"left":0.5,"right":-0.25,"buttons":[true,false,true,false],"reason":"command"}"#
        );
    }
}
