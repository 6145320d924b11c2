//! `serve chat` with permessage-deflate (issue 8 item 3): it answers every
//! offer without context takeover, and a compressed broadcast costs the
//! server no memory per member (before, each compressing member kept a
//! ~310 KiB compressor after the first long message).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferrows::{ClientBuilder, Config, Message};
use support::{Server, raw_upgrade, within};
use tokio::sync::watch;

/// Clients of the memory test.
const MEMBERS: usize = 200;

/// The server's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Waits (at most 60 s) until `count` reaches `n`.
async fn wait_for(count: &AtomicUsize, n: usize, what: &str) {
    within(60, async {
        while count.load(Ordering::Acquire) < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(count.load(Ordering::Acquire), n, "{what}");
}

#[tokio::test]
async fn chat_answers_deflate_offers_without_context_takeover() {
    for args in [
        &["serve", "chat", "--port", "0", "--tick", "0"][..],
        &["serve", "--port", "0"][..],
    ] {
        let server = Server::start(args);
        let path = if args.len() == 3 { "/chat" } else { "/" };
        let (head, _stream, _) = raw_upgrade(
            server.addr,
            path,
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        )
        .await;
        assert_eq!(head.status, 101, "{args:?}");
        let ext = head.header("sec-websocket-extensions").unwrap();
        assert!(
            ext.starts_with("permessage-deflate")
                && ext.contains("server_no_context_takeover")
                && ext.contains("client_no_context_takeover"),
            "{args:?}: {ext}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_broadcast_costs_the_chat_server_no_memory_per_member() {
    let server = Server::start(&["serve", "chat", "--port", "0", "--tick", "0"]);
    let url = server.ws_url("/");
    let settled = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(AtomicUsize::new(0));
    let (send_tx, send_rx) = watch::channel(None::<String>);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..MEMBERS {
        let (mut ws, _) = within(
            10,
            ClientBuilder::new(&url)
                .config(Config::default().compression(true))
                .connect(),
        )
        .await
        .unwrap();
        assert!(ws.compression().is_some());
        let (settled, delivered) = (settled.clone(), delivered.clone());
        let (mut to_send, mut stop) = (send_rx.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    changed = to_send.changed(), if i == 0 => {
                        changed.unwrap();
                        let text = to_send.borrow_and_update().clone();
                        ws.send(Message::text(text.unwrap())).await.unwrap();
                    }
                    msg = ws.recv() => {
                        let msg = msg.expect("open").expect("no error");
                        let Some(text) = msg.as_text() else { continue };
                        if text.starts_with("msg:settle") {
                            settled.fetch_add(1, Ordering::AcqRel);
                        } else if text.starts_with("msg:big ") {
                            assert_eq!(text.len(), 4 + 1000);
                            delivered.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                }
            }
        }));
    }
    // Every join notice is out once this marker, sent after them, is.
    send_tx.send_replace(Some("settle".to_owned()));
    wait_for(&settled, MEMBERS, "settle marker").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(server.pid());

    let mut big = "big the quick brown fox jumps over the lazy dog; ".repeat(21);
    big.truncate(1000);
    send_tx.send_replace(Some(big));
    wait_for(&delivered, MEMBERS, "1000-byte message").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = rss_kib(server.pid()).saturating_sub(before);
    // A compressor per member would be ~310 KiB each (60 MiB here); the
    // shared frame and the pooled states cost well under 10 MiB in all.
    assert!(
        grown < 10 * 1024,
        "the server grew by {grown} KiB for {MEMBERS} members ({} KiB each)",
        grown / MEMBERS as u64
    );
    let _ = stop_tx.send(true);
    for task in tasks {
        within(10, task).await.unwrap();
    }
}
