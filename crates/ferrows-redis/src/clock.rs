//! The leaderless room clock (SCALEOUT §4.2): one epoch per room in Redis,
//! Redis `TIME` carried on the local monotonic clock.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::conn::Target;
use crate::{ClockError, Error, check_room, clock_key};

/// How long the clock record lives without a refresh.
const RECORD_TTL_MS: u64 = 60_000;
/// How often every node refreshes the record.
const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// How often Redis' time is sampled again.
const RESAMPLE_EVERY: Duration = Duration::from_secs(60);
/// `TIME` samples per measurement; the one with the shortest round trip wins.
const SAMPLES: usize = 5;
const RESPONSE: Duration = Duration::from_secs(2);
const ATTEMPT: Duration = Duration::from_secs(2);

/// The leaderless room clock: `n = ⌊(redis_time − epoch) / period⌋`.
///
/// The room's record `ferrows:{room}:clock` = `"v1 <epoch_ms> <period_ms>"`
/// is created once (`SET NX PX 60000`, with the first node's start in Redis
/// time) and refreshed by every node every 10 s, so it expires a minute
/// after the last node is gone. Redis' `TIME` is sampled 5 times (the
/// shortest round trip is kept, Cristian's method: the error is at most
/// half of it) at join and every 60 s, and carried on tokio's monotonic
/// clock in between: while Redis is away, the clock keeps ticking from the
/// last sample. If Redis lost the record, it is re-created with the same
/// epoch; if nodes disagree on the epoch, the oldest wins.
///
/// A background task does the refreshing; it ends when the clock is
/// dropped.
pub struct RoomClock {
    shared: Arc<Shared>,
    last: Option<u64>,
    _keeper: AbortOnDrop,
}

impl std::fmt::Debug for RoomClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomClock")
            .field("status", &self.status())
            .field("last", &self.last)
            .finish()
    }
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

struct Shared {
    state: Mutex<State>,
}

#[derive(Clone, Copy)]
struct State {
    epoch_ms: u64,
    period_ms: u64,
    sample: Sample,
    reachable: bool,
}

/// Redis' time (µs since the Unix epoch) at a local instant.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    redis_us: u64,
    rtt: Duration,
}

impl Sample {
    /// Redis' time at `instant`, in µs (may be negative far in the past).
    fn redis_us_at(&self, instant: Instant) -> i128 {
        let base = i128::from(self.redis_us);
        if instant >= self.at {
            base + (instant - self.at).as_micros() as i128
        } else {
            base - (self.at - instant).as_micros() as i128
        }
    }

