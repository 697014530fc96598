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
//! Every loop has its own listener on the same address (`SO_REUSEPORT`). The kernel picks
//! the listener of each new connection by a hash of its address and port pair, so the
//! loops never touch a shared accept queue or wake each other. Fairness is statistical,
//! not load-aware: many connections spread evenly, but two connections land on the same
//! loop half the time with two loops, and a loop already busy gets its share all the same.
//! The alternative, one acceptor handing connections round-robin, balances counts exactly
//! but adds a cross-thread hand-off (a channel and a wake-up) to every accept.
//!
//! # One loop turn
//!
//! 1. `epoll_wait` (edge-triggered, as mio registers everything) for events, the next
//!    idle deadline, or the end of an accept pause; without waiting if a connection still
//!    has bytes from its last turn.
//! 2. For each ready connection, at most [`READS_PER_TURN`] `read`s into the loop's buffer,
//!    each followed by the echo's `write` straight from it ([`Echo::on_input`]). Only bytes
//!    the kernel would not take stay in the connection's [`Echo`]; only then does the loop
//!    ask for writability as well.
//! 3. Accept until `accept` would block.
//!
//! Edge-triggered readiness means "read until `WouldBlock`": no new edge comes for bytes
//! already in the socket. A short read is not proof that the socket is empty (a read stops
//! at the urgent mark of MSG_OOB data, and the bytes after it raise no new edge), so only
//! `WouldBlock` ends a connection's reading. Fairness is a budget: a connection that is
//! still readable after [`READS_PER_TURN`] reads goes on the loop's `again` list and is
//! served in the next turn, after everyone else ready now, as if a new edge had come.
//!
//! Memory: an idle connection costs its [`Conn`] (under 200 bytes) and the kernel's
//! socket. [`Echo`] allocates only when bytes are owed.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::accept;
use crate::admission::{Admission, ConnCap};
use crate::conn::{self, End};
use crate::echo::{Echo, EchoConfig};
use crate::shutdown::Shutdown;
use crate::{cores, net, runner, Server};

/// Each loop's read buffer, shared by its connections: one read takes a whole 64 KiB.
const READ_BUF: usize = 64 * 1024;

/// The most reads one connection gets per turn before the others are served: with the
/// 64 KiB buffer, 256 KiB per turn. A streaming client that always has bytes ready would
/// otherwise hold the loop for as long as it keeps the socket full (issue 9: a probe beside
/// it waited up to a second for its echo).
const READS_PER_TURN: usize = 4;

/// At most this many accepts per turn, so a connection flood cannot starve the
/// connections already open.
const ACCEPTS_PER_TURN: usize = 64;

/// Events taken from the kernel per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;

const LISTENER: Token = Token(usize::MAX);
const SHUTDOWN: Token = Token(usize::MAX - 1);

/// What every loop shares with the others.
#[derive(Debug)]
struct Shared<'a> {
    echo: EchoConfig,
    idle_timeout: Option<Duration>,
    /// `--max-conns` and `--max-conns-per-ip`, across all loops.
    cap: Arc<ConnCap>,
    /// Watched by every loop; the first loop that fails fires it so the others stop too.
    shutdown: &'a Shutdown,
}

/// One connection of a loop.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    /// Bytes owed to the peer and the lines-mode state; empty (no allocation) when the
    /// kernel took everything.
    echo: Echo,
    /// The last turn a byte moved in either direction, for `--idle-timeout`.
    last_active: Instant,
    /// Registered for writability too: true exactly while the echo owes bytes.
    wants_writable: bool,
    /// Reading stopped before the socket said `WouldBlock` (backpressure, or the turn's
    /// budget ran out): no new edge will come for the bytes already there, so the loop
    /// reads again once room frees up, or next turn.
    read_pending: bool,
    /// On the loop's `again` list (at most once).
    again: bool,
    /// Its place under `--max-conns`, freed when the connection drops.
    _admission: Admission,
}

pub fn run(server: Server) -> io::Result<()> {
    let Server {
        listener,
        config,
        shutdown,
        cap,
    } = server;
    let n_loops = config.workers.unwrap_or_else(cores).max(1);
    // Every listener exists before any loop starts, so a bind failure stops the server
    // before it serves anyone.
    let mut listeners = Vec::with_capacity(n_loops);
    for _ in 1..n_loops {
        listeners.push(net::bind_another(&listener)?);
    }
    listeners.push(listener);
    let shared = Shared {
        echo: config.echo,
        idle_timeout: config.idle_timeout,
        cap,
        shutdown: &shutdown,
    };
    let shared = &shared;
    // Every loop's epoll exists before any loop accepts: a loop that accepted first could
    // take the descriptors the others need.
    let mut reactors = Vec::with_capacity(n_loops);
    for listener in listeners {
        reactors.push(Reactor::new(listener, shared)?);
    }
    // n loops, n threads: the calling thread runs the last one.
    runner::run_loops(
        "reactor",
        reactors,
        &shutdown,
        &|mut reactor: Reactor<'_>| reactor.run(),
        &|_| {},
    )
}

