//! The Redis Streams transport: one stream per room, `XADD` pipelines from
//! one publishing connection, `XREAD BLOCK` on another.

use std::time::Duration;

use ferrows::backplane::{
    Backplane, BackplaneRx, BackplaneTx, Batch, BoxFuture, Entry, NodeId, Resume, TransportError,
    TransportErrorKind,
};
use ferrows::{Bytes, Message, Utf8Bytes};
use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use crate::conn::Target;
use crate::{Error, RedisOptions, log_key};

/// The wire format version this crate writes and reads.
const VERSION: &[u8] = b"1";
/// `XREAD … BLOCK` in ms: an idle read returns this often (the heartbeat).
const BLOCK_MS: u64 = 1000;
/// The reader's response timeout: a read not answered in this time (a
/// frozen Redis, a dead path) is an error. Above `BLOCK_MS`, below the
/// relay's 3 s reply timeout.
const READ_TIMEOUT: Duration = Duration::from_millis(2500);
/// The publisher's response timeout (a pipeline of up to 256 entries).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one reconnect attempt may take (the relay allows 3 s).
const RECONNECT_ATTEMPT: Duration = Duration::from_secs(2);
/// A room's stream expires a day after its last write.
const STREAM_TTL_MS: u64 = 86_400_000;

/// A stream entry id, `<ms>-<seq>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
struct StreamId(u64, u64);

