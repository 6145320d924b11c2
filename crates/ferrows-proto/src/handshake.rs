//! The opening handshake (RFC 6455 §4), both roles.
//!
//! Server side: [`parse_request`] reads the request head, [`validate_request`]
//! checks it is a well-formed WebSocket upgrade, and [`accept_response`] (or
//! [`HandshakeError::to_response`]) builds the answer.
//!
//! Client side: [`ClientRequest`] builds the request, [`parse_response`] reads
//! the response head and [`validate_response`] checks it strictly.

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

use crate::deflate::{self, DeflateConfig, DeflateParams};
use crate::extensions::{self, ExtensionOffer};

pub mod h2;

/// The GUID RFC 6455 appends to the key before hashing.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Computes `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`:
/// base64(SHA-1(key + GUID)), RFC 6455 §1.3.
///
/// ```
/// assert_eq!(
///     ferrows_proto::handshake::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
///     "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
/// );
/// ```
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// A fresh `Sec-WebSocket-Key`: base64 of 16 random bytes.
pub fn generate_key() -> String {
    BASE64.encode(rand::random::<[u8; 16]>())
}

/// Bounds on a handshake head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandshakeLimits {
    /// The largest request or response head (request line and headers), in
    /// bytes. Default 16 KiB: twice python-websockets' 8 KiB line limit,
    /// room for large cookies, and small enough for many idle handshakes.
    pub max_head_size: usize,
    /// The most header fields. Default 64.
    pub max_headers: usize,
}

impl Default for HandshakeLimits {
    fn default() -> HandshakeLimits {
        HandshakeLimits {
            max_head_size: 16 * 1024,
            max_headers: 64,
        }
    }
}

impl HandshakeLimits {
    /// Sets [`HandshakeLimits::max_head_size`].
    pub fn max_head_size(mut self, bytes: usize) -> HandshakeLimits {
        self.max_head_size = bytes;
        self
    }

    /// Sets [`HandshakeLimits::max_headers`].
    pub fn max_headers(mut self, count: usize) -> HandshakeLimits {
        self.max_headers = count;
        self
    }
}

/// HTTP header fields in the order received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, Vec<u8>)>);

impl Headers {
    /// No headers.
    pub const fn new() -> Headers {
        Headers(Vec::new())
    }

    /// Adds a field.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.0.push((name.into(), value.into()));
    }

    /// The first value of `name` (case-insensitive), if it is valid UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Every value of `name` (case-insensitive) that is valid UTF-8.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// How many fields named `name` there are.
    pub fn count(&self, name: &str) -> usize {
        self.0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    /// Whether any value of `name` holds `token` in its comma-separated
    /// list (case-insensitive), as `Connection: keep-alive, Upgrade` does.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.tokens(name).any(|t| t.eq_ignore_ascii_case(token))
    }

    /// The comma-separated elements of every value of `name`, trimmed,
    /// empty ones skipped.
    pub fn tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.get_all(name)
            .flat_map(|v| v.split(','))
            .map(|t| t.trim_matches([' ', '\t']))
            .filter(|t| !t.is_empty())
    }

    /// All fields as (name, raw value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A parsed HTTP request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    method: String,
    target: String,
    /// Minor HTTP version: 1 for HTTP/1.1; [`h2::VERSION_2`] for HTTP/2.
    version: u8,
    headers: Headers,
}

impl Request {
    /// A request whose head an HTTP server (hyper, an HTTP/2 stack) has
    /// already parsed: `minor_version` is 1 for HTTP/1.1, 0 for HTTP/1.0
    /// (any other value reads as HTTP/1.0 and fails [`validate_request`]).
    pub fn from_parts(
        method: impl Into<String>,
        target: impl Into<String>,
        minor_version: u8,
        headers: Headers,
    ) -> Request {
        Request {
            method: method.into(),
            target: target.into(),
            version: minor_version,
            headers,
        }
    }

    /// The method, e.g. `GET`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request target as sent, e.g. `/chat?room=1`.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The path part of the target, e.g. `/chat`.
    pub fn path(&self) -> &str {
        self.target.split(['?', '#']).next().unwrap_or("/")
    }

