//! The accept loop of a production server: [`Listener`].
//!
//! It binds (dual-stack on `::`), accepts, runs TLS if configured, reads
//! the request head, checks the Origin allow-list and the connection cap,
//! and hands each request to your handler in a task of its own; at
//! shutdown it tells every handler and waits a bounded grace for them.
//!
//! ```no_run
//! use ferrows::listener::Listener;
//!
//! # async fn demo() -> ferrows::Result<()> {
//! Listener::bind("[::]:9001".parse().unwrap())?
//!     .max_connections(1000)
//!     .serve(|hs, _peer, mut shutdown| async move {
//!         if !hs.request().is_upgrade() {
//!             let _ = hs.respond(200, &[], "text/plain", b"hello").await;
//!             return;
//!         }
//!         let Ok(mut ws) = hs.accept().await else { return };
//!         loop {
//!             tokio::select! {
//!                 () = shutdown.wait() => {
//!                     let _ = ws.close(1001, "server shutting down").await;
//!                     return;
//!                 }
//!                 msg = ws.recv() => match msg {
//!                     Some(Ok(msg)) if msg.is_text() || msg.is_binary() => {
//!                         if ws.send(msg).await.is_err() { return }
//!                     }
//!                     Some(Ok(_)) => {}
//!                     _ => return,
//!                 },
//!             }
//!         }
//!     })
//!     .await
//! # }
//! ```
//!
//! # Limits
//!
//! | limit | default | at the limit |
//! | --- | --- | --- |
//! | [`Listener::max_connections`]: WebSocket connections at once | 10 000 | the upgrade gets HTTP 503 (plain HTTP requests are still answered) |
//! | [`Listener::max_pending_handshakes`]: connections accepted whose request head is not complete | 1024 | the oldest pending one is dropped for the new one |
//! | [`Listener::max_pending_per_ip`]: the same, per client address (IPv6 by /64) | 256 | the new connection is closed |
//! | [`Config::handshake_timeout`]: one deadline from accept through TLS to the end of the request head | 10 s | the connection is closed |
//! | [`Listener::max_connections_per_ip`]: WebSocket connections at once from one client address (IPv6 by /64); 0: no limit | 256 | the upgrade gets HTTP 503 with `Retry-After: 5` |
//! | [`Listener::handshake_rate_per_ip`]: connections accepted per second from one client address (a token bucket, bursts of [`Listener::handshake_burst_per_ip`]); 0: no limit | 20/s, bursts of 40 | the request gets HTTP 429 with `Retry-After` |
//! | [`Listener::token`]: the token every upgrade must present | none | the upgrade gets HTTP 401 with `WWW-Authenticate: Bearer` |
//!
//! The checks run in this order once the request head is read: the
//! handshake rate (every request, page or upgrade), then for an upgrade
//! the token, the Origin, the per-address cap and the connection cap.
//! Every refusal is answered before the upgrade, and logged at most once
//! a second per kind (the first at once with its address; then one line
//! with the count). The per-address tables are bounded: see
//! [`MAX_TRACKED_ADDRESSES`].
//!
//! The two per-address limits do not apply to loopback clients
//! (127.0.0.0/8, `::1`) unless [`Listener::per_ip_limits_on_loopback`] is
//! set: a local client is the operator's own (a benchmark, a reverse
//! proxy on the same host, through which every client would share one
//! address and be throttled together), and loopback cannot be reached
//! from the network.
//!
//! Each WebSocket connection owns one place of the cap from its upgrade
//! until its handler returns, so the cap counts exactly the connections
//! being served. Connections still in their handshake never take a place:
//! they have their own bounds, so a crowd of silent sockets cannot lock
//! WebSocket clients out. Every refusal is logged with the peer's address.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::server::{Handshake, is_per_connection_error};
use crate::stream::MaybeTlsStream;

mod access;

use self::access::{ConnTable, Detail, IpSlot, NoDetail, RateTable, Refusal, RefusalLog};
pub use self::access::{
    MAX_TRACKED_ADDRESSES, percent_decode, presented_token, redact_target, token_matches,
};

/// Default for [`Listener::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default for [`Listener::max_pending_handshakes`].
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 1024;
/// Default for [`Listener::max_pending_per_ip`].
pub const DEFAULT_MAX_PENDING_PER_IP: usize = 256;
/// Default for [`Listener::max_connections_per_ip`].
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// Default for [`Listener::handshake_rate_per_ip`] (per second).
pub const DEFAULT_HANDSHAKE_RATE_PER_IP: u32 = 20;
/// Default for [`Listener::handshake_burst_per_ip`].
pub const DEFAULT_HANDSHAKE_BURST_PER_IP: u32 = 40;
/// Default for [`Listener::shutdown_grace`].
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every accepted stream is before the wrap hook: TCP, or TLS over
/// TCP when [`Listener::tls`] is set.
pub type Accepted = MaybeTlsStream<TcpStream>;

