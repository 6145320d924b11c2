//! What every ready-made server shares: the library's accept loop
//! ([`ferrows::Listener`]: TLS, the connection cap, the pending-handshake
//! bounds, one handshake deadline, the Origin allowlist, graceful
//! shutdown) set from the common flags, with `--trace` as its stream wrap.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ferrows::{Config, Handshake, Listener, MaybeTlsStream, Message, WebSocket};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::metrics::Exporter;
use crate::pcap::{Capture, Recorder};
use crate::trace::{Traced, Tracer};

pub(crate) use ferrows::listener::display_addr;

/// The stream every server handles: TCP, or TLS when `--tls-cert` is set,
/// or one HTTP/2 stream of a TLS connection (RFC 8441), its plaintext
/// recorded with `--pcap` and traced to stderr with `--trace` (plain
/// pass-throughs otherwise).
pub(crate) type Stream = Traced<Capture<Transport>>;

/// A connection of its own (TCP or TLS), or an HTTP/2 stream.
pub(crate) enum Transport {
    /// HTTP/1.1 over TCP or TLS.
    Tcp(MaybeTlsStream<TcpStream>),
    /// A WebSocket over HTTP/2 (many share one TLS connection).
    H2(ferrows::h2::H2Stream),
}

macro_rules! transport {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Transport::Tcp($s) => {
                let $s = std::pin::Pin::new($s);
                $e
            }
            Transport::H2($s) => {
                let $s = std::pin::Pin::new($s);
                $e
            }
        }
    };
}

