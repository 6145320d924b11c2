//! [`WebSocket`]: a connection over any async byte stream, and its halves.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use bytes::BytesMut;
use ferrows_proto::deflate::DeflateParams;
use ferrows_proto::{CloseCode, CloseFrame, Decoder, Encoder, Role};
use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

use crate::broadcast::Prepared;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::metrics::{Direction, Local};
use crate::protocol::{ReadCore, Transport, WriteCore};

/// What the opening handshake settled, needed to set up a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// The subprotocol, if one was selected.
    pub protocol: Option<String>,
    /// permessage-deflate parameters, if it was negotiated.
    pub deflate: Option<DeflateParams>,
}

/// A WebSocket connection over `S`, any `AsyncRead + AsyncWrite` stream
/// (TCP, TLS, a Unix socket, an in-memory duplex...).
///
/// Receive with [`WebSocket::recv`] (or as a [`Stream`]), send with
/// [`WebSocket::send`] (or as a [`Sink`]). Pings are answered, close frames
/// echoed and protocol errors reported to the peer with the right close code
/// automatically.
///
/// Writes are corked: messages queued with [`WebSocket::feed`] go out
/// together when the queue is flushed, which `recv` does before it would
/// wait for input. An echo loop therefore answers every message that one
/// read brought in with a single write.
pub struct WebSocket<S> {
    io: S,
    read: ReadCore,
    write: WriteCore,
    role: Role,
    negotiated: Negotiated,
}

impl<S> fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocket")
            .field("role", &self.role)
            .field("negotiated", &self.negotiated)
            .field("queued", &self.write.queue.len())
            .finish()
    }
}

struct Whole<'a, S> {
    io: &'a mut S,
    write: &'a mut WriteCore,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Transport for Whole<'_, S> {
    type W = S;

    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        tokio_util::io::poll_read_buf(Pin::new(&mut *self.io), cx, buf)
    }

    fn with_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&mut WriteCore, &mut S, &mut Context<'_>) -> R,
    ) -> R {
        f(self.write, self.io, cx)
    }
}

pub(crate) fn build_cores(
    role: Role,
    config: &Config,
    deflate: Option<&DeflateParams>,
    leftover: BytesMut,
) -> (ReadCore, WriteCore) {
    let (compressor, decompressor) = match (deflate, &config.compression) {
        (Some(p), Some(c)) => match role {
            Role::Server => (
                Some((p.server_compressor(c), c.threshold)),
                Some(p.server_decompressor()),
            ),
            Role::Client => (
                Some((p.client_compressor(c), c.threshold)),
                Some(p.client_decompressor()),
            ),
        },
        _ => (None, None),
    };
    let decoder = Decoder::new(role, config.limits, decompressor);
    let encoder = Encoder::new(role, compressor);
    let stats = |direction| config.metrics.as_ref().map(|m| Local::new(m, direction));
    (
        ReadCore::new(
            decoder,
            leftover,
            role,
            config.auto_pong,
            config.close_timeout,
            stats(Direction::Received),
        ),
        WriteCore::new(
            encoder,
            config.write_high_water_mark,
            config.close_timeout,
            stats(Direction::Sent),
        ),
    )
}

