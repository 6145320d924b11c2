//! Captures: `connect --pcap` and `probe --pcap` against `ferrows serve
//! echo`, read back by `ferrows decode --pcap` and by a real dissector
//! (`tshark`, Debian package `tshark`); a `tcpdump -i lo` capture of a
//! third-party client (python-websockets, from PyPI in the repository's
//! `.venv`) talking to ferrows; captures of broken servers; `SSLKEYLOGFILE`
//! with a real tcpdump capture of wss:// decrypted by tshark; truncated and
//! garbage files.
//!
//! tshark and tcpdump are required: a test fails (never skips) without
//! them. `.ci/run` installs both.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ferrows_proto::handshake::accept_key;
use serde_json::Value;
use support::{Server, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_ferrows");
/// Every run of a program here is bounded by this.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Runs a program to completion (killed past [`RUN_LIMIT`]).
fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (is it installed?): {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let e = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} did not finish within {RUN_LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ferrows(args: &[&str]) -> Output {
    run(BIN, args, &[])
}

/// `decode --pcap FILE --json`, parsed; also checks the text form runs.
fn decode_json(file: &Path) -> (Value, Output) {
    let path = file.to_str().unwrap();
    let out = ferrows(&["decode", "--pcap", path, "--json"]);
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)));
    (json, out)
}

/// A frame as both readers list it: (FIN, opcode, MASK, payload length).
type Frame = (bool, u8, bool, u64);

/// Our frames per (source port, destination port), complete frames only.
fn our_frames(json: &Value) -> BTreeMap<(u16, u16), Vec<Frame>> {
    let mut map = BTreeMap::new();
    let port = |v: &Value| -> u16 {
        v.as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    for conn in json["connections"].as_array().unwrap() {
        if conn["websocket"] != Value::Bool(true) {
            continue;
        }
        for dir in conn["directions"].as_array().unwrap() {
            let frames: Vec<Frame> = dir["frames"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f["complete"] == Value::Bool(true))
                .map(|f| {
                    (
                        f["fin"].as_bool().unwrap(),
                        f["opcode"].as_u64().unwrap() as u8,
                        f["masked"].as_bool().unwrap(),
                        f["payload_len"].as_u64().unwrap(),
                    )
                })
                .collect();
            if !frames.is_empty() {
                map.insert((port(&dir["from"]), port(&dir["to"])), frames);
            }
        }
    }
    map
}

fn tshark_bool(s: &str) -> bool {
    matches!(s, "1" | "True" | "true")
}

/// tshark's WebSocket frames per (source port, destination port).
fn tshark_frames(
    file: &Path,
    server_port: u16,
    extra: &[&str],
) -> BTreeMap<(u16, u16), Vec<Frame>> {
    let decode_as = format!("tcp.port=={server_port},http");
    let mut args = vec!["-r", file.to_str().unwrap()];
    if extra.is_empty() {
        args.extend_from_slice(&["-d", &decode_as]);
    }
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "-Y",
        "websocket",
        "-T",
        "fields",
        "-E",
        "separator=\t",
        "-e",
        "tcp.srcport",
        "-e",
        "tcp.dstport",
        "-e",
        "websocket.fin",
        "-e",
        "websocket.opcode",
        "-e",
        "websocket.mask",
        "-e",
        "websocket.payload_length",
        "-e",
        "websocket.payload_length_ext_16",
        "-e",
        "websocket.payload_length_ext_64",
    ]);
    let out = run("tshark", &args, &[]);
    assert!(out.status.success(), "tshark: {}", text(&out.stderr));
    let mut map: BTreeMap<(u16, u16), Vec<Frame>> = BTreeMap::new();
    for line in text(&out.stdout).lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 8, "tshark line {line:?}");
        let split = |s: &str| {
            s.split(',')
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let (fins, ops, masks, lens) = (
            split(cols[2]),
            split(cols[3]),
            split(cols[4]),
            split(cols[5]),
        );
        // The extended lengths are listed only for the frames that have
        // them, in order.
        let mut ext16 = split(cols[6]).into_iter();
        let mut ext64 = split(cols[7]).into_iter();
        let key = (cols[0].parse().unwrap(), cols[1].parse().unwrap());
        for i in 0..fins.len() {
            let len = match lens[i].parse::<u64>().unwrap() {
                126 => ext16.next().unwrap().parse().unwrap(),
                127 => ext64.next().unwrap().parse().unwrap(),
                n => n,
            };
            map.entry(key).or_default().push((
                tshark_bool(&fins[i]),
                ops[i].parse().unwrap(),
                tshark_bool(&masks[i]),
                len,
            ));
        }
    }
    map
}

