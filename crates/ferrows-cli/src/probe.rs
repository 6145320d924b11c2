//! `ferrows probe`: checks a server, one line per check.
//!
//! The opening handshake is done by hand on the raw bytes, so that faults a
//! lenient HTTP parser would hide (an accept value followed by a newline,
//! bare LF line endings, stray bytes after the head) can be named; the
//! verdict on the response itself is ferrows-proto's
//! [`validate_response`]. The rest runs over a [`WebSocket`]: echo of text
//! and binary, the three length encodings, fragmentation, ping, the close
//! handshake, and permessage-deflate.

use std::fmt;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::Args;
use ferrows::proto::Decoder;
use ferrows::proto::deflate::{self, DeflateConfig};
use ferrows::proto::handshake::{
    ClientHandshakeError, ClientRequest, HandshakeLimits, Response, accept_key, diagnose_accept,
    generate_key, parse_response, validate_response,
};
use ferrows::tls::rustls::ClientConfig;
use ferrows::{
    CloseCode, CloseFrame, Config, Fragment, Limits, MaybeTlsStream, Message, Negotiated, OpCode,
    Role, WebSocket, WsUrl,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::connect::{open_stream, parse_header, parse_secs, tls_config};
use crate::pcap::{Capture, Recorder};
use crate::proxy_args::ProxyArgs;
use crate::trace::{Traced, Tracer, escape_controls, hex_preview, millis, quoted};

/// Arguments of `ferrows probe`.
#[derive(Args, Debug)]
pub(crate) struct ProbeArgs {
    /// The server to check: `ws://host[:port][/path]` or `wss://...`
    #[arg(value_name = "URL")]
    url: String,
    /// How long each check may take, in seconds.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    timeout: Duration,
    /// Add a header to every opening request (repeatable), e.g. an Origin
    /// or Authorization the server requires.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Offer a subprotocol (repeatable), for servers that require one.
    #[arg(short = 's', long = "subprotocol", value_name = "PROTOCOL")]
    subprotocols: Vec<String>,
    /// For wss://: also trust the CA certificates in this PEM file.
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// For wss://: accept any certificate (testing your own servers only).
    #[arg(short = 'k', long, conflicts_with = "ca")]
    insecure: bool,
    /// Print every handshake and frame, both directions, to stderr.
    #[arg(long)]
    trace: bool,
    #[command(flatten)]
    pcap: crate::pcap::PcapArgs,
    #[command(flatten)]
    proxy: ProxyArgs,
}

type Stream = Traced<Capture<MaybeTlsStream<TcpStream>>>;
type Ws = WebSocket<Stream>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Fail,
    Warn,
    Skip,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Warn => "WARN",
            Verdict::Skip => "SKIP",
        })
    }
}

/// Whether the server echoes, as the first echo check found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Echo {
    Unknown,
    Yes,
    No(String),
}

/// The probe's state: settings, the connection in use, the tally.
struct Probe {
    url: WsUrl,
    tls: Option<Arc<ClientConfig>>,
    proxy: ProxyArgs,
    headers: Vec<(String, String)>,
    protocols: Vec<String>,
    timeout: Duration,
    trace: bool,
    recorder: Option<Recorder>,
    ws: Option<Ws>,
    echo: Echo,
    counts: [usize; 4],
    /// The checks that passed so far.
    passed: Vec<String>,
}

/// A handshake done by hand: the raw head and what followed it.
struct RawHandshake {
    stream: Stream,
    request: ClientRequest,
    head: Vec<u8>,
    response: Response,
    leftover: Vec<u8>,
}

/// How a handshake attempt failed before a response head was complete.
enum HandshakeFailure {
    Connect(String),
    Response(String),
}

/// How an echo round trip went.
enum Reply {
    Echoed(Duration),
    Mismatch(String),
    Nothing(Vec<String>),
    Closed(Option<CloseFrame>),
    Failed(ferrows::Error),
}

impl Probe {
    fn record(&mut self, verdict: Verdict, name: &str, detail: impl fmt::Display) {
        let slot = match verdict {
            Verdict::Pass => 0,
            Verdict::Fail => 1,
            Verdict::Warn => 2,
            Verdict::Skip => 3,
        };
        if let Some(c) = self.counts.get_mut(slot) {
            *c += 1;
        }
        if verdict == Verdict::Pass {
            self.passed.push(name.to_owned());
        }
        let mut out = std::io::stdout().lock();
        // Details quote what the server sent: keep terminal controls out.
        let detail = detail.to_string();
        let _ = writeln!(out, "{verdict}  {name:<18} {}", escape_controls(&detail));
        let _ = out.flush();
    }

