//! A callback server in the style of Python's `websocket_server`: register
//! closures for connect, message and disconnect, send to one client or
//! broadcast to all through a cheap [`ServerHandle`].
//!
//! ```no_run
//! use ferrows::callback::Server;
//!
//! #[tokio::main]
//! async fn main() -> ferrows::Result<()> {
//!     Server::bind("127.0.0.1:9001")
//!         .await?
//!         .on_connect(|server, client| {
//!             server.broadcast(format!("client {} joined", client.id()));
//!         })
//!         .on_message(|server, client, msg| {
//!             if let Some(text) = msg.as_text() {
//!                 server.broadcast(format!("{}: {text}", client.id()));
//!             }
//!         })
//!         .on_disconnect(|server, client| {
//!             server.broadcast(format!("client {} left", client.id()));
//!         })
//!         .run()
//!         .await
//! }
//! ```
//!
//! # Threading model
//!
//! Every connection runs in its own tokio task, and the handlers for a
//! connection run *on that task*: `on_connect` once after the handshake,
//! then `on_message` for each message in the order the client sent them,
//! then `on_disconnect` once. Handlers of different clients run
//! concurrently (on a multi-threaded runtime, in parallel), so they are
//! `Fn + Send + Sync` and shared state goes behind a lock or an atomic.
//!
//! Handlers must not block: while one runs, its connection reads and writes
//! nothing. Sending from a handler never blocks — [`ServerHandle::send`] and
//! [`ServerHandle::broadcast`] only put a message in each client's bounded
//! queue. For slow work, `tokio::spawn` a task and give it a clone of the
//! [`ServerHandle`].
//!
//! # Slow clients
//!
//! Each client has a queue of at most [`Server::queue_capacity`] messages
//! (a [`crate::Hub`] member) and a write buffer that its task fills only up
//! to the connection's write high-water mark. A client that falls so far
//! behind that its queue overflows is removed and closed with 1008 (policy
//! violation), and a warning is logged: it never slows the other clients
//! and never makes the server buffer without bound.
//!
//! A broadcast is encoded once ([`crate::Prepared`]) and the same frame
//! bytes are queued for every client, not re-encoded per client: by
//! reference for frames over 1 KiB, by a plain copy for smaller ones.
//! With compression, configure it for broadcast
//! (`Config::default().deflate(DeflateConfig::default().for_broadcast())`,
//! see [`crate::DeflateConfig::for_broadcast`]): a message is then
//! compressed once for every client and no connection keeps a compressor
//! between messages; with context takeover each client compresses its own
//! copy and keeps ~300 KiB of compressor state.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ferrows_proto::handshake::Request;
use ferrows_proto::{CloseCode, CloseFrame};
use tokio::net::{TcpListener, ToSocketAddrs};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::backplane::{Backplane, Relay, RelayConfig};
use crate::broadcast::{Hub, Prepared, SendError};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::listener::{Accepted, Listener};
use crate::message::Message;
use crate::pump::{Pump, PumpEvent};
use crate::server::Handshake;
use crate::websocket::WebSocket;

/// Default for [`Server::queue_capacity`].
const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// Default for [`Server::max_clients`].
const DEFAULT_MAX_CLIENTS: usize = 10_000;

type StartRelay = Box<dyn FnOnce(Hub) -> Relay + Send>;

type ClientFn = dyn Fn(&ServerHandle, &Client) + Send + Sync;
type MessageFn = dyn Fn(&ServerHandle, &Client, Message) + Send + Sync;

#[derive(Clone, Default)]
struct Handlers {
    connect: Option<Arc<ClientFn>>,
    message: Option<Arc<MessageFn>>,
    disconnect: Option<Arc<ClientFn>>,
}

/// A connected client, as the handlers and [`ServerHandle::clients`] see
/// it. Cloning is cheap.
#[derive(Clone)]
pub struct Client {
    id: u64,
    addr: SocketAddr,
    request: Arc<Request>,
}

