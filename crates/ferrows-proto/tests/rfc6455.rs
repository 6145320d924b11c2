//! Byte-level conformance tests for the decoder and encoder, grouped by
//! RFC 6455 section (and RFC 7692 for permessage-deflate).
//!
//! Every failure case is checked twice: with the whole input in the read
//! buffer, and fed one byte at a time (the decoder must fail the same way, and
//! as soon as the bytes prove the violation).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use bytes::{Bytes, BytesMut};
use ferrows_proto::deflate::{DeflateConfig, DeflateParams};
use ferrows_proto::frame::HeaderDecode;
use ferrows_proto::{
    CloseCode, CloseFrame, Decoder, EncodeError, Encoder, FrameHeader, Incoming, Limits, OpCode,
    ProtocolError, Role, WriteQueue, encode_raw_frame,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The masking key of the RFC 6455 §5.7 examples.
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

const PROTOCOL_ERROR: u16 = 1002;
const INVALID_PAYLOAD: u16 = 1007;
const MESSAGE_TOO_BIG: u16 = 1009;

/// The role of the peer that sends to `receiver`.
fn peer(receiver: Role) -> Role {
    match receiver {
        Role::Server => Role::Client,
        Role::Client => Role::Server,
    }
}

/// One frame as the peer of `receiver` would send it: masked with [`KEY`]
/// for a server, unmasked for a client.
fn frame_to(receiver: Role, fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut header = FrameHeader::new(opcode, 0);
    header.fin = fin;
    header.mask = (receiver == Role::Server).then_some(KEY);
    raw(header, payload)
}

/// One frame with explicit header fields (the length comes from `payload`).
fn raw(header: FrameHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_raw_frame(header, payload, &mut out);
    out
}

/// The header bytes only of a frame of `len` payload bytes to `receiver`.
fn header_to(receiver: Role, fin: bool, opcode: OpCode, len: u64) -> Vec<u8> {
    let mut header = FrameHeader::new(opcode, len);
    header.fin = fin;
    header.mask = (receiver == Role::Server).then_some(KEY);
    let mut buf = [0u8; ferrows_proto::frame::MAX_HEADER_LEN];
    let n = header.encode(&mut buf);
    buf[..n].to_vec()
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// What a decoder made of some input: the items, and the error if any.
#[derive(Debug)]
struct Outcome {
    items: Vec<Incoming>,
    error: Option<ProtocolError>,
    /// With byte-wise feeding: how many bytes had been fed when it failed.
    failed_after: Option<usize>,
}

/// Decodes `bytes` with the whole input in the read buffer at once.
fn decode_whole(mut decoder: Decoder, bytes: &[u8]) -> Outcome {
    let mut buf = BytesMut::from(bytes);
    let mut items = Vec::new();
    // Every item consumes at least a 2-byte header.
    for _ in 0..=bytes.len() / 2 + 1 {
        match decoder.decode(&mut buf) {
            Ok(Some(item)) => items.push(item),
            Ok(None) => {
                return Outcome {
                    items,
                    error: None,
                    failed_after: None,
                };
            }
            Err(e) => {
                return Outcome {
                    items,
                    error: Some(e),
                    failed_after: Some(bytes.len()),
                };
            }
        }
    }
    panic!("decoder did not stop on {} bytes", bytes.len());
}

/// Decodes `bytes` fed in pieces of `sizes` (cycled), draining after each.
fn decode_pieces(mut decoder: Decoder, bytes: &[u8], sizes: &[usize]) -> Outcome {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut fed = 0;
    let mut sizes = sizes.iter().copied().cycle();
    while fed < bytes.len() {
        let n = sizes.next().unwrap().max(1).min(bytes.len() - fed);
        buf.extend_from_slice(&bytes[fed..fed + n]);
        fed += n;
        // The new bytes complete at most one pending frame plus one item per
        // two bytes; one more call returns `Ok(None)`.
        let mut drained = false;
        for _ in 0..n / 2 + 3 {
            match decoder.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => {
                    drained = true;
                    break;
                }
                Err(e) => {
                    return Outcome {
                        items,
                        error: Some(e),
                        failed_after: Some(fed),
                    };
                }
            }
        }
        assert!(drained, "decoder did not stop after {fed} bytes");
    }
    Outcome {
        items,
        error: None,
        failed_after: None,
    }
}

fn decode_bytewise(decoder: Decoder, bytes: &[u8]) -> Outcome {
    decode_pieces(decoder, bytes, &[1])
}

fn decoder(role: Role) -> Decoder {
    Decoder::new(role, Limits::default(), None)
}

/// Decodes `bytes` both ways and checks that it succeeds the same way,
/// returning the items.
fn decode_ok(role: Role, bytes: &[u8]) -> Vec<Incoming> {
    decode_ok_with(|| decoder(role), bytes)
}

fn decode_ok_with(make: impl Fn() -> Decoder, bytes: &[u8]) -> Vec<Incoming> {
    let whole = decode_whole(make(), bytes);
    assert_eq!(whole.error, None, "whole input failed");
    let bytewise = decode_bytewise(make(), bytes);
    assert_eq!(bytewise.error, None, "byte-wise input failed");
    assert_eq!(whole.items, bytewise.items, "whole vs byte-wise");
    whole.items
}

/// Checks that `bytes` fail a default `role` decoder with `close_code`, both
/// whole and byte by byte, with the same error. Returns the error and the
/// number of bytes the byte-wise decoder had seen when it failed.
fn assert_fails(bytes: &[u8], role: Role, close_code: u16) -> (ProtocolError, usize) {
    assert_fails_with(|| decoder(role), bytes, close_code)
}

fn assert_fails_with(
    make: impl Fn() -> Decoder,
    bytes: &[u8],
    close_code: u16,
) -> (ProtocolError, usize) {
    let whole = decode_whole(make(), bytes);
    let error = whole
        .error
        .unwrap_or_else(|| panic!("{bytes:02x?} decoded to {:?}", whole.items));
    assert_eq!(
        error.close_code(),
        CloseCode(close_code),
        "{error:?} has the wrong close code"
    );
    let bytewise = decode_bytewise(make(), bytes);
    assert_eq!(bytewise.error.as_ref(), Some(&error), "byte-wise differs");
    // Fed in uneven pieces too.
    let uneven = decode_pieces(make(), bytes, &[3, 1, 7, 2]);
    assert_eq!(uneven.error.as_ref(), Some(&error), "uneven pieces differ");
    (error, bytewise.failed_after.unwrap())
}

fn text(s: &str) -> Incoming {
    Incoming::Text(s.into())
}

fn binary(b: &[u8]) -> Incoming {
    Incoming::Binary(Bytes::copy_from_slice(b))
}

/// Splits encoder output into frames: header and unmasked payload.
fn parse_frames(mut wire: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut frames = Vec::new();
    while !wire.is_empty() {
        let HeaderDecode::Complete(header, n) = FrameHeader::decode(wire).unwrap() else {
            panic!("truncated header in encoder output");
        };
        assert!(
            header.has_minimal_length(n),
            "non-minimal length {header:?}"
        );
        let len = usize::try_from(header.payload_len).unwrap();
        let mut payload = wire[n..n + len].to_vec();
        if let Some(key) = header.mask {
            ferrows_proto::mask::apply_mask(&mut payload, key, 0);
        }
        frames.push((header, payload));
        wire = &wire[n + len..];
    }
    frames
}

/// A permessage-deflate pair for messages sent by `sender`: its encoder
/// (compressing every message, threshold 0) and a factory for the receiver's
/// decoder with `limits`.
fn deflate_pair(sender: Role, limits: Limits) -> (Encoder, impl Fn() -> Decoder) {
    let params = DeflateParams::default();
    let config = DeflateConfig::default().threshold(0);
    let compressor = match sender {
        Role::Client => params.client_compressor(&config),
        Role::Server => params.server_compressor(&config),
    };
    let receiver = peer(sender);
    let make = move || {
        let inflater = match receiver {
            Role::Server => params.server_decompressor(),
            Role::Client => params.client_decompressor(),
        };
        Decoder::new(receiver, limits, Some(inflater))
    };
    (Encoder::new(sender, Some((compressor, 0))), make)
}

// ---------------------------------------------------------------------------
// §5.7 Examples, byte-exact
// ---------------------------------------------------------------------------

mod s5_7_examples {
    use super::*;

    const HELLO_UNMASKED: [u8; 7] = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    const HELLO_MASKED: [u8; 11] = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];

    #[test]
    fn unmasked_text_hello_is_what_a_server_sends() {
        let mut enc = Encoder::new(Role::Server, None);
        let mut q = WriteQueue::new();
        enc.text("Hello", &mut q).unwrap();
        assert_eq!(q.to_vec(), HELLO_UNMASKED);
    }

    #[test]
    fn unmasked_text_hello_is_decoded_by_a_client() {
        assert_eq!(decode_ok(Role::Client, &HELLO_UNMASKED), [text("Hello")]);
    }

    #[test]
    fn masked_text_hello_is_decoded_by_a_server() {
        assert_eq!(decode_ok(Role::Server, &HELLO_MASKED), [text("Hello")]);
        // And the raw encoder produces it from the RFC's key.
        assert_eq!(
            frame_to(Role::Server, true, OpCode::Text, b"Hello"),
            HELLO_MASKED
        );
    }

    #[test]
    fn fragmented_unmasked_text() {
        let wire = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
        assert_eq!(decode_ok(Role::Client, &wire), [text("Hello")]);

        let mut enc = Encoder::new(Role::Server, None);
        let mut q = WriteQueue::new();
        enc.fragment(OpCode::Text, b"Hel", false, &mut q).unwrap();
        enc.fragment(OpCode::Text, b"lo", true, &mut q).unwrap();
        assert_eq!(q.to_vec(), wire);
    }

    #[test]
    fn unmasked_ping() {
        let wire = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(
            decode_ok(Role::Client, &wire),
            [Incoming::Ping(Bytes::from_static(b"Hello"))]
        );
        let mut q = WriteQueue::new();
        Encoder::new(Role::Server, None)
            .ping(b"Hello", &mut q)
            .unwrap();
        assert_eq!(q.to_vec(), wire);
    }

    #[test]
    fn masked_pong() {
        let wire = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            decode_ok(Role::Server, &wire),
            [Incoming::Pong(Bytes::from_static(b"Hello"))]
        );
        assert_eq!(frame_to(Role::Server, true, OpCode::Pong, b"Hello"), wire);
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn binary_256_bytes_in_one_unmasked_frame() {
        let payload = pattern(256);
        let wire = concat(&[&[0x82, 0x7E, 0x01, 0x00], &payload]);
        let mut q = WriteQueue::new();
        Encoder::new(Role::Server, None)
            .binary(&payload, &mut q)
            .unwrap();
        assert_eq!(q.to_vec(), wire);
        assert_eq!(decode_ok(Role::Client, &wire), [binary(&payload)]);
    }

    #[test]
    fn binary_64_kib_in_one_unmasked_frame() {
        let payload = pattern(65536);
        let wire = concat(&[
            &[0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00],
            &payload,
        ]);
        let mut q = WriteQueue::new();
        Encoder::new(Role::Server, None)
            .binary(&payload, &mut q)
            .unwrap();
        assert_eq!(q.to_vec(), wire);
        // Whole, and in uneven pieces (byte-wise would be slow in debug).
        assert_eq!(
            decode_whole(decoder(Role::Client), &wire).items,
            [binary(&payload)]
        );
        let pieces = decode_pieces(decoder(Role::Client), &wire, &[1, 2, 3, 1000, 4093]);
        assert_eq!(pieces.error, None);
        assert_eq!(pieces.items, [binary(&payload)]);
    }

    #[test]
    fn a_server_decodes_the_masked_forms_of_the_length_examples() {
        for len in [125usize, 126, 256, 65535, 65536] {
            let payload = pattern(len);
            let wire = frame_to(Role::Server, true, OpCode::Binary, &payload);
            let out = decode_pieces(decoder(Role::Server), &wire, &[5, 1, 333]);
            assert_eq!(out.error, None, "len {len}");
            assert_eq!(out.items, [binary(&payload)], "len {len}");
        }
    }
}