    /// How long the library waits for the closing handshake and the TCP
    /// close: half a check's time, so that a protocol error (reported once
    /// the close it caused is done) still shows within the check.
    fn close_timeout(&self) -> Duration {
        self.timeout / 2
    }

    fn config(&self) -> Config {
        Config::default()
            .close_timeout(self.close_timeout())
            .handshake_timeout(self.timeout)
    }

    fn request(&self, extensions: Option<String>) -> ClientRequest {
        let mut req = ClientRequest::new(self.url.host_header(), self.url.target.clone());
        req.protocols = self.protocols.clone();
        req.headers = self.headers.clone();
        req.extensions = extensions;
        req
    }

    /// Connects and does the handshake by hand, within the timeout.
    async fn raw_handshake(
        &self,
        request: ClientRequest,
    ) -> Result<(RawHandshake, Duration), HandshakeFailure> {
        let started = Instant::now();
        let stream = timeout(
            self.timeout,
            open_stream(&self.url, self.tls.clone(), &self.proxy),
        )
        .await
        .map_err(|_| HandshakeFailure::Connect(format!("no connection within {:?}", self.timeout)))?
        .map_err(|e| HandshakeFailure::Connect(format!("{e:#}")))?;
        let connected = started.elapsed();
        let stream = crate::pcap::wrap_client(stream, self.recorder.as_ref());
        let tracer = self.trace.then(|| Tracer::new(Role::Client, ""));
        let mut stream = Traced::new(stream, tracer);
        let work = async {
            let bytes = request
                .encode()
                .map_err(|e| HandshakeFailure::Response(e.to_string()))?;
            stream
                .write_all(&bytes)
                .await
                .map_err(|e| HandshakeFailure::Response(format!("sending the request: {e}")))?;
            stream
                .flush()
                .await
                .map_err(|e| HandshakeFailure::Response(format!("sending the request: {e}")))?;
            let limits = HandshakeLimits::default();
            let mut buf = BytesMut::with_capacity(2048);
            loop {
                match parse_response(&buf, &limits) {
                    Ok(Some((response, n))) => {
                        let leftover = buf.split_off(n).to_vec();
                        return Ok((response, buf.to_vec(), leftover));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        return Err(HandshakeFailure::Response(format!(
                            "{e}; received {}",
                            describe_bytes(&buf)
                        )));
                    }
                }
                match stream.read_buf(&mut buf).await {
                    Ok(0) => {
                        return Err(HandshakeFailure::Response(format!(
                            "the server closed the connection before a complete response head; received {}",
                            describe_bytes(&buf)
                        )));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return Err(HandshakeFailure::Response(format!(
                            "reading the response: {e}"
                        )));
                    }
                }
            }
        };
        let (response, head, leftover) = timeout(self.timeout, work).await.map_err(|_| {
            HandshakeFailure::Response(format!(
                "no complete response head within {:?}",
                self.timeout
            ))
        })??;
        Ok((
            RawHandshake {
                stream,
                request,
                head,
                response,
                leftover,
            },
            connected,
        ))
    }

    /// A connection for the next check: the current one, or a new one
    /// (accepted leniently: only the status must be 101).
    async fn ws(&mut self) -> Result<&mut Ws, String> {
        if self.ws.is_none() {
            let request = self.request(None);
            let (hs, _) = match self.raw_handshake(request).await {
                Ok(ok) => ok,
                Err(HandshakeFailure::Connect(e) | HandshakeFailure::Response(e)) => {
                    return Err(format!("cannot reconnect: {e}"));
                }
            };
            if hs.response.status() != 101 {
                return Err(format!(
                    "cannot reconnect: the server answered {} {}",
                    hs.response.status(),
                    escape_controls(hs.response.reason())
                ));
            }
            self.ws = Some(self.upgrade(hs, Negotiated::default(), self.config()));
        }
        self.ws.as_mut().ok_or_else(|| "no connection".to_owned())
    }

    fn upgrade(&self, hs: RawHandshake, negotiated: Negotiated, config: Config) -> Ws {
        WebSocket::from_upgraded(
            hs.stream,
            Role::Client,
            &config,
            negotiated,
            BytesMut::from(&hs.leftover[..]),
        )
    }

