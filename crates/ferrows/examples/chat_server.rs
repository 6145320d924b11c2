//! The chat server of `ferrows serve chat` ("a chat with a timer tick that
//! every connected browser sees in sync"), written with the callback
//! [`Server`]: every text a client sends goes to everyone as
//! `msg:<text>`, join and leave notices as `msg:* client <id> joined` /
//! `left`, and a timer broadcasts `tick:<n>` every second — the same `n`
//! for everyone, one shared frame per tick.
//!
//! ```text
//! cargo run --example chat_server [-- 127.0.0.1:9001]
//! ```
//!
//! Then connect WebSocket clients to `ws://127.0.0.1:9001/`, e.g.
//! `ferrows connect ws://127.0.0.1:9001/` in two terminals. Ctrl-C closes
//! every client with 1001 and exits.

use std::time::Duration;

use ferrows::Server;

#[tokio::main]
async fn main() -> ferrows::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let server = Server::bind(addr)
        .await?
        .on_connect(|server, client| {
            server.broadcast(format!("msg:* client {} joined", client.id()));
        })
        .on_message(|server, _client, msg| {
            if let Some(text) = msg.as_text() {
                server.broadcast(format!("msg:{text}"));
            }
        })
        .on_disconnect(|server, client| {
            server.broadcast(format!("msg:* client {} left", client.id()));
        });

    let ticker = server.handle();
    tokio::spawn(async move {
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        // A late tick is sent late, not as a burst of catch-up ticks.
        every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        while !ticker.is_shutting_down() {
            every_second.tick().await;
            ticker.broadcast(format!("tick:{n}"));
            n += 1;
        }
    });

    println!("chat on ws://{}/ (Ctrl-C to stop)", server.local_addr());
    server.run().await
}
