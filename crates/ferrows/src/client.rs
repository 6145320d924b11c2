//! The client side: URLs, connecting, the opening handshake.

use std::fmt;
#[cfg(feature = "tls")]
use std::sync::Arc;

use bytes::BytesMut;
use ferrows_proto::Role;
use ferrows_proto::deflate;
use ferrows_proto::handshake::{ClientRequest, Response, parse_response, validate_response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::proxy::{Proxy, ProxyChoice};
use crate::stream::MaybeTlsStream;
use crate::websocket::{Negotiated, WebSocket};

/// A parsed `ws://` or `wss://` URL (`http://` and `https://` are taken
/// as their WebSocket equivalents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// `wss://` (TLS).
    pub secure: bool,
    /// The host name or IP address (IPv6 without brackets).
    pub host: String,
    /// The port (default 80 or 443).
    pub port: u16,
    /// The request target: path and query, e.g. `/chat?room=1`.
    pub target: String,
}

impl WsUrl {
    /// Parses `url`.
    ///
    /// ```
    /// let u = ferrows::WsUrl::parse("wss://[::1]:9443/chat?x=1").unwrap();
    /// assert_eq!((u.secure, u.host.as_str(), u.port, u.target.as_str()), (true, "::1", 9443, "/chat?x=1"));
    /// assert_eq!(u.host_header(), "[::1]:9443");
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Url`] naming the problem: another scheme, a fragment
    /// (RFC 6455 §3 forbids them), credentials, a bad port.
    pub fn parse(url: &str) -> Result<WsUrl> {
        let bad = |why: &str| Error::Url(format!("{url:?}: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected ws://host[:port][/path]"))?;
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "ws" | "http" => false,
            "wss" | "https" => true,
            _ => return Err(bad("the scheme must be ws or wss")),
        };
        if rest.contains('#') {
            return Err(bad("WebSocket URLs cannot have a fragment (#)"));
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if authority.contains('@') {
            return Err(bad(
                "credentials in the URL are not supported; send an Authorization header",
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let port = match port {
            None => {
                if secure {
                    443
                } else {
                    80
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("invalid port"))?,
        };
        let target = if target.is_empty() {
            "/".to_owned()
        } else if target.starts_with('?') {
            format!("/{target}")
        } else {
            target.to_owned()
        };
        if target.bytes().any(|b| b <= b' ' || b == 0x7F) {
            return Err(bad("spaces or control characters in the path"));
        }
        Ok(WsUrl {
            secure,
            host: host.to_owned(),
            port,
            target,
        })
    }

    /// The `Host` header value: the port only if not the default, IPv6 in
    /// brackets.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.secure { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for WsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.secure { "wss" } else { "ws" };
        write!(f, "{scheme}://{}{}", self.host_header(), self.target)
    }
}

/// Connects to a WebSocket server with default settings (through the
/// proxy the environment names, if any: see [`crate::proxy`]).
///
/// ```no_run
/// # async fn demo() -> ferrows::Result<()> {
/// let (mut ws, response) = ferrows::connect("ws://127.0.0.1:9001/").await?;
/// println!("connected: {}", response.status());
/// ws.send("hello").await?;
/// if let Some(reply) = ws.recv().await {
///     println!("{:?}", reply?);
/// }
/// ws.close(1000, "bye").await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Url`], [`Error::Io`] (DNS, connection refused),
/// [`Error::Proxy`], [`Error::Tls`], [`Error::ClientHandshake`] (the
/// server's response was not a valid upgrade), [`Error::HandshakeTimeout`].
pub async fn connect(url: &str) -> Result<(WebSocket<MaybeTlsStream<TcpStream>>, Response)> {
    ClientBuilder::new(url).connect().await
}

/// Options for a client connection.
///
/// ```no_run
/// # async fn demo() -> ferrows::Result<()> {
/// use ferrows::{ClientBuilder, Config};
/// let (ws, _) = ClientBuilder::new("wss://example.com/feed")
///     .header("Authorization", "Bearer sesame")
///     .protocol("feed.v2")
///     .config(Config::default().compression(true))
///     .connect()
///     .await?;
/// assert_eq!(ws.protocol(), Some("feed.v2"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    config: Config,
    headers: Vec<(String, String)>,
    protocols: Vec<String>,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ClientConfig>>,
    proxy: ProxyChoice,
}

