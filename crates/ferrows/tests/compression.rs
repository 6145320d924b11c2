//! permessage-deflate (RFC 7692) over loopback TCP: negotiation, round
//! trips on both sides of the threshold, what goes on the wire, fallback
//! when one side does not compress, and bad compressed input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use bytes::BytesMut;
use common::{RawPeer, echo_server, listen, next_msg, noise, text_of_len, within};
use ferrows::proto::OpCode;
use ferrows::proto::deflate::{Compressor, Decompressor};
use ferrows::proto::frame::FrameHeader;
use ferrows::{Bytes, ClientBuilder, Config, DeflateConfig, Error, Fragment, Message, WebSocket};
use tokio::net::TcpStream;

const SIZES: [usize; 10] = [0, 1, 100, 255, 256, 257, 4096, 65_536, 200_000, 1 << 20];

/// Text that compresses well, of exactly `len` bytes.
fn compressible(len: usize) -> String {
    let mut s = "the quick brown fox jumps over the lazy dog. ".repeat(len / 45 + 1);
    s.truncate(len);
    s
}

#[tokio::test]
async fn negotiated_compression_round_trips_every_size() {
    let config = Config::default().compression(true);
    let (url, _server) = echo_server(config.clone()).await;
    let (mut ws, response) = within("connect", ClientBuilder::new(url).config(config).connect())
        .await
        .unwrap();
    let ext = response.header("sec-websocket-extensions").unwrap();
    assert!(ext.starts_with("permessage-deflate"), "{ext}");
    assert!(ws.compression().is_some());

    for (i, len) in SIZES.into_iter().enumerate() {
        // Well compressible text, incompressible binary, mixed UTF-8.
        for msg in [
            Message::text(compressible(len)),
            Message::binary(noise(len, i as u64)),
            Message::text(text_of_len(len)),
        ] {
            ws.send(msg.clone()).await.unwrap();
            assert!(next_msg(&mut ws).await == msg, "{len} bytes differ");
        }
    }
    within("close", ws.close(1000, "")).await.unwrap();
}

#[tokio::test]
async fn both_ends_agree_on_the_parameters() {
    let client_deflate = DeflateConfig::default()
        .server_no_context_takeover(true)
        .client_no_context_takeover(true)
        .server_max_window_bits(10)
        .client_max_window_bits(12);
    let (mut server, mut client) = common::pair(
        Config::default().compression(true),
        Config::default().deflate(client_deflate),
    )
    .await;
    let server_params = *server.compression().unwrap();
    let client_params = *client.compression().unwrap();
    assert!(server_params.server_no_context_takeover);
    assert_eq!(server_params.server_max_window_bits, 10);
    assert_eq!(server_params.client_max_window_bits, 12);
    assert_eq!(
        client_params.server_no_context_takeover,
        server_params.server_no_context_takeover
    );
    assert_eq!(
        client_params.server_max_window_bits,
        server_params.server_max_window_bits
    );
    assert_eq!(
        client_params.client_max_window_bits,
        server_params.client_max_window_bits
    );

    // Repeated messages in both directions: contexts reset (or not) in
    // step on both sides.
    for i in 0..20 {
        let text = format!("{} #{i}", compressible(5000));
        client.send(text.as_str()).await.unwrap();
        assert_eq!(next_msg(&mut server).await.as_text(), Some(text.as_str()));
        server.send(text.as_str()).await.unwrap();
        assert_eq!(next_msg(&mut client).await.as_text(), Some(text.as_str()));
    }
}

#[tokio::test]
async fn threshold_zero_compresses_even_empty_messages() {
    let deflate = DeflateConfig::default().threshold(0);
    let config = Config::default().deflate(deflate);
    let (mut server, mut client) = common::pair(config.clone(), config).await;
    for len in [0, 1, 2, 300] {
        let text = compressible(len);
        client.send(text.as_str()).await.unwrap();
        assert_eq!(next_msg(&mut server).await.as_text(), Some(text.as_str()));
        server.send(Bytes::from(text.clone())).await.unwrap();
        assert_eq!(
            next_msg(&mut client).await,
            Message::binary(text.into_bytes())
        );
    }
}

