//! WebSockets over HTTP/2 (RFC 8441, Extended CONNECT), server and client
//! (feature `http2`).
//!
//! Each WebSocket is one HTTP/2 stream: a `CONNECT` request with
//! `:protocol: websocket`, answered `200`; then the stream's DATA frames
//! carry the WebSocket frames. Many WebSockets can share one TCP/TLS
//! connection. The handshake rules (statuses, subprotocols,
//! permessage-deflate) are ferrows-proto's ([`crate::proto::handshake::h2`]),
//! the same negotiation as over HTTP/1.1; the resulting [`WebSocket`] has
//! the same API, [`Config`] and limits.
//!
//! HTTP/2 itself is hyper's (which uses the `h2` crate): hyper already
//! carries an Extended CONNECT stream as an upgraded byte stream with HTTP/2
//! flow control handled (a write waits for the peer's window; what arrives
//! is bounded by the window ferrows advertises), and it is the same code
//! path an application that serves HTTP/2 with hyper or axum uses
//! ([`upgrade`]), so one adapter serves both.
//!
//! # Server
//!
//! [`H2Server::serve_connection`] serves an accepted connection whose TLS
//! ALPN said `h2` ([`is_h2`]; [`server_tls`] offers `h2` next to
//! `http/1.1`): every request, WebSocket or not, is an [`H2Handshake`] for
//! the handler to [`accept`](H2Handshake::accept), [`reject`](H2Handshake::reject)
//! or [`respond`](H2Handshake::respond) to (a page over HTTP/2). Limits:
//! [`H2Server::max_concurrent_streams`] (`SETTINGS_MAX_CONCURRENT_STREAMS`,
//! default [`DEFAULT_MAX_CONCURRENT_STREAMS`]), the header list size
//! (`SETTINGS_MAX_HEADER_LIST_SIZE` = [`Config::handshake_limits`]'s
//! `max_head_size`, its `max_headers` enforced with 431), one handshake
//! deadline per stream ([`Config::handshake_timeout`]).
//!
//! # Client
//!
//! [`ClientBuilder::connect_h2`] dials (TLS with ALPN `h2` for `wss://`,
//! HTTP/2 with prior knowledge for `ws://`), waits for the server's
//! `SETTINGS_ENABLE_CONNECT_PROTOCOL = 1` (a clear
//! [`ClientHandshakeError::ExtendedConnectDisabled`] otherwise) and opens
//! one WebSocket. To share one connection among several WebSockets, open
//! an [`H2Client`] once and call [`H2Client::websocket`] for each:
//!
//! ```no_run
//! # async fn demo() -> ferrows::Result<()> {
//! use ferrows::ClientBuilder;
//! use ferrows::h2::H2Client;
//!
//! let conn = H2Client::connect(&ClientBuilder::new("wss://example.com/")).await?;
//! let (mut chat, _) = conn.websocket(ClientBuilder::new("wss://example.com/chat")).await?;
//! let (mut feed, _) = conn.websocket(ClientBuilder::new("wss://example.com/feed")).await?;
//! chat.send("hello").await?;
//! let _ = feed.recv().await;
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferrows_proto::Role;
use ferrows_proto::handshake::{
    self, Accepted, ClientHandshakeError, HandshakeError, Headers, Request, Response,
    negotiate_deflate,
};
use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::{Empty, Full};
use hyper::ext::Protocol;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::client::{ClientBuilder, WsUrl};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::server::{Accept, Reject};
use crate::stream::MaybeTlsStream;
use crate::websocket::{Negotiated, WebSocket};

/// Default `SETTINGS_MAX_CONCURRENT_STREAMS` of [`H2Server`]: at most 100
/// WebSockets (or other requests) at once on one connection, the minimum
/// RFC 9113 §6.5.2 recommends and what browsers expect.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;

/// The ALPN protocol id of HTTP/2 over TLS.
pub const ALPN_H2: &[u8] = b"h2";

/// How long a client waits for the server's first SETTINGS frame (which
/// says whether it accepts Extended CONNECT), at most.
const SETTINGS_WAIT: Duration = Duration::from_secs(3);

type Body = Full<Bytes>;

/// One WebSocket's byte stream: an HTTP/2 stream of an Extended CONNECT,
/// with HTTP/2 flow control handled underneath (writes wait for the peer's
/// window; shutting down ends the stream). On a [`crate::Listener`], the
/// stream a handshake carries becomes usable once the `200` is sent.
pub struct H2Stream(StreamState);

