//! `--trace`: what Wireshark shows of a WebSocket connection, on stderr.
//!
//! [`Traced`] wraps a stream and passes every byte through unchanged while
//! feeding copies to two incremental parsers, one per direction. Each starts
//! in HTTP-head mode, prints the head as it was sent, then decodes frames
//! with [`FrameHeader::decode`] and unmasks the payload preview with
//! [`apply_mask`]. Payloads are never buffered whole: a frame costs at most
//! its header and a 125-byte preview, however large it is.
//!
//! The helpers at the end ([`escape_controls`], [`hex`], [`quoted`]) are the
//! one place the other tools format peer data for a terminal.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrows_proto::close::{CloseFrame, CloseParseError};
use ferrows_proto::frame::{FrameHeader, HeaderDecode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use ferrows_proto::handshake::{HandshakeLimits, parse_request, parse_response};
use ferrows_proto::mask::apply_mask;
use ferrows_proto::{OpCode, Role};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that traces what passes through it, or a plain pass-through
/// when tracing is off (one branch per call, no copies).
#[derive(Debug)]
pub(crate) struct Traced<S> {
    inner: S,
    tracer: Option<Box<Tracer>>,
}

impl<S> Traced<S> {
    /// Wraps `inner`; traces if `tracer` is given.
    pub(crate) fn new(inner: S, tracer: Option<Tracer>) -> Traced<S> {
        Traced {
            inner,
            tracer: tracer.map(Box::new),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Traced<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(tracer) = this.tracer.as_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) => {
                let new = buf.filled().get(before..).unwrap_or_default();
                if !new.is_empty() {
                    tracer.received(new);
                } else if had_room {
                    tracer.received_eof();
                }
            }
            Poll::Ready(Err(e)) => tracer.note(Dir::Received, &format!("read error: {e}")),
            Poll::Pending => {}
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Traced<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let (Some(tracer), Poll::Ready(Ok(n))) = (this.tracer.as_mut(), &result) {
            tracer.sent(buf.get(..*n).unwrap_or(buf));
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let (Some(tracer), Poll::Ready(Ok(n))) = (this.tracer.as_mut(), &result) {
            for written in written_slices(bufs, *n) {
                tracer.sent(written);
            }
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        if let (Some(tracer), Poll::Ready(Ok(()))) = (this.tracer.as_mut(), &result) {
            tracer.sent_eof();
        }
        result
    }
}

/// The direction of a byte on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Written by this end: `>`.
    Sent,
    /// Read from the peer: `<`.
    Received,
}

impl Dir {
    fn arrow(self) -> char {
        match self {
            Dir::Sent => '>',
            Dir::Received => '<',
        }
    }
}

/// Traces one connection to stderr, each line prefixed with `prefix`
/// (the peer's address on servers) and the time since the connection began.
#[derive(Debug)]
pub(crate) struct Tracer {
    prefix: String,
    start: Instant,
    sent: DirParser,
    received: DirParser,
    sent_eof: bool,
    received_eof: bool,
}

impl Tracer {
    /// A tracer for the end of the connection that plays `role`: a server
    /// reads the request head and writes the response head, a client the
    /// reverse.
    pub(crate) fn new(role: Role, prefix: impl Into<String>) -> Tracer {
        let (sent, received) = match role {
            Role::Server => (Head::Response, Head::Request),
            Role::Client => (Head::Request, Head::Response),
        };
        Tracer {
            prefix: prefix.into(),
            start: Instant::now(),
            sent: DirParser::new(sent),
            received: DirParser::new(received),
            sent_eof: false,
            received_eof: false,
        }
    }

    fn sent(&mut self, bytes: &[u8]) {
        let mut lines = Vec::new();
        self.sent.feed(bytes, &mut lines);
        self.emit(Dir::Sent, &lines);
    }

    fn received(&mut self, bytes: &[u8]) {
        let mut lines = Vec::new();
        self.received.feed(bytes, &mut lines);
        self.emit(Dir::Received, &lines);
    }

    fn sent_eof(&mut self) {
        if !std::mem::replace(&mut self.sent_eof, true) {
            let mut lines = Vec::new();
            self.sent.eof(&mut lines);
            lines.push("TCP FIN: no more data from this end".to_owned());
            self.emit(Dir::Sent, &lines);
        }
    }

    fn received_eof(&mut self) {
        if !std::mem::replace(&mut self.received_eof, true) {
            let mut lines = Vec::new();
            self.received.eof(&mut lines);
            lines.push("TCP FIN: the peer closed its end".to_owned());
            self.emit(Dir::Received, &lines);
        }
    }

    fn note(&mut self, dir: Dir, line: &str) {
        self.emit(dir, &[line.to_owned()]);
    }

    fn emit(&self, dir: Dir, lines: &[String]) {
        if lines.is_empty() {
            return;
        }
        let time = self.start.elapsed().as_secs_f64();
        let mut text = String::new();
        for line in lines {
            let _ = writeln!(text, "{}{time:10.6} {} {line}", self.prefix, dir.arrow());
        }
        // One write per event, so lines of concurrent connections do not mix.
        let _ = io::stderr().lock().write_all(text.as_bytes());
    }
}

/// Which HTTP head a direction starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    Request,
    Response,
}

/// The longest head the tracer waits for before giving up on it.
const MAX_HEAD: usize = 64 * 1024;

/// How many payload bytes a data frame line shows.
const DATA_PREVIEW: usize = 48;

/// How many bytes of hex a frame line shows.
const HEX_PREVIEW: usize = 16;

#[derive(Debug)]
enum State {
    /// Gathering the HTTP head.
    Head(Vec<u8>),
    /// Decoding frames.
    Frames,
    /// Not WebSocket frames (a plain HTTP body, or after a fatal error):
    /// only counted.
    Raw,
}

/// The frame being received in frames mode.
#[derive(Debug)]
struct Frame {
    header: FrameHeader,
    header_len: usize,
    /// Payload bytes not yet seen.
    remaining: u64,
    /// Payload bytes seen so far.
    seen: u64,
    /// The unmasked start of the payload, up to `target` bytes.
    preview: Vec<u8>,
    target: usize,
    printed: bool,
}

/// The incremental parser of one direction.
#[derive(Debug)]
struct DirParser {
    head: Head,
    state: State,
    /// A frame header being gathered.
    header: [u8; MAX_HEADER_LEN],
    header_len: usize,
    frame: Option<Frame>,
    /// The opcode of a fragmented message in progress, for its
    /// continuation frames.
    message: Option<OpCode>,
}

impl DirParser {
    fn new(head: Head) -> DirParser {
        DirParser {
            head,
            state: State::Head(Vec::new()),
            header: [0; MAX_HEADER_LEN],
            header_len: 0,
            frame: None,
            message: None,
        }
    }

    /// Feeds the next bytes of this direction; appends the lines to print.
    fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<String>) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Head(buf) => {
                    let old = buf.len();
                    let take = bytes.len().min(MAX_HEAD + 1 - old);
                    let new = bytes.get(..take).unwrap_or_default();
                    buf.extend_from_slice(new);
                    // The head can only end at a newline: parse again only
                    // then (not on every read, which is quadratic when the
                    // head trickles in), on the first bytes (to see at once
                    // that a stream is not HTTP) and at the size limit.
                    if old != 0 && !new.contains(&b'\n') && buf.len() <= MAX_HEAD {
                        bytes = bytes.get(take..).unwrap_or_default();
                        continue;
                    }
                    let buf = std::mem::take(buf);
                    match self.finish_head(&buf, out) {
                        // The head ends `n` bytes into the buffer: the rest
                        // of this input belongs to the next mode.
                        Some(n) => bytes = bytes.get(n.saturating_sub(old)..).unwrap_or_default(),
                        None => {
                            if let State::Head(b) = &mut self.state {
                                *b = buf;
                            }
                            bytes = bytes.get(take..).unwrap_or_default();
                        }
                    }
                }
                State::Frames => {
                    let used = self.frames(bytes, out);
                    bytes = bytes.get(used..).unwrap_or_default();
                }
                State::Raw => {
                    out.push(format!(
                        "{} bytes of other data: {} {}",
                        bytes.len(),
                        hex_preview(bytes, HEX_PREVIEW),
                        quoted(bytes.get(..DATA_PREVIEW).unwrap_or(bytes)),
                    ));
                    return;
                }
            }
        }
    }

    /// Looks for the end of the head in `buf`. Returns its length once
    /// complete (the state has moved on), `None` to wait for more.
    fn finish_head(&mut self, buf: &[u8], out: &mut Vec<String>) -> Option<usize> {
        let limits = HandshakeLimits::default()
            .max_head_size(MAX_HEAD)
            .max_headers(256);
        let parsed = match self.head {
            Head::Request => parse_request(buf, &limits)
                .map(|r| r.map(|(req, n)| (req.is_upgrade(), n)))
                .map_err(|e| e.to_string()),
            Head::Response => parse_response(buf, &limits)
                .map(|r| r.map(|(resp, n)| (resp.status() == 101, n)))
                .map_err(|e| e.to_string()),
        };
        match parsed {
            Ok(Some((upgrade, n))) => {
                print_head(buf.get(..n).unwrap_or(buf), out);
                self.state = if upgrade { State::Frames } else { State::Raw };
                Some(n)
            }
            Ok(None) if buf.len() <= MAX_HEAD => None,
            Ok(None) => {
                print_head(buf, out);
                out.push(format!("no end of the HTTP head within {MAX_HEAD} bytes"));
                self.state = State::Raw;
                Some(buf.len())
            }
            Err(why) => {
                print_head(buf, out);
                out.push(format!("not a valid HTTP head: {why}"));
                self.state = State::Raw;
                Some(buf.len())
            }
        }
    }

    /// Consumes frame bytes from the start of `bytes`; returns how many.
    fn frames(&mut self, bytes: &[u8], out: &mut Vec<String>) -> usize {
        let Some(frame) = self.frame.as_mut() else {
            return self.frame_header(bytes, out);
        };
        let take = usize::try_from(frame.remaining)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let chunk = bytes.get(..take).unwrap_or_default();
        let room = frame.target.saturating_sub(frame.preview.len());
        if room > 0 {
            let start = frame.preview.len();
            frame
                .preview
                .extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
            if let (Some(key), Some(new)) = (frame.header.mask, frame.preview.get_mut(start..)) {
                apply_mask(new, key, start);
            }
        }
        frame.remaining -= take as u64;
        frame.seen += take as u64;
        self.maybe_print(out);
        if self.frame.as_ref().is_some_and(|f| f.remaining == 0) {
            self.frame = None;
        }
        take
    }

    /// Gathers header bytes; starts the frame once the header is whole.
    fn frame_header(&mut self, bytes: &[u8], out: &mut Vec<String>) -> usize {
        let have = self.header.get(..self.header_len).unwrap_or_default();
        let need = match FrameHeader::decode(have) {
            Ok(HeaderDecode::Incomplete(n)) => n,
            Ok(HeaderDecode::Complete(..)) => 0,
            Err(e) => {
                out.push(format!("{e}: cannot follow the frames any further"));
                self.state = State::Raw;
                return 0;
            }
        };
        let take = need.min(bytes.len());
        let end = self.header_len + take;
        if let (Some(dst), Some(src)) =
            (self.header.get_mut(self.header_len..end), bytes.get(..take))
        {
            dst.copy_from_slice(src);
        }
        self.header_len = end;
        let have = self.header.get(..self.header_len).unwrap_or_default();
        match FrameHeader::decode(have) {
            Ok(HeaderDecode::Complete(header, header_len)) => {
                self.header_len = 0;
                let target = if header.opcode.is_control() {
                    MAX_CONTROL_PAYLOAD
                } else {
                    DATA_PREVIEW
                };
                let target = usize::try_from(header.payload_len)
                    .unwrap_or(usize::MAX)
                    .min(target);
                self.frame = Some(Frame {
                    header,
                    header_len,
                    remaining: header.payload_len,
                    seen: 0,
                    preview: Vec::with_capacity(target),
                    target,
                    printed: false,
                });
                self.maybe_print(out);
                if self.frame.as_ref().is_some_and(|f| f.remaining == 0) {
                    self.frame = None;
                }
            }
            Ok(HeaderDecode::Incomplete(_)) => {}
            Err(e) => {
                out.push(format!("{e}: cannot follow the frames any further"));
                self.state = State::Raw;
            }
        }
        take
    }

    /// Prints the current frame's line once its preview is complete.
    fn maybe_print(&mut self, out: &mut Vec<String>) {
        let Some(frame) = self.frame.as_mut() else {
            return;
        };
        if frame.printed || frame.preview.len() < frame.target {
            return;
        }
        frame.printed = true;
        let h = frame.header;
        // The type of the message this frame belongs to.
        let kind = match h.opcode {
            OpCode::Continuation => self.message,
            op if op.is_data() => Some(op),
            _ => None,
        };
        if h.opcode.is_data() && !h.opcode.is_reserved() {
            self.message = if h.fin { None } else { kind };
        }
        out.push(frame_line(frame, kind));
    }

    /// The direction ended: says so if it ended inside a frame.
    fn eof(&mut self, out: &mut Vec<String>) {
        match &self.state {
            State::Head(buf) if !buf.is_empty() => {
                print_head(buf, out);
                out.push(format!(
                    "the connection ended inside the HTTP head ({} bytes)",
                    buf.len()
                ));
            }
            State::Frames => {
                if let Some(f) = &self.frame {
                    if !f.printed {
                        out.push(frame_line(f, self.message));
                    }
                    out.push(format!(
                        "the connection ended inside a frame: {} of {} payload bytes arrived",
                        f.seen, f.header.payload_len
                    ));
                } else if self.header_len > 0 {
                    out.push(format!(
                        "the connection ended inside a frame header ({} bytes of it arrived)",
                        self.header_len
                    ));
                }
            }
            _ => {}
        }
    }
}

