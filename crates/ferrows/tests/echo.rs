//! Messages round trip between a ferrows client and server over loopback
//! TCP: every payload length class, `Stream`/`Sink`, corking with
//! `feed`/`flush`, pings, and the `serve`/`serve_with` helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{default_pair, echo_server, next_msg, noise, text_of_len, within};
use ferrows::{Bytes, ClientBuilder, Config, Error, Message};
use futures_util::{SinkExt, StreamExt, stream};

/// Lengths on both sides of every header length boundary (7-bit, 16-bit,
/// 64-bit), plus a megabyte.
const SIZES: [usize; 9] = [0, 1, 125, 126, 127, 65_535, 65_536, 65_537, 1 << 20];

#[tokio::test]
async fn text_and_binary_of_every_length_class_round_trip() {
    let (url, _server) = echo_server(Config::default()).await;
    let (mut ws, response) = within("connect", ferrows::connect(&url)).await.unwrap();
    assert_eq!(response.status(), 101);
    for (i, len) in SIZES.into_iter().enumerate() {
        let text = text_of_len(len);
        assert_eq!(text.len(), len);
        ws.send(text.as_str()).await.unwrap();
        match next_msg(&mut ws).await {
            Message::Text(t) => assert!(t.as_str() == text, "text of {len} bytes differs"),
            other => panic!("expected text of {len} bytes, got {:?}", other.len()),
        }

        let data = noise(len, i as u64);
        ws.send(data.clone()).await.unwrap();
        match next_msg(&mut ws).await {
            Message::Binary(b) => assert!(b[..] == data[..], "binary of {len} bytes differs"),
            other => panic!("expected binary of {len} bytes, got {:?}", other.len()),
        }
    }
    within("close", ws.close(1000, "done")).await.unwrap();
}

#[tokio::test]
async fn server_sends_every_length_class_to_the_client() {
    // The other direction: server frames are unmasked, and a server sending
    // a `Bytes` payload queues it without copying.
    let (mut server, mut client) = default_pair().await;
    let sent: Vec<Bytes> = SIZES
        .iter()
        .enumerate()
        .map(|(i, len)| Bytes::from(noise(*len, 100 + i as u64)))
        .collect();
    let to_send = sent.clone();
    let writer = tokio::spawn(async move {
        for payload in to_send {
            server.send(Message::Binary(payload)).await.unwrap();
        }
        server
    });
    for expected in &sent {
        assert_eq!(
            next_msg(&mut client).await,
            Message::Binary(expected.clone())
        );
    }
    let mut server = within("writer", writer).await.unwrap();
    // The server must be reading to answer the client's close: it sees the
    // close, then the end.
    let server_side = async {
        assert!(next_msg(&mut server).await.is_close());
        assert!(within("end", server.recv()).await.is_none());
    };
    let client_side = async move {
        let closed = within("client close", client.close(1000, "")).await;
        // Dropping the client closes its TCP end, which the server waits for.
        drop(client);
        closed
    };
    let (closed, ()) = tokio::join!(client_side, server_side);
    closed.unwrap();
}

#[tokio::test]
async fn stream_and_sink_interfaces() {
    let (url, _server) = echo_server(Config::default()).await;
    let (mut ws, _) = within("connect", ferrows::connect(&url)).await.unwrap();
    let messages: Vec<Message> = (0..100)
        .map(|i| {
            if i % 2 == 0 {
                Message::text(format!("message {i}"))
            } else {
                Message::binary(vec![i as u8; i])
            }
        })
        .collect();
    let mut source = stream::iter(messages.clone()).map(Ok);
    within("send_all", SinkExt::send_all(&mut ws, &mut source))
        .await
        .unwrap();
    let echoed: Vec<Message> = within(
        "collect",
        (&mut ws).take(messages.len()).collect::<Vec<_>>(),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    assert_eq!(echoed, messages);

    // Sink::close sends a normal close frame; the stream then yields the
    // server's answer and ends.
    within("Sink::close", SinkExt::close(&mut ws))
        .await
        .unwrap();
    match within("close reply", ws.next()).await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code.0, 1000),
        other => panic!("expected the close reply, got {other:?}"),
    }
    assert!(within("end of stream", ws.next()).await.is_none());
    assert!(matches!(
        SinkExt::send(&mut ws, Message::text("late")).await,
        Err(Error::Closed)
    ));
}

