//! Client connections through HTTP and SOCKS5 proxies.
//!
//! A [`Proxy`] opens a TCP tunnel to the WebSocket server; TLS for `wss://`
//! then runs through the tunnel, end to end with the server (the proxy sees
//! only the host name and port).
//!
//! | URL | protocol | who resolves the server's name |
//! | --- | --- | --- |
//! | `http://[USER[:PASS]@]HOST[:PORT]` (default port 80) | HTTP `CONNECT` (RFC 9110 §9.3.6), `Proxy-Authorization: Basic` with the credentials | the proxy |
//! | `socks5h://[USER[:PASS]@]HOST[:PORT]` (default port 1080) | SOCKS5 (RFC 1928), user/password authentication (RFC 1929) with the credentials | the proxy |
//! | `socks5://…` | the same | this client, as curl does; the proxy gets an IP address |
//!
//! A URL without a scheme is taken as `http://`. Credentials are
//! percent-decoded (`%40` for `@`, `%3A` for `:`). TLS to the proxy itself
//! (`https://` proxy URLs) and SOCKS4 are not supported.
//!
//! # The environment
//!
//! [`crate::ClientBuilder`] (hence [`crate::connect`] and
//! [`crate::EventClient`]) follows the conventional variables unless given
//! a proxy ([`crate::ClientBuilder::proxy`]) or told not to
//! ([`crate::ClientBuilder::no_proxy`]), like curl, reqwest and
//! python-websockets ([`Proxy::from_env`]):
//!
//! * `wss://` URLs: `https_proxy`, then `HTTPS_PROXY`;
//! * `ws://` URLs: `http_proxy`, then `HTTP_PROXY` (not read when
//!   `REQUEST_METHOD` is set: in a CGI program it can come from a request
//!   header, "httpoxy");
//! * then, for both: `all_proxy`, then `ALL_PROXY`;
//! * `no_proxy`, then `NO_PROXY`: servers reached directly ([`NoProxy`]).
//!
//! An empty variable counts as unset. A variable naming an invalid or
//! unsupported proxy is an error that names the variable (the connection is
//! not silently made directly). Loopback addresses are not exempt unless
//! `NO_PROXY` says so (as curl; Go's `net/http` differs).
//!
//! # Limits and errors
//!
//! The proxy's connect and handshake are bounded by a timeout (the
//! handshake timeout, from [`crate::ClientBuilder`]) and an HTTP proxy's
//! reply head by [`MAX_REPLY_HEAD`]. Refusals are [`ProxyError`]s naming
//! the proxy with its credentials redacted (`http://***@host:3128`): a 407
//! with the proxy's realm, other statuses, SOCKS reply codes by name.
//! Credentials never appear in errors, logs or `Debug` output.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ferrows_proto::handshake::{HandshakeLimits, parse_response};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::client::WsUrl;
use crate::error::{Error, Result};

/// The largest reply head accepted from an HTTP proxy (status line and
/// headers), in bytes: 16 KiB, as for a WebSocket server's response.
pub const MAX_REPLY_HEAD: usize = 16 * 1024;

/// The most header fields accepted in an HTTP proxy's reply.
const MAX_REPLY_HEADERS: usize = 64;

/// Which protocol a [`Proxy`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyKind {
    /// `http://`: an HTTP `CONNECT` tunnel.
    Http,
    /// `socks5://`: SOCKS5, the server's name resolved by this client.
    Socks5,
    /// `socks5h://`: SOCKS5, the server's name resolved by the proxy.
    Socks5h,
}

impl ProxyKind {
    fn scheme(self) -> &'static str {
        match self {
            ProxyKind::Http => "http",
            ProxyKind::Socks5 => "socks5",
            ProxyKind::Socks5h => "socks5h",
        }
    }
}

/// A proxy to connect through.
///
/// ```
/// use ferrows::Proxy;
/// let p = Proxy::parse("http://alice:s%40cret@proxy.corp:3128").unwrap();
/// assert_eq!((p.host(), p.port(), p.username()), ("proxy.corp", 3128, Some("alice")));
/// // The credentials never show.
/// assert_eq!(p.to_string(), "http://***@proxy.corp:3128");
/// assert!(!format!("{p:?}").contains("cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    kind: ProxyKind,
    /// Host name or IP address (IPv6 without brackets).
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    bypass: NoProxy,
}

impl Proxy {
    /// Parses a proxy URL: `http://`, `socks5://` or `socks5h://`, with
    /// optional percent-encoded credentials (see the [module
    /// documentation](self)).
    ///
    /// # Errors
    ///
    /// [`Error::Proxy`] with [`ProxyError::InvalidUrl`] or, for `https://`
    /// and `socks4://` proxies, [`ProxyError::Unsupported`]. The message
    /// does not repeat the credentials.
    pub fn parse(url: &str) -> Result<Proxy> {
        parse_proxy(url).map_err(Error::Proxy)
    }

    /// The protocol.
    pub fn kind(&self) -> ProxyKind {
        self.kind
    }

    /// The proxy's host name or IP address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user name from the URL, if any.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// Servers to reach directly, not through this proxy. Default: none
    /// (an explicit proxy is used for every server; the environment's
    /// `NO_PROXY` applies only to a proxy found in the environment).
    #[must_use]
    pub fn bypass(mut self, no_proxy: NoProxy) -> Proxy {
        self.bypass = no_proxy;
        self
    }