    /// The handshake checks, on the first connection. Returns whether the
    /// server switched protocols (the other checks need that).
    async fn handshake_checks(&mut self) -> bool {
        let request = self.request(None);
        let (hs, connected) = match self.raw_handshake(request).await {
            Ok(ok) => ok,
            Err(HandshakeFailure::Connect(e)) => {
                self.record(Verdict::Fail, "connect", e);
                return false;
            }
            Err(HandshakeFailure::Response(e)) => {
                self.record(Verdict::Pass, "connect", self.url.host_header());
                self.record(Verdict::Fail, "response", e);
                return false;
            }
        };
        let tls = if self.url.secure { " (TLS)" } else { "" };
        self.record(
            Verdict::Pass,
            "connect",
            format!("{}{tls} in {}", self.url.host_header(), millis(connected)),
        );
        let resp = &hs.response;
        if resp.status() != 101 {
            let mut detail = format!(
                "the server answered {} {}, not 101 Switching Protocols",
                resp.status(),
                escape_controls(resp.reason())
            );
            if !hs.leftover.is_empty() {
                let body = hs.leftover.get(..200).unwrap_or(&hs.leftover);
                detail.push_str(&format!("; the body starts with {}", quoted(body)));
            }
            self.record(Verdict::Fail, "status", detail);
            return false;
        }
        self.record(Verdict::Pass, "status", "101 Switching Protocols");
        let lines = head_lines(&hs.head);
        self.line_endings(&lines);
        self.header_check(resp, "upgrade", "Upgrade", "websocket");
        self.header_check(resp, "connection", "Connection", "Upgrade");
        self.accept_check(&lines, &hs.request);
        match validate_response(resp, &hs.request, None) {
            Err(
                e @ (ClientHandshakeError::UnexpectedProtocol(_)
                | ClientHandshakeError::UnexpectedExtension(_)),
            ) => self.record(Verdict::Fail, "negotiation", e),
            _ => {
                let protocol = resp.header("sec-websocket-protocol");
                let detail = match protocol {
                    Some(p) => format!("subprotocol {}", quoted(p.as_bytes())),
                    None if self.protocols.is_empty() => "no subprotocol, no extension".to_owned(),
                    None => "the server selected none of the subprotocols offered".to_owned(),
                };
                self.record(Verdict::Pass, "negotiation", detail);
            }
        }
        self.after_head(&hs.leftover);
        let config = self.config();
        self.ws = Some(self.upgrade(hs, Negotiated::default(), config));
        true
    }

