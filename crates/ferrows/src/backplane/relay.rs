//! The relay: a local [`Hub`] connected to a backplane.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, broadcast, watch};
use tokio::time::Instant;

use super::{Backplane, BackplaneRx, BackplaneTx, Batch, Entry, NodeId, Resume, TransportError};
use crate::broadcast::Hub;
use crate::message::Message;

/// How many events a subscriber may fall behind before it loses the oldest.
const EVENT_BUFFER: usize = 64;
/// While down, the warning is repeated at most this often.
const DOWN_LOG_EVERY: Duration = Duration::from_secs(30);

/// The relay's settings. Every default is the one of SCALEOUT §5.7.
///
/// ```
/// use std::time::Duration;
/// let config = ferrows::backplane::RelayConfig::default()
///     .hold(Duration::from_secs(1))
///     .name("web1:9002");
/// assert_eq!(config.outbox_entries, 1024);
/// ```
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// How long an entry may wait in the outbox (the backplane being down
    /// or slow) before it is dropped and counted `not_sent`; also how long
    /// a published entry is kept after the engine acknowledged it, to be
    /// published again if the engine turns out to have lost its log
    /// (counted `republished`). Default: 2 s.
    pub hold: Duration,
    /// The most entries the outbox holds (at least 1); broadcasts beyond it
    /// are counted `not_sent`. Acknowledged entries are kept within the
    /// same number again (the oldest dropped first). Default: 1024.
    pub outbox_entries: usize,
    /// The most payload bytes the outbox holds; acknowledged entries are
    /// kept within the same number again. Default: 16 MiB.
    pub outbox_bytes: usize,
    /// The most entries per send (at least 1). Default: 256.
    pub batch: usize,
    /// The first reconnect delay (at least 1 ms), doubled after every
    /// failed attempt. Default: 100 ms.
    pub backoff_min: Duration,
    /// The longest reconnect delay. Default: 2 s.
    pub backoff_max: Duration,
    /// A send, read or reconnect not answered in this time means the
    /// engine is dead (a transport's read returns at least once a second).
    /// Default: 3 s.
    pub reply_timeout: Duration,
    /// The most origins (other nodes) whose sequence numbers are tracked
    /// (at least 1); the least recently seen is forgotten first. Default:
    /// 4096.
    pub origins: usize,
    /// An origin not seen for this long is forgotten. Default: 10 min.
    pub origin_idle: Duration,
    /// This node's name, for logs only. Default: empty.
    pub name: String,
}

impl Default for RelayConfig {
    fn default() -> RelayConfig {
        RelayConfig {
            hold: Duration::from_secs(2),
            outbox_entries: 1024,
            outbox_bytes: 16 << 20,
            batch: 256,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            reply_timeout: Duration::from_secs(3),
            origins: 4096,
            origin_idle: Duration::from_secs(600),
            name: String::new(),
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $field(mut self, value: $ty) -> RelayConfig {
                self.$field = value;
                self
            }
        )*
    };
}

impl RelayConfig {
    setters! {
        /// Sets [`RelayConfig::hold`].
        hold: Duration;
        /// Sets [`RelayConfig::outbox_entries`].
        outbox_entries: usize;
        /// Sets [`RelayConfig::outbox_bytes`].
        outbox_bytes: usize;
        /// Sets [`RelayConfig::batch`].
        batch: usize;
        /// Sets [`RelayConfig::backoff_min`].
        backoff_min: Duration;
        /// Sets [`RelayConfig::backoff_max`].
        backoff_max: Duration;
        /// Sets [`RelayConfig::reply_timeout`].
        reply_timeout: Duration;
        /// Sets [`RelayConfig::origins`].
        origins: usize;
        /// Sets [`RelayConfig::origin_idle`].
        origin_idle: Duration;
    }

    /// Sets [`RelayConfig::name`].
    pub fn name(mut self, name: impl Into<String>) -> RelayConfig {
        self.name = name.into();
        self
    }

    /// The same settings with the documented floors applied.
    fn sane(mut self) -> RelayConfig {
        self.outbox_entries = self.outbox_entries.max(1);
        self.batch = self.batch.max(1);
        self.origins = self.origins.max(1);
        self.backoff_min = self.backoff_min.max(Duration::from_millis(1));
        self.backoff_max = self.backoff_max.max(self.backoff_min);
        self.reply_timeout = self.reply_timeout.max(Duration::from_millis(1));
        self
    }
}

/// Whether the backplane works.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackplaneState {
    /// Both publishing and reading work (or have not failed yet: a relay
    /// starts up).
    Up,
    /// Publishing or reading failed; messages reach this hub's members
    /// only, and the relay is reconnecting.
    Down {
        /// When it went down.
        since: SystemTime,
        /// The first failure.
        reason: String,
    },
}

/// Something subscribers of [`Relay::events`] are told about, once per
/// occurrence.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayEvent {
    /// Publishing and reading work again.
    Up {
        /// The engine had lost its log: it was read again from its start
        /// (what was already delivered is not delivered twice).
        after_reset: bool,
    },
    /// Publishing or reading failed: messages now reach this hub's
    /// members only.
    Down {
        /// Why (never contains credentials).
        reason: String,
    },
    /// Messages from another node never arrived here.
    Lost {
        /// The node that sent them.
        origin: NodeId,
        /// How many.
        count: u64,
        /// The sequence number of the first (the rest follow it).
        first_seq: u64,
    },
    /// Messages broadcast here could not be published (the outbox was
    /// full, or they waited longer than [`RelayConfig::hold`]): other
    /// nodes will count them lost.
    NotSent {
        /// How many.
        count: u64,
    },
}

/// A snapshot of a relay's counters (all since it started) and state.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayStats {
    /// Entries published to the backplane.
    pub published: u64,
    /// Entries broadcast here but never published (outbox full, older
    /// than [`RelayConfig::hold`], or larger than the transport's
    /// [`BackplaneTx::max_entry_bytes`]).
    pub not_sent: u64,
    /// Entries published, acknowledged, then published again because the
    /// publisher found on reconnecting that the engine had lost its log
    /// (a restart without persistence): those acknowledged within
    /// [`RelayConfig::hold`] before. Receivers drop the copies they had
    /// already read; not counted again in `published`.
    pub republished: u64,
    /// Entries sent again after a failed send (not counting `republished`
    /// ones).
    pub retried: u64,
    /// Entries read from other nodes (this node's own are not counted).
    pub received: u64,
    /// Entries from other nodes delivered to this hub.
    pub delivered_remote: u64,
    /// Entries read more than once, dropped.
    pub duplicates_dropped: u64,
    /// Entries of other nodes that never arrived (gaps in their sequence).
    pub lost: u64,
    /// Entries skipped by the transport: a format version this node does
    /// not know.
    pub foreign_version: u64,
    /// Entries skipped by the transport: over its size limit.
    pub oversize: u64,
    /// Entries skipped by the transport: undecodable.
    pub malformed: u64,
    /// Reconnect attempts, of either half, failed or not.
    pub reconnects: u64,
    /// Whole seconds the backplane has been down, in all (the current
    /// outage included).
    pub down_seconds: u64,
    /// Reader reconnects that continued where they were.
    pub resumes: u64,
    /// Reader reconnects that found the engine's log lost and read it
    /// again from its start.
    pub stream_resets: u64,
    /// Entries waiting in the outbox (including a batch being sent).
    pub outbox_depth: u64,
    /// Origins (other nodes) whose sequence numbers are tracked.
    pub origins: u64,
    /// The backplane's state.
    pub state: BackplaneState,
}