type Wrap<S> = dyn Fn(Accepted, SocketAddr) -> S + Send + Sync;

/// The accept loop; see the [module docs](self).
pub struct Listener<S = Accepted> {
    tcp: TcpListener,
    config: Config,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ServerConfig>>,
    max_connections: usize,
    max_pending: usize,
    max_pending_per_ip: usize,
    access: AccessSettings,
    origins: Vec<String>,
    grace: Duration,
    wrap: Arc<Wrap<S>>,
    #[cfg(feature = "http2")]
    h2: Option<H2Setup<S>>,
    shutdown_tx: watch::Sender<bool>,
    handle: ListenerHandle,
}

/// HTTP/2 on the listener: the wrap hook for its streams and the stream
/// limit.
#[cfg(feature = "http2")]
struct H2Setup<S> {
    wrap: Arc<crate::h2::WrapH2<S>>,
    max_concurrent_streams: u32,
}

impl<S> fmt::Debug for Listener<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.handle.local_addr)
            .field("max_connections", &self.max_connections)
            .field("max_pending_handshakes", &self.max_pending)
            .field("max_pending_per_ip", &self.max_pending_per_ip)
            .field("origins", &self.origins)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Binds `addr` with a large backlog (4096) and `SO_REUSEADDR`. The
    /// unspecified IPv6 address `::` is dual-stack where the system allows
    /// it (IPv4 clients arrive as IPv4-mapped addresses); other IPv6
    /// addresses are IPv6-only.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the socket cannot be bound.
    pub fn bind(addr: SocketAddr) -> Result<Listener> {
        Listener::from_tcp(bind_tcp(addr)?)
    }

    /// Serves on an existing listener.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if its address cannot be read.
    pub fn from_tcp(tcp: TcpListener) -> Result<Listener> {
        let local_addr = tcp.local_addr()?;
        Ok(Listener {
            tcp,
            config: Config::default(),
            #[cfg(feature = "tls")]
            tls: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending: DEFAULT_MAX_PENDING_HANDSHAKES,
            max_pending_per_ip: DEFAULT_MAX_PENDING_PER_IP,
            access: AccessSettings::default(),
            origins: Vec::new(),
            grace: DEFAULT_SHUTDOWN_GRACE,
            wrap: Arc::new(|stream, _| stream),
            #[cfg(feature = "http2")]
            h2: None,
            shutdown_tx: watch::channel(false).0,
            handle: ListenerHandle {
                state: Arc::new(State {
                    pending: Mutex::new(Pending::default()),
                    permits: Arc::new(Semaphore::new(DEFAULT_MAX_CONNECTIONS)),
                    max_connections: Mutex::new(DEFAULT_MAX_CONNECTIONS),
                    stop: CancellationToken::new(),
                }),
                local_addr,
            },
        })
    }
}

