//! The debugging tools, run as a user runs them: `ferrows decode`,
//! `accept-key`, `probe` (against `ferrows serve echo` and against broken
//! servers written here), `connect` in a pipe, and `--trace`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use ferrows_proto::handshake::accept_key;

const BIN: &str = env!("CARGO_BIN_EXE_ferrows");

/// Every run of the binary is bounded by this.
const RUN_LIMIT: Duration = Duration::from_secs(60);

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// How a test feeds standard input.
enum Input<'a> {
    /// Write these bytes, then close it.
    Bytes(&'a [u8]),
    /// Keep it open (and empty) until the program exits.
    Open,
}

/// Runs the binary to completion, killing it past [`RUN_LIMIT`].
fn run(args: &[&str], input: Input<'_>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut stdin = child.stdin.take();
    if let (Input::Bytes(bytes), Some(mut s)) = (&input, stdin.take()) {
        // Writing all of it before reading the output cannot deadlock:
        // decode reads its whole input before writing, and connect's inputs
        // here are a few bytes.
        s.write_all(bytes).unwrap();
    }
    let out = reader(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferrows {args:?} did not finish within {RUN_LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    drop(stdin);
    Output {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn reader(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// `ferrows serve echo` on a free port, killed on drop.
struct EchoServer {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl EchoServer {
    fn start(extra: &[&str]) -> EchoServer {
        let mut child = Command::new(BIN)
            .args(["serve", "echo", "--port", "0", "--bind", "127.0.0.1"])
            .args(extra)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the server starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let lines = log.clone();
        // Drains stderr for the server's whole life (a full pipe would
        // block it); ends when the server exits.
        thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stderr);
            let mut line = String::new();
            while std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) > 0 {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let port = addr
                        .trim()
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse::<u16>().ok());
                    let _ = port_tx.send(port);
                }
                lines.lock().unwrap().push(line.clone());
                line.clear();
            }
        });
        let port = match port_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(port)) => port,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no 'listening on' line from the server: {other:?}");
            }
        };
        EchoServer { child, port, log }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    /// The server's stderr so far, waiting up to 10 s for `needle`.
    fn log_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.log.lock().unwrap().concat();
            if text.contains(needle) || Instant::now() > deadline {
                return text;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a hand-written test server misbehaves.
#[derive(Clone, Copy)]
enum Broken {
    /// Answers with the accept value followed by "\n" (Python's
    /// `base64.encodebytes`), then echoes like `Under126`.
    NewlineAccept,
    /// A correct handshake, then an echo that only understands the 7-bit
    /// length: payloads of 126 bytes and more come back garbled.
    Under126,
    /// The right accept value, but every line of the head ends with a bare
    /// LF; then echoes like `Under126`.
    BareLf,
    /// Answers pings and closes, but echoes nothing.
    NoEcho,
    /// Sends a close frame with this code right after the handshake.
    CloseWith(u16),
    /// Drops the TCP connection right after the handshake.
    Drop,
}

/// A broken server on a free port; its accept loop stops when dropped
/// (and after 60 s or 64 connections in any case).
struct BrokenServer {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl BrokenServer {
    fn start(mode: Broken) -> BrokenServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut served = 0;
            while !stopped.load(Ordering::Relaxed) && Instant::now() < deadline && served < 64 {
                match listener.accept() {
                    Ok((conn, _)) => {
                        served += 1;
                        thread::spawn(move || serve_broken(conn, mode));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        BrokenServer { port, stop }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }
}

impl Drop for BrokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_broken(mut conn: TcpStream, mode: Broken) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The request head.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let key = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    let accept = accept_key(key.as_bytes());
    let response = match mode {
        Broken::NewlineAccept => format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\n\r\n\r\n"
        ),
        Broken::BareLf => format!(
            "HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\nConnection: Upgrade\nSec-WebSocket-Accept: {accept}\n\n"
        ),
        _ => format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        ),
    };
    if conn.write_all(response.as_bytes()).is_err() {
        return;
    }
    match mode {
        Broken::Drop => return,
        Broken::CloseWith(code) => {
            let [a, b] = code.to_be_bytes();
            let _ = conn.write_all(&[0x88, 0x05, a, b, b'b', b'y', b'e']);
        }
        _ => {}
    }
    // A naive frame loop: the 7-bit length only.
    for _ in 0..1000 {
        let mut h = [0u8; 2];
        if conn.read_exact(&mut h).is_err() {
            return;
        }
        let opcode = h[0] & 0x0F;
        let len = usize::from(h[1] & 0x7F);
        let mut key = [0u8; 4];
        if h[1] & 0x80 != 0 && conn.read_exact(&mut key).is_err() {
            return;
        }
        let mut payload = vec![0u8; len];
        if conn.read_exact(&mut payload).is_err() {
            return;
        }
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
        let reply_opcode = match (opcode, mode) {
            (0x8, _) => {
                let mut frame = vec![0x88, payload.len().min(2) as u8];
                frame.extend_from_slice(&payload[..payload.len().min(2)]);
                let _ = conn.write_all(&frame);
                return;
            }
            (0x9, _) => 0x8A,
            (_, Broken::NoEcho | Broken::CloseWith(_)) => continue,
            _ => h[0],
        };
        let mut frame = vec![reply_opcode, len as u8];
        frame.extend_from_slice(&payload);
        if conn.write_all(&frame).is_err() {
            return;
        }
    }
}

fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

// ---- accept-key ----

#[test]
fn accept_key_rfc_vector() {
    let out = run(&["accept-key", "dGhlIHNhbXBsZSBub25jZQ=="], Input::Open);
    assert_eq!(out.code, Some(0));
    assert_eq!(out.stdout, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\n");
    assert_eq!(out.stderr, "");
}

#[test]
fn accept_key_warns_but_computes() {
    let out = run(&["accept-key", "dGhlIHNhbXBsZQ=="], Input::Open);
    assert_eq!(out.code, Some(0));
    assert_eq!(out.stdout, format!("{}\n", accept_key(b"dGhlIHNhbXBsZQ==")));
    assert!(
        out.stderr
            .contains("warning: the key decodes to 10 bytes, not 16"),
        "{}",
        out.stderr
    );
}

#[test]
fn accept_key_check_names_the_newline() {
    let out = run(
        &[
            "accept-key",
            "dGhlIHNhbXBsZSBub25jZQ==",
            "--check",
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\n",
        ],
        Input::Open,
    );
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("followed by a newline"),
        "{}",
        out.stderr
    );
}

// ---- decode ----

fn decode(args: &[&str]) -> Output {
    let mut all = vec!["decode"];
    all.extend_from_slice(args);
    run(&all, Input::Open)
}

#[test]
fn decode_rfc6455_5_7_single_frame_unmasked() {
    let out = decode(&["81", "05", "48", "65", "6c", "6c", "6f"]);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    for expected in [
        "  FIN       1 (final frame of the message)\n",
        "  RSV1-3    0 0 0\n",
        "  opcode    0x1 text\n",
        "  MASK      0 (not masked)\n",
        "  length    5 (7-bit length)\n",
        "  payload   5 bytes: 48 65 6c 6c 6f\n",
        "  text      \"Hello\" (valid UTF-8)\n",
        "1 frame, 7 bytes: well-formed\n",
    ] {
        assert!(
            out.stdout.contains(expected),
            "{expected:?} in\n{}",
            out.stdout
        );
    }
    // The same bytes in other notations.
    assert_eq!(decode(&["810548656c6c6f"]).stdout, out.stdout);
    assert_eq!(decode(&["0x81,0x05,0x48,0x65:6c:6c:6f"]).stdout, out.stdout);
}

#[test]
fn decode_rfc6455_5_7_masked_ping_pong_fragments() {
    // Masked "Hello" sent by a client.
    let out = decode(&["--role", "server", "81 85 37 fa 21 3d 7f 9f 4d 51 58"]);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("  MASK      1, key 37 fa 21 3d (the payload is shown unmasked)\n")
    );
    assert!(out.stdout.contains("  text      \"Hello\" (valid UTF-8)\n"));
    // A fragmented text, an unmasked ping and a pong, read from stdin.
    let out = run(
        &["decode", "--role", "client"],
        Input::Bytes(b"01 03 48 65 6c\n80 02 6c 6f\n89 05 48 65 6c 6c 6f\n8a 05 48 65 6c 6c 6f\n"),
    );
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert!(out.stdout.contains("  FIN       0 (more frames follow)\n"));
    assert!(out.stdout.contains("  opcode    0x0 continuation\n"));
    assert!(
        out.stdout
            .contains("  message   text, 5 bytes, from frames 1-2:\n            \"Hello\"\n")
    );
    assert!(out.stdout.contains("  opcode    0x9 ping\n"));
    assert!(out.stdout.contains("  opcode    0xA pong\n"));
    assert!(
        out.stdout.ends_with("4 frames, 23 bytes: well-formed\n"),
        "{}",
        out.stdout
    );
}

