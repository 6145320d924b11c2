//! Runs the built `ferrows` binary as a server, reads its log, and talks
//! to it: raw HTTP, raw WebSocket handshakes, and ferrows clients.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrows::{Message, WebSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A real `redis-server` per test (only the cluster tests start one).
#[allow(dead_code)]
pub(crate) mod redis;

/// The environment variables of `serve echo`: cleared for every run so the
/// caller's environment cannot change a test.
const ECHO_VARS: [&str; 6] = [
    "BIND_ADDRESS",
    "BIND_PORT",
    "HEARTBEAT_INTERVAL",
    "HIGH_WATER_MARK",
    "MAX_MESSAGE_SIZE",
    "MAX_FRAGMENTS",
];

/// How long a server may take to start (a loaded machine, a debug build).
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrows"));
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for var in ECHO_VARS {
        cmd.env_remove(var);
    }
    // No connection token from the caller's environment either.
    cmd.env_remove("FERROWS_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `ferrows` to its end (bounded): its exit status and stderr.
pub(crate) fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut child = command(args, env).spawn().expect("start ferrows");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + START_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferrows {args:?} did not exit within {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().expect("stderr reader"))
}

/// The lines a server wrote to stderr so far.
type Log = Arc<Mutex<Vec<String>>>;

/// A running `ferrows` server; killed when dropped.
pub(crate) struct Server {
    child: Child,
    log: Log,
    /// What follows `listening on ` in the log, e.g. `[::]:40123`.
    pub(crate) listening: String,
    /// Where to connect: loopback, at the port it listens on.
    pub(crate) addr: SocketAddr,
}

/// Why a server did not start.
#[derive(Debug)]
pub(crate) struct StartError {
    pub(crate) status: Option<ExitStatus>,
    pub(crate) log: String,
}

impl Server {
    /// Starts `ferrows ARGS` and waits for its `listening on` line.
    pub(crate) fn start(args: &[&str]) -> Server {
        Server::start_with_env(args, &[])
    }

