//! Close codes and close frame payloads (RFC 6455 §5.5.1, §7.4).

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

use crate::utf8;

/// A close status code (RFC 6455 §7.4).
///
/// Any `u16` can be held; [`CloseCode::is_valid_on_wire`] says whether a peer
/// may send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection has been fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1005: no status code was present (never sent on the wire).
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: the connection closed without a close frame (never sent on the wire).
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: data inconsistent with the message type (e.g. invalid UTF-8 in text).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: a message violates the endpoint's policy.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: a message too big to process.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: the client expected the server to negotiate an extension.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 1012: the service is restarting (IANA registry).
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    /// 1013: try again later (IANA registry).
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    /// 1014: bad gateway (IANA registry).
    pub const BAD_GATEWAY: CloseCode = CloseCode(1014);
    /// 1015: TLS handshake failure (never sent on the wire).
    pub const TLS_HANDSHAKE: CloseCode = CloseCode(1015);

    /// Whether a peer may put this code in a close frame.
    ///
    /// Valid: 1000–1003, 1007–1014 (RFC 6455 §7.4.1 plus the codes IANA has
    /// registered since: 1012 service restart, 1013 try again later,
    /// 1014 bad gateway), and 3000–4999 (libraries, frameworks, applications).
    /// Everything else is invalid: below 1000, 1004 (reserved), 1005, 1006 and
    /// 1015 (only for reporting, never sent), 1016–2999 (unassigned or reserved
    /// for future RFCs), and 5000 and above.
    pub const fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// A short name for the registered codes, e.g. `"normal closure"`.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1000 => "normal closure",
            1001 => "going away",
            1002 => "protocol error",
            1003 => "unsupported data",
            1004 => "reserved",
            1005 => "no status received",
            1006 => "abnormal closure",
            1007 => "invalid frame payload data",
            1008 => "policy violation",
            1009 => "message too big",
            1010 => "mandatory extension",
            1011 => "internal error",
            1012 => "service restart",
            1013 => "try again later",
            1014 => "bad gateway",
            1015 => "TLS handshake",
            _ => return None,
        })
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> CloseCode {
        CloseCode(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.0
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{} ({name})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// The payload of a close frame: a code and a UTF-8 reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code.
    pub code: CloseCode,
    /// The reason, valid UTF-8 (checked on receipt; on send, the
    /// constructor's `&str` guarantees it).
    reason: Bytes,
}

/// The largest reason that fits a control frame after the 2-byte code.
pub const MAX_REASON_LEN: usize = crate::frame::MAX_CONTROL_PAYLOAD - 2;

impl CloseFrame {
    /// A close frame with `code` and `reason`. A reason longer than 123
    /// bytes is cut at the last character boundary that fits.
    pub fn new(code: impl Into<CloseCode>, reason: &str) -> CloseFrame {
        let mut end = reason.len().min(MAX_REASON_LEN);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let reason = reason.get(..end).unwrap_or_default();
        CloseFrame {
            code: code.into(),
            reason: Bytes::copy_from_slice(reason.as_bytes()),
        }
    }

    /// The reason text.
    pub fn reason(&self) -> &str {
        // Constructed from `&str` or validated in `parse`.
        std::str::from_utf8(&self.reason).unwrap_or_default()
    }

    /// The reason as raw bytes (valid UTF-8).
    pub fn reason_bytes(&self) -> &Bytes {
        &self.reason
    }

    /// Parses a received close payload.
    ///
    /// `Ok(None)` for an empty payload (no code; report as 1005). A one-byte
    /// payload or an invalid code is a protocol error (1002); a reason that
    /// is not UTF-8 is invalid payload data (1007).
    pub fn parse(payload: Bytes) -> Result<Option<CloseFrame>, CloseParseError> {
        match payload.len() {
            0 => Ok(None),
            1 => Err(CloseParseError::OneByte),
            _ => {
                let mut payload = payload;
                let code_bytes = payload.split_to(2);
                let code = CloseCode(u16::from_be_bytes([
                    code_bytes.first().copied().unwrap_or(0),
                    code_bytes.get(1).copied().unwrap_or(0),
                ]));
                if !code.is_valid_on_wire() {
                    return Err(CloseParseError::InvalidCode(code.0));
                }
                if utf8::validate(&payload).is_err() {
                    return Err(CloseParseError::InvalidUtf8);
                }
                Ok(Some(CloseFrame {
                    code,
                    reason: payload,
                }))
            }
        }
    }

    /// The encoded payload length: 2 + reason.
    pub fn encoded_len(&self) -> usize {
        2 + self.reason.len()
    }

    /// Appends the wire payload (code, then reason) to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_u16(self.code.0);
        dst.put_slice(&self.reason);
    }
}

impl fmt::Display for CloseFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reason.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} {:?}", self.code, self.reason())
        }
    }
}

/// Why a received close payload was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseParseError {
    /// A one-byte payload: the code needs two.
    OneByte,
    /// A code that may not appear on the wire.
    InvalidCode(u16),
    /// The reason is not valid UTF-8.
    InvalidUtf8,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn valid_and_invalid_codes() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            assert!(CloseCode(code).is_valid_on_wire(), "{code}");
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!CloseCode(code).is_valid_on_wire(), "{code}");
        }
    }

    #[test]
    fn parse_close_payloads() {
        assert_eq!(CloseFrame::parse(Bytes::new()).unwrap(), None);
        assert_eq!(
            CloseFrame::parse(Bytes::from_static(&[0x03])),
            Err(CloseParseError::OneByte)
        );
        assert_eq!(
            CloseFrame::parse(Bytes::from_static(&[0x03, 0xEC])),
            Err(CloseParseError::InvalidCode(1004))
        );
        assert_eq!(
            CloseFrame::parse(Bytes::from_static(&[
                0x03, 0xE8, 0xCE, 0xBA, 0xED, 0xA0, 0x80
            ])),
            Err(CloseParseError::InvalidUtf8)
        );
        let f = CloseFrame::parse(Bytes::from_static(b"\x03\xe8bye"))
            .unwrap()
            .unwrap();
        assert_eq!(f.code, CloseCode::NORMAL);
        assert_eq!(f.reason(), "bye");
    }

    #[test]
    fn long_reason_is_cut_on_a_char_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let f = CloseFrame::new(1000, &long);
        assert!(f.encoded_len() <= 125);
        assert_eq!(f.reason().len(), 122);
    }
}
