//! The fan-out pump: a [`Hub`](crate::Hub) member's queue into a
//! [`WebSocket`], with backpressure, while reading what the peer sends.
//!
//! [`Pump::next`] moves queued messages into the connection's write buffer
//! up to the write high-water mark and no further: past it the peer is not
//! keeping up, the pump stops taking from the queue (which is bounded),
//! and the hub drops the member once that queue overflows. The pump then
//! reports [`PumpEvent::Close`] with 1008 at once, even while the socket is
//! stuck. A member removed from the hub without lagging gets 1001.
//!
//! ```no_run
//! use ferrows::pump::{Pump, PumpEvent};
//!
//! # async fn demo(mut ws: ferrows::WebSocket<tokio::net::TcpStream>, hub: ferrows::Hub) {
//! let mut pump = Pump::new(hub.join(), 64 * 1024);
//! loop {
//!     match pump.next(&mut ws).await {
//!         PumpEvent::Message(msg) => {
//!             if let Some(text) = msg.as_text() {
//!                 hub.broadcast(text.to_owned());
//!             }
//!         }
//!         PumpEvent::Close(frame) => {
//!             pump.leave();
//!             let _ = ws.close(frame.code, frame.reason()).await;
//!             return;
//!         }
//!         // `Ended`, and any kind a later version adds.
//!         _ => return,
//!     }
//! }
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::broadcast::Member;
use crate::error::Error;
use crate::message::Message;
use crate::websocket::WebSocket;
use ferrows_proto::{CloseCode, CloseFrame};

/// At most this many queued messages are moved to the write buffer per
/// wake-up, so one busy connection cannot monopolise a worker thread.
const PULL_BUDGET: usize = 256;

/// What woke the pump up.
#[derive(Debug)]
#[non_exhaustive]
pub enum PumpEvent {
    /// A message (or control frame) from the peer. A close frame was
    /// already answered: the connection is over.
    Message(Message),
    /// The connection ended: the peer's close was answered (`None`), or an
    /// error (the close frame for a protocol error was already sent).
    Ended(Option<Error>),
    /// The member's queue ended: close the connection with this frame
    /// (1008 "too slow to keep up" if it lagged, 1001 if it was removed).
    Close(CloseFrame),
}

/// A member's queue pumped into a connection; see the [module docs](self).
pub struct Pump {
    member: Option<Member>,
    high_water_mark: usize,
    paused: Option<Pin<Box<Sleep>>>,
}

impl fmt::Debug for Pump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pump")
            .field("member", &self.member.as_ref().map(Member::id))
            .field("high_water_mark", &self.high_water_mark)
            .field("paused", &self.paused.as_ref().map(|s| s.deadline()))
            .finish()
    }
}

impl Pump {
    /// Pumps `member`'s queue into a connection, taking from the queue
    /// only while less than `high_water_mark` bytes wait to be written
    /// (usually the connection's `Config::write_high_water_mark`; at
    /// least 1).
    pub fn new(member: Member, high_water_mark: usize) -> Pump {
        Pump {
            member: Some(member),
            high_water_mark: high_water_mark.max(1),
            paused: None,
        }
    }

    /// The member, until [`Pump::leave`].
    pub fn member(&self) -> Option<&Member> {
        self.member.as_ref()
    }

    /// Leaves the hub: nothing more is queued for this connection. Returns
    /// the member (dropping it leaves the hub).
    pub fn leave(&mut self) -> Option<Member> {
        self.member.take()
    }

    /// Stops reading from the peer until `at` (queued messages are still
    /// written): for an inbound rate limit, TCP then slows the sender
    /// down. A later call replaces the instant.
    pub fn pause_reading_until(&mut self, at: Instant) {
        match &mut self.paused {
            Some(sleep) => sleep.as_mut().reset(at),
            None => self.paused = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Whether reading is paused (see [`Pump::pause_reading_until`]).
    pub fn is_reading_paused(&self) -> bool {
        self.paused
            .as_ref()
            .is_some_and(|s| s.deadline() > Instant::now())
    }

    /// Runs until something needs the caller: a message from the peer,
    /// the end of the connection, or the end of the member's queue.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: every message taken from the queue is in the
    /// connection's write buffer before this returns or yields, and a
    /// message read from the peer is returned in the same poll.
    pub async fn next<S>(&mut self, ws: &mut WebSocket<S>) -> PumpEvent
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        std::future::poll_fn(|cx| self.poll_next(ws, cx)).await
    }

    /// Polls for the next event; see [`Pump::next`].
    pub fn poll_next<S>(&mut self, ws: &mut WebSocket<S>, cx: &mut Context<'_>) -> Poll<PumpEvent>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        for _ in 0..4 {
            // Move queued messages into the write buffer, up to the
            // high-water mark: past it the peer is not keeping up, and its
            // queue (bounded) takes the slack.
            let mut queue_waiting = false;
            let mut budget = PULL_BUDGET;
            while ws.buffered_amount() < self.high_water_mark {
                let Some(member) = self.member.as_mut() else {
                    break;
                };
                if budget == 0 {
                    cx.waker().wake_by_ref();
                    queue_waiting = true;
                    break;
                }
                budget -= 1;
                match member.poll_recv(cx) {
                    Poll::Ready(Some(prepared)) => {
                        // Fails only once the connection is closing, which
                        // the read side reports next.
                        let _ = ws.queue_prepared(&prepared);
                    }
                    Poll::Ready(None) => return Poll::Ready(PumpEvent::Close(self.queue_ended())),
                    Poll::Pending => {
                        queue_waiting = true;
                        break;
                    }
                }
            }
            let reading = match &mut self.paused {
                None => true,
                Some(sleep) => {
                    if sleep.as_mut().poll(cx).is_ready() {
                        self.paused = None;
                        true
                    } else {
                        false
                    }
                }
            };
            if reading {
                // Read (this also writes what was queued).
                match ws.poll_recv(cx) {
                    Poll::Ready(Some(Ok(msg))) => return Poll::Ready(PumpEvent::Message(msg)),
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(PumpEvent::Ended(Some(e))),
                    Poll::Ready(None) => return Poll::Ready(PumpEvent::Ended(None)),
                    Poll::Pending => {}
                }
            } else if ws.buffered_amount() > 0 {
                // Not reading: write what is queued.
                if let Poll::Ready(Err(e)) = Pin::new(&mut *ws).poll_flush(cx) {
                    return Poll::Ready(PumpEvent::Ended(Some(e)));
                }
            }
            if ws.buffered_amount() >= self.high_water_mark {
                // Waiting for the socket while the queue is not drained:
                // the hub wakes us if it drops this member as too slow.
                if self
                    .member
                    .as_ref()
                    .is_some_and(|m| m.poll_lagged(cx).is_ready())
                {
                    return Poll::Ready(PumpEvent::Close(self.queue_ended()));
                }
                return Poll::Pending;
            }
            if queue_waiting || self.member.is_none() {
                return Poll::Pending;
            }
            // The write buffer drained below the mark during this poll but
            // the queue was not looked at since: go round again.
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// The close frame for a member whose queue has ended: too slow, or
    /// removed from the hub.
    fn queue_ended(&self) -> CloseFrame {
        if self.member.as_ref().is_some_and(Member::is_lagged) {
            CloseFrame::new(CloseCode::POLICY_VIOLATION, "too slow to keep up")
        } else {
            CloseFrame::new(CloseCode::GOING_AWAY, "")
        }
    }
}
