//! The callback server (`ferrows::callback::Server`) against real clients on
//! loopback: handler order and ids, sending to one, broadcasting, slow
//! clients, disconnecting, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use ferrows::callback::{Client, Server, ServerHandle};
use ferrows::{
    ClientBuilder, CloseCode, Config, Fragment, MaybeTlsStream, Message, OpCode, Prepared,
    SendError, WebSocket,
};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Bound on anything that "eventually happens": generous, the machine is
/// shared.
const TIMEOUT: Duration = Duration::from_secs(30);

type ClientWs = WebSocket<MaybeTlsStream<TcpStream>>;

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {TIMEOUT:?}: {what}"),
    }
}

/// What the handlers saw.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Connect(u64, SocketAddr, String),
    Message(u64, Message),
    Disconnect(u64),
}

/// Registers handlers that report to a channel.
fn recording(server: Server) -> (Server, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (t1, t2, t3) = (tx.clone(), tx.clone(), tx);
    let server = server
        .on_connect(move |_, c: &Client| {
            let _ = t1.send(Seen::Connect(c.id(), c.addr(), c.path().to_owned()));
        })
        .on_message(move |_, c, msg| {
            let _ = t2.send(Seen::Message(c.id(), msg));
        })
        .on_disconnect(move |_, c| {
            let _ = t3.send(Seen::Disconnect(c.id()));
        });
    (server, rx)
}

/// Runs `server` until the returned sender fires (or is dropped).
fn run(
    server: Server,
) -> (
    ServerHandle,
    String,
    oneshot::Sender<()>,
    JoinHandle<ferrows::Result<()>>,
) {
    let handle = server.handle();
    let url = format!("ws://{}", server.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    (handle, url, stop, task)
}

async fn connect(url: &str) -> ClientWs {
    within("connect", ferrows::connect(url)).await.unwrap().0
}

async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    within("a handler call", seen.recv()).await.unwrap()
}

/// The next data message (skipping pings and pongs).
async fn recv_data<S>(ws: &mut WebSocket<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let msg = within("a message", ws.recv()).await.unwrap().unwrap();
        if !matches!(msg, Message::Ping(_) | Message::Pong(_)) {
            return msg;
        }
    }
}

/// Stops the server and checks that each client gets 1001 and the end.
async fn shut_down<S>(
    stop: oneshot::Sender<()>,
    task: JoinHandle<ferrows::Result<()>>,
    clients: &mut [WebSocket<S>],
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stop.send(()).unwrap();
    for ws in clients {
        assert_eq!(close_code(&recv_data(ws).await), Some(1001));
        assert!(within("close", ws.recv()).await.is_none());
    }
    within("run_until returns", task).await.unwrap().unwrap();
}

fn close_code(msg: &Message) -> Option<u16> {
    match msg {
        Message::Close(Some(f)) => Some(f.code.0),
        _ => None,
    }
}

