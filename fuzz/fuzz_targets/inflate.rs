//! The permessage-deflate `Decompressor` on arbitrary input, and the
//! `Compressor` → `Decompressor` round trip.
//!
//! Input: a configuration byte, then frames, each a length byte (low 7 bits:
//! payload length; high bit: FIN) followed by that many payload bytes.
//!
//! - config bits 0-2: window bits (8 + value); bit 3: no context takeover;
//!   bits 4-6: the output limit (0, 1, 100, 1024, 4096, 65536, ...).
//!
//! Invariants:
//! - no panic;
//! - the output of a message never exceeds the limit, and its buffer's
//!   capacity stays within about twice the limit (a "decompression bomb"
//!   cannot allocate more);
//! - after an error the output is cut back to where the call started;
//! - the raw input compressed (whole, and in fragments) by a `Compressor`
//!   inflates back to itself, also when the limit is exactly its size.
#![no_main]

use bytes::BytesMut;
use ferrows_proto::deflate::{Compressor, Decompressor, InflateError};
use libfuzzer_sys::fuzz_target;

const LIMITS: [usize; 8] = [0, 1, 100, 1024, 4096, 65536, 300, 16];

/// The largest capacity the output buffer may reach for `limit`: the
/// decompressor never asks for more than `limit + 1` bytes, and a growing
/// buffer at most doubles (with the allocator's minimum for tiny sizes).
fn max_capacity(limit: usize) -> usize {
    (2 * (limit + 1)).max(64)
}

fn arbitrary_streams(config: u8, mut input: &[u8]) {
    let window_bits = 8 + (config & 7);
    let no_context_takeover = config & 8 != 0;
    let limit = LIMITS[usize::from((config >> 4) & 7)];
    let mut d = Decompressor::new(window_bits, no_context_takeover);
    let mut dst = BytesMut::new();
    while let [len_fin, rest @ ..] = input {
        let len = usize::from(len_fin & 0x7F).min(rest.len());
        let fin = len_fin & 0x80 != 0;
        let (payload, rest) = rest.split_at(len);
        input = rest;
        let before = dst.len();
        match d.decompress(payload, fin, &mut dst, limit) {
            Ok(()) => assert!(dst.len() <= limit, "{} bytes > limit {limit}", dst.len()),
            Err(e) => {
                assert_eq!(dst.len(), before, "output not cut back after {e}");
                if let InflateError::TooBig { limit: reported } = e {
                    assert_eq!(reported, limit);
                }
                assert!(!e.to_string().is_empty());
                // The message is lost; the next one starts afresh.
                dst.clear();
            }
        }
        assert!(
            dst.capacity() <= max_capacity(limit),
            "capacity {} for limit {limit}",
            dst.capacity()
        );
        if fin {
            dst.clear();
        }
    }
}

fn round_trip(config: u8, data: &[u8]) {
    let window_bits = 8 + (config & 7);
    let no_context_takeover = config & 8 != 0;
    let level = u32::from(config >> 4) % 10;
    let mut c = Compressor::new(window_bits, level, no_context_takeover);
    let mut d = Decompressor::new(window_bits, no_context_takeover);

    // Twice, so that the second message may refer back into the first.
    for _ in 0..2 {
        let mut wire = BytesMut::new();
        c.compress(data, &mut wire);
        let mut out = BytesMut::new();
        d.decompress(&wire, true, &mut out, data.len())
            .unwrap_or_else(|e| panic!("own output does not inflate: {e}"));
        assert_eq!(&out[..], data, "round trip changed the message");
    }

    // In three fragments, each inflated as its frame arrives.
    let (a, rest) = data.split_at(data.len() / 3);
    let (b, rest) = rest.split_at(rest.len() / 2);
    let mut out = BytesMut::new();
    for (piece, fin) in [(a, false), (b, false), (rest, true)] {
        let mut wire = BytesMut::new();
        c.compress_fragment(piece, fin, &mut wire);
        d.decompress(&wire, fin, &mut out, data.len())
            .unwrap_or_else(|e| panic!("own fragment does not inflate: {e}"));
    }
    assert_eq!(&out[..], data, "fragmented round trip changed the message");

    // One byte under the size: must fail with TooBig, not truncate silently.
    if let Some(under) = data.len().checked_sub(1) {
        let mut wire = BytesMut::new();
        c.compress(data, &mut wire);
        let mut out = BytesMut::new();
        assert_eq!(
            d.decompress(&wire, true, &mut out, under),
            Err(InflateError::TooBig { limit: under })
        );
        assert!(out.is_empty());
    }
}

fuzz_target!(|input: &[u8]| {
    let [config, data @ ..] = input else {
        return;
    };
    arbitrary_streams(*config, data);
    round_trip(*config, data);
});
