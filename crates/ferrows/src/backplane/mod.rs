//! Broadcast across processes: the transport contract a `Relay` runs over.
//!
//! A backplane carries [`Entry`]s — a text or binary message, the random
//! [`NodeId`] of the process that sent it and that process's sequence
//! number — between the nodes of a cluster. The engine behind it (Redis
//! Streams in the `ferrows-redis` crate, an in-process bus in
//! [`memory`] for tests) only has to move ordered batches and resume after
//! a reconnect; the policy — dedupe, loss accounting, hold and retry,
//! reconnect backoff, liveness timeouts — is the [`Relay`]'s, the same for
//! every engine.
//!
//! Frames never travel: an entry is an opcode and a payload, encoded (and
//! compressed, masked) by each node for its own connections.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::message::Message;

pub mod memory;
mod relay;

pub use relay::{BackplaneState, Relay, RelayConfig, RelayEvent, RelayEvents, RelayStats};

/// A boxed, sendable future: what the transport traits return, so that they
/// stay dyn-compatible and name no foreign type.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One process of a cluster: random, fresh at every start, never
/// configured (a human name is for logs only). Displayed as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u64);

impl NodeId {
    /// A fresh random id.
    pub fn random() -> NodeId {
        // RandomState is seeded from the OS's randomness once per process
        // and per-instance keys differ: hashing a counter and the time
        // gives 64 unpredictable bits without a new dependency.
        use std::collections::hash_map::RandomState;
        use std::hash::{BuildHasher, Hasher};
        let mut h = RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        h.write_u32(std::process::id());
        NodeId(h.finish())
    }

    /// The id with this value (as read back from a transport).
    pub const fn from_u64(id: u64) -> NodeId {
        NodeId(id)
    }

    /// The id's value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({:016x})", self.0)
    }
}

/// What travels on a backplane: one text or binary message from one node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// The node that broadcast it.
    pub origin: NodeId,
    /// The origin's sequence number: 1, 2, 3, … per process start; a gap
    /// is a loss, a repeat a duplicate.
    pub seq: u64,
    /// [`Message::Text`] or [`Message::Binary`]; transports carry nothing
    /// else.
    pub message: Message,
}

impl Entry {
    /// An entry. `None` unless `message` is text or binary.
    pub fn new(origin: NodeId, seq: u64, message: Message) -> Option<Entry> {
        matches!(message, Message::Text(_) | Message::Binary(_)).then_some(Entry {
            origin,
            seq,
            message,
        })
    }

    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        match &self.message {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            _ => 0,
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a transport read: the entries, in the engine's order, and how many
/// it had to skip.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Batch {
    /// The entries, in order. Empty on an idle interval: a transport's read
    /// returns at least once a second or so, which is its heartbeat.
    pub entries: Vec<Entry>,
    /// Entries of a format version this node does not know (another node
    /// runs a newer ferrows): skipped.
    pub foreign_version: u64,
    /// Entries larger than the transport's limit: skipped.
    pub oversize: u64,
    /// Entries that could not be decoded (missing fields, text that is not
    /// UTF-8): skipped.
    pub malformed: u64,
}

impl Batch {
    /// A batch of these entries, nothing skipped.
    pub fn of(entries: Vec<Entry>) -> Batch {
        Batch {
            entries,
            ..Batch::default()
        }
    }

    /// Entries skipped, of every kind.
    pub fn skipped(&self) -> u64 {
        self.foreign_version + self.oversize + self.malformed
    }
}

/// How a reader or a publisher came back after [`BackplaneRx::reconnect`]
/// or [`BackplaneTx::reconnect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resume {
    /// Reading continues right after the last entry returned: nothing the
    /// engine still holds is missed.
    Continued,
    /// The engine lost its log (a restart without persistence, a failover,
    /// a flush): reading starts again from the oldest entry it has.
    /// Per-origin dedupe drops what was already seen.
    Reset,
}

/// Why a transport operation failed. The text never contains credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError {
    kind: TransportErrorKind,
    message: String,
}

/// The kind of a [`TransportError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// The engine could not be reached, or the connection broke.
    Connection,
    /// The engine answered with an error.
    Engine,
    /// The operation was not answered in time.
    Timeout,
}

impl TransportError {
    /// An error of this kind; `message` must not contain credentials.
    pub fn new(kind: TransportErrorKind, message: impl Into<String>) -> TransportError {
        TransportError {
            kind,
            message: message.into(),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> TransportErrorKind {
        self.kind
    }

    /// Its text.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TransportError {}

/// A backplane transport, split into its publishing and its reading half:
/// a blocking read occupies its connection, so they are separate.
pub trait Backplane: Send + 'static {
    /// The publishing half.
    type Tx: BackplaneTx;
    /// The reading half.
    type Rx: BackplaneRx;
    /// The two halves.
    fn split(self) -> (Self::Tx, Self::Rx);
}

/// The publishing half of a transport. The `Relay` calls it from one
/// task, one batch at a time, so order is kept.
pub trait BackplaneTx: Send + 'static {
    /// Publishes `batch`, in order. On an error, any prefix of the batch
    /// may have been published (the relay retries it whole; receivers
    /// drop the duplicates).
    fn send<'a>(&'a mut self, batch: &'a [Entry]) -> BoxFuture<'a, Result<(), TransportError>>;

    /// Reconnects after an error (one attempt; the relay owns the backoff)
    /// and says whether the engine still holds what this publisher had
    /// published ([`Resume::Continued`]) or lost its log meanwhile
    /// ([`Resume::Reset`]: a restart without persistence, a failover, a
    /// flush). On a reset the relay publishes again the entries it keeps
    /// for [`RelayConfig::hold`] after their acknowledgement; receivers drop
    /// those they had already read. When unsure, say `Reset`: the cost is
    /// duplicates that receivers drop.
    fn reconnect(&mut self) -> BoxFuture<'_, Result<Resume, TransportError>>;

    /// The largest payload this transport publishes, if it has a limit:
    /// the relay refuses larger broadcasts (counted `not_sent`). Default:
    /// no limit.
    fn max_entry_bytes(&self) -> Option<usize> {
        None
    }
}

/// The reading half of a transport.
pub trait BackplaneRx: Send + 'static {
    /// The next batch after the last one returned. Returns within about a
    /// second even when nothing arrives (an empty batch): that reply is the
    /// relay's proof that the engine is alive.
    fn recv(&mut self) -> BoxFuture<'_, Result<Batch, TransportError>>;

    /// Reconnects after an error (one attempt) and resumes after the last
    /// entry returned, or says it could not ([`Resume::Reset`]).
    fn reconnect(&mut self) -> BoxFuture<'_, Result<Resume, TransportError>>;
}
