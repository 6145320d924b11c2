//! `ferrows::axum::WebSocketUpgrade` in a real axum app on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use common::{RawPeer, next_msg, within};
use ferrows::axum::WebSocketUpgrade;
use ferrows::proto::OpCode;
use ferrows::proto::frame::FrameHeader;
use ferrows::{ClientBuilder, Config, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo(ws: WebSocketUpgrade) -> Response {
    ws.protocols(["chat.v2", "chat.v1"])
        .config(Config::default().compression(true))
        .header("X-Served-By", "axum-test")
        .on_upgrade(|mut socket| async move {
            while let Some(Ok(msg)) = socket.recv().await {
                if (msg.is_text() || msg.is_binary()) && socket.send(msg).await.is_err() {
                    break;
                }
            }
        })
}

/// A page and the WebSocket on one route.
async fn maybe(ws: Option<WebSocketUpgrade>) -> Response {
    match ws {
        Some(ws) => ws.on_upgrade(|mut socket| async move {
            let _ = socket.send("from /maybe").await;
            let _ = socket.close(1000, "").await;
        }),
        None => "a page".into_response(),
    }
}

async fn app() -> SocketAddr {
    let app = Router::new()
        .route("/api", get(|| async { "{\"ok\":true}" }))
        .route("/ws", any(echo))
        .route("/maybe", get(maybe));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Sends `request` on a new connection and reads the response head and
/// its Content-Length body, leaving the connection open.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (TcpStream, String, String) {
    let mut stream = within("connect", TcpStream::connect(addr)).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(within("head", stream.read_u8()).await.unwrap());
        assert!(head.len() < 16 * 1024);
    }
    let head = String::from_utf8(head).unwrap();
    let len = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0; len];
    within("body", stream.read_exact(&mut body)).await.unwrap();
    (stream, head, String::from_utf8(body).unwrap())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn status(head: &str) -> u16 {
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn upgrades_with_deflate_and_the_servers_first_protocol() {
    let addr = app().await;
    let (mut ws, response) = within(
        "connect",
        ClientBuilder::new(format!("ws://{addr}/ws"))
            .config(Config::default().compression(true))
            .protocol("chat.v1")
            .protocol("chat.v2")
            .connect(),
    )
    .await
    .unwrap();
    // The server's order decides, as in axum's `protocols`.
    assert_eq!(response.header("sec-websocket-protocol"), Some("chat.v2"));
    assert_eq!(response.header("x-served-by"), Some("axum-test"));
    assert!(ws.compression().is_some(), "{}", response.to_head_string());
    let text = "axum ".repeat(5_000);
    ws.send(text.as_str()).await.unwrap();
    assert_eq!(next_msg(&mut ws).await.as_text(), Some(text.as_str()));
    ws.close(1000, "").await.unwrap();

    // Only chat.v1 offered: chat.v1. None offered: none.
    let (_, response) = within(
        "connect",
        ClientBuilder::new(format!("ws://{addr}/ws"))
            .protocol("chat.v1")
            .connect(),
    )
    .await
    .unwrap();
    assert_eq!(response.header("sec-websocket-protocol"), Some("chat.v1"));
    let (ws, response) = within("connect", ferrows::connect(&format!("ws://{addr}/ws")))
        .await
        .unwrap();
    assert_eq!(response.header("sec-websocket-protocol"), None);
    assert!(ws.compression().is_none());
}

#[tokio::test]
async fn rejections_answer_as_ferrows_listener_does() {
    let addr = app().await;
    let base = "Host: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
    // Wrong version: 426 with the version the server speaks.
    let req = format!(
        "GET /ws HTTP/1.1\r\n{base}Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 8\r\n\r\n"
    );
    let (_, head, body) = exchange(addr, req.as_bytes()).await;
    assert_eq!(status(&head), 426, "{head}");
    assert_eq!(header(&head, "sec-websocket-version"), Some("13"), "{head}");
    assert!(body.contains("13 required"), "{body}");
    // A key that is not 16 bytes of base64: 400.
    let req = format!(
        "GET /ws HTTP/1.1\r\n{base}Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let (_, head, body) = exchange(addr, req.as_bytes()).await;
    assert_eq!(status(&head), 400, "{head}");
    assert!(body.contains("Sec-WebSocket-Key"), "{body}");
    // Not GET: 400, as on ferrows' listener.
    let req = format!(
        "POST /ws HTTP/1.1\r\n{base}Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n"
    );
    let (_, head, body) = exchange(addr, req.as_bytes()).await;
    assert_eq!(status(&head), 400, "{head}");
    assert!(body.contains("GET"), "{body}");
    // A plain GET on the WebSocket route: 400 "missing Upgrade".
    let (_, head, _) = exchange(addr, b"GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(status(&head), 400, "{head}");
}

#[tokio::test]
async fn a_page_and_a_websocket_on_one_route_and_rest_beside() {
    let addr = app().await;
    let (_, head, body) = exchange(addr, b"GET /maybe HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(body, "a page");
    let (_, head, body) = exchange(addr, b"GET /api HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(body, "{\"ok\":true}");
    let (mut ws, _) = within("connect", ferrows::connect(&format!("ws://{addr}/maybe")))
        .await
        .unwrap();
    assert_eq!(next_msg(&mut ws).await.as_text(), Some("from /maybe"));
    assert!(matches!(next_msg(&mut ws).await, Message::Close(_)));
    // A broken upgrade on the optional route is still rejected.
    let req = format!(
        "GET /maybe HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\n\r\n"
    );
    let (_, head, _) = exchange(addr, req.as_bytes()).await;
    assert_eq!(status(&head), 426, "{head}");
}

#[tokio::test]
async fn a_frame_pipelined_behind_the_request_is_not_lost() {
    let addr = app().await;
    let mut request = format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    let mut frame = FrameHeader::new(OpCode::Binary, 0);
    frame.mask = Some([1, 2, 3, 4]);
    request.extend(RawPeer::encode(frame, b"\x00early"));
    let (mut stream, head, _) = exchange(addr, &request).await;
    assert_eq!(status(&head), 101, "{head}");
    let mut h = [0u8; 2];
    within("frame", stream.read_exact(&mut h)).await.unwrap();
    assert_eq!(h, [0x82, 6]);
    let mut payload = [0u8; 6];
    within("payload", stream.read_exact(&mut payload))
        .await
        .unwrap();
    assert_eq!(&payload, b"\x00early");
}