    /// The query string without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        let (_, q) = self.target.split_once('?')?;
        Some(q.split('#').next().unwrap_or(q))
    }

    /// The value of query parameter `name` (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query()?
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// `"HTTP/1.1"`, `"HTTP/1.0"`, or `"HTTP/2"` for an RFC 8441 Extended
    /// CONNECT ([`h2::request`]).
    pub fn version(&self) -> &'static str {
        match self.version {
            1 => "HTTP/1.1",
            h2::VERSION_2 => "HTTP/2",
            _ => "HTTP/1.0",
        }
    }

    /// The header fields.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// Whether this asks for a WebSocket upgrade (`Upgrade: websocket`),
    /// valid or not: a router sends plain requests elsewhere.
    ///
    /// Over HTTP/2 ([`h2::request`]): whether it is a `CONNECT` with
    /// `:protocol: websocket` (RFC 8441).
    pub fn is_upgrade(&self) -> bool {
        if self.version == h2::VERSION_2 {
            return self.method == "CONNECT" && self.headers.has_token(":protocol", h2::PROTOCOL);
        }
        self.headers.has_token("upgrade", "websocket")
    }

    /// The subprotocols offered in `Sec-WebSocket-Protocol`, in order.
    pub fn subprotocols(&self) -> impl Iterator<Item = &str> {
        self.headers.tokens("sec-websocket-protocol")
    }

    /// The extensions offered in `Sec-WebSocket-Extensions`; malformed
    /// header values are skipped.
    pub fn extensions(&self) -> Vec<ExtensionOffer> {
        self.headers
            .get_all("sec-websocket-extensions")
            .filter_map(|v| extensions::parse(v).ok())
            .flatten()
            .collect()
    }

    /// Writes the request head in wire form (for traces).
    pub fn to_head_string(&self) -> String {
        let mut s = format!("{} {} {}\r\n", self.method, self.target, self.version());
        write_headers(&mut s, &self.headers);
        s
    }
}

fn write_headers(s: &mut String, headers: &Headers) {
    for (name, value) in headers.iter() {
        s.push_str(name);
        s.push_str(": ");
        s.push_str(&String::from_utf8_lossy(value));
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
}

/// A handshake refused: the HTTP status and a short reason for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeError {
    /// The HTTP status code, e.g. 400.
    pub status: u16,
    /// A short human-readable reason, sent as the body.
    pub reason: Cow<'static, str>,
    /// Extra response headers (e.g. `Sec-WebSocket-Version: 13` with 426).
    pub headers: Vec<(String, String)>,
}

impl HandshakeError {
    /// An error with `status` and `reason`.
    pub fn new(status: u16, reason: impl Into<Cow<'static, str>>) -> HandshakeError {
        HandshakeError {
            status,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn bad(reason: &'static str) -> HandshakeError {
        HandshakeError::new(400, reason)
    }

    /// The full HTTP response: status line, headers, and the reason as a
    /// plain-text body. Header values with CR or LF are dropped.
    pub fn to_response(&self) -> Vec<u8> {
        http_response(
            self.status,
            &self.headers,
            "text/plain; charset=utf-8",
            format!("{}\n", self.reason).as_bytes(),
        )
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status,
            reason_phrase(self.status),
            self.reason
        )
    }
}

impl std::error::Error for HandshakeError {}

/// The standard reason phrase of an HTTP status.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Builds a complete HTTP/1.1 response with a body and `Connection: close`.
/// Header values containing CR or LF are dropped (no header injection).
pub fn http_response(
    status: u16,
    headers: &[(String, String)],
    content_type: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for (name, value) in headers.iter().filter(|(n, v)| is_safe_field(n, v)) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

fn is_safe_field(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(is_tchar)
        && !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

/// RFC 7230 `tchar`.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `s` is a non-empty RFC 7230 token.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// Reads a request head from the start of `buf`.
///
/// `Ok(None)`: incomplete, read more. `Ok(Some((request, n)))`: the head
/// took `n` bytes; anything after it belongs to the WebSocket stream.
/// Errors: 431 if the head or the header count exceeds `limits`,
/// 400 if it is not HTTP.
pub fn parse_request(
    buf: &[u8],
    limits: &HandshakeLimits,
) -> Result<Option<(Request, usize)>, HandshakeError> {
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut slots);
    let window = buf.get(..limits.max_head_size).unwrap_or(buf);
    match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => {
            let method = req.method.unwrap_or_default().to_owned();
            let target = req.path.unwrap_or_default().to_owned();
            let version = req.version.unwrap_or(0);
            let mut headers = Headers::new();
            for h in req.headers.iter() {
                headers.push(h.name, h.value);
            }
            Ok(Some((
                Request {
                    method,
                    target,
                    version,
                    headers,
                },
                n,
            )))
        }
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_head_size => {
            Err(HandshakeError::new(431, "request head too large"))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            Err(HandshakeError::new(431, "too many header fields"))
        }
        Err(e) => Err(HandshakeError::new(
            400,
            format!("malformed HTTP request: {e}"),
        )),
    }
}

/// What a valid upgrade request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept: String,
}

