//! permessage-deflate (RFC 7692): negotiation and the per-message codec.
//!
//! # Negotiation
//!
//! - Server: parse every `Sec-WebSocket-Extensions` header of the request
//!   with [`crate::extensions::parse`], concatenate the lists, and call
//!   [`negotiate_server`]. It returns the agreed [`DeflateParams`] and the
//!   exact value to send back in the response's `Sec-WebSocket-Extensions`
//!   header, or `None` to go on without compression.
//! - Client: send [`client_offer`] in the request; give the
//!   `permessage-deflate` element of the response to [`client_accept`]. An
//!   error there means the server answered something we did not offer, and the
//!   client must fail the connection (RFC 6455 §9.1).
//!
//! # Codec
//!
//! Each direction of a connection has its own DEFLATE stream. The sending
//! side owns a [`Compressor`], the receiving side a [`Decompressor`]; the
//! `server_*`/`client_*` helpers on [`DeflateParams`] create both with the
//! negotiated window sizes and context-takeover settings. A compressed message
//! is marked with RSV1 on its first frame (that is the frame layer's job).
//!
//! # Memory (zlib-rs backend, measured with flate2 1.1 / zlib-rs 0.6)
//!
//! A `Compressor` holds one allocation of 243 KiB plus `4 << window_bits`
//! bytes (371 KiB at 15 bits, 245 KiB at 8 or 9 bits): zlib-rs uses a fixed
//! 64 Ki-entry hash table (128 KiB, cleared on every reset, ≈ 2 µs) and
//! 112 KiB of literal buffers whatever the window. A `Decompressor` holds
//! 46 KiB at every window size (zlib-rs always allocates a 32 KiB window).
//! Both are allocated on first use, so a connection that never sends (or
//! never receives) a compressed message pays nothing for it.
//!
//! Without context takeover a direction needs no state between messages, so
//! none is kept: a [`Compressor`] or [`Decompressor`] made with
//! `no_context_takeover` borrows a state from a small per-thread pool for
//! one message and gives it back (reset) when the message ends. Memory then
//! depends on the number of threads, not of connections; [`stats`] counts the
//! states alive in the process. A server that broadcasts answers with
//! `server_no_context_takeover` ([`DeflateConfig::for_broadcast`]), and can then
//! compress a message once for every connection whose [`SharedKey`] is the
//! same.

use crate::extensions::ExtensionOffer;
use bytes::BytesMut;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The extension token, `permessage-deflate`.
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// The empty stored block that ends every sync flush; RFC 7692 strips it from
/// the end of a message and the receiver appends it back (§7.2.1, §7.2.2).
const FLUSH_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Smallest window RFC 7692 allows to negotiate (`*_max_window_bits=8`).
const MIN_WINDOW_BITS: u8 = 8;
/// Largest (and default) window: 32 KiB.
const MAX_WINDOW_BITS: u8 = 15;

const SERVER_NO_CONTEXT_TAKEOVER: &str = "server_no_context_takeover";
const CLIENT_NO_CONTEXT_TAKEOVER: &str = "client_no_context_takeover";
const SERVER_MAX_WINDOW_BITS: &str = "server_max_window_bits";
const CLIENT_MAX_WINDOW_BITS: &str = "client_max_window_bits";

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Settings of one endpoint (both roles use the same struct).
///
/// "Server" and "client" in the field names are the directions of RFC 7692:
/// `server_*` settings concern what the server sends (the server compresses,
/// the client decompresses), `client_*` settings what the client sends. Each
/// field says what it does in each role.
///
/// ```
/// # use ferrows_proto::deflate::DeflateConfig;
/// let config = DeflateConfig::default()
///     .server_no_context_takeover(true)
///     .level(6);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateConfig {
    /// Reset the server's compression context after every message.
    ///
    /// Default `false`. *Server:* if `true`, always reset (and say so with
    /// `server_no_context_takeover` in the response); if `false`, reset only
    /// when the client asks for it. Resetting costs compression ratio, but
    /// then no state is kept between messages (see the module docs) and a
    /// broadcast can be compressed once for many connections
    /// ([`DeflateConfig::for_broadcast`]). *Client:* if `true`, ask the server
    /// to reset its context (the offer carries `server_no_context_takeover`,
    /// and a response without it is rejected).
    pub server_no_context_takeover: bool,
    /// Reset the client's compression context after every message.
    ///
    /// Default `false`. *Server:* if `true`, require it of the client
    /// (`client_no_context_takeover` in the response; RFC 7692 lets the server
    /// say so whether or not the client offered it) and reset our decompressor
    /// after every message. *Client:* if `true`, offer
    /// `client_no_context_takeover` and reset our compressor after every
    /// message.
    pub client_no_context_takeover: bool,
    /// Largest LZ77 window (as a power of two, `8..=15`) for messages the
    /// server sends.
    ///
    /// Default 15 (32 KiB). *Server:* our compressor uses at most this window,
    /// and less if the client asks (`server_max_window_bits=N` in the offer →
    /// `min(N, this)` in the response). When the client did not ask, the
    /// response does not mention it (Firefox fails the connection otherwise),
    /// but we still compress with this smaller window, which any peer can
    /// decode. *Client:* if below 15, ask the server for at most this window.
    pub server_max_window_bits: u8,
    /// Largest LZ77 window (`8..=15`) for messages the client sends.
    ///
    /// Default 15. *Server:* if below 15 and the client offered
    /// `client_max_window_bits`, limit the client to it in the response (a
    /// client that did not offer the parameter cannot be limited). *Client:*
    /// our compressor uses at most this window; the offer always carries
    /// `client_max_window_bits` (with this value if below 15) so that the
    /// server may limit us further.
    pub client_max_window_bits: u8,
    /// zlib compression level of our compressor, `0..=9` (0 stores, 9
    /// compresses hardest). Not negotiated.
    ///
    /// Default 1: on zlib-rs it selects the fastest strategy
    /// (`deflate_quick`), several times cheaper per byte than the usual
    /// level 6, while on the short text and JSON messages WebSockets carry it
    /// loses only a few percent of ratio. Compression is the dominant CPU cost
    /// of a compressed echo or broadcast, so speed wins.
    pub level: u32,
    /// Messages shorter than this (in bytes, before compression) are sent
    /// uncompressed (RSV1 clear). Not negotiated; receiving always accepts
    /// both kinds.
    ///
    /// Default 256: below that, the DEFLATE block and flush overhead (5 to 10
    /// bytes) and the CPU cost outweigh what compression saves. Node's `ws`
    /// uses 1024.
    pub threshold: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: MAX_WINDOW_BITS,
            client_max_window_bits: MAX_WINDOW_BITS,
            level: 1,
            threshold: 256,
        }
    }
}

impl DeflateConfig {
    /// Sets [`server_no_context_takeover`](DeflateConfig::server_no_context_takeover) (default `false`).
    #[must_use]
    pub fn server_no_context_takeover(mut self, value: bool) -> Self {
        self.server_no_context_takeover = value;
        self
    }

    /// Sets [`client_no_context_takeover`](DeflateConfig::client_no_context_takeover) (default `false`).
    #[must_use]
    pub fn client_no_context_takeover(mut self, value: bool) -> Self {
        self.client_no_context_takeover = value;
        self
    }

    /// Sets [`server_max_window_bits`](DeflateConfig::server_max_window_bits) (`8..=15`, default 15).
    #[must_use]
    pub fn server_max_window_bits(mut self, value: u8) -> Self {
        self.server_max_window_bits = value;
        self
    }

    /// Sets [`client_max_window_bits`](DeflateConfig::client_max_window_bits) (`8..=15`, default 15).
    #[must_use]
    pub fn client_max_window_bits(mut self, value: u8) -> Self {
        self.client_max_window_bits = value;
        self
    }

    /// Sets [`level`](DeflateConfig::level) (`0..=9`, default 1).
    #[must_use]
    pub fn level(mut self, value: u32) -> Self {
        self.level = value;
        self
    }

    /// Sets [`threshold`](DeflateConfig::threshold) (default 256 bytes).
    #[must_use]
    pub fn threshold(mut self, value: usize) -> Self {
        self.threshold = value;
        self
    }

    /// Sets both `*_no_context_takeover` flags: the settings of a server
    /// that sends the same messages to many connections (a chat room, a
    /// `Hub`).
    ///
    /// Its response then carries `server_no_context_takeover` and
    /// `client_no_context_takeover` whatever the client offered (RFC 7692
    /// §7.1.1.1 and §7.1.1.2 allow both, and every client must accept them),
    /// so no connection keeps a compression or decompression state between
    /// messages (see the module docs: states come from a per-thread pool),
    /// and a broadcast is compressed once for all connections with the same
    /// [`SharedKey`] instead of once per connection. The price is the ratio
    /// lost by not referring to earlier messages, small for messages that do
    /// not repeat each other.
    ///
    /// ```
    /// # use ferrows_proto::deflate::DeflateConfig;
    /// let config = DeflateConfig::default().for_broadcast();
    /// assert!(config.server_no_context_takeover && config.client_no_context_takeover);
    /// ```
    #[must_use]
    pub fn for_broadcast(self) -> Self {
        self.server_no_context_takeover(true)
            .client_no_context_takeover(true)
    }

    /// Checks the ranges: window bits `8..=15`, level `0..=9`.
    ///
    /// The other functions of this module never panic on an invalid config:
    /// they clamp out-of-range values into range. Call this when the config is
    /// built to report the mistake instead.
    ///
    /// # Errors
    ///
    /// [`DeflateConfigError`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), DeflateConfigError> {
        let bits = MIN_WINDOW_BITS..=MAX_WINDOW_BITS;
        if !bits.contains(&self.server_max_window_bits) {
            return Err(DeflateConfigError::new(
                SERVER_MAX_WINDOW_BITS,
                self.server_max_window_bits.into(),
                bits,
            ));
        }
        if !bits.contains(&self.client_max_window_bits) {
            return Err(DeflateConfigError::new(
                CLIENT_MAX_WINDOW_BITS,
                self.client_max_window_bits.into(),
                bits,
            ));
        }
        if self.level > 9 {
            return Err(DeflateConfigError {
                field: "level",
                value: self.level,
                min: 0,
                max: 9,
            });
        }
        Ok(())
    }

    fn server_bits(&self) -> u8 {
        clamp_bits(self.server_max_window_bits)
    }

    fn client_bits(&self) -> u8 {
        clamp_bits(self.client_max_window_bits)
    }
}

fn clamp_bits(bits: u8) -> u8 {
    bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS)
}

/// A [`DeflateConfig`] field out of range; Display names the field and range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateConfigError {
    field: &'static str,
    value: u32,
    min: u32,
    max: u32,
}