#[test]
fn decode_rfc6455_5_7_long_lengths() {
    // 256 bytes of binary: 16-bit length.
    let mut hex = String::from("82 7E 01 00");
    for i in 0..256 {
        hex.push_str(&format!(" {:02x}", i % 256));
    }
    let out = decode(&[&hex]);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert!(out.stdout.contains("  length    256 (16-bit length)\n"));
    assert!(out.stdout.contains(
        "            0010  10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f  ................\n"
    ));
    // 64 KiB of binary: 64-bit length, through stdin.
    let mut hex = String::from("82 7F 00 00 00 00 00 01 00 00\n");
    hex.push_str(&"00".repeat(65_536));
    let out = run(&["decode"], Input::Bytes(hex.as_bytes()));
    assert_eq!(out.code, Some(0));
    assert!(out.stdout.contains("  length    65536 (64-bit length)\n"));
    // A non-minimal encoding is shown, and is a problem: ferrows (like
    // RFC 6455 §5.2) fails the connection with 1002 by default.
    for (hex, field) in [
        ("81 7E 00 02 68 69", "16"),
        ("81 7F 00 00 00 00 00 00 00 02 68 69", "64"),
    ] {
        let out = decode(&[hex]);
        assert_eq!(out.code, Some(1), "{}", out.stdout);
        assert!(
            out.stdout
                .contains(&format!("  length    2 ({field}-bit length, not minimal")),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.contains(&format!(
                "problem:  payload length 2 in a {field}-bit field, not the minimal encoding (RFC 6455 §5.2"
            )),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout
                .contains("a receiver fails the connection with close code 1002"),
            "{}",
            out.stdout
        );
    }
}

