//! Micro-benchmarks of permessage-deflate: compressing and inflating
//! messages of JSON-like text (compresses well) and pseudo-random bytes
//! (does not), with the defaults a connection uses (32 KiB window, level 1,
//! context takeover), in the steady state of a long-lived connection.
//!
//! `cargo bench -p ferrows-proto --bench deflate` (`-- --quick` for a
//! short run). Throughput is in bytes of uncompressed payload.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferrows_proto::deflate::{Compressor, Decompressor};

/// Messages per iteration: a connection's stream, each message different.
const MESSAGES: usize = 32;

/// `MESSAGES` JSON-like messages of about `size` bytes each.
fn json_messages(size: usize) -> Vec<Vec<u8>> {
    let words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf",
    ];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..MESSAGES)
        .map(|m| {
            let mut s = String::with_capacity(size + 128);
            let mut id = m * 1000;
            while s.len() < size {
                let word = words.get((next() % 7) as usize).copied().unwrap_or("x");
                s.push_str(&format!(
                    "{{\"id\":{id},\"user\":\"{word}-{}\",\"score\":0.{:04},\"active\":{},\"tags\":[\"{word}\",\"live\"]}},",
                    next() % 1000,
                    next() % 10_000,
                    next() % 2 == 0
                ));
                id += 1;
            }
            s.truncate(size);
            s.into_bytes()
        })
        .collect()
}

/// `MESSAGES` pseudo-random messages of `size` bytes each.
fn random_messages(size: usize) -> Vec<Vec<u8>> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..MESSAGES)
        .map(|_| {
            (0..size)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24) as u8
                })
                .collect()
        })
        .collect()
}

fn deflate(c: &mut Criterion) {
    let sets = [
        ("json_1KiB", json_messages(1024)),
        ("json_64KiB", json_messages(64 * 1024)),
        ("random_1KiB", random_messages(1024)),
        ("random_64KiB", random_messages(64 * 1024)),
    ];
    for (name, messages) in &sets {
        let total: usize = messages.iter().map(Vec::len).sum();
        let mut g = c.benchmark_group(format!("deflate_{name}"));
        g.throughput(Throughput::Bytes(total as u64));

        let mut compressor = Compressor::new(15, 1, false);
        let mut out = BytesMut::with_capacity(total * 2);
        g.bench_function("compress", |b| {
            b.iter(|| {
                let mut produced = 0;
                for m in messages {
                    out.clear();
                    compressor.compress(black_box(m), &mut out);
                    produced += out.len();
                }
                black_box(produced)
            })
        });

        // One stream of the messages compressed in order. Replaying it into
        // a long-lived decompressor is valid: its back-references never
        // reach before its own start.
        let mut fresh = Compressor::new(15, 1, false);
        let compressed: Vec<Vec<u8>> = messages
            .iter()
            .map(|m| {
                let mut o = BytesMut::new();
                fresh.compress(m, &mut o);
                o.to_vec()
            })
            .collect();
        let ratio = compressed.iter().map(Vec::len).sum::<usize>() as f64 / total as f64;
        println!(
            "deflate_{name}: compressed to {:.1} % of the input",
            ratio * 100.0
        );
        let mut decompressor = Decompressor::new(15, false);
        let mut inflated = BytesMut::with_capacity(128 * 1024);
        g.bench_function("inflate", |b| {
            b.iter(|| {
                let mut produced = 0;
                for m in &compressed {
                    inflated.clear();
                    if decompressor
                        .decompress(black_box(m), true, &mut inflated, 1 << 20)
                        .is_ok()
                    {
                        produced += inflated.len();
                    }
                }
                black_box(produced)
            })
        });
        g.finish();
    }
}

/// The group lives in a private module: the macro's function is `pub` and
/// undocumented.
mod group {
    use super::*;
    criterion_group!(benches, deflate);
}
criterion_main!(group::benches);
