//! Property tests: whatever one end's `Encoder` produces, the other end's
//! `Decoder` gives back unchanged, however the bytes are cut into reads.
//!
//! A script of random operations (whole messages, shared-payload messages,
//! fragmented messages with control frames between the fragments, pings,
//! pongs, a final close; text always valid UTF-8, binary arbitrary; payload
//! lengths clustered around the header boundaries 125/126 and 65535/65536)
//! is encoded by a client, by a server, and by both with permessage-deflate,
//! then decoded by the opposite role: whole, one byte at a time, cut at every
//! single position (short streams), and in random chunk sizes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use bytes::{Bytes, BytesMut};
use ferrows_proto::deflate::{DeflateConfig, DeflateParams};
use ferrows_proto::{CloseFrame, Decoder, Encoder, Incoming, Limits, OpCode, Role, WriteQueue};
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------------------
// Scripts
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Binary,
}

impl Kind {
    fn opcode(self) -> OpCode {
        match self {
            Kind::Text => OpCode::Text,
            Kind::Binary => OpCode::Binary,
        }
    }
}

#[derive(Debug, Clone)]
enum Control {
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Op {
    /// `Encoder::text` / `Encoder::binary`.
    Whole(Kind, Vec<u8>),
    /// `Encoder::message_bytes` (queued by reference when large).
    Shared(Kind, Vec<u8>),
    /// `Encoder::fragment`, cut at `cuts` (positions may repeat: empty
    /// fragments), with control frames between fragments.
    Fragmented {
        kind: Kind,
        payload: Vec<u8>,
        cuts: Vec<Index>,
        controls: Vec<Option<Control>>,
    },
    Control(Control),
}

#[derive(Debug, Clone)]
struct Script {
    ops: Vec<Op>,
    close: Option<(u16, String)>,
}

/// Characters of every UTF-8 length, boundaries included.
const CHARS: [char; 12] = [
    'a',
    'Z',
    ' ',
    '\u{7F}',
    'é',
    '\u{7FF}',
    '\u{800}',
    '€',
    '\u{FFFF}',
    '\u{10000}',
    '𝄞',
    '\u{10FFFF}',
];

/// A deterministic payload of exactly `len` bytes: valid UTF-8 mixing
/// 1- to 4-byte characters for text, arbitrary bytes for binary.
fn payload(kind: Kind, len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    match kind {
        Kind::Binary => (0..len).map(|_| next() as u8).collect(),
        Kind::Text => {
            let mut s = String::with_capacity(len);
            while s.len() < len {
                let c = CHARS[(next() % CHARS.len() as u64) as usize];
                if s.len() + c.len_utf8() <= len {
                    s.push(c);
                } else {
                    s.push('.');
                }
            }
            s.into_bytes()
        }
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Text), Just(Kind::Binary)]
}

/// Lengths around the interesting boundaries: the 7-bit/16-bit length
/// switch (125/126), the deflate threshold (256), the 16-bit/64-bit switch
/// (65535/65536), plus small ones.
fn length() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 0..=16usize,
        4 => 123..=128usize,
        2 => 250..=260usize,
        1 => 1000..=3000usize,
        1 => 65534..=65537usize,
    ]
}

fn data(kind: Kind) -> impl Strategy<Value = Vec<u8>> {
    (length(), any::<u64>()).prop_map(move |(len, seed)| payload(kind, len, seed))
}

fn control() -> impl Strategy<Value = Control> {
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..=8),
        proptest::collection::vec(any::<u8>(), 120..=125),
    ];
    (any::<bool>(), bytes).prop_map(|(ping, b)| {
        if ping {
            Control::Ping(b)
        } else {
            Control::Pong(b)
        }
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => kind().prop_flat_map(|k| data(k).prop_map(move |d| Op::Whole(k, d))),
        1 => kind().prop_flat_map(|k| data(k).prop_map(move |d| Op::Shared(k, d))),
        3 => kind().prop_flat_map(|k| (
            data(k),
            proptest::collection::vec(any::<Index>(), 0..5),
            proptest::collection::vec(proptest::option::of(control()), 0..5),
        )
            .prop_map(move |(payload, cuts, controls)| Op::Fragmented {
                kind: k,
                payload,
                cuts,
                controls,
            })),
        2 => control().prop_map(Op::Control),
    ]
}

