//! From reassembled TCP connections to WebSocket explanations: the
//! opening handshake (with the faults `probe` names), then each
//! direction's frames through `decode`'s explainer.

use std::fmt::Write as _;
use std::time::Duration;

use ferrows_proto::Role;
use ferrows_proto::extensions;
use ferrows_proto::frame::{FrameHeader, HeaderDecode};
use ferrows_proto::handshake::{
    HandshakeLimits, accept_key, diagnose_accept, parse_request, parse_response,
};
use serde_json::{Map, Value, json};

use super::tcp::{Chunk, Connection, Direction};
use crate::decode::{FrameInfo, bytes, clock_text, walk_frames};
use crate::probe::head_lines;
use crate::trace::{escape_controls, quoted};

/// How far after a gap a frame boundary is looked for.
const RESYNC_SCAN: usize = 64 * 1024;

/// One connection's explanation.
pub(crate) struct Report {
    pub(crate) text: String,
    pub(crate) json: Value,
    pub(crate) problems: usize,
    pub(crate) websocket: bool,
}

/// The negotiated permessage-deflate parameters.
#[derive(Debug, Clone, Copy)]
struct Deflate {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: u8,
    client_max_window_bits: u8,
}

fn deflate_from(value: &str) -> Option<Deflate> {
    let offers = extensions::parse(value).ok()?;
    let pmd = offers
        .into_iter()
        .find(|o| o.name.eq_ignore_ascii_case("permessage-deflate"))?;
    let mut d = Deflate {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    for (name, v) in &pmd.params {
        let bits = v
            .as_deref()
            .and_then(|v| v.trim_matches('"').parse::<u8>().ok())
            .filter(|b| (8..=15).contains(b));
        match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => d.server_no_context_takeover = true,
            "client_no_context_takeover" => d.client_no_context_takeover = true,
            "server_max_window_bits" => d.server_max_window_bits = bits.unwrap_or(15),
            "client_max_window_bits" => d.client_max_window_bits = bits.unwrap_or(15),
            _ => {}
        }
    }
    Some(d)
}

/// A fault of the handshake, named like `probe` names it.
struct Fault {
    name: &'static str,
    detail: String,
}

/// What one direction's frames came to.
#[derive(Default)]
struct DirWalk {
    text: String,
    frames: Vec<FrameInfo>,
    issues: Vec<(usize, String)>,
    problems: usize,
    messages: usize,
    notes: Vec<String>,
}

/// Whether a frame header could start at `data[0]` on this direction.
fn plausible(data: &[u8], role: Role, deflate: bool) -> Option<usize> {
    let Ok(HeaderDecode::Complete(h, n)) = FrameHeader::decode(data) else {
        return None;
    };
    let ok = !h.rsv2
        && !h.rsv3
        && (!h.rsv1 || deflate)
        && !h.opcode.is_reserved()
        && h.mask.is_some() == (role == Role::Server)
        && (!h.opcode.is_control() || (h.fin && h.payload_len <= 125));
    let len = usize::try_from(h.payload_len).ok()?;
    ok.then_some(n.checked_add(len)?)
}

/// The first offset after a gap where frame headers line up: a header
/// whose frame ends where the next plausible header starts, or exactly
/// at the end of the data.
fn resync(data: &[u8], role: Role, deflate: bool) -> Option<usize> {
    (0..data.len().min(RESYNC_SCAN)).find(|&p| {
        let Some(rest) = data.get(p..) else {
            return false;
        };
        let Some(len) = plausible(rest, role, deflate) else {
            return false;
        };
        match rest.len().cmp(&len) {
            std::cmp::Ordering::Equal => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Greater => rest
                .get(len..)
                .is_some_and(|next| plausible(next, role, deflate).is_some()),
        }
    })
}

