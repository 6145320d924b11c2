//! Decoding incoming frames into messages.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

use crate::Role;
use crate::close::CloseFrame;
use crate::config::Limits;
use crate::deflate::{Decompressor, InflateError};
use crate::error::ProtocolError;
use crate::frame::{FrameHeader, HeaderDecode, MAX_CONTROL_PAYLOAD, OpCode};
use crate::mask::apply_mask;
use crate::utf8::{Utf8Bytes, Utf8Validator};

/// What the decoder produced from the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A whole text message (valid UTF-8).
    Text(Utf8Bytes),
    /// A whole binary message.
    Binary(Bytes),
    /// One data frame of a message, in fragment mode
    /// ([`Decoder::set_fragment_mode`]).
    Fragment(Fragment),
    /// A ping: the connection layer answers it with a pong.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// The peer's close frame; `None` if it carried no code (report 1005).
    Close(Option<CloseFrame>),
}

/// One data frame of a message, as delivered in fragment mode.
///
/// Modeled on ESP-IDF's `esp_websocket_client` data event: the payload of
/// this piece, where it sits in the message, and whether it is the last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// `Text` or `Binary`: the type of the whole message.
    pub opcode: OpCode,
    /// The payload of this frame, unmasked and decompressed. For text, the
    /// message so far is valid UTF-8, but this piece may end inside a
    /// character.
    pub data: Bytes,
    /// Offset of `data` within the message.
    pub message_offset: u64,
    /// Whether this is the first frame of the message.
    pub first: bool,
    /// Whether this is the last frame of the message (FIN).
    pub fin: bool,
}

#[derive(Debug, Clone, Copy)]
struct FrameState {
    header: FrameHeader,
    header_len: usize,
    /// The payload length as `usize` (checked against the limits).
    len: usize,
    /// Payload bytes already unmasked (and, for uncompressed text, validated).
    done: usize,
}

#[derive(Debug)]
struct MessageState {
    opcode: OpCode,
    compressed: bool,
    fragments: usize,
    /// Bytes of the message received so far (compressed size if compressed).
    wire_size: u64,
    /// Bytes delivered so far in fragment mode (decompressed size).
    delivered: u64,
    utf8: Utf8Validator,
}

/// Decodes frames from a read buffer, for one end of a connection.
///
/// Call [`Decoder::decode`] after every read with the connection's read
/// buffer; it consumes whole frames from the front and leaves partial ones.
/// A single-frame uncompressed message is returned as a slice of the read
/// buffer (no copy); fragmented or compressed messages are assembled.
///
/// Errors are final: the connection must be failed with
/// [`ProtocolError::close_code`], and the decoder not used again.
pub struct Decoder {
    role: Role,
    limits: Limits,
    /// Boxed: most connections never compress, and the state is large.
    inflater: Option<Box<Decompressor>>,
    frame: Option<FrameState>,
    message: Option<MessageState>,
    /// Assembly buffer for fragmented and compressed messages.
    assembly: BytesMut,
    fragment_mode: bool,
    closed: bool,
    /// How many more bytes the current frame needs.
    want: usize,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("role", &self.role)
            .field("limits", &self.limits)
            .field("deflate", &self.inflater.is_some())
            .field("frame", &self.frame)
            .field("message", &self.message)
            .field("fragment_mode", &self.fragment_mode)
            .field("closed", &self.closed)
            .finish()
    }
}

impl Decoder {
    /// A decoder for `role` with `limits`, inflating with `inflater` if
    /// permessage-deflate was negotiated.
    pub fn new(role: Role, limits: Limits, inflater: Option<Decompressor>) -> Decoder {
        Decoder {
            role,
            limits,
            inflater: inflater.map(Box::new),
            frame: None,
            message: None,
            assembly: BytesMut::new(),
            fragment_mode: false,
            closed: false,
            want: 2,
        }
    }

