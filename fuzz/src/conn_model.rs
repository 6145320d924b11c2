//! The connection target's model: what the fuzzer's bytes mean (a setup and
//! a sequence of [`Op`]s) and the invariants every run must keep
//! ([`Checker`]).
//!
//! Nothing here knows about tokio or `ferrows::WebSocket`: the driver maps
//! each op onto the connection under test and reports what came back as a
//! [`SendOutcome`] or [`RecvOutcome`]; the bytes the connection wrote go to
//! [`Checker::wrote`]. A sans-I/O connection can be driven with the same ops
//! and checked by the same `Checker`.
//!
//! Input layout: two setup bytes (see [`Setup::parse`]), then ops, each an
//! op byte followed by its arguments (see [`parse_ops`]). Bytes missing at
//! the end read as zeros, so every input is a valid program.
//!
//! Invariants (a violation panics, which libFuzzer reports as a crash):
//! - everything the local side writes decodes as frames of its role (masked
//!   if and only if it is the client), with no protocol error;
//! - nothing is written after our close frame;
//! - once our close frame is queued or the connection has ended, every send
//!   fails with "closed"; before that, a send fails only for a message the
//!   protocol forbids (control payload over 125 bytes, a whole message
//!   inside a fragmented one, a close code not allowed on the wire) or a
//!   broken transport;
//! - a protocol error is reported with close code 1002, 1007 or 1009 and,
//!   unless we had closed already, our close frame carries that code; a
//!   peer's close (when we had not closed) is answered with the same code;
//! - after an error or the end, `recv` reports the end;
//! - the run ends closed within a bounded number of steps and a bounded
//!   time once the peer stops sending ([`Ending`], checked by the driver
//!   with [`Checker::finish`]).

use std::time::Duration;

use bytes::BytesMut;
use ferrows_proto::deflate::{Compressor, DeflateConfig, DeflateParams};
use ferrows_proto::{
    CloseCode, Decoder, FrameHeader, Incoming, Limits, OpCode, Role, encode_raw_frame,
};

/// At most this many ops per input: every run stays short.
pub const MAX_OPS: usize = 200;

/// Reads the fuzzer's bytes; missing bytes are zeros.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Wraps the fuzzer's input.
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte (0 once exhausted).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// The next `n` bytes, or fewer at the end.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A payload: a length byte (`n` < 200 is the length, else
    /// `(n - 199) * 64`, up to 3584 bytes), then that many bytes, repeated
    /// if the input runs short.
    pub fn payload(&mut self) -> Vec<u8> {
        let n = usize::from(self.byte());
        let len = if n < 200 { n } else { (n - 199) * 64 };
        let seed = self.take(len.min(64));
        if seed.is_empty() {
            return vec![b'x'; len];
        }
        seed.iter().copied().cycle().take(len).collect()
    }
}

/// How the run ends once the ops are done; the connection must be closed
/// within a bounded time in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The peer goes silent but keeps reading; the local side closes.
    LocalClose,
    /// The peer goes silent and stops reading; the local side closes.
    LocalCloseUnread,
    /// The peer closes the TCP connection (EOF); the local side receives.
    PeerEof,
    /// The peer sends a close frame and then nothing (no EOF); the local
    /// side receives.
    PeerClose,
}

/// The connection's settings, from the first two input bytes.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The local side's role.
    pub role: Role,
    /// permessage-deflate, if negotiated.
    pub deflate: Option<DeflateParams>,
    /// Whether the transport takes vectored writes.
    pub vectored: bool,
    /// Whether pings are answered automatically.
    pub auto_pong: bool,
    /// The local side's receive limits.
    pub limits: Limits,
    /// The write high-water mark.
    pub high_water_mark: usize,
    /// The close timeout.
    pub close_timeout: Duration,
    /// How the run ends.
    pub ending: Ending,
}

