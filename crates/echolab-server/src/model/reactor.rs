//! The reactor: one event loop per core, the answer production servers (nginx workers,
//! memcached, monoio) give to the lecture's "an event-based server cannot use more than
//! one core". Each loop is the [`super::event`] server grown up: `epoll` (through `mio`)
//! instead of `poll`, so a turn costs what is ready rather than what is open.
//!
//! Trade-off: as fast as the kernel lets one thread per core go, with no locks on the
//! data path; but a connection is pinned to the loop that accepted it, so one busy
//! connection slows only its neighbours on that loop, and nothing rebalances them.
//!
//! # How connections reach a loop
//!
//! Every loop has its own listener on the same address (`SO_REUSEPORT`; one on each
//! `--listen` address). The kernel picks the listener of each new connection by a hash of
//! its address and port pair, so the loops never touch a shared accept queue or wake each
//! other. Fairness is statistical, not load-aware: many connections spread evenly, but two
//! connections land on the same loop half the time with two loops, and a loop already busy
//! gets its share all the same.
//! The alternative, one acceptor handing connections round-robin, balances counts exactly
//! but adds a cross-thread hand-off (a channel and a wake-up) to every accept.
//!
//! # One loop turn
//!
//! 1. `epoll_wait` (edge-triggered, as mio registers everything) for events, the next
//!    idle deadline ([`Deadlines`]), or the end of an accept pause; without waiting if a
//!    connection still has bytes from its last turn.
//! 2. For each ready connection, at most [`READS_PER_TURN`] `read`s into the loop's buffer,
//!    each followed by the echo's `write` straight from it ([`LoopConn::serve`]). Only bytes
//!    the kernel would not take stay in the connection's echo; only then does the loop
//!    ask for writability as well.
//! 3. Accept until `accept` would block ([`AcceptPace`]), then close the connections whose
//!    idle deadline passed.
//!
//! Edge-triggered readiness means "read until `WouldBlock`": no new edge comes for bytes
//! already in the socket. A short read is not proof that the socket is empty (a read stops
//! at the urgent mark of MSG_OOB data, and the bytes after it raise no new edge), so only
//! `WouldBlock` ends a connection's reading. Fairness is a budget: a connection that is
//! still readable after [`READS_PER_TURN`] reads goes on the loop's `again` list and is
//! served in the next turn, after everyone else ready now, as if a new edge had come.
//!
//! Memory: an idle connection costs its `Conn` (under 200 bytes), 16 bytes of idle
//! deadline, and the kernel's socket; its echo allocates only when bytes are owed.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::os::fd::AsRawFd;

use crate::admission::ConnCap;
use crate::conn::End;
use crate::deadline::Deadlines;
use crate::echo::EchoConfig;
use crate::event_loop::{self, earliest, AcceptPace, LoopConn, Ready, Served, Slots, READ_BUF};
use crate::shutdown::Shutdown;
use crate::{cores, net, runner, ServeConfig, Server};

/// The most reads one connection gets per turn before the others are served: with the
/// 64 KiB buffer, 256 KiB per turn. A streaming client that always has bytes ready would
/// otherwise hold the loop for as long as it keeps the socket full (issue 9: a probe beside
/// it waited up to a second for its echo).
pub const READS_PER_TURN: usize = 4;

/// Events taken from the kernel per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;

const SHUTDOWN: Token = Token(usize::MAX);

/// The token of the loop's listener for the `k`th `--listen` address: counted down from
/// below [`SHUTDOWN`], far from the connections' tokens (slab indices from 0).
fn listener_token(k: usize) -> Token {
    Token(usize::MAX - 1 - k)
}

/// Which listener `token` is, if it is one of a loop's `n` listeners.
fn listener_of(token: Token, n: usize) -> Option<usize> {
    let k = (usize::MAX - 1).checked_sub(token.0)?;
    (k < n).then_some(k)
}

/// One connection of a loop, and what its edge-triggered registration needs.
#[derive(Debug)]
struct Conn {
    inner: LoopConn<TcpStream>,
    /// Registered for writability too: true exactly while the echo owes bytes.
    wants_writable: bool,
    /// On the loop's `again` list (at most once).
    again: bool,
}