impl<S> Listener<S> {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr
    }

    /// A handle for counts and to stop the listener.
    pub fn handle(&self) -> ListenerHandle {
        self.handle.clone()
    }

    /// The settings of every connection: limits, compression, and the
    /// handshake deadline ([`Config::handshake_timeout`], one deadline from
    /// accept through TLS to the end of the request head). Default:
    /// [`Config::default`].
    pub fn config(mut self, config: Config) -> Listener<S> {
        self.config = config;
        self
    }

    /// Serves TLS (`wss://`, `https://`) with this rustls configuration,
    /// e.g. from [`crate::tls::server_config_from_files`]. Default: plain.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Listener<S> {
        self.tls = Some(config);
        self
    }

    /// The most WebSocket connections served at once (at least 1): an
    /// upgrade past it is answered HTTP 503. Each connection holds its
    /// place from the upgrade until its handler returns. Plain HTTP
    /// requests (pages) take no place and are answered at the cap.
    /// Default: 10 000.
    pub fn max_connections(mut self, connections: usize) -> Listener<S> {
        self.max_connections = connections.max(1);
        self
    }

    /// The most connections whose request head is not complete yet (TLS
    /// handshake or head still arriving; at least 1). When a new
    /// connection arrives at the limit, the oldest pending one is dropped:
    /// an honest client's handshake takes milliseconds, so the oldest is
    /// the likeliest to be a silent or trickling one. Default: 1024.
    pub fn max_pending_handshakes(mut self, pending: usize) -> Listener<S> {
        self.max_pending = pending.max(1);
        self
    }

    /// The most pending handshakes from one client address (at least 1);
    /// IPv6 addresses count by their /64 network, IPv4-mapped IPv6
    /// addresses as IPv4. A new connection past it is closed at once, so
    /// one address cannot take the whole pending pool. Default: 256.
    pub fn max_pending_per_ip(mut self, pending: usize) -> Listener<S> {
        self.max_pending_per_ip = pending.max(1);
        self
    }

    /// The most WebSocket connections at once from one client address
    /// (IPv6 addresses count by their /64 network, IPv4-mapped ones as
    /// IPv4): an upgrade past it is answered HTTP 503 with `Retry-After`.
    /// 0: no limit. Default: 256.
    pub fn max_connections_per_ip(mut self, connections: usize) -> Listener<S> {
        self.access.max_connections_per_ip = connections;
        self
    }

    /// Connections accepted per second from one client address (counted
    /// as [`Listener::max_connections_per_ip`] does), on average: a token
    /// bucket refilled at this rate, holding up to
    /// [`Listener::handshake_burst_per_ip`]. Every accepted connection
    /// takes a token (pages too); one past it gets HTTP 429 with
    /// `Retry-After` once its request head is read. 0: no limit.
    /// Default: 20.
    pub fn handshake_rate_per_ip(mut self, per_second: u32) -> Listener<S> {
        self.access.rate_per_ip = per_second;
        self
    }

    /// The burst of [`Listener::handshake_rate_per_ip`]: connections one
    /// address may open at once after a quiet time (at least 1).
    /// Default: 40.
    pub fn handshake_burst_per_ip(mut self, burst: u32) -> Listener<S> {
        self.access.burst_per_ip = burst.max(1);
        self
    }

    /// Applies [`Listener::max_connections_per_ip`] and
    /// [`Listener::handshake_rate_per_ip`] to loopback clients too
    /// (127.0.0.0/8, `::1`). Default: false (loopback is exempt).
    pub fn per_ip_limits_on_loopback(mut self, apply: bool) -> Listener<S> {
        self.access.on_loopback = apply;
        self
    }

    /// Accepts WebSocket upgrades only with this token, given as
    /// `Authorization: Bearer TOKEN` (programs) or as the query parameter
    /// `?token=TOKEN`, percent-encoded (browsers, which cannot set headers
    /// on a WebSocket); others get HTTP 401 with `WWW-Authenticate:
    /// Bearer`, before the upgrade. Plain HTTP requests (pages) are not
    /// gated: the handler decides. The comparison takes a time that does
    /// not depend on the token ([`token_matches`]). The token is never
    /// logged by the listener; log request targets through
    /// [`redact_target`]. An empty token means none. Default: none.
    pub fn token(mut self, token: impl Into<String>) -> Listener<S> {
        let token: String = token.into();
        self.access.token = (!token.is_empty()).then(|| Arc::from(token.into_bytes()));
        self
    }

    /// Accepts WebSocket upgrades only with one of these `Origin` values
    /// (compared case-insensitively); others, and upgrades without an
    /// Origin, get HTTP 403. Empty (the default): any origin.
    pub fn origins<I, O>(mut self, origins: I) -> Listener<S>
    where
        I: IntoIterator<Item = O>,
        O: Into<String>,
    {
        self.origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// How long shutdown waits for handlers to finish (they are told to
    /// close with 1001) before abandoning them. Default: 5 s.
    pub fn shutdown_grace(mut self, grace: Duration) -> Listener<S> {
        self.grace = grace;
        self
    }

    /// Announces the shutdown on `sender` too (it is set to `true` when
    /// shutdown begins), so that other tasks (a heartbeat, a ticker) can
    /// follow it. Handlers get a [`Shutdown`] subscribed to it.
    pub fn shutdown_sender(mut self, sender: watch::Sender<bool>) -> Listener<S> {
        self.shutdown_tx = sender;
        self
    }

    /// Wraps every accepted stream (after TLS, before the request is
    /// read) with `wrap`, e.g. to trace or capture its bytes.
    pub fn wrap<T, F>(self, wrap: F) -> Listener<T>
    where
        F: Fn(Accepted, SocketAddr) -> T + Send + Sync + 'static,
    {
        Listener {
            tcp: self.tcp,
            config: self.config,
            #[cfg(feature = "tls")]
            tls: self.tls,
            max_connections: self.max_connections,
            max_pending: self.max_pending,
            max_pending_per_ip: self.max_pending_per_ip,
            access: self.access,
            origins: self.origins,
            grace: self.grace,
            wrap: Arc::new(wrap),
            #[cfg(feature = "http2")]
            h2: None,
            shutdown_tx: self.shutdown_tx,
            handle: self.handle,
        }
    }

    /// Serves WebSockets over HTTP/2 too (RFC 8441) on a TLS listener:
    /// ALPN offers `h2` before `http/1.1`, and each request of an HTTP/2
    /// connection reaches the handler as a [`Handshake`] like an HTTP/1.1
    /// one (same Origin check, connection cap — one place per WebSocket —,
    /// handshake deadline and header limits; [`Handshake::is_http2`] tells
    /// them apart), its stream made into `S` by `wrap` (call this after
    /// [`Listener::wrap`], which resets it). At most
    /// [`crate::h2::DEFAULT_MAX_CONCURRENT_STREAMS`] streams per connection
    /// (see [`Listener::http2_max_concurrent_streams`]). Without TLS it has
    /// no effect.
    #[cfg(feature = "http2")]
    pub fn http2<F>(mut self, wrap: F) -> Listener<S>
    where
        F: Fn(crate::h2::H2Stream, SocketAddr) -> S + Send + Sync + 'static,
    {
        self.h2 = Some(H2Setup {
            wrap: Arc::new(wrap),
            max_concurrent_streams: crate::h2::DEFAULT_MAX_CONCURRENT_STREAMS,
        });
        self
    }

    /// `SETTINGS_MAX_CONCURRENT_STREAMS` of the HTTP/2 connections (after
    /// [`Listener::http2`]).
    #[cfg(feature = "http2")]
    pub fn http2_max_concurrent_streams(mut self, max: u32) -> Listener<S> {
        if let Some(h2) = &mut self.h2 {
            h2.max_concurrent_streams = max;
        }
        self
    }
}