    fn line_endings(&mut self, lines: &[Vec<u8>]) {
        let bare: Vec<String> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains(&b'\n'))
            .map(|(i, l)| {
                let text = String::from_utf8_lossy(l);
                let name = text.split([':', '\n']).next().unwrap_or_default();
                format!("line {} ({})", i + 1, escape_controls(name))
            })
            .collect();
        if bare.is_empty() {
            self.record(Verdict::Pass, "line endings", "CRLF");
        } else {
            self.record(
                Verdict::Warn,
                "line endings",
                format!(
                    "bare LF instead of CRLF in {}: HTTP requires CRLF (RFC 9112 §2.2); strict clients refuse it",
                    bare.join(", ")
                ),
            );
        }
    }

    fn header_check(&mut self, resp: &Response, check: &str, name: &str, token: &str) {
        if resp.headers().has_token(name, token) {
            self.record(Verdict::Pass, check, format!("{name}: {token}"));
            return;
        }
        let got: Vec<String> = resp
            .headers()
            .get_all(name)
            .map(|v| quoted(v.as_bytes()))
            .collect();
        let detail = if got.is_empty() {
            format!("missing \"{name}: {token}\": browsers refuse the connection")
        } else {
            format!(
                "\"{name}\" is {} and lacks the token {token:?}: browsers refuse the connection",
                got.join(", ")
            )
        };
        self.record(Verdict::Fail, check, detail);
    }

    /// Compares the accept value as sent: the line up to its CRLF, so a
    /// newline inside the value shows.
    fn accept_check(&mut self, lines: &[Vec<u8>], request: &ClientRequest) {
        let expected = accept_key(request.key.as_bytes());
        let accept_values = |lines: &mut dyn Iterator<Item = &[u8]>| -> Vec<String> {
            lines
                .filter_map(|l| {
                    let (name, value) = l.split_at(l.iter().position(|b| *b == b':')?);
                    name.eq_ignore_ascii_case(b"sec-websocket-accept").then(|| {
                        let value = value.get(1..).unwrap_or_default();
                        let value = String::from_utf8_lossy(value);
                        value.trim_matches([' ', '\t']).to_owned()
                    })
                })
                .collect()
        };
        let mut values = accept_values(&mut lines.iter().map(Vec::as_slice));
        if values.is_empty() {
            // A head that ends its lines with bare LF (warned about
            // separately) is one "line" split at CRLF: look inside it.
            let mut bare = lines
                .iter()
                .flat_map(|l| l.split(|b| *b == b'\n'))
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
            values = accept_values(&mut bare);
        }
        match values.as_slice() {
            [] => self.record(Verdict::Fail, "accept", "missing Sec-WebSocket-Accept"),
            [got] if *got == expected => {
                self.record(
                    Verdict::Pass,
                    "accept",
                    format!("{expected} matches the key"),
                );
            }
            [got] => {
                let mut detail = format!(
                    "Sec-WebSocket-Accept is {}, expected {}",
                    quoted(got.as_bytes()),
                    quoted(expected.as_bytes())
                );
                if let Some(why) = diagnose_accept(&expected, got) {
                    detail.push_str(&format!(": {why}"));
                }
                self.record(Verdict::Fail, "accept", detail);
            }
            many => self.record(
                Verdict::Fail,
                "accept",
                format!("{} Sec-WebSocket-Accept headers, one expected", many.len()),
            ),
        }
    }

    /// Bytes that came right after the head must start a valid frame.
    fn after_head(&mut self, leftover: &[u8]) {
        let Some(first) = leftover.first() else {
            return;
        };
        // The client's own decoder judges them (no extension negotiated
        // here: the probe's first connection offers none).
        let mut buf = BytesMut::from(leftover);
        let problem = match Decoder::new(Role::Client, Limits::default(), None).decode(&mut buf) {
            Err(e) => Some(e.to_string()),
            Ok(None) if *first == b'\r' || *first == b'\n' => {
                Some("a stray line ending".to_owned())
            }
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            let stray = if *first == b'\r' || *first == b'\n' {
                " (an extra line ending after the head?)"
            } else {
                ""
            };
            self.record(
                Verdict::Fail,
                "after head",
                format!(
                    "{} follow the head{stray}: a client fails the connection on them: {problem}",
                    describe_bytes(leftover)
                ),
            );
        }
    }

    /// One echo check: sends `sent`, expects `expect` back.
    async fn echo_check(
        &mut self,
        name: &str,
        sent: Vec<Message>,
        expect: Message,
        what: &str,
        hint: Option<(&str, &str)>,
    ) {
        // A hint on the likely cause, if the simpler check it builds on
        // passed.
        let hint = match hint {
            Some((after, hint)) if self.passed.iter().any(|p| p == after) => hint.to_owned(),
            _ => String::new(),
        };
        if let Echo::No(why) = &self.echo {
            let why = why.clone();
            self.record(Verdict::Skip, name, format!("no echo ({why})"));
            return;
        }
        let strict = self.echo == Echo::Yes;
        let limit = self.timeout;
        let ws = match self.ws().await {
            Ok(ws) => ws,
            Err(e) => {
                self.record(Verdict::Fail, name, e);
                return;
            }
        };
        let reply = round_trip(ws, sent, &expect, strict, limit).await;
        match reply {
            Reply::Echoed(rtt) => {
                self.echo = Echo::Yes;
                self.record(
                    Verdict::Pass,
                    name,
                    format!("{what} echoed in {}", millis(rtt)),
                );
            }
            Reply::Mismatch(why) => {
                self.echo = Echo::Yes;
                self.ws = None;
                self.record(Verdict::Fail, name, format!("{why}{hint}"));
            }
            Reply::Nothing(others) if !strict => {
                let why = match others.first() {
                    None => format!("nothing came back within {:?}", self.timeout),
                    Some(first) => format!(
                        "{} other message(s) came back, none the same; first: {first}",
                        others.len()
                    ),
                };
                self.echo = Echo::No(why.clone());
                self.ws = None;
                self.record(
                    Verdict::Skip,
                    name,
                    format!("no echo: {why}; the echo checks are skipped"),
                );
            }
            Reply::Nothing(others) => {
                self.ws = None;
                let detail = match others.first() {
                    None => format!("no reply within {:?}", self.timeout),
                    Some(first) => format!("no echo within {:?}; got {first}", self.timeout),
                };
                self.record(Verdict::Fail, name, format!("{detail}{hint}"));
            }
            Reply::Closed(frame) => {
                self.ws = None;
                let code = frame.as_ref().map_or(CloseCode::NO_STATUS, |f| f.code);
                let detail = format!(
                    "the server closed the connection: {}",
                    close_text(frame.as_ref())
                );
                // 1002 and 1007 mean the server found fault with a valid
                // message: a bug. Other codes are a choice.
                if strict || matches!(code, CloseCode::PROTOCOL_ERROR | CloseCode::INVALID_PAYLOAD)
                {
                    self.record(Verdict::Fail, name, detail);
                } else {
                    self.echo = Echo::No(detail.clone());
                    self.record(Verdict::Skip, name, format!("no echo: {detail}"));
                }
            }
            Reply::Failed(e) => {
                self.ws = None;
                self.record(Verdict::Fail, name, format!("{e}{hint}"));
            }
        }
    }

    async fn ping_check(&mut self) {
        let limit = self.timeout;
        let ws = match self.ws().await {
            Ok(ws) => ws,
            Err(e) => {
                self.record(Verdict::Fail, "ping", e);
                return;
            }
        };
        let payload = Bytes::from(format!("ferrows probe {}", generate_key()));
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + limit;
        let result = async {
            ws.send(Message::Ping(payload.clone())).await?;
            let mut other = None;
            loop {
                match tokio::time::timeout_at(deadline, ws.recv()).await {
                    Err(_) => return Ok(Err(other)),
                    Ok(None) => return Err(ferrows::Error::AbnormalClosure),
                    Ok(Some(Err(e))) => return Err(e),
                    Ok(Some(Ok(Message::Pong(p)))) if p == payload => {
                        return Ok(Ok(started.elapsed()));
                    }
                    Ok(Some(Ok(Message::Pong(p)))) => other = Some(p),
                    Ok(Some(Ok(Message::Close(f)))) => {
                        return Err(ferrows::Error::Io(std::io::Error::other(format!(
                            "the server closed the connection: {}",
                            close_text(f.as_ref())
                        ))));
                    }
                    Ok(Some(Ok(_))) => {}
                }
            }
        }
        .await;
        match result {
            Ok(Ok(rtt)) => self.record(
                Verdict::Pass,
                "ping",
                format!("pong with the same payload in {}", millis(rtt)),
            ),
            Ok(Err(Some(p))) => {
                self.ws = None;
                self.record(
                    Verdict::Fail,
                    "ping",
                    format!(
                        "the pong's payload is {}, not the ping's {} (RFC 6455 §5.5.3)",
                        quoted(&p),
                        quoted(&payload)
                    ),
                );
            }
            Ok(Err(None)) => {
                self.ws = None;
                self.record(
                    Verdict::Fail,
                    "ping",
                    format!(
                        "no pong within {:?} (RFC 6455 §5.5.2: a ping must be answered)",
                        self.timeout
                    ),
                );
            }
            Err(e) => {
                self.ws = None;
                self.record(Verdict::Fail, "ping", e);
            }
        }
    }

    async fn close_check(&mut self) {
        let limit = self.timeout;
        let close_timeout = self.close_timeout();
        let ws = match self.ws().await {
            Ok(ws) => ws,
            Err(e) => {
                self.record(Verdict::Fail, "close", e);
                return;
            }
        };
        let started = Instant::now();
        let sent = ws
            .send(Message::close(CloseCode::NORMAL, "probe done"))
            .await;
        let deadline = tokio::time::Instant::now() + limit;
        let answer = async {
            sent?;
            loop {
                match tokio::time::timeout_at(deadline, ws.recv()).await {
                    Err(_) => return Ok(None),
                    Ok(None) => return Err(ferrows::Error::AbnormalClosure),
                    Ok(Some(Err(e))) => return Err(e),
                    Ok(Some(Ok(Message::Close(frame)))) => return Ok(Some(frame)),
                    // Echoes still in flight.
                    Ok(Some(Ok(_))) => {}
                }
            }
        }
        .await;
        let frame = match answer {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                self.ws = None;
                self.record(
                    Verdict::Fail,
                    "close",
                    format!(
                        "no close frame in answer within {:?} (RFC 6455 §5.5.1)",
                        self.timeout
                    ),
                );
                return;
            }
            Err(e) => {
                self.ws = None;
                self.record(
                    Verdict::Fail,
                    "close",
                    format!("no close frame in answer: {e}"),
                );
                return;
            }
        };
        let answered = started.elapsed();
        // The server should now close the TCP connection (RFC 6455 §7.1.1).
        // The library waits for that up to its close timeout, then ends the
        // connection itself: an end well before that is the server's doing.
        let waiting = Instant::now();
        let not_closed = format!(
            "the server did not close the TCP connection within {close_timeout:?} (RFC 6455 §7.1.1: the server closes it first)"
        );
        let tcp = match timeout(close_timeout + limit, ws.recv()).await {
            Ok(None) if waiting.elapsed() < close_timeout.mul_f64(0.9) => Ok(started.elapsed()),
            Ok(None) | Err(_) => Err(not_closed),
            Ok(Some(Err(e))) => Err(format!("the connection failed: {e}")),
            Ok(Some(Ok(m))) => Err(format!("a message after the close: {} bytes", m.len())),
        };
        self.ws = None;
        let code = frame.as_ref().map(|f| f.code);
        match (code, tcp) {
            (Some(CloseCode::NORMAL), Ok(closed)) => self.record(
                Verdict::Pass,
                "close",
                format!(
                    "1000 echoed in {}, TCP closed by the server after {}",
                    millis(answered),
                    millis(closed)
                ),
            ),
            (Some(CloseCode::NORMAL), Err(why)) => {
                self.record(Verdict::Warn, "close", format!("1000 echoed, but {why}"));
            }
            (_, tcp) => {
                let mut detail = format!(
                    "sent 1000, the server answered {} (RFC 6455 §5.5.1: it typically echoes the code)",
                    close_text(frame.as_ref())
                );
                if let Err(why) = tcp {
                    detail.push_str(&format!("; {why}"));
                }
                self.record(Verdict::Warn, "close", detail);
            }
        }
    }

    /// Offers permessage-deflate on a new connection; if accepted, echoes
    /// a compressed message.
    async fn compression_check(&mut self) {
        let offer_config = DeflateConfig::default();
        let offer = deflate::client_offer(&offer_config);
        let request = self.request(Some(offer.clone()));
        let hs = match self.raw_handshake(request).await {
            Ok((hs, _)) => hs,
            Err(HandshakeFailure::Connect(e) | HandshakeFailure::Response(e)) => {
                self.record(Verdict::Fail, "compression", e);
                return;
            }
        };
        let negotiated = match validate_response(&hs.response, &hs.request, Some(&offer_config)) {
            Ok(n) => n,
            Err(ClientHandshakeError::UnexpectedExtension(why)) => {
                self.record(
                    Verdict::Fail,
                    "compression",
                    format!("offered {offer:?}; invalid answer: {why}"),
                );
                return;
            }
            Err(e) if hs.response.status() != 101 => {
                self.record(Verdict::Fail, "compression", format!("with the offer, {e}"));
                return;
            }
            // The accept value or a header is wrong: reported above.
            Err(e) => {
                self.record(
                    Verdict::Skip,
                    "compression",
                    format!("cannot judge: the handshake itself is invalid ({e})"),
                );
                return;
            }
        };
        let Some(params) = negotiated.deflate else {
            self.record(
                Verdict::Skip,
                "compression",
                format!("not negotiated: the server ignored the offer {offer:?}"),
            );
            return;
        };
        let accepted = params.to_header_value();
        if self.echo != Echo::Yes {
            self.record(
                Verdict::Pass,
                "compression",
                format!("negotiated {accepted:?}"),
            );
            return;
        }
        let config = self.config().deflate(offer_config.threshold(0));
        let mut ws = self.upgrade(
            hs,
            Negotiated {
                protocol: negotiated.protocol,
                deflate: Some(params),
            },
            config,
        );
        let text = "ferrows probe: compress me. ".repeat(146);
        let expect = Message::text(text.as_str());
        let reply = round_trip(&mut ws, vec![expect.clone()], &expect, true, self.timeout).await;
        let _ = timeout(self.timeout, ws.close(CloseCode::NORMAL, "probe done")).await;
        match reply {
            Reply::Echoed(rtt) => self.record(
                Verdict::Pass,
                "compression",
                format!(
                    "negotiated {accepted:?}; a compressed {}-byte message echoed in {}",
                    text.len(),
                    millis(rtt)
                ),
            ),
            Reply::Mismatch(why) => self.record(
                Verdict::Fail,
                "compression",
                format!("negotiated {accepted:?}, but a compressed message: {why}"),
            ),
            Reply::Nothing(_) => self.record(
                Verdict::Fail,
                "compression",
                format!(
                    "negotiated {accepted:?}, but a compressed message got no echo within {:?}",
                    self.timeout
                ),
            ),
            Reply::Closed(f) => self.record(
                Verdict::Fail,
                "compression",
                format!(
                    "negotiated {accepted:?}, but the server closed on a compressed message: {}",
                    close_text(f.as_ref())
                ),
            ),
            Reply::Failed(e) => self.record(
                Verdict::Fail,
                "compression",
                format!("negotiated {accepted:?}, but a compressed message: {e}"),
            ),
        }
    }
}

