//! Latency of `ferrows serve gamepad` at 60 commands a second: from a
//! command's arrival in the server to its jsonl line written (p50/p99,
//! measured inside the server with `--latency-stats`), and end to end from
//! the client's send to the line read from the server's stdout.
//!
//! `cargo bench -p ferrows-cli --bench gamepad_latency`
//! (`GAMEPAD_BENCH_SECONDS`, default 20: 1200 commands). Bounded: one
//! client, one server on loopback, a fixed number of commands, every wait
//! with a timeout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Commands a second, as a gamepad page sends at most.
const RATE: u32 = 60;

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> String {
    format!("{}us", d.as_micros())
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // and must not spend 20 s: run a short smoke version then.
    let benching = std::env::args().any(|a| a == "--bench");
    let seconds: u32 = if benching {
        std::env::var("GAMEPAD_BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20)
            .clamp(1, 600)
    } else {
        1
    };
    let commands = seconds * RATE;

    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrows"))
        .args([
            "serve",
            "gamepad",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--output",
            "jsonl",
            "--latency-stats",
            "--deadzone",
            "0",
            "--deadman",
            "5000",
            "--no-compression",
        ])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferrows");

    // stdout: each jsonl line with the time it was read.
    let (line_tx, line_rx) = mpsc::channel::<(Instant, String)>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let (log_tx, log_rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if log_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let addr = loop {
        let line = log_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server did not start within 30 s");
        let found = line
            .split_once("listening on ")
            .map(|(_, a)| a.trim().to_owned());
        log.push(line);
        if let Some(a) = found {
            break a;
        }
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sent: Vec<Instant> = runtime.block_on(async {
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            ferrows::connect(&format!("ws://{addr}/")),
        )
        .await
        .expect("connect timeout")
        .expect("connect");
        let mut sent = Vec::with_capacity(commands as usize);
        let mut tick = tokio::time::interval(Duration::from_secs(1) / RATE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for i in 0..commands {
            tick.tick().await;
            // Every command changes the outputs (so each makes one line):
            // throttle steps through 50 distinct values.
            let y = -(0.2 + 0.7 * f64::from(i % 50) / 50.0);
            let msg = format!(
                r#"{{"type":"pad","seq":{},"axes":[0,{y:.4}],"buttons":[{}]}}"#,
                i + 1,
                i % 2
            );
            sent.push(Instant::now());
            tokio::time::timeout(Duration::from_secs(5), ws.send(msg))
                .await
                .expect("send timeout")
                .expect("send");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(1000, "done")).await;
        sent
    });

    // One line per command (in order), then the disconnect stop.
    let mut end_to_end = Vec::with_capacity(sent.len());
    for (i, t_sent) in sent.iter().enumerate() {
        let (t_read, line) = line_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("jsonl line {i} missing"));
        if !line.contains("\"reason\":\"command\"") {
            let _ = child.kill();
            log.extend(log_rx.try_iter());
            panic!(
                "line {i} is not a command's: {line}\nlog:\n{}",
                log.join("\n")
            );
        }
        end_to_end.push(t_read.saturating_duration_since(*t_sent));
    }

    // SIGTERM: the server logs its own measurement on the way out.
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut server_side = None;
    while Instant::now() < deadline {
        match log_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if let Some((_, stats)) = line.split_once("output written): ") {
                    server_side = Some(stats.trim().to_owned());
                }
                log.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if child.try_wait().ok().flatten().is_some() && server_side.is_some() {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();

    end_to_end.sort_unstable();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    println!("gamepad latency at {RATE} commands/s, {commands} commands ({seconds} s)");
    println!("  machine: {cpus} CPUs, load average {}", load.trim());
    match &server_side {
        Some(stats) => println!("  server, arrival -> jsonl line written: {stats}"),
        None => println!("  server-side figures missing; log:\n{}", log.join("\n")),
    }
    println!(
        "  end to end, client send -> line read from stdout: n={} p50={} p90={} p99={} max={}",
        end_to_end.len(),
        us(percentile(&end_to_end, 0.5)),
        us(percentile(&end_to_end, 0.9)),
        us(percentile(&end_to_end, 0.99)),
        us(end_to_end.last().copied().unwrap_or_default()),
    );
    assert!(
        server_side.is_some(),
        "the server did not report its latency"
    );
}
