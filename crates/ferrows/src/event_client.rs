//! An event-driven client in the style of ESP-IDF's `esp_websocket_client`:
//! start it, read [`Event`]s (connected, data, error, closed, disconnected,
//! finish), send with a timeout; it pings, watches for pongs, reconnects
//! with backoff and can shut itself down after a quiet period.
//!
//! ```no_run
//! use std::time::Duration;
//! use ferrows::event_client::{Event, EventClient};
//!
//! # async fn demo() -> ferrows::Result<()> {
//! let (client, mut events) = EventClient::builder("ws://127.0.0.1:1337/")
//!     .inactivity_timeout(Some(Duration::from_secs(10)))
//!     .start()?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Connected { .. } => {
//!             client.send_text(r#"{"hello":1}"#, Duration::from_secs(5)).await.ok();
//!         }
//!         Event::Data { opcode, data, payload_offset, payload_len, fin } => {
//!             println!("{opcode:?}: {} bytes at {payload_offset} (of {payload_len} so far, fin {fin})", data.len());
//!         }
//!         Event::Error { kind, .. } => eprintln!("error: {kind}"),
//!         Event::Closed { code, reason } => println!("closed: {code} {reason}"),
//!         Event::Disconnected => println!("connection lost"),
//!         Event::Finish => break,
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Events
//!
//! Events come through a bounded channel, [`Events`], rather than a
//! callback: the application drives its own loop (and can `select!` it with
//! anything else), and a slow consumer slows the connection down — the
//! client stops reading from the socket until the channel has room —
//! instead of making it buffer without bound.
//!
//! Each connection attempt produces, in order:
//!
//! * failing: one [`Event::Error`] (transport or handshake);
//! * succeeding: [`Event::Connected`], any number of [`Event::Data`], then
//!   exactly one end marker — [`Event::Closed`] if the closing handshake
//!   completed (whoever started it), [`Event::Disconnected`] if not —
//!   preceded by an [`Event::Error`] saying why, unless the close was ours.
//!
//! Then, with reconnection on, the next attempt follows after the backoff
//! delay; finally, once, [`Event::Finish`]. The client reconnects after
//! errors and after a close the *server* started; it never reconnects after
//! [`EventClient::close`], [`EventClient::stop`], the inactivity timeout, or
//! when [`Events`] is dropped.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use ferrows_proto::handshake::{ClientHandshakeError, Response};
use ferrows_proto::{CloseCode, CloseFrame, OpCode};
use futures_core::Stream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::PollSender;

use crate::client::{ClientBuilder, WsUrl};
use crate::config::Config;
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

/// Something that happened to an [`EventClient`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The opening handshake succeeded (`WEBSOCKET_EVENT_CONNECTED`).
    Connected {
        /// The server's handshake response (status 101 and its headers,
        /// e.g. the selected subprotocol).
        response: Box<Response>,
    },
    /// A frame arrived (`WEBSOCKET_EVENT_DATA`): each data frame as soon as
    /// it is complete, so a fragmented message arrives in pieces; pings
    /// and pongs too (pings are answered automatically).
    ///
    /// The fields follow ESP-IDF's, but count within the *message*, not
    /// within one frame:
    ///
    /// | field | here | ESP-IDF |
    /// | --- | --- | --- |
    /// | `opcode` | the message's type (`Text`/`Binary`) on every frame, or `Ping`/`Pong` | the frame's opcode (`0x0` on continuation frames) |
    /// | `data` | this frame's whole payload (`data_len` = `data.len()`) | a chunk of at most the buffer size |
    /// | `payload_offset` | where `data` starts within the message | where the chunk starts within the frame |
    /// | `payload_len` | message bytes received so far, up to the end of `data` (= `payload_offset + data.len()`); the whole message's length when `fin` | the frame's payload length |
    /// | `fin` | last frame of the message | the frame's FIN bit |
    ///
    /// So a message is complete when `fin` is true, and is reassembled by
    /// appending `data` at `payload_offset`. With compression, offsets and
    /// lengths count decompressed bytes. A text frame may end inside a
    /// UTF-8 character; the message as a whole is validated.
    Data {
        /// `Text` or `Binary` (the message's type), `Ping` or `Pong`.
        opcode: OpCode,
        /// The frame's payload.
        data: Bytes,
        /// Message bytes received so far, including `data`.
        payload_len: u64,
        /// Offset of `data` within the message.
        payload_offset: u64,
        /// Whether this frame ends the message.
        fin: bool,
    },
    /// Something went wrong (`WEBSOCKET_EVENT_ERROR`); see [`ErrorKind`].
    Error {
        /// What kind of failure.
        kind: ErrorKind,
        /// The underlying error, when there is one.
        error: Option<Arc<Error>>,
    },
    /// The connection ended with a complete closing handshake
    /// (`WEBSOCKET_EVENT_CLOSED`). `code` is the one in the server's close
    /// frame (1005 if it had none).
    Closed {
        /// The close code.
        code: CloseCode,
        /// The close reason.
        reason: String,
    },
    /// The connection ended without a closing handshake
    /// (`WEBSOCKET_EVENT_DISCONNECTED`).
    Disconnected,
    /// The client has stopped for good (`WEBSOCKET_EVENT_FINISH`): the last
    /// event.
    Finish,
}

