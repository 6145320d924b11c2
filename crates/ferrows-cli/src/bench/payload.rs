//! The messages a load run sends, and the check of every echo.
//!
//! Each connection gets its own set of distinct payloads ("variants") and
//! sends them in turn. A variant starts with a tag naming its connection
//! and its number, followed by pseudo-random content seeded by both, so no
//! two variants of a run are alike. There are more variants than messages
//! in flight on a connection, and an echo server answers a connection in
//! order, so each echo must equal, byte for byte, the variant sent that
//! many messages earlier: a reordered, lost, duplicated, truncated or
//! corrupted echo, or one from another connection, fails the comparison.
//!
//! Building the variants once keeps the sender cheap: a message is a
//! reference-counted handle on its variant's bytes, not a fresh buffer.

use bytes::Bytes;
use ferrows::{Message, Utf8Bytes};

/// Text or binary messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Text messages (valid UTF-8, here ASCII).
    Text,
    /// Binary messages.
    Binary,
}

/// What the payloads contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Content {
    /// Pseudo-random bytes (binary) or characters from a 64-letter alphabet
    /// (text): compresses poorly, like media or already-compressed data.
    Random,
    /// JSON-like records (`{"id":…,"user":"…","score":…}`): compresses
    /// well, like the text most WebSocket applications send.
    Json,
}

/// Why an echo did not match what was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mismatch {
    /// Text came back for binary, or the other way round, or a fragment.
    Type,
    /// The length differs.
    Length {
        /// Bytes sent.
        sent: usize,
        /// Bytes received.
        received: usize,
    },
    /// Same length, different bytes.
    Content,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Type => f.write_str("wrong message type"),
            Mismatch::Length { sent, received } => {
                write!(f, "sent {sent} bytes, received {received}")
            }
            Mismatch::Content => f.write_str("same length, different bytes"),
        }
    }
}

/// The distinct payloads of one connection.
#[derive(Debug, Clone)]
pub(crate) struct Payloads {
    kind: Kind,
    /// The messages, built once: sending one clones a reference.
    variants: Vec<Message>,
}

impl Payloads {
    /// `count` distinct payloads of `size` bytes for connection `conn` of a
    /// run seeded with `seed`.
    pub(crate) fn new(
        conn: u32,
        size: usize,
        kind: Kind,
        content: Content,
        count: usize,
        seed: u64,
    ) -> Payloads {
        let variants = (0..count.max(1))
            .map(|v| {
                let v = u32::try_from(v).unwrap_or(u32::MAX);
                let bytes = Bytes::from(make_payload(conn, v, size, kind, content, seed));
                match kind {
                    Kind::Binary => Message::Binary(bytes),
                    // Built from ASCII in `make_payload`, so this cannot
                    // fail; if it did, every echo would be a mismatch.
                    Kind::Text => Utf8Bytes::try_from_bytes(bytes)
                        .map_or(Message::Binary(Bytes::new()), Message::Text),
                }
            })
            .collect();
        Payloads { kind, variants }
    }

    /// The message for the `seq`-th send (variants in turn).
    pub(crate) fn message(&self, seq: u64) -> Message {
        self.variant(seq).clone()
    }

    /// Checks that `echo` is the echo of the `seq`-th send.
    pub(crate) fn check(&self, seq: u64, echo: &Message) -> Result<(), Mismatch> {
        let got: &[u8] = match (self.kind, echo) {
            (Kind::Text, Message::Text(t)) => t.as_bytes(),
            (Kind::Binary, Message::Binary(b)) => b,
            _ => return Err(Mismatch::Type),
        };
        let want = self.variant(seq).as_payload();
        if got.len() != want.len() {
            return Err(Mismatch::Length {
                sent: want.len(),
                received: got.len(),
            });
        }
        if got != want {
            return Err(Mismatch::Content);
        }
        Ok(())
    }

    fn variant(&self, seq: u64) -> &Message {
        let n = self.variants.len() as u64;
        let i = usize::try_from(seq % n.max(1)).unwrap_or(0);
        // `i < len` whenever there is a variant, and `new` makes at least one.
        self.variants.get(i).unwrap_or(&EMPTY)
    }
}

static EMPTY: Message = Message::Binary(Bytes::from_static(b""));

/// SplitMix64: a small, fast, well-mixed generator; plenty for test data.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

