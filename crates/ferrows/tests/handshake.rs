//! The opening handshake over loopback TCP: request callbacks, refusals,
//! plain HTTP on the WebSocket's port, malformed requests, timeouts, and
//! the client's checks of the server's response.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{RawPeer, http_exchange, listen, next_msg, within};
use ferrows::proto::OpCode;
use ferrows::proto::frame::FrameHeader;
use ferrows::proto::handshake::{ClientHandshakeError, ClientRequest, HandshakeLimits, accept_key};
use ferrows::{Accept, ClientBuilder, Config, Error, Handshake, Message, Reject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// A valid upgrade request head for `Host: localhost`, with `extra` lines.
fn upgrade_request(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn callback_sees_the_request_picks_a_subprotocol_and_adds_headers() {
    let (listener, url) = listen().await;
    let url = format!("{url}chat?room=42&lang=en");
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut seen = None;
        let ws = ferrows::accept_with(stream, Config::default(), |req| {
            seen = Some((
                req.path().to_owned(),
                req.query_param("room").map(str::to_owned),
                req.header("authorization").map(str::to_owned),
                req.header("Origin").map(str::to_owned),
                req.subprotocols().map(str::to_owned).collect::<Vec<_>>(),
            ));
            let protocol = req
                .subprotocols()
                .find(|p| *p == "chat.v2")
                .unwrap_or("none")
                .to_owned();
            Ok(Accept::new()
                .protocol(protocol)
                .header("X-Served-By", "ferrows-test"))
        })
        .await
        .unwrap();
        (ws, seen.unwrap())
    });
    let (mut client, response) = within(
        "connect",
        ClientBuilder::new(url)
            .protocol("chat.v1")
            .protocol("chat.v2")
            .header("Authorization", "Bearer sesame")
            .header("Origin", "http://example.test")
            .connect(),
    )
    .await
    .unwrap();
    let (mut server, seen) = within("server", server).await.unwrap();

    assert_eq!(
        seen,
        (
            "/chat".to_owned(),
            Some("42".to_owned()),
            Some("Bearer sesame".to_owned()),
            Some("http://example.test".to_owned()),
            vec!["chat.v1".to_owned(), "chat.v2".to_owned()],
        )
    );
    assert_eq!(response.status(), 101);
    assert_eq!(response.header("x-served-by"), Some("ferrows-test"));
    assert_eq!(response.header("Sec-WebSocket-Protocol"), Some("chat.v2"));
    assert_eq!(client.protocol(), Some("chat.v2"));
    assert_eq!(server.protocol(), Some("chat.v2"));

    client.send("hello").await.unwrap();
    assert_eq!(next_msg(&mut server).await.as_text(), Some("hello"));
}

#[tokio::test]
async fn no_subprotocol_when_none_is_chosen() {
    let (mut server, client) = common::pair(Config::default(), Config::default()).await;
    assert_eq!(server.protocol(), None);
    assert_eq!(client.protocol(), None);
    assert_eq!(server.compression(), None);
    assert_eq!(server.role(), ferrows::Role::Server);
    assert_eq!(client.role(), ferrows::Role::Client);
    drop(client);
    assert!(matches!(
        within("recv", server.recv()).await,
        Some(Err(Error::AbnormalClosure))
    ));
}

/// Accepts `n` connections with `accept_with` and `callback`, returning
/// each result.
fn accept_n<F>(
    listener: TcpListener,
    n: usize,
    callback: F,
) -> tokio::task::JoinHandle<Vec<ferrows::Result<()>>>
where
    F: Fn(&ferrows::Request) -> Result<Accept, Reject> + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut results = Vec::new();
        for _ in 0..n {
            let (stream, _) = listener.accept().await.unwrap();
            let r = ferrows::accept_with(stream, Config::default(), &callback).await;
            results.push(r.map(drop));
        }
        results
    })
}

