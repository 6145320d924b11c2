//! Recording connections as a pcapng file: [`Capture`] wraps a stream
//! (after TLS, so the plaintext) and hands every byte read or written to a
//! [`Recorder`], whose writer thread turns each connection into a
//! synthetic TCP/IP flow between the real addresses and ports (SYN,
//! SYN-ACK, ACK, data with correct sequence and acknowledgment numbers,
//! FIN) that Wireshark's TCP and WebSocket dissectors reassemble.
//!
//! The connection never waits for the file: records go into a bounded
//! queue; when it is full, or the file would pass its byte cap, capturing
//! stops (one log line) and the connections go on.

use std::fs::File;
use std::io::{self, BufWriter};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etherparse::PacketBuilder;
use pcap_file::DataLink;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Records waiting for the writer thread, at most.
const QUEUE_RECORDS: usize = 4096;
/// Payload bytes waiting for the writer thread, at most.
const QUEUE_BYTES: u64 = 32 << 20;
/// The largest TCP payload per synthetic packet.
const MAX_SEGMENT: usize = 16 * 1024;
/// What a packet adds to the file besides its payload (block with padding,
/// IPv6 and TCP headers), for the byte cap.
const PACKET_OVERHEAD: u64 = 36 + 40 + 20;
/// The section header and interface blocks, for the byte cap.
const FILE_OVERHEAD: u64 = 256;

enum Record {
    Open {
        flow: u64,
        client: SocketAddr,
        server: SocketAddr,
        time: Duration,
    },
    Data {
        flow: u64,
        from_client: bool,
        data: Vec<u8>,
        time: Duration,
    },
    Close {
        flow: u64,
        time: Duration,
    },
}

struct Shared {
    path: String,
    max_bytes: u64,
    /// Bytes promised to the file so far (payload plus overhead).
    bytes: AtomicU64,
    /// Payload bytes in the queue.
    queued: AtomicU64,
    stopped: AtomicBool,
    next_flow: AtomicU64,
    /// This end is the client of every recorded connection.
    client_side: bool,
}

impl Shared {
    fn stop(&self, why: &str) {
        if !self.stopped.swap(true, Ordering::SeqCst) {
            tracing::warn!("pcap: capture to {} stopped: {why}", self.path);
        }
    }
}

