//! `WebSocket::split`: a reader task and a writer task on one connection.
//!
//! Both halves may wait for the socket to become writable at the same time
//! (the writer for its messages, the reader for the pongs and close replies
//! it owes), and the I/O driver keeps one waker per direction. These tests
//! put both halves in that position, behind a peer that reads slowly, and
//! check that neither is forgotten: a lost wake-up shows as a timeout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{default_pair, next_msg, small_buffer_pair, within};
use ferrows::{Bytes, Config, Error, Message};
use futures_util::{SinkExt, StreamExt, stream};

/// A binary message carrying its sequence number and `len` bytes in all.
fn numbered(i: u32, len: usize) -> Message {
    let mut data = vec![(i % 251) as u8; len];
    data[..4].copy_from_slice(&i.to_be_bytes());
    Message::Binary(data.into())
}

fn number_of(msg: &Message) -> u32 {
    match msg {
        Message::Binary(b) => u32::from_be_bytes(b[..4].try_into().unwrap()),
        other => panic!("expected a numbered binary message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ends_split_send_and_receive_concurrently() {
    const N: u32 = 5000;
    let (server, client) = default_pair().await;
    let (mut server_rx, mut server_tx) = server.split();
    let (mut client_rx, mut client_tx) = client.split();
    assert!(server_rx.is_pair_of(&server_tx));

    let server_writer = tokio::spawn(async move {
        for i in 0..N {
            server_tx.send(numbered(i, 64)).await.unwrap();
        }
        server_tx
    });
    let client_writer = tokio::spawn(async move {
        for i in 0..N {
            client_tx.feed(numbered(i, 200)).await.unwrap();
            if i % 100 == 99 {
                client_tx.flush().await.unwrap();
            }
        }
        client_tx.flush().await.unwrap();
        client_tx
    });
    let server_reader = tokio::spawn(async move {
        for i in 0..N {
            let msg = within("server recv", server_rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(number_of(&msg), i);
            assert_eq!(msg.len(), 200);
        }
        server_rx
    });
    for i in 0..N {
        let msg = within("client recv", client_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(number_of(&msg), i);
        assert_eq!(msg.len(), 64);
    }
    let mut server_tx = within("server writer", server_writer).await.unwrap();
    let mut client_tx = within("client writer", client_writer).await.unwrap();
    let mut server_rx = within("server reader", server_reader).await.unwrap();
    assert_eq!(server_tx.buffered_amount(), 0);

    // The client's writer closes; its reader sees the answer and the end,
    // the server's reader the close and the end.
    client_tx.close(1000, "done").await.unwrap();
    assert!(matches!(client_tx.send("late").await, Err(Error::Closed)));
    let msg = within("server close", server_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(&msg, Message::Close(Some(f)) if f.code.0 == 1000 && f.reason() == "done"));
    let msg = within("client close", client_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(&msg, Message::Close(Some(f)) if f.code.0 == 1000));
    assert!(within("client end", client_rx.recv()).await.is_none());
    drop((client_rx, client_tx));
    assert!(within("server end", server_rx.recv()).await.is_none());
    assert!(matches!(server_tx.send("late").await, Err(Error::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pongs_go_out_while_the_writer_is_blocked_by_backpressure() {
    const N: u32 = 2000;
    const PINGS: usize = 20;
    let server_config = Config::default()
        .write_high_water_mark(4096)
        .close_timeout(common::TIMEOUT);
    let (server, mut client) = small_buffer_pair(server_config, Config::default()).await;
    let (mut reader, mut writer) = server.split();

    // 2 MB against a few KiB of socket buffers and a 4 KiB mark: the writer
    // blocks almost at once, since the client does not read yet.
    let writer_task = tokio::spawn(async move {
        for i in 0..N {
            writer.send(numbered(i, 1024)).await.unwrap();
        }
        writer
    });
    let reader_task = tokio::spawn(async move {
        let mut pings = 0;
        loop {
            match within("server recv", reader.recv()).await {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(Message::Close(_))) => {}
                Some(Ok(other)) => panic!("unexpected {other:?}"),
                Some(Err(e)) => panic!("server reader: {e}"),
                None => return pings,
            }
        }
    });

    // With the writer blocked, the pings make the reader queue pongs behind
    // its backlog and wait for the socket too: now both halves wait.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..PINGS {
        client
            .send(Message::ping(format!("ping {i}")))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Now read: every message in order, and every pong.
    let mut next = 0;
    let mut pongs = 0;
    while next < N || pongs < PINGS {
        match next_msg(&mut client).await {
            Message::Pong(p) => {
                assert_eq!(p, Bytes::from(format!("ping {pongs}")));
                pongs += 1;
            }
            msg => {
                assert_eq!(number_of(&msg), next);
                next += 1;
            }
        }
    }
    let writer = within("writer finishes", writer_task).await.unwrap();
    assert_eq!(writer.buffered_amount(), 0);
    within("close", client.close(1000, "")).await.unwrap();
    drop(client);
    assert_eq!(within("reader", reader_task).await.unwrap(), PINGS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reply_goes_out_while_the_writer_is_blocked() {
    let server_config = Config::default()
        .write_high_water_mark(4096)
        .close_timeout(common::TIMEOUT);
    let (server, mut client) = small_buffer_pair(server_config, Config::default()).await;
    let (mut reader, mut writer) = server.split();

    // The writer sends until the connection closes under it.
    let writer_task = tokio::spawn(async move {
        let mut sent = 0u32;
        for i in 0..100_000 {
            match writer.send(numbered(i, 1024)).await {
                Ok(()) => sent += 1,
                Err(e) => return (sent, Some(e)),
            }
        }
        (sent, None)
    });
    let reader_task = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(msg) = within("server recv", reader.recv()).await {
            seen.push(msg.unwrap());
        }
        seen
    });

    tokio::time::sleep(Duration::from_millis(200)).await;
    client.send(Message::close(1001, "leaving")).await.unwrap();
    // Read the backlog, then the answer and the end.
    let mut received = 0u32;
    loop {
        match next_msg(&mut client).await {
            Message::Close(Some(f)) => {
                assert_eq!(f.code.0, 1001);
                break;
            }
            msg => {
                assert_eq!(number_of(&msg), received);
                received += 1;
            }
        }
    }
    assert!(within("client end", client.recv()).await.is_none());
    drop(client);

    let (sent, error) = within("writer", writer_task).await.unwrap();
    assert!(matches!(error, Some(Error::Closed)), "{error:?}");
    assert_eq!(
        sent, received,
        "every message sent before the close arrived"
    );
    assert!(sent < 100_000);
    let seen = within("reader", reader_task).await.unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(matches!(&seen[0], Message::Close(Some(f)) if f.reason() == "leaving"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_close_is_answered_through_the_reader() {
    let (server, mut client) = default_pair().await;
    let (mut reader, mut writer) = server.split();
    let client_task = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(msg) = within("client recv", client.recv()).await {
            seen.push(msg.unwrap());
        }
        seen
    });
    writer.send("before").await.unwrap();
    writer.close(4001, "server done").await.unwrap();
    assert!(matches!(writer.send("after").await, Err(Error::Closed)));
    assert!(matches!(writer.queue("after"), Err(Error::Closed)));
    let msg = within("reader", reader.recv()).await.unwrap().unwrap();
    assert!(matches!(&msg, Message::Close(Some(f)) if f.code.0 == 4001 && f.reason().is_empty()));
    assert!(within("reader end", reader.recv()).await.is_none());
    let seen = within("client", client_task).await.unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].as_text(), Some("before"));
    assert!(
        matches!(&seen[1], Message::Close(Some(f)) if f.code.0 == 4001 && f.reason() == "server done")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halves_are_a_stream_and_a_sink() {
    let (url, _server) = common::echo_server(Config::default()).await;
    let (ws, _) = within("connect", ferrows::connect(&url)).await.unwrap();
    let (mut rx, mut tx) = ws.split();
    let messages: Vec<Message> = (0..500).map(|i| Message::text(format!("#{i}"))).collect();
    let to_send = messages.clone();
    let sender = tokio::spawn(async move {
        let mut source = stream::iter(to_send).map(Ok);
        tx.send_all(&mut source).await.unwrap();
        tx
    });
    let echoed: Vec<Message> = within("echoes", (&mut rx).take(messages.len()).collect::<Vec<_>>())
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(echoed, messages);
    let mut tx = within("sender", sender).await.unwrap();
    SinkExt::close(&mut tx).await.unwrap();
    let msg = within("close reply", rx.next()).await.unwrap().unwrap();
    assert!(msg.is_close());
    assert!(within("end", rx.next()).await.is_none());
}

#[tokio::test]
async fn halves_of_different_connections_are_not_a_pair() {
    let (a, _a_client) = default_pair().await;
    let (b, _b_client) = default_pair().await;
    let (a_rx, a_tx) = a.split();
    let (b_rx, b_tx) = b.split();
    assert!(a_rx.is_pair_of(&a_tx));
    assert!(b_rx.is_pair_of(&b_tx));
    assert!(!a_rx.is_pair_of(&b_tx));
    assert!(!b_rx.is_pair_of(&a_tx));
}

#[tokio::test]
async fn fragment_mode_on_the_reading_half() {
    let (server, mut client) = default_pair().await;
    let (mut rx, _tx) = server.split();
    rx.set_fragment_mode(true);
    let piece = |data: &'static [u8], fin| {
        Message::Fragment(ferrows::Fragment {
            opcode: ferrows::OpCode::Binary,
            data: Bytes::from_static(data),
            message_offset: 0,
            first: false,
            fin,
        })
    };
    client.send(piece(b"abc", false)).await.unwrap();
    client.send(piece(b"de", true)).await.unwrap();
    let first = within("first", rx.recv()).await.unwrap().unwrap();
    let second = within("second", rx.recv()).await.unwrap().unwrap();
    match (first, second) {
        (Message::Fragment(a), Message::Fragment(b)) => {
            assert_eq!(
                (&a.data[..], a.message_offset, a.first, a.fin),
                (&b"abc"[..], 0, true, false)
            );
            assert_eq!(
                (&b.data[..], b.message_offset, b.first, b.fin),
                (&b"de"[..], 3, false, true)
            );
        }
        other => panic!("expected two fragments, got {other:?}"),
    }
}

#[tokio::test]
async fn the_writer_half_fails_once_the_reader_saw_the_connection_end() {
    let (server, client) = default_pair().await;
    let (mut reader, mut writer) = server.split();
    drop(client);
    let result = within("recv", reader.recv()).await;
    assert!(
        matches!(result, Some(Err(Error::AbnormalClosure))),
        "{result:?}"
    );
    assert!(reader.recv().await.is_none());
    // As `WebSocket::send` documents: `Error::Closed` once the connection
    // ended.
    let sent = within("send", writer.send("anyone there?")).await;
    assert!(matches!(sent, Err(Error::Closed)), "{sent:?}");
}
