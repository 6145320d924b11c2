//! Encoding outgoing frames.

use std::fmt;

use bytes::{Bytes, BytesMut};

use crate::Role;
use crate::close::{CloseCode, CloseFrame};
use crate::deflate::{Compressor, SharedKey};
use crate::frame::{FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, OpCode};
use crate::mask::apply_mask;
use crate::write_queue::WriteQueue;

/// Why a frame could not be encoded. These are mistakes of the local
/// application, not of the peer; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// A control frame payload over 125 bytes.
    ControlTooLong(usize),
    /// A close frame was already sent: RFC 6455 §5.5.1 forbids sending
    /// anything after it.
    Closed,
    /// A whole message or a first fragment while a fragmented message is
    /// still being sent.
    FragmentInProgress,
    /// A close code that may not be sent in a close frame (RFC 6455
    /// §7.4: 1005, 1006, 1015, below 1000, ...; see
    /// [`CloseCode::is_valid_on_wire`]).
    InvalidCloseCode(CloseCode),
    /// `Continuation` or a control opcode where a data opcode is required.
    NotADataOpcode(OpCode),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::ControlTooLong(n) => {
                write!(f, "control frame payload of {n} bytes (at most 125)")
            }
            EncodeError::Closed => f.write_str("a close frame was already sent"),
            EncodeError::FragmentInProgress => {
                f.write_str("a fragmented message is still being sent")
            }
            EncodeError::NotADataOpcode(op) => write!(f, "{op} is not a data opcode"),
            EncodeError::InvalidCloseCode(code) => {
                write!(f, "close code {} may not be sent in a close frame", code.0)
            }
        }
    }
}

impl std::error::Error for EncodeError {}

/// Encodes messages and control frames for one end of a connection.
///
/// Clients mask every frame with a fresh random key (RFC 6455 §5.3);
/// servers never mask. With a negotiated [`Compressor`], data messages at
/// least `threshold` bytes long are compressed (RSV1 set).
pub struct Encoder {
    role: Role,
    /// Boxed: most connections never compress, and the state is large.
    deflate: Option<Box<Deflate>>,
    threshold: usize,
    /// A fragmented message being sent: whether it is compressed.
    fragmenting: Option<bool>,
    closed: bool,
}

/// The compressor and a reused buffer for its output.
struct Deflate {
    compressor: Compressor,
    scratch: BytesMut,
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("role", &self.role)
            .field("deflate", &self.deflate.is_some())
            .field("threshold", &self.threshold)
            .field("fragmenting", &self.fragmenting)
            .field("closed", &self.closed)
            .finish()
    }
}

impl Encoder {
    /// An encoder for `role`, compressing with `deflate` if given.
    pub fn new(role: Role, deflate: Option<(Compressor, usize)>) -> Encoder {
        let (deflate, threshold) = match deflate {
            Some((compressor, threshold)) => (
                Some(Box::new(Deflate {
                    compressor,
                    scratch: BytesMut::new(),
                })),
                threshold,
            ),
            None => (None, usize::MAX),
        };
        Encoder {
            role,
            deflate,
            threshold,
            fragmenting: None,
            closed: false,
        }
    }

    /// The role this encoder masks for.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether a close frame has been encoded.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether permessage-deflate is active.
    pub fn is_compressing(&self) -> bool {
        self.deflate.is_some()
    }

    /// Bytes this encoder compressed: `(uncompressed, compressed)`; zero
    /// without permessage-deflate. Frames shared through
    /// [`Encoder::shared_frame`] were compressed elsewhere and do not count.
    pub fn deflate_totals(&self) -> (u64, u64) {
        self.deflate
            .as_ref()
            .map_or((0, 0), |d| d.compressor.totals())
    }

    /// Encodes a whole text message.
    pub fn text(&mut self, text: &str, dst: &mut WriteQueue) -> Result<(), EncodeError> {
        self.message(OpCode::Text, text.as_bytes(), dst)
    }