enum StreamState {
    /// The answer is not sent yet (`None`: a request that cannot become a
    /// stream, e.g. a GET).
    Pending(Option<OnUpgrade>),
    Ready(TokioIo<hyper::upgrade::Upgraded>),
}

impl H2Stream {
    fn ready(upgraded: hyper::upgrade::Upgraded) -> H2Stream {
        H2Stream(StreamState::Ready(TokioIo::new(upgraded)))
    }

    fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<&mut TokioIo<hyper::upgrade::Upgraded>>> {
        if let StreamState::Pending(pending) = &mut self.0 {
            let Some(on_upgrade) = pending else {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "this HTTP/2 request is not a WebSocket stream",
                )));
            };
            match Pin::new(on_upgrade).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(upgraded)) => {
                    self.0 = StreamState::Ready(TokioIo::new(upgraded));
                }
                Poll::Ready(Err(e)) => {
                    *pending = None;
                    return Poll::Ready(Err(io::Error::other(e)));
                }
            }
        }
        match &mut self.0 {
            StreamState::Ready(io) => Poll::Ready(Ok(io)),
            StreamState::Pending(_) => Poll::Ready(Err(io::Error::other("unreachable state"))),
        }
    }
}

impl fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("H2Stream")
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().poll_io(cx) {
            Poll::Ready(Ok(io)) => Pin::new(io).poll_read(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().poll_io(cx) {
            Poll::Ready(Ok(io)) => Pin::new(io).poll_write(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().poll_io(cx) {
            Poll::Ready(Ok(io)) => Pin::new(io).poll_flush(cx).map(ended_is_done),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().poll_io(cx) {
            Poll::Ready(Ok(io)) => Pin::new(io).poll_shutdown(cx).map(ended_is_done),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A flush or shutdown that fails because the peer already ended the
/// stream gracefully (`RST_STREAM` with `NO_ERROR` or `CANCEL`, which a
/// peer sends when it is done after the closing handshake) has nothing
/// left to do: not an error, as a TCP shutdown after the peer's FIN is
/// not.
fn ended_is_done(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if is_graceful_reset(&e) => Ok(()),
        r => r,
    }
}

fn is_graceful_reset(e: &io::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|e| e as _);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<::h2::Error>() {
            return matches!(
                h2.reason(),
                Some(::h2::Reason::NO_ERROR | ::h2::Reason::CANCEL)
            );
        }
        source = s.source();
    }
    false
}

/// A TLS server configuration that offers ALPN `h2` before `http/1.1`
/// (for a listener that serves both; [`is_h2`] tells them apart).
pub fn server_tls(config: &rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    let mut config = config.clone();
    config.alpn_protocols = vec![ALPN_H2.to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Whether `stream` negotiated HTTP/2 through TLS ALPN.
pub fn is_h2<S>(stream: &MaybeTlsStream<S>) -> bool {
    match stream {
        MaybeTlsStream::ServerTls(s) => s.get_ref().1.alpn_protocol() == Some(ALPN_H2),
        MaybeTlsStream::ClientTls(s) => s.get_ref().1.alpn_protocol() == Some(ALPN_H2),
        MaybeTlsStream::Plain(_) => false,
    }
}

// ---------------------------------------------------------------------------
// hyper / axum: an Extended CONNECT request inside the application's server.

/// Upgrades an HTTP/2 Extended CONNECT `req` received by a hyper server
/// (built with `http2::Builder::enable_connect_protocol()`): validates it
/// by RFC 8441, negotiates compression from `config`, and returns the `200`
/// response for the service to return and the future of the
/// [`WebSocket`] (await it in a spawned task).
///
/// # Errors
///
/// [`Error::Handshake`] when the request is not a valid Extended CONNECT
/// (405, 400, 501, 426: answer with [`refusal`]), or 500 when it carries no
/// hyper upgrade handle; [`Error::Config`] for invalid settings.
pub fn upgrade<B, R: From<Bytes>>(
    req: &mut http::Request<B>,
    config: Config,
) -> Result<(http::Response<R>, UpgradeFuture)> {
    upgrade_with(req, config, |_| Ok(Accept::new()))
}

/// Like [`upgrade`], with `callback` inspecting the validated request to
/// [`Accept`] it (a subprotocol, extra headers) or refuse it.
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
    F: FnOnce(&Request) -> std::result::Result<Accept, Reject>,
{
    let (request, protocol) = request_of(req);
    handshake::h2::validate_request(&request, protocol.as_deref()).map_err(Error::Handshake)?;
    let on_upgrade = req.extensions_mut().remove::<OnUpgrade>().ok_or_else(|| {
        Error::Handshake(HandshakeError::new(
            500,
            "server misconfigured: no hyper upgrade handle on the CONNECT request",
        ))
    })?;
    let accept = callback(&request).map_err(Error::Handshake)?;
    let (response, negotiated) = accept_parts(&request, accept, &config)?;
    let response = response.map(R::from);
    Ok((
        response,
        UpgradeFuture {
            on_upgrade,
            config,
            negotiated: Some(negotiated),
        },
    ))
}

/// The HTTP response for an error of [`upgrade`] or a [`Reject`]: its
/// status, headers and plain-text reason; 500 for other errors (the same
/// answer as [`crate::hyper::refusal`]).
pub use crate::hyper::refusal;

use crate::hyper::refusal_response;

fn plain_response(
    status: u16,
    headers: &[(String, String)],
    content_type: &str,
    body: Bytes,
) -> http::Response<Bytes> {
    let mut response = http::Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let map = response.headers_mut();
    for (name, value) in headers {
        // A field that is not valid is dropped, as on the HTTP/1.1 path.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            map.append(name, value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(content_type) {
        map.insert(http::header::CONTENT_TYPE, value);
    }
    response
}

/// The future of an accepted Extended CONNECT: resolves to the
/// [`WebSocket`] once hyper has sent the `200` and handed the stream over.
#[derive(Debug)]
#[must_use = "the WebSocket is only reachable by awaiting the upgrade"]
pub struct UpgradeFuture {
    on_upgrade: OnUpgrade,
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
    type Output = Result<WebSocket<H2Stream>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let upgraded = match Pin::new(&mut this.on_upgrade).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(upgraded)) => upgraded,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(io::Error::other(e)))),
        };
        let Some(negotiated) = this.negotiated.take() else {
            return Poll::Ready(Err(Error::Io(io::Error::other(
                "upgrade future polled after completion",
            ))));
        };
        Poll::Ready(Ok(WebSocket::from_upgraded(
            H2Stream::ready(upgraded),
            Role::Server,
            &this.config,
            negotiated,
            BytesMut::new(),
        )))
    }
}

