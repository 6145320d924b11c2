//! Latency histograms and their summaries.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded exactly: an hour, in nanoseconds. Longer ones
/// are recorded as an hour (a run is far shorter).
const HIGHEST_NS: u64 = 3_600_000_000_000;

/// A histogram of durations in nanoseconds, three significant digits.
#[derive(Debug, Clone)]
pub(crate) struct Latencies(Histogram<u64>);

impl Latencies {
    /// An empty histogram.
    #[allow(clippy::expect_used)]
    pub(crate) fn new() -> Latencies {
        // Constant, valid bounds (low 1, high >= 2 * low, 3 significant
        // digits): `new_with_bounds` fails only for invalid ones.
        let h = Histogram::new_with_bounds(1, HIGHEST_NS, 3).expect("valid histogram bounds");
        Latencies(h)
    }

    /// Records one duration.
    #[inline]
    pub(crate) fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.0.saturating_record(ns);
    }

    /// Adds every value of `other`.
    pub(crate) fn merge(&mut self, other: &Latencies) {
        // Both have the same bounds, so adding cannot fail; if it ever
        // did, the values are added one by one, saturating.
        if self.0.add(&other.0).is_err() {
            for v in other.0.iter_recorded() {
                self.0
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// The summary, in microseconds; `None` when empty.
    pub(crate) fn summary(&self) -> Option<Summary> {
        if self.0.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Summary {
            count: self.0.len(),
            min_us: us(self.0.min()),
            mean_us: self.0.mean() / 1000.0,
            p50_us: us(self.0.value_at_quantile(0.50)),
            p90_us: us(self.0.value_at_quantile(0.90)),
            p99_us: us(self.0.value_at_quantile(0.99)),
            p999_us: us(self.0.value_at_quantile(0.999)),
            max_us: us(self.0.max()),
        })
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Summary {
    /// Values recorded.
    pub(crate) count: u64,
    /// Smallest.
    pub(crate) min_us: f64,
    /// Mean.
    pub(crate) mean_us: f64,
    /// Median.
    pub(crate) p50_us: f64,
    /// 90th percentile.
    pub(crate) p90_us: f64,
    /// 99th percentile.
    pub(crate) p99_us: f64,
    /// 99.9th percentile.
    pub(crate) p999_us: f64,
    /// Largest.
    pub(crate) max_us: f64,
}

/// Formats microseconds with a unit that keeps three or four digits.
pub(crate) fn fmt_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

/// Formats a count with thousands separators.
pub(crate) fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Formats a rate with thousands separators, no decimals.
pub(crate) fn fmt_rate(r: f64) -> String {
    if r.is_finite() && r >= 0.0 {
        fmt_count(r.round() as u64)
    } else {
        "-".to_owned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn percentiles() {
        let mut h = Latencies::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary().unwrap();
        assert_eq!(s.count, 1000);
        assert!((s.p50_us - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() < 2.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() < 1.0, "{s:?}");
        let mut other = Latencies::new();
        other.record(Duration::from_secs(2));
        h.merge(&other);
        assert_eq!(h.summary().unwrap().count, 1001);
        assert!(h.summary().unwrap().max_us >= 1_999_000.0);
        assert!(Latencies::new().summary().is_none());
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(1234), "1,234");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
        assert_eq!(fmt_us(412.4), "412 µs");
        assert_eq!(fmt_us(1200.0), "1.20 ms");
        assert_eq!(fmt_us(2_500_000.0), "2.50 s");
    }
}
