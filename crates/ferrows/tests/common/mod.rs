//! Helpers shared by the integration tests: loopback servers, a client
//! pair, and a raw peer that writes and reads frames byte by byte.
//!
//! Every wait on the network is bounded by [`TIMEOUT`]; servers bind
//! `127.0.0.1:0`.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use ferrows::proto::frame::{FrameHeader, HeaderDecode};
use ferrows::proto::handshake::{accept_key, generate_key};
use ferrows::proto::mask::apply_mask;
use ferrows::proto::{OpCode, encode_raw_frame};
use ferrows::{ClientBuilder, Config, MaybeTlsStream, Message, WebSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// How long anything that "eventually happens" may take. Generous: the
/// tests share two cores with other builds.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);

/// The client type `connect` returns.
pub(crate) type ClientWs = WebSocket<MaybeTlsStream<TcpStream>>;

/// Awaits `fut`, failing the test if it takes longer than [`TIMEOUT`].
///
/// Not for tests on tokio's paused clock: there the timeout would fire as
/// soon as the runtime is idle.
pub(crate) async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {TIMEOUT:?}: {what}"),
    }
}

/// A listener on an ephemeral loopback port, and its `ws://` URL.
pub(crate) async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    (listener, url)
}

/// A listener whose accepted sockets have small kernel buffers (a few KiB),
/// so that backpressure sets in after little data instead of megabytes.
pub(crate) fn small_buffer_listener() -> (TcpListener, SocketAddr) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Connects to `addr` with small kernel buffers (see [`small_buffer_listener`]).
pub(crate) async fn small_buffer_connect(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Runs an echo server (every text and binary message back, same opcode)
/// with `config` through [`ferrows::serve_with`]; returns its URL.
pub(crate) async fn echo_server(config: Config) -> (String, JoinHandle<ferrows::Result<()>>) {
    let (listener, url) = listen().await;
    let server = tokio::spawn(ferrows::serve_with(listener, config, |mut ws| async move {
        while let Some(Ok(msg)) = ws.recv().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    }));
    (url, server)
}

/// A connected pair: the server end (accepted with `server`) and the client
/// end (connected with `client`).
pub(crate) async fn pair(server: Config, client: Config) -> (WebSocket<TcpStream>, ClientWs) {
    let (listener, url) = listen().await;
    let accept = async {
        let (stream, _) = listener.accept().await.unwrap();
        ferrows::accept_with(stream, server, |_| Ok(ferrows::Accept::new()))
            .await
            .unwrap()
    };
    let connect = async {
        ClientBuilder::new(url)
            .config(client)
            .connect()
            .await
            .unwrap()
            .0
    };
    within("handshake", async { tokio::join!(accept, connect) }).await
}

/// Like [`pair`], over a connection whose kernel buffers are small on both
/// ends (see [`small_buffer_listener`]).
pub(crate) async fn small_buffer_pair(
    server: Config,
    client: Config,
) -> (WebSocket<TcpStream>, WebSocket<TcpStream>) {
    let (listener, addr) = small_buffer_listener();
    let accept = async {
        let (stream, _) = listener.accept().await.unwrap();
        ferrows::accept_with(stream, server, |_| Ok(ferrows::Accept::new()))
            .await
            .unwrap()
    };
    let connect = async {
        let tcp = small_buffer_connect(addr).await;
        ClientBuilder::new(format!("ws://{addr}/"))
            .config(client)
            .connect_on(tcp)
            .await
            .unwrap()
            .0
    };
    within("handshake", async { tokio::join!(accept, connect) }).await
}

/// A pair with default settings.
pub(crate) async fn default_pair() -> (WebSocket<TcpStream>, ClientWs) {
    pair(Config::default(), Config::default()).await
}

/// Receives the next message, which must arrive within [`TIMEOUT`] and not
/// be an error.
pub(crate) async fn next_msg<S>(ws: &mut WebSocket<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within("a message", ws.recv())
        .await
        .expect("the connection ended")
        .expect("an error instead of a message")
}

/// A string of exactly `len` bytes mixing 1-, 2-, 3- and 4-byte characters.
pub(crate) fn text_of_len(len: usize) -> String {
    let mut s = String::with_capacity(len);
    for c in ['a', 'é', '€', '😀', 'z'].iter().cycle() {
        if s.len() + c.len_utf8() > len {
            break;
        }
        s.push(*c);
    }
    while s.len() < len {
        s.push('.');
    }
    s
}

/// Deterministic, poorly compressible bytes.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A frame as the raw peer read it: header (mask removed) and payload
/// (unmasked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawFrame {
    pub(crate) header: FrameHeader,
    pub(crate) payload: Vec<u8>,
}

impl RawFrame {
    pub(crate) fn opcode(&self) -> OpCode {
        self.header.opcode
    }

    /// The close code and reason of a close frame (`None`: empty payload).
    pub(crate) fn close(&self) -> Option<(u16, String)> {
        assert_eq!(self.header.opcode, OpCode::Close, "not a close frame");
        match self.payload.as_slice() {
            [] => None,
            [hi, lo, reason @ ..] => Some((
                u16::from_be_bytes([*hi, *lo]),
                String::from_utf8(reason.to_vec()).expect("a UTF-8 close reason"),
            )),
            [_] => panic!("one-byte close payload"),
        }
    }
}

/// A hand-driven WebSocket peer over TCP: it writes exactly the frames it
/// is told to (valid or not) and reads frames without judging them.
pub(crate) struct RawPeer {
    pub(crate) stream: TcpStream,
    /// Bytes read and not yet parsed.
    buf: BytesMut,
    /// Clients mask what they send.
    client: bool,
}

