//! `ferrows serve gamepad`, run as the built binary with `--output jsonl`
//! (stdout, a file, a FIFO) and driven by ferrows clients in both wire
//! formats: driving, the dead-man stop and its timing, viewers, the
//! token, release, the lease, sequence ordering, hostile input, the page,
//! the GPIO error path and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrows::{MaybeTlsStream, Message, WebSocket};
use serde_json::{Value, json};
use tokio::net::TcpStream;

type Client = WebSocket<MaybeTlsStream<TcpStream>>;

/// How long a server may take to start (a loaded machine, a debug build).
const START: Duration = Duration::from_secs(30);

/// Bound of every wait for something that must happen.
const WAIT: Duration = Duration::from_secs(10);

/// Lines of a stream, each with the time the test read it.
type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

fn collect(stream: impl std::io::Read + Send + 'static) -> Lines {
    let lines: Lines = Arc::default();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push((Instant::now(), line));
        }
    });
    lines
}

/// A running `ferrows serve gamepad`; killed when dropped.
struct Server {
    child: Child,
    stdout: Lines,
    stderr: Lines,
    addr: SocketAddr,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut args = vec!["serve", "gamepad", "--bind", "127.0.0.1", "--port", "0"];
        args.extend_from_slice(extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrows"))
            .args(&args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env_remove("FERROWS_GAMEPAD_TOKEN")
            .env_remove("FERROWS_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ferrows");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let deadline = Instant::now() + START;
        loop {
            let found = stderr.lock().unwrap().iter().find_map(|(_, l)| {
                l.split_once("listening on ")
                    .map(|(_, a)| a.trim().to_owned())
            });
            if let Some(addr) = found {
                return Server {
                    child,
                    stdout,
                    stderr,
                    addr: addr.parse().unwrap(),
                };
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("ferrows {args:?} exited ({status}):\n{}", text(&stderr));
            }
            assert!(
                Instant::now() < deadline,
                "no `listening on` within {START:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// The jsonl lines so far, parsed.
    fn lines(&self) -> Vec<(Instant, Value)> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .map(|(t, l)| {
                let v = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l:?}"));
                (*t, v)
            })
            .collect()
    }

    /// Waits (bounded) for the jsonl line number `index` (0-based).
    async fn line(&self, index: usize) -> (Instant, Value) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self.lines().into_iter().nth(index) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no jsonl line #{index} within {WAIT:?}; lines: {:?}\nlog:\n{}",
                self.lines()
                    .iter()
                    .map(|(_, v)| v.to_string())
                    .collect::<Vec<_>>(),
                text(&self.stderr)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn log(&self) -> String {
        text(&self.stderr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(lines: &Lines) -> String {
    lines
        .lock()
        .unwrap()
        .iter()
        .map(|(_, l)| l.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

async fn within<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?}"))
}

async fn connect(url: &str) -> Client {
    within(ferrows::connect(url)).await.unwrap().0
}

/// The next JSON message of `kind` (others skipped).
async fn next_of(ws: &mut Client, kind: &str) -> Value {
    within(async {
        loop {
            match ws.recv().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == kind {
                        return v;
                    }
                }
                Some(Ok(Message::Close(f))) => panic!("closed while waiting for {kind}: {f:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("connection failed while waiting for {kind}: {e}"),
                None => panic!("connection ended while waiting for {kind}"),
            }
        }
    })
    .await
}

/// The close code the server ends the connection with (others skipped).
async fn close_code(ws: &mut Client) -> u16 {
    within(async {
        loop {
            match ws.recv().await {
                Some(Ok(Message::Close(f))) => return f.map_or(1005, |f| f.code.0),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    })
    .await
}

async fn send(ws: &mut Client, text: &str) {
    within(ws.send(text.to_owned())).await.unwrap();
}

/// A JSON pad message; `buttons` are the values of buttons 0, 1, …
fn pad(seq: u64, x: f64, y: f64, buttons: &[u8]) -> String {
    json!({"type": "pad", "seq": seq, "axes": [x, y, 0.0, 0.0], "buttons": buttons}).to_string()
}

/// Asserts a line's outputs (buttons: the indexes that are on).
fn assert_outputs(line: &Value, left: f64, right: f64, on: &[usize], reason: &str) {
    assert_eq!(line["reason"], reason, "{line}");
    assert!(
        (line["left"].as_f64().unwrap() - left).abs() < 1e-9,
        "{line}"
    );
    assert!(
        (line["right"].as_f64().unwrap() - right).abs() < 1e-9,
        "{line}"
    );
    let buttons = line["buttons"].as_array().unwrap();
    for (i, b) in buttons.iter().enumerate() {
        assert_eq!(b.as_bool().unwrap(), on.contains(&i), "button {i}: {line}");
    }
    assert!(line["t_ms"].as_u64().is_some(), "{line}");
}

fn t_ms(line: &Value) -> u64 {
    line["t_ms"].as_u64().unwrap()
}

/// Makes sure the controller has handled everything `ws` sent before:
/// a release from a viewer is answered by the controller, in order.
async fn sync(ws: &mut Client) {
    send(ws, r#"{"type":"release"}"#).await;
    loop {
        let v = next_of(ws, "error").await;
        if v["code"] == "not_driving" {
            return;
        }
    }
}

// ------------------------------------------------------------ driving

#[tokio::test]
async fn drives_with_both_formats_and_the_deadman_stops_within_its_deadline() {
    let server = Server::start(&["--output", "jsonl", "--buttons", "4"]);
    let mut a = connect(&server.url("/")).await;
    let hello = next_of(&mut a, "hello").await;
    assert_eq!(hello["role"], "viewer");
    assert_eq!(hello["deadman_ms"], 500);
    assert_eq!(hello["token_required"], false);

    // The legacy page's format, unchanged: button 0, axes 0 and 1.
    send(&mut a, "1 0.12 -0.50<br/>").await;
    let role = next_of(&mut a, "role").await;
    assert_eq!(role["role"], "driver");
    assert_eq!(role["driver"], hello["id"]);
    let (_, first) = server.line(0).await;
    // Dead zone 0.1: turn (0.12-0.1)/0.9, throttle (0.5-0.1)/0.9.
    assert_outputs(&first, 0.467, 0.422, &[0], "command");

    // JSON: full stick up, button 1.
    send(&mut a, &pad(1, 0.0, -1.0, &[0, 1, 0, 0])).await;
    let (_, second) = server.line(1).await;
    assert_outputs(&second, 1.0, 1.0, &[1], "command");

    // Keep-alives every 100 ms for a second: no new line, no stop.
    let mut seq = 1;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seq += 1;
        send(&mut a, &pad(seq, 0.0, -1.0, &[0, 1, 0, 0])).await;
    }
    assert_eq!(server.lines().len(), 2, "{:?}", server.lines());

    // A last change, then silence: the dead-man stops it 500 ms later.
    seq += 1;
    send(&mut a, &pad(seq, 1.0, 0.0, &[])).await;
    let last_sent = Instant::now();
    let (_, turn) = server.line(2).await;
    assert_outputs(&turn, 1.0, -1.0, &[], "command");
    let (seen, stop) = server.line(3).await;
    assert_outputs(&stop, 0.0, 0.0, &[], "deadman");
    let server_side = t_ms(&stop) - t_ms(&turn);
    assert!(
        (500..=600).contains(&server_side),
        "the dead-man fired {server_side} ms after the last command (deadline 500 ms)"
    );
    // Seen by the test (a separate process, loaded machine) close to that.
    let client_side = seen.duration_since(last_sent);
    assert!(
        client_side < Duration::from_millis(900),
        "stop line read {client_side:?} after the last command"
    );
    // The client is told why.
    let why = next_of(&mut a, "stop").await;
    assert_eq!(why["reason"], "deadman");
    assert!(
        why["text"]
            .as_str()
            .unwrap()
            .starts_with("STOPPED: link lost"),
        "{why}"
    );
    // Still the driver: driving resumes with the next command.
    seq += 1;
    send(&mut a, &pad(seq, 0.0, 1.0, &[])).await;
    let (_, back) = server.line(4).await;
    assert_outputs(&back, -1.0, -1.0, &[], "command");
}

#[tokio::test]
async fn a_second_client_is_a_viewer_and_cannot_drive_until_the_driver_leaves() {
    let server = Server::start(&["--output", "jsonl", "--buttons", "2"]);
    let mut a = connect(&server.url("/")).await;
    let mut b = connect(&server.url("/")).await;
    let a_id = next_of(&mut a, "hello").await["id"].clone();
    let b_id = next_of(&mut b, "hello").await["id"].clone();
    send(&mut a, &pad(1, 0.0, -1.0, &[1])).await;
    assert_eq!(next_of(&mut a, "role").await["role"], "driver");
    server.line(0).await;

    // The viewer's commands change nothing, and it is told why.
    send(&mut b, &pad(1, 1.0, 0.0, &[0, 1])).await;
    send(&mut b, "0 -1.0 0.0<br/>").await;
    let refused = next_of(&mut b, "error").await;
    assert_eq!(refused["code"], "not_driver");
    assert!(
        refused["text"]
            .as_str()
            .unwrap()
            .contains("another driver has control"),
        "{refused}"
    );
    sync(&mut b).await;
    // Telemetry tells everyone who drives.
    let t = next_of(&mut b, "telemetry").await;
    assert_eq!(t["driver"], a_id);
    assert_eq!(t["left"], 1.0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.lines().len(), 1, "a viewer moved the robot");

    // The driver disconnects: stopped at once, everyone told.
    let before = Instant::now();
    within(a.close(1000, "bye")).await.unwrap();
    let (seen, stop) = server.line(1).await;
    assert_outputs(&stop, 0.0, 0.0, &[], "disconnect");
    assert!(
        seen.duration_since(before) < Duration::from_millis(500),
        "the disconnect stop took {:?}",
        seen.duration_since(before)
    );
    let why = next_of(&mut b, "stop").await;
    assert_eq!(why["reason"], "disconnect");
    // Now the viewer may drive.
    send(&mut b, &pad(2, 0.0, -1.0, &[])).await;
    let role = next_of(&mut b, "role").await;
    assert_eq!(role["role"], "driver");
    assert_eq!(role["driver"], b_id);
    let (_, line) = server.line(2).await;
    assert_outputs(&line, 1.0, 1.0, &[], "command");
}

#[tokio::test]
async fn release_hands_control_over() {
    let server = Server::start(&["--output", "jsonl", "--buttons", "2"]);
    let mut a = connect(&server.url("/")).await;
    let mut b = connect(&server.url("/")).await;
    next_of(&mut a, "hello").await;
    next_of(&mut b, "hello").await;
    send(&mut a, &pad(1, 0.0, -0.55, &[])).await;
    let (_, line) = server.line(0).await;
    assert_outputs(&line, 0.5, 0.5, &[], "command");
    send(&mut a, r#"{"type":"release"}"#).await;
    let (_, line) = server.line(1).await;
    assert_outputs(&line, 0.0, 0.0, &[], "release");
    let role = loop {
        let r = next_of(&mut a, "role").await;
        if r["why"] == "released" {
            break r;
        }
    };
    assert_eq!(role["role"], "viewer");
    assert_eq!(next_of(&mut b, "stop").await["reason"], "release");
    send(&mut b, &pad(1, -1.0, 0.0, &[])).await;
    assert_eq!(next_of(&mut b, "role").await["role"], "driver");
    let (_, line) = server.line(2).await;
    assert_outputs(&line, -1.0, 1.0, &[], "command");
}

#[tokio::test]
async fn the_lease_expires_after_the_timeout() {
    let server = Server::start(&[
        "--output",
        "jsonl",
        "--buttons",
        "1",
        "--deadman",
        "200",
        "--lease-timeout",
        "400",
    ]);
    let mut a = connect(&server.url("/")).await;
    let mut b = connect(&server.url("/")).await;
    next_of(&mut a, "hello").await;
    next_of(&mut b, "hello").await;
    send(&mut a, &pad(1, 0.0, -1.0, &[1])).await;
    let (_, cmd) = server.line(0).await;
    let (_, stop) = server.line(1).await;
    assert_outputs(&stop, 0.0, 0.0, &[], "deadman");
    assert!((200..=300).contains(&(t_ms(&stop) - t_ms(&cmd))));
    // Then the lease: a's role changes, and b may drive.
    let role = loop {
        let r = next_of(&mut a, "role").await;
        if r["why"] == "lease_expired" {
            break r;
        }
    };
    assert_eq!(role["role"], "viewer");
    send(&mut b, &pad(1, 0.0, -1.0, &[])).await;
    assert_eq!(next_of(&mut b, "role").await["role"], "driver");
    // a is a viewer now.
    send(&mut a, &pad(2, 0.0, 1.0, &[])).await;
    assert_eq!(next_of(&mut a, "error").await["code"], "not_driver");
}

// ------------------------------------------------------------ token

#[tokio::test]
async fn the_token_is_needed_to_drive() {
    let server = Server::start(&["--output", "jsonl", "--drive-token", "s3cret ü"]);
    // Without it: a viewer, told why.
    let mut anon = connect(&server.url("/")).await;
    let hello = next_of(&mut anon, "hello").await;
    assert_eq!(hello["token_required"], true);
    send(&mut anon, &pad(1, 0.0, -1.0, &[])).await;
    assert_eq!(next_of(&mut anon, "error").await["code"], "token_required");
    send(&mut anon, r#"{"type":"auth","token":"guess"}"#).await;
    assert_eq!(next_of(&mut anon, "error").await["code"], "bad_token");
    sync(&mut anon).await;
    assert!(server.lines().is_empty());

    // In the URL (percent-encoded).
    let mut a = connect(&server.url("/?token=s3cret%20%C3%BC")).await;
    next_of(&mut a, "hello").await;
    send(&mut a, &pad(1, 0.0, -1.0, &[])).await;
    assert_eq!(next_of(&mut a, "role").await["role"], "driver");
    let (_, line) = server.line(0).await;
    assert_outputs(&line, 1.0, 1.0, &[], "command");
    send(&mut a, r#"{"type":"release"}"#).await;
    server.line(1).await;

    // As a first auth message.
    let mut b = connect(&server.url("/")).await;
    next_of(&mut b, "hello").await;
    send(&mut b, r#"{"type":"auth","token":"s3cret ü"}"#).await;
    assert_eq!(next_of(&mut b, "role").await["why"], "authorized");
    send(&mut b, &pad(1, 1.0, 0.0, &[])).await;
    assert_eq!(next_of(&mut b, "role").await["role"], "driver");
    let (_, line) = server.line(2).await;
    assert_outputs(&line, 1.0, -1.0, &[], "command");

    // Guessing is cut off with 1008.
    let mut guesser = connect(&server.url("/?token=a")).await;
    send(&mut guesser, r#"{"type":"auth","token":"b"}"#).await;
    send(&mut guesser, r#"{"type":"auth","token":"c"}"#).await;
    assert_eq!(close_code(&mut guesser).await, 1008);
}

// ------------------------------------------------------------ input

#[tokio::test]
async fn old_and_repeated_seqs_are_ignored() {
    let server = Server::start(&["--output", "jsonl", "--buttons", "2"]);
    let mut a = connect(&server.url("/")).await;
    next_of(&mut a, "hello").await;
    send(&mut a, &pad(10, 0.0, -1.0, &[])).await;
    server.line(0).await;
    send(&mut a, &pad(9, 1.0, 0.0, &[1])).await;
    send(&mut a, &pad(10, -1.0, 0.0, &[1])).await;
    send(&mut a, &pad(11, 0.0, 1.0, &[])).await;
    let (_, line) = server.line(1).await;
    assert_outputs(&line, -1.0, -1.0, &[], "command");
    // Nothing from seq 9 or the repeated 10 in between.
    assert_eq!(server.lines().len(), 2);
}

#[tokio::test]
async fn anything_else_is_ignored_with_an_error_and_a_log_line() {
    let server = Server::start(&["--output", "jsonl", "--buttons", "2"]);
    let mut a = connect(&server.url("/")).await;
    next_of(&mut a, "hello").await;
    let bad = [
        "hello robot".to_owned(),
        "2 0.1 0.1".to_owned(),
        "1 NaN 0".to_owned(),
        r#"{"type":"pad","seq":1,"axes":[5,0],"buttons":[]}"#.to_owned(),
        r#"{"type":"fly"}"#.to_owned(),
        format!(r#"{{"type":"{}"}}"#, "x".repeat(3000)),
        "{".to_owned(),
    ];
    for text in &bad {
        send(&mut a, text).await;
        let err = next_of(&mut a, "error").await;
        assert_eq!(err["code"], "bad_message", "{text:.40}: {err}");
        assert!(err["text"].as_str().unwrap().chars().count() <= 200);
        // Answers are rate limited to ten a second.
        tokio::time::sleep(Duration::from_millis(110)).await;
    }
    within(a.send(Message::binary(vec![1u8, 2, 3])))
        .await
        .unwrap();
    let err = next_of(&mut a, "error").await;
    assert!(err["text"].as_str().unwrap().contains("binary"), "{err}");
    // Too large for a gamepad message: closed with 1009, the server lives on.
    let mut big = connect(&server.url("/")).await;
    next_of(&mut big, "hello").await;
    within(big.send("x".repeat(10_000))).await.unwrap();
    assert_eq!(close_code(&mut big).await, 1009);
    // The first connection still works and nothing moved.
    assert!(server.lines().is_empty());
    send(&mut a, &pad(1, 0.0, -1.0, &[])).await;
    server.line(0).await;
    assert!(server.log().contains("message ignored"), "{}", server.log());
    // Round trips are answered.
    send(&mut a, r#"{"type":"ping","id":77}"#).await;
    assert_eq!(next_of(&mut a, "pong").await["id"], 77);
}

#[tokio::test]
async fn telemetry_reaches_every_client_about_ten_times_a_second() {
    let server = Server::start(&["--output", "jsonl"]);
    let mut a = connect(&server.url("/")).await;
    let mut b = connect(&server.url("/")).await;
    next_of(&mut a, "hello").await;
    next_of(&mut b, "hello").await;
    send(&mut a, &pad(1, 0.0, -1.0, &[1])).await;
    next_of(&mut a, "role").await;
    let started = Instant::now();
    let mut count = 0;
    let mut last = Value::Null;
    while started.elapsed() < Duration::from_secs(1) {
        last = next_of(&mut b, "telemetry").await;
        count += 1;
    }
    // 10 Hz, with room for a loaded machine.
    assert!(
        (5..=16).contains(&count),
        "{count} telemetry messages in 1 s"
    );
    assert_eq!(last["clients"], 2);
    for key in ["left", "right", "buttons", "driver", "stopped", "t_ms"] {
        assert!(last.get(key).is_some(), "telemetry without {key}: {last}");
    }
}

/// What one client saw during the load of
/// [`auth_spam_from_viewers_drops_no_one_and_the_driver_keeps_control`].
#[derive(Debug, Default)]
struct Seen {
    telemetry: usize,
    /// The `driver` of the last telemetry.
    last_driver: Value,
    /// Role messages that made it a viewer.
    demoted: usize,
    /// How it ended, if it ended before the deadline.
    ended: Option<String>,
}

/// Reads until `until`, counting what arrives.
async fn watch(
    mut rx: ferrows::WsReader<MaybeTlsStream<TcpStream>>,
    until: tokio::time::Instant,
) -> Seen {
    let mut seen = Seen::default();
    loop {
        let msg = match tokio::time::timeout_at(until, rx.recv()).await {
            Err(_) => return seen,
            Ok(msg) => msg,
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                let t = t.as_str();
                if t.contains(r#""type":"telemetry""#) || t.contains(r#""type":"role""#) {
                    let v: Value = serde_json::from_str(t).unwrap();
                    if v["type"] == "telemetry" {
                        seen.telemetry += 1;
                        seen.last_driver = v["driver"].clone();
                    } else if v["role"] == "viewer" {
                        seen.demoted += 1;
                    }
                }
            }
            Some(Ok(Message::Close(f))) => {
                seen.ended = Some(format!("closed: {f:?}"));
                return seen;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                seen.ended = Some(format!("failed: {e}"));
                return seen;
            }
            None => {
                seen.ended = Some("ended".to_owned());
                return seen;
            }
        }
    }
}

/// Issue 9, defect 4: with no `--token`, every auth from a viewer used to
/// broadcast telemetry to every client; 10 viewers sending auth within the
/// per-connection limit got the other viewers and the driver closed with
/// 1008, and the robot stopped. Now an auth is answered to its sender only,
/// telemetry goes out on the 10 Hz tick, auths have their own low limit,
/// and the driver is never dropped for traffic every client gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_spam_from_viewers_drops_no_one_and_the_driver_keeps_control() {
    const READERS: usize = 40;
    const SPAMMERS: usize = 10;
    /// Auth messages per second from each spammer: under the 200/s limit
    /// on all messages, so none is cut by it.
    const SPAM_RATE: u64 = 150;
    const LOAD: Duration = Duration::from_secs(4);
    let server = Server::start(&["--output", "jsonl"]);

    let mut driver = connect(&server.url("/")).await;
    let driver_id = next_of(&mut driver, "hello").await["id"].clone();
    send(&mut driver, &pad(1, 0.0, -1.0, &[])).await;
    assert_eq!(next_of(&mut driver, "role").await["role"], "driver");

    let mut viewers = Vec::new();
    for _ in 0..READERS + SPAMMERS {
        let mut ws = connect(&server.url("/")).await;
        next_of(&mut ws, "hello").await;
        viewers.push(ws);
    }
    let start = tokio::time::Instant::now();
    let until = start + LOAD + Duration::from_secs(1);

    let mut watchers = Vec::new();
    let mut writers = Vec::new();
    for (i, ws) in viewers.into_iter().enumerate() {
        let (rx, mut tx) = ws.split();
        watchers.push(tokio::spawn(watch(rx, until)));
        if i < SPAMMERS {
            writers.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / SPAM_RATE));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut sent = 0u64;
                while start.elapsed() < LOAD {
                    tick.tick().await;
                    if tx.send(r#"{"type":"auth","token":"x"}"#).await.is_err() {
                        break;
                    }
                    sent += 1;
                }
                // Returned, so it stays open until the end.
                (sent, tx)
            }));
        }
    }
    // The driver: 60 commands a second, each moving the robot.
    let (rx, mut tx) = driver.split();
    let driver_watch = tokio::spawn(watch(rx, until));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / 60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 1;
    while start.elapsed() < LOAD {
        tick.tick().await;
        seq += 1;
        let x = if seq % 2 == 0 { 0.5 } else { -0.5 };
        if within(tx.send(pad(seq, x, -1.0, &[]))).await.is_err() {
            break;
        }
    }

    let mut spam = 0;
    let mut open = Vec::new();
    for w in writers {
        let (sent, tx) = w.await.unwrap();
        spam += sent;
        open.push(tx);
    }
    let d = driver_watch.await.unwrap();
    assert_eq!(d.ended, None, "the driver was dropped:\n{}", server.log());
    assert_eq!(d.demoted, 0, "the driver lost control:\n{}", server.log());
    let mut dropped = Vec::new();
    for (i, w) in watchers.into_iter().enumerate() {
        let seen = w.await.unwrap();
        if let Some(how) = &seen.ended {
            dropped.push(format!("viewer {i}: {how}"));
            continue;
        }
        // Telemetry kept coming at about 10 Hz for 5 s, not once per
        // auth (room for a loaded machine), and it names the driver.
        assert!(
            (10..=80).contains(&seen.telemetry),
            "viewer {i}: {} telemetry messages in 5 s: {seen:?}",
            seen.telemetry
        );
        assert_eq!(seen.last_driver, driver_id, "viewer {i}: {seen:?}");
    }
    assert!(
        dropped.is_empty(),
        "{} of {} viewers dropped: {dropped:?}\n{}",
        dropped.len(),
        READERS + SPAMMERS,
        server.log()
    );
    assert!(!server.log().contains("fell behind"), "{}", server.log());
    assert!(
        spam >= SPAMMERS as u64 * SPAM_RATE,
        "only {spam} auth messages sent: the load did not happen"
    );
    // The commands moved the robot all along, and nothing stopped it but
    // the dead-man once the driver went quiet at the end.
    let lines = server.lines();
    assert!(lines.len() >= 60, "{} output lines", lines.len());
    let (last, before) = lines.split_last().unwrap();
    assert!(
        before.iter().all(|(_, l)| l["reason"] == "command")
            && ["command", "deadman"].contains(&last.1["reason"].as_str().unwrap()),
        "{:?}",
        lines.iter().map(|(_, l)| l.to_string()).collect::<Vec<_>>()
    );
    drop((tx, open));
}

// ------------------------------------------------------------ outputs

#[tokio::test]
async fn jsonl_to_a_file() {
    let dir = std::env::temp_dir().join(format!("ferrows-gamepad-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("out.jsonl");
    let _ = std::fs::remove_file(&path);
    let spec = format!("jsonl:{}", path.display());
    // `100ms`: the one duration grammar (a bare `100` is ms too).
    let server = Server::start(&["--output", &spec, "--buttons", "2", "--deadman", "100ms"]);
    let mut a = connect(&server.url("/")).await;
    next_of(&mut a, "hello").await;
    send(&mut a, &pad(1, 0.0, -1.0, &[1])).await;
    next_of(&mut a, "stop").await;
    // The deadman line is written right after the stop is announced.
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() >= 2 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_outputs(&lines[0], 1.0, 1.0, &[0], "command");
    assert_outputs(&lines[1], 0.0, 0.0, &[], "deadman");
    assert!(server.stdout.lock().unwrap().is_empty());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[tokio::test]
async fn jsonl_to_a_fifo_starts_without_a_reader() {
    let dir = std::env::temp_dir().join(format!("ferrows-gamepad-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("robot.fifo");
    let _ = std::fs::remove_file(&path);
    assert!(
        Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap()
            .success(),
        "mkfifo"
    );
    let spec = format!("jsonl:{}", path.display());
    // It listens and serves with no one reading the FIFO.
    let server = Server::start(&["--output", &spec, "--buttons", "1"]);
    let mut a = connect(&server.url("/")).await;
    next_of(&mut a, "hello").await;
    send(&mut a, &pad(1, 0.0, -1.0, &[])).await;
    assert_eq!(next_of(&mut a, "role").await["role"], "driver");
    // A robot bridge starts reading: it gets the current state first.
    let reader = std::fs::File::open(&path).unwrap();
    let lines = collect(reader);
    let first = within(async {
        loop {
            if let Some((_, l)) = lines.lock().unwrap().first().cloned() {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_outputs(
        &serde_json::from_str(&first).unwrap(),
        1.0,
        1.0,
        &[],
        "command",
    );
    send(&mut a, &pad(2, 0.0, 0.0, &[1])).await;
    let second = within(async {
        loop {
            if let Some((_, l)) = lines.lock().unwrap().get(1).cloned() {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_outputs(
        &serde_json::from_str(&second).unwrap(),
        0.0,
        0.0,
        &[0],
        "command",
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrows"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run ferrows");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn gpio_configuration_errors_are_clear() {
    let dir = std::env::temp_dir().join(format!("ferrows-gamepad-gpio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("robot.toml");
    std::fs::write(
        &config,
        "chip = \"gpiochip77\"\n[left]\ndirection = 17\nenable = 18\n[right]\ndirection = 22\nenable = 23\n[buttons]\n0 = 24\n",
    )
    .unwrap();
    let spec = format!("gpio:{}", config.display());
    let base = [
        "serve",
        "gamepad",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--output",
    ];
    // The chip is missing (this machine has none): named, and no server.
    let (status, err) = run_to_exit(&[&base[..], &[spec.as_str()]].concat());
    assert!(!status.success());
    assert!(err.contains("/dev/gpiochip77"), "{err}");
    assert!(err.contains("not found"), "{err}");
    assert!(!err.contains("listening on"), "{err}");
    // A configuration mistake names the file and the problem.
    std::fs::write(
        &config,
        "chip = \"gpiochip0\"\n[left]\ndirection = 17\nenable = 17\n[right]\ndirection = 22\nenable = 23\n",
    )
    .unwrap();
    let (status, err) = run_to_exit(&[&base[..], &[spec.as_str()]].concat());
    assert!(!status.success());
    assert!(err.contains("robot.toml"), "{err}");
    assert!(err.contains("line 17 is used twice"), "{err}");
    // A missing file.
    let (status, err) = run_to_exit(&[&base[..], &["gpio:/nonexistent/robot.toml"]].concat());
    assert!(!status.success());
    assert!(err.contains("/nonexistent/robot.toml"), "{err}");
    // Bad flags.
    for (flag, value) in [
        ("--output", "csv"),
        ("--deadzone", "1.5"),
        ("--max-speed", "0"),
        ("--deadman", "5"),
        ("--buttons", "65"),
    ] {
        let (status, err) = run_to_exit(&[&base[..6], &[flag, value]].concat());
        assert_eq!(status.code(), Some(2), "{flag} {value}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------ page, shutdown

#[tokio::test]
async fn the_page_is_served_on_the_same_port_and_path() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(&["--output", "jsonl"]);
    let mut tcp = within(TcpStream::connect(server.addr)).await.unwrap();
    within(tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        .await
        .unwrap();
    let mut raw = Vec::new();
    within(tcp.read_to_end(&mut raw)).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{:.200}", text);
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("content-security-policy: default-src 'none'"));
    let body = &text[text.find("\r\n\r\n").unwrap()..];
    assert!(body.contains("<title>Gamepad"));
    assert!(body.contains("navigator.getGamepads"), "script not inlined");
    assert!(!body.contains("<script src"), "external script");
    assert!(!body.contains("rel=\"stylesheet\""), "external stylesheet");
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "a URL elsewhere"
    );
    assert!(!body.contains("innerHTML"));
}

#[cfg(unix)]
#[tokio::test]
async fn shutdown_stops_the_robot_and_closes_clients_with_1001() {
    let mut server = Server::start(&["--output", "jsonl", "--buttons", "1", "--deadman", "10000"]);
    let mut a = connect(&server.url("/")).await;
    next_of(&mut a, "hello").await;
    send(&mut a, &pad(1, 0.0, -1.0, &[1])).await;
    server.line(0).await;
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(close_code(&mut a).await, 1001);
    let (_, stop) = server.line(1).await;
    // The driver's connection closes first (disconnect); either way safe.
    let reason = stop["reason"].as_str().unwrap();
    assert!(reason == "disconnect" || reason == "shutdown", "{stop}");
    assert_outputs(&stop, 0.0, 0.0, &[], reason);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}: {}", server.log());
}
