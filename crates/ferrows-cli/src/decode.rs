//! `ferrows decode` and `ferrows accept-key`: the offline calculators.
//!
//! Everything shown comes from ferrows-proto: [`FrameHeader::decode`] for
//! the header fields, [`apply_mask`] for the payload, [`CloseFrame::parse`]
//! for close frames, the UTF-8 validator for text, and a real receiving
//! [`Decoder`] for the verdict a peer would reach (and the close code it
//! would send).

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Read as _};
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use clap::{Args, ValueEnum};
use ferrows_proto::close::{CloseFrame, CloseParseError};
use ferrows_proto::deflate::Decompressor;
use ferrows_proto::frame::{FrameHeader, HeaderDecode, MAX_HEADER_LEN};
use ferrows_proto::handshake::{accept_key, diagnose_accept};
use ferrows_proto::mask::apply_mask;
use ferrows_proto::utf8::{self, Utf8Validator};
use ferrows_proto::{Decoder, Incoming, Limits, OpCode, ProtocolError, Role};

use crate::trace::{escape_controls, hex, length_encoding, quoted};

/// Arguments of `ferrows decode`.
#[derive(Args, Debug)]
pub(crate) struct DecodeArgs {
    /// Frame bytes in hex: `81 05 48 65 6c 6c 6f`, `810548656c6c6f`,
    /// `0x81,0x05,...` or `81:05:...` (whitespace, `:` and `,` separate,
    /// `0x` prefixes are ignored). One or more frames back to back. Read
    /// from standard input when none are given.
    #[arg(value_name = "HEX")]
    hex: Vec<String>,
    /// Which end received the frames: `server` (frames must be masked) or
    /// `client` (frames must not be). Default: guessed from the first
    /// frame's MASK bit.
    #[arg(long, value_enum, value_name = "ROLE")]
    role: Option<RoleArg>,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message,
    /// which is inflated (32 KiB window, context kept across messages).
    #[arg(long)]
    deflate: bool,
    /// Read a capture file instead (pcap or pcapng, e.g. from tcpdump,
    /// Wireshark or `--pcap`; `-` for standard input): reassemble its TCP
    /// connections, find the WebSocket upgrades and explain each
    /// connection's handshake and frames, both directions.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["hex", "role", "deflate"])]
    pcap: Option<String>,
    /// With --pcap: print JSON (one object) instead of text.
    #[arg(long, requires = "pcap")]
    json: bool,
}

/// The receiving end, for `--role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RoleArg {
    /// The frames were sent by a client to a server.
    Server,
    /// The frames were sent by a server to a client.
    Client,
}

/// Arguments of `ferrows accept-key`.
#[derive(Args, Debug)]
pub(crate) struct AcceptKeyArgs {
    /// The client's Sec-WebSocket-Key (base64 of 16 bytes).
    #[arg(value_name = "KEY")]
    key: String,
    /// Also compare with this Sec-WebSocket-Accept (what a server answered)
    /// and explain a mismatch; exit status 1 if it differs.
    #[arg(long, value_name = "ACCEPT")]
    check: Option<String>,
}

/// `ferrows accept-key`: prints the Sec-WebSocket-Accept for a key.
pub(crate) fn accept_key_command(args: &AcceptKeyArgs) -> ExitCode {
    let (accept, warnings) = compute_accept(&args.key);
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    println!("{accept}");
    let Some(got) = &args.check else {
        return ExitCode::SUCCESS;
    };
    if *got == accept {
        eprintln!("match: the server's value is right");
        return ExitCode::SUCCESS;
    }
    let mut msg = format!(
        "mismatch: {} is not the expected {accept:?}",
        quoted(got.as_bytes())
    );
    if let Some(why) = diagnose_accept(&accept, got) {
        let _ = write!(msg, ": {why}");
    }
    eprintln!("{msg}");
    ExitCode::from(1)
}

