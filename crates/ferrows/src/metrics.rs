//! Counters for a server (or client): connections, handshakes, messages and
//! bytes by opcode, close codes, compression and slow-consumer drops.
//!
//! Create one [`Metrics`], give a clone to the [`Config`](crate::Config) of
//! the connections to count ([`Config::metrics`](crate::Config::metrics);
//! a [`Listener`](crate::Listener) or [`callback::Server`](crate::Server)
//! passes its config on to every connection it accepts) and to the
//! [`Hub`](crate::Hub)s whose drops to count ([`Hub::with_metrics`](crate::Hub::with_metrics)),
//! then read the numbers with [`Metrics::snapshot`] whenever you like (for
//! a Prometheus scrape, a log line, a test):
//!
//! ```
//! use ferrows::metrics::Metrics;
//! use ferrows::{Config, Message};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> ferrows::Result<()> {
//! let metrics = Metrics::new();
//! let config = Config::default().metrics(metrics.clone());
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let url = format!("ws://{}/", listener.local_addr()?);
//! let server = tokio::spawn(async move {
//!     let (stream, _) = listener.accept().await?;
//!     let mut ws = ferrows::accept_with(stream, config, |_| Ok(Default::default())).await?;
//!     while let Some(msg) = ws.recv().await {
//!         if let msg @ Message::Text(_) = msg? {
//!             ws.send(msg).await?;
//!         }
//!     }
//!     Ok::<_, ferrows::Error>(())
//! });
//!
//! let (mut ws, _) = ferrows::connect(&url).await?;
//! ws.send("hello").await?;
//! ws.recv().await.expect("the echo")?;
//! ws.close(1000, "bye").await?;
//! server.await.expect("the server task")?;
//!
//! let s = metrics.snapshot();
//! assert_eq!(s.handshakes.get(&101), Some(&1));
//! assert_eq!(s.received.text.messages, 1);
//! assert_eq!(s.received.text.bytes, 5);
//! assert_eq!(s.sent.text.messages, 1);
//! assert_eq!(s.close_codes_received.get(&1000), Some(&1));
//! assert_eq!(s.close_codes_sent.get(&1000), Some(&1));
//! assert_eq!(s.connections_open, 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Cost
//!
//! Without metrics a connection pays one well-predicted branch per message.
//! With them, each connection counts in plain (non-atomic) fields of its
//! own and adds them to the shared atomic counters once per read batch
//! (when a read would wait), once per write batch (when the write queue
//! has drained) and when it ends: cores never contend over a counter per
//! message. Handshake outcomes and close codes are counted once per
//! connection, under a short lock.
//!
//! A snapshot therefore lags a busy connection by at most its current
//! batch; every count is in by the time the connection has ended.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ferrows_proto::CloseFrame;

use crate::message::Message;

/// Shared counters; cheap to clone (all clones count into the same place).
///
/// See the [module docs](self) for how to attach it and what it costs.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Shared>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Two handles are equal when they count into the same place.
impl PartialEq for Metrics {
    fn eq(&self, other: &Metrics) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for Metrics {}

#[derive(Default)]
struct Shared {
    opened: AtomicU64,
    closed: AtomicU64,
    handshakes: Codes,
    handshake_timeouts: AtomicU64,
    received: [[AtomicU64; 2]; OPS],
    sent: [[AtomicU64; 2]; OPS],
    close_sent: Codes,
    close_received: Codes,
    /// Sent: uncompressed, compressed; received: compressed, uncompressed.
    deflate: [AtomicU64; 4],
    queue_drops: AtomicU64,
}

#[derive(Default)]
struct Codes(Mutex<BTreeMap<u16, u64>>);

impl Codes {
    fn add(&self, code: u16) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(code).or_insert(0) += 1;
    }

    fn get(&self) -> BTreeMap<u16, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

const OPS: usize = 5;
const TEXT: usize = 0;
const BINARY: usize = 1;
const PING: usize = 2;
const PONG: usize = 3;
const CLOSE: usize = 4;

/// The close code a close frame carries, 1005 ("no status received", RFC
/// 6455 §7.1.5) for an empty one.
fn close_code(frame: Option<&CloseFrame>) -> u16 {
    frame.map_or(1005, |f| u16::from(f.code))
}

/// What one message adds to a direction's counts.
#[derive(Clone, Copy)]
pub(crate) struct Counted {
    op: usize,
    len: usize,
    /// A whole message (not a fragment before the last).
    whole: bool,
    /// A close frame's code.
    close: Option<u16>,
}

impl Counted {
    /// The counts of `msg`.
    #[inline]
    pub(crate) fn of(msg: &Message) -> Counted {
        if let Message::Close(frame) = msg {
            return Counted::close(frame.as_ref());
        }
        Counted {
            op: slot(msg),
            len: msg.len(),
            whole: !matches!(msg, Message::Fragment(f) if !f.fin),
            close: None,
        }
    }