impl Client {
    /// The client's id: unique for the server's lifetime, counting up
    /// from 1 in connection order.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The opening handshake request (path, query, headers).
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The request path, e.g. `/chat`.
    pub fn path(&self) -> &str {
        self.request.path()
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .field("path", &self.request.path())
            .finish()
    }
}

/// A WebSocket server that calls closures on connect, message and
/// disconnect; see the [module docs](self) for an example and the
/// threading model.
///
/// Built with [`Server::bind`], configured with the chaining setters,
/// started with [`Server::run`] (until Ctrl-C) or [`Server::run_until`].
pub struct Server {
    listener: Listener,
    config: Config,
    queue_capacity: usize,
    max_clients: usize,
    handlers: Handlers,
    handle: ServerHandle,
    relay: Option<StartRelay>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.handle.inner.local_addr)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_clients", &self.max_clients)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds a listener on `addr` (anything [`ToSocketAddrs`]: `"0.0.0.0:9001"`,
    /// `("::", 9001)`, ...). Use port 0 for any free port and
    /// [`Server::local_addr`] to learn it.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if binding fails.
    pub async fn bind<A: ToSocketAddrs>(addr: A) -> Result<Server> {
        Server::from_listener(TcpListener::bind(addr).await?)
    }

    /// Serves on an existing listener.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the listener's address cannot be read.
    pub fn from_listener(listener: TcpListener) -> Result<Server> {
        let listener = Listener::from_tcp(listener)?;
        let local_addr = listener.local_addr();
        Ok(Server {
            listener,
            relay: None,
            config: Config::default(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            max_clients: DEFAULT_MAX_CLIENTS,
            handlers: Handlers::default(),
            handle: ServerHandle {
                inner: Arc::new(Inner {
                    hub: OnceLock::new(),
                    relay: OnceLock::new(),
                    clients: Mutex::new(HashMap::new()),
                    local_addr,
                    shutdown: CancellationToken::new(),
                }),
            },
        })
    }

    /// Sets the connection settings (limits, timeouts, write high-water
    /// mark, compression). Default: [`Config::default`].
    pub fn config(mut self, config: Config) -> Server {
        self.config = config;
        self
    }

    /// Sets how many messages may wait in each client's queue before the
    /// client counts as too slow and is closed with 1008. Default: 1024.
    ///
    /// A burst of more than this many messages sent without yielding to
    /// the runtime (e.g. a tight loop of [`ServerHandle::broadcast`])
    /// overflows every queue, however fast the clients are: pace bursts or
    /// raise the capacity. Queued messages are shared ([`Prepared`]), so a
    /// slot costs a pointer, not a copy of the message.
    pub fn queue_capacity(mut self, messages: usize) -> Server {
        self.queue_capacity = messages.max(1);
        self
    }

    /// Sets the most clients served at once: an upgrade past it is
    /// answered HTTP 503 (and logged). Each client holds its place from
    /// its upgrade until its connection ends; connections still in their
    /// opening handshake take none (they have their own bounds,
    /// [`Server::max_pending_handshakes`]). Default: 10 000.
    pub fn max_clients(mut self, clients: usize) -> Server {
        self.max_clients = clients.max(1);
        self
    }

    /// Sets the most connections whose request head is not complete yet;
    /// at the limit the oldest pending one is dropped for a new one
    /// (see [`Listener::max_pending_handshakes`]). Default: 1024.
    pub fn max_pending_handshakes(mut self, pending: usize) -> Server {
        self.listener = self.listener.max_pending_handshakes(pending);
        self
    }

    /// Sets the most pending handshakes from one client address (IPv6 by
    /// /64; see [`Listener::max_pending_per_ip`]). Default: 256.
    pub fn max_pending_per_ip(mut self, pending: usize) -> Server {
        self.listener = self.listener.max_pending_per_ip(pending);
        self
    }

    /// Serves `wss://` with this rustls configuration (e.g. from
    /// [`crate::tls::server_config_from_files`]). Default: plain `ws://`.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Server {
        self.listener = self.listener.tls(config);
        self
    }

    /// Accepts upgrades only with one of these `Origin` values (compared
    /// case-insensitively); others, and upgrades without an Origin, get
    /// HTTP 403. Empty (the default): any origin.
    pub fn origins<I, O>(mut self, origins: I) -> Server
    where
        I: IntoIterator<Item = O>,
        O: Into<String>,
    {
        self.listener = self.listener.origins(origins);
        self
    }

    /// Connects the server's fan-out to other processes: from
    /// [`Server::run`] on, [`ServerHandle::broadcast`] goes through a
    /// [`Relay`] over `backplane` and reaches the clients of every server
    /// on it (this server's at once, the others' through the backplane).
    /// [`ServerHandle::relay`] gives its stats and events.
    pub fn backplane<B: Backplane>(mut self, backplane: B, config: RelayConfig) -> Server {
        self.relay = Some(Box::new(move |hub| Relay::start(hub, backplane, config)));
        self
    }

    /// Sets the handler called once a client has connected (after the
    /// opening handshake). It may already send to the client.
    pub fn on_connect<F>(mut self, handler: F) -> Server
    where
        F: Fn(&ServerHandle, &Client) + Send + Sync + 'static,
    {
        self.handlers.connect = Some(Arc::new(handler));
        self
    }

    /// Sets the handler called for each text or binary message, in the
    /// order the client sent them. Fragmented messages arrive whole; pings
    /// are answered automatically and not reported.
    pub fn on_message<F>(mut self, handler: F) -> Server
    where
        F: Fn(&ServerHandle, &Client, Message) + Send + Sync + 'static,
    {
        self.handlers.message = Some(Arc::new(handler));
        self
    }

    /// Sets the handler called once a client's connection has ended, for
    /// whatever reason. The client is no longer in
    /// [`ServerHandle::clients`] and receives nothing more, so a broadcast
    /// from here reaches only the others.
    pub fn on_disconnect<F>(mut self, handler: F) -> Server
    where
        F: Fn(&ServerHandle, &Client) + Send + Sync + 'static,
    {
        self.handlers.disconnect = Some(Arc::new(handler));
        self
    }

    /// A handle to send, broadcast, list and disconnect clients, and to
    /// shut the server down; usable before and while it runs.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.inner.local_addr
    }

    /// Serves until Ctrl-C (or [`ServerHandle::shutdown`]), then closes
    /// every client with 1001 (going away) and returns.
    ///
    /// # Errors
    ///
    /// As [`Server::run_until`].
    pub async fn run(self) -> Result<()> {
        self.run_until(async {
            match tokio::signal::ctrl_c().await {
                Ok(()) => tracing::info!("Ctrl-C: shutting down"),
                Err(e) => {
                    // Without a signal handler the server can still be
                    // stopped through its handle.
                    tracing::warn!(error = %e, "cannot listen for Ctrl-C");
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
    }

    /// Serves until `shutdown` completes (or [`ServerHandle::shutdown`] is
    /// called), then stops accepting, closes every client with 1001 (going
    /// away), waits for the closing handshakes (each bounded by the close
    /// timeout) and the disconnect handlers, and returns.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for invalid settings (checked before serving).
    pub async fn run_until<F: Future<Output = ()>>(self, shutdown: F) -> Result<()> {
        self.config.validate()?;
        let Server {
            listener,
            config,
            queue_capacity,
            max_clients,
            handlers,
            handle,
            relay,
        } = self;
        let hub = handle
            .inner
            .hub
            .get_or_init(|| match &config.metrics {
                Some(m) => Hub::with_metrics(queue_capacity, m.clone()),
                None => Hub::new(queue_capacity),
            })
            .clone();
        if let Some(start) = relay {
            if handle.inner.relay.get().is_none() {
                let _ = handle.inner.relay.set(start(hub.clone()));
            }
        }
        let token = handle.inner.shutdown.clone();
        // Each connection ends within its close timeout twice over
        // (writing our close frame, then the client's answer).
        let grace = config.close_timeout.saturating_mul(2) + Duration::from_secs(1);
        let listener = listener
            .config(config.clone())
            .max_connections(max_clients)
            .shutdown_grace(grace);
        let shared = Arc::new(Shared {
            config,
            handlers,
            handle: handle.clone(),
            hub,
        });
        tracing::info!(addr = %handle.inner.local_addr, "serving");
        let stop = token.clone();
        let relay = handle.inner.relay.get().cloned();
        let shutdown = async move {
            tokio::select! {
                () = shutdown => {}
                () = stop.cancelled() => {}
            }
            tracing::info!(clients = handle.client_count(), "shutting down");
            // Every connection closes with 1001.
            stop.cancel();
        };
        let served = listener
            .serve_until(shutdown, move |hs, peer, _shutdown| {
                connection(hs, peer, shared.clone())
            })
            .await;
        token.cancel();
        // A stopped server publishes nothing more.
        if let Some(relay) = relay {
            relay.shutdown();
        }
        served
    }
}

/// A cheap-to-clone handle to a [`Server`]: send to one client, broadcast,
/// list and disconnect clients, shut the server down. Every method returns
/// at once; none waits for the network.
#[derive(Clone)]
pub struct ServerHandle {
    inner: Arc<Inner>,
}

struct Inner {
    /// Set when the server starts running.
    hub: OnceLock<Hub>,
    /// Set when the server starts running, with a backplane.
    relay: OnceLock<Relay>,
    clients: Mutex<HashMap<u64, Entry>>,
    local_addr: SocketAddr,
    shutdown: CancellationToken,
}

struct Entry {
    client: Client,
    control: Arc<Control>,
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.inner.local_addr)
            .field("clients", &self.client_count())
            .finish()
    }
}

impl ServerHandle {
    fn clients_map(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        lock(&self.inner.clients)
    }

    /// Queues `message` for client `id`. Accepts anything that converts
    /// to a [`Message`] (`&str`, `String`, `Vec<u8>`, `Bytes`...) or a
    /// [`Prepared`] message.
    ///
    /// # Errors
    ///
    /// [`SendError::NoSuchMember`] if no such client is connected;
    /// [`SendError::Lagged`] if its queue was full: it is being closed
    /// with 1008 as too slow.
    pub fn send(
        &self,
        id: u64,
        message: impl Into<Prepared>,
    ) -> std::result::Result<(), SendError> {
        match self.inner.hub.get() {
            Some(hub) => hub.send(id, message),
            None => Err(SendError::NoSuchMember),
        }
    }

    /// Queues `message` for every connected client and returns how many
    /// took it. The message is encoded once and its frame bytes reused for
    /// all (see the module docs).
    /// Clients whose queue is full are closed with 1008 as too slow.
    ///
    /// With a [`Server::backplane`], the message also goes to every other
    /// server on the backplane (text and binary only); the count is of
    /// this server's clients.
    pub fn broadcast(&self, message: impl Into<Prepared>) -> usize {
        if let Some(relay) = self.inner.relay.get() {
            return relay.broadcast(message.into().message().clone());
        }
        match self.inner.hub.get() {
            Some(hub) => hub.broadcast(message),
            None => 0,
        }
    }

    /// The relay to the backplane ([`Server::backplane`]), for its stats
    /// and events; `None` without a backplane or before the server runs.
    pub fn relay(&self) -> Option<Relay> {
        self.inner.relay.get().cloned()
    }

    /// The connected clients, by ascending id.
    pub fn clients(&self) -> Vec<Client> {
        let mut clients: Vec<Client> = self
            .clients_map()
            .values()
            .map(|e| e.client.clone())
            .collect();
        clients.sort_unstable_by_key(Client::id);
        clients
    }

    /// Client `id`, if connected.
    pub fn client(&self, id: u64) -> Option<Client> {
        self.clients_map().get(&id).map(|e| e.client.clone())
    }

    /// How many clients are connected.
    pub fn client_count(&self) -> usize {
        self.clients_map().len()
    }

    /// Closes client `id`'s connection with `code` and `reason` (the close
    /// handshake runs on the client's task; `on_disconnect` follows).
    /// Returns whether such a client was connected.
    pub fn disconnect(&self, id: u64, code: impl Into<CloseCode>, reason: &str) -> bool {
        let control = match self.clients_map().get(&id) {
            Some(entry) => entry.control.clone(),
            None => return false,
        };
        control.request_close(CloseFrame::new(code, reason));
        true
    }

    /// Stops the server: [`Server::run`] / [`Server::run_until`] closes
    /// every client with 1001 and returns.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Whether [`ServerHandle::shutdown`] was called or the server's
    /// shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Handlers run outside these locks, so a poisoned lock only means a
    // panic elsewhere; the map itself is consistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A request to close one connection, from [`ServerHandle::disconnect`].
#[derive(Default)]
struct Control {
    state: Mutex<ControlState>,
}

#[derive(Default)]
struct ControlState {
    close: Option<CloseFrame>,
    waker: Option<Waker>,
}

impl Control {
    fn request_close(&self, frame: CloseFrame) {
        let waker = {
            let mut state = lock(&self.state);
            if state.close.is_none() {
                state.close = Some(frame);
            }
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn poll_close(&self, cx: &Context<'_>) -> Option<CloseFrame> {
        let mut state = lock(&self.state);
        if let Some(frame) = state.close.take() {
            return Some(frame);
        }
        if !state
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        None
    }
}

/// What every connection task shares.
struct Shared {
    config: Config,
    handlers: Handlers,
    handle: ServerHandle,
    hub: Hub,
}

/// Removes the client from the map when its task ends, even by a panic.
struct Registration<'a> {
    handle: &'a ServerHandle,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.handle.clients_map().remove(&self.id);
    }
}

/// Runs a handler, turning a panic into an error (logged by the caller).
fn guarded(f: impl FnOnce()) -> std::result::Result<(), ()> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| ())
}

