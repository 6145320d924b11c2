//! The connection state machine over I/O: reading and decoding, writing the
//! queue, the closing handshake and its timeouts.
//!
//! It is written once against [`Transport`], which the whole socket and the
//! split halves both implement, so the two behave identically.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use ferrows_proto::{CloseFrame, Decoder, Encoder, Incoming, OpCode, Role, WriteQueue};
use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};

use crate::broadcast::Prepared;
use crate::error::Error;
use crate::message::Message;
use crate::metrics::{Counted, Local};

/// Reads start at this size...
const MIN_READ: usize = 8 * 1024;
/// ...and double, up to this, while each read fills what it was given: a
/// pipelining peer's whole burst then arrives in one read, and is answered
/// with one write. Reads that come back small shrink it again, so a
/// connection with light traffic never holds (or pins, through the payloads
/// it hands out without copying) a large buffer.
const MAX_READ: usize = 256 * 1024;
/// At most this many slices per vectored write.
const MAX_IOVECS: usize = 64;
/// Idle buffers above this capacity are released: all of them, so an idle
/// connection holds no buffer memory (one allocation per burst is the price).
const KEEP_IDLE: usize = 0;

/// Where the reader gets bytes and how it reaches the write side.
pub(crate) trait Transport {
    type W: AsyncWrite + Unpin;

    /// Reads into the spare capacity of `buf`.
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>>;

    /// Runs `f` with the write side and the context to write with.
    fn with_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&mut WriteCore, &mut Self::W, &mut Context<'_>) -> R,
    ) -> R;
}

/// The write side: encoder, queue, backpressure.
pub(crate) struct WriteCore {
    pub(crate) encoder: Encoder,
    pub(crate) queue: WriteQueue,
    pub(crate) high_water_mark: usize,
    /// When our close frame was queued.
    pub(crate) close_sent_at: Option<Instant>,
    /// The write side was shut down (FIN sent).
    pub(crate) shut_down: bool,
    /// A write failed; every later write fails too.
    pub(crate) broken: bool,
    /// The read side finished the connection (closing handshake over, or
    /// the connection lost): nothing more can be sent.
    pub(crate) ended: bool,
    /// The close timeout, for closes started from the write side.
    pub(crate) close_timeout: Duration,
    /// Counts of what is sent, when metrics are attached.
    pub(crate) stats: Option<Box<Local>>,
}

impl Drop for WriteCore {
    fn drop(&mut self) {
        if let Some(stats) = &mut self.stats {
            stats.end(self.encoder.deflate_totals());
        }
    }
}

impl WriteCore {
    pub(crate) fn new(
        encoder: Encoder,
        high_water_mark: usize,
        close_timeout: Duration,
        stats: Option<Box<Local>>,
    ) -> WriteCore {
        WriteCore {
            encoder,
            queue: WriteQueue::new(),
            high_water_mark,
            close_sent_at: None,
            shut_down: false,
            broken: false,
            ended: false,
            close_timeout,
            stats,
        }
    }

    /// Encodes `msg` into the queue.
    pub(crate) fn encode(&mut self, msg: Message) -> Result<(), Error> {
        if self.broken || self.ended {
            return Err(Error::Closed);
        }
        // What to count, taken before the message is consumed and counted
        // once it is queued.
        let counted = self.stats.as_ref().map(|_| Counted::of(&msg));
        let q = &mut self.queue;
        match msg {
            Message::Text(t) => self
                .encoder
                .message_bytes(OpCode::Text, t.into_bytes(), q)?,
            Message::Binary(b) => self.encoder.message_bytes(OpCode::Binary, b, q)?,
            Message::Ping(p) => self.encoder.ping(&p, q)?,
            Message::Pong(p) => self.encoder.pong(&p, q)?,
            Message::Fragment(f) => self.encoder.fragment(f.opcode, &f.data, f.fin, q)?,
            Message::Close(frame) => {
                self.encoder.close(frame.as_ref(), q)?;
                self.close_sent_at = Some(Instant::now());
            }
        }
        if let (Some(stats), Some(counted)) = (&mut self.stats, counted) {
            stats.add(counted);
        }
        Ok(())
    }

