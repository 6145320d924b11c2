//! The event client (`ferrows::event_client`) against real servers made in
//! the tests: over loopback TCP, and over in-memory pipes on tokio's paused
//! clock for everything timed (backoff, inactivity, pong and send
//! timeouts), where virtual time makes the timings exact.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferrows::event_client::{
    Backoff, ErrorKind, Event, EventClient, EventClientBuilder, Events, SendError,
};
use ferrows::{CloseCode, Config, Fragment, Handshake, Message, OpCode, WebSocket};
use tokio::io::DuplexStream;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Bound on real-time waits (not used on the paused clock, where it would
/// fire as soon as the runtime is idle).
const TIMEOUT: Duration = Duration::from_secs(30);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {TIMEOUT:?}: {what}"),
    }
}

async fn next(events: &mut Events) -> Event {
    within("an event", events.recv())
        .await
        .expect("events ended")
}

fn builder(url: &str) -> EventClientBuilder {
    EventClient::builder(url)
        .reconnect(false)
        .ping_interval(None)
}

fn data(event: &Event) -> (OpCode, &[u8], u64, u64, bool) {
    match event {
        Event::Data {
            opcode,
            data,
            payload_len,
            payload_offset,
            fin,
            ..
        } => (*opcode, data, *payload_len, *payload_offset, *fin),
        other => panic!("expected data, got {other:?}"),
    }
}

fn error_kind(event: &Event) -> &ErrorKind {
    match event {
        Event::Error { kind, .. } => kind,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn closed(event: &Event) -> (u16, &str) {
    match event {
        Event::Closed { code, reason, .. } => (code.0, reason.as_str()),
        other => panic!("expected closed, got {other:?}"),
    }
}

/// Accepts one WebSocket connection on a fresh loopback listener and runs
/// `script` on it.
async fn one_shot_server<F, Fut>(script: F) -> (String, tokio::task::JoinHandle<()>)
where
    F: FnOnce(WebSocket<tokio::net::TcpStream>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/feed", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let ws = ferrows::accept(stream).await.unwrap();
        script(ws).await;
    });
    (url, task)
}