impl Setup {
    /// Byte 0: bit 0 role (client if set), bit 1 deflate, bit 2 vectored
    /// writes, bit 3 no auto-pong, bits 4-5 limits, bits 6-7 [`Ending`].
    /// Byte 1: bits 0-1 close timeout (1-4 s), bits 2-3 high-water mark.
    pub fn parse(input: &mut Input<'_>) -> Setup {
        let a = input.byte();
        let b = input.byte();
        let (msg, frame, frags) = match (a >> 4) & 3 {
            0 => (4096, 1024, 8),
            1 => (64, 64, 3),
            2 => (256, 4096, 2),
            _ => (1 << 16, 1 << 16, 64),
        };
        Setup {
            role: if a & 1 != 0 {
                Role::Client
            } else {
                Role::Server
            },
            deflate: (a & 2 != 0).then(DeflateParams::default),
            vectored: a & 4 != 0,
            auto_pong: a & 8 == 0,
            limits: Limits::default()
                .max_message_size(msg)
                .max_frame_size(frame)
                .max_fragments(frags),
            high_water_mark: [64 * 1024, 16, 256, 4096][usize::from((b >> 2) & 3)],
            close_timeout: Duration::from_secs(u64::from(b & 3) + 1),
            ending: match a >> 6 {
                0 => Ending::LocalClose,
                1 => Ending::LocalCloseUnread,
                2 => Ending::PeerEof,
                _ => Ending::PeerClose,
            },
        }
    }

    /// The peer's role.
    pub fn peer_role(&self) -> Role {
        match self.role {
            Role::Server => Role::Client,
            Role::Client => Role::Server,
        }
    }
}

/// A message the local application sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalMsg {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A ping (over 125 bytes: must be refused).
    Ping(Vec<u8>),
    /// A pong (over 125 bytes: must be refused).
    Pong(Vec<u8>),
    /// A close frame: `None` for an empty one, else code and reason.
    Close(Option<(u16, String)>),
    /// One frame of a fragmented message (ASCII, so a text message is
    /// valid UTF-8 wherever it is cut, whatever type its pieces claim).
    Fragment {
        /// Text (else binary).
        text: bool,
        /// The payload.
        data: Vec<u8>,
        /// The last frame of the message.
        fin: bool,
    },
}

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Bytes from the peer (frames, valid or not, or garbage), appended to
    /// what the local side can read.
    Peer(Vec<u8>),
    /// The peer closes its sending side (the local side reads EOF).
    PeerEof,
    /// The connection is reset: reads and writes fail from now on.
    PeerReset,
    /// How many more bytes the peer will read (`None`: all of them).
    PeerReads(Option<usize>),
    /// The most bytes one read of the local side returns.
    ReadChunk(usize),
    /// `send` (queue when ready, then flush), each step polled at most twice.
    Send(LocalMsg),
    /// `feed`, polled at most twice.
    Feed(LocalMsg),
    /// `queue` (never waits).
    Queue(LocalMsg),
    /// `flush`, polled at most twice.
    Flush,
    /// `close(code, reason)`, polled `n` times then dropped.
    Close(u16, String, u8),
    /// The `Sink` close (a normal close frame, flushed).
    SinkClose,
    /// `recv`, polled up to `n` times while it delivers.
    Recv(u8),
    /// `try_recv`.
    TryRecv,
    /// Time passes.
    Advance(Duration),
    /// Fragment mode on or off.
    FragmentMode(bool),
}

/// Close codes the local application tries, valid on the wire or not.
const LOCAL_CODES: [u16; 12] = [
    1000, 1001, 1002, 1003, 1008, 1011, 3000, 4999, 1005, 1006, 999, 5000,
];
/// Close codes the peer sends, valid or not.
const PEER_CODES: [u16; 12] = [
    1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999, 1004, 1005, 1015, 2999,
];

/// Turns the fuzzer's bytes into peer bytes and ops. Keeps the peer's
/// compressor, since compressed frames depend on what was sent before.
pub struct Generator {
    peer_role: Role,
    compressor: Option<Compressor>,
    key: u32,
}

