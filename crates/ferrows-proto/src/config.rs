//! Receive limits.

/// Bounds on what a peer may send, and how strictly its framing is read.
///
/// Every size limit maps to close code 1009 (message too big) when exceeded;
/// the strictness switches relax rules that otherwise fail the connection
/// with 1002 (protocol error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The largest message, after decompression, in bytes.
    ///
    /// Default: 64 MiB, like tungstenite. A message is held in memory whole
    /// before it is delivered, so this bounds memory per connection; servers
    /// facing the internet usually want far less (the echo server defaults to
    /// 64 KiB, as websocket-echo-server does).
    pub max_message_size: usize,
    /// The largest single frame payload, in bytes. Default: 16 MiB. The
    /// effective limit is the smaller of this and `max_message_size`.
    pub max_frame_size: usize,
    /// The most frames one message may be split into. Default: 65 536.
    /// Bounds the per-frame overhead a peer can make us pay for one message
    /// (a flood of empty continuation frames).
    pub max_fragments: usize,
    /// Accept payload lengths that are not minimally encoded. Default: `false`.
    ///
    /// RFC 6455 §5.2 says "the minimal number of bytes MUST be used to encode
    /// the length": a 16-bit length (marker 126) below 126, or a 64-bit one
    /// (marker 127) below 65 536, breaks it. By default such a frame fails
    /// the connection with 1002 ([`crate::ProtocolError::NonMinimalLength`]);
    /// set this to interoperate with a sloppy peer that cannot be fixed.
    pub allow_non_minimal_lengths: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_size: 64 << 20,
            max_frame_size: 16 << 20,
            max_fragments: 65_536,
            allow_non_minimal_lengths: false,
        }
    }
}

impl Limits {
    /// Sets [`Limits::max_message_size`].
    pub fn max_message_size(mut self, bytes: usize) -> Limits {
        self.max_message_size = bytes;
        self
    }

    /// Sets [`Limits::max_frame_size`].
    pub fn max_frame_size(mut self, bytes: usize) -> Limits {
        self.max_frame_size = bytes;
        self
    }

    /// Sets [`Limits::max_fragments`].
    pub fn max_fragments(mut self, count: usize) -> Limits {
        self.max_fragments = count;
        self
    }

    /// Sets [`Limits::allow_non_minimal_lengths`].
    pub fn allow_non_minimal_lengths(mut self, allow: bool) -> Limits {
        self.allow_non_minimal_lengths = allow;
        self
    }
}