    /// Encodes a whole binary message.
    pub fn binary(&mut self, data: &[u8], dst: &mut WriteQueue) -> Result<(), EncodeError> {
        self.message(OpCode::Binary, data, dst)
    }

    /// Encodes a whole message (`Text` or `Binary`) in one frame.
    pub fn message(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        dst: &mut WriteQueue,
    ) -> Result<(), EncodeError> {
        self.check_data(opcode)?;
        if self.fragmenting.is_some() {
            return Err(EncodeError::FragmentInProgress);
        }
        if let Some(d) = self
            .deflate
            .as_mut()
            .filter(|_| payload.len() >= self.threshold)
        {
            let mut out = std::mem::take(&mut d.scratch);
            out.clear();
            d.compressor.compress(payload, &mut out);
            self.write_frame(true, true, opcode, &out, dst);
            self.keep_scratch(out);
            return Ok(());
        }
        self.write_frame(true, false, opcode, payload, dst);
        Ok(())
    }

    /// Encodes a whole message whose payload is already in a [`Bytes`].
    ///
    /// A server sending an uncompressed payload queues it by reference: no
    /// copy, however large. Otherwise the same as [`Encoder::message`].
    pub fn message_bytes(
        &mut self,
        opcode: OpCode,
        payload: Bytes,
        dst: &mut WriteQueue,
    ) -> Result<(), EncodeError> {
        let compress = self.deflate.is_some() && payload.len() >= self.threshold;
        if self.role == Role::Client || compress {
            return self.message(opcode, &payload, dst);
        }
        self.check_data(opcode)?;
        if self.fragmenting.is_some() {
            return Err(EncodeError::FragmentInProgress);
        }
        let header = FrameHeader::new(opcode, payload.len() as u64);
        let mut buf = [0u8; MAX_HEADER_LEN];
        let n = header.encode(&mut buf);
        dst.put_slice(buf.get(..n).unwrap_or_default());
        dst.put_bytes(payload);
        Ok(())
    }

    /// How this encoder could send a message of type `opcode` and `len`
    /// payload bytes as a frame encoded once for many connections (see
    /// [`Encoder::shared_frame`]); `None` if it must encode the message
    /// itself.
    ///
    /// Only a server can share frames (clients mask each frame with their
    /// own key), and not in the middle of a fragmented message or after its
    /// close. Control frames and messages below the compression threshold
    /// are shared as they are ([`SharedForm::Plain`], from
    /// [`encode_server_frame`]); longer ones uncompressed when permessage-deflate
    /// is off, compressed ([`SharedForm::Deflated`], from
    /// [`encode_server_frame_deflated`] with that key) when it is on without
    /// context takeover. With context takeover every compressed message
    /// depends on this connection's earlier ones: `None`.
    pub fn shared_form(&self, opcode: OpCode, len: usize) -> Option<SharedForm> {
        if self.role == Role::Client || self.closed {
            return None;
        }
        if opcode.is_control() {
            return Some(SharedForm::Plain);
        }
        if self.fragmenting.is_some() || !matches!(opcode, OpCode::Text | OpCode::Binary) {
            return None;
        }
        match &self.deflate {
            None => Some(SharedForm::Plain),
            Some(_) if len < self.threshold => Some(SharedForm::Plain),
            Some(d) => d.compressor.shared_key().map(SharedForm::Deflated),
        }
    }