    /// Whether a connection to `host:port` goes through this proxy (false
    /// if [`Proxy::bypass`] matches it).
    pub fn applies_to(&self, host: &str, port: u16) -> bool {
        !self.bypass.matches(host, port)
    }

    /// The proxy the environment names for `url` (see the [module
    /// documentation](self)), or `None`: no variable set, or `NO_PROXY`
    /// matches the server.
    ///
    /// # Errors
    ///
    /// [`Error::Proxy`] if the variable's value is not a valid or supported
    /// proxy URL; the message names the variable.
    pub fn from_env(url: &WsUrl) -> Result<Option<Proxy>> {
        from_env_with(url, |name| std::env::var(name).ok()).map_err(Error::Proxy)
    }

    /// Opens a TCP connection to the proxy and a tunnel through it to
    /// `host:port` (an IP address or a name; IPv6 without brackets), all
    /// within `timeout`. The stream returned carries the tunnel: the next
    /// byte read is the server's.
    ///
    /// # Errors
    ///
    /// [`Error::Proxy`]: the proxy unreachable, a refusal, a malformed
    /// reply, the timeout. [`Error::Url`] for a host name that cannot be
    /// sent (spaces, control characters).
    pub async fn connect(&self, host: &str, port: u16, timeout: Duration) -> Result<TcpStream> {
        if host.is_empty() || host.bytes().any(|b| b <= b' ' || b == 0x7F) {
            return Err(Error::Url(format!("{host:?}: invalid host name")));
        }
        let target = authority(host, port);
        let work = async {
            let mut tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|source| ProxyError::Connect {
                    proxy: self.to_string(),
                    source,
                })?;
            tcp.set_nodelay(true).map_err(|e| self.io_error(e))?;
            match self.kind {
                ProxyKind::Http => self.http_connect(&mut tcp, &target).await?,
                ProxyKind::Socks5 | ProxyKind::Socks5h => {
                    self.socks5_connect(&mut tcp, host, port, &target).await?;
                }
            }
            Ok::<_, ProxyError>(tcp)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(tcp)) => Ok(tcp),
            Ok(Err(e)) => Err(Error::Proxy(e)),
            Err(_) => Err(Error::Proxy(ProxyError::Timeout {
                proxy: self.to_string(),
                target,
                after: timeout,
            })),
        }
    }

    fn io_error(&self, source: io::Error) -> ProxyError {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            self.bad_reply("the proxy closed the connection before its reply was complete")
        } else {
            ProxyError::Io {
                proxy: self.to_string(),
                source,
            }
        }
    }

    fn bad_reply(&self, why: impl Into<String>) -> ProxyError {
        ProxyError::BadReply {
            proxy: self.to_string(),
            why: why.into(),
        }
    }

    /// HTTP `CONNECT` (RFC 9110 §9.3.6): any 2xx opens the tunnel.
    async fn http_connect(&self, tcp: &mut TcpStream, target: &str) -> Result<(), ProxyError> {
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(user) = &self.username {
            let pass = self.password.as_deref().unwrap_or("");
            let token = BASE64.encode(format!("{user}:{pass}"));
            request.push_str("Proxy-Authorization: Basic ");
            request.push_str(&token);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| self.io_error(e))?;
        let head = read_head(tcp, MAX_REPLY_HEAD)
            .await
            .map_err(|e| self.io_error(e))?
            .ok_or_else(|| {
                self.bad_reply(format!(
                    "the reply head is larger than {MAX_REPLY_HEAD} bytes"
                ))
            })?;
        let limits = HandshakeLimits::default()
            .max_head_size(MAX_REPLY_HEAD)
            .max_headers(MAX_REPLY_HEADERS);
        let response = match parse_response(&head, &limits) {
            Ok(Some((response, _))) => response,
            Ok(None) => return Err(self.bad_reply("an incomplete HTTP reply")),
            Err(e) => return Err(self.bad_reply(format!("not an HTTP reply: {e}"))),
        };
        match response.status() {
            200..=299 => Ok(()),
            // To a CONNECT, a 401 can only come from the proxy too
            // (tinyproxy answers one, with `WWW-Authenticate`, to wrong
            // credentials).
            status @ (401 | 407) => Err(ProxyError::AuthRequired {
                proxy: self.to_string(),
                status,
                realm: response
                    .header("proxy-authenticate")
                    .or_else(|| response.header("www-authenticate"))
                    .and_then(realm),
                credentials_sent: self.username.is_some(),
            }),
            status => Err(ProxyError::Refused {
                proxy: self.to_string(),
                target: target.to_owned(),
                status,
                reason: printable(response.reason(), 200),
            }),
        }
    }

    /// SOCKS5 (RFC 1928) with no authentication or, given credentials,
    /// user/password (RFC 1929).
    async fn socks5_connect(
        &self,
        tcp: &mut TcpStream,
        host: &str,
        port: u16,
        target: &str,
    ) -> Result<(), ProxyError> {
        let io = |e: io::Error| self.io_error(e);
        // The destination, built first: nothing is sent for a name that
        // cannot be.
        let mut request = vec![0x05, 0x01, 0x00];
        let literal = host.parse::<IpAddr>().ok();
        let address = match (literal, self.kind) {
            (Some(ip), _) => Some(ip),
            (None, ProxyKind::Socks5h) => None,
            (None, _) => Some(
                resolve(host, port)
                    .await
                    .map_err(|source| ProxyError::Resolve {
                        host: host.to_owned(),
                        source,
                    })?,
            ),
        };
        match address {
            Some(IpAddr::V4(ip)) => {
                request.push(0x01);
                request.extend_from_slice(&ip.octets());
            }
            Some(IpAddr::V6(ip)) => {
                request.push(0x04);
                request.extend_from_slice(&ip.octets());
            }
            None => {
                let len = u8::try_from(host.len()).map_err(|_| {
                    ProxyError::Unsupported(format!(
                        "SOCKS5 carries host names up to 255 bytes; {} has {}",
                        printable(host, 40),
                        host.len()
                    ))
                })?;
                request.push(0x03);
                request.push(len);
                request.extend_from_slice(host.as_bytes());
            }
        }
        request.extend_from_slice(&port.to_be_bytes());

        let credentials = self.username.as_deref().map(|user| {
            let pass = self.password.as_deref().unwrap_or("");
            (user, pass)
        });
        let greeting: &[u8] = if credentials.is_some() {
            &[0x05, 0x02, 0x00, 0x02]
        } else {
            &[0x05, 0x01, 0x00]
        };
        tcp.write_all(greeting).await.map_err(io)?;
        let mut choice = [0u8; 2];
        tcp.read_exact(&mut choice).await.map_err(io)?;
        let [version, method] = choice;
        if version != 0x05 {
            return Err(self.bad_reply(format!(
                "not a SOCKS5 server: its reply starts with {:?}",
                String::from_utf8_lossy(&choice)
            )));
        }
        match (method, credentials) {
            (0x00, _) => {}
            (0x02, Some((user, pass))) => self.socks5_login(tcp, user, pass).await?,
            (0xFF, _) => {
                return Err(ProxyError::SocksNoMethod {
                    proxy: self.to_string(),
                    offered_password: credentials.is_some(),
                });
            }
            (other, _) => {
                return Err(self.bad_reply(format!(
                    "the SOCKS5 server chose authentication method {other}, which was not offered"
                )));
            }
        }

        tcp.write_all(&request).await.map_err(io)?;
        let mut reply = [0u8; 4];
        tcp.read_exact(&mut reply).await.map_err(io)?;
        let [version, code, _reserved, address_type] = reply;
        if version != 0x05 {
            return Err(self.bad_reply(format!("SOCKS5 reply with version {version} (expected 5)")));
        }
        if code != 0x00 {
            return Err(ProxyError::Socks {
                proxy: self.to_string(),
                target: target.to_owned(),
                code,
            });
        }
        // The bound address and port, which this client does not need.
        let rest = match address_type {
            0x01 => 4 + 2,
            0x04 => 16 + 2,
            0x03 => {
                let mut len = [0u8; 1];
                tcp.read_exact(&mut len).await.map_err(io)?;
                usize::from(len[0]) + 2
            }
            other => {
                return Err(
                    self.bad_reply(format!("SOCKS5 reply with unknown address type {other}"))
                );
            }
        };
        let mut bound = [0u8; 257];
        let bound = bound.get_mut(..rest).unwrap_or_default();
        tcp.read_exact(bound).await.map_err(io)?;
        Ok(())
    }

    /// RFC 1929 user/password sub-negotiation.
    async fn socks5_login(
        &self,
        tcp: &mut TcpStream,
        user: &str,
        pass: &str,
    ) -> Result<(), ProxyError> {
        let (Ok(ulen), Ok(plen)) = (u8::try_from(user.len()), u8::try_from(pass.len())) else {
            return Err(ProxyError::Unsupported(
                "SOCKS5 user names and passwords are at most 255 bytes".into(),
            ));
        };
        let mut login = Vec::with_capacity(3 + user.len() + pass.len());
        login.push(0x01);
        login.push(ulen);
        login.extend_from_slice(user.as_bytes());
        login.push(plen);
        login.extend_from_slice(pass.as_bytes());
        tcp.write_all(&login).await.map_err(|e| self.io_error(e))?;
        let mut status = [0u8; 2];
        tcp.read_exact(&mut status)
            .await
            .map_err(|e| self.io_error(e))?;
        match status[1] {
            0x00 => Ok(()),
            code => Err(ProxyError::SocksAuthFailed {
                proxy: self.to_string(),
                status: code,
            }),
        }
    }
}

