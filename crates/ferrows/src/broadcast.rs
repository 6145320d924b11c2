//! Sending one message to many connections: [`Prepared`] messages encoded
//! once, and a [`Hub`] of members with bounded queues.

use crate::metrics::Metrics;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use ferrows_proto::deflate::SharedKey;
use ferrows_proto::{
    CloseFrame, OpCode, SharedForm, encode_server_frame, encode_server_frame_deflated,
};
use tokio::sync::mpsc;

use crate::message::Message;

/// A message prepared for sending to many connections: cloning shares it,
/// and servers send the same encoded frame bytes (encoded once, on first
/// use) instead of encoding it per connection.
///
/// That holds for compressed connections too when they compress without
/// context takeover (a server configured with
/// [`DeflateConfig::for_broadcast`](crate::DeflateConfig::for_broadcast)):
/// the message is compressed once per window size and level in use (one
/// in practice) and every such connection queues the same bytes. Messages
/// below the compression threshold are sent uncompressed, from the same
/// frame as to connections that do not compress. Only connections with
/// context takeover compress a long message themselves.
///
/// ```
/// let p = ferrows::Prepared::new(ferrows::Message::text("tick:1"));
/// let copy = p.clone(); // shares the message and its frame
/// assert_eq!(copy.message().as_text(), Some("tick:1"));
/// ```
#[derive(Clone)]
pub struct Prepared(Arc<PreparedInner>);

/// At most this many compressed forms are kept per message (one per window
/// size and level in use); connections with yet other parameters compress
/// the message themselves.
const MAX_DEFLATED_FORMS: usize = 4;

/// A frame encoded on first use; `None` if the message cannot be shared.
type FrameSlot = Arc<OnceLock<Option<Bytes>>>;

struct PreparedInner {
    message: Message,
    frame: OnceLock<Option<Bytes>>,
    /// Compressed frames, made on first use for each key.
    deflated: Mutex<Vec<(SharedKey, FrameSlot)>>,
}

impl Prepared {
    /// Prepares `message`.
    pub fn new(message: impl Into<Message>) -> Prepared {
        Prepared(Arc::new(PreparedInner {
            message: message.into(),
            frame: OnceLock::new(),
            deflated: Mutex::new(Vec::new()),
        }))
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.0.message
    }

    /// The opcode of the message's frame; `None` for fragments.
    pub(crate) fn opcode(&self) -> Option<OpCode> {
        Some(match &self.0.message {
            Message::Text(_) => OpCode::Text,
            Message::Binary(_) => OpCode::Binary,
            Message::Ping(_) => OpCode::Ping,
            Message::Pong(_) => OpCode::Pong,
            Message::Close(_) => OpCode::Close,
            Message::Fragment(_) => return None,
        })
    }

    /// The frame in `form`, encoded on first call for that form; `None` for
    /// messages that cannot be shared (fragments, oversized control frames,
    /// a key beyond the few kept).
    pub(crate) fn frame(&self, form: SharedForm) -> Option<(OpCode, Bytes)> {
        match form {
            SharedForm::Plain => self.server_frame(),
            SharedForm::Deflated(key) => self.deflated_frame(key),
        }
    }

    /// The opcode and uncompressed server-side frame, encoded on first call.
    pub(crate) fn server_frame(&self) -> Option<(OpCode, Bytes)> {
        let msg = &self.0.message;
        let opcode = self.opcode()?;
        let frame = self.0.frame.get_or_init(|| {
            let payload: Bytes = match msg {
                Message::Close(Some(f)) => close_payload(f),
                Message::Close(None) => Bytes::new(),
                other => other.clone().into_payload(),
            };
            encode_server_frame(opcode, &payload).ok()
        });
        frame.clone().map(|f| (opcode, f))
    }

    /// The data frame compressed with `key` (without context takeover),
    /// compressed on first call for that key.
    fn deflated_frame(&self, key: SharedKey) -> Option<(OpCode, Bytes)> {
        let opcode = self.opcode().filter(|op| op.is_data())?;
        let slot = {
            let mut forms = self
                .0
                .deflated
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match forms.iter().find(|(k, _)| *k == key) {
                Some((_, slot)) => slot.clone(),
                None if forms.len() < MAX_DEFLATED_FORMS => {
                    let slot = Arc::new(OnceLock::new());
                    forms.push((key, slot.clone()));
                    slot
                }
                None => return None,
            }
        };
        // Outside the lock: other keys are not held up by this one; the
        // same key waits for this compression instead of doing its own.
        let frame = slot.get_or_init(|| {
            encode_server_frame_deflated(opcode, self.0.message.as_payload(), key).ok()
        });
        frame.clone().map(|f| (opcode, f))
    }
}

