//! The python-websockets quick start, client side: sends a name, prints the
//! greeting.
//!
//! ```text
//! cargo run --example hello_client [-- ws://127.0.0.1:8765/ [NAME]]
//! ```
//!
//! Without a NAME on the command line it asks for one, as the Python
//! original does:
//!
//! ```python
//! async with connect("ws://localhost:8765") as websocket:
//!     name = input("What's your name? ")
//!     await websocket.send(name)
//!     greeting = await websocket.recv()
//! ```

use std::io::Write;

#[tokio::main]
async fn main() -> ferrows::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8765/".to_owned());
    let name = match args.next() {
        Some(name) => name,
        None => {
            print!("What's your name? ");
            std::io::stdout().flush()?;
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };

    let (mut ws, _response) = ferrows::connect(&url).await?;
    ws.send(name.as_str()).await?;
    println!(">>> {name}");
    match ws.recv().await {
        Some(Ok(reply)) => match reply.as_text() {
            Some(text) => println!("<<< {}", text.escape_debug()),
            None => println!("<<< {reply:?}"),
        },
        Some(Err(e)) => return Err(e),
        None => println!("the server closed the connection"),
    }
    // The server closes after its answer; finish the closing handshake.
    ws.close(1000, "").await?;
    Ok(())
}