/// Sends `sent`, waits for `expect` to come back. Strict: the first data
/// message is the reply. Lenient: others are noted and skipped.
async fn round_trip(
    ws: &mut Ws,
    sent: Vec<Message>,
    expect: &Message,
    strict: bool,
    limit: Duration,
) -> Reply {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    for msg in sent {
        match tokio::time::timeout_at(deadline, ws.send(msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Reply::Failed(e),
            Err(_) => {
                return Reply::Mismatch(format!(
                    "could not even send within {limit:?}: the server does not read"
                ));
            }
        }
    }
    let mut others = Vec::new();
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.recv()).await {
            Err(_) => return Reply::Nothing(others),
            Ok(None) => return Reply::Failed(ferrows::Error::AbnormalClosure),
            Ok(Some(Err(e))) => return Reply::Failed(e),
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Close(frame) => return Reply::Closed(frame),
            Message::Text(_) | Message::Binary(_) => {
                if msg == *expect {
                    return Reply::Echoed(started.elapsed());
                }
                let why = mismatch(expect, &msg);
                if strict || looks_like(expect, &msg) {
                    return Reply::Mismatch(why);
                }
                others.push(describe_message(&msg));
            }
            _ => {}
        }
    }
}

/// Whether `got` is plausibly a broken echo of `sent` rather than an
/// unrelated message: same payload in the other type, or a prefix.
fn looks_like(sent: &Message, got: &Message) -> bool {
    let (a, b) = (sent.as_payload(), got.as_payload());
    a == b || (!b.is_empty() && a.starts_with(b)) || b.starts_with(a)
}