// ---------------------------------------------------------------------------
// §5.2 Base framing protocol: RSV bits, opcodes, lengths
// ---------------------------------------------------------------------------

mod s5_2_base_framing {
    use super::*;

    #[test]
    fn rsv_bits_without_an_extension_fail_with_1002() {
        for role in [Role::Server, Role::Client] {
            for bit in 0..3 {
                for opcode in [OpCode::Text, OpCode::Binary, OpCode::Ping] {
                    let mut header = FrameHeader::new(opcode, 0);
                    header.mask = (role == Role::Server).then_some(KEY);
                    header.rsv1 = bit == 0;
                    header.rsv2 = bit == 1;
                    header.rsv3 = bit == 2;
                    let wire = raw(header, b"abc");
                    let (e, at) = assert_fails(&wire, role, PROTOCOL_ERROR);
                    assert_eq!(e, ProtocolError::ReservedBits);
                    // Known from the first two bytes plus the rest of the
                    // header; no payload needed.
                    assert!(at <= header.encoded_len(), "failed only after {at} bytes");
                }
            }
        }
    }

    #[test]
    fn reserved_opcodes_fail_with_1002() {
        for role in [Role::Server, Role::Client] {
            for bits in (0x3..=0x7).chain(0xB..=0xF) {
                let wire = frame_to(role, true, OpCode::from_u8(bits), b"");
                let (e, _) = assert_fails(&wire, role, PROTOCOL_ERROR);
                assert_eq!(e, ProtocolError::ReservedOpcode(bits));
                // Also with FIN clear and a payload.
                let wire = frame_to(role, false, OpCode::from_u8(bits), b"xyz");
                let (e, _) = assert_fails(&wire, role, PROTOCOL_ERROR);
                assert_eq!(e, ProtocolError::ReservedOpcode(bits));
            }
        }
    }

    #[test]
    fn reserved_opcode_after_a_valid_message_fails_after_delivering_it() {
        let wire = concat(&[
            &frame_to(Role::Server, true, OpCode::Text, b"ok"),
            &frame_to(Role::Server, true, OpCode::Reserved(0x5), b""),
        ]);
        let out = decode_whole(decoder(Role::Server), &wire);
        assert_eq!(out.items, [text("ok")]);
        assert_eq!(out.error, Some(ProtocolError::ReservedOpcode(5)));
    }

    #[test]
    fn a_64_bit_length_with_the_msb_set_fails_with_1002() {
        for role in [Role::Server, Role::Client] {
            let mut wire = vec![0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0x05];
            if role == Role::Server {
                wire[1] |= 0x80;
                wire.extend_from_slice(&KEY);
            }
            // Header only: the length field alone proves the violation.
            let (e, at) = assert_fails(&wire, role, PROTOCOL_ERROR);
            assert_eq!(e, ProtocolError::InvalidLength);
            assert!(at <= wire.len());
        }
    }

    /// A header with the length `len` forced into a `field`-byte extended
    /// length (2 or 8), to `receiver`, followed by `payload`.
    fn non_minimal(receiver: Role, opcode: OpCode, field: usize, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u64;
        let mut wire = vec![0x80 | opcode.as_u8()];
        let mask_bit = if receiver == Role::Server { 0x80 } else { 0 };
        match field {
            2 => {
                wire.push(mask_bit | 126);
                wire.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
            }
            _ => {
                wire.push(mask_bit | 127);
                wire.extend_from_slice(&len.to_be_bytes());
            }
        }
        let mut body = payload.to_vec();
        if receiver == Role::Server {
            wire.extend_from_slice(&KEY);
            ferrows_proto::mask::apply_mask(&mut body, KEY, 0);
        }
        wire.extend_from_slice(&body);
        wire
    }