/// Prints an HTTP head line by line, control characters escaped, lines
/// ending in a bare LF (not CRLF) marked.
/// The parts of `bufs` that a vectored write of `n` bytes wrote, in order
/// (empty slices skipped).
pub(crate) fn written_slices<'a>(
    bufs: &'a [IoSlice<'_>],
    n: usize,
) -> impl Iterator<Item = &'a [u8]> {
    let mut left = n;
    bufs.iter().filter_map(move |slice| {
        let take = left.min(slice.len());
        left -= take;
        (take > 0).then(|| slice.get(..take).unwrap_or_default())
    })
}

fn print_head(head: &[u8], out: &mut Vec<String>) {
    let text = String::from_utf8_lossy(head);
    let lines: Vec<&str> = text.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let terminated = i + 1 < lines.len();
        let (body, crlf) = match line.strip_suffix('\r') {
            Some(body) => (body, true),
            None => (*line, false),
        };
        if body.is_empty() {
            // The blank line that ends the head, or nothing after the
            // last line break.
            break;
        }
        let mark = if terminated && !crlf {
            "  [bare LF]"
        } else {
            ""
        };
        let body = redact_head_line(body);
        out.push(format!("{}{mark}", escape_controls(&body)));
    }
}

/// A head line with its credentials redacted: the `?token=` (and the
/// like) of a request line's target, an `Authorization` or
/// `Proxy-Authorization` header's value. Tokens are never printed.
pub(crate) fn redact_head_line(line: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    if let Some((name, _)) = line.split_once(':') {
        let name = name.trim();
        if name.eq_ignore_ascii_case("authorization")
            || name.eq_ignore_ascii_case("proxy-authorization")
        {
            return Cow::Owned(format!("{name}: [redacted]"));
        }
    }
    // A request line: METHOD TARGET VERSION.
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(target), Some(version))
            if target.contains('?') && version.starts_with("HTTP/") =>
        {
            let target = ferrows::listener::redact_target(target);
            Cow::Owned(format!("{method} {target} {version}"))
        }
        _ => Cow::Borrowed(line),
    }
}

