//! Reading a capture file: pcap or pcapng (the `pcap-file` crate), the
//! link layers tcpdump and Wireshark write for IP traffic (Ethernet, Linux
//! cooked SLL and SLL2, raw IP, BSD loopback), and the IP and TCP headers
//! (`etherparse`). The result is a stream of TCP segments; what is not TCP
//! over IP is counted and skipped.
//!
//! This file uses only std, `pcap-file` and `etherparse`, so that the fuzz
//! target (fuzz/fuzz_targets/pcap_reader.rs) can include it as it is.

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use etherparse::{EtherType, NetSlice, SlicedPacket, TransportSlice};
use pcap_file::DataLink;
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::{Block, PcapNgReader};

/// One TCP segment from the capture.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    /// The packet's number in the capture (1-based, as Wireshark counts).
    pub(crate) packet: u64,
    /// The capture timestamp (since the Unix epoch).
    pub(crate) time: Duration,
    pub(crate) src: SocketAddr,
    pub(crate) dst: SocketAddr,
    pub(crate) seq: u32,
    /// The acknowledgment number, when the ACK flag is set.
    pub(crate) ack: Option<u32>,
    pub(crate) syn: bool,
    pub(crate) fin: bool,
    pub(crate) rst: bool,
    pub(crate) payload: Vec<u8>,
}

/// What the next packet of the capture was.
#[derive(Debug)]
pub(crate) enum Item {
    /// A TCP segment.
    Segment(Segment),
    /// A packet that is not TCP over IP (or is an IP fragment, or could not
    /// be parsed): skipped, with the reason.
    Skipped {
        /// The packet's number.
        packet: u64,
        /// Why it was skipped.
        why: String,
    },
}

/// The container format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Pcap,
    PcapNg,
}

impl Format {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Format::Pcap => "pcap",
            Format::PcapNg => "pcapng",
        }
    }
}

/// An unreadable capture: a clear message for the user.
#[derive(Debug)]
pub(crate) struct ReadError(pub(crate) String);

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReadError {}

/// One pcapng interface: its link type and clock.
#[derive(Debug, Clone, Copy)]
struct Interface {
    link: DataLink,
    /// Timestamp units per second.
    units_per_sec: u64,
}

enum Inner<R: Read> {
    Pcap(PcapReader<R>, DataLink),
    Ng(PcapNgReader<R>, Vec<Interface>),
}

/// Reads a capture packet by packet.
pub(crate) struct CaptureReader<R: Read> {
    inner: Inner<io::Chain<io::Cursor<[u8; 4]>, R>>,
    format: Format,
    packets: u64,
    done: bool,
}

const PCAPNG_MAGIC: [u8; 4] = [0x0A, 0x0D, 0x0D, 0x0A];

fn is_pcap_magic(m: [u8; 4]) -> bool {
    let le = u32::from_le_bytes(m);
    matches!(le, 0xA1B2_C3D4 | 0xD4C3_B2A1 | 0xA1B2_3C4D | 0x4D3C_B2A1)
}