impl StreamId {
    fn parse(raw: &[u8]) -> Option<StreamId> {
        let text = std::str::from_utf8(raw).ok()?;
        let (ms, seq) = text.split_once('-')?;
        Some(StreamId(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// A Redis Streams transport for a `ferrows::backplane::Relay`.
///
/// The room's entries go to the stream `ferrows:{room}:log`: one
/// `XADD … MAXLEN ~ <retain> * v 1 o <origin> s <seq> k t|b d <payload>`
/// per entry, pipelined per batch with a `PEXPIRE` of one day, on a
/// publishing connection of its own (`CLIENT SETNAME ferrows-pub.<room>`).
/// A reading connection (`ferrows-read.<room>`) runs
/// `XREAD COUNT c BLOCK 1000` from the last id read; a reconnect resumes
/// there, or from the stream's start when `XINFO STREAM` shows that Redis
/// lost the stream ([`Resume::Reset`]). The publisher remembers the id
/// of its last acknowledged `XADD`; when a reconnect no longer finds that
/// entry (`XRANGE id id`; needs `+xrange`), Redis lost the stream and its
/// reconnect says [`Resume::Reset`], so that the relay publishes again
/// what it had acknowledged within its hold. A publishing connection found
/// broken is reconnected and the batch tried once more inside `send`.
/// A new backplane starts after the stream's last entry: history is not
/// replayed.
pub struct RedisBackplane {
    target: Target,
    options: RedisOptions,
    tx: MultiplexedConnection,
    rx: MultiplexedConnection,
    start: StreamId,
}

impl std::fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("server", &self.target.server())
            .field("room", &self.options.room())
            .field("start", &self.start.to_string())
            .finish()
    }
}

impl RedisBackplane {
    /// Connects (retrying until the options' connect timeout) and resolves the start position.
    pub async fn connect(url: &str, options: RedisOptions) -> Result<RedisBackplane, Error> {
        let target = Target::open(url)?;
        let deadline = Instant::now() + options.timeout();
        let room = options.room().to_owned();
        let tx = target
            .connect_until(&format!("ferrows-pub.{room}"), WRITE_TIMEOUT, deadline)
            .await?;
        let mut rx = target
            .connect_until(&format!("ferrows-read.{room}"), READ_TIMEOUT, deadline)
            .await?;
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(log_key(&room))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut rx)
            .await
            .map_err(|e| unreachable(&target, target.error("XREVRANGE", &e)))?;
        let start = last_entry_id(reply).ok_or_else(|| Error::Unexpected {
            server: target.server().to_owned(),
            reason: "XREVRANGE answered something that is not a stream range".into(),
        })?;
        tracing::debug!(target: "ferrows::redis", server = target.server(), room, %start, "backplane connected");
        Ok(RedisBackplane {
            target,
            options,
            tx,
            rx,
            start,
        })
    }
    /// The server, with any password replaced by `***`.
    pub fn server(&self) -> &str {
        self.target.server()
    }
    /// The options it runs with.
    pub fn options(&self) -> &RedisOptions {
        &self.options
    }
}

fn unreachable(target: &Target, e: TransportError) -> Error {
    Error::Unreachable {
        server: target.server().to_owned(),
        reason: e.message().to_owned(),
    }
}

impl Backplane for RedisBackplane {
    type Tx = RedisTx;
    type Rx = RedisRx;
    fn split(self) -> (RedisTx, RedisRx) {
        let room = self.options.room().to_owned();
        let key = log_key(&room);
        let tx = RedisTx {
            target: self.target.clone(),
            name: format!("ferrows-pub.{room}"),
            key: key.clone(),
            retain: self.options.retained(),
            max_entry: self.options.max_entry(),
            conn: Some(self.tx),
            warned_oversize: false,
            last_acked: None,
            reset_pending: false,
        };
        let rx = RedisRx {
            target: self.target,
            name: format!("ferrows-read.{room}"),
            key,
            count: self.options.read_count(),
            max_entry: self.options.max_entry(),
            conn: Some(self.rx),
            last: self.start,
            warned: [false; 3],
        };
        (tx, rx)
    }
}

/// Publishing half.
pub struct RedisTx {
    target: Target,
    name: String,
    key: String,
    retain: usize,
    max_entry: usize,
    conn: Option<MultiplexedConnection>,
    warned_oversize: bool,
    /// The id Redis gave the last entry it acknowledged.
    last_acked: Option<StreamId>,
    /// A reconnect inside `send` found the stream lost: the next
    /// `reconnect` says [`Resume::Reset`].
    reset_pending: bool,
}

/// Reading half.
pub struct RedisRx {
    target: Target,
    name: String,
    key: String,
    count: usize,
    max_entry: usize,
    conn: Option<MultiplexedConnection>,
    /// The id of the last entry read (skipped ones included); `0-0` before any.
    last: StreamId,
    /// Whether a foreign version, an oversize and a malformed entry were warned about.
    warned: [bool; 3],
}

fn not_connected(target: &Target) -> TransportError {
    TransportError::new(
        TransportErrorKind::Connection,
        format!("not connected to {}", target.server()),
    )
}

impl RedisTx {
    async fn publish(&mut self, batch: &[Entry]) -> Result<(), TransportError> {
        let mut pipe = redis::pipe();
        let mut skipped = 0u64;
        let mut added = 0usize;
        for entry in batch {
            let (kind, payload): (&[u8], &[u8]) = match &entry.message {
                Message::Text(t) => (b"t", t.as_bytes()),
                Message::Binary(b) => (b"b", b),
                _ => continue,
            };
            if payload.len() > self.max_entry {
                skipped += 1;
                continue;
            }
            pipe.cmd("XADD")
                .arg(&self.key)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.retain)
                .arg("*")
                .arg("v")
                .arg(VERSION)
                .arg("o")
                .arg(entry.origin.to_string())
                .arg("s")
                .arg(entry.seq)
                .arg("k")
                .arg(kind)
                .arg("d")
                .arg(payload);
            added += 1;
        }
        if skipped > 0 && !self.warned_oversize {
            self.warned_oversize = true;
            tracing::warn!(
                target: "ferrows::redis",
                "{skipped} messages larger than {} bytes not published to {} (other nodes count them lost); \
                 further ones are not logged",
                self.max_entry,
                self.target.server()
            );
        }
        pipe.cmd("PEXPIRE")
            .arg(&self.key)
            .arg(STREAM_TTL_MS)
            .ignore();
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| not_connected(&self.target))?;
        match pipe.query_async::<Vec<Value>>(conn).await {
            Ok(ids) => {
                // The id of the last XADD: what a reconnect checks for.
                if let Some(id) = ids
                    .into_iter()
                    .take(added)
                    .next_back()
                    .and_then(bytes_of)
                    .and_then(|b| StreamId::parse(&b))
                {
                    self.last_acked = Some(id);
                }
                Ok(())
            }
            Err(e) => {
                let err = self.target.error("XADD", &e);
                if err.kind() != TransportErrorKind::Engine {
                    self.conn = None;
                }
                Err(err)
            }
        }
    }

    /// Publishes `batch`; if the connection turns out broken (as it is
    /// after a Redis restart while this node was idle), reconnects and
    /// tries once more, unless Redis lost the stream meanwhile: the relay
    /// must then publish its retained entries first, so the error is
    /// returned and the reset reported by the next reconnect.
    async fn send_batch(&mut self, batch: &[Entry]) -> Result<(), TransportError> {
        match self.publish(batch).await {
            Err(e) if e.kind() == TransportErrorKind::Connection && !self.reset_pending => {
                tracing::debug!(target: "ferrows::redis", server = self.target.server(), error = %e, "publishing connection broken: reconnecting once");
                match self.resume().await? {
                    Resume::Continued => self.publish(batch).await,
                    _ => {
                        self.reset_pending = true;
                        Err(TransportError::new(
                            TransportErrorKind::Connection,
                            format!("{} lost the stream (restarted?)", self.target.server()),
                        ))
                    }
                }
            }
            other => other,
        }
    }

    /// Connects again and checks whether the entry of the last
    /// acknowledged XADD is still in the stream. `last-generated-id` alone
    /// would not tell: once another node has published to the new stream
    /// of a restarted Redis, it is past ours although ours are gone. So:
    /// `XRANGE key id id` empty → [`Resume::Reset`]. An entry trimmed by
    /// `MAXLEN` meanwhile also reads as a reset; that costs duplicates
    /// that receivers drop, never a loss.
    async fn resume(&mut self) -> Result<Resume, TransportError> {
        self.conn = None;
        let mut conn = self
            .target
            .connect_once(&self.name, WRITE_TIMEOUT, RECONNECT_ATTEMPT)
            .await
            .map_err(|f| f.error)?;
        let mut resume = Resume::Continued;
        if std::mem::take(&mut self.reset_pending) {
            resume = Resume::Reset;
        } else if let Some(last) = self.last_acked {
            let reply = redis::cmd("XRANGE")
                .arg(&self.key)
                .arg(last.to_string())
                .arg(last.to_string())
                .query_async::<Value>(&mut conn)
                .await
                .map_err(|e| self.target.error("XRANGE", &e));
            let found = match reply {
                Ok(reply) => last_entry_id(reply) == Some(last),
                // Refused (a user without +xrange): assume the worst,
                // which costs duplicates, not a wedge.
                Err(e) if e.kind() == TransportErrorKind::Engine => {
                    tracing::warn!(target: "ferrows::redis", "{e}; publishing again what the relay retained");
                    false
                }
                Err(e) => return Err(e),
            };
            if !found {
                tracing::debug!(target: "ferrows::redis", server = self.target.server(), %last, "the last entry published is gone: Redis lost the stream");
                resume = Resume::Reset;
            }
        }
        if resume == Resume::Reset {
            self.last_acked = None;
        }
        self.conn = Some(conn);
        Ok(resume)
    }
}

