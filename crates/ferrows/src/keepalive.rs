//! Keepalive: ping every connection at an interval and drop the peers that
//! stayed silent since the previous ping, on ONE timer per server (a
//! [`heartbeat`] task), not a timer per connection: an idle connection
//! holds one channel registration, nothing else.
//!
//! The heartbeat's channel also announces the server's shutdown
//! ([`SHUTDOWN`]), so a connection waits on one thing for both.
//!
//! ```no_run
//! use std::time::Duration;
//! use ferrows::keepalive::{self, Liveness, OnBeat};
//!
//! # async fn demo(mut ws: ferrows::WebSocket<tokio::net::TcpStream>) {
//! let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
//! // Once per server; every connection gets a clone.
//! let mut beat = keepalive::heartbeat(Duration::from_secs(30), stop_rx);
//!
//! // Per connection:
//! let Some(mut live) = Liveness::start(&mut beat) else {
//!     keepalive::close_for_shutdown(&mut ws).await;
//!     return;
//! };
//! loop {
//!     tokio::select! {
//!         _ = beat.changed() => match live.tick(&beat, &mut ws) {
//!             OnBeat::Pinged => {}
//!             OnBeat::Shutdown => { keepalive::close_for_shutdown(&mut ws).await; return }
//!             OnBeat::Dead => return, // silent since the last ping
//!         },
//!         msg = ws.recv() => match msg {
//!             Some(Ok(_)) => live.saw_life(),
//!             _ => return,
//!         },
//!     }
//! }
//! # }
//! ```

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::message::Message;
use crate::websocket::WebSocket;
use ferrows_proto::CloseCode;

/// The value a [`heartbeat`] channel carries once the server shuts down.
pub const SHUTDOWN: u64 = u64::MAX;

/// Starts the server's one heartbeat task: its channel counts ticks every
/// `interval` (1, 2, 3, ...) and carries [`SHUTDOWN`] once `shutdown`
/// turns true (or its sender is gone). The task ends with the shutdown, or
/// when every receiver is dropped.
///
/// # Panics
///
/// If called outside a tokio runtime, or if `interval` is zero.
pub fn heartbeat(interval: Duration, shutdown: watch::Receiver<bool>) -> watch::Receiver<u64> {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBeat {
    /// A ping was queued (the next `recv()` or flush writes it).
    Pinged,
    /// The server is shutting down: close with 1001
    /// ([`close_for_shutdown`]).
    Shutdown,
    /// No sign of life since the previous ping: drop the connection
    /// without a close frame (the peer sees 1006).
    Dead,
}

/// One connection's side of the heartbeat: any message or pong since the
/// last ping is a sign of life.
#[derive(Debug)]
pub struct Liveness {
    alive: bool,
}

impl Liveness {
    /// Starts following `beat` (a clone of the server's [`heartbeat`]):
    /// only ticks from now on count. `None` if the server is already
    /// shutting down.
    pub fn start(beat: &mut watch::Receiver<u64>) -> Option<Liveness> {
        // A clone of a watch receiver starts at its origin's last-seen
        // value: mark the current one seen.
        (*beat.borrow_and_update() != SHUTDOWN).then_some(Liveness { alive: true })
    }

    /// Something arrived from the peer.
    pub fn saw_life(&mut self) {
        self.alive = true;
    }

    /// Handles a change of `beat`: queues a ping on `ws` if the peer showed
    /// life since the last one.
    pub fn tick<S>(&mut self, beat: &watch::Receiver<u64>, ws: &mut WebSocket<S>) -> OnBeat
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
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
/// the close timeout) and returns the code, for the log.
pub async fn close_for_shutdown<S>(ws: &mut WebSocket<S>) -> CloseCode
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = ws
        .close(CloseCode::GOING_AWAY, "server shutting down")
        .await;
    CloseCode::GOING_AWAY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_timer_ticks_every_receiver_then_announces_the_shutdown() {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut a = heartbeat(Duration::from_secs(30), stop_rx);
        let mut b = a.clone();
        let mut live = Liveness::start(&mut b).unwrap();
        a.changed().await.unwrap();
        assert_eq!(*a.borrow(), 1);
        b.changed().await.unwrap();
        assert_eq!(*b.borrow_and_update(), 1);
        stop_tx.send(true).unwrap();
        b.changed().await.unwrap();
        assert_eq!(*b.borrow(), SHUTDOWN);
        assert!(Liveness::start(&mut b).is_none());
        live.saw_life();
    }
}