impl DeflateConfigError {
    fn new(field: &'static str, value: u32, range: std::ops::RangeInclusive<u8>) -> Self {
        DeflateConfigError {
            field,
            value,
            min: (*range.start()).into(),
            max: (*range.end()).into(),
        }
    }

    /// The name of the offending field, e.g. `"level"`.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Display for DeflateConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "permessage-deflate {} must be in {}..={}, got {}",
            self.field, self.min, self.max, self.value
        )
    }
}

impl std::error::Error for DeflateConfigError {}

// ---------------------------------------------------------------------------
// Negotiated parameters
// ---------------------------------------------------------------------------

/// What one connection negotiated.
///
/// The window sizes are limits on what each side sends; 15 means no limit was
/// negotiated. The window a side actually compresses with is the smaller of
/// the negotiated limit and its own config's `*_max_window_bits` (a smaller
/// window is always decodable): the `server_compressor`/`client_compressor`
/// helpers apply that rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compression context after every message (and
    /// the client its decompression context).
    pub server_no_context_takeover: bool,
    /// The client resets its compression context after every message (and
    /// the server its decompression context).
    pub client_no_context_takeover: bool,
    /// The largest window (`8..=15`) the server may use; 15 when absent.
    pub server_max_window_bits: u8,
    /// The largest window (`8..=15`) the client may use; 15 when absent.
    pub client_max_window_bits: u8,
}

impl Default for DeflateParams {
    /// Plain `permessage-deflate`: context takeover both ways, 32 KiB windows.
    fn default() -> Self {
        DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: MAX_WINDOW_BITS,
            client_max_window_bits: MAX_WINDOW_BITS,
        }
    }
}

impl DeflateParams {
    /// The response header value describing these parameters, e.g.
    /// `permessage-deflate; server_no_context_takeover; client_max_window_bits=12`.
    ///
    /// It writes the flags that are set and the window sizes below 15. The
    /// string [`negotiate_server`] returns is the same except that it also
    /// echoes `server_max_window_bits=15` when the client offered that value
    /// (RFC 7692 §7.1.2.1 requires the server to answer it, and some clients
    /// check) — so a server sends that string, not this one.
    pub fn to_header_value(&self) -> String {
        self.header_value(
            self.server_max_window_bits < MAX_WINDOW_BITS,
            self.client_max_window_bits < MAX_WINDOW_BITS,
        )
    }

    fn header_value(&self, with_server_bits: bool, with_client_bits: bool) -> String {
        use fmt::Write as _;
        let mut s = String::from(EXTENSION_NAME);
        if self.server_no_context_takeover {
            s.push_str("; ");
            s.push_str(SERVER_NO_CONTEXT_TAKEOVER);
        }
        if self.client_no_context_takeover {
            s.push_str("; ");
            s.push_str(CLIENT_NO_CONTEXT_TAKEOVER);
        }
        // Writing into a String cannot fail.
        if with_server_bits {
            let _ = write!(
                s,
                "; {SERVER_MAX_WINDOW_BITS}={}",
                self.server_max_window_bits
            );
        }
        if with_client_bits {
            let _ = write!(
                s,
                "; {CLIENT_MAX_WINDOW_BITS}={}",
                self.client_max_window_bits
            );
        }
        s
    }

    /// The server's compressor: window `min(server_max_window_bits,
    /// config.server_max_window_bits)`, `config.level`, reset per message if
    /// `server_no_context_takeover`.
    pub fn server_compressor(&self, config: &DeflateConfig) -> Compressor {
        Compressor::new(
            self.server_max_window_bits.min(config.server_bits()),
            config.level,
            self.server_no_context_takeover,
        )
    }

    /// The server's decompressor (for what the client sends).
    pub fn server_decompressor(&self) -> Decompressor {
        Decompressor::new(self.client_max_window_bits, self.client_no_context_takeover)
    }

    /// The client's compressor: window `min(client_max_window_bits,
    /// config.client_max_window_bits)`, `config.level`, reset per message if
    /// `client_no_context_takeover`.
    pub fn client_compressor(&self, config: &DeflateConfig) -> Compressor {
        Compressor::new(
            self.client_max_window_bits.min(config.client_bits()),
            config.level,
            self.client_no_context_takeover,
        )
    }

    /// The client's decompressor (for what the server sends).
    pub fn client_decompressor(&self) -> Decompressor {
        Decompressor::new(self.server_max_window_bits, self.server_no_context_takeover)
    }
}

// ---------------------------------------------------------------------------
// Negotiation
// ---------------------------------------------------------------------------

/// The parameters of one `permessage-deflate` element, checked for syntax.
#[derive(Debug, Default)]
struct RawParams {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// Checks the parameter syntax of RFC 7692 §7.1: known names, each at most
/// once, flags without a value, window bits `1*DIGIT` in `8..=15`,
/// `server_max_window_bits` with a value. `client_max_window_bits` may lack a
/// value (valid in an offer; [`client_accept`] rejects it in a response).
fn parse_params(ext: &ExtensionOffer) -> Result<RawParams, String> {
    let mut raw = RawParams::default();
    let mut seen = [false; 4];
    for (name, value) in &ext.params {
        let (index, canonical) = [
            SERVER_NO_CONTEXT_TAKEOVER,
            CLIENT_NO_CONTEXT_TAKEOVER,
            SERVER_MAX_WINDOW_BITS,
            CLIENT_MAX_WINDOW_BITS,
        ]
        .into_iter()
        .enumerate()
        .find(|(_, known)| name.eq_ignore_ascii_case(known))
        .ok_or_else(|| format!("unknown parameter {name:?}"))?;
        match seen.get_mut(index) {
            Some(seen) if !*seen => *seen = true,
            _ => return Err(format!("duplicate parameter {canonical}")),
        }
        let bits = |value: &Option<String>| -> Result<Option<u8>, String> {
            match value {
                None => Ok(None),
                Some(v) => parse_window_bits(v)
                    .map(Some)
                    .ok_or_else(|| format!("invalid {canonical} value {v:?} (must be 8 to 15)")),
            }
        };
        match index {
            0 | 1 => {
                if value.is_some() {
                    return Err(format!("{canonical} must not have a value"));
                }
                if index == 0 {
                    raw.server_no_context_takeover = true;
                } else {
                    raw.client_no_context_takeover = true;
                }
            }
            2 => match bits(value)? {
                Some(b) => raw.server_max_window_bits = Some(b),
                None => return Err(format!("{canonical} needs a value")),
            },
            _ => raw.client_max_window_bits = Some(bits(value)?),
        }
    }
    Ok(raw)
}

/// `1*DIGIT` with a value in `8..=15`.
fn parse_window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let trimmed = value.trim_start_matches('0');
    let bits: u8 = trimmed.parse().ok()?;
    (MIN_WINDOW_BITS..=MAX_WINDOW_BITS)
        .contains(&bits)
        .then_some(bits)
}

fn is_deflate(ext: &ExtensionOffer) -> bool {
    ext.name.eq_ignore_ascii_case(EXTENSION_NAME)
}

/// Server: choose from all offers in the request.
///
/// `offers` are the parsed lists of every `Sec-WebSocket-Extensions` header
/// of the request, concatenated in order. Returns the first acceptable
/// `permessage-deflate` offer as the agreed params plus the exact value of the
/// response's `Sec-WebSocket-Extensions` header, or `None` if there is no
/// `permessage-deflate` offer or none is acceptable. Declining is not an
/// error: a malformed `permessage-deflate` offer (unknown or duplicate
/// parameter, value on a flag, window bits not `1*DIGIT` in `8..=15`,
/// `server_max_window_bits` without value) is skipped, and other extensions
/// are ignored.
///
/// The response follows RFC 7692 §7.1 and `config`:
/// - `server_no_context_takeover` if the client asked or the config says so;
/// - `client_no_context_takeover` if the config says so;
/// - `server_max_window_bits=min(N, config)` only if the client offered `N`;
/// - `client_max_window_bits=M` only if the client offered the parameter, and
///   then if it came with a value or the config limits it below 15, with `M`
///   the smaller of the two.
pub fn negotiate_server(
    config: &DeflateConfig,
    offers: &[ExtensionOffer],
) -> Option<(DeflateParams, String)> {
    offers
        .iter()
        .filter(|ext| is_deflate(ext))
        .find_map(|ext| parse_params(ext).ok())
        .map(|raw| {
            let (server_bits, with_server_bits) = match raw.server_max_window_bits {
                Some(offered) => (offered.min(config.server_bits()), true),
                None => (MAX_WINDOW_BITS, false),
            };
            let (client_bits, with_client_bits) = match raw.client_max_window_bits {
                None => (MAX_WINDOW_BITS, false),
                Some(Some(offered)) => (offered.min(config.client_bits()), true),
                Some(None) if config.client_bits() < MAX_WINDOW_BITS => {
                    (config.client_bits(), true)
                }
                Some(None) => (MAX_WINDOW_BITS, false),
            };
            let params = DeflateParams {
                server_no_context_takeover: raw.server_no_context_takeover
                    || config.server_no_context_takeover,
                client_no_context_takeover: config.client_no_context_takeover,
                server_max_window_bits: server_bits,
                client_max_window_bits: client_bits,
            };
            let header = params.header_value(with_server_bits, with_client_bits);
            (params, header)
        })
}

/// What [`client_offer`] offers for a config.
struct ClientOffer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value.
    client_max_window_bits: Option<Option<u8>>,
}

impl ClientOffer {
    fn new(config: &DeflateConfig) -> ClientOffer {
        let server_bits = config.server_bits();
        let client_bits = config.client_bits();
        ClientOffer {
            server_no_context_takeover: config.server_no_context_takeover,
            client_no_context_takeover: config.client_no_context_takeover,
            server_max_window_bits: (server_bits < MAX_WINDOW_BITS).then_some(server_bits),
            // Always offered, so that the server may limit our window.
            client_max_window_bits: Some((client_bits < MAX_WINDOW_BITS).then_some(client_bits)),
        }
    }
}

/// Client: the offer to send in the request's `Sec-WebSocket-Extensions`.
///
/// `permessage-deflate`, then `server_no_context_takeover` and
/// `client_no_context_takeover` if set in `config`, `server_max_window_bits=N`
/// if `config.server_max_window_bits < 15`, and always
/// `client_max_window_bits` (with `=M` if `config.client_max_window_bits <
/// 15`). With the default config: `permessage-deflate; client_max_window_bits`.
pub fn client_offer(config: &DeflateConfig) -> String {
    use fmt::Write as _;
    let offer = ClientOffer::new(config);
    let mut s = String::from(EXTENSION_NAME);
    if offer.server_no_context_takeover {
        s.push_str("; ");
        s.push_str(SERVER_NO_CONTEXT_TAKEOVER);
    }
    if offer.client_no_context_takeover {
        s.push_str("; ");
        s.push_str(CLIENT_NO_CONTEXT_TAKEOVER);
    }
    // Writing into a String cannot fail.
    if let Some(bits) = offer.server_max_window_bits {
        let _ = write!(s, "; {SERVER_MAX_WINDOW_BITS}={bits}");
    }
    match offer.client_max_window_bits {
        Some(Some(bits)) => {
            let _ = write!(s, "; {CLIENT_MAX_WINDOW_BITS}={bits}");
        }
        Some(None) => {
            s.push_str("; ");
            s.push_str(CLIENT_MAX_WINDOW_BITS);
        }
        None => {}
    }
    s
}