/// The proto [`Request`] of an HTTP/2 request and its `:protocol`.
fn request_of<B>(req: &http::Request<B>) -> (Request, Option<String>) {
    let mut fields = Headers::new();
    for (name, value) in req.headers() {
        fields.push(name.as_str(), value.as_bytes());
    }
    let protocol = req
        .extensions()
        .get::<Protocol>()
        .map(|p| p.as_str().to_owned());
    let path = req.uri().path_and_query().map_or("", |pq| pq.as_str());
    let request = handshake::h2::request(
        req.method().as_str(),
        protocol.as_deref(),
        path,
        req.uri().authority().map(|a| a.as_str()),
        fields,
    );
    (request, protocol)
}

/// The `200` response for `accept` and what it negotiated.
fn accept_parts(
    request: &Request,
    accept: Accept,
    config: &Config,
) -> Result<(http::Response<Bytes>, Negotiated)> {
    config.validate()?;
    let (protocol, headers) = accept.into_parts();
    let accepted = Accepted {
        protocol,
        deflate: negotiate_deflate(request, config.compression.as_ref()),
        headers,
    };
    let h2 = handshake::h2::accept_response(request, &accepted).map_err(Error::Handshake)?;
    let mut response = http::Response::new(Bytes::new());
    for (name, value) in &h2.headers {
        let name = HeaderName::from_bytes(name.as_bytes());
        let value = HeaderValue::from_str(value);
        let (Ok(name), Ok(value)) = (name, value) else {
            return Err(Error::Handshake(HandshakeError::new(
                500,
                "invalid response header",
            )));
        };
        response.headers_mut().append(name, value);
    }
    Ok((
        response,
        Negotiated {
            protocol: accepted.protocol,
            deflate: accepted.deflate.map(|(params, _)| params),
        },
    ))
}