fn close_payload(frame: &CloseFrame) -> Bytes {
    let mut buf = bytes::BytesMut::with_capacity(frame.encoded_len());
    frame.encode(&mut buf);
    buf.freeze()
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Prepared").field(&self.0.message).finish()
    }
}

impl<T: Into<Message>> From<T> for Prepared {
    fn from(message: T) -> Prepared {
        Prepared::new(message)
    }
}

/// A set of members (typically one per connection) that messages can be
/// sent to, one by one or all at once.
///
/// Each member has a bounded queue. A member whose queue is full when a
/// message arrives is too slow: it is removed from the hub, and its
/// [`Member::recv`] returns `None` with [`Member::is_lagged`] true, so its
/// connection can be closed (1008 is customary) — a slow client never
/// slows the others or grows memory without bound.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let hub = ferrows::Hub::new(16);
/// let mut a = hub.join();
/// let mut b = hub.join();
/// assert_eq!(hub.broadcast("hello"), 2);
/// assert_eq!(a.recv().await.unwrap().message().as_text(), Some("hello"));
/// assert_eq!(b.recv().await.unwrap().message().as_text(), Some("hello"));
/// # }
/// ```
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    members: Mutex<HashMap<u64, Slot>>,
    next_id: AtomicU64,
    capacity: usize,
    /// Where members dropped as too slow are counted.
    metrics: Option<Metrics>,
}

struct Slot {
    tx: mpsc::Sender<Prepared>,
    lagged: Arc<LagSignal>,
}

/// Set when a member is dropped for being too slow, waking whoever waits
/// for it — the member's queue is full then, so its `recv()` would only
/// notice after draining everything.
#[derive(Default)]
struct LagSignal {
    lagged: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl LagSignal {
    fn set(&self) {
        self.lagged.store(true, Ordering::Release);
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn is_set(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("members", &self.len())
            .field("capacity", &self.inner.capacity)
            .finish()
    }
}

/// Why [`Hub::send`] did not deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// No member has this id (it left, or was dropped as too slow).
    NoSuchMember,
    /// The member's queue was full: it was removed from the hub.
    Lagged,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::NoSuchMember => "no such member",
            SendError::Lagged => "the member fell behind and was removed",
        })
    }
}

impl std::error::Error for SendError {}

impl Hub {
    /// A hub whose members queue at most `capacity` messages each
    /// (at least 1).
    pub fn new(capacity: usize) -> Hub {
        Hub::build(capacity, None)
    }

    /// A hub like [`Hub::new`] that counts the members it drops as too
    /// slow in `metrics` ([`Snapshot::queue_drops`](crate::metrics::Snapshot::queue_drops)).
    pub fn with_metrics(capacity: usize, metrics: Metrics) -> Hub {
        Hub::build(capacity, Some(metrics))
    }

    fn build(capacity: usize, metrics: Option<Metrics>) -> Hub {
        Hub {
            inner: Arc::new(HubInner {
                members: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                capacity: capacity.max(1),
                metrics,
            }),
        }
    }

    /// Counts a member dropped as too slow.
    fn dropped(&self) {
        if let Some(m) = &self.inner.metrics {
            m.queue_drop();
        }
    }

    fn members(&self) -> MutexGuard<'_, HashMap<u64, Slot>> {
        self.inner
            .members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a member with a fresh id (ids count up from 1).
    pub fn join(&self) -> Member {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.inner.capacity);
        let lagged = Arc::new(LagSignal::default());
        self.members().insert(
            id,
            Slot {
                tx,
                lagged: lagged.clone(),
            },
        );
        Member {
            id,
            rx,
            lagged,
            hub: Arc::downgrade(&self.inner),
        }
    }

    /// Sends `message` to every member; returns how many queued it.
    /// Members that are too slow are removed (see the type's docs).
    pub fn broadcast(&self, message: impl Into<Prepared>) -> usize {
        let prepared = message.into();
        let mut delivered = 0;
        self.members()
            .retain(|_, slot| match slot.tx.try_send(prepared.clone()) {
                Ok(()) => {
                    delivered += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    slot.lagged.set();
                    self.dropped();
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        delivered
    }

    /// Sends `message` to one member.
    ///
    /// # Errors
    ///
    /// [`SendError::NoSuchMember`] or [`SendError::Lagged`] (the member was
    /// removed).
    pub fn send(&self, id: u64, message: impl Into<Prepared>) -> Result<(), SendError> {
        let mut members = self.members();
        let slot = members.get(&id).ok_or(SendError::NoSuchMember)?;
        match slot.tx.try_send(message.into()) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                slot.lagged.set();
                self.dropped();
                members.remove(&id);
                Err(SendError::Lagged)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                members.remove(&id);
                Err(SendError::NoSuchMember)
            }
        }
    }

    /// Removes a member; its [`Member::recv`] returns `None` once its queue
    /// is drained.
    pub fn remove(&self, id: u64) -> bool {
        self.members().remove(&id).is_some()
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members().len()
    }

    /// Whether the hub has no members.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids of all members, in ascending order.
    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.members().keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}

