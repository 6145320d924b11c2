//! `ferrows serve echo`: a drop-in for websocket-echo-server.

use std::future::Future;
use std::net::SocketAddr;

use ferrows::{CloseCode, Handshake, Message, WebSocket};
use tokio::sync::watch;

use crate::heartbeat::{Liveness, OnBeat, close_for_shutdown};
use crate::net::{self, Io, Stream, display_addr};

/// Settings of one echo connection, websocket-echo-server's besides the
/// message size (which the server's `Config` carries for every route).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EchoOptions {
    /// After an echo, stop reading while this many bytes are unsent.
    pub(crate) high_water_mark: usize,
    /// Close with 1009 on a message in more frames.
    pub(crate) max_fragments: usize,
}

/// Handles one request on the echo server: a WebSocket upgrade is echoed,
/// anything else gets the echo console.
///
/// `beat` is a [`heartbeat`](crate::heartbeat::heartbeat) channel, which also
/// announces the shutdown. The decision is made before the returned future
/// exists, so that future holds neither the request nor a second copy of
/// the connection: it stays small for the connection's whole life.
pub(crate) fn handle(
    mut hs: Handshake<Stream>,
    peer: SocketAddr,
    beat: watch::Receiver<u64>,
    opts: EchoOptions,
) -> impl Future<Output = ()> + Send + 'static {
    let job = if hs.request().is_upgrade() {
        // The target as sent, its credentials (`?token=`) redacted.
        let path = ferrows::listener::redact_target(hs.request().target());
        let config = hs.config_mut();
        config.write_high_water_mark = opts.high_water_mark;
        config.limits.max_fragments = opts.max_fragments;
        Ok((hs.accept(), path))
    } else {
        Err(Box::pin(crate::pages::respond_page(
            hs,
            peer,
            crate::pages::echo(),
        )))
    };
    async move {
        match job {
            Err(page) => page.await,
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
    let Some(mut live) = Liveness::start(beat) else {
        return close_for_shutdown(ws).await;
    };
    loop {
        let paused = ws.buffered_amount() >= opts.high_water_mark;
        let step = tokio::select! {
            biased;
            _ = beat.changed() => Step::Beat,
            io = net::io(ws, paused) => Step::Io(io),
        };
        match step {
            Step::Beat => match live.tick(beat, ws) {
                OnBeat::Pinged => {}
                OnBeat::Shutdown => return close_for_shutdown(ws).await,
                OnBeat::Dead => {
                    tracing::debug!("no sign of life since the last ping: terminating");
                    return CloseCode::ABNORMAL;
                }
            },
            Step::Io(Io::Flushed(Ok(()))) => {}
            Step::Io(Io::Flushed(Err(_)) | Io::Received(None)) => return CloseCode::ABNORMAL,
            Step::Io(Io::Received(Some(Err(e)))) => {
                tracing::debug!(error = %e, "connection failed");
                return e.close_code().unwrap_or(CloseCode::ABNORMAL);
            }
            Step::Io(Io::Received(Some(Ok(msg)))) => {
                live.saw_life();
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
    Io(Io),
}
