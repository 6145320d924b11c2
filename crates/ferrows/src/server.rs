//! The server side of the opening handshake.

use std::future::Future;
use std::net::SocketAddr;

use bytes::BytesMut;
use ferrows_proto::Role;
use ferrows_proto::handshake::{
    self, Accepted, HandshakeError, Request, Upgrade, accept_response, negotiate_deflate,
    parse_request, validate_request,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::websocket::{Negotiated, WebSocket};

/// A refusal the application returns from a request callback: an HTTP
/// status, a short reason (the response body) and optional headers.
pub type Reject = HandshakeError;

/// A page for a request that came over HTTP/2.
#[cfg(feature = "http2")]
type H2Page = http::Response<bytes::Bytes>;
#[cfg(not(feature = "http2"))]
type H2Page = ();

/// How to accept a connection: the subprotocol and extra response headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accept {
    protocol: Option<String>,
    headers: Vec<(String, String)>,
}

impl Accept {
    /// Accept with no subprotocol and no extra headers.
    pub fn new() -> Accept {
        Accept::default()
    }

    /// Selects `protocol`, which must be one the client offered
    /// (see [`Request::subprotocols`]).
    pub fn protocol(mut self, protocol: impl Into<String>) -> Accept {
        self.protocol = Some(protocol.into());
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Accept {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The chosen subprotocol and the extra headers.
    #[cfg(any(feature = "hyper", feature = "http2"))]
    pub(crate) fn into_parts(self) -> (Option<String>, Vec<(String, String)>) {
        (self.protocol, self.headers)
    }
}

/// A request read from a new connection, waiting for the application's
/// decision: [`Handshake::accept`] it as a WebSocket, [`Handshake::reject`]
/// it, or [`Handshake::respond`] with a plain HTTP response (a page served
/// on the same port as the WebSocket).
///
/// The futures of the handshake (`read`, `accept*`, `reject*`, `respond`,
/// and the free functions [`accept`] and [`accept_with`]) are boxed: a
/// pointer in size. A task that accepts and then serves the connection for
/// hours stays as small as its serving loop, which matters with many idle
/// connections.
///
/// ```no_run
/// # async fn demo(stream: tokio::net::TcpStream) -> ferrows::Result<()> {
/// use ferrows::{Accept, Config, Handshake};
/// let hs = Handshake::read(stream, Config::default()).await?;
/// if !hs.request().is_upgrade() {
///     hs.respond(200, &[], "text/html", b"<h1>hello</h1>").await?;
///     return Ok(());
/// }
/// if hs.request().header("authorization") != Some("Bearer sesame") {
///     hs.reject(401, "who are you?").await?;
///     return Ok(());
/// }
/// let mut ws = hs.accept_with(Accept::new()).await?;
/// ws.send("welcome").await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Handshake<S> {
    io: S,
    request: Request,
    leftover: BytesMut,
    config: Config,
    peer_addr: Option<SocketAddr>,
    /// Set for a request that came on an HTTP/2 stream: answers go there.
    #[cfg(feature = "http2")]
    h2: Option<crate::h2::Reply>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Handshake<S> {
    /// Reads the request head from `io`, within the handshake timeout.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for invalid settings (checked before anything is
    /// read), [`Error::Handshake`] for a malformed or oversized head (the
    /// 400 or 431 response was written), [`Error::HandshakeTimeout`],
    /// [`Error::Io`].
    pub fn read(io: S, config: Config) -> impl Future<Output = Result<Handshake<S>>> {
        Box::pin(Self::read_inner(io, config))
    }

    async fn read_inner(mut io: S, config: Config) -> Result<Handshake<S>> {
        if let Err(e) = config.validate() {
            // The client deserves an answer: 500, best effort.
            count(&config, 500);
            let refusal = HandshakeError::new(500, "server misconfigured").to_response();
            let _ = tokio::time::timeout(config.handshake_timeout, io.write_all(&refusal)).await;
            return Err(e);
        }
        let limits = config.handshake_limits;
        let deadline = config.handshake_timeout;
        let read = async {
            let mut buf = BytesMut::with_capacity(1024);
            loop {
                match parse_request(&buf, &limits) {
                    Ok(Some((request, n))) => {
                        let leftover = buf.split_off(n);
                        return Ok((request, leftover));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(e.into()),
                }
                if io.read_buf(&mut buf).await? == 0 {
                    return Err(Error::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed during the opening handshake",
                    )));
                }
            }
        };
        match tokio::time::timeout(deadline, read).await {
            Ok(Ok((request, leftover))) => Ok(Handshake {
                io,
                request,
                leftover,
                config,
                peer_addr: None,
                #[cfg(feature = "http2")]
                h2: None,
            }),
            Ok(Err(Error::Handshake(e))) => {
                count(&config, e.status);
                // Best effort: the client may already be gone.
                let _ = tokio::time::timeout(deadline, io.write_all(&e.to_response())).await;
                Err(Error::Handshake(e))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                if let Some(m) = &config.metrics {
                    m.handshake_timeout();
                }
                Err(Error::HandshakeTimeout)
            }
        }
    }

    /// The request.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The peer's address, if known (see [`Handshake::with_peer_addr`]).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// Records the peer's address, for callbacks and logs.
    pub fn with_peer_addr(mut self, addr: SocketAddr) -> Handshake<S> {
        self.peer_addr = Some(addr);
        self
    }

    /// The settings the connection will use; adjust them per request
    /// before accepting (e.g. a larger message limit for some paths).
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// Accepts with no subprotocol and no extra headers.
    ///
    /// # Errors
    ///
    /// As [`Handshake::accept_with`].
    pub fn accept(self) -> impl Future<Output = Result<WebSocket<S>>> {
        Box::pin(self.accept_with_inner(Accept::new()))
    }

    /// Validates the request as a WebSocket upgrade (RFC 6455 §4.2.1),
    /// negotiates compression, and answers `101 Switching Protocols`.
    ///
    /// # Errors
    ///
    /// [`Error::Handshake`] if the request is not a valid upgrade: the
    /// 400 (or 426 for a wrong version) response was written. [`Error::Io`]
    /// if writing fails.
    pub fn accept_with(self, accept: Accept) -> impl Future<Output = Result<WebSocket<S>>> {
        Box::pin(self.accept_with_inner(accept))
    }

    /// A request that came on an HTTP/2 stream (RFC 8441): `io` is the
    /// stream (usable once the answer is sent), `reply` where answers go.
    #[cfg(feature = "http2")]
    pub(crate) fn from_h2(
        io: S,
        request: Request,
        config: Config,
        peer_addr: SocketAddr,
        reply: crate::h2::Reply,
    ) -> Handshake<S> {
        Handshake {
            io,
            request,
            leftover: BytesMut::new(),
            config,
            peer_addr: Some(peer_addr),
            h2: Some(reply),
        }
    }

    /// Whether the request came over HTTP/2.
    #[cfg(feature = "http2")]
    pub fn is_http2(&self) -> bool {
        self.h2.is_some()
    }

    async fn accept_with_inner(mut self, accept: Accept) -> Result<WebSocket<S>> {
        #[cfg(feature = "http2")]
        if let Some(reply) = self.h2.take() {
            let negotiated = reply.accept(&self.request, accept, &self.config)?;
            // RFC 8441: an HTTP/2 WebSocket is accepted with 200.
            count(&self.config, 200);
            return Ok(WebSocket::from_upgraded(
                self.io,
                Role::Server,
                &self.config,
                negotiated,
                self.leftover,
            ));
        }
        let upgrade = match validate_request(&self.request) {
            Ok(u) => u,
            Err(e) => {
                count(&self.config, e.status);
                self.write_within_timeout(&e.to_response()).await?;
                return Err(Error::Handshake(e));
            }
        };
        self.finish(&upgrade, accept).await
    }

    async fn finish(mut self, upgrade: &Upgrade, accept: Accept) -> Result<WebSocket<S>> {
        self.config.validate()?;
        let deflate = negotiate_deflate(&self.request, self.config.compression.as_ref());
        let accepted = Accepted {
            protocol: accept.protocol,
            deflate,
            headers: accept.headers,
        };
        let response = match accept_response(&self.request, upgrade, &accepted) {
            Ok(r) => r,
            Err(e) => {
                count(&self.config, e.status);
                self.write_within_timeout(&e.to_response()).await?;
                return Err(Error::Handshake(e));
            }
        };
        count(&self.config, 101);
        self.write_within_timeout(&response).await?;
        let negotiated = Negotiated {
            protocol: accepted.protocol,
            deflate: accepted.deflate.map(|(params, _)| params),
        };
        Ok(WebSocket::from_upgraded(
            self.io,
            Role::Server,
            &self.config,
            negotiated,
            self.leftover,
        ))
    }

    /// Refuses the connection with `status` and `reason` (as a plain-text
    /// body).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if writing fails.
    pub fn reject(self, status: u16, reason: &str) -> impl Future<Output = Result<()>> {
        let e = HandshakeError::new(status, reason.to_owned());
        Box::pin(self.send_refusal(e))
    }

    async fn send_refusal(mut self, e: HandshakeError) -> Result<()> {
        count(&self.config, e.status);
        #[cfg(feature = "http2")]
        if let Some(reply) = self.h2.take() {
            reply.refuse(&e);
            return Ok(());
        }
        self.write_within_timeout(&e.to_response()).await
    }

    /// Sends a refusal built by the application (status, reason, headers).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if writing fails.
    pub fn reject_with(self, reject: &Reject) -> impl Future<Output = Result<()>> {
        Box::pin(self.send_refusal(reject.clone()))
    }

    /// Answers with a plain HTTP response and closes: for serving a page
    /// on the same port and path as the WebSocket.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if writing fails.
    pub fn respond(
        self,
        status: u16,
        headers: &[(String, String)],
        content_type: &str,
        body: &[u8],
    ) -> impl Future<Output = Result<()>> {
        #[cfg(feature = "http2")]
        let page = self.h2.is_some().then(|| {
            let body = if self.request.method() == "HEAD" {
                &[][..]
            } else {
                body
            };
            crate::h2::page(status, headers, content_type, body)
        });
        #[cfg(not(feature = "http2"))]
        let page: Option<H2Page> = None;
        let response = handshake::http_response(status, headers, content_type, body);
        Box::pin(self.send_response(response, page))
    }

    async fn send_response(mut self, mut response: Vec<u8>, page: Option<H2Page>) -> Result<()> {
        #[cfg(feature = "http2")]
        if let (Some(reply), Some(page)) = (self.h2.take(), page) {
            reply.send(page);
            return Ok(());
        }
        #[cfg(not(feature = "http2"))]
        let _ = page;
        if self.request.method() == "HEAD" {
            let head_len = response
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(response.len(), |p| p + 4);
            response.truncate(head_len);
        }
        self.write_within_timeout(&response).await?;
        let _ = self.io.shutdown().await;
        Ok(())
    }

    /// Gives the stream back (with the bytes read past the request head).
    pub fn into_inner(self) -> (S, BytesMut) {
        (self.io, self.leftover)
    }

    async fn write_within_timeout(&mut self, bytes: &[u8]) -> Result<()> {
        let write = async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        };
        match tokio::time::timeout(self.config.handshake_timeout, write).await {
            Ok(r) => r.map_err(Error::Io),
            Err(_) => Err(Error::HandshakeTimeout),
        }
    }
}