    #[test]
    fn non_minimal_lengths_fail_with_1002_as_soon_as_the_header_is_in() {
        // §5.2: "the minimal number of bytes MUST be used to encode the
        // length". 126 with a 16-bit length below 126, 127 with a 64-bit
        // length below 65 536: both directions, data and control frames,
        // at the edges (0, 125 in 16 bits; 0, 125, 126, 65 535 in 64 bits).
        let cases: [(usize, usize, OpCode); 7] = [
            (2, 0, OpCode::Text),
            (2, 2, OpCode::Text),
            (2, 125, OpCode::Binary),
            (2, 5, OpCode::Ping),
            (8, 2, OpCode::Text),
            (8, 126, OpCode::Binary),
            (8, 65_535, OpCode::Binary),
        ];
        for role in [Role::Server, Role::Client] {
            for (field, len, opcode) in cases {
                let payload = vec![b'h'; len];
                let wire = non_minimal(role, opcode, field, &payload);
                let header_len = 2 + field + if role == Role::Server { 4 } else { 0 };
                let (e, at) = assert_fails(&wire, role, PROTOCOL_ERROR);
                assert_eq!(
                    e,
                    ProtocolError::NonMinimalLength {
                        len: len as u64,
                        field_bytes: field
                    },
                    "{role:?} {field} {len}"
                );
                // The header alone proves it: no payload byte is waited for.
                assert_eq!(at, header_len, "{role:?} {field} {len}");
            }
        }
    }

    #[test]
    fn non_minimal_length_after_a_valid_message_fails_after_delivering_it() {
        let wire = concat(&[
            &frame_to(Role::Server, true, OpCode::Text, b"ok"),
            &non_minimal(Role::Server, OpCode::Text, 2, b"hi"),
        ]);
        let out = decode_whole(decoder(Role::Server), &wire);
        assert_eq!(out.items, [text("ok")]);
        assert_eq!(
            out.error,
            Some(ProtocolError::NonMinimalLength {
                len: 2,
                field_bytes: 2
            })
        );
    }

    #[test]
    fn minimal_lengths_at_every_boundary_are_accepted() {
        // The shortest encodings on both sides of each boundary still pass.
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let payload = vec![7u8; len];
            let wire = frame_to(Role::Client, true, OpCode::Binary, &payload);
            let out = decode_whole(decoder(Role::Client), &wire);
            assert_eq!(out.error, None, "len {len}");
            assert_eq!(out.items, [binary(&payload)], "len {len}");
        }
    }

    #[test]
    fn non_minimal_lengths_are_accepted_when_the_limits_allow_them() {
        let lenient = |role| {
            Decoder::new(
                role,
                Limits::default().allow_non_minimal_lengths(true),
                None,
            )
        };
        for role in [Role::Server, Role::Client] {
            let wire = concat(&[
                &non_minimal(role, OpCode::Text, 2, b"hi"),
                &non_minimal(role, OpCode::Text, 8, b"hi"),
                &non_minimal(role, OpCode::Ping, 2, b"p"),
                &non_minimal(role, OpCode::Binary, 8, &[1u8; 300]),
            ]);
            assert_eq!(
                decode_ok_with(|| lenient(role), &wire),
                [
                    text("hi"),
                    text("hi"),
                    Incoming::Ping(Bytes::from_static(b"p")),
                    binary(&[1u8; 300]),
                ],
                "{role:?}"
            );
        }
        assert!(!Limits::default().allow_non_minimal_lengths);
    }

    #[test]
    fn empty_messages_of_every_kind() {
        let wire = concat(&[
            &frame_to(Role::Server, true, OpCode::Text, b""),
            &frame_to(Role::Server, true, OpCode::Binary, b""),
            &frame_to(Role::Server, true, OpCode::Ping, b""),
            &frame_to(Role::Server, true, OpCode::Pong, b""),
            &frame_to(Role::Server, false, OpCode::Text, b""),
            &frame_to(Role::Server, false, OpCode::Continuation, b""),
            &frame_to(Role::Server, true, OpCode::Continuation, b""),
            &frame_to(Role::Server, true, OpCode::Close, b""),
        ]);
        assert_eq!(
            decode_ok(Role::Server, &wire),
            [
                text(""),
                binary(b""),
                Incoming::Ping(Bytes::new()),
                Incoming::Pong(Bytes::new()),
                text(""),
                Incoming::Close(None),
            ]
        );
    }
}

// ---------------------------------------------------------------------------
// §5.1 / §5.3 Masking
// ---------------------------------------------------------------------------

mod s5_3_masking {
    use super::*;

    #[test]
    fn an_unmasked_frame_to_a_server_fails_with_1002() {
        for opcode in [OpCode::Text, OpCode::Binary, OpCode::Ping, OpCode::Close] {
            let wire = frame_to(Role::Client, true, opcode, b"");
            let (e, at) = assert_fails(&wire, Role::Server, PROTOCOL_ERROR);
            assert_eq!(e, ProtocolError::UnmaskedFrame);
            assert_eq!(at, 2);
        }
        // Also a continuation frame inside a properly masked message.
        let wire = concat(&[
            &frame_to(Role::Server, false, OpCode::Text, b"a"),
            &frame_to(Role::Client, true, OpCode::Continuation, b"b"),
        ]);
        let (e, _) = assert_fails(&wire, Role::Server, PROTOCOL_ERROR);
        assert_eq!(e, ProtocolError::UnmaskedFrame);
    }

    #[test]
    fn a_masked_frame_to_a_client_fails_with_1002() {
        for opcode in [OpCode::Text, OpCode::Binary, OpCode::Pong, OpCode::Close] {
            let wire = frame_to(Role::Server, true, opcode, b"");
            let (e, _) = assert_fails(&wire, Role::Client, PROTOCOL_ERROR);
            assert_eq!(e, ProtocolError::MaskedFrame);
        }
    }

    #[test]
    fn a_zero_key_is_still_a_masked_frame() {
        let mut header = FrameHeader::new(OpCode::Text, 0);
        header.mask = Some([0; 4]);
        let wire = raw(header, b"plain");
        assert_eq!(decode_ok(Role::Server, &wire), [text("plain")]);
        let (e, _) = assert_fails(&wire, Role::Client, PROTOCOL_ERROR);
        assert_eq!(e, ProtocolError::MaskedFrame);
    }
}

// ---------------------------------------------------------------------------
// §5.4 Fragmentation
// ---------------------------------------------------------------------------

mod s5_4_fragmentation {
    use super::*;

    #[test]
    fn continuation_without_a_message_fails_with_1002() {
        for role in [Role::Server, Role::Client] {
            for fin in [true, false] {
                let wire = frame_to(role, fin, OpCode::Continuation, b"x");
                let (e, _) = assert_fails(&wire, role, PROTOCOL_ERROR);
                assert_eq!(e, ProtocolError::UnexpectedContinuation);
            }
            // After a complete message, too.
            let wire = concat(&[
                &frame_to(role, true, OpCode::Text, b"done"),
                &frame_to(role, true, OpCode::Continuation, b"x"),
            ]);
            let (e, _) = assert_fails(&wire, role, PROTOCOL_ERROR);
            assert_eq!(e, ProtocolError::UnexpectedContinuation);
        }
    }

    #[test]
    fn a_new_data_frame_inside_a_fragmented_message_fails_with_1002() {
        for role in [Role::Server, Role::Client] {
            for first in [OpCode::Text, OpCode::Binary] {
                for second in [OpCode::Text, OpCode::Binary] {
                    for fin in [true, false] {
                        let wire = concat(&[
                            &frame_to(role, false, first, b"a"),
                            &frame_to(role, fin, second, b"b"),
                        ]);
                        let (e, _) = assert_fails(&wire, role, PROTOCOL_ERROR);
                        assert_eq!(e, ProtocolError::ExpectedContinuation);
                    }
                }
            }
        }
    }

