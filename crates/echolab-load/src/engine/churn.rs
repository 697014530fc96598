//! The churn driver: each slot connects, sends one message, reads its echo, shuts its
//! sending side and waits for the server's end of stream, then connects again. Waiting
//! for the end of stream is what catches a server that sends bytes after the echo; the
//! message's latency runs from the start of the connect to the end of the echo.

use std::net::Shutdown;
use std::time::Instant;

use super::conn::State;
use super::worker::Worker;

impl Worker<'_> {
    /// At the start of the run: every slot connects.
    pub(super) fn churn_start(&mut self, t0: Instant) {
        for i in 0..self.conns.len() {
            if let State::Idle { .. } = self.conns[i].state {
                self.start_connect(i, t0);
            }
        }
    }

    /// Slot `i` is established: its one message goes out, stamped with the connect's
    /// start.
    pub(super) fn churn_connected(&mut self, i: usize, now: Instant) {
        if !self.running {
            return;
        }
        let connect_start = self.conns[i].connect_start;
        if self.in_window(connect_start) {
            self.connect_latency
                .record(now.saturating_duration_since(connect_start));
        }
        self.issue(i, connect_start);
        self.flush(i);
    }

    /// Slot `i`'s echo is complete: shut the sending side and wait for the end of stream
    /// (any byte before it is an extra byte). False if the connection is closed already.
    pub(super) fn churn_completed(&mut self, i: usize, now: Instant) -> bool {
        let conn = &mut self.conns[i];
        conn.closing = true;
        conn.last_progress = now;
        let shut = conn
            .stream
            .as_ref()
            .is_some_and(|s| s.shutdown(Shutdown::Write).is_ok());
        if !shut {
            self.churn_closed(i, now);
            return false;
        }
        true
    }

    /// Slot `i` reached the server's end of stream after its echo: connect again.
    pub(super) fn churn_closed(&mut self, i: usize, now: Instant) {
        self.close(i, None);
        if self.running {
            self.start_connect(i, now);
        }
    }

    /// On loopback a refused connect means nobody listens: once every slot has been
    /// refused twice in a row, the server is gone. (A full backlog drops SYNs instead,
    /// which is slow, not refused.)
    pub(super) fn churn_gone(&mut self) -> bool {
        if self.refused_in_a_row >= 2 * self.conns.len() as u64 {
            self.server_gone = true;
        }
        self.server_gone
    }

    /// Reconnects idle slots whose retry time has come; true if one still waits.
    pub(super) fn restart_idle(&mut self, now: Instant) -> bool {
        let mut waiting = false;
        for i in 0..self.conns.len() {
            if let State::Idle { retry_at } = self.conns[i].state {
                if now >= retry_at {
                    self.start_connect(i, now);
                } else {
                    waiting = true;
                }
            }
        }
        waiting
    }
}
