//! The closed loop's driver: every connection keeps `--pipeline` messages in flight and
//! sends the next one when an echo completes. The server sets the pace, so a stall
//! costs one slow sample per connection (coordinated omission: see [`crate::schedule`]);
//! that is what this workload measures, throughput, not latency under a given load.

use std::time::Instant;

use super::conn::State;
use super::worker::Worker;

impl Worker<'_> {
    /// At the start of the run: `--pipeline` messages on every established connection.
    pub(super) fn closed_start(&mut self, t0: Instant) {
        for i in 0..self.conns.len() {
            if self.conns[i].state == State::Active {
                for _ in 0..self.depth {
                    self.issue(i, t0);
                }
                self.flush(i);
            }
        }
    }

    /// `completed` echoes just completed on conn `i`: as many new messages, while the run
    /// goes on (not in the drain).
    pub(super) fn closed_completed(&mut self, i: usize, completed: u64, now: Instant) {
        if self.running {
            for _ in 0..completed {
                self.issue(i, now);
            }
        }
    }
}