impl<S> WebSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Wraps a stream on which the opening handshake is already done (by
    /// this crate, or by an HTTP server such as hyper).
    ///
    /// `leftover` holds bytes read past the handshake, if any; `negotiated`
    /// what the handshake agreed on (compression only works if `config`
    /// enables it too).
    pub fn from_upgraded(
        io: S,
        role: Role,
        config: &Config,
        negotiated: Negotiated,
        leftover: BytesMut,
    ) -> WebSocket<S> {
        let (read, write) = build_cores(role, config, negotiated.deflate.as_ref(), leftover);
        WebSocket {
            io,
            read,
            write,
            role,
            negotiated,
        }
    }

    fn parts(&mut self) -> (&mut ReadCore, Whole<'_, S>) {
        (
            &mut self.read,
            Whole {
                io: &mut self.io,
                write: &mut self.write,
            },
        )
    }

    /// Receives the next message.
    ///
    /// Returns `None` once the connection is closed: after the peer's
    /// [`Message::Close`] has been returned (and the closing handshake
    /// finished), or after an error has been returned.
    ///
    /// Messages queued by [`WebSocket::feed`] are written before this waits
    /// for input.
    ///
    /// # Errors
    ///
    /// [`Error::Protocol`] when the peer breaks the protocol or a limit: the
    /// close frame with the matching code was already sent and the
    /// connection closed. [`Error::AbnormalClosure`] if the connection
    /// dropped without a close frame, [`Error::Io`] on transport errors.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: all state lives in the `WebSocket`, so if the future is
    /// dropped (e.g. in `tokio::select!`), no message is lost.
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message; see [`WebSocket::recv`].
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message>>> {
        let (read, mut t) = self.parts();
        read.poll_next(&mut t, cx)
    }

    /// A message that has already arrived, without waiting and without any
    /// I/O; `None` if no complete message is buffered.
    ///
    /// After `recv()` returns, more messages from the same read are often
    /// waiting in the buffer: handling them all with `try_recv()` before
    /// going back to a `select!` over several sources costs far less than a
    /// `select!` per message. Errors and the closing handshake are left to
    /// the next `recv()`, which reports them.
    pub fn try_recv(&mut self) -> Option<Result<Message>> {
        let (read, mut t) = self.parts();
        read.try_next(&mut t)
    }

    /// Sends a message and flushes it to the transport.
    ///
    /// Waits while more than the write high-water mark is queued. Sending a
    /// [`Message::Close`] starts the closing handshake: keep calling
    /// [`WebSocket::recv`] to see the peer's close, or use
    /// [`WebSocket::close`], which does both.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after a close frame was sent or the connection
    /// ended; [`Error::Send`] for a message the protocol forbids (e.g. a
    /// ping over 125 bytes); [`Error::Io`] if writing fails.
    ///
    /// # Cancel safety
    ///
    /// If cancelled, the message is either not queued at all or queued
    /// whole; a queued message is written by the next flush.
    pub async fn send(&mut self, msg: impl Into<Message>) -> Result<()> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Queues a message without flushing (see the type's docs on corking).
    /// Waits while more than the write high-water mark is queued.
    ///
    /// # Errors
    ///
    /// As [`WebSocket::send`].
    pub async fn feed(&mut self, msg: impl Into<Message>) -> Result<()> {
        let msg = msg.into();
        std::future::poll_fn(|cx| self.poll_ready_send(cx)).await?;
        self.write.encode(msg)
    }

    /// Queues a message right away, ignoring the write high-water mark;
    /// it is written by the next flush (or `recv`).
    ///
    /// For small control frames that must not wait behind backpressure
    /// (heartbeat pings), and for fan-out code that bounds each connection
    /// itself by checking [`WebSocket::buffered_amount`].
    ///
    /// # Errors
    ///
    /// As [`WebSocket::send`], except that it never waits.
    pub fn queue(&mut self, msg: impl Into<Message>) -> Result<()> {
        if self.read.is_done() {
            return Err(Error::Closed);
        }
        self.write.encode(msg.into())
    }

    /// Queues a [`Prepared`] message like [`WebSocket::queue`]. A server
    /// queues the shared frame bytes as they are (no encoding, and no copy
    /// for large payloads) unless it compresses with context takeover: a
    /// message below the compression threshold goes out uncompressed, a
    /// longer one compressed once for every connection that compresses
    /// without context takeover with the same window and level (see
    /// [`Prepared`]).
    ///
    /// # Errors
    ///
    /// As [`WebSocket::queue`].
    pub fn queue_prepared(&mut self, prepared: &Prepared) -> Result<()> {
        if self.read.is_done() {
            return Err(Error::Closed);
        }
        self.write.encode_prepared(prepared)
    }

    /// Writes everything queued and flushes the transport.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if writing fails.
    pub async fn flush(&mut self) -> Result<()> {
        std::future::poll_fn(|cx| self.poll_flush_queue(cx)).await
    }

    /// Closes the connection: sends a close frame with `code` and `reason`
    /// (unless one was sent already), waits for the peer's close frame
    /// (discarding any messages still arriving) and for the TCP close, up to
    /// the close timeout.
    ///
    /// # Errors
    ///
    /// [`Error::CloseTimeout`] if the peer did not answer in time, or the
    /// error that ended the connection meanwhile; [`Error::Send`] (and
    /// nothing sent) for a code that may not go on the wire, such as 1005
    /// or 1006 (see [`CloseCode::is_valid_on_wire`]).
    pub async fn close(&mut self, code: impl Into<CloseCode>, reason: &str) -> Result<()> {
        if !self.write.encoder.is_closed() && !self.read.is_done() {
            self.write
                .encode(Message::Close(Some(CloseFrame::new(code, reason))))?;
        }
        // recv() writes the close frame and waits for the answer, bounded
        // by the close timeout even if the peer stopped reading.
        while let Some(item) = self.recv().await {
            item?;
        }
        Ok(())
    }

    fn poll_ready_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.read.is_done() {
            // The connection ended (closing handshake done, or failed).
            return Poll::Ready(Err(Error::Closed));
        }
        self.write.poll_ready(&mut self.io, cx)
    }

    fn poll_flush_queue(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.write.poll_flush(&mut self.io, cx).map_err(Error::Io)
    }

    /// Delivers data as [`Message::Fragment`]s, one per frame as it
    /// completes, instead of whole messages (the view ESP-IDF's
    /// `esp_websocket_client` gives: offsets within the message, FIN). The
    /// switch takes effect at the next message boundary.
    pub fn set_fragment_mode(&mut self, on: bool) {
        self.read.set_fragment_mode(on);
    }

    /// Splits the connection into a receiving and a sending half, usable
    /// from two tasks. Pongs and close replies the receiving half owes are
    /// sent through the shared write side.
    pub fn split(self) -> (WsReader<S>, WsWriter<S>) {
        let (rio, wio) = tokio::io::split(self.io);
        let wakers = Arc::new(WriteWakers::default());
        let shared = Arc::new(Mutex::new(Shared {
            core: self.write,
            io: wio,
            waker: Waker::from(wakers.clone()),
            wakers,
        }));
        (
            WsReader {
                io: rio,
                read: self.read,
                shared: shared.clone(),
            },
            WsWriter { shared },
        )
    }
}

