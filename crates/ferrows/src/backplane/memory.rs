//! An in-process backplane: a [`Bus`] with one ordered, bounded log that
//! every [`MemoryBackplane`] connected to it appends to and reads from.
//!
//! It behaves like a small stream engine (appends in order, readers resume
//! after their last entry, old entries trimmed past a maximum length) and
//! fails on command, the way a real engine does: [`Bus::take_down`] (a
//! crash: calls and reconnects fail until [`Bus::bring_up`]),
//! [`Bus::freeze`] (a stopped process: calls hang until [`Bus::thaw`]),
//! [`Bus::kill_connections`], [`Bus::reset`] and [`Bus::fail_over`] (the
//! log is lost, wholly or in part), [`Bus::duplicate_next`],
//! [`Bus::drop_next`] and [`Bus::lose_next_replies`] (an append that
//! happened but whose reply never came). That makes every policy of the
//! relay testable without an external engine, under tokio's paused clock
//! too.
//!
//! ```
//! use ferrows::backplane::memory::Bus;
//! use ferrows::backplane::{Backplane, BackplaneRx, BackplaneTx, Entry, NodeId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ferrows::backplane::TransportError> {
//! let bus = Bus::new();
//! let (mut tx, _) = bus.connect().split();
//! let (_, mut rx) = bus.connect().split();
//! let entry = Entry::new(NodeId::from_u64(7), 1, "hello".into()).expect("text");
//! tx.send(std::slice::from_ref(&entry)).await?;
//! assert_eq!(rx.recv().await?.entries, vec![entry]);
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    Backplane, BackplaneRx, BackplaneTx, Batch, BoxFuture, Entry, Resume, TransportError,
    TransportErrorKind,
};

/// The most entries one [`BackplaneRx::recv`] returns.
const READ_COUNT: usize = 256;
/// How many reconnect times [`Bus::reconnect_times`] remembers.
const REMEMBERED_RECONNECTS: usize = 256;

/// An in-process backplane engine. Cloning shares it.
///
/// Defaults: at most 10 000 entries kept (older ones are trimmed, as
/// Redis' `MAXLEN`), and an idle read returns an empty batch after 1 s.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<BusInner>,
}

struct BusInner {
    state: Mutex<BusState>,
    /// Woken on every change: an append, a fault switched on or off.
    changed: Notify,
}

struct BusState {
    /// The log: (index, entry), indices increasing by one.
    log: VecDeque<(u64, Entry)>,
    /// The index the next appended entry gets.
    next_index: u64,
    max_len: usize,
    idle: Duration,
    /// Changes when the log is lost: readers of an older epoch get
    /// [`Resume::Reset`].
    epoch: u64,
    /// Changes when connections are broken: calls on connections of an
    /// older generation fail.
    generation: u64,
    down: bool,
    frozen: bool,
    duplicate_next: u64,
    drop_next: u64,
    lose_replies: u64,
    reconnects: VecDeque<Instant>,
    max_entry: Option<usize>,
}

impl Default for Bus {
    fn default() -> Bus {
        Bus::new()
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state();
        f.debug_struct("Bus")
            .field("len", &s.log.len())
            .field("down", &s.down)
            .field("frozen", &s.frozen)
            .finish()
    }
}

impl Bus {
    /// An empty bus, up.
    pub fn new() -> Bus {
        Bus {
            inner: Arc::new(BusInner {
                state: Mutex::new(BusState {
                    log: VecDeque::new(),
                    next_index: 0,
                    max_len: 10_000,
                    idle: Duration::from_secs(1),
                    epoch: 0,
                    generation: 0,
                    down: false,
                    frozen: false,
                    duplicate_next: 0,
                    drop_next: 0,
                    lose_replies: 0,
                    reconnects: VecDeque::new(),
                    max_entry: None,
                }),
                changed: Notify::new(),
            }),
        }
    }

    /// Keeps at most `entries` entries (at least 1), trimming the oldest.
    pub fn max_len(self, entries: usize) -> Bus {
        {
            let mut s = self.state();
            s.max_len = entries.max(1);
            s.trim();
        }
        self
    }

    /// The largest payload its publishers accept
    /// ([`BackplaneTx::max_entry_bytes`]), as a transport with a size limit.
    /// Default: none.
    pub fn max_entry_bytes(self, bytes: usize) -> Bus {
        self.state().max_entry = Some(bytes);
        self
    }

    /// How long a read waits for an entry before it returns an empty batch
    /// (the heartbeat). Default: 1 s.
    pub fn idle_reply(self, idle: Duration) -> Bus {
        self.state().idle = idle;
        self
    }

