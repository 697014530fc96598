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
//!    writes; bytes the socket would not take wait in that connection's [`Echo`].
//! 3. Accept new connections until `accept` would block.
//!
//! `poll` instead of the book's `select`: `select` cannot watch a descriptor numbered
//! FD_SETSIZE (1024) or above, and this server holds thousands.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use std::sync::Arc;

use crate::accept;
use crate::admission::{Admission, ConnCap};
use crate::conn::{self, End};
use crate::echo::{Echo, EchoConfig};
use crate::{net, Server};

/// The loop's read buffer, shared by every connection.
const READ_BUF: usize = 64 * 1024;

/// At most this many accepts per loop turn, so a connection flood cannot starve the
/// connections already open.
const ACCEPTS_PER_TURN: usize = 64;

/// One connection's state: what the book keeps in its `pool` arrays.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    echo: Echo,
    /// The last time a byte moved in either direction, for `--idle-timeout`.
    last_active: Instant,
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
    listener.set_nonblocking(true)?;
    let mut conns: Vec<Conn> = Vec::new();
    let mut revents: Vec<PollFlags> = Vec::new();
    let mut buf = vec![0u8; READ_BUF];
    let mut accept_paused_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let accept_paused = accept_paused_until.is_some_and(|until| until > now);
        let timeout = next_timeout(
            now,
            &conns,
            config.idle_timeout,
            accept_paused_until.filter(|_| accept_paused),
        );

        // 1. Wait for events.
        {
            let mut fds = Vec::with_capacity(conns.len() + 2);
            fds.push(PollFd::new(shutdown.fd(), PollFlags::POLLIN));
            let listen_events = if accept_paused {
                PollFlags::empty()
            } else {
                PollFlags::POLLIN
            };
            fds.push(PollFd::new(listener.as_fd(), listen_events));
            for conn in &conns {
                let mut events = PollFlags::empty();
                events.set(PollFlags::POLLIN, conn.echo.wants_read());
                events.set(PollFlags::POLLOUT, conn.echo.wants_write());
                fds.push(PollFd::new(conn.stream.as_fd(), events));
            }
            match nix::poll::poll(&mut fds, timeout) {
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
            for conn in conns.drain(..) {
                conn::log_closed(conn.peer, &conn.echo, &End::Shutdown);
            }
            return Ok(());
        }

        // 2. Serve ready connections. Backwards, so that `swap_remove` only moves a
        // connection that was already served this turn.
        let now = Instant::now();
        for conn_idx in (0..conns.len()).rev() {
            let conn = &mut conns[conn_idx];
            let ready = revents[conn_idx + 2];
            let end = if ready.is_empty() {
                idle_end(conn, now, config.idle_timeout)
            } else {
                serve_ready(conn, ready, &mut buf, now)
            };
            if let Some(end) = end {
                let Conn { peer, echo, .. } = conns.swap_remove(conn_idx);
                // The socket is closed and its place under the cap free before the line.
                conn::log_closed(peer, &echo, &end);
            }
        }

        // 3. Accept new connections.
        if revents[1].contains(PollFlags::POLLIN) {
            accept_paused_until = accept_some(&listener, &mut conns, config.echo, &cap);
        }
    }
}

/// Serves one connection that poll reported ready; `Some` when it is to be closed.
fn serve_ready(conn: &mut Conn, ready: PollFlags, buf: &mut [u8], now: Instant) -> Option<End> {
    let trouble = PollFlags::POLLHUP | PollFlags::POLLERR;
    if ready.intersects(PollFlags::POLLIN | trouble) && conn.echo.wants_read() {
        let room = conn.echo.read_room().min(buf.len());
        let mut writer = &conn.stream;
        let result = match (&conn.stream).read(&mut buf[..room]) {
            Ok(0) => conn.echo.on_eof(&mut writer),
            Ok(n) => {
                log::trace!("server received {n} bytes");
                conn.echo.on_input(&buf[..n], &mut writer)
            }
            Err(err) if net::would_block(&err) || net::interrupted(&err) => Ok(()),
            Err(err) => Err(err.into()),
        };
        if let Err(err) = result {
            return Some(End::Failed(err));
        }
        conn.last_active = now;
    } else if ready.intersects(PollFlags::POLLOUT | trouble) && conn.echo.wants_write() {
        // Only bytes owed from earlier turns: on_input/on_eof above flush on their own.
        if let Err(err) = conn.echo.flush(&mut &conn.stream) {
            return Some(End::Failed(err.into()));
        }
        conn.last_active = now;
    }
    conn.echo.is_finished().then_some(End::PeerClosed)
}

fn idle_end(conn: &Conn, now: Instant, idle_timeout: Option<Duration>) -> Option<End> {
    let timeout = idle_timeout?;
    (now.duration_since(conn.last_active) >= timeout).then_some(End::Idle(timeout))
}

/// Accepts until the listener would block (or [`ACCEPTS_PER_TURN`]). Returns when to
/// accept again if descriptors ran out.
fn accept_some(
    listener: &TcpListener,
    conns: &mut Vec<Conn>,
    echo: EchoConfig,
    cap: &Arc<ConnCap>,
) -> Option<Instant> {
    for _ in 0..ACCEPTS_PER_TURN {
        match listener.accept() {
            Ok((stream, peer)) => {
                let admission = match cap.admit(peer) {
                    Ok(admission) => admission,
                    Err(why) => {
                        cap.refuse(stream, peer, why);
                        continue;
                    }
                };
                if let Err(err) = stream
                    .set_nonblocking(true)
                    .and_then(|()| net::configure(&stream))
                {
                    crate::stats::global().dropped();
                    log::warn!(
                        "conn {peer} dropped: cannot configure it: {}",
                        net::describe(&err)
                    );
                    continue;
                }
                conn::log_opened(peer);
                conns.push(Conn {
                    stream,
                    peer,
                    echo: Echo::new(echo),
                    last_active: Instant::now(),
                    _admission: admission,
                });
            }
            Err(err) if net::would_block(&err) => return None,
            Err(err) => {
                if let Some(until) = accept::after_accept_error(&err) {
                    return Some(until);
                }
            }
        }
    }
    None
}

/// How long poll may sleep: until the earliest idle deadline or the end of an accept
/// pause, or forever.
fn next_timeout(
    now: Instant,
    conns: &[Conn],
    idle_timeout: Option<Duration>,
    paused_until: Option<Instant>,
) -> PollTimeout {
    let idle_deadline = idle_timeout.and_then(|timeout| {
        // A timeout past the clock's end never expires.
        conns
            .iter()
            .filter_map(|conn| conn.last_active.checked_add(timeout))
            .min()
    });
    let deadline = match (idle_deadline, paused_until) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match deadline {
        None => PollTimeout::NONE,
        Some(deadline) => {
            // Round up, so that the loop does not wake just before the deadline and spin.
            let ms = deadline
                .saturating_duration_since(now)
                .as_micros()
                .div_ceil(1000);
            PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
        }
    }
}
