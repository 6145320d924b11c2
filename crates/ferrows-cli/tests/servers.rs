//! The ready-made servers, run as the built `ferrows` binary on a free
//! port and driven by ferrows clients and raw sockets: `serve echo` (its
//! websocket-echo-server environment variables, heartbeat, backpressure,
//! limits, page, graceful shutdown), `serve chat` (tick, broadcast,
//! notices, slow clients) and `serve` (routes, the gamepad demo and its
//! flags, connection cap, Origin allowlist, TLS).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferrows::{ClientBuilder, Fragment, Message, OpCode};
use support::{
    Server, TempDir, close_code, connect, http, next_data, parse_frames, raw_upgrade, run_to_exit,
    self_signed, until_close, upgrade_status, within,
};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

const ECHO: &[&str] = &["serve", "echo", "--port", "0"];

/// Sends `text` and expects it back.
async fn echoes(ws: &mut support::Client, text: &str) {
    within(5, ws.send(text)).await.unwrap();
    let back = next_data(ws, 10).await;
    assert_eq!(back.as_text(), Some(text));
}

// ---------------------------------------------------------------- serve echo

#[tokio::test]
async fn echo_binds_the_address_and_port_of_bind_address_and_bind_port() {
    // A free port, found by binding it and letting go; another process
    // could take it in between, so try a few times.
    let mut started = None;
    for _ in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let port_text = port.to_string();
        let env = [
            ("BIND_ADDRESS", "127.0.0.1"),
            ("BIND_PORT", port_text.as_str()),
        ];
        match Server::try_start(&["serve", "echo"], &env) {
            Ok(server) => {
                started = Some((server, port));
                break;
            }
            Err(e) => assert!(e.log.contains("cannot bind"), "{}", e.log),
        }
    }
    let (server, port) = started.expect("no free port in three tries");
    assert_eq!(server.listening, format!("127.0.0.1:{port}"));
    let mut ws = connect(&server.ws_url("/")).await;
    echoes(&mut ws, "bound by the environment").await;

    // Flags win over the environment, even over invalid values there.
    let env = [("BIND_ADDRESS", "not an address"), ("BIND_PORT", "junk")];
    let server = Server::start_with_env(
        &["serve", "echo", "--bind", "127.0.0.1", "--port", "0"],
        &env,
    );
    assert!(
        server.listening.starts_with("127.0.0.1:"),
        "{}",
        server.listening
    );
    let mut ws = connect(&server.ws_url("/")).await;
    echoes(&mut ws, "bound by flags").await;
}

#[test]
fn echo_rejects_bad_settings_with_exit_code_2_and_says_which() {
    // Arguments, environment, what the message must name.
    type Case = (
        &'static [&'static str],
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
    );
    let cases: &[Case] = &[
        (
            &["serve", "echo"],
            &[("BIND_PORT", "abc")],
            &["BIND_PORT", "\"abc\""],
        ),
        (
            &["serve", "echo"],
            &[("BIND_PORT", "70000")],
            &["BIND_PORT", "65535"],
        ),
        (&["serve", "echo"], &[("BIND_PORT", "-1")], &["BIND_PORT"]),
        (
            &["serve", "echo", "--port", "abc"],
            &[],
            &["--port", "\"abc\""],
        ),
        (
            &["serve", "echo", "--port", "65536"],
            &[],
            &["--port", "65535"],
        ),
        (
            &["serve", "echo"],
            &[("BIND_ADDRESS", "localhost:80")],
            &["BIND_ADDRESS", "IP address"],
        ),
        (
            &["serve", "echo"],
            &[("HEARTBEAT_INTERVAL", "30 seconds")],
            &["HEARTBEAT_INTERVAL"],
        ),
        (
            &["serve", "echo"],
            &[("HIGH_WATER_MARK", "1e3")],
            &["HIGH_WATER_MARK"],
        ),
        (
            &["serve", "echo"],
            &[("MAX_MESSAGE_SIZE", "64k")],
            &["MAX_MESSAGE_SIZE"],
        ),
        (
            &["serve", "echo"],
            &[("MAX_FRAGMENTS", "many")],
            &["MAX_FRAGMENTS"],
        ),
        (
            &["serve", "echo", "--max-fragments=-3"],
            &[],
            &["--max-fragments"],
        ),
    ];
    for (args, env, needles) in cases {
        let (status, stderr) = run_to_exit(args, env);
        assert_eq!(status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        for needle in *needles {
            assert!(
                stderr.contains(needle),
                "{args:?} {env:?}: {needle:?} not in {stderr:?}"
            );
        }
        assert!(!stderr.contains("listening on"), "{stderr}");
    }
}

