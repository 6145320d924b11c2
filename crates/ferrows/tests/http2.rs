//! WebSockets over HTTP/2 (RFC 8441): ferrows' client against ferrows'
//! HTTP/2 server over TLS with ALPN `h2` (a CA and certificate made here
//! with rcgen), and against a hyper HTTP/2 server that upgrades with
//! `ferrows::h2::upgrade`.
#![cfg(feature = "http2")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{next_msg, within};
use ferrows::h2::{H2Client, H2Handshake, H2Server};
use ferrows::proto::handshake::ClientHandshakeError;
use ferrows::tls::tokio_rustls::TlsAcceptor;
use ferrows::{Accept, ClientBuilder, CloseCode, Config, Error, MaybeTlsStream, Message};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::net::TcpListener;

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ferrows h2 test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// What every test server does with a request: `/page` is a page, any
/// other plain request 404, `/forbidden` refused with 403, WebSockets echo
/// (subprotocol `chat` if offered) until closed.
async fn handle(hs: H2Handshake) {
    if !hs.is_websocket() {
        if hs.request().path() == "/page" {
            hs.respond(200, &[], "text/html", b"<p>hello over h2</p>");
        } else if hs.request().method() == "CONNECT" && hs.protocol().is_some() {
            // An Extended CONNECT for another protocol: let the
            // validator answer.
            let _ = hs.accept().await;
        } else {
            hs.reject(404, "no such page");
        }
        return;
    }
    if hs.request().path() == "/forbidden" {
        hs.reject(403, "not for you");
        return;
    }
    let accept = if hs.request().subprotocols().any(|p| p == "chat") {
        Accept::new().protocol("chat")
    } else {
        Accept::new()
    };
    let Ok(mut ws) = hs.accept_with(accept).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.recv().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

/// An HTTP/2 TLS server on an ephemeral port; returns its port and the
/// count of TCP connections it accepted.
async fn h2_server(pki: &Pki, server: H2Server) -> (u16, Arc<AtomicUsize>) {
    let tls = ferrows::tls::server_config(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
    let acceptor = TlsAcceptor::from(ferrows::h2::server_tls(&tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let server = server.clone();
            tokio::spawn(async move {
                let tls = acceptor.accept(tcp).await.unwrap();
                let stream = MaybeTlsStream::ServerTls(Box::new(tls));
                assert!(ferrows::h2::is_h2(&stream), "ALPN did not pick h2");
                let _ = server.serve_connection(stream, Some(peer), handle).await;
            });
        }
    });
    (port, connections)
}

fn builder(pki: &Pki, port: u16, path: &str, config: Config) -> ClientBuilder {
    let tls = ferrows::tls::client_config_with_ca(pki.ca_pem.as_bytes()).unwrap();
    ClientBuilder::new(format!("wss://localhost:{port}{path}"))
        .tls_config(tls)
        .config(config)
}

#[tokio::test]
async fn echo_with_deflate_subprotocol_and_close() {
    let pki = pki();
    let config = Config::default().compression(true);
    let (port, _) = h2_server(&pki, H2Server::new(config.clone())).await;
    let (mut ws, response) = within(
        "connect over h2",
        builder(&pki, port, "/echo?x=1", config)
            .protocol("chat")
            .connect_h2(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.to_head_string().starts_with("HTTP/2 200"));
    assert_eq!(ws.protocol(), Some("chat"));
    assert!(ws.compression().is_some(), "permessage-deflate negotiated");

    ws.send("hello over h2").await.unwrap();
    assert_eq!(next_msg(&mut ws).await.as_text(), Some("hello over h2"));
    // Large enough to need several DATA frames and window updates.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::Binary(Bytes::from(big.clone())))
        .await
        .unwrap();
    let echoed = next_msg(&mut ws).await;
    assert!(echoed.is_binary());
    assert_eq!(echoed.as_payload(), &big[..]);

    ws.close(1000, "bye").await.unwrap();
    match within("the close echo", ws.recv()).await {
        None => {}
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::NORMAL),
        other => panic!("expected the end of the connection, got {other:?}"),
    }
}

#[tokio::test]
async fn many_websockets_share_one_connection() {
    let pki = pki();
    let (port, connections) = h2_server(&pki, H2Server::new(Config::default())).await;
    let client = within(
        "the HTTP/2 connection",
        H2Client::connect(&builder(&pki, port, "/", Config::default())),
    )
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let client = client.clone();
        let b = builder(&pki, port, &format!("/ws/{i}"), Config::default());
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = client.websocket(b).await.unwrap();
            for j in 0..20 {
                let text = format!("{i}:{j}");
                ws.send(text.as_str()).await.unwrap();
                assert_eq!(next_msg(&mut ws).await.as_text(), Some(text.as_str()));
            }
            ws.close(1000, "").await.unwrap();
        }));
    }
    for t in tasks {
        within("a WebSocket's exchange", t).await.unwrap();
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1, "one TCP connection");
}

