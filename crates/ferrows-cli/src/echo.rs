//! `ferrows serve echo`: a drop-in for websocket-echo-server.

use std::net::SocketAddr;
use std::time::Duration;

use ferrows::{CloseCode, Handshake, Message, WebSocket};
use tokio::sync::watch;

use crate::net::{Stream, display_addr};

/// Settings of one echo connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EchoOptions {
    /// After an echo, stop reading while this many bytes are unsent.
    pub(crate) high_water_mark: usize,
}

/// A heartbeat shared by all connections: the sender ticks every
/// interval, each connection pings or terminates on each tick.
pub(crate) fn heartbeat(interval: Duration) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0u64;
        loop {
            ticker.tick().await;
            n += 1;
            if tx.send(n).is_err() {
                return;
            }
        }
    });
    rx
}

/// Handles one request on the echo server: a WebSocket upgrade is echoed,
/// anything else gets `page` (the echo console; 426 when there is none).
pub(crate) async fn handle(
    hs: Handshake<Stream>,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    beat: watch::Receiver<u64>,
    opts: EchoOptions,
    page: Option<&'static str>,
) {
    if !hs.request().is_upgrade() {
        match page {
            Some(html) => crate::pages::respond_page(hs, peer, html).await,
            None => {
                let _ = hs.reject(426, "Upgrade Required").await;
            }
        }
        return;
    }
    let path = hs.request().target().to_owned();
    let ws = match hs.accept().await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::info!(peer = %display_addr(peer), error = %e, "handshake refused");
            return;
        }
    };
    tracing::info!(peer = %display_addr(peer), %path, compression = ws.compression().is_some(), "open");
    let code = echo(ws, shutdown, beat, opts).await;
    tracing::info!(peer = %display_addr(peer), close = %code, "closed");
}

/// Echoes every message with its opcode until the connection ends;
/// returns the close code that ended it, for the log.
pub(crate) async fn echo(
    mut ws: WebSocket<Stream>,
    mut shutdown: watch::Receiver<bool>,
    mut beat: watch::Receiver<u64>,
    opts: EchoOptions,
) -> CloseCode {
    // A clone of a watch receiver starts at its origin's last-seen value:
    // mark the current tick seen so only the next one counts.
    beat.borrow_and_update();
    // Like the original: any message or pong since the last ping is a
    // sign of life; none by the next tick, and the peer is terminated.
    let mut alive = true;
    loop {
        let paused = ws.buffered_amount() >= opts.high_water_mark;
        let step = async {
            if paused {
                Step::Drained(ws.flush().await)
            } else {
                Step::Received(ws.recv().await)
            }
        };
        let step = tokio::select! {
            biased;
            _ = shutdown.changed() => {
                let _ = ws.close(CloseCode::GOING_AWAY, "server shutting down").await;
                return CloseCode::GOING_AWAY;
            }
            _ = beat.changed() => Step::Beat,
            step = step => step,
        };
        match step {
            Step::Beat => {
                if !alive {
                    // Terminate: no close frame, the peer sees 1006.
                    tracing::debug!("no sign of life since the last ping: terminating");
                    return CloseCode::ABNORMAL;
                }
                alive = false;
                // Queued past any backpressure; the next recv() or drain
                // writes it.
                if ws.queue(Message::Ping(bytes::Bytes::new())).is_err() {
                    return CloseCode::ABNORMAL;
                }
            }
            Step::Drained(Ok(())) => {}
            Step::Drained(Err(_)) => return CloseCode::ABNORMAL,
            Step::Received(None) => return CloseCode::ABNORMAL,
            Step::Received(Some(Err(e))) => {
                tracing::debug!(error = %e, "connection failed");
                return e.close_code().unwrap_or(CloseCode::ABNORMAL);
            }
            Step::Received(Some(Ok(msg))) => {
                alive = true;
                // Echo everything this read brought in before going back to
                // select! (one select! per read, not per message), up to
                // the high-water mark.
                let mut next = Some(msg);
                while let Some(msg) = next.take() {
                    match msg {
                        Message::Text(_) | Message::Binary(_) => {
                            let queued = ws.queue(msg);
                            if queued.is_err() {
                                return CloseCode::ABNORMAL;
                            }
                        }
                        Message::Close(frame) => {
                            // recv() already answered; wait for the TCP close.
                            while ws.recv().await.is_some() {}
                            return frame.map_or(CloseCode::NO_STATUS, |f| f.code);
                        }
                        _ => {}
                    }
                    if ws.buffered_amount() < opts.high_water_mark {
                        match ws.try_recv() {
                            Some(Ok(more)) => next = Some(more),
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "connection failed");
                                return e.close_code().unwrap_or(CloseCode::ABNORMAL);
                            }
                            None => {}
                        }
                    }
                }
            }
        }
    }
}

enum Step {
    Beat,
    Drained(ferrows::Result<()>),
    Received(Option<ferrows::Result<Message>>),
}
