//! `ferrows::metrics`: a `Listener` over real sockets counts exactly what
//! happened (handshakes by outcome, a timeout, messages and bytes by
//! opcode, close codes, connections open); compression bytes in both
//! directions; a hub's slow-member drops; nothing without metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::within;
use ferrows::listener::{Accepted, Listener};
use ferrows::metrics::{Metrics, Snapshot};
use ferrows::{Config, Handshake, Hub, Message, Shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Echoes text and binary messages until the peer leaves.
async fn echo(hs: Handshake<Accepted>, _peer: SocketAddr, _shutdown: Shutdown) {
    let Ok(mut ws) = hs.accept().await else {
        return;
    };
    while let Some(Ok(msg)) = ws.recv().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

const GOOD: &str = "http://good.example";

fn upgrade_request(addr: SocketAddr, extra: &str, version: u8) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nOrigin: {GOOD}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n"
    )
}

/// The status of the response to `request`.
async fn status_of(addr: SocketAddr, request: &str) -> u16 {
    let mut tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
    within("write", tcp.write_all(request.as_bytes()))
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = within("response", tcp.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed without a response: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Waits (up to 30 s) for `check` to hold of the snapshot; returns it.
async fn until(metrics: &Metrics, what: &str, check: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let start = Instant::now();
    loop {
        let s = metrics.snapshot();
        if check(&s) {
            return s;
        }
        assert!(
            start.elapsed() < common::TIMEOUT,
            "{what}: never reached, last {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_listener_counts_every_outcome_message_and_close_code() {
    let metrics = Metrics::new();
    let config = Config::default()
        .handshake_timeout(Duration::from_secs(1))
        .metrics(metrics.clone());
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap())
        .unwrap()
        .config(config)
        .max_connections(1)
        .origins([GOOD]);
    let addr = listener.local_addr();
    let handle = listener.handle();
    let server = tokio::spawn(listener.serve_until(std::future::pending(), echo));
    let url = format!("ws://{addr}/");

    // One connection: text, binary, a ping, then a close with 4000.
    let client = ferrows::ClientBuilder::new(url.as_str()).header("Origin", GOOD);
    let (mut ws, _) = within("connect", client.connect()).await.unwrap();
    ws.send("hello").await.unwrap();
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    ws.send(Message::Ping("p".into())).await.unwrap();
    for _ in 0..3 {
        within("echo", ws.recv()).await.unwrap().unwrap();
    }
    until(&metrics, "one open, messages in", |s| {
        s.connections_open == 1 && s.received.ping.messages == 1
    })
    .await;
    // The cap is full: 503. A foreign origin is refused first: 403.
    assert_eq!(status_of(addr, &upgrade_request(addr, "", 13)).await, 503);
    let foreign = upgrade_request(addr, "", 13).replace(GOOD, "http://evil.example");
    assert_eq!(status_of(addr, &foreign).await, 403);
    within("close", ws.close(4000, "bye")).await.unwrap();
    until(&metrics, "closed", |s| s.connections_open == 0).await;
    // With the place free: a wrong version (426), a bad key (400), a head
    // too large (431), and a silent socket (timeout).
    assert_eq!(status_of(addr, &upgrade_request(addr, "", 12)).await, 426);
    let bad_key = upgrade_request(addr, "", 13).replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
    assert_eq!(status_of(addr, &bad_key).await, 400);
    let huge = upgrade_request(addr, &format!("X-Big: {}\r\n", "a".repeat(20_000)), 13);
    assert_eq!(status_of(addr, &huge).await, 431);
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = within("timeout close", silent.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");

    let s = until(&metrics, "all counted", |s| s.handshake_timeouts == 1).await;
    let statuses: BTreeMap<u16, u64> = [(101, 1), (400, 1), (403, 1), (426, 1), (431, 1), (503, 1)]
        .into_iter()
        .collect();
    assert_eq!(s.handshakes, statuses);
    assert_eq!(s.connections_total, 1);
    assert_eq!(s.connections_open, 0);
    assert_eq!((s.received.text.messages, s.received.text.bytes), (1, 5));
    assert_eq!(
        (s.received.binary.messages, s.received.binary.bytes),
        (1, 3)
    );
    assert_eq!((s.received.ping.messages, s.received.ping.bytes), (1, 1));
    assert_eq!((s.received.close.messages, s.received.close.bytes), (1, 3));
    assert_eq!((s.sent.text.messages, s.sent.text.bytes), (1, 5));
    assert_eq!((s.sent.binary.messages, s.sent.binary.bytes), (1, 3));
    assert_eq!((s.sent.pong.messages, s.sent.pong.bytes), (1, 1));
    // The server echoes the code without the reason.
    assert_eq!((s.sent.close.messages, s.sent.close.bytes), (1, 0));
    assert_eq!(s.close_codes_received, [(4000, 1)].into_iter().collect());
    assert_eq!(s.close_codes_sent, [(4000, 1)].into_iter().collect());
    assert_eq!(s.compression, Default::default());
    handle.shutdown();
    within("shutdown", server).await.unwrap().unwrap();
}

#[tokio::test]
async fn compression_counts_bytes_before_and_after_deflate_both_ways() {
    let metrics = Metrics::new();
    let server_config = Config::default().compression(true).metrics(metrics.clone());
    let (server, mut client) =
        common::pair(server_config, Config::default().compression(true)).await;
    let mut server = server;
    let text = "a".repeat(10_000);
    client.send(text.as_str()).await.unwrap();
    let got = within("recv", server.recv()).await.unwrap().unwrap();
    server.send(got).await.unwrap();
    within("echo", client.recv()).await.unwrap().unwrap();
    drop(server);
    let c = metrics.snapshot().compression;
    assert_eq!(c.received_uncompressed_bytes, 10_000);
    assert_eq!(c.sent_uncompressed_bytes, 10_000);
    // 10 000 repeated bytes compress to a few dozen.
    assert!((1..200).contains(&c.received_compressed_bytes), "{c:?}");
    assert!((1..200).contains(&c.sent_compressed_bytes), "{c:?}");
}

#[tokio::test]
async fn a_hub_with_metrics_counts_its_slow_members() {
    let metrics = Metrics::new();
    let hub = Hub::with_metrics(1, metrics.clone());
    let slow = hub.join();
    let _also_slow = hub.join();
    assert_eq!(hub.broadcast("one"), 2);
    assert_eq!(hub.broadcast("two"), 0);
    assert!(slow.is_lagged());
    assert_eq!(metrics.snapshot().queue_drops, 2);
}

#[tokio::test]
async fn connections_without_metrics_count_nowhere() {
    let metrics = Metrics::new();
    let (mut server, mut client) = common::default_pair().await;
    client.send("x").await.unwrap();
    within("recv", server.recv()).await.unwrap().unwrap();
    assert_eq!(metrics.snapshot(), Snapshot::default());
}