/// One line per frame: header fields, then a preview of the payload.
fn frame_line(f: &Frame, kind: Option<OpCode>) -> String {
    let h = &f.header;
    let mut s = format!(
        "{:<12} fin={} rsv={}{}{} mask={}",
        h.opcode.to_string(),
        u8::from(h.fin),
        u8::from(h.rsv1),
        u8::from(h.rsv2),
        u8::from(h.rsv3),
        u8::from(h.mask.is_some()),
    );
    if let Some(key) = h.mask {
        let _ = write!(s, " key={}", hex_compact(&key));
    }
    let _ = write!(s, " len={}", h.payload_len);
    if !h.has_minimal_length(f.header_len) {
        let _ = write!(s, " (non-minimal {})", length_encoding(h, f.header_len));
    }
    if h.payload_len == 0 {
        if h.opcode == OpCode::Close {
            s.push_str(" | no status code (1005)");
        }
        return s;
    }
    let whole = f.preview.len() as u64 == h.payload_len;
    if h.opcode == OpCode::Close && whole {
        match CloseFrame::parse(Bytes::copy_from_slice(&f.preview)) {
            Ok(Some(frame)) => {
                let _ = write!(s, " | code {}", frame.code);
                if !frame.reason().is_empty() {
                    let _ = write!(s, " reason {}", quoted(frame.reason().as_bytes()));
                }
            }
            Ok(None) => {}
            Err(e) => {
                let why = match e {
                    CloseParseError::OneByte => "1 byte: a code needs 2".to_owned(),
                    CloseParseError::InvalidCode(code) => format!("code {code} may not be sent"),
                    CloseParseError::InvalidUtf8 => "the reason is not UTF-8".to_owned(),
                };
                let _ = write!(s, " | invalid close payload: {why}");
            }
        }
        return s;
    }
    let _ = write!(s, " | {}", hex_preview(&f.preview, HEX_PREVIEW));
    if h.rsv1 && h.opcode.is_data() {
        s.push_str(" | compressed");
    } else if kind != Some(OpCode::Binary) || std::str::from_utf8(&f.preview).is_ok() {
        let _ = write!(s, " | {}", quoted(&f.preview));
        if !whole {
            s.push('…');
        }
    }
    s
}