/// `scheme://***@host:port`: the credentials replaced.
impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let userinfo = if self.username.is_some() { "***@" } else { "" };
        write!(
            f,
            "{}://{userinfo}{}",
            self.kind.scheme(),
            authority(&self.host, self.port)
        )
    }
}

/// As [`fmt::Display`]: the credentials never show.
impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("url", &self.to_string())
            .field("bypass", &self.bypass)
            .finish()
    }
}

/// Why a connection through a proxy failed ([`Error::Proxy`]). Each names
/// the proxy with its credentials redacted.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProxyError {
    /// The proxy URL (given, or from an environment variable) is invalid.
    InvalidUrl(String),
    /// Something this client does not do: an `https://` or SOCKS4 proxy,
    /// a name or credentials too long for SOCKS5.
    Unsupported(String),
    /// The proxy could not be reached.
    Connect {
        /// The proxy.
        proxy: String,
        /// Why.
        source: io::Error,
    },
    /// The connection to the proxy failed during its handshake.
    Io {
        /// The proxy.
        proxy: String,
        /// Why.
        source: io::Error,
    },
    /// The server's name did not resolve (`socks5://` resolves here).
    Resolve {
        /// The name.
        host: String,
        /// Why.
        source: io::Error,
    },
    /// The proxy did not open the tunnel in time.
    Timeout {
        /// The proxy.
        proxy: String,
        /// The server (`host:port`).
        target: String,
        /// The time allowed.
        after: Duration,
    },
    /// The HTTP proxy answered 407 Proxy Authentication Required (or 401).
    AuthRequired {
        /// The proxy.
        proxy: String,
        /// 407, or 401 from proxies that answer that to wrong credentials.
        status: u16,
        /// The realm from its `Proxy-Authenticate` header.
        realm: Option<String>,
        /// Whether credentials were sent (then they were rejected).
        credentials_sent: bool,
    },
    /// The HTTP proxy refused the tunnel with another status than 2xx or 407.
    Refused {
        /// The proxy.
        proxy: String,
        /// The server (`host:port`).
        target: String,
        /// The status.
        status: u16,
        /// Its reason phrase (control characters escaped, truncated).
        reason: String,
    },
    /// The SOCKS5 server refused the connection (RFC 1928 §6).
    Socks {
        /// The proxy.
        proxy: String,
        /// The server (`host:port`).
        target: String,
        /// The reply code (1 to 8 are named, see [`socks_reply_name`]).
        code: u8,
    },
    /// The SOCKS5 server accepts none of the authentication methods
    /// offered (no authentication, and user/password if the URL has
    /// credentials).
    SocksNoMethod {
        /// The proxy.
        proxy: String,
        /// Whether user/password was offered.
        offered_password: bool,
    },
    /// The SOCKS5 server rejected the user name or password (RFC 1929).
    SocksAuthFailed {
        /// The proxy.
        proxy: String,
        /// The status it sent (non-zero).
        status: u8,
    },
    /// The proxy's reply is not valid HTTP or SOCKS5, too large, or cut
    /// short.
    BadReply {
        /// The proxy.
        proxy: String,
        /// What is wrong.
        why: String,
    },
}

