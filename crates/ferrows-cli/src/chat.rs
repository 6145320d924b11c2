//! `ferrows serve chat` (also `/chat` of `ferrows serve`): a chat with a
//! synced tick, in the `cmd:data` text format of the classic demo.
//!
//! Every text message a client sends goes to every client, sender
//! included, as `msg:<text>`; a single timer task sends `tick:<n>` to all
//! (n counts from 0 since the server started, the same n for everyone);
//! joins and leaves are announced as `msg:* client <id> joined|left`.
//!
//! With `--redis` the room spans every server started with the same
//! `--redis` and `--room` (see [`crate::cluster`]): messages reach every
//! server's clients (this server's at once), the tick n is the same
//! everywhere, join ids name the server (`client 3@web1:9002`), and
//! `GET /status` reports the backplane.
//!
//! Fan-out goes through a [`Hub`]: each client has a bounded queue of
//! messages (`--queue`), and reading from it stops while the client's
//! socket is backed up (its write buffer holds [`HIGH_WATER_MARK`] bytes).
//! A client that falls further behind is dropped from the hub and closed
//! with 1008, so a slow client never slows the others down or grows the
//! server's memory.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use ferrows::{CloseCode, Config, Handshake, Hub, Member, Message, Prepared, WebSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::{self, Cluster, RedisUrl, Refusal};
use crate::duration::{self, Bare};
use crate::heartbeat::{self, Liveness, OnBeat, close_for_shutdown};
use crate::metrics::Exporter;
use crate::net::{self, Io, Stream, display_addr};
use crate::{CommonArgs, pages};

/// Stop taking messages from a client's queue while this many bytes are
/// waiting to be written to its socket.
pub(crate) const HIGH_WATER_MARK: usize = 64 * 1024;

/// The shortest tick accepted.
const MIN_TICK: Duration = Duration::from_millis(10);

/// The longest tick accepted (a day).
const MAX_TICK: Duration = Duration::from_secs(24 * 3600);

/// Message limit and heartbeat, for `serve chat` and `ferrows serve`.
#[derive(Args, Debug)]
pub(crate) struct SessionArgs {
    /// Close with 1009 on larger messages (bytes)
    #[arg(long, value_name = "BYTES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(1..=64 * 1024 * 1024))]
    pub(crate) max_message_size: u64,
    /// Ping every client this often (a bare number is ms; also 30s, 1m);
    /// terminate those silent since the last ping
    #[arg(long, value_name = "DURATION", default_value = "30000",
          value_parser = duration::within(Bare::Millis, Duration::from_millis(1), Duration::from_secs(86_400)))]
    pub(crate) heartbeat_interval: Duration,
}

impl SessionArgs {
    /// The message limit as a `Config` (frames bounded by it too).
    pub(crate) fn config(&self) -> Config {
        let max = usize::try_from(self.max_message_size).unwrap_or(usize::MAX);
        Config::default().max_message_size(max).max_frame_size(max)
    }

    /// A heartbeat at the interval, announcing `shutdown` too.
    pub(crate) fn heartbeat(&self, shutdown: watch::Receiver<bool>) -> watch::Receiver<u64> {
        heartbeat::heartbeat(self.heartbeat_interval, shutdown)
    }
}

/// `ferrows serve chat`.
#[derive(Args, Debug)]
pub(crate) struct ChatArgs {
    /// Address to listen on; `::` is dual-stack (IPv4 and IPv6)
    #[arg(long, value_name = "ADDR", default_value = "::")]
    bind: IpAddr,
    /// Port to listen on; 0 picks a free one
    #[arg(long, value_name = "PORT", default_value_t = 9002)]
    port: u16,
    #[command(flatten)]
    room: RoomArgs,
    #[command(flatten)]
    session: SessionArgs,
    #[command(flatten)]
    common: CommonArgs,
}

