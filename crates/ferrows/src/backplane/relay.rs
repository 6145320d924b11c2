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
    /// or slow) before it is dropped and counted `not_sent`. Default: 2 s.
    pub hold: Duration,
    /// The most entries the outbox holds (at least 1); broadcasts beyond it
    /// are counted `not_sent`. Default: 1024.
    pub outbox_entries: usize,
    /// The most payload bytes the outbox holds. Default: 16 MiB.
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
    /// Entries broadcast here but never published (outbox full, or older
    /// than [`RelayConfig::hold`]).
    pub not_sent: u64,
    /// Entries sent again after a failed send.
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
        let shared = Arc::new(Shared {
            hub,
            node,
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
        let (tx, rx) = backplane.split();
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
    /// Messages other than text and binary are delivered locally only.
    pub fn broadcast(&self, message: impl Into<Message>) -> usize {
        let message = message.into();
        let delivered = self.shared.hub.broadcast(message.clone());
        let shared = &self.shared;
        let now = Instant::now();
        let mut outbox = shared.outbox();
        outbox.seq += 1;
        let Some(entry) = Entry::new(shared.node, outbox.seq, message) else {
            outbox.seq -= 1;
            return delivered;
        };
        let expired = outbox.expire(now, shared.config.hold);
        let fits = outbox.queue.len() < shared.config.outbox_entries
            && outbox.bytes.saturating_add(entry.len()) <= shared.config.outbox_bytes;
        if fits {
            outbox.bytes += entry.len();
            outbox.queue.push_back(Queued { at: now, entry });
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
        RelayStats {
            published: get(&c.published),
            not_sent: get(&c.not_sent),
            retried: get(&c.retried),
            received: get(&c.received),
            delivered_remote: get(&c.delivered_remote),
            duplicates_dropped: get(&c.duplicates_dropped),
            lost: get(&c.lost),
            foreign_version: get(&c.foreign_version),
            oversize: get(&c.oversize),
            malformed: get(&c.malformed),
            reconnects: get(&c.reconnects),
            resumes: get(&c.resumes),
            stream_resets: get(&c.stream_resets),
            outbox_depth: self.shared.outbox().queue.len() as u64,
            origins: get(&self.shared.origins),
            state: self.state(),
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
            tracing::warn!(
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
            drop(health);
            tracing::warn!(
                target: "ferrows::relay",
                node = %self.config.name,
                "backplane down: {reason}; messages reach this server's clients only; retrying"
            );
            self.emit(RelayEvent::Down { reason });
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
        self.emit(RelayEvent::Up { after_reset });
    }

    /// A reconnect attempt of `half` failed: repeats the warning every 30 s.
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
    /// The last sequence number given out.
    seq: u64,
    /// Entries up to this seq are being sent: not expired meanwhile.
    sending_upto: u64,
}

struct Queued {
    at: Instant,
    entry: Entry,
}

impl Outbox {
    /// Drops the entries older than `hold` (except those being sent);
    /// returns how many.
    fn expire(&mut self, now: Instant, hold: Duration) -> u64 {
        let mut dropped = 0;
        while let Some(front) = self.queue.front() {
            if front.entry.seq <= self.sending_upto || now.duration_since(front.at) <= hold {
                break;
            }
            self.pop();
            dropped += 1;
        }
        dropped
    }

    fn pop(&mut self) {
        if let Some(q) = self.queue.pop_front() {
            self.bytes = self.bytes.saturating_sub(q.entry.len());
        }
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
        let retried = batch.iter().filter(|e| e.seq <= failed_upto).count();
        add(&shared.counters.retried, retried as u64);
        let result = tokio::time::timeout(config.reply_timeout, tx.send(&batch))
            .await
            .unwrap_or_else(|_| Err(timeout_error("send", config.reply_timeout)));
        {
            let mut outbox = shared.outbox();
            outbox.sending_upto = 0;
            if result.is_ok() {
                while outbox.queue.front().is_some_and(|q| q.entry.seq <= upto) {
                    outbox.pop();
                }
            }
        }
        match result {
            Ok(()) => {
                add(&shared.counters.published, batch.len() as u64);
                backoff.reset();
                shared.working(Half::Publisher);
            }
            Err(e) => {
                failed_upto = upto;
                shared.failed(Half::Publisher, &e);
                reconnect(&shared, &mut backoff, &mut tx, T::reconnect).await;
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

/// Which skipped kinds were warned about (once each).
#[derive(Default)]
struct Warned {
    foreign_version: bool,
    oversize: bool,
    malformed: bool,
}

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
                    tracing::warn!(
                        target: "ferrows::relay",
                        node = %shared.config.name,
                        "{lost} messages from {} lost (seq {first_seq}..={})",
                        entry.origin,
                        entry.seq - 1
                    );
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
            let oldest = self.map.iter().min_by_key(|(_, o)| o.seen).map(|(id, _)| *id);
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