/// What an [`Event::Error`] is about (ESP-IDF's `error_type`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The transport failed: DNS, connection refused, TLS, reset, the
    /// connection dropped without a close frame, a close that timed out.
    Transport,
    /// The opening handshake failed: `status` is the HTTP status if the
    /// server answered with something other than 101 (e.g. 403, 404), and
    /// `None` for an invalid response or a timeout.
    Handshake {
        /// The HTTP status the server sent.
        status: Option<u16>,
    },
    /// No pong arrived within the pong timeout after a ping: the
    /// connection was dropped.
    PongTimeout,
    /// The server closed the connection (an [`Event::Closed`] with the same
    /// code follows once the closing handshake completes).
    ServerClose {
        /// The code in the server's close frame (1005 if none).
        code: CloseCode,
        /// The reason in the server's close frame.
        reason: String,
    },
    /// The server violated the protocol; the connection was failed with
    /// `code`.
    Protocol {
        /// The close code sent to the server.
        code: CloseCode,
    },
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Transport => f.write_str("transport error"),
            ErrorKind::Handshake { status: Some(s) } => {
                write!(f, "handshake refused with HTTP {s}")
            }
            ErrorKind::Handshake { status: None } => f.write_str("handshake failed"),
            ErrorKind::PongTimeout => f.write_str("no pong in time"),
            ErrorKind::ServerClose { code, reason } => {
                write!(f, "server closed the connection: {code}")?;
                if !reason.is_empty() {
                    write!(f, " {reason:?}")?;
                }
                Ok(())
            }
            ErrorKind::Protocol { code } => {
                write!(f, "server broke the protocol: closed with {code}")
            }
        }
    }
}

/// Why a send did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The message was not written to the socket within the timeout. If it
    /// had already been handed to the connection's write buffer (the server
    /// reads slowly), it is still written later — a frame is never cut in
    /// half — otherwise it is dropped.
    Timeout,
    /// Not connected: connecting, waiting to reconnect, or the connection
    /// ended before the message was written.
    NotConnected,
    /// The client is closing or has stopped.
    Closed,
    /// The message cannot be sent: a control frame over 125 bytes, a
    /// fragment out of order, or a close frame (use
    /// [`EventClient::close`]).
    Invalid(String),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Timeout => f.write_str("send timed out"),
            SendError::NotConnected => f.write_str("not connected"),
            SendError::Closed => f.write_str("the client is closing or stopped"),
            SendError::Invalid(why) => write!(f, "cannot send: {why}"),
        }
    }
}

impl std::error::Error for SendError {}

