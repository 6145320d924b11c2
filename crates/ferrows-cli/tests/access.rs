//! Access control of every `ferrows` server, black-box against the binary
//! (issue 9, item 8): `--token` (401 with `WWW-Authenticate: Bearer`
//! before the upgrade, `?token=` or `Authorization: Bearer`, never
//! logged, never in `--help`), how it meets the gamepad's `--drive-token`,
//! `--handshake-rate-per-ip` (429 with `Retry-After`) and
//! `--max-connections-per-ip` (503 with `Retry-After`), other addresses
//! unaffected, and refusals logged once a second per kind, not once each.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferrows::Message;
use serde_json::Value;
use support::{HttpResponse, Server, connect, http, next_data, parse_response, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "s3cret-Zq9 ü";
const SECRET_IN_URL: &str = "s3cret-Zq9%20%C3%BC";

/// Sends an upgrade request for `target` from local address `from` (any
/// of 127.0.0.0/8) and returns the response head and the stream.
async fn upgrade_from(
    from: [u8; 4],
    addr: SocketAddr,
    target: &str,
    extra: &str,
) -> (HttpResponse, TcpStream) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let mut tcp = within(5, socket.connect(addr)).await.unwrap();
    let request = support::upgrade_request(addr, target, extra);
    within(5, tcp.write_all(request.as_bytes())).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = within(10, tcp.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed without a response: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    (parse_response(&got[..end]), tcp)
}

async fn status(addr: SocketAddr, target: &str, extra: &str) -> HttpResponse {
    upgrade_from([127, 0, 0, 1], addr, target, extra).await.0
}

fn assert_401(r: &HttpResponse, what: &str) {
    assert_eq!(r.status, 401, "{what}: {r:?}");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer"),
        "{what}: {r:?}"
    );
}

#[tokio::test]
async fn echo_refuses_401_without_the_token_and_never_logs_it() {
    let server = Server::start_with_env(
        &["serve", "echo", "--port", "0", "--token", SECRET, "--trace"],
        &[("RUST_LOG", "trace")],
    );
    let addr = server.addr;
    assert_401(&status(addr, "/", "").await, "no token");
    assert_401(&status(addr, "/?token=wrong", "").await, "a wrong token");
    assert_401(
        &status(addr, "/?token=s3cret-Zq9", "").await,
        "a prefix of the token",
    );
    assert_401(
        &status(addr, "/", "Authorization: Bearer nope\r\n").await,
        "a wrong Bearer",
    );
    let url = format!("/?token={SECRET_IN_URL}");
    assert_eq!(status(addr, &url, "").await.status, 101, "query token");
    let bearer = format!("Authorization: Bearer {SECRET}\r\n");
    assert_eq!(status(addr, "/", &bearer).await.status, 101, "Bearer");
    // A real client echoes through it.
    let mut ws = connect(&format!("ws://{addr}/?room=1&token={SECRET_IN_URL}")).await;
    within(5, ws.send("hello".to_owned())).await.unwrap();
    assert_eq!(next_data(&mut ws, 10).await, Message::from("hello"));
    within(5, ws.close(1000, "")).await.unwrap();
    // The page is public: it takes the token from its own URL.
    let page = http(addr, "GET", "/", "").await;
    assert_eq!(page.status, 200);
    for needle in ["missing or wrong token: 401", "room=1&token=[redacted]"] {
        server.wait_log(&[needle], Duration::from_secs(10)).await;
    }
    let log = server.log();
    assert!(
        log.contains("Authorization: [redacted]"),
        "the trace shows the header, redacted"
    );
    for secret in ["s3cret", SECRET_IN_URL] {
        assert!(!log.contains(secret), "{secret:?} in the log:\n{log}");
    }
}

