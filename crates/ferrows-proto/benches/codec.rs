//! Micro-benchmarks of the framing hot path: frame header decode and
//! encode, masking (against a plain copy of the same buffer, the ceiling),
//! UTF-8 validation, and the server decoding a read buffer full of small
//! masked frames.
//!
//! `cargo bench -p ferrows-proto --bench codec` (add `-- --quick` for a
//! short run). Throughput is printed per benchmark; compare `apply_mask`
//! with `copy_from_slice` in the `mask_1MiB` group.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ferrows_proto::frame::{FrameHeader, HeaderDecode, MAX_HEADER_LEN};
use ferrows_proto::mask::apply_mask;
use ferrows_proto::utf8::{Utf8Validator, validate};
use ferrows_proto::{Decoder, Encoder, Incoming, Limits, OpCode, Role, WriteQueue};

const MIB: usize = 1 << 20;

fn headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_header");
    let cases: [(&str, FrameHeader); 3] = [
        ("small_unmasked", FrameHeader::new(OpCode::Text, 16)),
        (
            "small_masked",
            FrameHeader {
                mask: Some([1, 2, 3, 4]),
                ..FrameHeader::new(OpCode::Binary, 100)
            },
        ),
        (
            "64bit_masked",
            FrameHeader {
                mask: Some([1, 2, 3, 4]),
                ..FrameHeader::new(OpCode::Binary, 1 << 20)
            },
        ),
    ];
    for (name, header) in cases {
        let mut wire = [0u8; MAX_HEADER_LEN];
        let n = header.encode(&mut wire);
        let encoded = wire.get(..n).unwrap_or_default().to_vec();
        g.bench_function(format!("decode_{name}"), |b| {
            b.iter(|| match FrameHeader::decode(black_box(&encoded)) {
                Ok(HeaderDecode::Complete(h, len)) => black_box((h.payload_len, len)),
                _ => (0, 0),
            })
        });
        g.bench_function(format!("encode_{name}"), |b| {
            let mut out = [0u8; MAX_HEADER_LEN];
            b.iter(|| black_box(black_box(&header).encode(&mut out)))
        });
    }
    g.finish();
}

fn masking(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask_1MiB");
    g.throughput(Throughput::Bytes(MIB as u64));
    let src: Vec<u8> = (0..MIB).map(|i| (i * 31 % 251) as u8).collect();
    let mut buf = src.clone();
    g.bench_function("apply_mask", |b| {
        b.iter(|| apply_mask(black_box(&mut buf), black_box([0x37, 0xfa, 0x21, 0x3d]), 0))
    });
    // The ceiling: the same bytes moved without any work on them.
    let mut dst = vec![0u8; MIB];
    g.bench_function("copy_from_slice", |b| {
        b.iter(|| black_box(&mut dst).copy_from_slice(black_box(&src)))
    });
    // Unaligned start and odd key phase, as when a frame starts mid-buffer.
    g.throughput(Throughput::Bytes(MIB as u64 - 3));
    g.bench_function("apply_mask_unaligned", |b| {
        let tail = buf.get_mut(3..).unwrap_or_default();
        b.iter(|| {
            apply_mask(
                black_box(&mut *tail),
                black_box([0x37, 0xfa, 0x21, 0x3d]),
                1,
            )
        })
    });
    g.finish();
}

/// About `len` bytes of JSON-like ASCII text.
fn ascii_text(len: usize) -> Vec<u8> {
    let mut s = String::with_capacity(len + 100);
    let mut i = 0u64;
    while s.len() < len {
        s.push_str(&format!(
            "{{\"id\":{i},\"user\":\"user-{}\",\"score\":0.{:04},\"tags\":[\"a\",\"b\"]}},",
            i % 97,
            i * 7919 % 10_000
        ));
        i += 1;
    }
    s.truncate(len);
    s.into_bytes()
}

/// About `len` bytes of text mixing 1- to 4-byte characters, cut at a
/// character boundary.
fn mixed_text(len: usize) -> Vec<u8> {
    let unit = "Grüße, Jürgen — 日本語のテキスト, ελληνικά, emoji 🦀🚀; plain ASCII words too. ";
    let mut s = String::with_capacity(len + unit.len());
    while s.len() < len {
        s.push_str(unit);
    }
    let mut end = len.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.into_bytes()
}

fn utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8_1MiB");
    for (name, text) in [("ascii", ascii_text(MIB)), ("mixed", mixed_text(MIB))] {
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(format!("whole_{name}"), |b| {
            b.iter(|| validate(black_box(&text)).is_ok())
        });
        // In pieces the size of a TCP segment, cutting characters apart.
        g.bench_function(format!("incremental_1460_{name}"), |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                for piece in black_box(&text).chunks(1460) {
                    if v.feed(piece).is_err() {
                        return false;
                    }
                }
                v.finish().is_ok()
            })
        });
    }
    g.finish();
}

/// `count` client (masked) frames of `size`-byte messages, back to back.
fn masked_frames(count: usize, size: usize, text: bool) -> Vec<u8> {
    let mut enc = Encoder::new(Role::Client, None);
    let mut wire = WriteQueue::new();
    let body = ascii_text(size);
    let body_str = String::from_utf8(body.clone()).unwrap_or_default();
    for _ in 0..count {
        let sent = if text {
            enc.text(&body_str, &mut wire)
        } else {
            enc.binary(&body, &mut wire)
        };
        if sent.is_err() {
            break;
        }
    }
    wire.to_vec()
}

fn decode_hot_path(c: &mut Criterion) {
    const FRAMES: usize = 1000;
    let mut g = c.benchmark_group("server_decode_1000_masked_frames");
    g.throughput(Throughput::Elements(FRAMES as u64));
    for (name, size, text) in [("16B_text", 16, true), ("1KiB_binary", 1024, false)] {
        let wire = masked_frames(FRAMES, size, text);
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || {
                    (
                        Decoder::new(Role::Server, Limits::default(), None),
                        BytesMut::from(&wire[..]),
                    )
                },
                |(decoder, buf)| {
                    let mut n = 0usize;
                    while let Ok(Some(item)) = decoder.decode(buf) {
                        if matches!(item, Incoming::Text(_) | Incoming::Binary(_)) {
                            n += 1;
                        }
                    }
                    black_box(n)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// The group lives in a private module: the macro's function is `pub` and
/// undocumented.
mod group {
    use super::*;
    criterion_group!(benches, headers, masking, utf8, decode_hot_path);
}
criterion_main!(group::benches);
