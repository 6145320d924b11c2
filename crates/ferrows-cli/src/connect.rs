//! `ferrows connect`: an interactive client, like wscat.
//!
//! Standard input is read on a dedicated thread (rustyline on a terminal,
//! plain lines in a pipe) that feeds a channel, so nothing blocks the
//! runtime. The connection is split: one task prints what arrives, the main
//! task sends lines, commands and pings, and closes.

use std::collections::VecDeque;
use std::io::{self, BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use ferrows::tls::rustls::ClientConfig;
use ferrows::{
    ClientBuilder, CloseCode, CloseFrame, Config, MaybeTlsStream, Message, Role, WebSocket,
    WsReader, WsUrl,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::net::Transport;
use crate::pcap::{Capture, Recorder};
use crate::proxy_args::ProxyArgs;
use crate::trace::{Traced, Tracer, escape_controls, hex, millis, quoted};

/// Arguments of `ferrows connect`.
#[derive(Args, Debug)]
pub(crate) struct ConnectArgs {
    /// The server: `ws://host[:port][/path]` or `wss://...` (http:// and
    /// https:// are taken as ws:// and wss://).
    #[arg(value_name = "URL")]
    url: String,
    /// Open the WebSocket over HTTP/2 (RFC 8441 Extended CONNECT; TLS with
    /// ALPN h2 for wss://, HTTP/2 with prior knowledge for ws://). Fails
    /// clearly if the server does not offer it.
    #[arg(long)]
    http2: bool,
    /// Send each line of input as a binary message (the line's bytes, without
    /// the line ending) instead of text.
    #[arg(long)]
    binary: bool,
    /// Pretty-print received text messages that are JSON.
    #[arg(long)]
    json: bool,
    /// Send MSG (repeatable, in order; slash commands work too), wait
    /// --wait seconds for replies, then close. Standard input is not read.
    #[arg(short = 'x', long = "execute", value_name = "MSG")]
    execute: Vec<String>,
    /// With -x: how long to wait for replies before closing, in seconds.
    #[arg(short = 'w', long, value_name = "SECS", default_value = "1", value_parser = parse_secs)]
    wait: Duration,
    /// Add a header to the opening request (repeatable), e.g.
    /// -H 'Authorization: Bearer sesame' or -H 'Origin: http://localhost'.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Offer a subprotocol (repeatable, in order of preference).
    #[arg(short = 's', long = "subprotocol", value_name = "PROTOCOL")]
    subprotocols: Vec<String>,
    /// Send a ping every SECS seconds and warn when the previous one got no
    /// pong (keeps idle connections open through proxies).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    ping_interval: Option<Duration>,
    /// Offer permessage-deflate compression.
    #[arg(long)]
    compress: bool,
    /// For wss://: also trust the CA certificates in this PEM file (for
    /// servers with a private or self-signed certificate).
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// For wss://: accept any certificate. No protection against
    /// interception: for testing against your own servers only.
    #[arg(short = 'k', long, conflicts_with = "ca")]
    insecure: bool,
    /// Print the opening handshake and every frame, both directions, to
    /// stderr (time, direction, FIN, RSV, opcode, MASK, length, key, payload).
    #[arg(long)]
    trace: bool,
    /// Send every line as it is, even one starting with `/` (no slash
    /// commands).
    #[arg(long)]
    no_commands: bool,
    #[command(flatten)]
    pcap: crate::pcap::PcapArgs,
    #[command(flatten)]
    proxy: ProxyArgs,
}

/// A duration in the one grammar ([`crate::duration`]), a bare number
/// being seconds: `1`, `0.25`, `500ms`, `1m`.
pub(crate) fn parse_secs(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s, crate::duration::Bare::Secs)
}

/// `Name: value`, for `-H`.
pub(crate) fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: a header is 'Name: value'"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("{s:?}: the header name is empty"));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// The TLS settings for `--ca` and `--insecure`; `None`: the Mozilla roots.
pub(crate) fn tls_config(
    ca: Option<&std::path::Path>,
    insecure: bool,
) -> anyhow::Result<Option<Arc<ClientConfig>>> {
    if insecure {
        return Ok(Some(ferrows::tls::insecure_client_config()?));
    }
    match ca {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Ok(Some(ferrows::tls::client_config_with_ca(&pem)?))
        }
        None => Ok(None),
    }
}

