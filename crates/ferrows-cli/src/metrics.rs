//! `--metrics ADDR`: Prometheus metrics of every server on a listener of
//! their own, `GET /metrics` (OpenMetrics text, encoded by the
//! `prometheus-client` crate): the library's counters
//! ([`ferrows::metrics`]), the chat backplane's state and counters with
//! `--redis`, the gamepad's dead-man trips, and `ferrows_build_info`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use ferrows::backplane::BackplaneState;
use ferrows::metrics::Metrics;
use ferrows::{Config, Handshake, Listener, MaybeTlsStream};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::cluster::Cluster;
use crate::net::display_addr;

/// The path metrics are served on.
pub(crate) const PATH: &str = "/metrics";

/// The OpenMetrics text format `prometheus-client` writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Dead-man stops of the gamepad since the start (one robot a process).
pub(crate) static DEADMAN_TRIPS: AtomicU64 = AtomicU64::new(0);

/// What a server exports: the connections' counters and, once they
/// exist, the chat backplane and the gamepad.
#[derive(Debug, Default)]
pub(crate) struct Exporter {
    /// Given to every connection's [`Config`] and to the hubs.
    pub(crate) lib: Metrics,
    cluster: OnceLock<Arc<Cluster>>,
    gamepad: AtomicBool,
}

impl Exporter {
    /// Exports the chat backplane's state and counters.
    pub(crate) fn set_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// Exports the gamepad's dead-man trips.
    pub(crate) fn set_gamepad(&self) {
        self.gamepad.store(true, Ordering::Relaxed);
    }

    /// The exposition text.
    pub(crate) fn encode(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Collect(self.clone())));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("room", &self.room).finish()
    }
}

#[derive(Debug)]
struct Collect(Arc<Exporter>);

/// One metric without labels.
fn single(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    counter: bool,
    value: u64,
) -> std::fmt::Result {
    if counter {
        let c = ConstCounter::new(value);
        c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
    } else {
        let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
        g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
    }
}

/// A counter with one label.
fn family(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (String, u64)>,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        let labels = [(label, value)];
        ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The handshake outcomes always exported, zero or not.
const OUTCOMES: [u16; 7] = [101, 400, 403, 426, 429, 431, 503];

impl Collector for Collect {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = self.0.lib.snapshot();
        let e = &mut e;
        let info = Info::new([("version", env!("CARGO_PKG_VERSION"))]);
        info.encode(e.encode_descriptor(
            "ferrows_build",
            "The ferrows program's version.",
            None,
            info.metric_type(),
        )?)?;
        single(
            e,
            "ferrows_connections_open",
            "WebSocket connections open now.",
            false,
            s.connections_open,
        )?;
        single(
            e,
            "ferrows_connections",
            "WebSocket connections opened since the start.",
            true,
            s.connections_total,
        )?;
        let mut outcomes = s.handshakes.clone();
        for status in OUTCOMES {
            outcomes.entry(status).or_insert(0);
        }
        let outcomes = outcomes
            .into_iter()
            .map(|(status, n)| (status.to_string(), n))
            .chain([("timeout".to_owned(), s.handshake_timeouts)]);
        family(
            e,
            "ferrows_handshakes",
            "Answers to handshakes by HTTP status (101: accepted), and handshakes timed out.",
            "outcome",
            outcomes,
        )?;
        for (name, help, traffic, bytes) in [
            (
                "ferrows_messages_received",
                "Messages (control frames) received, by opcode.",
                &s.received,
                false,
            ),
            (
                "ferrows_messages_sent",
                "Messages (control frames) sent, by opcode.",
                &s.sent,
                false,
            ),
            (
                "ferrows_received_bytes",
                "Payload bytes received (after decompression), by opcode.",
                &s.received,
                true,
            ),
            (
                "ferrows_sent_bytes",
                "Payload bytes sent (before compression), by opcode.",
                &s.sent,
                true,
            ),
        ] {
            let values = traffic
                .by_opcode()
                .map(|(op, c)| (op.to_owned(), if bytes { c.bytes } else { c.messages }));
            family(e, name, help, "opcode", values)?;
        }
        for (name, help, codes) in [
            (
                "ferrows_close_codes_sent",
                "Close frames sent, by code (1005: none).",
                &s.close_codes_sent,
            ),
            (
                "ferrows_close_codes_received",
                "Close frames received, by code (1005: none).",
                &s.close_codes_received,
            ),
        ] {
            let values = codes.iter().map(|(c, n)| (c.to_string(), *n));
            family(e, name, help, "code", values)?;
        }
        let c = s.compression;
        family(
            e,
            "ferrows_deflate_uncompressed_bytes",
            "permessage-deflate: payload bytes before compression (sent) or after inflating (received).",
            "direction",
            [
                ("sent".to_owned(), c.sent_uncompressed_bytes),
                ("received".to_owned(), c.received_uncompressed_bytes),
            ],
        )?;
        family(
            e,
            "ferrows_deflate_compressed_bytes",
            "permessage-deflate: compressed payload bytes sent or received.",
            "direction",
            [
                ("sent".to_owned(), c.sent_compressed_bytes),
                ("received".to_owned(), c.received_compressed_bytes),
            ],
        )?;
        single(
            e,
            "ferrows_queue_drops",
            "Clients dropped for being too slow to keep up (closed with 1008).",
            true,
            s.queue_drops,
        )?;
        if self.0.gamepad.load(Ordering::Relaxed) {
            single(
                e,
                "ferrows_gamepad_deadman_trips",
                "Gamepad dead-man stops (no command from the driver in time).",
                true,
                DEADMAN_TRIPS.load(Ordering::Relaxed),
            )?;
        }
        if let Some(cluster) = self.0.cluster.get() {
            backplane(e, cluster)?;
        }
        Ok(())
    }
}