impl BackplaneTx for RedisTx {
    fn send<'a>(&'a mut self, batch: &'a [Entry]) -> BoxFuture<'a, Result<(), TransportError>> {
        Box::pin(self.send_batch(batch))
    }
    fn reconnect(&mut self) -> BoxFuture<'_, Result<Resume, TransportError>> {
        Box::pin(self.resume())
    }
    fn max_entry_bytes(&self) -> Option<usize> {
        Some(self.max_entry)
    }
}

impl RedisRx {
    async fn read(&mut self) -> Result<Batch, TransportError> {
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| not_connected(&self.target))?;
        let reply: Value = match redis::cmd("XREAD")
            .arg("COUNT")
            .arg(self.count)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(self.last.to_string())
            .query_async(conn)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                self.conn = None;
                return Err(self.target.error("XREAD", &e));
            }
        };
        let mut batch = Batch::default();
        let Some(entries) = stream_entries(reply) else {
            self.conn = None;
            return Err(TransportError::new(
                TransportErrorKind::Engine,
                format!(
                    "XREAD on {}: a reply that is not a stream",
                    self.target.server()
                ),
            ));
        };
        for raw in entries {
            let Some((id, fields)) = split_entry(raw) else {
                batch.malformed += 1;
                continue;
            };
            if let Some(id) = id {
                self.last = self.last.max(id);
            }
            match decode(fields, self.max_entry) {
                Ok(entry) => batch.entries.push(entry),
                Err(Skip::Foreign) => batch.foreign_version += 1,
                Err(Skip::Oversize) => batch.oversize += 1,
                Err(Skip::Malformed) => batch.malformed += 1,
            }
        }
        self.warn_skipped(&batch);
        Ok(batch)
    }

    /// Warns once per kind of skipped entry (they are counted anyway).
    fn warn_skipped(&mut self, batch: &Batch) {
        let kinds = [
            (
                batch.foreign_version,
                "of an unknown format version (another node runs a newer ferrows)",
            ),
            (
                batch.oversize,
                "larger than this node's limit (another node allows larger messages)",
            ),
            (batch.malformed, "that could not be decoded"),
        ];
        for (warned, (count, what)) in self.warned.iter_mut().zip(kinds) {
            if count > 0 && !*warned {
                *warned = true;
                tracing::warn!(
                    target: "ferrows::redis",
                    "skipped {count} entries {what} in {} on {}; further ones are counted, not logged",
                    self.key,
                    self.target.server()
                );
            }
        }
    }

    async fn resume(&mut self) -> Result<Resume, TransportError> {
        self.conn = None;
        let mut conn = self
            .target
            .connect_once(&self.name, READ_TIMEOUT, RECONNECT_ATTEMPT)
            .await
            .map_err(|f| f.error)?;
        let info: Result<Value, _> = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&self.key)
            .query_async(&mut conn)
            .await;
        let newest = match info {
            Ok(v) => Some(last_generated_id(v).ok_or_else(|| {
                TransportError::new(
                    TransportErrorKind::Engine,
                    format!(
                        "XINFO STREAM on {}: no last-generated-id",
                        self.target.server()
                    ),
                )
            })?),
            Err(e) if is_no_such_key(&e) => None,
            Err(e) => return Err(self.target.error("XINFO STREAM", &e)),
        };
        let resume = match newest {
            // The stream is gone, or older than what we read: Redis lost it.
            None if self.last > StreamId::default() => Resume::Reset,
            Some(newest) if newest < self.last => Resume::Reset,
            _ => Resume::Continued,
        };
        if resume == Resume::Reset {
            tracing::debug!(target: "ferrows::redis", server = self.target.server(), last = %self.last, "stream lost by Redis: reading it from its start");
            self.last = StreamId::default();
        }
        self.conn = Some(conn);
        Ok(resume)
    }
}