/// A member of a [`Hub`]: receives what is sent to it. Dropping it leaves
/// the hub.
pub struct Member {
    id: u64,
    rx: mpsc::Receiver<Prepared>,
    lagged: Arc<LagSignal>,
    hub: std::sync::Weak<HubInner>,
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member").field("id", &self.id).finish()
    }
}

impl Member {
    /// This member's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next message for this member; `None` once it has been removed
    /// from the hub (or the hub is gone) and its queue is drained.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, like `tokio::sync::mpsc::Receiver::recv`.
    pub async fn recv(&mut self) -> Option<Prepared> {
        self.rx.recv().await
    }

    /// Polls for the next message; see [`Member::recv`].
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Prepared>> {
        self.rx.poll_recv(cx)
    }

    /// A queued message, if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Option<Prepared> {
        self.rx.try_recv().ok()
    }

    /// Whether this member was removed for being too slow.
    pub fn is_lagged(&self) -> bool {
        self.lagged.is_set()
    }

    /// Polls for the member being removed as too slow: ready as soon as it
    /// happens, even while its (full) queue is not being read.
    pub fn poll_lagged(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.lagged.is_set() {
            return Poll::Ready(());
        }
        {
            let mut slot = self
                .lagged
                .waker
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
        }
        // Set between the first check and the registration: don't sleep.
        if self.lagged.is_set() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Resolves once the member has been removed as too slow (see
    /// [`Member::poll_lagged`]). Never resolves for a member that keeps up.
    pub async fn lagged(&self) {
        std::future::poll_fn(|cx| self.poll_lagged(cx)).await;
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.members
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slow_members_are_dropped_and_others_unaffected() {
        let hub = Hub::new(2);
        let mut fast = hub.join();
        let slow = hub.join();
        for i in 0..5 {
            let n = hub.broadcast(format!("m{i}"));
            // Both get the first two; from the third on only `fast`.
            assert_eq!(n, if i < 2 { 2 } else { 1 });
            assert_eq!(
                fast.recv().await.unwrap().message().as_text(),
                Some(format!("m{i}").as_str())
            );
        }
        assert!(slow.is_lagged());
        assert!(!fast.is_lagged());
        // Told at once, without draining the full queue.
        tokio::time::timeout(std::time::Duration::from_secs(5), slow.lagged())
            .await
            .unwrap();
        assert_eq!(hub.ids(), vec![fast.id()]);
    }

    #[tokio::test]
    async fn a_waiting_member_is_woken_when_dropped_as_too_slow() {
        let hub = Hub::new(1);
        let slow = hub.join();
        let waiter = tokio::spawn(async move {
            slow.lagged().await;
            slow.is_lagged()
        });
        tokio::task::yield_now().await;
        hub.broadcast("fills the queue");
        hub.broadcast("overflows it");
        let lagged = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(lagged);
    }

    #[tokio::test]
    async fn leaving_and_direct_sends() {
        let hub = Hub::new(4);
        let a = hub.join();
        let mut b = hub.join();
        assert_eq!(hub.len(), 2);
        let a_id = a.id();
        drop(a);
        assert_eq!(hub.send(a_id, "x"), Err(SendError::NoSuchMember));
        hub.send(b.id(), "for b").unwrap();
        assert_eq!(b.recv().await.unwrap().message().as_text(), Some("for b"));
        assert!(hub.remove(b.id()));
        assert!(b.recv().await.is_none());
        assert!(!b.is_lagged());
    }

    #[test]
    fn frames_are_encoded_once_and_shared() {
        let p = Prepared::new(Message::binary(vec![7u8; 300]));
        let (op, f1) = p.server_frame().unwrap();
        let (_, f2) = p.clone().server_frame().unwrap();
        assert_eq!(op, OpCode::Binary);
        assert_eq!(f1.as_ptr(), f2.as_ptr());
        assert_eq!(&f1[..4], &[0x82, 126, 1, 44]);
        let close = Prepared::new(Message::close(1001, "bye"));
        assert_eq!(&close.server_frame().unwrap().1[..], b"\x88\x05\x03\xe9bye");
    }
}