impl<S> Listener<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    /// Serves until SIGINT or SIGTERM (Ctrl-C only, off Unix) or
    /// [`ListenerHandle::shutdown`]; see [`Listener::serve_until`].
    ///
    /// # Errors
    ///
    /// As [`Listener::serve_until`].
    pub async fn serve<H, Fut>(self, handler: H) -> Result<()>
    where
        H: Fn(Handshake<S>, SocketAddr, Shutdown) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.serve_until(shutdown_signal(), handler).await
    }

    /// Accepts connections until `shutdown` completes (or
    /// [`ListenerHandle::shutdown`] is called), calling `handler` in a task
    /// of its own for each request that passed the admission checks: the
    /// request head is read, and for an upgrade the Origin is allowed and
    /// a place under the connection cap is taken. The handler decides:
    /// accept, reject, or answer a page.
    ///
    /// Then it shuts down: stops accepting, sets every handler's
    /// [`Shutdown`] (they should close with 1001), waits up to
    /// [`Listener::shutdown_grace`] for them, and returns. A handshake in
    /// progress may still complete within the grace: its handler starts
    /// with the shutdown already set, so its client is told with 1001
    /// rather than dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for invalid settings (checked before serving).
    pub async fn serve_until<F, H, Fut>(self, shutdown: F, handler: H) -> Result<()>
    where
        F: Future<Output = ()>,
        H: Fn(Handshake<S>, SocketAddr, Shutdown) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.config.validate()?;
        let Listener {
            tcp,
            config,
            #[cfg(feature = "tls")]
            tls,
            max_connections,
            max_pending,
            max_pending_per_ip,
            access,
            origins,
            grace,
            wrap,
            #[cfg(feature = "http2")]
            h2,
            shutdown_tx,
            handle,
        } = self;
        let access = Access::new(access);
        #[cfg(feature = "http2")]
        let tls = match (&h2, tls) {
            (Some(_), Some(tls)) => Some(crate::h2::server_tls(&tls)),
            (_, tls) => tls,
        };
        let state = handle.state.clone();
        state.set_max_connections(max_connections);
        let tracker = TaskTracker::new();
        let shared = Arc::new(Shared {
            config,
            #[cfg(feature = "tls")]
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
            origins,
            wrap,
            #[cfg(feature = "http2")]
            h2,
            handler,
            state: state.clone(),
            shutdown: shutdown_tx.subscribe(),
            tracker: tracker.clone(),
            access,
        });
        let refusal_summaries = tokio::spawn(summarize_refusals(shared.clone()));
        let mut shutdown = pin!(shutdown);
        loop {
            let (tcp_stream, peer) = tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = state.stop.cancelled() => break,
                accepted = tcp.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) if is_per_connection_error(&e) => continue,
                    Err(e) => {
                        // Out of file descriptors and the like.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp_stream.set_nodelay(true);
            let ticket = match state.admit(peer, max_pending, max_pending_per_ip) {
                Ok(ticket) => ticket,
                Err(()) => {
                    let max = Detail(format!("max {max_pending_per_ip}"));
                    shared
                        .access
                        .refusals
                        .refused(Refusal::PendingPerIp, peer, &max);
                    continue;
                }
            };
            let over_rate = shared.access.charge(peer);
            tracker.spawn(handshake(
                tcp_stream,
                peer,
                ticket,
                over_rate,
                shared.clone(),
            ));
        }
        drop(tcp);
        refusal_summaries.abort();
        shared.access.refusals.flush();
        tracing::info!(
            connections = handle.connections(),
            "shutting down: closing connections with 1001"
        );
        state.stop.cancel();
        let _ = shutdown_tx.send(true);
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                remaining = tracker.len(),
                "some connections did not close within {grace:?}"
            );
        }
        Ok(())
    }
}

/// What every handshake task shares.
struct Shared<S, H> {
    config: Config,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
    origins: Vec<String>,
    wrap: Arc<Wrap<S>>,
    #[cfg(feature = "http2")]
    h2: Option<H2Setup<S>>,
    handler: H,
    state: Arc<State>,
    shutdown: watch::Receiver<bool>,
    tracker: TaskTracker,
    access: Access,
}

