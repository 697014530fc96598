//! The accept loop of the blocking models: waits for a connection or the shutdown
//! signal, whichever comes first, and survives running out of descriptors.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::net;
use crate::shutdown::Shutdown;

/// How long accepting pauses after EMFILE/ENFILE. Retrying at once would spin the CPU:
/// the pending connection keeps the listener readable, and every accept fails again
/// until a connection closes.
pub const OUT_OF_DESCRIPTORS_PAUSE: Duration = Duration::from_millis(100);

/// At most one "pausing accept" line per this interval, for the whole server (every loop
/// and accept thread shares it); the pauses in between are counted and reported with the
/// next line. Out of descriptors, each loop pauses every 100 ms: unthrottled, that was 44
/// to 90 identical lines in 2 s (finding 12).
pub const PAUSE_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Lets a repeated warning through at most once per interval and counts the rest.
#[derive(Debug, Default)]
pub struct LogThrottle {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl LogThrottle {
    pub const fn new() -> LogThrottle {
        LogThrottle {
            last_logged: None,
            unlogged: 0,
        }
    }

    /// `Some(n)`: log now, and say that `n` more happened since the last line; `None`:
    /// stay silent (counted).
    pub fn admit(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        if self
            .last_logged
            .is_some_and(|last| now.saturating_duration_since(last) < interval)
        {
            self.unlogged += 1;
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

static PAUSE_LOG: Mutex<LogThrottle> = Mutex::new(LogThrottle::new());

/// Logs that accepting pauses for `why`, at most once per [`PAUSE_LOG_INTERVAL`] for the
/// whole server.
pub fn warn_pausing(why: &str) {
    crate::stats::global().accept_paused();
    let admitted = PAUSE_LOG
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .admit(Instant::now(), PAUSE_LOG_INTERVAL);
    match admitted {
        None => {}
        Some(0) => log::warn!(
            "{why}; pausing accept for {} ms, open connections are still served",
            OUT_OF_DESCRIPTORS_PAUSE.as_millis()
        ),
        Some(more) => log::warn!(
            "{why}; pausing accept for {} ms, open connections are still served ({more} more pauses since the last such line)",
            OUT_OF_DESCRIPTORS_PAUSE.as_millis()
        ),
    }
}

/// What to do after `accept` failed with `err`: `None` to accept again at once (nothing
/// to accept now, or a connection that went away before we took it), or the instant until
/// which accepting pauses (out of descriptors or memory; logged).
///
/// Every model's accept loop goes through here, so that they all treat EMFILE alike.
pub fn after_accept_error(err: &std::io::Error) -> Option<Instant> {
    if net::would_block(err) || net::interrupted(err) || net::aborted_before_accept(err) {
        return None;
    }
    warn_pausing(&format!("accept failed: {}", net::describe(err)));
    Some(Instant::now() + OUT_OF_DESCRIPTORS_PAUSE)
}

/// Accepts connections from every listener (one per `--listen` address) until shutdown.
#[derive(Debug)]
pub struct Acceptor<'a> {
    listeners: &'a [TcpListener],
    shutdown: &'a Shutdown,
    /// While set, no listener is polled: we are out of descriptors.
    paused_until: Option<Instant>,
    /// The listener tried first after the next poll: the one after the last that gave a
    /// connection, so that a busy address cannot starve the others.
    next: usize,
}

impl<'a> Acceptor<'a> {
    pub fn new(
        listeners: &'a [TcpListener],
        shutdown: &'a Shutdown,
    ) -> std::io::Result<Acceptor<'a>> {
        for listener in listeners {
            listener.set_nonblocking(true)?;
        }
        Ok(Acceptor {
            listeners,
            shutdown,
            paused_until: None,
            next: 0,
        })
    }

    /// The next connection, configured (blocking, `TCP_NODELAY`), or `None` once the
    /// server is shutting down.
    pub fn accept(&mut self) -> Option<(TcpStream, SocketAddr)> {
        let n = self.listeners.len();
        loop {
            if self.shutdown.is_triggered() {
                return None;
            }
            let now = Instant::now();
            let paused = self.paused_until.filter(|until| *until > now);
            let timeout = match paused {
                Some(until) => PollTimeout::try_from(until - now).unwrap_or(PollTimeout::MAX),
                None => PollTimeout::NONE,
            };
            let listener_events = if paused.is_some() {
                PollFlags::empty()
            } else {
                PollFlags::POLLIN
            };
            let mut fds: Vec<PollFd<'_>> = self
                .listeners
                .iter()
                .map(|listener| PollFd::new(listener.as_fd(), listener_events))
                .collect();
            fds.push(PollFd::new(self.shutdown.fd(), PollFlags::POLLIN));
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(err) => {
                    log::error!("poll on the listeners failed: {err}");
                    std::thread::sleep(OUT_OF_DESCRIPTORS_PAUSE);
                }
            }
            if paused.is_some() {
                continue;
            }
            self.paused_until = None;
            let ready: Vec<bool> = fds[..n]
                .iter()
                .map(|fd| fd.any().unwrap_or(false))
                .collect();
            drop(fds);
            // Every ready listener in turn, from `next`; a listener that has nothing (its
            // connection went away, or poll failed) is only a wasted `accept`.
            let first = self.next;
            for idx in (0..n).map(|k| (first + k) % n) {
                if !ready[idx] {
                    continue;
                }
                match self.listeners[idx].accept() {
                    Ok((conn, peer)) => {
                        self.next = (idx + 1) % n;
                        match conn
                            .set_nonblocking(false)
                            .and_then(|()| net::configure(&conn))
                        {
                            Ok(()) => return Some((conn, peer)),
                            Err(err) => crate::conn::log_dropped(peer, &err),
                        }
                    }
                    Err(err) => {
                        self.paused_until = after_accept_error(&err);
                        if self.paused_until.is_some() {
                            break;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two listeners with two connections queued on each: the acceptor takes them in
    /// turn, A B A B, not all of A first (a busy address cannot starve the other).
    #[test]
    fn the_acceptor_takes_every_listener_in_turn() {
        let listeners: Vec<TcpListener> = (0..2)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        // Loopback connects complete in the listen queue, before any accept.
        let clients: Vec<TcpStream> = [1, 0, 1, 0]
            .iter()
            .map(|&idx| TcpStream::connect(("127.0.0.1", ports[idx])).unwrap())
            .collect();
        let shutdown = Shutdown::install().unwrap();
        let mut acceptor = Acceptor::new(&listeners, &shutdown).unwrap();
        let order: Vec<u16> = (0..4)
            .map(|_| {
                let (conn, _peer) = acceptor.accept().unwrap();
                conn.local_addr().unwrap().port()
            })
            .collect();
        assert_eq!(order, [ports[0], ports[1], ports[0], ports[1]]);
        drop(clients);
        // Once the shutdown fires, no more connections.
        shutdown.trigger();
        assert!(acceptor.accept().is_none());
    }

    #[test]
    fn the_throttle_lets_one_line_through_per_interval_and_counts_the_rest() {
        let mut throttle = LogThrottle::new();
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        assert_eq!(throttle.admit(t0, second), Some(0));
        for ms in [1, 100, 500, 999] {
            assert_eq!(throttle.admit(t0 + Duration::from_millis(ms), second), None);
        }
        assert_eq!(throttle.admit(t0 + second, second), Some(4));
        assert_eq!(throttle.admit(t0 + second, second), None);
        assert_eq!(throttle.admit(t0 + 3 * second, second), Some(1));
    }
}