/// "7-bit", "16-bit" or "64-bit": the size of the length field a header
/// of `header_len` bytes used.
pub(crate) fn length_encoding(h: &FrameHeader, header_len: usize) -> &'static str {
    let mask_len = if h.mask.is_some() { 4 } else { 0 };
    match header_len.saturating_sub(2 + mask_len) {
        0 => "7-bit",
        2 => "16-bit",
        _ => "64-bit",
    }
}

/// Escapes what a terminal would interpret: C0 and C1 control characters,
/// DEL, and the Unicode bidirectional and invisible formatting controls
/// (which can make text display other than it is). Everything else,
/// backslashes included, is left as is.
pub(crate) fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
        )
}

/// Bytes as lowercase hex pairs separated by spaces: `48 65 6c`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Bytes as hex without separators: `37fa213d`.
pub(crate) fn hex_compact(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The first `max` bytes as hex, with `…` if there are more.
pub(crate) fn hex_preview(bytes: &[u8], max: usize) -> String {
    match bytes.get(..max) {
        Some(head) if bytes.len() > max => format!("{} …", hex(head)),
        _ => hex(bytes),
    }
}

/// Bytes as a quoted, escaped string (`"Hello\n"`). Invalid UTF-8 is
/// shown as `\xNN`; an incomplete character at the very end (a preview cut
/// short) as `…`.
pub(crate) fn quoted(bytes: &[u8]) -> String {
    let mut s = String::from("\"");
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                push_debug(&mut s, valid);
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                push_debug(&mut s, std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    Some(n) => {
                        for b in after.get(..n).unwrap_or_default() {
                            let _ = write!(s, "\\x{b:02x}");
                        }
                        rest = after.get(n..).unwrap_or_default();
                    }
                    None => {
                        s.push('…');
                        break;
                    }
                }
            }
        }
    }
    s.push('"');
    s
}

