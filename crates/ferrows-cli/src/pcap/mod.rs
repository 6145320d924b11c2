//! Captures: `ferrows decode --pcap FILE` reads a pcap or pcapng file
//! (tcpdump's, Wireshark's or ours), reassembles its TCP connections and
//! explains each WebSocket connection in it; [`Capture`] records a
//! connection's plaintext as a pcapng file Wireshark opens (`--pcap` on
//! `connect` and `probe`).

mod analyze;
mod capture;
pub(crate) mod read;
pub(crate) mod tcp;

use std::fs::File;
use std::io::{BufReader, Read, Write as _};
use std::process::ExitCode;

use serde_json::json;

pub(crate) use capture::{Capture, Recorder};

/// `ferrows decode --pcap PATH` (`-`: standard input), as text or JSON.
/// Exit status 1 if the file is unreadable or truncated, or a connection
/// in it has a problem.
pub(crate) fn decode_pcap(path: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let input: Box<dyn Read> = if path == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        match File::open(path) {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("error: cannot open {path}: {e}");
                return Ok(ExitCode::from(1));
            }
        }
    };
    let result = decode_reader(BufReader::new(input), tcp::Limits::default());
    let out = match result {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {path}: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let mut stdout = std::io::stdout().lock();
    if as_json {
        let _ = writeln!(stdout, "{}", out.json);
    } else {
        let _ = stdout.write_all(out.text.as_bytes());
    }
    let _ = stdout.flush();
    if let Some(e) = &out.error {
        eprintln!("error: {path}: {e}");
    }
    Ok(if out.error.is_some() || out.problems > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A whole capture explained.
pub(crate) struct Decoded {
    pub(crate) text: String,
    pub(crate) json: serde_json::Value,
    pub(crate) problems: usize,
    /// The file ended early or is corrupt past some packet: what was read
    /// before is explained all the same.
    pub(crate) error: Option<String>,
}

/// Reads and explains a capture.
pub(crate) fn decode_reader(
    input: impl Read,
    limits: tcp::Limits,
) -> Result<Decoded, read::ReadError> {
    let mut reader = read::CaptureReader::open(input)?;
    let mut reassembler = tcp::Reassembler::new(limits);
    let mut skipped = 0u64;
    let mut skipped_reasons: Vec<(String, u64, u64)> = Vec::new();
    let mut error = None;
    while let Some(item) = reader.next_item() {
        match item {
            Ok(read::Item::Segment(seg)) => reassembler.segment(&seg),
            Ok(read::Item::Skipped { packet, why }) => {
                skipped += 1;
                if let Some((_, n, _)) = skipped_reasons.iter_mut().find(|(w, _, _)| *w == why) {
                    *n += 1;
                } else if skipped_reasons.len() < 16 {
                    skipped_reasons.push((why, 1, packet));
                }
            }
            Err(e) => error = Some(e.0),
        }
    }
    let packets = reader.packets();
    let (connections, ignored) = reassembler.finish();
    let mut text = format!(
        "{} capture: {packets} packets, {} TCP connections",
        reader.format().name(),
        connections.len()
    );
    if skipped > 0 {
        text.push_str(&format!(", {skipped} packets not TCP or not read"));
    }
    text.push('\n');
    for (why, n, first) in &skipped_reasons {
        text.push_str(&format!(
            "  skipped {n} (the first is packet {first}): {why}\n"
        ));
    }
    if ignored > 0 {
        text.push_str(&format!(
            "  {ignored} segments of connections past the limit of {} were ignored\n",
            limits.max_connections
        ));
    }
    let mut problems = 0;
    let mut conns = Vec::new();
    let mut websockets = 0;
    let mut others = Vec::new();
    for (i, conn) in connections.iter().enumerate() {
        let report = analyze::analyze(i + 1, conn);
        problems += report.problems;
        if report.websocket {
            websockets += 1;
            text.push('\n');
            text.push_str(&report.text);
        } else {
            others.push(report.text);
        }
        conns.push(report.json);
    }
    if !others.is_empty() {
        text.push_str(&format!(
            "\n{} TCP connections without a WebSocket upgrade:\n",
            others.len()
        ));
        for o in others {
            for line in o.lines() {
                text.push_str(&format!("  {line}\n"));
            }
        }
    }
    let verdict = match problems {
        0 => "well-formed".to_owned(),
        1 => "1 problem".to_owned(),
        n => format!("{n} problems"),
    };
    text.push_str(&format!(
        "\n{websockets} WebSocket connections of {}: {verdict}\n",
        connections.len()
    ));
    if let Some(e) = &error {
        text.push_str(&format!("error: {e}\n"));
    }
    let json = json!({
        "format": reader.format().name(),
        "packets": packets,
        "skipped_packets": skipped,
        "ignored_segments": ignored,
        "connections": conns,
        "websocket_connections": websockets,
        "problems": problems,
        "error": error,
    });
    Ok(Decoded {
        text,
        json,
        problems,
        error,
    })
}

/// `--pcap FILE` and `--pcap-max-bytes N`, for the commands that record.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct PcapArgs {
    /// Record the plaintext of every connection (the HTTP upgrade and
    /// every frame, both directions; for wss:// the bytes inside TLS) to
    /// FILE as pcapng, for Wireshark: synthetic TCP/IP flows between the
    /// real addresses and ports.
    #[arg(long = "pcap", value_name = "FILE")]
    pub(crate) path: Option<std::path::PathBuf>,
    /// Stop recording (with a log line) once the file would pass N bytes.
    #[arg(long = "pcap-max-bytes", value_name = "N", default_value_t = 100 << 20, requires = "path")]
    pub(crate) max_bytes: u64,
}

impl PcapArgs {
    /// The recorder the flags ask for; `client_side`: this end opens the
    /// connections.
    pub(crate) fn recorder(&self, client_side: bool) -> anyhow::Result<Option<Recorder>> {
        self.path
            .as_deref()
            .map(|p| {
                Recorder::create(p, self.max_bytes, client_side)
                    .map_err(|e| anyhow::anyhow!("--pcap {}: {e}", p.display()))
            })
            .transpose()
    }
}

/// Wraps a connected stream for recording (a pass-through without a
/// recorder).
pub(crate) fn wrap_client(
    stream: ferrows::MaybeTlsStream<tokio::net::TcpStream>,
    recorder: Option<&Recorder>,
) -> Capture<ferrows::MaybeTlsStream<tokio::net::TcpStream>> {
    let tcp = stream.get_ref();
    let unspecified = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    let peer = tcp.peer_addr().unwrap_or(unspecified);
    let local = tcp.local_addr().unwrap_or(unspecified);
    Capture::wrap(stream, recorder, peer, local)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// The fuzz seeds: a pcapng written by `connect --pcap --compress`
    /// and a pcap of `tcpdump -i lo` (Ethernet).
    const SEEDS: [(&str, &[u8]); 2] = [
        (
            "pcapng",
            include_bytes!("../../../../fuzz/seeds/pcap_reader/ferrows-connect-deflate.pcapng"),
        ),
        (
            "pcap",
            include_bytes!("../../../../fuzz/seeds/pcap_reader/tcpdump-lo-ethernet.pcap"),
        ),
    ];

    #[test]
    fn seeds_decode_cleanly() {
        for (name, bytes) in SEEDS {
            let d = decode_reader(bytes, tcp::Limits::default()).unwrap();
            assert_eq!(d.error, None, "{name}");
            assert_eq!(d.problems, 0, "{name}: {}", d.text);
            assert_eq!(d.json["websocket_connections"], 1, "{name}");
        }
    }

    /// Every truncation, and bytes flipped all over: an error or a report,
    /// never a panic.
    #[test]
    fn truncated_and_corrupted_captures_never_panic() {
        for (name, bytes) in SEEDS {
            // Every length through the headers and first packets, then a
            // sample (each run reads through an 8 MB buffer).
            let lens = (0..bytes.len()).filter(|l| *l < 300 || l % 11 == 0);
            for len in lens {
                match decode_reader(&bytes[..len], tcp::Limits::default()) {
                    Err(e) => assert!(len < 40, "{name} cut at {len}: {e}"),
                    Ok(d) => assert!(len >= 4, "{name} cut at {len}: {}", d.text),
                }
            }
            // A deterministic walk of single-byte changes.
            let mut x: u32 = 0x1234_5678;
            for _ in 0..500 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let mut copy = bytes.to_vec();
                let at = x as usize % copy.len();
                copy[at] ^= (x >> 24) as u8 | 1;
                let _ = decode_reader(&copy[..], tcp::Limits::default());
            }
        }
    }

    /// A pcap (raw IP) of one connection: the handshake, then the server's
    /// frames in segments; `drop` segments are left out, `twice` sent again.
    fn handmade(segments: &[&[u8]], drop: &[usize], twice: &[usize]) -> Vec<u8> {
        handmade_link(pcap_file::DataLink::RAW, &[], segments, drop, twice, 0)
    }

    /// Like [`handmade`], each IP packet after a link-layer `prefix`.
    fn handmade_link(
        link: pcap_file::DataLink,
        prefix: &[u8],
        segments: &[&[u8]],
        drop: &[usize],
        twice: &[usize],
        skip_first: u64,
    ) -> Vec<u8> {
        use capture::{Flags, packet};
        use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
        let header = PcapHeader {
            datalink: link,
            ..PcapHeader::default()
        };
        let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
        let c: std::net::SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let s: std::net::SocketAddr = "10.0.0.2:8080".parse().unwrap();
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let req = format!(
            "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let resp = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        let mut t = 0u64;
        let mut put = |ip: Vec<u8>| {
            let mut data = prefix.to_vec();
            data.extend(ip);
            t += 1;
            if t <= skip_first {
                return;
            }
            let p =
                PcapPacket::new_owned(std::time::Duration::from_millis(t), data.len() as u32, data);
            w.write_packet(&p).unwrap();
        };
        put(packet(c, s, 100, None, Flags::Syn, &[]));
        put(packet(s, c, 500, Some(101), Flags::Syn, &[]));
        put(packet(c, s, 101, Some(501), Flags::Psh, req.as_bytes()));
        put(packet(
            s,
            c,
            501,
            Some(101 + req.len() as u32),
            Flags::Psh,
            resp.as_bytes(),
        ));
        let mut seq = 501 + resp.len() as u32;
        for (i, seg) in segments.iter().enumerate() {
            if !drop.contains(&i) {
                put(packet(s, c, seq, Some(101), Flags::Psh, seg));
            }
            if twice.contains(&i) {
                put(packet(s, c, seq, Some(101), Flags::Psh, seg));
            }
            seq = seq.wrapping_add(seg.len() as u32);
        }
        w.into_writer()
    }

    #[test]
    fn frames_resume_after_a_gap_and_retransmissions_are_counted() {
        let text = |s: &str| {
            let mut f = vec![0x81, s.len() as u8];
            f.extend_from_slice(s.as_bytes());
            f
        };
        // Segment 1 holds the end of "second" and the start of "third":
        // lost. Segment 0 is sent twice.
        let mut second_third = text("second");
        second_third.extend(text("third"));
        let (lost, rest) = second_third.split_at(5);
        let mut tail = rest.to_vec();
        tail.extend(text("fourth"));
        tail.extend(text("fifth"));
        let first = text("first");
        let bytes = handmade(&[&first, lost, &tail], &[1], &[0]);
        let d = decode_reader(&bytes[..], tcp::Limits::default()).unwrap();
        assert_eq!(d.json["websocket_connections"], 1, "{}", d.text);
        // "first" is bytes 129-135; then 5 bytes are lost.
        assert!(
            d.text.contains("gap: 5 bytes missing at byte 136"),
            "{}",
            d.text
        );
        // The rest of "second" (3 bytes) is skipped: "third" starts where
        // headers line up.
        assert!(
            d.text
                .contains("frames resume at byte 144 (3 bytes skipped"),
            "{}",
            d.text
        );
        let conn = &d.json["connections"][0];
        let frames: Vec<u64> = conn["directions"][1]["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["payload_len"].as_u64().unwrap())
            .collect();
        assert_eq!(frames, vec![5, 5, 6, 5], "{}", d.text);
        assert_eq!(conn["directions"][1]["retransmissions"], 1);
        assert!(
            d.text.contains(
                "1 gaps (5 bytes missing), 1 retransmitted segments (7 bytes seen twice)"
            ),
            "{}",
            d.text
        );
    }

    #[test]
    fn every_link_type_is_read() {
        use pcap_file::DataLink;
        let mut eth = vec![0u8; 12];
        eth.extend([0x08, 0x00]);
        let mut sll = vec![0u8; 14];
        sll.extend([0x08, 0x00]);
        let mut sll2 = vec![0x08, 0x00];
        sll2.extend([0u8; 18]);
        let cases: [(DataLink, Vec<u8>); 7] = [
            (DataLink::ETHERNET, eth),
            (DataLink::LINUX_SLL, sll),
            (DataLink::LINUX_SLL2, sll2),
            (DataLink::NULL, 2u32.to_le_bytes().to_vec()),
            (DataLink::LOOP, 2u32.to_be_bytes().to_vec()),
            (DataLink::RAW, Vec::new()),
            (DataLink::IPV4, Vec::new()),
        ];
        for (link, prefix) in cases {
            let bytes = handmade_link(link, &prefix, &[&[0x81, 0x02, b'h', b'i']], &[], &[], 0);
            let d = decode_reader(&bytes[..], tcp::Limits::default()).unwrap();
            assert_eq!(d.json["websocket_connections"], 1, "{link:?}: {}", d.text);
            assert_eq!(d.problems, 0, "{link:?}: {}", d.text);
            assert!(d.text.contains("text      \"hi\""), "{link:?}: {}", d.text);
        }
        // A link type without IP is skipped with its name, not an error.
        let bytes = handmade_link(DataLink::USB_LINUX, &[], &[b"x"], &[], &[], 0);
        let d = decode_reader(&bytes[..], tcp::Limits::default()).unwrap();
        assert!(d.text.contains("is not supported"), "{}", d.text);
    }

    #[test]
    fn a_capture_started_after_the_handshake_says_so() {
        let frame: &[u8] = &[0x81, 0x02, b'h', b'i'];
        // Without the SYNs, the request and the response.
        let bytes = handmade_link(pcap_file::DataLink::RAW, &[], &[frame], &[], &[], 4);
        let d = decode_reader(&bytes[..], tcp::Limits::default()).unwrap();
        assert!(
            d.text
                .contains("the capture starts after the connection was opened"),
            "{}",
            d.text
        );
        assert_eq!(d.json["websocket_connections"], 0);
    }

    #[test]
    fn tight_limits_still_report() {
        let limits = tcp::Limits {
            max_connections: 1,
            max_bytes_per_direction: 40,
            reorder_window: 16,
            max_parked_bytes: 16,
        };
        let d = decode_reader(SEEDS[1].1, limits).unwrap();
        // The handshake does not fit in 40 bytes: reported, not decoded.
        assert!(
            d.text.contains("not kept (past the per-direction cap)")
                || d.text.contains("not a complete HTTP request head"),
            "{}",
            d.text
        );
    }
}
