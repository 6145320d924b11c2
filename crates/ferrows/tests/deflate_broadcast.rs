//! Compressed broadcast without per-member memory (issue 8 item 3): a
//! `Hub` server over loopback, clients that all negotiate
//! permessage-deflate, one compressible 1000-byte broadcast.
//!
//! What a member costs is measured with the process's count of live
//! DEFLATE states (`ferrows::proto::deflate::stats`, each state 243 KiB +
//! `4 << window_bits` for compression, 46 KiB for decompression), and
//! whether the frame is shared with the count of messages compressed. The
//! counters are process-wide, so everything is one test, in phases.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{ClientWs, listen, within};
use ferrows::proto::deflate::{self, DeflateStats};
use ferrows::{ClientBuilder, Config, DeflateConfig, Hub, Message};
use tokio::task::JoinHandle;

/// Clients per phase.
const MEMBERS: usize = 200;

/// The most states the per-thread pools may hold in this test: 4 of each
/// kind per thread, on the two workers and the test's own thread.
const POOLED_AT_MOST: usize = 3 * 4;

/// Text that compresses well, of exactly `len` bytes.
fn compressible(len: usize) -> String {
    let mut s = "msg:42 the quick brown fox jumps over the lazy dog. ".repeat(len / 50 + 1);
    s.truncate(len);
    s
}

/// A room server: every connection joins `hub`, gets what is broadcast,
/// and counts the data messages it receives in `received`.
async fn room_server(
    config: Config,
    hub: Hub,
    received: Arc<AtomicUsize>,
) -> (String, JoinHandle<ferrows::Result<()>>) {
    let (listener, url) = listen().await;
    let server = tokio::spawn(ferrows::serve_with(listener, config, move |mut ws| {
        let hub = hub.clone();
        let received = received.clone();
        async move {
            let mut member = hub.join();
            loop {
                tokio::select! {
                    queued = member.recv() => {
                        let Some(prepared) = queued else { break };
                        if ws.queue_prepared(&prepared).is_err() || ws.flush().await.is_err() {
                            break;
                        }
                    }
                    msg = ws.recv() => match msg {
                        Some(Ok(m)) if m.is_text() || m.is_binary() => {
                            received.fetch_add(1, Ordering::SeqCst);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                }
            }
        }
    }));
    (url, server)
}

/// Connects `n` compressing clients; waits until all joined the hub.
async fn connect_all(url: &str, n: usize, hub: &Hub) -> Vec<ClientWs> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let (ws, _) = within(
            "connect",
            ClientBuilder::new(url)
                .config(Config::default().compression(true))
                .connect(),
        )
        .await
        .unwrap();
        assert!(ws.compression().is_some(), "deflate not negotiated");
        clients.push(ws);
    }
    within("all joined", async {
        for _ in 0..3000 {
            if hub.len() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} of {n} joined", hub.len());
    })
    .await;
    clients
}

/// Every client receives `expected` next.
async fn all_receive(clients: &mut [ClientWs], expected: &str) {
    for ws in clients.iter_mut() {
        let msg = within("broadcast", ws.recv()).await.unwrap().unwrap();
        assert_eq!(msg.as_text(), Some(expected));
    }
}

/// Waits (bounded) until the server has counted `n` messages.
async fn server_received(received: &AtomicUsize, n: usize) {
    within("inbound messages", async {
        for _ in 0..3000 {
            if received.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the server got {} of {n}", received.load(Ordering::SeqCst));
    })
    .await;
}

async fn close_all(clients: Vec<ClientWs>, hub: &Hub) {
    for mut ws in clients {
        let _ = within("close", ws.close(1000, "")).await;
    }
    within("all left", async {
        for _ in 0..3000 {
            if hub.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn compressed_since(before: DeflateStats) -> u64 {
    deflate::stats().messages_compressed - before.messages_compressed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_is_compressed_once_and_members_hold_no_deflate_state() {
    let text = compressible(1000);

    // Control: a server with context takeover (the default) compresses the
    // broadcast once per member and keeps a compressor for each — what
    // `serve chat` did before (~313 KiB per member).
    {
        let hub = Hub::new(16);
        let received = Arc::new(AtomicUsize::new(0));
        let config = Config::default().compression(true);
        let (url, server) = room_server(config, hub.clone(), received).await;
        let mut clients = connect_all(&url, MEMBERS, &hub).await;
        let before = deflate::stats();
        assert_eq!(hub.broadcast(text.as_str()), MEMBERS);
        all_receive(&mut clients, &text).await;
        assert_eq!(compressed_since(before), MEMBERS as u64);
        assert!(
            deflate::stats().compressors >= before.compressors + MEMBERS,
            "{:?}",
            deflate::stats()
        );
        close_all(clients, &hub).await;
        server.abort();
    }

    // The fix: a broadcast server (`for_broadcast`: no context takeover
    // either way) compresses the message once and sends the same frame to
    // every member, and no member holds a compressor or decompressor.
    let hub = Hub::new(16);
    let received = Arc::new(AtomicUsize::new(0));
    let config = Config::default().deflate(DeflateConfig::default().for_broadcast());
    let (url, server) = room_server(config, hub.clone(), received.clone()).await;
    let mut clients = connect_all(&url, MEMBERS, &hub).await;
    for ws in &clients {
        let params = ws.compression().unwrap();
        assert!(params.server_no_context_takeover && params.client_no_context_takeover);
    }
    let start = deflate::stats();

    // Below the threshold: the shared uncompressed frame, nothing compressed.
    assert_eq!(hub.broadcast("msg:* client 7 joined"), MEMBERS);
    all_receive(&mut clients, "msg:* client 7 joined").await;
    assert_eq!(compressed_since(start), 0);

    // The 1000-byte message: compressed once, not once per member.
    let before = deflate::stats();
    assert_eq!(hub.broadcast(text.as_str()), MEMBERS);
    all_receive(&mut clients, &text).await;
    assert_eq!(compressed_since(before), 1);
    let after = deflate::stats();
    assert!(
        after.compressors <= POOLED_AT_MOST,
        "{} compressors alive for {MEMBERS} members",
        after.compressors
    );
    // The clients' decompressors (the server said no context takeover)
    // are pooled too.
    assert!(after.decompressors <= POOLED_AT_MOST, "{after:?}");

    // Inbound: every member sends a compressed message; the server keeps no
    // decompressor per member afterwards (client_no_context_takeover).
    for ws in &mut clients {
        within("send", ws.send(Message::text(text.as_str())))
            .await
            .unwrap();
    }
    server_received(&received, MEMBERS).await;
    let after = deflate::stats();
    assert!(after.decompressors <= POOLED_AT_MOST, "{after:?}");
    assert!(after.compressors <= POOLED_AT_MOST, "{after:?}");
    close_all(clients, &hub).await;
    server.abort();
}
