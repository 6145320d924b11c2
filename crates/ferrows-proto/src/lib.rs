//! Sans-I/O WebSocket protocol: RFC 6455 framing and handshake, RFC 7692
//! permessage-deflate, for both roles.
//!
//! Nothing here touches a socket or a clock. Bytes go in, events come out;
//! messages go in, bytes come out. The tokio layer (`ferrows`) and the tools
//! of the `ferrows` program are built on these types, and so can any other
//! I/O layer.
//!
//! * [`Decoder`]: feed it a read buffer, get [`Incoming`] messages and
//!   control frames, or a [`ProtocolError`] that names the close code to send.
//! * [`Encoder`]: turn messages and control frames into wire bytes in a
//!   [`WriteQueue`], masked (client) or not (server), compressed if negotiated.
//! * [`handshake`]: the opening handshake, server and client side.
//! * [`frame`], [`mask`], [`utf8`], [`close`]: the building blocks.
//!
//! ```
//! use bytes::BytesMut;
//! use ferrows_proto::{Decoder, Encoder, Incoming, Limits, Role, WriteQueue};
//!
//! // A client encodes a text message...
//! let mut client = Encoder::new(Role::Client, None);
//! let mut wire = WriteQueue::new();
//! client.text("Hello", &mut wire).unwrap();
//!
//! // ...and the server decodes it from its read buffer.
//! let mut server = Decoder::new(Role::Server, Limits::default(), None);
//! let mut read_buf = BytesMut::from(&wire.to_vec()[..]);
//! match server.decode(&mut read_buf)? {
//!     Some(Incoming::Text(text)) => assert_eq!(text.as_str(), "Hello"),
//!     other => panic!("unexpected {other:?}"),
//! }
//! # Ok::<(), ferrows_proto::ProtocolError>(())
//! ```
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod close;
mod config;
mod decoder;
pub mod deflate;
mod encoder;
mod error;
pub mod extensions;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;
mod write_queue;

pub use close::{CloseCode, CloseFrame};
pub use config::Limits;
pub use decoder::{Decoder, Fragment, Incoming};
pub use encoder::{
    EncodeError, Encoder, SharedForm, encode_raw_frame, encode_server_frame,
    encode_server_frame_deflated,
};
pub use error::ProtocolError;
pub use frame::{FrameHeader, OpCode};
pub use utf8::Utf8Bytes;
pub use write_queue::WriteQueue;

/// Which end of the connection this is. Servers receive masked frames and
/// send unmasked ones; clients the opposite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The end that accepted the connection.
    Server,
    /// The end that opened the connection.
    Client,
}