    /// Queues a frame that was encoded once for many connections, without
    /// encoding it again: from [`encode_server_frame`] or
    /// [`encode_server_frame_deflated`], in the form [`Encoder::shared_form`]
    /// named for it.
    ///
    /// Returns `Ok(false)` without queueing anything where no shared frame
    /// can be sent: on a client, and for a compressed frame (RSV1 set) on a
    /// connection that does not compress without context takeover. The
    /// caller then encodes the message itself.
    pub fn shared_frame(
        &mut self,
        opcode: OpCode,
        frame: Bytes,
        dst: &mut WriteQueue,
    ) -> Result<bool, EncodeError> {
        if self.closed {
            return Err(EncodeError::Closed);
        }
        let compressed = frame.first().is_some_and(|b| b & RSV1 != 0);
        let can_take_compressed = self
            .deflate
            .as_ref()
            .is_some_and(|d| d.compressor.shared_key().is_some());
        if self.role == Role::Client || (compressed && !can_take_compressed) {
            return Ok(false);
        }
        if opcode.is_data() && self.fragmenting.is_some() {
            return Err(EncodeError::FragmentInProgress);
        }
        dst.put_bytes(frame);
        if opcode == OpCode::Close {
            self.closed = true;
        }
        Ok(true)
    }

    /// Encodes one fragment of a message sent in several frames.
    ///
    /// The first fragment names the message type (`Text` or `Binary`);
    /// the following ones pass the same opcode again (they go out as
    /// continuation frames). `fin` marks the last fragment. Control frames
    /// may be sent between fragments. A message is compressed if its first
    /// fragment is at least the threshold long.
    ///
    /// Text fragments need not end on a character boundary, but the whole
    /// message must be UTF-8: the peer fails the connection otherwise.
    pub fn fragment(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        fin: bool,
        dst: &mut WriteQueue,
    ) -> Result<(), EncodeError> {
        self.check_data(opcode)?;
        let (wire_opcode, compressed) = match self.fragmenting {
            None => (
                opcode,
                self.deflate.is_some() && payload.len() >= self.threshold,
            ),
            Some(compressed) => (OpCode::Continuation, compressed),
        };
        let first = self.fragmenting.is_none();
        self.fragmenting = if fin { None } else { Some(compressed) };
        match self.deflate.as_mut().filter(|_| compressed) {
            Some(d) => {
                let mut out = std::mem::take(&mut d.scratch);
                out.clear();
                d.compressor.compress_fragment(payload, fin, &mut out);
                self.write_frame(fin, first, wire_opcode, &out, dst);
                self.keep_scratch(out);
            }
            None => self.write_frame(fin, false, wire_opcode, payload, dst),
        }
        Ok(())
    }

    /// Encodes a ping. The payload may be at most 125 bytes.
    pub fn ping(&mut self, payload: &[u8], dst: &mut WriteQueue) -> Result<(), EncodeError> {
        self.control(OpCode::Ping, payload, dst)
    }

    /// Encodes a pong. The payload may be at most 125 bytes.
    pub fn pong(&mut self, payload: &[u8], dst: &mut WriteQueue) -> Result<(), EncodeError> {
        self.control(OpCode::Pong, payload, dst)
    }

    /// Encodes a close frame; nothing may be encoded after it.
    /// `None` sends an empty close payload (the peer sees code 1005); a
    /// code that may not go on the wire (1005, 1006, ...) is refused with
    /// [`EncodeError::InvalidCloseCode`].
    pub fn close(
        &mut self,
        frame: Option<&CloseFrame>,
        dst: &mut WriteQueue,
    ) -> Result<(), EncodeError> {
        if self.closed {
            return Err(EncodeError::Closed);
        }
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        let len = match frame {
            Some(f) => {
                if !f.code.is_valid_on_wire() {
                    return Err(EncodeError::InvalidCloseCode(f.code));
                }
                let code = f.code.0.to_be_bytes();
                let reason = f.reason_bytes();
                let len = 2 + reason.len();
                if len > MAX_CONTROL_PAYLOAD {
                    return Err(EncodeError::ControlTooLong(len));
                }
                for (slot, byte) in payload.iter_mut().zip(code.iter().chain(reason.iter())) {
                    *slot = *byte;
                }
                len
            }
            None => 0,
        };
        self.control(OpCode::Close, payload.get(..len).unwrap_or_default(), dst)?;
        self.closed = true;
        Ok(())
    }