#[tokio::test]
async fn a_server_without_compression_falls_back_to_plain() {
    let (url, _server) = echo_server(Config::default()).await;
    let (mut ws, response) = within(
        "connect",
        ClientBuilder::new(url)
            .config(Config::default().compression(true))
            .connect(),
    )
    .await
    .unwrap();
    assert_eq!(response.header("sec-websocket-extensions"), None);
    assert!(ws.compression().is_none());
    let text = compressible(100_000);
    ws.send(text.as_str()).await.unwrap();
    assert_eq!(next_msg(&mut ws).await.as_text(), Some(text.as_str()));
    within("close", ws.close(1000, "")).await.unwrap();
}

#[tokio::test]
async fn a_client_without_compression_gets_plain_from_a_compressing_server() {
    let (mut server, mut client) =
        common::pair(Config::default().compression(true), Config::default()).await;
    assert!(server.compression().is_none());
    assert!(client.compression().is_none());
    let text = compressible(100_000);
    server.send(text.as_str()).await.unwrap();
    assert_eq!(next_msg(&mut client).await.as_text(), Some(text.as_str()));
}

/// A compressing server (default threshold, 256 bytes) and a raw client
/// that offered permessage-deflate.
async fn compressing_server_and_raw_client() -> (WebSocket<TcpStream>, RawPeer) {
    let (listener, _) = listen().await;
    let addr = listener.local_addr().unwrap();
    let server = async {
        let (stream, _) = listener.accept().await.unwrap();
        ferrows::Handshake::read(stream, Config::default().compression(true))
            .await
            .unwrap()
            .accept()
            .await
            .unwrap()
    };
    let client = async {
        let (raw, head) =
            RawPeer::connect(addr, "Sec-WebSocket-Extensions: permessage-deflate\r\n").await;
        assert!(
            head.contains("\r\nSec-WebSocket-Extensions: permessage-deflate\r\n"),
            "{head}"
        );
        raw
    };
    within("handshake", async { tokio::join!(server, client) }).await
}

#[tokio::test]
async fn small_messages_go_plain_and_large_ones_compressed_on_the_wire() {
    let (mut server, mut raw) = compressing_server_and_raw_client().await;
    let big = compressible(10_000);
    server.send("below the threshold").await.unwrap();
    server.send(big.as_str()).await.unwrap();
    server.send(noise(1000, 7)).await.unwrap();

    let small = raw.read_frame().await.unwrap();
    assert!(!small.header.rsv1, "short messages are not compressed");
    assert_eq!(small.payload, b"below the threshold");

    let large = raw.read_frame().await.unwrap();
    assert!(large.header.rsv1, "long messages are compressed");
    assert_eq!(large.opcode(), OpCode::Text);
    assert!(
        large.payload.len() < big.len() / 10,
        "{} bytes compressed to {}",
        big.len(),
        large.payload.len()
    );
    let mut inflater = Decompressor::new(15, false);
    let mut out = BytesMut::new();
    inflater
        .decompress(&large.payload, true, &mut out, 1 << 20)
        .unwrap();
    assert_eq!(&out[..], big.as_bytes());

    // Incompressible data is still sent compressed (RSV1) above the
    // threshold, and decodes with the same context.
    let noisy = raw.read_frame().await.unwrap();
    assert!(noisy.header.rsv1);
    let mut out = BytesMut::new();
    inflater
        .decompress(&noisy.payload, true, &mut out, 1 << 20)
        .unwrap();
    assert_eq!(&out[..], &noise(1000, 7)[..]);
}

#[tokio::test]
async fn the_server_inflates_what_a_raw_client_compressed() {
    let (mut server, mut raw) = compressing_server_and_raw_client().await;
    let mut deflater = Compressor::new(15, 6, false);
    let mut header = FrameHeader::new(OpCode::Text, 0);
    header.rsv1 = true;
    header.mask = Some([5, 6, 7, 8]);
    for i in 0..3 {
        let text = format!("{} {i}", compressible(3000));
        let mut payload = BytesMut::new();
        deflater.compress(text.as_bytes(), &mut payload);
        raw.send_header(header, &payload).await;
        assert_eq!(next_msg(&mut server).await.as_text(), Some(text.as_str()));
    }
    // An uncompressed message (RSV1 clear) in between is fine too.
    raw.send(OpCode::Binary, true, b"plain").await;
    assert_eq!(next_msg(&mut server).await, Message::binary(&b"plain"[..]));
}

