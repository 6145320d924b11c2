//! The Redis Streams backplane against a real `redis-server` per test,
//! through the library's `Relay`: two relays are two nodes. Each test
//! checks what a node received against what the other sent: received +
//! reported lost = sent, no duplicate, per-sender order.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrows::Hub;
use ferrows::backplane::{BackplaneState, Relay, RelayConfig, RelayEvent, RelayStats};
use ferrows_redis::{Error, RedisBackplane, RedisOptions};
use support::RedisServer;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

const ROOM: &str = "t";
const KEY: &str = "ferrows:{t}:log";

/// A node: a relay over its own backplane, and what its hub's member got.
struct Node {
    relay: Relay,
    got: Arc<Mutex<Vec<String>>>,
    _collector: JoinHandle<()>,
}

impl Node {
    async fn start(url: &str, options: RedisOptions) -> Node {
        let backplane = RedisBackplane::connect(url, options)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let relay = Relay::start(Hub::new(16_384), backplane, RelayConfig::default());
        let mut member = relay.hub().join();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let collector = tokio::spawn(async move {
            while let Some(p) = member.recv().await {
                let text = p.message().as_text().unwrap_or("<binary>").to_owned();
                sink.lock().unwrap().push(text);
            }
        });
        Node {
            relay,
            got,
            _collector: collector,
        }
    }

    async fn plain(server: &RedisServer) -> Node {
        Node::start(&server.url(), RedisOptions::new(ROOM).unwrap()).await
    }

    fn got(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }

    fn stats(&self) -> RelayStats {
        self.relay.stats()
    }

