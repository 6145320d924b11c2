//! Backpressure at the write high-water mark, against peers that do not
//! read: `feed`/`send` wait, `queue` does not, and a peer flooding pings
//! cannot grow our queue of pongs without bound.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use bytes::{Buf, BytesMut};
use common::{RawPeer, small_buffer_connect, small_buffer_listener, within};
use ferrows::proto::OpCode;
use ferrows::proto::frame::{FrameHeader, HeaderDecode};
use ferrows::{Config, Message, WebSocket};
use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

/// A ferrows server and a raw client, over small kernel buffers.
async fn server_and_raw_client(config: Config) -> (WebSocket<TcpStream>, RawPeer) {
    let (listener, addr) = small_buffer_listener();
    let server = async {
        let (stream, _) = listener.accept().await.unwrap();
        ferrows::Handshake::read(stream, config)
            .await
            .unwrap()
            .accept()
            .await
            .unwrap()
    };
    let client = async {
        let tcp = small_buffer_connect(addr).await;
        RawPeer::handshake(tcp, "").await.0
    };
    within("handshake", async { tokio::join!(server, client) }).await
}

fn numbered(i: u32) -> Message {
    let mut data = vec![0xAB; 1024];
    data[..4].copy_from_slice(&i.to_be_bytes());
    Message::Binary(data.into())
}

#[tokio::test]
async fn feed_and_send_wait_at_the_mark_queue_does_not() {
    const MARK: usize = 8 * 1024;
    // A server frame of 1 KiB: 4-byte header (16-bit length) + payload.
    const FRAME: usize = 4 + 1024;
    let (mut server, mut raw) =
        server_and_raw_client(Config::default().write_high_water_mark(MARK)).await;

    // Feed until a feed cannot complete: the raw client never reads, so the
    // socket fills, then the queue reaches the mark.
    let mut fed = 0u32;
    let mut blocked = false;
    for i in 0..100_000 {
        match server.feed(numbered(i)).now_or_never() {
            Some(result) => {
                result.unwrap();
                fed += 1;
                // Below the mark before each feed, so never more than one
                // frame over it.
                assert!(
                    server.buffered_amount() < MARK + FRAME,
                    "queue grew to {} bytes",
                    server.buffered_amount()
                );
            }
            None => {
                blocked = true;
                break;
            }
        }
    }
    assert!(blocked, "feed never waited");
    let queued = server.buffered_amount();
    assert!(queued >= MARK, "waiting below the mark: {queued} bytes");

    // `send` waits too, without queueing its message.
    assert!(server.send(numbered(999_999)).now_or_never().is_none());
    assert_eq!(server.buffered_amount(), queued);
    // `flush` cannot finish while the peer does not read.
    assert!(server.flush().now_or_never().is_none());

    // `queue` ignores the mark: a heartbeat ping goes in at once.
    server.queue(Message::ping("hb")).unwrap();
    let queued_now = server.buffered_amount();
    assert_eq!(queued_now, queued + 4, "the ping (4 bytes) was queued");
    server.queue("urgent").unwrap();

    // The peer starts reading: the waiting feed completes, and everything
    // arrives in order.
    let reader = tokio::spawn(async move {
        let mut frames = Vec::new();
        for _ in 0..fed + 3 {
            frames.push(raw.read_frame().await.expect("a frame"));
        }
        frames
    });
    within("feed after the peer reads", server.feed(numbered(fed)))
        .await
        .unwrap();
    within("flush", server.flush()).await.unwrap();
    assert_eq!(server.buffered_amount(), 0);
    let frames = within("reader", reader).await.unwrap();
    for (i, frame) in frames[..fed as usize].iter().enumerate() {
        assert_eq!(frame.opcode(), OpCode::Binary);
        assert_eq!(frame.payload[..4], (i as u32).to_be_bytes());
    }
    let rest = &frames[fed as usize..];
    assert_eq!(
        (rest[0].opcode(), rest[0].payload.as_slice()),
        (OpCode::Ping, &b"hb"[..])
    );
    assert_eq!(
        (rest[1].opcode(), rest[1].payload.as_slice()),
        (OpCode::Text, &b"urgent"[..])
    );
    assert_eq!(rest[2].payload[..4], fed.to_be_bytes());
}