    /// Deliver each data frame as an [`Incoming::Fragment`] as it completes,
    /// instead of whole messages.
    pub fn set_fragment_mode(&mut self, on: bool) {
        self.fragment_mode = on;
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes this decoder inflated: `(compressed, uncompressed)`; zero
    /// without permessage-deflate.
    pub fn inflate_totals(&self) -> (u64, u64) {
        self.inflater.as_ref().map_or((0, 0), |d| d.totals())
    }

    /// Whether the peer's close frame was received.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether a message is partly received (between its first and last
    /// frame, or inside a frame).
    pub fn is_mid_message(&self) -> bool {
        self.message.is_some() || self.frame.is_some()
    }

    /// How many more bytes the frame being received needs at least: a hint
    /// for how much to read next. Bounded by the limits.
    pub fn bytes_needed(&self) -> usize {
        self.want
    }

    /// Releases the assembly buffer if no message is in progress.
    pub fn shrink(&mut self) {
        if self.message.is_none() && self.assembly.is_empty() {
            self.assembly = BytesMut::new();
        }
    }

    /// Decodes the next message or control frame from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds no complete item yet; the bytes
    /// seen so far stay in `buf` (unmasked and validated in place, so they
    /// are not processed again), and [`Decoder::bytes_needed`] says how many
    /// more are needed. Fails as soon as the bytes received prove a protocol
    /// violation, even inside a frame still arriving.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, ProtocolError> {
        loop {
            if self.closed {
                return if buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ProtocolError::FrameAfterClose)
                };
            }
            let mut fs = match self.frame.take() {
                Some(fs) => fs,
                None => match FrameHeader::decode(buf) {
                    Ok(HeaderDecode::Complete(header, header_len)) => {
                        self.start_frame(header, header_len)?
                    }
                    Ok(HeaderDecode::Incomplete(n)) => {
                        self.want = n;
                        return Ok(None);
                    }
                    Err(_) => return Err(ProtocolError::InvalidLength),
                },
            };

            let available = buf.len().saturating_sub(fs.header_len).min(fs.len);
            if available > fs.done {
                let range = fs.header_len + fs.done..fs.header_len + available;
                let new = buf.get_mut(range).ok_or(ProtocolError::InvalidLength)?;
                if let Some(key) = fs.header.mask {
                    apply_mask(new, key, fs.done);
                }
                if fs.header.opcode.is_data() {
                    if let Some(msg) = self.message.as_mut() {
                        if msg.opcode == OpCode::Text && !msg.compressed {
                            msg.utf8.feed(new).map_err(|_| ProtocolError::InvalidUtf8)?;
                        }
                    }
                }
                fs.done = available;
            }
            if available < fs.len {
                self.want = fs.len - available;
                self.frame = Some(fs);
                return Ok(None);
            }