/// Opens TCP (through the proxy `proxy` says, if any), then TLS for
/// wss://, naming the fix for a certificate the default roots do not trust.
pub(crate) async fn open_stream(
    url: &WsUrl,
    tls: Option<Arc<ClientConfig>>,
    proxy: &ProxyArgs,
) -> anyhow::Result<MaybeTlsStream<TcpStream>> {
    let hint = if tls.is_none() {
        " (a private or self-signed certificate needs --ca FILE, or --insecure)"
    } else {
        ""
    };
    let mut builder = proxy.apply(ClientBuilder::new(url.to_string()))?;
    if let Some(config) = tls {
        builder = builder.tls_config(config);
    }
    match builder.open_stream().await {
        Ok(stream) => Ok(stream),
        Err(ferrows::Error::Io(e)) => {
            Err(anyhow::Error::new(e).context(format!("cannot connect to {}", url.host_header())))
        }
        Err(e @ ferrows::Error::Tls(_)) => {
            Err(anyhow::Error::new(e).context(format!("TLS handshake{hint}")))
        }
        Err(e) => Err(e.into()),
    }
}

type Ws = WebSocket<Traced<Capture<Transport>>>;

/// Connects as the flags say; the handshake is traced if asked.
async fn open(args: &ConnectArgs, recorder: Option<&Recorder>) -> anyhow::Result<Ws> {
    let url = WsUrl::parse(&args.url)?;
    let tls = tls_config(args.ca.as_deref(), args.insecure)?;
    args.proxy.validate()?;
    let config = Config::default().compression(args.compress);
    let mut builder = ClientBuilder::new(args.url.clone()).config(config.clone());
    for (name, value) in &args.headers {
        builder = builder.header(name.clone(), value.clone());
    }
    for p in &args.subprotocols {
        builder = builder.protocol(p.clone());
    }
    let work = async {
        let tracer = args.trace.then(|| Tracer::new(Role::Client, ""));
        if args.http2 {
            if let Some(config) = tls {
                builder = builder.tls_config(config);
            }
            let client = ferrows::h2::H2Client::connect(&builder)
                .await
                .with_context(|| format!("HTTP/2 connection to {}", url.host_header()))?;
            let (stream, negotiated, _response) = client.open_stream(builder).await?;
            // --pcap records the WebSocket's bytes as a flow of their own.
            let unspecified = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
            let stream = Capture::wrap(Transport::H2(stream), recorder, unspecified, unspecified);
            let ws = WebSocket::from_upgraded(
                Traced::new(stream, tracer),
                Role::Client,
                &config,
                negotiated,
                bytes::BytesMut::new(),
            );
            return anyhow::Ok(ws);
        }
        let stream = open_stream(&url, tls, &args.proxy).await?;
        let tcp = stream.get_ref();
        let unspecified = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
        let peer = tcp.peer_addr().unwrap_or(unspecified);
        let local = tcp.local_addr().unwrap_or(unspecified);
        let stream = Capture::wrap(Transport::Tcp(stream), recorder, peer, local);
        let (ws, _response) = builder.connect_on(Traced::new(stream, tracer)).await?;
        anyhow::Ok(ws)
    };
    tokio::time::timeout(config.handshake_timeout, work)
        .await
        .map_err(|_| anyhow::anyhow!("no connection within {:?}", config.handshake_timeout))?
}

/// Where output goes: stdout for messages, stderr for the rest; through
/// rustyline's printer while it edits a line on the terminal.
#[derive(Clone)]
struct Console {
    printer: Option<Arc<Mutex<Box<dyn rustyline::ExternalPrinter + Send>>>>,
    /// Standard output is gone (a closed pipe): stop.
    stdout_closed: Arc<AtomicBool>,
}