/// Checks that `req` is a valid WebSocket upgrade request
/// (RFC 6455 §4.2.1).
///
/// Errors: 426 with `Sec-WebSocket-Version: 13` for a missing or other
/// version; 400 with the reason for anything else.
pub fn validate_request(req: &Request) -> Result<Upgrade, HandshakeError> {
    if req.method != "GET" {
        return Err(HandshakeError::bad("method must be GET"));
    }
    if req.version != 1 {
        return Err(HandshakeError::bad("HTTP/1.1 required"));
    }
    match req.headers.count("host") {
        0 => return Err(HandshakeError::bad("missing Host header")),
        1 => {}
        _ => return Err(HandshakeError::bad("more than one Host header")),
    }
    if !req.headers.has_token("upgrade", "websocket") {
        return Err(HandshakeError::bad("missing \"Upgrade: websocket\" header"));
    }
    if !req.headers.has_token("connection", "upgrade") {
        return Err(HandshakeError::bad(
            "missing \"Connection: Upgrade\" header",
        ));
    }
    let versions: Vec<&str> = req.headers.tokens("sec-websocket-version").collect();
    if versions != ["13"] || req.headers.count("sec-websocket-version") != 1 {
        return Err(
            HandshakeError::new(426, "unsupported WebSocket version: 13 required")
                .with_header("Sec-WebSocket-Version", "13"),
        );
    }
    if req.headers.count("sec-websocket-key") != 1 {
        return Err(HandshakeError::bad(
            "exactly one Sec-WebSocket-Key header required",
        ));
    }
    let key = req
        .headers
        .get("sec-websocket-key")
        .map(|k| k.trim_matches([' ', '\t']))
        .ok_or(HandshakeError::bad("invalid Sec-WebSocket-Key header"))?;
    match BASE64.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => {
            return Err(HandshakeError::bad(
                "Sec-WebSocket-Key must be base64 of 16 bytes",
            ));
        }
    }
    Ok(Upgrade {
        accept: accept_key(key.as_bytes()),
    })
}

/// The server's choice for an accepted connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// The chosen subprotocol; must be one the client offered.
    pub protocol: Option<String>,
    /// The negotiated permessage-deflate parameters and response value.
    pub deflate: Option<(DeflateParams, String)>,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
}

/// Server: decides the extensions for `req` given the local deflate
/// settings (`None`: compression off).
pub fn negotiate_deflate(
    req: &Request,
    config: Option<&DeflateConfig>,
) -> Option<(DeflateParams, String)> {
    let config = config?;
    deflate::negotiate_server(config, &req.extensions())
}