fn close() -> impl Strategy<Value = Option<(u16, String)>> {
    let code = proptest::sample::select(vec![
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4000, 4999,
    ]);
    // Up to 50 characters of up to 4 bytes: longer reasons are cut to fit.
    proptest::option::of((code, "\\PC{0,50}"))
}

fn script(max_ops: usize) -> impl Strategy<Value = Script> {
    (proptest::collection::vec(op(), 0..=max_ops), close())
        .prop_map(|(ops, close)| Script { ops, close })
}

// ---------------------------------------------------------------------------
// Encoding and decoding
// ---------------------------------------------------------------------------

fn message(kind: Kind, payload: &[u8]) -> Incoming {
    match kind {
        Kind::Text => Incoming::Text(std::str::from_utf8(payload).unwrap().into()),
        Kind::Binary => Incoming::Binary(Bytes::copy_from_slice(payload)),
    }
}

fn encode_control(enc: &mut Encoder, c: &Control, q: &mut WriteQueue) -> Incoming {
    match c {
        Control::Ping(p) => {
            enc.ping(p, q).unwrap();
            Incoming::Ping(Bytes::copy_from_slice(p))
        }
        Control::Pong(p) => {
            enc.pong(p, q).unwrap();
            Incoming::Pong(Bytes::copy_from_slice(p))
        }
    }
}

/// Encodes `script`; returns the wire bytes and what the peer must decode.
fn encode(enc: &mut Encoder, script: &Script) -> (Vec<u8>, Vec<Incoming>) {
    let mut q = WriteQueue::new();
    let mut expected = Vec::new();
    for op in &script.ops {
        match op {
            Op::Whole(Kind::Text, p) => {
                enc.text(std::str::from_utf8(p).unwrap(), &mut q).unwrap();
                expected.push(message(Kind::Text, p));
            }
            Op::Whole(Kind::Binary, p) => {
                enc.binary(p, &mut q).unwrap();
                expected.push(message(Kind::Binary, p));
            }
            Op::Shared(kind, p) => {
                enc.message_bytes(kind.opcode(), Bytes::copy_from_slice(p), &mut q)
                    .unwrap();
                expected.push(message(*kind, p));
            }
            Op::Fragmented {
                kind,
                payload,
                cuts,
                controls,
            } => {
                let mut cuts: Vec<usize> =
                    cuts.iter().map(|i| i.index(payload.len() + 1)).collect();
                cuts.sort_unstable();
                cuts.push(payload.len());
                let mut start = 0;
                for (i, &end) in cuts.iter().enumerate() {
                    let fin = i + 1 == cuts.len();
                    enc.fragment(kind.opcode(), &payload[start..end], fin, &mut q)
                        .unwrap();
                    start = end;
                    if let (false, Some(Some(c))) = (fin, controls.get(i)) {
                        expected.push(encode_control(enc, c, &mut q));
                    }
                }
                expected.push(message(*kind, payload));
            }
            Op::Control(c) => expected.push(encode_control(enc, c, &mut q)),
        }
    }
    if let Some((code, reason)) = &script.close {
        let frame = CloseFrame::new(*code, reason);
        enc.close(Some(&frame), &mut q).unwrap();
        expected.push(Incoming::Close(Some(frame)));
    }
    (q.to_vec(), expected)
}

