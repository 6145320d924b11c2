//! Bounded TCP reassembly: segments in, each direction's byte stream out,
//! in pieces separated by the gaps the capture missed.
//!
//! Everything is bounded: the number of connections, the bytes kept per
//! direction, how far ahead of the expected sequence number a segment may
//! be parked (the reorder window) and how many bytes may be parked. A
//! segment past those bounds is not an error: the missing range becomes a
//! gap and the stream goes on from there. Retransmitted bytes are counted
//! and dropped (the first copy wins).
//!
//! This file uses only std and `read.rs`, so that the fuzz target can
//! include it as it is.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use super::read::Segment;

/// The bounds of the reassembly.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections followed; later ones are counted and ignored.
    pub(crate) max_connections: usize,
    /// Bytes kept per direction; the rest are counted, not kept.
    pub(crate) max_bytes_per_direction: u64,
    /// How far (bytes) ahead of the next expected byte a segment may start
    /// and still be parked for reordering.
    pub(crate) reorder_window: u64,
    /// Bytes parked out of order per direction.
    pub(crate) max_parked_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_bytes_per_direction: 64 << 20,
            reorder_window: 1 << 20,
            max_parked_bytes: 4 << 20,
        }
    }
}

/// A contiguous piece of a direction's byte stream.
#[derive(Debug, Clone, Default)]
pub(crate) struct Chunk {
    /// Where the piece starts in the direction's stream (0 = the first
    /// byte after the SYN, or the first byte seen).
    pub(crate) offset: u64,
    pub(crate) data: Vec<u8>,
    /// When each delivered segment's first byte was captured: (stream
    /// offset, time), ascending.
    pub(crate) times: Vec<(u64, Duration)>,
}

/// Bytes the capture did not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gap {
    /// Stream offset of the first missing byte.
    pub(crate) offset: u64,
    /// How many bytes are missing.
    pub(crate) len: u64,
}

/// One direction of a connection.
#[derive(Debug, Default)]
pub(crate) struct Direction {
    pub(crate) chunks: Vec<Chunk>,
    pub(crate) gaps: Vec<Gap>,
    /// Segments seen (with or without payload).
    pub(crate) segments: u64,
    /// Payload bytes delivered in order (kept or not).
    pub(crate) bytes: u64,
    /// Bytes delivered but not kept (past `max_bytes_per_direction`).
    pub(crate) bytes_not_kept: u64,
    /// Segments that carried only bytes already delivered.
    pub(crate) retransmissions: u64,
    /// Bytes seen again (whole or partial retransmissions).
    pub(crate) retransmitted_bytes: u64,
    pub(crate) syn: bool,
    pub(crate) fin: bool,
    pub(crate) rst: bool,
    /// The first segment of this direction came without a SYN: the capture
    /// started after the connection was opened.
    pub(crate) started_mid_stream: bool,
    /// The sequence number of stream offset 0.
    base: Option<u32>,
    /// The next stream offset expected.
    next: u64,
    parked: BTreeMap<u64, (Vec<u8>, Duration)>,
    parked_bytes: usize,
    kept: u64,
    /// A gap was declared since the last chunk was started.
    after_gap: bool,
}

impl Direction {
    /// Stream offset of `seq`, relative to the next expected byte (so that
    /// the 32-bit sequence space may wrap).
    fn offset_of(&self, seq: u32, base: u32) -> i128 {
        let next_seq = base.wrapping_add(self.next as u32);
        let delta = i128::from(seq.wrapping_sub(next_seq) as i32);
        i128::from(self.next) + delta
    }

    fn segment(&mut self, seg: &Segment, limits: &Limits) {
        self.segments += 1;
        if seg.rst {
            self.rst = true;
        }
        if seg.syn {
            self.syn = true;
            if self.base.is_none() {
                self.base = Some(seg.seq.wrapping_add(1));
            }
        }
        let base = match self.base {
            Some(b) => b,
            None => {
                // No SYN seen: the first byte seen is offset 0.
                self.started_mid_stream = true;
                self.base = Some(seg.seq);
                seg.seq
            }
        };
        let data_seq = if seg.syn {
            seg.seq.wrapping_add(1)
        } else {
            seg.seq
        };
        if seg.fin {
            self.fin = true;
        }
        if seg.payload.is_empty() {
            return;
        }
        let start = self.offset_of(data_seq, base);
        let len = seg.payload.len() as i128;
        let next = i128::from(self.next);
        if start + len <= next {
            self.retransmissions += 1;
            self.retransmitted_bytes += seg.payload.len() as u64;
            return;
        }
        let (start, data) = if start < next {
            let skip = usize::try_from(next - start).unwrap_or(0);
            self.retransmitted_bytes += skip as u64;
            (self.next, seg.payload.get(skip..).unwrap_or_default())
        } else {
            (u64::try_from(start).unwrap_or(0), &seg.payload[..])
        };
        if start == self.next {
            self.deliver(start, data, seg.time, limits);
            self.drain(limits);
            return;
        }
        // Ahead of the next expected byte: park it if the bounds allow.
        let ahead = start - self.next;
        if ahead <= limits.reorder_window
            && self.parked_bytes + data.len() <= limits.max_parked_bytes
        {
            if !self.parked.contains_key(&start) {
                self.parked_bytes += data.len();
                self.parked.insert(start, (data.to_vec(), seg.time));
            } else {
                self.retransmissions += 1;
                self.retransmitted_bytes += data.len() as u64;
            }
            return;
        }
        // Past the bounds: what was missed is a gap; go on from the parked
        // data (or this segment) onwards.
        self.parked_bytes += data.len();
        self.parked.insert(start, (data.to_vec(), seg.time));
        self.skip_to_parked(limits);
    }

