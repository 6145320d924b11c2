//! The closing handshake over loopback TCP: who closes, which codes and
//! reasons each side sees, protocol errors reported with the right close
//! code, timeouts, abrupt disconnects, and sending after close.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{RawPeer, default_pair, listen, next_msg, within};
use ferrows::proto::frame::FrameHeader;
use ferrows::proto::{OpCode, ProtocolError};
use ferrows::{CloseFrame, Config, Error, Message};
use tokio::time::Instant;

fn close_of(msg: &Message) -> Option<(u16, &str)> {
    match msg {
        Message::Close(Some(f)) => Some((f.code.0, f.reason())),
        Message::Close(None) => None,
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn client_initiated_close_is_seen_by_both_sides() {
    let (mut server, mut client) = default_pair().await;
    let server_side = async {
        let msg = next_msg(&mut server).await;
        assert_eq!(close_of(&msg), Some((4000, "bye now")));
        // After the close: the end, once the client closed TCP.
        assert!(within("server end", server.recv()).await.is_none());
        server
    };
    let client_side = async {
        client.send(Message::close(4000, "bye now")).await.unwrap();
        // The server echoes the code (RFC 6455 §5.5.1), without a reason.
        let msg = next_msg(&mut client).await;
        assert_eq!(close_of(&msg), Some((4000, "")));
        // The server closes TCP first; then the client's stream ends.
        assert!(within("client end", client.recv()).await.is_none());
        drop(client);
    };
    let (mut server, ()) = tokio::join!(server_side, client_side);
    assert!(server.recv().await.is_none(), "the end is final");
}

#[tokio::test]
async fn close_helper_waits_for_the_answer() {
    let (mut server, mut client) = default_pair().await;
    let server_side = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(msg) = within("server recv", server.recv()).await {
            seen.push(msg.unwrap());
        }
        seen
    });
    client.send("last words").await.unwrap();
    within("close", client.close(1000, "finished"))
        .await
        .unwrap();
    assert!(client.is_closing());
    assert!(client.recv().await.is_none());
    drop(client);
    let seen = within("server", server_side).await.unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].as_text(), Some("last words"));
    assert_eq!(close_of(&seen[1]), Some((1000, "finished")));
}

#[tokio::test]
async fn server_initiated_close_is_seen_by_both_sides() {
    let (mut server, mut client) = default_pair().await;
    let client_side = tokio::spawn(async move {
        let msg = next_msg(&mut client).await;
        let seen = close_of(&msg).map(|(c, r)| (c, r.to_owned()));
        assert!(within("client end", client.recv()).await.is_none());
        seen
    });
    within("server close", server.close(1001, "going away"))
        .await
        .unwrap();
    let seen = within("client", client_side).await.unwrap();
    assert_eq!(seen, Some((1001, "going away".to_owned())));
    assert!(server.recv().await.is_none());
}

#[tokio::test]
async fn server_sees_the_client_echo_of_its_close() {
    let (mut server, mut client) = default_pair().await;
    let client_side = tokio::spawn(async move {
        while let Some(msg) = within("client recv", client.recv()).await {
            msg.unwrap();
        }
    });
    server.send(Message::close(3001, "custom")).await.unwrap();
    let msg = next_msg(&mut server).await;
    assert_eq!(close_of(&msg), Some((3001, "")));
    assert!(within("server end", server.recv()).await.is_none());
    within("client", client_side).await.unwrap();
}

#[tokio::test]
async fn empty_close_is_answered_with_an_empty_close() {
    let (mut server, mut client) = default_pair().await;
    let server_side = tokio::spawn(async move {
        let msg = next_msg(&mut server).await;
        assert_eq!(msg, Message::Close(None));
        assert!(within("server end", server.recv()).await.is_none());
    });
    client.send(Message::Close(None)).await.unwrap();
    // No status code: reported as `Close(None)`, i.e. 1005.
    assert_eq!(next_msg(&mut client).await, Message::Close(None));
    assert!(within("client end", client.recv()).await.is_none());
    drop(client);
    within("server", server_side).await.unwrap();
}