#[test]
fn the_token_comes_from_the_environment_and_help_never_shows_it() {
    let (_, help) =
        support::run_to_exit(&["serve", "echo", "--help"], &[("FERROWS_TOKEN", SECRET)]);
    // `--help` goes to stdout, which the support discards: ask for it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferrows"))
        .args(["serve", "--help"])
        .env("FERROWS_TOKEN", SECRET)
        .output()
        .unwrap();
    let text = format!("{help}{}", String::from_utf8_lossy(&out.stdout));
    assert!(text.contains("FERROWS_TOKEN"), "{text}");
    assert!(text.contains("--max-connections-per-ip"), "{text}");
    assert!(text.contains("--handshake-rate-per-ip"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[tokio::test]
async fn ferrows_token_env_gates_chat_and_leaves_its_page_public() {
    let server = Server::start_with_env(
        &["serve", "chat", "--port", "0"],
        &[("FERROWS_TOKEN", SECRET)],
    );
    let addr = server.addr;
    assert_401(&status(addr, "/", "").await, "chat without a token");
    let url = format!("/?token={SECRET_IN_URL}");
    assert_eq!(status(addr, &url, "").await.status, 101);
    assert_eq!(http(addr, "GET", "/", "").await.status, 200, "the page");
}

#[tokio::test]
async fn serve_gates_every_route_and_the_gamepad_keeps_its_drive_token() {
    let server = Server::start_with_env(
        &[
            "serve",
            "--port",
            "0",
            "--token",
            SECRET,
            "--drive-token",
            "d-123",
        ],
        &[("FERROWS_GAMEPAD_TOKEN", "")],
    );
    let addr = server.addr;
    for path in ["/echo", "/chat", "/gamepad"] {
        assert_401(&status(addr, path, "").await, path);
        let bearer = format!("Authorization: Bearer {SECRET}\r\n");
        assert_eq!(status(addr, path, &bearer).await.status, 101, "{path}");
        assert_eq!(http(addr, "GET", path, "").await.status, 200, "{path} page");
    }
    // Connected with the connection token only: a viewer that needs the
    // driving token; the connection token did not count as a wrong one.
    let mut viewer = connect(&format!("ws://{addr}/gamepad?token={SECRET_IN_URL}")).await;
    let hello = next_json(&mut viewer, "hello").await;
    assert_eq!(hello["token_required"], true, "{hello}");
    within(5, viewer.send(pad(1))).await.unwrap();
    let error = next_json(&mut viewer, "error").await;
    assert_eq!(error["code"], "token_required", "{error}");
    // With both: drives.
    let mut driver = connect(&format!(
        "ws://{addr}/gamepad?token={SECRET_IN_URL}&drive_token=d-123"
    ))
    .await;
    next_json(&mut driver, "hello").await;
    within(5, driver.send(pad(1))).await.unwrap();
    let role = next_json(&mut driver, "role").await;
    assert_eq!(role["role"], "driver", "{role}");
    let log = server.log();
    assert!(!log.contains("s3cret") && !log.contains("d-123"), "{log}");
}

#[tokio::test]
async fn serve_gamepad_with_a_token_only_lets_every_holder_drive() {
    let server = Server::start_with_env(
        &["serve", "gamepad", "--port", "0", "--token", SECRET],
        &[("FERROWS_GAMEPAD_TOKEN", "")],
    );
    let addr = server.addr;
    assert_401(&status(addr, "/", "").await, "gamepad without a token");
    let mut ws = connect(&format!("ws://{addr}/?token={SECRET_IN_URL}")).await;
    let hello = next_json(&mut ws, "hello").await;
    assert_eq!(hello["token_required"], false, "{hello}");
    within(5, ws.send(pad(1))).await.unwrap();
    assert_eq!(next_json(&mut ws, "role").await["role"], "driver");
}

fn pad(seq: u64) -> String {
    serde_json::json!({"type": "pad", "seq": seq, "axes": [0.0, -1.0, 0.0, 0.0], "buttons": []})
        .to_string()
}

async fn next_json(ws: &mut support::Client, kind: &str) -> Value {
    within(10, async {
        loop {
            let msg = next_data(ws, 10).await;
            let text = msg.as_text().unwrap_or_else(|| panic!("not text: {msg:?}"));
            let value: Value = serde_json::from_str(text).unwrap();
            if value["type"] == kind {
                return value;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_handshake_rate_429_and_one_log_line_a_second() {
    let server = Server::start(&[
        "serve",
        "echo",
        "--port",
        "0",
        "--handshake-rate-per-ip",
        "2",
        "--per-ip-limits-on-loopback",
    ]);
    let addr = server.addr;
    let a = [127, 0, 0, 1];
    // The burst: twice the rate.
    let mut open = Vec::new();
    for i in 0..4 {
        let (r, tcp) = upgrade_from(a, addr, "/", "").await;
        assert_eq!(r.status, 101, "{i} of the burst: {r:?}");
        open.push(tcp);
    }
    let started = Instant::now();
    let mut refused = 0;
    for _ in 0..200 {
        let (r, _) = upgrade_from(a, addr, "/", "").await;
        if r.status == 429 {
            refused += 1;
            let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
            assert!((1..=2).contains(&retry), "{r:?}");
        } else {
            assert_eq!(r.status, 101, "{r:?}");
        }
    }
    let secs = started.elapsed().as_secs();
    // At 2 a second, at most 2 per second (+1) got through.
    assert!(
        refused >= 200 - 2 * (secs + 1),
        "{refused} refused in {secs} s"
    );
    // Other addresses are not affected, nor are the open connections.
    let (r, _) = upgrade_from([127, 0, 0, 2], addr, "/", "").await;
    assert_eq!(r.status, 101, "another address: {r:?}");
    // The refusals were summarised: at most ~2 lines a second.
    let needle = "handshake rate per address exceeded: 429";
    server
        .wait_log(&[needle, "in the last second"], Duration::from_secs(5))
        .await;
    let secs = started.elapsed().as_secs() + 1;
    let lines = server.log().lines().filter(|l| l.contains(needle)).count() as u64;
    assert!(
        lines <= 2 * secs + 1,
        "{lines} lines for {refused} refusals in {secs} s"
    );
}

#[tokio::test]
async fn past_the_connections_per_ip_503_and_others_unaffected() {
    let server = Server::start(&[
        "serve",
        "echo",
        "--port",
        "0",
        "--max-connections-per-ip",
        "3",
        "--per-ip-limits-on-loopback",
    ]);
    let addr = server.addr;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&format!("ws://{addr}/")).await);
    }
    for _ in 0..5 {
        let (r, _) = upgrade_from([127, 0, 0, 1], addr, "/", "").await;
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.header("retry-after"), Some("5"), "{r:?}");
    }
    // The held connections still echo; another address connects.
    within(5, held[0].send("still here".to_owned()))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut held[0], 10).await,
        Message::from("still here")
    );
    let (r, _other) = upgrade_from([127, 0, 0, 2], addr, "/", "").await;
    assert_eq!(r.status, 101, "another address: {r:?}");
    // Closing one frees its place.
    let mut gone = held.pop().unwrap();
    within(5, gone.close(1000, "")).await.unwrap();
    drop(gone);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (r, _) = upgrade_from([127, 0, 0, 1], addr, "/", "").await;
        if r.status == 101 {
            break;
        }
        assert!(Instant::now() < deadline, "the place was not freed: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
        .wait_log(
            &["connection limit per address reached: 503"],
            Duration::from_secs(5),
        )
        .await;
}

/// Before: every refused upgrade wrote its own log line, so a client
/// could fill the disk with refusals. Now: the first at once, then one
/// summary a second per kind.
#[tokio::test]
async fn a_flood_of_refusals_costs_a_log_line_a_second() {
    let server = Server::start(&[
        "serve",
        "echo",
        "--port",
        "0",
        "--origin",
        "http://allowed.example",
    ]);
    let addr = server.addr;
    let started = Instant::now();
    for _ in 0..300 {
        let r = status(addr, "/", "Origin: http://evil.example\r\n").await;
        assert_eq!(r.status, 403, "{r:?}");
    }
    let needle = "origin not allowed: 403";
    let secs = started.elapsed().as_secs() + 1;
    // The last summary is due within a second of the last refusal.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
    assert!(
        lines.len() as u64 <= 2 * secs + 2,
        "{} lines for 300 refusals in {secs} s:\n{log}",
        lines.len()
    );
    // The summaries account for every refusal.
    let counted: u64 = lines
        .iter()
        .map(|l| {
            l.split("(x")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(1)
        })
        .sum();
    assert_eq!(counted, 300, "{log}");
}