    /// The local instant at which Redis' time is `redis_us`.
    fn instant_of(&self, redis_us: i128) -> Instant {
        let delta = redis_us - i128::from(self.redis_us);
        let micros =
            |d: i128| Duration::from_micros(u64::try_from(d.unsigned_abs()).unwrap_or(u64::MAX));
        if delta >= 0 {
            self.at.checked_add(micros(delta)).unwrap_or(self.at)
        } else {
            self.at.checked_sub(micros(delta)).unwrap_or(self.at)
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state is plain data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `"v1 <epoch_ms> <period_ms>"`.
fn parse_record(text: &str) -> Option<(u64, u64)> {
    let mut parts = text.split(' ');
    let (v, e, p) = (parts.next()?, parts.next()?, parts.next()?);
    if v != "v1" || parts.next().is_some() {
        return None;
    }
    let period: u64 = p.parse().ok()?;
    (period > 0).then_some(())?;
    Some((e.parse().ok()?, period))
}

fn record(epoch_ms: u64, period_ms: u64) -> String {
    format!("v1 {epoch_ms} {period_ms}")
}

/// Samples Redis' `TIME` and keeps the sample with the shortest round trip.
async fn sample_time(conn: &mut MultiplexedConnection) -> redis::RedisResult<Sample> {
    let mut best: Option<Sample> = None;
    for _ in 0..SAMPLES {
        let sent = Instant::now();
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
        let rtt = sent.elapsed();
        let sample = Sample {
            at: sent + rtt / 2,
            redis_us: secs.saturating_mul(1_000_000).saturating_add(micros),
            rtt,
        };
        if best.is_none_or(|b| sample.rtt < b.rtt) {
            best = Some(sample);
        }
    }
    best.ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Client, "no TIME sample")))
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
        check_room(room)?;
        let target = Target::open(url)?;
        let key = clock_key(room);
        let name = format!("ferrows-clock.{room}");
        let deadline = Instant::now() + connect_timeout;
        let mut conn = target.connect_until(&name, RESPONSE, deadline).await?;
        let unusable = |what: &str, e: redis::RedisError| {
            ClockError::Redis(Error::Unreachable {
                server: target.server().to_owned(),
                reason: target.error(what, &e).message().to_owned(),
            })
        };
        let sample = sample_time(&mut conn)
            .await
            .map_err(|e| unusable("TIME", e))?;
        let period_ms = millis(period);
        let start_ms = u64::try_from(sample.redis_us_at(Instant::now()).max(0) / 1000).unwrap_or(0);
        let mut winner = None;
        // The record could expire between SET and GET: try twice.
        for _ in 0..2 {
            redis::cmd("SET")
                .arg(&key)
                .arg(record(start_ms, period_ms))
                .arg("NX")
                .arg("PX")
                .arg(RECORD_TTL_MS)
                .exec_async(&mut conn)
                .await
                .map_err(|e| unusable("SET", e))?;
            let got: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(|e| unusable("GET", e))?;
            if let Some(got) = got {
                winner = Some(parse_record(&got).ok_or_else(|| {
                    ClockError::Redis(Error::Unexpected {
                        server: target.server().to_owned(),
                        reason: format!(
                            "{key} holds {:?}, not a ferrows room clock (\"v1 <epoch_ms> <period_ms>\")",
                            got.chars().take(64).collect::<String>()
                        ),
                    })
                })?);
                break;
            }
        }
        let Some((epoch_ms, room_period)) = winner else {
            return Err(ClockError::Redis(Error::Unexpected {
                server: target.server().to_owned(),
                reason: format!("{key} vanished right after it was set"),
            }));
        };
        if room_period != period_ms {
            return Err(ClockError::Mismatch {
                room: room.to_owned(),
                period: Duration::from_millis(room_period),
                since_ms: epoch_ms,
                ours: period,
            });
        }
        tracing::debug!(
            target: "ferrows::redis",
            server = target.server(),
            room,
            epoch_ms,
            period_ms,
            rtt_us = sample.rtt.as_micros() as u64,
            created = epoch_ms == start_ms,
            "room clock joined"
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                epoch_ms,
                period_ms,
                sample,
                reachable: true,
            }),
        });
        let keeper = tokio::spawn(keep(shared.clone(), target, key, name, conn));
        Ok(RoomClock {
            shared,
            last: None,
            _keeper: AbortOnDrop(keeper),
        })
    }

    /// Waits for the next boundary and returns its n: never repeats, skips missed ones after a late wake-up.
    ///
    /// The first call waits for the next boundary. A later call returns at
    /// once with the current n when boundaries passed since the last one
    /// returned (the caller was late: the missed ones are skipped, never
    /// burst), else it sleeps until the boundary after the last one.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a boundary is only consumed when it is returned.
    pub async fn next_tick(&mut self) -> u64 {
        let mut target = self.last.map(|l| l.saturating_add(1));
        loop {
            let state = *self.shared.state();
            let epoch_us = i128::from(state.epoch_ms) * 1000;
            let period_us = i128::from(state.period_ms) * 1000;
            let since = state.sample.redis_us_at(Instant::now()) - epoch_us;
            let current =
                (since >= 0).then(|| u64::try_from(since / period_us).unwrap_or(u64::MAX));
            if let (Some(t), Some(c)) = (target, current) {
                if c >= t {
                    self.last = Some(c);
                    return c;
                }
            }
            let want = target.unwrap_or_else(|| current.map_or(0, |c| c.saturating_add(1)));
            target = Some(want);
            let boundary = epoch_us + i128::from(want) * period_us;
            tokio::time::sleep_until(state.sample.instant_of(boundary)).await;
        }
    }

    /// The current status.
    pub fn status(&self) -> ClockStatus {
        let s = *self.shared.state();
        ClockStatus {
            epoch_ms: s.epoch_ms,
            period: Duration::from_millis(s.period_ms),
            rtt: s.sample.rtt,
            redis_reachable: s.reachable,
        }
    }

    /// Redis' time now, as this clock estimates it (since the Unix epoch):
    /// the last `TIME` sample carried on the monotonic clock.
    pub fn redis_time(&self) -> Duration {
        let us = self
            .shared
            .state()
            .sample
            .redis_us_at(Instant::now())
            .max(0);
        Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
    }
}