#[tokio::test]
async fn callback_refusal_reaches_the_client_with_its_status() {
    let (listener, url) = listen().await;
    let addr = listener.local_addr().unwrap();
    let server = accept_n(listener, 2, |req| {
        if req.header("authorization").is_none() {
            return Err(Reject::new(403, "members only").with_header("X-Why", "no credentials"));
        }
        Ok(Accept::new())
    });

    // A ferrows client: the refusal is a typed error.
    let result = within("connect", ferrows::connect(&url)).await;
    match result {
        Err(Error::ClientHandshake(ClientHandshakeError::NotSwitching { status, reason })) => {
            assert_eq!(status, 403);
            assert_eq!(reason, "Forbidden");
        }
        other => panic!("expected a 403 refusal, got {other:?}"),
    }

    // A raw client sees the whole response: headers and the reason as body.
    let response = http_exchange(addr, upgrade_request("").as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 403 Forbidden\r\n"),
        "{response}"
    );
    assert!(
        response.contains("\r\nX-Why: no credentials\r\n"),
        "{response}"
    );
    assert!(response.ends_with("\r\n\r\nmembers only\n"), "{response}");

    let results = within("server", server).await.unwrap();
    for r in results {
        match r {
            Err(Error::Handshake(e)) => {
                assert_eq!(e.status, 403);
                assert_eq!(e.reason, "members only");
            }
            other => panic!("expected the refusal, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn choosing_a_subprotocol_the_client_did_not_offer_fails_with_500() {
    let (listener, url) = listen().await;
    let server = accept_n(listener, 1, |_| Ok(Accept::new().protocol("not-offered")));
    let result = within("connect", ClientBuilder::new(url).protocol("a").connect()).await;
    assert!(
        matches!(
            result,
            Err(Error::ClientHandshake(ClientHandshakeError::NotSwitching {
                status: 500,
                ..
            }))
        ),
        "{result:?}"
    );
    let results = within("server", server).await.unwrap();
    assert!(matches!(&results[0], Err(Error::Handshake(e)) if e.status == 500));
}

#[tokio::test]
async fn handshake_reject_and_header_injection_guard() {
    let (listener, url) = listen().await;
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let hs = Handshake::read(stream, Config::default()).await.unwrap();
        assert!(hs.request().is_upgrade());
        hs.reject(401, "who are you?").await.unwrap();

        // A header value with CR LF would inject headers: the response
        // cannot be built, and the client gets a 500 instead.
        let (stream, _) = listener.accept().await.unwrap();
        let result = ferrows::accept_with(stream, Config::default(), |_| {
            Ok(Accept::new().header("X-Evil", "a\r\nSet-Cookie: pwned=1"))
        })
        .await;
        assert!(matches!(result, Err(Error::Handshake(e)) if e.status == 500));
    });
    let result = within("connect", ferrows::connect(&url)).await;
    assert!(
        matches!(
            result,
            Err(Error::ClientHandshake(ClientHandshakeError::NotSwitching {
                status: 401,
                ..
            }))
        ),
        "{result:?}"
    );
    let result = within("connect", ferrows::connect(&url)).await;
    assert!(
        matches!(
            result,
            Err(Error::ClientHandshake(ClientHandshakeError::NotSwitching {
                status: 500,
                ..
            }))
        ),
        "{result:?}"
    );
    within("server", server).await.unwrap();
}

const PAGE: &[u8] = b"<!doctype html><title>ferrows</title><p>hello</p>";

/// A server that answers plain HTTP requests with [`PAGE`] and upgrades
/// WebSocket requests on the same port (an echo), for `n` connections.
fn page_and_socket_server(listener: TcpListener, n: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for _ in 0..n {
            let (stream, _) = listener.accept().await.unwrap();
            let hs = Handshake::read(stream, Config::default()).await.unwrap();
            if !hs.request().is_upgrade() {
                let headers = [("Cache-Control".to_owned(), "no-store".to_owned())];
                hs.respond(200, &headers, "text/html; charset=utf-8", PAGE)
                    .await
                    .unwrap();
                continue;
            }
            let mut ws = hs.accept().await.unwrap();
            tokio::spawn(async move {
                while let Some(Ok(msg)) = ws.recv().await {
                    if msg.is_text() && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    })
}

#[tokio::test]
async fn plain_http_is_served_on_the_websocket_port() {
    let (listener, url) = listen().await;
    let addr = listener.local_addr().unwrap();
    let server = page_and_socket_server(listener, 3);

    let response = http_exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: text/html\r\n\r\n",
    )
    .await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\nCache-Control: no-store"), "{head}");
    assert!(
        head.contains("\r\nContent-Type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nContent-Length: {}", PAGE.len())),
        "{head}"
    );
    assert!(head.contains("\r\nConnection: close"), "{head}");
    assert_eq!(body.as_bytes(), PAGE);

    // HEAD: the same head, no body.
    let response = http_exchange(addr, b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.contains(&format!("\r\nContent-Length: {}", PAGE.len())),
        "{response}"
    );
    assert!(response.ends_with("\r\n\r\n"), "no body: {response}");

    // And a WebSocket on the same port.
    let (mut ws, _) = within("connect", ferrows::connect(&url)).await.unwrap();
    ws.send("still a websocket").await.unwrap();
    assert_eq!(next_msg(&mut ws).await.as_text(), Some("still a websocket"));
    within("server", server).await.unwrap();
}

/// Sends a raw request to a `serve_with` server and returns the status
/// line and the whole response.
async fn status_of(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let response = http_exchange(addr, request).await;
    let status = response.lines().next().unwrap_or_default().to_owned();
    (status, response)
}

#[tokio::test]
async fn malformed_requests_get_the_right_http_status() {
    let (url, _server) = common::echo_server(Config::default()).await;
    let addr: SocketAddr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let many_headers: String = (0..70).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "not HTTP at all",
            "HELLO WORLD\r\n\r\n".into(),
            "HTTP/1.1 400 Bad Request",
            "malformed HTTP request",
        ),
        (
            "a plain GET",
            "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".into(),
            "HTTP/1.1 400 Bad Request",
            "Upgrade: websocket",
        ),
        (
            "POST",
            upgrade_request("").replacen("GET", "POST", 1),
            "HTTP/1.1 400 Bad Request",
            "method must be GET",
        ),
        (
            "HTTP/1.0",
            upgrade_request("").replacen("HTTP/1.1", "HTTP/1.0", 1),
            "HTTP/1.1 400 Bad Request",
            "HTTP/1.1 required",
        ),
        (
            "no Host",
            upgrade_request("").replacen("Host: localhost\r\n", "", 1),
            "HTTP/1.1 400 Bad Request",
            "missing Host header",
        ),
        (
            "no Connection: Upgrade",
            upgrade_request("").replacen("Connection: Upgrade", "Connection: keep-alive", 1),
            "HTTP/1.1 400 Bad Request",
            "Connection: Upgrade",
        ),
        (
            "a key of 15 bytes",
            upgrade_request("").replacen("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ", 1),
            "HTTP/1.1 400 Bad Request",
            "Sec-WebSocket-Key",
        ),
        (
            "no key",
            upgrade_request("").replacen("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "", 1),
            "HTTP/1.1 400 Bad Request",
            "Sec-WebSocket-Key",
        ),
        (
            "version 8",
            upgrade_request("").replacen("Version: 13", "Version: 8", 1),
            "HTTP/1.1 426 Upgrade Required",
            "Sec-WebSocket-Version: 13\r\n",
        ),
        (
            "no version",
            upgrade_request("").replacen("Sec-WebSocket-Version: 13\r\n", "", 1),
            "HTTP/1.1 426 Upgrade Required",
            "Sec-WebSocket-Version: 13\r\n",
        ),
        (
            "70 header fields",
            upgrade_request(&many_headers),
            "HTTP/1.1 431 Request Header Fields Too Large",
            "too many header fields",
        ),
    ];
    for (name, request, status, needle) in cases {
        let (got, response) = status_of(addr, request.as_bytes()).await;
        assert_eq!(got, status, "{name}: {response}");
        assert!(response.contains(needle), "{name}: {response}");
        assert!(response.contains("\r\nConnection: close\r\n"), "{name}");
    }

    // The server is still serving.
    let (mut ws, _) = within("connect", ferrows::connect(&url)).await.unwrap();
    ws.send("alive").await.unwrap();
    assert_eq!(next_msg(&mut ws).await.as_text(), Some("alive"));
}