/// The name of a SOCKS5 reply code (RFC 1928 §6).
///
/// ```
/// assert_eq!(ferrows::proxy::socks_reply_name(5), "connection refused by destination");
/// ```
pub fn socks_reply_name(code: u8) -> &'static str {
    match code {
        0 => "succeeded",
        1 => "general SOCKS server failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused by destination",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unassigned reply code",
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::InvalidUrl(why) => write!(f, "invalid proxy URL: {why}"),
            ProxyError::Unsupported(why) => write!(f, "unsupported proxy: {why}"),
            ProxyError::Connect { proxy, source } => {
                write!(f, "cannot connect to proxy {proxy}: {source}")
            }
            ProxyError::Io { proxy, source } => write!(f, "proxy {proxy}: {source}"),
            ProxyError::Resolve { host, source } => {
                write!(
                    f,
                    "cannot resolve {} (for socks5://; socks5h:// lets the proxy resolve): {source}",
                    printable(host, 100)
                )
            }
            ProxyError::Timeout {
                proxy,
                target,
                after,
            } => write!(
                f,
                "proxy {proxy} did not open a tunnel to {target} within {after:?}"
            ),
            ProxyError::AuthRequired {
                proxy,
                status,
                realm,
                credentials_sent,
            } => {
                if *credentials_sent {
                    write!(f, "proxy {proxy} rejected the credentials ({status}")?;
                } else {
                    write!(f, "proxy {proxy} requires authentication ({status}")?;
                }
                if let Some(realm) = realm {
                    write!(f, ", realm {realm:?}")?;
                }
                if *credentials_sent {
                    f.write_str(")")
                } else {
                    f.write_str(
                        "): put the user name and password in the proxy URL, http://USER:PASS@host:port",
                    )
                }
            }
            ProxyError::Refused {
                proxy,
                target,
                status,
                reason,
            } => write!(
                f,
                "proxy {proxy} refused the tunnel to {target}: {status} {reason}"
            ),
            ProxyError::Socks {
                proxy,
                target,
                code,
            } => write!(
                f,
                "proxy {proxy} could not connect to {target}: {} (SOCKS reply {code})",
                socks_reply_name(*code)
            ),
            ProxyError::SocksNoMethod {
                proxy,
                offered_password,
            } => {
                if *offered_password {
                    write!(
                        f,
                        "proxy {proxy} accepts neither no authentication nor user/password"
                    )
                } else {
                    write!(
                        f,
                        "proxy {proxy} requires authentication: put the user name and password in the proxy URL, socks5h://USER:PASS@host:port"
                    )
                }
            }
            ProxyError::SocksAuthFailed { proxy, status } => write!(
                f,
                "proxy {proxy} rejected the user name or password (SOCKS5 status {status})"
            ),
            ProxyError::BadReply { proxy, why } => write!(f, "proxy {proxy}: {why}"),
        }
    }
}

/// The message includes the underlying I/O error, if any (the `source`
/// fields), so `source()` is `None`: error reporters that print the chain
/// would repeat it.
impl std::error::Error for ProxyError {}

