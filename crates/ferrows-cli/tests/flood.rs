//! A flooding client of `serve chat` evicts nobody: one client writes
//! 100-byte texts as fast as its socket takes them while 20 others read as
//! fast as they can; every reader stays connected and still gets the other
//! clients' messages (issue 8: before the per-client rate limit, all of
//! them were closed with 1008 while the flooder stayed connected).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrows::Message;
use support::Server;
use tokio::io::AsyncWriteExt;

/// A masked client text frame of `payload` (len < 126).
fn masked_text(payload: &[u8]) -> Vec<u8> {
    let key = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_evicts_no_reader() {
    let server = Server::start(&[
        "serve",
        "chat",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--tick",
        "0",
    ]);
    const READERS: usize = 20;
    let closed = Arc::new(AtomicU64::new(0));
    let marker_seen = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut ws = support::connect(&server.ws_url("/")).await;
        let (closed, marker_seen, stop) = (closed.clone(), marker_seen.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut seen = false;
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), ws.recv()).await {
                    Err(_) => continue,
                    Ok(Some(Ok(Message::Text(t)))) => {
                        if t.as_str() == "msg:the marker" && !seen {
                            seen = true;
                            marker_seen.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                        closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Ok(Some(Ok(_))) => {}
                }
            }
        }));
    }
    // The flooder: a raw socket writing pre-built frames for 3 s.
    let mut flooder = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let req = support::upgrade_request(server.addr, "/", "");
    flooder.write_all(req.as_bytes()).await.unwrap();
    let frame = masked_text(&[b'x'; 100]);
    let burst: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 64)
        .collect();
    let (mut flood_rd, mut flood_wr) = flooder.into_split();
    // Drain what the server sends the flooder, so only its own writes back up.
    let drain = tokio::spawn(async move {
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut flood_rd, &mut sink).await;
    });
    let started = Instant::now();
    let mut written = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        match tokio::time::timeout(Duration::from_millis(100), flood_wr.write_all(&burst)).await {
            Ok(Ok(())) => written += 64,
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    // A normal client says something: every reader must get it.
    let mut talker = support::connect(&server.ws_url("/")).await;
    talker.send(Message::text("the marker")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    while marker_seen.load(Ordering::Relaxed) < READERS as u64
        && closed.load(Ordering::Relaxed) == 0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.await;
    }
    drain.abort();
    assert_eq!(
        closed.load(Ordering::Relaxed),
        0,
        "readers were closed by the flood ({written} frames written); log:\n{}",
        server.log()
    );
    assert_eq!(marker_seen.load(Ordering::Relaxed), READERS as u64);
    assert!(
        !server.log().contains("fell behind"),
        "no reader was dropped as too slow:\n{}",
        server.log()
    );
}