// ---------------------------------------------------------------------------
// Server: a whole HTTP/2 connection.

/// Serves HTTP/2 connections whose Extended CONNECT streams become
/// WebSockets. Cheap to clone.
#[derive(Debug, Clone)]
pub struct H2Server {
    config: Config,
    max_concurrent_streams: u32,
}

impl H2Server {
    /// A server whose WebSockets use `config` (limits, compression,
    /// handshake deadline and header limits).
    pub fn new(config: Config) -> H2Server {
        H2Server {
            config,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
        }
    }

    /// Sets `SETTINGS_MAX_CONCURRENT_STREAMS`: WebSockets and other
    /// requests open at once on one connection; a client that opens more
    /// has the extra streams refused (`REFUSED_STREAM`). Default
    /// [`DEFAULT_MAX_CONCURRENT_STREAMS`].
    pub fn max_concurrent_streams(mut self, max: u32) -> H2Server {
        self.max_concurrent_streams = max;
        self
    }

    /// Serves one connection (already through TLS with ALPN `h2`, or
    /// HTTP/2 with prior knowledge) until the client closes it: each
    /// request becomes an [`H2Handshake`] passed to `handler` in a task of
    /// its own. A request the handler drops unanswered gets 404; one it
    /// does not answer within the handshake timeout, 503.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for invalid settings; [`Error::Io`] when the
    /// connection fails (an HTTP/2 protocol error of the peer included).
    pub async fn serve_connection<S, H, Fut>(
        &self,
        io: S,
        peer_addr: Option<SocketAddr>,
        handler: H,
    ) -> Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(H2Handshake) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.config.validate()?;
        let handler = Arc::new(handler);
        let config = self.config.clone();
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let handler = handler.clone();
                let config = config.clone();
                async move { Ok::<_, Infallible>(dispatch(req, config, peer_addr, handler).await) }
            });
        let head_size =
            u32::try_from(self.config.handshake_limits.max_head_size).unwrap_or(u32::MAX);
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .enable_connect_protocol()
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(head_size)
            .serve_connection(TokioIo::new(io), service)
            .await
            .map_err(|e| Error::Io(io::Error::other(e)))
    }
}

async fn dispatch<H, Fut>(
    req: http::Request<hyper::body::Incoming>,
    config: Config,
    peer_addr: Option<SocketAddr>,
    handler: Arc<H>,
) -> http::Response<Body>
where
    H: Fn(H2Handshake) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let deadline = config.handshake_timeout;
    let mut req = req;
    if req.headers().len() > config.handshake_limits.max_headers {
        tracing::debug!(?peer_addr, "HTTP/2 request with too many header fields");
        return refusal_response(&HandshakeError::new(431, "too many header fields"))
            .map(Full::new);
    }
    let (request, protocol) = request_of(&req);
    let on_upgrade = (req.method() == Method::CONNECT)
        .then(|| req.extensions_mut().remove::<OnUpgrade>())
        .flatten();
    let (reply, answer) = oneshot::channel();
    let hs = H2Handshake {
        request,
        protocol,
        on_upgrade,
        reply,
        config,
        peer_addr,
    };
    tokio::spawn(handler(hs));
    match tokio::time::timeout(deadline, answer).await {
        Ok(Ok(response)) => response.map(Full::new),
        Ok(Err(_)) => plain_response(
            404,
            &[],
            "text/plain; charset=utf-8",
            Bytes::from_static(b"not found\n"),
        )
        .map(Full::new),
        Err(_) => refusal_response(&HandshakeError::new(503, "no answer in time")).map(Full::new),
    }
}

/// A request on an HTTP/2 connection served by [`H2Server`], waiting for
/// the handler's answer: the counterpart of [`crate::Handshake`] for
/// HTTP/1.1, with the same choices.
pub struct H2Handshake {
    request: Request,
    protocol: Option<String>,
    on_upgrade: Option<OnUpgrade>,
    reply: oneshot::Sender<http::Response<Bytes>>,
    config: Config,
    peer_addr: Option<SocketAddr>,
}

impl fmt::Debug for H2Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Handshake")
            .field("request", &self.request)
            .field("protocol", &self.protocol)
            .field("peer_addr", &self.peer_addr)
            .finish_non_exhaustive()
    }
}