/// Builds the `101 Switching Protocols` response.
///
/// Fails with 500 if the chosen subprotocol was not offered or a header is
/// not a valid field (CR/LF in a value would be a header injection).
pub fn accept_response(
    req: &Request,
    upgrade: &Upgrade,
    accepted: &Accepted,
) -> Result<Vec<u8>, HandshakeError> {
    let mut s = String::with_capacity(160);
    s.push_str("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    s.push_str(&upgrade.accept);
    s.push_str("\r\n");
    for (name, value) in accepted_fields(req, accepted)? {
        s.push_str(name);
        s.push_str(": ");
        s.push_str(value);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    Ok(s.into_bytes())
}

/// The negotiated fields of an accepting response (subprotocol,
/// extensions, extra headers), checked: 500 if the subprotocol was not
/// offered or a header is not a valid field. Shared by HTTP/1.1 and
/// HTTP/2.
fn accepted_fields<'a>(
    req: &Request,
    accepted: &'a Accepted,
) -> Result<Vec<(&'a str, &'a str)>, HandshakeError> {
    let mut fields = Vec::with_capacity(2 + accepted.headers.len());
    if let Some(p) = &accepted.protocol {
        if !req.subprotocols().any(|o| o == p) {
            return Err(HandshakeError::new(
                500,
                "the server chose a subprotocol the client did not offer",
            ));
        }
        fields.push(("Sec-WebSocket-Protocol", p.as_str()));
    }
    if let Some((_, value)) = &accepted.deflate {
        fields.push(("Sec-WebSocket-Extensions", value.as_str()));
    }
    for (name, value) in &accepted.headers {
        if !is_safe_field(name, value) {
            return Err(HandshakeError::new(500, "invalid response header"));
        }
        fields.push((name.as_str(), value.as_str()));
    }
    Ok(fields)
}

/// A client's opening request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    /// The `Host` header value (`host` or `host:port`).
    pub host: String,
    /// The request target, e.g. `/chat?x=1`.
    pub target: String,
    /// The `Sec-WebSocket-Key`.
    pub key: String,
    /// Subprotocols to offer, in preference order.
    pub protocols: Vec<String>,
    /// The `Sec-WebSocket-Extensions` offer, if any.
    pub extensions: Option<String>,
    /// Extra headers (e.g. `Origin`, `Authorization`).
    pub headers: Vec<(String, String)>,
}

impl ClientRequest {
    /// A request for `host` and `target` with a fresh random key.
    pub fn new(host: impl Into<String>, target: impl Into<String>) -> ClientRequest {
        ClientRequest {
            host: host.into(),
            target: target.into(),
            key: generate_key(),
            protocols: Vec::new(),
            extensions: None,
            headers: Vec::new(),
        }
    }

    /// Encodes the request head. Fails if a subprotocol is not a token or
    /// a header is not a valid field.
    pub fn encode(&self) -> Result<Vec<u8>, ClientHandshakeError> {
        if let Some(p) = self.protocols.iter().find(|p| !is_token(p)) {
            return Err(ClientHandshakeError::InvalidRequest(format!(
                "subprotocol {p:?} is not an HTTP token"
            )));
        }
        if let Some((n, _)) = self.headers.iter().find(|(n, v)| !is_safe_field(n, v)) {
            return Err(ClientHandshakeError::InvalidRequest(format!(
                "header {n:?} is not a valid field"
            )));
        }
        if !is_safe_field("Host", &self.host) || self.target.bytes().any(|b| b <= b' ' || b == 0x7F)
        {
            return Err(ClientHandshakeError::InvalidRequest(
                "invalid host or path".into(),
            ));
        }
        if !is_safe_field("Sec-WebSocket-Key", &self.key)
            || self
                .extensions
                .as_deref()
                .is_some_and(|e| !is_safe_field("Sec-WebSocket-Extensions", e))
        {
            return Err(ClientHandshakeError::InvalidRequest(
                "invalid key or extension offer".into(),
            ));
        }
        let mut s = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n",
            self.target, self.host, self.key
        );
        if !self.protocols.is_empty() {
            s.push_str(&format!(
                "Sec-WebSocket-Protocol: {}\r\n",
                self.protocols.join(", ")
            ));
        }
        if let Some(ext) = &self.extensions {
            s.push_str(&format!("Sec-WebSocket-Extensions: {ext}\r\n"));
        }
        for (name, value) in &self.headers {
            s.push_str(&format!("{name}: {value}\r\n"));
        }
        s.push_str("\r\n");
        Ok(s.into_bytes())
    }
}

/// A parsed HTTP response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    reason: String,
    version: u8,
    headers: Headers,
}

impl Response {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The reason phrase as sent.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The header fields.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// Writes the response head in wire form (for traces).
    pub fn to_head_string(&self) -> String {
        let v = match self.version {
            1 => "HTTP/1.1",
            h2::VERSION_2 => "HTTP/2",
            _ => "HTTP/1.0",
        };
        let mut s = format!("{v} {} {}\r\n", self.status, self.reason);
        write_headers(&mut s, &self.headers);
        s
    }
}