/// One event loop and its connections.
struct Reactor<'a> {
    poll: Poll,
    listener: mio::net::TcpListener,
    /// The connections, indexed by their token; `None` marks a free slot.
    conns: Vec<Option<Conn>>,
    /// Free slots of `conns`, reused before it grows.
    free: Vec<usize>,
    buf: Box<[u8]>,
    shared: &'a Shared<'a>,
    /// Out of descriptors: the listener is left alone until then.
    accept_paused_until: Option<Instant>,
    /// The last accept stopped at [`ACCEPTS_PER_TURN`] with connections still queued; no
    /// new edge will report them, so the next turn accepts without waiting.
    accept_pending: bool,
    /// When to look for idle connections; `None` while there is nothing to look for.
    next_sweep: Option<Instant>,
    /// Connections whose read budget ran out with bytes left: served next turn without
    /// an event. `again_now` is the list being served, kept to reuse its allocation.
    again: Vec<usize>,
    again_now: Vec<usize>,
}

impl<'a> Reactor<'a> {
    fn new(listener: TcpListener, shared: &'a Shared<'a>) -> io::Result<Reactor<'a>> {
        listener.set_nonblocking(true)?;
        let mut listener = mio::net::TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        // The shutdown pipe is never drained, so every loop's epoll sees it readable.
        let shutdown_fd = shared.shutdown.fd().as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&shutdown_fd), SHUTDOWN, Interest::READABLE)?;
        Ok(Reactor {
            poll,
            listener,
            conns: Vec::new(),
            free: Vec::new(),
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
            shared,
            accept_paused_until: None,
            accept_pending: false,
            next_sweep: None,
            again: Vec::new(),
            again_now: Vec::new(),
        })
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_WAIT);
        let mut now = Instant::now();
        loop {
            let timeout = self.timeout(now);
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(err) if net::interrupted(&err) => {}
                Err(err) => return Err(err),
            }
            if self.shared.shutdown.is_triggered() {
                self.close_all();
                return Ok(());
            }
            now = Instant::now();
            // Last turn's leftovers first: they have waited a whole turn already.
            let mut again = std::mem::replace(&mut self.again, std::mem::take(&mut self.again_now));
            for conn_idx in again.drain(..) {
                if let Some(Some(conn)) = self.conns.get_mut(conn_idx) {
                    conn.again = false;
                    self.serve_ready(conn_idx, Flags::NONE, now);
                }
            }
            self.again_now = again;
            let mut listener_ready = false;
            for event in events.iter() {
                match event.token() {
                    LISTENER => listener_ready = true,
                    SHUTDOWN => {}
                    Token(conn_idx) => self.serve_ready(conn_idx, Flags::of(event), now),
                }
            }
            if self.accept_paused_until.is_some_and(|until| until <= now) {
                self.accept_paused_until = None;
                listener_ready = true; // Connections may have queued during the pause.
            }
            if (listener_ready || self.accept_pending) && self.accept_paused_until.is_none() {
                self.accept_some(now);
            }
            if self.next_sweep.is_some_and(|at| at <= now) {
                self.sweep_idle(now);
            }
        }
    }

    /// How long `epoll_wait` may sleep: until the next sweep or the end of an accept
    /// pause, not at all if accepts are pending, or forever.
    fn timeout(&self, now: Instant) -> Option<Duration> {
        if self.accept_pending || !self.again.is_empty() {
            return Some(Duration::ZERO);
        }
        let deadline = match (self.next_sweep, self.accept_paused_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // mio rounds a timeout up to whole milliseconds, so the loop never wakes just
        // before the deadline and spins.
        deadline.map(|deadline| deadline.saturating_duration_since(now))
    }

    /// Serves one connection that epoll reported ready; closes it if it is done.
    fn serve_ready(&mut self, conn_idx: usize, flags: Flags, now: Instant) {
        let Some(Some(conn)) = self.conns.get_mut(conn_idx) else {
            return; // A connection closed earlier in this turn.
        };
        let end = conn.serve(&mut self.buf, flags, now);
        if let Some(end) = end {
            self.close(conn_idx, end);
            return;
        }
        if conn.read_pending && conn.echo.wants_read() && !conn.again {
            conn.again = true;
            self.again.push(conn_idx); // The budget ran out with bytes left.
        }
        if conn.wants_writable != conn.echo.wants_write() {
            conn.wants_writable = conn.echo.wants_write();
            let interest = if conn.wants_writable {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(err) =
                self.poll
                    .registry()
                    .reregister(&mut conn.stream, Token(conn_idx), interest)
            {
                self.close(conn_idx, End::Failed(err.into()));
            }
        }
    }

    /// Accepts until the listener would block (or [`ACCEPTS_PER_TURN`]).
    fn accept_some(&mut self, now: Instant) {
        self.accept_pending = false;
        for _ in 0..ACCEPTS_PER_TURN {
            match self.listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, now),
                Err(err) if net::would_block(&err) => return,
                // Out of descriptors (or worse): retrying now would fail the same way and
                // spin, since the queued connection keeps the listener ready.
                Err(err) => {
                    if let Some(until) = accept::after_accept_error(&err) {
                        self.accept_paused_until = Some(until);
                        return;
                    }
                }
            }
        }
        self.accept_pending = true;
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        let admission = match self.shared.cap.admit(peer) {
            Ok(admission) => admission,
            Err(why) => return self.shared.cap.refuse(stream, peer, why),
        };
        let conn_idx = self.free.pop().unwrap_or(self.conns.len());
        let registered = stream.set_nodelay(true).and_then(|()| {
            self.poll
                .registry()
                .register(&mut stream, Token(conn_idx), Interest::READABLE)
        });
        if let Err(err) = registered {
            self.free.push(conn_idx);
            crate::stats::global().dropped();
            log::warn!(
                "conn {peer} dropped: cannot configure it: {}",
                net::describe(&err)
            );
            return;
        }
        conn::log_opened(peer);
        let conn = Conn {
            stream,
            peer,
            echo: Echo::new(self.shared.echo),
            last_active: now,
            wants_writable: false,
            read_pending: false,
            again: false,
            _admission: admission,
        };
        // Registered with data already waiting, the socket raises its first edge at once.
        if conn_idx == self.conns.len() {
            self.conns.push(Some(conn));
        } else {
            self.conns[conn_idx] = Some(conn);
        }
        if let Some(timeout) = self.shared.idle_timeout {
            self.next_sweep.get_or_insert(now + timeout);
        }
    }

    fn close(&mut self, conn_idx: usize, end: End) {
        if let Some(conn) = self.conns[conn_idx].take() {
            let Conn {
                stream, peer, echo, ..
            } = conn;
            // The place under the cap is free (dropped with the rest of `conn`) before the
            // close line, and the stream is closed, which also removes it from epoll.
            drop(stream);
            conn::log_closed(peer, &echo, &end);
            self.free.push(conn_idx);
        }
    }

    /// Closes the connections silent for the idle timeout and schedules the next sweep
    /// at the earliest remaining deadline (deadlines only move later as bytes move).
    fn sweep_idle(&mut self, now: Instant) {
        let Some(timeout) = self.shared.idle_timeout else {
            self.next_sweep = None;
            return;
        };
        let last_active = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(conn_idx, slot)| slot.as_ref().map(|conn| (conn_idx, conn.last_active)));
        let (expired, next) = conn::idle_sweep(last_active, timeout, now);
        for conn_idx in expired {
            self.close(conn_idx, End::Idle(timeout));
        }
        self.next_sweep = next;
    }

    fn close_all(&mut self) {
        for conn_idx in 0..self.conns.len() {
            self.close(conn_idx, End::Shutdown);
        }
    }
}

