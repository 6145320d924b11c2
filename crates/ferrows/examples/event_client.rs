//! The event client exchanging JSON with an echo server, as the networking
//! lab's ESP32 client does (ESP-IDF's `esp_websocket_client` style): prints every event, sends a
//! JSON message a second, checks each echo, closes after the last one, and
//! shuts down by itself if the server goes quiet.
//!
//! ```text
//! ferrows serve echo                       # in one terminal (port 1337)
//! cargo run --example event_client [-- ws://127.0.0.1:1337/]
//! ```
//!
//! Stop the server midway to watch the client report the loss and
//! reconnect with backoff once it is back.

use std::time::Duration;

use ferrows::OpCode;
use ferrows::event_client::{Backoff, Event, EventClient};
use serde_json::{Value, json};

/// JSON messages per connection.
const MESSAGES: u32 = 5;

#[tokio::main]
async fn main() -> ferrows::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:1337/".to_owned());
    let (client, mut events) = EventClient::builder(&url)
        .backoff(Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(30),
            2.0,
        ))
        .ping_interval(Some(Duration::from_secs(10)))
        .pingpong_timeout(Some(Duration::from_secs(20)))
        .inactivity_timeout(Some(Duration::from_secs(15)))
        .start()?;
    println!("connecting to {url}");

    let mut sender: Option<tokio::task::JoinHandle<()>> = None;
    // The message being reassembled from its frames.
    let mut message: Vec<u8> = Vec::new();
    let mut echoes = 0;
    while let Some(event) = events.recv().await {
        match event {
            Event::Connected { response } => {
                println!("connected (HTTP {})", response.status());
                echoes = 0;
                let client = client.clone();
                if let Some(old) = sender.replace(tokio::spawn(send_json(client))) {
                    old.abort();
                }
            }
            Event::Data {
                opcode: opcode @ (OpCode::Text | OpCode::Binary),
                data,
                payload_len,
                payload_offset,
                fin,
            } => {
                println!(
                    "data: opcode={opcode:?} data_len={} payload_offset={payload_offset} \
                     payload_len={payload_len} fin={fin}",
                    data.len()
                );
                if payload_offset == 0 {
                    message.clear();
                }
                message.extend_from_slice(&data);
                if fin {
                    echoes += 1;
                    report(&message);
                    if echoes == MESSAGES {
                        println!("all echoes back: closing");
                        client.close(1000, "done").await;
                    }
                }
            }
            Event::Data { opcode, data, .. } => {
                println!("{opcode:?} ({} bytes)", data.len());
            }
            Event::Error { kind, error } => match error {
                Some(e) => println!("error: {kind}: {e}"),
                None => println!("error: {kind}"),
            },
            Event::Closed { code, reason } => {
                println!("closed: {code} {:?}", reason.escape_debug().to_string());
            }
            Event::Disconnected => println!("disconnected"),
            Event::Finish => {
                println!("finished");
                break;
            }
            other => println!("{other:?}"),
        }
    }
    if let Some(task) = sender {
        task.abort();
    }
    Ok(())
}

/// Sends `MESSAGES` JSON objects, one a second.
async fn send_json(client: EventClient) {
    for seq in 0..MESSAGES {
        let body = json!({ "type": "reading", "seq": seq, "temperature": 20.5 + f64::from(seq) });
        match client
            .send_text(&body.to_string(), Duration::from_secs(5))
            .await
        {
            Ok(()) => println!("sent: {body}"),
            Err(e) => {
                println!("send failed: {e}");
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Prints a whole message: as JSON if it parses.
fn report(message: &[u8]) {
    match serde_json::from_slice::<Value>(message) {
        // serde_json escapes control characters in strings.
        Ok(value) => println!("json: {value}"),
        Err(e) => {
            let text = String::from_utf8_lossy(message);
            println!("not JSON ({e}): {}", text.escape_debug());
        }
    }
}