    /// Delivers parked segments that are now in order.
    fn drain(&mut self, limits: &Limits) {
        while let Some(entry) = self.parked.first_entry() {
            let start = *entry.key();
            if start > self.next {
                break;
            }
            let (data, time) = entry.remove();
            self.parked_bytes = self.parked_bytes.saturating_sub(data.len());
            let skip = usize::try_from(self.next - start).unwrap_or(usize::MAX);
            match data.get(skip..) {
                Some(rest) if !rest.is_empty() => {
                    self.retransmitted_bytes += skip as u64;
                    self.deliver(self.next, rest, time, limits);
                }
                _ => {
                    self.retransmissions += 1;
                    self.retransmitted_bytes += data.len() as u64;
                }
            }
        }
    }

    /// Declares the bytes before the first parked segment missing.
    fn skip_to_parked(&mut self, limits: &Limits) {
        if let Some((&start, _)) = self.parked.first_key_value() {
            if start > self.next {
                self.gaps.push(Gap {
                    offset: self.next,
                    len: start - self.next,
                });
                self.next = start;
                self.after_gap = true;
            }
            self.drain(limits);
        }
    }

    fn deliver(&mut self, start: u64, data: &[u8], time: Duration, limits: &Limits) {
        self.next = start + data.len() as u64;
        self.bytes += data.len() as u64;
        let room = limits.max_bytes_per_direction.saturating_sub(self.kept);
        let keep = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
        self.bytes_not_kept += (data.len() - keep) as u64;
        if keep == 0 {
            return;
        }
        self.kept += keep as u64;
        let contiguous = !self.after_gap
            && self
                .chunks
                .last()
                .is_some_and(|c| c.offset + c.data.len() as u64 == start);
        if !contiguous {
            self.chunks.push(Chunk {
                offset: start,
                ..Chunk::default()
            });
            self.after_gap = false;
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.times.push((start, time));
            chunk
                .data
                .extend_from_slice(data.get(..keep).unwrap_or_default());
        }
    }

    /// At the end of the capture: parked data after a hole is delivered
    /// after a gap.
    fn finish(&mut self, limits: &Limits) {
        while !self.parked.is_empty() {
            self.skip_to_parked(limits);
        }
    }
}

/// One TCP connection: `dirs[0]` carries what `a` sent to `b`.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) a: SocketAddr,
    pub(crate) b: SocketAddr,
    pub(crate) dirs: [Direction; 2],
    /// Which side sent the first SYN without ACK (the client), if seen.
    pub(crate) opener: Option<usize>,
    pub(crate) first_packet: u64,
    pub(crate) first_time: Duration,
    pub(crate) last_time: Duration,
}

impl Connection {
    fn closed(&self) -> bool {
        self.dirs.iter().any(|d| d.rst) || self.dirs.iter().all(|d| d.fin)
    }
}

/// Reassembles the TCP connections of a capture.
#[derive(Debug, Default)]
pub(crate) struct Reassembler {
    limits: Limits,
    /// The open connection of each address pair (sorted).
    open: HashMap<(SocketAddr, SocketAddr), usize>,
    pub(crate) connections: Vec<Connection>,
    /// Segments of connections past `max_connections`.
    pub(crate) ignored_segments: u64,
}

impl Reassembler {
    pub(crate) fn new(limits: Limits) -> Reassembler {
        Reassembler {
            limits,
            ..Reassembler::default()
        }
    }