async fn connection(hs: Handshake<Accepted>, peer: SocketAddr, shared: Arc<Shared>) {
    let token = shared.handle.inner.shutdown.clone();
    let request = Arc::new(hs.request().clone());
    let ws = tokio::select! {
        biased;
        () = token.cancelled() => return,
        done = hs.accept() => match done {
            Ok(ws) => ws,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "handshake failed");
                return;
            }
        },
    };

    let member = shared.hub.join();
    let client = Client {
        id: member.id(),
        addr: peer,
        request,
    };
    let control = Arc::new(Control::default());
    shared.handle.clients_map().insert(
        client.id,
        Entry {
            client: client.clone(),
            control: control.clone(),
        },
    );
    let registration = Registration {
        handle: &shared.handle,
        id: client.id,
    };
    tracing::debug!(id = client.id, %peer, path = client.path(), "client connected");

    let mut conn = Conn {
        ws,
        pump: Pump::new(member, shared.config.write_high_water_mark),
        control,
        shutdown: Box::pin(token.cancelled_owned()),
    };
    let close = conn.serve(&shared, &client).await;
    // Leave the hub and the client list before closing, so that nothing
    // more is queued for this client and `clients()` no longer shows it.
    conn.pump.leave();
    drop(registration);
    if let Some(frame) = close {
        close_handshake(&mut conn.ws, frame, client.id).await;
    }
    tracing::debug!(id = client.id, %peer, "client disconnected");
    if let Some(handler) = &shared.handlers.disconnect {
        if guarded(|| handler(&shared.handle, &client)).is_err() {
            tracing::error!(id = client.id, "on_disconnect handler panicked");
        }
    }
}