impl<S> WebSocket<S> {
    /// Which end of the connection this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The subprotocol the handshake selected, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.negotiated.protocol.as_deref()
    }

    /// The permessage-deflate parameters, if compression is on.
    pub fn compression(&self) -> Option<&DeflateParams> {
        self.negotiated.deflate.as_ref()
    }

    /// Bytes queued for writing and not yet written (like the browser's
    /// `bufferedAmount`).
    pub fn buffered_amount(&self) -> usize {
        self.write.queue.len()
    }

    /// Bytes received and not yet delivered as messages.
    pub fn read_buffered(&self) -> usize {
        self.read.buffered()
    }

    /// Whether our close frame has been queued.
    pub fn is_closing(&self) -> bool {
        self.write.encoder.is_closed()
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The underlying stream, mutably. Reading or writing it directly
    /// corrupts the WebSocket stream.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocket<S> {
    type Item = Result<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WebSocket<S> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_ready_send(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<()> {
        self.get_mut().write.encode(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_flush_queue(cx)
    }

    /// Sends a normal close frame (unless one was sent) and flushes. To
    /// also wait for the peer's answer, use [`WebSocket::close`].
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        this.write
            .close_once(Some(&CloseFrame::new(CloseCode::NORMAL, "")))?;
        this.poll_flush_queue(cx)
    }
}

struct Shared<S> {
    core: WriteCore,
    io: WriteHalf<S>,
    /// Both halves may wait for the socket to become writable (the reader
    /// to send a pong or close reply, the writer its messages), but the I/O
    /// driver keeps one waker per direction. Writes therefore use `waker`,
    /// which wakes whichever halves registered in `wakers`.
    wakers: Arc<WriteWakers>,
    waker: Waker,
}

impl<S> Shared<S> {
    /// Runs `f` with the write side, registering `cx`'s task in `slot` and
    /// writing with the shared waker.
    fn write_with<R>(
        &mut self,
        cx: &Context<'_>,
        reader: bool,
        f: impl FnOnce(&mut WriteCore, &mut WriteHalf<S>, &mut Context<'_>) -> R,
    ) -> R {
        let slot = if reader {
            &self.wakers.reader
        } else {
            &self.wakers.writer
        };
        register(slot, cx.waker());
        let mut shared_cx = Context::from_waker(&self.waker);
        f(&mut self.core, &mut self.io, &mut shared_cx)
    }
}

#[derive(Default)]
struct WriteWakers {
    reader: Mutex<Option<Waker>>,
    writer: Mutex<Option<Waker>>,
}

fn register(slot: &Mutex<Option<Waker>>, waker: &Waker) {
    let mut stored = slot.lock().unwrap_or_else(|p| p.into_inner());
    if !stored.as_ref().is_some_and(|w| w.will_wake(waker)) {
        *stored = Some(waker.clone());
    }
}

impl Wake for WriteWakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        for slot in [&self.reader, &self.writer] {
            let waker = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

fn lock<S>(shared: &Mutex<Shared<S>>) -> MutexGuard<'_, Shared<S>> {
    // A panic while holding the lock cannot leave the queue half-written
    // in a way that matters more than the panic itself; carry on.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The receiving half of a split [`WebSocket`].
pub struct WsReader<S> {
    io: ReadHalf<S>,
    read: ReadCore,
    shared: Arc<Mutex<Shared<S>>>,
}

/// The sending half of a split [`WebSocket`]. Cloning is not offered: to
/// send from several tasks, share it behind a lock or feed it from a
/// channel.
pub struct WsWriter<S> {
    shared: Arc<Mutex<Shared<S>>>,
}

impl<S> fmt::Debug for WsReader<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsReader").finish_non_exhaustive()
    }
}

impl<S> fmt::Debug for WsWriter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsWriter").finish_non_exhaustive()
    }
}