/// Keeps the record alive and the time mapping fresh, until aborted.
async fn keep(
    shared: Arc<Shared>,
    target: Target,
    key: String,
    name: String,
    conn: MultiplexedConnection,
) {
    let mut conn = Some(conn);
    let mut sampled = Instant::now();
    let mut warned = false;
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        let fresh = conn.is_none();
        if fresh {
            conn = target.connect_once(&name, RESPONSE, ATTEMPT).await.ok();
        }
        let result = match conn.as_mut() {
            None => Err("no connection".to_owned()),
            Some(c) => refresh(
                c,
                &shared,
                &key,
                fresh || sampled.elapsed() >= RESAMPLE_EVERY,
            )
            .await
            .map_err(|e| target.error("room clock refresh", &e).message().to_owned()),
        };
        match result {
            Ok(resampled) => {
                if resampled {
                    sampled = Instant::now();
                }
                if warned {
                    tracing::info!(target: "ferrows::redis", "room clock: {} reachable again", target.server());
                }
                warned = false;
                shared.state().reachable = true;
            }
            Err(e) => {
                conn = None;
                shared.state().reachable = false;
                if !warned {
                    warned = true;
                    tracing::warn!(target: "ferrows::redis", "room clock: {e}; ticking on from the last TIME sample");
                }
            }
        }
    }
}

/// One refresh: resample if asked, extend the record (re-create it with
/// our epoch if Redis lost it), and settle on the oldest epoch. Returns
/// whether it resampled.
async fn refresh(
    conn: &mut MultiplexedConnection,
    shared: &Shared,
    key: &str,
    resample: bool,
) -> redis::RedisResult<bool> {
    if resample {
        let sample = sample_time(conn).await?;
        shared.state().sample = sample;
    }
    let State {
        epoch_ms,
        period_ms,
        ..
    } = *shared.state();
    let alive: i64 = redis::cmd("PEXPIRE")
        .arg(key)
        .arg(RECORD_TTL_MS)
        .query_async(conn)
        .await?;
    if alive == 0 {
        redis::cmd("SET")
            .arg(key)
            .arg(record(epoch_ms, period_ms))
            .arg("NX")
            .arg("PX")
            .arg(RECORD_TTL_MS)
            .exec_async(conn)
            .await?;
        tracing::info!(target: "ferrows::redis", key, epoch_ms, "room clock record was lost by Redis: re-created with the same epoch");
    }
    let got: Option<String> = redis::cmd("GET").arg(key).query_async(conn).await?;
    match got.as_deref().map(parse_record) {
        Some(Some((theirs, p))) if p == period_ms => {
            if theirs < epoch_ms {
                tracing::info!(target: "ferrows::redis", key, from = epoch_ms, to = theirs, "room clock: adopting the older epoch");
                shared.state().epoch_ms = theirs;
            } else if theirs > epoch_ms {
                redis::cmd("SET")
                    .arg(key)
                    .arg(record(epoch_ms, period_ms))
                    .arg("XX")
                    .arg("PX")
                    .arg(RECORD_TTL_MS)
                    .exec_async(conn)
                    .await?;
            }
        }
        Some(_) => {
            tracing::warn!(target: "ferrows::redis", key, "room clock record in Redis disagrees with this node (another period or format); ticking on with ours");
        }
        None => {}
    }
    Ok(resample)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records() {
        assert_eq!(parse_record("v1 10 1000"), Some((10, 1000)));
        assert_eq!(parse_record(&record(5, 7)), Some((5, 7)));
        for bad in [
            "",
            "v1 10",
            "v2 10 1000",
            "v1 10 0",
            "v1 -1 5",
            "v1 1 2 3",
            "v1  1 2",
        ] {
            assert_eq!(parse_record(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sample_maps_both_ways() {
        let at = Instant::now();
        let s = Sample {
            at,
            redis_us: 1_000_000,
            rtt: Duration::ZERO,
        };
        let later = at + Duration::from_millis(3);
        assert_eq!(s.redis_us_at(later), 1_003_000);
        assert_eq!(s.instant_of(1_003_000), later);
        assert_eq!(s.redis_us_at(s.instant_of(999_000)), 999_000);
    }
}