#[test]
fn decode_explains_truncation() {
    let out = decode(&["81 05 48 65 6c"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stdout
            .contains("  problem:  truncated frame: the header says 5 payload bytes, 3 present\n"),
        "{}",
        out.stdout
    );
    let out = decode(&["82 7F"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stdout
            .contains("  problem:  truncated header: 64-bit length needs 8 more bytes\n"),
        "{}",
        out.stdout
    );
    // A whole frame, then one byte of the next.
    let out = decode(&["81 00 81"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stdout
            .contains("frame 2 at byte 2: 1 byte, truncated\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("truncated header: 1 byte, a frame header needs at least 2")
    );
}

#[test]
fn decode_rejects_invalid_hex() {
    let out = decode(&["81", "0x5g"]);
    assert_eq!(out.code, Some(1));
    assert_eq!(
        out.stderr,
        "error: invalid hex: \"g\" is not a hex digit (argument 2, character 4)\n"
    );
    let out = decode(&["8105486"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("odd number of digits (7)"),
        "{}",
        out.stderr
    );
}

#[test]
fn decode_names_protocol_violations_and_their_close_codes() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--role", "client", "c1 02 68 69"],
            "reserved bits set (no extension defines RSV1 unless permessage-deflate was negotiated: then pass --deflate): a receiver fails the connection with close code 1002 (protocol error)",
        ),
        (
            &["--role", "client", "83 00"],
            "reserved opcode 0x3: a receiver fails the connection with close code 1002 (protocol error)",
        ),
        (
            &["--role", "client", "09 00"],
            "fragmented control frame (RFC 6455 §5.5: control frames cannot be fragmented): a receiver fails the connection with close code 1002 (protocol error)",
        ),
        (
            &["--role", "client", "88 02 03 ed"],
            "invalid close code 1005: a receiver fails the connection with close code 1002 (protocol error)",
        ),
        (
            &["--role", "server", "81 02 68 69"],
            "client frame not masked (a client must mask every frame it sends): a receiver fails the connection with close code 1002 (protocol error)",
        ),
        (
            &["--role", "client", "81 02 c3 28"],
            "invalid UTF-8: a receiver fails the connection with close code 1007 (invalid frame payload data)",
        ),
    ];
    for (args, expected) in cases {
        let out = decode(args);
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.stdout);
        assert!(
            out.stdout.contains(&format!("  problem:  {expected}\n")),
            "{args:?}: expected {expected:?} in\n{}",
            out.stdout
        );
    }
    // A ping of 126 bytes.
    let mut hex = String::from("89 7E 00 7E");
    hex.push_str(&" 41".repeat(126));
    let out = decode(&["--role", "client", &hex]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stdout
            .contains("control frame of 126 bytes (at most 125 allowed)"),
        "{}",
        out.stdout
    );
    // With --deflate, RSV1 is allowed and the message is inflated: the
    // RFC 7692 §7.2.3.1 example "Hello".
    let out = decode(&["--deflate", "c1 07 f2 48 cd c9 c9 07 00"]);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert!(
        out.stdout.contains(
            "  message   text, 5 bytes, inflated, from frame 1:\n            \"Hello\"\n"
        ),
        "{}",
        out.stdout
    );
}

#[test]
fn decode_close_frames() {
    let out = decode(&["88 05 03 e8 62 79 65"]);
    assert_eq!(out.code, Some(0));
    assert!(
        out.stdout
            .contains("  close     code 1000 (normal closure), reason \"bye\"\n"),
        "{}",
        out.stdout
    );
    let out = decode(&["88 00"]);
    assert!(
        out.stdout
            .contains("  close     no status code (reported as 1005)\n")
    );
}

// ---- probe ----

#[test]
fn probe_passes_against_ferrows_serve_echo() {
    let server = EchoServer::start(&[]);
    let out = run(&["probe", &server.url()], Input::Open);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    for check in [
        "connect",
        "status",
        "line endings",
        "upgrade",
        "connection",
        "accept",
        "negotiation",
        "echo text",
        "echo binary",
        "length 125",
        "length 126",
        "length 65536",
        "fragmented",
        "ping",
        "close",
        "compression",
    ] {
        let line = out
            .stdout
            .lines()
            .find(|l| {
                l.get(6..)
                    .is_some_and(|rest| rest.starts_with(&format!("{check} ")))
            })
            .unwrap_or_else(|| panic!("no line for {check:?} in\n{}", out.stdout));
        assert!(line.starts_with("PASS  "), "{line}");
    }
    assert!(
        out.stdout.contains("TCP closed by the server"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("negotiated \"permessage-deflate\""),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .ends_with("result: PASS (16 pass, 0 fail, 0 warn, 0 skip)\n"),
        "{}",
        out.stdout
    );
}

/// Regression: a right accept value in a head with bare-LF line endings
/// is a warning about the line endings, not a failed accept check.
#[test]
fn probe_finds_the_accept_in_a_head_with_bare_lf_line_endings() {
    let server = BrokenServer::start(Broken::BareLf);
    let out = run(&["probe", "--timeout", "2", &server.url()], Input::Open);
    let accept = lines_starting(&out.stdout, "PASS  accept");
    assert_eq!(accept.len(), 1, "{}", out.stdout);
    assert_eq!(
        lines_starting(&out.stdout, "WARN  line endings").len(),
        1,
        "{}",
        out.stdout
    );
}

#[test]
fn probe_names_an_accept_with_a_trailing_newline() {
    let server = BrokenServer::start(Broken::NewlineAccept);
    let out = run(&["probe", "--timeout", "2", &server.url()], Input::Open);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let accept = lines_starting(&out.stdout, "FAIL  accept");
    assert_eq!(accept.len(), 1, "{}", out.stdout);
    assert!(
        accept[0].contains("the right value followed by a newline"),
        "{}",
        accept[0]
    );
    assert!(
        lines_starting(&out.stdout, "WARN  line endings")[0]
            .contains("line 4 (Sec-WebSocket-Accept)"),
        "{}",
        out.stdout
    );
    let after = lines_starting(&out.stdout, "FAIL  after head");
    assert!(
        after[0].contains(
            "2 bytes (0d 0a \"\\r\\n\") follow the head (an extra line ending after the head?)"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("FAIL  echo text          protocol error: reserved opcode 0xD"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("result: FAIL"), "{}", out.stdout);
}

#[test]
fn probe_finds_the_under_126_bytes_bug() {
    let server = BrokenServer::start(Broken::Under126);
    let out = run(&["probe", "--timeout", "2", &server.url()], Input::Open);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    for pass in [
        "accept",
        "echo text",
        "length 125",
        "fragmented",
        "ping",
        "close",
    ] {
        assert_eq!(
            lines_starting(&out.stdout, &format!("PASS  {pass} ")).len(),
            1,
            "{pass} in\n{}",
            out.stdout
        );
    }
    for fail in ["echo binary", "length 126", "length 65536"] {
        assert_eq!(
            lines_starting(&out.stdout, &format!("FAIL  {fail} ")).len(),
            1,
            "{fail} in\n{}",
            out.stdout
        );
    }
    assert!(
        lines_starting(&out.stdout, "FAIL  length 126 ")[0]
            .contains("a server that only reads the 7-bit length fails here"),
        "{}",
        out.stdout
    );
    assert!(lines_starting(&out.stdout, "SKIP  compression")[0].contains("not negotiated"));
}

#[test]
fn probe_skips_echo_checks_when_the_server_does_not_echo() {
    let server = BrokenServer::start(Broken::NoEcho);
    let out = run(&["probe", "--timeout", "1", &server.url()], Input::Open);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert!(
        lines_starting(&out.stdout, "SKIP  echo text")[0]
            .contains("no echo: nothing came back within 1s; the echo checks are skipped"),
        "{}",
        out.stdout
    );
    for skipped in [
        "echo binary",
        "length 125",
        "length 126",
        "length 65536",
        "fragmented",
    ] {
        assert_eq!(
            lines_starting(&out.stdout, &format!("SKIP  {skipped} ")).len(),
            1
        );
    }
    assert_eq!(
        lines_starting(&out.stdout, "PASS  ping ").len(),
        1,
        "{}",
        out.stdout
    );
    assert_eq!(
        lines_starting(&out.stdout, "PASS  close ").len(),
        1,
        "{}",
        out.stdout
    );
}

#[test]
fn probe_fails_when_nothing_listens() {
    // A port that was free a moment ago.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run(&["probe", &format!("ws://127.0.0.1:{port}/")], Input::Open);
    assert_eq!(out.code, Some(1));
    assert!(out.stdout.contains("FAIL  connect "), "{}", out.stdout);
}

// ---- connect ----

#[test]
fn connect_in_a_pipe_echoes_every_line() {
    let server = EchoServer::start(&[]);
    let out = run(&["connect", &server.url()], Input::Bytes(b"a\nb\n"));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "a\nb\n");
    assert!(
        out.stderr.contains("closed: 1000 (normal closure)"),
        "{}",
        out.stderr
    );
}

#[test]
fn connect_execute_binary_json_and_commands() {
    let server = EchoServer::start(&[]);
    let out = run(
        &[
            "connect",
            &server.url(),
            "-x",
            "hello",
            "-x",
            "/binary 01 02 ff",
            "-x",
            "/ping abc",
            "-x",
            r#"{"b":[1,{}],"a":"x"}"#,
            "-x",
            "//slash",
            "-x",
            "esc \u{1b}[2J",
            "--json",
            "--wait",
            "0.5",
        ],
        Input::Open,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "hello\n(binary) 01 02 ff\n{\n  \"b\": [\n    1,\n    {}\n  ],\n  \"a\": \"x\"\n}\n/slash\nesc \\u{1b}[2J\n"
    );
    assert!(out.stderr.contains("pong \"abc\" after "), "{}", out.stderr);
    // --binary sends each line as bytes.
    let out = run(
        &["connect", "--binary", &server.url()],
        Input::Bytes(b"hi\n"),
    );
    assert_eq!(out.stdout, "(binary) 68 69\n");
}

#[test]
fn connect_exit_status_follows_the_close_code() {
    let server = EchoServer::start(&[]);
    let out = run(
        &["connect", &server.url(), "-x", "/close 4000 see you"],
        Input::Open,
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("closed: 4000"), "{}", out.stderr);

    let going_away = BrokenServer::start(Broken::CloseWith(1001));
    let out = run(&["connect", &going_away.url()], Input::Open);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("closed: 1001 bye"), "{}", out.stderr);

    let custom = BrokenServer::start(Broken::CloseWith(4001));
    let out = run(&["connect", &custom.url()], Input::Open);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("closed: 4001 bye"), "{}", out.stderr);

    let dropped = BrokenServer::start(Broken::Drop);
    let out = run(&["connect", &dropped.url()], Input::Open);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("closed: 1006"), "{}", out.stderr);
}

