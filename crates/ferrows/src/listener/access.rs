//! Access control of the [`Listener`](super::Listener): the connection
//! token, the per-address limits (established connections, handshake
//! rate), and the rate-limited log of refusals.
//!
//! Everything here is bounded in memory: the per-address connection table
//! has an entry only for addresses with a connection open (so at most
//! `max_connections` entries), and the rate table holds at most
//! [`MAX_TRACKED_ADDRESSES`] entries (see [`RateTable`]).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferrows_proto::handshake::Request;

use super::{IpKey, display_addr};

/// The most client addresses (IPv4, or IPv6 /64 networks) whose handshake
/// rate is tracked at once. When the table is full, entries that have been
/// idle long enough to have refilled are swept out (at most once a second);
/// if none has, new addresses share one overflow bucket with the same
/// rate, so the table never grows past this (at most about 5.5 MiB:
/// 131 072 hash-table slots of 40 bytes).
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// `Retry-After` (seconds) on a 503 for a connection cap: when a place
/// frees cannot be known, so a short, fixed wait.
pub(super) const RETRY_AFTER_FULL: u64 = 5;

/// What to redact: query parameters that carry credentials.
const SECRET_PARAMS: [&str; 3] = ["token", "access_token", "drive_token"];

/// Compares `given` to `expected` in a time that depends only on the
/// length of `given` (what the client chose), never on where they differ
/// nor on the length of `expected`: every byte of `given` is compared
/// with a byte of `expected` (cycling through it), and the lengths are
/// compared as numbers. An empty `expected` matches only an empty
/// `given`.
pub fn token_matches(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = u64::from(expected.len() != given.len());
    if expected.is_empty() {
        return given.is_empty();
    }
    let mut acc = 0u8;
    for (i, g) in given.iter().enumerate() {
        let e = expected.get(i % expected.len()).copied().unwrap_or(0);
        acc |= g ^ e;
    }
    diff |= u64::from(std::hint::black_box(acc));
    std::hint::black_box(diff) == 0
}

/// Decodes `%XX` escapes (and `+` as a space, as HTML forms encode it) of
/// a query value into bytes; a `%` not followed by two hex digits stays.
pub fn percent_decode(value: &str) -> Vec<u8> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = |j: usize| bytes.get(j).and_then(|c| char::from(*c).to_digit(16));
                if let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) {
                    out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
    out
}

/// The token a request presents: `Authorization: Bearer T` (the scheme
/// case-insensitive), else the query parameter `token` (percent-decoded).
pub fn presented_token(request: &Request) -> Option<Vec<u8>> {
    if let Some(auth) = request.header("authorization") {
        let auth = auth.trim();
        match auth.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => {
                return Some(rest.trim().as_bytes().to_vec());
            }
            _ => {}
        }
    }
    request.query_param("token").map(percent_decode)
}

/// A request target fit for a log: the value of every credential
/// parameter (`token`, `access_token`, `drive_token`) replaced with
/// `[redacted]`.
pub fn redact_target(target: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_owned();
    };
    let mut out = String::with_capacity(target.len());
    out.push_str(path);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) if SECRET_PARAMS.contains(&name) => {
                out.push_str(name);
                out.push_str("=[redacted]");
            }
            _ => out.push_str(pair),
        }
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// WebSocket connections open per client address. An address has an
/// entry only while it has a connection, so the table holds at most as
/// many entries as the connection cap allows connections.
#[derive(Default)]
pub(super) struct ConnTable {
    counts: Mutex<HashMap<IpKey, usize>>,
}

impl ConnTable {
    /// Takes a place for `key` if it has fewer than `max` connections.
    pub(super) fn take(self: &Arc<Self>, key: IpKey, max: usize) -> Option<IpSlot> {
        let mut counts = lock(&self.counts);
        let n = counts.entry(key).or_insert(0);
        if *n >= max {
            if *n == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(IpSlot {
            key,
            table: self.clone(),
        })
    }

    /// Connections open from `key`'s address.
    #[cfg(test)]
    pub(super) fn count(&self, key: IpKey) -> usize {
        lock(&self.counts).get(&key).copied().unwrap_or(0)
    }

    /// Addresses with a connection open.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.counts).len()
    }
}

/// One connection's place in its address's count; released on drop.
pub(super) struct IpSlot {
    key: IpKey,
    table: Arc<ConnTable>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.table.counts);
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    /// Refills, then takes a token; `Err(wait)` with the time until one
    /// is due when it is empty.
    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - self.tokens) / rate).min(3600.0),
            ))
        }
    }
}

/// Handshake rate per client address: a token bucket each (`rate` a
/// second, bursts of `burst`), at most `cap` of them (see
/// [`MAX_TRACKED_ADDRESSES`]).
pub(super) struct RateTable {
    inner: Mutex<RateInner>,
    cap: usize,
}