fn mismatch(sent: &Message, got: &Message) -> String {
    let kind = |m: &Message| if m.is_text() { "text" } else { "binary" };
    let (a, b) = (sent.as_payload(), got.as_payload());
    if a == b {
        return format!("sent as {}, echoed as {}", kind(sent), kind(got));
    }
    let first = a.iter().zip(b).position(|(x, y)| x != y);
    let mut why = format!(
        "sent {} bytes of {}, got {} bytes of {} back",
        a.len(),
        kind(sent),
        b.len(),
        kind(got)
    );
    match first {
        Some(i) => why.push_str(&format!(
            "; they differ from byte {i} (sent 0x{:02x}, got 0x{:02x})",
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0)
        )),
        None if b.len() < a.len() => why.push_str(": cut short"),
        None => why.push_str(": with extra bytes at the end"),
    }
    why
}

fn describe_message(m: &Message) -> String {
    match m {
        Message::Text(t) => format!(
            "text {}",
            quoted(t.as_bytes().get(..60).unwrap_or(t.as_bytes()))
        ),
        other => format!("binary {}", hex_preview(other.as_payload(), 16)),
    }
}

fn describe_bytes(bytes: &[u8]) -> String {
    match bytes.len() {
        0 => "nothing".to_owned(),
        1 => format!("1 byte ({})", hex_preview(bytes, 24)),
        n => format!(
            "{n} bytes ({} {})",
            hex_preview(bytes, 24),
            quoted(bytes.get(..60).unwrap_or(bytes))
        ),
    }
}