    /// Encodes a prepared message, sharing its frame when possible.
    pub(crate) fn encode_prepared(&mut self, prepared: &Prepared) -> Result<(), Error> {
        if self.broken || self.ended {
            return Err(Error::Closed);
        }
        // The shared frame is built (once, for all) only in the form this
        // connection can use.
        let shared = prepared
            .opcode()
            .and_then(|op| self.encoder.shared_form(op, prepared.message().len()))
            .and_then(|form| prepared.frame(form));
        if let Some((opcode, frame)) = shared {
            if self.encoder.shared_frame(opcode, frame, &mut self.queue)? {
                if opcode == OpCode::Close {
                    self.close_sent_at = Some(Instant::now());
                }
                if let Some(stats) = &mut self.stats {
                    stats.add(Counted::of(prepared.message()));
                }
                return Ok(());
            }
        }
        self.encode(prepared.message().clone())
    }

    /// Queues a close frame unless one was sent already.
    ///
    /// # Errors
    ///
    /// [`Error::Send`] for a close code that may not be sent (nothing is
    /// queued then).
    pub(crate) fn close_once(&mut self, frame: Option<&CloseFrame>) -> Result<(), Error> {
        if self.encoder.is_closed() || self.ended || self.broken {
            // Closed already, or nothing can be written any more.
            return Ok(());
        }
        self.encoder.close(frame, &mut self.queue)?;
        self.close_sent_at = Some(Instant::now());
        if let Some(stats) = &mut self.stats {
            stats.add(Counted::close(frame));
        }
        Ok(())
    }

    /// Writes the queue until it is empty or the socket would block.
    pub(crate) fn poll_write_queue<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            if self.broken {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let result = if self.queue.is_fragmented() && io.is_write_vectored() {
                let mut slices = [io::IoSlice::new(&[]); MAX_IOVECS];
                let n = self.queue.chunks_vectored(&mut slices);
                let slices = slices.get(..n).unwrap_or_default();
                Pin::new(&mut *io).poll_write_vectored(cx, slices)
            } else {
                Pin::new(&mut *io).poll_write(cx, self.queue.chunk())
            };
            match ready!(result) {
                Ok(0) => {
                    self.broken = true;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => self.queue.advance(n),
                Err(e) => {
                    self.broken = true;
                    return Poll::Ready(Err(e));
                }
            }
        }
        self.queue.shrink_if_empty(KEEP_IDLE);
        if let Some(stats) = &mut self.stats {
            // A write batch is out: publish its counts.
            stats.fold(self.encoder.deflate_totals());
        }
        Poll::Ready(Ok(()))
    }

    /// Writes the queue, then flushes the transport.
    pub(crate) fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_write_queue(io, cx))?;
        Pin::new(io).poll_flush(cx)
    }

    /// Waits until the queue is below the high-water mark.
    pub(crate) fn poll_ready<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        if self.encoder.is_closed() || self.broken || self.ended {
            return Poll::Ready(Err(Error::Closed));
        }
        if self.queue.len() < self.high_water_mark {
            return Poll::Ready(Ok(()));
        }
        match self.poll_write_queue(io, cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(Error::Io(e))),
            Poll::Pending if self.queue.len() < self.high_water_mark => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Flushes, then shuts the write side down (TCP FIN, TLS close_notify).
    pub(crate) fn poll_shutdown<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if self.shut_down {
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_flush(io, cx))?;
        ready!(Pin::new(io).poll_shutdown(cx))?;
        self.shut_down = true;
        Poll::Ready(Ok(()))
    }
}

enum Decoded {
    Deliver(Message),
    NeedMore,
    StateChanged,
}

