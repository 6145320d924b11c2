//! What every ready-made server shares: binding, the accept loop, TLS,
//! the connection cap, the Origin allowlist and graceful shutdown.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ferrows::{Config, Handshake, MaybeTlsStream, Message, WebSocket};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::trace::{Traced, Tracer};

/// The stream every server handles: TCP, or TLS when `--tls-cert` is set,
/// traced to stderr with `--trace` (a plain pass-through otherwise).
pub(crate) type Stream = Traced<MaybeTlsStream<TcpStream>>;

/// How long graceful shutdown waits for connections to close.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Settings of the accept loop.
#[derive(Clone)]
pub(crate) struct NetOptions {
    pub(crate) config: Config,
    pub(crate) tls: Option<Arc<ferrows::tls::rustls::ServerConfig>>,
    pub(crate) max_connections: usize,
    /// Allowed `Origin` values; empty: any.
    pub(crate) origins: Vec<String>,
    /// Print each connection's handshake and frames to stderr (`--trace`).
    pub(crate) trace: bool,
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
    use socket2::{Domain, Protocol, Socket, Type};
    let sockaddr = SocketAddr::new(addr, port);
    let socket = Socket::new(
        Domain::for_address(sockaddr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        // Dual-stack where the system allows it; IPv6-only otherwise.
        let _ = socket.set_only_v6(!addr.is_unspecified());
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&sockaddr.into())
        .with_context(|| format!("cannot bind {sockaddr}"))?;
    socket.listen(4096)?;
    Ok(TcpListener::from_std(socket.into())?)
}

/// A `host:port` for logs, IPv6 in brackets.
pub(crate) fn display_addr(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => format!("{v4}:{}", v6.port()),
            None => format!("[{}]:{}", v6.ip(), v6.port()),
        },
        SocketAddr::V4(v4) => v4.to_string(),
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
pub(crate) async fn shutdown_signal() {
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

/// Accepts connections until SIGINT/SIGTERM, runs `handler` on each
/// request that passed the connection cap and the Origin check, then shuts
/// down gracefully: every handler sees `shutdown` change, and the loop
/// waits up to [`SHUTDOWN_GRACE`] for them to finish.
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
    let shutdown_rx = shutdown_tx.subscribe();
    let tracker = TaskTracker::new();
    let handler = Arc::new(handler);
    let acceptor = opts
        .tls
        .clone()
        .map(ferrows::tls::tokio_rustls::TlsAcceptor::from);
    let opts = Arc::new(opts);
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut signal => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let handler = handler.clone();
        let opts = opts.clone();
        let acceptor = acceptor.clone();
        let shutdown = shutdown_rx.clone();
        let connections = tracker.clone();
        // The handshake-phase futures (TLS accept, request head) are boxed:
        // an async block is as large as its largest await point, and the
        // task keeps that size for the connection's whole life, idle or not.
        tracker.spawn(async move {
            let stream = match acceptor {
                None => MaybeTlsStream::Plain(tcp),
                Some(acceptor) => {
                    let tls = Box::pin(tokio::time::timeout(
                        opts.config.handshake_timeout,
                        acceptor.accept(tcp),
                    ));
                    match tls.await {
                        Ok(Ok(s)) => MaybeTlsStream::ServerTls(Box::new(s)),
                        Ok(Err(e)) => {
                            tracing::info!(peer = %display_addr(peer), error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(peer = %display_addr(peer), "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let tracer = opts
                .trace
                .then(|| Tracer::new(ferrows::Role::Server, format!("[{}] ", display_addr(peer))));
            let stream = Traced::new(stream, tracer);
            let hs = match Box::pin(Handshake::read(stream, opts.config.clone())).await {
                Ok(hs) => hs.with_peer_addr(peer),
                Err(e) => {
                    tracing::info!(peer = %display_addr(peer), error = %e, "bad request");
                    return;
                }
            };
            if hs.request().is_upgrade() {
                // Every task of the tracker is a connection: this one, the
                // others still in their handshake, and the established ones.
                if connections.len() > opts.max_connections {
                    tracing::warn!(peer = %display_addr(peer), max = opts.max_connections, "connection limit reached: 503");
                    let _ = Box::pin(hs.reject(503, "too many connections")).await;
                    return;
                }
                if !origin_allowed(&opts.origins, hs.request().header("origin")) {
                    tracing::warn!(peer = %display_addr(peer), origin = ?hs.request().header("origin"), "origin not allowed: 403");
                    let _ = Box::pin(hs.reject(403, "origin not allowed")).await;
                    return;
                }
            }
            // `shutdown` was cloned from a receiver that has seen only the
            // initial `false`: a shutdown that happened during this
            // handshake is still news to the handler.
            // The connection lives on in a task of its own, holding only its
            // handler's future: the state of the handshake phase (this
            // task) is freed now, which keeps idle connections small.
            // Spawned as it is: wrapping it in another async block would
            // store it twice (the captured value and the awaited one).
            connections.spawn(handler(hs, peer, shutdown));
        });
    }
    tracing::info!(
        connections = tracker.len(),
        "shutting down: closing connections with 1001"
    );
    let _ = shutdown_tx.send(true);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close within {SHUTDOWN_GRACE:?}");
    }
    Ok(())
}

fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    if allowed.is_empty() {
        return true;
    }
    origin.is_some_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
}
