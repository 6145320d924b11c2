//! `ferrows serve`: every demo on one port. A plain GET of a path returns
//! its page, a WebSocket upgrade on the same path is the demo itself:
//!
//! | path       | page              | WebSocket                           |
//! |------------|-------------------|-------------------------------------|
//! | `/`        | landing page      | 404                                 |
//! | `/echo`    | echo console      | echo (websocket-echo-server limits) |
//! | `/chat`    | chat              | chat with a synced tick             |
//! | `/gamepad` | gamepad           | drive the robot (one driver)        |
//! | `/status`  | the chat room's status as JSON (`GET`)                  |
//! | other      | 404               | 404                                 |
//!
//! The gamepad's output (a log, JSON lines or GPIO) is opened before the
//! port: a bad setup fails before anyone can connect. At exit the robot
//! is stopped and its outputs put in the safe state.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use ferrows::{Config, Handshake};
use tokio::sync::watch;

use crate::chat::{Room, RoomArgs};
use crate::duration::{self, Bare};
use crate::net::{self, Stream, display_addr};
use crate::{CommonArgs, chat, echo, gamepad, heartbeat, pages};

/// The echo demo's write high-water mark: websocket-echo-server's default.
const ECHO_HIGH_WATER_MARK: usize = 16_384;

/// At most this many frames per message: `serve echo`'s default.
const ECHO_MAX_FRAGMENTS: usize = 256;

/// `ferrows serve` with no subcommand.
#[derive(Args, Debug)]
pub(crate) struct HubArgs {
    /// Address to listen on; `::` is dual-stack (IPv4 and IPv6)
    #[arg(long, value_name = "ADDR", default_value = "::")]
    bind: IpAddr,
    /// Port to listen on; 0 picks a free one
    #[arg(long, value_name = "PORT", default_value_t = 9001)]
    port: u16,
    #[command(flatten)]
    room: RoomArgs,
    /// Close with 1009 on larger messages, in the echo and chat demos (bytes;
    /// the gamepad's limit is its protocol's, 4096)
    #[arg(long, value_name = "BYTES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(1..=64 * 1024 * 1024))]
    max_message_size: u64,
    /// Ping every echo and chat client this often (a bare number is ms;
    /// also 30s, 1m); terminate those silent since the last ping
    #[arg(long, value_name = "DURATION", default_value = "30000",
          value_parser = duration::within(Bare::Millis, Duration::from_millis(1), Duration::from_secs(86_400)))]
    heartbeat_interval: Duration,
    #[command(flatten)]
    common: CommonArgs,
    // Last: the heading holds for every later argument.
    #[command(flatten, next_help_heading = "Gamepad demo (/gamepad)")]
    gamepad: gamepad::GamepadArgs,
}

/// What the routes share.
struct Demos {
    room: Room,
    beat: watch::Receiver<u64>,
    echo: echo::EchoOptions,
    gamepad: gamepad::Gamepad,
}

/// The gamepad demo's path.
const GAMEPAD: &str = "/gamepad";

/// Routes one request by path.
async fn route(
    hs: Handshake<Stream>,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    demos: Arc<Demos>,
) {
    let upgrade = hs.request().is_upgrade();
    let path = hs.request().path().to_owned();
    match path.as_str() {
        "/" if !upgrade => pages::respond_page(hs, peer, pages::landing()).await,
        "/" => {
            let text = "no WebSocket at /: connect to /echo, /chat or /gamepad";
            pages::not_found(hs, peer, text).await;
        }
        // Echo and chat learn of the shutdown through `beat`.
        "/echo" => echo::handle(hs, peer, demos.beat.clone(), demos.echo).await,
        "/chat" => {
            let (room, beat) = (demos.room.clone(), demos.beat.clone());
            chat::handle(hs, peer, room, beat).await;
        }
        chat::STATUS_PATH if !upgrade => chat::respond_status(hs, peer, &demos.room).await,
        GAMEPAD => gamepad::handle(hs, peer, shutdown, demos.gamepad.clone()).await,
        _ => {
            let text = "not found: the demos are /echo, /chat and /gamepad";
            pages::not_found(hs, peer, text).await;
        }
    }
}

/// `ferrows serve`: the landing page and every demo on one port.
pub(crate) async fn serve(args: HubArgs) -> anyhow::Result<ExitCode> {
    // Settings of every route; each demo adds its own when it accepts.
    let max_message = usize::try_from(args.max_message_size).unwrap_or(usize::MAX);
    let config = Config::default()
        .max_message_size(max_message)
        .max_frame_size(max_message);
    let opts = crate::net_options(&args.common, config)?;
    // The output first: a bad GPIO setup fails before anyone can connect.
    let (gamepad, mut running) = gamepad::start(&args.gamepad, opts.access.token.is_some())?;
    if let Some(exporter) = opts.exporter() {
        exporter.set_gamepad();
    }
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let listener = net::bind(args.bind, args.port)?;
    let local = listener.local_addr().context("local address")?;
    // The chat room before anyone can connect (with --redis: Redis
    // reached, the tick agreed).
    let room = Room::open(&args.room, local.port(), max_message, opts.exporter()).await?;
    tracing::info!("listening on {}", display_addr(local));
    let host = if args.bind.is_unspecified() {
        format!("localhost:{}", local.port())
    } else {
        display_addr(local)
    };
    tracing::info!(
        "pages: {scheme}://{host}/ (echo console: /echo, chat: /chat, gamepad: /gamepad)"
    );
    let (stop_tx, _) = watch::channel(false);
    let chat_room = room.clone();
    let demos = Arc::new(Demos {
        room,
        beat: heartbeat::heartbeat(args.heartbeat_interval, stop_tx.subscribe()),
        echo: echo::EchoOptions {
            high_water_mark: ECHO_HIGH_WATER_MARK,
            max_fragments: ECHO_MAX_FRAGMENTS,
        },
        gamepad,
    });
    let served = tokio::select! {
        served = net::run_with_shutdown(listener, opts, stop_tx, move |hs, peer, shutdown| {
            route(hs, peer, shutdown, demos.clone())
        }) => served,
        e = running.failed() => Err(e),
    };
    running.finish().await;
    // The other servers hear of the chat clients that left.
    chat_room.drain(chat::DRAIN_AT_EXIT).await;
    served?;
    Ok(ExitCode::SUCCESS)
}
