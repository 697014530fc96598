//! The event-based server (CS:APP's `echoservers`): one thread, one loop, every
//! connection non-blocking, and `poll(2)` to learn which ones can make progress.
//!
//! Trade-off: no thread or process per connection, one address space, and a debugger can
//! single-step it; but the program interleaves the flows by hand (each connection's state
//! lives in a [`Conn`], not on a stack), and it uses one core.
//!
//! The loop, once per `poll`:
//! 1. Ask for POLLIN on every connection that has room to read (backpressure: one that
//!    owes its peer [`crate::echo::MAX_OWED`] bytes is not read), and POLLOUT on every
//!    connection that owes bytes.
//! 2. Serve each ready connection with one `read` into the loop's buffer and the echo's
//!    writes ([`LoopConn::serve`]); bytes the socket would not take wait in that
//!    connection's echo.
//! 3. Accept new connections until `accept` would block ([`AcceptPace`]), then close the
//!    connections whose idle deadline passed ([`Deadlines`]).
//!
//! `poll` instead of the book's `select`: `select` cannot watch a descriptor numbered
//! FD_SETSIZE (1024) or above, and this server holds thousands.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::conn::End;
use crate::deadline::Deadlines;
use crate::event_loop::{earliest, AcceptPace, LoopConn, Ready, Served, Slots, READ_BUF};
use crate::{net, Server};

/// One read per ready connection per turn: poll is level-triggered, so bytes left in the
/// socket are reported again next turn, after every other ready connection was served.
const READS_PER_TURN: usize = 1;

/// One connection's state: what the book keeps in its `pool` arrays.
pub type Conn = LoopConn<TcpStream>;

pub fn run(server: Server) -> io::Result<()> {
    let Server {
        listeners,
        config,
        shutdown,
        cap,
    } = server;
    for listener in &listeners {
        listener.set_nonblocking(true)?;
    }
    let n_listeners = listeners.len();
    let mut conns: Slots<Conn> = Slots::default();
    // The token of each connection in this turn's poll set, in its order.
    let mut tokens: Vec<usize> = Vec::new();
    let mut revents: Vec<PollFlags> = Vec::new();
    let mut buf = vec![0u8; READ_BUF];
    // One pace per listener (one per --listen address): each has its own queue.
    let mut accepts: Vec<AcceptPace> = (0..n_listeners).map(|_| AcceptPace::default()).collect();
    let mut deadlines = Deadlines::new(config.idle_timeout, Instant::now());
    let mut expired = Vec::new();
    loop {
        let now = Instant::now();
        let timeout = accepts
            .iter()
            .fold(deadlines.next_wake(now), |wake, accept| {
                earliest(wake, accept.wake(now))
            });

        // 1. Wait for events.
        {
            tokens.clear();
            let mut fds = Vec::with_capacity(conns.tokens().count() + 1 + n_listeners);
            fds.push(PollFd::new(shutdown.fd(), PollFlags::POLLIN));
            for (listener, accept) in listeners.iter().zip(&accepts) {
                let mut listen_events = PollFlags::empty();
                listen_events.set(PollFlags::POLLIN, accept.listening(now));
                fds.push(PollFd::new(listener.as_fd(), listen_events));
            }
            for (token, conn) in conns.iter() {
                let mut events = PollFlags::empty();
                events.set(PollFlags::POLLIN, conn.echo.wants_read());
                events.set(PollFlags::POLLOUT, conn.echo.wants_write());
                fds.push(PollFd::new(conn.stream.as_fd(), events));
                tokens.push(token);
            }
            match nix::poll::poll(&mut fds, poll_timeout(timeout)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(err) => return Err(err.into()),
            }
            revents.clear();
            revents.extend(
                fds.iter()
                    .map(|fd| fd.revents().unwrap_or(PollFlags::empty())),
            );
        }
        if shutdown.is_triggered() {
            conns.drain().for_each(|conn| conn.close(&End::Shutdown));
            return Ok(());
        }

        // 2. Serve ready connections.
        let now = Instant::now();
        for (&token, &ready) in tokens.iter().zip(&revents[1 + n_listeners..]) {
            if ready.is_empty() {
                continue;
            }
            let Some(conn) = conns.get_mut(token) else {
                continue;
            };
            match conn.serve(&mut buf, ready_of(ready), READS_PER_TURN) {
                Served::Moved => deadlines.touch(token, now),
                Served::Quiet => {}
                Served::Close(end) => {
                    deadlines.remove(token);
                    if let Some(conn) = conns.remove(token) {
                        conn.close(&end);
                    }
                }
            }
        }

        // 3. Accept new connections, then close the idle ones.
        for ((listener, accept), ready) in listeners.iter().zip(&mut accepts).zip(&revents[1..]) {
            if !accept.due(ready.contains(PollFlags::POLLIN), now) {
                continue;
            }
            accept.accept(
                &cap,
                || listener.accept(),
                |stream, peer, admission| {
                    if let Err(err) = stream
                        .set_nonblocking(true)
                        .and_then(|()| net::configure(&stream))
                    {
                        return crate::conn::log_dropped(peer, &err);
                    }
                    let token = conns.insert(Conn::open(stream, peer, config.echo, admission));
                    deadlines.touch(token, now);
                },
            );
        }
        deadlines.expire(now, &mut expired);
        for token in expired.drain(..) {
            if let Some(conn) = conns.remove(token) {
                conn.close(&End::Idle(config.idle_timeout.unwrap_or_default()));
            }
        }
    }
}

/// What poll reported for a connection.
fn ready_of(revents: PollFlags) -> Ready {
    let trouble = PollFlags::POLLHUP | PollFlags::POLLERR;
    Ready {
        readable: revents.intersects(PollFlags::POLLIN | trouble),
        writable: revents.intersects(PollFlags::POLLOUT | trouble),
    }
}

/// `timeout` in poll's whole milliseconds, rounded up, so that the loop does not wake
/// just before a deadline and spin (`None`: forever).
fn poll_timeout(timeout: Option<Duration>) -> PollTimeout {
    match timeout {
        None => PollTimeout::NONE,
        Some(timeout) => {
            let ms = timeout.as_micros().div_ceil(1000);
            PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
        }
    }
}