/// Client: checks the server's accepted extension (the `permessage-deflate`
/// element of the response) against what [`client_offer`] offered for the same
/// `config`, and returns what was agreed.
///
/// Accepted: `server_no_context_takeover`; `client_no_context_takeover` (we
/// then reset our compressor per message, as we also do when we offered it
/// ourselves); `server_max_window_bits=N` in `8..=15`, even if we did not ask
/// for a limit (a smaller server window only constrains the server), but at
/// most what we asked for if we did; `client_max_window_bits=M` at most what we
/// offered (15 when offered without a value).
///
/// # Errors
///
/// [`DeflateNegotiationError`] (fail the connection) for: another extension
/// name; an unknown or duplicate parameter; a value on a flag or a window size
/// that is not `8..=15`; `client_max_window_bits` without a value, not offered,
/// or above what we offered; `server_max_window_bits` missing though we asked
/// for a limit, or above it; `server_no_context_takeover` missing though we
/// asked for it.
pub fn client_accept(
    config: &DeflateConfig,
    response: &ExtensionOffer,
) -> Result<DeflateParams, DeflateNegotiationError> {
    let fail = |reason: String| DeflateNegotiationError { reason };
    if !is_deflate(response) {
        return Err(fail(format!(
            "server accepted extension {:?}, which was not offered",
            response.name
        )));
    }
    let raw = parse_params(response).map_err(fail)?;
    let offer = ClientOffer::new(config);

    if offer.server_no_context_takeover && !raw.server_no_context_takeover {
        return Err(fail(format!(
            "server did not grant the {SERVER_NO_CONTEXT_TAKEOVER} we asked for"
        )));
    }
    let server_bits = match (offer.server_max_window_bits, raw.server_max_window_bits) {
        (None, None) => MAX_WINDOW_BITS,
        (None, Some(got)) => got,
        (Some(asked), None) => {
            return Err(fail(format!(
                "server did not answer the {SERVER_MAX_WINDOW_BITS}={asked} we asked for"
            )));
        }
        (Some(asked), Some(got)) if got > asked => {
            return Err(fail(format!(
                "server chose {SERVER_MAX_WINDOW_BITS}={got}, above the {asked} we asked for"
            )));
        }
        (Some(_), Some(got)) => got,
    };
    let client_bits = match (offer.client_max_window_bits, raw.client_max_window_bits) {
        (_, None) => MAX_WINDOW_BITS,
        (_, Some(None)) => {
            return Err(fail(format!(
                "{CLIENT_MAX_WINDOW_BITS} in a response must have a value"
            )));
        }
        (None, Some(Some(_))) => {
            return Err(fail(format!(
                "server sent {CLIENT_MAX_WINDOW_BITS}, which was not offered"
            )));
        }
        (Some(offered), Some(Some(got))) => {
            let offered = offered.unwrap_or(MAX_WINDOW_BITS);
            if got > offered {
                return Err(fail(format!(
                    "server chose {CLIENT_MAX_WINDOW_BITS}={got}, above the {offered} we offered"
                )));
            }
            got
        }
    };
    Ok(DeflateParams {
        server_no_context_takeover: raw.server_no_context_takeover,
        client_no_context_takeover: raw.client_no_context_takeover
            || offer.client_no_context_takeover,
        server_max_window_bits: server_bits,
        client_max_window_bits: client_bits,
    })
}

/// The server's `permessage-deflate` response is not acceptable; Display
/// gives the reason. The client must fail the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateNegotiationError {
    reason: String,
}

impl fmt::Display for DeflateNegotiationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "permessage-deflate negotiation failed: {}", self.reason)
    }
}

impl std::error::Error for DeflateNegotiationError {}

// ---------------------------------------------------------------------------
// Compression
// ---------------------------------------------------------------------------

/// How many compression and decompression states are alive in this process:
/// owned by a connection (context takeover, or a message under way) or
/// pooled for the next message without context takeover.
///
/// Each compression state holds 243 KiB plus `4 << window_bits` bytes, each
/// decompression state 46 KiB (see the module docs). For tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateStats {
    /// Compression states alive.
    pub compressors: usize,
    /// Decompression states alive.
    pub decompressors: usize,
    /// Messages (or first fragments) compressed so far, by every
    /// [`Compressor`] of the process.
    pub messages_compressed: u64,
}

static LIVE_COMPRESSORS: AtomicUsize = AtomicUsize::new(0);
static LIVE_DECOMPRESSORS: AtomicUsize = AtomicUsize::new(0);
static MESSAGES_COMPRESSED: AtomicU64 = AtomicU64::new(0);

/// The process's [`DeflateStats`] now.
pub fn stats() -> DeflateStats {
    DeflateStats {
        compressors: LIVE_COMPRESSORS.load(Ordering::Relaxed),
        decompressors: LIVE_DECOMPRESSORS.load(Ordering::Relaxed),
        messages_compressed: MESSAGES_COMPRESSED.load(Ordering::Relaxed),
    }
}

/// States kept per thread for directions without context takeover: a few
/// (window, level) combinations in use at once, each state a few hundred
/// KiB. A state given back to a full pool replaces the oldest one.
const POOL_PER_THREAD: usize = 4;

thread_local! {
    static COMPRESS_POOL: RefCell<Vec<CompressState>> = const { RefCell::new(Vec::new()) };
    static DECOMPRESS_POOL: RefCell<Vec<DecompressState>> = const { RefCell::new(Vec::new()) };
}

/// A zlib-rs compression state, counted in [`stats`].
#[derive(Debug)]
struct CompressState {
    z: Compress,
    window_bits: u8,
    level: u32,
}

impl CompressState {
    fn new(window_bits: u8, level: u32) -> CompressState {
        LIVE_COMPRESSORS.fetch_add(1, Ordering::Relaxed);
        CompressState {
            z: Compress::new_with_window_bits(Compression::new(level), false, window_bits),
            window_bits,
            level,
        }
    }

    /// A reset state from this thread's pool, or a new one.
    fn take(window_bits: u8, level: u32) -> CompressState {
        COMPRESS_POOL
            .try_with(|pool| {
                let mut pool = pool.try_borrow_mut().ok()?;
                let i = pool
                    .iter()
                    .rposition(|s| s.window_bits == window_bits && s.level == level)?;
                Some(pool.remove(i))
            })
            .ok()
            .flatten()
            .unwrap_or_else(|| CompressState::new(window_bits, level))
    }

    /// Resets the state and puts it in this thread's pool.
    fn give_back(mut self) {
        self.z.reset();
        let _ = COMPRESS_POOL.try_with(move |pool| {
            if let Ok(mut pool) = pool.try_borrow_mut() {
                if pool.len() >= POOL_PER_THREAD {
                    pool.remove(0);
                }
                pool.push(self);
            }
        });
    }
}