enum ReadState {
    Open,
    /// The peer's close arrived: flush our reply (a server also shuts its
    /// write side down), then hand the close to the application.
    Replying(Option<CloseFrame>),
    /// We failed the connection: flush our close frame, then wait for EOF.
    Failing(Option<Error>),
    /// The closing handshake is over: wait for the TCP close, then report
    /// `error` (or the end).
    AwaitEof(Option<Error>),
    Done,
}

/// The read side: decoder, read buffer, closing state.
pub(crate) struct ReadCore {
    decoder: Decoder,
    buf: BytesMut,
    state: ReadState,
    role: Role,
    auto_pong: bool,
    close_timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    fragment_mode: bool,
    /// How much the next read asks for (between MIN_READ and MAX_READ).
    read_size: u32,
    /// Counts of what is received, when metrics are attached.
    stats: Option<Box<Local>>,
}

impl Drop for ReadCore {
    fn drop(&mut self) {
        if let Some(stats) = &mut self.stats {
            stats.end(self.decoder.inflate_totals());
        }
    }
}

impl ReadCore {
    pub(crate) fn new(
        decoder: Decoder,
        buf: BytesMut,
        role: Role,
        auto_pong: bool,
        close_timeout: Duration,
        stats: Option<Box<Local>>,
    ) -> ReadCore {
        ReadCore {
            decoder,
            buf,
            state: ReadState::Open,
            role,
            auto_pong,
            close_timeout,
            timer: None,
            fragment_mode: false,
            read_size: MIN_READ as u32,
            stats,
        }
    }

