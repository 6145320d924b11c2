//! `ferrows serve echo`: a drop-in for websocket-echo-server.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
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

/// The value the heartbeat channel carries once the server shuts down.
pub(crate) const SHUTDOWN: u64 = u64::MAX;

/// A heartbeat shared by all connections: the sender ticks every
/// interval, each connection pings or terminates on each tick. When
/// `shutdown` changes, the channel carries [`SHUTDOWN`] instead: one
/// channel, so an idle connection waits on one registration, not two.
pub(crate) fn heartbeat(
    interval: Duration,
    shutdown: Option<watch::Receiver<bool>>,
) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = shutdown;
        let mut n = 0u64;
        loop {
            let stop = async {
                match shutdown.as_mut() {
                    Some(s) => {
                        let _ = s.wait_for(|stop| *stop).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ticker.tick() => {
                    n += 1;
                    if tx.send(n).is_err() {
                        return;
                    }
                }
                _ = stop => {
                    let _ = tx.send(SHUTDOWN);
                    return;
                }
            }
        }
    });
    rx
}

/// Handles one request on the echo server: a WebSocket upgrade is echoed,
/// anything else gets `page` (the echo console; 426 when there is none).
///
/// `beat` is a [`heartbeat`] channel, which also announces the shutdown.
/// The decision is made before the returned future exists, so that future
/// holds neither the request nor a second copy of the connection: it stays
/// small for the connection's whole life.
pub(crate) fn handle(
    hs: Handshake<Stream>,
    peer: SocketAddr,
    beat: watch::Receiver<u64>,
    opts: EchoOptions,
    page: Option<&'static str>,
) -> impl Future<Output = ()> + Send + 'static {
    let job = if hs.request().is_upgrade() {
        let path = hs.request().target().to_owned();
        Ok((hs.accept(), path))
    } else {
        let respond: Pin<Box<dyn Future<Output = ()> + Send>> = match page {
            Some(html) => Box::pin(crate::pages::respond_page(hs, peer, html)),
            None => Box::pin(async move {
                let _ = hs.reject(426, "Upgrade Required").await;
            }),
        };
        Err(respond)
    };
    async move {
        match job {
            Err(respond) => respond.await,
            Ok((accept, path)) => echo(accept, peer, path, beat, opts).await,
        }
    }
}

/// Accepts, then echoes every message with its opcode until the connection
/// ends; logs the open and the close (with its code).
async fn echo(
    accept: impl Future<Output = ferrows::Result<WebSocket<Stream>>>,
    peer: SocketAddr,
    path: String,
    mut beat: watch::Receiver<u64>,
    opts: EchoOptions,
) {
    let mut ws = match accept.await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::info!(peer = %display_addr(peer), error = %e, "handshake refused");
            return;
        }
    };
    tracing::info!(peer = %display_addr(peer), %path, compression = ws.compression().is_some(), "open");
    drop(path);
    let code = echo_loop(&mut ws, &mut beat, opts).await;
    tracing::info!(peer = %display_addr(peer), close = %code, "closed");
}

/// The echo loop; returns the close code that ended the connection.
async fn echo_loop(
    ws: &mut WebSocket<Stream>,
    beat: &mut watch::Receiver<u64>,
    opts: EchoOptions,
) -> CloseCode {
    // A clone of a watch receiver starts at its origin's last-seen value:
    // mark the current tick seen so only the next one counts.
    if *beat.borrow_and_update() == SHUTDOWN {
        let _ = ws
            .close(CloseCode::GOING_AWAY, "server shutting down")
            .await;
        return CloseCode::GOING_AWAY;
    }
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
            _ = beat.changed() => Step::Beat,
            step = step => step,
        };
        match step {
            Step::Beat if *beat.borrow() == SHUTDOWN => {
                let _ = ws
                    .close(CloseCode::GOING_AWAY, "server shutting down")
                    .await;
                return CloseCode::GOING_AWAY;
            }
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