/// The chat backplane: up or not, and the relay's counters.
fn backplane(e: &mut DescriptorEncoder, cluster: &Cluster) -> std::fmt::Result {
    let s = cluster.relay.stats();
    let up = !cluster.is_stopped() && !matches!(s.state, BackplaneState::Down { .. });
    single(
        e,
        "ferrows_backplane_up",
        "1 while the chat backplane (Redis) is connected, 0 while it reconnects or stopped.",
        false,
        u64::from(up),
    )?;
    single(
        e,
        "ferrows_backplane_outbox_depth",
        "Entries waiting to be published to the backplane.",
        false,
        s.outbox_depth,
    )?;
    for (name, help, value) in [
        ("published", "Entries published.", s.published),
        (
            "received",
            "Entries read from the backplane, ours included.",
            s.received,
        ),
        (
            "delivered",
            "Entries of other nodes delivered to local clients.",
            s.delivered_remote,
        ),
        (
            "lost",
            "Entries known lost (gaps, trimmed, not sent).",
            s.lost,
        ),
        (
            "not_sent",
            "Entries given up on before publishing.",
            s.not_sent,
        ),
        (
            "republished",
            "Acknowledged entries republished after a lost log.",
            s.republished,
        ),
        ("retried", "Publishes retried.", s.retried),
        (
            "duplicates_dropped",
            "Entries dropped as already seen.",
            s.duplicates_dropped,
        ),
        ("oversize", "Entries too large to publish.", s.oversize),
        ("malformed", "Entries that could not be read.", s.malformed),
        (
            "foreign_version",
            "Entries of another protocol version.",
            s.foreign_version,
        ),
        (
            "reconnects",
            "Reconnections to the backplane.",
            s.reconnects,
        ),
        (
            "stream_resets",
            "Times the stream was found reset.",
            s.stream_resets,
        ),
        (
            "down_seconds",
            "Seconds the backplane was down in all.",
            s.down_seconds,
        ),
    ] {
        single(e, &format!("ferrows_backplane_{name}"), help, true, value)?;
    }
    Ok(())
}

/// Serves `GET /metrics` on `tcp` until `shutdown` is set.
pub(crate) async fn serve(
    tcp: tokio::net::TcpListener,
    exporter: Arc<Exporter>,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = tcp.local_addr().ok();
    let listener = match Listener::from_tcp(tcp) {
        Ok(l) => l.config(Config::default()).max_connections(64),
        Err(e) => {
            tracing::warn!(error = %e, "metrics listener failed");
            return;
        }
    };
    if let Some(addr) = local {
        tracing::info!("metrics: http://{}{PATH}", display_addr(addr));
    }
    let stop = async move {
        let _ = shutdown.wait_for(|stopped| *stopped).await;
    };
    let served = listener
        .serve_until(stop, move |hs, peer, _shutdown| {
            answer(hs, peer, exporter.clone())
        })
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "metrics listener failed");
    }
}

async fn answer(
    hs: Handshake<MaybeTlsStream<TcpStream>>,
    peer: SocketAddr,
    exporter: Arc<Exporter>,
) {
    let method = hs.request().method().to_owned();
    let result = if hs.request().path() != PATH {
        hs.respond(
            404,
            &[],
            "text/plain; charset=utf-8",
            b"not found: try /metrics\n",
        )
        .await
    } else if method != "GET" && method != "HEAD" {
        let allow = [("Allow".to_owned(), "GET, HEAD".to_owned())];
        hs.respond(
            405,
            &allow,
            "text/plain; charset=utf-8",
            b"method not allowed\n",
        )
        .await
    } else {
        let body = exporter.encode();
        hs.respond(200, &[], CONTENT_TYPE, body.as_bytes()).await
    };
    if let Err(e) = result {
        tracing::debug!(peer = %display_addr(peer), error = %e, "metrics request failed");
    }
}
