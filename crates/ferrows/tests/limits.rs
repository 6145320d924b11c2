//! Receive limits over loopback TCP: a peer exceeding the message, frame
//! or fragment limit is failed with close code 1009, which it sees.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{ClientWs, RawPeer, listen, next_msg, pair, within};
use ferrows::proto::frame::FrameHeader;
use ferrows::proto::{OpCode, ProtocolError};
use ferrows::{Bytes, Config, Error, Fragment, Message, WebSocket};
use tokio::net::TcpStream;

fn piece(opcode: OpCode, data: impl Into<Bytes>, fin: bool) -> Message {
    Message::Fragment(Fragment {
        opcode,
        data: data.into(),
        message_offset: 0,
        first: false,
        fin,
    })
}

/// After the client sent something over the server's limit: the client
/// receives close 1009 and the end; the server's `recv` reports the error
/// that caused it, which is returned.
async fn expect_1009(mut server: WebSocket<TcpStream>, mut client: ClientWs) -> ProtocolError {
    let client_side = async move {
        let msg = next_msg(&mut client).await;
        match &msg {
            Message::Close(Some(f)) => assert_eq!(f.code.0, 1009, "{f}"),
            other => panic!("expected close 1009, got {other:?}"),
        }
        assert!(within("client end", client.recv()).await.is_none());
        drop(client);
    };
    let server_side = async move {
        let result = within("server recv", server.recv()).await;
        assert!(within("server end", server.recv()).await.is_none());
        match result {
            Some(Err(Error::Protocol(e))) => {
                assert_eq!(e.close_code().0, 1009, "{e}");
                e
            }
            other => panic!("expected a protocol error, got {other:?}"),
        }
    };
    tokio::join!(client_side, server_side).1
}

