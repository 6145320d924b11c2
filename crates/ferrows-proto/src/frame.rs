//! Frame headers (RFC 6455 §5.2): incremental decode and encode.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! ```
//!
//! Decoding never rejects a header on its own: it reports what the bytes say
//! (reserved opcodes and bits included) so that tools such as `ferrows decode`
//! can show them. The [`crate::Decoder`] applies the protocol rules.

use std::fmt;

/// The longest possible frame header: 2 + 8 (64-bit length) + 4 (masking key).
pub const MAX_HEADER_LEN: usize = 14;

/// The longest payload a control frame may carry (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame opcode (RFC 6455 §5.2, §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// `0x0`: continuation of a fragmented message.
    Continuation,
    /// `0x1`: a text message (UTF-8).
    Text,
    /// `0x2`: a binary message.
    Binary,
    /// `0x8`: connection close.
    Close,
    /// `0x9`: ping.
    Ping,
    /// `0xA`: pong.
    Pong,
    /// `0x3`–`0x7` and `0xB`–`0xF`: reserved; receiving one fails the connection.
    Reserved(u8),
}

impl OpCode {
    /// Decodes the low four bits of `bits`.
    pub const fn from_u8(bits: u8) -> OpCode {
        match bits & 0x0F {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => OpCode::Reserved(other),
        }
    }

    /// The four-bit wire value.
    pub const fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
            OpCode::Reserved(bits) => bits & 0x0F,
        }
    }

    /// Control opcodes have the high bit of the nibble set (`0x8`–`0xF`).
    pub const fn is_control(self) -> bool {
        self.as_u8() & 0x08 != 0
    }

    /// Text, Binary or Continuation.
    pub const fn is_data(self) -> bool {
        !self.is_control()
    }

    /// Whether this opcode is reserved for future use.
    pub const fn is_reserved(self) -> bool {
        matches!(self, OpCode::Reserved(_))
    }

    /// The name Wireshark and the RFC use, e.g. `"text"`.
    pub const fn name(self) -> &'static str {
        match self {
            OpCode::Continuation => "continuation",
            OpCode::Text => "text",
            OpCode::Binary => "binary",
            OpCode::Close => "close",
            OpCode::Ping => "ping",
            OpCode::Pong => "pong",
            OpCode::Reserved(_) => "reserved",
        }
    }
}

impl fmt::Display for OpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpCode::Reserved(bits) => write!(f, "reserved (0x{bits:X})"),
            other => f.write_str(other.name()),
        }
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: this is the final fragment of a message.
    pub fin: bool,
    /// RSV1 (permessage-deflate: "this message is compressed").
    pub rsv1: bool,
    /// RSV2 (no extension defined here uses it).
    pub rsv2: bool,
    /// RSV3 (no extension defined here uses it).
    pub rsv3: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, if the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// The payload length in bytes.
    pub payload_len: u64,
}

/// What [`FrameHeader::decode`] found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderDecode {
    /// A whole header: the header and how many bytes it took.
    Complete(FrameHeader, usize),
    /// The header is cut short: at least this many more bytes are needed.
    Incomplete(usize),
}

/// The ways a frame header can be malformed on the wire itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// A 64-bit length with its most significant bit set (RFC 6455 §5.2).
    LengthMsbSet,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::LengthMsbSet => {
                f.write_str("64-bit payload length has its most significant bit set")
            }
        }
    }
}

impl std::error::Error for HeaderError {}

impl FrameHeader {
    /// A header with FIN set, no RSV bits, no mask.
    pub const fn new(opcode: OpCode, payload_len: u64) -> FrameHeader {
        FrameHeader {
            fin: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: None,
            payload_len,
        }
    }

    /// Decodes a header from the start of `buf`.
    ///
    /// Returns [`HeaderDecode::Incomplete`] with the number of missing bytes
    /// when `buf` is too short, so callers can wait for exactly that much.
    pub fn decode(buf: &[u8]) -> Result<HeaderDecode, HeaderError> {
        let (b0, b1) = match buf {
            [b0, b1, ..] => (*b0, *b1),
            _ => return Ok(HeaderDecode::Incomplete(2 - buf.len())),
        };
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        let ext_len = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header_len = 2 + ext_len + if masked { 4 } else { 0 };
        let Some(rest) = buf.get(2..header_len) else {
            return Ok(HeaderDecode::Incomplete(header_len - buf.len()));
        };
        let (len_bytes, mask_bytes) = rest.split_at(ext_len);
        let payload_len = match *len_bytes {
            [] => u64::from(len7),
            [a, b] => u64::from(u16::from_be_bytes([a, b])),
            [a, b, c, d, e, f, g, h] => {
                if a & 0x80 != 0 {
                    return Err(HeaderError::LengthMsbSet);
                }
                u64::from_be_bytes([a, b, c, d, e, f, g, h])
            }
            // `ext_len` is 0, 2 or 8, and `len_bytes` has exactly that length.
            _ => return Err(HeaderError::LengthMsbSet),
        };
        let mask = match *mask_bytes {
            [a, b, c, d] => Some([a, b, c, d]),
            _ => None,
        };
        Ok(HeaderDecode::Complete(
            FrameHeader {
                fin: b0 & 0x80 != 0,
                rsv1: b0 & 0x40 != 0,
                rsv2: b0 & 0x20 != 0,
                rsv3: b0 & 0x10 != 0,
                opcode: OpCode::from_u8(b0),
                mask,
                payload_len,
            },
            header_len,
        ))
    }

