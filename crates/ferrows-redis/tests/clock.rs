//! The room clock against a real `redis-server` per test: the record is
//! created once and shared, a mismatched period is refused, a lost record
//! comes back with the same epoch, the offset matches Redis' TIME, and two
//! clocks tick the same n together, through a Redis kill too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::time::Duration;

use ferrows_redis::{ClockError, Error, RoomClock};
use redis::Value;
use support::RedisServer;
use tokio::time::{Instant, sleep};

const KEY: &str = "ferrows:{c}:clock";

async fn join(redis: &RedisServer, period_ms: u64) -> Result<RoomClock, ClockError> {
    RoomClock::join(
        &redis.url(),
        "c",
        Duration::from_millis(period_ms),
        Duration::from_secs(5),
    )
    .await
}

async fn record(redis: &RedisServer) -> Option<String> {
    match redis.cmd(&[b"GET", KEY.as_bytes()]).await.unwrap() {
        Value::BulkString(b) => Some(String::from_utf8(b).unwrap()),
        Value::Nil => None,
        other => panic!("GET: {other:?}"),
    }
}

async fn redis_time_us(redis: &RedisServer) -> u64 {
    match redis.cmd(&[b"TIME"]).await.unwrap() {
        Value::Array(parts) => {
            let n = |v: &Value| match v {
                Value::BulkString(b) => std::str::from_utf8(b).unwrap().parse::<u64>().unwrap(),
                other => panic!("{other:?}"),
            };
            n(&parts[0]) * 1_000_000 + n(&parts[1])
        }
        other => panic!("TIME: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_is_created_once_and_shared() {
    let redis = RedisServer::start();
    let before_ms = redis_time_us(&redis).await / 1000;
    let first = join(&redis, 250).await.unwrap();
    let epoch = first.status().epoch_ms;
    assert!(
        epoch >= before_ms && epoch < before_ms + 2000,
        "{epoch} vs {before_ms}"
    );
    assert_eq!(record(&redis).await.unwrap(), format!("v1 {epoch} 250"));
    sleep(Duration::from_millis(300)).await;
    let second = join(&redis, 250).await.unwrap();
    assert_eq!(second.status().epoch_ms, epoch);
    assert_eq!(record(&redis).await.unwrap(), format!("v1 {epoch} 250"));
    let ttl = redis.cmd(&[b"PTTL", KEY.as_bytes()]).await.unwrap();
    assert!(
        matches!(ttl, Value::Int(t) if t > 50_000 && t <= 60_000),
        "{ttl:?}"
    );
    let status = second.status();
    assert_eq!(status.period, Duration::from_millis(250));
    assert!(status.redis_reachable);
    assert!(status.rtt < Duration::from_millis(100), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_period_is_refused() {
    let redis = RedisServer::start();
    let first = join(&redis, 1000).await.unwrap();
    let err = join(&redis, 500).await.unwrap_err();
    match &err {
        ClockError::Mismatch {
            room,
            period,
            since_ms,
            ours,
        } => {
            assert_eq!(room, "c");
            assert_eq!(*period, Duration::from_secs(1));
            assert_eq!(*ours, Duration::from_millis(500));
            assert_eq!(*since_ms, first.status().epoch_ms);
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.starts_with("room c ticks every 1s (since 20"),
        "{text}"
    );
    assert!(
        text.ends_with(" UTC); this server was started with --tick 500ms; use the same --tick everywhere or another --room"),
        "{text}"
    );
    // A record that is not ours is an error too, not a panic or an overwrite.
    redis
        .cmd(&[b"SET", b"ferrows:{d}:clock", b"hello"])
        .await
        .unwrap();
    let err = RoomClock::join(
        &redis.url(),
        "d",
        Duration::from_secs(1),
        Duration::from_secs(2),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ClockError::Redis(Error::Unexpected { .. })),
        "{err:?}"
    );
}

/// Polls the record (≤ 15 s: the refresh runs every 10 s) until `done`.
async fn wait_record(redis: &RedisServer, done: impl Fn(Option<&str>) -> bool) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = record(redis).await;
        if done(r.as_deref()) {
            return r;
        }
        assert!(Instant::now() < deadline, "record stays {r:?}");
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_record_is_recreated_with_the_same_epoch() {
    let redis = RedisServer::start();
    let clock = join(&redis, 100).await.unwrap();
    let original = record(&redis).await.unwrap();
    redis.cmd(&[b"DEL", KEY.as_bytes()]).await.unwrap();
    let back = wait_record(&redis, |r| r.is_some()).await;
    assert_eq!(back.as_deref(), Some(original.as_str()));
    assert_eq!(format!("v1 {} 100", clock.status().epoch_ms), original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_epoch_wins() {
    let redis = RedisServer::start();
    let mut clock = join(&redis, 100).await.unwrap();
    let epoch = clock.status().epoch_ms;
    // A newer epoch (a node that started while the record was lost) is overwritten…
    let newer = format!("v1 {} 100", epoch + 5_000);
    redis
        .cmd(&[b"SET", KEY.as_bytes(), newer.as_bytes()])
        .await
        .unwrap();
    let ours = format!("v1 {epoch} 100");
    wait_record(&redis, |r| r == Some(ours.as_str())).await;
    // …an older one is adopted: n jumps forward, never back.
    let n_before = clock.next_tick().await;
    let older = format!("v1 {} 100", epoch - 5_000);
    redis
        .cmd(&[b"SET", KEY.as_bytes(), older.as_bytes()])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while clock.status().epoch_ms != epoch - 5_000 {
        assert!(Instant::now() < deadline, "older epoch not adopted");
        sleep(Duration::from_millis(100)).await;
    }
    let n_after = clock.next_tick().await;
    assert!(n_after >= n_before + 50, "{n_before} → {n_after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offset_matches_redis_time_within_half_the_round_trip() {
    let redis = RedisServer::start();
    let clock = join(&redis, 1000).await.unwrap();
    let half_rtt = clock.status().rtt / 2;
    // Scheduling noise on a loaded 2-core machine.
    let margin = half_rtt + Duration::from_millis(3);
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let before = clock.redis_time();
        let truth = Duration::from_micros(redis_time_us(&redis).await);
        let after = clock.redis_time();
        // Redis answered between `before` and `after` (on our estimate).
        assert!(
            truth + margin >= before,
            "Redis {truth:?} < estimate {before:?} - {margin:?}"
        );
        assert!(
            truth <= after + margin,
            "Redis {truth:?} > estimate {after:?} + {margin:?}"
        );
        worst = worst
            .max(before.saturating_sub(truth))
            .max(truth.saturating_sub(after));
        sleep(Duration::from_millis(50)).await;
    }
    eprintln!("offset error ≤ {worst:?} (half RTT {half_rtt:?})");
}

/// Ticks `clock` `count` times: (n, when).
async fn ticks(clock: &mut RoomClock, count: usize) -> Vec<(u64, Instant)> {
    let mut out = Vec::new();
    for _ in 0..count {
        let n = clock.next_tick().await;
        out.push((n, Instant::now()));
    }
    out
}

fn assert_together(a: &[(u64, Instant)], b: &[(u64, Instant)]) {
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.0, y.0, "the clocks disagree on n");
        let skew = if x.1 > y.1 { x.1 - y.1 } else { y.1 - x.1 };
        assert!(
            skew < Duration::from_millis(30),
            "tick {} skew {skew:?}",
            x.0
        );
    }
    for w in a.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "not consecutive");
        let gap = w[1].1 - w[0].1;
        assert!(
            gap > Duration::from_millis(60) && gap < Duration::from_millis(140),
            "tick {} came {gap:?} after the last",
            w[1].0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clocks_tick_together_and_through_a_redis_kill() {
    let mut redis = RedisServer::start();
    let mut one = join(&redis, 100).await.unwrap();
    sleep(Duration::from_millis(130)).await;
    let mut two = join(&redis, 100).await.unwrap();
    let epoch = one.status().epoch_ms;
    assert_eq!(two.status().epoch_ms, epoch);

    let (a, b) = tokio::join!(ticks(&mut one, 10), ticks(&mut two, 10));
    assert_together(&a, &b);
    // n counts from the epoch: the Redis time of boundary n is epoch + n × period.
    let now_ms = redis_time_us(&redis).await / 1000;
    let n = a.last().unwrap().0;
    assert!(
        now_ms >= epoch + n * 100 && now_ms < epoch + (n + 2) * 100,
        "n {n} at {now_ms}"
    );

    redis.kill();
    let (a2, b2) = tokio::join!(ticks(&mut one, 10), ticks(&mut two, 10));
    assert_eq!(a2[0].0, n + 1);
    assert_together(&a2, &b2);

    // A late caller skips the missed boundaries: never a burst, never a repeat.
    let last = a2.last().unwrap().0;
    sleep(Duration::from_millis(350)).await;
    let started = Instant::now();
    let late = one.next_tick().await;
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "a late caller waited"
    );
    assert!(late >= last + 3, "{last} → {late}");
    let next = one.next_tick().await;
    assert_eq!(next, late + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_an_error_within_the_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let err = RoomClock::join(
        &format!("redis://:pw-secret@127.0.0.1:{port}"),
        "c",
        Duration::from_secs(1),
        Duration::from_millis(800),
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        matches!(err, ClockError::Redis(Error::Unreachable { .. })),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains("pw-secret"));
}