#[tokio::test]
async fn data_sent_before_the_close_arrives_before_it() {
    let (mut server, mut client) = default_pair().await;
    for i in 0..10 {
        client.feed(format!("m{i}")).await.unwrap();
    }
    client.feed(Message::close(1000, "")).await.unwrap();
    client.flush().await.unwrap();
    for i in 0..10 {
        assert_eq!(
            next_msg(&mut server).await.as_text(),
            Some(format!("m{i}").as_str())
        );
    }
    assert!(next_msg(&mut server).await.is_close());
}

#[tokio::test]
async fn after_sending_close_the_peer_data_still_arrives() {
    // RFC 6455 §1.4: after sending a close frame, an endpoint still
    // receives what the peer sent before it saw the close.
    let (listener, _) = listen().await;
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = ferrows::accept(stream).await.unwrap();
        ws.send(Message::close(1000, "closing")).await.unwrap();
        let mut seen = Vec::new();
        while let Some(msg) = within("server recv", ws.recv()).await {
            seen.push(msg.unwrap());
        }
        seen
    });
    let (mut raw, _) = RawPeer::connect(addr, "").await;
    raw.send(OpCode::Text, true, b"in flight").await;
    let close = raw.read_frame().await.unwrap();
    assert_eq!(close.close(), Some((1000, "closing".to_owned())));
    raw.send_close(1000, "").await;
    assert!(raw.read_to_eof().await.is_empty());
    drop(raw);
    let seen = within("server", server).await.unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].as_text(), Some("in flight"));
    assert_eq!(close_of(&seen[1]), Some((1000, "")));
}

#[tokio::test]
async fn long_close_reasons_are_cut_at_a_character_boundary() {
    let (mut server, mut client) = default_pair().await;
    let long = "é".repeat(100); // 200 bytes
    client.send(Message::close(1000, &long)).await.unwrap();
    let msg = next_msg(&mut server).await;
    let (code, reason) = close_of(&msg).unwrap();
    assert_eq!(code, 1000);
    assert_eq!(reason, "é".repeat(61), "123 bytes fit, 61 whole characters");
}

/// Connects a raw client, sends `bytes`, and returns the close frame the
/// server answers with and the error its `recv` reported.
async fn server_failure(bytes: Vec<u8>) -> ((u16, String), Error) {
    let (listener, _) = listen().await;
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = ferrows::accept(stream).await.unwrap();
        let mut error = None;
        while let Some(msg) = within("server recv", ws.recv()).await {
            match msg {
                Ok(msg) => panic!("unexpected message {msg:?}"),
                Err(e) => {
                    assert!(error.is_none(), "two errors");
                    error = Some(e);
                }
            }
        }
        // Nothing can be sent on a failed connection.
        assert!(matches!(ws.send("x").await, Err(Error::Closed)));
        error.expect("an error")
    });
    let (mut raw, _) = RawPeer::connect(addr, "").await;
    raw.write(&bytes).await;
    let frame = raw.read_frame().await.expect("a close frame");
    assert_eq!(frame.opcode(), OpCode::Close, "{frame:?}");
    let close = frame.close().expect("a close code");
    // The server closes the TCP connection after its close frame.
    assert!(raw.read_to_eof().await.is_empty());
    drop(raw);
    let error = within("server", server).await.unwrap();
    (close, error)
}

fn masked(opcode: OpCode, fin: bool) -> FrameHeader {
    let mut h = FrameHeader::new(opcode, 0);
    h.fin = fin;
    h.mask = Some([1, 2, 3, 4]);
    h
}