impl tokio::io::AsyncRead for Transport {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        transport!(self, s => s.poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for Transport {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        transport!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        transport!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Tcp(s) => s.is_write_vectored(),
            Transport::H2(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        transport!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        transport!(self, s => s.poll_shutdown(cx))
    }
}

/// How long the end of a server waits for `--pcap`'s file to be written.
const PCAP_FINISH: Duration = Duration::from_secs(2);

/// How long graceful shutdown waits for connections to close.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Settings of the accept loop.
#[derive(Clone)]
pub(crate) struct NetOptions {
    pub(crate) config: Config,
    pub(crate) tls: Option<Arc<ferrows::tls::rustls::ServerConfig>>,
    pub(crate) max_connections: usize,
    /// Connections whose request head is not complete yet, in all.
    pub(crate) max_pending_handshakes: usize,
    /// The same, per client address (IPv6 by /64).
    pub(crate) max_pending_per_ip: usize,
    /// The token and the per-address limits.
    pub(crate) access: AccessOptions,
    /// Allowed `Origin` values; empty: any.
    pub(crate) origins: Vec<String>,
    /// With TLS: offer HTTP/2 too (ALPN h2; WebSockets by RFC 8441 reach
    /// the same handlers). Off with `--no-http2`.
    pub(crate) http2: bool,
    /// Print each connection's handshake and frames to stderr (`--trace`).
    pub(crate) trace: bool,
    /// Record every connection's plaintext as pcapng (`--pcap`).
    pub(crate) pcap: Option<Recorder>,
    /// Serve metrics on this address (`--metrics`).
    pub(crate) metrics: Option<(SocketAddr, Arc<Exporter>)>,
}

impl NetOptions {
    /// The counters of `--metrics`, if it is on.
    pub(crate) fn exporter(&self) -> Option<&Arc<Exporter>> {
        self.metrics.as_ref().map(|(_, e)| e)
    }
}

/// Access control: `--token`, `--max-connections-per-ip`,
/// `--handshake-rate-per-ip`, `--per-ip-limits-on-loopback`.
#[derive(Clone, Default)]
pub(crate) struct AccessOptions {
    /// Every WebSocket upgrade must present it (`None`: none needed).
    pub(crate) token: Option<String>,
    /// 0: no limit.
    pub(crate) max_connections_per_ip: usize,
    /// Per second, bursts of twice as many; 0: no limit.
    pub(crate) handshake_rate_per_ip: u32,
    /// Whether the per-address limits apply to loopback clients.
    pub(crate) on_loopback: bool,
}

/// One step of a connection's I/O.
pub(crate) enum Io {
    /// Backed up: everything queued was written (or writing failed).
    Flushed(ferrows::Result<()>),
    /// What `recv()` returned.
    Received(Option<ferrows::Result<Message>>),
}

/// While `backed_up`, only writes (reading would not help: `recv()` stops
/// reading past the high-water mark too, and the peer must drain first);
/// otherwise receives, which also writes what is queued.
pub(crate) async fn io(ws: &mut WebSocket<Stream>, backed_up: bool) -> Io {
    if backed_up {
        Io::Flushed(ws.flush().await)
    } else {
        Io::Received(ws.recv().await)
    }
}

/// Binds `addr:port` with a large backlog; `::` is dual-stack (IPv4
/// clients arrive as IPv4-mapped addresses).
pub(crate) fn bind(addr: IpAddr, port: u16) -> anyhow::Result<TcpListener> {
    Ok(ferrows::listener::bind_tcp(SocketAddr::new(addr, port))?)
}

/// Accepts connections until SIGINT/SIGTERM, runs `handler` on each
/// request that passed the admission checks, then shuts down gracefully:
/// every handler sees `shutdown` change, and the loop waits up to
/// [`SHUTDOWN_GRACE`] for them to finish.
pub(crate) async fn run<H, Fut>(
    listener: TcpListener,
    opts: NetOptions,
    handler: H,
) -> anyhow::Result<()>
where
    H: Fn(Handshake<Stream>, SocketAddr, watch::Receiver<bool>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    run_with_shutdown(listener, opts, watch::channel(false).0, handler).await
}

/// [`run`], announcing the shutdown on the caller's `shutdown_tx` (so that
/// other tasks, such as a heartbeat, can pass it on to connections).
pub(crate) async fn run_with_shutdown<H, Fut>(
    listener: TcpListener,
    opts: NetOptions,
    shutdown_tx: watch::Sender<bool>,
    handler: H,
) -> anyhow::Result<()>
where
    H: Fn(Handshake<Stream>, SocketAddr, watch::Receiver<bool>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    if let Some((addr, exporter)) = &opts.metrics {
        let tcp = bind(addr.ip(), addr.port()).context("--metrics")?;
        tokio::spawn(crate::metrics::serve(
            tcp,
            exporter.clone(),
            shutdown_tx.subscribe(),
        ));
    }
    let mut listener = Listener::from_tcp(listener)?
        .config(opts.config)
        .max_connections(opts.max_connections)
        .max_pending_handshakes(opts.max_pending_handshakes)
        .max_pending_per_ip(opts.max_pending_per_ip)
        .max_connections_per_ip(opts.access.max_connections_per_ip)
        .handshake_rate_per_ip(opts.access.handshake_rate_per_ip)
        .handshake_burst_per_ip(opts.access.handshake_rate_per_ip.saturating_mul(2))
        .per_ip_limits_on_loopback(opts.access.on_loopback)
        .token(opts.access.token.unwrap_or_default())
        .origins(opts.origins)
        .shutdown_grace(SHUTDOWN_GRACE)
        .shutdown_sender(shutdown_tx);
    if let Some(tls) = opts.tls {
        listener = listener.tls(tls);
    }
    let trace = opts.trace;
    let recorder = opts.pcap.clone();
    let h2_recorder = opts.pcap.clone();
    let local_addr = listener.local_addr();
    let mut listener = listener.wrap(move |stream, peer| {
        let tracer =
            trace.then(|| Tracer::new(ferrows::Role::Server, format!("[{}] ", display_addr(peer))));
        let local = stream.get_ref().local_addr().unwrap_or(peer);
        Traced::new(
            Capture::wrap(Transport::Tcp(stream), recorder.as_ref(), peer, local),
            tracer,
        )
    });
    if opts.http2 {
        listener = listener.http2(move |stream, peer| {
            let tracer = trace.then(|| {
                Tracer::new(
                    ferrows::Role::Server,
                    format!("[{} h2] ", display_addr(peer)),
                )
            });
            // --pcap records each HTTP/2 WebSocket as a TCP flow of its
            // own between the same addresses (its bytes, not HTTP/2's).
            Traced::new(
                Capture::wrap(
                    Transport::H2(stream),
                    h2_recorder.as_ref(),
                    peer,
                    local_addr,
                ),
                tracer,
            )
        });
    }
    let served = listener
        .serve(move |hs, peer, shutdown| handler(hs, peer, shutdown.into_watch()))
        .await;
    if let Some(recorder) = opts.pcap {
        // Every connection has ended: write out what they queued.
        let _ = tokio::task::spawn_blocking(move || recorder.finish(PCAP_FINISH)).await;
    }
    served?;
    Ok(())
}