/// Why the client side of a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientHandshakeError {
    /// The request could not be built (bad header, subprotocol, URL).
    InvalidRequest(String),
    /// The response is not valid HTTP, or its head is too large.
    MalformedResponse(String),
    /// The server did not answer 101.
    NotSwitching {
        /// The status it sent.
        status: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// `Upgrade: websocket` missing from the response.
    MissingUpgrade,
    /// `Connection: Upgrade` missing from the response.
    MissingConnection,
    /// `Sec-WebSocket-Accept` missing.
    MissingAccept,
    /// `Sec-WebSocket-Accept` present but wrong. The message explains the
    /// common cause when it can be recognised (e.g. a trailing newline).
    WrongAccept {
        /// The value the key requires.
        expected: String,
        /// The value received.
        got: String,
    },
    /// A subprotocol the client did not offer, or more than one.
    UnexpectedProtocol(String),
    /// An extension the client did not offer, or an invalid one.
    UnexpectedExtension(String),
    /// HTTP/2 (RFC 8441): the server did not answer the Extended CONNECT
    /// with 200.
    NotOk {
        /// The status it sent.
        status: u16,
    },
    /// HTTP/2: the server did not send `SETTINGS_ENABLE_CONNECT_PROTOCOL =
    /// 1`, so it cannot carry WebSockets over HTTP/2 (RFC 8441 §3).
    ExtendedConnectDisabled,
}

impl fmt::Display for ClientHandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientHandshakeError::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            ClientHandshakeError::MalformedResponse(why) => {
                write!(f, "malformed HTTP response: {why}")
            }
            ClientHandshakeError::NotSwitching { status, reason } => {
                write!(
                    f,
                    "server answered {status} {reason}, not 101 Switching Protocols"
                )
            }
            ClientHandshakeError::MissingUpgrade => {
                f.write_str("response lacks \"Upgrade: websocket\"")
            }
            ClientHandshakeError::MissingConnection => {
                f.write_str("response lacks \"Connection: Upgrade\"")
            }
            ClientHandshakeError::MissingAccept => {
                f.write_str("response lacks Sec-WebSocket-Accept")
            }
            ClientHandshakeError::WrongAccept { expected, got } => {
                write!(f, "Sec-WebSocket-Accept is {got:?}, expected {expected:?}")?;
                if let Some(why) = diagnose_accept(expected, got) {
                    write!(f, " ({why})")?;
                }
                Ok(())
            }
            ClientHandshakeError::UnexpectedProtocol(why) => {
                write!(f, "unexpected subprotocol: {why}")
            }
            ClientHandshakeError::UnexpectedExtension(why) => {
                write!(f, "unexpected extension: {why}")
            }
            ClientHandshakeError::NotOk { status } => write!(
                f,
                "server answered {status} {}, not 200 (RFC 8441 Extended CONNECT)",
                reason_phrase(*status)
            ),
            ClientHandshakeError::ExtendedConnectDisabled => f.write_str(
                "the server's HTTP/2 settings lack SETTINGS_ENABLE_CONNECT_PROTOCOL=1: it does not accept WebSockets over HTTP/2 (RFC 8441); connect over HTTP/1.1",
            ),
        }
    }
}

impl std::error::Error for ClientHandshakeError {}

/// Names the classic mistakes behind a wrong `Sec-WebSocket-Accept`.
pub fn diagnose_accept(expected: &str, got: &str) -> Option<&'static str> {
    let trimmed = got.trim_matches(|c: char| c.is_ascii_whitespace());
    if trimmed == expected {
        return Some(if got.contains('\n') {
            "the right value followed by a newline: base64 encoders that wrap lines (e.g. Python's base64.encodebytes, `openssl base64` without -A) add one"
        } else {
            "the right value with extra whitespace"
        });
    }
    if trimmed.eq_ignore_ascii_case(expected) {
        return Some("the right value in the wrong letter case: base64 is case-sensitive");
    }
    if trimmed.len() == 40 && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some("a hex SHA-1 digest: the digest must be base64-encoded from its 20 raw bytes");
    }
    if BASE64.decode(trimmed).is_ok_and(|raw| raw.len() != 20) {
        return Some(
            "not a base64 SHA-1 digest (20 bytes): was the GUID appended to the key and the key used as sent?",
        );
    }
    None
}

