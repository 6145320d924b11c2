//! `ferrows`: ready-made WebSocket servers and tools.

mod bench;
mod chat;
mod cluster;
mod connect;
mod decode;
mod duration;
mod echo;
mod env;
mod gamepad;
mod heartbeat;
mod hub;
mod memtrim;
mod metrics;
mod net;
mod pages;
mod pcap;
mod probe;
mod proxy_args;
mod trace;

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use ferrows::{Config, DeflateConfig};

use crate::env::BadSetting;
use crate::net::NetOptions;

/// WebSocket servers, client and tools.
#[derive(Parser, Debug)]
#[command(name = "ferrows", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a ready-made server.
    ///
    /// With no subcommand: every demo on one port (`[::]:9001` by default), a
    /// landing page at /, and per demo a page and a WebSocket on the same
    /// path: /echo (echo console), /chat (chat with a synced tick), /gamepad
    /// (drive a robot from a browser gamepad; the gamepad options below).
    Serve(ServeArgs),
    /// Decode WebSocket frames from hex bytes: header fields, unmasked
    /// payload, close code, and what a receiver would object to.
    ///
    /// Per frame: FIN, RSV1-3, the opcode, MASK and the masking key, the
    /// payload length and its encoding (7, 16 or 64-bit), the payload
    /// unmasked as hex and as text, a close frame's code and reason.
    /// Malformed input is explained (a truncated header or payload, a
    /// reserved opcode, a control frame over 125 bytes...) with the close
    /// code a receiver would fail the connection with. Exit status: 0 for
    /// well-formed frames, 1 otherwise.
    Decode(decode::DecodeArgs),
    /// Compute the Sec-WebSocket-Accept a server must answer to a
    /// Sec-WebSocket-Key (RFC 6455 §4.2.2).
    AcceptKey(decode::AcceptKeyArgs),
    /// Check a server: handshake, echo, payload lengths, fragmentation,
    /// ping, close and compression, one line per check (exit status 1 if
    /// any fails).
    ///
    /// The handshake is checked on the raw response bytes: the status, CRLF
    /// line endings, Upgrade and Connection, the Sec-WebSocket-Accept value
    /// as sent (a trailing newline is named), stray bytes after the head.
    /// Then: text and binary echo, 125, 126 and 65536-byte payloads (the
    /// three length encodings), a fragmented message, ping/pong, the close
    /// handshake and the TCP close, and a permessage-deflate offer. A server
    /// that does not echo gets SKIP on the echo checks, not FAIL.
    Probe(probe::ProbeArgs),
    /// An interactive client: send lines from standard input, print what
    /// arrives (like wscat).
    ///
    /// Text arrives on stdout as is (control characters escaped), binary
    /// as hex; status lines go to stderr. Commands: `/ping [data]`,
    /// `/pong [data]`, `/close [code [reason]]`, `/binary HEX`, `/help`; a
    /// line starting with `//` sends the rest. End of input closes with 1000. On
    /// close it prints `closed: CODE REASON` and exits 0 for 1000 and
    /// 1001, 1 otherwise. On a terminal, lines can be edited and recalled
    /// (history).
    Connect(connect::ConnectArgs),
    /// Load a server and measure it: echo throughput and latency (closed
    /// or open loop), idle connections (handshakes/s, memory per
    /// connection), or broadcast delivery of a chat server.
    Bench(Box<bench::BenchArgs>),
}

/// `ferrows serve`: a server by name, or with none, all demos on one port.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct ServeArgs {
    #[command(subcommand)]
    server: Option<ServerKind>,
    #[command(flatten)]
    all: Box<hub::HubArgs>,
}

#[derive(Subcommand, Debug)]
enum ServerKind {
    /// Echo every message back unchanged (a drop-in for websocket-echo-server).
    Echo(EchoArgs),
    /// A chat with a synced tick: `msg:<text>` to everyone, `tick:<n>` from one timer (port 9002 by default).
    Chat(chat::ChatArgs),
    /// Drive a robot from a browser gamepad, safely: one driver at a time,
    /// a dead-man stop, outputs to a log, JSON lines or GPIO (port 9003 by default).
    Gamepad(Box<gamepad::ServeGamepadArgs>),
}