impl Console {
    /// A received message (one or more lines).
    fn message(&self, text: &str) {
        match &self.printer {
            Some(p) => {
                let mut lines = String::new();
                for line in text.split('\n') {
                    lines.push_str("< ");
                    lines.push_str(line);
                    lines.push('\n');
                }
                if let Ok(mut p) = p.lock() {
                    let _ = p.print(lines);
                }
            }
            None => {
                let mut out = io::stdout().lock();
                if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
                    self.stdout_closed.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// A status line.
    fn status(&self, text: &str) {
        match &self.printer {
            Some(p) => {
                if let Ok(mut p) = p.lock() {
                    let _ = p.print(format!("{text}\n"));
                }
            }
            None => eprintln!("{text}"),
        }
    }
}

/// What the user asked for with one line.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Send(Message),
    Close(CloseCode, String),
    Help,
    Error(String),
}

const HELP: &str = "\
commands (a line starting with // sends the rest, starting with /):
  /ping [data]            send a ping; the pong is shown with its round-trip time
  /pong [data]            send an unsolicited pong
  /close [code [reason]]  close the connection (default 1000)
  /binary HEX             send a binary message, e.g. /binary 48 65 6c 6c 6f
  /help                   this list
anything else is sent as a message; end of input (Ctrl-D) closes with 1000";

/// Turns a line into an action.
fn parse_line(line: &[u8], binary: bool, commands: bool) -> Action {
    if commands && line.first() == Some(&b'/') {
        if line.get(1) == Some(&b'/') {
            return data(line.get(1..).unwrap_or_default(), binary);
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return Action::Error("a command must be valid UTF-8".to_owned());
        };
        let (cmd, rest) = text.split_once(' ').unwrap_or((text, ""));
        return match cmd {
            "/ping" | "/pong" => {
                if rest.len() > 125 {
                    return Action::Error(format!(
                        "a {} carries at most 125 bytes, not {}",
                        cmd.trim_start_matches('/'),
                        rest.len()
                    ));
                }
                let payload = Bytes::copy_from_slice(rest.as_bytes());
                Action::Send(if cmd == "/ping" {
                    Message::Ping(payload)
                } else {
                    Message::Pong(payload)
                })
            }
            "/close" => {
                let rest = rest.trim_start();
                let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                let code = if code.is_empty() {
                    CloseCode::NORMAL
                } else {
                    match code.parse::<u16>() {
                        Ok(c) if CloseCode(c).is_valid_on_wire() => CloseCode(c),
                        _ => {
                            return Action::Error(format!(
                                "{} may not be sent: use 1000-1003, 1007-1014 or 3000-4999",
                                quoted(code.as_bytes())
                            ));
                        }
                    }
                };
                if reason.len() > ferrows::proto::close::MAX_REASON_LEN {
                    return Action::Error(format!(
                        "a close reason has at most {} bytes, not {}",
                        ferrows::proto::close::MAX_REASON_LEN,
                        reason.len()
                    ));
                }
                Action::Close(code, reason.to_owned())
            }
            "/binary" => match crate::decode::parse_hex(&[("/binary".to_owned(), rest.to_owned())])
            {
                Ok(bytes) => Action::Send(Message::Binary(bytes.into())),
                Err(e) => Action::Error(format!("invalid hex: {e}")),
            },
            "/help" => Action::Help,
            other => Action::Error(format!(
                "unknown command {}: /help lists them; start a line with // to send one beginning with /",
                quoted(other.as_bytes())
            )),
        };
    }
    data(line, binary)
}

fn data(line: &[u8], binary: bool) -> Action {
    if binary {
        return Action::Send(Message::Binary(Bytes::copy_from_slice(line)));
    }
    match std::str::from_utf8(line) {
        Ok(text) => Action::Send(Message::text(text)),
        Err(_) => Action::Error(
            "the line is not valid UTF-8, so it cannot be a text message (--binary sends bytes)"
                .to_owned(),
        ),
    }
}

/// A line of input, or its end.
enum Input {
    Line(Vec<u8>),
    /// Ctrl-C at the prompt.
    Interrupted,
}

/// Reads standard input on its own thread. On a terminal, with line
/// editing and history (rustyline); returns its printer.
fn spawn_input(
    tx: mpsc::Sender<Input>,
    edit: bool,
) -> Option<Box<dyn rustyline::ExternalPrinter + Send>> {
    let (printer_tx, printer_rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            if edit {
                if let Ok(mut rl) = rustyline::DefaultEditor::new() {
                    let printer = rl
                        .create_external_printer()
                        .ok()
                        .map(|p| Box::new(p) as Box<dyn rustyline::ExternalPrinter + Send>);
                    let _ = printer_tx.send(printer);
                    loop {
                        let input = match rl.readline("> ") {
                            Ok(line) => {
                                let _ = rl.add_history_entry(line.as_str());
                                Input::Line(line.into_bytes())
                            }
                            Err(rustyline::error::ReadlineError::Interrupted) => Input::Interrupted,
                            Err(_) => return,
                        };
                        if tx.blocking_send(input).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = printer_tx.send(None);
            let mut stdin = io::stdin().lock();
            let mut line = Vec::new();
            loop {
                line.clear();
                match stdin.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                if tx.blocking_send(Input::Line(line.clone())).is_err() {
                    return;
                }
            }
        });
    if spawned.is_err() {
        return None;
    }
    printer_rx.recv().ok().flatten()
}

/// How the receiving side ended.
enum ReadEnd {
    /// The peer's close frame (or none, 1005).
    Closed(Option<CloseFrame>),
    Failed(ferrows::Error),
    /// Standard output was closed.
    OutputClosed,
}

/// Pings sent by `/ping` or the interval, oldest first: payload, time,
/// whether the user asked (then its pong is shown).
type Pings = Arc<Mutex<VecDeque<(Bytes, Instant, bool)>>>;

async fn read_loop(
    mut reader: WsReader<Traced<Capture<Transport>>>,
    console: Console,
    json: bool,
    pings: Pings,
) -> ReadEnd {
    let mut close = None;
    while let Some(item) = reader.recv().await {
        match item {
            Ok(Message::Text(t)) => console.message(&show_text(t.as_str(), json)),
            Ok(Message::Binary(b)) => console.message(&format!("(binary) {}", hex(&b))),
            Ok(Message::Ping(p)) => {
                console.status(&format!("ping received {}, pong sent", quoted(&p)));
            }
            Ok(Message::Pong(p)) => {
                let found = pings.lock().ok().and_then(|mut q| {
                    let i = q.iter().position(|(sent, _, _)| *sent == p)?;
                    let (_, at, asked) = q.remove(i)?;
                    // Older pings will get no pong of their own.
                    q.drain(..i);
                    Some((at, asked))
                });
                match found {
                    Some((at, true)) => console.status(&format!(
                        "pong {} after {}",
                        quoted(&p),
                        millis(at.elapsed())
                    )),
                    Some((_, false)) => {}
                    None => console.status(&format!("pong received {} (unsolicited)", quoted(&p))),
                }
            }
            Ok(Message::Close(frame)) => close = Some(frame),
            Ok(Message::Fragment(_)) => {}
            Err(e) => return ReadEnd::Failed(e),
        }
        if console.stdout_closed.load(Ordering::Relaxed) {
            return ReadEnd::OutputClosed;
        }
    }
    match close {
        Some(frame) => ReadEnd::Closed(frame),
        None => ReadEnd::Failed(ferrows::Error::AbnormalClosure),
    }
}

/// A received text for the terminal: control characters escaped, JSON
/// pretty-printed if asked.
fn show_text(text: &str, json: bool) -> String {
    if json && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
        let pretty = pretty_json(text);
        return pretty
            .lines()
            .map(|l| escape_controls(l).into_owned())
            .collect::<Vec<_>>()
            .join("\n");
    }
    escape_controls(text).into_owned()
}

/// Re-indents valid JSON, keeping keys in order and numbers as written.
fn pretty_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                // Skip whitespace to see whether the container is empty.
                while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                    chars.next();
                }
                if matches!(chars.peek(), Some('}' | ']')) {
                    if let Some(close) = chars.next() {
                        out.push(close);
                    }
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// Saves the terminal settings and puts them back on drop, in case the
/// process ends while rustyline has the terminal in raw mode.
struct TerminalGuard {
    #[cfg(unix)]
    saved: Option<nix::sys::termios::Termios>,
}

impl TerminalGuard {
    fn new() -> TerminalGuard {
        TerminalGuard {
            #[cfg(unix)]
            saved: nix::sys::termios::tcgetattr(io::stdin()).ok(),
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(saved) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

/// Ctrl-C: SIGINT, caught from creation on (so none is missed between
/// connecting and the first wait).
struct Interrupt {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Interrupt {
    fn new() -> Interrupt {
        Interrupt {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok(),
        }
    }

    /// Resolves at the next Ctrl-C.
    async fn recv(&mut self) {
        #[cfg(unix)]
        match self.signal.as_mut() {
            Some(signal) => {
                if signal.recv().await.is_none() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// `ferrows connect`.
pub(crate) async fn connect_command(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let recorder = args.pcap.recorder(true)?;
    let result = connect_session(args, recorder.as_ref()).await;
    if let Some(r) = recorder {
        r.finish(Duration::from_secs(5));
    }
    result
}

async fn connect_session(
    args: ConnectArgs,
    recorder: Option<&Recorder>,
) -> anyhow::Result<ExitCode> {
    let ws = open(&args, recorder).await?;
    // The URL with its credentials (`?token=`) redacted.
    let shown = ferrows::listener::redact_target(&args.url);
    let mut info = format!("connected to {}", escape_controls(&shown));
    if let Some(p) = ws.protocol() {
        info.push_str(&format!(", subprotocol {}", quoted(p.as_bytes())));
    }
    if let Some(d) = ws.compression() {
        info.push_str(&format!(", {}", d.to_header_value()));
    }

    // Catch Ctrl-C (SIGINT) from now on, before anything is printed.
    let mut interrupt = Interrupt::new();
    let interactive = args.execute.is_empty();
    let edit = interactive && io::stdin().is_terminal() && io::stdout().is_terminal();
    let _terminal = edit.then(TerminalGuard::new);
    let (input_tx, mut input_rx) = mpsc::channel::<Input>(16);
    let printer = if interactive {
        spawn_input(input_tx, edit)
    } else {
        drop(input_tx);
        None
    };
    let console = Console {
        printer: printer.map(|p| Arc::new(Mutex::new(p))),
        stdout_closed: Arc::new(AtomicBool::new(false)),
    };
    if edit {
        info.push_str(" (/help lists the commands, Ctrl-D closes)");
    }
    console.status(&info);

    let pings: Pings = Arc::default();
    let (reader, mut writer) = ws.split();
    let mut reading = tokio::spawn(read_loop(reader, console.clone(), args.json, pings.clone()));

    let commands = !args.no_commands;
    let mut ticker = args.ping_interval.filter(|d| !d.is_zero()).map(|d| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut ping_seq = 0u64;
    // What to close with once the loop ends; `None`: the peer closed first.
    let mut close: Option<(CloseCode, String)> = None;
    let mut to_send = args.execute.iter();
    let wait = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(wait);
    let mut waiting = false;

    let end = loop {
        // -x: send the next message; after the last, wait for replies.
        let line = if interactive {
            None
        } else if let Some(msg) = to_send.next() {
            Some(msg.as_bytes().to_vec())
        } else {
            if !waiting {
                waiting = true;
                wait.as_mut().reset(tokio::time::Instant::now() + args.wait);
            }
            None
        };
        // Interval pings are tracked when sent; those the user asked for
        // below.
        let mut tick = false;
        let action = match line {
            Some(line) => parse_line(&line, args.binary, commands),
            None => tokio::select! {
                end = &mut reading => break Some(end),
                input = input_rx.recv(), if interactive => match input {
                    Some(Input::Line(line)) => parse_line(&line, args.binary, commands),
                    Some(Input::Interrupted) | None => Action::Close(CloseCode::NORMAL, String::new()),
                },
                () = &mut wait, if waiting => Action::Close(CloseCode::NORMAL, String::new()),
                () = interrupt.recv() => Action::Close(CloseCode::NORMAL, String::new()),
                _ = async {
                    match ticker.as_mut() {
                        Some(t) => t.tick().await,
                        None => std::future::pending().await,
                    }
                } => {
                    ping_seq += 1;
                    tick = true;
                    let payload = Bytes::from(format!("ferrows-{ping_seq}"));
                    if let Ok(mut q) = pings.lock() {
                        if let Some((p, _, _)) = q.iter().find(|(_, _, asked)| !asked) {
                            console.status(&format!("no pong yet for ping {}", quoted(p)));
                        }
                        q.retain(|(_, _, asked)| *asked);
                        q.push_back((payload.clone(), Instant::now(), false));
                    }
                    Action::Send(Message::Ping(payload))
                }
            },
        };
        match action {
            Action::Send(msg) => {
                if let (Message::Ping(p), false) = (&msg, tick) {
                    if let Ok(mut q) = pings.lock() {
                        q.push_back((p.clone(), Instant::now(), true));
                    }
                }
                // A peer that stops reading blocks the send: stay
                // interruptible, and notice when the connection ends.
                let sent = tokio::select! {
                    sent = writer.send(msg) => sent,
                    end = &mut reading => break Some(end),
                    () = interrupt.recv() => {
                        close = Some((CloseCode::NORMAL, String::new()));
                        break None;
                    }
                };
                if let Err(e) = sent {
                    console.status(&format!("cannot send: {e}"));
                    break None;
                }
            }
            Action::Close(code, reason) => {
                close = Some((code, reason));
                break None;
            }
            Action::Help => console.status(HELP),
            Action::Error(e) => console.status(&format!("error: {e}")),
        }
    };

    let end = match end {
        Some(Ok(ReadEnd::OutputClosed)) => {
            // Nobody reads our output any more: close politely and stop.
            let _ =
                tokio::time::timeout(Duration::from_secs(1), writer.close(CloseCode::NORMAL, ""))
                    .await;
            return Ok(ExitCode::SUCCESS);
        }
        Some(end) => end,
        None => {
            let grace = Config::default().close_timeout + Duration::from_secs(1);
            if let Some((code, reason)) = &close {
                match tokio::time::timeout(grace, writer.close(*code, reason)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "sending the close frame failed"),
                    Err(_) => tracing::debug!("the peer does not read: the close frame is stuck"),
                }
            }
            // The reader sees the peer's close, then the end; the library
            // bounds that by its close timeout.
            match tokio::time::timeout(grace, &mut reading).await {
                Ok(end) => end,
                Err(_) => {
                    reading.abort();
                    Ok(ReadEnd::Failed(ferrows::Error::CloseTimeout))
                }
            }
        }
    };
    let end = end.unwrap_or(ReadEnd::Failed(ferrows::Error::AbnormalClosure));
    Ok(report_end(&console, end))
}

/// Prints `closed: CODE REASON`; exit status 0 for 1000 and 1001.
fn report_end(console: &Console, end: ReadEnd) -> ExitCode {
    let (code, text) = match end {
        ReadEnd::OutputClosed => return ExitCode::SUCCESS,
        ReadEnd::Closed(Some(frame)) => {
            let text = if frame.reason().is_empty() {
                format!("closed: {}", frame.code)
            } else {
                format!(
                    "closed: {} {}",
                    frame.code.0,
                    escape_controls(frame.reason())
                )
            };
            (frame.code, text)
        }
        ReadEnd::Closed(None) => (
            CloseCode::NO_STATUS,
            format!(
                "closed: {} (the close frame had no code)",
                CloseCode::NO_STATUS
            ),
        ),
        ReadEnd::Failed(e) => {
            let code = e.close_code().unwrap_or(CloseCode::ABNORMAL);
            (code, format!("closed: {} {e}", code.0))
        }
    };
    console.status(&text);
    if matches!(code, CloseCode::NORMAL | CloseCode::GOING_AWAY) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lines_and_commands() {
        assert_eq!(
            parse_line(b"hello", false, true),
            Action::Send(Message::text("hello"))
        );
        assert_eq!(
            parse_line(b"hello", true, true),
            Action::Send(Message::binary(&b"hello"[..]))
        );
        assert_eq!(
            parse_line(b"//etc/passwd", false, true),
            Action::Send(Message::text("/etc/passwd"))
        );
        assert_eq!(
            parse_line(b"/etc/passwd", false, false),
            Action::Send(Message::text("/etc/passwd"))
        );
        assert_eq!(
            parse_line(b"/ping abc", false, true),
            Action::Send(Message::ping(&b"abc"[..]))
        );
        assert_eq!(
            parse_line(b"/ping", false, true),
            Action::Send(Message::ping(Bytes::new()))
        );
        assert_eq!(
            parse_line(b"/close 4000 see you", false, true),
            Action::Close(CloseCode(4000), "see you".into())
        );
        assert_eq!(
            parse_line(b"/close", false, true),
            Action::Close(CloseCode::NORMAL, String::new())
        );
        assert!(
            matches!(parse_line(b"/close 1005", false, true), Action::Error(e) if e.contains("may not be sent"))
        );
        assert_eq!(
            parse_line(b"/binary 48 65 0x6c", false, true),
            Action::Send(Message::binary(&b"Hel"[..]))
        );
        assert!(matches!(
            parse_line(b"/binary 4", false, true),
            Action::Send(_)
        ));
        assert!(
            matches!(parse_line(b"/binary zz", false, true), Action::Error(e) if e.starts_with("invalid hex"))
        );
        assert!(
            matches!(parse_line(b"/nope", false, true), Action::Error(e) if e.contains("unknown command"))
        );
        assert!(matches!(parse_line(b"\xff", false, true), Action::Error(_)));
        assert_eq!(parse_line(b"/help", false, true), Action::Help);
        let long = format!("/ping {}", "x".repeat(126));
        assert!(matches!(
            parse_line(long.as_bytes(), false, true),
            Action::Error(_)
        ));
    }

    #[test]
    fn json_is_reindented_in_order() {
        assert_eq!(
            show_text(r#"{"b":1,"a":[1.50,{}, []],"s":"x,{\"y\":[]}"}"#, true),
            "{\n  \"b\": 1,\n  \"a\": [\n    1.50,\n    {},\n    []\n  ],\n  \"s\": \"x,{\\\"y\\\":[]}\"\n}"
        );
        assert_eq!(show_text("{not json", true), "{not json");
        assert_eq!(show_text("a\u{1b}[2Jb", false), "a\\u{1b}[2Jb");
        // Control characters inside JSON strings stay escaped.
        assert_eq!(
            show_text("[\"\\u001b\", \"\u{9b}\"]", true),
            "[\n  \"\\u001b\",\n  \"\\u{9b}\"\n]"
        );
    }

    #[test]
    fn seconds_and_headers() {
        assert_eq!(parse_secs("0.25").unwrap(), Duration::from_millis(250));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("nan").is_err());
        assert_eq!(
            parse_header("Origin:  http://x ").unwrap(),
            ("Origin".to_owned(), "http://x".to_owned())
        );
        assert!(parse_header("no colon").is_err());
    }
}