struct RateInner {
    buckets: HashMap<IpKey, Bucket>,
    overflow: Option<Bucket>,
    last_sweep: Option<Instant>,
}

impl RateTable {
    pub(super) fn new(cap: usize) -> RateTable {
        RateTable {
            inner: Mutex::new(RateInner {
                buckets: HashMap::new(),
                overflow: None,
                last_sweep: None,
            }),
            cap: cap.max(1),
        }
    }

    /// Charges one handshake to `key`; `Err(wait)` past its rate, with
    /// the time until the next one is allowed.
    pub(super) fn take(&self, key: IpKey, rate: f64, burst: f64) -> Result<(), Duration> {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        if let Some(bucket) = inner.buckets.get_mut(&key) {
            return bucket.take(rate, burst, now);
        }
        if inner.buckets.len() >= self.cap {
            inner.sweep(rate, burst, now);
        }
        if inner.buckets.len() >= self.cap {
            // Still full: every tracked address was active within the
            // time a bucket takes to refill. The newcomers share one.
            let overflow = inner.overflow.get_or_insert(Bucket::full(burst, now));
            return overflow.take(rate, burst, now);
        }
        let mut bucket = Bucket::full(burst, now);
        let taken = bucket.take(rate, burst, now);
        inner.buckets.insert(key, bucket);
        taken
    }

    /// Addresses tracked.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.inner).buckets.len()
    }
}

impl RateInner {
    /// Drops the buckets that have refilled (idle for `burst / rate`): a
    /// new one would be the same. At most once a second, so that a full
    /// table under many addresses costs one scan a second, not one per
    /// connection.
    fn sweep(&mut self, rate: f64, burst: f64, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(now);
        let refill = Duration::from_secs_f64((burst / rate).min(3600.0));
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < refill);
    }
}

/// Why the listener refused or dropped a connection: each kind is logged
/// at most once a second (see [`RefusalLog`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Too many pending handshakes from one address: closed.
    PendingPerIp,
    /// The pending pool was full: the oldest was dropped.
    PendingFull,
    /// The handshake deadline passed.
    Timeout,
    /// The TLS handshake failed.
    Tls,
    /// The request head was malformed or too large.
    BadRequest,
    /// Over the handshake rate of its address: 429.
    Rate,
    /// No token, or the wrong one: 401.
    Unauthorized,
    /// Origin not allowed: 403.
    Origin,
    /// Too many connections from its address: 503.
    PerIpConnections,
    /// The connection cap: 503.
    Capacity,
}

const KINDS: usize = 10;

impl Refusal {
    fn index(self) -> usize {
        self as usize
    }

    fn what(self) -> &'static str {
        match self {
            Refusal::PendingPerIp => "too many pending handshakes from this address: closed",
            Refusal::PendingFull => {
                "pending handshake pool full: dropped the oldest pending connection"
            }
            Refusal::Timeout => "handshake timed out: closed",
            Refusal::Tls => "TLS handshake failed",
            Refusal::BadRequest => "bad request",
            Refusal::Rate => "handshake rate per address exceeded: 429",
            Refusal::Unauthorized => "missing or wrong token: 401",
            Refusal::Origin => "origin not allowed: 403",
            Refusal::PerIpConnections => "connection limit per address reached: 503",
            Refusal::Capacity => "connection limit reached: 503",
        }
    }

    /// Refusals a hostile client causes at will are warnings when they
    /// protect the server; the ordinary failures of a connection are info.
    fn is_warning(self) -> bool {
        !matches!(
            self,
            Refusal::PendingFull | Refusal::Timeout | Refusal::Tls | Refusal::BadRequest
        )
    }
}

#[derive(Default)]
struct KindLog {
    /// When a line of this kind was last written.
    last: Option<Instant>,
    /// Refusals since, not written yet.
    suppressed: u64,
    /// The address of the last of those.
    last_peer: Option<SocketAddr>,
}

/// The refusal log: the first refusal of a kind is written at once with
/// its details; more of the same kind within the second are counted, and
/// [`RefusalLog::flush`] (run every second) writes one summary line per
/// kind. A flood of refusals costs one line a second per kind.
#[derive(Default)]
pub(super) struct RefusalLog {
    kinds: [Mutex<KindLog>; KINDS],
}

impl RefusalLog {
    /// Logs (or counts) one refusal; `detail` is shown only on a line
    /// written at once (it must never hold a secret).
    pub(super) fn refused(&self, kind: Refusal, peer: SocketAddr, detail: &dyn fmt::Display) {
        let Some(slot) = self.kinds.get(kind.index()) else {
            return;
        };
        let now = Instant::now();
        {
            let mut log = lock(slot);
            let quiet = log
                .last
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
            if !quiet || log.suppressed > 0 {
                log.suppressed += 1;
                log.last_peer = Some(peer);
                return;
            }
            log.last = Some(now);
        }
        let peer = display_addr(peer);
        if kind.is_warning() {
            tracing::warn!(%peer, "{}{detail}", kind.what());
        } else {
            tracing::info!(%peer, "{}{detail}", kind.what());
        }
    }

