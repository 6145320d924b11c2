//! `ferrows::Listener` against real sockets on loopback: the connection
//! cap (exact under concurrency, 503 past it, pages still served), the
//! pending-handshake bounds (oldest dropped, per address), one handshake
//! deadline, the Origin allow-list, graceful shutdown and the wrap hook;
//! and `ferrows::pump::Pump` (removed → 1001, reading paused).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::within;
use ferrows::listener::{Accepted, Listener, ListenerHandle};
use ferrows::pump::{Pump, PumpEvent};
use ferrows::{CloseCode, Config, Handshake, Hub, Message, Shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A client connected to `url`.
async fn connect(url: &str) -> common::ClientWs {
    within("connect", ferrows::connect(url)).await.unwrap().0
}

/// An upgrade request for `/`.
fn upgrade_request(addr: SocketAddr, extra: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Sends `request` and returns the response's status and the stream.
async fn status_of(addr: SocketAddr, request: &str) -> (u16, TcpStream) {
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
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response {text:?}"));
    (status, tcp)
}

/// Whether the server closes `tcp` within `secs` (EOF or reset), and when.
async fn closed_within(tcp: &mut TcpStream, secs: u64) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 256];
    let read = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(secs), read)
        .await
        .ok()
        .map(|()| start.elapsed())
}