    /// Like [`Server::start`], with environment variables.
    pub(crate) fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        match Server::try_start(args, env) {
            Ok(server) => server,
            Err(e) => panic!(
                "ferrows {args:?} did not start ({:?}):\n{}",
                e.status, e.log
            ),
        }
    }

    /// Starts a server, or reports its exit status and log if it exits or
    /// does not say it listens in time.
    pub(crate) fn try_start(args: &[&str], env: &[(&str, &str)]) -> Result<Server, StartError> {
        let mut child = command(args, env).spawn().expect("start ferrows");
        let stderr = child.stderr.take().expect("stderr");
        let log: Log = Arc::default();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let found = log.lock().unwrap().iter().find_map(|l| {
                l.split_once("listening on ")
                    .map(|(_, a)| a.trim().to_owned())
            });
            if let Some(listening) = found {
                let addr = connect_addr(&listening);
                return Ok(Server {
                    child,
                    log,
                    listening,
                    addr,
                });
            }
            let status = child.try_wait().expect("wait");
            if status.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                // Let the reader thread catch the last lines.
                std::thread::sleep(Duration::from_millis(50));
                let log = log.lock().unwrap().join("\n");
                return Err(StartError { status, log });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The server's process id (for its memory in /proc).
    #[allow(dead_code)] // servers.rs does not use it
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `ws://127.0.0.1:PORT{path}`.
    pub(crate) fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// The log so far.
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (bounded) for a log line containing every one of `needles`.
    pub(crate) async fn wait_log(&self, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            if Instant::now() > deadline {
                panic!(
                    "no log line with {needles:?} within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM without waiting.
    pub(crate) fn send_sigterm(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub(crate) async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.send_sigterm();
        self.wait_exit(timeout).await
    }

    /// Waits (bounded) for the exit.
    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "the server did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where to connect for a `listening on` address: loopback for the
/// unspecified addresses.
fn connect_addr(listening: &str) -> SocketAddr {
    let addr: SocketAddr = listening
        .parse()
        .unwrap_or_else(|_| panic!("not an address: {listening:?}"));
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// A plain HTTP response.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    /// Lower-case names.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl HttpResponse {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a response head and body.
pub(crate) fn parse_response(raw: &[u8]) -> HttpResponse {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Sends a plain HTTP request (bounded in time) and reads the response to
/// the end (the servers close after answering).
pub(crate) async fn http(addr: SocketAddr, method: &str, path: &str, extra: &str) -> HttpResponse {
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    let mut stream = within(5, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect");
    within(5, stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    let mut raw = Vec::new();
    within(10, stream.read_to_end(&mut raw)).await.unwrap();
    parse_response(&raw)
}

/// A WebSocket upgrade request for `path` with extra header lines.
pub(crate) fn upgrade_request(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Sends an upgrade request and returns the response head, and the stream
/// (positioned after the head) for a raw WebSocket.
pub(crate) async fn raw_upgrade(
    addr: SocketAddr,
    path: &str,
    extra: &str,
) -> (HttpResponse, tokio::net::TcpStream, Vec<u8>) {
    let mut stream = within(5, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect");
    within(
        5,
        stream.write_all(upgrade_request(addr, path, extra).as_bytes()),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        assert!(buf.len() < 64 * 1024, "response head too large");
        let n = within(10, stream.read(&mut chunk)).await.unwrap();
        if n == 0 {
            break buf.len();
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf.split_off(end);
    let head = parse_response(&[&buf[..], b"\r\n\r\n"].concat());
    (head, stream, rest)
}

/// The status a server answers an upgrade request on `path` with.
pub(crate) async fn upgrade_status(addr: SocketAddr, path: &str, extra: &str) -> u16 {
    raw_upgrade(addr, path, extra).await.0.status
}

/// A server frame as a raw client sees it.
#[derive(Debug)]
pub(crate) struct RawFrame {
    pub(crate) opcode: u8,
    pub(crate) len: usize,
}

/// Splits unmasked server frames; a partial frame at the end is left out.
pub(crate) fn parse_frames(mut bytes: &[u8]) -> Vec<RawFrame> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0F;
        let (len, header) = match bytes[1] & 0x7F {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 if bytes.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&bytes[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            126 | 127 => break,
            n => (n as usize, 2),
        };
        if bytes.len() < header + len {
            break;
        }
        frames.push(RawFrame { opcode, len });
        bytes = &bytes[header + len..];
    }
    frames
}

/// Runs `fut` for at most `secs` seconds.
pub(crate) async fn within<F: std::future::Future>(secs: u64, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs} s"))
}

/// The client type the tests use.
pub(crate) type Client = WebSocket<ferrows::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects a ferrows client (bounded in time).
pub(crate) async fn connect(url: &str) -> Client {
    within(10, ferrows::connect(url))
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
        .0
}

/// The next text, binary or close message (pings and pongs skipped),
/// within `secs`.
pub(crate) async fn next_data<S>(ws: &mut WebSocket<S>, secs: u64) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within(secs, async {
        loop {
            match ws.recv().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(msg)) => return msg,
                Some(Err(e)) => panic!("connection failed: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    })
    .await
}

/// The code of the close frame `msg`; panics on anything else.
pub(crate) fn close_code(msg: &Message) -> u16 {
    match msg {
        Message::Close(Some(frame)) => frame.code.0,
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// Reads until the server's close frame (skipping everything else), within
/// `secs`; returns its code.
pub(crate) async fn until_close<S>(ws: &mut WebSocket<S>, secs: u64) -> u16
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within(secs, async {
        loop {
            match ws.recv().await {
                Some(Ok(Message::Close(frame))) => return frame.map_or(1005, |f| f.code.0),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed before the close frame: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    })
    .await
}

/// A temporary directory, removed when dropped.
pub(crate) struct TempDir(pub(crate) std::path::PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("ferrows-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `text` to `path`.
pub(crate) fn write_file(path: &std::path::Path, text: &str) {
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A self-signed certificate for localhost and 127.0.0.1, made with
/// `openssl` (an end-entity certificate: CA:FALSE, serverAuth).
pub(crate) fn self_signed(dir: &TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let config = dir.0.join("openssl.cnf");
    write_file(
        &config,
        "[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n\
         [dn]\nCN = localhost\n\
         [ext]\nbasicConstraints = critical, CA:FALSE\n\
         subjectAltName = DNS:localhost, IP:127.0.0.1\n\
         keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n",
    );
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .arg("-config")
        .arg(&config)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (Debian package openssl) to make a test certificate");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}