    pub(crate) fn set_fragment_mode(&mut self, on: bool) {
        self.fragment_mode = on;
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self.state, ReadState::Done)
    }

    /// Ends the connection: the write side learns nothing more can be sent,
    /// and sends its FIN now (a client whose server closed first, a peer
    /// that vanished) rather than when the socket is dropped, so the other
    /// end is not left waiting for it.
    fn finish<T: Transport>(&mut self, t: &mut T, cx: &mut Context<'_>) {
        self.state = ReadState::Done;
        self.timer = None;
        self.buf = BytesMut::new();
        if let Some(stats) = &mut self.stats {
            stats.end(self.decoder.inflate_totals());
        }
        t.with_write(cx, |w, io, cx| {
            w.ended = true;
            // What is still queued can never go out: writing it after our
            // FIN (or the peer's reset) would only fail.
            w.queue = WriteQueue::new();
            if !w.shut_down && !w.broken {
                // One attempt: if the socket cannot take it now, dropping
                // the stream closes it anyway.
                if let Poll::Ready(Ok(())) = Pin::new(io).poll_shutdown(cx) {
                    w.shut_down = true;
                }
            }
        });
    }

    /// Bytes received but not yet delivered.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Polls the close timer, arming it for `deadline()` first if needed.
    fn poll_timer(&mut self, cx: &mut Context<'_>, deadline: impl FnOnce() -> Instant) -> Poll<()> {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline())));
        timer.as_mut().poll(cx)
    }

    /// The next message or control frame.
    pub(crate) fn poll_next<T: Transport>(
        &mut self,
        t: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, Error>>> {
        // For states that wait on the peer: give up after the close timeout.
        let timeout = self.close_timeout;
        let deadline = move || Instant::now() + timeout;
        loop {
            match &mut self.state {
                ReadState::Done => return Poll::Ready(None),
                ReadState::Open => {}
                ReadState::Replying(_) => {
                    if self.poll_close_out(t, cx, deadline).is_pending() {
                        return Poll::Pending;
                    }
                    // A write error or a stuck peer here only means the
                    // peer is gone; the close it sent is still the news.
                    let ReadState::Replying(frame) =
                        std::mem::replace(&mut self.state, ReadState::AwaitEof(None))
                    else {
                        continue;
                    };
                    self.timer = None;
                    if self.role == Role::Server {
                        // The handshake is over and our FIN is out: a server
                        // closes first (RFC 6455 §7.1.1) and does not wait
                        // for the client's FIN. A client waits for the
                        // server's close (AwaitEof), bounded by the timeout.
                        self.finish(t, cx);
                    }
                    return Poll::Ready(Some(Ok(Message::Close(frame))));
                }
                ReadState::Failing(_) => {
                    if self.poll_close_out(t, cx, deadline).is_pending() {
                        return Poll::Pending;
                    }
                    let ReadState::Failing(err) =
                        std::mem::replace(&mut self.state, ReadState::Done)
                    else {
                        continue;
                    };
                    self.timer = None;
                    self.state = ReadState::AwaitEof(err);
                    continue;
                }
                ReadState::AwaitEof(_) => return self.poll_await_eof(t, cx),
            }

            // Open: deliver what the buffer already holds.
            match self.decode_buffered(t, cx) {
                Decoded::Deliver(msg) => return Poll::Ready(Some(Ok(msg))),
                Decoded::StateChanged => continue,
                Decoded::NeedMore => {}
            }

            // The buffer is exhausted: write what the messages delivered so
            // far produced (one syscall for all of them), then read.
            let (flush, over_mark, close_sent_at) = t.with_write(cx, |w, io, cx| {
                let flush = w.poll_flush(io, cx);
                (flush, w.queue.len() >= w.high_water_mark, w.close_sent_at)
            });
            if let Poll::Ready(Err(e)) = flush {
                self.finish(t, cx);
                return Poll::Ready(Some(Err(Error::Io(e))));
            }
            if let Some(sent) = close_sent_at {
                if self.poll_timer(cx, || sent + timeout).is_ready() {
                    self.finish(t, cx);
                    return Poll::Ready(Some(Err(Error::CloseTimeout)));
                }
            }
            if over_mark {
                // The peer does not read: stop reading from it too, so it
                // cannot grow our queue (pongs) without bound.
                return Poll::Pending;
            }
            let want = self.read_size as usize;
            self.buf.reserve(self.decoder.bytes_needed().max(want));
            match t.poll_read(cx, &mut self.buf) {
                Poll::Pending => {
                    if let Some(stats) = &mut self.stats {
                        // The read batch is over: publish its counts.
                        stats.fold(self.decoder.inflate_totals());
                    }
                    if self.buf.is_empty() && !self.decoder.is_mid_message() {
                        // Idle: give the read buffer's memory back.
                        if self.buf.capacity() > KEEP_IDLE {
                            self.buf = BytesMut::new();
                        }
                        self.decoder.shrink();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => {
                    self.finish(t, cx);
                    return Poll::Ready(Some(Err(Error::AbnormalClosure)));
                }
                Poll::Ready(Ok(n)) => {
                    self.read_size = if n >= want {
                        (want * 2).min(MAX_READ) as u32
                    } else if n < want / 4 {
                        (want / 2).max(MIN_READ) as u32
                    } else {
                        want as u32
                    };
                }
                Poll::Ready(Err(e)) => {
                    self.finish(t, cx);
                    return Poll::Ready(Some(Err(Error::Io(e))));
                }
            }
        }
    }

    /// A message already in the read buffer, without any I/O: `None` if the
    /// buffer holds no complete message (or the connection is closing; the
    /// next `poll_next` carries on).
    pub(crate) fn try_next<T: Transport>(&mut self, t: &mut T) -> Option<Result<Message, Error>> {
        if !matches!(self.state, ReadState::Open) {
            return None;
        }
        // Only encoding happens through the context here (pongs, close
        // replies); the next real poll registers the real waker.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.decode_buffered(t, &mut cx) {
            Decoded::Deliver(msg) => Some(Ok(msg)),
            Decoded::StateChanged | Decoded::NeedMore => None,
        }
    }

    /// Decodes the next item from the read buffer (Open state).
    fn decode_buffered<T: Transport>(&mut self, t: &mut T, cx: &mut Context<'_>) -> Decoded {
        if !self.decoder.is_mid_message() {
            self.decoder.set_fragment_mode(self.fragment_mode);
        }
        match self.decoder.decode(&mut self.buf) {
            Ok(Some(item)) => {
                let msg = match item {
                    Incoming::Text(t) => Message::Text(t),
                    Incoming::Binary(b) => Message::Binary(b),
                    Incoming::Fragment(f) => Message::Fragment(f),
                    Incoming::Ping(p) => {
                        if self.auto_pong {
                            t.with_write(cx, |w, _, _| {
                                // Fails only after our close: then no pong is due.
                                if w.encoder.pong(&p, &mut w.queue).is_ok() {
                                    if let Some(stats) = &mut w.stats {
                                        stats.add(Counted::of_pong(p.len()));
                                    }
                                }
                            });
                        }
                        Message::Ping(p)
                    }
                    Incoming::Pong(p) => Message::Pong(p),
                    Incoming::Close(frame) => {
                        if let Some(stats) = &mut self.stats {
                            stats.add(Counted::close(frame.as_ref()));
                        }
                        // Echo the peer's code (RFC 6455 §5.5.1); an empty close
                        // gets an empty close.
                        let reply = frame.as_ref().map(|f| CloseFrame::new(f.code, ""));
                        // The decoder accepts only codes valid on the wire, so
                        // the echo cannot be refused.
                        let _ = t.with_write(cx, |w, _, _| w.close_once(reply.as_ref()));
                        self.timer = None;
                        self.state = ReadState::Replying(frame);
                        return Decoded::StateChanged;
                    }
                };
                if let Some(stats) = &mut self.stats {
                    stats.add(Counted::of(&msg));
                }
                Decoded::Deliver(msg)
            }
            Ok(None) => Decoded::NeedMore,
            Err(e) => {
                tracing::debug!(error = %e, "failing the connection");
                let frame = CloseFrame::new(e.close_code(), e.close_reason());
                // 1002, 1007 or 1009: always valid.
                let _ = t.with_write(cx, |w, _, _| w.close_once(Some(&frame)));
                self.timer = None;
                self.state = ReadState::Failing(Some(Error::Protocol(e)));
                Decoded::StateChanged
            }
        }
    }

    /// Writes our close frame out (a server also shuts its write side
    /// down); ready when done, or when the close timeout passed: a peer that
    /// stopped reading is gone either way.
    fn poll_close_out<T: Transport>(
        &mut self,
        t: &mut T,
        cx: &mut Context<'_>,
        deadline: impl FnOnce() -> Instant,
    ) -> Poll<()> {
        let server = self.role == Role::Server;
        let flushed = t.with_write(cx, |w, io, cx| {
            if server {
                w.poll_shutdown(io, cx)
            } else {
                w.poll_flush(io, cx)
            }
        });
        if flushed.is_pending() && self.poll_timer(cx, deadline).is_pending() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// After the closing handshake: discard input until EOF or the timeout.
    fn poll_await_eof<T: Transport>(
        &mut self,
        t: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, Error>>> {
        let timeout = self.close_timeout;
        let deadline = move || Instant::now() + timeout;
        loop {
            self.buf.clear();
            self.buf.reserve(MIN_READ);
            match t.poll_read(cx, &mut self.buf) {
                Poll::Ready(Ok(n)) if n > 0 => continue,
                Poll::Pending => {
                    if self.poll_timer(cx, deadline).is_pending() {
                        return Poll::Pending;
                    }
                }
                // EOF, or an error: either way the connection is over.
                Poll::Ready(_) => {}
            }
            let ReadState::AwaitEof(err) = std::mem::replace(&mut self.state, ReadState::Done)
            else {
                return Poll::Ready(None);
            };
            self.finish(t, cx);
            return Poll::Ready(err.map(Err));
        }
    }
}