    /// The counts of a close frame.
    pub(crate) fn close(frame: Option<&CloseFrame>) -> Counted {
        Counted {
            op: CLOSE,
            len: frame.map_or(0, |f| f.reason_bytes().len()),
            whole: true,
            close: Some(close_code(frame)),
        }
    }

    /// The counts of an automatic pong.
    pub(crate) fn of_pong(len: usize) -> Counted {
        Counted {
            op: PONG,
            len,
            whole: true,
            close: None,
        }
    }
}

/// The opcode slot of a message.
fn slot(msg: &Message) -> usize {
    match msg {
        Message::Text(_) => TEXT,
        Message::Binary(_) => BINARY,
        Message::Ping(_) => PING,
        Message::Pong(_) => PONG,
        Message::Close(_) => CLOSE,
        Message::Fragment(f) => {
            if f.opcode == ferrows_proto::OpCode::Binary {
                BINARY
            } else {
                TEXT
            }
        }
    }
}

impl Metrics {
    /// New counters, all zero.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Counts an HTTP response to a request for a WebSocket (or any request
    /// the [`Handshake`](crate::Handshake) refused): `101` for an accepted
    /// upgrade, the error status otherwise. The library counts every
    /// response it writes through a [`Handshake`](crate::Handshake) whose
    /// config carries these metrics, except pages answered with
    /// [`Handshake::respond`](crate::Handshake::respond); call this for
    /// refusals written some other way.
    pub fn handshake(&self, status: u16) {
        self.inner.handshakes.add(status);
    }

    /// Counts a handshake that timed out (the connection was closed
    /// without an answer).
    pub fn handshake_timeout(&self) {
        self.inner
            .handshake_timeouts
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a member dropped from a [`Hub`](crate::Hub) for being too
    /// slow (its connection is closed with 1008). Hubs made with
    /// [`Hub::with_metrics`](crate::Hub::with_metrics) count their own.
    pub fn queue_drop(&self) {
        self.inner.queue_drops.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        let s = &self.inner;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let traffic = |t: &[[AtomicU64; 2]; OPS]| {
            let count = |op: usize| {
                t.get(op).map_or(Count::default(), |[m, b]| Count {
                    messages: load(m),
                    bytes: load(b),
                })
            };
            Traffic {
                text: count(TEXT),
                binary: count(BINARY),
                ping: count(PING),
                pong: count(PONG),
                close: count(CLOSE),
            }
        };
        let [sent_in, sent_out, received_in, received_out] = &s.deflate;
        // Closed before opened: a connection ending between the two loads
        // never makes the gauge negative.
        let closed = load(&s.closed);
        let opened = load(&s.opened);
        Snapshot {
            connections_open: opened.saturating_sub(closed),
            connections_total: opened,
            handshakes: s.handshakes.get(),
            handshake_timeouts: load(&s.handshake_timeouts),
            received: traffic(&s.received),
            sent: traffic(&s.sent),
            close_codes_sent: s.close_sent.get(),
            close_codes_received: s.close_received.get(),
            compression: Compression {
                sent_uncompressed_bytes: load(sent_in),
                sent_compressed_bytes: load(sent_out),
                received_compressed_bytes: load(received_in),
                received_uncompressed_bytes: load(received_out),
            },
            queue_drops: load(&s.queue_drops),
        }
    }
}

/// The counters at one moment, as plain numbers. Counters only grow;
/// `connections_open` is a gauge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// WebSocket connections open now (created and not yet ended).
    pub connections_open: u64,
    /// WebSocket connections opened since the start.
    pub connections_total: u64,
    /// HTTP responses to handshakes by status: 101 accepted, 400 bad
    /// request, 403 origin not allowed, 426 wrong version, 431 head too
    /// large, 503 connection limit, and whatever else was refused.
    pub handshakes: BTreeMap<u16, u64>,
    /// Handshakes closed for taking longer than the handshake timeout.
    pub handshake_timeouts: u64,
    /// Messages and payload bytes received, by opcode (after
    /// decompression; fragments count their bytes, and a message once).
    pub received: Traffic,
    /// Messages and payload bytes sent, by opcode (before compression).
    pub sent: Traffic,
    /// Close frames sent, by code (1005: a close frame without a code).
    pub close_codes_sent: BTreeMap<u16, u64>,
    /// Close frames received, by code (1005: a close frame without a code).
    pub close_codes_received: BTreeMap<u16, u64>,
    /// permessage-deflate, both directions.
    pub compression: Compression,
    /// Members dropped from hubs for being too slow (closed with 1008).
    pub queue_drops: u64,
}

/// Messages and bytes of one direction, by opcode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Traffic {
    /// Text messages.
    pub text: Count,
    /// Binary messages.
    pub binary: Count,
    /// Pings.
    pub ping: Count,
    /// Pongs.
    pub pong: Count,
    /// Close frames (bytes: the reason).
    pub close: Count,
}