#[tokio::test]
async fn feed_corks_until_flush() {
    let (mut server, mut client) = default_pair().await;
    let texts = ["a", "bb", "ccc", "dddd"];
    for t in texts {
        client.feed(t).await.unwrap();
    }
    // Nothing was written: each masked client frame (2-byte header, 4-byte
    // key, payload) is still queued.
    let expected: usize = texts.iter().map(|t| 6 + t.len()).sum();
    assert_eq!(client.buffered_amount(), expected);

    client.flush().await.unwrap();
    assert_eq!(client.buffered_amount(), 0);
    for t in texts {
        assert_eq!(next_msg(&mut server).await.as_text(), Some(t));
    }

    // Server side: unmasked frames, 2-byte headers.
    server.feed("x").await.unwrap();
    server.feed(vec![1u8, 2, 3]).await.unwrap();
    assert_eq!(server.buffered_amount(), 3 + 5);
    server.flush().await.unwrap();
    assert_eq!(server.buffered_amount(), 0);
    assert_eq!(next_msg(&mut client).await.as_text(), Some("x"));
    assert_eq!(
        next_msg(&mut client).await,
        Message::binary(vec![1u8, 2, 3])
    );
}

#[tokio::test]
async fn recv_writes_fed_messages_before_waiting() {
    // An echo loop that only feeds: recv() must flush before it waits for
    // input, or both ends would wait forever.
    let (mut server, mut client) = default_pair().await;
    let echo = tokio::spawn(async move {
        while let Some(Ok(msg)) = server.recv().await {
            if msg.is_text() {
                server.feed(msg).await.unwrap();
            }
        }
    });
    for i in 0..50 {
        let text = format!("ping {i}");
        client.feed(text.as_str()).await.unwrap();
        // recv flushes our fed message, then waits for the echo, which the
        // server's recv flushes in turn.
        assert_eq!(next_msg(&mut client).await.as_text(), Some(text.as_str()));
    }
    within("close", client.close(1000, "")).await.unwrap();
    drop(client);
    within("echo task", echo).await.unwrap();
}

#[tokio::test]
async fn pings_are_answered_and_delivered() {
    let (mut server, mut client) = default_pair().await;
    client.send(Message::ping("are you there?")).await.unwrap();
    client.send(Message::ping(Bytes::new())).await.unwrap();
    // The application sees the pings...
    assert_eq!(next_msg(&mut server).await, Message::ping("are you there?"));
    assert_eq!(next_msg(&mut server).await, Message::ping(Bytes::new()));
    // ...and the pongs, with the same payloads, go out on the next recv
    // (here: while it waits for the next message).
    let server_task = tokio::spawn(async move {
        let msg = next_msg(&mut server).await;
        (server, msg)
    });
    assert_eq!(next_msg(&mut client).await, Message::pong("are you there?"));
    assert_eq!(next_msg(&mut client).await, Message::pong(Bytes::new()));
    client.send("done").await.unwrap();
    let (mut server, msg) = within("server", server_task).await.unwrap();
    assert_eq!(msg.as_text(), Some("done"));

    // An unsolicited pong is delivered to the application.
    client.send(Message::pong("beat")).await.unwrap();
    assert_eq!(next_msg(&mut server).await, Message::pong("beat"));
}