/// A WebSocket client that never answers pings and never sends: reads the
/// server's frames until the connection ends.
async fn silent_client(server: &Server) -> (Instant, tokio::task::JoinHandle<(Duration, Vec<u8>)>) {
    let (head, mut stream, mut seen) = raw_upgrade(server.addr, "/", "").await;
    assert_eq!(head.status, 101);
    let start = Instant::now();
    let task = tokio::spawn(async move {
        let mut chunk = [0u8; 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return (start.elapsed(), seen),
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    });
    (start, task)
}

#[tokio::test]
async fn echo_heartbeat_terminates_a_silent_peer_within_two_intervals_and_keeps_an_answering_one() {
    const INTERVAL: Duration = Duration::from_millis(500);
    let server = Server::start_with_env(ECHO, &[("HEARTBEAT_INTERVAL", "500")]);

    // The answering client: ferrows answers pings by itself while reading.
    let (mut reader, mut writer) = connect(&server.ws_url("/")).await.split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let answering = tokio::spawn(async move {
        let mut pings = 0;
        while let Some(msg) = reader.recv().await {
            match msg {
                Ok(Message::Ping(_)) => pings += 1,
                Ok(other) => {
                    if tx.send(other).is_err() {
                        break;
                    }
                }
                Err(e) => panic!("the answering client failed: {e}"),
            }
        }
        pings
    });

    let (_, silent) = silent_client(&server).await;
    let (lived, bytes) = within(10, silent).await.unwrap();
    let frames = parse_frames(&bytes);
    assert!(
        frames.iter().any(|f| f.opcode == 0x9 && f.len <= 125),
        "no ping before the end: {frames:?}"
    );
    assert!(
        frames.iter().all(|f| f.opcode != 0x8),
        "terminated, not closed: no close frame expected (the browser reports 1006): {frames:?}"
    );
    // The first tick pings (after up to one interval), the next terminates.
    assert!(
        lived >= INTERVAL - Duration::from_millis(50),
        "terminated too early: {lived:?}"
    );
    assert!(
        lived <= 2 * INTERVAL + Duration::from_millis(1500),
        "terminated too late: {lived:?}"
    );
    server
        .wait_log(&["closed", "close=1006"], Duration::from_secs(5))
        .await;

    // Meanwhile, and for two more intervals, the answering client stays.
    tokio::time::sleep(2 * INTERVAL).await;
    within(5, writer.send("still here")).await.unwrap();
    let back = within(5, rx.recv()).await.expect("an echo");
    assert_eq!(back.as_text(), Some("still here"));
    within(5, writer.close(1000, "done")).await.unwrap();
    let pings = within(10, answering).await.unwrap();
    assert!(pings >= 2, "the answering client was pinged {pings} times");
}

#[tokio::test]
async fn echo_heartbeat_interval_empty_or_zero_means_the_default_30_seconds() {
    let empty = Server::start_with_env(ECHO, &[("HEARTBEAT_INTERVAL", "")]);
    let zero = Server::start_with_env(ECHO, &[("HEARTBEAT_INTERVAL", "0")]);
    let (_, a) = silent_client(&empty).await;
    let (_, b) = silent_client(&zero).await;
    // With a short interval, 1.5 s would see them pinged and terminated.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !a.is_finished() && !b.is_finished(),
        "a silent client was terminated early"
    );
    a.abort();
    b.abort();
}

#[tokio::test]
async fn echo_high_water_mark_pauses_reading_from_a_client_that_does_not_read() {
    const SIZE: usize = 16 * 1024;
    // 64 MiB: far more than socket buffers hold, so a server that kept
    // reading could never make the writer stall.
    const TOTAL: usize = 4096;
    let server = Server::start_with_env(ECHO, &[("HIGH_WATER_MARK", "16384")]);
    let (mut reader, mut writer) = connect(&server.ws_url("/")).await.split();
    let sent = Arc::new(AtomicUsize::new(0));
    let progress = sent.clone();
    let writing = tokio::spawn(async move {
        for i in 0..TOTAL {
            let mut payload = vec![(i % 251) as u8; SIZE];
            payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
            writer.send(Message::binary(payload)).await.unwrap();
            progress.store(i + 1, Ordering::SeqCst);
        }
        writer
    });

    // Wait until writing makes no progress for a second (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (0, Instant::now());
    let stalled_at = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = sent.load(Ordering::SeqCst);
        assert!(
            now < TOTAL,
            "wrote all {TOTAL} messages: the server never stopped reading"
        );
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= Duration::from_secs(1) {
            break now;
        }
        assert!(Instant::now() < deadline, "no stall within 60 s");
    };
    assert!(stalled_at > 0, "nothing could be written at all");

    // Reading again resumes everything: every echo arrives, in order.
    for i in 0..TOTAL {
        let msg = within(30, reader.recv()).await.expect("an echo").unwrap();
        let Message::Binary(data) = msg else {
            panic!("expected binary, got {msg:?}")
        };
        assert_eq!(data.len(), SIZE);
        assert_eq!(u64::from_be_bytes(data[..8].try_into().unwrap()), i as u64);
        assert!(data[8..].iter().all(|b| *b == (i % 251) as u8));
    }
    let mut writer = within(30, writing).await.unwrap();
    eprintln!("the writer stalled after {stalled_at} of {TOTAL} messages of {SIZE} bytes");
    within(10, writer.close(1000, "")).await.unwrap();
}

/// Sends `len` bytes of text and returns what came back: the echo, or the
/// close frame.
async fn send_len(ws: &mut support::Client, len: usize) -> Message {
    within(10, ws.send("x".repeat(len))).await.unwrap();
    next_data(ws, 10).await
}

