//! The [`WebSocketUpgrade`] extractor for axum 0.8 (feature `axum`).
//!
//! The shape of `axum::extract::ws`, with a ferrows [`WebSocket`] inside:
//!
//! ```no_run
//! use axum::{Router, response::Response, routing::any};
//! use ferrows::axum::WebSocketUpgrade;
//!
//! async fn ws(ws: WebSocketUpgrade) -> Response {
//!     ws.protocols(["chat.v2", "chat.v1"])
//!         .config(ferrows::Config::default().compression(true))
//!         .on_upgrade(|mut socket| async move {
//!             while let Some(Ok(msg)) = socket.recv().await {
//!                 if socket.send(msg).await.is_err() {
//!                     break;
//!                 }
//!             }
//!         })
//! }
//!
//! # async fn demo() -> std::io::Result<()> {
//! let app = Router::new().route("/ws", any(ws));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! # Next to `axum::extract::ws`
//!
//! | | `axum::extract::ws` | `ferrows::axum` |
//! |---|---|---|
//! | engine | tokio-tungstenite | ferrows (Autobahn strict, server and client) |
//! | permessage-deflate | no | `.config(Config::default().compression(true))` |
//! | settings | `.max_message_size(..)`, `.write_buffer_size(..)`, ... | `.config(ferrows::Config)` (limits, backpressure, timeouts, compression) |
//! | subprotocols | `.protocols([..])`, first of the server's list the client offered | the same; also `.requested_protocols()`, `.selected_protocol()` |
//! | socket | `axum::extract::ws::WebSocket` | [`WebSocket`] = `ferrows::WebSocket<Upgraded>` |
//! | messages | `axum::extract::ws::Message` | [`crate::Message`] |
//! | send / receive | `send(msg).await`, `recv().await` | the same, plus `feed`/`flush`, `queue` and [`crate::Prepared`] broadcasts |
//! | two tasks | `StreamExt::split` (a lock) | [`crate::WebSocket::split`] (no lock on the hot path) |
//! | request checks | method, `Connection`, `Upgrade`, key present, version | ferrows-proto's: also one `Host`, key is base64 of 16 bytes, one version |
//! | wrong version | 400 | 426 with `Sec-WebSocket-Version: 13` (RFC 6455 §4.4) |
//! | wrong method | 405 | 400, as on ferrows' listener |
//! | no upgrade handle | 426 | 500 (the request did not come from a hyper connection) |
//! | rejection | `WebSocketUpgradeRejection` (an enum) | [`WebSocketUpgradeRejection`] (status, reason, headers) |
//! | failed upgrade | `.on_failed_upgrade(..)` with `axum::Error` | `.on_failed_upgrade(..)` with [`crate::Error`] |
//! | HTTP/2 (RFC 8441) | with axum's `http2` feature | 501 for now, see `ferrows::h2` |
//!
//! `Option<WebSocketUpgrade>` extracts `None` from a request that is not an
//! upgrade at all (to serve a page and the WebSocket on one route), and
//! still rejects a broken upgrade.

use std::borrow::Cow;
use std::fmt;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;

use crate::config::Config;
use crate::error::Error;
use crate::hyper::{Pending, refusal};
use crate::server::Accept;

pub use crate::hyper::Upgraded;

/// The socket [`WebSocketUpgrade::on_upgrade`] hands to its callback.
pub type WebSocket = crate::WebSocket<Upgraded>;

/// Extractor of a WebSocket upgrade request: validated when extracted,
/// upgraded by [`WebSocketUpgrade::on_upgrade`].
pub struct WebSocketUpgrade {
    pending: Pending,
    config: Config,
    accept: Accept,
    protocol: Option<String>,
    on_failed_upgrade: Option<Box<dyn FnOnce(Error) + Send>>,
}

