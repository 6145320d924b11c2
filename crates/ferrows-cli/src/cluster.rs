//! `--redis`: one chat room across several servers, through Redis
//! Streams (`ferrows-redis`).
//!
//! The room's [`Hub`] goes behind a [`Relay`]: a broadcast reaches this
//! server's clients at once and the other servers through Redis. The
//! relay's events become `msg:*` notices to this server's clients, the
//! tick comes from the leaderless [`RoomClock`] (the same n on every
//! server), and `GET /status` reports the backplane's state and counters.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use ferrows::Hub;
use ferrows::backplane::{BackplaneState, Relay, RelayConfig, RelayEvent, RelayEvents};
use ferrows_redis::{ClockError, ClockStatus, RedisBackplane, RedisOptions, RoomClock};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long the server waits for Redis at startup before it gives up.
pub(crate) const START_WAIT: Duration = Duration::from_secs(10);

/// An outage shorter than this is not told to clients (it is logged): a
/// publisher finding its idle connection broken after a Redis restart
/// reconnects within ~100 ms, and nothing is lost meanwhile (held and
/// retried). Shorter than any real Redis restart with the relay's backoff
/// (its first attempts come 0.1, 0.3 and 0.7 s after the failure).
pub(crate) const DOWN_NOTICE_AFTER: Duration = Duration::from_millis(750);

/// Loss notices are sent at most this often (the counts are summed).
const LOST_NOTICE_EVERY: Duration = Duration::from_secs(5);

/// The counters are logged at most this often, when they changed.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// The notice of an outage.
pub(crate) const NOTICE_DOWN: &str =
    "msg:* lost contact with the other servers: messages now reach only people on this server";

/// The notice of the end of an outage.
pub(crate) const NOTICE_UP: &str = "msg:* back in contact with the other servers";

/// The longest node name.
const MAX_NODE_NAME: usize = 64;

/// A refusal to start: printed as `error: MESSAGE`, exit status `code`.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

/// A Redis URL: never shown unredacted, not even by `Debug`.
#[derive(Clone)]
pub(crate) struct RedisUrl(String);

impl RedisUrl {
    /// The URL as given (for connecting only).
    fn secret(&self) -> &str {
        &self.0
    }

    /// The URL with its password replaced by `***`.
    pub(crate) fn redacted(&self) -> String {
        ferrows_redis::redact(&self.0)
    }