impl Drop for CompressState {
    fn drop(&mut self) {
        LIVE_COMPRESSORS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A zlib-rs decompression state (always a 32 KiB window), counted in
/// [`stats`].
#[derive(Debug)]
struct DecompressState {
    z: Decompress,
}

impl DecompressState {
    fn new() -> DecompressState {
        LIVE_DECOMPRESSORS.fetch_add(1, Ordering::Relaxed);
        DecompressState {
            z: Decompress::new_with_window_bits(false, MAX_WINDOW_BITS),
        }
    }

    /// A reset state from this thread's pool, or a new one.
    fn take() -> DecompressState {
        DECOMPRESS_POOL
            .try_with(|pool| pool.try_borrow_mut().ok()?.pop())
            .ok()
            .flatten()
            .unwrap_or_else(DecompressState::new)
    }

    /// Resets the state and puts it in this thread's pool.
    fn give_back(mut self) {
        self.z.reset(false);
        let _ = DECOMPRESS_POOL.try_with(move |pool| {
            if let Ok(mut pool) = pool.try_borrow_mut() {
                if pool.len() >= POOL_PER_THREAD {
                    pool.remove(0);
                }
                pool.push(self);
            }
        });
    }
}

impl Drop for DecompressState {
    fn drop(&mut self) {
        LIVE_DECOMPRESSORS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a message compressed without context takeover depends on: the
/// window and the level. Compressors with equal keys turn the same message
/// into the same bytes, and a peer that negotiated a window at least this
/// large decodes them, so a server can compress a broadcast once for every
/// connection whose [`Compressor::shared_key`] is equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SharedKey {
    window_bits: u8,
    level: u8,
}

impl SharedKey {
    /// The window bits the message is compressed with (`9..=15`; see
    /// [`Compressor::new`] for why never 8).
    pub fn window_bits(&self) -> u8 {
        self.window_bits
    }

    /// The zlib level (`0..=9`).
    pub fn level(&self) -> u32 {
        u32::from(self.level)
    }

    /// A compressor for one message with this key (no context takeover).
    pub fn compressor(&self) -> Compressor {
        Compressor::new(self.window_bits, self.level(), true)
    }
}

/// Compresses messages of one direction.
///
/// The DEFLATE state is allocated on the first message. With context
/// takeover it is kept for every message after it and carries the LZ77
/// window from one message to the next; without, it is borrowed from a
/// per-thread pool for each message (for every frame of a fragmented one)
/// and given back, reset, when the message ends, so an idle compressor holds
/// no memory.
#[derive(Debug)]
pub struct Compressor {
    inner: Option<CompressState>,
    /// Window bits given to zlib-rs: `9..=15`.
    window_bits: u8,
    level: u32,
    no_context_takeover: bool,
    /// A fragmented message is under way.
    in_message: bool,
    /// Bytes given to and produced by this compressor, for
    /// [`Compressor::totals`].
    totals: (u64, u64),
}

impl Compressor {
    /// A compressor for a window of `window_bits` (`8..=15`: the peer's limit
    /// for our direction), zlib `level` (`0..=9`), resetting after every
    /// message if `no_context_takeover`. Out-of-range values are clamped.
    ///
    /// zlib (and zlib-rs) cannot make raw-deflate streams with an 8-bit window
    /// (`deflateInit2` rejects -8), so 8 becomes 9. That is safe: zlib's
    /// deflate never emits a distance beyond `w_size - MIN_LOOKAHEAD` =
    /// 512 - 262 = 250 < 256, so its 9-bit streams fit an 8-bit window (a test
    /// checks every distance).
    pub fn new(window_bits: u8, level: u32, no_context_takeover: bool) -> Compressor {
        Compressor {
            inner: None,
            window_bits: clamp_bits(window_bits).max(9),
            level: level.min(9),
            no_context_takeover,
            in_message: false,
            totals: (0, 0),
        }
    }

    /// Bytes compressed so far: `(uncompressed in, compressed out)`, the
    /// output as sent (the stripped flush tail not counted).
    pub fn totals(&self) -> (u64, u64) {
        self.totals
    }

    /// The key of the messages this compressor makes, if they can be shared
    /// with other connections: only without context takeover.
    pub fn shared_key(&self) -> Option<SharedKey> {
        self.no_context_takeover.then(|| SharedKey {
            window_bits: self.window_bits,
            level: u8::try_from(self.level).unwrap_or(9),
        })
    }

    /// Whether this compressor holds a DEFLATE state now (with context
    /// takeover from the first message on; without, only while a fragmented
    /// message is under way).
    pub fn holds_state(&self) -> bool {
        self.inner.is_some()
    }

    /// Compresses a whole message, appending the RFC 7692 payload (DEFLATE
    /// with sync flush, the trailing `00 00 FF FF` removed) to `dst`. Resets
    /// the context afterwards if `no_context_takeover`.
    ///
    /// An empty message becomes the single byte `00` (RFC 7692 §7.2.3.6).
    pub fn compress(&mut self, input: &[u8], dst: &mut BytesMut) {
        self.compress_fragment(input, true, dst);
    }

    /// Compresses one fragment of a message sent in several frames.
    ///
    /// Each fragment is sync-flushed, so its frame can go out at once; only
    /// when `fin` is the `00 00 FF FF` tail stripped (and the context reset if
    /// `no_context_takeover`). Non-final fragments keep their flush marker,
    /// which is part of the stream. A final fragment never comes out empty
    /// (RFC 7692 needs at least `00` to decode).
    pub fn compress_fragment(&mut self, input: &[u8], fin: bool, dst: &mut BytesMut) {
        let start = dst.len();
        if !self.in_message {
            MESSAGES_COMPRESSED.fetch_add(1, Ordering::Relaxed);
        }
        self.in_message = !fin;
        self.deflate_sync(input, dst);
        if fin {
            let ends_with_tail = dst
                .get(start..)
                .is_some_and(|produced| produced.ends_with(&FLUSH_TAIL));
            if ends_with_tail {
                dst.truncate(dst.len() - FLUSH_TAIL.len());
            }
            if dst.len() == start {
                // Nothing new since the last flush (zlib emits no second
                // marker): an empty stored block header keeps the receiver's
                // appended tail decodable.
                dst.extend_from_slice(&[0x00]);
            }
            if self.no_context_takeover {
                if let Some(state) = self.inner.take() {
                    state.give_back();
                }
            }
        }
        self.totals.0 += input.len() as u64;
        self.totals.1 += dst.len().saturating_sub(start) as u64;
    }

    /// Runs `input` through deflate with a sync flush, appending to `dst`.
    fn deflate_sync(&mut self, mut input: &[u8], dst: &mut BytesMut) {
        let (window_bits, level) = (self.window_bits, self.level);
        let state = self.inner.get_or_insert_with(|| {
            if self.no_context_takeover {
                CompressState::take(window_bits, level)
            } else {
                CompressState::new(window_bits, level)
            }
        });
        let inner = &mut state.z;
        // Enough for the whole output in one call in practice: incompressible
        // data grows by ~5 bytes per stored block of up to 64 KiB, and the
        // flush adds at most ~10. When it is not, the loop goes round again.
        let mut room = input.len() + input.len() / 64 + 64;
        loop {
            let len = dst.len();
            dst.resize(len + room, 0);
            let (in_before, out_before) = (inner.total_in(), inner.total_out());
            let result = match dst.get_mut(len..) {
                Some(out) => inner.compress(input, out, FlushCompress::Sync),
                None => return,
            };
            let consumed = usize::try_from(inner.total_in() - in_before).unwrap_or(usize::MAX);
            let produced = usize::try_from(inner.total_out() - out_before).unwrap_or(0);
            dst.truncate(len + produced);
            input = input.get(consumed..).unwrap_or_default();
            if result.is_err() {
                // zlib-rs fails only on a corrupted stream state, which safe
                // code cannot cause; start over rather than loop.
                inner.reset();
                return;
            }
            // All input taken and room to spare: the flush is complete.
            if input.is_empty() && produced < room {
                return;
            }
            room = room.saturating_mul(2);
        }
    }
}

// ---------------------------------------------------------------------------
// Decompression
// ---------------------------------------------------------------------------

/// Smallest output chunk to inflate into.
const MIN_INFLATE_CHUNK: usize = 256;
/// Largest first output chunk (later ones double, up to the limit).
const MAX_FIRST_INFLATE_CHUNK: usize = 1 << 20;
/// Largest output chunk.
const MAX_INFLATE_CHUNK: usize = 16 << 20;

/// Decompresses messages of one direction, with a bound on output size.
#[derive(Debug)]
pub struct Decompressor {
    inner: Option<DecompressState>,
    window_bits: u8,
    no_context_takeover: bool,
    /// No input consumed since the DEFLATE stream (re)started.
    stream_start: bool,
    /// Bytes inflated, for [`Decompressor::totals`].
    totals: (u64, u64),
}

impl Decompressor {
    /// A decompressor for the peer's direction, whose negotiated window is
    /// `window_bits` (`8..=15`, clamped), resetting after every message if
    /// `no_context_takeover`.
    ///
    /// It always inflates with a 32 KiB window, which decodes any stream made
    /// with a smaller one. That costs nothing: zlib-rs allocates the full
    /// window whatever the size asked, while flate2 (1.1.11) rebuilds the whole
    /// state — a fresh allocation — on every reset when the size is not 15. It
    /// also keeps clear of zlib's 8-bit corner cases. The price is that a peer
    /// exceeding its negotiated window is not detected.
    pub fn new(window_bits: u8, no_context_takeover: bool) -> Decompressor {
        Decompressor {
            inner: None,
            window_bits: clamp_bits(window_bits),
            no_context_takeover,
            stream_start: true,
            totals: (0, 0),
        }
    }

    /// Bytes decompressed so far: `(compressed in, uncompressed out)`,
    /// counting only calls that succeeded.
    pub fn totals(&self) -> (u64, u64) {
        self.totals
    }

    /// The negotiated window of the peer's direction (`8..=15`).
    pub fn window_bits(&self) -> u8 {
        self.window_bits
    }

    /// Inflates one frame's payload of a compressed message, appending to
    /// `dst`.
    ///
    /// When `fin`, it also inflates the `00 00 FF FF` tail RFC 7692 §7.2.2
    /// says to append, and ends the message (resetting the context if
    /// `no_context_takeover`). A DEFLATE block with BFINAL set (§7.2.3.4) ends
    /// the stream; whatever follows it is decoded as a new stream, and the
    /// tail is not appended when nothing follows it (so a peer that omits the
    /// empty block the RFC's example puts after BFINAL is understood too).
    ///
    /// `limit` bounds `dst.len()`, not only what this call adds: a caller that
    /// gathers a fragmented message in `dst` passes its message size limit.
    /// Memory stays bounded by it: `dst` never holds more than `limit + 1`
    /// bytes, nor grows its capacity beyond about twice that, so a kilobyte
    /// "decompression bomb" that would inflate to gigabytes fails after
    /// inflating `limit` bytes.
    ///
    /// # Errors
    ///
    /// - [`InflateError::TooBig`] as soon as `dst.len()` would exceed `limit`;
    /// - [`InflateError::Corrupt`] on invalid DEFLATE data.
    ///
    /// After an error, `dst` is truncated back to its length before the call
    /// and the context is reset: the message is lost and the connection should
    /// be failed (1009 or 1007).
    pub fn decompress(
        &mut self,
        input: &[u8],
        fin: bool,
        dst: &mut BytesMut,
        limit: usize,
    ) -> Result<(), InflateError> {
        let start = dst.len();
        let no_context_takeover = self.no_context_takeover;
        let state = self.inner.get_or_insert_with(|| {
            if no_context_takeover {
                DecompressState::take()
            } else {
                DecompressState::new()
            }
        });
        let inner = &mut state.z;
        let stream_start = &mut self.stream_start;
        let mut result = inflate_into(inner, input, dst, limit, stream_start);
        if fin && result.is_ok() && !*stream_start {
            result = inflate_into(inner, &FLUSH_TAIL, dst, limit, stream_start);
        }
        let message_over = match result {
            Ok(()) => {
                self.totals.0 += input.len() as u64;
                self.totals.1 += dst.len().saturating_sub(start) as u64;
                fin
            }
            Err(_) => {
                dst.truncate(start);
                true
            }
        };
        if message_over && (no_context_takeover || result.is_err()) {
            self.stream_start = true;
            match self.inner.take() {
                // Given back reset, for the next message on this thread.
                Some(state) if no_context_takeover => state.give_back(),
                Some(mut state) => {
                    state.z.reset(false);
                    self.inner = Some(state);
                }
                None => {}
            }
        }
        result
    }

    /// Whether this decompressor holds a DEFLATE state now (with context
    /// takeover from the first compressed message on; without, only while a
    /// fragmented message is under way).
    pub fn holds_state(&self) -> bool {
        self.inner.is_some()
    }
}

/// Inflates all of `input` into `dst`, growing it by chunks (zero-filled,
/// then truncated to what was produced), never beyond `limit + 1` bytes.
/// `stream_start` tracks whether any input went in since the DEFLATE stream
/// (re)started.
fn inflate_into(
    inner: &mut Decompress,
    mut input: &[u8],
    dst: &mut BytesMut,
    limit: usize,
    stream_start: &mut bool,
) -> Result<(), InflateError> {
    let too_big = InflateError::TooBig { limit };
    // Text and JSON inflate to 3–10 times their compressed size.
    let mut chunk = input
        .len()
        .saturating_mul(4)
        .clamp(MIN_INFLATE_CHUNK, MAX_FIRST_INFLATE_CHUNK);
    loop {
        let len = dst.len();
        // One byte beyond the limit, to notice when the output goes over it.
        let allowed = match limit.checked_sub(len) {
            Some(left) => left.saturating_add(1),
            None => return Err(too_big),
        };
        let room = chunk.min(allowed);
        dst.resize(len + room, 0);
        let (in_before, out_before) = (inner.total_in(), inner.total_out());
        let result = match dst.get_mut(len..) {
            Some(out) => inner.decompress(input, out, FlushDecompress::None),
            None => return Err(too_big),
        };
        let consumed = usize::try_from(inner.total_in() - in_before).unwrap_or(usize::MAX);
        let produced = usize::try_from(inner.total_out() - out_before).unwrap_or(0);
        dst.truncate(len + produced);
        input = input.get(consumed..).unwrap_or_default();
        if consumed > 0 {
            *stream_start = false;
        }
        let status = result.map_err(|err| {
            InflateError::Corrupt(err.message().unwrap_or("invalid deflate data").to_owned())
        })?;
        if dst.len() > limit {
            return Err(too_big);
        }
        if status == Status::StreamEnd {
            // A final block (BFINAL=1) ended the DEFLATE stream; what follows
            // starts a new one.
            inner.reset(false);
            *stream_start = true;
        }
        if produced == room {
            // Output full: more may be pending.
            chunk = chunk.saturating_mul(2).min(MAX_INFLATE_CHUNK);
            continue;
        }
        if input.is_empty() {
            return Ok(());
        }
        if consumed == 0 && produced == 0 && status != Status::StreamEnd {
            return Err(InflateError::Corrupt("inflate made no progress".to_owned()));
        }
    }
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InflateError {
    /// The message inflates to more than `limit` bytes (close code 1009).
    TooBig {
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },
    /// The payload is not valid DEFLATE data; the string is the inflater's
    /// reason, e.g. `invalid block type` (close code 1007).
    Corrupt(String),
}

impl fmt::Display for InflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InflateError::TooBig { limit } => {
                write!(f, "decompressed message larger than {limit} bytes")
            }
            InflateError::Corrupt(reason) => write!(f, "corrupt compressed message: {reason}"),
        }
    }
}

impl std::error::Error for InflateError {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use crate::extensions::parse;