#[tokio::test]
async fn events_arrive_in_order_and_a_server_close_is_reported() {
    let (url, server) = one_shot_server(|mut ws| async move {
        ws.send("hello").await.unwrap();
        let got = ws.recv().await.unwrap().unwrap();
        assert_eq!(got, Message::text(r#"{"n":1}"#));
        ws.send(Message::binary(got.into_payload())).await.unwrap();
        ws.close(1001, "restarting").await.unwrap();
    })
    .await;
    let (client, mut events) = builder(&url).start().unwrap();
    match next(&mut events).await {
        Event::Connected { response } => assert_eq!(response.status(), 101),
        other => panic!("{other:?}"),
    }
    assert!(client.is_connected());
    let e = next(&mut events).await;
    assert_eq!(data(&e), (OpCode::Text, &b"hello"[..], 5, 0, true));
    client
        .send_text(r#"{"n":1}"#, Duration::from_secs(10))
        .await
        .unwrap();
    let e = next(&mut events).await;
    assert_eq!(data(&e), (OpCode::Binary, &br#"{"n":1}"#[..], 7, 0, true));
    let e = next(&mut events).await;
    assert_eq!(
        error_kind(&e),
        &ErrorKind::ServerClose {
            code: CloseCode::GOING_AWAY,
            reason: "restarting".into()
        }
    );
    let e = next(&mut events).await;
    assert_eq!(closed(&e), (1001, "restarting"));
    assert!(matches!(next(&mut events).await, Event::Finish));
    assert!(within("end of events", events.recv()).await.is_none());
    assert!(!client.is_connected());
    assert!(client.is_finished());
    assert_eq!(
        client.send_text("late", Duration::from_secs(1)).await,
        Err(SendError::Closed)
    );
    within("server", server).await.unwrap();
}

#[tokio::test]
async fn fragmented_messages_arrive_frame_by_frame_with_offsets() {
    let (url, server) = one_shot_server(|mut ws| async move {
        for (piece, fin) in [(&b"ab"[..], false), (b"cde", false), (b"f", true)] {
            ws.feed(Message::Fragment(Fragment {
                opcode: OpCode::Text,
                data: Bytes::from_static(piece),
                message_offset: 0,
                first: false,
                fin,
            }))
            .await
            .unwrap();
        }
        ws.feed(Message::binary(vec![7u8; 300])).await.unwrap();
        for (piece, fin) in [(vec![1u8; 1000], false), (vec![2u8; 24], true)] {
            ws.feed(Message::Fragment(Fragment {
                opcode: OpCode::Binary,
                data: Bytes::from(piece),
                message_offset: 0,
                first: false,
                fin,
            }))
            .await
            .unwrap();
        }
        ws.flush().await.unwrap();
        // Wait for the client's close.
        while let Some(Ok(_)) = ws.recv().await {}
    })
    .await;
    let (client, mut events) = builder(&url).start().unwrap();
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));
    let mut got = Vec::new();
    for _ in 0..6 {
        let e = next(&mut events).await;
        let (op, bytes, len, offset, fin) = data(&e);
        got.push((op, bytes.to_vec(), len, offset, fin));
    }
    assert_eq!(
        got,
        vec![
            (OpCode::Text, b"ab".to_vec(), 2, 0, false),
            (OpCode::Text, b"cde".to_vec(), 5, 2, false),
            (OpCode::Text, b"f".to_vec(), 6, 5, true),
            (OpCode::Binary, vec![7u8; 300], 300, 0, true),
            (OpCode::Binary, vec![1u8; 1000], 1000, 0, false),
            (OpCode::Binary, vec![2u8; 24], 1024, 1000, true),
        ]
    );
    within("close", client.close(1000, "done")).await;
    assert_eq!(closed(&next(&mut events).await), (1000, ""));
    assert!(matches!(next(&mut events).await, Event::Finish));
    within("server", server).await.unwrap();
}

#[tokio::test]
async fn a_refused_handshake_reports_the_http_status() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/private", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let hs = Handshake::read(stream, Config::default()).await.unwrap();
        assert_eq!(hs.request().header("authorization"), Some("Bearer nope"));
        hs.reject(403, "forbidden").await.unwrap();
    });
    let (_client, mut events) = builder(&url)
        .header("Authorization", "Bearer nope")
        .start()
        .unwrap();
    let e = next(&mut events).await;
    assert_eq!(error_kind(&e), &ErrorKind::Handshake { status: Some(403) });
    assert!(matches!(next(&mut events).await, Event::Finish));
    within("server", server).await.unwrap();
}

#[tokio::test]
async fn headers_and_subprotocols_are_offered() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/telemetry", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = ferrows::accept_with(stream, Config::default(), |req| {
            assert_eq!(req.path(), "/telemetry");
            assert_eq!(req.header("x-device"), Some("esp32-7"));
            assert_eq!(req.subprotocols().collect::<Vec<_>>(), ["v2.lab", "v1.lab"]);
            Ok(ferrows::Accept::new().protocol("v1.lab"))
        })
        .await
        .unwrap();
        while let Some(Ok(_)) = ws.recv().await {}
    });
    let (client, mut events) = builder(&url)
        .header("X-Device", "esp32-7")
        .protocol("v2.lab")
        .protocol("v1.lab")
        .start()
        .unwrap();
    match next(&mut events).await {
        Event::Connected { response } => {
            assert_eq!(response.header("sec-websocket-protocol"), Some("v1.lab"));
        }
        other => panic!("{other:?}"),
    }
    within("close", client.close(1000, "")).await;
    within("server", server).await.unwrap();
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    drop(listener);
    let (client, mut events) = builder(&url).start().unwrap();
    let e = next(&mut events).await;
    assert_eq!(error_kind(&e), &ErrorKind::Transport);
    assert!(matches!(next(&mut events).await, Event::Finish));
    assert!(!client.is_connected());
}

#[tokio::test]
async fn a_dropped_connection_is_disconnected_not_closed() {
    let (url, server) = one_shot_server(|ws| async move {
        drop(ws);
    })
    .await;
    let (_client, mut events) = builder(&url).start().unwrap();
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));
    let e = next(&mut events).await;
    assert_eq!(error_kind(&e), &ErrorKind::Transport);
    assert!(matches!(next(&mut events).await, Event::Disconnected));
    assert!(matches!(next(&mut events).await, Event::Finish));
    within("server", server).await.unwrap();
}

