//! WebSocket upgrades inside a hyper 1 server (feature `hyper`).
//!
//! A hyper service hands an upgrade request to [`upgrade`] (or
//! [`upgrade_with`], to choose a subprotocol or refuse), returns the
//! `101 Switching Protocols` response it gets, and awaits the
//! [`UpgradeFuture`] in a task: it yields a [`WebSocket`] over the
//! connection once hyper has sent the response.
//!
//! The request is checked by the same rules as ferrows' own listener
//! ([`ferrows_proto::handshake::validate_request`]): the same 400 and 426
//! answers with the same headers (turn an error into that response with
//! [`refusal`]), the same permessage-deflate negotiation from
//! [`Config::compression`], the same check that a chosen subprotocol was
//! offered.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper::{Request, Response, server::conn::http1, service::service_fn};
//! use hyper_util::rt::TokioIo;
//!
//! async fn handle(mut req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
//!     if req.uri().path() != "/ws" {
//!         return Ok(Response::new(Full::from("a REST route")));
//!     }
//!     let config = ferrows::Config::default().compression(true);
//!     match ferrows::hyper::upgrade(&mut req, config) {
//!         Ok((response, upgrade)) => {
//!             tokio::spawn(async move {
//!                 let Ok(mut ws) = upgrade.await else { return };
//!                 while let Some(Ok(msg)) = ws.recv().await {
//!                     if ws.send(msg).await.is_err() {
//!                         break;
//!                     }
//!                 }
//!             });
//!             Ok(response)
//!         }
//!         // 400, 426 with `Sec-WebSocket-Version: 13`, ...
//!         Err(e) => Ok(ferrows::hyper::refusal(&e)),
//!     }
//! }
//!
//! # async fn demo() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! loop {
//!     let (stream, _) = listener.accept().await?;
//!     tokio::spawn(async move {
//!         let conn = http1::Builder::new()
//!             .serve_connection(TokioIo::new(stream), service_fn(handle))
//!             .with_upgrades(); // required: without it nothing is upgraded
//!         let _ = conn.await;
//!     });
//! }
//! # }
//! ```
//!
//! # Types
//!
//! The public API uses `http` types (the request and response the service
//! already has) and ferrows' own. hyper's types stay inside: the socket is
//! a [`WebSocket<Upgraded>`], where [`Upgraded`] is ferrows' stream type.
//! When the connection was served over `hyper_util::rt::TokioIo<TcpStream>`
//! (as `axum::serve` and the example above do), it is the `TcpStream`
//! itself, taken back from hyper together with the bytes hyper had already
//! read past the request (a frame the client sent right behind its
//! request is not lost); any other transport (TLS, Unix sockets) stays
//! wrapped in hyper's upgraded stream, which replays those bytes itself.
//! The one hyper detail that shows is an error: a failed upgrade (the
//! connection dropped before the 101 went out) is an [`Error::Io`] whose
//! source is hyper's error.
//!
//! # HTTP/2
//!
//! An HTTP/2 `CONNECT` request (RFC 8441 Extended CONNECT) takes a separate
//! branch, answered for now with 501 "HTTP/2 WebSocket: see ferrows::h2".
//!
//! # Limits
//!
//! hyper reads and bounds the request head (its own limits apply, not
//! [`Config::handshake_limits`]), and its server's header-read timeout
//! replaces [`Config::handshake_timeout`]. Every other setting of the
//! [`Config`] applies to the WebSocket.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use ferrows_proto::Role;
use ferrows_proto::handshake::{self, HandshakeError, Headers, negotiate_deflate};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::server::{Accept, Reject};
use crate::websocket::{Negotiated, WebSocket};

/// Whether `req` asks for a WebSocket (`Upgrade: websocket` over HTTP/1.1,
/// or an HTTP/2 `CONNECT`), valid or not: a router sends the others
/// elsewhere.
pub fn is_upgrade_request<B>(req: &http::Request<B>) -> bool {
    is_upgrade_head(req.method(), req.version(), req.headers())
}

pub(crate) fn is_upgrade_head(
    method: &Method,
    version: Version,
    headers: &http::HeaderMap,
) -> bool {
    if version == Version::HTTP_2 {
        return method == Method::CONNECT;
    }
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
}

/// Upgrades `req` with no subprotocol: validates it, negotiates
/// compression from `config`, and returns the `101` response for the
/// service to return and the future of the [`WebSocket`].
///
/// # Errors
///
/// [`Error::Handshake`] when the request is not a valid upgrade (400, or
/// 426 for a wrong version; answer with [`refusal`]), or 500 when the
/// request carries no hyper upgrade handle (it did not come from a hyper
/// connection); [`Error::Config`] for invalid settings. A connection
/// served without `.with_upgrades()` still gets its 101, and the
/// [`UpgradeFuture`] then fails with [`Error::Io`].
pub fn upgrade<B, R: From<Bytes>>(
    req: &mut http::Request<B>,
    config: Config,
) -> Result<(http::Response<R>, UpgradeFuture)> {
    upgrade_with(req, config, |_| Ok(Accept::new()))
}

