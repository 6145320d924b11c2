//! The error type.

use std::fmt;
use std::io;

use ferrows_proto::handshake::{ClientHandshakeError, HandshakeError};
use ferrows_proto::{CloseCode, EncodeError, ProtocolError};

use crate::proxy::ProxyError;

/// Everything that can go wrong on a WebSocket connection.
///
/// A normal close is not an error: `recv()` returns the peer's
/// [`crate::Message::Close`] and then `None`.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The transport failed (connection reset, broken pipe, DNS, ...).
    Io(io::Error),
    /// The peer violated the protocol or a limit. A close frame with
    /// [`ProtocolError::close_code`] was sent and the connection closed.
    Protocol(ProtocolError),
    /// The connection dropped without a close frame (the peer sees and
    /// reports close code 1006).
    AbnormalClosure,
    /// The peer did not answer our close frame within the close timeout.
    CloseTimeout,
    /// The connection is closed (a close frame was sent or received);
    /// nothing more can be sent.
    Closed,
    /// The local application asked for something the protocol forbids
    /// (a control payload over 125 bytes, a fragment out of order).
    /// Nothing was sent.
    Send(EncodeError),
    /// The opening handshake timed out.
    HandshakeTimeout,
    /// The server refused or failed the opening handshake; the HTTP status
    /// and reason were sent to the client.
    Handshake(HandshakeError),
    /// The client side of the opening handshake failed.
    ClientHandshake(ClientHandshakeError),
    /// The URL is not a valid `ws://` or `wss://` URL.
    Url(String),
    /// TLS setup or handshake failed.
    Tls(String),
    /// Invalid settings.
    Config(String),
    /// Connecting through a proxy failed: unreachable, a refusal (407,
    /// another status, a SOCKS reply code), a bad reply, a timeout.
    Proxy(ProxyError),
}

impl Error {
    /// The close code that reports this error: the one sent for protocol
    /// errors, 1006 for an abnormal closure, `None` otherwise.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Error::Protocol(e) => Some(e.close_code()),
            Error::AbnormalClosure => Some(CloseCode::ABNORMAL),
            _ => None,
        }
    }

    /// Whether the error is a timeout (handshake or close).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Error::HandshakeTimeout
                | Error::CloseTimeout
                | Error::Proxy(ProxyError::Timeout { .. })
        ) || matches!(self, Error::Io(e) if e.kind() == io::ErrorKind::TimedOut)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Protocol(e) => write!(f, "protocol error: {e}"),
            Error::AbnormalClosure => f.write_str("connection closed without a close frame (1006)"),
            Error::CloseTimeout => {
                f.write_str("the peer did not complete the close handshake in time")
            }
            Error::Closed => f.write_str("connection closed"),
            Error::Send(e) => write!(f, "cannot send: {e}"),
            Error::HandshakeTimeout => f.write_str("opening handshake timed out"),
            Error::Handshake(e) => write!(f, "handshake refused: {e}"),
            Error::ClientHandshake(e) => write!(f, "handshake failed: {e}"),
            Error::Url(e) => write!(f, "invalid URL: {e}"),
            Error::Tls(e) => write!(f, "TLS: {e}"),
            Error::Config(e) => write!(f, "invalid configuration: {e}"),
            Error::Proxy(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Protocol(e) => Some(e),
            Error::Send(e) => Some(e),
            Error::Handshake(e) => Some(e),
            Error::ClientHandshake(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Error {
        Error::Protocol(e)
    }
}

impl From<EncodeError> for Error {
    fn from(e: EncodeError) -> Error {
        match e {
            EncodeError::Closed => Error::Closed,
            other => Error::Send(other),
        }
    }
}

impl From<HandshakeError> for Error {
    fn from(e: HandshakeError) -> Error {
        Error::Handshake(e)
    }
}

impl From<ClientHandshakeError> for Error {
    fn from(e: ClientHandshakeError) -> Error {
        Error::ClientHandshake(e)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