    // -- helpers -----------------------------------------------------------

    fn compress(c: &mut Compressor, input: &[u8]) -> Vec<u8> {
        let mut dst = BytesMut::new();
        c.compress(input, &mut dst);
        dst.to_vec()
    }

    fn decompress(d: &mut Decompressor, payload: &[u8]) -> Result<Vec<u8>, InflateError> {
        let mut dst = BytesMut::new();
        d.decompress(payload, true, &mut dst, usize::MAX)?;
        Ok(dst.to_vec())
    }

    /// Deterministic pseudo-random bytes (xorshift).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// A varied corpus: text, JSON, zeros, noise, and data with repeats at
    /// distances from 1 to 40 000 (so a compressor that ignored its window
    /// limit would use long distances).
    fn corpus() -> Vec<Vec<u8>> {
        let text = b"The quick brown fox jumps over the lazy dog. ".repeat(40);
        let json: Vec<u8> = (0..200)
            .flat_map(|i| {
                format!(r#"{{"type":"pad","seq":{i},"axes":[0.12,-0.5],"buttons":[1,0]}}"#)
                    .into_bytes()
            })
            .collect();
        let mut repeats = Vec::new();
        for (period, seed) in [(300, 1), (600, 2), (2000, 3), (9000, 4), (20_000, 5)] {
            let block = noise(period, seed);
            repeats.extend_from_slice(&block);
            repeats.extend_from_slice(&block);
        }
        vec![
            b"Hello".to_vec(),
            Vec::new(),
            text,
            json,
            vec![0; 30_000],
            noise(20_000, 9),
            repeats,
            b"x".to_vec(),
        ]
    }

    /// A test-only DEFLATE decoder (after zlib's `puff.c`) that records the
    /// largest back-reference distance, to check window limits exactly.
    mod puff {
        const LBASE: [u16; 29] = [
            3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99,
            115, 131, 163, 195, 227, 258,
        ];
        const LEXT: [u8; 29] = [
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
        ];
        const DBASE: [u16; 30] = [
            1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025,
            1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
        ];
        const DEXT: [u8; 30] = [
            0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12,
            12, 13, 13,
        ];
        const ORDER: [usize; 19] = [
            16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
        ];

        struct Huffman {
            count: [u16; 16],
            symbol: Vec<u16>,
        }

        fn construct(lengths: &[u8]) -> Huffman {
            let mut count = [0u16; 16];
            for &l in lengths {
                count[l as usize] += 1;
            }
            let mut offs = [0u16; 16];
            for len in 1..15 {
                offs[len + 1] = offs[len] + count[len];
            }
            let mut symbol = vec![0u16; lengths.len()];
            for (sym, &l) in lengths.iter().enumerate() {
                if l != 0 {
                    symbol[offs[l as usize] as usize] = sym as u16;
                    offs[l as usize] += 1;
                }
            }
            Huffman { count, symbol }
        }

        pub(super) struct Puff<'a> {
            input: &'a [u8],
            pos: usize,
            bitbuf: u32,
            bitcnt: u32,
            pub(super) out: Vec<u8>,
            pub(super) max_dist: usize,
        }

        impl<'a> Puff<'a> {
            pub(super) fn new(input: &'a [u8]) -> Self {
                Puff {
                    input,
                    pos: 0,
                    bitbuf: 0,
                    bitcnt: 0,
                    out: Vec::new(),
                    max_dist: 0,
                }
            }

            fn bits(&mut self, need: u32) -> Result<u32, String> {
                let mut val = self.bitbuf;
                while self.bitcnt < need {
                    let b = *self.input.get(self.pos).ok_or("out of input")?;
                    self.pos += 1;
                    val |= u32::from(b) << self.bitcnt;
                    self.bitcnt += 8;
                }
                self.bitbuf = val >> need;
                self.bitcnt -= need;
                Ok(val & ((1 << need) - 1))
            }

            fn decode(&mut self, h: &Huffman) -> Result<usize, String> {
                let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
                for len in 1..16 {
                    code |= self.bits(1)? as i32;
                    let count = i32::from(h.count[len]);
                    if code - count < first {
                        return Ok(h.symbol[(index + (code - first)) as usize] as usize);
                    }
                    index += count;
                    first += count;
                    first <<= 1;
                    code <<= 1;
                }
                Err("bad code".into())
            }

            fn stored(&mut self) -> Result<(), String> {
                self.bitbuf = 0;
                self.bitcnt = 0;
                let hdr = self.input.get(self.pos..self.pos + 4).ok_or("short")?;
                let len = u16::from_le_bytes([hdr[0], hdr[1]]);
                let nlen = u16::from_le_bytes([hdr[2], hdr[3]]);
                if len != !nlen {
                    return Err("stored length mismatch".into());
                }
                self.pos += 4;
                let data = self
                    .input
                    .get(self.pos..self.pos + len as usize)
                    .ok_or("short stored")?;
                self.out.extend_from_slice(data);
                self.pos += len as usize;
                Ok(())
            }

            fn codes(&mut self, lencode: &Huffman, distcode: &Huffman) -> Result<(), String> {
                loop {
                    let sym = self.decode(lencode)?;
                    if sym < 256 {
                        self.out.push(sym as u8);
                    } else if sym == 256 {
                        return Ok(());
                    } else {
                        let sym = sym - 257;
                        if sym >= 29 {
                            return Err("bad length symbol".into());
                        }
                        let len = LBASE[sym] as usize + self.bits(u32::from(LEXT[sym]))? as usize;
                        let dsym = self.decode(distcode)?;
                        if dsym >= 30 {
                            return Err("bad distance symbol".into());
                        }
                        let dist =
                            DBASE[dsym] as usize + self.bits(u32::from(DEXT[dsym]))? as usize;
                        if dist > self.out.len() {
                            return Err("distance too far back".into());
                        }
                        self.max_dist = self.max_dist.max(dist);
                        for _ in 0..len {
                            let b = self.out[self.out.len() - dist];
                            self.out.push(b);
                        }
                    }
                }
            }

            fn fixed(&mut self) -> Result<(), String> {
                let mut lengths = [0u8; 288];
                lengths[..144].fill(8);
                lengths[144..256].fill(9);
                lengths[256..280].fill(7);
                lengths[280..].fill(8);
                let lencode = construct(&lengths);
                let distcode = construct(&[5u8; 30]);
                self.codes(&lencode, &distcode)
            }

            fn dynamic(&mut self) -> Result<(), String> {
                let nlen = self.bits(5)? as usize + 257;
                let ndist = self.bits(5)? as usize + 1;
                let ncode = self.bits(4)? as usize + 4;
                let mut lengths = [0u8; 320];
                for &o in &ORDER[..ncode] {
                    lengths[o] = self.bits(3)? as u8;
                }
                let lencode = construct(&lengths[..19]);
                let mut index = 0;
                while index < nlen + ndist {
                    let sym = self.decode(&lencode)?;
                    if sym < 16 {
                        lengths[index] = sym as u8;
                        index += 1;
                    } else {
                        let (value, repeat) = match sym {
                            16 => (lengths[index - 1], 3 + self.bits(2)?),
                            17 => (0, 3 + self.bits(3)?),
                            _ => (0, 11 + self.bits(7)?),
                        };
                        for _ in 0..repeat {
                            lengths[index] = value;
                            index += 1;
                        }
                    }
                }
                let lencode = construct(&lengths[..nlen]);
                let distcode = construct(&lengths[nlen..nlen + ndist]);
                self.codes(&lencode, &distcode)
            }

            /// Decodes blocks until the input is used up (or a final block).
            pub(super) fn run(&mut self) -> Result<(), String> {
                while self.pos < self.input.len() {
                    let last = self.bits(1)?;
                    match self.bits(2)? {
                        0 => self.stored()?,
                        1 => self.fixed()?,
                        2 => self.dynamic()?,
                        _ => return Err("bad block type".into()),
                    }
                    if last == 1 {
                        break;
                    }
                }
                Ok(())
            }
        }
    }

    /// Compresses `messages` with `c` and checks with the reference decoder
    /// that the stream (each payload plus the appended tail) decodes to them
    /// and never reaches back more than `max_dist` bytes. Returns the largest
    /// distance seen.
    fn check_stream(c: &mut Compressor, messages: &[Vec<u8>], max_dist: usize) -> usize {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        let mut largest = 0;
        for m in messages {
            let payload = compress(c, m);
            stream.extend_from_slice(&payload);
            stream.extend_from_slice(&FLUSH_TAIL);
            expected.extend_from_slice(m);
            if c.no_context_takeover {
                let mut p = puff::Puff::new(&stream);
                p.run().unwrap();
                assert_eq!(p.out, expected);
                largest = largest.max(p.max_dist);
                stream.clear();
                expected.clear();
            }
        }
        let mut p = puff::Puff::new(&stream);
        p.run().unwrap();
        assert_eq!(p.out, expected);
        largest = largest.max(p.max_dist);
        assert!(largest <= max_dist, "distance {largest} > {max_dist}");
        largest
    }

    // -- RFC 7692 §7.2.3 examples -----------------------------------------

    const HELLO: &[u8] = &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    const HELLO_AGAIN: &[u8] = &[0xf2, 0x00, 0x11, 0x00, 0x00];