impl ClientBuilder {
    /// Options for connecting to `url`.
    pub fn new(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            config: Config::default(),
            headers: Vec::new(),
            protocols: Vec::new(),
            #[cfg(feature = "tls")]
            tls: None,
            proxy: ProxyChoice::Env,
        }
    }

    /// Connects through this proxy (HTTP `CONNECT` or SOCKS5; TLS for
    /// `wss://` runs through the tunnel) instead of the one the
    /// environment names. Default: the environment's (`HTTPS_PROXY`,
    /// `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`; see [`crate::proxy`]).
    ///
    /// ```no_run
    /// # async fn demo() -> ferrows::Result<()> {
    /// use ferrows::{ClientBuilder, Proxy};
    /// let proxy = Proxy::parse("socks5h://user:pass@127.0.0.1:1080")?;
    /// let (ws, _) = ClientBuilder::new("wss://example.com/feed").proxy(proxy).connect().await?;
    /// # Ok(()) }
    /// ```
    pub fn proxy(mut self, proxy: Proxy) -> ClientBuilder {
        self.proxy = ProxyChoice::Fixed(proxy);
        self
    }

    /// Connects directly, whatever the proxy environment variables say.
    pub fn no_proxy(mut self) -> ClientBuilder {
        self.proxy = ProxyChoice::Direct;
        self
    }

    /// Sets the connection settings (compression is offered if enabled).
    pub fn config(mut self, config: Config) -> ClientBuilder {
        self.config = config;
        self
    }

    /// Adds a request header (e.g. `Origin`, `Authorization`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> ClientBuilder {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Offers a subprotocol (call again for more, in preference order).
    pub fn protocol(mut self, protocol: impl Into<String>) -> ClientBuilder {
        self.protocols.push(protocol.into());
        self
    }

    /// Uses this TLS configuration for `wss://` (see [`crate::tls`] for a
    /// custom CA or, for tests, no verification). Default: the Mozilla roots.
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> ClientBuilder {
        self.tls = Some(config);
        self
    }

    /// The connection settings (for `crate::h2`).
    #[cfg(feature = "http2")]
    pub(crate) fn config_ref(&self) -> &Config {
        &self.config
    }

    /// The TLS configuration set, if any (for `crate::h2`).
    #[cfg(feature = "http2")]
    pub(crate) fn tls_ref(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.tls.as_ref()
    }

    /// The parsed URL.
    ///
    /// # Errors
    ///
    /// [`Error::Url`] if the URL is invalid.
    pub fn url(&self) -> Result<WsUrl> {
        WsUrl::parse(&self.url)
    }

    /// The handshake request these options produce (with a fresh key).
    ///
    /// # Errors
    ///
    /// [`Error::Url`] if the URL is invalid.
    pub fn request(&self) -> Result<ClientRequest> {
        let url = self.url()?;
        let mut req = ClientRequest::new(url.host_header(), url.target);
        req.protocols = self.protocols.clone();
        req.extensions = self.config.compression.as_ref().map(deflate::client_offer);
        req.headers = self.headers.clone();
        Ok(req)
    }

    /// Connects (TCP, then TLS for `wss://`) and performs the handshake,
    /// all within the handshake timeout.
    ///
    /// # Errors
    ///
    /// As [`connect`].
    pub async fn connect(self) -> Result<(WebSocket<MaybeTlsStream<TcpStream>>, Response)> {
        let url = self.url()?;
        let request = self.request()?;
        let timeout = self.config.handshake_timeout;
        let work = async {
            let stream = self.open_stream_to(&url).await?;
            handshake_inner(stream, &request, &self.config).await
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| Error::HandshakeTimeout)?
    }

    /// Performs the handshake on an already connected stream (TLS, if any,
    /// done by the caller). The URL still supplies `Host` and the path.
    ///
    /// # Errors
    ///
    /// As [`connect`].
    pub async fn connect_on<S>(self, io: S) -> Result<(WebSocket<S>, Response)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let request = self.request()?;
        client_handshake(io, &request, &self.config).await
    }

    /// Opens the transport the URL asks for — TCP with `TCP_NODELAY`
    /// (through the proxy, if any, within the handshake timeout), then TLS
    /// for `wss://` — without the WebSocket handshake: for wrapping the
    /// stream (tracing, metering) before [`ClientBuilder::connect_on`].
    ///
    /// # Errors
    ///
    /// [`Error::Url`], [`Error::Io`], [`Error::Proxy`], [`Error::Tls`].
    pub async fn open_stream(&self) -> Result<MaybeTlsStream<TcpStream>> {
        self.open_stream_to(&self.url()?).await
    }

    async fn open_stream_to(&self, url: &WsUrl) -> Result<MaybeTlsStream<TcpStream>> {
        let tcp = crate::proxy::dial(&self.proxy, url, self.config.handshake_timeout).await?;
        tcp.set_nodelay(true)?;
        if !url.secure {
            return Ok(MaybeTlsStream::Plain(tcp));
        }
        self.wrap_tls(url, tcp).await
    }

    #[cfg(feature = "tls")]
    async fn wrap_tls(&self, url: &WsUrl, tcp: TcpStream) -> Result<MaybeTlsStream<TcpStream>> {
        let config = match &self.tls {
            Some(c) => c.clone(),
            None => crate::tls::client_config()?,
        };
        let name = rustls_pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| Error::Tls(format!("server name {:?}: {e}", url.host)))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(MaybeTlsStream::ClientTls(Box::new(tls)))
    }

    #[cfg(not(feature = "tls"))]
    async fn wrap_tls(&self, _url: &WsUrl, _tcp: TcpStream) -> Result<MaybeTlsStream<TcpStream>> {
        Err(Error::Tls(
            "wss:// needs ferrows built with the `tls` feature".into(),
        ))
    }
}