    fn state(&self) -> MutexGuard<'_, BusState> {
        self.inner.state()
    }

    /// Changes the state and wakes every waiting call.
    fn change(&self, f: impl FnOnce(&mut BusState)) {
        f(&mut self.state());
        self.inner.changed.notify_waiters();
    }

    /// A new connection. Its reader starts after the last entry now in the
    /// log: history is not replayed.
    pub fn connect(&self) -> MemoryBackplane {
        let s = self.state();
        let conn = Conn {
            bus: self.inner.clone(),
            epoch: s.epoch,
            generation: s.generation,
            connected: true,
        };
        MemoryBackplane {
            tx: MemoryTx { conn: conn.clone() },
            rx: MemoryRx {
                conn,
                next: s.next_index,
            },
        }
    }

    /// Takes the engine down, as a crash: every call fails with a
    /// connection error, open connections break, and reconnects fail until
    /// [`Bus::bring_up`]. The log is kept (see [`Bus::reset`] to lose it).
    pub fn take_down(&self) {
        self.change(|s| {
            s.down = true;
            s.generation += 1;
        });
    }

    /// Brings the engine back up: reconnects succeed again.
    pub fn bring_up(&self) {
        self.change(|s| s.down = false);
    }

    /// Freezes the engine, as a stopped process: calls neither succeed nor
    /// fail until [`Bus::thaw`].
    pub fn freeze(&self) {
        self.change(|s| s.frozen = true);
    }

    /// Ends [`Bus::freeze`]: waiting calls proceed.
    pub fn thaw(&self) {
        self.change(|s| s.frozen = false);
    }

    /// Breaks every open connection (as Redis' `CLIENT KILL`): their next
    /// call fails; reconnecting works and resumes where it was.
    pub fn kill_connections(&self) {
        self.change(|s| s.generation += 1);
    }

    /// Loses the whole log, as a restart without persistence: connections
    /// break, readers that reconnect get [`Resume::Reset`] and read the
    /// new log from its start, and publishers that reconnect get
    /// [`Resume::Reset`] too.
    pub fn reset(&self) {
        self.fail_over(usize::MAX);
    }

    /// Loses the last `lagging` entries of the log, as a failover to a
    /// replica that had not received them: connections break, and readers
    /// that reconnect get [`Resume::Reset`] and read the log again from its
    /// start.
    pub fn fail_over(&self, lagging: usize) {
        self.change(|s| {
            let keep = s.log.len().saturating_sub(lagging);
            s.log.truncate(keep);
            s.next_index = s.log.back().map_or(s.next_index, |(i, _)| i + 1);
            s.epoch += 1;
            s.generation += 1;
        });
    }

    /// Appends each of the next `n` sent entries twice.
    pub fn duplicate_next(&self, n: u64) {
        self.change(|s| s.duplicate_next = n);
    }

    /// Silently drops the next `n` sent entries (the sender sees success).
    pub fn drop_next(&self, n: u64) {
        self.change(|s| s.drop_next = n);
    }

    /// The next `n` sends append their entries but fail with a timeout
    /// error, as a reply lost on the way back: the sender's retry writes
    /// them again.
    pub fn lose_next_replies(&self, n: u64) {
        self.change(|s| s.lose_replies = n);
    }

    /// The entries now in the log, oldest first.
    pub fn entries(&self) -> Vec<Entry> {
        self.state().log.iter().map(|(_, e)| e.clone()).collect()
    }

    /// The number of entries in the log.
    pub fn len(&self) -> usize {
        self.state().log.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When reconnects were attempted (by either half of any connection,
    /// failed or not), oldest first; the last 256.
    pub fn reconnect_times(&self) -> Vec<Instant> {
        self.state().reconnects.iter().copied().collect()
    }
}

impl BusInner {
    fn state(&self) -> MutexGuard<'_, BusState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl BusState {
    fn trim(&mut self) {
        while self.log.len() > self.max_len {
            self.log.pop_front();
        }
    }

    fn append(&mut self, entry: Entry) {
        self.log.push_back((self.next_index, entry));
        self.next_index += 1;
        self.trim();
    }

    fn first_index(&self) -> u64 {
        self.log.front().map_or(self.next_index, |(i, _)| *i)
    }

    fn note_reconnect(&mut self) {
        if self.reconnects.len() >= REMEMBERED_RECONNECTS {
            self.reconnects.pop_front();
        }
        self.reconnects.push_back(Instant::now());
    }
}

fn connection_error(what: &str) -> TransportError {
    TransportError::new(TransportErrorKind::Connection, what)
}

/// One side of a connection to the bus.
#[derive(Clone)]
struct Conn {
    bus: Arc<BusInner>,
    epoch: u64,
    generation: u64,
    connected: bool,
}

impl Conn {
    /// Waits until the bus is not frozen, then runs `f` on its state; an
    /// error if the connection is broken. `deadline`: when `f` returns
    /// `None`, wait for a change until then, and return `None` after it.
    async fn with_state<T>(
        &mut self,
        deadline: Option<Instant>,
        mut f: impl FnMut(&mut BusState) -> Option<T>,
    ) -> Result<Option<T>, TransportError> {
        loop {
            let changed = self.bus.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait_forever = {
                let mut s = self.bus.state();
                if s.down {
                    self.connected = false;
                    return Err(connection_error("connection refused (bus down)"));
                }
                if !self.connected || s.generation != self.generation {
                    self.connected = false;
                    return Err(connection_error("connection reset"));
                }
                if !s.frozen {
                    if let Some(v) = f(&mut s) {
                        return Ok(Some(v));
                    }
                }
                s.frozen || deadline.is_none()
            };
            match deadline {
                Some(deadline) if !wait_forever => {
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return Ok(None);
                    }
                }
                _ => changed.await,
            }
        }
    }

    /// One reconnect attempt.
    fn reconnect(&mut self) -> Result<u64, TransportError> {
        let mut s = self.bus.state();
        s.note_reconnect();
        if s.down {
            return Err(connection_error("connection refused (bus down)"));
        }
        self.connected = true;
        self.generation = s.generation;
        let old_epoch = self.epoch;
        self.epoch = s.epoch;
        Ok(old_epoch)
    }
}