/// The handler of these tests: pages get 200 "page"; a WebSocket echoes
/// until the peer leaves, or closes with 1001 at shutdown.
async fn echo(hs: Handshake<Accepted>, _peer: SocketAddr, mut shutdown: Shutdown) {
    if !hs.request().is_upgrade() {
        let _ = hs.respond(200, &[], "text/plain", b"page").await;
        return;
    }
    let Ok(mut ws) = hs.accept().await else {
        return;
    };
    loop {
        tokio::select! {
            () = shutdown.wait() => {
                let _ = ws.close(CloseCode::GOING_AWAY, "server shutting down").await;
                return;
            }
            msg = ws.recv() => match msg {
                Some(Ok(msg)) if msg.is_text() || msg.is_binary() => {
                    if ws.send(msg).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}

/// Runs `listener` with [`echo`] until the sender fires.
fn serve(
    listener: Listener,
) -> (
    SocketAddr,
    ListenerHandle,
    oneshot::Sender<()>,
    JoinHandle<ferrows::Result<()>>,
) {
    let addr = listener.local_addr();
    let handle = listener.handle();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(listener.serve_until(
        async {
            let _ = stopped.await;
        },
        echo,
    ));
    (addr, handle, stop, task)
}

fn bind() -> Listener {
    Listener::bind("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// Waits until `f` holds, polling.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    within(what, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_counts_each_websocket_once_and_answers_503_past_it() {
    let (addr, handle, stop, task) = serve(bind().max_connections(50));
    for round in 0..10 {
        let mut upgrades = tokio::task::JoinSet::new();
        for _ in 0..50 {
            upgrades.spawn(async move { status_of(addr, &upgrade_request(addr, "")).await });
        }
        let mut open = Vec::new();
        while let Some(done) = upgrades.join_next().await {
            let (status, tcp) = done.unwrap();
            assert_eq!(status, 101, "round {round}");
            open.push(tcp);
        }
        assert_eq!(handle.connections(), 50);
        // One more is refused, and a page is still served.
        let (status, _) = status_of(addr, &upgrade_request(addr, "")).await;
        assert_eq!(status, 503, "round {round}");
        let (status, _) = status_of(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, 200, "a page at the cap");
        drop(open);
        eventually("the places freed", || handle.connections() == 0).await;
    }
    stop.send(()).unwrap();
    within("serve_until returns", task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_full_pending_pool_drops_its_oldest_connection() {
    let (addr, handle, _stop, _task) = serve(bind().max_pending_handshakes(4));
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    eventually("4 pending", || handle.pending_handshakes() == 4).await;
    let mut newest = TcpStream::connect(addr).await.unwrap();
    // The oldest is closed at once (not at the 10 s deadline)...
    let closed = closed_within(&mut silent[0], 5).await;
    assert!(
        closed.is_some(),
        "the oldest pending connection stayed open"
    );
    assert_eq!(handle.pending_handshakes(), 4);
    // ... and the newest completes its handshake.
    newest
        .write_all(upgrade_request(addr, "").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    within("101", newest.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 101");
    // The others are still pending.
    assert!(closed_within(&mut silent[1], 1).await.is_none());
}

#[tokio::test]
async fn one_address_cannot_take_the_whole_pending_pool() {
    let (addr, handle, _stop, _task) = serve(bind().max_pending_per_ip(3));
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    eventually("3 pending", || handle.pending_handshakes() == 3).await;
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut fourth, 5).await.is_some(),
        "a 4th pending connection from one address was kept"
    );
    assert_eq!(handle.pending_handshakes(), 3);
    // The first three were not touched.
    assert!(closed_within(&mut silent[0], 1).await.is_none());
}

#[tokio::test]
async fn one_deadline_for_a_trickled_head() {
    let config = Config::default().handshake_timeout(Duration::from_secs(1));
    let (addr, _handle, _stop, _task) = serve(bind().config(config));
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    let request = upgrade_request(addr, "");
    let (mut rd, mut wr) = tcp.split();
    let trickle = async {
        for b in request.as_bytes().iter().take(40) {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::future::pending::<()>().await;
    };
    let mut buf = [0u8; 64];
    let closed = tokio::select! {
        () = trickle => unreachable!(),
        n = within("close", rd.read(&mut buf)) => n,
    };
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let took = start.elapsed();
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(3)).contains(&took),
        "closed after {took:?}"
    );
}

#[tokio::test]
async fn origins_outside_the_list_get_403() {
    let (addr, _handle, _stop, _task) = serve(bind().origins(["https://good.example"]));
    let (status, _) = status_of(
        addr,
        &upgrade_request(addr, "Origin: https://evil.example\r\n"),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = status_of(addr, &upgrade_request(addr, "")).await;
    assert_eq!(status, 403, "no Origin");
    let (status, _) = status_of(
        addr,
        &upgrade_request(addr, "Origin: https://GOOD.example\r\n"),
    )
    .await;
    assert_eq!(status, 101);
}

#[tokio::test]
async fn shutdown_tells_every_handler_and_waits_for_them() {
    let (addr, handle, stop, task) = serve(bind());
    let url = format!("ws://{addr}/");
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(&url).await);
    }
    eventually("3 connections", || handle.connections() == 3).await;
    stop.send(()).unwrap();
    for ws in &mut clients {
        let msg = within("close", ws.recv()).await.unwrap().unwrap();
        let Message::Close(Some(frame)) = msg else {
            panic!("{msg:?}")
        };
        assert_eq!(frame.code, CloseCode::GOING_AWAY);
    }
    within("serve_until returns", task).await.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}

#[tokio::test]
async fn the_wrap_hook_sees_every_accepted_stream_with_its_peer() {
    let wrapped = Arc::new(AtomicUsize::new(0));
    let count = wrapped.clone();
    let listener = bind().wrap(move |stream, peer: SocketAddr| {
        assert!(peer.ip().is_loopback());
        count.fetch_add(1, Ordering::SeqCst);
        stream
    });
    let addr = listener.local_addr();
    let handle = listener.handle();
    tokio::spawn(listener.serve(echo));
    for _ in 0..3 {
        let (status, _) = status_of(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, 200);
    }
    assert_eq!(wrapped.load(Ordering::SeqCst), 3);
    handle.shutdown();
}

/// A listener whose one connection is handed to `run` with a member of
/// `hub`.
async fn pumped<F, Fut>(hub: Hub, run: F) -> (common::ClientWs, JoinHandle<()>)
where
    F: FnOnce(ferrows::WebSocket<TcpStream>, Pump) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (tcp, url) = common::listen().await;
    let server = tokio::spawn(async move {
        let (stream, _) = tcp.accept().await.unwrap();
        let ws = ferrows::accept(stream).await.unwrap();
        let pump = Pump::new(hub.join(), 64 * 1024);
        run(ws, pump).await;
    });
    (connect(&url).await, server)
}

#[tokio::test]
async fn a_pumped_member_removed_from_its_hub_is_closed_with_1001() {
    let hub = Hub::new(16);
    let (mut client, server) = pumped(hub.clone(), |mut ws, mut pump| async move {
        loop {
            match pump.next(&mut ws).await {
                PumpEvent::Close(frame) => {
                    pump.leave();
                    let _ = ws.close(frame.code, frame.reason()).await;
                    return;
                }
                PumpEvent::Message(_) => {}
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    eventually("joined", || hub.len() == 1).await;
    assert_eq!(hub.broadcast("one"), 1);
    let got = within("message", client.recv()).await.unwrap().unwrap();
    assert_eq!(got.as_text(), Some("one"));
    let id = hub.ids()[0];
    assert!(hub.remove(id));
    let got = within("close", client.recv()).await.unwrap().unwrap();
    let Message::Close(Some(frame)) = got else {
        panic!("{got:?}")
    };
    assert_eq!(frame.code, CloseCode::GOING_AWAY);
    within("server ends", server).await.unwrap();
}

#[tokio::test]
async fn a_pump_paused_for_reading_still_writes_and_reads_after_the_instant() {
    let hub = Hub::new(16);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (mut client, _server) = pumped(hub.clone(), move |mut ws, mut pump| async move {
        pump.pause_reading_until(tokio::time::Instant::now() + Duration::from_millis(1500));
        assert!(pump.is_reading_paused());
        let paused_at = Instant::now();
        loop {
            match pump.next(&mut ws).await {
                PumpEvent::Message(msg) if msg.is_text() => {
                    let _ = tx.send(paused_at.elapsed());
                }
                PumpEvent::Message(_) => {}
                _ => return,
            }
        }
    })
    .await;
    let sent = Instant::now();
    client.send("from the client").await.unwrap();
    eventually("joined", || hub.len() == 1).await;
    assert_eq!(hub.broadcast("to the client"), 1);
    // Written while reading is paused.
    let got = within("message", client.recv()).await.unwrap().unwrap();
    assert_eq!(got.as_text(), Some("to the client"));
    assert!(
        sent.elapsed() < Duration::from_millis(1000),
        "written only after {:?}",
        sent.elapsed()
    );
    let read_after = within("read", rx.recv()).await.unwrap();
    assert!(
        read_after >= Duration::from_millis(1400),
        "read after {read_after:?}, during the pause"
    );
}

// ------------------------------------------------ access control (issue 9)

/// Sends `request` from the local address `from` (any of 127.0.0.0/8 on
/// Linux) and returns the response head and the stream.
async fn head_from(from: [u8; 4], addr: SocketAddr, request: &str) -> (String, TcpStream) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let mut tcp = within("connect", socket.connect(addr)).await.unwrap();
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
    (String::from_utf8_lossy(&got).into_owned(), tcp)
}

fn status_in(head: &str) -> u16 {
    head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap()
}

/// An upgrade request for `target`.
fn upgrade_to(addr: SocketAddr, target: &str, extra: &str) -> String {
    upgrade_request(addr, extra).replacen("GET / ", &format!("GET {target} "), 1)
}

#[tokio::test]
async fn the_token_gates_upgrades_with_401_and_leaves_pages_public() {
    let (addr, _handle, _stop, _task) = serve(bind().token("s3cret ü"));
    let local = [127, 0, 0, 1];
    for (target, extra) in [
        ("/", ""),
        ("/?token=wrong", ""),
        ("/?token=s3cret", ""),
        ("/", "Authorization: Bearer s3cret\r\n"),
        ("/", "Authorization: Basic czNjcmV0IMO8\r\n"),
    ] {
        let (head, _) = head_from(local, addr, &upgrade_to(addr, target, extra)).await;
        assert_eq!(status_in(&head), 401, "{target} {extra}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("\r\nwww-authenticate: bearer\r\n"),
            "{head}"
        );
    }
    for (target, extra) in [
        ("/?token=s3cret%20%C3%BC", ""),
        ("/?room=1&token=s3cret+%C3%BC", ""),
        ("/", "Authorization: Bearer s3cret ü\r\n"),
        ("/", "authorization: bearer s3cret ü\r\n"),
    ] {
        let (head, _) = head_from(local, addr, &upgrade_to(addr, target, extra)).await;
        assert_eq!(status_in(&head), 101, "{target} {extra}: {head}");
    }
    let (head, _) = head_from(local, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_in(&head), 200, "the page is public: {head}");
}

#[tokio::test]
async fn one_address_gets_503_past_its_connection_cap_and_others_do_not() {
    let (addr, handle, _stop, _task) = serve(
        bind()
            .max_connections_per_ip(3)
            .per_ip_limits_on_loopback(true),
    );
    let a = [127, 0, 0, 1];
    let mut open = Vec::new();
    for _ in 0..3 {
        let (head, tcp) = head_from(a, addr, &upgrade_request(addr, "")).await;
        assert_eq!(status_in(&head), 101, "{head}");
        open.push(tcp);
    }
    let (head, _) = head_from(a, addr, &upgrade_request(addr, "")).await;
    assert_eq!(status_in(&head), 503, "{head}");
    assert!(head.contains("\r\nRetry-After: 5\r\n"), "{head}");
    // A page is still served to it, and another address connects.
    let (head, _) = head_from(a, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_in(&head), 200, "{head}");
    let (head, _other) = head_from([127, 0, 0, 2], addr, &upgrade_request(addr, "")).await;
    assert_eq!(status_in(&head), 101, "another address: {head}");
    // A place freed is a place again.
    open.pop();
    eventually("a place freed", || handle.connections() == 3).await;
    let (head, _) = head_from(a, addr, &upgrade_request(addr, "")).await;
    assert_eq!(status_in(&head), 101, "{head}");
}

#[tokio::test]
async fn one_address_gets_429_past_its_handshake_rate_and_others_do_not() {
    let (addr, _handle, _stop, _task) = serve(
        bind()
            .handshake_rate_per_ip(1)
            .handshake_burst_per_ip(5)
            .per_ip_limits_on_loopback(true),
    );
    let a = [127, 0, 0, 1];
    for i in 0..5 {
        let (head, _) = head_from(a, addr, &upgrade_request(addr, "")).await;
        assert_eq!(status_in(&head), 101, "handshake {i} of the burst: {head}");
    }
    // Pages count too: a connection is a connection.
    let (head, _) = head_from(a, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_in(&head), 429, "{head}");
    let (head, _) = head_from(a, addr, &upgrade_request(addr, "")).await;
    assert_eq!(status_in(&head), 429, "{head}");
    let retry: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {head}"));
    assert!((1..=2).contains(&retry), "{head}");
    let (head, _) = head_from([127, 0, 0, 3], addr, &upgrade_request(addr, "")).await;
    assert_eq!(status_in(&head), 101, "another address: {head}");
    // A token is due after a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (head, _) = head_from(a, addr, &upgrade_request(addr, "")).await;
    assert_eq!(status_in(&head), 101, "after the wait: {head}");
}

#[tokio::test]
async fn loopback_is_exempt_from_the_per_address_limits_by_default() {
    let (addr, _handle, _stop, _task) = serve(
        bind()
            .max_connections_per_ip(2)
            .handshake_rate_per_ip(1)
            .handshake_burst_per_ip(1),
    );
    let mut open = Vec::new();
    for i in 0..10 {
        let (head, tcp) = head_from([127, 0, 0, 1], addr, &upgrade_request(addr, "")).await;
        assert_eq!(status_in(&head), 101, "{i}: {head}");
        open.push(tcp);
    }
}