/// Reads `n` pong frames from `read` and checks each carries the payload
/// of the ping with the same number.
async fn read_pongs(mut read: OwnedReadHalf, n: u32) {
    let mut buf = BytesMut::new();
    let mut next = 0u32;
    while next < n {
        if let Ok(HeaderDecode::Complete(header, header_len)) = FrameHeader::decode(&buf) {
            let len = header.payload_len as usize;
            if buf.len() >= header_len + len {
                buf.advance(header_len);
                let payload = buf.split_to(len);
                assert_eq!(header.opcode, OpCode::Pong);
                assert_eq!(payload[..], ping_payload(next)[..], "pong {next}");
                next += 1;
                continue;
            }
        }
        buf.reserve(16 * 1024);
        let n = within("reading pongs", read.read_buf(&mut buf))
            .await
            .unwrap();
        assert!(n > 0, "EOF after {next} pongs");
    }
}

/// A 125-byte ping payload starting with `i`.
fn ping_payload(i: u32) -> Vec<u8> {
    let mut p = vec![b'p'; 125];
    p[..4].copy_from_slice(&i.to_be_bytes());
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_without_reading_cannot_grow_the_queue() {
    const MARK: usize = 16 * 1024;
    const PINGS: u32 = 20_000; // 2.6 MB of pings, 2.5 MB of pongs
    // Pongs produced from one read buffer's worth of pings can go past the
    // mark before recv stops reading; that slack is bounded by the read
    // size, not by what the peer sends.
    const BOUND: usize = MARK + 64 * 1024;
    let (mut server, raw) =
        server_and_raw_client(Config::default().write_high_water_mark(MARK)).await;
    assert!(raw.buffered().is_empty());
    let (read, mut write) = raw.stream.into_split();
    let mut header = FrameHeader::new(OpCode::Ping, 0);
    header.mask = Some([1, 2, 3, 4]);
    let flood: Vec<u8> = (0..PINGS)
        .flat_map(|i| RawPeer::encode(header, &ping_payload(i)))
        .collect();
    let flooder = tokio::spawn(async move {
        write.write_all(&flood).await.unwrap();
        write
    });

    // Receive until recv stalls with the queue at the mark.
    let mut received = 0u32;
    let mut largest = 0;
    let deadline = tokio::time::Instant::now() + common::TIMEOUT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "recv never stalled");
        match tokio::time::timeout(Duration::from_millis(300), server.recv()).await {
            Ok(Some(Ok(Message::Ping(p)))) => {
                assert_eq!(p[..], ping_payload(received)[..]);
                received += 1;
                largest = largest.max(server.buffered_amount());
                assert!(largest <= BOUND, "queue grew to {largest} bytes");
            }
            Ok(other) => panic!("unexpected {other:?}"),
            // Waiting, and because of the queue, not for lack of input.
            Err(_) if server.buffered_amount() >= MARK => break,
            Err(_) => {}
        }
    }
    assert!(
        received < PINGS,
        "the flood should not fit in the buffers and the queue"
    );
    // While stalled, recv does not read on (the queue stays put).
    let stalled_at = server.buffered_amount();
    assert!(server.recv().now_or_never().is_none());
    assert_eq!(server.buffered_amount(), stalled_at);
    assert!(stalled_at <= BOUND);

    // The peer reads its pongs: the flood drains, every ping is delivered
    // and answered, and the queue stays bounded throughout.
    let pong_reader = tokio::spawn(read_pongs(read, PINGS));
    while received < PINGS {
        match within("recv", server.recv()).await {
            Some(Ok(Message::Ping(p))) => {
                assert_eq!(p[..], ping_payload(received)[..]);
                received += 1;
                assert!(server.buffered_amount() <= BOUND);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let _write = within("flooder", flooder).await.unwrap();
    // The last pongs go out with the next flush.
    within("flush", server.flush()).await.unwrap();
    within("pongs", pong_reader).await.unwrap();
}

#[tokio::test]
async fn splitting_keeps_the_mark_for_the_writer_half() {
    const MARK: usize = 4096;
    let (server, raw) = server_and_raw_client(Config::default().write_high_water_mark(MARK)).await;
    let (_reader, mut writer) = server.split();
    let mut blocked = false;
    for i in 0..100_000 {
        match writer.feed(numbered(i)).now_or_never() {
            Some(result) => {
                result.unwrap();
                assert!(writer.buffered_amount() < MARK + 1028);
            }
            None => {
                blocked = true;
                break;
            }
        }
    }
    assert!(blocked);
    assert!(writer.buffered_amount() >= MARK);
    // `queue` on the writer half ignores the mark too.
    let before = writer.buffered_amount();
    writer.queue(Message::ping("hb")).unwrap();
    assert_eq!(writer.buffered_amount(), before + 4);
    drop(raw);
}