impl<R: Read> CaptureReader<R> {
    /// Recognises the format from the first bytes and reads the file
    /// header.
    pub(crate) fn open(mut reader: R) -> Result<CaptureReader<R>, ReadError> {
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < magic.len() {
            let slot = magic.get_mut(got..).unwrap_or_default();
            match reader.read(slot) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError(format!("reading the capture: {e}"))),
            }
        }
        if got == 0 {
            return Err(ReadError(
                "the capture is empty (0 bytes): not a pcap or pcapng file".to_owned(),
            ));
        }
        if got < magic.len() {
            return Err(ReadError(format!(
                "the capture is only {got} bytes long: not a pcap or pcapng file"
            )));
        }
        let chained = io::Cursor::new(magic).chain(reader);
        if magic == PCAPNG_MAGIC {
            let r = PcapNgReader::new(chained).map_err(|e| {
                ReadError(format!(
                    "not a readable pcapng file: the section header: {e}"
                ))
            })?;
            Ok(CaptureReader {
                inner: Inner::Ng(r, Vec::new()),
                format: Format::PcapNg,
                packets: 0,
                done: false,
            })
        } else if is_pcap_magic(magic) {
            let r = PcapReader::new(chained).map_err(|e| {
                ReadError(format!("not a readable pcap file: the file header: {e}"))
            })?;
            let link = r.header().datalink;
            Ok(CaptureReader {
                inner: Inner::Pcap(r, link),
                format: Format::Pcap,
                packets: 0,
                done: false,
            })
        } else {
            Err(ReadError(format!(
                "not a pcap or pcapng file: it starts with {:02x} {:02x} {:02x} {:02x} (pcap starts with d4 c3 b2 a1 or a1 b2 c3 d4, pcapng with 0a 0d 0d 0a)",
                magic[0], magic[1], magic[2], magic[3]
            )))
        }
    }

    /// The container format.
    pub(crate) fn format(&self) -> Format {
        self.format
    }

    /// How many packets were read so far.
    pub(crate) fn packets(&self) -> u64 {
        self.packets
    }

    /// The next packet; `None` at the end; an error (after which `None`)
    /// for a truncated or corrupt file.
    pub(crate) fn next_item(&mut self) -> Option<Result<Item, ReadError>> {
        if self.done {
            return None;
        }
        let result = self.next_inner();
        if !matches!(result, Some(Ok(_))) {
            self.done = true;
        }
        result
    }

    fn next_inner(&mut self) -> Option<Result<Item, ReadError>> {
        loop {
            match &mut self.inner {
                Inner::Pcap(r, link) => {
                    let link = *link;
                    let packet = match r.next_packet()? {
                        Ok(p) => p,
                        Err(e) => return Some(Err(self.corrupt(&e))),
                    };
                    self.packets += 1;
                    return Some(Ok(parse_packet(
                        self.packets,
                        packet.timestamp,
                        link,
                        &packet.data,
                    )));
                }
                Inner::Ng(r, interfaces) => {
                    let block = match r.next_block()? {
                        Ok(b) => b,
                        Err(e) => return Some(Err(self.corrupt(&e))),
                    };
                    match block {
                        Block::SectionHeader(_) => interfaces.clear(),
                        Block::InterfaceDescription(idb) => {
                            let mut units_per_sec = 1_000_000u64;
                            for opt in &idb.options {
                                if let pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption::IfTsResol(v) = opt {
                                    units_per_sec = ts_units(*v);
                                }
                            }
                            interfaces.push(Interface {
                                link: idb.linktype,
                                units_per_sec,
                            });
                        }
                        Block::EnhancedPacket(epb) => {
                            self.packets += 1;
                            let packet = self.packets;
                            let Some(iface) = usize::try_from(epb.interface_id)
                                .ok()
                                .and_then(|i| interfaces.get(i))
                            else {
                                return Some(Ok(Item::Skipped {
                                    packet,
                                    why: format!(
                                        "refers to interface {}, which no interface block describes",
                                        epb.interface_id
                                    ),
                                }));
                            };
                            // pcap-file reads the raw 64-bit count as
                            // nanoseconds; the interface says its unit.
                            let raw = u64::try_from(epb.timestamp.as_nanos()).unwrap_or(u64::MAX);
                            let time = scale_time(raw, iface.units_per_sec);
                            return Some(Ok(parse_packet(packet, time, iface.link, &epb.data)));
                        }
                        Block::SimplePacket(spb) => {
                            self.packets += 1;
                            let packet = self.packets;
                            let Some(iface) = interfaces.first() else {
                                return Some(Ok(Item::Skipped {
                                    packet,
                                    why: "a simple packet block before any interface block"
                                        .to_owned(),
                                }));
                            };
                            return Some(Ok(parse_packet(
                                packet,
                                Duration::ZERO,
                                iface.link,
                                &spb.data,
                            )));
                        }
                        Block::Packet(pb) => {
                            self.packets += 1;
                            let packet = self.packets;
                            let iface = interfaces.get(usize::from(pb.interface_id)).copied();
                            let Some(iface) = iface else {
                                return Some(Ok(Item::Skipped {
                                    packet,
                                    why: format!(
                                        "refers to interface {}, which no interface block describes",
                                        pb.interface_id
                                    ),
                                }));
                            };
                            let raw = pb.timestamp;
                            let time = scale_time(raw, iface.units_per_sec);
                            return Some(Ok(parse_packet(packet, time, iface.link, &pb.data)));
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn corrupt(&self, e: &pcap_file::PcapError) -> ReadError {
        let after = match self.packets {
            0 => "before the first packet".to_owned(),
            n => format!("after packet {n}"),
        };
        match e {
            pcap_file::PcapError::IoError(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
                ReadError(format!(
                    "the capture is truncated {after}: the file ends inside a {}",
                    match self.format {
                        Format::Pcap => "packet record",
                        Format::PcapNg => "block",
                    }
                ))
            }
            other => ReadError(format!("the capture is corrupt {after}: {other}")),
        }
    }
}

/// Units per second of a pcapng `if_tsresol` value.
fn ts_units(v: u8) -> u64 {
    let exp = u32::from(v & 0x7F);
    if v & 0x80 == 0 {
        10u64.checked_pow(exp).unwrap_or(u64::MAX)
    } else {
        1u64.checked_shl(exp).unwrap_or(u64::MAX)
    }
}

fn scale_time(raw: u64, units_per_sec: u64) -> Duration {
    let units = units_per_sec.max(1);
    let secs = raw / units;
    let frac = raw % units;
    let nanos = u128::from(frac) * 1_000_000_000 / u128::from(units);
    Duration::new(secs, u32::try_from(nanos).unwrap_or(0))
}

fn skipped(packet: u64, why: impl Into<String>) -> Item {
    Item::Skipped {
        packet,
        why: why.into(),
    }
}

/// Parses one link-layer frame down to TCP.
fn parse_packet(packet: u64, time: Duration, link: DataLink, data: &[u8]) -> Item {
    let sliced = match link {
        DataLink::ETHERNET => SlicedPacket::from_ethernet(data),
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => SlicedPacket::from_ip(data),
        DataLink::LINUX_SLL => {
            // 16 bytes: packet type, ARPHRD type, address length, 8 address
            // bytes, then the protocol (an EtherType).
            let (Some(&[hi, lo]), Some(rest)) = (data.get(14..16), data.get(16..)) else {
                return skipped(packet, "a Linux cooked (SLL) header cut short");
            };
            let ether_type = u16::from_be_bytes([hi, lo]);
            SlicedPacket::from_ether_type(EtherType(ether_type), rest)
        }
        DataLink::LINUX_SLL2 => {
            // 20 bytes, the protocol first.
            let (Some(&[hi, lo]), Some(rest)) = (data.get(0..2), data.get(20..)) else {
                return skipped(packet, "a Linux cooked (SLL2) header cut short");
            };
            let ether_type = u16::from_be_bytes([hi, lo]);
            SlicedPacket::from_ether_type(EtherType(ether_type), rest)
        }
        DataLink::NULL | DataLink::LOOP => {
            // A 4-byte address family: host order for NULL, network order
            // for LOOP; AF_INET is 2, AF_INET6 is 10, 24, 28 or 30.
            let (Some(&[a, b, c, d]), Some(rest)) = (data.get(0..4), data.get(4..)) else {
                return skipped(packet, "a loopback header cut short");
            };
            let bytes = [a, b, c, d];
            let known = |v: u32| matches!(v, 2 | 10 | 24 | 28 | 30);
            let family_ok = if link == DataLink::LOOP {
                known(u32::from_be_bytes(bytes))
            } else {
                known(u32::from_le_bytes(bytes)) || known(u32::from_be_bytes(bytes))
            };
            if !family_ok {
                return skipped(packet, "a loopback packet that is not IP");
            }
            SlicedPacket::from_ip(rest)
        }
        other => {
            return skipped(
                packet,
                format!(
                    "link type {other:?} is not supported (Ethernet, Linux SLL/SLL2, raw IP and BSD loopback are)"
                ),
            );
        }
    };
    let sliced = match sliced {
        Ok(s) => s,
        Err(e) => return skipped(packet, format!("not parsed: {e}")),
    };
    let (src_ip, dst_ip, fragment): (IpAddr, IpAddr, bool) = match &sliced.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                ip.payload().fragmented,
            )
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                ip.payload().fragmented,
            )
        }
        _ => return skipped(packet, "not IP"),
    };
    if fragment {
        return skipped(packet, "an IP fragment (fragments are not reassembled)");
    }
    let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
        return skipped(packet, "not TCP");
    };
    Item::Segment(Segment {
        packet,
        time,
        src: SocketAddr::new(src_ip, tcp.source_port()),
        dst: SocketAddr::new(dst_ip, tcp.destination_port()),
        seq: tcp.sequence_number(),
        ack: tcp.ack().then(|| tcp.acknowledgment_number()),
        syn: tcp.syn(),
        fin: tcp.fin(),
        rst: tcp.rst(),
        payload: tcp.payload().to_vec(),
    })
}