/// Connects a local [`Hub`] to a backplane, so that a broadcast on any
/// node reaches the hub members of every node.
///
/// [`Relay::broadcast`] delivers to this hub at once and queues the message
/// for the backplane; it never waits. A publisher task sends the queue in
/// batches, one at a time (so each node's messages keep their order), and
/// holds and retries them while the backplane is down; a reader task
/// delivers other nodes' messages to the hub, drops duplicates and counts
/// gaps. Both reconnect forever with a capped, jittered backoff. See
/// [`RelayStats`] and [`RelayEvent`] for what is counted and reported.
///
/// Cloning shares the relay; its tasks stop when the last clone is dropped
/// or on [`Relay::shutdown`].
///
/// Three nodes in one process, on the in-process bus:
///
/// ```
/// use ferrows::Hub;
/// use ferrows::backplane::memory::Bus;
/// use ferrows::backplane::{Relay, RelayConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let bus = Bus::new();
/// let nodes: Vec<Relay> = (0..3)
///     .map(|_| Relay::start(Hub::new(16), bus.connect(), RelayConfig::default()))
///     .collect();
/// let mut members: Vec<_> = nodes.iter().map(|n| n.hub().join()).collect();
///
/// // Delivered to the local member at once, then to the others.
/// assert_eq!(nodes[0].broadcast("hello"), 1);
/// for member in &mut members {
///     let got = member.recv().await.expect("a message");
///     assert_eq!(got.message().as_text(), Some("hello"));
/// }
/// assert_eq!(nodes[1].stats().delivered_remote, 1);
/// # }
/// ```
#[derive(Clone)]
pub struct Relay {
    shared: Arc<Shared>,
    /// Dropped with the last clone: stops the tasks.
    _stop: Arc<StopOnDrop>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("node", &self.shared.node)
            .field("name", &self.shared.config.name)
            .field("state", &self.state())
            .finish()
    }
}

struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl Relay {
    /// Starts relaying between `hub` and `backplane`, as a new node with a
    /// random [`NodeId`]. The backplane is taken as connected (its
    /// constructor connects): the relay starts [`BackplaneState::Up`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (it spawns its tasks there).
    pub fn start<B: Backplane>(hub: Hub, backplane: B, config: RelayConfig) -> Relay {
        Relay::with_node(hub, backplane, config, NodeId::random())
    }

    /// [`Relay::start`] with a given node id (for tests: ids must be unique
    /// in a cluster and fresh at every start).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn with_node<B: Backplane>(
        hub: Hub,
        backplane: B,
        config: RelayConfig,
        node: NodeId,
    ) -> Relay {
        let config = config.sane();
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (tx, rx) = backplane.split();
        let shared = Arc::new(Shared {
            hub,
            node,
            max_entry: tx.max_entry_bytes(),
            outbox: Mutex::new(Outbox::default()),
            queued: Notify::new(),
            counters: Counters::default(),
            unreported_not_sent: AtomicU64::new(0),
            origins: AtomicU64::new(0),
            health: Mutex::new(Health::default()),
            events: Mutex::new(Some(events)),
            tasks: AtomicUsize::new(2),
            config,
        });
        tokio::spawn(run_until_stopped(
            publisher(shared.clone(), tx),
            stop_rx.clone(),
            TaskGuard(shared.clone()),
        ));
        tokio::spawn(run_until_stopped(
            reader(shared.clone(), rx),
            stop_rx,
            TaskGuard(shared.clone()),
        ));
        Relay {
            shared,
            _stop: Arc::new(StopOnDrop(stop_tx)),
        }
    }

    /// Broadcasts `message` to this hub's members at once (returning how
    /// many queued it), and queues it for the other nodes. Never waits: if
    /// the outbox is full the message is counted `not_sent`, and its
    /// sequence number is used anyway so that the other nodes see the gap.
    /// So is a message larger than the transport's limit
    /// ([`BackplaneTx::max_entry_bytes`]). Messages other than text and binary are delivered locally only.
    pub fn broadcast(&self, message: impl Into<Message>) -> usize {
        let message = message.into();
        let shared = &self.shared;
        if !(message.is_text() || message.is_binary()) {
            return shared.hub.broadcast(message);
        }
        let now = Instant::now();
        // Delivered locally under the outbox's lock: concurrent callers get
        // the same order here as their sequence numbers give elsewhere.
        let mut outbox = shared.outbox();
        let delivered = shared.hub.broadcast(message.clone());
        outbox.seq += 1;
        let Some(entry) = Entry::new(shared.node, outbox.seq, message) else {
            return delivered;
        };
        let expired = outbox.expire(now, shared.config.hold);
        let fits = outbox.queue.len() < shared.config.outbox_entries
            && outbox.bytes.saturating_add(entry.len()) <= shared.config.outbox_bytes
            && shared.max_entry.is_none_or(|max| entry.len() <= max);
        if fits {
            outbox.bytes += entry.len();
            outbox.queue.push_back(Queued {
                at: now,
                entry,
                again: false,
            });
        }
        drop(outbox);
        let not_sent = expired + u64::from(!fits);
        if not_sent > 0 {
            shared.not_sent(not_sent);
        }
        if fits {
            shared.queued.notify_one();
        }
        delivered
    }

    /// The local hub.
    pub fn hub(&self) -> &Hub {
        &self.shared.hub
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.shared.node
    }

    /// A snapshot of the counters and the state.
    pub fn stats(&self) -> RelayStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (state, down_for) = {
            let health = self.shared.health();
            (health.state(), health.down_for())
        };
        let outbox_depth = self.shared.outbox().queue.len() as u64;
        RelayStats {
            published: get(&c.published),
            not_sent: get(&c.not_sent),
            republished: get(&c.republished),
            retried: get(&c.retried),
            received: get(&c.received),
            delivered_remote: get(&c.delivered_remote),
            duplicates_dropped: get(&c.duplicates_dropped),
            lost: get(&c.lost),
            foreign_version: get(&c.foreign_version),
            oversize: get(&c.oversize),
            malformed: get(&c.malformed),
            reconnects: get(&c.reconnects),
            down_seconds: down_for.as_secs(),
            resumes: get(&c.resumes),
            stream_resets: get(&c.stream_resets),
            outbox_depth,
            origins: get(&self.shared.origins),
            state,
        }
    }

    /// Whether the backplane works.
    pub fn state(&self) -> BackplaneState {
        self.shared.health().state()
    }

    /// A new subscriber to this relay's events, from now on.
    pub fn events(&self) -> RelayEvents {
        let rx = match &*self.shared.events() {
            Some(tx) => tx.subscribe(),
            // Stopped: a subscriber that ends at once.
            None => broadcast::channel(1).1,
        };
        RelayEvents { rx, missed: 0 }
    }

    /// Stops the relay's tasks (as dropping the last clone does); what is
    /// still in the outbox is not sent. Broadcasts still reach this hub.
    pub fn shutdown(&self) {
        self._stop.0.send_replace(true);
    }
}

/// A subscriber to a relay's events ([`Relay::events`]). It buffers 64
/// events; one that falls further behind loses the oldest
/// ([`RelayEvents::missed`] counts them), the relay never waits for it.
pub struct RelayEvents {
    rx: broadcast::Receiver<RelayEvent>,
    missed: u64,
}

