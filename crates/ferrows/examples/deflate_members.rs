//! What a chat member costs the server, with and without permessage-deflate.
//!
//! Connects N clients to a chat server (`ferrows serve chat`: a client's
//! `hello` reaches everyone as `msg:hello`), waits until every join notice
//! was delivered, has one client send a compressible 1000-byte message,
//! waits until every client has its copy, and prints the server's resident
//! memory (VmRSS, and the peak VmHWM, from /proc) at each step.
//!
//! ```text
//! ferrows serve chat --port 9300 --max-connections 20000 &
//! cargo run --release -p ferrows --example deflate_members -- \
//!     ws://127.0.0.1:9300/ 10000 deflate $(pgrep -n ferrows)
//! ```
//!
//! Arguments: URL, clients, `deflate` or `plain`, server pid. Every wait is
//! bounded (connects 60 s in all, each delivery 300 s); the program exits
//! with status 1 if one is exceeded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferrows::{ClientBuilder, Config, Message};
use tokio::sync::{Semaphore, watch};

/// The server's VmRSS and VmHWM in KiB.
fn server_memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Waits until `count` reaches `n`, at most `limit`.
async fn wait_for(count: &AtomicUsize, n: usize, limit: Duration, what: &str) {
    let start = Instant::now();
    while count.load(Ordering::Acquire) < n {
        if start.elapsed() > limit {
            eprintln!(
                "{what}: {} of {n} after {limit:?}",
                count.load(Ordering::Acquire)
            );
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, n, mode, pid] = &args[..] else {
        eprintln!("usage: deflate_members URL CLIENTS deflate|plain SERVER_PID");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("CLIENTS");
    let pid: u32 = pid.parse().expect("SERVER_PID");
    let compress = mode == "deflate";
    let config = Config::default().compression(compress);

    let connected = Arc::new(AtomicUsize::new(0));
    let negotiated = Arc::new(AtomicUsize::new(0));
    // Clients that saw the settle marker, and the big message.
    let settled = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (send_tx, send_rx) = watch::channel(None::<String>);
    let handshakes = Arc::new(Semaphore::new(100));
    let start = Instant::now();
    for i in 0..n {
        let (url, config) = (url.clone(), config.clone());
        let (connected, negotiated) = (connected.clone(), negotiated.clone());
        let (settled, delivered) = (settled.clone(), delivered.clone());
        let (mut stop, mut to_send) = (stop_rx.clone(), send_rx.clone());
        let permit = handshakes.clone().acquire_owned().await.unwrap();
        tokio::spawn(async move {
            let connect = ClientBuilder::new(url).config(config).connect();
            let Ok(Ok((mut ws, _))) = tokio::time::timeout(Duration::from_secs(30), connect).await
            else {
                eprintln!("client {i}: connect failed");
                std::process::exit(1);
            };
            drop(permit);
            if ws.compression().is_some() {
                negotiated.fetch_add(1, Ordering::AcqRel);
            }
            connected.fetch_add(1, Ordering::AcqRel);
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    changed = to_send.changed(), if i == 0 => {
                        if changed.is_err() { break; }
                        let text = to_send.borrow_and_update().clone();
                        if let Some(text) = text {
                            if ws.send(Message::text(text)).await.is_err() { break; }
                        }
                    }
                    msg = ws.recv() => match msg {
                        Some(Ok(m)) => {
                            let Some(text) = m.as_text() else { continue };
                            if text.starts_with("msg:settle-") {
                                settled.fetch_add(1, Ordering::AcqRel);
                            } else if text.starts_with("msg:big-") {
                                delivered.fetch_add(1, Ordering::AcqRel);
                            }
                        }
                        _ => {
                            eprintln!("client {i}: connection ended");
                            std::process::exit(1);
                        }
                    },
                }
            }
        });
    }
    wait_for(&connected, n, Duration::from_secs(60), "connected").await;
    let connect_s = start.elapsed().as_secs_f64();
    // Every join notice was delivered once the marker sent after them is.
    send_tx.send_replace(Some("settle-1".to_owned()));
    wait_for(&settled, n, Duration::from_secs(300), "settle").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_settled, _) = server_memory(pid);

    let mut big =
        "big- The quick brown fox jumps over the lazy dog; the five boxing wizards jump quickly. "
            .repeat(12);
    big.truncate(1000);
    send_tx.send_replace(Some(big));
    wait_for(&delivered, n, Duration::from_secs(300), "delivery").await;
    let (rss_delivered, _) = server_memory(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_after_1s, hwm) = server_memory(pid);
    println!(
        "{{\"mode\":\"{mode}\",\"clients\":{n},\"deflate_negotiated\":{},\"connect_s\":{connect_s:.2},\
         \"rss_kib_settled\":{rss_settled},\"rss_kib_delivered\":{rss_delivered},\
         \"rss_kib_1s_later\":{rss_after_1s},\"hwm_kib\":{hwm}}}",
        negotiated.load(Ordering::Acquire)
    );
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
}
