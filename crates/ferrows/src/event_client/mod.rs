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

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use ferrows_proto::handshake::Response;
use ferrows_proto::{CloseCode, CloseFrame, OpCode};
use futures_core::Stream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::client::{ClientBuilder, WsUrl};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::message::Message;

mod backoff;
mod driver;

pub use backoff::Backoff;
use driver::{Dial, FnDial, Settings, TcpDial};

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

    /// Connects through this proxy instead of the environment's
    /// ([`ClientBuilder::proxy`]).
    pub fn proxy(mut self, proxy: crate::Proxy) -> EventClientBuilder {
        self.client = self.client.proxy(proxy);
        self
    }

    /// Connects directly, whatever the proxy environment variables say
    /// ([`ClientBuilder::no_proxy`]).
    pub fn no_proxy(mut self) -> EventClientBuilder {
        self.client = self.client.no_proxy();
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

    /// Shuts the client down after a connection has gone this long without
    /// a message in either direction (pings and pongs do not count): it
    /// closes with 1000 and finishes, without reconnecting. Default: `None`
    /// (never).
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

    /// Starts the client in a background task: it connects (TCP, through
    /// the proxy if any, then TLS for `wss://`), and keeps the connection going as configured.
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
        let settings = Settings {
            handshake_timeout: self.config.handshake_timeout,
            high_water_mark: self.config.write_high_water_mark,
            reconnect: self.reconnect,
            backoff: self.backoff,
            inactivity_timeout: self.inactivity_timeout,
            ping_interval: self.ping_interval,
            pingpong_timeout: self.pingpong_timeout,
        };
        let client = self.client.config(self.config);
        driver::spawn(
            dial,
            shared.clone(),
            finished_tx,
            event_tx,
            send_rx,
            client,
            settings,
        );
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
    /// If connected, [`Event::Closed`] (or [`Event::Disconnected`] if the
    /// server does not answer) follows; then, in every case (also while
    /// connecting or waiting to reconnect), [`Event::Finish`].
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