/// Like [`upgrade`], with `callback` inspecting the validated request
/// (headers, path, offered subprotocols) to [`Accept`] it (a subprotocol,
/// extra headers) or refuse it with a [`Reject`], as
/// [`crate::accept_with`] does on ferrows' own listener.
///
/// ```
/// use ferrows::{Accept, Config, Reject};
///
/// fn route(req: &mut http::Request<()>) -> http::Response<bytes::Bytes> {
///     let result = ferrows::hyper::upgrade_with(req, Config::default(), |req| {
///         if req.header("authorization") != Some("Bearer sesame") {
///             return Err(Reject::new(401, "who are you?"));
///         }
///         let chat = req.subprotocols().any(|p| p == "chat.v1");
///         Ok(if chat { Accept::new().protocol("chat.v1") } else { Accept::new() })
///     });
///     match result {
///         Ok((response, _upgrade)) => response, // spawn a task awaiting _upgrade
///         Err(e) => ferrows::hyper::refusal(&e),
///     }
/// }
///
/// let mut req = http::Request::get("/chat").body(()).unwrap();
/// assert_eq!(route(&mut req).status(), 400); // not an upgrade
/// ```
///
/// # Errors
///
/// As [`upgrade`], and [`Error::Handshake`] with the callback's refusal.
pub fn upgrade_with<B, R, F>(
    req: &mut http::Request<B>,
    config: Config,
    callback: F,
) -> Result<(http::Response<R>, UpgradeFuture)>
where
    R: From<Bytes>,
    F: FnOnce(&handshake::Request) -> std::result::Result<Accept, Reject>,
{
    let pending = Pending::from_request(req)?;
    let accept = callback(&pending.request).map_err(Error::Handshake)?;
    pending.finish(accept, config)
}

/// A validated upgrade request, waiting for the application's choice of
/// subprotocol and settings (the state of the axum extractor).
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) request: handshake::Request,
    accept_key: String,
    on_upgrade: ::hyper::upgrade::OnUpgrade,
}

impl Pending {
    pub(crate) fn from_request<B>(req: &mut http::Request<B>) -> Result<Pending> {
        let (request, accept_key) =
            validate(req.method(), req.uri(), req.version(), req.headers())?;
        let on_upgrade = take_on_upgrade(req.extensions_mut())?;
        Ok(Pending {
            request,
            accept_key,
            on_upgrade,
        })
    }

    /// The request head axum's extractor has (`ferrows::axum`).
    #[cfg(feature = "axum")]
    pub(crate) fn from_parts(parts: &mut http::request::Parts) -> Result<Pending> {
        let (request, accept_key) =
            validate(&parts.method, &parts.uri, parts.version, &parts.headers)?;
        let on_upgrade = take_on_upgrade(&mut parts.extensions)?;
        Ok(Pending {
            request,
            accept_key,
            on_upgrade,
        })
    }

    /// Builds the 101 response for `accept` and the future of the socket.
    pub(crate) fn finish<R: From<Bytes>>(
        self,
        accept: Accept,
        config: Config,
    ) -> Result<(http::Response<R>, UpgradeFuture)> {
        config.validate()?;
        let (protocol, extra) = accept.into_parts();
        let deflate = negotiate_deflate(&self.request, config.compression.as_ref());
        let mut response = http::Response::new(R::from(Bytes::new()));
        *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            server_value(&self.accept_key)?,
        );
        if let Some(p) = &protocol {
            if !self.request.subprotocols().any(|o| o == p) {
                return Err(Error::Handshake(HandshakeError::new(
                    500,
                    "the server chose a subprotocol the client did not offer",
                )));
            }
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, server_value(p)?);
        }
        if let Some((_, value)) = &deflate {
            headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, server_value(value)?);
        }
        for (name, value) in &extra {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid_header())?;
            headers.append(name, server_value(value)?);
        }
        let negotiated = Negotiated {
            protocol,
            deflate: deflate.map(|(params, _)| params),
        };
        Ok((
            response,
            UpgradeFuture {
                on_upgrade: self.on_upgrade,
                config,
                negotiated: Some(negotiated),
            },
        ))
    }
}

/// Checks the request head by ferrows-proto's rules; returns it as a
/// [`handshake::Request`] and the `Sec-WebSocket-Accept` value.
fn validate(
    method: &Method,
    uri: &http::Uri,
    version: Version,
    headers: &http::HeaderMap,
) -> Result<(handshake::Request, String)> {
    if version == Version::HTTP_2 && method == Method::CONNECT {
        // RFC 8441 Extended CONNECT: its own handshake (no key, no Upgrade
        // header, a 200 answer), handled apart. Not wired here yet.
        return Err(Error::Handshake(HandshakeError::new(
            501,
            "HTTP/2 WebSocket: see ferrows::h2",
        )));
    }
    let minor = match version {
        Version::HTTP_11 => 1,
        // HTTP/1.0, 0.9, 2 without CONNECT, 3: "HTTP/1.1 required".
        _ => 0,
    };
    let mut fields = Headers::new();
    for (name, value) in headers {
        fields.push(name.as_str(), value.as_bytes());
    }
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let request = handshake::Request::from_parts(method.as_str(), target, minor, fields);
    let upgrade = handshake::validate_request(&request).map_err(Error::Handshake)?;
    Ok((request, upgrade.accept))
}

