//! Redis Streams backplane for ferrows: one broadcast room across
//! processes, with exact loss accounting, and a leaderless room clock.
//!
//! * [`RedisBackplane`] implements [`ferrows::backplane::Backplane`] on one
//!   Redis stream per room (`ferrows:{room}:log`): give it to a
//!   [`ferrows::backplane::Relay`], which owns the policy (dedupe, loss
//!   accounting, hold and retry, reconnect backoff, reply timeouts).
//! * [`RoomClock`] is the leaderless room tick (`ferrows:{room}:clock`):
//!   every node derives the same tick number from one shared epoch and
//!   Redis' `TIME`, and keeps ticking while Redis is away.
//!
//! Every error and log line shows the server through [`redact`]: a
//! password never appears.
//!
//! ```no_run
//! use std::time::Duration;
//! use ferrows::Hub;
//! use ferrows::backplane::{Relay, RelayConfig};
//! use ferrows_redis::{RedisBackplane, RedisOptions, RoomClock};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let url = "redis://127.0.0.1:6379/";
//! let backplane = RedisBackplane::connect(url, RedisOptions::new("chat")?).await?;
//! let relay = Relay::start(Hub::new(256), backplane, RelayConfig::default());
//! let mut member = relay.hub().join();
//! // Reaches this hub's members at once, and every other node's through Redis.
//! relay.broadcast("msg:hello");
//! let _hello = member.recv().await;
//!
//! let mut clock = RoomClock::join(url, "chat", Duration::from_secs(1), Duration::from_secs(10)).await?;
//! loop {
//!     let n = clock.next_tick().await;
//!     relay.hub().broadcast(format!("tick:{n}"));
//! }
//! # }
//! ```

use std::fmt;
use std::time::Duration;

mod clock;
mod conn;
mod stream;

pub use clock::{ClockStatus, RoomClock};
pub use stream::{RedisBackplane, RedisRx, RedisTx};

/// The default largest entry payload: 64 KiB.
pub const DEFAULT_MAX_ENTRY: usize = 64 << 10;
/// The default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of a [`RedisBackplane`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    room: String,
    retain: Option<usize>,
    max_entry: usize,
    connect_timeout: Duration,
}

impl RedisOptions {
    /// Options for `room` (`[A-Za-z0-9._-]{1,64}`, else `Error::Room`).
    /// Defaults: entries up to 64 KiB, a connect timeout of 10 s, and the
    /// retention derived from the entry size (see [`RedisOptions::retained`]).
    pub fn new(room: &str) -> Result<RedisOptions, Error> {
        check_room(room)?;
        Ok(RedisOptions {
            room: room.to_owned(),
            retain: None,
            max_entry: DEFAULT_MAX_ENTRY,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        })
    }
    /// Stream length kept by `XADD … MAXLEN ~` (default: from max_entry_bytes).
    /// At least 1.
    pub fn retain(mut self, entries: usize) -> RedisOptions {
        self.retain = Some(entries.max(1));
        self
    }
    /// Largest payload accepted (read and written); larger entries read are skipped and counted.
    /// At least 1.
    pub fn max_entry_bytes(mut self, bytes: usize) -> RedisOptions {
        self.max_entry = bytes.max(1);
        self
    }
    /// How long `connect` keeps trying before it gives up (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> RedisOptions {
        self.connect_timeout = timeout;
        self
    }
    /// The room.
    pub fn room(&self) -> &str {
        &self.room
    }
    /// The stream length that will be kept: the one set with
    /// [`RedisOptions::retain`], else `clamp(64 MiB / max_entry, 100, 10 000)`
    /// (1 024 entries at the 64 KiB default), so that a room's stream holds
    /// about 64 MiB at most.
    pub fn retained(&self) -> usize {
        self.retain
            .unwrap_or_else(|| ((64 << 20) / self.max_entry).clamp(100, 10_000))
    }
    /// The largest payload accepted.
    pub fn max_entry(&self) -> usize {
        self.max_entry
    }
    /// How many entries one `XREAD` asks for: `clamp(4 MiB / max_entry, 16, 512)`,
    /// which bounds a reply (Redis does not bound a normal client's output).
    pub fn read_count(&self) -> usize {
        ((4 << 20) / self.max_entry).clamp(16, 512)
    }
    pub(crate) fn timeout(&self) -> Duration {
        self.connect_timeout
    }
}

/// `Ok` when `room` matches `[A-Za-z0-9._-]{1,64}`.
fn check_room(room: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Room(room.chars().take(80).collect()))
    }
}

/// The keys of a room: the stream and the clock record. The braces are a
/// Redis Cluster hash tag, so both live in one slot.
pub(crate) fn log_key(room: &str) -> String {
    format!("ferrows:{{{room}}}:log")
}

pub(crate) fn clock_key(room: &str) -> String {
    format!("ferrows:{{{room}}}:clock")
}

/// Why the clock could not be joined.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClockError {
    /// The room already ticks with another period.
    Mismatch {
        /// The room.
        room: String,
        /// The room's period, as recorded in Redis.
        period: Duration,
        /// The room's epoch (Redis time, ms since the Unix epoch).
        since_ms: u64,
        /// The period this node was started with.
        ours: Duration,
    },
    /// Redis could not be used.
    Redis(Error),
}