#[tokio::test]
async fn refusals_carry_their_status() {
    let pki = pki();
    let (port, _) = h2_server(&pki, H2Server::new(Config::default())).await;
    let client = H2Client::connect(&builder(&pki, port, "/", Config::default()))
        .await
        .unwrap();
    let status_of = |r: ferrows::Result<_>| match r {
        Err(Error::ClientHandshake(ClientHandshakeError::NotOk { status })) => status,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("accepted"),
    };
    // A second Sec-WebSocket-Version: 426, as over HTTP/1.1.
    let two_versions =
        builder(&pki, port, "/echo", Config::default()).header("sec-websocket-version", "8");
    assert_eq!(status_of(client.websocket(two_versions).await), 426);
    // The application's refusal.
    let forbidden = builder(&pki, port, "/forbidden", Config::default());
    assert_eq!(status_of(client.websocket(forbidden).await), 403);
    // The connection is still good for a valid one.
    let (mut ws, _) = client
        .websocket(builder(&pki, port, "/echo", Config::default()))
        .await
        .unwrap();
    ws.send("still here").await.unwrap();
    assert_eq!(next_msg(&mut ws).await.as_text(), Some("still here"));
    // A header HTTP/2 forbids is refused before sending.
    let hop = builder(&pki, port, "/echo", Config::default()).header("Connection", "close");
    assert!(matches!(
        client.websocket(hop).await,
        Err(Error::ClientHandshake(
            ClientHandshakeError::InvalidRequest(_)
        ))
    ));
}

#[tokio::test]
async fn stream_limit_is_enforced() {
    let pki = pki();
    let (port, _) = h2_server(
        &pki,
        H2Server::new(Config::default()).max_concurrent_streams(2),
    )
    .await;
    let client = H2Client::connect(&builder(&pki, port, "/", Config::default()))
        .await
        .unwrap();
    let (_a, _) = client
        .websocket(builder(&pki, port, "/a", Config::default()))
        .await
        .unwrap();
    let (mut b, _) = client
        .websocket(builder(&pki, port, "/b", Config::default()))
        .await
        .unwrap();
    // A third stream waits for a free slot: it cannot open while two are.
    let short = Config::default().handshake_timeout(Duration::from_millis(1500));
    let third = client
        .websocket(builder(&pki, port, "/c", short.clone()))
        .await;
    assert!(
        matches!(third, Err(Error::HandshakeTimeout)),
        "a third stream opened past SETTINGS_MAX_CONCURRENT_STREAMS=2: {:?}",
        third.map(|_| ())
    );
    // Closing one frees its slot.
    b.close(1000, "").await.unwrap();
    while let Some(Ok(_)) = within("b's end", b.recv()).await {}
    drop(b);
    let long = Config::default().handshake_timeout(Duration::from_secs(20));
    let (mut c, _) = client
        .websocket(builder(&pki, port, "/c", long))
        .await
        .unwrap();
    c.send("third").await.unwrap();
    assert_eq!(next_msg(&mut c).await.as_text(), Some("third"));
}

/// A hyper HTTP/2 server (prior knowledge, plain TCP) whose service
/// upgrades with `ferrows::h2::upgrade`; `connect_protocol` says whether it
/// enables RFC 8441 at all.
async fn hyper_server(connect_protocol: bool) -> u16 {
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |mut req: http::Request<hyper::body::Incoming>| async move {
                        let config = Config::default().compression(true);
                        let response: http::Response<Full<Bytes>> =
                            match ferrows::h2::upgrade(&mut req, config) {
                                Ok((response, upgrade)) => {
                                    tokio::spawn(async move {
                                        let mut ws = upgrade.await.unwrap();
                                        while let Some(Ok(msg)) = ws.recv().await {
                                            if msg.is_text() {
                                                let reply =
                                                    format!("hyper: {}", msg.as_text().unwrap());
                                                ws.send(reply.as_str()).await.unwrap();
                                            }
                                        }
                                    });
                                    response
                                }
                                Err(e) => ferrows::h2::refusal(&e),
                            };
                        Ok::<_, std::convert::Infallible>(response)
                    },
                );
                let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                if connect_protocol {
                    builder.enable_connect_protocol();
                }
                let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn inside_a_hyper_server() {
    let port = hyper_server(true).await;
    let config = Config::default().compression(true);
    let started = std::time::Instant::now();
    let (mut ws, _) = within(
        "connect to hyper",
        ClientBuilder::new(format!("ws://127.0.0.1:{port}/chat"))
            .config(config)
            .connect_h2(),
    )
    .await
    .unwrap();
    // The client sees the server's SETTINGS as they arrive, not when its
    // 3 s wait for them runs out (it once did: nothing woke it).
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "connecting took {:?}",
        started.elapsed()
    );
    assert!(ws.compression().is_some());
    ws.send("hi").await.unwrap();
    assert_eq!(next_msg(&mut ws).await.as_text(), Some("hyper: hi"));
    ws.close(1000, "").await.unwrap();
}

#[tokio::test]
async fn server_without_extended_connect_is_named() {
    let port = hyper_server(false).await;
    let err = within(
        "the settings wait",
        ClientBuilder::new(format!("ws://127.0.0.1:{port}/chat")).connect_h2(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ClientHandshake(ClientHandshakeError::ExtendedConnectDisabled)
        ),
        "{err}"
    );
    assert!(err.to_string().contains("SETTINGS_ENABLE_CONNECT_PROTOCOL"));
}