    #[test]
    fn control_frames_interleaved_in_a_fragmented_message_are_delivered() {
        for role in [Role::Server, Role::Client] {
            let wire = concat(&[
                &frame_to(role, false, OpCode::Text, b"Hel"),
                &frame_to(role, true, OpCode::Ping, b"p1"),
                &frame_to(role, false, OpCode::Continuation, b""),
                &frame_to(role, true, OpCode::Pong, b"p2"),
                &frame_to(role, true, OpCode::Ping, b""),
                &frame_to(role, true, OpCode::Continuation, b"lo"),
            ]);
            assert_eq!(
                decode_ok(role, &wire),
                [
                    Incoming::Ping(Bytes::from_static(b"p1")),
                    Incoming::Pong(Bytes::from_static(b"p2")),
                    Incoming::Ping(Bytes::new()),
                    text("Hello"),
                ]
            );
        }
    }

    #[test]
    fn a_close_inside_a_fragmented_message_is_delivered() {
        let wire = concat(&[
            &frame_to(Role::Client, false, OpCode::Binary, b"ab"),
            &frame_to(Role::Client, true, OpCode::Close, b"\x03\xe8"),
        ]);
        assert_eq!(
            decode_ok(Role::Client, &wire),
            [Incoming::Close(Some(CloseFrame::new(1000, "")))]
        );
    }

    #[test]
    fn a_message_in_many_fragments_assembles() {
        let mut wire = frame_to(Role::Server, false, OpCode::Binary, b"");
        let mut expected = Vec::new();
        for i in 0..200u8 {
            let piece = vec![i; usize::from(i % 7)];
            expected.extend_from_slice(&piece);
            wire.extend(frame_to(
                Role::Server,
                i == 199,
                OpCode::Continuation,
                &piece,
            ));
        }
        assert_eq!(decode_ok(Role::Server, &wire), [binary(&expected)]);
    }

    #[test]
    fn fragment_mode_reports_offsets_and_fin() {
        let wire = concat(&[
            &frame_to(Role::Client, false, OpCode::Text, b"Hel"),
            &frame_to(Role::Client, true, OpCode::Ping, b""),
            &frame_to(Role::Client, true, OpCode::Continuation, b"lo"),
        ]);
        let mut d = decoder(Role::Client);
        d.set_fragment_mode(true);
        let out = decode_whole(d, &wire);
        assert_eq!(out.error, None);
        let [
            Incoming::Fragment(a),
            Incoming::Ping(_),
            Incoming::Fragment(b),
        ] = &out.items[..]
        else {
            panic!("{:?}", out.items);
        };
        assert_eq!(
            (a.opcode, &a.data[..], a.message_offset, a.first, a.fin),
            (OpCode::Text, &b"Hel"[..], 0, true, false)
        );
        assert_eq!(
            (b.opcode, &b.data[..], b.message_offset, b.first, b.fin),
            (OpCode::Text, &b"lo"[..], 3, false, true)
        );
    }
}

// ---------------------------------------------------------------------------
// §5.5 Control frames
// ---------------------------------------------------------------------------

mod s5_5_control_frames {
    use super::*;

    #[test]
    fn a_fragmented_control_frame_fails_with_1002() {
        for role in [Role::Server, Role::Client] {
            for opcode in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
                let wire = frame_to(role, false, opcode, b"");
                let (e, _) = assert_fails(&wire, role, PROTOCOL_ERROR);
                assert_eq!(e, ProtocolError::FragmentedControlFrame);
            }
        }
    }

    #[test]
    fn a_control_frame_over_125_bytes_fails_with_1002_from_its_header() {
        for role in [Role::Server, Role::Client] {
            for opcode in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
                // 125 is fine (for a close: code 1000 and 123 bytes of reason).
                let mut payload = vec![b'a'; 125];
                payload[..2].copy_from_slice(&1000u16.to_be_bytes());
                let ok = frame_to(role, true, opcode, &payload);
                let items = decode_ok(role, &ok);
                assert_eq!(items.len(), 1);
                // 126: the header alone fails it.
                for len in [126u64, 65535, 1 << 40] {
                    let header = header_to(role, true, opcode, len);
                    let (e, at) = assert_fails(&header, role, PROTOCOL_ERROR);
                    assert_eq!(e, ProtocolError::ControlFrameTooLong(len));
                    assert_eq!(at, header.len());
                }
            }
        }
    }

    #[test]
    fn ping_and_pong_payloads_are_delivered_unmasked() {
        let payload: Vec<u8> = (0..125).collect();
        let wire = concat(&[
            &frame_to(Role::Server, true, OpCode::Ping, &payload),
            &frame_to(Role::Server, true, OpCode::Pong, &payload[..3]),
        ]);
        assert_eq!(
            decode_ok(Role::Server, &wire),
            [
                Incoming::Ping(Bytes::from(payload.clone())),
                Incoming::Pong(Bytes::copy_from_slice(&payload[..3])),
            ]
        );
    }
}

// ---------------------------------------------------------------------------
// §5.5.1 / §7.4 Close frames and status codes
// ---------------------------------------------------------------------------

mod s7_4_close {
    use super::*;

    fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
        concat(&[&code.to_be_bytes(), reason])
    }

    #[test]
    fn an_empty_close_has_no_status() {
        for role in [Role::Server, Role::Client] {
            let wire = frame_to(role, true, OpCode::Close, b"");
            assert_eq!(decode_ok(role, &wire), [Incoming::Close(None)]);
        }
    }

    #[test]
    fn a_one_byte_close_payload_fails_with_1002() {
        for role in [Role::Server, Role::Client] {
            let wire = frame_to(role, true, OpCode::Close, &[0x03]);
            let (e, _) = assert_fails(&wire, role, PROTOCOL_ERROR);
            assert_eq!(e, ProtocolError::InvalidClosePayload);
        }
    }

    #[test]
    fn invalid_close_codes_fail_with_1002() {
        for role in [Role::Server, Role::Client] {
            for code in [
                0u16, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
            ] {
                for reason in [&b""[..], b"why"] {
                    let wire = frame_to(role, true, OpCode::Close, &close_payload(code, reason));
                    let (e, _) = assert_fails(&wire, role, PROTOCOL_ERROR);
                    assert_eq!(e, ProtocolError::InvalidCloseCode(code));
                }
            }
        }
    }

    #[test]
    fn valid_close_codes_are_delivered() {
        let codes = (1000..=1003)
            .chain(1007..=1014)
            .chain([3000, 3999, 4000, 4999]);
        for role in [Role::Server, Role::Client] {
            for code in codes.clone() {
                let wire = frame_to(role, true, OpCode::Close, &close_payload(code, b"bye"));
                let items = decode_ok(role, &wire);
                let [Incoming::Close(Some(frame))] = &items[..] else {
                    panic!("{code}: {items:?}");
                };
                assert_eq!(frame.code, CloseCode(code));
                assert_eq!(frame.reason(), "bye");
            }
        }
    }

    #[test]
    fn a_close_reason_with_invalid_utf8_fails_with_1007() {
        let bad_reasons: [&[u8]; 5] = [
            b"\xff",
            b"ok\xc0\x80",
            // "κόσμε" then a surrogate (U+D800), as in Autobahn 7.5.1.
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
            // Cut inside a code point.
            b"\xe2\x82",
            b"\xf4\x90\x80\x80",
        ];
        for role in [Role::Server, Role::Client] {
            for reason in bad_reasons {
                let wire = frame_to(role, true, OpCode::Close, &close_payload(1000, reason));
                let (e, _) = assert_fails(&wire, role, INVALID_PAYLOAD);
                assert_eq!(e, ProtocolError::InvalidUtf8);
            }
        }
    }

    #[test]
    fn a_close_reason_of_123_bytes_of_utf8_is_accepted() {
        let reason = "é".repeat(61) + "x"; // 123 bytes
        assert_eq!(reason.len(), 123);
        let wire = frame_to(
            Role::Server,
            true,
            OpCode::Close,
            &close_payload(4000, reason.as_bytes()),
        );
        let items = decode_ok(Role::Server, &wire);
        assert_eq!(
            items,
            [Incoming::Close(Some(CloseFrame::new(4000, &reason)))]
        );
    }

    #[test]
    fn nothing_may_follow_a_close_frame() {
        for role in [Role::Server, Role::Client] {
            let wire = concat(&[
                &frame_to(role, true, OpCode::Close, &close_payload(1000, b"")),
                &frame_to(role, true, OpCode::Text, b"late"),
            ]);
            let out = decode_whole(decoder(role), &wire);
            assert_eq!(out.items.len(), 1, "{:?}", out.items);
            let e = out.error.unwrap();
            assert_eq!(e, ProtocolError::FrameAfterClose);
            assert_eq!(e.close_code(), CloseCode(PROTOCOL_ERROR));
        }
    }
}