/// A connection to a [`Bus`]: [`Backplane::split`] gives its halves.
pub struct MemoryBackplane {
    tx: MemoryTx,
    rx: MemoryRx,
}

impl std::fmt::Debug for MemoryBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackplane")
            .field("next", &self.rx.next)
            .finish()
    }
}

impl Backplane for MemoryBackplane {
    type Tx = MemoryTx;
    type Rx = MemoryRx;

    fn split(self) -> (MemoryTx, MemoryRx) {
        (self.tx, self.rx)
    }
}

/// The publishing half of a [`MemoryBackplane`].
pub struct MemoryTx {
    conn: Conn,
}

impl std::fmt::Debug for MemoryTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTx")
            .field("connected", &self.conn.connected)
            .finish()
    }
}

impl BackplaneTx for MemoryTx {
    fn send<'a>(&'a mut self, batch: &'a [Entry]) -> BoxFuture<'a, Result<(), TransportError>> {
        Box::pin(async move {
            let lost_reply = self
                .conn
                .with_state(None, |s| {
                    for entry in batch {
                        if s.drop_next > 0 {
                            s.drop_next -= 1;
                            continue;
                        }
                        if s.duplicate_next > 0 {
                            s.duplicate_next -= 1;
                            s.append(entry.clone());
                        }
                        s.append(entry.clone());
                    }
                    let lost = s.lose_replies > 0;
                    s.lose_replies = s.lose_replies.saturating_sub(1);
                    Some(lost)
                })
                .await?;
            self.conn.bus.changed.notify_waiters();
            match lost_reply {
                Some(true) => Err(TransportError::new(
                    TransportErrorKind::Timeout,
                    "no reply (the entries were appended)",
                )),
                _ => Ok(()),
            }
        })
    }

    fn max_entry_bytes(&self) -> Option<usize> {
        self.conn.bus.state().max_entry
    }

    fn reconnect(&mut self) -> BoxFuture<'_, Result<Resume, TransportError>> {
        Box::pin(async move {
            let old_epoch = self.conn.reconnect()?;
            Ok(if old_epoch == self.conn.epoch {
                Resume::Continued
            } else {
                Resume::Reset
            })
        })
    }
}

/// The reading half of a [`MemoryBackplane`].
pub struct MemoryRx {
    conn: Conn,
    /// The index of the next entry to read.
    next: u64,
}

impl std::fmt::Debug for MemoryRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRx")
            .field("connected", &self.conn.connected)
            .field("next", &self.next)
            .finish()
    }
}