#[tokio::test]
async fn echo_max_message_size_closes_with_1009_and_empty_or_zero_means_65536() {
    let small = Server::start_with_env(ECHO, &[("MAX_MESSAGE_SIZE", "1000")]);
    let mut ws = connect(&small.ws_url("/")).await;
    assert_eq!(send_len(&mut ws, 1000).await.len(), 1000);
    assert_eq!(close_code(&send_len(&mut ws, 1001).await), 1009);

    for value in ["", "0"] {
        let server = Server::start_with_env(ECHO, &[("MAX_MESSAGE_SIZE", value)]);
        let mut ws = connect(&server.ws_url("/")).await;
        assert_eq!(send_len(&mut ws, 65_536).await.len(), 65_536, "{value:?}");
        assert_eq!(
            close_code(&send_len(&mut ws, 65_537).await),
            1009,
            "{value:?}"
        );
    }
}

/// Sends a text message in `n` fragments and returns what came back.
async fn send_fragments(ws: &mut support::Client, n: usize) -> Message {
    for i in 0..n {
        let fragment = Fragment {
            opcode: OpCode::Text,
            data: bytes_of(&format!("{i},")),
            message_offset: 0,
            first: i == 0,
            fin: i + 1 == n,
        };
        within(5, ws.feed(Message::Fragment(fragment)))
            .await
            .unwrap();
    }
    within(5, ws.flush()).await.unwrap();
    next_data(ws, 10).await
}

fn bytes_of(s: &str) -> ferrows::Bytes {
    ferrows::Bytes::copy_from_slice(s.as_bytes())
}

#[tokio::test]
async fn echo_max_fragments_closes_with_1009_and_zero_means_256() {
    let server = Server::start_with_env(ECHO, &[("MAX_FRAGMENTS", "4")]);
    let mut ws = connect(&server.ws_url("/")).await;
    assert_eq!(send_fragments(&mut ws, 4).await.as_text(), Some("0,1,2,3,"));
    assert_eq!(close_code(&send_fragments(&mut ws, 5).await), 1009);

    let server = Server::start_with_env(ECHO, &[("MAX_FRAGMENTS", "0")]);
    let mut ws = connect(&server.ws_url("/")).await;
    assert_eq!(
        send_fragments(&mut ws, 256).await.len(),
        (0..256)
            .map(|i: usize| format!("{i},").len())
            .sum::<usize>()
    );
    assert_eq!(close_code(&send_fragments(&mut ws, 257).await), 1009);
}

#[tokio::test]
async fn echo_answers_a_plain_get_with_the_echo_console() {
    let server = Server::start(ECHO);
    for path in ["/", "/anything?x=1"] {
        let page = http(server.addr, "GET", path, "").await;
        assert_eq!(page.status, 200, "{path}");
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(page.body.contains("<title>Echo console"), "{path}");
        assert!(
            page.header("content-security-policy")
                .unwrap()
                .contains("default-src 'none'")
        );
    }
    let head = http(server.addr, "HEAD", "/", "").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(
        head.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 1000
    );
    let post = http(server.addr, "POST", "/", "Content-Length: 0\r\n").await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    // The WebSocket still works on the same port and path.
    let mut ws = connect(&server.ws_url("/")).await;
    echoes(&mut ws, "same port").await;
}

/// Connects `n` clients and checks each one works.
async fn clients(server: &Server, path: &str, n: usize) -> Vec<support::Client> {
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(connect(&server.ws_url(path)).await);
    }
    all
}

#[tokio::test]
async fn echo_sigterm_closes_every_client_with_1001_and_exits_0() {
    let mut server = Server::start(ECHO);
    let mut all = clients(&server, "/", 3).await;
    for ws in &mut all {
        echoes(ws, "before").await;
    }
    // Each client keeps reading in its own task, as a real one would.
    let readers: Vec<_> = all
        .into_iter()
        .map(|mut ws| tokio::spawn(async move { until_close(&mut ws, 15).await }))
        .collect();
    let status = server.terminate(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", server.log());
    for r in readers {
        assert_eq!(r.await.unwrap(), 1001);
    }
    assert!(server.log().contains("close=1001"), "{}", server.log());
}

// ---------------------------------------------------------------- serve chat

/// What a chat client received, as it arrived.
#[derive(Debug)]
enum Got {
    Tick(u64, Instant),
    Msg(String),
    Closed(u16),
}

/// A chat client read by a task: every `tick:` and `msg:`, then its close.
/// Ticks met while waiting for messages are kept, with their arrival time.
struct ChatClient {
    rx: mpsc::UnboundedReceiver<Got>,
    ticks: Vec<(u64, Instant)>,
}

impl ChatClient {
    fn new(mut ws: support::Client) -> ChatClient {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(msg) = ws.recv().await {
                let got = match msg {
                    Ok(Message::Text(t)) => {
                        let (cmd, data) = t.as_str().split_once(':').expect("cmd:data");
                        match cmd {
                            "tick" => Got::Tick(data.parse().expect("a number"), Instant::now()),
                            "msg" => Got::Msg(data.to_owned()),
                            other => panic!("unknown command {other:?}"),
                        }
                    }
                    Ok(Message::Close(frame)) => Got::Closed(frame.map_or(1005, |f| f.code.0)),
                    Ok(_) => continue,
                    Err(e) => panic!("chat client failed: {e}"),
                };
                if tx.send(got).is_err() {
                    break;
                }
            }
        });
        ChatClient {
            rx,
            ticks: Vec::new(),
        }
    }

    /// The next `msg:` text, within `secs`.
    async fn next_msg(&mut self, secs: u64) -> String {
        let ticks = &mut self.ticks;
        let rx = &mut self.rx;
        within(secs, async {
            loop {
                match rx.recv().await.expect("the reader ended") {
                    Got::Msg(m) => return m,
                    Got::Tick(n, at) => ticks.push((n, at)),
                    Got::Closed(code) => panic!("closed with {code} while waiting for a message"),
                }
            }
        })
        .await
    }

    /// Takes in what arrived without waiting; panics on a message.
    fn take_ticks(&mut self) -> Vec<(u64, Instant)> {
        while let Ok(got) = self.rx.try_recv() {
            match got {
                Got::Tick(n, at) => self.ticks.push((n, at)),
                other => panic!("unexpected {other:?}"),
            }
        }
        std::mem::take(&mut self.ticks)
    }
}