/// A pcapng file being written by its own thread; cheap to clone, shared
/// by every connection it records.
#[derive(Clone)]
pub(crate) struct Recorder {
    tx: SyncSender<Record>,
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

impl Recorder {
    /// Creates the file and starts the writer thread. `client_side`: this
    /// end opened the connections it records (`connect`, `probe`), so the
    /// local address is the client's; else the peer is the client.
    pub(crate) fn create(path: &Path, max_bytes: u64, client_side: bool) -> io::Result<Recorder> {
        let file = File::create(path)?;
        let mut writer = PcapNgWriter::new(BufWriter::new(file)).map_err(io::Error::other)?;
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::RAW,
            snaplen: 0,
            options: vec![
                InterfaceDescriptionOption::IfName("ferrows".into()),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        writer.write_pcapng_block(idb).map_err(io::Error::other)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE_RECORDS);
        let shared = Arc::new(Shared {
            path: path.display().to_string(),
            max_bytes,
            bytes: AtomicU64::new(FILE_OVERHEAD),
            queued: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            next_flow: AtomicU64::new(1),
            client_side,
        });
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("pcap-writer".to_owned())
            .spawn(move || write_loop(writer, rx, &writer_shared))?;
        tracing::info!(
            "pcap: capturing the plaintext to {} (at most {max_bytes} bytes)",
            path.display()
        );
        Ok(Recorder {
            tx,
            shared,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Queues a record without ever blocking; a full queue stops the
    /// capture.
    fn send(&self, record: Record, payload: usize) {
        if self.shared.stopped.load(Ordering::Relaxed) {
            return;
        }
        let packets = match record {
            Record::Data { .. } => payload.div_ceil(MAX_SEGMENT).max(1) as u64,
            Record::Open { .. } | Record::Close { .. } => 3,
        };
        let cost = payload as u64 + packets * PACKET_OVERHEAD;
        let promised = self.shared.bytes.fetch_add(cost, Ordering::Relaxed) + cost;
        if promised > self.shared.max_bytes {
            self.shared.stop(&format!(
                "the file reached --pcap-max-bytes ({} bytes)",
                self.shared.max_bytes
            ));
            return;
        }
        let queued = self
            .shared
            .queued
            .fetch_add(payload as u64, Ordering::Relaxed)
            + payload as u64;
        if queued > QUEUE_BYTES {
            self.shared
                .stop("the writer fell behind (more than 32 MiB queued)");
            return;
        }
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self
                .shared
                .stop("the writer fell behind (its queue is full)"),
            Err(TrySendError::Disconnected(_)) => self.shared.stop("the writer thread ended"),
        }
    }

    /// Writes what is queued and closes the file (waits for the writer
    /// thread, at most `limit`).
    pub(crate) fn finish(&self, limit: Duration) {
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        let Some(handle) = handle else {
            return;
        };
        // The writer ends when every sender is gone; this one may not be
        // the last, so ask it to stop explicitly.
        self.shared.stopped.store(true, Ordering::SeqCst);
        let _ = self.tx.try_send(Record::Close {
            flow: u64::MAX,
            time: now(),
        });
        let deadline = std::time::Instant::now() + limit;
        while !handle.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if handle.is_finished() {
            let _ = handle.join();
        }
    }
}

/// Per-flow state of the writer: the next sequence number each way.
struct Flow {
    client: SocketAddr,
    server: SocketAddr,
    client_seq: u32,
    server_seq: u32,
}

fn write_loop(mut writer: PcapNgWriter<BufWriter<File>>, rx: Receiver<Record>, shared: &Shared) {
    let mut flows: std::collections::HashMap<u64, Flow> = std::collections::HashMap::new();
    let mut failed = false;
    loop {
        let record = match rx.try_recv() {
            Ok(r) => r,
            Err(mpsc::TryRecvError::Empty) => {
                // Idle: make what was written readable now.
                if io::Write::flush(writer.get_mut()).is_err() {
                    shared.stop("writing the file failed");
                    failed = true;
                }
                match rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                }
            }
            Err(mpsc::TryRecvError::Disconnected) => break,
        };
        let mut packets: Vec<(Duration, Vec<u8>)> = Vec::new();
        match record {
            Record::Open {
                flow,
                client,
                server,
                time,
            } => {
                // Initial sequence numbers: any value does; these differ
                // per flow.
                let isn = (flow as u32).wrapping_mul(0x9E37_79B9);
                let f = Flow {
                    client,
                    server,
                    client_seq: isn,
                    server_seq: isn ^ 0x5555_5555,
                };
                packets.push((
                    time,
                    packet(client, server, f.client_seq, None, Flags::Syn, &[]),
                ));
                packets.push((
                    time,
                    packet(
                        server,
                        client,
                        f.server_seq,
                        Some(f.client_seq.wrapping_add(1)),
                        Flags::Syn,
                        &[],
                    ),
                ));
                let f = Flow {
                    client_seq: f.client_seq.wrapping_add(1),
                    server_seq: f.server_seq.wrapping_add(1),
                    ..f
                };
                packets.push((
                    time,
                    packet(
                        client,
                        server,
                        f.client_seq,
                        Some(f.server_seq),
                        Flags::Ack,
                        &[],
                    ),
                ));
                flows.insert(flow, f);
            }
            Record::Data {
                flow,
                from_client,
                data,
                time,
            } => {
                shared
                    .queued
                    .fetch_sub(data.len() as u64, Ordering::Relaxed);
                if let Some(f) = flows.get_mut(&flow) {
                    for piece in data.chunks(MAX_SEGMENT) {
                        let (src, dst, seq, ack) = if from_client {
                            (f.client, f.server, &mut f.client_seq, f.server_seq)
                        } else {
                            (f.server, f.client, &mut f.server_seq, f.client_seq)
                        };
                        packets.push((time, packet(src, dst, *seq, Some(ack), Flags::Psh, piece)));
                        *seq = seq.wrapping_add(piece.len() as u32);
                    }
                }
            }
            Record::Close { flow, time } => {
                if flow == u64::MAX {
                    break;
                }
                if let Some(f) = flows.remove(&flow) {
                    let (c, s) = (f.client_seq, f.server_seq);
                    packets.push((
                        time,
                        packet(f.client, f.server, c, Some(s), Flags::Fin, &[]),
                    ));
                    packets.push((
                        time,
                        packet(
                            f.server,
                            f.client,
                            s,
                            Some(c.wrapping_add(1)),
                            Flags::Fin,
                            &[],
                        ),
                    ));
                    packets.push((
                        time,
                        packet(
                            f.client,
                            f.server,
                            c.wrapping_add(1),
                            Some(s.wrapping_add(1)),
                            Flags::Ack,
                            &[],
                        ),
                    ));
                }
            }
        }
        if failed {
            continue;
        }
        for (time, data) in packets {
            let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
            let epb = EnhancedPacketBlock {
                interface_id: 0,
                timestamp: time,
                original_len: len,
                data: data.into(),
                options: Vec::new(),
            };
            if writer.write_pcapng_block(epb).is_err() {
                shared.stop("writing the file failed");
                failed = true;
                break;
            }
        }
    }
    let _ = io::Write::flush(writer.get_mut());
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Flags {
    /// ACK only (SYN-ACK with `Syn` and an acknowledgment number).
    Ack,
    Syn,
    Psh,
    Fin,
}

/// One IP packet with a TCP segment (checksums computed).
pub(super) fn packet(
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: Option<u32>,
    flags: Flags,
    payload: &[u8],
) -> Vec<u8> {
    let ip = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            PacketBuilder::ipv6(v6(s).octets(), v6(d).octets(), 64)
        }
    };
    let mut tcp = ip.tcp(src.port(), dst.port(), seq, 65_535);
    match flags {
        Flags::Syn => tcp = tcp.syn(),
        Flags::Psh => tcp = tcp.psh(),
        Flags::Fin => tcp = tcp.fin(),
        Flags::Ack => {}
    }
    if let Some(ack) = ack {
        tcp = tcp.ack(ack);
    }
    let mut out = Vec::with_capacity(tcp.size(payload.len()));
    // Writing into a Vec fails only for a payload too long for IP, which
    // MAX_SEGMENT rules out.
    let _ = tcp.write(&mut out, payload);
    out
}

/// A stream whose plaintext is recorded (both directions), or passed
/// through untouched when there is no recorder.
pub(crate) struct Capture<S> {
    inner: S,
    tap: Option<(Recorder, u64)>,
}

impl<S> Capture<S> {
    /// Wraps `stream`, a connection between `local` and `peer`; records it
    /// into `recorder` if there is one.
    pub(crate) fn wrap(
        stream: S,
        recorder: Option<&Recorder>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Capture<S> {
        let tap = recorder.map(|r| {
            let flow = r.shared.next_flow.fetch_add(1, Ordering::Relaxed);
            let (client, server) = if r.shared.client_side {
                (local, peer)
            } else {
                (peer, local)
            };
            r.send(
                Record::Open {
                    flow,
                    client,
                    server,
                    time: now(),
                },
                0,
            );
            (r.clone(), flow)
        });
        Capture { inner: stream, tap }
    }

    fn record(&self, sent: bool, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if let Some((r, flow)) = &self.tap {
            let from_client = sent == r.shared.client_side;
            r.send(
                Record::Data {
                    flow: *flow,
                    from_client,
                    data: data.to_vec(),
                    time: now(),
                },
                data.len(),
            );
        }
    }
}

impl<S> Drop for Capture<S> {
    fn drop(&mut self) {
        if let Some((r, flow)) = &self.tap {
            r.send(
                Record::Close {
                    flow: *flow,
                    time: now(),
                },
                0,
            );
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capture<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let new = buf.filled().get(before..).unwrap_or_default();
            self.record(false, new);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capture<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.record(true, buf.get(..n).unwrap_or_default());
        }
        result
    }

    // Forwarded: the connection's corked writes go out as one vectored
    // write, with or without a recorder.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let (Some(_), Poll::Ready(Ok(n))) = (&self.tap, &result) {
            for written in crate::trace::written_slices(bufs, *n) {
                self.record(true, written);
            }
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