#[tokio::test]
async fn protocol_errors_send_the_matching_close_code() {
    let close_payload = |code: u16, reason: &[u8]| {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        p
    };
    let frame = RawPeer::encode;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "reserved opcode 0x3",
            frame(masked(OpCode::Reserved(3), true), b"x"),
            1002,
        ),
        (
            "reserved control opcode 0xB",
            frame(masked(OpCode::Reserved(0xB), true), b""),
            1002,
        ),
        (
            "RSV1 without an extension",
            frame(
                FrameHeader {
                    rsv1: true,
                    ..masked(OpCode::Text, true)
                },
                b"x",
            ),
            1002,
        ),
        (
            "RSV2",
            frame(
                FrameHeader {
                    rsv2: true,
                    ..masked(OpCode::Binary, true)
                },
                b"x",
            ),
            1002,
        ),
        (
            "RSV3 on a ping",
            frame(
                FrameHeader {
                    rsv3: true,
                    ..masked(OpCode::Ping, true)
                },
                b"",
            ),
            1002,
        ),
        (
            "unmasked client frame",
            frame(FrameHeader::new(OpCode::Text, 0), b"hello"),
            1002,
        ),
        (
            "invalid UTF-8 in a text message",
            frame(masked(OpCode::Text, true), b"ok \xFF"),
            1007,
        ),
        (
            "a text message ending inside a character",
            frame(masked(OpCode::Text, true), b"caf\xC3"),
            1007,
        ),
        (
            // Failing fast: the rest of the message never comes, so only a
            // check of the first fragment can answer.
            "invalid UTF-8 in a first fragment",
            frame(masked(OpCode::Text, false), b"\xED\xA0\x80 surrogate"),
            1007,
        ),
        (
            "fragmented ping",
            frame(masked(OpCode::Ping, false), b"p"),
            1002,
        ),
        (
            "ping of 126 bytes",
            frame(masked(OpCode::Ping, true), &[0u8; 126]),
            1002,
        ),
        (
            "continuation without a message",
            frame(masked(OpCode::Continuation, true), b"x"),
            1002,
        ),
        (
            "new message inside a fragmented one",
            [
                frame(masked(OpCode::Text, false), b"a"),
                frame(masked(OpCode::Text, true), b"b"),
            ]
            .concat(),
            1002,
        ),
        (
            "one-byte close payload",
            frame(masked(OpCode::Close, true), &[0x03]),
            1002,
        ),
        (
            "close code 1005 on the wire",
            frame(masked(OpCode::Close, true), &close_payload(1005, b"")),
            1002,
        ),
        (
            "close code 1006 on the wire",
            frame(masked(OpCode::Close, true), &close_payload(1006, b"")),
            1002,
        ),
        (
            "close code 999",
            frame(masked(OpCode::Close, true), &close_payload(999, b"")),
            1002,
        ),
        (
            "close code 5000",
            frame(masked(OpCode::Close, true), &close_payload(5000, b"")),
            1002,
        ),
        (
            "close reason not UTF-8",
            frame(masked(OpCode::Close, true), &close_payload(1000, b"\xFF")),
            1007,
        ),
        (
            "64-bit length with the top bit set",
            vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4],
            1002,
        ),
    ];
    for (name, bytes, code) in cases {
        let ((got, reason), error) = server_failure(bytes).await;
        assert_eq!(got, code, "{name}: close code");
        match &error {
            Error::Protocol(e) => {
                assert_eq!(e.close_code().0, code, "{name}: {e}");
                assert_eq!(reason, e.close_reason(), "{name}: close reason");
            }
            other => panic!("{name}: expected a protocol error, got {other:?}"),
        }
        assert_eq!(error.close_code().map(|c| c.0), Some(code), "{name}");
    }
}