impl H2Handshake {
    /// The request: method, path (`:path`), fields, `host` from
    /// `:authority`; [`Request::version`] is `"HTTP/2"`.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The `:protocol` pseudo-header (`websocket` for a WebSocket).
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Whether this is a WebSocket Extended CONNECT (valid or not): the
    /// others are plain requests to [`respond`](H2Handshake::respond) to.
    pub fn is_websocket(&self) -> bool {
        self.request.method() == "CONNECT"
            && self
                .protocol
                .as_deref()
                .is_some_and(|p| p.eq_ignore_ascii_case(handshake::h2::PROTOCOL))
    }

    /// The client's address, as given to [`H2Server::serve_connection`].
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// The settings the WebSocket will use; change them before accepting.
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// Accepts with no subprotocol.
    ///
    /// # Errors
    ///
    /// As [`H2Handshake::accept_with`].
    pub async fn accept(self) -> Result<WebSocket<H2Stream>> {
        self.accept_with(Accept::new()).await
    }

    /// Validates the request (RFC 8441), answers `200` with the choices of
    /// `accept` and the negotiated compression, and returns the WebSocket.
    ///
    /// # Errors
    ///
    /// [`Error::Handshake`] after answering a refusal (405, 400, 501, 426,
    /// 500 for an unoffered subprotocol); [`Error::HandshakeTimeout`];
    /// [`Error::Io`] if the stream went away.
    pub async fn accept_with(mut self, accept: Accept) -> Result<WebSocket<H2Stream>> {
        if let Err(e) = handshake::h2::validate_request(&self.request, self.protocol.as_deref()) {
            let _ = self.reply.send(refusal_response(&e));
            return Err(Error::Handshake(e));
        }
        let Some(on_upgrade) = self.on_upgrade.take() else {
            let e = HandshakeError::new(500, "no upgrade handle for this stream");
            let _ = self.reply.send(refusal_response(&e));
            return Err(Error::Handshake(e));
        };
        let (response, negotiated) = match accept_parts(&self.request, accept, &self.config) {
            Ok(parts) => parts,
            Err(Error::Handshake(e)) => {
                let _ = self.reply.send(refusal_response(&e));
                return Err(Error::Handshake(e));
            }
            Err(e) => {
                let _ = self.reply.send(refusal_response(&HandshakeError::new(
                    500,
                    "server misconfigured",
                )));
                return Err(e);
            }
        };
        if self.reply.send(response).is_err() {
            return Err(Error::HandshakeTimeout);
        }
        let future = UpgradeFuture {
            on_upgrade,
            config: self.config.clone(),
            negotiated: Some(negotiated),
        };
        match tokio::time::timeout(self.config.handshake_timeout, future).await {
            Ok(r) => r,
            Err(_) => Err(Error::HandshakeTimeout),
        }
    }

    /// Refuses with `status` and `reason` as a plain-text body.
    pub fn reject(self, status: u16, reason: &str) {
        let _ = self.reply.send(refusal_response(&HandshakeError::new(
            status,
            reason.to_owned(),
        )));
    }

    /// Refuses with `reject`'s status, headers and reason.
    pub fn reject_with(self, reject: &Reject) {
        let _ = self.reply.send(refusal_response(reject));
    }

    /// Answers a plain request (a page, a redirect) with `status`,
    /// `headers`, `content_type` and `body` (no body for `HEAD`).
    pub fn respond(
        self,
        status: u16,
        headers: &[(String, String)],
        content_type: &str,
        body: &[u8],
    ) {
        let body = if self.request.method() == "HEAD" {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(body)
        };
        let _ = self
            .reply
            .send(plain_response(status, headers, content_type, body));
    }
}

// ---------------------------------------------------------------------------
// Client.

/// A client's HTTP/2 connection to one server that accepts WebSockets over
/// HTTP/2; each [`H2Client::websocket`] opens one more on it. Cheap to
/// clone (the clones share the connection), which stays open while any
/// clone or WebSocket of it lives.
#[derive(Clone)]
pub struct H2Client {
    send: hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    config: Config,
}

impl fmt::Debug for H2Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Client")
            .field("closed", &self.send.is_closed())
            .finish_non_exhaustive()
    }
}