impl fmt::Debug for RelayEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayEvents")
            .field("missed", &self.missed)
            .finish()
    }
}

impl RelayEvents {
    /// The next event; `None` once the relay has stopped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an event is never lost by dropping the future.
    pub async fn next(&mut self) -> Option<RelayEvent> {
        loop {
            match self.rx.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.missed = self.missed.saturating_add(n);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// An event that is ready, without waiting.
    pub fn try_next(&mut self) -> Option<RelayEvent> {
        loop {
            match self.rx.try_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    self.missed = self.missed.saturating_add(n);
                }
                Err(_) => return None,
            }
        }
    }

    /// How many events this subscriber lost by falling behind.
    pub fn missed(&self) -> u64 {
        self.missed
    }
}

/// What the relay's handle and its two tasks share.
struct Shared {
    hub: Hub,
    node: NodeId,
    config: RelayConfig,
    /// The transport's payload limit.
    max_entry: Option<usize>,
    outbox: Mutex<Outbox>,
    /// Woken when an entry is queued.
    queued: Notify,
    counters: Counters,
    /// `not_sent` not yet reported in an event.
    unreported_not_sent: AtomicU64,
    origins: AtomicU64,
    health: Mutex<Health>,
    /// Dropped when both tasks have ended, which ends the subscribers.
    events: Mutex<Option<broadcast::Sender<RelayEvent>>>,
    tasks: AtomicUsize,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    not_sent: AtomicU64,
    republished: AtomicU64,
    retried: AtomicU64,
    received: AtomicU64,
    delivered_remote: AtomicU64,
    duplicates_dropped: AtomicU64,
    lost: AtomicU64,
    foreign_version: AtomicU64,
    oversize: AtomicU64,
    malformed: AtomicU64,
    reconnects: AtomicU64,
    resumes: AtomicU64,
    stream_resets: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        lock(&self.outbox)
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        lock(&self.health)
    }

    fn events(&self) -> MutexGuard<'_, Option<broadcast::Sender<RelayEvent>>> {
        lock(&self.events)
    }

    fn emit(&self, event: RelayEvent) {
        if let Some(tx) = &*self.events() {
            // No subscriber is not an error.
            let _ = tx.send(event);
        }
    }

    fn not_sent(&self, n: u64) {
        add(&self.counters.not_sent, n);
        add(&self.unreported_not_sent, n);
    }

    /// Emits one [`RelayEvent::NotSent`] for what was not sent since the
    /// last one.
    fn report_not_sent(&self) {
        let count = self.unreported_not_sent.swap(0, Ordering::Relaxed);
        if count > 0 {
            tracing::debug!(
                target: "ferrows::relay",
                node = %self.config.name,
                "{count} messages were not sent to the other servers"
            );
            self.emit(RelayEvent::NotSent { count });
        }
    }

    /// `half` failed: the backplane is down if it was up.
    fn failed(&self, half: Half, error: &TransportError) {
        let mut health = self.health();
        let was_up = health.is_up();
        let reason = error.to_string();
        *health.error_mut(half) = Some(reason.clone());
        if was_up {
            health.down_since = Some((SystemTime::now(), Instant::now(), reason.clone()));
            health.last_down_log = Some(Instant::now());
            // Told under the lock: transitions reach subscribers in order.
            self.emit(RelayEvent::Down {
                reason: reason.clone(),
            });
            drop(health);
            tracing::warn!(
                target: "ferrows::relay",
                node = %self.config.name,
                "backplane down: {reason}; messages reach this server's clients only; retrying"
            );
        } else {
            drop(health);
            self.still_down(error);
        }
    }

    /// `half` works: the backplane is up if the other half works too.
    fn working(&self, half: Half) {
        let mut health = self.health();
        if health.error_mut(half).take().is_none() || !health.is_up() {
            return;
        }
        let after_reset = std::mem::take(&mut health.reset_pending);
        let down_for = health
            .down_since
            .take()
            .map(|(_, at, _)| at.elapsed())
            .unwrap_or_default();
        health.last_down_log = None;
        health.down_before += down_for;
        self.emit(RelayEvent::Up { after_reset });
        drop(health);
        let how = if after_reset {
            "the engine had lost its log: read again from its start"
        } else {
            "resumed"
        };
        tracing::info!(
            target: "ferrows::relay",
            node = %self.config.name,
            "backplane up after {:.1} s down ({how})",
            down_for.as_secs_f64()
        );
    }

    /// A call or reconnect failed while down: repeats the warning every 30 s.
    fn still_down(&self, error: &TransportError) {
        let mut health = self.health();
        let due = health
            .last_down_log
            .is_none_or(|at| at.elapsed() >= DOWN_LOG_EVERY);
        if due && !health.is_up() {
            health.last_down_log = Some(Instant::now());
            drop(health);
            tracing::warn!(
                target: "ferrows::relay",
                node = %self.config.name,
                "backplane down: {error}; messages reach this server's clients only; retrying"
            );
        }
    }
}

/// One of the relay's two tasks.
#[derive(Clone, Copy)]
enum Half {
    Publisher,
    Reader,
}

#[derive(Default)]
struct Health {
    publisher_error: Option<String>,
    reader_error: Option<String>,
    /// When it went down (wall clock, monotonic) and why.
    down_since: Option<(SystemTime, Instant, String)>,
    /// The reader found the log reset; told with the next Up.
    reset_pending: bool,
    last_down_log: Option<Instant>,
    /// The time spent down in earlier outages.
    down_before: Duration,
}

impl Health {
    fn is_up(&self) -> bool {
        self.publisher_error.is_none() && self.reader_error.is_none()
    }

    fn error_mut(&mut self, half: Half) -> &mut Option<String> {
        match half {
            Half::Publisher => &mut self.publisher_error,
            Half::Reader => &mut self.reader_error,
        }
    }

    /// The time spent down in all, the current outage included.
    fn down_for(&self) -> Duration {
        let now = self.down_since.as_ref().map(|(_, at, _)| at.elapsed());
        self.down_before + now.unwrap_or_default()
    }

    fn state(&self) -> BackplaneState {
        match &self.down_since {
            Some((since, _, reason)) if !self.is_up() => BackplaneState::Down {
                since: *since,
                reason: reason.clone(),
            },
            _ => BackplaneState::Up,
        }
    }
}

/// Ends the relay's events once both tasks have ended (or been dropped
/// with the runtime).
struct TaskGuard(Arc<Shared>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.events().take();
        }
    }
}

async fn run_until_stopped(
    task: impl std::future::Future<Output = ()>,
    mut stop: watch::Receiver<bool>,
    _guard: TaskGuard,
) {
    tokio::select! {
        _ = stop.wait_for(|stopped| *stopped) => {}
        () = task => {}
    }
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<Queued>,
    /// The payload bytes in `queue`.
    bytes: usize,
    /// Entries the engine acknowledged within the last `hold` (`at` is
    /// when), oldest first: published again if it lost its log.
    acked: VecDeque<Queued>,
    /// The payload bytes in `acked`.
    acked_bytes: usize,
    /// The last sequence number given out.
    seq: u64,
    /// Entries up to this seq are being sent: not expired meanwhile.
    sending_upto: u64,
}

struct Queued {
    at: Instant,
    entry: Entry,
    /// Queued again after the engine lost its log: already counted
    /// `published` (and `republished`), never `not_sent`.
    again: bool,
}