/// The access settings of a [`Listener`].
#[derive(Clone)]
struct AccessSettings {
    max_connections_per_ip: usize,
    rate_per_ip: u32,
    burst_per_ip: u32,
    on_loopback: bool,
    token: Option<Arc<[u8]>>,
}

impl Default for AccessSettings {
    fn default() -> AccessSettings {
        AccessSettings {
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            rate_per_ip: DEFAULT_HANDSHAKE_RATE_PER_IP,
            burst_per_ip: DEFAULT_HANDSHAKE_BURST_PER_IP,
            on_loopback: false,
            token: None,
        }
    }
}

impl fmt::Debug for AccessSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token itself.
        f.debug_struct("AccessSettings")
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("rate_per_ip", &self.rate_per_ip)
            .field("burst_per_ip", &self.burst_per_ip)
            .field("on_loopback", &self.on_loopback)
            .field("token", &self.token.is_some())
            .finish()
    }
}

/// The access settings with their tables, while serving.
struct Access {
    settings: AccessSettings,
    conns: Arc<ConnTable>,
    rates: RateTable,
    refusals: RefusalLog,
}

impl Access {
    fn new(settings: AccessSettings) -> Access {
        Access {
            settings,
            conns: Arc::new(ConnTable::default()),
            rates: RateTable::new(MAX_TRACKED_ADDRESSES),
            refusals: RefusalLog::default(),
        }
    }

    /// Charges a new connection to its address's handshake rate; `Some`
    /// (how long until the next is allowed) past it.
    fn charge(&self, peer: SocketAddr) -> Option<Duration> {
        let rate = self.settings.rate_per_ip;
        if rate == 0 || self.exempt(peer) {
            return None;
        }
        let burst = f64::from(self.settings.burst_per_ip.max(1));
        self.rates
            .take(IpKey::of(peer.ip()), f64::from(rate), burst)
            .err()
    }

    /// Whether the per-address limits skip `peer` (loopback, by default).
    fn exempt(&self, peer: SocketAddr) -> bool {
        !self.settings.on_loopback && peer.ip().to_canonical().is_loopback()
    }

    /// Whether the request presents the token (or none is needed).
    fn authorized(&self, request: &ferrows_proto::handshake::Request) -> bool {
        match &self.settings.token {
            None => true,
            Some(expected) => {
                presented_token(request).is_some_and(|given| token_matches(expected, &given))
            }
        }
    }

    /// A place for one more connection from `peer` (`Ok(None)`: no limit).
    fn take_slot(&self, peer: SocketAddr) -> std::result::Result<Option<IpSlot>, ()> {
        let max = self.settings.max_connections_per_ip;
        if max == 0 || self.exempt(peer) {
            return Ok(None);
        }
        self.conns
            .take(IpKey::of(peer.ip()), max)
            .map(Some)
            .ok_or(())
    }
}

/// Writes the refusal summaries every second.
async fn summarize_refusals<S, H>(shared: Arc<Shared<S, H>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shared.access.refusals.flush();
    }
}

/// `Retry-After` in whole seconds, at least 1.
fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// From accept to the handler: TLS and the request head under one
/// deadline, then the Origin and the cap.
async fn handshake<S, H, Fut>(
    tcp: TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    over_rate: Option<Duration>,
    shared: Arc<Shared<S, H>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Handshake<S>, SocketAddr, Shutdown) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let deadline = tokio::time::Instant::now() + shared.config.handshake_timeout;
    // Boxed: a task is as large as its largest await point, and this
    // state is only needed until the head is read.
    let head = Box::pin(tokio::time::timeout_at(
        deadline,
        read_head(tcp, peer, &shared),
    ));
    let hs = tokio::select! {
        biased;
        () = ticket.token.cancelled() => {
            shared.access.refusals.refused(Refusal::PendingFull, peer, &NoDetail);
            return;
        }
        head = head => match head {
            Ok(Some(Head::Http1(hs))) => hs,
            #[cfg(feature = "http2")]
            Ok(Some(Head::H2(stream))) => {
                drop(ticket);
                if over_rate.is_some() {
                    // No stream to answer 429 on yet: the connection is
                    // closed, as the rate's log line says.
                    shared.access.refusals.refused(Refusal::Rate, peer, &NoDetail);
                    return;
                }
                serve_h2(stream, peer, shared).await;
                return;
            }
            Ok(None) => return,
            Err(_) => {
                if let Some(m) = &shared.config.metrics {
                    m.handshake_timeout();
                }
                let timeout = Detail(format!("{:?}", shared.config.handshake_timeout));
                shared.access.refusals.refused(Refusal::Timeout, peer, &timeout);
                return;
            }
        },
    };
    drop(ticket);
    let hs = hs.with_peer_addr(peer);
    if let Some(wait) = over_rate {
        shared
            .access
            .refusals
            .refused(Refusal::Rate, peer, &NoDetail);
        let reject = crate::Reject::new(429, "too many connections from this address")
            .with_header("Retry-After", retry_after_secs(wait).to_string());
        let _ = hs.reject_with(&reject).await;
        return;
    }
    admit(hs, peer, &shared).await;
}