/// Reconnection delays: `initial`, then multiplied by `factor` after each
/// failed attempt up to `max`, each reduced by a random fraction of up to
/// `jitter` so that many clients do not reconnect in step. The delay
/// starts over at `initial` once a connection succeeds.
///
/// ```
/// use std::time::Duration;
/// let b = ferrows::event_client::Backoff::default();
/// assert_eq!(b.base_delay(0), Duration::from_secs(1));
/// assert_eq!(b.base_delay(3), Duration::from_secs(8));
/// assert_eq!(b.base_delay(10), Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Backoff {
    /// The first delay. Default: 1 s (at least 1 ms).
    pub initial: Duration,
    /// The longest delay. Default: 30 s.
    pub max: Duration,
    /// The growth per failed attempt (at least 1). Default: 2.
    pub factor: f64,
    /// The largest fraction taken off each delay at random, from 0 (no
    /// jitter) to 1. Default: 0.5 ("equal jitter": between half and all of
    /// the delay).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            factor: 2.0,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// Delays from `initial` to `max`, growing by `factor`, with the
    /// default jitter.
    pub fn new(initial: Duration, max: Duration, factor: f64) -> Backoff {
        Backoff {
            initial,
            max,
            factor,
            ..Backoff::default()
        }
    }

    /// Sets [`Backoff::jitter`] (0 for exact, predictable delays).
    pub fn jitter(mut self, fraction: f64) -> Backoff {
        self.jitter = fraction;
        self
    }

    /// The delay before attempt `attempt + 1` after `attempt` failures in
    /// a row, before jitter: `min(max, initial × factor^attempt)`.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.factor.powi(exp);
        if !secs.is_finite() {
            return self.max;
        }
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The delay after `attempt` failures, with jitter applied.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.base_delay(attempt)
            .mul_f64(1.0 - self.jitter * random_unit())
    }

    fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::Config(format!("backoff: {why}")));
        if self.initial < Duration::from_millis(1) {
            return bad("the initial delay must be at least 1 ms");
        }
        if self.max < self.initial {
            return bad("the maximum delay must not be below the initial one");
        }
        if !(self.factor >= 1.0 && self.factor.is_finite()) {
            return bad("the factor must be a finite number of at least 1");
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad("the jitter must be between 0 and 1");
        }
        Ok(())
    }
}

/// A number in `[0, 1)`, different on every call: enough to spread
/// reconnection times, without a dependency on a random number crate.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    // Every `RandomState` gets fresh keys, from a per-thread random seed.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let bits = h.finish() >> 11;
    // 53 bits: exactly representable.
    bits as f64 / (1u64 << 53) as f64
}

/// Settings for an [`EventClient`]; from [`EventClient::builder`].
#[derive(Debug, Clone)]
pub struct EventClientBuilder {
    client: ClientBuilder,
    config: Config,
    reconnect: bool,
    backoff: Backoff,
    inactivity_timeout: Option<Duration>,
    ping_interval: Option<Duration>,
    pingpong_timeout: Option<Duration>,
    event_capacity: usize,
    send_capacity: usize,
}

impl EventClientBuilder {
    /// Sets the connection settings ([`Config`]): limits, handshake and
    /// close timeouts, compression.
    pub fn config(mut self, config: Config) -> EventClientBuilder {
        self.config = config;
        self
    }

