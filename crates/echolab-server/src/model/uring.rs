//! The io_uring server: completion-based I/O. Instead of asking "which sockets are
//! ready?" and then calling `read` and `write` on each (the event and reactor models),
//! the loop queues requests ("accept connections on this listener", "receive whatever
//! arrives on this socket", "send these bytes") in a ring shared with the kernel, and
//! reads their results from a second ring. One `io_uring_enter` submits the whole batch
//! and waits for completions: system calls per message drop from three to a fraction of
//! one.
//!
//! Trade-off: fewer kernel crossings and no readiness step; but buffers are lent to the
//! kernel for the life of a request, so the program must own its memory differently
//! (the unsafe part lives in `echolab_sys::uring`), and containers often forbid io_uring
//! (`serve` checks with [`probe`] before announcing the port).
//!
//! # The requests
//!
//! - One multishot accept per loop and `--listen` address, on the loop's own listener
//!   (`SO_REUSEPORT`: the kernel spreads connections by a hash of their addresses, as for
//!   the reactor), tagged with the listener's index so that the right one is re-armed: armed
//!   once, it delivers a completion per connection. If it ends it is armed again, after a
//!   pause if descriptors ran out ([`AcceptState`]).
//! - One receive at a time per connection, into the ring's provided buffers: the kernel
//!   picks a free buffer when bytes arrive, so an idle connection holds no buffer. It is a
//!   multishot receive that the kernel itself ends once it has delivered the connection's
//!   room (Linux 6.16's limit): a ping-pong client is served for up to 64 KiB on one
//!   request, with no request and no poll armed again per message. Older kernels: a
//!   single receive of at most one buffer.
//! - At most one send per connection at a time, from a buffer the ring owns until it
//!   completes; bytes the echo produces meanwhile wait in the connection's `Echo`. When
//!   the echo's next bytes are the start of a receive buffer (bytes mode with nothing owed,
//!   or whole lines), that receive buffer itself is sent, with no copy, and returns to the
//!   pool when the send completes; a short send copies its rest out and returns it at
//!   once, so a client that reads slowly does not keep it. Sends hold at most half the
//!   pool; past that, bytes are copied into a send buffer.
//!
//! Backpressure: a connection holds at most [`MAX_OWED`] bytes (owed by its echo plus its
//! send in flight), like in every model. An unlimited multishot receive cannot keep that
//! bound: it delivers until a cancel lands (half a megabyte per connection, issue 9). So
//! the receive is limited to the room, and armed again only when the connection has room
//! for a whole buffer; the re-armed receives of a turn reach the kernel together with its
//! sends, in one system call. A receive that finds the pool dry ends with `ENOBUFS` and is
//! armed again at once, reaching the kernel after every buffer of this turn is back.
//!
//! Fairness: each time the socket wakes it, a receive takes at most one buffer (16 KiB)
//! before the kernel runs the other connections' requests, so a streaming client gets
//! 16 KiB per turn like everyone else.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use echolab_sys::uring::{Completion, RecvBuf, Ring, SendBuf};

use crate::conn::{self, End};
use crate::deadline::Deadlines;
use crate::echo::{EchoError, MAX_OWED};
use crate::event_loop::earliest;
use crate::uring_conn::{
    self as plumbing, may_lend, AcceptState, Conn, ConnTable, Outbox, SendPool, StartGate,
};
use crate::{cores, net, runner, Server};

/// Requests the submission queue holds before it is handed to the kernel.
const RING_ENTRIES: u32 = 1024;

