//! tokio-tungstenite echo server for `scripts/bench-peers`, written the
//! fast way, as tokio-tungstenite's own `echo-server` example: split the
//! stream and `forward` the reading half into the writing half. `forward`
//! feeds each message to the sink and flushes only when the stream has
//! nothing more ready, so all the echoes of one read go out in one write.
//! Only data messages are forwarded: tungstenite answers pings and close
//! frames itself.
//!
//! Usage: `tungstenite-echo PORT [MAX_MESSAGE_BYTES]` (listens on
//! 127.0.0.1; the limit applies to messages and frames; default 64 MiB).

use std::process::ExitCode;

use futures_util::{StreamExt, TryStreamExt, future};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(Ok(port)), limit) = (
        args.next().map(|p| p.parse::<u16>()),
        args.next().map(|m| m.parse::<usize>()),
    ) else {
        eprintln!("usage: tungstenite-echo PORT [MAX_MESSAGE_BYTES]");
        return ExitCode::from(2);
    };
    let limit = match limit {
        None => 64 << 20,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("tungstenite-echo: MAX_MESSAGE_BYTES must be a number");
            return ExitCode::from(2);
        }
    };
    // As the example: `#[tokio::main]`, the multi-threaded runtime (one
    // worker per CPU the process may use: one under `taskset -c 0`).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tungstenite-echo: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(port, limit)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tungstenite-echo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(port: u16, limit: usize) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("tungstenite-echo listening on 127.0.0.1:{port}");
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(echo(stream, config));
    }
}

async fn echo(stream: TcpStream, config: WebSocketConfig) {
    // Every server in the comparison sets TCP_NODELAY.
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (write, read) = ws.split();
    let _ = read
        .try_filter(|msg| future::ready(msg.is_text() || msg.is_binary()))
        .forward(write)
        .await;
}