fn close_text(frame: Option<&CloseFrame>) -> String {
    match frame {
        None => format!("{} (the close frame had no code)", CloseCode::NO_STATUS),
        Some(f) if f.reason().is_empty() => f.code.to_string(),
        Some(f) => format!("{} {}", f.code, quoted(f.reason().as_bytes())),
    }
}

/// The head split at CRLF, as sent: a line may still contain a bare LF.
pub(crate) fn head_lines(head: &[u8]) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let mut rest = head;
    while !rest.is_empty() {
        let end = rest.windows(2).position(|w| w == b"\r\n");
        let (line, after) = match end {
            Some(i) => (
                rest.get(..i).unwrap_or_default(),
                rest.get(i + 2..).unwrap_or_default(),
            ),
            None => (rest, &[][..]),
        };
        // The blank line that ends the head (after a bare LF, it may be
        // only "\n").
        if line.is_empty() || line == b"\n" {
            break;
        }
        lines.push(line.to_vec());
        rest = after;
    }
    lines
}

/// `ferrows probe`: exit status 1 if any check failed.
pub(crate) async fn probe_command(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let url = WsUrl::parse(&args.url)?;
    let tls = tls_config(args.ca.as_deref(), args.insecure)?;
    if args.timeout < Duration::from_millis(100) {
        anyhow::bail!("--timeout must be at least 0.1 seconds");
    }
    args.proxy.validate()?;
    let mut p = Probe {
        url,
        tls,
        proxy: args.proxy,
        headers: args.headers,
        protocols: args.subprotocols,
        timeout: args.timeout,
        trace: args.trace,
        recorder: args.pcap.recorder(true)?,
        ws: None,
        echo: Echo::Unknown,
        counts: [0; 4],
        passed: Vec::new(),
    };
    let shown = ferrows::listener::redact_target(&p.url.to_string());
    println!("probing {}", escape_controls(&shown));
    if p.handshake_checks().await {
        let text = "ferrows probe: héllo ✓";
        p.echo_check(
            "echo text",
            vec![Message::text(text)],
            Message::text(text),
            &format!("a {}-byte text", text.len()),
            None,
        )
        .await;
        let all: Vec<u8> = (0..=255u8).collect();
        p.echo_check(
            "echo binary",
            vec![Message::binary(all.clone())],
            Message::binary(all),
            "256 bytes 00..ff",
            Some(("echo text", " (256 bytes need the 16-bit length)")),
        )
        .await;
        for (len, encoding, hint) in [
            (125usize, "7-bit", None),
            (
                126,
                "16-bit",
                Some((
                    "length 125",
                    " (from 126 bytes on, the length is in the 2 bytes after the 126 marker: a server that only reads the 7-bit length fails here)",
                )),
            ),
            (
                65_536,
                "64-bit",
                Some((
                    "length 126",
                    " (from 65536 bytes on, the length is in the 8 bytes after the 127 marker)",
                )),
            ),
        ] {
            let text: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            p.echo_check(
                &format!("length {len}"),
                vec![Message::text(text.as_str())],
                Message::text(text.as_str()),
                &format!("{len} bytes ({encoding} length)"),
                hint,
            )
            .await;
        }
        // "fragment" + "ed ✓" with the check mark split between frames 2
        // and 3: a receiver must validate UTF-8 across fragments.
        let whole = "fragmented ✓".as_bytes();
        let (first, rest) = whole.split_at(4);
        let (second, third) = rest.split_at(8);
        let pieces = [first, second, third];
        let fragments = pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                Message::Fragment(Fragment {
                    opcode: OpCode::Text,
                    data: Bytes::copy_from_slice(piece),
                    message_offset: 0,
                    first: i == 0,
                    fin: i == pieces.len() - 1,
                })
            })
            .collect();
        p.echo_check(
            "fragmented",
            fragments,
            Message::text("fragmented ✓"),
            "a text in 3 fragments (a character split across two)",
            Some((
                "echo text",
                " (RFC 6455 §5.4: a message may come in fragments, and a character may straddle them)",
            )),
        )
        .await;
        p.ping_check().await;
        p.close_check().await;
        p.compression_check().await;
    }
    let [pass, fail, warn, skip] = p.counts;
    let verdict = if fail > 0 { "FAIL" } else { "PASS" };
    println!("result: {verdict} ({pass} pass, {fail} fail, {warn} warn, {skip} skip)");
    // The last connection's FIN, then the file closed.
    p.ws = None;
    if let Some(r) = &p.recorder {
        r.finish(Duration::from_secs(5));
    }
    Ok(if fail > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn head_lines_keep_bare_lf() {
        let lines = head_lines(b"HTTP/1.1 101 S\r\nSec-WebSocket-Accept: abc=\n\r\n");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1], b"Sec-WebSocket-Accept: abc=\n");
        let lines = head_lines(b"HTTP/1.1 101 S\nUpgrade: websocket\n\n");
        assert_eq!(
            lines,
            vec![b"HTTP/1.1 101 S\nUpgrade: websocket\n\n".to_vec()]
        );
    }

    #[test]
    fn mismatches_are_explained() {
        let sent = Message::text("abcdef");
        assert_eq!(
            mismatch(&sent, &Message::binary(&b"abcdef"[..])),
            "sent as text, echoed as binary"
        );
        assert_eq!(
            mismatch(&sent, &Message::text("abc")),
            "sent 6 bytes of text, got 3 bytes of text back: cut short"
        );
        assert_eq!(
            mismatch(&sent, &Message::text("abXdef")),
            "sent 6 bytes of text, got 6 bytes of text back; they differ from byte 2 (sent 0x63, got 0x58)"
        );
        assert!(looks_like(&sent, &Message::text("abc")));
        assert!(!looks_like(&sent, &Message::text("tick:1")));
    }
}