fn server_port(server: &Server) -> u16 {
    server.addr.port()
}

fn echo_server() -> Server {
    Server::start(&["serve", "echo", "--port", "0", "--bind", "127.0.0.1"])
}

#[test]
fn connect_and_probe_captures_read_back_by_decode_and_tshark() {
    let server = echo_server();
    let dir = TempDir::new("pcap-connect");
    let url = format!("ws://127.0.0.1:{}/", server_port(&server));
    // connect: a text, a compressed 3000-byte text, a binary, a close.
    let file = dir.0.join("connect.pcapng");
    let long = "squeeze me ".repeat(300);
    let out = ferrows(&[
        "connect",
        &url,
        "--compress",
        "--pcap",
        file.to_str().unwrap(),
        "-x",
        "hello",
        "-x",
        &long,
        "-x",
        "/binary 00 01 02",
        "-w",
        "0.5",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (json, dec) = decode_json(&file);
    assert!(dec.status.success(), "{}", text(&dec.stdout));
    assert_eq!(json["format"], "pcapng");
    assert_eq!(json["websocket_connections"], 1, "{json}");
    let conn = &json["connections"][0];
    assert_eq!(conn["deflate"]["server_max_window_bits"], 15, "{conn}");
    let ours = our_frames(&json);
    let client = &ours.values().next().unwrap();
    // The compressed message: RSV1 on the wire, far fewer bytes than 3300.
    let frames = conn["directions"][0]["frames"].as_array().unwrap();
    let squeezed = frames
        .iter()
        .find(|f| f["rsv1"] == Value::Bool(true))
        .expect("a compressed frame");
    assert!(
        squeezed["payload_len"].as_u64().unwrap() < 200,
        "{squeezed}"
    );
    assert_eq!(client.len(), 4, "{client:?}");
    let theirs = tshark_frames(&file, server_port(&server), &[]);
    assert_eq!(ours, theirs, "decode --pcap and tshark disagree");
    // The text form explains the inflated message.
    let out = ferrows(&["decode", "--pcap", file.to_str().unwrap()]);
    let t = text(&out.stdout);
    assert!(
        t.contains("message   text, 3300 bytes, inflated, from frame 2:"),
        "{t}"
    );

    // probe: every length encoding, a fragmented text, ping, close, and
    // a compressed connection; several connections in one file.
    let file = dir.0.join("probe.pcapng");
    let out = ferrows(&["probe", &url, "--pcap", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let (json, dec) = decode_json(&file);
    assert!(dec.status.success(), "{}", text(&dec.stdout));
    let ours = our_frames(&json);
    let all: Vec<&Frame> = ours.values().flatten().collect();
    assert!(all.iter().any(|f| f.3 == 65_536), "a 64-bit length");
    assert!(all.iter().any(|f| !f.0 && f.1 == 1), "a first fragment");
    assert!(all.iter().any(|f| f.1 == 0), "a continuation");
    assert!(all.iter().any(|f| f.1 == 9), "a ping");
    let theirs = tshark_frames(&file, server_port(&server), &[]);
    assert_eq!(ours, theirs, "decode --pcap and tshark disagree");
}

#[test]
fn pcap_max_bytes_stops_the_capture_not_the_connection() {
    let server = echo_server();
    let dir = TempDir::new("pcap-cap");
    let url = format!("ws://127.0.0.1:{}/", server_port(&server));
    let file = dir.0.join("capped.pcapng");
    let big = "x".repeat(5000);
    let out = ferrows(&[
        "connect",
        &url,
        "--pcap",
        file.to_str().unwrap(),
        "--pcap-max-bytes",
        "3000",
        "-x",
        "small",
        "-x",
        &big,
        "-x",
        "after",
        "-w",
        "0.5",
    ]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Every echo still came back.
    assert!(stdout.contains("small") && stdout.contains(&big) && stdout.contains("after"));
    assert_eq!(
        stderr.matches("capture to").count(),
        1,
        "one log line when the capture stops: {stderr}"
    );
    assert!(stderr.contains("--pcap-max-bytes"), "{stderr}");
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size <= 3000, "the file has {size} bytes");
    let (json, _) = decode_json(&file);
    assert_eq!(json["websocket_connections"], 1, "{json}");
}

// ---- third-party client, captured by tcpdump ----

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The repository's `.venv` (as scripts/autobahn makes it) with
/// python-websockets installed.
fn python_with_websockets() -> PathBuf {
    let venv = repo_root().join(".venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let out = run("python3", &["-m", "venv", venv.to_str().unwrap()], &[]);
        assert!(
            out.status.success(),
            "python3 -m venv: {}",
            text(&out.stderr)
        );
    }
    let has = run(python.to_str().unwrap(), &["-c", "import websockets"], &[]);
    if !has.status.success() {
        let pip = venv.join("bin/pip");
        let out = run(
            pip.to_str().unwrap(),
            &[
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "websockets==15.0.1",
            ],
            &[],
        );
        assert!(out.status.success(), "pip install: {}", text(&out.stderr));
    }
    python
}

/// `tcpdump -i lo` of one port, stopped (SIGINT) when dropped.
struct Tcpdump {
    child: Child,
    file: PathBuf,
}

impl Tcpdump {
    fn start(file: &Path, port: u16) -> Tcpdump {
        let mut child = Command::new("tcpdump")
            .args([
                "-i",
                "lo",
                "-U",
                // Keep root's rights (the file is in a root-only tempdir).
                "-Z",
                "root",
                "-s",
                "0",
                "-w",
                file.to_str().unwrap(),
                &format!("tcp port {port}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (Debian package tcpdump) must be installed");
        // It says "listening on lo" once it captures.
        let mut err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut seen = Vec::new();
            let mut b = [0u8; 256];
            let mut told = false;
            while let Ok(n) = err.read(&mut b) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&b[..n]);
                if !told && text(&seen).contains("listening on") {
                    told = true;
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tcpdump did not start capturing");
        }
        // "listening on" can come a moment before the filter sees packets
        // on a loaded machine.
        thread::sleep(Duration::from_millis(1000));
        Tcpdump {
            child,
            file: file.to_owned(),
        }
    }

    /// Stops it and waits until the file is complete.
    fn stop(mut self) {
        // Let the last packets through the kernel's buffer: with -U every
        // packet is written as it comes, so wait (bounded) until the file
        // has stopped growing for a second.
        let size = |f: &Path| std::fs::metadata(f).map_or(0, |m| m.len());
        let deadline = Instant::now() + Duration::from_secs(15);
        let (mut last, mut since) = (size(&self.file), Instant::now());
        while Instant::now() < deadline && since.elapsed() < Duration::from_secs(1) {
            thread::sleep(Duration::from_millis(100));
            let now = size(&self.file);
            if now != last {
                (last, since) = (now, Instant::now());
            }
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PY_CLIENT: &str = r#"
import asyncio, socket, sys, base64, os
import websockets

async def main(host, port):
    url = f"ws://{host}:{port}/"
    async with websockets.connect(url, compression=None) as ws:
        await ws.send("hello from python")
        await ws.recv()
        await ws.send(bytes(300))
        await ws.recv()
        await ws.send(["frag", "mented"])
        await ws.recv()
    async with websockets.connect(url, compression="deflate") as ws:
        await ws.send("squeeze me " * 50)
        await ws.recv()
    # A connection cut in the middle of a frame.
    s = socket.create_connection((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    # A masked 200-byte binary frame, only half of it sent.
    frame = bytes([0x82, 0x80 | 126, 0, 200, 1, 2, 3, 4]) + bytes(200)
    s.sendall(frame[:100])
    await asyncio.sleep(0.2)
    s.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"#;

#[test]
fn tcpdump_of_python_websockets_is_explained() {
    let python = python_with_websockets();
    let server = echo_server();
    let port = server_port(&server);
    let dir = TempDir::new("pcap-tcpdump");
    let file = dir.0.join("lo.pcap");
    let script = dir.0.join("client.py");
    std::fs::write(&script, PY_CLIENT).unwrap();
    let dump = Tcpdump::start(&file, port);
    let out = run(
        python.to_str().unwrap(),
        &[script.to_str().unwrap(), "127.0.0.1", &port.to_string()],
        &[],
    );
    dump.stop();
    assert!(out.status.success(), "python client: {}", text(&out.stderr));

    let (json, dec) = decode_json(&file);
    assert_eq!(json["format"], "pcap");
    assert_eq!(
        json["websocket_connections"],
        3,
        "{}",
        text(&ferrows(&["decode", "--pcap", file.to_str().unwrap()]).stdout)
    );
    let conns = json["connections"].as_array().unwrap();
    // 1: plain; its client frames: text, binary, a fragmented text
    // (websockets ends it with an empty continuation), close.
    let c1: Vec<(bool, u64)> = conns[0]["directions"][0]["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["fin"].as_bool().unwrap(), f["opcode"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        c1,
        vec![
            (true, 1),
            (true, 2),
            (false, 1),
            (false, 0),
            (true, 0),
            (true, 8)
        ],
        "{}",
        conns[0]
    );
    assert_eq!(conns[0]["problems"], 0, "{}", conns[0]);
    // 2: deflate negotiated, the message compressed and inflated.
    assert!(conns[1]["deflate"].is_object(), "{}", conns[1]);
    assert_eq!(conns[1]["problems"], 0, "{}", conns[1]);
    let t = text(&ferrows(&["decode", "--pcap", file.to_str().unwrap()]).stdout);
    assert!(t.contains("message   text, 550 bytes, inflated"), "{t}");
    // 3: cut mid-frame: a truncated frame, reported, not a crash.
    let cut = &conns[2]["directions"][0];
    let last = cut["frames"].as_array().unwrap().last().unwrap();
    assert_eq!(last["complete"], false, "{cut}");
    assert_eq!(last["payload_len"], 200);
    assert!(
        last["problems"][0]
            .as_str()
            .unwrap()
            .contains("truncated frame: the header says 200 payload bytes, 92 present"),
        "{last}"
    );
    assert_eq!(dec.status.code(), Some(1), "a problem found: exit status 1");
    // The same frames as tshark.
    assert_eq!(our_frames(&json), tshark_frames(&file, port, &[]));
}

// ---- wss:// with SSLKEYLOGFILE ----

fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "openssl: {}", text(&out.stderr));
    (cert, key)
}

#[test]
fn sslkeylogfile_lets_tshark_decrypt_a_tcpdump_of_wss() {
    let dir = TempDir::new("pcap-wss");
    let (cert, key) = make_cert(&dir.0);
    let server = Server::start(&[
        "serve",
        "echo",
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let port = server_port(&server);
    let file = dir.0.join("wss.pcap");
    let keylog = dir.0.join("keys.log");
    let plain = dir.0.join("plain.pcapng");
    let dump = Tcpdump::start(&file, port);
    let out = run(
        BIN,
        &[
            "connect",
            &format!("wss://127.0.0.1:{port}/"),
            "--insecure",
            "--pcap",
            plain.to_str().unwrap(),
            "-x",
            "secret hello",
            "-w",
            "0.5",
        ],
        &[("SSLKEYLOGFILE", keylog.to_str().unwrap())],
    );
    dump.stop();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("SSLKEYLOGFILE is set: TLS session keys are written to"),
        "{stderr}"
    );
    let keys = std::fs::read_to_string(&keylog).unwrap();
    assert!(keys.contains("CLIENT_TRAFFIC_SECRET_0"), "{keys}");
    // Without the keys tshark sees only TLS; with them, the frames.
    let as_tls = format!("tcp.port=={port},tls");
    let inner = format!("tls.port=={port},http");
    let tls_args = ["-d", as_tls.as_str(), "-d", inner.as_str()];
    assert!(tshark_frames(&file, port, &tls_args).is_empty());
    let keyopt = format!("tls.keylog_file:{}", keylog.display());
    let mut with_keys = tls_args.to_vec();
    with_keys.extend_from_slice(&["-o", &keyopt]);
    let decrypted = tshark_frames(&file, port, &with_keys);
    // --pcap recorded the same frames as plaintext.
    let (json, _) = decode_json(&plain);
    assert_eq!(our_frames(&json), decrypted);
    assert!(!decrypted.is_empty());
}

// ---- broken servers ----

#[derive(Clone, Copy)]
enum Broken {
    /// The accept value followed by "\n" (Python's base64.encodebytes).
    NewlineAccept,
    /// Reads and writes the 7-bit length only.
    Under126,
}

/// A hand-written broken server on a free port; stops when dropped.
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
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let key = text(&head)
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    let accept = accept_key(key.as_bytes());
    let end = match mode {
        Broken::NewlineAccept => "\n\r\n\r\n",
        Broken::Under126 => "\r\n\r\n",
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}{end}"
    );
    if conn.write_all(response.as_bytes()).is_err() {
        return;
    }
    // A naive echo: the 7-bit length only.
    for _ in 0..1000 {
        let mut h = [0u8; 2];
        if conn.read_exact(&mut h).is_err() {
            return;
        }
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
        if h[0] & 0x0F == 0x8 {
            let _ = conn.write_all(&[0x88, 0x00]);
            return;
        }
        let mut frame = vec![h[0], len as u8];
        frame.extend_from_slice(&payload);
        if conn.write_all(&frame).is_err() {
            return;
        }
    }
}

fn probe_capture(mode: Broken, tag: &str) -> (Value, String, TempDir) {
    let server = BrokenServer::start(mode);
    let dir = TempDir::new(tag);
    let file = dir.0.join("broken.pcapng");
    let out = ferrows(&[
        "probe",
        &format!("ws://127.0.0.1:{}/", server.port),
        "--timeout",
        "2",
        "--pcap",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let (json, dec) = decode_json(&file);
    assert_eq!(dec.status.code(), Some(1), "faults found: exit status 1");
    let out = ferrows(&["decode", "--pcap", file.to_str().unwrap()]);
    (json, text(&out.stdout), dir)
}

#[test]
fn a_capture_of_a_newline_accept_names_the_fault() {
    let (json, t, _dir) = probe_capture(Broken::NewlineAccept, "pcap-newline");
    let faults = &json["connections"][0]["faults"];
    let accept = faults
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "accept")
        .unwrap_or_else(|| panic!("no accept fault: {faults}"));
    assert!(
        accept["detail"]
            .as_str()
            .unwrap()
            .contains("the right value followed by a newline"),
        "{accept}"
    );
    assert!(t.contains("FAIL  accept"), "{t}");
    assert!(t.contains("FAIL  after head"), "{t}");
}

#[test]
fn a_capture_of_a_7_bit_only_server_names_the_fault() {
    let (json, t, _dir) = probe_capture(Broken::Under126, "pcap-7bit");
    let named = json["connections"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["faults"].as_array().cloned().unwrap_or_default())
        .any(|f| f["name"] == "7-bit-only lengths");
    assert!(named, "{t}");
    assert!(
        t.contains("a server that only reads the 7-bit length fails here"),
        "{t}"
    );
    // The first connection's handshake itself is fine.
    assert!(
        !json["connections"][0]["faults"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "accept"),
        "{t}"
    );
}

// ---- unreadable files ----

#[test]
fn truncated_and_garbage_files_get_a_clear_error() {
    let server = echo_server();
    let dir = TempDir::new("pcap-bad");
    let file = dir.0.join("good.pcapng");
    let url = format!("ws://127.0.0.1:{}/", server_port(&server));
    let out = ferrows(&[
        "connect",
        &url,
        "--pcap",
        file.to_str().unwrap(),
        "-x",
        "one",
        "-x",
        "two",
        "-w",
        "0.3",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let good = std::fs::read(&file).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "the capture is empty"),
        ("short", b"\x0a\x0d".to_vec(), "only 2 bytes long"),
        (
            "garbage",
            b"GET / HTTP/1.1\r\n\r\n".repeat(10),
            "not a pcap or pcapng file: it starts with 47 45 54 20",
        ),
        (
            "cut",
            good[..good.len() - 30].to_vec(),
            "the capture is truncated after packet",
        ),
        (
            "header only",
            good[..20].to_vec(),
            "not a readable pcapng file",
        ),
    ];
    for (name, bytes, expected) in cases {
        let path = dir.0.join(format!("{}.pcapng", name.replace(' ', "-")));
        std::fs::write(&path, &bytes).unwrap();
        let out = ferrows(&["decode", "--pcap", path.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(err.contains(expected), "{name}: {err}");
    }
    // Standard input works like a file.
    let mut child = Command::new(BIN)
        .args(["decode", "--pcap", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&good).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("1 WebSocket connections of 1: well-formed"));
}

/// `serve echo --pcap` and `serve chat --pcap`: the servers record every
/// connection through the accept loop's stream wrap; what they wrote is
/// read back by `decode --pcap` and by tshark, frame for frame.
#[test]
fn servers_record_their_connections_read_back_by_decode_and_tshark() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = TempDir::new("pcap-serve");
    for kind in ["echo", "chat"] {
        let file = dir.0.join(format!("serve-{kind}.pcapng"));
        let mut args = vec!["serve", kind, "--port", "0", "--bind", "127.0.0.1"];
        if kind == "chat" {
            args.extend_from_slice(&["--tick", "0"]);
        }
        args.extend_from_slice(&["--pcap", file.to_str().unwrap()]);
        let mut server = Server::start(&args);
        let url = format!("ws://127.0.0.1:{}/", server_port(&server));
        let long = "squeeze me ".repeat(300);
        // Two connections: one plain, one compressed.
        for compress in [false, true] {
            let mut argv = vec!["connect", url.as_str(), "-x", "hello", "-x", &long];
            if compress {
                argv.push("--compress");
            }
            argv.extend_from_slice(&["-x", "/binary 00 01 02", "-w", "0.5"]);
            let out = ferrows(&argv);
            assert!(out.status.success(), "{kind}: {}", text(&out.stderr));
        }
        let status = rt.block_on(server.terminate(Duration::from_secs(10)));
        assert!(status.success(), "{kind}: {}", server.log());
        let (json, dec) = decode_json(&file);
        assert!(dec.status.success(), "{kind}: {}", text(&dec.stdout));
        assert_eq!(json["format"], "pcapng", "{kind}");
        assert_eq!(json["websocket_connections"], 2, "{kind}: {json}");
        let ours = our_frames(&json);
        // Each connection: 3 data frames and a close from the client; the
        // server's answers (echoes, or chat's msg: and notices) and close.
        assert_eq!(
            ours.len(),
            4,
            "{kind}: two flows, both directions: {ours:?}"
        );
        let client_frames: usize = ours
            .iter()
            .filter(|((src, _), _)| *src != server_port(&server))
            .map(|(_, f)| f.len())
            .sum();
        assert_eq!(client_frames, 8, "{kind}: {ours:?}");
        assert!(
            ours.values().flatten().any(|f| f.1 == 8),
            "{kind}: a close frame"
        );
        let theirs = tshark_frames(&file, server_port(&server), &[]);
        assert_eq!(ours, theirs, "{kind}: decode --pcap and tshark disagree");
    }
}
