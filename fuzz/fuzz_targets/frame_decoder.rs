//! Arbitrary bytes into a server-role and a client-role `Decoder`.
//!
//! Input: a configuration byte, a chunking byte, then the wire bytes.
//!
//! - config bit 0: permessage-deflate negotiated;
//!   bit 1: fragment mode;
//!   bit 2: the inflater resets after every message (no context takeover);
//!   bits 3-4: one of four small limit sets;
//!   bits 5-7: the negotiated window bits (8 + value).
//! - chunking: 0 feeds the bytes one at a time; otherwise pieces of 1 to
//!   that many bytes, from a fixed pseudo-random sequence.
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
use ferrows_proto::deflate::Decompressor;
use ferrows_proto::{Decoder, Incoming, Limits, OpCode, ProtocolError, Role};
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
            window_bits: 8 + (byte >> 5),
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
        let whole = run(config.decoder(role), data, || usize::MAX);
        check(&whole, &config.limits);
        let pieces = run(config.decoder(role), data, sizes(*chunking));
        check(&pieces, &config.limits);
        assert_eq!(whole, pieces, "whole and piecewise decoding differ");
    }
});
