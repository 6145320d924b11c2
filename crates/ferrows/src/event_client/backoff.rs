//! Reconnection delays.

use std::time::Duration;

use crate::error::{Error, Result};

/// Reconnection delays: `initial`, then multiplied by `factor` after each
/// failed attempt up to `max`, each reduced by a random fraction of up to
/// `jitter` so that many clients do not reconnect in step. The delay
/// starts over at `initial` once a connection succeeds.
///
/// ```
/// use std::time::Duration;
/// let b = ferrows::event_client::Backoff::default();
/// assert_eq!(b.base_delay(0), Duration::from_secs(1));
/// assert_eq!(b.base_delay(3), Duration::from_secs(8));
/// assert_eq!(b.base_delay(10), Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Backoff {
    /// The first delay. Default: 1 s (at least 1 ms).
    pub initial: Duration,
    /// The longest delay. Default: 30 s.
    pub max: Duration,
    /// The growth per failed attempt (at least 1). Default: 2.
    pub factor: f64,
    /// The largest fraction taken off each delay at random, from 0 (no
    /// jitter) to 1. Default: 0.5 ("equal jitter": between half and all of
    /// the delay).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            factor: 2.0,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// Delays from `initial` to `max`, growing by `factor`, with the
    /// default jitter.
    pub fn new(initial: Duration, max: Duration, factor: f64) -> Backoff {
        Backoff {
            initial,
            max,
            factor,
            ..Backoff::default()
        }
    }

    /// Sets [`Backoff::jitter`] (0 for exact, predictable delays).
    pub fn jitter(mut self, fraction: f64) -> Backoff {
        self.jitter = fraction;
        self
    }

    /// The delay before attempt `attempt + 1` after `attempt` failures in
    /// a row, before jitter: `min(max, initial × factor^attempt)`.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.factor.powi(exp);
        if !secs.is_finite() {
            return self.max;
        }
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The delay after `attempt` failures, with jitter applied.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.base_delay(attempt)
            .mul_f64(1.0 - self.jitter * random_unit())
    }

    pub(super) fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::Config(format!("backoff: {why}")));
        if self.initial < Duration::from_millis(1) {
            return bad("the initial delay must be at least 1 ms");
        }
        if self.max < self.initial {
            return bad("the maximum delay must not be below the initial one");
        }
        if !(self.factor >= 1.0 && self.factor.is_finite()) {
            return bad("the factor must be a finite number of at least 1");
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad("the jitter must be between 0 and 1");
        }
        Ok(())
    }
}

/// A number in `[0, 1)`, different on every call: enough to spread
/// reconnection times, without a dependency on a random number crate.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    // Every `RandomState` gets fresh keys, from a per-thread random seed.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let bits = h.finish() >> 11;
    // 53 bits: exactly representable.
    bits as f64 / (1u64 << 53) as f64
}