#[tokio::test]
async fn a_message_at_the_limit_passes_one_byte_over_fails() {
    let server_config = Config::default().max_message_size(1000);
    let (mut server, mut client) = pair(server_config, Config::default()).await;
    client.send(vec![1u8; 1000]).await.unwrap();
    assert_eq!(next_msg(&mut server).await.len(), 1000);
    client.send("é".repeat(500)).await.unwrap();
    assert_eq!(next_msg(&mut server).await.len(), 1000);

    client.send(vec![1u8; 1001]).await.unwrap();
    let e = expect_1009(server, client).await;
    assert!(
        matches!(
            e,
            ProtocolError::FrameTooLarge {
                size: 1001,
                max: 1000
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_fragmented_message_fails_as_soon_as_it_passes_the_limit() {
    let server_config = Config::default().max_message_size(1000);
    let (server, mut client) = pair(server_config, Config::default()).await;
    // 3 × 400 bytes, and no final fragment: the server must not wait for
    // the end of the message to refuse it.
    for _ in 0..3 {
        client
            .send(piece(OpCode::Binary, vec![0u8; 400], false))
            .await
            .unwrap();
    }
    let e = expect_1009(server, client).await;
    assert!(
        matches!(
            e,
            ProtocolError::MessageTooLarge {
                size: 1200,
                max: 1000
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn the_frame_limit_applies_to_each_frame() {
    let server_config = Config::default().max_frame_size(100);
    let (mut server, mut client) = pair(server_config, Config::default()).await;
    // Three frames of 100 bytes: a 300-byte message is fine.
    for fin in [false, false, true] {
        client
            .send(piece(OpCode::Binary, vec![2u8; 100], fin))
            .await
            .unwrap();
    }
    assert_eq!(next_msg(&mut server).await.len(), 300);
    // One frame of 101 bytes is not.
    client.send(vec![2u8; 101]).await.unwrap();
    let e = expect_1009(server, client).await;
    assert!(
        matches!(
            e,
            ProtocolError::FrameTooLarge {
                size: 101,
                max: 100
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn too_many_fragments_fail_with_1009() {
    let server_config = Config::default().max_fragments(4);
    let (mut server, mut client) = pair(server_config, Config::default()).await;
    for i in 0..4 {
        client
            .send(piece(OpCode::Text, "ab", i == 3))
            .await
            .unwrap();
    }
    assert_eq!(next_msg(&mut server).await.as_text(), Some("abababab"));
    for _ in 0..5 {
        client.send(piece(OpCode::Text, "ab", false)).await.unwrap();
    }
    let e = expect_1009(server, client).await;
    assert!(
        matches!(e, ProtocolError::TooManyFragments { max: 4 }),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_flood_of_empty_continuation_frames_is_stopped() {
    let (listener, _) = listen().await;
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let config = Config::default().max_fragments(1000);
        let mut ws = ferrows::Handshake::read(stream, config)
            .await
            .unwrap()
            .accept()
            .await
            .unwrap();
        within("recv", ws.recv()).await
    });
    let (mut raw, _) = RawPeer::connect(addr, "").await;
    let mut first = FrameHeader::new(OpCode::Binary, 0);
    first.fin = false;
    first.mask = Some([1, 2, 3, 4]);
    let mut cont = FrameHeader::new(OpCode::Continuation, 0);
    cont.fin = false;
    cont.mask = Some([1, 2, 3, 4]);
    let mut flood = RawPeer::encode(first, b"");
    for _ in 0..1000 {
        flood.extend(RawPeer::encode(cont, b""));
    }
    raw.write(&flood).await;
    let close = raw.read_close().await;
    assert_eq!(close.close().map(|(c, _)| c), Some(1009));
    raw.read_to_eof().await;
    drop(raw);
    let result = within("server", server).await.unwrap();
    assert!(
        matches!(
            result,
            Some(Err(Error::Protocol(ProtocolError::TooManyFragments {
                max: 1000
            })))
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn the_message_limit_holds_in_fragment_mode() {
    let server_config = Config::default().max_message_size(1000);
    let (mut server, mut client) = pair(server_config, Config::default()).await;
    server.set_fragment_mode(true);
    client
        .send(piece(OpCode::Binary, vec![3u8; 600], false))
        .await
        .unwrap();
    match next_msg(&mut server).await {
        Message::Fragment(f) => assert_eq!(f.data.len(), 600),
        other => panic!("expected a fragment, got {other:?}"),
    }
    client
        .send(piece(OpCode::Binary, vec![3u8; 600], true))
        .await
        .unwrap();
    let e = expect_1009(server, client).await;
    assert!(matches!(e, ProtocolError::MessageTooLarge { .. }), "{e:?}");
}

#[tokio::test]
async fn a_compressed_message_is_limited_by_its_inflated_size() {
    // A "decompression bomb": a megabyte of zeros is about a kilobyte on
    // the wire; the limit applies to what it inflates to.
    let server_config = Config::default()
        .compression(true)
        .max_message_size(64 * 1024);
    let (mut server, mut client) = pair(server_config, Config::default().compression(true)).await;
    assert!(client.compression().is_some());
    client.send(vec![0u8; 64 * 1024]).await.unwrap();
    assert_eq!(next_msg(&mut server).await.len(), 64 * 1024);

    client.send(vec![0u8; 1 << 20]).await.unwrap();
    let e = expect_1009(server, client).await;
    assert!(matches!(e, ProtocolError::MessageTooLarge { .. }), "{e:?}");
}

#[tokio::test]
async fn a_client_enforces_its_own_limits() {
    let (mut server, mut client) =
        pair(Config::default(), Config::default().max_message_size(10)).await;
    server.send("0123456789").await.unwrap();
    assert_eq!(next_msg(&mut client).await.as_text(), Some("0123456789"));
    server.send("0123456789A").await.unwrap();
    let client_side = async move {
        let result = within("client recv", client.recv()).await;
        assert!(
            matches!(
                &result,
                Some(Err(Error::Protocol(ProtocolError::FrameTooLarge {
                    size: 11,
                    max: 10
                })))
            ),
            "{result:?}"
        );
        assert!(client.recv().await.is_none());
    };
    let server_side = async move {
        let msg = next_msg(&mut server).await;
        assert!(
            matches!(&msg, Message::Close(Some(f)) if f.code.0 == 1009),
            "{msg:?}"
        );
        assert!(within("server end", server.recv()).await.is_none());
    };
    tokio::join!(client_side, server_side);
}

#[tokio::test]
async fn invalid_limits_are_refused() {
    let (listener, url) = listen().await;
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        // Checked before the request is read; the client gets a 500.
        ferrows::Handshake::read(stream, Config::default().max_message_size(0))
            .await
            .map(|_| ())
    });
    let result = within("connect", ferrows::connect(&url)).await;
    assert!(
        matches!(
            &result,
            Err(Error::ClientHandshake(
                ferrows::proto::handshake::ClientHandshakeError::NotSwitching { status: 500, .. }
            ))
        ),
        "{:?}",
        result.map(|_| ())
    );
    let accepted = within("server", server).await.unwrap();
    assert!(matches!(accepted, Err(Error::Config(_))), "{accepted:?}");

    let result = ferrows::ClientBuilder::new("ws://127.0.0.1:9/")
        .config(Config::default().max_frame_size(0))
        .connect_on(tokio::io::duplex(64).0)
        .await;
    assert!(matches!(result, Err(Error::Config(_))), "{result:?}");
}