fn take_on_upgrade(extensions: &mut http::Extensions) -> Result<::hyper::upgrade::OnUpgrade> {
    extensions
        .remove::<::hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| {
            Error::Handshake(HandshakeError::new(
                500,
                "server misconfigured: no hyper upgrade handle (serve the connection with `.with_upgrades()`)",
            ))
        })
}

fn invalid_header() -> Error {
    Error::Handshake(HandshakeError::new(500, "invalid response header"))
}

fn server_value(value: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(value).map_err(|_| invalid_header())
}

/// The HTTP response for an error of [`upgrade`]: the status, headers and
/// plain-text reason ferrows' own listener sends (e.g. 426 with
/// `Sec-WebSocket-Version: 13`); 500 for other errors. The body type is
/// the service's (`http_body_util::Full<Bytes>`, `axum::body::Body`, ...).
pub fn refusal<R: From<Bytes>>(error: &Error) -> http::Response<R> {
    let refusal = match error {
        Error::Handshake(e) => e.clone(),
        _ => HandshakeError::new(500, "server misconfigured"),
    };
    refusal_response(&refusal).map(R::from)
}

/// The response for `refusal`, as ferrows' own listener writes it: its
/// status, its headers (a field that is not valid is dropped) and the
/// plain-text reason. Shared with the HTTP/2 path (`crate::h2`).
pub(crate) fn refusal_response(refusal: &HandshakeError) -> http::Response<Bytes> {
    let body = Bytes::from(format!("{}\n", refusal.reason));
    let mut response = http::Response::new(body);
    *response.status_mut() = http::StatusCode::from_u16(refusal.status)
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in &refusal.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The future of an accepted upgrade: resolves to the [`WebSocket`] once
/// hyper has sent the 101 response and handed the connection over.
///
/// It only resolves if the response was returned from the service; await
/// it in a spawned task, not in the service itself.
#[derive(Debug)]
#[must_use = "the WebSocket is only reachable by awaiting the upgrade"]
pub struct UpgradeFuture {
    on_upgrade: ::hyper::upgrade::OnUpgrade,
    config: Config,
    negotiated: Option<Negotiated>,
}

impl UpgradeFuture {
    /// The subprotocol the response selected.
    pub fn protocol(&self) -> Option<&str> {
        self.negotiated.as_ref()?.protocol.as_deref()
    }
}

impl Future for UpgradeFuture {
    type Output = Result<WebSocket<Upgraded>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let upgraded = match ready!(Pin::new(&mut this.on_upgrade).poll(cx)) {
            Ok(upgraded) => upgraded,
            Err(e) => return Poll::Ready(Err(Error::Io(io::Error::other(e)))),
        };
        let Some(negotiated) = this.negotiated.take() else {
            return Poll::Ready(Err(Error::Io(io::Error::other(
                "upgrade future polled after completion",
            ))));
        };
        let (io, leftover) = Upgraded::from_hyper(upgraded);
        Poll::Ready(Ok(WebSocket::from_upgraded(
            io,
            Role::Server,
            &this.config,
            negotiated,
            leftover,
        )))
    }
}

/// The connection of an upgraded request: the `TcpStream` itself when
/// hyper served it over `TokioIo<TcpStream>`, hyper's upgraded stream
/// otherwise.
#[derive(Debug)]
pub struct Upgraded(Inner);

#[derive(Debug)]
enum Inner {
    Tcp(TcpStream),
    Hyper(TokioIo<::hyper::upgrade::Upgraded>),
}

impl Upgraded {
    /// Takes the stream back from hyper, with the bytes hyper read past the
    /// request head.
    fn from_hyper(upgraded: ::hyper::upgrade::Upgraded) -> (Upgraded, BytesMut) {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => (
                Upgraded(Inner::Tcp(parts.io.into_inner())),
                BytesMut::from(parts.read_buf),
            ),
            // hyper's stream replays what it read ahead itself.
            Err(upgraded) => (
                Upgraded(Inner::Hyper(TokioIo::new(upgraded))),
                BytesMut::new(),
            ),
        }
    }

    /// The peer's address, when the connection is a TCP stream ferrows
    /// could take back from hyper.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match &self.0 {
            Inner::Tcp(s) => s.peer_addr().ok(),
            Inner::Hyper(_) => None,
        }
    }

    /// Whether the connection is the bare `TcpStream` (no hyper layer in
    /// between).
    pub fn is_tcp(&self) -> bool {
        matches!(self.0, Inner::Tcp(_))
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Hyper(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            Inner::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Hyper(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            Inner::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Inner::Hyper(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.0 {
            Inner::Tcp(s) => s.is_write_vectored(),
            Inner::Hyper(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Tcp(s) => Pin::new(s).poll_flush(cx),
            Inner::Hyper(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Hyper(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
