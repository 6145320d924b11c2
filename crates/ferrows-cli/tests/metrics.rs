//! `--metrics ADDR` / `FERROWS_METRICS` of the `ferrows` binary, scraped
//! over HTTP: exact counts after known traffic on `serve echo` (handshakes
//! by outcome, messages and bytes by opcode, close codes, connections),
//! the gamepad's dead-man trips, and the chat backplane through a real
//! `redis-server`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferrows::Message;
use support::redis::RedisServer;
use support::{Server, http, next_data, upgrade_status, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GOOD: &str = "http://good.example";

/// The metrics address the server logged.
async fn metrics_addr(server: &Server) -> SocketAddr {
    let line = server
        .wait_log(&["metrics: http://"], Duration::from_secs(30))
        .await;
    let (_, rest) = line.split_once("metrics: http://").unwrap();
    rest.trim_end_matches("/metrics").trim().parse().unwrap()
}

/// One scrape of `/metrics`.
async fn scrape(addr: SocketAddr) -> String {
    let response = http(addr, "GET", "/metrics", "").await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{response:?}"
    );
    response.body
}

/// The value of the sample `series` (name and labels as exposed), if any.
fn value(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// Scrapes until `series` reads `want` (30 s at most); returns that scrape.
async fn until_value(addr: SocketAddr, series: &str, want: u64) -> String {
    let start = Instant::now();
    loop {
        let text = scrape(addr).await;
        if value(&text, series) == Some(want) {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{series} never became {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client with the allowed Origin.
async fn client(server: &Server) -> support::Client {
    let builder = ferrows::ClientBuilder::new(server.ws_url("/")).header("Origin", GOOD);
    within(10, builder.connect()).await.unwrap().0
}

/// The status a raw request gets.
async fn status_of(addr: SocketAddr, request: &str) -> u16 {
    let mut tcp = within(5, tokio::net::TcpStream::connect(addr))
        .await
        .unwrap();
    within(5, tcp.write_all(request.as_bytes())).await.unwrap();
    let mut raw = Vec::new();
    within(10, tcp.read_to_end(&mut raw)).await.unwrap();
    support::parse_response(&raw).status
}

#[tokio::test]
async fn serve_echo_exports_exact_counts_of_known_traffic() {
    let server = Server::start(&[
        "serve",
        "echo",
        "--port",
        "0",
        "--no-compression",
        "--heartbeat-interval",
        "600000",
        "--max-connections",
        "2",
        "--origin",
        GOOD,
        "--metrics",
        "127.0.0.1:0",
    ]);
    let maddr = metrics_addr(&server).await;

    // Before any traffic: every series there, at zero.
    let text = scrape(maddr).await;
    assert_eq!(
        value(&text, "ferrows_build_info{version=\"0.1.0\"}"),
        Some(1)
    );
    assert_eq!(value(&text, "ferrows_connections_open"), Some(0));
    assert_eq!(
        value(&text, "ferrows_handshakes_total{outcome=\"101\"}"),
        Some(0)
    );
    assert_eq!(
        value(&text, "ferrows_handshakes_total{outcome=\"timeout\"}"),
        Some(0)
    );
    // Other paths and methods of the metrics port.
    assert_eq!(http(maddr, "GET", "/", "").await.status, 404);
    assert_eq!(http(maddr, "POST", "/metrics", "").await.status, 405);

    // Two clients: a sends two texts and a binary, b one text.
    let mut a = client(&server).await;
    let mut b = client(&server).await;
    a.send("hello").await.unwrap();
    a.send("world").await.unwrap();
    a.send(Message::Binary(vec![1, 2, 3, 4].into()))
        .await
        .unwrap();
    b.send("hi").await.unwrap();
    for _ in 0..3 {
        next_data(&mut a, 10).await;
    }
    next_data(&mut b, 10).await;
    until_value(maddr, "ferrows_connections_open", 2).await;
    // The cap is full: 503; a foreign Origin: 403.
    assert_eq!(
        upgrade_status(server.addr, "/", &format!("Origin: {GOOD}\r\n")).await,
        503
    );
    assert_eq!(
        upgrade_status(server.addr, "/", "Origin: http://evil.example\r\n").await,
        403
    );
    // Both close: a with 4001, b with 1000.
    within(10, a.close(4001, "bye")).await.unwrap();
    within(10, b.close(1000, "")).await.unwrap();
    until_value(maddr, "ferrows_connections_open", 0).await;
    // A wrong version (426) and a request that is not HTTP (400).
    let v12 = support::upgrade_request(server.addr, "/", &format!("Origin: {GOOD}\r\n"))
        .replace("Version: 13", "Version: 12");
    assert_eq!(status_of(server.addr, &v12).await, 426);
    assert_eq!(status_of(server.addr, "NOT HTTP AT ALL\r\n\r\n").await, 400);

    let text = until_value(maddr, "ferrows_handshakes_total{outcome=\"400\"}", 1).await;
    let expect = [
        ("ferrows_connections_open", 0),
        ("ferrows_connections_total", 2),
        ("ferrows_handshakes_total{outcome=\"101\"}", 2),
        ("ferrows_handshakes_total{outcome=\"400\"}", 1),
        ("ferrows_handshakes_total{outcome=\"403\"}", 1),
        ("ferrows_handshakes_total{outcome=\"426\"}", 1),
        ("ferrows_handshakes_total{outcome=\"429\"}", 0),
        ("ferrows_handshakes_total{outcome=\"431\"}", 0),
        ("ferrows_handshakes_total{outcome=\"503\"}", 1),
        ("ferrows_handshakes_total{outcome=\"timeout\"}", 0),
        ("ferrows_messages_received_total{opcode=\"text\"}", 3),
        ("ferrows_received_bytes_total{opcode=\"text\"}", 12),
        ("ferrows_messages_received_total{opcode=\"binary\"}", 1),
        ("ferrows_received_bytes_total{opcode=\"binary\"}", 4),
        ("ferrows_messages_received_total{opcode=\"close\"}", 2),
        ("ferrows_received_bytes_total{opcode=\"close\"}", 3),
        ("ferrows_messages_sent_total{opcode=\"text\"}", 3),
        ("ferrows_sent_bytes_total{opcode=\"text\"}", 12),
        ("ferrows_messages_sent_total{opcode=\"binary\"}", 1),
        ("ferrows_sent_bytes_total{opcode=\"binary\"}", 4),
        ("ferrows_messages_sent_total{opcode=\"close\"}", 2),
        ("ferrows_messages_sent_total{opcode=\"ping\"}", 0),
        ("ferrows_close_codes_received_total{code=\"4001\"}", 1),
        ("ferrows_close_codes_received_total{code=\"1000\"}", 1),
        ("ferrows_close_codes_sent_total{code=\"4001\"}", 1),
        ("ferrows_close_codes_sent_total{code=\"1000\"}", 1),
        (
            "ferrows_deflate_uncompressed_bytes_total{direction=\"sent\"}",
            0,
        ),
        ("ferrows_queue_drops_total", 0),
    ];
    for (series, want) in expect {
        assert_eq!(value(&text, series), Some(want), "{series} in:\n{text}");
    }
    // Not a gamepad, not a cluster.
    assert!(!text.contains("ferrows_gamepad"), "{text}");
    assert!(!text.contains("ferrows_backplane"), "{text}");
}

#[tokio::test]
async fn the_env_var_turns_metrics_on_and_the_gamepad_counts_deadman_trips() {
    let server = Server::start_with_env(
        &["serve", "gamepad", "--port", "0", "--output", "jsonl"],
        &[("FERROWS_METRICS", "127.0.0.1:0")],
    );
    let maddr = metrics_addr(&server).await;
    assert_eq!(
        value(&scrape(maddr).await, "ferrows_gamepad_deadman_trips_total"),
        Some(0)
    );
    let mut driver = support::connect(&server.ws_url("/")).await;
    // The legacy format: button 0, a stick off centre; then silence.
    driver.send("1 0.12 -0.50<br/>").await.unwrap();
    until_value(maddr, "ferrows_gamepad_deadman_trips_total", 1).await;
    within(10, driver.close(1000, "")).await.unwrap();
}

#[tokio::test]
async fn serve_chat_with_redis_exports_the_backplane() {
    let redis = RedisServer::start();
    let server = Server::start_with_env(
        &[
            "serve",
            "chat",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics",
            "127.0.0.1:0",
        ],
        &[("FERROWS_REDIS_URL", &redis.url())],
    );
    let maddr = metrics_addr(&server).await;
    let text = scrape(maddr).await;
    assert_eq!(value(&text, "ferrows_backplane_up"), Some(1), "{text}");
    let mut ws = support::connect(&server.ws_url("/")).await;
    ws.send("hello").await.unwrap();
    // Our own message comes back through the room.
    within(10, async {
        loop {
            if let Message::Text(t) = next_data(&mut ws, 10).await {
                if t.as_str().contains("hello") {
                    return;
                }
            }
        }
    })
    .await;
    // Local clients come first: the copy can arrive before the publish is
    // acknowledged, so wait for the outbox to drain.
    let text = until_value(maddr, "ferrows_backplane_outbox_depth", 0).await;
    assert!(
        value(&text, "ferrows_backplane_published_total").is_some_and(|n| n >= 1),
        "{text}"
    );
    assert_eq!(
        value(&text, "ferrows_backplane_lost_total"),
        Some(0),
        "{text}"
    );
    // Redis gone: the backplane is reported down.
    let mut redis = redis;
    redis.kill();
    until_value(maddr, "ferrows_backplane_up", 0).await;
    within(10, ws.close(1000, "")).await.unwrap();
}
