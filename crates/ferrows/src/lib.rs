//! Fast, strictly conformant WebSockets for tokio: RFC 6455 and RFC 7692
//! (permessage-deflate), server and client, `ws://` and `wss://`.
//!
//! A server and a client in one program:
//!
//! ```
//! use ferrows::{Message, WebSocket};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> ferrows::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let url = format!("ws://{}/", listener.local_addr()?);
//!
//! // The server: echo every message back.
//! tokio::spawn(async move {
//!     let (stream, _) = listener.accept().await?;
//!     let mut ws = ferrows::accept(stream).await?;
//!     while let Some(msg) = ws.recv().await {
//!         match msg? {
//!             msg @ (Message::Text(_) | Message::Binary(_)) => ws.send(msg).await?,
//!             _ => {}
//!         }
//!     }
//!     Ok::<_, ferrows::Error>(())
//! });
//!
//! // The client.
//! let (mut ws, _response) = ferrows::connect(&url).await?;
//! ws.send("Hello").await?;
//! let reply = ws.recv().await.expect("a reply")?;
//! assert_eq!(reply.as_text(), Some("Hello"));
//! ws.close(1000, "done").await?;
//! # Ok(())
//! # }
//! ```
//!
//! # What you get
//!
//! * [`WebSocket`]: `recv()`/`send()`/`close()`, a [`futures_core::Stream`]
//!   and [`futures_sink::Sink`] of [`Message`], [`WebSocket::split`] into
//!   halves for two tasks. Pings are answered, close frames echoed and
//!   protocol errors reported with the right close code automatically.
//! * Server: [`accept`], [`accept_with`] (inspect the request, pick a
//!   subprotocol, add headers or refuse), [`Handshake`] (also answers plain
//!   HTTP, to serve a page on the WebSocket's path), [`serve`].
//! * Client: [`connect`], [`ClientBuilder`] (headers, subprotocols, custom
//!   TLS roots, HTTP and SOCKS5 proxies from the environment or given:
//!   [`proxy`]), [`client_handshake`] over any stream.
//! * Fragments: [`WebSocket::set_fragment_mode`] to receive frames as they
//!   complete, and [`Message::Fragment`] to send a message in pieces.
//! * Callback server, as Python's `websocket_server`: [`Server`] with
//!   `on_connect`/`on_message`/`on_disconnect` closures and a
//!   [`ServerHandle`] to send, broadcast and disconnect ([`callback`]).
//! * Event client, as ESP-IDF's `esp_websocket_client`: [`EventClient`]
//!   with [`Event`]s, sends with a timeout, ping/pong watch, reconnection
//!   with backoff and an inactivity timeout ([`event_client`]).
//! * Production accept loop: [`Listener`] (dual-stack bind, TLS, a
//!   connection cap with 503, bounded pending handshakes, one handshake
//!   deadline, Origin allow-list, graceful shutdown, a stream-wrap hook);
//!   [`keepalive`] (one ping timer per server, silent peers dropped) and
//!   [`pump::Pump`] (a [`Hub`] member's queue into a [`WebSocket`] with
//!   backpressure) to build servers on it.
//! * [`Config`]: limits, backpressure, timeouts, compression; every default
//!   documented.
//! * [`metrics`]: the counters of every connection and handshake
//!   (connections, handshakes by outcome, messages and bytes by opcode,
//!   close codes, compression, slow-consumer drops) at no per-message
//!   shared cost.
//! * One [`Hub`] across processes: [`Relay`] connects it to a
//!   [`backplane`] (an in-process [`backplane::memory::Bus`] here; Redis
//!   Streams in `ferrows-redis`), with dedupe, loss accounting, hold and
//!   retry, and reconnection.
//!
//! The protocol itself lives in the sans-I/O crate [`ferrows_proto`],
//! re-exported as [`proto`].
//!
//! # Runtime
//!
//! Timeouts use tokio's timer: run on a runtime with time enabled (the
//! default of `#[tokio::main]`).
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

#[cfg(feature = "axum")]
pub mod axum;
pub mod backplane;
mod broadcast;
pub mod callback;
mod client;
mod config;
mod error;
pub mod event_client;
#[cfg(feature = "http2")]
pub mod h2;
#[cfg(feature = "hyper")]
pub mod hyper;
pub mod keepalive;
pub mod listener;
mod message;
pub mod metrics;
mod protocol;
pub mod proxy;
pub mod pump;
mod server;
mod stream;
#[cfg(feature = "tls")]
pub mod tls;
mod websocket;

pub use backplane::{Relay, RelayConfig};
pub use broadcast::{Hub, Member, Prepared, SendError};
pub use callback::{Server, ServerHandle};
pub use client::{ClientBuilder, WsUrl, client_handshake, connect};
pub use config::Config;
pub use error::{Error, Result};
pub use event_client::{Event, EventClient};
pub use listener::{Listener, ListenerHandle, Shutdown};
pub use message::Message;
pub use proxy::Proxy;
pub use server::{Accept, Handshake, Reject, accept, accept_with, serve, serve_with};
pub use stream::MaybeTlsStream;
pub use websocket::{Negotiated, WebSocket, WsReader, WsWriter};

pub use ferrows_proto as proto;
pub use ferrows_proto::deflate::{DeflateConfig, DeflateParams};
pub use ferrows_proto::handshake::{Request, Response};
pub use ferrows_proto::{CloseCode, CloseFrame, Fragment, Limits, OpCode, Role, Utf8Bytes};

pub use bytes::Bytes;
