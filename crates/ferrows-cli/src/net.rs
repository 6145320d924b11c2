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
/// its plaintext recorded with `--pcap` and traced to stderr with
/// `--trace` (plain pass-throughs otherwise).
pub(crate) type Stream = Traced<Capture<MaybeTlsStream<TcpStream>>>;

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
    /// Allowed `Origin` values; empty: any.
    pub(crate) origins: Vec<String>,
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
        .origins(opts.origins)
        .shutdown_grace(SHUTDOWN_GRACE)
        .shutdown_sender(shutdown_tx);
    if let Some(tls) = opts.tls {
        listener = listener.tls(tls);
    }
    let trace = opts.trace;
    let recorder = opts.pcap.clone();
    let served = listener
        .wrap(move |stream, peer| {
            let tracer = trace
                .then(|| Tracer::new(ferrows::Role::Server, format!("[{}] ", display_addr(peer))));
            let local = stream.get_ref().local_addr().unwrap_or(peer);
            Traced::new(
                Capture::wrap(stream, recorder.as_ref(), peer, local),
                tracer,
            )
        })
        .serve(move |hs, peer, shutdown| handler(hs, peer, shutdown.into_watch()))
        .await;
    if let Some(recorder) = opts.pcap {
        // Every connection has ended: write out what they queued.
        let _ = tokio::task::spawn_blocking(move || recorder.finish(PCAP_FINISH)).await;
    }
    served?;
    Ok(())
}