/// Accepts a WebSocket on `io` with the default [`Config`].
///
/// ```no_run
/// # async fn demo() -> ferrows::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
/// let (stream, _) = listener.accept().await?;
/// let mut ws = ferrows::accept(stream).await?;
/// while let Some(msg) = ws.recv().await {
///     let msg = msg?;
///     if msg.is_text() || msg.is_binary() {
///         ws.send(msg).await?;
///     }
/// }
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// As [`Handshake::read`] and [`Handshake::accept_with`].
pub fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
) -> impl Future<Output = Result<WebSocket<S>>> {
    Box::pin(async move { Handshake::read(io, Config::default()).await?.accept().await })
}

/// Accepts a WebSocket on `io` with `config`, letting `callback` inspect
/// the request and accept (choosing a subprotocol, adding headers) or
/// refuse it.
///
/// ```no_run
/// # async fn demo(stream: tokio::net::TcpStream) -> ferrows::Result<()> {
/// use ferrows::{Accept, Config, Reject};
/// let ws = ferrows::accept_with(stream, Config::default(), |req| {
///     if req.path() != "/chat" {
///         return Err(Reject::new(404, "no such endpoint"));
///     }
///     let chat = req.subprotocols().any(|p| p == "chat.v1");
///     Ok(if chat { Accept::new().protocol("chat.v1") } else { Accept::new() })
/// })
/// .await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Handshake`] with the callback's refusal (after it was sent), or
/// as [`accept`].
pub fn accept_with<S, F>(
    io: S,
    config: Config,
    callback: F,
) -> impl Future<Output = Result<WebSocket<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Request) -> std::result::Result<Accept, Reject>,
{
    Box::pin(accept_with_inner(io, config, callback))
}