impl Generator {
    /// A generator for `setup`.
    pub fn new(setup: &Setup) -> Generator {
        let peer_role = setup.peer_role();
        let config = DeflateConfig::default();
        let compressor = setup.deflate.as_ref().map(|p| match peer_role {
            Role::Server => p.server_compressor(&config),
            Role::Client => p.client_compressor(&config),
        });
        Generator {
            peer_role,
            compressor,
            key: 0x1234_5678,
        }
    }

    /// A frame from the peer; `wrong_mask` masks where the peer must not
    /// (or the reverse).
    fn frame(&mut self, b0: u8, payload: &[u8], wrong_mask: bool, out: &mut Vec<u8>) {
        let masked = (self.peer_role == Role::Client) != wrong_mask;
        self.key = self.key.wrapping_mul(0x9E37_79B9).wrapping_add(1);
        let header = FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv1: b0 & 0x40 != 0,
            rsv2: b0 & 0x20 != 0,
            rsv3: b0 & 0x10 != 0,
            opcode: OpCode::from_u8(b0),
            mask: masked.then(|| self.key.to_be_bytes()),
            payload_len: 0,
        };
        encode_raw_frame(header, payload, out);
    }

    /// A well-formed data message from the peer, compressed if deflate is
    /// on and `compress`, in `pieces` frames (with a ping between the first
    /// two if `ping`).
    fn message(
        &mut self,
        text: bool,
        data: &[u8],
        pieces: usize,
        compress: bool,
        ping: bool,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let opcode = if text { 0x1 } else { 0x2 };
        let pieces = pieces.clamp(1, 8);
        let step = data.len().div_ceil(pieces).max(1);
        let mut chunks: Vec<&[u8]> = data.chunks(step).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        let mut compressor = self.compressor.take().filter(|_| compress);
        for (i, chunk) in chunks.iter().enumerate() {
            let fin = i == last;
            let mut b0 = if i == 0 { opcode } else { 0 };
            if fin {
                b0 |= 0x80;
            }
            let mut payload = chunk.to_vec();
            if let Some(c) = compressor.as_mut() {
                let mut z = BytesMut::new();
                c.compress_fragment(chunk, fin, &mut z);
                payload = z.to_vec();
                if i == 0 {
                    b0 |= 0x40;
                }
            }
            self.frame(b0, &payload, false, &mut out);
            if ping && i == 0 {
                self.frame(0x89, b"mid", false, &mut out);
            }
        }
        if compressor.is_some() {
            self.compressor = compressor;
        }
        out
    }

    fn local_msg(&mut self, input: &mut Input<'_>) -> LocalMsg {
        let kind = input.byte();
        match kind % 7 {
            0 => LocalMsg::Text(String::from_utf8_lossy(&input.payload()).into_owned()),
            1 => LocalMsg::Binary(input.payload()),
            2 => LocalMsg::Ping(input.payload()),
            3 => LocalMsg::Pong(input.payload()),
            4 => {
                let code = LOCAL_CODES
                    .get(usize::from(input.byte()) % LOCAL_CODES.len())
                    .copied()
                    .unwrap_or(1000);
                if kind & 0x80 != 0 {
                    LocalMsg::Close(None)
                } else {
                    LocalMsg::Close(Some((code, "bye".into())))
                }
            }
            _ => {
                let mut data = input.payload();
                let text = kind & 0x10 != 0;
                // ASCII either way: a continuation takes the type of the
                // message it continues (a "binary" piece of a text message
                // must be UTF-8 too, which is the application's business).
                for b in &mut data {
                    *b = b'a' + (*b % 26);
                }
                LocalMsg::Fragment {
                    text,
                    data,
                    fin: kind & 0x20 != 0,
                }
            }
        }
    }

    /// The next op, or `None` at the end of the input.
    pub fn next_op(&mut self, input: &mut Input<'_>) -> Option<Op> {
        if input.is_empty() {
            return None;
        }
        let op = input.byte();
        Some(match op % 20 {
            // Any frame: first header byte as given (RSV2 asks for a real
            // compressed payload when deflate is on), flags, payload.
            0 | 1 => {
                let b0 = input.byte();
                let flags = input.byte();
                let mut payload = input.payload();
                let mut b0 = b0;
                if b0 & 0x20 != 0 {
                    if let Some(c) = self.compressor.as_mut() {
                        let mut z = BytesMut::new();
                        c.compress_fragment(&payload, b0 & 0x80 != 0, &mut z);
                        payload = z.to_vec();
                        b0 = (b0 & !0x20) | 0x40;
                    }
                }
                let mut out = Vec::new();
                self.frame(b0, &payload, flags & 1 != 0, &mut out);
                Op::Peer(out)
            }
            // A well-formed message.
            2 | 3 => {
                let flags = input.byte();
                let data = input.payload();
                let text = flags & 1 != 0;
                let data = if text {
                    if flags & 2 != 0 {
                        // Multi-byte characters, possibly cut by fragments.
                        "é€😀".repeat(data.len() / 9 + 1).into_bytes()
                    } else {
                        data.iter().map(|b| b'a' + (b % 26)).collect()
                    }
                } else {
                    data
                };
                Op::Peer(self.message(
                    text,
                    &data,
                    usize::from(flags >> 4) % 4 + 1,
                    flags & 4 != 0,
                    flags & 8 != 0,
                ))
            }
            // Control frames.
            4 => {
                let which = input.byte();
                let mut out = Vec::new();
                match which % 4 {
                    0 => {
                        let p = input.payload();
                        self.frame(0x89, &p, false, &mut out);
                    }
                    1 => {
                        let p = input.payload();
                        self.frame(0x8A, &p, false, &mut out);
                    }
                    2 => {
                        let code = PEER_CODES
                            .get(usize::from(input.byte()) % PEER_CODES.len())
                            .copied()
                            .unwrap_or(1000);
                        let mut p = code.to_be_bytes().to_vec();
                        if which & 0x80 != 0 {
                            // An invalid UTF-8 reason.
                            p.extend_from_slice(&[0xC3, 0x28]);
                        } else {
                            p.extend_from_slice(b"peer");
                        }
                        self.frame(0x88, &p, false, &mut out);
                    }
                    _ => self.frame(0x88, &[], false, &mut out),
                }
                Op::Peer(out)
            }
            5 => Op::Peer(input.payload()),
            6 => Op::PeerEof,
            7 => Op::PeerReset,
            8 => {
                let n = input.byte();
                Op::PeerReads((n != 255).then(|| usize::from(n) * 8))
            }
            9 => Op::ReadChunk(usize::from(input.byte()).max(1)),
            10 | 11 => Op::Send(self.local_msg(input)),
            12 => Op::Feed(self.local_msg(input)),
            13 => Op::Queue(self.local_msg(input)),
            14 => Op::Flush,
            15 => {
                let code = LOCAL_CODES
                    .get(usize::from(input.byte()) % LOCAL_CODES.len())
                    .copied()
                    .unwrap_or(1000);
                Op::Close(code, "done".into(), input.byte() % 4)
            }
            16 => Op::SinkClose,
            17 => Op::Recv(input.byte() % 8 + 1),
            18 => {
                let b = input.byte();
                if b & 0x80 != 0 {
                    Op::TryRecv
                } else {
                    Op::FragmentMode(b & 1 != 0)
                }
            }
            _ => Op::Advance(Duration::from_millis(u64::from(input.byte()) * 40)),
        })
    }

    /// The peer's close frame for [`Ending::PeerClose`].
    pub fn closing_frame(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.frame(0x88, &1000u16.to_be_bytes(), false, &mut out);
        out
    }
}