    #[test]
    fn rfc_7_2_3_1_one_message() {
        let mut d = Decompressor::new(15, false);
        assert_eq!(decompress(&mut d, HELLO).unwrap(), b"Hello");
        // Our compressor: at level 1 to 9 it produces the RFC's own bytes.
        for level in 1..=9 {
            let mut c = Compressor::new(15, level, false);
            assert_eq!(compress(&mut c, b"Hello"), HELLO, "level {level}");
        }
        let mut c = Compressor::new(15, 0, false);
        let stored = compress(&mut c, b"Hello");
        assert_eq!(
            decompress(&mut Decompressor::new(15, false), &stored).unwrap(),
            b"Hello"
        );
    }

    #[test]
    fn rfc_7_2_3_2_context_takeover() {
        let mut d = Decompressor::new(15, false);
        assert_eq!(decompress(&mut d, HELLO).unwrap(), b"Hello");
        assert_eq!(decompress(&mut d, HELLO_AGAIN).unwrap(), b"Hello");
        // Our compressor shares the window the same way: the second message is
        // a back-reference, and our decompressor follows.
        let mut c = Compressor::new(15, 1, false);
        let first = compress(&mut c, b"Hello");
        let second = compress(&mut c, b"Hello");
        assert!(second.len() < first.len(), "{second:02x?}");
        let mut d = Decompressor::new(15, false);
        assert_eq!(decompress(&mut d, &first).unwrap(), b"Hello");
        assert_eq!(decompress(&mut d, &second).unwrap(), b"Hello");
        // Without takeover the second message is independent again.
        let mut c = Compressor::new(15, 1, true);
        assert_eq!(compress(&mut c, b"Hello"), HELLO);
        assert_eq!(compress(&mut c, b"Hello"), HELLO);
    }

    #[test]
    fn rfc_7_2_3_3_stored_block() {
        let payload = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        let mut d = Decompressor::new(15, false);
        assert_eq!(decompress(&mut d, &payload).unwrap(), b"Hello");
    }

    #[test]
    fn rfc_7_2_3_4_bfinal_block() {
        let payload = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        let mut d = Decompressor::new(15, false);
        assert_eq!(decompress(&mut d, &payload).unwrap(), b"Hello");
        // The stream goes on after it.
        assert_eq!(decompress(&mut d, HELLO).unwrap(), b"Hello");
        assert_eq!(decompress(&mut d, &payload).unwrap(), b"Hello");
    }

    #[test]
    fn bfinal_block_without_trailing_empty_block() {
        // "Hello" in a final block, with nothing after it: the tail must not
        // be appended, or the next message would be misread.
        let payload = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let mut d = Decompressor::new(15, false);
        for _ in 0..3 {
            assert_eq!(decompress(&mut d, &payload).unwrap(), b"Hello");
            assert_eq!(decompress(&mut d, HELLO).unwrap(), b"Hello");
            assert_eq!(decompress(&mut d, HELLO_AGAIN).unwrap(), b"Hello");
        }
        // Same, with the final block split over two frames.
        let mut out = BytesMut::new();
        d.decompress(&payload[..3], false, &mut out, 100).unwrap();
        d.decompress(&payload[3..], false, &mut out, 100).unwrap();
        d.decompress(&[], true, &mut out, 100).unwrap();
        assert_eq!(out, b"Hello"[..]);
        assert_eq!(decompress(&mut d, HELLO).unwrap(), b"Hello");
    }

    #[test]
    fn rfc_7_2_3_5_two_blocks() {
        let payload = [
            0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
        ];
        let mut d = Decompressor::new(15, false);
        assert_eq!(decompress(&mut d, &payload).unwrap(), b"Hello");
    }

    #[test]
    fn rfc_7_2_3_6_empty_message() {
        let mut d = Decompressor::new(15, false);
        assert_eq!(decompress(&mut d, &[0x00]).unwrap(), b"");
        for no_context_takeover in [false, true] {
            let mut c = Compressor::new(15, 1, no_context_takeover);
            let mut d = Decompressor::new(15, no_context_takeover);
            for msg in [&b""[..], b"Hello", b"", b"", b"Hello", b""] {
                let payload = compress(&mut c, msg);
                assert!(!payload.is_empty());
                if msg.is_empty() {
                    assert_eq!(payload, [0x00]);
                }
                assert_eq!(decompress(&mut d, &payload).unwrap(), msg);
            }
        }
    }

    // -- round trips -------------------------------------------------------

