//! The chat wire formats that `--broadcast` and `--chat-rate` speak.
//!
//! * `ferrows` (`ferrows serve chat`, and the Node `ws` chat peer): a text
//!   message `hello` from a client reaches every client, sender included,
//!   as `msg:hello`.
//! * `socketio`: Socket.IO 4 over Engine.IO v4, WebSocket transport only
//!   (no HTTP long-polling first). The client opens
//!   `/socket.io/?EIO=4&transport=websocket`, the server sends the open
//!   packet `0{…}`, the client connects to the main namespace with `40` and
//!   the server confirms with `40{…}`. A chat message is the event
//!   `42["msg","hello"]`, which the server re-emits to the room; the server
//!   pings with `2` and the client answers `3`. Copies are handed to the
//!   modes in the ferrows format (`msg:hello`), so both count the same way.

use std::time::Duration;

use ferrows::{Config, Message};
use serde_json::Value;
use tokio::sync::Semaphore;

use super::pool::{self, Ws};

/// How long a Socket.IO server may take to open the session and confirm
/// the namespace connection.
const SOCKETIO_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A chat wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Protocol {
    /// `ferrows serve chat`: text `hello` in, `msg:hello` to everyone
    Ferrows,
    /// Socket.IO 4 (Engine.IO v4 over WebSocket): event `msg` in, event
    /// `msg` to everyone
    Socketio,
}

impl Protocol {
    /// The name used in the JSON output.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Protocol::Ferrows => "ferrows",
            Protocol::Socketio => "socketio",
        }
    }

    /// The URL to open for a server at `url`: for Socket.IO, the Engine.IO
    /// endpoint under it unless `url` already names one (has `EIO=`).
    pub(crate) fn endpoint(self, url: &str) -> String {
        match self {
            Protocol::Ferrows => url.to_owned(),
            Protocol::Socketio if url.contains("EIO=") => url.to_owned(),
            Protocol::Socketio => format!(
                "{}/socket.io/?EIO=4&transport=websocket",
                url.trim_end_matches('/')
            ),
        }
    }
}

/// A chat client connection in one of the wire formats.
pub(crate) struct ChatConn {
    ws: Ws,
    protocol: Protocol,
}

/// What a chat connection received.
pub(crate) enum Received {
    /// A chat line in the ferrows format (`msg:…`).
    Line(String),
    /// Anything else (pings, notices in other formats, binary messages).
    Other,
}

impl ChatConn {
    /// Connects to the chat server at `url` (holding one of `gate`'s
    /// permits for the handshakes); for Socket.IO, also opens the session
    /// and joins the main namespace.
    ///
    /// # Errors
    ///
    /// The failure, as text.
    pub(crate) async fn connect(
        url: &str,
        protocol: Protocol,
        config: &Config,
        gate: &Semaphore,
    ) -> Result<ChatConn, String> {
        let (ws, _) = pool::connect(&protocol.endpoint(url), config, gate).await?;
        let mut conn = ChatConn { ws, protocol };
        if protocol == Protocol::Socketio {
            tokio::time::timeout(SOCKETIO_OPEN_TIMEOUT, conn.socketio_open())
                .await
                .map_err(|_| {
                    format!(
                        "no Socket.IO session within {} s",
                        SOCKETIO_OPEN_TIMEOUT.as_secs()
                    )
                })??;
        }
        Ok(conn)
    }

    /// Engine.IO open packet, then the namespace connection.
    async fn socketio_open(&mut self) -> Result<(), String> {
        let first = self.next_text().await?;
        if !first.starts_with('0') {
            return Err(format!(
                "expected the Engine.IO open packet `0{{…}}`, got {:?}",
                clip(&first)
            ));
        }
        self.ws
            .send("40")
            .await
            .map_err(|e| format!("sending the namespace connect: {e}"))?;
        loop {
            let text = self.next_text().await?;
            if text.starts_with("40") {
                return Ok(());
            }
            if text == "2" {
                self.pong()?;
                continue;
            }
            return Err(format!(
                "expected the namespace connect reply `40{{…}}`, got {:?}",
                clip(&text)
            ));
        }
    }