/// Walks a direction's chunks, starting `skip` bytes into the first.
fn walk_direction(
    dir: &Direction,
    skip: usize,
    role: Role,
    inflate: Option<(u8, bool)>,
) -> DirWalk {
    let mut out = DirWalk::default();
    let mut next_index = 1;
    let mut gaps = dir.gaps.iter();
    for (i, chunk) in dir.chunks.iter().enumerate() {
        let Chunk {
            offset,
            data,
            times,
        } = chunk;
        let start = if i == 0 {
            skip
        } else {
            if let Some(gap) = gaps.next() {
                let note = format!(
                    "gap: {} missing at byte {} (the capture lost them)",
                    bytes(usize::try_from(gap.len).unwrap_or(usize::MAX)),
                    gap.offset
                );
                let _ = writeln!(out.text, "\n{note}");
                out.notes.push(note);
            }
            match resync(data, role, inflate.is_some()) {
                Some(p) => {
                    let note = format!(
                        "frames resume at byte {} ({} skipped to the first frame boundary where headers line up)",
                        offset + p as u64,
                        bytes(p)
                    );
                    let _ = writeln!(out.text, "{note}");
                    out.notes.push(note);
                    p
                }
                None => {
                    let note = format!(
                        "no frame boundary found in the {} after the gap: not decoded",
                        bytes(data.len())
                    );
                    let _ = writeln!(out.text, "{note}");
                    out.notes.push(note);
                    continue;
                }
            }
        };
        let Some(rest) = data.get(start..) else {
            continue;
        };
        if rest.is_empty() {
            continue;
        }
        let w = walk_frames(
            rest,
            role,
            inflate,
            offset + start as u64,
            times,
            next_index,
        );
        next_index += w.frames.len().max(1);
        out.text.push_str(&w.text);
        out.frames.extend(w.frames);
        out.issues.extend(w.issues);
        out.problems += w.problems;
        out.messages += w.messages;
    }
    if dir.bytes_not_kept > 0 {
        let note = format!(
            "{} not kept (past the per-direction cap) and not decoded",
            bytes(usize::try_from(dir.bytes_not_kept).unwrap_or(usize::MAX))
        );
        let _ = writeln!(out.text, "\n{note}");
        out.notes.push(note);
    }
    out
}

fn opcode_name(op: u8) -> &'static str {
    match op {
        0 => "continuation",
        1 => "text",
        2 => "binary",
        8 => "close",
        9 => "ping",
        10 => "pong",
        _ => "reserved",
    }
}

fn frame_json(f: &FrameInfo, problems: &[(usize, String)]) -> Value {
    let issues: Vec<&String> = problems
        .iter()
        .filter(|(i, _)| *i == f.index)
        .map(|(_, t)| t)
        .collect();
    json!({
        "index": f.index,
        "offset": f.offset,
        "time": f.time.map(|t| t.as_secs_f64()),
        "fin": f.fin,
        "rsv1": f.rsv1,
        "opcode": f.opcode,
        "type": opcode_name(f.opcode),
        "masked": f.masked,
        "payload_len": f.payload_len,
        "complete": f.complete,
        "close_code": f.close_code,
        "problems": issues,
    })
}

/// A direction's one-line summary.
fn summary(label: &str, dir: &Direction, w: &DirWalk) -> String {
    let mut counts: Vec<(u8, usize)> = Vec::new();
    for f in &w.frames {
        match counts.iter_mut().find(|(op, _)| *op == f.opcode) {
            Some((_, n)) => *n += 1,
            None => counts.push((f.opcode, 1)),
        }
    }
    counts.sort_unstable();
    let kinds: Vec<String> = counts
        .iter()
        .map(|(op, n)| format!("{n} {}", opcode_name(*op)))
        .collect();
    let mut s = format!(
        "{label}: {} in {} segments, {} frames ({}), {} messages",
        bytes(usize::try_from(dir.bytes).unwrap_or(usize::MAX)),
        dir.segments,
        w.frames.len(),
        if kinds.is_empty() {
            "none".to_owned()
        } else {
            kinds.join(", ")
        },
        w.messages
    );
    if let Some(code) = w.frames.iter().find_map(|f| f.close_code) {
        let _ = write!(s, ", closed with {}", ferrows_proto::CloseCode(code));
    }
    if !dir.gaps.is_empty() {
        let missing: u64 = dir.gaps.iter().map(|g| g.len).sum();
        let _ = write!(s, ", {} gaps ({missing} bytes missing)", dir.gaps.len());
    }
    if dir.retransmissions > 0 || dir.retransmitted_bytes > 0 {
        let _ = write!(
            s,
            ", {} retransmitted segments ({} bytes seen twice)",
            dir.retransmissions, dir.retransmitted_bytes
        );
    }
    if dir.rst {
        s.push_str(", reset (RST)");
    } else if dir.fin {
        s.push_str(", FIN");
    }
    let _ = write!(
        s,
        ": {}",
        match w.problems {
            0 => "well-formed".to_owned(),
            1 => "1 problem".to_owned(),
            n => format!("{n} problems"),
        }
    );
    s
}

