//! ferrows inside an axum app (`ferrows::axum::WebSocketUpgrade`) echo
//! server for `scripts/bench-peers`: the route is `/`, served by
//! `axum::serve`; the echo loop is that of `ferrows serve echo`: queue
//! every data message a read brought in (`queue` + `try_recv`) and let
//! `recv` write them in one go before it waits again. Compression off, as
//! for `ferrows serve echo --no-compression` in the same rows.
//!
//! Usage: `axum-ferrows-echo PORT [MAX_MESSAGE_BYTES]` (listens on
//! 127.0.0.1; the limit applies to messages and frames, and is the write
//! high-water mark; default 64 MiB).

use std::process::ExitCode;

use axum::Router;
use axum::response::Response;
use axum::routing::any;
use axum::serve::ListenerExt;
use ferrows::axum::{WebSocket, WebSocketUpgrade};
use ferrows::{Config, Message};

fn main() -> ExitCode {
    let Some((port, limit)) = args() else {
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("axum-ferrows-echo: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(port, limit)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("axum-ferrows-echo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(port: u16, limit: usize) -> std::io::Result<()> {
    let mut config = Config::default()
        .max_message_size(limit)
        .write_high_water_mark(limit);
    config.limits.max_frame_size = limit;
    let app = Router::new().route(
        "/",
        any(move |ws: WebSocketUpgrade| {
            let config = config.clone();
            async move { handler(ws, config) }
        }),
    );
    // Every server in the comparison sets TCP_NODELAY (axum::serve does not).
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await?
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    eprintln!("axum-ferrows-echo listening on 127.0.0.1:{port}");
    axum::serve(listener, app).await
}

fn handler(ws: WebSocketUpgrade, config: Config) -> Response {
    let hwm = config.write_high_water_mark;
    ws.config(config).on_upgrade(move |ws| echo(ws, hwm))
}

async fn echo(mut ws: WebSocket, hwm: usize) {
    while let Some(Ok(msg)) = ws.recv().await {
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            if matches!(msg, Message::Text(_) | Message::Binary(_)) && ws.queue(msg).is_err() {
                return;
            }
            if ws.buffered_amount() < hwm {
                match ws.try_recv() {
                    Some(Ok(more)) => next = Some(more),
                    Some(Err(_)) => return,
                    None => {}
                }
            }
        }
    }
}

fn args() -> Option<(u16, usize)> {
    let mut args = std::env::args().skip(1);
    let port = args.next().and_then(|p| p.parse::<u16>().ok());
    let limit = match args.next() {
        None => Some(64 << 20),
        Some(m) => m.parse::<usize>().ok(),
    };
    match (port, limit) {
        (Some(port), Some(limit)) => Some((port, limit)),
        _ => {
            eprintln!("usage: axum-ferrows-echo PORT [MAX_MESSAGE_BYTES]");
            None
        }
    }
}