    /// The next text message, whatever it is.
    async fn next_text(&mut self) -> Result<String, String> {
        loop {
            match self.ws.recv().await {
                Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
                Some(Ok(Message::Close(frame))) => {
                    return Err(format!("closed by the server ({frame:?})"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("ended by the server".to_owned()),
            }
        }
    }

    /// Queues the answer to an Engine.IO ping; the next read or send
    /// writes it.
    fn pong(&mut self) -> Result<(), String> {
        self.ws
            .queue("3")
            .map_err(|e| format!("answering a ping: {e}"))
    }

    /// Sends one chat line.
    ///
    /// # Errors
    ///
    /// The connection's error, as text.
    pub(crate) async fn send(&mut self, line: &str) -> Result<(), String> {
        let result = match self.protocol {
            Protocol::Ferrows => self.ws.send(line).await,
            Protocol::Socketio => {
                let event = Value::Array(vec![
                    Value::String("msg".to_owned()),
                    Value::String(line.to_owned()),
                ]);
                self.ws.send(format!("42{event}")).await
            }
        };
        result.map_err(|e| e.to_string())
    }

    /// Receives the next item. Cancel safe (what was read stays in the
    /// connection; a due pong is queued before this returns).
    ///
    /// # Errors
    ///
    /// The connection ended or failed, or (Socket.IO) the server
    /// disconnected the client.
    pub(crate) async fn recv(&mut self) -> Result<Received, String> {
        let text = match self.ws.recv().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(frame))) => {
                return Err(format!("closed by the server ({frame:?})"));
            }
            Some(Ok(_)) => return Ok(Received::Other),
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("ended by the server".to_owned()),
        };
        match self.protocol {
            Protocol::Ferrows => Ok(Received::Line(text.as_str().to_owned())),
            Protocol::Socketio => self.socketio_packet(text.as_str()),
        }
    }

    fn socketio_packet(&mut self, text: &str) -> Result<Received, String> {
        if text == "2" {
            self.pong()?;
            return Ok(Received::Other);
        }
        if let Some(event) = text.strip_prefix("42") {
            return Ok(socketio_msg(event).map_or(Received::Other, Received::Line));
        }
        if text.starts_with("41") || text.starts_with('1') {
            return Err(format!(
                "disconnected by the Socket.IO server ({:?})",
                clip(text)
            ));
        }
        Ok(Received::Other)
    }

    /// Closes the connection (1000), bounded by the close timeout of its
    /// configuration.
    pub(crate) async fn close(&mut self) {
        let _ = self.ws.close(1000, "bench done").await;
    }
}

/// The text of a `["msg","…"]` event (the part after `42`), as the ferrows
/// chat line `msg:…`; `None` for any other event or malformed JSON.
fn socketio_msg(event: &str) -> Option<String> {
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(event) else {
        return None;
    };
    match items.as_slice() {
        [Value::String(name), Value::String(text)] if name == "msg" => Some(format!("msg:{text}")),
        _ => None,
    }
}

/// At most 60 characters of `text`, for error messages.
fn clip(text: &str) -> String {
    text.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            Protocol::Socketio.endpoint("ws://127.0.0.1:3000/"),
            "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            Protocol::Socketio.endpoint("ws://h:1/socket.io/?EIO=4&transport=websocket"),
            "ws://h:1/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(Protocol::Ferrows.endpoint("ws://h:1/"), "ws://h:1/");
    }

    #[test]
    fn socketio_events() {
        assert_eq!(
            socketio_msg(r#"["msg","bench-1:2"]"#).as_deref(),
            Some("msg:bench-1:2")
        );
        assert_eq!(
            socketio_msg(r#"["msg","quote \" and \\"]"#).as_deref(),
            Some("msg:quote \" and \\")
        );
        assert_eq!(socketio_msg(r#"["other","x"]"#), None);
        assert_eq!(socketio_msg(r#"["msg",1]"#), None);
        assert_eq!(socketio_msg(r#"["msg","a","b"]"#), None);
        assert_eq!(socketio_msg("not json"), None);
        assert_eq!(socketio_msg(""), None);
    }
}