    /// Writes one line per kind with refusals not written yet.
    pub(super) fn flush(&self) {
        for (i, slot) in self.kinds.iter().enumerate() {
            let (count, peer) = {
                let mut log = lock(slot);
                if log.suppressed == 0 {
                    continue;
                }
                log.last = Some(Instant::now());
                (std::mem::take(&mut log.suppressed), log.last_peer.take())
            };
            let Some(kind) = ALL.get(i) else { continue };
            let last_peer = peer.map(display_addr).unwrap_or_default();
            if kind.is_warning() {
                tracing::warn!(count, %last_peer, "{} (x{count} in the last second)", kind.what());
            } else {
                tracing::info!(count, %last_peer, "{} (x{count} in the last second)", kind.what());
            }
        }
    }
}

const ALL: [Refusal; KINDS] = [
    Refusal::PendingPerIp,
    Refusal::PendingFull,
    Refusal::Timeout,
    Refusal::Tls,
    Refusal::BadRequest,
    Refusal::Rate,
    Refusal::Unauthorized,
    Refusal::Origin,
    Refusal::PerIpConnections,
    Refusal::Capacity,
];

/// Nothing more to say.
pub(super) struct NoDetail;

impl fmt::Display for NoDetail {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        Ok(())
    }
}

/// `: detail` after the message.
pub(super) struct Detail<T>(pub(super) T);

impl<T: fmt::Display> fmt::Display for Detail<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, " ({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches(b"s3cret", b"s3cret"));
        assert!(!token_matches(b"s3cret", b"s3cre"));
        assert!(!token_matches(b"s3cret", b"s3cret!"));
        assert!(!token_matches(b"s3cret", b"S3cret"));
        assert!(!token_matches(b"s3cret", b""));
        // Cycling through `expected` must not make a repeat match.
        assert!(!token_matches(b"ab", b"abab"));
        assert!(!token_matches(b"", b"x"));
        assert!(token_matches(b"", b""));
    }

    #[test]
    fn targets_are_redacted() {
        assert_eq!(redact_target("/echo"), "/echo");
        assert_eq!(
            redact_target("/echo?token=s3cret&room=1"),
            "/echo?token=[redacted]&room=1"
        );
        assert_eq!(
            redact_target("/?a=1&access_token=x&drive_token=y"),
            "/?a=1&access_token=[redacted]&drive_token=[redacted]"
        );
        assert_eq!(redact_target("/?tokenish=1"), "/?tokenish=1");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("s3cret%20%C3%BC"), "s3cret ü".as_bytes());
        assert_eq!(percent_decode("a+b%2B"), b"a b+");
        assert_eq!(percent_decode("100%"), b"100%");
        assert_eq!(percent_decode("%zz"), b"%zz");
    }

    #[test]
    fn the_connection_table_forgets_addresses_without_connections() {
        let table = Arc::new(ConnTable::default());
        let key = IpKey::of("10.0.0.1".parse().unwrap());
        let a = table.take(key, 2).unwrap();
        let b = table.take(key, 2).unwrap();
        assert!(table.take(key, 2).is_none());
        assert_eq!(table.count(key), 2);
        drop(a);
        let c = table.take(key, 2).unwrap();
        drop((b, c));
        assert_eq!(table.len(), 0);
        // A refusal at 0 leaves no entry either.
        assert!(table.take(key, 0).is_none());
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn the_rate_allows_the_burst_then_the_rate() {
        let table = RateTable::new(10);
        let key = IpKey::of("10.0.0.1".parse().unwrap());
        for _ in 0..4 {
            table.take(key, 2.0, 4.0).unwrap();
        }
        let wait = table.take(key, 2.0, 4.0).unwrap_err();
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        // Another address has its own bucket.
        table
            .take(IpKey::of("10.0.0.2".parse().unwrap()), 2.0, 4.0)
            .unwrap();
    }

    #[test]
    fn the_rate_table_is_bounded() {
        let table = RateTable::new(100);
        for i in 0..1000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let _ = table.take(IpKey::of(ip.into()), 1.0, 1.0);
        }
        assert_eq!(table.len(), 100);
        // The newcomers past the cap share one bucket of burst 1: the
        // first got it, the rest are refused.
        let key = IpKey::of("192.168.0.1".parse().unwrap());
        assert!(table.take(key, 1.0, 1.0).is_err());
    }
}