impl BackplaneRx for RedisRx {
    fn recv(&mut self) -> BoxFuture<'_, Result<Batch, TransportError>> {
        Box::pin(self.read())
    }
    fn reconnect(&mut self) -> BoxFuture<'_, Result<Resume, TransportError>> {
        Box::pin(self.resume())
    }
}

fn is_no_such_key(e: &redis::RedisError) -> bool {
    e.detail()
        .is_some_and(|d| d.to_ascii_lowercase().contains("no such key"))
        || e.to_string().to_ascii_lowercase().contains("no such key")
}

/// The bytes of a string-like reply.
fn bytes_of(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}

/// The elements of an array-like reply; a map flattened to key, value, ….
fn items(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        Value::Map(m) => Some(m.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        Value::Attribute { data, .. } => items(*data),
        _ => None,
    }
}

/// The id of the only entry of an `XREVRANGE … COUNT 1` reply; `0-0` for none.
fn last_entry_id(reply: Value) -> Option<StreamId> {
    if reply == Value::Nil {
        return Some(StreamId::default());
    }
    let entries = items(reply)?;
    match entries.into_iter().next() {
        None => Some(StreamId::default()),
        Some(entry) => {
            let (id, _) = split_entry(entry)?;
            id
        }
    }
}

/// The `last-generated-id` of an `XINFO STREAM` reply.
fn last_generated_id(reply: Value) -> Option<StreamId> {
    let mut it = items(reply)?.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if bytes_of(k).as_deref() == Some(b"last-generated-id") {
            return StreamId::parse(&bytes_of(v)?);
        }
    }
    None
}