fn dir_json(from: &str, to: &str, dir: &Direction, w: &DirWalk) -> Value {
    json!({
        "from": from,
        "to": to,
        "bytes": dir.bytes,
        "segments": dir.segments,
        "bytes_not_kept": dir.bytes_not_kept,
        "gaps": dir.gaps.iter().map(|g| json!({"offset": g.offset, "len": g.len})).collect::<Vec<_>>(),
        "retransmissions": dir.retransmissions,
        "retransmitted_bytes": dir.retransmitted_bytes,
        "fin": dir.fin,
        "rst": dir.rst,
        "started_mid_stream": dir.started_mid_stream,
        "messages": w.messages,
        "problems": w.problems,
        "notes": w.notes,
        "frames": w.frames.iter().map(|f| frame_json(f, &w.issues)).collect::<Vec<_>>(),
    })
}

/// The faults of a response head, as `probe` names them.
fn head_faults(head: &[u8], key: Option<&str>, faults: &mut Vec<Fault>) {
    let lines = head_lines(head);
    let bare: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(&b'\n'))
        .map(|(i, l)| {
            let text = String::from_utf8_lossy(l);
            let name = text.split([':', '\n']).next().unwrap_or_default();
            format!("line {} ({})", i + 1, escape_controls(name))
        })
        .collect();
    if !bare.is_empty() {
        faults.push(Fault {
            name: "line endings",
            detail: format!(
                "bare LF instead of CRLF in {}: HTTP requires CRLF (RFC 9112 §2.2); strict clients refuse it",
                bare.join(", ")
            ),
        });
    }
    let Some(key) = key else {
        return;
    };
    let expected = accept_key(key.trim().as_bytes());
    let values: Vec<String> = lines
        .iter()
        .flat_map(|l| l.split(|b| *b == b'\r').take(1))
        .filter_map(|l| {
            let colon = l.iter().position(|b| *b == b':')?;
            let (name, value) = l.split_at(colon);
            name.eq_ignore_ascii_case(b"sec-websocket-accept").then(|| {
                let value = String::from_utf8_lossy(value.get(1..).unwrap_or_default());
                value.trim_matches([' ', '\t']).to_owned()
            })
        })
        .collect();
    match values.as_slice() {
        [] => faults.push(Fault {
            name: "accept",
            detail: "missing Sec-WebSocket-Accept".to_owned(),
        }),
        [got] if *got == expected => {}
        [got] => {
            let mut detail = format!(
                "Sec-WebSocket-Accept is {}, expected {}",
                quoted(got.as_bytes()),
                quoted(expected.as_bytes())
            );
            if let Some(why) = diagnose_accept(&expected, got) {
                let _ = write!(detail, ": {why}");
            }
            faults.push(Fault {
                name: "accept",
                detail,
            });
        }
        many => faults.push(Fault {
            name: "accept",
            detail: format!("{} Sec-WebSocket-Accept headers, one expected", many.len()),
        }),
    }
}

/// The first bytes of a direction, if the capture has its start.
fn first(d: &Direction) -> Option<&[u8]> {
    d.chunks
        .first()
        .filter(|c| c.offset == 0)
        .map(|c| c.data.as_slice())
}

fn addr_text(a: std::net::SocketAddr) -> String {
    a.to_string()
}

