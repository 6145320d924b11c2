//! Connection settings.

use std::time::Duration;

use ferrows_proto::Limits;
use ferrows_proto::deflate::DeflateConfig;
use ferrows_proto::handshake::HandshakeLimits;

use crate::metrics::Metrics;

/// Settings of a WebSocket connection, for either role.
///
/// Every field has a documented default; the by-value setters chain:
///
/// ```
/// use std::time::Duration;
/// let config = ferrows::Config::default()
///     .max_message_size(1 << 20)
///     .close_timeout(Duration::from_secs(2))
///     .compression(true);
/// assert_eq!(config.limits.max_message_size, 1 << 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Message, frame and fragment limits (defaults: 64 MiB, 16 MiB, 65 536;
    /// see [`Limits`]). A peer exceeding one is failed with close code 1009.
    pub limits: Limits,
    /// Sends wait while more than this many bytes are queued for writing.
    /// Default: 64 KiB. Bounds the memory a slow reader can make a
    /// connection hold, and is where backpressure reaches the application.
    pub write_high_water_mark: usize,
    /// How long the opening handshake may take, from the first byte to the
    /// end of the request (server) or response (client). Default: 10 s.
    pub handshake_timeout: Duration,
    /// How long to wait for the peer's close frame after sending ours, and
    /// for the TCP close after the close handshake. Default: 5 s.
    pub close_timeout: Duration,
    /// Answer pings with pongs automatically. Default: true. Pings are still
    /// delivered to the application as [`crate::Message::Ping`].
    pub auto_pong: bool,
    /// permessage-deflate (RFC 7692): `None` (the default) neither offers
    /// (client) nor accepts (server) it. Compression costs CPU and about
    /// 300 KiB per connection at the largest window, so it is opt-in.
    pub compression: Option<DeflateConfig>,
    /// Bounds on the HTTP head of the opening handshake (16 KiB, 64 fields).
    pub handshake_limits: HandshakeLimits,
    /// Counters every connection made with this config adds to, and every
    /// handshake answered with it (see [`crate::metrics`]). Default: none,
    /// which costs nothing.
    pub metrics: Option<Metrics>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            limits: Limits::default(),
            write_high_water_mark: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            auto_pong: true,
            compression: None,
            handshake_limits: HandshakeLimits::default(),
            metrics: None,
        }
    }
}

impl Config {
    /// Sets the largest message accepted, in bytes (after decompression).
    pub fn max_message_size(mut self, bytes: usize) -> Config {
        self.limits.max_message_size = bytes;
        self
    }

    /// Sets the largest frame accepted, in bytes.
    pub fn max_frame_size(mut self, bytes: usize) -> Config {
        self.limits.max_frame_size = bytes;
        self
    }

    /// Sets the most frames a message may be split into.
    pub fn max_fragments(mut self, count: usize) -> Config {
        self.limits.max_fragments = count;
        self
    }

    /// Sets [`Config::write_high_water_mark`].
    pub fn write_high_water_mark(mut self, bytes: usize) -> Config {
        self.write_high_water_mark = bytes;
        self
    }

    /// Sets [`Config::handshake_timeout`].
    pub fn handshake_timeout(mut self, timeout: Duration) -> Config {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets [`Config::close_timeout`].
    pub fn close_timeout(mut self, timeout: Duration) -> Config {
        self.close_timeout = timeout;
        self
    }

    /// Sets [`Config::auto_pong`].
    pub fn auto_pong(mut self, on: bool) -> Config {
        self.auto_pong = on;
        self
    }

    /// Turns permessage-deflate on with default parameters, or off.
    pub fn compression(mut self, on: bool) -> Config {
        self.compression = on.then(DeflateConfig::default);
        self
    }

    /// Turns permessage-deflate on with these parameters.
    pub fn deflate(mut self, deflate: DeflateConfig) -> Config {
        self.compression = Some(deflate);
        self
    }

    /// Sets the handshake head limits.
    pub fn handshake_limits(mut self, limits: HandshakeLimits) -> Config {
        self.handshake_limits = limits;
        self
    }

    /// Counts into `metrics` (see [`Config::metrics`](field@Config::metrics)).
    pub fn metrics(mut self, metrics: Metrics) -> Config {
        self.metrics = Some(metrics);
        self
    }

    /// Checks the settings are usable.
    pub fn validate(&self) -> Result<(), crate::Error> {
        if let Some(d) = &self.compression {
            d.validate()
                .map_err(|e| crate::Error::Config(format!("compression: {e}")))?;
        }
        if self.limits.max_message_size == 0 || self.limits.max_frame_size == 0 {
            return Err(crate::Error::Config(
                "message and frame size limits must be positive".into(),
            ));
        }
        if self.write_high_water_mark == 0 {
            return Err(crate::Error::Config(
                "the write high-water mark must be positive".into(),
            ));
        }
        Ok(())
    }
}