impl H2Client {
    /// Dials `builder`'s URL (TCP, then TLS with ALPN `h2` for `wss://`
    /// with the builder's TLS configuration; HTTP/2 with prior knowledge
    /// for `ws://`) and waits for the server's settings, within the
    /// handshake timeout of the builder's [`Config`].
    ///
    /// # Errors
    ///
    /// [`Error::Url`], [`Error::Io`], [`Error::Tls`] (also when the server
    /// does not pick `h2` in ALPN), [`Error::HandshakeTimeout`], and
    /// [`ClientHandshakeError::ExtendedConnectDisabled`].
    pub async fn connect(builder: &ClientBuilder) -> Result<H2Client> {
        let url = builder.url()?;
        let config = builder.config_ref().clone();
        let work = async {
            let tcp = TcpStream::connect((url.host.as_str(), url.port)).await?;
            tcp.set_nodelay(true)?;
            if url.secure {
                let tls = dial_tls(builder, &url, tcp).await?;
                H2Client::handshake(tls, config.clone()).await
            } else {
                H2Client::handshake(tcp, config.clone()).await
            }
        };
        tokio::time::timeout(config.handshake_timeout, work)
            .await
            .map_err(|_| Error::HandshakeTimeout)?
    }

    /// Starts HTTP/2 on an already connected stream (TLS, if any, done by
    /// the caller with ALPN `h2`) and waits for the server's settings.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if HTTP/2 fails, and
    /// [`ClientHandshakeError::ExtendedConnectDisabled`].
    pub async fn handshake<S>(io: S, config: Config) -> Result<H2Client>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        config.validate()?;
        let head_size = u32::try_from(config.handshake_limits.max_head_size).unwrap_or(u32::MAX);
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .max_header_list_size(head_size)
            .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .map_err(|e| Error::Io(io::Error::other(e)))?;
        // The server's SETTINGS come first on the connection. hyper reads
        // them in a task of its own, which wakes nobody when they change
        // the flag: look every few milliseconds. HTTP/2 does not tell
        // "settings without the flag" from "settings not read yet", so a
        // server without it is recognised by the wait running out.
        let mut conn = Box::pin(conn);
        let deadline = tokio::time::Instant::now() + SETTINGS_WAIT.min(config.handshake_timeout);
        while !conn.is_extended_connect_protocol_enabled() {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::ClientHandshake(
                    ClientHandshakeError::ExtendedConnectDisabled,
                ));
            }
            tokio::select! {
                r = conn.as_mut() => {
                    return Err(Error::Io(match r {
                        Ok(()) => io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the HTTP/2 connection closed before the server's settings",
                        ),
                        Err(e) => io::Error::other(e),
                    }));
                }
                () = tokio::time::sleep(Duration::from_millis(2)) => {}
            }
        }
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP/2 connection ended");
            }
        });
        Ok(H2Client { send, config })
    }

    /// Opens a WebSocket on this connection with `builder`'s path
    /// (`:authority` and `:path` from its URL), headers, subprotocols and
    /// [`Config`] (compression offered if enabled), within its handshake
    /// timeout.
    ///
    /// # Errors
    ///
    /// [`Error::ClientHandshake`] (a status other than 200:
    /// [`ClientHandshakeError::NotOk`]; an unoffered subprotocol or
    /// extension), [`Error::Io`] when the stream or connection fails,
    /// [`Error::HandshakeTimeout`].
    pub async fn websocket(
        &self,
        builder: ClientBuilder,
    ) -> Result<(WebSocket<H2Stream>, Response)> {
        let config = builder.config_ref().clone();
        let (stream, negotiated, response) = self.open_stream(builder).await?;
        let ws =
            WebSocket::from_upgraded(stream, Role::Client, &config, negotiated, BytesMut::new());
        Ok((ws, response))
    }

    /// The handshake of [`H2Client::websocket`] without the WebSocket: the
    /// stream, what was negotiated and the response, for wrapping the
    /// stream (tracing, metering) before [`WebSocket::from_upgraded`]
    /// (with [`Role::Client`], the builder's [`Config`] and no leftover
    /// bytes).
    ///
    /// # Errors
    ///
    /// As [`H2Client::websocket`].
    pub async fn open_stream(
        &self,
        builder: ClientBuilder,
    ) -> Result<(H2Stream, Negotiated, Response)> {
        let config = builder.config_ref().clone();
        config.validate()?;
        let request = builder.request()?;
        let url = builder.url()?;
        let fields = handshake::h2::request_fields(&request)?;
        let scheme = if url.secure { "https" } else { "http" };
        let uri = http::Uri::builder()
            .scheme(scheme)
            .authority(request.host.as_str())
            .path_and_query(request.target.as_str())
            .build()
            .map_err(|e| Error::Url(format!("{url}: {e}")))?;
        let mut req = http::Request::new(Empty::<Bytes>::new());
        *req.method_mut() = Method::CONNECT;
        *req.uri_mut() = uri;
        *req.version_mut() = http::Version::HTTP_2;
        req.extensions_mut()
            .insert(Protocol::from_static(handshake::h2::PROTOCOL));
        for (name, value) in &fields {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) else {
                return Err(Error::ClientHandshake(
                    ClientHandshakeError::InvalidRequest(format!(
                        "header {name:?} is not a valid HTTP/2 field"
                    )),
                ));
            };
            req.headers_mut().append(name, value);
        }
        let mut send = self.send.clone();
        let work = async move {
            send.ready()
                .await
                .map_err(|e| Error::Io(io::Error::other(e)))?;
            let mut resp = send
                .send_request(req)
                .await
                .map_err(|e| Error::Io(io::Error::other(e)))?;
            let mut headers = Headers::new();
            for (name, value) in resp.headers() {
                headers.push(name.as_str(), value.as_bytes());
            }
            let status = resp.status().as_u16();
            let negotiated = handshake::h2::validate_response(
                status,
                &headers,
                &request,
                config.compression.as_ref(),
            )?;
            let upgraded = hyper::upgrade::on(&mut resp)
                .await
                .map_err(|e| Error::Io(io::Error::other(e)))?;
            Ok((
                H2Stream::ready(upgraded),
                Negotiated {
                    protocol: negotiated.protocol,
                    deflate: negotiated.deflate,
                },
                handshake::h2::response(status, headers),
            ))
        };
        tokio::time::timeout(config.handshake_timeout, work)
            .await
            .map_err(|_| Error::HandshakeTimeout)?
    }

    /// Whether the connection has closed (no more WebSockets can open).
    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }

    /// The settings given when connecting.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