impl Traffic {
    /// `(opcode name, count)` for each opcode: `text`, `binary`, `ping`,
    /// `pong`, `close`.
    pub fn by_opcode(&self) -> [(&'static str, Count); 5] {
        [
            ("text", self.text),
            ("binary", self.binary),
            ("ping", self.ping),
            ("pong", self.pong),
            ("close", self.close),
        ]
    }
}

/// A number of messages and their payload bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Count {
    /// Messages (or frames, for control opcodes).
    pub messages: u64,
    /// Payload bytes.
    pub bytes: u64,
}

/// Bytes through permessage-deflate. Broadcast frames compressed once for
/// many connections ([`Prepared`](crate::Prepared)) are not included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Compression {
    /// Payload bytes compressed for sending, before compression.
    pub sent_uncompressed_bytes: u64,
    /// What they compressed to.
    pub sent_compressed_bytes: u64,
    /// Compressed payload bytes received.
    pub received_compressed_bytes: u64,
    /// What they inflated to.
    pub received_uncompressed_bytes: u64,
}

/// Which direction a connection's [`Local`] counts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Received,
    Sent,
}

/// One direction of one connection's counts, folded into the shared
/// counters in batches.
pub(crate) struct Local {
    metrics: Metrics,
    direction: Direction,
    counts: [[u64; 2]; OPS],
    dirty: bool,
    /// Deflate totals already folded.
    deflate_seen: (u64, u64),
    /// The read side counts the connection: it is open until this is
    /// cleared.
    open: bool,
}

impl Local {
    /// Counts for one direction of a new connection; the read side also
    /// counts the connection as open.
    pub(crate) fn new(metrics: &Metrics, direction: Direction) -> Box<Local> {
        let open = direction == Direction::Received;
        if open {
            metrics.inner.opened.fetch_add(1, Ordering::Relaxed);
        }
        Box::new(Local {
            metrics: metrics.clone(),
            direction,
            counts: [[0; 2]; OPS],
            dirty: false,
            deflate_seen: (0, 0),
            open,
        })
    }

    /// Counts a message (or control frame); a close code at once (once a
    /// connection).
    #[inline]
    pub(crate) fn add(&mut self, c: Counted) {
        if let Some([m, b]) = self.counts.get_mut(c.op) {
            *m += u64::from(c.whole);
            *b += c.len as u64;
            self.dirty = true;
        }
        if let Some(code) = c.close {
            self.close_code(code);
        }
    }

    fn close_code(&self, code: u16) {
        match self.direction {
            Direction::Received => self.metrics.inner.close_received.add(code),
            Direction::Sent => self.metrics.inner.close_sent.add(code),
        }
    }

    /// Adds the counts so far to the shared counters, with the deflate
    /// totals of this direction's codec (`(in, out)`, cumulative).
    pub(crate) fn fold(&mut self, deflate: (u64, u64)) {
        let shared = &self.metrics.inner;
        if self.dirty {
            self.dirty = false;
            let target = match self.direction {
                Direction::Received => &shared.received,
                Direction::Sent => &shared.sent,
            };
            for (local, shared) in self.counts.iter_mut().zip(target) {
                for (l, s) in local.iter_mut().zip(shared) {
                    if *l > 0 {
                        s.fetch_add(std::mem::take(l), Ordering::Relaxed);
                    }
                }
            }
        }
        if deflate != self.deflate_seen {
            let base = match self.direction {
                Direction::Sent => 0,
                Direction::Received => 2,
            };
            let added = [
                deflate.0.saturating_sub(self.deflate_seen.0),
                deflate.1.saturating_sub(self.deflate_seen.1),
            ];
            for (i, n) in added.into_iter().enumerate() {
                if let Some(a) = shared.deflate.get(base + i) {
                    a.fetch_add(n, Ordering::Relaxed);
                }
            }
            self.deflate_seen = deflate;
        }
    }

    /// Folds what is left and counts the connection as ended (once).
    pub(crate) fn end(&mut self, deflate: (u64, u64)) {
        self.fold(deflate);
        if std::mem::take(&mut self.open) {
            self.metrics.inner.closed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