/// The receive buffers of one loop: 128 of 16 KiB. Most go back within the turn that
/// filled them; a buffer whose bytes start a send is that send (no copy into a send buffer)
/// and goes back when it completes, the next turn on a socket with room, at most half the
/// pool at a time ([`may_lend`]). A receive that finds none free ends with `ENOBUFS` and is
/// armed again. The kernel takes them in ring order, so every buffer is written in turn:
/// 2 MiB stays in a core's cache, where 256 (4 MiB) made the kernel's copy into them 13% of
/// the server's CPU at 16 KiB messages against ref_epoll's 5%. 128 with sends from them
/// cost 0.95x the server CPU per 16 KiB message of 64 copied (0.94-0.98x in three sittings;
/// 64 with sends from them 0.97-1.03x, the pool ran short; 128 copied 1.06x).
/// Only pages the kernel wrote are resident: once ~2 MiB has passed through a loop, all
/// of it is (a one-time cost per loop, whatever the clients; issue 9).
const N_BUFS: u16 = 128;
const BUF_SIZE: u32 = 16 * 1024;

/// A receive is armed once the connection has room for one whole buffer.
const REARM_ROOM: usize = BUF_SIZE as usize;
const _: () = assert!(REARM_ROOM <= MAX_OWED, "a connection could never re-arm");

/// Whether io_uring serves here, with what this model needs ([`plumbing::probe`]).
pub fn probe(_server: &Server) -> Result<(), String> {
    plumbing::probe()
}

pub fn run(server: Server) -> io::Result<()> {
    let n_loops = server.config.workers.unwrap_or_else(cores).max(1);
    // A listener per loop on every --listen address (SO_REUSEPORT, like the reactor's): on
    // one shared listener the kernel wakes the multishot accept queued first, and one ring
    // took every connection. `listeners[i]` are loop i's, one per address.
    let clones = server.listeners.iter().map(TcpListener::try_clone);
    let listeners = net::listeners_per_loop(clones.collect::<io::Result<Vec<_>>>()?, n_loops)?;
    // Every loop builds its ring before any accepts: a loop that accepted first could take
    // the descriptors the others need for their rings.
    let rings_ready = StartGate::new(listeners.len());
    let run_one = |listener| run_loop(&server, listener, &rings_ready);
    let shutdown = &server.shutdown;
    runner::run_loops("uring", listeners, shutdown, &run_one, &|never| {
        rings_ready.abandon(never)
    })
}

fn run_loop(
    server: &Server,
    listeners: Vec<TcpListener>,
    rings_ready: &StartGate,
) -> io::Result<()> {
    let n_bufs = plumbing::faults().recv_bufs().unwrap_or(N_BUFS);
    let uring_loop = Ring::new(RING_ENTRIES, n_bufs, BUF_SIZE).and_then(|mut ring| {
        let multishot_limit = ring.supports_multishot_limit()?;
        if let Some(limit) = plumbing::faults().send_limit() {
            ring.limit_sends(limit);
        }
        if let Some(delay) = plumbing::faults().lent_send_delay() {
            ring.delay_lent_sends(delay);
        }
        ring.poll_readable(server.shutdown.fd().as_raw_fd(), plumbing::SHUTDOWN_TAG)?;
        Ok(UringLoop {
            ring,
            accepts: listeners.iter().map(|_| AcceptState::default()).collect(),
            listeners,
            multishot_limit,
            server,
            conns: ConnTable::new(plumbing::MAX_SLOTS),
            send_pool: SendPool::new(BUF_SIZE as usize),
            deadlines: Deadlines::new(server.config.idle_timeout, Instant::now()),
            enter_fault: false,
        })
    });
    if !rings_ready.arrive(uring_loop.is_ok()) && uring_loop.is_ok() {
        return Ok(()); // Another loop failed and reports it.
    }
    uring_loop?.run()
}

/// What a completion hands to [`UringLoop::pump`].
enum Input {
    /// Nothing new arrived (a send completed, a receive found no buffer).
    Nothing,
    Bytes(RecvBuf),
    /// The peer shut down its write side.
    End,
}