#[tokio::test]
async fn reconnects_over_tcp_after_the_server_drops_the_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        // The first connection is dropped at once; the second one stays.
        let (stream, _) = listener.accept().await.unwrap();
        drop(ferrows::accept(stream).await.unwrap());
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = ferrows::accept(stream).await.unwrap();
        ws.send("second").await.unwrap();
        while let Some(Ok(_)) = ws.recv().await {}
    });
    let delay = Duration::from_millis(100);
    let (client, mut events) = builder(&url)
        .reconnect(true)
        .backoff(Backoff::new(delay, delay * 4, 2.0).jitter(0.0))
        .start()
        .unwrap();
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));
    assert_eq!(error_kind(&next(&mut events).await), &ErrorKind::Transport);
    assert!(matches!(next(&mut events).await, Event::Disconnected));
    let lost = Instant::now();
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));
    // Timers never fire early: the backoff delay has passed.
    assert!(lost.elapsed() >= delay);
    assert_eq!(data(&next(&mut events).await).1, b"second");
    within("close", client.close(1000, "")).await;
    assert_eq!(closed(&next(&mut events).await), (1000, ""));
    assert!(matches!(next(&mut events).await, Event::Finish));
    within("server", server).await.unwrap();
}

#[tokio::test]
async fn dropping_the_events_stops_the_client_with_1001() {
    let (tx, rx) = oneshot::channel();
    let (url, server) = one_shot_server(|mut ws| async move {
        ws.send("hi").await.unwrap();
        let mut close = None;
        while let Some(Ok(msg)) = ws.recv().await {
            if let Message::Close(f) = msg {
                close = f;
            }
        }
        tx.send(close.map(|f| f.code.0)).unwrap();
    })
    .await;
    let (client, mut events) = builder(&url).start().unwrap();
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));
    drop(events);
    assert_eq!(
        within("server sees the close", rx).await.unwrap(),
        Some(1001)
    );
    within("finish", client.wait_finished()).await;
    within("server", server).await.unwrap();
}

// ---- On tokio's paused clock, over in-memory pipes. ----

/// Connections handed from the client's connector to the test's server.
struct Pipes {
    accepted: mpsc::UnboundedReceiver<DuplexStream>,
    attempts: Arc<AtomicUsize>,
}

/// A client connecting over in-memory pipes of `buffer` bytes. `refuse`
/// says, attempt by attempt, whether to refuse the connection (attempts
/// past its end succeed).
fn start_piped(
    builder: EventClientBuilder,
    buffer: usize,
    refuse: Vec<bool>,
) -> (EventClient, Events, Pipes) {
    let (tx, accepted) = mpsc::unbounded_channel();
    let attempts = Arc::new(AtomicUsize::new(0));
    let count = attempts.clone();
    let plan = Arc::new(Mutex::new(VecDeque::from(refuse)));
    let (client, events) = builder
        .start_with(move |url| {
            assert_eq!(url.target, "/");
            count.fetch_add(1, Ordering::SeqCst);
            let refused = plan.lock().unwrap().pop_front().unwrap_or(false);
            let tx = tx.clone();
            async move {
                if refused {
                    return Err(io::ErrorKind::ConnectionRefused.into());
                }
                let (client_end, server_end) = tokio::io::duplex(buffer);
                tx.send(server_end).unwrap();
                Ok(client_end)
            }
        })
        .unwrap();
    (client, events, Pipes { accepted, attempts })
}

impl Pipes {
    async fn accept(&mut self, config: Config) -> WebSocket<DuplexStream> {
        let io = self.accepted.recv().await.unwrap();
        ferrows::accept_with(io, config, |_| Ok(ferrows::Accept::new()))
            .await
            .unwrap()
    }
}

/// The next event and the virtual time since `start`.
async fn timed(events: &mut Events, start: Instant) -> (Event, Duration) {
    let e = events.recv().await.expect("events ended");
    (e, start.elapsed())
}