/// Settings every server shares.
#[derive(Args, Debug, Clone)]
struct CommonArgs {
    /// Do not accept permessage-deflate (accepted by default).
    #[arg(long)]
    no_compression: bool,
    /// Send messages shorter than this uncompressed (bytes; the suite needs 0).
    #[arg(long, value_name = "BYTES", default_value_t = 256)]
    compression_threshold: usize,
    /// Serve wss:// and https:// with this PEM certificate chain.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key for --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// With --tls-cert: do not offer HTTP/2 (ALPN h2, WebSockets over
    /// HTTP/2 by RFC 8441); serve HTTP/1.1 only.
    #[arg(long)]
    no_http2: bool,
    /// Accept WebSocket connections only from these Origins (repeatable); others get 403.
    #[arg(long = "origin", value_name = "ORIGIN")]
    origins: Vec<String>,
    /// Refuse WebSocket upgrades with 503 beyond this many connections
    /// (each counted from its upgrade to its end; pages are still served).
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// At most this many connections still in their handshake (TLS or
    /// request head not complete); past it the oldest is dropped.
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_pending_handshakes: u64,
    /// At most this many of those from one address (IPv6 by /64); more
    /// are closed at once.
    #[arg(long, value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_pending_per_ip: u64,
    /// Accept WebSocket upgrades only with this token, as ?token=T in the
    /// URL (browsers) or `Authorization: Bearer T` (programs); others get
    /// 401. Pages stay public. Never logged.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "FERROWS_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// At most this many WebSocket connections from one address (IPv6 by
    /// /64); more get 503 with Retry-After. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_connections_per_ip: u64,
    /// Connections one address may open per second (bursts of twice
    /// as many); more get 429 with Retry-After. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    handshake_rate_per_ip: u32,
    /// Apply the two per-address limits to loopback clients too (exempt
    /// by default: benchmarks, a reverse proxy on the same host).
    #[arg(long)]
    per_ip_limits_on_loopback: bool,
    /// Print every connection's opening handshake and frames (both
    /// directions, prefixed with the peer's address) to stderr.
    #[arg(long)]
    trace: bool,
    #[command(flatten)]
    pcap: pcap::PcapArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics, on a listener of
    /// its own (off by default; keep it on loopback, e.g. 127.0.0.1:9100).
    #[arg(long, value_name = "ADDR", env = "FERROWS_METRICS")]
    metrics: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
struct EchoArgs {
    /// Address to listen on [env: BIND_ADDRESS] [default: ::]
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,
    /// Port to listen on; 0 picks a free one [env: BIND_PORT] [default: 1337]
    #[arg(long, value_name = "PORT")]
    port: Option<String>,
    /// Ping every client this often; terminate those silent since the last ping (a bare number is ms; also 30s, 1m) [env: HEARTBEAT_INTERVAL] [default: 30000]
    #[arg(long, value_name = "DURATION")]
    heartbeat_interval: Option<String>,
    /// Stop reading from a client while this many bytes of its echoes are unsent [env: HIGH_WATER_MARK] [default: 16384]
    #[arg(long, value_name = "BYTES")]
    high_water_mark: Option<String>,
    /// Close with 1009 on larger messages [env: MAX_MESSAGE_SIZE] [default: 65536]
    #[arg(long, value_name = "BYTES")]
    max_message_size: Option<String>,
    /// Close with 1009 on messages in more frames [env: MAX_FRAGMENTS] [default: 256]
    #[arg(long, value_name = "N")]
    max_fragments: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Confined to one core (e.g. by `taskset`), the single-threaded
    // scheduler does the same work without the cross-thread machinery.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if matches!(cli.command, Command::Serve(_)) {
        // Servers give freed heap back after a reconnect storm.
        memtrim::start();
        // Every connection is a file: a soft limit of 1024 (a common
        // default) would refuse clients long before --max-connections.
        if let Some(limit) = bench::sys::raise_nofile_limit() {
            tracing::debug!(limit, "open file limit");
        }
    }
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            if let Some(bad) = e.downcast_ref::<BadSetting>() {
                eprintln!("error: {bad}");
                return ExitCode::from(2);
            }
            if let Some(refusal) = e.downcast_ref::<cluster::Refusal>() {
                eprintln!("error: {refusal}");
                return ExitCode::from(refusal.code);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(ServeArgs {
            server: Some(ServerKind::Echo(args)),
            ..
        }) => serve_echo(args).await,
        Command::Serve(ServeArgs {
            server: Some(ServerKind::Chat(args)),
            ..
        }) => chat::serve(args).await,
        Command::Serve(ServeArgs {
            server: Some(ServerKind::Gamepad(args)),
            ..
        }) => gamepad::serve(*args).await,
        Command::Serve(ServeArgs { server: None, all }) => hub::serve(*all).await,
        Command::Decode(args) => decode::decode_command(&args),
        Command::AcceptKey(args) => Ok(decode::accept_key_command(&args)),
        Command::Probe(args) => probe::probe_command(args).await,
        Command::Connect(args) => connect::connect_command(args).await,
        Command::Bench(args) => bench::bench_command(*args).await,
    }
}