impl fmt::Debug for WebSocketUpgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketUpgrade")
            .field("request", &self.pending.request)
            .field("config", &self.config)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl WebSocketUpgrade {
    /// Selects the first of `protocols` the client offered (none if it
    /// offered none of them), as axum's `protocols` does.
    pub fn protocols<I>(mut self, protocols: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<Cow<'static, str>>,
    {
        self.protocol = protocols
            .into_iter()
            .map(Into::into)
            .find(|p| self.pending.request.subprotocols().any(|o| o == p))
            .map(Cow::into_owned);
        self
    }

    /// The subprotocols the client offered, in its order.
    pub fn requested_protocols(&self) -> impl Iterator<Item = &str> {
        self.pending.request.subprotocols()
    }

    /// The subprotocol selected by [`WebSocketUpgrade::protocols`].
    pub fn selected_protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The connection's settings (default: [`Config::default`], which has
    /// compression off).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Adds a header to the 101 response.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.accept = self.accept.header(name, value);
        self
    }

    /// The request as ferrows sees it (headers, target, offers).
    pub fn request(&self) -> &crate::Request {
        &self.pending.request
    }

    /// Calls `callback` if the connection cannot be upgraded after the 101
    /// response (the client went away). By default such errors are logged
    /// at debug level.
    pub fn on_failed_upgrade<C>(mut self, callback: C) -> Self
    where
        C: FnOnce(Error) + Send + 'static,
    {
        self.on_failed_upgrade = Some(Box::new(callback));
        self
    }

    /// Returns the 101 response and, once axum has sent it, runs `callback`
    /// with the [`WebSocket`] in a task of its own. If the settings are
    /// invalid (see [`Config::validate`]) the response is a 500 and
    /// `callback` never runs.
    #[must_use = "the connection is only upgraded if this response is returned"]
    pub fn on_upgrade<C, Fut>(self, callback: C) -> Response
    where
        C: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut accept = self.accept;
        if let Some(p) = self.protocol {
            accept = accept.protocol(p);
        }
        let (response, upgrade) = match self.pending.finish(accept, self.config) {
            Ok(ok) => ok,
            Err(e) => {
                tracing::warn!(error = %e, "WebSocket upgrade refused");
                return refusal(&e);
            }
        };
        let on_failed_upgrade = self.on_failed_upgrade;
        tokio::spawn(async move {
            match upgrade.await {
                Ok(socket) => callback(socket).await,
                Err(e) => match on_failed_upgrade {
                    Some(f) => f(e),
                    None => tracing::debug!(error = %e, "WebSocket upgrade failed"),
                },
            }
        });
        response
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = WebSocketUpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match Pending::from_parts(parts) {
            Ok(pending) => Ok(WebSocketUpgrade {
                pending,
                config: Config::default(),
                accept: Accept::new(),
                protocol: None,
                on_failed_upgrade: None,
            }),
            Err(error) => {
                tracing::debug!(error = %error, "WebSocket upgrade request refused");
                Err(WebSocketUpgradeRejection { error })
            }
        }
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for WebSocketUpgrade {
    type Rejection = WebSocketUpgradeRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        if !crate::hyper::is_upgrade_head(&parts.method, parts.version, &parts.headers) {
            return Ok(None);
        }
        <Self as FromRequestParts<S>>::from_request_parts(parts, state)
            .await
            .map(Some)
    }
}

/// Why a request could not be extracted as a [`WebSocketUpgrade`]: answers
/// with the status, headers and reason ferrows' own listener sends (400,
/// 426 with `Sec-WebSocket-Version: 13`, ...).
#[derive(Debug)]
pub struct WebSocketUpgradeRejection {
    error: Error,
}

impl WebSocketUpgradeRejection {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match &self.error {
            Error::Handshake(e) => e.status,
            _ => 500,
        }
    }

    /// The error behind it.
    pub fn error(&self) -> &Error {
        &self.error
    }
}

impl fmt::Display for WebSocketUpgradeRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for WebSocketUpgradeRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl IntoResponse for WebSocketUpgradeRejection {
    fn into_response(self) -> Response {
        refusal(&self.error)
    }
}