/// Settings of a chat room, shared by `serve chat` and `serve`.
#[derive(Args, Debug, Clone)]
pub(crate) struct RoomArgs {
    /// Send `tick:<n>` to every client this often (e.g. 500ms, 2s, 1m; a
    /// bare number is ms); 0 disables
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_tick)]
    pub(crate) tick: Tick,
    /// Messages queued per client; a client that falls further behind is closed with 1008
    #[arg(long, value_name = "MESSAGES", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) queue: u64,
    /// Messages per second one client may send (a token bucket); past it the
    /// server stops reading that client until a token is due, so a flooding
    /// client is slowed by TCP instead of overflowing everyone's queue; 0 disables
    #[arg(long, value_name = "MSGS/S", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub(crate) rate: u32,
    /// Messages one client may send at once above --rate
    #[arg(long, value_name = "MESSAGES", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) burst: u32,
    /// The Redis (or Valkey) that shares the room with other servers.
    #[arg(long, value_name = "URL", env = "FERROWS_REDIS_URL", hide_env_values = true,
          value_parser = cluster::parse_redis_url,
          help = "Share the room with every server given the same Redis (or Valkey) and --room: \
                  redis://[user:password@]host[:port][/db]. Prefer the environment variable for \
                  a password (arguments show in `ps`)")]
    pub(crate) redis: Option<RedisUrl>,
    /// With --redis: which room to share (the Redis keys' prefix; A-Z a-z 0-9 . _ -, at most 64)
    #[arg(
        long = "room",
        value_name = "NAME",
        env = "FERROWS_CHAT_ROOM",
        default_value = "chat"
    )]
    pub(crate) room_name: String,
    /// This server's name in logs and join notices.
    #[arg(
        long,
        value_name = "NAME",
        env = "FERROWS_NODE_NAME",
        help = "With --redis: this server's name in logs and join notices \
                  [default: <hostname>:<port>]"
    )]
    pub(crate) node_name: Option<String>,
    /// Messages kept in the Redis stream.
    #[arg(long, value_name = "N", requires = "redis",
          help = "With --redis: messages kept in the Redis stream for servers that reconnect \
                  [default: from --max-message-size, 100 to 10000]",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub(crate) redis_retain: Option<u64>,
}

/// A client's inbound allowance: `rate` messages a second, `burst` at
/// once. Counted in millitokens so the arithmetic is exact.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    /// Millitokens per millisecond (= messages per second); 0: unlimited.
    rate: u64,
    /// The most millitokens held.
    cap: u64,
    held: u64,
    at: tokio::time::Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(rate: u32, burst: u32, now: tokio::time::Instant) -> Bucket {
        let cap = u64::from(burst.max(1)) * 1000;
        Bucket {
            rate: u64::from(rate),
            cap,
            held: cap,
            at: now,
        }
    }

    fn refill(&mut self, now: tokio::time::Instant) {
        let ms =
            u64::try_from(now.saturating_duration_since(self.at).as_millis()).unwrap_or(u64::MAX);
        if ms > 0 {
            self.held = self
                .held
                .saturating_add(ms.saturating_mul(self.rate))
                .min(self.cap);
            self.at = now;
        }
    }

    /// `None` if a message may be read now, else when the next may.
    pub(crate) fn ready_at(&mut self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        if self.rate == 0 {
            return None;
        }
        self.refill(now);
        if self.held >= 1000 {
            return None;
        }
        let wait_ms = (1000 - self.held).div_ceil(self.rate);
        Some(self.at + Duration::from_millis(wait_ms))
    }

    /// Counts one message read.
    pub(crate) fn take(&mut self, now: tokio::time::Instant) {
        if self.rate == 0 {
            return;
        }
        self.refill(now);
        self.held = self.held.saturating_sub(1000);
    }
}

/// The tick period; `None`: no tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tick(pub(crate) Option<Duration>);

/// Parses `--tick`: `0` (off), or a duration in the one grammar
/// ([`crate::duration`]; a bare number is milliseconds): `500ms`, `2s`,
/// `1.5s`, `1m`. Whole milliseconds (the room clock keeps the period in
/// milliseconds), from 10 ms to 24 h.
pub(crate) fn parse_tick(text: &str) -> Result<Tick, String> {
    let period = duration::parse(text, Bare::Millis)?;
    if period.is_zero() {
        return Ok(Tick(None));
    }
    if period.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("{text:?} is not a whole number of milliseconds"));
    }
    if period < MIN_TICK {
        return Err(format!("{text:?} is too short; the shortest tick is 10ms"));
    }
    if period > MAX_TICK {
        return Err(format!("{text:?} is too long; the longest tick is 24h"));
    }
    Ok(Tick(Some(period)))
}

/// A chat room: the hub of its clients and the timer that ticks them.
/// Clones share the room; the timer stops when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct Room {
    hub: Hub,
    /// With `--redis`: the relay behind the hub, and what `/status` shows.
    cluster: Option<Arc<Cluster>>,
    /// Each client's inbound allowance: messages per second (0: none), burst.
    rate: u32,
    burst: u32,
    _ticker: Option<Arc<AbortOnDrop>>,
    _notices: Option<Arc<AbortOnDrop>>,
}