/// An HTTP/2 connection: every request is admitted like an HTTP/1.1 one.
#[cfg(feature = "http2")]
async fn serve_h2<S, H, Fut>(stream: Accepted, peer: SocketAddr, shared: Arc<Shared<S, H>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Handshake<S>, SocketAddr, Shutdown) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(h2) = &shared.h2 else {
        return;
    };
    let (wrap, max_streams) = (h2.wrap.clone(), h2.max_concurrent_streams);
    let config = shared.config.clone();
    let admitting = shared.clone();
    let served = crate::h2::serve_listener_connection(
        stream,
        peer,
        config,
        max_streams,
        wrap,
        shared.shutdown.clone(),
        move |hs| {
            let shared = admitting.clone();
            admitting
                .tracker
                .spawn(async move { admit(hs, peer, &shared).await });
        },
    )
    .await;
    if let Err(e) = served {
        tracing::info!(peer = %display_addr(peer), error = %e, "HTTP/2 connection ended");
    }
}

/// The checks after the request head, for an upgrade: the token, the
/// Origin, the per-address cap and the connection cap; then the handler in
/// a task of its own.
async fn admit<S, H, Fut>(hs: Handshake<S>, peer: SocketAddr, shared: &Shared<S, H>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Handshake<S>, SocketAddr, Shutdown) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let refusals = &shared.access.refusals;
    let mut permit = None;
    let mut ip_slot = None;
    if is_websocket_request(&hs) {
        if !shared.access.authorized(hs.request()) {
            refusals.refused(Refusal::Unauthorized, peer, &NoDetail);
            let reject = crate::Reject::new(401, "a token is required")
                .with_header("WWW-Authenticate", "Bearer");
            let _ = hs.reject_with(&reject).await;
            return;
        }
        if !origin_allowed(&shared.origins, hs.request().header("origin")) {
            let origin = Detail(format!("{:?}", hs.request().header("origin")));
            refusals.refused(Refusal::Origin, peer, &origin);
            let _ = hs.reject(403, "origin not allowed").await;
            return;
        }
        match shared.access.take_slot(peer) {
            Ok(slot) => ip_slot = slot,
            Err(()) => {
                let max = shared.access.settings.max_connections_per_ip;
                refusals.refused(
                    Refusal::PerIpConnections,
                    peer,
                    &Detail(format!("max {max}")),
                );
                let reject = crate::Reject::new(503, "too many connections from this address")
                    .with_header("Retry-After", access::RETRY_AFTER_FULL.to_string());
                let _ = hs.reject_with(&reject).await;
                return;
            }
        }
        match shared.state.permits.clone().try_acquire_owned() {
            Ok(p) => permit = Some(p),
            Err(_) => {
                let max = shared.state.max_connections();
                refusals.refused(Refusal::Capacity, peer, &Detail(format!("max {max}")));
                let reject = crate::Reject::new(503, "too many connections")
                    .with_header("Retry-After", access::RETRY_AFTER_FULL.to_string());
                let _ = hs.reject_with(&reject).await;
                return;
            }
        }
    }
    // A handshake that completed just as the shutdown began still tells
    // its handler: `Shutdown` starts unseen.
    let shutdown = Shutdown(shared.shutdown.clone());
    // The connection lives on in a task of its own holding only its
    // handler's future and its place: the state of this task is freed.
    shared.tracker.spawn(Permitted {
        fut: (shared.handler)(hs, peer, shutdown),
        _permit: permit,
        _ip_slot: ip_slot,
    });
}

/// Whether the request asks for a WebSocket: `Upgrade: websocket`, or an
/// HTTP/2 `CONNECT`.
fn is_websocket_request<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    hs: &Handshake<S>,
) -> bool {
    #[cfg(feature = "http2")]
    if hs.is_http2() {
        return hs.request().method() == "CONNECT";
    }
    hs.request().is_upgrade()
}

/// What a new connection starts with (short-lived: the size difference
/// of the variants does not matter).
#[allow(clippy::large_enum_variant)]
enum Head<S> {
    /// An HTTP/1.1 request head.
    Http1(Handshake<S>),
    /// TLS that agreed on HTTP/2.
    #[cfg(feature = "http2")]
    H2(Accepted),
}