#[tokio::test]
async fn an_oversized_head_gets_431() {
    let limits = HandshakeLimits::default().max_head_size(512);
    let (url, _server) = common::echo_server(Config::default().handshake_limits(limits)).await;
    let addr: SocketAddr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    // 600 bytes and no end of head: the server must stop at its limit
    // instead of waiting for the rest.
    let cookie = "x".repeat(600);
    let request = format!("GET / HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}");
    let (status, response) = status_of(addr, request.as_bytes()).await;
    assert_eq!(
        status, "HTTP/1.1 431 Request Header Fields Too Large",
        "{response}"
    );

    // A normal request still fits.
    let (mut ws, _) = within("connect", ferrows::connect(&url)).await.unwrap();
    ws.send("fits").await.unwrap();
    assert_eq!(next_msg(&mut ws).await.as_text(), Some("fits"));
}

#[tokio::test]
async fn server_handshake_times_out_on_half_a_request() {
    let (listener, _) = listen().await;
    let addr = listener.local_addr().unwrap();
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgr")
        .await
        .unwrap();

    let timeout = Duration::from_secs(10);
    tokio::time::pause();
    let start = Instant::now();
    let result = Handshake::read(stream, Config::default().handshake_timeout(timeout)).await;
    let waited = start.elapsed();
    tokio::time::resume();
    match result {
        Err(e @ Error::HandshakeTimeout) => assert!(e.is_timeout()),
        other => panic!("expected a handshake timeout, got {other:?}"),
    }
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(1),
        "waited {waited:?}"
    );
    // The server dropped the connection.
    let mut rest = Vec::new();
    within("EOF", client.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn a_stalled_handshake_does_not_block_other_clients() {
    let config = Config::default().handshake_timeout(Duration::from_secs(3));
    let (url, _server) = common::echo_server(config).await;
    let addr = url.trim_start_matches("ws://").trim_end_matches('/');
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();

    let (mut ws, _) = within("connect", ferrows::connect(&url)).await.unwrap();
    ws.send("not blocked").await.unwrap();
    assert_eq!(next_msg(&mut ws).await.as_text(), Some("not blocked"));

    // The stalled connection is dropped after the handshake timeout.
    let mut rest = Vec::new();
    within("server drops the slow client", slow.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty(), "no response to half a request");
}

#[tokio::test]
async fn client_handshake_times_out_on_a_silent_server() {
    let (listener, url) = listen().await;
    let addr = listener.local_addr().unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut silent, _) = listener.accept().await.unwrap();

    let timeout = Duration::from_secs(4);
    let config = Config::default().handshake_timeout(timeout);
    let request = ClientBuilder::new(url).request().unwrap();
    tokio::time::pause();
    let start = Instant::now();
    let result = ferrows::client_handshake(tcp, &request, &config).await;
    let waited = start.elapsed();
    tokio::time::resume();
    assert!(matches!(result, Err(Error::HandshakeTimeout)), "{result:?}");
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(1),
        "waited {waited:?}"
    );
    // The request did go out.
    let mut buf = vec![0u8; 4096];
    let n = within("request", silent.read(&mut buf)).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("GET / HTTP/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("Sec-WebSocket-Key: {}\r\n", request.key)));
}

