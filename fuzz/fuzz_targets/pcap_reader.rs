//! The capture reader of `ferrows decode --pcap` (pcap/pcapng, link
//! layers, IP and TCP headers) and the bounded TCP reassembly, on
//! arbitrary files. The two modules are compiled from the CLI's sources as
//! they are (they depend only on std, `pcap-file` and `etherparse`).
//!
//! Invariants:
//! - no panic, whatever the bytes: a bad file is an error, a bad packet is
//!   skipped;
//! - the reader stops after its first error;
//! - every direction keeps at most `max_bytes_per_direction` bytes, and
//!   the delivered, kept and dropped byte counts agree;
//! - chunks are in stream order and do not overlap;
//! - no more connections than `max_connections`.
#![no_main]
#![allow(dead_code, unreachable_pub)]

use libfuzzer_sys::fuzz_target;

// At the crate root, so that tcp.rs finds `super::read`.
#[path = "../../crates/ferrows-cli/src/pcap/read.rs"]
mod read;
#[path = "../../crates/ferrows-cli/src/pcap/tcp.rs"]
mod tcp;

use read::{CaptureReader, Item};
use tcp::{Limits, Reassembler};

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = CaptureReader::open(data) else {
        return;
    };
    let limits = Limits {
        max_connections: 8,
        max_bytes_per_direction: 4096,
        reorder_window: 2048,
        max_parked_bytes: 1024,
    };
    let mut r = Reassembler::new(limits);
    let mut errors = 0;
    let mut items = 0;
    while let Some(item) = reader.next_item() {
        items += 1;
        assert!(items < 1_000_000);
        match item {
            Ok(Item::Segment(seg)) => r.segment(&seg),
            Ok(Item::Skipped { .. }) => {}
            Err(_) => errors += 1,
        }
    }
    assert!(errors <= 1, "the reader goes on after an error");
    assert!(reader.next_item().is_none());
    let (connections, _) = r.finish();
    assert!(connections.len() <= limits.max_connections);
    for conn in &connections {
        for dir in &conn.dirs {
            let kept: u64 = dir.chunks.iter().map(|c| c.data.len() as u64).sum();
            assert!(kept <= limits.max_bytes_per_direction);
            assert_eq!(kept + dir.bytes_not_kept, dir.bytes);
            let mut end = 0;
            for c in &dir.chunks {
                assert!(c.offset >= end, "chunks overlap or go back");
                end = c.offset + c.data.len() as u64;
            }
        }
    }
});