#[tokio::test]
async fn protocol_error_after_valid_messages_delivers_them_first() {
    let (listener, _) = listen().await;
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = ferrows::accept(stream).await.unwrap();
        let mut seen = Vec::new();
        while let Some(msg) = within("server recv", ws.recv()).await {
            seen.push(msg.map_err(|e| e.to_string()));
        }
        seen
    });
    let (mut raw, _) = RawPeer::connect(addr, "").await;
    // All in one write: two good messages and a bad one.
    let bytes = [
        RawPeer::encode(masked(OpCode::Text, true), b"one"),
        RawPeer::encode(masked(OpCode::Binary, true), b"two"),
        RawPeer::encode(masked(OpCode::Reserved(4), true), b""),
    ]
    .concat();
    raw.write(&bytes).await;
    let close = raw.read_close().await;
    assert_eq!(close.close().map(|(c, _)| c), Some(1002));
    raw.read_to_eof().await;
    drop(raw);
    let seen = within("server", server).await.unwrap();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0], Ok(Message::text("one")));
    assert_eq!(seen[1], Ok(Message::binary(&b"two"[..])));
    assert!(
        seen[2].as_ref().is_err_and(|e| e.contains("1002")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn client_fails_a_server_that_masks_its_frames() {
    let (listener, url) = listen().await;
    let client = tokio::spawn(async move {
        let (mut ws, _) = ferrows::connect(&url).await.unwrap();
        let mut results = Vec::new();
        while let Some(msg) = within("client recv", ws.recv()).await {
            results.push(msg);
        }
        results
    });
    let (mut raw, _) = RawPeer::accept(&listener, "").await;
    // A masked server frame (RFC 6455 §5.1: the client must fail).
    raw.send_header(masked(OpCode::Text, true), b"masked").await;
    let close = raw.read_frame().await.unwrap();
    assert_eq!(close.close().map(|(c, _)| c), Some(1002));
    // The server closes TCP first; the client waits for that.
    drop(raw);
    let results = within("client", client).await.unwrap();
    assert_eq!(results.len(), 1);
    match &results[0] {
        Err(Error::Protocol(ProtocolError::MaskedFrame)) => {}
        other => panic!("expected MaskedFrame, got {other:?}"),
    }
}

#[tokio::test]
async fn close_times_out_when_the_peer_never_answers() {
    let (listener, _) = listen().await;
    let addr = listener.local_addr().unwrap();
    let raw = tokio::spawn(async move { RawPeer::connect(addr, "").await.0 });
    let (stream, _) = listener.accept().await.unwrap();
    let close_timeout = Duration::from_secs(3);
    let config = Config::default().close_timeout(close_timeout);
    let hs = within("handshake", ferrows::Handshake::read(stream, config))
        .await
        .unwrap();
    let mut ws = within("accept", hs.accept()).await.unwrap();
    let mut raw = within("raw client", raw).await.unwrap();

    // Time is the subject: from here on, tokio's clock only moves when
    // everything waits.
    tokio::time::pause();
    let start = Instant::now();
    let result = ws.close(1000, "bye").await;
    let waited = start.elapsed();
    assert!(matches!(result, Err(Error::CloseTimeout)), "{result:?}");
    assert!(result.unwrap_err().is_timeout());
    assert!(
        waited >= close_timeout && waited < close_timeout + Duration::from_secs(1),
        "waited {waited:?}"
    );
    tokio::time::resume();

    // The close frame did go out, and the connection is over.
    let frame = raw.read_frame().await.unwrap();
    assert_eq!(frame.close(), Some((1000, "bye".to_owned())));
    assert!(ws.recv().await.is_none());
    assert!(matches!(ws.send("x").await, Err(Error::Closed)));
}

#[tokio::test]
async fn recv_times_out_after_sending_close() {
    let (listener, _) = listen().await;
    let addr = listener.local_addr().unwrap();
    let raw = tokio::spawn(async move { RawPeer::connect(addr, "").await.0 });
    let (stream, _) = listener.accept().await.unwrap();
    let close_timeout = Duration::from_millis(1500);
    let config = Config::default().close_timeout(close_timeout);
    let mut ws = within("accept", async {
        ferrows::Handshake::read(stream, config)
            .await?
            .accept()
            .await
    })
    .await
    .unwrap();
    let _raw = within("raw client", raw).await.unwrap();
    ws.send(Message::close(1000, "")).await.unwrap();

    tokio::time::pause();
    let start = Instant::now();
    let result = ws.recv().await;
    let waited = start.elapsed();
    assert!(
        matches!(result, Some(Err(Error::CloseTimeout))),
        "{result:?}"
    );
    assert!(
        waited >= close_timeout && waited < close_timeout + Duration::from_secs(1),
        "waited {waited:?}"
    );
    assert!(ws.recv().await.is_none());
}

#[tokio::test]
async fn a_server_closes_tcp_first_once_the_handshake_is_over() {
    let (listener, _) = listen().await;
    let addr = listener.local_addr().unwrap();
    let raw = tokio::spawn(async move { RawPeer::connect(addr, "").await.0 });
    let (stream, _) = listener.accept().await.unwrap();
    // Far longer than `within`'s limit: waiting for it would fail the test.
    let config = Config::default().close_timeout(Duration::from_secs(300));
    let mut ws = within("accept", async {
        ferrows::Handshake::read(stream, config)
            .await?
            .accept()
            .await
    })
    .await
    .unwrap();
    let mut raw = within("raw client", raw).await.unwrap();

    ws.send(Message::close(1000, "")).await.unwrap();
    let frame = raw.read_frame().await.unwrap();
    assert_eq!(frame.close(), Some((1000, String::new())));
    raw.send_close(1000, "").await;
    let reply = next_msg(&mut ws).await;
    assert_eq!(close_of(&reply), Some((1000, "")));

    // The handshake is complete and the raw client, as RFC 6455 §7.1.1
    // asks of clients, waits for the server to close TCP. The server does
    // so at once: its stream ends without waiting for the client's FIN
    // (waiting out the close timeout would fail `within`), and the client
    // sees EOF.
    assert!(within("the end of the stream", ws.recv()).await.is_none());
    assert!(within("EOF", raw.read_to_eof()).await.is_empty());
}

#[tokio::test]
async fn tcp_drop_without_close_is_an_abnormal_closure() {
    let (listener, _) = listen().await;
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = ferrows::accept(stream).await.unwrap();
        let first = within("recv", ws.recv()).await;
        let second = within("recv", ws.recv()).await;
        (first, second.is_none())
    });
    let (raw, _) = RawPeer::connect(addr, "").await;
    drop(raw);
    let (first, ended) = within("server", server).await.unwrap();
    match first {
        Some(Err(e @ Error::AbnormalClosure)) => {
            assert_eq!(e.close_code().map(|c| c.0), Some(1006));
        }
        other => panic!("expected AbnormalClosure, got {other:?}"),
    }
    assert!(ended, "None after the error");
}

