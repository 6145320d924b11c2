//! Messages.

use bytes::Bytes;
use ferrows_proto::{CloseCode, CloseFrame, Fragment, Utf8Bytes};

/// A WebSocket message or control frame.
///
/// Payloads are [`Bytes`]: received ones are slices of the connection's read
/// buffer when possible (no copy), and sending the same `Bytes` to many
/// connections shares one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message, guaranteed valid UTF-8 (`as_str()` costs nothing).
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping (at most 125 bytes). Received pings are answered
    /// automatically unless [`crate::Config::auto_pong`] is off.
    Ping(Bytes),
    /// A pong (at most 125 bytes).
    Pong(Bytes),
    /// A close frame. Received: the peer's close (`None`: no status code,
    /// reported as 1005). Sent: starts the closing handshake.
    Close(Option<CloseFrame>),
    /// One frame of a fragmented message: received only in fragment mode
    /// ([`crate::WebSocket::set_fragment_mode`]); sent, it goes out as one
    /// frame of a message whose type is `opcode` (see [`Fragment`]).
    Fragment(Fragment),
}

impl Message {
    /// A text message.
    pub fn text(text: impl Into<Utf8Bytes>) -> Message {
        Message::Text(text.into())
    }

    /// A binary message.
    pub fn binary(data: impl Into<Bytes>) -> Message {
        Message::Binary(data.into())
    }

    /// A ping with `payload` (at most 125 bytes).
    pub fn ping(payload: impl Into<Bytes>) -> Message {
        Message::Ping(payload.into())
    }

    /// A pong with `payload` (at most 125 bytes).
    pub fn pong(payload: impl Into<Bytes>) -> Message {
        Message::Pong(payload.into())
    }

    /// A close frame with `code` and `reason` (cut to 123 bytes).
    pub fn close(code: impl Into<CloseCode>, reason: &str) -> Message {
        Message::Close(Some(CloseFrame::new(code, reason)))
    }

    /// Whether this is a text message.
    pub fn is_text(&self) -> bool {
        matches!(self, Message::Text(_))
    }

    /// Whether this is a binary message.
    pub fn is_binary(&self) -> bool {
        matches!(self, Message::Binary(_))
    }

    /// Whether this is a close frame.
    pub fn is_close(&self) -> bool {
        matches!(self, Message::Close(_))
    }

    /// The text, for a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(t) => Some(t.as_str()),
            _ => None,
        }
    }

    /// The payload bytes of any kind of message (a close frame's reason).
    pub fn as_payload(&self) -> &[u8] {
        match self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b,
            Message::Close(Some(f)) => f.reason_bytes(),
            Message::Close(None) => &[],
            Message::Fragment(f) => &f.data,
        }
    }

    /// The payload, consuming the message.
    pub fn into_payload(self) -> Bytes {
        match self {
            Message::Text(t) => t.into_bytes(),
            Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b,
            Message::Close(Some(f)) => f.reason_bytes().clone(),
            Message::Close(None) => Bytes::new(),
            Message::Fragment(f) => f.data,
        }
    }

    /// The payload length in bytes.
    pub fn len(&self) -> usize {
        self.as_payload().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<String> for Message {
    fn from(s: String) -> Message {
        Message::Text(s.into())
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Message {
        Message::Text(s.into())
    }
}

impl From<Utf8Bytes> for Message {
    fn from(s: Utf8Bytes) -> Message {
        Message::Text(s)
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Message {
        Message::Binary(b)
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Message {
        Message::Binary(b.into())
    }
}

impl From<&[u8]> for Message {
    fn from(b: &[u8]) -> Message {
        Message::Binary(Bytes::copy_from_slice(b))
    }
}