    /// Adds a header to the handshake request (e.g. `Authorization`).
    pub fn header(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> EventClientBuilder {
        self.client = self.client.header(name, value);
        self
    }

    /// Offers a subprotocol (call again for more, in preference order).
    pub fn protocol(mut self, protocol: impl Into<String>) -> EventClientBuilder {
        self.client = self.client.protocol(protocol);
        self
    }

    /// Uses this TLS configuration for `wss://` URLs.
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> EventClientBuilder {
        self.client = self.client.tls_config(config);
        self
    }

    /// Whether to reconnect after errors and server-side closes. Default:
    /// true (as ESP-IDF's client).
    pub fn reconnect(mut self, on: bool) -> EventClientBuilder {
        self.reconnect = on;
        self
    }

    /// Sets the reconnection delays. Default: [`Backoff::default`], 1 s
    /// doubling to 30 s, with jitter.
    pub fn backoff(mut self, backoff: Backoff) -> EventClientBuilder {
        self.backoff = backoff;
        self
    }

    /// Shuts the client down after this long without a message in either
    /// direction (pings and pongs do not count): it closes with 1000 and
    /// finishes, without reconnecting. Default: `None` (never).
    pub fn inactivity_timeout(mut self, timeout: Option<Duration>) -> EventClientBuilder {
        self.inactivity_timeout = timeout;
        self
    }

    /// Sends a ping this often while connected. Default: 10 s (ESP-IDF's
    /// `ping_interval_sec`); `None` to send none.
    pub fn ping_interval(mut self, interval: Option<Duration>) -> EventClientBuilder {
        self.ping_interval = interval;
        self
    }

    /// Drops the connection ([`ErrorKind::PongTimeout`]) if no pong arrives
    /// this long after a ping. Default: 20 s; `None` to never drop it
    /// (ESP-IDF's `disable_pingpong_discon`).
    pub fn pingpong_timeout(mut self, timeout: Option<Duration>) -> EventClientBuilder {
        self.pingpong_timeout = timeout;
        self
    }

    /// How many events may wait unread before the client stops reading
    /// from the socket. Default: 64.
    pub fn event_capacity(mut self, events: usize) -> EventClientBuilder {
        self.event_capacity = events.max(1);
        self
    }

    /// How many sends may wait to be taken by the connection. Default: 32.
    pub fn send_capacity(mut self, sends: usize) -> EventClientBuilder {
        self.send_capacity = sends.max(1);
        self
    }

    fn validate(&self) -> Result<()> {
        self.client.url()?;
        self.config.validate()?;
        self.backoff.validate()?;
        let positive = |d: Option<Duration>, what: &str| match d {
            Some(d) if d.is_zero() => Err(Error::Config(format!("{what} must be positive"))),
            _ => Ok(()),
        };
        positive(self.inactivity_timeout, "the inactivity timeout")?;
        positive(self.ping_interval, "the ping interval")?;
        positive(self.pingpong_timeout, "the pong timeout")?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Config(
                "EventClient must be started from within a tokio runtime".into(),
            ));
        }
        Ok(())
    }

    /// Starts the client in a background task: it connects (TCP, then TLS
    /// for `wss://`), and keeps the connection going as configured.
    /// Returns the handle and the event stream.
    ///
    /// # Errors
    ///
    /// [`Error::Url`] or [`Error::Config`] for invalid settings, or when
    /// called outside a tokio runtime. Connection failures are reported as
    /// events.
    pub fn start(self) -> Result<(EventClient, Events)> {
        self.start_dial(TcpDial)
    }

    /// Like [`EventClientBuilder::start`], over a transport of your own:
    /// `connect` is called for every connection attempt and returns a
    /// connected stream (a Unix socket, a proxy tunnel, an in-memory pipe
    /// in tests...) on which the opening handshake then runs. The URL still
    /// supplies the `Host` header and the path. The connect and the
    /// handshake together are bounded by the handshake timeout.
    ///
    /// # Errors
    ///
    /// As [`EventClientBuilder::start`].
    pub fn start_with<F, Fut, S>(self, connect: F) -> Result<(EventClient, Events)>
    where
        F: FnMut(&WsUrl) -> Fut + Send + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.start_dial(FnDial(connect))
    }

    fn start_dial<D: Dial>(self, dial: D) -> Result<(EventClient, Events)> {
        self.validate()?;
        let (event_tx, event_rx) = mpsc::channel(self.event_capacity);
        let (send_tx, send_rx) = mpsc::channel(self.send_capacity);
        let (finished_tx, finished_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            control: Mutex::new(ControlState::default()),
            connected: AtomicBool::new(false),
            finished: finished_rx,
        });
        let closed_tx = event_tx.clone();
        let driver = Driver {
            shared: shared.clone(),
            finished: finished_tx,
            outbox: Outbox {
                tx: PollSender::new(event_tx),
                queue: VecDeque::new(),
                closed: Box::pin(async move { closed_tx.closed().await }),
            },
            sends: send_rx,
            sends_open: true,
            client: self.client.config(self.config.clone()),
            settings: Settings {
                handshake_timeout: self.config.handshake_timeout,
                high_water_mark: self.config.write_high_water_mark,
                reconnect: self.reconnect,
                backoff: self.backoff,
                inactivity_timeout: self.inactivity_timeout,
                ping_interval: self.ping_interval,
                pingpong_timeout: self.pingpong_timeout,
            },
        };
        tokio::spawn(driver.run(dial));
        Ok((
            EventClient {
                shared,
                sends: send_tx,
            },
            Events { rx: event_rx },
        ))
    }
}