/// Why the backplane could not be set up. Never contains a password.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The URL could not be parsed.
    Url(String),
    /// The room name is not `[A-Za-z0-9._-]{1,64}`.
    Room(String),
    /// Redis could not be reached or refused us within the connect timeout.
    Unreachable {
        /// The server, redacted.
        server: String,
        /// Why (the last failure).
        reason: String,
    },
    /// Redis answered something this version does not understand (a room
    /// record written by something else).
    Unexpected {
        /// The server, redacted.
        server: String,
        /// What was wrong.
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Url(url) => write!(f, "bad Redis URL {url}"),
            Error::Room(room) => write!(
                f,
                "bad room name {room:?}: use 1 to 64 of A-Z a-z 0-9 . _ -"
            ),
            Error::Unreachable { server, reason } => {
                write!(f, "Redis at {server} is not usable: {reason}")
            }
            Error::Unexpected { server, reason } => {
                write!(f, "Redis at {server}: {reason}")
            }
        }
    }
}
impl std::error::Error for Error {}

impl fmt::Display for ClockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClockError::Mismatch {
                room,
                period,
                since_ms,
                ours,
            } => write!(
                f,
                "room {room} ticks every {} (since {}); this server was started with --tick {}; \
                 use the same --tick everywhere or another --room",
                human(*period),
                utc(*since_ms),
                human(*ours)
            ),
            ClockError::Redis(e) => e.fmt(f),
        }
    }
}
impl std::error::Error for ClockError {}

impl From<Error> for ClockError {
    fn from(e: Error) -> ClockError {
        ClockError::Redis(e)
    }
}

/// `1s`, `500ms`, `1500ms`: how `--tick` is written.
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms > 0 && ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// `2026-12-04 13:49:02 UTC` for a time in ms since the Unix epoch.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (days are
/// grouped in 400-year eras of 146 097 days, years starting in March).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// `url` with any password replaced by `***`.
///
/// `redis://user:secret@h:1/0` → `redis://user:***@h:1/0`,
/// `redis://:secret@h/` → `redis://:***@h/`, and `pass=`/`password=` query
/// values (as in `redis+unix:///run/redis.sock?pass=secret`) become `***`.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    // The authority ends at the first '/', '?' or '#'.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.find(':') {
                Some(colon) => format!("{}:***{host}", userinfo.get(..colon).unwrap_or("")),
                // No scheme: what precedes '@' cannot be told apart from a password.
                None if scheme.is_empty() => format!("***{host}"),
                None => authority.to_owned(),
            }
        }
        None => authority.to_owned(),
    };
    let tail = match tail.find('?') {
        Some(q) => {
            let (path, query) = tail.split_at(q);
            let query = query.get(1..).unwrap_or("");
            let (query, fragment) = match query.find('#') {
                Some(h) => query.split_at(h),
                None => (query, ""),
            };
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _))
                        if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                    {
                        format!("{k}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}{fragment}", pairs.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            redact("redis://user:secret@h:1/0"),
            "redis://user:***@h:1/0"
        );
        assert_eq!(redact("redis://:secret@h/"), "redis://:***@h/");
        assert_eq!(redact("redis://:p@ss@h:6379"), "redis://:***@h:6379");
        assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact("redis://alice@h"), "redis://alice@h");
        assert_eq!(
            redact("redis+unix:///run/r.sock?db=1&pass=secret"),
            "redis+unix:///run/r.sock?db=1&pass=***"
        );
        assert_eq!(redact("user:secret@h"), "user:***@h");
        assert_eq!(redact("secret@h"), "***@h");
        assert!(!redact("valkey://u:top%40secret@h:1/?protocol=3#x").contains("secret"));
    }

    #[test]
    fn rooms_are_checked() {
        assert!(RedisOptions::new("chat").is_ok());
        assert!(RedisOptions::new("a.b_c-D9").is_ok());
        assert!(RedisOptions::new(&"x".repeat(64)).is_ok());
        for bad in ["", "a b", "a:b", "{x}", "é", &"x".repeat(65)] {
            assert!(
                matches!(RedisOptions::new(bad), Err(Error::Room(_))),
                "{bad:?}"
            );
        }
        assert_eq!(log_key("chat"), "ferrows:{chat}:log");
        assert_eq!(clock_key("chat"), "ferrows:{chat}:clock");
    }

    #[test]
    fn derived_limits() {
        let o = RedisOptions::new("r").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((o.retained(), o.read_count()), (1024, 64));
        let small = o.clone().max_entry_bytes(1000);
        assert_eq!((small.retained(), small.read_count()), (10_000, 512));
        let big = o.clone().max_entry_bytes(16 << 20);
        assert_eq!((big.retained(), big.read_count()), (100, 16));
        assert_eq!(o.retain(5).retained(), 5);
    }

    #[test]
    fn mismatch_message() {
        let e = ClockError::Mismatch {
            room: "chat".into(),
            period: Duration::from_secs(1),
            since_ms: 1_796_313_825_591,
            ours: Duration::from_millis(500),
        };
        assert_eq!(
            e.to_string(),
            "room chat ticks every 1s (since 2026-12-03 16:03:45 UTC); this server was started \
             with --tick 500ms; use the same --tick everywhere or another --room"
        );
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }
}
