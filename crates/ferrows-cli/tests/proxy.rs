//! `ferrows connect`, `probe` and `bench` through real proxies on loopback
//! (tinyproxy, Dante, microsocks), with `--proxy`, `--no-proxy` and the
//! environment variables. Each run gets a clean proxy environment plus the
//! variables the test sets; the test process's own environment is never
//! changed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "../../ferrows/tests/proxies/mod.rs"]
mod proxies;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ferrows");

/// Every run of the binary is bounded by this.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Every variable that could route a run through a proxy.
const PROXY_VARS: [&str; 9] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "REQUEST_METHOD",
];

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `ferrows ARGS` with `env` to its end, killing it past [`RUN_LIMIT`].
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = command(args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferrows {args:?} did not exit within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        ok: status.success(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A `ferrows serve echo` on a free loopback port; killed on drop.
struct Echo {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Echo {
    /// How many WebSocket connections it opened so far.
    fn opened(&self) -> usize {
        self.log.lock().unwrap().matches("open peer=").count()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_echo(extra: &[&str]) -> Echo {
    let mut args = vec!["serve", "echo", "--bind", "127.0.0.1", "--port", "0"];
    args.extend_from_slice(extra);
    let mut child = command(&args, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some((_, addr)) = line.split_once("listening on ") {
                let _ = tx.send(addr.trim().to_owned());
            }
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let addr = rx
        .recv_timeout(RUN_LIMIT)
        .expect("serve echo did not say where it listens");
    let port = addr.rsplit(':').next().unwrap().parse().unwrap();
    Echo { child, port, log }
}

/// A self-signed certificate for `localhost` (openssl, as the other CLI
/// tests make theirs).
fn certificate() -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("ferrows-proxy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is required (apt-get install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// `ferrows connect -x MSG URL` with `flags` and `env`.
fn connect(url: &str, flags: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec!["connect", "-x", "hello proxy", "-w", "0.5"];
    args.extend_from_slice(flags);
    args.push(url);
    run(&args, env)
}

fn assert_echoed(out: &Output) {
    assert!(
        out.ok && out.stdout.contains("hello proxy"),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
}

/// The number of tunnels tinyproxy opened to `port`.
fn connects(proxy: &proxies::Daemon, port: u16) -> usize {
    proxy
        .log()
        .matches(&format!("CONNECT 127.0.0.1:{port} HTTP/1.1"))
        .count()
}

/// The number of SOCKS requests Dante got for 127.0.0.1:`port`.
fn socks_requests(proxy: &proxies::Daemon, port: u16) -> usize {
    proxy
        .log()
        .matches(&format!(
            "Packet: VER: 5 CMD: 1 FLAG: 0 ATYP: 1 address: 127.0.0.1.{port}"
        ))
        .count()
}

#[test]
fn connect_with_the_proxy_flag() {
    let echo = serve_echo(&[]);
    let url = format!("ws://127.0.0.1:{}/", echo.port);
    let http = proxies::tinyproxy(&[echo.port], Some(("carol", "t0p")));
    let socks = proxies::danted(1);

    let out = connect(
        &url,
        &[
            "--proxy",
            &format!("http://carol:t0p@127.0.0.1:{}", http.port),
        ],
        &[],
    );
    assert_echoed(&out);
    assert_eq!(connects(&http, echo.port), 1, "{}", http.log());

    let out = connect(
        &url,
        &["--proxy", &format!("socks5h://127.0.0.1:{}", socks.port)],
        &[],
    );
    assert_echoed(&out);
    assert_eq!(socks_requests(&socks, echo.port), 1, "{}", socks.log());

    // --proxy wins over the environment.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = connect(
        &url,
        &["--proxy", &format!("socks5://127.0.0.1:{}", socks.port)],
        &[("HTTP_PROXY", &dead), ("ALL_PROXY", &dead)],
    );
    assert_echoed(&out);
    assert_eq!(socks_requests(&socks, echo.port), 2, "{}", socks.log());
}

#[test]
fn connect_reports_refusals_without_passwords() {
    let echo = serve_echo(&[]);
    let url = format!("ws://127.0.0.1:{}/", echo.port);
    let http = proxies::tinyproxy(&[echo.port], Some(("carol", "t0p")));

    let out = connect(
        &url,
        &["--proxy", &format!("http://127.0.0.1:{}", http.port)],
        &[],
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains(&format!(
            "error: proxy http://127.0.0.1:{} requires authentication (407, realm \"Tinyproxy\")",
            http.port
        )),
        "{}",
        out.stderr
    );

    let out = connect(
        &url,
        &[
            "--proxy",
            &format!("http://carol:hunter2@127.0.0.1:{}", http.port),
        ],
        &[],
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains("rejected the credentials"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);

    // An invalid or unsupported URL, from the flag or the environment.
    let out = connect(
        &url,
        &["--proxy", "https://carol:hunter2@proxy.invalid"],
        &[],
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains("https:// is not supported")
            || out.stderr.contains("(https://) is not supported"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
    let out = connect(
        &url,
        &[],
        &[("http_proxy", "ftp://carol:hunter2@proxy.invalid")],
    );
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("http_proxy: \"ftp://***@proxy.invalid\""),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);

    // The SOCKS reply code, by name.
    let socks = proxies::danted(echo.port);
    let out = connect(
        &url,
        &["--proxy", &format!("socks5h://127.0.0.1:{}", socks.port)],
        &[],
    );
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("connection not allowed by ruleset (SOCKS reply 2)"),
        "{}",
        out.stderr
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_environment_picks_the_proxy() {
    let echo = serve_echo(&[]);
    let port = echo.port;
    let url = format!("ws://127.0.0.1:{port}/");
    let http = proxies::tinyproxy(&[port], None);
    let socks = proxies::danted(1);
    let via_http = format!("http://127.0.0.1:{}", http.port);
    let via_socks = format!("socks5h://127.0.0.1:{}", socks.port);
    // Nothing listens there: a run that uses it fails.
    let dead = format!("http://127.0.0.1:{}", free_port());

    // ws:// takes HTTP_PROXY (either case), not HTTPS_PROXY.
    assert_echoed(&connect(&url, &[], &[("HTTP_PROXY", &via_http)]));
    assert_echoed(&connect(
        &url,
        &[],
        &[("http_proxy", &via_http), ("HTTP_PROXY", &dead)],
    ));
    assert_eq!(connects(&http, port), 2, "{}", http.log());
    assert_echoed(&connect(
        &url,
        &[],
        &[("HTTPS_PROXY", &dead), ("https_proxy", &dead)],
    ));
    // ALL_PROXY when the scheme's variable is not set.
    assert_echoed(&connect(&url, &[], &[("ALL_PROXY", &via_socks)]));
    assert_echoed(&connect(
        &url,
        &[],
        &[("all_proxy", &via_socks), ("HTTPS_PROXY", &dead)],
    ));
    assert_eq!(socks_requests(&socks, port), 2, "{}", socks.log());

    // NO_PROXY: by network, by address and port, "*"; --no-proxy.
    for no_proxy in [
        "127.0.0.0/8",
        &format!("example.com, 127.0.0.1:{port}"),
        "*",
    ] {
        let out = connect(&url, &[], &[("HTTP_PROXY", &dead), ("NO_PROXY", no_proxy)]);
        assert_echoed(&out);
    }
    assert_echoed(&connect(
        &url,
        &[],
        &[("ALL_PROXY", &dead), ("no_proxy", "127.0.0.1")],
    ));
    assert_echoed(&connect(&url, &["--no-proxy"], &[("HTTP_PROXY", &dead)]));
    // Entries that do not match go through the proxy (and fail here).
    for no_proxy in [
        "localhost",
        &format!("127.0.0.1:{}", port.wrapping_add(1)),
        "10.0.0.0/8",
    ] {
        let out = connect(&url, &[], &[("HTTP_PROXY", &dead), ("NO_PROXY", no_proxy)]);
        assert!(!out.ok, "NO_PROXY={no_proxy} matched");
        assert!(
            out.stderr.contains("cannot connect to proxy"),
            "{}",
            out.stderr
        );
    }
    // httpoxy: HTTP_PROXY is not read in a CGI program.
    assert_echoed(&connect(
        &url,
        &[],
        &[("REQUEST_METHOD", "GET"), ("HTTP_PROXY", &dead)],
    ));
    assert_eq!(connects(&http, port), 2);
}

#[test]
fn wss_takes_https_proxy() {
    let (cert, key) = certificate();
    let echo = serve_echo(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let port = echo.port;
    let http = proxies::tinyproxy(&[port], None);
    let via_http = format!("http://127.0.0.1:{}", http.port);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let url = format!("wss://localhost:{port}/");
    let out = connect(
        &url,
        &["--insecure"],
        &[("HTTPS_PROXY", &via_http), ("HTTP_PROXY", &dead)],
    );
    assert_echoed(&out);
    assert!(
        http.log()
            .contains(&format!("CONNECT localhost:{port} HTTP/1.1")),
        "{}",
        http.log()
    );
    // HTTP_PROXY is not for wss://.
    let out = connect(&url, &["--insecure"], &[("HTTP_PROXY", &dead)]);
    assert_echoed(&out);
}

#[test]
fn probe_and_bench_go_through_the_proxy() {
    let echo = serve_echo(&[]);
    let port = echo.port;
    let url = format!("ws://127.0.0.1:{port}/");
    let socks = proxies::danted(1);
    let http = proxies::tinyproxy(&[port], None);

    let out = run(
        &["probe", &url],
        &[("ALL_PROXY", &format!("socks5h://127.0.0.1:{}", socks.port))],
    );
    assert!(out.ok, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("result: PASS"), "{}", out.stdout);
    // Every connection of the checks went through Dante (the server's log
    // is read by a thread: give it a moment).
    let requests = socks_requests(&socks, port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while echo.opened() < requests && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let opened = echo.opened();
    assert!(opened >= 2, "{opened}");
    assert_eq!(requests, opened, "{}", socks.log());
    let out = run(&["probe", "--proxy", "socks5h://127.0.0.1:1", &url], &[]);
    assert!(!out.ok);
    assert!(
        out.stdout.contains("cannot connect to proxy")
            || out.stderr.contains("cannot connect to proxy"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );

    let out = run(
        &[
            "bench",
            "-c",
            "3",
            "-d",
            "500ms",
            "--warmup",
            "0",
            "--json",
            "--proxy",
            &format!("http://127.0.0.1:{}", http.port),
            &url,
        ],
        &[],
    );
    assert!(out.ok, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(connects(&http, port), 3, "{}", http.log());
    let out = run(
        &[
            "bench",
            "-c",
            "2",
            "-d",
            "500ms",
            "--warmup",
            "0",
            "--no-proxy",
            &url,
        ],
        &[("HTTP_PROXY", "http://127.0.0.1:1")],
    );
    assert!(out.ok, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(connects(&http, port), 3);
}