fn net_options(common: &CommonArgs, config: Config) -> anyhow::Result<NetOptions> {
    let mut config = config;
    if !common.no_compression {
        let mut deflate = DeflateConfig::default();
        deflate.threshold = common.compression_threshold;
        config = config.deflate(deflate);
    }
    let tls = match (&common.tls_cert, &common.tls_key) {
        (Some(cert), Some(key)) => Some(ferrows::tls::server_config_from_files(cert, key)?),
        _ => None,
    };
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let metrics = common
        .metrics
        .map(|addr| (addr, std::sync::Arc::new(metrics::Exporter::default())));
    if let Some((_, exporter)) = &metrics {
        config = config.metrics(exporter.lib.clone());
    }
    Ok(NetOptions {
        config,
        metrics,
        tls,
        max_connections: to_usize(common.max_connections),
        max_pending_handshakes: to_usize(common.max_pending_handshakes),
        max_pending_per_ip: to_usize(common.max_pending_per_ip),
        access: net::AccessOptions {
            token: common.token.clone().filter(|t| !t.is_empty()),
            max_connections_per_ip: to_usize(common.max_connections_per_ip),
            handshake_rate_per_ip: common.handshake_rate_per_ip,
            on_loopback: common.per_ip_limits_on_loopback,
        },
        origins: common.origins.clone(),
        http2: !common.no_http2,
        trace: common.trace,
        pcap: common.pcap.recorder(false)?,
    })
}

async fn serve_echo(args: EchoArgs) -> anyhow::Result<ExitCode> {
    let bind_raw = env::raw(args.bind.as_deref(), "bind", "BIND_ADDRESS");
    let bind: IpAddr = match bind_raw {
        Some(r) if !r.value.trim().is_empty() => {
            r.value.trim().parse().map_err(|_| BadSetting {
                source: r.source,
                value: r.value,
                why: "not an IP address",
            })?
        }
        _ => IpAddr::from([0u16; 8]),
    };
    let port = env::port(env::raw(args.port.as_deref(), "port", "BIND_PORT"), 1337)?;
    let heartbeat = env::duration(
        env::raw(
            args.heartbeat_interval.as_deref(),
            "heartbeat-interval",
            "HEARTBEAT_INTERVAL",
        ),
        Duration::from_secs(30),
    )?;
    let hwm = env::number(
        env::raw(
            args.high_water_mark.as_deref(),
            "high-water-mark",
            "HIGH_WATER_MARK",
        ),
        16_384,
    )?;
    let max_message = env::number(
        env::raw(
            args.max_message_size.as_deref(),
            "max-message-size",
            "MAX_MESSAGE_SIZE",
        ),
        65_536,
    )?;
    let max_fragments = env::number(
        env::raw(
            args.max_fragments.as_deref(),
            "max-fragments",
            "MAX_FRAGMENTS",
        ),
        256,
    )?;
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    // The echo-specific limits (fragments, high-water mark) travel in
    // EchoOptions, as they do for the /echo route of `ferrows serve`.
    let config = Config::default()
        .max_message_size(to_usize(max_message))
        .max_frame_size(to_usize(max_message));
    let opts = net_options(&args.common, config)?;
    let listener = net::bind(bind, port)?;
    let local = listener.local_addr().context("local address")?;
    tracing::info!("listening on {}", net::display_addr(local));
    // The heartbeat channel also carries the shutdown to every connection.
    let (stop_tx, _) = tokio::sync::watch::channel(false);
    let beat = heartbeat::heartbeat(heartbeat, stop_tx.subscribe());
    let echo_opts = echo::EchoOptions {
        high_water_mark: to_usize(hwm),
        max_fragments: to_usize(max_fragments),
    };
    net::run_with_shutdown(listener, opts, stop_tx, move |hs, peer, _shutdown| {
        echo::handle(hs, peer, beat.clone(), echo_opts)
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