struct Halves<'a, S> {
    io: &'a mut ReadHalf<S>,
    shared: &'a Mutex<Shared<S>>,
}

impl<S: AsyncRead + AsyncWrite> Transport for Halves<'_, S> {
    type W = WriteHalf<S>;

    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        tokio_util::io::poll_read_buf(Pin::new(&mut *self.io), cx, buf)
    }

    fn with_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&mut WriteCore, &mut WriteHalf<S>, &mut Context<'_>) -> R,
    ) -> R {
        lock(self.shared).write_with(cx, true, f)
    }
}

impl<S: AsyncRead + AsyncWrite> WsReader<S> {
    /// Receives the next message; see [`WebSocket::recv`].
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message>>> {
        let mut t = Halves {
            io: &mut self.io,
            shared: &self.shared,
        };
        self.read.poll_next(&mut t, cx)
    }

    /// See [`WebSocket::try_recv`].
    pub fn try_recv(&mut self) -> Option<Result<Message>> {
        let mut t = Halves {
            io: &mut self.io,
            shared: &self.shared,
        };
        self.read.try_next(&mut t)
    }

    /// See [`WebSocket::set_fragment_mode`].
    pub fn set_fragment_mode(&mut self, on: bool) {
        self.read.set_fragment_mode(on);
    }

    /// Whether this half and `writer` come from the same connection.
    pub fn is_pair_of(&self, writer: &WsWriter<S>) -> bool {
        Arc::ptr_eq(&self.shared, &writer.shared)
    }
}

impl<S: AsyncRead + AsyncWrite> WsWriter<S> {
    /// Sends a message and flushes; see [`WebSocket::send`].
    pub async fn send(&mut self, msg: impl Into<Message>) -> Result<()> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Queues a message without flushing; see [`WebSocket::feed`].
    pub async fn feed(&mut self, msg: impl Into<Message>) -> Result<()> {
        let msg = msg.into();
        std::future::poll_fn(|cx| self.poll_ready_send(cx)).await?;
        lock(&self.shared).core.encode(msg)
    }

    /// Queues a message without waiting for the high-water mark; see
    /// [`WebSocket::queue`].
    ///
    /// # Errors
    ///
    /// As [`WebSocket::queue`].
    pub fn queue(&mut self, msg: impl Into<Message>) -> Result<()> {
        lock(&self.shared).core.encode(msg.into())
    }

    /// Queues a [`Prepared`] message; see [`WebSocket::queue_prepared`].
    ///
    /// # Errors
    ///
    /// As [`WebSocket::queue`].
    pub fn queue_prepared(&mut self, prepared: &Prepared) -> Result<()> {
        lock(&self.shared).core.encode_prepared(prepared)
    }

    /// Writes everything queued and flushes the transport.
    pub async fn flush(&mut self) -> Result<()> {
        std::future::poll_fn(|cx| self.poll_flush_queue(cx)).await
    }

    /// Sends a close frame and flushes it, within the close timeout. The
    /// reading half sees the peer's answer and then the end of the stream.
    ///
    /// # Errors
    ///
    /// [`Error::CloseTimeout`] if the peer does not read the frame in time,
    /// [`Error::Io`] if writing fails, [`Error::Send`] for a code that may
    /// not go on the wire.
    pub async fn close(&mut self, code: impl Into<CloseCode>, reason: &str) -> Result<()> {
        let timeout = {
            let mut shared = lock(&self.shared);
            shared
                .core
                .close_once(Some(&CloseFrame::new(code, reason)))?;
            shared.core.close_timeout
        };
        tokio::time::timeout(timeout, self.flush())
            .await
            .map_err(|_| Error::CloseTimeout)?
    }

    /// Bytes queued and not yet written.
    pub fn buffered_amount(&self) -> usize {
        lock(&self.shared).core.queue.len()
    }

    fn poll_ready_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        lock(&self.shared).write_with(cx, false, |core, io, cx| core.poll_ready(io, cx))
    }

    fn poll_flush_queue(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        lock(&self.shared).write_with(cx, false, |core, io, cx| {
            core.poll_flush(io, cx).map_err(Error::Io)
        })
    }
}

impl<S: AsyncRead + AsyncWrite> Stream for WsReader<S> {
    type Item = Result<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}

impl<S: AsyncRead + AsyncWrite> Sink<Message> for WsWriter<S> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_ready_send(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<()> {
        lock(&self.get_mut().shared).core.encode(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_flush_queue(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        lock(&this.shared)
            .core
            .close_once(Some(&CloseFrame::new(CloseCode::NORMAL, "")))?;
        this.poll_flush_queue(cx)
    }
}
