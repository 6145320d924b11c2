//! Payload masking (RFC 6455 §5.3): XOR with a rotating 4-byte key.
//!
//! The hot loop works on 32-byte blocks with the key widened to the block,
//! which the compiler turns into SIMD XORs on every target with vectors; no
//! `unsafe` and no target-specific code.

/// XORs `buf` in place with `key`, starting at key position `offset % 4`.
///
/// Masking and unmasking are the same operation. `offset` is the number of
/// payload bytes of the same frame already processed, which lets a payload be
/// unmasked piece by piece as it arrives.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate_key(key, offset);
    let (head, tail) = buf.split_at_mut(buf.len() - buf.len() % BLOCK);
    if !head.is_empty() {
        let wide = widen(key);
        for block in head.chunks_exact_mut(BLOCK) {
            for (b, k) in block.iter_mut().zip(wide.iter()) {
                *b ^= k;
            }
        }
    }
    // Whole blocks are a multiple of 4 bytes, so the key phase is unchanged
    // for the rest: 8-byte words, then at most 7 bytes.
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = tail.chunks_exact_mut(8);
    for w in &mut words {
        if let Ok(bytes) = <[u8; 8]>::try_from(&*w) {
            w.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
        }
    }
    for (b, k) in words
        .into_remainder()
        .iter_mut()
        .zip(key.iter().chain(key.iter()))
    {
        *b ^= k;
    }
}

const BLOCK: usize = 32;

#[inline]
fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    let mut k = key;
    k.rotate_left(offset % 4);
    k
}

#[inline]
fn widen(key: [u8; 4]) -> [u8; BLOCK] {
    let mut wide = [0u8; BLOCK];
    for (w, k) in wide.iter_mut().zip(key.iter().cycle()) {
        *w = *k;
    }
    wide
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;

    fn naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(i + offset) % 4];
        }
    }

    #[test]
    fn rfc6455_5_7_masked_hello() {
        let mut payload = *b"Hello";
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(payload, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }

    #[test]
    fn matches_naive_for_every_length_and_offset() {
        let key = [0x12, 0x34, 0x56, 0x78];
        for len in 0..200 {
            for offset in 0..8 {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut fast = data.clone();
                let mut slow = data.clone();
                apply_mask(&mut fast, key, offset);
                naive(&mut slow, key, offset);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn piecewise_equals_whole() {
        let key = [9, 8, 7, 6];
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        let mut pieces = data.clone();
        let mut done = 0;
        for step in [1usize, 3, 5, 64, 100, 333, 494] {
            apply_mask(&mut pieces[done..done + step], key, done);
            done += step;
        }
        assert_eq!(done, 1000);
        assert_eq!(whole, pieces);
    }
}
