//! Protocol errors, each mapped to the close code that reports it.

use std::fmt;

use crate::close::{CloseCode, CloseParseError};

/// A violation of RFC 6455 / RFC 7692 by the peer, or a configured limit it
/// exceeded. [`ProtocolError::close_code`] is the code to fail the
/// connection with; the connection layers send it for you.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// RSV1/2/3 set without a negotiated extension that defines it.
    ReservedBits,
    /// An opcode reserved for future use (`0x3`–`0x7`, `0xB`–`0xF`).
    ReservedOpcode(u8),
    /// A control frame without FIN.
    FragmentedControlFrame,
    /// A control frame with more than 125 payload bytes.
    ControlFrameTooLong(u64),
    /// A client sent an unmasked frame (servers require masking).
    UnmaskedFrame,
    /// A server sent a masked frame (clients require unmasked frames).
    MaskedFrame,
    /// A continuation frame with no message in progress.
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is in progress.
    ExpectedContinuation,
    /// A 64-bit payload length with its most significant bit set.
    InvalidLength,
    /// A payload length not encoded in the fewest bytes (RFC 6455 §5.2): a
    /// 16-bit length below 126 or a 64-bit one below 65 536. Rejected unless
    /// [`crate::Limits::allow_non_minimal_lengths`] is set.
    NonMinimalLength {
        /// The payload length.
        len: u64,
        /// How many bytes the length field took (2 or 8).
        field_bytes: usize,
    },
    /// A text message or close reason that is not valid UTF-8.
    InvalidUtf8,
    /// A close frame with a one-byte payload.
    InvalidClosePayload,
    /// A close frame with a code that may not be sent.
    InvalidCloseCode(u16),
    /// A compressed message whose DEFLATE data is invalid.
    InvalidCompressedData(String),
    /// A frame larger than the configured limit.
    FrameTooLarge {
        /// The frame's payload length.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A message larger than the configured limit.
    MessageTooLarge {
        /// How large the message was known to be when it was stopped.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A message in more fragments than the configured limit.
    TooManyFragments {
        /// The limit.
        max: usize,
    },
    /// Data after the peer's close frame.
    FrameAfterClose,
}

impl ProtocolError {
    /// The close code this error fails the connection with.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::InvalidCompressedData(_) => {
                CloseCode::INVALID_PAYLOAD
            }
            ProtocolError::FrameTooLarge { .. }
            | ProtocolError::MessageTooLarge { .. }
            | ProtocolError::TooManyFragments { .. } => CloseCode::MESSAGE_TOO_BIG,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }

    /// A short reason suitable for the close frame (at most 123 bytes).
    pub fn close_reason(&self) -> &'static str {
        match self {
            ProtocolError::ReservedBits => "reserved bits set",
            ProtocolError::ReservedOpcode(_) => "reserved opcode",
            ProtocolError::FragmentedControlFrame => "fragmented control frame",
            ProtocolError::ControlFrameTooLong(_) => "control frame too long",
            ProtocolError::UnmaskedFrame => "client frame not masked",
            ProtocolError::MaskedFrame => "server frame masked",
            ProtocolError::UnexpectedContinuation => "continuation without a message",
            ProtocolError::ExpectedContinuation => "expected continuation frame",
            ProtocolError::InvalidLength => "invalid payload length",
            ProtocolError::NonMinimalLength { .. } => "non-minimal payload length",
            ProtocolError::InvalidUtf8 => "invalid UTF-8",
            ProtocolError::InvalidClosePayload => "invalid close payload",
            ProtocolError::InvalidCloseCode(_) => "invalid close code",
            ProtocolError::InvalidCompressedData(_) => "invalid compressed data",
            ProtocolError::FrameTooLarge { .. } => "frame too large",
            ProtocolError::MessageTooLarge { .. } => "message too large",
            ProtocolError::TooManyFragments { .. } => "too many fragments",
            ProtocolError::FrameAfterClose => "frame after close",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::ReservedOpcode(op) => write!(f, "reserved opcode 0x{op:X}"),
            ProtocolError::ControlFrameTooLong(len) => {
                write!(f, "control frame of {len} bytes (at most 125 allowed)")
            }
            ProtocolError::InvalidCloseCode(code) => write!(f, "invalid close code {code}"),
            ProtocolError::NonMinimalLength { len, field_bytes } => write!(
                f,
                "payload length {len} in a {}-bit field, not the minimal encoding",
                field_bytes * 8
            ),
            ProtocolError::InvalidCompressedData(why) => {
                write!(f, "invalid compressed data: {why}")
            }
            ProtocolError::FrameTooLarge { size, max } => {
                write!(f, "frame of {size} bytes exceeds the limit of {max}")
            }
            ProtocolError::MessageTooLarge { size, max } => {
                write!(
                    f,
                    "message of at least {size} bytes exceeds the limit of {max}"
                )
            }
            ProtocolError::TooManyFragments { max } => {
                write!(f, "message in more than {max} fragments")
            }
            other => f.write_str(other.close_reason()),
        }?;
        write!(f, " (close code {})", self.close_code().0)
    }
}

impl std::error::Error for ProtocolError {}

impl From<CloseParseError> for ProtocolError {
    fn from(e: CloseParseError) -> ProtocolError {
        match e {
            CloseParseError::OneByte => ProtocolError::InvalidClosePayload,
            CloseParseError::InvalidCode(code) => ProtocolError::InvalidCloseCode(code),
            CloseParseError::InvalidUtf8 => ProtocolError::InvalidUtf8,
        }
    }
}