/// Servers to reach directly: the rules of `NO_PROXY`.
///
/// A comma- or space-separated list of:
///
/// * `*`: every server;
/// * a name, `example.com`, `.example.com` or `*.example.com`: that name
///   and every name under it (`ws.example.com`), case-insensitively;
/// * an IP address, `10.1.2.3` or `::1` (`[::1]` too);
/// * a network in CIDR notation, `10.0.0.0/8`, `fd00::/8`;
/// * any of these but `*` and CIDR with `:PORT` (IPv6 in brackets,
///   `[::1]:8443`): only that port.
///
/// Addresses and networks match servers given by IP address (IPv4-mapped
/// IPv6 as IPv4), names match names: no DNS lookup is made to compare them,
/// so `localhost` does not match `127.0.0.1`. Entries that are none of
/// these (a bad prefix length) are ignored.
///
/// ```
/// use ferrows::proxy::NoProxy;
/// let np = NoProxy::parse("localhost, .corp.example, 10.0.0.0/8, [::1]:9001");
/// assert!(np.matches("ws.corp.example", 443));
/// assert!(np.matches("10.20.30.40", 80));
/// assert!(np.matches("::1", 9001) && !np.matches("::1", 9002));
/// assert!(!np.matches("example.com", 443));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    All,
    Domain {
        name: String,
        port: Option<u16>,
    },
    Net {
        addr: IpAddr,
        prefix: u8,
        port: Option<u16>,
    },
}

impl NoProxy {
    /// Parses a `NO_PROXY` list.
    pub fn parse(list: &str) -> NoProxy {
        NoProxy {
            rules: list
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter_map(parse_rule)
                .collect(),
        }
    }

    /// The list in `no_proxy`, or else `NO_PROXY`; empty if neither is set.
    pub fn from_env() -> NoProxy {
        no_proxy_with(&|name| std::env::var(name).ok())
    }

    /// Whether the list is empty (matches nothing).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a server at `host` (a name or an IP address; IPv6 with or
    /// without brackets) and `port` is to be reached directly.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let ip = host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == port);
        self.rules.iter().any(|rule| match rule {
            Rule::All => true,
            Rule::Domain { name: n, port: p } => {
                ip.is_none()
                    && port_ok(p)
                    && (name == *n
                        || name
                            .strip_suffix(n.as_str())
                            .is_some_and(|head| head.ends_with('.')))
            }
            Rule::Net {
                addr,
                prefix,
                port: p,
            } => port_ok(p) && ip.is_some_and(|ip| in_network(ip, *addr, *prefix)),
        })
    }
}

fn parse_rule(entry: &str) -> Option<Rule> {
    let entry = entry.trim();
    if entry.is_empty() {
        return None;
    }
    if entry == "*" {
        return Some(Rule::All);
    }
    // [v6], [v6]:port, [v6/prefix]
    if let Some(rest) = entry.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse::<u16>().ok()?),
        };
        return match inner.split_once('/') {
            Some(_) if port.is_some() => None,
            Some((addr, prefix)) => network(addr, prefix),
            None => {
                let addr = inner.parse::<IpAddr>().ok()?;
                Some(Rule::Net {
                    addr,
                    prefix: full_prefix(addr),
                    port,
                })
            }
        };
    }
    if let Some((addr, prefix)) = entry.split_once('/') {
        return network(addr, prefix);
    }
    if let Ok(addr) = entry.parse::<IpAddr>() {
        return Some(Rule::Net {
            addr: addr.to_canonical(),
            prefix: full_prefix(addr.to_canonical()),
            port: None,
        });
    }
    let (name, port) = match entry.rsplit_once(':') {
        Some((name, port)) => (name, Some(port.parse::<u16>().ok()?)),
        None => (entry, None),
    };
    if let Ok(addr) = name.parse::<std::net::Ipv4Addr>() {
        return Some(Rule::Net {
            addr: IpAddr::V4(addr),
            prefix: 32,
            port,
        });
    }
    let name = name
        .strip_prefix("*.")
        .or_else(|| name.strip_prefix('.'))
        .unwrap_or(name)
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if name.is_empty() || name.contains(['*', '[', ']', '/', '@']) {
        return None;
    }
    Some(Rule::Domain { name, port })
}

fn network(addr: &str, prefix: &str) -> Option<Rule> {
    let addr = addr.trim().parse::<IpAddr>().ok()?;
    let prefix = prefix.trim().parse::<u8>().ok()?;
    if prefix > full_prefix(addr) {
        return None;
    }
    Some(Rule::Net {
        addr,
        prefix,
        port: None,
    })
}