/// The handle of a running event client: send, close, stop, check the
/// state. Cloning is cheap; dropping every handle does not stop the client
/// (dropping [`Events`] does).
#[derive(Clone)]
pub struct EventClient {
    shared: Arc<Shared>,
    sends: mpsc::Sender<SendRequest>,
}

impl fmt::Debug for EventClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventClient")
            .field("connected", &self.is_connected())
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl EventClient {
    /// Settings for a client of `url` (`ws://` or `wss://`), with the
    /// defaults: reconnect on, 1 s → 30 s backoff, ping every 10 s, drop
    /// after 20 s without pong, no inactivity timeout.
    pub fn builder(url: impl Into<String>) -> EventClientBuilder {
        EventClientBuilder {
            client: ClientBuilder::new(url),
            config: Config::default(),
            reconnect: true,
            backoff: Backoff::default(),
            inactivity_timeout: None,
            ping_interval: Some(Duration::from_secs(10)),
            pingpong_timeout: Some(Duration::from_secs(20)),
            event_capacity: 64,
            send_capacity: 32,
        }
    }

    /// Whether a connection is open (between [`Event::Connected`] and its
    /// end).
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Whether the client has stopped for good.
    pub fn is_finished(&self) -> bool {
        *self.shared.finished.borrow()
    }

    /// Sends a text message; see [`EventClient::send`].
    ///
    /// # Errors
    ///
    /// As [`EventClient::send`].
    pub async fn send_text(&self, text: &str, timeout: Duration) -> Result<(), SendError> {
        self.send(Message::text(text), timeout).await
    }

    /// Sends a binary message; see [`EventClient::send`].
    ///
    /// # Errors
    ///
    /// As [`EventClient::send`].
    pub async fn send_bin(&self, data: &[u8], timeout: Duration) -> Result<(), SendError> {
        self.send(Message::binary(Bytes::copy_from_slice(data)), timeout)
            .await
    }

    /// Sends a message (text, binary, ping, pong, or a
    /// [`Message::Fragment`] to send a message in pieces) and waits until
    /// it has been written to the socket, at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`SendError::Timeout`] if not written in time (see there for what
    /// happens to the message), [`SendError::NotConnected`],
    /// [`SendError::Closed`], [`SendError::Invalid`].
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped before the connection took the message, it
    /// is not sent; afterwards it is sent whole.
    pub async fn send(
        &self,
        message: impl Into<Message>,
        timeout: Duration,
    ) -> Result<(), SendError> {
        let message = message.into();
        if message.is_close() {
            return Err(SendError::Invalid(
                "close frames are sent by EventClient::close".into(),
            ));
        }
        if self.is_finished() {
            return Err(SendError::Closed);
        }
        if !self.is_connected() {
            return Err(SendError::NotConnected);
        }
        let deadline = deadline_after(timeout);
        let (reply, answer) = oneshot::channel();
        let request = SendRequest {
            message,
            deadline,
            reply,
        };
        match tokio::time::timeout_at(deadline, self.sends.send(request)).await {
            Err(_) => return Err(SendError::Timeout),
            Ok(Err(_)) => return Err(SendError::Closed),
            Ok(Ok(())) => {}
        }
        // The connection answers by the deadline; the margin only guards
        // the promise to return in time against a stalled runtime.
        let margin = deadline_after_from(deadline, Duration::from_secs(1));
        match tokio::time::timeout_at(margin, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SendError::Closed),
            Err(_) => Err(SendError::Timeout),
        }
    }

    /// Closes the connection cleanly with `code` and `reason` (discarding
    /// data that still arrives), then stops for good: no reconnection. Waits
    /// until the client has finished, at most about twice the close timeout.
    /// [`Event::Closed`] (or [`Event::Disconnected`] if the server does not
    /// answer) and [`Event::Finish`] follow.
    pub async fn close(&self, code: impl Into<CloseCode>, reason: &str) {
        self.shared
            .request(LocalEnd::Close(CloseFrame::new(code, reason)));
        self.wait_finished().await;
    }

    /// Stops at once without a closing handshake (the TCP connection is
    /// dropped), and for good. Waits until the client has finished.
    pub async fn stop(&self) {
        self.shared.request(LocalEnd::Stop);
        self.wait_finished().await;
    }

    /// Waits until the client has stopped for good.
    pub async fn wait_finished(&self) {
        let mut finished = self.shared.finished.clone();
        // An error means the client's task is gone: finished too.
        let _ = finished.wait_for(|f| *f).await;
    }
}