/// Setup and ops from the fuzzer's bytes (at most [`MAX_OPS`]), and the
/// generator (for frames the ending needs).
pub fn parse_ops(data: &[u8]) -> (Setup, Vec<Op>, Generator) {
    let mut input = Input::new(data);
    let setup = Setup::parse(&mut input);
    let mut generator = Generator::new(&setup);
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS {
        match generator.next_op(&mut input) {
            Some(op) => ops.push(op),
            None => break,
        }
    }
    (setup, ops, generator)
}

/// What a send (or feed, queue, close) returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Queued (and flushed, for a send).
    Ok,
    /// Still waiting (backpressure, or the peer does not read).
    Pending,
    /// Refused: the connection is closed.
    Closed,
    /// Refused: the protocol forbids this message.
    Refused,
    /// The transport failed.
    Io,
    /// Anything else (always a violation).
    Other(String),
}

/// What a receive returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecvOutcome {
    /// A data message or fragment.
    Data,
    /// A ping.
    Ping,
    /// A pong.
    Pong,
    /// The peer's close frame, with its code (`None`: empty).
    PeerClose(Option<u16>),
    /// A protocol error, with the close code it maps to.
    Protocol(u16),
    /// The connection dropped without a close frame.
    Abnormal,
    /// The transport failed.
    Io,
    /// The closing handshake timed out.
    CloseTimeout,
    /// The end: no more messages.
    End,
    /// Nothing yet.
    Pending,
    /// Anything else (always a violation).
    Other(String),
}

