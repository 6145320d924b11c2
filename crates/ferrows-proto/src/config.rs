//! Receive limits.

/// Bounds on what a peer may send. Every limit maps to close code 1009
/// (message too big) when exceeded.
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
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_size: 64 << 20,
            max_frame_size: 16 << 20,
            max_fragments: 65_536,
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
}