fn deadline_after(timeout: Duration) -> Instant {
    deadline_after_from(Instant::now(), timeout)
}

fn deadline_after_from(start: Instant, timeout: Duration) -> Instant {
    // About 30 years: what tokio itself uses for "never".
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    start
        .checked_add(timeout.min(FAR))
        .unwrap_or_else(|| start + Duration::from_secs(86_400))
}

/// The events of an [`EventClient`], ending with [`Event::Finish`].
/// Dropping it stops the client (closing with 1001).
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` after [`Event::Finish`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: no event is lost if the future is dropped.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

/// A local reason to end the connection and stop.
#[derive(Debug, Clone)]
enum LocalEnd {
    Close(CloseFrame),
    Stop,
}

#[derive(Default)]
struct ControlState {
    request: Option<LocalEnd>,
    waker: Option<Waker>,
}

struct Shared {
    control: Mutex<ControlState>,
    connected: AtomicBool,
    finished: watch::Receiver<bool>,
}

impl Shared {
    fn control(&self) -> MutexGuard<'_, ControlState> {
        self.control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn request(&self, end: LocalEnd) {
        let waker = {
            let mut c = self.control();
            // A stop overrides a close in progress; a close does not
            // override a stop.
            if !matches!(c.request, Some(LocalEnd::Stop)) {
                c.request = Some(end);
            }
            c.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn poll_request(&self, cx: &Context<'_>) -> Option<LocalEnd> {
        let mut c = self.control();
        if let Some(end) = c.request.take() {
            return Some(end);
        }
        if !c.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            c.waker = Some(cx.waker().clone());
        }
        None
    }
}

struct SendRequest {
    message: Message,
    deadline: Instant,
    reply: oneshot::Sender<Result<(), SendError>>,
}

/// A message handed to the connection, waiting to be written.
struct Ack {
    /// Total bytes of our sends queued, up to and including this one.
    mark: u64,
    deadline: Instant,
    reply: oneshot::Sender<Result<(), SendError>>,
}

/// How a connection is made.
trait Dial: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    fn dial(
        &mut self,
        client: &ClientBuilder,
        timeout: Duration,
    ) -> impl Future<Output = Result<(WebSocket<Self::Stream>, Response)>> + Send + 'static;
}

/// TCP (and TLS for `wss://`).
struct TcpDial;

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
struct FnDial<F>(F);

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
struct Settings {
    handshake_timeout: Duration,
    high_water_mark: usize,
    reconnect: bool,
    backoff: Backoff,
    inactivity_timeout: Option<Duration>,
    ping_interval: Option<Duration>,
    pingpong_timeout: Option<Duration>,
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
            if self.d.outbox.is_empty() {
                // Reads, and writes what is queued.
                match self.ws.poll_recv(cx) {
                    Poll::Ready(Some(Ok(msg))) => {
                        self.on_message(msg);
                        progress = true;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Outcome::Failed(e)),
                    Poll::Ready(None) => return Poll::Ready(Outcome::Ended),
                    Poll::Pending => {}
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
            if self.pong_due.is_some_and(|t| now >= t) {
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
            if self.quiet_deadline.is_some_and(|t| now >= t) {
                return Poll::Ready(Outcome::Inactive);
            }
            self.expire_sends(now);
            if let Some(next) = self.next_deadline() {
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

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.next_ping,
            self.pong_due,
            self.quiet_deadline,
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
        // Fails only if a close frame went out already.
        let _ = self.ws.queue(Message::Close(Some(frame)));
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