/// TLS (if configured), the wrap hook, then the request head; `None` if
/// the connection failed (logged).
async fn read_head<S, H>(tcp: TcpStream, peer: SocketAddr, shared: &Shared<S, H>) -> Option<Head<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tls")]
    let stream = match &shared.tls {
        None => MaybeTlsStream::Plain(tcp),
        Some(acceptor) => match acceptor.accept(tcp).await {
            Ok(s) => MaybeTlsStream::ServerTls(Box::new(s)),
            Err(e) => {
                shared
                    .access
                    .refusals
                    .refused(Refusal::Tls, peer, &Detail(e));
                return None;
            }
        },
    };
    #[cfg(not(feature = "tls"))]
    let stream = MaybeTlsStream::Plain(tcp);
    #[cfg(feature = "http2")]
    if shared.h2.is_some() && crate::h2::is_h2(&stream) {
        return Some(Head::H2(stream));
    }
    let stream = (shared.wrap)(stream, peer);
    match Handshake::read(stream, shared.config.clone()).await {
        Ok(hs) => Some(Head::Http1(hs)),
        Err(Error::HandshakeTimeout) => {
            shared
                .access
                .refusals
                .refused(Refusal::Timeout, peer, &NoDetail);
            None
        }
        Err(e) => {
            shared
                .access
                .refusals
                .refused(Refusal::BadRequest, peer, &Detail(e));
            None
        }
    }
}

pin_project_lite::pin_project! {
    /// A handler's future with the connection's place under the cap,
    /// released when the future ends (or is dropped).
    struct Permitted<F> {
        #[pin]
        fut: F,
        _permit: Option<OwnedSemaphorePermit>,
        _ip_slot: Option<IpSlot>,
    }
}

impl<F: Future<Output = ()>> Future for Permitted<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().fut.poll(cx)
    }
}

/// A handler's view of the server's shutdown. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Resolves once the server shuts down (at once if it already has).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait(&mut self) {
        // An error means the listener is gone: that is a shutdown too.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether the server is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        *self.0.borrow()
    }

    /// The underlying channel (`true` once shutting down).
    pub fn into_watch(self) -> watch::Receiver<bool> {
        self.0
    }
}

/// A handle to a [`Listener`]: its counts, and a way to stop it.
#[derive(Clone)]
pub struct ListenerHandle {
    state: Arc<State>,
    local_addr: SocketAddr,
}

impl fmt::Debug for ListenerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerHandle")
            .field("local_addr", &self.local_addr)
            .field("connections", &self.connections())
            .field("pending_handshakes", &self.pending_handshakes())
            .finish()
    }
}

impl ListenerHandle {
    /// WebSocket connections being served (each holding a place under the
    /// cap).
    pub fn connections(&self) -> usize {
        self.state
            .max_connections()
            .saturating_sub(self.state.permits.available_permits())
    }

    /// Connections accepted whose request head is not complete yet.
    pub fn pending_handshakes(&self) -> usize {
        self.state.pending().order.len()
    }

    /// Stops the listener: [`Listener::serve_until`] shuts down and
    /// returns.
    pub fn shutdown(&self) {
        self.state.stop.cancel();
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

struct State {
    pending: Mutex<Pending>,
    permits: Arc<Semaphore>,
    /// The cap the permits were made for.
    max_connections: Mutex<usize>,
    stop: CancellationToken,
}

/// The pending handshakes, oldest first, and their count per address.
#[derive(Default)]
struct Pending {
    next: u64,
    order: BTreeMap<u64, (IpKey, CancellationToken)>,
    per_ip: HashMap<IpKey, usize>,
}

impl Pending {
    fn remove(&mut self, id: u64) -> Option<CancellationToken> {
        let (key, token) = self.order.remove(&id)?;
        if let Some(n) = self.per_ip.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&key);
            }
        }
        Some(token)
    }
}

impl State {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn max_connections(&self) -> usize {
        *self
            .max_connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sizes the semaphore for `max` (before serving: nothing holds a
    /// permit yet).
    fn set_max_connections(&self, max: usize) {
        let mut current = self
            .max_connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if max > *current {
            self.permits.add_permits(max - *current);
        } else if max < *current {
            self.permits.forget_permits(*current - max);
        }
        *current = max;
    }

    /// Registers a new pending handshake from `peer`; past the global
    /// bound the oldest one is cancelled. `Err` past the per-address bound.
    fn admit(
        self: &Arc<Self>,
        peer: SocketAddr,
        max: usize,
        max_per_ip: usize,
    ) -> std::result::Result<Ticket, ()> {
        let key = IpKey::of(peer.ip());
        let mut pending = self.pending();
        if pending.per_ip.get(&key).copied().unwrap_or(0) >= max_per_ip {
            return Err(());
        }
        while pending.order.len() >= max {
            let Some(oldest) = pending.order.keys().next().copied() else {
                break;
            };
            if let Some(token) = pending.remove(oldest) {
                token.cancel();
            }
        }
        let id = pending.next;
        pending.next += 1;
        let token = CancellationToken::new();
        pending.order.insert(id, (key, token.clone()));
        *pending.per_ip.entry(key).or_insert(0) += 1;
        Ok(Ticket {
            id,
            token,
            state: self.clone(),
        })
    }
}

/// A pending handshake's entry; dropping it leaves the table.
struct Ticket {
    id: u64,
    token: CancellationToken,
    state: Arc<State>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.state.pending().remove(self.id);
    }
}

/// A client address as the per-address bound counts it: IPv4, or the /64
/// network of an IPv6 address (IPv4-mapped addresses count as IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum IpKey {
    V4(Ipv4Addr),
    V6(u64),
}