/// Decodes `wire` fed in pieces of `sizes` (cycled); checks that every byte
/// is consumed and no message is left half-done.
fn decode(mut decoder: Decoder, wire: &[u8], sizes: &[usize]) -> Vec<Incoming> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    let mut sizes = sizes.iter().copied().cycle();
    while fed < wire.len() {
        let n = sizes
            .next()
            .unwrap_or(usize::MAX)
            .clamp(1, wire.len() - fed);
        buf.extend_from_slice(&wire[fed..fed + n]);
        fed += n;
        let mut drained = false;
        for _ in 0..buf.len() / 2 + 2 {
            match decoder.decode(&mut buf) {
                Ok(Some(item)) => out.push(item),
                Ok(None) => {
                    drained = true;
                    break;
                }
                Err(e) => panic!("decoder failed after {fed} of {} bytes: {e}", wire.len()),
            }
        }
        assert!(drained, "decoder did not stop");
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    assert!(!decoder.is_mid_message(), "a message was left unfinished");
    out
}

/// Runs every feeding strategy and compares each to `expected`.
fn check_all_splits(
    make: &dyn Fn() -> Decoder,
    wire: &[u8],
    expected: &[Incoming],
    chunks: &[usize],
) -> Result<(), TestCaseError> {
    prop_assert_eq!(&decode(make(), wire, &[usize::MAX]), expected, "whole");
    prop_assert_eq!(
        &decode(make(), wire, chunks),
        expected,
        "chunks {:?}",
        chunks
    );
    if wire.len() <= 4096 {
        prop_assert_eq!(&decode(make(), wire, &[1]), expected, "byte by byte");
    }
    if wire.len() <= 600 {
        for cut in 1..wire.len() {
            let pieces = [cut, wire.len() - cut];
            prop_assert_eq!(&decode(make(), wire, &pieces), expected, "cut at {}", cut);
        }
    }
    Ok(())
}

/// Collapses fragment-mode output into whole messages, checking the
/// fragments' bookkeeping on the way.
fn join_fragments(items: Vec<Incoming>) -> Vec<Incoming> {
    let mut out = Vec::new();
    // The message being joined: opcode, data so far, fragments so far.
    let mut current: Option<(OpCode, Vec<u8>, usize)> = None;
    for item in items {
        let Incoming::Fragment(f) = item else {
            out.push(item);
            continue;
        };
        let (opcode, data, count) = current.get_or_insert_with(|| (f.opcode, Vec::new(), 0));
        assert_eq!(f.first, *count == 0);
        assert_eq!(f.message_offset, data.len() as u64);
        assert_eq!(*opcode, f.opcode);
        *count += 1;
        data.extend_from_slice(&f.data);
        if f.fin {
            let kind = if f.opcode == OpCode::Text {
                Kind::Text
            } else {
                Kind::Binary
            };
            out.push(message(kind, data));
            current = None;
        }
    }
    assert!(current.is_none(), "unfinished fragmented message");
    out
}

/// Random chunk sizes, from tiny to larger than any stream.
fn chunks() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(
        prop_oneof![1..=8usize, 9..=200usize, 1000..=70_000usize],
        1..8,
    )
}

fn peer(role: Role) -> Role {
    match role {
        Role::Client => Role::Server,
        Role::Server => Role::Client,
    }
}

fn plain_case(sender: Role, script: &Script, chunks: &[usize]) -> Result<(), TestCaseError> {
    let mut enc = Encoder::new(sender, None);
    let (wire, expected) = encode(&mut enc, script);
    let make = || Decoder::new(peer(sender), Limits::default(), None);
    check_all_splits(&make, &wire, &expected, chunks)
}

#[derive(Debug, Clone)]
struct DeflateCase {
    params: DeflateParams,
    level: u32,
    threshold: usize,
}

fn deflate_case() -> impl Strategy<Value = DeflateCase> {
    (
        any::<bool>(),
        any::<bool>(),
        8..=15u8,
        8..=15u8,
        0..=9u32,
        proptest::sample::select(vec![0usize, 1, 126, 256]),
    )
        .prop_map(|(snct, cnct, sbits, cbits, level, threshold)| DeflateCase {
            params: DeflateParams {
                server_no_context_takeover: snct,
                client_no_context_takeover: cnct,
                server_max_window_bits: sbits,
                client_max_window_bits: cbits,
            },
            level,
            threshold,
        })
}

