//! `ferrows serve`: every demo on one port. A plain GET of a path returns
//! its page, a WebSocket upgrade on the same path is the demo itself:
//!
//! | path       | page              | WebSocket                           |
//! |------------|-------------------|-------------------------------------|
//! | `/`        | landing page      | 404                                 |
//! | `/echo`    | echo console      | echo (websocket-echo-server limits) |
//! | `/chat`    | chat              | chat with a synced tick             |
//! | `/gamepad` | 404 (reserved)    | 404 (reserved)                      |
//! | other      | 404               | 404                                 |

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use ferrows::{Config, Handshake};
use tokio::sync::watch;

use crate::chat::{Room, RoomArgs};
use crate::net::{self, Stream, display_addr};
use crate::{CommonArgs, chat, echo, pages};

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
    /// Close with 1009 on larger messages, in every demo (bytes)
    #[arg(long, value_name = "BYTES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(1..=64 * 1024 * 1024))]
    max_message_size: u64,
    /// Ping every client this often (ms); terminate those silent since the last ping
    #[arg(long, value_name = "MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    heartbeat_interval: u64,
    #[command(flatten)]
    common: CommonArgs,
}

/// What the routes share.
struct Demos {
    room: Room,
    beat: watch::Receiver<u64>,
    echo: echo::EchoOptions,
}

/// The reserved gamepad path: a later release serves the gamepad demo there.
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
            pages::not_found(hs, peer, "no WebSocket at /: connect to /echo or /chat").await;
        }
        "/echo" => {
            let beat = demos.beat.clone();
            echo::handle(hs, peer, shutdown, beat, demos.echo, Some(pages::echo())).await;
        }
        "/chat" => {
            let (room, beat) = (demos.room.clone(), demos.beat.clone());
            chat::handle(hs, peer, shutdown, room, beat).await;
        }
        GAMEPAD => {
            pages::not_found(hs, peer, "the gamepad demo is not available yet").await;
        }
        _ => pages::not_found(hs, peer, "not found: the demos are /echo and /chat").await,
    }
}

/// `ferrows serve`: the landing page and every demo on one port.
pub(crate) async fn serve(args: HubArgs) -> anyhow::Result<ExitCode> {
    let max_message = usize::try_from(args.max_message_size).unwrap_or(usize::MAX);
    let config = Config::default()
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .max_fragments(ECHO_MAX_FRAGMENTS)
        .write_high_water_mark(ECHO_HIGH_WATER_MARK);
    let opts = crate::net_options(&args.common, config)?;
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let listener = net::bind(args.bind, args.port)?;
    let local = listener.local_addr().context("local address")?;
    tracing::info!("listening on {}", display_addr(local));
    let host = if args.bind.is_unspecified() {
        format!("localhost:{}", local.port())
    } else {
        display_addr(local)
    };
    tracing::info!("pages: {scheme}://{host}/ (echo console: /echo, chat: /chat)");
    let demos = Arc::new(Demos {
        room: Room::from_args(&args.room),
        beat: echo::heartbeat(Duration::from_millis(args.heartbeat_interval)),
        echo: echo::EchoOptions {
            high_water_mark: ECHO_HIGH_WATER_MARK,
        },
    });
    net::run(listener, opts, move |hs, peer, shutdown| {
        route(hs, peer, shutdown, demos.clone())
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