/// Closes with `frame` and waits for the client's answer (discarding what
/// still arrives), within the close timeout; a server then closes TCP first
/// (RFC 6455 §7.1.1), as [`WebSocket::close`] does.
async fn close_handshake(ws: &mut WebSocket<Accepted>, frame: CloseFrame, id: u64) {
    if !frame.code.is_valid_on_wire() {
        // A code that may not be sent (1005, 1006, ...): close without one
        // (the client sees 1005); `close` then only waits for the answer.
        let _ = ws.queue(Message::Close(None));
    }
    if let Err(e) = ws.close(frame.code, frame.reason()).await {
        tracing::debug!(id, error = %e, "close handshake failed");
    }
}

/// One connection after the handshake.
struct Conn {
    ws: WebSocket<Accepted>,
    pump: Pump,
    control: Arc<Control>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
}

/// What woke a connection up.
enum Step {
    /// A message (or control frame) from the client.
    Message(Message),
    /// The connection is over (the peer's close was answered, or an error).
    Ended(Option<Error>),
    /// We are to close with this frame.
    Close(CloseFrame),
}

impl Conn {
    /// Runs the connection until it ends; returns the close frame to send
    /// if we are the ones closing.
    async fn serve(&mut self, shared: &Shared, client: &Client) -> Option<CloseFrame> {
        if let Some(handler) = &shared.handlers.connect {
            if guarded(|| handler(&shared.handle, client)).is_err() {
                tracing::error!(
                    id = client.id,
                    "on_connect handler panicked: closing with 1011"
                );
                return Some(CloseFrame::new(CloseCode::INTERNAL_ERROR, ""));
            }
        }
        loop {
            match std::future::poll_fn(|cx| self.poll_step(cx)).await {
                Step::Message(msg @ (Message::Text(_) | Message::Binary(_))) => {
                    if let Some(handler) = &shared.handlers.message {
                        if guarded(|| handler(&shared.handle, client, msg)).is_err() {
                            tracing::error!(
                                id = client.id,
                                "on_message handler panicked: closing with 1011"
                            );
                            return Some(CloseFrame::new(CloseCode::INTERNAL_ERROR, ""));
                        }
                    }
                }
                Step::Message(Message::Close(frame)) => {
                    // Our answer is written and the write side shut down:
                    // the closing handshake is complete. The server closes
                    // the TCP connection first (RFC 6455 §7.1.1), so there
                    // is no need to wait for the client's.
                    tracing::debug!(id = client.id, ?frame, "client closed");
                    return None;
                }
                // Pings were answered by the connection; pongs and (never
                // received in this mode) fragments need nothing.
                Step::Message(_) => {}
                Step::Ended(None) => return None,
                Step::Ended(Some(e)) => {
                    tracing::debug!(id = client.id, error = %e, "connection ended");
                    return None;
                }
                Step::Close(frame) => {
                    if frame.code == CloseCode::POLICY_VIOLATION {
                        tracing::warn!(
                            id = client.id,
                            addr = %client.addr,
                            "client too slow to keep up: closing with 1008"
                        );
                    }
                    return Some(frame);
                }
            }
        }
    }

    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        if let Some(frame) = self.control.poll_close(cx) {
            return Poll::Ready(Step::Close(frame));
        }
        if self.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Step::Close(CloseFrame::new(
                CloseCode::GOING_AWAY,
                "server shutting down",
            )));
        }
        self.pump
            .poll_next(&mut self.ws, cx)
            .map(|event| match event {
                PumpEvent::Message(msg) => Step::Message(msg),
                PumpEvent::Ended(e) => Step::Ended(e),
                PumpEvent::Close(frame) => Step::Close(frame),
            })
    }
}
