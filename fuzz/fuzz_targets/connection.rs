//! The connection state machine of `ferrows::WebSocket`, in both roles,
//! under random interleavings of peer bytes (valid and invalid frames,
//! fragments, pings, closes, garbage, EOF, resets), local sends and closes,
//! backpressure, and time passing (the close timeout).
//!
//! The transport is an in-memory stream whose readiness the harness
//! controls (what the peer has sent, how much it reads, how much one read
//! returns); a current-thread runtime with paused time makes every timer
//! expiry deterministic. What the input means and the invariants checked
//! are in `ferrows_fuzz::conn_model` (shared with future targets).
#![no_main]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use ferrows::{Config, Error, Message, Negotiated, WebSocket};
use ferrows_fuzz::conn_model::{
    Checker, Ending, LocalMsg, Op, RecvOutcome, SendOutcome, parse_ops,
};
use ferrows_proto::{CloseFrame, Fragment, OpCode};
use futures_sink::Sink;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Default)]
struct PipeState {
    /// What the peer sent and the local side has not read.
    inbound: VecDeque<u8>,
    /// The most bytes one read returns.
    chunk: usize,
    eof: bool,
    reset: bool,
    /// What the local side wrote and the checker has not seen.
    out: Vec<u8>,
    /// How many more bytes the peer reads (`None`: all).
    can_write: Option<usize>,
    /// A write found the peer not reading.
    blocked: bool,
    shut_down: bool,
    vectored: bool,
}

#[derive(Clone, Default)]
struct Pipe(Rc<RefCell<PipeState>>);

