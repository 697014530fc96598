//! Latency recording: an HDR histogram per worker thread, merged at the end.
//!
//! Values are recorded in nanoseconds with three significant digits (a relative error
//! under 0.1%), from 1 ns to 100 s; a longer latency is recorded as 100 s rather than
//! lost. Percentiles are reported in microseconds.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::hdr::Intervals;

/// The longest latency the histogram tells apart, in nanoseconds.
const HIGHEST_NS: u64 = 100_000_000_000;

/// One thread's (or, merged, one run's) latencies.
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
    /// With `--hdr-log`: the same values cut into intervals of the window.
    intervals: Option<Intervals>,
}

/// The figures a report shows of a [`Latency`].
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    pub fn new() -> Latency {
        Latency {
            hist: Histogram::new_with_bounds(1, HIGHEST_NS, 3).expect("valid histogram bounds"),
            intervals: None,
        }
    }

    /// A latency whose values are also kept per interval of `every` over the window
    /// `window` from `origin` (for `--hdr-log`; `every` zero: one interval).
    pub fn with_intervals(origin: Instant, every: Duration, window: Duration) -> Latency {
        let mut latency = Latency::new();
        latency.intervals = Some(Intervals::new(origin, every, window, &latency.hist));
        latency
    }

    /// A latency of the values of `hist` (decoded from a log or a JSON document).
    pub fn from_histogram(hist: Histogram<u64>) -> Latency {
        Latency {
            hist,
            intervals: None,
        }
    }

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.hist.saturating_record(ns.max(1));
    }

    /// Forgets every value (keeps the memory).
    pub fn reset(&mut self) {
        self.hist.reset();
    }

    /// Records one latency measured at `at` (which picks its interval, when kept).
    pub fn record_at(&mut self, latency: Duration, at: Instant) {
        self.record(latency);
        if let Some(intervals) = &mut self.intervals {
            let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
            intervals.record(at, ns.clamp(1, HIGHEST_NS));
        }
    }

    /// Adds every value of `other` (and its intervals, when both keep them).
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so the addition cannot fail.
        self.hist
            .add(&other.hist)
            .expect("histograms with the same bounds");
        match (&mut self.intervals, &other.intervals) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (None, Some(theirs)) => self.intervals = Some(theirs.clone()),
            _ => {}
        }
    }

    /// The whole histogram (nanoseconds).
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.hist
    }

    /// The intervals, when kept.
    pub fn intervals(&self) -> Option<&Intervals> {
        self.intervals.as_ref()
    }

    /// The latency at quantile `q` (0.5 for the median), in microseconds; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        self.hist.value_at_quantile(q) as f64 / 1e3
    }

    pub fn summary(&self) -> LatencySummary {
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.hist.len(),
            mean_us: self.hist.mean() / 1e3,
            p50_us: self.quantile_us(0.50),
            p90_us: self.quantile_us(0.90),
            p99_us: self.quantile_us(0.99),
            p999_us: self.quantile_us(0.999),
            max_us: self.hist.max() as f64 / 1e3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b * 0.001 + 1e-9
    }

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut latency = Latency::new();
        for us in 1..=10_000u64 {
            latency.record(Duration::from_micros(us));
        }
        let s = latency.summary();
        assert_eq!(s.count, 10_000);
        assert!(close(s.p50_us, 5_000.0), "p50 {}", s.p50_us);
        assert!(close(s.p99_us, 9_900.0), "p99 {}", s.p99_us);
        assert!(close(s.p999_us, 9_990.0), "p99.9 {}", s.p999_us);
        assert!(close(s.max_us, 10_000.0), "max {}", s.max_us);
        assert!(close(s.mean_us, 5_000.5), "mean {}", s.mean_us);
    }

    #[test]
    fn merging_equals_recording_in_one() {
        let (mut a, mut b, mut both) = (Latency::new(), Latency::new(), Latency::new());
        for i in 0..1_000u64 {
            let d = Duration::from_nanos(1_000 + i * 37);
            if i % 3 == 0 { &mut a } else { &mut b }.record(d);
            both.record(d);
        }
        a.merge(&b);
        assert_eq!(a.summary(), both.summary());
    }

    #[test]
    fn extremes_are_kept_not_lost() {
        let mut latency = Latency::new();
        latency.record(Duration::ZERO);
        latency.record(Duration::from_secs(1_000));
        let s = latency.summary();
        assert_eq!(s.count, 2);
        assert!(
            s.max_us >= 99_000_000.0,
            "a 1000 s latency saturates at 100 s, got {}",
            s.max_us
        );
    }

    #[test]
    fn an_empty_histogram_reports_zeros() {
        let latency = Latency::default();
        assert_eq!(latency.summary(), LatencySummary::default());
        assert_eq!(latency.quantile_us(0.5), 0.0);
    }
}