impl Outbox {
    /// Drops the entries older than `hold` (except those being sent), and
    /// the acknowledged ones older than `hold`; returns how many never
    /// published were dropped.
    fn expire(&mut self, now: Instant, hold: Duration) -> u64 {
        let mut dropped = 0;
        while let Some(front) = self.queue.front() {
            if front.entry.seq <= self.sending_upto || now.duration_since(front.at) <= hold {
                break;
            }
            if !front.again {
                dropped += 1;
            }
            self.pop();
        }
        while self
            .acked
            .front()
            .is_some_and(|q| now.duration_since(q.at) > hold)
        {
            self.pop_acked();
        }
        dropped
    }

    fn pop(&mut self) -> Option<Queued> {
        let q = self.queue.pop_front()?;
        self.bytes = self.bytes.saturating_sub(q.entry.len());
        Some(q)
    }

    fn pop_acked(&mut self) {
        if let Some(q) = self.acked.pop_front() {
            self.acked_bytes = self.acked_bytes.saturating_sub(q.entry.len());
        }
    }

    /// Moves the queued entries up to `upto` to the acknowledged ones (at
    /// `now`), keeping those within `entries` and `bytes`.
    fn acknowledge(&mut self, upto: u64, now: Instant, entries: usize, bytes: usize) {
        while self.queue.front().is_some_and(|q| q.entry.seq <= upto) {
            if let Some(mut q) = self.pop() {
                q.at = now;
                self.acked_bytes += q.entry.len();
                self.acked.push_back(q);
            }
        }
        while self.acked.len() > entries || self.acked_bytes > bytes {
            self.pop_acked();
        }
    }

    /// Puts the acknowledged entries back at the front of the queue (they
    /// precede every queued one), to be sent again from `now` on; returns
    /// how many.
    fn requeue_acked(&mut self, now: Instant) -> u64 {
        let n = self.acked.len() as u64;
        while let Some(mut q) = self.acked.pop_back() {
            self.acked_bytes = self.acked_bytes.saturating_sub(q.entry.len());
            self.bytes += q.entry.len();
            q.at = now;
            q.again = true;
            self.queue.push_front(q);
        }
        n
    }
}

/// Reconnect delays: `min` doubling up to `max`, ±20 % jitter (never above
/// `max`), starting over after a success.
struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    fn new(config: &RelayConfig) -> Backoff {
        Backoff {
            min: config.backoff_min,
            max: config.backoff_max,
            failures: 0,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let base = self
            .min
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        base.mul_f64(0.8 + 0.4 * random_unit()).min(self.max)
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A number in `[0, 1)`, different on every call, without a dependency.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

fn timeout_error(what: &str, after: Duration) -> TransportError {
    TransportError::new(
        super::TransportErrorKind::Timeout,
        format!("no reply to a {what} in {after:?}"),
    )
}

/// Sends the outbox, in order, one batch at a time.
async fn publisher<T: BackplaneTx>(shared: Arc<Shared>, mut tx: T) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config);
    let mut batch: Vec<Entry> = Vec::with_capacity(config.batch.min(1024));
    // The highest seq of a batch that failed: what is sent again up to it
    // counts as retried.
    let mut failed_upto = 0;
    loop {
        shared.report_not_sent();
        batch.clear();
        let expired;
        {
            let mut outbox = shared.outbox();
            expired = outbox.expire(Instant::now(), config.hold);
            batch.extend(
                outbox
                    .queue
                    .iter()
                    .take(config.batch)
                    .map(|q| q.entry.clone()),
            );
            outbox.sending_upto = batch.last().map_or(0, |e| e.seq);
        }
        if expired > 0 {
            shared.not_sent(expired);
            shared.report_not_sent();
        }
        let Some(upto) = batch.last().map(|e| e.seq) else {
            // Nothing to prove: a reconnected publisher counts as working.
            shared.working(Half::Publisher);
            shared.queued.notified().await;
            continue;
        };
        // Entries queued again after a lost log count as republished, not
        // as published or retried a second time.
        let (again, retried) = {
            let outbox = shared.outbox();
            outbox
                .queue
                .iter()
                .take(batch.len())
                .fold((0, 0), |(again, retried), q| {
                    if q.again {
                        (again + 1, retried)
                    } else {
                        (again, retried + u64::from(q.entry.seq <= failed_upto))
                    }
                })
        };
        add(&shared.counters.retried, retried);
        let result = tokio::time::timeout(config.reply_timeout, tx.send(&batch))
            .await
            .unwrap_or_else(|_| Err(timeout_error("send", config.reply_timeout)));
        {
            let mut outbox = shared.outbox();
            outbox.sending_upto = 0;
            if result.is_ok() {
                outbox.acknowledge(
                    upto,
                    Instant::now(),
                    config.outbox_entries,
                    config.outbox_bytes,
                );
            }
        }
        match result {
            Ok(()) => {
                add(
                    &shared.counters.published,
                    batch.len().saturating_sub(again) as u64,
                );
                backoff.reset();
                shared.working(Half::Publisher);
            }
            Err(e) => {
                failed_upto = upto;
                shared.failed(Half::Publisher, &e);
                let resume = reconnect(&shared, &mut backoff, &mut tx, T::reconnect).await;
                if resume == Resume::Reset {
                    let now = Instant::now();
                    let republished = {
                        let mut outbox = shared.outbox();
                        // Only what was acknowledged within the hold.
                        let expired = outbox.expire(now, config.hold);
                        if expired > 0 {
                            shared.not_sent(expired);
                        }
                        outbox.requeue_acked(now)
                    };
                    add(&shared.counters.republished, republished);
                    tracing::warn!(
                        target: "ferrows::relay",
                        node = %config.name,
                        "the backplane lost its log: publishing again the {republished} messages \
                         it had acknowledged in the last {:.1} s",
                        config.hold.as_secs_f64()
                    );
                }
            }
        }
    }
}

/// Retries `attempt` on `half` after the backoff's delays until it
/// succeeds, each attempt bounded by the reply timeout.
async fn reconnect<H, T>(
    shared: &Shared,
    backoff: &mut Backoff,
    half: &mut H,
    attempt: for<'a> fn(&'a mut H) -> super::BoxFuture<'a, Result<T, TransportError>>,
) -> T {
    let limit = shared.config.reply_timeout;
    loop {
        tokio::time::sleep(backoff.next_delay()).await;
        shared.report_not_sent();
        add(&shared.counters.reconnects, 1);
        let result = tokio::time::timeout(limit, attempt(half))
            .await
            .unwrap_or_else(|_| Err(timeout_error("reconnect", limit)));
        match result {
            Ok(v) => return v,
            Err(e) => {
                tracing::debug!(target: "ferrows::relay", error = %e, "reconnect failed");
                shared.still_down(&e);
            }
        }
    }
}

/// Reads other nodes' entries and delivers them to the hub.
async fn reader<R: BackplaneRx>(shared: Arc<Shared>, mut rx: R) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config);
    let mut origins = Origins::new(config.origins, config.origin_idle);
    let mut warned = Warned::default();
    loop {
        let result = tokio::time::timeout(config.reply_timeout, rx.recv())
            .await
            .unwrap_or_else(|_| Err(timeout_error("read", config.reply_timeout)));
        match result {
            Ok(batch) => {
                backoff.reset();
                shared.working(Half::Reader);
                deliver(&shared, &mut origins, &mut warned, batch);
            }
            Err(e) => {
                shared.failed(Half::Reader, &e);
                let resume = reconnect(&shared, &mut backoff, &mut rx, R::reconnect).await;
                if resume == Resume::Reset {
                    add(&shared.counters.stream_resets, 1);
                    shared.health().reset_pending = true;
                    tracing::warn!(
                        target: "ferrows::relay",
                        node = %config.name,
                        "the backplane lost its log: reading it again from its start"
                    );
                } else {
                    add(&shared.counters.resumes, 1);
                }
            }
        }
        origins.evict_idle(Instant::now());
        shared
            .origins
            .store(origins.map.len() as u64, Ordering::Relaxed);
    }
}

