//! The event client's task: connecting, the connection loop, closing,
//! reconnecting.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use ferrows_proto::handshake::{ClientHandshakeError, Response};
use ferrows_proto::{CloseCode, CloseFrame, OpCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::PollSender;

use super::{Backoff, ErrorKind, Event, LocalEnd, SendError, SendRequest, Shared};
use crate::client::{ClientBuilder, WsUrl};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::stream::MaybeTlsStream;
use crate::websocket::WebSocket;

/// At most this many sent messages wait for their write confirmation at
/// once; further sends wait (within their timeout) for a slot.
const MAX_IN_FLIGHT: usize = 256;
/// Work done per wake-up before yielding to other tasks.
const ROUNDS: usize = 32;
/// Requests handled per wake-up while not connected.
const REFUSE_BUDGET: usize = 256;

/// Starts the client's task.
pub(super) fn spawn<D: Dial>(
    dial: D,
    shared: Arc<Shared>,
    finished: watch::Sender<bool>,
    events: mpsc::Sender<Event>,
    sends: mpsc::Receiver<SendRequest>,
    client: ClientBuilder,
    settings: Settings,
) {
    let closed = events.clone();
    let driver = Driver {
        shared,
        finished,
        outbox: Outbox {
            tx: PollSender::new(events),
            queue: VecDeque::new(),
            closed: Box::pin(async move { closed.closed().await }),
        },
        sends,
        sends_open: true,
        client,
        settings,
    };
    tokio::spawn(driver.run(dial));
}

/// A message handed to the connection, waiting to be written.
struct Ack {
    /// Total bytes of our sends queued, up to and including this one.
    mark: u64,
    deadline: Instant,
    reply: oneshot::Sender<Result<(), SendError>>,
}

/// How a connection is made.
pub(super) trait Dial: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    fn dial(
        &mut self,
        client: &ClientBuilder,
        timeout: Duration,
    ) -> impl Future<Output = Result<(WebSocket<Self::Stream>, Response)>> + Send + 'static;
}

/// TCP (and TLS for `wss://`).
pub(super) struct TcpDial;

impl Dial for TcpDial {
    type Stream = MaybeTlsStream<TcpStream>;

    fn dial(
        &mut self,
        client: &ClientBuilder,
        _timeout: Duration,
    ) -> impl Future<Output = Result<(WebSocket<Self::Stream>, Response)>> + Send + 'static {
        // Bounded by the handshake timeout inside.
        client.clone().connect()
    }
}

/// A transport from the application.
pub(super) struct FnDial<F>(pub(super) F);

impl<F, Fut, S> Dial for FnDial<F>
where
    F: FnMut(&WsUrl) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = S;

    fn dial(
        &mut self,
        client: &ClientBuilder,
        timeout: Duration,
    ) -> impl Future<Output = Result<(WebSocket<S>, Response)>> + Send + 'static {
        let client = client.clone();
        let connecting = client.url().map(|url| (self.0)(&url));
        async move {
            let work = async {
                let io = connecting?.await?;
                client.connect_on(io).await
            };
            tokio::time::timeout(timeout, work)
                .await
                .map_err(|_| Error::HandshakeTimeout)?
        }
    }
}

