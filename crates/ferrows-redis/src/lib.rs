//! Redis Streams backplane for ferrows (API skeleton: the implementation
//! lands on the `redis` branch; every body below is replaced there).
//!
//! * [`RedisBackplane`] implements [`ferrows::backplane::Backplane`] on one
//!   Redis stream per room (`ferrows:{room}:log`).
//! * [`RoomClock`] is the leaderless room tick (`ferrows:{room}:clock`).
#![allow(clippy::todo, unused_variables, missing_docs, dead_code)]

use std::fmt;
use std::time::Duration;

use ferrows::backplane::{
    Backplane, BackplaneRx, BackplaneTx, Batch, BoxFuture, Entry, Resume, TransportError,
};

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
    pub fn new(room: &str) -> Result<RedisOptions, Error> {
        todo!()
    }
    /// Stream length kept by `XADD … MAXLEN ~` (default: from max_entry_bytes).
    pub fn retain(self, entries: usize) -> RedisOptions {
        todo!()
    }
    /// Largest payload accepted (read and written); larger entries read are skipped and counted.
    pub fn max_entry_bytes(self, bytes: usize) -> RedisOptions {
        todo!()
    }
    /// How long `connect` keeps trying before it gives up (default 10 s).
    pub fn connect_timeout(self, timeout: Duration) -> RedisOptions {
        todo!()
    }
    /// The room.
    pub fn room(&self) -> &str {
        &self.room
    }
    /// The stream length that will be kept.
    pub fn retained(&self) -> usize {
        todo!()
    }
}

/// A Redis Streams transport for a `ferrows::backplane::Relay`.
pub struct RedisBackplane {
    _p: (),
}

impl RedisBackplane {
    /// Connects (retrying until the options' connect timeout) and resolves the start position.
    pub async fn connect(url: &str, options: RedisOptions) -> Result<RedisBackplane, Error> {
        todo!()
    }
    /// The server, with any password replaced by `***`.
    pub fn server(&self) -> &str {
        todo!()
    }
}

impl Backplane for RedisBackplane {
    type Tx = RedisTx;
    type Rx = RedisRx;
    fn split(self) -> (RedisTx, RedisRx) {
        todo!()
    }
}

/// Publishing half.
pub struct RedisTx {
    _p: (),
}
/// Reading half.
pub struct RedisRx {
    _p: (),
}

impl BackplaneTx for RedisTx {
    fn send<'a>(&'a mut self, batch: &'a [Entry]) -> BoxFuture<'a, Result<(), TransportError>> {
        todo!()
    }
    fn reconnect(&mut self) -> BoxFuture<'_, Result<(), TransportError>> {
        todo!()
    }
}

impl BackplaneRx for RedisRx {
    fn recv(&mut self) -> BoxFuture<'_, Result<Batch, TransportError>> {
        todo!()
    }
    fn reconnect(&mut self) -> BoxFuture<'_, Result<Resume, TransportError>> {
        todo!()
    }
}

/// The leaderless room clock: `n = ⌊(redis_time − epoch) / period⌋`.
pub struct RoomClock {
    _p: (),
}

/// What `/status` shows about the clock.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct ClockStatus {
    /// The room's epoch, Redis time in ms since the Unix epoch.
    pub epoch_ms: u64,
    /// The tick period.
    pub period: Duration,
    /// The round trip of the best TIME sample (the offset error is at most half of it).
    pub rtt: Duration,
    /// Whether the last refresh of the record reached Redis.
    pub redis_reachable: bool,
}

impl RoomClock {
    /// Joins (or creates) the room's clock, retrying until `connect_timeout`.
    /// A different period in Redis → `ClockError::Mismatch`.
    pub async fn join(
        url: &str,
        room: &str,
        period: Duration,
        connect_timeout: Duration,
    ) -> Result<RoomClock, ClockError> {
        todo!()
    }
    /// Waits for the next boundary and returns its n: never repeats, skips missed ones after a late wake-up.
    pub async fn next_tick(&mut self) -> u64 {
        todo!()
    }
    /// The current status.
    pub fn status(&self) -> ClockStatus {
        todo!()
    }
}

/// Why the clock could not be joined.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClockError {
    /// The room already ticks with another period.
    Mismatch {
        room: String,
        period: Duration,
        since_ms: u64,
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
    Unreachable { server: String, reason: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}
impl std::error::Error for Error {}
impl fmt::Display for ClockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}
impl std::error::Error for ClockError {}

/// `url` with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    todo!()
}
