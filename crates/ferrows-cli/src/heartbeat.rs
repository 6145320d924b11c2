//! The heartbeat of websocket-echo-server, shared by the echo and chat
//! servers: one timer for all connections, whose channel also announces the
//! shutdown (one registration per idle connection, not two).

use std::time::Duration;

use ferrows::{CloseCode, Message, WebSocket};
use tokio::sync::watch;

use crate::net::Stream;

/// The value the heartbeat channel carries once the server shuts down.
pub(crate) const SHUTDOWN: u64 = u64::MAX;

/// Ticks every `interval` (1, 2, 3, ...); carries [`SHUTDOWN`] once
/// `shutdown` turns true.
pub(crate) fn heartbeat(
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = shutdown;
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    n += 1;
                    if tx.send(n).is_err() {
                        return;
                    }
                }
                _ = shutdown.wait_for(|stop| *stop) => {
                    let _ = tx.send(SHUTDOWN);
                    return;
                }
            }
        }
    });
    rx
}

/// What a tick asks of a connection.
pub(crate) enum OnBeat {
    /// A ping was queued (the next `recv()` or flush writes it).
    Pinged,
    /// The server is shutting down: close with 1001.
    Shutdown,
    /// No sign of life since the previous ping: terminate without a close
    /// frame (the peer sees 1006), as the original does.
    Dead,
}

/// One connection's side of the heartbeat: any message or pong since the
/// last ping is a sign of life.
pub(crate) struct Liveness {
    alive: bool,
}

impl Liveness {
    /// Starts following `beat`: only ticks from now on count. `None` if the
    /// server is already shutting down.
    pub(crate) fn start(beat: &mut watch::Receiver<u64>) -> Option<Liveness> {
        // A clone of a watch receiver starts at its origin's last-seen
        // value: mark the current one seen.
        (*beat.borrow_and_update() != SHUTDOWN).then_some(Liveness { alive: true })
    }

    /// Something arrived from the peer.
    pub(crate) fn saw_life(&mut self) {
        self.alive = true;
    }

    /// Handles a change of `beat`.
    pub(crate) fn tick(
        &mut self,
        beat: &watch::Receiver<u64>,
        ws: &mut WebSocket<Stream>,
    ) -> OnBeat {
        if *beat.borrow() == SHUTDOWN {
            return OnBeat::Shutdown;
        }
        if !self.alive {
            return OnBeat::Dead;
        }
        self.alive = false;
        // Queued past any backpressure: a ping must not wait behind it.
        match ws.queue(Message::Ping(bytes::Bytes::new())) {
            Ok(()) => OnBeat::Pinged,
            Err(_) => OnBeat::Dead,
        }
    }
}

/// Closes with 1001 for the shutdown (waiting for the answer, bounded by
/// the close timeout) and returns the code for the log.
pub(crate) async fn close_for_shutdown(ws: &mut WebSocket<Stream>) -> CloseCode {
    let _ = ws
        .close(CloseCode::GOING_AWAY, "server shutting down")
        .await;
    CloseCode::GOING_AWAY
}