#[tokio::test]
async fn dropping_a_websocket_is_an_abnormal_closure_for_the_peer() {
    let (mut server, client) = default_pair().await;
    drop(client);
    let result = within("recv", server.recv()).await;
    assert!(
        matches!(result, Some(Err(Error::AbnormalClosure))),
        "{result:?}"
    );
    assert!(server.recv().await.is_none());
}

#[tokio::test]
async fn client_sees_an_abnormal_closure_when_the_server_vanishes() {
    let (listener, url) = listen().await;
    let client = tokio::spawn(async move {
        let (mut ws, _) = ferrows::connect(&url).await.unwrap();
        within("client recv", ws.recv()).await
    });
    let (raw, _) = RawPeer::accept(&listener, "").await;
    drop(raw);
    let result = within("client", client).await.unwrap();
    assert!(
        matches!(result, Some(Err(Error::AbnormalClosure))),
        "{result:?}"
    );
}

#[tokio::test]
async fn sending_after_close_fails_with_closed() {
    let (mut server, mut client) = default_pair().await;
    client.send(Message::close(1000, "")).await.unwrap();
    // Our close is out: nothing else may follow it (RFC 6455 §5.5.1).
    assert!(client.is_closing());
    assert!(matches!(client.send("text").await, Err(Error::Closed)));
    assert!(matches!(
        client.send(Message::ping("p")).await,
        Err(Error::Closed)
    ));
    assert!(matches!(client.feed("fed").await, Err(Error::Closed)));
    assert!(matches!(client.queue("queued"), Err(Error::Closed)));
    assert!(matches!(
        client.send(Message::close(1000, "again")).await,
        Err(Error::Closed)
    ));
    assert_eq!(client.buffered_amount(), 0);

    // The peer that received the close cannot send either: it answered.
    let msg = next_msg(&mut server).await;
    assert!(msg.is_close());
    assert!(server.is_closing());
    assert!(matches!(server.send("too late").await, Err(Error::Closed)));
    assert!(matches!(server.queue("too late"), Err(Error::Closed)));

    // The client receives the answer and nothing sent after the close.
    let reply = next_msg(&mut client).await;
    assert_eq!(close_of(&reply), Some((1000, "")));
    assert!(within("end", client.recv()).await.is_none());
    assert!(matches!(
        client.send("after the end").await,
        Err(Error::Closed)
    ));
    drop(client);
    assert!(within("server end", server.recv()).await.is_none());
}