/// The invariants of a run.
pub struct Checker {
    /// Decodes what the local side writes, as the peer would.
    wire: Decoder,
    wire_buf: BytesMut,
    /// Our close frame on the wire: its code (`None`: empty payload).
    wire_close: Option<Option<u16>>,
    /// The close frame we owe (a reply to the peer's, or the code of a
    /// protocol error), if we had not closed before.
    owed_close: Option<Option<u16>>,
    /// The transport misbehaved (reset, or the peer stopped reading): our
    /// close frame may never get out.
    impaired: bool,
    /// The transport was reset: sends may fail with I/O errors.
    reset: bool,
    /// An error or the end was reported: the next receive must be the end.
    over: bool,
    /// The end was reported.
    ended: bool,
    /// A fragmented message is being sent.
    fragmenting: bool,
}

impl Checker {
    /// A checker for `setup`.
    pub fn new(setup: &Setup) -> Checker {
        let limits = Limits::default()
            .max_message_size(1 << 24)
            .max_frame_size(1 << 24)
            .max_fragments(1 << 20);
        let inflater = setup.deflate.as_ref().map(|p| match setup.peer_role() {
            Role::Server => p.server_decompressor(),
            Role::Client => p.client_decompressor(),
        });
        Checker {
            wire: Decoder::new(setup.peer_role(), limits, inflater),
            wire_buf: BytesMut::new(),
            wire_close: None,
            owed_close: None,
            impaired: false,
            reset: false,
            over: false,
            ended: false,
            fragmenting: false,
        }
    }