#[tokio::test]
async fn peer_address_and_per_request_config() {
    let (listener, url) = listen().await;
    let server = tokio::spawn(async move {
        let mut results = Vec::new();
        for _ in 0..2 {
            let (stream, peer) = listener.accept().await.unwrap();
            let hs = Handshake::read(stream, Config::default()).await.unwrap();
            assert_eq!(hs.peer_addr(), None);
            let mut hs = hs.with_peer_addr(peer);
            assert_eq!(hs.peer_addr(), Some(peer));
            if hs.request().path() == "/small" {
                hs.config_mut().limits.max_message_size = 16;
            }
            let mut ws = hs.accept().await.unwrap();
            let msg = within("recv", ws.recv()).await.unwrap();
            results.push((peer, msg.map_err(|e| e.close_code())));
        }
        results
    });
    let mut locals = Vec::new();
    for path in ["big", "small"] {
        let (mut ws, _) = within("connect", ferrows::connect(&format!("{url}{path}")))
            .await
            .unwrap();
        locals.push(ws.get_ref().get_ref().local_addr().unwrap());
        ws.send("seventeen bytes!!").await.unwrap();
        if path == "small" {
            // Over the per-request limit: the server fails with 1009.
            let msg = next_msg(&mut ws).await;
            assert!(
                matches!(&msg, Message::Close(Some(f)) if f.code.0 == 1009),
                "{msg:?}"
            );
        }
    }
    let results = within("server", server).await.unwrap();
    assert_eq!(results[0].0, locals[0]);
    assert_eq!(results[1].0, locals[1]);
    assert_eq!(results[0].1, Ok(Message::text("seventeen bytes!!")));
    assert_eq!(results[1].1, Err(Some(ferrows::CloseCode(1009))));
}