/// Explains connection number `n`.
pub(crate) fn analyze(n: usize, conn: &Connection) -> Report {
    let starts_get = |d: &Direction| {
        d.chunks
            .first()
            .is_some_and(|c| c.offset == 0 && c.data.starts_with(b"GET "))
    };
    let [d0, d1] = &conn.dirs;
    let client = conn
        .opener
        .unwrap_or_else(|| usize::from(!starts_get(d0) && starts_get(d1)));
    let (caddr, saddr, cdir, sdir) = if client == 0 {
        (conn.a, conn.b, d0, d1)
    } else {
        (conn.b, conn.a, d1, d0)
    };
    let mut text = String::new();
    let duration = conn.last_time.saturating_sub(conn.first_time);
    let _ = writeln!(
        text,
        "=== connection {n}: client {} -> server {} (from packet {}, time {}, {:.3} s)",
        addr_text(caddr),
        addr_text(saddr),
        conn.first_packet,
        clock_text(conn.first_time),
        duration.as_secs_f64()
    );
    let mut json = Map::new();
    json.insert("index".into(), json!(n));
    json.insert("client".into(), json!(addr_text(caddr)));
    json.insert("server".into(), json!(addr_text(saddr)));
    json.insert("first_packet".into(), json!(conn.first_packet));
    json.insert("start".into(), json!(conn.first_time.as_secs_f64()));
    json.insert("duration".into(), json!(duration.as_secs_f64()));
    json.insert("syn_seen".into(), json!(conn.opener.is_some()));
    let limits = HandshakeLimits::default();

    // The request.
    // Without the SYN the first bytes seen may be anywhere in the stream.
    let start = first(cdir).filter(|_| !cdir.started_mid_stream);
    let request = match start.map(|data| parse_request(data, &limits)) {
        Some(Ok(Some((req, len)))) => Some((req, len)),
        Some(Ok(None)) => {
            let note = "the client's first bytes are not a complete HTTP request head";
            let _ = writeln!(text, "{note}: not a WebSocket connection, or cut short");
            json.insert("note".into(), json!(note));
            None
        }
        Some(Err(e)) => {
            let note = format!("not HTTP from the client ({e})");
            let _ = writeln!(text, "{note}");
            json.insert("note".into(), json!(note));
            None
        }
        None => {
            let note = if cdir.started_mid_stream || conn.opener.is_none() {
                "the capture starts after the connection was opened: no handshake to read"
            } else {
                "the client sent nothing"
            };
            let _ = writeln!(text, "{note}");
            json.insert("note".into(), json!(note));
            None
        }
    };
    let Some((req, req_len)) = request else {
        json.insert("websocket".into(), json!(false));
        return Report {
            text,
            json: Value::Object(json),
            problems: 0,
            websocket: false,
        };
    };
    let _ = writeln!(
        text,
        "request:  {} {} ({})",
        escape_controls(req.method()),
        escape_controls(&ferrows::listener::redact_target(req.target())),
        bytes(req_len)
    );
    // Credentials (`?token=`, Authorization) are redacted here too.
    let header_json = |(n, v): (&str, &[u8])| {
        let secret = n.eq_ignore_ascii_case("authorization")
            || n.eq_ignore_ascii_case("proxy-authorization");
        let v = if secret {
            "[redacted]".into()
        } else {
            String::from_utf8_lossy(v)
        };
        json!([n, v])
    };
    json.insert(
        "request".into(),
        json!({
            "method": req.method(),
            "target": ferrows::listener::redact_target(req.target()),
            "head_len": req_len,
            "headers": req.headers().iter().map(header_json).collect::<Vec<_>>(),
        }),
    );
    if !req.headers().has_token("upgrade", "websocket") {
        let _ = writeln!(text, "no Upgrade: websocket in the request: plain HTTP");
        json.insert("websocket".into(), json!(false));
        return Report {
            text,
            json: Value::Object(json),
            problems: 0,
            websocket: false,
        };
    }
    json.insert("websocket".into(), json!(true));
    let mut problems = 0;
    let mut faults = Vec::new();
    let response = match first(sdir).map(|data| parse_response(data, &limits)) {
        Some(Ok(Some((resp, len)))) => Some((resp, len)),
        Some(Ok(None)) => {
            faults.push(Fault {
                name: "response",
                detail: "the server's response head is incomplete".to_owned(),
            });
            None
        }
        Some(Err(e)) => {
            faults.push(Fault {
                name: "response",
                detail: e.to_string(),
            });
            None
        }
        None => {
            faults.push(Fault {
                name: "response",
                detail: "no response from the server in the capture".to_owned(),
            });
            None
        }
    };
    let mut deflate = None;
    let mut resp_len = 0;
    if let Some((resp, len)) = &response {
        resp_len = *len;
        let _ = writeln!(
            text,
            "response: {} {} ({})",
            resp.status(),
            escape_controls(resp.reason()),
            bytes(*len)
        );
        let head = first(sdir).and_then(|d| d.get(..*len)).unwrap_or_default();
        if resp.status() == 101 {
            head_faults(head, req.header("sec-websocket-key"), &mut faults);
            for (name, token, check) in [
                ("Upgrade", "websocket", "upgrade"),
                ("Connection", "Upgrade", "connection"),
            ] {
                if !resp.headers().has_token(name, token) {
                    faults.push(Fault {
                        name: check,
                        detail: format!(
                            "missing \"{name}: {token}\": browsers refuse the connection"
                        ),
                    });
                }
            }
            let stray = first(sdir)
                .and_then(|d| d.get(*len..))
                .and_then(|r| r.first())
                .is_some_and(|b| *b == b'\r' || *b == b'\n');
            if stray {
                faults.push(Fault {
                    name: "after head",
                    detail: "a line ending follows the head (an extra line ending after the head?): a client fails the connection on it".to_owned(),
                });
            }
            deflate = resp
                .header("sec-websocket-extensions")
                .and_then(deflate_from);
        } else {
            faults.push(Fault {
                name: "status",
                detail: format!(
                    "the server answered {} {}, not 101 Switching Protocols",
                    resp.status(),
                    escape_controls(resp.reason())
                ),
            });
        }
        json.insert("response".into(), json!({
            "status": resp.status(),
            "reason": resp.reason(),
            "head_len": len,
            "headers": resp.headers().iter().map(|(n, v)| json!([n, String::from_utf8_lossy(v)])).collect::<Vec<_>>(),
        }));
    }
    if let Some(d) = deflate {
        let _ = writeln!(
            text,
            "permessage-deflate: client window {} bits{}, server window {} bits{}",
            d.client_max_window_bits,
            if d.client_no_context_takeover {
                ", no context takeover"
            } else {
                ""
            },
            d.server_max_window_bits,
            if d.server_no_context_takeover {
                ", no context takeover"
            } else {
                ""
            },
        );
    }
    json.insert(
        "deflate".into(),
        match deflate {
            Some(d) => json!({
                "server_no_context_takeover": d.server_no_context_takeover,
                "client_no_context_takeover": d.client_no_context_takeover,
                "server_max_window_bits": d.server_max_window_bits,
                "client_max_window_bits": d.client_max_window_bits,
            }),
            None => Value::Null,
        },
    );
    let upgraded = response.as_ref().is_some_and(|(r, _)| r.status() == 101);
    let cw = walk_direction(
        cdir,
        req_len,
        Role::Server,
        deflate.map(|d| (d.client_max_window_bits, d.client_no_context_takeover)),
    );
    let sw = if upgraded {
        walk_direction(
            sdir,
            resp_len,
            Role::Client,
            deflate.map(|d| (d.server_max_window_bits, d.server_no_context_takeover)),
        )
    } else {
        DirWalk::default()
    };
    // A server that reads and writes only the 7-bit length: its frames
    // stop lining up right after the client's first longer frame.
    let first_long = cw
        .frames
        .iter()
        .find(|f| f.payload_len > 125)
        .and_then(|f| f.time.map(|t| (f.index, t)));
    let first_bad = sw.issues.first().map(|(i, _)| {
        let pos = sw
            .frames
            .iter()
            .position(|f| f.index == *i)
            .unwrap_or(sw.frames.len());
        (pos, *i)
    });
    if let (Some((long_index, long_time)), Some((pos, bad_index))) = (first_long, first_bad) {
        let before = sw.frames.get(..pos).unwrap_or_default();
        let bad_time = sw
            .frames
            .get(pos)
            .and_then(|f| f.time)
            .unwrap_or(Duration::MAX);
        if bad_time >= long_time && before.iter().all(|f| f.payload_len <= 125) {
            faults.push(Fault {
                name: "7-bit-only lengths",
                detail: format!(
                    "the server's frames stop lining up at its frame {bad_index}, right after the client's frame {long_index}, its first with more than 125 bytes (a 16- or 64-bit length): a server that only reads the 7-bit length fails here (RFC 6455 §5.2)"
                ),
            });
        }
    }
    if !faults.is_empty() {
        let _ = writeln!(text, "faults:");
        for f in &faults {
            let _ = writeln!(
                text,
                "  FAIL  {:<18} {}",
                f.name,
                escape_controls(&f.detail)
            );
        }
    }
    problems += faults.len() + cw.problems + sw.problems;
    json.insert(
        "faults".into(),
        faults
            .iter()
            .map(|f| json!({"name": f.name, "detail": f.detail}))
            .collect::<Vec<_>>()
            .into(),
    );
    let c2s = format!("client -> server ({} -> {})", caddr, saddr);
    let s2c = format!("server -> client ({} -> {})", saddr, caddr);
    let _ = writeln!(text, "\n--- {c2s}: frames");
    text.push_str(&cw.text);
    if upgraded {
        let _ = writeln!(text, "\n--- {s2c}: frames");
        text.push_str(&sw.text);
    }
    let _ = writeln!(text, "\nsummary of connection {n}:");
    let _ = writeln!(text, "  {}", summary("client -> server", cdir, &cw));
    let _ = writeln!(text, "  {}", summary("server -> client", sdir, &sw));
    json.insert(
        "directions".into(),
        json!([
            dir_json(&addr_text(caddr), &addr_text(saddr), cdir, &cw),
            dir_json(&addr_text(saddr), &addr_text(caddr), sdir, &sw),
        ]),
    );
    json.insert("problems".into(), json!(problems));
    Report {
        text,
        json: Value::Object(json),
        problems,
        websocket: true,
    }
}