impl Pipe {
    fn write(&self, bufs: &[&[u8]]) -> Poll<io::Result<usize>> {
        let mut s = self.0.borrow_mut();
        if s.reset {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        assert!(!s.shut_down, "a write after the shutdown");
        let mut room = s.can_write.unwrap_or(usize::MAX);
        let mut n = 0;
        for buf in bufs {
            let take = buf.len().min(room);
            s.out.extend_from_slice(buf.get(..take).unwrap_or_default());
            n += take;
            room -= take;
            if take < buf.len() {
                break;
            }
        }
        if let Some(c) = s.can_write.as_mut() {
            *c -= n;
        }
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            s.blocked = true;
            return Poll::Pending;
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut s = self.0.borrow_mut();
        if s.reset {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        if s.inbound.is_empty() {
            return if s.eof {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            };
        }
        let n = s.chunk.max(1).min(s.inbound.len()).min(buf.remaining());
        for b in s.inbound.drain(..n) {
            buf.put_slice(&[b]);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write(&[buf])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let slices: Vec<&[u8]> = bufs.iter().map(|b| &**b).collect();
        self.write(&slices)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.borrow().vectored
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.0.borrow().reset {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.0.borrow_mut();
        if s.reset {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        s.shut_down = true;
        Poll::Ready(Ok(()))
    }
}

struct Harness {
    ws: WebSocket<Pipe>,
    pipe: Pipe,
    checker: Checker,
}

/// Polls `fut` up to `n` times.
async fn poll_n<F: Future>(fut: F, n: usize) -> Poll<F::Output> {
    let mut fut = pin!(fut);
    for _ in 0..n {
        if let Poll::Ready(v) = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
        {
            return Poll::Ready(v);
        }
    }
    Poll::Pending
}

fn message(msg: &LocalMsg) -> Message {
    match msg {
        LocalMsg::Text(t) => Message::text(t.clone()),
        LocalMsg::Binary(b) => Message::binary(b.clone()),
        LocalMsg::Ping(p) => Message::ping(p.clone()),
        LocalMsg::Pong(p) => Message::pong(p.clone()),
        LocalMsg::Close(None) => Message::Close(None),
        LocalMsg::Close(Some((code, reason))) => {
            Message::Close(Some(CloseFrame::new(*code, reason)))
        }
        LocalMsg::Fragment { text, data, fin } => Message::Fragment(Fragment {
            opcode: if *text { OpCode::Text } else { OpCode::Binary },
            data: data.clone().into(),
            message_offset: 0,
            first: false,
            fin: *fin,
        }),
    }
}

fn send_outcome(r: Poll<Result<(), Error>>) -> SendOutcome {
    match r {
        Poll::Pending => SendOutcome::Pending,
        Poll::Ready(Ok(())) => SendOutcome::Ok,
        Poll::Ready(Err(Error::Closed)) => SendOutcome::Closed,
        Poll::Ready(Err(Error::Send(_))) => SendOutcome::Refused,
        Poll::Ready(Err(Error::Io(_))) => SendOutcome::Io,
        Poll::Ready(Err(e)) => SendOutcome::Other(e.to_string()),
    }
}

fn error_outcome(e: Error) -> RecvOutcome {
    match e {
        Error::Protocol(p) => RecvOutcome::Protocol(p.close_code().0),
        Error::AbnormalClosure => RecvOutcome::Abnormal,
        Error::Io(_) => RecvOutcome::Io,
        Error::CloseTimeout => RecvOutcome::CloseTimeout,
        e => RecvOutcome::Other(e.to_string()),
    }
}

fn recv_outcome(r: Poll<Option<Result<Message, Error>>>) -> RecvOutcome {
    match r {
        Poll::Pending => RecvOutcome::Pending,
        Poll::Ready(None) => RecvOutcome::End,
        Poll::Ready(Some(Ok(Message::Close(f)))) => RecvOutcome::PeerClose(f.map(|f| f.code.0)),
        Poll::Ready(Some(Ok(Message::Ping(_)))) => RecvOutcome::Ping,
        Poll::Ready(Some(Ok(Message::Pong(_)))) => RecvOutcome::Pong,
        Poll::Ready(Some(Ok(_))) => RecvOutcome::Data,
        Poll::Ready(Some(Err(e))) => error_outcome(e),
    }
}

impl Harness {
    /// Hands what the local side wrote to the checker.
    fn drain(&mut self) {
        let (out, blocked, reset) = {
            let mut s = self.pipe.0.borrow_mut();
            let blocked = std::mem::take(&mut s.blocked);
            (std::mem::take(&mut s.out), blocked, s.reset)
        };
        self.checker.wrote(&out);
        if blocked || reset {
            self.checker.impaired(reset);
        }
    }

    async fn recv(&mut self) -> RecvOutcome {
        let closing = self.ws.is_closing();
        let ws = &mut self.ws;
        let r = std::future::poll_fn(|cx| Poll::Ready(ws.poll_recv(cx))).await;
        let outcome = recv_outcome(r);
        self.drain();
        self.checker.received(closing, &outcome);
        outcome
    }

    async fn feed(&mut self, msg: &LocalMsg) -> SendOutcome {
        let closing = self.ws.is_closing();
        let outcome = send_outcome(poll_n(self.ws.feed(message(msg)), 2).await);
        self.drain();
        self.checker.sent(msg, closing, &outcome);
        outcome
    }

    async fn flush(&mut self) {
        let r = poll_n(self.ws.flush(), 2).await;
        self.drain();
        self.checker.flushed(&send_outcome(r));
    }

    /// `close(code)`, polled `polls` times (until done if `None`, with time
    /// passing while it waits).
    async fn close(&mut self, code: u16, reason: &str, polls: Option<usize>) {
        let closing = self.ws.is_closing();
        let over_before = self.checker.ended();
        let msg = LocalMsg::Close(Some((code, reason.into())));
        let mut steps = 0usize;
        let r = {
            let mut fut = pin!(self.ws.close(code, reason));
            loop {
                let ws_poll = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
                {
                    let mut s = self.pipe.0.borrow_mut();
                    let out = std::mem::take(&mut s.out);
                    drop(s);
                    self.checker.wrote(&out);
                }
                match ws_poll {
                    Poll::Ready(r) => break Some(r),
                    Poll::Pending => {
                        steps += 1;
                        match polls {
                            Some(n) if steps >= n => break None,
                            Some(_) => {}
                            None => {
                                assert!(steps < 400, "close() did not finish within 100 s");
                                tokio::time::advance(Duration::from_millis(250)).await;
                            }
                        }
                    }
                }
            }
        };
        self.drain();
        let queued = !closing && self.ws.is_closing();
        match r {
            None => {
                if !closing && !over_before {
                    let outcome = if queued {
                        SendOutcome::Ok
                    } else {
                        SendOutcome::Pending
                    };
                    self.checker.sent(&msg, closing, &outcome);
                }
            }
            Some(Err(e @ (Error::Send(_) | Error::Closed))) => {
                self.checker
                    .sent(&msg, closing, &send_outcome(Poll::Ready(Err(e))));
            }
            Some(result) => {
                if queued {
                    self.checker.sent(&msg, closing, &SendOutcome::Ok);
                }
                let outcome = match result {
                    Ok(()) => RecvOutcome::End,
                    Err(e) => error_outcome(e),
                };
                self.checker.received(true, &outcome);
                if outcome != RecvOutcome::End {
                    // close() returns the error; the next receive is the end.
                    let next = self.recv().await;
                    assert_eq!(next, RecvOutcome::End, "after close() failed: {next:?}");
                }
            }
        }
    }

    async fn step(&mut self, op: Op) {
        match op {
            Op::Peer(bytes) => {
                let mut s = self.pipe.0.borrow_mut();
                if !s.eof && !s.reset {
                    s.inbound.extend(bytes);
                }
            }
            Op::PeerEof => self.pipe.0.borrow_mut().eof = true,
            Op::PeerReset => self.pipe.0.borrow_mut().reset = true,
            Op::PeerReads(n) => self.pipe.0.borrow_mut().can_write = n,
            Op::ReadChunk(n) => self.pipe.0.borrow_mut().chunk = n,
            Op::Send(msg) => {
                if self.feed(&msg).await == SendOutcome::Ok {
                    self.flush().await;
                }
            }
            Op::Feed(msg) => {
                self.feed(&msg).await;
            }
            Op::Queue(msg) => {
                let closing = self.ws.is_closing();
                let r = self.ws.queue(message(&msg));
                self.drain();
                self.checker
                    .sent(&msg, closing, &send_outcome(Poll::Ready(r)));
            }
            Op::Flush => self.flush().await,
            Op::Close(code, reason, polls) => {
                self.close(code, &reason, Some(usize::from(polls) + 1))
                    .await
            }
            Op::SinkClose => {
                let closing = self.ws.is_closing();
                let ws = &mut self.ws;
                let r = std::future::poll_fn(|cx| {
                    Poll::Ready(Sink::<Message>::poll_close(Pin::new(&mut *ws), cx))
                })
                .await;
                self.drain();
                match r {
                    // The close frame could not be queued.
                    Poll::Ready(Err(e @ (Error::Send(_) | Error::Closed))) if !closing => {
                        self.checker.sent(
                            &LocalMsg::Close(Some((1000, String::new()))),
                            closing,
                            &send_outcome(Poll::Ready(Err(e))),
                        );
                    }
                    r => self.checker.flushed(&send_outcome(r)),
                }
            }
            Op::Recv(n) => {
                for _ in 0..n {
                    if matches!(self.recv().await, RecvOutcome::Pending | RecvOutcome::End) {
                        break;
                    }
                }
            }
            Op::TryRecv => {
                let closing = self.ws.is_closing();
                let r = self.ws.try_recv();
                self.drain();
                if let Some(r) = r {
                    let outcome = recv_outcome(Poll::Ready(Some(r)));
                    assert!(
                        matches!(
                            outcome,
                            RecvOutcome::Data | RecvOutcome::Ping | RecvOutcome::Pong
                        ),
                        "try_recv returned {outcome:?}"
                    );
                    self.checker.received(closing, &outcome);
                }
            }
            Op::Advance(d) => tokio::time::advance(d).await,
            Op::FragmentMode(on) => self.ws.set_fragment_mode(on),
        }
    }
}

async fn run(data: &[u8]) {
    let (setup, ops, mut generator) = parse_ops(data);
    if std::env::var_os("FERROWS_FUZZ_DEBUG").is_some() {
        eprintln!("{setup:?}\n{ops:#?}");
    }
    let pipe = Pipe::default();
    {
        let mut s = pipe.0.borrow_mut();
        s.vectored = setup.vectored;
        s.chunk = usize::MAX;
    }
    let mut config = Config::default()
        .close_timeout(setup.close_timeout)
        .write_high_water_mark(setup.high_water_mark)
        .auto_pong(setup.auto_pong)
        .compression(setup.deflate.is_some());
    config.limits = setup.limits;
    let negotiated = Negotiated {
        protocol: None,
        deflate: setup.deflate.clone(),
    };
    let ws = WebSocket::from_upgraded(
        pipe.clone(),
        setup.role,
        &config,
        negotiated,
        BytesMut::new(),
    );
    let mut h = Harness {
        ws,
        pipe,
        checker: Checker::new(&setup),
    };
    for op in ops {
        h.step(op).await;
        h.drain();
    }

    // The peer stops sending: the connection must end within a bounded time.
    {
        let mut s = h.pipe.0.borrow_mut();
        match setup.ending {
            Ending::LocalClose => s.can_write = None,
            Ending::LocalCloseUnread => s.can_write = Some(0),
            Ending::PeerEof => s.eof = true,
            Ending::PeerClose => {
                s.can_write = None;
                if !s.eof && !s.reset {
                    s.inbound.extend(generator.closing_frame());
                }
            }
        }
    }
    let timeout = setup.close_timeout;
    match setup.ending {
        Ending::LocalClose | Ending::LocalCloseUnread => h.close(1000, "end", None).await,
        Ending::PeerEof | Ending::PeerClose => {
            // Receive; an application with an idle timeout closes after a
            // while (the peer may have left a frame half-sent).
            let start = tokio::time::Instant::now();
            loop {
                if h.recv().await == RecvOutcome::End {
                    break;
                }
                if start.elapsed() > 2 * timeout {
                    h.close(1001, "idle", None).await;
                    break;
                }
                tokio::time::advance(Duration::from_millis(250)).await;
            }
        }
    }
    // close() may have returned early (a broken transport); receiving
    // ends it within the close timeout.
    let start = tokio::time::Instant::now();
    while h.recv().await != RecvOutcome::End {
        assert!(start.elapsed() <= 3 * timeout, "the connection did not end");
        tokio::time::advance(Duration::from_millis(250)).await;
    }
    h.checker.finish();

    // Closed: every send fails with Error::Closed.
    let closing = h.ws.is_closing();
    let msg = LocalMsg::Text("late".into());
    let r = h.ws.queue(message(&msg));
    h.checker.sent(&msg, closing, &send_outcome(Poll::Ready(r)));
    h.feed(&msg).await;
    h.drain();
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
}

fuzz_target!(|data: &[u8]| {
    RUNTIME.with(|rt| rt.block_on(run(data)));
});