    /// `text` with the URL's password (if any) replaced by `***`: a second
    /// line of defence for error texts from below.
    fn scrub(&self, text: &str) -> String {
        match password(&self.0) {
            Some(p) if !p.is_empty() => text.replace(p, "***"),
            _ => text.to_owned(),
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No call into the redaction of the Redis crate here: a password
        // cannot leak from a fixed text.
        f.write_str("RedisUrl(***)")
    }
}

/// Parses `--redis` / `FERROWS_REDIS_URL` (its errors never repeat it).
pub(crate) fn parse_redis_url(text: &str) -> Result<RedisUrl, String> {
    if text.trim().is_empty() {
        return Err("empty: expected redis://[user:password@]host[:port][/db]".to_owned());
    }
    Ok(RedisUrl(text.trim().to_owned()))
}

/// The password of a `scheme://[user[:password]@]host…` URL, if any.
fn password(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let (userinfo, _) = authority.rsplit_once('@')?;
    userinfo.split_once(':').map(|(_, p)| p)
}

/// Whether `name` may name a node: 1 to 64 of `A-Z a-z 0-9 . _ : -`.
pub(crate) fn valid_node_name(name: &str) -> bool {
    (1..=MAX_NODE_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// This machine's host name (`localhost` if it has none we can use).
pub(crate) fn hostname() -> String {
    #[cfg(unix)]
    {
        if let Some(name) = nix::unistd::gethostname()
            .ok()
            .and_then(|n| n.to_str().map(str::to_owned))
            .filter(|n| !n.is_empty())
        {
            return name;
        }
    }
    "localhost".to_owned()
}

/// What `--redis` sets up: the relay, the clock's status, and the names
/// `/status` shows.
pub(crate) struct Cluster {
    pub(crate) relay: Relay,
    pub(crate) room: String,
    pub(crate) node: String,
    server: String,
    clock: Option<watch::Receiver<ClockStatus>>,
    /// The relay's events ended: it stopped.
    stopped: Arc<AtomicBool>,
}

/// A started cluster room and the clock that ticks it (if `--tick`).
pub(crate) struct Joined {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) clock: Option<(RoomClock, watch::Sender<ClockStatus>)>,
    pub(crate) events: RelayEvents,
}

/// Joins room `room` through Redis at `url`: the clock first (a
/// mismatched tick is refused, exit status 2), then the stream. Either
/// failing to reach Redis within [`START_WAIT`] is exit status 1.
pub(crate) async fn join(
    url: &RedisUrl,
    room: &str,
    node: String,
    tick: Option<Duration>,
    max_entry: usize,
    retain: Option<usize>,
    hub: Hub,
) -> anyhow::Result<Joined> {
    let server = url.redacted();
    let refuse = |code: u8, text: String| Refusal {
        code,
        message: url.scrub(&text),
    };
    let options = RedisOptions::new(room)
        .map_err(|e| refuse(2, format!("--room {room:?}: {e}")))?
        .max_entry_bytes(max_entry)
        .connect_timeout(START_WAIT);
    let options = match retain {
        Some(n) => options.retain(n),
        None => options,
    };
    let clock = match tick {
        Some(period) => {
            let clock = RoomClock::join(url.secret(), room, period, START_WAIT)
                .await
                .map_err(|e| match e {
                    ClockError::Mismatch { .. } => refuse(2, e.to_string()),
                    _ => refuse(1, e.to_string()),
                })?;
            let (tx, _) = watch::channel(clock.status());
            Some((clock, tx))
        }
        None => None,
    };
    let backplane = RedisBackplane::connect(url.secret(), options)
        .await
        .map_err(|e| refuse(1, e.to_string()))?;
    let relay = Relay::start(hub, backplane, RelayConfig::default().name(node.clone()));
    // Subscribed before anything can happen.
    let events = relay.events();
    let cluster = Arc::new(Cluster {
        relay,
        room: room.to_owned(),
        node,
        server,
        clock: clock.as_ref().map(|(_, tx)| tx.subscribe()),
        stopped: Arc::default(),
    });
    Ok(Joined {
        cluster,
        clock,
        events,
    })
}

impl Cluster {
    /// Whether the relay stopped for good.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// The redacted server, for the startup line.
    pub(crate) fn server(&self) -> &str {
        &self.server
    }

    /// The `backplane` and `clock` parts of `/status`, and the names.
    pub(crate) fn status(&self, clients: usize) -> serde_json::Value {
        let s = self.relay.stats();
        let (state, since, reason) = match &s.state {
            _ if self.stopped.load(Ordering::Relaxed) => ("down", None, Some("stopped".to_owned())),
            BackplaneState::Down { since, reason } => {
                ("reconnecting", Some(unix_ms(*since)), Some(reason.clone()))
            }
            _ => ("up", None, None),
        };
        let clock = self.clock.as_ref().map(|rx| {
            let c = *rx.borrow();
            serde_json::json!({
                "epoch_ms": c.epoch_ms,
                "period_ms": u64::try_from(c.period.as_millis()).unwrap_or(u64::MAX),
                // Microsecond precision.
                "rtt_ms": c.rtt.as_micros() as f64 / 1000.0,
                "redis_reachable": c.redis_reachable,
            })
        });
        serde_json::json!({
            "clients": clients,
            "room": self.room,
            "node": self.node,
            "node_id": self.relay.node().to_string(),
            "backplane": {
                "engine": "redis",
                "server": self.server,
                "state": state,
                "since_ms": since,
                "reason": reason,
                "published": s.published,
                "received": s.received,
                "delivered": s.delivered_remote,
                "lost": s.lost,
                "not_sent": s.not_sent,
                "republished": s.republished,
                "retried": s.retried,
                "duplicates_dropped": s.duplicates_dropped,
                "foreign_version": s.foreign_version,
                "oversize": s.oversize,
                "malformed": s.malformed,
                "reconnects": s.reconnects,
                "down_seconds": s.down_seconds,
                "resumes": s.resumes,
                "stream_resets": s.stream_resets,
                "outbox_depth": s.outbox_depth,
                "origins": s.origins,
            },
            "clock": clock,
        })
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Sends `tick:<n>` to this server's clients at every boundary of the
/// room's clock (the same n on every server; never a repeat).
pub(crate) async fn tick_loop(hub: Hub, mut clock: RoomClock, status: watch::Sender<ClockStatus>) {
    loop {
        let n = clock.next_tick().await;
        hub.broadcast(format!("tick:{n}"));
        status.send_replace(clock.status());
    }
}

/// Turns the relay's events into notices to this server's clients: `Down`
/// once it has lasted [`DOWN_NOTICE_AFTER`], then `Up` (a shorter blip is
/// not told), losses summed and at most one notice every
/// [`LOST_NOTICE_EVERY`]. Logs the counters every minute when they changed.
pub(crate) async fn notices(cluster: Arc<Cluster>, mut events: RelayEvents) {
    let relay = &cluster.relay;
    let hub = relay.hub().clone();
    // Loss is counted from the relay's counter, so a notice is exact even
    // if this subscriber fell behind and missed events.
    let mut reported_lost = relay.stats().lost;
    let mut last_lost_notice: Option<Instant> = None;
    let mut flush_at: Option<Instant> = None;
    // A Down not told yet (when it will be), and whether one was told.
    let mut down_at: Option<Instant> = None;
    let mut down_told = false;
    let mut summary = tokio::time::interval_at(Instant::now() + SUMMARY_EVERY, SUMMARY_EVERY);
    let mut last_summary = None;
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            () = sleep_until_some(down_at) => {
                down_at = None;
                down_told = true;
                hub.broadcast(NOTICE_DOWN);
                continue;
            }
            () = sleep_until_some(flush_at) => {
                flush_at = None;
                let lost = relay.stats().lost;
                if lost > reported_lost {
                    let n = lost - reported_lost;
                    hub.broadcast(format!("msg:* {n} messages from other servers were lost"));
                    reported_lost = lost;
                    last_lost_notice = Some(Instant::now());
                }
                continue;
            }
            _ = summary.tick() => {
                let s = relay.stats();
                let now = (s.published, s.received, s.lost, s.not_sent, s.duplicates_dropped, s.reconnects);
                if now != (0, 0, 0, 0, 0, 0) && last_summary != Some(now) {
                    last_summary = Some(now);
                    tracing::info!(
                        node = %cluster.node,
                        published = s.published, received = s.received,
                        delivered = s.delivered_remote, lost = s.lost, not_sent = s.not_sent,
                        republished = s.republished,
                        duplicates_dropped = s.duplicates_dropped, reconnects = s.reconnects,
                        resumes = s.resumes, stream_resets = s.stream_resets,
                        down_seconds = s.down_seconds, "backplane counters"
                    );
                }
                continue;
            }
        };
        match event {
            None => {
                cluster.stopped.store(true, Ordering::Relaxed);
                tracing::warn!(node = %cluster.node, "the backplane relay stopped: messages reach this server's clients only");
                hub.broadcast(NOTICE_DOWN);
                return;
            }
            Some(RelayEvent::Down { .. }) => {
                if !down_told && down_at.is_none() {
                    down_at = Some(Instant::now() + DOWN_NOTICE_AFTER);
                }
            }
            Some(RelayEvent::Up { .. }) => {
                // Due but not yet told (this task ran late): told now.
                if down_at.is_some_and(|at| Instant::now() >= at) {
                    hub.broadcast(NOTICE_DOWN);
                    down_told = true;
                }
                if std::mem::take(&mut down_told) {
                    hub.broadcast(NOTICE_UP);
                }
                // A blip that ended before it was told stays untold.
                down_at = None;
            }
            Some(RelayEvent::NotSent { count }) => {
                tracing::warn!(node = %cluster.node, "{count} messages could not be sent to the other servers (they reached this server's clients)");
            }
            Some(_) => {}
        }
        // A loss (told by an event, or missed with it): notice it now, or
        // when the rate limit allows.
        if flush_at.is_none() && relay.stats().lost > reported_lost {
            let due = last_lost_notice.map_or(Instant::now(), |at| at + LOST_NOTICE_EVERY);
            flush_at = Some(due);
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use ferrows::backplane::memory::Bus;

    /// A node on `bus` whose relay events become notices, and a member of
    /// its hub that records them.
    fn node(bus: &Bus, name: &str) -> (Arc<Cluster>, ferrows::Member, tokio::task::JoinHandle<()>) {
        let hub = Hub::new(1024);
        let member = hub.join();
        let relay = Relay::start(hub, bus.connect(), RelayConfig::default().name(name));
        let events = relay.events();
        let cluster = Arc::new(Cluster {
            relay,
            room: "chat".to_owned(),
            node: name.to_owned(),
            server: "memory".to_owned(),
            clock: None,
            stopped: Arc::default(),
        });
        let task = tokio::spawn(notices(cluster.clone(), events));
        (cluster, member, task)
    }

    /// The notices (`msg:* …`) a member got so far.
    fn notices_of(member: &mut ferrows::Member) -> Vec<String> {
        let mut got = Vec::new();
        while let Some(p) = member.try_recv() {
            let text = p.message().as_text().unwrap_or_default().to_owned();
            if text.starts_with("msg:* ") {
                got.push(text);
            }
        }
        got
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_told_once_and_its_end_too() {
        let bus = Bus::new();
        let (_c, mut member, _t) = node(&bus, "a");
        tokio::time::sleep(Duration::from_millis(100)).await;
        bus.take_down();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(notices_of(&mut member), [NOTICE_DOWN]);
        bus.bring_up();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(notices_of(&mut member), [NOTICE_UP]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_blip_that_loses_nothing_is_not_told() {
        // A busy room: reads return at once (not after an idle second).
        let bus = Bus::new().idle_reply(Duration::from_millis(50));
        let (c, mut member, _t) = node(&bus, "a");
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Broken connections, reconnected after ~100 ms.
        bus.kill_connections();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(c.relay.stats().reconnects >= 1);
        assert_eq!(notices_of(&mut member), Vec::<String>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn losses_are_summed_into_one_notice_per_5_s() {
        let bus = Bus::new();
        let (_a, _am, _at) = node(&bus, "a");
        let (b, mut member, _bt) = node(&bus, "b");
        let (sender, _sm, _st) = node(&bus, "sender");
        let settle = Duration::from_millis(1500);
        // The baseline, then 3 lost, then 4 lost within 5 s: one notice
        // of 3 at once, one of 4 when 5 s have passed.
        sender.relay.broadcast("first");
        tokio::time::sleep(settle).await;
        bus.drop_next(3);
        for _ in 0..4 {
            sender.relay.broadcast("x");
        }
        tokio::time::sleep(settle).await;
        let lost = |n: u64| format!("msg:* {n} messages from other servers were lost");
        assert_eq!(notices_of(&mut member), [lost(3)]);
        bus.drop_next(4);
        for _ in 0..5 {
            sender.relay.broadcast("y");
        }
        tokio::time::sleep(settle).await;
        assert_eq!(notices_of(&mut member), Vec::<String>::new());
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(notices_of(&mut member), [lost(4)]);
        assert_eq!(b.relay.stats().lost, 7);
    }

    #[test]
    fn passwords_are_found_and_scrubbed() {
        assert_eq!(password("redis://:s3cret@host:6379/0"), Some("s3cret"));
        assert_eq!(password("redis://user:pa:ss@host"), Some("pa:ss"));
        assert_eq!(password("redis://user@host"), None);
        assert_eq!(password("redis://host:6379"), None);
        assert_eq!(password("redis+unix:///run/redis.sock"), None);
        let url = RedisUrl("redis://:s3cret@host/".to_owned());
        assert_eq!(url.scrub("auth s3cret failed"), "auth *** failed");
        assert_eq!(format!("{url:?}"), "RedisUrl(***)");
    }

    #[test]
    fn node_names() {
        assert!(valid_node_name("web1:9002"));
        assert!(valid_node_name("a.b-c_d"));
        for bad in ["", "a b", "x@y", "é", &"n".repeat(65)] {
            assert!(!valid_node_name(bad), "{bad:?}");
        }
    }
}