async fn dial_tls(
    builder: &ClientBuilder,
    url: &WsUrl,
    tcp: TcpStream,
) -> Result<MaybeTlsStream<TcpStream>> {
    let base = match builder.tls_ref() {
        Some(c) => c.clone(),
        None => crate::tls::client_config()?,
    };
    let mut config = (*base).clone();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    let name = rustls_pki_types::ServerName::try_from(url.host.clone())
        .map_err(|e| Error::Tls(format!("server name {:?}: {e}", url.host)))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| {
            if e.to_string().contains("NoApplicationProtocol") {
                Error::Tls(format!(
                    "{url}: the server does not offer HTTP/2 (ALPN h2): {e}"
                ))
            } else {
                Error::Tls(e.to_string())
            }
        })?;
    let stream = MaybeTlsStream::ClientTls(Box::new(tls));
    if !is_h2(&stream) {
        return Err(Error::Tls(format!(
            "{url}: the server did not agree to HTTP/2 (ALPN h2); it may not serve HTTP/2 at all"
        )));
    }
    Ok(stream)
}

impl ClientBuilder {
    /// Connects over HTTP/2 (RFC 8441) instead of HTTP/1.1: a new HTTP/2
    /// connection carrying this one WebSocket (see [`H2Client`] to share
    /// one connection among several).
    ///
    /// # Errors
    ///
    /// As [`H2Client::connect`] and [`H2Client::websocket`].
    pub async fn connect_h2(self) -> Result<(WebSocket<H2Stream>, Response)> {
        let client = H2Client::connect(&self).await?;
        client.websocket(self).await
    }
}

// ---------------------------------------------------------------------------
// crate::Listener: HTTP/2 connections next to HTTP/1.1 ones.