    /// Whether the length was encoded in the fewest bytes possible, as
    /// RFC 6455 §5.2 requires of senders. Only meaningful for headers decoded
    /// with [`FrameHeader::decode`] together with the header length it returned.
    pub fn has_minimal_length(&self, header_len: usize) -> bool {
        let mask_len = if self.mask.is_some() { 4 } else { 0 };
        header_len == 2 + length_field_len(self.payload_len) + mask_len
    }

    /// The number of bytes [`FrameHeader::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        2 + length_field_len(self.payload_len) + if self.mask.is_some() { 4 } else { 0 }
    }

    /// Encodes the header into `out`, returning how many bytes were written.
    ///
    /// The length uses the minimal encoding. Lengths above `2^63 - 1` cannot
    /// be represented and are clamped (no real payload comes near that).
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        let mut b0 = self.opcode.as_u8();
        if self.fin {
            b0 |= 0x80;
        }
        if self.rsv1 {
            b0 |= 0x40;
        }
        if self.rsv2 {
            b0 |= 0x20;
        }
        if self.rsv3 {
            b0 |= 0x10;
        }
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        out[0] = b0;
        let mut n = 2;
        let len = self.payload_len.min(i64::MAX as u64);
        if len < 126 {
            out[1] = mask_bit | len as u8;
        } else if let Ok(len16) = u16::try_from(len) {
            out[1] = mask_bit | 126;
            let [a, b] = len16.to_be_bytes();
            out[2] = a;
            out[3] = b;
            n = 4;
        } else {
            out[1] = mask_bit | 127;
            let [a, b, c, d, e, f, g, h] = len.to_be_bytes();
            *out = [out[0], out[1], a, b, c, d, e, f, g, h, 0, 0, 0, 0];
            n = 10;
        }
        if let Some([a, b, c, d]) = self.mask {
            match n {
                2 => {
                    out[2] = a;
                    out[3] = b;
                    out[4] = c;
                    out[5] = d;
                }
                4 => {
                    out[4] = a;
                    out[5] = b;
                    out[6] = c;
                    out[7] = d;
                }
                _ => {
                    out[10] = a;
                    out[11] = b;
                    out[12] = c;
                    out[13] = d;
                }
            }
            n += 4;
        }
        n
    }
}

const fn length_field_len(len: u64) -> usize {
    if len < 126 {
        0
    } else if len <= u16::MAX as u64 {
        2
    } else {
        8
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn enc(h: &FrameHeader) -> Vec<u8> {
        let mut out = [0u8; MAX_HEADER_LEN];
        let n = h.encode(&mut out);
        out[..n].to_vec()
    }

    #[test]
    fn rfc6455_5_7_unmasked_hello_header() {
        let h = FrameHeader::new(OpCode::Text, 5);
        assert_eq!(enc(&h), [0x81, 0x05]);
    }

    #[test]
    fn lengths_use_minimal_encoding() {
        assert_eq!(enc(&FrameHeader::new(OpCode::Binary, 125)), [0x82, 125]);
        assert_eq!(
            enc(&FrameHeader::new(OpCode::Binary, 126)),
            [0x82, 126, 0, 126]
        );
        // RFC 6455 §5.7: 256 bytes binary in a single unmasked frame.
        assert_eq!(
            enc(&FrameHeader::new(OpCode::Binary, 256)),
            [0x82, 0x7E, 0x01, 0x00]
        );
        assert_eq!(
            enc(&FrameHeader::new(OpCode::Binary, 65535)),
            [0x82, 126, 0xFF, 0xFF]
        );
        // RFC 6455 §5.7: 64 KiB binary in a single unmasked frame.
        assert_eq!(
            enc(&FrameHeader::new(OpCode::Binary, 65536)),
            [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    #[test]
    fn decode_reports_missing_bytes() {
        assert_eq!(
            FrameHeader::decode(&[]).unwrap(),
            HeaderDecode::Incomplete(2)
        );
        assert_eq!(
            FrameHeader::decode(&[0x81]).unwrap(),
            HeaderDecode::Incomplete(1)
        );
        assert_eq!(
            FrameHeader::decode(&[0x82, 0xFF, 0, 0]).unwrap(),
            HeaderDecode::Incomplete(10)
        );
        assert_eq!(
            FrameHeader::decode(&[0x82, 0x7E, 1]).unwrap(),
            HeaderDecode::Incomplete(1)
        );
    }

    #[test]
    fn decode_masked_header() {
        // RFC 6455 §5.7: a single-frame masked text message "Hello".
        let bytes = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d];
        let HeaderDecode::Complete(h, n) = FrameHeader::decode(&bytes).unwrap() else {
            panic!("incomplete");
        };
        assert_eq!(n, 6);
        assert!(h.fin);
        assert_eq!(h.opcode, OpCode::Text);
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(h.payload_len, 5);
        assert_eq!(enc(&h), bytes);
    }

    #[test]
    fn decode_rejects_length_msb() {
        let bytes = [0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(FrameHeader::decode(&bytes), Err(HeaderError::LengthMsbSet));
    }

    #[test]
    fn non_minimal_length_is_detected() {
        let bytes = [0x82, 0x7E, 0x00, 0x05];
        let HeaderDecode::Complete(h, n) = FrameHeader::decode(&bytes).unwrap() else {
            panic!("incomplete");
        };
        assert_eq!(h.payload_len, 5);
        assert!(!h.has_minimal_length(n));
    }

    #[test]
    fn opcodes_round_trip() {
        for bits in 0..16u8 {
            assert_eq!(OpCode::from_u8(bits).as_u8(), bits);
        }
        assert!(OpCode::Ping.is_control());
        assert!(OpCode::Reserved(0xB).is_control());
        assert!(OpCode::Reserved(0x3).is_data());
    }
}
