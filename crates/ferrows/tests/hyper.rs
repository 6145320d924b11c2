//! `ferrows::hyper`: upgrades inside a real hyper 1 server on loopback,
//! reached by ferrows' client and by hand-written requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use common::{RawPeer, next_msg, within};
use ferrows::proto::OpCode;
use ferrows::proto::frame::FrameHeader;
use ferrows::proto::handshake::accept_key;
use ferrows::{Accept, ClientBuilder, Config, Error, Message};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What the server saw of each WebSocket it accepted.
#[derive(Debug)]
struct Seen {
    is_tcp: bool,
    protocol: Option<String>,
    deflate: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    /// `TokioIo<TcpStream>`, as axum::serve and most hyper servers.
    Tcp,
    /// A wrapper hyper cannot hand back as a `TcpStream`.
    Wrapped,
}

/// A hyper server with a REST route on `/api` and an echo WebSocket on
/// `/ws` (compression on, subprotocol `chat.v2` if offered).
async fn hyper_server(
    transport: Transport,
    with_upgrades: bool,
) -> (SocketAddr, mpsc::UnboundedReceiver<Result<Seen, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            let service = service_fn(move |req| handle(req, tx.clone()));
            tokio::spawn(async move {
                let builder = http1::Builder::new();
                let _ = match (transport, with_upgrades) {
                    (Transport::Tcp, true) => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await
                    }
                    (Transport::Tcp, false) => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    (Transport::Wrapped, _) => {
                        builder
                            .serve_connection(TokioIo::new(Wrapped(stream)), service)
                            .with_upgrades()
                            .await
                    }
                };
            });
        }
    });
    (addr, rx)
}

async fn handle(
    mut req: Request<Incoming>,
    seen: mpsc::UnboundedSender<Result<Seen, String>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    match req.uri().path() {
        "/api" => Ok(Response::new(Full::from("{\"ok\":true}"))),
        "/ws" => {
            let config = Config::default().compression(true);
            let result = ferrows::hyper::upgrade_with(&mut req, config, |r| {
                Ok(match r.subprotocols().find(|p| *p == "chat.v2") {
                    Some(p) => Accept::new().protocol(p),
                    None => Accept::new(),
                })
            });
            match result {
                Ok((response, upgrade)) => {
                    tokio::spawn(async move {
                        let mut ws = match upgrade.await {
                            Ok(ws) => ws,
                            Err(e) => {
                                let _ = seen.send(Err(e.to_string()));
                                return;
                            }
                        };
                        let _ = seen.send(Ok(Seen {
                            is_tcp: ws.get_ref().is_tcp(),
                            protocol: ws.protocol().map(str::to_owned),
                            deflate: ws.compression().is_some(),
                        }));
                        while let Some(Ok(msg)) = ws.recv().await {
                            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                                break;
                            }
                        }
                    });
                    Ok(response)
                }
                Err(e) => Ok(ferrows::hyper::refusal(&e)),
            }
        }
        _ => {
            let mut r = Response::new(Full::from("not found"));
            *r.status_mut() = hyper::StatusCode::NOT_FOUND;
            Ok(r)
        }
    }
}

/// A transport wrapper: forwards everything to the TCP stream.
struct Wrapped(TcpStream);

impl AsyncRead for Wrapped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Wrapped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Reads one HTTP response (head, and a body of Content-Length bytes) from
/// `stream`, byte by byte so that nothing past it is consumed.
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(within("response head", stream.read_u8()).await.unwrap());
        assert!(head.len() < 16 * 1024, "head too long");
    }
    let head = String::from_utf8(head).unwrap();
    let len = header(&head, "content-length").map_or(0, |v| v.parse::<usize>().unwrap());
    let mut body = vec![0; len];
    within("response body", stream.read_exact(&mut body))
        .await
        .unwrap();
    (head, String::from_utf8(body).unwrap())
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

/// Reads one small unmasked server frame: (opcode byte, payload).
async fn read_small_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    within("frame header", stream.read_exact(&mut h))
        .await
        .unwrap();
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let len = usize::from(h[1] & 0x7F);
    assert!(len < 126, "small frame expected");
    let mut payload = vec![0; len];
    within("frame payload", stream.read_exact(&mut payload))
        .await
        .unwrap();
    (h[0], payload)
}