/// The entries of an `XREAD` reply on one stream: none for a nil reply
/// (the heartbeat), `None` when it is not a stream reply at all.
fn stream_entries(reply: Value) -> Option<Vec<Value>> {
    if reply == Value::Nil {
        return Some(Vec::new());
    }
    // [[key, entries]] (RESP2), or {key: entries} (RESP3, flattened).
    let mut streams = items(reply)?.into_iter();
    let first = streams.next()?;
    let entries = match first {
        Value::Array(pair) if pair.len() == 2 => pair.into_iter().nth(1)?,
        // Flattened map: the first item was the key, the next the entries.
        Value::BulkString(_) | Value::SimpleString(_) | Value::VerbatimString { .. } => {
            streams.next()?
        }
        _ => return None,
    };
    if entries == Value::Nil {
        return Some(Vec::new());
    }
    items(entries)
}

/// An entry `[id, [field, value, …]]` as its id (`None` if unreadable)
/// and its fields; `None` if it is not shaped like an entry at all.
fn split_entry(entry: Value) -> Option<(Option<StreamId>, Vec<Value>)> {
    let mut parts = items(entry)?.into_iter();
    let id = parts
        .next()
        .and_then(bytes_of)
        .and_then(|b| StreamId::parse(&b));
    let fields = parts.next().and_then(items).unwrap_or_default();
    Some((id, fields))
}

enum Skip {
    Foreign,
    Oversize,
    Malformed,
}

