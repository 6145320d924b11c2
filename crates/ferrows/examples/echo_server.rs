//! A WebSocket echo server: every text and binary message goes back
//! unchanged, one task per connection.
//!
//! ```text
//! cargo run --example echo_server [-- 127.0.0.1:9001]
//! cargo run --example client -- ws://127.0.0.1:9001 hello world
//! ```

use ferrows::{Config, Handshake, Message};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ferrows::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("echo server listening on ws://{}", listener.local_addr()?);
    loop {
        let (stream, peer) = listener.accept().await?;
        tokio::spawn(async move {
            let result = async {
                let hs = Handshake::read(stream, Config::default()).await?;
                eprintln!(
                    "{peer}: {} {}",
                    hs.request().method(),
                    hs.request().target()
                );
                let mut ws = hs.with_peer_addr(peer).accept().await?;
                while let Some(msg) = ws.recv().await {
                    match msg? {
                        msg @ (Message::Text(_) | Message::Binary(_)) => ws.send(msg).await?,
                        Message::Close(Some(frame)) => eprintln!("{peer}: close {frame}"),
                        Message::Close(None) => eprintln!("{peer}: close without a code"),
                        _ => {}
                    }
                }
                Ok::<_, ferrows::Error>(())
            }
            .await;
            match result {
                Ok(()) => eprintln!("{peer}: closed"),
                Err(e) => eprintln!("{peer}: {e}"),
            }
        });
    }
}