pub fn run(server: Server) -> io::Result<()> {
    let Server {
        listeners,
        config,
        shutdown,
        cap,
    } = server;
    let reads_per_turn = event_loop::bench_read_budget(READS_PER_TURN)?;
    let n_loops = config.workers.unwrap_or_else(cores).max(1);
    // Each loop its own listener on every --listen address: `per_loop[i]` has loop i's.
    let per_loop = net::listeners_per_loop(listeners, n_loops)?;
    // Every loop's epoll exists before any loop accepts: a loop that accepted first could
    // take the descriptors the others need.
    let reactors = per_loop
        .into_iter()
        .map(|listeners| Reactor::new(listeners, &config, &cap, &shutdown, reads_per_turn))
        .collect::<io::Result<Vec<_>>>()?;
    // n loops, n threads: the calling thread runs the last one.
    let run_one = |mut reactor: Reactor<'_>| reactor.run();
    runner::run_loops("reactor", reactors, &shutdown, &run_one, &|_| {})
}

/// One event loop and its connections.
struct Reactor<'a> {
    poll: Poll,
    /// This loop's listener on each `--listen` address, registered as [`listener_token`].
    listeners: Vec<TcpListener>,
    /// The connections, by token.
    conns: Slots<Conn>,
    buf: Box<[u8]>,
    /// [`READS_PER_TURN`] (or the benchmark's override).
    reads_per_turn: usize,
    echo: EchoConfig,
    /// `--max-conns` and `--max-conns-per-ip`, across all loops.
    cap: &'a Arc<ConnCap>,
    /// Watched by every loop; the first loop that fails fires it so the others stop too.
    shutdown: &'a Shutdown,
    idle_timeout: Duration,
    deadlines: Deadlines,
    /// Tokens whose idle deadline passed, kept to reuse its allocation.
    expired: Vec<usize>,
    /// One pace per listener, in `listeners`' order.
    accepts: Vec<AcceptPace>,
    /// Which listeners this turn's events reported, in `listeners`' order.
    listener_ready: Vec<bool>,
    /// Connections whose read budget ran out with bytes left: served next turn without
    /// an event. `again_now` is the list being served, kept to reuse its allocation.
    again: Vec<usize>,
    again_now: Vec<usize>,
}