fn deflate_encoder(sender: Role, case: &DeflateCase) -> Encoder {
    let config = DeflateConfig::default()
        .level(case.level)
        .threshold(case.threshold);
    let compressor = match sender {
        Role::Client => case.params.client_compressor(&config),
        Role::Server => case.params.server_compressor(&config),
    };
    Encoder::new(sender, Some((compressor, case.threshold)))
}

fn deflate_decoder(receiver: Role, params: DeflateParams) -> Decoder {
    let inflater = match receiver {
        Role::Server => params.server_decompressor(),
        Role::Client => params.client_decompressor(),
    };
    Decoder::new(receiver, Limits::default(), Some(inflater))
}

fn deflate_run(
    sender: Role,
    case: &DeflateCase,
    script: &Script,
    chunks: &[usize],
) -> Result<(), TestCaseError> {
    let mut enc = deflate_encoder(sender, case);
    let (wire, expected) = encode(&mut enc, script);
    let params = case.params;
    let make = move || deflate_decoder(peer(sender), params);
    check_all_splits(&make, &wire, &expected, chunks)
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn client_to_server(script in script(6), chunks in chunks()) {
        plain_case(Role::Client, &script, &chunks)?;
    }

    #[test]
    fn server_to_client(script in script(6), chunks in chunks()) {
        plain_case(Role::Server, &script, &chunks)?;
    }

    #[test]
    fn fragment_mode_delivers_the_same_bytes(
        sender in prop_oneof![Just(Role::Client), Just(Role::Server)],
        script in script(6),
        chunks in chunks(),
    ) {
        let mut enc = Encoder::new(sender, None);
        let (wire, expected) = encode(&mut enc, &script);
        let mut d = Decoder::new(peer(sender), Limits::default(), None);
        d.set_fragment_mode(true);
        prop_assert_eq!(join_fragments(decode(d, &wire, &chunks)), expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn client_to_server_with_deflate(
        case in deflate_case(),
        script in script(5),
        chunks in chunks(),
    ) {
        deflate_run(Role::Client, &case, &script, &chunks)?;
    }

    #[test]
    fn server_to_client_with_deflate(
        case in deflate_case(),
        script in script(5),
        chunks in chunks(),
    ) {
        deflate_run(Role::Server, &case, &script, &chunks)?;
    }

    #[test]
    fn fragment_mode_with_deflate_delivers_the_same_bytes(
        sender in prop_oneof![Just(Role::Client), Just(Role::Server)],
        case in deflate_case(),
        script in script(5),
        chunks in chunks(),
    ) {
        let mut enc = deflate_encoder(sender, &case);
        let (wire, expected) = encode(&mut enc, &script);
        let mut d = deflate_decoder(peer(sender), case.params);
        d.set_fragment_mode(true);
        prop_assert_eq!(join_fragments(decode(d, &wire, &chunks)), expected);
    }
}

/// The generator itself: text payloads are valid UTF-8 of the exact length,
/// mixing every character width.
#[test]
fn payloads_have_the_requested_length_and_are_utf8() {
    for len in [0usize, 1, 2, 3, 4, 5, 125, 126, 65535, 65536] {
        for seed in 0..4 {
            let t = payload(Kind::Text, len, seed);
            assert_eq!(t.len(), len);
            assert!(std::str::from_utf8(&t).is_ok());
            assert_eq!(payload(Kind::Binary, len, seed).len(), len);
        }
    }
    let t = String::from_utf8(payload(Kind::Text, 4000, 7)).unwrap();
    for width in 1..=4 {
        assert!(
            t.chars().any(|c| c.len_utf8() == width),
            "no {width}-byte char"
        );
    }
}