/// Which skipped kinds were warned about (once each), and when a loss was
/// last warned about.
#[derive(Default)]
struct Warned {
    foreign_version: bool,
    oversize: bool,
    malformed: bool,
    lost_at: Option<Instant>,
}

/// Losses are warned about at most this often (the rest are logged at
/// debug level; every one is counted and is an event).
const LOST_LOG_EVERY: Duration = Duration::from_secs(5);

fn count_skipped(shared: &Shared, n: u64, counter: &AtomicU64, warned: &mut bool, what: &str) {
    if n == 0 {
        return;
    }
    add(counter, n);
    if !std::mem::replace(warned, true) {
        tracing::warn!(
            target: "ferrows::relay",
            node = %shared.config.name,
            "skipped {n} backplane entries: {what} (warned once)"
        );
    }
}

fn deliver(shared: &Shared, origins: &mut Origins, warned: &mut Warned, batch: Batch) {
    let c = &shared.counters;
    count_skipped(
        shared,
        batch.foreign_version,
        &c.foreign_version,
        &mut warned.foreign_version,
        "a format version this node does not know (another node runs a newer ferrows?)",
    );
    count_skipped(
        shared,
        batch.oversize,
        &c.oversize,
        &mut warned.oversize,
        "larger than the limit (another node allows larger messages?)",
    );
    count_skipped(
        shared,
        batch.malformed,
        &c.malformed,
        &mut warned.malformed,
        "undecodable",
    );
    let now = Instant::now();
    for entry in batch.entries {
        if entry.origin == shared.node {
            continue;
        }
        add(&c.received, 1);
        match origins.check(entry.origin, entry.seq, now) {
            Verdict::Duplicate => add(&c.duplicates_dropped, 1),
            Verdict::Deliver { lost } => {
                if lost > 0 {
                    let first_seq = entry.seq - lost;
                    add(&c.lost, lost);
                    let last_seq = entry.seq - 1;
                    let origin = entry.origin;
                    let name = &shared.config.name;
                    if warned
                        .lost_at
                        .is_none_or(|at| now.duration_since(at) >= LOST_LOG_EVERY)
                    {
                        warned.lost_at = Some(now);
                        tracing::warn!(
                            target: "ferrows::relay",
                            node = %name,
                            "{lost} messages from {origin} lost (seq {first_seq}..={last_seq})"
                        );
                    } else {
                        tracing::debug!(
                            target: "ferrows::relay",
                            node = %name,
                            "{lost} messages from {origin} lost (seq {first_seq}..={last_seq})"
                        );
                    }
                    shared.emit(RelayEvent::Lost {
                        origin: entry.origin,
                        count: lost,
                        first_seq,
                    });
                }
                add(&c.delivered_remote, 1);
                shared.hub.broadcast(entry.message);
            }
        }
    }
}

/// The last sequence number seen from each origin: bounded in size, idle
/// origins forgotten.
struct Origins {
    map: HashMap<NodeId, Origin>,
    max: usize,
    idle: Duration,
    last_sweep: Option<Instant>,
}

struct Origin {
    last_seq: u64,
    seen: Instant,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Duplicate,
    Deliver { lost: u64 },
}

impl Origins {
    fn new(max: usize, idle: Duration) -> Origins {
        Origins {
            map: HashMap::new(),
            max,
            idle,
            last_sweep: None,
        }
    }