fn masked_text(payload: &[u8]) -> Vec<u8> {
    let mut header = FrameHeader::new(OpCode::Text, 0);
    header.mask = Some([9, 8, 7, 6]);
    RawPeer::encode(header, payload)
}

#[tokio::test]
async fn upgrade_answers_101_with_deflate_and_a_subprotocol() {
    let (addr, mut seen) = hyper_server(Transport::Tcp, true).await;
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
    assert_eq!(response.status(), 101);
    assert_eq!(response.header("sec-websocket-protocol"), Some("chat.v2"));
    assert!(
        response
            .header("sec-websocket-extensions")
            .is_some_and(|v| v.starts_with("permessage-deflate")),
        "{}",
        response.to_head_string()
    );
    assert_eq!(ws.protocol(), Some("chat.v2"));
    assert!(ws.compression().is_some());
    let big = "compressible ".repeat(10_000);
    ws.send(big.as_str()).await.unwrap();
    assert_eq!(next_msg(&mut ws).await.as_text(), Some(big.as_str()));
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Message::binary(vec![1u8, 2, 3]));
    ws.close(1000, "bye").await.unwrap();
    let seen = within("server report", seen.recv()).await.unwrap().unwrap();
    assert!(
        seen.is_tcp,
        "the TcpStream was not taken back from hyper: {seen:?}"
    );
    assert_eq!(seen.protocol.as_deref(), Some("chat.v2"));
    assert!(seen.deflate);
}