    #[test]
    fn round_trip_every_window_and_takeover() {
        let corpus = corpus();
        for bits in 8..=15u8 {
            for no_context_takeover in [false, true] {
                let levels: &[u32] = if bits == 15 { &[0, 1, 6, 9] } else { &[1, 9] };
                for &level in levels {
                    let mut c = Compressor::new(bits, level, no_context_takeover);
                    let mut d = Decompressor::new(bits, no_context_takeover);
                    for round in 0..2 {
                        for msg in &corpus {
                            let payload = compress(&mut c, msg);
                            let got = decompress(&mut d, &payload).unwrap();
                            assert!(
                                got == *msg,
                                "bits {bits} nct {no_context_takeover} level {level} round {round}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn compressor_respects_every_window() {
        let corpus = corpus();
        for bits in 8..=15u8 {
            for no_context_takeover in [false, true] {
                for level in [1, 9] {
                    let mut c = Compressor::new(bits, level, no_context_takeover);
                    let largest = check_stream(&mut c, &corpus, 1 << bits);
                    if bits == 8 {
                        // zlib's own bound for its 9-bit window.
                        assert!(largest <= 250, "{largest}");
                    }
                }
            }
        }
    }

    #[test]
    fn reference_decoder_sees_long_distances() {
        // The check above is meaningful: with a 15-bit window the same corpus
        // uses distances far beyond 256.
        let mut c = Compressor::new(15, 6, false);
        let largest = check_stream(&mut c, &corpus(), 1 << 15);
        assert!(largest > 4096, "{largest}");
    }

    #[test]
    fn eight_bit_window_is_decodable_with_a_256_byte_window() {
        // The 8 → 9 substitution: varied data with repeats just beyond 256
        // bytes, all levels, context takeover on; every distance must fit in
        // 256 bytes (checked distance by distance by the reference decoder).
        let mut data = Vec::new();
        for period in [200, 255, 256, 257, 260, 300, 400, 511, 512, 1000] {
            let block = noise(period, period as u64);
            for _ in 0..4 {
                data.extend_from_slice(&block);
            }
        }
        let messages: Vec<Vec<u8>> = data.chunks(3000).map(<[u8]>::to_vec).collect();
        for level in 1..=9 {
            let mut c = Compressor::new(8, level, false);
            check_stream(&mut c, &messages, 256);
        }
    }

    #[test]
    fn fragments_round_trip() {
        for no_context_takeover in [false, true] {
            let mut c = Compressor::new(15, 1, no_context_takeover);
            let mut d = Decompressor::new(15, no_context_takeover);
            for msg in corpus() {
                for pieces in [1, 2, 3, 7] {
                    // Compress in `pieces` fragments; decompress frame by frame.
                    let size = msg.len().div_ceil(pieces).max(1);
                    let chunks: Vec<&[u8]> = if msg.is_empty() {
                        vec![&[]]
                    } else {
                        msg.chunks(size).collect()
                    };
                    let mut out = BytesMut::new();
                    for (i, chunk) in chunks.iter().enumerate() {
                        let fin = i + 1 == chunks.len();
                        let mut frame = BytesMut::new();
                        c.compress_fragment(chunk, fin, &mut frame);
                        if !fin {
                            assert!(frame.ends_with(&FLUSH_TAIL), "sync-flushed");
                        }
                        d.decompress(&frame, fin, &mut out, usize::MAX).unwrap();
                        // Each fragment is flushed, so its data is out already.
                        let sent: usize = chunks[..=i].iter().map(|c| c.len()).sum();
                        assert_eq!(out.len(), sent);
                    }
                    assert_eq!(out, msg);
                }
            }
        }
    }

    #[test]
    fn empty_final_fragment() {
        let mut c = Compressor::new(15, 1, false);
        let mut d = Decompressor::new(15, false);
        let mut frame1 = BytesMut::new();
        c.compress_fragment(b"Hello", false, &mut frame1);
        let mut frame2 = BytesMut::new();
        c.compress_fragment(b"", true, &mut frame2);
        assert_eq!(frame2, [0x00][..]);
        let mut out = BytesMut::new();
        d.decompress(&frame1, false, &mut out, 100).unwrap();
        d.decompress(&frame2, true, &mut out, 100).unwrap();
        assert_eq!(out, b"Hello"[..]);
        // And the stream is still in sync for the next message.
        assert_eq!(
            decompress(&mut d, &compress(&mut c, b"Hello")).unwrap(),
            b"Hello"
        );
    }

    #[test]
    fn payload_split_at_every_byte() {
        let msg = b"permessage-deflate permessage-deflate permessage-deflate".repeat(30);
        let mut c = Compressor::new(15, 6, false);
        let payload = compress(&mut c, &msg);
        for split in 0..=payload.len() {
            let mut d = Decompressor::new(15, false);
            let mut out = BytesMut::new();
            d.decompress(&payload[..split], false, &mut out, usize::MAX)
                .unwrap();
            d.decompress(&payload[split..], true, &mut out, usize::MAX)
                .unwrap();
            assert_eq!(out, msg[..], "split at {split}");
        }
        // One byte per frame.
        let mut d = Decompressor::new(15, false);
        let mut out = BytesMut::new();
        for b in &payload {
            d.decompress(std::slice::from_ref(b), false, &mut out, usize::MAX)
                .unwrap();
        }
        d.decompress(&[], true, &mut out, usize::MAX).unwrap();
        assert_eq!(out, msg[..]);
    }

    #[test]
    fn appends_to_existing_dst() {
        let mut c = Compressor::new(15, 1, false);
        let mut dst = BytesMut::from(&b"head"[..]);
        c.compress(b"Hello", &mut dst);
        assert_eq!(&dst[..4], b"head");
        assert_eq!(&dst[4..], HELLO);
        let mut d = Decompressor::new(15, false);
        let mut out = BytesMut::from(&b">"[..]);
        d.decompress(&dst[4..], true, &mut out, 100).unwrap();
        assert_eq!(out, b">Hello"[..]);
    }

    // -- limits and errors -------------------------------------------------

    #[test]
    fn decompression_bomb_fails_fast_with_bounded_memory() {
        let mut c = Compressor::new(15, 9, false);
        let bomb = compress(&mut c, &vec![0u8; 10 << 20]);
        assert!(bomb.len() < 16 * 1024, "{}", bomb.len());
        let limit = 64 * 1024;
        let mut d = Decompressor::new(15, false);
        let mut dst = BytesMut::new();
        let started = std::time::Instant::now();
        let err = d.decompress(&bomb, true, &mut dst, limit).unwrap_err();
        assert_eq!(err, InflateError::TooBig { limit });
        assert!(dst.is_empty());
        assert!(
            dst.capacity() <= 2 * limit + 1024,
            "capacity {}",
            dst.capacity()
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // Frame by frame too: the limit counts the whole of dst.
        let mut d = Decompressor::new(15, false);
        let mut dst = BytesMut::new();
        let mut result = Ok(());
        for chunk in bomb.chunks(100) {
            result = d.decompress(chunk, false, &mut dst, limit);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(InflateError::TooBig { limit }));
        assert!(dst.capacity() <= 2 * limit + 1024, "{}", dst.capacity());
    }

    #[test]
    fn limit_is_exact() {
        let msg = noise(5000, 7);
        let mut c = Compressor::new(15, 1, true);
        let payload = compress(&mut c, &msg);
        let mut d = Decompressor::new(15, true);
        let mut dst = BytesMut::new();
        d.decompress(&payload, true, &mut dst, 5000).unwrap();
        assert_eq!(dst, msg[..]);
        let mut dst = BytesMut::new();
        assert_eq!(
            d.decompress(&payload, true, &mut dst, 4999),
            Err(InflateError::TooBig { limit: 4999 })
        );
        // The limit covers what dst already held.
        let mut dst = BytesMut::from(&b"12"[..]);
        assert_eq!(
            d.decompress(&payload, true, &mut dst, 5001),
            Err(InflateError::TooBig { limit: 5001 })
        );
        assert_eq!(dst, b"12"[..], "truncated back on error");
        // And the decompressor still works after the error.
        let mut dst = BytesMut::new();
        d.decompress(&payload, true, &mut dst, 5000).unwrap();
        assert_eq!(dst, msg[..]);
    }

    #[test]
    fn corrupt_input() {
        let cases: &[&[u8]] = &[
            &[0xff, 0xff, 0xff],                         // block type 3
            &[0x00, 0x05, 0x00, 0x00, 0x00],             // stored length mismatch
            HELLO_AGAIN,                                 // distance too far back for a fresh stream
            &[0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // bad dynamic header
        ];
        for payload in cases {
            let mut d = Decompressor::new(15, false);
            let err = decompress(&mut d, payload).unwrap_err();
            assert!(
                matches!(err, InflateError::Corrupt(_)),
                "{payload:02x?}: {err:?}"
            );
            assert!(err.to_string().starts_with("corrupt compressed message: "));
            // Reset after the error: the next message decodes.
            assert_eq!(decompress(&mut d, HELLO).unwrap(), b"Hello");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut d = Decompressor::new(15, false);
        for seed in 1..300u64 {
            let junk = noise((seed as usize * 7) % 200, seed);
            let mut dst = BytesMut::new();
            let _ = d.decompress(&junk, seed % 3 == 0, &mut dst, 1 << 16);
            assert!(dst.len() <= 1 << 16);
        }
    }

    #[test]
    fn inflate_error_display() {
        assert_eq!(
            InflateError::TooBig { limit: 10 }.to_string(),
            "decompressed message larger than 10 bytes"
        );
    }

    // -- configuration ----------------------------------------------------

    #[test]
    fn config_defaults_and_setters() {
        let c = DeflateConfig::default();
        assert!(!c.server_no_context_takeover && !c.client_no_context_takeover);
        assert_eq!(
            (
                c.server_max_window_bits,
                c.client_max_window_bits,
                c.level,
                c.threshold
            ),
            (15, 15, 1, 256)
        );
        let c = DeflateConfig::default()
            .server_no_context_takeover(true)
            .client_no_context_takeover(true)
            .server_max_window_bits(9)
            .client_max_window_bits(10)
            .level(6)
            .threshold(0);
        assert_eq!(
            (
                c.server_max_window_bits,
                c.client_max_window_bits,
                c.level,
                c.threshold
            ),
            (9, 10, 6, 0)
        );
        assert!(c.server_no_context_takeover && c.client_no_context_takeover);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn config_validation() {
        for (config, field) in [
            (
                DeflateConfig::default().server_max_window_bits(7),
                SERVER_MAX_WINDOW_BITS,
            ),
            (
                DeflateConfig::default().server_max_window_bits(16),
                SERVER_MAX_WINDOW_BITS,
            ),
            (
                DeflateConfig::default().client_max_window_bits(0),
                CLIENT_MAX_WINDOW_BITS,
            ),
            (DeflateConfig::default().level(10), "level"),
        ] {
            assert_eq!(config.validate().unwrap_err().field(), field);
        }
        assert_eq!(
            DeflateConfig::default()
                .level(10)
                .validate()
                .unwrap_err()
                .to_string(),
            "permessage-deflate level must be in 0..=9, got 10"
        );
        for bits in 8..=15 {
            assert!(
                DeflateConfig::default()
                    .client_max_window_bits(bits)
                    .validate()
                    .is_ok()
            );
        }
        // Out-of-range values never panic anywhere: they are clamped.
        let wild = DeflateConfig::default()
            .server_max_window_bits(0)
            .client_max_window_bits(200)
            .level(99);
        let mut c = DeflateParams::default().server_compressor(&wild);
        let payload = compress(&mut c, b"Hello Hello Hello");
        let mut d = DeflateParams::default().client_decompressor();
        assert_eq!(decompress(&mut d, &payload).unwrap(), b"Hello Hello Hello");
        let offers = parse("permessage-deflate; server_max_window_bits=10").unwrap();
        let (p, h) = negotiate_server(&wild, &offers).unwrap();
        assert_eq!(p.server_max_window_bits, 8);
        assert_eq!(h, "permessage-deflate; server_max_window_bits=8");
        assert_eq!(
            client_offer(&wild),
            "permessage-deflate; server_max_window_bits=8; client_max_window_bits"
        );
    }

    // -- server negotiation -------------------------------------------------

    fn server(config: &DeflateConfig, header: &str) -> Option<(DeflateParams, String)> {
        negotiate_server(config, &parse(header).unwrap())
    }

    fn params(snct: bool, cnct: bool, smwb: u8, cmwb: u8) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover: snct,
            client_no_context_takeover: cnct,
            server_max_window_bits: smwb,
            client_max_window_bits: cmwb,
        }
    }

    #[test]
    fn server_autobahn_offers() {
        let config = DeflateConfig::default();
        let cases = [
            // 13.1 / browsers
            (
                "permessage-deflate; client_max_window_bits",
                "permessage-deflate",
                params(false, false, 15, 15),
            ),
            (
                "permessage-deflate; client_no_context_takeover; client_max_window_bits",
                "permessage-deflate",
                params(false, false, 15, 15),
            ),
            // 13.2
            (
                "permessage-deflate; client_no_context_takeover; client_max_window_bits; \
                 server_no_context_takeover",
                "permessage-deflate; server_no_context_takeover",
                params(true, false, 15, 15),
            ),
            // 13.3 / 13.4 and the 9-bit variant
            (
                "permessage-deflate; client_no_context_takeover; client_max_window_bits; \
                 server_max_window_bits=8",
                "permessage-deflate; server_max_window_bits=8",
                params(false, false, 8, 15),
            ),
            (
                "permessage-deflate; client_max_window_bits; server_max_window_bits=9",
                "permessage-deflate; server_max_window_bits=9",
                params(false, false, 9, 15),
            ),
            (
                "permessage-deflate; client_no_context_takeover; client_max_window_bits; \
                 server_max_window_bits=15",
                "permessage-deflate; server_max_window_bits=15",
                params(false, false, 15, 15),
            ),
            // 13.5 / 13.6
            (
                "permessage-deflate; client_no_context_takeover; client_max_window_bits; \
                 server_no_context_takeover; server_max_window_bits=8",
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=8",
                params(true, false, 8, 15),
            ),
            (
                "permessage-deflate; client_no_context_takeover; client_max_window_bits; \
                 server_no_context_takeover; server_max_window_bits=15",
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=15",
                params(true, false, 15, 15),
            ),
            // 13.7: the multi-offer list, the first one wins
            (
                "permessage-deflate; client_no_context_takeover; client_max_window_bits; \
                 server_no_context_takeover; server_max_window_bits=8, \
                 permessage-deflate; client_no_context_takeover; client_max_window_bits; \
                 server_no_context_takeover, \
                 permessage-deflate; client_no_context_takeover; client_max_window_bits",
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=8",
                params(true, false, 8, 15),
            ),
            (
                "permessage-deflate",
                "permessage-deflate",
                params(false, false, 15, 15),
            ),
        ];
        for (offer, response, want) in cases {
            let (got, header) = server(&config, offer).unwrap();
            assert_eq!(header, response, "{offer}");
            assert_eq!(got, want, "{offer}");
            // The response parses and the client side accepts it.
            let resp = &parse(&header).unwrap()[0];
            assert_eq!(parse_params(resp).map(|_| ()), Ok(()));
        }
    }

    #[test]
    fn server_config_shapes_the_response() {
        let offer = "permessage-deflate; client_max_window_bits";
        let c = DeflateConfig::default().server_no_context_takeover(true);
        assert_eq!(
            server(&c, offer).unwrap().1,
            "permessage-deflate; server_no_context_takeover"
        );
        // client_no_context_takeover may be required whether offered or not.
        let c = DeflateConfig::default().client_no_context_takeover(true);
        for offer in [
            "permessage-deflate",
            "permessage-deflate; client_no_context_takeover",
        ] {
            let (p, h) = server(&c, offer).unwrap();
            assert_eq!(h, "permessage-deflate; client_no_context_takeover");
            assert!(p.client_no_context_takeover);
        }
        // client_max_window_bits.
        let c10 = DeflateConfig::default().client_max_window_bits(10);
        let d = DeflateConfig::default();
        for (config, offer, response, cmwb) in [
            (
                &c10,
                "permessage-deflate; client_max_window_bits",
                "permessage-deflate; client_max_window_bits=10",
                10,
            ),
            (
                &c10,
                "permessage-deflate; client_max_window_bits=12",
                "permessage-deflate; client_max_window_bits=10",
                10,
            ),
            (
                &c10,
                "permessage-deflate; client_max_window_bits=9",
                "permessage-deflate; client_max_window_bits=9",
                9,
            ),
            (&c10, "permessage-deflate", "permessage-deflate", 15),
            (
                &d,
                "permessage-deflate; client_max_window_bits=9",
                "permessage-deflate; client_max_window_bits=9",
                9,
            ),
            (
                &d,
                "permessage-deflate; client_max_window_bits=15",
                "permessage-deflate; client_max_window_bits=15",
                15,
            ),
            (
                &d,
                "permessage-deflate; client_max_window_bits=\"11\"",
                "permessage-deflate; client_max_window_bits=11",
                11,
            ),
        ] {
            let (p, h) = server(config, offer).unwrap();
            assert_eq!(h, response, "{offer}");
            assert_eq!(p.client_max_window_bits, cmwb, "{offer}");
        }
        // server_max_window_bits.
        let s10 = DeflateConfig::default().server_max_window_bits(10);
        for (offer, response, smwb) in [
            (
                "permessage-deflate; server_max_window_bits=12",
                "permessage-deflate; server_max_window_bits=10",
                10,
            ),
            (
                "permessage-deflate; server_max_window_bits=9",
                "permessage-deflate; server_max_window_bits=9",
                9,
            ),
            // Not offered: not in the response, but we still compress with 10.
            ("permessage-deflate", "permessage-deflate", 15),
        ] {
            let (p, h) = server(&s10, offer).unwrap();
            assert_eq!(h, response, "{offer}");
            assert_eq!(p.server_max_window_bits, smwb, "{offer}");
            assert_eq!(p.server_compressor(&s10).window_bits, smwb.min(10));
        }
        // Everything at once, in the canonical order.
        let all = DeflateConfig::default()
            .server_no_context_takeover(true)
            .client_no_context_takeover(true)
            .server_max_window_bits(12)
            .client_max_window_bits(11);
        let (p, h) = server(
            &all,
            "permessage-deflate; client_max_window_bits; server_max_window_bits=13",
        )
        .unwrap();
        assert_eq!(
            h,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=12; client_max_window_bits=11"
        );
        assert_eq!(p, params(true, true, 12, 11));
        assert_eq!(p.to_header_value(), h);
    }

    #[test]
    fn server_skips_malformed_offers() {
        let config = DeflateConfig::default();
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; foo=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"x\"",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=abc",
            "permessage-deflate; server_max_window_bits=+9",
            "permessage-deflate; server_max_window_bits=9999999999999",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; client_max_window_bits=1a",
        ] {
            assert_eq!(server(&config, bad), None, "{bad}");
            // A valid offer after it is taken.
            let (p, h) = server(
                &config,
                &format!("{bad}, permessage-deflate; server_max_window_bits=10"),
            )
            .unwrap();
            assert_eq!(h, "permessage-deflate; server_max_window_bits=10", "{bad}");
            assert_eq!(p.server_max_window_bits, 10);
        }
        // Other extensions are ignored; none offered is no deflate.
        assert_eq!(server(&config, "x-webkit-deflate-frame"), None);
        assert_eq!(negotiate_server(&config, &[]), None);
        let (_, h) = server(&config, "x-webkit-deflate-frame, permessage-deflate").unwrap();
        assert_eq!(h, "permessage-deflate");
        // 1*DIGIT allows leading zeros; names are matched case-insensitively.
        let (p, _) = server(&config, "Permessage-Deflate; Server_Max_Window_Bits=010").unwrap();
        assert_eq!(p.server_max_window_bits, 10);
    }

    #[test]
    fn to_header_value() {
        assert_eq!(
            DeflateParams::default().to_header_value(),
            "permessage-deflate"
        );
        assert_eq!(
            params(true, false, 15, 12).to_header_value(),
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=12"
        );
        assert_eq!(
            params(false, true, 9, 15).to_header_value(),
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=9"
        );
    }

    // -- client negotiation -------------------------------------------------

    #[test]
    fn client_offers() {
        let d = DeflateConfig::default();
        assert_eq!(
            client_offer(&d),
            "permessage-deflate; client_max_window_bits"
        );
        assert_eq!(
            client_offer(
                &d.clone()
                    .server_max_window_bits(10)
                    .client_max_window_bits(9)
            ),
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits=9"
        );
        assert_eq!(
            client_offer(
                &d.clone()
                    .server_no_context_takeover(true)
                    .client_no_context_takeover(true)
            ),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             client_max_window_bits"
        );
        // Every offer we make is one our own server accepts.
        let all = d
            .clone()
            .server_no_context_takeover(true)
            .client_no_context_takeover(true)
            .server_max_window_bits(8)
            .client_max_window_bits(8);
        let (p, _) = server(&DeflateConfig::default(), &client_offer(&all)).unwrap();
        assert_eq!(p, params(true, false, 8, 8));
    }

    fn accept(
        config: &DeflateConfig,
        response: &str,
    ) -> Result<DeflateParams, DeflateNegotiationError> {
        client_accept(config, &parse(response).unwrap()[0])
    }

    #[test]
    fn client_accepts_valid_responses() {
        let d = DeflateConfig::default();
        for (response, want) in [
            ("permessage-deflate", params(false, false, 15, 15)),
            (
                "permessage-deflate; server_no_context_takeover",
                params(true, false, 15, 15),
            ),
            (
                "permessage-deflate; client_no_context_takeover",
                params(false, true, 15, 15),
            ),
            // Not asked for, but a smaller server window is fine.
            (
                "permessage-deflate; server_max_window_bits=10",
                params(false, false, 10, 15),
            ),
            (
                "permessage-deflate; server_max_window_bits=15",
                params(false, false, 15, 15),
            ),
            (
                "permessage-deflate; client_max_window_bits=8",
                params(false, false, 15, 8),
            ),
            (
                "permessage-deflate; client_max_window_bits=15",
                params(false, false, 15, 15),
            ),
            (
                "permessage-deflate; client_max_window_bits=\"9\"",
                params(false, false, 15, 9),
            ),
        ] {
            assert_eq!(accept(&d, response), Ok(want), "{response}");
        }
        // With limits asked for.
        let c = d
            .clone()
            .server_no_context_takeover(true)
            .client_no_context_takeover(true)
            .server_max_window_bits(10)
            .client_max_window_bits(12);
        assert_eq!(
            accept(
                &c,
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=10"
            ),
            // We offered client_no_context_takeover, so we comply.
            Ok(params(true, true, 10, 15))
        );
        assert_eq!(
            accept(
                &c,
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=9; client_max_window_bits=11"
            ),
            Ok(params(true, true, 9, 11))
        );
        // No client_max_window_bits in the response: our compressor still uses
        // our own 12.
        let p = accept(
            &c,
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
        )
        .unwrap();
        assert_eq!(p.client_compressor(&c).window_bits, 12);
        assert_eq!(p.client_decompressor().window_bits(), 10);
    }

    #[test]
    fn client_rejects_invalid_responses() {
        let d = DeflateConfig::default();
        for response in [
            "x-webkit-deflate-frame",
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=1",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=x",
            "permessage-deflate; client_max_window_bits=9; client_max_window_bits=9",
        ] {
            let err = accept(&d, response).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("permessage-deflate negotiation failed: "),
                "{err}"
            );
        }
        let c = d
            .clone()
            .server_max_window_bits(10)
            .client_max_window_bits(12)
            .server_no_context_takeover(true);
        for response in [
            // Above what we offered / asked.
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; client_max_window_bits=13",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=11",
            // Missing what we asked for.
            "permessage-deflate; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits=10",
        ] {
            assert!(accept(&c, response).is_err(), "{response}");
        }
        assert_eq!(
            accept(
                &c,
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=11"
            )
            .unwrap_err()
            .to_string(),
            "permessage-deflate negotiation failed: server chose server_max_window_bits=11, \
             above the 10 we asked for"
        );
    }

    #[test]
    fn server_and_client_agree() {
        // Whatever configs the two ends have, the client accepts what the
        // server answers to the client's offer, and both ends' codecs talk.
        let configs = [
            DeflateConfig::default(),
            DeflateConfig::default().server_no_context_takeover(true),
            DeflateConfig::default().client_no_context_takeover(true),
            DeflateConfig::default()
                .server_max_window_bits(8)
                .client_max_window_bits(9),
            DeflateConfig::default()
                .server_max_window_bits(12)
                .client_max_window_bits(8)
                .level(9),
        ];
        for client in &configs {
            for srv in &configs {
                let offers = parse(&client_offer(client)).unwrap();
                let (sp, header) = negotiate_server(srv, &offers).unwrap();
                let cp = client_accept(client, &parse(&header).unwrap()[0]).unwrap();
                assert_eq!(cp.server_no_context_takeover, sp.server_no_context_takeover);
                assert_eq!(cp.server_max_window_bits, sp.server_max_window_bits);
                assert_eq!(cp.client_max_window_bits, sp.client_max_window_bits);
                let mut sc = sp.server_compressor(srv);
                let mut cd = cp.client_decompressor();
                let mut cc = cp.client_compressor(client);
                let mut sd = sp.server_decompressor();
                for msg in corpus().iter().take(4) {
                    assert_eq!(decompress(&mut cd, &compress(&mut sc, msg)).unwrap(), *msg);
                    assert_eq!(decompress(&mut sd, &compress(&mut cc, msg)).unwrap(), *msg);
                }
            }
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn round_trip(
                messages in proptest::collection::vec(
                    prop_oneof![
                        proptest::collection::vec(any::<u8>(), 0..2000),
                        proptest::collection::vec(0u8..4, 0..5000),
                    ],
                    1..6,
                ),
                bits in 8u8..=15,
                level in 0u32..=9,
                no_context_takeover: bool,
                frame in 1usize..64,
            ) {
                let mut c = Compressor::new(bits, level, no_context_takeover);
                let mut d = Decompressor::new(bits, no_context_takeover);
                for msg in &messages {
                    let payload = compress(&mut c, msg);
                    // Deliver in frames of `frame` bytes.
                    let mut out = BytesMut::new();
                    let mut chunks = payload.chunks(frame).peekable();
                    while let Some(chunk) = chunks.next() {
                        d.decompress(chunk, chunks.peek().is_none(), &mut out, usize::MAX).unwrap();
                    }
                    prop_assert_eq!(&out[..], &msg[..]);
                }
            }

            #[test]
            fn arbitrary_payloads_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..300), limit in 0usize..5000) {
                let mut d = Decompressor::new(15, false);
                let mut dst = BytesMut::new();
                if d.decompress(&payload, true, &mut dst, limit).is_ok() {
                    prop_assert!(dst.len() <= limit);
                }
            }

            #[test]
            fn any_offer_is_answered_validly(header in "permessage-deflate(; (server_no_context_takeover|client_no_context_takeover|server_max_window_bits=(7|8|9|12|15|16)|client_max_window_bits(=(8|10|15|16))?)){0,4}") {
                let offers = parse(&header).unwrap();
                if let Some((params, response)) = negotiate_server(&DeflateConfig::default(), &offers) {
                    let resp = &parse(&response).unwrap()[0];
                    let raw = parse_params(resp).unwrap();
                    prop_assert!(!matches!(raw.client_max_window_bits, Some(None)));
                    prop_assert!((8..=15).contains(&params.server_max_window_bits));
                    prop_assert!((8..=15).contains(&params.client_max_window_bits));
                }
            }
        }
    }
}