impl<'a> Reactor<'a> {
    fn new(
        listeners: Vec<std::net::TcpListener>,
        config: &ServeConfig,
        cap: &'a Arc<ConnCap>,
        shutdown: &'a Shutdown,
        reads_per_turn: usize,
    ) -> io::Result<Reactor<'a>> {
        let poll = Poll::new()?;
        let listeners = listeners
            .into_iter()
            .enumerate()
            .map(|(k, listener)| {
                listener.set_nonblocking(true)?;
                let mut listener = TcpListener::from_std(listener);
                poll.registry()
                    .register(&mut listener, listener_token(k), Interest::READABLE)?;
                Ok(listener)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let accepts: Vec<AcceptPace> = listeners.iter().map(|_| AcceptPace::default()).collect();
        // The shutdown pipe is never drained, so every loop's epoll sees it readable.
        let shutdown_fd = shutdown.fd().as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&shutdown_fd), SHUTDOWN, Interest::READABLE)?;
        Ok(Reactor {
            poll,
            listeners,
            conns: Slots::default(),
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
            reads_per_turn,
            echo: config.echo,
            cap,
            shutdown,
            idle_timeout: config.idle_timeout.unwrap_or_default(),
            deadlines: Deadlines::new(config.idle_timeout, Instant::now()),
            expired: Vec::new(),
            listener_ready: vec![false; accepts.len()],
            accepts,
            again: Vec::new(),
            again_now: Vec::new(),
        })
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_WAIT);
        loop {
            let now = Instant::now();
            // mio rounds a timeout up to whole milliseconds, so the loop never wakes just
            // before a deadline and spins.
            let timeout = match self.again.is_empty() {
                true => self
                    .accepts
                    .iter()
                    .fold(self.deadlines.next_wake(now), |wake, accept| {
                        earliest(wake, accept.wake(now))
                    }),
                false => Some(Duration::ZERO),
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(err) if net::interrupted(&err) => {}
                Err(err) => return Err(err),
            }
            if self.shutdown.is_triggered() {
                self.conns
                    .drain()
                    .for_each(|conn| conn.inner.close(&End::Shutdown));
                return Ok(());
            }
            let now = Instant::now();
            // Last turn's leftovers first: they have waited a whole turn already.
            let mut again = std::mem::replace(&mut self.again, std::mem::take(&mut self.again_now));
            for token in again.drain(..) {
                if let Some(conn) = self.conns.get_mut(token) {
                    conn.again = false;
                    self.serve_ready(token, Ready::NONE, now);
                }
            }
            self.again_now = again;
            let n_listeners = self.listeners.len();
            self.listener_ready.fill(false);
            for event in events.iter() {
                match event.token() {
                    SHUTDOWN => {}
                    token => match listener_of(token, n_listeners) {
                        Some(k) => self.listener_ready[k] = true,
                        None => self.serve_ready(token.0, Ready::of_mio(event), now),
                    },
                }
            }
            for k in 0..n_listeners {
                if self.accepts[k].due(self.listener_ready[k], now) {
                    self.accept_some(k, now);
                }
            }
            let mut expired = std::mem::take(&mut self.expired);
            self.deadlines.expire(now, &mut expired);
            for token in expired.drain(..) {
                self.close(token, End::Idle(self.idle_timeout));
            }
            self.expired = expired;
        }
    }

    /// Serves one connection that epoll reported ready (or left pending last turn).
    fn serve_ready(&mut self, token: usize, ready: Ready, now: Instant) {
        let Some(conn) = self.conns.get_mut(token) else {
            return; // A connection closed earlier in this turn.
        };
        match conn.inner.serve(&mut self.buf, ready, self.reads_per_turn) {
            Served::Close(end) => return self.close(token, end),
            Served::Moved => self.deadlines.touch(token, now),
            Served::Quiet => {}
        }
        if conn.inner.read_pending() && !conn.again {
            conn.again = true;
            self.again.push(token); // The budget ran out with bytes left.
        }
        let wants_writable = conn.inner.echo.wants_write();
        if conn.wants_writable != wants_writable {
            conn.wants_writable = wants_writable;
            let interest = match wants_writable {
                true => Interest::READABLE | Interest::WRITABLE,
                false => Interest::READABLE,
            };
            let registry = self.poll.registry();
            if let Err(err) = registry.reregister(&mut conn.inner.stream, Token(token), interest) {
                self.close(token, End::Failed(err.into()));
            }
        }
    }

    /// Accepts from listener `k` what its [`AcceptPace`] allows; each connection is
    /// registered under its token.
    fn accept_some(&mut self, k: usize, now: Instant) {
        let Reactor {
            poll,
            listeners,
            conns,
            echo,
            cap,
            deadlines,
            accepts,
            ..
        } = self;
        let (listener, accept) = (&listeners[k], &mut accepts[k]);
        let accept_one = || listener.accept();
        accept.accept(cap, accept_one, |mut stream, peer, admission| {
            let token = conns.next_token();
            let registered = stream.set_nodelay(true).and_then(|()| {
                poll.registry()
                    .register(&mut stream, Token(token), Interest::READABLE)
            });
            if let Err(err) = registered {
                return crate::conn::log_dropped(peer, &err);
            }
            // Registered with data already waiting, the socket raises its first edge at once.
            let inner = LoopConn::open(stream, peer, *echo, admission);
            conns.insert(Conn {
                inner,
                wants_writable: false,
                again: false,
            });
            deadlines.touch(token, now);
        });
    }

    /// Closes `token`'s connection (closing the stream also removes it from epoll).
    fn close(&mut self, token: usize, end: End) {
        if let Some(conn) = self.conns.remove(token) {
            self.deadlines.remove(token);
            conn.inner.close(&end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_tokens_name_their_listener_and_nothing_else() {
        for n in [1, 2, 5] {
            for k in 0..n {
                assert_eq!(listener_of(listener_token(k), n), Some(k));
                assert_ne!(listener_token(k), SHUTDOWN);
            }
            // The shutdown pipe, a listener past `n`, and connections' tokens are not listeners.
            assert_eq!(listener_of(SHUTDOWN, n), None);
            assert_eq!(listener_of(listener_token(n), n), None);
            for conn in [0, 1, 4096] {
                assert_eq!(listener_of(Token(conn), n), None);
            }
        }
    }
}