fn full_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn in_network(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// How [`crate::ClientBuilder`] picks a proxy.
#[derive(Debug, Clone, Default)]
pub(crate) enum ProxyChoice {
    /// The environment's ([`Proxy::from_env`]).
    #[default]
    Env,
    /// This one (unless its bypass list matches).
    Fixed(Proxy),
    /// None.
    Direct,
}

/// Opens the TCP connection to `url`'s server: directly, or through the
/// proxy `choice` names, the proxy's part within `timeout`.
pub(crate) async fn dial(
    choice: &ProxyChoice,
    url: &WsUrl,
    timeout: Duration,
) -> Result<TcpStream> {
    let env;
    let proxy = match choice {
        ProxyChoice::Direct => None,
        ProxyChoice::Fixed(p) => Some(p).filter(|p| p.applies_to(&url.host, url.port)),
        ProxyChoice::Env => {
            env = Proxy::from_env(url)?;
            env.as_ref()
        }
    };
    match proxy {
        None => Ok(TcpStream::connect((url.host.as_str(), url.port)).await?),
        Some(proxy) => {
            tracing::debug!(%proxy, server = %url.host_header(), "connecting through a proxy");
            proxy.connect(&url.host, url.port, timeout).await
        }
    }
}

/// [`Proxy::from_env`] over a variable lookup.
fn from_env_with(
    url: &WsUrl,
    get: impl Fn(&str) -> Option<String>,
) -> Result<Option<Proxy>, ProxyError> {
    let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
    let scheme_vars: &[&str] = if url.secure {
        &["https_proxy", "HTTPS_PROXY"]
    } else if get("REQUEST_METHOD").is_some() {
        &["http_proxy"]
    } else {
        &["http_proxy", "HTTP_PROXY"]
    };
    let found = scheme_vars
        .iter()
        .chain(&["all_proxy", "ALL_PROXY"])
        .find_map(|name| get(name).map(|value| (*name, value)));
    let Some((name, value)) = found else {
        return Ok(None);
    };
    if no_proxy_with(&get).matches(&url.host, url.port) {
        return Ok(None);
    }
    match parse_proxy(&value) {
        Ok(proxy) => Ok(Some(proxy)),
        Err(ProxyError::InvalidUrl(why)) => Err(ProxyError::InvalidUrl(format!("{name}: {why}"))),
        Err(ProxyError::Unsupported(why)) => Err(ProxyError::Unsupported(format!("{name}: {why}"))),
        Err(e) => Err(e),
    }
}

fn no_proxy_with(get: &dyn Fn(&str) -> Option<String>) -> NoProxy {
    get("no_proxy")
        .filter(|v| !v.trim().is_empty())
        .or_else(|| get("NO_PROXY"))
        .map(|list| NoProxy::parse(&list))
        .unwrap_or_default()
}

fn parse_proxy(url: &str) -> Result<Proxy, ProxyError> {
    let url = url.trim();
    let shown = redact(url);
    let bad = |why: &str| ProxyError::InvalidUrl(format!("{shown}: {why}"));
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("http".to_owned(), url),
    };
    let kind = match scheme.as_str() {
        "http" => ProxyKind::Http,
        "socks5" => ProxyKind::Socks5,
        "socks5h" => ProxyKind::Socks5h,
        "https" => {
            return Err(ProxyError::Unsupported(format!(
                "{shown}: TLS to the proxy (https://) is not supported; use http:// (a wss:// connection stays encrypted end to end through the tunnel)"
            )));
        }
        "socks4" | "socks4a" => {
            return Err(ProxyError::Unsupported(format!(
                "{shown}: SOCKS4 is not supported; use socks5:// or socks5h://"
            )));
        }
        _ => return Err(bad("the scheme must be http, socks5 or socks5h")),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, rest),
    };
    if hostport.contains(['/', '?', '#']) {
        return Err(bad("a proxy URL has no path, query or fragment"));
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address in brackets"));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
        };
        (host, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    if host
        .bytes()
        .any(|b| b <= b' ' || b == 0x7F || b"[]@\\\"".contains(&b))
    {
        return Err(bad("invalid characters in the host"));
    }
    let port = match port {
        None if kind == ProxyKind::Http => 80,
        None => 1080,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("invalid port"))?,
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(userinfo) => {
            let (user, pass) = match userinfo.split_once(':') {
                Some((user, pass)) => (user, Some(pass)),
                None => (userinfo, None),
            };
            let user = percent_decode(user)
                .ok_or_else(|| bad("invalid percent-encoding in the user name"))?;
            if user.is_empty() {
                return Err(bad("empty user name"));
            }
            let pass = pass
                .map(|p| {
                    percent_decode(p).ok_or_else(|| bad("invalid percent-encoding in the password"))
                })
                .transpose()?;
            (Some(user), pass)
        }
    };
    Ok(Proxy {
        kind,
        host: host.to_owned(),
        port,
        username,
        password,
        bypass: NoProxy::default(),
    })
}

/// `url` with everything before the last `@` of its authority replaced, to
/// show in messages.
fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let rest = match rest.rsplit_once('@') {
        Some((_, hostport)) => format!("***@{hostport}"),
        None => rest.to_owned(),
    };
    let shown = match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest,
    };
    let shown: String = shown.chars().take(200).collect();
    format!("{shown:?}")
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `host:port`, IPv6 in brackets.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// At most `max` characters of `s`, control characters escaped.
fn printable(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().take(max) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// The realm of a `Proxy-Authenticate` value (`Basic realm="Tinyproxy"`).
fn realm(challenge: &str) -> Option<String> {
    let lower = challenge.to_ascii_lowercase();
    let at = lower.find("realm=")?;
    let value = challenge.get(at + "realm=".len()..)?;
    let realm = match value.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next()?,
        None => value.split([',', ' ']).next()?,
    };
    Some(printable(realm, 100))
}

async fn resolve(host: &str, port: u16) -> io::Result<IpAddr> {
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .map(|a: SocketAddr| a.ip())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))
}

/// Reads an HTTP reply head, exactly: the bytes after it stay in the
/// socket, as the tunnel's. `None` if it exceeds `limit` bytes.
///
/// Each round peeks at what has arrived and consumes it up to the end of
/// the head, so it never reads past the head and never spins.
async fn read_head(tcp: &mut TcpStream, limit: usize) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        let n = tcp.peek(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let peeked = chunk.get(..n).unwrap_or_default();
        // The last two bytes of the head so far, then what arrived: the
        // blank line may straddle the two.
        let carry = head.get(head.len().saturating_sub(2)..).unwrap_or_default();
        let mut window = Vec::with_capacity(carry.len() + n);
        window.extend_from_slice(carry);
        window.extend_from_slice(peeked);
        let found = head_end(&window);
        let take = match found {
            Some(end) => end.saturating_sub(carry.len()),
            None => n,
        };
        let take = take.min(limit.saturating_sub(head.len()) + 1).max(1);
        let start = head.len();
        head.resize(start + take, 0);
        let dest = head.get_mut(start..).unwrap_or_default();
        tcp.read_exact(dest).await?;
        if head.len() > limit {
            return Ok(None);
        }
        if found.is_some() {
            return Ok(Some(head));
        }
    }
}

