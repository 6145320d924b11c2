//! Issue 9, defect 5: memory comes back after a reconnect storm.
//!
//! `ferrows serve echo` (the built binary) takes three rounds of 5 000
//! connections, opened by `ferrows bench --idle` and closed when it exits;
//! after each round the server's RSS must come back to within 25 % of what
//! it was before the first. Without the heap trimming, glibc kept most of
//! the peak (the free heap of the closed connections).
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ferrows");

const ROUNDS: usize = 3;
const CONNECTIONS: usize = 5_000;
/// RSS after a round may exceed the base by this fraction at most.
const MARGIN: f64 = 0.25;
/// How long the RSS may take to come back after a round (the server looks
/// at its heap every 2 s).
const SETTLE: Duration = Duration::from_secs(8);
/// The whole test.
const BUDGET: Duration = Duration::from_secs(60);

/// A `ferrows serve echo` on a free loopback port; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "echo", "--no-compression"])
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .args(["--max-connections", "20000"])
            .env("RUST_LOG", "warn,ferrows=info,ferrows::memtrim=debug")
            .env("NO_COLOR", "1")
            .env_remove("FERROWS_MALLOC_TRIM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ferrows serve echo");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some((_, addr)) = line.split_once("listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let listening = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server says where it listens");
        Server {
            child,
            addr: listening.parse().expect("a socket address"),
            log,
        }
    }

    /// The server's log lines about trimming its heap.
    fn trims(&self) -> String {
        let log = self.log.lock().unwrap();
        let trims: Vec<&str> = log
            .iter()
            .filter(|l| l.contains("memtrim"))
            .map(String::as_str)
            .collect();
        trims.join("\n")
    }

    /// Resident set size in KiB (`VmRSS`).
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens `n` idle connections with `ferrows bench --idle`, holds them
/// briefly and closes them all (bench exits); returns the server's RSS
/// with all of them open, in KiB.
fn storm(server: &Server, n: usize, deadline: Instant) -> u64 {
    let mut child = Command::new(BIN)
        .args(["bench", &format!("ws://{}/", server.addr)])
        .args(["--idle", &n.to_string(), "--hold", "0.2"])
        .args(["--handshake-concurrency", "200"])
        .args(["--server-pid", &server.child.id().to_string(), "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferrows bench");
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferrows bench --idle {n} ran past the test's budget");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let j: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "bench output is not JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(out.status.code(), Some(0), "{j}");
    assert_eq!(j["held"], n, "not every connection was held: {j}");
    j["server"]["rss_connected_kib"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rss_connected_kib: {j}"))
}

#[test]
fn memory_comes_back_after_each_round_of_connections() {
    let started = Instant::now();
    let deadline = started + BUDGET;
    let server = Server::start();
    // Warm up (runtime threads, their allocator arenas, the first
    // connection's buffers), then take the base once the server is quiet.
    storm(&server, 50, deadline);
    std::thread::sleep(Duration::from_secs(1));
    let base = server.rss_kib();
    let bound = (base as f64 * (1.0 + MARGIN)) as u64;
    let mut report = format!("base {base} KiB, bound {bound} KiB");
    for round in 1..=ROUNDS {
        let peak = storm(&server, CONNECTIONS, deadline);
        // Wait for the RSS to come back (bounded), then judge it.
        let closed = Instant::now();
        let mut rss = server.rss_kib();
        while rss > bound && closed.elapsed() < SETTLE && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            rss = server.rss_kib();
        }
        report.push_str(&format!(
            "; round {round}: {peak} KiB with {CONNECTIONS} open, {rss} KiB {:.1} s after",
            closed.elapsed().as_secs_f64()
        ));
        assert!(peak > base, "the connections cost no memory? {report}");
        assert!(
            rss <= bound,
            "memory did not come back: {report}\n{}",
            server.trims()
        );
    }
    eprintln!("{report}");
    assert!(
        started.elapsed() < BUDGET,
        "took {:?}: {report}",
        started.elapsed()
    );
}