/// The id in `* client <id> joined`.
fn joined_id(notice: &str) -> u64 {
    notice
        .strip_prefix("* client ")
        .and_then(|s| s.strip_suffix(" joined"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a join notice: {notice:?}"))
}

/// Checks ticks are consecutive numbers.
fn assert_consecutive(ticks: &[(u64, Instant)]) {
    for pair in ticks.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "ticks are consecutive: {ticks:?}");
    }
}

#[tokio::test]
async fn chat_clients_see_the_same_tick_n_at_the_same_time() {
    const TICK: Duration = Duration::from_millis(300);
    let server = Server::start(&["serve", "chat", "--port", "0", "--tick", "300ms"]);
    // Tick 0 went out at start; join well after it.
    tokio::time::sleep(TICK * 2).await;
    // One after the other, so each one's first notice is its own.
    let (mut a, a_id) = chat_join(&server).await;
    let (mut b, b_id) = chat_join(&server).await;
    assert_eq!(a.next_msg(5).await, format!("* client {b_id} joined"));
    assert_ne!(a_id, b_id);
    tokio::time::sleep(TICK * 7).await;
    let (ta, tb) = (a.take_ticks(), b.take_ticks());
    for ticks in [&ta, &tb] {
        assert!(ticks.len() >= 4, "{ticks:?}");
        assert_consecutive(ticks);
    }
    let mut common = 0;
    for (n, at_a) in &ta {
        if let Some((_, at_b)) = tb.iter().find(|(m, _)| m == n) {
            common += 1;
            let skew = if at_a > at_b {
                *at_a - *at_b
            } else {
                *at_b - *at_a
            };
            assert!(skew < TICK, "tick {n} reached the clients {skew:?} apart");
        }
    }
    assert!(common >= 4, "a: {ta:?}\nb: {tb:?}");
    // Counted since the server started (tick 0 went out at start, before
    // any client), not per client.
    assert!(ta[0].0 >= 1, "{ta:?}");
}

/// Connects a chat client and reads its own join notice: its id.
async fn chat_join(server: &Server) -> (ChatClient, u64) {
    let mut client = ChatClient::new(connect(&server.ws_url("/")).await);
    let id = joined_id(&client.next_msg(5).await);
    (client, id)
}

#[tokio::test]
async fn chat_broadcasts_to_everyone_including_the_sender_and_announces_joins_and_leaves() {
    let server = Server::start(&["serve", "chat", "--port", "0", "--tick", "0"]);
    let (mut a, a_id) = chat_join(&server).await;
    let mut b_ws = connect(&server.ws_url("/any/path")).await;
    let b_id = match next_data(&mut b_ws, 5).await {
        Message::Text(t) => joined_id(t.as_str().strip_prefix("msg:").unwrap()),
        other => panic!("{other:?}"),
    };
    assert!(b_id > a_id);
    assert_eq!(a.next_msg(5).await, format!("* client {b_id} joined"));

    let text = "hello <b>world</b>: with a colon";
    within(5, b_ws.send(text)).await.unwrap();
    let mut b = ChatClient::new(b_ws);
    assert_eq!(a.next_msg(5).await, text);
    assert_eq!(b.next_msg(5).await, text, "the sender gets its own message");

    // Binary is not part of the protocol: ignored, and logged.
    let mut c = connect(&server.ws_url("/")).await;
    let c_id = match next_data(&mut c, 5).await {
        Message::Text(t) => joined_id(t.as_str().strip_prefix("msg:").unwrap()),
        other => panic!("{other:?}"),
    };
    assert_eq!(a.next_msg(5).await, format!("* client {c_id} joined"));
    assert_eq!(b.next_msg(5).await, format!("* client {c_id} joined"));
    within(5, c.send(vec![1u8, 2, 3])).await.unwrap();
    within(5, c.send("after binary")).await.unwrap();
    assert_eq!(a.next_msg(5).await, "after binary");
    assert_eq!(b.next_msg(5).await, "after binary");
    assert_eq!(
        next_data(&mut c, 5).await.as_text(),
        Some("msg:after binary")
    );
    let ignored = format!("client={c_id}");
    server
        .wait_log(
            &["binary message ignored", &ignored],
            Duration::from_secs(5),
        )
        .await;
    within(5, c.close(1000, "bye")).await.unwrap();
    assert_eq!(a.next_msg(5).await, format!("* client {c_id} left"));
    assert_eq!(b.next_msg(5).await, format!("* client {c_id} left"));
    // One line per connection open and close, with the peer and the code.
    let closed = server
        .wait_log(&["closed", &ignored, "close=1000"], Duration::from_secs(5))
        .await;
    assert!(closed.contains("peer=127.0.0.1:"), "{closed}");
    let opened = server
        .wait_log(&["open", &format!("client={a_id}")], Duration::from_secs(5))
        .await;
    assert!(opened.contains("peer=127.0.0.1:"), "{opened}");

    // --tick 0: no tick all along.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.take_ticks().is_empty() && b.take_ticks().is_empty());
}