impl IpKey {
    fn of(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4),
                None => IpKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Whether `origin` passes the allow-list (empty: anything passes).
fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    if allowed.is_empty() {
        return true;
    }
    origin.is_some_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)))
}

/// Binds a TCP listener on `addr` as [`Listener::bind`] does: backlog
/// 4096, `SO_REUSEADDR`, `::` dual-stack where the system allows it.
///
/// # Errors
///
/// [`Error::Io`] if the socket cannot be bound.
pub fn bind_tcp(addr: SocketAddr) -> Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // Dual-stack where the system allows it; IPv6-only otherwise.
        let _ = socket.set_only_v6(!addr.ip().is_unspecified());
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into()).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot bind {addr}: {e}"),
        ))
    })?;
    socket.listen(4096)?;
    Ok(TcpListener::from_std(socket.into())?)
}

/// A `host:port` for logs: IPv6 in brackets, IPv4-mapped as IPv4.
pub fn display_addr(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => format!("{v4}:{}", v6.port()),
            None => format!("[{}]:{}", v6.ip(), v6.port()),
        },
        SocketAddr::V4(v4) => v4.to_string(),
    }
}

/// Resolves when SIGINT or SIGTERM arrives (Ctrl-C only, off Unix).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert!(origin_allowed(&[], None));
        let list = vec!["http://localhost:9001".to_owned()];
        assert!(origin_allowed(&list, Some("http://LOCALHOST:9001")));
        assert!(!origin_allowed(&list, Some("http://evil.example")));
        assert!(!origin_allowed(&list, None));
    }

    #[test]
    fn addresses_display_like_the_original() {
        assert_eq!(display_addr("[::]:1337".parse().unwrap()), "[::]:1337");
        assert_eq!(
            display_addr("127.0.0.1:80".parse().unwrap()),
            "127.0.0.1:80"
        );
        assert_eq!(
            display_addr("[::ffff:10.0.0.1]:5".parse().unwrap()),
            "10.0.0.1:5"
        );
    }

    #[test]
    fn addresses_count_by_ipv4_or_ipv6_slash_64() {
        let a = IpKey::of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = IpKey::of("2001:db8:1:2:bbbb::2".parse().unwrap());
        let c = IpKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            IpKey::of("::ffff:10.0.0.1".parse().unwrap()),
            IpKey::of("10.0.0.1".parse().unwrap())
        );
        assert_ne!(
            IpKey::of("10.0.0.1".parse().unwrap()),
            IpKey::of("10.0.0.2".parse().unwrap())
        );
    }

    fn state() -> Arc<State> {
        Arc::new(State {
            pending: Mutex::new(Pending::default()),
            permits: Arc::new(Semaphore::new(1)),
            max_connections: Mutex::new(1),
            stop: CancellationToken::new(),
        })
    }

    #[test]
    fn a_full_pending_pool_drops_its_oldest() {
        let state = state();
        let peer = |n: u8| SocketAddr::from(([10, 0, 0, n], 1000));
        let first = state.admit(peer(1), 3, 10).unwrap();
        let second = state.admit(peer(2), 3, 10).unwrap();
        let third = state.admit(peer(3), 3, 10).unwrap();
        let fourth = state.admit(peer(4), 3, 10).unwrap();
        assert!(first.token.is_cancelled(), "the oldest was dropped");
        assert!(!second.token.is_cancelled());
        assert!(!third.token.is_cancelled());
        assert!(!fourth.token.is_cancelled());
        assert_eq!(state.pending().order.len(), 3);
        // Its ticket's drop changes nothing more.
        drop(first);
        assert_eq!(state.pending().order.len(), 3);
        drop((second, third, fourth));
        assert_eq!(state.pending().order.len(), 0);
        assert!(state.pending().per_ip.is_empty());
    }

    #[test]
    fn one_address_has_its_own_bound() {
        let state = state();
        let v6 = |s: &str| SocketAddr::new(s.parse().unwrap(), 1000);
        let a = state.admit(v6("2001:db8::1"), 100, 2).unwrap();
        let _b = state.admit(v6("2001:db8::2"), 100, 2).unwrap();
        assert!(
            state.admit(v6("2001:db8::3"), 100, 2).is_err(),
            "the same /64"
        );
        let _other = state.admit(v6("2001:db8:0:1::1"), 100, 2).unwrap();
        drop(a);
        assert!(state.admit(v6("2001:db8::3"), 100, 2).is_ok());
    }
}