// ---------------------------------------------------------------------------
// §8.1 Handling errors in UTF-8-encoded data (fail fast)
// ---------------------------------------------------------------------------

mod s8_1_utf8 {
    use super::*;

    /// "κόσμε", U+D800 (a surrogate: invalid) and "edited" (Autobahn 6.4.1).
    const KOSME_SURROGATE: &[u8] =
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64";
    /// The index of the byte that makes it invalid (0xA0 after 0xED).
    const BAD_AT: usize = 12;

    #[test]
    fn invalid_utf8_in_a_single_frame_text_fails_with_1007() {
        for role in [Role::Server, Role::Client] {
            for bad in [&b"\xff"[..], b"\xc0\xaf", b"abc\xed\xa0\x80", b"\xe2\x82"] {
                let wire = frame_to(role, true, OpCode::Text, bad);
                let (e, _) = assert_fails(&wire, role, INVALID_PAYLOAD);
                assert_eq!(e, ProtocolError::InvalidUtf8);
            }
        }
    }

    #[test]
    fn binary_messages_are_not_checked() {
        let wire = frame_to(Role::Server, true, OpCode::Binary, b"\xff\xfe\xed\xa0\x80");
        assert_eq!(
            decode_ok(Role::Server, &wire),
            [binary(b"\xff\xfe\xed\xa0\x80")]
        );
    }

    #[test]
    fn fails_inside_a_frame_before_the_rest_of_its_payload_arrives() {
        for role in [Role::Server, Role::Client] {
            let wire = frame_to(role, true, OpCode::Text, KOSME_SURROGATE);
            let header_len = wire.len() - KOSME_SURROGATE.len();
            let (e, at) = assert_fails(&wire, role, INVALID_PAYLOAD);
            assert_eq!(e, ProtocolError::InvalidUtf8);
            // Byte-wise: the error comes with the 0xA0, not at the end.
            assert_eq!(at, header_len + BAD_AT + 1, "{role:?}");
        }
    }

    #[test]
    fn fails_in_the_fragment_that_makes_the_text_invalid() {
        for role in [Role::Server, Role::Client] {
            // The first fragment ends inside the bad sequence; the second
            // completes it; more fragments would follow but never arrive.
            let (a, b) = KOSME_SURROGATE.split_at(BAD_AT);
            let first = frame_to(role, false, OpCode::Text, a);
            let second = frame_to(role, false, OpCode::Continuation, b);
            let wire = concat(&[&first, &second]);
            let (e, at) = assert_fails(&wire, role, INVALID_PAYLOAD);
            assert_eq!(e, ProtocolError::InvalidUtf8);
            let second_header = second.len() - b.len();
            assert_eq!(at, first.len() + second_header + 1, "{role:?}");
        }
    }

    #[test]
    fn a_non_final_fragment_that_is_invalid_fails_without_waiting_for_fin() {
        for role in [Role::Server, Role::Client] {
            let wire = concat(&[
                &frame_to(role, false, OpCode::Text, "κόσμε".as_bytes()),
                &frame_to(role, false, OpCode::Continuation, b"ok\xf4\x90"),
            ]);
            let whole = decode_whole(decoder(role), &wire);
            assert_eq!(whole.items, []);
            assert_eq!(whole.error, Some(ProtocolError::InvalidUtf8));
            // Byte-wise: at the 0x90 (out of range after 0xF4), i.e. the
            // last byte.
            let (_, at) = assert_fails(&wire, role, INVALID_PAYLOAD);
            assert_eq!(at, wire.len());
        }
    }

    #[test]
    fn a_code_point_split_across_fragments_is_valid() {
        for role in [Role::Server, Role::Client] {
            let s = "a€𝄞z";
            let bytes = s.as_bytes();
            for cut in 0..=bytes.len() {
                let wire = concat(&[
                    &frame_to(role, false, OpCode::Text, &bytes[..cut]),
                    &frame_to(role, true, OpCode::Ping, b""),
                    &frame_to(role, true, OpCode::Continuation, &bytes[cut..]),
                ]);
                assert_eq!(
                    decode_ok(role, &wire),
                    [Incoming::Ping(Bytes::new()), text(s)],
                    "cut {cut}"
                );
            }
        }
    }

    #[test]
    fn a_text_ending_inside_a_code_point_fails_at_fin() {
        for role in [Role::Server, Role::Client] {
            let wire = concat(&[
                &frame_to(role, false, OpCode::Text, b"ok\xe2\x82"),
                &frame_to(role, true, OpCode::Continuation, b""),
            ]);
            let (e, at) = assert_fails(&wire, role, INVALID_PAYLOAD);
            assert_eq!(e, ProtocolError::InvalidUtf8);
            assert_eq!(at, wire.len());
        }
    }
}

// ---------------------------------------------------------------------------
// §10.4 Implementation-specific limits (close code 1009)
// ---------------------------------------------------------------------------

mod s10_4_limits {
    use super::*;

    fn limited(role: Role, limits: Limits) -> impl Fn() -> Decoder {
        move || Decoder::new(role, limits, None)
    }

    #[test]
    fn a_frame_over_the_frame_limit_fails_from_its_header() {
        let limits = Limits::default().max_frame_size(100);
        for role in [Role::Server, Role::Client] {
            // Exactly at the limit: fine.
            let ok = frame_to(role, true, OpCode::Binary, &[1; 100]);
            assert_eq!(decode_ok_with(limited(role, limits), &ok).len(), 1);
            // One more, with only the header sent.
            for opcode in [OpCode::Binary, OpCode::Text] {
                let header = header_to(role, true, opcode, 101);
                let (e, at) = assert_fails_with(limited(role, limits), &header, MESSAGE_TOO_BIG);
                assert_eq!(
                    e,
                    ProtocolError::FrameTooLarge {
                        size: 101,
                        max: 100
                    }
                );
                assert_eq!(at, header.len());
            }
            // A huge 64-bit length fails the same way.
            let header = header_to(role, true, OpCode::Binary, 1 << 62);
            let (e, _) = assert_fails_with(limited(role, limits), &header, MESSAGE_TOO_BIG);
            assert_eq!(
                e,
                ProtocolError::FrameTooLarge {
                    size: 1 << 62,
                    max: 100
                }
            );
        }
    }