/// A client that has its 101 is in the room: every message sent after the
/// client got its 101 reaches it. The server used to join the room after
/// writing the 101, and a broadcast in between missed the new client (how
/// `ferrows bench --broadcast` once waited out its settle timeout). The
/// window is short, so one client sends without pause while 40 others
/// connect, and each checks it got everything sent after its 101.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_a_client_with_its_101_gets_every_later_broadcast() {
    let server = Server::start(&["serve", "chat", "--port", "0", "--tick", "0", "--rate", "0"]);
    let (mut sender_rx, mut sender) = connect(&server.ws_url("/")).await.split();
    // The sender's own copies, drained so its queue never overflows.
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = sender_rx.recv().await {} });
    let sent: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pace = {
        let (sent, stop) = (sent.clone(), stop.clone());
        tokio::spawn(async move {
            let mut k = 0usize;
            while !stop.load(Ordering::Acquire) {
                // The instant is taken before the send: a copy sent after a
                // client's 101 is one whose send began after it.
                sent.lock().unwrap().push(Instant::now());
                within(5, sender.send(format!("seq {k}"))).await.unwrap();
                k += 1;
                if k % 8 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            sender
        })
    };
    let mut joiners = Vec::new();
    for j in 0..40u64 {
        let url = server.ws_url("/");
        let stop = stop.clone();
        joiners.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20 + 25 * j)).await;
            let mut ws = connect(&url).await;
            let at = Instant::now();
            let mut first = None;
            while first.is_none() && !stop.load(Ordering::Acquire) {
                match tokio::time::timeout(Duration::from_secs(5), ws.recv()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        first = t
                            .as_str()
                            .strip_prefix("msg:seq ")
                            .map(|n| n.parse::<usize>().unwrap());
                    }
                    Ok(Some(Ok(_))) => {}
                    other => panic!("joiner {j}: {other:?}"),
                }
            }
            let _ = within(5, ws.close(1000, "")).await;
            (at, first)
        }));
    }
    let mut results = Vec::new();
    for joiner in joiners {
        results.push(joiner.await.unwrap());
    }
    stop.store(true, Ordering::Release);
    let mut sender = pace.await.unwrap();
    let sent = sent.lock().unwrap().clone();
    for (j, (at, first)) in results.into_iter().enumerate() {
        let first = first.unwrap_or_else(|| panic!("joiner {j} got no message"));
        // The first message whose send began after this client's 101.
        let due = sent.partition_point(|t| *t <= at);
        assert!(
            first <= due,
            "joiner {j} missed seq {first_missed}..{first} although they were sent after its 101",
            first_missed = due
        );
    }
    let _ = within(5, sender.close(1000, "")).await;
    drain.abort();
}

#[tokio::test]
async fn chat_closes_a_stalled_client_with_1008_while_the_others_keep_their_ticks() {
    const TICK: Duration = Duration::from_millis(100);
    let server = Server::start(&[
        "serve", "chat", "--port", "0", "--tick", "100ms", "--queue", "8",
    ]);
    let (mut healthy, _) = chat_join(&server).await;
    let mut sender = connect(&server.ws_url("/")).await;
    let sender_joined = next_data(&mut sender, 5).await;
    let sender_id = joined_id(
        sender_joined
            .as_text()
            .unwrap()
            .strip_prefix("msg:")
            .unwrap(),
    );
    assert_eq!(
        healthy.next_msg(5).await,
        format!("* client {sender_id} joined")
    );
    // The stalled client has a small receive buffer, so the server's side
    // backs up quickly; it reads nothing until it has been dropped.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = within(5, socket.connect(server.addr)).await.unwrap();
    let (mut stalled, _) = within(5, ClientBuilder::new(server.ws_url("/")).connect_on(stream))
        .await
        .unwrap();
    let stalled_id = joined_id(&healthy.next_msg(5).await);
    let stalled_field = format!("client={stalled_id}");
    let dropped = |log: &str| {
        log.lines()
            .any(|l| l.contains("closing with 1008") && l.contains(&stalled_field))
    };

    // Flood with 32 KiB messages, one at a time: the next goes out once
    // the healthy client has it, so only the stalled one falls behind.
    let big = "y".repeat(32 * 1024);
    let flood_start = Instant::now();
    let mut sent = 0;
    while !dropped(&server.log()) {
        assert!(
            sent < 2000,
            "the stalled client was not dropped after {sent} messages"
        );
        assert!(
            flood_start.elapsed() < Duration::from_secs(60),
            "no 1008 within 60 s"
        );
        within(5, sender.send(big.as_str())).await.unwrap();
        sent += 1;
        assert_eq!(healthy.next_msg(10).await.len(), big.len());
        // The sender gets its own copies: read them, so it stays healthy.
        loop {
            match next_data(&mut sender, 10).await {
                Message::Text(t) if t.len() == big.len() + 4 => break,
                Message::Text(_) => continue,
                other => panic!("{other:?}"),
            }
        }
    }
    eprintln!("the stalled client was dropped after {sent} messages of 32 KiB");

    // The stalled client now reads: its backlog, then the 1008.
    assert_eq!(until_close(&mut stalled, 15).await, 1008);
    assert_eq!(
        healthy.next_msg(10).await,
        format!("* client {stalled_id} left")
    );

    // The healthy client's ticks kept coming through it all, one by one
    // and on time.
    tokio::time::sleep(TICK * 3).await;
    let ticks = healthy.take_ticks();
    let span = flood_start.elapsed();
    assert_consecutive(&ticks);
    let expected = span.as_millis() / TICK.as_millis();
    assert!(
        ticks.len() as u128 * 2 >= expected,
        "{} ticks in {span:?}",
        ticks.len()
    );
    for pair in ticks.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        assert!(
            gap < Duration::from_secs(1),
            "ticks {} apart",
            gap.as_millis()
        );
    }
    within(5, sender.close(1000, "")).await.unwrap();
}

