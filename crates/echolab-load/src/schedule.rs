//! The open loop's clock: when each message is meant to be sent (wrk2's method).
//!
//! A closed-loop generator sends the next message when the previous echo arrives, so when
//! the server stalls for 100 ms it simply stops sending: the stall costs one slow sample
//! instead of the thousands of messages that a real client population would have sent and
//! that would all have waited. This is *coordinated omission*. In the open loop, message
//! `j` is due at `start + j / rate` whatever happened before, and its latency is measured
//! from that intended time: messages that fall behind a stall carry the stall in their
//! latency.
//!
//! Several threads share one aggregate schedule: with `n` threads, thread `k` sends
//! messages `k, k + n, k + 2n, ...` of it ([`RateSchedule::share`]), so the arrivals at the
//! server are evenly spaced at `1 / rate` whatever the thread count, not `n` at once.

use std::time::{Duration, Instant};

/// One thread's share of a constant-rate schedule; its messages are numbered from 0.
#[derive(Debug, Clone)]
pub struct RateSchedule {
    start: Instant,
    /// Seconds between two messages of the aggregate schedule.
    interval: f64,
    /// This share's first message in the aggregate schedule (`0..stride`).
    phase: u64,
    /// Aggregate messages between two of this share's: the number of shares.
    stride: u64,
    /// The number of the next message not yet handed out by [`RateSchedule::pop_due`].
    next: u64,
}

impl RateSchedule {
    /// `rate` messages per second (more than 0) from `start`, the first one due at `start`.
    pub fn new(start: Instant, rate: f64) -> RateSchedule {
        RateSchedule::share(start, rate, 0, 1)
    }

    /// Share `k` of `n` (`k < n`) of the schedule of `rate` messages per second from
    /// `start`: its message `i` is the aggregate's message `i * n + k`, due at
    /// `start + (i * n + k) / rate`. The `n` shares together are the whole schedule, each
    /// message once.
    pub fn share(start: Instant, rate: f64, k: usize, n: usize) -> RateSchedule {
        assert!(
            rate > 0.0 && rate.is_finite(),
            "rate must be positive, got {rate}"
        );
        assert!(k < n, "share {k} of {n}");
        RateSchedule {
            start,
            interval: 1.0 / rate,
            phase: k as u64,
            stride: n as u64,
            next: 0,
        }
    }

    /// When this share's message `j` is meant to be sent. Computed from the start, so
    /// rounding never accumulates.
    pub fn intended(&self, j: u64) -> Instant {
        let aggregate = j * self.stride + self.phase;
        self.start + Duration::from_secs_f64(aggregate as f64 * self.interval)
    }

    /// When the next message not yet handed out is due.
    pub fn next_due(&self) -> Instant {
        self.intended(self.next)
    }

    /// The next message due at or before `now`, with its number and intended time.
    ///
    /// After a stall, successive calls hand out every message that fell due during it,
    /// each with its own intended time, rather than skipping them.
    pub fn pop_due(&mut self, now: Instant) -> Option<(u64, Instant)> {
        let due = self.next_due();
        if due > now {
            return None;
        }
        let j = self.next;
        self.next += 1;
        Some((j, due))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_second_at_a_thousand_per_second_is_a_thousand_messages() {
        let start = Instant::now();
        let mut schedule = RateSchedule::new(start, 1_000.0);
        let mut n = 0;
        // Message 1000 is due exactly at one second; stop just before it.
        let end = start + Duration::from_micros(999_999);
        while schedule.pop_due(end).is_some() {
            n += 1;
        }
        assert_eq!(n, 1_000);
        assert_eq!(schedule.next_due(), start + Duration::from_secs(1));
    }

    #[test]
    fn nothing_is_due_before_its_time() {
        let start = Instant::now();
        let mut schedule = RateSchedule::new(start, 10.0);
        assert_eq!(schedule.pop_due(start), Some((0, start)));
        assert_eq!(schedule.pop_due(start + Duration::from_millis(99)), None);
        let (j, at) = schedule
            .pop_due(start + Duration::from_millis(100))
            .unwrap();
        assert_eq!((j, at), (1, start + Duration::from_millis(100)));
    }

    #[test]
    fn a_stall_hands_out_every_missed_message_with_its_own_time() {
        // The loop was stalled for 50 ms at 1000 messages/s: the 51 messages due in that
        // time come out at once, each stamped with when it should have gone, so their
        // latencies include the stall (no coordinated omission).
        let start = Instant::now();
        let mut schedule = RateSchedule::new(start, 1_000.0);
        let after_stall = start + Duration::from_millis(50);
        let missed: Vec<_> = std::iter::from_fn(|| schedule.pop_due(after_stall)).collect();
        assert_eq!(missed.len(), 51);
        for (k, (j, at)) in missed.iter().enumerate() {
            assert_eq!(*j, k as u64);
            assert_eq!(*at, start + Duration::from_millis(k as u64));
        }
    }

    #[test]
    fn shares_interleave_into_the_whole_schedule() {
        // 4 per second over 3 threads: together they send at 0, 0.25, 0.5, ... s, one
        // message each time, never two at once.
        let start = Instant::now();
        let whole = RateSchedule::new(start, 4.0);
        let mut times: Vec<Instant> = Vec::new();
        for k in 0..3 {
            let mut share = RateSchedule::share(start, 4.0, k, 3);
            let end = start + Duration::from_millis(2_999);
            while let Some((j, at)) = share.pop_due(end) {
                assert_eq!(at, whole.intended(j * 3 + k as u64));
                times.push(at);
            }
        }
        times.sort();
        assert_eq!(times.len(), 12);
        for (i, at) in times.iter().enumerate() {
            assert_eq!(*at, start + Duration::from_millis(250 * i as u64));
        }
        let share = RateSchedule::share(start, 4.0, 2, 3);
        assert_eq!(share.next_due(), start + Duration::from_millis(500));
    }

    #[test]
    fn intended_times_do_not_drift_over_many_messages() {
        let start = Instant::now();
        let schedule = RateSchedule::new(start, 3.0);
        // 3 per second: message 3_000_000 is due at exactly 1_000_000 s, not a rounding
        // error's worth later (times are computed from the start, not accumulated).
        let at = schedule.intended(3_000_000);
        let err = at.duration_since(start).as_secs_f64() - 1_000_000.0;
        assert!(err.abs() < 1e-6, "drift {err}");
    }
}
