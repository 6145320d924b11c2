//! The outgoing byte queue: small frames coalesced into one buffer, large
//! payloads queued by reference, all written with one vectored write.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Shared payloads up to this size are copied into the contiguous buffer:
/// a copy of a few hundred bytes is cheaper than one more `iovec` (and keeps
/// the common case a single `write`).
const COPY_THRESHOLD: usize = 1024;

/// An empty queue's first allocation: a batch of small frames fits, so it
/// does not regrow by doubling from a few bytes after every flush.
const FIRST_CHUNK: usize = 4096;

/// Bytes waiting to be written, in order.
///
/// Small writes go to one contiguous buffer; large shared payloads
/// ([`Bytes`]) are queued without copying. [`WriteQueue::chunks_vectored`]
/// hands all of it to one vectored write, and [`WriteQueue::advance`]
/// consumes what was written.
#[derive(Debug, Default)]
pub struct WriteQueue {
    /// Segments that come before `tail`.
    segments: VecDeque<Bytes>,
    /// The contiguous buffer at the end of the queue.
    tail: BytesMut,
    /// Bytes in `segments`.
    segments_len: usize,
}

impl WriteQueue {
    /// An empty queue. Allocates nothing until the first write.
    pub fn new() -> WriteQueue {
        WriteQueue {
            segments: VecDeque::new(),
            tail: BytesMut::new(),
            segments_len: 0,
        }
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.segments_len + self.tail.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a copy of `bytes`.
    #[inline]
    pub fn put_slice(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        self.tail.extend_from_slice(bytes);
    }

    /// Appends `bytes`, by reference if large, else by copy.
    pub fn put_bytes(&mut self, bytes: Bytes) {
        if bytes.len() <= COPY_THRESHOLD {
            self.put_slice(&bytes);
            return;
        }
        if !self.tail.is_empty() {
            let head = self.tail.split().freeze();
            self.segments_len += head.len();
            self.segments.push_back(head);
        }
        self.segments_len += bytes.len();
        self.segments.push_back(bytes);
    }

    /// The contiguous buffer at the end of the queue, for encoders that
    /// write in place (e.g. to mask a payload after copying it).
    pub fn tail_mut(&mut self) -> &mut BytesMut {
        &mut self.tail
    }

    /// Reserves room for at least `additional` more contiguous bytes (at
    /// least 4 KiB when the buffer has none).
    #[inline]
    pub fn reserve(&mut self, additional: usize) {
        if self.tail.capacity() == 0 {
            self.tail.reserve(additional.max(FIRST_CHUNK));
        } else {
            self.tail.reserve(additional);
        }
    }

    /// Fills `dst` with slices of the queued bytes, in order, and returns
    /// how many slices were written.
    pub fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let chunks = self
            .segments
            .iter()
            .map(|b| &b[..])
            .chain(std::iter::once(&self.tail[..]))
            .filter(|c| !c.is_empty());
        for (slot, chunk) in dst.iter_mut().zip(chunks) {
            *slot = IoSlice::new(chunk);
            n += 1;
        }
        n
    }

    /// The first contiguous chunk (for writers without vectored I/O).
    pub fn chunk(&self) -> &[u8] {
        match self.segments.front() {
            Some(seg) => seg,
            None => &self.tail,
        }
    }

    /// Whether more than one chunk is queued (a vectored write helps).
    pub fn is_fragmented(&self) -> bool {
        !self.segments.is_empty()
    }

    /// Drops the first `n` bytes (they were written).
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.segments.front_mut() else {
                let k = n.min(self.tail.len());
                self.tail.advance(k);
                return;
            };
            if n < front.len() {
                front.advance(n);
                self.segments_len -= n;
                return;
            }
            n -= front.len();
            self.segments_len -= front.len();
            self.segments.pop_front();
        }
    }

    /// Releases the buffer's memory if nothing is queued and it holds more
    /// than `keep` bytes of capacity. Returns whether memory was released.
    pub fn shrink_if_empty(&mut self, keep: usize) -> bool {
        if self.is_empty() && self.tail.capacity() > keep {
            self.tail = BytesMut::new();
            self.segments.shrink_to_fit();
            true
        } else {
            false
        }
    }

    /// The allocated capacity of the contiguous buffer.
    pub fn capacity(&self) -> usize {
        self.tail.capacity()
    }

    /// Copies everything queued into one `Vec` (tests and tools).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        for seg in &self.segments {
            out.extend_from_slice(seg);
        }
        out.extend_from_slice(&self.tail);
        out
    }

    /// Empties the queue, returning its bytes as one buffer.
    pub fn take(&mut self) -> Bytes {
        if self.segments.is_empty() {
            return self.tail.split().freeze();
        }
        let mut out = BytesMut::with_capacity(self.len());
        for seg in self.segments.drain(..) {
            out.put(seg);
        }
        out.put(self.tail.split());
        self.segments_len = 0;
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_kept_across_copied_and_shared_chunks() {
        let mut q = WriteQueue::new();
        q.put_slice(b"ab");
        q.put_bytes(Bytes::from(vec![1u8; 2000]));
        q.put_slice(b"cd");
        q.put_bytes(Bytes::from_static(b"ef"));
        let mut expected = b"ab".to_vec();
        expected.extend_from_slice(&[1u8; 2000]);
        expected.extend_from_slice(b"cdef");
        assert_eq!(q.to_vec(), expected);
        assert_eq!(q.len(), expected.len());

        let mut slices = [IoSlice::new(&[]); 8];
        let n = q.chunks_vectored(&mut slices);
        assert_eq!(n, 3);
        let gathered: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(gathered, expected);
    }

    #[test]
    fn advance_in_odd_steps() {
        let mut q = WriteQueue::new();
        q.put_slice(b"xy");
        q.put_bytes(Bytes::from(vec![7u8; 3000]));
        q.put_slice(b"z");
        let all = q.to_vec();
        let mut seen = Vec::new();
        for step in [1usize, 1, 500, 2499, 1, 1] {
            let chunk = q.chunk();
            let k = step.min(chunk.len());
            seen.extend_from_slice(&chunk[..k]);
            q.advance(k);
        }
        while !q.is_empty() {
            let c = q.chunk().to_vec();
            seen.extend_from_slice(&c);
            q.advance(c.len());
        }
        assert_eq!(seen, all);
        assert!(q.shrink_if_empty(0));
        assert_eq!(q.capacity(), 0);
    }
}