/// One entry's fields as an [`Entry`]; why not, if it must be skipped.
fn decode(fields: Vec<Value>, max_entry: usize) -> Result<Entry, Skip> {
    let (mut v, mut o, mut s, mut k, mut d) = (None, None, None, None, None);
    let mut it = fields.into_iter();
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        let slot = match bytes_of(name).as_deref() {
            Some(b"v") => &mut v,
            Some(b"o") => &mut o,
            Some(b"s") => &mut s,
            Some(b"k") => &mut k,
            Some(b"d") => &mut d,
            // Unknown fields are for later versions.
            _ => continue,
        };
        *slot = Some(bytes_of(value).ok_or(Skip::Malformed)?);
    }
    match v.as_deref() {
        Some(VERSION) => {}
        Some(_) => return Err(Skip::Foreign),
        None => return Err(Skip::Malformed),
    }
    let d = d.ok_or(Skip::Malformed)?;
    if d.len() > max_entry {
        return Err(Skip::Oversize);
    }
    let origin = o
        .filter(|o| o.len() == 16)
        .and_then(|o| {
            std::str::from_utf8(&o)
                .ok()
                .and_then(|t| u64::from_str_radix(t, 16).ok())
        })
        .ok_or(Skip::Malformed)?;
    let seq = s
        .filter(|s| !s.is_empty() && s.iter().all(u8::is_ascii_digit))
        .and_then(|s| {
            std::str::from_utf8(&s)
                .ok()
                .and_then(|t| t.parse::<u64>().ok())
        })
        .ok_or(Skip::Malformed)?;
    let message = match k.as_deref() {
        Some(b"t") => {
            Message::Text(Utf8Bytes::try_from_bytes(Bytes::from(d)).map_err(|_| Skip::Malformed)?)
        }
        Some(b"b") => Message::Binary(Bytes::from(d)),
        _ => return Err(Skip::Malformed),
    };
    Entry::new(NodeId::from_u64(origin), seq, message).ok_or(Skip::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    fn fields(pairs: &[(&[u8], &[u8])]) -> Vec<Value> {
        pairs.iter().flat_map(|(k, v)| [bulk(k), bulk(v)]).collect()
    }

    fn good() -> Vec<(&'static [u8], &'static [u8])> {
        vec![
            (b"v", b"1"),
            (b"o", b"00000000000000ff"),
            (b"s", b"7"),
            (b"k", b"t"),
            (b"d", b"msg:hi"),
        ]
    }

    #[test]
    fn decodes_and_skips() {
        let e = decode(fields(&good()), 100).unwrap_or_else(|_| panic!("decodes"));
        assert_eq!((e.origin.as_u64(), e.seq), (255, 7));
        assert_eq!(e.message.as_text(), Some("msg:hi"));
        let with = |i: usize, value: &'static [u8]| {
            let mut f = good();
            if let Some(slot) = f.get_mut(i) {
                slot.1 = value;
            }
            decode(fields(&f), 6)
        };
        assert!(matches!(with(0, b"2"), Err(Skip::Foreign)));
        assert!(matches!(with(4, b"1234567"), Err(Skip::Oversize)));
        assert!(with(4, b"123456").is_ok());
        assert!(matches!(with(1, b"ff"), Err(Skip::Malformed)));
        assert!(matches!(with(1, b"zz00000000000000"), Err(Skip::Malformed)));
        assert!(matches!(with(2, b"-1"), Err(Skip::Malformed)));
        assert!(matches!(
            with(2, b"99999999999999999999999"),
            Err(Skip::Malformed)
        ));
        assert!(matches!(with(3, b"x"), Err(Skip::Malformed)));
        assert!(matches!(with(4, b"\xff"), Err(Skip::Malformed)));
        let mut missing = good();
        missing.pop();
        assert!(matches!(
            decode(fields(&missing), 100),
            Err(Skip::Malformed)
        ));
        assert!(matches!(
            decode(vec![Value::Int(3)], 100),
            Err(Skip::Malformed)
        ));
        assert!(matches!(decode(Vec::new(), 100), Err(Skip::Malformed)));
    }

    #[test]
    fn parses_replies() {
        assert_eq!(StreamId::parse(b"12-3"), Some(StreamId(12, 3)));
        assert_eq!(StreamId::parse(b"12"), None);
        assert!(StreamId(2, 0) > StreamId(1, 9));
        assert_eq!(last_entry_id(Value::Array(vec![])), Some(StreamId(0, 0)));
        let entry = Value::Array(vec![bulk(b"5-1"), Value::Array(fields(&good()))]);
        assert_eq!(
            last_entry_id(Value::Array(vec![entry.clone()])),
            Some(StreamId(5, 1))
        );
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk(b"k"),
            Value::Array(vec![entry.clone()]),
        ])]);
        assert_eq!(stream_entries(resp2).map(|e| e.len()), Some(1));
        let resp3 = Value::Map(vec![(bulk(b"k"), Value::Array(vec![entry.clone(), entry]))]);
        assert_eq!(stream_entries(resp3).map(|e| e.len()), Some(2));
        assert_eq!(stream_entries(Value::Nil).map(|e| e.len()), Some(0));
        assert_eq!(stream_entries(Value::Int(1)), None);
        let info = Value::Array(vec![
            bulk(b"length"),
            Value::Int(3),
            bulk(b"last-generated-id"),
            bulk(b"9-2"),
        ]);
        assert_eq!(last_generated_id(info), Some(StreamId(9, 2)));
    }
}
