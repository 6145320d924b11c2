//! permessage-deflate (RFC 7692). Stub.

use crate::extensions::ExtensionOffer;
use std::fmt;

/// Settings of one endpoint (both roles use the same struct).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateConfig {
    /// server_no_context_takeover.
    pub server_no_context_takeover: bool,
    /// client_no_context_takeover.
    pub client_no_context_takeover: bool,
    /// server_max_window_bits.
    pub server_max_window_bits: u8,
    /// client_max_window_bits.
    pub client_max_window_bits: u8,
    /// level.
    pub level: u32,
    /// threshold.
    pub threshold: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            level: 1,
            threshold: 256,
        }
    }
}

impl DeflateConfig {
    /// Setter.
    #[must_use]
    pub fn server_no_context_takeover(mut self, v: bool) -> Self {
        self.server_no_context_takeover = v;
        self
    }
    /// Setter.
    #[must_use]
    pub fn client_no_context_takeover(mut self, v: bool) -> Self {
        self.client_no_context_takeover = v;
        self
    }
    /// Setter.
    #[must_use]
    pub fn server_max_window_bits(mut self, v: u8) -> Self {
        self.server_max_window_bits = v;
        self
    }
    /// Setter.
    #[must_use]
    pub fn client_max_window_bits(mut self, v: u8) -> Self {
        self.client_max_window_bits = v;
        self
    }
    /// Setter.
    #[must_use]
    pub fn level(mut self, v: u32) -> Self {
        self.level = v;
        self
    }
    /// Setter.
    #[must_use]
    pub fn threshold(mut self, v: usize) -> Self {
        self.threshold = v;
        self
    }
    /// Validate.
    ///
    /// # Errors
    /// Out of range.
    pub fn validate(&self) -> Result<(), DeflateConfigError> {
        Ok(())
    }
}

/// Config error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateConfigError {
    reason: &'static str,
}
impl fmt::Display for DeflateConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)
    }
}
impl std::error::Error for DeflateConfigError {}

/// Negotiation error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateNegotiationError {
    reason: String,
}
impl fmt::Display for DeflateNegotiationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}
impl std::error::Error for DeflateNegotiationError {}

/// What one connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// server_no_context_takeover.
    pub server_no_context_takeover: bool,
    /// client_no_context_takeover.
    pub client_no_context_takeover: bool,
    /// server_max_window_bits.
    pub server_max_window_bits: u8,
    /// client_max_window_bits.
    pub client_max_window_bits: u8,
}

impl DeflateParams {
    /// Response header value.
    pub fn to_header_value(&self) -> String {
        String::from("permessage-deflate")
    }
}

/// Server negotiation.
pub fn negotiate_server(
    config: &DeflateConfig,
    offers: &[ExtensionOffer],
) -> Option<(DeflateParams, String)> {
    let _ = (config, offers);
    None
}

/// Client offer.
pub fn client_offer(config: &DeflateConfig) -> String {
    let _ = config;
    String::from("permessage-deflate; client_max_window_bits")
}

/// Client accept.
///
/// # Errors
/// Invalid response.
pub fn client_accept(
    config: &DeflateConfig,
    response: &ExtensionOffer,
) -> Result<DeflateParams, DeflateNegotiationError> {
    let _ = (config, response);
    Err(DeflateNegotiationError {
        reason: String::from("unimplemented"),
    })
}

/// Compressor.
#[derive(Debug)]
pub struct Compressor {
    _p: (),
}
impl Compressor {
    /// New.
    pub fn new(window_bits: u8, level: u32, no_context_takeover: bool) -> Compressor {
        let _ = (window_bits, level, no_context_takeover);
        Compressor { _p: () }
    }
    /// Compress.
    pub fn compress(&mut self, input: &[u8], dst: &mut bytes::BytesMut) {
        let _ = (input, dst);
    }
    /// Compress fragment.
    pub fn compress_fragment(&mut self, input: &[u8], fin: bool, dst: &mut bytes::BytesMut) {
        let _ = (input, fin, dst);
    }
}

/// Decompressor.
#[derive(Debug)]
pub struct Decompressor {
    _p: (),
}
impl Decompressor {
    /// New.
    pub fn new(window_bits: u8, no_context_takeover: bool) -> Decompressor {
        let _ = (window_bits, no_context_takeover);
        Decompressor { _p: () }
    }
    /// Decompress.
    ///
    /// # Errors
    /// Too big or corrupt.
    pub fn decompress(
        &mut self,
        input: &[u8],
        fin: bool,
        dst: &mut bytes::BytesMut,
        limit: usize,
    ) -> Result<(), InflateError> {
        let _ = (input, fin, dst, limit);
        Ok(())
    }
}

/// Inflate error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InflateError {
    /// Too big.
    TooBig {
        /// Limit.
        limit: usize,
    },
    /// Corrupt.
    Corrupt(String),
}
impl fmt::Display for InflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InflateError::TooBig { limit } => write!(f, "message larger than {limit} bytes"),
            InflateError::Corrupt(s) => write!(f, "corrupt deflate data: {s}"),
        }
    }
}
impl std::error::Error for InflateError {}