impl BackplaneRx for MemoryRx {
    fn recv(&mut self) -> BoxFuture<'_, Result<Batch, TransportError>> {
        Box::pin(async move {
            let idle = self.conn.bus.state().idle;
            let deadline = Instant::now() + idle;
            let mut next = self.next;
            let entries = self
                .conn
                .with_state(Some(deadline), |s| {
                    // Trimmed past our position: continue at the oldest
                    // entry left (the reader sees a gap).
                    next = next.max(s.first_index());
                    let skip = usize::try_from(next - s.first_index()).unwrap_or(usize::MAX);
                    let entries: Vec<Entry> = s
                        .log
                        .iter()
                        .skip(skip)
                        .take(READ_COUNT)
                        .map(|(_, e)| e.clone())
                        .collect();
                    next += entries.len() as u64;
                    (!entries.is_empty()).then_some(entries)
                })
                .await?;
            self.next = next;
            Ok(Batch::of(entries.unwrap_or_default()))
        })
    }

    fn reconnect(&mut self) -> BoxFuture<'_, Result<Resume, TransportError>> {
        Box::pin(async move {
            let old_epoch = self.conn.reconnect()?;
            if old_epoch == self.conn.epoch {
                return Ok(Resume::Continued);
            }
            self.next = self.conn.bus.state().first_index();
            Ok(Resume::Reset)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::NodeId;

    fn entry(seq: u64) -> Entry {
        Entry::new(NodeId::from_u64(1), seq, format!("m{seq}").into()).unwrap()
    }

    fn seqs(batch: &Batch) -> Vec<u64> {
        batch.entries.iter().map(|e| e.seq).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn reads_in_order_and_heartbeats_when_idle() {
        let bus = Bus::new().idle_reply(Duration::from_millis(500));
        let (mut tx, _) = bus.connect().split();
        let (_, mut rx) = bus.connect().split();
        tx.send(&[entry(1), entry(2)]).await.unwrap();
        assert_eq!(seqs(&rx.recv().await.unwrap()), [1, 2]);
        let t = Instant::now();
        assert!(rx.recv().await.unwrap().entries.is_empty());
        assert_eq!(t.elapsed(), Duration::from_millis(500));
        // A late reader starts at the end.
        let (_, mut late) = bus.connect().split();
        tx.send(&[entry(3)]).await.unwrap();
        assert_eq!(seqs(&late.recv().await.unwrap()), [3]);
    }

    #[tokio::test(start_paused = true)]
    async fn faults() {
        let bus = Bus::new().max_len(3);
        let (mut tx, _) = bus.connect().split();
        let (_, mut rx) = bus.connect().split();
        bus.duplicate_next(1);
        bus.drop_next(1);
        tx.send(&[entry(1), entry(2)]).await.unwrap();
        assert_eq!(seqs(&rx.recv().await.unwrap()), [2, 2]);
        bus.lose_next_replies(1);
        let err = tx.send(&[entry(3)]).await.unwrap_err();
        assert_eq!(err.kind(), TransportErrorKind::Timeout);
        assert_eq!(bus.len(), 3);
        // Down: calls and reconnects fail; up: it resumes.
        bus.take_down();
        assert!(rx.recv().await.is_err());
        assert!(rx.reconnect().await.is_err());
        bus.bring_up();
        assert_eq!(rx.reconnect().await.unwrap(), Resume::Continued);
        assert_eq!(seqs(&rx.recv().await.unwrap()), [3]);
        // Trimmed to 3 entries.
        tx.reconnect().await.unwrap();
        tx.send(&[entry(4), entry(5), entry(6)]).await.unwrap();
        assert_eq!(bus.len(), 3);
        // Frozen: the call hangs until thawed.
        bus.freeze();
        let hung = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(hung.is_err());
        bus.thaw();
        assert_eq!(seqs(&rx.recv().await.unwrap()), [4, 5, 6]);
        // Reset: the reader learns it, and reads the new log from its start.
        bus.reset();
        assert!(rx.recv().await.is_err());
        tx.reconnect().await.unwrap();
        tx.send(&[entry(7)]).await.unwrap();
        assert_eq!(rx.reconnect().await.unwrap(), Resume::Reset);
        assert_eq!(seqs(&rx.recv().await.unwrap()), [7]);
        assert_eq!(bus.reconnect_times().len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn fail_over_keeps_the_older_entries() {
        let bus = Bus::new();
        let (mut tx, _) = bus.connect().split();
        let (_, mut rx) = bus.connect().split();
        tx.send(&[entry(1), entry(2), entry(3)]).await.unwrap();
        assert_eq!(seqs(&rx.recv().await.unwrap()), [1, 2, 3]);
        bus.fail_over(1);
        assert!(rx.recv().await.is_err());
        assert_eq!(rx.reconnect().await.unwrap(), Resume::Reset);
        assert_eq!(seqs(&rx.recv().await.unwrap()), [1, 2]);
        bus.kill_connections();
        assert!(tx.send(&[entry(4)]).await.is_err());
        tx.reconnect().await.unwrap();
        tx.send(&[entry(4)]).await.unwrap();
        assert!(rx.recv().await.is_err());
        assert_eq!(rx.reconnect().await.unwrap(), Resume::Continued);
        assert_eq!(seqs(&rx.recv().await.unwrap()), [4]);
    }
}