/// Performs the client handshake with `request` on `io`, within the
/// handshake timeout, and returns the connection and the server's response.
///
/// # Errors
///
/// As [`connect`].
pub async fn client_handshake<S>(
    io: S,
    request: &ClientRequest,
    config: &Config,
) -> Result<(WebSocket<S>, Response)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(
        config.handshake_timeout,
        handshake_inner(io, request, config),
    )
    .await
    .map_err(|_| Error::HandshakeTimeout)?
}

async fn handshake_inner<S>(
    mut io: S,
    request: &ClientRequest,
    config: &Config,
) -> Result<(WebSocket<S>, Response)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    config.validate()?;
    io.write_all(&request.encode()?).await?;
    io.flush().await?;
    let mut buf = BytesMut::with_capacity(1024);
    let (response, n) = loop {
        if let Some(done) = parse_response(&buf, &config.handshake_limits)? {
            break done;
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed during the opening handshake",
            )));
        }
    };
    let negotiated = validate_response(&response, request, config.compression.as_ref())?;
    let leftover = buf.split_off(n);
    let ws = WebSocket::from_upgraded(
        io,
        Role::Client,
        config,
        Negotiated {
            protocol: negotiated.protocol,
            deflate: negotiated.deflate,
        },
        leftover,
    );
    Ok((ws, response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = WsUrl::parse("ws://localhost:9001").unwrap();
        assert_eq!(
            (u.secure, u.host.as_str(), u.port, u.target.as_str()),
            (false, "localhost", 9001, "/")
        );
        assert_eq!(u.host_header(), "localhost:9001");
        let u = WsUrl::parse("WSS://example.com?x=1").unwrap();
        assert_eq!((u.port, u.target.as_str()), (443, "/?x=1"));
        assert_eq!(u.host_header(), "example.com");
        let u = WsUrl::parse("ws://[::1]/p").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 80));
        assert_eq!(u.to_string(), "ws://[::1]/p");
        for bad in [
            "ftp://x",
            "ws://",
            "ws://h:0",
            "ws://h:99999",
            "ws://h/#f",
            "ws://u:p@h",
            "ws://[::1",
            "localhost:80",
        ] {
            assert!(WsUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