    /// Bytes the local side wrote: they must decode as its role's frames,
    /// and none may follow our close frame.
    pub fn wrote(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        assert!(
            self.wire_close.is_none(),
            "{} bytes written after our close frame",
            bytes.len()
        );
        self.wire_buf.extend_from_slice(bytes);
        loop {
            match self.wire.decode(&mut self.wire_buf) {
                Ok(Some(Incoming::Close(frame))) => {
                    let code = frame.map(|f| f.code.0);
                    if let Some(c) = code {
                        assert!(CloseCode(c).is_valid_on_wire(), "we sent close code {c}");
                    }
                    if let Some(owed) = self.owed_close {
                        assert_eq!(owed, code, "our close frame has the wrong code");
                    }
                    self.wire_close = Some(code);
                    assert!(
                        self.wire_buf.is_empty(),
                        "{} bytes written after our close frame",
                        self.wire_buf.len()
                    );
                    return;
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(e) => panic!("we wrote an invalid frame: {e}"),
            }
        }
    }

    /// The transport was reset (`reset`) or the peer stopped reading.
    pub fn impaired(&mut self, reset: bool) {
        self.impaired = true;
        self.reset |= reset;
    }

    /// Whether the message must be refused by an open connection.
    fn forbidden(&self, msg: &LocalMsg) -> bool {
        match msg {
            LocalMsg::Ping(p) | LocalMsg::Pong(p) => p.len() > 125,
            LocalMsg::Text(_) | LocalMsg::Binary(_) => self.fragmenting,
            LocalMsg::Close(Some((code, _))) => !CloseCode(*code).is_valid_on_wire(),
            LocalMsg::Close(None) | LocalMsg::Fragment { .. } => false,
        }
    }

    /// A send of `msg` returned `outcome`; `closing` tells whether our close
    /// frame was queued before it.
    pub fn sent(&mut self, msg: &LocalMsg, closing: bool, outcome: &SendOutcome) {
        if closing || self.ended {
            assert_eq!(
                *outcome,
                SendOutcome::Closed,
                "a send after the close returned {outcome:?}"
            );
            return;
        }
        let forbidden = self.forbidden(msg);
        match outcome {
            SendOutcome::Refused => {
                assert!(forbidden, "a valid message was refused: {msg:?}")
            }
            // Waiting for room in the queue: not looked at yet.
            SendOutcome::Pending => {}
            SendOutcome::Ok => {
                assert!(!forbidden, "a forbidden message was accepted: {msg:?}");
                if let LocalMsg::Fragment { fin, .. } = msg {
                    self.fragmenting = !fin;
                }
            }
            SendOutcome::Closed | SendOutcome::Io => assert!(
                self.reset || self.over,
                "a send failed ({outcome:?}) on a healthy connection"
            ),
            SendOutcome::Other(e) => panic!("a send returned an unexpected error: {e}"),
        }
    }

    /// A flush (or the `Sink` close's flush) returned `outcome`: it fails
    /// only on a broken transport or a connection that is over.
    pub fn flushed(&mut self, outcome: &SendOutcome) {
        match outcome {
            SendOutcome::Ok | SendOutcome::Pending => {}
            SendOutcome::Io | SendOutcome::Closed => assert!(
                self.reset || self.over,
                "a flush failed ({outcome:?}) on a healthy connection"
            ),
            other => panic!("a flush returned {other:?}"),
        }
    }

    /// A receive returned `outcome`; `closing` tells whether our close frame
    /// was queued before it.
    pub fn received(&mut self, closing: bool, outcome: &RecvOutcome) {
        if self.over {
            assert_eq!(
                *outcome,
                RecvOutcome::End,
                "a receive after the end returned {outcome:?}"
            );
            self.ended = true;
            return;
        }
        match outcome {
            RecvOutcome::Data | RecvOutcome::Ping | RecvOutcome::Pong | RecvOutcome::Pending => {}
            RecvOutcome::PeerClose(code) => {
                if !closing {
                    self.owe(*code);
                }
            }
            RecvOutcome::Protocol(code) => {
                assert!(
                    matches!(code, 1002 | 1007 | 1009),
                    "a protocol error with close code {code}"
                );
                if !closing {
                    self.owe(Some(*code));
                }
                self.over = true;
            }
            RecvOutcome::Abnormal | RecvOutcome::Io | RecvOutcome::CloseTimeout => {
                self.over = true;
            }
            RecvOutcome::End => {
                self.over = true;
                self.ended = true;
            }
            RecvOutcome::Other(e) => panic!("a receive returned an unexpected error: {e}"),
        }
    }

    fn owe(&mut self, code: Option<u16>) {
        if let Some(sent) = self.wire_close {
            // Already on the wire (queued in the same step): it must match.
            assert_eq!(sent, code, "our close frame has the wrong code");
        }
        self.owed_close = Some(code);
    }

    /// Whether the end was reported.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The end of the run: the connection ended; a close frame we owed is
    /// on the wire unless the transport kept it from getting there.
    pub fn finish(&self) {
        assert!(self.ended, "the connection did not end");
        if let Some(owed) = self.owed_close {
            if !self.impaired {
                assert_eq!(
                    self.wire_close,
                    Some(owed),
                    "the close frame we owed never went out"
                );
            }
        }
    }
}