fn assert_at(at: Duration, expected_secs: f64) {
    let expected = Duration::from_secs_f64(expected_secs);
    let diff = at.abs_diff(expected);
    assert!(
        diff <= Duration::from_millis(5),
        "at {at:?}, expected {expected:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn reconnects_with_exponential_backoff() {
    let start = Instant::now();
    // Attempt 1 connects, 2-4 are refused, 5 connects.
    let (client, mut events, mut pipes) = start_piped(
        builder("ws://device.local/")
            .reconnect(true)
            .backoff(Backoff::new(Duration::from_secs(1), Duration::from_secs(4), 2.0).jitter(0.0)),
        64 * 1024,
        vec![false, true, true, true],
    );
    let server = tokio::spawn(async move {
        // The first connection is dropped without a close frame.
        drop(pipes.accept(Config::default()).await);
        let mut ws = pipes.accept(Config::default()).await;
        while let Some(Ok(_)) = ws.recv().await {}
        pipes
    });
    let (e, at) = timed(&mut events, start).await;
    assert!(matches!(e, Event::Connected { .. }));
    assert_at(at, 0.0);
    let (e, _) = timed(&mut events, start).await;
    assert_eq!(error_kind(&e), &ErrorKind::Transport);
    let (e, at) = timed(&mut events, start).await;
    assert!(matches!(e, Event::Disconnected));
    assert_at(at, 0.0);
    // 1 s, then 2 s, then 4 s, then 4 s (the maximum).
    for expected in [1.0, 3.0, 7.0] {
        let (e, at) = timed(&mut events, start).await;
        assert_eq!(error_kind(&e), &ErrorKind::Transport, "{e:?}");
        assert_at(at, expected);
    }
    let (e, at) = timed(&mut events, start).await;
    assert!(matches!(e, Event::Connected { .. }), "{e:?}");
    assert_at(at, 11.0);
    assert!(client.is_connected());
    // A local close ends it for good, reconnection or not.
    client.close(1000, "bye").await;
    assert_eq!(closed(&timed(&mut events, start).await.0), (1000, ""));
    assert!(matches!(timed(&mut events, start).await.0, Event::Finish));
    let pipes = server.await.unwrap();
    assert_eq!(pipes.attempts.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn a_server_close_is_followed_by_a_reconnection() {
    let start = Instant::now();
    let (client, mut events, mut pipes) = start_piped(
        builder("ws://device.local/")
            .reconnect(true)
            .backoff(Backoff::new(Duration::from_secs(2), Duration::from_secs(8), 2.0).jitter(0.0)),
        64 * 1024,
        vec![],
    );
    let server = tokio::spawn(async move {
        let mut ws = pipes.accept(Config::default()).await;
        ws.close(1012, "service restart").await.unwrap();
        let mut ws = pipes.accept(Config::default()).await;
        ws.send("back").await.unwrap();
        while let Some(Ok(_)) = ws.recv().await {}
        pipes.attempts.load(Ordering::SeqCst)
    });
    assert!(matches!(
        timed(&mut events, start).await.0,
        Event::Connected { .. }
    ));
    let (e, _) = timed(&mut events, start).await;
    assert_eq!(
        error_kind(&e),
        &ErrorKind::ServerClose {
            code: CloseCode::SERVICE_RESTART,
            reason: "service restart".into()
        }
    );
    let (e, at) = timed(&mut events, start).await;
    assert_eq!(closed(&e), (1012, "service restart"));
    assert!(!client.is_connected());
    let (e, reconnected_at) = timed(&mut events, start).await;
    assert!(matches!(e, Event::Connected { .. }), "{e:?}");
    assert_at(reconnected_at - at, 2.0);
    assert_eq!(data(&timed(&mut events, start).await.0).1, b"back");
    client.close(1000, "").await;
    assert_eq!(closed(&timed(&mut events, start).await.0), (1000, ""));
    assert!(matches!(timed(&mut events, start).await.0, Event::Finish));
    assert_eq!(server.await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_backoff_starts_over_after_a_successful_connection() {
    let start = Instant::now();
    let (client, mut events, mut pipes) = start_piped(
        builder("ws://device.local/").reconnect(true).backoff(
            Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 3.0).jitter(0.0),
        ),
        64 * 1024,
        // 1 connects; 2 refused; 3 connects; 4 refused; 5 connects.
        vec![false, true, false, true],
    );
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            drop(pipes.accept(Config::default()).await);
        }
        let mut ws = pipes.accept(Config::default()).await;
        while let Some(Ok(_)) = ws.recv().await {}
    });
    let mut connected_at = Vec::new();
    while connected_at.len() < 3 {
        let (e, at) = timed(&mut events, start).await;
        if matches!(e, Event::Connected { .. }) {
            connected_at.push(at);
        }
    }
    // Each loss: 1 s, refused, 3 s. Not 1, 3, 9, 27.
    assert_at(connected_at[0], 0.0);
    assert_at(connected_at[1], 4.0);
    assert_at(connected_at[2], 8.0);
    client.stop().await;
    server.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_inactivity_timeout_closes_after_a_quiet_period() {
    let start = Instant::now();
    let (client, mut events, mut pipes) = start_piped(
        builder("ws://device.local/")
            // On: inactivity must still end it for good.
            .reconnect(true)
            .inactivity_timeout(Some(Duration::from_secs(5)))
            // Pings and pongs do not count as activity.
            .ping_interval(Some(Duration::from_secs(1))),
        64 * 1024,
        vec![],
    );
    let server = tokio::spawn(async move {
        let ws = pipes.accept(Config::default()).await;
        let (mut rx, mut tx) = ws.split();
        let writer = async move {
            tx.send("a").await.unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
            tx.send("b").await.unwrap();
        };
        let reader = async move {
            let mut seen = Vec::new();
            while let Some(Ok(msg)) = rx.recv().await {
                seen.push(msg);
            }
            seen
        };
        let ((), seen) = tokio::join!(writer, reader);
        (seen, pipes.attempts.load(Ordering::SeqCst))
    });
    let mut pongs = 0;
    let mut texts = Vec::new();
    let closed_at = loop {
        let (e, at) = timed(&mut events, start).await;
        match &e {
            Event::Connected { .. } => assert_at(at, 0.0),
            Event::Data {
                opcode: OpCode::Pong,
                ..
            } => pongs += 1,
            Event::Data {
                opcode: OpCode::Text,
                data,
                ..
            } => texts.push((data.clone(), at)),
            Event::Closed { .. } => {
                assert_eq!(closed(&e), (1000, ""));
                break at;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(texts.len(), 2);
    assert_at(texts[1].1, 3.0);
    // Quiet for 5 s after the last message, pongs notwithstanding.
    assert_at(closed_at, 8.0);
    assert!(pongs >= 5, "{pongs} pongs");
    assert!(matches!(timed(&mut events, start).await.0, Event::Finish));
    assert!(client.is_finished());
    let (seen, attempts) = server.await.unwrap();
    assert_eq!(attempts, 1, "no reconnection after an inactivity shutdown");
    let close = seen.iter().find(|m| m.is_close()).unwrap();
    assert_eq!(close, &Message::close(1000, "inactivity timeout"));
    assert!(
        seen.iter()
            .filter(|m| matches!(m, Message::Ping(_)))
            .count()
            >= 5
    );
}

#[tokio::test(start_paused = true)]
async fn sending_counts_as_activity() {
    let start = Instant::now();
    let (client, mut events, mut pipes) = start_piped(
        builder("ws://device.local/").inactivity_timeout(Some(Duration::from_secs(5))),
        64 * 1024,
        vec![],
    );
    let server = tokio::spawn(async move {
        let mut ws = pipes.accept(Config::default()).await;
        while let Some(Ok(_)) = ws.recv().await {}
    });
    assert!(matches!(
        timed(&mut events, start).await.0,
        Event::Connected { .. }
    ));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        client
            .send_text("tick", Duration::from_secs(1))
            .await
            .unwrap();
    }
    let (e, at) = timed(&mut events, start).await;
    assert_eq!(closed(&e), (1000, ""));
    assert_at(at, 17.0);
    server.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn no_pong_in_time_drops_the_connection() {
    let start = Instant::now();
    let (_client, mut events, mut pipes) = start_piped(
        builder("ws://device.local/")
            .ping_interval(Some(Duration::from_secs(1)))
            .pingpong_timeout(Some(Duration::from_secs(3))),
        64 * 1024,
        vec![],
    );
    let server = tokio::spawn(async move {
        // A server that reads but never answers pings.
        let mut ws = pipes.accept(Config::default().auto_pong(false)).await;
        let mut pings = 0;
        while let Some(Ok(msg)) = ws.recv().await {
            if matches!(msg, Message::Ping(_)) {
                pings += 1;
            }
        }
        pings
    });
    assert!(matches!(
        timed(&mut events, start).await.0,
        Event::Connected { .. }
    ));
    let (e, at) = timed(&mut events, start).await;
    assert_eq!(error_kind(&e), &ErrorKind::PongTimeout);
    // First ping at 1 s, unanswered 3 s later (pings at 1, 2 and 3 s).
    assert_at(at, 4.0);
    assert!(matches!(
        timed(&mut events, start).await.0,
        Event::Disconnected
    ));
    assert!(matches!(timed(&mut events, start).await.0, Event::Finish));
    assert_eq!(server.await.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn pongs_keep_the_connection_alive() {
    let start = Instant::now();
    let (client, mut events, mut pipes) = start_piped(
        builder("ws://device.local/")
            .ping_interval(Some(Duration::from_secs(1)))
            .pingpong_timeout(Some(Duration::from_millis(1500))),
        64 * 1024,
        vec![],
    );
    let server = tokio::spawn(async move {
        let mut ws = pipes.accept(Config::default()).await;
        while let Some(Ok(_)) = ws.recv().await {}
    });
    assert!(matches!(
        timed(&mut events, start).await.0,
        Event::Connected { .. }
    ));
    for i in 1..=30u32 {
        let (e, at) = timed(&mut events, start).await;
        assert_eq!(data(&e).0, OpCode::Pong);
        assert_at(at, f64::from(i));
    }
    client.close(1000, "").await;
    assert_eq!(closed(&timed(&mut events, start).await.0), (1000, ""));
    server.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_slow_event_consumer_does_not_cause_a_pong_timeout() {
    let (client, mut events, mut pipes) = start_piped(
        builder("ws://device.local/")
            .event_capacity(1)
            .ping_interval(Some(Duration::from_secs(1)))
            .pingpong_timeout(Some(Duration::from_secs(2)))
            .inactivity_timeout(Some(Duration::from_secs(3))),
        64 * 1024,
        vec![],
    );
    let server = tokio::spawn(async move {
        let mut ws = pipes.accept(Config::default()).await;
        for i in 0..10 {
            ws.feed(format!("m{i}")).await.unwrap();
        }
        ws.flush().await.unwrap();
        while let Some(Ok(_)) = ws.recv().await {}
    });
    // Not reading events for a while: the client stops reading its
    // socket, where the pongs wait behind the data.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(client.is_connected());
    assert!(matches!(
        events.recv().await.unwrap(),
        Event::Connected { .. }
    ));
    let mut texts = Vec::new();
    while texts.len() < 10 {
        match events.recv().await.unwrap() {
            Event::Data {
                opcode: OpCode::Text,
                data,
                ..
            } => texts.push(data),
            Event::Data {
                opcode: OpCode::Pong,
                ..
            } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(texts[9], Bytes::from("m9"));
    client.close(1000, "").await;
    server.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn sends_time_out_when_the_server_does_not_read() {
    let start = Instant::now();
    let (client, mut events, mut pipes) = start_piped(
        builder("ws://device.local/"),
        // A 1 KiB pipe: a server that does not read blocks writes at once.
        1024,
        vec![],
    );
    assert_eq!(
        client.send_text("too early", Duration::from_secs(1)).await,
        Err(SendError::NotConnected)
    );
    let (go, read) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut ws = pipes.accept(Config::default()).await;
        read.await.unwrap();
        let mut got = Vec::new();
        while let Some(Ok(msg)) = ws.recv().await {
            got.push(msg);
        }
        got
    });
    assert!(matches!(
        timed(&mut events, start).await.0,
        Event::Connected { .. }
    ));
    // Messages the protocol forbids are refused at once.
    let oversized_ping = client.send(Message::ping(vec![0u8; 200]), Duration::from_secs(1));
    assert!(matches!(oversized_ping.await, Err(SendError::Invalid(_))));
    let close = client.send(Message::close(1000, ""), Duration::from_secs(1));
    assert!(matches!(close.await, Err(SendError::Invalid(_))));
    let t0 = start.elapsed();
    // Taken by the connection but not written in time.
    let big = vec![5u8; 256 * 1024];
    assert_eq!(
        client.send_bin(&big, Duration::from_secs(2)).await,
        Err(SendError::Timeout)
    );
    assert_at(start.elapsed() - t0, 2.0);
    // Not even taken: the write buffer is over its high-water mark.
    assert_eq!(
        client.send_text("dropped", Duration::from_secs(1)).await,
        Err(SendError::Timeout)
    );
    assert_at(start.elapsed() - t0, 3.0);
    // The server reads at last: the big message arrives whole (a frame is
    // never cut), the one that was never taken does not.
    go.send(()).unwrap();
    client
        .send_text("after", Duration::from_secs(5))
        .await
        .unwrap();
    client.close(1000, "").await;
    let got = server.await.unwrap();
    assert_eq!(got[0], Message::binary(big));
    assert_eq!(got[1], Message::text("after"));
    assert!(got[2].is_close());
    assert_eq!(got.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn stop_drops_the_connection_without_a_close_frame() {
    let (client, mut events, mut pipes) = start_piped(
        builder("ws://device.local/").reconnect(true),
        64 * 1024,
        vec![],
    );
    let server = tokio::spawn(async move {
        let mut ws = pipes.accept(Config::default()).await;
        let end = loop {
            match ws.recv().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(e),
                None => break None,
            }
        };
        (end, pipes.attempts.load(Ordering::SeqCst))
    });
    assert!(matches!(
        events.recv().await.unwrap(),
        Event::Connected { .. }
    ));
    client.stop().await;
    assert!(client.is_finished());
    assert!(matches!(events.recv().await.unwrap(), Event::Disconnected));
    assert!(matches!(events.recv().await.unwrap(), Event::Finish));
    let (end, attempts) = server.await.unwrap();
    assert!(
        matches!(end, Some(ferrows::Error::AbnormalClosure)),
        "{end:?}"
    );
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn invalid_settings_are_refused_at_start() {
    assert!(matches!(
        EventClient::builder("ftp://x/").start(),
        Err(ferrows::Error::Url(_))
    ));
    assert!(matches!(
        EventClient::builder("ws://x/")
            .backoff(Backoff::new(Duration::ZERO, Duration::from_secs(1), 2.0))
            .start(),
        Err(ferrows::Error::Config(_))
    ));
    assert!(matches!(
        EventClient::builder("ws://x/")
            .backoff(Backoff::new(
                Duration::from_secs(2),
                Duration::from_secs(1),
                2.0
            ))
            .start(),
        Err(ferrows::Error::Config(_))
    ));
    assert!(matches!(
        EventClient::builder("ws://x/")
            .inactivity_timeout(Some(Duration::ZERO))
            .start(),
        Err(ferrows::Error::Config(_))
    ));
}

#[test]
fn backoff_grows_to_its_maximum_and_jitter_only_shortens() {
    let b = Backoff::new(Duration::from_millis(500), Duration::from_secs(10), 3.0).jitter(0.5);
    let bases: Vec<u128> = (0..6).map(|n| b.base_delay(n).as_millis()).collect();
    assert_eq!(bases, vec![500, 1500, 4500, 10_000, 10_000, 10_000]);
    assert_eq!(b.base_delay(u32::MAX), Duration::from_secs(10));
    let mut distinct = std::collections::HashSet::new();
    for n in 0..200 {
        let base = b.base_delay(n % 4);
        let d = b.delay(n % 4);
        assert!(d <= base && d >= base / 2, "{d:?} for {base:?}");
        distinct.insert(d);
    }
    assert!(distinct.len() > 20, "jitter is not random");
    let exact = b.jitter(0.0);
    assert_eq!(exact.delay(2), exact.base_delay(2));
}

#[test]
fn starting_outside_a_runtime_is_an_error() {
    assert!(matches!(
        EventClient::builder("ws://127.0.0.1:1/").start(),
        Err(ferrows::Error::Config(_))
    ));
}