/// The accept value for `key` as a server computes it (surrounding
/// spaces and tabs trimmed), and what is wrong with the key, if anything.
fn compute_accept(key: &str) -> (String, Vec<String>) {
    let mut warnings = Vec::new();
    let trimmed = key.trim_matches([' ', '\t']);
    if trimmed != key {
        warnings.push(
            "leading or trailing whitespace removed, as a server does before hashing".to_owned(),
        );
    }
    match base64::engine::general_purpose::STANDARD.decode(trimmed) {
        Ok(raw) if raw.len() == 16 => {}
        Ok(raw) => warnings.push(format!(
            "the key decodes to {} bytes, not 16: servers refuse it with 400 Bad Request (RFC 6455 §4.1)",
            raw.len()
        )),
        Err(e) => warnings.push(format!(
            "the key is not valid base64 ({e}): servers refuse it with 400 Bad Request (RFC 6455 §4.1 wants base64 of 16 random bytes)"
        )),
    }
    (accept_key(trimmed.as_bytes()), warnings)
}

/// `ferrows decode`: prints the frames; exit status 1 if the input is
/// malformed or a receiver would fail the connection on it.
pub(crate) fn decode_command(args: &DecodeArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.pcap {
        return crate::pcap::decode_pcap(path, args.json);
    }
    let sources: Vec<(String, String)> = if args.hex.is_empty() {
        if std::io::stdin().is_terminal() {
            eprintln!("reading hex from standard input (end with Ctrl-D)");
        }
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| anyhow::anyhow!("reading standard input: {e}"))?;
        text.lines()
            .enumerate()
            .map(|(i, l)| (format!("line {}", i + 1), l.to_owned()))
            .collect()
    } else {
        args.hex
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("argument {}", i + 1), a.clone()))
            .collect()
    };
    let bytes = match parse_hex(&sources) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: invalid hex: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    if bytes.is_empty() {
        eprintln!("error: no bytes to decode");
        return Ok(ExitCode::from(1));
    }
    let report = decode(&bytes, args.role, args.deflate);
    print!("{}", report.text);
    Ok(if report.problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Parses hex bytes from named pieces of text.
pub(crate) fn parse_hex(sources: &[(String, String)]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for (name, text) in sources {
        let mut start = None;
        // A trailing separator flushes the last token.
        for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
            let sep = c.is_whitespace() || c == ':' || c == ',';
            match (sep, start) {
                (false, None) => start = Some(i),
                (true, Some(s)) => {
                    let token = text.get(s..i).unwrap_or_default();
                    parse_token(token, name, s, &mut out)?;
                    start = None;
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

fn parse_token(token: &str, name: &str, at: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let (digits, skip) = match token.get(..2) {
        Some("0x" | "0X") => (token.get(2..).unwrap_or_default(), 2),
        _ => (token, 0),
    };
    if let Some((i, c)) = digits.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "{} is not a hex digit ({name}, character {})",
            quoted(c.to_string().as_bytes()),
            at + skip + i + 1
        ));
    }
    let value = |d: u8| match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        _ => d - b'A' + 10,
    };
    match digits.as_bytes() {
        [] => Err(format!("\"{token}\" has no digits ({name})")),
        // A lone digit is a byte (`0x5`, `5`).
        [d] => {
            out.push(value(*d));
            Ok(())
        }
        d if d.len() % 2 == 1 => Err(format!(
            "\"{token}\" has an odd number of digits ({}): is one missing? ({name}, character {})",
            d.len(),
            at + 1
        )),
        d => {
            out.extend(d.chunks_exact(2).map(|p| match p {
                [hi, lo] => value(*hi) << 4 | value(*lo),
                _ => 0,
            }));
            Ok(())
        }
    }
}

/// The decoded frames, as text, and how many problems were found.
#[derive(Debug)]
struct Report {
    text: String,
    problems: usize,
}

/// One frame, as `decode --pcap --json` lists it.
#[derive(Debug, Clone)]
pub(crate) struct FrameInfo {
    pub(crate) index: usize,
    /// Where the frame starts in its byte stream.
    pub(crate) offset: u64,
    /// When the segment holding its first byte was captured.
    pub(crate) time: Option<Duration>,
    pub(crate) fin: bool,
    pub(crate) rsv1: bool,
    pub(crate) opcode: u8,
    pub(crate) masked: bool,
    pub(crate) payload_len: u64,
    /// The whole frame was present.
    pub(crate) complete: bool,
    /// A close frame's status code.
    pub(crate) close_code: Option<u16>,
}

/// What [`walk_frames`] found in a byte stream.
#[derive(Debug, Default)]
pub(crate) struct Walked {
    pub(crate) text: String,
    pub(crate) problems: usize,
    pub(crate) frames: Vec<FrameInfo>,
    /// The problems, with the frame each belongs to.
    pub(crate) issues: Vec<(usize, String)>,
    /// Complete messages a receiver would have delivered.
    pub(crate) messages: usize,
}

/// Walks the frames in `bytes`.
struct Walk {
    out: String,
    problems: usize,
    role: Role,
    deflate: bool,
    /// The receiver's inflate window and context reset, when `deflate`.
    inflate: (u8, bool),
    /// Stream offset of `bytes[0]`, and when each part of it was captured.
    base: u64,
    clock: Vec<(u64, Duration)>,
    frames: Vec<FrameInfo>,
    issues: Vec<(usize, String)>,
    current: usize,
    messages: usize,
    decoder: Decoder,
    /// Set once a receiver would have failed the connection.
    failed_at: Option<usize>,
    /// The type of the message in progress and its first frame, and its
    /// UTF-8 state, for continuation frames.
    message: Option<(OpCode, usize, bool)>,
    utf8: Utf8Validator,
}

fn new_decoder(role: Role, deflate: bool, (bits, reset): (u8, bool)) -> Decoder {
    let limits = Limits::default()
        .max_message_size(64 << 20)
        .max_frame_size(64 << 20)
        .max_fragments(usize::MAX);
    Decoder::new(
        role,
        limits,
        deflate.then(|| Decompressor::new(bits, reset)),
    )
}

impl Walk {
    fn new(out: String, role: Role, inflate: Option<(u8, bool)>) -> Walk {
        let deflate = inflate.is_some();
        let inflate = inflate.unwrap_or((15, false));
        Walk {
            out,
            problems: 0,
            role,
            deflate,
            inflate,
            base: 0,
            clock: Vec::new(),
            frames: Vec::new(),
            issues: Vec::new(),
            current: 0,
            messages: 0,
            decoder: new_decoder(role, deflate, inflate),
            failed_at: None,
            message: None,
            utf8: Utf8Validator::new(),
        }
    }

    /// Walks `bytes` frame by frame from frame number `first_index`;
    /// returns the number of the next frame and the bytes consumed.
    fn run(&mut self, bytes: &[u8], first_index: usize) -> (usize, usize) {
        let mut offset = 0;
        let mut index = first_index;
        while offset < bytes.len() {
            let rest = bytes.get(offset..).unwrap_or_default();
            match self.frame(index, offset, rest) {
                Some(len) => offset += len,
                None => {
                    index += 1;
                    break;
                }
            }
            index += 1;
        }
        (index, offset)
    }

    /// When the byte at stream offset `at` was captured.
    fn time_of(&self, at: u64) -> Option<Duration> {
        let i = self.clock.partition_point(|(o, _)| *o <= at);
        self.clock.get(i.checked_sub(1)?).map(|(_, t)| *t)
    }
}

/// Walks the frames of one direction of a captured connection: `bytes`
/// start at stream offset `base`; `clock` maps stream offsets to capture
/// times; `inflate` is the receiver's (window bits, no context takeover)
/// when permessage-deflate was negotiated.
pub(crate) fn walk_frames(
    bytes: &[u8],
    role: Role,
    inflate: Option<(u8, bool)>,
    base: u64,
    clock: &[(u64, Duration)],
    first_index: usize,
) -> Walked {
    let mut walk = Walk::new(String::new(), role, inflate);
    walk.base = base;
    walk.clock = clock.to_vec();
    walk.run(bytes, first_index);
    Walked {
        text: walk.out,
        problems: walk.problems,
        frames: walk.frames,
        issues: walk.issues,
        messages: walk.messages,
    }
}

fn decode(bytes: &[u8], role: Option<RoleArg>, deflate: bool) -> Report {
    let mut out = String::new();
    let role = match role {
        Some(RoleArg::Server) => {
            out.push_str("receiver: server (frames must be masked)\n");
            Role::Server
        }
        Some(RoleArg::Client) => {
            out.push_str("receiver: client (frames must not be masked)\n");
            Role::Client
        }
        None => match bytes.get(1) {
            Some(b) if b & 0x80 == 0 => {
                out.push_str("receiver: client, guessed from the first frame's MASK bit (0); --role sets it\n");
                Role::Client
            }
            _ => {
                out.push_str("receiver: server, guessed from the first frame's MASK bit (1); --role sets it\n");
                Role::Server
            }
        },
    };
    if deflate {
        out.push_str("permessage-deflate: negotiated (--deflate)\n");
    }
    let mut walk = Walk::new(out, role, deflate.then_some((15, false)));
    let (next, _) = walk.run(bytes, 1);
    let index = next - 1;
    let frames = if index == 1 { "frame" } else { "frames" };
    let verdict = match walk.problems {
        0 => "well-formed".to_owned(),
        1 => "1 problem".to_owned(),
        n => format!("{n} problems"),
    };
    let _ = writeln!(
        walk.out,
        "\n{index} {frames}, {} bytes: {verdict}",
        bytes.len()
    );
    if let Some(at) = walk.failed_at {
        let _ = writeln!(
            walk.out,
            "a receiver would have failed the connection at frame {at}; the frames after it were checked as if on a new connection"
        );
    }
    Report {
        text: walk.out,
        problems: walk.problems,
    }
}

impl Walk {
    fn line(&mut self, label: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.out, "  {label:<9} {value}");
    }

    fn problem(&mut self, what: impl std::fmt::Display) {
        self.problems += 1;
        let what = what.to_string();
        let _ = writeln!(self.out, "  problem:  {what}");
        self.issues.push((self.current, what));
    }

    /// Decodes the frame at the start of `rest`; returns its length, or
    /// `None` if the input ends inside it (or cannot be followed further).
    fn frame(&mut self, index: usize, offset: usize, rest: &[u8]) -> Option<usize> {
        self.current = index;
        let time = self.time_of(self.base + offset as u64);
        let offset = self.base + offset as u64;
        let (header, header_len) = match FrameHeader::decode(rest) {
            Ok(HeaderDecode::Complete(h, n)) => (h, n),
            Ok(HeaderDecode::Incomplete(missing)) => {
                let _ = writeln!(
                    self.out,
                    "\nframe {index} at byte {offset}: {}, truncated",
                    bytes(rest.len())
                );
                self.truncated_header(rest, missing);
                return None;
            }
            Err(e) => {
                let _ = writeln!(self.out, "\nframe {index} at byte {offset}");
                self.problem(format!(
                    "{e} (RFC 6455 §5.2): a receiver fails the connection with close code 1002 (protocol error), and the frame boundaries after it are unknown"
                ));
                return None;
            }
        };
        let payload_len = usize::try_from(header.payload_len).unwrap_or(usize::MAX);
        let available = rest.len().saturating_sub(header_len);
        let complete = available >= payload_len;
        let frame_len = header_len.saturating_add(payload_len);
        let size = if complete {
            bytes(frame_len)
        } else {
            format!(
                "{} of {}",
                bytes(rest.len()),
                (header_len as u64).saturating_add(header.payload_len)
            )
        };
        let at = time
            .map(|t| format!(", time {}", clock_text(t)))
            .unwrap_or_default();
        let _ = writeln!(
            self.out,
            "\nframe {index} at byte {offset}{at}: {size} (header {header_len}, payload {})",
            header.payload_len
        );
        let close_code = (header.opcode == OpCode::Close && complete)
            .then(|| rest.get(header_len..header_len + 2))
            .flatten()
            .map(|c| {
                let mut code = [
                    c.first().copied().unwrap_or(0),
                    c.get(1).copied().unwrap_or(0),
                ];
                if let Some(key) = header.mask {
                    apply_mask(&mut code, key, 0);
                }
                u16::from_be_bytes(code)
            });
        self.frames.push(FrameInfo {
            index,
            offset,
            time,
            fin: header.fin,
            rsv1: header.rsv1,
            opcode: header.opcode.as_u8(),
            masked: header.mask.is_some(),
            payload_len: header.payload_len,
            complete,
            close_code,
        });
        self.header_fields(&header, header_len);

        let mut payload = rest
            .get(header_len..header_len + payload_len.min(available))
            .unwrap_or_default()
            .to_vec();
        if let Some(key) = header.mask {
            apply_mask(&mut payload, key, 0);
        }
        let message = self.begin(index, &header);
        self.payload(&header, &payload, complete, message);
        if !complete {
            self.problem(format!(
                "truncated frame: the header says {} payload bytes, {} present",
                header.payload_len, available
            ));
            return None;
        }
        self.check(
            index,
            &header,
            rest.get(..frame_len).unwrap_or(rest),
            message,
        );
        Some(frame_len)
    }

    /// Tracks messages across frames: returns the message this frame
    /// belongs to (type, first frame, compressed), if it is a data frame.
    fn begin(&mut self, index: usize, h: &FrameHeader) -> Option<(OpCode, usize, bool)> {
        match h.opcode {
            OpCode::Text | OpCode::Binary => {
                self.message = Some((h.opcode, index, h.rsv1));
                self.utf8.reset();
                self.message
            }
            OpCode::Continuation => self.message,
            _ => None,
        }
    }

    /// Explains which field of a cut-short header is missing bytes.
    fn truncated_header(&mut self, rest: &[u8], missing: usize) {
        if rest.len() < 2 {
            self.problem(format!(
                "truncated header: {} byte, a frame header needs at least 2",
                rest.len()
            ));
            return;
        }
        // Decode with the missing bytes zeroed to learn the layout.
        let mut padded = [0u8; MAX_HEADER_LEN];
        for (dst, src) in padded.iter_mut().zip(rest) {
            *dst = *src;
        }
        let (h, header_len) = match FrameHeader::decode(&padded) {
            Ok(HeaderDecode::Complete(h, n)) => (h, n),
            Ok(HeaderDecode::Incomplete(_)) => {
                self.problem(format!("truncated header: {missing} more bytes needed"));
                return;
            }
            Err(e) => {
                self.problem(format!(
                    "{e} (RFC 6455 §5.2), and the header is truncated: {missing} more bytes needed"
                ));
                return;
            }
        };
        self.line("FIN", u8::from(h.fin));
        self.line(
            "RSV1-3",
            format!(
                "{} {} {}",
                u8::from(h.rsv1),
                u8::from(h.rsv2),
                u8::from(h.rsv3)
            ),
        );
        self.line("opcode", opcode_text(h.opcode));
        self.line("MASK", u8::from(h.mask.is_some()));
        let mask_len = if h.mask.is_some() { 4 } else { 0 };
        let length_end = header_len - mask_len;
        if rest.len() < length_end {
            let mut msg = format!(
                "truncated header: {} length needs {} more bytes",
                length_encoding(&h, header_len),
                length_end - rest.len()
            );
            if mask_len > 0 {
                msg.push_str(", then 4 for the masking key");
            }
            self.problem(msg);
        } else {
            self.problem(format!(
                "truncated header: the masking key needs {} more bytes",
                header_len - rest.len()
            ));
        }
    }

    fn header_fields(&mut self, h: &FrameHeader, header_len: usize) {
        self.line(
            "FIN",
            if h.fin {
                "1 (final frame of the message)"
            } else {
                "0 (more frames follow)"
            },
        );
        self.line(
            "RSV1-3",
            format!(
                "{} {} {}",
                u8::from(h.rsv1),
                u8::from(h.rsv2),
                u8::from(h.rsv3)
            ),
        );
        self.line("opcode", opcode_text(h.opcode));
        match h.mask {
            Some(key) => self.line(
                "MASK",
                format!("1, key {} (the payload is shown unmasked)", hex(&key)),
            ),
            None => self.line("MASK", "0 (not masked)"),
        }
        let encoding = length_encoding(h, header_len);
        if h.has_minimal_length(header_len) {
            self.line("length", format!("{} ({encoding} length)", h.payload_len));
        } else {
            self.line(
                "length",
                format!(
                    "{} ({encoding} length, not minimal: RFC 6455 §5.2 requires the shortest encoding)",
                    h.payload_len
                ),
            );
        }
    }

    /// Shows the (unmasked) payload: hex, text, close code.
    fn payload(
        &mut self,
        h: &FrameHeader,
        payload: &[u8],
        complete: bool,
        message: Option<(OpCode, usize, bool)>,
    ) {
        let shown = if complete { "" } else { " present" };
        if payload.is_empty() {
            self.line("payload", format!("empty{shown}"));
        } else if payload.len() <= 16 {
            self.line(
                "payload",
                format!("{} bytes{shown}: {}", payload.len(), hex(payload)),
            );
        } else {
            self.line("payload", format!("{} bytes{shown}:", payload.len()));
            for row in hexdump(payload) {
                let _ = writeln!(self.out, "            {row}");
            }
        }
        if h.opcode == OpCode::Close {
            if complete {
                self.close_payload(payload);
            }
            return;
        }
        let compressed = message.is_some_and(|(_, _, c)| c) && self.deflate;
        let text_message = message.is_some_and(|(op, _, _)| op == OpCode::Text);
        // Follow the UTF-8 of a fragmented text message frame by frame.
        let in_message =
            text_message && !compressed && (h.opcode == OpCode::Continuation || !h.fin);
        let fragment_state = in_message.then(|| match self.utf8.feed(payload) {
            Err(_) => "not valid UTF-8",
            Ok(()) if self.utf8.is_mid_code_point() => {
                "valid UTF-8 so far, ends inside a character"
            }
            Ok(()) => "valid UTF-8",
        });
        if payload.is_empty() {
            return;
        }
        if compressed {
            self.line("text", "compressed (inflated with the whole message)");
            return;
        }
        let validity = fragment_state.unwrap_or(match utf8::validate(payload) {
            Ok(()) => "valid UTF-8",
            Err(_) => "not valid UTF-8",
        });
        self.line("text", format!("{} ({validity})", quoted(payload)));
    }

    fn close_payload(&mut self, payload: &[u8]) {
        match CloseFrame::parse(Bytes::copy_from_slice(payload)) {
            Ok(None) => self.line("close", "no status code (reported as 1005)"),
            Ok(Some(f)) if f.reason().is_empty() => self.line("close", format!("code {}", f.code)),
            Ok(Some(f)) => self.line(
                "close",
                format!("code {}, reason {}", f.code, quoted(f.reason().as_bytes())),
            ),
            Err(CloseParseError::OneByte) => {
                self.line("close", "a 1-byte payload: a close code needs 2 bytes");
            }
            Err(CloseParseError::InvalidCode(code)) => {
                let name = ferrows_proto::CloseCode(code)
                    .name()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                self.line(
                    "close",
                    format!("code {code}{name}: not allowed in a close frame"),
                );
            }
            Err(CloseParseError::InvalidUtf8) => {
                let code = payload
                    .first()
                    .zip(payload.get(1))
                    .map_or(0, |(a, b)| u16::from_be_bytes([*a, *b]));
                self.line(
                    "close",
                    format!(
                        "code {}, reason {} is not valid UTF-8",
                        ferrows_proto::CloseCode(code),
                        quoted(payload.get(2..).unwrap_or_default())
                    ),
                );
            }
        }
    }

    /// Runs the frame through a receiving [`Decoder`] for its verdict, and
    /// shows messages that span frames or were compressed.
    fn check(
        &mut self,
        index: usize,
        h: &FrameHeader,
        frame: &[u8],
        message: Option<(OpCode, usize, bool)>,
    ) {
        if h.opcode.is_data() && !h.opcode.is_reserved() && h.fin {
            self.message = None;
        }
        let mut buf = BytesMut::from(frame);
        loop {
            match self.decoder.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(item)) => self.delivered(index, item, message),
                Err(e) => {
                    self.violation(h, &e);
                    if self.failed_at.is_none() {
                        self.failed_at = Some(index);
                    }
                    self.decoder = new_decoder(self.role, self.deflate, self.inflate);
                    self.message = None;
                    break;
                }
            }
        }
    }

    fn delivered(&mut self, index: usize, item: Incoming, message: Option<(OpCode, usize, bool)>) {
        let (first, compressed) = message.map_or((index, false), |(_, first, c)| (first, c));
        let (kind, data) = match item {
            Incoming::Text(t) => ("text", t.into_bytes()),
            Incoming::Binary(b) => ("binary", b),
            _ => return,
        };
        self.messages += 1;
        if first == index && !compressed {
            return;
        }
        let frames = if first == index {
            format!("frame {index}")
        } else {
            format!("frames {first}-{index}")
        };
        let inflated = if compressed { ", inflated" } else { "" };
        self.line(
            "message",
            format!("{kind}, {} bytes{inflated}, from {frames}:", data.len()),
        );
        if kind == "text" {
            let _ = writeln!(self.out, "            {}", quoted(&data));
        } else {
            for row in hexdump(&data) {
                let _ = writeln!(self.out, "            {row}");
            }
        }
    }

    fn violation(&mut self, h: &FrameHeader, e: &ProtocolError) {
        let code = e.close_code();
        let text = e.to_string();
        let suffix = format!(" (close code {})", code.0);
        let what = text.strip_suffix(&suffix).unwrap_or(&text);
        let hint = match e {
            ProtocolError::ReservedBits if h.rsv1 && !self.deflate => {
                " (no extension defines RSV1 unless permessage-deflate was negotiated: then pass --deflate)"
            }
            ProtocolError::UnmaskedFrame => " (a client must mask every frame it sends)",
            ProtocolError::MaskedFrame => " (a server must not mask the frames it sends)",
            ProtocolError::ControlFrameTooLong(_) => " (RFC 6455 §5.5: at most 125 bytes)",
            ProtocolError::FragmentedControlFrame => {
                " (RFC 6455 §5.5: control frames cannot be fragmented)"
            }
            ProtocolError::NonMinimalLength { .. } => {
                " (RFC 6455 §5.2: the minimal number of bytes must be used; ferrows accepts it only with Limits::allow_non_minimal_lengths)"
            }
            _ => "",
        };
        self.problem(format!(
            "{what}{hint}: a receiver fails the connection with close code {code}"
        ));
    }
}