/// What an event reported, copied out of mio's event.
#[derive(Debug, Clone, Copy)]
struct Flags {
    /// Readable, or the peer's FIN or an error (which `read` reports).
    readable: bool,
    writable: bool,
}

impl Flags {
    /// No event: a connection served again because its budget ran out last turn.
    const NONE: Flags = Flags {
        readable: false,
        writable: false,
    };

    fn of(event: &mio::event::Event) -> Flags {
        let closed = event.is_read_closed() || event.is_error();
        Flags {
            readable: event.is_readable() || closed,
            writable: event.is_writable() || event.is_write_closed() || event.is_error(),
        }
    }
}

impl Conn {
    /// Moves what bytes it can; `Some` when the connection is to be closed.
    fn serve(&mut self, buf: &mut [u8], flags: Flags, now: Instant) -> Option<End> {
        if flags.writable && self.echo.wants_write() {
            if let Err(err) = self.echo.flush(&mut &self.stream) {
                return Some(End::Failed(err.into()));
            }
            self.last_active = now;
        }
        if flags.readable || self.read_pending {
            // Pending until `read` says `WouldBlock` (or end of input).
            self.read_pending = true;
            for _ in 0..READS_PER_TURN {
                let room = self.echo.read_room().min(buf.len());
                if room == 0 {
                    break; // Backpressure (or end of input): bytes may wait in the socket.
                }
                let mut writer = &self.stream;
                match (&self.stream).read(&mut buf[..room]) {
                    Ok(0) => {
                        self.last_active = now;
                        self.read_pending = false;
                        if let Err(err) = self.echo.on_eof(&mut writer) {
                            return Some(End::Failed(err));
                        }
                        break;
                    }
                    Ok(n) => {
                        self.last_active = now;
                        log::trace!("server received {n} bytes");
                        if let Err(err) = self.echo.on_input(&buf[..n], &mut writer) {
                            return Some(End::Failed(err));
                        }
                    }
                    Err(err) if net::would_block(&err) => {
                        self.read_pending = false;
                        break;
                    }
                    Err(err) if net::interrupted(&err) => {}
                    Err(err) => return Some(End::Failed(err.into())),
                }
            }
        }
        self.echo.is_finished().then_some(End::PeerClosed)
    }
}