async fn accept_with_inner<S, F>(io: S, config: Config, callback: F) -> Result<WebSocket<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Request) -> std::result::Result<Accept, Reject>,
{
    let mut hs = Handshake::read(io, config).await?;
    #[cfg(feature = "http2")]
    if hs.h2.is_some() {
        return match callback(&hs.request) {
            Ok(accept) => hs.accept_with_inner(accept).await,
            Err(reject) => {
                hs.send_refusal(reject.clone()).await?;
                Err(Error::Handshake(reject))
            }
        };
    }
    let upgrade = match validate_request(&hs.request) {
        Ok(u) => u,
        Err(e) => {
            count(&hs.config, e.status);
            hs.write_within_timeout(&e.to_response()).await?;
            return Err(Error::Handshake(e));
        }
    };
    match callback(&hs.request) {
        Ok(accept) => hs.finish(&upgrade, accept).await,
        Err(reject) => {
            count(&hs.config, reject.status);
            hs.write_within_timeout(&reject.to_response()).await?;
            Err(Error::Handshake(reject))
        }
    }
}

/// Runs a WebSocket server: binds `addr`, accepts every connection as a
/// WebSocket (default [`Config`]) and runs `handler` on it in its own task,
/// as Python's `websockets.serve(handler, host, port)` does. The peer's
/// address is `ws.get_ref().peer_addr()`. Runs until the task is dropped.
///
/// ```no_run
/// #[tokio::main]
/// async fn main() -> ferrows::Result<()> {
///     ferrows::serve("127.0.0.1:9001", |mut ws| async move {
///         while let Some(Ok(msg)) = ws.recv().await {
///             if ws.send(msg).await.is_err() {
///                 break;
///             }
///         }
///     })
///     .await
/// }
/// ```
///
/// # Errors
///
/// [`Error::Io`] if binding fails; it never returns otherwise.
pub async fn serve<A, F, Fut>(addr: A, handler: F) -> Result<()>
where
    A: ToSocketAddrs,
    F: Fn(WebSocket<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    serve_with(TcpListener::bind(addr).await?, Config::default(), handler).await
}

/// Like [`serve`], on an existing listener and with `config`.
///
/// # Errors
///
/// [`Error::Config`] for invalid settings; it never returns otherwise.
pub async fn serve_with<F, Fut>(listener: TcpListener, config: Config, handler: F) -> Result<()>
where
    F: Fn(WebSocket<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    config.validate()?;
    let handler = std::sync::Arc::new(handler);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) if is_per_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let config = config.clone();
        tokio::spawn(async move {
            match Handshake::read(stream, config).await {
                Ok(hs) => match hs.with_peer_addr(peer).accept().await {
                    Ok(ws) => handler(ws).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "handshake failed"),
                },
                Err(e) => tracing::debug!(%peer, error = %e, "handshake failed"),
            }
        });
    }
}

/// Errors of `accept` that concern one connection only.
pub(crate) fn is_per_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    )
}

/// Counts a handshake answer in the config's metrics, if any.
fn count(config: &Config, status: u16) {
    if let Some(m) = &config.metrics {
        m.handshake(status);
    }
}