impl RawPeer {
    /// Connects to `addr` and performs the client handshake by hand, with
    /// `extra` request header lines (each ending in `\r\n`). Returns the
    /// peer and the response head.
    pub(crate) async fn connect(addr: SocketAddr, extra: &str) -> (RawPeer, String) {
        let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
        RawPeer::handshake(stream, extra).await
    }

    /// Performs the client handshake on `stream`; see [`RawPeer::connect`].
    pub(crate) async fn handshake(stream: TcpStream, extra: &str) -> (RawPeer, String) {
        let key = generate_key();
        let request = format!(
            "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        let mut peer = RawPeer {
            stream,
            buf: BytesMut::new(),
            client: true,
        };
        peer.write(request.as_bytes()).await;
        let head = peer.read_head().await;
        assert!(head.starts_with("HTTP/1.1 101 "), "not switching: {head}");
        let accept = accept_key(key.as_bytes());
        assert!(
            head.contains(&format!("Sec-WebSocket-Accept: {accept}\r\n")),
            "wrong accept in {head}"
        );
        (peer, head)
    }

    /// Accepts one connection and performs the server handshake by hand,
    /// answering with `extra` response header lines. Returns the peer and
    /// the request head.
    pub(crate) async fn accept(listener: &TcpListener, extra: &str) -> (RawPeer, String) {
        let (stream, _) = within("accept", listener.accept()).await.unwrap();
        let mut peer = RawPeer {
            stream,
            buf: BytesMut::new(),
            client: false,
        };
        let head = peer.read_head().await;
        let key = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim().to_owned())
            })
            .expect("a Sec-WebSocket-Key");
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n{extra}\r\n",
            accept_key(key.as_bytes())
        );
        peer.write(response.as_bytes()).await;
        (peer, head)
    }

    /// Reads an HTTP head (up to and including the blank line); bytes after
    /// it stay buffered.
    pub(crate) async fn read_head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = self.buf.split_to(end + 4);
                return String::from_utf8(head.to_vec()).expect("an ASCII head");
            }
            assert!(self.fill().await > 0, "EOF before the end of the HTTP head");
        }
    }

    /// Reads more bytes into the buffer; returns how many (0 at EOF).
    async fn fill(&mut self) -> usize {
        self.buf.reserve(16 * 1024);
        within(
            "reading from the socket",
            self.stream.read_buf(&mut self.buf),
        )
        .await
        .expect("a read error")
    }

    /// Writes `bytes` as they are.
    pub(crate) async fn write(&mut self, bytes: &[u8]) {
        within("writing to the socket", self.stream.write_all(bytes))
            .await
            .unwrap();
    }

    /// Encodes one frame with exactly these header fields (masked with a
    /// fixed key if `header.mask` is set).
    pub(crate) fn encode(header: FrameHeader, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_raw_frame(header, payload, &mut out);
        out
    }

    /// A header for this peer's role: masked if it is a client.
    pub(crate) fn header(&self, opcode: OpCode, fin: bool) -> FrameHeader {
        let mut header = FrameHeader::new(opcode, 0);
        header.fin = fin;
        if self.client {
            header.mask = Some([0x37, 0xFA, 0x21, 0x3D]);
        }
        header
    }

    /// Sends one frame, masked as this peer's role requires.
    pub(crate) async fn send(&mut self, opcode: OpCode, fin: bool, payload: &[u8]) {
        let frame = RawPeer::encode(self.header(opcode, fin), payload);
        self.write(&frame).await;
    }

    /// Sends a frame with a hand-made header.
    pub(crate) async fn send_header(&mut self, header: FrameHeader, payload: &[u8]) {
        let frame = RawPeer::encode(header, payload);
        self.write(&frame).await;
    }

    /// Sends a close frame with `code` and `reason`.
    pub(crate) async fn send_close(&mut self, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.send(OpCode::Close, true, &payload).await;
    }

    /// Reads the next frame; `None` at a clean EOF.
    pub(crate) async fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Ok(HeaderDecode::Complete(header, header_len)) = FrameHeader::decode(&self.buf) {
                let len = usize::try_from(header.payload_len).unwrap();
                if self.buf.len() >= header_len + len {
                    self.buf.advance(header_len);
                    let mut payload = self.buf.split_to(len).to_vec();
                    if let Some(key) = header.mask {
                        apply_mask(&mut payload, key, 0);
                    }
                    let header = FrameHeader {
                        mask: None,
                        ..header
                    };
                    return Some(RawFrame { header, payload });
                }
            }
            if self.fill().await == 0 {
                assert!(
                    self.buf.is_empty(),
                    "EOF inside a frame ({} bytes left)",
                    self.buf.len()
                );
                return None;
            }
        }
    }

    /// Reads frames until a close frame and returns it, skipping data and
    /// control frames before it. Fails at EOF.
    pub(crate) async fn read_close(&mut self) -> RawFrame {
        loop {
            let frame = self.read_frame().await.expect("EOF before a close frame");
            if frame.opcode() == OpCode::Close {
                return frame;
            }
        }
    }

    /// Reads until EOF, which must come within [`TIMEOUT`]; returns the
    /// bytes that were still unread.
    pub(crate) async fn read_to_eof(&mut self) -> Vec<u8> {
        while self.fill().await > 0 {}
        self.buf.split().to_vec()
    }

    /// Bytes read and not yet consumed.
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.buf
    }
}

/// Sends `request` to `addr` on a fresh connection and reads the whole
/// response, up to the server closing the connection.
pub(crate) async fn http_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = within("connect", TcpStream::connect(addr)).await.unwrap();
    within("write", stream.write_all(request)).await.unwrap();
    let mut response = Vec::new();
    within("read to EOF", stream.read_to_end(&mut response))
        .await
        .unwrap();
    String::from_utf8(response).expect("a UTF-8 response")
}