#[tokio::test]
async fn bytes_after_the_request_head_are_the_first_frame() {
    // A client may send its first frame right behind the request, in the
    // same segment; the server must not lose it.
    let (listener, _) = listen().await;
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = ferrows::accept(stream).await.unwrap();
        next_msg(&mut ws).await
    });
    let mut header = FrameHeader::new(OpCode::Text, 0);
    header.mask = Some([9, 8, 7, 6]);
    let mut bytes = upgrade_request("").into_bytes();
    bytes.extend(RawPeer::encode(header, b"early bird"));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let msg = within("server", server).await.unwrap();
    assert_eq!(msg.as_text(), Some("early bird"));
}

#[tokio::test]
async fn bytes_after_the_response_head_are_the_first_frame() {
    let (listener, url) = listen().await;
    let client = tokio::spawn(async move {
        let (mut ws, _) = ferrows::connect(&url).await.unwrap();
        next_msg(&mut ws).await
    });
    let (mut stream, _) = listener.accept().await.unwrap();
    let head = read_head(&mut stream).await;
    let key = header_value(&head, "sec-websocket-key").unwrap();
    let mut bytes = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key.as_bytes())
    )
    .into_bytes();
    bytes.extend(RawPeer::encode(
        FrameHeader::new(OpCode::Binary, 0),
        b"\x00\x01",
    ));
    stream.write_all(&bytes).await.unwrap();
    let msg = within("client", client).await.unwrap();
    assert_eq!(msg, Message::binary(vec![0u8, 1]));
}

/// Reads a request head from `stream` (byte by byte: nothing past it).
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = within("head", stream.read_u8()).await.unwrap();
        head.push(byte);
        assert!(head.len() < 16 * 1024);
    }
    String::from_utf8(head).unwrap()
}

fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// Runs a raw server that answers the client's request with `respond`
/// (given the request's key) and returns what the client's connect gave.
/// `build` makes the client's options from the server's URL.
async fn client_against(
    build: impl FnOnce(String) -> ClientBuilder,
    respond: impl FnOnce(&str) -> String + Send + 'static,
) -> ferrows::Result<()> {
    let (listener, url) = listen().await;
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let head = read_head(&mut stream).await;
        let key = header_value(&head, "sec-websocket-key").unwrap();
        stream.write_all(respond(&key).as_bytes()).await.unwrap();
        // Keep the connection open until the client is done with it.
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    });
    let result = within("connect", build(url).connect()).await;
    server.abort();
    result.map(drop)
}