    fn check(&mut self, origin: NodeId, seq: u64, now: Instant) -> Verdict {
        if let Some(o) = self.map.get_mut(&origin) {
            o.seen = now;
            if seq <= o.last_seq {
                return Verdict::Duplicate;
            }
            let lost = seq - o.last_seq - 1;
            o.last_seq = seq;
            return Verdict::Deliver { lost };
        }
        if self.map.len() >= self.max {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, o)| o.seen)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.map.remove(&id);
            }
        }
        // The first entry seen from an origin is its baseline.
        self.map.insert(
            origin,
            Origin {
                last_seq: seq,
                seen: now,
            },
        );
        Verdict::Deliver { lost: 0 }
    }

    /// Forgets origins idle for longer than `idle`; sweeps at most every
    /// tenth of it.
    fn evict_idle(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|at| now.duration_since(at) < self.idle / 10)
        {
            return;
        }
        self.last_sweep = Some(now);
        let idle = self.idle;
        self.map.retain(|_, o| now.duration_since(o.seen) <= idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::memory::{Bus, MemoryTx};
    use crate::broadcast::Member;

    fn node(n: u64) -> NodeId {
        NodeId::from_u64(n)
    }

    fn config() -> RelayConfig {
        RelayConfig::default().name("test")
    }

    fn relay(bus: &Bus, n: u64, config: RelayConfig) -> Relay {
        Relay::with_node(Hub::new(1024), bus.connect(), config, node(n))
    }

    /// The next message of `member`, as text (30 s of paused time at most).
    async fn next_text(member: &mut Member) -> String {
        let got = tokio::time::timeout(Duration::from_secs(30), member.recv())
            .await
            .expect("a message in time")
            .expect("the member is in the hub");
        got.message().as_text().expect("text").to_owned()
    }

    /// What `member` has queued now.
    fn drain(member: &mut Member) -> Vec<String> {
        std::iter::from_fn(|| member.try_recv())
            .map(|p| p.message().as_text().unwrap_or("<binary>").to_owned())
            .collect()
    }

    /// Lets several heartbeats and reconnect delays pass.
    async fn settle() {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }

    fn all_events(events: &mut RelayEvents) -> Vec<RelayEvent> {
        std::iter::from_fn(|| events.try_next()).collect()
    }

    /// Up/Down events only.
    fn transitions(events: &mut RelayEvents) -> Vec<RelayEvent> {
        all_events(events)
            .into_iter()
            .filter(|e| matches!(e, RelayEvent::Up { .. } | RelayEvent::Down { .. }))
            .collect()
    }

    async fn inject(tx: &mut MemoryTx, origin: u64, seqs: &[u64]) {
        let entries: Vec<Entry> = seqs
            .iter()
            .map(|&s| Entry::new(node(origin), s, format!("{origin}:{s}").into()).unwrap())
            .collect();
        tx.send(&entries).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn own_entries_are_skipped_and_others_delivered_once() {
        let bus = Bus::new();
        let a = relay(&bus, 1, config());
        let b = relay(&bus, 2, config());
        let mut ma = a.hub().join();
        let mut mb = b.hub().join();
        assert_eq!(a.broadcast("one"), 1);
        assert_eq!(next_text(&mut mb).await, "one");
        settle().await;
        assert_eq!(drain(&mut ma), ["one"]);
        assert_eq!(drain(&mut mb), Vec::<String>::new());
        let sa = a.stats();
        assert_eq!((sa.published, sa.received, sa.delivered_remote), (1, 0, 0));
        let sb = b.stats();
        assert_eq!((sb.published, sb.received, sb.delivered_remote), (0, 1, 1));
        assert_eq!(sb.origins, 1);
        // Not text or binary: this hub only.
        assert_eq!(a.broadcast(Message::ping("p")), 1);
        settle().await;
        assert_eq!(bus.len(), 1);
        assert!(mb.try_recv().is_none());
        assert_eq!(a.stats().published, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn duplicates_are_dropped() {
        let bus = Bus::new();
        let b = relay(&bus, 2, config());
        let mut mb = b.hub().join();
        let (mut raw, _) = bus.connect().split();
        inject(&mut raw, 9, &[1, 2, 2, 3, 1, 3, 4]).await;
        settle().await;
        assert_eq!(drain(&mut mb), ["9:1", "9:2", "9:3", "9:4"]);
        let s = b.stats();
        assert_eq!((s.received, s.delivered_remote), (7, 4));
        assert_eq!((s.duplicates_dropped, s.lost), (3, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_reply_is_retried_and_the_duplicate_dropped() {
        let bus = Bus::new();
        let a = relay(&bus, 1, config());
        let b = relay(&bus, 2, config());
        let mut ea = a.events();
        let mut mb = b.hub().join();
        bus.lose_next_replies(1);
        a.broadcast("x");
        a.broadcast("y");
        settle().await;
        assert_eq!(drain(&mut mb), ["x", "y"]);
        assert_eq!(bus.len(), 4, "written twice");
        let sa = a.stats();
        assert_eq!((sa.published, sa.retried, sa.not_sent), (2, 2, 0));
        assert_eq!(b.stats().duplicates_dropped, 2);
        let events = transitions(&mut ea);
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(matches!(&events[0], RelayEvent::Down { reason } if reason.contains("no reply")));
        assert_eq!(events[1], RelayEvent::Up { after_reset: false });
    }

    #[tokio::test(start_paused = true)]
    async fn gaps_are_counted_exactly_from_the_baseline() {
        let bus = Bus::new();
        let b = relay(&bus, 2, config());
        let mut eb = b.events();
        let mut mb = b.hub().join();
        let (mut raw, _) = bus.connect().split();
        // 5 is the first seen from origin 9: its baseline, nothing lost.
        inject(&mut raw, 9, &[5, 6, 9, 10, 20]).await;
        settle().await;
        assert_eq!(drain(&mut mb), ["9:5", "9:6", "9:9", "9:10", "9:20"]);
        assert_eq!(b.stats().lost, 2 + 9);
        assert_eq!(
            all_events(&mut eb),
            [
                RelayEvent::Lost {
                    origin: node(9),
                    count: 2,
                    first_seq: 7
                },
                RelayEvent::Lost {
                    origin: node(9),
                    count: 9,
                    first_seq: 11
                },
            ]
        );
        // Entries a relay sent that the engine dropped.
        let a = relay(&bus, 1, config());
        a.broadcast("m1");
        assert_eq!(next_text(&mut mb).await, "m1");
        bus.drop_next(2);
        for m in ["m2", "m3", "m4"] {
            a.broadcast(m);
        }
        settle().await;
        assert_eq!(drain(&mut mb), ["m4"]);
        assert_eq!(b.stats().lost, 11 + 2);
        assert_eq!(
            all_events(&mut eb),
            [RelayEvent::Lost {
                origin: node(1),
                count: 2,
                first_seq: 2
            }]
        );
        assert_eq!(a.stats().not_sent, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn hold_and_retry_keeps_order_and_drops_by_age() {
        let bus = Bus::new();
        let cfg = config().backoff_max(Duration::from_secs(1));
        let a = relay(&bus, 1, cfg.clone());
        let b = relay(&bus, 2, cfg);
        let mut ea = a.events();
        let mut mb = b.hub().join();
        a.broadcast("m0");
        assert_eq!(next_text(&mut mb).await, "m0");
        bus.take_down();
        a.broadcast("m1");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        // m1 is older than the 2 s hold now.
        for m in ["m2", "m3", "m4"] {
            a.broadcast(m);
        }
        assert_eq!(a.stats().not_sent, 1);
        assert!(matches!(a.state(), BackplaneState::Down { .. }));
        bus.bring_up();
        settle().await;
        assert_eq!(drain(&mut mb), ["m2", "m3", "m4"]);
        assert_eq!(a.state(), BackplaneState::Up);
        let sa = a.stats();
        assert_eq!((sa.published, sa.not_sent, sa.outbox_depth), (4, 1, 0));
        // Down for 2.5 s and a reconnect delay of at most 1 s.
        assert!((2..=3).contains(&sa.down_seconds), "{sa:?}");
        assert_eq!(b.stats().lost, 1);
        let events = all_events(&mut ea);
        assert!(matches!(events[0], RelayEvent::Down { .. }), "{events:?}");
        assert_eq!(
            events[1..],
            [
                RelayEvent::NotSent { count: 1 },
                RelayEvent::Up { after_reset: false }
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_outbox_counts_not_sent() {
        let bus = Bus::new();
        let a = relay(&bus, 1, config().outbox_entries(3));
        let b = relay(&bus, 2, config());
        let mut ea = a.events();
        let mut mb = b.hub().join();
        bus.take_down();
        for i in 1..=5 {
            // Local delivery is never refused.
            assert_eq!(a.broadcast(format!("m{i}")), 0);
        }
        let s = a.stats();
        assert_eq!((s.not_sent, s.outbox_depth), (2, 3));
        bus.bring_up();
        settle().await;
        assert_eq!(drain(&mut mb), ["m1", "m2", "m3"]);
        a.broadcast("m6");
        assert_eq!(next_text(&mut mb).await, "m6");
        assert_eq!(b.stats().lost, 2);
        let not_sent: u64 = all_events(&mut ea)
            .iter()
            .map(|e| match e {
                RelayEvent::NotSent { count } => *count,
                _ => 0,
            })
            .sum();
        assert_eq!(not_sent, 2);
        // The byte bound.
        let c = relay(&bus, 3, config().outbox_bytes(8));
        bus.freeze();
        for m in ["aaaa", "bbbb", "cccc"] {
            c.broadcast(m);
        }
        assert_eq!(c.stats().not_sent, 1);
        bus.thaw();
    }

    #[tokio::test(start_paused = true)]
    async fn the_origin_table_stays_bounded() {
        let bus = Bus::new();
        let b = relay(
            &bus,
            2,
            config().origins(3).origin_idle(Duration::from_secs(60)),
        );
        let mut mb = b.hub().join();
        let (mut raw, _) = bus.connect().split();
        for origin in 10..15 {
            inject(&mut raw, origin, &[1]).await;
            next_text(&mut mb).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(b.stats().origins, 3);
        // 10 was forgotten: it starts a new baseline, nothing lost.
        inject(&mut raw, 10, &[7]).await;
        assert_eq!(next_text(&mut mb).await, "10:7");
        // 14 is still known: its gap counts.
        inject(&mut raw, 14, &[3]).await;
        assert_eq!(next_text(&mut mb).await, "14:3");
        let s = b.stats();
        assert_eq!((s.origins, s.lost), (3, 1));
        // Idle origins are forgotten.
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(b.stats().origins, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn up_and_down_are_told_once_per_transition() {
        let bus = Bus::new();
        let a = relay(&bus, 1, config());
        let mut ea = a.events();
        for round in 0..3 {
            bus.take_down();
            // Both halves fail, and keep failing to reconnect.
            a.broadcast(format!("during {round}"));
            tokio::time::sleep(Duration::from_secs(10)).await;
            let BackplaneState::Down { reason, .. } = a.state() else {
                panic!("down");
            };
            assert!(reason.contains("bus down"), "{reason}");
            bus.bring_up();
            settle().await;
            assert_eq!(a.state(), BackplaneState::Up);
        }
        // Both halves broken at once (the publisher while sending).
        a.broadcast("while killed");
        bus.kill_connections();
        settle().await;
        let events = transitions(&mut ea);
        let downs = events
            .iter()
            .filter(|e| matches!(e, RelayEvent::Down { .. }))
            .count();
        assert_eq!(downs, 4, "{events:?}");
        for pair in events.chunks(2) {
            assert!(matches!(pair[0], RelayEvent::Down { .. }), "{events:?}");
            assert_eq!(pair[1], RelayEvent::Up { after_reset: false });
        }
        assert!(a.stats().reconnects >= 8);
        // Stopping ends the subscribers.
        a.shutdown();
        assert_eq!(ea.next().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_is_capped_and_reset_after_success() {
        let bus = Bus::new();
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let a = relay(&bus, 1, config().backoff_min(min).backoff_max(max));
        let mut ea = a.events();
        let down_at = Instant::now();
        bus.take_down();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let times = bus.reconnect_times();
        // 100 + 200 + 400 + 800 ms, then about 1 s each: 13 ± 2 in 10 s.
        assert!((11..=16).contains(&times.len()), "{}", times.len());
        let mut previous = down_at;
        for (k, at) in times.iter().enumerate() {
            let gap = at.duration_since(previous);
            let base = min.saturating_mul(1 << k.min(10)).min(max);
            assert!(
                gap >= base.mul_f64(0.8),
                "attempt {k}: {gap:?} < 0.8 × {base:?}"
            );
            assert!(gap <= base.mul_f64(1.2).min(max), "attempt {k}: {gap:?}");
            previous = *at;
        }
        bus.bring_up();
        tokio::time::timeout(Duration::from_secs(2), async {
            while !matches!(ea.next().await, Some(RelayEvent::Up { .. })) {}
        })
        .await
        .unwrap();
        // Down again: the first delay is the minimum again.
        let before = bus.reconnect_times().len();
        let down_at = Instant::now();
        bus.take_down();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let times = bus.reconnect_times();
        assert_eq!(times.len(), before + 1);
        let gap = times[before].duration_since(down_at);
        assert!(
            gap >= min.mul_f64(0.8) && gap <= min.mul_f64(1.2),
            "{gap:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_frozen_engine_is_detected_within_the_reply_timeout() {
        let bus = Bus::new();
        let reply_timeout = Duration::from_secs(3);
        let cfg = config()
            .reply_timeout(reply_timeout)
            .hold(Duration::from_secs(10));
        let a = relay(&bus, 1, cfg.clone());
        let b = relay(&bus, 2, cfg);
        let mut ea = a.events();
        let mut mb = b.hub().join();
        settle().await;
        let frozen_at = Instant::now();
        bus.freeze();
        a.broadcast("held");
        let event = tokio::time::timeout(reply_timeout * 2, ea.next())
            .await
            .unwrap();
        assert!(matches!(event, Some(RelayEvent::Down { .. })), "{event:?}");
        assert!(
            frozen_at.elapsed() <= reply_timeout,
            "{:?}",
            frozen_at.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        bus.thaw();
        assert_eq!(next_text(&mut mb).await, "held");
        settle().await;
        assert!(mb.try_recv().is_none());
        assert_eq!(
            transitions(&mut ea),
            [RelayEvent::Up { after_reset: false }]
        );
        assert_eq!(b.stats().duplicates_dropped, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_log_is_read_again_without_duplicate_deliveries() {
        let bus = Bus::new();
        let a = relay(&bus, 1, config());
        let b = relay(&bus, 2, config());
        let mut eb = b.events();
        let mut mb = b.hub().join();
        for i in 1..=5 {
            a.broadcast(format!("m{i}"));
        }
        settle().await;
        assert_eq!(drain(&mut mb), ["m1", "m2", "m3", "m4", "m5"]);
        // A failover to a replica without the last two entries.
        bus.fail_over(2);
        settle().await;
        a.broadcast("m6");
        settle().await;
        assert_eq!(drain(&mut mb), ["m6"]);
        let s = b.stats();
        assert_eq!((s.stream_resets, s.duplicates_dropped, s.lost), (1, 3, 0));
        assert_eq!(
            transitions(&mut eb)[1..],
            [RelayEvent::Up { after_reset: true }]
        );
        // The whole log lost.
        bus.reset();
        a.broadcast("m7");
        settle().await;
        assert_eq!(drain(&mut mb), ["m7"]);
        let s = b.stats();
        assert_eq!((s.stream_resets, s.lost), (2, 0));
    }

    /// A publishes m1..m5 (acknowledged) while B's reader is away
    /// reconnecting and C reads them; then the engine loses its log.
    async fn acked_then_reset(
        bus: &Bus,
        a_config: RelayConfig,
    ) -> (Relay, Relay, Relay, Member, Member) {
        let a = relay(bus, 1, a_config.backoff_min(Duration::from_millis(10)));
        let b = relay(
            bus,
            2,
            config()
                .backoff_min(Duration::from_secs(1))
                .backoff_max(Duration::from_secs(1)),
        );
        let c = relay(bus, 3, config());
        let (mut mb, mut mc) = (b.hub().join(), c.hub().join());
        a.broadcast("m0");
        assert_eq!(next_text(&mut mb).await, "m0");
        assert_eq!(next_text(&mut mc).await, "m0");
        // B's reader now waits about 1 s to reconnect, C's about 0.1 s.
        bus.kill_connections();
        for i in 1..=5 {
            a.broadcast(format!("m{i}"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(a.stats().published, 6, "acknowledged");
        assert_eq!(drain(&mut mc), ["m1", "m2", "m3", "m4", "m5"]);
        assert!(drain(&mut mb).is_empty(), "B is not reading yet");
        // A restart without persistence.
        bus.reset();
        (a, b, c, mb, mc)
    }

    #[tokio::test(start_paused = true)]
    async fn acknowledged_entries_are_published_again_after_a_reset() {
        let bus = Bus::new();
        let (a, b, c, mut mb, mut mc) = acked_then_reset(&bus, config()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.broadcast("m6");
        settle().await;
        // B never read m1..m5 before the log was lost: it gets them from
        // the new log, in order, once; C drops the copies (and both drop
        // m0's, acknowledged within the hold too).
        assert_eq!(drain(&mut mb), ["m1", "m2", "m3", "m4", "m5", "m6"]);
        assert_eq!(drain(&mut mc), ["m6"]);
        let (sa, sb, sc) = (a.stats(), b.stats(), c.stats());
        assert_eq!((sa.published, sa.republished, sa.not_sent), (7, 6, 0));
        assert_eq!(
            (sb.lost, sb.duplicates_dropped, sb.delivered_remote),
            (0, 1, 7)
        );
        assert_eq!(
            (sc.lost, sc.duplicates_dropped, sc.delivered_remote),
            (0, 6, 7)
        );
        assert_eq!(a.state(), BackplaneState::Up);
        // Republished entries are acknowledged again, not twice retained.
        assert_eq!(sa.outbox_depth, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retained_entries_are_bounded_and_expire_after_the_hold() {
        // Bounded: 3 of the 5 acknowledged are retained.
        let bus = Bus::new();
        let (a, b, _c, mut mb, _) = acked_then_reset(&bus, config().outbox_entries(3)).await;
        a.broadcast("m6");
        settle().await;
        assert_eq!(drain(&mut mb), ["m3", "m4", "m5", "m6"]);
        assert_eq!((a.stats().republished, b.stats().lost), (3, 2));
        // Expired: the next broadcast comes after the 2 s hold.
        let bus = Bus::new();
        let (a, b, _c, mut mb, _) = acked_then_reset(&bus, config()).await;
        tokio::time::sleep(Duration::from_millis(2100)).await;
        a.broadcast("m6");
        settle().await;
        assert_eq!(drain(&mut mb), ["m6"]);
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!((sa.republished, sa.not_sent, sb.lost), (0, 0, 5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_over_the_transport_limit_is_not_sent() {
        let bus = Bus::new().max_entry_bytes(4);
        let a = relay(&bus, 1, config());
        let b = relay(&bus, 2, config());
        let (mut ma, mut mb) = (a.hub().join(), b.hub().join());
        for m in ["m1", "toolong", "m3"] {
            a.broadcast(m);
        }
        settle().await;
        assert_eq!(drain(&mut ma), ["m1", "toolong", "m3"], "local first");
        assert_eq!(drain(&mut mb), ["m1", "m3"]);
        let sa = a.stats();
        assert_eq!((sa.published, sa.not_sent), (2, 1));
        assert_eq!(b.stats().lost, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn three_relays_deliver_everything_once_in_order() {
        let bus = Bus::new();
        let relays: Vec<Relay> = (1..=3).map(|n| relay(&bus, n, config())).collect();
        let mut members: Vec<Member> = relays
            .iter()
            .flat_map(|r| [r.hub().join(), r.hub().join()])
            .collect();
        const N: usize = 100;
        for k in 0..N {
            for (i, r) in relays.iter().enumerate() {
                r.broadcast(format!("{i}:{k}"));
            }
            match k {
                20 => bus.lose_next_replies(1),
                40 => bus.duplicate_next(5),
                60 => bus.kill_connections(),
                _ => {}
            }
            if k % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        settle().await;
        for member in &mut members {
            let got = drain(member);
            assert_eq!(got.len(), 3 * N);
            for i in 0..3 {
                let from_i: Vec<&String> = got
                    .iter()
                    .filter(|m| m.starts_with(&format!("{i}:")))
                    .collect();
                let want: Vec<String> = (0..N).map(|k| format!("{i}:{k}")).collect();
                assert_eq!(from_i, want.iter().collect::<Vec<_>>());
            }
        }
        for r in &relays {
            let s = r.stats();
            assert_eq!((s.lost, s.not_sent, s.published), (0, 0, N as u64));
            assert_eq!(s.delivered_remote, 2 * N as u64);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_senders_on_a_multi_thread_runtime() {
        let bus = Bus::new().idle_reply(Duration::from_millis(50));
        let relays: Vec<Relay> = (1..=3).map(|n| relay(&bus, n, config())).collect();
        let mut members: Vec<Member> = relays.iter().map(|r| r.hub().join()).collect();
        const N: usize = 300;
        let senders: Vec<_> = relays
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let r = r.clone();
                tokio::spawn(async move {
                    for k in 0..N {
                        r.broadcast(format!("{i}:{k}"));
                        if k % 50 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        for s in senders {
            s.await.unwrap();
        }
        for member in &mut members {
            let mut next = [0usize; 3];
            for _ in 0..3 * N {
                let text = tokio::time::timeout(Duration::from_secs(10), member.recv())
                    .await
                    .expect("in time")
                    .expect("a member");
                let text = text.message().as_text().unwrap().to_owned();
                let (i, k) = text.split_once(':').unwrap();
                let i: usize = i.parse().unwrap();
                assert_eq!(k.parse::<usize>().unwrap(), next[i], "per-sender order");
                next[i] += 1;
            }
            assert_eq!(next, [N; 3]);
        }
        for r in &relays {
            let s = r.stats();
            assert_eq!((s.lost, s.not_sent, s.duplicates_dropped), (0, 0, 0));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_last_clone_stops_the_relay() {
        let bus = Bus::new();
        let a = relay(&bus, 1, config());
        let a2 = a.clone();
        let mut events = a.events();
        drop(a);
        bus.take_down();
        let event = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
        assert!(
            matches!(event, Ok(Some(RelayEvent::Down { .. }))),
            "{event:?}"
        );
        drop(a2);
        let end = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
        assert_eq!(end, Ok(None));
        // Its connection is gone: no more reconnect attempts.
        let attempts = bus.reconnect_times().len();
        settle().await;
        assert_eq!(bus.reconnect_times().len(), attempts);
    }

    /// Collects the messages of `ferrows::relay` events from the node named
    /// [`LOGGED_NODE`], with their level. Installed as the global default
    /// (a thread-local one races with other tests over tracing's callsite
    /// cache).
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<(tracing::Level, String)>>>);

    const LOGGED_NODE: &str = "logged-node";

    fn global_logs() -> Logs {
        static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            tracing::subscriber::set_global_default(logs.clone()).unwrap();
            logs
        })
        .clone()
    }

    #[derive(Default)]
    struct Fields {
        message: String,
        node: String,
    }

    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
            match field.name() {
                "message" => self.message = format!("{value:?}"),
                "node" => self.node = format!("{value:?}"),
                _ => {}
            }
        }
    }

    impl tracing::Subscriber for Logs {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            if event.metadata().target() == "ferrows::relay" && fields.node == LOGGED_NODE {
                lock(&self.0).push((*event.metadata().level(), fields.message));
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    impl Logs {
        fn take(&self, level: tracing::Level) -> Vec<String> {
            let mut all = lock(&self.0);
            let (these, rest) = all.drain(..).partition(|(l, _)| *l == level);
            *all = rest;
            these.into_iter().map(|(_, m)| m).collect()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn logs_use_the_documented_wording() {
        let logs = global_logs();
        let bus = Bus::new();
        let b = relay(&bus, 2, config().name(LOGGED_NODE));
        let mut mb = b.hub().join();
        bus.take_down();
        tokio::time::sleep(Duration::from_secs(65)).await;
        let down = "backplane down: connection refused (bus down); \
                    messages reach this server's clients only; retrying";
        // At once, then every 30 s.
        assert_eq!(logs.take(tracing::Level::WARN), [down, down, down]);
        bus.bring_up();
        settle().await;
        let up = logs.take(tracing::Level::INFO);
        assert_eq!(up.len(), 1);
        assert!(up[0].starts_with("backplane up after 6"), "{up:?}");
        assert!(up[0].ends_with(" s down (resumed)"), "{up:?}");
        let (mut raw, _) = bus.connect().split();
        inject(&mut raw, 9, &[1, 4, 7]).await;
        settle().await;
        assert_eq!(mb.try_recv().map(|_| ()), Some(()));
        // The second loss within 5 s is logged at debug level only.
        assert_eq!(
            logs.take(tracing::Level::WARN),
            ["2 messages from 0000000000000009 lost (seq 2..=3)"]
        );
        assert_eq!(b.stats().lost, 4);
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::new(&RelayConfig::default());
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        for (k, d) in delays.iter().enumerate() {
            let base = Duration::from_millis(100 << k).min(Duration::from_secs(2));
            assert!(*d >= base.mul_f64(0.8) && *d <= base.mul_f64(1.2).min(Duration::from_secs(2)));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }
}