#[tokio::test]
async fn invalid_compressed_data_fails_with_1007() {
    let (mut server, mut raw) = compressing_server_and_raw_client().await;
    let mut header = FrameHeader::new(OpCode::Binary, 0);
    header.rsv1 = true;
    header.mask = Some([5, 6, 7, 8]);
    // 0xFF...: a DEFLATE block of the reserved type 3.
    raw.send_header(header, &[0xFF, 0xFF, 0xFF, 0xFF]).await;
    let server_side = async {
        let result = within("recv", server.recv()).await;
        match result {
            Some(Err(Error::Protocol(e))) => assert_eq!(e.close_code().0, 1007, "{e}"),
            other => panic!("expected invalid compressed data, got {other:?}"),
        }
    };
    let client_side = async {
        let close = raw.read_close().await;
        assert_eq!(close.close().map(|(c, _)| c), Some(1007));
        assert!(raw.read_to_eof().await.is_empty());
        drop(raw);
    };
    tokio::join!(server_side, client_side);
}

#[tokio::test]
async fn rsv1_on_a_continuation_frame_fails_with_1002() {
    // RFC 7692 §6.1: only the first frame of a message carries RSV1.
    let (mut server, mut raw) = compressing_server_and_raw_client().await;
    let mut first = FrameHeader::new(OpCode::Text, 0);
    first.fin = false;
    first.mask = Some([1, 1, 1, 1]);
    let mut cont = FrameHeader::new(OpCode::Continuation, 0);
    cont.rsv1 = true;
    cont.mask = Some([1, 1, 1, 1]);
    raw.send_header(first, b"abc").await;
    raw.send_header(cont, b"def").await;
    let server_side = async {
        let result = within("recv", server.recv()).await;
        assert!(
            matches!(&result, Some(Err(Error::Protocol(e))) if e.close_code().0 == 1002),
            "{result:?}"
        );
    };
    let client_side = async {
        let close = raw.read_close().await;
        assert_eq!(close.close().map(|(c, _)| c), Some(1002));
        raw.read_to_eof().await;
        drop(raw);
    };
    tokio::join!(server_side, client_side);
}

#[tokio::test]
async fn compressed_messages_sent_in_fragments_round_trip() {
    let config = Config::default().compression(true);
    let (mut server, mut client) = common::pair(config.clone(), config).await;
    let text = compressible(30_000);
    let bytes = Bytes::from(text.clone());
    // The first piece is over the threshold: the whole message is
    // compressed, piece by piece.
    let pieces = [0..10_000, 10_000..10_001, 10_001..10_001, 10_001..30_000];
    for (i, range) in pieces.iter().enumerate() {
        client
            .send(Message::Fragment(Fragment {
                opcode: OpCode::Text,
                data: bytes.slice(range.clone()),
                message_offset: range.start as u64,
                first: i == 0,
                fin: i == pieces.len() - 1,
            }))
            .await
            .unwrap();
    }
    assert_eq!(next_msg(&mut server).await.as_text(), Some(text.as_str()));

    // And in fragment mode, the receiver gets the pieces inflated, with
    // offsets in the inflated message.
    client.set_fragment_mode(true);
    for (i, range) in pieces.iter().enumerate() {
        server
            .send(Message::Fragment(Fragment {
                opcode: OpCode::Binary,
                data: bytes.slice(range.clone()),
                message_offset: 0,
                first: false,
                fin: i == pieces.len() - 1,
            }))
            .await
            .unwrap();
    }
    let mut assembled = Vec::new();
    loop {
        match next_msg(&mut client).await {
            Message::Fragment(f) => {
                assert_eq!(f.opcode, OpCode::Binary);
                assert_eq!(f.message_offset, assembled.len() as u64);
                assert_eq!(f.first, assembled.is_empty());
                assembled.extend_from_slice(&f.data);
                if f.fin {
                    break;
                }
            }
            other => panic!("expected a fragment, got {other:?}"),
        }
    }
    assert_eq!(assembled, text.as_bytes());
}
