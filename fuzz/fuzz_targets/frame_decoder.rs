//! Arbitrary bytes into a server-role and a client-role `Decoder`.
//!
//! Input: a configuration byte, a chunking byte, then the data.
//!
//! - config bit 0: permessage-deflate negotiated;
//!   bit 1: fragment mode;
//!   bit 2: the inflater resets after every message (no context takeover);
//!   bits 3-4: one of four small limit sets;
//!   bit 5: structured mode (below);
//!   bits 6-7: the negotiated window bits (8, 10, 12 or 15).
//! - chunking: 0 feeds the bytes one at a time; otherwise pieces of 1 to
//!   that many bytes, from a fixed pseudo-random sequence.
//! - data: in raw mode, the wire bytes as they are. In structured mode, a
//!   list of frames `[b0, n, payload...]` that the target encodes properly
//!   for each role (masked towards the server): `b0` is the first header
//!   byte (FIN, RSV1-3, opcode) except that RSV2 means "deflate this payload
//!   with a real compressor" (RSV2 itself is then cleared); `n` < 240 is the
//!   payload length, else `(n - 239) * 256`; payload bytes missing at the
//!   end of the input are zeros. Random bytes rarely make a valid masked,
//!   fragmented, compressed sequence; this mode reaches the decoder's deeper
//!   states at once.
//!
//! Invariants, for both roles:
//! - no panic, no endless loop (every item consumes bytes);
//! - every error maps to close code 1002, 1007 or 1009;
//! - text messages (and the text assembled from fragments) are valid UTF-8;
//! - no message exceeds `max_message_size`, no control payload 125 bytes;
//!   close frames carry only codes valid on the wire;
//! - fragments are numbered consistently (offsets, first/fin);
//! - the whole input in one buffer and the same input in pieces give the
//!   same items and the same error (incremental decoding changes nothing
//!   but timing).
#![no_main]

use bytes::BytesMut;
use ferrows_proto::deflate::{Compressor, Decompressor};
use ferrows_proto::{
    Decoder, FrameHeader, Incoming, Limits, OpCode, ProtocolError, Role, encode_raw_frame,
};
use libfuzzer_sys::fuzz_target;

const LIMITS: [(usize, usize, usize); 4] = [
    // (max_message_size, max_frame_size, max_fragments)
    (4096, 1024, 8),
    (64, 64, 3),
    (256, 4096, 2),
    (1 << 16, 1 << 16, 64),
];

#[derive(Clone, Copy)]
struct Config {
    deflate: bool,
    fragment_mode: bool,
    no_context_takeover: bool,
    structured: bool,
    window_bits: u8,
    limits: Limits,
}

impl Config {
    fn new(byte: u8) -> Config {
        let (msg, frame, frags) = LIMITS
            .get(usize::from((byte >> 3) & 3))
            .copied()
            .unwrap_or(LIMITS[0]);
        Config {
            deflate: byte & 1 != 0,
            fragment_mode: byte & 2 != 0,
            no_context_takeover: byte & 4 != 0,
            structured: byte & 0x20 != 0,
            window_bits: [8, 10, 12, 15][usize::from(byte >> 6)],
            limits: Limits::default()
                .max_message_size(msg)
                .max_frame_size(frame)
                .max_fragments(frags),
        }
    }

    fn decoder(&self, role: Role) -> Decoder {
        let inflater = self
            .deflate
            .then(|| Decompressor::new(self.window_bits, self.no_context_takeover));
        let mut d = Decoder::new(role, self.limits, inflater);
        d.set_fragment_mode(self.fragment_mode);
        d
    }
}

/// Structured mode: the frames described by `data`, encoded for `receiver`.
fn frames(config: &Config, receiver: Role, mut data: &[u8]) -> Vec<u8> {
    let mut compressor = Compressor::new(config.window_bits, 1, config.no_context_takeover);
    let mut wire = Vec::new();
    let mut compressed = BytesMut::new();
    while let [b0, n, rest @ ..] = data {
        let len = match *n {
            n @ 0..240 => usize::from(n),
            n => usize::from(n - 239) * 256,
        };
        let take = len.min(rest.len());
        let mut payload = rest[..take].to_vec();
        payload.resize(len, 0);
        data = &rest[take..];
        let fin = b0 & 0x80 != 0;
        let header = FrameHeader {
            fin,
            rsv1: b0 & 0x40 != 0,
            rsv2: false,
            rsv3: b0 & 0x10 != 0,
            opcode: OpCode::from_u8(*b0),
            mask: (receiver == Role::Server).then_some([0x37, 0xfa, 0x21, 0x3d]),
            payload_len: 0,
        };
        if b0 & 0x20 != 0 {
            compressed.clear();
            compressor.compress_fragment(&payload, fin, &mut compressed);
            payload = compressed.to_vec();
        }
        encode_raw_frame(header, &payload, &mut wire);
    }
    wire
}