    /// Waits (≤ `within`) until this node's member got `text`.
    async fn wait_for(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.got().iter().any(|t| t == text) {
            assert!(
                Instant::now() < deadline,
                "{text:?} not received in {within:?}; stats {:?}",
                self.stats()
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (≤ 15 s) until the relay is up with an empty outbox.
    async fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = self.stats();
            if s.state == BackplaneState::Up && s.outbox_depth == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "relay not idle: {s:?}");
            sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Broadcasts `"{from}".."{to}"` on `node` at `per_sec` messages a second.
async fn send(node: &Node, from: u64, to: u64, per_sec: u64) {
    let start = Instant::now();
    for (k, i) in (from..to).enumerate() {
        node.relay.broadcast(i.to_string());
        let due = start + Duration::from_micros(1_000_000 / per_sec * (k as u64 + 1));
        tokio::time::sleep_until(due).await;
    }
}

/// Sends a tail of 20 once the sender is idle again and waits until the
/// receiver has its last one, so that every gap before it is counted.
async fn finish(sender: &Node, receiver: &Node, next: u64) -> u64 {
    sender.wait_idle().await;
    send(sender, next, next + 20, 200).await;
    receiver
        .wait_for(&(next + 19).to_string(), Duration::from_secs(15))
        .await;
    next + 20
}

/// received + lost = sent, no duplicate, in order: the numbers `got`
/// (from one sender, `0..sent`) must be strictly increasing.
fn check(got: &[String], sent: u64, receiver: &RelayStats) {
    let numbers: Vec<u64> = got.iter().filter_map(|t| t.parse().ok()).collect();
    for pair in numbers.windows(2) {
        assert!(pair[0] < pair[1], "out of order or duplicate: {pair:?}");
    }
    assert!(numbers.iter().all(|&n| n < sent), "a number never sent");
    assert_eq!(
        numbers.len() as u64 + receiver.lost,
        sent,
        "received {} + lost {} != sent {sent}; {receiver:?}",
        numbers.len(),
        receiver.lost
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_of_a_burst_keeps_order_both_ways() {
    let redis = RedisServer::start();
    let a = Node::plain(&redis).await;
    let b = Node::plain(&redis).await;
    for i in 0..200 {
        a.relay.broadcast(i.to_string());
    }
    for i in 1000..1200 {
        b.relay.broadcast(i.to_string());
    }
    b.wait_for("199", Duration::from_secs(10)).await;
    a.wait_for("1199", Duration::from_secs(10)).await;
    let on_b: Vec<String> = b.got().into_iter().filter(|t| t.len() < 4).collect();
    let on_a: Vec<String> = a.got().into_iter().filter(|t| t.len() == 4).collect();
    let expect = |r: std::ops::Range<u64>| r.map(|i| i.to_string()).collect::<Vec<_>>();
    assert_eq!(on_b, expect(0..200));
    assert_eq!(on_a, expect(1000..1200));
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.published, sa.received, sa.lost), (200, 200, 0));
    assert_eq!((sb.published, sb.received, sb.lost), (200, 200, 0));
    assert_eq!(sb.duplicates_dropped + sb.not_sent + sb.malformed, 0);
    // The wire format, as redis-cli shows it.
    let first = redis
        .cmd(&[b"XRANGE", KEY.as_bytes(), b"-", b"+", b"COUNT", b"1"])
        .await
        .unwrap();
    let text = format!("{first:?}");
    let (oa, ob) = (a.relay.node().to_string(), b.relay.node().to_string());
    assert!(
        text.contains(&oa) || text.contains(&ob),
        "no origin in {text}"
    );
    for field in [
        "\"v\"", "\"1\"", "\"o\"", "\"s\"", "\"k\"", "\"t\"", "\"d\"",
    ] {
        assert!(text.contains(field), "{field} missing in {text}");
    }
    let ttl = redis.cmd(&[b"PTTL", KEY.as_bytes()]).await.unwrap();
    assert!(
        matches!(ttl, redis::Value::Int(t) if t > 86_000_000),
        "{ttl:?}"
    );
    // Idle: the blocking read returns empty once a second and is not cut
    // by a response timeout (redis-rs' default of 500 ms would).
    sleep(Duration::from_millis(2500)).await;
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.reconnects, sb.reconnects), (0, 0), "{sa:?} {sb:?}");
    assert_eq!(sb.state, BackplaneState::Up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_connection_killed_three_times_loses_nothing() {
    let redis = RedisServer::start();
    let a = Node::plain(&redis).await;
    let b = Node::plain(&redis).await;
    let sending = send(&a, 0, 600, 200);
    let killing = async {
        for _ in 0..3 {
            sleep(Duration::from_millis(700)).await;
            assert!(redis.client_kill(&format!("ferrows-read.{ROOM}")).await >= 1);
        }
    };
    tokio::join!(sending, killing);
    let sent = finish(&a, &b, 600).await;
    let s = b.stats();
    check(&b.got(), sent, &s);
    assert_eq!(s.lost, 0, "{s:?}");
    assert!(s.resumes >= 3, "{s:?}");
    assert_eq!(s.stream_resets, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_inside_the_hold_loses_nothing() {
    let mut redis = RedisServer::start();
    let a = Node::plain(&redis).await;
    let b = Node::plain(&redis).await;
    let mut events = a.relay.events();
    send(&a, 0, 200, 200).await;
    // What Redis acknowledged and then lost with it before b read it would
    // be lost for real (counted, not re-sent): wait until b has it all.
    b.wait_for("199", Duration::from_secs(10)).await;
    redis.kill();
    send(&a, 200, 300, 200).await; // 0.5 s down
    redis.restart();
    send(&a, 300, 500, 200).await;
    let sent = finish(&a, &b, 500).await;
    let (sa, sb) = (a.stats(), b.stats());
    check(&b.got(), sent, &sb);
    assert_eq!((sa.not_sent, sb.lost), (0, 0), "{sa:?} {sb:?}");
    assert!(sa.retried > 0 || sa.reconnects > 0, "{sa:?}");
    let seen: Vec<RelayEvent> = std::iter::from_fn(|| events.try_next()).collect();
    assert!(
        seen.iter().any(|e| matches!(e, RelayEvent::Down { .. })),
        "{seen:?}"
    );
}

/// Entries Redis acknowledged but a stalled node had not read yet die
/// with a Redis killed (-9, no persistence) and restarted inside the hold:
/// the publisher finds its last entry gone and publishes again what it
/// acknowledged within the hold, so the stalled node loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_under_a_stalled_reader_loses_nothing() {
    let mut redis = RedisServer::start();
    let user_on: [&[u8]; 7] = [
        b"ACL", b"SETUSER", b"slow", b"on", b">slowpw", b"~*", b"+@all",
    ];
    redis.cmd(&user_on).await.unwrap();
    let a = Node::plain(&redis).await;
    let url_b = format!("redis://slow:slowpw@127.0.0.1:{}/", redis.port());
    let b = Node::start(&url_b, RedisOptions::new(ROOM).unwrap()).await;
    send(&a, 0, 50, 200).await;
    b.wait_for("49", Duration::from_secs(10)).await;
    // b stalls: it cannot read any more.
    redis
        .cmd(&[b"ACL", b"SETUSER", b"slow", b"off"])
        .await
        .unwrap();
    redis
        .cmd(&[b"CLIENT", b"KILL", b"USER", b"slow"])
        .await
        .unwrap();
    send(&a, 50, 150, 400).await;
    a.wait_idle().await;
    assert_eq!(a.stats().published, 150);
    let len = redis.xlen(KEY).await;
    assert_eq!(len, 150, "all acknowledged by Redis");
    let killed = Instant::now();
    redis.restart();
    // The restarted Redis has no ACL user either: b may read again.
    redis.cmd(&user_on).await.unwrap();
    eprintln!("restarted in {:?}", killed.elapsed());
    send(&a, 150, 250, 200).await;
    let sent = finish(&a, &b, 250).await;
    let (sa, sb) = (a.stats(), b.stats());
    eprintln!("stalled reader: sent {sent}, a {sa:?}, b {sb:?}");
    check(&b.got(), sent, &sb);
    assert_eq!((sa.not_sent, sb.lost), (0, 0), "{sa:?} {sb:?}");
    assert!(sa.republished >= 100, "{sa:?}");
    assert!(sb.stream_resets + sb.resumes >= 1, "{sb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_beyond_the_hold_loses_exactly_what_was_not_sent() {
    let mut redis = RedisServer::start();
    let a = Node::plain(&redis).await;
    let b = Node::plain(&redis).await;
    send(&a, 0, 200, 200).await;
    b.wait_for("199", Duration::from_secs(10)).await;
    redis.kill();
    send(&a, 200, 1000, 200).await; // 4 s down
    redis.restart();
    send(&a, 1000, 1200, 200).await;
    let sent = finish(&a, &b, 1200).await;
    let (sa, sb) = (a.stats(), b.stats());
    check(&b.got(), sent, &sb);
    eprintln!(
        "4 s outage: sent {sent}, not_sent {}, lost {}, retried {}, duplicates dropped {}",
        sa.not_sent, sb.lost, sa.retried, sb.duplicates_dropped
    );
    assert!(sa.not_sent > 0, "{sa:?}");
    assert_eq!(
        sb.lost, sa.not_sent,
        "receiver's lost != sender's not_sent: {sa:?} {sb:?}"
    );
    // The hold is 2 s: the first ~2 s of the outage were held, not lost.
    assert!(sa.not_sent < 800, "{sa:?}");
}

/// A 1.5 s freeze is shorter than the reply timeouts: it is ridden out
/// (delayed, not lost), and nothing hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_for_a_short_while_is_ridden_out() {
    let redis = RedisServer::start();
    let a = Node::plain(&redis).await;
    let b = Node::plain(&redis).await;
    send(&a, 0, 100, 200).await;
    redis.stop();
    send(&a, 100, 400, 200).await; // 1.5 s frozen
    redis.cont();
    send(&a, 400, 500, 200).await;
    let sent = finish(&a, &b, 500).await;
    let (sa, sb) = (a.stats(), b.stats());
    check(&b.got(), sent, &sb);
    assert_eq!(sb.lost, sa.not_sent, "{sa:?} {sb:?}");
}

/// A freeze longer than the reply timeouts is detected (a blocking read
/// or a send not answered in time), not waited on forever; what was lost
/// is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_is_detected_and_accounted() {
    let redis = RedisServer::start();
    let a = Node::plain(&redis).await;
    let b = Node::plain(&redis).await;
    let mut events_a = a.relay.events();
    let mut events_b = b.relay.events();
    send(&a, 0, 100, 200).await;
    redis.stop();
    let frozen = Instant::now();
    let (_, detected) = tokio::join!(send(&a, 100, 800, 200), async {
        // The reader of b sees no reply to its blocking read.
        loop {
            match tokio::time::timeout(Duration::from_secs(5), events_b.next()).await {
                Ok(Some(RelayEvent::Down { reason })) => return (frozen.elapsed(), reason),
                Ok(Some(_)) => {}
                other => panic!("b never went down: {other:?}"),
            }
        }
    }); // 3.5 s frozen
    redis.cont();
    eprintln!("freeze detected after {:?}: {}", detected.0, detected.1);
    assert!(
        detected.0 < Duration::from_millis(3600),
        "detected after {detected:?}"
    );
    let sent = finish(&a, &b, 800).await;
    let (sa, sb) = (a.stats(), b.stats());
    check(&b.got(), sent, &sb);
    let down_a: Vec<RelayEvent> = std::iter::from_fn(|| events_a.try_next())
        .filter(|e| matches!(e, RelayEvent::Down { .. }))
        .collect();
    assert!(!down_a.is_empty(), "the publisher never noticed: {sa:?}");
    assert!(sb.reconnects >= 1 && sa.reconnects >= 1, "{sa:?} {sb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_lost_by_redis_is_read_again_from_its_start() {
    let redis = RedisServer::start();
    let a = Node::plain(&redis).await;
    let b = Node::plain(&redis).await;
    let mut events = b.relay.events();
    send(&a, 0, 10, 200).await;
    b.wait_for("9", Duration::from_secs(10)).await;

    // Redis loses the stream, and a new one starts with lower ids (a failover
    // to a replica whose clock is behind): without XINFO's last-generated-id
    // the reader would wait after its old id and miss the new entries.
    redis.cmd(&[b"DEL", KEY.as_bytes()]).await.unwrap();
    let fake = b"00000000000000aa";
    let xadd = |id: &'static [u8], seq: &'static [u8], d: &'static [u8]| {
        let redis = &redis;
        async move {
            redis
                .cmd(&[
                    b"XADD",
                    KEY.as_bytes(),
                    id,
                    b"v",
                    b"1",
                    b"o",
                    fake,
                    b"s",
                    seq,
                    b"k",
                    b"t",
                    b"d",
                    d,
                ])
                .await
        }
    };
    xadd(b"1-1", b"1", b"early").await.unwrap();
    assert!(redis.client_kill(&format!("ferrows-read.{ROOM}")).await >= 1);
    b.wait_for("early", Duration::from_secs(10)).await;

    // FLUSHALL: the key is gone when the reader comes back.
    redis.cmd(&[b"FLUSHALL"]).await.unwrap();
    assert!(redis.client_kill(&format!("ferrows-read.{ROOM}")).await >= 1);
    sleep(Duration::from_millis(500)).await;
    xadd(b"2-1", b"2", b"after-flush").await.unwrap();
    b.wait_for("after-flush", Duration::from_secs(10)).await;

    send(&a, 10, 20, 200).await;
    let sent = finish(&a, &b, 20).await;
    let got: Vec<String> = b
        .got()
        .into_iter()
        .filter(|t| t.parse::<u64>().is_ok())
        .collect();
    let sb = b.stats();
    check(&got, sent, &sb);
    assert_eq!(sb.lost, 0, "{sb:?}");
    assert_eq!(sb.stream_resets, 2, "{sb:?}");
    let resets = std::iter::from_fn(|| events.try_next())
        .filter(|e| matches!(e, RelayEvent::Up { after_reset: true }))
        .count();
    assert_eq!(resets, 2);
}

/// A node that cannot read for a while (its Redis user disabled, its
/// connections killed) comes back to a stream trimmed past its last id:
/// the trimmed entries are counted lost, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_trimmed_under_a_slow_reader_are_counted_lost() {
    let redis = RedisServer::start();
    redis
        .cmd(&[
            b"ACL", b"SETUSER", b"slow", b"on", b">slowpw", b"~*", b"+@all",
        ])
        .await
        .unwrap();
    let a = Node::start(&redis.url(), RedisOptions::new(ROOM).unwrap().retain(100)).await;
    let url_b = format!("redis://slow:slowpw@127.0.0.1:{}/", redis.port());
    let b = Node::start(&url_b, RedisOptions::new(ROOM).unwrap()).await;
    send(&a, 0, 50, 200).await;
    b.wait_for("49", Duration::from_secs(10)).await;

    redis
        .cmd(&[b"ACL", b"SETUSER", b"slow", b"off"])
        .await
        .unwrap();
    redis
        .cmd(&[b"CLIENT", b"KILL", b"USER", b"slow"])
        .await
        .unwrap();
    send(&a, 50, 650, 300).await;
    let len = redis.xlen(KEY).await;
    assert!((100..400).contains(&len), "MAXLEN ~ 100 kept {len}");
    redis
        .cmd(&[b"ACL", b"SETUSER", b"slow", b"on"])
        .await
        .unwrap();

    let sent = finish(&a, &b, 650).await;
    let (sa, sb) = (a.stats(), b.stats());
    check(&b.got(), sent, &sb);
    assert_eq!(sa.not_sent, 0, "{sa:?}");
    eprintln!(
        "trimmed: sent {sent}, received {}, lost {}",
        sb.received, sb.lost
    );
    assert!(sb.lost >= 200, "trimmed entries not counted: {sb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_oversize_and_malformed_entries_are_skipped_and_counted() {
    let redis = RedisServer::start();
    let b = Node::start(
        &redis.url(),
        RedisOptions::new(ROOM).unwrap().max_entry_bytes(1000),
    )
    .await;
    let big = vec![b'x'; 1001];
    let o: &[u8] = b"0000000000000001";
    let entries: Vec<Vec<&[u8]>> = vec![
        vec![
            b"v", b"2", b"o", o, b"s", b"1", b"k", b"t", b"d", b"from v2",
        ],
        vec![b"v", b"1", b"o", o, b"s", b"1", b"k", b"t", b"d", &big],
        vec![b"v", b"1", b"o", o, b"s", b"1", b"k", b"t"],
        vec![
            b"v",
            b"1",
            b"o",
            o,
            b"s",
            b"1",
            b"k",
            b"t",
            b"d",
            b"\xff\xfe",
        ],
        vec![
            b"v", b"1", b"o", b"not-hex", b"s", b"1", b"k", b"t", b"d", b"x",
        ],
        vec![b"v", b"1", b"o", o, b"s", b"x1", b"k", b"t", b"d", b"x"],
        vec![b"hello", b"world"],
        vec![
            b"v",
            b"1",
            b"o",
            o,
            b"s",
            b"1",
            b"k",
            b"b",
            b"d",
            b"binary ok",
        ],
        vec![
            b"v", b"1", b"o", o, b"s", b"2", b"k", b"t", b"d", b"text ok", b"z", b"later",
        ],
    ];
    for fields in &entries {
        let mut args: Vec<&[u8]> = vec![b"XADD", KEY.as_bytes(), b"*"];
        args.extend(fields.iter().copied());
        redis.cmd(&args).await.unwrap();
    }
    b.wait_for("text ok", Duration::from_secs(10)).await;
    assert_eq!(b.got(), ["<binary>", "text ok"]);
    let s = b.stats();
    assert_eq!(
        (
            s.foreign_version,
            s.oversize,
            s.malformed,
            s.received,
            s.lost
        ),
        (1, 1, 5, 2, 0),
        "{s:?}"
    );
    assert_eq!(s.state, BackplaneState::Up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_is_an_error_within_the_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://u:hunter2@127.0.0.1:{port}/");
    let started = Instant::now();
    let options = RedisOptions::new(ROOM)
        .unwrap()
        .connect_timeout(Duration::from_secs(1));
    let err = RedisBackplane::connect(&url, options).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "gave up after {took:?}"
    );
    match &err {
        Error::Unreachable { server, .. } => {
            assert_eq!(server, &format!("redis://u:***@127.0.0.1:{port}/"))
        }
        other => panic!("{other:?}"),
    }
    let text = format!("{err} {err:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains(&port.to_string()), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_password_is_a_clear_error_without_the_password() {
    let redis = RedisServer::start_with(&["--requirepass", "right-pass-123"]);
    let port = redis.port();
    let options = || RedisOptions::new(ROOM).unwrap();
    for url in [
        format!("redis://:wrong-secret-77@127.0.0.1:{port}/"),
        format!("redis://default:wrong-secret-77@127.0.0.1:{port}/0"),
        format!("redis://127.0.0.1:{port}/"),
    ] {
        let started = Instant::now();
        let err = RedisBackplane::connect(&url, options()).await.unwrap_err();
        // Not retried until the 10 s timeout: credentials do not heal.
        assert!(started.elapsed() < Duration::from_secs(3), "{url}");
        let text = format!("{err} | {err:?}");
        assert!(!text.contains("wrong-secret-77"), "{text}");
        assert!(text.contains("authentication failed"), "{text}");
        assert!(matches!(err, Error::Unreachable { .. }), "{text}");
    }
    let good = format!("redis://:right-pass-123@127.0.0.1:{port}/");
    let backplane = RedisBackplane::connect(&good, options()).await.unwrap();
    assert_eq!(
        backplane.server(),
        format!("redis://:***@127.0.0.1:{port}/")
    );
    assert!(!format!("{backplane:?}").contains("right-pass"));
}

/// The least-privilege user of the README is enough for everything: the
/// backplane (publish, read, resume) and the room clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_is_enough() {
    let redis = RedisServer::start();
    let acl = "ferrows on >acl-pw ~ferrows:* +xadd +xrange +xread +xrevrange +xinfo|stream +pexpire +set +get +time +ping +client|setname";
    let mut args: Vec<&[u8]> = vec![b"ACL", b"SETUSER"];
    args.extend(acl.split(' ').map(str::as_bytes));
    redis.cmd(&args).await.unwrap();
    let url = format!("redis://ferrows:acl-pw@127.0.0.1:{}/", redis.port());
    let a = Node::start(&url, RedisOptions::new(ROOM).unwrap()).await;
    let b = Node::start(&url, RedisOptions::new(ROOM).unwrap()).await;
    send(&a, 0, 20, 200).await;
    b.wait_for("19", Duration::from_secs(10)).await;
    assert!(redis.client_kill(&format!("ferrows-read.{ROOM}")).await >= 2);
    let sent = finish(&a, &b, 20).await;
    let sb = b.stats();
    check(&b.got(), sent, &sb);
    assert!(sb.resumes >= 1 && sb.lost == 0, "{sb:?}");
    // The publisher's connection broken while idle: reconnected and
    // checked (XRANGE) inside the next send, nothing published again.
    assert!(redis.client_kill(&format!("ferrows-pub.{ROOM}")).await >= 2);
    let sent = finish(&a, &b, sent).await;
    let (sa, sb) = (a.stats(), b.stats());
    check(&b.got(), sent, &sb);
    assert_eq!((sa.republished, sb.lost), (0, 0), "{sa:?} {sb:?}");
    let clock =
        ferrows_redis::RoomClock::join(&url, ROOM, Duration::from_secs(1), Duration::from_secs(2))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(clock.status().redis_reachable);
    // Without a permission it needs, the error says so (and not the password).
    redis
        .cmd(&[b"ACL", b"SETUSER", b"ferrows", b"-client|setname"])
        .await
        .unwrap();
    let err = RedisBackplane::connect(&url, RedisOptions::new(ROOM).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("permission denied") && !err.contains("acl-pw"),
        "{err}"
    );
}

/// The room's key taken by something that is not a stream: a clear error
/// at connect; once running, the relay goes down with a short reason
/// (a pipeline of 256 failed XADDs lists 256 errors) and comes back when
/// the key is a stream again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_key_of_another_type_is_an_error_not_a_wedge() {
    let redis = RedisServer::start();
    redis
        .cmd(&[b"SET", KEY.as_bytes(), b"not a stream"])
        .await
        .unwrap();
    let err = RedisBackplane::connect(&redis.url(), RedisOptions::new(ROOM).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("WRONGTYPE"), "{err}");
    redis.cmd(&[b"DEL", KEY.as_bytes()]).await.unwrap();

    let a = Node::plain(&redis).await;
    let b = Node::plain(&redis).await;
    let mut events = a.relay.events();
    redis
        .cmd(&[b"SET", KEY.as_bytes(), b"not a stream"])
        .await
        .unwrap();
    for i in 0..300 {
        a.relay.broadcast(i.to_string());
    }
    let reason = loop {
        match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
            Ok(Some(RelayEvent::Down { reason })) => break reason,
            Ok(Some(_)) => {}
            other => panic!("a never went down: {other:?}"),
        }
    };
    assert!(reason.contains("WRONGTYPE"), "{reason}");
    assert!(reason.len() < 400, "{} bytes: {reason}", reason.len());
    redis.cmd(&[b"DEL", KEY.as_bytes()]).await.unwrap();
    let sent = finish(&a, &b, 300).await;
    let (sa, sb) = (a.stats(), b.stats());
    check(&b.got(), sent, &sb);
    assert_eq!(sa.not_sent, sb.lost, "{sa:?} {sb:?}");
    assert!(sa.retried > 0, "{sa:?}");
}