#[test]
fn connect_closes_with_1000_on_sigint() {
    let server = EchoServer::start(&[]);
    let mut child = Command::new(BIN)
        .args(["connect", &server.url()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut first).unwrap();
    assert!(first.starts_with("connected to "), "{first}");
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("connect did not exit after SIGINT");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    assert_eq!(status.code(), Some(0), "{rest}");
    assert!(rest.contains("closed: 1000 (normal closure)"), "{rest}");
    assert!(server.log_with("close=1000").contains("close=1000"));
}

#[test]
fn connect_refuses_a_bad_handshake() {
    let server = BrokenServer::start(Broken::NewlineAccept);
    let out = run(
        &["connect", &server.url(), "-x", "hi", "-w", "0.2"],
        Input::Open,
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("closed: 1002"), "{}", out.stderr);
}

// ---- --trace ----

#[test]
fn trace_on_connect_shows_handshake_and_frames() {
    let server = EchoServer::start(&[]);
    let out = run(
        &[
            "connect",
            "--trace",
            &server.url(),
            "-x",
            "Hello",
            "-w",
            "0.3",
        ],
        Input::Open,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let err = &out.stderr;
    for expected in [
        " > GET / HTTP/1.1\n",
        " > Sec-WebSocket-Version: 13\n",
        " < HTTP/1.1 101 Switching Protocols\n",
        " < Upgrade: websocket\n",
    ] {
        assert!(err.contains(expected), "{expected:?} in\n{err}");
    }
    let sent = lines_containing(err, " > text ");
    assert_eq!(sent.len(), 1, "{err}");
    assert!(sent[0].contains("fin=1 rsv=000 mask=1 key="), "{}", sent[0]);
    assert!(
        sent[0].ends_with("len=5 | 48 65 6c 6c 6f | \"Hello\""),
        "{}",
        sent[0]
    );
    let received = lines_containing(err, " < text ");
    assert!(
        received[0]
            .ends_with("text         fin=1 rsv=000 mask=0 len=5 | 48 65 6c 6c 6f | \"Hello\""),
        "{}",
        received[0]
    );
    assert_eq!(lines_containing(err, " > close ").len(), 1, "{err}");
    assert!(lines_containing(err, " < close ")[0].contains("code 1000 (normal closure)"));
}

#[test]
fn trace_on_the_server_prefixes_the_peer() {
    let server = EchoServer::start(&["--trace"]);
    let out = run(
        &["connect", &server.url(), "-x", "Hello", "-w", "0.2"],
        Input::Open,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let log = server.log_with("TCP FIN");
    let request = lines_containing(&log, " < GET / HTTP/1.1");
    assert_eq!(request.len(), 1, "{log}");
    assert!(request[0].starts_with("[127.0.0.1:"), "{}", request[0]);
    assert_eq!(
        lines_containing(&log, " > HTTP/1.1 101 Switching Protocols").len(),
        1
    );
    let received = lines_containing(&log, " < text ");
    assert!(received[0].contains("mask=1 key="), "{log}");
    assert!(
        received[0].ends_with("len=5 | 48 65 6c 6c 6f | \"Hello\""),
        "{log}"
    );
    assert!(
        lines_containing(&log, " > text ")[0].contains("mask=0 len=5"),
        "{log}"
    );
}

#[test]
fn connect_pings_at_the_interval() {
    let server = EchoServer::start(&[]);
    let out = run(
        &[
            "connect",
            "--trace",
            "--ping-interval",
            "0.2",
            &server.url(),
            "-x",
            "hi",
            "-w",
            "1.1",
        ],
        Input::Open,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // Ticks at 0.2, 0.4 ... 1.0 s: at least 3 even on a loaded machine.
    let pings = lines_containing(&out.stderr, " > ping ");
    assert!(pings.len() >= 3, "{}", out.stderr);
    assert!(pings[0].contains("| \"ferrows-1\""), "{}", pings[0]);
    assert!(
        lines_containing(&out.stderr, " < pong ").len() >= 2,
        "{}",
        out.stderr
    );
}

/// A scratch directory, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "ferrows-tools-{name}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for localhost and 127.0.0.1, made with the
/// `openssl` command (Debian package openssl).
fn self_signed(dir: &TempDir) -> (String, String) {
    let config = dir.0.join("openssl.cnf");
    std::fs::write(
        &config,
        "[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n\
         [dn]\nCN = localhost\n\
         [ext]\nbasicConstraints = critical, CA:FALSE\n\
         subjectAltName = DNS:localhost, IP:127.0.0.1\n\
         keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .arg("-config")
        .arg(&config)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl to make a test certificate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        cert.to_str().unwrap().to_owned(),
        key.to_str().unwrap().to_owned(),
    )
}

#[test]
fn probe_and_connect_over_tls() {
    let dir = TempDir::new("tls");
    let (cert, key) = self_signed(&dir);
    let server = EchoServer::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let url = format!("wss://localhost:{}/", server.port);

    let out = run(&["probe", "--ca", &cert, &url], Input::Open);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert!(
        lines_starting(&out.stdout, "PASS  connect ")[0].contains("(TLS)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("result: PASS (16 pass, 0 fail"),
        "{}",
        out.stdout
    );

    let out = run(&["connect", "--ca", &cert, &url], Input::Bytes(b"secret\n"));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "secret\n");
    let out = run(
        &["connect", "--insecure", &url],
        Input::Bytes(b"any cert\n"),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "any cert\n");
    // Without the CA, the certificate is refused.
    let out = run(&["connect", &url, "-x", "no"], Input::Open);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("TLS handshake"), "{}", out.stderr);
    let out = run(&["probe", &url], Input::Open);
    assert_eq!(out.code, Some(1));
    assert!(
        lines_starting(&out.stdout, "FAIL  connect ")[0].contains("certificate"),
        "{}",
        out.stdout
    );
}

fn lines_containing<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}