    fn control(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        dst: &mut WriteQueue,
    ) -> Result<(), EncodeError> {
        if self.closed {
            return Err(EncodeError::Closed);
        }
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(EncodeError::ControlTooLong(payload.len()));
        }
        self.write_frame(true, false, opcode, payload, dst);
        Ok(())
    }

    /// Keeps the compressor's output buffer for the next message, but only
    /// where the connection keeps a compression state anyway (context
    /// takeover): without, an idle connection holds nothing.
    fn keep_scratch(&mut self, out: BytesMut) {
        if let Some(d) = self.deflate.as_mut() {
            if d.compressor.shared_key().is_none() {
                d.scratch = out;
            }
        }
    }

    fn check_data(&self, opcode: OpCode) -> Result<(), EncodeError> {
        if self.closed {
            return Err(EncodeError::Closed);
        }
        if !matches!(opcode, OpCode::Text | OpCode::Binary) {
            return Err(EncodeError::NotADataOpcode(opcode));
        }
        Ok(())
    }

    /// Writes header and payload, masking for clients.
    fn write_frame(
        &mut self,
        fin: bool,
        rsv1: bool,
        opcode: OpCode,
        payload: &[u8],
        dst: &mut WriteQueue,
    ) {
        let mask = match self.role {
            Role::Client => Some(rand::random::<[u8; 4]>()),
            Role::Server => None,
        };
        let header = FrameHeader {
            fin,
            rsv1,
            rsv2: false,
            rsv3: false,
            opcode,
            mask,
            payload_len: payload.len() as u64,
        };
        let mut buf = [0u8; MAX_HEADER_LEN];
        let n = header.encode(&mut buf);
        dst.reserve(n + payload.len());
        let tail = dst.tail_mut();
        tail.extend_from_slice(buf.get(..n).unwrap_or_default());
        let start = tail.len();
        tail.extend_from_slice(payload);
        if let (Some(key), Some(body)) = (mask, tail.get_mut(start..)) {
            apply_mask(body, key, 0);
        }
    }
}

/// The RSV1 bit in a frame's first byte: set on a compressed message.
const RSV1: u8 = 0x40;

/// How a server connection can send a message encoded once for many
/// connections; see [`Encoder::shared_form`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SharedForm {
    /// The frame as [`encode_server_frame`] makes it: uncompressed.
    Plain,
    /// The frame as [`encode_server_frame_deflated`] makes it with this key.
    Deflated(SharedKey),
}

/// Encodes one frame with explicit header fields: for tools and tests that
/// need to produce frames a normal sender never would (reserved bits,
/// reserved opcodes, unmasked client frames). The payload is masked with
/// `header.mask` if set; `header.payload_len` is taken from `payload`.
pub fn encode_raw_frame(mut header: FrameHeader, payload: &[u8], dst: &mut Vec<u8>) {
    header.payload_len = payload.len() as u64;
    let mut buf = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut buf);
    dst.extend_from_slice(buf.get(..n).unwrap_or_default());
    let start = dst.len();
    dst.extend_from_slice(payload);
    if let (Some(key), Some(body)) = (header.mask, dst.get_mut(start..)) {
        apply_mask(body, key, 0);
    }
}

/// Encodes a whole message as a server sends it (one frame, unmasked,
/// uncompressed): for sending the same bytes to many connections with
/// [`Encoder::shared_frame`].
pub fn encode_server_frame(opcode: OpCode, payload: &[u8]) -> Result<Bytes, EncodeError> {
    if opcode == OpCode::Continuation || opcode.is_reserved() {
        return Err(EncodeError::NotADataOpcode(opcode));
    }
    if opcode.is_control() && payload.len() > MAX_CONTROL_PAYLOAD {
        return Err(EncodeError::ControlTooLong(payload.len()));
    }
    let header = FrameHeader::new(opcode, payload.len() as u64);
    let mut buf = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut buf);
    let mut out = BytesMut::with_capacity(n + payload.len());
    out.extend_from_slice(buf.get(..n).unwrap_or_default());
    out.extend_from_slice(payload);
    Ok(out.freeze())
}