/// The index just past the blank line that ends a head (`\n\r\n` or
/// `\n\n`), if there is one.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.iter().enumerate().find_map(|(i, &b)| {
        if b != b'\n' {
            return None;
        }
        match (buf.get(i + 1), buf.get(i + 2)) {
            (Some(b'\n'), _) => Some(i + 2),
            (Some(b'\r'), Some(b'\n')) => Some(i + 3),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(url: &str) -> WsUrl {
        WsUrl::parse(url).unwrap()
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn parses_proxy_urls() {
        let p = Proxy::parse("http://proxy:3128").unwrap();
        assert_eq!(
            (p.kind(), p.host(), p.port(), p.username()),
            (ProxyKind::Http, "proxy", 3128, None)
        );
        let p = Proxy::parse("proxy.corp").unwrap();
        assert_eq!((p.kind(), p.port()), (ProxyKind::Http, 80));
        let p = Proxy::parse("SOCKS5H://u%40x:p%3Aw@[::1]/").unwrap();
        assert_eq!(
            (p.kind(), p.host(), p.port(), p.username()),
            (ProxyKind::Socks5h, "::1", 1080, Some("u@x"))
        );
        assert_eq!(p.password.as_deref(), Some("p:w"));
        assert_eq!(p.to_string(), "socks5h://***@[::1]:1080");
        let p = Proxy::parse("socks5://a:b/c@h:1").unwrap();
        assert_eq!((p.host(), p.password.as_deref()), ("h", Some("b/c")));
        for bad in [
            "ftp://h",
            "http://",
            "http://h:0",
            "http://h:x",
            "http://h/path",
            "http://@h",
            "http://u:%zz@h",
            "http://[::1",
            "http://[nope]:1",
            "http://h h",
        ] {
            assert!(
                matches!(
                    Proxy::parse(bad),
                    Err(Error::Proxy(ProxyError::InvalidUrl(_)))
                ),
                "{bad}"
            );
        }
        for unsupported in ["https://h", "socks4://h"] {
            assert!(
                matches!(
                    Proxy::parse(unsupported),
                    Err(Error::Proxy(ProxyError::Unsupported(_)))
                ),
                "{unsupported}"
            );
        }
    }

    #[test]
    fn passwords_never_show() {
        let p = Proxy::parse("http://alice:hunter2@h:1").unwrap();
        assert!(!p.to_string().contains("hunter2"));
        assert!(!format!("{p:?}").contains("hunter2"));
        assert!(!p.to_string().contains("alice"));
        for bad in [
            "http://alice:hunter2@h:0",
            "http://alice:hunter2@h/x",
            "ftp://alice:hunter2@h",
        ] {
            let e = Proxy::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("***@"), "{e}");
        }
    }

    #[test]
    fn no_proxy_names() {
        let np = NoProxy::parse("localhost, .corp.example,*.dev.example  Other.Example.:8080");
        assert!(np.matches("localhost", 80));
        assert!(np.matches("LOCALHOST.", 80));
        assert!(!np.matches("notlocalhost", 80));
        assert!(np.matches("corp.example", 1));
        assert!(np.matches("a.b.corp.example", 1));
        assert!(!np.matches("xcorp.example", 1));
        assert!(np.matches("dev.example", 1));
        assert!(np.matches("x.dev.example", 1));
        assert!(np.matches("other.example", 8080));
        assert!(np.matches("ws.other.example", 8080));
        assert!(!np.matches("other.example", 8081));
        // Names do not match addresses, nor addresses names.
        assert!(!np.matches("127.0.0.1", 80));
        assert!(!NoProxy::parse("127.0.0.1").matches("localhost", 80));
        assert!(NoProxy::parse("*").matches("anything", 1));
        assert!(NoProxy::parse(" * ").matches("::1", 1));
        assert!(NoProxy::parse("").is_empty());
        assert!(!NoProxy::parse(" , ,").matches("a", 1));
        // "*" only alone, not as a wildcard inside a name.
        assert!(!NoProxy::parse("a*b").matches("axb", 1));
    }

    #[test]
    fn no_proxy_addresses_and_networks() {
        let np = NoProxy::parse(
            "10.0.0.0/8,192.168.1.7,172.16.0.1:9000,fd00::/8,[::1],[2001:db8::1]:443,0.0.0.0/0x",
        );
        assert!(np.matches("10.255.0.1", 1));
        assert!(!np.matches("11.0.0.1", 1));
        assert!(np.matches("192.168.1.7", 1));
        assert!(!np.matches("192.168.1.8", 1));
        assert!(np.matches("172.16.0.1", 9000));
        assert!(!np.matches("172.16.0.1", 9001));
        assert!(np.matches("fdab::1", 1));
        assert!(np.matches("[fdab::1]", 1));
        assert!(!np.matches("fe80::1", 1));
        assert!(np.matches("::1", 5));
        assert!(np.matches("2001:db8::1", 443));
        assert!(!np.matches("2001:db8::1", 80));
        // IPv4-mapped IPv6 compares as IPv4.
        assert!(np.matches("::ffff:10.1.2.3", 1));
        // Prefix edges: /0 is everything of that family, /32 one address.
        let all4 = NoProxy::parse("0.0.0.0/0");
        assert!(all4.matches("203.0.113.9", 1) && !all4.matches("::2", 1));
        let one = NoProxy::parse("203.0.113.9/32");
        assert!(one.matches("203.0.113.9", 1) && !one.matches("203.0.113.8", 1));
        let net6 = NoProxy::parse("2001:db8:abcd::/48");
        assert!(net6.matches("2001:db8:abcd:ffff::1", 1));
        assert!(!net6.matches("2001:db8:abce::1", 1));
        // Invalid prefixes are ignored.
        assert!(NoProxy::parse("10.0.0.0/33,::/129,1.2.3.4/x").is_empty());
    }

    #[test]
    fn env_picks_the_variable_for_the_scheme() {
        let vars = [
            ("https_proxy", "http://tls-proxy:1"),
            ("HTTP_PROXY", "http://plain-proxy:2"),
            ("ALL_PROXY", "socks5h://all:3"),
        ];
        let p = from_env_with(&ws("wss://h/"), env(&vars)).unwrap().unwrap();
        assert_eq!(p.host(), "tls-proxy");
        let p = from_env_with(&ws("ws://h/"), env(&vars)).unwrap().unwrap();
        assert_eq!(p.host(), "plain-proxy");
        // Lower case first.
        let vars = [("http_proxy", "lower:1"), ("HTTP_PROXY", "upper:2")];
        let p = from_env_with(&ws("ws://h/"), env(&vars)).unwrap().unwrap();
        assert_eq!(p.host(), "lower");
        // ALL_PROXY when the scheme's variable is unset or empty.
        let vars = [("https_proxy", " "), ("all_proxy", "socks5://all:3")];
        let p = from_env_with(&ws("wss://h/"), env(&vars)).unwrap().unwrap();
        assert_eq!((p.kind(), p.host()), (ProxyKind::Socks5, "all"));
        // HTTPS_PROXY is not for ws://, HTTP_PROXY not for wss://.
        assert!(
            from_env_with(&ws("ws://h/"), env(&[("HTTPS_PROXY", "p:1")]))
                .unwrap()
                .is_none()
        );
        assert!(
            from_env_with(&ws("wss://h/"), env(&[("HTTP_PROXY", "p:1")]))
                .unwrap()
                .is_none()
        );
        assert!(from_env_with(&ws("wss://h/"), env(&[])).unwrap().is_none());
        // httpoxy: HTTP_PROXY is not read in a CGI program.
        let cgi = [("REQUEST_METHOD", "GET"), ("HTTP_PROXY", "evil:1")];
        assert!(from_env_with(&ws("ws://h/"), env(&cgi)).unwrap().is_none());
    }

    #[test]
    fn env_no_proxy_and_errors() {
        let vars = [
            ("HTTPS_PROXY", "http://p:1"),
            ("NO_PROXY", "internal.example,10.0.0.0/8"),
        ];
        assert!(
            from_env_with(&ws("wss://ws.internal.example/"), env(&vars))
                .unwrap()
                .is_none()
        );
        assert!(
            from_env_with(&ws("wss://10.1.1.1/"), env(&vars))
                .unwrap()
                .is_none()
        );
        assert!(
            from_env_with(&ws("wss://example.com/"), env(&vars))
                .unwrap()
                .is_some()
        );
        // no_proxy before NO_PROXY.
        let vars = [("all_proxy", "p:1"), ("no_proxy", "a"), ("NO_PROXY", "b")];
        assert!(from_env_with(&ws("ws://a/"), env(&vars)).unwrap().is_none());
        assert!(from_env_with(&ws("ws://b/"), env(&vars)).unwrap().is_some());
        // A bad value is an error naming the variable, without the password.
        let vars = [("HTTPS_PROXY", "https://u:hunter2@p:1")];
        let e = from_env_with(&ws("wss://h/"), env(&vars))
            .unwrap_err()
            .to_string();
        assert!(e.contains("HTTPS_PROXY") && !e.contains("hunter2"), "{e}");
        // ...unless NO_PROXY exempts the server anyway.
        let vars = [("ALL_PROXY", "bogus://x"), ("NO_PROXY", "*")];
        assert!(from_env_with(&ws("ws://h/"), env(&vars)).unwrap().is_none());
    }

    #[tokio::test]
    async fn host_names_that_would_inject_headers_are_refused_before_connecting() {
        // Port 1 on loopback: nothing is reached, the name is refused first.
        let p = Proxy::parse("http://127.0.0.1:1").unwrap();
        for host in ["a\r\nX-Evil: 1", "a b", "", "a\u{7f}"] {
            let e = p
                .connect(host, 80, Duration::from_secs(5))
                .await
                .unwrap_err();
            assert!(matches!(e, Error::Url(_)), "{host:?}: {e}");
        }
    }

    #[test]
    fn realms_and_heads() {
        assert_eq!(
            realm("Basic realm=\"Tinyproxy\"").as_deref(),
            Some("Tinyproxy")
        );
        assert_eq!(
            realm("Basic REALM=corp, charset=\"UTF-8\"").as_deref(),
            Some("corp")
        );
        assert_eq!(realm("Negotiate"), None);
        assert_eq!(
            realm("Basic realm=\"a\u{7}b\"").as_deref(),
            Some("a\\u{7}b")
        );
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n\r\nrest"), Some(19));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\n\nrest"), Some(17));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n"), None);
        assert_eq!(socks_reply_name(2), "connection not allowed by ruleset");
        assert_eq!(socks_reply_name(99), "unassigned reply code");
    }
}