/// A room's hub, counting its slow-client drops for `--metrics`.
fn new_hub(queue: usize, exporter: Option<&Arc<Exporter>>) -> Hub {
    match exporter {
        Some(e) => Hub::with_metrics(queue, e.lib.clone()),
        None => Hub::new(queue),
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Room {
    /// Opens a room whose clients queue at most `queue` messages each, and
    /// starts its tick (on the current tokio runtime).
    pub(crate) fn start(tick: Tick, queue: usize, exporter: Option<&Arc<Exporter>>) -> Room {
        let hub = new_hub(queue, exporter);
        let ticker = tick
            .0
            .map(|every| Arc::new(AbortOnDrop(tokio::spawn(tick_loop(hub.clone(), every)))));
        Room {
            hub,
            cluster: None,
            rate: 0,
            burst: 1,
            _ticker: ticker,
            _notices: None,
        }
    }

    /// The room from its flags, on a server listening on `port` whose
    /// messages are at most `max_message` bytes. With `--redis`, joins the
    /// room in Redis first: a [`Refusal`] (exit status 1 or 2) if Redis is
    /// out of reach for 10 s, or the room ticks at another rate.
    pub(crate) async fn open(
        args: &RoomArgs,
        port: u16,
        max_message: usize,
        exporter: Option<&Arc<Exporter>>,
    ) -> anyhow::Result<Room> {
        let queue = usize::try_from(args.queue).unwrap_or(usize::MAX);
        let Some(url) = &args.redis else {
            tracing::info!(tick = ?args.tick.0, queue, rate = args.rate, burst = args.burst, "chat room open");
            return Ok(Room {
                rate: args.rate,
                burst: args.burst,
                ..Room::start(args.tick, queue, exporter)
            });
        };
        let node = args
            .node_name
            .clone()
            .unwrap_or_else(|| format!("{}:{port}", cluster::hostname()));
        if !cluster::valid_node_name(&node) {
            return Err(Refusal {
                code: 2,
                message: format!(
                    "node name {node:?}: use 1 to 64 of A-Z a-z 0-9 . _ : - (set --node-name or FERROWS_NODE_NAME)"
                ),
            }
            .into());
        }
        let hub = new_hub(queue, exporter);
        let retain = args
            .redis_retain
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        // A message travels as `msg:` and the text; notices (a join names
        // the node) may be longer than a tiny --max-message-size.
        let max_entry = max_message.saturating_add(4).max(1024);
        let joined = cluster::join(
            url,
            &args.room_name,
            node,
            args.tick.0,
            max_entry,
            retain,
            hub.clone(),
        )
        .await?;
        let cluster = joined.cluster;
        if let Some(exporter) = exporter {
            exporter.set_cluster(cluster.clone());
        }
        tracing::info!(
            tick = ?args.tick.0, queue, rate = args.rate, burst = args.burst,
            room = %cluster.room, backplane = %cluster.server(), node = %cluster.node,
            node_id = %cluster.relay.node(),
            "chat room open"
        );
        let ticker = joined.clock.map(|(clock, status)| {
            Arc::new(AbortOnDrop(tokio::spawn(cluster::tick_loop(
                hub.clone(),
                clock,
                status,
            ))))
        });
        let notices = tokio::spawn(cluster::notices(cluster.clone(), joined.events));
        Ok(Room {
            hub,
            cluster: Some(cluster),
            rate: args.rate,
            burst: args.burst,
            _ticker: ticker,
            _notices: Some(Arc::new(AbortOnDrop(notices))),
        })
    }

    /// With `--redis`: waits (at most `max`) until what this server's
    /// clients said (their leave notices at shutdown, say) has gone to Redis.
    pub(crate) async fn drain(&self, max: Duration) {
        let Some(c) = &self.cluster else { return };
        let deadline = tokio::time::Instant::now() + max;
        while c.relay.stats().outbox_depth > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends `text` to every client: this server's at once, and with
    /// `--redis` every other server's.
    fn broadcast(&self, text: String) {
        match &self.cluster {
            Some(c) => {
                c.relay.broadcast(text);
            }
            None => {
                self.hub.broadcast(text);
            }
        }
    }

    /// How a client is named in join and leave notices: its number, and
    /// with `--redis` `@` and this server's name.
    fn client_name(&self, id: u64) -> String {
        match &self.cluster {
            Some(c) => format!("{id}@{}", c.node),
            None => id.to_string(),
        }
    }

    /// The body of `GET /status`: the number of clients, and with
    /// `--redis` the room, this node, the backplane and the clock.
    pub(crate) fn status_json(&self) -> String {
        let clients = self.hub.len();
        let value = match &self.cluster {
            Some(c) => c.status(clients),
            None => serde_json::json!({ "clients": clients, "backplane": null }),
        };
        let mut body = value.to_string();
        body.push('\n');
        body
    }
}

/// How long a server with `--redis` waits at exit for its last messages
/// (the leave notices of its clients) to reach Redis.
pub(crate) const DRAIN_AT_EXIT: Duration = Duration::from_secs(1);

/// The chat server's status path.
pub(crate) const STATUS_PATH: &str = "/status";

/// Answers `GET /status` with the room's status as JSON (405 for methods
/// other than GET and HEAD).
pub(crate) async fn respond_status(hs: Handshake<Stream>, peer: SocketAddr, room: &Room) {
    let method = hs.request().method().to_owned();
    let no_store = [("Cache-Control".to_owned(), "no-store".to_owned())];
    let result = if method == "GET" || method == "HEAD" {
        let body = room.status_json();
        hs.respond(200, &no_store, "application/json", body.as_bytes())
            .await
    } else {
        pages::method_not_allowed(hs).await
    };
    if let Err(e) = result {
        tracing::debug!(peer = %display_addr(peer), error = %e, "status not sent");
    }
}

/// Sends `tick:<n>` to every member every `every`, n counting from 0 (sent
/// at start). One task for all, so every client sees the same n. A late
/// timer delays the next tick rather than bursting.
async fn tick_loop(hub: Hub, every: Duration) {
    let mut timer = tokio::time::interval(every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        timer.tick().await;
        hub.broadcast(format!("tick:{n}"));
        n = n.wrapping_add(1);
    }
}

/// Handles one request on a chat path: a WebSocket upgrade joins the room,
/// a plain request gets the chat page.
pub(crate) async fn handle(
    mut hs: Handshake<Stream>,
    peer: SocketAddr,
    room: Room,
    beat: watch::Receiver<u64>,
) {
    if !hs.request().is_upgrade() {
        if hs.request().path() == STATUS_PATH {
            respond_status(hs, peer, &room).await;
        } else {
            pages::respond_page(hs, peer, pages::chat()).await;
        }
        return;
    }
    let path = hs.request().path().to_owned();
    hs.config_mut().write_high_water_mark = HIGH_WATER_MARK;
    if let Some(d) = hs.config_mut().compression.as_mut() {
        *d = d.clone().for_broadcast();
    }
    // Join before the 101 goes out: a client that has its 101 is in the
    // room, so a message broadcast after that reaches it (joining after
    // `accept` left a window where the 101 was out and a broadcast missed
    // the client). What arrives meanwhile waits in the member's queue.
    let mut member = room.hub.join();
    let mut ws = match hs.accept().await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::info!(peer = %display_addr(peer), error = %e, "handshake refused");
            return;
        }
    };
    let id = member.id();
    tracing::info!(peer = %display_addr(peer), %path, client = id, compression = ws.compression().is_some(), "open");
    let name = room.client_name(id);
    room.broadcast(format!("msg:* client {name} joined"));
    let bucket = Bucket::new(room.rate, room.burst, tokio::time::Instant::now());
    let code = session(&mut ws, &mut member, &room, bucket, beat, peer).await;
    drop(member);
    room.broadcast(format!("msg:* client {name} left"));
    // After a close frame from the peer: wait for the TCP close (bounded
    // by the close timeout), after the notice so no one waits for it.
    while ws.recv().await.is_some() {}
    tracing::info!(peer = %display_addr(peer), client = id, close = %code, "closed");
}

enum Step {
    Beat,
    Queued(Option<Prepared>),
    Lagged,
    /// A token of the client's inbound allowance is due.
    Allowed,
    Io(Io),
}

/// Runs one client until its connection ends; returns the close code that
/// ended it, for the log.
async fn session(
    ws: &mut WebSocket<Stream>,
    member: &mut Member,
    room: &Room,
    mut bucket: Bucket,
    mut beat: watch::Receiver<u64>,
    peer: SocketAddr,
) -> CloseCode {
    let Some(mut live) = Liveness::start(&mut beat) else {
        return close_for_shutdown(ws).await;
    };
    let mut binary_seen = 0u64;
    loop {
        // Backed up: stop taking from the hub queue (it fills, and the hub
        // drops us if it overflows) and stop reading; just write.
        let backed_up = ws.buffered_amount() >= HIGH_WATER_MARK;
        // While backed up, the hub queue is left to fill; the hub wakes us
        // at once if it overflows and we are dropped.
        let queued = async {
            if backed_up {
                member.lagged().await;
                Step::Lagged
            } else {
                Step::Queued(member.recv().await)
            }
        };
        // Over its allowance: stop reading the client (TCP slows it down)
        // until a token is due, but keep writing to it.
        let throttled = bucket.ready_at(tokio::time::Instant::now());
        let io = async {
            match throttled {
                None => Step::Io(net::io(ws, backed_up).await),
                Some(_) if ws.buffered_amount() > 0 => Step::Io(Io::Flushed(ws.flush().await)),
                Some(at) => {
                    tokio::time::sleep_until(at).await;
                    Step::Allowed
                }
            }
        };
        // Unbiased: neither a busy room nor a chatty client starves the
        // other direction.
        let step = tokio::select! {
            _ = beat.changed() => Step::Beat,
            step = queued => step,
            step = io => step,
        };
        match step {
            Step::Beat => match live.tick(&beat, ws) {
                OnBeat::Pinged => {}
                OnBeat::Shutdown => return close_for_shutdown(ws).await,
                OnBeat::Dead => {
                    tracing::info!(peer = %display_addr(peer), client = member.id(), "no sign of life since the last ping: terminating");
                    return CloseCode::ABNORMAL;
                }
            },
            Step::Queued(Some(prepared)) => {
                if ws.queue_prepared(&prepared).is_err() {
                    return CloseCode::ABNORMAL;
                }
                // Take what else is ready, up to the high-water mark; the
                // next recv() writes it all at once.
                while ws.buffered_amount() < HIGH_WATER_MARK {
                    let Some(more) = member.try_recv() else { break };
                    if ws.queue_prepared(&more).is_err() {
                        return CloseCode::ABNORMAL;
                    }
                }
            }
            Step::Queued(None) | Step::Lagged => {
                if member.is_lagged() {
                    tracing::warn!(peer = %display_addr(peer), client = member.id(), "client fell behind by more than its queue: closing with 1008");
                    let _ = ws
                        .close(CloseCode::POLICY_VIOLATION, "too slow: fell behind")
                        .await;
                    return CloseCode::POLICY_VIOLATION;
                }
                if matches!(step, Step::Queued(None)) {
                    // Removed from the hub without lagging: the room is
                    // closing.
                    let _ = ws.close(CloseCode::GOING_AWAY, "chat closed").await;
                    return CloseCode::GOING_AWAY;
                }
            }
            Step::Io(Io::Flushed(Ok(()))) | Step::Allowed => {}
            Step::Io(Io::Flushed(Err(_)) | Io::Received(None)) => return CloseCode::ABNORMAL,
            Step::Io(Io::Received(Some(Err(e)))) => {
                tracing::debug!(peer = %display_addr(peer), error = %e, "connection failed");
                return e.close_code().unwrap_or(CloseCode::ABNORMAL);
            }
            Step::Io(Io::Received(Some(Ok(msg)))) => {
                live.saw_life();
                if matches!(msg, Message::Text(_) | Message::Binary(_)) {
                    bucket.take(tokio::time::Instant::now());
                }
                match msg {
                    Message::Text(text) => {
                        room.broadcast(format!("msg:{}", text.as_str()));
                    }
                    Message::Binary(data) => {
                        binary_seen += 1;
                        if binary_seen == 1 {
                            tracing::info!(peer = %display_addr(peer), client = member.id(), bytes = data.len(), "binary message ignored: the chat protocol is text");
                        } else {
                            tracing::debug!(peer = %display_addr(peer), client = member.id(), bytes = data.len(), "binary message ignored");
                        }
                    }
                    Message::Close(frame) => {
                        // recv() already answered.
                        return frame.map_or(CloseCode::NO_STATUS, |f| f.code);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// `ferrows serve chat`: the chat alone, its page on every path.
pub(crate) async fn serve(args: ChatArgs) -> anyhow::Result<ExitCode> {
    let opts = crate::net_options(&args.common, args.session.config())?;
    let listener = net::bind(args.bind, args.port)?;
    let local = listener.local_addr().context("local address")?;
    // The room first (with --redis: Redis reached, the tick agreed): the
    // port is bound but nothing is accepted until the room is open.
    let max_message = usize::try_from(args.session.max_message_size).unwrap_or(usize::MAX);
    let room = Room::open(&args.room, local.port(), max_message, opts.exporter()).await?;
    tracing::info!("listening on {}", display_addr(local));
    // The heartbeat channel also carries the shutdown to every connection.
    let (stop_tx, _) = watch::channel(false);
    let beat = args.session.heartbeat(stop_tx.subscribe());
    let shared = room.clone();
    net::run_with_shutdown(listener, opts, stop_tx, move |hs, peer, _shutdown| {
        handle(hs, peer, shared.clone(), beat.clone())
    })
    .await?;
    // The other servers hear of the clients that left.
    room.drain(DRAIN_AT_EXIT).await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ms(n: u64) -> Tick {
        Tick(Some(Duration::from_millis(n)))
    }

    #[test]
    fn tick_durations() {
        assert_eq!(parse_tick("1s").unwrap(), ms(1000));
        assert_eq!(parse_tick("500ms").unwrap(), ms(500));
        assert_eq!(parse_tick("2s").unwrap(), ms(2000));
        assert_eq!(parse_tick("1.5s").unwrap(), ms(1500));
        assert_eq!(parse_tick("0.25s").unwrap(), ms(250));
        assert_eq!(parse_tick("1m").unwrap(), ms(60_000));
        assert_eq!(parse_tick(" 100ms ").unwrap(), ms(100));
        assert_eq!(parse_tick("250").unwrap(), ms(250), "a bare number is ms");
        assert_eq!(parse_tick("2h").unwrap(), ms(7_200_000));
        for off in ["0", "0s", "0ms", "000"] {
            assert_eq!(parse_tick(off).unwrap(), Tick(None), "{off}");
        }
    }

    #[test]
    fn bad_ticks_say_why() {
        for (bad, why) in [
            ("", "expected a duration"),
            ("fast", "expected a duration"),
            ("5", "too short"),
            ("5d", "unknown unit"),
            ("-1s", "expected a duration"),
            ("1.s", "expected a duration"),
            (".5s", "expected a duration"),
            ("1.0001s", "whole number of milliseconds"),
            ("0.5ms", "whole number of milliseconds"),
            ("5ms", "too short"),
            ("25000m", "too long"),
            ("99999999999999999999s", "too long"),
            ("1s1", "unknown unit"),
        ] {
            let err = parse_tick(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_the_burst_then_the_rate() {
        use tokio::time::Instant;
        let start = Instant::now();
        let mut b = Bucket::new(10, 3, start);
        for _ in 0..3 {
            assert_eq!(b.ready_at(Instant::now()), None);
            b.take(Instant::now());
        }
        // Empty: the next message is due in 1/10 s.
        assert_eq!(
            b.ready_at(Instant::now()),
            Some(start + Duration::from_millis(100))
        );
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(b.ready_at(Instant::now()).is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.ready_at(Instant::now()), None);
        b.take(Instant::now());
        // A long pause refills up to the burst, not beyond.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert_eq!(b.ready_at(Instant::now()), None);
            b.take(Instant::now());
        }
        assert!(b.ready_at(Instant::now()).is_some());
        // Rate 0: unlimited.
        let mut free = Bucket::new(0, 1, Instant::now());
        for _ in 0..1000 {
            assert_eq!(free.ready_at(Instant::now()), None);
            free.take(Instant::now());
        }
    }

    #[tokio::test]
    async fn every_member_gets_the_same_ticks_from_zero() {
        async fn next(m: &mut Member) -> u64 {
            let p = tokio::time::timeout(Duration::from_secs(5), m.recv())
                .await
                .unwrap()
                .unwrap();
            let text = p.message().as_text().unwrap();
            text.strip_prefix("tick:").unwrap().parse().unwrap()
        }
        let room = Room::start(ms(20), 64, None);
        let mut a = room.hub.join();
        // The tick task has not run yet (current-thread runtime): a sees
        // the count from its start.
        assert_eq!(next(&mut a).await, 0);
        assert_eq!(next(&mut a).await, 1);
        let mut b = room.hub.join();
        let b_first = next(&mut b).await;
        // a saw every tick in between, and b's ticks are a's from there on.
        let mut a_now = next(&mut a).await;
        while a_now < b_first {
            a_now = next(&mut a).await;
        }
        assert_eq!(a_now, b_first);
        for _ in 0..3 {
            assert_eq!(next(&mut a).await, next(&mut b).await);
        }
        drop(room);
        tokio::time::sleep(Duration::from_millis(100)).await;
        while a.try_recv().is_some() {}
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(a.try_recv().is_none(), "the tick stops with the room");
    }
}