/// Encodes a whole data message (`Text` or `Binary`) as a server sends it
/// compressed without context takeover (one frame, unmasked, RSV1 set): for
/// sending the same bytes to every connection whose
/// [`Encoder::shared_form`] is [`SharedForm::Deflated`] with `key`, with
/// [`Encoder::shared_frame`].
///
/// The compression state comes from the calling thread's pool (see
/// [`crate::deflate`]) and goes back to it.
pub fn encode_server_frame_deflated(
    opcode: OpCode,
    payload: &[u8],
    key: SharedKey,
) -> Result<Bytes, EncodeError> {
    if !matches!(opcode, OpCode::Text | OpCode::Binary) {
        return Err(EncodeError::NotADataOpcode(opcode));
    }
    let mut body = BytesMut::new();
    key.compressor().compress(payload, &mut body);
    let header = FrameHeader {
        rsv1: true,
        ..FrameHeader::new(opcode, body.len() as u64)
    };
    let mut buf = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut buf);
    let mut out = BytesMut::with_capacity(n + body.len());
    out.extend_from_slice(buf.get(..n).unwrap_or_default());
    out.extend_from_slice(&body);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate::{Decompressor, DeflateConfig, DeflateParams};
    use crate::{Decoder, Incoming, Limits};

    fn text(len: usize) -> String {
        let mut s = "the quick brown fox jumps over the lazy dog. ".repeat(len / 45 + 1);
        s.truncate(len);
        s
    }

    fn server(no_context_takeover: bool, bits: u8) -> Encoder {
        let params = DeflateParams {
            server_no_context_takeover: no_context_takeover,
            server_max_window_bits: bits,
            ..DeflateParams::default()
        };
        let config = DeflateConfig::default();
        Encoder::new(
            Role::Server,
            Some((params.server_compressor(&config), config.threshold)),
        )
    }

    /// Decodes one message as a client that negotiated `params`.
    fn client_decode(params: DeflateParams, wire: &[u8]) -> String {
        let mut d = Decoder::new(
            Role::Client,
            Limits::default(),
            Some(params.client_decompressor()),
        );
        let mut buf = BytesMut::from(wire);
        match d.decode(&mut buf).unwrap() {
            Some(Incoming::Text(t)) => t.as_str().to_owned(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shared_forms() {
        let plain = Encoder::new(Role::Server, None);
        assert_eq!(
            plain.shared_form(OpCode::Text, 5000),
            Some(SharedForm::Plain)
        );
        let client = Encoder::new(Role::Client, None);
        assert_eq!(client.shared_form(OpCode::Text, 5), None);

        let takeover = server(false, 15);
        assert_eq!(
            takeover.shared_form(OpCode::Text, 255),
            Some(SharedForm::Plain)
        );
        assert_eq!(takeover.shared_form(OpCode::Text, 256), None);
        assert_eq!(
            takeover.shared_form(OpCode::Ping, 10),
            Some(SharedForm::Plain)
        );

        let a = server(true, 15);
        let b = server(true, 15);
        let small = server(true, 8);
        let key = |e: &Encoder| match e.shared_form(OpCode::Binary, 1000) {
            Some(SharedForm::Deflated(k)) => k,
            other => panic!("{other:?}"),
        };
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&small));
        assert_eq!(key(&small).window_bits(), 9);
        assert_eq!(a.shared_form(OpCode::Text, 10), Some(SharedForm::Plain));
    }

    #[test]
    fn a_deflated_shared_frame_equals_what_each_connection_would_send() {
        let payload = text(1000);
        for bits in [8, 9, 12, 15] {
            let mut own = server(true, bits);
            let Some(SharedForm::Deflated(key)) = own.shared_form(OpCode::Text, payload.len())
            else {
                panic!("no key")
            };
            let shared =
                encode_server_frame_deflated(OpCode::Text, payload.as_bytes(), key).unwrap();
            assert!(shared.len() < payload.len() / 4, "{} bytes", shared.len());
            // Twice: the second message comes out the same (no context).
            for _ in 0..2 {
                let mut q = WriteQueue::new();
                own.text(&payload, &mut q).unwrap();
                assert_eq!(q.to_vec(), shared.to_vec(), "bits {bits}");
            }
            let mut q = WriteQueue::new();
            let mut e = server(true, bits);
            assert!(
                e.shared_frame(OpCode::Text, shared.clone(), &mut q)
                    .unwrap()
            );
            let params = DeflateParams {
                server_no_context_takeover: true,
                server_max_window_bits: bits,
                ..DeflateParams::default()
            };
            assert_eq!(client_decode(params, &q.to_vec()), payload);
        }
    }

    #[test]
    fn compressed_shared_frames_only_where_they_decode() {
        let payload = text(1000);
        let key = match server(true, 15).shared_form(OpCode::Text, 1000) {
            Some(SharedForm::Deflated(k)) => k,
            other => panic!("{other:?}"),
        };
        let frame = encode_server_frame_deflated(OpCode::Text, payload.as_bytes(), key).unwrap();
        let mut q = WriteQueue::new();
        // A connection with context takeover, and one that does not
        // compress at all, must not take it.
        assert!(
            !server(false, 15)
                .shared_frame(OpCode::Text, frame.clone(), &mut q)
                .unwrap()
        );
        let mut plain = Encoder::new(Role::Server, None);
        assert!(!plain.shared_frame(OpCode::Text, frame, &mut q).unwrap());
        assert!(q.is_empty());
        // The uncompressed frame is fine for both.
        let frame = encode_server_frame(OpCode::Text, b"hi").unwrap();
        assert!(
            server(false, 15)
                .shared_frame(OpCode::Text, frame.clone(), &mut q)
                .unwrap()
        );
        assert!(plain.shared_frame(OpCode::Text, frame, &mut q).unwrap());
        assert!(matches!(
            encode_server_frame_deflated(OpCode::Ping, b"x", key),
            Err(EncodeError::NotADataOpcode(OpCode::Ping))
        ));
    }

    #[test]
    fn no_state_kept_between_messages_without_context_takeover() {
        let payload = text(5000);
        let mut c = crate::deflate::Compressor::new(15, 1, true);
        let mut d = Decompressor::new(15, true);
        for i in 0..3 {
            let mut out = BytesMut::new();
            c.compress(payload.as_bytes(), &mut out);
            assert!(!c.holds_state(), "message {i}");
            let mut back = BytesMut::new();
            d.decompress(&out, true, &mut back, 1 << 20).unwrap();
            assert!(!d.holds_state(), "message {i}");
            assert_eq!(&back[..], payload.as_bytes());
        }
        // A fragmented message holds the state until its last fragment.
        let mut out = BytesMut::new();
        c.compress_fragment(b"first half, ", false, &mut out);
        assert!(c.holds_state());
        c.compress_fragment(b"second half", true, &mut out);
        assert!(!c.holds_state());
        let mut back = BytesMut::new();
        d.decompress(&out, true, &mut back, 1 << 20).unwrap();
        assert_eq!(&back[..], b"first half, second half");
        // With context takeover both keep their state.
        let mut c = crate::deflate::Compressor::new(15, 1, false);
        let mut d = Decompressor::new(15, false);
        let mut out = BytesMut::new();
        c.compress(payload.as_bytes(), &mut out);
        d.decompress(&out, true, &mut BytesMut::new(), 1 << 20)
            .unwrap();
        assert!(c.holds_state() && d.holds_state());
    }
}