    #[test]
    fn a_message_over_the_message_limit_fails_from_the_header_that_passes_it() {
        let limits = Limits::default().max_message_size(100).max_frame_size(1000);
        for role in [Role::Server, Role::Client] {
            // 60 + 40 = 100: fine.
            let ok = concat(&[
                &frame_to(role, false, OpCode::Binary, &[1; 60]),
                &frame_to(role, true, OpCode::Continuation, &[2; 40]),
            ]);
            assert_eq!(decode_ok_with(limited(role, limits), &ok).len(), 1);
            // 60 + 41: the second header fails, before its payload.
            let wire = concat(&[
                &frame_to(role, false, OpCode::Text, &[b'a'; 60]),
                &header_to(role, true, OpCode::Continuation, 41),
            ]);
            let (e, at) = assert_fails_with(limited(role, limits), &wire, MESSAGE_TOO_BIG);
            assert_eq!(
                e,
                ProtocolError::MessageTooLarge {
                    size: 101,
                    max: 100
                }
            );
            assert_eq!(at, wire.len());
            // A single frame over the message limit: the frame limit is
            // the smaller of the two.
            let header = header_to(role, true, OpCode::Binary, 101);
            let (e, _) = assert_fails_with(limited(role, limits), &header, MESSAGE_TOO_BIG);
            assert_eq!(
                e,
                ProtocolError::FrameTooLarge {
                    size: 101,
                    max: 100
                }
            );
        }
    }

    #[test]
    fn the_message_limit_counts_the_whole_message_not_each_message() {
        let limits = Limits::default().max_message_size(10);
        let mut wire = Vec::new();
        for _ in 0..20 {
            wire.extend(frame_to(Role::Server, true, OpCode::Binary, &[7; 10]));
        }
        assert_eq!(
            decode_ok_with(limited(Role::Server, limits), &wire).len(),
            20
        );
    }

    #[test]
    fn too_many_fragments_fail_with_1009() {
        let limits = Limits::default().max_fragments(3);
        for role in [Role::Server, Role::Client] {
            let ok = concat(&[
                &frame_to(role, false, OpCode::Text, b"a"),
                &frame_to(role, false, OpCode::Continuation, b""),
                &frame_to(role, true, OpCode::Continuation, b"c"),
            ]);
            assert_eq!(decode_ok_with(limited(role, limits), &ok), [text("ac")]);
            let wire = concat(&[
                &frame_to(role, false, OpCode::Binary, b"a"),
                &frame_to(role, false, OpCode::Continuation, b""),
                &frame_to(role, false, OpCode::Continuation, b""),
                &header_to(role, true, OpCode::Continuation, 5),
            ]);
            let (e, at) = assert_fails_with(limited(role, limits), &wire, MESSAGE_TOO_BIG);
            assert_eq!(e, ProtocolError::TooManyFragments { max: 3 });
            assert_eq!(at, wire.len());
        }
    }

    #[test]
    fn control_frames_do_not_count_as_fragments() {
        let limits = Limits::default().max_fragments(2);
        let mut wire = frame_to(Role::Server, false, OpCode::Text, b"a");
        for _ in 0..10 {
            wire.extend(frame_to(Role::Server, true, OpCode::Ping, b""));
        }
        wire.extend(frame_to(Role::Server, true, OpCode::Continuation, b"b"));
        let items = decode_ok_with(limited(Role::Server, limits), &wire);
        assert_eq!(items.len(), 11);
        assert_eq!(items.last(), Some(&text("ab")));
    }
}

// ---------------------------------------------------------------------------
// RFC 7692 permessage-deflate on the frame layer
// ---------------------------------------------------------------------------

mod rfc7692_deflate {
    use super::*;

    #[test]
    fn a_compressed_message_that_inflates_past_the_limit_fails_with_1009() {
        let limits = Limits::default().max_message_size(1000);
        for sender in [Role::Client, Role::Server] {
            let (mut enc, make) = deflate_pair(sender, limits);
            let mut q = WriteQueue::new();
            // Exactly at the limit: fine.
            enc.binary(&vec![b'a'; 1000], &mut q).unwrap();
            let at_limit = q.take();
            // 100 KB of 'a' compress to a few hundred bytes on the wire.
            enc.binary(&vec![b'a'; 100_000], &mut q).unwrap();
            let bomb = q.take();
            assert!(bomb.len() < 1000, "compressed to {} bytes", bomb.len());
            let frames = parse_frames(&bomb);
            assert!(frames[0].0.rsv1);

            let wire = concat(&[&at_limit, &bomb]);
            let out = decode_whole(make(), &wire);
            assert_eq!(out.items, [binary(&[b'a'; 1000])]);
            let e = out.error.expect("the bomb was accepted");
            assert!(
                matches!(e, ProtocolError::MessageTooLarge { max: 1000, .. }),
                "{e:?}"
            );
            assert_eq!(e.close_code(), CloseCode(MESSAGE_TOO_BIG));
        }
    }

    #[test]
    fn a_fragmented_compressed_message_that_inflates_past_the_limit_fails_with_1009() {
        let limits = Limits::default().max_message_size(5000);
        let (mut enc, make) = deflate_pair(Role::Client, limits);
        let mut q = WriteQueue::new();
        for i in 0..4 {
            enc.fragment(OpCode::Text, &[b'z'; 2000], i == 3, &mut q)
                .unwrap();
        }
        let wire = q.to_vec();
        let (e, _) = assert_fails_with(make, &wire, MESSAGE_TOO_BIG);
        assert!(matches!(
            e,
            ProtocolError::MessageTooLarge { max: 5000, .. }
        ));
    }

    #[test]
    fn compressed_text_with_invalid_utf8_fails_with_1007() {
        let (mut enc, make) = deflate_pair(Role::Client, Limits::default());
        let mut q = WriteQueue::new();
        // The encoder does not look inside: an invalid "text" goes out as is.
        enc.message(OpCode::Text, b"abc\xed\xa0\x80def", &mut q)
            .unwrap();
        let (e, _) = assert_fails_with(make, &q.to_vec(), INVALID_PAYLOAD);
        assert_eq!(e, ProtocolError::InvalidUtf8);
    }

    #[test]
    fn corrupt_deflate_data_fails_with_1007() {
        let (_, make) = deflate_pair(Role::Client, Limits::default());
        let mut header = FrameHeader::new(OpCode::Binary, 0);
        header.rsv1 = true;
        header.mask = Some(KEY);
        // Block type 3 is reserved in DEFLATE.
        let wire = raw(header, &[0xff, 0xff, 0xff, 0xff]);
        let (e, _) = assert_fails_with(make, &wire, INVALID_PAYLOAD);
        assert!(
            matches!(e, ProtocolError::InvalidCompressedData(_)),
            "{e:?}"
        );
    }

    #[test]
    fn rsv1_on_a_control_or_continuation_frame_fails_with_1002() {
        let (_, make) = deflate_pair(Role::Client, Limits::default());
        let mut ping = FrameHeader::new(OpCode::Ping, 0);
        ping.rsv1 = true;
        ping.mask = Some(KEY);
        let (e, _) = assert_fails_with(&make, &raw(ping, b""), PROTOCOL_ERROR);
        assert_eq!(e, ProtocolError::ReservedBits);

        let mut cont = FrameHeader::new(OpCode::Continuation, 0);
        cont.rsv1 = true;
        cont.mask = Some(KEY);
        let wire = concat(&[
            &frame_to(Role::Server, false, OpCode::Binary, b"a"),
            &raw(cont, b"b"),
        ]);
        let (e, _) = assert_fails_with(&make, &wire, PROTOCOL_ERROR);
        assert_eq!(e, ProtocolError::ReservedBits);

        // RSV2 and RSV3 stay reserved with deflate on.
        let mut rsv2 = FrameHeader::new(OpCode::Text, 0);
        rsv2.rsv2 = true;
        rsv2.mask = Some(KEY);
        let (e, _) = assert_fails_with(&make, &raw(rsv2, b""), PROTOCOL_ERROR);
        assert_eq!(e, ProtocolError::ReservedBits);
    }

    #[test]
    fn uncompressed_messages_are_accepted_with_deflate_on() {
        let (_, make) = deflate_pair(Role::Client, Limits::default());
        let wire = concat(&[
            &frame_to(Role::Server, true, OpCode::Text, b"plain"),
            &frame_to(Role::Server, true, OpCode::Binary, b"\x00\x01"),
        ]);
        assert_eq!(
            decode_ok_with(make, &wire),
            [text("plain"), binary(b"\x00\x01")]
        );
    }