#[tokio::test]
async fn sending_after_an_abnormal_closure_fails() {
    // `send` documents `Error::Closed` once the connection ended; here it
    // ended by a TCP drop, which recv reported.
    let (mut server, client) = default_pair().await;
    drop(client);
    let result = within("recv", server.recv()).await;
    assert!(matches!(result, Some(Err(Error::AbnormalClosure))));
    assert!(server.recv().await.is_none());
    let sent = within("send", server.send("anyone there?")).await;
    assert!(matches!(sent, Err(Error::Closed)), "{sent:?}");
    assert!(matches!(server.queue("queued"), Err(Error::Closed)));
}

#[tokio::test]
async fn close_frame_values_are_built_as_documented() {
    // The types a close exchange hands out, checked over a real exchange.
    let (mut server, mut client) = default_pair().await;
    client
        .send(Message::Close(Some(CloseFrame::new(4999, "max app code"))))
        .await
        .unwrap();
    match next_msg(&mut server).await {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, ferrows::CloseCode(4999));
            assert_eq!(frame.reason(), "max app code");
            assert_eq!(frame.to_string(), "4999 \"max app code\"");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_client_closes_tcp_once_the_closing_handshake_is_over() {
    // RFC 6455 §7.1.1: the server closes TCP first; the client closes its
    // end once it sees that. Here the client application keeps its
    // `WebSocket` after `close()` returned; the server must still see the
    // TCP close at once, not only after its close timeout.
    let close_timeout = Duration::from_secs(20);
    let server_config = Config::default().close_timeout(close_timeout);
    let (mut server, mut client) = common::pair(server_config, Config::default()).await;
    let server_side = tokio::spawn(async move {
        let msg = next_msg(&mut server).await;
        assert!(msg.is_close());
        let start = std::time::Instant::now();
        assert!(server.recv().await.is_none());
        start.elapsed()
    });
    within("close", client.close(1000, "")).await.unwrap();
    let waited = within("server", server_side).await.unwrap();
    assert!(
        waited < close_timeout / 2,
        "the server waited {waited:?} for the client's TCP close"
    );
    drop(client);
}

/// A server with `config` and a raw client that never reads, over small
/// kernel buffers, with the server's queue holding far more than they do.
async fn server_stuck_behind_a_peer_that_does_not_read(
    config: Config,
) -> (ferrows::WebSocket<tokio::net::TcpStream>, RawPeer) {
    let (listener, addr) = common::small_buffer_listener();
    let raw = tokio::spawn(async move {
        let tcp = common::small_buffer_connect(addr).await;
        RawPeer::handshake(tcp, "").await.0
    });
    let (stream, _) = within("accept", listener.accept()).await.unwrap();
    let mut ws = within("handshake", async {
        ferrows::Handshake::read(stream, config)
            .await?
            .accept()
            .await
    })
    .await
    .unwrap();
    let raw = within("raw client", raw).await.unwrap();
    for _ in 0..100 {
        ws.queue(vec![0u8; 10_000]).unwrap();
    }
    assert!(
        futures_util::FutureExt::now_or_never(ws.flush()).is_none(),
        "the socket should be full"
    );
    (ws, raw)
}

#[tokio::test]
async fn close_times_out_when_the_peer_does_not_even_read() {
    let close_timeout = Duration::from_secs(3);
    let (mut ws, _raw) = server_stuck_behind_a_peer_that_does_not_read(
        Config::default().close_timeout(close_timeout),
    )
    .await;
    tokio::time::pause();
    let start = Instant::now();
    // A bound far past the close timeout: on the paused clock it only
    // fires if close() has no timer of its own.
    let result = tokio::time::timeout(close_timeout * 10, ws.close(1000, "")).await;
    let waited = start.elapsed();
    assert!(
        matches!(result, Ok(Err(Error::CloseTimeout))),
        "{result:?} after {waited:?}"
    );
    assert!(
        waited < close_timeout + Duration::from_secs(1),
        "{waited:?}"
    );
}

#[tokio::test]
async fn the_writer_half_close_is_bounded_when_the_peer_does_not_read() {
    let close_timeout = Duration::from_secs(3);
    let (ws, _raw) = server_stuck_behind_a_peer_that_does_not_read(
        Config::default().close_timeout(close_timeout),
    )
    .await;
    let (mut reader, mut writer) = ws.split();
    tokio::time::pause();
    let start = Instant::now();
    let reader_task = tokio::spawn(async move { reader.recv().await });
    let result = tokio::time::timeout(close_timeout * 10, writer.close(1000, "")).await;
    let waited = start.elapsed();
    assert!(
        result.is_ok(),
        "WsWriter::close still waiting after {waited:?}"
    );
    // The reading half reports the timeout.
    let read = reader_task.await.unwrap();
    assert!(matches!(read, Some(Err(Error::CloseTimeout))), "{read:?}");
}

/// A close code that may not go on the wire (1005, 1006, 1015, out of
/// range) is refused with `Error::Send` and nothing is sent: the connection
/// stays open. It used to go out as is, and the peer failed the connection
/// with 1002 (found by the `connection` fuzz target).
#[tokio::test]
async fn close_codes_not_allowed_on_the_wire_are_refused() {
    let (server, mut client) = default_pair().await;
    for code in [1005u16, 1006, 1015, 999, 5000] {
        let sent = client.send(Message::close(code, "no")).await;
        assert!(matches!(sent, Err(Error::Send(_))), "send {code}: {sent:?}");
        let closed = within("close", client.close(code, "no")).await;
        assert!(
            matches!(closed, Err(Error::Send(_))),
            "close {code}: {closed:?}"
        );
        assert!(!client.is_closing(), "code {code} started the close");
    }
    let (mut reader, mut writer) = server.split();
    let refused = within("split close", writer.close(1006, "no")).await;
    assert!(matches!(refused, Err(Error::Send(_))), "{refused:?}");
    // Still open both ways: nothing reached the server but this message.
    client.send("still open").await.unwrap();
    let msg = within("server recv", reader.recv()).await.unwrap().unwrap();
    assert_eq!(msg.as_text(), Some("still open"));
    writer.send("and back").await.unwrap();
    let msg = next_msg(&mut client).await;
    assert_eq!(msg.as_text(), Some("and back"));
}

/// Closing (the `Sink` close) a connection that already ended writes
/// nothing: it used to queue a close frame and write it to a socket whose
/// write side was already shut down (found by the `connection` fuzz target:
/// EPIPE here, `Error::Io`).
#[tokio::test]
async fn sink_close_after_the_end_writes_nothing() {
    use futures_util::SinkExt;
    let (mut server, client) = default_pair().await;
    drop(client);
    let end = within("server recv", server.recv()).await;
    assert!(matches!(end, Some(Err(Error::AbnormalClosure))), "{end:?}");
    let closed = within("sink close", SinkExt::<Message>::close(&mut server)).await;
    assert!(closed.is_ok(), "sink close after the end: {closed:?}");
    assert!(matches!(server.send("late").await, Err(Error::Closed)));
    assert!(server.recv().await.is_none());
}