/// Reads a response head from the start of `buf`; like [`parse_request`].
pub fn parse_response(
    buf: &[u8],
    limits: &HandshakeLimits,
) -> Result<Option<(Response, usize)>, ClientHandshakeError> {
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut resp = httparse::Response::new(&mut slots);
    let window = buf.get(..limits.max_head_size).unwrap_or(buf);
    match resp.parse(window) {
        Ok(httparse::Status::Complete(n)) => {
            let mut headers = Headers::new();
            for h in resp.headers.iter() {
                headers.push(h.name, h.value);
            }
            Ok(Some((
                Response {
                    status: resp.code.unwrap_or(0),
                    reason: resp.reason.unwrap_or_default().to_owned(),
                    version: resp.version.unwrap_or(0),
                    headers,
                },
                n,
            )))
        }
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_head_size => Err(
            ClientHandshakeError::MalformedResponse("response head too large".into()),
        ),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(ClientHandshakeError::MalformedResponse(e.to_string())),
    }
}

/// What the server agreed to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// The subprotocol the server selected, if any.
    pub protocol: Option<String>,
    /// The permessage-deflate parameters, if compression was accepted.
    pub deflate: Option<DeflateParams>,
}

/// Checks a server's response strictly (RFC 6455 §4.1, RFC 7692 §5):
/// status 101, `Upgrade`, `Connection`, the exact accept value, only an
/// offered subprotocol, only offered extensions with valid parameters.
pub fn validate_response(
    resp: &Response,
    request: &ClientRequest,
    deflate: Option<&DeflateConfig>,
) -> Result<Negotiated, ClientHandshakeError> {
    if resp.status != 101 {
        return Err(ClientHandshakeError::NotSwitching {
            status: resp.status,
            reason: resp.reason.clone(),
        });
    }
    if !resp.headers.has_token("upgrade", "websocket") {
        return Err(ClientHandshakeError::MissingUpgrade);
    }
    if !resp.headers.has_token("connection", "upgrade") {
        return Err(ClientHandshakeError::MissingConnection);
    }
    let expected = accept_key(request.key.as_bytes());
    let got: Vec<&[u8]> = resp
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|(_, v)| v)
        .collect();
    match got.as_slice() {
        [] => return Err(ClientHandshakeError::MissingAccept),
        [one] if *one == expected.as_bytes() => {}
        [one] => {
            return Err(ClientHandshakeError::WrongAccept {
                expected,
                got: String::from_utf8_lossy(one).into_owned(),
            });
        }
        _ => {
            return Err(ClientHandshakeError::WrongAccept {
                expected,
                got: "more than one Sec-WebSocket-Accept header".into(),
            });
        }
    }
    check_agreement(&resp.headers, request, deflate)
}