#[tokio::test]
async fn chat_serves_its_page_and_rejects_a_bad_tick() {
    let server = Server::start(&["serve", "chat", "--port", "0"]);
    let page = http(server.addr, "GET", "/", "").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>Chat"), "{}", page.body);

    for (bad, why) in [
        ("fast", "expected a duration"),
        ("5d", "unknown unit"),
        ("1ms", "too short"),
    ] {
        let (status, stderr) = run_to_exit(&["serve", "chat", "--port", "0", "--tick", bad], &[]);
        assert_eq!(status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains("--tick") && stderr.contains(why),
            "{bad}: {stderr}"
        );
    }
}

#[tokio::test]
async fn chat_sigterm_closes_every_client_with_1001_and_exits_0() {
    let mut server = Server::start(&["serve", "chat", "--port", "0", "--tick", "50ms"]);
    let readers: Vec<_> = clients(&server, "/", 3)
        .await
        .into_iter()
        .map(|mut ws| tokio::spawn(async move { until_close(&mut ws, 15).await }))
        .collect();
    server
        .wait_log(&["open", "client=3"], Duration::from_secs(5))
        .await;
    let status = server.terminate(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", server.log());
    for r in readers {
        assert_eq!(r.await.unwrap(), 1001);
    }
}

/// Regression: a connection still in its opening handshake when SIGTERM
/// arrives must be told at once too (it used to miss the shutdown and wait
/// out the 5 s grace period).
#[tokio::test]
async fn sigterm_during_a_handshake_still_closes_that_client_with_1001() {
    use ferrows::proto::frame::{FrameHeader, HeaderDecode};
    use tokio::io::AsyncWriteExt;
    let mut server = Server::start(&["serve", "chat", "--port", "0", "--tick", "0"]);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], server.port()));
    let request = support::upgrade_request(addr, "/", "");
    let (first, rest) = request.split_at(request.len() / 2);
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(first.as_bytes()).await.unwrap();
    server
        .wait_log(&["listening"], Duration::from_secs(5))
        .await;
    // The half request is accepted and read before the signal arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.send_sigterm();
    let signalled = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tcp.write_all(rest.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let closed_with = within(10, async {
        let mut buf = [0u8; 4096];
        loop {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "EOF without a close frame: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            let Some(head_end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            assert!(
                got.starts_with(b"HTTP/1.1 101"),
                "{}",
                String::from_utf8_lossy(&got)
            );
            let mut rest = &got[head_end + 4..];
            while let Ok(HeaderDecode::Complete(h, n)) = FrameHeader::decode(rest) {
                let len = h.payload_len as usize;
                if rest.len() < n + len {
                    break;
                }
                if h.opcode == OpCode::Close {
                    return u16::from_be_bytes([rest[n], rest[n + 1]]);
                }
                rest = &rest[n + len..];
            }
        }
    })
    .await;
    assert_eq!(closed_with, 1001);
    // Told by the shutdown itself, not by the end of the 5 s grace period
    // (when the chat room is dropped, which also closes with 1001).
    let waited = signalled.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "closed {waited:?} after SIGTERM"
    );
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", server.log());
}

// --------------------------------------------------------------------- serve

const SERVE: &[&str] = &["serve", "--port", "0"];

/// No gamepad token from the caller's environment (empty means none).
const NO_TOKEN: &[(&str, &str)] = &[("FERROWS_GAMEPAD_TOKEN", "")];

/// The next JSON text message whose `type` is `kind` (others skipped).
async fn next_json(ws: &mut support::Client, kind: &str) -> serde_json::Value {
    within(10, async {
        loop {
            let msg = next_data(ws, 10).await;
            let text = msg.as_text().unwrap_or_else(|| panic!("not text: {msg:?}"));
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            if value["type"] == kind {
                return value;
            }
        }
    })
    .await
}