/// Where the answer to a request that came on an HTTP/2 stream goes (held
/// by a [`crate::Handshake`] made by the listener).
pub(crate) struct Reply {
    protocol: Option<String>,
    tx: oneshot::Sender<http::Response<Bytes>>,
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl Reply {
    /// Validates `request` (RFC 8441) and answers 200 with `accept`'s
    /// choices; a refusal is answered and returned.
    pub(crate) fn accept(
        self,
        request: &Request,
        accept: Accept,
        config: &Config,
    ) -> Result<Negotiated> {
        if let Err(e) = handshake::h2::validate_request(request, self.protocol.as_deref()) {
            self.refuse(&e);
            return Err(Error::Handshake(e));
        }
        match accept_parts(request, accept, config) {
            Ok((response, negotiated)) => {
                if self.tx.send(response).is_err() {
                    return Err(Error::HandshakeTimeout);
                }
                Ok(negotiated)
            }
            Err(Error::Handshake(e)) => {
                self.refuse(&e);
                Err(Error::Handshake(e))
            }
            Err(e) => {
                self.refuse(&HandshakeError::new(500, "server misconfigured"));
                Err(e)
            }
        }
    }

    pub(crate) fn refuse(self, e: &HandshakeError) {
        let _ = self.tx.send(refusal_response(e));
    }

    pub(crate) fn send(self, response: http::Response<Bytes>) {
        let _ = self.tx.send(response);
    }
}

/// A page answer over HTTP/2.
pub(crate) fn page(
    status: u16,
    headers: &[(String, String)],
    content_type: &str,
    body: &[u8],
) -> http::Response<Bytes> {
    plain_response(status, headers, content_type, Bytes::copy_from_slice(body))
}

/// Turns an HTTP/2 stream into the listener's stream type (its wrap hook
/// for HTTP/2).
pub(crate) type WrapH2<S> = dyn Fn(H2Stream, SocketAddr) -> S + Send + Sync;

/// Serves one HTTP/2 connection of a [`crate::Listener`]: each request
/// becomes a [`crate::Handshake`] passed to `on_request` (which admits it
/// and spawns the handler); its answer is awaited within the handshake
/// timeout (503 after), 404 if the handshake is dropped unanswered.
pub(crate) async fn serve_listener_connection<S, F>(
    io: MaybeTlsStream<TcpStream>,
    peer: SocketAddr,
    config: Config,
    max_concurrent_streams: u32,
    wrap: Arc<WrapH2<S>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    on_request: F,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(crate::Handshake<S>) + Send + Sync + 'static,
{
    let on_request = Arc::new(on_request);
    let head_size = u32::try_from(config.handshake_limits.max_head_size).unwrap_or(u32::MAX);
    let service_config = config.clone();
    let service = hyper::service::service_fn(
        move |mut req: http::Request<hyper::body::Incoming>| {
            let config = service_config.clone();
            let wrap = wrap.clone();
            let on_request = on_request.clone();
            async move {
                if req.headers().len() > config.handshake_limits.max_headers {
                    tracing::info!(peer = %crate::listener::display_addr(peer), "HTTP/2 request with too many header fields: 431");
                    let e = HandshakeError::new(431, "too many header fields");
                    return Ok::<_, Infallible>(refusal_response(&e).map(Full::new));
                }
                let (request, protocol) = request_of(&req);
                let on_upgrade = (req.method() == Method::CONNECT)
                    .then(|| req.extensions_mut().remove::<OnUpgrade>())
                    .flatten();
                let (tx, rx) = oneshot::channel();
                let stream = wrap(H2Stream(StreamState::Pending(on_upgrade)), peer);
                let deadline = config.handshake_timeout;
                let hs = crate::Handshake::from_h2(
                    stream,
                    request,
                    config,
                    peer,
                    Reply { protocol, tx },
                );
                on_request(hs);
                let response = match tokio::time::timeout(deadline, rx).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(_)) => plain_response(
                        404,
                        &[],
                        "text/plain; charset=utf-8",
                        Bytes::from_static(b"not found\n"),
                    ),
                    Err(_) => refusal_response(&HandshakeError::new(503, "no answer in time")),
                };
                Ok(response.map(Full::new))
            }
        },
    );
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .enable_connect_protocol()
        .max_concurrent_streams(max_concurrent_streams)
        .max_header_list_size(head_size)
        .serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r.map_err(|e| Error::Io(io::Error::other(e))),
        _ = shutdown.wait_for(|down| *down) => {}
    }
    // Shutting down: GOAWAY (no new streams); the open WebSockets' handlers
    // close them with 1001, then the connection ends.
    conn.as_mut().graceful_shutdown();
    conn.await.map_err(|e| Error::Io(io::Error::other(e)))
}