/// Appends `text` escaped as Rust's `Debug` does inside quotes, plus the
/// formatting controls [`escape_controls`] also escapes.
fn push_debug(s: &mut String, text: &str) {
    for c in text.chars() {
        if needs_escape(c) && !matches!(c, '\n' | '\r' | '\t') {
            let _ = write!(s, "\\u{{{:x}}}", u32::from(c));
        } else {
            s.extend(c.escape_debug());
        }
    }
}

/// How long ago `start` was, for messages: `1.2 ms`.
pub(crate) fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use ferrows_proto::encode_raw_frame;

    fn feed_all(p: &mut DirParser, bytes: &[u8], step: usize) -> Vec<String> {
        let mut out = Vec::new();
        for chunk in bytes.chunks(step.max(1)) {
            p.feed(chunk, &mut out);
        }
        out
    }

    const REQUEST: &str = "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn client_stream() -> Vec<u8> {
        let mut wire = REQUEST.as_bytes().to_vec();
        // RFC 6455 §5.7: a masked "Hello".
        wire.extend_from_slice(&[
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ]);
        // A masked 300-byte binary frame (16-bit length).
        let mut h = FrameHeader::new(OpCode::Binary, 0);
        h.mask = Some([1, 2, 3, 4]);
        encode_raw_frame(h, &[0xAB; 300], &mut wire);
        // A masked close 1000 "bye".
        let mut h = FrameHeader::new(OpCode::Close, 0);
        h.mask = Some([9, 9, 9, 9]);
        encode_raw_frame(h, b"\x03\xe8bye", &mut wire);
        wire
    }

    #[test]
    fn head_then_frames_whatever_the_read_sizes() {
        let wire = client_stream();
        let whole = feed_all(&mut DirParser::new(Head::Request), &wire, wire.len());
        for step in [1, 2, 3, 7, 13, 64] {
            let pieces = feed_all(&mut DirParser::new(Head::Request), &wire, step);
            assert_eq!(pieces, whole, "read size {step}");
        }
        assert_eq!(whole[0], "GET /chat HTTP/1.1");
        assert_eq!(whole[5], "Sec-WebSocket-Version: 13");
        assert_eq!(
            whole[6],
            "text         fin=1 rsv=000 mask=1 key=37fa213d len=5 | 48 65 6c 6c 6f | \"Hello\""
        );
        assert!(
            whole[7].starts_with("binary       fin=1 rsv=000 mask=1 key=01020304 len=300 | ab ab"),
            "{}",
            whole[7]
        );
        assert_eq!(
            whole[8],
            "close        fin=1 rsv=000 mask=1 key=09090909 len=5 | code 1000 (normal closure) reason \"bye\""
        );
        assert_eq!(whole.len(), 9);
    }

    #[test]
    fn large_frames_keep_only_the_preview() {
        let mut p = DirParser::new(Head::Response);
        let mut out = Vec::new();
        p.feed(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            &mut out,
        );
        // A 64-bit length header for 1 GiB, then 1 MiB of it.
        p.feed(&[0x82, 0x7F, 0, 0, 0, 0, 0x40, 0, 0, 0], &mut out);
        let chunk = vec![0x55u8; 1 << 20];
        p.feed(&chunk, &mut out);
        let f = p.frame.as_ref().unwrap();
        assert_eq!(f.preview.capacity(), DATA_PREVIEW);
        assert_eq!(f.seen, 1 << 20);
        assert!(out[2].starts_with("binary       fin=1 rsv=000 mask=0 len=1073741824 |"));
        p.eof(&mut out);
        assert_eq!(
            out.last().unwrap(),
            "the connection ended inside a frame: 1048576 of 1073741824 payload bytes arrived"
        );
    }

    #[test]
    fn plain_http_is_not_parsed_as_frames() {
        let mut p = DirParser::new(Head::Response);
        let out = feed_all(
            &mut p,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            4,
        );
        assert_eq!(out[0], "HTTP/1.1 200 OK");
        assert_eq!(out[1], "Content-Length: 5");
        assert!(
            out[2..].iter().all(|l| l.contains("bytes of other data")),
            "{out:?}"
        );
        assert!(out.iter().all(|l| !l.contains("fin=")), "{out:?}");
    }

    #[test]
    fn bare_lf_and_control_characters_are_shown() {
        let mut p = DirParser::new(Head::Response);
        let out = feed_all(
            &mut p,
            b"HTTP/1.1 101 Switching Protocols\r\nX: caf\xc3\xa9 \xe2\x80\xae!\r\nSec-WebSocket-Accept: abc=\n\r\n\r\n",
            5,
        );
        assert_eq!(out[1], "X: café \\u{202e}!");
        assert_eq!(out[2], "Sec-WebSocket-Accept: abc=  [bare LF]");
        // The head ended at the first blank line: the stray CRLF after it
        // is read as the start of a frame (opcode 0xD, 10 payload bytes).
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(
            p.frame.as_ref().unwrap().header.opcode,
            OpCode::Reserved(0xD)
        );
    }

    #[test]
    fn fragments_and_reserved_opcodes() {
        let mut p = DirParser::new(Head::Response);
        let mut out = Vec::new();
        p.feed(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", &mut out);
        let mut wire = Vec::new();
        let mut h = FrameHeader::new(OpCode::Text, 0);
        h.fin = false;
        encode_raw_frame(h, b"fra", &mut wire);
        let mut h = FrameHeader::new(OpCode::Continuation, 0);
        h.fin = true;
        encode_raw_frame(h, b"gment", &mut wire);
        let mut h = FrameHeader::new(OpCode::Reserved(0xB), 0);
        h.rsv2 = true;
        encode_raw_frame(h, b"", &mut wire);
        p.feed(&wire, &mut out);
        assert_eq!(
            out[1],
            "text         fin=0 rsv=000 mask=0 len=3 | 66 72 61 | \"fra\""
        );
        assert_eq!(
            out[2],
            "continuation fin=1 rsv=000 mask=0 len=5 | 67 6d 65 6e 74 | \"gment\""
        );
        assert_eq!(out[3], "reserved (0xB) fin=1 rsv=010 mask=0 len=0");
    }

    #[test]
    fn escaping() {
        assert_eq!(escape_controls("plain ünïcode \\"), "plain ünïcode \\");
        assert_eq!(
            escape_controls("a\x1b[2Jb\r\n\u{202e}c\u{9b}"),
            "a\\u{1b}[2Jb\\r\\n\\u{202e}c\\u{9b}"
        );
        assert_eq!(quoted(b"hi\x00\xff\"\xe2\x9c"), "\"hi\\u{0}\\xff\\\"…\"");
        assert_eq!(quoted("\u{202e}".as_bytes()), "\"\\u{202e}\"");
        assert_eq!(hex_preview(&[1, 2, 3], 2), "01 02 …");
        assert_eq!(hex_compact(&[0x37, 0xfa]), "37fa");
    }
}