    pub(crate) fn segment(&mut self, seg: &Segment) {
        let key = if seg.src <= seg.dst {
            (seg.src, seg.dst)
        } else {
            (seg.dst, seg.src)
        };
        let opening = seg.syn && seg.ack.is_none();
        let existing = self.open.get(&key).copied();
        // A new SYN on a pair whose connection is over: port reuse.
        let reuse = existing.is_some_and(|i| {
            opening
                && self
                    .connections
                    .get(i)
                    .is_some_and(|c| c.closed() || c.dirs.iter().any(|d| d.bytes > 0))
        });
        let index = match existing {
            Some(i) if !reuse => i,
            _ => {
                if self.connections.len() >= self.limits.max_connections {
                    self.ignored_segments += 1;
                    return;
                }
                self.connections.push(Connection {
                    a: seg.src,
                    b: seg.dst,
                    dirs: [Direction::default(), Direction::default()],
                    opener: None,
                    first_packet: seg.packet,
                    first_time: seg.time,
                    last_time: seg.time,
                });
                let i = self.connections.len() - 1;
                self.open.insert(key, i);
                i
            }
        };
        let limits = self.limits;
        let Some(conn) = self.connections.get_mut(index) else {
            return;
        };
        let side = usize::from(seg.src != conn.a);
        if opening && conn.opener.is_none() {
            conn.opener = Some(side);
        }
        conn.last_time = conn.last_time.max(seg.time);
        if let Some(dir) = conn.dirs.get_mut(side) {
            dir.segment(seg, &limits);
        }
    }

    /// Ends the capture: parked segments are delivered after their gaps.
    pub(crate) fn finish(mut self) -> (Vec<Connection>, u64) {
        let limits = self.limits;
        for conn in &mut self.connections {
            for dir in &mut conn.dirs {
                dir.finish(&limits);
            }
        }
        (self.connections, self.ignored_segments)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn seg(seq: u32, payload: &[u8], syn: bool) -> Segment {
        Segment {
            packet: 1,
            time: Duration::ZERO,
            src: "10.0.0.1:5000".parse().unwrap(),
            dst: "10.0.0.2:80".parse().unwrap(),
            seq,
            ack: None,
            syn,
            fin: false,
            rst: false,
            payload: payload.to_vec(),
        }
    }

    fn stream(segs: &[Segment], limits: Limits) -> Direction {
        let mut r = Reassembler::new(limits);
        for s in segs {
            r.segment(s);
        }
        let (mut conns, _) = r.finish();
        let c = conns.remove(0);
        let [d, _] = c.dirs;
        d
    }

    #[test]
    fn reorders_and_drops_retransmissions_across_the_wrap() {
        let isn = u32::MAX - 2;
        let d = stream(
            &[
                seg(isn, b"", true),
                seg(isn.wrapping_add(4), b"def", false),
                seg(isn.wrapping_add(1), b"abc", false),
                seg(isn.wrapping_add(1), b"abc", false),
                seg(isn.wrapping_add(3), b"cdefg", false),
            ],
            Limits::default(),
        );
        assert_eq!(d.chunks.len(), 1);
        assert_eq!(d.chunks[0].data, b"abcdefg");
        assert!(d.gaps.is_empty());
        assert_eq!(d.retransmissions, 1);
        // "abc" again, then "cdef" of "cdefg".
        assert_eq!(d.retransmitted_bytes, 3 + 4);
    }

    #[test]
    fn a_hole_becomes_a_gap() {
        let limits = Limits {
            reorder_window: 10,
            ..Limits::default()
        };
        let d = stream(
            &[
                seg(100, b"", true),
                seg(101, b"ab", false),
                // 2 bytes missing, then far ahead: a gap.
                seg(105, b"ef", false),
                seg(200, b"zz", false),
            ],
            limits,
        );
        assert_eq!(
            d.gaps,
            vec![Gap { offset: 2, len: 2 }, Gap { offset: 6, len: 93 }]
        );
        let datas: Vec<&[u8]> = d.chunks.iter().map(|c| &c.data[..]).collect();
        assert_eq!(datas, vec![&b"ab"[..], b"ef", b"zz"]);
        assert_eq!(d.chunks[2].offset, 99);
    }

    #[test]
    fn bytes_past_the_cap_are_counted_not_kept() {
        let limits = Limits {
            max_bytes_per_direction: 3,
            ..Limits::default()
        };
        let d = stream(&[seg(0, b"", true), seg(1, b"abcde", false)], limits);
        assert_eq!(d.chunks[0].data, b"abc");
        assert_eq!(d.bytes, 5);
        assert_eq!(d.bytes_not_kept, 2);
    }

    #[test]
    fn parked_bytes_are_bounded() {
        let limits = Limits {
            max_parked_bytes: 4,
            ..Limits::default()
        };
        let d = stream(
            &[
                seg(0, b"", true),
                seg(11, b"kl", false),
                seg(13, b"mn", false),
                // Would exceed the parked budget: the hole becomes a gap.
                seg(15, b"op", false),
            ],
            limits,
        );
        assert_eq!(d.gaps, vec![Gap { offset: 0, len: 10 }]);
        assert_eq!(d.chunks[0].data, b"klmnop");
    }
}