/// A 101 response with `accept` and `extra` header lines.
fn switching(accept: &str, extra: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn client_rejects_bad_server_responses() {
    let plain = ClientBuilder::new;
    // Not 101.
    let r = client_against(plain, |_| {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into()
    })
    .await;
    assert!(
        matches!(
            r,
            Err(Error::ClientHandshake(ClientHandshakeError::NotSwitching {
                status: 404,
                ..
            }))
        ),
        "{r:?}"
    );
    // A hex digest instead of base64: the classic bug, named.
    let r = client_against(plain, |_| {
        switching("0123456789abcdef0123456789abcdef01234567", "")
    })
    .await;
    match r {
        Err(Error::ClientHandshake(e @ ClientHandshakeError::WrongAccept { .. })) => {
            assert!(e.to_string().contains("hex"), "{e}");
        }
        other => panic!("expected WrongAccept, got {other:?}"),
    }
    // No accept at all.
    let r = client_against(plain, |_| {
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            .into()
    })
    .await;
    assert!(
        matches!(
            r,
            Err(Error::ClientHandshake(ClientHandshakeError::MissingAccept))
        ),
        "{r:?}"
    );
    // A subprotocol the client did not offer.
    let r = client_against(
        |url| ClientBuilder::new(url).protocol("mine"),
        |key| {
            switching(
                &accept_key(key.as_bytes()),
                "Sec-WebSocket-Protocol: theirs\r\n",
            )
        },
    )
    .await;
    assert!(
        matches!(
            r,
            Err(Error::ClientHandshake(
                ClientHandshakeError::UnexpectedProtocol(_)
            ))
        ),
        "{r:?}"
    );
    // An extension the client did not offer.
    let r = client_against(plain, |key| {
        switching(
            &accept_key(key.as_bytes()),
            "Sec-WebSocket-Extensions: permessage-deflate\r\n",
        )
    })
    .await;
    assert!(
        matches!(
            r,
            Err(Error::ClientHandshake(
                ClientHandshakeError::UnexpectedExtension(_)
            ))
        ),
        "{r:?}"
    );
    // And the correct answer works.
    let r = client_against(plain, |key| switching(&accept_key(key.as_bytes()), "")).await;
    assert!(r.is_ok(), "{r:?}");
}

#[tokio::test]
async fn client_reports_urls_and_refused_connections() {
    for bad in [
        "ftp://localhost/",
        "ws://",
        "ws://localhost:0/",
        "ws://h/#frag",
    ] {
        let r = ferrows::connect(bad).await;
        assert!(matches!(r, Err(Error::Url(_))), "{bad}: {r:?}");
    }
    // A port nobody listens on (just released by us).
    let (listener, url) = listen().await;
    drop(listener);
    let r = within("connect", ferrows::connect(&url)).await;
    match r {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
        other => panic!("expected a refused connection, got {other:?}"),
    }
}

#[tokio::test]
async fn client_request_carries_what_the_builder_says() {
    let request: ClientRequest = ClientBuilder::new("ws://127.0.0.1:9/feed?x=1")
        .protocol("p1")
        .header("X-Custom", "yes")
        .config(Config::default().compression(true))
        .request()
        .unwrap();
    assert_eq!(request.host, "127.0.0.1:9");
    assert_eq!(request.target, "/feed?x=1");
    assert_eq!(request.protocols, ["p1"]);
    assert!(
        request
            .extensions
            .as_deref()
            .unwrap()
            .starts_with("permessage-deflate")
    );
    // Invalid header values are refused before anything is sent.
    let (listener, url) = listen().await;
    let r = within(
        "connect",
        ClientBuilder::new(url)
            .header("X-Bad", "a\r\nb: c")
            .connect(),
    )
    .await;
    assert!(
        matches!(
            r,
            Err(Error::ClientHandshake(
                ClientHandshakeError::InvalidRequest(_)
            ))
        ),
        "{r:?}"
    );
    drop(listener);
}