struct UringLoop<'a> {
    ring: Ring,
    /// This loop's listener on each `--listen` address; they close after the ring (field
    /// order), once no request can accept on them any more.
    listeners: Vec<TcpListener>,
    /// The kernel ends a multishot receive at a byte limit (Linux 6.16).
    multishot_limit: bool,
    /// Shared by every loop; a loop that fails fires its shutdown (in `runner`).
    server: &'a Server,
    conns: ConnTable<Conn>,
    send_pool: SendPool,
    /// The multishot accept of each listener (its index is the accept's tag).
    accepts: Vec<AcceptState>,
    /// The idle timeout's deadlines, by slot.
    deadlines: Deadlines,
    /// A test asked the next wait to fail (`uring_conn::Faults`).
    enter_fault: bool,
}

impl UringLoop<'_> {
    /// The loop; every connection is closed when it ends, in error or at shutdown.
    fn run(&mut self) -> io::Result<()> {
        let result = self.turns();
        self.close_all();
        result
    }

    /// Arm what is due, hand the batch to the kernel and wait, apply the completions.
    fn turns(&mut self) -> io::Result<()> {
        let (mut completions, mut idle) = (Vec::new(), Vec::new());
        let mut now = Instant::now();
        loop {
            let mut accept_wake = None;
            for (k, (accept, listener)) in self.accepts.iter_mut().zip(&self.listeners).enumerate()
            {
                let (ring, listener) = (&mut self.ring, listener.as_raw_fd());
                accept.arm_if_due(now, || ring.accept_multi(listener, k as u64))?;
                accept_wake = earliest(accept_wake, accept.wake_at());
            }
            let idle_wait = self.deadlines.next_wake(now);
            let timeout = plumbing::wait_for(idle_wait, accept_wake, now);
            let waited = match std::mem::take(&mut self.enter_fault) {
                true => Err(io::Error::from_raw_os_error(libc::EFAULT)),
                false => self.ring.submit_and_wait(timeout),
            };
            // Not a timeout, a signal or a full completion queue (the ring ends the wait on
            // those and the next turn goes on): this loop cannot go on.
            if let Err(err) = waited {
                let why = format!("io_uring_enter failed: {}", net::describe(&err));
                return Err(io::Error::new(err.kind(), why));
            }
            now = Instant::now();
            self.ring.completions(&mut completions);
            for completion in completions.drain(..) {
                self.on_completion(completion, now)?;
            }
            // After the turn's completions: a close line counts the bytes they confirmed.
            if self.server.shutdown.is_triggered() {
                return Ok(());
            }
            self.deadlines.expire(now, &mut idle);
            let timeout = self.server.config.idle_timeout.unwrap_or_default();
            for conn_idx in idle.drain(..) {
                self.close(conn_idx, End::Idle(timeout));
            }
        }
    }

    fn on_completion(&mut self, completion: Completion, now: Instant) -> io::Result<()> {
        match completion {
            Completion::Accepted { tag, result, more } => {
                if let Some(accept) = self.accepts.get_mut(tag as usize) {
                    accept.completed(more, result.as_ref().err(), now)?;
                }
                if let Ok(fd) = result {
                    self.admit(fd, now);
                }
            }
            Completion::Received { tag, result, more } => {
                let Some(conn_idx) = self.conns.live(tag) else {
                    if let Ok(Some(buf)) = result {
                        self.ring.recycle(buf); // For a connection that has closed.
                    }
                    return Ok(());
                };
                let conn = self.conns.get_mut(conn_idx).expect("live slot");
                conn.recv_armed &= more;
                self.deadlines.touch(conn_idx, now);
                match result {
                    Ok(Some(buf)) => self.pump(conn_idx, Input::Bytes(buf)),
                    Ok(None) => self.pump(conn_idx, Input::End),
                    // Out of buffers (or cancelled): `pump` arms the receive again.
                    Err(err)
                        if matches!(err.raw_os_error(), Some(libc::ECANCELED | libc::ENOBUFS)) =>
                    {
                        if err.raw_os_error() == Some(libc::ENOBUFS) {
                            log::debug!("conn {}: no receive buffer free, armed again", conn.peer);
                        }
                        self.pump(conn_idx, Input::Nothing)
                    }
                    Err(err) => self.close(conn_idx, End::Failed(err.into())),
                }
            }
            Completion::Sent {
                tag,
                result,
                buf,
                start,
            } => {
                let Some(conn_idx) = self.conns.live(tag) else {
                    self.give_back(buf);
                    return Ok(());
                };
                self.deadlines.touch(conn_idx, now);
                let conn = self.conns.get_mut(conn_idx).expect("live slot");
                match result {
                    Ok(n) if start + n < buf.len() => {
                        // A short send: the rest goes next, from the same buffer; a receive
                        // buffer's rest is copied out first and the buffer goes back, so a
                        // client that reads slowly does not keep it from the pool.
                        conn.bytes_sent += n as u64;
                        conn.sending = Some(buf.len() - start - n);
                        let (buf, start) = match buf {
                            SendBuf::Received(received) => {
                                let mut rest = self.send_pool.take();
                                rest.extend_from_slice(
                                    &self.ring.recv_data(&received)[start + n..],
                                );
                                self.ring.recycle(received);
                                (SendBuf::Owned(rest), 0)
                            }
                            owned => (owned, start + n),
                        };
                        let fd = conn.stream.as_raw_fd();
                        if let Err(err) = self.ring.send(fd, tag, buf, start) {
                            self.close(conn_idx, End::Failed(err.into()));
                        }
                    }
                    Ok(n) => {
                        // `sending` held the bytes of this send from `start` (room() counts
                        // them as held): a wrong count would break the bound or waste room.
                        debug_assert_eq!(conn.sending, Some(buf.len() - start), "send in flight");
                        conn.bytes_sent += n as u64;
                        conn.sending = None;
                        self.give_back(buf);
                        self.pump(conn_idx, Input::Nothing);
                    }
                    Err(err) => {
                        self.give_back(buf);
                        self.close(conn_idx, End::Failed(err.into()));
                    }
                }
            }
            // The shutdown pipe. A poll completes once: if it woke without the flag
            // (spuriously), watch again, or the loop would never see the shutdown.
            Completion::Readable { .. } if !self.server.shutdown.is_triggered() => {
                let fd = self.server.shutdown.fd().as_raw_fd();
                self.ring.poll_readable(fd, plumbing::SHUTDOWN_TAG)?;
            }
            Completion::Readable { .. } => {}
        }
        Ok(())
    }

    fn admit(&mut self, fd: OwnedFd, now: Instant) {
        let Some(conn) = Conn::admit(fd, &self.server.cap, self.server.config.echo) else {
            return;
        };
        let (peer, fd) = (conn.peer, conn.stream.as_raw_fd());
        let Ok(conn_idx) = self.conns.insert(conn) else {
            let max = plumbing::MAX_SLOTS;
            return log::warn!("conn {peer} refused: this loop holds {max} connections");
        };
        conn::log_opened(peer);
        let tag = self.conns.tag(conn_idx);
        if let Err(err) = arm_recv(&mut self.ring, self.multishot_limit, fd, tag, MAX_OWED) {
            return self.close(conn_idx, End::Failed(err.into()));
        }
        self.deadlines.touch(conn_idx, now);
    }

    /// Moves a connection forward after any completion: feeds new bytes to the echo,
    /// starts a send, arms the receive, closes the connection when it is done.
    fn pump(&mut self, conn_idx: usize, input: Input) {
        let tag = self.conns.tag(conn_idx);
        let conn = self.conns.get_mut(conn_idx).expect("live slot");
        let lending = may_lend(self.ring.recv_bufs_in_sends(), self.ring.recv_bufs());
        let mut result: Result<(), EchoError> = Ok(());
        let mut outgoing = None;
        let mut outbox = Outbox {
            sending: conn.sending.is_some(),
            max_send: MAX_OWED,
            buf: None,
            pool: &mut self.send_pool,
            received: None,
            lent: None,
        };
        if conn.sending.is_none() && conn.echo.wants_write() {
            result = conn.echo.flush(&mut outbox).map_err(EchoError::from);
        }
        let mut received = None;
        match input {
            Input::Nothing => {}
            Input::Bytes(buf) => {
                // The receive asked for at most the room: the echo stays within its bound.
                let data = self.ring.recv_data(&buf);
                log::trace!("server received {} bytes", data.len());
                self.enter_fault |= plumbing::faults().enter_fails_after(data);
                outbox.received = lending.then_some(data);
                result = result.and_then(|()| conn.echo.on_input(data, &mut outbox));
                received = Some(buf);
            }
            Input::End => result = result.and_then(|()| conn.echo.on_eof(&mut outbox)),
        }
        let (lent, owned) = (outbox.lent, outbox.buf.take());
        if let Some(mut buf) = received {
            match lent {
                // The echo's first bytes are these, where they are: the receive buffer is
                // the send, and goes back to the pool when the send completes.
                Some(lent) => {
                    buf.truncate(lent);
                    outgoing = Some(SendBuf::Received(buf));
                }
                None => self.ring.recycle(buf),
            }
        }
        if let Some(buf) = owned.filter(|buf| !buf.is_empty()) {
            outgoing = Some(SendBuf::Owned(buf));
        }
        if let Err(err) = result {
            if let Some(buf) = outgoing {
                self.give_back(buf);
            }
            return self.close(conn_idx, End::Failed(err));
        }
        let conn = self.conns.get_mut(conn_idx).expect("live slot");
        let fd = conn.stream.as_raw_fd();
        let mut queued = Ok(());
        if let Some(buf) = outgoing {
            conn.sending = Some(buf.len());
            queued = self.ring.send(fd, tag, buf, 0);
        }
        let room = conn.room();
        // With a send in flight, its completion comes back here with more room; without
        // one, nothing would: then any room is armed (a partial line waits for its newline).
        let worth_arming = room >= REARM_ROOM || (room > 0 && conn.sending.is_none());
        if queued.is_ok() && !conn.recv_armed && worth_arming {
            conn.recv_armed = true;
            queued = arm_recv(&mut self.ring, self.multishot_limit, fd, tag, room);
        }
        if let Err(err) = queued {
            return self.close(conn_idx, End::Failed(err.into()));
        }
        if conn.echo.is_finished() && conn.sending.is_none() {
            self.close(conn_idx, End::PeerClosed);
        }
    }

    /// A send buffer back where it came from: the send pool, or the kernel's receive pool.
    fn give_back(&mut self, buf: SendBuf) {
        match buf {
            SendBuf::Owned(buf) => self.send_pool.reuse(buf),
            SendBuf::Received(buf) => self.ring.recycle(buf),
        }
    }

    fn close(&mut self, conn_idx: usize, end: End) {
        if let Some(conn) = self.conns.remove(conn_idx) {
            self.deadlines.remove(conn_idx);
            conn.close(&mut self.ring, &end);
        }
    }

    fn close_all(&mut self) {
        let open: Vec<usize> = self.conns.iter().map(|(conn_idx, _)| conn_idx).collect();
        for conn_idx in open {
            self.close(conn_idx, End::Shutdown);
        }
        // Hand the closes to the kernel now; dropping the ring then cancels what is left.
        let _ = self.ring.submit();
    }
}

/// Arms a receive of at most `room` bytes: one multishot receive that ends by then where
/// the kernel can end it (`multishot_limit`), else a single receive of one buffer.
fn arm_recv(
    ring: &mut Ring,
    multishot_limit: bool,
    fd: RawFd,
    tag: u64,
    room: usize,
) -> io::Result<()> {
    let (total, per_turn) = plumbing::multishot_limits(room, BUF_SIZE);
    match multishot_limit {
        true => ring.recv_multi_limited(fd, tag, total, per_turn),
        false => ring.recv_limited(fd, tag, per_turn),
    }
}