    #[test]
    fn rfc7692_7_2_3_1_hello_compressed_is_decoded() {
        // "Hello" compressed, from RFC 7692 §7.2.3.1, sent by a server.
        let mut header = FrameHeader::new(OpCode::Text, 0);
        header.rsv1 = true;
        let wire = raw(header, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
        let (_, make) = deflate_pair(Role::Server, Limits::default());
        assert_eq!(decode_ok_with(&make, &wire), [text("Hello")]);
        // §7.2.3.1 also shows it split over two frames.
        let mut first = FrameHeader::new(OpCode::Text, 0);
        first.rsv1 = true;
        first.fin = false;
        let wire = concat(&[
            &raw(first, &[0xf2, 0x48, 0xcd]),
            &raw(
                FrameHeader::new(OpCode::Continuation, 0),
                &[0xc9, 0xc9, 0x07, 0x00],
            ),
        ]);
        assert_eq!(decode_ok_with(&make, &wire), [text("Hello")]);
    }

    #[test]
    fn rfc7692_7_2_3_2_context_takeover_is_decoded() {
        // Two "Hello"s, the second referring back into the first.
        let mut header = FrameHeader::new(OpCode::Text, 0);
        header.rsv1 = true;
        let wire = concat(&[
            &raw(header, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]),
            &raw(header, &[0xf2, 0x00, 0x11, 0x00, 0x00]),
        ]);
        let (_, make) = deflate_pair(Role::Server, Limits::default());
        assert_eq!(decode_ok_with(make, &wire), [text("Hello"), text("Hello")]);
    }
}

// ---------------------------------------------------------------------------
// Zero-copy delivery (ARCHITECTURE.md, "One received message": the text
// message holds a slice of the read buffer)
// ---------------------------------------------------------------------------

mod zero_copy {
    use super::*;

    #[test]
    fn a_single_frame_message_points_into_the_read_buffer() {
        for role in [Role::Server, Role::Client] {
            for opcode in [OpCode::Text, OpCode::Binary] {
                for len in [5usize, 300, 70_000] {
                    let payload = vec![b'x'; len];
                    let wire = frame_to(role, true, opcode, &payload);
                    let header_len = wire.len() - len;
                    let mut buf = BytesMut::with_capacity(wire.len() + 64);
                    buf.extend_from_slice(&wire);
                    let base = buf.as_ptr() as usize;
                    let mut d = decoder(role);
                    let item = d.decode(&mut buf).unwrap().unwrap();
                    let ptr = match &item {
                        Incoming::Text(t) => t.as_bytes().as_ptr(),
                        Incoming::Binary(b) => b.as_ptr(),
                        other => panic!("{other:?}"),
                    } as usize;
                    assert_eq!(ptr, base + header_len, "{role:?} {opcode:?} {len}");
                }
            }
        }
    }

    #[test]
    fn a_message_completed_by_a_later_read_still_points_into_the_buffer() {
        // The payload arrives in pieces into one buffer with room to spare:
        // the unmasked bytes are not copied out when the frame completes.
        let payload = "κόσμε".repeat(50);
        let wire = frame_to(Role::Server, true, OpCode::Text, payload.as_bytes());
        let header_len = wire.len() - payload.len();
        let mut buf = BytesMut::with_capacity(wire.len());
        let base = buf.as_ptr() as usize;
        let mut d = decoder(Role::Server);
        let mut got = None;
        for chunk in wire.chunks(37) {
            buf.extend_from_slice(chunk);
            if let Some(item) = d.decode(&mut buf).unwrap() {
                got = Some(item);
            }
        }
        let Some(Incoming::Text(t)) = got else {
            panic!("{got:?}");
        };
        assert_eq!(t.as_str(), payload);
        assert_eq!(t.as_bytes().as_ptr() as usize, base + header_len);
    }

    #[test]
    fn control_frame_payloads_point_into_the_read_buffer() {
        let wire = frame_to(Role::Server, true, OpCode::Ping, b"ping!");
        let mut buf = BytesMut::from(&wire[..]);
        let base = buf.as_ptr() as usize;
        let Some(Incoming::Ping(p)) = decoder(Role::Server).decode(&mut buf).unwrap() else {
            panic!("no ping");
        };
        assert_eq!(&p[..], b"ping!");
        assert_eq!(p.as_ptr() as usize, base + wire.len() - 5);
    }
}

// ---------------------------------------------------------------------------
// Encoder rules (§5.1, §5.3, §5.4, §5.5, §5.5.1; RFC 7692 §6)
// ---------------------------------------------------------------------------

mod encoder_rules {
    use super::*;

    /// Encodes a mix of every kind of frame.
    fn everything(enc: &mut Encoder, q: &mut WriteQueue) {
        enc.text("Hello", q).unwrap();
        enc.binary(&[0u8; 300], q).unwrap();
        enc.message(OpCode::Binary, b"", q).unwrap();
        enc.message_bytes(OpCode::Text, Bytes::from(vec![b'a'; 5000]), q)
            .unwrap();
        enc.fragment(OpCode::Text, b"He", false, q).unwrap();
        enc.ping(b"p", q).unwrap();
        enc.fragment(OpCode::Text, b"ll", false, q).unwrap();
        enc.fragment(OpCode::Text, b"o", true, q).unwrap();
        for i in 0..16u8 {
            enc.pong(&[i], q).unwrap();
        }
        enc.close(Some(&CloseFrame::new(1000, "bye")), q).unwrap();
    }

    #[test]
    fn a_client_masks_every_frame_with_varying_keys() {
        let mut enc = Encoder::new(Role::Client, None);
        let mut q = WriteQueue::new();
        everything(&mut enc, &mut q);
        let wire = q.to_vec();
        let frames = parse_frames(&wire);
        assert_eq!(frames.len(), 25);
        let keys: Vec<[u8; 4]> = frames
            .iter()
            .map(|(h, _)| h.mask.expect("unmasked client frame"))
            .collect();
        let mut distinct = keys.clone();
        distinct.sort_unstable();
        distinct.dedup();
        // 25 random 32-bit keys: a repeat is a 1-in-14-million event, all
        // keys equal is impossible in practice.
        assert!(distinct.len() >= 24, "keys repeat: {keys:02x?}");
        // The masked payloads are not the plain text.
        assert_ne!(&wire[6..11], b"Hello");
        // A server decodes the stream.
        let items = decode_ok(Role::Server, &wire);
        assert_eq!(items.len(), 1 + 1 + 1 + 1 + 1 + 1 + 16 + 1);
        assert_eq!(items[0], text("Hello"));
        assert_eq!(items[5], text("Hello"));
        assert_eq!(
            items.last(),
            Some(&Incoming::Close(Some(CloseFrame::new(1000, "bye"))))
        );
    }

    #[test]
    fn a_server_never_masks() {
        let mut enc = Encoder::new(Role::Server, None);
        let mut q = WriteQueue::new();
        everything(&mut enc, &mut q);
        let wire = q.to_vec();
        let frames = parse_frames(&wire);
        assert_eq!(frames.len(), 25);
        assert!(frames.iter().all(|(h, _)| h.mask.is_none()));
        assert_eq!(decode_ok(Role::Client, &wire).len(), 23);
    }