/// The event channel's sending side, with a small queue of events waiting
/// for room (bounded: the connection stops reading while it is not empty).
struct Outbox {
    tx: PollSender<Event>,
    queue: VecDeque<Event>,
    /// Completes when the application drops [`Events`].
    closed: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// The application dropped [`Events`].
struct Gone;

impl Outbox {
    fn push(&mut self, event: Event) {
        self.queue.push_back(event);
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Delivers queued events; ready once all are delivered.
    fn poll_deliver(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Gone>> {
        while !self.queue.is_empty() {
            match self.tx.poll_reserve(cx) {
                Poll::Ready(Ok(())) => {
                    if let Some(event) = self.queue.pop_front() {
                        if self.tx.send_item(event).is_err() {
                            return Poll::Ready(Err(Gone));
                        }
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Err(Gone)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_gone(&mut self, cx: &mut Context<'_>) -> bool {
        self.closed.as_mut().poll(cx).is_ready()
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    pub(super) handshake_timeout: Duration,
    pub(super) high_water_mark: usize,
    pub(super) reconnect: bool,
    pub(super) backoff: Backoff,
    pub(super) inactivity_timeout: Option<Duration>,
    pub(super) ping_interval: Option<Duration>,
    pub(super) pingpong_timeout: Option<Duration>,
}

/// What interrupted a wait outside a connection.
enum Interrupt {
    Local,
    Gone,
}

/// The client's background task.
struct Driver {
    shared: Arc<Shared>,
    finished: watch::Sender<bool>,
    outbox: Outbox,
    sends: mpsc::Receiver<SendRequest>,
    sends_open: bool,
    client: ClientBuilder,
    settings: Settings,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Also when the runtime drops the task: never leave waiters hanging.
        self.shared.connected.store(false, Ordering::Release);
        self.finished.send_replace(true);
    }
}

impl Driver {
    async fn run<D: Dial>(mut self, mut dial: D) {
        let mut attempt: u32 = 0;
        loop {
            let connecting = dial.dial(&self.client, self.settings.handshake_timeout);
            match self.service(connecting).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "connection attempt failed");
                    self.outbox.push(error_event(e));
                }
                Ok(Ok((ws, response))) => {
                    attempt = 0;
                    if self.session(ws, response).await {
                        break;
                    }
                }
            }
            if !self.settings.reconnect {
                break;
            }
            let delay = self.settings.backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            tracing::debug!(?delay, "reconnecting after a delay");
            if self.service(tokio::time::sleep(delay)).await.is_err() {
                break;
            }
        }
        self.finish().await;
    }

    /// Runs `fut` while not connected: answers local requests, refuses
    /// sends and delivers events meanwhile.
    async fn service<F: Future>(&mut self, fut: F) -> Result<F::Output, Interrupt> {
        let mut fut = pin!(fut);
        std::future::poll_fn(|cx| {
            if self.shared.poll_request(cx).is_some() {
                return Poll::Ready(Err(Interrupt::Local));
            }
            if self.outbox.poll_gone(cx) {
                return Poll::Ready(Err(Interrupt::Gone));
            }
            if let Poll::Ready(Err(Gone)) = self.outbox.poll_deliver(cx) {
                return Poll::Ready(Err(Interrupt::Gone));
            }
            self.refuse_sends(cx, &SendError::NotConnected);
            fut.as_mut().poll(cx).map(Ok)
        })
        .await
    }

    fn refuse_sends(&mut self, cx: &mut Context<'_>, why: &SendError) {
        for _ in 0..REFUSE_BUDGET {
            if !self.sends_open {
                return;
            }
            match self.sends.poll_recv(cx) {
                Poll::Ready(Some(request)) => {
                    let _ = request.reply.send(Err(why.clone()));
                }
                Poll::Ready(None) => self.sends_open = false,
                Poll::Pending => return,
            }
        }
        cx.waker().wake_by_ref();
    }

    /// Runs one connection; returns whether the client is to stop for good.
    async fn session<S>(&mut self, mut ws: WebSocket<S>, response: Response) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        ws.set_fragment_mode(true);
        self.shared.connected.store(true, Ordering::Release);
        self.outbox.push(Event::Connected {
            response: Box::new(response),
        });
        let settings = self.settings;
        let now = Instant::now();
        let mut s = Session {
            d: self,
            ws,
            acks: VecDeque::new(),
            waiting: None,
            sent_total: 0,
            next_ping: settings.ping_interval.map(|i| now + i),
            pong_due: None,
            quiet_deadline: settings.inactivity_timeout.map(|t| now + t),
            timer: Box::pin(tokio::time::sleep_until(now)),
            server_close: None,
            settings,
        };
        let outcome = std::future::poll_fn(|cx| s.poll_run(cx)).await;
        let stop = match outcome {
            Outcome::Ended => {
                let (code, reason) = s
                    .server_close
                    .take()
                    .unwrap_or((CloseCode::NO_STATUS, String::new()));
                s.d.outbox.push(Event::Closed { code, reason });
                false
            }
            Outcome::Failed(e) => {
                s.d.outbox.push(error_event(e));
                s.d.outbox.push(Event::Disconnected);
                false
            }
            Outcome::PongTimeout => {
                tracing::debug!("no pong in time: dropping the connection");
                s.d.outbox.push(Event::Error {
                    kind: ErrorKind::PongTimeout,
                    error: None,
                });
                s.d.outbox.push(Event::Disconnected);
                false
            }
            Outcome::Local(LocalEnd::Stop) => {
                s.d.outbox.push(Event::Disconnected);
                true
            }
            Outcome::Local(LocalEnd::Close(frame)) => {
                s.close(frame).await;
                true
            }
            Outcome::Inactive => {
                tracing::debug!("inactivity timeout: closing");
                s.close(CloseFrame::new(CloseCode::NORMAL, "inactivity timeout"))
                    .await;
                true
            }
            Outcome::Gone => {
                s.close(CloseFrame::new(CloseCode::GOING_AWAY, "")).await;
                true
            }
        };
        let why = if stop {
            SendError::Closed
        } else {
            SendError::NotConnected
        };
        s.fail_sends(&why);
        self.shared.connected.store(false, Ordering::Release);
        stop
    }

    async fn finish(mut self) {
        self.shared.connected.store(false, Ordering::Release);
        self.sends.close();
        while let Ok(request) = self.sends.try_recv() {
            let _ = request.reply.send(Err(SendError::Closed));
        }
        self.finished.send_replace(true);
        self.outbox.push(Event::Finish);
        // Until delivered, or the application dropped the receiver.
        let _ = std::future::poll_fn(|cx| self.outbox.poll_deliver(cx)).await;
    }
}

fn error_event(error: Error) -> Event {
    let kind = match &error {
        Error::ClientHandshake(ClientHandshakeError::NotSwitching { status, .. }) => {
            ErrorKind::Handshake {
                status: Some(*status),
            }
        }
        Error::ClientHandshake(_) | Error::HandshakeTimeout => {
            ErrorKind::Handshake { status: None }
        }
        Error::Protocol(e) => ErrorKind::Protocol {
            code: e.close_code(),
        },
        _ => ErrorKind::Transport,
    };
    Event::Error {
        kind,
        error: Some(Arc::new(error)),
    }
}

/// How a connection's main loop ended.
enum Outcome {
    /// The server closed and the closing handshake completed.
    Ended,
    /// The connection failed.
    Failed(Error),
    PongTimeout,
    Local(LocalEnd),
    Inactive,
    Gone,
}

/// How our closing handshake ended.
enum CloseEnd {
    Clean,
    Failed(Error),
    Stopped,
}

/// One open connection.
struct Session<'d, S> {
    d: &'d mut Driver,
    ws: WebSocket<S>,
    acks: VecDeque<Ack>,
    /// A send waiting for room in the write buffer.
    waiting: Option<SendRequest>,
    /// Total bytes of our sends queued on this connection.
    sent_total: u64,
    next_ping: Option<Instant>,
    /// A ping is unanswered: the pong is due by then.
    pong_due: Option<Instant>,
    quiet_deadline: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    /// The server's close frame, once received.
    server_close: Option<(CloseCode, String)>,
    settings: Settings,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<'_, S> {
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        for _ in 0..ROUNDS {
            if let Some(end) = self.d.shared.poll_request(cx) {
                return Poll::Ready(Outcome::Local(end));
            }
            if self.d.outbox.poll_gone(cx) {
                return Poll::Ready(Outcome::Gone);
            }
            if let Poll::Ready(Err(Gone)) = self.d.outbox.poll_deliver(cx) {
                return Poll::Ready(Outcome::Gone);
            }
            self.admit(cx);
            let mut progress = false;
            // Whether everything received has been read: only then can
            // the absence of a pong or of data be told.
            let mut read_idle = false;
            if self.d.outbox.is_empty() {
                // Reads, and writes what is queued.
                match self.ws.poll_recv(cx) {
                    Poll::Ready(Some(Ok(msg))) => {
                        self.on_message(msg);
                        progress = true;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Outcome::Failed(e)),
                    Poll::Ready(None) => return Poll::Ready(Outcome::Ended),
                    Poll::Pending => read_idle = true,
                }
            } else if self.ws.buffered_amount() > 0 {
                // Not reading until the application takes its events, but
                // still writing. The flush's state lives in the WebSocket
                // and the socket keeps the waker: a fresh future is fine.
                if let Poll::Ready(Err(e)) = pin!(self.ws.flush()).poll(cx) {
                    return Poll::Ready(Outcome::Failed(e));
                }
            }
            self.resolve_acks();
            let now = Instant::now();
            // While the application is slow to take its events the socket
            // is not read, so a pong or data may be waiting there unseen:
            // the pong and inactivity deadlines are suspended meanwhile.
            if read_idle && self.pong_due.is_some_and(|t| now >= t) {
                return Poll::Ready(Outcome::PongTimeout);
            }
            if let (Some(at), Some(interval)) = (self.next_ping, self.settings.ping_interval) {
                if now >= at {
                    // Small and never waits on backpressure.
                    let _ = self.ws.queue(Message::Ping(Bytes::new()));
                    self.next_ping = Some(now + interval);
                    if self.pong_due.is_none() {
                        self.pong_due = self.settings.pingpong_timeout.map(|t| now + t);
                    }
                    progress = true;
                }
            }
            if read_idle && self.quiet_deadline.is_some_and(|t| now >= t) {
                return Poll::Ready(Outcome::Inactive);
            }
            self.expire_sends(now);
            if let Some(next) = self.next_deadline(read_idle) {
                if self.timer.deadline() != next {
                    self.timer.as_mut().reset(next);
                }
                if self.timer.as_mut().poll(cx).is_ready() {
                    progress = true;
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn on_message(&mut self, msg: Message) {
        let (opcode, data, offset, fin) = match msg {
            Message::Fragment(f) => {
                self.touch();
                (f.opcode, f.data, f.message_offset, f.fin)
            }
            Message::Text(t) => {
                self.touch();
                (OpCode::Text, t.into_bytes(), 0, true)
            }
            Message::Binary(b) => {
                self.touch();
                (OpCode::Binary, b, 0, true)
            }
            Message::Ping(p) => (OpCode::Ping, p, 0, true),
            Message::Pong(p) => {
                self.pong_due = None;
                (OpCode::Pong, p, 0, true)
            }
            Message::Close(frame) => {
                let (code, reason) = match &frame {
                    Some(f) => (f.code, f.reason().to_owned()),
                    None => (CloseCode::NO_STATUS, String::new()),
                };
                tracing::debug!(%code, %reason, "the server closed the connection");
                self.d.outbox.push(Event::Error {
                    kind: ErrorKind::ServerClose {
                        code,
                        reason: reason.clone(),
                    },
                    error: None,
                });
                self.server_close = Some((code, reason));
                return;
            }
        };
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        self.d.outbox.push(Event::Data {
            opcode,
            payload_len: offset.saturating_add(len),
            payload_offset: offset,
            fin,
            data,
        });
    }

    /// Data went one way or the other: restart the inactivity clock.
    fn touch(&mut self) {
        if let Some(t) = self.settings.inactivity_timeout {
            self.quiet_deadline = Some(Instant::now() + t);
        }
    }

    /// Moves sends into the write buffer while it has room.
    fn admit(&mut self, cx: &mut Context<'_>) {
        let high_water_mark = self.settings.high_water_mark;
        for _ in 0..REFUSE_BUDGET {
            let request = match self.waiting.take() {
                Some(r) => r,
                None if !self.d.sends_open => return,
                None => match self.d.sends.poll_recv(cx) {
                    Poll::Ready(Some(r)) => r,
                    Poll::Ready(None) => {
                        self.d.sends_open = false;
                        return;
                    }
                    Poll::Pending => return,
                },
            };
            if request.reply.is_closed() {
                // The caller gave up before the message was taken.
                continue;
            }
            if Instant::now() >= request.deadline {
                let _ = request.reply.send(Err(SendError::Timeout));
                continue;
            }
            if self.ws.buffered_amount() >= high_water_mark || self.acks.len() >= MAX_IN_FLIGHT {
                self.waiting = Some(request);
                return;
            }
            let data = matches!(
                request.message,
                Message::Text(_) | Message::Binary(_) | Message::Fragment(_)
            );
            let before = self.ws.buffered_amount();
            match self.ws.queue(request.message) {
                Ok(()) => {
                    let added = self.ws.buffered_amount().saturating_sub(before);
                    self.sent_total = self
                        .sent_total
                        .saturating_add(u64::try_from(added).unwrap_or(u64::MAX));
                    self.acks.push_back(Ack {
                        mark: self.sent_total,
                        deadline: request.deadline,
                        reply: request.reply,
                    });
                    if data {
                        self.touch();
                    }
                }
                Err(Error::Closed) => {
                    let _ = request.reply.send(Err(SendError::Closed));
                }
                Err(e) => {
                    let _ = request.reply.send(Err(SendError::Invalid(e.to_string())));
                }
            }
        }
        cx.waker().wake_by_ref();
    }

    /// Confirms the sends whose bytes have all left the write buffer.
    fn resolve_acks(&mut self) {
        let buffered = u64::try_from(self.ws.buffered_amount()).unwrap_or(u64::MAX);
        // The buffer is FIFO: a message is written once no more than the
        // bytes queued after it remain. (Pongs queued after it make this
        // conservative: a confirmation can only come late, never early.)
        while let Some(front) = self.acks.front() {
            if buffered > self.sent_total.saturating_sub(front.mark) {
                break;
            }
            if let Some(ack) = self.acks.pop_front() {
                let _ = ack.reply.send(Ok(()));
            }
        }
    }

    fn expire_sends(&mut self, now: Instant) {
        if self.waiting.as_ref().is_some_and(|r| now >= r.deadline) {
            if let Some(r) = self.waiting.take() {
                let _ = r.reply.send(Err(SendError::Timeout));
            }
        }
        if self.acks.iter().any(|a| now >= a.deadline) {
            let (expired, live): (VecDeque<Ack>, VecDeque<Ack>) = std::mem::take(&mut self.acks)
                .into_iter()
                .partition(|a| now >= a.deadline);
            self.acks = live;
            for ack in expired {
                let _ = ack.reply.send(Err(SendError::Timeout));
            }
        }
    }

    /// The earliest deadline to wake up for (`read_idle`: see `poll_run`).
    fn next_deadline(&self, read_idle: bool) -> Option<Instant> {
        [
            self.next_ping,
            self.pong_due.filter(|_| read_idle),
            self.quiet_deadline.filter(|_| read_idle),
            self.waiting.as_ref().map(|r| r.deadline),
            self.acks.iter().map(|a| a.deadline).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Answers every send still pending.
    fn fail_sends(&mut self, why: &SendError) {
        if let Some(r) = self.waiting.take() {
            let _ = r.reply.send(Err(why.clone()));
        }
        for ack in self.acks.drain(..) {
            let _ = ack.reply.send(Err(why.clone()));
        }
    }

    /// Our closing handshake: sends `frame`, discards data until the
    /// server's close, within the close timeout; a stop request cuts it
    /// short.
    async fn close(&mut self, frame: CloseFrame) {
        // A code that may not be sent (1005, 1006, ...) closes without one
        // (the server sees 1005). Fails only if a close frame went out
        // already.
        let frame = frame.code.is_valid_on_wire().then_some(frame);
        let _ = self.ws.queue(Message::Close(frame));
        if let Some(w) = self.waiting.take() {
            let _ = w.reply.send(Err(SendError::Closed));
        }
        let end = std::future::poll_fn(|cx| {
            for _ in 0..ROUNDS {
                if let Some(LocalEnd::Stop) = self.d.shared.poll_request(cx) {
                    return Poll::Ready(CloseEnd::Stopped);
                }
                // Events are only delivered here; if the application has
                // gone, the close goes on regardless.
                let _ = self.d.outbox.poll_deliver(cx);
                self.d.refuse_sends(cx, &SendError::Closed);
                let item = self.ws.poll_recv(cx);
                self.resolve_acks();
                match item {
                    Poll::Ready(Some(Ok(Message::Close(frame)))) => {
                        self.server_close = Some(match frame {
                            Some(f) => (f.code, f.reason().to_owned()),
                            None => (CloseCode::NO_STATUS, String::new()),
                        });
                    }
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(CloseEnd::Failed(e)),
                    Poll::Ready(None) => return Poll::Ready(CloseEnd::Clean),
                    Poll::Pending => return Poll::Pending,
                }
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await;
        match end {
            CloseEnd::Clean => {
                let (code, reason) = self
                    .server_close
                    .take()
                    .unwrap_or((CloseCode::NO_STATUS, String::new()));
                self.d.outbox.push(Event::Closed { code, reason });
            }
            CloseEnd::Stopped => self.d.outbox.push(Event::Disconnected),
            CloseEnd::Failed(e) => {
                self.d.outbox.push(error_event(e));
                self.d.outbox.push(Event::Disconnected);
            }
        }
    }
}