const WORDS: [&str; 16] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett",
    "kilo", "lima", "mike", "november", "oscar", "papa",
];

fn make_payload(
    conn: u32,
    variant: u32,
    size: usize,
    kind: Kind,
    content: Content,
    seed: u64,
) -> Vec<u8> {
    let mut rng = SplitMix(
        seed ^ (u64::from(conn) << 32 | u64::from(variant)).wrapping_mul(0xA24B_AED4_963E_E407),
    );
    let mut out = Vec::with_capacity(size + 128);
    // The tag: connection and variant, readable in a packet capture.
    match kind {
        Kind::Text => out.extend_from_slice(format!("{conn:08x}{variant:08x}").as_bytes()),
        Kind::Binary => {
            out.extend_from_slice(&conn.to_le_bytes());
            out.extend_from_slice(&variant.to_le_bytes());
        }
    }
    match content {
        Content::Json => {
            let mut id = u64::from(variant) * 1000;
            while out.len() < size {
                let word = WORDS
                    .get((rng.next() % 16) as usize)
                    .copied()
                    .unwrap_or("x");
                let score = rng.next() % 10_000;
                let active = rng.next() % 2 == 0;
                let record = format!(
                    "{{\"id\":{id},\"user\":\"{word}-{conn}\",\"score\":0.{score:04},\"active\":{active},\"tags\":[\"{word}\",\"bench\"]}},"
                );
                out.extend_from_slice(record.as_bytes());
                id += 1;
            }
        }
        Content::Random => match kind {
            Kind::Binary => {
                while out.len() < size {
                    out.extend_from_slice(&rng.next().to_le_bytes());
                }
            }
            Kind::Text => {
                while out.len() < size {
                    let mut r = rng.next();
                    for _ in 0..10 {
                        let c = ALPHABET.get((r & 63) as usize).copied().unwrap_or(b'x');
                        out.push(c);
                        r >>= 6;
                    }
                }
            }
        },
    }
    out.truncate(size);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn variants_are_distinct_and_sized() {
        for kind in [Kind::Text, Kind::Binary] {
            for content in [Content::Random, Content::Json] {
                for size in [0usize, 1, 16, 1000, 70_000] {
                    let p = Payloads::new(3, size, kind, content, 5, 42);
                    assert_eq!(p.variants.len(), 5);
                    for v in 0..5 {
                        assert_eq!(p.message(v).len(), size);
                        if size >= 16 {
                            for w in 0..v {
                                assert_ne!(p.message(v), p.message(w));
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn text_is_text() {
        let p = Payloads::new(1, 1024, Kind::Text, Content::Json, 3, 7);
        let m = p.message(1);
        assert!(m.as_text().unwrap().starts_with("0000000100000001{\"id\""));
        let p = Payloads::new(1, 64, Kind::Text, Content::Random, 3, 7);
        assert!(p.message(2).is_text());
    }

    #[test]
    fn connections_differ() {
        let a = Payloads::new(1, 64, Kind::Binary, Content::Random, 2, 7);
        let b = Payloads::new(2, 64, Kind::Binary, Content::Random, 2, 7);
        assert_ne!(a.message(0), b.message(0));
        assert_eq!(b.check(0, &a.message(0)), Err(Mismatch::Content));
    }

    #[test]
    fn check_catches_every_kind_of_bad_echo() {
        let p = Payloads::new(0, 32, Kind::Binary, Content::Random, 4, 1);
        assert_eq!(p.check(5, &p.message(5)), Ok(()));
        // Variants repeat every `len()` sends.
        assert_eq!(p.check(9, &p.message(5)), Ok(()));
        assert_eq!(p.check(5, &p.message(6)), Err(Mismatch::Content));
        let text = Message::text("x".repeat(32));
        assert_eq!(p.check(5, &text), Err(Mismatch::Type));
        let short = Message::binary(p.message(5).into_payload().slice(..31));
        assert_eq!(
            p.check(5, &short),
            Err(Mismatch::Length {
                sent: 32,
                received: 31
            })
        );
        let mut flipped = p.message(5).into_payload().to_vec();
        flipped[20] ^= 1;
        assert_eq!(
            p.check(5, &Message::binary(flipped)),
            Err(Mismatch::Content)
        );
    }
}