/// Everything a run produced.
#[derive(Debug, PartialEq)]
struct Run {
    items: Vec<Incoming>,
    error: Option<ProtocolError>,
    mid_message: bool,
    closed: bool,
}

/// Feeds `data` in pieces whose sizes come from `sizes`, draining the decoder
/// after each piece.
fn run(mut decoder: Decoder, data: &[u8], mut sizes: impl FnMut() -> usize) -> Run {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = sizes().clamp(1, rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        buf.extend_from_slice(piece);
        // Each item consumes a 2-byte header at least, and one call more
        // reports `Ok(None)`; more calls than that means a loop.
        let mut drained = false;
        for _ in 0..buf.len() / 2 + 2 {
            match decoder.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => {
                    drained = true;
                    break;
                }
                Err(e) => {
                    // The decoder's state after an error is unspecified (it
                    // must not be used again): not compared.
                    return Run {
                        items,
                        error: Some(e),
                        mid_message: false,
                        closed: false,
                    };
                }
            }
        }
        assert!(drained, "decoder keeps returning items without input");
    }
    Run {
        items,
        error: None,
        mid_message: decoder.is_mid_message(),
        closed: decoder.is_closed(),
    }
}

/// A message being delivered in fragment mode.
struct Fragmented {
    opcode: OpCode,
    /// The text so far (text messages only).
    text: Vec<u8>,
    /// The offset the next fragment must have.
    offset: u64,
    /// Fragments seen.
    frames: usize,
}

/// Checks the invariants of one run's output.
fn check(run: &Run, limits: &Limits) {
    let max = limits.max_message_size;
    // The message being delivered in fragment mode.
    let mut fragmented: Option<Fragmented> = None;
    for item in &run.items {
        match item {
            Incoming::Text(t) => {
                assert!(std::str::from_utf8(t.as_bytes()).is_ok(), "invalid text");
                assert!(t.len() <= max, "text of {} > {max}", t.len());
            }
            Incoming::Binary(b) => assert!(b.len() <= max, "binary of {} > {max}", b.len()),
            Incoming::Ping(p) | Incoming::Pong(p) => assert!(p.len() <= 125),
            Incoming::Close(Some(frame)) => {
                assert!(frame.code.is_valid_on_wire(), "close code {}", frame.code);
                assert!(std::str::from_utf8(frame.reason_bytes()).is_ok());
                assert!(frame.encoded_len() <= 125);
            }
            Incoming::Close(None) => {}
            Incoming::Fragment(f) => {
                assert!(matches!(f.opcode, OpCode::Text | OpCode::Binary));
                let msg = fragmented.get_or_insert_with(|| Fragmented {
                    opcode: f.opcode,
                    text: Vec::new(),
                    offset: 0,
                    frames: 0,
                });
                assert_eq!(f.first, msg.frames == 0, "wrong `first` flag");
                assert_eq!(msg.opcode, f.opcode, "opcode changed inside a message");
                assert_eq!(
                    f.message_offset, msg.offset,
                    "fragment offsets not contiguous"
                );
                msg.frames += 1;
                msg.offset += f.data.len() as u64;
                assert!(msg.offset <= max as u64, "fragmented message over {max}");
                if f.opcode == OpCode::Text {
                    msg.text.extend_from_slice(&f.data);
                    // The text so far is a prefix of valid UTF-8.
                    if let Err(e) = std::str::from_utf8(&msg.text) {
                        assert!(e.error_len().is_none(), "invalid text fragment");
                    }
                }
                if f.fin {
                    if f.opcode == OpCode::Text {
                        assert!(std::str::from_utf8(&msg.text).is_ok(), "invalid text");
                    }
                    fragmented = None;
                }
            }
        }
    }
    if let Some(e) = &run.error {
        let code = e.close_code().0;
        assert!(matches!(code, 1002 | 1007 | 1009), "{e:?} -> {code}");
        assert!(e.close_reason().len() <= 123);
        // Display must not panic either.
        assert!(!e.to_string().is_empty());
    }
}

/// A fixed pseudo-random sequence of piece sizes in `1..=max`.
fn sizes(max: u8) -> impl FnMut() -> usize {
    let mut state: u32 = 0x9E37_79B9 ^ u32::from(max);
    move || {
        if max == 0 {
            return 1;
        }
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        1 + (state % u32::from(max)) as usize
    }
}

fuzz_target!(|input: &[u8]| {
    let [config, chunking, data @ ..] = input else {
        return;
    };
    let config = Config::new(*config);
    for role in [Role::Server, Role::Client] {
        let structured;
        let data = if config.structured {
            structured = frames(&config, role, data);
            &structured[..]
        } else {
            data
        };
        let whole = run(config.decoder(role), data, || usize::MAX);
        check(&whole, &config.limits);
        let pieces = run(config.decoder(role), data, sizes(*chunking));
        check(&pieces, &config.limits);
        assert_eq!(whole, pieces, "whole and piecewise decoding differ");
    }
});
