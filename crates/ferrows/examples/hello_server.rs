//! The python-websockets quick start, server side: reads a name, answers
//! `Hello <name>!`.
//!
//! ```text
//! cargo run --example hello_server [-- 127.0.0.1:8765]
//! cargo run --example hello_client [-- ws://127.0.0.1:8765/ Alice]
//! ```
//!
//! The Python original:
//!
//! ```python
//! async def hello(websocket):
//!     name = await websocket.recv()
//!     greeting = f"Hello {name}!"
//!     await websocket.send(greeting)
//!
//! async with serve(hello, "localhost", 8765) as server:
//!     await server.serve_forever()
//! ```

use ferrows::Message;

#[tokio::main]
async fn main() -> ferrows::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    println!("listening on ws://{addr}/ (Ctrl-C to stop)");
    // One task per connection, running this handler.
    ferrows::serve(addr, |mut ws| async move {
        let name = match ws.recv().await {
            Some(Ok(Message::Text(name))) => name,
            Some(Ok(_)) => {
                let _ = ws.close(1003, "send your name as text").await;
                return;
            }
            // Gone before saying anything.
            Some(Err(_)) | None => return,
        };
        // Peer text may hold terminal control characters: escape them.
        println!("<<< {}", name.as_str().escape_debug());
        let greeting = format!("Hello {}!", name.as_str());
        if ws.send(greeting.as_str()).await.is_ok() {
            println!(">>> {}", greeting.escape_debug());
        }
        let _ = ws.close(1000, "").await;
    })
    .await
}