#[tokio::test]
async fn auto_pong_off_leaves_answering_to_the_application() {
    let (mut server, mut client) =
        common::pair(Config::default().auto_pong(false), Config::default()).await;
    let server_task = tokio::spawn(async move {
        let ping = next_msg(&mut server).await;
        assert_eq!(ping, Message::ping("p"));
        server.send(Message::pong("manual")).await.unwrap();
        let text = next_msg(&mut server).await;
        server.send(text).await.unwrap();
        server
    });
    client.send(Message::ping("p")).await.unwrap();
    client.send("after").await.unwrap();
    // Only the application's pong, then the echo: no automatic pong.
    assert_eq!(next_msg(&mut client).await, Message::pong("manual"));
    assert_eq!(next_msg(&mut client).await.as_text(), Some("after"));
    within("server", server_task).await.unwrap();
}

#[tokio::test]
async fn control_frames_over_125_bytes_are_refused_locally() {
    let (mut server, mut client) = default_pair().await;
    let err = client
        .send(Message::ping(vec![0u8; 126]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Send(ferrows::proto::EncodeError::ControlTooLong(126))
        ),
        "{err:?}"
    );
    assert_eq!(client.buffered_amount(), 0, "nothing may be queued");
    // The connection is unharmed.
    client.send(Message::ping(vec![7u8; 125])).await.unwrap();
    assert_eq!(next_msg(&mut server).await, Message::ping(vec![7u8; 125]));
}

#[tokio::test]
async fn serve_with_handles_concurrent_clients_and_knows_their_address() {
    let (listener, url) = common::listen().await;
    let _server = tokio::spawn(ferrows::serve_with(
        listener,
        Config::default(),
        |mut ws| async move {
            let peer = ws.get_ref().peer_addr().unwrap();
            while let Some(Ok(msg)) = ws.recv().await {
                if let Message::Text(t) = msg {
                    let reply = format!("{peer} said {t}");
                    if ws.send(reply).await.is_err() {
                        break;
                    }
                }
            }
        },
    ));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (ws, _) = within("connect", ferrows::connect(&url)).await.unwrap();
        clients.push(ws);
    }
    // Every client talks while all are connected.
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(format!("hello {i}")).await.unwrap();
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        let local = ws.get_ref().get_ref().local_addr().unwrap();
        let reply = next_msg(ws).await;
        assert_eq!(
            reply.as_text(),
            Some(format!("{local} said hello {i}").as_str())
        );
    }
    for ws in &mut clients {
        within("close", ws.close(1000, "")).await.unwrap();
    }
}

#[tokio::test]
async fn serve_with_rejects_invalid_config() {
    let (listener, _) = common::listen().await;
    let config = Config::default().write_high_water_mark(0);
    let result = within(
        "serve_with",
        ferrows::serve_with(listener, config, |_ws| async {}),
    )
    .await;
    assert!(matches!(result, Err(Error::Config(_))), "{result:?}");
}

#[tokio::test]
async fn serve_reports_a_bind_failure() {
    // `serve` binds itself; an address already taken must fail, not hang.
    let (taken, _) = common::listen().await;
    let addr = taken.local_addr().unwrap();
    let result = within("serve", ferrows::serve(addr, |_ws| async {})).await;
    match result {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse),
        other => panic!("expected AddrInUse, got {other:?}"),
    }
}

#[tokio::test]
async fn client_builder_connect_on_an_existing_stream() {
    let (url, _server) = echo_server(Config::default()).await;
    let addr = url.trim_start_matches("ws://").trim_end_matches('/');
    let tcp = within("tcp", tokio::net::TcpStream::connect(addr))
        .await
        .unwrap();
    let (mut ws, response) = within(
        "connect_on",
        ClientBuilder::new(url.as_str()).connect_on(tcp),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 101);
    ws.send("over my own stream").await.unwrap();
    assert_eq!(
        next_msg(&mut ws).await.as_text(),
        Some("over my own stream")
    );
    within("close", ws.close(1000, "")).await.unwrap();
}
