//! `bench --json-stream`: one JSON object per progress tick of the measured window, each
//! with the figures of that interval alone (messages, rate, errors, latency percentiles),
//! for CI pipelines and dashboards that watch a run as it goes. Pure: it turns the
//! engine's [`Progress`] into objects; `bench` prints them.

use std::time::Duration;

use serde_json::{json, Value};

use crate::engine::{Phase, Progress};

/// The figures at the previous tick, to subtract.
#[derive(Debug, Default)]
pub struct IntervalStream {
    /// Intervals written so far.
    n: u64,
    /// Time measured, window messages and errors (whole run) at the previous tick.
    last_measured: Duration,
    last_messages: u64,
    last_errors: u64,
}

impl IntervalStream {
    pub fn new() -> IntervalStream {
        IntervalStream::default()
    }

    /// The object of the interval that ends at this tick, or `None` during the warm-up
    /// (whose errors are then left out of the first interval).
    pub fn on_tick(&mut self, progress: &Progress) -> Option<Value> {
        if progress.phase == Phase::WarmUp {
            self.last_errors = progress.errors;
            return None;
        }
        let secs = progress.measured.saturating_sub(self.last_measured);
        // The interval's histogram counts its messages exactly; the published total can
        // lag it by what a worker completed in the turn it is still in.
        let messages = match progress.interval_latency {
            Some(latency) => latency.count,
            None => progress.messages.saturating_sub(self.last_messages),
        };
        let errors = progress.errors.saturating_sub(self.last_errors);
        self.n += 1;
        self.last_measured = progress.measured;
        self.last_messages = progress.messages;
        self.last_errors = progress.errors;
        let latency = progress.interval_latency.unwrap_or_default();
        let rate = if secs.is_zero() {
            0.0
        } else {
            messages as f64 / secs.as_secs_f64()
        };
        Some(json!({
            "interval": self.n,
            "t_secs": progress.measured.as_secs_f64(),
            "secs": secs.as_secs_f64(),
            "messages": messages,
            "rate_per_sec": rate,
            "errors": errors,
            "latency_us": {
                "count": latency.count,
                "p50": latency.p50_us,
                "p90": latency.p90_us,
                "p99": latency.p99_us,
                "p999": latency.p999_us,
                "max": latency.max_us,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::LatencySummary;

    /// A tick: `messages` (the window's so far) and `errors` (the run's so far) as
    /// published; `count` messages in the interval's histogram, with its p99.
    fn tick(
        phase: Phase,
        measured_ms: u64,
        messages: u64,
        errors: u64,
        count: u64,
        p99_us: f64,
    ) -> Progress {
        Progress {
            phase,
            measured: Duration::from_millis(measured_ms),
            messages,
            errors,
            interval_latency: Some(LatencySummary {
                count,
                p99_us,
                ..LatencySummary::default()
            }),
        }
    }

    #[test]
    fn each_interval_has_its_own_figures() {
        let mut stream = IntervalStream::new();
        assert!(stream
            .on_tick(&tick(Phase::WarmUp, 0, 0, 2, 0, 0.0))
            .is_none());
        let first = stream
            .on_tick(&tick(Phase::Measuring, 500, 1_000, 2, 1_000, 10.0))
            .unwrap();
        assert_eq!(first["interval"], json!(1));
        assert_eq!(first["messages"], json!(1_000));
        assert_eq!(first["rate_per_sec"], json!(2_000.0));
        assert_eq!(
            first["errors"],
            json!(0),
            "warm-up errors are not the window's"
        );
        assert_eq!(first["latency_us"]["p99"], json!(10.0));
        // The histogram's count is the interval's messages, though the published total
        // lags it (a worker still in its turn).
        let second = stream
            .on_tick(&tick(Phase::Measuring, 1_500, 3_990, 5, 3_000, 7.0))
            .unwrap();
        assert_eq!(second["interval"], json!(2));
        assert_eq!(second["t_secs"], json!(1.5));
        assert_eq!(second["secs"], json!(1.0));
        assert_eq!(second["messages"], json!(3_000));
        assert_eq!(second["rate_per_sec"], json!(3_000.0));
        assert_eq!(second["errors"], json!(3));
        // Two ticks at once: an empty interval, not a division by zero.
        let empty = stream
            .on_tick(&tick(Phase::Measuring, 1_500, 4_000, 5, 0, 0.0))
            .unwrap();
        assert_eq!(empty["rate_per_sec"], json!(0.0));
        assert_eq!(empty["messages"], json!(0));
    }

    #[test]
    fn without_histograms_the_messages_are_the_published_difference() {
        let mut stream = IntervalStream::new();
        let mut progress = tick(Phase::Measuring, 1_000, 300, 0, 0, 0.0);
        progress.interval_latency = None;
        assert_eq!(stream.on_tick(&progress).unwrap()["messages"], json!(300));
        progress.messages = 500;
        progress.measured = Duration::from_millis(2_000);
        let second = stream.on_tick(&progress).unwrap();
        assert_eq!(second["messages"], json!(200));
        assert_eq!(second["latency_us"]["count"], json!(0));
    }
}
