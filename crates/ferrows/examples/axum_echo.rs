//! ferrows inside an axum app: a page on `/`, an echo WebSocket on `/ws`
//! (permessage-deflate on), a REST route on `/api/health`.
//!
//! ```text
//! cargo run --release --features axum --example axum_echo -- [ADDR] [--compression-threshold N]
//! ```
//!
//! `ADDR` defaults to 127.0.0.1:3000. `--compression-threshold N`: messages
//! shorter than N bytes are sent uncompressed (default 256; the Autobahn
//! run in `scripts/autobahn` uses 0). Stops on Ctrl-C.

use axum::Router;
use axum::response::{Html, Response};
use axum::routing::get;
use ferrows::axum::WebSocketUpgrade;
use ferrows::{Config, DeflateConfig, Message};

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>ferrows in axum</title>
<p>Echo over <code>/ws</code>: <input id="m" value="hello"> <button id="b">send</button></p>
<pre id="log"></pre>
<script>
const log = (s) => document.getElementById("log").textContent += s + "\n";
const ws = new WebSocket(`ws://${location.host}/ws`);
ws.onopen = () => log("open, extensions: " + (ws.extensions || "none"));
ws.onmessage = (e) => log("< " + e.data);
ws.onclose = (e) => log("closed " + e.code);
document.getElementById("b").onclick = () => {
  const m = document.getElementById("m").value;
  ws.send(m);
  log("> " + m);
};
</script>
"#;

fn parse_args() -> Result<(String, usize), String> {
    let mut addr = "127.0.0.1:3000".to_owned();
    let mut threshold = 256;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--compression-threshold" => {
                let value = args.next().ok_or("--compression-threshold needs a value")?;
                threshold = value
                    .parse()
                    .map_err(|_| format!("bad --compression-threshold {value:?}"))?;
            }
            _ if arg.starts_with('-') => return Err(format!("unknown option {arg}")),
            _ => addr = arg,
        }
    }
    Ok((addr, threshold))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let (addr, threshold) = match parse_args() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("axum_echo: {e}\nusage: axum_echo [ADDR] [--compression-threshold N]");
            std::process::exit(2);
        }
    };
    // 16 MiB messages in up to 65 536 fragments, as the Autobahn suite sends.
    let mut config = Config::default()
        .max_message_size(32 << 20)
        .max_fragments(65_536)
        .deflate(DeflateConfig::default().threshold(threshold));
    config.limits.max_frame_size = 32 << 20;
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/health", get(|| async { "ok" }))
        .route(
            "/ws",
            get(move |ws: WebSocketUpgrade| echo(ws, config.clone())),
        );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}

async fn echo(ws: WebSocketUpgrade, config: Config) -> Response {
    ws.config(config).on_upgrade(|mut socket| async move {
        while let Some(msg) = socket.recv().await {
            match msg {
                Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                    if socket.send(msg).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
}
