//! A WebSocket client: connects to a URL, sends each further argument as
//! a text message, prints the replies, and closes.
//!
//! ```text
//! cargo run --example client -- ws://127.0.0.1:9001 hello world
//! ```

use ferrows::Message;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(url) = args.next() else {
        eprintln!("usage: client <ws://host:port/path> [message...]");
        std::process::exit(2);
    };
    if let Err(e) = run(&url, args).await {
        eprintln!("{url}: {e}");
        std::process::exit(1);
    }
}

async fn run(url: &str, messages: impl Iterator<Item = String>) -> ferrows::Result<()> {
    let (mut ws, response) = ferrows::connect(url).await?;
    eprintln!(
        "connected to {url}: {} {}",
        response.status(),
        response.reason()
    );
    for text in messages {
        ws.send(text.as_str()).await?;
        // Wait for the answer to this message, skipping control frames.
        loop {
            match ws.recv().await {
                Some(Ok(Message::Text(reply))) => println!("{reply}"),
                Some(Ok(Message::Binary(reply))) => println!("<{} bytes>", reply.len()),
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map_or_else(|| "no code".to_owned(), |f| f.to_string());
                    eprintln!("the server closed the connection: {code}");
                    return Ok(());
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
            break;
        }
    }
    ws.close(1000, "bye").await
}