            buf.advance(fs.header_len);
            let payload = buf.split_to(fs.len);
            self.want = 2;
            let item = if fs.header.opcode.is_control() {
                Some(self.control(fs.header.opcode, payload)?)
            } else {
                self.data(fs.header.fin, payload)?
            };
            if let Some(item) = item {
                return Ok(Some(item));
            }
        }
    }

    /// Applies the header rules of RFC 6455 §5 and RFC 7692 §6, and sets up
    /// the message state for the first frame of a message.
    fn start_frame(
        &mut self,
        header: FrameHeader,
        header_len: usize,
    ) -> Result<FrameState, ProtocolError> {
        let opcode = header.opcode;
        if let OpCode::Reserved(bits) = opcode {
            return Err(ProtocolError::ReservedOpcode(bits));
        }
        // RSV1 means "compressed" on the first frame of a data message,
        // and only when permessage-deflate was negotiated.
        let rsv1_ok = self.inflater.is_some() && matches!(opcode, OpCode::Text | OpCode::Binary);
        if header.rsv2 || header.rsv3 || (header.rsv1 && !rsv1_ok) {
            return Err(ProtocolError::ReservedBits);
        }
        match (self.role, header.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        // RFC 6455 §5.2: "the minimal number of bytes MUST be used".
        if !self.limits.allow_non_minimal_lengths && !header.has_minimal_length(header_len) {
            let mask_len = if header.mask.is_some() { 4 } else { 0 };
            return Err(ProtocolError::NonMinimalLength {
                len: header.payload_len,
                field_bytes: header_len.saturating_sub(2 + mask_len),
            });
        }
        if opcode.is_control() {
            if !header.fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            if header.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(ProtocolError::ControlFrameTooLong(header.payload_len));
            }
        }
        // Control frames are capped at 125 bytes above, whatever the limits.
        let max_frame = if opcode.is_control() {
            MAX_CONTROL_PAYLOAD
        } else {
            self.limits.max_frame_size.min(self.limits.max_message_size)
        };
        let len = usize::try_from(header.payload_len)
            .ok()
            .filter(|len| *len <= max_frame)
            .ok_or(ProtocolError::FrameTooLarge {
                size: header.payload_len,
                max: max_frame,
            })?;
        if opcode.is_data() {
            match (opcode, self.message.as_mut()) {
                (OpCode::Continuation, None) => {
                    return Err(ProtocolError::UnexpectedContinuation);
                }
                (OpCode::Continuation, Some(msg)) => {
                    msg.fragments += 1;
                    if msg.fragments > self.limits.max_fragments {
                        return Err(ProtocolError::TooManyFragments {
                            max: self.limits.max_fragments,
                        });
                    }
                }
                (_, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
                (_, None) => {
                    self.message = Some(MessageState {
                        opcode,
                        compressed: header.rsv1,
                        fragments: 1,
                        wire_size: 0,
                        delivered: 0,
                        utf8: Utf8Validator::new(),
                    });
                }
            }
            if let Some(msg) = self.message.as_mut() {
                msg.wire_size += header.payload_len;
                // Uncompressed, the wire size is the message size: fail now,
                // before the payload arrives. Compressed messages are
                // checked as they inflate.
                if !msg.compressed && msg.wire_size > self.limits.max_message_size as u64 {
                    return Err(ProtocolError::MessageTooLarge {
                        size: msg.wire_size,
                        max: self.limits.max_message_size,
                    });
                }
            }
        }
        Ok(FrameState {
            header,
            header_len,
            len,
            done: 0,
        })
    }

    fn control(&mut self, opcode: OpCode, payload: BytesMut) -> Result<Incoming, ProtocolError> {
        let payload = payload.freeze();
        Ok(match opcode {
            OpCode::Ping => Incoming::Ping(payload),
            OpCode::Pong => Incoming::Pong(payload),
            _ => {
                let frame = CloseFrame::parse(payload)?;
                self.closed = true;
                Incoming::Close(frame)
            }
        })
    }

    fn data(&mut self, fin: bool, payload: BytesMut) -> Result<Option<Incoming>, ProtocolError> {
        let Some(msg) = self.message.as_mut() else {
            return Err(ProtocolError::UnexpectedContinuation);
        };
        let first = msg.fragments == 1;
        let start = self.assembly.len();
        let chunk = if msg.compressed {
            let inflater = self.inflater.as_mut().ok_or(ProtocolError::ReservedBits)?;
            // In fragment mode the assembly buffer holds only this frame's
            // output: the limit is what is left of the message budget.
            let limit = if self.fragment_mode {
                self.limits
                    .max_message_size
                    .saturating_sub(usize::try_from(msg.delivered).unwrap_or(usize::MAX))
            } else {
                self.limits.max_message_size
            };
            inflater
                .decompress(&payload, fin, &mut self.assembly, limit)
                .map_err(|e| match e {
                    // The output was cut back: all we know is it passed the limit.
                    InflateError::TooBig { limit } => ProtocolError::MessageTooLarge {
                        size: msg.delivered + limit as u64 + 1,
                        max: self.limits.max_message_size,
                    },
                    other => ProtocolError::InvalidCompressedData(other.to_string()),
                })?;
            if msg.opcode == OpCode::Text {
                let inflated = self.assembly.get(start..).unwrap_or_default();
                msg.utf8
                    .feed(inflated)
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            None
        } else {
            Some(payload)
        };
        if fin && msg.opcode == OpCode::Text {
            msg.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
        }

        if self.fragment_mode {
            let data = match chunk {
                Some(payload) => payload.freeze(),
                None => self.assembly.split().freeze(),
            };
            let fragment = Fragment {
                opcode: msg.opcode,
                message_offset: msg.delivered,
                data,
                first,
                fin,
            };
            msg.delivered += fragment.data.len() as u64;
            if fin {
                self.message = None;
            }
            return Ok(Some(Incoming::Fragment(fragment)));
        }

        let whole = match chunk {
            // A single-frame message: hand out the read buffer's bytes.
            Some(payload) if fin && first => payload.freeze(),
            Some(payload) => {
                self.assembly.extend_from_slice(&payload);
                if !fin {
                    return Ok(None);
                }
                self.assembly.split().freeze()
            }
            None if fin => self.assembly.split().freeze(),
            None => return Ok(None),
        };
        let opcode = msg.opcode;
        self.message = None;
        Ok(Some(match opcode {
            OpCode::Text => Incoming::Text(Utf8Bytes::from_validated(whole)),
            _ => Incoming::Binary(whole),
        }))
    }
}