#[tokio::test]
async fn serve_routes_each_path_to_its_page_and_its_websocket() {
    let server = Server::start_with_env(SERVE, NO_TOKEN);
    assert!(
        server.listening.starts_with("[::]:"),
        "dual-stack by default: {}",
        server.listening
    );

    let landing = http(server.addr, "GET", "/", "").await;
    assert_eq!(landing.status, 200);
    for link in ["href=\"/echo\"", "href=\"/chat\"", "href=\"/gamepad\""] {
        assert!(landing.body.contains(link), "no {link} on the landing page");
    }
    for (path, title) in [
        ("/echo", "<title>Echo console"),
        ("/chat", "<title>Chat"),
        ("/gamepad", "<title>Gamepad · ferrows</title>"),
        ("/echo?x=1", "<title>Echo console"),
        ("/gamepad?token=x", "<title>Gamepad · ferrows</title>"),
    ] {
        let page = http(server.addr, "GET", path, "").await;
        assert_eq!(page.status, 200, "{path}");
        assert!(page.body.contains(title), "{path}");
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
    }
    assert_eq!(http(server.addr, "HEAD", "/chat", "").await.status, 200);
    assert_eq!(
        http(server.addr, "POST", "/echo", "Content-Length: 0\r\n")
            .await
            .status,
        405
    );
    for path in ["/nope", "/echo/", "/gamepad/", "/index.html"] {
        let page = http(server.addr, "GET", path, "").await;
        assert_eq!(page.status, 404, "{path}");
        assert_eq!(
            page.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert!(
            page.body
                .contains("the demos are /echo, /chat and /gamepad"),
            "{path}: {}",
            page.body
        );
    }

    // The WebSockets on the same paths.
    let mut echo = connect(&server.ws_url("/echo")).await;
    echoes(&mut echo, "through the router").await;
    within(5, echo.send(vec![0u8, 255, 1])).await.unwrap();
    assert_eq!(
        next_data(&mut echo, 5).await,
        Message::binary(vec![0u8, 255, 1])
    );
    let mut chat = connect(&server.ws_url("/chat")).await;
    let joined = next_data(&mut chat, 5).await;
    assert!(
        joined.as_text().unwrap().starts_with("msg:* client "),
        "{joined:?}"
    );
    let tick = next_data(&mut chat, 5).await;
    assert!(tick.as_text().unwrap().starts_with("tick:"), "{tick:?}");
    // The gamepad's: a viewer until it sends a command, then telemetry.
    let mut gamepad = connect(&server.ws_url("/gamepad")).await;
    let hello = next_json(&mut gamepad, "hello").await;
    assert_eq!(hello["role"], "viewer", "{hello}");
    assert_eq!(hello["deadman_ms"], 500, "the default dead-man: {hello}");
    assert_eq!(hello["token_required"], false, "{hello}");
    let telemetry = next_json(&mut gamepad, "telemetry").await;
    assert_eq!(telemetry["clients"], 1, "{telemetry}");
    assert_eq!(telemetry["left"], 0.0, "{telemetry}");
    for path in ["/", "/nope", "/gamepad/"] {
        assert_eq!(upgrade_status(server.addr, path, "").await, 404, "{path}");
    }
    within(5, echo.close(1000, "")).await.unwrap();
    within(5, chat.close(1000, "")).await.unwrap();
    within(5, gamepad.close(1000, "")).await.unwrap();
}

#[tokio::test]
async fn serve_drives_the_gamepad_with_its_flags_and_stops_it_at_exit() {
    let dir = TempDir::new("serve-gamepad");
    let jsonl = dir.0.join("out.jsonl");
    let output = format!("jsonl:{}", jsonl.display());
    let args = [
        "serve",
        "--port",
        "0",
        "--output",
        &output,
        "--buttons",
        "2",
        "--max-speed",
        "0.5",
        "--deadman",
        "5000",
    ];
    let mut server = Server::start_with_env(&args, NO_TOKEN);
    let mut ws = connect(&server.ws_url("/gamepad")).await;
    let hello = next_json(&mut ws, "hello").await;
    assert_eq!(hello["buttons"], 2, "{hello}");
    assert_eq!(hello["max_speed"], 0.5, "{hello}");
    assert_eq!(hello["deadman_ms"], 5000, "{hello}");

    // Full ahead with button 1 held: both motors at --max-speed.
    let pad = r#"{"type":"pad","seq":1,"axes":[0,-1,0,0],"buttons":[0,1]}"#;
    within(5, ws.send(pad)).await.unwrap();
    let role = next_json(&mut ws, "role").await;
    assert_eq!(role["role"], "driver", "{role}");
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&jsonl)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let driven = loop {
        if let Some(line) = lines().into_iter().find(|l| l["reason"] == "command") {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no command line in {}; log:\n{}",
            jsonl.display(),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(driven["left"], 0.5, "{driven}");
    assert_eq!(driven["right"], 0.5, "{driven}");
    assert_eq!(
        driven["buttons"],
        serde_json::json!([false, true]),
        "{driven}"
    );

    // SIGTERM: the driver is told 1001 and the last line is the safe state.
    let reader = tokio::spawn(async move { until_close(&mut ws, 10).await });
    let status = server.terminate(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert_eq!(reader.await.unwrap(), 1001);
    let all = lines();
    let last = all.last().unwrap();
    assert_eq!(last["left"], 0.0, "{all:?}");
    assert_eq!(last["right"], 0.0, "{all:?}");
    assert_eq!(
        last["buttons"],
        serde_json::json!([false, false]),
        "{all:?}"
    );
}

#[test]
fn serve_fails_before_listening_when_the_gamepad_output_cannot_open() {
    let dir = TempDir::new("serve-gamepad-missing");
    let output = format!(
        "jsonl:{}",
        dir.0.join("missing").join("out.jsonl").display()
    );
    let (status, log) = run_to_exit(&["serve", "--port", "0", "--output", &output], NO_TOKEN);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(!log.contains("listening on"), "{log}");
    assert!(log.contains("missing"), "the error names the path: {log}");
}

#[tokio::test]
async fn serve_refuses_upgrades_beyond_max_connections_with_503() {
    let server = Server::start(&["serve", "--port", "0", "--max-connections", "2"]);
    let mut first = connect(&server.ws_url("/echo")).await;
    let mut second = connect(&server.ws_url("/echo")).await;
    assert_eq!(upgrade_status(server.addr, "/echo", "").await, 503);
    assert_eq!(upgrade_status(server.addr, "/chat", "").await, 503);
    // Pages are still served, and the open connections still work.
    assert_eq!(http(server.addr, "GET", "/", "").await.status, 200);
    echoes(&mut first, "one").await;
    echoes(&mut second, "two").await;
    server
        .wait_log(&["connection limit reached: 503"], Duration::from_secs(5))
        .await;
    // Once one leaves there is room again (its task may take a moment to end).
    within(5, first.close(1000, "")).await.unwrap();
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while upgrade_status(server.addr, "/echo", "").await != 101 {
        assert!(Instant::now() < deadline, "still 503 after a client left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn serve_refuses_upgrades_from_other_origins_with_403() {
    let server = Server::start(&[
        "serve",
        "--port",
        "0",
        "--origin",
        "http://good.example:9001",
    ]);
    let evil = "Origin: http://evil.example\r\n";
    assert_eq!(upgrade_status(server.addr, "/echo", evil).await, 403);
    assert_eq!(upgrade_status(server.addr, "/chat", evil).await, 403);
    assert_eq!(
        upgrade_status(server.addr, "/echo", "").await,
        403,
        "no Origin at all"
    );
    let good = "Origin: http://good.example:9001\r\n";
    assert_eq!(upgrade_status(server.addr, "/echo", good).await, 101);
    let (mut ws, _) = within(
        5,
        ClientBuilder::new(server.ws_url("/echo"))
            .header("Origin", "http://good.example:9001")
            .connect(),
    )
    .await
    .unwrap();
    echoes(&mut ws, "from a good origin").await;
    // Pages are for anyone.
    assert_eq!(http(server.addr, "GET", "/echo", evil).await.status, 200);
    server
        .wait_log(&["origin not allowed: 403"], Duration::from_secs(5))
        .await;
}

#[tokio::test]
async fn serve_tls_serves_wss_and_https_on_one_port() {
    let dir = TempDir::new("tls");
    let (cert, key) = self_signed(&dir);
    let server = Server::start(&[
        "serve",
        "--port",
        "0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let ca = std::fs::read(&cert).unwrap();
    let tls = ferrows::tls::client_config_with_ca(&ca).unwrap();
    let port = server.port();

    // wss:// on /echo and /chat.
    let url = format!("wss://localhost:{port}/echo");
    let (mut ws, _) = within(
        10,
        ClientBuilder::new(&url).tls_config(tls.clone()).connect(),
    )
    .await
    .unwrap();
    assert!(ws.get_ref().is_tls());
    echoes(&mut ws, "over TLS").await;
    let url = format!("wss://127.0.0.1:{port}/chat");
    let (mut chat, _) = within(
        10,
        ClientBuilder::new(&url).tls_config(tls.clone()).connect(),
    )
    .await
    .unwrap();
    let joined = next_data(&mut chat, 5).await;
    assert!(joined.as_text().unwrap().starts_with("msg:* client "));

    // https:// pages on the same port.
    let tcp = within(5, tokio::net::TcpStream::connect(server.addr))
        .await
        .unwrap();
    let name = ferrows::tls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = within(
        5,
        ferrows::tls::tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .unwrap();
    use tokio::io::AsyncWriteExt;
    within(
        5,
        stream.write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    // The server closes after the response (its close_notify may or may
    // not be sent before the TCP close; either ends the read).
    let _ = within(10, stream.read_to_end(&mut raw)).await;
    let page = support::parse_response(&raw);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>Echo console"));

    // Plain ws:// to the TLS port gets nowhere.
    let plain = within(10, ferrows::connect(&server.ws_url("/echo"))).await;
    assert!(plain.is_err());
    within(5, ws.close(1000, "")).await.unwrap();
    within(5, chat.close(1000, "")).await.unwrap();
}