#[tokio::test]
async fn handlers_run_in_order_with_ids_and_addresses() {
    let server = Server::bind("127.0.0.1:0").await.unwrap();
    let (server, mut seen) = recording(server);
    let (handle, url, stop, task) = run(server);

    let mut a = connect(&format!("{url}/room?x=1")).await;
    let a_addr = a.get_ref().get_ref().local_addr().unwrap();
    assert_eq!(
        next(&mut seen).await,
        Seen::Connect(1, a_addr, "/room".into())
    );
    let mut b = connect(&format!("{url}/")).await;
    let b_addr = b.get_ref().get_ref().local_addr().unwrap();
    assert_eq!(next(&mut seen).await, Seen::Connect(2, b_addr, "/".into()));

    let listed: Vec<(u64, SocketAddr)> = handle
        .clients()
        .iter()
        .map(|c| (c.id(), c.addr()))
        .collect();
    assert_eq!(listed, vec![(1, a_addr), (2, b_addr)]);
    assert_eq!(
        handle.client(1).unwrap().request().query_param("x"),
        Some("1")
    );

    // Text, binary and a fragmented message, in order; whole messages.
    for i in 0..20 {
        a.feed(format!("a{i}")).await.unwrap();
    }
    a.feed(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    for (piece, fin) in [("frag", false), ("men", false), ("ted", true)] {
        a.feed(Message::Fragment(Fragment {
            opcode: OpCode::Text,
            data: Bytes::from(piece),
            message_offset: 0,
            first: false,
            fin,
        }))
        .await
        .unwrap();
    }
    a.flush().await.unwrap();
    b.send("from b").await.unwrap();
    let mut from_a = Vec::new();
    let mut from_b = Vec::new();
    while from_a.len() < 22 || from_b.is_empty() {
        match next(&mut seen).await {
            Seen::Message(1, m) => from_a.push(m),
            Seen::Message(2, m) => from_b.push(m),
            other => panic!("unexpected {other:?}"),
        }
    }
    let expected: Vec<Message> = (0..20)
        .map(|i| Message::text(format!("a{i}")))
        .chain([
            Message::binary(vec![1u8, 2, 3]),
            Message::text("fragmented"),
        ])
        .collect();
    assert_eq!(from_a, expected);
    assert_eq!(from_b, vec![Message::text("from b")]);

    a.close(1000, "bye").await.unwrap();
    assert_eq!(next(&mut seen).await, Seen::Disconnect(1));
    assert_eq!(
        handle.clients().iter().map(Client::id).collect::<Vec<_>>(),
        vec![2]
    );
    // A dropped connection (no close frame) is a disconnect too.
    drop(b);
    assert_eq!(next(&mut seen).await, Seen::Disconnect(2));
    assert_eq!(handle.client_count(), 0);

    drop(stop);
    within("shutdown", task).await.unwrap().unwrap();
}

#[tokio::test]
async fn send_to_one_broadcast_to_all_and_disconnect() {
    let server = Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        // Echo through the handle: the handler's send reaches its client.
        .on_message(|server, client, msg| {
            server.send(client.id(), msg).unwrap();
        });
    let (handle, url, stop, task) = run(server);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(&url).await);
    }
    // The handshake completes before the server registers the client.
    within("3 clients", async {
        while handle.client_count() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let ids: Vec<u64> = handle.clients().iter().map(Client::id).collect();
    assert_eq!(ids, vec![1, 2, 3]);

    // To one client only: the others' next message is the broadcast.
    handle.send(2, "only for 2").unwrap();
    let big = Prepared::new(Message::binary(vec![7u8; 100_000]));
    assert_eq!(handle.broadcast(big.clone()), 3);
    assert_eq!(handle.broadcast("small"), 3);
    assert_eq!(
        recv_data(&mut clients[1]).await,
        Message::text("only for 2")
    );
    for ws in &mut clients {
        assert_eq!(&recv_data(ws).await, big.message());
        assert_eq!(recv_data(ws).await, Message::text("small"));
    }

    // Echo via on_message + send.
    clients[0]
        .send(Message::binary(vec![9u8; 5]))
        .await
        .unwrap();
    assert_eq!(
        recv_data(&mut clients[0]).await,
        Message::binary(vec![9u8; 5])
    );

    assert_eq!(handle.send(99, "nobody"), Err(SendError::NoSuchMember));
    assert!(!handle.disconnect(99, 1000, ""));

    // Disconnect one with a code of our choosing.
    assert!(handle.disconnect(3, 4000, "go away"));
    let msg = recv_data(&mut clients[2]).await;
    assert_eq!(close_code(&msg), Some(4000));
    assert_eq!(msg.as_payload(), b"go away");
    assert!(within("close", clients[2].recv()).await.is_none());
    within("3 leaves", async {
        while handle.client(3).is_some() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(handle.broadcast("after"), 2);
    for ws in &mut clients[..2] {
        assert_eq!(recv_data(ws).await, Message::text("after"));
    }

    clients.truncate(2);
    shut_down(stop, task, &mut clients).await;
}

/// A listener whose accepted sockets have small kernel buffers, so that a
/// client that does not read blocks the server's writes after little data.
fn small_buffer_listener() -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(16).unwrap()
}

async fn small_buffer_client(url: &str, addr: SocketAddr) -> WebSocket<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = within("tcp connect", socket.connect(addr)).await.unwrap();
    within("handshake", ClientBuilder::new(url).connect_on(tcp))
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn a_stalled_client_is_closed_with_1008_and_never_slows_the_others() {
    let listener = small_buffer_listener();
    let addr = listener.local_addr().unwrap();
    let server = Server::from_listener(listener)
        .unwrap()
        .queue_capacity(4)
        // Long enough for the stalled client to read its backlog and the
        // close frame behind it.
        .config(Config::default().close_timeout(Duration::from_secs(20)));
    let (server, mut seen) = recording(server);
    let (handle, url, stop, task) = run(server);

    let mut fast = Vec::new();
    for _ in 0..2 {
        fast.push(connect(&url).await);
    }
    let mut stalled = small_buffer_client(&url, addr).await;
    let mut stalled_id = None;
    while stalled_id.is_none() || handle.client_count() < 3 {
        if let Seen::Connect(id, a, _) = next(&mut seen).await {
            if a == stalled.get_ref().local_addr().unwrap() {
                stalled_id = Some(id);
            }
        }
    }
    let stalled_id = stalled_id.unwrap();

    // Broadcast 64 KiB messages in lockstep with the fast clients (so that
    // they never have more than one queued) until the server drops the
    // client that never reads.
    let mut sent = 0u32;
    let mut dropped_after = None;
    for i in 0..2000u32 {
        let mut payload = vec![0u8; 64 * 1024];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        handle.broadcast(Message::binary(payload));
        sent += 1;
        for ws in &mut fast {
            // "In time": each message reaches each fast client promptly.
            let msg = tokio::time::timeout(Duration::from_secs(10), recv_data(ws))
                .await
                .expect("a fast client was slowed down");
            assert_eq!(msg.as_payload()[..4], i.to_be_bytes());
        }
        if handle.client(stalled_id).is_none() {
            dropped_after = Some(i);
            break;
        }
    }
    let dropped_after = dropped_after.expect("the stalled client was never dropped");
    // The fast clients are still served, and the dropped one is not.
    for i in 0..20u32 {
        assert_eq!(
            handle.broadcast(Message::binary(i.to_be_bytes().to_vec())),
            2
        );
        for ws in &mut fast {
            assert_eq!(recv_data(ws).await.as_payload(), i.to_be_bytes());
        }
    }

    // The stalled client reads at last: part of the backlog, then 1008.
    let mut received = 0u32;
    let close = loop {
        let msg = within("the stalled client's backlog", stalled.recv())
            .await
            .expect("the connection ended without a close frame")
            .unwrap();
        match msg {
            Message::Binary(b) => {
                assert_eq!(b[..4], received.to_be_bytes(), "messages out of order");
                received += 1;
                assert!(received <= sent);
            }
            Message::Close(_) => break msg,
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(close_code(&close), Some(1008));
    assert!(received <= dropped_after + 1);
    assert!(within("close", stalled.recv()).await.is_none());
    loop {
        if next(&mut seen).await == Seen::Disconnect(stalled_id) {
            break;
        }
    }

    drop((fast, stalled));
    drop(stop);
    within("shutdown", task).await.unwrap().unwrap();
}

#[tokio::test]
async fn run_until_closes_every_client_with_1001() {
    let server = Server::bind("127.0.0.1:0").await.unwrap();
    let (server, mut seen) = recording(server);
    let (handle, url, stop, task) = run(server);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(&url).await);
        assert!(matches!(next(&mut seen).await, Seen::Connect(..)));
    }
    stop.send(()).unwrap();
    for ws in &mut clients {
        let msg = recv_data(ws).await;
        assert_eq!(close_code(&msg), Some(1001));
        assert!(within("close", ws.recv()).await.is_none());
    }
    within("run_until returns", task).await.unwrap().unwrap();
    // Every disconnect handler ran before run_until returned.
    let mut left: Vec<u64> = std::iter::from_fn(|| seen.try_recv().ok())
        .map(|s| match s {
            Seen::Disconnect(id) => id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    left.sort_unstable();
    assert_eq!(left, vec![1, 2, 3]);
    assert!(handle.is_shutting_down());
    assert_eq!(handle.client_count(), 0);
    // Nobody listens any more.
    assert!(ferrows::connect(&url).await.is_err());
}

#[tokio::test]
async fn shutdown_through_the_handle_and_from_a_handler() {
    let server = Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .on_message(|server, _, msg| {
            if msg.as_text() == Some("stop the server") {
                server.shutdown();
            }
        });
    let (_handle, url, _stop, task) = run(server);
    let mut ws = connect(&url).await;
    ws.send("stop the server").await.unwrap();
    assert_eq!(close_code(&recv_data(&mut ws).await), Some(1001));
    within("run_until returns", task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_panicking_handler_closes_its_client_with_1011_only() {
    let server = Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .on_message(|server, client, msg| {
            assert_ne!(
                msg.as_text(),
                Some("boom"),
                "handler failure (expected by the test)"
            );
            server.send(client.id(), msg).unwrap();
        });
    let (_handle, url, stop, task) = run(server);
    let mut good = connect(&url).await;
    let mut bad = connect(&url).await;
    bad.send("boom").await.unwrap();
    assert_eq!(close_code(&recv_data(&mut bad).await), Some(1011));
    good.send("still here").await.unwrap();
    assert_eq!(recv_data(&mut good).await, Message::text("still here"));
    assert!(within("close", bad.recv()).await.is_none());
    shut_down(stop, task, &mut [good]).await;
}

/// The status line a raw upgrade request to `url`'s address is answered
/// with.
async fn upgrade_status_line(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = within("response", tcp.read(&mut buf)).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn past_the_client_limit_an_upgrade_gets_503_until_one_leaves() {
    let server = Server::bind("127.0.0.1:0").await.unwrap().max_clients(1);
    let addr = server.local_addr();
    let (server, mut seen) = recording(server);
    let (handle, url, stop, task) = run(server);
    let mut first = connect(&url).await;
    assert!(matches!(next(&mut seen).await, Seen::Connect(1, ..)));
    // Refused at once while the first is connected.
    let refused = upgrade_status_line(addr).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused:?}");
    assert_eq!(handle.client_count(), 1);
    first.close(CloseCode::NORMAL, "").await.unwrap();
    assert_eq!(next(&mut seen).await, Seen::Disconnect(1));
    // The place is free once the first connection's task has ended.
    let mut second = within("a free place", async {
        loop {
            match ClientBuilder::new(url.clone()).connect().await {
                Ok((ws, _)) => break ws,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    second.send("hi").await.unwrap();
    loop {
        match next(&mut seen).await {
            Seen::Message(_, m) => {
                assert_eq!(m, Message::text("hi"));
                break;
            }
            Seen::Connect(..) | Seen::Disconnect(_) => {}
        }
    }
    shut_down(stop, task, &mut [second]).await;
}

#[tokio::test]
async fn a_tls_server_with_an_origin_list_serves_wss_and_refuses_other_origins() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let tls =
        ferrows::tls::server_config(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
    let server = Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .tls(tls)
        .origins(["https://app.example"])
        .on_message(|server, client, msg| {
            let _ = server.send(client.id(), msg);
        });
    let port = server.local_addr().port();
    let (_handle, _url, stop, task) = run(server);
    let client_tls = ferrows::tls::client_config_with_ca(ca.pem().as_bytes()).unwrap();
    let url = format!("wss://localhost:{port}/");
    let refused = within(
        "refused",
        ClientBuilder::new(url.clone())
            .tls_config(client_tls.clone())
            .header("Origin", "https://evil.example")
            .connect(),
    )
    .await;
    assert!(
        refused
            .as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("403")),
        "{refused:?}"
    );
    let (mut ws, _) = within(
        "wss connect",
        ClientBuilder::new(url)
            .tls_config(client_tls)
            .header("Origin", "https://app.example")
            .connect(),
    )
    .await
    .unwrap();
    assert!(ws.get_ref().is_tls());
    ws.send("over TLS").await.unwrap();
    assert_eq!(recv_data(&mut ws).await, Message::text("over TLS"));
    shut_down(stop, task, &mut [ws]).await;
}

#[tokio::test]
async fn a_broadcast_reaches_the_clients_of_every_server_on_the_backplane() {
    use ferrows::RelayConfig;
    use ferrows::backplane::memory::Bus;
    let bus = Bus::new();
    let mut servers = Vec::new();
    for name in ["a", "b"] {
        let server = Server::bind("127.0.0.1:0")
            .await
            .unwrap()
            .backplane(bus.connect(), RelayConfig::default().name(name))
            .on_message(|server, _client, msg| {
                if let Some(text) = msg.as_text() {
                    server.broadcast(format!("echo: {text}"));
                }
            });
        servers.push(run(server));
    }
    let mut on_a = connect(&servers[0].1).await;
    let mut on_b = connect(&servers[1].1).await;
    let (handle_a, handle_b) = (servers[0].0.clone(), servers[1].0.clone());
    within("both joined", async {
        while handle_a.client_count() + handle_b.client_count() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // A message from A's client reaches B's client through the bus, and
    // B's server broadcasting reaches A's.
    on_a.send("from a").await.unwrap();
    assert_eq!(recv_data(&mut on_a).await, Message::text("echo: from a"));
    assert_eq!(recv_data(&mut on_b).await, Message::text("echo: from a"));
    handle_b.broadcast("from server b");
    assert_eq!(recv_data(&mut on_a).await, Message::text("from server b"));
    assert_eq!(recv_data(&mut on_b).await, Message::text("from server b"));
    let relay_a = handle_a.relay().expect("a relay");
    let relay_b = handle_b.relay().expect("a relay");
    within("stats", async {
        while relay_a.stats().published < 1 || relay_b.stats().delivered_remote < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(relay_b.stats().lost, 0);
    assert_eq!(relay_a.stats().delivered_remote, 1, "b's broadcast");
    assert_ne!(relay_a.node(), relay_b.node());
    let mut servers = servers.into_iter();
    let (_, _, stop_a, task_a) = servers.next().unwrap();
    let (_, _, stop_b, task_b) = servers.next().unwrap();
    shut_down(stop_a, task_a, &mut [on_a]).await;
    shut_down(stop_b, task_b, &mut [on_b]).await;
}