/// The subprotocol and extensions of a response: only offered ones, each
/// at most once (shared by HTTP/1.1 and HTTP/2).
fn check_agreement(
    headers: &Headers,
    request: &ClientRequest,
    deflate: Option<&DeflateConfig>,
) -> Result<Negotiated, ClientHandshakeError> {
    let protocols: Vec<&str> = headers.tokens("sec-websocket-protocol").collect();
    let protocol = match protocols.as_slice() {
        [] => None,
        [p] if request.protocols.iter().any(|o| o == p) => Some((*p).to_owned()),
        [p] => {
            return Err(ClientHandshakeError::UnexpectedProtocol(format!(
                "{p:?} was not offered"
            )));
        }
        _ => {
            return Err(ClientHandshakeError::UnexpectedProtocol(
                "the server selected more than one".into(),
            ));
        }
    };

    let mut params = None;
    for value in headers.get_all("sec-websocket-extensions") {
        let list = extensions::parse(value)
            .map_err(|e| ClientHandshakeError::UnexpectedExtension(e.to_string()))?;
        for ext in list {
            if !ext.name.eq_ignore_ascii_case("permessage-deflate") {
                return Err(ClientHandshakeError::UnexpectedExtension(format!(
                    "{} was not offered",
                    ext.name
                )));
            }
            let Some(config) = deflate else {
                return Err(ClientHandshakeError::UnexpectedExtension(
                    "permessage-deflate was not offered".into(),
                ));
            };
            if params.is_some() {
                return Err(ClientHandshakeError::UnexpectedExtension(
                    "permessage-deflate accepted twice".into(),
                ));
            }
            params = Some(
                deflate::client_accept(config, &ext)
                    .map_err(|e| ClientHandshakeError::UnexpectedExtension(e.to_string()))?,
            );
        }
    }
    Ok(Negotiated {
        protocol,
        deflate: params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_REQUEST: &str = "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn parse(s: &str) -> Request {
        parse_request(s.as_bytes(), &HandshakeLimits::default())
            .unwrap()
            .unwrap()
            .0
    }

    #[test]
    fn rfc6455_accept_key_vector() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn rfc6455_request_is_accepted() {
        let req = parse(RFC_REQUEST);
        assert_eq!(req.path(), "/chat");
        assert_eq!(
            req.subprotocols().collect::<Vec<_>>(),
            ["chat", "superchat"]
        );
        let up = validate_request(&req).unwrap();
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let accepted = Accepted {
            protocol: Some("chat".into()),
            ..Accepted::default()
        };
        let resp = String::from_utf8(accept_response(&req, &up, &accepted).unwrap()).unwrap();
        assert_eq!(
            resp,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
        );
    }

    #[test]
    fn token_lists_are_case_insensitive() {
        let req = parse(
            "GET / HTTP/1.1\r\nhost: x\r\nupgrade: WebSocket\r\nconnection: keep-alive, UPGRADE\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
        );
        assert!(validate_request(&req).is_ok());
    }

    fn status_of(s: &str) -> (u16, String) {
        let e = validate_request(&parse(s)).unwrap_err();
        (e.status, e.reason.into_owned())
    }

    #[test]
    fn invalid_requests_get_the_right_status() {
        let ok = RFC_REQUEST;
        let (s, _) = status_of(&ok.replace("GET", "POST"));
        assert_eq!(s, 400);
        let (s, _) = status_of(&ok.replace("HTTP/1.1", "HTTP/1.0"));
        assert_eq!(s, 400);
        let (s, r) = status_of(&ok.replace("Host: server.example.com\r\n", ""));
        assert_eq!((s, r.as_str()), (400, "missing Host header"));
        let (s, _) = status_of(&ok.replace("Upgrade: websocket\r\n", ""));
        assert_eq!(s, 400);
        let (s, _) = status_of(&ok.replace("Connection: Upgrade", "Connection: keep-alive"));
        assert_eq!(s, 400);
        let e = validate_request(&parse(&ok.replace("Version: 13", "Version: 8"))).unwrap_err();
        assert_eq!(e.status, 426);
        assert_eq!(
            e.headers,
            vec![("Sec-WebSocket-Version".to_owned(), "13".to_owned())]
        );
        let resp = String::from_utf8(e.to_response()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(resp.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        let (s, _) = status_of(&ok.replace("Sec-WebSocket-Version: 13\r\n", ""));
        assert_eq!(s, 426);
        let (s, _) = status_of(&ok.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ=="));
        assert_eq!(s, 400);
        let (s, _) = status_of(&ok.replace("dGhlIHNhbXBsZSBub25jZQ==", "not base64!"));
        assert_eq!(s, 400);
    }

    #[test]
    fn head_size_and_header_count_are_bounded() {
        let limits = HandshakeLimits::default().max_head_size(64).max_headers(4);
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(100));
        assert_eq!(
            parse_request(big.as_bytes(), &limits).unwrap_err().status,
            431
        );
        let many = "GET / HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\n\r\n";
        let limits = HandshakeLimits::default().max_headers(4);
        assert_eq!(
            parse_request(many.as_bytes(), &limits).unwrap_err().status,
            431
        );
        assert!(
            parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n", &limits)
                .unwrap()
                .is_none()
        );
        assert_eq!(
            parse_request(b"\x16\x03\x01garbage\r\n\r\n", &limits)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn query_parameters() {
        let req = parse("GET /gamepad?token=abc&x HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(req.path(), "/gamepad");
        assert_eq!(req.query(), Some("token=abc&x"));
        assert_eq!(req.query_param("token"), Some("abc"));
        assert_eq!(req.query_param("x"), Some(""));
        assert_eq!(req.query_param("y"), None);
    }

    #[test]
    fn response_headers_cannot_be_injected() {
        let req = parse(RFC_REQUEST);
        let up = validate_request(&req).unwrap();
        let bad = Accepted {
            headers: vec![("X-A".into(), "1\r\nSet-Cookie: evil".into())],
            ..Accepted::default()
        };
        assert_eq!(accept_response(&req, &up, &bad).unwrap_err().status, 500);
        let unoffered = Accepted {
            protocol: Some("mqtt".into()),
            ..Accepted::default()
        };
        assert_eq!(
            accept_response(&req, &up, &unoffered).unwrap_err().status,
            500
        );
    }

    fn client_case(response: &str, protocols: &[&str]) -> Result<Negotiated, ClientHandshakeError> {
        let mut req = ClientRequest::new("server.example.com", "/chat");
        req.key = "dGhlIHNhbXBsZSBub25jZQ==".into();
        req.protocols = protocols.iter().map(|p| (*p).to_owned()).collect();
        let (resp, n) = parse_response(response.as_bytes(), &HandshakeLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(n, response.len());
        validate_response(&resp, &req, None)
    }

    const GOOD: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";

    #[test]
    fn client_validates_the_response() {
        assert!(client_case(&format!("{GOOD}\r\n"), &[]).is_ok());
        let n = client_case(
            &format!("{GOOD}Sec-WebSocket-Protocol: chat\r\n\r\n"),
            &["chat"],
        )
        .unwrap();
        assert_eq!(n.protocol.as_deref(), Some("chat"));
        assert!(matches!(
            client_case(&format!("{GOOD}Sec-WebSocket-Protocol: chat\r\n\r\n"), &[]),
            Err(ClientHandshakeError::UnexpectedProtocol(_))
        ));
        assert!(matches!(
            client_case(
                &format!("{GOOD}Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"),
                &[]
            ),
            Err(ClientHandshakeError::UnexpectedExtension(_))
        ));
        assert!(matches!(
            client_case("HTTP/1.1 200 OK\r\n\r\n", &[]),
            Err(ClientHandshakeError::NotSwitching { status: 200, .. })
        ));
        assert!(matches!(
            client_case(
                &format!("{}\r\n", GOOD.replace("Upgrade: websocket\r\n", "")),
                &[]
            ),
            Err(ClientHandshakeError::MissingUpgrade)
        ));
        let wrong = client_case(&format!("{}\r\n", GOOD.replace("s3pP", "AAAA")), &[]);
        assert!(matches!(
            wrong,
            Err(ClientHandshakeError::WrongAccept { .. })
        ));
    }

    #[test]
    fn accept_diagnosis_names_the_classic_faults() {
        let e = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        assert!(
            diagnose_accept(e, &format!("{e}\n"))
                .unwrap()
                .contains("newline")
        );
        assert!(
            diagnose_accept(e, &e.to_lowercase())
                .unwrap()
                .contains("case")
        );
        assert!(
            diagnose_accept(e, "b37a4f2cc0624f1690f64606cf385945b2bec4ea")
                .unwrap()
                .contains("hex")
        );
    }

    #[test]
    fn client_request_encoding() {
        let mut req = ClientRequest::new("example.com:8080", "/a?b=c");
        req.protocols = vec!["chat".into()];
        req.headers = vec![("Origin".into(), "http://example.com".into())];
        let text = String::from_utf8(req.encode().unwrap()).unwrap();
        assert!(text.starts_with("GET /a?b=c HTTP/1.1\r\nHost: example.com:8080\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: chat\r\n"));
        assert!(text.ends_with("Origin: http://example.com\r\n\r\n"));
        // The server side accepts what the client side builds.
        let parsed = parse(&text);
        assert_eq!(
            validate_request(&parsed).unwrap().accept,
            accept_key(req.key.as_bytes())
        );
        req.headers = vec![("X".into(), "a\r\nb".into())];
        assert!(req.encode().is_err());
        req.headers.clear();
        req.extensions = Some("permessage-deflate\r\nX-Injected: 1".into());
        assert!(req.encode().is_err());
    }

    #[test]
    fn keys_are_random() {
        let a = generate_key();
        assert_eq!(BASE64.decode(&a).unwrap().len(), 16);
        assert_ne!(a, generate_key());
    }
}