#[tokio::test]
async fn refusals_are_those_of_ferrows_own_listener() {
    let (hyper_addr, _seen) = hyper_server(Transport::Tcp, true).await;
    // ferrows' listener, answering the same requests.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let own_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = ferrows::accept(stream).await;
            });
        }
    });
    let base = "Host: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
    let cases = [
        // (request, expected status)
        (
            format!("GET /ws HTTP/1.1\r\n{base}Sec-WebSocket-Key: {KEY}\r\n\r\n"),
            426,
        ),
        (
            format!(
                "GET /ws HTTP/1.1\r\n{base}Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 8\r\n\r\n"
            ),
            426,
        ),
        (
            format!(
                "GET /ws HTTP/1.1\r\n{base}Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ),
            400,
        ),
        (
            format!("GET /ws HTTP/1.1\r\n{base}Sec-WebSocket-Version: 13\r\n\r\n"),
            400,
        ),
        (
            format!(
                "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            ),
            400,
        ),
        (
            format!(
                "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\
                 Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ),
            400,
        ),
    ];
    for (request, expected) in &cases {
        let mut hyper_conn = TcpStream::connect(hyper_addr).await.unwrap();
        hyper_conn.write_all(request.as_bytes()).await.unwrap();
        let (hyper_head, hyper_body) = read_response(&mut hyper_conn).await;
        let mut own_conn = TcpStream::connect(own_addr).await.unwrap();
        own_conn.write_all(request.as_bytes()).await.unwrap();
        let (own_head, own_body) = read_response(&mut own_conn).await;
        assert_eq!(status(&hyper_head), *expected, "{request}\n{hyper_head}");
        assert_eq!(status(&own_head), *expected, "{request}\n{own_head}");
        assert_eq!(hyper_body, own_body, "{request}");
        assert_eq!(
            header(&hyper_head, "sec-websocket-version"),
            header(&own_head, "sec-websocket-version"),
            "{request}\n{hyper_head}\n{own_head}"
        );
        assert_eq!(
            header(&hyper_head, "content-type"),
            header(&own_head, "content-type")
        );
    }
    // The 426 carries the version the server speaks.
    let (request, _) = &cases[0];
    let mut conn = TcpStream::connect(hyper_addr).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut conn).await;
    assert_eq!(header(&head, "sec-websocket-version"), Some("13"), "{head}");
}

async fn pipelined_first_frame(transport: Transport) {
    let (addr, mut seen) = hyper_server(transport, true).await;
    // The first frame rides in the same write as the request: hyper reads
    // it together with the head.
    let mut bytes = upgrade_request("/ws", "").into_bytes();
    bytes.extend(masked_text(b"early bird"));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert_eq!(status(&head), 101, "{head}");
    assert_eq!(
        header(&head, "sec-websocket-accept"),
        Some(accept_key(KEY.as_bytes()).as_str())
    );
    let (b0, payload) = read_small_frame(&mut stream).await;
    assert_eq!(b0, 0x81, "a final text frame");
    assert_eq!(payload, b"early bird");
    let seen = within("server report", seen.recv()).await.unwrap().unwrap();
    assert_eq!(seen.is_tcp, transport == Transport::Tcp, "{seen:?}");
}

#[tokio::test]
async fn a_frame_pipelined_behind_the_request_is_not_lost() {
    pipelined_first_frame(Transport::Tcp).await;
}

#[tokio::test]
async fn a_frame_pipelined_behind_the_request_is_not_lost_over_a_wrapped_transport() {
    pipelined_first_frame(Transport::Wrapped).await;
}

#[tokio::test]
async fn a_rest_route_next_to_the_websocket_on_one_connection() {
    let (addr, _seen) = hyper_server(Transport::Tcp, true).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A REST request first, then the upgrade on the same kept-alive
    // connection.
    stream
        .write_all(b"GET /api HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(body, "{\"ok\":true}");
    let mut bytes = upgrade_request("/ws", "").into_bytes();
    bytes.extend(masked_text(b"after rest"));
    stream.write_all(&bytes).await.unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert_eq!(status(&head), 101, "{head}");
    let (_, payload) = read_small_frame(&mut stream).await;
    assert_eq!(payload, b"after rest");
    // And ferrows' client reaches the REST route's neighbour too.
    let (mut ws, _) = within("connect", ferrows::connect(&format!("ws://{addr}/ws")))
        .await
        .unwrap();
    ws.send("hi").await.unwrap();
    assert_eq!(next_msg(&mut ws).await.as_text(), Some("hi"));
}

#[tokio::test]
async fn without_with_upgrades_the_upgrade_future_fails() {
    // hyper still attaches an upgrade handle, so the 101 goes out; the
    // future then reports that hyper never handed the connection over.
    let (addr, mut seen) = hyper_server(Transport::Tcp, false).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(upgrade_request("/ws", "").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert_eq!(status(&head), 101, "{head}");
    let report = within("server report", seen.recv()).await.unwrap();
    assert!(report.is_err(), "{report:?}");
}

#[test]
fn a_request_without_hyper_upgrade_handle_is_a_500() {
    let mut req = valid_request();
    let Err(e) = ferrows::hyper::upgrade::<_, Bytes>(&mut req, Config::default()) else {
        panic!("upgraded without hyper");
    };
    let response: http::Response<Bytes> = ferrows::hyper::refusal(&e);
    assert_eq!(response.status(), 500);
    assert!(
        String::from_utf8_lossy(response.body()).contains("with_upgrades"),
        "{e}"
    );
}

fn valid_request() -> http::Request<()> {
    http::Request::get("/ws")
        .header("host", "localhost")
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-key", KEY)
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap()
}

#[test]
fn http2_connect_takes_its_own_branch() {
    let mut req = http::Request::connect("https://localhost/ws")
        .version(http::Version::HTTP_2)
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    assert!(ferrows::hyper::is_upgrade_request(&req));
    match ferrows::hyper::upgrade::<_, Bytes>(&mut req, Config::default()) {
        Err(Error::Handshake(e)) => {
            assert_eq!(e.status, 501);
            assert!(e.reason.contains("ferrows::h2"), "{e}");
        }
        other => panic!(
            "expected the HTTP/2 branch, got {:?}",
            other.map(|(r, _)| r.status())
        ),
    }
}

#[test]
fn a_subprotocol_the_client_did_not_offer_is_refused() {
    // `upgrade_with` needs hyper's upgrade handle: insert the one of a
    // request hyper never saw (it resolves to an error, never awaited).
    let mut req = valid_request();
    let mut donor = http::Request::new(());
    let on_upgrade = hyper::upgrade::on(&mut donor);
    req.extensions_mut().insert(on_upgrade);
    let result = ferrows::hyper::upgrade_with::<_, Bytes, _>(&mut req, Config::default(), |_| {
        Ok(Accept::new().protocol("never-offered"))
    });
    match result {
        Err(Error::Handshake(e)) => assert_eq!(e.status, 500),
        other => panic!("expected a 500, got {:?}", other.map(|(r, _)| r.status())),
    }
}