    /// RFC 6455 §7.4: 1005, 1006 and 1015 "MUST NOT be set as a status code
    /// in a Close control frame", and codes outside the ranges are invalid
    /// too. The encoder used to send whatever it was given (the peer then
    /// failed the connection with 1002); found by the `connection` fuzz
    /// target.
    #[test]
    fn close_codes_not_allowed_on_the_wire_are_refused() {
        for role in [Role::Client, Role::Server] {
            for code in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535] {
                let mut enc = Encoder::new(role, None);
                let mut q = WriteQueue::new();
                let frame = CloseFrame::new(code, "x");
                assert_eq!(
                    enc.close(Some(&frame), &mut q),
                    Err(EncodeError::InvalidCloseCode(CloseCode(code))),
                    "code {code}"
                );
                assert!(q.is_empty(), "code {code} was queued");
                assert!(!enc.is_closed(), "a refused close still closed");
                // A valid code still goes out afterwards.
                enc.close(Some(&CloseFrame::new(1000, "")), &mut q).unwrap();
                assert!(enc.is_closed());
            }
        }
    }

    #[test]
    fn nothing_is_encoded_after_close() {
        for role in [Role::Client, Role::Server] {
            let mut enc = Encoder::new(role, None);
            let mut q = WriteQueue::new();
            enc.close(None, &mut q).unwrap();
            assert!(enc.is_closed());
            let sent = q.len();
            assert_eq!(enc.text("x", &mut q), Err(EncodeError::Closed));
            assert_eq!(enc.binary(b"x", &mut q), Err(EncodeError::Closed));
            assert_eq!(
                enc.message_bytes(OpCode::Binary, Bytes::from_static(b"x"), &mut q),
                Err(EncodeError::Closed)
            );
            assert_eq!(
                enc.fragment(OpCode::Text, b"x", true, &mut q),
                Err(EncodeError::Closed)
            );
            assert_eq!(enc.ping(b"", &mut q), Err(EncodeError::Closed));
            assert_eq!(enc.pong(b"", &mut q), Err(EncodeError::Closed));
            assert_eq!(enc.close(None, &mut q), Err(EncodeError::Closed));
            assert_eq!(q.len(), sent, "bytes were queued after close");
            // The close frame itself is empty (1005 on the other side).
            assert_eq!(decode_ok(peer(role), &q.to_vec()), [Incoming::Close(None)]);
        }
    }

    #[test]
    fn control_payloads_over_125_bytes_are_rejected() {
        for role in [Role::Client, Role::Server] {
            let mut enc = Encoder::new(role, None);
            let mut q = WriteQueue::new();
            assert_eq!(
                enc.ping(&[0; 126], &mut q),
                Err(EncodeError::ControlTooLong(126))
            );
            assert_eq!(
                enc.pong(&[0; 1000], &mut q),
                Err(EncodeError::ControlTooLong(1000))
            );
            assert!(q.is_empty());
            enc.ping(&[7; 125], &mut q).unwrap();
            let frames = parse_frames(&q.to_vec());
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0].0.opcode, OpCode::Ping);
            assert_eq!(frames[0].1, [7; 125]);
        }
    }

    #[test]
    fn a_long_close_reason_is_cut_to_fit_a_control_frame() {
        let mut enc = Encoder::new(Role::Server, None);
        let mut q = WriteQueue::new();
        enc.close(Some(&CloseFrame::new(4001, &"€".repeat(100))), &mut q)
            .unwrap();
        let frames = parse_frames(&q.to_vec());
        assert!(frames[0].1.len() <= 125);
        let items = decode_ok(Role::Client, &q.to_vec());
        let [Incoming::Close(Some(frame))] = &items[..] else {
            panic!("{items:?}");
        };
        assert_eq!(frame.code, CloseCode(4001));
        assert_eq!(frame.reason(), "€".repeat(41));
    }

    #[test]
    fn the_fragment_api_sets_fin_and_continuation_opcodes() {
        for role in [Role::Client, Role::Server] {
            let mut enc = Encoder::new(role, None);
            let mut q = WriteQueue::new();
            enc.fragment(OpCode::Binary, b"a", false, &mut q).unwrap();
            // Whole messages are refused mid-fragment; control frames pass.
            assert_eq!(
                enc.binary(b"x", &mut q),
                Err(EncodeError::FragmentInProgress)
            );
            assert_eq!(
                enc.message_bytes(OpCode::Text, Bytes::from_static(b"x"), &mut q),
                Err(EncodeError::FragmentInProgress)
            );
            enc.ping(b"", &mut q).unwrap();
            enc.fragment(OpCode::Binary, b"b", false, &mut q).unwrap();
            enc.fragment(OpCode::Binary, b"", true, &mut q).unwrap();
            // A single-fragment message: FIN on the first frame.
            enc.fragment(OpCode::Text, b"solo", true, &mut q).unwrap();
            // Continuation and control opcodes are not data opcodes.
            assert_eq!(
                enc.fragment(OpCode::Continuation, b"", true, &mut q),
                Err(EncodeError::NotADataOpcode(OpCode::Continuation))
            );
            assert_eq!(
                enc.message(OpCode::Ping, b"", &mut q),
                Err(EncodeError::NotADataOpcode(OpCode::Ping))
            );
            let frames = parse_frames(&q.to_vec());
            let shape: Vec<(OpCode, bool, &[u8])> = frames
                .iter()
                .map(|(h, p)| (h.opcode, h.fin, &p[..]))
                .collect();
            assert_eq!(
                shape,
                [
                    (OpCode::Binary, false, &b"a"[..]),
                    (OpCode::Ping, true, &b""[..]),
                    (OpCode::Continuation, false, &b"b"[..]),
                    (OpCode::Continuation, true, &b""[..]),
                    (OpCode::Text, true, &b"solo"[..]),
                ]
            );
            assert!(frames.iter().all(|(h, _)| !h.rsv1 && !h.rsv2 && !h.rsv3));
            assert_eq!(
                decode_ok(peer(role), &q.to_vec()),
                [Incoming::Ping(Bytes::new()), binary(b"ab"), text("solo")]
            );
        }
    }

    #[test]
    fn compressed_messages_set_rsv1_on_the_first_frame_only() {
        for sender in [Role::Client, Role::Server] {
            let (mut enc, make) = deflate_pair(sender, Limits::default());
            let mut q = WriteQueue::new();
            let text_in = "compress me ".repeat(40);
            enc.fragment(OpCode::Text, &text_in.as_bytes()[..100], false, &mut q)
                .unwrap();
            enc.ping(b"between", &mut q).unwrap();
            enc.fragment(OpCode::Text, &text_in.as_bytes()[100..300], false, &mut q)
                .unwrap();
            enc.fragment(OpCode::Text, &text_in.as_bytes()[300..], true, &mut q)
                .unwrap();
            enc.text(&text_in, &mut q).unwrap();
            enc.close(Some(&CloseFrame::new(1000, "")), &mut q).unwrap();
            let wire = q.to_vec();
            let frames = parse_frames(&wire);
            let bits: Vec<(OpCode, bool, bool)> = frames
                .iter()
                .map(|(h, _)| (h.opcode, h.fin, h.rsv1))
                .collect();
            assert_eq!(
                bits,
                [
                    (OpCode::Text, false, true),
                    (OpCode::Ping, true, false),
                    (OpCode::Continuation, false, false),
                    (OpCode::Continuation, true, false),
                    (OpCode::Text, true, true),
                    (OpCode::Close, true, false),
                ]
            );
            // Compression did something.
            assert!(frames[4].1.len() < text_in.len() / 4);
            assert_eq!(
                decode_ok_with(make, &wire),
                [
                    Incoming::Ping(Bytes::from_static(b"between")),
                    text(&text_in),
                    text(&text_in),
                    Incoming::Close(Some(CloseFrame::new(1000, ""))),
                ]
            );
        }
    }

    #[test]
    fn messages_below_the_threshold_are_not_compressed() {
        let params = DeflateParams::default();
        let config = DeflateConfig::default();
        let threshold = config.threshold;
        let mut enc = Encoder::new(
            Role::Server,
            Some((params.server_compressor(&config), threshold)),
        );
        assert!(enc.is_compressing());
        let mut q = WriteQueue::new();
        enc.binary(&vec![1; threshold - 1], &mut q).unwrap();
        enc.binary(&vec![1; threshold], &mut q).unwrap();
        let frames = parse_frames(&q.to_vec());
        assert!(!frames[0].0.rsv1);
        assert!(frames[1].0.rsv1);
    }
}
