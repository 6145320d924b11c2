//! axum's own WebSocket (`axum::extract::ws`, tokio-tungstenite inside)
//! echo server for `scripts/bench-peers`, the fast way as for
//! tokio-tungstenite: split the socket and `forward` the data messages of
//! the reading half into the writing half (one flush per batch of ready
//! messages). The route is `/`, served by `axum::serve`.
//!
//! Usage: `axum-ws-echo PORT [MAX_MESSAGE_BYTES]` (listens on 127.0.0.1;
//! the limit applies to messages and frames; default 64 MiB).

use std::process::ExitCode;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::any;
use axum::serve::ListenerExt;
use futures_util::{StreamExt, TryStreamExt, future};

fn main() -> ExitCode {
    let Some((port, limit)) = args("axum-ws-echo") else {
        return ExitCode::from(2);
    };
    // `#[tokio::main]`: one worker per CPU the process may use.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("axum-ws-echo: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(port, limit)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("axum-ws-echo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(port: u16, limit: usize) -> std::io::Result<()> {
    let app = Router::new().route("/", any(move |ws: WebSocketUpgrade| handler(ws, limit)));
    // Every server in the comparison sets TCP_NODELAY (axum::serve does not).
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await?
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    eprintln!("axum-ws-echo listening on 127.0.0.1:{port}");
    axum::serve(listener, app).await
}

async fn handler(ws: WebSocketUpgrade, limit: usize) -> Response {
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(|socket: WebSocket| async move {
            let (write, read) = socket.split();
            let _ = read
                .try_filter(|msg| {
                    future::ready(matches!(msg, Message::Text(_) | Message::Binary(_)))
                })
                .forward(write)
                .await;
        })
}

/// `PORT [MAX_MESSAGE_BYTES]` from the command line.
fn args(name: &str) -> Option<(u16, usize)> {
    let mut args = std::env::args().skip(1);
    let port = args.next().and_then(|p| p.parse::<u16>().ok());
    let limit = match args.next() {
        None => Some(64 << 20),
        Some(m) => m.parse::<usize>().ok(),
    };
    match (port, limit) {
        (Some(port), Some(limit)) => Some((port, limit)),
        _ => {
            eprintln!("usage: {name} PORT [MAX_MESSAGE_BYTES]");
            None
        }
    }
}
