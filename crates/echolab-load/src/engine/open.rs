//! The open loop's driver: messages fall due on this worker's share of one aggregate
//! constant-rate schedule ([`crate::schedule::RateSchedule::share`]), whatever the server
//! does, and go to the worker's connections in turn. A connection whose pipeline is full
//! holds due messages back (each keeps its intended send time); a message no connection
//! can take is counted unsent. A one-shot timerfd wakes the loop at the next due time
//! (epoll's own timeout counts in milliseconds).

use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};

use super::conn::State;
use super::worker::Worker;
use crate::schedule::RateSchedule;

impl Worker<'_> {
    /// Starts this worker's share of `rate` messages per second, from `t0`.
    pub(super) fn open_start(&mut self, t0: Instant, rate: f64) {
        let (k, n) = self.share;
        self.schedule = Some(RateSchedule::share(t0, rate, k, n));
        // The kernel may delay a timer by the thread's slack (50 µs by default), which the
        // open loop would measure as latency; 1 µs is enough here.
        let _ = nix::sys::prctl::set_timerslack(1_000);
        self.arm_timer(Instant::now());
    }

    /// Every pass of the loop: hands out what is due and sets the clock for what is next.
    pub(super) fn open_tick(&mut self, now: Instant) {
        self.release_due(now);
        self.arm_timer(now);
    }

    /// At the end of the window: every message meant to go before `end` is handed out
    /// (and so accounted for), even when the loop was too busy to see it fall due.
    pub(super) fn open_end(&mut self, end: Instant) {
        if let Some(before_end) = end.checked_sub(Duration::from_nanos(1)) {
            self.release_due(before_end);
        }
    }

    /// Arms the timer for the next due message, once per message.
    fn arm_timer(&mut self, now: Instant) {
        let (Some(schedule), Some(timer)) = (&self.schedule, &self.timer) else {
            return;
        };
        let next = schedule.next_due();
        if self.timer_armed_for == Some(next) {
            return;
        }
        // A zero expiry would disarm the timer: at least 1 µs.
        let delay = next
            .saturating_duration_since(now)
            .max(Duration::from_micros(1));
        let _ = timer.set(
            Expiration::OneShot(TimeSpec::from_duration(delay)),
            TimerSetTimeFlags::empty(),
        );
        self.timer_armed_for = Some(next);
    }

    /// Hands every message due by `now` to the next connection in turn that can take it.
    fn release_due(&mut self, now: Instant) {
        let n = self.conns.len();
        let mut touched = false;
        while let Some((_, intended)) = self.schedule.as_mut().and_then(|s| s.pop_due(now)) {
            // The next connection in turn that can still take a message.
            let target = (0..n).map(|k| (self.next_conn + k) % n).find(|&i| {
                self.conns[i].state == State::Active
                    && self.conns[i].starts.len() < self.max_pending
            });
            self.next_conn = (self.next_conn + 1) % n;
            match target {
                Some(i) => {
                    let conn = &mut self.conns[i];
                    if conn.starts.is_empty() {
                        conn.last_progress = now;
                    }
                    conn.starts.push_back(intended);
                    touched = true;
                }
                None if self.in_window(intended) => self.unfinished.unsent += 1,
                None => {}
            }
        }
        if touched {
            for i in 0..n {
                if self.conns[i].state == State::Active && self.release(i) {
                    self.flush(i);
                }
            }
        }
    }
}