/// A capture time as seconds since the epoch, microseconds shown.
pub(crate) fn clock_text(t: Duration) -> String {
    format!("{}.{:06}", t.as_secs(), t.subsec_micros())
}

/// `1 byte`, `2 bytes`.
pub(crate) fn bytes(n: usize) -> String {
    if n == 1 {
        "1 byte".to_owned()
    } else {
        format!("{n} bytes")
    }
}

fn opcode_text(op: OpCode) -> String {
    match op {
        OpCode::Reserved(bits) if op.is_control() => {
            format!("0x{bits:X} reserved (control)")
        }
        OpCode::Reserved(bits) => format!("0x{bits:X} reserved (non-control)"),
        op => format!("0x{:X} {}", op.as_u8(), op.name()),
    }
}

/// `xxd`-style rows: offset, 16 bytes of hex, the printable ASCII.
fn hexdump(bytes: &[u8]) -> Vec<String> {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(i, row)| {
            let ascii: String = row
                .iter()
                .map(|b| {
                    if b.is_ascii_graphic() || *b == b' ' {
                        char::from(*b)
                    } else {
                        '.'
                    }
                })
                .collect();
            format!(
                "{:04x}  {:<47}  {}",
                i * 16,
                hex(row),
                escape_controls(&ascii)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn hexes(s: &[&str]) -> Result<Vec<u8>, String> {
        let sources: Vec<(String, String)> = s
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("argument {}", i + 1), (*t).to_owned()))
            .collect();
        parse_hex(&sources)
    }

    #[test]
    fn hex_forms() {
        let hello = vec![0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(
            hexes(&["81", "05", "48", "65", "6c", "6c", "6f"]).unwrap(),
            hello
        );
        assert_eq!(hexes(&["810548656c6c6f"]).unwrap(), hello);
        assert_eq!(hexes(&["0x81,0x05,0x48:65:6C 6c\t6f"]).unwrap(), hello);
        assert_eq!(hexes(&["0x5"]).unwrap(), vec![5]);
        assert_eq!(
            hexes(&["81", "0g"]).unwrap_err(),
            "\"g\" is not a hex digit (argument 2, character 2)"
        );
        assert_eq!(
            hexes(&["810"]).unwrap_err(),
            "\"810\" has an odd number of digits (3): is one missing? (argument 1, character 1)"
        );
    }

    #[test]
    fn accept_key_warnings() {
        let (a, w) = compute_accept("dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(a, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(w.is_empty());
        let (a, w) = compute_accept(" dGhlIHNhbXBsZSBub25jZQ==\t");
        assert_eq!(a, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(w.len(), 1);
        let (_, w) = compute_accept("dGhlIHNhbXBsZQ==");
        assert!(w[0].contains("decodes to 10 bytes, not 16"), "{w:?}");
        let (_, w) = compute_accept("not base64!");
        assert!(w[0].contains("not valid base64"), "{w:?}");
    }

    #[test]
    fn truncated_header_names_the_field() {
        let r = decode(&[0x82, 0x7F], Some(RoleArg::Client), false);
        assert!(
            r.text
                .contains("truncated header: 64-bit length needs 8 more bytes\n"),
            "{}",
            r.text
        );
        let r = decode(&[0x82, 0xFE, 0x01], Some(RoleArg::Server), false);
        assert!(
            r.text.contains(
                "truncated header: 16-bit length needs 1 more bytes, then 4 for the masking key"
            ),
            "{}",
            r.text
        );
        let r = decode(&[0x81, 0x85, 0x37], Some(RoleArg::Server), false);
        assert!(
            r.text
                .contains("truncated header: the masking key needs 3 more bytes"),
            "{}",
            r.text
        );
        let r = decode(&[0x81], None, false);
        assert!(
            r.text
                .contains("truncated header: 1 byte, a frame header needs at least 2")
        );
        assert_eq!(r.problems, 1);
    }

    #[test]
    fn violations_carry_the_close_code() {
        // A ping of 126 bytes (16-bit length), unmasked to a client.
        let mut frame = vec![0x89, 0x7E, 0x00, 0x7E];
        frame.extend_from_slice(&[b'x'; 126]);
        let r = decode(&frame, Some(RoleArg::Client), false);
        assert!(
            r.text.contains("problem:  control frame of 126 bytes (at most 125 allowed) (RFC 6455 §5.5: at most 125 bytes): a receiver fails the connection with close code 1002 (protocol error)"),
            "{}",
            r.text
        );
        // A close with code 1005, which may not be sent.
        let r = decode(&[0x88, 0x02, 0x03, 0xED], Some(RoleArg::Client), false);
        assert!(
            r.text
                .contains("code 1005 (no status received): not allowed in a close frame"),
            "{}",
            r.text
        );
        assert!(
            r.text.contains(
                "invalid close code 1005: a receiver fails the connection with close code 1002"
            ),
            "{}",
            r.text
        );
    }

    #[test]
    fn fragmented_text_is_assembled() {
        // RFC 6455 §5.7: a fragmented unmasked text message "Hel" + "lo".
        let bytes = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
        let r = decode(&bytes, None, false);
        assert_eq!(r.problems, 0, "{}", r.text);
        assert!(
            r.text
                .contains("message   text, 5 bytes, from frames 1-2:\n            \"Hello\"\n"),
            "{}",
            r.text
        );
        assert!(
            r.text.ends_with("2 frames, 9 bytes: well-formed\n"),
            "{}",
            r.text
        );
    }
}
