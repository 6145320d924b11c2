//! `ferrows bench` run as a user runs it, against `ferrows serve echo`,
//! `ferrows serve chat` and deliberately broken servers written here: the
//! JSON line it prints, its exit status, and that it catches bad echoes.
//! Runs are short and bounded; the figures themselves are not checked
//! (benchmarks are not tests), only that they are there and consistent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferrows::Message;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ferrows");

/// Every run of the binary is bounded by this.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// A `ferrows serve …` process on a free loopback port; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(args)
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ferrows serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some((_, addr)) = line.split_once("listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let listening = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server says where it listens");
        Server {
            child,
            addr: listening.parse().expect("a socket address"),
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `ferrows bench ARGS --json` (bounded): exit code and the JSON line.
fn bench(args: &[&str]) -> (i32, Value) {
    let mut child = Command::new(BIN)
        .arg("bench")
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferrows bench");
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferrows bench {args:?} ran over {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no output from ferrows bench {args:?}; stderr:\n{stderr}"));
    let json: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {line}; stderr:\n{stderr}"));
    (out.status.code().unwrap_or(-1), json)
}

fn assert_no_errors(j: &Value) {
    let e = &j["errors"];
    for key in [
        "mismatches",
        "connect_failures",
        "connection_errors",
        "stalled",
    ] {
        assert_eq!(e[key], 0, "{key} in {j}");
    }
}

#[test]
fn echo_closed_loop_against_serve_echo() {
    let server = Server::start(&["serve", "echo", "--no-compression"]);
    let pid = server.pid();
    let (code, j) = bench(&[
        &server.url(),
        "--conns",
        "4",
        "--pipeline",
        "8",
        "--size",
        "100",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--server-pid",
        &pid,
        "--label",
        "row=unit",
    ]);
    assert_eq!(code, 0, "{j}");
    assert_no_errors(&j);
    assert_eq!(j["mode"], "echo");
    assert_eq!(j["ok"], true);
    assert_eq!(j["labels"]["row"], "unit");
    assert_eq!(j["kind"], "binary");
    let messages = j["messages"].as_u64().unwrap();
    assert!(messages > 0, "{j}");
    // Every echo received was checked, the measured ones among them.
    assert!(j["verified"].as_u64().unwrap() >= messages, "{j}");
    let rate = j["msgs_per_s"].as_f64().unwrap();
    let window = j["duration_s"].as_f64().unwrap();
    assert!((rate * window - messages as f64).abs() < 1.0, "{j}");
    assert!(j["latency_us"]["p50_us"].as_f64().unwrap() > 0.0, "{j}");
    assert!(
        j["latency_us"]["p99_us"].as_f64().unwrap() >= j["latency_us"]["p50_us"].as_f64().unwrap()
    );
    assert_eq!(j["server"]["pid"].as_u64().unwrap().to_string(), pid);
    assert!(j["server"]["cpu_s"].as_f64().is_some(), "{j}");
    assert!(j["client_cpu_pct"].as_f64().is_some(), "{j}");
}

#[test]
fn compressed_text_and_open_loop() {
    let server = Server::start(&["serve", "echo"]);
    let (code, j) = bench(&[
        &server.url(),
        "--conns",
        "3",
        "--text",
        "--content",
        "json",
        "--size",
        "1000",
        "--pipeline",
        "4",
        "--compress",
        "--duration",
        "0.5",
        "--warmup",
        "0.1",
    ]);
    assert_eq!(code, 0, "{j}");
    assert_no_errors(&j);
    assert_eq!(j["kind"], "text");
    assert_eq!(j["compress"]["negotiated_conns"], 3, "{j}");

    let (code, j) = bench(&[
        &server.url(),
        "--conns",
        "2",
        "--rate",
        "400",
        "--duration",
        "1",
        "--warmup",
        "0.2",
    ]);
    assert_eq!(code, 0, "{j}");
    assert_no_errors(&j);
    assert_eq!(j["mode"], "echo-rate");
    // 400 msg/s over about a second, on schedule.
    let messages = j["messages"].as_u64().unwrap();
    assert!((200..=600).contains(&messages), "{j}");
    assert!(j["send_lag_us"]["count"].as_u64().unwrap() > 0, "{j}");
}

#[test]
fn idle_connections_and_server_memory() {
    let server = Server::start(&["serve", "echo", "--no-compression"]);
    let pid = server.pid();
    let (code, j) = bench(&[
        &server.url(),
        "--idle",
        "60",
        "--hold",
        "0.3",
        "--handshake-concurrency",
        "10",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(code, 0, "{j}");
    assert_no_errors(&j);
    assert_eq!(j["opened"], 60);
    assert_eq!(j["held"], 60);
    assert!(j["handshakes_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(j["handshake_us"]["count"], 60);
    assert!(j["server"]["rss_before_kib"].as_u64().unwrap() > 0, "{j}");
    assert!(j["server"]["rss_per_conn_bytes"].as_f64().is_some(), "{j}");
}

#[test]
fn broadcast_reaches_every_chat_client() {
    let server = Server::start(&["serve", "chat", "--tick", "0", "--no-compression"]);
    let (code, j) = bench(&[&server.url(), "--conns", "25", "--broadcast", "5"]);
    assert_eq!(code, 0, "{j}");
    assert_no_errors(&j);
    assert_eq!(j["connected"], 25);
    assert_eq!(j["rounds_complete"], 5);
    assert_eq!(j["rounds_incomplete"], 0);
    assert_eq!(j["duplicates"], 0);
    assert_eq!(j["last_copy_us"]["count"], 5);
    assert!(
        j["last_copy_us"]["p50_us"].as_f64().unwrap()
            >= j["first_copy_us"]["p50_us"].as_f64().unwrap()
    );
}

#[test]
fn unreachable_server_fails_cleanly() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}/");
    let (code, j) = bench(&[&url, "--conns", "3", "--duration", "1"]);
    assert_eq!(code, 1, "{j}");
    assert_eq!(j["ok"], false);
    assert_eq!(j["errors"]["connect_failures"], 3, "{j}");
    assert_eq!(j["messages"], 0);
}

/// What a broken echo server does wrong.
#[derive(Clone, Copy)]
enum Fault {
    /// Flips a bit of every 50th echo.
    Corrupt,
    /// Never echoes the 50th message, then carries on.
    Drop,
    /// Closes with 1011 after 50 messages.
    Close,
}

/// A broken echo server on the ferrows library, in a thread; returns its
/// address.
fn broken_server(fault: Fault) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let Ok(mut ws) = ferrows::accept(tcp).await else {
                        return;
                    };
                    let mut n = 0u64;
                    while let Some(Ok(msg)) = ws.recv().await {
                        let Message::Binary(data) = msg else { continue };
                        n += 1;
                        let reply = match fault {
                            Fault::Corrupt if n % 50 == 0 => {
                                let mut bytes = data.to_vec();
                                let middle = bytes.len() / 2;
                                bytes[middle] ^= 0x10;
                                Message::binary(bytes)
                            }
                            Fault::Drop if n == 50 => continue,
                            Fault::Close if n == 50 => {
                                let _ = ws.close(1011, "broken on purpose").await;
                                return;
                            }
                            _ => Message::Binary(data),
                        };
                        if ws.send(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    });
    addr
}

fn bench_broken(fault: Fault) -> (i32, Value) {
    let addr = broken_server(fault);
    bench(&[
        &format!("ws://{addr}/"),
        "--conns",
        "2",
        "--pipeline",
        "4",
        "--size",
        "64",
        "--duration",
        "0.5",
        "--warmup",
        "0.1",
        "--timeout",
        "1",
    ])
}

#[test]
fn corrupted_echoes_are_counted() {
    let (code, j) = bench_broken(Fault::Corrupt);
    assert_eq!(code, 1, "{j}");
    assert_eq!(j["ok"], false);
    assert!(j["errors"]["mismatches"].as_u64().unwrap() > 0, "{j}");
    assert!(
        j["errors"]["first_mismatch"]
            .as_str()
            .unwrap()
            .contains("different bytes"),
        "{j}"
    );
}

#[test]
fn a_lost_echo_is_a_mismatch_and_a_stall() {
    let (code, j) = bench_broken(Fault::Drop);
    assert_eq!(code, 1, "{j}");
    // Every later echo is compared with the lost message's successor.
    assert!(j["errors"]["mismatches"].as_u64().unwrap() > 0, "{j}");
    // And the lost one never comes: both connections wait for it until
    // the deadline.
    assert_eq!(j["errors"]["stalled"], 2, "{j}");
}

#[test]
fn a_server_closing_mid_run_is_a_connection_error() {
    let (code, j) = bench_broken(Fault::Close);
    assert_eq!(code, 1, "{j}");
    assert_eq!(j["errors"]["connection_errors"], 2, "{j}");
    let first = j["errors"]["messages"][0].as_str().unwrap();
    assert!(first.contains("1011"), "{first}");
}

/// The chat-mode accounting of a JSON line: every measured message
/// delivered to every client once.
fn assert_chat_complete(j: &Value, conns: u64) {
    assert_no_errors(j);
    assert_eq!(j["mode"], "chat", "{j}");
    assert_eq!(j["connected"], conns, "{j}");
    let measured = j["messages_measured"].as_u64().unwrap();
    assert!(measured > 0, "{j}");
    assert_eq!(
        j["copies_delivered"].as_u64().unwrap(),
        measured * conns,
        "{j}"
    );
    assert_eq!(j["copies_missing"], 0, "{j}");
    assert_eq!(j["duplicates"], 0, "{j}");
    assert_eq!(
        j["last_copy_us"]["count"].as_u64().unwrap(),
        measured,
        "{j}"
    );
    assert!(j["copies_per_s"].as_f64().unwrap() > 0.0, "{j}");
}

#[test]
fn chat_open_loop_against_serve_chat() {
    let server = Server::start(&["serve", "chat", "--tick", "0", "--no-compression"]);
    let pid = server.pid();
    // 4 senders × 25 msg/s: under serve chat's default per-client limit.
    let (code, j) = bench(&[
        &server.url(),
        "--conns",
        "20",
        "--chat-rate",
        "100",
        "--senders",
        "4",
        "--warmup",
        "0.5",
        "--duration",
        "2",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(code, 0, "{j}");
    assert_chat_complete(&j, 20);
    // 100 msg/s for 2.5 s, of which 2 s measured.
    assert_eq!(j["messages_sent"], 250, "{j}");
    assert_eq!(j["messages_measured"], 200, "{j}");
    assert_eq!(j["senders"], 4);
    assert_eq!(j["nodes"].as_array().unwrap().len(), 1);
    assert!(j["server"]["cpu_s"].as_f64().is_some(), "{j}");
    assert_eq!(j["servers"][0]["name"], "ferrows", "{j}");
    // Latency counts from the schedule: p50 ≤ p99 ≤ max.
    let l = &j["last_copy_us"];
    assert!(l["p50_us"].as_f64().unwrap() <= l["p99_us"].as_f64().unwrap());
    assert!(l["p99_us"].as_f64().unwrap() <= l["max_us"].as_f64().unwrap());
}

/// Two separate `serve chat` processes are two rooms: with clients and
/// senders spread round-robin, each message reaches exactly the clients of
/// its sender's server, so the missing copies tell the spread exactly.
#[test]
fn several_urls_spread_clients_and_senders() {
    let a = Server::start(&["serve", "chat", "--tick", "0", "--no-compression"]);
    let b = Server::start(&["serve", "chat", "--tick", "0", "--no-compression"]);
    let (pa, pb) = (a.pid(), b.pid());
    // The unmeasured first message comes from client 0 (on a) and cannot
    // reach b's clients: the run must stop there with b's clients stalled.
    let (code, j) = bench(&[
        &a.url(),
        &b.url(),
        "--conns",
        "10",
        "--chat-rate",
        "20",
        "--senders",
        "2",
        "--duration",
        "1",
        "--timeout",
        "2",
        "--server-pid",
        &pa,
        "--server-pid",
        &pb,
    ]);
    assert_eq!(code, 1, "{j}");
    assert_eq!(j["connected"], 10, "{j}");
    assert_eq!(j["errors"]["stalled"], 5, "{j}");
    assert_eq!(j["nodes"][0]["clients"], 5, "{j}");
    assert_eq!(j["nodes"][1]["clients"], 5, "{j}");
    assert_eq!(j["urls"].as_array().unwrap().len(), 2);

    // One server under two paths (serve chat has its room on every path)
    // is one room: everything arrives, and each path's clients get a
    // last-copy figure of their own.
    let one = format!("ws://{}/", a.addr);
    let other = format!("ws://{}/other", a.addr);
    let (code, j) = bench(&[
        &one,
        &other,
        "--conns",
        "10",
        "--chat-rate",
        "40",
        "--senders",
        "2",
        "--warmup",
        "0.5",
        "--duration",
        "1",
        "--server-pid",
        &pa,
        "--server-pid",
        &pb,
    ]);
    assert_eq!(code, 0, "{j}");
    assert_chat_complete(&j, 10);
    let measured = j["messages_measured"].as_u64().unwrap();
    for node in j["nodes"].as_array().unwrap() {
        assert_eq!(node["clients"], 5, "{j}");
        assert_eq!(
            node["last_copy_us"]["count"].as_u64().unwrap(),
            measured,
            "{j}"
        );
    }
    assert_eq!(j["servers"].as_array().unwrap().len(), 2, "{j}");

    // --broadcast spreads the same way.
    let (code, j) = bench(&[&one, &other, "--conns", "9", "--broadcast", "3"]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["rounds_complete"], 3, "{j}");
    assert_eq!(j["nodes"][0]["clients"], 5, "{j}");
    assert_eq!(j["nodes"][1]["clients"], 4, "{j}");
    assert_eq!(j["nodes"][1]["last_copy_us"]["count"], 3, "{j}");
}

/// A Socket.IO 4.8 server (bench/peers/node/socketio-chat.js, no adapter)
/// on a free loopback port; killed on drop. Needs `npm ci` in
/// bench/peers/node (.ci/run does it): fails, never skips, without it.
struct SocketIo {
    child: Child,
    addr: SocketAddr,
}

impl SocketIo {
    fn start() -> SocketIo {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/peers/node");
        assert!(
            std::path::Path::new(dir)
                .join("node_modules/socket.io/package.json")
                .exists(),
            "socket.io is not installed: run `npm ci` in bench/peers/node"
        );
        let mut child = Command::new("node")
            .arg(format!("{dir}/socketio-chat.js"))
            .args(["0", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start node (Node.js is required)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some((_, addr)) = line.split_once("listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let listening = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the Socket.IO server says where it listens");
        SocketIo {
            child,
            addr: listening.parse().expect("a socket address"),
        }
    }
}

impl Drop for SocketIo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn socketio_protocol_against_a_real_socket_io_server() {
    let server = SocketIo::start();
    let url = format!("ws://{}/", server.addr);
    let pid = server.child.id().to_string();
    let (code, j) = bench(&[
        &url,
        "--protocol",
        "socketio",
        "--conns",
        "10",
        "--chat-rate",
        "50",
        "--senders",
        "2",
        "--warmup",
        "0.5",
        "--duration",
        "1",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(code, 0, "{j}");
    assert_chat_complete(&j, 10);
    assert_eq!(j["protocol"], "socketio");
    assert_eq!(j["servers"][0]["name"], "node", "{j}");
    let (code, j) = bench(&[
        &url,
        "--protocol",
        "socketio",
        "--conns",
        "10",
        "--broadcast",
        "5",
    ]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["rounds_complete"], 5, "{j}");
    // The ferrows wire format against a Socket.IO server gets no chat
    // copies: the run fails instead of measuring nothing.
    let (code, j) = bench(&[&url, "--conns", "2", "--broadcast", "1", "--timeout", "1"]);
    assert_ne!(code, 0, "{j}");
}
